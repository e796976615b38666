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

mod debian;

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
    let started = std::time::Instant::now();
    let bins = build_static()?;
    let out = images_dir();
    std::fs::create_dir_all(&out)?;
    for (tag, bin) in [("v1", "kubia-v1"), ("v2", "kubia-v2")] {
        let binary = std::fs::read(bins.join(bin)).with_context(|| format!("reading {bin}"))?;
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
            &[ImageSpec {
                refs: vec![format!("docker.io/library/kubia:{tag}")],
                config,
                layers: vec![LayerBlob::gzip(&layer.finish()?)?],
            }],
        )?;
    }
    busybox(&out)?;
    pause(&out, &bins)?;
    debian::build(&out)?;
    eprintln!(
        "images: done in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// `images --verify-reproducible`: see [`debian::verify_reproducible`].
pub fn verify_reproducible() -> anyhow::Result<()> {
    debian::verify_reproducible(&images_dir())
}

/// Builds the static programs of the sample images (kubia-v1, kubia-v2, pause), small (LTO,
/// abort on panic, stripped), into a target directory of their own so the workspace's release
/// profile is untouched. Returns the directory holding them.
fn build_static() -> anyhow::Result<PathBuf> {
    let root = util::root();
    let status = util::cargo_command()
        .args([
            "build",
            "--release",
            "-p",
            "kubia",
            "-p",
            "pause",
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
        .context("running cargo build for kubia and pause")?;
    anyhow::ensure!(status.success(), "building kubia and pause failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target_dir.join(STATIC_TARGET).join("release"))
}

/// The names the pause image answers to: Kubernetes' current sandbox image and the names
/// older manifests and tutorials use.
pub const PAUSE_REFS: &[&str] = &[
    "registry.k8s.io/pause:3.10",
    "registry.k8s.io/pause:3.9",
    "registry.k8s.io/pause:latest",
    "gcr.io/google_containers/pause:latest",
    "gcr.io/google_containers/pause:3.2",
];

/// `pause`: the static images/pause program alone, run as 65535:65535 like Kubernetes' image.
fn pause(out: &Path, bins: &Path) -> anyhow::Result<()> {
    let binary = std::fs::read(bins.join("pause")).context("reading pause")?;
    let mut layer = Layer::new();
    layer.file("pause", 0o755, &binary)?;
    let config = json!({
        "Entrypoint": ["/pause"],
        "Env": [PATH_ENV],
        "User": "65535:65535",
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.description": "skiff's pause (images/pause, static Rust): \
                sleeps until SIGTERM or SIGINT, reaps zombies, exits 0",
        },
    });
    write_layout(
        &out.join("pause"),
        &[ImageSpec {
            refs: PAUSE_REFS.iter().map(|r| r.to_string()).collect(),
            config,
            layers: vec![LayerBlob::gzip(&layer.finish()?)?],
        }],
    )
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
        &[ImageSpec {
            refs: vec!["docker.io/library/busybox:latest".into()],
            config,
            layers: vec![LayerBlob::gzip(&layer.finish()?)?],
        }],
    )
}

/// A tar layer being written: entries are appended in the caller's order (sorted, for
/// determinism), with zero mtimes and owners unless given.
pub struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    pub fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        Self(b)
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
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

    /// Appends an entry with its own metadata: `kind` Regular (with `data`), Directory,
    /// Symlink or Link (hard link; `link` is the target).
    pub fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        meta: Meta,
        data: &[u8],
        link: Option<&str>,
    ) -> anyhow::Result<()> {
        let size = if kind == tar::EntryType::Regular {
            data.len() as u64
        } else {
            0
        };
        let mut h = Self::header(kind, meta.mode, size);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime);
        match link {
            Some(target) => self.0.append_link(&mut h, path, target)?,
            None => self.0.append_data(&mut h, path, data)?,
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.into_inner()?)
    }
}

/// An entry's mode bits (permissions with setuid/setgid/sticky), numeric owner and mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A gzipped layer: its digest, diff ID (digest of the tar) and size. `data` is `None` for a
/// cached layer whose blob is already in the layout it is written to.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub data: Option<std::sync::Arc<Vec<u8>>>,
}

impl LayerBlob {
    /// Gzips a tar layer (no timestamp or name in the gzip header, so the same tar always gives
    /// the same blob).
    pub fn gzip(tar: &[u8]) -> anyhow::Result<Self> {
        let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        enc.write_all(tar)?;
        let gz = enc.finish()?;
        Ok(Self {
            digest: sha256(&gz),
            diff_id: sha256(tar),
            size: gz.len() as u64,
            data: Some(std::sync::Arc::new(gz)),
        })
    }
}

/// One image of a layout: its names (full references), config (the OCI config's `config`
/// object) and layers, lowest first.
pub struct ImageSpec {
    pub refs: Vec<String>,
    pub config: serde_json::Value,
    pub layers: Vec<LayerBlob>,
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Writes an OCI layout holding `images` (one `index.json` entry per reference, so images
/// sharing layers store them once) unless an identical one is there. Blobs are added before
/// `index.json` is replaced and unreferenced ones removed after, so a layout read meanwhile is
/// complete.
pub fn write_layout(dir: &Path, images: &[ImageSpec]) -> anyhow::Result<()> {
    let mut blobs: Vec<(String, Option<std::sync::Arc<Vec<u8>>>)> = Vec::new();
    let mut entries = Vec::new();
    let mut total = 0u64;
    let mut names = Vec::new();
    for image in images {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": image.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": image.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": image.layers.iter().map(|l| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        }))?;
        let manifest_digest = sha256(&manifest);
        for r in &image.refs {
            entries.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": r,
                    "org.opencontainers.image.ref.name": r,
                },
            }));
            names.push(r.clone());
        }
        for l in &image.layers {
            total += l.size;
            blobs.push((l.digest.clone(), l.data.clone()));
        }
        blobs.push((sha256(&config), Some(std::sync::Arc::new(config))));
        blobs.push((manifest_digest, Some(std::sync::Arc::new(manifest))));
    }
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))?;
    let blob_dir = dir.join("blobs/sha256");
    let blob_path = |digest: &str| blob_dir.join(digest.trim_start_matches("sha256:"));
    let names = names.join(", ");
    if std::fs::read(dir.join("index.json")).ok().as_deref() == Some(&index[..])
        && blobs.iter().all(|(d, _)| blob_path(d).is_file())
    {
        eprintln!("images: {names} up to date ({})", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&blob_dir)?;
    for (digest, data) in &blobs {
        let path = blob_path(digest);
        if path.is_file() {
            continue;
        }
        let data = data.as_ref().with_context(|| {
            format!(
                "{}: cached layer {digest} is missing; delete {} and build again",
                dir.display(),
                util::root().join("target/images/.cache").display()
            )
        })?;
        write_atomic(&path, data)?;
    }
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &index)?;
    let wanted: std::collections::HashSet<PathBuf> =
        blobs.iter().map(|(d, _)| blob_path(d)).collect();
    for e in std::fs::read_dir(&blob_dir)?.flatten() {
        if !wanted.contains(&e.path()) {
            std::fs::remove_file(e.path())?;
        }
    }
    eprintln!(
        "images: wrote {names} to {} ({} KiB of layers)",
        dir.display(),
        total / 1024
    );
    Ok(())
}

/// An OCI layout directory and the (reference, manifest digest) pairs its `index.json` names.
pub type LayoutRefs = (PathBuf, Vec<(String, String)>);

/// The images of the layouts under `dir` (one directory per layout, as `build` writes them):
/// each layout directory with the references its `index.json` names and their manifest
/// digests, in name order.
pub fn list_layouts(dir: &Path) -> anyhow::Result<Vec<LayoutRefs>> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("index.json").is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("index.json"))?)
                .with_context(|| format!("parsing {}/index.json", d.display()))?;
        let mut refs = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str();
            let digest = m["digest"].as_str();
            if let (Some(name), Some(digest)) = (name, digest) {
                refs.push((name.to_owned(), digest.to_owned()));
            }
        }
        out.push((d, refs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::LayerBlob;

    /// The layer compressor is part of an image's identity: the same tree must give the same
    /// digest whichever build of xtask (alone, or with the workspace's features in tests)
    /// compresses it. A different flate2 backend or level changes this digest.
    #[test]
    fn gzip_output_is_pinned() {
        let tar: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes())
            .chain(b"skiff ".repeat(50_000))
            .collect();
        let layer = LayerBlob::gzip(&tar).unwrap();
        assert_eq!(
            layer.digest,
            "sha256:0cf12611a295d85731e07ab19932d7a6b0e652a5fca215ea05b6618ea43dc6ff"
        );
    }
}
