//! The kubelet part of the agent: the Node's registration, status and heartbeat Lease
//! ([`node`]) from host facts ([`host`]), and the pods bound to this node: the manager
//! ([`pods`]) runs a worker per pod ([`pod_worker`]) that drives images, runtime and network,
//! probes containers ([`probes`]) and reports status ([`status`]).

pub mod container_config;
pub mod directory;
pub mod events;
pub mod exec;
#[cfg(test)]
mod fakes;
pub mod host;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod pod_manager;
pub mod pod_worker;
pub mod probes;
pub mod server;
pub mod static_pods;
pub mod status;
pub mod streaming;
