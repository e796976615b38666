//! Privileged tests of the eBPF service datapath: real programs, real sockets.
//!
//! Each test builds a private lab and removes it afterwards, also when it fails (Drop guards):
//! - a network namespace with loopback up, backend addresses (10.244.0.0/24) on loopback and
//!   the service range (10.96.0.0/12) routed to a blackhole, so a VIP that is not translated
//!   fails inside the namespace and never leaves it;
//! - backends: processes in that namespace (this binary in helper mode) answering on TCP and
//!   UDP with their own name;
//! - a client: a process in the same namespace and in a fresh cgroup2 directory, to which the
//!   programs are attached; it runs connections on command and reports which backend answered;
//! - a bpffs pin directory of its own.
//!
//! They need root (network namespaces, cgroups, BPF): without it they are reported as ignored,
//! with a message. `harness = false` lets this binary also be the helper processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};
use skiff_agent::proxy::ebpf::{self, sys, EbpfConfig, EbpfDatapath};
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};
use skiff_test_support::netns::{self, in_netns, remove_dir_within, Netns, NETNS_DIR};

#[path = "datapath/nodeport.rs"]
mod nodeport;

const HELPER: &str = "__skiff_datapath_helper";
const BACKEND_PORT: u16 = 8080;
/// What connecting to an untranslated VIP gives in the lab (its blackhole route): EINVAL.
const UNTRANSLATED: &str = "errno 22 ";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(HELPER) {
        helper::main(&args[2..]);
        return;
    }
    let args = Arguments::from_args();
    let root = skiff_test_support::is_root();
    if !root {
        eprintln!(
            "SKIPPING the privileged eBPF datapath tests: they need root (network namespaces, \
             cgroups, BPF). Run `cargo test -p skiff-agent --test datapath` as root; CI does."
        );
    } else if ebpf::embedded_object().is_none() {
        // As root the tests must run: a missing object is a build mistake, not a reason to skip.
        eprintln!(
            "the eBPF object was not embedded: run `cargo xtask build-ebpf` before the tests"
        );
    }
    if root {
        sweep_stale_labs();
    }
    let tests: [(&str, fn()); 9] = [
        (
            "random_tcp_and_udp_reach_every_backend_uniformly",
            random_split,
        ),
        (
            "maglev_keeps_flows_when_a_backend_comes_or_goes",
            maglev_stability,
        ),
        (
            "client_ip_affinity_sticks_until_idle_timeout",
            client_ip_affinity,
        ),
        ("removed_backend_gets_no_new_connections", removed_backend),
        ("service_without_backends_refuses_connections", no_backends),
        ("pinned_state_survives_an_agent_restart", restart),
        ("skiff_agent_datapath_commands", cli),
        (
            "nodeport_from_another_netns_reaches_local_and_remote_backends",
            nodeport::from_another_netns,
        ),
        (
            "nodeport_tc_programs_at_packet_level",
            nodeport::packet_level,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                f();
                Ok(())
            })
            .with_ignored_flag(!root)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

const LAB_PREFIX: &str = "skiff-test-";

/// Removes what labs of test runs that were killed (and so could not clean up) left behind:
/// names carry the pid of their run.
fn sweep_stale_labs() {
    netns::sweep_stale(
        LAB_PREFIX,
        sys::cgroup2_root().ok().as_deref(),
        Path::new(sys::BPFFS),
        &|pins| {
            let _ = ebpf::cleanup(pins);
        },
    );
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

fn backend_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, n)
}

fn backend(n: u8) -> BackendAddr {
    BackendAddr {
        ip: backend_ip(n),
        port: BACKEND_PORT,
    }
}

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, n)
}

/// Reads a child's stdout lines on a thread, so that waits can have deadlines.
fn line_reader(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn spawn_helper(args: &[&str]) -> (Child, ChildStdin, Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg(HELPER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let stdin = child.stdin.take().expect("piped");
    let lines = line_reader(child.stdout.take().expect("piped"));
    match lines.recv_timeout(Duration::from_secs(20)) {
        Ok(l) if l == "ready" => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper {args:?} did not get ready: {other:?}");
        }
    }
    (child, stdin, lines)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A network namespace, a cgroup2 directory and a pin directory, all removed on drop.
struct Lab {
    cgroup: PathBuf,
    pin_dir: PathBuf,
    backends: BTreeMap<u8, Child>,
    /// Deleted after Drop stopped the backends and removed the rest.
    netns: Netns,
}

impl Lab {
    fn new() -> Self {
        assert!(
            ebpf::embedded_object().is_some(),
            "the eBPF object was not embedded: run `cargo xtask build-ebpf`, then the tests"
        );
        let name = format!(
            "{LAB_PREFIX}{}-{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let cgroup = sys::cgroup2_root().expect("a cgroup2 mount").join(&name);
        // Construct the guard first: whatever is created below is removed even if a later step
        // fails.
        let lab = Self {
            cgroup,
            pin_dir: Path::new(sys::BPFFS).join(&name),
            backends: BTreeMap::new(),
            netns: Netns::new(name),
        };
        lab.netns.loopback_up();
        // The service range is a blackhole: an untranslated VIP fails at once (EINVAL) inside
        // the namespace instead of going anywhere (the namespace has no other route anyway;
        // this kernel has no dummy driver).
        lab.netns.ip(&["route", "add", "blackhole", "10.96.0.0/12"]);
        std::fs::create_dir(&lab.cgroup).expect("create the test cgroup");
        lab
    }

    fn config(&self) -> EbpfConfig {
        EbpfConfig {
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
            object: None,
            nodeport_interfaces: Vec::new(),
        }
    }

    fn datapath(&self) -> EbpfDatapath {
        EbpfDatapath::start(self.config()).expect("start the eBPF datapath")
    }

    /// Starts backend `n` (10.244.0.n:8080, TCP and UDP), answering "b<n>".
    fn start_backend(&mut self, n: u8) {
        self.netns
            .ip(&["addr", "add", &format!("{}/32", backend_ip(n)), "dev", "lo"]);
        let addr = format!("{}:{BACKEND_PORT}", backend_ip(n));
        let id = format!("b{n}");
        let (child, _, _) = spawn_helper(&[
            "serve",
            "--netns",
            self.netns.name(),
            "--id",
            &id,
            "--addr",
            &addr,
        ]);
        self.backends.insert(n, child);
    }

    fn client(&self) -> Client {
        let cgroup = self.cgroup.to_str().expect("utf-8 path");
        let (child, stdin, lines) =
            spawn_helper(&["client", "--netns", self.netns.name(), "--cgroup", cgroup]);
        Client {
            child,
            stdin,
            lines,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.backends.values_mut() {
            kill(child);
        }
        if let Err(e) = ebpf::cleanup(&self.pin_dir) {
            eprintln!("cleanup of {}: {e}", self.pin_dir.display());
        }
        // A killed client leaves the cgroup as soon as it is reaped; allow the kernel a moment.
        if let Err(e) = remove_dir_within(&self.cgroup, Duration::from_secs(10)) {
            eprintln!("cannot remove the test cgroup: {e}");
        }
    }
}

/// The client process: commands on stdin, one answer line each on stdout.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for Client {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// What a batch of requests reported.
#[derive(Debug)]
enum Outcome {
    /// The backend names, one per request.
    Ok(Vec<String>),
    /// The first failure: an errno, or a description.
    Err(String),
}

impl Outcome {
    fn ids(self) -> Vec<String> {
        match self {
            Self::Ok(ids) => ids,
            Self::Err(e) => panic!("requests failed: {e}"),
        }
    }
}

fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

impl Client {
    fn cmd(&mut self, line: &str) -> Outcome {
        writeln!(self.stdin, "{line}").expect("write to the client");
        self.stdin.flush().expect("flush");
        let reply = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("no answer to {line:?}: {e}"));
        match reply.split_once(' ') {
            Some(("ok", rest)) => Outcome::Ok(rest.split_whitespace().map(String::from).collect()),
            None if reply == "ok" => Outcome::Ok(Vec::new()),
            _ => Outcome::Err(reply.trim_start_matches("err ").to_owned()),
        }
    }

    fn tcp(&mut self, vip: Ipv4Addr, port: u16, n: usize) -> Outcome {
        self.cmd(&format!("tcp {vip} {port} {n}"))
    }

    fn udp(&mut self, vip: Ipv4Addr, port: u16, n: usize) -> Outcome {
        self.cmd(&format!("udp {vip} {port} {n}"))
    }

    fn connected_udp(&mut self, vip: Ipv4Addr, port: u16, n: usize, src_base: u16) -> Outcome {
        self.cmd(&format!("cudp {vip} {port} {n} {src_base}"))
    }

    /// Opens a TCP connection kept by the client; returns its handle.
    fn open(&mut self, vip: Ipv4Addr, port: u16) -> String {
        let ids = self.cmd(&format!("open {vip} {port}")).ids();
        ids[0].clone()
    }

    /// Sends a request on an open connection; returns who answered.
    fn ask(&mut self, handle: &str) -> String {
        self.cmd(&format!("ask {handle}")).ids()[0].clone()
    }
}

fn service(
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    backends: impl IntoIterator<Item = u8>,
) -> Service {
    Service {
        frontend: Frontend {
            ip: vip,
            port,
            protocol,
        },
        backends: backends.into_iter().map(backend).collect(),
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::None,
        external_local: false,
    }
}

fn assert_near_uniform(ids: &[String], backends: usize, what: &str) {
    let c = counts(ids);
    assert_eq!(
        c.len(),
        backends,
        "{what}: not every backend was reached: {c:?}"
    );
    let n = ids.len() as f64;
    let p = 1.0 / backends as f64;
    let ideal = n * p;
    // Binomial counts: more than five standard deviations off happens about once in a million
    // runs if the split is uniform.
    let tolerance = 5.0 * (n * p * (1.0 - p)).sqrt();
    for (id, got) in &c {
        assert!(
            (*got as f64 - ideal).abs() <= tolerance,
            "{what}: {id} got {got} of {n}, ideal {ideal:.0} +- {tolerance:.0}: {c:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

fn random_split() {
    let mut lab = Lab::new();
    for n in 1..=4 {
        lab.start_backend(n);
    }
    let mut dp = lab.datapath();
    dp.upsert_service(&service(vip(10), 80, Protocol::Tcp, 1..=4))
        .unwrap();
    dp.upsert_service(&service(vip(10), 53, Protocol::Udp, 1..=4))
        .unwrap();
    let mut client = lab.client();

    // TCP: each connection is balanced once, at connect(); getpeername() shows the VIP (the
    // client checks it).
    let ids = client.tcp(vip(10), 80, 2000).ids();
    assert_near_uniform(&ids, 4, "TCP");
    // Unconnected UDP: each datagram is balanced at sendmsg(); replies come from the VIP (the
    // client checks the source address).
    let ids = client.udp(vip(10), 53, 2000).ids();
    assert_near_uniform(&ids, 4, "unconnected UDP");
    // Connected UDP: balanced at connect().
    let ids = client.connected_udp(vip(10), 53, 800, 0).ids();
    assert_near_uniform(&ids, 4, "connected UDP");
    // A port the service does not have is not translated: it dies on the dummy device.
    match client.cmd(&format!("tcp {} 81 1 300", vip(10))) {
        Outcome::Err(e) => assert!(e.starts_with(UNTRANSLATED), "{e}"),
        Outcome::Ok(ids) => panic!("an untranslated VIP answered: {ids:?}"),
    }
}

fn maglev_stability() {
    let mut lab = Lab::new();
    for n in 1..=11 {
        lab.start_backend(n);
    }
    let mut dp = lab.datapath();
    let mut svc = service(vip(20), 53, Protocol::Udp, 1..=10);
    svc.algorithm = LbAlgorithm::Maglev;
    dp.upsert_service(&svc).unwrap();
    let mut client = lab.client();
    // A flow is a source port: the same flows are replayed after each change.
    const FLOWS: usize = 1000;
    let before = client.connected_udp(vip(20), 53, FLOWS, 20000).ids();
    assert_eq!(counts(&before).len(), 10, "{:?}", counts(&before));
    let again = client.connected_udp(vip(20), 53, FLOWS, 20000).ids();
    assert_eq!(before, again, "Maglev is deterministic for the same flows");

    // One of 10 backends added: about 1/11 of the flows move to it, (nearly) no other moves.
    svc.backends.push(backend(11));
    dp.upsert_service(&svc).unwrap();
    let after = client.connected_udp(vip(20), 53, FLOWS, 20000).ids();
    let to_new = after.iter().filter(|id| *id == "b11").count();
    let kept = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *a != "b11" && b == a)
        .count();
    let candidates = FLOWS - to_new;
    assert!(
        (FLOWS / 25..=FLOWS / 6).contains(&to_new),
        "{to_new} of {FLOWS} flows moved to the new backend"
    );
    assert!(
        kept * 100 >= candidates * 99,
        "only {kept} of {candidates} flows kept their backend after adding one"
    );

    // One removed: only its flows move.
    svc.backends.retain(|b| *b != backend(1));
    dp.upsert_service(&svc).unwrap();
    let removed = client.connected_udp(vip(20), 53, FLOWS, 20000).ids();
    assert!(!removed.iter().any(|id| id == "b1"), "b1 was removed");
    let survivors = after.iter().filter(|id| *id != "b1").count();
    let kept = after
        .iter()
        .zip(&removed)
        .filter(|(b, a)| *b != "b1" && b == a)
        .count();
    assert!(
        kept * 100 >= survivors * 99,
        "only {kept} of {survivors} flows of surviving backends kept them"
    );
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// When the client's affinity entry for `rev_nat` was last used, read from the pinned map.
fn affinity_last_used(pin_dir: &Path, rev_nat: u16) -> Option<(u64, u32)> {
    use aya::maps::{HashMap, Map, MapData};
    use skiff_ebpf_common::{AffinityKey, AffinityValue};
    let data = MapData::from_pin(pin_dir.join(skiff_ebpf_common::maps::AFFINITY)).unwrap();
    let map: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::LruHashMap(data)).unwrap();
    map.iter()
        .filter_map(Result::ok)
        .find(|(k, _)| k.rev_nat_index == rev_nat)
        .map(|(_, v)| (v.last_used_ns, v.backend_id))
}

fn client_ip_affinity() {
    let mut lab = Lab::new();
    for n in 1..=3 {
        lab.start_backend(n);
    }
    let mut dp = lab.datapath();
    let mut svc = service(vip(30), 80, Protocol::Tcp, 1..=3);
    svc.affinity = SessionAffinity::ClientIp { timeout_seconds: 1 };
    dp.upsert_service(&svc).unwrap();
    let mut client = lab.client();

    // Sticks: every connection of this client (its network namespace) goes to one backend.
    let ids = client.tcp(vip(30), 80, 200).ids();
    let c = counts(&ids);
    assert_eq!(c.len(), 1, "ClientIP affinity did not stick: {c:?}");
    let sticky = ids[0].clone();
    // UDP ports of the same service are separate service ports, with their own affinity.

    // The sticky backend is removed: the client moves, and sticks to its new backend.
    let sticky_n: u8 = sticky[1..].parse().unwrap();
    svc.backends.retain(|b| *b != backend(sticky_n));
    dp.upsert_service(&svc).unwrap();
    let ids = client.tcp(vip(30), 80, 100).ids();
    let c = counts(&ids);
    assert_eq!(c.len(), 1, "affinity after removal did not stick: {c:?}");
    assert!(
        !c.contains_key(&sticky),
        "a removed backend got connections"
    );
    let second = ids[0].clone();

    // After timeoutSeconds of idleness the client may be balanced anew: wait (with a deadline)
    // until the entry has expired by the kernel's clock, connect, and repeat until another
    // backend is chosen (each round picks the other backend with probability 1/2).
    let rev_nat = dp.table().rev_nat_of(&svc.frontend).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (last_used, _) = affinity_last_used(&lab.pin_dir, rev_nat).expect("an affinity entry");
        while monotonic_ns() <= last_used + 1_000_000_000 + 10_000_000 {
            assert!(
                Instant::now() < deadline,
                "the affinity entry never expired"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let id = client.tcp(vip(30), 80, 1).ids().remove(0);
        if id != second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after expiry the client always got {second} again"
        );
    }
}

fn removed_backend() {
    let mut lab = Lab::new();
    for n in 1..=3 {
        lab.start_backend(n);
    }
    let mut dp = lab.datapath();
    let mut svc = service(vip(40), 80, Protocol::Tcp, 1..=3);
    dp.upsert_service(&svc).unwrap();
    let mut client = lab.client();
    assert_eq!(counts(&client.tcp(vip(40), 80, 300).ids()).len(), 3);

    // Keep a connection that landed on b2 open across the removal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let handle = loop {
        let h = client.open(vip(40), 80);
        if client.ask(&h) == "b2" {
            break h;
        }
        assert!(Instant::now() < deadline, "never reached b2");
    };

    svc.backends.retain(|b| *b != backend(2));
    dp.upsert_service(&svc).unwrap();
    let ids = client.tcp(vip(40), 80, 300).ids();
    let c = counts(&ids);
    assert!(
        !c.contains_key("b2"),
        "a removed backend got new connections: {c:?}"
    );
    assert_eq!(c.len(), 2, "{c:?}");
    // Established connections are not torn down by the datapath (as with kube-proxy).
    assert_eq!(client.ask(&handle), "b2");

    // Deleting the service leaves the VIP untranslated: it no longer answers.
    dp.delete_service(&svc.frontend).unwrap();
    match client.cmd(&format!("tcp {} 80 1 300", vip(40))) {
        Outcome::Err(e) => assert!(e.starts_with(UNTRANSLATED), "{e}"),
        Outcome::Ok(ids) => panic!("a deleted service answered: {ids:?}"),
    }
}

fn no_backends() {
    let mut lab = Lab::new();
    lab.start_backend(1);
    let mut dp = lab.datapath();
    let mut tcp = service(vip(50), 80, Protocol::Tcp, []);
    let udp = service(vip(50), 53, Protocol::Udp, []);
    dp.upsert_service(&tcp).unwrap();
    dp.upsert_service(&udp).unwrap();
    let mut client = lab.client();
    let refused = format!("errno {}", nix::libc::ECONNREFUSED);
    for (what, outcome) in [
        ("TCP connect", client.tcp(vip(50), 80, 1)),
        ("UDP connect", client.connected_udp(vip(50), 53, 1, 0)),
        ("UDP sendto", client.udp(vip(50), 53, 1)),
    ] {
        match outcome {
            Outcome::Err(e) => assert!(e.starts_with(&refused), "{what}: {e}"),
            Outcome::Ok(ids) => panic!("{what} to a service without backends answered: {ids:?}"),
        }
    }
    // An endpoint becomes ready: connections go through.
    tcp.backends.push(backend(1));
    dp.upsert_service(&tcp).unwrap();
    assert_eq!(client.tcp(vip(50), 80, 5).ids(), vec!["b1"; 5]);
}

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

fn restart() {
    let mut lab = Lab::new();
    for n in 1..=2 {
        lab.start_backend(n);
    }
    let svc = service(vip(60), 80, Protocol::Tcp, 1..=2);
    let mut client = lab.client();
    let (handle, first, old_programs);
    {
        let mut dp = lab.datapath();
        dp.upsert_service(&svc).unwrap();
        handle = client.open(vip(60), 80);
        first = client.ask(&handle);
        old_programs = dp.program_ids().to_vec();
        // The agent goes away without cleaning up.
    }
    assert!(ebpf::is_pinned(&lab.pin_dir));
    let loaded = loaded_program_ids();
    assert!(
        old_programs.iter().all(|id| loaded.contains(id)),
        "the pinned links keep the programs: {old_programs:?}"
    );
    // Routing goes on without it, new and established connections alike.
    assert_eq!(counts(&client.tcp(vip(60), 80, 100).ids()).len(), 2);
    assert_eq!(client.ask(&handle), first);

    // A new agent finds the services in the pinned maps and replaces the programs.
    let mut dp = lab.datapath();
    assert_eq!(dp.services(), vec![svc.clone()]);
    // The old programs were detached once the new ones were attached, and so are unloaded (the
    // kernel frees them after an RCU grace period: wait for it, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(10);
    let loaded = loop {
        let loaded = loaded_program_ids();
        if !old_programs.iter().any(|id| loaded.contains(id)) {
            break loaded;
        }
        assert!(
            Instant::now() < deadline,
            "old programs still loaded after the restart: {old_programs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(dp.program_ids().iter().all(|id| loaded.contains(id)));
    assert_eq!(client.ask(&handle), first);
    assert_eq!(counts(&client.tcp(vip(60), 80, 100).ids()).len(), 2);
    // And it can keep updating them.
    let mut one = svc.clone();
    one.backends = vec![backend(1)];
    dp.upsert_service(&one).unwrap();
    assert_eq!(client.tcp(vip(60), 80, 20).ids(), vec!["b1"; 20]);
    assert_eq!(client.ask(&handle), first);

    // Cleanup detaches everything: the VIP is dead again.
    drop(dp);
    ebpf::cleanup(&lab.pin_dir).unwrap();
    assert!(!lab.pin_dir.exists());
    match client.cmd(&format!("tcp {} 80 1 300", vip(60))) {
        Outcome::Err(e) => assert!(e.starts_with(UNTRANSLATED), "{e}"),
        Outcome::Ok(ids) => panic!("the VIP answered after cleanup: {ids:?}"),
    }
}

/// The `skiff-agent datapath` commands drive the same datapath from outside a process.
fn cli() {
    let mut lab = Lab::new();
    lab.start_backend(1);
    lab.start_backend(2);
    let agent = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
            .arg("datapath")
            .arg("--pin-dir")
            .arg(&lab.pin_dir)
            .args(args)
            .output()
            .expect("run skiff-agent");
        assert!(
            out.status.success(),
            "skiff-agent datapath {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    agent(&["attach", "--cgroup-root", lab.cgroup.to_str().unwrap()]);
    agent(&[
        "set",
        "--frontend",
        "10.96.0.70:80/tcp",
        "--backend",
        "10.244.0.1:8080",
        "--backend",
        "10.244.0.2:8080",
        "--maglev",
    ]);
    assert_eq!(
        agent(&["list"]),
        "10.96.0.70:80/TCP maglev -> [10.244.0.1:8080, 10.244.0.2:8080]\n"
    );
    let mut client = lab.client();
    // Maglev on unbound TCP sockets: each socket hashes its cookie, so both backends serve.
    assert_eq!(counts(&client.tcp(vip(70), 80, 200).ids()).len(), 2);
    agent(&["delete", "--frontend", "10.96.0.70:80/tcp"]);
    assert_eq!(agent(&["list"]), "");
    match client.cmd(&format!("tcp {} 80 1 300", vip(70))) {
        Outcome::Err(e) => assert!(e.starts_with(UNTRANSLATED), "{e}"),
        Outcome::Ok(ids) => panic!("a deleted service answered: {ids:?}"),
    }
    agent(&["cleanup"]);
    assert!(!lab.pin_dir.exists());

    // Without a command (and no kubeconfig) the binary says what the agent needs.
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kubeconfig"));
}

// ---------------------------------------------------------------------------------------------
// Helper processes
// ---------------------------------------------------------------------------------------------

mod helper {
    use super::*;

    fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    pub fn main(args: &[String]) {
        // Die with the test that started us, whatever happens to it.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
        // Join the cgroup before any socket exists: sockets take their cgroup at creation.
        if let Some(cgroup) = opt(args, "--cgroup") {
            std::fs::write(
                Path::new(cgroup).join("cgroup.procs"),
                std::process::id().to_string(),
            )
            .expect("join the test cgroup");
        }
        // Still single-threaded, so this moves the whole process.
        if let Some(netns) = opt(args, "--netns") {
            let f = std::fs::File::open(Path::new(NETNS_DIR).join(netns)).expect("netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        }
        match args.first().map(String::as_str) {
            Some("serve") => serve(
                opt(args, "--id").expect("--id"),
                opt(args, "--addr").expect("--addr"),
            ),
            Some("client") => client(),
            other => panic!("unknown helper role {other:?}"),
        }
    }

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }

    /// A backend: every TCP line and every UDP datagram is answered with its name.
    fn serve(id: &str, addr: &str) {
        let tcp = TcpListener::bind(addr).expect("bind TCP");
        let udp = UdpSocket::bind(addr).expect("bind UDP");
        let name = id.to_owned();
        std::thread::spawn(move || {
            let mut buf = [0_u8; 1500];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), from);
            }
        });
        say("ready");
        for stream in tcp.incoming() {
            let Ok(stream) = stream else { continue };
            let reply = format!("{id}\n");
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    if line.is_err() || w.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    }

    fn err(e: &std::io::Error) -> String {
        match e.raw_os_error() {
            Some(n) => format!("err errno {n} {e}"),
            None => format!("err {e}"),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn ask(stream: &mut TcpStream) -> std::io::Result<String> {
        stream.write_all(b"who\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(line.trim().to_owned())
    }

    fn tcp_once(target: SocketAddr, connect_timeout: Duration) -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&target, connect_timeout).map_err(|e| err(&e))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        // getpeername4 must show the VIP, not the backend.
        let peer = s.peer_addr().map_err(|e| err(&e))?;
        if peer != target {
            return Err(format!("err getpeername returned {peer}, want {target}"));
        }
        ask(&mut s).map_err(|e| err(&e))
    }

    fn udp_unconnected(target: SocketAddr, n: usize) -> Result<Vec<String>, String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| err(&e))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut ids = Vec::with_capacity(n);
        let mut buf = [0_u8; 64];
        for _ in 0..n {
            s.send_to(b"who", target).map_err(|e| err(&e))?;
            let (len, from) = s.recv_from(&mut buf).map_err(|e| err(&e))?;
            // recvmsg4 must make the reply come from the VIP.
            if from != target {
                return Err(format!("err reply came from {from}, want {target}"));
            }
            ids.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        Ok(ids)
    }

    fn udp_connected_once(target: SocketAddr, src_port: u16) -> Result<String, String> {
        let s = UdpSocket::bind(("0.0.0.0", src_port)).map_err(|e| err(&e))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.connect(target).map_err(|e| err(&e))?;
        let peer = s.peer_addr().map_err(|e| err(&e))?;
        if peer != target {
            return Err(format!("err getpeername returned {peer}, want {target}"));
        }
        s.send(b"who").map_err(|e| err(&e))?;
        let mut buf = [0_u8; 64];
        let len = s.recv(&mut buf).map_err(|e| err(&e))?;
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    fn client() {
        say("ready");
        let mut open: Vec<TcpStream> = Vec::new();
        let mut lines = std::io::stdin().lock().lines();
        while let Some(Ok(line)) = lines.next() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let target = |i: usize| -> SocketAddr {
                SocketAddr::V4(SocketAddrV4::new(
                    w[i].parse().expect("ip"),
                    w[i + 1].parse().expect("port"),
                ))
            };
            let num = |i: usize| -> usize { w.get(i).map_or(0, |s| s.parse().expect("number")) };
            let result: Result<Vec<String>, String> = match w[0] {
                // tcp IP PORT N [CONNECT_TIMEOUT_MS]
                "tcp" => {
                    let timeout = match num(4) {
                        0 => TIMEOUT,
                        ms => Duration::from_millis(ms as u64),
                    };
                    (0..num(3)).map(|_| tcp_once(target(1), timeout)).collect()
                }
                // udp IP PORT N: one unconnected socket, N datagrams
                "udp" => udp_unconnected(target(1), num(3)),
                // cudp IP PORT N SRC_BASE: N connected sockets (source ports SRC_BASE + i)
                "cudp" => {
                    let base = num(4);
                    (0..num(3))
                        .map(|i| {
                            let port = if base == 0 { 0 } else { (base + i) as u16 };
                            udp_connected_once(target(1), port)
                        })
                        .collect()
                }
                // open IP PORT: a kept TCP connection; answers its handle
                "open" => TcpStream::connect_timeout(&target(1), TIMEOUT)
                    .map_err(|e| err(&e))
                    .map(|s| {
                        s.set_read_timeout(Some(TIMEOUT)).unwrap();
                        open.push(s);
                        vec![(open.len() - 1).to_string()]
                    }),
                // ask HANDLE
                "ask" => ask(&mut open[num(1)])
                    .map(|id| vec![id])
                    .map_err(|e| err(&e)),
                other => Err(format!("err unknown command {other}")),
            };
            match result {
                Ok(ids) => say(&format!("ok {}", ids.join(" "))),
                Err(e) => say(&e),
            }
        }
    }
}
