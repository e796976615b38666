//! The scheduler's view of the cluster: nodes with what is bound to them, and pods.
//!
//! Fed from watches, plus *assumptions*: a pod the scheduler has decided to bind counts on its
//! node at once, before the API server has confirmed the binding and the watch has shown it,
//! so that the next decisions (made while bindings are still in flight) see it. An assumption
//! ends when the watch shows the pod bound, when the pod goes away, or when its binding fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use skiff_k8s::quantity;

use super::resources::{pod_requests, Resources};

/// The scheduler name pods get by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What the scheduler keeps about a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod as last seen.
    pub pod: Arc<Pod>,
    /// uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it is bound to (or assumed on).
    pub node: Option<String>,
    /// Requests, for fitting.
    pub requests: Resources,
    /// Requests with kube-scheduler's non-zero defaults, for scoring.
    pub nonzero: Resources,
    /// The uid of its controlling owner, for spreading replicas.
    pub owner: Option<String>,
    /// Required anti-affinity terms.
    pub anti_affinity: Vec<PodAffinityTerm>,
    /// The host ports its containers take (empty for almost every pod: no allocation).
    pub host_ports: Vec<HostPort>,
}

/// A port a pod takes on its node's addresses (kube-scheduler's `HostPortInfo` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host address; `0.0.0.0` (every address) when the pod names none.
    pub ip: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    const ANY: &'static str = "0.0.0.0";

    /// Whether two pods could not both bind these (the same protocol and port, and the same
    /// address or either on every address).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || self.ip == Self::ANY || other.ip == Self::ANY)
    }

    /// The host ports of a pod's containers (`hostPort` set; a hostNetwork pod's are
    /// defaulted to its container ports by the API server).
    fn of(pod: &Pod) -> Vec<HostPort> {
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        containers
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| Self::ANY.to_owned()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                port: p.host_port.unwrap_or_default(),
            })
            .collect()
    }
}

impl PodInfo {
    /// Reads a pod; `None` without a uid. Takes the informer's `Arc` as it is, so the
    /// scheduler shares the cached pod instead of keeping a copy.
    pub fn new(pod: impl Into<Arc<Pod>>) -> Option<Self> {
        let pod: Arc<Pod> = pod.into();
        let uid = pod.metadata.uid.clone()?;
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let anti_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        Some(Self {
            host_ports: HostPort::of(&pod),
            requests: pod_requests(&pod, false),
            nonzero: pod_requests(&pod, true),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid,
            node,
            owner,
            anti_affinity,
            pod,
        })
    }

    /// Finished pods hold no resources.
    pub fn terminal(&self) -> bool {
        skiff_k8s::pod::is_finished(&self.pod)
    }

    /// Waiting for this scheduler.
    pub fn wants_scheduling(&self) -> bool {
        let spec = self.pod.spec.as_ref();
        self.node.is_none()
            && self.pod.metadata.deletion_timestamp.is_none()
            && !self.terminal()
            && spec
                .and_then(|s| s.scheduler_name.as_deref())
                .is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER)
    }

    /// The labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.pod.metadata.labels.as_ref()
    }
}

/// A node and what is bound to it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The Node, `None` while only pods bound to the name are known.
    pub node: Option<Arc<Node>>,
    /// Allocatable CPU and memory.
    pub allocatable: Resources,
    /// Allocatable pod count (110 when the node does not say, as the kubelet's default).
    pub allocatable_pods: u64,
    /// Sum of the requests of the pods on it.
    pub requested: Resources,
    /// Sum of the non-zero requests (scoring).
    pub nonzero_requested: Resources,
    /// uids of the pods on it.
    pub pods: HashSet<String>,
    /// Pods per controlling owner uid.
    pub owners: HashMap<String, u32>,
    /// Host ports taken by its pods, and by how many (a conflict can still be bound by
    /// another scheduler or by hand).
    pub used_ports: HashMap<HostPort, u32>,
}

impl NodeInfo {
    fn set_node(&mut self, node: Option<Arc<Node>>) {
        let alloc = node
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let q = |k: &str, scale| {
            alloc
                .and_then(|a| a.get(k))
                .and_then(|q| quantity::parse(&q.0, scale).ok())
        };
        self.allocatable = Resources {
            milli_cpu: q("cpu", 1000).unwrap_or(0),
            memory: q("memory", 1).unwrap_or(0),
        };
        self.allocatable_pods = q("pods", 1).unwrap_or(110);
        self.node = node;
    }

    fn add(&mut self, pod: &PodInfo) {
        if self.pods.insert(pod.uid.clone()) {
            self.requested.add(pod.requests);
            self.nonzero_requested.add(pod.nonzero);
            if let Some(o) = &pod.owner {
                *self.owners.entry(o.clone()).or_default() += 1;
            }
            for p in &pod.host_ports {
                *self.used_ports.entry(p.clone()).or_default() += 1;
            }
        }
    }

    fn remove(&mut self, pod: &PodInfo) {
        if self.pods.remove(&pod.uid) {
            self.requested.sub(pod.requests);
            self.nonzero_requested.sub(pod.nonzero);
            if let Some(o) = &pod.owner {
                if let Some(n) = self.owners.get_mut(o) {
                    *n -= 1;
                    if *n == 0 {
                        self.owners.remove(o);
                    }
                }
            }
            for p in &pod.host_ports {
                if let Some(n) = self.used_ports.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        self.used_ports.remove(p);
                    }
                }
            }
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

/// What changed for scheduling purposes after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The pod is (still) waiting for scheduling.
    pub pending: bool,
    /// Room may have been freed (a pod left a node): unschedulable pods should retry.
    pub freed: bool,
}

/// Nodes and pods as the scheduler sees them.
#[derive(Debug, Default)]
pub struct Cache {
    /// Pods by uid.
    pub pods: HashMap<String, PodInfo>,
    /// Nodes by name (also names only pods refer to).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Pods assumed on a node: uid -> node.
    pub assumed: HashMap<String, String>,
    /// uids of placed pods with required anti-affinity terms (checked against newcomers).
    pub with_anti_affinity: HashSet<String>,
}

impl Cache {
    fn place(&mut self, info: &PodInfo) {
        if let Some(node) = &info.node {
            if !info.terminal() {
                self.nodes.entry(node.clone()).or_default().add(info);
                if !info.anti_affinity.is_empty() {
                    self.with_anti_affinity.insert(info.uid.clone());
                }
            }
        }
    }

    fn unplace(&mut self, info: &PodInfo) -> bool {
        self.with_anti_affinity.remove(&info.uid);
        let Some(name) = &info.node else {
            return false;
        };
        let Some(node) = self.nodes.get_mut(name) else {
            return false;
        };
        let was = node.pods.contains(&info.uid);
        node.remove(info);
        if node.node.is_none() && node.pods.is_empty() {
            self.nodes.remove(name);
        }
        was
    }

    /// Applies a pod as the watch shows it.
    pub fn apply_pod(&mut self, pod: impl Into<Arc<Pod>>) -> Change {
        let Some(mut info) = PodInfo::new(pod) else {
            return Change::default();
        };
        match &info.node {
            Some(_) => {
                self.assumed.remove(&info.uid);
            }
            // A watch event from before our binding: the assumption stands.
            None => info.node = self.assumed.get(&info.uid).cloned(),
        }
        let freed = match self.pods.remove(&info.uid) {
            Some(old) => {
                let was = self.unplace(&old);
                was && (old.node != info.node || info.terminal())
            }
            None => false,
        };
        self.place(&info);
        let pending = info.wants_scheduling();
        self.pods.insert(info.uid.clone(), info);
        Change { pending, freed }
    }

    /// Forgets a pod that was deleted. Returns whether it freed room on a node.
    pub fn delete_pod(&mut self, uid: &str) -> bool {
        self.assumed.remove(uid);
        match self.pods.remove(uid) {
            Some(old) => self.unplace(&old),
            None => false,
        }
    }

    /// Applies a node; returns whether something the filters read changed.
    pub fn apply_node(&mut self, node: Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let entry = self.nodes.entry(name).or_default();
        let changed = entry
            .node
            .as_ref()
            .is_none_or(|old| scheduling_view(old) != scheduling_view(&node));
        entry.set_node(Some(Arc::new(node)));
        changed
    }

    /// Forgets a deleted node (pods bound to it keep their accounting until they go).
    pub fn delete_node(&mut self, name: &str) {
        if let Some(entry) = self.nodes.get_mut(name) {
            entry.set_node(None);
            if entry.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Counts pod `uid` on `node` before the API server has confirmed it.
    pub fn assume(&mut self, uid: &str, node: &str) {
        let Some(mut info) = self.pods.remove(uid) else {
            return;
        };
        self.unplace(&info);
        info.node = Some(node.to_owned());
        self.assumed.insert(uid.to_owned(), node.to_owned());
        self.place(&info);
        self.pods.insert(uid.to_owned(), info);
    }

    /// Drops an assumption whose binding failed; returns whether the pod still waits.
    pub fn forget(&mut self, uid: &str) -> bool {
        if self.assumed.remove(uid).is_none() {
            return false;
        }
        let Some(mut info) = self.pods.remove(uid) else {
            return false;
        };
        self.unplace(&info);
        info.node = info
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        self.place(&info);
        let pending = info.wants_scheduling();
        self.pods.insert(uid.to_owned(), info);
        pending
    }

    /// Replaces every pod after a re-list. Returns the uids now waiting.
    pub fn replace_pods<P: Into<Arc<Pod>>>(&mut self, pods: Vec<P>) -> Vec<String> {
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(Into::into).collect();
        let assumed = std::mem::take(&mut self.assumed);
        for node in self.nodes.values_mut() {
            node.pods.clear();
            node.owners.clear();
            node.requested = Resources::default();
            node.nonzero_requested = Resources::default();
        }
        self.nodes.retain(|_, n| n.node.is_some());
        self.pods.clear();
        self.with_anti_affinity.clear();
        let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.assumed = assumed
            .into_iter()
            .filter(|(uid, _)| present.contains(uid))
            .collect();
        pods.into_iter()
            .filter_map(|p| {
                let uid = p.metadata.uid.clone()?;
                self.apply_pod(p).pending.then_some(uid)
            })
            .collect()
    }

    /// Replaces every node after a re-list.
    pub fn replace_nodes(&mut self, nodes: Vec<Node>) {
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_node(&name);
        }
        for node in nodes {
            self.apply_node(node);
        }
    }
}

/// The parts of a Node the filters and scores read (heartbeats change nothing else).
fn scheduling_view(node: &Node) -> impl PartialEq + '_ {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    (
        &node.metadata.labels,
        &node.spec,
        node.status.as_ref().map(|s| (&s.allocatable, &s.capacity)),
        ready,
    )
}
