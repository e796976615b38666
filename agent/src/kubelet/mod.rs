//! The kubelet part of the agent: the Node's registration, status and heartbeat Lease
//! ([`node`]) from host facts ([`host`]), and the pods bound to this node: the pod manager
//! ([`pod_manager`]) runs a worker per pod ([`pod_worker`]) that observes the pod, asks the pure
//! [`plan`] what to do and carries it out through the runtime, network and image traits; it
//! probes containers ([`probes`]) and reports status ([`status`]). The node's HTTP endpoints
//! ([`server`], [`exec`], [`attach`], [`portforward`], sharing [`http`]) serve logs, exec, attach
//! and port-forward,
//! the last also over SPDY ([`portforward_spdy`] on a [`spdy`] session, kubectl's protocol). A pod's configMap, secret,
//! downwardAPI and projected volumes ([`volume_payload`], with ServiceAccount tokens from
//! [`token_manager`]) are written by the [`atomic_writer`] and refreshed while the pod runs.
//! The node's own identity (join with a bootstrap token, rotating client and serving
//! certificates) is [`identity`]; the endpoints authenticate and authorize callers with
//! [`auth`] over [`server_tls`].

pub mod admission;
pub mod atomic_writer;
pub mod attach;
pub mod auth;
pub mod container_config;
pub mod directory;
pub mod etc_hosts;
pub mod events;
pub mod exec;
#[cfg(test)]
mod fakes;
pub mod host;
pub mod http;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod pod_manager;
pub mod pod_worker;
pub mod portforward;
pub mod portforward_spdy;
pub mod probes;
pub mod resolv_conf;
pub mod resource_metrics;
pub mod server;
pub mod server_tls;
pub mod spdy;
pub mod static_pods;
pub mod stats_summary;
pub mod status;
pub mod status_writer;
pub mod streaming;
pub mod token_manager;
pub mod volume_payload;
