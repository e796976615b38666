//! The NodePort programs on the node's external interfaces (tc, through tcx links), and the
//! node facts they read: the node's IPv4 addresses (a NodePort answers on each) and the
//! external interfaces with their addresses (a backend routed through one is on another node
//! and gets SNAT to that address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap, MapData};
use aya::programs::links::FdLink;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use skiff_ebpf_common::{addr_to_net, maps};

use super::{io_err, map_err, pinned_link_id, removed, wait_links_released};
use crate::network::interfaces;
use crate::proxy::ProxyError;

/// The tc programs: (function name, hook, prefix of their pinned links).
pub const TC_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("nodeport_ingress", TcAttachType::Ingress, "tc_in_"),
    ("nodeport_egress", TcAttachType::Egress, "tc_out_"),
];

/// An interface the NodePort programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtInterface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its first IPv4 address: the SNAT source for backends reached through it.
    pub addr: Ipv4Addr,
}

/// The IPv4 addresses of this network namespace's interfaces, by interface name.
pub fn interface_addrs() -> Result<BTreeMap<String, Vec<Ipv4Addr>>, ProxyError> {
    interfaces::addresses().map_err(|e| ProxyError::Io {
        what: "listing the addresses of",
        path: "the network interfaces".into(),
        source: e,
    })
}

/// Resolves interface names to [`ExtInterface`]s; each needs an IPv4 address.
pub fn resolve(names: &[String]) -> Result<Vec<ExtInterface>, ProxyError> {
    let addrs = interface_addrs()?;
    names
        .iter()
        .map(|name| {
            let index =
                nix::net::if_::if_nametoindex(name.as_str()).map_err(|e| ProxyError::Io {
                    what: "finding the interface",
                    path: name.into(),
                    source: e.into(),
                })?;
            let addr = addrs
                .get(name)
                .and_then(|a| a.first().copied())
                .ok_or_else(|| ProxyError::NoInterfaceAddress(name.clone()))?;
            Ok(ExtInterface {
                name: name.clone(),
                index,
                addr,
            })
        })
        .collect()
}

/// The interfaces of the IPv4 default routes: where a node meets the outside, so the default
/// for NodePorts.
pub fn default_route_interfaces() -> Result<Vec<String>, ProxyError> {
    let path = Path::new("/proc/net/route");
    interfaces::default_route_interfaces().map_err(io_err("reading", path))
}

/// Writes the node's addresses and external interfaces into their maps, removing stale ones.
pub fn write_node_maps(ebpf: &mut Ebpf, ifaces: &[ExtInterface]) -> Result<(), ProxyError> {
    let addrs: BTreeSet<u32> = interface_addrs()?
        .into_values()
        .flatten()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| addr_to_net(ip.octets()))
        .collect();
    let mut node: HashMap<&mut MapData, u32, u32> = ebpf
        .map_mut(maps::NODE_ADDRS)
        .ok_or(ProxyError::MissingMap(maps::NODE_ADDRS))?
        .try_into()
        .map_err(map_err(maps::NODE_ADDRS))?;
    sync_map(&mut node, maps::NODE_ADDRS, addrs.iter().map(|&a| (a, 1)))?;
    let mut ext: HashMap<&mut MapData, u32, u32> = ebpf
        .map_mut(maps::EXT_IFACES)
        .ok_or(ProxyError::MissingMap(maps::EXT_IFACES))?
        .try_into()
        .map_err(map_err(maps::EXT_IFACES))?;
    sync_map(
        &mut ext,
        maps::EXT_IFACES,
        ifaces
            .iter()
            .map(|i| (i.index, addr_to_net(i.addr.octets()))),
    )
}

fn sync_map(
    map: &mut HashMap<&mut MapData, u32, u32>,
    name: &'static str,
    want: impl Iterator<Item = (u32, u32)>,
) -> Result<(), ProxyError> {
    let want: BTreeMap<u32, u32> = want.collect();
    let have: Vec<u32> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in have.iter().filter(|k| !want.contains_key(k)) {
        removed(name, map.remove(k))?;
    }
    for (k, v) in &want {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Loads the tc programs and attaches them to each interface's ingress and egress, pinning the
/// links (`<links>/tc_in_<ifindex>`, `tc_out_<ifindex>`) as the cgroup programs are: a new link
/// is attached before the old one is released. Links of interfaces no longer listed are
/// removed. Returns the programs' kernel ids.
pub fn attach(
    ebpf: &mut Ebpf,
    ifaces: &[ExtInterface],
    links: &Path,
) -> Result<Vec<u32>, ProxyError> {
    let mut ids = Vec::new();
    let mut keep = BTreeSet::new();
    for (name, hook, prefix) in TC_PROGRAMS {
        let program_err = |source| ProxyError::Program { name, source };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(ProxyError::MissingProgram(name))?
            .try_into()
            .map_err(program_err)?;
        if ifaces.is_empty() {
            continue;
        }
        prog.load().map_err(program_err)?;
        ids.push(prog.info().map_err(program_err)?.id());
        for iface in ifaces {
            let link_id = prog.attach(&iface.name, hook).map_err(program_err)?;
            let link = prog.take_link(link_id).map_err(program_err)?;
            let file = format!("{prefix}{}", iface.index);
            let path = links.join(&file);
            let link: FdLink = link.try_into().map_err(|source| ProxyError::Link {
                path: path.clone(),
                source,
            })?;
            super::replace_pin(link, &path)?;
            keep.insert(file);
        }
    }
    // Interfaces dropped since the last start: detach their programs.
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(links).map_err(io_err("listing", links))? {
        let entry = entry.map_err(io_err("listing", links))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if TC_PROGRAMS.iter().any(|(_, _, p)| file.starts_with(p)) && !keep.contains(&file) {
            stale.extend(pinned_link_id(&entry.path()));
            std::fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
        }
    }
    wait_links_released(&stale);
    Ok(ids)
}
