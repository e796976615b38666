//! The benchmark's lab: network namespaces, backend servers, two cgroup2 directories and bpffs
//! pin directories, all named `skb-<pid>...` and removed by [`Lab`]'s Drop (also after an error
//! or Ctrl-C); [`sweep_stale`] removes what a killed run left.
//!
//! Layout (one client namespace per mode, so that every mode keeps its rules while the modes
//! take turns; they are created afresh for every Service count):
//!
//! ```text
//!  client netns skb-<pid>-cl<k>                      backend netns skb-<pid>-be
//!  lo: local route 10.96.0.0/16 (src 10.244.<k+1>.1) lo: 10.244.0.1 .. 10.244.0.10 (backends)
//!  skb-<pid>-c<k> 10.244.<k+1>.1/24 ──── veth ────── skb-<pid>-b<k> 10.244.<k+1>.254/24
//!  route 10.244.0.0/24 via 10.244.<k+1>.254
//! ```
//!
//! No default route anywhere, so no packet can leave. The service range is a *local* route in
//! each client namespace: an untranslated VIP is refused there, and iptables/nftables still see
//! the connection in the nat OUTPUT hook (a blackhole route would fail `connect()` before the
//! hook). Its preferred source is the veth address, so DNATed connections carry an address the
//! backends can answer.
//!
//! The eBPF programs attach to the cgroup `skb-<pid>`; the benchmark moves itself there to
//! measure eBPF and into `skb-<pid>-plain` (nothing attached) for every other mode, so the
//! socket hooks cost the other modes nothing.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skiff_agent::proxy::ebpf::{self, sys};
use skiff_test_support::netns::{self, try_ip, Netns};

use crate::{backend_ip, BACKENDS, BACKEND_PORT};

const PREFIX: &str = "skb-";

/// Runs `sysctl -qw settings...` inside a namespace (nsenter keeps /sys and /proc as they are,
/// unlike `ip netns exec`, and /proc/sys/net shows the entered namespace).
fn sysctl(netns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["--", "sysctl", "-qw"])
        .args(settings)
        .output()
        .context("running nsenter sysctl")?;
    anyhow::ensure!(
        out.status.success(),
        "sysctl {} in {netns}: {}",
        settings.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes labs of earlier runs that were killed (names carry the pid of their run).
pub fn sweep_stale() {
    netns::sweep_stale(
        PREFIX,
        sys::cgroup2_root().ok().as_deref(),
        Path::new(sys::BPFFS),
        &|pins| {
            let _ = ebpf::cleanup(pins);
        },
    );
}

/// The lab; everything in it is removed on drop.
pub struct Lab {
    tag: String,
    /// Deleted last (a field), after Drop removed the client namespaces linked to it.
    backend_ns: Netns,
    /// The client namespaces that exist (by index).
    clients: usize,
    /// The cgroup2 directory the eBPF programs attach to.
    pub cgroup: PathBuf,
    /// A cgroup2 directory with nothing attached.
    plain_cgroup: PathBuf,
    /// Where the datapath points pin the eBPF maps and links.
    pub pin_dir: PathBuf,
    /// Where the agent of the API measurement pins them.
    pub api_pin_dir: PathBuf,
    /// The cgroup this process came from (it returns there before the directory is removed).
    home_cgroup: Option<PathBuf>,
    server: Option<Child>,
    /// Other processes started for the lab (skiff-control, skiff-agent), stopped on drop.
    pub children: Vec<Child>,
}

impl Lab {
    /// Creates the backend namespace with its servers and the cgroup, and moves this process
    /// into the cgroup. The client namespace comes with [`Lab::fresh_client`].
    pub fn new() -> anyhow::Result<Self> {
        let tag = format!("{PREFIX}{}", std::process::id());
        let root = sys::cgroup2_root().context("finding the cgroup2 mount")?;
        // The guard exists before anything else is created, so a failure below removes what
        // exists.
        let mut lab = Self {
            backend_ns: Netns::create(format!("{tag}-be"))?,
            clients: 0,
            cgroup: root.join(&tag),
            plain_cgroup: root.join(format!("{tag}-plain")),
            pin_dir: Path::new(sys::BPFFS).join(&tag),
            api_pin_dir: Path::new(sys::BPFFS).join(format!("{tag}-api")),
            home_cgroup: None,
            server: None,
            children: Vec::new(),
            tag,
        };
        let be = lab.backend_ns.name().to_owned();
        try_ip(&["-n", &be, "link", "set", "lo", "up"])?;
        for b in 1..=BACKENDS {
            try_ip(&[
                "-n",
                &be,
                "addr",
                "add",
                &format!("{}/32", backend_ip(b)),
                "dev",
                "lo",
            ])?;
        }
        // Deep accept queues: a burst of connections must not be dropped (a dropped SYN costs
        // a 1 s retransmission, which would measure the backend, not the datapath).
        sysctl(
            &be,
            &[
                "net.core.somaxconn=8192",
                "net.ipv4.tcp_max_syn_backlog=8192",
            ],
        )?;
        lab.start_servers()?;

        lab.home_cgroup = Some(own_cgroup(&root)?);
        for dir in [&lab.cgroup, &lab.plain_cgroup] {
            std::fs::create_dir(dir)
                .with_context(|| format!("creating the cgroup {}", dir.display()))?;
        }
        lab.enter_cgroup(false)?;
        Ok(lab)
    }

    /// Moves this process (all its threads) into the eBPF cgroup or the plain one. A socket
    /// belongs to the cgroup its creator was in when it was created. The servers started in
    /// [`Lab::new`] stay outside both (they accept, they do not connect).
    pub fn enter_cgroup(&self, ebpf: bool) -> anyhow::Result<()> {
        let dir = if ebpf {
            &self.cgroup
        } else {
            &self.plain_cgroup
        };
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the benchmark into {}", dir.display()))
    }

    fn start_servers(&mut self) -> anyhow::Result<()> {
        let addrs: Vec<String> = (1..=BACKENDS)
            .map(|b| format!("{}:{BACKEND_PORT}", backend_ip(b)))
            .collect();
        let exe = std::env::current_exe().context("finding this binary")?;
        // nsenter execs the server, so it is this (main) thread's child and its parent-death
        // signal fires if the benchmark dies.
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.backend_ns.path().display()))
            .arg("--")
            .arg(exe)
            .args(["serve", "--addrs", &addrs.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the backend servers")?;
        let stdout = child.stdout.take().expect("piped");
        self.server = Some(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading from the backend servers")?;
        anyhow::ensure!(
            line.trim() == "ready",
            "the backend servers did not start (said {line:?})"
        );
        Ok(())
    }

    /// Client namespace `k`'s name.
    pub fn client_ns(&self, k: usize) -> String {
        format!("{}-cl{k}", self.tag)
    }

    /// Client namespace `k`'s bind mount (for setns and nsenter).
    pub fn client_ns_path(&self, k: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.client_ns(k)))
    }

    /// Removes the client namespaces and creates `count` new ones, each linked to the backends.
    pub fn fresh_clients(&mut self, count: usize) -> anyhow::Result<()> {
        anyhow::ensure!(count < 250, "at most 249 client namespaces");
        self.remove_clients();
        for k in 0..count {
            self.add_client(k)?;
        }
        Ok(())
    }

    fn add_client(&mut self, k: usize) -> anyhow::Result<()> {
        let (cl, be) = (self.client_ns(k), self.backend_ns.name().to_owned());
        let (vc, vb) = (format!("{}-c{k}", self.tag), format!("{}-b{k}", self.tag));
        let net = k + 1;
        let (addr, gw) = (format!("10.244.{net}.1"), format!("10.244.{net}.254"));
        try_ip(&["netns", "add", &cl])?;
        self.clients = k + 1;
        try_ip(&["-n", &cl, "link", "set", "lo", "up"])?;
        try_ip(&[
            "link", "add", &vc, "netns", &cl, "type", "veth", "peer", "name", &vb, "netns", &be,
        ])?;
        try_ip(&["-n", &cl, "addr", "add", &format!("{addr}/24"), "dev", &vc])?;
        try_ip(&["-n", &be, "addr", "add", &format!("{gw}/24"), "dev", &vb])?;
        try_ip(&["-n", &cl, "link", "set", &vc, "up"])?;
        try_ip(&["-n", &be, "link", "set", &vb, "up"])?;
        try_ip(&["-n", &cl, "route", "add", "10.244.0.0/24", "via", &gw])?;
        try_ip(&[
            "-n",
            &cl,
            "route",
            "add",
            "local",
            "10.96.0.0/16",
            "dev",
            "lo",
            "src",
            &addr,
        ])?;
        // Room for the short-lived connections of a few seconds at full rate.
        sysctl(
            &cl,
            &[
                "net.ipv4.ip_local_port_range=10000 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        Ok(())
    }

    /// Stops the processes in [`Lab::children`].
    pub fn stop_children(&mut self) {
        for mut c in self.children.drain(..) {
            stop(&mut c);
        }
    }

    fn remove_clients(&mut self) {
        for k in 0..self.clients {
            // Deleting one end of the veth removes both at once; deleting the namespace alone
            // would remove the peer in the backend namespace asynchronously, and the next
            // client's veth could not take its name.
            let _ = Command::new("ip")
                .args([
                    "-n",
                    self.backend_ns.name(),
                    "link",
                    "del",
                    &format!("{}-b{k}", self.tag),
                ])
                .stderr(Stdio::null())
                .status();
            // Removing the namespace removes its rules and conntrack table.
            let _ = Command::new("ip")
                .args(["netns", "del", &self.client_ns(k)])
                .stderr(Stdio::null())
                .status();
        }
        self.clients = 0;
    }
}

/// This process's cgroup2 directory, from /proc/self/cgroup (`0::/path`).
fn own_cgroup(root: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup2 entry in /proc/self/cgroup")?;
    Ok(root.join(rel.trim_start_matches('/')))
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_children();
        if let Some(c) = &mut self.server {
            let _ = c.kill();
            let _ = c.wait();
        }
        for dir in [&self.pin_dir, &self.api_pin_dir] {
            if let Err(e) = ebpf::cleanup(dir) {
                eprintln!("bench: removing {}: {e}", dir.display());
            }
        }
        if let Some(home) = &self.home_cgroup {
            if let Err(e) =
                std::fs::write(home.join("cgroup.procs"), std::process::id().to_string())
            {
                eprintln!("bench: leaving the cgroup: {e}");
            }
        }
        // A cgroup stays busy for a moment after its last process left.
        for dir in [&self.cgroup, &self.plain_cgroup] {
            if let Err(e) = netns::remove_dir_within(dir, Duration::from_secs(5)) {
                eprintln!("bench: {e}");
            }
        }
        self.remove_clients();
    }
}
