//! The Debian-based sample images, built from Debian 12's packages with mmdebstrap:
//!
//! | image                                              | layers                          |
//! |----------------------------------------------------|---------------------------------|
//! | `debian:bookworm`, `debian:12`, `debian:latest`    | base                            |
//! | `ubuntu:latest` (NOT Ubuntu: the same Debian base) | base                            |
//! | `nginx:latest`, `nginx:stable`, `nginx:1.14.2`     | base + nginx-light, configured  |
//! | `python:3`, `python:3.11`, `python:latest`         | base + python3                  |
//!
//! All of them live in one OCI layout, `target/images/debian-family/`, so the base layer is
//! stored once (the agent imports every image its `index.json` lists).
//!
//! Why mmdebstrap rather than `apt-get download` + `dpkg-deb -x`: unpacking alone skips the
//! maintainer scripts, which create users (`www-data` is there by base-passwd, but
//! /etc/shadow etc. come from postinsts), alternatives (`awk`, `which`, `pager`) and python's
//! byte-compiled modules; the result would not be the Debian a user expects. mmdebstrap runs
//! them and takes 20-60 s per root filesystem here.
//!
//! The base is `--variant=minbase` (Essential packages and apt: coreutils, bash, dash, ...)
//! with a merged /usr made by mmdebstrap's hook instead of the `usrmerge` package (which would
//! pull in perl: 170 MB instead of 78 MB), and the docs, man pages and translations excluded
//! as in Debian's official `-slim` images.
//!
//! Reproducible: mmdebstrap with a fixed `SOURCE_DATE_EPOCH` gives a bit-identical tarball for
//! the same package versions (checked here: two runs, `cmp` equal). Each tree is then
//! rewritten as a sorted tar without user/group names; numeric owners and mtimes are kept
//! (Debian sets some owners on purpose, e.g. /etc/shadow's group and nginx's logs, and python
//! checks its .pyc files against the sources' mtimes), host-specific files mmdebstrap copies
//! from the host (/etc/hostname, /etc/resolv.conf) are dropped. The nginx and python layers
//! are the difference between their tree (base + package, a separate mmdebstrap run) and the
//! base tree, with OCI whiteouts for anything removed.
//!
//! Cache: `target/images/.cache/debian-<variant>.json` records the mmdebstrap arguments, the
//! versions of every package installed and the resulting layer. A run asks the host's apt
//! (`apt-cache policy`, from the same archive) for the candidate versions: when they and the
//! arguments are unchanged and the layer is in the layout, nothing is rebuilt. After
//! `apt-get update` brings a new version, the affected trees are built again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{write_layout, ImageSpec, Layer, LayerBlob, Meta, PATH_ENV};
use crate::util;

/// Debian's release the images are built from (the host's).
const SUITE: &str = "bookworm";
/// Timestamp for everything mmdebstrap creates (2023-06-10, Debian 12's release day), so
/// that the same packages give the same bytes.
pub const SOURCE_DATE_EPOCH: u64 = 1_686_355_200;
/// The layout directory under `target/images`.
pub const LAYOUT: &str = "debian-family";

/// The common mmdebstrap options (the suite, packages and output come after).
const MMDEBSTRAP_OPTS: &[&str] = &[
    "--variant=minbase",
    "--mode=root",
    "--format=tar",
    // Device nodes belong to the runtime's /dev, not to an image.
    "--skip=output/dev",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    // As Debian's official -slim images (debuerreotype's slimify list).
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/groff/*",
    "--dpkgopt=path-exclude=/usr/share/lintian/*",
    "--dpkgopt=path-exclude=/usr/share/linda/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
];

/// Files mmdebstrap copies from the host; the runtime provides them in a container.
const HOST_FILES: &[&str] = &["etc/hostname", "etc/resolv.conf"];

/// One root filesystem built by mmdebstrap: the base, or the base plus some packages.
#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    include: &'static [&'static str],
}

const BASE: Variant = Variant {
    name: "base",
    include: &[],
};
const NGINX: Variant = Variant {
    name: "nginx",
    include: &["nginx-light"],
};
const PYTHON: Variant = Variant {
    name: "python",
    include: &["python3"],
};

impl Variant {
    /// mmdebstrap's arguments before the output path.
    fn args(self) -> Vec<String> {
        let mut args: Vec<String> = MMDEBSTRAP_OPTS.iter().map(|s| s.to_string()).collect();
        if !self.include.is_empty() {
            args.push(format!("--include={}", self.include.join(",")));
        }
        args.push(SUITE.into());
        args
    }
}

/// How layers are written (tar layout, compressor): a cached layer of another format is built
/// again. 2: gzip by zlib-rs (1, unrecorded: by whichever flate2 backend the build had).
const LAYER_FORMAT: u32 = 2;

/// What a cached tree was built from and what it gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    /// [`LAYER_FORMAT`] when written (absent in older stamps).
    #[serde(default)]
    format: u32,
    args: Vec<String>,
    source_date_epoch: u64,
    /// The diff ID of the layer this one was computed against (the base), if any.
    parent: Option<String>,
    /// Every installed package and its version.
    packages: BTreeMap<String, String>,
    digest: String,
    diff_id: String,
    size: u64,
}

impl Stamp {
    fn layer(&self) -> LayerBlob {
        LayerBlob {
            digest: self.digest.clone(),
            diff_id: self.diff_id.clone(),
            size: self.size,
            data: None,
        }
    }
}

/// Builds (or finds up to date) the Debian-based images under `out`. Without root or
/// mmdebstrap, and nothing cached, it warns and skips them.
pub fn build(out: &Path) -> anyhow::Result<()> {
    build_with(out, false).map(drop)
}

/// [`build`], or with `fresh` a rebuild that ignores the cache; returns the digests of the
/// base, nginx and python layers (`None` when they cannot be built here).
fn build_with(out: &Path, fresh: bool) -> anyhow::Result<Option<[String; 3]>> {
    let cache = out.join(".cache");
    std::fs::create_dir_all(&cache)?;
    let layout = out.join(LAYOUT);
    let variants = [BASE, NGINX, PYTHON];
    let stamp_path = |v: Variant| cache.join(format!("debian-{}.json", v.name));
    let stamps: Vec<Option<Stamp>> = if fresh {
        vec![None; variants.len()]
    } else {
        read_stamps(&cache)
    };
    let names: BTreeSet<&str> = stamps
        .iter()
        .flatten()
        .flat_map(|s| s.packages.keys().map(String::as_str))
        .collect();
    let candidates = if names.is_empty() {
        BTreeMap::new()
    } else {
        candidate_versions(&names)?
    };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let valid = |v: Variant, s: &Option<Stamp>, parent: Option<&str>| {
        s.as_ref().is_some_and(|s| {
            s.format == LAYER_FORMAT
                && s.args == v.args()
                && s.source_date_epoch == SOURCE_DATE_EPOCH
                && s.parent.as_deref() == parent
                && s.packages
                    .iter()
                    .all(|(p, ver)| candidates.get(p) == Some(ver))
                && blob(&s.digest).is_file()
        })
    };
    let base_ok = valid(BASE, &stamps[0], None);
    let base_diff_id = stamps[0].as_ref().map(|s| s.diff_id.clone());
    let ok: Vec<bool> = variants
        .iter()
        .zip(&stamps)
        .enumerate()
        .map(|(i, (v, s))| {
            if i == 0 {
                base_ok
            } else {
                base_ok && valid(*v, s, base_diff_id.as_deref())
            }
        })
        .collect();
    let need: Vec<Variant> = variants
        .iter()
        .zip(&ok)
        .filter(|(_, ok)| !**ok)
        .map(|(v, _)| *v)
        .collect();
    if !need.is_empty() {
        let why = if !util::is_root() {
            Some("mmdebstrap needs root".to_owned())
        } else if !has_program("mmdebstrap") {
            Some("mmdebstrap is not installed (`cargo xtask setup` as root)".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            eprintln!(
                "images: WARNING: not building the Debian-based images (debian, ubuntu, nginx, \
                 python): {why}"
            );
            return Ok(None);
        }
    }

    // The trees to build, in parallel (mostly downloads and dpkg: 2 cores suffice).
    let names: Vec<&str> = need.iter().map(|v| v.name).collect();
    if !need.is_empty() {
        eprintln!(
            "images: building Debian {SUITE} root filesystems with mmdebstrap: {}",
            names.join(", ")
        );
    }
    let tmp = cache.join("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let tarballs: Vec<anyhow::Result<PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = need
            .iter()
            .map(|v| {
                let tmp = &tmp;
                let cache = &cache;
                s.spawn(move || mmdebstrap(*v, tmp, cache))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("mmdebstrap thread panicked")))
            })
            .collect()
    });
    let mut built: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for (v, t) in need.iter().zip(tarballs) {
        built.insert(v.name, t?);
    }

    // The base tree: freshly built, or read back from its cached layer when an upper tree
    // needs it to compute a difference.
    let mut new_stamps: Vec<Option<Stamp>> = stamps.clone();
    let base_tree = if let Some(tar) = built.get("base") {
        let mut tree = read_tree(std::fs::File::open(tar)?)?;
        prepare(&mut tree);
        Some(tree)
    } else if need.is_empty() {
        None
    } else {
        let s = stamps[0].as_ref().expect("a valid base has a stamp");
        let gz = std::fs::File::open(blob(&s.digest))?;
        Some(read_tree(flate2::read::GzDecoder::new(gz))?)
    };
    let mut layers: Vec<Option<LayerBlob>> = vec![None; 3];
    if let Some(tree) = &base_tree {
        if built.contains_key("base") {
            let all: BTreeMap<String, Option<&Node>> =
                tree.iter().map(|(p, n)| (p.clone(), Some(n))).collect();
            let layer = LayerBlob::gzip(&write_tree(&all)?)?;
            new_stamps[0] = Some(Stamp {
                format: LAYER_FORMAT,
                args: BASE.args(),
                source_date_epoch: SOURCE_DATE_EPOCH,
                parent: None,
                packages: packages(tree),
                digest: layer.digest.clone(),
                diff_id: layer.diff_id.clone(),
                size: layer.size,
            });
            layers[0] = Some(layer);
        }
    }
    for (i, v) in variants.iter().enumerate().skip(1) {
        let Some(tar) = built.get(v.name) else {
            continue;
        };
        let base = base_tree.as_ref().expect("built when an upper tree is");
        let parent = new_stamps[0].as_ref().expect("base stamp").diff_id.clone();
        let mut tree = read_tree(std::fs::File::open(tar)?)?;
        prepare(&mut tree);
        match v.name {
            "nginx" => customize_nginx(&mut tree)?,
            "python" => customize_python(&mut tree),
            _ => {}
        }
        let layer = LayerBlob::gzip(&write_tree(&diff(base, &tree))?)?;
        new_stamps[i] = Some(Stamp {
            format: LAYER_FORMAT,
            args: v.args(),
            source_date_epoch: SOURCE_DATE_EPOCH,
            parent: Some(parent),
            packages: packages(&tree),
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            size: layer.size,
        });
        layers[i] = Some(layer);
    }
    std::fs::remove_dir_all(&tmp)?;
    let layers: Vec<LayerBlob> = layers
        .into_iter()
        .zip(&new_stamps)
        .map(|(l, s)| l.unwrap_or_else(|| s.as_ref().expect("stamp").layer()))
        .collect();
    let stamps: Vec<Stamp> = new_stamps
        .into_iter()
        .map(|s| s.expect("every variant has a stamp now"))
        .collect();

    write_layout(&layout, &specs(&stamps, &layers))?;
    // Stamps last: a stamp is only trusted once its layer is in the layout.
    for (v, s) in variants.iter().zip(&stamps) {
        std::fs::write(stamp_path(*v), serde_json::to_vec_pretty(s)?)?;
    }
    Ok(Some([
        layers[0].digest.clone(),
        layers[1].digest.clone(),
        layers[2].digest.clone(),
    ]))
}

/// Builds the Debian trees afresh (ignoring the cache) in a scratch directory under
/// `out/.cache` and checks that the layers are bit-identical to the cached build's when the
/// package versions are the same, else to a second fresh build's. The scratch directory is
/// removed either way.
pub fn verify_reproducible(out: &Path) -> anyhow::Result<()> {
    let scratch = out.join(".cache/verify");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let result = verify_in(out, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn verify_in(out: &Path, scratch: &Path) -> anyhow::Result<()> {
    let fresh = |name: &str| -> anyhow::Result<([String; 3], Vec<Option<Stamp>>)> {
        let dir = scratch.join(name);
        let digests = build_with(&dir, true)?
            .context("the Debian images cannot be built here (root and mmdebstrap needed)")?;
        Ok((digests, read_stamps(&dir.join(".cache"))))
    };
    let (first, first_stamps) = fresh("a")?;
    let cached = read_stamps(&out.join(".cache"));
    let same_packages = cached.iter().zip(&first_stamps).all(|(c, f)| {
        matches!((c, f), (Some(c), Some(f))
            if c.packages == f.packages && c.args == f.args && c.format == f.format)
    });
    let (other, what) = if same_packages {
        let digests: Vec<String> = cached
            .iter()
            .map(|s| s.as_ref().map(|s| s.digest.clone()).unwrap_or_default())
            .collect();
        (digests, "the cached build")
    } else {
        eprintln!("images: no cached build of the same packages: building a second time");
        (fresh("b")?.0.to_vec(), "a second fresh build")
    };
    for (i, v) in [BASE, NGINX, PYTHON].iter().enumerate() {
        anyhow::ensure!(
            first[i] == other[i],
            "the {} layer is not reproducible: {} fresh, {} in {what}",
            v.name,
            first[i],
            other[i]
        );
        eprintln!(
            "images: {} layer reproducible: {} (same as {what})",
            v.name, first[i]
        );
    }
    Ok(())
}

fn read_stamps(cache: &Path) -> Vec<Option<Stamp>> {
    [BASE, NGINX, PYTHON]
        .iter()
        .map(|v| {
            std::fs::read(cache.join(format!("debian-{}.json", v.name)))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
        })
        .collect()
}

/// The images of the layout, from the three layers and what they contain.
fn specs(stamps: &[Stamp], layers: &[LayerBlob]) -> Vec<ImageSpec> {
    let version =
        |stamp: &Stamp, package: &str| stamp.packages.get(package).cloned().unwrap_or_default();
    let debian_version = version(&stamps[0], "base-files");
    let base_labels = |extra: serde_json::Value| {
        let mut labels = json!({
            "org.opencontainers.image.description": format!(
                "Debian 12 ({SUITE}) minbase built by `cargo xtask images` with mmdebstrap; \
                 docs, man pages and translations excluded as in debian:{SUITE}-slim"
            ),
            "org.opencontainers.image.version": "12",
            "dev.skiff.debian.base-files": debian_version,
            "dev.skiff.image.source": "Debian packages (deb.debian.org), mmdebstrap",
        });
        if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        labels
    };
    let base_config = |labels: serde_json::Value| {
        json!({
            "Cmd": ["bash"],
            "Env": [PATH_ENV],
            "Labels": labels,
        })
    };
    let nginx_version = upstream(&version(&stamps[1], "nginx-light"));
    let python_version = upstream(&version(&stamps[2], "python3"));
    let lib = |repo: &str, tags: &[&str]| -> Vec<String> {
        tags.iter()
            .map(|t| format!("docker.io/library/{repo}:{t}"))
            .collect()
    };
    vec![
        ImageSpec {
            refs: lib("debian", &[SUITE, "12", "latest"]),
            config: base_config(base_labels(json!({}))),
            layers: vec![layers[0].clone()],
        },
        ImageSpec {
            refs: lib("ubuntu", &["latest"]),
            config: base_config(base_labels(json!({
                "dev.skiff.image.note": "This is NOT Ubuntu: it is skiff's Debian 12 image under \
                    the name test suites and tutorials ask for (no Ubuntu archive is reachable \
                    here). /etc/os-release says Debian.",
            }))),
            layers: vec![layers[0].clone()],
        },
        ImageSpec {
            refs: lib("nginx", &["latest", "stable", "1.14.2"]),
            config: json!({
                "Cmd": ["nginx", "-g", "daemon off;"],
                "Env": [PATH_ENV, format!("NGINX_VERSION={nginx_version}")],
                "ExposedPorts": {"80/tcp": {}},
                "StopSignal": "SIGQUIT",
                "Labels": base_labels(json!({
                    "dev.skiff.image.note": format!(
                        "Debian's nginx-light {} configured as the official nginx image \
                         (conf.d/default.conf, /usr/share/nginx/html, logs to stdout/stderr); \
                         tags other than latest are aliases of the same build",
                        version(&stamps[1], "nginx-light")
                    ),
                })),
            }),
            layers: vec![layers[0].clone(), layers[1].clone()],
        },
        ImageSpec {
            refs: lib("python", &["3", "3.11", "latest"]),
            config: json!({
                "Cmd": ["python3"],
                "Env": [PATH_ENV, "LANG=C.UTF-8", format!("PYTHON_VERSION={python_version}")],
                "Labels": base_labels(json!({
                    "dev.skiff.image.note": format!(
                        "Debian's python3 {} (no pip), /usr/local/bin/python -> python3 as in \
                         the official image",
                        version(&stamps[2], "python3")
                    ),
                })),
            }),
            layers: vec![layers[0].clone(), layers[2].clone()],
        },
    ]
}

/// The upstream part of a Debian version: `1:1.22.1-9+deb12u12` -> `1.22.1`.
fn upstream(version: &str) -> String {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u).to_owned()
}

fn has_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
}

/// Runs mmdebstrap for `v` into a tarball under `tmp`; its log goes to
/// `cache/mmdebstrap-<variant>.log`.
fn mmdebstrap(v: Variant, tmp: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let out = tmp.join(format!("{}.tar", v.name));
    let log_path = cache.join(format!("mmdebstrap-{}.log", v.name));
    let log = std::fs::File::create(&log_path)?;
    let started = std::time::Instant::now();
    let status = Command::new("mmdebstrap")
        .args(v.args())
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running mmdebstrap")?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "mmdebstrap for {} failed with {status}; the end of {}:\n{}",
            v.name,
            log_path.display(),
            tail.join("\n")
        );
    }
    eprintln!(
        "images: mmdebstrap {} took {:.1} s",
        v.name,
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The candidate version of each package per the host's apt (same archive as mmdebstrap's).
fn candidate_versions(names: &BTreeSet<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let out = Command::new("apt-cache")
        .arg("policy")
        .args(names)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        // No apt here: nothing can be checked, so nothing cached counts as up to date.
        _ => return Ok(BTreeMap::new()),
    };
    Ok(parse_policy(&String::from_utf8_lossy(&out.stdout)))
}

/// `apt-cache policy` output -> package -> candidate version.
fn parse_policy(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let name = line.trim_end_matches(':');
            // Multi-arch qualified names (`libc6:amd64`) are the native package here.
            let name = name.strip_suffix(":amd64").unwrap_or(name);
            current = Some(name.to_owned());
        } else if let (Some(name), Some(v)) = (&current, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            if v != "(none)" {
                out.insert(name.clone(), v.to_owned());
            }
        }
    }
    out
}

/// The installed packages and versions of a tree, from dpkg's status file.
fn packages(tree: &Tree) -> BTreeMap<String, String> {
    let Some(status) = tree.get("var/lib/dpkg/status") else {
        return BTreeMap::new();
    };
    parse_status(&String::from_utf8_lossy(&status.data))
}

fn parse_status(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(p), Some(v), Some(s)) = (field("Package"), field("Version"), field("Status")) {
            if s.ends_with(" installed") {
                out.insert(p, v);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Trees: a root filesystem as sorted paths, read from and written to tar.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    meta: Meta,
    data: Arc<Vec<u8>>,
    /// A symlink's target.
    link: String,
    /// For a file that was a hard link in the tarball: the path it linked to.
    hardlink_of: Option<String>,
}

impl Node {
    /// Same content and metadata (whether it was a hard link does not matter).
    fn same(&self, other: &Node) -> bool {
        self.kind == other.kind
            && self.meta == other.meta
            && self.link == other.link
            && self.data == other.data
    }

    fn new(kind: Kind, mode: u32, data: Vec<u8>, link: &str) -> Node {
        Node {
            kind,
            meta: Meta {
                mode,
                uid: 0,
                gid: 0,
                mtime: SOURCE_DATE_EPOCH,
            },
            data: Arc::new(data),
            link: link.to_owned(),
            hardlink_of: None,
        }
    }
}

/// Paths relative to the root, without `./` or a trailing `/`.
type Tree = BTreeMap<String, Node>;

/// A tar path as a tree key; `None` for the root itself.
fn tree_path(p: &Path) -> anyhow::Result<Option<String>> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(
                n.to_str()
                    .with_context(|| format!("non-UTF-8 path {}", p.display()))?,
            ),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => anyhow::bail!("unexpected path {} in a root filesystem", p.display()),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn read_tree(reader: impl std::io::Read) -> anyhow::Result<Tree> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new();
    for entry in archive.entries()? {
        let mut e = entry?;
        let Some(path) = tree_path(&e.path()?)? else {
            continue;
        };
        let h = e.header();
        let meta = Meta {
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()?,
        };
        let kind = h.entry_type();
        let node = match kind {
            tar::EntryType::Directory => Node {
                meta,
                ..Node::new(Kind::Dir, 0, Vec::new(), "")
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                e.read_to_end(&mut data)?;
                Node {
                    meta,
                    ..Node::new(Kind::File, 0, data, "")
                }
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()?
                    .with_context(|| format!("symlink {path} without a target"))?;
                let target = target
                    .to_str()
                    .with_context(|| format!("non-UTF-8 symlink target of {path}"))?
                    .to_owned();
                Node {
                    meta,
                    ..Node::new(Kind::Symlink, 0, Vec::new(), &target)
                }
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name()?
                    .with_context(|| format!("hard link {path} without a target"))?;
                let target =
                    tree_path(&target)?.with_context(|| format!("hard link {path} to the root"))?;
                let to = tree
                    .get(&target)
                    .with_context(|| format!("hard link {path} to {target}, not seen before"))?;
                Node {
                    meta,
                    data: to.data.clone(),
                    hardlink_of: Some(target),
                    ..Node::new(Kind::File, 0, Vec::new(), "")
                }
            }
            other => anyhow::bail!("unexpected {other:?} entry {path} in a root filesystem"),
        };
        tree.insert(path, node);
    }
    Ok(tree)
}

/// Writes entries (a `None` is a whiteout file) as a tar in path order. A file that was a
/// hard link stays one when its target is already in this tar with the same content.
fn write_tree(entries: &BTreeMap<String, Option<&Node>>) -> anyhow::Result<Vec<u8>> {
    let mut layer = Layer::new();
    for (path, node) in entries {
        let Some(n) = node else {
            let meta = Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: SOURCE_DATE_EPOCH,
            };
            layer.entry(path, tar::EntryType::Regular, meta, &[], None)?;
            continue;
        };
        match n.kind {
            Kind::Dir => layer.entry(path, tar::EntryType::Directory, n.meta, &[], None)?,
            Kind::Symlink => {
                layer.entry(path, tar::EntryType::Symlink, n.meta, &[], Some(&n.link))?
            }
            Kind::File => {
                let link = n.hardlink_of.as_deref().filter(|t| {
                    *t < path.as_str()
                        && entries
                            .get(*t)
                            .and_then(|o| *o)
                            .is_some_and(|to| to.kind == Kind::File && to.data == n.data)
                });
                match link {
                    Some(t) => layer.entry(path, tar::EntryType::Link, n.meta, &[], Some(t))?,
                    None => layer.entry(path, tar::EntryType::Regular, n.meta, &n.data, None)?,
                }
            }
        }
    }
    layer.finish()
}

/// The parent of a tree path ("" for a top-level one) and its last component.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The layer that turns `lower` into `upper`: new or changed entries, a whiteout for each
/// removed one (one for a removed directory, not one per child), and the parent directories
/// of all of them as `upper` has them.
fn diff<'a>(lower: &Tree, upper: &'a Tree) -> BTreeMap<String, Option<&'a Node>> {
    let mut out: BTreeMap<String, Option<&Node>> = BTreeMap::new();
    for (p, n) in upper {
        if lower.get(p).is_none_or(|l| !l.same(n)) {
            out.insert(p.clone(), Some(n));
        }
    }
    for p in lower.keys() {
        if upper.contains_key(p) {
            continue;
        }
        let (parent, name) = split(p);
        if !parent.is_empty() && !upper.contains_key(parent) {
            continue;
        }
        let wh = if parent.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{parent}/.wh.{name}")
        };
        out.insert(wh, None);
    }
    let paths: Vec<String> = out.keys().cloned().collect();
    for p in paths {
        let mut rest = p.as_str();
        while let Some((parent, _)) = rest.rsplit_once('/') {
            if let Some(n) = upper.get(parent) {
                out.entry(parent.to_owned()).or_insert(Some(n));
            }
            rest = parent;
        }
    }
    out
}

/// What every tree gets: no host files; an empty /dev for the runtime to fill.
fn prepare(tree: &mut Tree) {
    for f in HOST_FILES {
        tree.remove(*f);
    }
    tree.entry("dev".into())
        .or_insert_with(|| Node::new(Kind::Dir, 0o755, Vec::new(), ""));
}

/// The official image's server block (docker-nginx's default.conf), IPv4 only: its entrypoint
/// adds `listen [::]:80` only where IPv6 works, and this image has no entrypoint.
const NGINX_DEFAULT_CONF: &str = "server {
    listen       80;
    server_name  localhost;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
";

const NGINX_50X: &str = "<!DOCTYPE html>
<html>
<head>
<title>Error</title>
</head>
<body>
<h1>An error occurred.</h1>
<p>Sorry, the page you are looking for is currently unavailable.<br/>
Please try again later.</p>
</body>
</html>
";

/// Debian's nginx set up as the official image: the welcome page served from
/// /usr/share/nginx/html by conf.d/default.conf (Debian's own default site removed), and the
/// logs linked to the container's stdout and stderr.
fn customize_nginx(tree: &mut Tree) -> anyhow::Result<()> {
    anyhow::ensure!(
        tree.contains_key("usr/share/nginx/html/index.html"),
        "nginx-light no longer ships /usr/share/nginx/html/index.html"
    );
    tree.remove("etc/nginx/sites-enabled/default");
    tree.insert(
        "etc/nginx/conf.d/default.conf".into(),
        Node::new(Kind::File, 0o644, NGINX_DEFAULT_CONF.into(), ""),
    );
    tree.insert(
        "usr/share/nginx/html/50x.html".into(),
        Node::new(Kind::File, 0o644, NGINX_50X.into(), ""),
    );
    for (log, to) in [("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")] {
        tree.insert(
            format!("var/log/nginx/{log}"),
            Node::new(Kind::Symlink, 0o777, Vec::new(), to),
        );
    }
    Ok(())
}

/// `/usr/local/bin/python` as in the official image (Debian has only `python3`).
fn customize_python(tree: &mut Tree) {
    tree.insert(
        "usr/local/bin/python".into(),
        Node::new(Kind::Symlink, 0o777, Vec::new(), "/usr/bin/python3"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str) -> Node {
        Node::new(Kind::File, 0o644, data.into(), "")
    }

    fn dir() -> Node {
        Node::new(Kind::Dir, 0o755, Vec::new(), "")
    }

    fn tree(entries: &[(&str, Node)]) -> Tree {
        entries
            .iter()
            .map(|(p, n)| (p.to_string(), n.clone()))
            .collect()
    }

    #[test]
    fn diff_has_changes_whiteouts_and_parents() {
        let lower = tree(&[
            ("etc", dir()),
            ("etc/a", file("a")),
            ("etc/b", file("b")),
            ("gone", dir()),
            ("gone/x", file("x")),
            ("top", file("t")),
            ("usr", dir()),
            ("usr/lib", dir()),
        ]);
        let upper = tree(&[
            ("etc", dir()),
            ("etc/a", file("a2")),
            ("usr", dir()),
            ("usr/lib", dir()),
            ("usr/lib/new", file("n")),
        ]);
        let d = diff(&lower, &upper);
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                ".wh.gone",
                ".wh.top",
                "etc",
                "etc/.wh.b",
                "etc/a",
                "usr",
                "usr/lib",
                "usr/lib/new"
            ]
        );
        assert!(d[".wh.gone"].is_none());
        assert_eq!(*d["etc/a"].unwrap().data, b"a2");
    }

    #[test]
    fn trees_round_trip_through_tar_with_hard_links() {
        let mut t = tree(&[("bin", dir()), ("bin/gunzip", file("gz"))]);
        t.insert(
            "bin/uncompress".into(),
            Node {
                hardlink_of: Some("bin/gunzip".into()),
                ..file("gz")
            },
        );
        t.insert(
            "bin/sh".into(),
            Node::new(Kind::Symlink, 0o777, Vec::new(), "dash"),
        );
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        t.insert(long.clone(), file("long"));
        let all = t.iter().map(|(p, n)| (p.clone(), Some(n))).collect();
        let tar = write_tree(&all).unwrap();
        let back = read_tree(&tar[..]).unwrap();
        assert_eq!(back.len(), t.len());
        for (p, n) in &t {
            assert!(back[p].same(n), "{p}");
        }
        assert_eq!(
            back["bin/uncompress"].hardlink_of.as_deref(),
            Some("bin/gunzip")
        );
        // Deterministic bytes.
        assert_eq!(tar, write_tree(&all).unwrap());
    }

    #[test]
    fn parses_apt_policy_and_dpkg_status() {
        let policy = "libc6:\n  Installed: (none)\n  Candidate: 2.36-9+deb12u10\n  Version table:\n     2.36-9+deb12u10 500\nnginx-light:\n  Installed: (none)\n  Candidate: 1.22.1-9+deb12u12\ngone:\n  Installed: (none)\n  Candidate: (none)\n";
        let p = parse_policy(policy);
        assert_eq!(p.len(), 2);
        assert_eq!(p["libc6"], "2.36-9+deb12u10");
        let status = "Package: a\nStatus: install ok installed\nVersion: 1.0-1\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n\nPackage: c\nVersion: 1:3.1-2\nStatus: install ok installed\n";
        let s = parse_status(status);
        assert_eq!(s.len(), 2);
        assert_eq!(upstream(&s["c"]), "3.1");
        assert_eq!(upstream("1.22.1-9+deb12u12"), "1.22.1");
        assert_eq!(upstream("3.11.2-1+b1"), "3.11.2");
    }
}
