//! The kubelet's `/stats/summary` (the Summary API, `stats/v1alpha1`): CPU and memory of the
//! node, of each pod and of each running container, from the same cgroup scrape as
//! `/metrics/resource` ([`super::resource_metrics::collect`]).
//!
//! `usageNanoCores` is a rate: the CPU time used between this scrape and the previous one of
//! the same cgroup, over the time between them ([`CpuRates`] keeps each cgroup's last
//! reading); the first scrape of a cgroup has none, as the kubelet's has none before its
//! second housekeeping pass. Network, filesystem and volume statistics are not reported.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::resource_metrics::Scrape;
use crate::runtime::cgroup_stats::Usage;

/// Each cgroup's previous CPU reading, for `usageNanoCores`; forgotten when a cgroup is not in
/// a scrape (its pod or container went away), so the map holds what runs.
#[derive(Debug, Default)]
pub struct CpuRates(Mutex<HashMap<String, (Timestamp, u64)>>);

impl CpuRates {
    /// The rates of `readings` (key, CPU ns) taken at `at`, and remembers them.
    fn rates(&self, at: Timestamp, readings: &[(String, u64)]) -> HashMap<String, u64> {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rates = HashMap::new();
        for (key, ns) in readings {
            if let Some((then, before)) = last.get(key) {
                let elapsed = at.as_nanosecond() - then.as_nanosecond();
                if elapsed > 0 && ns >= before {
                    let rate = u128::from(ns - before) * 1_000_000_000 / elapsed.unsigned_abs();
                    rates.insert(key.clone(), u64::try_from(rate).unwrap_or(u64::MAX));
                }
            }
        }
        *last = readings
            .iter()
            .map(|(k, ns)| (k.clone(), (at, *ns)))
            .collect();
        rates
    }
}

fn cpu(at: &str, usage: &Usage, rate: Option<u64>) -> Value {
    let mut v = json!({"time": at, "usageCoreNanoSeconds": usage.cpu_usage_ns});
    if let Some(rate) = rate {
        v["usageNanoCores"] = json!(rate);
    }
    v
}

fn memory(at: &str, usage: &Usage) -> Value {
    json!({"time": at, "usageBytes": usage.memory_usage_bytes,
        "workingSetBytes": usage.memory_working_set_bytes, "rssBytes": usage.memory_rss_bytes})
}

/// The Summary of node `node` from `scrape` of `pods`, taken at `at`.
pub fn render(node: &str, pods: &[Pod], scrape: &Scrape, at: Timestamp, rates: &CpuRates) -> Value {
    let time = at.to_string();
    let key = |ns: &str, pod: &str, c: Option<&str>| format!("{ns}/{pod}/{}", c.unwrap_or(""));
    let mut readings: Vec<(String, u64)> = scrape
        .samples
        .iter()
        .map(|s| {
            (
                key(&s.namespace, &s.pod, s.container.as_deref()),
                s.usage.cpu_usage_ns,
            )
        })
        .collect();
    if let Some(n) = &scrape.node {
        readings.push((String::new(), n.cpu_usage_ns));
    }
    let rates = rates.rates(at, &readings);
    let mut node_stats = json!({"nodeName": node});
    if let Some(n) = &scrape.node {
        node_stats["cpu"] = cpu(&time, n, rates.get("").copied());
        node_stats["memory"] = memory(&time, n);
    }
    let mut pod_stats = Vec::new();
    for pod in pods {
        let (Some(namespace), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.namespace == namespace && s.pod == name)
            .collect();
        let Some(whole) = samples.iter().find(|s| s.container.is_none()) else {
            continue;
        };
        let status = pod.status.as_ref();
        let statuses = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let containers: Vec<Value> = samples
            .iter()
            .filter_map(|s| {
                let c = s.container.as_deref()?;
                let started = statuses
                    .iter()
                    .find(|st| st.name == c)
                    .and_then(|st| st.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                    .map(|t| t.0.to_string());
                let rate = rates.get(&key(namespace, name, Some(c))).copied();
                Some(json!({"name": c, "startTime": started,
                    "cpu": cpu(&time, &s.usage, rate), "memory": memory(&time, &s.usage)}))
            })
            .collect();
        let rate = rates.get(&key(namespace, name, None)).copied();
        pod_stats.push(json!({
            "podRef": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
            "startTime": status.and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string()),
            "containers": containers,
            "cpu": cpu(&time, &whole.usage, rate),
            "memory": memory(&time, &whole.usage),
        }));
    }
    json!({"node": node_stats, "pods": pod_stats})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::resource_metrics::Sample;

    fn usage(cpu_ns: u64) -> Usage {
        Usage {
            cpu_usage_ns: cpu_ns,
            memory_usage_bytes: 1000,
            memory_working_set_bytes: 800,
            memory_rss_bytes: 500,
        }
    }

    fn scrape(node_ns: u64, pod_ns: u64, container_ns: u64) -> Scrape {
        let sample = |container: Option<&str>, ns| Sample {
            namespace: "default".into(),
            pod: "burn".into(),
            container: container.map(str::to_owned),
            usage: usage(ns),
        };
        Scrape {
            node: Some(usage(node_ns)),
            samples: vec![sample(None, pod_ns), sample(Some("spin"), container_ns)],
            errors: 0,
        }
    }

    #[test]
    fn a_summary_with_rates_from_the_second_scrape_on() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "burn", "namespace": "default", "uid": "u1"},
            "status": {"startTime": "2026-12-07T10:00:00Z", "containerStatuses": [
                {"name": "spin", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"running": {"startedAt": "2026-12-07T10:00:01Z"}}}]}
        }))
        .unwrap();
        let rates = CpuRates::default();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let first = render(
            "n1",
            std::slice::from_ref(&pod),
            &scrape(10_000, 4_000, 3_000),
            t0,
            &rates,
        );
        assert_eq!(first["node"]["nodeName"], "n1");
        assert_eq!(first["node"]["cpu"]["usageCoreNanoSeconds"], 10_000);
        assert!(
            first["node"]["cpu"].get("usageNanoCores").is_none(),
            "no rate yet"
        );
        let p = &first["pods"][0];
        assert_eq!(
            p["podRef"],
            json!({"name": "burn", "namespace": "default", "uid": "u1"})
        );
        assert_eq!(p["startTime"], "2026-12-07T10:00:00Z");
        assert_eq!(p["containers"][0]["name"], "spin");
        assert_eq!(p["containers"][0]["startTime"], "2026-12-07T10:00:01Z");
        assert_eq!(p["memory"]["workingSetBytes"], 800);

        // Two seconds later the container used one CPU-second: half a core.
        let t1 = Timestamp::from_second(1_800_000_002).unwrap();
        let second = render(
            "n1",
            &[pod],
            &scrape(2_000_010_000, 1_000_004_000, 1_000_003_000),
            t1,
            &rates,
        );
        let c = &second["pods"][0]["containers"][0]["cpu"];
        assert_eq!(c["usageNanoCores"], 500_000_000);
        assert_eq!(second["node"]["cpu"]["usageNanoCores"], 1_000_000_000);
        assert_eq!(c["time"], t1.to_string());
    }
}
