//! The kubelet's `/metrics/resource` (what metrics-server scrapes for `kubectl top`): CPU time
//! and working-set memory of the node, of each pod and of each running container, read from
//! their cgroups ([`crate::runtime::cgroup_stats`]), under the kubelet's stable metric names.
//! Each sample carries the time it was read, as the kubelet's do.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::cgroup_stats::{Hierarchy, Usage};
use crate::runtime::cgroups::PREFIX;

/// One pod's or container's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name (`None`: the pod as a whole).
    pub container: Option<String>,
    /// What its cgroup says.
    pub usage: Usage,
}

/// What one scrape read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scrape {
    /// The node's usage (its root cgroup).
    pub node: Option<Usage>,
    /// The pods' and their running containers' usage.
    pub samples: Vec<Sample>,
    /// Cgroups that could not be read (a container that just exited, a pod being removed).
    pub errors: usize,
}

/// Reads the usage of the node and of `pods` (their running containers) from `hierarchy`.
pub fn collect(hierarchy: &Hierarchy, pods: &[Pod], meminfo: Option<&str>) -> Scrape {
    let mut scrape = Scrape::default();
    match hierarchy.usage("", meminfo) {
        Ok(u) => scrape.node = Some(u),
        Err(e) => {
            tracing::debug!(error = %e, "reading the node's cgroup");
            scrape.errors += 1;
        }
    }
    for pod in pods {
        let (Some(uid), Some(namespace), Some(name)) = (
            pod.metadata.uid.as_deref(),
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let running: Vec<&str> = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .map(|c| c.name.as_str())
            .collect();
        if running.is_empty() {
            continue;
        }
        let groups = std::iter::once(None).chain(running.into_iter().map(Some));
        for container in groups {
            let group = match container {
                Some(c) => format!("{PREFIX}/{uid}/{c}"),
                None => format!("{PREFIX}/{uid}"),
            };
            match hierarchy.usage(&group, meminfo) {
                Ok(usage) => scrape.samples.push(Sample {
                    namespace: namespace.to_owned(),
                    pod: name.to_owned(),
                    container: container.map(str::to_owned),
                    usage,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, group, "reading a pod's cgroup");
                    scrape.errors += 1;
                }
            }
        }
    }
    scrape
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of `scrape`, read at `timestamp_ms` (milliseconds since the epoch).
pub fn render(scrape: &Scrape, timestamp_ms: i64) -> String {
    let mut out = String::new();
    let seconds = |u: &Usage| u.cpu_usage_ns as f64 / 1e9;
    let mut family = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value} {timestamp_ms}");
        }
    };
    let containers: Vec<(&Sample, &str)> = scrape
        .samples
        .iter()
        .filter_map(|s| Some((s, s.container.as_deref()?)))
        .collect();
    let pods: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.container.is_none())
        .collect();
    let container_labels = |s: &Sample, c: &str| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            label(c),
            label(&s.namespace),
            label(&s.pod)
        )
    };
    let pod_labels = |s: &Sample| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            label(&s.namespace),
            label(&s.pod)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the container in core-seconds",
        "counter",
        containers
            .iter()
            .map(|(s, c)| (container_labels(s, c), seconds(&s.usage).to_string()))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
        "gauge",
        containers
            .iter()
            .map(|(s, c)| {
                let value = s.usage.memory_working_set_bytes.to_string();
                (container_labels(s, c), value)
            })
            .collect(),
    );
    let node: Vec<&Usage> = scrape.node.iter().collect();
    family(
        "node_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the node in core-seconds",
        "counter",
        node.iter()
            .map(|u| (String::new(), seconds(u).to_string()))
            .collect(),
    );
    family(
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        "gauge",
        node.iter()
            .map(|u| (String::new(), u.memory_working_set_bytes.to_string()))
            .collect(),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
        pods.iter()
            .map(|s| (pod_labels(s), seconds(&s.usage).to_string()))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
        "gauge",
        pods.iter()
            .map(|s| (pod_labels(s), s.usage.memory_working_set_bytes.to_string()))
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(out, "resource_scrape_error {}", u8::from(scrape.errors > 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A v1 group with `cpu_ns` of CPU and `usage` bytes of memory, a tenth of it inactive
    /// file pages.
    fn group(root: &Path, group: &str, cpu_ns: u64, usage: u64) {
        write(
            &root.join("cpuacct").join(group),
            "cpuacct.usage",
            &cpu_ns.to_string(),
        );
        let mem = root.join("memory").join(group);
        write(&mem, "memory.usage_in_bytes", &usage.to_string());
        write(
            &mem,
            "memory.stat",
            &format!(
                "total_rss {}\ntotal_inactive_file {}\n",
                usage / 2,
                usage / 10
            ),
        );
    }

    #[test]
    fn the_node_pods_and_running_containers_from_their_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::V1 {
            cpuacct: tmp.path().join("cpuacct"),
            memory: tmp.path().join("memory"),
        };
        group(tmp.path(), "", 100_000_000_000, 10_000_000);
        group(tmp.path(), "skiff/u1", 3_000_000_000, 2_000_000);
        group(tmp.path(), "skiff/u1/app", 2_500_000_000, 1_000_000);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "burn", "namespace": "default", "uid": "u1"},
            "status": {"containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"running": {}}},
                {"name": "done", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}}]}
        }))
        .unwrap();
        let waiting: Pod = serde_json::from_value(json!({
            "metadata": {"name": "pending", "namespace": "default", "uid": "u2"}
        }))
        .unwrap();
        let scrape = collect(&h, &[pod, waiting], None);
        assert_eq!(scrape.errors, 0, "no cgroup read for what does not run");
        assert_eq!(scrape.samples.len(), 2, "the pod and its running container");
        let text = render(&scrape, 1_700_000_000_000);
        for line in [
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"burn\"} 2.5 1700000000000",
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"burn\"} 900000 1700000000000",
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"burn\"} 3 1700000000000",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"burn\"} 1800000 1700000000000",
            "node_cpu_usage_seconds_total 100 1700000000000",
            "node_memory_working_set_bytes 9000000 1700000000000",
            "# TYPE container_cpu_usage_seconds_total counter",
            "resource_scrape_error 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("done"), "an exited container has no sample");
    }

    #[test]
    fn an_unreadable_cgroup_is_a_scrape_error() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::V1 {
            cpuacct: tmp.path().join("cpuacct"),
            memory: tmp.path().join("memory"),
        };
        group(tmp.path(), "", 1, 1);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "gone", "namespace": "default", "uid": "u9"},
            "status": {"containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"running": {}}}]}
        }))
        .unwrap();
        let scrape = collect(&h, &[pod], None);
        assert_eq!((scrape.samples.len(), scrape.errors), (0, 2));
        assert!(render(&scrape, 0).contains("resource_scrape_error 1\n"));
    }
}
