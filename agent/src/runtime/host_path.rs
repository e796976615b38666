//! hostPath volumes: the type check of the kubelet's `hostPathTypeChecker`, creation for
//! `DirectoryOrCreate` and `FileOrCreate` that cannot be redirected, and a descriptor to mount.
//!
//! The path itself is the pod author's (a hostPath pod is trusted with the host: Pod Security's
//! baseline level forbids it), so symlinks the host already has on the way (`/var/run` ->
//! `/run`) are followed as the kubelet follows them. What is *created* is not: missing
//! directories are made one at a time with `mkdirat` below the deepest directory that exists,
//! never through a symlink (one planted by another pod that shares a parent directory would
//! otherwise send the creation, and the mount, elsewhere), and a new file is made with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` in its opened parent. The checked object is then opened with
//! `O_PATH` and mounted through that descriptor, so swapping a name between the check and the
//! mount changes nothing.

use std::os::fd::AsFd as _;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::subpath::{self, Resolved, SubPathError};

/// Why a hostPath cannot be used. Messages are the kubelet's where it has them.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// Not an absolute path, or one with `..` or a NUL.
    #[error("hostPath {0:?} must be an absolute path without '..'")]
    Invalid(String),
    /// The type is none the API knows.
    #[error("hostPath {path:?}: unknown type {type_:?}")]
    UnknownType {
        /// The path.
        path: String,
        /// The type given.
        type_: String,
    },
    /// Nothing is there and the type does not create.
    #[error("hostPath type check failed: {0} does not exist")]
    Missing(String),
    /// Something else than the type asks for is there.
    #[error("hostPath type check failed: {path} is not a {what}")]
    WrongType {
        /// The path.
        path: String,
        /// `directory`, `file`, `socket file`, ...
        what: &'static str,
    },
    /// Creating or opening failed (a symlink where a directory was to be made among them).
    #[error(transparent)]
    Open(#[from] SubPathError),
    /// A system call failed.
    #[error("hostPath {path}: {source}")]
    Os {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Checks (and for the `...OrCreate` types makes) the hostPath `path` of type `type_` (empty:
/// no check, as the API's default `""`), and returns it opened for mounting.
pub fn prepare(path: &str, type_: &str) -> Result<Resolved, HostPathError> {
    let p = Path::new(path);
    let clean = p.is_absolute()
        && !path.contains('\0')
        && p.components().all(|c| !matches!(c, Component::ParentDir));
    if !clean {
        return Err(HostPathError::Invalid(path.to_owned()));
    }
    let expect = |want: SFlag, what: &'static str| {
        move |resolved: Resolved| {
            if resolved.file_type() == want {
                Ok(resolved)
            } else {
                Err(HostPathError::WrongType {
                    path: path.to_owned(),
                    what,
                })
            }
        }
    };
    match type_ {
        "" => open_existing(path),
        "DirectoryOrCreate" => {
            let (base, missing) = existing_prefix(p);
            let rest: PathBuf = missing.iter().collect();
            let resolved = subpath::open_beneath(&base, &rest.to_string_lossy(), 0o755)?;
            expect(SFlag::S_IFDIR, "directory")(resolved)
        }
        "Directory" => open_existing(path).and_then(expect(SFlag::S_IFDIR, "directory")),
        "FileOrCreate" => {
            create_file(p)?;
            open_existing(path).and_then(expect(SFlag::S_IFREG, "file"))
        }
        "File" => open_existing(path).and_then(expect(SFlag::S_IFREG, "file")),
        "Socket" => open_existing(path).and_then(expect(SFlag::S_IFSOCK, "socket file")),
        "CharDevice" => open_existing(path).and_then(expect(SFlag::S_IFCHR, "character device")),
        "BlockDevice" => open_existing(path).and_then(expect(SFlag::S_IFBLK, "block device")),
        other => Err(HostPathError::UnknownType {
            path: path.to_owned(),
            type_: other.to_owned(),
        }),
    }
}

/// Opens what `path` names now (following the host's symlinks).
fn open_existing(path: &str) -> Result<Resolved, HostPathError> {
    match open(
        Path::new(path),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Resolved::from_fd(fd).map_err(HostPathError::Open)?),
        Err(Errno::ENOENT) => Err(HostPathError::Missing(path.to_owned())),
        Err(e) => Err(HostPathError::Os {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// The deepest ancestor of `path` (itself included) that exists, and the names below it.
fn existing_prefix(path: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
    let mut base = path.to_path_buf();
    let mut missing = Vec::new();
    while !base.exists() {
        match (base.file_name().map(ToOwned::to_owned), base.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                base = parent.to_path_buf();
            }
            _ => break,
        }
    }
    missing.reverse();
    (base, missing)
}

/// `FileOrCreate`: an empty 0644 file when nothing is there. The parent must exist (the
/// kubelet does not create it either); the file is made in the opened parent, and a symlink
/// appearing at the name meanwhile is refused rather than followed.
fn create_file(path: &Path) -> Result<(), HostPathError> {
    if path.exists() {
        return Ok(());
    }
    let shown = path.display().to_string();
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(HostPathError::Invalid(shown));
    };
    let dir = open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT | Errno::ENOTDIR => HostPathError::Missing(parent.display().to_string()),
        e => HostPathError::Os {
            path: shown.clone(),
            source: e.into(),
        },
    })?;
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o644)) {
        // EEXIST: someone made it meanwhile; the type check that follows decides.
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(HostPathError::Os {
            path: shown,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_with_the_kubelets_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let d = dir.path().display().to_string();
        let f = file.display().to_string();
        assert!(prepare(&d, "Directory").unwrap().is_dir());
        assert!(!prepare(&f, "File").unwrap().is_dir());
        assert_eq!(
            prepare(&f, "Directory").unwrap_err().to_string(),
            format!("hostPath type check failed: {f} is not a directory")
        );
        assert_eq!(
            prepare(&d, "Socket").unwrap_err().to_string(),
            format!("hostPath type check failed: {d} is not a socket file")
        );
        assert!(prepare("/dev/null", "CharDevice").is_ok());
        let missing = format!("{d}/nope");
        assert_eq!(
            prepare(&missing, "").unwrap_err().to_string(),
            format!("hostPath type check failed: {missing} does not exist")
        );
        assert!(matches!(
            prepare("relative/x", "Directory"),
            Err(HostPathError::Invalid(_))
        ));
        assert!(matches!(
            prepare(&format!("{d}/../etc"), ""),
            Err(HostPathError::Invalid(_))
        ));
        assert!(matches!(
            prepare(&d, "Fifo"),
            Err(HostPathError::UnknownType { .. })
        ));
    }

    #[test]
    fn or_create_types_make_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        let resolved = prepare(&deep.display().to_string(), "DirectoryOrCreate").unwrap();
        assert!(resolved.is_dir() && deep.is_dir());
        let file = dir.path().join("a/new.sock");
        prepare(&file.display().to_string(), "FileOrCreate").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644 & !umask());
        // FileOrCreate does not make the parent.
        let orphan = dir.path().join("none/f");
        assert!(matches!(
            prepare(&orphan.display().to_string(), "FileOrCreate"),
            Err(HostPathError::Missing(_))
        ));
    }

    /// A symlink planted where DirectoryOrCreate must create a directory is not followed:
    /// nothing is created at the link's target.
    #[test]
    fn a_planted_symlink_does_not_redirect_directory_creation() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("shared/data")).unwrap();
        // `shared/data` exists (through the link), so the walk starts below it: ask for a
        // path whose missing part starts at the link by removing its target first.
        let target = elsewhere.path().to_owned();
        drop(elsewhere);
        assert!(!target.exists());
        let asked = dir.path().join("shared/data/app");
        let err = prepare(&asked.display().to_string(), "DirectoryOrCreate").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!target.exists(), "nothing was made through the link");
    }

    fn umask() -> u32 {
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }
}
