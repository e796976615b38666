//! Syncs against real reflector stores: what the incremental syncs leave in the datapath and
//! the zone is what recomputing everything gives.

use std::collections::BTreeMap;

use hickory_proto::rr::{Name, RecordType};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::dns::server::ZoneHandle;
use crate::dns::zone::Outcome;
use crate::proxy::api::{desired_services, SERVICE_NAME_LABEL};

/// An in-memory datapath counting the ports it was told to change.
#[derive(Default)]
struct Recorder {
    services: BTreeMap<Frontend, Service>,
    writes: usize,
}

impl Datapath for Recorder {
    fn upsert_service(&mut self, s: &Service) -> Result<(), ProxyError> {
        self.writes += 1;
        self.services.insert(s.frontend, s.clone());
        Ok(())
    }
    fn delete_service(&mut self, f: &Frontend) -> Result<(), ProxyError> {
        self.writes += 1;
        self.services.remove(f);
        Ok(())
    }
    fn services(&self) -> Vec<Service> {
        self.services.values().cloned().collect()
    }
}

/// The watch caches and the proxy state over a [`Recorder`].
struct World {
    services: (Store<KubeService>, Writer<KubeService>),
    slices: (Store<EndpointSlice>, Writer<EndpointSlice>),
    changes: Changes,
    proxy: ProxySync,
    handle: ZoneHandle,
}

impl World {
    fn new() -> Self {
        let handle = ZoneHandle::new(Zone::empty("cluster.local", 5));
        let dns = ClusterZone {
            domain: "cluster.local".to_owned(),
            ttl: 5,
            handle: handle.clone(),
            address: std::net::Ipv4Addr::new(10, 244, 0, 1),
        };
        let mut services = reflector::store();
        let mut slices = reflector::store();
        // The caches are ready (listed) before the first sync.
        services.1.apply_watcher_event(&Event::InitDone);
        slices.1.apply_watcher_event(&Event::InitDone);
        Self {
            services,
            slices,
            changes: Changes::default(),
            proxy: ProxySync::new(Box::<Recorder>::default(), "node-1".to_owned(), Some(dns)),
            handle,
        }
    }

    fn apply_service(&mut self, svc: KubeService) {
        self.changes.services.insert(object_key(&svc.metadata));
        self.services.1.apply_watcher_event(&Event::Apply(svc));
    }

    fn delete_service(&mut self, svc: KubeService) {
        self.changes.services.insert(object_key(&svc.metadata));
        self.services.1.apply_watcher_event(&Event::Delete(svc));
    }

    fn apply_slice(&mut self, slice: EndpointSlice) {
        self.changes.slices.insert(object_key(&slice.metadata));
        self.slices.1.apply_watcher_event(&Event::Apply(slice));
    }

    fn delete_slice(&mut self, slice: EndpointSlice) {
        self.changes.slices.insert(object_key(&slice.metadata));
        self.slices.1.apply_watcher_event(&Event::Delete(slice));
    }

    fn sync(&mut self) -> SyncReport {
        let changes = std::mem::take(&mut self.changes);
        self.proxy
            .sync(changes, &self.services.0, &self.slices.0)
            .expect("the recorder does not fail")
    }

    fn datapath(&self) -> BTreeMap<Frontend, Service> {
        self.proxy
            .datapath
            .services()
            .into_iter()
            .map(|s| (s.frontend, s))
            .collect()
    }

    /// The datapath and the published zone are what recomputing everything gives.
    fn assert_matches_whole(&self, context: &str) {
        let services = self.services.0.state();
        let slices = self.slices.0.state();
        let services = services.iter().map(AsRef::as_ref);
        let want = desired_services(services.clone(), slices.iter().map(AsRef::as_ref), "node-1");
        assert_eq!(self.datapath(), want, "datapath after {context}");
        assert_eq!(
            self.proxy.desired.to_map(),
            want,
            "desired ports after {context}"
        );
        let zone = Zone::build(
            "cluster.local",
            5,
            services,
            slices.iter().map(AsRef::as_ref),
        );
        assert_eq!(
            *self.handle.current(),
            zone,
            "published zone after {context}"
        );
    }

    fn lookup(&self, n: &str, qtype: RecordType) -> Outcome {
        self.handle
            .current()
            .lookup(&Name::from_ascii(n).unwrap(), qtype)
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, port_name: &str) -> KubeService {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip,
            "ports": [{"name": port_name, "port": 80, "protocol": "TCP"}]}}))
    .unwrap()
}

fn slice(ns: &str, name: &str, svc: &str, ips: &[String]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node-1"}))
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps}))
    .unwrap()
}

fn answers(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Answer { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
        other => panic!("no answer: {other:?}"),
    }
}

#[test]
fn a_sync_touches_only_the_changed_service() {
    let mut w = World::new();
    for i in 0..50 {
        w.apply_service(service(
            "default",
            &format!("s{i}"),
            &format!("10.96.1.{i}"),
            "http",
        ));
    }
    let first = w.sync();
    assert!(first.rebuilt && first.full);
    assert_eq!((first.services, first.changed), (50, 50));
    w.assert_matches_whole("the first sync");

    w.apply_service(service("default", "new", "10.96.2.1", "http"));
    let report = w.sync();
    assert_eq!(
        report,
        SyncReport {
            rebuilt: false,
            full: false,
            services: 1,
            changed: 1
        }
    );
    assert_eq!(
        answers(&w.lookup("new.default.svc.cluster.local.", RecordType::A)),
        ["10.96.2.1"]
    );
    w.assert_matches_whole("a create");

    w.apply_slice(slice("default", "new-1", "new", &["10.244.1.5".to_owned()]));
    assert_eq!(w.sync().changed, 1, "its port gets a backend");
    let datapath = w.datapath();
    let port = datapath
        .values()
        .find(|s| s.frontend.ip == std::net::Ipv4Addr::new(10, 96, 2, 1));
    assert_eq!(port.map(|s| s.backends.len()), Some(1));

    w.delete_service(service("default", "new", "10.96.2.1", "http"));
    assert_eq!(w.sync().changed, 1);
    assert_eq!(
        w.lookup("new.default.svc.cluster.local.", RecordType::A),
        Outcome::NxDomain
    );
    w.assert_matches_whole("a delete");

    let idle = w.sync();
    assert!(
        !idle.full,
        "a sync whose changes an earlier one took compares nothing"
    );
    assert_eq!((idle.services, idle.changed), (0, 0));
}

#[test]
fn drift_is_repaired_by_the_periodic_comparison() {
    let mut w = World::new();
    w.apply_service(service("default", "a", "10.96.1.1", "http"));
    w.sync();
    let frontend = *w.datapath().keys().next().unwrap();
    w.proxy.datapath().delete_service(&frontend).unwrap();
    assert_eq!(w.sync().changed, 0, "not compared yet");
    w.proxy.compared = Instant::now().checked_sub(FULL_COMPARISON);
    let report = w.sync();
    assert!(report.full);
    assert_eq!(
        report.changed, 1,
        "the port removed behind the proxy's back is back"
    );
    w.assert_matches_whole("a repair");
    assert!(!w.sync().full, "compared a moment ago");
}

#[test]
fn a_relist_recomputes_everything() {
    let mut w = World::new();
    w.apply_service(service("default", "a", "10.96.1.1", "http"));
    w.apply_service(service("default", "b", "10.96.1.2", "http"));
    w.sync();
    // The watch lost its place: b was deleted meanwhile, and the list no longer has it.
    w.services.1.apply_watcher_event(&Event::Init);
    w.services.1.apply_watcher_event(&Event::InitApply(service(
        "default",
        "a",
        "10.96.1.1",
        "http",
    )));
    w.services.1.apply_watcher_event(&Event::InitDone);
    w.changes.relisted = true;
    let report = w.sync();
    assert!(report.rebuilt);
    assert_eq!(
        w.lookup("b.default.svc.cluster.local.", RecordType::A),
        Outcome::NxDomain
    );
    w.assert_matches_whole("a relist");
}

/// Random creates, changes and deletes of Services and EndpointSlices (relabelled slices,
/// ClusterIPs that move, headless Services scaled up and down), several per sync: after every
/// sync the datapath and the zone are what recomputing everything gives.
#[test]
fn incremental_syncs_match_recomputing_everything() {
    let mut rng = StdRng::seed_from_u64(15);
    let mut w = World::new();
    w.sync();
    let namespaces = ["default", "prod"];
    let mut slices: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
    let mut services: BTreeMap<(String, String), KubeService> = BTreeMap::new();
    for round in 0..300 {
        for _ in 0..rng.random_range(1..4) {
            let ns = namespaces[rng.random_range(0..2)];
            let svc = format!("s{}", rng.random_range(0..12));
            match rng.random_range(0..6) {
                0 | 1 => {
                    let ip = if rng.random_bool(0.3) {
                        "None".to_owned()
                    } else {
                        format!(
                            "10.96.{}.{}",
                            rng.random_range(0..2),
                            rng.random_range(1..5)
                        )
                    };
                    let port_name = ["http", "web"][rng.random_range(0..2)];
                    let s = service(ns, &svc, &ip, port_name);
                    services.insert(object_key(&s.metadata), s.clone());
                    w.apply_service(s);
                }
                2 => {
                    if let Some(s) = services.remove(&(ns.to_owned(), svc)) {
                        w.delete_service(s);
                    }
                }
                3 | 4 => {
                    let name = format!("{svc}-{}", rng.random_range(0..2));
                    // Sometimes labelled for another Service than its name says.
                    let owner = if rng.random_bool(0.2) {
                        format!("s{}", rng.random_range(0..12))
                    } else {
                        svc
                    };
                    let ips: Vec<String> = (0..rng.random_range(0..4))
                        .map(|_| {
                            format!(
                                "10.244.{}.{}",
                                rng.random_range(0..2),
                                rng.random_range(1..6)
                            )
                        })
                        .collect();
                    let s = slice(ns, &name, &owner, &ips);
                    slices.insert(object_key(&s.metadata), s.clone());
                    w.apply_slice(s);
                }
                _ => {
                    let name = format!("{svc}-{}", rng.random_range(0..2));
                    if let Some(s) = slices.remove(&(ns.to_owned(), name)) {
                        w.delete_slice(s);
                    }
                }
            }
        }
        let report = w.sync();
        assert!(!report.rebuilt);
        w.assert_matches_whole(&format!("round {round}"));
    }
}
