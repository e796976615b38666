use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_control::apiserver::service_alloc;
use skiff_control::bootstrap::token;
use skiff_control::controllers::{
    csr_approving, csr_signing, node_lifecycle, pod_cidr, service_lb,
};
use skiff_control::manager::{self, leader};
use skiff_control::server::{self, Config};
use skiff_k8s::cidr::{CidrError, Ipv4Cidr};
use tokio_util::sync::CancellationToken;

/// skiff-control: the skiff control plane (Kubernetes API server and controllers).
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Directory for the database, CA, serving certificate and admin token.
    #[arg(long, env = "SKIFF_DATA_DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// Where objects are stored: `redb`, an embedded database file in --data-dir (one
    /// control-plane host), or `etcd`, the etcd cluster at --etcd-servers (one skiff-control
    /// per --etcd-prefix for now: ClusterIP and NodePort allocation is still in its memory).
    #[arg(long, value_enum, default_value = "redb")]
    store: StoreKind,
    /// etcd's client URLs, comma-separated (`http://host:2379`, `https://` with the TLS flags);
    /// for --store etcd.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// The CA that signed etcd's serving certificates (https:// servers).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// A client certificate for etcd (with --etcd-keyfile), for an etcd that asks for one.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// The key of --etcd-certfile.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// The prefix of every key skiff writes in etcd (another prefix is another cluster).
    #[arg(long, default_value = skiff_control::store::etcd_store::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// How often etcd's history is compacted (kube-apiserver's flag); `0` never.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
    /// HTTPS listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write an admin kubeconfig (server URL, CA data, token) to this path.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// The IPv4 range Service ClusterIPs are allocated from; its first address is the
    /// `kubernetes` Service's.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cidr: Ipv4Cidr,
    /// The range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = service_alloc::parse_port_range)]
    service_node_port_range: RangeInclusive<u16>,
    /// The cluster DNS Service's address (`kube-dns` in kube-system; agents' --cluster-dns
    /// must match); default: the tenth address of --service-cidr (10.96.0.10), as kubeadm's;
    /// `none` for no cluster DNS.
    #[arg(long)]
    cluster_dns: Option<String>,
    /// tolerationSeconds of the toleration for node.kubernetes.io/not-ready:NoExecute that
    /// every pod gets unless it has one.
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the toleration for node.kubernetes.io/unreachable:NoExecute that
    /// every pod gets unless it has one.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// Authorizers to consult in order, comma-separated, as kube-apiserver's flag: Node (a
    /// node's credential reaches its own objects and those its pods use), RBAC, AlwaysAllow
    /// (no authorization: any authenticated or anonymous request passes), or AlwaysDeny.
    /// Members of system:masters are always allowed.
    #[arg(long, default_value = "Node,RBAC", value_parser = parse_modes)]
    authorization_mode: Modes,
    /// Admission plugins to turn off, comma-separated (kube-apiserver's flag); only
    /// ServiceAccount (without it pods get no account token) and
    /// CertificateSubjectRestriction (without it a CSR may ask the kube-apiserver-client
    /// signer for a system:masters certificate, which an approver could then grant) can be.
    #[arg(long, value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
    /// The Pod Security level (privileged, baseline or restricted, optionally :v1.X) that
    /// PodSecurity admission enforces, audits and warns about in namespaces whose
    /// `pod-security.kubernetes.io/*` labels do not say otherwise. Kubernetes' default,
    /// privileged, checks nothing.
    #[arg(long, default_value = "privileged")]
    pod_security_default: String,
    /// Namespaces PodSecurity admission does not check, comma-separated (empty for none).
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    pod_security_exempt_namespaces: Vec<String>,
    /// The `iss` of ServiceAccount tokens, and the base URL of the published OIDC discovery
    /// document (kube-apiserver's flag; kubeadm's value is the default).
    #[arg(long, default_value = skiff_control::apiserver::auth::service_account::signer::DEFAULT_ISSUER,
          value_parser = parse_issuer)]
    service_account_issuer: String,
    /// Audiences the API server accepts in tokens (comma-separated); the issuer when empty.
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// The longest lifetime a TokenRequest is given (e.g. 24h); longer requests are
    /// shortened to it. No limit when unset.
    #[arg(long, value_parser = parse_duration)]
    service_account_max_token_expiration: Option<Duration>,
    /// The most read-only requests in flight at once; beyond it requests get 429 with
    /// Retry-After (kube-apiserver's flag; watches and other long-running requests do not
    /// count). 0 for no limit.
    #[arg(long, default_value_t = skiff_control::apiserver::limits::DEFAULT_MAX_REQUESTS_INFLIGHT)]
    max_requests_inflight: usize,
    /// The most mutating requests (create, update, patch, delete) in flight at once. 0 for
    /// no limit.
    #[arg(long, default_value_t = skiff_control::apiserver::limits::DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT)]
    max_mutating_requests_inflight: usize,
    /// How long a request other than a watch may take before it gets 504 (a request's
    /// `?timeout=` may shorten it).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Run the API server only: no controllers or scheduler in this process (run them with
    /// `skiff-control controllers`, as many as you like, one active).
    #[arg(long)]
    no_controllers: bool,
    /// How long Events are kept after their last write (kube-apiserver's --event-ttl).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: Duration,
    /// How often the resource metrics (metrics.k8s.io, `kubectl top`) are scraped from every
    /// kubelet (metrics-server's --metric-resolution); between 1s and 10m.
    #[arg(long, default_value = "15s", value_parser = parse_metric_resolution)]
    metric_resolution: Duration,
    /// Serve metrics.k8s.io (`kubectl top`) from the kubelets' readings. `false` leaves the
    /// group to metrics-server (installed as in any cluster) or to nothing, as in a bare kind
    /// cluster.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    resource_metrics_api: bool,
    #[command(flatten)]
    controllers: ControllerArgs,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// The embedded redb file.
    Redb,
    /// An etcd cluster.
    Etcd,
}

/// The store backend the flags ask for.
fn store_backend(args: &Args) -> anyhow::Result<server::StoreBackend> {
    let etcd_flags = !args.etcd_servers.is_empty()
        || args.etcd_cafile.is_some()
        || args.etcd_certfile.is_some()
        || args.etcd_keyfile.is_some();
    match args.store {
        StoreKind::Redb => {
            anyhow::ensure!(
                !etcd_flags,
                "--etcd-servers and the --etcd-* TLS flags need --store etcd"
            );
            Ok(server::StoreBackend::Redb)
        }
        StoreKind::Etcd => {
            anyhow::ensure!(
                !args.etcd_servers.is_empty(),
                "--store etcd needs --etcd-servers URL[,URL...]"
            );
            for url in &args.etcd_servers {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "--etcd-servers: {url:?} is not an http:// or https:// URL"
                );
            }
            let mut config = skiff_control::store::EtcdConfig::new(args.etcd_servers.clone());
            config.prefix = args.etcd_prefix.clone();
            config.tls = skiff_control::store::EtcdTls {
                ca_file: args.etcd_cafile.clone(),
                cert_file: args.etcd_certfile.clone(),
                key_file: args.etcd_keyfile.clone(),
            };
            config.compaction_interval =
                (!args.etcd_compaction_interval.is_zero()).then_some(args.etcd_compaction_interval);
            Ok(server::StoreBackend::Etcd(config))
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run only the controllers and the scheduler, against a remote API server, under leader
    /// election (several instances may run; one is active).
    Controllers {
        /// Kubeconfig of the API server (admin credentials).
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        controllers: ControllerArgs,
    },
    /// Write a kubeconfig for a user: a client certificate signed offline by the cluster CA in
    /// `--data-dir` (CN = the user, O = each group), as `kubeadm kubeconfig user` does. The user
    /// may do what RBAC bindings for the name or groups grant, e.g.
    /// `kubectl create rolebinding alice-view --clusterrole=view --user=alice -n dev`.
    User {
        /// The user name (the certificate's CommonName).
        name: String,
        /// The control plane's data directory (it holds pki/ca.key).
        #[arg(long)]
        data_dir: PathBuf,
        /// A group of the user (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// The API server's URL as the user reaches it (https://HOST:PORT).
        #[arg(long)]
        server: String,
        /// Where to write the kubeconfig (mode 0600).
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Manage bootstrap tokens, with which nodes join (`kubeadm token`): a token
    /// `<id>.<secret>` authenticates as `system:bootstrap:<id>` and may only ask for a node
    /// client certificate, which is then approved and signed automatically.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Back up and restore the store (`etcdctl snapshot save`, `etcdutl snapshot restore`).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Save a consistent snapshot of the running server's store to FILE (mode 0600: it holds
    /// every Secret), through the API as admin; checked before it is kept.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
        #[command(flatten)]
        api: AdminApi,
    },
    /// Create the store of a control plane that is not running from a snapshot. Its revision
    /// continues far above every revision issued before, so clients relist rather than miss
    /// changes. The data directory must hold no store yet.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The control plane's data directory (the store becomes DIR/store.redb).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token and print it.
    Create {
        #[command(flatten)]
        api: AdminApi,
        /// How long the token works (e.g. 24h, 30m); 0 for ever.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// What it is for (shown by `token list`).
        #[arg(long)]
        description: Option<String>,
        /// Extra groups (system:bootstrappers:...), comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Usages, comma-separated: authentication (API requests), signing (cluster-info).
        #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
        usages: Vec<String>,
        /// Print the skiff-agent command that joins a node with the token.
        #[arg(long)]
        print_join_command: bool,
    },
    /// List the tokens.
    List {
        #[command(flatten)]
        api: AdminApi,
    },
    /// Delete a token (by id or whole token).
    Delete {
        #[command(flatten)]
        api: AdminApi,
        /// The token id (or the whole token).
        id: String,
    },
}

/// How a command reaches the API server as admin.
#[derive(Debug, Clone, clap::Args)]
struct AdminApi {
    /// An admin kubeconfig (preferred over --data-dir).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The control plane's data directory (its pki/ holds the admin credentials).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API server's URL as nodes reach it (and this command, with --data-dir).
    #[arg(long)]
    server: Option<String>,
}

impl AdminApi {
    /// A client, and the URL it reaches the server at.
    async fn client(&self) -> anyhow::Result<(kube::Client, String)> {
        let yaml = match (&self.kubeconfig, &self.data_dir) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            (None, Some(dir)) => {
                let server = self.server.as_deref().unwrap_or(DEFAULT_SERVER);
                skiff_control::pki::admin_kubeconfig_from_dir(dir, server)
                    .with_context(|| format!("the admin credentials in {}", dir.display()))?
            }
            (None, None) => anyhow::bail!("give --kubeconfig or --data-dir"),
        };
        let config = kube::config::Kubeconfig::from_yaml(&yaml)?;
        let url = config
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .unwrap_or_default();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = server::loopback_client(&yaml).await?;
        Ok((client, self.server.clone().unwrap_or(url)))
    }
}

/// `--cluster-dns`: an address inside the Service range, `none`, or by default its tenth.
fn cluster_dns(
    flag: Option<&str>,
    services: Ipv4Cidr,
) -> anyhow::Result<Option<std::net::Ipv4Addr>> {
    let ip = match flag {
        Some(f) if f.eq_ignore_ascii_case("none") => return Ok(None),
        Some(f) => f
            .parse()
            .map_err(|_| anyhow::anyhow!("--cluster-dns {f:?}: not an IPv4 address (or `none`)"))?,
        None => services.nth(10),
    };
    anyhow::ensure!(
        services.contains(ip) && ip != services.nth(0) && ip != services.nth(1),
        "--cluster-dns {ip} must be an address of --service-cidr {services} other than its \
         first two (the network and the kubernetes Service)"
    );
    Ok(Some(ip))
}

/// Where `skiff-control token --data-dir` looks for the API server by default.
const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";

/// Flags of the controllers, in both modes.
#[derive(Debug, Clone, clap::Args)]
struct ControllerArgs {
    /// The IPv4 range pod addresses come from; every Node gets a block of it as its podCIDR.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: Ipv4Cidr,
    /// Prefix length of each Node's podCIDR block.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a Node's heartbeat may stand still before it counts as unreachable
    /// (e.g. 40s, 500ms, 2m).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// How often the node lifecycle controller checks Nodes and pods.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_monitor_period: Duration,
    /// Nodes per second whose pods may be evicted in a healthy zone.
    #[arg(long, default_value_t = 0.1, value_parser = parse_rate)]
    node_eviction_rate: f64,
    /// Nodes per second whose pods may be evicted in a partially disrupted zone larger than
    /// --large-cluster-size-threshold (smaller ones stop evicting).
    #[arg(long, default_value_t = 0.01, value_parser = parse_rate)]
    secondary_node_eviction_rate: f64,
    /// The fraction of not-Ready Nodes (at least 3) that makes a zone partially disrupted.
    #[arg(long, default_value_t = 0.55, value_parser = parse_fraction)]
    unhealthy_zone_threshold: f64,
    /// Zones with more Nodes than this keep evicting, slowly, when partially disrupted.
    #[arg(long, default_value_t = 50)]
    large_cluster_size_threshold: u32,
    /// Leader election Lease duration.
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// The leader steps down after failing to renew for this long.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// PEM CA certificate that signs approved CertificateSigningRequests of the
    /// kubernetes.io signers (kube-controller-manager's flag). In the API server's process
    /// the cluster CA does by default; `skiff-control controllers` signs nothing without it.
    #[arg(long, requires = "cluster_signing_key_file")]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The PKCS#8 PEM key of --cluster-signing-cert-file.
    #[arg(long, requires = "cluster_signing_cert_file")]
    cluster_signing_key_file: Option<PathBuf>,
    /// The longest lifetime of a signed certificate (a CSR's expirationSeconds may ask for
    /// less, not for more).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    cluster_signing_duration: Duration,
    /// Approve a node's kubelet-serving CSR without an admin when the node itself asks for
    /// names its Node object reports (Kubernetes never does; skiff's agents need serving
    /// certificates with no admin around). --approve-kubelet-serving=false to approve them by
    /// hand.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    approve_kubelet_serving: bool,
    /// Addresses for LoadBalancer Services, `A-B` or a CIDR (repeatable); without any, a
    /// LoadBalancer Service gets the Ready Nodes' InternalIPs, as k3s's ServiceLB does.
    #[arg(long = "loadbalancer-ip-pool", value_name = "RANGE", value_parser = service_lb::parse_pool)]
    loadbalancer_ip_pools: Vec<std::ops::RangeInclusive<std::net::Ipv4Addr>>,
}

impl ControllerArgs {
    fn settings(&self) -> anyhow::Result<manager::Settings> {
        let pod_cidrs = pod_cidr::Config {
            cluster_cidr: self.cluster_cidr,
            node_mask: self.node_cidr_mask_size,
        };
        pod_cidr::Blocks::new(pod_cidrs)?;
        anyhow::ensure!(
            self.leader_elect_renew_deadline < self.leader_elect_lease_duration,
            "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration"
        );
        Ok(manager::Settings {
            pod_cidrs,
            node_lifecycle: node_lifecycle::Config {
                grace_period: self.node_monitor_grace_period,
                monitor_period: self.node_monitor_period,
                eviction_rate: self.node_eviction_rate,
                secondary_eviction_rate: self.secondary_node_eviction_rate,
                unhealthy_zone_threshold: self.unhealthy_zone_threshold,
                large_cluster_threshold: self.large_cluster_size_threshold as usize,
            },
            election: leader::Config {
                lease_duration: self.leader_elect_lease_duration,
                renew_deadline: self.leader_elect_renew_deadline,
                retry_period: self.leader_elect_retry_period,
                ..leader::Config::default()
            },
            root_ca: None,
            csr_signing: csr_signing::Config {
                ca: self.signing_ca()?,
                duration: self.cluster_signing_duration,
            },
            csr_approving: csr_approving::Config {
                approve_kubelet_serving: self.approve_kubelet_serving,
            },
            health: manager::supervise::Health::default(),
            load_balancers: service_lb::Config {
                pools: self.loadbalancer_ip_pools.clone(),
            },
        })
    }

    fn signing_ca(&self) -> anyhow::Result<Option<csr_signing::Ca>> {
        let (Some(cert), Some(key)) = (
            &self.cluster_signing_cert_file,
            &self.cluster_signing_key_file,
        ) else {
            return Ok(None);
        };
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca = csr_signing::Ca {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        // Refuse a wrong pair at start rather than at the first CSR.
        skiff_control::certificates::authority::Authority::from_pem(&ca.cert_pem, &ca.key_pem)?;
        Ok(Some(ca))
    }
}

fn parse_cidr(s: &str) -> Result<Ipv4Cidr, CidrError> {
    s.parse()
}

/// `40s`, `500ms`, `2m`, `1h`, or plain seconds.
/// A rate in events per second: finite and not negative.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate (a number of at least 0)")),
    }
}

/// A fraction between 0 and 1.
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 40s, 500ms or 2m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or(format!("{s:?} is too long"))?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or(format!("{s:?} is too long"))?),
        _ => return Err(format!("{s:?} is not a duration like 40s, 500ms or 2m")),
    })
}

fn parse_metric_resolution(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
        return Err(format!("{s:?}: the resolution must be between 1s and 10m"));
    }
    Ok(d)
}

/// The CA certificate (PEM) of a kubeconfig's current cluster, inline or from its file.
fn root_ca_of(yaml: &str) -> Option<String> {
    use base64::Engine as _;
    let config = kube::config::Kubeconfig::from_yaml(yaml).ok()?;
    let context = config.current_context.as_deref()?;
    let cluster_name = config
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .clone();
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)?
        .cluster
        .as_ref()?;
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        return String::from_utf8(pem).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority.as_ref()?).ok()
}

/// A token issuer: an https URL, or a plain name without a colon, as kube-apiserver allows.
fn parse_issuer(s: &str) -> Result<String, String> {
    let ok = if s.contains(':') {
        s.strip_prefix("https://")
            .is_some_and(|host| !host.is_empty() && !host.contains(['?', '#']))
    } else {
        !s.is_empty()
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an issuer: an https:// URL without query or fragment, or a name without ':'"
        ))
    }
}

/// The `--authorization-mode` chain (one flag value holding a list, as kube-apiserver's).
#[derive(Debug, Clone)]
struct Modes(Vec<skiff_control::apiserver::auth::Mode>);

fn parse_modes(s: &str) -> Result<Modes, String> {
    skiff_control::apiserver::auth::Mode::parse_list(s)
        .map(Modes)
        .map_err(|e| e.to_string())
}

/// jemalloc, configured in [`skiff_control::memory`].
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol (its `malloc_conf`, prefixed as tikv's build of
/// jemalloc prefixes every symbol).
#[allow(
    non_upper_case_globals,
    unsafe_code,
    reason = "jemalloc looks this symbol up by name"
)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 70] = skiff_control::memory::MALLOC_CONF;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    if let Some(Command::User {
        name,
        data_dir,
        groups,
        days,
        server,
        kubeconfig,
    }) = &args.command
    {
        let yaml = skiff_control::pki::user_kubeconfig(data_dir, server, name, groups, *days)
            .with_context(|| {
                format!(
                    "a kubeconfig for {name:?} from the cluster CA in {}",
                    data_dir.display()
                )
            })?;
        skiff_control::pki::write_secret_file(kubeconfig, yaml.as_bytes())?;
        println!(
            "wrote {} for user {name:?}{}; it grants nothing until RBAC does, e.g.\n  \
             kubectl create rolebinding {name}-view --clusterrole=view --user={name} -n NAMESPACE",
            kubeconfig.display(),
            if groups.is_empty() {
                String::new()
            } else {
                format!(" in groups {groups:?}")
            }
        );
        return Ok(());
    }
    if let Some(Command::Token { action }) = &args.command {
        return token_command(action).await;
    }
    if let Some(Command::Snapshot { action }) = &args.command {
        return snapshot_command(action).await;
    }
    if let Some(Command::Controllers {
        kubeconfig,
        controllers: flags,
    }) = args.command
    {
        let mut settings = flags.settings()?;
        let yaml = std::fs::read_to_string(&kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        // The CA the kubeconfig trusts for the API server is the one pods need.
        settings.root_ca = root_ca_of(&yaml);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = server::loopback_client(&yaml)
            .await
            .with_context(|| format!("building a client from {}", kubeconfig.display()))?;
        tracing::info!(identity = %settings.election.identity, "skiff-control controllers starting");
        let manager = tokio::spawn(manager::run(
            skiff_control::client::Context::new(client, shutdown.clone()),
            settings,
        ))
        .await;
        // The manager only returns at shutdown; anything else must be seen by whatever
        // restarts this process (a panic that escaped every controller's own guard).
        if !shutdown.is_cancelled() {
            let why = match manager {
                Ok(()) => "it returned".to_owned(),
                Err(e) => e.to_string(),
            };
            anyhow::bail!("the controller manager stopped before shutdown: {why}");
        }
        return Ok(());
    }
    let settings = args.controllers.settings()?;
    let store = store_backend(&args)?;
    server::run(
        Config {
            data_dir: args.data_dir.context("--data-dir is required")?,
            store,
            listen: args.listen,
            kubeconfig: args.write_kubeconfig,
            tls_sans: args.tls_san,
            service_cidr: args.service_cidr,
            node_port_range: args.service_node_port_range,
            cluster_dns: cluster_dns(args.cluster_dns.as_deref(), args.service_cidr)?,
            controllers: (!args.no_controllers).then_some(settings),
            authorization_modes: args.authorization_mode.0,
            disabled_admission_plugins: args.disable_admission_plugins,
            pod_security: skiff_control::apiserver::admission::pod_security::Config::from_flags(
                &args.pod_security_default,
                &args.pod_security_exempt_namespaces,
            )?,
            service_accounts: skiff_control::apiserver::auth::service_account::SignerConfig {
                issuer: args.service_account_issuer,
                audiences: args.api_audiences,
                max_expiration_seconds: args
                    .service_account_max_token_expiration
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            },
            default_toleration_seconds: (
                args.default_not_ready_toleration_seconds,
                args.default_unreachable_toleration_seconds,
            ),
            overload: (
                args.max_requests_inflight,
                args.max_mutating_requests_inflight,
                args.request_timeout,
            ),
            event_ttl: args.event_ttl,
            metric_resolution: args.resource_metrics_api.then_some(args.metric_resolution),
        },
        shutdown,
    )
    .await
}

/// `skiff-control snapshot ...`.
async fn snapshot_command(action: &SnapshotAction) -> anyhow::Result<()> {
    match action {
        SnapshotAction::Save { file, api } => {
            let (client, _) = api.client().await?;
            let request =
                http::Request::get(skiff_control::apiserver::snapshot::PATH).body(Vec::new())?;
            let body = client
                .request_stream(request)
                .await
                .context("asking the API server for a snapshot")?;
            let snapshot = skiff_control::snapshot_file::save(file, body).await?;
            println!(
                "saved a snapshot at revision {} ({} objects) to {}",
                snapshot.0,
                snapshot.1,
                file.display()
            );
            Ok(())
        }
        SnapshotAction::Restore { file, data_dir } => {
            let (old, new, objects) = skiff_control::snapshot_file::restore(file, data_dir)?;
            println!(
                "restored {objects} objects into {}: the snapshot's revision {old} continues at \
                 {new}; start skiff-control with --data-dir {}",
                data_dir.join("store.redb").display(),
                data_dir.display()
            );
            Ok(())
        }
    }
}

/// `skiff-control token ...`.
async fn token_command(action: &TokenAction) -> anyhow::Result<()> {
    match action {
        TokenAction::Create {
            api,
            ttl,
            description,
            groups,
            usages,
            print_join_command,
        } => {
            let (client, server) = api.client().await?;
            for usage in usages {
                anyhow::ensure!(
                    ["authentication", "signing"].contains(&usage.as_str()),
                    "unknown usage {usage:?}: authentication or signing"
                );
            }
            let expiration = if ttl.is_zero() {
                None
            } else {
                Some(jiff::Timestamp::now() + jiff::SignedDuration::try_from(*ttl)?)
            };
            let options = token::Options {
                expiration,
                authentication: usages.iter().any(|u| u == "authentication"),
                signing: usages.iter().any(|u| u == "signing"),
                description: description.clone(),
                extra_groups: groups.clone(),
            };
            let created = skiff_control::token_admin::create(&client, &options).await?;
            if *print_join_command {
                println!("skiff-agent --server {server} --token {}", created.bearer());
            } else {
                println!("{}", created.bearer());
            }
        }
        TokenAction::List { api } => {
            let (client, _) = api.client().await?;
            let now = jiff::Timestamp::now();
            let rows: Vec<[String; 6]> = skiff_control::token_admin::list(&client)
                .await?
                .into_iter()
                .map(|t| {
                    let (ttl, expires) = match t.expires {
                        Some(at) => (
                            skiff_control::apiserver::table::human_duration(
                                at.as_second() - now.as_second(),
                            ),
                            at.to_string(),
                        ),
                        None => ("<forever>".into(), "<never>".into()),
                    };
                    let none = |s: String| if s.is_empty() { "<none>".into() } else { s };
                    [
                        t.token,
                        ttl,
                        expires,
                        t.usages,
                        none(t.description),
                        none(t.extra_groups),
                    ]
                })
                .collect();
            print_table(
                [
                    "TOKEN",
                    "TTL",
                    "EXPIRES",
                    "USAGES",
                    "DESCRIPTION",
                    "EXTRA GROUPS",
                ],
                &rows,
            );
        }
        TokenAction::Delete { api, id } => {
            let (client, _) = api.client().await?;
            skiff_control::token_admin::delete(&client, id).await?;
            println!(
                "bootstrap token {:?} deleted",
                id.split('.').next().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Prints rows under a header, columns padded as kubectl does.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dns_must_be_a_free_address_of_the_service_range() {
        let services: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(
            cluster_dns(None, services).unwrap(),
            Some("10.96.0.10".parse().unwrap())
        );
        assert_eq!(cluster_dns(Some("none"), services).unwrap(), None);
        for bad in ["10.96.0.1", "10.96.0.0", "192.0.2.10", "ten"] {
            assert!(cluster_dns(Some(bad), services).is_err(), "{bad}");
        }
    }

    fn backend(flags: &[&str]) -> anyhow::Result<server::StoreBackend> {
        let args = Args::try_parse_from(
            ["skiff-control", "--data-dir", "/tmp/x"]
                .iter()
                .chain(flags),
        )?;
        store_backend(&args)
    }

    #[test]
    fn the_store_flags_choose_and_configure_the_backend() {
        assert!(matches!(backend(&[]).unwrap(), server::StoreBackend::Redb));
        let server::StoreBackend::Etcd(etcd) = backend(&[
            "--store=etcd",
            "--etcd-servers=http://10.0.0.1:2379,http://10.0.0.2:2379",
            "--etcd-compaction-interval=0",
        ])
        .unwrap() else {
            panic!("--store etcd");
        };
        assert_eq!(
            etcd.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(etcd.prefix, "/registry/skiff/");
        assert_eq!(etcd.compaction_interval, None);
        let server::StoreBackend::Etcd(tls) = backend(&[
            "--store=etcd",
            "--etcd-servers=https://e:2379",
            "--etcd-cafile=ca.pem",
            "--etcd-prefix=/other/",
        ])
        .unwrap() else {
            panic!("--store etcd");
        };
        assert_eq!(tls.tls.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.prefix, "/other/");
        assert_eq!(tls.compaction_interval, Some(Duration::from_secs(300)));
        for bad in [
            &["--store=etcd"][..],
            &["--etcd-servers=http://e:2379"],
            &["--store=etcd", "--etcd-servers=e:2379"],
            &["--store=sqlite"],
        ] {
            assert!(backend(bad).is_err(), "{bad:?}");
        }
    }
}
