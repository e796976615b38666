//! Authentication and authorization: who is asking, and may they.
//!
//! Kubernetes runs every request through a fixed chain of filters before any handler sees it,
//! and skiff follows the same order:
//!
//! 1. **TLS**, which may carry a client certificate.
//! 2. **Authentication** (the `authenticate` middleware in `apiserver/mod.rs`): credentials
//!    become a [`UserInfo`] put into the request's extensions as `Arc<UserInfo>`. Today the
//!    admin token is [`UserInfo::admin`] (`kubernetes-admin` in `system:masters`); a request
//!    without one reaches only the public paths, as [`UserInfo::anonymous`]. Wrong
//!    credentials are a 401 Status.
//! 3. **Impersonation** (`Impersonate-User` and friends, [`impersonation`]), each part
//!    itself authorized; the request then runs as the impersonated user.
//! 4. **Request attributes**: [`request_info::resolve`] derives verb, resource, namespace and
//!    name from the method and URL alone, so every route is authorized alike and a refusal
//!    comes before routing (a 403 before a 404), as in Kubernetes.
//! 5. **Authorization**: [`Authorizer::authorize`] (`system:masters`, then the
//!    `--authorization-mode` chain; RBAC decides from an in-memory [`rbac::RbacIndex`] kept
//!    current by a store watch). A denial is a 403 Status built by
//!    [`forbidden`](crate::apiserver::error::forbidden) with Kubernetes' exact wording.
//! 6. Admission, validation and storage in the handlers, where RBAC writes are also checked for
//!    privilege escalation ([`rbac::rules::covers`]).
//!
//! Steps 3 and 5 are not wired into the router yet: this module is the pure core they will use.
//! `ApiState::authorizer` already holds the chain (RBAC, kube-apiserver's usual mode, until
//! `--authorization-mode` is parsed with [`Mode::parse_list`] and handed to `ApiState`), over
//! an [`rbac::RbacIndex`] that starts following the store on its first decision. An `authorize`
//! middleware placed inside `authenticate` will resolve the [`RequestInfo`], ask the authorizer
//! and refuse with `forbidden(user, info, reason)`; RBAC writes will wait with
//! `authorizer.index().wait_for(revision)` until they are visible.

pub mod authorizer;
pub mod bootstrap_token;
pub mod go_format;
pub mod impersonation;
pub mod node;
pub mod rbac;
pub mod request_info;
pub mod service_account;
pub mod user;
pub mod x509;

pub use authorizer::{Authorizer, Decision, Mode, ModeError, RulesReview};
pub use request_info::{resolve, RequestInfo};
pub use user::UserInfo;

use std::sync::Arc;

tokio::task_local! {
    /// The user of the request being served, for the code deep in a write that must know it
    /// (the RBAC escalation check), as Kubernetes carries it in the request context.
    static REQUEST_USER: Arc<UserInfo>;
}

/// Runs `f` (a request's handling) as `user`.
pub async fn with_user<F: std::future::Future>(user: Arc<UserInfo>, f: F) -> F::Output {
    REQUEST_USER.scope(user, f).await
}

/// The user of the request this task serves; `None` for skiff's own writes (start-up objects,
/// in-process loops), which are not subject to a user's limits.
pub fn current_user() -> Option<Arc<UserInfo>> {
    REQUEST_USER.try_with(Arc::clone).ok()
}
