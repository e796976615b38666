//! `cargo xtask deploy --hosts a,b,c`: a multi-host cluster over ssh.
//!
//! Binaries, eBPF (embedded in the agent) and images are built here once, then each host gets
//! the same files a local deploy uses, streamed as a tar archive over ssh (`tar -x` on the
//! host, so ssh and tar are all a host needs; no scp/rsync port-option mismatch). The start,
//! stop and status snippets are [`service`]'s, piped to `sh -s` over ssh.
//!
//! The work is a plan of [`Step`]s computed from the hosts' facts (probed first, before
//! anything changes) by the pure [`plan`], then executed in order. When a step fails, every
//! host is asked what still runs and the answer is printed with the error.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use super::service::{self, GeneratedFile, Launch, Program};
use super::DeployArgs;
use crate::setup;

/// Options shared by `deploy --hosts` and `stop --hosts`.
#[derive(Debug, Clone, Default, Args)]
pub struct HostsArgs {
    /// Deploy to these hosts over ssh instead of this one: ssh destinations (`host` or
    /// `user@host`), comma-separated. The user must be root on each host.
    #[arg(long, value_delimiter = ',', value_parser = parse_destination, value_name = "HOSTS")]
    pub hosts: Vec<String>,
    /// Options for ssh, split at spaces, e.g. `--ssh-opt '-p 2222'` or
    /// `--ssh-opt '-i ~/.ssh/skiff'`; repeatable.
    #[arg(long = "ssh-opt", allow_hyphen_values = true, value_name = "OPTS")]
    pub ssh_opts: Vec<String>,
    /// The state directory on the hosts.
    #[arg(long, default_value = "/var/lib/skiff", value_name = "DIR")]
    pub remote_dir: PathBuf,
}

/// Options of `deploy --hosts` only.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// The host (one of --hosts) that runs skiff-control; default: the first.
    #[arg(long, requires = "hosts", value_name = "HOST")]
    pub control_host: Option<String>,
    /// The address clients and agents use to reach the control host (put into its serving
    /// certificate and the kubeconfigs); default: the host part of its ssh destination.
    #[arg(long, requires = "hosts", value_name = "ADDRESS")]
    pub control_address: Option<String>,
    /// Where to write the cluster's kubeconfig on this machine; default:
    /// `<state-dir>/cluster.kubeconfig`.
    #[arg(long, requires = "hosts", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// A valid ssh destination: no spaces, no leading `-` (it would be read as an ssh option).
fn parse_destination(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty host name (a stray comma?)".into());
    }
    if s.starts_with('-') {
        return Err(format!(
            "{s:?} is not an ssh destination (it starts with '-')"
        ));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        return Err(format!(
            "{s:?} is not an ssh destination (spaces or quotes)"
        ));
    }
    Ok(s.to_owned())
}

/// The host part of an ssh destination: `user@host` -> `host`, `[::1]` -> `::1`.
pub fn host_part(destination: &str) -> &str {
    let host = destination.rsplit_once('@').map_or(destination, |(_, h)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The ssh options: the user's (split at spaces) first, since ssh keeps the first value of an
/// option, then ours: never prompt (a prompt would hang a deploy), give up after 10 s.
pub fn ssh_options(user: &[String]) -> Vec<String> {
    let mut opts: Vec<String> = user
        .iter()
        .flat_map(|o| o.split_whitespace().map(str::to_owned))
        .collect();
    for o in ["BatchMode=yes", "ConnectTimeout=10"] {
        opts.extend(["-o".into(), o.into()]);
    }
    opts
}

/// Facts about a host, from [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The ssh destination.
    pub destination: String,
    /// The user id ssh logs in as.
    pub uid: u32,
    /// `/proc/1/comm`.
    pub pid1: String,
    /// The host name (lowercased): the Node's name.
    pub hostname: String,
}

const PROBE: &str = "echo \"uid=$(id -u)\"; echo \"pid1=$(cat /proc/1/comm)\"; \
                     echo \"hostname=$(cat /proc/sys/kernel/hostname)\"; \
                     command -v tar >/dev/null || echo missing=tar; \
                     command -v setsid >/dev/null || echo missing=setsid\n";

/// Parses the probe's output.
fn parse_probe(destination: &str, out: &str) -> anyhow::Result<HostInfo> {
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::trim)
    };
    let missing: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("missing="))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "host {destination}: missing commands: {}",
        missing.join(", ")
    );
    let parse = || -> Option<HostInfo> {
        Some(HostInfo {
            destination: destination.to_owned(),
            uid: field("uid")?.parse().ok()?,
            pid1: field("pid1")?.to_owned(),
            hostname: field("hostname")?.to_lowercase(),
        })
    };
    parse().ok_or_else(|| {
        anyhow::anyhow!("host {destination}: unexpected answer to the probe: {out:?}")
    })
}

/// What the plan needs besides the hosts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state directory on every host.
    pub remote_dir: PathBuf,
    /// Destination of the control host.
    pub control_host: String,
    /// Its address for clients and agents.
    pub control_address: String,
    /// The API server's port.
    pub port: u16,
    /// The agents' service proxy.
    pub proxy_mode: String,
    /// Local directory with skiff-control and skiff-agent.
    pub bins: PathBuf,
    /// Local directory with the images to preload.
    pub images: PathBuf,
    /// Local registries.yaml for every agent (`--registry-config`).
    pub registry_config: Option<PathBuf>,
}

impl Options {
    /// The control plane's URL as every client sees it.
    pub fn server_url(&self) -> String {
        match self.control_address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", self.port),
            _ => format!("https://{}:{}", self.control_address, self.port),
        }
    }

    /// All addresses (the control address may be a name, or a public address NATed to the
    /// host), except a loopback control address: then the cluster is this machine's alone.
    fn listen(&self) -> SocketAddr {
        let ip: IpAddr = match self.control_address.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => ip,
            Ok(IpAddr::V6(_)) => "::".parse().expect("an address"),
            _ => "0.0.0.0".parse().expect("an address"),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// Something that goes into a host's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A local file, to this path (relative to the state directory).
    File(PathBuf, String),
    /// A local directory, recursively, to this path.
    Dir(PathBuf, String),
    /// A rendered unit or supervisor script.
    Generated(GeneratedFile),
    /// A local file that may hold secrets, to this path, readable by its owner only (read
    /// when the archive is written, so its contents are in no plan or message).
    Private(PathBuf, String),
}

/// One step of a multi-host deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop whatever skiff runs on the host (so its binaries can be replaced).
    Stop { host: String },
    /// Send files into the host's state directory.
    Copy { host: String, files: Vec<Payload> },
    /// Run a start snippet on the host.
    Start {
        host: String,
        programs: Vec<&'static str>,
        script: String,
    },
    /// Fetch the admin kubeconfig from the control host, point it at the control address,
    /// write it here, and wait until the API answers through it.
    WaitApi { host: String },
    /// Send the host's agent its join token (created after `WaitApi`).
    PushKubeconfig { host: String },
    /// Wait until these Nodes are Ready (`hosts`: where their agents run, for the logs).
    WaitNodes {
        nodes: Vec<String>,
        hosts: Vec<String>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Stop { host } => write!(f, "{host}: stop what runs"),
            Step::Copy { host, files } => {
                write!(f, "{host}: copy")?;
                for p in files {
                    match p {
                        Payload::File(_, to) | Payload::Dir(_, to) | Payload::Private(_, to) => {
                            write!(f, " {to}")?
                        }
                        Payload::Generated(g) => write!(f, " {}", g.path)?,
                    }
                }
                Ok(())
            }
            Step::Start { host, programs, .. } => {
                write!(f, "{host}: start {}", programs.join(", "))
            }
            Step::WaitApi { host } => write!(f, "{host}: wait for the API, fetch the kubeconfig"),
            Step::PushKubeconfig { host } => write!(f, "{host}: copy {}", super::JOIN_TOKEN),
            Step::WaitNodes { nodes, .. } => write!(f, "wait until Ready: {}", nodes.join(", ")),
        }
    }
}

/// The steps that deploy skiff to `hosts` (all probed). Fails, before anything is changed,
/// when a host is not root or two hosts share a name.
pub fn plan(hosts: &[HostInfo], opts: &Options) -> anyhow::Result<Vec<Step>> {
    for h in hosts {
        anyhow::ensure!(
            h.uid == 0,
            "host {}: ssh logs in as uid {}, but the node agent needs root (use root@{})",
            h.destination,
            h.uid,
            host_part(&h.destination)
        );
    }
    for (i, h) in hosts.iter().enumerate() {
        if let Some(other) = hosts[..i].iter().find(|o| o.hostname == h.hostname) {
            anyhow::bail!(
                "hosts {} and {} have the same name {:?}: Node names must differ (the same \
                 machine twice?)",
                other.destination,
                h.destination,
                h.hostname
            );
        }
    }
    anyhow::ensure!(
        hosts.iter().any(|h| h.destination == opts.control_host),
        "the control host {} is not one of --hosts",
        opts.control_host
    );
    let dir = &opts.remote_dir;
    let mut steps = Vec::new();
    // Agents stop before the control plane, as `cargo xtask stop` does.
    let mut stop_order: Vec<&HostInfo> = hosts
        .iter()
        .filter(|h| h.destination != opts.control_host)
        .collect();
    stop_order.extend(hosts.iter().filter(|h| h.destination == opts.control_host));
    for h in stop_order {
        steps.push(Step::Stop {
            host: h.destination.clone(),
        });
    }
    for h in hosts {
        let launch = Launch::for_pid1(&h.pid1);
        let is_control = h.destination == opts.control_host;
        let mut files = Vec::new();
        if is_control {
            let control = Program {
                name: "skiff-control",
                args: super::control_args(
                    dir,
                    opts.listen(),
                    &dir.join("admin.kubeconfig"),
                    std::slice::from_ref(&opts.control_address),
                ),
                after_control: false,
            };
            files.push(Payload::File(
                opts.bins.join("skiff-control"),
                "bin/skiff-control".into(),
            ));
            files.push(Payload::Generated(service::generated_file(
                launch, dir, &control,
            )));
        }
        let agent = Program {
            name: "skiff-agent",
            args: super::agent_args(
                dir,
                &opts.server_url(),
                &h.hostname,
                None,
                &opts.proxy_mode,
                opts.registry_config.is_some(),
            ),
            after_control: is_control,
        };
        files.push(Payload::File(
            opts.bins.join("skiff-agent"),
            "bin/skiff-agent".into(),
        ));
        files.push(Payload::Dir(opts.images.clone(), "images".into()));
        if let Some(config) = &opts.registry_config {
            files.push(Payload::Private(
                config.clone(),
                super::REGISTRY_CONFIG.into(),
            ));
        }
        files.push(Payload::Generated(service::generated_file(
            launch, dir, &agent,
        )));
        steps.push(Step::Copy {
            host: h.destination.clone(),
            files,
        });
    }
    let control = hosts
        .iter()
        .find(|h| h.destination == opts.control_host)
        .expect("checked above");
    steps.push(Step::Start {
        host: control.destination.clone(),
        programs: vec!["skiff-control"],
        script: service::start_script(dir, Launch::for_pid1(&control.pid1), &["skiff-control"]),
    });
    steps.push(Step::WaitApi {
        host: control.destination.clone(),
    });
    for h in hosts {
        steps.push(Step::PushKubeconfig {
            host: h.destination.clone(),
        });
        steps.push(Step::Start {
            host: h.destination.clone(),
            programs: vec!["skiff-agent"],
            script: service::start_script(dir, Launch::for_pid1(&h.pid1), &["skiff-agent"]),
        });
    }
    steps.push(Step::WaitNodes {
        nodes: hosts.iter().map(|h| h.hostname.clone()).collect(),
        hosts: hosts.iter().map(|h| h.destination.clone()).collect(),
    });
    Ok(steps)
}

/// Points a kubeconfig (skiff-control's, which names the address it listens on) at `server`.
pub fn rewrite_server(kubeconfig: &str, server: &str) -> anyhow::Result<String> {
    let mut found = 0;
    let mut out = String::with_capacity(kubeconfig.len());
    for line in kubeconfig.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("server:") {
            anyhow::ensure!(
                rest.trim().starts_with("https://"),
                "unexpected server line in the kubeconfig: {line:?}"
            );
            found += 1;
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str("server: ");
            out.push_str(server);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    anyhow::ensure!(
        found == 1,
        "expected one server line in skiff-control's kubeconfig, found {found}"
    );
    Ok(out)
}

/// Runs commands on hosts over ssh.
struct Ssh {
    opts: Vec<String>,
}

impl Ssh {
    fn command(&self, host: &str, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts).arg(host).arg(remote);
        cmd
    }

    /// Sends `input` to `remote` on `host`; returns its stdout, or a readable error naming the
    /// host and what ssh or the command said.
    fn run(&self, host: &str, what: &str, remote: &str, input: Input) -> anyhow::Result<String> {
        let mut child = self
            .command(host, remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run ssh (run `cargo xtask setup`): {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        // Written from a thread, so a chatty remote command cannot dead-lock against us on a
        // full stdout pipe.
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            match input {
                Input::Script(s) => stdin.write_all(s.as_bytes()),
                Input::Tar(files) => write_tar(&mut stdin, &files),
            }
        });
        let out = child.wait_with_output()?;
        let written = writer.join().expect("the writer thread does not panic");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if out.status.code() == Some(255) {
            anyhow::bail!("host {host}: ssh failed ({what}): {stderr}");
        }
        anyhow::ensure!(
            out.status.success(),
            "host {host}: {what} failed ({}): {stderr}",
            out.status
        );
        written.map_err(|e| anyhow::anyhow!("host {host}: {what}: sending data: {e}"))?;
        print_indented(host, &stderr);
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn script(&self, host: &str, what: &str, script: String) -> anyhow::Result<String> {
        self.run(host, what, "sh -s", Input::Script(script))
    }
}

enum Input {
    Script(String),
    Tar(Vec<Payload>),
}

/// Streams `files` as a tar archive.
fn write_tar(w: &mut impl std::io::Write, files: &[Payload]) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Deterministic);
    for p in files {
        match p {
            Payload::File(from, to) => tar.append_path_with_name(from, to)?,
            Payload::Dir(from, to) => tar.append_dir_all(to, from)?,
            Payload::Private(from, to) => {
                let contents = std::fs::read(from)?;
                let mut header = tar::Header::new_gnu();
                header.set_size(contents.len() as u64);
                header.set_mode(0o600);
                header.set_cksum();
                tar.append_data(&mut header, to, contents.as_slice())?;
            }
            Payload::Generated(g) => {
                let mut header = tar::Header::new_gnu();
                header.set_size(g.contents.len() as u64);
                header.set_mode(g.mode);
                header.set_cksum();
                tar.append_data(&mut header, &g.path, g.contents.as_bytes())?;
            }
        }
    }
    tar.into_inner()?.flush()
}

/// Probes every host (all of them, so every unreachable one is named at once).
fn probe_all(ssh: &Ssh, hosts: &[String]) -> anyhow::Result<Vec<HostInfo>> {
    let mut infos = Vec::new();
    let mut errors = Vec::new();
    for h in hosts {
        match ssh
            .script(h, "probe", PROBE.to_owned())
            .and_then(|out| parse_probe(h, &out))
        {
            Ok(i) => infos.push(i),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    anyhow::ensure!(
        errors.is_empty(),
        "cannot deploy, nothing was changed:\n  {}",
        errors.join("\n  ")
    );
    Ok(infos)
}

/// `cargo xtask deploy --hosts`.
pub fn deploy(args: &DeployArgs) -> anyhow::Result<()> {
    let hosts = &args.hosts;
    let control_host = args
        .cluster
        .control_host
        .clone()
        .unwrap_or_else(|| hosts.hosts[0].clone());
    anyhow::ensure!(
        hosts.hosts.contains(&control_host),
        "--control-host {control_host} is not one of --hosts"
    );
    let ssh = Ssh {
        opts: ssh_options(&hosts.ssh_opts),
    };
    if let Some(path) = &args.registry_config {
        super::check_registry_config(path)?;
    }
    setup::run()?;
    // Reachability first: a typo in a host name should not wait for a release build.
    let infos = probe_all(&ssh, &hosts.hosts)?;
    let (bins, images) = super::build(args, true)?;
    let opts = Options {
        remote_dir: hosts.remote_dir.clone(),
        control_address: args
            .cluster
            .control_address
            .clone()
            .unwrap_or_else(|| host_part(&control_host).to_owned()),
        control_host,
        port: args.listen.port(),
        proxy_mode: args.proxy_mode.clone(),
        bins,
        images,
        registry_config: args.registry_config.clone(),
    };
    let steps = plan(&infos, &opts)?;
    let kubeconfig = args
        .cluster
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.state_dir.join("cluster.kubeconfig"));
    let mut run = Run {
        ssh: &ssh,
        opts: &opts,
        kubeconfig: &kubeconfig,
        fetched: None,
        join_token: None,
        before: Default::default(),
    };
    for step in &steps {
        eprintln!("deploy: {step}");
        if let Err(e) = run.step(step) {
            let report = running_report(&ssh, &hosts.hosts, &hosts.remote_dir);
            return Err(e.context(format!(
                "deploy failed at step \"{step}\"\n{report}\nStop it with: {}",
                stop_command(hosts)
            )));
        }
    }
    println!(
        "\nskiff runs on {n} hosts; skiff-control on {control} at {url}\n  nodes:      {nodes}\n  state:      {dir} on each host (logs: control.log, agent.log)\n  kubeconfig: {kc}\n\n{usage}",
        n = infos.len(),
        control = opts.control_host,
        url = opts.server_url(),
        nodes = infos
            .iter()
            .map(|h| format!("{} ({})", h.hostname, h.destination))
            .collect::<Vec<_>>()
            .join(", "),
        dir = opts.remote_dir.display(),
        kc = kubeconfig.display(),
        usage = super::usage(&kubeconfig, &stop_command(hosts)),
    );
    Ok(())
}

/// The `stop` command line matching `hosts`.
pub fn stop_command(hosts: &HostsArgs) -> String {
    let mut cmd = format!("cargo xtask stop --hosts {}", hosts.hosts.join(","));
    for o in &hosts.ssh_opts {
        cmd.push_str(&format!(" --ssh-opt {}", service::sh_quote(o)));
    }
    if hosts.remote_dir != Path::new("/var/lib/skiff") {
        cmd.push_str(&format!(
            " --remote-dir {}",
            service::sh_quote(&hosts.remote_dir.display().to_string())
        ));
    }
    cmd
}

/// What still runs on each host, for error messages.
fn running_report(ssh: &Ssh, hosts: &[String], dir: &Path) -> String {
    let mut report = String::from("what runs now:");
    for h in hosts {
        match ssh.script(h, "status", service::status_script(dir)) {
            Ok(out) => {
                let running = service::running_from_status(&out);
                if running.is_empty() {
                    report.push_str(&format!("\n  {h}: nothing"));
                }
                for r in running {
                    report.push_str(&format!("\n  {h}: {r}"));
                }
            }
            Err(e) => report.push_str(&format!("\n  {h}: unknown ({e:#})")),
        }
    }
    report
}

/// The executor's state.
struct Run<'a> {
    ssh: &'a Ssh,
    opts: &'a Options,
    kubeconfig: &'a Path,
    fetched: Option<String>,
    /// The bootstrap token the agents join with, created once the API answers.
    join_token: Option<String>,
    /// The Nodes' heartbeats before the agents started.
    before: super::NodeHeartbeats,
}

impl Run<'_> {
    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        let dir = service::sh_quote(&self.opts.remote_dir.display().to_string());
        match step {
            Step::Stop { host } => {
                let out = self.ssh.script(
                    host,
                    "stopping skiff",
                    service::stop_script(&self.opts.remote_dir, false),
                )?;
                print_indented(host, &out);
            }
            Step::Copy { host, files } => {
                // Binaries are replaced by unlinking first, like `install`, in case something
                // still executes the old ones.
                let remote = format!(
                    "mkdir -p {dir} && cd {dir} && rm -f bin/skiff-control bin/skiff-agent && \
                     tar -x --no-same-owner -f -"
                );
                self.ssh.run(
                    host,
                    "copying binaries and images",
                    &remote,
                    Input::Tar(files.clone()),
                )?;
            }
            Step::Start { host, script, .. } => {
                let out = self.ssh.script(host, "starting", script.clone())?;
                print_indented(host, &out);
            }
            Step::WaitApi { host } => self.wait_api(host)?,
            Step::PushKubeconfig { host } => {
                // One bootstrap token for every node of this deploy; the admin credential
                // stays on the control host and here.
                if self.join_token.is_none() {
                    self.fetched
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("the API was not reached"))?;
                    self.join_token = Some(super::join_token(
                        &self.opts.bins.join("skiff-control"),
                        self.kubeconfig,
                        "skiff deploy --hosts",
                    )?);
                }
                let token = self.join_token.clone().unwrap_or_default();
                let file = super::JOIN_TOKEN;
                let remote = format!(
                    "umask 077 && cat > {dir}/{file}.new && mv {dir}/{file}.new {dir}/{file}"
                );
                self.ssh.run(
                    host,
                    "writing the agent's join token",
                    &remote,
                    Input::Script(token),
                )?;
            }
            Step::WaitNodes { nodes, hosts } => {
                let logs = || {
                    let mut s = String::from("the agents' logs:");
                    for h in hosts {
                        let tail = self
                            .ssh
                            .script(
                                h,
                                "reading agent.log",
                                format!("tail -n 15 {dir}/agent.log\n"),
                            )
                            .unwrap_or_else(|e| format!("{e:#}"));
                        s.push_str(&format!("\n--- {h}\n{tail}"));
                    }
                    s
                };
                super::wait_nodes_ready(self.kubeconfig, nodes, &self.before, &logs)?;
            }
        }
        Ok(())
    }

    fn wait_api(&mut self, host: &str) -> anyhow::Result<()> {
        let dir = service::sh_quote(&self.opts.remote_dir.display().to_string());
        let deadline = Instant::now() + Duration::from_secs(60);
        let server = self.opts.server_url();
        let mut last = String::new();
        loop {
            // skiff-control writes its kubeconfig before it serves; the CA and token in it
            // persist across restarts, so an older file is as good as a fresh one.
            let read = self.ssh.script(
                host,
                "reading admin.kubeconfig",
                format!("cat {dir}/admin.kubeconfig 2>/dev/null || true\n"),
            )?;
            if read.contains("server:") {
                let kubeconfig = rewrite_server(&read, &server)?;
                write_private(self.kubeconfig, &kubeconfig)?;
                let out = Command::new(setup::kubectl_path())
                    .args(["get", "--raw", "/healthz", "--request-timeout=5s"])
                    .env("KUBECONFIG", self.kubeconfig)
                    .output()?;
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    self.fetched = Some(kubeconfig);
                    // The agents were stopped before; they start after this step.
                    self.before = super::node_heartbeats(self.kubeconfig);
                    return Ok(());
                }
                last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            }
            if Instant::now() >= deadline {
                let tail = self
                    .ssh
                    .script(
                        host,
                        "reading control.log",
                        format!("tail -n 15 {dir}/control.log\n"),
                    )
                    .unwrap_or_else(|e| format!("{e:#}"));
                anyhow::bail!(
                    "skiff-control on {host} did not answer at {server} within 60 s (kubectl: \
                     {last}); is the address reachable from here (--control-address)? Its log:\n{tail}"
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn print_indented(host: &str, out: &str) {
    for line in out.lines() {
        eprintln!("  {host}: {line}");
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `cargo xtask stop --hosts`: every host, agents first; all are tried even when one fails.
pub fn stop(hosts: &HostsArgs, cleanup: bool) -> anyhow::Result<()> {
    let ssh = Ssh {
        opts: ssh_options(&hosts.ssh_opts),
    };
    let script = service::stop_script(&hosts.remote_dir, cleanup);
    let mut errors = Vec::new();
    // The first host is the default control host: stop it last.
    let mut order: Vec<&String> = hosts.hosts.iter().skip(1).collect();
    order.extend(hosts.hosts.first());
    for h in order {
        eprintln!("stop: {h}");
        match ssh.script(h, "stopping skiff", script.clone()) {
            Ok(out) => print_indented(h, &out),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    anyhow::ensure!(
        errors.is_empty(),
        "some hosts were not stopped:\n  {}",
        errors.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dest: &str, name: &str, pid1: &str) -> HostInfo {
        HostInfo {
            destination: dest.into(),
            uid: 0,
            pid1: pid1.into(),
            hostname: name.into(),
        }
    }

    fn opts(control: &str) -> Options {
        Options {
            remote_dir: "/srv/skiff".into(),
            control_host: control.into(),
            control_address: host_part(control).into(),
            port: 6443,
            proxy_mode: "ebpf".into(),
            bins: "/build/release".into(),
            images: "/build/images".into(),
            registry_config: None,
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(parse_destination(" root@a "), Ok("root@a".into()));
        assert!(parse_destination("").unwrap_err().contains("empty"));
        assert!(parse_destination("-oProxyCommand=x").is_err());
        assert!(parse_destination("a b").is_err());
        assert_eq!(host_part("root@10.0.0.1"), "10.0.0.1");
        assert_eq!(host_part("node-a"), "node-a");
        assert_eq!(host_part("me@[fd00::1]"), "fd00::1");
    }

    #[test]
    fn ssh_options_user_first_then_batch_mode() {
        assert_eq!(
            ssh_options(&["-p 2222".into(), "-i /k".into()]),
            [
                "-p",
                "2222",
                "-i",
                "/k",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10"
            ]
        );
    }

    #[test]
    fn probe_output() {
        let h = parse_probe("root@a", "uid=0\npid1=systemd\nhostname=Node-A\n").unwrap();
        assert_eq!(h, host("root@a", "node-a", "systemd"));
        let e = parse_probe("root@a", "uid=0\npid1=init\nhostname=a\nmissing=tar\n").unwrap_err();
        assert_eq!(e.to_string(), "host root@a: missing commands: tar");
        let e = parse_probe("root@a", "Welcome!\n").unwrap_err();
        assert!(
            e.to_string().starts_with("host root@a: unexpected answer"),
            "{e}"
        );
    }

    #[test]
    fn server_urls() {
        assert_eq!(opts("root@10.1.2.3").server_url(), "https://10.1.2.3:6443");
        assert_eq!(opts("cp.example").server_url(), "https://cp.example:6443");
        let v6 = opts("root@[fd00::1]");
        assert_eq!(v6.server_url(), "https://[fd00::1]:6443");
        assert_eq!(v6.listen().to_string(), "[::]:6443");
        assert_eq!(opts("a").listen().to_string(), "0.0.0.0:6443");
        assert_eq!(
            opts("root@127.0.0.1").listen().to_string(),
            "127.0.0.1:6443"
        );
    }

    #[test]
    fn kubeconfig_server_is_rewritten() {
        let kc = "apiVersion: v1\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: AAA\n";
        let out = rewrite_server(kc, "https://10.1.2.3:6443").unwrap();
        assert_eq!(out, kc.replace("127.0.0.1", "10.1.2.3"));
        assert!(rewrite_server("clusters: []\n", "https://x:1").is_err());
        assert!(rewrite_server("    server: http://x\n", "https://x:1").is_err());
    }

    #[test]
    fn plan_for_three_hosts() {
        let hosts = [
            host("root@a", "node-a", "systemd"),
            host("root@b", "node-b", "init"),
            host("root@c", "node-c", "systemd"),
        ];
        let steps = plan(&hosts, &opts("root@b")).unwrap();
        let lines: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            lines,
            [
                "root@a: stop what runs",
                "root@c: stop what runs",
                "root@b: stop what runs",
                "root@a: copy bin/skiff-agent images units/skiff-agent.service",
                "root@b: copy bin/skiff-control bin/skiff-control-supervise bin/skiff-agent images bin/skiff-agent-supervise",
                "root@c: copy bin/skiff-agent images units/skiff-agent.service",
                "root@b: start skiff-control",
                "root@b: wait for the API, fetch the kubeconfig",
                "root@a: copy join.token",
                "root@a: start skiff-agent",
                "root@b: copy join.token",
                "root@b: start skiff-agent",
                "root@c: copy join.token",
                "root@c: start skiff-agent",
                "wait until Ready: node-a, node-b, node-c",
            ]
        );
        // The control host (no systemd) gets a supervisor with the address in its SANs.
        let Step::Copy { files, .. } = &steps[4] else {
            panic!("{:?}", steps[4])
        };
        assert!(files.contains(&Payload::File(
            "/build/release/skiff-control".into(),
            "bin/skiff-control".into()
        )));
        let Payload::Generated(sup) = &files[1] else {
            panic!("{:?}", files[1])
        };
        assert!(
            sup.contents.contains(
                "/srv/skiff/bin/skiff-control --data-dir /srv/skiff/control --listen 0.0.0.0:6443 \
             --write-kubeconfig /srv/skiff/admin.kubeconfig --pod-security-default baseline \
             --tls-san b </dev/null"
            ),
            "{}",
            sup.contents
        );
        // Each agent has its own Node name, joins with the token file, no --pod-cidr (the
        // control plane allocates one), and orders after skiff-control only where that runs.
        let Step::Copy { files, .. } = &steps[3] else {
            panic!("{:?}", steps[3])
        };
        let Payload::Generated(unit) = &files[2] else {
            panic!("{:?}", files[2])
        };
        assert!(
            unit.contents.contains(
                "ExecStart=/srv/skiff/bin/skiff-agent --server https://b:6443 \
             --token-file /srv/skiff/join.token --node-name node-a --root-dir /srv/skiff/agent --proxy-mode ebpf \
             --preload-images /srv/skiff/images\n"
            ),
            "{}",
            unit.contents
        );
        assert!(!unit.contents.contains("skiff-control.service"));
        assert!(!unit.contents.contains("--pod-cidr"));
        // Start snippets follow each host's init.
        let Step::Start { script, .. } = &steps[9] else {
            panic!("{:?}", steps[9])
        };
        assert!(
            script.contains("systemctl restart skiff-agent.service"),
            "{script}"
        );
        let Step::Start { script, .. } = &steps[11] else {
            panic!("{:?}", steps[11])
        };
        assert!(
            script.contains("setsid sh /srv/skiff/bin/skiff-agent-supervise"),
            "{script}"
        );
    }

    #[test]
    fn plan_installs_the_registry_config_privately() {
        let hosts = [host("root@a", "node-a", "systemd")];
        let with_config = Options {
            registry_config: Some("/home/me/registries.yaml".into()),
            ..opts("root@a")
        };
        let steps = plan(&hosts, &with_config).unwrap();
        let copy = steps
            .iter()
            .find_map(|s| match s {
                Step::Copy { files, .. } => Some(files),
                _ => None,
            })
            .unwrap();
        assert!(copy.contains(&Payload::Private(
            "/home/me/registries.yaml".into(),
            "registries.yaml".into()
        )));
        let unit = copy
            .iter()
            .find_map(|p| match p {
                Payload::Generated(g) if g.path.contains("skiff-agent") => Some(&g.contents),
                _ => None,
            })
            .unwrap();
        assert!(
            unit.contains("--registry-config /srv/skiff/registries.yaml"),
            "{unit}"
        );
        // Without one, the agent is not told of any.
        let steps = plan(&hosts, &opts("root@a")).unwrap();
        assert!(!steps.iter().any(|s| format!("{s:?}").contains("registr")));
    }

    #[test]
    fn plan_refuses_before_changing_anything() {
        let mut user = host("me@a", "a", "init");
        user.uid = 1000;
        let e = plan(&[user], &opts("me@a")).unwrap_err();
        assert!(
            e.to_string().contains("host me@a: ssh logs in as uid 1000"),
            "{e}"
        );
        let twice = [
            host("root@a", "a", "init"),
            host("root@10.0.0.1", "a", "init"),
        ];
        let e = plan(&twice, &opts("root@a")).unwrap_err();
        assert!(
            e.to_string()
                .contains("hosts root@a and root@10.0.0.1 have the same name"),
            "{e}"
        );
        let e = plan(&[host("root@a", "a", "init")], &opts("root@z")).unwrap_err();
        assert!(
            e.to_string().contains("root@z is not one of --hosts"),
            "{e}"
        );
    }

    #[test]
    fn stop_command_repeats_the_options() {
        let hosts = HostsArgs {
            hosts: vec!["root@a".into(), "root@b".into()],
            ssh_opts: vec!["-p 2222".into()],
            remote_dir: "/tmp/s".into(),
        };
        assert_eq!(
            stop_command(&hosts),
            "cargo xtask stop --hosts root@a,root@b --ssh-opt '-p 2222' --remote-dir /tmp/s"
        );
    }

    #[test]
    fn tar_stream_has_the_files_with_their_modes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("bin"), b"ELF").unwrap();
        std::fs::create_dir_all(tmp.path().join("img/blobs")).unwrap();
        std::fs::write(tmp.path().join("img/blobs/x"), b"layer").unwrap();
        let files = vec![
            Payload::File(tmp.path().join("bin"), "bin/skiff-agent".into()),
            Payload::Dir(tmp.path().join("img"), "images".into()),
            Payload::Generated(GeneratedFile {
                path: "bin/skiff-agent-supervise".into(),
                contents: "#!/bin/sh\n".into(),
                mode: 0o755,
            }),
        ];
        let mut buf = Vec::new();
        write_tar(&mut buf, &files).unwrap();
        let mut archive = tar::Archive::new(buf.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin/skiff-agent",
                "images/",
                "images/blobs",
                "images/blobs/x",
                "bin/skiff-agent-supervise"
            ]
        );
        assert_eq!(entries[4].1, 0o755);
    }

    /// An sshd on 127.0.0.1 (a free high port) with a temporary host key and authorized key,
    /// killed on drop.
    struct LoopbackSshd {
        child: std::process::Child,
        port: u16,
        key: PathBuf,
    }

    impl Drop for LoopbackSshd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn keygen(path: &Path) {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen failed");
    }

    impl LoopbackSshd {
        fn start(dir: &Path) -> Self {
            keygen(&dir.join("host_key"));
            keygen(&dir.join("client_key"));
            std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                     AuthorizedKeysFile {d}/authorized_keys\nPidFile none\nStrictModes no\n\
                     UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n",
                    d = dir.display()
                ),
            )
            .unwrap();
            // sshd refuses to start without its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").unwrap();
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
                .spawn()
                .unwrap();
            let sshd = LoopbackSshd {
                child,
                port,
                key: dir.join("client_key"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "sshd did not listen: {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            sshd
        }

        fn ssh_opt(&self, port: u16) -> String {
            format!(
                "-F /dev/null -p {port} -i {} -o StrictHostKeyChecking=no \
                 -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                self.key.display()
            )
        }
    }

    /// Stops whatever the test started in `dir`, even when it fails half-way.
    struct StopOnDrop(PathBuf);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(service::stop_script(&self.0, false))
                .output();
        }
    }

    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The multi-host machinery for real, over ssh to root@127.0.0.1 (a private sshd): the
    /// probe, the errors for an unreachable host, the tar copy, the supervised start (ssh
    /// returns although the programs keep running), a restart after SIGKILL, status and
    /// `stop --hosts`. The programs are stand-ins (shell scripts that sleep): the real
    /// skiff-control and skiff-agent would bind :6443 and :10250, which `cargo xtask deploy`
    /// uses, and attach eBPF to the host's root cgroup.
    #[test]
    fn over_ssh_to_loopback() {
        if !crate::util::is_root() || !Path::new("/usr/sbin/sshd").exists() {
            eprintln!("skipping over_ssh_to_loopback: needs root and /usr/sbin/sshd (openssh-server, installed by `cargo xtask setup`)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let sshd = LoopbackSshd::start(tmp.path());
        let dest = "root@127.0.0.1".to_owned();

        // Nothing listens on this port: the error names the host and says what ssh said.
        let closed = Ssh {
            opts: ssh_options(&[sshd.ssh_opt(free_port())]),
        };
        let e = probe_all(&closed, std::slice::from_ref(&dest)).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("cannot deploy, nothing was changed"), "{e}");
        assert!(e.contains("host root@127.0.0.1: ssh failed (probe)"), "{e}");
        assert!(e.contains("Connection refused"), "{e}");

        let hosts = HostsArgs {
            hosts: vec![dest.clone()],
            ssh_opts: vec![sshd.ssh_opt(sshd.port)],
            remote_dir: tmp.path().join("remote"),
        };
        let ssh = Ssh {
            opts: ssh_options(&hosts.ssh_opts),
        };
        let mut infos = probe_all(&ssh, &hosts.hosts).unwrap();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(infos[0].uid, 0);
        assert_eq!(infos[0].hostname, hostname.trim().to_lowercase());
        // Supervised whatever this host's PID 1 is: a test must not install systemd units.
        infos[0].pid1 = "test".into();

        let bins = tmp.path().join("bins");
        let images = tmp.path().join("images");
        std::fs::create_dir_all(&bins).unwrap();
        std::fs::create_dir_all(images.join("kubia-v1")).unwrap();
        std::fs::write(images.join("kubia-v1/index.json"), "{}").unwrap();
        for p in ["skiff-control", "skiff-agent"] {
            std::fs::write(bins.join(p), "#!/bin/sh\nexec sleep 1000\n").unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(bins.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let opts = Options {
            remote_dir: hosts.remote_dir.clone(),
            control_host: dest.clone(),
            control_address: "127.0.0.1".into(),
            port: free_port(),
            proxy_mode: "none".into(),
            bins,
            images,
            registry_config: Some(tmp.path().join("registries.yaml")),
        };
        std::fs::write(
            tmp.path().join("registries.yaml"),
            "configs:\n  r.example:\n    auth: {username: u, password: p}\n",
        )
        .unwrap();
        let _cleanup = StopOnDrop(opts.remote_dir.clone());
        let kubeconfig = tmp.path().join("cluster.kubeconfig");
        let mut run = Run {
            ssh: &ssh,
            opts: &opts,
            kubeconfig: &kubeconfig,
            fetched: None,
            join_token: None,
            before: Default::default(),
        };
        let remote = &opts.remote_dir;
        for step in plan(&infos, &opts).unwrap() {
            // The stand-ins serve no API and register no Node.
            if matches!(
                step,
                Step::WaitApi { .. } | Step::PushKubeconfig { .. } | Step::WaitNodes { .. }
            ) {
                continue;
            }
            let started = Instant::now();
            run.step(&step).unwrap_or_else(|e| panic!("{step}: {e:#}"));
            // ssh must not wait for the supervised programs it started.
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{step} took {:?}",
                started.elapsed()
            );
        }
        assert_eq!(
            std::fs::read_to_string(remote.join("images/kubia-v1/index.json")).unwrap(),
            "{}"
        );
        let sup = std::fs::read_to_string(remote.join("bin/skiff-control-supervise")).unwrap();
        assert!(sup.contains("--tls-san 127.0.0.1"), "{sup}");
        // The registry config arrives readable by root only, and the agent is told of it.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let installed = remote.join("registries.yaml");
            assert!(std::fs::read_to_string(&installed)
                .unwrap()
                .contains("password: p"));
            let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let agent = std::fs::read_to_string(remote.join("bin/skiff-agent-supervise")).unwrap();
            assert!(
                agent.contains(&format!("--registry-config {}", installed.display())),
                "{agent}"
            );
        }

        let status = ssh
            .script(&dest, "status", service::status_script(remote))
            .unwrap();
        let running = service::running_from_status(&status);
        assert_eq!(running.len(), 2, "{status}");

        let pid = |name: &str| -> Option<u32> {
            std::fs::read_to_string(service::pid_path(remote, name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let first = wait_for("the agent's pid", || pid("skiff-agent"));
        assert!(Command::new("kill")
            .args(["-KILL", &first.to_string()])
            .status()
            .unwrap()
            .success());
        wait_for("a restarted agent", || {
            pid("skiff-agent").filter(|p| *p != first)
        });

        stop(&hosts, false).unwrap();
        let status = ssh
            .script(&dest, "status", service::status_script(remote))
            .unwrap();
        assert_eq!(
            status, "skiff-control stopped\nskiff-agent stopped\n",
            "after stop --hosts"
        );
    }
}
