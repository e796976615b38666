//! PodSecurity admission through the in-process API: namespace labels choose what pods may
//! be, enforce refuses with Kubernetes' message, warn answers `Warning` headers, workloads
//! only warn, the cluster default and its exemptions, version pins, invalid labels, and the
//! warnings a raised enforce level gives about existing pods.

mod common;

use axum::body::Body;
use common::{api, Api, TOKEN};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skiff_control::apiserver::admission::pod_security::Config;
use tower::ServiceExt;

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// The full restricted:latest refusal of a pod with one privileged container `c`, as
/// kube-apiserver words it.
const PRIVILEGED_VS_RESTRICTED: &str = "privileged (container \"c\" must not set \
securityContext.privileged=true), allowPrivilegeEscalation != false (container \"c\" must set \
securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must \
set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" \
must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set \
securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

/// A request answered with its status, JSON body and `Warning` header texts (unquoted).
async fn send(
    a: &Api,
    method: Method,
    uri: &str,
    content_type: &str,
    body: Value,
) -> (StatusCode, Value, Vec<String>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let warnings = resp
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .map(|h| {
            let text = h.to_str().unwrap();
            let quoted = text.strip_prefix("299 - ").expect("a 299 warning");
            serde_json::from_str::<String>(quoted).expect("a quoted warning text")
        })
        .collect();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap(), warnings)
}

async fn namespace(a: &Api, name: &str, labels: Value) {
    let (code, body, _) = send(
        a,
        Method::POST,
        "/api/v1/namespaces",
        "application/json",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn privileged_pod(name: &str) -> Value {
    pod(
        name,
        json!({"containers": [{"name": "c", "image": "nginx",
                                "securityContext": {"privileged": true}}]}),
    )
}

/// A pod that passes restricted.
fn compliant_pod(name: &str) -> Value {
    pod(
        name,
        json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "nginx", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }),
    )
}

async fn create_pod(a: &Api, ns: &str, body: Value) -> (StatusCode, Value, Vec<String>) {
    send(
        a,
        Method::POST,
        &format!("/api/v1/namespaces/{ns}/pods"),
        "application/json",
        body,
    )
    .await
}

async fn label(a: &Api, ns: &str, labels: Value) -> (StatusCode, Value, Vec<String>) {
    send(
        a,
        Method::PATCH,
        &format!("/api/v1/namespaces/{ns}"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": labels}}),
    )
    .await
}

async fn stored(a: &Api, ns: &str, name: &str) -> bool {
    let (code, _) = a
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            None,
        )
        .await;
    code == StatusCode::OK
}

#[tokio::test]
async fn a_restricted_namespace_refuses_a_privileged_pod_and_admits_a_compliant_one() {
    let a = api().await;
    namespace(&a, "locked", json!({ENFORCE: "restricted"})).await;

    let (code, status, warnings) = create_pod(&a, "locked", privileged_pod("priv")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        format!(
            "pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": \
             {PRIVILEGED_VS_RESTRICTED}"
        )
    );
    assert!(
        warnings.is_empty(),
        "no warnings on a refusal: {warnings:?}"
    );
    assert!(!stored(&a, "locked", "priv").await);

    let (code, body, warnings) = create_pod(&a, "locked", compliant_pod("ok")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(stored(&a, "locked", "ok").await);
}

#[tokio::test]
async fn baseline_refuses_host_network_privileged_and_host_path() {
    let a = api().await;
    namespace(&a, "base", json!({ENFORCE: "baseline"})).await;
    let host = pod(
        "host",
        json!({
            "hostNetwork": true,
            "containers": [{"name": "c", "image": "nginx", "securityContext": {"privileged": true},
                            "volumeMounts": [{"name": "root", "mountPath": "/host"}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }),
    );
    let (code, status, _) = create_pod(&a, "base", host).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods \"host\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces \
         (hostNetwork=true), hostPath volumes (volume \"root\"), privileged (container \"c\" must \
         not set securityContext.privileged=true)"
    );
    // An ordinary pod meets baseline: no refusal and no warning (warn follows enforce).
    let plain = pod(
        "plain",
        json!({"containers": [{"name": "c", "image": "nginx"}]}),
    );
    let (code, body, warnings) = create_pod(&a, "base", plain).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn warn_mode_answers_the_warning_header_and_stores_the_pod() {
    let a = api().await;
    namespace(
        &a,
        "loud",
        json!({"pod-security.kubernetes.io/warn": "restricted"}),
    )
    .await;
    let (code, body, warnings) = create_pod(&a, "loud", privileged_pod("priv")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        warnings,
        [format!(
            "would violate PodSecurity \"restricted:latest\": {PRIVILEGED_VS_RESTRICTED}"
        )]
    );
    assert!(stored(&a, "loud", "priv").await);
}

#[tokio::test]
async fn pod_updates_are_checked_only_when_they_change_an_image() {
    let a = api().await;
    namespace(&a, "later", json!({})).await;
    let (code, body, _) = create_pod(&a, "later", privileged_pod("old")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, _, _) = label(&a, "later", json!({ENFORCE: "restricted"})).await;
    assert_eq!(code, StatusCode::OK);

    // Labels and annotations may change: the pod is not re-evaluated.
    let uri = "/api/v1/namespaces/later/pods/old";
    let (code, body, warnings) = send(
        &a,
        Method::PATCH,
        uri,
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"touched": "yes"}}}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
    // A new image is: refused under the namespace's enforce level.
    let (code, status, _) = send(
        &a,
        Method::PATCH,
        uri,
        "application/strategic-merge-patch+json",
        json!({"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        format!(
            "pods \"old\" is forbidden: violates PodSecurity \"restricted:latest\": \
             {PRIVILEGED_VS_RESTRICTED}"
        )
    );
}

#[tokio::test]
async fn a_deployment_in_a_restricted_namespace_is_admitted_with_warnings() {
    let a = api().await;
    namespace(&a, "apps", json!({ENFORCE: "restricted"})).await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                                     "securityContext": {"privileged": true}}]}}},
    });
    let (code, body, warnings) = send(
        &a,
        Method::POST,
        "/apis/apps/v1/namespaces/apps/deployments",
        "application/json",
        deployment,
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        warnings,
        [format!(
            "would violate PodSecurity \"restricted:latest\": {PRIVILEGED_VS_RESTRICTED}"
        )]
    );
    // Its /scale subresource is not checked.
    let (code, body, warnings) = send(
        &a,
        Method::PATCH,
        "/apis/apps/v1/namespaces/apps/deployments/web/scale",
        "application/merge-patch+json",
        json!({"spec": {"replicas": 3}}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn a_version_pin_evaluates_the_checks_of_that_version() {
    let a = api().await;
    namespace(
        &a,
        "pinned",
        json!({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.24"}),
    )
    .await;
    namespace(&a, "current", json!({ENFORCE: "baseline"})).await;
    // net.ipv4.tcp_keepalive_time joined baseline's safe sysctls in v1.29.
    let keepalive = pod(
        "keepalive",
        json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}]},
               "containers": [{"name": "c", "image": "nginx"}]}),
    );
    let (code, status, _) = create_pod(&a, "pinned", keepalive.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods \"keepalive\" is forbidden: violates PodSecurity \"baseline:v1.24\": forbidden \
         sysctls (net.ipv4.tcp_keepalive_time)"
    );
    let (code, body, _) = create_pod(&a, "current", keepalive).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn the_cluster_default_applies_to_unlabelled_namespaces_except_exempt_ones() {
    let a = api().await;
    a.state
        .admission
        .pod_security
        .configure(Config::from_flags("baseline", &["kube-system".into()]).unwrap());
    let host = |name: &str| {
        pod(
            name,
            json!({"hostNetwork": true, "containers": [{"name": "c", "image": "nginx"}]}),
        )
    };
    let (code, status, _) = create_pod(&a, "default", host("h")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods \"h\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces \
         (hostNetwork=true)"
    );
    let (code, body, warnings) = create_pod(&a, "kube-system", host("h")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(warnings.is_empty(), "{warnings:?}");
    // A namespace's own label overrides the default.
    namespace(&a, "agents", json!({ENFORCE: "privileged"})).await;
    let (code, body, _) = create_pod(&a, "agents", host("h")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // Labelling an exempt namespace says the labels are ignored.
    let (code, _, warnings) = label(&a, "kube-system", json!({ENFORCE: "restricted"})).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        warnings,
        [
            "namespace \"kube-system\" is exempt from Pod Security, and the policy \
          (enforce=restricted:latest) will be ignored"
        ]
    );
}

#[tokio::test]
async fn invalid_labels_are_refused_and_a_stored_one_enforces_restricted() {
    let a = api().await;
    let (code, status, _) = send(
        &a,
        Method::POST,
        "/api/v1/namespaces",
        "application/json",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "bad", "labels": {ENFORCE: "strict"}}}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["message"],
        "Namespace \"bad\" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: \
         Invalid value: \"strict\": must be one of privileged, baseline, restricted"
    );
    namespace(&a, "legacy", json!({})).await;
    let (code, status, _) = label(
        &a,
        "legacy",
        json!({"pod-security.kubernetes.io/warn-version": "1.24"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["message"],
        "Namespace \"legacy\" is invalid: metadata.labels[pod-security.kubernetes.io/warn-version]: \
         Invalid value: \"1.24\": must be \"latest\" or \"v1.x\""
    );

    // A label stored before admission checked it (written to the store directly, as an
    // older server would have): enforce fails closed, as restricted:latest.
    let key = &skiff_control::store::keys::NAMESPACES.key(None, "legacy");
    let mut ns = a
        .state
        .store
        .get(key)
        .await
        .unwrap()
        .expect("stored namespace");
    ns["metadata"]["labels"] = json!({ENFORCE: "strict"});
    let revision = skiff_control::store::object_revision(&ns);
    a.state.store.update(key, Some(revision), ns).await.unwrap();
    let (code, status, _) = create_pod(&a, "legacy", privileged_pod("priv")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        format!(
            "pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": \
             {PRIVILEGED_VS_RESTRICTED}"
        )
    );
    // Other writes to that namespace may keep the same invalid label.
    let (code, body, _) = label(&a, "legacy", json!({"team": "a"})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn raising_the_enforce_level_warns_about_existing_pods() {
    let a = api().await;
    namespace(&a, "busy", json!({})).await;
    for name in ["p2", "p1"] {
        let (code, body, _) = create_pod(&a, "busy", privileged_pod(name)).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let host = pod(
        "net",
        json!({"hostNetwork": true, "containers": [{"name": "c", "image": "nginx"}]}),
    );
    let (code, body, _) = create_pod(&a, "busy", host).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body, _) = create_pod(&a, "busy", compliant_pod("fine")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    let (code, body, warnings) = label(&a, "busy", json!({ENFORCE: "baseline"})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        warnings,
        [
            "existing pods in namespace \"busy\" violate the new PodSecurity enforce level \"baseline:latest\"",
            "net: host namespaces",
            "p1 (and 1 other pod): privileged",
        ]
    );
    // Lowering it, or relabelling with the same level, checks nothing.
    let (code, _, warnings) = label(&a, "busy", json!({ENFORCE: "privileged"})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(warnings.is_empty(), "{warnings:?}");
    let (code, _, warnings) = label(&a, "busy", json!({ENFORCE: "restricted"})).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert_eq!(
        warnings[1],
        "net: host namespaces, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
    let (code, _, warnings) = label(&a, "busy", json!({ENFORCE: "restricted", "team": "x"})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// Workloads are admitted with warnings, but their pods are enforced: the ReplicaSet
/// controller's creates are refused and it records Kubernetes' FailedCreate event.
#[tokio::test]
async fn a_replica_sets_pods_are_refused_and_it_records_failed_create() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
    use kube::api::{ListParams, PostParams};

    let c = common::Cluster::start().await;
    tokio::spawn(skiff_control::manager::run_all(c.context()));
    let namespaces: kube::Api<Namespace> = kube::Api::all(c.client.clone());
    let ns = serde_json::from_value(
        json!({"metadata": {"name": "locked", "labels": {ENFORCE: "restricted"}}}),
    )
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sets: kube::Api<ReplicaSet> = kube::Api::namespaced(c.client.clone(), "locked");
    let rs = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                                     "securityContext": {"privileged": true}}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &rs).await.unwrap();
    let events: kube::Api<Event> = kube::Api::namespaced(c.client.clone(), "locked");
    let message = skiff_test_support::eventually("a FailedCreate event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate"))
            .and_then(|e| e.message)
    })
    .await;
    assert!(
        message.starts_with("Error creating: pods \"web-"),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "\" is forbidden: violates PodSecurity \"restricted:latest\": {PRIVILEGED_VS_RESTRICTED}"
        )),
        "{message}"
    );
    let pods: kube::Api<Pod> = kube::Api::namespaced(c.client.clone(), "locked");
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

/// The check of existing pods is bounded as upstream's: at most 3000 pods (within a second),
/// and the warning says how many of how many were checked.
#[tokio::test]
async fn the_existing_pod_check_stops_at_its_limit() {
    let a = api().await;
    namespace(&a, "crowded", json!({})).await;
    let keys = skiff_control::store::keys::PODS;
    // Written to the store directly: 3001 creates through the API would be slow, and
    // admission is what is under test, not creation.
    for chunk in (0..3001).collect::<Vec<_>>().chunks(250) {
        let writes = chunk.iter().map(|i| {
            let name = format!("p{i:04}");
            let key = keys.key(Some("crowded"), &name);
            let mut pod = privileged_pod(&name);
            pod["metadata"]["namespace"] = json!("crowded");
            let store = a.state.store.clone();
            async move { store.create(&key, pod).await.unwrap() }
        });
        futures::future::join_all(writes).await;
    }
    let (code, body, warnings) = label(&a, "crowded", json!({ENFORCE: "baseline"})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let checked = warnings[0]
        .strip_prefix("new PodSecurity enforce level only checked against the first ")
        .and_then(|rest| rest.strip_suffix(" of 3001 existing pods"))
        .unwrap_or_else(|| panic!("{warnings:?}"));
    // 3000 unless the second ran out first on a loaded machine.
    assert!(checked.parse::<usize>().unwrap() <= 3000, "{warnings:?}");
    assert_eq!(
        warnings[1..],
        [
            "existing pods in namespace \"crowded\" violate the new PodSecurity enforce level \"baseline:latest\"".to_owned(),
            format!("p0000 (and {} other pods): privileged", checked.parse::<usize>().unwrap() - 1),
        ]
    );
}
