//! The node's built-in Ingress controller: a reverse proxy on the node's ports 80 and 443
//! (`--ingress-http-port`, `--ingress-https-port`; 0 turns one off) that routes the Ingresses
//! of skiff's IngressClasses straight to ready pod addresses.
//!
//! - [`routes`]: the route table (hosts, paths, default backend, which Services' endpoints),
//!   pure and unit-tested;
//! - [`tls`]: certificates by SNI from the Ingresses' TLS Secrets, a self-signed default;
//! - [`proxy`]: the HTTP/1.1 and HTTP/2 server (hyper-util) and the pooled client to the pods;
//! - here: the watches and the loop that rebuilds the table on every change.
//!
//! The Services and EndpointSlices come from the service proxy's watch caches
//! ([`crate::proxy::api::Watched`]): a node keeps one watch of each. The Ingresses and
//! IngressClasses get a watch of their own; a TLS Secret is read by name (the Node authorizer
//! lets a node read the Secrets Ingresses name, no others) when an Ingress first names it and
//! again every [`SECRET_REFRESH`]. While it listens, the agent marks its Node with
//! `skiff_k8s::ingress::LISTENING_ANNOTATION`; the control plane's Ingress status writer lists such nodes'
//! addresses in each Ingress's `status.loadBalancer`.
//!
//! A route that cannot be served (a missing Service or port, no ready endpoints) answers 503
//! and a Warning Event on its Ingress says why; a TLS Secret that is not a usable certificate
//! leaves its hosts on the default certificate, with an Event. Each node's proxy tells once
//! per reason.

pub mod proxy;
pub mod routes;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::kubelet::events::Events;
use crate::proxy::api::Watched;
use routes::RouteTable;
use skiff_k8s::ingress::LISTENING_ANNOTATION;

/// How often the TLS Secrets in use are read again (a renewed certificate is served within
/// this time).
pub const SECRET_REFRESH: Duration = Duration::from_secs(30);

/// The Ingress proxy's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// The port the Ingress proxy serves plain HTTP on, on every node address (0: none).
    #[arg(long = "ingress-http-port", default_value_t = 80)]
    pub http_port: u16,
    /// The port it serves HTTPS on, terminating TLS with the Ingresses' certificates (0: none).
    #[arg(long = "ingress-https-port", default_value_t = 443)]
    pub https_port: u16,
}

impl IngressArgs {
    /// Whether the proxy runs at all.
    pub fn enabled(&self) -> bool {
        self.http_port != 0 || self.https_port != 0
    }

    fn annotation(&self) -> String {
        let mut parts = Vec::new();
        if self.http_port != 0 {
            parts.push(format!("http={}", self.http_port));
        }
        if self.https_port != 0 {
            parts.push(format!("https={}", self.https_port));
        }
        parts.join(",")
    }
}

/// Errors that stop the Ingress proxy (the rest of the agent goes on).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// A port could not be listened on.
    #[error("the Ingress proxy cannot listen on port {port}: {source} (--ingress-http-port / --ingress-https-port 0 turn it off)")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The default certificate could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The TLS configuration was refused.
    #[error("the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The Ingress watches ended before listing.
    #[error("watching Ingresses: {0}")]
    Watch(String),
}

/// Marks (or, with `None`, unmarks) this node as running the Ingress proxy.
async fn annotate(client: &kube::Client, node: &str, value: Option<String>) {
    let patch = json!({"metadata": {"annotations": {LISTENING_ANNOTATION: value}}});
    let nodes: Api<Node> = Api::all(client.clone());
    if let Err(e) = nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "marking the Node's Ingress proxy failed");
    }
}

async fn listen(port: u16) -> Result<Option<TcpListener>, IngressError> {
    if port == 0 {
        return Ok(None);
    }
    TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .map(Some)
        .map_err(|source| IngressError::Bind { port, source })
}

/// A watch cache of `K` and a counter bumped after each change.
fn watch_all<K>(client: &kube::Client) -> (reflector::Store<K>, tokio::sync::watch::Receiver<u64>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let (bump, changes) = tokio::sync::watch::channel(0u64);
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if matches!(
                event,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
            ) {
                bump.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    });
    (reader, changes)
}

fn reference(ingress: &Ingress) -> ObjectReference {
    ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("Ingress".into()),
        name: ingress.metadata.name.clone(),
        namespace: ingress.metadata.namespace.clone(),
        uid: ingress.metadata.uid.clone(),
        resource_version: ingress.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Runs the proxy until `shutdown`. `watched` are the service proxy's caches.
pub async fn run(
    client: kube::Client,
    node: String,
    events: Events,
    watched: Watched,
    args: IngressArgs,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    if !args.enabled() {
        annotate(&client, &node, None).await;
        return Ok(());
    }
    let (http, https) = (
        listen(args.http_port).await?,
        listen(args.https_port).await?,
    );
    let certificates = Arc::new(tls::Certificates::new(tls::default_certificate()?));
    let proxy = Arc::new(proxy::Proxy::new());
    if let Some(listener) = http {
        tokio::spawn(proxy::serve(
            proxy.clone(),
            listener,
            None,
            shutdown.clone(),
        ));
    }
    if let Some(listener) = https {
        let acceptor = tls::acceptor(certificates.clone())?;
        tokio::spawn(proxy::serve(
            proxy.clone(),
            listener,
            Some(acceptor),
            shutdown.clone(),
        ));
    }
    let (ingresses, mut ingress_changes) = watch_all::<Ingress>(&client);
    let (classes, mut class_changes) = watch_all::<IngressClass>(&client);
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        r = async { ingresses.wait_until_ready().await?; classes.wait_until_ready().await } => {
            r.map_err(|e| IngressError::Watch(e.to_string()))?;
        }
    }
    annotate(&client, &node, Some(args.annotation())).await;
    tracing::info!(
        http = args.http_port,
        https = args.https_port,
        "Ingress proxy listening"
    );

    let mut endpoint_changes = watched.changes.clone();
    let mut refresh = tokio::time::interval(SECRET_REFRESH);
    let mut secrets = SecretCache::default();
    let mut told: BTreeSet<(String, String, String)> = BTreeSet::new();
    loop {
        let mut reread = false;
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = refresh.tick() => reread = true,
            r = ingress_changes.changed() => if r.is_err() { break },
            r = class_changes.changed() => if r.is_err() { break },
            r = endpoint_changes.changed() => if r.is_err() { break },
        }
        let all_ingresses = ingresses.state();
        let table = RouteTable::build(
            &all_ingresses,
            &classes.state(),
            &watched.services.state(),
            &watched.slices.state(),
        );
        let by_host = secrets.certificates(&client, &table, reread).await;
        certificates.set(by_host);

        // Tell each problem once (per Ingress and reason); forget the solved ones, so a
        // problem that comes back is told again.
        let mut now: BTreeSet<(String, String, String)> = table
            .problems
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone(), p.reason.clone()))
            .collect();
        for ((ns, secret), err) in secrets.failures(&table) {
            for ingress in all_ingresses.iter().filter(|i| {
                i.metadata.namespace.as_deref() == Some(ns.as_str())
                    && i.spec
                        .iter()
                        .flat_map(|s| s.tls.iter().flatten())
                        .any(|t| t.secret_name.as_deref() == Some(secret.as_str()))
            }) {
                now.insert((
                    ns.clone(),
                    ingress.metadata.name.clone().unwrap_or_default(),
                    format!("TLS secret \"{ns}/{secret}\" is not used, its hosts get the default certificate: {err}"),
                ));
            }
        }
        for (ns, name, reason) in now.difference(&told) {
            let Some(ingress) = all_ingresses.iter().find(|i| {
                i.metadata.namespace.as_deref() == Some(ns)
                    && i.metadata.name.as_deref() == Some(name)
            }) else {
                continue;
            };
            let kind = if reason.starts_with("TLS secret") {
                "InvalidTLSSecret"
            } else {
                "BackendUnavailable"
            };
            tracing::warn!(ingress = %format!("{ns}/{name}"), %reason, "Ingress route not served as asked");
            events.object(reference(ingress), true, kind, reason);
        }
        told = now;
        proxy.set_routes(table);
    }
    // Best effort: a node that stops serving is dropped from the Ingresses' addresses.
    let _ = tokio::time::timeout(Duration::from_secs(2), annotate(&client, &node, None)).await;
    Ok(())
}

/// The TLS Secrets the Ingresses name, as last read: a pair, or why not.
#[derive(Default)]
struct SecretCache {
    read: HashMap<(String, String), Result<Arc<CertifiedKey>, String>>,
}

impl SecretCache {
    /// The certificates by host for `table`; Secrets not read yet (or all of them, when
    /// `reread`) are read first.
    async fn certificates(
        &mut self,
        client: &kube::Client,
        table: &RouteTable,
        reread: bool,
    ) -> HashMap<String, Arc<CertifiedKey>> {
        let wanted: BTreeSet<&(String, String)> = table.tls.values().collect();
        self.read.retain(|k, _| wanted.contains(k));
        for key in wanted {
            if !reread && self.read.contains_key(key) {
                continue;
            }
            let (ns, name) = key;
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let result = match api.get_opt(name).await {
                Ok(Some(secret)) => tls::certified_key(&secret).map_err(|e| e.to_string()),
                Ok(None) => Err("secret not found".to_owned()),
                Err(e) => Err(format!("reading the secret: {e}")),
            };
            self.read.insert(key.clone(), result);
        }
        table
            .tls
            .iter()
            .filter_map(|(host, key)| match self.read.get(key) {
                Some(Ok(pair)) => Some((host.clone(), pair.clone())),
                _ => None,
            })
            .collect()
    }

    /// The Secrets of `table` that cannot be used, with why.
    fn failures<'a>(
        &'a self,
        table: &'a RouteTable,
    ) -> impl Iterator<Item = (&'a (String, String), &'a String)> + 'a {
        let wanted: BTreeSet<&(String, String)> = table.tls.values().collect();
        wanted
            .into_iter()
            .filter_map(|key| match self.read.get(key) {
                Some(Err(e)) => Some((key, e)),
                _ => None,
            })
    }
}
