//! Helpers for skiff's end-to-end tests: start the real binaries and drive them with the real
//! clients. `cargo xtask test` builds the binaries and installs kubectl, and passes their paths
//! in `SKIFF_CONTROL_BIN`, `SKIFF_KUBECTL` and `SKIFF_HELM3`/`SKIFF_HELM4`.

pub mod cluster;
pub mod kubectl;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The shared wait: skiff-e2e's tests import it from here.
pub use skiff_test_support::wait_for;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

fn tool(env: &str, default: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.exists(),
        "{} not found ({env} unset or wrong); {hint}",
        path.display()
    );
    path
}

/// The skiff-control binary under test.
pub fn control_bin() -> PathBuf {
    tool(
        "SKIFF_CONTROL_BIN",
        "target/debug/skiff-control",
        "run the suite with `cargo xtask test`, which builds it",
    )
}

/// The real kubectl.
pub fn kubectl_bin() -> PathBuf {
    tool(
        "SKIFF_KUBECTL",
        "target/tools/venv/bin/kubectl",
        "run `cargo xtask setup` to install it",
    )
}

/// Helm of this major version (3 or 4), which `cargo xtask setup` fetches.
pub fn helm_bin(major: u8) -> PathBuf {
    tool(
        &format!("SKIFF_HELM{major}"),
        &format!("target/tools/helm/v{major}/helm"),
        "run `cargo xtask setup` to install it",
    )
}

/// A command for `program`, run inside the network namespace `netns` when given. `nsenter`
/// rather than `ip netns exec`, which remounts /sys and would hide the host's cgroup2 and bpf
/// file systems from the agent.
pub fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The skiff-agent binary under test.
pub fn agent_bin() -> PathBuf {
    tool(
        "SKIFF_AGENT_BIN",
        "target/debug/skiff-agent",
        "run the suite with `cargo xtask test`, which builds it",
    )
}

/// A running skiff-control on a loopback port and a temporary data dir; stopped on drop.
pub struct ControlPlane {
    child: Child,
    /// The network namespace it runs in, if not this process's.
    pub netns: Option<String>,
    /// The data directory (kept for restarts).
    pub dir: tempfile::TempDir,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The listen port.
    pub port: u16,
}

impl ControlPlane {
    /// Starts skiff-control and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(tempfile::tempdir().expect("tempdir"))
    }

    /// Starts skiff-control inside the network namespace `netns` (on its loopback, port 6443).
    pub fn start_in_netns(netns: &str) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            6443,
            Some(netns.to_owned()),
        )
    }

    fn start_in(dir: tempfile::TempDir, port: u16, netns: Option<String>) -> Self {
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let log = std::fs::File::create(dir.path().join("control.log")).unwrap();
        let mut command = in_netns(netns.as_deref(), &control_bin());
        let child = command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start skiff-control");
        let mut cp = Self {
            child,
            netns,
            dir,
            kubeconfig,
            port,
        };
        // The kubeconfig is written before the listener opens, so a connection means serving.
        let mut exited = None;
        wait_for("skiff-control to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = cp.child.try_wait() {
                exited = Some(status);
                return true;
            }
            match &cp.netns {
                None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
                Some(_) => {
                    cp.kubeconfig.exists()
                        && cp
                            .kubectl_output(&["get", "--raw", "/healthz"], None)
                            .status
                            .success()
                }
            }
        });
        if let Some(status) = exited {
            panic!("skiff-control exited with {status}: {}", cp.log());
        }
        cp
    }

    /// Starts skiff-control on the data directory `dir/data` prepared beforehand (a restored
    /// store, say), on a free port.
    pub fn start_on(dir: tempfile::TempDir) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_in(dir, port, None)
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed or closed) and reaps it;
    /// [`ControlPlane::restart`] starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server and starts it again on the same data and port.
    pub fn restart(self) -> Self {
        let mut this = self;
        this.stop();
        let (port, netns) = (this.port, this.netns.take());
        // Move the data dir out without running Drop's kill again.
        let dir = std::mem::replace(&mut this.dir, tempfile::tempdir().unwrap());
        drop(this);
        Self::start_in(dir, port, netns)
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A kube client of the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }

    /// A kubectl command against this server.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), &kubectl_bin());
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// Writes a kubeconfig for `user` in `groups` with `skiff-control user` (a client
    /// certificate from this control plane's CA) and returns its path.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        let mut cmd = in_netns(self.netns.as_deref(), &control_bin());
        cmd.arg("user")
            .arg(user)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--server")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg("--kubeconfig")
            .arg(&path);
        for g in groups {
            cmd.arg("--group").arg(g);
        }
        let out = cmd.output().expect("run skiff-control user");
        assert!(
            out.status.success(),
            "skiff-control user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// Runs kubectl as the user of `kubeconfig`, returning its output whatever the status.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut cmd = self.kubectl_cmd(args);
        cmd.env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl and returns its output, whatever the exit status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl_cmd(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl, which must succeed; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `stdin`, which must succeed; returns stdout.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl, which must fail; returns stderr.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {} should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
