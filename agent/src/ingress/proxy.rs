//! The reverse proxy: HTTP/1.1 and HTTP/2 (ALPN over TLS; prior knowledge in plain text) from
//! clients, served by hyper-util's auto connection builder; HTTP/1.1 with keep-alive pools to
//! the pods, through hyper-util's legacy client. hyper parses every request: a malformed one is
//! answered 400 and an oversized header block 431 before it reaches [`Proxy::handle`].
//!
//! Per request: the route table ([`super::routes`]) picks the pods, one is chosen at random;
//! a pod that cannot be connected to within [`CONNECT_TIMEOUT`] is skipped for another one
//! (requests whose body is small enough to keep, [`RETRY_BODY_LIMIT`]; a streamed body can be
//! sent once only). `X-Forwarded-For`, `-Proto`, `-Host` and `-Port` tell the pod about the
//! client; hop-by-hop headers stay on their hop. An `Upgrade` (WebSocket) is passed to the pod
//! and, once it answers 101, both upgraded connections are joined byte for byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::seq::SliceRandom as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::routes::{normalize_host, Lookup, RouteTable, Target};

/// How long a connection to a pod may take before another pod is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many pods are tried for one request.
const ATTEMPTS: usize = 3;
/// Request bodies up to this size are kept so that the request can go to another pod when
/// the first cannot be connected to.
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;
/// The largest header block hyper reads (beyond it: 431).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Client connections served at once per listener; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16 * 1024;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body type of everything the proxy sends.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one hop (RFC 9110 7.6.1), never forwarded as they are.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The proxy shared by both listeners.
pub struct Proxy {
    routes: ArcSwap<RouteTable>,
    client: Client<HttpConnector, ProxyBody>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade`).
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks || req.version() != Version::HTTP_11 {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// The host a request is for: the URI's authority (HTTP/2, absolute form), else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Sets the `X-Forwarded-*` headers: the client's address appended to any list it came
/// with, the scheme and host it used, and the port it reached.
fn forwarded_headers(
    headers: &mut HeaderMap,
    client: SocketAddr,
    tls: bool,
    host: &str,
    local_port: u16,
) {
    let ip = client.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(headers, "x-forwarded-for", &xff);
    set(headers, "x-real-ip", &ip);
    set(
        headers,
        "x-forwarded-proto",
        if tls { "https" } else { "http" },
    );
    set(headers, "x-forwarded-host", host);
    set(headers, "x-forwarded-port", &local_port.to_string());
}

impl Proxy {
    /// A proxy with an empty route table (every request a 404 until [`Proxy::set_routes`]).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            client,
        }
    }

    /// Replaces the route table; requests in flight keep the one they started with.
    pub fn set_routes(&self, routes: RouteTable) {
        self.routes.store(Arc::new(routes));
    }

    /// Serves one request from `client` (over TLS or not) that reached `local`.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        local: SocketAddr,
        tls: bool,
    ) -> Response<ProxyBody> {
        let Some(raw_host) = request_host(&req) else {
            return text(StatusCode::BAD_REQUEST, "no host in the request\n");
        };
        let host = normalize_host(&raw_host);
        let path = req.uri().path().to_owned();
        let routes = self.routes.load_full();
        let (service, addresses) = match routes.lookup(&host, &path) {
            Lookup::NotFound => return text(StatusCode::NOT_FOUND, "404 page not found\n"),
            Lookup::Target(t) => match t.as_ref() {
                Target::Unavailable { reason } => {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("503 service unavailable: {reason}\n"),
                    )
                }
                Target::Endpoints { service, addresses } => (service.clone(), addresses.clone()),
            },
        };
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        forwarded_headers(&mut parts.headers, client, tls, &raw_host, local.port());
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&raw_host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();

        // A body that can be sent again (none, or small) allows a retry on another pod.
        let retryable = body.is_end_stream()
            || body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= RETRY_BODY_LIMIT);
        let mut kept: Option<Bytes> = None;
        let mut streamed = None;
        if retryable {
            match http_body_util::Limited::new(body, RETRY_BODY_LIMIT as usize)
                .collect()
                .await
            {
                Ok(collected) => kept = Some(collected.to_bytes()),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable request body\n"),
            }
        } else {
            streamed = Some(body.boxed());
        }

        let mut order = addresses;
        order.shuffle(&mut rand::rng());
        let mut last_error = String::new();
        for addr in order.iter().take(ATTEMPTS) {
            let body: ProxyBody = match (&kept, streamed.take()) {
                (Some(bytes), _) => Full::new(bytes.clone())
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
                (None, Some(b)) => b,
                (None, None) => break,
            };
            let uri: Uri = match format!("http://{addr}{path_and_query}").parse() {
                Ok(u) => u,
                Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request target\n"),
            };
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = parts.headers.clone();
            match self.client.request(out).await {
                Ok(mut resp) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_upgrade) = client_upgrade {
                            let pod_upgrade = hyper::upgrade::on(&mut resp);
                            tokio::spawn(join_upgraded(client_upgrade, pod_upgrade));
                        }
                        let (parts, _) = resp.into_parts();
                        let mut resp = Response::from_parts(parts, empty());
                        // 101's Connection and Upgrade are what the switch is.
                        let headers = resp.headers_mut();
                        headers.remove(header::TRANSFER_ENCODING);
                        return resp;
                    }
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, body.boxed());
                }
                Err(e) if e.is_connect() => {
                    tracing::debug!(%service, pod = %addr, error = %e, "connecting to a pod failed; trying another");
                    last_error = format!("{addr}: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%service, pod = %addr, error = %e, "the pod's answer failed");
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("502 bad gateway: {service}\n"),
                    );
                }
            }
        }
        text(
            StatusCode::BAD_GATEWAY,
            format!("502 bad gateway: no pod of {service} could be reached ({last_error})\n"),
        )
    }
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Copies bytes both ways between the client's and the pod's upgraded connections.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, pod: hyper::upgrade::OnUpgrade) {
    let (client, pod) = match tokio::try_join!(client, pod) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "an upgrade did not complete");
            return;
        }
    };
    let (mut client, mut pod) = (TokioIo::new(client), TokioIo::new(pod));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut pod).await {
        tracing::debug!(error = %e, "an upgraded connection ended with an error");
    }
}

/// The connection builder both listeners use: HTTP/1.1 (keep-alive, upgrades) and HTTP/2,
/// with the header limits and timeouts above.
fn builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(256);
    builder
}

/// Accepts connections on `listener` until `shutdown`, TLS-terminated with `tls` when given.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let builder = Arc::new(builder());
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, client) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the connection is lost, the listener is not.
                    tracing::warn!(error = %e, "accepting an Ingress connection failed");
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder, tls, shutdown) = (
            proxy.clone(),
            builder.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let secure = tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, client, local, secure).await) }
            });
            let served = match tls {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%client, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        r = conn => r,
                        () = shutdown.cancelled() => return,
                    }
                }
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        r = conn => r,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%client, error = %e, "an Ingress connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        forwarded_headers(&mut h, "10.0.0.9:5555".parse().unwrap(), true, "a.io", 443);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.io");
        assert_eq!(h["x-forwarded-port"], "443");
        let mut h = HeaderMap::new();
        forwarded_headers(
            &mut h,
            "10.0.0.9:5555".parse().unwrap(),
            false,
            "a.io:80",
            80,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
