//! From the Kubernetes API to the datapath: Services and EndpointSlices are watched (kube-rs
//! reflectors), the objects each event touches are noted ([`super::changes`]), and a
//! bounded-frequency runner syncs: the touched Services' ports are recomputed and compared with
//! what the datapath has ([`super::sync`]), O(changes) per sync.
//!
//! A frontend is each ClusterIP, external IP and load-balancer ingress IP of each Service port,
//! and the nodePort of NodePort and LoadBalancer Services (`0.0.0.0:nodePort`).
//! Only ready endpoints are backends; terminating ones are drained (no new connections), as
//! kube-proxy does. Selector-less Services with hand-written EndpointSlices work the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::changes::{object_key, service_of, ChangeLog, ObjectKey};
use super::desired::DesiredServices;
use super::runner::{self, SyncRequest};
use super::sync::{ProxySync, FULL_COMPARISON};
use super::{BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, Service, SessionAffinity};

/// The annotation that picks a Service's backend choice: `random` (default) or `maglev`.
pub const ALGORITHM_ANNOTATION: &str = "skiff.io/lb-algorithm";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        // SCTP is not load-balanced by skiff.
        _ => None,
    }
}

/// Which endpoints a Service's traffic from this node may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    /// Any ready endpoint.
    Any,
    /// `internalTrafficPolicy: Local`: only this node's endpoints (none: dropped).
    Local,
    /// `trafficDistribution: PreferSameNode`: this node's endpoints when it has ready ones,
    /// else any (the cluster DNS Service: each node's own responder, another node's when it
    /// has none).
    PreferSameNode,
}

fn locality(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Locality {
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        Locality::Local
    } else if spec.traffic_distribution.as_deref() == Some("PreferSameNode") {
        Locality::PreferSameNode
    } else {
        Locality::Any
    }
}

fn ready_backends(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Protocol,
    node: &str,
    locality: Locality,
) -> Vec<BackendAddr> {
    let all = ready_backends_on(slices, port_name, proto, None);
    if locality == Locality::Any {
        return all;
    }
    let local = ready_backends_on(slices, port_name, proto, Some(node));
    match locality {
        Locality::PreferSameNode if local.is_empty() => all,
        _ => local,
    }
}

/// The ready endpoints of `port_name`, only those on `node` when given.
fn ready_backends_on(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Protocol,
    node: Option<&str>,
) -> Vec<BackendAddr> {
    let mut set = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && protocol(p.protocol.as_deref()) == Some(proto)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // An unset `ready` means ready (the API's rule); terminating endpoints are drained.
            if !c.and_then(|c| c.ready).unwrap_or(true)
                || c.and_then(|c| c.terminating).unwrap_or(false)
                || node.is_some_and(|n| ep.node_name.as_deref() != Some(n))
            {
                continue;
            }
            set.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|ip| BackendAddr { ip, port }),
            );
        }
    }
    set.into_iter().collect()
}

/// The service ports the datapath of node `node` should have, from the API's Services and
/// EndpointSlices.
pub fn desired_services<'a>(
    services: impl IntoIterator<Item = &'a KubeService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> BTreeMap<Frontend, Service> {
    desired_state(services, slices, node).to_map()
}

/// [`desired_services`], kept per Service for later changes.
fn desired_state<'a>(
    services: impl IntoIterator<Item = &'a KubeService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> DesiredServices {
    let mut by_service: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(key) = service_of(slice) {
            by_service.entry(key).or_default().push(slice);
        }
    }
    let mut desired = DesiredServices::default();
    for svc in services {
        let key = object_key(&svc.metadata);
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        let ports = service_ports(svc, slices, node);
        desired.set(key, ports);
    }
    desired
}

/// The service ports of one Service on node `node`, from the Service and its EndpointSlices.
pub fn service_ports(svc: &KubeService, slices: &[&EndpointSlice], node: &str) -> Vec<Service> {
    let mut out: Vec<Service> = Vec::new();
    let Some(spec) = &svc.spec else { return out };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let cluster_ip: Option<Ipv4Addr> = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    let mut vips: Vec<Ipv4Addr> = cluster_ip.into_iter().collect();
    vips.extend(
        spec.external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
    );
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        vips.extend(
            lb.ingress
                .iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
        );
    }
    let affinity = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(SessionAffinity::DEFAULT_TIMEOUT_SECONDS);
        SessionAffinity::ClientIp {
            timeout_seconds: timeout,
        }
    } else {
        SessionAffinity::None
    };
    let algorithm = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALGORITHM_ANNOTATION))
        .map(String::as_str)
    {
        Some("maglev") => LbAlgorithm::Maglev,
        _ => LbAlgorithm::Random,
    };
    for port in spec.ports.iter().flatten() {
        let (Some(proto), Ok(svc_port)) =
            (protocol(port.protocol.as_deref()), u16::try_from(port.port))
        else {
            continue;
        };
        let port_name = port.name.as_deref().unwrap_or("");
        let backends = ready_backends(slices, port_name, proto, node, locality(spec));
        // externalTrafficPolicy Local: what comes from outside (a nodePort, an external or
        // load-balancer IP) goes only to this node's endpoints, so its source address can stay
        // (no hop to another node to come back through); the ClusterIP keeps the internal
        // policy's endpoints.
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let outside_backends = if external_local {
            ready_backends(slices, port_name, proto, node, Locality::Local)
        } else {
            backends.clone()
        };
        // NodePort and LoadBalancer Services also answer on their nodePort on every node
        // address (a headless Service has no ClusterIP, and so no NodePort either).
        let node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
            .then_some(port.node_port)
            .flatten()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0 && !vips.is_empty())
            .map(|p| Frontend::node_port(p, proto));
        let frontends = vips
            .iter()
            .map(|&ip| Frontend {
                ip,
                port: svc_port,
                protocol: proto,
            })
            .chain(node_port);
        for frontend in frontends {
            let outside = Some(frontend.ip) != cluster_ip;
            let port = Service {
                frontend,
                backends: if outside {
                    outside_backends.clone()
                } else {
                    backends.clone()
                },
                algorithm,
                affinity,
                external_local: outside && external_local,
            };
            // One port per frontend: a later one (the API refuses such duplicates) wins, as
            // it did when all ports went into one map.
            match out.iter_mut().find(|s| s.frontend == frontend) {
                Some(existing) => *existing = port,
                None => out.push(port),
            }
        }
    }
    out
}

/// Whether the datapath's `have` already is `want` (backends in any order).
fn same(have: &Service, want: &Service) -> bool {
    let (mut a, mut b) = (have.backends.clone(), want.backends.clone());
    a.sort();
    b.sort();
    a == b
        && have.algorithm == want.algorithm
        && have.affinity == want.affinity
        && have.external_local == want.external_local
}

/// Applies the difference between `desired` and what `datapath` has; returns the number of
/// changed service ports.
pub fn sync(
    datapath: &mut dyn Datapath,
    desired: &BTreeMap<Frontend, Service>,
) -> Result<usize, super::ProxyError> {
    let current: BTreeMap<Frontend, Service> = datapath
        .services()
        .into_iter()
        .map(|s| (s.frontend, s))
        .collect();
    let mut changes = 0;
    let mut upserts = Vec::new();
    for (f, want) in desired {
        if !current.get(f).is_some_and(|have| same(have, want)) {
            upserts.push(want.clone());
            changes += 1;
        }
    }
    datapath.upsert_services(&upserts)?;
    for f in current.keys().filter(|f| !desired.contains_key(f)) {
        datapath.delete_service(f)?;
        changes += 1;
    }
    datapath.commit()?;
    Ok(changes)
}

/// Applies the changes of the `affected` frontends, each given with the port the datapath
/// has there (as the last sync left it), to `desired`'s; returns the number of changed ports.
pub fn sync_affected(
    datapath: &mut dyn Datapath,
    desired: &DesiredServices,
    affected: &BTreeMap<Frontend, Option<Service>>,
) -> Result<usize, super::ProxyError> {
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (f, have) in affected {
        match (have, desired.get(f)) {
            (Some(have), Some(want)) if same(have, want) => {}
            (_, Some(want)) => upserts.push(want.clone()),
            (Some(_), None) => deletes.push(*f),
            (None, None) => {}
        }
    }
    if upserts.is_empty() && deletes.is_empty() {
        return Ok(0);
    }
    datapath.upsert_services(&upserts)?;
    for f in &deletes {
        datapath.delete_service(f)?;
    }
    datapath.commit()?;
    Ok(upserts.len() + deletes.len())
}

/// The Services and EndpointSlices the service proxy watches, lent to the node's Ingress
/// proxy (`crate::ingress`) so that a node keeps one watch of each, and a counter bumped
/// after every change of either (a `watch` channel: a slow reader sees only the latest).
#[derive(Clone)]
pub struct Watched {
    /// The Services, as the last event left them.
    pub services: reflector::Store<KubeService>,
    /// The EndpointSlices, likewise.
    pub slices: reflector::Store<EndpointSlice>,
    /// Bumped after each change.
    pub changes: tokio::sync::watch::Receiver<u64>,
}

/// Watches the API and keeps `datapath` (of node `node`), and the cluster DNS zone when there
/// is one, in sync until `shutdown`, syncing at most once per `min_interval`. Once both
/// watches have listed, `share` (if any) gets the watch caches.
pub async fn run(
    client: kube::Client,
    datapath: Box<dyn Datapath + Send>,
    node: String,
    dns: Option<crate::dns::ClusterZone>,
    min_interval: Duration,
    shutdown: CancellationToken,
    share: Option<tokio::sync::oneshot::Sender<Watched>>,
) -> anyhow::Result<()> {
    let (svc_reader, svc_writer) = reflector::store::<KubeService>();
    let (eps_reader, eps_writer) = reflector::store::<EndpointSlice>();
    let (requests, receiver) = SyncRequest::channel();
    let log = ChangeLog::default();
    let svc_stream = reflector::reflector(
        svc_writer,
        watcher(
            Api::<KubeService>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let eps_stream = reflector::reflector(
        eps_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let (bump, changes) = tokio::sync::watch::channel(0u64);
    let bump = Arc::new(bump);
    tokio::spawn(pump(
        svc_stream,
        log.clone(),
        requests.clone(),
        ChangeLog::service,
        bump.clone(),
    ));
    tokio::spawn(pump(
        eps_stream,
        log.clone(),
        requests.clone(),
        ChangeLog::slice,
        bump,
    ));
    svc_reader.wait_until_ready().await?;
    eps_reader.wait_until_ready().await?;
    if let Some(share) = share {
        let _ = share.send(Watched {
            services: svc_reader.clone(),
            slices: eps_reader.clone(),
            changes,
        });
    }
    let address = dns.as_ref().map(|d| d.address);
    let proxy = ProxySync::new(datapath, node, dns);
    tokio::spawn(super::health_check::serve(
        proxy.health_checks(),
        shutdown.clone(),
    ));
    let state = Arc::new(Mutex::new(proxy));
    runner::run(receiver, min_interval, FULL_COMPARISON, shutdown, || {
        let (svc_reader, eps_reader, state, log) = (
            svc_reader.clone(),
            eps_reader.clone(),
            state.clone(),
            log.clone(),
        );
        async move {
            let started = Instant::now();
            let mut state = state.lock().await;
            match state.sync(log.take(), &svc_reader, &eps_reader) {
                Ok(r) if r.changed == 0 && !r.rebuilt => {}
                Ok(r) => tracing::info!(
                    changed = r.changed,
                    services = r.services,
                    full = r.full,
                    rebuilt = r.rebuilt,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "datapath synced"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "datapath sync failed; retrying at the next sync")
                }
            }
        }
    })
    .await;
    // The agent is stopping and its DNS responder with it, while its pods keep running: their
    // lookups go to the other nodes' responders until it is back (the kube-dns Service prefers
    // the same node only while that node has a ready responder).
    if let Some(address) = address {
        let slices: Vec<EndpointSlice> = eps_reader
            .state()
            .iter()
            .map(|s| without_address(s, address))
            .collect();
        let services = svc_reader.state();
        let mut state = state.lock().await;
        let desired = desired_services(services.iter().map(|s| s.as_ref()), &slices, state.node());
        match sync(state.datapath(), &desired) {
            Ok(n) => tracing::info!(
                changed = n,
                "DNS handed over to the other nodes' responders"
            ),
            Err(e) => tracing::warn!(error = %e, "handing DNS over to the other nodes failed"),
        }
    }
    Ok(())
}

/// Notes each object a watch touches in `log` (with `touched`) and asks for a sync. The
/// reflector has already applied the event to its store, so the sync sees the object as the
/// event left it (or a later state).
async fn pump<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    log: ChangeLog,
    requests: SyncRequest,
    touched: fn(&ChangeLog, ObjectKey),
    bump: Arc<tokio::sync::watch::Sender<u64>>,
) where
    K: kube::Resource,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                touched(&log, object_key(o.meta()));
            }
            // The store is replaced whole at the end of a list: everything is recomputed.
            Ok(watcher::Event::InitDone) => log.relisted(),
            // Objects of a list in progress are not in the store yet (it is replaced at the
            // end), and watch errors are retried by the watcher with a back-off.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => continue,
        }
        requests.request();
        bump.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// `slice` without the endpoints at `address`.
fn without_address(slice: &EndpointSlice, address: Ipv4Addr) -> EndpointSlice {
    let mut slice = slice.clone();
    let address = address.to_string();
    if let Some(endpoints) = slice.endpoints.as_mut() {
        endpoints.retain(|e| !e.addresses.contains(&address));
    }
    slice
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kubia() -> KubeService {
        serde_json::from_value(json!({"metadata": {"name": "kubia", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.7"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}],
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}))
        .unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "kubia-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "kubia"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints}))
        .unwrap()
    }

    #[test]
    fn ready_endpoints_are_backends_of_every_frontend() {
        let s = slice(json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
            {"addresses": ["10.244.2.7"]},
            {"addresses": ["10.244.3.9"], "conditions": {"ready": false}},
            {"addresses": ["10.244.4.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]));
        let svc = kubia();
        let d = desired_services([&svc], [&s], "node-1");
        assert_eq!(d.len(), 3, "ClusterIP, external IP and NodePort");
        assert_eq!(
            d[&Frontend::node_port(30080, Protocol::Tcp)].backends.len(),
            2
        );
        let e = &d[&Frontend {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(
            e.backends,
            vec![
                BackendAddr {
                    ip: Ipv4Addr::new(10, 244, 1, 5),
                    port: 8080
                },
                BackendAddr {
                    ip: Ipv4Addr::new(10, 244, 2, 7),
                    port: 8080
                }
            ]
        );
        assert_eq!(
            e.affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: 60
            }
        );
    }

    #[test]
    fn maglev_annotation_udp_and_headless() {
        let svc: KubeService = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "p", "annotations": {ALGORITHM_ANNOTATION: "maglev"}},
            "spec": {"clusterIP": "10.96.5.5", "ports": [{"port": 5432, "protocol": "UDP"}]}})).unwrap();
        let headless: KubeService = serde_json::from_value(json!({"metadata": {"name": "h", "namespace": "p"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})).unwrap();
        let d = desired_services(
            [&svc, &headless],
            std::iter::empty::<&EndpointSlice>(),
            "node-1",
        );
        assert_eq!(d.len(), 1);
        let e = d.values().next().unwrap();
        assert_eq!(
            (e.algorithm, e.backends.len(), e.frontend.protocol),
            (LbAlgorithm::Maglev, 0, Protocol::Udp)
        );
    }

    /// The backend addresses of the first service port.
    fn first_backends(desired: &BTreeMap<Frontend, Service>) -> Vec<String> {
        let first = desired.values().next().expect("a service port");
        first.backends.iter().map(|b| b.ip.to_string()).collect()
    }

    #[test]
    fn node_local_traffic_policies() {
        let with = |extra: serde_json::Value| -> KubeService {
            let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(
                json!({"metadata": {"name": "kubia", "namespace": "default"}, "spec": spec}),
            )
            .unwrap()
        };
        let s = slice(json!([
            {"addresses": ["10.244.1.5"], "nodeName": "node-1"},
            {"addresses": ["10.244.2.7"], "nodeName": "node-2"},
            {"addresses": ["10.244.1.9"], "nodeName": "node-1", "conditions": {"ready": false}},
        ]));
        let backends =
            |svc: &KubeService, node: &str| first_backends(&desired_services([svc], [&s], node));
        let any = with(json!({}));
        assert_eq!(backends(&any, "node-1"), ["10.244.1.5", "10.244.2.7"]);
        let local = with(json!({"internalTrafficPolicy": "Local"}));
        assert_eq!(backends(&local, "node-2"), ["10.244.2.7"]);
        assert!(
            backends(&local, "node-3").is_empty(),
            "Local: no local endpoint, no backend"
        );
        let prefer = with(json!({"trafficDistribution": "PreferSameNode"}));
        assert_eq!(backends(&prefer, "node-1"), ["10.244.1.5"]);
        assert_eq!(
            backends(&prefer, "node-3"),
            ["10.244.1.5", "10.244.2.7"],
            "PreferSameNode: any endpoint when the node has none ready"
        );
    }

    #[test]
    fn external_traffic_policy_local_keeps_outside_traffic_on_the_node() {
        let mut svc = kubia();
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        svc.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.100"}]}}))
                .unwrap();
        let s = slice(json!([
            {"addresses": ["10.244.1.5"], "nodeName": "node-1"},
            {"addresses": ["10.244.2.7"], "nodeName": "node-2"},
        ]));
        let on = |node: &str| desired_services([&svc], [&s], node);
        let ips =
            |p: &Service| -> Vec<String> { p.backends.iter().map(|b| b.ip.to_string()).collect() };
        let node1 = on("node-1");
        for (frontend, port) in &node1 {
            if frontend.ip == Ipv4Addr::new(10, 96, 0, 10) {
                assert_eq!(
                    ips(port),
                    ["10.244.1.5", "10.244.2.7"],
                    "the ClusterIP: any"
                );
                assert!(!port.external_local);
            } else {
                // nodePort, external IP and load-balancer IP: this node's only.
                assert_eq!(ips(port), ["10.244.1.5"], "{frontend:?}");
                assert!(port.external_local, "{frontend:?}");
            }
        }
        assert_eq!(node1.len(), 4, "ClusterIP, external IP, LB IP, nodePort");
        let node3 = on("node-3");
        assert!(node3
            .values()
            .filter(|p| p.external_local)
            .all(|p| p.backends.is_empty()));
        // Cluster (the default): every frontend has every endpoint, none is marked.
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert!(desired_services([&svc], [&s], "node-1")
            .values()
            .all(|p| p.backends.len() == 2 && !p.external_local));
    }

    #[test]
    fn a_stopping_agent_hands_its_dns_frontend_to_the_other_nodes() {
        let dns: KubeService = serde_json::from_value(
            json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "trafficDistribution": "PreferSameNode",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        )
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
                "labels": {SERVICE_NAME_LABEL: "kube-dns"}},
            "addressType": "IPv4", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.1.1"], "nodeName": "node-1"},
                          {"addresses": ["10.244.2.1"], "nodeName": "node-2"}]}),
        )
        .unwrap();
        let backends =
            |slice: &EndpointSlice| first_backends(&desired_services([&dns], [slice], "node-1"));
        assert_eq!(backends(&slice), ["10.244.1.1"]);
        let leaving = without_address(&slice, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(backends(&leaving), ["10.244.2.1"]);
    }

    /// An in-memory datapath recording calls, to check that syncs are O(changes).
    #[derive(Default)]
    struct Recorder {
        services: BTreeMap<Frontend, Service>,
        calls: usize,
    }

    impl Datapath for Recorder {
        fn upsert_service(&mut self, s: &Service) -> Result<(), crate::proxy::ProxyError> {
            self.calls += 1;
            self.services.insert(s.frontend, s.clone());
            Ok(())
        }
        fn delete_service(&mut self, f: &Frontend) -> Result<(), crate::proxy::ProxyError> {
            self.calls += 1;
            self.services.remove(f);
            Ok(())
        }
        fn services(&self) -> Vec<Service> {
            self.services.values().cloned().collect()
        }
    }

    #[test]
    fn sync_touches_only_what_changed() {
        let svc = kubia();
        let one = slice(json!([{"addresses": ["10.244.1.5"]}]));
        let two = slice(json!([{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.2.7"]}]));
        // ClusterIP, externalIP and NodePort: three frontends per port.
        let mut dp = Recorder::default();
        assert_eq!(
            sync(&mut dp, &desired_services([&svc], [&one], "node-1")).unwrap(),
            3
        );
        assert_eq!(
            sync(&mut dp, &desired_services([&svc], [&one], "node-1")).unwrap(),
            0,
            "nothing changed"
        );
        assert_eq!(
            sync(&mut dp, &desired_services([&svc], [&two], "node-1")).unwrap(),
            3
        );
        assert_eq!(
            sync(
                &mut dp,
                &desired_services(std::iter::empty::<&KubeService>(), [&two], "node-1")
            )
            .unwrap(),
            3
        );
        assert!(dp.services.is_empty());
        assert_eq!(dp.calls, 9);
    }
}
