//! Scores: among the nodes that fit, which is best? Pure functions, 0..=100 each, summed.

use std::collections::BTreeMap;

use super::cache::{NodeInfo, PodInfo};
use super::filter::Reason;

/// kube-scheduler's NodeResourcesFit LeastAllocated: the share of CPU and memory left free
/// after placing the pod, averaged (pods without requests count with the non-zero defaults).
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> u64 {
    let free = |capacity: u64, requested: u64| {
        if capacity == 0 || requested > capacity {
            0
        } else {
            (capacity - requested) * 100 / capacity
        }
    };
    let cpu = free(
        node.allocatable.milli_cpu,
        node.nonzero_requested.milli_cpu + pod.nonzero.milli_cpu,
    );
    let memory = free(
        node.allocatable.memory,
        node.nonzero_requested.memory + pod.nonzero.memory,
    );
    (cpu + memory) / 2
}

/// Spreading the replicas of one owner (SelectorSpread): nodes with fewer pods of the pod's
/// controlling owner score higher. `max` is the largest count over the candidate nodes.
pub fn spread(pod: &PodInfo, node: &NodeInfo, max: u32) -> u64 {
    let Some(owner) = &pod.owner else {
        return 0;
    };
    if max == 0 {
        return 100;
    }
    let count = node.owners.get(owner).copied().unwrap_or(0).min(max);
    u64::from(max - count) * 100 / u64::from(max)
}

/// The FailedScheduling message in kube-scheduler's words:
/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.`
pub fn failure_message(nodes: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}
