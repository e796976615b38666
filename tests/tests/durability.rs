//! What survives: acknowledged writes across `kill -9` at random moments, a snapshot saved
//! from a running server and restored into a new one (clients relist), and a damaged store
//! file (a clear refusal to start, naming the restore command).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use skiff_e2e::{control_bin, ControlPlane};

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"value": value},
    }))
    .unwrap()
}

fn revision(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// A small deterministic generator (xorshift), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_at_random_moments() {
    const KILLS: usize = 200;
    const WRITERS: usize = 4;
    let seed = 0x5eed_0000_0000_0001_u64;
    let mut rng = Rng(seed);
    let mut cp = ControlPlane::start();
    // name -> (value, revision) of every create the server acknowledged.
    let mut acknowledged: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut newest = 0u64;
    for round in 0..KILLS {
        let api: Api<ConfigMap> = Api::namespaced(cp.client().await, "default");
        // Revisions only grow: the first write after a restart is above every acknowledged one.
        let probe = api
            .create(
                &PostParams::default(),
                &config_map(&format!("probe-{round}"), "p"),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: the restarted server refuses a write: {e}"));
        assert!(
            revision(&probe) > newest,
            "round {round}: revision {} after a restart, {newest} acknowledged before",
            revision(&probe)
        );
        newest = revision(&probe);
        acknowledged.insert(format!("probe-{round}"), ("p".into(), newest));

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let api = api.clone();
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for i in 0.. {
                        let name = format!("r{round}-w{w}-{i}");
                        let value = format!("{round}/{w}/{i}");
                        match api
                            .create(&PostParams::default(), &config_map(&name, &value))
                            .await
                        {
                            Ok(cm) => done.push((name, value, revision(&cm))),
                            // The server died under it: what it acknowledged is what counts.
                            Err(_) => return done,
                        }
                    }
                    done
                })
            })
            .collect();
        // The crash comes at a random point of the write loop.
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        cp.kill();
        for w in writers {
            for (name, value, rv) in w.await.unwrap() {
                newest = newest.max(rv);
                acknowledged.insert(name, (value, rv));
            }
        }
        cp = cp.restart();
        // Every write acknowledged in this round is there, with its value.
        let api: Api<ConfigMap> = Api::namespaced(cp.client().await, "default");
        let prefix = format!("r{round}-");
        for (name, (value, rv)) in acknowledged
            .range(prefix.clone()..)
            .take_while(|(n, _)| n.starts_with(&prefix))
        {
            let cm = api
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("round {round} (seed {seed:#x}): acknowledged {name} (revision {rv}) is lost: {e}"));
            assert_eq!(revision(&cm), *rv, "{name}");
            assert_eq!(cm.data.unwrap()["value"], *value, "{name}");
        }
    }
    // And at the end, all of them at once.
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await, "default");
    let listed: BTreeMap<String, (String, u64)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|cm| cm.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .map(|cm| {
            let rv = revision(&cm);
            (
                cm.metadata.name.unwrap(),
                (cm.data.unwrap()["value"].clone(), rv),
            )
        })
        .collect();
    for (name, entry) in &acknowledged {
        assert_eq!(listed.get(name), Some(entry), "{name}");
    }
    eprintln!(
        "{} acknowledged writes over {KILLS} kills, all present",
        acknowledged.len()
    );
}

fn skiff_control(args: &[&str]) -> std::process::Output {
    Command::new(control_bin()).args(args).output().unwrap()
}

/// `skiff-control snapshot restore FILE --data-dir DATA`.
fn restore(file: &std::path::Path, data: &std::path::Path) -> std::process::Output {
    Command::new(control_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_a_new_control_plane_and_clients_relist() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snapshot");
    let kubeconfig = cp.kubeconfig.to_str().unwrap().to_owned();
    cp.kubectl(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=color=blue",
    ]);
    cp.kubectl(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    let before: u64 = cp
        .kubectl(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();

    // Only who may read everything may take a snapshot: a `view` user is refused.
    let viewer = cp.user_kubeconfig("viewer", &[]);
    cp.kubectl(&[
        "create",
        "clusterrolebinding",
        "viewer",
        "--clusterrole=view",
        "--user=viewer",
    ]);
    let refused = skiff_control(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--kubeconfig",
        viewer.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("forbidden"), "{}", text(&refused));
    assert!(!file.exists());

    let saved = skiff_control(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(
        text(&saved).contains("saved a snapshot at revision"),
        "{}",
        text(&saved)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a snapshot holds every Secret");
    // Writes after the snapshot are not in it.
    cp.kubectl(&["create", "configmap", "later", "--from-literal=a=b"]);

    // A damaged copy does not restore, and says why.
    let damaged = dir.path().join("damaged.snapshot");
    let bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(4).position(|w| w == b"blue").unwrap();
    let mut altered = bytes.clone();
    altered[at] = b'g';
    std::fs::write(&damaged, &altered).unwrap();
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let refused = restore(&damaged, &data);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("corrupt"), "{}", text(&refused));
    assert!(!data.join("store.redb").exists());
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let refused = restore(&damaged, &data);
    assert!(text(&refused).contains("truncated"), "{}", text(&refused));

    // A good one restores into a new data directory...
    let restored = restore(&file, &data);
    assert!(restored.status.success(), "{}", text(&restored));
    // ...and never over an existing store.
    let again = restore(&file, &data);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    let new = ControlPlane::start_on(target);
    assert_eq!(
        new.kubectl(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.color}"
        ]),
        "blue"
    );
    assert_eq!(
        new.kubectl(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]),
        "czNjcmV0"
    );
    assert!(new
        .kubectl_fails(&["get", "configmap", "later"], None)
        .contains("NotFound"));
    // Revisions continue far above any issued before the snapshot or after it...
    new.kubectl(&["create", "configmap", "fresh", "--from-literal=a=b"]);
    let fresh: u64 = new
        .kubectl(&[
            "get",
            "configmap",
            "fresh",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();
    assert!(fresh > before + 1_000_000, "{fresh} after {before}");
    // ...so a client watching from a revision it saw before gets 410 and lists again.
    let watch = new.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={before}&timeoutSeconds=5"),
    ]);
    let event: serde_json::Value = serde_json::from_str(watch.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR", "{watch}");
    assert_eq!(event["object"]["code"], 410, "{watch}");
    drop(cp);
}

#[test]
fn a_damaged_store_stops_the_server_with_the_restore_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("store.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let out = Command::new(control_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("cannot open the store"), "{message}");
    assert!(
        message.contains(&format!(
            "skiff-control snapshot restore SNAPSHOT_FILE --data-dir {}",
            data.display()
        )),
        "{message}"
    );
    // Nothing was written over it.
    assert_eq!(
        std::fs::read(data.join("store.redb")).unwrap(),
        vec![0x5a; 64 * 1024]
    );
}
