//! ReplicaSet controller (and, through [`ReplicaOwner`], the ReplicationController one): keeps
//! as many active pods as `spec.replicas`, created from the template and owned by the set.
//!
//! Level-triggered on the set and on every pod (a kube-rs `Controller` whose pod stream goes
//! through a reflector store first, so a reconcile triggered by a pod event sees that event).
//! Orphan pods matching the selector are adopted, owned pods that stopped matching released.
//! Scale-down deletes in Kubernetes' order ([`pod_state::deletion_order`]). Status carries
//! replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (minReadySeconds) and
//! observedGeneration; terminating pods do not count.

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use skiff_k8s::pod as pod_state;

use super::machinery::ownership;
use super::machinery::pod_control::{api_message, PodControl};
use crate::client::events::{reference, EventType, Recorder};
use crate::client::expectations::{Expectations, Observed};
use crate::client::informers::adopters;
use crate::client::Context;

/// How often every set is looked at even without events.
const RESYNC: Duration = Duration::from_secs(30);
/// Most pods created or deleted in one pass (Kubernetes' burstReplicas).
const BURST: usize = 500;

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The selector cannot be evaluated.
    #[error("invalid selector: {0}")]
    Selector(String),
}

/// What the controller needs from a ReplicaSet or a ReplicationController.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Desired pod count.
    pub replicas: i32,
    /// Which pods belong to the set.
    pub selector: Selector,
    /// What new pods look like.
    pub template: Option<PodTemplateSpec>,
    /// How long a pod must be ready to count as available.
    pub min_ready_seconds: i32,
}

/// A kind of object that keeps a number of pod replicas.
pub trait ReplicaOwner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The name its events are written under.
    const COMPONENT: &'static str;
    /// Its spec, normalised.
    fn spec_view(&self) -> Result<Spec, ReplicaSetError>;
    /// Its status as JSON (to compare with the wanted one).
    fn status_json(&self) -> Value;
}

impl ReplicaOwner for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn spec_view(&self) -> Result<Spec, ReplicaSetError> {
        let spec = self.spec.clone();
        Ok(Spec {
            replicas: spec.replicas.unwrap_or(1),
            selector: Selector::try_from(spec.selector)
                .map_err(|e| ReplicaSetError::Selector(e.to_string()))?,
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        })
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

/// Shared state of one controller instance.
struct State {
    client: kube::Client,
    pods: Store<Pod>,
    observed: Observed,
    expectations: Expectations,
    recorder: Recorder,
}

/// Runs the ReplicaSet controller until shutdown.
pub async fn run(ctx: Context) {
    run_for::<ReplicaSet>(ctx).await;
}

/// Runs the controller for the kind `K` until shutdown.
pub async fn run_for<K: ReplicaOwner>(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let Some(sets) = ctx.informers.listed::<K>().await else {
        return;
    };
    let owners = sets.store();
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        observed: pods.observed(),
        expectations: Expectations::default(),
        recorder: ctx.recorder(K::COMPONENT),
    });
    Controller::for_shared_stream(sets.objects(), sets.store())
        .owns_shared_stream(pods.objects())
        .watches_shared_stream(pods.objects(), move |pod| {
            adopters(&owners, pod.as_ref(), |o: &K, pod| {
                o.spec_view()
                    .is_ok_and(|s| !s.selector.selects_all() && s.selector.matches(pod.labels()))
            })
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(
            guard(K::COMPONENT, reconcile::<K>),
            error_policy::<K>,
            state,
        )
        .for_each(|_| async {})
        .await;
}

fn error_policy<K: ReplicaOwner>(obj: Arc<K>, err: &ReplicaSetError, _: Arc<State>) -> Action {
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn key_of<K: ReplicaOwner>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile<K: ReplicaOwner>(
    obj: Arc<K>,
    state: Arc<State>,
) -> Result<Action, ReplicaSetError> {
    let key = key_of(obj.as_ref());
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let spec = obj.spec_view()?;
    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    let mut requeue = RESYNC;

    let in_ns: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let deleting = obj.meta().deletion_timestamp.is_some();

    // Adopt orphans that match, release owned pods that no longer do. A set being deleted
    // adopts nothing (Kubernetes re-checks this too).
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in in_ns {
        let matches = !spec.selector.selects_all() && spec.selector.matches(pod.labels());
        let controller = ownership::controller_of(&pod.metadata);
        match (controller, matches) {
            (Some(r), true) if r.uid == uid => owned.push(pod),
            (Some(r), false) if r.uid == uid => {
                let refs: Vec<_> = pod
                    .owner_references()
                    .iter()
                    .filter(|o| o.uid != uid)
                    .cloned()
                    .collect();
                patch_owner_refs(&pods_api, &pod.metadata, refs).await?;
            }
            (None, true) if !deleting && pod.metadata.deletion_timestamp.is_none() => {
                let mut refs = pod.owner_references().to_vec();
                refs.push(ownership::controller_ref(obj.as_ref()));
                if patch_owner_refs(&pods_api, &pod.metadata, refs).await? {
                    owned.push(pod);
                }
            }
            _ => {}
        }
    }

    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pod_state::is_active(p)).collect();
    if !deleting {
        match state.expectations.satisfied(&key, &state.observed) {
            Err(wait) => requeue = requeue.min(wait),
            Ok(()) => manage(obj.as_ref(), &spec, &active, &pods_api, &state, &key).await?,
        }
    }

    // Status from what the cache shows (the pods just created appear as they are observed).
    let now = k8s_openapi::jiff::Timestamp::now();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut ready = 0;
    let mut available = 0;
    let mut fully_labeled = 0;
    for pod in &active {
        if template_labels
            .iter()
            .all(|(k, v)| pod.labels().get(k) == Some(v))
        {
            fully_labeled += 1;
        }
        if pod_state::is_ready(pod) {
            ready += 1;
        }
        match pod_state::availability(pod, spec.min_ready_seconds, now) {
            Ok(()) => available += 1,
            Err(Some(wait)) => {
                requeue = requeue.min(wait.unsigned_abs() + Duration::from_millis(100));
            }
            Err(None) => {}
        }
    }
    let wanted = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": obj.meta().generation,
    });
    update_status(obj.as_ref(), &wanted, &state.client).await?;
    Ok(Action::requeue(requeue))
}

/// Creates or deletes pods so `active` matches `spec.replicas`.
async fn manage<K: ReplicaOwner>(
    obj: &K,
    spec: &Spec,
    active: &[&Arc<Pod>],
    pods_api: &Api<Pod>,
    state: &State,
    key: &str,
) -> Result<(), ReplicaSetError> {
    let diff = i64::from(spec.replicas) - active.len() as i64;
    let object_ref = reference(obj);
    let control = PodControl {
        expectations: &state.expectations,
        key,
        recorder: &state.recorder,
        owner: &object_ref,
    };
    if diff > 0 {
        let Some(template) = &spec.template else {
            return Ok(());
        };
        let count = (diff as usize).min(BURST);
        let pod = pod_from_template(obj, template);
        control.create_all(pods_api, &vec![pod; count]).await?;
    } else if diff < 0 {
        let mut victims: Vec<&Arc<Pod>> = active.to_vec();
        victims.sort_by(|a, b| pod_state::deletion_order(a, b));
        for pod in victims.into_iter().take((-diff) as usize) {
            let message = format!("Deleted pod: {}", pod.name_any());
            if let Err(e) = control.delete(pods_api, pod, &message).await {
                state
                    .recorder
                    .record(
                        &object_ref,
                        EventType::Warning,
                        "FailedDelete",
                        &format!("Error deleting: {}", api_message(&e)),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// A pod as the template describes it, owned by `owner`, named `<owner>-<random>`.
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    owner: &K,
    template: &PodTemplateSpec,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                owner.meta().name.clone().unwrap_or_default()
            )),
            namespace: owner.meta().namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![ownership::controller_ref(owner)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Sets a pod's ownerReferences. Returns false when the pod changed or went away meanwhile
/// (the next pass looks again).
async fn patch_owner_refs(
    api: &Api<Pod>,
    meta: &ObjectMeta,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<bool, ReplicaSetError> {
    let name = meta.name.clone().unwrap_or_default();
    let patch = ownership::owner_refs_patch(meta, refs);
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes the fields of `wanted` into the object's status when any differs.
pub async fn update_status<K: ReplicaOwner>(
    obj: &K,
    wanted: &Value,
    client: &kube::Client,
) -> Result<(), ReplicaSetError> {
    let current = obj.status_json();
    let same = wanted.as_object().is_some_and(|w| {
        w.iter().all(|(k, v)| {
            let have = current.get(k).cloned().unwrap_or(Value::Null);
            // Absent counts as zero, as the API omits zero counts.
            have == *v || (have.is_null() && (v == &json!(0) || v.is_null()))
        })
    });
    if same {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    match api
        .patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": wanted })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Labels as a map (for callers building selectors).
pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}
