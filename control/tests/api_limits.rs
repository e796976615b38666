//! Component tests of the API's input limits: patch and YAML bombs, deep nesting, oversized
//! bodies and objects are refused with a Status, store nothing, keep memory bounded and leave
//! the server answering.

mod common;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::{Api, TOKEN};

const CM: &str = "/api/v1/namespaces/default/configmaps";

async fn send(a: &Api, method: Method, uri: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
    a.call_raw(method, uri, ct, Some(TOKEN), Body::from(body))
        .await
}

async fn json_patch(a: &Api, name: &str, ops: &Value) -> (StatusCode, Value) {
    send(
        a,
        Method::PATCH,
        &format!("{CM}/{name}"),
        "application/json-patch+json",
        ops.to_string().into_bytes(),
    )
    .await
}

/// Creates ConfigMap `name` with one key and returns its resourceVersion.
async fn config_map(a: &Api, name: &str) -> String {
    let (code, body) = a
        .call(
            Method::POST,
            CM,
            Some(json!({"metadata": {"name": name}, "data": {"a": "x".repeat(1000)}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The object is as `config_map` left it: nothing the refused request did was stored.
async fn unchanged(a: &Api, name: &str, revision: &str) {
    let (code, body) = a.call(Method::GET, &format!("{CM}/{name}"), None).await;
    assert_eq!(code, StatusCode::OK, "the server still answers: {body}");
    assert_eq!(body["metadata"]["resourceVersion"], revision, "{body}");
    assert_eq!(body["data"].as_object().unwrap().len(), 1, "{body}");
}

fn assert_status(answer: &(StatusCode, Value), code: StatusCode, reason: &str) {
    assert_eq!(answer.0, code, "{}", answer.1);
    assert_eq!(answer.1["kind"], "Status", "{}", answer.1);
    assert_eq!(answer.1["reason"], reason, "{}", answer.1);
    assert_eq!(answer.1["code"], code.as_u16(), "{}", answer.1);
}

/// The peak resident set of this process, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The CVE-2019-1002100 patch: each level holds two copies of the one before, so forty levels
/// of a kilobyte are a terabyte.
fn copy_bomb() -> Value {
    let mut ops = vec![json!({"op": "add", "path": "/l0", "value": ["x".repeat(1000)]})];
    for level in 1..40 {
        ops.push(json!({"op": "add", "path": format!("/l{level}"), "value": []}));
        for _ in 0..2 {
            ops.push(json!({"op": "copy", "from": format!("/l{}", level - 1), "path": format!("/l{level}/-")}));
        }
    }
    Value::Array(ops)
}

/// Nine levels of ten aliases each: a billion nodes from half a kilobyte.
fn alias_bomb() -> String {
    let mut yaml =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: laughs\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let prev = format!("*a{}", level - 1);
        yaml.push_str(&format!(
            "  a{level}: &a{level} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    yaml
}

#[tokio::test]
async fn bombs_are_refused_with_bounded_memory_and_store_nothing() {
    let a = common::api().await;
    let rv = config_map(&a, "target").await;
    let before = peak_rss();

    let answer = json_patch(&a, "target", &copy_bomb()).await;
    assert_status(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    unchanged(&a, "target", &rv).await;

    let answer = send(
        &a,
        Method::POST,
        CM,
        "application/yaml",
        alias_bomb().into_bytes(),
    )
    .await;
    assert_status(&answer, StatusCode::BAD_REQUEST, "BadRequest");
    assert!(
        answer.1["message"].as_str().unwrap().contains("nodes"),
        "{}",
        answer.1
    );
    let (code, _) = a.call(Method::GET, &format!("{CM}/laughs"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "nothing stored");

    let growth = peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB over both bombs", growth / 1024);
    assert!(
        growth < 200 * 1024 * 1024,
        "the bombs grew the peak resident set by {growth} bytes"
    );
}

#[tokio::test]
async fn json_patches_over_ten_thousand_operations_are_too_large() {
    let a = common::api().await;
    let rv = config_map(&a, "ops").await;
    let op = json!({"op": "test", "path": "/metadata/name", "value": "ops"});
    let ops = Value::Array(vec![op; 10_001]);
    let answer = json_patch(&a, "ops", &ops).await;
    assert_status(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    assert!(answer.1["message"]
        .as_str()
        .unwrap()
        .contains("The allowed maximum operations in a JSON patch is 10000, got 10001"));
    unchanged(&a, "ops", &rv).await;
    // Ten thousand is allowed.
    let Value::Array(mut ops) = ops else {
        unreachable!()
    };
    ops.pop();
    assert_eq!(
        json_patch(&a, "ops", &Value::Array(ops)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_copy_into_its_own_source_is_invalid() {
    let a = common::api().await;
    let rv = config_map(&a, "self").await;
    let answer = json_patch(
        &a,
        "self",
        &json!([{"op": "copy", "from": "/data", "path": "/data/inner"}]),
    )
    .await;
    assert_status(&answer, StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
    unchanged(&a, "self", &rv).await;
    // A sibling whose name merely starts the same is no ancestor.
    let answer = json_patch(
        &a,
        "self",
        &json!([{"op": "copy", "from": "/data/a", "path": "/data/ab"}]),
    )
    .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
}

#[tokio::test]
async fn patch_results_over_the_object_limit_are_too_large() {
    let a = common::api().await;
    let rv = config_map(&a, "big").await;
    // 1.6 MB in a merge patch: under the body limit, over the object limit.
    let big = "y".repeat(1_600_000);
    let answer = send(
        &a,
        Method::PATCH,
        &format!("{CM}/big"),
        "application/merge-patch+json",
        json!({"metadata": {"annotations": {"x": big}}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_status(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    unchanged(&a, "big", &rv).await;
}

#[tokio::test]
async fn config_map_and_secret_data_over_a_mebibyte_is_invalid() {
    let a = common::api().await;
    let answer = a
        .call(
            Method::POST,
            CM,
            Some(json!({"metadata": {"name": "huge"}, "data": {"a": "x".repeat(1024 * 1024)}})),
        )
        .await;
    assert_status(&answer, StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
    assert_eq!(
        answer.1["details"]["causes"][0]["message"],
        "Too long: must have at most 1048576 bytes"
    );
    // Exactly a mebibyte, key included, fits.
    let answer = a
        .call(
            Method::POST,
            CM,
            Some(json!({"metadata": {"name": "fits"}, "data": {"a": "x".repeat(1024 * 1024 - 1)}})),
        )
        .await;
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);

    // A Secret counts decoded bytes: 1 MiB + 3 bytes of base64 "eHh4" triples.
    let data = "eHh4".repeat(1024 * 1024 / 3 + 1);
    let answer = a
        .call(
            Method::POST,
            "/api/v1/namespaces/default/secrets",
            Some(json!({"metadata": {"name": "huge"}, "data": {"k": data}})),
        )
        .await;
    assert_status(&answer, StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
    assert_eq!(answer.1["details"]["causes"][0]["field"], "data");
}

#[tokio::test]
async fn bodies_over_three_mebibytes_get_a_status() {
    let a = common::api().await;
    let body = json!({"metadata": {"name": "x"}, "data": {"a": "z".repeat(3 * 1024 * 1024)}});
    let answer = send(
        &a,
        Method::POST,
        CM,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await;
    assert_status(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    assert_eq!(
        answer.1["message"],
        "Request entity too large: limit is 3145728"
    );
    let (code, _) = a.call(Method::GET, &format!("{CM}/x"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deep_nesting_is_a_bad_request() {
    let a = common::api().await;
    let deep = |open: &str, close: &str| {
        format!(
            r#"{{"metadata": {{"name": "deep"}}, "data": {{"a": "b"}}, "x": {}1{}}}"#,
            open.repeat(1000),
            close.repeat(1000)
        )
    };
    for ct in ["application/json", "application/yaml"] {
        let answer = send(&a, Method::POST, CM, ct, deep("[", "]").into_bytes()).await;
        assert_status(&answer, StatusCode::BAD_REQUEST, "BadRequest");
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("recursion limit"),
            "{ct}: {}",
            answer.1
        );
    }
    let answer = send(
        &a,
        Method::PATCH,
        &format!("{CM}/deep"),
        "application/merge-patch+json",
        deep("{\"a\":", "}").into_bytes(),
    )
    .await;
    assert_status(&answer, StatusCode::BAD_REQUEST, "BadRequest");
    let (code, _) = a.call(Method::GET, &format!("{CM}/deep"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_closed_at_its_byte_budget() {
    let a = common::api().await;
    a.state
        .overload
        .set_watch_send_timeout(std::time::Duration::from_millis(100));
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let watch = a.router.clone().oneshot(req).await.unwrap();
    assert_eq!(watch.status(), StatusCode::OK);
    // 30 objects of 900 kB: 27 MB of events, over the 16 MiB a watcher may leave unread.
    let total = 30;
    for i in 0..total {
        let (code, body) = a
            .call(
                Method::POST,
                CM,
                Some(json!({"metadata": {"name": format!("big-{i}")}, "data": {"a": "x".repeat(900_000)}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    // Read only now: the stream ends (the watch was closed) after what fitted the budget.
    let bytes = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        watch.into_body().collect(),
    )
    .await
    .expect("the stuck watch was closed, so its body ends")
    .unwrap()
    .to_bytes();
    let events = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(
        (1..total).contains(&events),
        "{events} of {total} events were queued"
    );
    assert!(
        bytes.len() <= 16 * 1024 * 1024 + 1_000_000,
        "{}",
        bytes.len()
    );
}

/// The field causes of a 422.
fn causes(answer: &(StatusCode, Value)) -> Vec<String> {
    assert_eq!(answer.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", answer.1);
    answer.1["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_owned())
        .collect()
}

fn pod_spec() -> Value {
    json!({"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"})
}

#[tokio::test]
async fn seconds_past_their_range_are_invalid_with_the_field() {
    let a = common::api().await;
    let huge = i64::MAX;
    let pods = "/api/v1/namespaces/default/pods";
    for (field, spec_patch) in [
        (
            "spec.activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": huge}),
        ),
        (
            "spec.terminationGracePeriodSeconds",
            json!({"terminationGracePeriodSeconds": huge}),
        ),
        (
            "spec.tolerations[0].tolerationSeconds",
            json!({"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": huge}]}),
        ),
        (
            "spec.containers[0].livenessProbe.terminationGracePeriodSeconds",
            json!({"containers": [{"name": "c", "image": "busybox", "livenessProbe": {"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": huge}}]}),
        ),
    ] {
        let mut spec = pod_spec();
        for (k, v) in spec_patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let answer = a
            .call(
                Method::POST,
                pods,
                Some(json!({"metadata": {"name": "p"}, "spec": spec})),
            )
            .await;
        assert_eq!(causes(&answer), [field], "{}", answer.1);
        let message = answer.1["details"]["causes"][0]["message"]
            .as_str()
            .unwrap();
        assert!(message.ends_with("and 2147483647, inclusive"), "{message}");
    }

    let answer = a
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/jobs",
            Some(json!({"metadata": {"name": "j"}, "spec": {
                "activeDeadlineSeconds": huge,
                "template": {"spec": pod_spec()},
            }})),
        )
        .await;
    assert_eq!(causes(&answer), ["spec.activeDeadlineSeconds"]);
    let answer = a
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/cronjobs",
            Some(json!({"metadata": {"name": "cj"}, "spec": {
                "schedule": "* * * * *",
                "startingDeadlineSeconds": huge,
                "jobTemplate": {"spec": {"template": {"spec": pod_spec()}}},
            }})),
        )
        .await;
    assert_eq!(causes(&answer), ["spec.startingDeadlineSeconds"]);

    // int32 fields cannot even decode a value near i64::MAX: 400, as Kubernetes' decoder.
    let answer = a
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/jobs",
            Some(json!({"metadata": {"name": "j"}, "spec": {
                "ttlSecondsAfterFinished": huge,
                "template": {"spec": pod_spec()},
            }})),
        )
        .await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{}", answer.1);

    // A DELETE's grace period, in the query or the DeleteOptions body.
    let (code, body) = a
        .call(
            Method::POST,
            pods,
            Some(json!({"metadata": {"name": "p"}, "spec": pod_spec()})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let answer = a
        .call(
            Method::DELETE,
            &format!("{pods}/p?gracePeriodSeconds={huge}"),
            None,
        )
        .await;
    assert_eq!(causes(&answer), ["gracePeriodSeconds"]);
    let answer = a
        .call(
            Method::DELETE,
            &format!("{pods}/p"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": huge})),
        )
        .await;
    assert_eq!(causes(&answer), ["gracePeriodSeconds"]);
    let (code, body) = a.call(Method::GET, &format!("{pods}/p"), None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body["metadata"].get("deletionTimestamp").is_none(),
        "{body}"
    );
}

/// A list larger than what is rendered in place (64 KiB) is rendered off the async workers:
/// as a list and as kubectl's Table, complete and in order.
#[tokio::test]
async fn large_lists_render_whole_off_the_async_workers() {
    let a = common::api().await;
    for i in 0..100 {
        config_map(&a, &format!("big-{i:03}")).await;
    }
    let (code, list) = a.call(Method::GET, CM, None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 100);
    assert!(
        list.to_string().len() > 100 * 1000,
        "past the in-place size"
    );
    assert_eq!(names.first(), Some(&"big-000"));
    let table = a.table(CM).await;
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().unwrap().len(), 100);
}
