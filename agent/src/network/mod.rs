//! Node networking over netlink: interface facts ([`interfaces`]), the service CIDR's dead end
//! ([`service_cidr`]), pod wiring ([`pod_network`], [`ipam`]) and the node-level pieces the
//! kubelet drives ([`node_network`]: bridge + IPAM, routes to other nodes, masquerade), set up
//! on first use ([`lazy_network`]). The kubelet reaches pod networking through the
//! [`PodNetworking`] trait, so that its tests run without netlink.

pub mod interfaces;
pub mod ipam;
pub mod lazy_network;
pub mod node_network;
pub mod pod_network;
pub mod service_cidr;

use std::net::Ipv4Addr;
use std::path::Path;

use futures::future::BoxFuture;
use futures::TryStreamExt as _;
use rtnetlink::Handle;

pub use lazy_network::LazyNetwork;
use node_network::NodeNetworkError;

/// Pod networking as the pod workers use it: an address and a wired namespace per pod.
/// [`LazyNetwork`] (bridge, veth, IPAM over netlink) is the real one.
pub trait PodNetworking: Send + Sync + 'static {
    /// Gives a pod its address and wires its network namespace.
    fn attach<'a>(
        &'a self,
        pod_uid: &'a str,
        netns: &'a Path,
    ) -> BoxFuture<'a, Result<Ipv4Addr, NodeNetworkError>>;
    /// Unwires a pod and releases its address (nothing to do if it has none).
    fn detach<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), NodeNetworkError>>;
    /// The address a pod holds already, if any (adoption after an agent restart).
    fn address_of<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Option<Ipv4Addr>>;
    /// The pods holding an address (to release the orphans' at start).
    fn allocated_pods(&self) -> BoxFuture<'_, Vec<String>>;
}

/// Opens an rtnetlink connection in the calling thread's network namespace and drives it on
/// the current tokio runtime.
pub fn connect() -> std::io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink request that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

pub(crate) fn context(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// The index of the link called `name`, if there is one.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(context(format!("looking up link {name}"))(e)),
    }
}

/// Brings link `index` (called `name`, for errors) up.
pub async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(context(format!("bringing {name} up")))
}

/// Deletes the link called `name`; returns whether there was one.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(false);
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(context(format!("deleting {name}")))?;
    Ok(true)
}
