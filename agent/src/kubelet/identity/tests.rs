//! Component tests of the join, rotation and serving certificate against the fake API over
//! real TLS ([`FakeApi::serve_tls`]): discovery, the bootstrap CSR with the token, approval,
//! the certificate on disk, a client that authenticates as the node and keeps doing so across
//! a rotation, and the refusals (a wrong token, a refused token, a denied or unanswered CSR).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use skiff_test_support::eventually_within;
use tokio_util::sync::CancellationToken;

use super::discovery::{sign_detached_jws, BootstrapToken};
use super::rotation::CertSlot;
use super::{join, pki_dir, store, JoinConfig, JoinError};
use crate::kubelet::fakes::{CsrPolicy, FakeApi};

fn token() -> BootstrapToken {
    "abcdef.0123456789abcdef".parse().unwrap()
}

/// Publishes `kube-public/cluster-info` for `server`, signed with `signer`'s secret.
fn publish_cluster_info(fake: &FakeApi, server: &str, signer: &BootstrapToken) {
    let ca = base64::engine::general_purpose::STANDARD.encode(&fake.ca().pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts: []\ncurrent-context: \"\"\npreferences: {{}}\nusers: []\n"
    );
    fake.put(
        "configmaps",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {
                "kubeconfig": kubeconfig,
                format!("jws-kubeconfig-{}", signer.id): sign_detached_jws(&kubeconfig, signer),
            },
        }),
    );
}

fn config(server: &str, root: &Path, token: Option<BootstrapToken>) -> JoinConfig {
    JoinConfig {
        server: server.to_owned(),
        token,
        ca_file: None,
        node: "n1".into(),
        root_dir: root.to_owned(),
        client_cert_seconds: Some(3600),
        csr_timeout: Duration::from_secs(10),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn fingerprint(cert: &store::KeyedCert) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use sha2::Digest as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    format!("{:x}", sha2::Sha256::digest(der.as_ref()))
}

/// Makes a request with `client` and returns who the fake says sent it (and with which
/// certificate).
async fn whoami(fake: &FakeApi, client: &kube::Client) -> (String, Option<String>) {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    nodes.get_opt("n1").await.unwrap();
    let last = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == "/api/v1/nodes/n1")
        .unwrap();
    (last.caller, last.cert)
}

#[tokio::test]
async fn a_node_joins_with_a_bootstrap_token_and_a_restart_keeps_its_certificate() {
    let fake = FakeApi::default();
    let server = fake.serve_tls().await;
    publish_cluster_info(&fake, &server, &token());
    let dir = tempfile::tempdir().unwrap();

    let me = join(config(&server, dir.path(), Some(token())))
        .await
        .unwrap();

    // Discovery read cluster-info without credentials; the CSR came with the token.
    let requests = fake.requests();
    assert_eq!(
        requests[0].path,
        "/api/v1/namespaces/kube-public/configmaps/cluster-info"
    );
    assert_eq!(requests[0].caller, "anonymous");
    let csrs = fake.csrs();
    assert_eq!(csrs.len(), 1);
    let csr = &csrs[0];
    assert!(csr["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("node-csr-"));
    assert_eq!(
        csr["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(
        csr["spec"]["usages"],
        json!(["digital signature", "client auth"])
    );
    assert_eq!(csr["spec"]["expirationSeconds"], 3600);
    assert_eq!(csr["spec"]["username"], "token:abcdef.0123456789abcdef");

    // The certificate and the CA on disk; the key never readable by others.
    let pki = pki_dir(dir.path());
    let pem = pki.join("kubelet-client-current.pem");
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pem), 0o600);
    assert_eq!(
        std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        fake.ca().pem
    );
    let cert = me.client_cert.current().unwrap();
    assert_eq!(cert.common_name, "system:node:n1");
    assert_eq!(cert.organizations, ["system:nodes"]);
    assert_eq!(
        store::CertStore::new(&pki, store::CLIENT_STEM)
            .load()
            .unwrap(),
        *cert
    );
    assert_eq!(me.ca_pem, fake.ca().pem);

    // The client is the node.
    assert_eq!(
        whoami(&fake, &me.client).await,
        ("system:node:n1".to_owned(), Some(fingerprint(&cert)))
    );

    // A restart without the token: the stored certificate and CA, no discovery, no CSR.
    let before = fake.requests().len();
    let again = join(config(&server, dir.path(), None)).await.unwrap();
    assert_eq!(*again.client_cert.current().unwrap(), *cert);
    assert_eq!(fake.csrs().len(), 1);
    assert_eq!(
        whoami(&fake, &again.client).await.0,
        "system:node:n1".to_owned()
    );
    assert!(fake.requests()[before..]
        .iter()
        .all(|r| r.path == "/api/v1/nodes/n1"));
}

#[tokio::test]
async fn the_client_certificate_is_renewed_with_itself_and_swapped_in_place() {
    let fake = FakeApi::default();
    let server = fake.serve_tls().await;
    publish_cluster_info(&fake, &server, &token());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, dir.path(), Some(token()));
    // A short-lived certificate: renewed 3.5 to 4.5 s after it starts (it is backdated 1 s).
    cfg.client_cert_seconds = Some(4);
    let me = join(cfg).await.unwrap();
    let first = me.client_cert.current().unwrap();
    assert_eq!(first.lifetime(), 5);
    let shutdown = CancellationToken::new();
    let rotation = me.rotate(shutdown.clone());

    let renewed = eventually_within(Duration::from_secs(20), "the renewal", || {
        let slot = me.client_cert.clone();
        let first = first.clone();
        async move { slot.current().filter(|c| **c != *first) }
    })
    .await;
    assert_eq!(renewed.common_name, "system:node:n1");
    // The renewal CSR was authenticated by the old certificate (not the token).
    let csrs = fake.csrs();
    assert!(csrs.len() >= 2, "{csrs:?}");
    assert!(csrs
        .iter()
        .any(|c| c["spec"]["username"] == "system:node:n1"));
    let renewal = fake
        .requests()
        .into_iter()
        .find(|r| r.method == axum::http::Method::POST && r.caller == "system:node:n1")
        .unwrap();
    assert_eq!(renewal.cert, Some(fingerprint(&first)));
    // The same client now presents the new certificate; the file has it too.
    let (caller, cert) = whoami(&fake, &me.client).await;
    assert_eq!(caller, "system:node:n1");
    let now_in_use = me.client_cert.current().unwrap();
    assert_eq!(cert, Some(fingerprint(&now_in_use)));
    assert_ne!(cert, Some(fingerprint(&first)));
    let stored = store::CertStore::new(pki_dir(dir.path()), store::CLIENT_STEM)
        .load()
        .unwrap();
    assert_ne!(stored, *first);
    assert_eq!(
        mode(&pki_dir(dir.path()).join("kubelet-client-current.pem")),
        0o600
    );
    shutdown.cancel();
    rotation.await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_or_a_forged_cluster_info_stops_the_join() {
    let fake = FakeApi::default();
    let server = fake.serve_tls().await;
    let dir = tempfile::tempdir().unwrap();
    // Signed with another secret under the same id: a man in the middle, or a wrong token.
    let forger: BootstrapToken = "abcdef.ffffffffffffffff".parse().unwrap();
    publish_cluster_info(&fake, &server, &forger);
    let err = join(config(&server, dir.path(), Some(token())))
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "cluster-info is not signed for this token: wrong --token or a man in the middle"
    );
    // No signature for this token id at all.
    let other: BootstrapToken = "zzzzzz.0123456789abcdef".parse().unwrap();
    let err = join(config(&server, dir.path(), Some(other)))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("no signature for the token id \"zzzzzz\""),
        "{err}"
    );
    assert!(fake.csrs().is_empty());
    assert!(!pki_dir(dir.path()).join("ca.crt").exists());
}

#[tokio::test]
async fn a_refused_token_says_so() {
    let fake = FakeApi::default();
    let server = fake.serve_tls().await;
    publish_cluster_info(&fake, &server, &token());
    fake.refuse(&token().bearer());
    let dir = tempfile::tempdir().unwrap();
    let err = join(config(&server, dir.path(), Some(token())))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, JoinError::TokenRefused));
    assert_eq!(
        err.to_string(),
        "the API server refused the join token (401 Unauthorized): it is wrong, expired or deleted; create one with `skiff-control token create`"
    );
    // Not HTTPS: refused before anything is sent.
    let err = join(config("http://127.0.0.1:1", dir.path(), Some(token())))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("must be https://HOST:PORT"),
        "{err}"
    );
    // Nothing to authenticate with and no token: said plainly.
    let err = join(config(&server, dir.path(), None)).await.err().unwrap();
    assert!(
        err.to_string()
            .starts_with("no usable client certificate in"),
        "{err}"
    );
}

#[tokio::test]
async fn a_denied_or_unanswered_csr_fails_and_a_late_approval_is_awaited() {
    let fake = FakeApi::default();
    let server = fake.serve_tls().await;
    let dir = tempfile::tempdir().unwrap();
    // With --ca-file there is no discovery.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &fake.ca().pem).unwrap();
    let cfg = |timeout: Duration| JoinConfig {
        ca_file: Some(ca_file.clone()),
        csr_timeout: timeout,
        ..config(&server, &dir.path().join("root"), Some(token()))
    };

    fake.csr_policy(CsrPolicy::Deny(
        "NotAllowed".into(),
        "nodes join on Tuesdays".into(),
    ));
    let err = join(cfg(Duration::from_secs(10))).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("was denied (NotAllowed): nodes join on Tuesdays"),
        "{err}"
    );

    fake.csr_policy(CsrPolicy::Pending);
    let err = join(cfg(Duration::from_secs(1))).await.err().unwrap();
    assert!(
        err.to_string().contains("got no certificate within 1s"),
        "{err}"
    );

    fake.csr_policy(CsrPolicy::ApproveAfter(Duration::from_millis(500)));
    let me = join(cfg(Duration::from_secs(10))).await.unwrap();
    assert_eq!(
        me.client_cert.current().unwrap().common_name,
        "system:node:n1"
    );
    assert!(fake
        .requests()
        .iter()
        .all(|r| !r.path.contains("cluster-info")));
    // The wait watched the CSR.
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.method == axum::http::Method::GET
            && r.path == "/apis/certificates.k8s.io/v1/certificatesigningrequests"));
}

#[tokio::test]
async fn the_serving_certificate_names_the_nodes_addresses() {
    let fake = FakeApi::default();
    let dir = tempfile::tempdir().unwrap();
    let slot = CertSlot::new(None).unwrap();
    let shutdown = CancellationToken::new();
    let task = super::serving::run(
        fake.client(),
        "n1",
        dir.path(),
        Some(7200),
        slot.clone(),
        shutdown.clone(),
    );
    // Not before the Node reports its addresses.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(slot.current().is_none());
    assert!(fake.csrs().is_empty());
    fake.put_node(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": "n1"},
        ]},
    }));
    let cert = eventually_within(Duration::from_secs(20), "the serving certificate", || {
        let slot = slot.clone();
        async move { slot.current() }
    })
    .await;
    assert_eq!(cert.common_name, "system:node:n1");
    assert_eq!(cert.organizations, ["system:nodes"]);
    assert_eq!(cert.sans, ["n1", "127.0.0.1"]);
    let csr = &fake.csrs()[0];
    assert_eq!(csr["spec"]["signerName"], "kubernetes.io/kubelet-serving");
    assert_eq!(
        csr["spec"]["usages"],
        json!(["digital signature", "server auth"])
    );
    assert_eq!(csr["spec"]["expirationSeconds"], 7200);
    let file = pki_dir(dir.path()).join("kubelet-server-current.pem");
    assert_eq!(mode(&file), 0o600);
    // A restart finds it while it still names the same addresses.
    let dns = ["n1".to_owned()];
    let ip = ["127.0.0.1".parse().unwrap()];
    assert_eq!(
        super::serving::stored(dir.path(), "n1", &dns, &ip).unwrap(),
        *cert
    );
    let moved = ["10.9.9.9".parse().unwrap()];
    assert!(super::serving::stored(dir.path(), "n1", &dns, &moved).is_none());
    assert!(super::serving::stored(dir.path(), "n2", &dns, &ip).is_none());
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn token_and_access_reviews_go_to_the_api() {
    use crate::kubelet::auth::{ApiReviewer, Reviewer as _, UserInfo};
    let fake = FakeApi::default();
    fake.token_user("t-alice", "alice", &["devs", "system:authenticated"]);
    fake.allow("alice", "get", "proxy");
    let reviewer = ApiReviewer(fake.client());
    let alice = reviewer.review_token("t-alice").await.unwrap().unwrap();
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.uid, "uid-alice");
    assert_eq!(alice.groups, ["devs", "system:authenticated"]);
    assert_eq!(reviewer.review_token("nope").await.unwrap(), None);
    let review = fake.requests().into_iter().next().unwrap();
    assert_eq!(review.path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(review.body["spec"], json!({"token": "t-alice"}));

    assert!(
        reviewer
            .review_access(&alice, "get", "n1", "proxy")
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !reviewer
            .review_access(&alice, "create", "n1", "proxy")
            .await
            .unwrap()
            .allowed
    );
    let masters = UserInfo::new("root", ["system:masters".to_owned()]);
    assert!(
        reviewer
            .review_access(&masters, "create", "n1", "proxy")
            .await
            .unwrap()
            .allowed
    );
    let sar = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .unwrap();
    assert_eq!(
        sar.body["spec"],
        json!({
            "user": "alice", "uid": "uid-alice", "groups": ["devs", "system:authenticated"],
            "resourceAttributes": {"verb": "get", "group": "", "version": "v1",
                "resource": "nodes", "subresource": "proxy", "name": "n1"},
        })
    );
}
