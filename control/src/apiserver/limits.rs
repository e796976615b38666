//! Input limits of the API: the body size, a YAML expansion budget, and the pool that decodes
//! and patches large bodies off the async workers.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::ApiState;

/// The largest request body, as kube-apiserver's `MaxRequestBodyBytes` (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Bodies under this size are decoded and patched in place: handing them to a blocking thread
/// costs more than the work.
pub const INLINE_BYTES: usize = 64 * 1024;

/// The fewest nodes a YAML document may expand to, whatever its size: small manifests that use
/// anchors for shared blocks stay well under it.
const MIN_YAML_NODES: usize = 10_000;

/// The most nodes any YAML body may expand to. Nodes cost tens of bytes each decoded, so this
/// bounds a body's decoded size to tens of megabytes.
const MAX_YAML_NODES: usize = 1_000_000;

/// How many nodes a YAML body of `len` bytes may expand to. A document without aliases has at
/// most about one node per byte, so twice its length leaves room for ordinary anchors, while
/// nested aliases (the "billion laughs") that expand a kilobyte into billions of nodes stop at
/// a few thousand. serde_yaml's own alias limit (100 alias jumps per event) still lets a body
/// of a large anchor and many aliases to it expand quadratically, hence this budget.
pub fn yaml_node_budget(len: usize) -> usize {
    len.saturating_mul(2).clamp(MIN_YAML_NODES, MAX_YAML_NODES)
}

/// Decodes one YAML document into JSON, counting every node the aliases expand to and failing
/// once `budget` is spent. Nesting is limited by serde_yaml (128 levels).
pub fn yaml_to_json(body: &[u8], budget: usize) -> Result<Value, String> {
    let remaining = AtomicUsize::new(budget);
    let de = serde_yaml::Deserializer::from_slice(body);
    Budgeted(&remaining).deserialize(de).map_err(|e| {
        if remaining.load(Ordering::Relaxed) == 0 {
            format!("the document expands to more than {budget} nodes (YAML aliases)")
        } else {
            e.to_string()
        }
    })
}

/// A [`DeserializeSeed`] that builds a JSON value, spending one unit of the budget per node.
#[derive(Clone, Copy)]
struct Budgeted<'a>(&'a AtomicUsize);

impl Budgeted<'_> {
    fn spend<E: de::Error>(self) -> Result<(), E> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(drop)
            .map_err(|_| E::custom("the YAML node budget is exhausted"))
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(self)? {
            let key = match key {
                Value::String(s) => s,
                // YAML allows any scalar as a key; JSON (and so Kubernetes) wants strings.
                Value::Bool(_) | Value::Number(_) | Value::Null => key.to_string(),
                _ => return Err(de::Error::custom("a mapping key must be a scalar")),
            };
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl ApiState {
    /// Runs CPU-heavy request work (decoding, patching) sized `size` bytes: in place when
    /// small, else on a blocking thread once one of the [`ApiState::heavy`] permits is free, so
    /// large bodies neither stall the async workers nor run more at once than there are cores.
    /// A panic in the work is a 500, not a lost worker.
    pub(crate) async fn off_workers<T: Send + 'static>(
        &self,
        size: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if size < INLINE_BYTES {
            return Ok(work());
        }
        let _permit = self
            .heavy
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("the decoding pool is closed".into()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| {
            tracing::error!(error = %e, "request work panicked");
            ApiError::Internal("the request's decoding failed".into())
        })
    }
}

/// How many heavy decodes run at once: one per core.
pub fn heavy_permits() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The overload limits: requests in flight (read-only and mutating counted apart, as
/// kube-apiserver's `--max-requests-inflight` and `--max-mutating-requests-inflight`) and the
/// default request timeout (`--request-timeout`).
#[derive(Debug)]
pub struct Overload {
    readonly: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
    limits: std::sync::Mutex<(usize, usize)>,
    timeout_ms: AtomicU64,
    watch_send_timeout_ms: AtomicU64,
}

/// How long a watch may leave its byte budget full before it is closed.
pub const DEFAULT_WATCH_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// kube-apiserver's defaults.
pub const DEFAULT_MAX_REQUESTS_INFLIGHT: usize = 400;
/// kube-apiserver's default `--max-mutating-requests-inflight`.
pub const DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT: usize = 200;
/// kube-apiserver's default `--request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Overload {
    fn default() -> Self {
        let limits = (
            DEFAULT_MAX_REQUESTS_INFLIGHT,
            DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT,
        );
        Self {
            readonly: Arc::new(Semaphore::new(limits.0)),
            mutating: Arc::new(Semaphore::new(limits.1)),
            limits: std::sync::Mutex::new(limits),
            timeout_ms: AtomicU64::new(duration_ms(DEFAULT_REQUEST_TIMEOUT)),
            watch_send_timeout_ms: AtomicU64::new(duration_ms(DEFAULT_WATCH_SEND_TIMEOUT)),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Moves `semaphore`'s capacity from `from` to `to` permits (0 meaning unlimited, as in
/// kube-apiserver).
fn resize(semaphore: &Semaphore, from: usize, to: usize) {
    let permits = |n: usize| if n == 0 { Semaphore::MAX_PERMITS } else { n };
    let (from, to) = (permits(from), permits(to));
    if to > from {
        semaphore.add_permits(to - from);
    } else {
        semaphore.forget_permits(from - to);
    }
}

impl Overload {
    /// Sets the limits; 0 turns a limit off.
    pub fn configure(&self, max_inflight: usize, max_mutating: usize, timeout: Duration) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        resize(&self.readonly, limits.0, max_inflight);
        resize(&self.mutating, limits.1, max_mutating);
        *limits = (max_inflight, max_mutating);
        self.timeout_ms
            .store(duration_ms(timeout), Ordering::Relaxed);
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets how long a watch may leave its byte budget full before it is closed.
    pub fn set_watch_send_timeout(&self, timeout: Duration) {
        self.watch_send_timeout_ms
            .store(duration_ms(timeout), Ordering::Relaxed);
    }

    /// How long a watch may leave its byte budget full before it is closed.
    pub fn watch_send_timeout(&self) -> Duration {
        Duration::from_millis(self.watch_send_timeout_ms.load(Ordering::Relaxed))
    }
}

/// Whether a request is long-running: watches and the streaming subresources, which
/// kube-apiserver leaves out of the in-flight count and the request timeout.
fn long_running(request: &Request) -> bool {
    let watch = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    let path = request.uri().path();
    watch
        || path.starts_with("/api/v1/watch/")
        || path.contains("/watch/")
        || ["/log", "/exec", "/attach", "/portforward", "/proxy"]
            .iter()
            .any(|s| path.ends_with(s) || path.contains(&format!("{s}/")))
}

/// The `?timeout=` of a request, in Go's duration syntax (`30s`, `1m30s`, `500ms`).
fn requested_timeout(request: &Request) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("timeout="))
            .filter(|v| !v.is_empty())
    }) else {
        return Ok(None);
    };
    let raw = percent_decode(raw);
    skiff_k8s::go::parse_duration(&raw)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid timeout specified in the request URL: {raw:?}"
            ))
        })
}

fn percent_decode(raw: &str) -> String {
    form_urlencoded::parse(format!("v={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Refuses a request with 429 and Retry-After when its class (mutating or read-only) is at its
/// in-flight limit, and bounds a non-long-running request's time by `?timeout=` or the default
/// (504 Timeout past it, as kube-apiserver's request deadline). Runs after authentication, as
/// in kube-apiserver, so the limit counts only requests that got that far.
pub async fn limit(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if long_running(&request) {
        return Ok(next.run(request).await);
    }
    let mutating = !matches!(
        *request.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let pool = if mutating {
        &state.overload.mutating
    } else {
        &state.overload.readonly
    };
    let Ok(_permit) = Arc::clone(pool).try_acquire_owned() else {
        return Err(ApiError::TooManyRequests);
    };
    let default = state.overload.timeout();
    // A client may ask for less time than the default, not more (kube-apiserver caps it at
    // the maximum too).
    let timeout = requested_timeout(&request)?.map_or(default, |t| t.min(default));
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => Ok(response),
        Err(_) => Err(ApiError::Timeout(
            "Timeout: request did not complete within requested timeout - context deadline exceeded"
                .into(),
        )),
    }
}

/// Turns a panic while handling one request into a 500 Status, logged, instead of a dropped
/// connection (kube-apiserver's panic recovery filter).
pub async fn catch_panic(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let message = skiff_k8s::crash::panic_message(panic.as_ref());
            tracing::error!(%method, %path, panic = %message, "a request handler panicked");
            ApiError::Internal("the server panicked handling the request".into()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use http::StatusCode;
    use tower::ServiceExt as _;

    fn state() -> Arc<ApiState> {
        let store: crate::store::SharedStore = Arc::new(crate::store::MemoryStore::new(16));
        ApiState::new(store, "t".into(), Default::default()).0
    }

    async fn call(app: &Router, method: http::Method, uri: &str) -> (StatusCode, Value, Response) {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let status = parts.status;
        (status, value, Response::from_parts(parts, Body::empty()))
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_status_and_the_server_goes_on() {
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(catch_panic));
        let (code, status, _) = call(&app, http::Method::GET, "/boom").await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(call(&app, http::Method::GET, "/ok").await.0, StatusCode::OK);
    }

    /// A router behind [`limit`] whose `/api/v1/pods` GET holds its request until `release`
    /// (after telling `entered`), whose other routes answer at once.
    fn limited(
        state: Arc<ApiState>,
        entered: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    ) -> Router {
        let held = move || {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                "held"
            }
        };
        Router::new()
            .route("/api/v1/pods", get(held).post(|| async { "created" }))
            .route("/api/v1/nodes", get(|| async { "nodes" }))
            .route("/api/v1/services", get(std::future::pending::<()>))
            .layer(axum::middleware::from_fn_with_state(state, limit))
    }

    #[tokio::test]
    async fn requests_over_the_in_flight_limit_get_429_with_retry_after() {
        let state = state();
        state.overload.configure(1, 1, DEFAULT_REQUEST_TIMEOUT);
        let (entered, release) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
        let app = limited(state, Arc::clone(&entered), Arc::clone(&release));
        let holder = tokio::spawn({
            let app = app.clone();
            async move { call(&app, http::Method::GET, "/api/v1/pods").await.0 }
        });
        entered.notified().await;

        let (code, status, response) = call(&app, http::Method::GET, "/api/v1/nodes").await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["details"]["retryAfterSeconds"], 1);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        // Mutating requests are counted apart, and watches not at all.
        assert_eq!(
            call(&app, http::Method::POST, "/api/v1/pods").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, http::Method::GET, "/api/v1/nodes?watch=true")
                .await
                .0,
            StatusCode::OK
        );

        release.notify_one();
        assert_eq!(holder.await.expect("holder"), StatusCode::OK);
        assert_eq!(
            call(&app, http::Method::GET, "/api/v1/nodes").await.0,
            StatusCode::OK,
            "the permit is back"
        );
    }

    #[tokio::test]
    async fn requests_past_their_timeout_get_504() {
        let state = state();
        let app = limited(state.clone(), Arc::default(), Arc::default());
        let (code, status, _) =
            call(&app, http::Method::GET, "/api/v1/services?timeout=10ms").await;
        assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status["reason"], "Timeout");
        assert_eq!(
            call(&app, http::Method::GET, "/api/v1/services?timeout=soon")
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        // The default applies without ?timeout=, and a longer ?timeout= does not extend it.
        state.overload.configure(1, 1, Duration::from_millis(10));
        for uri in ["/api/v1/services", "/api/v1/services?timeout=1h"] {
            assert_eq!(
                call(&app, http::Method::GET, uri).await.0,
                StatusCode::GATEWAY_TIMEOUT
            );
        }
    }

    #[test]
    fn yaml_decodes_like_serde_yaml() {
        let body = b"a: 1\nb: [x, true, null, 2.5]\nc: {d: e}\n3: yes\n";
        let ours = yaml_to_json(body, 100).unwrap();
        let theirs: Value = serde_yaml::from_slice(body).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn aliases_expanding_past_the_budget_are_refused() {
        // Nine levels of ten aliases each: 10^9 nodes from a few hundred bytes.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let prev = format!("*a{}", level - 1);
            bomb.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        let budget = yaml_node_budget(bomb.len());
        assert_eq!(budget, MIN_YAML_NODES);
        let err = yaml_to_json(bomb.as_bytes(), budget).unwrap_err();
        assert!(err.contains("more than 10000 nodes"), "{err}");
        // The same anchors used a few times fit.
        let ok = "a: &a [x, y]\nb: *a\nc: *a\n";
        assert_eq!(
            yaml_to_json(ok.as_bytes(), 100).unwrap()["c"],
            serde_json::json!(["x", "y"])
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(yaml_to_json(deep.as_bytes(), MAX_YAML_NODES)
            .unwrap_err()
            .contains("recursion limit"));
        let shallow = format!("{}1{}", "[".repeat(50), "]".repeat(50));
        assert!(yaml_to_json(shallow.as_bytes(), MAX_YAML_NODES).is_ok());
    }

    #[test]
    fn the_budget_grows_with_the_body_within_bounds() {
        assert_eq!(yaml_node_budget(0), MIN_YAML_NODES);
        assert_eq!(yaml_node_budget(100_000), 200_000);
        assert_eq!(yaml_node_budget(MAX_BODY_BYTES), MAX_YAML_NODES);
    }
}
