//! TLS termination: the certificate for a connection is chosen by its SNI name from the
//! `spec.tls` Secrets of skiff's Ingresses (exact host, else a `*.` wildcard one label up),
//! else the proxy's default self-signed certificate, as ingress-nginx's "fake certificate".
//! A Secret that is not a usable `kubernetes.io/tls` pair leaves its hosts on the default
//! certificate, and [`certified_key`]'s error is the Event's message.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a TLS Secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    /// The Secret's type is not `kubernetes.io/tls`.
    #[error("secret type is {0:?}, not \"kubernetes.io/tls\"")]
    WrongType(String),
    /// `tls.crt` or `tls.key` is missing.
    #[error("secret has no {0}")]
    Missing(&'static str),
    /// The certificate chain is not PEM certificates.
    #[error("tls.crt is not a PEM certificate: {0}")]
    Certificate(String),
    /// The key is not a PEM private key.
    #[error("tls.key is not a PEM private key: {0}")]
    Key(String),
    /// rustls refuses the pair (unsupported key, or the key does not match the certificate).
    #[error("the certificate and key cannot be used: {0}")]
    Pair(String),
    /// The default certificate could not be generated.
    #[error("generating the default certificate: {0}")]
    Generate(String),
}

/// The pair of a `kubernetes.io/tls` Secret.
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, TlsError> {
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    if ty != "kubernetes.io/tls" {
        return Err(TlsError::WrongType(ty.to_owned()));
    }
    let data = secret.data.as_ref();
    let field = |name: &'static str| {
        data.and_then(|d| d.get(name))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or(TlsError::Missing(name))
    };
    let (crt, key) = (field("tls.crt")?, field("tls.key")?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Pair(e.to_string()))
}

/// A self-signed certificate for hosts without a usable Secret (generated at start; clients
/// that verify refuse it, as they should).
pub fn default_certificate() -> Result<Arc<CertifiedKey>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(vec!["skiff-ingress-default".to_owned()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Pair(e.to_string()))
}

/// The certificates by host (exact, or `*.suffix`), swapped whole when Ingresses or
/// Secrets change, read without a lock by every handshake.
#[derive(Debug)]
pub struct Certificates {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    default: Arc<CertifiedKey>,
}

impl Certificates {
    /// No host certificates yet; `default` for every name.
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        Self {
            by_host: ArcSwap::from_pointee(HashMap::new()),
            default,
        }
    }

    /// Replaces the host certificates.
    pub fn set(&self, by_host: HashMap<String, Arc<CertifiedKey>>) {
        self.by_host.store(Arc::new(by_host));
    }

    /// The certificate for an SNI name (`None`: no SNI, or an IP address).
    pub fn for_name(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let hosts = self.by_host.load();
        hosts
            .get(&name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, suffix)| hosts.get(&format!("*.{suffix}")))
            })
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

/// The TLS side of the HTTPS listener: certificates from `certificates`, HTTP/2 or
/// HTTP/1.1 by ALPN.
pub fn acceptor(
    certificates: Arc<Certificates>,
) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(ty: &str, crt: &str, key: &str) -> Secret {
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_owned(), ByteString(crt.as_bytes().to_vec()));
        data.insert("tls.key".to_owned(), ByteString(key.as_bytes().to_vec()));
        Secret {
            type_: Some(ty.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn pair(host: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn secrets_become_pairs_or_say_why_not() {
        let (crt, key) = pair("a.io");
        assert!(certified_key(&secret("kubernetes.io/tls", &crt, &key)).is_ok());
        assert_eq!(
            certified_key(&secret("Opaque", &crt, &key)).unwrap_err(),
            TlsError::WrongType("Opaque".into())
        );
        assert!(matches!(
            certified_key(&secret("kubernetes.io/tls", "garbage", &key)),
            Err(TlsError::Certificate(_))
        ));
        assert!(matches!(
            certified_key(&secret("kubernetes.io/tls", &crt, "garbage")),
            Err(TlsError::Key(_))
        ));
        let (_, other_key) = pair("b.io");
        assert!(matches!(
            certified_key(&secret("kubernetes.io/tls", &crt, &other_key)),
            Err(TlsError::Pair(_))
        ));
        let mut empty = secret("kubernetes.io/tls", &crt, &key);
        empty.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(
            certified_key(&empty).unwrap_err(),
            TlsError::Missing("tls.key")
        );
    }

    #[test]
    fn names_choose_exact_then_wildcard_then_default() {
        let default = default_certificate().unwrap();
        let certs = Certificates::new(default.clone());
        let (a, w) = (
            default_certificate().unwrap(),
            default_certificate().unwrap(),
        );
        certs.set(HashMap::from([
            ("a.io".to_owned(), a.clone()),
            ("*.w.io".to_owned(), w.clone()),
        ]));
        assert!(Arc::ptr_eq(&certs.for_name(Some("A.io")), &a));
        assert!(Arc::ptr_eq(&certs.for_name(Some("x.w.io")), &w));
        assert!(Arc::ptr_eq(&certs.for_name(Some("y.x.w.io")), &default));
        assert!(Arc::ptr_eq(&certs.for_name(None), &default));
    }
}
