//! X.509 certificates through the CSR API (`certificates.k8s.io/v1`), the rules Kubernetes
//! keeps in `pkg/apis/certificates` and `pkg/controller/certificates`, without I/O:
//!
//! - [`request`]: a PEM `CERTIFICATE REQUEST` read and its signature checked (what the API
//!   server validates on create, and what every signer and approver reads);
//! - [`usages`]: the key usages a CSR may name and what they mean in a certificate;
//! - [`signers`]: the built-in `kubernetes.io/*` signer names and what each accepts (the
//!   kubelet client and serving rules);
//! - [`authority`]: the cluster CA issuing a certificate for a request, with Kubernetes'
//!   backdating and lifetime rules.
//!
//! The API kind is `apiserver/kinds/certificates.rs`; the signing and approving controllers are
//! `controllers/csr_signing.rs` and `controllers/csr_approving.rs`.

pub mod authority;
pub mod request;
pub mod signers;
pub mod usages;

/// The API group of CertificateSigningRequests (and of the `signers` pseudo-resource the
/// approve and sign permissions name).
pub const GROUP: &str = "certificates.k8s.io";

/// A CSR's condition types (`status.conditions[].type`).
pub mod condition {
    /// Approved by someone allowed to `approve` for its signer.
    pub const APPROVED: &str = "Approved";
    /// Denied: never to be signed.
    pub const DENIED: &str = "Denied";
    /// The signer refused it (its request breaks the signer's rules).
    pub const FAILED: &str = "Failed";
}
