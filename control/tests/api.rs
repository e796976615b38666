//! Component tests: the API router in process (no socket), on a redb store in a tempdir.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skiff_control::apiserver::{app, ApiState};
use skiff_control::store::RedbStore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "test-token";

struct Api {
    router: Router,
    state: Arc<ApiState>,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    api_with_window(100_000).await
}

async fn api_with_window(window: usize) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_with_window(&dir.path().join("store.redb"), window).unwrap();
    let (state, queue) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
    state.ensure_system_namespaces().await.unwrap();
    // No ServiceAccount controller runs here to create the accounts pods need (Kubernetes'
    // integration tests turn the plugin off alike); control/tests/service_accounts.rs runs it.
    state.admission.disable("ServiceAccount").unwrap();
    // The default roles, as the server creates them at start (anonymous /version needs
    // system:public-info-viewer).
    skiff_control::apiserver::auth::rbac::bootstrap::ensure(&state)
        .await
        .unwrap();
    tokio::spawn(skiff_control::controllers::namespace::run(
        state.clone(),
        queue,
    ));
    Api {
        router: app(state.clone()),
        state,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(body.into())
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }
    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, "application/json", Body::empty())
            .await
    }
    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, "application/json", body.to_string())
            .await
    }
    async fn put(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, uri, "application/json", body.to_string())
            .await
    }
    async fn patch(&self, uri: &str, ct: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, uri, ct, body.to_string()).await
    }
    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, uri, "application/json", Body::empty())
            .await
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "kubia:v1"}]}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";

/// A wrong token is a 401; no credentials at all is the anonymous user, whom RBAC grants only
/// the public information: a 403 that names the user, verb, resource and scope.
#[tokio::test]
async fn a_wrong_token_is_401_and_anonymous_requests_are_403() {
    let a = api().await;
    let status_of = |resp: axum::response::Response| async move {
        let code = resp.status();
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        (code, body)
    };
    let req = Request::builder()
        .uri(PODS)
        .header("authorization", "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    let (code, body) = status_of(a.router.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (
            body["kind"].as_str(),
            body["reason"].as_str(),
            body["code"].as_u64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );

    let req = Request::builder().uri(PODS).body(Body::empty()).unwrap();
    let (code, body) = status_of(a.router.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API \
         group \"\" in the namespace \"default\""
    );
    assert_eq!(body["details"]["kind"], "pods");
}

/// `/metrics` (watch counts per resource) is not for anonymous callers, like every path that
/// is not public health or version information.
#[tokio::test]
async fn metrics_need_the_token() {
    let a = api().await;
    let anonymous = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let resp = a.router.clone().oneshot(anonymous).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let authed = Request::builder()
        .uri("/metrics")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = a.router.clone().oneshot(authed).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("apiserver_longrunning_requests"), "{text}");
}

#[tokio::test]
async fn create_sets_server_fields_and_rejects_duplicates() {
    let a = api().await;
    let (code, p) = a.post(PODS, pod("kubia", json!({}))).await;
    assert_eq!(code, StatusCode::CREATED, "{p}");
    assert_eq!(p["metadata"]["namespace"], "default");
    assert!(p["metadata"]["uid"].as_str().unwrap().len() > 30);
    assert!(p["metadata"]["creationTimestamp"].is_string());
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(
        p["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let (code, s) = a.post(PODS, pod("kubia", json!({}))).await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists"))
    );
    // generateName
    let (code, g) = a.post(PODS, json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    assert_eq!(g["metadata"]["name"].as_str().unwrap().len(), 9);
}

#[tokio::test]
async fn bad_input_stores_nothing() {
    let a = api().await;
    let before = a.state.store.revision();
    let (code, s) = a
        .call(Method::POST, PODS, "application/json", "{not json")
        .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    let (code, s) = a
        .post(
            PODS,
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )
        .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid"))
    );
    assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
    let (code, s) = a.post(PODS, pod("Bad_Name", json!({"bad key": "x"}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["metadata.name", "metadata.labels"]);
    let mut wrong_kind = pod("p", json!({}));
    wrong_kind["kind"] = json!("Service");
    let (code, s) = a.post(PODS, wrong_kind).await;
    assert_eq!(
        (code, s["details"]["causes"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("kind"))
    );
    let (code, _) = a
        .post(
            PODS,
            json!({"metadata": {"name": "p"}, "spec": {"containers": "x"}}),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "wrongly typed fields are a decoding error"
    );
    let (code, s) = a.post("/api/v1/namespaces/default/pods?fieldValidation=Strict", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "imagee": "x"}]}})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers[0].imagee"),
        "{s}"
    );
    let (code, s) = a
        .post("/api/v1/namespaces/nope/pods", pod("p", json!({})))
        .await;
    assert_eq!(
        (code, s["details"]["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("namespaces"))
    );
    let (code, _) = a.get("/api/v1/widgets").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(a.state.store.revision(), before, "nothing was written");
}

#[tokio::test]
async fn yaml_bodies_are_accepted() {
    let a = api().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: b\n";
    let (code, cm) = a
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            yaml,
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{cm}");
    assert_eq!(cm["data"]["a"], "b");
}

#[tokio::test]
async fn list_with_label_field_selectors_and_pages() {
    let a = api().await;
    for (name, labels) in [
        ("a", json!({"app": "kubia", "env": "prod"})),
        ("b", json!({"app": "kubia"})),
        ("c", json!({"app": "other"})),
    ] {
        assert_eq!(a.post(PODS, pod(name, labels)).await.0, StatusCode::CREATED);
    }
    let names = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, l) = a.get(&format!("{PODS}?labelSelector=app%3Dkubia")).await;
    assert_eq!(names(&l), ["a", "b"]);
    assert_eq!(l["kind"], "PodList");
    let (_, l) = a
        .get(&format!("{PODS}?labelSelector=app%20in%20(kubia),!env"))
        .await;
    assert_eq!(names(&l), ["b"]);
    let (_, l) = a
        .get(&format!("{PODS}?fieldSelector=metadata.name%3Dc"))
        .await;
    assert_eq!(names(&l), ["c"]);
    let (_, l) = a
        .get("/api/v1/pods?fieldSelector=status.phase%3DPending")
        .await;
    assert_eq!(names(&l).len(), 3);
    let (code, _) = a.get(&format!("{PODS}?fieldSelector=spec.bogus%3Dx")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = a.get(&format!("{PODS}?labelSelector=a%20b")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // Pages of two, then the rest.
    let (_, p1) = a.get(&format!("{PODS}?limit=2")).await;
    assert_eq!(names(&p1), ["a", "b"]);
    let token = p1["metadata"]["continue"].as_str().unwrap();
    let (_, p2) = a.get(&format!("{PODS}?limit=2&continue={token}")).await;
    assert_eq!(names(&p2), ["c"]);
    assert!(p2["metadata"].get("continue").is_none());
    let (code, _) = a.get(&format!("{PODS}?limit=2&continue=garbage")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn updates_use_optimistic_concurrency_and_keep_status() {
    let a = api().await;
    let (_, created) = a.post(PODS, pod("p", json!({}))).await;
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh["metadata"]["labels"] = json!({"v": "1"});
    fresh["status"] = json!({"phase": "Running"});
    let (code, updated) = a.put(&format!("{PODS}/p"), fresh).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(updated["metadata"]["labels"]["v"], "1");
    assert_eq!(
        updated["status"]["phase"], "Pending",
        "the main resource cannot change status"
    );
    assert!(updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]);
    stale["metadata"]["labels"] = json!({"v": "stale"});
    let (code, s) = a.put(&format!("{PODS}/p"), stale).await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict"))
    );
    // The status subresource changes only status.
    let mut st = updated.clone();
    st["status"] = json!({"phase": "Running"});
    st["metadata"]["labels"] = json!({"v": "ignored"});
    let (code, s) = a.put(&format!("{PODS}/p/status"), st).await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(
        (
            s["status"]["phase"].as_str(),
            s["metadata"]["labels"]["v"].as_str()
        ),
        (Some("Running"), Some("1"))
    );
}

#[tokio::test]
async fn three_patch_kinds_and_scale() {
    let a = api().await;
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kubia"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "kubia"}},
            "template": {"metadata": {"labels": {"app": "kubia"}}, "spec": {"containers": [{"name": "a", "image": "kubia:v1"}, {"name": "b", "image": "b:1"}]}}}});
    let url = "/apis/apps/v1/namespaces/default/deployments/kubia";
    assert_eq!(
        a.post("/apis/apps/v1/namespaces/default/deployments", dep)
            .await
            .0,
        StatusCode::CREATED
    );
    let (code, d) = a.patch(url, "application/strategic-merge-patch+json", json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "kubia:v2"}]}}}})).await;
    assert_eq!(code, StatusCode::OK, "{d}");
    let images: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["kubia:v2", "b:1"]);
    assert_eq!(d["metadata"]["generation"], 2);
    let (_, d) = a
        .patch(
            url,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"tier": "web"}}}),
        )
        .await;
    assert_eq!(d["metadata"]["labels"]["tier"], "web");
    assert_eq!(
        d["metadata"]["generation"], 2,
        "metadata changes do not bump generation"
    );
    let (_, d) = a
        .patch(
            url,
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
        )
        .await;
    assert_eq!(d["spec"]["replicas"], 4);
    let (code, _) = a
        .patch(
            url,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/spec/replicas", "value": 1}]),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, _) = a.patch(url, "text/plain", json!({})).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (code, s) = a
        .patch(
            url,
            "application/merge-patch+json",
            json!({"metadata": {"resourceVersion": "1"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    // Scale subresource.
    let (_, scale) = a.get(&format!("{url}/scale")).await;
    assert_eq!(
        (
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(4), Some("app=kubia"))
    );
    let (code, scale) = a
        .patch(
            &format!("{url}/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 7}}),
        )
        .await;
    assert_eq!(
        (code, scale["spec"]["replicas"].as_i64()),
        (StatusCode::OK, Some(7))
    );
    assert_eq!(a.get(url).await.1["spec"]["replicas"], 7);
    let (code, _) = a
        .patch(
            &format!("{url}/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": -1}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let a = api().await;
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    let url = "/api/v1/namespaces/default/configmaps";
    assert_eq!(a.post(url, cm.clone()).await.0, StatusCode::CREATED);
    let (code, marked) = a.delete(&format!("{url}/held")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        a.get(&format!("{url}/held")).await.0,
        StatusCode::OK,
        "still there while finalized"
    );
    cm = marked;
    cm["metadata"]["finalizers"] = json!([]);
    assert_eq!(a.put(&format!("{url}/held"), cm).await.0, StatusCode::OK);
    assert_eq!(a.get(&format!("{url}/held")).await.0, StatusCode::NOT_FOUND);
    let (code, _) = a.delete(&format!("{url}/held")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let a = api().await;
    assert_eq!(
        a.post("/api/v1/namespaces", json!({"metadata": {"name": "demo"}}))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        a.post("/api/v1/namespaces/demo/pods", pod("p", json!({})))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        a.post(
            "/api/v1/namespaces/demo/configmaps",
            json!({"metadata": {"name": "c"}})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let mut watch = a
        .state
        .store
        .watch("core/namespaces/", a.state.store.revision())
        .await
        .unwrap();
    let (code, ns) = a.delete("/api/v1/namespaces/demo").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(ns["status"]["phase"], "Terminating");
    let (code, s) = a
        .post(
            "/api/v1/namespaces/demo/configmaps",
            json!({"metadata": {"name": "late"}}),
        )
        .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("Forbidden"))
    );
    // Wait for the namespace's DELETED event.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = watch.next().await.unwrap().unwrap();
            if e.key == "core/namespaces//demo"
                && e.kind == skiff_control::store::EventKind::Deleted
            {
                break;
            }
        }
    })
    .await
    .expect("namespace removed");
    assert_eq!(
        a.get("/api/v1/namespaces/demo/pods/p").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/api/v1/namespaces/demo/configmaps/c").await.0,
        StatusCode::NOT_FOUND
    );
    let (code, _) = a.delete("/api/v1/namespaces/default").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tables_have_the_kubectl_columns() {
    let a = api().await;
    a.post(PODS, pod("kubia", json!({}))).await;
    let t = a.table(PODS).await;
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "kubia");
    assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "kubia");
}

#[tokio::test]
async fn discovery_lists_every_resource() {
    let a = api().await;
    let (_, v1) = a.get("/api/v1").await;
    let names: Vec<&str> = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for r in [
        "pods",
        "pods/status",
        "services",
        "endpoints",
        "nodes",
        "events",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "namespaces",
    ] {
        assert!(names.contains(&r), "{r} missing");
    }
    let (_, groups) = a.get("/apis").await;
    let groups: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "apps",
            "authentication.k8s.io",
            "authorization.k8s.io",
            "batch",
            "certificates.k8s.io",
            "networking.k8s.io",
            "discovery.k8s.io",
            "coordination.k8s.io",
            "scheduling.k8s.io",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "metrics.k8s.io"
        ]
    );
    let (_, rbac) = a.get("/apis/rbac.authorization.k8s.io/v1").await;
    let rbac: Vec<(&str, bool)> = rbac["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["namespaced"] == true))
        .collect();
    assert_eq!(
        rbac,
        [
            ("clusterrolebindings", false),
            ("clusterroles", false),
            ("rolebindings", true),
            ("roles", true)
        ]
    );
    let (code, doc) = a.get("/openapi/v3/apis/rbac.authorization.k8s.io/v1").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        doc["components"]["schemas"]["io.k8s.api.rbac.v1.ClusterRole"]
            ["x-kubernetes-group-version-kind"]
            .is_array()
    );
    let (_, apps) = a.get("/apis/apps/v1").await;
    assert!(apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "deployments/scale"));
    let (code, doc) = a.get("/openapi/v3/apis/apps/v1").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
            ["x-kubernetes-group-version-kind"]
            .is_array()
    );
}

/// Reads watch lines from a streaming response until `n` events arrived.
async fn watch_events(a: &Api, uri: &str, n: usize) -> Vec<Value> {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < n {
            let frame = body.frame().await.expect("stream open").unwrap();
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    events.push(serde_json::from_slice(&line).unwrap());
                }
            }
        }
    })
    .await
    .expect("events arrive");
    events
}

#[tokio::test]
async fn watch_from_a_revision_replays_then_follows() {
    let a = api().await;
    let (_, p) = a.post(PODS, pod("w", json!({"app": "a"}))).await;
    let rv = p["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    a.patch(
        &format!("{PODS}/w"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"x": "1"}}}),
    )
    .await;
    a.patch(
        &format!("{PODS}/w"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "b"}}}),
    )
    .await;
    a.post(PODS, pod("other", json!({"app": "a"}))).await;
    a.delete(&format!("{PODS}/other")).await;
    let events = watch_events(
        &a,
        &format!("{PODS}?watch=true&resourceVersion={rv}&labelSelector=app%3Da"),
        4,
    )
    .await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("MODIFIED", "w"),
            ("DELETED", "w"),
            ("ADDED", "other"),
            ("DELETED", "other")
        ]
    );
    // Without a resourceVersion: the current state as ADDED events first.
    let events = watch_events(&a, &format!("{PODS}?watch=1"), 1).await;
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w"))
    );
}

#[tokio::test]
async fn watch_older_than_the_window_is_expired() {
    let a = api_with_window(2).await;
    for i in 0..5 {
        a.post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": format!("c{i}")}}),
        )
        .await;
    }
    let events = watch_events(
        &a,
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        1,
    )
    .await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(
        (
            events[0]["object"]["code"].as_u64(),
            events[0]["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );
}

#[tokio::test]
async fn watch_ahead_of_the_store_is_too_large_and_a_write_that_catches_up_is_seen() {
    let a = Arc::new(api().await);
    let now = a.state.store.revision();
    // Far ahead: after kube-apiserver's 3 s wait, the error its watch cache gives.
    let events = watch_events(
        &a,
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}",
            now + 1000
        ),
        1,
    )
    .await;
    assert_eq!(events[0]["type"], "ERROR", "{events:?}");
    let status = &events[0]["object"];
    assert_eq!(status["code"], 504, "{status}");
    assert_eq!(status["reason"], "Timeout", "{status}");
    assert_eq!(
        status["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
        "{status}"
    );
    assert!(
        status["message"].as_str().unwrap().starts_with(&format!(
            "Timeout: Too large resource version: {}, current: ",
            now + 1000
        )),
        "{status}"
    );
    // One ahead, and the store gets there within the wait: the watch starts and sees the
    // event after it, none missed.
    let watcher = tokio::spawn({
        let uri = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}",
            now + 1
        );
        let a = a.clone();
        async move { watch_events(&a, &uri, 1).await }
    });
    a.post(
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"name": "first"}}),
    )
    .await;
    a.post(
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"name": "second"}}),
    )
    .await;
    let events = watcher.await.unwrap();
    assert_eq!(events[0]["type"], "ADDED", "{events:?}");
    assert_eq!(events[0]["object"]["metadata"]["name"], "second");
}

#[tokio::test]
async fn every_watcher_sees_the_same_order() {
    let a = Arc::new(api().await);
    let rv = a.state.store.revision();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    a.post(
                        "/api/v1/namespaces/default/configmaps",
                        json!({"metadata": {"name": format!("w{w}-{i}")}}),
                    )
                    .await;
                }
            })
        })
        .collect();
    let uri = format!("/api/v1/configmaps?watch=true&resourceVersion={rv}");
    let (e1, e2) = tokio::join!(watch_events(&a, &uri, 40), watch_events(&a, &uri, 40));
    for w in writers {
        w.await.unwrap();
    }
    let order = |es: &[Value]| {
        es.iter()
            .map(|e| {
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (o1, o2) = (order(&e1), order(&e2));
    assert_eq!(o1, o2);
    assert!(
        o1.windows(2).all(|w| w[0] < w[1]),
        "revisions strictly increase"
    );
}

#[tokio::test]
async fn objects_and_revisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let rv_before;
    {
        let store = RedbStore::open(&path).unwrap();
        let (state, _q) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
        state.ensure_system_namespaces().await.unwrap();
        let def = state.registry.find("", "v1", "configmaps").unwrap().clone();
        state
            .create(
                &def,
                Some("default"),
                json!({"metadata": {"name": "keep"}, "data": {"k": "v"}}),
                &Default::default(),
            )
            .await
            .unwrap();
        rv_before = state.store.revision();
    }
    let store = RedbStore::open(&path).unwrap();
    let (state, _q) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
    assert_eq!(state.store.revision(), rv_before);
    state.ensure_system_namespaces().await.unwrap();
    let def = state.registry.find("", "v1", "configmaps").unwrap().clone();
    assert_eq!(
        state.get(&def, Some("default"), "keep").await.unwrap()["data"]["k"],
        "v"
    );
    let w = state
        .create(
            &def,
            Some("default"),
            json!({"metadata": {"name": "next"}}),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(skiff_control::store::object_revision(&w.object) > rv_before);
}

#[tokio::test]
async fn foreground_and_orphan_deletes_leave_the_object_to_the_garbage_collector() {
    let a = api().await;
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    for (name, policy, finalizer) in [
        ("fg", "Foreground", "foregroundDeletion"),
        ("or", "Orphan", "orphan"),
    ] {
        let (code, _) = a
            .post(CMS, json!({"metadata": {"name": name}, "data": {"k": "v"}}))
            .await;
        assert_eq!(code, StatusCode::CREATED);
        let (code, body) = a
            .call(
                Method::DELETE,
                &format!("{CMS}/{name}"),
                "application/json",
                json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy})
                    .to_string(),
            )
            .await;
        assert_eq!(
            code,
            StatusCode::ACCEPTED,
            "a pending deletion is 202: {body}"
        );
        let (code, cm) = a.get(&format!("{CMS}/{name}")).await;
        assert_eq!(
            code,
            StatusCode::OK,
            "kept until the collector removes {finalizer}"
        );
        assert!(cm["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(cm["metadata"]["finalizers"], json!([finalizer]));
        // Removing the finalizer completes the deletion.
        let (code, _) = a
            .patch(
                &format!("{CMS}/{name}"),
                "application/merge-patch+json",
                json!({"metadata": {"finalizers": null}}),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        let (code, _) = a.get(&format!("{CMS}/{name}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
    // Background (and no policy) deletes at once.
    a.post(CMS, json!({"metadata": {"name": "bg"}})).await;
    let (code, _) = a
        .call(
            Method::DELETE,
            &format!("{CMS}/bg?propagationPolicy=Background"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(a.get(&format!("{CMS}/bg")).await.0, StatusCode::NOT_FOUND);
}

const PRIORITY_CLASSES: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";

impl Api {
    /// GETs `uri` as a `meta.k8s.io/v1` Table, as kubectl does.
    async fn table(&self, uri: &str) -> Value {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Body::empty())
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }
}

const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";

/// Ingress and IngressClass: the default class `skiff` is given to an Ingress created without
/// one (DefaultIngressClass admission), kubectl's columns, and a path without a pathType or a
/// backend naming both a Service and a resource is 422 Invalid.
#[tokio::test]
async fn ingresses_get_the_default_class_and_are_validated() {
    let a = api().await;
    a.state.ensure_default_ingress_class().await.unwrap();
    let (code, class) = a
        .get("/apis/networking.k8s.io/v1/ingressclasses/skiff")
        .await;
    assert_eq!(code, StatusCode::OK, "{class}");
    assert_eq!(class["spec"]["controller"], "skiff.dev/ingress");
    let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
    let (code, ing) = a
        .post(
            INGRESSES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web"},
                "spec": {"tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"}],
                    "rules": [{"host": "a.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend}]}}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{ing}");
    assert_eq!(ing["spec"]["ingressClassName"], "skiff");
    assert_eq!(ing["status"], json!({"loadBalancer": {}}));

    let t = a.table(INGRESSES).await;
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Class", "Hosts", "Address", "Ports", "Age"]);
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(
        cells[..5],
        [
            json!("web"),
            json!("skiff"),
            json!("a.example.com"),
            json!(""),
            json!("80, 443")
        ]
    );

    // A class named explicitly is kept.
    let (code, other) = a
        .post(
            INGRESSES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "other"},
                "spec": {"ingressClassName": "nginx", "defaultBackend": backend}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{other}");
    assert_eq!(other["spec"]["ingressClassName"], "nginx");

    let (code, status) = a
        .post(
            INGRESSES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "bad"},
                "spec": {"rules": [{"http": {"paths": [
                    {"path": "/", "backend": backend},
                    {"path": "/x", "pathType": "Prefix", "backend": {
                        "service": {"name": "web", "port": {"number": 80}},
                        "resource": {"kind": "Bucket", "name": "b"}}}]}}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let causes: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "spec.rules[0].http.paths[0].pathType",
            "spec.rules[0].http.paths[1].backend"
        ]
    );
}

/// PriorityClass, the kind added by the recipe "Adding a built-in kind" (one file in
/// `apiserver/kinds/`, one line in `builtins!`): served, printed and validated as Kubernetes.
#[tokio::test]
async fn priority_classes_are_served_printed_and_validated() {
    let a = api().await;
    let (code, pc) = a
        .post(
            PRIORITY_CLASSES,
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "high"}, "value": 1000000, "globalDefault": true,
                "description": "for the important pods"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{pc}");
    assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
    assert!(pc["metadata"].get("namespace").is_none());

    let t = a.table(PRIORITY_CLASSES).await;
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        ["Name", "Value", "Global-Default", "Age", "PreemptionPolicy"]
    );
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(cells[..3], [json!("high"), json!(1000000), json!(true)]);
    assert_eq!(cells[4], "PreemptLowerPriority");

    // A user class above 1e9, and a made-up system class, are 422 Invalid.
    for (name, value, field) in [
        ("too-high", 1_000_000_001_i64, "value"),
        ("system-mine", 10, "metadata.name"),
    ] {
        let (code, status) = a
            .post(
                PRIORITY_CLASSES,
                json!({"metadata": {"name": name}, "value": value}),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
        assert_eq!(status["details"]["causes"][0]["field"], field, "{status}");
    }
    assert_eq!(
        a.get(&format!("{PRIORITY_CLASSES}/too-high")).await.0,
        StatusCode::NOT_FOUND
    );

    // The value is immutable; the description is not.
    let (code, status) = a
        .patch(
            &format!("{PRIORITY_CLASSES}/high"),
            "application/merge-patch+json",
            json!({"value": 5}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "value");
    let (code, pc) = a
        .patch(
            &format!("{PRIORITY_CLASSES}/high"),
            "application/merge-patch+json",
            json!({"description": "changed"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{pc}");
    assert_eq!(pc["value"], 1000000);
}

/// Kinds can be registered and unregistered while the server runs (what custom resources
/// need): the new kind is served at once, and discovery and OpenAPI follow both changes.
#[tokio::test]
async fn a_kind_registered_at_run_time_is_served_and_discovered_until_unregistered() {
    use skiff_control::apiserver::kinds::Strategy;
    use skiff_control::apiserver::registry::{ResourceDef, Subresources};

    /// A custom kind's strategy: every default, but no strategic merge (no merge keys known).
    struct Widget;
    impl Strategy for Widget {
        fn strategic_merge(&self) -> bool {
            false
        }
    }

    let a = api().await;
    const WIDGETS: &str = "/apis/example.com/v1/namespaces/default/widgets";
    assert_eq!(a.get(WIDGETS).await.0, StatusCode::NOT_FOUND);
    let (_, before) = a.get("/openapi/v3").await;
    assert!(before["paths"].get("apis/example.com/v1").is_none());

    a.state
        .registry
        .register(ResourceDef {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            namespaced: true,
            short_names: vec!["wd".into()],
            categories: Vec::new(),
            subresources: Subresources::default(),
            // No typed schema: the object is kept as sent.
            roundtrip: std::sync::Arc::new(Ok),
            schema: None,
            strategy: std::sync::Arc::new(Widget),
            origin: None,
        })
        .unwrap();

    let (code, w) = a
        .post(
            WIDGETS,
            json!({"metadata": {"name": "w1"}, "spec": {"size": 3}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{w}");
    assert_eq!(w["apiVersion"], "example.com/v1");
    assert_eq!(w["kind"], "Widget");
    let (code, list) = a.get(WIDGETS).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "WidgetList");
    assert_eq!(list["items"][0]["spec"]["size"], 3);
    let t = a.table(WIDGETS).await;
    assert_eq!(t["rows"][0]["cells"][0], "w1");

    let (_, groups) = a.get("/apis").await;
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "example.com"));
    let (code, resources) = a.get("/apis/example.com/v1").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(resources["resources"][0]["name"], "widgets");
    assert_eq!(resources["resources"][0]["shortNames"], json!(["wd"]));
    let (_, root) = a.get("/openapi/v3").await;
    assert!(root["paths"].get("apis/example.com/v1").is_some());
    // The hash clients cache documents by changes with the registry.
    assert_ne!(
        root["paths"]["apis/apps/v1"]["serverRelativeURL"],
        before["paths"]["apis/apps/v1"]["serverRelativeURL"]
    );
    let (code, doc) = a.get("/openapi/v3/apis/example.com/v1").await;
    assert_eq!(code, StatusCode::OK);
    assert!(doc["paths"]
        .get("/apis/example.com/v1/namespaces/{namespace}/widgets")
        .is_some());
    // A strategic merge patch needs a kind's merge keys: custom kinds answer 415.
    let (code, _) = a
        .patch(
            &format!("{WIDGETS}/w1"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"size": 4}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert!(a.state.registry.unregister("example.com", "v1", "widgets"));
    assert_eq!(a.get(WIDGETS).await.0, StatusCode::NOT_FOUND);
    assert_eq!(a.get("/apis/example.com/v1").await.0, StatusCode::NOT_FOUND);
    let (_, groups) = a.get("/apis").await;
    assert!(!groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "example.com"));
    let (_, root) = a.get("/openapi/v3").await;
    assert!(root["paths"].get("apis/example.com/v1").is_none());
    assert_eq!(
        a.get("/openapi/v3/apis/example.com/v1").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn continued_pages_read_at_the_first_page_revision_until_it_expires() {
    let a = api().await;
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for name in ["a", "b", "c"] {
        a.post(PODS, pod(name, json!({}))).await;
    }
    let (_, first) = a.get(&format!("{PODS}?limit=2")).await;
    assert_eq!(names(&first), ["a", "b"]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    // Written between the pages: not in the second page, which reads the first page's snapshot.
    a.post(PODS, pod("d", json!({}))).await;
    let (code, rest) = a.get(&format!("{PODS}?limit=2&continue={token}")).await;
    assert_eq!(code, StatusCode::OK, "{rest}");
    assert_eq!(names(&rest), ["c"]);
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    // Once the store lets that revision go, the token expires with a token for the newest state.
    a.state
        .store
        .compact(a.state.store.revision())
        .await
        .unwrap();
    let (code, status) = a.get(&format!("{PODS}?limit=2&continue={token}")).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (StatusCode::GONE, Some("Expired"))
    );
    let fresh = status["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = a.get(&format!("{PODS}?limit=2&continue={fresh}")).await;
    assert_eq!(names(&rest), ["c", "d"]);
}

/// `GET /version/` (the spelling kr8s and other httpx clients use) answers like `/version`,
/// anonymously, as the Kubernetes API server does.
#[tokio::test]
async fn version_answers_with_a_trailing_slash() {
    let a = api().await;
    for path in ["/version", "/version/"] {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = a.router.clone().oneshot(req).await.unwrap();
        let st = resp.status();
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(st, StatusCode::OK, "{path} {body}");
        assert!(
            body["gitVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with('v')),
            "{path}: {body}"
        );
    }
}

/// Discovery documents answer with a trailing slash too (kr8s asks for `/api/` and `/apis/`),
/// the same document as without.
#[tokio::test]
async fn discovery_answers_with_a_trailing_slash() {
    let a = api().await;
    for path in ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1"] {
        let (_, plain) = a.get(path).await;
        let (code, slashed) = a.get(&format!("{path}/")).await;
        assert_eq!(code, StatusCode::OK, "{path}/");
        assert!(plain["kind"].as_str().is_some(), "{path}: {plain}");
        assert_eq!(plain, slashed, "{path}/");
    }
}

/// A new object of a kind with a status comes back (and is stored) with `"status": {}`, as
/// Kubernetes' struct-typed status serializes; clients read `status` right after create.
#[tokio::test]
async fn created_objects_with_a_status_have_an_empty_one() {
    let a = api().await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    });
    let (_, created) = a
        .post("/apis/apps/v1/namespaces/default/deployments", deployment)
        .await;
    assert_eq!(created["status"], json!({}), "{created}");
    let (_, read) = a
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .await;
    assert_eq!(read["status"], json!({}), "{read}");
    // Fields Kubernetes never omits show their zero value.
    let set = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    });
    let (_, created) = a
        .post("/apis/apps/v1/namespaces/default/statefulsets", set)
        .await;
    assert_eq!(
        created["status"],
        json!({"replicas": 0, "availableReplicas": 0}),
        "{created}"
    );
    // A kind without a status gets none.
    let (_, cm) = a
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "c"}, "data": {"a": "b"}}),
        )
        .await;
    assert!(cm.get("status").is_none(), "{cm}");
}

/// Secret data in base64 wrapped at 76 columns (Python's `base64.encodebytes`, kr8s's
/// tests) is accepted, as Go's decoder skips line breaks, and stored unwrapped.
#[tokio::test]
async fn secret_data_may_be_wrapped_base64() {
    let a = api().await;
    let long = "x".repeat(100);
    let wrapped = {
        use std::fmt::Write as _;
        let b64 = base64_encode(long.as_bytes());
        let mut out = String::new();
        for chunk in b64.as_bytes().chunks(76) {
            let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap());
        }
        out
    };
    assert!(wrapped.contains('\n'));
    let (code, s) = a
        .post(
            "/api/v1/namespaces/default/secrets",
            json!({"metadata": {"name": "s"}, "data": {"k": wrapped}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    assert_eq!(s["data"]["k"], base64_encode(long.as_bytes()));
    // Not base64 at all is still refused.
    let (code, _) = a
        .post(
            "/api/v1/namespaces/default/secrets",
            json!({"metadata": {"name": "t"}, "data": {"k": "!!\n!!"}}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
