//! The node's HTTP endpoints, named as the kubelet names them:
//!
//! - HTTPS on `--kubelet-port` (10250), for the API server's `pods/log`, `pods/exec` and
//!   `pods/portforward`: `GET /containerLogs/{ns}/{pod}/{container}`,
//!   `GET /exec/{ns}/{pod}/{container}` and `GET /attach/{ns}/{pod}/{container}` (websocket,
//!   [`super::streaming`], [`super::attach`]) and
//!   `GET|POST /portForward/{ns}/{pod}` (websocket, [`super::portforward`], or a SPDY/3.1
//!   upgrade, [`super::portforward_spdy`]), plus `/healthz`, `/pods`, `/metrics`,
//!   `/metrics/resource` and `/stats/summary` (the node's, pods' and containers' CPU and
//!   memory from their cgroups, [`super::resource_metrics`], [`super::stats_summary`]). The
//!   certificate is the one the cluster's `kubelet-serving` signer
//!   issued for the node when the agent joined with a token ([`super::identity::serving`]),
//!   self-signed (made once under `<root>/kubelet/`) until then or otherwise
//!   ([`super::server_tls`]). Every request is
//!   authenticated (a client certificate of the cluster CA, or a bearer token through a
//!   TokenReview) and authorized (a SubjectAccessReview on `nodes/<subresource>`), as the
//!   kubelet does ([`super::auth`]).
//! - Plain HTTP on `--read-only-port` (off unless set; the kubelet's 10255), unauthenticated and
//!   read-only: `/healthz`, `/pods` (a v1 PodList), `/metrics`, `/metrics/resource`
//!   (Prometheus text) and `/stats/summary`. Insecure:
//!   anyone who reaches the port sees every pod of the node.
//!
//! Container logs rotate here too (copytruncate, [`super::logs`]).

#![allow(
    clippy::result_large_err,
    reason = "a bad parameter's error is the axum Response sent for it, built once per request"
)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::auth::{KubeletAuth, PeerIdentity, Refusal};
use super::directory::{LocateError, PodDirectory};
pub use super::http::ServerState;
use super::http::{query_bool, query_pairs, status_response};
use super::identity::rotation::CertSlot;
use super::logs::{self, LogOptions};
use super::node::KUBELET_PORT;
use crate::runtime::Runtime;

/// The kubelet's read-only port, when one is wanted (`--read-only-port 10255`).
pub const READ_ONLY_PORT: u16 = 10255;
/// How often logs are checked for rotation.
const ROTATE_INTERVAL: Duration = Duration::from_secs(10);
/// How long open streams may take to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// The read-only endpoint's address: the loopback address of `kubelet_address`'s family.
pub fn read_only_address(kubelet_address: IpAddr) -> IpAddr {
    match kubelet_address {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// The command-line flags of the node's HTTP endpoints (flatten into the agent's CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The port of the agent's HTTPS endpoint (logs, exec for the API server); advertised in
    /// the Node's status.daemonEndpoints.kubeletEndpoint.
    #[arg(long, default_value_t = KUBELET_PORT)]
    pub kubelet_port: u16,
    /// The address the HTTPS endpoint listens on (the read-only endpoint: its family's
    /// loopback address).
    #[arg(long, default_value = "0.0.0.0")]
    pub kubelet_address: IpAddr,
    /// The port of the unauthenticated read-only endpoint (/healthz, /pods, /metrics; the
    /// kubelet's is 10255); 0, the default, disables it. Insecure: anyone who reaches it can
    /// list the node's pods.
    #[arg(long, default_value_t = 0)]
    pub read_only_port: u16,
    /// A container log larger than this is rotated (bytes, or with a Ki/Mi/Gi suffix).
    #[arg(long, default_value = "10Mi", value_parser = parse_size)]
    pub container_log_max_size: u64,
    /// Log files kept per container instance, the current one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub container_log_max_files: u32,
}

/// Parses `10Mi`, `512Ki`, `1Gi`, `100` (bytes), and the decimal `K`/`M`/`G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10Mi"))?;
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use Ki, Mi, Gi)")),
    };
    n.checked_mul(factor)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The flags.
    pub args: ServerArgs,
    /// The agent's root directory (certificate under `kubelet/`, logs under `pods/`).
    pub root_dir: PathBuf,
    /// The bearer token accepted without review (the agent's `--kubeconfig`'s admin token);
    /// [`serve`] accepts nothing else, [`serve_with`] what its [`ServerSecurity`] says.
    pub token: String,
    /// Extra names and addresses for the certificate (the node's name and IP).
    pub tls_sans: Vec<String>,
}

/// Who may call the HTTPS endpoint, and with which certificate it answers.
#[derive(Clone)]
pub struct ServerSecurity {
    /// Authentication and authorization of every request.
    pub auth: Arc<KubeletAuth>,
    /// The CA client certificates must chain to (the cluster CA); `None`: client certificates
    /// are not asked for.
    pub client_ca_pem: Option<String>,
    /// The issued serving certificate, when the node gets one (read at every handshake; the
    /// self-signed one is served while it is empty).
    pub serving: Option<Arc<CertSlot>>,
}

impl ServerSecurity {
    /// Only `token` is accepted (as an administrator), with the self-signed certificate.
    pub fn token_only(token: &str) -> Self {
        Self {
            auth: Arc::new(KubeletAuth::new(
                String::new(),
                None,
                Some(token.to_owned()),
            )),
            client_ca_pem: None,
            serving: None,
        }
    }
}

/// Errors of the node's HTTP endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate could not be made, stored or loaded.
    #[error("kubelet serving certificate: {0}")]
    Certificate(String),
    /// A listener failed.
    #[error("serving on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent's kubeconfig carries no token to authenticate callers with.
    #[error("the kubeconfig has no bearer token for the current context's user")]
    NoToken,
}

/// The bearer token of the kubeconfig's current context's user (skiff's admin token): the
/// token the agent accepts from the API server.
pub fn kubeconfig_token(kubeconfig: &kube::config::Kubeconfig) -> Result<String, ServerError> {
    use secrecy::ExposeSecret as _;
    let user = kubeconfig
        .current_context
        .as_ref()
        .and_then(|name| kubeconfig.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.user.clone().unwrap_or_default());
    kubeconfig
        .auth_infos
        .iter()
        .find(|a| user.as_ref().is_none_or(|u| &a.name == u))
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| a.token.as_ref())
        .map(|t| t.expose_secret().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(ServerError::NoToken)
}

/// The self-signed serving certificate and key (PEM), made on first use and kept under
/// `<root>/kubelet/` so that restarts present the same one.
pub fn load_or_create_certificate(
    root_dir: &Path,
    sans: &[String],
) -> Result<(String, String), ServerError> {
    let dir = root_dir.join("kubelet");
    let (cert_path, key_path) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        return Ok((cert, key));
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(sans.iter().cloned());
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.sort();
    names.dedup();
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ServerError::Certificate(e.to_string()))?;
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let write = |path: &Path, data: &str, mode: u32| -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension("tmp");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?
            .write_all(data.as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        })
        .and_then(|()| write(&key_path, &key, 0o600))
        .and_then(|()| write(&cert_path, &cert, 0o644))
        .map_err(|e| ServerError::Certificate(format!("writing under {}: {e}", dir.display())))?;
    Ok((cert, key))
}

impl IntoResponse for LocateError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            LocateError::PodNotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            LocateError::ContainerNotFound { .. } | LocateError::ContainerNameRequired { .. } => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
        };
        status_response(code, reason, self.to_string())
    }
}

/// Authenticates and authorizes every request ([`super::auth`]): 401 for no or bad
/// credentials, 403 when the API denies the access, 500 when it cannot be asked.
async fn authenticate(State(state): State<ServerState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .unwrap_or(PeerIdentity::None);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let attributes = super::auth::request_attributes(req.method(), req.uri().path(), upgrade);
    let now = std::time::Instant::now();
    let decided = async {
        let caller = state
            .auth
            .authenticate(&peer, bearer.as_deref(), now)
            .await?;
        state.auth.authorize(&caller, &attributes, now).await
    };
    match decided.await {
        Ok(()) => next.run(req).await,
        Err(Refusal::Unauthorized) => {
            status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
        }
        Err(Refusal::Forbidden(message)) => {
            status_response(StatusCode::FORBIDDEN, "Forbidden", message)
        }
        Err(Refusal::Error(message)) => {
            status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
        }
    }
}

/// The authenticated HTTPS endpoint's routes.
pub fn app(state: ServerState) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(super::attach::attach).post(super::attach::attach),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(super::exec::exec).post(super::exec::exec),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(super::portforward::port_forward).post(super::portforward::port_forward),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(super::portforward::port_forward_uid).post(super::portforward::port_forward_uid),
        )
        .merge(read_only_routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn(super::http::catch_panic))
        .with_state(state)
}

fn read_only_routes() -> Router<ServerState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route("/stats/summary", get(stats_summary))
}

/// The unauthenticated read-only endpoint's routes.
pub fn read_only_app(state: ServerState) -> Router {
    read_only_routes()
        .layer(axum::middleware::from_fn(super::http::catch_panic))
        .with_state(state)
}

async fn pods(State(state): State<ServerState>) -> Response {
    let items = state.directory.pods();
    Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
        .into_response()
}

async fn metrics(State(state): State<ServerState>) -> Response {
    let body = super::metrics::render(&state.directory.pods());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `/metrics/resource`: the node's, pods' and containers' CPU and memory from their cgroups
/// ([`super::resource_metrics`]). The files are read on a blocking thread.
async fn resource_metrics(State(state): State<ServerState>) -> Response {
    let pods = state.directory.pods();
    let read = tokio::task::spawn_blocking(move || {
        let hierarchy = crate::runtime::cgroup_stats::Hierarchy::detect()?;
        let scrape = super::resource_metrics::collect(&hierarchy, &pods, None);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok::<_, crate::runtime::cgroup_stats::CgroupStatsError>(super::resource_metrics::render(
            &scrape, now_ms,
        ))
    })
    .await;
    match read {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Ok(Err(e)) => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("reading cgroup statistics: {e}"),
        ),
        Err(e) => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("reading cgroup statistics: {e}"),
        ),
    }
}

/// `/stats/summary`: the Summary API from the same cgroup scrape as `/metrics/resource`
/// ([`super::stats_summary`]).
async fn stats_summary(State(state): State<ServerState>) -> Response {
    let pods = state.directory.pods();
    let read = tokio::task::spawn_blocking(move || {
        let hierarchy = crate::runtime::cgroup_stats::Hierarchy::detect()?;
        let scrape = super::resource_metrics::collect(&hierarchy, &pods, None);
        let at = k8s_openapi::jiff::Timestamp::now();
        Ok::<_, crate::runtime::cgroup_stats::CgroupStatsError>(super::stats_summary::render(
            state.auth.node(),
            &pods,
            &scrape,
            at,
            &state.cpu_rates,
        ))
    })
    .await;
    match read {
        Ok(Ok(summary)) => Json(summary).into_response(),
        Ok(Err(e)) => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("reading cgroup statistics: {e}"),
        ),
        Err(e) => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("reading cgroup statistics: {e}"),
        ),
    }
}

fn query_u64(pairs: &[(String, String)], key: &str) -> Result<Option<u64>, Response> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => match v.parse::<i64>() {
            // Kubernetes: tailLines < 0 means all; limitBytes and sinceSeconds must be >= 1.
            Ok(n) if n < 0 && key == "tailLines" => Ok(None),
            Ok(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid value {v:?} for {key}: must be a non-negative integer"),
            )),
        },
    }
}

async fn container_logs(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let parsed = (|| {
        Ok::<_, Response>((
            query_bool(&pairs, "previous")?,
            LogOptions {
                follow: query_bool(&pairs, "follow")?,
                tail_lines: query_u64(&pairs, "tailLines")?,
                limit_bytes: query_u64(&pairs, "limitBytes")?,
                since_seconds: query_u64(&pairs, "sinceSeconds")?,
            },
        ))
    })();
    let (previous, mut options) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let located = match state.directory.locate(&namespace, &pod, Some(&container)) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let (path, running) = if previous {
        match located.previous_log {
            Some(p) => (p, None),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "previous terminated container {:?} in pod {pod:?} not found",
                        located.container
                    ),
                )
            }
        }
    } else {
        match located.log {
            Some(p) => (p, located.running),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "container {:?} in pod {pod:?} is waiting to start: ContainerCreating",
                        located.container
                    ),
                )
            }
        }
    };
    if running.is_none() {
        // Nothing writes to it any more.
        options.follow = false;
    }
    if !path.exists() {
        // Started but nothing written yet.
        if !options.follow {
            return (StatusCode::OK, Body::empty()).into_response();
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let alive = move || running.as_ref().is_some_and(|c| c.is_running());
        tokio::select! {
            () = logs::stream(path, options, alive, tx) => {}
            () = shutdown.cancelled() => {}
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Serves the node's endpoints until `shutdown` is cancelled, accepting only `config.token`
/// (see [`serve_with`]).
pub async fn serve(
    config: ServerConfig,
    directory: Arc<dyn PodDirectory>,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let security = ServerSecurity::token_only(&config.token);
    serve_with(config, security, directory, runtime, shutdown).await
}

/// Serves the node's endpoints until `shutdown` is cancelled: HTTPS on
/// `args.kubelet_port` (callers authenticated and authorized by `security`), the read-only
/// endpoint on `args.read_only_port` (unless 0), and log rotation. Returns when the listeners
/// have stopped.
pub async fn serve_with(
    config: ServerConfig,
    security: ServerSecurity,
    directory: Arc<dyn PodDirectory>,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let state = ServerState {
        directory,
        runtime,
        auth: security.auth.clone(),
        shutdown: shutdown.clone(),
        cpu_rates: Default::default(),
    };
    let (cert, key) = load_or_create_certificate(&config.root_dir, &config.tls_sans)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fallback = super::identity::store::KeyedCert::new(&cert, &key)
        .and_then(|c| c.certified_key())
        .map_err(|e| ServerError::Certificate(e.to_string()))?;
    let (tls, verifier) = super::server_tls::server_config(
        super::server_tls::ServingCert {
            slot: security.serving.clone(),
            fallback,
        },
        security.client_ca_pem.as_deref(),
    )
    .map_err(ServerError::Certificate)?;
    let addr = SocketAddr::new(config.args.kubelet_address, config.args.kubelet_port);
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(GRACE));
        }
    });
    // TCP_NODELAY, so a followed log line or an exec keystroke is not held back by Nagle's
    // algorithm waiting for a delayed ACK.
    let acceptor = super::server_tls::PeerAcceptor::new(tls, verifier);
    let https = axum_server::bind(addr)
        .acceptor(acceptor)
        .handle(handle)
        .serve(app(state.clone()).into_make_service());

    let read_only = async {
        if config.args.read_only_port == 0 {
            return Ok(());
        }
        // Loopback only, whatever --kubelet-address says: it answers anyone unauthenticated
        // (the pods and their specs), so only the node itself may reach it.
        let addr = SocketAddr::new(
            read_only_address(config.args.kubelet_address),
            config.args.read_only_port,
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Serve { addr, source })?;
        tracing::warn!(%addr, "read-only endpoint listening: unauthenticated (--read-only-port)");
        let shutdown = shutdown.clone();
        axum::serve(listener, read_only_app(state.clone()))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|source| ServerError::Serve { addr, source })
    };

    let rotation = {
        let (root, shutdown) = (config.root_dir.clone(), shutdown.clone());
        let (max_size, max_files) = (
            config.args.container_log_max_size,
            config.args.container_log_max_files,
        );
        async move {
            let mut tick = tokio::time::interval(ROTATE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let root = root.clone();
                let rotated = tokio::task::spawn_blocking(move || {
                    logs::rotate_all(&root, max_size, max_files)
                })
                .await
                .unwrap_or_default();
                for path in rotated {
                    tracing::debug!(log = %path.display(), "rotated");
                }
            }
        }
    };
    tracing::info!(%addr, "kubelet endpoint listening (HTTPS)");
    let https = async {
        https
            .await
            .map_err(|source| ServerError::Serve { addr, source })
    };
    let (a, b, ()) = tokio::join!(
        async {
            let r = https.await;
            // One listener failing stops the others.
            shutdown.cancel();
            r
        },
        async {
            let r = read_only.await;
            if r.is_err() {
                shutdown.cancel();
            }
            r
        },
        rotation
    );
    a.and(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_only_endpoint_listens_on_loopback_only() {
        for (given, expected) in [
            ("0.0.0.0", "127.0.0.1"),
            ("10.0.0.5", "127.0.0.1"),
            ("::", "::1"),
        ] {
            assert_eq!(
                read_only_address(given.parse().unwrap()),
                expected.parse::<IpAddr>().unwrap()
            );
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10Mi"), Ok(10 << 20));
        assert_eq!(parse_size("512Ki"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5Xi").is_err());
    }

    #[test]
    fn query_strings_repeat_and_decode() {
        let pairs = query_pairs(Some(
            "command=sh&command=-c&command=echo%20hi&tty=1&stdin=true",
        ));
        let commands: Vec<_> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(commands, ["sh", "-c", "echo hi"]);
        assert_eq!(query_bool(&pairs, "tty").ok(), Some(true));
        assert_eq!(query_bool(&pairs, "stdin").ok(), Some(true));
        assert_eq!(query_bool(&pairs, "stderr").ok(), Some(false));
        assert!(query_bool(&query_pairs(Some("tty=maybe")), "tty").is_err());
        assert!(query_u64(&query_pairs(Some("limitBytes=-3")), "limitBytes").is_err());
        assert_eq!(
            query_u64(&query_pairs(Some("tailLines=-1")), "tailLines").ok(),
            Some(None)
        );
    }
}
