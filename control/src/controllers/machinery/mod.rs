//! What the controllers share that is not itself a controller: ownerReferences and adoption
//! ([`ownership`], [`claim`]), pod creation and deletion with their bookkeeping
//! ([`pod_control`]), status writes ([`status`]), what the CSR controllers read of a
//! CertificateSigningRequest ([`csr`]), the bootstrap token Secrets ([`tokens`]) and the
//! handling of objects that expire ([`expiry`]). Controllers use it; it uses the client
//! layer ([`crate::client`]) and never a controller, so it can sit below all of them.
//!
//! It lives under `controllers/` rather than beside `client/` because only controllers use it
//! (the scheduler does not), and `pub(crate)` keeps it from becoming API.

pub(crate) mod claim;
pub(crate) mod csr;
pub(crate) mod expiry;
pub(crate) mod ownership;
pub(crate) mod pod_control;
pub(crate) mod status;
pub(crate) mod tokens;
