//! Workload controllers with the real kubectl on a one-node local cluster (real pods, so
//! readiness is the agent's): a Deployment rolls out, rolls to a new image, shows its history,
//! rolls back, and deleting it (or a ReplicaSet with --cascade=orphan) does what kubectl users
//! expect. Needs root.

use std::time::Duration;

use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

#[test]
fn kubectl_rollout_status_history_undo_and_cascading_delete() {
    require_root!("network namespaces, containers");
    let c = Guard::test(&Options::test("twork", 211, 1));
    let k = Kubectl(c.state.kubeconfig.clone());

    k.run(&[
        "create",
        "deployment",
        "kubia",
        "--image=kubia:v1",
        "--replicas=3",
    ]);
    let out = k.run(&["rollout", "status", "deployment/kubia", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs = k.items(&["get", "rs", "-l", "app=kubia"]);
    assert_eq!(rs.len(), 1);
    let first_rs = rs[0]["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(rs[0]["status"]["readyReplicas"], 3);
    let deploy_table = k.run(&["get", "deploy", "kubia"]);
    assert!(
        deploy_table.contains("3/3     3            3"),
        "{deploy_table}"
    );

    // Roll to v2 with a change cause.
    k.run(&[
        "annotate",
        "deployment",
        "kubia",
        "kubernetes.io/change-cause=kubia v2",
    ]);
    k.run(&["set", "image", "deployment/kubia", "kubia=kubia:v2"]);
    let out = k.run(&["rollout", "status", "deployment/kubia", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = k.run(&["rollout", "history", "deployment/kubia"]);
    let rows: Vec<&str> = history
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(
        rows[0].starts_with('1') && rows[1].starts_with('2'),
        "{history}"
    );
    assert!(rows[1].contains("kubia v2"), "{history}");
    let pods = k.items(&["get", "pods", "-l", "app=kubia"]);
    assert!(pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .all(|p| p["spec"]["containers"][0]["image"] == "kubia:v2"));

    // Undo: back to the first template, as revision 3, on the first ReplicaSet.
    let out = k.run(&["rollout", "undo", "deployment/kubia"]);
    assert!(out.contains("rolled back"), "{out}");
    let out = k.run(&["rollout", "status", "deployment/kubia", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = k.json(&["get", "deploy", "kubia"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "kubia:v1"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let history = k.run(&["rollout", "history", "deployment/kubia"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let first = k.json(&["get", "rs", &first_rs]);
    assert_eq!(first["spec"]["replicas"], 3);

    // Deleting the Deployment removes its ReplicaSets and pods.
    k.run(&["delete", "deployment", "kubia"]);
    wait_for(
        "kubia's ReplicaSets and pods to go",
        Duration::from_secs(30),
        || {
            k.items(&["get", "rs", "-l", "app=kubia"]).is_empty()
                && k.items(&["get", "pods", "-l", "app=kubia"]).is_empty()
        },
    );

    // --cascade=orphan leaves the pods, without their owner.
    let rs_yaml = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: keep
spec:
  replicas: 2
  selector:
    matchLabels:
      app: keep
  template:
    metadata:
      labels:
        app: keep
    spec:
      containers:
      - name: kubia
        image: kubia:v1
";
    k.apply(rs_yaml);
    wait_for("2 pods of keep", Duration::from_secs(30), || {
        k.items(&["get", "pods", "-l", "app=keep"]).len() == 2
    });
    k.run(&["delete", "rs", "keep", "--cascade=orphan"]);
    wait_for("keep gone, pods orphaned", Duration::from_secs(30), || {
        let gone = k
            .items(&["get", "rs"])
            .iter()
            .all(|r| r["metadata"]["name"] != "keep");
        let pods = k.items(&["get", "pods", "-l", "app=keep"]);
        gone && pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["ownerReferences"].is_null())
    });

    // The story is in the events.
    let events = k.run(&["get", "events"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
    assert!(events.contains("SuccessfulCreate"), "{events}");
}

/// Batch and per-node workloads with real pods on two nodes: a Job runs to completion (and one
/// that fails hits its backoffLimit), a CronJob starts Jobs on its schedule, a DaemonSet puts
/// one pod on each node, and a StatefulSet makes its pods in order with stable names.
#[test]
fn jobs_cronjobs_daemonsets_and_statefulsets_run_real_pods() {
    require_root!("network namespaces, containers");
    let c = Guard::test(&Options::test("tbatch", 212, 2));
    let k = Kubectl(c.state.kubeconfig.clone());

    // The CronJob first: its first run is at the next minute, which the rest of the test
    // mostly covers.
    k.run(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=* * * * *",
        "--",
        "echo",
        "tick",
    ]);

    // A Job of two completions, one at a time, each pod saying where it ran.
    k.apply(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: hello
spec:
  completions: 2
  parallelism: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: hello
        image: busybox
        command: [sh, -c, 'echo hello from $(hostname)']
",
    );
    let out = k.run(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=90s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let job = k.json(&["get", "job", "hello"]);
    assert_eq!(job["status"]["succeeded"], 2, "{job}");
    let pods = k.items(&["get", "pods", "-l", "job-name=hello"]);
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    let logs = k.run(&["logs", "job/hello"]);
    assert!(logs.contains("hello from hello-"), "{logs}");

    // A Job whose pod fails, with no retries: Failed, BackoffLimitExceeded.
    k.apply(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: doomed
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: doomed
        image: busybox
        command: [sh, -c, 'exit 3']
",
    );
    let out = k.run(&[
        "wait",
        "--for=condition=failed",
        "job/doomed",
        "--timeout=90s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let job = k.json(&["get", "job", "doomed"]);
    let failed = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job}");

    // A DaemonSet: one pod on each node.
    k.apply(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: kubia
        image: kubia:v1
",
    );
    let out = k.run(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let nodes: std::collections::BTreeSet<String> = k
        .items(&["get", "pods", "-l", "app=agent"])
        .iter()
        .map(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        ["node-1", "node-2"],
        "one daemon pod per node"
    );

    // A StatefulSet: web-0 then web-1, stable names, a deleted pod comes back as itself.
    k.apply(
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: kubia
        image: kubia:v1
",
    );
    let out = k.run(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(out.contains("roll"), "{out}");
    wait_for("web-0 and web-1 Ready", Duration::from_secs(60), || {
        k.items(&["get", "pods", "-l", "app=web"])
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count()
            == 2
    });
    let web0 = k.json(&["get", "pod", "web-0"]);
    let web1 = k.json(&["get", "pod", "web-1"]);
    let created = |p: &serde_json::Value| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(created(&web0) <= created(&web1), "ordered: {web0} {web1}");
    // Its stable name is its host name: kubia answers with it (asked from web-1's node).
    let node = c
        .state
        .nodes
        .iter()
        .find(|n| n.name == web1["spec"]["nodeName"].as_str().unwrap_or_default())
        .unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.netns))
        .args(["curl", "-s", "-m", "5"])
        .arg(format!(
            "http://{}:8080/",
            web1["status"]["podIP"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "You've hit web-1\n");
    let old_uid = web0["metadata"]["uid"].as_str().unwrap().to_owned();
    k.run(&["delete", "pod", "web-0", "--wait=false"]);
    wait_for("web-0 back as a new pod", Duration::from_secs(60), || {
        k.pod("web-0").is_some_and(|p| {
            p["metadata"]["uid"] != old_uid.as_str() && p["status"]["phase"] == "Running"
        })
    });

    // The CronJob's first scheduled Job runs to completion.
    wait_for("a Job of the CronJob", Duration::from_secs(90), || {
        k.items(&["get", "jobs"]).iter().any(|j| {
            j["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("tick-"))
                && j["status"]["succeeded"] == 1
        })
    });
    let cj = k.json(&["get", "cronjob", "tick"]);
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
}
