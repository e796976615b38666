//! Pod networking over netlink: a bridge per node holding the podCIDR's gateway address, and per
//! pod a veth pair whose host end is a port of the bridge and whose other end is the pod's
//! `eth0`, with the pod's address and a default route through the gateway. Pods on one node
//! talk over the bridge; traffic to other nodes' pods follows routes the agent adds per node
//! (`route_to_node`), without NAT, so a receiver sees the sender's pod IP.
//!
//! Links inside a pod's network namespace are configured from a dedicated thread that enters
//! the namespace (setns moves only the calling thread) with its own netlink connection.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{context, delete_link, link_index, set_up, NetlinkError};
use skiff_k8s::cidr::Ipv4Cidr;

/// The node's pod bridge.
pub const BRIDGE: &str = "skiff0";

/// The name of a pod's interface inside its namespace.
pub const POD_INTERFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} disappeared while being configured")]
    Vanished(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PodNetworkError + use<> {
    let path = path.to_owned();
    move |source| PodNetworkError::Io { what, path, source }
}

/// The host-side name of a pod's veth: `veth` and 10 hex digits of its UID (names have at most
/// 15 bytes, and the peer's temporary name adds one).
pub fn host_interface(pod_uid: &str) -> String {
    let hex: String = pod_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    format!("veth{hex}")
}

async fn required_index(handle: &Handle, name: &str) -> Result<u32, PodNetworkError> {
    link_index(handle, name)
        .await?
        .ok_or_else(|| PodNetworkError::Vanished(name.to_owned()))
}

/// Adds `ip/prefix` to link `index` unless it has it (EEXIST is success: idempotent).
async fn ensure_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<(), NetlinkError> {
    match handle
        .address()
        .add(index, ip.into(), prefix)
        .execute()
        .await
    {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) =>
        {
            Ok(())
        }
        other => other.map_err(context(format!("adding {ip}/{prefix} to {what}"))),
    }
}

/// The bridge's fixed hardware address: locally administered, unicast, and derived from the
/// gateway address so it is unique per node and the same after restarts.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0x73, a, b, c, d]
}

/// Creates the bridge (if missing) with the podCIDR's gateway address and a fixed hardware
/// address, brings it up and turns on IPv4 forwarding. Idempotent.
pub async fn ensure_bridge(
    handle: &Handle,
    range: Ipv4Cidr,
    gateway: Ipv4Addr,
) -> Result<u32, PodNetworkError> {
    let index = match link_index(handle, BRIDGE).await? {
        Some(i) => i,
        None => {
            handle
                .link()
                .add(LinkBridge::new(BRIDGE).build())
                .execute()
                .await
                .map_err(context(format!("creating the bridge {BRIDGE}")))?;
            required_index(handle, BRIDGE).await?
        }
    };
    // A bridge whose address was never set takes the lowest address of its ports and changes
    // it as pods come and go. Pods keep the gateway's old address in their neighbour cache,
    // and once the veth that owned it is gone their traffic to other nodes goes nowhere until
    // the entry expires (tens of seconds). A set address stays put; setting it again to the
    // same value is harmless and pins a bridge made by an older agent.
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(bridge_mac(gateway).to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(context(format!("setting the address of {BRIDGE}")))?;
    ensure_address(handle, index, gateway, range.prefix, BRIDGE).await?;
    set_up(handle, index, BRIDGE).await?;
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    std::fs::write(forward, "1").map_err(io("writing", forward))?;
    Ok(index)
}

/// Runs `f` with a netlink handle inside the network namespace at `netns`, on a thread of its
/// own (so neither the caller's thread nor its runtime change namespace).
async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, PodNetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PodNetworkError>>,
{
    let ns = std::fs::File::open(netns).map_err(io("opening the network namespace", netns))?;
    let path = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io("entering", &path)(e.into()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("starting a runtime for", &path))?;
            rt.block_on(async {
                let handle = super::connect().map_err(io("opening netlink in", &path))?;
                f(handle).await
            })
        })();
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err(PodNetworkError::Vanished(netns.display().to_string())))
}

/// Wires a pod: a veth pair with the host end on the bridge and the other end as `eth0` in the
/// namespace at `netns` with `ip`, loopback up, and a default route via `gateway`.
/// Re-running for a wired pod is harmless (the agent may retry after a crash).
pub async fn attach(
    handle: &Handle,
    pod_uid: &str,
    netns: &Path,
    ip: Ipv4Addr,
    range: Ipv4Cidr,
    gateway: Ipv4Addr,
) -> Result<String, PodNetworkError> {
    let host = host_interface(pod_uid);
    let bridge = required_index(handle, BRIDGE).await?;
    if link_index(handle, &host).await?.is_none() {
        // The peer gets a temporary unique name here; it is renamed eth0 inside the pod.
        let peer = format!("{host}p");
        handle
            .link()
            .add(LinkVeth::new(&host, &peer).build())
            .execute()
            .await
            .map_err(context(format!("creating the veth pair {host}")))?;
        let peer_index = required_index(handle, &peer).await?;
        let ns = std::fs::File::open(netns).map_err(io("opening the network namespace", netns))?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns))
                    .build(),
            )
            .execute()
            .await
            .map_err(context(format!("moving {peer} into {}", netns.display())))?;
        in_netns(netns, move |h| async move {
            let index = required_index(&h, &peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(POD_INTERFACE.to_owned())
                        .build(),
                )
                .execute()
                .await
                .map_err(context(format!("renaming {peer} to {POD_INTERFACE}")))?;
            Ok(())
        })
        .await?;
    }
    let host_index = required_index(handle, &host).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(context(format!("plugging {host} into {BRIDGE}")))?;
    in_netns(netns, move |h| async move {
        let lo = required_index(&h, "lo").await?;
        set_up(&h, lo, "lo").await?;
        let eth0 = required_index(&h, POD_INTERFACE).await?;
        ensure_address(&h, eth0, ip, range.prefix, POD_INTERFACE).await?;
        set_up(&h, eth0, POD_INTERFACE).await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .protocol(RouteProtocol::Static)
            .build();
        h.route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(context(format!("adding the default route via {gateway}")))?;
        Ok(())
    })
    .await?;
    Ok(host)
}

/// Unwires a pod: deletes the host end of its veth (the pair goes with it). Returns whether
/// there was one.
pub async fn detach(handle: &Handle, pod_uid: &str) -> Result<bool, PodNetworkError> {
    Ok(delete_link(handle, &host_interface(pod_uid)).await?)
}

/// Routes another node's podCIDR through that node's address (no encapsulation, no NAT).
pub async fn route_to_node(
    handle: &Handle,
    range: Ipv4Cidr,
    node_ip: Ipv4Addr,
) -> Result<(), PodNetworkError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.addr, range.prefix)
        .gateway(node_ip)
        .scope(RouteScope::Universe)
        .protocol(RouteProtocol::Static)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(context(format!("routing {range} via {node_ip}")))?;
    Ok(())
}

/// Removes the route to another node's podCIDR (the node left). A missing route is fine.
pub async fn remove_route(handle: &Handle, range: Ipv4Cidr) -> Result<(), PodNetworkError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.addr, range.prefix)
        .scope(RouteScope::Universe)
        .protocol(RouteProtocol::Static)
        .build();
    match handle.route().del(route).execute().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::ESRCH as i32) =>
        {
            Ok(())
        }
        other => Ok(other.map_err(context(format!("removing the route to {range}")))?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_and_differ() {
        let a = host_interface("8d7f2c4e-1b2a-4c3d-9e8f-0a1b2c3d4e5f");
        assert_eq!(a, "veth8d7f2c4e1b");
        assert!(a.len() < 15);
        assert_ne!(a, host_interface("9d7f2c4e-1b2a-4c3d-9e8f-0a1b2c3d4e5f"));
    }
}
