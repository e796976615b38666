//! The kubelet's `/metrics/resource` and `/stats/summary` on a real node: a busybox pod that
//! burns CPU shows its container's and pod's CPU time rising, read from the cgroups the
//! runtime made for it; and `kubectl top` (metrics.k8s.io, which the API server fills by
//! scraping the kubelets) shows the burning pod using about a core and an idle one nearly none.
//! The kubelet's endpoints are asked on the node's read-only port, from inside the node's network namespace (the
//! endpoint listens on its loopback address). Needs root.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::{in_netns, wait_for};
use skiff_test_support::require_root;

const READ_ONLY_PORT: u16 = 10_255;

/// The metrics text from the node's read-only endpoint.
fn scrape(netns: &str) -> String {
    get(netns, "/metrics/resource")
}

/// `path` from the node's read-only endpoint.
fn get(netns: &str, path: &str) -> String {
    let url = format!("http://127.0.0.1:{READ_ONLY_PORT}{path}");
    let out = in_netns(Some(netns), Path::new("python3"))
        .args([
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
            &url,
        ])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `name{labels}` in `text`.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[test]
fn a_pod_burning_cpu_shows_rising_usage() {
    require_root!("network namespaces, containers, cgroups");
    let c = Guard::test(&Options {
        agent_args: vec![format!("--read-only-port={READ_ONLY_PORT}")],
        // Scrapes every second, so that two (a rate) come soon.
        control_args: vec!["--metric-resolution=1s".into()],
        ..Options::test("tres", 243, 1)
    });
    let k = Kubectl(c.state.kubeconfig.clone());
    let node = &c.state.nodes[0];
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "burn", "namespace": "default"},
            "spec": {"containers": [{"name": "spin", "image": "busybox",
                "command": ["sh", "-c", "while :; do :; done"]}]}})
        .to_string(),
    );
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "idle", "namespace": "default"},
            "spec": {"containers": [{"name": "rest", "image": "busybox",
                "command": ["sleep", "3600"]}]}})
        .to_string(),
    );
    k.wait_phase("burn", "Running", Duration::from_secs(120));
    k.wait_phase("idle", "Running", Duration::from_secs(120));

    let container = r#"{container="spin",namespace="default",pod="burn"}"#;
    let pod = r#"{namespace="default",pod="burn"}"#;
    let first = scrape(&node.netns);
    let start = value(&first, "container_cpu_usage_seconds_total", container)
        .unwrap_or_else(|| panic!("no sample for the container in\n{first}"));
    assert!(
        value(&first, "node_cpu_usage_seconds_total", "").is_some(),
        "{first}"
    );
    assert!(
        value(&first, "pod_memory_working_set_bytes", pod).is_some_and(|b| b > 0.0),
        "{first}"
    );
    // The loop runs on one CPU: half a second of CPU time comes within a few seconds even on
    // a busy machine.
    let mut last = String::new();
    wait_for(
        "the container's CPU time to rise by 0.5 s",
        Duration::from_secs(30),
        || {
            last = scrape(&node.netns);
            value(&last, "container_cpu_usage_seconds_total", container)
                .is_some_and(|now| now >= start + 0.5)
        },
    );
    let container_cpu = value(&last, "container_cpu_usage_seconds_total", container).unwrap();
    let pod_cpu = value(&last, "pod_cpu_usage_seconds_total", pod).unwrap();
    assert!(
        pod_cpu >= container_cpu,
        "the pod's cgroup holds its containers': {pod_cpu} < {container_cpu}"
    );
    assert!(last.contains("\nresource_scrape_error 0\n"), "{last}");

    // The Summary API from the same cgroups: a rate from the second scrape on; the loop uses
    // a good share of a core whenever it has one (scrapes a few ms apart on a busy machine can
    // catch it waiting, so until one shows it).
    let summary = || -> serde_json::Value {
        let text = get(&node.netns, "/stats/summary");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let mut s = summary();
    wait_for(
        "the summary to show the container using CPU",
        Duration::from_secs(30),
        || {
            s = summary();
            let pods = s["pods"].as_array().cloned().unwrap_or_default();
            pods.iter()
                .find(|p| p["podRef"]["name"] == "burn")
                .and_then(|p| p["containers"][0]["cpu"]["usageNanoCores"].as_u64())
                .is_some_and(|cores| cores > 50_000_000)
        },
    );
    assert_eq!(s["node"]["nodeName"], node.name.as_str(), "{s}");
    assert!(
        s["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{s}"
    );

    // `kubectl top`: the API server's metrics.k8s.io, scraped from the kubelet.
    let top_millicores = |pod: &str| -> Option<u64> {
        let out = k.output(&["top", "pod", pod, "--containers", "--no-headers"], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // POD NAME CPU(cores) MEMORY(bytes)
        let cpu = text.split_whitespace().nth(2)?;
        cpu.strip_suffix('m').map_or_else(
            || cpu.parse::<u64>().ok().map(|c| c * 1000),
            |m| m.parse().ok(),
        )
    };
    wait_for(
        "kubectl top to show the burning pod using a good share of a core",
        Duration::from_secs(60),
        || top_millicores("burn").is_some_and(|m| m >= 300),
    );
    let mut idle = None;
    wait_for("kubectl top pod idle", Duration::from_secs(30), || {
        idle = top_millicores("idle");
        idle.is_some()
    });
    assert!(idle < Some(100), "a sleeping container uses {idle:?}m");
    let nodes = k.run(&["top", "node", "--no-headers"]);
    assert!(
        nodes.starts_with(&format!("{} ", node.name)) && nodes.contains('%'),
        "{nodes}"
    );
    let pods = k.run(&["top", "pod", "-A", "--no-headers"]);
    assert!(pods.contains("burn") && pods.contains("idle"), "{pods}");
    // Label selectors select on the pods' labels; a deleted pod leaves the API.
    k.run(&["label", "pod", "burn", "load=high"]);
    let selected = k.run(&["top", "pod", "-l", "load=high", "--no-headers"]);
    assert!(
        selected.starts_with("burn ") && !selected.contains("idle"),
        "{selected}"
    );
    k.run(&["delete", "pod", "idle", "--wait=false"]);
    wait_for("idle's metrics to go", Duration::from_secs(60), || {
        !k.output(
            &[
                "get",
                "--raw",
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/idle",
            ],
            None,
        )
        .status
        .success()
    });
}
