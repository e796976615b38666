//! `cargo xtask registry up|push|down` with the real binaries: Debian's docker-registry on
//! loopback, a small OCI layout pushed under its origin names with skopeo, checked with
//! `skopeo inspect`, pushed again without copying, and stopped without leftovers.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use sha2::{Digest as _, Sha256};

fn has_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes a one-layer OCI layout naming the image `refs`; returns the manifest digest.
fn tiny_layout(dir: &Path, refs: &[&str]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(6);
    tar.append_data(&mut h, "hello", &b"hello\n"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let layer = put(&gz);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": gz.len()}],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    let entries: Vec<_> = refs
        .iter()
        .map(|r| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": r},
            })
        })
        .collect();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": entries})).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest_digest
}

fn xtask(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "xtask {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `registry down --purge` for the directory when dropped, so a failing test leaves no
/// registry running.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = xtask(&[
            "registry",
            "down",
            "--purge",
            "--dir",
            self.0.to_str().unwrap(),
        ]);
    }
}

fn skopeo_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn registry_up_push_down() {
    for p in ["docker-registry", "skopeo"] {
        if !has_program(p) {
            eprintln!("SKIPPING registry_up_push_down: {p} is not installed (cargo xtask setup)");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let digest = tiny_layout(
        &images.join("tiny"),
        &[
            "docker.io/library/tiny:latest",
            "gcr.io/google_containers/tiny:1.0",
        ],
    );
    // Not an image: skipped.
    std::fs::create_dir_all(images.join(".cache")).unwrap();
    let dir = tmp.path().join("registry");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (d, i) = (dir.to_str().unwrap(), images.to_str().unwrap());
    let _down = Down(dir.clone());

    let up = xtask(&[
        "registry",
        "up",
        "--no-build",
        "--addr",
        &addr,
        "--dir",
        d,
        "--images",
        i,
    ]);
    assert!(up.status.success());
    assert!(String::from_utf8_lossy(&up.stderr).contains("2 pushed, 0 up to date"));
    let pid: u32 = std::fs::read_to_string(dir.join("registry.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        skopeo_digest(&format!("{addr}/docker.io/library/tiny:latest")),
        digest
    );
    assert_eq!(
        skopeo_digest(&format!("{addr}/gcr.io/google_containers/tiny:1.0")),
        digest
    );

    // Nothing changed: nothing copied. `up` again only pushes.
    let push = xtask(&["registry", "push", "--addr", &addr, "--images", i]);
    assert!(push.status.success());
    assert!(String::from_utf8_lossy(&push.stderr).contains("0 pushed, 2 up to date"));
    let again = xtask(&[
        "registry",
        "up",
        "--no-build",
        "--addr",
        &addr,
        "--dir",
        d,
        "--images",
        i,
    ]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Down: the process is gone (at most a zombie until PID 1 reaps it), the port closed, the
    // pid file and configuration removed; the storage stays until --purge.
    let down = xtask(&["registry", "down", "--dir", d]);
    assert!(down.status.success());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state[state.rfind(')').unwrap() + 2..].starts_with('Z'),
        "registry {pid} still runs: {state}"
    );
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still answers");
    assert!(!dir.join("registry.pid").exists());
    assert!(!dir.join("config.yml").exists());
    assert!(dir.join("data").exists());
    let purge = xtask(&["registry", "down", "--purge", "--dir", d]);
    assert!(purge.status.success());
    assert!(!dir.exists());
}
