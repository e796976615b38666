//! StatefulSet controller: pods with stable names `<set>-<ordinal>` (ordinals from
//! `spec.ordinals.start`, default 0), labelled `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index`, with `hostname` = the pod's name and `subdomain` =
//! `spec.serviceName`, so a headless Service gives each a DNS name.
//!
//! `podManagementPolicy: OrderedReady` (the default) creates ordinal i only once 0..i-1 are
//! Running and Ready (available, with minReadySeconds) and scales down from the highest ordinal,
//! one pod at a time, waiting for each to be gone; `Parallel` creates and deletes all at once.
//! A failed or deleted pod is recreated under the same name.
//!
//! Updates go through ControllerRevisions (`history.rs`); each pod carries the name of its
//! revision in `controller-revision-hash`. RollingUpdate replaces pods from the highest ordinal
//! down to `partition`, one at a time, each waiting for the previous to be Running and Ready;
//! OnDelete leaves pods until someone deletes them. Status carries replicas, ready, available,
//! current and updated counts and revisions, which `kubectl rollout status statefulset/x`
//! reads; `kubectl rollout history/undo` work on the revisions.
//!
//! skiff has no persistent volumes: for each `volumeClaimTemplates` entry the pod gets an
//! `emptyDir` volume of that name instead of a PersistentVolumeClaim, so manifests run but the
//! data lives only as long as the pod. `persistentVolumeClaimRetentionPolicy` is therefore moot,
//! and `rollingUpdate.maxUnavailable` (alpha in Kubernetes) is ignored. Orphans named like the
//! set's pods and matching its selector are adopted (`claim.rs`).

use crate::client::guard::guard;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, ObjectReference, PersistentVolumeClaim, Pod, PodSpec, PodTemplateSpec,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_k8s::pod as pod_state;

use super::history::{self, HASH_LABEL};
use super::machinery::pod_control::{api_message, PodControl};
use super::machinery::{claim, ownership, status};
use crate::client::events::{reference, Recorder};
use crate::client::expectations::{Guard, Observed};
use crate::client::informers::adopters;
use crate::client::Context;

const COMPONENT: &str = "statefulset-controller";
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a pass is retried while a cache has not been filled yet.
const NOT_READY: Duration = Duration::from_millis(200);
/// The label naming a pod of a set.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The selector cannot be evaluated.
    #[error("invalid selector: {0}")]
    Selector(String),
    /// The ControllerRevisions could not be brought up to date.
    #[error(transparent)]
    History(#[from] history::HistoryError),
}

/// The ordinal of a pod of `set`, from its name `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty()
        || !rest.bytes().all(|b| b.is_ascii_digit())
        || (rest.len() > 1 && rest.starts_with('0'))
    {
        return None;
    }
    rest.parse().ok()
}

/// The revision a pod was made from (the revision's name).
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(HASH_LABEL).map(String::as_str)
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Running, Ready for minReadySeconds, not terminating.
fn healthy(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    !terminating(pod)
        && pod_state::phase(pod) == "Running"
        && pod_state::is_available(pod, min_ready_seconds, now)
}

/// What the controller wants of a set, without the API.
#[derive(Debug, Clone)]
pub struct Want {
    /// Ordinal of the first replica.
    pub start: i32,
    /// Replica count.
    pub replicas: i32,
    /// Parallel (else OrderedReady).
    pub parallel: bool,
    /// RollingUpdate's partition (None for OnDelete).
    pub partition: Option<i32>,
    /// The update revision's name.
    pub update_revision: String,
    /// minReadySeconds.
    pub min_ready_seconds: i32,
}

/// One action of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the pod of this ordinal, from the current revision (`true`) or the update one.
    Create(i32, bool),
    /// Delete this pod (name).
    Delete(String),
}

/// Decides a pass (Kubernetes' `updateStatefulSet`): create missing replicas and replace failed
/// ones (in order, waiting for each to be healthy, unless Parallel), then remove condemned pods
/// from the highest ordinal, then roll one pod from the top down to the partition.
pub fn plan(want: &Want, pods: &BTreeMap<i32, Arc<Pod>>, now: Timestamp) -> Vec<Op> {
    let mut ops = Vec::new();
    let ordered = !want.parallel;
    let end = want.start + want.replicas.max(0);
    for ord in want.start..end {
        let Some(pod) = pods.get(&ord) else {
            let current = want.partition.is_some_and(|p| ord < p);
            ops.push(Op::Create(ord, current));
            if ordered {
                return ops;
            }
            continue;
        };
        if terminating(pod) {
            // Its replacement comes once it is gone.
            if ordered {
                return ops;
            }
            continue;
        }
        if pod_state::is_finished(pod) {
            ops.push(Op::Delete(pod.name_any()));
            if ordered {
                return ops;
            }
            continue;
        }
        if ordered && !healthy(pod, want.min_ready_seconds, now) {
            return ops;
        }
    }
    let mut condemned: Vec<(&i32, &Arc<Pod>)> = pods
        .iter()
        .filter(|(o, _)| **o < want.start || **o >= end)
        .collect();
    condemned.sort_by(|a, b| b.0.cmp(a.0));
    for (_, pod) in condemned {
        if terminating(pod) {
            if ordered {
                return ops;
            }
            continue;
        }
        ops.push(Op::Delete(pod.name_any()));
        if ordered {
            return ops;
        }
    }
    if !ops.is_empty() {
        return ops;
    }
    let Some(partition) = want.partition else {
        return ops;
    };
    for ord in (want.start.max(partition)..end).rev() {
        let Some(pod) = pods.get(&ord) else {
            return ops;
        };
        if revision_of(pod) != Some(want.update_revision.as_str()) && !terminating(pod) {
            ops.push(Op::Delete(pod.name_any()));
            return ops;
        }
        if !healthy(pod, want.min_ready_seconds, now) {
            return ops;
        }
    }
    ops
}

/// The pod of `ordinal` from `template` (the template of its revision `revision`).
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let spec = set.spec.clone();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc);
    }
    claims_as_empty_dirs(
        &mut pod_spec,
        spec.volume_claim_templates.as_deref().unwrap_or_default(),
    );
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![ownership::controller_ref(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Stands an `emptyDir` in for each claim template (skiff has no persistent volumes), replacing
/// a pod volume of the same name as Kubernetes replaces it with the claim.
pub fn claims_as_empty_dirs(spec: &mut PodSpec, claims: &[PersistentVolumeClaim]) {
    if claims.is_empty() {
        return;
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in claims {
        let name = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != name);
        volumes.push(Volume {
            name,
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    observed: Observed,
    revisions_observed: Observed,
    guard: Guard,
    recorder: Recorder,
}

/// Runs the StatefulSet controller until shutdown.
pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    let Some(sets) = ctx.informers.listed::<StatefulSet>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        guard: Guard::new().after(&pods).after(&revisions),
        pods: pods.store(),
        revisions: revisions.store(),
        observed: pods.observed(),
        revisions_observed: revisions.observed(),
        recorder: ctx.recorder(COMPONENT),
    });
    let owners = sets.store();
    Controller::for_shared_stream(sets.objects(), sets.store())
        .owns_shared_stream(pods.objects())
        .watches_shared_stream(pods.objects(), move |pod| {
            adopters(&owners, pod.as_ref(), adoptable)
        })
        .owns_shared_stream(revisions.objects())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("statefulset", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

/// An orphan the set may adopt: named like its pods and matching its selector.
fn adoptable(set: &StatefulSet, pod: &Pod) -> bool {
    ordinal_of(&set.name_any(), &pod.name_any()).is_some()
        && Selector::try_from(set.spec.selector.clone())
            .is_ok_and(|s| !s.selects_all() && s.matches(pod.labels()))
}

fn error_policy(set: Arc<StatefulSet>, err: &StatefulSetError, _: Arc<State>) -> Action {
    tracing::warn!(statefulset = %set.name_any(), error = %err, "statefulset reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(set: Arc<StatefulSet>, state: Arc<State>) -> Result<Action, StatefulSetError> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !state.guard.synced() {
        return Ok(Action::requeue(NOT_READY));
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("{ns}/{name}");
    let rev_key = format!("{key}/revisions");
    if let Err(wait) = state.guard.expectations.satisfied(&key, &state.observed) {
        return Ok(Action::requeue(wait));
    }
    if let Err(wait) = state
        .guard
        .expectations
        .satisfied(&rev_key, &state.revisions_observed)
    {
        return Ok(Action::requeue(wait));
    }
    let uid = set.uid().unwrap_or_default();
    let spec = set.spec.clone();
    let selector = Selector::try_from(spec.selector.clone())
        .map_err(|e| StatefulSetError::Selector(e.to_string()))?;
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = (!on_delete).then(|| {
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0)
    });

    // Revisions: the update one holds the current template, the current one what the pods
    // were made from before the rollout began.
    let rev_api: Api<ControllerRevision> = Api::namespaced(state.client.clone(), &ns);
    let revisions = history::owned_by(&state.revisions.state(), &ns, &uid);
    let old_status = set.status.clone().unwrap_or_default();
    let synced = history::sync(
        &rev_api,
        set.as_ref(),
        &revisions,
        &spec.template,
        old_status.collision_count,
    )
    .await?;
    if synced.wrote {
        state
            .guard
            .expectations
            .wrote(&rev_key, synced.update.metadata.resource_version.as_deref());
    }
    let update = synced.update.clone();
    let update_name = update.name_any();
    let current = old_status
        .current_revision
        .as_ref()
        .and_then(|c| revisions.iter().find(|r| r.name_any() == *c))
        .cloned()
        .unwrap_or_else(|| update.clone());
    let current_name = current.name_any();
    let current_template = history::template_of(&current).unwrap_or_else(|| spec.template.clone());

    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    let in_ns: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let owner = ownership::controller_ref(set.as_ref());
    let owned = claim::claim(&pods_api, &owner, false, &selector, in_ns, |p| {
        ordinal_of(&name, &p.name_any()).is_some()
    })
    .await?;
    let mut pods: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for pod in owned {
        if let Some(ord) = ordinal_of(&name, &pod.name_any()) {
            pods.insert(ord, pod);
        }
    }

    let want = Want {
        start: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0),
        replicas: spec.replicas.unwrap_or(1),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        partition,
        update_revision: update_name.clone(),
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
    };
    let now = Timestamp::now();
    let obj_ref = reference(set.as_ref());
    let mut requeue = RESYNC;
    for op in plan(&want, &pods, now) {
        match op {
            Op::Create(ord, from_current) => {
                let pod = if from_current {
                    pod_for(&set, &current_template, ord, &current_name)
                } else {
                    pod_for(&set, &spec.template, ord, &update_name)
                };
                if !create(&state, &pods_api, &key, &obj_ref, &name, &pod).await? {
                    requeue = Duration::from_millis(200);
                }
            }
            Op::Delete(pod_name) => {
                if let Some(pod) = pods.values().find(|p| p.name_any() == pod_name) {
                    delete(&state, &pods_api, &key, &obj_ref, &name, pod).await?;
                }
            }
        }
    }

    // Status from the cache (what was written above shows up as it is observed).
    let (mut replicas, mut ready, mut available, mut current_n, mut updated) = (0, 0, 0, 0, 0);
    for pod in pods.values() {
        replicas += 1;
        if pod_state::phase(pod) == "Running" && pod_state::is_ready(pod) {
            ready += 1;
            match pod_state::availability(pod, want.min_ready_seconds, now) {
                Ok(()) => available += 1,
                Err(Some(wait)) => {
                    requeue = requeue.min(wait.unsigned_abs() + Duration::from_millis(100));
                }
                Err(None) => {}
            }
        }
        if !terminating(pod) {
            if revision_of(pod) == Some(current_name.as_str()) {
                current_n += 1;
            }
            if revision_of(pod) == Some(update_name.as_str()) {
                updated += 1;
            }
        }
    }
    // A finished rollout: the update revision becomes the current one.
    let (mut status_current, mut status_current_n) = (current_name.clone(), current_n);
    if updated == want.replicas && replicas == want.replicas && ready == want.replicas {
        status_current = update_name.clone();
        status_current_n = updated;
    }

    // Old revisions beyond revisionHistoryLimit go, unless a pod still uses them.
    let mut live: HashSet<String> = pods
        .values()
        .filter_map(|p| revision_of(p).map(str::to_owned))
        .collect();
    live.insert(update_name.clone());
    live.insert(status_current.clone());
    history::truncate(
        &rev_api,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    let wanted = json!({
        "replicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": status_current_n,
        "updatedReplicas": updated,
        "currentRevision": status_current,
        "updateRevision": update_name,
        "observedGeneration": set.metadata.generation,
        "collisionCount": synced.collision_count,
    });
    let current_status = serde_json::to_value(&set.status).unwrap_or(Value::Null);
    let api: Api<StatefulSet> = Api::namespaced(state.client.clone(), &ns);
    status::write_if_changed(&api, &name, &current_status, &wanted).await?;
    Ok(Action::requeue(requeue))
}

/// Creates a pod; `false` when its name is still taken (the old pod is not gone yet).
async fn create(
    state: &State,
    api: &Api<Pod>,
    key: &str,
    obj_ref: &ObjectReference,
    set: &str,
    pod: &Pod,
) -> Result<bool, StatefulSetError> {
    let pod_name = pod.name_any();
    let control = PodControl {
        expectations: &state.guard.expectations,
        key,
        recorder: &state.recorder,
        owner: obj_ref,
    };
    match api.create(&PostParams::default(), pod).await {
        Ok(p) => {
            let message = format!("create Pod {pod_name} in StatefulSet {set} successful");
            control.created(&p, &message).await;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => {
            let message = format!(
                "create Pod {pod_name} in StatefulSet {set} failed error: {}",
                api_message(&e)
            );
            control.create_failed(&message).await;
            Err(e.into())
        }
    }
}

async fn delete(
    state: &State,
    api: &Api<Pod>,
    key: &str,
    obj_ref: &ObjectReference,
    set: &str,
    pod: &Pod,
) -> Result<(), StatefulSetError> {
    let control = PodControl {
        expectations: &state.guard.expectations,
        key,
        recorder: &state.recorder,
        owner: obj_ref,
    };
    let message = format!(
        "delete Pod {} in StatefulSet {set} successful",
        pod.name_any()
    );
    Ok(control.delete(api, pod, &message).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_k8s::testing::pod;

    fn p(set: &str, ord: i32, rev: &str, ready: bool) -> Arc<Pod> {
        let mut pod = pod(&format!("{set}-{ord}"), None, "Running", ready, 100);
        pod.metadata.labels = Some([(HASH_LABEL.to_owned(), rev.to_owned())].into());
        Arc::new(pod)
    }

    fn want(replicas: i32, parallel: bool, partition: Option<i32>) -> Want {
        Want {
            start: 0,
            replicas,
            parallel,
            partition,
            update_revision: "web-new".into(),
            min_ready_seconds: 0,
        }
    }

    fn set_of(pods: Vec<Arc<Pod>>) -> BTreeMap<i32, Arc<Pod>> {
        pods.into_iter()
            .map(|p| (ordinal_of("web", &p.name_any()).unwrap(), p))
            .collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1000).unwrap()
    }

    #[test]
    fn ordinals_parse_only_from_the_sets_own_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web-a", "web-a-3"), Some(3));
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        let w = want(3, false, Some(0));
        assert_eq!(plan(&w, &BTreeMap::new(), now()), [Op::Create(0, false)]);
        let not_ready = set_of(vec![p("web", 0, "web-new", false)]);
        assert!(plan(&w, &not_ready, now()).is_empty());
        let ready = set_of(vec![p("web", 0, "web-new", true)]);
        assert_eq!(plan(&w, &ready, now()), [Op::Create(1, false)]);
    }

    #[test]
    fn parallel_creates_all_missing_at_once() {
        let w = want(3, true, Some(0));
        assert_eq!(
            plan(&w, &BTreeMap::new(), now()),
            [
                Op::Create(0, false),
                Op::Create(1, false),
                Op::Create(2, false)
            ]
        );
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
        let pods = set_of(vec![
            p("web", 0, "web-new", true),
            p("web", 1, "web-new", true),
            p("web", 2, "web-new", true),
        ]);
        assert_eq!(
            plan(&want(1, false, Some(0)), &pods, now()),
            [Op::Delete("web-2".into())]
        );
        assert_eq!(
            plan(&want(1, true, Some(0)), &pods, now()),
            [Op::Delete("web-2".into()), Op::Delete("web-1".into())]
        );
        // While web-2 terminates, OrderedReady waits.
        let mut dying = (*pods[&2]).clone();
        dying.metadata.deletion_timestamp = dying.metadata.creation_timestamp.clone();
        let mut pods = pods;
        pods.insert(2, Arc::new(dying));
        assert!(plan(&want(1, false, Some(0)), &pods, now()).is_empty());
    }

    #[test]
    fn failed_pods_are_replaced_under_the_same_name() {
        let mut failed = (*p("web", 0, "web-new", false)).clone();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = set_of(vec![Arc::new(failed)]);
        assert_eq!(
            plan(&want(1, false, Some(0)), &pods, now()),
            [Op::Delete("web-0".into())]
        );
    }

    #[test]
    fn rolling_update_goes_top_down_to_the_partition() {
        let pods = set_of(vec![
            p("web", 0, "web-old", true),
            p("web", 1, "web-old", true),
            p("web", 2, "web-old", true),
        ]);
        assert_eq!(
            plan(&want(3, false, Some(0)), &pods, now()),
            [Op::Delete("web-2".into())]
        );
        // web-2 updated but not ready yet: wait.
        let mut rolling = pods.clone();
        rolling.insert(2, p("web", 2, "web-new", false));
        assert!(plan(&want(3, false, Some(0)), &rolling, now()).is_empty());
        rolling.insert(2, p("web", 2, "web-new", true));
        assert_eq!(
            plan(&want(3, false, Some(0)), &rolling, now()),
            [Op::Delete("web-1".into())]
        );
        // With partition 2 the rollout stops at web-2; a missing web-1 comes back old.
        assert!(plan(&want(3, false, Some(2)), &rolling, now()).is_empty());
        rolling.remove(&1);
        assert_eq!(
            plan(&want(3, false, Some(2)), &rolling, now()),
            [Op::Create(1, true)]
        );
        // OnDelete never deletes for an update.
        let mut all = pods.clone();
        all.insert(2, p("web", 2, "web-old", true));
        assert!(plan(&want(3, false, None), &all, now()).is_empty());
    }

    #[test]
    fn pods_get_identity_and_claims_become_empty_dirs() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}],
                        "volumes": [{"name": "www", "hostPath": {"path": "/x"}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}}]}
        }))
        .unwrap();
        let pod = pod_for(&set, &set.spec.template, 2, "web-abc");
        assert_eq!(pod.name_any(), "web-2");
        let labels = pod.labels();
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[HASH_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert!(volumes[0].empty_dir.is_some() && volumes[0].host_path.is_none());
        assert_eq!(pod.metadata.owner_references.unwrap()[0].uid, "u1");
    }
}
