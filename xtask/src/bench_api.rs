//! `cargo xtask bench api`: the API server under load, measured against its own floor.
//!
//! Starts a release skiff-control on a temporary store and loopback port, then measures: the
//! floor (an unauthenticated GET /healthz over the same TLS connection pool), creates per second
//! and create latency for N pods, get and list latency with all N stored, delivery latency of
//! one change to W concurrent watchers, RSS idle-empty, right after the run and after an idle
//! minute, and the watches the API server serves, with the controllers and the scheduler
//! running in process under leader election as in production. Results go into
//! docs/benchmarks.md between the `bench:api` markers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::util;

/// Options of the API benchmark.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients during the create phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Concurrent watchers for the fan-out measurement.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Report to update.
    #[arg(long, default_value_os_t = util::root().join("docs/benchmarks.md"))]
    report: PathBuf,
    /// What to measure: `pods` (the control plane under a pod burst) or `crd` (custom
    /// resources against ConfigMaps of the same size, `--pods` objects of each).
    #[arg(long, value_enum, default_value_t = Kind::Pods)]
    kind: Kind,
}

/// The benchmark's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Pods with the controllers and scheduler running.
    Pods,
    /// Custom resources beside ConfigMaps.
    Crd,
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_server() -> anyhow::Result<Server> {
    start_server_with(&[])
}

/// Starts a release skiff-control on a fresh data dir and a free loopback port, with `extra`
/// flags.
pub(crate) fn start_server_with(extra: &[&str]) -> anyhow::Result<Server> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skiff-bench-api-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let child = Command::new(util::target_dir().join("release/skiff-control"))
        .arg("--data-dir")
        .arg(&dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Server {
        child,
        dir,
        url: format!("https://127.0.0.1:{port}"),
    })
}

pub(crate) fn client(dir: &Path, token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(dir.join("pki/ca.crt"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .default_headers(headers)
        .pool_max_idle_per_host(256)
        .build()?)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// Percentiles in milliseconds.
pub(crate) fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
            .as_secs_f64()
            * 1000.0
    };
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn pod(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {"containers": [{"name": "app", "image": "kubia:v1", "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// Sends a request; returns its latency (to the last body byte) and the body size.
pub(crate) async fn timed(req: reqwest::RequestBuilder) -> anyhow::Result<(Duration, usize)> {
    let start = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "request failed with {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((start.elapsed(), body.len()))
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    util::cargo(&["build", "--release", "-p", "skiff-control"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.kind == Kind::Crd {
        let report = rt.block_on(crate::bench_api_crd::measure(args.pods, args.concurrency))?;
        println!("{report}");
        crate::bench_api_crd::write_report(&args.report, &report)?;
        println!("wrote {}", args.report.display());
        return Ok(());
    }
    let mut report = rt.block_on(measure(&args))?;
    // Inside the markers, so the next run replaces it too.
    let overhead = rt.block_on(authorization_overhead(&args))?;
    report.push('\n');
    report.push_str(&overhead);
    println!("{report}");
    write_report(&args.report, &report)?;
    println!("wrote {}", args.report.display());
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<String> {
    let server = start_server()?;
    let pid = server.child.id();
    let public = started(&server).await?;
    let load_start = loadavg();
    let token = std::fs::read_to_string(server.dir.join("pki/admin.token"))?
        .trim()
        .to_owned();
    let api = client(&server.dir, Some(&token))?;
    let base = server.url.clone();
    // As in production: the controllers and the scheduler run in process once this instance
    // holds the leader Lease; measure only after they hold their watches.
    let watches_empty = wait_for_controllers(&api, &base).await?;
    let rss_empty = util::rss_kib(pid).unwrap_or(0);

    // Floor: the same client and connection, a request that does no API work.
    let mut floor = Vec::new();
    for _ in 0..2000 {
        floor.push(timed(public.get(format!("{base}/healthz"))).await?.0);
    }
    let floor = stats(&mut floor);

    timed(
        api.post(format!("{base}/api/v1/namespaces"))
            .json(&json!({"metadata": {"name": "bench"}})),
    )
    .await?;
    let pods_url = format!("{base}/api/v1/namespaces/bench/pods");
    // The measured requests come from a user whose rights are an RBAC binding (edit in the
    // namespace), not from the admin, whom authorization waves through.
    let admin = api;
    // Pod admission waits for the namespace's default ServiceAccount: not part of a create.
    let account = format!("{base}/api/v1/namespaces/bench/serviceaccounts/default");
    until_ok(&admin, &account, "the default ServiceAccount").await?;
    let api = rbac_user(&server, &admin, &pods_url).await?;

    // Creates, `concurrency` clients in parallel.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (api, url, next, tx, n) = (
            api.clone(),
            pods_url.clone(),
            next.clone(),
            tx.clone(),
            args.pods,
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let (d, _) = timed(api.post(&url).json(&pod(i))).await?;
                let _ = tx.send(d);
            }
        }));
    }
    drop(tx);
    for w in workers {
        w.await??;
    }
    let create_elapsed = started.elapsed();
    let mut creates = Vec::new();
    while let Some(d) = rx.recv().await {
        creates.push(d);
    }
    let create_rate = args.pods as f64 / create_elapsed.as_secs_f64();
    let creates = stats(&mut creates);

    // The reads and the watch fan-out are measured once the control plane has caught up with
    // the burst: every pod has the scheduler's PodScheduled=False condition. Measured during
    // the catch-up, they would time the 10 000 status writes (each delivered to every watcher)
    // as much as the operation itself, and vary with the race between the two.
    let settle = wait_for_scheduler(&api, &pods_url, args.pods).await?;

    // Sequential updates (a mutating call without concurrency).
    let mut updates = Vec::new();
    for i in 0..500 {
        let name = format!("bench-{:05}", (i * 7919) % args.pods);
        let patch = json!({"metadata": {"labels": {"touched": i.to_string()}}});
        updates.push(
            timed(
                api.patch(format!("{pods_url}/{name}"))
                    .header("content-type", "application/merge-patch+json")
                    .body(patch.to_string()),
            )
            .await?
            .0,
        );
    }
    let updates = stats(&mut updates);

    let mut gets = Vec::new();
    for i in 0..2000 {
        let name = format!("bench-{:05}", (i * 7919) % args.pods);
        gets.push(timed(api.get(format!("{pods_url}/{name}"))).await?.0);
    }
    let gets = stats(&mut gets);

    let mut lists = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..20 {
        let (d, len) = timed(api.get(&pods_url)).await?;
        list_bytes = len;
        lists.push(d);
    }
    let lists = stats(&mut lists);
    let mut tables = Vec::new();
    for _ in 0..10 {
        tables.push(
            timed(api.get(&pods_url).header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ))
            .await?
            .0,
        );
    }
    let tables = stats(&mut tables);
    let mut selected = Vec::new();
    for _ in 0..20 {
        selected.push(
            timed(api.get(format!("{pods_url}?labelSelector=shard%3D3")))
                .await?
                .0,
        );
    }
    let selected = stats(&mut selected);

    // Watch fan-out: W watchers, then changes one at a time; latency from the write's start
    // to each watcher's receipt of that event.
    let rv: String = api
        .get(&pods_url)
        .query(&[("limit", "1")])
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let (etx, mut erx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut watch_tasks = Vec::new();
    for _ in 0..args.watchers {
        // The response headers arrive after the server has registered the watch.
        let resp = api
            .get(format!(
                "{pods_url}?watch=true&resourceVersion={rv}&labelSelector=app%3Dbench"
            ))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "watch failed: {}",
            resp.status()
        );
        let etx = etx.clone();
        watch_tasks.push(tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                let now = Instant::now();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    // Only the resourceVersion is decoded, as a watching client that keeps
                    // its own cache of a few fields would: the figure is the server's.
                    if let Ok(e) = serde_json::from_slice::<WatchLine>(&line) {
                        let rv = e.object.metadata.resource_version;
                        if etx.send((rv, now)).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(etx);
    let mut fanout = Vec::new();
    for i in 0..20 {
        let patch = json!({"metadata": {"annotations": {"bench/change": i.to_string()}}});
        let start = Instant::now();
        let resp = api
            .patch(format!("{pods_url}/bench-00001"))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await?;
        let written: serde_json::Value = resp.json().await?;
        let rv = written["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut seen = 0;
        while seen < args.watchers {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), erx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended early"))?;
            if got == rv {
                fanout.push(at.duration_since(start));
                seen += 1;
            }
        }
    }
    for t in watch_tasks {
        t.abort();
    }
    let fanout = stats(&mut fanout);
    let rss_loaded = util::rss_kib(pid).unwrap_or(0);
    // Idle: what the process keeps once the controllers have caught up and the allocator has
    // had time to return what the burst used.
    tokio::time::sleep(IDLE).await;
    let rss_idle = util::rss_kib(pid).unwrap_or(0);
    let watches_loaded = watches(&admin, &base).await?;
    let load_end = loadavg();
    drop(server);

    let ms = |v: f64| format!("{v:.2}");
    let ratio = |v: f64| format!("{:.1}x", v / floor.p50);
    let target = |ok: bool| if ok { "met" } else { "missed" };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    Ok(format!(
        "## API server (`cargo xtask bench api`)\n\n\
Measured {date} on {cpus} CPUs, Linux {kernel}; release build, redb store on local disk (fsync per write), \
TLS over loopback, {pods} pods of ~{pod_bytes} bytes in one namespace, {conc} concurrent creators, {w} watchers.\n\n\
The floor is an unauthenticated `GET /healthz` on the same client and connections: TLS, HTTP and client \
overhead with no API work. Ratios are p50 against the floor's p50.\n\n\
| operation | p50 ms | p99 ms | max ms | p50 / floor |\n|---|---:|---:|---:|---:|\n\
| floor: GET /healthz | {f50} | {f99} | {fmax} | 1.0x |\n\
| create pod ({conc} concurrent) | {c50} | {c99} | {cmax} | {cr} |\n\
| patch pod (sequential) | {u50} | {u99} | {umax} | {ur} |\n\
| get pod | {g50} | {g99} | {gmax} | {gr} |\n\
| list {pods} pods (JSON, {list_mb:.1} MB) | {l50} | {l99} | {lmax} | {lr} |\n\
| list {pods} pods as Table (kubectl get) | {t50} | {t99} | {tmax} | {tr} |\n\
| list with labelSelector (1/10 match) | {s50} | {s99} | {smax} | {sr} |\n\
| one change delivered to {w} watchers | {w50} | {w99} | {wmax} | {wr} |\n\n\
| figure | value | first target | |\n|---|---:|---:|---|\n\
| creates per second | {rate:.0} | | |\n\
| scheduler caught up (PodScheduled=False on all {pods}) after the last create | {settle:.1} s | | |\n\
| p99 mutating (create, {conc} concurrent) | {c99} ms | < 5 ms | {t_create} |\n\
| p99 mutating (patch, sequential) | {u99} ms | < 10 ms | {t_patch} |\n\
| list of {pods} pods p99 | {l99} ms | < 300 ms | {t_list} |\n\
| one change delivered to {w} watchers p99 | {w99} ms | < 10 ms | {t_watch} |\n\
| RSS idle, empty store (controllers running) | {rss_e:.1} MB | < 40 MB | {t_rss} |\n\
| RSS right after the run, {pods} pods stored | {rss_l:.1} MB | | |\n\
| RSS after an idle minute, {pods} pods stored | {rss_i:.1} MB | <= 200 MB | {t_idle} |\n\
| API watches held (all kinds / pods), empty | {we_all} / {we_pods} | | |\n\
| API watches held (all kinds / pods), after the run | {wl_all} / {wl_pods} | | |\n\n\
The control plane ran as in production: API server, controllers and scheduler in one process, \
leader elected; no nodes, so every pod stays Pending and the scheduler reports it unschedulable. \
Load average (1 min) {load_start} at the start, {load_end} at the end.\n",
        date = chrono_like_now(),
        kernel = kernel.trim(),
        pods = args.pods,
        pod_bytes = serde_json::to_vec(&pod(0)).map(|v| v.len()).unwrap_or(0) + 500,
        conc = args.concurrency,
        w = args.watchers,
        f50 = ms(floor.p50), f99 = ms(floor.p99), fmax = ms(floor.max),
        c50 = ms(creates.p50), c99 = ms(creates.p99), cmax = ms(creates.max), cr = ratio(creates.p50),
        u50 = ms(updates.p50), u99 = ms(updates.p99), umax = ms(updates.max), ur = ratio(updates.p50),
        g50 = ms(gets.p50), g99 = ms(gets.p99), gmax = ms(gets.max), gr = ratio(gets.p50),
        l50 = ms(lists.p50), l99 = ms(lists.p99), lmax = ms(lists.max), lr = ratio(lists.p50),
        list_mb = list_bytes as f64 / 1e6,
        t50 = ms(tables.p50), t99 = ms(tables.p99), tmax = ms(tables.max), tr = ratio(tables.p50),
        s50 = ms(selected.p50), s99 = ms(selected.p99), smax = ms(selected.max), sr = ratio(selected.p50),
        w50 = ms(fanout.p50), w99 = ms(fanout.p99), wmax = ms(fanout.max), wr = ratio(fanout.p50),
        rate = create_rate,
        settle = settle.as_secs_f64(),
        t_create = target(creates.p99 < 5.0),
        t_watch = target(fanout.p99 < 10.0),
        t_patch = target(updates.p99 < 10.0),
        t_list = target(lists.p99 < 300.0),
        rss_e = rss_empty as f64 / 1024.0,
        rss_l = rss_loaded as f64 / 1024.0,
        t_rss = target((rss_empty as f64 / 1024.0) < 40.0),
        rss_i = rss_idle as f64 / 1024.0,
        t_idle = target((rss_idle as f64 / 1024.0) <= 200.0),
        we_all = watches_empty.0,
        we_pods = watches_empty.1,
        wl_all = watches_loaded.0,
        wl_pods = watches_loaded.1,
    ))
}

/// How long the server idles before the last RSS reading.
const IDLE: Duration = Duration::from_secs(60);

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until `server` answers `/healthz` over TLS; returns a client without credentials.
pub(crate) async fn started(server: &Server) -> anyhow::Result<reqwest::Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = client(&server.dir, None) {
            if c.get(format!("{}/healthz", server.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(c);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "skiff-control did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client for user `bench`, with a client certificate from the server's CA
/// (`skiff-control user`) and the `edit` ClusterRole in namespace `bench`; returns once the
/// binding is in force (a list of `pods_url` succeeds).
async fn rbac_user(
    server: &Server,
    admin: &reqwest::Client,
    pods_url: &str,
) -> anyhow::Result<reqwest::Client> {
    let kubeconfig = server.dir.join("bench.kubeconfig");
    let status = Command::new(util::target_dir().join("release/skiff-control"))
        .args(["user", "bench", "--data-dir"])
        .arg(&server.dir)
        .args(["--server", &server.url, "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "skiff-control user failed");
    let config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig)?)?;
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let b64 = config["users"][0]["user"][name]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{name} missing from {}", kubeconfig.display()))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    };
    let mut pem = field("client-certificate-data")?;
    pem.extend(field("client-key-data")?);
    let ca = std::fs::read(server.dir.join("pki/ca.crt"))?;
    let user = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .identity(reqwest::Identity::from_pem(&pem)?)
        .pool_max_idle_per_host(256)
        .build()?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bench-edit", "namespace": "bench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench"}],
    });
    let base = pods_url.split("/api/").next().unwrap_or_default();
    timed(
        admin
            .post(format!(
                "{base}/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings"
            ))
            .json(&binding),
    )
    .await?;
    until_ok(&user, pods_url, "the bench user's binding").await?;
    Ok(user)
}

/// One measured client of [`authorization_overhead`]: who it is, where its pods go, and what
/// it measured.
struct Lane {
    name: &'static str,
    client: reqwest::Client,
    pods_url: String,
    created: usize,
    samples: [Vec<Duration>; 3],
}

impl Lane {
    /// One round: `chunk` creates by `concurrency` clients, then gets of pods created so far,
    /// then lists of the namespace.
    async fn round(
        &mut self,
        chunk: usize,
        concurrency: usize,
        gets: usize,
        lists: usize,
    ) -> anyhow::Result<()> {
        let first = self.created;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(first));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (user, url, next) = (self.client.clone(), self.pods_url.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= first + chunk {
                        return anyhow::Ok(latencies);
                    }
                    latencies.push(timed(user.post(&url).json(&pod(i))).await?.0);
                }
            }));
        }
        for w in workers {
            self.samples[0].extend(w.await??);
        }
        self.created += chunk;
        for i in 0..gets {
            let name = format!("bench-{:05}", (i * 7919) % self.created);
            let url = format!("{}/{name}", self.pods_url);
            self.samples[1].push(timed(self.client.get(url)).await?.0);
        }
        for _ in 0..lists {
            self.samples[2].push(timed(self.client.get(&self.pods_url)).await?.0);
        }
        Ok(())
    }
}

/// A fresh server under `--authorization-mode MODE` whose controllers run, with namespace `ns`
/// created and its `default` ServiceAccount in place (pod admission waits for it otherwise);
/// returns the server and an admin client.
async fn authorization_server(
    mode: &str,
    namespaces: &[&str],
) -> anyhow::Result<(Server, reqwest::Client)> {
    let server = start_server_with(&["--authorization-mode", mode])?;
    started(&server).await?;
    let base = server.url.clone();
    let token = std::fs::read_to_string(server.dir.join("pki/admin.token"))?;
    let admin = client(&server.dir, Some(token.trim()))?;
    wait_for_controllers(&admin, &base).await?;
    for ns in namespaces {
        timed(
            admin
                .post(format!("{base}/api/v1/namespaces"))
                .json(&json!({"metadata": {"name": ns}})),
        )
        .await?;
        let url = format!("{base}/api/v1/namespaces/{ns}/serviceaccounts/default");
        until_ok(&admin, &url, "the default ServiceAccount").await?;
    }
    Ok((server, admin))
}

/// Polls `url` with `client` until it answers 2xx (10 s at most).
pub(crate) async fn until_ok(
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let resp = client.get(url).query(&[("limit", "1")]).send().await?;
        if resp.status().is_success() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not appear: {}",
            resp.status()
        );
    }
}

/// A client holding a TokenRequest token of ServiceAccount `bench` in `ns`, which is bound to
/// `edit` there; returns once the binding is in force.
async fn service_account_user(
    server: &Server,
    admin: &reqwest::Client,
    ns: &str,
) -> anyhow::Result<reqwest::Client> {
    let base = &server.url;
    timed(
        admin
            .post(format!("{base}/api/v1/namespaces/{ns}/serviceaccounts"))
            .json(&json!({"metadata": {"name": "bench"}})),
    )
    .await?;
    timed(
        admin
            .post(format!(
                "{base}/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"
            ))
            .json(&json!({
                "metadata": {"name": "bench-edit"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "ServiceAccount", "name": "bench", "namespace": ns}],
            })),
    )
    .await?;
    let resp = admin
        .post(format!(
            "{base}/api/v1/namespaces/{ns}/serviceaccounts/bench/token"
        ))
        .json(&json!({"spec": {"expirationSeconds": 3600}}))
        .send()
        .await?
        .error_for_status()?;
    let review: serde_json::Value = resp.json().await?;
    let token = review["status"]["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("TokenRequest answered without a token: {review}"))?;
    let user = client(&server.dir, Some(token))?;
    until_ok(
        &user,
        &format!("{base}/api/v1/namespaces/{ns}/pods"),
        "the ServiceAccount's binding",
    )
    .await?;
    Ok(user)
}

/// The authorization overhead: the same operations by a user bound to `edit` under RBAC and
/// under AlwaysAllow (two servers side by side), plus a ServiceAccount token under RBAC, in
/// interleaved rounds so that the machine's drift falls on every lane alike; a Markdown table.
async fn authorization_overhead(args: &Args) -> anyhow::Result<String> {
    const ROUNDS: usize = 10;
    let pods = (args.pods / 5).max(ROUNDS * args.concurrency);
    let chunk = pods / ROUNDS;
    let (rbac, rbac_admin) = authorization_server("RBAC", &["bench", "bench-sa"]).await?;
    let (allow, allow_admin) = authorization_server("AlwaysAllow", &["bench"]).await?;
    let lane = |name, client, server: &Server, ns: &str| Lane {
        name,
        client,
        pods_url: format!("{}/api/v1/namespaces/{ns}/pods", server.url),
        created: 0,
        samples: Default::default(),
    };
    let rbac_pods = format!("{}/api/v1/namespaces/bench/pods", rbac.url);
    let allow_pods = format!("{}/api/v1/namespaces/bench/pods", allow.url);
    let mut lanes = [
        lane(
            "AlwaysAllow, client certificate",
            rbac_user(&allow, &allow_admin, &allow_pods).await?,
            &allow,
            "bench",
        ),
        lane(
            "RBAC, client certificate",
            rbac_user(&rbac, &rbac_admin, &rbac_pods).await?,
            &rbac,
            "bench",
        ),
        lane(
            "RBAC, ServiceAccount token",
            service_account_user(&rbac, &rbac_admin, "bench-sa").await?,
            &rbac,
            "bench-sa",
        ),
    ];
    for round in 0..ROUNDS {
        // Each lane goes first in turn.
        for k in 0..lanes.len() {
            let at = (round + k) % lanes.len();
            lanes[at]
                .round(chunk, args.concurrency, 2000 / ROUNDS, 50 / ROUNDS)
                .await?;
        }
    }
    let results: Vec<(&str, [Stats; 3])> = lanes
        .iter_mut()
        .map(|l| {
            let [c, g, li] = &mut l.samples;
            (l.name, [stats(c), stats(g), stats(li)])
        })
        .collect();
    let baseline = results[0].1;
    let mut table = format!(
        "Authorization overhead ({pods} pods per lane, {conc} concurrent creators; a user bound \
         to `edit` in its namespace; AlwaysAllow and RBAC on two fresh servers side by side, \
         measured in {ROUNDS} interleaved rounds; lists return the pods created so far; p99 \
         against the AlwaysAllow lane):\n\n\
         | lane | create p50 ms | create p99 ms | get p50 ms | get p99 ms | list p50 ms | list p99 ms | create p99 | get p99 | list p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        conc = args.concurrency
    );
    for (name, [c, g, l]) in &results {
        table.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:+.1}% | {:+.1}% | {:+.1}% |\n",
            c.p50,
            c.p99,
            g.p50,
            g.p99,
            l.p50,
            l.p99,
            (c.p99 / baseline[0].p99 - 1.0) * 100.0,
            (g.p99 / baseline[1].p99 - 1.0) * 100.0,
            (l.p99 / baseline[2].p99 - 1.0) * 100.0,
        ));
    }
    Ok(table)
}

/// What the watch fan-out reads of an event line.
#[derive(serde::Deserialize)]
struct WatchLine {
    object: WatchObject,
}

#[derive(serde::Deserialize)]
struct WatchObject {
    metadata: WatchMeta,
}

#[derive(serde::Deserialize)]
struct WatchMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

/// Waits until all `pods` pods carry the scheduler's `PodScheduled=False` condition, and
/// returns how long that took.
async fn wait_for_scheduler(
    api: &reqwest::Client,
    pods_url: &str,
    pods: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    loop {
        interval.tick().await;
        let body = api.get(pods_url).send().await?.bytes().await?;
        let needle = br#""reason":"Unschedulable""#;
        let decided = body.windows(needle.len()).filter(|w| w == needle).count();
        if decided >= pods {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the scheduler decided {decided} of {pods} pods in 5 minutes"
        );
    }
}

/// The watches the API server serves (all, pods) from its `/metrics`.
async fn watches(api: &reqwest::Client, base: &str) -> anyhow::Result<(usize, usize)> {
    let text = api
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let (mut all, mut pods) = (0, 0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests{"))
    {
        let n: usize = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        all += n;
        if line.contains("resource=\"pods\"") {
            pods += n;
        }
    }
    Ok((all, pods))
}

/// Waits until the controllers lead and watch (the count stops growing), returning the count.
async fn wait_for_controllers(api: &reqwest::Client, base: &str) -> anyhow::Result<(usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let lease =
        format!("{base}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-control");
    loop {
        let held = match api.get(&lease).send().await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await?["spec"]
                ["holderIdentity"]
                .as_str()
                .is_some_and(|h| !h.is_empty()),
            _ => false,
        };
        if held {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no controller became leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = watches(api, base).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = watches(api, base).await?;
        if now == last && now.1 > 0 {
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the controllers did not start watching"
        );
        last = now;
    }
}

pub(crate) fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

const START: &str = "<!-- bench:api:start -->";
const END: &str = "<!-- bench:api:end -->";

/// Replaces the API section of the report (or appends it).
fn write_report(path: &Path, section: &str) -> anyhow::Result<()> {
    write_section(path, START, END, section)
}

/// Replaces what is between the `start` and `end` markers of the report (or appends it).
pub(crate) fn write_section(
    path: &Path,
    start: &str,
    end: &str,
    section: &str,
) -> anyhow::Result<()> {
    let existing =
        std::fs::read_to_string(path).unwrap_or_else(|_| "# skiff benchmarks\n\n".into());
    let block = format!("{start}\n{section}{end}");
    let updated = match (existing.find(start), existing.find(end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{block}{}", &existing[..s], &existing[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", existing.trim_end()),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, updated)?;
    Ok(())
}
