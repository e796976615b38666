//! The store when the disk fills up: writes fail with a Kubernetes Status, the store says
//! why it is not ready, nothing acknowledged is lost, and it serves again once there is room,
//! without a restart. The disk is a small tmpfs mounted for the test (root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::apiserver::{app, ApiState};
use skiff_control::store::{RedbStore, SharedStore, Store};
use skiff_test_support::require_root;
use tokio_util::sync::CancellationToken;

/// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily, so a store still open
/// cannot keep it) and removed on drop, even when the test fails.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "skiff-test",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs on {}",
            dir.path().display()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Fills what is left with a file, so that the store's next page allocation fails.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        // dd stops with "No space left on device": expected.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output()
            .unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer test-token")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

fn config_map(name: &str, kib: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
           "data": {"payload": "x".repeat(kib * 1024)}})
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_a_status_and_the_store_recovers_when_space_returns() {
    require_root!("mounts a small tmpfs");
    let disk = SmallDisk::mount("48m");
    let store = Arc::new(RedbStore::open(&disk.path().join("store.redb")).unwrap());
    let shared: SharedStore = store.clone();
    let (state, _queue) = ApiState::new(shared, "test-token".into(), CancellationToken::new());
    state.ensure_system_namespaces().await.unwrap();
    let router = app(state.clone());
    let uri = "/api/v1/namespaces/default/configmaps";

    let mut acknowledged = Vec::new();
    for i in 0..8 {
        let (code, body) = call(
            &router,
            Method::POST,
            uri,
            Some(config_map(&format!("before-{i}"), 200)),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        acknowledged.push(body["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert!(store.health().is_ok());

    // The disk fills up: the next writes fail, each with a Status saying why.
    let filler = disk.fill();
    let mut failure = None;
    for i in 0..64 {
        let (code, body) = call(
            &router,
            Method::POST,
            uri,
            Some(config_map(&format!("during-{i}"), 200)),
        )
        .await;
        if code == StatusCode::CREATED {
            acknowledged.push(body["metadata"]["name"].as_str().unwrap().to_owned());
            continue;
        }
        failure = Some((code, body));
        break;
    }
    let (code, body) = failure.expect("writes go on failing to fail on a full disk");
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{body}"
    );
    let unhealthy = store.health().expect_err("a full disk is not healthy");
    assert!(unhealthy.contains("No space left on device"), "{unhealthy}");
    // /readyz says so (the reason is logged, not shown, as kube-apiserver withholds it).
    let (code, body) = call(&router, Method::GET, "/readyz?verbose", None).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.as_str().unwrap().contains("[-]store failed"), "{body}");
    // And again, still a Status, while the disk stays full.
    let (code, body) = call(
        &router,
        Method::POST,
        uri,
        Some(config_map("still-full", 200)),
    )
    .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");

    // Space returns: without a restart, writes work again and nothing acknowledged is lost.
    std::fs::remove_file(&filler).unwrap();
    disk.resize("256m");
    let mut recovered = None;
    for i in 0..200 {
        let (code, body) = call(
            &router,
            Method::POST,
            uri,
            Some(config_map(&format!("after-{i}"), 1)),
        )
        .await;
        if code == StatusCode::CREATED {
            recovered = Some(body);
            break;
        }
        // The writer reopens the database once per second while failed: wait on its signal,
        // the store's health, rather than a fixed time.
        skiff_test_support::wait_for(
            "the store to reopen",
            std::time::Duration::from_secs(5),
            || store.health().is_ok(),
        );
    }
    let recovered = recovered.expect("writes work again once there is space");
    assert!(store.health().is_ok());
    let (code, body) = call(&router, Method::GET, "/readyz?verbose", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.as_str().unwrap().contains("[+]store ok"), "{body}");
    let (code, list) = call(&router, Method::GET, uri, None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    for name in &acknowledged {
        assert!(
            names.contains(&name.as_str()),
            "{name} was acknowledged and is gone: {names:?}"
        );
    }
    // Revisions went on from where they were: the new write is the newest.
    let newest: u64 = recovered["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(newest, store.revision());
    drop(router);
    drop(state);
}
