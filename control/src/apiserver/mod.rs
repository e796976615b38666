//! The Kubernetes API over HTTP: routing, authentication, and the generic resource machinery.

pub mod admission;
pub mod aggregated_discovery;
pub mod apiextensions;
pub mod apply;
pub mod auth;
pub mod binding;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod health;
pub mod kinds;
pub mod kubelet_client;
pub mod limits;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod resource_metrics;
pub mod selectors;
pub mod service_alloc;
pub mod snapshot;
pub mod table;
pub mod validation;
pub mod watch;

use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::SharedStore;
use auth::rbac::RbacIndex;
use auth::service_account::{SignerConfig, TokenSigner};
use auth::{Authorizer, Mode, UserInfo};
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
    /// The admission plugins that can be turned off, and whether they are.
    pub admission: admission::Plugins,
    /// What each user may do: `system:masters`, then the `--authorization-mode` chain (RBAC by
    /// default). Its RBAC index follows the store only once first asked, so building a state
    /// starts nothing.
    pub authorizer: Arc<Authorizer>,
    /// Signs and checks ServiceAccount tokens.
    pub tokens: TokenSigner,
    /// How to reach kubelets (set by the server from its credentials; states built without
    /// them proxy nothing to nodes).
    pub kubelet: std::sync::OnceLock<kubelet_client::KubeletClient>,
    /// Permits to decode or patch a large body on a blocking thread (see
    /// [`ApiState::off_workers`]).
    pub heavy: tokio::sync::Semaphore,
    /// Requests in flight and the request timeout.
    pub overload: limits::Overload,
    /// The checks `/readyz` runs besides its own (the controller manager registers one).
    pub readiness: health::Checks,
    /// The kubelets' latest usage readings, which metrics.k8s.io serves.
    pub resource_metrics: resource_metrics::Cache,
}

impl ApiState {
    /// Builds the state, returning the receiving end of the namespace finalization queue.
    pub fn new(
        store: SharedStore,
        token: String,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let tokens = TokenSigner::ephemeral(SignerConfig::default());
        Self::with_auth(store, token, shutdown, vec![Mode::Node, Mode::Rbac], tokens)
    }

    /// [`ApiState::new`] with kube-apiserver's `--authorization-mode` chain and the
    /// ServiceAccount token signer.
    pub fn with_auth(
        store: SharedStore,
        token: String,
        shutdown: CancellationToken,
        modes: Vec<Mode>,
        tokens: TokenSigner,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let index = RbacIndex::new(store.clone(), shutdown.clone());
        let state = Arc::new(Self {
            authorizer: Arc::new(Authorizer::new(modes, index)),
            store,
            registry: Registry::new(),
            token,
            shutdown,
            namespace_queue: tx,
            services: service_alloc::Allocator::default(),
            default_tolerations: admission::DefaultTolerations::default(),
            admission: admission::Plugins::default(),
            tokens,
            kubelet: std::sync::OnceLock::new(),
            heavy: tokio::sync::Semaphore::new(limits::heavy_permits()),
            overload: limits::Overload::default(),
            readiness: health::Checks::default(),
            resource_metrics: resource_metrics::Cache::default(),
        });
        (state, rx)
    }
}

/// The users the admin token and the absence of credentials stand for, built once: every
/// request carries one of them.
static ADMIN: LazyLock<Arc<UserInfo>> = LazyLock::new(|| Arc::new(UserInfo::admin()));
static ANONYMOUS: LazyLock<Arc<UserInfo>> = LazyLock::new(|| Arc::new(UserInfo::anonymous()));

/// Establishes who is asking and records it as an `Extension<Arc<UserInfo>>` (Kubernetes'
/// authentication filter, see [`auth`]).
async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<auth::x509::PeerIdentity>()
        .cloned();
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let user = identify(&state, peer, bearer.as_deref()).await?;
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

/// Who the request is from, trying what Kubernetes tries in its order: a client certificate
/// from the cluster CA (CN = user, O = groups), then a bearer token (the admin token, then a
/// ServiceAccount token, then a bootstrap token), then nobody (`system:anonymous`). A
/// certificate that does not verify, or a token nobody issued, is a 401 unless a later
/// authenticator succeeds; an absent credential is not an error.
async fn identify(
    state: &ApiState,
    peer: Option<auth::x509::PeerIdentity>,
    presented: Option<&str>,
) -> Result<Arc<UserInfo>, ApiError> {
    let mut failed = false;
    match peer {
        Some(auth::x509::PeerIdentity::User(user)) => return Ok(user),
        Some(auth::x509::PeerIdentity::Invalid(_)) => failed = true,
        Some(auth::x509::PeerIdentity::None) | None => {}
    }
    if let Some(token) = presented {
        if constant_time_eq(token.as_bytes(), state.token.as_bytes()) {
            return Ok(ADMIN.clone());
        }
        let audiences = state.tokens.audiences();
        return match auth::service_account::authenticate(state, token, audiences).await {
            Ok(Some(found)) => Ok(Arc::new(found.user)),
            Ok(None) => match auth::bootstrap_token::authenticate(state, token).await {
                Ok(Some(user)) => Ok(Arc::new(user)),
                Ok(None) => Err(ApiError::Unauthorized),
                Err(reason) => {
                    tracing::debug!(%reason, "refused a bootstrap token");
                    Err(ApiError::Unauthorized)
                }
            },
            Err(reason) => {
                tracing::debug!(%reason, "refused a ServiceAccount token");
                Err(ApiError::Unauthorized)
            }
        };
    }
    if failed {
        return Err(ApiError::Unauthorized);
    }
    Ok(ANONYMOUS.clone())
}

/// Decides whether the authenticated user may make the request (Kubernetes' authorization
/// filter): the request's attributes come from its method and URL alone, so a refusal comes
/// before routing, and the [`RequestInfo`](auth::RequestInfo) rides along for the handlers.
async fn authorize(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let requester = request
        .extensions()
        .get::<Arc<UserInfo>>()
        .cloned()
        .unwrap_or_else(|| ANONYMOUS.clone());
    let user =
        auth::impersonation::impersonate(&state.authorizer, requester, request.headers_mut())
            .await?;
    request.extensions_mut().insert(user.clone());
    let info = auth::resolve(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let decision = state.authorizer.authorize(&user, &info).await;
    if !decision.allowed {
        return Err(error::forbidden(&user, &info, &decision.reason));
    }
    // A WebSocket GET on exec, attach or portforward must also be allowed to create them, as
    // kube-apiserver checks since 1.35 (KEP-4006): read rights alone do not open a shell.
    if request.method() == http::Method::GET
        && matches!(info.subresource.as_str(), "exec" | "attach" | "portforward")
    {
        let create = auth::RequestInfo {
            verb: "create".into(),
            ..info.clone()
        };
        let decision = state.authorizer.authorize(&user, &create).await;
        if !decision.allowed {
            return Err(error::forbidden(&user, &create, &decision.reason));
        }
    }
    request.extensions_mut().insert(Arc::new(info));
    Ok(auth::with_user(user, next.run(request)).await)
}

/// Compares secrets without a timing side channel.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a path that is not UTF-8 once percent-decoded (`%FF`) with a Status: the routes'
/// path extractors would refuse it with plain text (found by the API fuzzer).
async fn utf8_path(request: Request, next: Next) -> Result<Response, ApiError> {
    if std::str::from_utf8(&percent_decode(request.uri().path())).is_err() {
        return Err(ApiError::BadRequest(
            "invalid URL: the path is not UTF-8 once percent-decoded".into(),
        ));
    }
    Ok(next.run(request).await)
}

/// `%XY` escapes decoded, anything else (a `%` without two hex digits too) kept, as axum's
/// path extractor decodes.
fn percent_decode(path: &str) -> std::borrow::Cow<'_, [u8]> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path.as_bytes());
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The API router. Tests drive it with `tower::ServiceExt::oneshot` without a socket.
pub fn app(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(health::livez))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        // Kubernetes serves the version at both spellings (go-restful's route "/" under the
        // "/version" web service), and some clients (kr8s, httpx-based) ask with the slash.
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route(
            "/metrics",
            get(|| async {
                // The controllers' caught panics are counted in this process too.
                watch::metrics().await + &crate::client::guard::metrics()
            }),
        )
        .route(snapshot::PATH, get(snapshot::save))
        .route(
            auth::service_account::discovery::CONFIGURATION_PATH,
            get(auth::service_account::discovery::configuration),
        )
        .route(
            auth::service_account::discovery::JWKS_PATH,
            get(auth::service_account::discovery::jwks),
        )
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
        // pods/log, pods/exec, pods/attach and pods/portforward are proxied to the pod's agent (before the
        // generic routes).
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(node_proxy::pod_log),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(node_proxy::pod_exec).post(node_proxy::pod_exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            get(node_proxy::pod_attach).post(node_proxy::pod_attach),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            get(node_proxy::pod_portforward).post(node_proxy::pod_portforward),
        )
        .route("/api/{version}/{*rest}", any(handlers::core_resource))
        .route(
            "/apis/{group}/{version}/{*rest}",
            any(handlers::group_resource),
        )
        .fallback(|| async { ApiError::UnknownResource })
        // A route that exists without the request's method: a Status, not axum's empty 405
        // (found by the API fuzzer). Applies to the routes registered above.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // The last layer added runs first: catch panics, authenticate, limit what is in flight,
        // then authorize (kube-apiserver's filter order).
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), limits::limit))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(utf8_path))
        .layer(middleware::from_fn(limits::catch_panic))
        // Axum refuses an over-long body in the body extractor; the handlers turn that into a
        // RequestEntityTooLarge Status.
        .layer(axum::extract::DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::Extension;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A router behind `authenticate` alone whose routes answer with the user's name.
    fn router() -> Router {
        let store: SharedStore = Arc::new(crate::store::MemoryStore::new(16));
        let (state, _) = ApiState::new(store, "secret".into(), CancellationToken::new());
        let whoami = |Extension(user): Extension<Arc<UserInfo>>| async move { user.name.clone() };
        Router::new()
            .route("/healthz", get(whoami))
            .route("/api/v1/pods", get(whoami))
            .layer(middleware::from_fn_with_state(state.clone(), authenticate))
            .with_state(state)
    }

    async fn ask(path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = http::Request::get(path);
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn requests_carry_the_authenticated_user() {
        assert_eq!(
            ask("/api/v1/pods", Some("secret")).await,
            (StatusCode::OK, "kubernetes-admin".into())
        );
        assert_eq!(
            ask("/healthz", Some("secret")).await,
            (StatusCode::OK, "kubernetes-admin".into())
        );
        assert_eq!(
            ask("/healthz", None).await,
            (StatusCode::OK, "system:anonymous".into())
        );
        // No credentials is the anonymous user everywhere (authorization decides what it
        // may do); a credential that fails is a 401 everywhere, as in kube-apiserver.
        assert_eq!(
            ask("/api/v1/pods", None).await,
            (StatusCode::OK, "system:anonymous".into())
        );
        assert_eq!(
            ask("/healthz", Some("wrong")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ask("/api/v1/pods", Some("wrong")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn the_state_authorizer_reads_the_state_store_once_asked() {
        use auth::rbac::test_objects::*;
        let store = store();
        let (state, _) = ApiState::new(store.clone(), "secret".into(), CancellationToken::new());
        assert_eq!(
            state.authorizer.index().revision(),
            None,
            "nothing runs until asked"
        );
        put_cluster_role(
            &store,
            "node-reader",
            vec![rule(&["get"], &[""], &["nodes"])],
        )
        .await;
        put_cluster_role_binding(
            &store,
            "alice",
            ("ClusterRole", "node-reader"),
            vec![subject("User", "alice", None)],
        )
        .await;
        let alice = UserInfo {
            name: "alice".into(),
            ..UserInfo::default()
        };
        let get_node = auth::resolve(&http::Method::GET, "/api/v1/nodes/n1", None);
        assert!(state.authorizer.authorize(&alice, &get_node).await.allowed);
        assert_eq!(
            state.authorizer.modes(),
            [auth::Mode::Node, auth::Mode::Rbac]
        );
    }
}
