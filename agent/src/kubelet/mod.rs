//! The kubelet part of the agent. Today: the Node's registration, status and heartbeat Lease
//! ([`node`]) from host facts ([`host`]); running pods comes with the runtime.

pub mod host;
pub mod node;
