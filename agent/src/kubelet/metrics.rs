//! Prometheus text for the node's `/metrics`: pods and containers from the pods' reported
//! statuses, and the agent's own process figures from /proc.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for `pods`.
pub fn render(pods: &[Pod]) -> String {
    let mut out = String::new();
    let running_pods = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    let statuses = || {
        pods.iter().flat_map(|p| {
            let status = p.status.as_ref();
            status
                .and_then(|s| s.init_container_statuses.as_deref())
                .unwrap_or_default()
                .iter()
                .chain(
                    status
                        .and_then(|s| s.container_statuses.as_deref())
                        .unwrap_or_default(),
                )
                .map(move |c| (p, c))
        })
    };
    let mut by_state = [("running", 0usize), ("waiting", 0), ("terminated", 0)];
    for (_, c) in statuses() {
        let state = c.state.as_ref();
        let i = if state.is_some_and(|s| s.running.is_some()) {
            0
        } else if state.is_some_and(|s| s.terminated.is_some()) {
            2
        } else {
            1
        };
        by_state[i].1 += 1;
    }
    let _ = writeln!(
        out,
        "# HELP kubelet_running_pods Pods in phase Running on this node."
    );
    let _ = writeln!(out, "# TYPE kubelet_running_pods gauge");
    let _ = writeln!(out, "kubelet_running_pods {running_pods}");
    let _ = writeln!(
        out,
        "# HELP kubelet_running_containers Containers on this node by state."
    );
    let _ = writeln!(out, "# TYPE kubelet_running_containers gauge");
    for (state, n) in by_state {
        let _ = writeln!(
            out,
            "kubelet_running_containers{{container_state=\"{state}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kubelet_container_restarts_total Restarts of each container (its restartCount)."
    );
    let _ = writeln!(out, "# TYPE kubelet_container_restarts_total counter");
    for (p, c) in statuses() {
        let _ = writeln!(
            out,
            "kubelet_container_restarts_total{{namespace=\"{}\",pod=\"{}\",container=\"{}\"}} {}",
            label(p.metadata.namespace.as_deref().unwrap_or("default")),
            label(p.metadata.name.as_deref().unwrap_or("")),
            label(&c.name),
            c.restart_count.max(0)
        );
    }
    process_metrics(&mut out);
    out
}

/// process_* metrics of the agent (as the Prometheus client libraries name them).
fn process_metrics(out: &mut String) {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return;
    };
    // Fields after the command: state is index 0, utime 11, stime 12, threads 17,
    // starttime 19, rss 21.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent in seconds.",
        (num(11) + num(12)) / ticks,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        num(21) * page,
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the epoch in seconds.",
        boot + num(19) / ticks,
    );
    metric("process_threads", "gauge", "Number of OS threads.", num(17));
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_pods_containers_and_restarts() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                 "state": {"running": {}}},
                {"name": "side", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        }))
        .unwrap();
        let pending: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "kube-system"},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let text = render(&[pod, pending]);
        assert!(text.contains("kubelet_running_pods 1\n"), "{text}");
        assert!(text.contains("kubelet_running_containers{container_state=\"running\"} 1\n"));
        assert!(text.contains("kubelet_running_containers{container_state=\"waiting\"} 1\n"));
        assert!(text.contains(
            "kubelet_container_restarts_total{namespace=\"default\",pod=\"web\",container=\"app\"} 2\n"
        ));
        assert!(text.contains("process_resident_memory_bytes "));
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 0.0);
    }
}
