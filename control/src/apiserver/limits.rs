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

/// How deeply YAML flow collections (`[`, `{`) may nest: serde_yaml refuses any document
/// nested deeper than this anyway, but only after libyaml has tokenized all of it.
pub const MAX_YAML_FLOW_DEPTH: usize = 128;

/// Decodes one YAML document into JSON, counting every node the aliases expand to and failing
/// once `budget` is spent. Nesting is limited by serde_yaml (128 levels), and flow nesting
/// before libyaml sees the text (see [`yaml_flow_depth_exceeds`]).
pub fn yaml_to_json(body: &[u8], budget: usize) -> Result<Value, String> {
    if yaml_flow_depth_exceeds(body, MAX_YAML_FLOW_DEPTH) {
        return Err(format!(
            "recursion limit exceeded: flow collections nested deeper than {MAX_YAML_FLOW_DEPTH} levels"
        ));
    }
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

/// Whether `body`'s flow collections (`[...]`, `{...}`, JSON included) nest deeper than `max`.
///
/// libyaml's scanner keeps one pending simple key per flow level and walks all of them for
/// every token, so tokenizing a document nested `d` levels deep costs tokens × d: a 100 KB
/// `{a: {a: ...` takes minutes, before serde_yaml's recursion limit is ever checked (found
/// by the API fuzzer). This scan is linear and follows YAML's token rules where they decide
/// whether a bracket opens a collection: in flow context exactly (quoted scalars, plain
/// scalars ending at flow indicators, comments); in block context brackets and quotes count
/// only where a token starts, and block scalars (`|`, `>`) are skipped by their indentation.
pub fn yaml_flow_depth_exceeds(body: &[u8], max: usize) -> bool {
    let mut scan = FlowScan {
        body,
        at: 0,
        depth: 0,
        token_start: true,
    };
    scan.run(max)
}

struct FlowScan<'a> {
    body: &'a [u8],
    at: usize,
    depth: usize,
    /// Whether the next character starts a token (a node may begin here).
    token_start: bool,
}

impl FlowScan<'_> {
    fn peek(&self, offset: usize) -> Option<u8> {
        self.body.get(self.at + offset).copied()
    }

    /// Whether `c` ends a plain scalar or an indicator in flow context.
    fn flow_indicator(c: u8) -> bool {
        matches!(c, b',' | b'[' | b']' | b'{' | b'}')
    }

    fn blank_or_end(c: Option<u8>) -> bool {
        c.is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
    }

    /// The indentation of the line holding `at`.
    fn line_indent(&self, at: usize) -> usize {
        let start = self.body[..at]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1);
        self.body[start..]
            .iter()
            .take_while(|&&c| c == b' ')
            .count()
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == b'\n' {
                break;
            }
            self.at += 1;
        }
    }

    /// Skips a quoted scalar starting at `at` (its quote), escapes included.
    fn skip_quoted(&mut self) {
        let quote = self.body[self.at];
        self.at += 1;
        while let Some(c) = self.peek(0) {
            self.at += 1;
            match c {
                b'\\' if quote == b'"' => self.at += 1,
                b'\'' if quote == b'\'' && self.peek(0) == Some(b'\'') => self.at += 1,
                c if c == quote => return,
                _ => {}
            }
        }
    }

    /// Skips a block scalar whose header (`|` or `>`) is at `at`: the rest of its line, then
    /// every line indented at least as deeply as its first non-empty line, when that is
    /// deeper than the header's line.
    fn skip_block_scalar(&mut self) {
        let header_indent = self.line_indent(self.at);
        self.skip_line();
        let mut content_indent = None;
        while self.peek(0) == Some(b'\n') {
            let line = self.at + 1;
            let indent = self.body[line..].iter().take_while(|&&c| c == b' ').count();
            let rest = self.body.get(line + indent).copied();
            let empty = matches!(rest, None | Some(b'\n') | Some(b'\r'));
            if !empty {
                let needed = *content_indent.get_or_insert(indent);
                if indent < needed || needed <= header_indent {
                    return;
                }
            }
            self.at = line;
            self.skip_line();
        }
    }

    /// Skips an anchor, alias or tag name.
    fn skip_name(&mut self) {
        self.at += 1;
        while let Some(c) = self.peek(0) {
            if Self::blank_or_end(Some(c)) || (self.depth > 0 && Self::flow_indicator(c)) {
                return;
            }
            self.at += 1;
        }
    }

    /// Skips a plain scalar: to `: `, ` #` or the line's end in block context; also to a flow
    /// indicator in flow context (where it may go on over lines).
    fn skip_plain(&mut self) {
        while let Some(c) = self.peek(0) {
            let next = self.peek(1);
            let colon_ends = Self::blank_or_end(next)
                || (self.depth > 0 && next.is_some_and(Self::flow_indicator));
            if (c == b':' && colon_ends)
                || (self.depth > 0 && Self::flow_indicator(c))
                || (self.depth == 0 && c == b'\n')
                || (c == b'#' && self.at > 0 && Self::blank_or_end(Some(self.body[self.at - 1])))
            {
                return;
            }
            self.at += 1;
        }
    }

    fn run(&mut self, max: usize) -> bool {
        while let Some(c) = self.peek(0) {
            let after_blank = self.at == 0 || Self::blank_or_end(Some(self.body[self.at - 1]));
            match c {
                b'\n' => {
                    self.at += 1;
                    if self.depth == 0 {
                        self.token_start = true;
                    }
                }
                b' ' | b'\t' | b'\r' => self.at += 1,
                b'#' if after_blank => self.skip_line(),
                b'[' | b'{' if self.depth > 0 || self.token_start => {
                    self.depth += 1;
                    if self.depth > max {
                        return true;
                    }
                    self.at += 1;
                    self.token_start = true;
                }
                b']' | b'}' if self.depth > 0 => {
                    self.depth -= 1;
                    self.at += 1;
                    self.token_start = false;
                }
                b',' if self.depth > 0 => {
                    self.at += 1;
                    self.token_start = true;
                }
                // Indicators after which a node may start: `- `, `? `, `: `, and in flow
                // context a `:` right after a key (JSON's `"a":1`).
                b'-' | b'?' | b':'
                    if Self::blank_or_end(self.peek(1))
                        || (c == b':' && self.depth > 0 && !self.token_start) =>
                {
                    self.at += 1;
                    self.token_start = true;
                }
                b'\'' | b'"' if self.token_start => {
                    self.skip_quoted();
                    self.token_start = false;
                }
                b'|' | b'>' if self.token_start && self.depth == 0 => {
                    self.skip_block_scalar();
                }
                b'&' | b'!' if self.token_start => self.skip_name(),
                b'*' if self.token_start => {
                    self.skip_name();
                    self.token_start = false;
                }
                _ => {
                    self.at += 1;
                    self.skip_plain();
                    self.token_start = false;
                }
            }
        }
        false
    }
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
    fn flow_nesting_is_measured_as_yaml_reads_it() {
        let deep = |open: &str, n: usize| open.repeat(n);
        // JSON and YAML flow collections count, however they are spelled.
        assert!(yaml_flow_depth_exceeds(deep("[", 129).as_bytes(), 128));
        assert!(!yaml_flow_depth_exceeds(deep("[", 128).as_bytes(), 128));
        assert!(yaml_flow_depth_exceeds(
            deep("{\"a\":", 129).as_bytes(),
            128
        ));
        assert!(yaml_flow_depth_exceeds(deep("{a: ", 129).as_bytes(), 128));
        assert!(yaml_flow_depth_exceeds(
            format!("k: {}", deep("[", 129)).as_bytes(),
            128
        ));
        assert!(yaml_flow_depth_exceeds(
            format!("- - {}", deep("{ a: ", 129)).as_bytes(),
            128
        ));
        // Closed collections do not add up.
        let closed = "[[1], {a: [2]}]\n".repeat(200);
        assert!(!yaml_flow_depth_exceeds(closed.as_bytes(), 3));
        assert!(yaml_flow_depth_exceeds(closed.as_bytes(), 2));
        // Brackets in scalars, comments and block scalars open nothing.
        let text = format!(
            "a: '{0}'\nb: \"{0}\\\"{0}\"\nc: x{0}\nd: it's {0}\n# {0}\ne: |\n  {0}\n  '\n\n  {0}\nf: [\"]]\", ']', a #{0}\n]\n",
            deep("[", 200)
        );
        assert!(!yaml_flow_depth_exceeds(text.as_bytes(), 1), "{text}");
        // ... but what follows a block scalar does.
        let after = format!("e: |\n  text\nf: {}", deep("[", 3));
        assert!(yaml_flow_depth_exceeds(after.as_bytes(), 2));
        // A quote inside a plain scalar or a block scalar does not hide what follows.
        let hidden = format!("a: don't\nb: |\n  '\nc: {}", deep("{a: ", 3));
        assert!(yaml_flow_depth_exceeds(hidden.as_bytes(), 2));
    }

    #[test]
    fn deep_flow_collections_are_refused_before_libyaml_tokenizes_them() {
        // libyaml tokenizes this in time quadratic in its depth (minutes); refused at once.
        let bomb = "{a: ".repeat(MAX_BODY_BYTES / 4);
        let started = std::time::Instant::now();
        let err = yaml_to_json(bomb.as_bytes(), MAX_YAML_NODES).unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Manifests of ordinary depth still decode.
        let manifest = "a: {b: [1, {c: \"]\"}], d: 'x'}\ne: |\n  [\n";
        assert_eq!(
            yaml_to_json(manifest.as_bytes(), 100).unwrap(),
            serde_json::json!({"a": {"b": [1, {"c": "]"}], "d": "x"}, "e": "[\n"})
        );
    }

    #[test]
    fn the_budget_grows_with_the_body_within_bounds() {
        assert_eq!(yaml_node_budget(0), MIN_YAML_NODES);
        assert_eq!(yaml_node_budget(100_000), 200_000);
        assert_eq!(yaml_node_budget(MAX_BODY_BYTES), MAX_YAML_NODES);
    }
}
