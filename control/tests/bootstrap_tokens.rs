//! Bootstrap tokens through the HTTP API: who a token is, what it may do (CSRs and nothing
//! else), when it stops working (expired, deleted, not for authentication, wrong secret), the
//! token cleaner, and `cluster-info` with the bootstrap signer's signatures.

mod common;

use std::time::Duration;

use common::csr::{call, csr, request_pem, As, CSRS};
use common::{api, api_with_namespaces, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::bootstrap::token::{self, Options, Token};
use skiff_control::bootstrap::{cluster_info, jws};
use skiff_control::client::Context;
use skiff_control::controllers::{bootstrap_signer, token_cleaner};
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";

async fn make(a: &Api, options: Options) -> Token {
    let t = Token::generate();
    a.post(SECRETS, token::secret(&t, &options)).await;
    t
}

fn authenticating() -> Options {
    Options {
        authentication: true,
        ..Options::default()
    }
}

async fn whoami(a: &Api, bearer: &str) -> (StatusCode, Value) {
    call(
        a,
        As::Bearer(bearer),
        Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await
}

#[tokio::test]
async fn a_token_is_a_bootstrapper() {
    let a = api().await;
    let t = make(
        &a,
        Options {
            extra_groups: vec!["system:bootstrappers:workers".into()],
            ..authenticating()
        },
    )
    .await;
    let (code, review) = whoami(&a, &t.bearer()).await;
    assert_eq!(code, StatusCode::CREATED, "{review}");
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": format!("system:bootstrap:{}", t.id),
            "groups": ["system:bootstrappers", "system:bootstrappers:workers", "system:authenticated"]})
    );
    // TokenReview knows it too.
    let (code, review) = call(
        &a,
        As::Admin,
        Method::POST,
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": t.bearer()}}),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(review["status"]["authenticated"], true);
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:bootstrap:{}", t.id)
    );
}

#[tokio::test]
async fn a_token_may_ask_for_certificates_and_nothing_else() {
    let a = api().await;
    let t = make(&a, authenticating()).await;
    let me = As::Bearer(&t.bearer());
    let pem = request_pem("system:node:n1", Some("system:nodes"), &[]);
    let body = csr(
        "node-csr-1",
        &pem,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    );
    let (code, v) = call(&a, me, Method::POST, CSRS, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    for (method, uri) in [
        (Method::GET, format!("{CSRS}/node-csr-1")),
        (Method::GET, CSRS.to_owned()),
        (Method::GET, format!("{CSRS}?watch=true&timeoutSeconds=1")),
    ] {
        let (code, v) = call(&a, me, method, &uri, None).await;
        assert_eq!(code, StatusCode::OK, "{uri}: {v}");
    }
    for (method, uri) in [
        (Method::GET, "/api/v1/pods".to_owned()),
        (Method::GET, "/api/v1/nodes".to_owned()),
        (Method::GET, format!("{SECRETS}/{}", t.secret_name())),
        (Method::GET, SECRETS.to_owned()),
        (
            Method::GET,
            "/api/v1/namespaces/default/configmaps".to_owned(),
        ),
        (Method::DELETE, format!("{CSRS}/node-csr-1")),
        (Method::PUT, format!("{CSRS}/node-csr-1/approval")),
        (Method::PUT, format!("{CSRS}/node-csr-1/status")),
        (Method::POST, "/api/v1/namespaces/default/pods".to_owned()),
        (
            Method::POST,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews".to_owned(),
        ),
        (
            Method::GET,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles".to_owned(),
        ),
    ] {
        let (code, v) = call(&a, me, method.clone(), &uri, Some(json!({}))).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains(&format!("User \"system:bootstrap:{}\" cannot", t.id)),
            "{v}"
        );
    }
}

#[tokio::test]
async fn a_token_stops_working_when_it_expires_or_goes() {
    let a = api().await;
    // Expired: refused even before the cleaner deletes it.
    let expired = make(
        &a,
        Options {
            expiration: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1)),
            ..authenticating()
        },
    )
    .await;
    let (code, status) = whoami(&a, &expired.bearer()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{status}");
    assert_eq!(status["reason"], "Unauthorized");

    let live = make(
        &a,
        Options {
            expiration: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)),
            ..authenticating()
        },
    )
    .await;
    assert_eq!(whoami(&a, &live.bearer()).await.0, StatusCode::CREATED);
    // The right id with another secret.
    let forged = format!("{}.{}", live.id, "0000000000000000");
    assert_eq!(whoami(&a, &forged).await.0, StatusCode::UNAUTHORIZED);
    // A well-formed token nobody made.
    assert_eq!(
        whoami(&a, "zzzzzz.0123456789abcdef").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Deleted: refused at once.
    let (code, _) = call(
        &a,
        As::Admin,
        Method::DELETE,
        &format!("{SECRETS}/{}", live.secret_name()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(whoami(&a, &live.bearer()).await.0, StatusCode::UNAUTHORIZED);

    // Not marked for authentication (a signing-only token), or not of the token type.
    let signing_only = make(
        &a,
        Options {
            signing: true,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        whoami(&a, &signing_only.bearer()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let opaque = Token::generate();
    let mut secret = token::secret(&opaque, &authenticating());
    secret["type"] = json!("Opaque");
    a.post(SECRETS, secret).await;
    assert_eq!(
        whoami(&a, &opaque.bearer()).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn expired_tokens_are_cleaned_up() {
    let shutdown = CancellationToken::new();
    let a = api_with_namespaces(shutdown.clone()).await;
    let expired = make(
        &a,
        Options {
            expiration: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60)),
            ..authenticating()
        },
    )
    .await;
    let soon = make(
        &a,
        Options {
            expiration: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2)),
            ..authenticating()
        },
    )
    .await;
    let forever = make(&a, authenticating()).await;
    tokio::spawn(token_cleaner::run(Context::new(
        a.client(),
        shutdown.clone(),
    )));
    let gone = |t: Token| {
        let a = &a;
        async move {
            let (code, _) = call(
                a,
                As::Admin,
                Method::GET,
                &format!("{SECRETS}/{}", t.secret_name()),
                None,
            )
            .await;
            (code == StatusCode::NOT_FOUND).then_some(())
        }
    };
    eventually("the expired token deleted", || gone(expired.clone())).await;
    skiff_test_support::eventually_within(
        Duration::from_secs(15),
        "the token deleted when it expires",
        || gone(soon.clone()),
    )
    .await;
    let (code, _) = call(
        &a,
        As::Admin,
        Method::GET,
        &format!("{SECRETS}/{}", forever.secret_name()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    shutdown.cancel();
}

#[tokio::test]
async fn cluster_info_is_public_and_signed_for_each_signing_token() {
    let shutdown = CancellationToken::new();
    let a = api_with_namespaces(shutdown.clone()).await;
    let map = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
    cluster_info::publish(&a.state, "https://10.0.0.1:6443", "CA PEM")
        .await
        .unwrap();

    // Anyone may read it, and nothing else there.
    let (code, public) = eventually("anonymous may read cluster-info", || async {
        let (code, v) = call(&a, As::Anonymous, Method::GET, map, None).await;
        (code == StatusCode::OK).then_some((code, v))
    })
    .await;
    assert_eq!(code, StatusCode::OK);
    let kubeconfig = public["data"]["kubeconfig"].as_str().unwrap().to_owned();
    assert_eq!(
        kubeconfig,
        cluster_info::kubeconfig("https://10.0.0.1:6443", "CA PEM")
    );
    let (code, _) = call(
        &a,
        As::Anonymous,
        Method::GET,
        "/api/v1/namespaces/kube-public/configmaps",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    let signing = make(
        &a,
        Options {
            signing: true,
            authentication: true,
            ..Options::default()
        },
    )
    .await;
    let not_signing = make(&a, authenticating()).await;
    tokio::spawn(bootstrap_signer::run(Context::new(
        a.client(),
        shutdown.clone(),
    )));
    let key = format!("jws-kubeconfig-{}", signing.id);
    let signature = eventually("cluster-info signed", || async {
        let (_, v) = call(&a, As::Anonymous, Method::GET, map, None).await;
        v["data"][&key].as_str().map(str::to_owned)
    })
    .await;
    assert!(jws::verify(
        &kubeconfig,
        &signature,
        &signing.id,
        &signing.secret
    ));
    assert!(!jws::verify(
        &kubeconfig,
        &signature,
        &not_signing.id,
        &not_signing.secret
    ));
    let other = Token::generate();
    assert!(!jws::verify(
        &kubeconfig,
        &signature,
        &signing.id,
        &other.secret
    ));
    let (_, v) = call(&a, As::Anonymous, Method::GET, map, None).await;
    let data = v["data"].as_object().unwrap();
    assert_eq!(data.len(), 2, "the kubeconfig and one signature: {data:?}");

    // A new address: the kubeconfig changes and is signed again.
    cluster_info::publish(&a.state, "https://10.0.0.2:6443", "CA PEM")
        .await
        .unwrap();
    let moved = cluster_info::kubeconfig("https://10.0.0.2:6443", "CA PEM");
    eventually("cluster-info signed again", || async {
        let (_, v) = call(&a, As::Anonymous, Method::GET, map, None).await;
        let sig = v["data"][&key].as_str()?;
        (v["data"]["kubeconfig"] == moved.as_str()
            && jws::verify(&moved, sig, &signing.id, &signing.secret))
        .then_some(())
    })
    .await;

    // The token gone: so is its signature.
    let (code, _) = call(
        &a,
        As::Admin,
        Method::DELETE,
        &format!("{SECRETS}/{}", signing.secret_name()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    eventually("the signature removed", || async {
        let (_, v) = call(&a, As::Anonymous, Method::GET, map, None).await;
        v["data"].get(&key).is_none().then_some(())
    })
    .await;
    shutdown.cancel();
}
