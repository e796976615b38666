//! The node's side of pod networking as the kubelet uses it: the bridge and IPAM of this node's
//! podCIDR ([`PodNetwork`]), routes to the other nodes' podCIDRs, and masquerading of pod
//! traffic that leaves the cluster (pod-to-pod traffic is never NATed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use rtnetlink::Handle;
use skiff_k8s::cidr::Ipv4Cidr;
use tokio::sync::Mutex;

use super::ipam::{Ipam, IpamError};
use super::pod_network::{self, PodNetworkError};

/// Errors of the node's pod network.
#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    /// Address management failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// Wiring a pod or the bridge failed.
    #[error(transparent)]
    Link(#[from] PodNetworkError),
    /// An iptables command failed.
    #[error("iptables {args}: {message}")]
    Iptables {
        /// Its arguments.
        args: String,
        /// Its stderr or the spawn error.
        message: String,
    },
}

/// This node's pod network: the bridge with the podCIDR's gateway and the IPAM of the range.
pub struct PodNetwork {
    handle: Handle,
    range: Ipv4Cidr,
    gateway: Ipv4Addr,
    ipam: Mutex<Ipam>,
    /// Other nodes' podCIDR -> the node address routed through, as installed.
    routes: Mutex<BTreeMap<String, Ipv4Addr>>,
}

impl PodNetwork {
    /// Opens the IPAM under `dir` and makes sure the bridge exists.
    pub async fn open(
        handle: Handle,
        dir: &Path,
        range: Ipv4Cidr,
    ) -> Result<Self, NodeNetworkError> {
        let ipam = Ipam::open(dir, range)?;
        let gateway = ipam.gateway();
        pod_network::ensure_bridge(&handle, range, gateway).await?;
        Ok(Self {
            handle,
            range,
            gateway,
            ipam: Mutex::new(ipam),
            routes: Mutex::default(),
        })
    }

    /// The node's podCIDR.
    pub fn range(&self) -> Ipv4Cidr {
        self.range
    }

    /// The address a pod has already (after an agent restart), if any.
    pub async fn address_of(&self, pod_uid: &str) -> Option<Ipv4Addr> {
        self.ipam.lock().await.allocations().get(pod_uid).copied()
    }

    /// Gives a pod its address and wires its namespace. Idempotent for a pod.
    pub async fn attach(&self, pod_uid: &str, netns: &Path) -> Result<Ipv4Addr, NodeNetworkError> {
        let ip = self.ipam.lock().await.allocate(pod_uid)?;
        pod_network::attach(&self.handle, pod_uid, netns, ip, self.range, self.gateway).await?;
        Ok(ip)
    }

    /// Unwires a pod and releases its address.
    pub async fn detach(&self, pod_uid: &str) -> Result<(), NodeNetworkError> {
        pod_network::detach(&self.handle, pod_uid).await?;
        self.ipam.lock().await.release(pod_uid)?;
        Ok(())
    }

    /// Pods holding an address (for cleaning up after pods deleted while the agent was down).
    pub async fn allocated_pods(&self) -> Vec<String> {
        self.ipam
            .lock()
            .await
            .allocations()
            .keys()
            .cloned()
            .collect()
    }

    /// Makes the routes to other nodes' podCIDRs match `want` (podCIDR -> node address),
    /// adding and replacing routes as needed and removing the ones of nodes that went away.
    pub async fn sync_routes(
        &self,
        want: BTreeMap<String, Ipv4Addr>,
    ) -> Result<(), NodeNetworkError> {
        let mut have = self.routes.lock().await;
        for (cidr, via) in &want {
            if have.get(cidr) == Some(via) {
                continue;
            }
            let Ok(range) = cidr.parse::<Ipv4Cidr>() else {
                tracing::warn!(%cidr, "ignoring a node's unparsable podCIDR");
                continue;
            };
            if range == self.range {
                continue;
            }
            pod_network::route_to_node(&self.handle, range, *via).await?;
            have.insert(cidr.clone(), *via);
        }
        let gone: Vec<String> = have
            .keys()
            .filter(|c| !want.contains_key(*c))
            .cloned()
            .collect();
        for cidr in gone {
            if let Ok(range) = cidr.parse::<Ipv4Cidr>() {
                if let Err(e) = pod_network::remove_route(&self.handle, range).await {
                    tracing::warn!(%cidr, error = %e, "could not remove the route to a departed node");
                }
            }
            have.remove(&cidr);
        }
        Ok(())
    }
}

/// The nat chain holding the masquerade rule.
pub const MASQUERADE_CHAIN: &str = "SKIFF-POSTROUTING";

fn iptables(args: &[&str]) -> Result<std::process::Output, NodeNetworkError> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| NodeNetworkError::Iptables {
            args: args.join(" "),
            message: e.to_string(),
        })
}

fn iptables_ok(args: &[&str]) -> Result<(), NodeNetworkError> {
    let out = iptables(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NodeNetworkError::Iptables {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Masquerades traffic from this node's pods to destinations outside `cluster_cidr` (the
/// internet, the node network), so replies find their way back; traffic between pods keeps
/// its source address. Idempotent: the chain is rebuilt.
pub fn install_masquerade(
    pod_cidr: Ipv4Cidr,
    cluster_cidr: Ipv4Cidr,
) -> Result<(), NodeNetworkError> {
    if !iptables(&["-t", "nat", "-L", MASQUERADE_CHAIN, "-n"])?
        .status
        .success()
    {
        iptables_ok(&["-t", "nat", "-N", MASQUERADE_CHAIN])?;
    }
    iptables_ok(&["-t", "nat", "-F", MASQUERADE_CHAIN])?;
    let (src, dst) = (pod_cidr.to_string(), cluster_cidr.to_string());
    iptables_ok(&[
        "-t",
        "nat",
        "-A",
        MASQUERADE_CHAIN,
        "-s",
        &src,
        "!",
        "-d",
        &dst,
        "-m",
        "comment",
        "--comment",
        "skiff: pod traffic leaving the cluster",
        "-j",
        "MASQUERADE",
    ])?;
    let jump = ["-t", "nat", "-C", "POSTROUTING", "-j", MASQUERADE_CHAIN];
    if !iptables(&jump)?.status.success() {
        iptables_ok(&["-t", "nat", "-A", "POSTROUTING", "-j", MASQUERADE_CHAIN])?;
    }
    Ok(())
}

/// Removes the masquerade chain (for `skiff-agent cleanup`). Missing state is not an error.
pub fn remove_masquerade() -> Result<(), NodeNetworkError> {
    while iptables(&["-t", "nat", "-D", "POSTROUTING", "-j", MASQUERADE_CHAIN])?
        .status
        .success()
    {}
    if iptables(&["-t", "nat", "-L", MASQUERADE_CHAIN, "-n"])?
        .status
        .success()
    {
        iptables_ok(&["-t", "nat", "-F", MASQUERADE_CHAIN])?;
        iptables_ok(&["-t", "nat", "-X", MASQUERADE_CHAIN])?;
    }
    Ok(())
}
