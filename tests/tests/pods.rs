//! Pods end to end on a local cluster (`skiff_e2e::cluster`: skiff-control plus agents in
//! network namespaces), driven with the real kubectl: pod-to-pod traffic across nodes without
//! NAT, containers sharing localhost, crash back-off, liveness and readiness probes, cgroup
//! limits, adoption after an agent restart, and deletion that leaves nothing behind.
//! Needs root; every test takes its cluster down, also when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skiff_e2e::cluster::{self, Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

fn cluster(name: &str, index: u8, nodes: usize) -> Guard {
    cluster_with(name, index, nodes, vec![])
}

fn cluster_with(name: &str, index: u8, nodes: usize, agent_args: Vec<String>) -> Guard {
    Guard::test(&Options {
        agent_args,
        ..Options::test(name, index, nodes)
    })
}

/// A container's current log file on its node.
fn log_file(node_root: &Path, pod: &Value, container: &str, instance: u32) -> PathBuf {
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap();
    node_root
        .join("pods")
        .join(uid)
        .join("logs")
        .join(container)
        .join(format!("{instance}.log"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn pod_ip(pod: &Value) -> String {
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

#[test]
fn pods_on_two_nodes_reach_each_other_without_nat() {
    require_root!("network namespaces, containers");
    let c = cluster("tpnet", 201, 2);
    let k = Kubectl(c.state.kubeconfig.clone());
    k.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec:\n  nodeName: node-2\n  containers:\n  - {name: kubia, image: 'kubia:v1'}\n",
    );
    let server = k.wait_phase("server", "Running", Duration::from_secs(60));
    let ip = pod_ip(&server);
    assert!(
        ip.starts_with("10.244.2."),
        "node-2's pods come from its podCIDR: {ip}"
    );
    k.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: node-1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc {ip} 8080']\n"
    ));
    let client = k.wait_phase("client", "Succeeded", Duration::from_secs(60));
    let client_ip = pod_ip(&client);
    assert!(client_ip.starts_with("10.244.1."), "{client_ip}");
    let answer = read(&log_file(&c.state.nodes[0].root_dir, &client, "c", 0));
    assert!(
        answer.contains("You've hit server"),
        "client got: {answer:?}"
    );
    // The server saw the client's pod IP: no NAT between pods on different nodes.
    let server_log = read(&log_file(&c.state.nodes[1].root_dir, &server, "kubia", 0));
    assert!(
        server_log.contains(&format!("Received request from {client_ip}")),
        "server log: {server_log}"
    );
    // Only traffic leaving the cluster is masqueraded.
    let nat = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.state.nodes[0].netns,
            "iptables",
            "-w",
            "-t",
            "nat",
            "-S",
            "SKIFF-POSTROUTING",
        ])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains("-s 10.244.1.0/24 ! -d 10.244.0.0/16") && nat.contains("MASQUERADE"),
        "masquerade rule: {nat}"
    );
    // Nothing can leave the cluster: the node has no default route.
    let routes = Command::new("ip")
        .args(["-n", &c.state.nodes[0].netns, "route", "show", "default"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).trim().is_empty());
}

#[test]
fn pod_lifecycle_probes_limits_and_clean_deletion() {
    require_root!("network namespaces, containers");
    let c = cluster("tplife", 202, 1);
    let k = Kubectl(c.state.kubeconfig.clone());
    let root = c.state.nodes[0].root_dir.clone();
    k.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: "kubia:v1"
    resources: {limits: {memory: 64Mi, cpu: 250m}}
  - name: client
    image: busybox
    command: [sh, -c, 'while true; do printf "GET / HTTP/1.0\r\n\r\n" | nc localhost 8080; sleep 1; done']
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'echo attempt; exit 3']}
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: "kubia:v1"
    livenessProbe: {httpGet: {path: /, port: 9999}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: flappy}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'while true; do touch /tmp/ready; sleep 3; rm -f /tmp/ready; sleep 3; done']
    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
"#,
    );
    // Two containers share the pod's localhost.
    let shared = k.wait_phase("shared", "Running", Duration::from_secs(60));
    let client_log = log_file(&root, &shared, "client", 0);
    wait_for(
        "the client container to reach web over localhost",
        Duration::from_secs(30),
        || read(&client_log).contains("You've hit shared"),
    );
    // Logs and exec through the API server, as users reach them.
    let logs = k.run(&["logs", "shared", "-c", "client", "--tail=2"]);
    assert!(logs.contains("You've hit shared"), "kubectl logs: {logs:?}");
    let out = k.run(&["exec", "shared", "-c", "client", "--", "hostname"]);
    assert_eq!(out.trim(), "shared");
    // Limits landed in the container's cgroups.
    let uid = shared
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let mem = read(Path::new(&format!(
        "/sys/fs/cgroup/memory/skiff/{uid}/web/memory.limit_in_bytes"
    )));
    assert_eq!(mem.trim(), "67108864", "memory limit");
    let quota = read(Path::new(&format!(
        "/sys/fs/cgroup/cpu/skiff/{uid}/web/cpu.cfs_quota_us"
    )));
    assert_eq!(quota.trim(), "25000", "cpu quota (250m of a 100 ms period)");

    // A crashing container restarts with back-off and says so.
    let mut saw_backoff = false;
    wait_for(
        "crash to restart twice in back-off",
        Duration::from_secs(60),
        || {
            let s = k
                .pod_field("crash", "/status/containerStatuses/0")
                .unwrap_or_default();
            saw_backoff |= s.pointer("/state/waiting/reason").and_then(Value::as_str)
                == Some("CrashLoopBackOff");
            saw_backoff && s["restartCount"].as_i64().unwrap_or(0) >= 2
        },
    );
    let s = k.pod_field("crash", "/status/containerStatuses/0").unwrap();
    assert_eq!(
        s.pointer("/lastState/terminated/exitCode"),
        Some(&Value::from(3)),
        "{s}"
    );
    assert_eq!(
        k.pod_field("crash", "/status/phase"),
        Some(Value::from("Running"))
    );
    let previous = k.run(&["logs", "crash", "--previous"]);
    assert_eq!(previous.trim(), "attempt", "kubectl logs --previous");

    // A failing liveness probe restarts the container.
    wait_for(
        "unhealthy to be restarted by its liveness probe",
        Duration::from_secs(60),
        || {
            k.pod_field("unhealthy", "/status/containerStatuses/0/restartCount")
                .and_then(|v| v.as_i64())
                .unwrap_or(0)
                >= 1
        },
    );
    let events = k.run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=unhealthy",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");

    // Readiness follows the probe, both ways.
    let ready = |k: &Kubectl| {
        k.pod("flappy")
            .and_then(|p| {
                p.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| c["status"] == "True")
            })
            .unwrap_or(false)
    };
    wait_for("flappy to become Ready", Duration::from_secs(60), || {
        ready(&k)
    });
    wait_for(
        "flappy to become not Ready",
        Duration::from_secs(30),
        || !ready(&k),
    );
    wait_for(
        "flappy to become Ready again",
        Duration::from_secs(30),
        || ready(&k),
    );

    // Deleting: SIGTERM, grace, SIGKILL, then the objects go and nothing is left behind.
    let uids: Vec<String> = ["shared", "crash", "unhealthy", "flappy"]
        .iter()
        .map(|n| {
            k.pod_field(n, "/metadata/uid")
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // Before the object goes, the agent posts the stopped state (Ready=False), as the
    // kubelet does: `kubectl wait --for=condition=Ready=false` sees it.
    k.run(&[
        "wait",
        "--for=condition=Ready",
        "pod/shared",
        "--timeout=30s",
    ]);
    let mut not_ready = Command::new(skiff_e2e::kubectl_bin())
        .args([
            "wait",
            "--for=condition=Ready=false",
            "pod/shared",
            "--timeout=60s",
            "-v=6",
        ])
        .env("KUBECONFIG", &c.state.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Delete only once its watch is open (-v=6 logs the watch request's response), so the
    // change cannot slip between its first read and its watch.
    let mut stderr = std::io::BufReader::new(not_ready.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "kubectl wait ended before watching: {seen}");
        seen.push_str(&line);
        if line.contains("watch=true") {
            break;
        }
    }
    k.run(&["delete", "pod", "--all", "--wait=true", "--timeout=60s"]);
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    let status = not_ready.wait().unwrap();
    assert!(
        status.success(),
        "kubectl wait --for=condition=Ready=false: {seen}"
    );
    assert!(k.run(&["get", "pods", "-o", "name"]).trim().is_empty());
    for uid in &uids {
        wait_for("the pod's files to go", Duration::from_secs(20), || {
            !root.join("pods").join(uid).exists()
        });
        for controller in ["memory", "cpu", "pids"] {
            let cg = PathBuf::from(format!("/sys/fs/cgroup/{controller}/skiff/{uid}"));
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
    }
    let links = Command::new("ip")
        .args(["-n", &c.state.nodes[0].netns, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("veth"), "veths left behind: {links}");
    let mounts = read(Path::new("/proc/self/mountinfo"));
    assert!(
        !mounts.contains(&root.display().to_string()),
        "mounts left behind under {}",
        root.display()
    );
}

#[test]
fn restarted_agent_adopts_running_pods_and_cleans_up_deleted_ones() {
    require_root!("network namespaces, containers");
    let mut c = cluster("tpadop", 203, 1);
    let k = Kubectl(c.state.kubeconfig.clone());
    let root = c.state.nodes[0].root_dir.clone();
    k.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: keep}\nspec:\n  nodeName: node-1\n  containers:\n  - {name: web, image: 'kubia:v1'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: gone}\nspec:\n  nodeName: node-1\n  containers:\n  - {name: web, image: 'kubia:v1'}\n",
    );
    let keep = k.wait_phase("keep", "Running", Duration::from_secs(60));
    let gone = k.wait_phase("gone", "Running", Duration::from_secs(60));
    let container_pid = |pod: &Value| -> i64 {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap();
        let record: Value = serde_json::from_str(&read(
            &root.join(format!("pods/{uid}/containers/web/container.json")),
        ))
        .unwrap();
        record["pid"].as_i64().unwrap()
    };
    let pid = container_pid(&keep);
    let ip = pod_ip(&keep);
    cluster::stop_agent(&c.state.nodes[0]);
    // Deleted for good while the agent is away.
    k.run(&["delete", "pod", "gone", "--grace-period=0", "--force"]);
    let gone_uid = gone
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    cluster::start_agent(&mut c.state.nodes[0]).unwrap();
    c.save().unwrap();
    wait_for(
        "the orphaned sandbox to be removed",
        Duration::from_secs(30),
        || !root.join("pods").join(&gone_uid).exists(),
    );
    // The address is released after the sandbox is gone.
    wait_for(
        "the deleted pod's address to be released",
        Duration::from_secs(30),
        || !read(&root.join("network/ipam.json")).contains(&gone_uid),
    );
    let ipam = read(&root.join("network/ipam.json"));
    assert!(
        ipam.contains(&ip),
        "the kept pod's address is still allocated: {ipam}"
    );
    // The running pod was adopted: same process, no restart, still Running and serving.
    let keep = k.wait_phase("keep", "Running", Duration::from_secs(10));
    assert_eq!(container_pid(&keep), pid);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        keep.pointer("/status/containerStatuses/0/restartCount"),
        Some(&Value::from(0))
    );
    // It still serves (asked from another pod).
    k.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe}}\nspec:\n  nodeName: node-1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc {ip} 8080']\n"
    ));
    let probe = k.wait_phase("probe", "Succeeded", Duration::from_secs(60));
    assert!(read(&log_file(&root, &probe, "c", 0)).contains("You've hit keep"));
}

/// With the control plane down, the agent keeps its pods running and restarts a crashed
/// container; when the API server is back, the pod's status catches up (the restart counted)
/// without anything being recreated.
#[test]
fn an_agent_without_its_api_server_keeps_pods_running_and_catches_up() {
    require_root!("network namespaces, containers");
    let mut c = cluster("tpoff", 204, 1);
    let k = Kubectl(c.state.kubeconfig.clone());
    let root = c.state.nodes[0].root_dir.clone();
    k.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: steady}\nspec:\n  nodeName: node-1\n  containers:\n  - {name: web, image: 'kubia:v1'}\n",
    );
    let pod = k.wait_phase("steady", "Running", Duration::from_secs(60));
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let record = root.join(format!("pods/{uid}/containers/web/container.json"));
    let pid =
        || -> Option<i64> { serde_json::from_str::<Value>(&read(&record)).ok()?["pid"].as_i64() };
    let first = pid().expect("a running container");
    // skiff-control listens on the host end of the node network, 172.31.<index>.1.
    let control_addr = std::net::SocketAddr::from(([172, 31, 204, 1], 6443));

    cluster::stop_control(&c.state);
    Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    wait_for(
        "the agent to restart the killed container with no API server",
        Duration::from_secs(60),
        || pid().is_some_and(|p| p != first && Path::new(&format!("/proc/{p}")).exists()),
    );
    let agent_log = read(&c.state.nodes[0].log);
    assert!(!agent_log.contains("panicked"), "{agent_log}");

    cluster::start_control(&mut c.state, control_addr).unwrap();
    c.save().unwrap();
    wait_for(
        "the pod's status to show the restart",
        Duration::from_secs(60),
        || {
            k.pod_field("steady", "/status/containerStatuses/0/restartCount")
                == Some(Value::from(1))
        },
    );
    let pod = k.wait_phase("steady", "Running", Duration::from_secs(30));
    assert_eq!(
        pod.pointer("/metadata/uid").and_then(Value::as_str),
        Some(uid.as_str()),
        "the same pod, not a new one"
    );
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/lastState/terminated/exitCode"),
        Some(&Value::from(137)),
        "the kill is the last state: {pod}"
    );
}

#[test]
fn static_pods_run_and_are_mirrored_into_the_api() {
    require_root!("network namespaces, containers");
    let manifests = tempfile::tempdir().unwrap();
    let manifest = manifests.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: web, image: 'kubia:v1'}\n",
    )
    .unwrap();
    let c = cluster_with(
        "tpstat",
        204,
        1,
        vec![
            "--manifest-dir".into(),
            manifests.path().display().to_string(),
            "--file-check-frequency".into(),
            "1".into(),
        ],
    );
    let k = Kubectl(c.state.kubeconfig.clone());
    let pod = k.wait_phase("web-node-1", "Running", Duration::from_secs(60));
    assert!(
        pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some(),
        "{pod}"
    );
    assert_eq!(
        pod.pointer("/metadata/ownerReferences/0/kind"),
        Some(&Value::from("Node"))
    );
    // A deleted mirror pod comes back.
    let uid = pod["metadata"]["uid"].clone();
    k.run(&["delete", "pod", "web-node-1", "--wait=true"]);
    wait_for(
        "the mirror pod to come back",
        Duration::from_secs(30),
        || {
            k.pod_field("web-node-1", "/metadata/uid")
                .is_some_and(|u| u != uid)
        },
    );
    k.wait_phase("web-node-1", "Running", Duration::from_secs(60));
    // Removing the manifest removes the pod.
    std::fs::remove_file(&manifest).unwrap();
    wait_for("the static pod to go", Duration::from_secs(30), || {
        k.pod("web-node-1").is_none()
    });
}
