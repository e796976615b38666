//! skiff-agent: the node agent (pod runtime, pod networking, eBPF service proxy).
//!
//! The node agent itself is not implemented yet: only the eBPF service datapath exists. The
//! binary exposes just what works on its own today, the `datapath` commands (attach the
//! programs, program services by hand, list them, remove everything), and otherwise says it is
//! not implemented instead of pretending to run.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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

/// Runs the service proxy: watches Services and EndpointSlices and programs the datapath.
fn run_proxy(cli: &Cli) -> anyhow::Result<()> {
    let kubeconfig = cli
        .kubeconfig
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--proxy-mode needs --kubeconfig"))?;
    let node = cli
        .node_name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--proxy-mode needs --node-name"))?;
    let datapath: Box<dyn Datapath + Send> = match cli.proxy_mode {
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
        ProxyMode::None => unreachable!("checked by the caller"),
    };
    std::fs::create_dir_all(&cli.root_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        let client = kube::Client::try_from(config)?;
        let netlink = skiff_agent::network::connect()?;
        service_cidr::install(&netlink, cli.service_cidr).await?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! { _ = tokio::signal::ctrl_c() => {} _ = term.recv() => {} }
                shutdown.cancel();
            }
        });
        eprintln!("skiff-agent {node}: service proxy ({:?} mode) running; the pod runtime is not implemented yet", cli.proxy_mode);
        skiff_agent::proxy::api::run(client, datapath, shutdown).await
    })
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None if cli.proxy_mode != ProxyMode::None => {
            run_proxy(&cli)?;
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
        None => {
            eprintln!(
                "skiff-agent {}: the node agent is not implemented yet; only the control plane \
                 (skiff-control) is available in this version, and the eBPF service datapath \
                 (`skiff-agent datapath --help`). See ARCHITECTURE.md for the plan.",
                env!("CARGO_PKG_VERSION")
            );
            Ok(ExitCode::from(2))
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
