//! Client certificates: who a TLS client is, from a certificate the cluster CA signed.
//!
//! As kube-apiserver does, the server *asks* for a client certificate but does not require one
//! (tokens and anonymous requests stay possible), and a certificate that does not verify is
//! not a failed handshake but a 401 on every request of the connection, so clients get a
//! Kubernetes `Status` they can read. The handshake still checks that the client holds the
//! certificate's key (its CertificateVerify signature); whether the chain is the CA's, the
//! certificate is in date and made for client auth is decided once per connection, after the
//! handshake, by the same WebPKI verifier. The subject's CommonName is the user name and each
//! Organization a group (Kubernetes' x509 request authenticator).

use std::io;
use std::sync::Arc;

use axum::middleware::AddExtension;
use axum::Extension;
use axum_server::accept::{Accept, NoDelayAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::server::TlsStream;
use tower::Layer;

use super::user::{UserInfo, AUTHENTICATED};

/// What the TLS layer established about a connection's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No client certificate was presented.
    None,
    /// A certificate from the cluster CA: the user (CN) in its groups (O) and
    /// `system:authenticated`, built once per connection and shared by its requests.
    User(Arc<UserInfo>),
    /// A certificate was presented but does not verify (unknown CA, expired, wrong usage).
    Invalid(String),
}

/// The server's TLS settings: its serving certificate and the CA client certificates must
/// chain to. Returns the config and the verifier the acceptor re-checks clients with.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<(RustlsConfig, Arc<dyn ClientCertVerifier>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| format!("the client CA: {e}"))?;
        roots.add(ca).map_err(|e| format!("the client CA: {e}"))?;
    }
    let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("the client certificate verifier: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the serving key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(Lenient(strict.clone())))
        .with_single_cert(chain, key)
        .map_err(|e| format!("the serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((RustlsConfig::from_config(Arc::new(config)), strict))
}

/// Accepts any client certificate whose signature proves possession of its key; the chain is
/// judged after the handshake ([`PeerAcceptor`]), so a bad one gets a 401, not a TLS alert.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Clients (Go's among them) pick the certificate to send by these names.
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Judges a presented chain with the strict verifier and reads the subject.
pub fn identify(
    verifier: &dyn ClientCertVerifier,
    chain: Option<&[CertificateDer<'_>]>,
    now: UnixTime,
) -> PeerIdentity {
    let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
        return PeerIdentity::None;
    };
    if let Err(e) = verifier.verify_client_cert(end_entity, intermediates, now) {
        return PeerIdentity::Invalid(e.to_string());
    }
    match subject(end_entity) {
        Ok((name, mut groups)) if !name.is_empty() => {
            if !groups.iter().any(|g| g == AUTHENTICATED) {
                groups.push(AUTHENTICATED.to_owned());
            }
            PeerIdentity::User(Arc::new(UserInfo {
                name,
                groups,
                ..UserInfo::default()
            }))
        }
        Ok(_) => PeerIdentity::Invalid("the certificate has no CommonName".into()),
        Err(e) => PeerIdentity::Invalid(e),
    }
}

/// The identity the API server would give a client presenting `cert_pem`, with `ca_pem` as
/// the only trusted CA (for tests of what issues certificates).
#[cfg(test)]
pub fn identify_pem(cert_pem: &[u8], ca_pem: &[u8]) -> PeerIdentity {
    let cert = CertificateDer::from_pem_slice(cert_pem).expect("a PEM certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).expect("a PEM CA"))
        .expect("a usable CA");
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("a verifier");
    identify(verifier.as_ref(), Some(&[cert]), UnixTime::now())
}

/// The subject's CommonName and Organizations.
fn subject(der: &CertificateDer<'_>) -> Result<(String, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_owned).map_err(|e| e.to_string())
    };
    let name = match cert.subject().iter_common_name().next() {
        Some(cn) => text(cn)?,
        None => String::new(),
    };
    let groups = cert
        .subject()
        .iter_organization()
        .map(text)
        .collect::<Result<_, _>>()?;
    Ok((name, groups))
}

/// The TLS acceptor of the API server: TLS with NODELAY, then the client's [`PeerIdentity`]
/// attached to every request of the connection as an extension.
#[derive(Clone)]
pub struct PeerAcceptor {
    inner: RustlsAcceptor<NoDelayAcceptor>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl PeerAcceptor {
    /// An acceptor for `config`, judging client certificates with `verifier`.
    pub fn new(config: RustlsConfig, verifier: Arc<dyn ClientCertVerifier>) -> Self {
        Self {
            // TCP_NODELAY: a watch event is one small write after a quiet spell, and with
            // Nagle's algorithm it waits for the client's delayed ACK (~40 ms on Linux).
            inner: RustlsAcceptor::new(config).acceptor(NoDelayAcceptor::new()),
            verifier,
        }
    }
}

impl<S> Accept<tokio::net::TcpStream, S> for PeerAcceptor
where
    S: Send + 'static,
{
    type Stream = TlsStream<tokio::net::TcpStream>;
    type Service = AddExtension<S, PeerIdentity>;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let (inner, verifier) = (self.inner.clone(), self.verifier.clone());
        Box::pin(async move {
            let (stream, service) = inner.accept(stream, service).await?;
            let identity = identify(
                verifier.as_ref(),
                stream.get_ref().1.peer_certificates(),
                UnixTime::now(),
            );
            Ok((stream, Extension(identity).layer(service)))
        })
    }
}
