//! Bootstrap signer (kube-controller-manager's `bootstrapsigner`): `cluster-info` in
//! `kube-public` holds one `jws-kubeconfig-<token id>` per bootstrap token that is valid, not
//! expired and marked `usage-bootstrap-signing: "true"`: a detached JWS of exactly its
//! `kubeconfig` text keyed by the token's secret ([`jws`]). Signatures of tokens that are gone
//! or expired are removed, and all are redone when the kubeconfig changes. Nothing is signed
//! while `cluster-info` has no kubeconfig.
//!
//! [`jws`]: crate::bootstrap::jws

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::machinery::expiry;
use super::machinery::tokens::{token_secret, token_secrets};
use crate::bootstrap::cluster_info::{JWS_PREFIX, KUBECONFIG_KEY, NAME, NAMESPACE};
use crate::bootstrap::{jws, token};
use crate::client::Context;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapSignerError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct State {
    client: kube::Client,
    secrets: Store<Secret>,
}

/// Runs the signer until shutdown.
pub async fn run(ctx: Context) {
    let secrets = token_secrets(&ctx);
    let maps = ctx.informers.get_namespaced_with::<ConfigMap>(
        NAMESPACE,
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
    );
    secrets.listed().await;
    maps.listed().await;
    let state = Arc::new(State {
        client: ctx.client.clone(),
        secrets: secrets.store(),
    });
    Controller::for_shared_stream(maps.objects(), maps.store())
        .watches_shared_stream(secrets.objects(), |_| {
            Some(ObjectRef::new(NAME).within(NAMESPACE))
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("bootstrap_signer", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_: Arc<ConfigMap>, err: &BootstrapSignerError, _: Arc<State>) -> Action {
    tracing::warn!(error = %err, "signing cluster-info failed");
    Action::requeue(Duration::from_secs(5))
}

/// The signatures `content` should carry, by data key, and when the first of their tokens
/// expires.
fn signatures(
    content: &str,
    secrets: &[Arc<Secret>],
    now: jiff::Timestamp,
) -> (BTreeMap<String, String>, Option<jiff::Timestamp>) {
    let mut out = BTreeMap::new();
    let mut first_expiry: Option<jiff::Timestamp> = None;
    for secret in secrets {
        let parsed = token_secret(secret);
        let Some(token) = parsed.token() else {
            continue;
        };
        if !parsed.usable_for(token::USAGE_SIGNING) || parsed.expired(now) {
            continue;
        }
        if let Ok(Some(at)) = parsed.expiration() {
            first_expiry = Some(first_expiry.map_or(at, |f| f.min(at)));
        }
        out.insert(
            format!("{JWS_PREFIX}{}", token.id),
            jws::detached_signature(content, &token.id, &token.secret),
        );
    }
    (out, first_expiry)
}

async fn reconcile(map: Arc<ConfigMap>, state: Arc<State>) -> Result<Action, BootstrapSignerError> {
    let data = map.data.clone().unwrap_or_default();
    let Some(content) = data.get(KUBECONFIG_KEY) else {
        return Ok(Action::await_change());
    };
    let now = jiff::Timestamp::now();
    let (wanted, first_expiry) = signatures(content, &state.secrets.state(), now);
    let mut updated: BTreeMap<String, String> = data
        .iter()
        .filter(|(k, _)| !k.starts_with(JWS_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    updated.extend(wanted);
    // Looked at again when the first signing token expires, to drop its signature.
    let next = first_expiry.map_or_else(Action::await_change, |at| expiry::requeue_at(at, now));
    if updated == data {
        return Ok(next);
    }
    let mut new = (*map).clone();
    new.data = Some(updated);
    let api: Api<ConfigMap> = Api::namespaced(state.client.clone(), NAMESPACE);
    match api.replace(NAME, &PostParams::default(), &new).await {
        Ok(_) => Ok(next),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::token::{Options, Token};

    fn secret_for(token: &Token, signing: bool, expiration: Option<&str>) -> Arc<Secret> {
        let value = token::secret(
            token,
            &Options {
                signing,
                expiration: expiration.map(|e| e.parse().unwrap()),
                ..Options::default()
            },
        );
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn only_valid_signing_tokens_sign() {
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let a = Token::parse("aaaaaa.0123456789abcdef").unwrap();
        let b = Token::parse("bbbbbb.0123456789abcdef").unwrap();
        let c = Token::parse("cccccc.0123456789abcdef").unwrap();
        let d = Token::parse("dddddd.0123456789abcdef").unwrap();
        let secrets = [
            secret_for(&a, true, None),
            secret_for(&b, false, None),
            secret_for(&c, true, Some("2029-01-01T00:00:00Z")),
            secret_for(&d, true, Some("2031-01-01T00:00:00Z")),
        ];
        let (sigs, first) = signatures("cfg", &secrets, now);
        let keys: Vec<&str> = sigs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["jws-kubeconfig-aaaaaa", "jws-kubeconfig-dddddd"]);
        assert!(jws::verify(
            "cfg",
            &sigs["jws-kubeconfig-aaaaaa"],
            &a.id,
            &a.secret
        ));
        assert_eq!(first, Some("2031-01-01T00:00:00Z".parse().unwrap()));
    }
}
