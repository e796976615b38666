//! The CSR approver and signer against the API in process: a bootstrap token gets a node
//! client certificate, a node renews its own and gets a serving certificate for its own
//! addresses, and the abuse cases stay unapproved or are refused by the signer.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::csr::{call, condition_types, csr, decide, request_pem, As, CSRS};
use common::{api_with_namespaces, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::bootstrap::token::{self, Options, Token};
use skiff_control::client::Context;
use skiff_control::controllers::{csr_approving, csr_signing};
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const NODE_CLIENT_USAGES: &[&str] = &["digital signature", "client auth"];
const SERVING_USAGES: &[&str] = &["digital signature", "server auth"];

struct Cluster {
    api: Api,
    shutdown: CancellationToken,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API with the approver (kubelet-serving approval as configured) and the signer,
/// signing with a fresh cluster CA.
async fn cluster(approve_kubelet_serving: bool) -> Cluster {
    let shutdown = CancellationToken::new();
    let api = api_with_namespaces(shutdown.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = skiff_control::pki::load_or_create(dir.path(), &[]).unwrap();
    let ctx = Context::new(api.client(), shutdown.clone());
    tokio::spawn(csr_signing::run(
        ctx.clone(),
        csr_signing::Config {
            ca: Some(csr_signing::Ca {
                cert_pem: creds.ca_pem.clone(),
                key_pem: creds.ca_key_pem.clone(),
            }),
            duration: Duration::from_secs(24 * 3600),
        },
    ));
    tokio::spawn(csr_approving::run(
        ctx,
        csr_approving::Config {
            approve_kubelet_serving,
        },
    ));
    Cluster {
        api,
        shutdown,
        ca_pem: creds.ca_pem,
        _dir: dir,
    }
}

async fn post(a: &Api, who: As<'_>, body: Value) {
    let (code, v) = call(a, who, Method::POST, CSRS, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
}

/// What the Node authorizer grants nodes (Kubernetes' NodeRules: creating and reading CSRs),
/// granted here through RBAC.
async fn nodes_may_create_csrs(a: &Api) {
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "nodes-csr"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-bootstrapper"},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}]});
    a.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        binding,
    )
    .await;
}

/// Creates `body` as `who` once a binding just written lets it.
async fn post_when_allowed(a: &Api, who: As<'_>, body: Value) {
    eventually("the requester may create CSRs", || async {
        let (code, _) = call(a, who, Method::POST, CSRS, Some(body.clone())).await;
        (code == StatusCode::CREATED).then_some(())
    })
    .await;
}

async fn get(a: &Api, name: &str) -> Value {
    a.get(&format!("{CSRS}/{name}")).await
}

/// The CSR once it has its certificate (PEM).
async fn issued(a: &Api, name: &str) -> (Value, String) {
    eventually(&format!("{name} issued"), || async {
        let csr = get(a, name).await;
        let cert = csr["status"]["certificate"].as_str()?.to_owned();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(cert)
            .unwrap();
        Some((csr, String::from_utf8(pem).unwrap()))
    })
    .await
}

/// The CSR once its signer has refused it.
async fn failed(a: &Api, name: &str) -> Value {
    eventually(&format!("{name} failed"), || async {
        let csr = get(a, name).await;
        condition_types(&csr)
            .contains(&"Failed".to_owned())
            .then_some(csr)
    })
    .await
}

/// Creates a sentinel CSR the approver approves, waits for it: by then the approver has
/// had its look at everything created before (it works through them as they come).
async fn approver_caught_up(a: &Api, sentinel: &str) {
    let pem = request_pem("system:node:sentinel", Some("system:nodes"), &[]);
    post(
        a,
        As::Admin,
        csr(sentinel, &pem, KUBELET_CLIENT, NODE_CLIENT_USAGES),
    )
    .await;
    issued(a, sentinel).await;
}

fn certificate(pem: &str) -> (String, Vec<String>, i64) {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().unwrap().to_owned();
    let cn = cert.subject().iter_common_name().map(text).next().unwrap();
    let orgs = cert.subject().iter_organization().map(text).collect();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    (cn, orgs, lifetime)
}

async fn token_secret(a: &Api) -> Token {
    let t = Token::generate();
    let secret = token::secret(
        &t,
        &Options {
            authentication: true,
            ..Options::default()
        },
    );
    a.post("/api/v1/namespaces/kube-system/secrets", secret)
        .await;
    t
}

#[tokio::test]
async fn a_bootstrap_token_gets_a_node_client_certificate() {
    let c = cluster(true).await;
    let a = &c.api;
    let t = token_secret(a).await;
    let pem = request_pem("system:node:n1", Some("system:nodes"), &[]);
    let mut body = csr("node-csr-n1", &pem, KUBELET_CLIENT, NODE_CLIENT_USAGES);
    body["spec"]["expirationSeconds"] = json!(3600);
    post(a, As::Bearer(&t.bearer()), body).await;
    let (csr, cert) = issued(a, "node-csr-n1").await;
    assert_eq!(
        csr["spec"]["username"],
        format!("system:bootstrap:{}", t.id)
    );
    let approved = &csr["status"]["conditions"][0];
    assert_eq!(approved["type"], "Approved");
    assert_eq!(approved["reason"], "AutoApproved");
    assert_eq!(
        approved["message"],
        "Auto approving kubelet client certificate after SubjectAccessReview."
    );
    let (cn, orgs, lifetime) = certificate(&cert);
    assert_eq!(
        (cn.as_str(), orgs),
        ("system:node:n1", vec!["system:nodes".to_owned()])
    );
    // An hour as asked, plus the five minutes the start is backdated.
    assert_eq!(lifetime, 3600 + 300);
    let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(c.ca_pem.as_bytes()).unwrap();
    block
        .parse_x509()
        .unwrap()
        .verify_signature(Some(ca.parse_x509().unwrap().public_key()))
        .unwrap();
}

#[tokio::test]
async fn a_node_renews_its_own_client_certificate() {
    let c = cluster(true).await;
    let a = &c.api;
    nodes_may_create_csrs(a).await;
    let node = As::User("system:node:n1", &["system:nodes"]);
    let pem = request_pem("system:node:n1", Some("system:nodes"), &[]);
    post_when_allowed(
        a,
        node,
        csr("renew-n1", &pem, KUBELET_CLIENT, NODE_CLIENT_USAGES),
    )
    .await;
    let (csr_object, _) = issued(a, "renew-n1").await;
    assert_eq!(
        csr_object["status"]["conditions"][0]["message"],
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    );

    // Another node asking for n1's certificate is not n1 (self) and may not ask for node
    // certificates in general (nodeclient): it waits for an admin.
    let other = As::User("system:node:n2", &["system:nodes"]);
    post(
        a,
        other,
        csr("n2-for-n1", &pem, KUBELET_CLIENT, NODE_CLIENT_USAGES),
    )
    .await;
    approver_caught_up(a, "sentinel-1").await;
    assert_eq!(
        condition_types(&get(a, "n2-for-n1").await),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn abuse_gets_no_certificate() {
    let c = cluster(true).await;
    let a = &c.api;
    let t = token_secret(a).await;
    let bootstrapper = As::Bearer(&t.bearer());

    // A bootstrapper asking for a node certificate in system:masters: not a kubelet client
    // request, so not approved; approved by hand, the signer refuses it.
    let masters = request_pem("system:node:x", Some("system:masters"), &[]);
    post(
        a,
        bootstrapper,
        csr("masters", &masters, KUBELET_CLIENT, NODE_CLIENT_USAGES),
    )
    .await;
    // A bootstrapper asking for a client certificate of another signer: not its business.
    let admin = request_pem("kubernetes-admin", Some("dev"), &[]);
    post(
        a,
        bootstrapper,
        csr("client", &admin, CLIENT, &["client auth"]),
    )
    .await;
    // A user who is not a node asking for a node's certificate: may not (no nodeclient).
    let node = request_pem("system:node:x", Some("system:nodes"), &[]);
    let alice_binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "alice-csr"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-bootstrapper"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]});
    a.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        alice_binding,
    )
    .await;
    let alice = As::User("alice", &[]);
    post_when_allowed(
        a,
        alice,
        csr("alice-node", &node, KUBELET_CLIENT, NODE_CLIENT_USAGES),
    )
    .await;
    // A bootstrapper asking for a serving certificate: never automatic.
    let serving = request_pem("system:node:x", Some("system:nodes"), &["10.0.0.9"]);
    post(
        a,
        bootstrapper,
        csr("serving", &serving, KUBELET_SERVING, SERVING_USAGES),
    )
    .await;

    approver_caught_up(a, "sentinel-2").await;
    for name in ["masters", "client", "alice-node", "serving"] {
        assert_eq!(
            condition_types(&get(a, name).await),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // A bootstrap token cannot approve anything itself.
    let (code, _) = decide(a, bootstrapper, "masters", "Approved").await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    let (code, _) = decide(a, As::Admin, "masters", "Approved").await;
    assert_eq!(code, StatusCode::OK);
    let refused = failed(a, "masters").await;
    let failure = refused["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap();
    assert_eq!(failure["reason"], "SignerValidationFailure");
    assert_eq!(
        failure["message"],
        "subject organization is not system:nodes"
    );
    assert!(refused["status"].get("certificate").is_none());
}

#[tokio::test]
async fn an_approved_api_server_client_request_is_signed_as_asked() {
    let c = cluster(true).await;
    let a = &c.api;
    // Kubernetes refuses system:masters client requests by default (CertificateSubjectRestriction);
    // without it, approval is the only gate, and only who may approve for the signer can.
    a.state
        .admission
        .disable("CertificateSubjectRestriction")
        .unwrap();
    let pem = request_pem("kubernetes-admin", Some("system:masters"), &[]);
    post(a, As::Admin, csr("root", &pem, CLIENT, &["client auth"])).await;
    let writer = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "mallory-edits"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-writer"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "cluster-writer"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "update", "patch"]}]});
    a.post("/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
        .await;
    a.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        writer,
    )
    .await;
    let mallory = As::User("mallory", &[]);
    let (code, status) = eventually("mallory may write approvals", || async {
        let (code, status) = decide(a, mallory, "root", "Approved").await;
        (code != StatusCode::FORBIDDEN
            || status["message"]
                .as_str()
                .is_some_and(|m| m.contains("user not permitted to approve")))
        .then_some((code, status))
    })
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert!(get(a, "root").await["status"]["conditions"].is_null());

    let (code, _) = decide(a, As::Admin, "root", "Approved").await;
    assert_eq!(code, StatusCode::OK);
    let (_, cert) = issued(a, "root").await;
    let (cn, orgs, lifetime) = certificate(&cert);
    assert_eq!(
        (cn.as_str(), orgs),
        ("kubernetes-admin", vec!["system:masters".to_owned()])
    );
    // The signer's maximum (a day here), backdating taken off the end.
    assert_eq!(lifetime, 24 * 3600);
}

async fn node(a: &Api, name: &str, addresses: Value) {
    a.post(
        "/api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
    )
    .await;
    let (code, v) = a
        .merge_patch(
            &format!("/api/v1/nodes/{name}/status"),
            json!({"status": {"addresses": addresses}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_node_gets_a_serving_certificate_for_its_own_addresses() {
    let c = cluster(true).await;
    let a = &c.api;
    node(
        a,
        "n1",
        json!([{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "n1"}]),
    )
    .await;
    nodes_may_create_csrs(a).await;
    let n1 = As::User("system:node:n1", &["system:nodes"]);
    let own = request_pem("system:node:n1", Some("system:nodes"), &["10.0.0.5", "n1"]);
    post_when_allowed(
        a,
        n1,
        csr("serving-n1", &own, KUBELET_SERVING, SERVING_USAGES),
    )
    .await;
    let (approved, cert) = issued(a, "serving-n1").await;
    assert_eq!(
        approved["status"]["conditions"][0]["reason"],
        "AutoApproved"
    );
    let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let parsed = block.parse_x509().unwrap();
    assert!(
        parsed
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    assert_eq!(
        parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len(),
        2
    );

    // An address the node does not report, or a request by another node: not automatic.
    let foreign = request_pem("system:node:n1", Some("system:nodes"), &["10.0.0.99"]);
    post(
        a,
        n1,
        csr("serving-foreign", &foreign, KUBELET_SERVING, SERVING_USAGES),
    )
    .await;
    let n2 = As::User("system:node:n2", &["system:nodes"]);
    post(
        a,
        n2,
        csr("serving-by-n2", &own, KUBELET_SERVING, SERVING_USAGES),
    )
    .await;
    approver_caught_up(a, "sentinel-3").await;
    for name in ["serving-foreign", "serving-by-n2"] {
        assert_eq!(
            condition_types(&get(a, name).await),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // Once the Node reports the address, the pending request is approved.
    let (code, _) = a
        .merge_patch(
            "/api/v1/nodes/n1/status",
            json!({"status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "10.0.0.99"},
                {"type": "Hostname", "address": "n1"}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    issued(a, "serving-foreign").await;
}

#[tokio::test]
async fn serving_certificates_wait_for_an_admin_when_the_policy_is_off() {
    let c = cluster(false).await;
    let a = &c.api;
    node(
        a,
        "n1",
        json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
    )
    .await;
    let own = request_pem("system:node:n1", Some("system:nodes"), &["10.0.0.5"]);
    nodes_may_create_csrs(a).await;
    let n1 = As::User("system:node:n1", &["system:nodes"]);
    post_when_allowed(
        a,
        n1,
        csr("serving-n1", &own, KUBELET_SERVING, SERVING_USAGES),
    )
    .await;
    approver_caught_up(a, "sentinel-4").await;
    assert_eq!(
        condition_types(&get(a, "serving-n1").await),
        Vec::<String>::new()
    );
    decide(a, As::Admin, "serving-n1", "Approved").await;
    issued(a, "serving-n1").await;
}
