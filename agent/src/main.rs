//! skiff-agent: the node agent (pod runtime, pod networking, eBPF service proxy).
//!
//! With `--node-name` and either its own identity (`--server URL --token ID.SECRET`: it joins
//! with a bootstrap token and authenticates as `system:node:<name>` with a certificate it keeps
//! renewed) or an admin `--kubeconfig`, the agent registers its Node and keeps it and its
//! heartbeat Lease fresh, runs the pods bound to the node, and with `--proxy-mode` implements
//! Services on the node. The `datapath` commands drive the eBPF datapath by hand.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_agent::kubelet::directory::Directory;
use skiff_agent::kubelet::events::Events;
use skiff_agent::kubelet::node::{NodeAgent, NodeConfig};
use skiff_agent::kubelet::pod_worker::Shared;
use skiff_agent::kubelet::token_manager::{ApiTokens, TokenManager};
use skiff_agent::network::service_cidr;
use skiff_agent::network::LazyNetwork;
use skiff_agent::proxy::ebpf::service_table::ServiceTable;
use skiff_agent::proxy::ebpf::{self, AyaMaps, EbpfConfig, EbpfDatapath};
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};
use skiff_k8s::cidr::Ipv4Cidr;

#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about = "skiff node agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Kubeconfig for the API server, used as it is (an admin's credentials; the older way).
    #[arg(long, conflicts_with_all = ["server", "token", "ca_file"])]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    join: JoinArgs,
    /// This node's name.
    #[arg(long)]
    node_name: Option<String>,
    /// The agent's state directory.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    root_dir: PathBuf,
    /// How Services are implemented on this node.
    #[arg(long, value_enum, default_value_t = ProxyMode::None)]
    proxy_mode: ProxyMode,
    /// The cgroup2 directory socket load balancing attaches to (eBPF mode; default: the cgroup2
    /// mount, i.e. every process on the node).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// The bpffs directory where the eBPF datapath pins its maps and links.
    #[arg(long, default_value = ebpf::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The Service ClusterIP range. The agent routes it to a dummy device so that a VIP no
    /// Service translates dies on the node instead of leaving it.
    #[arg(long, default_value = service_cidr::DEFAULT, value_parser = clap::value_parser!(Ipv4Cidr))]
    service_cidr: Ipv4Cidr,
    #[command(flatten)]
    nodeport: NodePortArgs,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    pods: PodArgs,
    #[command(flatten)]
    kubelet_server: skiff_agent::kubelet::server::ServerArgs,
    #[command(flatten)]
    dns: DnsArgs,
    #[command(flatten)]
    ingress: skiff_agent::ingress::IngressArgs,
}

/// Cluster DNS: what pods' resolv.conf names, and the responder this node runs.
#[derive(Debug, Clone, clap::Args)]
struct DnsArgs {
    /// The cluster DNS address pods resolve through (the `kube-dns` Service's ClusterIP, the
    /// kubelet's --cluster-dns); `none`: no cluster DNS, pods get the node's resolvers.
    #[arg(long, default_value = "10.96.0.10", value_parser = parse_cluster_dns)]
    cluster_dns: ClusterDns,
    /// The cluster domain (the kubelet's --cluster-domain).
    #[arg(long, default_value = "cluster.local", value_parser = parse_cluster_domain)]
    cluster_domain: String,
    /// The node's resolver configuration: what pods with dnsPolicy Default get, and where
    /// names outside the cluster domain are forwarded (unless --dns-upstream).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Resolvers for names outside the cluster domain, `IP` or `IP:PORT` (repeatable), instead
    /// of --resolv-conf's nameservers; `none` to forward nothing (such names get SERVFAIL).
    #[arg(long = "dns-upstream", value_name = "ADDR")]
    dns_upstreams: Vec<String>,
    /// TTL of the responder's positive answers, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    dns_ttl: u32,
}

/// `--cluster-dns`: an address, or none.
#[derive(Debug, Clone, Copy)]
struct ClusterDns(Option<std::net::Ipv4Addr>);

fn parse_cluster_dns(s: &str) -> Result<ClusterDns, String> {
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(ClusterDns(None));
    }
    s.parse()
        .map(|ip| ClusterDns(Some(ip)))
        .map_err(|_| format!("{s:?} is not an IPv4 address (or `none`)"))
}

fn parse_cluster_domain(s: &str) -> Result<String, String> {
    let domain = s.trim_end_matches('.').to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(domain)
    } else {
        Err(format!(
            "{s:?} is not a DNS domain name (labels of letters, digits and -)"
        ))
    }
}

impl DnsArgs {
    /// The resolvers outside names are forwarded to: --dns-upstream, else the nameservers of
    /// --resolv-conf.
    fn upstreams(&self, resolv_conf: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
        if self.dns_upstreams.iter().any(|u| u == "none") {
            return Ok(Vec::new());
        }
        if self.dns_upstreams.is_empty() {
            return Ok(skiff_agent::dns::forward::Forwarder::upstreams_of(
                resolv_conf,
            ));
        }
        self.dns_upstreams
            .iter()
            .map(|u| {
                u.parse::<std::net::SocketAddr>()
                    .or_else(|_| u.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| anyhow::anyhow!("--dns-upstream {u:?}: not IP or IP:PORT"))
            })
            .collect()
    }
}

/// How the agent gets its own identity (instead of `--kubeconfig`).
#[derive(Debug, Clone, clap::Args)]
struct JoinArgs {
    /// The API server, `https://HOST:PORT`: the agent joins it as `system:node:<node-name>`
    /// with a client certificate it gets with --token (kept in <root-dir>/pki and renewed).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A bootstrap token, ID.SECRET (`skiff-control token create`), to join with when no
    /// usable client certificate is stored yet. Without --ca-file, the cluster CA is learnt
    /// from the API's cluster-info, which must be signed with this token.
    #[arg(long, env = "SKIFF_JOIN_TOKEN", value_name = "ID.SECRET", requires = "server", hide_env_values = true, value_parser = parse_token)]
    token: Option<skiff_agent::kubelet::identity::discovery::BootstrapToken>,
    /// A file holding the bootstrap token (as --token, kept out of the command line; 0600).
    /// Read only when the agent has no usable certificate yet, so it may be deleted after the
    /// join.
    #[arg(
        long,
        value_name = "PATH",
        requires = "server",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The cluster CA (PEM) to trust instead of learning it from cluster-info.
    #[arg(long, value_name = "PATH", requires = "server")]
    ca_file: Option<PathBuf>,
    /// The lifetime to ask for the client certificate (CSR expirationSeconds: seconds, or
    /// with s, m, h or d; at least 10m). Default: the signer's.
    #[arg(long, value_name = "DURATION", value_parser = parse_cert_duration)]
    client_cert_duration: Option<i32>,
    /// The lifetime to ask for the kubelet endpoint's serving certificate (as
    /// --client-cert-duration).
    #[arg(long, value_name = "DURATION", value_parser = parse_cert_duration)]
    serving_cert_duration: Option<i32>,
}

fn parse_token(
    s: &str,
) -> Result<skiff_agent::kubelet::identity::discovery::BootstrapToken, String> {
    s.trim().parse()
}

/// `3600`, `600s`, `10m`, `2h`, `30d` as seconds; at least 600 (the API's minimum).
fn parse_cert_duration(s: &str) -> Result<i32, String> {
    let s = s.trim();
    let (number, factor) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let seconds = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| format!("{s:?} is not a duration like 3600, 90m, 24h or 30d"))?;
    if seconds < 600 {
        return Err(format!(
            "{s:?} is shorter than 10m, the shortest certificate the API issues"
        ));
    }
    Ok(seconds)
}

/// How the agent runs pods.
#[derive(Debug, Clone, clap::Args)]
struct PodArgs {
    /// The cluster's pod range: traffic from pods to addresses outside it is masqueraded,
    /// traffic inside it keeps the pod's source address.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = clap::value_parser!(Ipv4Cidr))]
    cluster_cidr: Ipv4Cidr,
    /// Import the images found in this directory (OCI layouts, docker archives) at start.
    #[arg(long, value_name = "DIR")]
    preload_images: Vec<PathBuf>,
    /// Only pull from registries on this machine (loopback): nothing leaves the node.
    #[arg(long)]
    local_registries_only: bool,
    /// A registry host (`host:port`) spoken to over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Registry mirrors, with credentials and TLS per host: a file in the shape of k3s's
    /// registries.yaml (`mirrors:` with `endpoint` and `rewrite`, `configs:` with `auth` and
    /// `tls`). Mirrors are tried first, then the registry itself.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Pull images of registries that have a mirror entry in --registry-config (every registry
    /// if it has a "*" entry) from the mirrors only, never from the registry itself (k3s's
    /// flag of the same name).
    #[arg(long)]
    disable_default_registry_endpoint: bool,
    /// Static pods: pod manifests in this directory run on this node, mirrored into the API.
    #[arg(long, value_name = "DIR")]
    manifest_dir: Option<PathBuf>,
    /// How often the manifest directory is read, in seconds.
    #[arg(long, default_value_t = 20)]
    file_check_frequency: u64,
    /// How often a running pod's configMap, secret, downwardAPI and projected volumes are
    /// written again (renewed ServiceAccount tokens, changed ConfigMaps and Secrets), in
    /// seconds (the kubelet's --sync-frequency).
    #[arg(long, default_value_t = 60)]
    sync_frequency: u64,
    /// Sysctls pods may set beyond the safe set (comma-separated names, or prefixes ending in
    /// `*`; each must be namespaced), as the kubelet's --allowed-unsafe-sysctls.
    #[arg(long, value_delimiter = ',', value_name = "SYSCTLS")]
    allowed_unsafe_sysctls: Vec<String>,
}

/// How the agent presents its Node.
#[derive(Debug, Clone, clap::Args)]
struct NodeArgs {
    /// The node's InternalIP (default: the address of the default-route interface).
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// The node's pod range, set in the Node's spec.podCIDR when it has none.
    #[arg(long, value_parser = clap::value_parser!(Ipv4Cidr))]
    pod_cidr: Option<Ipv4Cidr>,
    /// Pods this node accepts (capacity and allocatable `pods`).
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Labels for the Node, `key=value`; repeat for several.
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The heartbeat Lease's duration; it is renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u64,
    /// How often the Node's status is posted.
    #[arg(long, default_value_t = 10)]
    node_status_update_seconds: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Where NodePorts are served for clients outside the node (eBPF mode).
#[derive(Debug, Clone, clap::Args)]
struct NodePortArgs {
    /// An external interface for the NodePort programs (tc); repeat for several. Default: the
    /// interfaces of the IPv4 default routes.
    #[arg(long = "nodeport-interface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// Do not attach the NodePort programs (NodePorts then work only from the node itself).
    #[arg(long, conflicts_with = "interfaces")]
    no_nodeport: bool,
}

impl NodePortArgs {
    fn resolve(&self) -> anyhow::Result<Vec<String>> {
        if self.no_nodeport {
            return Ok(Vec::new());
        }
        if !self.interfaces.is_empty() {
            return Ok(self.interfaces.clone());
        }
        let found = ebpf::nodeport::default_route_interfaces()?;
        if found.is_empty() {
            tracing::warn!("no IPv4 default route: NodePorts are served to local clients only (see --nodeport-interface)");
        }
        Ok(found)
    }
}

/// Service proxy modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyMode {
    /// eBPF socket-level load balancing (skiff's datapath).
    Ebpf,
    /// kube-proxy's iptables rules (for comparison).
    Iptables,
    /// kube-proxy's nftables rules (for comparison).
    Nftables,
    /// No service proxy.
    None,
}

impl ProxyMode {
    /// The shortest time between two syncs of the service proxy: changes that come closer
    /// together wait and are applied together. A sync costs what changed, plus the mode's
    /// commit: a few bpf() calls for eBPF, so it waits little; an iptables-restore or nft run
    /// for the rule modes, which are worth batching.
    fn min_sync_interval(self) -> Duration {
        match self {
            Self::Ebpf => Duration::from_millis(2),
            Self::Iptables | Self::Nftables | Self::None => Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove the state of every proxy mode (pinned eBPF programs and maps, iptables chains,
    /// the nftables table).
    Cleanup {
        /// The bpffs directory of the eBPF datapath.
        #[arg(long, default_value = ebpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Also stop and remove every pod sandbox recorded in this agent root dir.
        #[arg(long)]
        root_dir: Option<PathBuf>,
    },
    /// The eBPF service datapath of this node.
    Datapath {
        /// The bpffs directory where the datapath pins its maps and links.
        #[arg(long, global = true, default_value = ebpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(subcommand)]
        command: DatapathCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DatapathCommand {
    /// Load the programs, attach them to a cgroup2 directory and pin them with their maps; they
    /// stay attached after this command exits. Services already pinned are kept.
    Attach {
        /// The cgroup2 directory whose processes get socket load balancing (default: the cgroup2
        /// mount, i.e. every process on the node).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// An eBPF object to load instead of the one built into this binary.
        #[arg(long)]
        object: Option<PathBuf>,
        #[command(flatten)]
        nodeport: NodePortArgs,
    },
    /// Create or replace a service port.
    Set {
        /// VIP:PORT/PROTOCOL, e.g. 10.96.0.10:53/udp; 0.0.0.0:PORT is a NodePort.
        #[arg(long, value_parser = parse_frontend)]
        frontend: Frontend,
        /// IP:PORT of a backend; repeat for several; none refuses connections.
        #[arg(long = "backend", value_parser = parse_backend)]
        backends: Vec<BackendAddr>,
        /// Pick backends with a Maglev table instead of at random.
        #[arg(long)]
        maglev: bool,
        /// ClientIP session affinity with this timeout in seconds.
        #[arg(long)]
        affinity_timeout: Option<u32>,
    },
    /// Delete a service port.
    Delete {
        /// VIP:PORT/PROTOCOL.
        #[arg(long, value_parser = parse_frontend)]
        frontend: Frontend,
    },
    /// List the programmed service ports.
    List,
    /// Detach the programs and remove their pinned maps and links.
    Cleanup,
}

fn parse_frontend(s: &str) -> Result<Frontend, String> {
    let (addr, proto) = s.rsplit_once('/').unwrap_or((s, "tcp"));
    let addr: SocketAddrV4 = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(format!("unknown protocol {other} (tcp or udp)")),
    };
    Ok(Frontend {
        ip: *addr.ip(),
        port: addr.port(),
        protocol,
    })
}

fn parse_backend(s: &str) -> Result<BackendAddr, String> {
    let addr: SocketAddrV4 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    Ok(BackendAddr {
        ip: *addr.ip(),
        port: addr.port(),
    })
}

fn pinned_table(pin_dir: &std::path::Path) -> anyhow::Result<ServiceTable<AyaMaps>> {
    anyhow::ensure!(
        ebpf::is_pinned(pin_dir),
        "no datapath is pinned in {}: run `skiff-agent datapath attach` first",
        pin_dir.display()
    );
    Ok(ServiceTable::restore(AyaMaps::open_pinned(pin_dir)?)?)
}

fn print_service(s: &Service) {
    let backends: Vec<String> = s.backends.iter().map(ToString::to_string).collect();
    let mut extra = String::new();
    if s.algorithm == LbAlgorithm::Maglev {
        extra.push_str(" maglev");
    }
    if let SessionAffinity::ClientIp { timeout_seconds } = s.affinity {
        extra.push_str(&format!(" affinity={timeout_seconds}s"));
    }
    println!("{}{extra} -> [{}]", s.frontend, backends.join(", "));
}

fn datapath(pin_dir: PathBuf, command: DatapathCommand) -> anyhow::Result<()> {
    match command {
        DatapathCommand::Attach {
            cgroup_root,
            object,
            nodeport,
        } => {
            let mut config = EbpfConfig::node_defaults()?;
            config.pin_dir = pin_dir;
            config.object = object;
            config.nodeport_interfaces = nodeport.resolve()?;
            if let Some(cgroup) = cgroup_root {
                config.cgroup = cgroup;
            }
            let dp = EbpfDatapath::start(config.clone())
                .with_context(|| format!("attaching to {}", config.cgroup.display()))?;
            eprintln!(
                "attached to {}{}, pinned in {}, {} service port(s)",
                config.cgroup.display(),
                if config.nodeport_interfaces.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", config.nodeport_interfaces.join(", "))
                },
                config.pin_dir.display(),
                dp.services().len()
            );
        }
        DatapathCommand::Set {
            frontend,
            backends,
            maglev,
            affinity_timeout,
        } => {
            let service = Service {
                frontend,
                backends,
                algorithm: if maglev {
                    LbAlgorithm::Maglev
                } else {
                    LbAlgorithm::Random
                },
                affinity: match affinity_timeout {
                    Some(timeout_seconds) => SessionAffinity::ClientIp { timeout_seconds },
                    None => SessionAffinity::None,
                },
                external_local: false,
            };
            pinned_table(&pin_dir)?.upsert_service(&service)?;
        }
        DatapathCommand::Delete { frontend } => {
            pinned_table(&pin_dir)?.delete_service(&frontend)?;
        }
        DatapathCommand::List => {
            for s in pinned_table(&pin_dir)?.services() {
                print_service(&s);
            }
        }
        DatapathCommand::Cleanup => {
            let was = ebpf::is_pinned(&pin_dir);
            ebpf::cleanup(&pin_dir)?;
            if was {
                eprintln!("removed the datapath pinned in {}", pin_dir.display());
            } else {
                eprintln!("nothing pinned in {}", pin_dir.display());
            }
        }
    }
    Ok(())
}

/// The datapath of `--proxy-mode`, started before anything else so a bad flag fails fast.
fn start_datapath(cli: &Cli) -> anyhow::Result<Option<Box<dyn Datapath + Send>>> {
    Ok(Some(match cli.proxy_mode {
        ProxyMode::Ebpf => {
            let cgroup = match &cli.cgroup_root {
                Some(c) => c.clone(),
                None => ebpf::sys::cgroup2_root()?,
            };
            Box::new(EbpfDatapath::start(EbpfConfig {
                cgroup,
                pin_dir: cli.pin_dir.clone(),
                object: None,
                nodeport_interfaces: cli.nodeport.resolve()?,
            })?)
        }
        ProxyMode::Iptables => Box::new(skiff_agent::proxy::iptables::IptablesProxy::new()),
        ProxyMode::Nftables => Box::new(skiff_agent::proxy::nftables::NftablesProxy::new()),
        ProxyMode::None => return Ok(None),
    }))
}

/// How the image store talks to registries: the flags and the `--registry-config` file.
fn registry_config(pods: &PodArgs) -> anyhow::Result<skiff_agent::images::RegistryConfig> {
    let mirrors = match &pods.registry_config {
        Some(path) => {
            let config = skiff_agent::images::MirrorConfig::load(path)?;
            tracing::info!(file = %path.display(), "read the registry config");
            config
        }
        None => {
            if pods.disable_default_registry_endpoint {
                tracing::warn!("--disable-default-registry-endpoint without --registry-config has no effect: no registry has a mirror entry");
            }
            Default::default()
        }
    };
    Ok(skiff_agent::images::RegistryConfig {
        plain_http: pods.insecure_registries.clone(),
        allowed: pods.local_registries_only.then(Vec::new),
        mirrors,
        disable_default_endpoint: pods.disable_default_registry_endpoint,
        ..Default::default()
    })
}

/// How the agent authenticates to the API server.
enum Credentials {
    /// An existing kubeconfig (an admin's).
    Kubeconfig(PathBuf),
    /// Its own identity.
    Join(skiff_agent::kubelet::identity::JoinConfig),
}

/// The PEM text of DER certificates.
fn pem_certificates(ders: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Runs the agent: the Node's registration and heartbeat, and the service proxy if asked for.
fn run_agent(cli: &Cli) -> anyhow::Result<()> {
    if cli.kubeconfig.is_none() && cli.join.server.is_none() {
        anyhow::bail!(
            "the agent needs --server URL --token ID.SECRET (to join as its own node) or --kubeconfig, and --node-name; see --help"
        );
    }
    let node = cli
        .node_name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the agent needs --node-name; see --help"))?;
    let credentials = match (&cli.kubeconfig, &cli.join.server) {
        (Some(path), _) => Credentials::Kubeconfig(path.clone()),
        (None, Some(server)) => Credentials::Join(skiff_agent::kubelet::identity::JoinConfig {
            server: server.trim_end_matches('/').to_owned(),
            token: match (&cli.join.token, &cli.join.token_file) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(text) => Some(
                        parse_token(&text)
                            .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?,
                    ),
                    // Gone after the join: the stored certificate is the credential now.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => anyhow::bail!("--token-file {}: {e}", path.display()),
                },
                (None, None) => None,
            },
            ca_file: cli.join.ca_file.clone(),
            node: node.clone(),
            root_dir: cli.root_dir.clone(),
            client_cert_seconds: cli.join.client_cert_duration,
            csr_timeout: skiff_agent::kubelet::identity::JOIN_CSR_TIMEOUT,
        }),
        (None, None) => unreachable!("checked above"),
    };
    // Read before anything starts, so that a bad file stops the agent at once.
    let registry = registry_config(&cli.pods)?;
    let datapath = start_datapath(cli)?;
    std::fs::create_dir_all(&cli.root_dir)
        .with_context(|| format!("creating the root dir {}", cli.root_dir.display()))?;
    // 0700: below it are Secrets, tokens, the node's key and every pod's volumes.
    std::fs::set_permissions(
        &cli.root_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("making the root dir {} 0700", cli.root_dir.display()))?;
    let node_config = NodeConfig {
        name: node.clone(),
        node_ip: cli.node.node_ip,
        pod_cidr: cli.node.pod_cidr,
        max_pods: cli.node.max_pods,
        labels: cli.node.labels.iter().cloned().collect(),
        lease_duration: Duration::from_secs(cli.node.node_lease_duration_seconds.max(1)),
        status_interval: Duration::from_secs(cli.node.node_status_update_seconds.max(1)),
        root_dir: cli.root_dir.clone(),
        kubelet_port: cli.kubelet_server.kubelet_port,
    };
    // Container processes re-parent to the agent when their shim exits; it reaps them.
    skiff_agent::runtime::become_subreaper().context("becoming a child subreaper")?;
    let runtime = std::sync::Arc::new(
        skiff_agent::runtime::Runtime::new(&cli.root_dir).context("opening the pod runtime")?,
    );
    let images = skiff_agent::images::ImageStore::open_with(cli.root_dir.join("images"), registry)
        .context("opening the image store")?;
    for dir in &cli.pods.preload_images {
        let names = images
            .import_dir(dir)
            .with_context(|| format!("preloading images from {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), images = ?names, "preloaded images");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let host_ip = cli.node.node_ip.or_else(|| skiff_agent::network::interfaces::primary_address().ok().flatten());
        let (client, security) = match credentials {
            Credentials::Kubeconfig(kubeconfig) => {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
                    .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
                // The kubeconfig's own token (skiff's admin token) is still accepted as it was.
                let token = skiff_agent::kubelet::server::kubeconfig_token(&kc).ok();
                let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
                let client_ca_pem = config.root_cert.as_deref().map(pem_certificates);
                let client = kube::Client::try_from(config)?;
                let reviewer = std::sync::Arc::new(skiff_agent::kubelet::auth::ApiReviewer(client.clone()));
                let security = skiff_agent::kubelet::server::ServerSecurity {
                    auth: std::sync::Arc::new(skiff_agent::kubelet::auth::KubeletAuth::new(node.clone(), Some(reviewer), token)),
                    client_ca_pem,
                    serving: None,
                };
                (client, security)
            }
            Credentials::Join(join) => {
                use skiff_agent::kubelet::identity;
                let root = join.root_dir.clone();
                let me = identity::join(join).await?;
                me.rotate(shutdown.clone());
                // The serving certificate: the stored one if it still names this node's
                // addresses, else one requested once the Node reports them.
                let dns = vec![node.clone()];
                let ips: Vec<std::net::IpAddr> = host_ip.map(std::net::IpAddr::V4).into_iter().collect();
                let serving = identity::rotation::CertSlot::new(identity::serving::stored(&root, &node, &dns, &ips))?;
                identity::serving::run(me.client.clone(), &node, &root, cli.join.serving_cert_duration, serving.clone(), shutdown.clone());
                let reviewer = std::sync::Arc::new(skiff_agent::kubelet::auth::ApiReviewer(me.client.clone()));
                let security = skiff_agent::kubelet::server::ServerSecurity {
                    auth: std::sync::Arc::new(skiff_agent::kubelet::auth::KubeletAuth::new(node.clone(), Some(reviewer), None)),
                    client_ca_pem: Some(me.ca_pem.clone()),
                    serving: Some(serving),
                };
                (me.client, security)
            }
        };
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! { _ = tokio::signal::ctrl_c() => {} _ = term.recv() => {} }
                shutdown.cancel();
            }
        });
        // Every SIGCHLD wakes the pod workers to look at their containers.
        let (sigchld_tx, sigchld) = tokio::sync::watch::channel(0u64);
        let mut child_signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        tokio::spawn(async move {
            while child_signals.recv().await.is_some() {
                sigchld_tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        let heartbeat = tokio::spawn(NodeAgent::new(client.clone(), node_config)?.run(shutdown.clone()));
        let pod_cidr = match cli.node.pod_cidr {
            Some(c) => c,
            None => wait_for_pod_cidr(&client, &node, &shutdown).await?,
        };
        let network = std::sync::Arc::new(LazyNetwork::new(cli.root_dir.join("network"), pod_cidr, cli.pods.cluster_cidr));
        // A missing resolv.conf is a node without resolvers, as for the kubelet.
        let host_resolv = std::fs::read_to_string(&cli.dns.resolv_conf).unwrap_or_default();
        let node_dns = skiff_agent::kubelet::resolv_conf::NodeDns {
            cluster_dns: cli.dns.cluster_dns.0.iter().map(ToString::to_string).collect(),
            cluster_domain: cli.dns.cluster_domain.clone(),
            host: skiff_agent::kubelet::resolv_conf::ResolvConf::parse(&host_resolv),
        };
        let directory = std::sync::Arc::new(Directory::new(&cli.root_dir));
        let shared = std::sync::Arc::new(Shared {
            client: client.clone(),
            node_name: node.clone(),
            host_ip,
            runtime: runtime.clone(),
            images: std::sync::Arc::new(images),
            network: network.clone(),
            root: cli.root_dir.clone(),
            events: Events::new(client.clone(), &node),
            statuses: skiff_agent::kubelet::status_writer::StatusWriter::new(client.clone()),
            sigchld,
            directory: directory.clone(),
            shutdown: shutdown.clone(),
            tokens: std::sync::Arc::new(TokenManager::new(std::sync::Arc::new(ApiTokens(client.clone())))),
            sync_frequency: Duration::from_secs(cli.pods.sync_frequency.max(1)),
            admission: skiff_agent::kubelet::admission::Admission::new(&cli.pods.allowed_unsafe_sysctls)
                .map_err(|e| anyhow::anyhow!(e))?,
            dns: std::sync::Arc::new(node_dns),
        });
        let pods = tokio::spawn(skiff_agent::kubelet::pod_manager::run(shared));
        let mut tls_sans = vec![node.clone()];
        tls_sans.extend(host_ip.map(|ip| ip.to_string()));
        let server = tokio::spawn(skiff_agent::kubelet::server::serve_with(
            skiff_agent::kubelet::server::ServerConfig {
                args: cli.kubelet_server.clone(),
                root_dir: cli.root_dir.clone(),
                token: String::new(),
                tls_sans,
            },
            security,
            directory.clone(),
            runtime.clone(),
            shutdown.clone(),
        ));
        if let Some(dir) = cli.pods.manifest_dir.clone() {
            tokio::spawn(skiff_agent::kubelet::static_pods::run(
                client.clone(),
                node.clone(),
                dir,
                Duration::from_secs(cli.pods.file_check_frequency.max(1)),
                shutdown.clone(),
            ));
        }
        let routes = tokio::spawn(skiff_agent::kubelet::pod_manager::keep_routes(client.clone(), node.clone(), network, shutdown.clone()));
        match datapath {
            Some(datapath) => {
                let netlink = skiff_agent::network::connect()?;
                service_cidr::install(&netlink, cli.service_cidr).await?;
                eprintln!("skiff-agent {node}: registered; running pods (podCIDR {pod_cidr}); service proxy ({:?} mode) running", cli.proxy_mode);
                let dns = match cli.dns.cluster_dns.0 {
                    Some(_) => Some(start_dns(&cli.dns, &host_resolv, pod_cidr, shutdown.clone())?),
                    None => None,
                };
                let min_interval = cli.proxy_mode.min_sync_interval();
                // The Ingress proxy routes from the service proxy's watch caches.
                let (share, shared_watches) = tokio::sync::oneshot::channel();
                tokio::spawn({
                    let (client, node, events, args, shutdown) =
                        (client.clone(), node.clone(), Events::new(client.clone(), &node), cli.ingress.clone(), shutdown.clone());
                    async move {
                        let Ok(watched) = shared_watches.await else { return };
                        if let Err(e) = skiff_agent::ingress::run(client, node, events, watched, args, shutdown).await {
                            tracing::error!(error = %e, "the Ingress proxy stopped");
                        }
                    }
                });
                skiff_agent::proxy::api::run(client, datapath, node.clone(), dns, min_interval, shutdown.clone(), Some(share)).await?;
            }
            None => {
                eprintln!("skiff-agent {node}: registered; running pods (podCIDR {pod_cidr}); no service proxy (--proxy-mode), and so no Ingress proxy");
                shutdown.cancelled().await;
            }
        }
        shutdown.cancel();
        heartbeat.await?;
        let _ = pods.await;
        let _ = routes.await;
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "the node's HTTP endpoints stopped");
        }
        anyhow::Ok(())
    })
}

/// Starts the node's DNS responder on port 53 of the pod bridge's gateway (the first address of
/// the podCIDR: where the `kube-dns` EndpointSlice says this node's responder is), answering
/// from the zone the service proxy keeps.
fn start_dns(
    args: &DnsArgs,
    host_resolv: &str,
    pod_cidr: Ipv4Cidr,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<skiff_agent::dns::ClusterZone> {
    use skiff_agent::dns::{forward::Forwarder, server, zone::Zone, ClusterZone};
    let upstreams = args.upstreams(host_resolv)?;
    let address = std::net::SocketAddrV4::new(pod_cidr.nth(1), 53);
    let (udp, tcp) = server::bind_free(address).with_context(|| {
        format!(
            "the cluster DNS responder cannot listen on {address} (is another DNS server \
                 bound to port 53 on every address? `--cluster-dns none` runs without cluster DNS)"
        )
    })?;
    let handle = server::ZoneHandle::new(Zone::empty(&args.cluster_domain, args.dns_ttl));
    let forwarder = Forwarder::new(upstreams.clone(), Duration::from_secs(2));
    tokio::spawn(server::serve(udp, tcp, handle.clone(), forwarder, shutdown));
    tracing::info!(%address, domain = %args.cluster_domain, ?upstreams, "cluster DNS responder listening");
    Ok(ClusterZone {
        domain: args.cluster_domain.clone(),
        ttl: args.dns_ttl,
        handle,
        address: *address.ip(),
    })
}

/// Stops and removes every pod sandbox under an agent's root dir (for `cleanup --root-dir`).
fn remove_all_pods(root: &std::path::Path) -> anyhow::Result<()> {
    if !root.join("pods").exists() {
        return Ok(());
    }
    let runtime = skiff_agent::runtime::Runtime::new(root)?;
    let mut uids: Vec<String> = runtime.list()?.into_iter().map(|p| p.sandbox.uid).collect();
    uids.extend(runtime.leftover_pods()?);
    for uid in &uids {
        runtime
            .remove_pod_by_uid(uid)
            .with_context(|| format!("removing pod {uid}"))?;
    }
    eprintln!(
        "removed {} pod sandbox(es) from {}",
        uids.len(),
        root.display()
    );
    Ok(())
}

/// Waits until the Node has a podCIDR (given by the control plane's allocator).
async fn wait_for_pod_cidr(
    client: &kube::Client,
    node: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Ipv4Cidr> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let mut said = false;
    loop {
        if let Ok(Some(n)) = nodes.get_opt(node).await {
            if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
                return cidr
                    .parse()
                    .map_err(|e| anyhow::anyhow!("the Node's podCIDR {cidr:?}: {e}"));
            }
        }
        if !said {
            eprintln!(
                "skiff-agent {node}: waiting for the Node's spec.podCIDR (or pass --pod-cidr)"
            );
            said = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down before the Node got a podCIDR"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    // `skiff-agent shim ...` and `skiff-agent pause ...`: the pod runtime's helper processes
    // (re-executions of this binary), dispatched before anything else so they stay
    // single-threaded.
    if let Some(code) = skiff_agent::runtime::helper_main() {
        return Ok(code);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => {
            run_agent(&cli)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Cleanup { pin_dir, root_dir }) => {
            if let Some(root) = root_dir {
                remove_all_pods(&root)?;
            }
            ebpf::cleanup(&pin_dir)?;
            skiff_agent::proxy::iptables::IptablesProxy::cleanup(None)?;
            skiff_agent::proxy::nftables::NftablesProxy::cleanup(None)?;
            skiff_agent::network::node_network::remove_masquerade()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let netlink = skiff_agent::network::connect()?;
                    service_cidr::remove(&netlink).await?;
                    skiff_agent::network::delete_link(
                        &netlink,
                        skiff_agent::network::pod_network::BRIDGE,
                    )
                    .await?;
                    anyhow::Ok(())
                })?;
            eprintln!(
                "removed the eBPF, iptables and nftables proxy state, the service CIDR route ({}), the pod bridge ({}) and the masquerade rule",
                service_cidr::DEVICE,
                skiff_agent::network::pod_network::BRIDGE
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Datapath { pin_dir, command }) => {
            datapath(pin_dir, command)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_flags_refuse_bad_values_with_a_reason() {
        assert_eq!(
            parse_cluster_domain("Cluster.Local.").unwrap(),
            "cluster.local"
        );
        for bad in [
            "",
            "a..b",
            "-x.local",
            "x-.local",
            "under_score.local",
            &"a".repeat(64),
        ] {
            let err = parse_cluster_domain(bad).unwrap_err();
            assert!(err.contains("is not a DNS domain name"), "{bad}: {err}");
        }
        assert!(parse_cluster_dns("none").unwrap().0.is_none());
        assert!(parse_cluster_dns("10.96.0.300")
            .unwrap_err()
            .contains("not an IPv4 address"));
    }

    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn certificate_durations_parse_and_have_a_floor() {
        assert_eq!(parse_cert_duration("3600"), Ok(3600));
        assert_eq!(parse_cert_duration("600s"), Ok(600));
        assert_eq!(parse_cert_duration("90m"), Ok(5400));
        assert_eq!(parse_cert_duration("24h"), Ok(86_400));
        assert_eq!(parse_cert_duration("30d"), Ok(2_592_000));
        assert!(parse_cert_duration("599").is_err());
        assert!(parse_cert_duration("1h30m").is_err());
        assert!(parse_cert_duration("100000d").is_err());
        assert!(parse_cert_duration("").is_err());
    }

    #[test]
    fn join_flags_exclude_the_kubeconfig() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["skiff-agent", "--node-name", "n1"].iter().chain(args))
        };
        let cli = parse(&[
            "--server",
            "https://10.0.0.1:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--ca-file",
            "/ca.crt",
            "--client-cert-duration",
            "1h",
        ])
        .unwrap();
        assert_eq!(cli.join.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(cli.join.token.unwrap().id, "abcdef");
        assert_eq!(cli.join.client_cert_duration, Some(3600));
        assert_eq!(cli.kubelet_server.read_only_port, 0);
        assert!(parse(&[
            "--kubeconfig",
            "/k",
            "--token",
            "abcdef.0123456789abcdef",
            "--server",
            "https://x"
        ])
        .is_err());
        assert!(parse(&["--kubeconfig", "/k", "--server", "https://x"]).is_err());
        // A token needs a server; a malformed token is refused.
        assert!(parse(&["--token", "abcdef.0123456789abcdef"]).is_err());
        assert!(parse(&["--server", "https://x", "--token", "nope"]).is_err());
        assert!(parse(&["--kubeconfig", "/k"]).is_ok());
    }

    #[test]
    fn parses_frontends_and_backends() {
        assert_eq!(
            parse_frontend("10.96.0.10:53/UDP").unwrap(),
            Frontend {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 53,
                protocol: Protocol::Udp
            }
        );
        assert_eq!(
            parse_frontend("10.96.0.10:80").unwrap().protocol,
            Protocol::Tcp
        );
        assert!(parse_frontend("10.96.0.10:80/sctp").is_err());
        assert!(parse_frontend("10.96.0.10").is_err());
        assert_eq!(
            parse_backend("10.244.0.1:8080").unwrap(),
            BackendAddr {
                ip: Ipv4Addr::new(10, 244, 0, 1),
                port: 8080
            }
        );
    }
}
