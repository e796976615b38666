//! Privileged functional tests of the iptables and nftables proxy modes: the same service
//! behaviours the eBPF datapath is tested for, inside a network namespace each test creates
//! (and removes, even on failure). Backends are small Python servers in that namespace, on
//! loopback addresses; the service range is routed locally there, so nothing leaves it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use skiff_agent::proxy::iptables::IptablesProxy;
use skiff_agent::proxy::nftables::NftablesProxy;
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};
use skiff_test_support::netns::{spawn_ready, Netns};
use skiff_test_support::require_root;

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
struct Node {
    servers: Vec<Child>,
    /// Deleted after Drop stopped the servers.
    netns: Netns,
}

const SERVER: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, port))
def udp():
    while True:
        _, peer = u.recvfrom(100); u.sendto(f"{ip} {peer[0]}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept(); c.sendall(f"{ip} {peer[0]}".encode()); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
ip, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Backends answer "their-address peer-address"; the peer only with a 5th argument "peer".
keep = (lambda r: r) if sys.argv[5:] == ["peer"] else (lambda r: r.split()[0])
for _ in range(n):
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=2); print(keep(s.recv(100).decode())); s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b"x", (ip, port)); print(keep(s.recv(100).decode())); s.close()
    except ConnectionRefusedError:
        print("REFUSED")
    except OSError as e:
        print("ERROR", e)
"#;

impl Node {
    fn new(tag: &str) -> Self {
        let netns = Netns::new(format!("skiff-{tag}-{}", std::process::id()));
        netns.loopback_up();
        // Untranslated VIP traffic is delivered locally (and refused) instead of routed anywhere.
        netns.ip(&["route", "add", "local", "10.96.0.0/16", "dev", "lo"]);
        Self {
            servers: Vec::new(),
            netns,
        }
    }

    fn name(&self) -> &str {
        self.netns.name()
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.name()];
        all.extend_from_slice(args);
        sh(&all);
    }

    fn backend(&mut self, ip: &str, port: u16) {
        self.servers.push(backend(&self.netns, ip, port));
    }

    /// Sends `n` requests to ip:port and counts the answers by backend.
    fn requests(&self, ip: &str, port: u16, n: usize, proto: &str) -> BTreeMap<String, usize> {
        requests_from(self.name(), ip, port, n, proto)
    }
}

/// Starts a backend in `netns` answering on ip:port (TCP and UDP) with its address; ready once
/// its sockets are bound.
fn backend(netns: &Netns, ip: &str, port: u16) -> Child {
    spawn_ready(
        netns
            .exec("python3")
            .args(["-c", SERVER, ip, &port.to_string()]),
    )
}

/// Sends `n` requests from namespace `netns` to ip:port and counts the answers by backend.
fn requests_from(
    netns: &str,
    ip: &str,
    port: u16,
    n: usize,
    proto: &str,
) -> BTreeMap<String, usize> {
    answers_from(netns, ip, port, n, proto, false)
}

/// Sends `n` requests from namespace `netns` to ip:port and counts the answers by backend, or
/// with `peer` by "backend peer" (the source address the backend saw).
fn answers_from(
    netns: &str,
    ip: &str,
    port: u16,
    n: usize,
    proto: &str,
    peer: bool,
) -> BTreeMap<String, usize> {
    {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "python3",
                "-c",
                CLIENT,
                ip,
                &port.to_string(),
                &n.to_string(),
                proto,
            ])
            .args(peer.then_some("peer"))
            .output()
            .expect("client");
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
        counts
    }
}

/// Two namespaces joined to the node's by veth pairs, as in the eBPF NodePort test: a client
/// (10.250.0.2; the node is 10.250.0.1 on that link) and a remote node (10.251.0.2) with a
/// backend and no route to the client, so its answers come back only if the node masquerades.
struct Outside {
    /// The remote node's backend, stopped on drop.
    servers: Vec<Child>,
    client: Netns,
    remote: Netns,
}

impl Outside {
    fn new(node: &Node) -> Self {
        let n = node.name();
        let out = Self {
            servers: Vec::new(),
            client: Netns::linked_to(
                format!("{n}-c"),
                n,
                "ext0",
                "10.250.0.1/24",
                "10.250.0.2/24",
            ),
            remote: Netns::linked_to(
                format!("{n}-r"),
                n,
                "ext1",
                "10.251.0.1/24",
                "10.251.0.2/24",
            ),
        };
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Local NodePort backends on the node's loopback (127/8 would need route_localnet).
        for b in NODE_BACKENDS {
            node.exec(&["ip", "addr", "add", &format!("{b}/32"), "dev", "lo"]);
        }
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        kill_all(&mut self.servers);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill_all(&mut self.servers);
    }
}

fn kill_all(children: &mut [Child]) {
    for s in children {
        let _ = s.kill();
        let _ = s.wait();
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
        external_local: false,
    }
}

const BACKENDS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
const NODE_BACKENDS: [&str; 2] = ["10.244.0.11", "10.244.0.12"];
const REMOTE_BACKEND: &str = "10.251.0.2";

fn node_port(protocol: Protocol, backends: &[&str]) -> Service {
    Service {
        frontend: Frontend::node_port(30080, protocol),
        ..service(protocol, backends, SessionAffinity::None)
    }
}

/// NodePort from another namespace: local backends (DNAT) and a remote one (DNAT + masquerade),
/// TCP and UDP; without endpoints refused; deleted, no longer served.
fn node_port_scenario(ns: &mut Node, proxy: &mut dyn Datapath) {
    let mut outside = Outside::new(ns);
    for b in NODE_BACKENDS {
        ns.backend(b, 8080);
    }
    let remote = backend(&outside.remote, REMOTE_BACKEND, 8080);
    outside.servers.push(remote);
    let all = [NODE_BACKENDS[0], NODE_BACKENDS[1], REMOTE_BACKEND];
    for proto in [Protocol::Tcp, Protocol::Udp] {
        proxy.upsert_service(&node_port(proto, &all)).unwrap();
    }
    proxy.commit().unwrap();
    for proto in ["tcp", "udp"] {
        let counts = requests_from(outside.client.name(), "10.250.0.1", 30080, 90, proto);
        let mut want = all.map(str::to_owned).to_vec();
        want.sort();
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            want,
            "{proto}: {counts:?}"
        );
    }
    // What the remote backend sees as the source: with the Cluster policy the node's address
    // (masqueraded, so that its reply comes back through the node), with Local the client's
    // (the service proxy then gives only local endpoints; the remote one here shows the
    // masquerade is skipped).
    let client = "10.250.0.2";
    let mut seen = |local: bool| {
        let service = Service {
            external_local: local,
            ..node_port(Protocol::Tcp, &[REMOTE_BACKEND])
        };
        proxy.upsert_service(&service).unwrap();
        proxy.commit().unwrap();
        answers_from(outside.client.name(), "10.250.0.1", 30080, 10, "tcp", true)
    };
    let cluster = seen(false);
    assert!(
        !cluster.is_empty()
            && cluster
                .keys()
                .all(|a| a.starts_with(REMOTE_BACKEND) && !a.ends_with(&format!(" {client}"))),
        "Cluster: masqueraded: {cluster:?}"
    );
    // Without the masquerade the reply goes to the client itself: the remote namespace needs
    // a route back through the node (a real node's pods have one through their default route).
    let status = outside
        .remote
        .exec("ip")
        .args(["route", "add", "10.250.0.0/24", "via", "10.251.0.1"])
        .status()
        .expect("ip route");
    assert!(status.success());
    let local = seen(true);
    assert_eq!(
        local,
        BTreeMap::from([(format!("{REMOTE_BACKEND} {client}"), 10)]),
        "Local: the client's address"
    );
    proxy
        .upsert_service(&node_port(Protocol::Tcp, &[]))
        .unwrap();
    proxy.commit().unwrap();
    assert_eq!(
        requests_from(outside.client.name(), "10.250.0.1", 30080, 2, "tcp"),
        BTreeMap::from([("REFUSED".to_owned(), 2)])
    );
    for proto in [Protocol::Tcp, Protocol::Udp] {
        proxy
            .delete_service(&Frontend::node_port(30080, proto))
            .unwrap();
    }
    proxy.commit().unwrap();
    // Nothing listens on the node's own port 30080: refused by the node's stack.
    assert_eq!(
        requests_from(outside.client.name(), "10.250.0.1", 30080, 2, "tcp"),
        BTreeMap::from([("REFUSED".to_owned(), 2)])
    );
    // `outside` stops the remote namespace's server and removes the namespaces when it drops.
}

fn scenario(ns: &mut Node, proxy: &mut dyn Datapath) {
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
    require_root!("network namespaces, iptables");
    let mut ns = Node::new("ipt");
    let mut proxy = IptablesProxy::in_netns(ns.name());
    scenario(&mut ns, &mut proxy);
    node_port_scenario(&mut ns, &mut proxy);
    IptablesProxy::cleanup(Some(ns.name())).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iptables-save"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("KUBE-"),
        "cleanup removes every chain"
    );
}

#[test]
fn nftables_mode_routes_like_kube_proxy() {
    require_root!("network namespaces, nft");
    let mut ns = Node::new("nft");
    let mut proxy = NftablesProxy::in_netns(ns.name());
    scenario(&mut ns, &mut proxy);
    node_port_scenario(&mut ns, &mut proxy);
    NftablesProxy::cleanup(Some(ns.name())).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("kube-proxy"),
        "cleanup removes the table"
    );
}
