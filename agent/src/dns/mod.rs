//! Cluster DNS, answered on every node by the agent. The zone ([`zone`]) is built from the
//! Services and EndpointSlices the service proxy watches; [`respond`] is the protocol around
//! it, [`forward`] resolves outside names through the node's resolvers, [`server`] serves UDP
//! and TCP. Not yet wired into the agent: the responder's address, the `kube-dns` Service and
//! the pods' resolv.conf come next.

pub mod forward;
pub mod respond;
pub mod server;
pub mod zone;
