//! The Ingress proxy (agent/src/ingress/) over real loopback sockets, with route tables built
//! from Ingress, Service and EndpointSlice objects as the agent builds them: routing by host
//! and path, 404 and 503, the default backend, `X-Forwarded-*`, a retry past a pod that
//! refuses connections, 400 and 431 for bad requests, TLS certificates chosen by SNI with
//! HTTP/2 by ALPN, and a WebSocket upgrade. No root needed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{json, Value};
use skiff_agent::ingress::proxy::{self, Proxy};
use skiff_agent::ingress::routes::RouteTable;
use skiff_agent::ingress::tls::{self, Certificates};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

/// An HTTP backend that answers with its name and what it was sent.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let body = format!(
                            "{name} {} host={} xff={} proto={} xfhost={}",
                            req.uri().path(),
                            h("host"),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                        );
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A WebSocket backend that echoes every message.
async fn ws_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    addr
}

/// A loopback port nothing listens on (bound, then closed): connections are refused.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn service(name: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}))
        .unwrap(),
    )
}

fn slice(svc: &str, pods: &[SocketAddr]) -> Arc<EndpointSlice> {
    // One slice per port, as the EndpointSlice controller groups endpoints.
    let port = pods[0].port();
    assert!(pods.iter().all(|p| p.ip() == pods[0].ip()));
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| json!({"addresses": [p.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    // Loopback pods share one address: distinct ports need distinct slices.
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": format!("{svc}-{port}"),
            "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}))
        .unwrap(),
    )
}

fn path(p: &str, kind: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": kind,
        "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

fn class() -> Arc<IngressClass> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": "skiff",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "skiff.dev/ingress"}}))
        .unwrap(),
    )
}

fn ingress(spec: Value) -> Arc<Ingress> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": "site", "namespace": "default"},
            "spec": spec}))
        .unwrap(),
    )
}

/// One HTTP/1.1 request through the proxy: status and body.
async fn get(proxy: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .header("x-forwarded-for", "192.0.2.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What the proxy answers to raw bytes (its status line).
async fn raw(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct Fixture {
    http: SocketAddr,
    https: SocketAddr,
    proxy: Arc<Proxy>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn tls_secret(host: &str) -> (Secret, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let secret: Secret = serde_json::from_value(json!({"type": "kubernetes.io/tls",
        "metadata": {"name": format!("{host}-tls"), "namespace": "default"},
        "stringData": {}, "data": {
            "tls.crt": base64_encode(c.cert.pem().as_bytes()),
            "tls.key": base64_encode(c.signing_key.serialize_pem().as_bytes())}}))
    .unwrap();
    (secret, c.cert.der().to_vec())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn fixture(certificates: Arc<Certificates>) -> Fixture {
    let (a, b, ws) = (backend("A").await, backend("B").await, ws_backend().await);
    let (r1, dead) = (backend("R").await, dead_port().await);
    let services = ["a", "b", "ws", "r", "fallback"].map(service).to_vec();
    let slices = vec![
        slice("a", &[a]),
        slice("b", &[b]),
        slice("ws", &[ws]),
        slice("r", &[r1]),
        slice("r", &[dead]),
        slice("fallback", &[b]),
    ];
    let proxy = Arc::new(Proxy::new());
    let shutdown = CancellationToken::new();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    tokio::spawn(proxy::serve(proxy.clone(), http, None, shutdown.clone()));
    let acceptor = tls::acceptor(certificates).unwrap();
    tokio::spawn(proxy::serve(
        proxy.clone(),
        https,
        Some(acceptor),
        shutdown.clone(),
    ));
    Fixture {
        http: http_addr,
        https: https_addr,
        proxy,
        services,
        slices,
        shutdown,
    }
}

fn site() -> Arc<Ingress> {
    ingress(json!({"rules": [
        {"host": "a.test", "http": {"paths": [
            path("/", "Prefix", "a"), path("/api", "Prefix", "b"), path("/missing", "Exact", "gone")]}},
        {"host": "*.wild.test", "http": {"paths": [path("/", "Prefix", "b")]}},
        {"host": "ws.test", "http": {"paths": [path("/", "Prefix", "ws")]}},
        {"host": "retry.test", "http": {"paths": [path("/", "Prefix", "r")]}}]}))
}

#[tokio::test]
async fn routes_by_host_and_path_with_forwarded_headers() {
    let default = tls::default_certificate().unwrap();
    let f = fixture(Arc::new(Certificates::new(default))).await;
    f.proxy.set_routes(RouteTable::build(
        &[site()],
        &[class()],
        &f.services,
        &f.slices,
    ));

    let (code, body) = get(f.http, "a.test", "/x").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        "A /x host=a.test xff=192.0.2.1, 127.0.0.1 proto=http xfhost=a.test"
    );
    assert!(get(f.http, "A.TEST:80", "/api/v1")
        .await
        .1
        .starts_with("B /api/v1 "));
    assert!(get(f.http, "a.test", "/apiv1").await.1.starts_with("A "));
    assert!(get(f.http, "x.wild.test", "/").await.1.starts_with("B "));
    assert_eq!(
        get(f.http, "y.x.wild.test", "/").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(f.http, "nothing.test", "/").await.0,
        StatusCode::NOT_FOUND
    );
    let (code, body) = get(f.http, "a.test", "/missing").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("service \"default/gone\" not found"),
        "{body}"
    );
    // The other routes are unaffected by the broken one.
    assert_eq!(get(f.http, "a.test", "/").await.0, StatusCode::OK);

    // One of the two pods refuses connections: every request still reaches the other.
    for _ in 0..12 {
        let (code, body) = get(f.http, "retry.test", "/").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.starts_with("R "), "{body}");
    }

    // A default backend takes what no rule matches.
    let mut with_default = (*site()).clone();
    with_default.spec.as_mut().unwrap().default_backend = Some(
        serde_json::from_value(json!({"service": {"name": "fallback", "port": {"number": 80}}}))
            .unwrap(),
    );
    f.proxy.set_routes(RouteTable::build(
        &[Arc::new(with_default)],
        &[class()],
        &f.services,
        &f.slices,
    ));
    assert!(get(f.http, "nothing.test", "/").await.1.starts_with("B "));
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused() {
    let f = fixture(Arc::new(Certificates::new(
        tls::default_certificate().unwrap(),
    )))
    .await;
    f.proxy.set_routes(RouteTable::build(
        &[site()],
        &[class()],
        &f.services,
        &f.slices,
    ));
    assert_eq!(
        raw(f.http, b"GARBAGE\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    let mut big = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', proxy::MAX_HEADER_BYTES + 1024));
    big.extend(b"\r\n\r\n");
    assert_eq!(
        raw(f.http, &big).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // The proxy still serves.
    assert_eq!(get(f.http, "a.test", "/").await.0, StatusCode::OK);
}

/// A TLS client trusting `roots`, offering `alpn`.
fn connector(roots: &[Vec<u8>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_by_sni_with_http2_and_http1() {
    let certificates = Arc::new(Certificates::new(tls::default_certificate().unwrap()));
    let f = fixture(certificates.clone()).await;
    f.proxy.set_routes(RouteTable::build(
        &[site()],
        &[class()],
        &f.services,
        &f.slices,
    ));
    let (a_secret, a_der) = tls_secret("a.test");
    let (w_secret, w_der) = tls_secret("x.wild.test");
    certificates.set(HashMap::from([
        ("a.test".to_owned(), tls::certified_key(&a_secret).unwrap()),
        (
            "*.wild.test".to_owned(),
            tls::certified_key(&w_secret).unwrap(),
        ),
    ]));
    let roots = [a_der.clone(), w_der.clone()];

    // HTTP/2 by ALPN, for a.test, with a.test's certificate.
    let tcp = TcpStream::connect(f.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = connector(&roots, &[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("a.test's certificate is served and trusted");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        a_der
    );
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("https://a.test/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "A /h2 host=a.test xff=127.0.0.1 proto=https xfhost=a.test"
    );

    // HTTP/1.1 for a host under the wildcard, with the wildcard's certificate.
    let tcp = TcpStream::connect(f.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("x.wild.test").unwrap();
    let tls = connector(&roots, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("the wildcard certificate is served");
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        w_der
    );
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("/w")
                .header("host", "x.wild.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("B /w "));

    // Another name gets the default certificate, which the client does not trust.
    let tcp = TcpStream::connect(f.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("other.test").unwrap();
    let refused = connector(&roots, &[]).connect(name, tcp).await;
    assert!(refused.is_err(), "the default certificate is self-signed");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let f = fixture(Arc::new(Certificates::new(
        tls::default_certificate().unwrap(),
    )))
    .await;
    f.proxy.set_routes(RouteTable::build(
        &[site()],
        &[class()],
        &f.services,
        &f.slices,
    ));
    let tcp = TcpStream::connect(f.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .expect("the upgrade goes through to the pod");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "again"] {
        ws.send(tungstenite::Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}
