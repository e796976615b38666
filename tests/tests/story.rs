//! The seeds' story end to end on a three-node local cluster with the real kubectl: a
//! Deployment behind a ClusterIP and a NodePort Service, reached from a busybox pod; scaling up
//! and down with the endpoints following; a deleted pod replaced; a rolling update to kubia:v2
//! without a failed request; a node lost and its pods re-created elsewhere after the eviction
//! timeout; a rollback right after the node returns, again without a failed request; and the
//! events that tell it. Needs root.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_e2e::cluster::{self, Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

/// Queries of the story's Deployment and Service.
trait StoryQueries {
    fn running_pods(&self) -> Vec<(String, String)>;
}

impl StoryQueries for Kubectl {
    /// Running, not terminating pods of the deployment: name -> node.
    fn running_pods(&self) -> Vec<(String, String)> {
        let list = self.json(&["get", "pods", "-l", "app=kubia"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["status"]["phase"] == "Running")
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

/// The log of a pod's container, read on its node.
fn pod_log(c: &Guard, k: &Kubectl, pod: &str, container: &str) -> String {
    let p = k.json(&["get", "pod", pod]);
    let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
    let Some(n) = c.state.nodes.iter().find(|n| n.name == node) else {
        return String::new();
    };
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let restarts = p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0);
    std::fs::read_to_string(
        n.root_dir
            .join(format!("pods/{uid}/logs/{container}/{restarts}.log")),
    )
    .unwrap_or_default()
}

/// Runs `kubectl <change>` on the Deployment, waits for the rollout and for the client's first
/// answer containing `new_answer`, and asserts that no request through the Service failed
/// meanwhile (with diagnostics of every pod's reachability and the routes if one did).
fn assert_rollout_without_failed_requests(
    c: &Guard,
    k: &Kubectl,
    change: &[&str],
    new_answer: &str,
) {
    let before = pod_log(c, k, "client", "client").lines().count();
    k.run(change);
    k.run(&["rollout", "status", "deployment/kubia", "--timeout=120s"]);
    wait_for(
        &format!("answers saying {new_answer:?}"),
        Duration::from_secs(30),
        || {
            pod_log(c, k, "client", "client")
                .lines()
                .skip(before)
                .any(|l| l.contains(new_answer))
        },
    );
    let during: Vec<String> = pod_log(c, k, "client", "client")
        .lines()
        .skip(before)
        .map(str::to_owned)
        .collect();
    let failed = during
        .iter()
        .filter(|l| !l.contains("You've hit") && !l.contains("This is v2"))
        .count();
    if failed > 0 {
        let mut diag = String::new();
        for p in k.json(&["get", "pods", "-l", "app=kubia"])["items"]
            .as_array()
            .unwrap()
        {
            let ip = p["status"]["podIP"].as_str().unwrap_or_default();
            for n in &c.state.nodes {
                let out = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", n.netns))
                    .args(["curl", "-s", "-m", "2", &format!("http://{ip}:8080/")])
                    .output()
                    .unwrap();
                diag.push_str(&format!(
                    "{} -> {ip}: {:?}\n",
                    n.name,
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
        }
        for n in &c.state.nodes {
            let out = Command::new("ip")
                .args(["-n", &n.netns, "route"])
                .output()
                .unwrap();
            diag.push_str(&format!(
                "{} routes:\n{}",
                n.name,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        panic!(
            "{failed} failed requests during `kubectl {}`: {:?}\npods: {}\nslices: {}\n{diag}",
            change.join(" "),
            &during[..during.len().min(80)],
            k.run(&["get", "pods", "-o", "wide"]),
            k.run(&["get", "endpointslices", "-o", "wide"]),
        );
    }
}

#[test]
fn deployment_behind_a_service_scales_rolls_and_survives_pod_and_node_loss() {
    require_root!("network namespaces, containers, BPF");
    let mut c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        agent_args: vec![
            // Heartbeats often enough that a lost node shows within seconds.
            "--node-lease-duration-seconds".into(),
            "4".into(),
        ],
        control_args: vec![
            "--node-monitor-grace-period".into(),
            "8s".into(),
            "--default-unreachable-toleration-seconds".into(),
            "5".into(),
            "--default-not-ready-toleration-seconds".into(),
            "5".into(),
        ],
        ..Options::test("tstory", 210, 3)
    });
    let k = Kubectl(c.state.kubeconfig.clone());

    // A Deployment of three, spread over the three nodes.
    k.run(&[
        "create",
        "deployment",
        "kubia",
        "--image=kubia:v1",
        "--replicas=3",
    ]);
    wait_for("3 kubia pods Running", Duration::from_secs(90), || {
        k.running_pods().len() == 3
    });
    let nodes: BTreeSet<String> = k.running_pods().into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        nodes.len(),
        3,
        "the scheduler spreads the replicas: {nodes:?}"
    );

    // Exposed as a ClusterIP and a NodePort Service.
    k.run(&[
        "expose",
        "deployment",
        "kubia",
        "--port=80",
        "--target-port=8080",
    ]);
    k.run(&[
        "expose",
        "deployment",
        "kubia",
        "--name=kubia-nodeport",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    let vip = k.json(&["get", "svc", "kubia"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        vip.starts_with("10.96."),
        "ClusterIP allocated from the service range: {vip}"
    );
    let node_port = k.json(&["get", "svc", "kubia-nodeport"])["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap();
    assert!((30000..=32767).contains(&node_port));
    wait_for("3 ready endpoints", Duration::from_secs(30), || {
        k.ready_endpoints("kubia") == 3
    });

    // A busybox client asks the VIP over and over; every answer (or failure) is one line.
    k.run(&[
        "run", "client", "--image=busybox", "--restart=Never", "--", "sh", "-c",
        &format!(
            "while true; do r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {vip} 80 | tail -n 1); echo \"$(date +%T) ${{r:-FAILED}}\"; sleep 0.1; done"
        ),
    ]);
    let pods: BTreeSet<String> = k.running_pods().into_iter().map(|(p, _)| p).collect();
    wait_for(
        "answers from all three pods through the VIP",
        Duration::from_secs(60),
        || {
            let log = pod_log(&c, &k, "client", "client");
            pods.iter()
                .all(|p| log.contains(&format!("You've hit {p}")))
        },
    );

    // The kubernetes Service leads to the API server: its endpoints hold the control plane's
    // address, and a pod connects through the Service address (TLS is not spoken here:
    // busybox has none; a refused or black-holed connect fails nc).
    let ep = k.json(&["get", "endpoints", "kubernetes"]);
    assert_eq!(
        ep["subsets"][0]["addresses"][0]["ip"], "172.31.210.1",
        "{ep}"
    );
    let out = k.run(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        "nc -w 3 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null; echo rc=$?",
    ]);
    assert!(out.trim_end().ends_with("rc=0"), "{out}");

    // The NodePort answers on every node's address, from the host.
    for node in &c.state.nodes {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://{}:{node_port}/", node.ip)])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with("You've hit kubia-"),
            "NodePort on {}: {body:?}",
            node.name
        );
    }

    // Scale up and down: the endpoints follow.
    k.run(&["scale", "deployment", "kubia", "--replicas=5"]);
    wait_for("5 ready endpoints", Duration::from_secs(60), || {
        k.ready_endpoints("kubia") == 5
    });
    k.run(&["scale", "deployment", "kubia", "--replicas=1"]);
    wait_for("1 ready endpoint", Duration::from_secs(60), || {
        k.ready_endpoints("kubia") == 1
    });
    k.run(&["scale", "deployment", "kubia", "--replicas=3"]);
    wait_for("3 running pods", Duration::from_secs(60), || {
        k.running_pods().len() == 3
    });

    // A deleted pod is replaced.
    let (victim, _) = k.running_pods()[0].clone();
    k.run(&["delete", "pod", &victim, "--wait=false"]);
    wait_for("a replacement pod", Duration::from_secs(60), || {
        let pods = k.running_pods();
        pods.len() == 3 && pods.iter().all(|(p, _)| *p != victim)
    });

    // Rolling update to v2 with no failed request through the Service.
    assert_rollout_without_failed_requests(
        &c,
        &k,
        &["set", "image", "deployment/kubia", "kubia=kubia:v2"],
        "This is v2",
    );
    let history = k.run(&["rollout", "history", "deployment/kubia"]);
    assert!(history.contains('2'), "{history}");

    // A node is lost: its pods come back on the others after the eviction timeout.
    let client_node = k.json(&["get", "pod", "client"])["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_owned();
    let lost = c
        .state
        .nodes
        .iter()
        .position(|n| {
            n.name != client_node && k.running_pods().iter().any(|(_, node)| *node == n.name)
        })
        .expect("a node with kubia pods and without the client");
    let lost_name = c.state.nodes[lost].name.clone();
    cluster::stop_agent(&c.state.nodes[lost]);
    let t0 = Instant::now();
    wait_for(
        "the lost node to be NotReady",
        Duration::from_secs(60),
        || {
            let n = k.json(&["get", "node", &lost_name]);
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] != "True")
        },
    );
    wait_for(
        "the pods to be re-created on the other nodes",
        Duration::from_secs(120),
        || {
            let pods = k.running_pods();
            pods.len() == 3 && pods.iter().all(|(_, n)| *n != lost_name)
        },
    );
    eprintln!("pods recovered from the lost node in {:?}", t0.elapsed());
    // The node comes back, and a rollback right then loses no request either (pods land on
    // the returning node while others leave).
    cluster::start_agent(&mut c.state.nodes[lost]).unwrap();
    c.save().unwrap();
    wait_for(
        "the node to be Ready again",
        Duration::from_secs(60),
        || {
            let n = k.json(&["get", "node", &lost_name]);
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        },
    );
    assert_rollout_without_failed_requests(
        &c,
        &k,
        &["rollout", "undo", "deployment/kubia"],
        "You've hit",
    );

    // The events tell the story.
    let events = k.run(&["get", "events"]);
    for reason in [
        "ScalingReplicaSet",
        "SuccessfulCreate",
        "Scheduled",
        "Started",
        "Killing",
    ] {
        assert!(events.contains(reason), "no {reason} event in:\n{events}");
    }
}
