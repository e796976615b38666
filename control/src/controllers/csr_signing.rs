//! CSR signing (kube-controller-manager's `csrsigning`): the cluster CA signs approved
//! CertificateSigningRequests of the built-in signers `kubernetes.io/kube-apiserver-client`,
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving`
//! (`kubernetes.io/legacy-unknown` and other signers are left alone).
//!
//! A request that breaks its signer's rules ([`signers::check`]) gets a `Failed` condition
//! (reason `SignerValidationFailure`) instead of a certificate; one that passes gets
//! `status.certificate`, valid for its `expirationSeconds` (at least ten minutes) or at most
//! `--cluster-signing-duration`, backdated five minutes ([`authority`]). Both are written
//! through `/status`, which the API server lets only a user allowed to `sign` for the signer
//! change.
//!
//! [`authority`]: crate::certificates::authority

use crate::client::guard::guard;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;

use super::machinery::csr;
use crate::certificates::authority::{self, Authority};
use crate::certificates::condition::FAILED;
use crate::certificates::signers;
use crate::client::Context;

/// The signing policy (kube-controller-manager's `--cluster-signing-cert-file`,
/// `--cluster-signing-key-file`, `--cluster-signing-duration`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The CA that signs; `None`: nothing is signed.
    pub ca: Option<Ca>,
    /// The longest lifetime issued.
    pub duration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ca: None,
            duration: authority::DEFAULT_MAX_LIFETIME,
        }
    }
}

/// A CA certificate and key (PEM).
#[derive(Clone)]
pub struct Ca {
    /// PEM of the CA certificate.
    pub cert_pem: String,
    /// PEM of the CA key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The CA could not sign (it expired, or the key failed).
    #[error(transparent)]
    Authority(#[from] authority::AuthorityError),
}

struct State {
    client: kube::Client,
    authority: Authority,
    max: Duration,
}

/// Runs the signer until shutdown; without a CA nothing is signed.
pub async fn run(ctx: Context, config: Config) {
    let Some(ca) = config.ca else {
        tracing::info!("no cluster signing CA given: CertificateSigningRequests are not signed");
        return;
    };
    let authority = match Authority::from_pem(&ca.cert_pem, &ca.key_pem) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the cluster signing CA: CSRs are not signed");
            return;
        }
    };
    let Some(csrs) = ctx.informers.listed::<CertificateSigningRequest>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        authority,
        max: config.duration,
    });
    Controller::for_shared_stream(csrs.objects(), csrs.store())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("csr_signing", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(csr: Arc<CertificateSigningRequest>, err: &SigningError, _: Arc<State>) -> Action {
    tracing::warn!(csr = %csr.name_any(), error = %err, "signing failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, SigningError> {
    let signer = csr.spec.signer_name.as_str();
    let pending = csr::approved(&csr) && !csr::failed(&csr) && !csr::issued(&csr);
    if !pending || !signers::SIGNED_HERE.contains(&signer) {
        return Ok(Action::await_change());
    }
    let request = match csr::parsed(&csr) {
        Ok(r) => r,
        Err(e) => {
            // The API server checked it on create: only a store edited by hand gets here.
            tracing::warn!(csr = %csr.name_any(), error = %e, "unreadable request: not signed");
            return Ok(Action::await_change());
        }
    };
    let spec = &csr.spec;
    let usages = spec.usages.clone().unwrap_or_default();
    let mut updated = (*csr).clone();
    match signers::check(signer, &request, &usages) {
        Ok(false) => return Ok(Action::await_change()),
        Err(rule) => {
            tracing::info!(csr = %csr.name_any(), reason = %rule, "refusing to sign");
            csr::add_condition(
                &mut updated,
                csr::condition(FAILED, "SignerValidationFailure", &rule.to_string()),
            );
        }
        Ok(true) => {
            let lifetime = authority::lifetime(spec.expiration_seconds.map(i64::from), state.max);
            let pem = state.authority.issue(
                &request,
                &usages,
                lifetime,
                time::OffsetDateTime::now_utc(),
            )?;
            updated
                .status
                .get_or_insert_with(Default::default)
                .certificate = Some(ByteString(pem.into_bytes()));
            tracing::info!(csr = %csr.name_any(), signer, "issued a certificate");
        }
    }
    let api: Api<CertificateSigningRequest> = Api::all(state.client.clone());
    match api
        .replace_status(&csr.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Changed meanwhile (or gone): the watch brings the new state back here.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
