//! NodePorts from outside the node: the tc programs on the node's external interfaces.
//!
//! The lab's namespace is the node. Two more namespaces are joined to it by veth pairs, each
//! end an "external" interface of the node:
//! - the client (10.250.0.2, node side `ext0` 10.250.0.1), outside the test cgroup, so only
//!   the tc programs can translate its connections;
//! - a remote node (10.251.0.2, node side `ext1` 10.251.0.1) with a backend of its own and no
//!   route to the client: its replies come back only because they are source-NATed to the node.
//!
//! Local backends are the lab's usual ones (10.244.0.n on the node's loopback).

use super::*;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::EbpfLoader;

const NODE_EXT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const NODE_TO_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const LOCAL_PORT: u16 = 30080;
const REMOTE_PORT: u16 = 30081;
const EMPTY_PORT: u16 = 30082;

/// The node, client and remote namespaces.
struct NodePortLab {
    remote_backend: Option<Child>,
    // Fields drop in order: the client and remote namespaces go before the node's (the lab's).
    client_ns: Netns,
    remote_ns: Netns,
    lab: Lab,
}

impl Drop for NodePortLab {
    fn drop(&mut self) {
        if let Some(c) = &mut self.remote_backend {
            kill(c);
        }
    }
}

impl NodePortLab {
    fn new() -> Self {
        let mut lab = Lab::new();
        for n in 1..=3 {
            lab.start_backend(n);
        }
        let node = lab.netns.name().to_owned();
        let link = |ns: &str, ext: &str, node_ip: Ipv4Addr, peer_ip: Ipv4Addr| {
            Netns::linked_to(
                format!("{node}-{ns}"),
                &node,
                ext,
                &format!("{node_ip}/24"),
                &format!("{peer_ip}/24"),
            )
        };
        let np = Self {
            remote_backend: None,
            client_ns: link("c", "ext0", NODE_EXT, CLIENT),
            remote_ns: link("r", "ext1", NODE_TO_REMOTE, REMOTE),
            lab,
        };
        // The node forwards (to the remote node); the client and the remote have only their
        // own subnet, so nothing can leave the lab.
        np.lab.netns.enter(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding")
        });
        np
    }

    /// Starts the datapath with the NodePort programs on ext0 and ext1, in the node's namespace
    /// (interface names, addresses and tc attachment are per namespace).
    fn datapath(&self) -> EbpfDatapath {
        let mut config = self.lab.config();
        config.nodeport_interfaces = vec!["ext0".into(), "ext1".into()];
        self.lab
            .netns
            .enter(|| EbpfDatapath::start(config))
            .expect("start the datapath")
    }

    fn start_remote_backend(&mut self) {
        let addr = format!("{REMOTE}:{BACKEND_PORT}");
        let (child, _, _) = spawn_helper(&[
            "serve",
            "--netns",
            self.remote_ns.name(),
            "--id",
            "remote",
            "--addr",
            &addr,
        ]);
        self.remote_backend = Some(child);
    }

    /// A client in the client namespace, in no test cgroup: the socket programs never see it.
    fn client(&self) -> Client {
        let (child, stdin, lines) = spawn_helper(&["client", "--netns", self.client_ns.name()]);
        Client {
            child,
            stdin,
            lines,
        }
    }
}

fn node_port(port: u16, protocol: Protocol, backends: Vec<BackendAddr>) -> Service {
    Service {
        frontend: Frontend::node_port(port, protocol),
        backends,
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::None,
        external_local: false,
    }
}

fn remote_backend() -> BackendAddr {
    BackendAddr {
        ip: REMOTE,
        port: BACKEND_PORT,
    }
}

/// A client in one namespace reaches backends in others through the node's NodePort: local
/// backends (DNAT, reverse NAT on the way out) and a backend on another node (DNAT + SNAT).
pub fn from_another_netns() {
    let mut np = NodePortLab::new();
    np.start_remote_backend();
    let mut dp = np.datapath();
    let local = (1..=3).map(backend).collect::<Vec<_>>();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        dp.upsert_service(&node_port(LOCAL_PORT, protocol, local.clone()))
            .unwrap();
    }
    dp.upsert_service(&node_port(
        REMOTE_PORT,
        Protocol::Tcp,
        vec![remote_backend()],
    ))
    .unwrap();
    dp.upsert_service(&node_port(EMPTY_PORT, Protocol::Tcp, vec![]))
        .unwrap();
    let mut client = np.client();

    // TCP: the client's connections (it checks that getpeername shows the NodePort, which the
    // handshake needs anyway) spread over the three local backends.
    let ids = client.tcp(NODE_EXT, LOCAL_PORT, 300).ids();
    assert_near_uniform(&ids, 3, "TCP NodePort");
    // UDP datagrams too; the client checks that replies come from the NodePort.
    let ids = client.udp(NODE_EXT, LOCAL_PORT, 300).ids();
    assert_eq!(
        counts(&ids).len(),
        1,
        "one socket, one flow, one backend: {ids:?}"
    );
    let ids = client.connected_udp(NODE_EXT, LOCAL_PORT, 300, 0).ids();
    assert_near_uniform(&ids, 3, "UDP NodePort (a socket per datagram)");

    // The remote backend answers only through SNAT (its node has no route to the client).
    assert_eq!(
        client.tcp(NODE_EXT, REMOTE_PORT, 20).ids(),
        vec!["remote"; 20]
    );
    // A kept connection keeps working through the connection-tracking entries.
    let handle = client.open(NODE_EXT, REMOTE_PORT);
    for _ in 0..5 {
        assert_eq!(client.ask(&handle), "remote");
    }

    // No ready endpoints: refused, as kube-proxy's reject rule does.
    let refused = format!("errno {}", nix::libc::ECONNREFUSED);
    match client.tcp(NODE_EXT, EMPTY_PORT, 1) {
        Outcome::Err(e) => assert!(e.starts_with(&refused), "{e}"),
        Outcome::Ok(ids) => panic!("a NodePort without endpoints answered: {ids:?}"),
    }

    // A removed backend gets no new connections; a removed service no traffic at all.
    dp.upsert_service(&node_port(LOCAL_PORT, Protocol::Tcp, vec![backend(2)]))
        .unwrap();
    assert_eq!(client.tcp(NODE_EXT, LOCAL_PORT, 30).ids(), vec!["b2"; 30]);
    dp.delete_service(&Frontend::node_port(LOCAL_PORT, Protocol::Tcp))
        .unwrap();
    match client.tcp(NODE_EXT, LOCAL_PORT, 1) {
        Outcome::Err(e) => assert!(e.starts_with(&refused), "{e}"),
        Outcome::Ok(ids) => panic!("a deleted NodePort answered: {ids:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Packet level, with BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------------------------

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

/// The one's-complement sum of 16-bit words, folded.
fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    u32::from(csum(&p, 0))
}

/// A parsed Ethernet/IPv4/TCP-or-UDP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
}

/// Builds a frame with valid checksums (`udp_csum`: false sends UDP without a checksum).
fn build(f: Frame, tcp_flags: u8, udp_csum: bool) -> Vec<u8> {
    let payload = b"hello";
    let l4_len = if f.proto == 6 { 20 } else { 8 } + payload.len();
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + l4_len;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, f.proto, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&f.src.ip().octets());
    ip.extend_from_slice(&f.dst.ip().octets());
    let c = !csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&f.src.port().to_be_bytes());
    l4.extend_from_slice(&f.dst.port().to_be_bytes());
    if f.proto == 6 {
        l4.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    if f.proto == 6 || udp_csum {
        let c = !csum(&l4, pseudo_sum(*f.src.ip(), *f.dst.ip(), f.proto, l4_len));
        let at = if f.proto == 6 { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

/// Parses a frame and checks its IPv4 and TCP/UDP checksums; returns the UDP checksum field.
fn parse_checked(p: &[u8]) -> (Frame, u16) {
    let ip = &p[14..34];
    assert_eq!(csum(ip, 0), 0xffff, "IPv4 header checksum of {p:02x?}");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &p[34..];
    let field = u16::from_be_bytes(if proto == 6 {
        [l4[16], l4[17]]
    } else {
        [l4[6], l4[7]]
    });
    if proto == 6 || field != 0 {
        assert_eq!(
            csum(l4, pseudo_sum(src, dst, proto, l4.len())),
            0xffff,
            "L4 checksum of {p:02x?}"
        );
    }
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    (
        Frame {
            src: SocketAddrV4::new(src, port(0)),
            dst: SocketAddrV4::new(dst, port(2)),
            proto,
        },
        field,
    )
}

/// Runs a loaded tc program over a frame as if it were on interface `ifindex`.
fn run(prog: &SchedClassifier, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    // struct __sk_buff up to `ifindex` (offset 40): the kernel takes the device from it.
    let mut ctx = [0_u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0_u8; frame.len() + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// The tc programs at packet level: DNAT with checksums, conntrack, reverse NAT, SNAT and
/// redirect for a remote backend, UDP without checksum, other traffic untouched.
pub fn packet_level() {
    let np = NodePortLab::new();
    let mut dp = np.datapath();
    let local: Vec<BackendAddr> = (1..=3).map(backend).collect();
    dp.upsert_service(&node_port(LOCAL_PORT, Protocol::Tcp, local.clone()))
        .unwrap();
    dp.upsert_service(&node_port(LOCAL_PORT, Protocol::Udp, local.clone()))
        .unwrap();
    dp.upsert_service(&node_port(
        REMOTE_PORT,
        Protocol::Tcp,
        vec![remote_backend()],
    ))
    .unwrap();

    let node = np.lab.netns.name().to_owned();
    let pin_dir = np.lab.pin_dir.clone();
    in_netns(&node, move || {
        // A second copy of the programs over the same pinned maps, to run by hand.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(ebpf::embedded_object().expect("embedded object"))
            .expect("load the object");
        for name in ["nodeport_ingress", "nodeport_egress"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().expect("verify the tc program");
        }
        let ingress: &SchedClassifier = ebpf
            .program("nodeport_ingress")
            .unwrap()
            .try_into()
            .unwrap();
        let egress: &SchedClassifier = ebpf.program("nodeport_egress").unwrap().try_into().unwrap();
        let ext0 = nix::net::if_::if_nametoindex("ext0").unwrap();
        let ext1 = nix::net::if_::if_nametoindex("ext1").unwrap();

        // A SYN to the NodePort is DNATed to one of the local backends.
        let client = sock(CLIENT, 40000);
        let syn = Frame {
            src: client,
            dst: sock(NODE_EXT, LOCAL_PORT),
            proto: 6,
        };
        let (rc, out) = run(ingress, ext0, &build(syn, 0x02, true));
        assert_eq!(rc, TC_ACT_OK);
        let (dnat, _) = parse_checked(&out);
        assert_eq!(dnat.src, client);
        assert!(
            local.iter().any(|b| sock(b.ip, b.port) == dnat.dst),
            "{dnat:?}"
        );
        // Later packets of the connection go to the same backend (connection tracking).
        for _ in 0..20 {
            let (_, out) = run(ingress, ext0, &build(syn, 0x10, true));
            assert_eq!(parse_checked(&out).0, dnat);
        }
        // The backend's reply leaves with the NodePort as its source.
        let reply = Frame {
            src: dnat.dst,
            dst: client,
            proto: 6,
        };
        let (rc, out) = run(egress, ext0, &build(reply, 0x12, true));
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(
            parse_checked(&out).0,
            Frame {
                src: sock(NODE_EXT, LOCAL_PORT),
                dst: client,
                proto: 6
            }
        );

        // UDP without a checksum keeps none; with one, it stays valid.
        for (sport, with_csum) in [(40001, false), (40002, true)] {
            let f = Frame {
                src: sock(CLIENT, sport),
                dst: sock(NODE_EXT, LOCAL_PORT),
                proto: 17,
            };
            let (rc, out) = run(ingress, ext0, &build(f, 0, with_csum));
            assert_eq!(rc, TC_ACT_OK);
            let (got, field) = parse_checked(&out);
            assert!(
                local.iter().any(|b| sock(b.ip, b.port) == got.dst),
                "{got:?}"
            );
            assert_eq!(field == 0, !with_csum, "UDP checksum field {field:#x}");
        }

        // A remote backend: DNAT and SNAT to the node's address towards it, redirected there.
        let client2 = sock(CLIENT, 40003);
        let syn = Frame {
            src: client2,
            dst: sock(NODE_EXT, REMOTE_PORT),
            proto: 6,
        };
        let (rc, out) = run(ingress, ext0, &build(syn, 0x02, true));
        assert_eq!(rc, TC_ACT_REDIRECT, "SNATed packets are redirected to ext1");
        let (fwd, _) = parse_checked(&out);
        assert_eq!(fwd.dst, sock(REMOTE, BACKEND_PORT));
        assert_eq!(*fwd.src.ip(), NODE_TO_REMOTE);
        assert!(fwd.src.port() >= 61000, "SNAT port {}", fwd.src.port());
        // Its reply arrives on ext1 and is turned back into the NodePort's answer to the client.
        let reply = Frame {
            src: fwd.dst,
            dst: fwd.src,
            proto: 6,
        };
        let (rc, out) = run(ingress, ext1, &build(reply, 0x12, true));
        assert_eq!(
            rc, TC_ACT_REDIRECT,
            "replies are redirected to the client's interface"
        );
        assert_eq!(
            parse_checked(&out).0,
            Frame {
                src: sock(NODE_EXT, REMOTE_PORT),
                dst: client2,
                proto: 6
            }
        );

        // Anything else passes untouched: another port, and a reply nobody translated.
        for (prog, f) in [
            (
                ingress,
                Frame {
                    src: client,
                    dst: sock(NODE_EXT, 22),
                    proto: 6,
                },
            ),
            (
                egress,
                Frame {
                    src: sock(NODE_EXT, 22),
                    dst: client,
                    proto: 6,
                },
            ),
        ] {
            let frame = build(f, 0x02, true);
            let (rc, out) = run(prog, ext0, &frame);
            assert_eq!((rc, out), (TC_ACT_OK, frame));
        }
    });
}
