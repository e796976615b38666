//! Learning the cluster CA from a bootstrap token, as `kubeadm join --discovery-token` does.
//!
//! The control plane publishes `kube-public/cluster-info`, a ConfigMap readable without
//! credentials: `data.kubeconfig` is a kubeconfig naming the API server and its CA
//! (`certificate-authority-data`), and for every bootstrap token allowed to sign,
//! `data["jws-kubeconfig-<token-id>"]` is a detached JWS (RFC 7515 appendix F: the compact
//! form with the payload left out, `header..signature`) of that kubeconfig text, HS256 with the
//! token's secret as the key. The agent fetches the ConfigMap over TLS it cannot verify yet,
//! checks the signature with the secret it was given, and from then on trusts the CA: only
//! someone who knows the secret could have signed it, so a man in the middle cannot substitute
//! their own CA.

use std::time::Duration;

use base64::Engine as _;

/// The ConfigMap's namespace and name.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// The prefix of the signature keys in the ConfigMap.
pub const JWS_KEY_PREFIX: &str = "jws-kubeconfig-";
/// How long discovery keeps trying an unreachable API server.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a join waits for cluster-info to be signed for its token.
const SIGNATURE_WAIT: Duration = Duration::from_secs(30);

/// A bootstrap token, `<id>.<secret>` (`[a-z0-9]{6}.[a-z0-9]{16}`).
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part.
    pub id: String,
    /// The secret part.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<secret>)", self.id)
    }
}

impl std::str::FromStr for BootstrapToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(Self {
                id: id.to_owned(),
                secret: secret.to_owned(),
            }),
            _ => Err(
                "a bootstrap token has the form ID.SECRET ([a-z0-9]{6}.[a-z0-9]{16}), as `skiff-control token create` prints it"
                    .to_owned(),
            ),
        }
    }
}

impl BootstrapToken {
    /// The bearer token (`<id>.<secret>`).
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The signature does not verify.
    #[error("cluster-info is not signed for this token: wrong --token or a man in the middle")]
    BadSignature,
    /// No signature for this token id.
    #[error("cluster-info has no signature for the token id {0:?}: the token is wrong, expired or deleted (or not usable for signing); create one with `skiff-control token create`")]
    NoSignature(String),
    /// The ConfigMap is missing or malformed.
    #[error("cluster-info: {0}")]
    Malformed(String),
    /// The API server could not be reached or refused the read.
    #[error("reading {url}: {message}")]
    Fetch {
        /// What was read.
        url: String,
        /// Why it failed.
        message: String,
    },
}

/// Checks a detached JWS (`header..signature`) of `payload`: HS256 keyed with the token's
/// secret, and a header that names HS256 (and, when it names a key id, this token's).
pub fn verify_detached_jws(
    jws: &str,
    payload: &str,
    token: &BootstrapToken,
) -> Result<(), DiscoveryError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jws.trim().split('.').collect();
    let [header, "", signature] = parts.as_slice() else {
        return Err(DiscoveryError::BadSignature);
    };
    let header_json: serde_json::Value = b64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(DiscoveryError::BadSignature)?;
    if header_json["alg"] != "HS256" {
        return Err(DiscoveryError::BadSignature);
    }
    if let Some(kid) = header_json.get("kid") {
        if kid != token.id.as_str() {
            return Err(DiscoveryError::BadSignature);
        }
    }
    let signature = b64
        .decode(signature)
        .map_err(|_| DiscoveryError::BadSignature)?;
    let signing_input = format!("{header}.{}", b64.encode(payload.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes());
    // Constant-time comparison.
    ring::hmac::verify(&key, signing_input.as_bytes(), &signature)
        .map_err(|_| DiscoveryError::BadSignature)
}

/// Signs `payload` as the control plane does (for tests and fakes).
pub fn sign_detached_jws(payload: &str, token: &BootstrapToken) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, token.id));
    let signing_input = format!("{header}.{}", b64.encode(payload.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes());
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", b64.encode(tag.as_ref()))
}

/// What cluster-info told, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The API server the kubeconfig names (informational: the agent keeps using `--server`).
    pub server: Option<String>,
}

/// Verifies a cluster-info ConfigMap's `data` for `token` and reads the CA from it.
pub fn verify_cluster_info(
    data: &serde_json::Map<String, serde_json::Value>,
    token: &BootstrapToken,
) -> Result<ClusterInfo, DiscoveryError> {
    let kubeconfig = data
        .get("kubeconfig")
        .and_then(|v| v.as_str())
        .ok_or_else(|| DiscoveryError::Malformed("no data.kubeconfig".into()))?;
    let jws = data
        .get(&format!("{JWS_KEY_PREFIX}{}", token.id))
        .and_then(|v| v.as_str())
        .ok_or_else(|| DiscoveryError::NoSignature(token.id.clone()))?;
    verify_detached_jws(jws, kubeconfig, token)?;
    // Read loosely (client-go writes `contexts: null`): only the first cluster matters.
    let parsed: serde_yaml::Value = serde_yaml::from_str(kubeconfig)
        .map_err(|e| DiscoveryError::Malformed(format!("data.kubeconfig: {e}")))?;
    let cluster = parsed
        .get("clusters")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("cluster"))
        .ok_or_else(|| DiscoveryError::Malformed("data.kubeconfig has no cluster".into()))?;
    let ca_data = cluster
        .get("certificate-authority-data")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            DiscoveryError::Malformed("the kubeconfig has no certificate-authority-data".into())
        })?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_data.trim())
        .map_err(|e| DiscoveryError::Malformed(format!("certificate-authority-data: {e}")))?;
    let ca_pem = String::from_utf8(ca)
        .ok()
        .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| {
            DiscoveryError::Malformed("certificate-authority-data is not a PEM certificate".into())
        })?;
    Ok(ClusterInfo {
        ca_pem,
        server: cluster
            .get("server")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    })
}

/// Fetches `cluster-info` from `server` (`https://host:port`) without verifying its TLS (the
/// CA is what is being learnt) and without credentials, and verifies it for `token`. An
/// unreachable server or a 5xx is retried for up to five minutes, a missing signature for the
/// token for [`SIGNATURE_WAIT`]; a missing ConfigMap or a bad signature is an error at once.
pub async fn discover(server: &str, token: &BootstrapToken) -> Result<ClusterInfo, DiscoveryError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}{CLUSTER_INFO_PATH}", server.trim_end_matches('/'));
    let fetch_err = |message: String| DiscoveryError::Fetch {
        url: url.clone(),
        message,
    };
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = async {
            let response = http
                .get(&url)
                .send()
                .await
                .map_err(|e| (true, e.to_string()))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| (true, e.to_string()))?;
            match status.as_u16() {
                200 => Ok(body),
                404 => Err((
                    false,
                    "404 Not Found: the control plane publishes no cluster-info (pass --ca-file)"
                        .to_owned(),
                )),
                401 | 403 => Err((
                    false,
                    format!("{status}: the API server does not let anonymous users read cluster-info (pass --ca-file)"),
                )),
                s if s >= 500 => Err((true, format!("{status}"))),
                _ => Err((false, format!("{status}: {body}"))),
            }
        };
        match attempt.await {
            Ok(body) => {
                let cm: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| DiscoveryError::Malformed(format!("not JSON: {e}")))?;
                let data = cm
                    .get("data")
                    .and_then(|d| d.as_object())
                    .ok_or_else(|| DiscoveryError::Malformed("no data".into()))?;
                match verify_cluster_info(data, token) {
                    // The control plane's bootstrap signer adds a new token's signature a
                    // moment after the token is created: retry for a while, not forever (a
                    // wrong token id never gets one).
                    Err(DiscoveryError::NoSignature(_)) if start.elapsed() < SIGNATURE_WAIT => {
                        tracing::info!(%url, "cluster-info is not signed for this token yet; retrying");
                        tokio::time::sleep(delay.min(Duration::from_secs(2))).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                    result => return result,
                }
            }
            Err((true, message)) if start.elapsed() < DISCOVERY_TIMEOUT => {
                tracing::warn!(%url, error = %message, "cluster-info not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err((_, message)) => return Err(fetch_err(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootstrapToken {
        "abcdef.0123456789abcdef".parse().unwrap()
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn kubeconfig() -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(CA);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: {data}\ncontexts: []\nusers: []\n"
        )
    }

    #[test]
    fn tokens_parse_as_kubeadm_writes_them() {
        let t = token();
        assert_eq!(
            (t.id.as_str(), t.secret.as_str()),
            ("abcdef", "0123456789abcdef")
        );
        assert_eq!(t.bearer(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
        ] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_right_signature_verifies() {
        let kc = kubeconfig();
        let jws = sign_detached_jws(&kc, &token());
        assert!(jws.contains(".."), "{jws}");
        verify_detached_jws(&jws, &kc, &token()).unwrap();
    }

    #[test]
    fn a_wrong_secret_or_a_modified_kubeconfig_is_refused() {
        let kc = kubeconfig();
        let jws = sign_detached_jws(&kc, &token());
        let other: BootstrapToken = "abcdef.fedcba9876543210".parse().unwrap();
        let err = verify_detached_jws(&jws, &kc, &other).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster-info is not signed for this token: wrong --token or a man in the middle"
        );
        let modified = kc.replace("10.0.0.1", "10.6.6.6");
        assert!(matches!(
            verify_detached_jws(&jws, &modified, &token()),
            Err(DiscoveryError::BadSignature)
        ));
        // Another token id in the header, another algorithm, a non-detached form.
        let other_id: BootstrapToken = "zzzzzz.0123456789abcdef".parse().unwrap();
        assert!(verify_detached_jws(&jws, &kc, &other_id).is_err());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (_, sig) = jws.split_once("..").unwrap();
        let none = format!("{}..{sig}", b64.encode(r#"{"alg":"none","kid":"abcdef"}"#));
        assert!(verify_detached_jws(&none, &kc, &token()).is_err());
        let attached = jws.replace("..", &format!(".{}.", b64.encode(&kc)));
        assert!(verify_detached_jws(&attached, &kc, &token()).is_err());
        assert!(verify_detached_jws("garbage", &kc, &token()).is_err());
    }

    /// The control plane's cluster-info, byte for byte as it (and kubeadm) writes it, and
    /// the protected header go-jose encodes for token id `abcdef`.
    #[test]
    fn the_control_planes_format_verifies() {
        let ca = base64::engine::general_purpose::STANDARD.encode(CA);
        let kc = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://10.0.0.1:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
        );
        let jws = sign_detached_jws(&kc, &token());
        assert_eq!(
            jws.split_once("..").unwrap().0,
            "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9"
        );
        let mut data = serde_json::Map::new();
        data.insert("kubeconfig".into(), kc.into());
        data.insert("jws-kubeconfig-abcdef".into(), jws.into());
        let info = verify_cluster_info(&data, &token()).unwrap();
        assert_eq!(info.ca_pem, CA);
        assert_eq!(info.server.as_deref(), Some("https://10.0.0.1:6443"));
    }

    #[test]
    fn cluster_info_yields_the_ca_only_with_a_valid_signature() {
        let kc = kubeconfig();
        let mut data = serde_json::Map::new();
        data.insert("kubeconfig".into(), kc.clone().into());
        let err = verify_cluster_info(&data, &token()).unwrap_err();
        assert!(
            matches!(err, DiscoveryError::NoSignature(ref id) if id == "abcdef"),
            "{err}"
        );
        data.insert(
            "jws-kubeconfig-abcdef".into(),
            sign_detached_jws(&kc, &token()).into(),
        );
        let info = verify_cluster_info(&data, &token()).unwrap();
        assert_eq!(info.ca_pem, CA);
        assert_eq!(info.server.as_deref(), Some("https://10.0.0.1:6443"));
        // The signature of another secret with the same id: refused.
        let forged: BootstrapToken = "abcdef.ffffffffffffffff".parse().unwrap();
        data.insert(
            "jws-kubeconfig-abcdef".into(),
            sign_detached_jws(&kc, &forged).into(),
        );
        assert!(matches!(
            verify_cluster_info(&data, &token()),
            Err(DiscoveryError::BadSignature)
        ));
    }
}
