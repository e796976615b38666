//! Root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every active
//! namespace has the ConfigMap `kube-root-ca.crt` holding the cluster CA under `ca.crt`, so a
//! pod can verify the API server it reaches through the `kubernetes` Service (the
//! ServiceAccount token volume projects it). It is put back when deleted and corrected when
//! edited.

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::client::Context;

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
/// Its key.
const KEY: &str = "ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
when using internal endpoints such as the internal service IP or kubernetes.default.svc. No \
other usage is guaranteed across distributions of Kubernetes clusters.";

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum RootCaError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct State {
    client: kube::Client,
    maps: Store<ConfigMap>,
    ca: String,
}

/// Runs the publisher until shutdown; without a CA (`None`) there is nothing to publish.
pub async fn run(ctx: Context, ca: Option<String>) {
    let Some(ca) = ca else {
        tracing::info!("no cluster CA given: not publishing kube-root-ca.crt");
        return;
    };
    // Only the ConfigMaps of this name are watched, not every ConfigMap of the cluster.
    let maps = ctx
        .informers
        .get_with::<ConfigMap>(watcher::Config::default().fields(&format!("metadata.name={NAME}")));
    let Some(namespaces) = ctx.informers.listed::<Namespace>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        maps: maps.store(),
        ca,
    });
    Controller::for_shared_stream(namespaces.objects(), namespaces.store())
        .watches_shared_stream(maps.objects(), |cm| {
            Some(ObjectRef::new(&cm.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("root_ca", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &RootCaError, _: Arc<State>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err, "kube-root-ca.crt reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn wanted(ns: &str, ca: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(ns.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_owned(),
                DESCRIPTION.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), ca.to_owned())])),
        ..ConfigMap::default()
    }
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, RootCaError> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(state.client.clone(), &name);
    let result = match state.maps.get(&ObjectRef::new(NAME).within(&name)) {
        Some(current) => {
            let data = current.data.as_ref().and_then(|d| d.get(KEY));
            if data == Some(&state.ca) && current.binary_data.is_none() {
                return Ok(Action::await_change());
            }
            // Someone changed it: put the CA back, keeping their labels and annotations.
            let mut fixed = (*current).clone();
            fixed.data = Some(BTreeMap::from([(KEY.to_owned(), state.ca.clone())]));
            fixed.binary_data = None;
            api.replace(NAME, &PostParams::default(), &fixed).await
        }
        None => {
            api.create(&PostParams::default(), &wanted(&name, &state.ca))
                .await
        }
    };
    match result {
        Ok(_) => Ok(Action::await_change()),
        // 409: the cache is behind (it exists, or it changed); the watch brings it back here.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::await_change()),
        // The namespace started terminating meanwhile.
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Err(e) => Err(e.into()),
    }
}
