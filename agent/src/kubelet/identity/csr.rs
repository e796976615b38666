//! Certificates through the `certificates.k8s.io/v1` CertificateSigningRequest API, as the
//! kubelet gets them: a new ECDSA P-256 key, a PKCS#10 request with the node's subject
//! (`CN=system:node:<name>`, `O=system:nodes`), a CSR object for a signer, then a wait until the
//! CSR carries a certificate, or is `Denied` or `Failed`.

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{PostParams, WatchEvent, WatchParams};
use kube::Api;

use super::store::KeyedCert;

/// The signer of kubelet client certificates (auto-approved for a bootstrap token and for
/// renewals by the node itself).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The group of nodes.
pub const NODES_GROUP: &str = "system:nodes";
/// How often the wait says that it is still waiting.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The user name of a node.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

/// Why no certificate came.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The API server refused the credentials (401).
    #[error("the API server refused the credentials (401 Unauthorized): {0}")]
    Unauthorized(String),
    /// The credentials may not create CSRs (403).
    #[error("the API server forbids creating the CertificateSigningRequest (403 Forbidden): {0}")]
    Forbidden(String),
    /// An approver denied the CSR.
    #[error("the CertificateSigningRequest {name} was denied ({reason}): {message}")]
    Denied {
        /// The CSR.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer failed to sign it.
    #[error("the signer failed the CertificateSigningRequest {name} ({reason}): {message}")]
    Failed {
        /// The CSR.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// Nothing happened in time.
    #[error("the CertificateSigningRequest {name} got no certificate within {}s: no approver approved it (`kubectl certificate approve {name}`) or no signer signed it", waited.as_secs())]
    Timeout {
        /// The CSR.
        name: String,
        /// How long the wait was.
        waited: Duration,
    },
    /// The CSR disappeared while waited for.
    #[error("the CertificateSigningRequest {0} was deleted before it got a certificate")]
    Deleted(String),
    /// The issued certificate is unusable (not PEM, not for the key).
    #[error("the certificate issued for {name}: {message}")]
    BadCertificate {
        /// The CSR.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The request cannot be made yet (a serving certificate before the Node reports its
    /// addresses).
    #[error("{0}")]
    NotReady(String),
    /// Making the key or the request.
    #[error("making the key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    /// Any other API error.
    #[error("the CertificateSigningRequest API: {0}")]
    Api(kube::Error),
}

impl From<kube::Error> for CsrError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 401 => Self::Unauthorized(s.message.clone()),
            kube::Error::Api(s) if s.code == 403 => Self::Forbidden(s.message.clone()),
            _ => Self::Api(e),
        }
    }
}

/// What to ask a signer for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The node's name (the subject is `system:node:<name>` in `system:nodes`).
    pub node: String,
    /// The signer.
    pub signer: &'static str,
    /// The key usages (`digital signature` and `client auth` or `server auth`: an ECDSA key
    /// needs no `key encipherment`).
    pub usages: Vec<&'static str>,
    /// DNS names (serving certificates).
    pub dns_names: Vec<String>,
    /// IP addresses (serving certificates).
    pub ip_addresses: Vec<IpAddr>,
    /// The requested lifetime (`spec.expirationSeconds`); `None`: the signer's default.
    pub expiration_seconds: Option<i32>,
}

impl CertRequest {
    /// A kubelet client certificate for `node`.
    pub fn client(node: &str, expiration_seconds: Option<i32>) -> Self {
        Self {
            node: node.to_owned(),
            signer: CLIENT_SIGNER,
            usages: vec!["digital signature", "client auth"],
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            expiration_seconds,
        }
    }

    /// A kubelet serving certificate for `node` at these names and addresses.
    pub fn serving(
        node: &str,
        dns_names: Vec<String>,
        ip_addresses: Vec<IpAddr>,
        expiration_seconds: Option<i32>,
    ) -> Self {
        Self {
            node: node.to_owned(),
            signer: SERVING_SIGNER,
            usages: vec!["digital signature", "server auth"],
            dns_names,
            ip_addresses,
            expiration_seconds,
        }
    }

    /// A new key and the PKCS#10 request (PEM) for it.
    pub fn key_and_csr(&self) -> Result<(rcgen::KeyPair, String), CsrError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(self.dns_names.clone())?;
        params.subject_alt_names.extend(
            self.ip_addresses
                .iter()
                .map(|ip| rcgen::SanType::IpAddress(*ip)),
        );
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, NODES_GROUP);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_user(&self.node));
        let csr = params.serialize_request(&key)?.pem()?;
        Ok((key, csr))
    }

    /// The CSR object for a request PEM, named `node-csr-<random>`.
    pub fn object(&self, csr_pem: &str) -> CertificateSigningRequest {
        let suffix: String = {
            use rand::Rng as _;
            let mut rng = rand::rng();
            (0..10)
                .map(|_| {
                    let n = rng.random_range(0..36u8);
                    char::from_digit(u32::from(n), 36).unwrap_or('x')
                })
                .collect()
        };
        CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(format!("node-csr-{suffix}")),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(csr_pem.as_bytes().to_vec()),
                signer_name: self.signer.to_owned(),
                usages: Some(self.usages.iter().map(|u| (*u).to_owned()).collect()),
                expiration_seconds: self.expiration_seconds,
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        }
    }

    /// Asks `client`'s API for a certificate: a new key, the CSR created with the client's
    /// credentials, then a wait of up to `timeout` for the certificate.
    pub async fn issue(
        &self,
        client: &kube::Client,
        timeout: Duration,
    ) -> Result<KeyedCert, CsrError> {
        let (key, csr_pem) = self.key_and_csr()?;
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        let created = api
            .create(&PostParams::default(), &self.object(&csr_pem))
            .await?;
        let name = created.metadata.name.clone().unwrap_or_default();
        tracing::info!(csr = %name, signer = self.signer, "created a CertificateSigningRequest");
        let cert_pem = wait_for_certificate(&api, &name, timeout).await?;
        KeyedCert::new(&cert_pem, &key.serialize_pem()).map_err(|e| CsrError::BadCertificate {
            name,
            message: e.to_string(),
        })
    }
}

/// The outcome a CSR shows: its certificate (PEM), a denial or failure, or nothing yet.
pub fn outcome(csr: &CertificateSigningRequest) -> Option<Result<String, CsrError>> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let status = csr.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status != "True" && !c.status.is_empty() {
            continue;
        }
        let (reason, message) = (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        );
        match c.type_.as_str() {
            "Denied" => {
                return Some(Err(CsrError::Denied {
                    name,
                    reason,
                    message,
                }))
            }
            "Failed" => {
                return Some(Err(CsrError::Failed {
                    name,
                    reason,
                    message,
                }))
            }
            _ => {}
        }
    }
    let cert = status.certificate.as_ref().filter(|c| !c.0.is_empty())?;
    Some(Ok(String::from_utf8_lossy(&cert.0).into_owned()))
}

/// Waits until the CSR `name` has a certificate (or is denied or failed), for up to `timeout`:
/// a read, then a watch of that one object until the next read; every 30 s a line says that
/// it still waits for approval.
pub async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<String, CsrError> {
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let mut next_log = start + WAIT_LOG_INTERVAL;
    loop {
        let csr = match api.get_opt(name).await? {
            Some(c) => c,
            None => return Err(CsrError::Deleted(name.to_owned())),
        };
        if let Some(result) = outcome(&csr) {
            return result;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(CsrError::Timeout {
                name: name.to_owned(),
                waited: timeout,
            });
        }
        if now >= next_log {
            tracing::warn!(csr = %name, waited_s = (now - start).as_secs(), "waiting for the CertificateSigningRequest to be approved and signed");
            eprintln!(
                "skiff-agent: waiting for the CertificateSigningRequest {name} to be approved ({}s so far)",
                (now - start).as_secs()
            );
            next_log = now + WAIT_LOG_INTERVAL;
        }
        // Watch until the next log line is due (or the deadline).
        let until = next_log.min(deadline);
        let seconds = (until - now).as_secs().max(1);
        let rv = csr.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(u32::try_from(seconds).unwrap_or(30));
        let watched = async {
            let mut events = Box::pin(api.watch(&params, &rv).await?);
            while let Some(event) = events.try_next().await? {
                match event {
                    WatchEvent::Added(c) | WatchEvent::Modified(c) => {
                        if let Some(result) = outcome(&c) {
                            return Ok(Some(result));
                        }
                    }
                    WatchEvent::Deleted(_) => {
                        return Ok(Some(Err(CsrError::Deleted(name.to_owned()))))
                    }
                    // A resource version too old: read again.
                    WatchEvent::Error(_) => return Ok(None),
                    WatchEvent::Bookmark(_) => {}
                }
            }
            Ok::<_, kube::Error>(None)
        };
        match tokio::time::timeout_at(until + Duration::from_secs(5), watched).await {
            Ok(Ok(Some(result))) => return result,
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::debug!(csr = %name, error = %e, "watching the CSR failed; reading it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // A watch that ends at once (a server without watch for this): do not spin.
        if tokio::time::Instant::now() < now + Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_request_names_the_node_in_the_nodes_group() {
        let r = CertRequest::client("n1", Some(3600));
        let (key, pem) = r.key_and_csr().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let dn = &parsed.params.distinguished_name;
        assert_eq!(
            dn.get(&rcgen::DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("system:node:n1".into()))
        );
        assert_eq!(
            dn.get(&rcgen::DnType::OrganizationName),
            Some(&rcgen::DnValue::Utf8String("system:nodes".into()))
        );
        assert!(parsed.params.subject_alt_names.is_empty());
        use rcgen::PublicKeyData as _;
        assert_eq!(parsed.public_key.der_bytes(), key.der_bytes());

        let o = r.object(&pem);
        assert!(o.metadata.name.as_deref().unwrap().starts_with("node-csr-"));
        assert_eq!(
            o.spec.signer_name,
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            o.spec.usages.as_deref().unwrap(),
            ["digital signature", "client auth"]
        );
        assert_eq!(o.spec.expiration_seconds, Some(3600));
        assert_eq!(o.spec.request.0, pem.as_bytes());
        // The request travels base64-encoded, as the API wants it.
        let json = serde_json::to_value(&o).unwrap();
        assert!(json["spec"]["request"]
            .as_str()
            .unwrap()
            .starts_with("LS0tLS1CRUdJTi"));
    }

    #[test]
    fn a_serving_request_carries_the_nodes_names_and_addresses() {
        let r = CertRequest::serving(
            "n1",
            vec!["n1".into()],
            vec!["10.0.0.5".parse().unwrap()],
            None,
        );
        let (_, pem) = r.key_and_csr().unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(
            parsed.params.subject_alt_names,
            [
                rcgen::SanType::DnsName("n1".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.0.0.5".parse().unwrap())
            ]
        );
        let o = r.object(&pem);
        assert_eq!(o.spec.signer_name, "kubernetes.io/kubelet-serving");
        assert_eq!(
            o.spec.usages.as_deref().unwrap(),
            ["digital signature", "server auth"]
        );
        assert_eq!(o.spec.expiration_seconds, None);
    }

    #[test]
    fn the_outcome_is_the_certificate_or_the_denial() {
        let csr = |status: serde_json::Value| -> CertificateSigningRequest {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "node-csr-x"},
                "spec": {"request": "", "signerName": CLIENT_SIGNER},
                "status": status,
            }))
            .unwrap()
        };
        assert!(outcome(&csr(serde_json::json!({}))).is_none());
        let approved =
            csr(serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}]}));
        assert!(outcome(&approved).is_none());
        let issued = csr(serde_json::json!({
            "conditions": [{"type": "Approved", "status": "True"}],
            "certificate": "LS0tLS1CRUdJTg==",
        }));
        assert_eq!(outcome(&issued).unwrap().unwrap(), "-----BEGIN");
        let denied = csr(
            serde_json::json!({"conditions": [{"type": "Denied", "status": "True",
            "reason": "NotANode", "message": "the subject is not the requester"}]}),
        );
        let err = outcome(&denied).unwrap().unwrap_err().to_string();
        assert_eq!(
            err,
            "the CertificateSigningRequest node-csr-x was denied (NotANode): the subject is not the requester"
        );
        let failed = csr(
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True",
            "reason": "SignerError", "message": "no CA key"}]}),
        );
        assert!(matches!(
            outcome(&failed).unwrap(),
            Err(CsrError::Failed { .. })
        ));
    }
}
