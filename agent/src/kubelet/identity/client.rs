//! The agent's API client when it has its own certificate: a `kube::Client` over hyper and
//! rustls whose client certificate is read from a [`CertSlot`] at every TLS handshake, so a
//! rotated certificate is used without rebuilding the client that every part of the agent
//! shares. When the certificate changes, every open connection is closed (as the kubelet
//! does): pooled connections would otherwise keep presenting the old certificate until it
//! expires. Requests in flight on them fail once and are retried by their callers (watches
//! restart).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::BoxError;

use super::rotation::CertSlot;

/// Presents the slot's certificate.
#[derive(Debug)]
pub struct SlotClientCert(pub Arc<CertSlot>);

impl ResolvesClientCert for SlotClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.certified_key().is_some()
    }
}

/// The connections of a client: closed all at once on [`Connections::close_all`].
#[derive(Debug, Default)]
pub struct Connections {
    generation: Mutex<CancellationToken>,
}

impl Connections {
    /// The token new connections are tied to.
    fn current(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every connection made so far; later ones are unaffected.
    pub fn close_all(&self) {
        let old = std::mem::take(&mut *self.generation.lock().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
    }
}

/// A connector whose connections end (read EOF) when their [`Connections`] are closed.
#[derive(Clone)]
pub struct ClosingConnector<C> {
    inner: C,
    connections: Arc<Connections>,
}

impl<C> tower::Service<http::Uri> for ClosingConnector<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = Closable<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let token = self.connections.current();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let stream = connecting.await.map_err(Into::into)?;
            Ok(Closable {
                inner: stream,
                closed: Box::pin(token.clone().cancelled_owned()),
                token,
            })
        })
    }
}

/// A connection that reads EOF once its token is cancelled, which makes hyper drop it (from
/// the pool when idle; a response in progress ends with an error).
pub struct Closable<S> {
    inner: S,
    token: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Closable<S> {
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        // Registers the waker, so that an idle connection wakes to close.
        self.token.is_cancelled() || self.closed.as_mut().poll(cx).is_ready()
    }
}

impl<S: hyper::rt::Read + Unpin> hyper::rt::Read for Closable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: hyper::rt::Write + Unpin> hyper::rt::Write for Closable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for Closable<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL.
    #[error("the server URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The CA.
    #[error("the cluster CA: {0}")]
    Ca(String),
    /// TLS settings.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The certificates of a CA bundle (PEM).
pub fn ca_certificates(ca_pem: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(ClientError::Ca("no certificate in the PEM".into()));
    }
    Ok(certs)
}

/// A client for the API server at `server` (`https://host:port`) that trusts `ca_pem` and
/// authenticates with the slot's certificate, whatever it is at each new connection.
pub fn rotating_client(
    server: &str,
    ca_pem: &str,
    slot: &Arc<CertSlot>,
) -> Result<kube::Client, ClientError> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url {
            url: server.to_owned(),
            message: e.to_string(),
        })?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::Url {
            url: server.to_owned(),
            message: "must be https://HOST:PORT".into(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in ca_certificates(ca_pem)? {
        roots.add(ca).map_err(|e| ClientError::Ca(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(SlotClientCert(slot.clone())));
    // A resumed TLS session carries the identity of the handshake that made it: a new
    // connection after a rotation would still be the old certificate's.
    tls.resumption = rustls::client::Resumption::disabled();
    let connections = Arc::new(Connections::default());
    slot.on_change({
        let connections = connections.clone();
        move || connections.close_all()
    });
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    http.set_keepalive(Some(Duration::from_secs(30)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let connector = ClosingConnector {
        inner: https,
        connections,
    };
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(kube::client::middleware::BaseUriLayer::new(uri))
        .service(hyper_client);
    Ok(kube::Client::new(service, "default"))
}

/// A client for the join itself: trusts `ca_pem` and sends `token` as a bearer token.
pub fn bearer_client(server: &str, ca_pem: &str, token: &str) -> Result<kube::Client, ClientError> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url {
            url: server.to_owned(),
            message: e.to_string(),
        })?;
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(
        ca_certificates(ca_pem)?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
    );
    config.auth_info.token = Some(secrecy::SecretString::from(token.to_owned()));
    kube::Client::try_from(config).map_err(|e| ClientError::Url {
        url: server.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::identity::store::KeyedCert;
    use axum::extract::Request;

    /// A CA and certificates it signs for client auth.
    struct Ca {
        key: rcgen::KeyPair,
        params: rcgen::CertificateParams,
        pem: String,
    }

    impl Ca {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test-ca");
            let pem = params.clone().self_signed(&key).unwrap().pem();
            Self { key, params, pem }
        }

        fn sign(&self, cn: &str, sans: Vec<String>, server: bool) -> KeyedCert {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = vec![if server {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            }];
            let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            KeyedCert::new(&cert.pem(), &key.serialize_pem()).unwrap()
        }
    }

    /// An HTTPS server that requires client certificates from `ca` and answers every request
    /// with the CN of the connection's client certificate.
    async fn echo_server(ca: &Ca) -> String {
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_certificates(&ca.pem).unwrap()[0].clone())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let serving = ca.sign(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            true,
        );
        let chain = ca_certificates(&serving.cert_pem).unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| {
                            let (_, p) = x509_parser::parse_x509_certificate(c.as_ref()).unwrap();
                            let cn = p.subject().iter_common_name().next().unwrap();
                            cn.as_str().unwrap().to_owned()
                        })
                        .unwrap_or_default();
                    let app = axum::Router::new().fallback(move |_: Request| {
                        let cn = cn.clone();
                        async move {
                            axum::Json(serde_json::json!({
                                "apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": cn},
                            }))
                        }
                    });
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        format!("https://127.0.0.1:{}", addr.port())
    }

    async fn who(client: &kube::Client) -> String {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        api.get("x").await.unwrap().metadata.name.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_presents_the_rotated_certificate_without_being_rebuilt() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Ca::new();
        let server = echo_server(&ca).await;
        let slot = CertSlot::new(Some(ca.sign("system:node:old", vec![], false))).unwrap();
        let client = rotating_client(&server, &ca.pem, &slot).unwrap();
        // Kept-alive connection: the same identity.
        assert_eq!(who(&client).await, "system:node:old");
        assert_eq!(who(&client).await, "system:node:old");
        // Rotated: pooled connections close, the next one presents the new certificate.
        slot.set(ca.sign("system:node:new", vec![], false)).unwrap();
        let cloned = client.clone();
        assert_eq!(who(&cloned).await, "system:node:new");
        assert_eq!(who(&client).await, "system:node:new");
        // Several connections at once, then a rotation: none keeps the old identity.
        let many: Vec<_> = (0..4).map(|_| who(&client)).collect();
        futures::future::join_all(many).await;
        slot.set(ca.sign("system:node:newer", vec![], false))
            .unwrap();
        let many: Vec<_> = (0..4).map(|_| who(&client)).collect();
        for name in futures::future::join_all(many).await {
            assert_eq!(name, "system:node:newer");
        }
    }

    #[tokio::test]
    async fn the_client_refuses_a_server_of_another_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (ca, other) = (Ca::new(), Ca::new());
        let server = echo_server(&ca).await;
        let slot = CertSlot::new(Some(ca.sign("system:node:n", vec![], false))).unwrap();
        let client = rotating_client(&server, &other.pem, &slot).unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        api.get("x").await.unwrap_err();
        assert!(rotating_client("http://127.0.0.1:1", &ca.pem, &slot).is_err());
        assert!(rotating_client(&server, "not a pem", &slot).is_err());
    }
}
