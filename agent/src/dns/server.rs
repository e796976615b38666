//! The node's DNS responder: UDP and TCP on one address, answering from the current zone and
//! forwarding other names.
//!
//! Bounded everywhere: at most [`MAX_FORWARDS`] forwarded questions in flight (more get
//! SERVFAIL at once instead of queueing), at most [`MAX_TCP_CLIENTS`] TCP connections, each
//! closed after [`TCP_IDLE`] without a request. The service proxy publishes a new zone snapshot
//! after each sync that changed it; the responder reads it without waiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use hickory_proto::op::Message;

use super::forward::Forwarder;
use super::respond::{self, Handled, Transport};
use super::zone::Zone;

/// Forwarded questions in flight, at most.
pub const MAX_FORWARDS: usize = 1024;
/// TCP clients at once, at most.
pub const MAX_TCP_CLIENTS: usize = 256;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// The zone the responder answers from: an immutable snapshot, replaced by the service proxy
/// after each sync that changed it. Readers never wait (an atomic load), and a reader keeps
/// the snapshot it loaded while a new one is published.
#[derive(Clone)]
pub struct ZoneHandle(Arc<ArcSwap<Zone>>);

impl ZoneHandle {
    /// A handle holding `zone`.
    pub fn new(zone: Zone) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(zone)))
    }

    /// The current zone.
    pub fn current(&self) -> Arc<Zone> {
        self.0.load_full()
    }

    /// Replaces the zone.
    pub fn replace(&self, zone: Zone) {
        self.0.store(Arc::new(zone));
    }
}

/// The responder's shared parts.
struct Responder {
    zone: ZoneHandle,
    forwarder: Forwarder,
    forwards: Semaphore,
}

impl Responder {
    /// The reply to one request, forwarding when it is not the cluster's.
    async fn reply(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match respond::handle(&self.zone.current(), request, transport) {
            Handled::Reply(bytes) => Some(bytes),
            Handled::Drop => None,
            Handled::Forward(request) => self.forward(&request, transport).await,
        }
    }

    /// The reply to a question outside the cluster: an upstream's, or SERVFAIL when none
    /// answers in time or too many forwards are in flight.
    async fn forward(&self, request: &Message, transport: Transport) -> Option<Vec<u8>> {
        let forwarded = match self.forwards.try_acquire() {
            Ok(_permit) => self.forwarder.forward(request, transport).await,
            Err(_) => None,
        };
        if let Some(bytes) = forwarded.and_then(|reply| reply.to_vec().ok()) {
            return Some(bytes);
        }
        match respond::server_failure(request, transport) {
            Handled::Reply(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// Serves DNS on `udp` and `tcp` until `shutdown`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: ZoneHandle,
    forwarder: Forwarder,
    shutdown: CancellationToken,
) {
    let responder = Arc::new(Responder {
        zone,
        forwarder,
        forwards: Semaphore::new(MAX_FORWARDS),
    });
    let udp = Arc::new(udp);
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = udp.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                // Cluster names are answered here, without a task or a copy of the datagram:
                // they are most queries, and the socket path around them was most of a
                // query's cost (docs/bench/dns.md). Only a forward, which waits on another
                // server, gets a task.
                match respond::handle(&responder.zone.current(), &buf[..n], Transport::Udp) {
                    Handled::Reply(reply) => {
                        let _ = udp.send_to(&reply, from).await;
                    }
                    Handled::Drop => {}
                    Handled::Forward(request) => {
                        let (responder, udp) = (responder.clone(), udp.clone());
                        tokio::spawn(async move {
                            if let Some(reply) = responder.forward(&request, Transport::Udp).await {
                                let _ = udp.send_to(&reply, from).await;
                            }
                        });
                    }
                }
            }
            accepted = tcp.accept() => {
                let Ok((stream, from)) = accepted else { continue };
                // Full: the connection is closed at once rather than queued.
                let Ok(permit) = clients.clone().try_acquire_owned() else {
                    tracing::debug!(%from, "too many DNS clients over TCP");
                    continue;
                };
                let responder = responder.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = connection(stream, &responder).await;
                });
            }
        }
    }
}

/// Length-prefixed requests and replies on one TCP connection, until it is closed or idle.
async fn connection(mut stream: TcpStream, responder: &Responder) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut request = vec![0u8; usize::from(len?)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut request))
            .await
            .map_err(std::io::Error::other)??;
        let Some(reply) = responder.reply(&request, Transport::Tcp).await else {
            return Ok(());
        };
        let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
    }
}

/// The UDP receive buffer asked for: the default (212 992 bytes, ~300 queries) overflowed
/// after a few milliseconds without the CPU under load (docs/bench/dns.md); 4 MiB queues a
/// burst as latency instead of dropping it, and bounds the memory a flood can hold.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_RECEIVE_BUFFER`]: past the system's `rmem_max` where allowed (root), else
/// up to it.
fn grow_receive_buffer(socket: &impl std::os::fd::AsFd) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &UDP_RECEIVE_BUFFER);
    }
}

/// Binds UDP and TCP on `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(addr).await?;
    grow_receive_buffer(&udp);
    // The same port for TCP (an ephemeral UDP port is reused).
    let tcp = TcpListener::bind(udp.local_addr()?).await?;
    Ok((udp, tcp))
}

/// Binds UDP and TCP on `addr` before the address exists on the node (`IP_FREEBIND`): the
/// responder listens on the pod bridge's gateway address, and the bridge is only made when the
/// node's first pod starts.
pub fn bind_free(addr: std::net::SocketAddrV4) -> std::io::Result<(UdpSocket, TcpListener)> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let open = |kind: SockType| -> std::io::Result<std::os::fd::OwnedFd> {
        let fd = socket::socket(
            AddressFamily::Inet,
            kind,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
        if kind == SockType::Stream {
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        }
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(addr),
        )?;
        Ok(fd)
    };
    let udp = std::net::UdpSocket::from(open(SockType::Datagram)?);
    grow_receive_buffer(&udp);
    let tcp_fd = open(SockType::Stream)?;
    socket::listen(
        &tcp_fd,
        socket::Backlog::new(128).map_err(std::io::Error::from)?,
    )?;
    let tcp = std::net::TcpListener::from(tcp_fd);
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    async fn start(upstreams: Vec<SocketAddr>) -> (SocketAddr, ZoneHandle, CancellationToken) {
        let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let zone = ZoneHandle::new(Zone::empty("cluster.local", 5));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            udp,
            tcp,
            zone.clone(),
            Forwarder::new(upstreams, Duration::from_millis(200)),
            shutdown.clone(),
        ));
        (addr, zone, shutdown)
    }

    async fn ask_udp(addr: SocketAddr, name: &str) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&query(name), addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    /// A Service added to the zone resolves on the next query, over UDP and TCP.
    #[tokio::test]
    async fn a_replaced_zone_answers_at_once_over_udp_and_tcp() {
        let (addr, zone, shutdown) = start(Vec::new()).await;
        let name = "kubia.default.svc.cluster.local.";
        assert_eq!(
            ask_udp(addr, name).await.metadata.response_code,
            ResponseCode::NXDomain
        );
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": "kubia", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20"}}),
        )
        .unwrap();
        zone.replace(Zone::build("cluster.local", 5, [&svc], []));
        assert_eq!(ask_udp(addr, name).await.answers.len(), 1);

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let q = query(name);
        stream
            .write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&q).await.unwrap();
        let n = stream.read_u16().await.unwrap();
        let mut reply = vec![0u8; usize::from(n)];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);
        shutdown.cancel();
    }

    /// Without an upstream that answers, an outside name is SERVFAIL, quickly.
    #[tokio::test]
    async fn an_outside_name_without_an_answering_upstream_is_servfail() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (addr, _, shutdown) = start(vec![silent.local_addr().unwrap()]).await;
        let started = std::time::Instant::now();
        let reply = ask_udp(addr, "example.test.").await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_secs(2));
        shutdown.cancel();
    }
}
