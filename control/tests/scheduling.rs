//! Component tests of scheduling: the pods/binding subresource over the router, and the
//! scheduler running against the API in process (a kube client whose transport is the router,
//! no socket) with a few fake Nodes.

mod common;

use std::time::Duration;

use common::{api, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::client::Context;
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

fn pod(name: &str, cpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kubia:v1",
            "resources": {"requests": {"cpu": cpu}}}]}})
}

fn node(name: &str, cpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn binding_sets_the_node_once() {
    let a = api().await;
    let (code, p) = a.call(Method::POST, PODS, Some(pod("web", "100m"))).await;
    assert_eq!(code, StatusCode::CREATED, "{p}");
    let uri = format!("{PODS}/web/binding");
    let binding = |node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    };
    let (code, s) = a.call(Method::POST, &uri, Some(binding("n1"))).await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    assert_eq!(
        (s["kind"].as_str(), s["status"].as_str()),
        (Some("Status"), Some("Success"))
    );
    let (_, p) = a.call(Method::GET, &format!("{PODS}/web"), None).await;
    assert_eq!(p["spec"]["nodeName"], "n1");
    let scheduled = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .cloned();
    assert_eq!(scheduled.unwrap()["status"], "True");

    let (code, s) = a.call(Method::POST, &uri, Some(binding("n2"))).await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    assert_eq!(s["reason"], "Conflict");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("already assigned to node \"n1\""),
        "{s}"
    );

    a.call(Method::POST, PODS, Some(pod("other", "100m"))).await;
    let other = format!("{PODS}/other/binding");
    let (code, s) = a
        .call(
            Method::POST,
            &other,
            Some(json!({"target": {"kind": "Node"}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "target.name");
    let (code, s) = a
        .call(
            Method::POST,
            &other,
            Some(json!({"metadata": {"name": "web"}, "target": {"name": "n1"}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, _) = a
        .call(
            Method::POST,
            &format!("{PODS}/missing/binding"),
            Some(json!({"metadata": {"name": "missing"}, "target": {"name": "n1"}})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = a.call(Method::GET, &other, None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (_, p) = a.call(Method::GET, &format!("{PODS}/other"), None).await;
    assert!(p["spec"]["nodeName"].is_null(), "{p}");
}

async fn node_of(a: &Api, name: &str) -> Option<String> {
    let (_, p) = a.call(Method::GET, &format!("{PODS}/{name}"), None).await;
    p["spec"]["nodeName"].as_str().map(str::to_owned)
}

async fn events(a: &Api, reason: &str) -> Vec<Value> {
    let (_, list) = a
        .call(Method::GET, "/api/v1/namespaces/default/events", None)
        .await;
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

#[tokio::test]
async fn scheduler_binds_pending_pods_and_retries_unschedulable_ones() {
    let a = api().await;
    for n in ["n1", "n2", "n3"] {
        let (code, body) = a
            .call(Method::POST, "/api/v1/nodes", Some(node(n, "2")))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(skiff_control::scheduler::run(Context::new(
        a.client(),
        shutdown.clone(),
    )));
    for i in 0..6 {
        a.call(Method::POST, PODS, Some(pod(&format!("web-{i}"), "1")))
            .await;
    }
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        let name = format!("web-{i}");
        let n = eventually("web pods bound", || node_of(&a, &name)).await;
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );

    a.call(Method::POST, PODS, Some(pod("big", "3"))).await;
    let failed = eventually("a FailedScheduling event", || async {
        events(&a, "FailedScheduling").await.into_iter().next()
    })
    .await;
    assert_eq!(
        failed["message"],
        "0/3 nodes are available: 3 Insufficient cpu."
    );
    assert_eq!(failed["involvedObject"]["name"], "big");
    assert_eq!(failed["type"], "Warning");
    assert_eq!(node_of(&a, "big").await, None);
    // The pod says why too, as kube-scheduler writes it.
    let condition = eventually("PodScheduled=False on big", || async {
        let (_, p) = a.call(Method::GET, &format!("{PODS}/big"), None).await;
        p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
    })
    .await;
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(
        condition["message"],
        "0/3 nodes are available: 3 Insufficient cpu."
    );

    // A new node that fits makes the scheduler try again.
    a.call(Method::POST, "/api/v1/nodes", Some(node("n4", "4")))
        .await;
    assert_eq!(eventually("big bound", || node_of(&a, "big")).await, "n4");
    let (_, p) = a.call(Method::GET, &format!("{PODS}/big"), None).await;
    let scheduled: Vec<&Value> = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "PodScheduled")
        .collect();
    assert_eq!(scheduled.len(), 1, "{p}");
    assert_eq!(scheduled[0]["status"], "True");
    let scheduled = eventually("Scheduled events", || async {
        let e = events(&a, "Scheduled").await;
        (e.len() == 7).then_some(e)
    })
    .await;
    assert!(scheduled
        .iter()
        .any(|e| e["message"] == "Successfully assigned default/big to n4"));
    assert!(scheduled
        .iter()
        .all(|e| e["source"]["component"] == "default-scheduler"));

    // A pod for another scheduler is left alone.
    let mut other = pod("custom", "1");
    other["spec"]["schedulerName"] = json!("my-scheduler");
    a.call(Method::POST, PODS, Some(other)).await;
    a.call(Method::POST, PODS, Some(pod("after", "100m"))).await;
    eventually("after bound", || node_of(&a, "after")).await;
    assert_eq!(node_of(&a, "custom").await, None);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), scheduler)
        .await
        .expect("the scheduler stops at shutdown")
        .unwrap();
}
