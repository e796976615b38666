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
//! - The NoExecute taint, which evicts, is rate limited per zone (`topology.kubernetes.io/zone`;
//!   Nodes without it share the zone "") as kube-controller-manager does: a token bucket of
//!   `--node-eviction-rate` Nodes per second, slower (`--secondary-node-eviction-rate`) or
//!   stopped in a partially disrupted zone, and none at all while every zone is fully disrupted:
//!   when the control plane loses every Node, its own network most likely failed, and evicting
//!   every pod of the cluster would turn a partition into an outage. Decisions are made by
//!   [`Lifecycle::plan`] without I/O, so tests drive them with a fake clock.
//! - Pods bound to a Node that no longer exists are deleted (with grace 0: no agent is left to
//!   finish a graceful deletion) once that has held for the grace period.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use serde_json::json;
use skiff_k8s::taints::tolerates;
use tokio::time::Instant;

use crate::client::events::{reference, EventType, Recorder};
use crate::client::Context;

/// Taint of a Node whose heartbeat stopped.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a Node that reports Ready=False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timing and eviction limits of the controller.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long a heartbeat may stand still before the Node counts as unreachable
    /// (`--node-monitor-grace-period`, 40 s as in Kubernetes).
    pub grace_period: Duration,
    /// How often Nodes and pods are checked (`--node-monitor-period`, 5 s).
    pub monitor_period: Duration,
    /// Nodes per second that may get a NoExecute taint (and so lose their pods) in a zone
    /// that is not partially disrupted (`--node-eviction-rate`, 0.1).
    pub eviction_rate: f64,
    /// The same in a partially disrupted zone larger than `large_cluster_threshold`
    /// (`--secondary-node-eviction-rate`, 0.01).
    pub secondary_eviction_rate: f64,
    /// The fraction of not-Ready Nodes (when more than 2) from which a zone is partially
    /// disrupted (`--unhealthy-zone-threshold`, 0.55).
    pub unhealthy_zone_threshold: f64,
    /// A partially disrupted zone of at most this many Nodes stops evicting altogether
    /// (`--large-cluster-size-threshold`, 50).
    pub large_cluster_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            monitor_period: Duration::from_secs(5),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_threshold: 50,
        }
    }
}

/// The label that places a Node in a zone; Nodes without it share the zone "".
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Nodes with this label are left out of the zone counts (Kubernetes' label of that name).
pub const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";

/// The health of a zone, from the Ready conditions of its Nodes (Kubernetes' zone states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Evictions at `--node-eviction-rate`.
    Normal,
    /// At least 3 Nodes and `--unhealthy-zone-threshold` of them not Ready: evictions slow
    /// down (large zones) or stop (small ones), since the cause is likely the zone, not Nodes.
    PartialDisruption,
    /// No Node Ready. Evictions go on at the normal rate (the zone is gone, its pods are
    /// better elsewhere) unless every zone is in this state.
    FullDisruption,
}

/// The state of a zone with `ready` Ready Nodes and `not_ready` others.
pub fn zone_state(ready: usize, not_ready: usize, unhealthy_threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        return ZoneState::FullDisruption;
    }
    // Divided as Kubernetes does, so that 55 of 100 at 0.55 is partial (multiplying the
    // threshold instead rounds 0.55 * 100 above 55).
    let share = not_ready as f64 / (ready + not_ready) as f64;
    if not_ready > 2 && share >= unhealthy_threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// A token bucket with a burst of one (Kubernetes' eviction limiter burst), full when made.
/// A rate of 0 never gives a token.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: 1.0,
            last: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 || self.rate.is_nan() {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        // A little slack so that 10 ticks of 1 s at 0.1/s make a whole token.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

struct Zone {
    state: ZoneState,
    limiter: TokenBucket,
}

/// What the controller decided to do in one pass; [`Lifecycle::plan`] makes them, the
/// controller carries them out through the API server.
#[derive(Debug, Clone)]
pub enum Action {
    /// Record `NodeNotReady` for the Node.
    NodeNotReady(Arc<Node>),
    /// Set the Node's conditions to Unknown.
    MarkUnknown(Arc<Node>),
    /// Set Ready=False on the pods of the named Node.
    MarkPodsNotReady(String),
    /// Replace the Node's taints.
    SetTaints(Arc<Node>, Vec<Taint>),
    /// Delete the pod; `grace` None means its own grace period; `evicted` records
    /// TaintManagerEviction.
    DeletePod {
        /// The pod.
        pod: Arc<Pod>,
        /// Grace period in seconds, None for the pod's own.
        grace: Option<u32>,
        /// Deleted by the taint manager (not as an orphan).
        evicted: bool,
    },
}

/// A Node as one pass sees it.
struct Seen<'a> {
    node: &'a Arc<Node>,
    name: String,
    stale: bool,
    ready: Option<&'a str>,
    /// When its heartbeat last changed.
    since: Instant,
}

/// The decisions of the node lifecycle controller, free of I/O so that they can be tested
/// with a fake clock.
pub struct Lifecycle {
    config: Config,
    /// node -> (heartbeat, when it was last seen to change).
    seen: HashMap<String, (String, Instant)>,
    /// Nodes currently marked unreachable by this controller.
    unreachable: HashSet<String>,
    /// pod uid -> when it was first seen bound to a missing Node.
    orphans: HashMap<String, Instant>,
    /// Pods already deleted by the taint manager (deletion may take a moment to show).
    evicted: HashSet<String>,
    /// Zone states and their eviction limiters.
    zones: HashMap<String, Zone>,
    /// Every zone fully disrupted: most likely this control plane lost its own network, not
    /// every Node at once, so no NoExecute taint is set and no pod evicted (Kubernetes'
    /// "master disruption mode").
    all_disrupted: bool,
}

impl Lifecycle {
    /// A controller that has seen nothing yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            seen: HashMap::new(),
            unreachable: HashSet::new(),
            orphans: HashMap::new(),
            evicted: HashSet::new(),
            zones: HashMap::new(),
            all_disrupted: false,
        }
    }

    /// The state of `zone`, once a pass has seen it.
    pub fn zone_state(&self, zone: &str) -> Option<ZoneState> {
        self.zones.get(zone).map(|z| z.state)
    }

    /// One pass over every Node and pod at `now` (this process' monotonic clock, for
    /// heartbeats and rates) and `wall` (for taint times and tolerations).
    pub fn plan(
        &mut self,
        nodes: &[Arc<Node>],
        lease: impl Fn(&str) -> Option<Arc<Lease>>,
        pods: &[Arc<Pod>],
        now: Instant,
        wall: Timestamp,
    ) -> Vec<Action> {
        let names: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        self.seen.retain(|n, _| names.contains(n.as_str()));
        self.unreachable.retain(|n| names.contains(n.as_str()));
        let mut seen = Vec::with_capacity(nodes.len());
        for node in nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let beat = heartbeat(node, lease(&name).as_deref());
            let entry = self
                .seen
                .entry(name.clone())
                .or_insert_with(|| (beat.clone(), now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            seen.push(Seen {
                node,
                name,
                stale: now.duration_since(entry.1) > self.config.grace_period,
                ready: ready_status(node),
                since: entry.1,
            });
        }
        if self.handle_disruption(&seen, now) {
            // Leaving full disruption: every Node gets a whole grace period to report again
            // before it counts as unreachable (Kubernetes resets its probe timestamps).
            for (_, since) in self.seen.values_mut() {
                *since = now;
            }
            for s in &mut seen {
                s.stale = false;
                s.since = now;
            }
        }

        let mut actions = Vec::new();
        // (index in `seen`, lifecycle key) of Nodes waiting for their zone's limiter.
        let mut waiting = Vec::new();
        let mut no_execute: Vec<Option<&'static str>> = vec![None; seen.len()];
        for (i, s) in seen.iter().enumerate() {
            if s.stale {
                if self.unreachable.insert(s.name.clone()) {
                    actions.push(Action::NodeNotReady(s.node.clone()));
                }
                actions.push(Action::MarkUnknown(s.node.clone()));
                actions.push(Action::MarkPodsNotReady(s.name.clone()));
            } else {
                self.unreachable.remove(&s.name);
            }
            let Some(key) = wanted_taint_key(s.stale, s.ready) else {
                continue;
            };
            if self.all_disrupted {
                continue;
            }
            let has_no_execute = |k: &str| {
                taints_of(s.node)
                    .iter()
                    .any(|t| t.effect == "NoExecute" && t.key == k)
            };
            // Already tainted, or swapping not-ready for unreachable (or back): the Node was
            // counted against the limit when it was first tainted.
            if has_no_execute(UNREACHABLE) || has_no_execute(NOT_READY) {
                no_execute[i] = Some(key);
            } else {
                waiting.push((i, key));
            }
        }
        // The longest-silent first, as Kubernetes' queue orders them by when they were added.
        waiting.sort_by_key(|&(i, _)| seen[i].since);
        for (i, key) in waiting {
            let zone = self.zones.get_mut(zone_of(seen[i].node));
            if zone.is_some_and(|z| z.limiter.try_take(now)) {
                no_execute[i] = Some(key);
            }
        }
        for (i, s) in seen.iter().enumerate() {
            let wanted = wanted_taint_key(s.stale, s.ready);
            if let Some(taints) = reconcile_taints(taints_of(s.node), wanted, no_execute[i], wall) {
                actions.push(Action::SetTaints(s.node.clone(), taints));
            }
        }
        self.evict(nodes, pods, now, wall, &mut actions);
        actions
    }

    /// Updates the zone states and their limiters from this pass' view; true when the cluster
    /// just left full disruption.
    fn handle_disruption(&mut self, seen: &[Seen<'_>], now: Instant) -> bool {
        // zone -> (ready, not ready)
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for s in seen {
            if s.node.labels().contains_key(EXCLUDE_DISRUPTION) {
                continue;
            }
            let count = counts.entry(zone_of(s.node)).or_default();
            if !s.stale && s.ready == Some("True") {
                count.0 += 1;
            } else {
                count.1 += 1;
            }
        }
        self.zones.retain(|z, _| counts.contains_key(z.as_str()));
        let states: HashMap<&str, ZoneState> = counts
            .iter()
            .map(|(z, (r, n))| (*z, zone_state(*r, *n, self.config.unhealthy_zone_threshold)))
            .collect();
        let all_now =
            !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
        let was = self.all_disrupted;
        self.all_disrupted = all_now;
        if all_now && !was {
            tracing::warn!(
                "Controller detected that all Nodes are not-Ready. Entering master disruption mode"
            );
        }
        let leaving = was && !all_now;
        if leaving {
            tracing::info!(
                "Controller detected that some Nodes are Ready. Exiting master disruption mode"
            );
        }
        for (zone, state) in states {
            let size = counts[zone].0 + counts[zone].1;
            let rate = if all_now { 0.0 } else { self.rate(state, size) };
            match self.zones.get_mut(zone) {
                Some(z) if z.state == state && !leaving && (!all_now || z.limiter.rate == 0.0) => {}
                Some(z) => {
                    if z.state != state {
                        tracing::info!(zone, from = ?z.state, to = ?state, "zone state changed");
                    }
                    *z = Zone {
                        state,
                        limiter: TokenBucket::new(rate, now),
                    };
                }
                None => {
                    self.zones.insert(
                        zone.to_owned(),
                        Zone {
                            state,
                            limiter: TokenBucket::new(rate, now),
                        },
                    );
                }
            }
        }
        leaving
    }

    /// The eviction rate of a zone in `state` with `size` Nodes.
    fn rate(&self, state: ZoneState, size: usize) -> f64 {
        match state {
            ZoneState::Normal | ZoneState::FullDisruption => self.config.eviction_rate,
            ZoneState::PartialDisruption if size > self.config.large_cluster_threshold => {
                self.config.secondary_eviction_rate
            }
            ZoneState::PartialDisruption => 0.0,
        }
    }

    fn evict(
        &mut self,
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
        now: Instant,
        wall: Timestamp,
        actions: &mut Vec<Action>,
    ) {
        let by_name: HashMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref())))
            .collect();
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.orphans.retain(|uid, _| live.contains(uid.as_str()));
        self.evicted.retain(|uid| live.contains(uid.as_str()));
        for pod in pods {
            let (Some(uid), Some(node_name)) = (
                pod.metadata.uid.clone(),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .filter(|n| !n.is_empty()),
            ) else {
                continue;
            };
            let Some(node) = by_name.get(node_name) else {
                let since = *self.orphans.entry(uid.clone()).or_insert(now);
                if now.duration_since(since) > self.config.grace_period {
                    actions.push(Action::DeletePod {
                        pod: pod.clone(),
                        grace: Some(0),
                        evicted: false,
                    });
                    self.orphans.remove(&uid);
                }
                continue;
            };
            self.orphans.remove(&uid);
            // In full disruption the Nodes' NoExecute taints are being removed; the ones this
            // pass still sees must not evict.
            if self.all_disrupted
                || skiff_k8s::pod::is_finished(pod)
                || pod.metadata.deletion_timestamp.is_some()
                || self.evicted.contains(&uid)
            {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            if eviction_due(tolerations, taints_of(node), wall).is_some_and(|due| due <= wall) {
                self.evicted.insert(uid);
                actions.push(Action::DeletePod {
                    pod: pod.clone(),
                    grace: None,
                    evicted: true,
                });
            }
        }
    }
}

fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn zone_of(node: &Node) -> &str {
    node.labels().get(ZONE_LABEL).map_or("", String::as_str)
}

/// Carries out a pass' actions through the API server.
struct Controller {
    lifecycle: Lifecycle,
    nodes_api: Api<Node>,
    client: kube::Client,
    recorder: Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
}

impl Controller {
    async fn tick(&mut self) {
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        let leases = &self.leases;
        let actions = self.lifecycle.plan(
            &nodes,
            |name| leases.get(&ObjectRef::new(name).within("kube-node-lease")),
            &pods,
            Instant::now(),
            Timestamp::now(),
        );
        for action in actions {
            match action {
                Action::NodeNotReady(node) => {
                    let name = node.name_any();
                    self.recorder
                        .record(
                            &reference(node.as_ref()),
                            EventType::Normal,
                            "NodeNotReady",
                            &format!("Node {name} status is now: NodeNotReady"),
                        )
                        .await;
                }
                Action::MarkUnknown(node) => self.mark_unknown(&node).await,
                Action::MarkPodsNotReady(node) => self.mark_pods_not_ready(&node).await,
                Action::SetTaints(node, taints) => self.set_taints(&node, &taints).await,
                Action::DeletePod {
                    pod,
                    grace,
                    evicted,
                } => self.delete(&pod, grace, evicted).await,
            }
        }
    }

    async fn set_taints(&self, node: &Node, taints: &[Taint]) {
        let name = node.name_any();
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

    /// Deletes a pod (grace None: the pod's own), recording TaintManagerEviction if `evicted`.
    async fn delete(&self, pod: &Pod, grace: Option<u32>, evicted: bool) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: grace,
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
                if evicted {
                    let message = format!("Marking for deletion Pod {ns}/{name}");
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
        lifecycle: Lifecycle::new(config),
        nodes_api: Api::all(client.clone()),
        recorder: ctx.recorder("node-controller"),
        client,
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
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

/// The Node's taints with the lifecycle NoSchedule taint set to `no_schedule` and the
/// NoExecute one to `no_execute` (others kept as they are), or `None` when nothing needs to
/// change. Taints that stay keep their timeAdded.
pub fn reconcile_taints(
    current: &[Taint],
    no_schedule: Option<&str>,
    no_execute: Option<&str>,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let wanted = |effect: &str| match effect {
        "NoSchedule" => no_schedule,
        "NoExecute" => no_execute,
        _ => None,
    };
    let lifecycle = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !lifecycle(t) || Some(t.key.as_str()) == wanted(&t.effect))
        .cloned()
        .collect();
    for effect in ["NoSchedule", "NoExecute"] {
        let Some(key) = wanted(effect) else {
            continue;
        };
        if !next.iter().any(|t| t.key == key && t.effect == effect) {
            next.push(Taint {
                key: key.to_owned(),
                effect: effect.to_owned(),
                time_added: Some(Time(now)),
                value: None,
            });
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
        let u = Some(UNREACHABLE);
        let added = reconcile_taints(std::slice::from_ref(&other), u, u, now).unwrap();
        assert_eq!(added.len(), 3);
        assert!(added
            .iter()
            .any(|t| t.key == UNREACHABLE && t.effect == "NoExecute"));
        assert_eq!(reconcile_taints(&added, u, u, now), None, "stable");
        let swapped = reconcile_taints(&added, Some(NOT_READY), Some(NOT_READY), now).unwrap();
        assert!(swapped.iter().all(|t| t.key != UNREACHABLE));
        let held = reconcile_taints(&swapped, Some(NOT_READY), None, now).unwrap();
        assert_eq!(held.len(), 2, "NoExecute withheld: {held:?}");
        assert_eq!(
            reconcile_taints(&swapped, None, None, now).unwrap(),
            vec![other]
        );
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

    /// A cluster driven by a fake clock: Nodes with Leases, pods bound to them.
    struct Sim {
        lifecycle: Lifecycle,
        nodes: Vec<Arc<Node>>,
        pods: Vec<Arc<Pod>>,
        /// node -> heartbeats so far.
        beats: HashMap<String, i64>,
        base: Instant,
        wall: Timestamp,
        /// (second, pod) of every deletion.
        deleted: Vec<(u64, String)>,
        /// (second, node) of every NoExecute taint set.
        tainted: Vec<(u64, String)>,
    }

    impl Sim {
        /// `zones`: (zone, Nodes in it); each Node runs two pods.
        fn new(zones: &[(&str, usize)]) -> Self {
            let mut nodes = Vec::new();
            let mut pods = Vec::new();
            for (zone, count) in zones {
                for i in 0..*count {
                    let name = format!("{zone}-n{i}");
                    let mut node = Node::default();
                    node.metadata.name = Some(name.clone());
                    if !zone.is_empty() {
                        node.labels_mut().insert(ZONE_LABEL.into(), (*zone).into());
                    }
                    node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
                        conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    });
                    nodes.push(Arc::new(node));
                    for p in 0..2 {
                        let mut pod = Pod::default();
                        pod.metadata.name = Some(format!("{name}-p{p}"));
                        pod.metadata.namespace = Some("default".into());
                        pod.metadata.uid = Some(format!("uid-{name}-p{p}"));
                        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                            node_name: Some(name.clone()),
                            ..Default::default()
                        });
                        pods.push(Arc::new(pod));
                    }
                }
            }
            Self {
                lifecycle: Lifecycle::new(Config::default()),
                nodes,
                pods,
                beats: HashMap::new(),
                base: Instant::now(),
                wall: Timestamp::now(),
                deleted: Vec::new(),
                tainted: Vec::new(),
            }
        }

        /// The Node's agent renews its Lease and reports Ready.
        fn beat(&mut self, node: &str) {
            *self.beats.entry(node.to_owned()).or_default() += 1;
            let slot = self
                .nodes
                .iter_mut()
                .find(|n| n.name_any() == node)
                .unwrap();
            if ready_status(slot) != Some("True") {
                let mut next = (**slot).clone();
                for c in next.status.as_mut().unwrap().conditions.as_mut().unwrap() {
                    c.status = "True".into();
                }
                *slot = Arc::new(next);
            }
        }

        /// Every Node but `silent` renews its Lease.
        fn beat_all_but(&mut self, silent: impl Fn(&str) -> bool) {
            let names: Vec<String> = self.nodes.iter().map(|n| n.name_any()).collect();
            for name in names.iter().filter(|n| !silent(n)) {
                self.beat(name);
            }
        }

        /// One pass at `second`, its actions applied to the objects.
        fn step(&mut self, second: u64) {
            let wall = self.wall + SignedDuration::from_secs(second as i64);
            let (beats, base_wall) = (&self.beats, self.wall);
            let actions = self.lifecycle.plan(
                &self.nodes,
                |name| {
                    let count = *beats.get(name)?;
                    Some(Arc::new(Lease {
                        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                            renew_time: Some(
                                k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                                    base_wall + SignedDuration::from_secs(count),
                                ),
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
                },
                &self.pods,
                self.base + Duration::from_secs(second),
                wall,
            );
            for action in actions {
                match action {
                    Action::SetTaints(node, taints) => {
                        let name = node.name_any();
                        let had = taints_of(&node).iter().any(|t| t.effect == "NoExecute");
                        if !had && taints.iter().any(|t| t.effect == "NoExecute") {
                            self.tainted.push((second, name.clone()));
                        }
                        let slot = self
                            .nodes
                            .iter_mut()
                            .find(|n| n.name_any() == name)
                            .unwrap();
                        let mut next = (**slot).clone();
                        next.spec.get_or_insert_with(Default::default).taints = Some(taints);
                        *slot = Arc::new(next);
                    }
                    Action::MarkUnknown(node) => {
                        let name = node.name_any();
                        let slot = self
                            .nodes
                            .iter_mut()
                            .find(|n| n.name_any() == name)
                            .unwrap();
                        let mut next = (**slot).clone();
                        for c in next.status.as_mut().unwrap().conditions.as_mut().unwrap() {
                            c.status = "Unknown".into();
                        }
                        *slot = Arc::new(next);
                    }
                    Action::DeletePod { pod, .. } => {
                        let name = pod.name_any();
                        self.pods.retain(|p| p.name_any() != name);
                        self.deleted.push((second, name));
                    }
                    Action::NodeNotReady(_) | Action::MarkPodsNotReady(_) => {}
                }
            }
        }

        /// Runs passes every `period` seconds from `from` to `to`, `silent` Nodes not beating.
        fn run(&mut self, from: u64, to: u64, period: u64, silent: impl Fn(&str) -> bool) {
            for second in (from..=to).step_by(period as usize) {
                self.beat_all_but(&silent);
                self.step(second);
            }
        }

        fn no_execute(&self, node: &str) -> bool {
            let node = self.nodes.iter().find(|n| n.name_any() == node).unwrap();
            taints_of(node).iter().any(|t| t.effect == "NoExecute")
        }
    }

    #[test]
    fn zone_states_follow_kubernetes_thresholds() {
        assert_eq!(zone_state(0, 1, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 0, 0.55), ZoneState::Normal);
        // Two not-Ready Nodes never make a partial disruption, however small the zone.
        assert_eq!(zone_state(1, 2, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(45, 55, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(46, 54, 0.55), ZoneState::Normal);
    }

    #[test]
    fn every_node_silent_past_the_toleration_evicts_nothing() {
        let mut sim = Sim::new(&[("", 3)]);
        sim.run(0, 0, 5, |_| false);
        // The control plane's network fails: no Lease moves for ten minutes.
        sim.run(5, 600, 5, |_| true);
        assert_eq!(sim.deleted, [], "no pod evicted");
        assert_eq!(sim.tainted, [], "no NoExecute taint set");
        assert_eq!(
            sim.lifecycle.zone_state(""),
            Some(ZoneState::FullDisruption)
        );
        // NoSchedule still keeps new pods off Nodes nobody hears from.
        assert!(sim.nodes.iter().all(|n| taints_of(n)
            .iter()
            .any(|t| t.key == UNREACHABLE && t.effect == "NoSchedule")));

        // The network comes back: the Nodes report and nothing is evicted afterwards either.
        sim.run(605, 900, 5, |_| false);
        assert_eq!(sim.deleted, []);
        assert_eq!(sim.lifecycle.zone_state(""), Some(ZoneState::Normal));
    }

    #[test]
    fn one_of_three_nodes_down_loses_its_pods() {
        let mut sim = Sim::new(&[("", 3)]);
        let down = |n: &str| n == "-n1";
        sim.run(0, 0, 5, |_| false);
        sim.run(5, 120, 5, down);
        assert_eq!(
            sim.tainted,
            [(45, "-n1".to_owned())],
            "tainted once past the grace"
        );
        let mut deleted: Vec<&str> = sim.deleted.iter().map(|(_, p)| p.as_str()).collect();
        deleted.sort_unstable();
        assert_eq!(deleted, ["-n1-p0", "-n1-p1"]);
        assert!(!sim.no_execute("-n0") && !sim.no_execute("-n2"));
        assert_eq!(sim.lifecycle.zone_state(""), Some(ZoneState::Normal));
    }

    #[test]
    fn evictions_are_spaced_by_the_zone_rate() {
        let mut sim = Sim::new(&[("z", 10)]);
        let down = |n: &str| ["z-n0", "z-n1", "z-n2", "z-n3"].contains(&n);
        sim.run(0, 0, 1, |_| false);
        sim.run(1, 200, 1, down);
        let seconds: Vec<u64> = sim.tainted.iter().map(|(s, _)| *s).collect();
        // 0.1 Nodes per second: one at once past the grace period, then one every 10 s.
        assert_eq!(seconds, [41, 51, 61, 71], "{:?}", sim.tainted);
        assert_eq!(sim.deleted.len(), 8);
        assert_eq!(sim.lifecycle.zone_state("z"), Some(ZoneState::Normal));
    }

    #[test]
    fn a_small_partially_disrupted_zone_stops_evicting() {
        let mut sim = Sim::new(&[("z", 10)]);
        let down = |n: &str| n < "z-n6";
        sim.run(0, 0, 5, |_| false);
        sim.run(5, 600, 5, down);
        assert_eq!(
            sim.lifecycle.zone_state("z"),
            Some(ZoneState::PartialDisruption)
        );
        assert_eq!(sim.tainted, []);
        assert_eq!(sim.deleted, []);
    }

    #[test]
    fn a_large_partially_disrupted_zone_evicts_at_the_secondary_rate() {
        let mut sim = Sim::new(&[("z", 60)]);
        // 40 of 60 (two thirds) silent.
        let down = |n: &str| n.trim_start_matches("z-n").parse::<u32>().unwrap() < 40;
        sim.run(0, 0, 10, |_| false);
        sim.run(10, 400, 10, down);
        let seconds: Vec<u64> = sim.tainted.iter().map(|(s, _)| *s).collect();
        // The zone turns partial when the silent Nodes go stale (50 s), with a fresh bucket
        // of 0.01 Nodes per second: one Node at once, the next 100 s later.
        assert_eq!(seconds, [50, 150, 250, 350], "{:?}", sim.tainted);
    }

    #[test]
    fn a_zone_fully_down_while_another_is_up_is_evicted() {
        let mut sim = Sim::new(&[("a", 2), ("b", 2)]);
        let down = |n: &str| n.starts_with("a-");
        sim.run(0, 0, 5, |_| false);
        sim.run(5, 120, 5, down);
        assert_eq!(
            sim.lifecycle.zone_state("a"),
            Some(ZoneState::FullDisruption)
        );
        assert_eq!(
            sim.tainted,
            [(45, "a-n0".to_owned()), (55, "a-n1".to_owned())]
        );
        assert_eq!(sim.deleted.len(), 4);
    }
}
