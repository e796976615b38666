//! Reproducibility of the Debian-based images: `xtask images --verify-reproducible` builds the
//! root filesystems again with mmdebstrap, ignoring the cache, and fails unless every layer
//! digest matches (the cached build's, or a second fresh build's when package versions moved).
//! Needs root, mmdebstrap and Debian's archive; skips otherwise. Takes 1-3 minutes.

use std::process::Command;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn debian_layers_are_reproducible() {
    if !is_root() {
        eprintln!("SKIPPING debian_layers_are_reproducible: needs root (mmdebstrap --mode=root)");
        return;
    }
    let has_mmdebstrap = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mmdebstrap").is_file()));
    if !has_mmdebstrap {
        eprintln!("SKIPPING debian_layers_are_reproducible: no mmdebstrap (cargo xtask setup)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["images", "--verify-reproducible"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "not reproducible:\n{stderr}");
    for layer in ["base", "nginx", "python"] {
        assert!(
            stderr.contains(&format!("images: {layer} layer reproducible")),
            "{stderr}"
        );
    }
}
