//! Fakes of the kubelet's seams for unit tests: a runtime, a pod network and an image service
//! that keep their state in memory and record what they were asked, and an in-process API
//! server (an axum router behind a `kube::Client`) that records writes. No root, no netlink,
//! no files beyond a temporary directory.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse as _;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use crate::images::{Digest, Image, ImageConfig, ImageError, ImageService, PullPolicy};
use crate::network::node_network::NodeNetworkError;
use crate::network::PodNetworking;
use crate::runtime::{
    Container, ContainerRuntime, ContainerSpec, ContainerState, ExecOutput, ExitStatus, PodState,
    RuntimeError, Sandbox,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A runtime call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `create_sandbox(uid)`.
    CreateSandbox(String),
    /// `remove_pod_by_uid(uid)` or `remove_sandbox` of that pod.
    RemovePod(String),
    /// `create_container` of a container, by name.
    Create(String),
    /// `start`.
    Start(String),
    /// `stop` with its grace period.
    Stop(String, Duration),
    /// `delete_container`.
    Delete(String),
}

#[derive(Default)]
struct RuntimeState {
    calls: Vec<Call>,
    sandboxes: BTreeMap<String, (Sandbox, bool)>,
    containers: BTreeMap<String, (Container, ContainerState)>,
    fail_start: HashSet<String>,
    next_pid: i32,
}

/// A runtime in memory. Containers run until a test ends them ([`FakeRuntime::exit`]) or
/// they are stopped (then they end with 143, SIGTERM).
pub struct FakeRuntime {
    root: PathBuf,
    state: Mutex<RuntimeState>,
}

impl FakeRuntime {
    /// A runtime whose pods' directories (for `/etc/hosts`) are under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            state: Mutex::new(RuntimeState {
                next_pid: 1000,
                ..RuntimeState::default()
            }),
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }

    /// Ends a container's current instance with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let mut st = lock(&self.state);
        let (_, state) = st
            .containers
            .values_mut()
            .find(|(c, _)| c.name == name)
            .expect("no such container");
        *state = ContainerState::Exited(Some(ExitStatus { code, signal: None }));
    }

    /// The pause process of the pod dies.
    pub fn kill_sandbox(&self, uid: &str) {
        if let Some((_, running)) = lock(&self.state).sandboxes.get_mut(uid) {
            *running = false;
        }
    }

    /// Starting this container fails from now on.
    pub fn fail_start(&self, name: &str) {
        lock(&self.state).fail_start.insert(name.to_owned());
    }

    /// What a restarted agent would find: the pod's sandbox and containers.
    pub fn found(&self, uid: &str) -> Option<PodState> {
        self.list().ok()?.into_iter().find(|p| p.sandbox.uid == uid)
    }

    fn record(&self, call: Call) {
        lock(&self.state).calls.push(call);
    }
}

impl ContainerRuntime for FakeRuntime {
    fn create_sandbox(&self, pod_uid: &str, hostname: &str) -> Result<Sandbox, RuntimeError> {
        std::fs::create_dir_all(self.root.join("pods").join(pod_uid)).map_err(|source| {
            RuntimeError::Io {
                what: "pod directory".into(),
                source,
            }
        })?;
        let mut st = lock(&self.state);
        st.calls.push(Call::CreateSandbox(pod_uid.to_owned()));
        st.next_pid += 1;
        let sandbox = Sandbox {
            uid: pod_uid.to_owned(),
            hostname: hostname.to_owned(),
            pause_pid: st.next_pid,
            pause_start_time: 1,
        };
        st.sandboxes
            .insert(pod_uid.to_owned(), (sandbox.clone(), true));
        Ok(sandbox)
    }

    fn sandbox_running(&self, sandbox: &Sandbox) -> bool {
        lock(&self.state)
            .sandboxes
            .get(&sandbox.uid)
            .is_some_and(|(s, running)| s == sandbox && *running)
    }

    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        self.remove_pod_by_uid(&sandbox.uid)
    }

    fn remove_pod_by_uid(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let mut st = lock(&self.state);
        st.calls.push(Call::RemovePod(pod_uid.to_owned()));
        st.sandboxes.remove(pod_uid);
        st.containers.retain(|_, (c, _)| c.pod_uid != pod_uid);
        Ok(())
    }

    fn create_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<Container, RuntimeError> {
        let mut st = lock(&self.state);
        st.calls.push(Call::Create(spec.name.clone()));
        let id = format!("{}-{}", sandbox.uid, spec.name);
        if st.containers.contains_key(&id) {
            return Err(RuntimeError::Exists(id));
        }
        st.next_pid += 1;
        let container = Container {
            pod_uid: sandbox.uid.clone(),
            name: spec.name.clone(),
            id: id.clone(),
            pid: st.next_pid,
            start_time: 1,
            log_path: spec.log_path.clone().unwrap_or_default(),
            cgroups_path: format!("/skiff/{}/{}", sandbox.uid, spec.name),
        };
        st.containers
            .insert(id, (container.clone(), ContainerState::Created));
        Ok(container)
    }

    fn start(&self, container: &Container) -> Result<(), RuntimeError> {
        let mut st = lock(&self.state);
        st.calls.push(Call::Start(container.name.clone()));
        if st.fail_start.contains(&container.name) {
            return Err(RuntimeError::Shim {
                op: "start",
                id: container.id.clone(),
                message: "exec: no such file".into(),
            });
        }
        if let Some((_, state)) = st.containers.get_mut(&container.id) {
            *state = ContainerState::Running;
        }
        Ok(())
    }

    fn status(&self, container: &Container) -> Result<ContainerState, RuntimeError> {
        Ok(lock(&self.state)
            .containers
            .get(&container.id)
            .filter(|(c, _)| c.pid == container.pid)
            .map_or(ContainerState::Exited(None), |(_, s)| *s))
    }

    fn stop(&self, container: &Container, grace: Duration) -> Result<ContainerState, RuntimeError> {
        let mut st = lock(&self.state);
        st.calls.push(Call::Stop(container.name.clone(), grace));
        let ended = ContainerState::Exited(Some(ExitStatus {
            code: 143,
            signal: Some(15),
        }));
        if let Some((_, state)) = st.containers.get_mut(&container.id) {
            if *state == ContainerState::Running {
                *state = ended;
            }
        }
        Ok(ended)
    }

    fn delete_container(&self, container: &Container) -> Result<(), RuntimeError> {
        self.record(Call::Delete(container.name.clone()));
        lock(&self.state).containers.remove(&container.id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<PodState>, RuntimeError> {
        let st = lock(&self.state);
        Ok(st
            .sandboxes
            .values()
            .map(|(sandbox, running)| PodState {
                sandbox: sandbox.clone(),
                running: *running,
                containers: st
                    .containers
                    .values()
                    .filter(|(c, _)| c.pod_uid == sandbox.uid)
                    .cloned()
                    .collect(),
            })
            .collect())
    }

    fn leftover_pods(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    fn exec_output(
        &self,
        _container: &Container,
        _argv: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        Ok(ExecOutput {
            code: 0,
            output: Vec::new(),
        })
    }
}

/// A pod network handing out 10.244.0.x.
#[derive(Default)]
pub struct FakeNetwork {
    addresses: Mutex<BTreeMap<String, Ipv4Addr>>,
}

impl FakeNetwork {
    /// The pods holding an address.
    pub fn attached(&self) -> Vec<String> {
        lock(&self.addresses).keys().cloned().collect()
    }
}

impl PodNetworking for FakeNetwork {
    fn attach<'a>(
        &'a self,
        pod_uid: &'a str,
        _netns: &'a Path,
    ) -> BoxFuture<'a, Result<Ipv4Addr, NodeNetworkError>> {
        Box::pin(async move {
            let mut a = lock(&self.addresses);
            let next = Ipv4Addr::new(10, 244, 0, 2 + u8::try_from(a.len()).unwrap_or(0));
            Ok(*a.entry(pod_uid.to_owned()).or_insert(next))
        })
    }

    fn detach<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), NodeNetworkError>> {
        Box::pin(async move {
            lock(&self.addresses).remove(pod_uid);
            Ok(())
        })
    }

    fn address_of<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Option<Ipv4Addr>> {
        Box::pin(async move { lock(&self.addresses).get(pod_uid).copied() })
    }

    fn allocated_pods(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move { self.attached() })
    }
}

/// Images in memory, following [`crate::images::ImageStore::ensure`]'s contract: `Never`
/// never pulls, `IfNotPresent` pulls what is missing, `Always` pulls (and falls back to the
/// stored image when the registry fails).
#[derive(Default)]
pub struct FakeImages {
    present: Mutex<HashSet<String>>,
    unreachable: Mutex<HashSet<String>>,
    pulls: Mutex<Vec<String>>,
}

impl FakeImages {
    /// An image that is stored already.
    pub fn store(&self, reference: &str) {
        lock(&self.present).insert(reference.to_owned());
    }

    /// Pulling this reference fails.
    pub fn unreachable(&self, reference: &str) {
        lock(&self.unreachable).insert(reference.to_owned());
    }

    /// The references pulled so far.
    pub fn pulls(&self) -> Vec<String> {
        lock(&self.pulls).clone()
    }

    fn image(reference: &str) -> Image {
        let digest = Digest::of(reference.as_bytes());
        Image {
            reference: reference.to_owned(),
            id: digest.clone(),
            manifest_digest: digest,
            layers: Vec::new(),
            config: ImageConfig {
                cmd: vec!["sh".into()],
                ..ImageConfig::default()
            },
            size: 0,
        }
    }
}

impl ImageService for FakeImages {
    fn contains(&self, reference: &str) -> bool {
        lock(&self.present).contains(reference)
    }

    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(async move {
            let present = self.contains(reference);
            match (policy, present) {
                (PullPolicy::Never | PullPolicy::IfNotPresent, true) => {
                    return Ok(Self::image(reference))
                }
                (PullPolicy::Never, false) => {
                    return Err(ImageError::NeverPull(reference.to_owned()))
                }
                _ => {}
            }
            lock(&self.pulls).push(reference.to_owned());
            if lock(&self.unreachable).contains(reference) {
                return if present {
                    Ok(Self::image(reference))
                } else {
                    Err(ImageError::Pull {
                        reference: reference.to_owned(),
                        reason: "registry unreachable".into(),
                    })
                };
            }
            self.store(reference);
            Ok(Self::image(reference))
        })
    }
}

/// A request the fake API server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Its JSON body (`Null` without one).
    pub body: Value,
}

/// An in-process API server for the worker: answers Service lists with nothing, echoes pod
/// status patches and deletions back as the pod, accepts events, serves the ConfigMaps and
/// Secrets put into it (404 for others), answers TokenRequests with `token-1`, `token-2`, ...
/// expiring `expirationSeconds` after its own clock ([`FakeApi::now`]); records every request.
#[derive(Clone, Default)]
pub struct FakeApi {
    requests: Arc<Mutex<Vec<Request>>>,
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    tokens: Arc<std::sync::atomic::AtomicU64>,
    clock: Arc<std::sync::atomic::AtomicI64>,
}

/// Where the fake API's clock starts.
const FAKE_API_EPOCH: i64 = 1_700_000_000;

impl FakeApi {
    /// A client whose transport is this fake.
    pub fn client(&self) -> kube::Client {
        let requests = self.requests.clone();
        let api = self.clone();
        let router = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let requests = requests.clone();
            let api = api.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let path = uri.path().to_owned();
                lock(&requests).push(Request {
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                if method == Method::POST && path.ends_with("/token") {
                    let n = api.tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
                    let expires = k8s_openapi::jiff::Timestamp::from_second(
                        api.now().as_second() + seconds,
                    )
                    .unwrap_or_default();
                    let reply = json!({
                        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "metadata": {}, "spec": body["spec"],
                        "status": {"token": format!("token-{n}"), "expirationTimestamp": expires.to_string()},
                    });
                    return (StatusCode::CREATED, axum::Json(reply)).into_response();
                }
                if path.contains("/configmaps/") || path.contains("/secrets/") {
                    return match lock(&api.objects).get(&path) {
                        Some(o) => (StatusCode::OK, axum::Json(o.clone())).into_response(),
                        None => (
                            StatusCode::NOT_FOUND,
                            axum::Json(json!({
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "reason": "NotFound", "code": 404,
                                "message": format!("{path} not found"),
                            })),
                        )
                            .into_response(),
                    };
                }
                let reply = if path.ends_with("/services") {
                    json!({"kind": "ServiceList", "apiVersion": "v1", "metadata": {}, "items": []})
                } else if path.contains("/events") {
                    body
                } else {
                    // A pod: its name is the path segment after `pods`.
                    let name = path
                        .split('/')
                        .skip_while(|s| *s != "pods")
                        .nth(1)
                        .unwrap_or_default();
                    json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "default"},
                        "status": body.get("status").cloned().unwrap_or(Value::Null),
                    })
                };
                (StatusCode::OK, axum::Json(reply)).into_response()
            }
        });
        kube::Client::new(router, "default")
    }

    /// Serves `object` (a ConfigMap or Secret) from now on, at its namespace and name.
    pub fn put(&self, kind: &str, object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/namespaces/{ns}/{kind}/{name}");
        lock(&self.objects).insert(path, object);
    }

    /// The fake API's clock (tokens expire by it).
    pub fn now(&self) -> k8s_openapi::jiff::Timestamp {
        let offset = self.clock.load(std::sync::atomic::Ordering::SeqCst);
        k8s_openapi::jiff::Timestamp::from_second(FAKE_API_EPOCH + offset).unwrap_or_default()
    }

    /// Moves the fake API's clock on.
    pub fn advance(&self, seconds: i64) {
        self.clock
            .fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.requests).clone()
    }

    /// The reasons of the events written so far, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path.contains("/events"))
            .filter_map(|r| r.body.get("reason")?.as_str().map(str::to_owned))
            .collect()
    }

    /// The pod deletions so far (graceful deletion completing).
    pub fn deletions(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == Method::DELETE)
            .count()
    }
}
