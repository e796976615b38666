//! The node's own identity, `system:node:<name>` in `system:nodes`, got the Kubernetes way
//! (kubelet TLS bootstrap, `kubeadm join --discovery-token`):
//!
//! 1. With `--server` and `--token ID.SECRET`, the agent learns the cluster CA from the signed
//!    `kube-public/cluster-info` ([`discovery`]; or takes `--ca-file`), then with the bootstrap
//!    token as its credential asks for a client certificate through a CertificateSigningRequest
//!    for `kubernetes.io/kube-apiserver-client-kubelet` ([`csr`]). The certificate and its key
//!    go to `<root>/pki/kubelet-client-current.pem` ([`store`]); a restart uses them as long as
//!    they are not in the last tenth of their lifetime.
//! 2. The client certificate renews itself at 70–90 % of its lifetime, authenticated by the
//!    current one ([`rotation`]), and the shared API client presents the new one from its next
//!    connection on ([`client`]).
//! 3. The kubelet endpoint's serving certificate comes the same way, from
//!    `kubernetes.io/kubelet-serving`, for the names and addresses the Node reports ([`serving`]).

pub mod client;
pub mod csr;
pub mod discovery;
pub mod rotation;
pub mod serving;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use self::csr::{node_user, CertRequest, CsrError};
use self::discovery::BootstrapToken;
use self::rotation::{CertSlot, Clock, Issue, Rotator, SystemClock};
use self::store::{CertStore, KeyedCert, StoreError};

/// How long the join waits for its client certificate.
pub const JOIN_CSR_TIMEOUT: Duration = Duration::from_secs(300);

/// The pki directory under the agent's root.
pub fn pki_dir(root_dir: &Path) -> PathBuf {
    root_dir.join("pki")
}

/// How to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The API server, `https://host:port`.
    pub server: String,
    /// The bootstrap token (needed unless a usable client certificate is stored).
    pub token: Option<BootstrapToken>,
    /// The cluster CA's file (otherwise learnt from cluster-info, or stored at the last join).
    pub ca_file: Option<PathBuf>,
    /// The node's name.
    pub node: String,
    /// The agent's root directory (certificates under `pki/`).
    pub root_dir: PathBuf,
    /// The lifetime asked for client certificates (`expirationSeconds`; `None`: the signer's).
    pub client_cert_seconds: Option<i32>,
    /// How long to wait for the join's certificate.
    pub csr_timeout: Duration,
}

/// Why the agent could not get its identity.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The bootstrap token was refused.
    #[error("the API server refused the join token (401 Unauthorized): it is wrong, expired or deleted; create one with `skiff-control token create`")]
    TokenRefused,
    /// Nothing to authenticate with.
    #[error("no usable client certificate in {0} and no --token to join with")]
    NoCredentials(PathBuf),
    /// No CA to trust.
    #[error("no cluster CA: pass --ca-file or --token (to learn it from cluster-info)")]
    NoCa,
    /// Reading the CA file.
    #[error("reading the CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Discovery failed.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    /// The CSR failed.
    #[error("getting the node's client certificate: {0}")]
    Csr(CsrError),
    /// A file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client.
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// The node's identity in use: the API client authenticated as the node, the CA it trusts
/// and the certificate slot it reads.
pub struct NodeIdentity {
    /// The API client (clone it freely; rotation keeps it working).
    pub client: kube::Client,
    /// The cluster CA (PEM): also what the kubelet endpoint verifies client certificates with.
    pub ca_pem: String,
    /// The client certificate in use.
    pub client_cert: Arc<CertSlot>,
    config: JoinConfig,
}

/// Reads the CA for a join: `--ca-file`, else the one stored by an earlier join (when
/// `stored_ok`), else none.
fn known_ca(config: &JoinConfig, stored_ok: bool) -> Result<Option<String>, JoinError> {
    if let Some(path) = &config.ca_file {
        return std::fs::read_to_string(path)
            .map(Some)
            .map_err(|source| JoinError::CaFile {
                path: path.clone(),
                source,
            });
    }
    let stored = pki_dir(&config.root_dir).join(store::CA_FILE);
    Ok(stored_ok
        .then(|| std::fs::read_to_string(stored).ok())
        .flatten())
}

/// Gets the node's identity: the stored client certificate if it is usable (and the node's),
/// else a join with the bootstrap token.
pub async fn join(config: JoinConfig) -> Result<NodeIdentity, JoinError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !config.server.starts_with("https://") {
        return Err(client::ClientError::Url {
            url: config.server.clone(),
            message: "must be https://HOST:PORT".into(),
        }
        .into());
    }
    let pki = pki_dir(&config.root_dir);
    store::private_dir(&pki)?;
    let client_store = CertStore::new(&pki, store::CLIENT_STEM);
    let now = SystemClock.now();
    let stored = client_store
        .load()
        .filter(|c| c.common_name == node_user(&config.node) && c.usable_at(now));
    let (cert, ca_pem) = match stored {
        Some(cert) => {
            let ca = match known_ca(&config, true)? {
                Some(ca) => ca,
                None => discover(&config, &pki).await?,
            };
            tracing::info!(file = %client_store.path().display(), expires = cert.not_after, "using the stored client certificate");
            (cert, ca)
        }
        None => {
            let token = config
                .token
                .clone()
                .ok_or_else(|| JoinError::NoCredentials(client_store.path()))?;
            let ca = match known_ca(&config, false)? {
                Some(ca) => ca,
                None => discover(&config, &pki).await?,
            };
            eprintln!(
                "skiff-agent {}: joining {} with bootstrap token {}",
                config.node, config.server, token.id
            );
            let bootstrap = client::bearer_client(&config.server, &ca, &token.bearer())?;
            let request = CertRequest::client(&config.node, config.client_cert_seconds);
            let cert = request
                .issue(&bootstrap, config.csr_timeout)
                .await
                .map_err(|e| match e {
                    CsrError::Unauthorized(_) => JoinError::TokenRefused,
                    other => JoinError::Csr(other),
                })?;
            client_store.save(&cert)?;
            eprintln!(
                "skiff-agent {}: joined as {} (certificate in {})",
                config.node,
                cert.common_name,
                client_store.path().display()
            );
            (cert, ca)
        }
    };
    let slot = CertSlot::new(Some(cert))?;
    let client = client::rotating_client(&config.server, &ca_pem, &slot)?;
    Ok(NodeIdentity {
        client,
        ca_pem,
        client_cert: slot,
        config,
    })
}

/// Learns the CA from cluster-info with the token and stores it beside the certificates.
async fn discover(config: &JoinConfig, pki: &Path) -> Result<String, JoinError> {
    let token = config.token.as_ref().ok_or(JoinError::NoCa)?;
    let info = discovery::discover(&config.server, token).await?;
    store::write_atomic(&pki.join(store::CA_FILE), info.ca_pem.as_bytes(), 0o644)?;
    tracing::info!(server = %config.server, "learnt the cluster CA from cluster-info (signature verified)");
    Ok(info.ca_pem)
}

/// Renews the client certificate with the node's own client; once the certificate has
/// expired (the agent was stopped too long), with the bootstrap token if it was given.
struct ClientIssuer {
    client: kube::Client,
    request: CertRequest,
    slot: Arc<CertSlot>,
    bootstrap: Option<(String, String, BootstrapToken)>,
}

impl Issue for ClientIssuer {
    fn issue(&self) -> BoxFuture<'_, Result<KeyedCert, CsrError>> {
        Box::pin(async move {
            let expired = self
                .slot
                .current()
                .is_none_or(|c| c.not_after <= SystemClock.now());
            if let (true, Some((server, ca, token))) = (expired, &self.bootstrap) {
                let bootstrap =
                    client::bearer_client(server, ca, &token.bearer()).map_err(|e| {
                        CsrError::BadCertificate {
                            name: String::new(),
                            message: e.to_string(),
                        }
                    })?;
                return self.request.issue(&bootstrap, JOIN_CSR_TIMEOUT).await;
            }
            self.request.issue(&self.client, JOIN_CSR_TIMEOUT).await
        })
    }
}

impl NodeIdentity {
    /// Keeps the client certificate renewed until `shutdown`.
    pub fn rotate(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let rotator = Rotator {
            what: "client",
            slot: self.client_cert.clone(),
            store: CertStore::new(pki_dir(&self.config.root_dir), store::CLIENT_STEM),
            issuer: Arc::new(ClientIssuer {
                client: self.client.clone(),
                request: CertRequest::client(&self.config.node, self.config.client_cert_seconds),
                slot: self.client_cert.clone(),
                bootstrap: self
                    .config
                    .token
                    .clone()
                    .map(|t| (self.config.server.clone(), self.ca_pem.clone(), t)),
            }),
            clock: Arc::new(SystemClock),
        };
        tokio::spawn(rotator.run(shutdown))
    }
}
