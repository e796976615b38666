//! Filters: can this pod run on this node? Pure functions of the pod, the node and what is
//! bound to it, each failing with kube-scheduler's reason text (what users read in
//! FailedScheduling events).

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::api::core::v1::{Node, PodAffinityTerm, Taint, Toleration};
use skiff_k8s::affinity;
use skiff_k8s::labels::selector_matches;
use skiff_k8s::taints::tolerates;

use super::cache::{Cache, NodeInfo, PodInfo};

/// The label every kubelet sets to the node's name; topologyKey of per-node anti-affinity.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a node does not fit a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `spec.unschedulable` (cordoned).
    Unschedulable,
    /// A NoSchedule/NoExecute taint the pod does not tolerate (key, value).
    Taint(String, String),
    /// nodeSelector or required node affinity.
    NodeAffinity,
    /// Not enough CPU left.
    InsufficientCpu,
    /// Not enough memory left.
    InsufficientMemory,
    /// A host port the pod asks for is taken.
    NodePorts,
    /// No pod slots left.
    TooManyPods,
    /// The pod's required anti-affinity matches a pod in this topology domain.
    AntiAffinity,
    /// A pod in this topology domain has required anti-affinity against the pod.
    ExistingAntiAffinity,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::Taint(k, v) => write!(f, "node(s) had untolerated taint {{{k}: {v}}}"),
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::NodePorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

/// Topology domains (topologyKey, value) a pod may not join, computed once per pod.
#[derive(Debug, Default, Clone)]
pub struct Forbidden {
    /// Domains where the pod's own anti-affinity matches a pod.
    pub own: HashSet<(String, String)>,
    /// Domains where a placed pod's anti-affinity matches this pod.
    pub existing: HashSet<(String, String)>,
}

/// Runs every filter in kube-scheduler's order; the first failing one gives the reasons
/// (resource fit reports every short resource at once).
pub fn filter(pod: &PodInfo, node: &NodeInfo, forbidden: &Forbidden) -> Result<(), Vec<Reason>> {
    let Some(n) = node.node.as_deref() else {
        return Err(vec![Reason::NodeAffinity]);
    };
    let tolerations = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    unschedulable(n, tolerations).map_err(|r| vec![r])?;
    ready(n, tolerations).map_err(|r| vec![r])?;
    taints(n, tolerations).map_err(|r| vec![r])?;
    if !node_affinity(pod, n) {
        return Err(vec![Reason::NodeAffinity]);
    }
    free_ports(pod, node).map_err(|r| vec![r])?;
    fits(pod, node)?;
    anti_affinity(n, forbidden).map_err(|r| vec![r])
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        ..Taint::default()
    }
}

/// A cordoned node takes only pods tolerating `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn unschedulable(node: &Node, tolerations: &[Toleration]) -> Result<(), Reason> {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let tolerated = || {
        let t = taint("node.kubernetes.io/unschedulable", "NoSchedule");
        tolerations.iter().any(|tol| tolerates(tol, &t))
    };
    if cordoned && !tolerated() {
        Err(Reason::Unschedulable)
    } else {
        Ok(())
    }
}

/// A node whose Ready condition is not True takes only pods tolerating the taint the node
/// lifecycle controller puts on such nodes (`not-ready` for False, `unreachable` otherwise),
/// so the scheduler does not race that controller.
pub fn ready(node: &Node, tolerations: &[Toleration]) -> Result<(), Reason> {
    let status = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let key = match status {
        Some("True") => return Ok(()),
        Some("False") => "node.kubernetes.io/not-ready",
        _ => "node.kubernetes.io/unreachable",
    };
    let t = taint(key, "NoSchedule");
    if tolerations.iter().any(|tol| tolerates(tol, &t)) {
        Ok(())
    } else {
        Err(Reason::Taint(key.to_owned(), String::new()))
    }
}

/// The first NoSchedule or NoExecute taint no toleration covers.
pub fn taints(node: &Node, tolerations: &[Toleration]) -> Result<(), Reason> {
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if !matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !tolerations.iter().any(|tol| tolerates(tol, t)) {
            return Err(Reason::Taint(
                t.key.clone(),
                t.value.clone().unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// nodeSelector and required node affinity.
pub fn node_affinity(pod: &PodInfo, node: &Node) -> bool {
    pod.pod
        .spec
        .as_ref()
        .is_none_or(|spec| affinity::matches_node(spec, node))
}

/// The pod's host ports against those its node's pods hold (the NodePorts plugin).
pub fn free_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    let taken = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.keys().any(|used| used.conflicts(want)));
    if taken {
        Err(Reason::NodePorts)
    } else {
        Ok(())
    }
}

/// Requested resources against allocatable minus what is already bound (or assumed).
pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let mut reasons = Vec::new();
    if node.pods.len() as u64 + 1 > node.allocatable_pods {
        reasons.push(Reason::TooManyPods);
    }
    let free_cpu = node
        .allocatable
        .milli_cpu
        .saturating_sub(node.requested.milli_cpu);
    if pod.requests.milli_cpu > 0 && pod.requests.milli_cpu > free_cpu {
        reasons.push(Reason::InsufficientCpu);
    }
    let free_memory = node
        .allocatable
        .memory
        .saturating_sub(node.requested.memory);
    if pod.requests.memory > 0 && pod.requests.memory > free_memory {
        reasons.push(Reason::InsufficientMemory);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// The node's value for a topology key (the hostname key falls back to the node's name).
pub fn topology_value(node: &Node, key: &str) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key).cloned())
        .or_else(|| {
            (key == HOSTNAME_LABEL)
                .then(|| node.metadata.name.clone())
                .flatten()
        })
}

fn anti_affinity(node: &Node, forbidden: &Forbidden) -> Result<(), Reason> {
    let hit = |set: &HashSet<(String, String)>| {
        set.iter()
            .any(|(k, v)| topology_value(node, k).as_deref() == Some(v.as_str()))
    };
    if hit(&forbidden.own) {
        return Err(Reason::AntiAffinity);
    }
    if hit(&forbidden.existing) {
        return Err(Reason::ExistingAntiAffinity);
    }
    Ok(())
}

/// Whether an affinity term of a pod in `owner_namespace` selects `target`.
pub fn term_selects(term: &PodAffinityTerm, owner_namespace: &str, target: &PodInfo) -> bool {
    let namespaces = term.namespaces.as_deref().unwrap_or_default();
    let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    });
    let in_namespace = all_namespaces
        || if namespaces.is_empty() {
            target.namespace == owner_namespace
        } else {
            namespaces.contains(&target.namespace)
        };
    in_namespace && selector_matches(term.label_selector.as_ref(), target.labels())
}

/// The topology domains `pod` may not join because of required anti-affinity, its own and
/// that of placed pods.
pub fn forbidden_domains(pod: &PodInfo, cache: &Cache) -> Forbidden {
    let mut forbidden = Forbidden::default();
    let domain = |placed: &PodInfo, key: &str| {
        let node = cache.nodes.get(placed.node.as_deref()?)?.node.as_deref()?;
        Some((key.to_owned(), topology_value(node, key)?))
    };
    if !pod.anti_affinity.is_empty() {
        for other in cache.pods.values() {
            if other.uid == pod.uid || other.node.is_none() || other.terminal() {
                continue;
            }
            for term in &pod.anti_affinity {
                if term_selects(term, &pod.namespace, other) {
                    forbidden.own.extend(domain(other, &term.topology_key));
                }
            }
        }
    }
    for uid in &cache.with_anti_affinity {
        let Some(other) = cache.pods.get(uid) else {
            continue;
        };
        if other.uid == pod.uid {
            continue;
        }
        for term in &other.anti_affinity {
            if term_selects(term, &other.namespace, pod) {
                forbidden.existing.extend(domain(other, &term.topology_key));
            }
        }
    }
    forbidden
}
