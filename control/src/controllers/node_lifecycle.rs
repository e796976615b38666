//! Node lifecycle (kube-controller-manager's node lifecycle controller, its taint manager and
//! the orphan part of pod GC).
//!
//! - A Node whose heartbeat (its Lease in `kube-node-lease`, else its Ready condition's
//!   heartbeat) has not changed for the grace period gets its conditions set to Unknown
//!   ("Kubelet stopped posting node status.") and the taints
//!   `node.kubernetes.io/unreachable:NoSchedule` and `:NoExecute`; a Node reporting Ready=False
//!   gets the `not-ready` pair. The taints go when the heartbeat is fresh and Ready again.
//!   Staleness is measured on this process' clock from when the heartbeat was last seen to
//!   change, as Kubernetes does, so clock skew between hosts does not matter.
//! - Pods on a Node with NoExecute taints are deleted: at once if they do not tolerate one,
//!   else when the shortest matching `tolerationSeconds` since the taint was added has passed
//!   (the API server gives every pod 300 s tolerations for both taints by default).
//! - Pods bound to a Node that no longer exists are deleted (with grace 0: no agent is left to
//!   finish a graceful deletion) once that has held for the grace period.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use skiff_k8s::taints::tolerates;
use tokio::time::Instant;

use crate::client::events::{reference, EventType, Recorder};
use crate::client::Context;

/// Taint of a Node whose heartbeat stopped.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a Node that reports Ready=False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timing of the controller.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long a heartbeat may stand still before the Node counts as unreachable
    /// (`--node-monitor-grace-period`, 40 s as in Kubernetes).
    pub grace_period: Duration,
    /// How often Nodes and pods are checked (`--node-monitor-period`, 5 s).
    pub monitor_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            monitor_period: Duration::from_secs(5),
        }
    }
}

/// The lifecycle taints a Node should carry: `stale` heartbeat, and its Ready status.
pub fn wanted_taint_key(stale: bool, ready: Option<&str>) -> Option<&'static str> {
    if stale {
        Some(UNREACHABLE)
    } else if ready == Some("False") {
        Some(NOT_READY)
    } else {
        None
    }
}

/// The Node's taints with the lifecycle pair set to `wanted` (others kept as they are), or
/// `None` when nothing needs to change. Taints that stay keep their timeAdded.
pub fn reconcile_taints(
    current: &[Taint],
    wanted: Option<&str>,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let lifecycle = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !lifecycle(t) || Some(t.key.as_str()) == wanted)
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.to_owned(),
                    effect: effect.to_owned(),
                    time_added: Some(Time(now)),
                    value: None,
                });
            }
        }
    }
    (next != current).then_some(next)
}

/// When a pod on a Node with these taints is to be deleted: `Some(now-or-past)` at once,
/// `Some(t)` later, `None` never (it tolerates every NoExecute taint without a time limit).
pub fn eviction_due(
    tolerations: &[Toleration],
    taints: &[Taint],
    now: Timestamp,
) -> Option<Timestamp> {
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest limit among the tolerations used; any without a limit means forever
        // only if none has one (Kubernetes' getMinTolerationTime).
        let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        // A limit past the last representable time is forever, as having none.
        let Some(at) = skiff_k8s::time::add_seconds(added, seconds.max(0)) else {
            continue;
        };
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// What identifies a heartbeat: the Lease's renewTime, else the Ready condition's heartbeat.
fn heartbeat(node: &Node, lease: Option<&Lease>) -> String {
    if let Some(t) = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
    {
        return format!("lease:{}", t.0);
    }
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| format!("status:{}", t.0))
        .unwrap_or_default()
}

struct Controller {
    config: Config,
    nodes_api: Api<Node>,
    client: kube::Client,
    recorder: Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    /// node -> (heartbeat, when it was last seen to change).
    seen: HashMap<String, (String, Instant)>,
    /// Nodes currently marked unreachable by this controller.
    unreachable: HashSet<String>,
    /// pod uid -> when it was first seen bound to a missing Node.
    orphans: HashMap<String, Instant>,
    /// Pods already deleted by the taint manager (deletion may take a moment to show).
    evicted: HashSet<String>,
}

impl Controller {
    async fn tick(&mut self) {
        let now = Instant::now();
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        self.seen.retain(|n, _| names.contains(n));
        self.unreachable.retain(|n| names.contains(n));
        for node in &nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let lease = self
                .leases
                .get(&ObjectRef::new(&name).within("kube-node-lease"));
            let beat = heartbeat(node, lease.as_deref());
            let entry = self
                .seen
                .entry(name.clone())
                .or_insert_with(|| (beat.clone(), now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            let stale = now.duration_since(entry.1) > self.config.grace_period;
            if stale {
                if self.unreachable.insert(name.clone()) {
                    self.recorder
                        .record(
                            &reference(node.as_ref()),
                            EventType::Normal,
                            "NodeNotReady",
                            &format!("Node {name} status is now: NodeNotReady"),
                        )
                        .await;
                }
                self.mark_unknown(node).await;
                self.mark_pods_not_ready(&name).await;
            } else {
                self.unreachable.remove(&name);
            }
            let wanted = wanted_taint_key(stale, ready_status(node));
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if let Some(taints) = reconcile_taints(&current, wanted, Timestamp::now()) {
                let patch = json!({
                    "metadata": {"resourceVersion": node.metadata.resource_version},
                    "spec": {"taints": taints},
                });
                if let Err(e) = self
                    .nodes_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    // Changed meanwhile: the next tick sees the new version.
                    tracing::debug!(node = %name, error = %e, "node taints not written");
                }
            }
        }
        self.evict(&nodes, now).await;
    }

    /// Sets the conditions of a Node whose agent went silent to Unknown.
    async fn mark_unknown(&self, node: &Node) {
        let Some(conditions) = node.status.as_ref().and_then(|s| s.conditions.clone()) else {
            return;
        };
        if conditions.iter().all(|c| c.status == "Unknown") {
            return;
        }
        let now = Time(Timestamp::now());
        let conditions: Vec<_> = conditions
            .into_iter()
            .map(|mut c| {
                if c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(now.clone());
                }
                c
            })
            .collect();
        let patch = json!({"status": {"conditions": conditions}});
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Err(e) = self
            .nodes_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(node = %name, error = %e, "node conditions not written");
        }
    }

    /// Sets Ready=False on the pods of a Node whose agent went silent (Kubernetes'
    /// `MarkPodsNotReady`): their endpoints stop receiving traffic at once, long before the
    /// eviction timeout, since nobody can tell whether they still run.
    async fn mark_pods_not_ready(&self, node: &str) {
        let now = Time(Timestamp::now());
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
                continue;
            };
            if !conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                continue;
            }
            let conditions: Vec<_> = conditions
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" {
                        c.status = "False".into();
                        c.reason = Some("NodeNotReady".into());
                        c.message = Some("Node is not ready".into());
                        c.last_transition_time = Some(now.clone());
                    }
                    c
                })
                .collect();
            let (Some(ns), Some(name)) =
                (pod.metadata.namespace.clone(), pod.metadata.name.clone())
            else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"status": {"conditions": conditions}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "pod readiness not written");
            }
        }
    }

    async fn evict(&mut self, nodes: &[std::sync::Arc<Node>], now: Instant) {
        let by_name: HashMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref())))
            .collect();
        let wall = Timestamp::now();
        let pods = self.pods.state();
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.orphans.retain(|uid, _| live.contains(uid.as_str()));
        self.evicted.retain(|uid| live.contains(uid.as_str()));
        for pod in &pods {
            let (Some(uid), Some(node_name)) = (
                pod.metadata.uid.clone(),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty()),
            ) else {
                continue;
            };
            let terminal = skiff_k8s::pod::is_finished(pod);
            let Some(node) = by_name.get(node_name.as_str()) else {
                let since = *self.orphans.entry(uid.clone()).or_insert(now);
                if now.duration_since(since) > self.config.grace_period {
                    self.delete(pod, 0, None).await;
                    self.orphans.remove(&uid);
                }
                continue;
            };
            self.orphans.remove(&uid);
            if terminal || pod.metadata.deletion_timestamp.is_some() || self.evicted.contains(&uid)
            {
                continue;
            }
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default();
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            if eviction_due(tolerations, taints, wall).is_some_and(|due| due <= wall) {
                self.evicted.insert(uid);
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.delete(
                    pod,
                    -1,
                    Some(format!("Marking for deletion Pod {ns}/{name}")),
                )
                .await;
            }
        }
    }

    /// Deletes a pod (grace -1: the pod's own), recording `event` as TaintManagerEviction.
    async fn delete(&self, pod: &Pod, grace: i64, event: Option<String>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: u32::try_from(grace).ok(),
            preconditions: pod
                .metadata
                .uid
                .clone()
                .map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %name, namespace = %ns, "deleted pod of an unreachable or missing node");
                if let Some(message) = event {
                    self.recorder
                        .record(
                            &reference(pod),
                            EventType::Normal,
                            "TaintManagerEviction",
                            &message,
                        )
                        .await;
                }
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "pod not deleted"),
        }
    }
}

/// Runs the controller until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context, config: Config) {
    let client = ctx.client.clone();
    let (node_informer, lease_informer, pod_informer) = (
        ctx.informers.get::<Node>(),
        ctx.informers.get_namespaced::<Lease>("kube-node-lease"),
        ctx.informers.get::<Pod>(),
    );
    let (nodes, leases, pods) = (
        node_informer.store(),
        lease_informer.store(),
        pod_informer.store(),
    );
    let mut controller = Controller {
        config,
        nodes_api: Api::all(client.clone()),
        recorder: ctx.recorder("node-controller"),
        client,
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
        seen: HashMap::new(),
        unreachable: HashSet::new(),
        orphans: HashMap::new(),
        evicted: HashSet::new(),
    };
    let mut tick = tokio::time::interval(config.monitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ready = async {
        tokio::join!(
            node_informer.listed(),
            lease_informer.listed(),
            pod_informer.listed()
        );
    };
    tokio::pin!(ready);
    let mut synced = false;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = &mut ready, if !synced => synced = true,
            // Decide only on complete views.
            _ = tick.tick(), if synced => controller.tick().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn taint(key: &str, effect: &str, added: Option<Timestamp>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: added.map(Time),
            value: None,
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn taints_follow_heartbeat_and_readiness() {
        assert_eq!(wanted_taint_key(true, Some("True")), Some(UNREACHABLE));
        assert_eq!(wanted_taint_key(false, Some("False")), Some(NOT_READY));
        assert_eq!(wanted_taint_key(false, Some("True")), None);
        let now = Timestamp::now();
        let other = taint("dedicated", "NoSchedule", None);
        let added = reconcile_taints(std::slice::from_ref(&other), Some(UNREACHABLE), now).unwrap();
        assert_eq!(added.len(), 3);
        assert!(added
            .iter()
            .any(|t| t.key == UNREACHABLE && t.effect == "NoExecute"));
        assert_eq!(
            reconcile_taints(&added, Some(UNREACHABLE), now),
            None,
            "stable"
        );
        let swapped = reconcile_taints(&added, Some(NOT_READY), now).unwrap();
        assert!(swapped.iter().all(|t| t.key != UNREACHABLE));
        assert_eq!(reconcile_taints(&swapped, None, now).unwrap(), vec![other]);
    }

    #[test]
    fn a_toleration_past_the_last_time_is_forever_not_a_panic() {
        // Stored before validation bounded it (or written straight to the store).
        let now = Timestamp::now();
        let taints = [taint(UNREACHABLE, "NoExecute", Some(now))];
        assert_eq!(
            eviction_due(&[toleration(UNREACHABLE, Some(i64::MAX))], &taints, now),
            None
        );
        assert_eq!(
            eviction_due(
                &[
                    toleration(UNREACHABLE, Some(i64::MAX)),
                    toleration(UNREACHABLE, Some(30))
                ],
                &taints,
                now
            ),
            skiff_k8s::time::add_seconds(now, 30)
        );
    }

    #[test]
    fn eviction_waits_for_the_shortest_toleration() {
        let now = Timestamp::now();
        let added = now - SignedDuration::from_secs(100);
        let taints = [
            taint(UNREACHABLE, "NoExecute", Some(added)),
            taint(UNREACHABLE, "NoSchedule", Some(added)),
        ];
        assert_eq!(eviction_due(&[], &taints, now), Some(now));
        assert_eq!(
            eviction_due(&[toleration(UNREACHABLE, Some(300))], &taints, now),
            Some(added + SignedDuration::from_secs(300))
        );
        assert_eq!(
            eviction_due(
                &[
                    toleration(UNREACHABLE, Some(300)),
                    toleration(UNREACHABLE, Some(30))
                ],
                &taints,
                now
            ),
            Some(added + SignedDuration::from_secs(30))
        );
        assert_eq!(
            eviction_due(&[toleration(UNREACHABLE, None)], &taints, now),
            None
        );
        assert_eq!(
            eviction_due(&[toleration(NOT_READY, None)], &taints, now),
            Some(now)
        );
        assert_eq!(
            eviction_due(&[], &[taint("x", "NoSchedule", None)], now),
            None
        );
    }
}
