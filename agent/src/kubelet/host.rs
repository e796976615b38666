//! What a Node reports about its host: capacity, pressure and system facts, read from /proc
//! and the file system the agent keeps its state on.

use std::path::Path;

/// Facts about the host, read once at start (capacity) or at every status update (pressure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub architecture: &'static str,
}

/// Memory kept back from allocatable: kubelet's default hard eviction threshold
/// (`memory.available<100Mi`); below it the node also reports MemoryPressure.
pub const MEMORY_RESERVE_BYTES: u64 = 100 * 1024 * 1024;

/// The free share of the root dir's file system below which the node reports DiskPressure
/// (kubelet's default `nodefs.available<10%`).
pub const DISK_PRESSURE_FREE_PERCENT: u64 = 10;

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo_bytes(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// `PRETTY_NAME` of an os-release file.
pub fn os_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim_matches('"').to_owned())
    })
}

/// Kubernetes' name for this machine's architecture (GOARCH).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Reads the host's facts; `state_dir` is where the agent keeps its state (ephemeral storage).
pub fn read(state_dir: &Path) -> std::io::Result<HostFacts> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let storage = nix::sys::statvfs::statvfs(state_dir)?;
    Ok(HostFacts {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        memory_bytes: meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0),
        ephemeral_storage_bytes: storage.blocks() * storage.fragment_size(),
        kernel_version: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image: std::fs::read_to_string("/etc/os-release")
            .ok()
            .as_deref()
            .and_then(os_pretty_name)
            .unwrap_or_else(|| "Linux".to_owned()),
        machine_id: read_trimmed("/etc/machine-id"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        architecture: architecture(),
    })
}

/// The node's pressure conditions now: (memory, disk).
pub fn pressure(state_dir: &Path) -> (bool, bool) {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_bytes(&t, "MemAvailable"))
        .is_some_and(|avail| avail < MEMORY_RESERVE_BYTES);
    let disk = nix::sys::statvfs::statvfs(state_dir).is_ok_and(|s| {
        s.blocks() > 0 && s.blocks_available() * 100 / s.blocks() < DISK_PRESSURE_FREE_PERCENT
    });
    (memory, disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo =
            "MemTotal:        4026532 kB\nMemFree:          123 kB\nMemAvailable:    2000000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(4_026_532 * 1024));
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(2_000_000 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
        assert_eq!(meminfo_bytes(meminfo, "SwapTotal"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn reads_this_host() {
        let facts = read(Path::new("/")).unwrap();
        assert!(facts.cpus >= 1 && facts.memory_bytes > 0 && facts.ephemeral_storage_bytes > 0);
        assert!(!facts.kernel_version.is_empty());
    }
}
