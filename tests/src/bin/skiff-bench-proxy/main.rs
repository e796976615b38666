//! skiff-bench-proxy: the measuring half of `cargo xtask bench proxy`.
//!
//! It compares the ways a connection to a Service can reach a backend, in one run and on one
//! lab, so that the figures are comparable: straight to the backend (the floor), skiff's eBPF
//! socket load balancing, and kube-proxy's iptables and nftables layouts (as the agent library
//! implements them). For each Service count it programs the datapath from scratch (timed),
//! checks that it routes (every answer must name a real backend), then measures:
//! - the latency of connect + request + close from one client thread (unloaded latency);
//! - the connection rate of `--threads` client threads doing the same in a closed loop;
//! - the request rate on kept-alive connections.
//!
//! Each connection goes to a randomly chosen Service among the N, so a large table matters.
//! Finally it starts skiff-control and skiff-agent (eBPF mode) and measures how long an
//! EndpointSlice change takes from the API write to the pinned maps.
//!
//! The lab (see `lab.rs`): backends in one network namespace, the client in another that is
//! created afresh for every measured point (so conntrack state and rules of one mode never
//! reach the next), a cgroup2 directory for the eBPF programs, a bpffs pin directory. Nothing
//! leaves these namespaces: the client namespace has no default route and routes the service
//! range locally, so an untranslated VIP is refused inside it.
//!
//! It writes its results as JSON; xtask (`xtask/src/bench_proxy.rs`) renders the report.
//! Run it through `cargo xtask bench proxy`, as root.

mod api;
mod dns;
mod lab;
mod load;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use skiff_agent::proxy::ebpf::{self, EbpfConfig, EbpfDatapath};
use skiff_agent::proxy::iptables::IptablesProxy;
use skiff_agent::proxy::nftables::NftablesProxy;
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};

use crate::lab::Lab;
use crate::load::Targets;

/// Set by the signal thread on SIGINT/SIGTERM; every loop checks it so that the run stops
/// early and the Drop guards remove the lab.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Fails when a stop was requested.
pub fn check_stop() -> anyhow::Result<()> {
    anyhow::ensure!(!STOP.load(Ordering::Relaxed), "interrupted");
    Ok(())
}

/// Number of backends every Service has (all Services share the same ten servers).
pub const BACKENDS: u8 = 10;
/// The port the backends listen on.
pub const BACKEND_PORT: u16 = 8080;
/// The Service port clients connect to.
pub const SERVICE_PORT: u16 = 80;

/// Backend `n` (1-based): 10.244.0.n.
pub fn backend_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, n)
}

/// The ClusterIP of Service `i` (0-based): 10.96.0.1 upwards, inside 10.96.0.0/16.
pub fn vip(i: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32;
    Ipv4Addr::from(n)
}

/// Largest Service count whose ClusterIPs fit in 10.96.0.0/16 (without its broadcast address).
pub const MAX_SERVICES: usize = 65_534 - 1;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-bench-proxy",
    about = "Service datapath benchmark (run it through `cargo xtask bench proxy`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the lab, measure every mode and Service count, write JSON results.
    Run(RunArgs),
    /// Internal: the backend servers (runs inside the backend namespace).
    #[command(hide = true)]
    Serve {
        /// Addresses to listen on.
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<SocketAddrV4>,
    },
}

/// A way for a connection to reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Straight to a backend's address: no translation (the floor).
    Direct,
    /// skiff's eBPF socket load balancing (cgroup connect4).
    Ebpf,
    /// kube-proxy's iptables layout.
    Iptables,
    /// kube-proxy's nftables layout.
    Nftables,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
    /// Seconds each measurement (latency, connection rate, keep-alive rate) runs per point, in
    /// total over the rounds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds per Service count: in every round each mode measures for duration/rounds, the
    /// modes taking turns (starting with a different one each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds one mode may take to program the Services; a slower one is stopped and reported
    /// as such.
    #[arg(long, default_value_t = 30.0)]
    program_timeout: f64,
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 1000, 5000, 10000])]
    services: Vec<usize>,
    /// Modes to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables])]
    modes: Vec<Mode>,
    /// Client threads for the rate measurements.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Kept-alive connections per client thread.
    #[arg(long, default_value_t = 8)]
    keepalive_conns: usize,
    /// EndpointSlice changes for the API-to-datapath latency (0 skips it).
    #[arg(long, default_value_t = 100)]
    api_changes: usize,
    /// Services created before the create-to-resolvable measurement (part of the API one).
    #[arg(long, default_value_t = 1000)]
    dns_background: usize,
    /// Services created one at a time for the create-to-resolvable latency (0 skips it).
    #[arg(long, default_value_t = 100)]
    dns_creates: usize,
    /// The skiff-control binary (release build).
    #[arg(long)]
    control_bin: PathBuf,
    /// The skiff-agent binary (release build).
    #[arg(long)]
    agent_bin: PathBuf,
}

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `samples` (nanoseconds); sorts them.
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] as f64 / 1000.0
        };
        Self {
            count: samples.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// One mode at one Service count.
#[derive(Debug, Serialize)]
struct Point {
    mode: Mode,
    services: usize,
    /// Why the point could not be (fully) measured.
    error: Option<String>,
    /// eBPF: loading and attaching the programs (before programming the Services).
    attach_ms: Option<f64>,
    /// Programming all Services from scratch: every upsert_service plus commit.
    program_ms: Option<f64>,
    /// With every Service programmed: one Service losing a backend and getting it back, two
    /// syncs (upsert_service plus commit each), the mean of the two.
    update_ms: Option<f64>,
    /// Removing the mode's state with every Service programmed (`IptablesProxy::cleanup`,
    /// `NftablesProxy::cleanup`, `ebpf::cleanup`).
    cleanup_ms: Option<f64>,
    /// Distinct backends that answered the routing check.
    backends_seen: usize,
    /// Rounds measured.
    rounds: usize,
    /// connect + request + close, one client thread; percentiles over all rounds' samples.
    latency: Latency,
    /// The p50 of every round on its own, µs (how stable the figure is).
    round_p50_us: Vec<f64>,
    /// connect + request + close per second, `threads` client threads: median of the rounds.
    conn_rate: f64,
    /// Every round's connection rate.
    round_conn_rates: Vec<f64>,
    /// Latency during the rate measurement (includes queueing on the CPUs), all rounds.
    loaded_latency: Latency,
    /// Requests per second on kept-alive connections: median of the rounds.
    keepalive_rate: f64,
    /// Every round's kept-alive request rate.
    round_keepalive_rates: Vec<f64>,
    /// Failed or wrongly answered connections/requests during the measurements.
    failures: u64,
}

impl Point {
    fn new(mode: Mode, services: usize) -> Self {
        Self {
            mode,
            services,
            error: None,
            attach_ms: None,
            program_ms: None,
            update_ms: None,
            cleanup_ms: None,
            backends_seen: 0,
            rounds: 0,
            latency: Latency::default(),
            round_p50_us: Vec::new(),
            conn_rate: 0.0,
            round_conn_rates: Vec::new(),
            loaded_latency: Latency::default(),
            keepalive_rate: 0.0,
            round_keepalive_rates: Vec::new(),
            failures: 0,
        }
    }
}

/// Everything the run measured.
#[derive(Debug, Serialize)]
struct Results {
    kernel: String,
    cpus: usize,
    duration_s: f64,
    rounds: usize,
    program_timeout_s: f64,
    threads: usize,
    keepalive_conns: usize,
    backends: u8,
    points: Vec<Point>,
    api: Option<api::ApiResult>,
    api_error: Option<String>,
    /// Seconds the whole run took.
    total_s: f64,
    /// /proc/loadavg before and after the run: other work on the machine shares the CPUs.
    loadavg_before: String,
    loadavg_after: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { addrs } => load::serve(&addrs),
        Command::Run(args) => run(args),
    }
}

/// Blocks SIGINT and SIGTERM in every thread and turns them into [`STOP`] on a thread of their
/// own, so that an interrupted run unwinds normally and its guards remove the lab. (Child
/// processes start with an empty signal mask: std resets it.)
fn handle_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            eprintln!("bench: {sig}: stopping and cleaning up");
            STOP.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        skiff_test_support::is_root(),
        "the proxy benchmark needs root (network namespaces, cgroups, BPF, iptables)"
    );
    anyhow::ensure!(
        ebpf::embedded_object().is_some(),
        "this binary was built without the eBPF object: run `cargo xtask build-ebpf` first \
         (`cargo xtask bench proxy` does)"
    );
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    anyhow::ensure!(args.threads > 0, "--threads must be positive");
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    anyhow::ensure!(
        args.program_timeout > 0.0,
        "--program-timeout must be positive"
    );
    if let Some(n) = args.services.iter().find(|&&n| n == 0 || n > MAX_SERVICES) {
        anyhow::bail!("{n} services: must be 1..={MAX_SERVICES} (ClusterIPs in 10.96.0.0/16)");
    }
    handle_signals()?;
    let started = Instant::now();
    let loadavg_before = loadavg();
    lab::sweep_stale();
    let mut lab = Lab::new()?;

    let mut points = Vec::new();
    for &n in &args.services {
        check_stop()?;
        let mut count_points = measure_count(&mut lab, n, &args)?;
        for point in &count_points {
            eprintln!(
                "bench: {:?} {n}: program {:?} ms, latency p50 {:.1} us p99 {:.1} us (round p50s {:.1?}), {:.0} conn/s, {:.0} req/s kept alive, {} failures{}",
                point.mode,
                point.program_ms.map(|v| v.round()),
                point.latency.p50_us,
                point.latency.p99_us,
                point.round_p50_us,
                point.conn_rate,
                point.keepalive_rate,
                point.failures,
                point.error.as_deref().map(|e| format!(", FAILED: {e}")).unwrap_or_default()
            );
        }
        points.append(&mut count_points);
    }

    let (api, api_error) = if args.api_changes == 0 {
        (None, None)
    } else {
        check_stop()?;
        eprintln!(
            "bench: API-to-datapath latency ({} changes)",
            args.api_changes
        );
        match api::measure(
            &mut lab,
            &args.control_bin,
            &args.agent_bin,
            api::Plan {
                changes: args.api_changes,
                dns_background: args.dns_background,
                dns_creates: args.dns_creates,
            },
        ) {
            Ok(r) => (Some(r), None),
            Err(e) => {
                check_stop()?;
                eprintln!("bench: API-to-datapath measurement failed: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    };

    let results = Results {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        duration_s: args.duration,
        rounds: args.rounds,
        program_timeout_s: args.program_timeout,
        threads: args.threads,
        keepalive_conns: args.keepalive_conns,
        backends: BACKENDS,
        points,
        api,
        api_error,
        total_s: started.elapsed().as_secs_f64(),
        loadavg_before,
        loadavg_after: loadavg(),
    };
    drop(lab);
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The Services of a point: `n` ClusterIPs on port 80, each with the same ten backends.
fn services(n: usize) -> Vec<Service> {
    let backends: Vec<BackendAddr> = (1..=BACKENDS)
        .map(|b| BackendAddr {
            ip: backend_ip(b),
            port: BACKEND_PORT,
        })
        .collect();
    (0..n)
        .map(|i| Service {
            frontend: Frontend {
                ip: vip(i),
                port: SERVICE_PORT,
                protocol: Protocol::Tcp,
            },
            backends: backends.clone(),
            algorithm: LbAlgorithm::Random,
            affinity: SessionAffinity::None,
            external_local: false,
        })
        .collect()
}

/// Upserts every service and commits; returns the elapsed milliseconds. On a failure the error
/// says how many Services had been programmed. A programming that takes longer than `timeout`
/// (or is interrupted) is stopped by killing the rule tool it runs (see [`kill_rule_tools`]).
fn program(dp: &mut dyn Datapath, services: &[Service], timeout: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let killed = AtomicBool::new(false);
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        let killed = &killed;
        s.spawn(move || {
            let deadline = start + timeout;
            loop {
                match wait.recv_timeout(Duration::from_millis(100)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if Instant::now() >= deadline || STOP.load(Ordering::Relaxed) {
                    killed.store(true, Ordering::SeqCst);
                    kill_rule_tools();
                }
            }
        });
        let r = program_all(dp, services, start);
        drop(done);
        r
    });
    if killed.load(Ordering::SeqCst) {
        check_stop()?;
        anyhow::bail!(
            "programming {} Services did not finish within {:.0} s (stopped; {})",
            services.len(),
            timeout.as_secs_f64(),
            result
                .err()
                .map_or("it had just finished".into(), |e| format!("{e:#}"))
        );
    }
    result
}

fn program_all(dp: &mut dyn Datapath, services: &[Service], start: Instant) -> anyhow::Result<f64> {
    // In chunks, so that a stop request is seen; each chunk is one upsert_services (the eBPF
    // mode writes it with a few batched map updates).
    const CHUNK: usize = 1024;
    for (i, chunk) in services.chunks(CHUNK).enumerate() {
        dp.upsert_services(chunk).with_context(|| {
            format!(
                "programming Services {}..{} of {} failed after {:.0} ms",
                i * CHUNK + 1,
                i * CHUNK + chunk.len(),
                services.len(),
                start.elapsed().as_secs_f64() * 1000.0
            )
        })?;
        check_stop()?;
    }
    dp.commit().with_context(|| {
        format!(
            "commit of {} Services failed after {:.0} ms",
            services.len(),
            start.elapsed().as_secs_f64() * 1000.0
        )
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Kills this process's own children that are rule tools (`iptables-restore`, `nft`, or the
/// `ip netns exec` that is about to become one), by pid: the datapath library runs them and
/// waits for them, and a tool stuck on 100 000 rules would hold the run for minutes. Nothing
/// else is touched.
fn kill_rule_tools() {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && (comm.starts_with("iptables") || comm == "nft" || comm == "ip") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The datapath state of one point, removed on drop. (The datapath objects themselves are not
/// needed once the Services are programmed: eBPF links and maps are pinned, rules stay.)
enum Programmed {
    /// Nothing to remove (direct), or removed with the client namespace (iptables and
    /// nftables, see [`setup_point`]).
    None,
    /// The eBPF pin directory.
    Ebpf(PathBuf),
}

impl Drop for Programmed {
    fn drop(&mut self) {
        match self {
            Self::Ebpf(pin_dir) => {
                if let Err(e) = ebpf::cleanup(pin_dir) {
                    eprintln!("bench: removing the eBPF datapath: {e}");
                }
            }
            Self::None => {}
        }
    }
}

/// Samples of one point, gathered over the rounds.
#[derive(Default)]
struct Gathered {
    latency: Vec<u64>,
    loaded: Vec<u64>,
}

/// Measures every mode at `n` Services: each mode gets a fresh client namespace of its own
/// and is programmed and checked there, then the modes take turns measuring, round by round.
/// A mode that fails is reported as failed; the others go on.
fn measure_count(lab: &mut Lab, n: usize, args: &RunArgs) -> anyhow::Result<Vec<Point>> {
    let mut points: Vec<Point> = args.modes.iter().map(|&m| Point::new(m, n)).collect();
    if let Err(e) = lab.fresh_clients(args.modes.len()) {
        for p in &mut points {
            p.error = Some(format!("creating the client namespaces: {e:#}"));
        }
        return Ok(points);
    }
    // The eBPF state of the previous Service count goes before anything is checked.
    ebpf::cleanup(&lab.pin_dir).context("removing earlier eBPF state")?;
    let svcs = services(n);
    let mut guards = Vec::new();
    let mut active = Vec::new();
    for (k, point) in points.iter_mut().enumerate() {
        check_stop()?;
        eprintln!("bench: {:?} with {n} services: programming", point.mode);
        match setup_point(lab, k, point, &svcs, args) {
            Ok(guard) => {
                guards.push(guard);
                active.push(k);
            }
            Err(e) => {
                check_stop()?;
                eprintln!("bench: {:?} with {n} services failed: {e:#}", point.mode);
                point.error = Some(format!("{e:#}"));
            }
        }
    }

    let per_round = Duration::from_secs_f64(args.duration / args.rounds as f64);
    let mut gathered: Vec<Gathered> = points.iter().map(|_| Gathered::default()).collect();
    for round in 0..args.rounds {
        let turn: Vec<usize> = (0..active.len())
            .map(|j| active[(j + round) % active.len()])
            .collect();
        for k in turn {
            check_stop()?;
            if points[k].error.is_some() {
                continue;
            }
            if let Err(e) = measure_round(lab, k, &mut points[k], &mut gathered[k], args, per_round)
            {
                check_stop()?;
                points[k].error = Some(format!("round {}: {e:#}", round + 1));
            }
        }
    }
    for (p, g) in points.iter_mut().zip(&mut gathered) {
        p.latency = Latency::of(&mut g.latency);
        p.loaded_latency = Latency::of(&mut g.loaded);
        p.conn_rate = median(&p.round_conn_rates);
        p.keepalive_rate = median(&p.round_keepalive_rates);
    }
    lab.enter_cgroup(false)?;
    // Each mode's cleanup with every Service still programmed, timed.
    for (k, p) in points.iter_mut().enumerate() {
        if p.error.is_some() || p.program_ms.is_none() {
            continue;
        }
        check_stop()?;
        let client = lab.client_ns(k);
        let start = Instant::now();
        let done = match p.mode {
            Mode::Direct => continue,
            Mode::Ebpf => ebpf::cleanup(&lab.pin_dir),
            Mode::Iptables => IptablesProxy::cleanup(Some(&client)),
            Mode::Nftables => NftablesProxy::cleanup(Some(&client)),
        };
        match done {
            Ok(()) => p.cleanup_ms = Some(start.elapsed().as_secs_f64() * 1000.0),
            Err(e) => eprintln!(
                "bench: {:?} cleanup with {n} services failed: {e:#}",
                p.mode
            ),
        }
    }
    drop(guards);
    Ok(points)
}

/// One Service of `services` loses its last backend and gets it back: two incremental syncs
/// on a fully programmed datapath; returns the mean milliseconds of one.
fn update(dp: &mut dyn Datapath, services: &[Service]) -> anyhow::Result<f64> {
    let Some(full) = services.last() else {
        return Ok(0.0);
    };
    let mut fewer = full.clone();
    fewer.backends.pop();
    let start = Instant::now();
    for s in [&fewer, full] {
        dp.upsert_service(s).context("updating one Service")?;
        dp.commit().context("committing one Service's update")?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / 2.0)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Programs mode `point.mode` in client namespace `k` and checks that it routes.
fn setup_point(
    lab: &mut Lab,
    k: usize,
    point: &mut Point,
    svcs: &[Service],
    args: &RunArgs,
) -> anyhow::Result<Programmed> {
    let client = lab.client_ns(k);
    let ns = lab.client_ns_path(k);
    lab.enter_cgroup(point.mode == Mode::Ebpf)?;
    // The VIPs must not answer before programming: this also proves that untranslated VIP
    // traffic dies inside the namespace.
    load::expect_refused(&ns, SocketAddrV4::new(vip(0), SERVICE_PORT))?;
    let timeout = Duration::from_secs_f64(args.program_timeout);
    let guard = match point.mode {
        Mode::Direct => Programmed::None,
        Mode::Ebpf => {
            let start = Instant::now();
            let mut dp = EbpfDatapath::start(EbpfConfig {
                cgroup: lab.cgroup.clone(),
                pin_dir: lab.pin_dir.clone(),
                object: None,
                // Whatever else the configuration has (NodePort interfaces...): none.
                ..EbpfConfig::node_defaults().context("the eBPF defaults")?
            })
            .context("starting the eBPF datapath")?;
            point.attach_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
            let guard = Programmed::Ebpf(lab.pin_dir.clone());
            point.program_ms = Some(program(&mut dp, svcs, timeout)?);
            point.update_ms = Some(update(&mut dp, svcs)?);
            guard
        }
        Mode::Iptables => {
            let mut dp = IptablesProxy::in_netns(&client);
            point.program_ms = Some(program(&mut dp, svcs, timeout)?);
            point.update_ms = Some(update(&mut dp, svcs)?);
            // Removed (and timed) after the measurements, see measure_count; deleting the
            // client namespace removes the rules as well.
            Programmed::None
        }
        Mode::Nftables => {
            let mut dp = NftablesProxy::in_netns(&client);
            point.program_ms = Some(program(&mut dp, svcs, timeout)?);
            point.update_ms = Some(update(&mut dp, svcs)?);
            Programmed::None
        }
    };
    check_stop()?;
    point.backends_seen = load::verify(&ns, &targets(point))?;
    Ok(guard)
}

fn targets(point: &Point) -> Targets {
    match point.mode {
        Mode::Direct => Targets::Direct {
            services: point.services,
        },
        _ => Targets::Vip {
            services: point.services,
        },
    }
}

/// One round of a point: latency, connection rate, kept-alive rate.
fn measure_round(
    lab: &Lab,
    k: usize,
    point: &mut Point,
    gathered: &mut Gathered,
    args: &RunArgs,
    duration: Duration,
) -> anyhow::Result<()> {
    lab.enter_cgroup(point.mode == Mode::Ebpf)?;
    let ns = lab.client_ns_path(k);
    let targets = targets(point);
    let mut lat = load::connect_latency(&ns, &targets, duration)?;
    point
        .round_p50_us
        .push(Latency::of(&mut lat.samples).p50_us);
    gathered.latency.append(&mut lat.samples);
    point.failures += lat.failures;
    let mut rate = load::connect_rate(&ns, &targets, duration, args.threads)?;
    point.round_conn_rates.push(rate.rate);
    gathered.loaded.append(&mut rate.samples);
    point.failures += rate.failures;
    let ka = load::keepalive_rate(&ns, &targets, duration, args.threads, args.keepalive_conns)?;
    point.round_keepalive_rates.push(ka.rate);
    point.failures += ka.failures;
    point.rounds += 1;
    Ok(())
}
