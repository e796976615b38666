//! `cargo xtask bench scheduler`: how many pods per second the scheduler binds, end to end.
//!
//! Starts a release skiff-control (API server with the scheduler in process) on a temporary
//! store, registers 100 fake Ready Nodes, then creates N pods with 16 concurrent clients while
//! a watch records when each pod is first seen with a node. The figure is N divided by the time
//! from the first create to the last binding seen on the watch: creation, scheduling, binding
//! and watch delivery together, on one machine. Also reported: the create rate alone (the
//! ceiling end-to-end throughput cannot pass) and the latency from a pod's create response to
//! its binding being seen. Writes docs/bench/scheduler.md and the `bench:scheduler` section of
//! docs/benchmarks.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::bench_api::{chrono_like_now, client, start_server_with, stats};
use crate::util;

/// Options of the scheduler benchmark.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Fake Nodes to register.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pods to schedule.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Concurrent pod creators.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Summary to update.
    #[arg(long, default_value_os_t = util::root().join("docs/benchmarks.md"))]
    report: PathBuf,
    /// Full report.
    #[arg(long, default_value_os_t = util::root().join("docs/bench/scheduler.md"))]
    detail: PathBuf,
}

fn node(i: usize) -> Value {
    let name = format!("bench-node-{i:03}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": format!("z{}", i % 3)}},
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(i: usize, owners: &[String]) -> Value {
    // Replicas of ten owners, so the spreading score has work to do. The owners are ConfigMaps:
    // real objects (so a garbage collector leaves the pods alone) that no workload controller
    // acts on.
    let owner = i % owners.len();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": format!("app{owner}")},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": format!("owner-{owner}"),
                "uid": owners[owner], "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "kubia:v1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pods <= args.nodes * 110,
        "{} pods do not fit on {} nodes of 110 pods",
        args.pods,
        args.nodes
    );
    util::cargo(&["build", "--release", "-p", "skiff-control"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (summary, detail) = rt.block_on(measure(&args))?;
    println!("{summary}");
    write_section(&args.report, &summary)?;
    if let Some(parent) = args.detail.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.detail, detail)?;
    println!(
        "wrote {} and {}",
        args.report.display(),
        args.detail.display()
    );
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<(String, String)> {
    // The fake Nodes have no agent renewing Leases: keep the node lifecycle controller from
    // tainting them during the run.
    let server = start_server_with(&["--node-monitor-grace-period", "1h"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = client(&server.dir, None) {
            if c.get(format!("{}/healthz", server.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "skiff-control did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(server.dir.join("pki/admin.token"))?
        .trim()
        .to_owned();
    let api = client(&server.dir, Some(&token))?;
    let base = server.url.clone();
    let post = |url: String, body: Value| {
        let api = api.clone();
        async move {
            let resp = api.post(&url).json(&body).send().await?;
            let status = resp.status();
            let text = resp.text().await?;
            anyhow::ensure!(status.is_success(), "POST {url}: {status} {text}");
            anyhow::Ok(())
        }
    };
    for i in 0..args.nodes {
        post(format!("{base}/api/v1/nodes"), node(i)).await?;
    }
    post(
        format!("{base}/api/v1/namespaces"),
        json!({"metadata": {"name": "bench"}}),
    )
    .await?;
    let pods_url = format!("{base}/api/v1/namespaces/bench/pods");
    let mut owners = Vec::new();
    for o in 0..10 {
        let resp = api
            .post(format!("{base}/api/v1/namespaces/bench/configmaps"))
            .json(&json!({"metadata": {"name": format!("owner-{o}")}}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "creating an owner: {}",
            resp.status()
        );
        let cm: Value = resp.json().await?;
        owners.push(
            cm["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let owners = Arc::new(owners);

    // Watch bindings from now on.
    let rv = api.get(&pods_url).send().await?.json::<Value>().await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let resp = api
        .get(format!("{pods_url}?watch=true&resourceVersion={rv}"))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "watch failed: {}",
        resp.status()
    );
    let (btx, mut brx) = mpsc::unbounded_channel::<(String, String, Instant)>();
    let watch = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let (Some(name), Some(node)) = (
                    v["object"]["metadata"]["name"].as_str(),
                    v["object"]["spec"]["nodeName"].as_str(),
                ) {
                    if btx.send((name.to_owned(), node.to_owned(), now)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let (ctx, mut crx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (api, url, next, ctx, n, owners) = (
            api.clone(),
            pods_url.clone(),
            next.clone(),
            ctx.clone(),
            args.pods,
            owners.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let resp = api.post(&url).json(&pod(i, &owners)).send().await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "create failed with {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                let _ = ctx.send((format!("bench-{i:05}"), Instant::now()));
            }
        }));
    }
    drop(ctx);
    for w in workers {
        w.await??;
    }
    let created_in = started.elapsed();
    let mut created = HashMap::new();
    while let Some((name, at)) = crx.recv().await {
        created.insert(name, at);
    }

    let mut bound: HashMap<String, (String, Instant)> = HashMap::new();
    let limit = Instant::now() + Duration::from_secs(120);
    while bound.len() < args.pods {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok(Some((name, node, at))) = tokio::time::timeout(left, brx.recv()).await else {
            anyhow::bail!(
                "only {} of {} pods were bound within 120 s",
                bound.len(),
                args.pods
            );
        };
        bound.entry(name).or_insert((node, at));
    }
    watch.abort();
    let last = bound.values().map(|(_, t)| *t).max().unwrap_or(started);
    let total = last.duration_since(started);
    let mut lags: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, (_, at))| Some(at.saturating_duration_since(*created.get(name)?)))
        .collect();
    let lag = stats(&mut lags);
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for (node, _) in bound.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let (min, max) = (
        per_node.values().min().copied().unwrap_or(0),
        per_node.values().max().copied().unwrap_or(0),
    );
    drop(server);

    let rate = args.pods as f64 / total.as_secs_f64();
    let create_rate = args.pods as f64 / created_in.as_secs_f64();
    let met = if rate >= 1000.0 { "met" } else { "missed" };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = chrono_like_now();
    let summary = format!(
        "## Scheduler (`cargo xtask bench scheduler`)\n\n\
Measured {date} on {cpus} CPUs, Linux {kernel}; release build, scheduler in process with the API \
server (redb, fsync per write), {nodes} fake Nodes, {pods} pods with CPU/memory requests from \
{conc} concurrent creators. Details: [bench/scheduler.md](bench/scheduler.md).\n\n\
| figure | value | target | |\n|---|---:|---:|---|\n\
| pods bound per second, end to end | {rate:.0} | >= 1000 | {met} |\n\
| pods created per second (ceiling) | {create_rate:.0} | | |\n\
| create response to binding seen, p50 / p99 | {l50:.1} / {l99:.1} ms | | |\n",
        kernel = kernel.trim(),
        nodes = args.nodes,
        pods = args.pods,
        conc = args.concurrency,
        l50 = lag.p50,
        l99 = lag.p99,
    );
    let detail = format!(
        "# Scheduler benchmark\n\n\
Written by `cargo xtask bench scheduler` (options: `--nodes`, `--pods`, `--concurrency`); \
re-run it to refresh.\n\n\
Measured {date} on {cpus} CPUs, Linux {kernel}.\n\n\
## Setup\n\n\
- A release `skiff-control` on a fresh store, on loopback; the scheduler runs in it as in \
production, talking to the API server over HTTPS like any client.\n\
- {nodes} Nodes registered through the API (64 CPUs, 256 GiB, 110 pods, Ready), no agents.\n\
- {pods} pods, each requesting 100m CPU and 64 MiB, as replicas of ten owners (ConfigMaps, controller references) \
(spreading score active), created by {conc} concurrent clients.\n\
- A watch on the pods records when each pod is first seen with `spec.nodeName`.\n\n\
## Results\n\n\
| figure | value |\n|---|---:|\n\
| first create to last binding seen | {total:.2} s |\n\
| pods bound per second, end to end | {rate:.0} |\n\
| creating all pods took | {created:.2} s ({create_rate:.0} pods/s) |\n\
| create response to binding seen, p50 | {l50:.1} ms |\n\
| create response to binding seen, p99 | {l99:.1} ms |\n\
| create response to binding seen, max | {lmax:.1} ms |\n\
| pods per node, min / max | {min} / {max} |\n\n\
## How to read it\n\n\
- End-to-end throughput cannot exceed the create rate: the scheduler binds pods as they \
arrive, so when the two are close the scheduler keeps up and the API server's write path is \
the limit. The lag figures show how far behind creation binding runs.\n\
- Bindings go out up to 64 at a time while decisions are made one by one on the scheduler's \
own cache (pods are *assumed* on their node at once), so a decision never waits for a write.\n\
- Every binding also writes a `Scheduled` Event, which shares the API server's write path.\n\
- kube-scheduler's published figures are ~100-300 pods/s on much larger clusters; this is \
not a like-for-like comparison (100 nodes, one machine, no preemption or volume plugins).\n",
        kernel = kernel.trim(),
        nodes = args.nodes,
        pods = args.pods,
        conc = args.concurrency,
        total = total.as_secs_f64(),
        created = created_in.as_secs_f64(),
        l50 = lag.p50,
        l99 = lag.p99,
        lmax = lag.max,
    );
    Ok((summary, detail))
}

const START: &str = "<!-- bench:scheduler:start -->";
const END: &str = "<!-- bench:scheduler:end -->";

/// Replaces the scheduler section of the summary (or appends it).
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let existing =
        std::fs::read_to_string(path).unwrap_or_else(|_| "# skiff benchmarks\n\n".into());
    let block = format!("{START}\n{section}{END}");
    let updated = match (existing.find(START), existing.find(END)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{block}{}", &existing[..s], &existing[e + END.len()..])
        }
        _ => format!("{}\n\n{block}\n", existing.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}
