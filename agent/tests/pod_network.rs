//! Privileged test of pod networking: two "nodes" (network namespaces joined by a veth pair),
//! each with its bridge and pods (namespaces of their own) wired by the agent's netlink code.
//! Pods reach each other on one node and across nodes without NAT: the receiver sees the
//! sender's pod IP. Every namespace is removed on drop, even on failure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use skiff_agent::network::ipam::Ipam;
use skiff_agent::network::pod_network::{self, BRIDGE};
use skiff_k8s::cidr::Ipv4Cidr;
use skiff_test_support::netns::{in_netns, ip, spawn_ready, Netns, NETNS_DIR};
use skiff_test_support::require_root;

/// Named network namespaces (deleted on drop, after the servers are killed).
#[derive(Default)]
struct Namespaces {
    servers: Vec<Child>,
    names: Vec<Netns>,
}

impl Namespaces {
    fn add(&mut self, tag: &str) -> String {
        let ns = Netns::new(format!("skpn-{tag}-{}", std::process::id()));
        let name = ns.name().to_owned();
        self.names.push(ns);
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` with a netlink handle inside the node namespace `node`.
fn on_node<T: Send>(
    node: &str,
    f: impl FnOnce(rtnetlink::Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send,
) -> T {
    in_netns(node, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { f(skiff_agent::network::connect().unwrap()).await })
    })
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=5); print(s.recv(100).decode())
"#;

/// Starts the echo-the-peer server in pod namespace `pod`.
fn serve(nss: &mut Namespaces, pod: &str) {
    let child =
        spawn_ready(Command::new("ip").args(["netns", "exec", pod, "python3", "-c", SERVER]));
    nss.servers.push(child);
}

/// What the server at `dst` saw as the client's address, connecting from pod namespace `pod`.
fn seen_by(pod: &str, dst: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            pod,
            "python3",
            "-c",
            CLIENT,
            &dst.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{pod} -> {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct NodeSetup {
    range: Ipv4Cidr,
    ipam: Ipam,
}

fn wire(node: &str, setup: &mut NodeSetup, uid: &str, pod: &str) -> Ipv4Addr {
    let ip = setup.ipam.allocate(uid).unwrap();
    let (range, gateway, uid, path) = (
        setup.range,
        setup.ipam.gateway(),
        uid.to_owned(),
        netns_path(pod),
    );
    on_node(node, move |h| {
        Box::pin(async move {
            pod_network::ensure_bridge(&h, range, gateway)
                .await
                .unwrap();
            pod_network::attach(&h, &uid, &path, ip, range, gateway)
                .await
                .unwrap();
            // Idempotent: an agent retrying after a crash.
            pod_network::attach(&h, &uid, &path, ip, range, gateway)
                .await
                .unwrap();
        })
    });
    ip
}

#[test]
fn pods_reach_each_other_on_a_node_and_across_nodes_without_nat() {
    require_root!("network namespaces");
    let mut nss = Namespaces::default();
    let (n1, n2) = (nss.add("n1"), nss.add("n2"));
    let (a, a2, b) = (nss.add("a"), nss.add("a2"), nss.add("b"));
    // The nodes' link: 192.168.77.1 <-> 192.168.77.2, nothing else (no route out).
    ip(&[
        "-n", &n1, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", &n2,
    ]);
    for (n, addr) in [(&n1, "192.168.77.1/24"), (&n2, "192.168.77.2/24")] {
        ip(&["-n", n, "addr", "add", addr, "dev", "uplink"]);
        ip(&["-n", n, "link", "set", "uplink", "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let dirs = tempfile::tempdir().unwrap();
    let mut node1 = NodeSetup {
        range: "10.244.1.0/24".parse().unwrap(),
        ipam: Ipam::open(&dirs.path().join("n1"), "10.244.1.0/24".parse().unwrap()).unwrap(),
    };
    let mut node2 = NodeSetup {
        range: "10.244.2.0/24".parse().unwrap(),
        ipam: Ipam::open(&dirs.path().join("n2"), "10.244.2.0/24".parse().unwrap()).unwrap(),
    };
    let ip_a = wire(&n1, &mut node1, "aaaa1111-0000-0000-0000-000000000001", &a);
    let ip_a2 = wire(&n1, &mut node1, "aaaa2222-0000-0000-0000-000000000002", &a2);
    let ip_b = wire(&n2, &mut node2, "bbbb1111-0000-0000-0000-000000000003", &b);
    assert_eq!(
        (ip_a, ip_a2, ip_b),
        (
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 1, 3),
            Ipv4Addr::new(10, 244, 2, 2),
        )
    );
    assert!(ip(&["-n", &a, "-o", "addr", "show", "dev", "eth0"]).contains("10.244.1.2/24"));
    assert!(
        ip(&["-n", &n1, "-o", "link", "show", "master", BRIDGE])
            .lines()
            .count()
            == 2
    );
    // Each node routes the other's podCIDR through it.
    on_node(&n1, |h| {
        Box::pin(async move {
            pod_network::route_to_node(
                &h,
                "10.244.2.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 77, 2),
            )
            .await
            .unwrap();
        })
    });
    on_node(&n2, |h| {
        Box::pin(async move {
            pod_network::route_to_node(
                &h,
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 77, 1),
            )
            .await
            .unwrap();
        })
    });

    serve(&mut nss, &a2);
    serve(&mut nss, &b);
    assert_eq!(
        seen_by(&a, ip_a2),
        ip_a.to_string(),
        "same node, over the bridge"
    );
    assert_eq!(seen_by(&a, ip_b), ip_a.to_string(), "across nodes, no NAT");
    assert_eq!(seen_by(&b, ip_a2), ip_b.to_string(), "and back");

    // Detaching removes both ends of the veth.
    let gone = on_node(&n1, |h| {
        Box::pin(async move {
            pod_network::detach(&h, "aaaa1111-0000-0000-0000-000000000001")
                .await
                .unwrap()
        })
    });
    assert!(gone);
    assert!(!ip(&["-n", &a, "-o", "link"]).contains("eth0"));
    // The bridge keeps its own fixed address whichever ports come and go, so the gateway
    // address the other pods have cached stays right and they still reach other nodes.
    let mac = pod_network::bridge_mac(node1.ipam.gateway())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        ip(&["-n", &n1, "-o", "link", "show", BRIDGE]).contains(&format!("link/ether {mac} ")),
        "{}",
        ip(&["-n", &n1, "-o", "link", "show", BRIDGE])
    );
    assert_eq!(
        seen_by(&a2, ip_b),
        ip_a2.to_string(),
        "across nodes after a pod left"
    );
    assert_eq!(
        ip(&["-n", &n1, "-o", "link", "show", "master", BRIDGE])
            .lines()
            .count(),
        1
    );
    let again = on_node(&n1, |h| {
        Box::pin(async move {
            pod_network::detach(&h, "aaaa1111-0000-0000-0000-000000000001")
                .await
                .unwrap()
        })
    });
    assert!(!again, "already gone");
}
