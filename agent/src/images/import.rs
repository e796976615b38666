//! Imports of OCI image layouts and `docker save` archives, as directories or tar files.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;

use super::unpack::normalize;
use super::{
    is_index, select_platform, Digest, ImageError, ImageStore, Reference, MAX_MANIFEST_SIZE,
};

/// containerd's annotation with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// OCI's annotation with the reference (a tag, or by convention a full name).
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` / `manifest.json` read from an archive.
const MAX_INDEX_SIZE: u64 = 4 << 20;

/// The media type of a layer blob, from its first bytes.
fn layer_media_type(path: &Path) -> Result<&'static str, ImageError> {
    let f = fs::File::open(path)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut r = io::BufReader::new(f);
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    })
}

/// `base/rel` after checking that it stays inside `base` once symlinks are followed (archives
/// made by `docker save` since 25 link legacy paths to `blobs/`).
fn inside(base: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let unsafe_path = |reason| ImageError::UnsafePath {
        path: rel.to_owned(),
        reason,
    };
    let rel = normalize(Path::new(rel))?.ok_or_else(|| unsafe_path("empty path"))?;
    let base = base
        .canonicalize()
        .map_err(|e| ImageError::io(format!("resolving {}", base.display()), e))?;
    let full = base
        .join(&rel)
        .canonicalize()
        .map_err(|e| ImageError::io(format!("{} in the archive", rel.display()), e))?;
    if !full.starts_with(&base) {
        return Err(unsafe_path("points outside the archive"));
    }
    Ok(full)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let f = fs::File::open(path)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    if data.len() as u64 > limit {
        return Err(ImageError::Unsupported(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(data)
}

impl ImageStore {
    /// Imports an OCI layout or docker-archive, as a directory or a (possibly gzipped) tar file.
    /// `name` names images the archive does not name (or only tags). Returns the normalised
    /// references imported.
    pub fn import_path(&self, path: &Path, name: Option<&str>) -> Result<Vec<String>, ImageError> {
        let meta = fs::metadata(path)
            .map_err(|e| ImageError::io(format!("importing {}", path.display()), e))?;
        if meta.is_dir() {
            if path.join("manifest.json").is_file() {
                self.import_docker_archive_dir(path, name)
            } else {
                self.import_oci_layout(path, name)
            }
        } else {
            self.import_tar(path, name)
        }
    }

    /// Imports everything under `dir` that looks like an image: directories (OCI layouts or
    /// docker-archive directories) and `*.tar` / `*.tar.gz` / `*.tgz` files, in name order.
    /// This is how the agent preloads the sample images (`target/images`).
    pub fn import_dir(&self, dir: &Path) -> Result<Vec<String>, ImageError> {
        let entries = fs::read_dir(dir)
            .map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let image_like = if p.is_dir() {
                p.join("index.json").is_file() || p.join("manifest.json").is_file()
            } else {
                name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
            };
            if image_like {
                out.extend(self.import_path(&p, None)?);
            }
        }
        Ok(out)
    }

    /// Imports a tar file (OCI layout or docker-archive) by unpacking it into a temporary
    /// directory first (regular files, directories and symlinks only, nothing outside).
    pub fn import_tar(&self, path: &Path, name: Option<&str>) -> Result<Vec<String>, ImageError> {
        let _ingest = self.ingest();
        let f = fs::File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let mut r = io::BufReader::new(f);
        let gz = r
            .fill_buf()
            .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?
            .starts_with(&[0x1f, 0x8b]);
        let stream: Box<dyn Read> = if gz {
            Box::new(flate2::bufread::MultiGzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let tmp = tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(self.tmp_dir())
            .map_err(|e| ImageError::io("creating a temporary directory", e))?;
        let mut archive = tar::Archive::new(stream);
        archive.set_preserve_permissions(false);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        let ctx = |e| ImageError::io(format!("reading archive {}", path.display()), e);
        for entry in archive.entries().map_err(ctx)? {
            let mut entry = entry.map_err(ctx)?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                continue;
            }
            if !entry.unpack_in(tmp.path()).map_err(ctx)? {
                return Err(ImageError::UnsafePath {
                    path: entry.path_bytes().escape_ascii().to_string(),
                    reason: "outside the archive",
                });
            }
        }
        if tmp.path().join("manifest.json").is_file() {
            self.import_docker_archive_dir(tmp.path(), name)
        } else {
            self.import_oci_layout(tmp.path(), name)
        }
    }

    /// Imports the images an OCI image layout's `index.json` lists. Names come from the
    /// `io.containerd.image.name` annotation, else `org.opencontainers.image.ref.name` (a full
    /// reference, or a tag for `name`), else `name`.
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<Vec<String>, ImageError> {
        let _ingest = self.ingest();
        let index_path = inside(dir, "index.json")?;
        let data = read_limited(&index_path, MAX_INDEX_SIZE)?;
        let index = ImageIndex::from_reader(&data[..])
            .map_err(|e| ImageError::malformed(format!("{}", index_path.display()), e))?;
        let mut imported = Vec::new();
        for desc in index.manifests() {
            let refs = names_for(desc.annotations().as_ref(), name, dir)?;
            let digest = Digest::parse(desc.digest().as_ref())?;
            let manifest = self.copy_manifest(dir, &digest, 0)?;
            let mut all = refs.clone();
            if manifest != digest {
                // Picked a platform from an index: remember the index digest too.
                if let Some(r) = refs.first() {
                    all.push(r.with_digest(&digest));
                }
            }
            self.tag(&all, &manifest)?;
            imported.extend(refs.iter().map(ToString::to_string));
        }
        Ok(imported)
    }

    /// Copies a manifest (or an index and the linux/amd64 manifest it lists) with its config and
    /// layers from a layout's `blobs/`; returns the platform manifest's digest.
    fn copy_manifest(&self, dir: &Path, digest: &Digest, depth: u8) -> Result<Digest, ImageError> {
        let data = self.copy_layout_blob(dir, digest, Some(MAX_MANIFEST_SIZE))?;
        if is_index(&data, None) {
            if depth > 2 {
                return Err(ImageError::Unsupported("indexes nested too deeply".into()));
            }
            let index = ImageIndex::from_reader(&data[..])
                .map_err(|e| ImageError::malformed(format!("index {digest}"), e))?;
            let chosen = select_platform(&index).ok_or_else(|| {
                ImageError::Unsupported(format!("index {digest} has no linux/amd64 image"))
            })?;
            return self.copy_manifest(dir, &chosen, depth + 1);
        }
        let manifest = oci_spec::image::ImageManifest::from_reader(&data[..])
            .map_err(|e| ImageError::malformed(format!("manifest {digest}"), e))?;
        self.copy_layout_blob(
            dir,
            &Digest::parse(manifest.config().digest().as_ref())?,
            None,
        )?;
        for l in manifest.layers() {
            self.copy_layout_blob(dir, &Digest::parse(l.digest().as_ref())?, None)?;
        }
        Ok(digest.clone())
    }

    /// Stores `blobs/sha256/<hex>` of a layout (verified); returns its content when `read_limit`
    /// is given.
    fn copy_layout_blob(
        &self,
        dir: &Path,
        digest: &Digest,
        read_limit: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        if !self.has_blob(digest) {
            let path = inside(dir, &format!("blobs/sha256/{}", digest.hex()))?;
            let f = fs::File::open(&path)
                .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
            self.put_blob(f, Some(digest), &format!("blob {digest}"))?;
        }
        match read_limit {
            Some(limit) => self.read_blob(digest, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Imports a `docker save` archive unpacked in `dir`: `manifest.json` lists each image's
    /// config file, layer tarballs (bottom first) and `RepoTags`. The image is stored as an OCI
    /// manifest built from those files.
    pub fn import_docker_archive_dir(
        &self,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<Vec<String>, ImageError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let _ingest = self.ingest();
        let manifest_path = inside(dir, "manifest.json")?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&read_limited(&manifest_path, MAX_INDEX_SIZE)?)
                .map_err(|e| ImageError::malformed("docker-archive manifest.json", e))?;
        let mut imported = Vec::new();
        let mut seen: HashMap<String, (Digest, u64, &'static str)> = HashMap::new();
        for entry in entries {
            let mut refs = Vec::new();
            for t in entry.repo_tags.iter().flatten() {
                refs.push(Reference::parse(t)?);
            }
            if refs.is_empty() {
                match name {
                    Some(n) => refs.push(Reference::parse(n)?),
                    None => return Err(ImageError::NoName(dir.display().to_string())),
                }
            }
            let config_path = inside(dir, &entry.config)?;
            let (config_digest, config_size) = self.put_blob(
                io::Cursor::new(read_limited(&config_path, super::MAX_CONFIG_SIZE)?),
                None,
                "docker-archive config",
            )?;
            let mut layers = Vec::new();
            for l in &entry.layers {
                if let Some(known) = seen.get(l) {
                    layers.push(known.clone());
                    continue;
                }
                let path = inside(dir, l)?;
                let media_type = layer_media_type(&path)?;
                let f = fs::File::open(&path)
                    .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
                let (d, size) = self.put_blob(f, None, &format!("layer {l}"))?;
                seen.insert(l.clone(), (d.clone(), size, media_type));
                layers.push((d, size, media_type));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(),
                    "size": config_size,
                },
                "layers": layers.iter().map(|(d, size, mt)| serde_json::json!({
                    "mediaType": mt, "digest": d.to_string(), "size": size,
                })).collect::<Vec<_>>(),
            });
            let data =
                serde_json::to_vec(&manifest).map_err(|e| ImageError::malformed("manifest", e))?;
            let (manifest_digest, _) = self.put_blob(&data[..], None, "manifest")?;
            self.tag(&refs, &manifest_digest)?;
            imported.extend(refs.iter().map(ToString::to_string));
        }
        Ok(imported)
    }
}

/// The references an OCI layout's index entry stands for.
fn names_for(
    annotations: Option<&HashMap<String, String>>,
    name: Option<&str>,
    dir: &Path,
) -> Result<Vec<Reference>, ImageError> {
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    if let Some(full) = get(CONTAINERD_NAME) {
        return Ok(vec![Reference::parse(full)?]);
    }
    if let Some(r) = get(OCI_REF_NAME) {
        // A bare tag (`v1`) needs a name; anything with a ':' or '/' is a full reference.
        if r.contains(':') || r.contains('/') {
            return Ok(vec![Reference::parse(r)?]);
        }
        if let Some(n) = name {
            return Ok(vec![Reference::parse(n)?.with_tag(r)?]);
        }
        return Err(ImageError::NoName(dir.display().to_string()));
    }
    match name {
        Some(n) => Ok(vec![Reference::parse(n)?]),
        None => Err(ImageError::NoName(dir.display().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_annotations() {
        let dir = Path::new("/x");
        let ann = |k: &str, v: &str| Some(HashMap::from([(k.to_owned(), v.to_owned())]));
        let n = |a: Option<HashMap<String, String>>, name| {
            names_for(a.as_ref(), name, dir)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            n(ann(CONTAINERD_NAME, "kubia:v1"), None).unwrap(),
            ["docker.io/library/kubia:v1"]
        );
        assert_eq!(
            n(ann(OCI_REF_NAME, "127.0.0.1:5000/kubia:v2"), None).unwrap(),
            ["127.0.0.1:5000/kubia:v2"]
        );
        assert_eq!(
            n(ann(OCI_REF_NAME, "v3"), Some("kubia")).unwrap(),
            ["docker.io/library/kubia:v3"]
        );
        assert!(n(ann(OCI_REF_NAME, "v3"), None).is_err());
        assert_eq!(
            n(None, Some("busybox")).unwrap(),
            ["docker.io/library/busybox:latest"]
        );
        assert!(n(None, None).is_err());
    }

    #[test]
    fn archive_paths_stay_inside() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("a");
        fs::create_dir(&dir).unwrap();
        fs::write(outer.path().join("secret"), b"s").unwrap();
        fs::write(dir.join("ok"), b"o").unwrap();
        std::os::unix::fs::symlink("../secret", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("ok", dir.join("alias")).unwrap();
        assert!(inside(&dir, "ok").is_ok());
        assert!(inside(&dir, "/ok").is_ok());
        assert!(inside(&dir, "alias").is_ok());
        assert!(matches!(
            inside(&dir, "../secret"),
            Err(ImageError::UnsafePath { .. })
        ));
        assert!(matches!(
            inside(&dir, "link"),
            Err(ImageError::UnsafePath { .. })
        ));
    }
}
