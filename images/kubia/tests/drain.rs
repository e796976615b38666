//! The server's SIGTERM drain, on the real binary: it keeps answering while connections keep
//! coming and exits once they stop for the quiet period.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const QUIET: Duration = Duration::from_millis(500);

fn get(addr: &str) -> std::io::Result<String> {
    let mut c = TcpStream::connect(addr)?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    c.read_to_string(&mut resp)?;
    Ok(resp)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_drains_until_connections_stop() {
    // A free loopback port for the server.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_kubia-v1"))
            .env("KUBIA_LISTEN", &addr)
            .env("KUBIA_DRAIN_QUIET_MS", QUIET.as_millis().to_string())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&addr).is_err() {
        assert!(Instant::now() < deadline, "kubia never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Traffic for three quiet periods: every request is still answered.
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < QUIET * 3 {
        let resp = get(&addr)
            .unwrap_or_else(|e| panic!("refused {:?} after SIGTERM: {e}", started.elapsed()));
        assert!(resp.contains("You've hit "), "{resp}");
        last = Instant::now();
        std::thread::sleep(QUIET / 5);
    }
    // Then silence: it exits, cleanly, not before a quiet period has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kubia did not exit after the drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        last.elapsed() >= QUIET,
        "exited {:?} after the last request",
        last.elapsed()
    );
}
