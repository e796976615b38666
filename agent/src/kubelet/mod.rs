//! The kubelet part of the agent: the Node's registration, status and heartbeat Lease
//! ([`node`]) from host facts ([`host`]), and the pods bound to this node.

pub mod directory;
pub mod exec;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod server;
pub mod streaming;
