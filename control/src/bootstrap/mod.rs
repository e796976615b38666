//! Joining nodes the kubeadm way, without I/O of its own:
//!
//! - [`token`]: bootstrap tokens, `<id>.<secret>` bearer tokens kept as Secrets of type
//!   `bootstrap.kubernetes.io/token` named `bootstrap-token-<id>` in `kube-system`, which
//!   authenticate as `system:bootstrap:<id>` in `system:bootstrappers` until they expire
//!   (the authenticator is `apiserver/auth/bootstrap_token.rs`, the cleaner of expired ones
//!   `controllers/token_cleaner.rs`, `skiff-control token` makes them);
//! - [`jws`]: detached JWS signatures (HS256 keyed by a token's secret), how a node that
//!   holds only a token learns to trust the cluster CA;
//! - [`cluster_info`]: the `cluster-info` ConfigMap in `kube-public` (the API server's address
//!   and CA) that anyone may read and the bootstrap signer (`controllers/bootstrap_signer.rs`)
//!   signs for every signing token.

pub mod cluster_info;
pub mod jws;
pub mod token;
