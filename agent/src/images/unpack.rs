//! Unpacking one layer tarball into a directory that overlayfs can use as a lowerdir.
//!
//! OCI whiteouts become overlayfs whiteouts, as containerd's overlay snapshotter does:
//! `dir/.wh.name` becomes a character device 0/0 `dir/name`, and `dir/.wh..wh..opq` sets the
//! `trusted.overlay.opaque=y` xattr on `dir`. Both need root (CAP_MKNOD, CAP_SYS_ADMIN), as does
//! overlayfs itself.
//!
//! Layers are input from anywhere, so every entry is checked: `..` components are refused, every
//! parent directory must be a real directory inside the layer (never a symlink, so no symlink
//! can redirect a later entry), hard links must point at an existing non-directory inside the
//! layer (absolute link names count from the layer root), and device nodes are skipped (the
//! runtime provides /dev). xattrs in the tarball are not applied, so a layer cannot forge
//! overlay metadata (file capabilities are lost with them).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::ImageError;

/// The prefix of OCI whiteout files.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How to unpack.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Apply the uid/gid recorded in the tarball (needs root).
    pub ownership: bool,
}

/// What an entry's name means, before anything is written.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPath {
    /// The layer root itself (`./`): nothing to do.
    Root,
    /// An ordinary path, relative to the layer root.
    Plain(PathBuf),
    /// `parent/.wh.name`: `parent/name` is deleted.
    Whiteout { parent: PathBuf, name: PathBuf },
    /// `dir/.wh..wh..opq`: `dir` hides the lower layers' contents.
    Opaque(PathBuf),
}

/// Normalises a tar path: leading `/` and `.` components dropped, `..` refused.
pub fn normalize(path: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(ImageError::UnsafePath {
                    path: path.display().to_string(),
                    reason: "contains `..`",
                })
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Classifies an entry path.
pub fn classify(path: &Path) -> Result<EntryPath, ImageError> {
    let Some(rel) = normalize(path)? else {
        return Ok(EntryPath::Root);
    };
    let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == OPAQUE_MARKER.as_bytes() {
        return Ok(EntryPath::Opaque(parent));
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ImageError::UnsafePath {
                path: path.display().to_string(),
                reason: "whiteout of nothing",
            });
        }
        return Ok(EntryPath::Whiteout {
            parent,
            name: PathBuf::from(OsStr::from_bytes(hidden)),
        });
    }
    Ok(EntryPath::Plain(rel))
}

/// Unpacks the (uncompressed) tar stream `reader` into the existing directory `dest`.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    opts: UnpackOptions,
) -> Result<(), ImageError> {
    let ctx = |what: &str| format!("unpacking layer into {}: {what}", dest.display());
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(opts.ownership);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::io(ctx("reading tar"), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::io(ctx("reading tar entry"), e))?;
        let raw = entry
            .path()
            .map_err(|e| ImageError::io(ctx("entry path"), e))?
            .into_owned();
        let kind = entry.header().entry_type();
        let rel = match classify(&raw)? {
            EntryPath::Root => continue,
            EntryPath::Opaque(dir) => {
                let dir = ensure_dirs(dest, &dir)?;
                xattr::set(&dir, OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                    ImageError::io(
                        ctx(&format!(
                            "setting {OVERLAY_OPAQUE_XATTR} on {} (needs root)",
                            dir.display()
                        )),
                        e,
                    )
                })?;
                continue;
            }
            EntryPath::Whiteout { parent, name } => {
                let target = ensure_dirs(dest, &parent)?.join(name);
                remove_existing(&target)?;
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|e| {
                    ImageError::io(
                        ctx(&format!(
                            "creating whiteout {} (needs root)",
                            target.display()
                        )),
                        io::Error::from(e),
                    )
                })?;
                continue;
            }
            EntryPath::Plain(rel) => rel,
        };
        let parent = ensure_dirs(dest, rel.parent().unwrap_or(Path::new("")))?;
        let target = match rel.file_name() {
            Some(n) => parent.join(n),
            None => continue,
        };
        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::debug!(path = %rel.display(), "skipping device or fifo in layer");
                continue;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| ImageError::io(ctx("hard link name"), e))?
                    .ok_or_else(|| ImageError::UnsafePath {
                        path: rel.display().to_string(),
                        reason: "hard link without a target",
                    })?;
                let link_rel = normalize(&link)?.ok_or_else(|| ImageError::UnsafePath {
                    path: rel.display().to_string(),
                    reason: "hard link to the layer root",
                })?;
                let src_parent = existing_dirs(dest, link_rel.parent().unwrap_or(Path::new("")))
                    .ok_or_else(|| ImageError::UnsafePath {
                        path: link.display().to_string(),
                        reason: "hard link target is not inside the layer",
                    })?;
                let src = match link_rel.file_name() {
                    Some(n) => src_parent.join(n),
                    None => continue,
                };
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(ImageError::UnsafePath {
                            path: link.display().to_string(),
                            reason: "hard link target is missing or a directory",
                        })
                    }
                }
                if src == target {
                    continue;
                }
                remove_existing(&target)?;
                fs::hard_link(&src, &target)
                    .map_err(|e| ImageError::io(ctx(&format!("linking {}", rel.display())), e))?;
                continue;
            }
            EntryType::Directory => {
                if let Ok(m) = fs::symlink_metadata(&target) {
                    if !m.is_dir() {
                        remove_existing(&target)?;
                    }
                }
            }
            _ => {
                if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    remove_existing(&target)?;
                }
            }
        }
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| ImageError::io(ctx(&format!("writing {}", rel.display())), e))?;
        if !inside {
            return Err(ImageError::UnsafePath {
                path: raw.display().to_string(),
                reason: "outside the layer",
            });
        }
    }
    Ok(())
}

/// Creates the directories of `rel` under `root` as needed, refusing anything on the way that
/// is not a real directory (a symlink there could point anywhere).
fn ensure_dirs(root: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(n) = c else {
            return Err(ImageError::UnsafePath {
                path: rel.display().to_string(),
                reason: "not a plain relative path",
            });
        };
        cur.push(n);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::UnsafePath {
                    path: rel.display().to_string(),
                    reason: "a parent is a symlink or a file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| {
                    ImageError::io(format!("creating directory {}", cur.display()), e)
                })?;
            }
            Err(e) => return Err(ImageError::io(format!("inspecting {}", cur.display()), e)),
        }
    }
    Ok(cur)
}

/// `root/rel` if every component of it is an existing real directory.
fn existing_dirs(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(n) = c else {
            return None;
        };
        cur.push(n);
        if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(cur)
}

/// Removes whatever is at `path` (never following a symlink).
fn remove_existing(path: &Path) -> Result<(), ImageError> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.map_err(|e| ImageError::io(format!("replacing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_test_support::is_root;
    use std::os::unix::fs::FileTypeExt;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = header(EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// Writes a raw name into the header, bypassing the builder's own `..` checks (an attacker's
    /// tarball is not made with a careful builder).
    fn raw(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, link: Option<&str>) {
        let mut h = header(kind, 0);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    fn opts() -> UnpackOptions {
        UnpackOptions { ownership: false }
    }

    #[test]
    fn classify_whiteouts() {
        assert_eq!(classify(Path::new("./")).unwrap(), EntryPath::Root);
        assert_eq!(
            classify(Path::new("/etc/passwd")).unwrap(),
            EntryPath::Plain("etc/passwd".into())
        );
        assert_eq!(
            classify(Path::new("etc/.wh.passwd")).unwrap(),
            EntryPath::Whiteout {
                parent: "etc".into(),
                name: "passwd".into()
            }
        );
        assert_eq!(
            classify(Path::new(".wh.tmp")).unwrap(),
            EntryPath::Whiteout {
                parent: "".into(),
                name: "tmp".into()
            }
        );
        assert_eq!(
            classify(Path::new("./var/lib/.wh..wh..opq")).unwrap(),
            EntryPath::Opaque("var/lib".into())
        );
        assert!(classify(Path::new("a/.wh.")).is_err());
        assert!(classify(Path::new("a/.wh...")).is_err());
        assert!(classify(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn plain_files_links_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            let mut h = header(EntryType::Directory, 0);
            b.append_data(&mut h, "bin/", io::empty()).unwrap();
            file(b, "bin/busybox", b"elf");
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "bin/sh", "busybox").unwrap();
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "bin/abs", "/bin/busybox").unwrap();
            // Absolute hard link names count from the layer root.
            let mut h = header(EntryType::Link, 0);
            b.append_link(&mut h, "bin/hard", "/bin/busybox").unwrap();
            file(b, "deep/er/file", b"x");
        });
        unpack_layer(&data[..], dir.path(), opts()).unwrap();
        let p = dir.path();
        assert_eq!(fs::read(p.join("bin/busybox")).unwrap(), b"elf");
        assert_eq!(
            fs::read_link(p.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(p.join("bin/abs")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::read(p.join("bin/hard")).unwrap(), b"elf");
        assert_eq!(fs::read(p.join("deep/er/file")).unwrap(), b"x");
    }

    #[test]
    fn refuses_parent_dir_escape() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let data = tar_with(|b| raw(b, EntryType::Regular, "../escaped", None));
        let err = unpack_layer(&data[..], &dest, opts()).unwrap_err();
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
        assert!(!outer.path().join("escaped").exists());
    }

    #[test]
    fn refuses_writing_through_symlinks() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let data = tar_with(|b| {
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "link", &victim).unwrap();
            file(b, "link/owned", b"pwned");
        });
        let err = unpack_layer(&data[..], &dest, opts()).unwrap_err();
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
        assert!(!victim.join("owned").exists());

        // A relative symlink climbing out, then a whiteout through it.
        let dest2 = outer.path().join("layer2");
        fs::create_dir(&dest2).unwrap();
        let data = tar_with(|b| {
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "up", "../victim").unwrap();
            file(b, "up/.wh.x", b"");
        });
        let err = unpack_layer(&data[..], &dest2, opts()).unwrap_err();
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let victim = outer.path().join("victim-file");
        fs::write(&victim, b"original").unwrap();
        let data = tar_with(|b| {
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "f", &victim).unwrap();
            file(b, "f", b"new");
        });
        unpack_layer(&data[..], &dest, opts()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
    }

    #[test]
    fn refuses_hard_links_outside() {
        let outer = tempfile::tempdir().unwrap();
        let secret = outer.path().join("secret");
        fs::write(&secret, b"s").unwrap();
        for link in ["../secret", "/etc/passwd"] {
            let dest = tempfile::tempdir_in(outer.path()).unwrap();
            let data = tar_with(|b| raw(b, EntryType::Link, "stolen", Some(link)));
            let err = unpack_layer(&data[..], dest.path(), opts()).unwrap_err();
            assert!(
                matches!(err, ImageError::UnsafePath { .. }),
                "{link}: {err}"
            );
            assert!(!dest.path().join("stolen").exists());
        }
        // Through a symlinked directory.
        let dest = tempfile::tempdir_in(outer.path()).unwrap();
        let data = tar_with(|b| {
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "out", outer.path()).unwrap();
            raw(b, EntryType::Link, "stolen", Some("out/secret"));
        });
        let err = unpack_layer(&data[..], dest.path(), opts()).unwrap_err();
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn devices_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            raw(b, EntryType::Char, "dev/null", None);
            file(b, "ok", b"1");
        });
        unpack_layer(&data[..], dir.path(), opts()).unwrap();
        assert!(!dir.path().join("dev/null").exists());
        assert!(dir.path().join("ok").exists());
    }

    #[test]
    fn truncated_tarball_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(|b| file(b, "big", &[7u8; 4096]));
        let _ = unpack_layer(&data[..700], dir.path(), opts()).unwrap_err();
        let _ = unpack_layer(&b"garbage that is not a tar header"[..], dir.path(), opts());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !is_root() {
            eprintln!(
                "skipping whiteouts_become_overlay_whiteouts: needs root (mknod, trusted xattrs)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            file(b, "etc/.wh.motd", b"");
            file(b, "var/cache/.wh..wh..opq", b"");
            file(b, "var/cache/kept", b"k");
            file(b, ".wh.tmp", b"");
        });
        unpack_layer(&data[..], dir.path(), UnpackOptions { ownership: true }).unwrap();
        use std::os::unix::fs::MetadataExt;
        for w in ["etc/motd", "tmp"] {
            let m = fs::symlink_metadata(dir.path().join(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w}");
            assert_eq!(m.rdev(), 0, "{w}");
        }
        assert!(!dir.path().join("etc/.wh.motd").exists());
        assert_eq!(
            xattr::get(dir.path().join("var/cache"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(dir.path().join("var/cache/kept").exists());
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
    }
}
