//! `cargo xtask deploy` / `stop`: run skiff on this host, or over ssh on several hosts.
//!
//! The control plane and (as root) the node agent run from copies of the release binaries in
//! the state directory (so later builds do not disturb them), as systemd units where systemd is
//! PID 1 and as supervised background processes otherwise (see [`service`]). With `--hosts` the
//! same files and the same start/stop snippets go to each host over ssh (see [`hosts`]).

pub mod hosts;
pub mod service;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use crate::{ebpf, images, setup, util};
use service::{Launch, Program};

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
    pub state_dir: PathBuf,
    /// The API server's listen address (with --hosts only its port is used: the control host
    /// listens on all addresses, or on the control address when that is a loopback one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Run only the control plane, no node agent on this host.
    #[arg(long, conflicts_with = "hosts")]
    pub no_agent: bool,
    /// The node's pod range (this host only; with --hosts the control plane allocates one per
    /// node from its cluster range).
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// The agent's service proxy: ebpf, iptables, nftables or none.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "iptables", "nftables", "none"])]
    pub proxy_mode: String,
    /// Take skiff-control and skiff-agent from this directory instead of building them (and
    /// the eBPF programs they embed).
    #[arg(long, value_name = "DIR")]
    pub prebuilt: Option<PathBuf>,
    /// Preload the images from this directory instead of building the sample images.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Registry mirrors for the agents: a k3s-style registries.yaml, installed as
    /// `<state>/registries.yaml` (mode 0600: it may hold credentials) on every host and given
    /// to the agent as --registry-config. Certificate files it names must exist on the hosts.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    #[command(flatten)]
    pub hosts: hosts::HostsArgs,
    #[command(flatten)]
    pub cluster: hosts::ClusterArgs,
}

/// Options of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The state directory given to `deploy`.
    #[arg(long, default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,
    /// Also remove the pods and the node's datapath state (`skiff-agent cleanup`) and the
    /// systemd unit files; without it pods keep running and a later deploy adopts them.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub hosts: hosts::HostsArgs,
}

/// Runs a shell snippet on this host, echoing its output; fails with its stderr.
fn run_local(script: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").arg("-c").arg(script).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "{} on this host: {}",
        out.status,
        stderr.trim()
    );
    eprint!("{stderr}");
    Ok(stdout)
}

/// `cargo xtask stop`.
pub fn stop(args: StopArgs) -> anyhow::Result<()> {
    if !args.hosts.hosts.is_empty() {
        return hosts::stop(&args.hosts, args.cleanup);
    }
    run_local(&service::stop_script(&args.state_dir, args.cleanup))?;
    Ok(())
}

/// Builds (or finds) the release binaries and the images; returns the directories holding
/// them.
fn build(args: &DeployArgs, with_agent: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let images = match &args.images {
        Some(dir) => dir.clone(),
        None => {
            if with_agent {
                images::build()?;
            }
            images::images_dir()
        }
    };
    if let Some(dir) = &args.prebuilt {
        for program in service::PROGRAMS {
            anyhow::ensure!(
                dir.join(program).is_file() || (program == "skiff-agent" && !with_agent),
                "--prebuilt {}: there is no {program} in it",
                dir.display()
            );
        }
        return Ok((dir.clone(), images));
    }
    if with_agent {
        // The agent embeds the eBPF object at build time.
        ebpf::build()?;
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
    Ok((util::target_dir().join("release"), images))
}

/// Copies a binary into `bin_dir` (atomically, so a running copy is not touched).
fn install(from: &Path, bin_dir: &Path, program: &str) -> anyhow::Result<PathBuf> {
    let binary = bin_dir.join(program);
    let staged = bin_dir.join(format!("{program}.new"));
    fs::copy(from.join(program), &staged)
        .map_err(|e| anyhow::anyhow!("copying {}: {e}", from.join(program).display()))?;
    fs::rename(&staged, &binary)?;
    Ok(binary)
}

/// Writes a generated unit or supervisor script into the state directory.
fn write_generated(state: &Path, file: &service::GeneratedFile) -> anyhow::Result<()> {
    let path = state.join(&file.path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, &file.contents)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))?;
    Ok(())
}

/// The Pod Security level a deployed cluster enforces where namespaces do not choose one:
/// baseline, as the hardening issue asks, refuses host namespaces, hostPath volumes,
/// privileged containers and added capabilities; kube-system stays exempt (skiff-control's
/// default), and `kubectl label ns X pod-security.kubernetes.io/enforce=privileged` opens
/// another namespace for node agents and the like. Nothing a deploy starts itself is a pod,
/// and the e2e tests start their control planes with their own flags.
pub const POD_SECURITY_DEFAULT: &str = "baseline";

/// The control plane's flags.
pub fn control_args(
    state: &Path,
    listen: SocketAddr,
    kubeconfig: &Path,
    tls_sans: &[String],
) -> Vec<String> {
    let mut args = vec![
        "--data-dir".into(),
        state.join("control").display().to_string(),
        "--listen".into(),
        listen.to_string(),
        "--write-kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--pod-security-default".into(),
        POD_SECURITY_DEFAULT.into(),
    ];
    for san in tls_sans {
        args.push("--tls-san".into());
        args.push(san.clone());
    }
    args
}

/// Where a deploy installs `--registry-config`, relative to the state directory.
pub const REGISTRY_CONFIG: &str = "registries.yaml";
/// The agent reads no larger registry config either.
const MAX_REGISTRY_CONFIG: u64 = 256 << 10;

/// Checks that the `--registry-config` file can be read and is not too large (the agent
/// validates its contents when it starts). Its contents are never printed: it may hold
/// credentials.
pub fn check_registry_config(path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("--registry-config {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.is_file() && meta.len() <= MAX_REGISTRY_CONFIG,
        "--registry-config {}: not a file of at most {MAX_REGISTRY_CONFIG} bytes",
        path.display()
    );
    fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("--registry-config {}: {e}", path.display()))?;
    Ok(())
}

/// Copies the registry config into the state directory, readable by its owner only.
fn install_registry_config(from: &Path, state: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dest = state.join(REGISTRY_CONFIG);
    let staged = state.join(format!("{REGISTRY_CONFIG}.new"));
    let _ = fs::remove_file(&staged);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    std::io::copy(&mut fs::File::open(from)?, &mut out)?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
    fs::rename(&staged, &dest)?;
    Ok(())
}

/// Where a node's join token waits for its agent (0600; removed once the node is Ready: the
/// agent's certificate in `<state>/agent/pki` is its credential from then on).
pub const JOIN_TOKEN: &str = "join.token";

/// The agent's flags: it joins `server` as its own node with the bootstrap token in
/// `<state>/join.token`; without `pod_cidr` the agent waits for the control plane to allocate
/// the Node's podCIDR; with `registry_config` it reads `<state>/registries.yaml`.
pub fn agent_args(
    state: &Path,
    server: &str,
    node: &str,
    pod_cidr: Option<&str>,
    proxy_mode: &str,
    registry_config: bool,
) -> Vec<String> {
    let mut args = vec![
        "--server".into(),
        server.into(),
        "--token-file".into(),
        state.join(JOIN_TOKEN).display().to_string(),
        "--node-name".into(),
        node.into(),
        "--root-dir".into(),
        state.join("agent").display().to_string(),
    ];
    if let Some(cidr) = pod_cidr {
        args.extend(["--pod-cidr".into(), cidr.into()]);
    }
    args.extend([
        "--proxy-mode".into(),
        proxy_mode.into(),
        "--preload-images".into(),
        state.join("images").display().to_string(),
    ]);
    if registry_config {
        args.extend([
            "--registry-config".into(),
            state.join(REGISTRY_CONFIG).display().to_string(),
        ]);
    }
    args
}

/// A bootstrap token for nodes to join with (`skiff-control token create`, one hour).
pub fn join_token(control_bin: &Path, kubeconfig: &Path, what: &str) -> anyhow::Result<String> {
    let out = Command::new(control_bin)
        .args([
            "token",
            "create",
            "--ttl",
            "1h",
            "--description",
            what,
            "--kubeconfig",
        ])
        .arg(kubeconfig)
        .output()
        .with_context(|| format!("running {} token create", control_bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "skiff-control token create: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Writes `contents` to `path` with mode 0600 (through a temporary file and a rename).
fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let staged = path.with_extension("new");
    let _ = fs::remove_file(&staged);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("creating {}", staged.display()))?;
    f.write_all(contents)?;
    fs::rename(&staged, path)?;
    Ok(())
}

/// Describes how a program runs, for the final message.
fn how_running(state: &Path, launch: Launch, name: &str) -> String {
    match launch {
        Launch::Systemd => format!("as systemd unit {name}.service"),
        Launch::Supervised => format!(
            "supervised (supervisor pid {}, restarts it on failure)",
            fs::read_to_string(service::supervisor_pid_path(state, name))
                .unwrap_or_default()
                .trim()
        ),
    }
}

/// `cargo xtask deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    if !args.hosts.hosts.is_empty() {
        return hosts::deploy(&args);
    }
    if let Some(path) = &args.registry_config {
        check_registry_config(path)?;
    }
    setup::run()?;
    let with_agent = !args.no_agent && util::is_root();
    if !args.no_agent && !with_agent {
        eprintln!("not root: starting the control plane only (the node agent needs root)");
    }
    let (bins, images) = build(&args, with_agent)?;
    // systemd units go to /etc/systemd/system: only root may write them.
    let launch = if util::is_root() {
        Launch::detect()
    } else {
        Launch::Supervised
    };
    let state = &args.state_dir;
    let bin_dir = state.join("bin");
    fs::create_dir_all(&bin_dir)?;
    // Whatever ran before (either mode, or an older unsupervised deploy) stops first.
    run_local(&service::stop_script(state, false))?;

    install(&bins, &bin_dir, "skiff-control")?;
    let kubeconfig = state.join("admin.kubeconfig");
    let control = Program {
        name: "skiff-control",
        args: control_args(state, args.listen, &kubeconfig, &[]),
        after_control: false,
    };
    write_generated(state, &service::generated_file(launch, state, &control))?;
    run_local(&service::start_script(state, launch, &["skiff-control"]))?;
    let log_path = service::log_path(state, "skiff-control");
    let ca = state.join("control/pki/ca.crt");
    let url = format!("{}/healthz", client_url(args.listen));
    wait_ready(&url, &ca, &log_path)?;

    let mut agent_note = String::new();
    if with_agent {
        install(&bins, &bin_dir, "skiff-agent")?;
        link_images(&images, &state.join("images"))?;
        if let Some(path) = &args.registry_config {
            install_registry_config(path, state)?;
        }
        let node = fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase();
        // The agent joins as its own node with a one-hour bootstrap token.
        let token = join_token(&bin_dir.join("skiff-control"), &kubeconfig, "skiff deploy")?;
        write_private_file(&state.join(JOIN_TOKEN), token.as_bytes())?;
        let agent = Program {
            name: "skiff-agent",
            args: agent_args(
                state,
                &client_url(args.listen),
                &node,
                Some(&args.pod_cidr),
                &args.proxy_mode,
                args.registry_config.is_some(),
            ),
            after_control: true,
        };
        write_generated(state, &service::generated_file(launch, state, &agent))?;
        let before = node_heartbeats(&kubeconfig);
        run_local(&service::start_script(state, launch, &["skiff-agent"]))?;
        let agent_log = service::log_path(state, "skiff-agent");
        wait_nodes_ready(&kubeconfig, std::slice::from_ref(&node), &before, &|| {
            log_tail(&agent_log)
        })?;
        let _ = fs::remove_file(state.join(JOIN_TOKEN));
        agent_note = format!(
            "skiff-agent is running {how} as node {node}, pods from {cidr}, {mode} service proxy\n  logs:       {log}\n",
            how = how_running(state, launch, "skiff-agent"),
            cidr = args.pod_cidr,
            mode = args.proxy_mode,
            log = agent_log.display()
        );
    }

    let mut stop_hint = String::from("cargo xtask stop");
    if *state != default_state_dir() {
        stop_hint.push_str(&format!(
            " --state-dir {}",
            service::sh_quote(&state.display().to_string())
        ));
    }
    println!(
        "\nskiff-control is running {how}, serving {server}\n  logs:       {log}\n  kubeconfig: {kc}\n{agent_note}\n{usage}",
        how = how_running(state, launch, "skiff-control"),
        server = client_url(args.listen),
        log = log_path.display(),
        kc = kubeconfig.display(),
        usage = usage(&kubeconfig, &stop_hint)
    );
    println!(
        "\nGive a colleague read-only access to one namespace (a client certificate from the \
         cluster CA; README: \"Users and permissions\"):\n  {bin} user alice --data-dir {data} \
         --server {server} --kubeconfig alice.kubeconfig\n  kubectl create rolebinding \
         alice-view --clusterrole=view --user=alice -n default",
        bin = state.join("bin/skiff-control").display(),
        data = state.join("control").display(),
        server = client_url(args.listen),
    );
    Ok(())
}

/// How to use the cluster, for the final message.
fn usage(kubeconfig: &Path, stop: &str) -> String {
    let kubectl_dir = setup::kubectl_path()
        .parent()
        .expect("kubectl is in a bin dir")
        .to_owned();
    format!(
        "Use it with kubectl:\n  export KUBECONFIG={kc}\n  export PATH={kubectl}:$PATH   # kubectl installed by cargo xtask setup\n  kubectl get nodes -o wide\n  kubectl create deployment kubia --image=kubia:v1 --replicas=3\n\nStop it with: {stop}   (add --cleanup to remove pods and datapath state)",
        kc = kubeconfig.display(),
        kubectl = kubectl_dir.display(),
    )
}

/// Points `dest` (the agent's `--preload-images`) at `images`: a symlink, replaced if it
/// points elsewhere; a real directory there (from a `--hosts` copy) is left alone.
fn link_images(images: &Path, dest: &Path) -> anyhow::Result<()> {
    let images = images
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("the images directory {}: {e}", images.display()))?;
    match fs::read_link(dest) {
        Ok(target) if target == images => return Ok(()),
        Ok(_) => fs::remove_file(dest)?,
        Err(_) if dest.is_dir() => return Ok(()),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&images, dest)?;
    Ok(())
}

/// The last lines of a log file.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{} (last lines):\n{}",
        log.display(),
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

const NODES_JSONPATH: &str = "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}{\"\\n\"}{end}";

/// `kubectl get nodes` through `kubeconfig`: stdout (`name status heartbeat` lines) and stderr.
fn list_nodes(kubeconfig: &Path) -> anyhow::Result<(String, String)> {
    let out = Command::new(setup::kubectl_path())
        .args(["get", "nodes", "--request-timeout=5s", "-o", NODES_JSONPATH])
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Node name -> its Ready condition's lastHeartbeatTime, as the API shows them now (before
/// the agents start: a Node stored by an earlier deploy still reads Ready for a while).
pub fn node_heartbeats(kubeconfig: &Path) -> NodeHeartbeats {
    let listed = list_nodes(kubeconfig).map(|l| l.0).unwrap_or_default();
    listed
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let name = f.next()?;
            let _status = f.next()?;
            Some((name.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// See [`node_heartbeats`].
pub type NodeHeartbeats = std::collections::HashMap<String, String>;

/// The nodes of `nodes` that are not freshly Ready in `listed`: Ready=True with a heartbeat
/// other than the one in `before`.
pub fn not_ready<'a>(listed: &str, nodes: &'a [String], before: &NodeHeartbeats) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|n| {
            !listed.lines().any(|l| {
                let mut f = l.split(' ');
                f.next() == Some(n.as_str())
                    && f.next() == Some("True")
                    && f.next()
                        .is_some_and(|hb| before.get(n.as_str()).map(String::as_str) != Some(hb))
            })
        })
        .map(String::as_str)
        .collect()
}

/// Waits until every node in `nodes` reports Ready with a heartbeat newer than `before`, or
/// 90 s pass (then fails with `logs()`).
pub fn wait_nodes_ready(
    kubeconfig: &Path,
    nodes: &[String],
    before: &NodeHeartbeats,
    logs: &dyn Fn() -> String,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (listed, stderr) = list_nodes(kubeconfig)?;
        let waiting = not_ready(&listed, nodes, before);
        if waiting.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nodes not freshly Ready within 90 s: {waiting:?} (kubectl get nodes: {}{})\n{}",
            listed.trim(),
            stderr.trim(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
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

/// Polls `/healthz` until it answers "ok" or 30 s pass (a crashing control plane is restarted
/// by its supervisor or systemd, so only the deadline ends the wait; the log says why).
fn wait_ready(url: &str, ca: &Path, log: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    rt.block_on(async {
        loop {
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
                log_tail(log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_readiness() {
        let nodes = vec!["a".to_owned(), "b".to_owned()];
        let listed = "a True 2026-11-24T20:00:10Z\nb False 2026-11-24T20:00:10Z\n";
        let before = NodeHeartbeats::new();
        assert_eq!(not_ready(listed, &nodes, &before), ["b"]);
        // A Node left Ready by an earlier deploy counts only after a new heartbeat.
        let before: NodeHeartbeats = [("a".to_owned(), "2026-11-24T20:00:10Z".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(not_ready(listed, &nodes, &before), ["a", "b"]);
        let listed = "a True 2026-11-24T20:00:20Z\nb True 2026-11-24T20:00:20Z\n";
        assert!(not_ready(listed, &nodes, &before).is_empty());
        assert_eq!(not_ready("", &nodes, &before), ["a", "b"]);
    }
}
