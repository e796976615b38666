//! The node's image store: content-addressed blobs, a reference index and unpacked layers.
//!
//! Layout under `<root>` (the agent passes `<root-dir>/images`):
//!
//! ```text
//! blobs/sha256/<hex>       manifests, indexes, configs, compressed layers (verified on write)
//! layers/sha256/<diff-id>/ each layer unpacked once, an overlayfs lowerdir (whiteouts converted)
//! refs.json                normalised reference -> manifest digest
//! tmp/                     partial downloads and unpacks, renamed into place when complete
//! ```
//!
//! Everything is written to `tmp/` and renamed into place, so a crash leaves no half-written
//! blob or layer under its final name; `tmp/` is emptied when the store opens. A reference is
//! written to `refs.json` only once its layers are unpacked, so [`ImageStore::resolve`] of a listed
//! image never waits for work.
//!
//! Sources: OCI image layouts (directory or tar), `docker save` archives (directory or tar) and
//! registries speaking the Distribution API (see [`registry`]), directly or through mirrors (see
//! [`mirrors`]). [`ensure`](ImageStore::ensure)
//! applies a container's `imagePullPolicy`.
//!
//! The filesystem work is blocking: async callers use `spawn_blocking` (as [`ImageStore::pull`]
//! does for its own unpacking).

mod digest;
mod import;
pub mod layout;
pub mod mirrors;
mod reference;
pub mod registry;
mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

pub use digest::{Digest, HashingReader, InvalidDigest};
pub use mirrors::{Attempt, MirrorConfig, MirrorError, PullPlan};
pub use reference::{is_loopback_host, Reference};
pub use registry::{Credentials, RegistryConfig};
pub use unpack::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};

/// Largest manifest or index accepted (containerd's limit too).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// Failures of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse (kubelet reason `InvalidImageName`).
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string is malformed or not sha256.
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),
    /// Content does not match the digest it was announced with.
    #[error("content of {what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being verified.
        what: String,
        /// The announced digest.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A tarball or layout names a path outside the place it unpacks to.
    #[error("refusing unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A JSON document (manifest, index, config, refs) does not parse.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The image is well formed but uses something not supported (zstd layers, no linux/amd64).
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// No image with this reference is stored.
    #[error("image {0} is not present on this node")]
    NotFound(String),
    /// `imagePullPolicy: Never` and the image is not present (kubelet reason
    /// `ErrImageNeverPull`).
    #[error("container image {0} is not present with pull policy of Never")]
    NeverPull(String),
    /// Pulling from the registry failed (kubelet reason `ErrImagePull`).
    #[error("failed to pull image {reference}: {reason}")]
    Pull {
        /// The normalised reference.
        reference: String,
        /// What went wrong, readable.
        reason: String,
    },
    /// An archive or layout carries no image name and none was given.
    #[error("{0}: no image name in the archive and none given")]
    NoName(String),
}

impl ImageError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn malformed(what: impl Into<String>, reason: impl ToString) -> Self {
        Self::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// The waiting reason the kubelet reports in a container status for this failure.
    pub fn kubelet_reason(&self) -> &'static str {
        match self {
            Self::InvalidReference { .. } => "InvalidImageName",
            Self::NeverPull(_) => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// What the container runtime needs from an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference it was resolved from.
    pub reference: String,
    /// The image ID (config digest), as `imageID` in container statuses.
    pub id: Digest,
    /// The (platform) manifest's digest.
    pub manifest_digest: Digest,
    /// Unpacked layer directories, lowest first (overlayfs' `lowerdir=` lists them the other
    /// way round: topmost first).
    pub layers: Vec<PathBuf>,
    /// The process defaults from the image config.
    pub config: ImageConfig,
    /// Sum of the compressed layer sizes (what a node status reports as `sizeBytes`).
    pub size: u64,
}

/// The image config's process defaults (OCI `config` / Docker `container_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`; empty for the root.
    pub working_dir: Option<String>,
    /// `ExposedPorts` keys, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// `User` (`uid`, `uid:gid`, `name`, ...).
    pub user: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// One stored image with every reference pointing at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Normalised references (tags and `repo@digest` forms), sorted.
    pub references: Vec<String>,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The image ID (config digest).
    pub id: Digest,
    /// Sum of the compressed layer sizes.
    pub size: u64,
}

/// A container's `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time (a digest already present is not downloaded again).
    Always,
    /// Pull only when the image is not present.
    IfNotPresent,
    /// Never pull; a missing image is an error.
    Never,
}

impl PullPolicy {
    /// The policy of a container spec: the field if set, else Kubernetes' default (`Always` for
    /// `:latest` or no tag, `IfNotPresent` otherwise).
    pub fn for_container(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ => match Reference::parse(image) {
                Ok(r) if r.digest.is_none() && r.tag.as_deref() == Some("latest") => Self::Always,
                _ => Self::IfNotPresent,
            },
        }
    }
}

/// The image store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    registry: RegistryConfig,
    /// Serialises read-modify-write of `refs.json`.
    refs_lock: Mutex<()>,
    /// Number of imports and pulls in flight; garbage collection waits for none (it holds the
    /// lock while it runs, so none can start meanwhile).
    ingests: Mutex<usize>,
    http: std::sync::OnceLock<reqwest::Client>,
    /// One lock per reference being pulled through [`ImageStore::ensure`], so that pods starting
    /// together share one download.
    pulls: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether we may chown files and create overlay whiteouts.
    root_user: bool,
}

/// Keeps garbage collection away while content is being added.
struct IngestGuard(Arc<Inner>);

impl Drop for IngestGuard {
    fn drop(&mut self) {
        let mut n = self
            .0
            .ingests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n = n.saturating_sub(1);
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, with default registry settings.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        Self::open_with(root, RegistryConfig::default())
    }

    /// Opens the store with registry settings (plain-HTTP hosts, allowed hosts, credentials).
    pub fn open_with(
        root: impl Into<PathBuf>,
        registry: RegistryConfig,
    ) -> Result<Self, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            fs::create_dir_all(root.join(d))
                .map_err(|e| ImageError::io(format!("creating {}", root.join(d).display()), e))?;
        }
        // Leftovers of an interrupted download or unpack.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        let root_user = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                registry,
                refs_lock: Mutex::new(()),
                ingests: Mutex::new(0),
                http: std::sync::OnceLock::new(),
                pulls: Mutex::new(BTreeMap::new()),
                root_user,
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn ingest(&self) -> IngestGuard {
        let mut n = self
            .inner
            .ingests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n += 1;
        IngestGuard(self.inner.clone())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(d.hex())
    }

    fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers/sha256").join(diff_id.hex())
    }

    /// Whether the blob is stored.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores what `reader` yields, verifying it against `expected` if given; returns its digest
    /// and size.
    pub fn put_blob(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(|e| ImageError::io("creating a temporary blob", e))?;
        let mut hashing = HashingReader::new(reader);
        io::copy(&mut hashing, tmp.as_file_mut())
            .map_err(|e| ImageError::io(format!("writing blob for {what}"), e))?;
        let (actual, size) = hashing
            .finish()
            .map_err(|e| ImageError::io(format!("reading {what}"), e))?;
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        self.commit_blob(tmp, &actual)?;
        Ok((actual, size))
    }

    fn commit_blob(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> Result<(), ImageError> {
        let dest = self.blob_path(d);
        if dest.is_file() {
            return Ok(());
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("syncing blob", e))?;
        tmp.persist(&dest)
            .map_err(|e| ImageError::io(format!("storing blob {d}"), e.error))?;
        Ok(())
    }

    /// Reads a stored blob, refusing one larger than `limit`.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(d);
        let f =
            fs::File::open(&path).map_err(|e| ImageError::io(format!("opening blob {d}"), e))?;
        let mut data = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io(format!("reading blob {d}"), e))?;
        if data.len() as u64 > limit {
            return Err(ImageError::Unsupported(format!(
                "blob {d} is larger than {limit} bytes"
            )));
        }
        Ok(data)
    }

    fn read_manifest(&self, d: &Digest) -> Result<ImageManifest, ImageError> {
        let data = self.read_blob(d, MAX_MANIFEST_SIZE)?;
        ImageManifest::from_reader(&data[..])
            .map_err(|e| ImageError::malformed(format!("manifest {d}"), e))
    }

    fn read_config(&self, d: &Digest) -> Result<ImageConfiguration, ImageError> {
        let data = self.read_blob(d, MAX_CONFIG_SIZE)?;
        ImageConfiguration::from_reader(&data[..])
            .map_err(|e| ImageError::malformed(format!("image config {d}"), e))
    }

    /// Checks that a manifest's blobs are all stored, unpacks its layers and returns the image.
    /// The blobs must be present.
    fn prepare(&self, reference: &str, manifest_digest: &Digest) -> Result<Image, ImageError> {
        let manifest = self.read_manifest(manifest_digest)?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        let config = self.read_config(&config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::malformed(
                format!("image {reference}"),
                format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        let mut size = 0u64;
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let blob = Digest::parse(desc.digest().as_ref())?;
            let diff_id = Digest::parse(diff_id)?;
            size += desc.size();
            layers.push(self.unpack(&blob, &diff_id)?);
        }
        // A layer listed twice (old Docker images repeat the empty layer) would be the same
        // lowerdir twice, which overlayfs refuses; the lower copy changes nothing, as everything
        // it holds is in the upper one too, so only the topmost stays.
        let mut seen = BTreeSet::new();
        layers.reverse();
        layers.retain(|l| seen.insert(l.clone()));
        layers.reverse();
        let c = config.config().clone().unwrap_or_default();
        Ok(Image {
            reference: reference.to_owned(),
            id: config_digest,
            manifest_digest: manifest_digest.clone(),
            layers,
            config: ImageConfig {
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
                env: c.env().clone().unwrap_or_default(),
                working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
                exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
                user: c.user().clone().filter(|u| !u.is_empty()),
                stop_signal: c.stop_signal().clone(),
            },
            size,
        })
    }

    /// Unpacks a layer blob once per diff-id, verifying the diff-id on the way.
    fn unpack(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf, ImageError> {
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let f = fs::File::open(self.blob_path(blob))
            .map_err(|e| ImageError::io(format!("opening layer blob {blob}"), e))?;
        let mut f = io::BufReader::new(f);
        let magic = {
            use io::BufRead;
            f.fill_buf()
                .map_err(|e| ImageError::io(format!("reading layer blob {blob}"), e))?
                .get(..4)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(f))
        } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(ImageError::Unsupported(format!(
                "layer {blob} is zstd-compressed"
            )));
        } else {
            Box::new(f)
        };
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())
            .map_err(|e| ImageError::io("creating a temporary layer directory", e))?;
        // Directories for a layer are 0755 whatever the umask, as the layer's own entries are.
        fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| ImageError::io("chmod of a layer directory", e))?;
        let mut hashing = HashingReader::new(stream);
        unpack::unpack_layer(
            &mut hashing,
            tmp.path(),
            unpack::UnpackOptions {
                ownership: self.inner.root_user,
            },
        )?;
        let (actual, _) = hashing
            .finish()
            .map_err(|e| ImageError::io(format!("reading layer {blob}"), e))?;
        if actual != *diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {blob}"),
                expected: diff_id.clone(),
                actual,
            });
        }
        let tmp = tmp.keep();
        match fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Someone else unpacked the same layer meanwhile.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(ImageError::io(format!("storing layer {diff_id}"), e))
            }
        }
    }

    fn refs_path(&self) -> PathBuf {
        self.inner.root.join("refs.json")
    }

    fn read_refs(&self) -> Result<BTreeMap<String, Digest>, ImageError> {
        let raw: BTreeMap<String, String> = match fs::read(self.refs_path()) {
            Ok(data) => {
                serde_json::from_slice(&data).map_err(|e| ImageError::malformed("refs.json", e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ImageError::io("reading refs.json", e)),
        };
        raw.into_iter()
            .map(|(k, v)| Ok((k, Digest::parse(&v)?)))
            .collect()
    }

    fn write_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<(), ImageError> {
        let raw: BTreeMap<&str, String> = refs
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        let data = serde_json::to_vec_pretty(&raw).map_err(|e| ImageError::malformed("refs", e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(|e| ImageError::io("writing refs.json", e))?;
        tmp.write_all(&data)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| ImageError::io("writing refs.json", e))?;
        tmp.persist(self.refs_path())
            .map_err(|e| ImageError::io("writing refs.json", e.error))?;
        Ok(())
    }

    /// Points the references at a manifest whose blobs are stored; unpacks its layers first.
    fn tag(&self, references: &[Reference], manifest: &Digest) -> Result<Image, ImageError> {
        let first = references
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| manifest.to_string());
        let image = self.prepare(&first, manifest)?;
        let _g = self
            .inner
            .refs_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refs = self.read_refs()?;
        for r in references {
            refs.insert(r.to_string(), manifest.clone());
        }
        self.write_refs(&refs)?;
        Ok(image)
    }

    /// Finds a stored image. A reference with a digest also matches a stored manifest with that
    /// digest even if it was stored under another name.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        let key = r.to_string();
        let refs = self.read_refs()?;
        let manifest = match refs.get(&key) {
            Some(d) => d.clone(),
            None => match &r.digest {
                Some(d) => {
                    // `repo@digest` recorded at pull time, else the manifest itself.
                    let by_digest = r.with_digest(d).to_string();
                    match refs.get(&by_digest) {
                        Some(m) => m.clone(),
                        None if refs.values().any(|v| v == d) => d.clone(),
                        None => return Err(ImageError::NotFound(key)),
                    }
                }
                None => return Err(ImageError::NotFound(key)),
            },
        };
        self.prepare(&key, &manifest)
    }

    /// Whether an image with this reference is stored.
    pub fn contains(&self, reference: &str) -> bool {
        self.resolve(reference).is_ok()
    }

    /// Every stored image, with its references.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut by_manifest: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for (r, d) in self.read_refs()? {
            by_manifest.entry(d).or_default().push(r);
        }
        let mut out = Vec::new();
        for (digest, references) in by_manifest {
            let manifest = match self.read_manifest(&digest) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "skipping unreadable image");
                    continue;
                }
            };
            out.push(ImageSummary {
                references,
                id: Digest::parse(manifest.config().digest().as_ref())?,
                size: manifest.layers().iter().map(|l| l.size()).sum(),
                manifest_digest: digest,
            });
        }
        Ok(out)
    }

    /// Removes a reference; content no other reference needs is deleted unless an import or
    /// pull is in flight (then the next removal collects it). The caller must not remove images
    /// that running containers use.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let r = Reference::parse(reference)?;
        let key = r.to_string();
        {
            let _g = self
                .inner
                .refs_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut refs = self.read_refs()?;
            let Some(manifest) = refs.remove(&key) else {
                return Err(ImageError::NotFound(key));
            };
            // `repo@digest` aliases of the same repository go with the last tag.
            let repo = r.repository();
            if !refs.iter().any(|(k, v)| *v == manifest && !k.contains('@')) {
                refs.retain(|k, v| !(*v == manifest && k.starts_with(&format!("{repo}@"))));
            }
            self.write_refs(&refs)?;
        }
        self.gc()
    }

    /// Deletes blobs and unpacked layers no stored reference needs (skipped while an import or
    /// pull is in flight).
    pub fn gc(&self) -> Result<(), ImageError> {
        let busy = self
            .inner
            .ingests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *busy > 0 {
            return Ok(());
        }
        let refs = self.read_refs()?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for d in refs.values() {
            let Ok(manifest) = self.read_manifest(d) else {
                continue;
            };
            keep_blobs.insert(d.hex().to_owned());
            keep_blobs.insert(manifest.config().digest().digest().to_owned());
            for l in manifest.layers() {
                keep_blobs.insert(l.digest().digest().to_owned());
            }
            let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
            if let Ok(config) = self.read_config(&config_digest) {
                for id in config.rootfs().diff_ids() {
                    if let Ok(id) = Digest::parse(id) {
                        keep_layers.insert(id.hex().to_owned());
                    }
                }
            }
        }
        // Indexes that led to kept manifests (recorded as repo@index-digest).
        for (k, _) in refs.iter() {
            if let Some((_, d)) = k.split_once('@') {
                if let Ok(d) = Digest::parse(d) {
                    keep_blobs.insert(d.hex().to_owned());
                }
            }
        }
        let sweep = |dir: PathBuf, keep: &BTreeSet<String>| -> Result<(), ImageError> {
            let entries = fs::read_dir(&dir)
                .map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let p = e.path();
                let res = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                res.map_err(|e| ImageError::io(format!("removing {}", p.display()), e))?;
            }
            Ok(())
        };
        sweep(self.inner.root.join("blobs/sha256"), &keep_blobs)?;
        sweep(self.inner.root.join("layers/sha256"), &keep_layers)?;
        Ok(())
    }

    /// Makes sure the image is present as the pull policy says, and returns it.
    ///
    /// `Always` asks the registry; if that fails but the image is stored, the stored image is
    /// used (logged). Kubernetes would report `ErrImagePull` there; skiff nodes often run
    /// offline with preloaded images (the registry of `busybox:latest` is out of reach).
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        let local = {
            let store = self.clone();
            let reference = reference.to_owned();
            tokio::task::spawn_blocking(move || store.resolve(&reference))
                .await
                .map_err(|e| ImageError::io("resolving an image", io::Error::other(e)))?
        };
        match (policy, local) {
            (PullPolicy::Never, Ok(image)) | (PullPolicy::IfNotPresent, Ok(image)) => Ok(image),
            (PullPolicy::Never, Err(ImageError::NotFound(_))) => {
                Err(ImageError::NeverPull(r.to_string()))
            }
            (PullPolicy::Never, Err(e)) => Err(e),
            (PullPolicy::IfNotPresent, Err(_)) => {
                let lock = self.pull_lock(&r.to_string());
                let _pulling = lock.lock().await;
                // Whoever held the lock before may have pulled it.
                let store = self.clone();
                let again = r.to_string();
                match tokio::task::spawn_blocking(move || store.resolve(&again)).await {
                    Ok(Ok(image)) => Ok(image),
                    _ => self.pull(reference, credentials).await,
                }
            }
            (PullPolicy::Always, local) => match self.pull(reference, credentials).await {
                Ok(image) => Ok(image),
                Err(e) => match local {
                    Ok(image) => {
                        tracing::warn!(reference = %r, error = %e, "pull failed; using the stored image");
                        Ok(image)
                    }
                    Err(_) => Err(e),
                },
            },
        }
    }
}

impl ImageStore {
    fn pull_lock(&self, reference: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulls = self
            .inner
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget locks nobody holds or waits for.
        pulls.retain(|_, l| Arc::strong_count(l) > 1);
        pulls.entry(reference.to_owned()).or_default().clone()
    }
}

/// Picks the linux/amd64 manifest of an index (the first without a platform if none says so).
fn select_platform(index: &ImageIndex) -> Option<Digest> {
    use oci_spec::image::{Arch, Os};
    let manifests = index.manifests();
    let exact = manifests.iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    });
    let any = || manifests.iter().find(|m| m.platform().is_none());
    exact
        .or_else(any)
        .and_then(|m| Digest::parse(m.digest().as_ref()).ok())
}

/// Whether a manifest document is an index (OCI index or Docker manifest list).
fn is_index(data: &[u8], media_type: Option<&str>) -> bool {
    const INDEX_TYPES: [&str; 2] = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];
    if media_type.is_some_and(|m| INDEX_TYPES.contains(&m)) {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(p) => {
            p.media_type
                .as_deref()
                .is_some_and(|m| INDEX_TYPES.contains(&m))
                || (p.media_type.is_none() && p.manifests.is_some())
        }
        Err(_) => false,
    }
}

/// What the pod worker needs from the node's images: is one stored, and "make it present as the
/// pull policy says". The seam between the kubelet and [`ImageStore`], so that the worker's
/// tests run without a store on disk or a registry.
pub trait ImageService: Send + Sync + 'static {
    /// Whether `reference` is stored (decides the `Pulling` event and `imagePullPolicy`).
    fn contains(&self, reference: &str) -> bool;

    /// The image, pulled first if `policy` says so ([`ImageStore::ensure`], anonymous).
    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
    ) -> futures::future::BoxFuture<'a, Result<Image, ImageError>>;
}

impl ImageService for ImageStore {
    fn contains(&self, reference: &str) -> bool {
        ImageStore::contains(self, reference)
    }

    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
    ) -> futures::future::BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(ImageStore::ensure(self, reference, policy, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults() {
        use PullPolicy::*;
        assert_eq!(PullPolicy::for_container(None, "busybox"), Always);
        assert_eq!(PullPolicy::for_container(None, "busybox:latest"), Always);
        assert_eq!(PullPolicy::for_container(None, "kubia:v1"), IfNotPresent);
        let d = "sha256:".to_owned() + &"1".repeat(64);
        assert_eq!(
            PullPolicy::for_container(None, &format!("kubia@{d}")),
            IfNotPresent
        );
        assert_eq!(PullPolicy::for_container(Some("Never"), "busybox"), Never);
        assert_eq!(
            PullPolicy::for_container(Some("Always"), "kubia:v1"),
            Always
        );
    }

    #[test]
    fn blobs_are_verified_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        let (d, n) = store.put_blob(&b"hello"[..], Some(&good), "test").unwrap();
        assert_eq!((d.clone(), n), (good.clone(), 5));
        assert!(store.has_blob(&good));
        let err = store
            .put_blob(&b"evil"[..], Some(&Digest::of(b"other")), "test")
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&Digest::of(b"evil")));
        assert!(!store.has_blob(&Digest::of(b"other")));
        // Nothing left behind in tmp/.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn index_detection_and_platform_choice() {
        let amd = "sha256:".to_owned() + &"a".repeat(64);
        let arm = "sha256:".to_owned() + &"b".repeat(64);
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[
              {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{arm}","platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"{amd}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        assert!(is_index(index.as_bytes(), None));
        assert!(!is_index(br#"{"schemaVersion":2,"layers":[]}"#, None));
        let parsed = ImageIndex::from_reader(index.as_bytes()).unwrap();
        assert_eq!(select_platform(&parsed), Some(Digest::parse(&amd).unwrap()));
    }

    #[test]
    fn kubelet_reasons() {
        assert_eq!(
            ImageError::NeverPull("x".into()).kubelet_reason(),
            "ErrImageNeverPull"
        );
        assert_eq!(
            Reference::parse("Bad").unwrap_err().kubelet_reason(),
            "InvalidImageName"
        );
        let pull = ImageError::Pull {
            reference: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(pull.kubelet_reason(), "ErrImagePull");
    }
}
