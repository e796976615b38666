//! `cargo xtask build-ebpf`: builds the eBPF programs (ebpf/programs) for the bpfel target with
//! the nightly toolchain and bpf-linker that `setup` installs, and puts the object where the
//! agent's build script embeds it from: `target/ebpf/skiff-ebpf`.
//!
//! The object is only replaced when its bytes change, so an unchanged rebuild does not make
//! cargo rebuild the agent.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{setup, util};

/// The eBPF crate.
fn crate_dir() -> PathBuf {
    util::root().join("ebpf/programs")
}

/// Where the agent's build script looks for the object (keep in sync with agent/build.rs).
pub fn object_path() -> PathBuf {
    util::root().join("target/ebpf/skiff-ebpf")
}

/// Builds the programs and installs the object at [`object_path`].
pub fn build() -> anyhow::Result<()> {
    anyhow::ensure!(
        setup::bpf_linker_path().exists(),
        "bpf-linker is not installed at {}: run `cargo xtask setup` first",
        setup::bpf_linker_path().display()
    );
    // rustc finds bpf-linker on PATH: make sure cargo's bin directory is on it.
    let mut path = OsString::from(setup::cargo_home_bin());
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    let mut cmd = setup::rustup();
    cmd.args([
        "run",
        setup::EBPF_TOOLCHAIN,
        "cargo",
        "build",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
    ])
    .current_dir(crate_dir())
    .env("PATH", path)
    // Settings of the outer (host) build must not leak into the eBPF one.
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("CARGO_BUILD_TARGET")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("RUSTC")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("CARGO");
    util::run(&mut cmd)?;

    let built = crate_dir().join("target/bpfel-unknown-none/release/skiff-ebpf");
    let bytes = std::fs::read(&built)
        .map_err(|e| anyhow::anyhow!("cannot read the built object {}: {e}", built.display()))?;
    let dest = object_path();
    if std::fs::read(&dest).ok().as_deref() == Some(bytes.as_slice()) {
        eprintln!("build-ebpf: {} is up to date", dest.display());
        return Ok(());
    }
    let dir = dest.parent().expect("the object path has a parent");
    std::fs::create_dir_all(dir)?;
    // Write then rename, so the agent's build never embeds a half-written object.
    let tmp = dir.join(".skiff-ebpf.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &dest)?;
    eprintln!(
        "build-ebpf: wrote {} ({} bytes)",
        dest.display(),
        bytes.len()
    );
    Ok(())
}
