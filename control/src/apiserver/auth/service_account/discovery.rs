//! ServiceAccount issuer discovery (OIDC): the discovery document and the public keys, so
//! another system can verify this cluster's ServiceAccount tokens (KEP-1393). Kubernetes lets
//! every ServiceAccount read them (`system:service-account-issuer-discovery`); others need a
//! binding, so anonymous callers are refused unless an admin grants it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

use crate::apiserver::ApiState;

/// The discovery document's path.
pub const CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// The key set's path.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// Both documents change only with the key, so caches may keep them for an hour, as
/// kube-apiserver allows.
const CACHE: &str = "public, max-age=3600";

/// `GET /.well-known/openid-configuration`.
pub async fn configuration(State(state): State<Arc<ApiState>>) -> Response {
    let body = state.tokens.openid_configuration().to_string();
    (
        [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, CACHE)],
        body,
    )
        .into_response()
}

/// `GET /openid/v1/jwks`.
pub async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    let body = state.tokens.jwks().to_string();
    (
        [
            (CONTENT_TYPE, "application/jwk-set+json"),
            (CACHE_CONTROL, CACHE),
        ],
        body,
    )
        .into_response()
}
