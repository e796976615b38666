//! Regression tests of what the API fuzzer (`fuzz_api.rs`) found, one per finding, each with
//! the input as the fuzzer sent it (shortened where the length was not the point).

mod common;

use std::time::Duration;

use axum::body::Body;
use http::{Method, StatusCode};
use serde_json::Value;

use common::{Api, TOKEN};

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn assert_status(answer: &(StatusCode, Value), code: StatusCode, reason: &str) {
    assert_eq!(answer.0, code, "{}", answer.1);
    assert_eq!(answer.1["kind"], "Status", "{}", answer.1);
    assert_eq!(answer.1["reason"], reason, "{}", answer.1);
    assert_eq!(answer.1["code"], code.as_u16(), "{}", answer.1);
}

async fn send(a: &Api, method: Method, uri: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
    a.call_raw(method, uri, ct, Some(TOKEN), Body::from(body))
        .await
}

/// A YAML body of deeply nested flow collections (JSON is YAML) kept libyaml's tokenizer
/// busy for minutes (its cost grows with tokens × depth) before serde_yaml's recursion limit
/// was checked: seed 1, input #234 (`[` × 100 000 inside a flow mapping, 200 KB). Both
/// spellings now answer 400 at once.
#[tokio::test]
async fn deeply_nested_yaml_flow_collections_are_refused_at_once() {
    let a = common::api().await;
    let head = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"data":"#;
    for body in [
        format!("{head}{}", "[".repeat(100_000)),
        format!("{head}{}", "{a: ".repeat(100_000)),
    ] {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            send(&a, Method::POST, CM, "application/yaml", body.into_bytes()),
        )
        .await
        .expect("an answer within 5 s");
        assert_status(&answer, StatusCode::BAD_REQUEST, "BadRequest");
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("recursion limit"),
            "{}",
            answer.1
        );
    }
    let (code, _) = a.call(Method::GET, &format!("{CM}/deep"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "nothing stored");
}

/// A method a fixed route does not serve got axum's empty 405: seed 1, input #189 (OPTIONS on
/// an OpenAPI path).
#[tokio::test]
async fn a_method_a_route_does_not_serve_is_a_status() {
    let a = common::api().await;
    for (method, uri) in [
        (Method::OPTIONS, "/openapi/v3/apis/nope/v1"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/apis"),
        (Method::PUT, "/api/v1"),
    ] {
        let answer = a.call(method.clone(), uri, None).await;
        assert_status(&answer, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    }
}

/// A path that is not UTF-8 once percent-decoded got axum's plain-text 400 ("Invalid URL"):
/// seed 1, input #520.
#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_status() {
    let a = common::api().await;
    for (method, uri) in [
        (Method::DELETE, "/api/v1/namespaces/default/services/%FF%FE"),
        (Method::GET, "/api/v1/namespaces/%C3%28/pods"),
        (Method::GET, "/apis/%FF/v1"),
    ] {
        let answer = a.call(method, uri, None).await;
        assert_status(&answer, StatusCode::BAD_REQUEST, "BadRequest");
    }
    // Escapes of UTF-8 and `%` without hex digits still route as before.
    let (code, _) = a
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/%C3%A9",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = a
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/%ZZ",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// An empty Impersonate-User header alone got a 500 ("impersonation of groups ... without a
/// user"): seed 1, input #945. kube-apiserver reads it as no impersonation.
#[tokio::test]
async fn an_empty_impersonate_user_header_is_ignored() {
    let a = common::api().await;
    let request = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("impersonate-user", "")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(a.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
