//! ServiceAccount controller (kube-controller-manager's `serviceaccount-controller`): every
//! active namespace has a ServiceAccount named `default`, created with the namespace and again
//! whenever it is deleted. Pods name it when they name no other, and clients wait for it (kr8s's
//! test session, `kubectl create token default`).
//!
//! A terminating namespace gets none: the namespace controller is emptying it, and the API
//! server refuses creates there anyway.

use crate::client::guard::guard;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::client::Context;

/// The account every namespace has.
pub const DEFAULT: &str = "default";

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct State {
    client: kube::Client,
    accounts: Store<ServiceAccount>,
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Context) {
    let accounts = ctx.informers.get::<ServiceAccount>();
    let Some(namespaces) = ctx.informers.listed::<Namespace>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        accounts: accounts.store(),
    });
    Controller::for_shared_stream(namespaces.objects(), namespaces.store())
        .watches_shared_stream(accounts.objects(), |sa| {
            (sa.name_any() == DEFAULT).then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("serviceaccount", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &ServiceAccountError, _: Arc<State>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err, "serviceaccount reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, ServiceAccountError> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    let name = ns.name_any();
    if terminating
        || state
            .accounts
            .get(&ObjectRef::new(DEFAULT).within(&name))
            .is_some()
    {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(state.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &account).await {
        // 409: it exists and the cache has not seen it yet; 403/404-ish refusals of a namespace
        // that started terminating meanwhile come back as a change of the namespace.
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Err(e) => Err(e.into()),
    }
}
