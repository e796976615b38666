//! The kubelet part of the agent: the Node's registration, status and heartbeat Lease
//! ([`node`]) from host facts ([`host`]), and the pods bound to this node.

pub mod directory;
pub mod host;
pub mod node;
