//! DaemonSet controller: one pod per eligible node, as Kubernetes does it since 1.12. Each pod
//! is created with a required node affinity `matchFields metadata.name In [<node>]` (any
//! required node affinity of the template is replaced by it, the controller having checked it)
//! and the tolerations Kubernetes adds to daemon pods, and the scheduler binds it.
//!
//! A node is eligible when it matches the template's nodeSelector and required node affinity
//! and has no NoSchedule/NoExecute taint the pod does not tolerate; a pod stays on a node whose
//! untolerated taints are all NoSchedule (as in Kubernetes). Pods on nodes that stopped being
//! eligible or are gone are deleted, failed pods are deleted (and so replaced), extra pods on a
//! node go oldest-kept. Matching orphan pods are adopted (`claim.rs`).
//!
//! Updates: the template's history is kept in ControllerRevisions (`history.rs`), pods carry the
//! `controller-revision-hash` label of the revision they were made from. RollingUpdate replaces
//! old pods node by node within maxUnavailable (default 1) or, with maxSurge, starts the new pod
//! before the old one goes; OnDelete leaves old pods until someone deletes them. Status carries
//! what `kubectl rollout status daemonset/x` reads. Not done: Kubernetes' back-off between
//! recreations of a failing pod.

use crate::client::guard::guard;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_k8s::affinity;
use skiff_k8s::pod as pod_state;
use skiff_k8s::taints::tolerates;

use super::deployment::scaled;
use super::history::{self, HASH_LABEL};
use super::machinery::pod_control::PodControl;
use super::machinery::{claim, ownership, status};
use super::replicaset::pod_from_template;
use crate::client::events::{reference, EventType, Recorder};
use crate::client::expectations::{Guard, Observed};
use crate::client::informers::adopters;
use crate::client::Context;

const COMPONENT: &str = "daemonset-controller";
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a pass is retried while a cache has not been filled yet.
const NOT_READY: Duration = Duration::from_millis(200);

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
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

/// Tolerations Kubernetes adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`): daemon
/// pods stay through node problems and run on cordoned nodes.
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    };
    let mut list = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        list.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    list
}

/// Adds [`daemon_tolerations`] to a pod spec unless a toleration with the same key and effect
/// is there already.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network.unwrap_or(false);
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(host_network) {
        if !list.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            list.push(t);
        }
    }
}

/// Pins a pod to `node` the way Kubernetes does: its required node affinity becomes the single
/// term `matchFields metadata.name In [node]`.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is for: its nodeName, else the node its affinity pins it to.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// Whether a daemon pod with `spec` should run on `node`, and whether one already there may
/// continue to (Kubernetes' `NodeShouldRunDaemonPod`).
pub fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if !affinity::matches_node(spec, node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |t: &&Taint| !tolerations.iter().any(|tol| tolerates(tol, t));
    let taints: Vec<&Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(untolerated)
        .collect();
    if taints
        .iter()
        .any(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
    {
        let evicting = taints.iter().any(|t| t.effect == "NoExecute");
        return (false, !evicting);
    }
    (true, true)
}

/// Whether a pod was made from the revision with `hash`.
pub fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// maxSurge and maxUnavailable as numbers for `desired` nodes (both rounded up, as the
/// DaemonSet controller does; both zero means one unavailable).
pub fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, true, "0");
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        true,
        "1",
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge.max(0), unavailable.max(0))
    }
}

/// The pods of one eligible node, as a rolling update sees them.
#[derive(Debug, Clone)]
pub struct NodePods {
    /// The node's name.
    pub node: String,
    /// The daemon pods for it (terminating ones included).
    pub pods: Vec<Arc<Pod>>,
}

/// What one rolling update step does: pods to delete and nodes to start a new pod on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Names of old pods to delete.
    pub delete: Vec<String>,
    /// Nodes to create an updated pod on (surge).
    pub create: Vec<String>,
}

/// A node's updated pod and old pod.
type NewAndOld = (Option<Arc<Pod>>, Option<Arc<Pod>>);

/// The updated and the old pod of a node, ignoring terminating ones; `None` when there are
/// two of a kind (the manage step cleans that up first).
fn split(pods: &[Arc<Pod>], hash: &str) -> Option<NewAndOld> {
    let (mut new, mut old) = (None, None);
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(p, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p.clone());
    }
    Some((new, old))
}

/// Kubernetes' `rollingUpdate`: which old pods may go (and, with surge, where new pods may
/// start) so that at most `max_unavailable` eligible nodes lack an available pod.
pub fn rolling_step(
    nodes: &[NodePods],
    hash: &str,
    max_surge: i32,
    max_unavailable: i32,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Step {
    let available = |p: &Pod| pod_state::is_available(p, min_ready_seconds, now);
    let mut step = Step::default();
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace_now = Vec::new();
        let mut candidates = Vec::new();
        for n in nodes {
            match split(&n.pods, hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !available(&new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(&old) {
                        replace_now.push(old.name_any());
                    } else if unavailable < max_unavailable {
                        candidates.push(old.name_any());
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        step.delete = replace_now;
        step.delete.extend(candidates.into_iter().take(room));
    } else {
        let mut surging = 0;
        for n in nodes {
            match split(&n.pods, hash) {
                None => surging += 1,
                Some((_, None)) => {}
                Some((None, Some(old))) => {
                    if !available(&old) {
                        step.create.push(n.node.clone());
                    } else if surging < max_surge {
                        surging += 1;
                        step.create.push(n.node.clone());
                    }
                }
                Some((Some(new), Some(old))) => {
                    if available(&new) {
                        step.delete.push(old.name_any());
                    } else {
                        surging += 1;
                    }
                }
            }
        }
    }
    step
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    observed: Observed,
    revisions_observed: Observed,
    guard: Guard,
    recorder: Recorder,
}

/// Runs the DaemonSet controller until shutdown.
pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    let Some(sets) = ctx.informers.listed::<DaemonSet>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        guard: Guard::new().after(&pods).after(&nodes).after(&revisions),
        pods: pods.store(),
        nodes: nodes.store(),
        revisions: revisions.store(),
        observed: pods.observed(),
        revisions_observed: revisions.observed(),
        recorder: ctx.recorder(COMPONENT),
    });
    let (owners, all) = (sets.store(), sets.store());
    Controller::for_shared_stream(sets.objects(), sets.store())
        .owns_shared_stream(pods.objects())
        .watches_shared_stream(pods.objects(), move |pod| {
            adopters(&owners, pod.as_ref(), |d: &DaemonSet, pod| {
                Selector::try_from(d.spec.selector.clone())
                    .is_ok_and(|s| !s.selects_all() && s.matches(pod.labels()))
            })
        })
        .owns_shared_stream(revisions.objects())
        // Any node change may change where daemon pods belong.
        .watches_shared_stream(nodes.objects(), move |_| {
            all.state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("daemonset", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(ds: Arc<DaemonSet>, err: &DaemonSetError, _: Arc<State>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), error = %err, "daemonset reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ds: Arc<DaemonSet>, state: Arc<State>) -> Result<Action, DaemonSetError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Before the caches are filled every pod would look missing (or every node gone).
    if !state.guard.synced() {
        return Ok(Action::requeue(NOT_READY));
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
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
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone();
    let selector = Selector::try_from(spec.selector.clone())
        .map_err(|e| DaemonSetError::Selector(e.to_string()))?;
    let template = spec.template.clone();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");

    // The revision of the current template.
    let rev_api: Api<ControllerRevision> = Api::namespaced(state.client.clone(), &ns);
    let revisions = history::owned_by(&state.revisions.state(), &ns, &uid);
    let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    let synced = history::sync(
        &rev_api,
        ds.as_ref(),
        &revisions,
        &template,
        collision_count,
    )
    .await?;
    if synced.wrote {
        state
            .guard
            .expectations
            .wrote(&rev_key, synced.update.metadata.resource_version.as_deref());
    }
    let hash = history::hash_of(&synced.update);

    // The pod every node would get, before pinning.
    let mut proto = pod_from_template(ds.as_ref(), &template);
    proto
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let proto_spec = proto.spec.get_or_insert_with(PodSpec::default);
    add_daemon_tolerations(proto_spec);
    let proto_spec = proto_spec.clone();

    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    let in_ns: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let owner = ownership::controller_ref(ds.as_ref());
    let owned = claim::claim(&pods_api, &owner, false, &selector, in_ns, |_| true).await?;
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    let mut homeless: Vec<Arc<Pod>> = Vec::new();
    for pod in owned {
        match target_node(&pod) {
            Some(n) => by_node.entry(n).or_default().push(pod),
            None => homeless.push(pod),
        }
    }
    for pods in by_node.values_mut() {
        pods.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        });
    }

    let mut nodes = state.nodes.state();
    nodes.sort_by_key(|n| n.name_any());
    let desired = nodes
        .iter()
        .filter(|n| should_run(&proto_spec, n).0)
        .count() as i32;
    let (surge, _) = surge_and_unavailable(&ds, desired);

    // Manage: a pod on every eligible node, none elsewhere.
    let mut create: Vec<String> = Vec::new();
    let mut delete: Vec<(Arc<Pod>, Option<String>)> = Vec::new();
    let mut eligible: Vec<NodePods> = Vec::new();
    let mut seen_nodes: HashSet<String> = HashSet::new();
    for node in &nodes {
        let node_name = node.name_any();
        seen_nodes.insert(node_name.clone());
        let pods = by_node.get(&node_name).cloned().unwrap_or_default();
        let (run, keep) = should_run(&proto_spec, node);
        if run {
            eligible.push(NodePods {
                node: node_name.clone(),
                pods: pods.clone(),
            });
        }
        if run && pods.is_empty() {
            create.push(node_name);
        } else if run || keep {
            let mut live: Vec<&Arc<Pod>> = Vec::new();
            for p in pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                if pod_state::phase(p) == "Failed" {
                    delete.push((
                        p.clone(),
                        Some(format!(
                            "Found failed daemon pod {ns}/{} on node {node_name}, will try to kill it",
                            p.name_any()
                        )),
                    ));
                } else {
                    live.push(p);
                }
            }
            // More than one: keep the oldest (with surge, the oldest of each revision).
            if surge == 0 {
                delete.extend(live.iter().skip(1).map(|p| ((*p).clone(), None)));
            } else {
                let (new, old): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
                    live.iter().copied().partition(|p| is_updated(p, &hash));
                delete.extend(new.iter().skip(1).map(|p| ((*p).clone(), None)));
                delete.extend(old.iter().skip(1).map(|p| ((*p).clone(), None)));
            }
        } else {
            delete.extend(
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| (p.clone(), None)),
            );
        }
    }
    // Pods for nodes that are gone (or never named one).
    for (node_name, pods) in &by_node {
        if !seen_nodes.contains(node_name) {
            delete.extend(
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| (p.clone(), None)),
            );
        }
    }
    delete.extend(
        homeless
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.clone(), None)),
    );

    let obj_ref = reference(ds.as_ref());
    let wrote = !create.is_empty() || !delete.is_empty();
    for node_name in &create {
        create_on(&state, &pods_api, &key, &obj_ref, &proto, node_name).await?;
    }
    for (pod, warning) in &delete {
        if let Some(msg) = warning {
            state
                .recorder
                .record(&obj_ref, EventType::Warning, "FailedDaemonPod", msg)
                .await;
        }
        delete_pod(&state, &pods_api, &key, &obj_ref, pod).await?;
    }

    // Rolling update, once the manage step's writes are in the cache.
    if !wrote && !on_delete {
        let (surge, unavailable) = surge_and_unavailable(&ds, eligible.len() as i32);
        let step = rolling_step(
            &eligible,
            &hash,
            surge,
            unavailable,
            min_ready,
            Timestamp::now(),
        );
        for node_name in &step.create {
            create_on(&state, &pods_api, &key, &obj_ref, &proto, node_name).await?;
        }
        for victim in &step.delete {
            let pod = eligible
                .iter()
                .flat_map(|n| n.pods.iter())
                .find(|p| p.name_any() == *victim);
            if let Some(pod) = pod {
                delete_pod(&state, &pods_api, &key, &obj_ref, pod).await?;
            }
        }
    }

    // Old revisions beyond revisionHistoryLimit go, unless a pod still uses them.
    let mut live: HashSet<String> = HashSet::new();
    live.insert(synced.update.name_any());
    let hashes_in_use: HashSet<String> = by_node
        .values()
        .flatten()
        .filter_map(|p| p.labels().get(HASH_LABEL).cloned())
        .collect();
    for r in &revisions {
        if hashes_in_use.contains(&history::hash_of(r)) {
            live.insert(r.name_any());
        }
    }
    history::truncate(
        &rev_api,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    // Status from the cache (pods created above show up as they are observed).
    let now = Timestamp::now();
    let (mut desired, mut current, mut ready_n, mut available, mut updated, mut misscheduled) =
        (0, 0, 0, 0, 0, 0);
    let mut requeue = RESYNC;
    for node in &nodes {
        let (run, _) = should_run(&proto_spec, node);
        let pods: Vec<&Arc<Pod>> = by_node
            .get(&node.name_any())
            .into_iter()
            .flatten()
            .filter(|p| pod_state::is_active(p))
            .collect();
        if run {
            desired += 1;
            if let Some(p) = pods.first() {
                current += 1;
                if pod_state::is_ready(p) {
                    ready_n += 1;
                }
                match pod_state::availability(p, min_ready, now) {
                    Ok(()) => available += 1,
                    Err(Some(wait)) => {
                        requeue = requeue.min(wait.unsigned_abs() + Duration::from_millis(100));
                    }
                    Err(None) => {}
                }
                if is_updated(p, &hash) {
                    updated += 1;
                }
            }
        } else if !pods.is_empty() {
            misscheduled += 1;
        }
    }
    let wanted = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberReady": ready_n,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "updatedNumberScheduled": updated,
        "numberMisscheduled": misscheduled,
        "observedGeneration": ds.metadata.generation,
        "collisionCount": synced.collision_count,
    });
    let current_status = serde_json::to_value(&ds.status).unwrap_or(Value::Null);
    let api: Api<DaemonSet> = Api::namespaced(state.client.clone(), &ns);
    status::write_if_changed(&api, &name, &current_status, &wanted).await?;
    Ok(Action::requeue(requeue))
}

async fn create_on(
    state: &State,
    api: &Api<Pod>,
    key: &str,
    obj_ref: &k8s_openapi::api::core::v1::ObjectReference,
    proto: &Pod,
    node: &str,
) -> Result<(), DaemonSetError> {
    let mut pod = proto.clone();
    pin_to_node(pod.spec.get_or_insert_with(PodSpec::default), node);
    let control = PodControl {
        expectations: &state.guard.expectations,
        key,
        recorder: &state.recorder,
        owner: obj_ref,
    };
    Ok(control.create_all(api, &[pod]).await?)
}

async fn delete_pod(
    state: &State,
    api: &Api<Pod>,
    key: &str,
    obj_ref: &k8s_openapi::api::core::v1::ObjectReference,
    pod: &Pod,
) -> Result<(), DaemonSetError> {
    let control = PodControl {
        expectations: &state.guard.expectations,
        key,
        recorder: &state.recorder,
        owner: obj_ref,
    };
    let message = format!("Deleted pod: {}", pod.name_any());
    Ok(control.delete(api, pod, &message).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use skiff_k8s::testing::pod;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: (*k).into(),
                        effect: (*e).into(),
                        ..Taint::default()
                    })
                    .collect(),
            ),
            ..NodeSpec::default()
        });
        n
    }

    fn daemon_spec() -> PodSpec {
        let mut s = PodSpec::default();
        add_daemon_tolerations(&mut s);
        s
    }

    #[test]
    fn eligibility_follows_selector_affinity_and_taints() {
        let mut spec = daemon_spec();
        assert_eq!(should_run(&spec, &node("a", &[], &[])), (true, true));
        // Daemon pods tolerate cordoned and not-ready nodes.
        assert_eq!(
            should_run(
                &spec,
                &node(
                    "a",
                    &[],
                    &[
                        ("node.kubernetes.io/unschedulable", "NoSchedule"),
                        ("node.kubernetes.io/not-ready", "NoExecute")
                    ]
                )
            ),
            (true, true)
        );
        // An untolerated NoSchedule taint: no new pod, an existing one stays.
        assert_eq!(
            should_run(&spec, &node("a", &[], &[("dedicated", "NoSchedule")])),
            (false, true)
        );
        assert_eq!(
            should_run(&spec, &node("a", &[], &[("dedicated", "NoExecute")])),
            (false, false)
        );
        // PreferNoSchedule does not matter.
        assert_eq!(
            should_run(&spec, &node("a", &[], &[("soft", "PreferNoSchedule")])),
            (true, true)
        );
        spec.node_selector = Some([("disk".to_owned(), "ssd".to_owned())].into());
        assert_eq!(should_run(&spec, &node("a", &[], &[])), (false, false));
        assert_eq!(
            should_run(&spec, &node("a", &[("disk", "ssd")], &[])),
            (true, true)
        );
        let mut pinned = daemon_spec();
        pin_to_node(&mut pinned, "b");
        assert!(!should_run(&pinned, &node("a", &[], &[])).0);
        assert!(should_run(&pinned, &node("b", &[], &[])).0);
    }

    #[test]
    fn tolerations_are_added_once_and_pinning_is_read_back() {
        let mut s = daemon_spec();
        add_daemon_tolerations(&mut s);
        assert_eq!(s.tolerations.as_ref().unwrap().len(), 6);
        s.host_network = Some(true);
        add_daemon_tolerations(&mut s);
        assert_eq!(s.tolerations.as_ref().unwrap().len(), 7);
        let mut p = Pod::default();
        let mut spec = PodSpec::default();
        pin_to_node(&mut spec, "n1");
        p.spec = Some(spec);
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        p.spec.as_mut().unwrap().node_name = Some("n2".into());
        assert_eq!(target_node(&p).as_deref(), Some("n2"));
    }

    fn labelled(name: &str, hash: &str, ready: bool) -> Arc<Pod> {
        let mut p = pod(name, Some("n"), "Running", ready, 100);
        p.metadata.labels = Some([(HASH_LABEL.to_owned(), hash.to_owned())].into());
        Arc::new(p)
    }

    fn nodes(pods: Vec<Vec<Arc<Pod>>>) -> Vec<NodePods> {
        pods.into_iter()
            .enumerate()
            .map(|(i, pods)| NodePods {
                node: format!("n{i}"),
                pods,
            })
            .collect()
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let now = Timestamp::from_second(1000).unwrap();
        let all_old = nodes(vec![
            vec![labelled("a", "old", true)],
            vec![labelled("b", "old", true)],
            vec![labelled("c", "old", true)],
        ]);
        assert_eq!(rolling_step(&all_old, "new", 0, 1, 0, now).delete, ["a"]);
        assert_eq!(
            rolling_step(&all_old, "new", 0, 2, 0, now).delete,
            ["a", "b"]
        );
        // One node is being replaced (its new pod not ready yet): nothing more goes.
        let mid = nodes(vec![
            vec![labelled("a2", "new", false)],
            vec![labelled("b", "old", true)],
            vec![labelled("c", "old", true)],
        ]);
        assert!(rolling_step(&mid, "new", 0, 1, 0, now).delete.is_empty());
        // A node without any pod counts as unavailable too.
        let gap = nodes(vec![
            vec![],
            vec![labelled("b", "old", true)],
            vec![labelled("c", "old", true)],
        ]);
        assert!(rolling_step(&gap, "new", 0, 1, 0, now).delete.is_empty());
        // An old pod that is not available anyway may always be replaced.
        let broken = nodes(vec![
            vec![labelled("a2", "new", false)],
            vec![labelled("b", "old", false)],
        ]);
        assert_eq!(rolling_step(&broken, "new", 0, 1, 0, now).delete, ["b"]);
    }

    #[test]
    fn surge_starts_new_pods_first_and_removes_old_ones_once_available() {
        let now = Timestamp::from_second(1000).unwrap();
        let all_old = nodes(vec![
            vec![labelled("a", "old", true)],
            vec![labelled("b", "old", true)],
        ]);
        let step = rolling_step(&all_old, "new", 1, 0, 0, now);
        assert_eq!((step.create, step.delete.len()), (vec!["n0".to_owned()], 0));
        let surged = nodes(vec![
            vec![labelled("a", "old", true), labelled("a2", "new", true)],
            vec![labelled("b", "old", true)],
        ]);
        let step = rolling_step(&surged, "new", 1, 0, 0, now);
        assert_eq!(step.delete, ["a"]);
        assert_eq!(step.create, ["n1"]);
    }

    #[test]
    fn percentages_round_up_and_zero_zero_means_one() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}}
        }))
        .unwrap();
        assert_eq!(surge_and_unavailable(&ds, 3), (0, 1));
        assert_eq!(surge_and_unavailable(&ds, 25), (0, 3));
        let zero: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {},
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}}
        }))
        .unwrap();
        assert_eq!(surge_and_unavailable(&zero, 3), (0, 1));
    }
}
