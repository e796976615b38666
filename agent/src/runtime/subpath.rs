//! subPath mounts that cannot escape their volume (the CVE-2017-1002101 class).
//!
//! A container can write symlinks into its own volumes. Joining `volume/subPath` as a path and
//! handing it to the mount would follow a planted `x -> /` and mount the host's root into the
//! next container. So, as the kubelet's `subpath_linux.go` does, the subPath is opened one
//! component at a time below the volume with `O_PATH | O_NOFOLLOW` (missing directories made
//! with `mkdirat` in the directory just opened), a symlink anywhere is refused, and the mount
//! source is the opened file descriptor (`/proc/self/fd/N`), not a path that could change after
//! the check. The descriptor is bind mounted onto a directory of the agent's own
//! (`<pod dir>/volume-subpaths/<volume>/<container>/<index>`, below the pod's 0700 directory),
//! and that stable path is what the container's bind mount uses: libcontainer resolves bind
//! sources by path (`canonicalize`), which must not see a path the container controls.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

/// The directory below a pod's directory holding the subPath bind mounts.
pub const SUBPATH_DIR: &str = "volume-subpaths";

/// Longest subPath accepted (PATH_MAX).
const MAX_SUBPATH: usize = 4096;

/// Why a subPath could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    /// The subPath is absolute, has a `..` element, is empty or too long.
    #[error("subPath {path:?} {reason}")]
    Invalid {
        /// The subPath as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A component of the subPath is a symlink (which could lead out of the volume).
    #[error(
        "subPath {path:?}: {component:?} is a symlink; symlinks in a subPath are not followed"
    )]
    Symlink {
        /// The subPath as given.
        path: String,
        /// The prefix of the subPath that is a symlink.
        component: String,
    },
    /// The subPath resolves to somewhere outside its volume.
    #[error("subPath {0:?} leads out of the volume")]
    Escapes(String),
    /// A component before the last is not a directory.
    #[error("subPath {path:?}: {component:?} is not a directory")]
    NotDirectory {
        /// The subPath as given.
        path: String,
        /// The prefix of the subPath that is no directory.
        component: String,
    },
    /// A file operation or system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SubPathError {
    move |source| SubPathError::Os {
        what: what.into(),
        source,
    }
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> SubPathError {
    move |errno| io(what)(errno.into())
}

/// A subPath opened below its volume: an `O_PATH` descriptor of the file or directory it names.
#[derive(Debug)]
pub struct Resolved {
    fd: OwnedFd,
    is_dir: bool,
}

impl Resolved {
    /// An object opened elsewhere (with `O_PATH`), for mounting through its descriptor.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, SubPathError> {
        let is_dir = file_type(&fd, "the opened path")? == SFlag::S_IFDIR;
        Ok(Self { fd, is_dir })
    }

    /// Its file type (`S_IFDIR`, `S_IFREG`, `S_IFSOCK`, ...); `S_IFMT` when it cannot be read.
    pub fn file_type(&self) -> SFlag {
        file_type(&self.fd, "the opened path").unwrap_or(SFlag::S_IFMT)
    }

    /// Whether it is a directory (else a file, socket, device...).
    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    /// The path through which the kernel reaches the opened object itself, whatever happens to
    /// the names it was opened by.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

fn file_type(fd: &OwnedFd, what: &str) -> Result<SFlag, SubPathError> {
    let st = fstat(fd.as_fd()).map_err(sys(format!("stat of {what}")))?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
}

/// Opens `sub` below the directory `volume` without following any symlink in `sub`, creating
/// missing directories (mode `dir_mode`, less the umask) as the kubelet does for a subPath that
/// does not exist yet. `volume` itself is trusted (the agent's volume directory or a hostPath
/// the pod's author named); `sub` is not. `.` elements and repeated slashes are ignored.
pub fn open_beneath(volume: &Path, sub: &str, dir_mode: u32) -> Result<Resolved, SubPathError> {
    let names = checked(sub)?;
    let mut fd = open_volume(volume)?;
    let mut is_dir = true;
    let mut walked = PathBuf::new();
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for name in names {
        walked.push(name);
        let shown = walked.display().to_string();
        if !is_dir {
            return Err(SubPathError::NotDirectory {
                path: sub.to_owned(),
                component: shown,
            });
        }
        let next = match openat(fd.as_fd(), name, flags, Mode::empty()) {
            Err(Errno::ENOENT) => {
                // Made in the directory just opened, so nothing can redirect it; EEXIST (a
                // racing creator, maybe a symlink) is caught by the open and check below.
                match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(dir_mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys(format!("creating {shown} in the volume"))(e)),
                }
                openat(fd.as_fd(), name, flags, Mode::empty())
            }
            other => other,
        }
        .map_err(sys(format!("opening {shown} in the volume")))?;
        let typ = file_type(&next, &shown)?;
        if typ == SFlag::S_IFLNK {
            return Err(SubPathError::Symlink {
                path: sub.to_owned(),
                component: shown,
            });
        }
        is_dir = typ == SFlag::S_IFDIR;
        fd = next;
    }
    Ok(Resolved { fd, is_dir })
}

/// Opens `sub` below `volume`, following symlinks only while they stay below it (openat2 with
/// `RESOLVE_BENEATH`: an absolute link or a `..` past the volume fails), creating nothing. For
/// volumes the agent writes and containers only read (configMap, secret, downwardAPI,
/// projected), whose keys are symlinks into `..data`: the kubelet, too, follows links that
/// stay inside the volume.
pub fn open_beneath_following(volume: &Path, sub: &str) -> Result<Resolved, SubPathError> {
    let names = checked(sub)?;
    let fd = open_volume(volume)?;
    let rel: PathBuf = names.iter().collect();
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let how = nix::fcntl::OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(
            nix::fcntl::ResolveFlag::RESOLVE_BENEATH
                | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = match nix::fcntl::openat2(fd.as_fd(), &rel, how) {
        Err(Errno::EXDEV) | Err(Errno::ELOOP) => return Err(SubPathError::Escapes(sub.to_owned())),
        other => other.map_err(sys(format!("opening {} in the volume", rel.display())))?,
    };
    let is_dir = file_type(&fd, sub)? == SFlag::S_IFDIR;
    Ok(Resolved { fd, is_dir })
}

fn open_volume(volume: &Path) -> Result<OwnedFd, SubPathError> {
    open(
        volume,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening volume {}", volume.display())))
}

/// The names of a subPath: relative, no `..`, no NUL, at most 4096 bytes; `.` dropped.
fn checked(sub: &str) -> Result<Vec<&std::ffi::OsStr>, SubPathError> {
    let invalid = |reason| SubPathError::Invalid {
        path: sub.to_owned(),
        reason,
    };
    if sub.len() > MAX_SUBPATH {
        return Err(invalid("is longer than 4096 bytes"));
    }
    if sub.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut names = Vec::new();
    for c in Path::new(sub).components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("must be a relative path"))
            }
        }
    }
    Ok(names)
}

/// Bind mounts the opened subPath onto `target` (created: a directory, or an empty file for a
/// file), replacing what an earlier instance of the container left mounted there.
pub fn bind(resolved: &Resolved, target: &Path) -> Result<(), SubPathError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    // A stale mount of the container's previous instance: its source may be gone or replaced.
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys(format!("unmounting {}", target.display()))(e)),
    }
    let made = if resolved.is_dir {
        match std::fs::create_dir(target) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && target.is_dir() => Ok(()),
            other => other,
        }
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map(drop)
    };
    made.map_err(io(format!("creating {}", target.display())))?;
    mount(
        Some(&resolved.proc_path()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!(
        "bind mounting the subPath onto {}",
        target.display()
    )))
}

/// Detaches every subPath bind mount below `pod_dir` (before the directory is removed: removing
/// it recursively would otherwise delete the volumes' files, and a hostPath's, through them).
/// Fails when one stays mounted.
pub fn unmount_all(pod_dir: &Path) -> Result<(), SubPathError> {
    unmount_below(&pod_dir.join(SUBPATH_DIR))
}

/// Detaches every mount below `dir` (not `dir` itself), deepest first: the subPath binds, the
/// pod's memory-backed volumes. Fails when one stays mounted.
pub fn unmount_below(dir: &Path) -> Result<(), SubPathError> {
    if !dir.exists() {
        return Ok(());
    }
    let prefix = format!("{}/", dir.to_string_lossy().replace(' ', "\\040"));
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("reading /proc/self/mountinfo"))?;
    // Deepest first, should a subPath of one volume lie in another's mount.
    let mut targets: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    targets.dedup();
    for t in targets {
        let path = PathBuf::from(t.replace("\\040", " "));
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(sys(format!("unmounting {}", path.display()))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn volume() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        (dir, vol)
    }

    /// The real path of what was opened, read back through the descriptor.
    fn real(r: &Resolved) -> PathBuf {
        std::fs::read_link(r.proc_path()).unwrap()
    }

    #[test]
    fn a_nested_path_is_created_and_opened_below_the_volume() {
        let (_d, vol) = volume();
        let r = open_beneath(&vol, "a/./b//c", 0o755).unwrap();
        assert!(r.is_dir());
        assert_eq!(real(&r), vol.join("a/b/c"));
        assert!(vol.join("a/b/c").is_dir());
        std::fs::write(vol.join("a/f"), "x").unwrap();
        let f = open_beneath(&vol, "a/f", 0o755).unwrap();
        assert!(!f.is_dir());
        assert_eq!(real(&f), vol.join("a/f"));
        assert_eq!(real(&open_beneath(&vol, ".", 0o755).unwrap()), vol);
    }

    #[test]
    fn symlinks_anywhere_are_refused_and_nothing_is_made_outside() {
        let (d, vol) = volume();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink("/", vol.join("root")).unwrap();
        symlink(&outside, vol.join("abs")).unwrap();
        symlink("../outside", vol.join("rel")).unwrap();
        std::fs::create_dir(vol.join("dir")).unwrap();
        symlink(".", vol.join("dir/self")).unwrap();
        for (sub, component) in [
            ("root", "root"),
            ("abs", "abs"),
            ("abs/new", "abs"),
            ("rel/new", "rel"),
            ("dir/self/x", "dir/self"),
        ] {
            match open_beneath(&vol, sub, 0o755) {
                Err(SubPathError::Symlink { component: c, .. }) => assert_eq!(c, component),
                other => panic!("{sub}: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A dangling link is no missing component to create either.
        symlink("/nonexistent-skiff-subpath", vol.join("dangling")).unwrap();
        assert!(matches!(
            open_beneath(&vol, "dangling", 0o755),
            Err(SubPathError::Symlink { .. })
        ));
        assert!(!Path::new("/nonexistent-skiff-subpath").exists());
    }

    #[test]
    fn payload_volumes_follow_links_that_stay_inside() {
        let (d, vol) = volume();
        std::fs::create_dir(vol.join("..2026_01")).unwrap();
        std::fs::write(vol.join("..2026_01/key"), "v").unwrap();
        symlink("..2026_01", vol.join("..data")).unwrap();
        symlink("..data/key", vol.join("key")).unwrap();
        let r = open_beneath_following(&vol, "key").unwrap();
        assert!(!r.is_dir());
        assert_eq!(real(&r), vol.join("..2026_01/key"));
        std::fs::write(d.path().join("secret"), "s").unwrap();
        symlink("/", vol.join("root")).unwrap();
        symlink("../secret", vol.join("up")).unwrap();
        for sub in ["root", "root/etc", "up"] {
            assert!(
                matches!(
                    open_beneath_following(&vol, sub),
                    Err(SubPathError::Escapes(_))
                ),
                "{sub}"
            );
        }
        assert!(open_beneath_following(&vol, "missing").is_err());
        assert!(!vol.join("missing").exists());
    }

    #[test]
    fn dot_dot_absolute_and_through_a_file_are_refused() {
        let (_d, vol) = volume();
        std::fs::write(vol.join("f"), "x").unwrap();
        for sub in ["..", "a/../../x", "/etc", "a\0b"] {
            assert!(
                matches!(
                    open_beneath(&vol, sub, 0o755),
                    Err(SubPathError::Invalid { .. })
                ),
                "{sub:?}"
            );
        }
        assert!(matches!(
            open_beneath(&vol, "f/x", 0o755),
            Err(SubPathError::NotDirectory { .. })
        ));
        let long = "a/".repeat(3000);
        assert!(matches!(
            open_beneath(&vol, &long, 0o755),
            Err(SubPathError::Invalid { .. })
        ));
    }
}
