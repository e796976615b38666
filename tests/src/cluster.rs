//! A local multi-node skiff cluster on one machine: skiff-control on the host, and per node a
//! network namespace (`<name>-node-<i>`) holding its agent, pods, pod bridge and service
//! datapath. The nodes are joined by a host bridge on a private /24 (`172.31.<index>.0/24`,
//! the host at `.1`, node i at `.10+i`) and have no default route, so nothing a pod sends can
//! leave the machine; the host does not forward (it is not made to). Each node's agent runs in
//! a cgroup2 directory of its own so its socket load balancing sees only its node's processes,
//! and pins its eBPF state in a bpffs directory of its own.
//!
//! `up` records what it made in `<dir>/cluster.json`; `down` removes exactly that (pods, eBPF
//! pins, namespaces, the bridge, cgroups), also after a crash half-way through `up`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster name: prefixes namespaces and devices (at most 6 characters).
    pub name: String,
    /// Picks the node network 172.31.<index>.0/24 (distinct per concurrent cluster).
    pub index: u8,
    /// Number of nodes.
    pub nodes: usize,
    /// State, logs, kubeconfig.
    pub dir: PathBuf,
    /// skiff-control binary.
    pub control_bin: PathBuf,
    /// skiff-agent binary.
    pub agent_bin: PathBuf,
    /// Directory of images to preload on every node.
    pub images: Option<PathBuf>,
    /// `--proxy-mode` of the agents.
    pub proxy_mode: String,
    /// A registries.yaml every agent reads (`--registry-config`): mirrors such as the host's
    /// registry at 172.31.<index>.1:5000, the host side of the node bridge.
    pub registry_config: Option<PathBuf>,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Extra arguments for skiff-control.
    pub control_args: Vec<String>,
}

impl Options {
    /// The options of the end-to-end tests' clusters: the binaries under test
    /// ([`crate::control_bin`], [`crate::agent_bin`]), the sample images that `cargo xtask
    /// images` builds preloaded, no service proxy, no extra arguments. Tests change fields with
    /// struct update syntax.
    pub fn test(name: &str, index: u8, nodes: usize) -> Self {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images");
        assert!(
            images.exists(),
            "{} missing: run `cargo xtask images`",
            images.display()
        );
        Self {
            name: name.into(),
            index,
            nodes,
            dir: PathBuf::new(),
            control_bin: crate::control_bin(),
            agent_bin: crate::agent_bin(),
            images: Some(images),
            proxy_mode: "none".into(),
            registry_config: None,
            agent_args: vec![],
            control_args: vec![],
        }
    }
}

/// What `up` made, for `down`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    /// The host bridge.
    pub bridge: Option<String>,
    /// skiff-control's pid.
    pub control_pid: Option<u32>,
    /// How skiff-control was started (binary and arguments), for restarts.
    #[serde(default)]
    pub control_command: Vec<String>,
    /// Its log.
    #[serde(default)]
    pub control_log: PathBuf,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// The admin kubeconfig (server on the bridge address).
    pub kubeconfig: PathBuf,
}

/// One node's pieces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// `node-<i>`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the node network.
    pub ip: Ipv4Addr,
    /// Its podCIDR.
    pub pod_cidr: String,
    /// The agent's root dir.
    pub root_dir: PathBuf,
    /// The agent's cgroup2 directory.
    pub cgroup: PathBuf,
    /// The agent's bpffs pin directory.
    pub pin_dir: PathBuf,
    /// The agent's pid, once started.
    pub agent_pid: Option<u32>,
    /// The agent's log.
    pub log: PathBuf,
    /// How the agent was started (binary and arguments), for restarts.
    #[serde(default)]
    pub agent_command: Vec<String>,
    /// The host end of its veth pair, on the cluster's bridge.
    #[serde(default)]
    pub host_veth: String,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn save(dir: &Path, state: &State) -> anyhow::Result<()> {
    std::fs::write(state_path(dir), serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", state_path(dir).display()))
}

/// Reads the state `up` left in `dir`.
pub fn load(dir: &Path) -> anyhow::Result<State> {
    let bytes = std::fs::read(state_path(dir))
        .with_context(|| format!("no cluster in {} (reading cluster.json)", dir.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The cgroup2 mount (hybrid hosts have it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        if let Some((_, post)) = line.split_once(" - ") {
            if post.starts_with("cgroup2 ") {
                return Ok(PathBuf::from(
                    line.split_whitespace().nth(4).unwrap_or_default(),
                ));
            }
        }
    }
    bail!("no cgroup2 file system is mounted")
}

/// Starts `program` detached (own session, output to `log`), inside `netns` and `cgroup`
/// when given. Returns its pid.
fn spawn_detached(
    program: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&str>,
    cgroup: Option<&Path>,
) -> anyhow::Result<u32> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut script = String::new();
    if let Some(cg) = cgroup {
        script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", cg.display()));
    }
    script.push_str("exec \"$@\"");
    let mut cmd = Command::new("setsid");
    cmd.args(["sh", "-c", &script, "sh"]);
    if let Some(ns) = netns {
        cmd.arg("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--");
    }
    let child = cmd
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(child.id())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop(pid: u32, grace: Duration) {
    let pid_arg = pid.to_string();
    let _ = Command::new("kill").args(["-TERM", &pid_arg]).status();
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = Command::new("kill").args(["-KILL", &pid_arg]).status();
    }
}

/// Brings a cluster up and waits until every node is Ready. On failure, removes what it made.
pub fn up(opts: &Options) -> anyhow::Result<State> {
    anyhow::ensure!(
        opts.name.len() <= 6,
        "cluster name {:?} is longer than 6 characters",
        opts.name
    );
    anyhow::ensure!(
        (1..=50).contains(&opts.nodes),
        "--nodes must be between 1 and 50"
    );
    std::fs::create_dir_all(&opts.dir)?;
    if state_path(&opts.dir).exists() {
        bail!(
            "a cluster is already recorded in {}; run `down` first",
            opts.dir.display()
        );
    }
    let mut state = State {
        kubeconfig: opts.dir.join("admin.kubeconfig"),
        ..State::default()
    };
    match build(opts, &mut state) {
        Ok(()) => Ok(state),
        Err(e) => {
            let _ = save(&opts.dir, &state);
            let _ = down(&opts.dir, &opts.agent_bin, Data::Remove);
            Err(e)
        }
    }
}

fn build(opts: &Options, state: &mut State) -> anyhow::Result<()> {
    let net = |host: u8| Ipv4Addr::new(172, 31, opts.index, host);
    let bridge = format!("{}br", opts.name);
    ip(&["link", "add", &bridge, "type", "bridge"])?;
    state.bridge = Some(bridge.clone());
    save(&opts.dir, state)?;
    ip(&["addr", "add", &format!("{}/24", net(1)), "dev", &bridge])?;
    ip(&["link", "set", &bridge, "up"])?;
    let cg_root = cgroup2_root()?;
    for i in 1..=opts.nodes {
        let name = format!("node-{i}");
        let netns = format!("{}-{name}", opts.name);
        let host_end = format!("{}v{i}", opts.name);
        let node = NodeState {
            host_veth: host_end.clone(),
            ip: net(10 + i as u8),
            pod_cidr: format!("10.244.{i}.0/24"),
            root_dir: opts.dir.join(&name),
            cgroup: cg_root.join(format!("skiff-{netns}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/skiff-{netns}")),
            log: opts.dir.join(format!("{name}.log")),
            agent_pid: None,
            agent_command: Vec::new(),
            name,
            netns: netns.clone(),
        };
        state.nodes.push(node.clone());
        save(&opts.dir, state)?;
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &host_end, "master", &bridge, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{}/24", node.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&node.cgroup)
            .with_context(|| format!("creating {}", node.cgroup.display()))?;
        std::fs::create_dir_all(&node.root_dir)?;
    }
    let mut control_args = vec![
        "--data-dir".to_owned(),
        opts.dir.join("control").display().to_string(),
        "--listen".to_owned(),
        format!("{}:6443", net(1)),
        "--write-kubeconfig".to_owned(),
        state.kubeconfig.display().to_string(),
    ];
    control_args.extend(opts.control_args.iter().cloned());
    state.control_command = std::iter::once(opts.control_bin.display().to_string())
        .chain(control_args.iter().cloned())
        .collect();
    state.control_log = opts.dir.join("control.log");
    state.control_pid = Some(spawn_detached(
        &opts.control_bin,
        &control_args,
        &state.control_log,
        None,
        None,
    )?);
    save(&opts.dir, state)?;
    wait_for_control(state, SocketAddr::from((net(1), 6443)))?;
    // Absolute, so that the agents (started elsewhere) find it; checked here so that a typo
    // fails before any agent starts.
    let registry_config = opts
        .registry_config
        .as_ref()
        .map(|p| {
            std::fs::canonicalize(p).with_context(|| format!("the registry config {}", p.display()))
        })
        .transpose()?;
    // Nodes join as Kubernetes nodes do: a bootstrap token gets each its own certificate
    // (system:node:<name>) through a CSR; the admin credential never leaves the control plane.
    let server = format!("https://{}:6443", net(1));
    let token = join_token(&opts.control_bin, &state.kubeconfig)?;
    for node in &mut state.nodes {
        let mut args: Vec<String> = [
            "--server",
            &server,
            "--token",
            &token,
            "--node-name",
            &node.name,
            "--root-dir",
            &node.root_dir.display().to_string(),
            "--pod-cidr",
            &node.pod_cidr,
            "--node-ip",
            &node.ip.to_string(),
            "--proxy-mode",
            &opts.proxy_mode,
            "--cgroup-root",
            &node.cgroup.display().to_string(),
            "--pin-dir",
            &node.pin_dir.display().to_string(),
            "--nodeport-interface",
            "eth0",
            "--local-registries-only",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(images) = &opts.images {
            args.push("--preload-images".into());
            args.push(images.display().to_string());
        }
        if let Some(config) = &registry_config {
            args.push("--registry-config".into());
            args.push(config.display().to_string());
        }
        // Names outside the cluster are forwarded nowhere unless asked: the host's resolvers
        // are outside the machine, where no test traffic may go.
        if !opts
            .agent_args
            .iter()
            .any(|a| a.starts_with("--dns-upstream"))
        {
            args.extend(["--dns-upstream".to_owned(), "none".to_owned()]);
        }
        args.extend(opts.agent_args.iter().cloned());
        node.agent_command = std::iter::once(opts.agent_bin.display().to_string())
            .chain(args.iter().cloned())
            .collect();
        node.agent_pid = Some(spawn_detached(
            &opts.agent_bin,
            &args,
            &node.log,
            Some(&node.netns),
            Some(&node.cgroup),
        )?);
    }
    save(&opts.dir, state)?;
    let names: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let kubeconfig = state.kubeconfig.clone();
    wait_until("every node to be Ready", Duration::from_secs(60), || {
        for node in &state.nodes {
            anyhow::ensure!(
                node.agent_pid.is_some_and(alive),
                "the agent of {} exited: {}",
                node.name,
                tail(&node.log)
            );
        }
        Ok(ready_nodes(&kubeconfig)?.len() >= names.len())
    })?;
    // The API server reaches a kubelet (logs, exec) only once the node's serving certificate
    // from the cluster CA is issued, a moment after the node is Ready.
    wait_until(
        "every node's serving certificate",
        Duration::from_secs(30),
        || {
            let served = nodes_with_serving_certificates(&kubeconfig)?;
            Ok(names.iter().all(|n| served.contains(n)))
        },
    )?;
    Ok(())
}

/// The nodes whose `kubernetes.io/kubelet-serving` CertificateSigningRequest is issued.
pub fn nodes_with_serving_certificates(kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    Ok(list_all::<CertificateSigningRequest>(kubeconfig)?
        .into_iter()
        .filter(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
        .filter(|c| c.status.as_ref().is_some_and(|s| s.certificate.is_some()))
        .filter_map(|c| {
            c.spec
                .username
                .and_then(|u| u.strip_prefix("system:node:").map(str::to_owned))
        })
        .collect())
}

/// Every `K` of the cluster, through `kubeconfig`; none while the API does not answer.
fn list_all<K>(kubeconfig: &Path) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let api: kube::Api<K> = kube::Api::all(client);
        Ok(match api.list(&Default::default()).await {
            Ok(list) => list.items,
            Err(_) => Vec::new(),
        })
    })
}

/// A bootstrap token from `skiff-control token create`, for the agents to join with.
fn join_token(control_bin: &Path, kubeconfig: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(control_bin)
        .args(["token", "create", "--ttl", "1h", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--description", "skiff-cluster nodes"])
        .output()
        .context("running skiff-control token create")?;
    anyhow::ensure!(
        out.status.success(),
        "skiff-control token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    anyhow::ensure!(
        token.len() == 23 && token.as_bytes()[6] == b'.',
        "skiff-control token create printed {token:?}, not a token"
    );
    Ok(token)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the Nodes whose Ready condition is True.
pub fn ready_nodes(kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    Ok(list_all::<k8s_openapi::api::core::v1::Node>(kubeconfig)?
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// Waits until skiff-control (started as `state` records) accepts connections at `addr`.
fn wait_for_control(state: &State, addr: SocketAddr) -> anyhow::Result<()> {
    wait_until("skiff-control to serve", Duration::from_secs(30), || {
        anyhow::ensure!(
            state.control_pid.is_some_and(alive),
            "skiff-control exited: {}",
            tail(&state.control_log)
        );
        Ok(state.kubeconfig.exists() && std::net::TcpStream::connect(addr).is_ok())
    })
}

/// Stops skiff-control (SIGTERM, then SIGKILL): the agents and their pods keep running, as
/// when the control plane's host goes down.
pub fn stop_control(state: &State) {
    if let Some(pid) = state.control_pid {
        stop(pid, Duration::from_secs(10));
    }
}

/// Starts a stopped skiff-control again with the same arguments and data (its log goes to a
/// fresh file `control.log.<n>`) and waits until it serves at `addr`.
pub fn start_control(state: &mut State, addr: SocketAddr) -> anyhow::Result<u32> {
    let (program, args) = state
        .control_command
        .split_first()
        .context("the cluster has no recorded skiff-control command")?;
    let mut n = 1;
    while state
        .control_log
        .with_extension(format!("log.{n}"))
        .exists()
    {
        n += 1;
    }
    let log = state.control_log.with_extension(format!("log.{n}"));
    let pid = spawn_detached(Path::new(program), args, &log, None, None)?;
    state.control_pid = Some(pid);
    state.control_log = log;
    wait_for_control(state, addr)?;
    Ok(pid)
}

/// Stops one node's agent (its pods keep running, as when a kubelet dies).
pub fn stop_agent(node: &NodeState) {
    if let Some(pid) = node.agent_pid {
        stop(pid, Duration::from_secs(10));
    }
}

/// Starts a stopped node's agent again with the same arguments (its log is appended to a
/// fresh file `<log>.<n>`); returns the new pid.
pub fn start_agent(node: &mut NodeState) -> anyhow::Result<u32> {
    let (program, args) = node
        .agent_command
        .split_first()
        .context("the node has no recorded agent command")?;
    let mut n = 1;
    while node.log.with_extension(format!("log.{n}")).exists() {
        n += 1;
    }
    let log = node.log.with_extension(format!("log.{n}"));
    let pid = spawn_detached(
        Path::new(program),
        args,
        &log,
        Some(&node.netns),
        Some(&node.cgroup),
    )?;
    node.agent_pid = Some(pid);
    node.log = log;
    Ok(pid)
}

/// A cluster that is taken down when dropped (for tests).
pub struct Guard {
    /// What `up` made.
    pub state: State,
    /// Its directory.
    pub dir: PathBuf,
    agent_bin: PathBuf,
    /// A temporary directory holding `dir`, removed after the cluster is down.
    _tmp: Option<tempfile::TempDir>,
}

impl Guard {
    /// Brings a cluster up in a new temporary directory (`opts.dir` is ignored); it goes down
    /// when the guard drops, also when a test panics, and the directory goes after it.
    pub fn up(opts: &Options) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let opts = Options {
            dir: tmp.path().to_owned(),
            ..opts.clone()
        };
        let state = up(&opts)?;
        Ok(Self {
            state,
            dir: opts.dir.clone(),
            agent_bin: opts.agent_bin.clone(),
            _tmp: Some(tmp),
        })
    }

    /// [`Guard::up`] for tests: panics when the cluster cannot come up.
    pub fn test(opts: &Options) -> Self {
        Self::up(opts).unwrap_or_else(|e| panic!("cluster up: {e:#}"))
    }

    /// Saves changed state (after agent restarts) so `down` sees the new pids.
    pub fn save(&self) -> anyhow::Result<()> {
        save(&self.dir, &self.state)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = save(&self.dir, &self.state);
        if std::thread::panicking() {
            // Keep the logs of a failed test: the cluster's directory goes with the guard.
            let keep = std::env::temp_dir().join(format!(
                "skiff-cluster-logs-{}",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            if std::fs::create_dir_all(&keep).is_ok() {
                for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                    let p = entry.path();
                    if p.to_string_lossy().contains(".log") {
                        let _ = std::fs::copy(&p, keep.join(entry.file_name()));
                    }
                }
                eprintln!("cluster logs kept in {}", keep.display());
            }
        }
        if let Err(e) = down(&self.dir, &self.agent_bin, Data::Remove) {
            eprintln!("taking the test cluster down: {e:#}");
        }
    }
}

/// What `down` does with the cluster's data (the API server's store and the nodes' state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Delete it: the next `up` in the same directory starts an empty cluster.
    Remove,
    /// Keep it: the next `up` in the same directory comes back with the same objects.
    Keep,
}

/// The API server's store directory of the cluster in `dir`.
pub fn store_dir(dir: &Path) -> PathBuf {
    dir.join("control")
}

/// Removes everything `up` recorded in `dir`: agents, pods, eBPF pins, namespaces, the bridge,
/// cgroups, skiff-control, and with [`Data::Remove`] the store and the nodes' directories (so a
/// following `up` does not resurrect the old Deployments and pods). Keeps going past errors and
/// reports the first.
pub fn down(dir: &Path, agent_bin: &Path, data: Data) -> anyhow::Result<()> {
    let state = load(dir)?;
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("cluster down: {e:#}");
            first_error.get_or_insert(e);
        }
    };
    for node in &state.nodes {
        stop_agent(node);
        if Path::new("/run/netns").join(&node.netns).exists() {
            // The agent's own cleanup, in the node's namespace: pods, datapath, rules.
            note(run(Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", node.netns))
                .arg("--")
                .arg(agent_bin)
                .arg("cleanup")
                .arg("--pin-dir")
                .arg(&node.pin_dir)
                .arg("--root-dir")
                .arg(&node.root_dir)));
            // The veth first: deleting a namespace destroys its devices later, in a kernel
            // work queue, and a cluster of the same name brought up right away would find the
            // old host end still there. Deleting one end removes the pair at once.
            if !node.host_veth.is_empty()
                && Path::new("/sys/class/net").join(&node.host_veth).exists()
            {
                note(ip(&["link", "del", &node.host_veth]));
            }
            note(ip(&["netns", "del", &node.netns]));
        }
        if node.cgroup.exists() {
            note(
                std::fs::remove_dir(&node.cgroup)
                    .with_context(|| format!("removing {}", node.cgroup.display())),
            );
        }
        if node.pin_dir.exists() {
            note(
                std::fs::remove_dir_all(&node.pin_dir)
                    .with_context(|| format!("removing {}", node.pin_dir.display())),
            );
        }
    }
    if let Some(pid) = state.control_pid {
        stop(pid, Duration::from_secs(10));
    }
    if let Some(bridge) = &state.bridge {
        if Path::new("/sys/class/net").join(bridge).exists() {
            note(ip(&["link", "del", bridge]));
        }
    }
    if data == Data::Remove {
        // Only after every process is gone: a live skiff-control could write the store again.
        let dirs =
            std::iter::once(store_dir(dir)).chain(state.nodes.iter().map(|n| n.root_dir.clone()));
        for d in dirs {
            if d.exists() {
                note(
                    std::fs::remove_dir_all(&d)
                        .with_context(|| format!("removing {}", d.display())),
                );
            }
        }
    }
    if first_error.is_none() {
        let _ = std::fs::remove_file(state_path(dir));
    }
    first_error.map_or(Ok(()), Err)
}
