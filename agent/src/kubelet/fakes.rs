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
            host: Default::default(),
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
    /// Who sent it: a client certificate's CommonName, `token:<bearer>`, or `anonymous`.
    pub caller: String,
    /// The SHA-256 (hex) of the client certificate it came with, if any.
    pub cert: Option<String>,
}

/// What the fake does with a new CertificateSigningRequest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CsrPolicy {
    /// Approve and sign it at once.
    #[default]
    Approve,
    /// Approve and sign it after a while (the waiter watches).
    ApproveAfter(Duration),
    /// Deny it with this reason and message.
    Deny(String, String),
    /// Leave it pending.
    Pending,
}

/// A CA for the fake API: signs CSRs and serves TLS.
pub struct FakeCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    /// The CA certificate (PEM).
    pub pem: String,
}

impl FakeCa {
    /// A new CA.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-ca");
        let pem = params.clone().self_signed(&key).expect("CA cert").pem();
        Self { key, params, pem }
    }

    fn validity(params: &mut rcgen::CertificateParams, lifetime: i64) {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(1);
        params.not_after = now + time::Duration::seconds(lifetime);
    }

    /// Signs a PKCS#10 request (PEM) for `lifetime` seconds, for client or server auth.
    pub fn sign_csr(&self, csr_pem: &str, lifetime: i64, server: bool) -> Result<String, String> {
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        Self::validity(&mut csr.params, lifetime);
        csr.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        Ok(csr.signed_by(&issuer).map_err(|e| e.to_string())?.pem())
    }

    /// A certificate and key for `cn` in `orgs` at `sans`, for client or server auth.
    pub fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[&str],
        server: bool,
    ) -> crate::kubelet::identity::store::KeyedCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        Self::validity(&mut params, 3600);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        crate::kubelet::identity::store::KeyedCert::new(&cert.pem(), &key.serialize_pem())
            .expect("keyed cert")
    }
}

/// The fake's certificates, tokens and access rules.
#[derive(Default)]
struct IdentityState {
    csrs: BTreeMap<String, Value>,
    resource_version: u64,
    policy: CsrPolicy,
    /// Bearer tokens the TokenReview knows: token → (user, groups).
    token_users: BTreeMap<String, (String, Vec<String>)>,
    /// Bearer tokens refused with a 401.
    refused: HashSet<String>,
    /// Access the SubjectAccessReview allows: (user, verb, subresource).
    allowed: HashSet<(String, String, String)>,
}

/// The identity of a TLS connection to the fake ([`FakeApi::serve_tls`]).
#[derive(Debug, Clone)]
struct FakePeer {
    cn: String,
    fingerprint: String,
}

fn status(code: StatusCode, reason: &str, message: &str) -> axum::response::Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "code": code.as_u16(),
            "message": message,
        })),
    )
        .into_response()
}

/// An in-process API server for the worker: answers Service lists with nothing, echoes pod
/// status patches and deletions back as the pod, accepts events, serves the ConfigMaps,
/// Secrets and Nodes put into it (404 for others), answers TokenRequests with `token-1`,
/// `token-2`, ... expiring `expirationSeconds` after its own clock ([`FakeApi::now`]); records
/// every request. For the node's identity: CertificateSigningRequests (created, read, watched;
/// approved and signed by its [`FakeCa`] as its [`CsrPolicy`] says), TokenReviews of the tokens
/// it was told about, SubjectAccessReviews by its allow list, 401 for refused tokens; over
/// real TLS with client certificates too ([`FakeApi::serve_tls`]).
#[derive(Clone, Default)]
pub struct FakeApi {
    requests: Arc<Mutex<Vec<Request>>>,
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    tokens: Arc<std::sync::atomic::AtomicU64>,
    clock: Arc<std::sync::atomic::AtomicI64>,
    identity: Arc<Mutex<IdentityState>>,
    ca: Arc<std::sync::OnceLock<FakeCa>>,
}

/// Where the fake API's clock starts.
const FAKE_API_EPOCH: i64 = 1_700_000_000;

/// The CSR collection.
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

impl FakeApi {
    /// A client whose transport is this fake.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// The fake's CA.
    pub fn ca(&self) -> &FakeCa {
        self.ca.get_or_init(FakeCa::new)
    }

    /// What happens to new CSRs from now on.
    pub fn csr_policy(&self, policy: CsrPolicy) {
        lock(&self.identity).policy = policy;
    }

    /// TokenReviews of `token` say it is `user` in `groups`.
    pub fn token_user(&self, token: &str, user: &str, groups: &[&str]) {
        lock(&self.identity).token_users.insert(
            token.to_owned(),
            (
                user.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            ),
        );
    }

    /// Requests bearing `token` get a 401.
    pub fn refuse(&self, token: &str) {
        lock(&self.identity).refused.insert(token.to_owned());
    }

    /// SubjectAccessReviews allow `user` to `verb` nodes' `subresource`.
    pub fn allow(&self, user: &str, verb: &str, subresource: &str) {
        lock(&self.identity).allowed.insert((
            user.to_owned(),
            verb.to_owned(),
            subresource.to_owned(),
        ));
    }

    /// The CSRs so far.
    pub fn csrs(&self) -> Vec<Value> {
        lock(&self.identity).csrs.values().cloned().collect()
    }

    /// Serves this fake over HTTPS on 127.0.0.1 (a certificate of its CA for `127.0.0.1` and
    /// `localhost`), asking for client certificates of its CA; returns `https://127.0.0.1:PORT`.
    pub async fn serve_tls(&self) -> String {
        use rustls::pki_types::pem::PemObject as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca().pem.as_bytes()) {
            roots.add(ca.expect("CA")).expect("CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("verifier");
        let serving = self
            .ca()
            .issue("fake-apiserver", &[], &["127.0.0.1", "localhost"], true);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(crate::kubelet::server_tls::ServingCert {
                slot: None,
                fallback: serving.certified_key().expect("serving key"),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = self.router();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| {
                            use sha2::Digest as _;
                            let cn = x509_parser::parse_x509_certificate(c.as_ref())
                                .ok()
                                .and_then(|(_, p)| {
                                    let cn = p.subject().iter_common_name().next()?;
                                    cn.as_str().ok().map(str::to_owned)
                                })
                                .unwrap_or_default();
                            FakePeer {
                                cn,
                                fingerprint: format!("{:x}", sha2::Sha256::digest(c.as_ref())),
                            }
                        });
                    let app = router.layer(axum::Extension(peer));
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        format!("https://127.0.0.1:{port}")
    }

    /// The fake's routes.
    fn router(&self) -> axum::Router {
        let api = self.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let api = api.clone();
            async move { api.handle(req).await }
        })
    }

    async fn handle(&self, req: axum::extract::Request) -> axum::response::Response {
        let (parts, body) = req.into_parts();
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_owned();
        let peer = parts
            .extensions
            .get::<Option<FakePeer>>()
            .cloned()
            .flatten();
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let caller = match (&peer, &bearer) {
            (Some(p), _) => p.cn.clone(),
            (None, Some(t)) => format!("token:{t}"),
            (None, None) => "anonymous".to_owned(),
        };
        lock(&self.requests).push(Request {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
            caller: caller.clone(),
            cert: peer.as_ref().map(|p| p.fingerprint.clone()),
        });
        if peer.is_none()
            && bearer
                .as_ref()
                .is_some_and(|t| lock(&self.identity).refused.contains(t))
        {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
        if path.starts_with(CSRS) {
            return self.csr_request(&method, &uri, body, &caller).await;
        }
        if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let status = match lock(&self.identity).token_users.get(token) {
                Some((user, groups)) => json!({"authenticated": true,
                    "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups}}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            let reply = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {}, "spec": body["spec"], "status": status});
            return (StatusCode::CREATED, axum::Json(reply)).into_response();
        }
        if method == Method::POST && path == "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
            let spec = &body["spec"];
            let attrs = &spec["resourceAttributes"];
            let user = spec["user"].as_str().unwrap_or_default().to_owned();
            let masters = spec["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "system:masters"));
            let key = (
                user,
                attrs["verb"].as_str().unwrap_or_default().to_owned(),
                attrs["subresource"].as_str().unwrap_or_default().to_owned(),
            );
            let allowed = masters || lock(&self.identity).allowed.contains(&key);
            let reply = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "metadata": {}, "spec": spec, "status": {"allowed": allowed,
                "reason": if allowed { "allowed by the fake" } else { "" }}});
            return (StatusCode::CREATED, axum::Json(reply)).into_response();
        }
        if method == Method::POST && path.ends_with("/token") {
            let n = self
                .tokens
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
            let expires =
                k8s_openapi::jiff::Timestamp::from_second(self.now().as_second() + seconds)
                    .unwrap_or_default();
            let reply = json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {}, "spec": body["spec"],
                "status": {"token": format!("token-{n}"), "expirationTimestamp": expires.to_string()},
            });
            return (StatusCode::CREATED, axum::Json(reply)).into_response();
        }
        if path.contains("/configmaps/")
            || path.contains("/secrets/")
            || path.starts_with("/api/v1/nodes/")
        {
            return match lock(&self.objects).get(&path) {
                Some(o) => (StatusCode::OK, axum::Json(o.clone())).into_response(),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{path} not found"),
                ),
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

    /// Approves and signs the CSR `name` (if it is still pending).
    pub fn approve(&self, name: &str) {
        let mut st = lock(&self.identity);
        let Some(csr) = st.csrs.get(name).cloned() else {
            return;
        };
        if !csr["status"].is_null() {
            return;
        }
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let request = b64
            .decode(csr["spec"]["request"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let lifetime = csr["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(365 * 86_400);
        let server = csr["spec"]["signerName"] == crate::kubelet::identity::csr::SERVING_SIGNER;
        let status = match self
            .ca()
            .sign_csr(&String::from_utf8_lossy(&request), lifetime, server)
        {
            Ok(pem) => json!({
                "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved",
                    "message": "approved by the fake"}],
                "certificate": b64.encode(pem),
            }),
            Err(e) => json!({"conditions": [{"type": "Failed", "status": "True",
                "reason": "SignerError", "message": e}]}),
        };
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        if let Some(c) = st.csrs.get_mut(name) {
            c["status"] = status;
            c["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    fn deny(&self, name: &str, reason: &str, message: &str) {
        let mut st = lock(&self.identity);
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        if let Some(c) = st.csrs.get_mut(name) {
            c["status"] = json!({"conditions": [{"type": "Denied", "status": "True",
                "reason": reason, "message": message}]});
            c["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    async fn csr_request(
        &self,
        method: &Method,
        uri: &Uri,
        mut body: Value,
        caller: &str,
    ) -> axum::response::Response {
        let path = uri.path();
        let name = path
            .strip_prefix(CSRS)
            .unwrap_or_default()
            .trim_start_matches('/');
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        match (method.clone(), name.is_empty()) {
            (Method::POST, true) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let policy = {
                    let mut st = lock(&self.identity);
                    if st.csrs.contains_key(&name) {
                        drop(st);
                        return status(
                            StatusCode::CONFLICT,
                            "AlreadyExists",
                            &format!("{name} exists"),
                        );
                    }
                    st.resource_version += 1;
                    body["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                    body["spec"]["username"] = json!(caller);
                    body["status"] = Value::Null;
                    st.csrs.insert(name.clone(), body.clone());
                    st.policy.clone()
                };
                match policy {
                    CsrPolicy::Approve => self.approve(&name),
                    CsrPolicy::Deny(reason, message) => self.deny(&name, &reason, &message),
                    CsrPolicy::ApproveAfter(delay) => {
                        let api = self.clone();
                        let name = name.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            api.approve(&name);
                        });
                    }
                    CsrPolicy::Pending => {}
                }
                let created = lock(&self.identity)
                    .csrs
                    .get(&name)
                    .cloned()
                    .unwrap_or(body);
                (StatusCode::CREATED, axum::Json(created)).into_response()
            }
            (Method::GET, false) => match lock(&self.identity).csrs.get(name) {
                Some(c) => (StatusCode::OK, axum::Json(c.clone())).into_response(),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                ),
            },
            (Method::GET, true)
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                let name = query
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .unwrap_or_default()
                    .to_owned();
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = Duration::from_secs(
                    query
                        .get("timeoutSeconds")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(30u64)
                        .min(30),
                );
                let identity = self.identity.clone();
                let start = tokio::time::Instant::now();
                let events = futures::stream::unfold(false, move |done| {
                    let (identity, name) = (identity.clone(), name.clone());
                    async move {
                        if done {
                            return None;
                        }
                        loop {
                            let changed = lock(&identity).csrs.get(&name).cloned().filter(|c| {
                                c["metadata"]["resourceVersion"]
                                    .as_str()
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .is_some_and(|rv| rv > since)
                            });
                            if let Some(c) = changed {
                                let mut line =
                                    serde_json::to_vec(&json!({"type": "MODIFIED", "object": c}))
                                        .unwrap_or_default();
                                line.push(b'\n');
                                return Some((
                                    Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                                    true,
                                ));
                            }
                            if start.elapsed() >= timeout {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                });
                (StatusCode::OK, axum::body::Body::from_stream(events)).into_response()
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not in the fake",
            ),
        }
    }

    /// Serves `node` (a Node) from now on at `/api/v1/nodes/<name>`.
    pub fn put_node(&self, node: Value) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/nodes/{name}");
        lock(&self.objects).insert(path, node);
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
