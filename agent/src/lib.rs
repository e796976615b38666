//! skiff-agent: the node agent. The [`kubelet`] registers the Node, runs the pods bound to it
//! (a pure pod plan executed by one worker per pod) through the container [`runtime`]
//! (youki's libcontainer in a shim process), the node's [`images`] and pod [`network`]ing
//! (bridge, veth and routes over netlink), and serves logs and exec; the [`proxy`] turns
//! Services and EndpointSlices into the node's service datapath (eBPF socket load balancing,
//! or the iptables and nftables modes for comparison), and the [`ingress`] proxy routes the
//! Ingresses of skiff's class from the node's ports 80 and 443 to the pods.

pub mod dns;
pub mod images;
pub mod ingress;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod runtime;
