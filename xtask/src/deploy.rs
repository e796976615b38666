//! `cargo xtask deploy` / `stop`: run skiff on this host in the background.
//!
//! The control plane and (as root) the node agent are started from copies of the release
//! binaries (so later builds do not disturb them) in their own process groups, logging to
//! files, with pidfiles for `stop`. PID 1 of these machines is not systemd, so they are plain
//! supervised background processes; the agent runs pods, the eBPF service proxy and registers
//! this host as a node.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::{ebpf, images, setup, util};

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
    /// Run only the control plane, no node agent on this host.
    #[arg(long)]
    no_agent: bool,
    /// The node's pod range.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    /// The agent's service proxy: ebpf, iptables, nftables or none.
    #[arg(long, default_value = "ebpf")]
    proxy_mode: String,
}

/// Options of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The state directory given to `deploy`.
    #[arg(long, default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// Also remove the pods and the node's datapath state (`skiff-agent cleanup`); without it
    /// pods keep running and a later deploy adopts them.
    #[arg(long)]
    cleanup: bool,
}

fn pidfile(state: &Path, program: &str) -> PathBuf {
    state.join(format!("{}.pid", program.trim_start_matches("skiff-")))
}

fn running_pid(state: &Path, program: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pidfile(state, program))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(program)
        .then_some(pid)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn stop_program(state: &Path, program: &str) -> anyhow::Result<()> {
    if let Some(pid) = running_pid(state, program) {
        eprintln!("stopping {program} (pid {pid})");
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            signal(pid, "KILL");
        }
    }
    let _ = fs::remove_file(pidfile(state, program));
    Ok(())
}

/// `cargo xtask stop`.
pub fn stop(args: StopArgs) -> anyhow::Result<()> {
    stop_program(&args.state_dir, "skiff-agent")?;
    stop_program(&args.state_dir, "skiff-control")?;
    if args.cleanup {
        let agent = args.state_dir.join("bin/skiff-agent");
        if agent.exists() {
            util::run(
                Command::new(&agent)
                    .arg("cleanup")
                    .arg("--root-dir")
                    .arg(args.state_dir.join("agent")),
            )?;
        }
    }
    Ok(())
}

/// Copies a release binary into the state dir (atomically, so a running copy is not touched).
fn install(bin_dir: &Path, program: &str) -> anyhow::Result<PathBuf> {
    let binary = bin_dir.join(program);
    let staged = bin_dir.join(format!("{program}.new"));
    fs::copy(util::root().join("target/release").join(program), &staged)?;
    fs::rename(&staged, &binary)?;
    Ok(binary)
}

/// Starts `binary` in the background in its own process group, appending to `log`.
fn start(state: &Path, binary: &Path, args: &[String], log_path: &Path) -> anyhow::Result<u32> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()?;
    let program = binary
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    fs::write(pidfile(state, &program), child.id().to_string())?;
    Ok(child.id())
}

/// `cargo xtask deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    setup::run()?;
    let with_agent = !args.no_agent && util::is_root();
    if !args.no_agent && !with_agent {
        eprintln!("not root: starting the control plane only (the node agent needs root)");
    }
    if with_agent {
        // The agent embeds the eBPF object at build time.
        ebpf::build()?;
        images::build()?;
        util::cargo(&[
            "build",
            "--release",
            "-p",
            "skiff-control",
            "-p",
            "skiff-agent",
        ])?;
    } else {
        util::cargo(&["build", "--release", "-p", "skiff-control"])?;
    }
    let state = &args.state_dir;
    let bin_dir = state.join("bin");
    fs::create_dir_all(&bin_dir)?;
    stop_program(state, "skiff-agent")?;
    stop_program(state, "skiff-control")?;
    let control = install(&bin_dir, "skiff-control")?;
    let kubeconfig = state.join("admin.kubeconfig");
    let log_path = state.join("control.log");
    let pid = start(
        state,
        &control,
        &[
            "--data-dir".into(),
            state.join("control").display().to_string(),
            "--listen".into(),
            args.listen.to_string(),
            "--write-kubeconfig".into(),
            kubeconfig.display().to_string(),
        ],
        &log_path,
    )?;
    let ca = state.join("control/pki/ca.crt");
    let url = format!("{}/healthz", client_url(args.listen));
    wait_ready(&url, &ca, pid, &log_path)?;

    let mut agent_note = String::new();
    if with_agent {
        let agent = install(&bin_dir, "skiff-agent")?;
        let node = fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase();
        let agent_log = state.join("agent.log");
        let agent_pid = start(
            state,
            &agent,
            &[
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--node-name".into(),
                node.clone(),
                "--root-dir".into(),
                state.join("agent").display().to_string(),
                "--pod-cidr".into(),
                args.pod_cidr.clone(),
                "--proxy-mode".into(),
                args.proxy_mode.clone(),
                "--preload-images".into(),
                util::root().join("target/images").display().to_string(),
            ],
            &agent_log,
        )?;
        wait_node_ready(&kubeconfig, &node, agent_pid, &agent_log)?;
        agent_note = format!(
            "skiff-agent is running (pid {agent_pid}) as node {node}, pods from {cidr}, {mode} service proxy\n  logs:       {log}\n",
            cidr = args.pod_cidr,
            mode = args.proxy_mode,
            log = agent_log.display()
        );
    }

    let kubectl_dir = setup::kubectl_path()
        .parent()
        .expect("kubectl is in a bin dir")
        .to_owned();
    println!(
        "\nskiff-control is running (pid {pid}), serving {server}\n  logs:       {log}\n  kubeconfig: {kc}\n{agent_note}\nUse it with kubectl:\n  export KUBECONFIG={kc}\n  export PATH={kubectl}:$PATH   # kubectl installed by cargo xtask setup\n  kubectl get nodes\n  kubectl create deployment kubia --image=kubia:v1 --replicas=3\n\nStop it with: cargo xtask stop   (add --cleanup to remove pods and datapath state)",
        server = client_url(args.listen),
        log = log_path.display(),
        kc = kubeconfig.display(),
        kubectl = kubectl_dir.display(),
    );
    Ok(())
}

/// Waits until the agent's Node reports Ready (or the agent dies, or 60 s pass).
fn wait_node_ready(kubeconfig: &Path, node: &str, pid: u32, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "skiff-agent exited during start-up; see {}:\n{}",
            log.display(),
            fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let out = Command::new(setup::kubectl_path())
            .args([
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .env("KUBECONFIG", kubeconfig)
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "True" {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} did not become Ready within 60 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
