//! Bearer tokens that are bootstrap tokens (`<id>.<secret>`), as kube-apiserver's bootstrap
//! token authenticator (`plugin/pkg/auth/authenticator/token/bootstrap`) checks them: the
//! Secret `kube-system/bootstrap-token-<id>` must exist, not be being deleted, be of type
//! `bootstrap.kubernetes.io/token`, hold the same secret (compared in constant time), not
//! have expired, and be marked `usage-bootstrap-authentication: "true"`. The user is then
//! `system:bootstrap:<id>` in `system:bootstrappers`, the token's extra groups and
//! `system:authenticated`.
//!
//! The Secret is read from the store on every request, so a deleted or expired token stops
//! working at once. What such a token may do is what RBAC grants those groups: by default
//! creating and reading CSRs (`system:node-bootstrapper`) and asking for node client
//! certificates (`...:certificatesigningrequests:nodeclient`), nothing else.

use crate::apiserver::auth::user::AUTHENTICATED;
use crate::apiserver::auth::UserInfo;
use crate::apiserver::ApiState;
use crate::bootstrap::token::{self, Token, TokenSecret};
use crate::store::keys;

/// Why a bootstrap token is refused (logged at debug level; the client sees a 401).
pub type Rejection = String;

/// Authenticates `bearer`: `Ok(None)` if it is not shaped like a bootstrap token, an error if
/// it is one that must be refused.
pub async fn authenticate(state: &ApiState, bearer: &str) -> Result<Option<UserInfo>, Rejection> {
    let Some(presented) = Token::parse(bearer) else {
        return Ok(None);
    };
    let name = presented.secret_name();
    let key = keys::SECRETS.key(Some(token::NAMESPACE), &name);
    let stored = state
        .store
        .get(&key)
        .await
        .map_err(|e| format!("reading secret {name}: {e}"))?
        .ok_or_else(|| format!("no secret {name} matches the bootstrap token"))?;
    let secret = TokenSecret::from_json(&stored);
    let Some(held) = secret.token() else {
        return Err(format!(
            "secret {name} is not a bootstrap token (wrong type, malformed or being deleted)"
        ));
    };
    if !crate::apiserver::constant_time_eq(held.secret.as_bytes(), presented.secret.as_bytes()) {
        return Err(format!("secret {name} holds another token secret"));
    }
    if secret.expired(jiff::Timestamp::now()) {
        return Err(format!("bootstrap token {} has expired", presented.id));
    }
    if !secret.usable_for(token::USAGE_AUTHENTICATION) {
        return Err(format!(
            "secret {name} is not marked {}=true",
            token::USAGE_AUTHENTICATION
        ));
    }
    let mut groups = secret
        .groups()
        .map_err(|e| format!("secret {name} has an invalid extra group {e}"))?;
    groups.push(AUTHENTICATED.to_owned());
    Ok(Some(UserInfo {
        name: format!("{}{}", token::USER_PREFIX, presented.id),
        groups,
        ..UserInfo::default()
    }))
}
