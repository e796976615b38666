//! Leader election with real processes: an API server alone (`--no-controllers`) and two
//! `skiff-control controllers` instances with the default timings. Killing the active one
//! (SIGKILL, so it cannot release the Lease) lets the standby take over within 15 s, and the
//! new leader's scheduler binds a pod.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_e2e::{control_bin, wait_for};

/// Children killed on drop, even when the test fails.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(control_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start skiff-control")
}

fn leads(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains("became leader"))
}

#[tokio::test]
async fn a_standby_controller_manager_takes_over_within_15_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let kc = kubeconfig.to_str().unwrap();
    let data = dir.path().join("data");
    let mut procs = Procs(vec![spawn(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--write-kubeconfig",
            kc,
            "--no-controllers",
        ],
        &dir.path().join("server.log"),
    )]);
    wait_for("the API server", Duration::from_secs(30), || {
        kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let logs = [dir.path().join("c0.log"), dir.path().join("c1.log")];
    for log in &logs {
        procs
            .0
            .push(spawn(&["controllers", "--kubeconfig", kc], log));
    }
    wait_for("a leader", Duration::from_secs(20), || {
        logs.iter().any(|l| leads(l))
    });
    let leader = usize::from(!leads(&logs[0]));
    let standby = 1 - leader;
    assert!(!leads(&logs[standby]), "both instances lead");

    // SIGKILL: the leader cannot release the Lease.
    procs.0[1 + leader].kill().unwrap();
    let killed = Instant::now();
    wait_for("the standby to lead", Duration::from_secs(20), || {
        leads(&logs[standby])
    });
    let took = killed.elapsed();
    println!("standby took over after {took:?}");
    assert!(took <= Duration::from_secs(15), "took {took:?}");

    // The new leader schedules.
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1"},
        "status": {"allocatable": {"cpu": "2", "memory": "2Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]}}))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "kubia:v1"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = pods.get("p").await.unwrap();
        if p.spec.and_then(|s| s.node_name).as_deref() == Some("n1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod not scheduled by the new leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
