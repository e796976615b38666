//! `cargo xtask images`: the sample images the cluster preloads, as OCI image layouts under
//! `target/images/<name>-<tag>/` (the agent's `Store::import_dir` reads that directory).
//!
//! - `kubia:v1`, `kubia:v2`: the static `images/kubia` server (`/kubia`, port 8080).
//! - `busybox:latest`: Debian's busybox-static with a symlink per applet, /etc/passwd and /tmp.
//!
//! Layers are deterministic (sorted entries, zero mtimes and owners, gzip without timestamp), so
//! an unchanged input gives the same digests and the layout is left alone: a repeated run costs
//! one no-op cargo build and some gzip work.
//!
//! This mirrors `skiff_agent::images::layout` rather than depending on the agent crate, which
//! would make xtask build aya, kube and the rest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::util;

/// The static target the kubia binaries are built for.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the layouts go.
pub fn images_dir() -> PathBuf {
    util::root().join("target/images")
}

/// Builds every sample image that is out of date.
pub fn build() -> anyhow::Result<()> {
    let kubia = build_kubia()?;
    let out = images_dir();
    std::fs::create_dir_all(&out)?;
    for (tag, bin) in [("v1", "kubia-v1"), ("v2", "kubia-v2")] {
        let binary = std::fs::read(kubia.join(bin)).with_context(|| format!("reading {bin}"))?;
        let mut layer = Layer::new();
        layer.file("kubia", 0o755, &binary)?;
        layer.dir("tmp", 0o1777)?;
        let config = json!({
            "Entrypoint": ["/kubia"],
            "Env": [PATH_ENV],
            "ExposedPorts": {"8080/tcp": {}},
            "WorkingDir": "/",
        });
        write_layout(
            &out.join(format!("kubia-{tag}")),
            &format!("docker.io/library/kubia:{tag}"),
            config,
            &[layer.finish()?],
        )?;
    }
    busybox(&out)?;
    Ok(())
}

/// Builds kubia-v1 and kubia-v2 statically, small (LTO, abort on panic, stripped), into a
/// target directory of their own so the workspace's release profile is untouched.
fn build_kubia() -> anyhow::Result<PathBuf> {
    let root = util::root();
    let status = Command::new(util::cargo_bin())
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "kubia",
            "--target",
            STATIC_TARGET,
        ])
        .args([
            "--config",
            "profile.release.lto=true",
            "--config",
            "profile.release.panic=\"abort\"",
            "--config",
            "profile.release.strip=true",
            "--config",
            "profile.release.opt-level=\"s\"",
            "--config",
            "profile.release.codegen-units=1",
            "--config",
            "profile.release.debug=false",
        ])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .context("running cargo build for kubia")?;
    anyhow::ensure!(status.success(), "building kubia failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target_dir.join(STATIC_TARGET).join("release"))
}

fn busybox(out: &Path) -> anyhow::Result<()> {
    let binary = match std::fs::read(BUSYBOX) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "images: WARNING: no busybox image: {BUSYBOX}: {e} (install busybox-static: `cargo xtask setup` as root)"
            );
            return Ok(());
        }
    };
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    anyhow::ensure!(list.status.success(), "busybox --list-full failed");
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox" && !l.contains(".."))
        .collect();
    applets.sort();
    applets.dedup();
    let mut layer = Layer::new();
    let mut dirs: Vec<String> = vec!["bin".into(), "etc".into(), "root".into()];
    for a in &applets {
        if let Some((d, _)) = a.rsplit_once('/') {
            let mut prefix = String::new();
            for part in d.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                dirs.push(prefix.clone());
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        layer.dir(d, if d == "root" { 0o700 } else { 0o755 })?;
    }
    layer.dir("tmp", 0o1777)?;
    layer.file("bin/busybox", 0o755, &binary)?;
    for a in &applets {
        layer.symlink(a, "/bin/busybox")?;
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    layer.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    let config = json!({"Cmd": ["sh"], "Env": [PATH_ENV]});
    write_layout(
        &out.join("busybox-latest"),
        "docker.io/library/busybox:latest",
        config,
        &[layer.finish()?],
    )
}

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        Self(b)
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        Ok(self.0.append_data(&mut h, path, data)?)
    }

    fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        Ok(self.0.append_data(&mut h, path, std::io::empty())?)
    }

    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        Ok(self.0.append_link(&mut h, path, target)?)
    }

    fn finish(self) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.into_inner()?)
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes a one-image OCI layout with gzipped layers unless an identical one is there.
fn write_layout(
    dir: &Path,
    reference: &str,
    config: serde_json::Value,
    layers: &[Vec<u8>],
) -> anyhow::Result<()> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(sha256(l));
        let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        enc.write_all(l)?;
        let gz = enc.finish()?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&gz), "size": gz.len()}));
        blobs.push((sha256(&gz), gz));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": descs,
    }))?;
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    }))?;
    if std::fs::read(dir.join("index.json")).ok().as_deref() == Some(&index[..]) {
        eprintln!("images: {reference} is up to date ({})", dir.display());
        return Ok(());
    }
    blobs.push((sha256(&config), config));
    blobs.push((sha256(&manifest), manifest));
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)?;
    let mut total = 0;
    for (digest, data) in &blobs {
        total += data.len();
        std::fs::write(blob_dir.join(digest.trim_start_matches("sha256:")), data)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(dir.join("index.json"), index)?;
    eprintln!(
        "images: wrote {reference} to {} ({} KiB)",
        dir.display(),
        total / 1024
    );
    Ok(())
}
