//! kube-apiserver's certificates admission plugins (`plugin/pkg/admission/certificates`):
//!
//! - **CertificateApproval**: writing `certificatesigningrequests/approval` (approving *or*
//!   denying) needs the verb `approve` on the resource `signers` of `certificates.k8s.io`,
//!   named after the CSR's signer or its domain with `/*` (`kubernetes.io/*`);
//! - **CertificateSigning**: changing `status.certificate` through `/status` needs `sign` on
//!   the signer alike;
//! - **CertificateSubjectRestriction**: no CSR for `kubernetes.io/kube-apiserver-client`
//!   with the group `system:masters` in its subject, since approving it by mistake would hand
//!   out an identity no RBAC can limit. Kubernetes enables it by default and so does skiff;
//!   it is the one of the three that `--disable-admission-plugins` can turn off.
//!
//! Writes skiff makes itself carry no user and are not checked.

use serde_json::Value;

use crate::apiserver::auth::go_format::quote;
use crate::apiserver::auth::{current_user, RequestInfo, UserInfo};
use crate::apiserver::{ApiError, ApiState};
use crate::certificates::{request, signers, GROUP};

/// The resource the errors name.
const RESOURCE: &str = "certificatesigningrequests";
/// The masters group a kube-apiserver-client CSR may not ask for.
const MASTERS: &str = "system:masters";

fn signer_request(verb: &str, name: &str) -> RequestInfo {
    RequestInfo {
        is_resource_request: true,
        verb: verb.into(),
        api_prefix: "apis".into(),
        api_group: GROUP.into(),
        api_version: "*".into(),
        resource: "signers".into(),
        name: name.into(),
        ..RequestInfo::default()
    }
}

/// Whether `user` may `verb` for `signer`: on its exact name, or on `<domain>/*`
/// (Kubernetes' `IsAuthorizedForSignerName`).
pub fn authorized_for_signer(state: &ApiState, user: &UserInfo, verb: &str, signer: &str) -> bool {
    if state
        .authorizer
        .decide(user, &signer_request(verb, signer))
        .allowed
    {
        return true;
    }
    let domain = signer.split('/').next().unwrap_or_default();
    state
        .authorizer
        .decide(user, &signer_request(verb, &format!("{domain}/*")))
        .allowed
}

fn signer_name(csr: &Value) -> &str {
    csr.pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn csr_name(csr: &Value) -> String {
    csr.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn denied(csr: &Value, message: String) -> ApiError {
    ApiError::Denied {
        group: GROUP.into(),
        resource: RESOURCE.into(),
        name: csr_name(csr),
        message,
    }
}

/// CertificateApproval: the request's user must be allowed to approve for the signer.
pub fn check_approval(state: &ApiState, csr: &Value) -> Result<(), ApiError> {
    check(state, csr, "approve")
}

/// CertificateSigning: the request's user must be allowed to sign for the signer.
pub fn check_signing(state: &ApiState, csr: &Value) -> Result<(), ApiError> {
    check(state, csr, "sign")
}

fn check(state: &ApiState, csr: &Value, verb: &str) -> Result<(), ApiError> {
    let Some(user) = current_user() else {
        return Ok(());
    };
    let signer = signer_name(csr);
    if authorized_for_signer(state, &user, verb, signer) {
        return Ok(());
    }
    Err(denied(
        csr,
        format!(
            "user not permitted to {verb} requests with signerName {}",
            quote(signer)
        ),
    ))
}

/// CertificateSubjectRestriction, on create.
pub fn restrict_subject(state: &ApiState, csr: &Value) -> Result<(), ApiError> {
    if !state.admission.certificate_subject_restriction() {
        return Ok(());
    }
    let signer = signer_name(csr);
    if signer != signers::KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    // An unreadable request is refused by validation, which comes later with its causes.
    let Some(parsed) = request_bytes(csr).and_then(|b| request::parse(&b).ok()) else {
        return Ok(());
    };
    if parsed.organizations.iter().any(|o| o == MASTERS) {
        return Err(denied(
            csr,
            format!("use of {signer} signer with {MASTERS} group is not allowed"),
        ));
    }
    Ok(())
}

/// The decoded `spec.request` (base64 in JSON).
pub fn request_bytes(csr: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = csr.pointer("/spec/request").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
