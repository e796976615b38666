//! The iptables mode: kube-proxy's rule layout, for comparison with the eBPF datapath.
//!
//! `nat` table: `PREROUTING`/`OUTPUT` jump to `KUBE-SERVICES`, which matches each frontend and
//! jumps to its `KUBE-SVC-<hash>` chain; that picks an endpoint chain `KUBE-SEP-<hash>` with
//! `-m statistic --mode random` (probability 1/n, 1/(n-1), ...), and the endpoint chain DNATs.
//! ClientIP affinity uses `-m recent`, as kube-proxy does. A frontend without endpoints is
//! rejected in the `filter` table (ECONNREFUSED). NodePorts go through `KUBE-NODEPORTS` for
//! local destination addresses and are masqueraded (`KUBE-MARK-MASQ`/`KUBE-POSTROUTING`).
//!
//! Changes are buffered and written by [`Datapath::commit`] with one `iptables-restore
//! --noflush`: the changed services' chains and the `KUBE-SERVICES` dispatch chain are rewritten
//! (as kube-proxy's full sync does); other chains are left as they are. Maglev is not
//! expressible in iptables: such services use random choice here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::rules::{frontend_hash, proto, run_status, run_with_input, short_hash, Pending};
use super::{BackendAddr, Datapath, Frontend, ProxyError, Service, SessionAffinity};

/// The jumps from the built-in chains into this mode's chains: (table, chain, target).
const JUMPS: [(&str, &str, &str); 6] = [
    ("nat", "OUTPUT", "KUBE-SERVICES"),
    ("nat", "PREROUTING", "KUBE-SERVICES"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
    ("filter", "OUTPUT", "KUBE-SERVICES"),
    ("filter", "FORWARD", "KUBE-SERVICES"),
    // NodePorts without endpoints are rejected for traffic addressed to the node itself.
    ("filter", "INPUT", "KUBE-SERVICES"),
];

/// The iptables arguments that check (`-C`), insert (`-I`) or delete (`-D`) one of [`JUMPS`].
fn jump_rule<'a>(op: &'a str, table: &'a str, chain: &'a str, target: &'a str) -> [&'a str; 10] {
    [
        "-t",
        table,
        op,
        chain,
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        target,
    ]
}

const MASQ_MARK: &str = "0x4000/0x4000";

/// From how many chain names in one transaction iptables-restore is made to list the table's
/// chains in one dump rather than fetch them one by one (see [`IptablesProxy::render`]).
const LIST_ALL_CHAINS_FROM: usize = 2000;

/// The iptables proxy.
#[derive(Debug, Default)]
pub struct IptablesProxy {
    /// Network namespace the rules are written in (`None`: this process's).
    netns: Option<String>,
    pending: Pending,
    /// Endpoint chains each frontend had at the last commit (to delete the stale ones).
    written: BTreeMap<Frontend, Vec<String>>,
    /// Frontends the `nat` dispatch chains jump for, as last written.
    written_dispatch: BTreeSet<Frontend>,
    /// Frontends the `filter` chain rejects, as last written.
    written_reject: BTreeSet<Frontend>,
    base_installed: bool,
}

fn svc_chain(f: &Frontend) -> String {
    format!("KUBE-SVC-{}", frontend_hash(f))
}

fn sep_chain(f: &Frontend, b: &BackendAddr) -> String {
    format!(
        "KUBE-SEP-{}",
        short_hash(&[&frontend_hash(f), &b.ip.to_string(), &b.port.to_string()])
    )
}

impl IptablesProxy {
    /// A proxy with nothing programmed yet (rules are installed at the first commit).
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

    fn install_base(&mut self) -> Result<(), ProxyError> {
        if self.base_installed {
            return Ok(());
        }
        let mut script = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        let _ = writeln!(script, "-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}");
        let _ = writeln!(
            script,
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"
        );
        script.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n-A KUBE-POSTROUTING -j MASQUERADE\nCOMMIT\n");
        script.push_str("*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n");
        run_with_input(
            self.netns.as_deref(),
            "iptables-restore",
            &["--noflush"],
            &script,
        )?;
        for (table, chain, target) in JUMPS {
            let rule = jump_rule("-C", table, chain, target);
            if !run_status(self.netns.as_deref(), "iptables", &rule)? {
                let insert = jump_rule("-I", table, chain, target);
                if !run_status(self.netns.as_deref(), "iptables", &insert)? {
                    return Err(ProxyError::Command {
                        command: format!("iptables {}", insert.join(" ")),
                        detail: "failed".into(),
                    });
                }
            }
        }
        self.base_installed = true;
        Ok(())
    }

    /// The frontends the `nat` dispatch chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`) should jump
    /// for, and those the `filter` chain should reject: both follow from the desired services.
    fn desired_dispatch(&self) -> (BTreeSet<Frontend>, BTreeSet<Frontend>) {
        let mut nat = BTreeSet::new();
        let mut reject = BTreeSet::new();
        for (f, svc) in &self.pending.services {
            if svc.backends.is_empty() {
                reject.insert(*f);
            } else {
                nat.insert(*f);
            }
        }
        (nat, reject)
    }

    /// The iptables-restore input for the pending changes.
    ///
    /// Only what changed is written: the chains of changed services, the `nat` dispatch chains
    /// only when the set of routed frontends changed (not when only backends changed), the
    /// `filter` chain only when the set of rejected frontends changed.
    fn render(&self) -> String {
        let (nat_dispatch, reject) = self.desired_dispatch();
        let rewrite_nat_dispatch = nat_dispatch != self.written_dispatch;
        let rewrite_filter = reject != self.written_reject;

        let mut decls = String::new();
        let mut rules = String::new();
        let mut deletes = String::new();
        // Every chain name the transaction mentions (see `list_all_chains` below).
        let mut touched = 0_usize;
        for f in &self.pending.dirty {
            let old = self.written.get(f).cloned().unwrap_or_default();
            match self
                .pending
                .services
                .get(f)
                .filter(|s| !s.backends.is_empty())
            {
                Some(svc) => {
                    let chain = svc_chain(f);
                    let _ = writeln!(decls, ":{chain} - [0:0]");
                    let seps: Vec<String> = svc.backends.iter().map(|b| sep_chain(f, b)).collect();
                    for sep in &seps {
                        let _ = writeln!(decls, ":{sep} - [0:0]");
                    }
                    touched += 1 + seps.len();
                    if f.is_node_port() && !svc.external_local {
                        // Traffic from outside to a NodePort is masqueraded
                        // (externalTrafficPolicy Cluster: the endpoint may be on another node,
                        // whose reply must come back through this one), as kube-proxy does.
                        // With Local the endpoints are this node's and the client's address
                        // stays. Here, not in KUBE-NODEPORTS, so that a policy change
                        // rewrites it with the service's chain.
                        let _ = writeln!(rules, "-A {chain} -j KUBE-MARK-MASQ");
                    }
                    if let SessionAffinity::ClientIp { timeout_seconds } = svc.affinity {
                        for sep in &seps {
                            let _ = writeln!(rules, "-A {chain} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {timeout_seconds} --reap -j {sep}");
                        }
                    }
                    let n = seps.len();
                    for (i, sep) in seps.iter().enumerate() {
                        if i + 1 < n {
                            let p = 1.0 / (n - i) as f64;
                            let _ = writeln!(rules, "-A {chain} -m statistic --mode random --probability {p:.11} -j {sep}");
                        } else {
                            let _ = writeln!(rules, "-A {chain} -j {sep}");
                        }
                    }
                    for (b, sep) in svc.backends.iter().zip(&seps) {
                        let p = proto(f.protocol);
                        let _ = writeln!(rules, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", b.ip);
                        if matches!(svc.affinity, SessionAffinity::ClientIp { .. }) {
                            let _ = writeln!(rules, "-A {sep} -p {p} -m recent --name {sep} --mask 255.255.255.255 --rsource --set -m {p} -j DNAT --to-destination {b}");
                        } else {
                            let _ = writeln!(
                                rules,
                                "-A {sep} -p {p} -m {p} -j DNAT --to-destination {b}"
                            );
                        }
                    }
                    for stale in old.iter().filter(|c| !seps.contains(c)) {
                        let _ = writeln!(decls, ":{stale} - [0:0]");
                        let _ = writeln!(deletes, "-X {stale}");
                        touched += 1;
                    }
                }
                None => {
                    if self.written.contains_key(f) {
                        for stale in old.iter().chain(std::iter::once(&svc_chain(f))) {
                            let _ = writeln!(decls, ":{stale} - [0:0]");
                            let _ = writeln!(deletes, "-X {stale}");
                            touched += 1;
                        }
                    }
                }
            }
        }
        // The dispatch chains reference every service: rewritten whole (as kube-proxy does),
        // but only when a frontend came or went. Declaring them flushes them, so they are only
        // declared when rewritten.
        if rewrite_nat_dispatch {
            decls.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
            touched += nat_dispatch.len();
            for f in &nat_dispatch {
                let p = proto(f.protocol);
                if f.is_node_port() {
                    // A NodePort matches its port on any local address, through
                    // KUBE-NODEPORTS (its service chain masquerades, see above).
                    let _ = writeln!(
                        rules,
                        "-A KUBE-NODEPORTS -p {p} -m {p} --dport {} -j {}",
                        f.port,
                        svc_chain(f)
                    );
                } else {
                    let _ = writeln!(
                        rules,
                        "-A KUBE-SERVICES -d {}/32 -p {p} -m {p} --dport {} -j {}",
                        f.ip,
                        f.port,
                        svc_chain(f)
                    );
                }
            }
            rules.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
        }
        // iptables-restore (nf_tables backend, 1.8.9) gathers the names of the chains a
        // transaction mentions in a sorted linked list (a linear insertion per rule) and then
        // fetches each of them with its own netlink request: quadratic, and > 30 s for the
        // first sync of 10 000 Services. A command without a chain makes it fetch the table's
        // chains in one dump instead; `-S` is such a command that changes nothing (its listing
        // of the table as it was goes to /dev/null). It costs a dump of the table's rules, so
        // it is only used when the batch is large against what the table already holds.
        let written_chains: usize = self.written.values().map(|v| v.len() + 1).sum();
        let list_all_chains = touched > LIST_ALL_CHAINS_FROM && touched * 4 > written_chains;
        let mut script = String::new();
        if !decls.is_empty() || !rules.is_empty() {
            script.push_str("*nat\n");
            if list_all_chains {
                script.push_str("-S\n");
            }
            script.push_str(&decls);
            script.push_str(&rules);
            script.push_str(&deletes);
            script.push_str("COMMIT\n");
        }
        if rewrite_filter {
            script.push_str("*filter\n:KUBE-SERVICES - [0:0]\n");
            for f in &reject {
                let p = proto(f.protocol);
                // A NodePort without endpoints is rejected on every local address.
                let dst = if f.is_node_port() {
                    "-m addrtype --dst-type LOCAL".to_owned()
                } else {
                    format!("-d {}/32", f.ip)
                };
                let _ = writeln!(script, "-A KUBE-SERVICES {dst} -p {p} -m {p} --dport {} -j REJECT --reject-with icmp-port-unreachable", f.port);
            }
            script.push_str("COMMIT\n");
        }
        script
    }

    /// Removes every rule and chain this mode installs.
    pub fn cleanup(netns: Option<&str>) -> Result<(), ProxyError> {
        for (table, chain, target) in JUMPS {
            while run_status(netns, "iptables", &jump_rule("-D", table, chain, target))? {}
        }
        for table in ["nat", "filter"] {
            let out = super::rules::command(netns, "iptables-save")
                .args(["-t", table])
                .output()
                .map_err(|e| ProxyError::Command {
                    command: "iptables-save".into(),
                    detail: e.to_string(),
                })?;
            let chains: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| c.starts_with("KUBE-"))
                .map(str::to_owned)
                .collect();
            if chains.is_empty() {
                continue;
            }
            // One transaction flushes every chain (a declaration flushes an existing chain)
            // and then deletes them, rather than two iptables calls per chain (which took
            // minutes at 10 000 Services). `-S`: see `render`.
            let mut script = format!("*{table}\n");
            if chains.len() > LIST_ALL_CHAINS_FROM {
                script.push_str("-S\n");
            }
            for c in &chains {
                let _ = writeln!(script, ":{c} - [0:0]");
            }
            for c in &chains {
                let _ = writeln!(script, "-X {c}");
            }
            script.push_str("COMMIT\n");
            run_with_input(netns, "iptables-restore", &["--noflush"], &script)?;
        }
        Ok(())
    }
}

impl Datapath for IptablesProxy {
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
        self.install_base()?;
        let script = self.render();
        if !script.is_empty() {
            run_with_input(
                self.netns.as_deref(),
                "iptables-restore",
                &["--noflush"],
                &script,
            )?;
        }
        self.mark_written();
        Ok(())
    }
}

impl IptablesProxy {
    /// Records that the pending changes are in the kernel.
    fn mark_written(&mut self) {
        let (nat_dispatch, reject) = self.desired_dispatch();
        self.written_dispatch = nat_dispatch;
        self.written_reject = reject;
        for f in std::mem::take(&mut self.pending.dirty) {
            match self
                .pending
                .services
                .get(&f)
                .filter(|s| !s.backends.is_empty())
            {
                Some(s) => {
                    let seps = s.backends.iter().map(|b| sep_chain(&f, b)).collect();
                    self.written.insert(f, seps);
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
    use std::net::Ipv4Addr;

    fn svc(backends: &[(u8, u16)], affinity: SessionAffinity) -> Service {
        Service {
            frontend: Frontend {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Tcp,
            },
            backends: backends
                .iter()
                .map(|&(last, port)| BackendAddr {
                    ip: Ipv4Addr::new(10, 244, 0, last),
                    port,
                })
                .collect(),
            algorithm: LbAlgorithm::Random,
            affinity,
            external_local: false,
        }
    }

    #[test]
    fn renders_kube_proxy_layout_with_statistic_probabilities() {
        let mut p = IptablesProxy::new();
        p.upsert_service(&svc(
            &[(1, 8080), (2, 8080), (3, 8080)],
            SessionAffinity::None,
        ))
        .unwrap();
        let script = p.render();
        let f = svc(&[], SessionAffinity::None).frontend;
        let chain = svc_chain(&f);
        assert!(
            script.contains(&format!(
                "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {chain}"
            )),
            "{script}"
        );
        assert!(script.contains("--probability 0.33333333333"), "{script}");
        assert!(script.contains("--probability 0.50000000000"), "{script}");
        assert!(
            script.contains("-j DNAT --to-destination 10.244.0.3:8080"),
            "{script}"
        );
        assert!(script.ends_with("COMMIT\n"));
    }

    #[test]
    fn no_endpoints_is_a_reject_and_affinity_uses_recent() {
        let mut p = IptablesProxy::new();
        p.upsert_service(&svc(&[], SessionAffinity::None)).unwrap();
        assert!(p
            .render()
            .contains("-j REJECT --reject-with icmp-port-unreachable"));
        let mut p = IptablesProxy::new();
        p.upsert_service(&svc(
            &[(1, 80)],
            SessionAffinity::ClientIp {
                timeout_seconds: 30,
            },
        ))
        .unwrap();
        let script = p.render();
        assert!(script.contains("--rcheck --seconds 30 --reap"), "{script}");
        assert!(script.contains("--set -m tcp -j DNAT"), "{script}");
    }

    #[test]
    fn backend_changes_leave_the_dispatch_chains_alone() {
        let mut p = IptablesProxy::new();
        p.upsert_service(&svc(&[(1, 80), (2, 80)], SessionAffinity::None))
            .unwrap();
        assert!(p.render().contains(":KUBE-SERVICES - [0:0]"));
        p.mark_written();
        p.upsert_service(&svc(&[(1, 80), (3, 80)], SessionAffinity::None))
            .unwrap();
        let script = p.render();
        assert!(!script.contains("KUBE-SERVICES"), "{script}");
        assert!(!script.contains("*filter"), "{script}");
        assert!(
            script.contains("-j DNAT --to-destination 10.244.0.3:80"),
            "{script}"
        );
        // The chain of the backend that went away is deleted.
        let gone = sep_chain(
            &svc(&[], SessionAffinity::None).frontend,
            &BackendAddr {
                ip: Ipv4Addr::new(10, 244, 0, 2),
                port: 80,
            },
        );
        assert!(script.contains(&format!("-X {gone}")), "{script}");
        assert!(
            !script.contains("-S\n"),
            "small batches fetch their chains one by one"
        );
        p.mark_written();
        // Losing every backend moves the frontend from nat dispatch to the filter reject.
        p.upsert_service(&svc(&[], SessionAffinity::None)).unwrap();
        let script = p.render();
        assert!(script.contains(":KUBE-SERVICES - [0:0]"), "{script}");
        assert!(script.contains("*filter"), "{script}");
        assert!(script.contains("-j REJECT"), "{script}");
    }

    #[test]
    fn a_large_first_sync_lists_the_table_once() {
        let mut p = IptablesProxy::new();
        for i in 0..300_u16 {
            let mut s = svc(
                &[
                    (1, 80),
                    (2, 80),
                    (3, 80),
                    (4, 80),
                    (5, 80),
                    (6, 80),
                    (7, 80),
                    (8, 80),
                    (9, 80),
                    (10, 80),
                ],
                SessionAffinity::None,
            );
            s.frontend.ip = Ipv4Addr::new(10, 96, (i >> 8) as u8, i as u8);
            p.upsert_service(&s).unwrap();
        }
        assert!(p.render().starts_with("*nat\n-S\n"));
    }
}
