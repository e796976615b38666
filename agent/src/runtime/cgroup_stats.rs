//! CPU and memory usage of a cgroup (a container's, a pod's, the node's root), read from
//! the kernel's files the way the kubelet's stats provider (cAdvisor) reads them, on either
//! hierarchy:
//!
//! - cgroup v1 (this project's machines: v1 controllers beside an empty cgroup2 mount):
//!   `cpuacct.usage` (ns), `memory.usage_in_bytes`, and `memory.stat`'s hierarchical
//!   `total_inactive_file` and `total_rss`;
//! - cgroup v2 (the unified hierarchy with the cpu and memory controllers): `cpu.stat`'s
//!   `usage_usec`, `memory.current`, and `memory.stat`'s `inactive_file` and `anon`. The v2
//!   root has no `memory.current`: the node's memory comes from `/proc/meminfo` there.
//!
//! The working set is usage minus inactive file pages, as cAdvisor defines it (what the
//! kubelet's eviction and `kubectl top` use). Which hierarchy holds the controllers is
//! decided from `/proc/self/mountinfo`: v1 when the cpuacct and memory controllers are
//! mounted as v1 hierarchies (a controller is in one hierarchy only), else v2 when cgroup2 is
//! mounted.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of reading cgroup statistics.
#[derive(Debug, thiserror::Error)]
pub enum CgroupStatsError {
    /// Neither a v1 cpuacct and memory pair nor a cgroup2 mount was found.
    #[error("no cgroup hierarchy with the cpu and memory controllers is mounted")]
    NoHierarchy,
    /// A statistics file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A statistics file did not hold what the kernel writes there.
    #[error("{path}: unexpected contents ({detail})")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Where the cpu and memory controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The v1 hierarchies holding cpuacct and memory.
    V1 {
        /// The cpuacct hierarchy's mount point (often shared with cpu).
        cpuacct: PathBuf,
        /// The memory hierarchy's mount point.
        memory: PathBuf,
    },
    /// The unified hierarchy's mount point.
    V2 {
        /// Its mount point (`/sys/fs/cgroup` on a pure v2 host).
        root: PathBuf,
    },
}

/// A cgroup's usage at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to the cgroup (page cache included).
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file pages.
    pub memory_working_set_bytes: u64,
    /// Anonymous memory (and swap cache): v1 `total_rss`, v2 `anon`.
    pub memory_rss_bytes: u64,
}

impl Hierarchy {
    /// The hierarchy of this host, from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupStatsError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = read(path)?;
        Self::from_mountinfo(&text)
    }

    /// The hierarchy a mountinfo text describes.
    pub fn from_mountinfo(mountinfo: &str) -> Result<Self, CgroupStatsError> {
        let (mut cpuacct, mut memory, mut unified) = (None, None, None);
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = pre.split_whitespace().nth(4) else {
                continue;
            };
            let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
            let mut post = post.split_whitespace();
            match (post.next(), post.nth(1)) {
                (Some("cgroup"), Some(options)) => {
                    for option in options.split(',') {
                        match option {
                            "cpuacct" => cpuacct = Some(mount_point.clone()),
                            "memory" => memory = Some(mount_point.clone()),
                            _ => {}
                        }
                    }
                }
                (Some("cgroup2"), _) => {
                    unified.get_or_insert(mount_point);
                }
                _ => {}
            }
        }
        match (cpuacct, memory, unified) {
            (Some(cpuacct), Some(memory), _) => Ok(Self::V1 { cpuacct, memory }),
            (_, _, Some(root)) => Ok(Self::V2 { root }),
            _ => Err(CgroupStatsError::NoHierarchy),
        }
    }

    /// The usage of the cgroup at `group`, a path inside the hierarchy (`skiff/<pod-uid>` for
    /// a pod, `skiff/<pod-uid>/<container>` for a container; `""` for the root, the node).
    /// On v2 the root's memory comes from `meminfo` (the text of `/proc/meminfo`).
    pub fn usage(&self, group: &str, meminfo: Option<&str>) -> Result<Usage, CgroupStatsError> {
        let group = group.trim_matches('/');
        match self {
            Self::V1 { cpuacct, memory } => {
                let cpu = cpuacct.join(group);
                let mem = memory.join(group);
                let cpu_usage_ns = number(&cpu.join("cpuacct.usage"))?;
                let memory_usage_bytes = number(&mem.join("memory.usage_in_bytes"))?;
                let stat = stat_file(&mem.join("memory.stat"))?;
                let inactive = field(&stat, "total_inactive_file", &mem)?;
                Ok(Usage {
                    cpu_usage_ns,
                    memory_usage_bytes,
                    memory_working_set_bytes: memory_usage_bytes.saturating_sub(inactive),
                    memory_rss_bytes: field(&stat, "total_rss", &mem)?,
                })
            }
            Self::V2 { root } => {
                let dir = root.join(group);
                let cpu = stat_file(&dir.join("cpu.stat"))?;
                let cpu_usage_ns = field(&cpu, "usage_usec", &dir)?.saturating_mul(1000);
                let current = dir.join("memory.current");
                if !group.is_empty() || current.exists() {
                    let memory_usage_bytes = number(&current)?;
                    let stat = stat_file(&dir.join("memory.stat"))?;
                    let inactive = field(&stat, "inactive_file", &dir)?;
                    return Ok(Usage {
                        cpu_usage_ns,
                        memory_usage_bytes,
                        memory_working_set_bytes: memory_usage_bytes.saturating_sub(inactive),
                        memory_rss_bytes: field(&stat, "anon", &dir)?,
                    });
                }
                // The root cgroup has no memory files on v2: the node's memory as the
                // kubelet reports it there (total minus free; working set minus inactive
                // file pages).
                let path = Path::new("/proc/meminfo");
                let owned;
                let meminfo = match meminfo {
                    Some(m) => m,
                    None => {
                        owned = read(path)?;
                        &owned
                    }
                };
                let kib = |key: &str| -> Result<u64, CgroupStatsError> {
                    meminfo
                        .lines()
                        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                        .map(|v| v * 1024)
                        .ok_or_else(|| CgroupStatsError::Parse {
                            path: path.to_owned(),
                            detail: format!("no {key}"),
                        })
                };
                let usage = kib("MemTotal")?.saturating_sub(kib("MemFree")?);
                Ok(Usage {
                    cpu_usage_ns,
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: usage.saturating_sub(kib("Inactive(file)")?),
                    memory_rss_bytes: kib("AnonPages")?,
                })
            }
        }
    }
}

fn read(path: &Path) -> Result<String, CgroupStatsError> {
    std::fs::read_to_string(path).map_err(|source| CgroupStatsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A file holding one number.
fn number(path: &Path) -> Result<u64, CgroupStatsError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CgroupStatsError::Parse {
        path: path.to_owned(),
        detail: format!("not a number: {:?}", text.trim()),
    })
}

/// A `key value` per line file (`memory.stat`, `cpu.stat`).
fn stat_file(path: &Path) -> Result<Vec<(String, u64)>, CgroupStatsError> {
    Ok(read(path)?
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn field(stat: &[(String, u64)], key: &str, dir: &Path) -> Result<u64, CgroupStatsError> {
    stat.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| CgroupStatsError::Parse {
            path: dir.to_owned(),
            detail: format!("no {key}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's machines: v1 controllers, an empty cgroup2 mount beside them.
    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
";
    const UNIFIED: &str = "\
30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 1 0:5 / /proc rw - proc proc rw
";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_hierarchy_holding_the_controllers_is_detected() {
        assert_eq!(
            Hierarchy::from_mountinfo(HYBRID).unwrap(),
            Hierarchy::V1 {
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct".into(),
                memory: "/sys/fs/cgroup/memory".into()
            }
        );
        assert_eq!(
            Hierarchy::from_mountinfo(UNIFIED).unwrap(),
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert!(matches!(
            Hierarchy::from_mountinfo("31 1 0:5 / /proc rw - proc proc rw\n"),
            Err(CgroupStatsError::NoHierarchy)
        ));
    }

    /// The real kernel's files (no root needed to read them): the node's CPU counter moves
    /// forward while this test burns CPU.
    #[test]
    fn this_hosts_node_usage_reads_and_grows() {
        let h = Hierarchy::detect().unwrap();
        let before = h.usage("", None).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = h.usage("", None).unwrap();
        assert!(
            after.cpu_usage_ns > before.cpu_usage_ns,
            "{before:?} -> {after:?}"
        );
        assert!(
            after.memory_usage_bytes > 0
                && after.memory_working_set_bytes <= after.memory_usage_bytes
        );
    }

    #[test]
    fn v1_usage_of_a_container() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::V1 {
            cpuacct: tmp.path().join("cpu,cpuacct"),
            memory: tmp.path().join("memory"),
        };
        let group = "skiff/uid-1/app";
        write(
            &tmp.path().join("cpu,cpuacct").join(group),
            "cpuacct.usage",
            "1500000000\n",
        );
        let mem = tmp.path().join("memory").join(group);
        write(&mem, "memory.usage_in_bytes", "10485760\n");
        write(
            &mem,
            "memory.stat",
            "cache 4194304\nrss 6291456\ntotal_cache 4194304\ntotal_rss 6291456\n\
             total_inactive_file 3145728\ntotal_active_file 1048576\n",
        );
        assert_eq!(
            h.usage(group, None).unwrap(),
            Usage {
                cpu_usage_ns: 1_500_000_000,
                memory_usage_bytes: 10_485_760,
                memory_working_set_bytes: 10_485_760 - 3_145_728,
                memory_rss_bytes: 6_291_456,
            }
        );
        assert!(matches!(
            h.usage("skiff/uid-1/gone", None),
            Err(CgroupStatsError::Read { .. })
        ));
    }

    #[test]
    fn v2_usage_of_a_pod_and_of_the_node() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::V2 {
            root: tmp.path().to_owned(),
        };
        let pod = tmp.path().join("skiff/uid-2");
        write(
            &pod,
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(&pod, "memory.current", "8192000\n");
        write(
            &pod,
            "memory.stat",
            "anon 4096000\nfile 4096000\ninactive_file 1024000\n",
        );
        let usage = h.usage("/skiff/uid-2/", None).unwrap();
        assert_eq!(usage.cpu_usage_ns, 2_500_000);
        assert_eq!(usage.memory_working_set_bytes, 8_192_000 - 1_024_000);
        assert_eq!(usage.memory_rss_bytes, 4_096_000);
        // The root: cpu.stat, and /proc/meminfo for memory.
        write(tmp.path(), "cpu.stat", "usage_usec 9000000\n");
        let meminfo =
            "MemTotal:  1000 kB\nMemFree:  400 kB\nAnonPages:  100 kB\nInactive(file):  50 kB\n";
        let node = h.usage("", Some(meminfo)).unwrap();
        assert_eq!(
            node,
            Usage {
                cpu_usage_ns: 9_000_000_000,
                memory_usage_bytes: 600 * 1024,
                memory_working_set_bytes: 550 * 1024,
                memory_rss_bytes: 100 * 1024,
            }
        );
        write(&pod, "memory.current", "max\n");
        assert!(matches!(
            h.usage("skiff/uid-2", None),
            Err(CgroupStatsError::Parse { .. })
        ));
    }
}
