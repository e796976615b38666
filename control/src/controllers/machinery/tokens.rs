//! The bootstrap token Secrets the token cleaner and the bootstrap signer both follow: one
//! shared informer of `kube-system` Secrets of type `bootstrap.kubernetes.io/token`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;

use crate::bootstrap::token::{self, TokenSecret};
use crate::client::informers::Informer;
use crate::client::Context;

/// The bootstrap token Secrets of `kube-system`.
pub(crate) fn token_secrets(ctx: &Context) -> Arc<Informer<Secret>> {
    let config = watcher::Config::default().fields(&format!("type={}", token::SECRET_TYPE));
    ctx.informers
        .get_namespaced_with::<Secret>(token::NAMESPACE, config)
}

/// A typed Secret as [`TokenSecret`] reads it.
pub(crate) fn token_secret(secret: &Secret) -> TokenSecret {
    TokenSecret::from_json(&serde_json::to_value(secret).unwrap_or_default())
}
