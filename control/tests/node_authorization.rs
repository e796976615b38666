//! A node's credential (`system:node:<name>` in `system:nodes`) under the Node authorizer and
//! NodeRestriction: it reads the Secrets, ConfigMaps and ServiceAccount tokens of pods bound
//! to it and nothing else of the kind, and changes only its own Node, Lease and pods.
//! The node is played through impersonation by the admin, which authorizes as the node.

mod common;

use axum::body::Body;
use common::{api, Api, TOKEN};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const NS: &str = "/api/v1/namespaces/default";

/// A request as node `node`.
async fn as_node(
    a: &Api,
    node: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("impersonate-user", format!("system:node:{node}"))
        .header("impersonate-group", "system:nodes")
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    let code = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Two nodes, each with a pod that uses its own Secret, ConfigMap and ServiceAccount.
async fn two_nodes() -> Api {
    let a = api().await;
    for n in ["n1", "n2"] {
        a.post(
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
        )
        .await;
        a.post(
            &format!("{NS}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("secret-{n}")}, "stringData": {"k": "v"}}),
        )
        .await;
        a.post(
            &format!("{NS}/configmaps"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{n}")}, "data": {"k": "v"}}),
        )
        .await;
        a.post(
            &format!("{NS}/serviceaccounts"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("sa-{n}")}}),
        )
        .await;
        a.post(
            &format!("{NS}/pods"),
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{n}")},
            "spec": {"nodeName": n, "serviceAccountName": format!("sa-{n}"),
                "volumes": [{"name": "s", "secret": {"secretName": format!("secret-{n}")}}],
                "containers": [{"name": "c", "image": "nginx",
                    "envFrom": [{"configMapRef": {"name": format!("cm-{n}")}}]}]}}),
        )
        .await;
    }
    a.post(
        &format!("{NS}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "unused"}, "stringData": {"k": "v"}}),
    )
    .await;
    a
}

#[tokio::test]
async fn a_node_reads_only_what_its_pods_use() {
    let a = two_nodes().await;
    for (uri, allowed) in [
        (format!("{NS}/secrets/secret-n1"), true),
        (format!("{NS}/configmaps/cm-n1"), true),
        (format!("{NS}/secrets/secret-n2"), false),
        (format!("{NS}/configmaps/cm-n2"), false),
        (format!("{NS}/secrets/unused"), false),
        (format!("{NS}/secrets"), false),
        // Reading pods, Services and Nodes is every node's (the fixed node rules).
        (format!("{NS}/pods"), true),
        (format!("{NS}/services"), true),
        ("/api/v1/nodes/n2".to_owned(), true),
        // Nothing outside them.
        ("/apis/apps/v1/deployments".to_owned(), false),
    ] {
        let (code, body) = as_node(&a, "n1", Method::GET, &uri, None).await;
        assert_eq!(code == StatusCode::OK, allowed, "GET {uri}: {code} {body}");
        if !allowed {
            assert_eq!(code, StatusCode::FORBIDDEN, "{uri}: {body}");
        }
    }
    let (_, body) = as_node(
        &a,
        "n1",
        Method::GET,
        &format!("{NS}/secrets/secret-n2"),
        None,
    )
    .await;
    assert_eq!(
        body["message"],
        "secrets \"secret-n2\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
    );
    // A watch of one name is a read of that name.
    let (code, _) = as_node(
        &a,
        "n1",
        Method::GET,
        &format!("{NS}/configmaps?fieldSelector=metadata.name%3Dcm-n1&watch=1&timeoutSeconds=1"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn a_node_gets_tokens_only_for_its_own_pods() {
    let a = two_nodes().await;
    let pod = |name: &str| {
        let a = &a;
        let uri = format!("{NS}/pods/{name}");
        async move { a.get(&uri).await }
    };
    let request = |pod: &Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}})
    };
    let mine = pod("pod-n1").await;
    let theirs = pod("pod-n2").await;
    let (code, body) = as_node(
        &a,
        "n1",
        Method::POST,
        &format!("{NS}/serviceaccounts/sa-n1/token"),
        Some(request(&mine)),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, _) = as_node(
        &a,
        "n1",
        Method::POST,
        &format!("{NS}/serviceaccounts/sa-n2/token"),
        Some(request(&theirs)),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "another node's account");
    // Its own pod's account, but bound to the other node's pod (same account via a trick
    // pod is not possible here), or bound to nothing: refused by NodeRestriction.
    let (code, body) = as_node(
        &a,
        "n1",
        Method::POST,
        &format!("{NS}/serviceaccounts/sa-n1/token"),
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("node requested token not bound to a pod"));
}

#[tokio::test]
async fn a_node_changes_only_its_own_objects() {
    let a = two_nodes().await;
    // Its pods' status, not the other node's.
    let status = json!({"status": {"phase": "Running"}});
    let patch = |node: &'static str, pod: &'static str| {
        let a = &a;
        let body = status.clone();
        async move {
            let req = Request::builder()
                .method(Method::PATCH)
                .uri(format!("{NS}/pods/{pod}/status"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("impersonate-user", format!("system:node:{node}"))
                .header("impersonate-group", "system:nodes")
                .header("content-type", "application/merge-patch+json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let resp = a.router.clone().oneshot(req).await.unwrap();
            resp.status()
        }
    };
    assert_eq!(patch("n1", "pod-n1").await, StatusCode::OK);
    assert_eq!(patch("n1", "pod-n2").await, StatusCode::FORBIDDEN);

    // Deleting: its own pod yes, the other's no.
    let (code, body) = as_node(&a, "n1", Method::DELETE, &format!("{NS}/pods/pod-n2"), None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["message"],
        "pods \"pod-n2\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
    );
    let (code, body) = as_node(&a, "n1", Method::DELETE, &format!("{NS}/pods/pod-n1"), None).await;
    assert!(code.is_success(), "{body}");

    // Nodes: its own, not the other's; not its restricted labels.
    let (code, body) = as_node(&a, "n1", Method::PUT, "/api/v1/nodes/n2",
        Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2", "labels": {"x": "y"}}}))).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let node = a.get("/api/v1/nodes/n1").await;
    let mut labelled = node.clone();
    labelled["metadata"]["labels"] = json!({"node-restriction.kubernetes.io/trusted": "true"});
    let (code, body) = as_node(&a, "n1", Method::PUT, "/api/v1/nodes/n1", Some(labelled)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let mut plain = node.clone();
    plain["metadata"]["labels"] = json!({"disk": "ssd"});
    let (code, body) = as_node(&a, "n1", Method::PUT, "/api/v1/nodes/n1", Some(plain)).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Leases: its own heartbeat only.
    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name}, "spec": {"holderIdentity": name}})
    };
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let (code, body) = as_node(&a, "n1", Method::POST, leases, Some(lease("n1"))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, _) = as_node(&a, "n1", Method::POST, leases, Some(lease("n2"))).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = as_node(&a, "n1", Method::GET, &format!("{leases}/n2"), None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // A node makes no ordinary pods.
    let (code, body) = as_node(
        &a,
        "n1",
        Method::POST,
        &format!("{NS}/pods"),
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]}}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("can only create mirror pods"));
}

/// Every node runs the Ingress proxy: it lists and watches Ingresses and IngressClasses, and
/// reads a Secret an Ingress terminates TLS with, but still no other Secret.
#[tokio::test]
async fn a_node_reads_ingresses_and_their_tls_secrets_only() {
    let a = two_nodes().await;
    a.post(
        &format!("{NS}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "site-tls"},
            "stringData": {"tls.crt": "c", "tls.key": "k"}}),
    )
    .await;
    a.post(
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "site"},
                "spec": {"tls": [{"hosts": ["site.example"], "secretName": "site-tls"}],
                    "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}}),
    )
    .await;
    for (uri, allowed) in [
        (format!("{NS}/secrets/site-tls"), true),
        (format!("{NS}/secrets/unused"), false),
        (
            "/apis/networking.k8s.io/v1/ingresses?watch=false".to_owned(),
            true,
        ),
        ("/apis/networking.k8s.io/v1/ingressclasses".to_owned(), true),
        (
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/site".to_owned(),
            false,
        ),
    ] {
        let (code, body) = as_node(&a, "n1", Method::GET, &uri, None).await;
        assert_eq!(code == StatusCode::OK, allowed, "GET {uri}: {code} {body}");
    }
}
