//! The resource metrics pipeline metrics-server runs, inside the API server: every
//! `--metric-resolution` it scrapes each node's kubelet `/metrics/resource` (cumulative CPU
//! seconds and working-set bytes of the node, its pods and their containers), keeps the last
//! two samples of each, and serves the CPU rate between them and the latest memory as
//! metrics.k8s.io's NodeMetrics and PodMetrics ([`super::kinds::metrics`]).
//!
//! As metrics-server: a node or container needs two samples before it has a rate; a counter
//! that went backwards (the container restarted) starts over; a pod is reported while it
//! exists in the store and has at least one container with a rate; what a failing node
//! reported ages out after three resolutions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::ListOptions;
use super::ApiState;

/// The largest `/metrics/resource` body read from a kubelet (about 2 KB per pod).
const MAX_SCRAPE_BYTES: usize = 32 << 20;
/// Nodes scraped at once.
const CONCURRENT_SCRAPES: usize = 16;

/// One cumulative reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    memory_bytes: u64,
    /// The kubelet's timestamp of the reading, in milliseconds since the epoch.
    at_ms: i64,
}

/// One container's usage: its name, CPU cores and memory bytes.
type ContainerUsage = (String, f64, u64);

/// A parsed sample line: metric name, labels, value and timestamp (ms).
type ParsedSample<'a> = (&'a str, Vec<(String, String)>, f64, i64);

/// The last two readings of one node or container.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Series {
    prev: Option<Sample>,
    last: Sample,
}

impl Series {
    fn first(s: Sample) -> Self {
        Self {
            prev: None,
            last: s,
        }
    }

    /// The series after a new reading: a reading with the same timestamp changes nothing, one
    /// whose counter went backwards (a restart) starts the series over.
    fn next(self, s: Sample) -> Self {
        if s.at_ms == self.last.at_ms {
            self
        } else if s.at_ms < self.last.at_ms || s.cpu_seconds < self.last.cpu_seconds {
            Self::first(s)
        } else {
            Self {
                prev: Some(self.last),
                last: s,
            }
        }
    }

    /// CPU cores used between the two readings, the memory of the last, and the window.
    fn usage(&self) -> Option<(f64, u64, Duration)> {
        let prev = self.prev?;
        let ms = self.last.at_ms - prev.at_ms;
        if ms <= 0 {
            return None;
        }
        let cores = (self.last.cpu_seconds - prev.cpu_seconds) / (ms as f64 / 1000.0);
        Some((
            cores.max(0.0),
            self.last.memory_bytes,
            Duration::from_millis(ms as u64),
        ))
    }
}

/// What one node's kubelet reported.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scrape {
    node: Option<Sample>,
    /// (namespace, pod) -> container -> reading.
    containers: BTreeMap<(String, String), BTreeMap<String, Sample>>,
}

#[derive(Debug, Clone)]
struct NodeData {
    node: Option<Series>,
    pods: BTreeMap<(String, String), BTreeMap<String, Series>>,
    scraped: Instant,
}

/// The latest readings of every node, shared by the scraper and the metrics API.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: RwLock<HashMap<String, NodeData>>,
}

impl Cache {
    /// Records what `node` reported now.
    fn record(&self, node: &str, scrape: Scrape, now: Instant) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let old = nodes.remove(node);
        let node_series = match (old.as_ref().and_then(|o| o.node), scrape.node) {
            (Some(series), Some(s)) => Some(series.next(s)),
            (None, Some(s)) => Some(Series::first(s)),
            (_, None) => None,
        };
        let pods = scrape
            .containers
            .into_iter()
            .map(|(pod, containers)| {
                let before = old.as_ref().and_then(|o| o.pods.get(&pod));
                let containers = containers
                    .into_iter()
                    .map(|(name, s)| {
                        let series = match before.and_then(|b| b.get(&name)) {
                            Some(series) => series.next(s),
                            None => Series::first(s),
                        };
                        (name, series)
                    })
                    .collect();
                (pod, containers)
            })
            .collect();
        nodes.insert(
            node.to_owned(),
            NodeData {
                node: node_series,
                pods,
                scraped: now,
            },
        );
    }

    /// Drops nodes that are gone or have not answered since `cutoff`.
    fn retain(&self, live: &[String], cutoff: Instant) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|name, data| data.scraped >= cutoff && live.iter().any(|l| l == name));
    }

    fn node_usage(&self, name: &str) -> Option<(f64, u64, Duration, i64)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let series = nodes.get(name)?.node?;
        let (cpu, mem, window) = series.usage()?;
        Some((cpu, mem, window, series.last.at_ms))
    }

    /// Each container's usage of pod `namespace/name`, and the window and time of the last.
    fn pod_usage(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Vec<ContainerUsage>, Duration, i64)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        let containers = nodes.values().find_map(|n| n.pods.get(&key))?;
        let mut out = Vec::new();
        let (mut window, mut at) = (Duration::ZERO, 0);
        for (container, series) in containers {
            if let Some((cpu, mem, w)) = series.usage() {
                out.push((container.clone(), cpu, mem));
                window = window.max(w);
                at = at.max(series.last.at_ms);
            }
        }
        (!out.is_empty()).then_some((out, window, at))
    }
}

/// Parses the kubelet's `/metrics/resource` (the Prometheus text format, of which only the
/// samples of the six usage metrics matter). Lines it does not understand are skipped, as a
/// scraper of a newer kubelet would.
pub fn parse(text: &str) -> Scrape {
    let mut node_cpu = None;
    let mut node_mem = None;
    let mut cpu: BTreeMap<(String, String, String), (f64, i64)> = BTreeMap::new();
    let mut mem: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value, at)) = parse_sample(line) else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let key = || (label("namespace"), label("pod"), label("container"));
        match name {
            "node_cpu_usage_seconds_total" => node_cpu = Some((value, at)),
            "node_memory_working_set_bytes" => node_mem = Some(value),
            "container_cpu_usage_seconds_total" => {
                cpu.insert(key(), (value, at));
            }
            "container_memory_working_set_bytes" => {
                mem.insert(key(), value.max(0.0) as u64);
            }
            _ => {}
        }
    }
    let mut scrape = Scrape {
        node: node_cpu.map(|(cpu_seconds, at_ms)| Sample {
            cpu_seconds,
            memory_bytes: node_mem.unwrap_or(0.0).max(0.0) as u64,
            at_ms,
        }),
        containers: BTreeMap::new(),
    };
    for ((namespace, pod, container), (cpu_seconds, at_ms)) in cpu {
        if namespace.is_empty() || pod.is_empty() || container.is_empty() {
            continue;
        }
        let memory_bytes = mem
            .get(&(namespace.clone(), pod.clone(), container.clone()))
            .copied()
            .unwrap_or(0);
        scrape
            .containers
            .entry((namespace, pod))
            .or_default()
            .insert(
                container,
                Sample {
                    cpu_seconds,
                    memory_bytes,
                    at_ms,
                },
            );
    }
    scrape
}

/// `name{k="v",...} value [timestamp_ms]` -> its parts (a missing timestamp is 0).
fn parse_sample(line: &str) -> Option<ParsedSample<'_>> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                break after;
            }
            let (key, after) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim().to_owned(), value));
            body = &after[end + 1..];
        }
    } else {
        rest
    };
    let mut fields = rest.split_whitespace();
    let value: f64 = fields.next()?.parse().ok()?;
    let at: i64 = match fields.next() {
        Some(t) => t.parse().ok()?,
        None => 0,
    };
    value.is_finite().then_some((name, labels, value, at))
}

/// A CPU rate as a Quantity in nanocores, as metrics-server writes it.
fn cpu_quantity(cores: f64) -> String {
    format!("{}n", (cores * 1e9).round() as u64)
}

/// Memory as a Quantity in KiB, as metrics-server writes it.
fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// A window as a Go duration (`15s`, `14.987s`).
fn window(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    }
}

fn timestamp(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms)
        .map(skiff_k8s::time::format)
        .unwrap_or_else(|_| skiff_k8s::time::now())
}

/// The objects of a stored kind, parsed (nodes or pods, for names and labels).
async fn stored(
    state: &ApiState,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let def = state
        .registry
        .find("", "v1", plural)
        .ok_or(ApiError::UnknownResource)?;
    state
        .list(&def, namespace, &ListOptions::default())
        .await?
        .values()
}

/// The labels of a stored object, for its metrics object (selectors match on them).
fn labels_of(object: &Value) -> Value {
    object
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

/// NodeMetrics of every node with a rate (or only `name`'s).
pub async fn node_metrics(state: &ApiState, name: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let nodes = stored(state, "nodes", None).await?;
    let cache = &state.resource_metrics;
    Ok(nodes
        .iter()
        .filter_map(|node| {
            let node_name = node.pointer("/metadata/name")?.as_str()?;
            if name.is_some_and(|n| n != node_name) {
                return None;
            }
            let (cpu, mem, w, at) = cache.node_usage(node_name)?;
            Some(json!({
                "kind": "NodeMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {
                    "name": node_name,
                    "labels": labels_of(node),
                    "creationTimestamp": timestamp(at),
                },
                "timestamp": timestamp(at),
                "window": window(w),
                "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem)},
            }))
        })
        .collect())
}

/// PodMetrics of every pod in `namespace` (all: `None`) with a rate (or only `name`'s).
pub async fn pod_metrics(
    state: &ApiState,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let pods = match (namespace, name) {
        (Some(ns), Some(name)) => {
            let def = state
                .registry
                .find("", "v1", "pods")
                .ok_or(ApiError::UnknownResource)?;
            match state.get(&def, Some(ns), name).await {
                Ok(pod) => vec![pod],
                Err(ApiError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            }
        }
        _ => stored(state, "pods", namespace).await?,
    };
    let cache = &state.resource_metrics;
    Ok(pods
        .iter()
        .filter_map(|pod| {
            let pod_name = pod.pointer("/metadata/name")?.as_str()?;
            let pod_ns = pod.pointer("/metadata/namespace")?.as_str()?;
            if name.is_some_and(|n| n != pod_name) {
                return None;
            }
            let (containers, w, at) = cache.pod_usage(pod_ns, pod_name)?;
            let containers: Vec<Value> = containers
                .into_iter()
                .map(|(c, cpu, mem)| {
                    json!({"name": c, "usage": {
                        "cpu": cpu_quantity(cpu), "memory": memory_quantity(mem)}})
                })
                .collect();
            Some(json!({
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {
                    "name": pod_name,
                    "namespace": pod_ns,
                    "labels": labels_of(pod),
                    "creationTimestamp": timestamp(at),
                },
                "timestamp": timestamp(at),
                "window": window(w),
                "containers": containers,
            }))
        })
        .collect())
}

/// Scrapes every node each `resolution` until shutdown.
pub async fn run(state: Arc<ApiState>, resolution: Duration) {
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = scrape_all(&state, resolution).await {
            tracing::warn!(error = %e, "resource metrics: listing nodes failed");
        }
    }
}

async fn scrape_all(state: &ApiState, resolution: Duration) -> Result<(), ApiError> {
    let Some(client) = state.kubelet.get() else {
        return Ok(());
    };
    let nodes = stored(state, "nodes", None).await?;
    let targets: Vec<(String, String)> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.pointer("/metadata/name")?.as_str()?.to_owned();
            let base = super::node_proxy::kubelet_base(n).ok()?;
            Some((name, base))
        })
        .collect();
    let http = client.http().clone();
    futures::stream::iter(targets.iter().cloned())
        .map(|(name, base)| {
            let http = http.clone();
            async move {
                let result = scrape_one(&http, &base, resolution).await;
                (name, result)
            }
        })
        .buffer_unordered(CONCURRENT_SCRAPES)
        .for_each(|(name, result)| {
            match result {
                Ok(scrape) => state.resource_metrics.record(&name, scrape, Instant::now()),
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "resource metrics: scrape failed")
                }
            }
            futures::future::ready(())
        })
        .await;
    let live: Vec<String> = targets.into_iter().map(|(n, _)| n).collect();
    let cutoff = Instant::now()
        .checked_sub(resolution * 3)
        .unwrap_or_else(Instant::now);
    state.resource_metrics.retain(&live, cutoff);
    Ok(())
}

async fn scrape_one(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<Scrape, String> {
    let mut response = http
        .get(format!("{base}/metrics/resource"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_SCRAPE_BYTES {
            return Err(format!("more than {MAX_SCRAPE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(parse(&String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_1: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="burn"} 10 1700000000000
container_cpu_usage_seconds_total{container="side",namespace="default",pod="burn"} 1 1700000000000
container_memory_working_set_bytes{container="app",namespace="default",pod="burn"} 1048576 1700000000000
container_memory_working_set_bytes{container="side",namespace="default",pod="burn"} 2097152 1700000000000
pod_cpu_usage_seconds_total{namespace="default",pod="burn"} 11 1700000000000
node_cpu_usage_seconds_total 100 1700000000000
node_memory_working_set_bytes 4194304 1700000000000
resource_scrape_error 0
"#;

    fn second() -> String {
        SCRAPE_1
            .replace("} 10 1700000000000", "} 25 1700000015000")
            .replace("} 1 1700000000000", "} 1.15 1700000015000")
            .replace(
                "node_cpu_usage_seconds_total 100 1700000000000",
                "node_cpu_usage_seconds_total 130 1700000015000",
            )
            .replace(" 1700000000000", " 1700000015000")
    }

    #[test]
    fn parses_the_kubelets_samples() {
        let s = parse(SCRAPE_1);
        assert_eq!(
            s.node,
            Some(Sample {
                cpu_seconds: 100.0,
                memory_bytes: 4194304,
                at_ms: 1_700_000_000_000
            })
        );
        let burn = &s.containers[&("default".to_owned(), "burn".to_owned())];
        assert_eq!(burn.len(), 2);
        assert_eq!(burn["side"].memory_bytes, 2097152);
    }

    #[test]
    fn label_values_with_escapes_and_odd_lines() {
        let (name, labels, value, at) =
            parse_sample(r#"m{a="x\"y",b="c\\d",c="e\nf"} 1.5"#).unwrap();
        assert_eq!((name, value, at), ("m", 1.5, 0));
        assert_eq!(labels[0].1, "x\"y");
        assert_eq!(labels[1].1, "c\\d");
        assert_eq!(labels[2].1, "e\nf");
        for bad in [
            "m{a=\"x} 1",
            "m NaN",
            "m{} x",
            "justaname",
            "m{a=\"1\"}",
            "m 1 t",
        ] {
            assert!(parse_sample(bad).is_none(), "{bad}");
        }
        assert!(parse("garbage\n{{{\nm{a=\"\n").containers.is_empty());
    }

    #[test]
    fn two_scrapes_give_rates_and_a_restart_starts_over() {
        let cache = Cache::default();
        let now = Instant::now();
        cache.record("n1", parse(SCRAPE_1), now);
        assert!(cache.node_usage("n1").is_none(), "one sample has no rate");
        assert!(cache.pod_usage("default", "burn").is_none());
        cache.record("n1", parse(&second()), now);
        let (cpu, mem, w, _) = cache.node_usage("n1").unwrap();
        assert!((cpu - 2.0).abs() < 1e-9, "30 s of CPU in 15 s: {cpu}");
        assert_eq!((mem, w), (4194304, Duration::from_secs(15)));
        let (containers, w, _) = cache.pod_usage("default", "burn").unwrap();
        assert_eq!(w, Duration::from_secs(15));
        let app = containers.iter().find(|c| c.0 == "app").unwrap();
        assert!((app.1 - 1.0).abs() < 1e-9, "{app:?}");
        let side = containers.iter().find(|c| c.0 == "side").unwrap();
        assert!((side.1 - 0.01).abs() < 1e-9, "{side:?}");
        // The app container restarted: its counter went back; no rate until the next reading.
        let restarted = second()
            .replace("} 25 1700000015000", "} 2 1700000030000")
            .replace(" 1700000015000", " 1700000030000");
        cache.record("n1", parse(&restarted), now);
        let (containers, _, _) = cache.pod_usage("default", "burn").unwrap();
        assert!(containers.iter().all(|c| c.0 != "app"), "{containers:?}");
    }

    #[test]
    fn quantities_and_windows_as_metrics_server_writes_them() {
        assert_eq!(cpu_quantity(0.25), "250000000n");
        assert_eq!(memory_quantity(1048576 + 100), "1024Ki");
        assert_eq!(window(Duration::from_secs(15)), "15s");
        assert_eq!(window(Duration::from_millis(14_987)), "14.987s");
        assert_eq!(window(Duration::from_millis(15_020)), "15.02s");
    }

    #[test]
    fn gone_or_silent_nodes_age_out() {
        let cache = Cache::default();
        let then = Instant::now();
        cache.record("n1", parse(SCRAPE_1), then);
        cache.record("n1", parse(&second()), then);
        cache.retain(&["n1".to_owned()], then);
        assert!(cache.node_usage("n1").is_some());
        cache.retain(&[], then);
        assert!(cache.node_usage("n1").is_none(), "a deleted node goes");
        cache.record("n1", parse(SCRAPE_1), then);
        cache.retain(&["n1".to_owned()], then + Duration::from_secs(1));
        assert!(
            cache.nodes.read().unwrap().is_empty(),
            "a silent node ages out"
        );
    }
}
