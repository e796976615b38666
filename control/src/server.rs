//! Wiring: store, credentials, API state, controllers and the HTTPS listener.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{self, ApiState};
use crate::store::{EtcdConfig, EtcdStore, RedbStore, SharedStore};
use crate::{controllers, pki};
use skiff_k8s::cidr::Ipv4Cidr;

/// Where the server keeps its objects (`--store`).
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// The embedded redb file in the data directory (the default: one control-plane host).
    Redb,
    /// An etcd cluster (one API server per key prefix until the allocators move into the
    /// store).
    Etcd(EtcdConfig),
}

/// How the server is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database (for redb) and credentials live.
    pub data_dir: PathBuf,
    /// The store backend.
    pub store: StoreBackend,
    /// The HTTPS listen address.
    pub listen: SocketAddr,
    /// Where to write the admin kubeconfig, if anywhere.
    pub kubeconfig: Option<PathBuf>,
    /// Extra names/IPs for the serving certificate.
    pub tls_sans: Vec<String>,
    /// The range Service ClusterIPs come from (the first address is the `kubernetes` Service's).
    pub service_cidr: Ipv4Cidr,
    /// The range NodePorts come from.
    pub node_port_range: RangeInclusive<u16>,
    /// The cluster DNS Service's address (`kube-dns`), `None` for no cluster DNS.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// Settings of the controllers and the scheduler; `None` to run the API server alone
    /// (controllers then run as `skiff-control controllers` elsewhere).
    pub controllers: Option<crate::manager::Settings>,
    /// tolerationSeconds of the default not-ready and unreachable tolerations of pods.
    pub default_toleration_seconds: (i64, i64),
    /// The authorization chain (`--authorization-mode`).
    pub authorization_modes: Vec<crate::apiserver::auth::Mode>,
    /// Admission plugins turned off (`--disable-admission-plugins`).
    pub disabled_admission_plugins: Vec<String>,
    /// PodSecurity admission's default policy and exempt namespaces.
    pub pod_security: crate::apiserver::admission::pod_security::Config,
    /// The ServiceAccount token issuer, audiences and longest lifetime.
    pub service_accounts: crate::apiserver::auth::service_account::SignerConfig,
    /// The most read-only and mutating requests in flight (0: no limit) and the request
    /// timeout.
    pub overload: (usize, usize, Duration),
    /// How long Events are kept after their last write (`--event-ttl`).
    pub event_ttl: Duration,
    /// How often the kubelets' resource metrics are scraped (`--metric-resolution`); `None`:
    /// metrics.k8s.io is not served (`--resource-metrics-api=false`).
    pub metric_resolution: Option<Duration>,
}

/// How long in-flight requests get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// The URL clients should use for `listen` (an unspecified address means loopback locally).
pub fn client_url(listen: SocketAddr) -> String {
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("https://{host}:{}", listen.port())
}

/// The URL nodes are told to reach the API server at (`cluster-info`): the listen address, or
/// for a wildcard listen address the first `--tls-san` (a name the serving certificate holds
/// that clients elsewhere can use), loopback when there is none.
pub fn advertised_url(listen: SocketAddr, tls_sans: &[String]) -> String {
    match tls_sans.first() {
        Some(san) if listen.ip().is_unspecified() => {
            let host = if san.contains(':') {
                format!("[{san}]")
            } else {
                san.clone()
            };
            format!("https://{host}:{}", listen.port())
        }
        _ => client_url(listen),
    }
}

/// Opens the store in `data_dir` (mode 0600: it holds every Secret). A store that cannot be
/// read is an error that says how to get the cluster back, and the server does not start:
/// serving from a damaged store could lose more.
fn open_store(data_dir: &std::path::Path) -> anyhow::Result<RedbStore> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = data_dir.join("store.redb");
    let store = match RedbStore::open(&path) {
        Ok(store) => store,
        Err(e @ crate::store::StoreError::InUse(_)) => {
            anyhow::bail!(
                "cannot open the store: {e} (is another skiff-control running with --data-dir {}?)",
                data_dir.display()
            )
        }
        Err(e) => anyhow::bail!(
            "cannot open the store {}: {e}\n\
             If it is damaged, restore the newest snapshot (`skiff-control snapshot save`) into a \
             new store: move {} aside, then run\n  \
             skiff-control snapshot restore SNAPSHOT_FILE --data-dir {}",
            path.display(),
            path.display(),
            data_dir.display()
        ),
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(store)
}

/// Opens the configured store. An etcd that cannot be reached within its startup timeout is
/// an error naming the endpoints: the server does not start without its store.
async fn open_backend(config: &Config) -> anyhow::Result<SharedStore> {
    match &config.store {
        StoreBackend::Redb => Ok(Arc::new(open_store(&config.data_dir)?)),
        StoreBackend::Etcd(etcd) => {
            let store = EtcdStore::connect(etcd.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the etcd store: {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// Runs the control plane until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // The store holds every Secret, pki/ every key: only the server's user may look inside.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", config.data_dir.display()))?;
    }
    let store = open_backend(&config).await?;
    let mut sans = config.tls_sans.clone();
    if !config.listen.ip().is_unspecified() {
        sans.push(config.listen.ip().to_string());
    }
    // Pods reach the API server as https://<kubernetes Service address>.
    sans.push(config.service_cidr.nth(1).to_string());
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(host.trim().to_owned());
    }
    let creds = pki::load_or_create(&config.data_dir, &sans).context("setting up credentials")?;
    if let Some(path) = &config.kubeconfig {
        pki::write_kubeconfig(path, &client_url(config.listen), &creds)
            .context("writing the kubeconfig")?;
        tracing::info!(path = %path.display(), "wrote admin kubeconfig");
    }

    let tokens = apiserver::auth::service_account::TokenSigner::new(
        &creds.service_account_key_pem,
        config.service_accounts.clone(),
    )
    .map_err(|e| anyhow::anyhow!("the ServiceAccount signing key pki/sa.key: {e}"))?;
    let (state, namespace_queue) = ApiState::with_auth(
        store,
        creds.token.clone(),
        shutdown.clone(),
        config.authorization_modes.clone(),
        tokens,
    );
    state
        .ensure_system_namespaces()
        .await
        .map_err(|e| anyhow::anyhow!("creating system namespaces: {e}"))?;
    apiserver::auth::rbac::bootstrap::ensure(&state)
        .await
        .map_err(|e| anyhow::anyhow!("writing the bootstrap RBAC policy: {e}"))?;
    let kubelet = apiserver::kubelet_client::KubeletClient::new(
        &creds.ca_pem,
        &creds.kubelet_client_cert_pem,
        &creds.kubelet_client_key_pem,
    )
    .map_err(|e| anyhow::anyhow!("the kubelet client credentials: {e}"))?;
    let _ = state.kubelet.set(kubelet);
    let (not_ready, unreachable) = config.default_toleration_seconds;
    state.default_tolerations.configure(not_ready, unreachable);
    let (max_inflight, max_mutating, request_timeout) = config.overload;
    state
        .overload
        .configure(max_inflight, max_mutating, request_timeout);
    for plugin in &config.disabled_admission_plugins {
        state
            .admission
            .disable(plugin)
            .map_err(|e| anyhow::anyhow!("--disable-admission-plugins: {e}"))?;
    }
    state
        .admission
        .pod_security
        .configure(config.pod_security.clone());
    state
        .services
        .configure(config.service_cidr, config.node_port_range.clone());
    state
        .restore_service_allocations()
        .await
        .map_err(|e| anyhow::anyhow!("reading the allocated Service addresses: {e}"))?;
    state
        .ensure_kubernetes_service(config.listen.port())
        .await
        .map_err(|e| anyhow::anyhow!("creating the kubernetes Service: {e}"))?;
    state
        .ensure_default_ingress_class()
        .await
        .map_err(|e| anyhow::anyhow!("creating the skiff IngressClass: {e}"))?;
    if let Some(ip) = config.cluster_dns {
        state
            .ensure_cluster_dns_service(ip)
            .await
            .map_err(|e| anyhow::anyhow!("creating the kube-dns Service at {ip}: {e}"))?;
    }
    // What a node joining with only a bootstrap token reads to find and trust this server.
    let advertised = advertised_url(config.listen, &config.tls_sans);
    crate::bootstrap::cluster_info::publish(&state, &advertised, &creds.ca_pem)
        .await
        .map_err(|e| anyhow::anyhow!("writing kube-public/cluster-info: {e}"))?;
    match config.listen.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => state
            .ensure_kubernetes_endpoints(ip, config.listen.port())
            .await
            .map_err(|e| anyhow::anyhow!("writing the kubernetes Service's endpoints: {e}"))?,
        ip => tracing::info!(
            %ip,
            "the kubernetes Service gets no endpoints: pods cannot reach a loopback or \
             wildcard listen address; listen on the node's address for that"
        ),
    }
    // Custom resources are served from the first request on, then follow their definitions.
    apiserver::apiextensions::controller::start(&state)
        .await
        .map_err(|e| anyhow::anyhow!("serving the custom resources: {e}"))?;
    let namespaces = tokio::spawn(controllers::namespace::run(state.clone(), namespace_queue));
    tokio::spawn(apiserver::auth::rbac::aggregation::run(state.clone()));
    tokio::spawn(controllers::event_ttl::run(state.clone(), config.event_ttl));
    match config.metric_resolution {
        Some(resolution) => {
            tokio::spawn(apiserver::resource_metrics::run(state.clone(), resolution));
        }
        None => {
            for plural in ["nodes", "pods"] {
                state
                    .registry
                    .unregister("metrics.k8s.io", "v1beta1", plural);
            }
        }
    }

    let creds_for_client = creds.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tls, client_verifier) = apiserver::auth::x509::server_config(
        &creds.server_cert_pem,
        &creds.server_key_pem,
        &creds.ca_pem,
    )
    .map_err(|e| anyhow::anyhow!("loading the serving certificate: {e}"))?;
    let handle = axum_server::Handle::new();
    let app = apiserver::app(state.clone());
    let controllers = tokio::spawn({
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        // The controllers and the scheduler run under their own identity, not as the admin.
        let kubeconfig =
            pki::controller_manager_kubeconfig(&client_url(config.listen), &creds_for_client);
        let settings = config.controllers.clone().map(|mut s| {
            s.root_ca
                .get_or_insert_with(|| creds_for_client.ca_pem.clone());
            // In process, the cluster CA signs approved CSRs unless other files were given.
            s.csr_signing
                .ca
                .get_or_insert_with(|| crate::controllers::csr_signing::Ca {
                    cert_pem: creds_for_client.ca_pem.clone(),
                    key_pem: creds_for_client.ca_key_pem.clone(),
                });
            s
        });
        if let Some(health) = settings.as_ref().map(|s| s.health.clone()) {
            state
                .readiness
                .add("controller-manager", move || health.check());
        }
        async move {
            // Client-side controllers talk to this server over HTTPS, so wait until it listens.
            let Some(settings) = settings else {
                return;
            };
            if handle.listening().await.is_none() {
                return;
            }
            match loopback_client(&kubeconfig).await {
                Ok(client) => {
                    let ctx = crate::client::Context::new(client, shutdown.clone());
                    let health = settings.health.clone();
                    let outcome = tokio::spawn(crate::manager::run(ctx, settings)).await;
                    // Only shutdown ends the manager; otherwise /readyz must say so.
                    if !shutdown.is_cancelled() {
                        let why = match outcome {
                            Ok(()) => "it returned".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        tracing::error!(reason = %why, "the controller manager stopped");
                        health.set_stopped(&why);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "controllers cannot reach the API server");
                    shutdown.cancel();
                }
            }
        }
    });
    tokio::spawn({
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(GRACE));
        }
    });
    let backend = match &config.store {
        StoreBackend::Redb => "redb".to_owned(),
        StoreBackend::Etcd(etcd) => format!("etcd {}", etcd.endpoints.join(",")),
    };
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), store = %backend, "skiff-control serving");
    // TLS with NODELAY, and each connection's client certificate judged once.
    let acceptor = apiserver::auth::x509::PeerAcceptor::new(tls, client_verifier);
    axum_server::bind(config.listen)
        .acceptor(acceptor)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .with_context(|| format!("serving on {}", config.listen))?;
    shutdown.cancel();
    let _ = namespaces.await;
    let _ = controllers.await;
    Ok(())
}

/// A `kube::Client` for this server from its admin kubeconfig.
pub async fn loopback_client(kubeconfig: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_told_an_address_they_can_reach() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let sans = ["cp.example".to_owned()];
        assert_eq!(
            advertised_url(at("10.0.0.1:6443"), &sans),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            advertised_url(at("0.0.0.0:6443"), &sans),
            "https://cp.example:6443"
        );
        assert_eq!(
            advertised_url(at("[::]:6443"), &["fd00::1".to_owned()]),
            "https://[fd00::1]:6443"
        );
        assert_eq!(
            advertised_url(at("0.0.0.0:6443"), &[]),
            "https://127.0.0.1:6443"
        );
    }
}
