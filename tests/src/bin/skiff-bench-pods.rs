//! `skiff-bench-pods`: pod startup latency and container churn, run by `cargo xtask bench pods`.
//!
//! 1. Container create+start+delete with the runtime library (libcontainer in the shim), in a
//!    sandbox of its own, with the runtime state on tmpfs (/run) and on the disk.
//! 2. Pod startup on a one-node local cluster (`skiff_e2e::cluster`, release binaries): for N
//!    pods with a local image, the time from the create request to the pod seen Running (all
//!    containers started) through a watch, created one after the other and then all at once.
//! 3. Port-forward throughput on the same cluster: MB/s of one TCP stream from a server in a
//!    pod, read through `kubectl port-forward` (SPDY through the API server and the agent into
//!    the pod's network namespace) and, as the baseline, straight from the pod's IP inside its
//!    node's network namespace; the best of a few rounds of each, in the same run.
//!
//! Prints JSON with the raw figures on stdout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skiff_agent::runtime::{ContainerSpec, ImageConfig, Runtime};
use skiff_e2e::cluster::{Guard, Options};

#[derive(Debug, Parser)]
struct Args {
    /// Pods per startup measurement.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Rounds of create+start+delete.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// skiff-control binary.
    #[arg(long)]
    control_bin: PathBuf,
    /// skiff-agent binary.
    #[arg(long)]
    agent_bin: PathBuf,
    /// The sample images (target/images).
    #[arg(long)]
    images: PathBuf,
    /// kubectl, for the port-forward measurement.
    #[arg(long)]
    kubectl: PathBuf,
    /// MiB per port-forward throughput round.
    #[arg(long, default_value_t = 512)]
    forward_mib: usize,
    /// The local cluster's index (its node network 172.31.<index>.0/24).
    #[arg(long, default_value_t = 240)]
    cluster_index: u8,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p90 of create+start+delete with the runtime's state under `root`.
fn churn(root: &Path, args: &Args) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(root)?;
    let store = skiff_agent::images::ImageStore::open(root.join("images"))?;
    store.import_dir(&args.images)?;
    let image = store.resolve("busybox")?;
    let runtime = Runtime::with_binary(root.join("runtime"), &args.agent_bin)?;
    let uid = format!("bench-{}", std::process::id());
    let sandbox = runtime.create_sandbox(&uid, "bench")?;
    let k8s = Container {
        name: "bench".into(),
        command: Some(vec!["sh".into(), "-c".into(), "exec sleep 1000".into()]),
        ..Container::default()
    };
    let spec = ContainerSpec::from_kubernetes(&k8s, &ImageConfig::default(), image.layers.clone())?;
    let mut totals = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..args.rounds {
            let t0 = Instant::now();
            let c = runtime.create_container(&sandbox, &spec)?;
            runtime.start(&c)?;
            runtime.delete_container(&c)?;
            totals.push(t0.elapsed());
        }
        Ok(())
    })();
    let _ = runtime.remove_sandbox(&sandbox);
    result?;
    totals.sort();
    Ok(json!({
        "root": root.display().to_string(),
        "rounds": totals.len(),
        "median_ms": ms(percentile(&totals, 0.5)),
        "p90_ms": ms(percentile(&totals, 0.9)),
    }))
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "kubia", "image": "kubia:v1", "imagePullPolicy": "Never"}],
        },
    }))
    .expect("a valid pod")
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Creates `names` (all at once when `burst`, else one after the other) and returns each pod's
/// create-to-Running latency.
async fn startup(api: &Api<Pod>, names: &[String], burst: bool) -> anyhow::Result<Vec<Duration>> {
    let mut stream = watcher::watcher(
        api.clone(),
        watcher::Config::default().labels("bench=startup"),
    )
    .boxed();
    // Wait for the watch to be established before creating anything.
    loop {
        match stream.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("watch ended"),
        }
    }
    let mut started: std::collections::HashMap<String, Instant> = Default::default();
    let mut latencies = Vec::new();
    let mut pending: Vec<String> = names.to_vec();
    let deadline = Instant::now() + Duration::from_secs(300);
    let create_next = |started: &mut std::collections::HashMap<String, Instant>, name: String| {
        let api = api.clone();
        started.insert(name.clone(), Instant::now());
        async move {
            api.create(&PostParams::default(), &pod(&name))
                .await
                .map(drop)
        }
    };
    if burst {
        let creates: Vec<_> = pending
            .drain(..)
            .map(|n| create_next(&mut started, n))
            .collect();
        for r in futures::future::join_all(creates).await {
            r?;
        }
    } else {
        let first = pending.remove(0);
        create_next(&mut started, first).await?;
    }
    let mut done = std::collections::HashSet::new();
    while done.len() < names.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods did not all start within 300 s"
        );
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no pod event for 60 s"))?;
        let Some(event) = event else {
            anyhow::bail!("watch ended")
        };
        if let watcher::Event::Apply(p) = event? {
            let name = p.metadata.name.clone().unwrap_or_default();
            if running(&p) && !done.contains(&name) {
                if let Some(t0) = started.get(&name) {
                    latencies.push(t0.elapsed());
                    done.insert(name);
                    if !pending.is_empty() {
                        let next = pending.remove(0);
                        create_next(&mut started, next).await?;
                    }
                }
            }
        }
    }
    Ok(latencies)
}

/// The port the throughput source listens on in its pod.
const SOURCE_PORT: u16 = 9000;
/// Rounds of each throughput measurement (the best counts: the machine is shared).
const THROUGHPUT_ROUNDS: usize = 3;

/// Reads `stream` to its end, returning the bytes read and MB/s.
fn drain(mut stream: std::net::TcpStream) -> anyhow::Result<(usize, f64)> {
    use std::io::Read as _;
    let mut buf = vec![0u8; 256 << 10];
    let (mut total, t0) = (0usize, Instant::now());
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => total += n,
        }
    }
    Ok((total, total as f64 / 1e6 / t0.elapsed().as_secs_f64()))
}

/// One stream read from `ip:port` by a thread inside the network namespace `netns`.
fn direct_round(netns: &str, ip: std::net::IpAddr, port: u16) -> anyhow::Result<(usize, f64)> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this short-lived thread enters the namespace.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let stream = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(ip, port),
                Duration::from_secs(10),
            )?;
            drain(stream)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the direct reader panicked"))?
    })
}

/// One stream read through `kubectl port-forward pod/NAME :PORT`.
fn forward_round(
    kubectl: &Path,
    kubeconfig: &Path,
    pod: &str,
    port: u16,
) -> anyhow::Result<(usize, f64)> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(kubectl)
        .args(["port-forward", "--address", "127.0.0.1"])
        .arg(format!("pod/{pod}"))
        .arg(format!(":{port}"))
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let result = (|| {
        let stdout = child.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:41234 -> 9000"
        let local: u16 = loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow::anyhow!("kubectl port-forward ended"))??;
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break rest.split(' ').next().unwrap_or_default().parse()?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        drain(std::net::TcpStream::connect(("127.0.0.1", local))?)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// MB/s of one TCP stream through `kubectl port-forward` against a direct connection.
async fn forward_throughput(
    api: &Api<Pod>,
    state: &skiff_e2e::cluster::State,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    let bytes = args.forward_mib << 20;
    // Each connection gets `bytes` zeros in 1 MiB writes, then the end of the stream (busybox
    // `head -c` copies in small pieces and would be the bottleneck, at about 90 MB/s).
    let source: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pf-source"},
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "source", "image": "busybox", "imagePullPolicy": "Never",
                "command": ["sh", "-c",
                    format!("exec nc -ll -p {SOURCE_PORT} -e dd if=/dev/zero bs=1048576 count={}",
                        args.forward_mib)]}],
        },
    }))?;
    api.create(&PostParams::default(), &source).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ip: std::net::IpAddr = loop {
        let p = api.get("pf-source").await?;
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        if let (true, Some(ip)) = (running(&p), ip) {
            break ip.parse()?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pf-source did not start in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let netns = state.nodes[0].netns.clone();
    // nc listens a moment after the container starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while direct_round(&netns, ip, SOURCE_PORT).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "pf-source does not listen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (kubectl, kubeconfig) = (args.kubectl.clone(), state.kubeconfig.clone());
    let (direct, forwarded) = tokio::task::spawn_blocking(move || {
        let mut direct = Vec::new();
        let mut forwarded = Vec::new();
        // Interleaved, so that a noisy moment hits both.
        for _ in 0..THROUGHPUT_ROUNDS {
            let (n, mbps) = direct_round(&netns, ip, SOURCE_PORT)?;
            anyhow::ensure!(n == bytes, "direct: {n} of {bytes} bytes");
            direct.push(mbps);
            let (n, mbps) = forward_round(&kubectl, &kubeconfig, "pf-source", SOURCE_PORT)?;
            anyhow::ensure!(n == bytes, "port-forward: {n} of {bytes} bytes");
            forwarded.push(mbps);
        }
        anyhow::Ok((direct, forwarded))
    })
    .await??;
    api.delete("pf-source", &DeleteParams::default()).await?;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    eprintln!("port-forward: {forwarded:?} MB/s, direct: {direct:?} MB/s");
    Ok(json!({
        "bytes": bytes,
        "rounds": THROUGHPUT_ROUNDS,
        "port_forward_mbps": best(&forwarded),
        "direct_mbps": best(&direct),
        "ratio": best(&forwarded) / best(&direct),
        "all_port_forward_mbps": forwarded,
        "all_direct_mbps": direct,
    }))
}

async fn delete_all(api: &Api<Pod>) -> anyhow::Result<()> {
    api.delete_collection(
        &DeleteParams::default(),
        &kube::api::ListParams::default().labels("bench=startup"),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = api
            .list(&kube::api::ListParams::default().labels("bench=startup"))
            .await?;
        if left.items.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} pods were not deleted in 120 s",
            left.items.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn summary(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    json!({
        "pods": v.len(),
        "p50_ms": ms(percentile(&v, 0.5)),
        "p90_ms": ms(percentile(&v, 0.9)),
        "p99_ms": ms(percentile(&v, 0.99)),
        "max_ms": ms(v.last().copied().unwrap_or_default()),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmpfs = PathBuf::from(format!("/run/skiff-bench-pods-{}", std::process::id()));
    let disk = tempfile::tempdir()?;
    let churn_tmpfs = churn(&tmpfs, &args);
    let _ = std::fs::remove_dir_all(&tmpfs);
    let churn_disk = churn(disk.path(), &args);
    let churn_tmpfs = churn_tmpfs?;
    let churn_disk = churn_disk?;
    eprintln!("create+start+delete: tmpfs {churn_tmpfs}, disk {churn_disk}");

    let guard = Guard::up(&Options {
        name: "bpods".into(),
        index: args.cluster_index,
        nodes: 1,
        dir: PathBuf::new(),
        control_bin: args.control_bin.clone(),
        agent_bin: args.agent_bin.clone(),
        images: Some(args.images.clone()),
        proxy_mode: "none".into(),
        registry_config: None,
        agent_args: vec![],
        control_args: vec![],
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&guard.state.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let api: Api<Pod> = Api::namespaced(client, "default");
        let names = |prefix: &str| -> Vec<String> {
            (0..args.pods).map(|i| format!("{prefix}-{i}")).collect()
        };
        let sequential = startup(&api, &names("seq"), false).await?;
        delete_all(&api).await?;
        let burst = startup(&api, &names("burst"), true).await?;
        delete_all(&api).await?;
        let forward = forward_throughput(&api, &guard.state, &args).await?;
        anyhow::Ok((summary(sequential), summary(burst), forward))
    });
    drop(guard);
    let (sequential, burst, forward) = result?;
    let out = json!({
        "create_start_delete": {"tmpfs": churn_tmpfs, "disk": churn_disk},
        "startup": {"sequential": sequential, "burst": burst},
        "port_forward": forward,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
