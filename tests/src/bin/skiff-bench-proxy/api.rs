//! API-to-datapath latency: how long an EndpointSlice change takes from the API write to the
//! eBPF maps.
//!
//! skiff-control and skiff-agent (`--proxy-mode ebpf`, attached to the benchmark's cgroup, its
//! own pin directory) run in the client namespace. A selector-less Service with an
//! EndpointSlice of ten endpoints is created; then the slice alternates between nine and ten
//! endpoints. Each change is timed from the moment the PATCH is sent (the API's answer can
//! arrive after the agent already acted on the watch event, so the answer is no start mark) to
//! the moment the Service's entry in the pinned `lb4_services` map shows the new backend count
//! (slot 0 is written last, after the backend slots, so that is when new connections use it).
//! The map is polled every 0.2 ms with one lookup.
//!
//! Two series: *isolated* changes, each written 50 ms after the previous one was seen (a
//! change in a quiet cluster), and *back-to-back* changes, each written as soon as the previous
//! one was seen: the agent syncs at most once per 2 ms in eBPF mode (its bounded-frequency
//! runner), which that series shows.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use skiff_ebpf_common::{maps, ServiceKey, ServiceValue, PROTO_TCP};

use crate::lab::Lab;
use crate::{backend_ip, check_stop, Latency, BACKENDS, BACKEND_PORT, SERVICE_PORT};

/// The Service's ClusterIP (outside the range the datapath points use).
const CLUSTER_IP: [u8; 4] = [10, 96, 255, 1];
/// Pause between isolated changes: longer than the agent's minimum sync interval (2 ms in
/// eBPF mode, 20 ms in the rule modes).
const SPACING: Duration = Duration::from_millis(50);
/// Poll interval of the pinned map.
const POLL: Duration = Duration::from_micros(200);
/// A change not seen after this long fails the measurement.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API-to-datapath measurement found.
#[derive(Debug, Serialize)]
pub struct ApiResult {
    /// Changes per series.
    pub changes: usize,
    /// Pause between isolated changes, ms.
    pub spacing_ms: f64,
    /// PATCH sent → visible in the map, isolated changes.
    pub isolated: Latency,
    /// PATCH sent → visible in the map, back-to-back changes.
    pub back_to_back: Latency,
    /// Duration of the API writes themselves (PATCH of the EndpointSlice).
    pub write: Latency,
    /// Service create to resolvable by the node's DNS responder (None: not measured).
    pub dns: Option<crate::dns::DnsResult>,
    /// Why the DNS measurement failed, if it did.
    pub dns_error: Option<String>,
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// EndpointSlice changes per series.
    pub changes: usize,
    /// Services created before the DNS measurement.
    pub dns_background: usize,
    /// Measured Service creates for DNS (0 skips it).
    pub dns_creates: usize,
}

fn slice_endpoints(n: u8) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = (1..=n)
        .map(|b| json!({"addresses": [backend_ip(b).to_string()], "conditions": {"ready": true}}))
        .collect();
    json!(eps)
}

/// Runs the measurement; the processes it starts are stopped before it returns.
pub fn measure(
    lab: &mut Lab,
    control_bin: &Path,
    agent_bin: &Path,
    plan: Plan,
) -> anyhow::Result<ApiResult> {
    lab.fresh_clients(1)?;
    let dir = tempfile::Builder::new()
        .prefix("skb-api-")
        .tempdir()
        .context("creating a temporary directory")?;
    let result = run(lab, dir.path(), control_bin, agent_bin, plan);
    lab.stop_children();
    if let Err(e) = skiff_agent::proxy::ebpf::cleanup(&lab.api_pin_dir) {
        eprintln!("bench: removing the agent's eBPF state: {e}");
    }
    result.map_err(|e| {
        let tail = |name: &str| {
            let log = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        e.context(format!(
            "skiff-control log (end):\n{}\nskiff-agent log (end):\n{}",
            tail("control.log"),
            tail("agent.log")
        ))
    })
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(dir.join(name))?;
    Ok((f.try_clone()?.into(), f.into()))
}

fn run(
    lab: &mut Lab,
    dir: &Path,
    control_bin: &Path,
    agent_bin: &Path,
    plan: Plan,
) -> anyhow::Result<ApiResult> {
    let netns = format!("--net={}", lab.client_ns_path(0).display());
    let kubeconfig = dir.join("admin.kubeconfig");
    let (out, err) = log_file(dir, "control.log")?;
    let control = Command::new("nsenter")
        .arg(&netns)
        .arg("--")
        .arg(control_bin)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:6443", "--write-kubeconfig"])
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", control_bin.display()))?;
    lab.children.push(control);

    // The kube client runs on a thread inside the client namespace, where the API listens.
    let ns = lab.client_ns_path(0);
    let setup = std::thread::scope(|s| {
        s.spawn(|| {
            crate::load::enter(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(create_objects(&kubeconfig))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the API client thread panicked"))?
    });
    setup?;

    let (out, err) = log_file(dir, "agent.log")?;
    let agent = Command::new("nsenter")
        .arg(&netns)
        .arg("--")
        .arg(agent_bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", "skb-node", "--root-dir"])
        .arg(dir.join("agent"))
        .args(["--proxy-mode", "ebpf", "--cgroup-root"])
        .arg(&lab.cgroup)
        .arg("--pin-dir")
        .arg(&lab.api_pin_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", agent_bin.display()))?;
    lab.children.push(agent);

    let pin_dir = lab.api_pin_dir.clone();
    let lab = &*lab;
    let changes = std::thread::scope(|s| {
        s.spawn(|| {
            crate::load::enter(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            series(&rt, &kubeconfig, &pin_dir, plan, lab)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the API client thread panicked"))?
    })?;
    Ok(changes)
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Waits for the API server, then creates the Service and its EndpointSlice (ten endpoints).
async fn create_objects(kubeconfig: &Path) -> anyhow::Result<()> {
    // skiff-control writes the kubeconfig before it listens: wait for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        if kubeconfig.exists() {
            if let Ok(c) = client(kubeconfig).await {
                if c.apiserver_version().await.is_ok() {
                    break c;
                }
            }
        }
        check_stop()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "skiff-control did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt("default").await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
            )
            .await
            .context("creating namespace default")?;
    }
    let ip = std::net::Ipv4Addr::from(CLUSTER_IP).to_string();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}
    }))?;
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .context("creating the Service")?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "bench-1", "labels": {"kubernetes.io/service-name": "bench"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
        "endpoints": slice_endpoints(BACKENDS),
    }))?;
    Api::<EndpointSlice>::namespaced(client, "default")
        .create(&PostParams::default(), &slice)
        .await
        .context("creating the EndpointSlice")?;
    Ok(())
}

/// The Service's backend count as the datapath sees it (slot 0 of the pinned service map).
struct ServiceMap {
    map: HashMap<MapData, ServiceKey, ServiceValue>,
    key: ServiceKey,
}

impl ServiceMap {
    fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let data = MapData::from_pin(pin_dir.join(maps::SERVICES))?;
        Ok(Self {
            map: HashMap::try_from(Map::from_map_data(data)?)?,
            key: ServiceKey::new(CLUSTER_IP, SERVICE_PORT, PROTO_TCP, 0),
        })
    }

    fn count(&self) -> Option<u16> {
        self.map.get(&self.key, 0).ok().map(|v| v.count)
    }

    /// Polls until the count is `want`; returns when it was seen.
    fn wait_for(&self, want: u16, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count() == Some(want) {
                return Ok(Instant::now());
            }
            check_stop()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the datapath did not show {want} backends within {timeout:?} (it shows {:?})",
                self.count()
            );
            std::thread::sleep(POLL);
        }
    }
}

fn series(
    rt: &tokio::runtime::Runtime,
    kubeconfig: &Path,
    pin_dir: &Path,
    plan: Plan,
    lab: &Lab,
) -> anyhow::Result<ApiResult> {
    let changes = plan.changes;
    let client = rt.block_on(client(kubeconfig))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    // The agent pins the maps when it starts, then syncs the Service: wait for both.
    let deadline = Instant::now() + Duration::from_secs(60);
    let map = loop {
        if let Ok(m) = ServiceMap::open(pin_dir) {
            break m;
        }
        check_stop()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "skiff-agent did not pin its maps in {} within 60 s",
            pin_dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    map.wait_for(u16::from(BACKENDS), Duration::from_secs(60))
        .context("waiting for the agent to program the Service")?;

    let mut current = BACKENDS;
    let mut change = |spacing: Option<Duration>| -> anyhow::Result<(u64, u64)> {
        let want = if current == BACKENDS {
            BACKENDS - 1
        } else {
            BACKENDS
        };
        let patch = json!({"endpoints": slice_endpoints(want)});
        let start = Instant::now();
        rt.block_on(slices.patch("bench-1", &PatchParams::default(), &Patch::Merge(&patch)))
            .context("patching the EndpointSlice")?;
        let written = Instant::now();
        let seen = map.wait_for(u16::from(want), CHANGE_TIMEOUT)?;
        current = want;
        if let Some(pause) = spacing {
            std::thread::sleep(pause);
        }
        Ok((
            seen.duration_since(start).as_nanos() as u64,
            written.duration_since(start).as_nanos() as u64,
        ))
    };
    let (mut isolated, mut back_to_back, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..changes {
        let (lat, w) = change(Some(SPACING))?;
        isolated.push(lat);
        writes.push(w);
    }
    for _ in 0..changes {
        let (lat, w) = change(None)?;
        back_to_back.push(lat);
        writes.push(w);
    }
    let (dns, dns_error) = if plan.dns_creates == 0 {
        (None, None)
    } else {
        eprintln!(
            "bench: Service create to resolvable ({} creates after {} Services)",
            plan.dns_creates, plan.dns_background
        );
        match crate::dns::measure(rt, &client, lab, plan.dns_background, plan.dns_creates) {
            Ok(d) => (Some(d), None),
            Err(e) => {
                check_stop()?;
                eprintln!("bench: the DNS measurement failed: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    };
    Ok(ApiResult {
        dns,
        dns_error,
        changes,
        spacing_ms: SPACING.as_secs_f64() * 1000.0,
        isolated: Latency::of(&mut isolated),
        back_to_back: Latency::of(&mut back_to_back),
        write: Latency::of(&mut writes),
    })
}
