//! The create-only review kinds through the HTTP API: authorization.k8s.io/v1 access and rules
//! reviews and authentication.k8s.io/v1 SelfSubjectReview and TokenReview, answered from the
//! server's authenticator and RBAC authorizer and never stored.

mod common;

use axum::body::Body;
use common::{api, Api, TOKEN};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skiff_test_support::eventually;
use tower::ServiceExt;

const AUTHZ: &str = "/apis/authorization.k8s.io/v1";
const AUTHN: &str = "/apis/authentication.k8s.io/v1";

/// POSTs `body` to `uri` without credentials (as `system:anonymous`).
async fn post_anonymous(a: &Api, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    let code = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap())
}

fn ssar(attrs: Value) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs}})
}

fn sar(user: &str, attrs: Value) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:authenticated"], "resourceAttributes": attrs}})
}

async fn created(a: &Api, uri: &str, body: Value) -> Value {
    let (code, v) = a.call(Method::POST, uri, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    v
}

/// Binds `alice` to the `view` ClusterRole in `ns`.
async fn bind_view(a: &Api, ns: &str) {
    a.post(
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-view"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"}}),
    )
    .await;
}

#[tokio::test]
async fn self_subject_access_review_answers_for_the_requester() {
    let a = api().await;
    let review = created(
        &a,
        &format!("{AUTHZ}/selfsubjectaccessreviews"),
        ssar(json!({"verb": "list", "resource": "pods", "namespace": "default"})),
    )
    .await;
    assert_eq!(review["kind"], "SelfSubjectAccessReview");
    assert_eq!(review["spec"]["resourceAttributes"]["verb"], "list");
    assert_eq!(review["status"]["allowed"], true);

    // Anonymous may not even ask (system:basic-user is for authenticated users): 403.
    let (code, _) = post_anonymous(
        &a,
        &format!("{AUTHZ}/selfsubjectaccessreviews"),
        ssar(json!({"verb": "list", "resource": "pods"})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Neither attributes: 422 with Kubernetes' message.
    let (code, status) = a
        .call(
            Method::POST,
            &format!("{AUTHZ}/selfsubjectaccessreviews"),
            Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
    );

    // Non-resource attributes.
    let review = created(
        &a,
        &format!("{AUTHZ}/selfsubjectaccessreviews"),
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}}),
    )
    .await;
    assert_eq!(review["status"]["allowed"], true);
}

#[tokio::test]
async fn subject_access_review_follows_role_bindings() {
    let a = api().await;
    let sars = format!("{AUTHZ}/subjectaccessreviews");
    // Denied before any binding, with RBAC's reason.
    let review = created(
        &a,
        &sars,
        sar(
            "alice",
            json!({"verb": "list", "resource": "pods", "namespace": "default"}),
        ),
    )
    .await;
    assert_eq!(review["status"]["allowed"], false, "{review}");

    bind_view(&a, "default").await;
    let allowed = |verb: &'static str, ns: &'static str| {
        let a = &a;
        let sars = sars.clone();
        async move {
            created(
                a,
                &sars,
                sar(
                    "alice",
                    json!({"verb": verb, "resource": "pods", "namespace": ns}),
                ),
            )
            .await["status"]["allowed"]
                == true
        }
    };
    eventually("alice may list pods in default", || async {
        allowed("list", "default").await.then_some(())
    })
    .await;
    let review = created(
        &a,
        &sars,
        sar(
            "alice",
            json!({"verb": "list", "resource": "pods", "namespace": "default"}),
        ),
    )
    .await;
    assert!(
        review["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("RoleBinding"),
        "{review}"
    );
    assert!(!allowed("create", "default").await);
    assert!(!allowed("list", "kube-system").await);

    // Neither user nor group.
    let (code, status) = a
        .call(
            Method::POST,
            &sars,
            Some(
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.user");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "Invalid value: \"\": at least one of user or group must be specified"
    );
}

#[tokio::test]
async fn local_subject_access_review_is_bound_to_its_namespace() {
    let a = api().await;
    let lsar = |ns: Option<&str>| {
        let mut attrs = json!({"verb": "list", "resource": "pods"});
        if let Some(ns) = ns {
            attrs["namespace"] = json!(ns);
        }
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
            "spec": {"user": "alice", "resourceAttributes": attrs}})
    };
    let uri = format!("{AUTHZ}/namespaces/default/localsubjectaccessreviews");
    let (code, status) = a.call(Method::POST, &uri, Some(lsar(Some("other")))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(
        status["message"],
        "spec.resourceAttributes.namespace must equal namespace: \"other\" != \"default\""
    );
    let review = created(&a, &uri, lsar(None)).await;
    assert_eq!(review["metadata"]["namespace"], "default");
    assert_eq!(review["spec"]["resourceAttributes"]["namespace"], "default");
    assert_eq!(review["status"]["allowed"], false);
}

#[tokio::test]
async fn self_subject_rules_review_lists_the_rules() {
    let a = api().await;
    let review = created(
        &a,
        &format!("{AUTHZ}/selfsubjectrulesreviews"),
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": "default"}}),
    )
    .await;
    assert_eq!(review["status"]["resourceRules"][0]["verbs"], json!(["*"]));
    assert_eq!(review["status"]["incomplete"], false);

    // The rules RBAC gives a user, through the authorizer the review uses.
    bind_view(&a, "default").await;
    let alice = skiff_control::apiserver::auth::UserInfo {
        name: "alice".into(),
        groups: vec!["system:authenticated".into()],
        ..Default::default()
    };
    let has_pods = || async {
        let alice = &alice;
        let status = a
            .state
            .authorizer
            .rules_for(alice, "default")
            .await
            .into_status();
        status
            .resource_rules
            .iter()
            .any(|r| {
                r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == "pods"))
                    && r.verbs.iter().any(|v| v == "list")
                    && !r.verbs.iter().any(|v| v == "create")
            })
            .then_some(())
    };
    eventually("view rules for alice", has_pods).await;

    let (code, status) = a
        .call(
            Method::POST,
            &format!("{AUTHZ}/selfsubjectrulesreviews"),
            Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(status["message"], "no namespace on request");
}

#[tokio::test]
async fn self_subject_review_returns_the_requester() {
    let a = api().await;
    let review = created(
        &a,
        &format!("{AUTHN}/selfsubjectreviews"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await;
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert_eq!(review["status"]["userInfo"]["username"], "kubernetes-admin");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );
    assert!(review["metadata"]["creationTimestamp"].is_string());
}

#[tokio::test]
async fn token_review_authenticates_the_admin_token_for_the_api_audiences() {
    let a = api().await;
    let uri = format!("{AUTHN}/tokenreviews");
    let issuer = a.state.tokens.issuer().to_owned();
    let review = |token: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [issuer, "other"]}})
    };
    let good = created(&a, &uri, review(TOKEN)).await;
    assert_eq!(good["status"]["authenticated"], true);
    assert_eq!(good["status"]["user"]["username"], "kubernetes-admin");
    assert_eq!(good["status"]["audiences"], json!([issuer]));

    // The admin token is not tied to an audience, so it passes only for the API server's own
    // (Kubernetes' audience-agnostic authenticators).
    let elsewhere = created(
        &a,
        &uri,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": TOKEN, "audiences": ["vault"]}}),
    )
    .await;
    assert_eq!(elsewhere["status"]["authenticated"], Value::Null);

    let bad = created(&a, &uri, review("nope")).await;
    assert_eq!(bad["status"]["authenticated"], Value::Null);
    assert_eq!(bad["status"]["error"], "invalid bearer token");

    let (code, status) = a.call(Method::POST, &uri, Some(review(""))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(
        status["message"],
        "token is required for TokenReview in authentication"
    );
}

#[tokio::test]
async fn reviews_are_create_only() {
    let a = api().await;
    for uri in [
        format!("{AUTHZ}/selfsubjectaccessreviews"),
        format!("{AUTHZ}/subjectaccessreviews/x"),
        format!("{AUTHZ}/namespaces/default/localsubjectaccessreviews"),
        format!("{AUTHN}/tokenreviews"),
    ] {
        let (code, status) = a.call(Method::GET, &uri, None).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{uri}: {status}");
        assert_eq!(status["reason"], "MethodNotAllowed");
    }
    let (code, _) = a
        .call(
            Method::DELETE,
            &format!("{AUTHN}/selfsubjectreviews/x"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);

    let discovery = a.get(AUTHZ).await;
    let resources = discovery["resources"].as_array().unwrap();
    for r in resources {
        assert_eq!(r["verbs"], json!(["create"]), "{r}");
    }
    assert_eq!(resources.len(), 4);
    let discovery = a.get(AUTHN).await;
    assert_eq!(discovery["resources"].as_array().unwrap().len(), 2);
}

/// The protobuf bodies kubectl sends (`auth can-i list pods`, `auth whoami`, `auth can-i
/// --list`), built as Go's generated marshallers write them (every string field, even empty).
#[tokio::test]
async fn protobuf_reviews_decode() {
    let a = api().await;
    let bodies = [
        (
            format!("{AUTHZ}/selfsubjectaccessreviews"),
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577123b0a0e0a0012001a0022002a0038004200121f0a1d0a0764656661756c7412046c6973741a0022002a04706f647332003a001a08080012001a0020001a002200",
        ),
        (
            format!("{AUTHN}/selfsubjectreviews"),
            "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a65637452657669657712140a0e0a0012001a0022002a003800420012020a001a002200",
        ),
        (
            format!("{AUTHZ}/selfsubjectrulesreviews"),
            "6b3873000a310a17617574686f72697a6174696f6e2e6b38732e696f2f7631121653656c665375626a65637452756c6573526576696577121f0a0e0a0012001a0022002a003800420012090a0764656661756c741a0218001a002200",
        ),
    ];
    let mut answers = Vec::new();
    for (uri, hex) in &bodies {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .header("accept", "application/json")
            .body(Body::from(bytes))
            .unwrap();
        let resp = a.router.clone().oneshot(req).await.unwrap();
        let code = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(code, StatusCode::CREATED, "{uri}: {v}");
        answers.push(v);
    }
    assert_eq!(answers[0]["spec"]["resourceAttributes"]["resource"], "pods");
    assert_eq!(answers[0]["status"]["allowed"], true);
    assert_eq!(
        answers[1]["status"]["userInfo"]["username"],
        "kubernetes-admin"
    );
    assert_eq!(
        answers[2]["status"]["resourceRules"][0]["verbs"],
        json!(["*"])
    );
}
