//! A real etcd for tests: a fresh `etcd` process on loopback, on free ports, with its data in a
//! temporary directory; killed and removed when the handle drops (also when the test panics).
//!
//! etcd comes from Debian's `etcd-server`, which `cargo xtask setup` installs. Without it the
//! test fails and says so: the store conformance suite must not pass by skipping its etcd half.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where etcd is looked for: `SKIFF_TEST_ETCD` if set, else `etcd` on the PATH. A missing etcd
/// fails the test with what to do.
fn etcd_binary() -> PathBuf {
    let found = match std::env::var_os("SKIFF_TEST_ETCD") {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        }),
    };
    found.unwrap_or_else(|| {
        panic!(
            "etcd is not installed (no `etcd` on the PATH, or SKIFF_TEST_ETCD names no file): \
             run `cargo xtask setup` (as root), which installs Debian's etcd-server, then run \
             the tests again"
        )
    })
}

/// A port nothing listens on now (the OS's choice for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Files of a TLS-serving etcd that asks clients for certificates of `ca`.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// etcd's serving certificate (valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA whose client certificates etcd accepts.
    pub ca: PathBuf,
}

/// A running etcd member of its own one-member cluster.
pub struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (etcd's metrics listener), whatever the client URLs speak.
    health_port: u16,
    extra: Vec<String>,
    tls: Option<EtcdTlsFiles>,
}

impl TestEtcd {
    /// Starts etcd with its defaults.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts etcd with extra flags (e.g. `--max-request-bytes=...`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch(extra, None)
    }

    /// Starts etcd serving clients over TLS with `tls`'s certificate, accepting only clients
    /// with a certificate of `tls.ca` (`--client-cert-auth`).
    pub fn start_tls(tls: EtcdTlsFiles) -> Self {
        Self::launch(&[], Some(tls))
    }

    fn launch(extra: &[&str], tls: Option<EtcdTlsFiles>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skiff-etcd-")
            .tempdir()
            .expect("a temporary directory for etcd");
        let mut etcd = Self {
            child: None,
            dir,
            client_port: 0,
            peer_port: 0,
            health_port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        // Another test may take a port between `free_port` and etcd's bind: try new ones.
        let mut last = String::new();
        for _ in 0..5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            etcd.health_port = free_port();
            match etcd.spawn() {
                Ok(()) => return etcd,
                Err(why) => last = why,
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// The client URL (`http://127.0.0.1:PORT`, `https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills etcd (SIGKILL), keeping its data for [`TestEtcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            panic!("etcd did not start again: {why}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let mut child = command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.health_port
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("running etcd: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("etcd exited with {status}: {output}"));
            }
            if healthy(self.health_port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("etcd was not healthy within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        // The process first, then its directory (TempDir's own drop, after this).
        self.kill();
    }
}

/// Whether etcd on `port` answers its `/health` endpoint with `"health":"true"`.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
