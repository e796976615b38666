//! ServiceAccount tokens, as Kubernetes issues and checks them:
//!
//! - [`signer`]: the ES256 key (`pki/sa.key`) that signs tokens, and its public half;
//! - [`claims`]: what a token says (issuer, subject, audiences, lifetime, the account and the
//!   pod, Secret or Node it is bound to);
//! - [`token_request`]: `serviceaccounts/{name}/token` (`kubectl create token`, and the agent
//!   asking for the tokens it projects into pods);
//! - [`authenticator`]: a bearer token that is one of these becomes the user
//!   `system:serviceaccount:<ns>:<name>`, while its account and bound object still exist;
//! - [`discovery`]: the OIDC discovery document and JWKS for verifiers outside the cluster.

pub mod authenticator;
pub mod claims;
pub mod discovery;
pub mod signer;
pub mod token_request;

pub use authenticator::{authenticate, Authenticated};
pub use signer::{SignerConfig, TokenSigner};
