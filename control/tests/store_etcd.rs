//! skiff-control serving the API on etcd (`--store etcd`): the real binary with its flags, a
//! real etcd on loopback (test-support's `TestEtcd`; the test fails, saying to run
//! `cargo xtask setup`, where etcd is not installed), driven with a kube client: create, get,
//! paged list, watch, update conflicts, 413 for an object over etcd's request limit, and etcd
//! lost and back (`/readyz` fails, writes get 503, both recover).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use skiff_test_support::etcd::free_port;
use skiff_test_support::{eventually, eventually_within, TestEtcd};

/// A skiff-control process, killed on drop (also when the test panics).
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }
}

fn skiff_control(dir: &Path, args: &[String]) -> Command {
    let log = std::fs::File::create(dir.join("control.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff-control"));
    command
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// Starts skiff-control on `etcd` and waits until its admin kubeconfig is written.
async fn start(etcd: &TestEtcd) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = [
        format!("--listen=127.0.0.1:{port}"),
        format!(
            "--write-kubeconfig={}",
            dir.path().join("admin.kubeconfig").display()
        ),
        "--store=etcd".into(),
        format!("--etcd-servers={}", etcd.url()),
        "--etcd-prefix=/registry/skiff-test/".into(),
        "--no-controllers".into(),
        "--resource-metrics-api=false".into(),
    ];
    let child = skiff_control(dir.path(), &args).spawn().unwrap();
    let mut server = Server { child, dir };
    let kubeconfig = server.kubeconfig();
    eventually_within(
        Duration::from_secs(90),
        "skiff-control to start on etcd",
        || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("skiff-control exited with {status}:\n{}", server.log());
            }
            let ready = kubeconfig.exists();
            async move { ready.then_some(()) }
        },
    )
    .await;
    server
}

async fn client(server: &Server) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A POST that is not retried (kube's client retries 503s, as it should), answering the
/// status code and the Status's reason.
async fn post_once(server: &Server, path: &str, body: serde_json::Value) -> (u16, String) {
    use base64::Engine as _;
    let yaml = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let kubeconfig: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().unwrap())
        .unwrap();
    let token = kubeconfig["users"][0]["user"]["token"].as_str().unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let server_url = cluster["server"].as_str().unwrap();
    let answer = http
        .post(format!("{server_url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    let status: serde_json::Value = answer.json().await.unwrap();
    (
        code,
        status["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `/readyz?verbose`: Ok(body) when ready, Err(what failed) when not.
async fn readyz(client: &kube::Client) -> Result<String, String> {
    let request = http::Request::get("/readyz?verbose")
        .body(Vec::new())
        .unwrap();
    client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())
}

fn config_map(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"k": data},
    }))
    .unwrap()
}

fn status_of(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected a Status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_from_etcd() {
    let mut etcd = TestEtcd::start();
    let server = start(&etcd).await;
    let client = client(&server).await;
    eventually("/readyz to pass", || async { readyz(&client).await.ok() }).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Create, get: resourceVersions are etcd's revisions.
    let created = maps
        .create(&PostParams::default(), &config_map("a", "1"))
        .await
        .unwrap();
    let rv: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > 1);
    let got = maps.get("a").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(got.data.as_ref().unwrap()["k"], "1");

    // A paged list reads every page at the first page's revision.
    for name in ["b", "c"] {
        maps.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .unwrap();
    }
    let first = maps.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    maps.create(&PostParams::default(), &config_map("d", "1"))
        .await
        .unwrap();
    let rest = maps
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<_> = rest
        .items
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["c"], "d was created after the first page");
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );

    // A watch from the list's revision sees the update; a stale update conflicts.
    let list_rv = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = maps
        .watch(&WatchParams::default().timeout(30), &list_rv)
        .await
        .unwrap()
        .boxed();
    let mut update = got.clone();
    update.data = Some([("k".to_owned(), "2".to_owned())].into());
    let updated = maps
        .replace("a", &PostParams::default(), &update)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    let event = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
        .await
        .expect("the update's event")
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Modified(m) => {
            assert_eq!(m.metadata.name.as_deref(), Some("a"));
            assert_eq!(
                m.metadata.resource_version,
                updated.metadata.resource_version
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let stale = maps.replace("a", &PostParams::default(), &update).await;
    assert_eq!(status_of(stale.unwrap_err()), (409, "Conflict".into()));

    // Over etcd's request limit (1.5 MiB) but under the API's body limit (3 MiB): 413. (A
    // ControllerRevision's data has no size rule of its own; a ConfigMap's 1 MiB rule would
    // answer 422 first.)
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let big: ControllerRevision = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": "big"},
        "revision": 1,
        "data": {"blob": "x".repeat(2 * 1024 * 1024)},
    }))
    .unwrap();
    let refused = revisions
        .create(&PostParams::default(), &big)
        .await
        .unwrap_err();
    assert_eq!(status_of(refused), (413, "RequestEntityTooLarge".into()));

    // etcd lost: not ready, writes 503; back: both recover.
    etcd.kill();
    let why = eventually("/readyz to fail", || async { readyz(&client).await.err() }).await;
    assert!(why.contains("500") || why.contains("store"), "{why}");
    let refused = post_once(
        &server,
        "/api/v1/namespaces/default/configmaps",
        serde_json::to_value(config_map("e", "1")).unwrap(),
    )
    .await;
    assert_eq!(refused, (503, "ServiceUnavailable".into()));
    etcd.restart();
    eventually("/readyz to pass again", || async {
        readyz(&client).await.ok()
    })
    .await;
    let again = eventually("writes to work again", || async {
        maps.create(&PostParams::default(), &config_map("e", "1"))
            .await
            .ok()
    })
    .await;
    assert!(again.metadata.resource_version.is_some());
    let all = maps.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = all
        .items
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
}

#[test]
fn store_etcd_without_servers_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = skiff_control(dir.path(), &["--store=etcd".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--etcd-servers"), "{stderr}");
}
