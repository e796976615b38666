//! CSR cleaner (kube-controller-manager's `csrcleaner`): CertificateSigningRequests are
//! garbage once they are done with, as Kubernetes decides it: an issued request an hour after
//! its approval, a denied or failed one an hour after that decision, one still pending a day
//! after it was made, and an issued one whose certificate has expired. Each is looked at
//! again when its time comes rather than on an hourly sweep. Nodes renew their certificates
//! through CSRs, so without this the requests would pile up.

use crate::client::guard::guard;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;

use super::machinery::{csr, expiry};
use crate::certificates::condition::{APPROVED, DENIED, FAILED};
use crate::client::Context;

/// How long an issued request is kept after its approval.
pub const APPROVED_KEPT: Duration = Duration::from_secs(3600);
/// How long a denied or failed request is kept after that.
pub const DENIED_KEPT: Duration = Duration::from_secs(3600);
/// How long a request may wait for a decision.
pub const PENDING_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum CleanerError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the cleaner until shutdown.
pub async fn run(ctx: Context) {
    let Some(csrs) = ctx.informers.listed::<CertificateSigningRequest>().await else {
        return;
    };
    Controller::for_shared_stream(csrs.objects(), csrs.store())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(
            guard("csr_cleaner", reconcile),
            error_policy,
            Arc::new(ctx.client.clone()),
        )
        .for_each(|_| async {})
        .await;
}

fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    err: &CleanerError,
    _: Arc<kube::Client>,
) -> Action {
    tracing::warn!(csr = %csr.name_any(), error = %err, "CSR cleanup failed");
    Action::requeue(Duration::from_secs(30))
}

fn plus(at: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    at.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
}

/// When `request` becomes garbage (the earliest of the rules that apply), if ever.
pub fn deadline(request: &CertificateSigningRequest) -> Option<jiff::Timestamp> {
    let conditions = request
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let updated = |ty: &str| {
        conditions
            .iter()
            .filter(|c| c.type_ == ty)
            .filter_map(|c| c.last_update_time.as_ref().map(|t| t.0))
            .min()
    };
    let mut times = Vec::new();
    if conditions.is_empty() {
        if let Some(created) = &request.metadata.creation_timestamp {
            times.push(plus(created.0, PENDING_KEPT));
        }
    }
    for ty in [DENIED, FAILED] {
        if let Some(at) = updated(ty) {
            times.push(plus(at, DENIED_KEPT));
        }
    }
    if csr::issued(request) {
        if let Some(at) = updated(APPROVED) {
            times.push(plus(at, APPROVED_KEPT));
        }
        if let Some(expiry) = certificate_expiry(request) {
            times.push(expiry);
        }
    }
    times.into_iter().min()
}

/// When the issued certificate (the first of the PEM blocks) expires.
fn certificate_expiry(request: &CertificateSigningRequest) -> Option<jiff::Timestamp> {
    let pem = &request.status.as_ref()?.certificate.as_ref()?.0;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    jiff::Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

async fn reconcile(
    request: Arc<CertificateSigningRequest>,
    client: Arc<kube::Client>,
) -> Result<Action, CleanerError> {
    let Some(at) = deadline(&request) else {
        return Ok(Action::await_change());
    };
    let now = jiff::Timestamp::now();
    if now < at {
        return Ok(expiry::requeue_at(at, now));
    }
    let api: Api<CertificateSigningRequest> = Api::all((*client).clone());
    if expiry::delete_seen(&api, &*request).await? {
        tracing::info!(csr = %request.name_any(), "deleted a finished CertificateSigningRequest");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::ByteString;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn request(
        conditions: &[(&str, &str)],
        certificate: Option<&str>,
    ) -> CertificateSigningRequest {
        let mut r = CertificateSigningRequest::default();
        r.metadata.creation_timestamp = Some(Time(at("2030-01-01T00:00:00Z")));
        if !conditions.is_empty() || certificate.is_some() {
            r.status = Some(CertificateSigningRequestStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(ty, when)| CertificateSigningRequestCondition {
                            type_: (*ty).into(),
                            status: "True".into(),
                            last_update_time: Some(Time(at(when))),
                            ..CertificateSigningRequestCondition::default()
                        })
                        .collect(),
                ),
                certificate: certificate.map(|c| ByteString(c.as_bytes().to_vec())),
            });
        }
        r
    }

    #[test]
    fn deadlines_follow_kubernetes() {
        assert_eq!(
            deadline(&request(&[], None)),
            Some(at("2030-01-02T00:00:00Z"))
        );
        assert_eq!(
            deadline(&request(&[("Denied", "2030-01-01T05:00:00Z")], None)),
            Some(at("2030-01-01T06:00:00Z"))
        );
        assert_eq!(
            deadline(&request(
                &[
                    ("Approved", "2030-01-01T01:00:00Z"),
                    ("Failed", "2030-01-01T03:00:00Z")
                ],
                None
            )),
            Some(at("2030-01-01T04:00:00Z"))
        );
        // Approved but not issued yet: the signer's turn, kept.
        assert_eq!(
            deadline(&request(&[("Approved", "2030-01-01T01:00:00Z")], None)),
            None
        );
        // Issued: an hour after approval (an unreadable certificate has no expiry of its own).
        assert_eq!(
            deadline(&request(
                &[("Approved", "2030-01-01T01:00:00Z")],
                Some("cert")
            )),
            Some(at("2030-01-01T02:00:00Z"))
        );
    }
}
