//! The built-in `kubernetes.io/*` signers and what each accepts, as kube-controller-manager's
//! `csrsigning` controller and `pkg/apis/certificates/v1/helpers.go` decide:
//!
//! - `kube-apiserver-client`: client certificates for any subject, usages limited to client
//!   auth (with digital signature and key encipherment optional). Approval is the gate: who
//!   may approve for this signer decides who gets what identity;
//! - `kube-apiserver-client-kubelet`: a node's client certificate: CN `system:node:<name>`,
//!   O exactly `system:nodes`, no subject alternative names, usages digital signature and
//!   client auth (key encipherment too, for RSA keys);
//! - `kubelet-serving`: a node's serving certificate: the same subject, at least one DNS or
//!   IP name and nothing else, usages digital signature and server auth (key encipherment
//!   optional);
//! - `legacy-unknown`: never signed here.
//!
//! A request that breaks its signer's rules is not signed but marked `Failed` with the
//! reason. skiff adds one rule of its own to all three: a subject with several CommonNames is
//! refused, since readers disagree on which one is the user (Go takes the last, skiff's
//! authenticator the first).

use std::collections::BTreeSet;

use super::request::CertificateRequest;

/// Client certificates for the API server, any subject.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Client certificates of nodes (`system:node:<name>` in `system:nodes`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Serving certificates of the kubelet API.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The signer of CSRs made before signer names existed; refused on create in v1.
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// The signers skiff's CA signs for.
pub const SIGNED_HERE: [&str; 3] = [
    KUBE_APISERVER_CLIENT,
    KUBE_APISERVER_CLIENT_KUBELET,
    KUBELET_SERVING,
];

/// The user name prefix of nodes.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group of nodes.
pub const NODES_GROUP: &str = "system:nodes";

/// Why a request breaks its signer's rules (the `Failed` condition's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A node certificate's Organization must be exactly `system:nodes`.
    #[error("subject organization is not system:nodes")]
    OrganizationNotNodes,
    /// A node certificate's CommonName must be `system:node:<name>`.
    #[error("subject common name does not begin with system:node:")]
    CommonNameNotNode,
    /// A serving certificate needs a name to serve.
    #[error("DNS or IP subjectAltName is required")]
    NoDnsOrIp,
    /// Not allowed for this signer.
    #[error("DNS subjectAltNames are not allowed")]
    DnsNotAllowed,
    /// Not allowed for this signer.
    #[error("Email subjectAltNames are not allowed")]
    EmailNotAllowed,
    /// Not allowed for this signer.
    #[error("IP subjectAltNames are not allowed")]
    IpNotAllowed,
    /// Not allowed for this signer.
    #[error("URI subjectAltNames are not allowed")]
    UriNotAllowed,
    /// A node certificate's usages are fixed.
    #[error("usages did not match [{}]", .0.join(" "))]
    UsagesMismatch(Vec<&'static str>),
    /// A usage a client certificate cannot have.
    #[error("invalid usage for client certificate: {0}")]
    InvalidClientUsage(String),
    /// A client certificate without client auth.
    #[error("missing required usage for client certificate: client auth")]
    MissingClientAuth,
    /// Several CommonNames: which one is the user depends on who reads it.
    #[error("subject has more than one common name")]
    SeveralCommonNames,
}

fn usage_set(usages: &[String]) -> BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

/// Whether `usages` is exactly `required`, or `required` without key encipherment (which only
/// an RSA key uses).
fn usages_match(usages: &[String], required: [&'static str; 3]) -> Result<(), RuleError> {
    let have = usage_set(usages);
    let full: BTreeSet<&str> = required.into_iter().collect();
    let without: BTreeSet<&str> = required
        .into_iter()
        .filter(|u| *u != "key encipherment")
        .collect();
    if have == full || have == without {
        Ok(())
    } else {
        Err(RuleError::UsagesMismatch(full.into_iter().collect()))
    }
}

fn node_subject(request: &CertificateRequest) -> Result<(), RuleError> {
    if request.organizations != [NODES_GROUP] {
        return Err(RuleError::OrganizationNotNodes);
    }
    Ok(())
}

fn node_common_name(request: &CertificateRequest) -> Result<(), RuleError> {
    if !request.common_name().starts_with(NODE_USER_PREFIX) {
        return Err(RuleError::CommonNameNotNode);
    }
    Ok(())
}

/// The `kube-apiserver-client-kubelet` rules (Kubernetes' `ValidateKubeletClientCSR`).
pub fn validate_kubelet_client(
    request: &CertificateRequest,
    usages: &[String],
) -> Result<(), RuleError> {
    node_subject(request)?;
    if !request.dns_names.is_empty() {
        return Err(RuleError::DnsNotAllowed);
    }
    if !request.email_addresses.is_empty() {
        return Err(RuleError::EmailNotAllowed);
    }
    if !request.ip_addresses.is_empty() {
        return Err(RuleError::IpNotAllowed);
    }
    if !request.uris.is_empty() {
        return Err(RuleError::UriNotAllowed);
    }
    node_common_name(request)?;
    usages_match(
        usages,
        ["client auth", "digital signature", "key encipherment"],
    )
}

/// The `kubelet-serving` rules (Kubernetes' `ValidateKubeletServingCSR`).
pub fn validate_kubelet_serving(
    request: &CertificateRequest,
    usages: &[String],
) -> Result<(), RuleError> {
    node_subject(request)?;
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(RuleError::NoDnsOrIp);
    }
    if !request.email_addresses.is_empty() {
        return Err(RuleError::EmailNotAllowed);
    }
    if !request.uris.is_empty() {
        return Err(RuleError::UriNotAllowed);
    }
    usages_match(
        usages,
        ["digital signature", "key encipherment", "server auth"],
    )?;
    node_common_name(request)
}

/// The `kube-apiserver-client` usage rule: client auth, optionally digital signature and key
/// encipherment, nothing else.
pub fn validate_apiserver_client_usages(usages: &[String]) -> Result<(), RuleError> {
    let mut client_auth = false;
    for usage in usages {
        match usage.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(RuleError::InvalidClientUsage(other.to_owned())),
        }
    }
    if client_auth {
        Ok(())
    } else {
        Err(RuleError::MissingClientAuth)
    }
}

/// Whether the CA signs `request` for `signer`: `Ok(false)` for a signer it does not sign
/// for (left alone), an error for a request its signer must refuse.
pub fn check(
    signer: &str,
    request: &CertificateRequest,
    usages: &[String],
) -> Result<bool, RuleError> {
    if !SIGNED_HERE.contains(&signer) {
        return Ok(false);
    }
    if request.common_names.len() > 1 {
        return Err(RuleError::SeveralCommonNames);
    }
    match signer {
        KUBE_APISERVER_CLIENT => validate_apiserver_client_usages(usages)?,
        KUBE_APISERVER_CLIENT_KUBELET => validate_kubelet_client(request, usages)?,
        _ => validate_kubelet_serving(request, usages)?,
    }
    Ok(true)
}

/// The node a certificate subject names (`system:node:<name>`), if it names one.
pub fn node_name(common_name: &str) -> Option<&str> {
    common_name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::{parse, testing::csr};

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> CertificateRequest {
        parse(csr(cn, orgs, sans).0.as_bytes()).unwrap()
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn kubelet_client_certificates_are_for_nodes_only() {
        let ok = request("system:node:n1", &[NODES_GROUP], &[]);
        let client = usages(&["digital signature", "client auth"]);
        assert_eq!(check(KUBE_APISERVER_CLIENT_KUBELET, &ok, &client), Ok(true));
        let rsa = usages(&["key encipherment", "digital signature", "client auth"]);
        assert_eq!(check(KUBE_APISERVER_CLIENT_KUBELET, &ok, &rsa), Ok(true));
        let cases = [
            (
                request("system:node:n1", &["system:masters"], &[]),
                RuleError::OrganizationNotNodes,
            ),
            (
                request("system:node:n1", &[NODES_GROUP, "system:masters"], &[]),
                RuleError::OrganizationNotNodes,
            ),
            (
                request("system:node:n1", &[NODES_GROUP], &["10.0.0.1"]),
                RuleError::IpNotAllowed,
            ),
            (
                request("system:node:n1", &[NODES_GROUP], &["n1"]),
                RuleError::DnsNotAllowed,
            ),
            (
                request("alice", &[NODES_GROUP], &[]),
                RuleError::CommonNameNotNode,
            ),
        ];
        for (req, err) in cases {
            assert_eq!(
                check(KUBE_APISERVER_CLIENT_KUBELET, &req, &client),
                Err(err)
            );
        }
        assert_eq!(
            check(
                KUBE_APISERVER_CLIENT_KUBELET,
                &ok,
                &usages(&["client auth", "server auth"])
            )
            .unwrap_err()
            .to_string(),
            "usages did not match [client auth digital signature key encipherment]"
        );
    }

    #[test]
    fn kubelet_serving_certificates_name_what_they_serve() {
        let serving = usages(&["digital signature", "server auth"]);
        let ok = request("system:node:n1", &[NODES_GROUP], &["10.0.0.1", "n1"]);
        assert_eq!(check(KUBELET_SERVING, &ok, &serving), Ok(true));
        let bare = request("system:node:n1", &[NODES_GROUP], &[]);
        assert_eq!(
            check(KUBELET_SERVING, &bare, &serving),
            Err(RuleError::NoDnsOrIp)
        );
        assert_eq!(
            check(
                KUBELET_SERVING,
                &ok,
                &usages(&["digital signature", "client auth"])
            )
            .unwrap_err()
            .to_string(),
            "usages did not match [digital signature key encipherment server auth]"
        );
    }

    #[test]
    fn api_server_client_certificates_take_any_subject_but_only_client_usages() {
        let admin = request("kubernetes-admin", &["system:masters"], &[]);
        assert_eq!(
            check(KUBE_APISERVER_CLIENT, &admin, &usages(&["client auth"])),
            Ok(true)
        );
        assert_eq!(
            check(
                KUBE_APISERVER_CLIENT,
                &admin,
                &usages(&["client auth", "server auth"])
            ),
            Err(RuleError::InvalidClientUsage("server auth".into()))
        );
        assert_eq!(
            check(
                KUBE_APISERVER_CLIENT,
                &admin,
                &usages(&["digital signature"])
            ),
            Err(RuleError::MissingClientAuth)
        );
    }

    #[test]
    fn other_signers_are_left_alone() {
        let r = request("x", &[], &[]);
        let u = usages(&["client auth"]);
        assert_eq!(check(LEGACY_UNKNOWN, &r, &u), Ok(false));
        assert_eq!(check("example.com/mine", &r, &u), Ok(false));
        assert_eq!(node_name("system:node:n1"), Some("n1"));
        assert_eq!(node_name("system:node:"), None);
        assert_eq!(node_name("alice"), None);
    }
}
