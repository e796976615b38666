//! Writing OCI image layouts: for tests, and for images the node makes itself. Deterministic:
//! the same files give the same digests (gzip without timestamps, fixed JSON key order).

use std::fs;
use std::io::Write;
use std::path::Path;

use super::{Digest, ImageError};

/// A layer to be: entries of an uncompressed tarball, built with the `tar` crate.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
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

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<&mut Self, ImageError> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .map_err(|e| ImageError::io(format!("adding {path}"), e))?;
        Ok(self)
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, ImageError> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, path, std::io::empty())
            .map_err(|e| ImageError::io(format!("adding {path}"), e))?;
        Ok(self)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, ImageError> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .map_err(|e| ImageError::io(format!("adding {path}"), e))?;
        Ok(self)
    }

    /// The uncompressed tarball.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        self.tar
            .into_inner()
            .map_err(|e| ImageError::io("finishing a layer", e))
    }
}

/// Process defaults recorded in the image config.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `ExposedPorts` (`8080/tcp`).
    pub exposed_ports: Vec<String>,
    /// `User`.
    pub user: Option<String>,
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    // No name or mtime in the header, so identical input gives identical output.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)
        .map_err(|e| ImageError::io("compressing a layer", e))?;
    enc.finish()
        .map_err(|e| ImageError::io("compressing a layer", e))
}

fn write_blob(dir: &Path, data: &[u8]) -> Result<Digest, ImageError> {
    let d = Digest::of(data);
    let path = dir.join("blobs/sha256").join(d.hex());
    fs::create_dir_all(dir.join("blobs/sha256"))
        .map_err(|e| ImageError::io(format!("creating {}", dir.display()), e))?;
    if fs::read(&path).ok().as_deref() != Some(data) {
        fs::write(&path, data)
            .map_err(|e| ImageError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(d)
}

/// Writes an OCI image layout with one linux/amd64 image of the given (uncompressed) layers,
/// bottom first, named `reference` (both the containerd and OCI name annotations). Returns the
/// manifest digest. `gzip_layers` picks `tar+gzip` or plain `tar` layers.
pub fn write_oci_layout(
    dir: &Path,
    reference: &str,
    config: &ConfigSpec,
    layers: &[Vec<u8>],
    gzip_layers: bool,
) -> Result<Digest, ImageError> {
    use serde_json::json;
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(Digest::of(l).to_string());
        let (blob, media_type) = if gzip_layers {
            (gzip(l)?, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let d = write_blob(dir, &blob)?;
        layer_descs
            .push(json!({"mediaType": media_type, "digest": d.to_string(), "size": blob.len()}));
    }
    let mut cfg = serde_json::Map::new();
    let strings = |v: &[String]| json!(v);
    if !config.entrypoint.is_empty() {
        cfg.insert("Entrypoint".into(), strings(&config.entrypoint));
    }
    if !config.cmd.is_empty() {
        cfg.insert("Cmd".into(), strings(&config.cmd));
    }
    if !config.env.is_empty() {
        cfg.insert("Env".into(), strings(&config.env));
    }
    if let Some(w) = &config.working_dir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &config.user {
        cfg.insert("User".into(), json!(u));
    }
    if !config.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = config
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        cfg.insert("ExposedPorts".into(), ports.into());
    }
    let config_json = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes =
        serde_json::to_vec(&config_json).map_err(|e| ImageError::malformed("config", e))?;
    let config_digest = write_blob(dir, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layer_descs,
    });
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| ImageError::malformed("manifest", e))?;
    let manifest_digest = write_blob(dir, &manifest_bytes)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    });
    let index_bytes =
        serde_json::to_vec_pretty(&index).map_err(|e| ImageError::malformed("index", e))?;
    for (name, data) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index_bytes),
    ] {
        fs::write(dir.join(name), data)
            .map_err(|e| ImageError::io(format!("writing {}", dir.join(name).display()), e))?;
    }
    Ok(manifest_digest)
}
