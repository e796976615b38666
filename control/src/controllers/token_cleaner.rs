//! Token cleaner (kube-controller-manager's `tokencleaner`): bootstrap token Secrets in
//! `kube-system` are deleted once they expire (an unreadable expiry counts as expired), each
//! looked at again at the moment it expires. The authenticator refuses an expired token even
//! before it is gone; deleting it also takes its signature out of `cluster-info`.

use crate::client::guard::guard;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;

use super::machinery::expiry;
use super::machinery::tokens::{token_secret, token_secrets};
use crate::bootstrap::token;
use crate::client::Context;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum TokenCleanerError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the cleaner until shutdown.
pub async fn run(ctx: Context) {
    let secrets = token_secrets(&ctx);
    secrets.listed().await;
    Controller::for_shared_stream(secrets.objects(), secrets.store())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(
            guard("token_cleaner", reconcile),
            error_policy,
            Arc::new(ctx.client.clone()),
        )
        .for_each(|_| async {})
        .await;
}

fn error_policy(secret: Arc<Secret>, err: &TokenCleanerError, _: Arc<kube::Client>) -> Action {
    tracing::warn!(secret = %secret.name_any(), error = %err, "token cleanup failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    secret: Arc<Secret>,
    client: Arc<kube::Client>,
) -> Result<Action, TokenCleanerError> {
    if secret.type_.as_deref() != Some(token::SECRET_TYPE)
        || secret.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let parsed = token_secret(&secret);
    let now = jiff::Timestamp::now();
    if !parsed.expired(now) {
        return Ok(match parsed.expiration() {
            Ok(Some(at)) => expiry::requeue_at(at, now),
            _ => Action::await_change(),
        });
    }
    let api: Api<Secret> = Api::namespaced((*client).clone(), token::NAMESPACE);
    if expiry::delete_seen(&api, &*secret).await? {
        tracing::info!(secret = %secret.name_any(), "deleted an expired bootstrap token");
    }
    Ok(Action::await_change())
}
