//! The node's pod network as the kubelet uses it: set up when the first pod needs it, so an
//! agent without pods changes nothing on the host. It is the real [`PodNetworking`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Notify, OnceCell};

use super::node_network::{self, NodeNetworkError, PodNetwork};
use super::PodNetworking;
use skiff_k8s::cidr::Ipv4Cidr;

/// The node's pod network, set up when the first pod needs it.
pub struct LazyNetwork {
    cell: OnceCell<Arc<PodNetwork>>,
    dir: PathBuf,
    range: Ipv4Cidr,
    cluster_cidr: Ipv4Cidr,
    /// Signalled once the network exists (the route keeper then installs routes).
    pub ready: Notify,
}

impl LazyNetwork {
    /// A network for `range` (this node's podCIDR) with IPAM state in `dir`; traffic to
    /// outside `cluster_cidr` is masqueraded.
    pub fn new(dir: PathBuf, range: Ipv4Cidr, cluster_cidr: Ipv4Cidr) -> Self {
        Self {
            cell: OnceCell::new(),
            dir,
            range,
            cluster_cidr,
            ready: Notify::new(),
        }
    }

    /// The network, creating the bridge and masquerade rule on first use.
    pub async fn get(&self) -> Result<Arc<PodNetwork>, NodeNetworkError> {
        self.cell
            .get_or_try_init(|| async {
                let handle = super::connect().map_err(|e| NodeNetworkError::Iptables {
                    args: "netlink".into(),
                    message: e.to_string(),
                })?;
                let net = PodNetwork::open(handle, &self.dir, self.range).await?;
                let (range, cluster) = (self.range, self.cluster_cidr);
                tokio::task::spawn_blocking(move || node_network::install_masquerade(range, cluster))
                    .await
                    .map_err(|e| NodeNetworkError::Iptables {
                        args: "masquerade".into(),
                        message: e.to_string(),
                    })??;
                tracing::info!(pod_cidr = %self.range, "pod network up (bridge {})", super::pod_network::BRIDGE);
                // notify_one keeps a permit if the route keeper is busy right now.
                self.ready.notify_one();
                Ok(Arc::new(net))
            })
            .await
            .cloned()
    }

    /// The network if it is up.
    pub fn current(&self) -> Option<Arc<PodNetwork>> {
        self.cell.get().cloned()
    }

    /// Gives a pod its address and wires its namespace (setting the network up if needed).
    pub async fn attach(&self, pod_uid: &str, netns: &Path) -> Result<Ipv4Addr, NodeNetworkError> {
        self.get().await?.attach(pod_uid, netns).await
    }

    /// Unwires a pod and releases its address; nothing to do if the node never had a network.
    pub async fn detach(&self, pod_uid: &str) -> Result<(), NodeNetworkError> {
        match self.get_if_allocated().await {
            Some(net) => net.detach(pod_uid).await,
            None => Ok(()),
        }
    }

    /// The address a pod holds already, if any.
    pub async fn address_of(&self, pod_uid: &str) -> Option<Ipv4Addr> {
        self.get_if_allocated().await?.address_of(pod_uid).await
    }

    /// Pods holding an address (none if the node never had a network).
    pub async fn allocated_pods(&self) -> Vec<String> {
        match self.get_if_allocated().await {
            Some(net) => net.allocated_pods().await,
            None => Vec::new(),
        }
    }

    /// The network if this node ever set it up (its IPAM file exists), for cleanup at start.
    async fn get_if_allocated(&self) -> Option<Arc<PodNetwork>> {
        if self.cell.get().is_none() && !self.dir.join("ipam.json").exists() {
            return None;
        }
        self.get().await.ok()
    }
}

impl PodNetworking for LazyNetwork {
    fn attach<'a>(
        &'a self,
        pod_uid: &'a str,
        netns: &'a Path,
    ) -> BoxFuture<'a, Result<Ipv4Addr, NodeNetworkError>> {
        Box::pin(LazyNetwork::attach(self, pod_uid, netns))
    }

    fn detach<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), NodeNetworkError>> {
        Box::pin(LazyNetwork::detach(self, pod_uid))
    }

    fn address_of<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Option<Ipv4Addr>> {
        Box::pin(LazyNetwork::address_of(self, pod_uid))
    }

    fn allocated_pods(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(LazyNetwork::allocated_pods(self))
    }
}
