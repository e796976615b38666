//! Embeds the eBPF object that `cargo xtask build-ebpf` writes to `target/ebpf/skiff-ebpf` (or
//! the file named by `SKIFF_EBPF_OBJECT`) when it exists. Without it the agent still builds, so
//! `cargo check` needs no eBPF toolchain, and starting the eBPF datapath reports
//! `ProxyError::NoObject`.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(skiff_ebpf_object)");
    println!("cargo::rerun-if-env-changed=SKIFF_EBPF_OBJECT");
    let object = match std::env::var_os("SKIFF_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
            manifest.join("../target/ebpf/skiff-ebpf")
        }
    };
    // Watch the directory, so that the object appearing later triggers a rebuild (cargo scans a
    // watched directory for changed files); create it so there is something to watch.
    if let Some(dir) = object.parent() {
        let _ = std::fs::create_dir_all(dir);
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    if object.is_file() {
        println!("cargo::rustc-cfg=skiff_ebpf_object");
        println!(
            "cargo::rustc-env=SKIFF_EBPF_OBJECT_PATH={}",
            object.display()
        );
    }
}
