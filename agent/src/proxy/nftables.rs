//! The nftables mode: kube-proxy's nftables layout, for comparison with the eBPF datapath.
//!
//! Table `ip kube-proxy`: a verdict map `service-ips` (daddr . protocol . port) jumps to a chain
//! per service, which picks an endpoint and DNATs to it. NodePort frontends (`0.0.0.0:port`) use
//! `service-nodeports` for local destinations and are masqueraded. Frontends without endpoints
//! are in the set `no-endpoint-services` (or `no-endpoint-nodeports`), rejected in filter
//! chains. ClientIP affinity keeps a timed dynamic set per endpoint, as kube-proxy does.
//!
//! Where this differs from kube-proxy, and why (measured on kernel 6.18 with nft 1.0.6 at
//! 10 000 Services x 10 endpoints, see docs/benchmarks.md):
//! - The endpoint is picked by a cascade of `numgen random mod n-i 0` rules (the probabilities
//!   of kube-proxy's iptables `statistic` rules) instead of one anonymous
//!   `numgen random mod n vmap { ... }` per service. The kernel spends time linear in the
//!   number of sets (and of the transaction) on every anonymous set it creates, so 10 000 of
//!   them took over two minutes to program; a named map shared by all services is walked
//!   whole each time a rule references it, which is as bad.
//! - The service chain DNATs itself instead of jumping to a chain per endpoint. nft lists
//!   every chain of the table before it adds a rule or a set element, and the kernel's chain
//!   dump takes time quadratic in the chain count: with 110 000 chains every later change,
//!   however small, took about 3 s. Hairpin traffic (a backend reaching itself through the
//!   Service), which kube-proxy marks in the endpoint chain, is masqueraded in
//!   `nat-postrouting` from the set `hairpin-endpoints` (`ip . ip` for every endpoint IP).
//!
//! Changes are buffered and applied by [`Datapath::commit`] as one `nft -f -` transaction
//! touching only the changed services; the first commit of a proxy replaces the whole table
//! in that same transaction, so state left by an earlier agent never lingers. Maglev is not
//! expressible here: such services use random choice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::rules::{frontend_hash, proto, run_with_input, short_hash, Pending};
use super::{BackendAddr, Datapath, Frontend, ProxyError, Service, SessionAffinity};

/// The table this mode owns.
pub const TABLE: &str = "kube-proxy";

/// What the kernel has for a frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    /// A service chain, and an element of the dispatch map pointing at it.
    Routed {
        /// The ClientIP affinity sets of its endpoints.
        affinity_sets: Vec<String>,
    },
    /// An element of the no-endpoint set.
    Rejected,
}

/// The nftables proxy.
#[derive(Debug, Default)]
pub struct NftablesProxy {
    /// Network namespace the rules are written in (`None`: this process's).
    netns: Option<String>,
    pending: Pending,
    /// What the kernel has, per frontend.
    written: BTreeMap<Frontend, Written>,
    /// Endpoint IPs in the `hairpin-endpoints` set.
    written_hairpin: BTreeSet<Ipv4Addr>,
    base_installed: bool,
}

fn svc_chain(f: &Frontend) -> String {
    format!("service-{}", frontend_hash(f))
}

fn affinity_set(f: &Frontend, b: &BackendAddr) -> String {
    format!(
        "affinity-{}",
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

/// The rules of a service chain: affinity first (a client with a live entry keeps its
/// endpoint), then one rule per endpoint taking it with probability 1/(n-i) of what is left,
/// so that every endpoint gets 1/n.
fn service_rules(svc: &Service, chain: &str, out: &mut String) {
    let f = &svc.frontend;
    let p = proto(f.protocol);
    if f.is_node_port() && !svc.external_local {
        // Traffic from outside to a NodePort is masqueraded (externalTrafficPolicy Cluster),
        // as kube-proxy does; with Local the endpoints are this node's and the client's
        // address stays.
        let _ = writeln!(
            out,
            "add rule ip {TABLE} {chain} meta mark set meta mark | 0x4000"
        );
    }
    let affinity = |b: &BackendAddr| match svc.affinity {
        SessionAffinity::ClientIp { .. } => {
            format!("update @{} {{ ip saddr }} ", affinity_set(f, b))
        }
        SessionAffinity::None => String::new(),
    };
    if let SessionAffinity::ClientIp { timeout_seconds } = svc.affinity {
        for b in &svc.backends {
            let set = affinity_set(f, b);
            let _ = writeln!(out, "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout_seconds}s ; }}");
            let _ = writeln!(
                out,
                "add rule ip {TABLE} {chain} ip saddr @{set} meta l4proto {p} {}dnat to {b}",
                affinity(b)
            );
        }
    }
    let n = svc.backends.len();
    for (i, b) in svc.backends.iter().enumerate() {
        let pick = if i + 1 < n {
            format!("numgen random mod {} 0 ", n - i)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "add rule ip {TABLE} {chain} meta l4proto {p} {pick}{}dnat to {b}",
            affinity(b)
        );
    }
}

/// The affinity sets a service's rules use.
fn written_affinity(svc: &Service) -> Vec<String> {
    match svc.affinity {
        SessionAffinity::ClientIp { .. } if !svc.backends.is_empty() => svc
            .backends
            .iter()
            .map(|b| affinity_set(&svc.frontend, b))
            .collect(),
        _ => Vec::new(),
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

    /// The table with its maps, sets and base chains, replacing whatever an earlier agent left
    /// (`add` first so that `delete` cannot fail).
    fn base(&self) -> String {
        format!(
            "add table ip {TABLE}
delete table ip {TABLE}
add table ip {TABLE}
add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map ip {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add set ip {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service ; }}
add set ip {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service ; }}
add set ip {TABLE} hairpin-endpoints {{ type ipv4_addr . ipv4_addr ; }}
add chain ip {TABLE} services
add chain ip {TABLE} nat-output {{ type nat hook output priority -100 ; policy accept ; }}
add chain ip {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}
add chain ip {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}
add chain ip {TABLE} filter-output {{ type filter hook output priority -110 ; policy accept ; }}
add chain ip {TABLE} filter-forward {{ type filter hook forward priority -110 ; policy accept ; }}
add chain ip {TABLE} filter-input {{ type filter hook input priority -110 ; policy accept ; }}
add rule ip {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip {TABLE} services fib daddr type local meta l4proto . th dport vmap @service-nodeports
add rule ip {TABLE} nat-output jump services
add rule ip {TABLE} nat-prerouting jump services
add rule ip {TABLE} nat-postrouting meta mark & 0x4000 == 0x4000 masquerade
add rule ip {TABLE} nat-postrouting ct status dnat ip saddr . ip daddr @hairpin-endpoints masquerade
add rule ip {TABLE} filter-output ip daddr . meta l4proto . th dport @no-endpoint-services reject
add rule ip {TABLE} filter-forward ip daddr . meta l4proto . th dport @no-endpoint-services reject
add rule ip {TABLE} filter-output fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject
add rule ip {TABLE} filter-forward fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject
add rule ip {TABLE} filter-input meta l4proto . th dport @no-endpoint-nodeports reject
"
        )
    }

    /// Endpoint IPs of the desired services (for the hairpin set).
    fn desired_hairpin(&self) -> BTreeSet<Ipv4Addr> {
        self.pending
            .services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| b.ip))
            .collect()
    }

    /// The `nft -f` script for the pending changes.
    fn render(&self) -> String {
        let mut s = String::new();
        let mut removals = String::new();
        for f in &self.pending.dirty {
            let was_routed = matches!(self.written.get(f), Some(Written::Routed { .. }));
            let was_rejected = self.written.get(f) == Some(&Written::Rejected);
            let chain = svc_chain(f);
            let new = self.pending.services.get(f);
            match new {
                Some(svc) if !svc.backends.is_empty() => {
                    if was_rejected {
                        let _ = writeln!(
                            s,
                            "delete element ip {TABLE} {} {{ {} }}",
                            no_endpoint_set(f),
                            element(f)
                        );
                    }
                    let _ = writeln!(s, "add chain ip {TABLE} {chain}");
                    if was_routed {
                        let _ = writeln!(s, "flush chain ip {TABLE} {chain}");
                    }
                    service_rules(svc, &chain, &mut s);
                    if !was_routed {
                        let _ = writeln!(
                            s,
                            "add element ip {TABLE} {} {{ {} : goto {chain} }}",
                            dispatch_map(f),
                            element(f)
                        );
                    }
                }
                _ => {
                    if was_routed {
                        let _ = writeln!(
                            s,
                            "delete element ip {TABLE} {} {{ {} }}",
                            dispatch_map(f),
                            element(f)
                        );
                        let _ = writeln!(removals, "delete chain ip {TABLE} {chain}");
                    }
                    if new.is_some() && !was_rejected {
                        let _ = writeln!(
                            s,
                            "add element ip {TABLE} {} {{ {} }}",
                            no_endpoint_set(f),
                            element(f)
                        );
                    }
                    if new.is_none() && was_rejected {
                        let _ = writeln!(
                            s,
                            "delete element ip {TABLE} {} {{ {} }}",
                            no_endpoint_set(f),
                            element(f)
                        );
                    }
                }
            }
        }
        // Affinity sets of endpoints that are gone (their rules went with the flushed or
        // deleted chains above).
        for f in &self.pending.dirty {
            if let Some(Written::Routed { affinity_sets }) = self.written.get(f) {
                let keep = self
                    .pending
                    .services
                    .get(f)
                    .map(written_affinity)
                    .unwrap_or_default();
                for set in affinity_sets.iter().filter(|s| !keep.contains(s)) {
                    let _ = writeln!(removals, "delete set ip {TABLE} {set}");
                }
            }
        }
        let hairpin = self.desired_hairpin();
        let added: Vec<String> = hairpin
            .difference(&self.written_hairpin)
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
        let gone: Vec<String> = self
            .written_hairpin
            .difference(&hairpin)
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {TABLE} hairpin-endpoints {{ {} }}",
                added.join(", ")
            );
        }
        if !gone.is_empty() {
            let _ = writeln!(
                s,
                "delete element ip {TABLE} hairpin-endpoints {{ {} }}",
                gone.join(", ")
            );
        }
        s.push_str(&removals);
        s
    }

    /// Removes the table (everything this mode installs).
    pub fn cleanup(netns: Option<&str>) -> Result<(), ProxyError> {
        // `add` first makes `delete` succeed whether or not the table exists, in one
        // transaction and without listing the table (a listing of 10 000 Services takes
        // seconds).
        run_with_input(
            netns,
            "nft",
            &["-f", "-"],
            &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
        )
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
        self.mark_written();
        Ok(())
    }
}

impl NftablesProxy {
    /// Records that the pending changes are in the kernel.
    fn mark_written(&mut self) {
        self.written_hairpin = self.desired_hairpin();
        for f in std::mem::take(&mut self.pending.dirty) {
            match self.pending.services.get(&f) {
                Some(s) if !s.backends.is_empty() => {
                    self.written.insert(
                        f,
                        Written::Routed {
                            affinity_sets: written_affinity(s),
                        },
                    );
                }
                Some(_) => {
                    self.written.insert(f, Written::Rejected);
                }
                None => {
                    self.written.remove(&f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{LbAlgorithm, Protocol};

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
            external_local: false,
        }
    }

    #[test]
    fn renders_verdict_map_and_numgen_cascade() {
        let mut p = NftablesProxy::new();
        p.upsert_service(&svc(3)).unwrap();
        let s = p.render();
        let chain = svc_chain(&svc(0).frontend);
        for rule in [
            format!("add rule ip kube-proxy {chain} meta l4proto tcp numgen random mod 3 0 dnat to 10.244.0.1:8080"),
            format!("add rule ip kube-proxy {chain} meta l4proto tcp numgen random mod 2 0 dnat to 10.244.0.2:8080"),
            format!("add rule ip kube-proxy {chain} meta l4proto tcp dnat to 10.244.0.3:8080"),
            format!("add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {chain} }}"),
            "add element ip kube-proxy hairpin-endpoints { 10.244.0.1 . 10.244.0.1, 10.244.0.2 . 10.244.0.2, 10.244.0.3 . 10.244.0.3 }".to_owned(),
        ] {
            assert!(s.contains(&rule), "{rule} missing from\n{s}");
        }
    }

    #[test]
    fn empty_service_goes_to_the_reject_set() {
        let mut p = NftablesProxy::new();
        p.upsert_service(&svc(0)).unwrap();
        assert!(p
            .render()
            .contains("add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 }"));
    }

    #[test]
    fn changes_touch_only_what_changed() {
        let mut p = NftablesProxy::new();
        let chain = svc_chain(&svc(0).frontend);
        p.upsert_service(&svc(2)).unwrap();
        p.mark_written();
        // New backends: the chain is rewritten, the dispatch element stays.
        p.upsert_service(&svc(3)).unwrap();
        let s = p.render();
        assert!(
            s.contains(&format!("flush chain ip kube-proxy {chain}")),
            "{s}"
        );
        assert!(!s.contains("service-ips"), "{s}");
        assert!(
            s.contains("add element ip kube-proxy hairpin-endpoints { 10.244.0.3 . 10.244.0.3 }"),
            "{s}"
        );
        p.mark_written();
        // No endpoints left: out of the map, chain deleted, into the reject set.
        p.upsert_service(&svc(0)).unwrap();
        let s = p.render();
        assert!(
            s.contains("delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }"),
            "{s}"
        );
        assert!(
            s.contains(&format!("delete chain ip kube-proxy {chain}")),
            "{s}"
        );
        assert!(
            s.contains("add element ip kube-proxy no-endpoint-services"),
            "{s}"
        );
        assert!(
            s.contains("delete element ip kube-proxy hairpin-endpoints"),
            "{s}"
        );
        p.mark_written();
        // Deleted: out of the reject set.
        p.delete_service(&svc(0).frontend).unwrap();
        let s = p.render();
        assert_eq!(
            s,
            "delete element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 }\n"
        );
    }

    #[test]
    fn affinity_sets_of_removed_endpoints_are_deleted() {
        let mut p = NftablesProxy::new();
        let mut s2 = svc(2);
        s2.affinity = SessionAffinity::ClientIp {
            timeout_seconds: 30,
        };
        p.upsert_service(&s2).unwrap();
        let s = p.render();
        assert!(s.contains("flags dynamic,timeout ; timeout 30s"), "{s}");
        assert!(s.contains("update @affinity-"), "{s}");
        p.mark_written();
        let mut s1 = svc(1);
        s1.affinity = s2.affinity;
        p.upsert_service(&s1).unwrap();
        let gone = affinity_set(&s2.frontend, &s2.backends[1]);
        assert!(p
            .render()
            .contains(&format!("delete set ip kube-proxy {gone}")));
    }
}
