//! The worker executing its plan against fakes ([`crate::kubelet::fakes`]): a pass is
//! `sync()`, time is tokio's paused clock, nothing needs root.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::kubelet::directory::Directory;
use crate::kubelet::events::Events;
use crate::kubelet::fakes::{Call, FakeApi, FakeImages, FakeNetwork, FakeRuntime};
use crate::kubelet::probes::{ProbeEvent, ProbeKind};
use crate::kubelet::token_manager::{ApiTokens, TokenManager};

const UID: &str = "uid-1";

struct Node {
    runtime: Arc<FakeRuntime>,
    images: Arc<FakeImages>,
    network: Arc<FakeNetwork>,
    api: FakeApi,
    shared: Arc<Shared>,
    _sigchld: watch::Sender<u64>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// The reasons of the Events written so far, once the queue has drained.
    async fn event_reasons(&self) -> Vec<String> {
        self.shared.events.flush().await;
        self.api.event_reasons()
    }
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(FakeRuntime::new(dir.path()));
    let images = Arc::new(FakeImages::default());
    let network = Arc::new(FakeNetwork::default());
    let api = FakeApi::default();
    let client = api.client();
    let (tx, sigchld) = watch::channel(0);
    let shared = Arc::new(Shared {
        client: client.clone(),
        node_name: "node-1".into(),
        host_ip: Some(Ipv4Addr::new(192, 168, 0, 10)),
        runtime: runtime.clone(),
        images: images.clone(),
        network: network.clone(),
        root: dir.path().to_owned(),
        events: Events::new(client.clone(), "node-1"),
        statuses: crate::kubelet::status_writer::StatusWriter::new(client.clone()),
        sigchld,
        directory: Arc::new(Directory::new(dir.path())),
        shutdown: CancellationToken::new(),
        tokens: Arc::new(TokenManager::with_clock(
            Arc::new(ApiTokens(client.clone())),
            Arc::new({
                let api = api.clone();
                move || api.now()
            }),
        )),
        sync_frequency: Duration::from_secs(60),
        dns: Arc::new(crate::kubelet::resolv_conf::NodeDns {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host: Default::default(),
        }),
        admission: crate::kubelet::admission::Admission::default(),
    });
    Node {
        runtime,
        images,
        network,
        api,
        shared,
        _sigchld: tx,
        _dir: dir,
    }
}

/// A pod with `(name, image)` init containers and containers.
fn pod(policy: &str, init: &[(&str, &str)], containers: &[(&str, &str)]) -> Pod {
    let list = |cs: &[(&str, &str)]| {
        cs.iter()
            .map(|(n, i)| json!({"name": n, "image": i}))
            .collect::<Vec<_>>()
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": {
            "restartPolicy": policy,
            "initContainers": list(init),
            "containers": list(containers),
        },
    }))
    .unwrap()
}

fn creates(calls: &[Call]) -> Vec<&str> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Create(n) => Some(n.as_str()),
            _ => None,
        })
        .collect()
}

fn waiting_reason(slot: &Slot) -> &str {
    match &slot.record.state {
        State::Waiting { reason, .. } => reason,
        other => panic!("not waiting: {other:?}"),
    }
}

async fn running_worker(n: &Node, p: Pod) -> PodWorker {
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    assert_eq!(w.sync().await, None);
    assert!(w
        .containers
        .iter()
        .all(|s| matches!(s.record.state, State::Running { .. })));
    w
}

/// Waits (with a deadline) until the fake runtime saw `call`: probe kills stop off the loop.
async fn until_called(runtime: &FakeRuntime, call: &Call) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !runtime.calls().contains(call) {
        assert!(std::time::Instant::now() < deadline, "no {call:?}");
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_restarts_with_crash_loop_back_off() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut w = running_worker(&n, pod("Always", &[], &[("app", "busybox:1.36")])).await;
    assert_eq!(
        n.runtime.calls(),
        [
            Call::CreateSandbox(UID.into()),
            Call::Create("app".into()),
            Call::Start("app".into())
        ]
    );
    assert_eq!(n.network.attached(), [UID]);

    // The first exit restarts at once.
    n.runtime.exit("app", 1);
    assert_eq!(w.sync().await, None);
    assert_eq!(w.containers[0].record.restart_count, 1);
    assert!(matches!(
        w.containers[0].record.state,
        State::Running { .. }
    ));

    // The second waits 10 s in CrashLoopBackOff.
    n.runtime.exit("app", 1);
    let now = Instant::now();
    assert_eq!(w.sync().await, Some(now + Duration::from_secs(10)));
    assert_eq!(waiting_reason(&w.containers[0]), "CrashLoopBackOff");
    assert!(n.event_reasons().await.contains(&"BackOff".to_owned()));
    n.runtime.clear_calls();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(w.sync().await, Some(now + Duration::from_secs(10)));
    assert!(
        n.runtime.calls().is_empty(),
        "nothing before the back-off ends"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(w.sync().await, None);
    assert_eq!(creates(&n.runtime.calls()), ["app"]);
    assert_eq!(w.containers[0].record.restart_count, 2);
    assert!(w.containers[0].record.last_state.is_some());
}

#[tokio::test(start_paused = true)]
async fn on_failure_and_never_leave_finished_containers_down() {
    for (policy, code, phase) in [
        ("OnFailure", 0, Some("Succeeded")),
        ("Never", 1, Some("Failed")),
        ("Never", 0, Some("Succeeded")),
    ] {
        let n = node();
        n.images.store("busybox:1.36");
        let mut w = running_worker(&n, pod(policy, &[], &[("app", "busybox:1.36")])).await;
        n.runtime.exit("app", code);
        n.runtime.clear_calls();
        assert_eq!(w.sync().await, None);
        assert_eq!(creates(&n.runtime.calls()), Vec::<&str>::new(), "{policy}");
        assert_eq!(w.terminal, phase, "{policy} {code}");
        assert!(
            n.network.attached().is_empty(),
            "a finished pod gives its address back"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn image_pull_policies() {
    let n = node();
    for image in ["busybox", "alpine:3", "nginx:1"] {
        n.images.store(image);
    }
    let p = pod(
        "Always",
        &[],
        &[
            ("latest", "busybox"),
            ("tagged", "alpine:3"),
            ("missing", "redis:7"),
        ],
    );
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    w.sync().await;
    // `busybox` means `:latest`: Always, pulled although stored; `alpine:3` is used as stored;
    // `redis:7` is not stored: pulled.
    assert_eq!(n.images.pulls(), ["busybox", "redis:7"]);

    let n = node();
    let mut p = pod("Always", &[], &[("app", "nginx:1")]);
    p.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    let now = Instant::now();
    assert_eq!(w.sync().await, Some(now + Duration::from_secs(1)));
    assert_eq!(waiting_reason(&w.containers[0]), "ErrImageNeverPull");
    assert!(n.images.pulls().is_empty());
    assert!(n
        .event_reasons()
        .await
        .contains(&"ErrImageNeverPull".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_failing_pull_becomes_image_pull_back_off() {
    let n = node();
    n.images.unreachable("redis:7");
    let mut w = PodWorker::new(
        n.shared.clone(),
        pod("Always", &[], &[("app", "redis:7")]),
        None,
    )
    .await;
    let now = Instant::now();
    assert_eq!(w.sync().await, Some(now + Duration::from_secs(1)));
    assert_eq!(waiting_reason(&w.containers[0]), "ErrImagePull");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        w.sync().await,
        Some(now + Duration::from_secs(11)),
        "then 10 s"
    );
    assert_eq!(waiting_reason(&w.containers[0]), "ImagePullBackOff");
    let reasons = n.event_reasons().await;
    assert!(reasons.contains(&"Pulling".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"Failed".to_owned()), "{reasons:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_run_container_error() {
    let n = node();
    n.images.store("busybox:1.36");
    n.runtime.fail_start("app");
    let mut w = PodWorker::new(
        n.shared.clone(),
        pod("Always", &[], &[("app", "busybox:1.36")]),
        None,
    )
    .await;
    assert!(w.sync().await.is_some());
    assert_eq!(waiting_reason(&w.containers[0]), "RunContainerError");
    assert!(n.runtime.calls().contains(&Call::Delete("app".into())));
}

#[tokio::test(start_paused = true)]
async fn a_failed_liveness_probe_kills_and_restarts() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut w = running_worker(&n, pod("Always", &[], &[("app", "busybox:1.36")])).await;
    w.on_probe(ProbeEvent {
        container: "app".into(),
        instance: 0,
        kind: ProbeKind::Liveness,
        ok: false,
        message: "connection refused".into(),
    })
    .await;
    until_called(
        &n.runtime,
        &Call::Stop("app".into(), Duration::from_secs(30)),
    )
    .await;
    let reasons = n.event_reasons().await;
    assert!(reasons.contains(&"Unhealthy".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"Killing".to_owned()), "{reasons:?}");
    assert!(!w.containers[0].record.ready);
    // The kill's exit (SIGTERM) restarts it: Always.
    assert_eq!(w.sync().await, None);
    assert_eq!(w.containers[0].record.restart_count, 1);
    let Some(State::Terminated { exit_code, .. }) = &w.containers[0].record.last_state else {
        panic!("no last state");
    };
    assert_eq!(*exit_code, 143);
    // A late result about the killed instance changes nothing.
    w.on_probe(ProbeEvent {
        container: "app".into(),
        instance: 0,
        kind: ProbeKind::Readiness,
        ok: true,
        message: String::new(),
    })
    .await;
    assert!(w.containers[0].record.ready, "no readiness probe: ready");
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_app() {
    let n = node();
    n.images.store("busybox:1.36");
    let img = "busybox:1.36";
    let mut w = PodWorker::new(
        n.shared.clone(),
        pod("Always", &[("one", img), ("two", img)], &[("app", img)]),
        None,
    )
    .await;
    w.sync().await;
    assert_eq!(creates(&n.runtime.calls()), ["one"]);
    n.runtime.exit("one", 0);
    w.sync().await;
    assert_eq!(creates(&n.runtime.calls()), ["one", "two"]);
    n.runtime.exit("two", 0);
    w.sync().await;
    assert_eq!(creates(&n.runtime.calls()), ["one", "two", "app"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_fails_a_never_pod_and_retries_otherwise() {
    for policy in ["Never", "Always"] {
        let img = "busybox:1.36";
        let n = node();
        n.images.store(img);
        let p = pod(policy, &[("one", img)], &[("app", img)]);
        let mut w = PodWorker::new(n.shared.clone(), p, None).await;
        w.sync().await;
        n.runtime.exit("one", 1);
        assert_eq!(w.sync().await, None);
        if policy == "Never" {
            assert_eq!(w.terminal, Some("Failed"));
            assert_eq!(creates(&n.runtime.calls()), ["one"]);
        } else {
            assert_eq!(w.terminal, None);
            assert_eq!(
                creates(&n.runtime.calls()),
                ["one", "one"],
                "restarted, app waits"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn graceful_termination_uses_the_deletion_grace_period() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut p = pod("Always", &[], &[("app", "busybox:1.36")]);
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(20);
    let mut w = running_worker(&n, p).await;
    w.pod.metadata.deletion_grace_period_seconds = Some(5);
    n.runtime.clear_calls();
    w.terminate(true).await;
    let calls = n.runtime.calls();
    assert_eq!(calls[0], Call::Stop("app".into(), Duration::from_secs(5)));
    assert!(calls.contains(&Call::RemovePod(UID.into())));
    assert!(n.network.attached().is_empty());
    assert_eq!(n.api.deletions(), 1, "graceful deletion completes");
    assert!(n.event_reasons().await.contains(&"Killing".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn adopts_running_containers_after_an_agent_restart() {
    let n = node();
    n.images.store("busybox:1.36");
    let p = pod("Always", &[], &[("app", "busybox:1.36")]);
    let first = running_worker(&n, p.clone()).await;
    let container_id = first.containers[0].record.container_id.clone();
    drop(first);
    n.runtime.clear_calls();

    let found = n.runtime.found(UID).expect("the sandbox is still there");
    let mut w = PodWorker::new(n.shared.clone(), p.clone(), Some(found)).await;
    assert_eq!(
        w.ip,
        Some(Ipv4Addr::new(10, 244, 0, 2)),
        "keeps its address"
    );
    assert_eq!(w.sync().await, None);
    assert!(
        n.runtime.calls().is_empty(),
        "nothing recreated: {:?}",
        n.runtime.calls()
    );
    assert_eq!(w.containers[0].record.container_id, container_id);
    assert!(matches!(
        w.containers[0].record.state,
        State::Running { .. }
    ));
    // Its exit is handled like any other.
    n.runtime.exit("app", 1);
    w.sync().await;
    assert_eq!(creates(&n.runtime.calls()), ["app"]);

    // A sandbox that died while the agent was away is recreated.
    n.runtime.kill_sandbox(UID);
    let found = n.runtime.found(UID).unwrap();
    n.runtime.clear_calls();
    let mut w = PodWorker::new(n.shared.clone(), p, Some(found)).await;
    w.sync().await;
    let calls = n.runtime.calls();
    assert_eq!(
        calls[..3],
        [
            Call::RemovePod(UID.into()),
            Call::CreateSandbox(UID.into()),
            Call::Create("app".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_sandbox_is_recreated_with_its_containers() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut w = running_worker(&n, pod("Always", &[], &[("app", "busybox:1.36")])).await;
    n.runtime.kill_sandbox(UID);
    n.runtime.clear_calls();
    assert_eq!(w.sync().await, None);
    assert_eq!(
        n.runtime.calls()[..3],
        [
            Call::RemovePod(UID.into()),
            Call::CreateSandbox(UID.into()),
            Call::Create("app".into())
        ]
    );
    let Some(State::Terminated {
        exit_code, signal, ..
    }) = &w.containers[0].record.last_state
    else {
        panic!("no last state");
    };
    assert_eq!((*exit_code, *signal), (137, Some(9)));
}

/// A pod as the ServiceAccount admission shapes it: the `kube-api-access-*` projected volume
/// mounted read-only into its container.
fn pod_with_service_account_volume() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": {
            "restartPolicy": "Always",
            "containers": [{
                "name": "app", "image": "busybox:1.36",
                "volumeMounts": [{
                    "name": "kube-api-access-abcde", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }],
            }],
            "volumes": [{
                "name": "kube-api-access-abcde",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                },
            }],
        },
    }))
    .unwrap()
}

fn root_ca(content: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": "default"},
        "data": {"ca.crt": content},
    })
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(start_paused = true)]
async fn the_service_account_volume_is_written_and_kept_fresh_while_the_pod_runs() {
    let n = node();
    n.images.store("busybox:1.36");
    n.api.put("configmaps", root_ca("CA1"));
    let w = running_worker(&n, pod_with_service_account_volume()).await;
    let pod_dir = n.shared.root.join("pods").join(UID);
    let vol = pod_dir.join("volumes/kube-api-access-abcde");
    let read = |f: &str| std::fs::read_to_string(vol.join(f)).unwrap();
    assert_eq!(read("token"), "token-1");
    assert_eq!(read("ca.crt"), "CA1");
    assert_eq!(read("namespace"), "default");
    assert_eq!(mode_of(&pod_dir), 0o700);
    assert_eq!(mode_of(&pod_dir.join("volumes")), 0o700);
    assert_eq!(mode_of(&vol), 0o755);
    assert_eq!(mode_of(&vol.join("token")), 0o644);
    let token_requests: Vec<_> = n
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == axum::http::Method::POST && r.path.ends_with("/token"))
        .collect();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].path,
        "/api/v1/namespaces/default/serviceaccounts/default/token"
    );
    assert_eq!(
        token_requests[0].body["spec"],
        json!({
            "audiences": [],
            "expirationSeconds": 3607,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": UID},
        })
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(w.run(rx));
    // The ConfigMap changes: the next sync (a minute) writes it; the token is still fresh.
    n.api.put("configmaps", root_ca("CA2"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(read("ca.crt"), "CA1");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(read("ca.crt"), "CA2");
    assert_eq!(read("token"), "token-1");
    // Past 80% of the token's lifetime the next sync writes a new one.
    n.api.advance(2886);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(read("token"), "token-2");
    assert_eq!(n.shared.tokens.cached(), 1);
    // The pod goes: its tokens are forgotten.
    tx.send(Update::Gone).unwrap();
    worker.await.unwrap();
    assert_eq!(n.shared.tokens.cached(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_missing_root_ca_config_map_keeps_the_container_waiting() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut w = PodWorker::new(n.shared.clone(), pod_with_service_account_volume(), None).await;
    assert!(w.sync().await.is_some(), "retried later");
    assert_eq!(
        waiting_reason(&w.containers[0]),
        "CreateContainerConfigError"
    );
    n.api.put("configmaps", root_ca("CA1"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    w.sync().await;
    assert!(matches!(
        w.containers[0].record.state,
        State::Running { .. }
    ));
}

/// A pod with one container `app` (busybox:1.36): `spec` and `container` fields merged in.
fn app_pod(spec: serde_json::Value, container: serde_json::Value) -> Pod {
    let mut c = json!({"name": "app", "image": "busybox:1.36"});
    c.as_object_mut()
        .unwrap()
        .extend(container.as_object().unwrap().clone());
    let mut s = json!({"restartPolicy": "Always", "containers": [c]});
    s.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": s,
    }))
    .unwrap()
}

fn waiting_message(slot: &Slot) -> String {
    match &slot.record.state {
        State::Waiting { message, .. } => message.clone().unwrap_or_default(),
        other => panic!("not waiting: {other:?}"),
    }
}

/// A container planted `x -> /` in the pod's emptyDir (here: the test, as it would have): the
/// next container mounting subPath `x` waits in CreateContainerConfigError with the reason,
/// and is never created.
#[tokio::test(start_paused = true)]
async fn a_symlinked_sub_path_keeps_the_container_in_create_container_config_error() {
    let n = node();
    n.images.store("busybox:1.36");
    let p = app_pod(
        json!({"volumes": [{"name": "data", "emptyDir": {}}]}),
        json!({"volumeMounts": [{"name": "data", "mountPath": "/host", "subPath": "x"}]}),
    );
    let volume = crate::kubelet::container_config::volumes_dir(&n.shared.root, UID)
        .unwrap()
        .join("data");
    std::fs::create_dir_all(&volume).unwrap();
    std::os::unix::fs::symlink("/", volume.join("x")).unwrap();
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    assert!(w.sync().await.is_some(), "retried later");
    assert_eq!(
        waiting_reason(&w.containers[0]),
        "CreateContainerConfigError"
    );
    let message = waiting_message(&w.containers[0]);
    assert!(
        message.contains("failed to prepare subPath for volumeMount \"data\" of container \"app\"")
            && message.contains("is a symlink"),
        "{message}"
    );
    assert!(creates(&n.runtime.calls()).is_empty());
}

/// runAsNonRoot at the pod level with an image that runs as root (no USER): refused with the
/// kubelet's message, never created.
#[tokio::test(start_paused = true)]
async fn run_as_non_root_with_a_root_image_is_a_create_container_config_error() {
    let n = node();
    n.images.store("busybox:1.36");
    let p = app_pod(
        json!({"securityContext": {"runAsNonRoot": true}}),
        json!({}),
    );
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    assert!(w.sync().await.is_some(), "retried later");
    assert_eq!(
        waiting_reason(&w.containers[0]),
        "CreateContainerConfigError"
    );
    assert_eq!(
        waiting_message(&w.containers[0]),
        format!("container has runAsNonRoot and image will run as root (pod: \"web_default({UID})\", container: app)")
    );
    assert!(creates(&n.runtime.calls()).is_empty());
}

/// hostNetwork: no pod network (no address taken), the pod's IP is the node's, and its
/// containers run.
#[tokio::test(start_paused = true)]
async fn a_host_network_pod_takes_the_nodes_ip_and_no_pod_address() {
    let n = node();
    n.images.store("busybox:1.36");
    let p = app_pod(json!({"hostNetwork": true}), json!({}));
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    w.sync().await;
    assert!(matches!(
        w.containers[0].record.state,
        State::Running { .. }
    ));
    assert_eq!(w.ip, Some(Ipv4Addr::new(192, 168, 0, 10)));
    assert!(n.network.attached().is_empty());
}

/// A pod setting a sysctl outside the allowlist fails at once with the kubelet's
/// SysctlForbidden, and nothing of it is created on the node.
#[tokio::test(start_paused = true)]
async fn a_forbidden_sysctl_fails_the_pod_before_anything_runs() {
    let n = node();
    n.images.store("busybox:1.36");
    let mut p = pod("Always", &[], &[("app", "busybox:1.36")]);
    p.spec.as_mut().unwrap().security_context = Some(
        serde_json::from_value(
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}),
        )
        .unwrap(),
    );
    let mut w = PodWorker::new(n.shared.clone(), p, None).await;
    assert_eq!(w.sync().await, None);
    assert!(n.runtime.calls().is_empty(), "{:?}", n.runtime.calls());
    let status = w.current_status();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("SysctlForbidden"));
    assert_eq!(
        status.message.as_deref(),
        Some("forbidden sysctl: \"net.core.somaxconn\" not allowlisted")
    );
    assert!(n
        .event_reasons()
        .await
        .contains(&"SysctlForbidden".to_owned()));
}

#[test]
fn set_hostname_as_fqdn_names_the_sandbox_by_its_fqdn_within_64_characters() {
    let pod = |spec: serde_json::Value| -> Pod {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "web-0", "namespace": "prod"},
            "spec": spec}),
        )
        .unwrap()
    };
    let fqdn = pod(
        serde_json::json!({"containers": [], "hostname": "web-0", "subdomain": "nginx",
        "setHostnameAsFQDN": true}),
    );
    assert_eq!(
        super::sandbox_hostname(&fqdn, "cluster.local").unwrap(),
        "web-0.nginx.prod.svc.cluster.local"
    );
    let plain =
        pod(serde_json::json!({"containers": [], "hostname": "web-0", "subdomain": "nginx"}));
    assert_eq!(
        super::sandbox_hostname(&plain, "cluster.local").unwrap(),
        "web-0"
    );
    let no_subdomain = pod(serde_json::json!({"containers": [], "setHostnameAsFQDN": true}));
    assert_eq!(
        super::sandbox_hostname(&no_subdomain, "cluster.local").unwrap(),
        "web-0"
    );
    let long = pod(serde_json::json!({"containers": [], "hostname": "web-0",
        "subdomain": "a-very-long-subdomain-name-for-this-test", "setHostnameAsFQDN": true}));
    let err = super::sandbox_hostname(&long, "cluster.local").unwrap_err();
    assert!(
        err.contains("is too long (64 characters is the max"),
        "{err}"
    );
}
