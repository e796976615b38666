//! skiff-agent: the node agent. Today it has the eBPF service datapath ([`proxy`]); the pod
//! runtime, pod networking and the API watchers that feed the proxy come next.

pub mod images;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod runtime;
