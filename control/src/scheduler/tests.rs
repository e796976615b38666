//! Unit tests of the filters, scores and the queue, on a cache filled by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::runtime::watcher::Event;

use super::cache::PodInfo;
use super::filter::{self, Reason};
use super::{Decision, Scheduler};

fn node(name: &str, cpu: &str, labels: &[(&str, &str)]) -> Node {
    let q = |s: &str| Quantity(s.to_owned());
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .chain([("kubernetes.io/hostname".to_owned(), name.to_owned())])
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_owned(), q(cpu)),
                ("memory".to_owned(), q("4Gi")),
                ("pods".to_owned(), q("110")),
            ])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, cpu: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: (!cpu.is_empty()).then(|| ResourceRequirements {
                    requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity(cpu.into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            scheduler_name: Some("default-scheduler".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn info(p: Pod) -> PodInfo {
    PodInfo::new(p).unwrap()
}

fn sched(nodes: Vec<Node>) -> Scheduler {
    let mut s = Scheduler::default();
    for n in nodes {
        s.on_node(Event::Apply(n));
    }
    s
}

#[test]
fn failure_message_counts_reasons_in_kube_scheduler_words() {
    let mut s = sched(vec![
        node("n1", "1", &[("disk", "ssd")]),
        node("n2", "4", &[]),
        node("n3", "4", &[]),
    ]);
    let mut p = pod("big", "2");
    p.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
    assert_eq!(
        s.decide(&info(p)),
        Decision::Unschedulable(
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
                .into()
        )
    );
    let empty = &mut Scheduler::default();
    assert_eq!(
        empty.decide(&info(pod("p", ""))),
        Decision::Unschedulable("no nodes available to schedule pods".into())
    );
}

#[test]
fn taints_cordons_and_readiness_filter_nodes() {
    let mut tainted = node("n1", "4", &[]);
    tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: "dedicated".into(),
        value: Some("db".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    let mut cordoned = node("n2", "4", &[]);
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    let mut not_ready = node("n3", "4", &[]);
    not_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".into();
    let mut soft = node("n4", "4", &[]);
    soft.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: "x".into(),
        effect: "PreferNoSchedule".into(),
        ..Default::default()
    }]);
    soft.spec.as_mut().unwrap().unschedulable = Some(true);
    let mut s = sched(vec![tainted, cordoned, not_ready, soft]);
    assert_eq!(
        s.decide(&info(pod("p", ""))),
        Decision::Unschedulable(
            "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, \
             1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
             2 node(s) were unschedulable."
                .into()
        )
    );
    let mut p = pod("tolerant", "");
    p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    assert_eq!(s.decide(&info(p)), Decision::Node("n1".into()));
}

/// A pod with `hostPort` (or a hostNetwork pod, whose ports the API server defaults to host
/// ports) goes only where nothing holds the port on the same address; the last one that fits
/// nowhere gets kube-scheduler's NodePorts reason.
#[test]
fn host_ports_conflict_on_the_same_protocol_port_and_address() {
    use k8s_openapi::api::core::v1::ContainerPort;

    let with_port = |name: &str, port: i32, protocol: &str, ip: &str| {
        let mut p = pod(name, "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: port,
            host_port: Some(port),
            protocol: Some(protocol.into()),
            host_ip: (!ip.is_empty()).then(|| ip.to_owned()),
            ..Default::default()
        }]);
        p
    };
    let mut s = sched(vec![node("n1", "4", &[]), node("n2", "4", &[])]);
    for p in [
        with_port("a", 8080, "TCP", ""),
        with_port("b", 8080, "TCP", ""),
        with_port("c", 8080, "TCP", ""),
        with_port("udp", 8080, "UDP", ""),
    ] {
        s.on_pod(Event::Apply(p));
    }
    let mut placed = BTreeMap::<String, Vec<String>>::new();
    let mut failed = Vec::new();
    while let Some((p, d)) = s.next_decision() {
        match d {
            Decision::Node(n) => placed.entry(n).or_default().push(p.name),
            Decision::Unschedulable(m) => failed.push((p.name, m)),
        }
    }
    assert_eq!(placed.values().map(Vec::len).sum::<usize>(), 3);
    assert!(
        placed.values().all(|names| names.len() <= 2),
        "each node takes one TCP 8080 (and the UDP one): {placed:?}"
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        failed[0].1,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    );

    // Distinct addresses share a port; a wildcard conflicts with each of them.
    let taken = info(with_port("x", 9000, "TCP", "10.0.0.1"));
    let mut n = super::cache::NodeInfo::default();
    for p in &taken.host_ports {
        n.used_ports.insert(p.clone(), 1);
    }
    assert!(filter::free_ports(&info(with_port("y", 9000, "TCP", "10.0.0.2")), &n).is_ok());
    assert_eq!(
        filter::free_ports(&info(with_port("z", 9000, "TCP", "")), &n),
        Err(Reason::NodePorts)
    );
    // Deleting the holder frees the port.
    s.on_pod(Event::Delete(with_port("a", 8080, "TCP", "")));
    let retried: Vec<_> = std::iter::from_fn(|| s.next_decision())
        .map(|(p, d)| (p.name, matches!(d, Decision::Node(_))))
        .collect();
    assert!(retried.iter().any(|(_, ok)| *ok), "{retried:?}");
}

#[test]
fn assumed_pods_count_before_the_watch_confirms_them() {
    let mut s = sched(vec![node("n1", "2", &[]), node("n2", "2", &[])]);
    for i in 0..5 {
        s.on_pod(Event::Apply(pod(&format!("p{i}"), "1")));
    }
    let mut placed = BTreeMap::<String, usize>::new();
    let mut failed = Vec::new();
    while let Some((p, d)) = s.next_decision() {
        match d {
            Decision::Node(n) => *placed.entry(n).or_default() += 1,
            Decision::Unschedulable(m) => failed.push((p.name, m)),
        }
    }
    assert_eq!(placed, BTreeMap::from([("n1".into(), 2), ("n2".into(), 2)]));
    assert_eq!(
        failed,
        vec![(
            "p4".to_owned(),
            "0/2 nodes are available: 2 Insufficient cpu.".to_owned()
        )]
    );
    // A stale event (the pod before its binding) does not undo the assumption...
    s.on_pod(Event::Apply(pod("p0", "1")));
    assert_eq!(
        s.cache.nodes.values().map(|n| n.pods.len()).sum::<usize>(),
        4
    );
    assert_eq!(s.active_len(), 0);
    // ...a failed binding does, and the pod waits; a deleted pod frees room and retries.
    s.bound("uid-p0", false);
    assert!(s.is_unschedulable("uid-p0"));
    s.on_pod(Event::Delete(pod("p1", "1")));
    let mut retried: Vec<_> = std::iter::from_fn(|| s.next_decision())
        .map(|(p, d)| (p.name, matches!(d, Decision::Node(_))))
        .collect();
    retried.sort();
    assert_eq!(retried, vec![("p0".into(), true), ("p4".into(), true)]);
}

#[test]
fn an_unschedulable_pod_is_retried_only_after_its_own_wait() {
    use std::time::Duration;
    use tokio::time::Instant;

    let mut s = sched(vec![node("n1", "1", &[])]);
    s.on_pod(Event::Apply(pod("big", "2")));
    assert!(matches!(
        s.next_decision(),
        Some((_, Decision::Unschedulable(_)))
    ));
    let wait = Duration::from_secs(300);
    // Updates of the pod itself and an early leftover check leave it parked...
    s.on_pod(Event::Apply(pod("big", "2")));
    s.retry_leftover(Instant::now() + Duration::from_secs(299), wait);
    assert_eq!(s.active_len(), 0);
    assert!(s.is_unschedulable("uid-big"));
    // ...once it has waited the whole wait, it is tried again.
    s.retry_leftover(Instant::now() + wait, wait);
    assert_eq!(s.active_len(), 1);
    assert!(!s.is_unschedulable("uid-big"));
}

#[test]
fn replicas_of_one_owner_spread_across_nodes() {
    let mut s = sched(vec![
        node("n1", "8", &[]),
        node("n2", "8", &[]),
        node("n3", "8", &[]),
    ]);
    // n1 is emptier but already runs two replicas of the owner.
    let owned = |name: &str, cpu: &str| {
        let mut p = pod(name, cpu);
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: "rs-uid".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p
    };
    for (name, node) in [("a", "n1"), ("b", "n1")] {
        let mut p = owned(name, "10m");
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        s.on_pod(Event::Apply(p));
    }
    for (name, node) in [("x", "n2"), ("y", "n3")] {
        let mut p = pod(name, "500m");
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        s.on_pod(Event::Apply(p));
    }
    let d = s.decide(&info(owned("c", "10m")));
    assert!(matches!(&d, Decision::Node(n) if n != "n1"), "{d:?}");
    // Without an owner least-allocated wins: n1.
    assert_eq!(
        s.decide(&info(pod("d", "10m"))),
        Decision::Node("n1".into())
    );
}

#[test]
fn required_anti_affinity_by_hostname() {
    let mut s = sched(vec![node("n1", "8", &[]), node("n2", "8", &[])]);
    let anti = |name: &str| {
        let mut p = pod(name, "");
        p.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    for name in ["db0", "db1", "db2"] {
        s.on_pod(Event::Apply(anti(name)));
    }
    let decisions: Vec<_> = std::iter::from_fn(|| s.next_decision())
        .map(|(_, d)| d)
        .collect();
    let nodes: Vec<_> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Node(n) => Some(n.clone()),
            Decision::Unschedulable(_) => None,
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{decisions:?}");
    assert_ne!(nodes[0], nodes[1]);
    assert!(decisions.contains(&Decision::Unschedulable(
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.".into()
    )));
    // A pod the placed ones repel, without anti-affinity of its own.
    let mut plain = pod("web", "");
    plain.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
    assert_eq!(
        s.decide(&info(plain)),
        Decision::Unschedulable(
            "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
                .into()
        )
    );
    assert!(matches!(
        s.decide(&info(pod("other", ""))),
        Decision::Node(_)
    ));
}

#[test]
fn too_many_pods_and_memory() {
    let mut n = node("n1", "8", &[]);
    n.status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert("pods".into(), Quantity("1".into()));
    let mut s = sched(vec![n]);
    let mut placed = pod("a", "");
    placed.spec.as_mut().unwrap().node_name = Some("n1".into());
    s.on_pod(Event::Apply(placed));
    let mut big = pod("b", "");
    big.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("5Gi".into()),
        )])),
        ..Default::default()
    });
    let node = s.cache.nodes.get("n1").unwrap();
    assert_eq!(
        filter::fits(&info(big), node),
        Err(vec![Reason::TooManyPods, Reason::InsufficientMemory])
    );
}
