//! The pod's cgroup parent on cgroup v1 hierarchies (`/skiff/<pod-uid>` in each controller):
//! the pause process joins `/skiff/<pod-uid>/pause`, libcontainer puts each container in
//! `/skiff/<pod-uid>/<name>`; removing the pod removes the tree (libcontainer leaves the parent).

use std::io;
use std::path::{Path, PathBuf};

/// The cgroupsPath prefix of every skiff pod.
pub const PREFIX: &str = "skiff";

/// Mount points of the v1 controller hierarchies (not named ones such as `name=systemd`, not
/// cgroup2), from /proc/self/mountinfo.
pub fn v1_mounts() -> io::Result<Vec<(PathBuf, Vec<String>)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split_whitespace();
            if post.next()? != "cgroup" {
                return None;
            }
            let _source = post.next()?;
            let controllers: Vec<String> = post
                .next()?
                .split(',')
                .filter(|o| {
                    !o.starts_with("name=")
                        && !matches!(
                            *o,
                            "rw" | "ro"
                                | "relatime"
                                | "noexec"
                                | "nosuid"
                                | "nodev"
                                | "xattr"
                                | "clone_children"
                        )
                })
                .map(str::to_owned)
                .collect();
            if controllers.is_empty() {
                return None;
            }
            let mount_point = pre.split_whitespace().nth(4)?;
            Some((PathBuf::from(unescape(mount_point)), controllers))
        })
        .collect())
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
}

/// `<mount>/skiff/<pod-uid>` in every v1 hierarchy.
pub fn pod_dirs(pod_uid: &str) -> io::Result<Vec<PathBuf>> {
    Ok(v1_mounts()?
        .into_iter()
        .map(|(m, _)| m.join(PREFIX).join(pod_uid))
        .collect())
}

/// Moves the pause process into `/skiff/<pod-uid>/pause` of the accounting controllers (cpu,
/// cpuacct, memory, pids, blkio; not cpuset, whose new groups start without cpus).
pub fn join_pause(pod_uid: &str, pid: i32) -> io::Result<()> {
    for (mount, controllers) in v1_mounts()? {
        if !controllers
            .iter()
            .any(|c| matches!(c.as_str(), "cpu" | "cpuacct" | "memory" | "pids" | "blkio"))
        {
            continue;
        }
        let dir = mount.join(PREFIX).join(pod_uid).join("pause");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Removes `<mount>/skiff/<pod-uid>` and its children in every hierarchy (cgroups must be
/// empty of processes). Missing directories are fine.
pub fn remove_pod(pod_uid: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in pod_dirs(pod_uid)? {
        if let Err(e) = remove_tree(&dir) {
            first_error.get_or_insert(io::Error::new(
                e.kind(),
                format!("removing cgroup {}: {e}", dir.display()),
            ));
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
