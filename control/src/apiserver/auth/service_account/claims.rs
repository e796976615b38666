//! The claims of a ServiceAccount token, as Kubernetes writes them (`pkg/serviceaccount/claims.go`):
//! the registered JWT claims plus a private `kubernetes.io` claim naming the account and the
//! object the token is bound to.

use serde::{Deserialize, Serialize};

/// A ServiceAccount token's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer (`--service-account-issuer`).
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// The audiences the token is meant for.
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// A unique id of this token (`credential-id` in the user's extra).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// What the token stands for.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Private {
    /// The account's namespace.
    pub namespace: String,
    /// The account.
    pub serviceaccount: Ref,
    /// The pod the token is bound to: it stops working when that pod is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    /// The Node the token is bound to, or the node of the bound pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// An object by name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ref {
    /// Its name.
    pub name: String,
    /// Its uid: a recreated object of the same name is another object.
    pub uid: String,
}
