//! skiff-agent: the node agent (pod runtime, pod networking, eBPF service proxy).
//!
//! With `--kubeconfig` and `--node-name` the agent registers its Node and keeps it and its
//! heartbeat Lease fresh, and with `--proxy-mode` it implements Services on the node. Running
//! pods is not implemented yet. The `datapath` commands drive the eBPF datapath by hand.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_agent::kubelet::node::{NodeAgent, NodeConfig};
use skiff_agent::network::service_cidr::{self, Ipv4Cidr};
use skiff_agent::proxy::ebpf::service_table::ServiceTable;
use skiff_agent::proxy::ebpf::{self, AyaMaps, EbpfConfig, EbpfDatapath};
use skiff_agent::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity,
};

#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about = "skiff node agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Kubeconfig for the API server (runs the service proxy with `--proxy-mode`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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
    kubelet_server: skiff_agent::kubelet::server::ServerArgs,
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove the state of every proxy mode (pinned eBPF programs and maps, iptables chains,
    /// the nftables table).
    Cleanup {
        /// The bpffs directory of the eBPF datapath.
        #[arg(long, default_value = ebpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
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

/// Runs the agent: the Node's registration and heartbeat, and the service proxy if asked for.
fn run_agent(cli: &Cli) -> anyhow::Result<()> {
    let kubeconfig = cli.kubeconfig.clone().ok_or_else(|| {
        anyhow::anyhow!("the agent needs --kubeconfig (and --node-name); see --help")
    })?;
    let node = cli
        .node_name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the agent needs --node-name; see --help"))?;
    let datapath = start_datapath(cli)?;
    std::fs::create_dir_all(&cli.root_dir)
        .with_context(|| format!("creating the root dir {}", cli.root_dir.display()))?;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        let client = kube::Client::try_from(config)?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! { _ = tokio::signal::ctrl_c() => {} _ = term.recv() => {} }
                shutdown.cancel();
            }
        });
        let heartbeat = tokio::spawn(NodeAgent::new(client.clone(), node_config)?.run(shutdown.clone()));
        match datapath {
            Some(datapath) => {
                let netlink = skiff_agent::network::connect()?;
                service_cidr::install(&netlink, cli.service_cidr).await?;
                eprintln!("skiff-agent {node}: registered; service proxy ({:?} mode) running; running pods is not implemented yet", cli.proxy_mode);
                skiff_agent::proxy::api::run(client, datapath, shutdown.clone()).await?;
            }
            None => {
                eprintln!("skiff-agent {node}: registered; no service proxy (--proxy-mode); running pods is not implemented yet");
                shutdown.cancelled().await;
            }
        }
        shutdown.cancel();
        heartbeat.await?;
        anyhow::Ok(())
    })
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
        Some(Command::Cleanup { pin_dir }) => {
            ebpf::cleanup(&pin_dir)?;
            skiff_agent::proxy::iptables::IptablesProxy::cleanup(None)?;
            skiff_agent::proxy::nftables::NftablesProxy::cleanup(None)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let netlink = skiff_agent::network::connect()?;
                    anyhow::Ok(service_cidr::remove(&netlink).await?)
                })?;
            eprintln!(
                "removed the eBPF, iptables and nftables proxy state and the service CIDR route ({})",
                service_cidr::DEVICE
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
    use super::*;
    use std::net::Ipv4Addr;

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
