//! The service CIDR's dead end: a dummy device that owns the route to the whole service range.
//!
//! Every mode translates VIPs before a packet is routed (socket LB at connect time, iptables and
//! nftables in OUTPUT/PREROUTING). A VIP that nothing translates — a Service not yet synced, a
//! port no Service has — would otherwise follow the default route out of the node. Routing the
//! range to a dummy device, which discards what it is given, keeps such packets on the node. A
//! dummy device rather than a `blackhole` route because the rule-based modes need the first
//! route lookup of a locally generated packet to succeed: their DNAT runs in OUTPUT, after it.
//! More specific routes (a local route for a test, a pod CIDR) still win by prefix length.
//!
//! Some kernels are built without the dummy driver (the Firecracker kernels of our CI machines
//! among them). There the device is an `ifb` instead: it too drops every packet routed to it
//! (it only forwards what tc redirected to it), so the dead end behaves the same.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkDummy, LinkIfb, RouteMessageBuilder};
use skiff_k8s::cidr::Ipv4Cidr;

use super::{context, delete_link, link_index, set_up, NetlinkError};

/// The device the service range is routed to.
pub const DEVICE: &str = "skiff-svc0";

/// The Kubernetes default service range (kube-apiserver's `--service-cluster-ip-range`).
pub const DEFAULT: &str = "10.96.0.0/12";

/// Creates the dummy device (if missing), brings it up and routes `cidr` to it, replacing a
/// route to the same prefix. Idempotent: the agent calls it at every start.
pub async fn install(handle: &Handle, cidr: Ipv4Cidr) -> Result<(), NetlinkError> {
    let index = match link_index(handle, DEVICE).await? {
        Some(i) => i,
        None => {
            let dummy = handle
                .link()
                .add(LinkDummy::new(DEVICE).build())
                .execute()
                .await;
            match dummy {
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -(nix::errno::Errno::EOPNOTSUPP as i32) =>
                {
                    tracing::info!("this kernel has no dummy driver; {DEVICE} is an ifb device");
                    handle
                        .link()
                        .add(LinkIfb::new(DEVICE).build())
                        .execute()
                        .await
                        .map_err(context(format!("creating ifb device {DEVICE}")))?;
                }
                other => other.map_err(context(format!("creating dummy device {DEVICE}")))?,
            }
            link_index(handle, DEVICE)
                .await?
                .ok_or_else(|| NetlinkError {
                    what: format!("finding {DEVICE} after creating it"),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    set_up(handle, index, DEVICE).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.addr, cidr.prefix)
        .output_interface(index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Static)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(context(format!("routing {cidr} to {DEVICE}")))?;
    Ok(())
}

/// Removes the dummy device, and with it the route. Returns whether there was one.
pub async fn remove(handle: &Handle) -> Result<bool, NetlinkError> {
    delete_link(handle, DEVICE).await
}
