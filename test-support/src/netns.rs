//! The pieces of a network-namespace lab: privileged tests (and the proxy benchmark) build
//! private networks out of named namespaces and veth pairs, with `ip` from iproute2, and must
//! remove all of it afterwards, also when they fail or are killed:
//!
//! - [`Netns`] is a named namespace deleted on drop (its veth pairs go with it);
//! - [`in_netns`] and [`in_new_netns`] run code on a thread inside a namespace (setns and
//!   unshare move only the calling thread, so the test's other threads stay where they are);
//! - [`sweep_stale`] removes what labs of killed runs left behind (names carry their pid);
//! - [`spawn_ready`] starts a helper process and waits until it says it serves.
//!
//! Nothing here touches the host's own network: every address and route is inside a
//! namespace the lab created.

use std::io::{self, BufRead as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `ip netns` keeps the namespaces' bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `ip args`; returns its stdout, or an error with its stderr.
pub fn try_ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running `ip` (iproute2; `cargo xtask setup` installs it): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`try_ip`], panicking on failure (for tests).
pub fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (at most 255 bytes, unique on the host: give it the pid of the
    /// run), first removing one of that name that a killed run left.
    pub fn create(name: impl Into<String>) -> io::Result<Self> {
        let name = name.into();
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        try_ip(&["netns", "add", &name])?;
        Ok(Self { name })
    }

    /// [`Netns::create`], panicking on failure (for tests).
    pub fn new(name: impl Into<String>) -> Self {
        Self::create(name).unwrap_or_else(|e| panic!("creating a network namespace: {e}"))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount (for setns and `nsenter --net=`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> args` (panics on failure); returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Brings loopback up (a new namespace has it down).
    pub fn loopback_up(&self) -> &Self {
        self.ip(&["link", "set", "lo", "up"]);
        self
    }

    /// Adds a veth pair: `name` in this namespace, `peer` in namespace `peer_ns` (this one's
    /// name for both ends here). Deleting either namespace removes the pair.
    pub fn add_veth(&self, name: &str, peer: &str, peer_ns: &str) -> io::Result<()> {
        try_ip(&[
            "-n", &self.name, "link", "add", name, "type", "veth", "peer", "name", peer, "netns",
            peer_ns,
        ])
        .map(drop)
    }

    /// Creates namespace `name` joined to namespace `node` by a veth pair, as a host on one of
    /// the node's links: `node_dev` in `node` with address `node_addr`, `eth0` here with
    /// `addr` (both `a.b.c.d/len`), both up, and loopback up here. No other route: nothing
    /// it sends leaves that link.
    pub fn linked_to(
        name: impl Into<String>,
        node: &str,
        node_dev: &str,
        node_addr: &str,
        addr: &str,
    ) -> Self {
        let ns = Self::new(name);
        ns.loopback_up();
        ip(&[
            "-n", node, "link", "add", node_dev, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ]);
        ip(&["-n", node, "addr", "add", node_addr, "dev", node_dev]);
        ip(&["-n", node, "link", "set", node_dev, "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns
    }

    /// A command running `program` in this namespace with `ip netns exec`.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a thread inside the named namespace `netns` (setns moves only that thread) and
/// returns its result; a panic in `f` propagates.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let ns = std::fs::File::open(Path::new(NETNS_DIR).join(netns))
                .unwrap_or_else(|e| panic!("opening network namespace {netns}: {e}"));
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering network namespace {netns}: {e}"));
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `f` on a thread in a fresh, unnamed network namespace: it vanishes with the thread, so
/// nothing is left behind even when `f` fails.
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare the network namespace");
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Entries of `dir` named `<prefix><pid>[-...]` whose run (`pid`, not this process) is gone.
pub fn stale_entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let stale = |name: &str| -> bool {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !alive(pid))
    };
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(stale))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what labs of killed runs (which could not clean up) left behind, everything named
/// `<prefix><pid>...` whose pid is gone: network namespaces, cgroup2 directories under
/// `cgroup_root` (if there is one), and bpffs pin directories under `pin_root`, with
/// `remove_pins` (the agent's eBPF cleanup, which this crate cannot depend on).
pub fn sweep_stale(
    prefix: &str,
    cgroup_root: Option<&Path>,
    pin_root: &Path,
    remove_pins: &dyn Fn(&Path),
) {
    for path in stale_entries(pin_root, prefix) {
        eprintln!("removing stale pins {}", path.display());
        remove_pins(&path);
    }
    for path in cgroup_root.map_or_else(Vec::new, |root| stale_entries(root, prefix)) {
        eprintln!("removing stale cgroup {}", path.display());
        let _ = std::fs::remove_dir(&path);
    }
    for path in stale_entries(Path::new(NETNS_DIR), prefix) {
        eprintln!("removing stale netns {}", path.display());
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Removes the (empty) directory `dir`, retrying while it is busy, for up to `timeout`: a
/// cgroup stays busy for a moment after its last process left. A missing `dir` is removed.
pub fn remove_dir_within(dir: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing {}: {e}", dir.display()),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Spawns `cmd` with its stdout piped and waits for its first line, which must be `ready` (the
/// helper servers print it once their sockets are bound). Kills the child if it is not.
pub fn spawn_ready(cmd: &mut Command) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut line = String::new();
    let read = std::io::BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line);
    if read.is_err() || line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not get ready: said {line:?} ({read:?})");
    }
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_not_stale() {
        assert!(alive(std::process::id()));
        let dir = std::env::temp_dir().join(format!("skiff-ts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join(format!("lab-{}-0", std::process::id()));
        // pid_max is at most 2^22: this pid cannot run.
        let gone = dir.join("lab-4194305-1");
        let other = dir.join("unrelated");
        for d in [&mine, &gone, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(stale_entries(&dir, "lab-"), vec![gone]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_dir_within_accepts_a_missing_dir() {
        let dir = std::env::temp_dir().join(format!("skiff-ts-missing-{}", std::process::id()));
        remove_dir_within(&dir, Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn spawn_ready_waits_for_the_ready_line() {
        let mut child = spawn_ready(Command::new("sh").args(["-c", "echo ready; sleep 30"]));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
