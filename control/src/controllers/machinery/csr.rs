//! What the CSR signing and approving controllers both read of a CertificateSigningRequest
//! (client-go's `certificates` helpers): its decision, whether it is done, its request.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::certificates::condition::{APPROVED, DENIED, FAILED};
use crate::certificates::request::{self, CertificateRequest, RequestError};

fn has(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// Approved and not denied (`IsCertificateRequestApproved`).
pub(crate) fn approved(csr: &CertificateSigningRequest) -> bool {
    has(csr, APPROVED) && !has(csr, DENIED)
}

/// Approved or denied: decided either way.
pub(crate) fn decided(csr: &CertificateSigningRequest) -> bool {
    has(csr, APPROVED) || has(csr, DENIED)
}

/// Its signer refused it.
pub(crate) fn failed(csr: &CertificateSigningRequest) -> bool {
    has(csr, FAILED)
}

/// It has its certificate.
pub(crate) fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// The request it carries, parsed and checked.
pub(crate) fn parsed(csr: &CertificateSigningRequest) -> Result<CertificateRequest, RequestError> {
    request::parse(&csr.spec.request.0)
}

/// A true condition of `ty` written now.
pub(crate) fn condition(
    ty: &str,
    reason: &str,
    message: &str,
) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(jiff::Timestamp::now())),
        ..CertificateSigningRequestCondition::default()
    }
}

/// Appends `condition` to the CSR's conditions.
pub(crate) fn add_condition(
    csr: &mut CertificateSigningRequest,
    condition: CertificateSigningRequestCondition,
) {
    csr.status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}
