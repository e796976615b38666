//! The Kubernetes API over HTTP: routing, authentication, and the generic resource machinery.

pub mod admission;
pub mod auth;
pub mod binding;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod kinds;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selectors;
pub mod service_alloc;
pub mod table;
pub mod validation;
pub mod watch;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::SharedStore;
pub use error::ApiError;
pub use registry::{Registry, ResourceDef};

/// Everything a request handler needs.
pub struct ApiState {
    /// The object store.
    pub store: SharedStore,
    /// The served resources.
    pub registry: Registry,
    /// The admin bearer token; requests must present it.
    pub token: String,
    /// Cancelled at shutdown so long-running watches end.
    pub shutdown: CancellationToken,
    /// Namespaces to finalize (sent when one is marked for deletion).
    pub namespace_queue: mpsc::UnboundedSender<String>,
    /// Service ClusterIP and NodePort allocation.
    pub services: service_alloc::Allocator,
    /// The tolerations every pod gets (DefaultTolerationSeconds).
    pub default_tolerations: admission::DefaultTolerations,
}

impl ApiState {
    /// Builds the state, returning the receiving end of the namespace finalization queue.
    pub fn new(
        store: SharedStore,
        token: String,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Self {
            store,
            registry: Registry::new(),
            token,
            shutdown,
            namespace_queue: tx,
            services: service_alloc::Allocator::default(),
            default_tolerations: admission::DefaultTolerations::default(),
        });
        (state, rx)
    }
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer` allows.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    )
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !is_public(request.uri().path()) {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()));
        if !ok {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API router. Tests drive it with `tower::ServiceExt::oneshot` without a socket.
pub fn app(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        // Kubernetes serves the version at both spellings (go-restful's route "/" under the
        // "/version" web service), and some clients (kr8s, httpx-based) ask with the slash.
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route("/metrics", get(watch::metrics))
        // Discovery answers with and without a trailing slash, as Kubernetes' go-restful
        // discovery services (route "/" under "/api", "/apis/<group>", ...) do; kr8s asks for
        // `/api/` and `/apis/`.
        .route("/api", get(discovery::core_versions))
        .route("/api/", get(discovery::core_versions))
        .route("/api/{version}", get(discovery::core_resources))
        .route("/api/{version}/", get(discovery::core_resources))
        .route("/apis", get(discovery::groups))
        .route("/apis/", get(discovery::groups))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/apis/{group}/{version}/", get(discovery::group_resources))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/{*path}", get(openapi::group_version))
        // pods/log and pods/exec are proxied to the pod's agent (before the generic routes).
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(node_proxy::pod_log),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(node_proxy::pod_exec).post(node_proxy::pod_exec),
        )
        .route("/api/{version}/{*rest}", any(handlers::core_resource))
        .route(
            "/apis/{group}/{version}/{*rest}",
            any(handlers::group_resource),
        )
        .fallback(|| async { ApiError::UnknownResource })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}
