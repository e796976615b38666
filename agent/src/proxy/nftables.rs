//! The nftables mode: kube-proxy's nftables layout, for comparison with the eBPF datapath.
//!
//! Table `ip kube-proxy`: a verdict map `service-ips` (daddr . protocol . port) jumps to a chain
//! per service, which picks an endpoint chain with `numgen random mod n vmap`; endpoint chains
//! DNAT. NodePort frontends (`0.0.0.0:port`) use `service-nodeports` for local destinations and are
//! masqueraded. Frontends without endpoints are in the set `no-endpoint-services` (or
//! `no-endpoint-nodeports`), rejected in filter chains. ClientIP affinity keeps a
//! timed dynamic set per endpoint, as kube-proxy does. Changes are buffered and applied by
//! [`Datapath::commit`] as one `nft -f -` transaction touching only the changed services.
//! Maglev is not expressible here: such services use random choice.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::rules::{frontend_hash, proto, run_status, run_with_input, short_hash, Pending};
use super::{BackendAddr, Datapath, Frontend, ProxyError, Service, SessionAffinity};

/// The table this mode owns.
pub const TABLE: &str = "kube-proxy";

/// The nftables proxy.
#[derive(Debug, Default)]
pub struct NftablesProxy {
    /// Network namespace the rules are written in (`None`: this process's).
    netns: Option<String>,
    pending: Pending,
    /// What the kernel has: per frontend, the endpoint chains and whether it is in the map.
    written: BTreeMap<Frontend, (Vec<String>, bool)>,
    base_installed: bool,
}

fn svc_chain(f: &Frontend) -> String {
    format!("service-{}", frontend_hash(f))
}

fn ep_chain(f: &Frontend, b: &BackendAddr) -> String {
    format!(
        "endpoint-{}",
        short_hash(&[&frontend_hash(f), &b.ip.to_string(), &b.port.to_string()])
    )
}

fn element(f: &Frontend) -> String {
    if f.is_node_port() {
        format!("{} . {}", proto(f.protocol), f.port)
    } else {
        format!("{} . {} . {}", f.ip, proto(f.protocol), f.port)
    }
}

/// The verdict map that dispatches to a frontend's chain.
fn dispatch_map(f: &Frontend) -> &'static str {
    if f.is_node_port() {
        "service-nodeports"
    } else {
        "service-ips"
    }
}

/// The set that rejects a frontend without endpoints.
fn no_endpoint_set(f: &Frontend) -> &'static str {
    if f.is_node_port() {
        "no-endpoint-nodeports"
    } else {
        "no-endpoint-services"
    }
}

impl NftablesProxy {
    /// A proxy with nothing programmed yet (the table is created at the first commit).
    pub fn new() -> Self {
        Self::default()
    }

    /// A proxy that writes its rules in the network namespace `netns` (for tests and benchmarks).
    pub fn in_netns(netns: &str) -> Self {
        Self {
            netns: Some(netns.to_owned()),
            ..Self::default()
        }
    }

    fn base(&self) -> String {
        format!(
            "add table ip {TABLE}
add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map ip {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add set ip {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service ; }}
add set ip {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service ; }}
add chain ip {TABLE} services
add chain ip {TABLE} nat-output {{ type nat hook output priority -100 ; policy accept ; }}
add chain ip {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}
add chain ip {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}
add chain ip {TABLE} filter-output {{ type filter hook output priority -110 ; policy accept ; }}
add chain ip {TABLE} filter-forward {{ type filter hook forward priority -110 ; policy accept ; }}
add chain ip {TABLE} filter-input {{ type filter hook input priority -110 ; policy accept ; }}
flush chain ip {TABLE} services
flush chain ip {TABLE} nat-output
flush chain ip {TABLE} nat-prerouting
flush chain ip {TABLE} nat-postrouting
flush chain ip {TABLE} filter-output
flush chain ip {TABLE} filter-forward
flush chain ip {TABLE} filter-input
add rule ip {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip {TABLE} services fib daddr type local meta l4proto . th dport vmap @service-nodeports
add rule ip {TABLE} nat-output jump services
add rule ip {TABLE} nat-prerouting jump services
add rule ip {TABLE} nat-postrouting meta mark & 0x4000 == 0x4000 masquerade
add rule ip {TABLE} filter-output ip daddr . meta l4proto . th dport @no-endpoint-services reject
add rule ip {TABLE} filter-forward ip daddr . meta l4proto . th dport @no-endpoint-services reject
add rule ip {TABLE} filter-output fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject
add rule ip {TABLE} filter-forward fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject
add rule ip {TABLE} filter-input meta l4proto . th dport @no-endpoint-nodeports reject
"
        )
    }

    /// The `nft -f` script for the pending changes.
    fn render(&self) -> String {
        let mut s = String::new();
        let mut removals = String::new();
        for f in &self.pending.dirty {
            let (old_eps, old_mapped) = self.written.get(f).cloned().unwrap_or_default();
            let chain = svc_chain(f);
            if old_mapped {
                let _ = writeln!(
                    s,
                    "delete element ip {TABLE} {} {{ {} }}",
                    dispatch_map(f),
                    element(f)
                );
            }
            let had_no_endpoints = self.written.contains_key(f) && !old_mapped;
            if had_no_endpoints {
                let _ = writeln!(
                    s,
                    "delete element ip {TABLE} {} {{ {} }}",
                    no_endpoint_set(f),
                    element(f)
                );
            }
            match self.pending.services.get(f) {
                Some(svc) if !svc.backends.is_empty() => {
                    let eps: Vec<String> = svc.backends.iter().map(|b| ep_chain(f, b)).collect();
                    let _ = writeln!(
                        s,
                        "add chain ip {TABLE} {chain}\nflush chain ip {TABLE} {chain}"
                    );
                    if f.is_node_port() {
                        // Traffic from outside to a NodePort is masqueraded
                        // (externalTrafficPolicy Cluster), as kube-proxy does.
                        let _ = writeln!(
                            s,
                            "add rule ip {TABLE} {chain} meta mark set meta mark | 0x4000"
                        );
                    }
                    for (b, ep) in svc.backends.iter().zip(&eps) {
                        let _ =
                            writeln!(s, "add chain ip {TABLE} {ep}\nflush chain ip {TABLE} {ep}");
                        if let SessionAffinity::ClientIp { timeout_seconds } = svc.affinity {
                            let set = format!("affinity-{}", &ep["endpoint-".len()..]);
                            let _ = writeln!(s, "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout_seconds}s ; }}");
                            let _ = writeln!(
                                s,
                                "add rule ip {TABLE} {chain} ip saddr @{set} goto {ep}"
                            );
                            let _ = writeln!(
                                s,
                                "add rule ip {TABLE} {ep} update @{set} {{ ip saddr }}"
                            );
                        }
                        let _ = writeln!(
                            s,
                            "add rule ip {TABLE} {ep} ip saddr {} meta mark set meta mark | 0x4000",
                            b.ip
                        );
                        let _ = writeln!(
                            s,
                            "add rule ip {TABLE} {ep} meta l4proto {} dnat to {b}",
                            proto(f.protocol)
                        );
                    }
                    let vmap: Vec<String> = eps
                        .iter()
                        .enumerate()
                        .map(|(i, ep)| format!("{i} : goto {ep}"))
                        .collect();
                    let _ = writeln!(
                        s,
                        "add rule ip {TABLE} {chain} numgen random mod {} vmap {{ {} }}",
                        eps.len(),
                        vmap.join(" , ")
                    );
                    let _ = writeln!(
                        s,
                        "add element ip {TABLE} {} {{ {} : goto {chain} }}",
                        dispatch_map(f),
                        element(f)
                    );
                    for stale in old_eps.iter().filter(|e| !eps.contains(e)) {
                        let _ = writeln!(removals, "delete chain ip {TABLE} {stale}");
                    }
                }
                other => {
                    if other.is_some() {
                        let _ = writeln!(
                            s,
                            "add element ip {TABLE} {} {{ {} }}",
                            no_endpoint_set(f),
                            element(f)
                        );
                    }
                    if old_mapped {
                        let _ = writeln!(removals, "delete chain ip {TABLE} {chain}");
                        for stale in &old_eps {
                            let _ = writeln!(removals, "delete chain ip {TABLE} {stale}");
                        }
                    }
                }
            }
        }
        s.push_str(&removals);
        s
    }

    /// Removes the table (everything this mode installs).
    pub fn cleanup(netns: Option<&str>) -> Result<(), ProxyError> {
        if run_status(netns, "nft", &["list", "table", "ip", TABLE])? {
            run_with_input(
                netns,
                "nft",
                &["-f", "-"],
                &format!("delete table ip {TABLE}\n"),
            )?;
        }
        Ok(())
    }
}

impl Datapath for NftablesProxy {
    fn upsert_service(&mut self, service: &Service) -> Result<(), ProxyError> {
        self.pending.upsert(service);
        Ok(())
    }

    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), ProxyError> {
        self.pending.delete(frontend);
        Ok(())
    }

    fn services(&self) -> Vec<Service> {
        self.pending.services.values().cloned().collect()
    }

    fn commit(&mut self) -> Result<(), ProxyError> {
        if self.pending.dirty.is_empty() && self.base_installed {
            return Ok(());
        }
        let mut script = if self.base_installed {
            String::new()
        } else {
            self.base()
        };
        script.push_str(&self.render());
        run_with_input(self.netns.as_deref(), "nft", &["-f", "-"], &script)?;
        self.base_installed = true;
        for f in std::mem::take(&mut self.pending.dirty) {
            match self.pending.services.get(&f) {
                Some(s) if !s.backends.is_empty() => {
                    self.written.insert(
                        f,
                        (s.backends.iter().map(|b| ep_chain(&f, b)).collect(), true),
                    );
                }
                Some(_) => {
                    self.written.insert(f, (Vec::new(), false));
                }
                None => {
                    self.written.remove(&f);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{LbAlgorithm, Protocol};
    use std::net::Ipv4Addr;

    fn svc(n: u8) -> Service {
        Service {
            frontend: Frontend {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Tcp,
            },
            backends: (1..=n)
                .map(|i| BackendAddr {
                    ip: Ipv4Addr::new(10, 244, 0, i),
                    port: 8080,
                })
                .collect(),
            algorithm: LbAlgorithm::Random,
            affinity: SessionAffinity::None,
        }
    }

    #[test]
    fn renders_verdict_map_and_numgen() {
        let mut p = NftablesProxy::new();
        p.upsert_service(&svc(3)).unwrap();
        let s = p.render();
        assert!(
            s.contains("numgen random mod 3 vmap { 0 : goto endpoint-"),
            "{s}"
        );
        assert!(
            s.contains(
                "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"
            ),
            "{s}"
        );
        assert!(s.contains("dnat to 10.244.0.2:8080"), "{s}");
    }

    #[test]
    fn empty_service_goes_to_the_reject_set() {
        let mut p = NftablesProxy::new();
        p.upsert_service(&svc(0)).unwrap();
        assert!(p
            .render()
            .contains("add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 }"));
    }
}
