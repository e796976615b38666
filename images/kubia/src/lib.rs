//! kubia, after "Kubernetes in Action": an HTTP server on port 8080 that answers every request
//! with a line naming the host (in a pod: the pod's name). One thread per connection, std only,
//! so the static binary stays small.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

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

/// Makes SIGTERM end the process. As PID 1 of a container's PID namespace the server gets no
/// default signal actions, so without a handler `kubectl delete` would wait out the grace
/// period and end in SIGKILL.
#[allow(
    unsafe_code,
    reason = "std has no signal API: two libc calls, signal() and the handler's _exit()"
)]
pub fn exit_on_sigterm() {
    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn on_term(_signum: i32) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { _exit(0) }
    }
    const SIGTERM: i32 = 15;
    // SAFETY: the handler is a plain function living as long as the process and only calls
    // _exit; signal() has no other preconditions.
    unsafe {
        signal(SIGTERM, on_term);
    }
}

/// Serves `body(hostname)` to every request on `addr` until the process is killed.
pub fn serve(addr: &str, body: fn(&str) -> String) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("kubia server starting on {addr}");
    for conn in listener.incoming() {
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
