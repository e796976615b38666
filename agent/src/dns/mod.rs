//! Cluster DNS, answered on every node by the agent. The zone ([`zone`]) is built from the
//! Services and EndpointSlices the service proxy watches; [`respond`] is the protocol around
//! it, [`forward`] resolves outside names through the node's resolvers, [`server`] serves UDP
//! and TCP.
//!
//! The path of a lookup: a pod's resolv.conf names the cluster DNS address (the `kube-dns`
//! Service in `kube-system`, 10.96.0.10 by default; [`crate::kubelet::resolv_conf`]). The
//! Service's EndpointSlice lists each node's responder (the first address of the node's podCIDR,
//! the pod bridge's gateway) and asks for `trafficDistribution: PreferSameNode`, so every node's
//! datapath sends the address to its own responder, or to another node's when its own is not
//! ready ([`crate::proxy::api`]). The responder answers from the zone the service proxy keeps
//! from the Services and EndpointSlices it already watches: each sync updates the Services
//! that changed, right after the datapath ([`crate::proxy::sync`]).

pub mod forward;
pub mod respond;
pub mod server;
pub mod zone;

/// The cluster DNS settings of the zone the service proxy keeps.
#[derive(Clone)]
pub struct ClusterZone {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// TTL of positive answers.
    pub ttl: u32,
    /// Where the responder reads the zone.
    pub handle: server::ZoneHandle,
    /// The responder's address (this node's endpoint of the `kube-dns` Service).
    pub address: std::net::Ipv4Addr,
}
