//! The `cluster-info` ConfigMap in `kube-public` (kubeadm's token discovery): `data.kubeconfig`
//! is a kubeconfig holding only the cluster, the API server's URL as clients reach it and its
//! CA, and `data["jws-kubeconfig-<token id>"]` a detached JWS of exactly that text for every
//! bootstrap token usable for signing (kept by `controllers/bootstrap_signer.rs`).
//!
//! Anyone may read it (`kubeadm:bootstrap-signer-clusterinfo`). A node that holds only a
//! token fetches it without verifying TLS, checks the signature for its token id with the
//! token's secret, and from then on trusts the CA it holds: someone in the middle, not
//! knowing the secret, cannot sign a kubeconfig of their own.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::apiserver::auth::rbac::bootstrap::{CLUSTER_INFO, KUBE_PUBLIC};
use crate::apiserver::objects::{Subresource, WriteOptions};
use crate::apiserver::{ApiError, ApiState};

/// The namespace of `cluster-info`.
pub const NAMESPACE: &str = KUBE_PUBLIC;
/// The ConfigMap's name.
pub const NAME: &str = CLUSTER_INFO;
/// The data key of the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Data keys of signatures: this followed by a token id.
pub const JWS_PREFIX: &str = "jws-kubeconfig-";

/// The kubeconfig `cluster-info` holds, as kubeadm writes it (client-go's serialization of a
/// config with one unnamed cluster).
pub fn kubeconfig(server: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: \"\"
contexts: null
current-context: \"\"
kind: Config
preferences: {{}}
users: null
"
    )
}

/// Writes `cluster-info` with the kubeconfig for `server` and `ca_pem`, keeping the
/// signatures it holds (the bootstrap signer redoes those of a changed kubeconfig). Runs at
/// every start of the API server, as the server's address may have changed.
pub async fn publish(state: &ApiState, server: &str, ca_pem: &str) -> Result<(), ApiError> {
    let def = state
        .registry
        .find("", "v1", "configmaps")
        .expect("configmaps are served");
    let text = kubeconfig(server, ca_pem);
    let opts = WriteOptions::default();
    for _ in 0..5 {
        match state.get(&def, Some(NAMESPACE), NAME).await {
            Err(ApiError::NotFound { .. }) => {
                let map = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": NAME, "namespace": NAMESPACE},
                    "data": {KUBECONFIG_KEY: text}});
                match state.create(&def, Some(NAMESPACE), map, &opts).await {
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    other => return other.map(drop),
                }
            }
            Err(e) => return Err(e),
            Ok(mut current) => {
                if current.pointer("/data/kubeconfig").and_then(Value::as_str) == Some(&text) {
                    return Ok(());
                }
                if !current.get("data").is_some_and(Value::is_object) {
                    current["data"] = json!({});
                }
                current["data"][KUBECONFIG_KEY] = json!(text);
                match state
                    .update(
                        &def,
                        Some(NAMESPACE),
                        NAME,
                        current,
                        Subresource::Main,
                        &opts,
                    )
                    .await
                {
                    Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => continue,
                    other => return other.map(drop),
                }
            }
        }
    }
    Err(ApiError::Internal(
        "cluster-info kept changing while it was written".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_holds_the_cluster_only() {
        let text = kubeconfig("https://10.0.0.1:6443", "PEM");
        let config = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(config.clusters.len(), 1);
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("UEVN"));
        assert!(config.auth_infos.is_empty() && config.contexts.is_empty());
    }
}
