//! How the API server reaches kubelets (`pods/log`, `pods/exec`): TLS that verifies the
//! kubelet's serving certificate against the cluster CA (issued to the node through a
//! `kubernetes.io/kubelet-serving` CSR), and a client certificate of its own
//! (`kube-apiserver-kubelet-client`, bound to `system:kubelet-api-admin`) that the kubelet
//! authenticates and authorizes with a SubjectAccessReview. No bearer token is ever sent to a
//! node: a node holding the API server's credential could replay it.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TLS settings for connections to kubelets.
#[derive(Debug, Clone)]
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

impl KubeletClient {
    /// A client presenting `cert_pem`/`key_pem` and trusting kubelets whose certificate the
    /// CA in `ca_pem` issued.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("reading the CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate: {e}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading the client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("reading the client key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client certificate: {e}"))?;
        let tls = Arc::new(tls);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the kubelet client: {e}"))?;
        Ok(Self { tls, http })
    }

    /// The TLS settings (for the exec WebSocket).
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// An HTTP client with these settings (for logs).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
