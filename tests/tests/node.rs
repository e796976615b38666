//! The agent's Node: skiff-agent registers it, heartbeats through its Lease, posts status that
//! kubectl shows, registers again when the Node is deleted, and keeps going across a control
//! plane restart. No privileges needed: no proxy mode, no pods.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_e2e::{agent_bin, wait_for, ControlPlane};

/// The agent process; killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(cp: &ControlPlane) -> Agent {
    let log = std::fs::File::create(cp.dir.path().join("agent.log")).unwrap();
    let child = Command::new(agent_bin())
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(["--node-name", "node-1", "--root-dir"])
        .arg(cp.dir.path().join("agent"))
        .args([
            "--pod-cidr",
            "10.244.1.0/24",
            "--node-ip",
            "127.0.0.1",
            "--node-label",
            "topology.kubernetes.io/zone=a",
            // Fast heartbeats so the test sees several: renew every 0.5 s, status every 1 s.
            "--node-lease-duration-seconds",
            "2",
            "--node-status-update-seconds",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start skiff-agent");
    Agent(child)
}

fn jsonpath(cp: &ControlPlane, args: &[&str], path: &str) -> Option<String> {
    let mut all = args.to_vec();
    let expr = format!("jsonpath={path}");
    all.extend(["-o", &expr]);
    let out = cp.kubectl_output(&all, None);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn renew_time(cp: &ControlPlane) -> Option<String> {
    jsonpath(
        cp,
        &["-n", "kube-node-lease", "get", "lease", "node-1"],
        "{.spec.renewTime}",
    )
    .filter(|t| !t.is_empty())
}

#[test]
fn agent_registers_its_node_and_heartbeats() {
    let cp = ControlPlane::start();
    let mut agent = start_agent(&cp);
    let agent_log = |cp: &ControlPlane| {
        std::fs::read_to_string(cp.dir.path().join("agent.log")).unwrap_or_default()
    };

    let ready = || {
        jsonpath(
            &cp,
            &["get", "node", "node-1"],
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        )
        .as_deref()
            == Some("True")
    };
    // Said with the agent's and the server's logs when it does not happen: a failed run in CI
    // (once, not reproduced) left nothing to read.
    let became_ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("node-1 to be Ready", Duration::from_secs(30), ready)
    }));
    assert!(
        became_ready.is_ok(),
        "node-1 not Ready after 30 s (agent running: {:?})\n--- agent log ---\n{}\n--- control log ---\n{}",
        agent.0.try_wait().map(|s| s.is_none()),
        agent_log(&cp),
        cp.log()
    );
    let table = cp.kubectl(&["get", "nodes"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains(" Ready ")),
        "{table}"
    );
    let node = |path: &str| jsonpath(&cp, &["get", "node", "node-1"], path).unwrap();
    assert_eq!(node("{.spec.podCIDR}"), "10.244.1.0/24");
    assert_eq!(
        node("{.status.addresses[?(@.type==\"InternalIP\")].address}"),
        "127.0.0.1"
    );
    assert_eq!(
        node("{.metadata.labels.topology\\.kubernetes\\.io/zone}"),
        "a"
    );
    assert_eq!(
        node("{.metadata.labels.kubernetes\\.io/hostname}"),
        "node-1"
    );
    let cpus: u32 = node("{.status.capacity.cpu}").parse().unwrap();
    assert!(cpus >= 1);
    assert_eq!(node("{.status.allocatable.pods}"), "110");
    assert!(node("{.status.nodeInfo.kubeletVersion}").starts_with("v1.37"));

    // The Lease is owned by the Node and renewed.
    assert_eq!(
        jsonpath(
            &cp,
            &["-n", "kube-node-lease", "get", "lease", "node-1"],
            "{.metadata.ownerReferences[0].name}"
        )
        .as_deref(),
        Some("node-1")
    );
    let first = renew_time(&cp).expect("a lease");
    wait_for("the lease to be renewed", Duration::from_secs(10), || {
        renew_time(&cp).is_some_and(|t| t > first)
    });
    // So is the Ready condition's heartbeat.
    let beat = node("{.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}");
    wait_for("a newer node heartbeat", Duration::from_secs(10), || {
        jsonpath(
            &cp,
            &["get", "node", "node-1"],
            "{.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}",
        )
        .is_some_and(|t| t > beat)
    });

    // A deleted Node comes back: the agent registers again.
    let uid = node("{.metadata.uid}");
    cp.kubectl(&["delete", "node", "node-1"]);
    wait_for(
        "node-1 to be registered again",
        Duration::from_secs(20),
        || {
            jsonpath(&cp, &["get", "node", "node-1"], "{.metadata.uid}")
                .is_some_and(|u| !u.is_empty() && u != uid)
                && jsonpath(
                    &cp,
                    &["get", "node", "node-1"],
                    "{.status.conditions[?(@.type==\"Ready\")].status}",
                )
                .as_deref()
                    == Some("True")
        },
    );

    // The control plane restarts: heartbeats resume without restarting the agent.
    let before = renew_time(&cp).expect("a lease");
    let cp = cp.restart();
    wait_for(
        "heartbeats after the control plane restart",
        Duration::from_secs(30),
        || renew_time(&cp).is_some_and(|t| t > before),
    );
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent kept running:\n{}",
        agent_log(&cp)
    );

    // SIGTERM stops it cleanly.
    assert!(Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    wait_for(
        "the agent to exit on SIGTERM",
        Duration::from_secs(10),
        || {
            status = agent.0.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(
        status.unwrap().success(),
        "exit status {status:?}:\n{}",
        agent_log(&cp)
    );
}

#[test]
fn agent_without_kubeconfig_says_what_is_missing() {
    let out = Command::new(agent_bin()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubeconfig"), "{err}");
    let out = Command::new(agent_bin())
        .args(["--pod-cidr", "10.244.1.1/24"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 10.244.1.0/24"));
}
