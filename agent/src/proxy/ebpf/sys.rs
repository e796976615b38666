//! Host plumbing for the eBPF datapath: finding the cgroup2 mount and making sure a bpf file
//! system holds the pins.

use std::path::{Path, PathBuf};

use crate::proxy::ProxyError;

/// One line of /proc/self/mountinfo, the parts we need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the file system that is mounted (`/` for a whole hierarchy).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The file system type (`cgroup2`, `bpf`, ...).
    pub fs_type: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = oct.iter().fold(0_u32, |v, d| v * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo (see proc(5)): field 5 is the mount point; the file system type
/// follows the ` - ` separator.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = left.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            let fs_type = right.split(' ').next()?;
            Some(Mount {
                root: PathBuf::from(unescape(root)),
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_owned(),
            })
        })
        .collect()
}

fn mounts() -> Result<Vec<Mount>, ProxyError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| ProxyError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup2 mount point: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one. The programs attach there (or to a directory below it).
pub fn cgroup2_root() -> Result<PathBuf, ProxyError> {
    cgroup2_root_in(&mounts()?).ok_or(ProxyError::NoCgroup2)
}

/// [`cgroup2_root`] over parsed mounts: the first mount of the whole cgroup2 hierarchy (bind
/// mounts of a subdirectory, as container runtimes make, do not count).
pub fn cgroup2_root_in(mounts: &[Mount]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2" && m.root == Path::new("/"))
        .map(|m| m.mount_point.clone())
}

/// The mount that holds `path` (the longest mount point that is a prefix of it).
fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// The standard bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure `dir` (created if missing) lives on a bpf file system, mounting bpffs at
/// /sys/fs/bpf when `dir` is below it and nothing is mounted there (a fresh machine).
pub fn ensure_bpffs(dir: &Path) -> Result<(), ProxyError> {
    let on_bpffs = |mounts: &[Mount]| mount_of(mounts, dir).is_some_and(|m| m.fs_type == "bpf");
    if !on_bpffs(&mounts()?) {
        let bpffs = Path::new(BPFFS);
        if !dir.starts_with(bpffs) {
            return Err(ProxyError::NotBpffs(dir.to_owned()));
        }
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|source| ProxyError::Mount {
            path: bpffs.to_owned(),
            source,
        })?;
        tracing::info!("mounted bpffs at {BPFFS}");
        if !on_bpffs(&mounts()?) {
            return Err(ProxyError::NotBpffs(dir.to_owned()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| ProxyError::Io {
        what: "creating",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/bpf rw,relatime shared:14 - bpf bpf rw,mode=700
41 30 0:36 / /mnt/with\\040space rw,relatime shared:15 - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(
            cgroup2_root_in(&mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_the_cgroup2_mount_of_a_pure_v2_host() {
        let text = "50 30 0:26 /x /run/x rw - cgroup2 cgroup2 rw\n\
                    30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_root_in(&parse_mountinfo(text)),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_in(&parse_mountinfo("")), None);
    }

    #[test]
    fn unescapes_mount_points_and_finds_the_covering_mount() {
        let mounts = parse_mountinfo(HYBRID);
        assert!(mounts
            .iter()
            .any(|m| m.mount_point == Path::new("/mnt/with space")));
        let m = mount_of(&mounts, Path::new("/sys/fs/bpf/skiff")).unwrap();
        assert_eq!(m.fs_type, "bpf");
        let m = mount_of(&mounts, Path::new("/sys/kernel")).unwrap();
        assert_eq!(m.fs_type, "sysfs");
    }
}
