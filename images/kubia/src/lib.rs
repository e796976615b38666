//! kubia, after "Kubernetes in Action": an HTTP server on port 8080 that answers every request
//! with a line naming the host (in a pod: the pod's name). One thread per connection, std only,
//! so the static binary stays small.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The host name in this UTS namespace (the pod name in a pod): from /proc, else `$HOSTNAME`
/// (set by container runtimes), else /etc/hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How long a terminating server waits for a quiet spell before it exits: the time from a pod's
/// deletion until every node has dropped it from the Service is not zero (the endpoint change
/// travels API server -> EndpointSlice controller -> each agent's datapath), and a server that
/// exits at SIGTERM refuses the connections still routed to it meanwhile. Overridable with
/// `KUBIA_DRAIN_QUIET_MS`.
pub const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// Set by the SIGTERM handler.
static TERMINATING: AtomicBool = AtomicBool::new(false);
/// Milliseconds since `EPOCH` at the last accepted connection.
static LAST_ACCEPT_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether a server told to terminate may exit now: it has had no new connection for `quiet`.
pub fn drained(terminating: bool, last_accept_ms: u64, now_ms: u64, quiet: Duration) -> bool {
    let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
    terminating && now_ms.saturating_sub(last_accept_ms) >= quiet_ms
}

/// Makes SIGTERM start a drain: the server goes on answering and exits once no connection has
/// arrived for `DRAIN_QUIET`, so clients still sent here while the endpoint removal spreads are
/// served (what Kubernetes asks of servers behind a Service; the book's kubia got the same
/// effect by ignoring SIGTERM until the SIGKILL 30 s later). As PID 1 of a container's PID
/// namespace the server gets no default signal actions, so without a handler `kubectl delete`
/// would wait out the whole grace period.
#[allow(
    unsafe_code,
    reason = "std has no signal API: one libc call, signal(), whose handler stores an atomic"
)]
pub fn drain_on_sigterm() {
    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    }
    extern "C" fn on_term(_signum: i32) {
        // An atomic store is async-signal-safe.
        TERMINATING.store(true, Ordering::SeqCst);
    }
    const SIGTERM: i32 = 15;
    let quiet = std::env::var("KUBIA_DRAIN_QUIET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DRAIN_QUIET, Duration::from_millis);
    LAST_ACCEPT_MS.store(now_ms(), Ordering::SeqCst);
    // SAFETY: the handler is a plain function living as long as the process and only stores
    // to a static atomic; signal() has no other preconditions.
    unsafe {
        signal(SIGTERM, on_term);
    }
    thread::spawn(move || loop {
        // A signal handler cannot wake a thread portably without more libc; checking ten times
        // a second bounds the extra exit delay to 100 ms.
        thread::sleep(Duration::from_millis(100));
        let terminating = TERMINATING.load(Ordering::SeqCst);
        if drained(
            terminating,
            LAST_ACCEPT_MS.load(Ordering::SeqCst),
            now_ms(),
            quiet,
        ) {
            eprintln!(
                "kubia: terminating after {} ms without a new connection",
                quiet.as_millis()
            );
            std::process::exit(0);
        }
    });
}

/// The address to listen on: `KUBIA_LISTEN`, else 0.0.0.0:8080 as the book's kubia.
pub fn listen_addr() -> String {
    std::env::var("KUBIA_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".to_owned())
}

/// Serves `body(hostname)` to every request on `addr` until the process ends.
pub fn serve(addr: &str, body: fn(&str) -> String) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("kubia server starting on {addr}");
    for conn in listener.incoming() {
        LAST_ACCEPT_MS.store(now_ms(), Ordering::SeqCst);
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = handle(stream, body) {
                        eprintln!("connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

fn handle(stream: TcpStream, body: fn(&str) -> String) -> io::Result<()> {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        // Request line and headers; the body (if any) is ignored, as kubia's was.
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut keep_alive = request_line.trim_end().ends_with("HTTP/1.1");
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("connection") {
                    keep_alive = !value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                }
            }
        }
        if content_length > 0 {
            io::copy(
                &mut (&mut reader).take(content_length as u64),
                &mut io::sink(),
            )?;
        }
        eprintln!("Received request from {peer}");
        let text = body(&hostname());
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{text}",
            text.len(),
            if keep_alive { "keep-alive" } else { "close" },
        )?;
        out.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_only_after_a_quiet_spell_once_terminating() {
        let quiet = Duration::from_millis(2000);
        assert!(!drained(false, 0, 10_000, quiet), "not terminating");
        assert!(!drained(true, 9_000, 10_000, quiet), "a connection 1 s ago");
        assert!(drained(true, 8_000, 10_000, quiet));
        assert!(drained(true, 0, 10_000, quiet));
    }

    #[test]
    fn answers_with_the_hostname() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            handle(s, |h| format!("You've hit {h}\n")).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.ends_with(&format!("You've hit {}\n", hostname())),
            "{resp}"
        );
    }
}
