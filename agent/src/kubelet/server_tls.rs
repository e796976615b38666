//! TLS of the kubelet endpoint: the serving certificate, read at every handshake (the one the
//! cluster's `kubelet-serving` signer issued once there is one, the self-signed one until
//! then), and client certificates, asked for but not required (bearer tokens stay possible).
//! As kube-apiserver and the kubelet do, a presented certificate that does not verify against
//! the cluster CA is no TLS alert but an unauthenticated connection: the handshake only checks
//! that the client holds the certificate's key; the chain, dates and usage are judged once per
//! connection afterwards and the result ([`PeerIdentity`]) is attached to its requests.

use std::io;
use std::sync::Arc;

use axum::middleware::AddExtension;
use axum::Extension;
use axum_server::accept::{Accept, NoDelayAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::server::TlsStream;
use tower::Layer as _;

use super::auth::{PeerIdentity, UserInfo};
use super::identity::rotation::CertSlot;

/// Serves the slot's certificate, or the fallback while the slot is empty.
#[derive(Debug)]
pub struct ServingCert {
    /// The issued certificate (empty until issued).
    pub slot: Option<Arc<CertSlot>>,
    /// The self-signed certificate.
    pub fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.slot
            .as_ref()
            .and_then(|s| s.certified_key())
            .or_else(|| Some(self.fallback.clone()))
    }
}

/// Accepts any client certificate whose signature proves possession of its key; the chain is
/// judged after the handshake ([`PeerAcceptor`]).
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

/// The endpoint's TLS settings: `serving` for the certificate, `client_ca_pem` (if any) to
/// verify client certificates with. Returns the config and the strict verifier the acceptor
/// judges clients with.
pub fn server_config(
    serving: ServingCert,
    client_ca_pem: Option<&str>,
) -> Result<(RustlsConfig, Option<Arc<dyn ClientCertVerifier>>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let (builder, strict) = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in super::identity::client::ca_certificates(pem).map_err(|e| e.to_string())? {
                roots.add(ca).map_err(|e| format!("the client CA: {e}"))?;
            }
            let strict: Arc<dyn ClientCertVerifier> =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the client certificate verifier: {e}"))?;
            (
                builder.with_client_cert_verifier(Arc::new(Lenient(strict.clone()))),
                Some(strict),
            )
        }
        None => (builder.with_no_client_auth(), None),
    };
    let mut config = builder.with_cert_resolver(Arc::new(serving));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((RustlsConfig::from_config(Arc::new(config)), strict))
}

/// Judges a presented chain with the strict verifier and reads its subject: CommonName the
/// user, each Organization a group.
pub fn identify(
    verifier: Option<&dyn ClientCertVerifier>,
    chain: Option<&[CertificateDer<'_>]>,
    now: UnixTime,
) -> PeerIdentity {
    let (Some(verifier), Some((end_entity, intermediates))) =
        (verifier, chain.and_then(|c| c.split_first()))
    else {
        return PeerIdentity::None;
    };
    if let Err(e) = verifier.verify_client_cert(end_entity, intermediates, now) {
        return PeerIdentity::Invalid(e.to_string());
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return PeerIdentity::Invalid("unreadable certificate".into());
    };
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_owned).unwrap_or_default()
    };
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .map(text)
        .unwrap_or_default();
    if name.is_empty() {
        return PeerIdentity::Invalid("the certificate has no CommonName".into());
    }
    let groups: Vec<String> = cert.subject().iter_organization().map(text).collect();
    PeerIdentity::User(Arc::new(UserInfo::new(name, groups)))
}

/// TLS (with TCP_NODELAY), then the client's [`PeerIdentity`] attached to every request of the
/// connection.
#[derive(Clone)]
pub struct PeerAcceptor {
    inner: RustlsAcceptor<NoDelayAcceptor>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl PeerAcceptor {
    /// An acceptor for `config`, judging client certificates with `verifier`.
    pub fn new(config: RustlsConfig, verifier: Option<Arc<dyn ClientCertVerifier>>) -> Self {
        Self {
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
                verifier.as_deref(),
                stream.get_ref().1.peer_certificates(),
                UnixTime::now(),
            );
            Ok((stream, Extension(identity).layer(service)))
        })
    }
}
