//! `cargo xtask deploy` / `stop`: run skiff on this host in the background.
//!
//! The control plane is started from a copy of the release binary (so later builds do not
//! disturb it) in its own process group, logging to a file, with a pidfile for `stop`.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::{setup, util};

fn default_state_dir() -> PathBuf {
    if util::is_root() {
        PathBuf::from("/var/lib/skiff")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/skiff")
    }
}

/// Options of `deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Where skiff keeps its state (database, credentials, logs, kubeconfig).
    #[arg(long, default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// The API server's listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
}

/// Options of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The state directory given to `deploy`.
    #[arg(long, default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
}

fn pidfile(state: &Path) -> PathBuf {
    state.join("control.pid")
}

fn running_pid(state: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pidfile(state))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("skiff-control")
        .then_some(pid)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn stop_control(state: &Path) -> anyhow::Result<()> {
    if let Some(pid) = running_pid(state) {
        eprintln!("stopping skiff-control (pid {pid})");
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            signal(pid, "KILL");
        }
    }
    let _ = fs::remove_file(pidfile(state));
    Ok(())
}

/// `cargo xtask stop`.
pub fn stop(args: StopArgs) -> anyhow::Result<()> {
    stop_control(&args.state_dir)
}

/// `cargo xtask deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    setup::run()?;
    util::cargo(&["build", "--release", "-p", "skiff-control"])?;
    let state = &args.state_dir;
    let bin_dir = state.join("bin");
    fs::create_dir_all(&bin_dir)?;
    stop_control(state)?;
    let binary = bin_dir.join("skiff-control");
    let staged = bin_dir.join("skiff-control.new");
    fs::copy(util::root().join("target/release/skiff-control"), &staged)?;
    fs::rename(&staged, &binary)?;

    let kubeconfig = state.join("admin.kubeconfig");
    let log_path = state.join("control.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = Command::new(&binary)
        .arg("--data-dir")
        .arg(state.join("control"))
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()?;
    fs::write(pidfile(state), child.id().to_string())?;

    let ca = state.join("control/pki/ca.crt");
    let url = format!("{}/healthz", client_url(args.listen));
    wait_ready(&url, &ca, child.id(), &log_path)?;

    let kubectl_dir = setup::kubectl_path()
        .parent()
        .expect("kubectl is in a bin dir")
        .to_owned();
    println!(
        "\nskiff-control is running (pid {pid}), serving {server}\n  logs:       {log}\n  kubeconfig: {kc}\n\nUse it with kubectl:\n  export KUBECONFIG={kc}\n  export PATH={kubectl}:$PATH   # kubectl installed by cargo xtask setup\n  kubectl get namespaces\n\nStop it with: cargo xtask stop",
        pid = child.id(),
        server = client_url(args.listen),
        log = log_path.display(),
        kc = kubeconfig.display(),
        kubectl = kubectl_dir.display(),
    );
    Ok(())
}

fn client_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    format!("https://{ip}:{}", listen.port())
}

/// Polls `/healthz` until it answers "ok", the process dies, or 30 s pass.
fn wait_ready(url: &str, ca: &Path, pid: u32, log: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    rt.block_on(async {
        loop {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let tail = fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                anyhow::bail!(
                    "skiff-control exited during start-up; its log ({}):\n{}",
                    log.display(),
                    tail.join("\n")
                );
            }
            if let Ok(pem) = fs::read(ca) {
                let client = reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
                    .timeout(Duration::from_secs(2))
                    .build()?;
                if let Ok(resp) = client.get(url).send().await {
                    if resp.status().is_success() && resp.text().await.unwrap_or_default() == "ok" {
                        return Ok(());
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "skiff-control did not become ready at {url} within 30 s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
