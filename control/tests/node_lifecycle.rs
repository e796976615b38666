//! Component test of the node lifecycle controller with short timings: a Node whose Lease
//! stops is tainted and its pods evicted per their tolerations; a fresh Lease clears the taints;
//! pods of a Node that is gone are deleted.

mod common;

use std::time::Duration;

use common::{api, Api};
use serde_json::{json, Value};
use skiff_control::client::Context;
use skiff_control::controllers::node_lifecycle::{self, UNREACHABLE};
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

async fn renew(a: &Api, name: &str) {
    let uri = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 1, "renewTime": now()}});
    let (code, _) = a.merge_patch(&uri, lease.clone()).await;
    if code == http::StatusCode::NOT_FOUND {
        a.post(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            lease,
        )
        .await;
    }
}

fn bound_pod(name: &str, node: &str, tolerations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
            "containers": [{"name": "c", "image": "kubia:v1"}]}})
}

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect()
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn stale_leases_taint_nodes_and_evict_pods() {
    let a = api().await;
    // Pods get a 1 s unreachable toleration by default in this test.
    a.state.default_tolerations.configure(300, 1);
    for n in ["n1", "n2"] {
        a.post("/api/v1/nodes", node(n)).await;
        renew(&a, n).await;
    }
    a.post(PODS, bound_pod("short", "n1", json!([]))).await;
    a.post(
        PODS,
        bound_pod(
            "forever",
            "n1",
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
        ),
    )
    .await;
    a.post(PODS, bound_pod("healthy", "n2", json!([]))).await;
    a.post(PODS, bound_pod("orphan", "ghost", json!([]))).await;
    let short = a.get(&format!("{PODS}/short")).await;
    assert_eq!(
        short["spec"]["tolerations"][1],
        json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1})
    );

    let shutdown = CancellationToken::new();
    let controller = tokio::spawn(node_lifecycle::run(
        Context::new(a.client(), shutdown.clone()),
        node_lifecycle::Config {
            grace_period: Duration::from_millis(800),
            monitor_period: Duration::from_millis(100),
            ..node_lifecycle::Config::default()
        },
    ));
    // n2's agent keeps renewing; n1's has died.
    let heartbeat = tokio::spawn({
        let client = a.client();
        async move {
            let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
                kube::Api::namespaced(client, "kube-node-lease");
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let patch = json!({"spec": {"renewTime": now()}});
                let _ = leases
                    .patch("n2", &Default::default(), &kube::api::Patch::Merge(&patch))
                    .await;
            }
        }
    });

    let n1 = eventually("n1 tainted", || async {
        let n = a.get("/api/v1/nodes/n1").await;
        (taint_keys(&n).len() == 2).then_some(n)
    })
    .await;
    assert_eq!(
        taint_keys(&n1),
        [
            format!("{UNREACHABLE}:NoSchedule"),
            format!("{UNREACHABLE}:NoExecute")
        ]
    );
    let ready = eventually("n1 Ready Unknown", || async {
        let n = a.get("/api/v1/nodes/n1").await;
        let c = n["status"]["conditions"][0].clone();
        (c["status"] == "Unknown").then_some(c)
    })
    .await;
    assert_eq!(ready["reason"], "NodeStatusUnknown");

    // The pod with the 1 s toleration is deleted (gracefully: n1 still exists), the one
    // tolerating forever stays, and so do n2's.
    eventually("short evicted", || async {
        let p = a.get(&format!("{PODS}/short")).await;
        (p["metadata"]["deletionTimestamp"].is_string() || p["kind"] == "Status").then_some(())
    })
    .await;
    eventually("orphan deleted", || async {
        (a.get(&format!("{PODS}/orphan")).await["kind"] == "Status").then_some(())
    })
    .await;
    // The events are written right after the actions they describe.
    eventually("NodeNotReady and TaintManagerEviction events", || async {
        let events = a.get("/api/v1/namespaces/default/events").await;
        let reasons: Vec<String> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        (reasons.iter().any(|r| r == "TaintManagerEviction")
            && reasons.iter().any(|r| r == "NodeNotReady"))
        .then_some(())
    })
    .await;
    assert!(a.get(&format!("{PODS}/forever")).await["metadata"]["deletionTimestamp"].is_null());
    assert!(a.get(&format!("{PODS}/healthy")).await["metadata"]["deletionTimestamp"].is_null());
    assert!(taint_keys(&a.get("/api/v1/nodes/n2").await).is_empty());

    // n1 comes back.
    renew(&a, "n1").await;
    eventually("n1 untainted", || async {
        taint_keys(&a.get("/api/v1/nodes/n1").await)
            .is_empty()
            .then_some(())
    })
    .await;

    heartbeat.abort();
    shutdown.cancel();
    controller.await.unwrap();
}
