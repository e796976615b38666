//! Service create to resolvable: how long a new Service takes from its API write until the
//! node's cluster DNS responder (in skiff-agent) answers its name (issue 15's "a new Service
//! resolves within the time the datapath is programmed", target p99 < 50 ms).
//!
//! Runs on the API-to-datapath measurement's skiff-control and skiff-agent. The responder
//! listens on the first address of the node's podCIDR (with IP_FREEBIND, as on a node before
//! its bridge exists); the measurement puts that address on the client namespace's loopback so
//! its queries reach it. First `background` Services are created (the zone the responder
//! rebuilds then holds all of them); then Services are created one at a time, each timed from
//! sending its POST until an A query for `<name>.default.svc.cluster.local`, repeated every
//! 0.2 ms, is answered with its ClusterIP.
//!
//! Then as many again, asked the way a pod asks: at the `kube-dns` Service's ClusterIP, from a
//! socket made in the cgroup the agent's eBPF programs are attached to, so that `sendmsg4`
//! sends each query to the node's responder (the Service's endpoint on this node) and
//! `recvmsg4` gives the answer the ClusterIP as its source.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::lab::Lab;
use crate::{check_stop, Latency};

/// The agent's node name in the API measurement.
const NODE: &str = "skb-node";
/// Background Services created at once.
const PARALLEL: usize = 16;
/// Pause between measured creates.
const SPACING: Duration = Duration::from_millis(50);
/// Interval between queries for a name not answered yet.
const POLL: Duration = Duration::from_micros(200);
/// A name not answered after this long fails the measurement.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the create-to-resolvable measurement found.
#[derive(Debug, Serialize)]
pub struct DnsResult {
    /// Services in the API before the measured ones.
    pub background: usize,
    /// Measured creates.
    pub creates: usize,
    /// POST sent -> the name answered with the Service's ClusterIP.
    pub resolvable: Latency,
    /// The POST itself (answer received).
    pub write: Latency,
    /// The POST's answer received -> the name answered: the agent's share (watch, sync,
    /// zone) without the API server's write, which the client waits for first.
    pub after_write: Latency,
    /// POST sent -> answered through the `kube-dns` Service's ClusterIP (None: not measured).
    pub resolvable_vip: Option<Latency>,
    /// The POST's answer -> answered through the ClusterIP.
    pub after_write_vip: Option<Latency>,
    /// Why the measurement through the ClusterIP failed, if it did.
    pub vip_error: Option<String>,
}

fn fqdn(name: &str) -> String {
    format!("{name}.default.svc.cluster.local.")
}

/// The responder's answer for `name`: its A address, if it has one.
fn ask(socket: &UdpSocket, to: SocketAddr, name: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(fqdn(name))?, RecordType::A));
    socket.send_to(&m.to_vec()?, to)?;
    let mut buf = [0u8; 1500];
    let len = match socket.recv(&mut buf) {
        Ok(len) => len,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let reply = Message::from_vec(&buf[..len])?;
    if reply.metadata.response_code != ResponseCode::NoError {
        return Ok(None);
    }
    Ok(reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    }))
}

/// Queries `name` until it is answered with `ip`; returns when it was.
fn wait_resolvable(
    socket: &UdpSocket,
    to: SocketAddr,
    name: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if ask(socket, to, name)? == Some(ip) {
            return Ok(Instant::now());
        }
        check_stop()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} was not answered with {ip} within {TIMEOUT:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))?)
}

fn cluster_ip(svc: &Service) -> anyhow::Result<Ipv4Addr> {
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    ip.context("the Service has no ClusterIP")?
        .parse()
        .context("the Service's ClusterIP")
}

/// Creates Services `<prefix>-0..creates` one at a time, each timed from its POST until
/// `socket` gets its ClusterIP from `to`; returns the latencies, the POSTs' durations and the
/// times from each POST's answer to the name's (ns).
fn creates_until_resolvable(
    rt: &tokio::runtime::Runtime,
    services: &Api<Service>,
    prefix: &str,
    creates: usize,
    socket: &UdpSocket,
    to: SocketAddr,
) -> anyhow::Result<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let (mut resolvable, mut writes, mut after_write) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..creates {
        let name = format!("{prefix}-{i}");
        let start = Instant::now();
        let svc = rt
            .block_on(services.create(&PostParams::default(), &service(&name)?))
            .with_context(|| format!("creating Service {name}"))?;
        let written = Instant::now();
        let seen = wait_resolvable(socket, to, &name, cluster_ip(&svc)?)?;
        resolvable.push(seen.duration_since(start).as_nanos() as u64);
        writes.push(written.duration_since(start).as_nanos() as u64);
        after_write.push(seen.duration_since(written).as_nanos() as u64);
        std::thread::sleep(SPACING);
    }
    Ok((resolvable, writes, after_write))
}

/// The creates-to-resolvable series through the `kube-dns` Service's ClusterIP. `last` is a
/// Service the responder already answers for directly.
fn through_cluster_ip(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    lab: &Lab,
    last: &Service,
    creates: usize,
) -> anyhow::Result<(Latency, Latency)> {
    let kube_dns = rt
        .block_on(Api::<Service>::namespaced(client.clone(), "kube-system").get("kube-dns"))
        .context("reading the kube-dns Service")?;
    let to = SocketAddr::from((cluster_ip(&kube_dns)?, 53));
    // A socket belongs to the cgroup its creator was in: made in the eBPF one, its datagrams
    // go through the agent's socket hooks; the process goes back at once.
    lab.enter_cgroup(true)?;
    let socket = UdpSocket::bind("0.0.0.0:0");
    lab.enter_cgroup(false)?;
    let socket = socket?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    // The Service's endpoint is this node's responder once the Node is Ready.
    let name = last.metadata.name.clone().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ask(&socket, to, &name)? != Some(cluster_ip(last)?) {
        check_stop()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{to} (kube-dns) did not answer {name} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let (mut resolvable, _, mut after_write) =
        creates_until_resolvable(rt, &services, "dns-vip", creates, &socket, to)?;
    Ok((Latency::of(&mut resolvable), Latency::of(&mut after_write)))
}

/// Runs the measurement on the calling thread, which is in the client namespace.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    lab: &Lab,
    background: usize,
    creates: usize,
) -> anyhow::Result<DnsResult> {
    // The responder's address: the first of the node's podCIDR, once the node has one.
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let gateway = loop {
        let cidr = rt
            .block_on(nodes.get_opt(NODE))?
            .and_then(|n| n.spec?.pod_cidr);
        if let Some(cidr) = cidr {
            let net: Ipv4Addr = cidr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("the node's podCIDR {cidr}"))?;
            break Ipv4Addr::from(u32::from(net) + 1);
        }
        check_stop()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{NODE} got no podCIDR within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{gateway}/32"), "dev", "lo"])
        .status()
        .context("running ip addr add")?;
    anyhow::ensure!(status.success(), "ip addr add {gateway}/32 dev lo failed");
    let to = SocketAddr::from((gateway, 53));
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created: Vec<Service> = rt.block_on(
        futures::stream::iter(0..background)
            .map(|i| {
                let services = services.clone();
                async move {
                    let svc = service(&format!("dns-bg-{i}"))?;
                    let created = services.create(&PostParams::default(), &svc).await?;
                    anyhow::Ok(created)
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect(),
    )?;
    if let Some(last) = created.last() {
        let name = last.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ask(&socket, to, &name)? != Some(cluster_ip(last)?) {
            check_stop()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the background Services were not resolvable within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let (mut resolvable, mut writes, mut after_write) =
        creates_until_resolvable(rt, &services, "dns", creates, &socket, to)?;
    let last = rt.block_on(services.get(&format!("dns-{}", creates.saturating_sub(1))))?;
    let (resolvable_vip, after_write_vip, vip_error) =
        match through_cluster_ip(rt, client, lab, &last, creates) {
            Ok((l, a)) => (Some(l), Some(a), None),
            Err(e) => {
                check_stop()?;
                eprintln!("bench: create to resolvable through kube-dns failed: {e:#}");
                (None, None, Some(format!("{e:#}")))
            }
        };
    Ok(DnsResult {
        background,
        creates,
        resolvable: Latency::of(&mut resolvable),
        write: Latency::of(&mut writes),
        after_write: Latency::of(&mut after_write),
        resolvable_vip,
        after_write_vip,
        vip_error,
    })
}
