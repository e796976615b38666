//! Facts about this network namespace's interfaces: their IPv4 addresses and which of them
//! carry the default routes (where the node meets the outside). Used for the Node's addresses
//! and for where NodePorts are served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The IPv4 addresses of this network namespace's interfaces, by interface name.
pub fn addresses() -> std::io::Result<BTreeMap<String, Vec<Ipv4Addr>>> {
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for a in nix::ifaddrs::getifaddrs()? {
        if let Some(ip) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            out.entry(a.interface_name).or_default().push(ip.ip());
        }
    }
    Ok(out)
}

/// The interfaces of the IPv4 default routes (from /proc/net/route).
pub fn default_route_interfaces() -> std::io::Result<Vec<String>> {
    Ok(parse_default_routes(&std::fs::read_to_string(
        "/proc/net/route",
    )?))
}

/// [`default_route_interfaces`] over the file's text: rows whose destination and mask are 0.
pub fn parse_default_routes(text: &str) -> Vec<String> {
    let set: BTreeSet<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect();
    set.into_iter().collect()
}

/// The node's primary IPv4 address: the first address of the first default-route interface,
/// else the first non-loopback address of any interface.
pub fn primary_address() -> std::io::Result<Option<Ipv4Addr>> {
    let addrs = addresses()?;
    let via_default = default_route_interfaces()?
        .iter()
        .find_map(|i| addrs.get(i).and_then(|a| a.first().copied()));
    Ok(via_default.or_else(|| {
        addrs
            .values()
            .flatten()
            .copied()
            .find(|ip| !ip.is_loopback())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_default_route_interfaces() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                    wg0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(parse_default_routes(text), vec!["eth0".to_owned()]);
        assert!(parse_default_routes("Iface\tDestination\n").is_empty());
    }
}
