//! Memory-backed volume directories (tmpfs), as the kubelet backs secret and projected volumes
//! and `emptyDir.medium: Memory`: a Secret's data or a ServiceAccount token never reaches the
//! node's disk, and is gone with the mount when the pod is removed.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// Whether `dir` is the root of a tmpfs (or lies on one).
pub fn is_tmpfs(dir: &Path) -> bool {
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// Makes `dir` a tmpfs mount (nosuid, nodev; at most `size` bytes when given) unless it already
/// is one; an existing directory must be empty, so nothing written on disk stays under it.
pub fn ensure(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_tmpfs(dir) {
        return Ok(());
    }
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(std::io::Error::other(format!(
            "{} holds files on disk; a memory-backed volume must start empty",
            dir.display()
        )));
    }
    let mut options = "mode=0755".to_owned();
    if let Some(size) = size.filter(|s| *s > 0) {
        options.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_becomes_a_bounded_tmpfs_once() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("secret");
        ensure(&vol, Some(1 << 20)).unwrap();
        assert!(is_tmpfs(&vol));
        ensure(&vol, Some(1 << 20)).unwrap();
        // Bounded: writing past the size fails.
        let big = vec![0u8; 2 << 20];
        assert!(std::fs::write(vol.join("big"), &big).is_err());
        nix::mount::umount2(&vol, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(!is_tmpfs(&vol));
        std::fs::write(vol.join("on-disk"), "x").unwrap();
        assert!(
            ensure(&vol, None).is_err(),
            "a non-empty directory is not hidden"
        );
    }
}
