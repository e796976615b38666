//! skiff-bench-dns: the measuring half of `cargo xtask bench dns`.
//!
//! It measures the node-local DNS responder (`skiff_agent::dns`) as the agent runs it
//! (`server::serve` on a zone built by `Zone::build`), on loopback only, for each Service count:
//!
//! 1. In a child process of its own (`serve`), pinned to one CPU and running a tokio
//!    current_thread runtime, so the responder has exactly one core: the process's RSS before
//!    and after `Zone::build` over synthetic Services and EndpointSlices, the time of that build
//!    (several builds: the service proxy builds it whole after a watch re-lists), and the cost of
//!    answering one query without a socket (`respond::handle`, and `Zone::lookup` alone).
//! 2. From this process, pinned to the other CPU: the highest query rate with `dnsperf` for
//!    names of existing Services (A records) and for names inside the cluster domain that do not
//!    exist (NXDOMAIN: missing Services and the search-path expansions a pod's resolver tries
//!    with `ndots:5`), with the responder's CPU use while dnsperf ran.
//! 3. Latency at half that rate from an open-loop client of its own (dnsperf 2.10 reports only
//!    the mean and standard deviation): one UDP socket, queries sent on a fixed schedule,
//!    replies matched by message id, each timed from its send to the kernel's receive
//!    timestamp; then again with the responder under SCHED_FIFO (as root), which separates the
//!    responder's own latency from waiting for a CPU that other work on the machine holds.
//!
//! The forwarder has no upstreams and only cluster names are asked, so nothing leaves the
//! machine. It writes its results as JSON; xtask (`xtask/src/bench_dns.rs`) renders the report.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_agent::dns::forward::Forwarder;
use skiff_agent::dns::respond::{self, Handled, Transport};
use skiff_agent::dns::server::{self, ZoneHandle};
use skiff_agent::dns::zone::{Zone, DEFAULT_TTL};
use tokio_util::sync::CancellationToken;

/// The cluster domain the synthetic zone serves.
const DOMAIN: &str = "cluster.local";
/// Namespaces the synthetic Services are spread over.
const NAMESPACES: usize = 20;
/// Ready endpoints in every Service's EndpointSlice.
const ENDPOINTS: usize = 3;
/// How many times the zone is built, for the build time's median.
const BUILDS: usize = 5;
/// How long each in-process cost (`handle`, `lookup`) is measured.
const IN_PROCESS: Duration = Duration::from_millis(400);

#[derive(Debug, Parser)]
#[command(
    name = "skiff-bench-dns",
    about = "Cluster DNS responder benchmark (run it through `cargo xtask bench dns`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure every Service count and write the JSON results.
    Run(RunArgs),
    /// Internal: build the zone and serve it on 127.0.0.1 (one core), until stdin closes.
    #[command(hide = true)]
    Serve {
        /// Synthetic Services in the zone.
        #[arg(long)]
        services: usize,
        /// The CPU to run on (none: not pinned).
        #[arg(long)]
        cpu: Option<usize>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    services: Vec<usize>,
    /// Seconds of every measurement (each dnsperf run and each latency run).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The dnsperf binary.
    #[arg(long, default_value = "dnsperf")]
    dnsperf: PathBuf,
    /// dnsperf's queries outstanding at once (`-q`).
    #[arg(long, default_value_t = 200)]
    outstanding: usize,
    /// Skip the latency runs with the responder under SCHED_FIFO (they need root).
    #[arg(long)]
    no_realtime: bool,
}

/// What the `serve` child reports once it is listening.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ready {
    port: u16,
    pinned_cpu: Option<usize>,
    services: usize,
    zone_services: usize,
    rss_start_kib: u64,
    rss_inputs_kib: u64,
    rss_zone_kib: u64,
    build_ms: Vec<f64>,
    handle_ns_cached: f64,
    handle_ns_nxdomain: f64,
    lookup_ns_cached: f64,
    lookup_ns_nxdomain: f64,
}

/// What the `serve` child reports when it stops.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    rss_end_kib: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(&args),
        Cmd::Serve { services, cpu } => serve(services, cpu),
    }
}

/// Confines the calling thread (and the threads and processes it starts later) to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// The CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Service `i`'s name and namespace.
fn service_name(i: usize) -> (String, String) {
    (format!("svc-{i:05}"), format!("ns-{:02}", i % NAMESPACES))
}

/// The FQDN of Service `i`.
fn service_fqdn(i: usize) -> String {
    let (name, ns) = service_name(i);
    format!("{name}.{ns}.svc.{DOMAIN}")
}

/// Synthetic Services and their EndpointSlices, shaped as the API server stores them: a
/// ClusterIP, one or two named ports, a selector, and one EndpointSlice of three ready
/// endpoints on three nodes.
fn synthetic(n: usize) -> anyhow::Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let (name, ns) = service_name(i);
        // 10.96.0.0/12 from 10.96.0.20 upwards (kubernetes' and kube-dns' addresses are below).
        let ip =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 20)) + i as u32);
        let mut ports =
            vec![json!({"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080})];
        let mut slice_ports = vec![json!({"name": "http", "protocol": "TCP", "port": 8080})];
        if i % 2 == 1 {
            ports.push(
                json!({"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090}),
            );
            slice_ports.push(json!({"name": "metrics", "protocol": "TCP", "port": 9090}));
        }
        services.push(serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{i:012}"),
                "resourceVersion": (i + 100).to_string(),
                "creationTimestamp": "2026-12-07T00:00:00Z",
                "labels": {"app": name},
            },
            "spec": {
                "type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "selector": {"app": name}, "sessionAffinity": "None", "ports": ports,
                "internalTrafficPolicy": "Cluster",
            },
        }))?);
        let endpoints: Vec<_> = (0..ENDPOINTS)
            .map(|e| {
                // Pod addresses 10.244.0.1 upwards, unique across the cluster.
                let k = (i * ENDPOINTS + e + 1) as u32;
                let pod_ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + k);
                json!({
                    "addresses": [pod_ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", e),
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-7d9c5b-{e}"),
                                  "uid": format!("00000000-0000-4000-9000-{k:012}")},
                })
            })
            .collect();
        slices.push(serde_json::from_value(json!({
            "metadata": {
                "name": format!("{name}-x8k2p"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name,
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "resourceVersion": (i + 200_000).to_string(),
            },
            "addressType": "IPv4", "endpoints": endpoints, "ports": slice_ports,
        }))?);
    }
    Ok((services, slices))
}

/// The names dnsperf and the latency client ask (A queries), cached or NXDOMAIN.
fn names(n: usize, nxdomain: bool) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            let (name, ns) = service_name(i);
            if nxdomain {
                // A Service that does not exist, and what a pod's resolver asks first for a
                // name with fewer than five dots (its namespace's search domain appended).
                vec![
                    format!("missing-{i:05}.{ns}.svc.{DOMAIN}"),
                    format!("{name}.{ns}.svc.{DOMAIN}.{ns}.svc.{DOMAIN}"),
                ]
            } else {
                vec![format!("{name}.{ns}.svc.{DOMAIN}")]
            }
        })
        .collect()
}

/// A stub resolver's query (recursion desired, no EDNS) for `name`, id 0.
fn query(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(format!("{name}."))?,
        RecordType::A,
    ));
    Ok(m.to_vec()?)
}

/// Nanoseconds per call of `f` over `items`, cycling, for about `IN_PROCESS`.
fn per_call<T>(items: &[T], mut f: impl FnMut(&T)) -> f64 {
    let started = Instant::now();
    let mut calls = 0usize;
    // The clock is read once per batch, so that reading it does not count as the call's cost.
    while started.elapsed() < IN_PROCESS {
        for _ in 0..1000 {
            f(&items[calls % items.len()]);
            calls += 1;
        }
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// The `serve` child: builds the zone, reports, serves until stdin closes.
fn serve(n: usize, cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        pin(cpu).context("sched_setaffinity")?;
    }
    let rss_start_kib = rss_kib();
    let (services, slices) = synthetic(n)?;
    let rss_inputs_kib = rss_kib();
    let mut build_ms = Vec::new();
    let started = Instant::now();
    let zone = Zone::build(DOMAIN, DEFAULT_TTL, &services, &slices);
    build_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    let rss_zone_kib = rss_kib();
    for _ in 1..BUILDS {
        let started = Instant::now();
        let again = Zone::build(DOMAIN, DEFAULT_TTL, &services, &slices);
        build_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(again);
    }

    // The protocol's cost without sockets or tasks: what one core could answer at most.
    let in_process = |nxdomain: bool| -> anyhow::Result<(f64, f64)> {
        let names = names(n, nxdomain);
        let requests = names
            .iter()
            .map(|n| query(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let handle = per_call(&requests, |r| {
            match respond::handle(&zone, r, Transport::Udp) {
                Handled::Reply(bytes) => {
                    std::hint::black_box(bytes);
                }
                other => panic!("not answered from the zone: {other:?}"),
            }
        });
        let parsed: Vec<Name> = names
            .iter()
            .map(|n| Name::from_ascii(format!("{n}.")))
            .collect::<Result<_, _>>()?;
        let lookup = per_call(&parsed, |name| {
            std::hint::black_box(zone.lookup(name, RecordType::A));
        });
        Ok((handle, lookup))
    };
    let (handle_ns_cached, lookup_ns_cached) = in_process(false)?;
    let (handle_ns_nxdomain, lookup_ns_nxdomain) = in_process(true)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let zone_services = zone.len();
    let handle = ZoneHandle::new(zone);
    let (udp, tcp) = runtime.block_on(server::bind("127.0.0.1:0".parse()?))?;
    let port = udp.local_addr()?.port();
    let ready = Ready {
        port,
        pinned_cpu: cpu,
        services: n,
        zone_services,
        rss_start_kib,
        rss_inputs_kib,
        rss_zone_kib,
        build_ms,
        handle_ns_cached,
        handle_ns_nxdomain,
        lookup_ns_cached,
        lookup_ns_nxdomain,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;
    // The parent closes stdin to stop the responder.
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stop.cancel();
    });
    // No upstreams: only cluster names are asked, and nothing may leave the machine.
    let forwarder = Forwarder::new(Vec::new(), Duration::from_millis(100));
    runtime.block_on(server::serve(udp, tcp, handle, forwarder, shutdown));
    writeln!(
        out,
        "{}",
        serde_json::to_string(&Done {
            rss_end_kib: rss_kib()
        })?
    )?;
    // The inputs stay alive until here, as the service proxy's stores keep them in the agent.
    drop((services, slices));
    Ok(())
}

/// A running `serve` child.
struct Responder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    ready: Ready,
}

impl Responder {
    fn start(services: usize, cpu: Option<usize>) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve").args(["--services", &services.to_string()]);
        if let Some(cpu) = cpu {
            cmd.args(["--cpu", &cpu.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the responder")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let ready: Ready = serde_json::from_str(&line)
            .with_context(|| format!("the responder did not start: {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            ready,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ready.port))
    }

    /// The CPU time of the responder's thread (the runtime's, the process's main thread) so
    /// far, from the scheduler's own accounting (schedstat, ns): the tick-sampled utime and
    /// stime of /proc/<pid>/stat misjudge a thread that runs in short bursts between wakeups.
    fn cpu_time(&self) -> Duration {
        schedstat(&format!("/proc/{}/schedstat", self.child.id()), 0)
    }

    /// How long the responder's thread (the runtime's, the process's main thread) has waited
    /// for a CPU while runnable.
    fn run_delay(&self) -> Duration {
        schedstat(&format!("/proc/{}/schedstat", self.child.id()), 1)
    }

    fn stop(mut self) -> anyhow::Result<Done> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the responder failed: {status}");
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // Only after an error: `stop` waited for it already.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Datagrams the kernel dropped at the IPv4 UDP socket bound to 127.0.0.1:`port` (its receive
/// buffer full), from the last column of /proc/net/udp.
fn udp_drops(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

/// Steal time of CPU `cpu` so far (the eighth value of its line in /proc/stat, in USER_HZ
/// ticks of 10 ms).
fn steal(cpu: usize) -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&prefix))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Field `field` of a thread's schedstat file (ns): 0 is the time it ran, 1 the time it waited
/// on a run queue while runnable (other work on its CPU shows there).
fn schedstat(path: &str, field: usize) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(field)?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// The responder's share of a run's wall time spent on its CPU and spent waiting for it.
#[derive(Debug, Default, Serialize)]
struct Contention {
    /// CPU use, in cores.
    responder_cpu: f64,
    /// Time runnable but waiting for its CPU, as a share of the run.
    responder_waiting: f64,
    /// The same for the client thread (the latency client; for dnsperf: not measured).
    client_waiting: Option<f64>,
    /// Time the hypervisor ran something else on the responder's (virtual) CPU, as a share of
    /// the run (steal time in /proc/stat; 10 ms ticks): the guest's schedstat does not see it.
    responder_cpu_steal: f64,
}

/// Measures `responder`'s (and with `client`, this thread's) CPU and run-queue waits over `f`.
fn contended<T>(
    responder: &Responder,
    client: bool,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Contention)> {
    let own = "/proc/thread-self/schedstat";
    let cpu = responder.ready.pinned_cpu;
    let steal0 = cpu.and_then(steal);
    let (cpu0, wait0, client0) = (
        responder.cpu_time(),
        responder.run_delay(),
        schedstat(own, 1),
    );
    let started = Instant::now();
    let value = f()?;
    let wall = started.elapsed().as_secs_f64();
    let contention = Contention {
        responder_cpu: responder.cpu_time().saturating_sub(cpu0).as_secs_f64() / wall,
        responder_waiting: responder.run_delay().saturating_sub(wait0).as_secs_f64() / wall,
        client_waiting: client
            .then(|| schedstat(own, 1).saturating_sub(client0).as_secs_f64() / wall),
        responder_cpu_steal: match (steal0, cpu.and_then(steal)) {
            (Some(before), Some(after)) => after.saturating_sub(before).as_secs_f64() / wall,
            _ => 0.0,
        },
    };
    Ok((value, contention))
}

/// One dnsperf run's figures.
#[derive(Debug, Default, Serialize)]
struct Perf {
    qps: f64,
    sent: u64,
    completed: u64,
    lost: u64,
    /// Queries the kernel dropped at the responder's socket (its receive buffer full).
    responder_drops: u64,
    rcodes: String,
    avg_latency_ms: f64,
    stddev_latency_ms: f64,
    /// The responder's CPU use and waits while dnsperf ran.
    contention: Contention,
}

/// Runs dnsperf against `addr` with the names in `data` for `duration`.
fn dnsperf(args: &RunArgs, responder: &Responder, data: &Path) -> anyhow::Result<Perf> {
    let drops = udp_drops(responder.ready.port);
    let (out, contention) = contended(responder, false, || {
        Command::new(&args.dnsperf)
            .args(["-s", "127.0.0.1", "-p", &responder.ready.port.to_string()])
            .arg("-d")
            .arg(data)
            .args(["-l", &args.duration.to_string()])
            .args(["-q", &args.outstanding.to_string()])
            // Lost queries time out quickly so that a dropped burst does not stall the run.
            .args(["-t", "1"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "running {} (cargo xtask setup installs it)",
                    args.dnsperf.display()
                )
            })
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "dnsperf failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    let first_number = |key: &str| -> anyhow::Result<f64> {
        field(key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key:?} in dnsperf's output: {text}"))
    };
    Ok(Perf {
        qps: first_number("Queries per second:")?,
        sent: first_number("Queries sent:")? as u64,
        completed: first_number("Queries completed:")? as u64,
        lost: first_number("Queries lost:")? as u64,
        responder_drops: udp_drops(responder.ready.port).saturating_sub(drops),
        rcodes: field("Response codes:").unwrap_or_default().to_owned(),
        avg_latency_ms: first_number("Average Latency (s):")? * 1000.0,
        stddev_latency_ms: first_number("Latency StdDev (s):")? * 1000.0,
        contention,
    })
}

/// Latency percentiles of one fixed-rate run.
#[derive(Debug, Default, Serialize)]
struct Latency {
    rate: f64,
    sent: u64,
    answered: u64,
    unexpected_rcode: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// How far behind its schedule the client sent, at worst (a busy client CPU).
    max_send_lag_us: f64,
    /// Queries sent more than 100 µs after their scheduled time.
    late_sends: u64,
    /// Slots skipped because the client was more than `SKIP_LATE` behind (descheduled).
    skipped: u64,
    /// Replies the kernel dropped at the client's socket (its receive buffer full).
    client_drops: u64,
    /// Queries the kernel dropped at the responder's socket (its receive buffer full).
    responder_drops: u64,
    /// The responder's and the client's CPU and waits over the run.
    contention: Contention,
}

/// The schedule's step at `rate` per second, in ns.
fn interval_ns(rate: f64) -> u64 {
    (1e9 / rate).max(1.0) as u64
}

/// Nanoseconds since the epoch on the clock the kernel stamps received datagrams with.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A query more than this late for its slot is skipped rather than sent in a burst.
const SKIP_LATE: Duration = Duration::from_millis(1);

/// Sends the queries of `names` (cycling) at `rate` per second for `duration` from one UDP
/// socket (open loop: the schedule does not wait for replies, so a stalled responder meets the
/// queries that keep coming), and times each reply from just before its query was sent to the
/// kernel's receive timestamp on the client's socket (`SO_TIMESTAMPNS`), so the client being
/// descheduled before it reads a reply does not count. When the client itself falls more than
/// [`SKIP_LATE`] behind its schedule (its CPU is shared), the missed slots are skipped and
/// counted instead of being sent in a burst that would overflow the responder's socket.
fn fixed_rate(
    addr: SocketAddr,
    names: &[String],
    rate: f64,
    duration: Duration,
    expect_nxdomain: bool,
) -> anyhow::Result<Latency> {
    use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd as _;

    let requests = names
        .iter()
        .map(|n| query(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    udp.connect(addr)?;
    // Replies pile up while the client is descheduled; a default-sized buffer (~300 replies)
    // would drop them here and blame the responder.
    if socket::setsockopt(&udp, sockopt::RcvBufForce, &(16 << 20)).is_err() {
        let _ = socket::setsockopt(&udp, sockopt::RcvBuf, &(16 << 20));
    }
    socket::setsockopt(&udp, sockopt::ReceiveTimestampns, &true)?;
    let client_port = udp.local_addr()?.port();
    let interval = interval_ns(rate);
    let slots = (duration.as_secs_f64() * rate) as u64;
    // Send time (realtime ns) by message id; ids wrap after 65 536 queries, long after a reply
    // is due at these rates (a query still unanswered when its id comes round again is lost).
    let mut sent_at: Vec<Option<u64>> = vec![None; 1 << 16];
    let mut latencies: Vec<u64> = Vec::with_capacity(slots as usize);
    let (mut sent, mut skipped, mut unexpected, mut max_lag, mut late) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut receive =
        |sent_at: &mut Vec<Option<u64>>, latencies: &mut Vec<u64>| -> anyhow::Result<bool> {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let (n, stamp) = match socket::recvmsg::<()>(
                udp.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let stamp = msg.cmsgs()?.find_map(|c| match c {
                        ControlMessageOwned::ScmTimestampns(t) => {
                            Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                        }
                        _ => None,
                    });
                    (msg.bytes, stamp)
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            if n < 12 {
                return Ok(true);
            }
            let received = stamp.unwrap_or_else(realtime_ns);
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            if let Some(at) = sent_at[usize::from(id)].take() {
                latencies.push(received.saturating_sub(at));
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                let ok = if expect_nxdomain {
                    rcode == 3
                } else {
                    rcode == 0 && answers > 0
                };
                if !ok {
                    unexpected += 1;
                }
            }
            Ok(true)
        };
    let start = Instant::now();
    let mut slot = 0u64;
    while slot < slots {
        let due = interval * slot;
        let now = start.elapsed().as_nanos() as u64;
        if now >= due {
            let lag = now - due;
            slot += 1;
            if lag > SKIP_LATE.as_nanos() as u64 {
                skipped += 1;
                continue;
            }
            max_lag = max_lag.max(lag);
            if lag > 100_000 {
                late += 1;
            }
            let id = sent as u16;
            let mut request = requests[(sent as usize) % requests.len()].clone();
            request[..2].copy_from_slice(&id.to_be_bytes());
            sent_at[usize::from(id)] = Some(realtime_ns());
            udp.send(&request)?;
            sent += 1;
            continue;
        }
        // Busy-polls between sends: sleeping would add the timer's slack to the schedule.
        if !receive(&mut sent_at, &mut latencies)? {
            std::hint::spin_loop();
        }
    }
    // The last replies, for at most a second (a lost query never comes).
    let deadline = Instant::now() + Duration::from_secs(1);
    while (latencies.len() as u64) < sent && Instant::now() < deadline {
        if !receive(&mut sent_at, &mut latencies)? {
            std::hint::spin_loop();
        }
    }
    let answered = latencies.len() as u64;
    let client_drops = udp_drops(client_port);
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    Ok(Latency {
        rate,
        sent,
        answered,
        unexpected_rcode: unexpected,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: pct(1.0),
        max_send_lag_us: max_lag as f64 / 1000.0,
        late_sends: late,
        skipped,
        client_drops,
        responder_drops: 0,
        contention: Contention::default(),
    })
}

/// Checks one name of each kind before the timed runs: a wrong answer would make the rates
/// meaningless.
fn check(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let ask = |name: &str| -> anyhow::Result<Message> {
        socket.send_to(&query(name)?, addr)?;
        let mut buf = [0u8; 1500];
        let len = socket.recv(&mut buf)?;
        Ok(Message::from_vec(&buf[..len])?)
    };
    let last = n - 1;
    let found = ask(&service_fqdn(last))?;
    anyhow::ensure!(
        found.answers.len() == 1,
        "{} did not resolve: {found:?}",
        service_fqdn(last)
    );
    for name in names(1, true) {
        let missing = ask(&name)?;
        anyhow::ensure!(
            missing.metadata.response_code == hickory_proto::op::ResponseCode::NXDomain,
            "{name} is not NXDOMAIN: {missing:?}"
        );
    }
    Ok(())
}

/// Every figure of one Service count.
#[derive(Debug, Serialize)]
struct Point {
    services: usize,
    ready: Ready,
    rss_end_kib: u64,
    qps_cached: Perf,
    qps_nxdomain: Perf,
    latency_cached: Latency,
    latency_nxdomain: Latency,
    /// The same with the responder under SCHED_FIFO: how it answers when it gets its CPU as
    /// soon as a query arrives, whatever else the machine runs on that CPU.
    latency_cached_fifo: Option<Latency>,
    latency_nxdomain_fifo: Option<Latency>,
}

/// Sets the scheduling policy of every thread of `pid` with chrt (util-linux): `-f`, 1
/// (SCHED_FIFO, lowest priority) or `-o`, 0 (back to SCHED_OTHER).
fn chrt(pid: u32, policy: &str, priority: u8) -> anyhow::Result<()> {
    let status = Command::new("chrt")
        .args(["-a", policy, "-p", &priority.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running chrt")?;
    anyhow::ensure!(status.success(), "chrt {policy} failed: {status}");
    Ok(())
}

fn measure(
    args: &RunArgs,
    n: usize,
    server_cpu: Option<usize>,
    dir: &Path,
) -> anyhow::Result<Point> {
    anyhow::ensure!(n > 0, "at least one Service");
    let responder = Responder::start(n, server_cpu)?;
    let addr = responder.addr();
    check(addr, n)?;
    let cached = names(n, false);
    let nxdomain = names(n, true);
    let data = |file: &str, names: &[String]| -> anyhow::Result<PathBuf> {
        let path = dir.join(file);
        let mut text = String::new();
        for name in names {
            text.push_str(name);
            text.push_str(" A\n");
        }
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let cached_file = data(&format!("cached-{n}.txt"), &cached)?;
    let nxdomain_file = data(&format!("nxdomain-{n}.txt"), &nxdomain)?;
    eprintln!("dns bench: {n} Services: dnsperf, cached names");
    let qps_cached = dnsperf(args, &responder, &cached_file)?;
    eprintln!("dns bench: {n} Services: dnsperf, NXDOMAIN");
    let qps_nxdomain = dnsperf(args, &responder, &nxdomain_file)?;
    let duration = Duration::from_secs_f64(args.duration);
    eprintln!("dns bench: {n} Services: latency at half the rate, cached names");
    let at_half = |names: &[String], qps: f64, nxdomain: bool| -> anyhow::Result<Latency> {
        let drops = udp_drops(responder.ready.port);
        let (mut latency, contention) = contended(&responder, true, || {
            fixed_rate(addr, names, qps / 2.0, duration, nxdomain)
        })?;
        latency.contention = contention;
        latency.responder_drops = udp_drops(responder.ready.port).saturating_sub(drops);
        Ok(latency)
    };
    let latency_cached = at_half(&cached, qps_cached.qps, false)?;
    eprintln!("dns bench: {n} Services: latency at half the rate, NXDOMAIN");
    let latency_nxdomain = at_half(&nxdomain, qps_nxdomain.qps, true)?;
    // Only the responder is raised, and only for runs at half its rate: it sleeps between
    // queries, so the rest of the machine keeps its CPU (the busy-polling client stays normal).
    let (mut latency_cached_fifo, mut latency_nxdomain_fifo) = (None, None);
    if !args.no_realtime && nix::unistd::geteuid().is_root() {
        chrt(responder.child.id(), "-f", 1)?;
        eprintln!("dns bench: {n} Services: the same, responder under SCHED_FIFO");
        let runs = (|| -> anyhow::Result<(Latency, Latency)> {
            Ok((
                at_half(&cached, qps_cached.qps, false)?,
                at_half(&nxdomain, qps_nxdomain.qps, true)?,
            ))
        })();
        chrt(responder.child.id(), "-o", 0)?;
        let (cached, nxdomain) = runs?;
        latency_cached_fifo = Some(cached);
        latency_nxdomain_fifo = Some(nxdomain);
    }
    let ready = responder.ready.clone();
    let done = responder.stop()?;
    Ok(Point {
        services: n,
        ready,
        rss_end_kib: done.rss_end_kib,
        qps_cached,
        qps_nxdomain,
        latency_cached,
        latency_nxdomain,
        latency_cached_fifo,
        latency_nxdomain_fifo,
    })
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let loadavg_before = loadavg();
    let cpus = cpus();
    // The responder on CPU 0, everything else (dnsperf, the latency client) on CPU 1.
    let (server_cpu, client_cpu) = if cpus >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    if let Some(cpu) = client_cpu {
        pin(cpu).context("sched_setaffinity")?;
    }
    let dir = tempfile::tempdir()?;
    let mut points = Vec::new();
    for &n in &args.services {
        points.push(measure(args, n, server_cpu, dir.path())?);
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let dnsperf_version = Command::new(&args.dnsperf)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find_map(|l| l.strip_prefix("Version ").map(str::to_owned))
        })
        .unwrap_or_default();
    let results = json!({
        "kernel": kernel,
        "cpus": cpus,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "duration_s": args.duration,
        "outstanding": args.outstanding,
        "dnsperf_version": dnsperf_version,
        "namespaces": NAMESPACES,
        "endpoints_per_service": ENDPOINTS,
        "builds": BUILDS,
        "points": points,
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "total_s": started.elapsed().as_secs_f64(),
        "date": Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
    });
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)?;
    eprintln!("dns bench: wrote {}", args.out.display());
    Ok(())
}
