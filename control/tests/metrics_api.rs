//! metrics.k8s.io/v1beta1 as the API server serves it (the data comes from kubelet scrapes,
//! which the end-to-end test `resource_metrics` drives): discovery, read-only verbs, NotFound
//! for what has no sample, and authorization (viewers of a namespace read its pods' usage,
//! nobody else).

mod common;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::{api, Api};

const PODS: &str = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods";
const NODES: &str = "/apis/metrics.k8s.io/v1beta1/nodes";

/// A request as the user `alice` (impersonated by the admin, as kubectl --as does).
async fn as_alice(api: &Api, method: Method, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", common::TOKEN))
        .header("impersonate-user", "alice")
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    let code = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn discovery_lists_the_two_read_only_resources() {
    let api = api().await;
    let (code, list) = api
        .call(Method::GET, "/apis/metrics.k8s.io/v1beta1", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let resources = list["resources"].as_array().unwrap();
    for (name, kind, namespaced) in [
        ("nodes", "NodeMetrics", false),
        ("pods", "PodMetrics", true),
    ] {
        let r = resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"));
        assert_eq!(r["kind"], kind);
        assert_eq!(r["namespaced"], namespaced);
        assert_eq!(r["verbs"], json!(["get", "list"]));
    }
    let (_, groups) = api.call(Method::GET, "/apis", None).await;
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "metrics.k8s.io"),
        "{groups}"
    );
}

#[tokio::test]
async fn without_samples_lists_are_empty_and_gets_are_not_found() {
    let api = api().await;
    let (code, list) = api.call(Method::GET, PODS, None).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "PodMetricsList");
    assert_eq!(list["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(list["items"], json!([]));
    let (code, status) = api.call(Method::GET, &format!("{NODES}/n1"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{status}");
    assert_eq!(status["reason"], "NotFound");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("nodes.metrics.k8s.io \"n1\" not found"),
        "{status}"
    );
    // A bad selector is a 400, as for any list.
    let (code, status) = api
        .call(
            Method::GET,
            &format!("{PODS}?labelSelector=a%20in%20("),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
}

#[tokio::test]
async fn only_get_and_list_are_served() {
    let api = api().await;
    let cases = [
        (
            Method::POST,
            PODS.to_owned(),
            Some(json!({"metadata": {"name": "x"}})),
        ),
        (Method::DELETE, format!("{PODS}/x"), None),
        (
            Method::PUT,
            format!("{NODES}/n1"),
            Some(json!({"metadata": {"name": "n1"}})),
        ),
        (Method::DELETE, NODES.to_owned(), None),
        (Method::GET, format!("{PODS}?watch=true"), None),
    ];
    for (method, uri, body) in cases {
        let (code, status) = api.call(method.clone(), &uri, body).await;
        assert_eq!(
            code,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {status}"
        );
        assert_eq!(status["kind"], "Status", "{status}");
    }
}

#[tokio::test]
async fn viewers_of_a_namespace_read_its_pods_usage_and_nobody_else() {
    let api = api().await;
    for uri in [PODS, NODES] {
        let (code, status) = as_alice(&api, Method::GET, uri).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{uri}: {status}");
    }
    let (code, binding) = api
        .call(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            Some(json!({
                "metadata": {"name": "alice-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
            })),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{binding}");
    // `view` aggregates system:aggregated-metrics-reader; the RBAC index follows the store.
    skiff_test_support::wait::eventually("alice to read pod metrics in default", || async {
        (as_alice(&api, Method::GET, PODS).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let (code, status) = as_alice(
        &api,
        Method::GET,
        "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods",
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "another namespace: {status}");
    let (code, status) = as_alice(&api, Method::GET, NODES).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "nodes are cluster-scoped: {status}"
    );
}
