//! podCIDR allocation (kube-controller-manager's node IPAM, range allocator): every Node
//! without `spec.podCIDR` gets the next free `/<mask>` block of the cluster CIDR, in
//! `spec.podCIDR` and `spec.podCIDRs`. A block is never given twice: the blocks in use are read
//! from all Nodes before anything is allocated, and the write pins the Node's resourceVersion,
//! so a Node that got a block meanwhile (from another instance or by hand) is not overwritten.
//! A deleted Node's block is free again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use skiff_k8s::cidr::Ipv4Cidr;

use crate::client::events::{reference, EventType};
use crate::client::informers::Change;
use crate::client::Context;

/// What the allocator hands out.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The cluster's pod range (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Cidr,
    /// Prefix length of each node's block (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.244.0.0/16".parse().expect("a valid CIDR"),
            node_mask: 24,
        }
    }
}

/// Why a configuration cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodCidrError {
    /// The node mask is not longer than the cluster prefix (or longer than /30).
    #[error("--node-cidr-mask-size {mask} must be larger than the cluster CIDR's prefix {prefix} and at most 30")]
    Mask {
        /// Node mask.
        mask: u8,
        /// Cluster prefix.
        prefix: u8,
    },
}

/// The blocks of a cluster CIDR and which are in use.
#[derive(Debug)]
pub struct Blocks {
    config: Config,
    used: HashSet<u64>,
    next: u64,
}

impl Blocks {
    /// Checks `config`.
    pub fn new(config: Config) -> Result<Self, PodCidrError> {
        if config.node_mask <= config.cluster_cidr.prefix || config.node_mask > 30 {
            return Err(PodCidrError::Mask {
                mask: config.node_mask,
                prefix: config.cluster_cidr.prefix,
            });
        }
        Ok(Self {
            config,
            used: HashSet::new(),
            next: 0,
        })
    }

    fn count(&self) -> u64 {
        1u64 << (self.config.node_mask - self.config.cluster_cidr.prefix)
    }

    fn block_size(&self) -> u64 {
        1u64 << (32 - u32::from(self.config.node_mask))
    }

    /// The index of a block written as a CIDR, if it is one of ours.
    fn index(&self, cidr: &str) -> Option<u64> {
        let c: Ipv4Cidr = cidr.parse().ok()?;
        (c.prefix == self.config.node_mask && self.config.cluster_cidr.contains(c.addr))
            .then(|| self.config.cluster_cidr.offset(c.addr) / self.block_size())
    }

    /// Marks a block some Node already has as used.
    pub fn mark(&mut self, cidr: &str) {
        if let Some(i) = self.index(cidr) {
            self.used.insert(i);
        }
    }

    /// Frees a block.
    pub fn release(&mut self, cidr: &str) {
        if let Some(i) = self.index(cidr) {
            self.used.remove(&i);
        }
    }

    /// Takes the next free block, round-robin so a just-freed block is not handed out at once.
    pub fn allocate(&mut self) -> Option<String> {
        let count = self.count();
        for k in 0..count {
            let i = (self.next + k) % count;
            if self.used.insert(i) {
                self.next = (i + 1) % count;
                let network: Ipv4Addr = self.config.cluster_cidr.nth(i * self.block_size());
                return Some(format!("{network}/{}", self.config.node_mask));
            }
        }
        None
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .filter(|c| !c.is_empty())
}

/// Runs the allocator until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context, config: Config) {
    let mut blocks = match Blocks::new(config) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "pod CIDR allocation is off");
            return;
        }
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let recorder = ctx.recorder("node-ipam-controller");
    let mut events = ctx.informers.get::<Node>().changes().boxed();
    // name -> (block, resourceVersion) of every known Node.
    let mut nodes: HashMap<String, (Option<String>, Node)> = HashMap::new();
    let mut synced = false;
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = resync.tick() => {}
            event = events.next() => match event {
                None => return,
                Some(Change::Listed(listed)) => {
                    // In name order, as the list came, so blocks are marked deterministically.
                    let listed: BTreeMap<String, Node> = listed
                        .iter()
                        .filter_map(|n| Some((n.metadata.name.clone()?, Node::clone(n))))
                        .collect();
                    blocks.used.clear();
                    nodes.clear();
                    for (name, n) in listed {
                        let cidr = pod_cidr(&n);
                        if let Some(c) = &cidr {
                            blocks.mark(c);
                        }
                        nodes.insert(name, (cidr, n));
                    }
                    synced = true;
                }
                Some(Change::Applied(n)) => {
                    if let Some(name) = n.metadata.name.clone() {
                        let cidr = pod_cidr(&n);
                        if let Some(c) = &cidr {
                            blocks.mark(c);
                        }
                        nodes.insert(name, (cidr, Node::clone(&n)));
                    }
                }
                Some(Change::Deleted(n)) => {
                    if let Some(name) = &n.metadata.name {
                        if let Some((Some(c), _)) = nodes.remove(name) {
                            blocks.release(&c);
                        }
                    }
                }
            },
        }
        if !synced {
            continue;
        }
        let waiting: Vec<Node> = nodes
            .values()
            .filter(|(cidr, _)| cidr.is_none())
            .map(|(_, n)| n.clone())
            .collect();
        for node in waiting {
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some(block) = blocks.allocate() else {
                recorder
                    .record(
                        &reference(&node),
                        EventType::Warning,
                        "CIDRNotAvailable",
                        &format!("Node {name} status is now: CIDRNotAvailable"),
                    )
                    .await;
                break;
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"podCIDR": block, "podCIDRs": [block]},
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    tracing::info!(node = %name, cidr = %block, "allocated pod CIDR");
                    nodes.insert(name, (Some(block), updated));
                }
                Err(e) => {
                    // Changed or gone meanwhile: the watch brings the news, try again then.
                    blocks.release(&block);
                    tracing::info!(node = %name, error = %e, "pod CIDR not written; will retry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(cidr: &str, mask: u8) -> Blocks {
        Blocks::new(Config {
            cluster_cidr: cidr.parse().unwrap(),
            node_mask: mask,
        })
        .unwrap()
    }

    #[test]
    fn blocks_are_handed_out_once() {
        let mut b = blocks("10.244.0.0/16", 24);
        b.mark("10.244.0.0/24");
        b.mark("192.168.0.0/24"); // not ours: ignored
        assert_eq!(b.allocate().as_deref(), Some("10.244.1.0/24"));
        assert_eq!(b.allocate().as_deref(), Some("10.244.2.0/24"));
        b.release("10.244.1.0/24");
        assert_eq!(b.allocate().as_deref(), Some("10.244.3.0/24"));
        let mut small = blocks("10.0.0.0/23", 24);
        assert_eq!(small.allocate().as_deref(), Some("10.0.0.0/24"));
        assert_eq!(small.allocate().as_deref(), Some("10.0.1.0/24"));
        assert_eq!(small.allocate(), None);
        small.release("10.0.0.0/24");
        assert_eq!(small.allocate().as_deref(), Some("10.0.0.0/24"));
    }

    #[test]
    fn masks_must_split_the_cluster_range() {
        let bad = |cidr: &str, mask| {
            Blocks::new(Config {
                cluster_cidr: cidr.parse().unwrap(),
                node_mask: mask,
            })
            .is_err()
        };
        assert!(bad("10.244.0.0/16", 16));
        assert!(bad("10.244.0.0/16", 31));
        assert!(!bad("10.244.0.0/16", 26));
    }
}
