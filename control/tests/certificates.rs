//! certificates.k8s.io/v1 CertificateSigningRequests through the HTTP API: the requester
//! recorded, Kubernetes' validation, the spec frozen, `/approval` guarded by the `approve`
//! permission on the signer, `/status` unable to approve, `system:masters` client requests
//! refused, and kubectl's columns.

mod common;

use base64::Engine as _;
use common::csr::{call, condition_types, csr, decide, request_pem, As, CSRS};
use common::{api, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_test_support::eventually;

const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

fn uri(name: &str) -> String {
    format!("{CSRS}/{name}")
}

async fn create(a: &Api, who: As<'_>, body: Value) -> Value {
    let (code, v) = call(a, who, Method::POST, CSRS, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    v
}

/// Lets `user` update `certificatesigningrequests/approval` (what `kubectl certificate
/// approve` writes), without any permission on signers.
async fn may_write_approvals(a: &Api, user: &str) {
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "csr-approval-writer"},
        "rules": [{"apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"],
            "verbs": ["get", "list", "update"]}]});
    let (code, v) = call(
        a,
        As::Admin,
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(role),
    )
    .await;
    assert!(code.is_success() || code == StatusCode::CONFLICT, "{v}");
    bind(
        a,
        &format!("{user}-approval-writer"),
        "csr-approval-writer",
        user,
    )
    .await;
}

async fn bind(a: &Api, name: &str, role: &str, user: &str) {
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]});
    let (code, v) = call(
        a,
        As::Admin,
        Method::POST,
        &format!("{RBAC}/clusterrolebindings"),
        Some(binding),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_csr_records_who_asked_whatever_the_client_claims() {
    let a = api().await;
    bind(&a, "alice-csr", "system:node-bootstrapper", "alice").await;
    let mut body = csr(
        "mine",
        &request_pem("alice", None, &[]),
        CLIENT,
        &["client auth"],
    );
    body["spec"]["username"] = json!("kubernetes-admin");
    body["spec"]["groups"] = json!(["system:masters"]);
    body["spec"]["extra"] = json!({"x": ["y"]});
    body["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
    let created = create(&a, As::User("alice", &["dev"]), body).await;
    assert_eq!(created["spec"]["username"], "alice");
    assert_eq!(
        created["spec"]["groups"],
        json!(["dev", "system:authenticated"])
    );
    assert!(created["spec"].get("extra").is_none());
    assert_eq!(
        created["status"],
        json!({}),
        "nobody creates a pre-approved request"
    );
}

#[tokio::test]
async fn invalid_csrs_get_kubernetes_causes() {
    let a = api().await;
    let (code, status) = call(
        &a,
        As::Admin,
        Method::POST,
        CSRS,
        Some(csr("bad", "not a request", "nodomain", &[])),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let causes: Vec<(&str, &str)> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["field"].as_str().unwrap(), c["message"].as_str().unwrap()))
        .collect();
    assert_eq!(causes.len(), 3, "{causes:?}");
    assert_eq!(causes[0].0, "spec.request");
    assert!(causes[0]
        .1
        .ends_with("PEM block type must be CERTIFICATE REQUEST"));
    assert_eq!(
        causes[1],
        (
            "spec.signerName",
            r#"Invalid value: "nodomain": must be a fully qualified domain and path of the form 'example.com/signer-name'"#
        )
    );
    assert_eq!(
        causes[2],
        ("spec.usages", "Required value: usages must be provided")
    );

    let mut short = csr(
        "short",
        &request_pem("a", None, &[]),
        CLIENT,
        &["client auth"],
    );
    short["spec"]["expirationSeconds"] = json!(60);
    let (code, status) = call(&a, As::Admin, Method::POST, CSRS, Some(short)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "Invalid value: 60: may not specify a duration less than 600 seconds (10 minutes)"
    );
    let legacy = csr(
        "legacy",
        &request_pem("a", None, &[]),
        "kubernetes.io/legacy-unknown",
        &["client auth"],
    );
    let (code, _) = call(&a, As::Admin, Method::POST, CSRS, Some(legacy)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn approving_needs_approve_on_the_signer() {
    let a = api().await;
    create(
        &a,
        As::Admin,
        csr(
            "bob-cert",
            &request_pem("bob", Some("dev"), &[]),
            CLIENT,
            &["client auth"],
        ),
    )
    .await;

    // Without RBAC on /approval: refused before anything else.
    let (code, status) = decide(&a, As::User("carol", &[]), "bob-cert", "Approved").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains(r#"cannot update resource "certificatesigningrequests/approval""#));

    // May write /approval, but not approve for this signer: approving and denying refused.
    may_write_approvals(&a, "carol").await;
    for ty in ["Approved", "Denied"] {
        let (code, status) = decide(&a, As::User("carol", &[]), "bob-cert", ty).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
        assert_eq!(
            status["message"],
            r#"certificatesigningrequests.certificates.k8s.io "bob-cert" is forbidden: user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#
        );
        assert_eq!(status["details"]["group"], "certificates.k8s.io");
    }

    // The signer's approver role makes it possible, for that signer only.
    bind(
        &a,
        "carol-approves-clients",
        "system:certificates.k8s.io:kube-apiserver-client-approver",
        "carol",
    )
    .await;
    let approved = eventually("carol's approval", || async {
        let (code, v) = decide(&a, As::User("carol", &[]), "bob-cert", "Approved").await;
        (code == StatusCode::OK).then_some(v)
    })
    .await;
    assert_eq!(condition_types(&approved), ["Approved"]);
    let condition = &approved["status"]["conditions"][0];
    assert_eq!(condition["reason"], "KubectlApprove");
    assert!(condition["lastUpdateTime"].is_string() && condition["lastTransitionTime"].is_string());

    create(
        &a,
        As::Admin,
        csr(
            "node-cert",
            &request_pem("system:node:n1", Some("system:nodes"), &[]),
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["client auth", "digital signature"],
        ),
    )
    .await;
    let (code, _) = decide(&a, As::User("carol", &[]), "node-cert", "Approved").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "another signer");

    // A wildcard on the signer's domain works for every signer of it.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "approve-all-kubernetes-io"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": ["kubernetes.io/*"], "verbs": ["approve"]}]});
    call(
        &a,
        As::Admin,
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(role),
    )
    .await;
    may_write_approvals(&a, "dave").await;
    bind(&a, "dave-approves", "approve-all-kubernetes-io", "dave").await;
    eventually("dave's approval", || async {
        let (code, _) = decide(&a, As::User("dave", &[]), "node-cert", "Denied").await;
        (code == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn decisions_stay_and_the_spec_never_changes() {
    let a = api().await;
    create(
        &a,
        As::Admin,
        csr(
            "c",
            &request_pem("bob", None, &[]),
            CLIENT,
            &["client auth"],
        ),
    )
    .await;
    let (code, _) = decide(&a, As::Admin, "c", "Approved").await;
    assert_eq!(code, StatusCode::OK);

    // Approved and Denied together: invalid.
    let (code, status) = decide(&a, As::Admin, "c", "Denied").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("Approved and Denied conditions are mutually exclusive"));

    // /status cannot deny (or drop the approval): the decision is kept as it was.
    let mut current = a.get(&uri("c")).await;
    current["status"]["conditions"] = json!([{"type": "Denied", "status": "True"}]);
    let (code, v) = call(
        &a,
        As::Admin,
        Method::PUT,
        &format!("{}/status", uri("c")),
        Some(current),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(condition_types(&v), ["Approved"]);

    // /approval cannot remove it either.
    let mut current = a.get(&uri("c")).await;
    current["status"]["conditions"] = json!([]);
    let (code, status) = call(
        &a,
        As::Admin,
        Method::PUT,
        &format!("{}/approval", uri("c")),
        Some(current),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains(r#"updates may not remove a condition of type "Approved""#));

    // The spec is frozen; labels are not.
    let mut current = a.get(&uri("c")).await;
    current["spec"]["usages"] = json!(["client auth", "digital signature"]);
    let (code, status) = call(&a, As::Admin, Method::PUT, &uri("c"), Some(current)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec");
    let (code, v) = a
        .merge_patch(&uri("c"), json!({"metadata": {"labels": {"team": "a"}}}))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");

    // A certificate may be set once, through /status only, and must be PEM certificates.
    let set = |b64: String| {
        let a = &a;
        async move {
            let mut current = a.get(&uri("c")).await;
            current["status"]["certificate"] = json!(b64);
            call(
                a,
                As::Admin,
                Method::PUT,
                &format!("{}/status", uri("c")),
                Some(current),
            )
            .await
        }
    };
    let (code, status) = set("bm90IGEgY2VydA==".into()).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "status.certificate"
    );
    let dir = tempfile::tempdir().unwrap();
    let pem = |d: &std::path::Path| skiff_control::pki::load_or_create(d, &[]).unwrap().ca_pem;
    let first = base64::engine::general_purpose::STANDARD.encode(pem(dir.path()));
    let (code, v) = set(first.clone()).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let other_dir = tempfile::tempdir().unwrap();
    let second = base64::engine::general_purpose::STANDARD.encode(pem(other_dir.path()));
    let (code, status) = set(second).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("updates may not modify existing certificate content"));
    // Through the object itself the status does not change at all.
    let mut current = a.get(&uri("c")).await;
    current["status"]["certificate"] = json!(null);
    let (code, v) = call(&a, As::Admin, Method::PUT, &uri("c"), Some(current)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["certificate"], json!(first));
}

#[tokio::test]
async fn system_masters_client_requests_are_refused_unless_the_restriction_is_off() {
    let a = api().await;
    let masters = || {
        csr(
            "root",
            &request_pem("kubernetes-admin", Some("system:masters"), &[]),
            CLIENT,
            &["client auth"],
        )
    };
    let (code, status) = call(&a, As::Admin, Method::POST, CSRS, Some(masters())).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        r#"certificatesigningrequests.certificates.k8s.io "root" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"#
    );
    // Other signers are not this plugin's concern (their own rules refuse it when signing).
    let kubelet = csr(
        "kubelet-masters",
        &request_pem("system:node:n1", Some("system:masters"), &[]),
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["client auth"],
    );
    let (code, _) = call(&a, As::Admin, Method::POST, CSRS, Some(kubelet)).await;
    assert_eq!(code, StatusCode::CREATED);

    a.state
        .admission
        .disable("CertificateSubjectRestriction")
        .unwrap();
    let (code, _) = call(&a, As::Admin, Method::POST, CSRS, Some(masters())).await;
    assert_eq!(code, StatusCode::CREATED);
}

#[tokio::test]
async fn kubectl_get_csr_columns() {
    let a = api().await;
    bind(&a, "alice-csr", "system:node-bootstrapper", "alice").await;
    let mut body = csr(
        "short",
        &request_pem("alice", None, &[]),
        CLIENT,
        &["client auth"],
    );
    body["spec"]["expirationSeconds"] = json!(3600);
    create(&a, As::User("alice", &[]), body).await;
    create(
        &a,
        As::Admin,
        csr(
            "plain",
            &request_pem("bob", None, &[]),
            CLIENT,
            &["client auth"],
        ),
    )
    .await;
    decide(&a, As::Admin, "plain", "Approved").await;
    let table = a.table(CSRS).await;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Age",
            "SignerName",
            "Requestor",
            "RequestedDuration",
            "Condition"
        ]
    );
    let row = |name: &str| -> Vec<Value> {
        table["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cells"][0] == name)
            .unwrap()["cells"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(
        row("short")[2..],
        [
            json!(CLIENT),
            json!("alice"),
            json!("60m"),
            json!("Pending")
        ]
    );
    assert_eq!(
        row("plain")[2..],
        [
            json!(CLIENT),
            json!("kubernetes-admin"),
            json!("<none>"),
            json!("Approved")
        ]
    );
    // The short name and the approval subresource are discovered.
    let discovery = a.get("/apis/certificates.k8s.io/v1").await;
    let resources = discovery["resources"].as_array().unwrap();
    let main = resources
        .iter()
        .find(|r| r["name"] == "certificatesigningrequests")
        .unwrap();
    assert_eq!(main["shortNames"], json!(["csr"]));
    for sub in [
        "certificatesigningrequests/status",
        "certificatesigningrequests/approval",
    ] {
        assert!(resources.iter().any(|r| r["name"] == sub), "{sub}");
    }
    // Field selector on the signer.
    let list = a
        .get(&format!(
            "{CSRS}?fieldSelector=spec.signerName%3Dexample.com%2Fnone"
        ))
        .await;
    assert_eq!(list["items"], json!([]));
}
