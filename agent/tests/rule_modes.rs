//! Privileged functional tests of the iptables and nftables proxy modes: the same service
//! behaviours the eBPF datapath is tested for, inside a network namespace each test creates
//! (and removes, even on failure). Backends are small Python servers in that namespace, on
//! loopback addresses; the service range is routed locally there, so nothing leaves it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_agent::proxy::iptables::IptablesProxy;
use skiff_agent::proxy::nftables::NftablesProxy;
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with loopback up, the service range routed locally, and backends.
struct Netns {
    name: String,
    servers: Vec<Child>,
}

const SERVER: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, port))
def udp():
    while True:
        _, peer = u.recvfrom(100); u.sendto(ip.encode(), peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept(); c.sendall(ip.encode()); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
ip, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(n):
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=2); print(s.recv(100).decode()); s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b"x", (ip, port)); print(s.recv(100).decode()); s.close()
    except ConnectionRefusedError:
        print("REFUSED")
    except OSError as e:
        print("ERROR", e)
"#;

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("skiff-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self {
            name,
            servers: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // Untranslated VIP traffic is delivered locally (and refused) instead of routed anywhere.
        ns.exec(&["ip", "route", "add", "local", "10.96.0.0/16", "dev", "lo"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    fn backend(&mut self, ip: &str, port: u16) {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "python3",
                "-c",
                SERVER,
                ip,
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend");
        // Ready once it printed "ready": its sockets are bound.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        self.servers.push(child);
    }

    /// Sends `n` requests to ip:port and counts the answers by backend.
    fn requests(&self, ip: &str, port: u16, n: usize, proto: &str) -> BTreeMap<String, usize> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "python3",
                "-c",
                CLIENT,
                ip,
                &port.to_string(),
                &n.to_string(),
                proto,
            ])
            .output()
            .expect("client");
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
        counts
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn service(protocol: Protocol, backends: &[&str], affinity: SessionAffinity) -> Service {
    Service {
        frontend: Frontend {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol,
        },
        backends: backends
            .iter()
            .map(|ip| BackendAddr {
                ip: ip.parse().unwrap(),
                port: 8080,
            })
            .collect(),
        algorithm: LbAlgorithm::Random,
        affinity,
    }
}

const BACKENDS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

fn scenario(ns: &mut Netns, proxy: &mut dyn Datapath) {
    for b in BACKENDS {
        ns.backend(b, 8080);
    }
    // TCP and UDP reach every backend, near-uniformly (300 draws, 100 expected each).
    for proto in [Protocol::Tcp, Protocol::Udp] {
        proxy
            .upsert_service(&service(proto, &BACKENDS, SessionAffinity::None))
            .unwrap();
    }
    proxy.commit().unwrap();
    for proto in ["tcp", "udp"] {
        let counts = ns.requests("10.96.0.10", 80, 300, proto);
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            BACKENDS,
            "{proto}: {counts:?}"
        );
        assert!(
            counts.values().all(|&c| (50..=150).contains(&c)),
            "{proto}: {counts:?}"
        );
    }
    // A removed backend gets no new connections.
    proxy
        .upsert_service(&service(
            Protocol::Tcp,
            &BACKENDS[..2],
            SessionAffinity::None,
        ))
        .unwrap();
    proxy.commit().unwrap();
    let counts = ns.requests("10.96.0.10", 80, 60, "tcp");
    assert!(
        !counts.contains_key(BACKENDS[2]) && counts.len() == 2,
        "{counts:?}"
    );
    // ClientIP affinity sticks.
    proxy
        .upsert_service(&service(
            Protocol::Tcp,
            &BACKENDS,
            SessionAffinity::ClientIp {
                timeout_seconds: 60,
            },
        ))
        .unwrap();
    proxy.commit().unwrap();
    let counts = ns.requests("10.96.0.10", 80, 30, "tcp");
    assert_eq!(counts.len(), 1, "one backend for one client: {counts:?}");
    // No endpoints: connections are refused.
    proxy
        .upsert_service(&service(Protocol::Tcp, &[], SessionAffinity::None))
        .unwrap();
    proxy.commit().unwrap();
    assert_eq!(
        ns.requests("10.96.0.10", 80, 3, "tcp"),
        BTreeMap::from([("REFUSED".to_owned(), 3)])
    );
    // Deleted: the VIP is not translated any more (locally refused in this namespace).
    let f = service(Protocol::Tcp, &[], SessionAffinity::None).frontend;
    proxy.delete_service(&f).unwrap();
    proxy.commit().unwrap();
    let start = Instant::now();
    assert_eq!(
        ns.requests("10.96.0.10", 80, 2, "tcp"),
        BTreeMap::from([("REFUSED".to_owned(), 2)])
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn iptables_mode_routes_like_kube_proxy() {
    if !is_root() {
        eprintln!("SKIPPING iptables_mode_routes_like_kube_proxy: needs root (network namespaces, iptables)");
        return;
    }
    let mut ns = Netns::new("ipt");
    let mut proxy = IptablesProxy::in_netns(&ns.name);
    scenario(&mut ns, &mut proxy);
    IptablesProxy::cleanup(Some(&ns.name)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-save"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("KUBE-"),
        "cleanup removes every chain"
    );
}

#[test]
fn nftables_mode_routes_like_kube_proxy() {
    if !is_root() {
        eprintln!(
            "SKIPPING nftables_mode_routes_like_kube_proxy: needs root (network namespaces, nft)"
        );
        return;
    }
    let mut ns = Netns::new("nft");
    let mut proxy = NftablesProxy::in_netns(&ns.name);
    scenario(&mut ns, &mut proxy);
    NftablesProxy::cleanup(Some(&ns.name)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("kube-proxy"),
        "cleanup removes the table"
    );
}
