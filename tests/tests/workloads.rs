//! Workload controllers with the real kubectl on a one-node local cluster (real pods, so
//! readiness is the agent's): a Deployment rolls out, rolls to a new image, shows its history,
//! rolls back, and deleting it (or a ReplicaSet with --cascade=orphan) does what kubectl users
//! expect. Needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::{agent_bin, control_bin, wait_for};

#[test]
fn kubectl_rollout_status_history_undo_and_cascading_delete() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPING: needs root (network namespaces, containers)");
        return;
    }
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images");
    let c = Guard::up(&Options {
        name: "twork".into(),
        index: 211,
        nodes: 1,
        dir: PathBuf::new(),
        control_bin: control_bin(),
        agent_bin: agent_bin(),
        images: Some(images),
        proxy_mode: "none".into(),
        agent_args: vec![],
        control_args: vec![],
    })
    .unwrap_or_else(|e| panic!("cluster up: {e:#}"));
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
