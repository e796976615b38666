//! Names outside the cluster go to the node's upstream resolvers (its `/etc/resolv.conf`, or
//! `--dns-upstream`), with a bounded cache, as CoreDNS's `forward` and `cache` plugins do.
//!
//! Each upstream is tried in order with a short timeout, so a resolver that does not answer
//! costs the client at most `timeout × upstreams` and then a SERVFAIL, never a hang. Replies
//! are checked against the question (id, name, type) before they are relayed. Positive and
//! negative replies are cached for their TTL (negative: the SOA minimum), at most
//! [`MAX_TTL`], in at most [`CACHE_ENTRIES`] entries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use super::respond::Transport;

/// The longest a forwarded reply is cached.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// The most replies cached.
pub const CACHE_ENTRIES: usize = 10_000;

/// (lowercase name, type, class)
type Key = (String, u16, u16);

struct Cached {
    reply: Message,
    until: Instant,
}

/// Forwards to the upstream resolvers.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl Forwarder {
    /// Forwarding to `upstreams` (none: every outside name gets SERVFAIL at once), each given
    /// `timeout`.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            upstreams,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The nameservers of a resolv.conf (port 53), in order.
    pub fn upstreams_of(resolv_conf: &str) -> Vec<SocketAddr> {
        resolv_conf
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next() == Some("nameserver"))
                    .then(|| fields.next())
                    .flatten()
                    .and_then(|ip| ip.parse().ok())
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .collect()
    }

    /// The reply to `request` (its id set), from the cache or an upstream; `None` when no
    /// upstream answered in time.
    pub async fn forward(&self, request: &Message, transport: Transport) -> Option<Message> {
        let key = key(request)?;
        if let Some(mut reply) = self.cached(&key) {
            reply.metadata.id = request.metadata.id;
            return Some(reply);
        }
        let bytes = request.to_vec().ok()?;
        for upstream in &self.upstreams {
            let asked = tokio::time::timeout(self.timeout, exchange(*upstream, &bytes, transport));
            let Ok(Ok(reply)) = asked.await else {
                tracing::debug!(%upstream, "the upstream resolver did not answer");
                continue;
            };
            if !answers(&reply, request) {
                continue;
            }
            self.remember(key, &reply);
            return Some(reply);
        }
        None
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cache.get(key) {
            Some(c) if c.until > Instant::now() => Some(c.reply.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: Key, reply: &Message) {
        if reply.metadata.truncation
            || !matches!(
                reply.metadata.response_code,
                ResponseCode::NoError | ResponseCode::NXDomain
            )
        {
            return;
        }
        let ttl = cache_ttl(reply);
        if ttl.is_zero() {
            return;
        }
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            // Expired entries first; if none, drop an arbitrary tenth: the cache stays bounded
            // and an evicted name is only asked upstream again.
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                let drop: Vec<Key> = cache.keys().take(CACHE_ENTRIES / 10).cloned().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Cached {
                reply: reply.clone(),
                until: Instant::now() + ttl,
            },
        );
    }
}

fn key(request: &Message) -> Option<Key> {
    let q = request.queries.first()?;
    Some((
        q.name().to_ascii().to_ascii_lowercase(),
        u16::from(q.query_type()),
        u16::from(q.query_class()),
    ))
}

/// Whether `reply` is the answer to `request` (same id and question).
fn answers(reply: &Message, request: &Message) -> bool {
    reply.metadata.id == request.metadata.id && key(reply) == key(request)
}

/// How long a reply may be cached: its smallest TTL, or for a negative one its SOA's minimum.
fn cache_ttl(reply: &Message) -> Duration {
    let positive = reply.answers.iter().map(|r| r.ttl).min();
    let negative = reply.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
        _ => None,
    });
    let ttl = if reply.answers.is_empty() {
        negative
    } else {
        positive
    };
    Duration::from_secs(u64::from(ttl.unwrap_or(0))).min(MAX_TTL)
}

/// One exchange with an upstream: a datagram from a fresh socket (a random source port), or a
/// length-prefixed message over TCP.
async fn exchange(
    upstream: SocketAddr,
    request: &[u8],
    transport: Transport,
) -> std::io::Result<Message> {
    let bytes = match transport {
        Transport::Udp => {
            let bind: SocketAddr = if upstream.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(upstream).await?;
            socket.send(request).await?;
            let mut buf = vec![0u8; 65_535];
            let n = socket.recv(&mut buf).await?;
            buf.truncate(n);
            buf
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(request.len()).map_err(std::io::Error::other)?;
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(request).await?;
            let n = stream.read_u16().await?;
            let mut buf = vec![0u8; usize::from(n)];
            stream.read_exact(&mut buf).await?;
            buf
        }
    };
    Message::from_vec(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn request(name: &str) -> Message {
        let mut m = Message::new(99, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    /// A fake upstream on loopback answering every A query with 192.0.2.1 (TTL 60); counts
    /// the queries it got.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen.fetch_add(1, Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                r.add_queries(q.queries.iter().cloned());
                let name = q.queries[0].name().clone();
                r.add_answer(Record::from_rdata(
                    name,
                    60,
                    RData::A(A([192, 0, 2, 1].into())),
                ));
                socket.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn replies_are_relayed_then_served_from_the_cache() {
        let (addr, count) = upstream().await;
        let f = Forwarder::new(vec![addr], Duration::from_secs(2));
        let reply = f
            .forward(&request("example.test."), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(reply.answers.len(), 1);
        let mut again = request("EXAMPLE.test.");
        again.metadata.id = 7;
        let cached = f.forward(&again, Transport::Udp).await.unwrap();
        assert_eq!(
            cached.metadata.id, 7,
            "the cached reply takes the new request's id"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the second came from the cache"
        );
    }

    /// An upstream that never answers costs the timeout, then the next one is asked; with
    /// none answering the caller gets `None` (SERVFAIL) in bounded time.
    #[tokio::test]
    async fn a_silent_upstream_is_skipped_after_its_timeout() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (addr, _) = upstream().await;
        let f = Forwarder::new(
            vec![silent.local_addr().unwrap(), addr],
            Duration::from_millis(200),
        );
        let started = Instant::now();
        assert!(f
            .forward(&request("a.test."), Transport::Udp)
            .await
            .is_some());
        assert!(started.elapsed() < Duration::from_secs(2));
        let only_silent = Forwarder::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(200),
        );
        let started = Instant::now();
        assert!(only_silent
            .forward(&request("b.test."), Transport::Udp)
            .await
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let conf = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fd00::53\noptions ndots:1\nnameserver bogus\n";
        assert_eq!(
            Forwarder::upstreams_of(conf),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
