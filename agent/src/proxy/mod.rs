//! The service proxy: turns Services and their endpoints into a node's datapath.
//!
//! [`Datapath`] is the seam every mode implements. The skiff mode is eBPF socket-level
//! load balancing ([`ebpf::EbpfDatapath`]): cgroup `connect4`/`sendmsg4`/`recvmsg4`/
//! `getpeername4` programs translate a ClusterIP to a backend once per socket, reading maps laid
//! out after Cilium's lb4 maps. The iptables and nftables modes (kube-proxy's rule layout, for
//! benchmarks, [`iptables::IptablesProxy`] and [`nftables::NftablesProxy`]) implement the same
//! trait.
//!
//! [`ebpf::service_table::ServiceTable`] holds the eBPF mode's bookkeeping (backend and
//! reverse-NAT ids, slots, Maglev tables, affinity purges) over the
//! [`ebpf::service_table::LbMaps`] trait, so it is unit-tested without the kernel.
//!
//! What feeds a datapath: [`api`] watches Services and EndpointSlices (kube-rs reflectors) and
//! notes what each event touched ([`changes`]); [`runner`] runs a sync at a bounded frequency,
//! as kube-proxy's `BoundedFrequencyRunner` does, and [`sync`] recomputes the touched
//! Services' ports ([`desired`]), applies what differs and updates their cluster DNS names. NodePort and LoadBalancer traffic
//! from outside goes through the tc programs ([`ebpf::nodeport`]).

pub mod api;
pub mod changes;
pub mod desired;
pub mod ebpf;
pub mod health_check;
pub mod iptables;
pub mod nftables;
mod rules;
pub mod runner;
pub mod sync;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Errors of the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A rule tool (iptables-restore, nft) could not run or refused the rules.
    #[error("{command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// The service cannot be programmed as given.
    #[error("invalid service {frontend}: {reason}")]
    InvalidService {
        /// The service's frontend.
        frontend: Frontend,
        /// What is wrong with it.
        reason: String,
    },
    /// Every id of a kind (backend ids, reverse-NAT ids) is in use.
    #[error("no free {0} id left")]
    IdsExhausted(&'static str),
    /// This binary was built before `cargo xtask build-ebpf` produced the eBPF object, and no
    /// object file was given.
    #[error(
        "this skiff-agent was built without the eBPF programs: run `cargo xtask build-ebpf`, then \
         rebuild (or pass the object's path)"
    )]
    NoObject,
    /// Reading an eBPF object file failed.
    #[error("reading the eBPF object {path}: {source}")]
    ReadObject {
        /// The object file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// aya could not load the eBPF object (maps, relocations).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a program the datapath needs.
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    /// The object lacks a map the datapath needs.
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    /// Loading (verifying) or attaching a program failed.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// aya's error (with the verifier log for load failures).
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::pin::PinError,
    },
    /// Opening a pinned link failed.
    #[error("opening the pinned link {path}: {source}")]
    Link {
        /// The pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A pinned map left by an earlier agent does not match this agent's map layout.
    #[error(
        "the pinned map {path} does not match this agent's layout ({detail}); remove the old \
         state with `skiff-agent datapath cleanup`"
    )]
    IncompatiblePin {
        /// The pinned map.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// A file system operation (cgroup, bpffs, mountinfo) failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A NodePort interface has no IPv4 address to source-NAT to.
    #[error("interface {0} has no IPv4 address (the NodePort programs need one for SNAT)")]
    NoInterfaceAddress(String),
    /// No cgroup2 file system is mounted, so there is nothing to attach the programs to.
    #[error("no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    /// The pin directory is not on a bpf file system.
    #[error("{0} is not on a bpf file system (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs(PathBuf),
    /// Mounting bpffs failed.
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// A transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => skiff_ebpf_common::PROTO_TCP,
            Self::Udp => skiff_ebpf_common::PROTO_UDP,
        }
    }

    /// The protocol with this IP protocol number.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            skiff_ebpf_common::PROTO_TCP => Some(Self::Tcp),
            skiff_ebpf_common::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// What clients connect to: a ClusterIP (or external or load-balancer IP), a port and a
/// protocol (one Service port). A NodePort is a frontend whose `ip` is `0.0.0.0`: the port on
/// every address of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The virtual IP; unspecified (`0.0.0.0`) for a NodePort.
    pub ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl Frontend {
    /// A NodePort frontend: `port` on every address of the node.
    pub const fn node_port(port: u16, protocol: Protocol) -> Self {
        Self {
            ip: Ipv4Addr::UNSPECIFIED,
            port,
            protocol,
        }
    }

    /// Whether this is a NodePort (the port on every node address) rather than one IP.
    pub const fn is_node_port(&self) -> bool {
        self.ip.is_unspecified()
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)
    }
}

/// A ready endpoint of a service port (the protocol is the frontend's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    /// The endpoint's IP.
    pub ip: Ipv4Addr,
    /// The endpoint's port (the resolved targetPort).
    pub port: u16,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// How a backend is picked for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbAlgorithm {
    /// Uniformly at random (kube-proxy's behaviour).
    #[default]
    Random,
    /// Consistent hashing over a Maglev lookup table: a flow keeps its backend when other
    /// backends come and go (up to the minimum that must move).
    Maglev,
}

/// A Service's `sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// No affinity.
    #[default]
    None,
    /// `ClientIP`: a client keeps its backend until it has been idle for `timeout_seconds`
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, 1..=86400, default 10800). At socket
    /// level the client is its network namespace (a pod).
    ClientIp {
        /// Idle time after which the client may get another backend.
        timeout_seconds: u32,
    },
}

impl SessionAffinity {
    /// Kubernetes' default `timeoutSeconds` for ClientIP affinity.
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10800;
    /// Kubernetes' maximum `timeoutSeconds`.
    pub const MAX_TIMEOUT_SECONDS: u32 = 86400;
}

/// One service port with its backends, as the datapath should route it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The frontend.
    pub frontend: Frontend,
    /// Ready endpoints; empty means connections are refused.
    pub backends: Vec<BackendAddr>,
    /// How backends are picked.
    pub algorithm: LbAlgorithm,
    /// Session affinity.
    pub affinity: SessionAffinity,
    /// `externalTrafficPolicy: Local` on a frontend outside traffic uses (a nodePort, an
    /// external or load-balancer IP): `backends` are this node's only, and the client's
    /// source address is kept (rule-based modes skip their masquerade).
    pub external_local: bool,
}

/// What every proxy mode (eBPF, later iptables and nftables) implements.
pub trait Datapath {
    /// Creates or replaces a service port and its backends. Connections already established
    /// keep their backend; new ones only go to the given backends.
    fn upsert_service(&mut self, service: &Service) -> Result<(), ProxyError>;
    /// Creates or replaces many service ports, as [`Datapath::upsert_service`] for each in
    /// order; a mode may write them in fewer operations (eBPF: batched map updates). On an
    /// error the services before the failing one are programmed.
    fn upsert_services(&mut self, services: &[Service]) -> Result<(), ProxyError> {
        services.iter().try_for_each(|s| self.upsert_service(s))
    }
    /// Removes a service port; removing one that does not exist is not an error.
    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), ProxyError>;
    /// The services currently programmed, ordered by frontend.
    fn services(&self) -> Vec<Service>;
    /// Makes buffered changes effective. Modes that write each change at once (eBPF) have
    /// nothing to do; rule-based modes (iptables, nftables) write one batch here.
    fn commit(&mut self) -> Result<(), ProxyError> {
        Ok(())
    }
}
