//! The scheduler: assigns pending pods to nodes.
//!
//! One task owns a [`Cache`] fed by the shared pod and node informers ([`crate::client`]). A pod without a node waits in a
//! queue; for each, the filters keep the nodes it fits, the scores pick the best, the pod is
//! *assumed* there at once (so the next pods see its requests) and the binding is POSTed to
//! `pods/{name}/binding` in the background, many at a time; a failed binding drops the
//! assumption and the pod waits again. Pods that fit nowhere wait until a node changes or a pod
//! leaves a node, as kube-scheduler's unschedulable queue; one that waited five minutes with
//! nothing changing is tried again anyway (kube-scheduler's `podMaxInUnschedulablePodsDuration`).

pub mod cache;
pub mod filter;
pub mod resources;
pub mod score;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::client::events::{EventType, Recorder};
use crate::client::informers::Change;
use crate::client::Context;
use cache::{Cache, PodInfo, DEFAULT_SCHEDULER};
use filter::{filter, forbidden_domains, Reason};

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bindings in flight at once.
    pub parallel_binds: usize,
    /// How long an unschedulable pod waits for a cluster change before it is tried again
    /// anyway (kube-scheduler: `podMaxInUnschedulablePodsDuration`, 5 minutes).
    pub max_unschedulable_wait: Duration,
    /// How often pods that waited that long are looked for (kube-scheduler: every 30 s).
    pub leftover_check: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            parallel_binds: 64,
            max_unschedulable_wait: Duration::from_secs(300),
            leftover_check: Duration::from_secs(30),
        }
    }
}

/// The outcome of one binding.
struct BindDone {
    uid: String,
    node: String,
    result: Result<(), kube::Error>,
}

/// An Event to write.
struct Note {
    pod: ObjectReference,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// What the scheduler decided for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind it here.
    Node(String),
    /// It fits nowhere, for these reasons.
    Unschedulable(String),
}

/// The scheduling state: cache and queues. Separate from the I/O so tests drive it directly.
#[derive(Default)]
pub struct Scheduler {
    /// Nodes and pods.
    pub cache: Cache,
    active: VecDeque<String>,
    queued: HashSet<String>,
    /// Pods that fit nowhere, with when they were parked. Each waits for a cluster change or
    /// for its own wait to run out: retrying all of them on one clock made 10 000 pending pods
    /// cost a burst of decisions and Event writes every 30 s.
    unschedulable: HashMap<String, Instant>,
    binding: HashSet<String>,
    /// Rotates the tie-break among equally scored nodes.
    turn: usize,
}

impl Scheduler {
    /// Queues a pod that waits (once).
    fn enqueue(&mut self, uid: String) {
        if self.binding.contains(&uid) {
            return;
        }
        self.unschedulable.remove(&uid);
        if self.queued.insert(uid.clone()) {
            self.active.push_back(uid);
        }
    }

    /// Moves every unschedulable pod back to the active queue.
    pub fn retry_unschedulable(&mut self) {
        let waiting: Vec<String> = self.unschedulable.drain().map(|(uid, _)| uid).collect();
        for uid in waiting {
            self.enqueue(uid);
        }
    }

    /// Moves the unschedulable pods parked at least `max_wait` before `now` back to the active
    /// queue (kube-scheduler's `flushUnschedulablePodsLeftover`).
    pub fn retry_leftover(&mut self, now: Instant, max_wait: Duration) {
        let due: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, parked)| now.saturating_duration_since(**parked) >= max_wait)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            self.enqueue(uid);
        }
    }

    fn park(&mut self, uid: String) {
        self.unschedulable.insert(uid, Instant::now());
    }

    /// Applies a pod event.
    pub fn on_pod(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.pod_applied(pod),
            watcher::Event::Delete(pod) => self.pod_deleted(&pod),
            watcher::Event::Init => {}
            watcher::Event::InitDone => {}
        }
    }

    /// A pod was created or changed.
    pub fn pod_applied(&mut self, pod: impl Into<Arc<Pod>>) {
        let pod: Arc<Pod> = pod.into();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let change = self.cache.apply_pod(pod);
        if change.pending {
            // A pod already known unschedulable waits for a cluster change, not for
            // updates of itself.
            if !self.unschedulable.contains_key(&uid) {
                self.enqueue(uid);
            }
        }
        if change.freed {
            self.retry_unschedulable();
        }
    }

    /// A pod was deleted.
    pub fn pod_deleted(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.unschedulable.remove(&uid);
        if self.cache.delete_pod(&uid) {
            self.retry_unschedulable();
        }
    }

    /// Applies a node event.
    pub fn on_node(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                if self.cache.apply_node(node) {
                    self.retry_unschedulable();
                }
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name {
                    self.cache.delete_node(&name);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// Decides where pod `uid` goes. Pure: reads the cache only.
    pub fn decide(&mut self, pod: &PodInfo) -> Decision {
        let forbidden = forbidden_domains(pod, &self.cache);
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut feasible = Vec::new();
        let mut total = 0;
        for info in self.cache.nodes.values() {
            if info.node.is_none() {
                continue;
            }
            total += 1;
            match filter(pod, info, &forbidden) {
                Ok(()) => feasible.push(info),
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Decision::Unschedulable(score::failure_message(total, &reasons));
        }
        let max_owned = pod
            .owner
            .as_ref()
            .map(|o| {
                feasible
                    .iter()
                    .map(|n| n.owners.get(o).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        // Ties go round-robin from a rotating start, so equal nodes take turns.
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % feasible.len();
        let mut best: Option<(u64, &str)> = None;
        for i in 0..feasible.len() {
            let n = feasible[(start + i) % feasible.len()];
            let s = score::least_allocated(pod, n) + score::spread(pod, n, max_owned);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, n.name()));
            }
        }
        Decision::Node(best.map(|(_, n)| n.to_owned()).unwrap_or_default())
    }

    /// Takes the next pod that still waits, with its decision. The pod is assumed on its node
    /// and marked as binding; a pod that fits nowhere is parked as unschedulable.
    pub fn next_decision(&mut self) -> Option<(PodInfo, Decision)> {
        while let Some(uid) = self.active.pop_front() {
            self.queued.remove(&uid);
            let Some(pod) = self.cache.pods.get(&uid).cloned() else {
                continue;
            };
            if !pod.wants_scheduling() {
                continue;
            }
            let decision = self.decide(&pod);
            match &decision {
                Decision::Node(node) => {
                    self.cache.assume(&uid, node);
                    self.binding.insert(uid);
                }
                Decision::Unschedulable(_) => self.park(uid),
            }
            return Some((pod, decision));
        }
        None
    }

    /// Records the end of a binding; a failed one makes the pod wait again.
    pub fn bound(&mut self, uid: &str, ok: bool) {
        self.binding.remove(uid);
        if !ok && self.cache.forget(uid) {
            self.park(uid.to_owned());
        }
    }

    /// Pods waiting in the active queue.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Whether pod `uid` is parked as unschedulable.
    pub fn is_unschedulable(&self, uid: &str) -> bool {
        self.unschedulable.contains_key(uid)
    }
}

fn reference(pod: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        namespace: Some(pod.namespace.clone()),
        uid: Some(pod.uid.clone()),
        resource_version: pod.pod.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

async fn bind(client: kube::Client, pod: PodInfo, node: String) -> BindDone {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..ObjectReference::default()
        },
    };
    let result = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map(drop);
    BindDone {
        uid: pod.uid,
        node,
        result,
    }
}

/// Writes events from a bounded queue; when the API cannot keep up, events are dropped rather
/// than slowing scheduling (client-go's broadcaster drops too). The PodScheduled condition,
/// which must not be dropped, is written by [`status::write`].
async fn write_events(recorder: Recorder, mut notes: mpsc::Receiver<Note>) {
    while let Some(n) = notes.recv().await {
        recorder.record(&n.pod, n.kind, n.reason, &n.message).await;
    }
}

enum Input {
    Pod(Change<Pod>),
    Node(Change<Node>),
}

/// Runs the scheduler until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) {
    run_with(ctx, Config::default()).await
}

/// [`run`] with explicit tuning.
pub async fn run_with(ctx: Context, config: Config) {
    let client = ctx.client.clone();
    // The shared informers: the scheduler's cache keeps the informer's pod `Arc`s, not copies.
    let mut inputs = futures::stream::select(
        ctx.informers.get::<Pod>().changes().map(Input::Pod),
        ctx.informers.get::<Node>().changes().map(Input::Node),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<BindDone>();
    let (note_tx, note_rx) = mpsc::channel::<Note>(4096);
    let events = tokio::spawn(write_events(ctx.recorder(DEFAULT_SCHEDULER), note_rx));
    let conditions = Arc::new(status::Conditions::default());
    let condition_writer = tokio::spawn(status::write(
        client.clone(),
        conditions.clone(),
        ctx.shutdown.clone(),
    ));
    let permits = Arc::new(Semaphore::new(config.parallel_binds.max(1)));
    let mut retry = tokio::time::interval(config.leftover_check);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sched = Scheduler::default();
    let (mut pods_synced, mut nodes_synced) = (false, false);
    let note = |n: Note| {
        if note_tx.try_send(n).is_err() {
            tracing::debug!("event queue full, dropping a scheduler event");
        }
    };
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            input = inputs.next() => match input {
                None => break,
                // A (re-)list arrives whole, so nothing is decided on half a view.
                Some(Input::Pod(Change::Listed(pods))) => {
                    let waiting = sched.cache.replace_pods(pods);
                    for uid in waiting {
                        sched.enqueue(uid);
                    }
                    sched.retry_unschedulable();
                    pods_synced = true;
                }
                Some(Input::Pod(Change::Applied(pod))) => sched.pod_applied(pod),
                Some(Input::Pod(Change::Deleted(pod))) => {
                    conditions.forget(pod.metadata.uid.as_deref().unwrap_or_default());
                    sched.pod_deleted(&pod)
                }
                Some(Input::Node(Change::Listed(nodes))) => {
                    sched
                        .cache
                        .replace_nodes(nodes.iter().map(|n| Node::clone(n)).collect());
                    sched.retry_unschedulable();
                    nodes_synced = true;
                }
                Some(Input::Node(Change::Applied(node))) => {
                    sched.on_node(watcher::Event::Apply(Node::clone(&node)))
                }
                Some(Input::Node(Change::Deleted(node))) => {
                    sched.on_node(watcher::Event::Delete(Node::clone(&node)))
                }
            },
            Some(done) = done_rx.recv() => {
                let ok = done.result.is_ok();
                let pod = sched.cache.pods.get(&done.uid).cloned();
                match (&done.result, pod) {
                    (Ok(()), Some(pod)) => note(Note {
                        message: format!("Successfully assigned {}/{} to {}", pod.namespace, pod.name, done.node),
                        pod: reference(&pod), kind: EventType::Normal, reason: "Scheduled",
                    }),
                    (Err(e), Some(pod)) => {
                        tracing::info!(pod = %pod.name, node = %done.node, error = %e, "binding failed");
                        // A pod that is gone or already bound needs no event; the watch tells.
                        let benign = matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                        if !benign {
                            note(Note {
                                message: format!("Binding rejected: {e}"),
                                pod: reference(&pod), kind: EventType::Warning, reason: "FailedScheduling",
                                    });
                        }
                    }
                    (_, None) => {}
                }
                sched.bound(&done.uid, ok);
            }
            _ = retry.tick() => sched.retry_leftover(Instant::now(), config.max_unschedulable_wait),
        }
        if !(pods_synced && nodes_synced) {
            continue;
        }
        loop {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let Some((pod, decision)) = sched.next_decision() else {
                break;
            };
            match decision {
                Decision::Node(node) => {
                    conditions.forget(&pod.uid);
                    let (client, done_tx) = (client.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let done = bind(client, pod, node).await;
                        drop(permit);
                        let _ = done_tx.send(done);
                    });
                }
                Decision::Unschedulable(message) => {
                    tracing::debug!(pod = %pod.name, %message, "unschedulable");
                    conditions.unschedulable(reference(&pod), message.clone());
                    note(Note {
                        pod: reference(&pod),
                        kind: EventType::Warning,
                        reason: "FailedScheduling",
                        message,
                    });
                }
            }
        }
    }
    // Unwritten events are advice: they are not worth delaying shutdown for; conditions are
    // decided again by whichever scheduler leads next.
    events.abort();
    condition_writer.abort();
}

#[cfg(test)]
mod tests;
