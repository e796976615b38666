//! The backend servers and the load generator.
//!
//! Protocol: a request is a line. The server answers every line with its own address and a
//! newline (so each answer names the backend that served it). The client closes first, so
//! TIME_WAIT stays in the client namespace, which is new for every point. (With the server
//! closing first, its TIME_WAIT sockets outlived the point: a later point's connection with the
//! same address pair but a different timestamp offset, because the client computes the offset
//! for the VIP and the server sees the backend, was dropped by PAWS and cost a 1 s SYN
//! retransmission. That measured the lab, not the datapath.)
//!
//! Load-generator threads enter the client namespace themselves (`setns` is per thread), so
//! the main thread stays in the host namespace to run `ip`, and the whole process stays in the
//! benchmark's cgroup, where the eBPF programs are attached.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{backend_ip, vip, BACKENDS, BACKEND_PORT, SERVICE_PORT, STOP};

/// Runs the backend servers on `addrs` until killed; prints `ready` once all listen.
pub fn serve(addrs: &[SocketAddrV4]) -> anyhow::Result<()> {
    // If the benchmark dies without cleaning up, the servers go too.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("setting the parent-death signal")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    rt.block_on(async {
        let mut listeners = Vec::new();
        for addr in addrs {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket
                .bind((*addr).into())
                .with_context(|| format!("binding {addr}"))?;
            listeners.push((socket.listen(8192)?, *addr.ip()));
        }
        println!("ready");
        let mut tasks = Vec::new();
        for (listener, ip) in listeners {
            let reply: std::sync::Arc<[u8]> = format!("{ip}\n").into_bytes().into();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(answer(stream, reply.clone()));
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

async fn answer(mut stream: tokio::net::TcpStream, reply: std::sync::Arc<[u8]>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 512];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' && stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// Moves the calling thread into the network namespace mounted at `ns`.
pub fn enter(ns: &Path) -> anyhow::Result<()> {
    let f = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", ns.display()))?;
    Ok(())
}

/// Runs `f` on a thread inside the namespace `ns`.
fn in_ns<T: Send>(ns: &Path, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a load-generator thread panicked"))?
    })
}

/// A small, fast PRNG (xorshift64*): the choice of Service must cost next to nothing.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and `stream`, so threads differ.
    pub fn new(stream: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self((t ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize) % n
    }
}

/// Where connections go.
#[derive(Debug, Clone, Copy)]
pub enum Targets {
    /// To a random Service's VIP; the datapath picks the backend.
    Vip {
        /// How many Services there are.
        services: usize,
    },
    /// The floor: the client picks a random Service and one of its backends itself and
    /// connects to the backend directly.
    Direct {
        /// How many Services there are.
        services: usize,
    },
}

impl Targets {
    fn pick(&self, rng: &mut Rng) -> SocketAddrV4 {
        match *self {
            Self::Vip { services } => SocketAddrV4::new(vip(rng.below(services)), SERVICE_PORT),
            Self::Direct { services } => {
                // The same work as choosing a Service, then the backend choice a datapath makes.
                let _service = rng.below(services);
                let b = rng.below(usize::from(BACKENDS)) as u8 + 1;
                SocketAddrV4::new(backend_ip(b), BACKEND_PORT)
            }
        }
    }

    fn nth(&self, i: usize) -> SocketAddrV4 {
        match *self {
            Self::Vip { .. } => SocketAddrV4::new(vip(i), SERVICE_PORT),
            Self::Direct { .. } => SocketAddrV4::new(
                backend_ip((i % usize::from(BACKENDS)) as u8 + 1),
                BACKEND_PORT,
            ),
        }
    }

    fn services(&self) -> usize {
        match *self {
            Self::Vip { services } | Self::Direct { services } => services,
        }
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend an answer names, if it is one of ours.
fn answered_by(reply: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(reply).ok()?.strip_suffix('\n')?;
    let ip: Ipv4Addr = text.parse().ok()?;
    (1..=BACKENDS).find(|&b| backend_ip(b) == ip)
}

/// connect + request + close; returns the backend that answered.
fn one_shot(addr: SocketAddrV4, buf: &mut [u8]) -> anyhow::Result<u8> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    // One request, one answer, then the client closes (dropping `s`).
    request(&mut s, buf).with_context(|| format!("{addr} did not answer as a backend"))
}

/// A request on a kept-alive connection; returns the backend that answered.
fn request(s: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<u8> {
    s.write_all(b"r\n")?;
    let mut n = 0;
    while !buf[..n].contains(&b'\n') {
        let r = s.read(&mut buf[n..])?;
        anyhow::ensure!(
            r > 0 && n + r < buf.len(),
            "connection closed or answer too long"
        );
        n += r;
    }
    answered_by(&buf[..n]).with_context(|| {
        format!(
            "answer {:?} is not a backend's",
            String::from_utf8_lossy(&buf[..n])
        )
    })
}

/// A connection to the first Service must be refused before anything is programmed: the VIP
/// is not translated and dies inside the client namespace.
pub fn expect_refused(ns: &Path, addr: SocketAddrV4) -> anyhow::Result<()> {
    in_ns(ns, || {
        match TcpStream::connect_timeout(&addr.into(), IO_TIMEOUT) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => {
                anyhow::bail!("connecting to the unprogrammed {addr}: {e} (expected refused)")
            }
            Ok(_) => anyhow::bail!(
            "the unprogrammed {addr} accepted a connection: the lab is not isolated as expected"
        ),
        }
    })
}

/// Checks that the datapath routes: the first and last Service and 200 random ones must be
/// answered by a real backend, and all backends must show up. Returns how many did.
pub fn verify(ns: &Path, targets: &Targets) -> anyhow::Result<usize> {
    in_ns(ns, || {
        let mut rng = Rng::new(7);
        let mut seen = [false; BACKENDS as usize + 1];
        let mut buf = [0u8; 64];
        let last = targets.services() - 1;
        let mut addrs = vec![targets.nth(0), targets.nth(last)];
        addrs.extend((0..200).map(|_| targets.pick(&mut rng)));
        for addr in addrs {
            let b =
                one_shot(addr, &mut buf).with_context(|| format!("routing check via {addr}"))?;
            seen[usize::from(b)] = true;
        }
        let n = seen.iter().filter(|s| **s).count();
        anyhow::ensure!(
            n == usize::from(BACKENDS),
            "only {n} of {BACKENDS} backends answered 202 connections"
        );
        Ok(n)
    })
}

/// What a measurement found.
pub struct Measured {
    /// Operations per second.
    pub rate: f64,
    /// Latency of each operation, ns (unsorted).
    pub samples: Vec<u64>,
    /// Failed operations (errors or answers not from a backend).
    pub failures: u64,
}

/// Runs `threads` closed-loop workers for `duration`; each calls `op` until the time is up.
fn closed_loop<S: Send>(
    ns: &Path,
    threads: usize,
    duration: Duration,
    setup: impl Fn(&mut Rng) -> anyhow::Result<S> + Sync,
    op: impl Fn(&mut S, &mut Rng, &mut [u8]) -> anyhow::Result<u8> + Sync,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let results: Vec<anyhow::Result<(Vec<u64>, u64, u64)>> = std::thread::scope(|s| {
        let (setup, op) = (&setup, &op);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    enter(ns)?;
                    let mut rng = Rng::new(t as u64 + 1);
                    let mut state = setup(&mut rng)?;
                    let mut buf = [0u8; 64];
                    let mut samples = Vec::with_capacity(1 << 16);
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let end = Instant::now() + duration;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end || STOP.load(Ordering::Relaxed) {
                            break;
                        }
                        match op(&mut state, &mut rng, &mut buf) {
                            Ok(_) => {
                                samples.push(t0.elapsed().as_nanos() as u64);
                                ok += 1;
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    anyhow::Ok((samples, ok, failed))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked")))
            })
            .collect()
    });
    // The rate over the time the threads really ran (the last operations end after `duration`).
    let elapsed = start.elapsed();
    crate::check_stop()?;
    let mut all = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    for r in results {
        let (samples, o, f) = r?;
        all.extend(samples);
        ok += o;
        failed += f;
    }
    anyhow::ensure!(ok > 0, "no operation succeeded ({failed} failed)");
    Ok(Measured {
        rate: ok as f64 / elapsed.as_secs_f64(),
        samples: all,
        failures: failed,
    })
}

/// connect + request + close from one thread: the latency without queueing behind other
/// clients.
pub fn connect_latency(
    ns: &Path,
    targets: &Targets,
    duration: Duration,
) -> anyhow::Result<Measured> {
    connect_rate(ns, targets, duration, 1)
}

/// connect + request + close from `threads` threads in a closed loop.
pub fn connect_rate(
    ns: &Path,
    targets: &Targets,
    duration: Duration,
    threads: usize,
) -> anyhow::Result<Measured> {
    closed_loop(
        ns,
        threads,
        duration,
        |_| Ok(()),
        |_, rng, buf| one_shot(targets.pick(rng), buf),
    )
}

/// Requests on kept-alive connections: each thread opens `conns` connections to random
/// Services (routed once, at connect), then sends each request on a random one of them.
pub fn keepalive_rate(
    ns: &Path,
    targets: &Targets,
    duration: Duration,
    threads: usize,
    conns: usize,
) -> anyhow::Result<Measured> {
    closed_loop(
        ns,
        threads,
        duration,
        |rng| {
            (0..conns.max(1))
                .map(|_| {
                    let addr = targets.pick(rng);
                    let s = TcpStream::connect(addr)
                        .with_context(|| format!("connecting to {addr}"))?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    Ok(s)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        },
        |streams, rng, buf| {
            let i = rng.below(streams.len());
            request(&mut streams[i], buf)
        },
    )
}
