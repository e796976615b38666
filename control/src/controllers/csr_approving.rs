//! CSR approving (kube-controller-manager's `csrapproving`): node client certificates are
//! approved without an admin when the requester may have them, decided as Kubernetes does by
//! a SubjectAccessReview through the API for the user recorded in the CSR (`spec.username`,
//! `uid`, `groups`, `extra`):
//!
//! - a node renewing its own client certificate (`kube-apiserver-client-kubelet`, the
//!   kubelet client rules met, CN = the requester) needs `create` on
//!   `certificatesigningrequests/selfnodeclient` (granted to `system:nodes`);
//! - anyone asking for a node client certificate (a bootstrap token joining a node) needs
//!   `create` on `certificatesigningrequests/nodeclient` (granted to `system:bootstrappers`).
//!
//! The condition is `Approved`, reason `AutoApproved`, with Kubernetes' messages. Requests the
//! review refuses stay pending for an admin (`kubectl certificate approve|deny`) and are
//! looked at again every half minute, as RBAC may change.
//!
//! Kubernetes never approves `kubelet-serving` requests by itself. skiff does, with
//! `--approve-kubelet-serving` (on by default), because its agents need serving certificates
//! for the kubelet API with no admin around, under a narrow rule: the requester is the node
//! itself (`spec.username` = CN = `system:node:<name>`, in `system:nodes`), the kubelet
//! serving rules are met, and every DNS and IP name is an address the Node object reports
//! (`status.addresses`) or its `kubernetes.io/hostname` label. A node can thus get a
//! certificate only for names it already claims, never for another node's or the API
//! server's. Turn it off to approve serving certificates by hand or with another approver.

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use super::machinery::csr;
use crate::certificates::condition::APPROVED;
use crate::certificates::request::CertificateRequest;
use crate::certificates::{signers, GROUP};
use crate::client::Context;

/// The approver's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Approve a node's serving certificate for the names its Node reports (skiff's own
    /// policy; see the module documentation).
    pub approve_kubelet_serving: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            approve_kubelet_serving: true,
        }
    }
}

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ApprovingError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// How often a pending request the approver recognised but may not approve is looked at again.
const RECHECK: Duration = Duration::from_secs(30);

const SELF_NODE_CLIENT_MESSAGE: &str =
    "Auto approving self kubelet client certificate after SubjectAccessReview.";
const NODE_CLIENT_MESSAGE: &str =
    "Auto approving kubelet client certificate after SubjectAccessReview.";
const KUBELET_SERVING_MESSAGE: &str = "Auto approving kubelet serving certificate: requested by \
the node itself for addresses its Node reports (skiff --approve-kubelet-serving).";

struct State {
    client: kube::Client,
    nodes: Store<Node>,
    config: Config,
}

/// Runs the approver until shutdown.
pub async fn run(ctx: Context, config: Config) {
    let nodes = ctx.informers.get::<Node>();
    let Some(csrs) = ctx.informers.listed::<CertificateSigningRequest>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        nodes: nodes.store(),
        config,
    });
    // A Node that reports new addresses may make its pending serving request approvable.
    let requests = csrs.store();
    Controller::for_shared_stream(csrs.objects(), csrs.store())
        .watches_shared_stream(nodes.objects(), move |node| {
            let user = format!("{}{}", signers::NODE_USER_PREFIX, node.name_any());
            requests
                .state()
                .into_iter()
                .filter(|c| c.spec.username.as_deref() == Some(user.as_str()))
                .filter(|c| !csr::decided(c))
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("csr_approving", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    err: &ApprovingError,
    _: Arc<State>,
) -> Action {
    tracing::warn!(csr = %csr.name_any(), error = %err, "approving failed");
    Action::requeue(Duration::from_secs(5))
}

/// How a request is recognised and what permission approves it.
enum Kind {
    SelfNodeClient,
    NodeClient,
    KubeletServing,
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, ApprovingError> {
    if csr::issued(&csr) || csr::decided(&csr) {
        return Ok(Action::await_change());
    }
    let spec = &csr.spec;
    let Ok(request) = csr::parsed(&csr) else {
        return Ok(Action::await_change());
    };
    let usages = spec.usages.clone().unwrap_or_default();
    let username = spec.username.as_deref().unwrap_or_default();
    let mut candidates = Vec::new();
    match spec.signer_name.as_str() {
        signers::KUBE_APISERVER_CLIENT_KUBELET
            if signers::validate_kubelet_client(&request, &usages).is_ok() =>
        {
            if username == request.common_name() {
                candidates.push(Kind::SelfNodeClient);
            }
            candidates.push(Kind::NodeClient);
        }
        signers::KUBELET_SERVING if state.config.approve_kubelet_serving => {
            candidates.push(Kind::KubeletServing);
        }
        _ => return Ok(Action::await_change()),
    }
    for kind in candidates {
        let (approve, message) = match kind {
            Kind::SelfNodeClient => (
                allowed(&state, &csr, "selfnodeclient").await?,
                SELF_NODE_CLIENT_MESSAGE,
            ),
            Kind::NodeClient => (
                allowed(&state, &csr, "nodeclient").await?,
                NODE_CLIENT_MESSAGE,
            ),
            Kind::KubeletServing => (
                serving_for_own_addresses(&state, &csr, &request, &usages),
                KUBELET_SERVING_MESSAGE,
            ),
        };
        if approve {
            return write_approval(&state, &csr, message).await;
        }
    }
    tracing::debug!(csr = %csr.name_any(), requester = %username, "not approved automatically");
    Ok(Action::requeue(RECHECK))
}

/// Whether the CSR's requester may `create` `certificatesigningrequests/<subresource>`,
/// asked through a SubjectAccessReview.
async fn allowed(
    state: &State,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, ApprovingError> {
    let spec = csr.spec.clone();
    let extra: Option<BTreeMap<String, Vec<String>>> = spec.extra.filter(|e| !e.is_empty());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username,
            uid: spec.uid,
            groups: spec.groups,
            extra,
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                version: Some("*".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(state.client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// skiff's kubelet-serving rule (see the module documentation).
fn serving_for_own_addresses(
    state: &State,
    csr: &CertificateSigningRequest,
    request: &CertificateRequest,
    usages: &[String],
) -> bool {
    let spec = &csr.spec;
    let username = spec.username.as_deref().unwrap_or_default();
    let in_nodes = spec
        .groups
        .iter()
        .flatten()
        .any(|g| g == signers::NODES_GROUP);
    if signers::validate_kubelet_serving(request, usages).is_err()
        || username != request.common_name()
        || !in_nodes
    {
        return false;
    }
    let Some(name) = signers::node_name(username) else {
        return false;
    };
    let Some(node) = state.nodes.get(&ObjectRef::new(name)) else {
        return false;
    };
    let mut names: Vec<String> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.address.clone())
        .collect();
    if let Some(host) = node.labels().get("kubernetes.io/hostname") {
        names.push(host.clone());
    }
    let ips: Vec<IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
    request
        .dns_names
        .iter()
        .all(|d| names.iter().any(|n| n.eq_ignore_ascii_case(d)))
        && request.ip_addresses.iter().all(|ip| ips.contains(ip))
}

async fn write_approval(
    state: &State,
    csr: &CertificateSigningRequest,
    message: &str,
) -> Result<Action, ApprovingError> {
    let mut approved = csr.clone();
    csr::add_condition(
        &mut approved,
        csr::condition(APPROVED, "AutoApproved", message),
    );
    let api: Api<CertificateSigningRequest> = Api::all(state.client.clone());
    match api
        .replace_subresource(
            "approval",
            &csr.name_any(),
            &PostParams::default(),
            &approved,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(csr = %csr.name_any(), "approved");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
