//! Record building from Services and EndpointSlices: every record type of the specification
//! and the negative answers.

use super::*;
use serde_json::json;

fn service(ns: &str, name: &str, spec: serde_json::Value) -> KubeService {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

fn slice(ns: &str, svc: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4", "endpoints": endpoints,
    }))
    .unwrap()
}

fn zone() -> Zone {
    let services = [
        service(
            "default",
            "kubia",
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 9000}]}),
        ),
        service(
            "default",
            "nginx",
            json!({"clusterIP": "None",
            "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}),
        ),
        service(
            "default",
            "db",
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
        ),
        service(
            "prod",
            "lazy",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        ),
    ];
    let slices = [
        slice(
            "default",
            "nginx",
            json!([
                {"addresses": ["10.244.1.5"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "hostname": "web-1"},
                {"addresses": ["10.244.3.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.4.8"], "hostname": "web-3", "conditions": {"ready": false}},
            ]),
        ),
        slice(
            "prod",
            "lazy",
            json!([{"addresses": ["10.244.5.9"], "conditions": {"ready": false}}]),
        ),
    ];
    Zone::build("cluster.local", 5, &services, &slices)
}

fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

/// The answers' data as text, in order.
fn data(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Answer { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
        other => panic!("no answer: {other:?}"),
    }
}

#[test]
fn a_cluster_ip_service_has_its_address_case_insensitively() {
    let z = zone();
    let asked = name("KUBIA.Default.svc.cluster.local.");
    let answer = z.lookup(&asked, RecordType::A);
    assert_eq!(data(&answer), ["10.96.0.20"]);
    let Outcome::Answer { answers, .. } = &answer else {
        unreachable!()
    };
    assert_eq!(answers[0].name, asked, "owned by the name as asked");
    assert_eq!(answers[0].ttl, 5);
    assert_eq!(
        z.lookup(&name("kubia.default.svc.cluster.local."), RecordType::AAAA),
        Outcome::NoData
    );
    assert_eq!(
        z.lookup(&name("kubia.default.svc.cluster.local."), RecordType::MX),
        Outcome::NoData
    );
}

#[test]
fn a_headless_service_has_its_ready_endpoints_and_their_hostnames() {
    let z = zone();
    let all = z.lookup(&name("nginx.default.svc.cluster.local."), RecordType::A);
    assert_eq!(data(&all), ["10.244.1.5", "10.244.2.6", "10.244.3.7"]);
    assert_eq!(
        data(&z.lookup(
            &name("web-0.nginx.default.svc.cluster.local."),
            RecordType::A
        )),
        ["10.244.1.5"]
    );
    // Without a hostname, the endpoint is named by its address.
    assert_eq!(
        data(&z.lookup(
            &name("10-244-3-7.nginx.default.svc.cluster.local."),
            RecordType::A
        )),
        ["10.244.3.7"]
    );
    assert_eq!(
        z.lookup(
            &name("web-3.nginx.default.svc.cluster.local."),
            RecordType::A
        ),
        Outcome::NxDomain,
        "not ready: no record"
    );
    // publishNotReadyAddresses includes endpoints that are not ready.
    assert_eq!(
        data(&z.lookup(&name("lazy.prod.svc.cluster.local."), RecordType::A)),
        ["10.244.5.9"]
    );
    // Hostname records exist only under headless Services.
    assert_eq!(
        z.lookup(
            &name("web-0.kubia.default.svc.cluster.local."),
            RecordType::A
        ),
        Outcome::NxDomain
    );
}

#[test]
fn srv_records_for_named_ports_with_their_targets_addresses() {
    let z = zone();
    let Outcome::Answer {
        answers,
        additionals,
    } = z.lookup(
        &name("_http._tcp.kubia.default.svc.cluster.local."),
        RecordType::SRV,
    )
    else {
        panic!("no SRV")
    };
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].data.to_string(),
        "0 100 80 kubia.default.svc.cluster.local."
    );
    assert_eq!(additionals[0].data.to_string(), "10.96.0.20");
    let headless = z.lookup(
        &name("_web._tcp.nginx.default.svc.cluster.local."),
        RecordType::SRV,
    );
    assert_eq!(
        data(&headless),
        [
            "0 33 80 web-0.nginx.default.svc.cluster.local.",
            "0 33 80 web-1.nginx.default.svc.cluster.local.",
            "0 33 80 10-244-3-7.nginx.default.svc.cluster.local.",
        ]
    );
    assert_eq!(
        z.lookup(
            &name("_http._udp.kubia.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Outcome::NxDomain,
        "no such port and protocol"
    );
    assert_eq!(
        z.lookup(
            &name("_http._tcp.kubia.default.svc.cluster.local."),
            RecordType::A
        ),
        Outcome::NoData
    );
}

#[test]
fn external_names_are_cnames_for_every_type() {
    let z = zone();
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        assert_eq!(
            data(&z.lookup(&name("db.default.svc.cluster.local."), qtype)),
            ["db.example.com."]
        );
    }
}

#[test]
fn reverse_names_point_at_services_and_endpoints() {
    let z = zone();
    assert_eq!(
        data(&z.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR)),
        ["kubia.default.svc.cluster.local."]
    );
    assert_eq!(
        data(&z.lookup(&name("5.1.244.10.in-addr.arpa."), RecordType::PTR)),
        ["web-0.nginx.default.svc.cluster.local."]
    );
    assert_eq!(
        z.lookup(&name("1.1.168.192.in-addr.arpa."), RecordType::PTR),
        Outcome::NotAuthoritative,
        "someone else's address: forwarded"
    );
    assert_eq!(
        reverse_address("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"),
        Some("fd00::1".parse().unwrap())
    );
    assert_eq!(reverse_address("1.2.in-addr.arpa"), None);
}

#[test]
fn pod_names_the_schema_version_and_negative_answers() {
    let z = zone();
    assert_eq!(
        data(&z.lookup(
            &name("10-244-1-5.default.pod.cluster.local."),
            RecordType::A
        )),
        ["10.244.1.5"]
    );
    assert_eq!(
        z.lookup(&name("10-244-1.default.pod.cluster.local."), RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        data(&z.lookup(&name("dns-version.cluster.local."), RecordType::TXT)),
        ["1.1.0"]
    );
    assert_eq!(
        z.lookup(&name("nothere.default.svc.cluster.local."), RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        z.lookup(&name("default.svc.cluster.local."), RecordType::A),
        Outcome::NoData,
        "a namespace with Services exists"
    );
    assert_eq!(
        z.lookup(&name("ghost.svc.cluster.local."), RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        z.lookup(&name("svc.cluster.local."), RecordType::A),
        Outcome::NoData
    );
    assert_eq!(
        z.lookup(&name("example.com."), RecordType::A),
        Outcome::NotAuthoritative
    );
    let soa = z.soa();
    assert_eq!(soa.name.to_ascii(), "cluster.local.");
    let RData::SOA(s) = &soa.data else {
        panic!("not an SOA")
    };
    assert_eq!(s.minimum, 5, "the negative TTL");
}

/// The zone of `services` and `slices` updated one Service at a time from `zone`.
fn updated(
    zone: &Zone,
    ns: &str,
    name: &str,
    svc: Option<&KubeService>,
    slices: &[EndpointSlice],
) -> Zone {
    let mut next = zone.clone();
    next.update_service(ns, name, svc, slices);
    next
}

#[test]
fn a_deleted_service_goes_nxdomain_and_takes_its_reverse_names() {
    let before = zone();
    let after = updated(&before, "default", "kubia", None, &[]);
    let kubia = name("kubia.default.svc.cluster.local.");
    assert_eq!(after.lookup(&kubia, RecordType::A), Outcome::NxDomain);
    assert_eq!(
        after.lookup(
            &name("_http._tcp.kubia.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Outcome::NxDomain
    );
    assert_eq!(
        after.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotAuthoritative,
        "its ClusterIP is no longer the cluster's"
    );
    assert_eq!(
        data(&before.lookup(&kubia, RecordType::A)),
        ["10.96.0.20"],
        "a snapshot is kept as it was"
    );
    // The namespace exists while it has a Service.
    let namespace = name("default.svc.cluster.local.");
    assert_eq!(after.lookup(&namespace, RecordType::A), Outcome::NoData);
    let mut empty = after;
    for svc in ["nginx", "db"] {
        empty.update_service("default", svc, None, []);
    }
    assert_eq!(empty.lookup(&namespace, RecordType::A), Outcome::NxDomain);
    assert_eq!(empty.len(), 1, "prod/lazy remains");
}

#[test]
fn a_changed_cluster_ip_answers_the_new_address_and_moves_its_ptr() {
    let moved = service(
        "default",
        "kubia",
        json!({"clusterIP": "10.96.0.77", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    let z = updated(&zone(), "default", "kubia", Some(&moved), &[]);
    assert_eq!(
        data(&z.lookup(&name("kubia.default.svc.cluster.local."), RecordType::A)),
        ["10.96.0.77"]
    );
    assert_eq!(
        data(&z.lookup(
            &name("_http._tcp.kubia.default.svc.cluster.local."),
            RecordType::SRV
        )),
        ["0 100 8080 kubia.default.svc.cluster.local."]
    );
    assert_eq!(
        data(&z.lookup(&name("77.0.96.10.in-addr.arpa."), RecordType::PTR)),
        ["kubia.default.svc.cluster.local."]
    );
    assert_eq!(
        z.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotAuthoritative
    );
}

#[test]
fn scaling_a_headless_service_changes_its_answers_srv_and_ptrs() {
    let nginx = service(
        "default",
        "nginx",
        json!({"clusterIP": "None", "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}),
    );
    let scaled = |n: u8| -> Vec<EndpointSlice> {
        let eps: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"addresses": [format!("10.244.1.{}", 10 + i)], "hostname": format!("web-{i}")}))
            .collect();
        vec![slice("default", "nginx", json!(eps))]
    };
    let headless = name("nginx.default.svc.cluster.local.");
    let srv = name("_web._tcp.nginx.default.svc.cluster.local.");
    let up = updated(&zone(), "default", "nginx", Some(&nginx), &scaled(4));
    assert_eq!(
        data(&up.lookup(&headless, RecordType::A)),
        ["10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13"]
    );
    assert_eq!(data(&up.lookup(&srv, RecordType::SRV)).len(), 4);
    assert_eq!(
        data(&up.lookup(
            &name("web-3.nginx.default.svc.cluster.local."),
            RecordType::A
        )),
        ["10.244.1.13"]
    );
    assert_eq!(
        data(&up.lookup(&name("13.1.244.10.in-addr.arpa."), RecordType::PTR)),
        ["web-3.nginx.default.svc.cluster.local."]
    );
    assert_eq!(
        up.lookup(&name("5.1.244.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotAuthoritative,
        "the endpoints it had before are gone"
    );
    let down = updated(&up, "default", "nginx", Some(&nginx), &scaled(1));
    assert_eq!(
        data(&down.lookup(&headless, RecordType::A)),
        ["10.244.1.10"]
    );
    assert_eq!(
        data(&down.lookup(&srv, RecordType::SRV)),
        ["0 100 80 web-0.nginx.default.svc.cluster.local."]
    );
    assert_eq!(
        down.lookup(
            &name("web-3.nginx.default.svc.cluster.local."),
            RecordType::A
        ),
        Outcome::NxDomain
    );
    assert_eq!(
        down.lookup(&name("13.1.244.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotAuthoritative
    );
    let none = updated(&down, "default", "nginx", Some(&nginx), &[]);
    assert_eq!(
        none.lookup(&headless, RecordType::A),
        Outcome::NoData,
        "no endpoint: the name stays"
    );
    assert_eq!(none.lookup(&srv, RecordType::SRV), Outcome::NoData);
}

#[test]
fn an_address_shared_by_two_services_keeps_the_other_ones_ptr() {
    let a = service("default", "a", json!({"clusterIP": "None"}));
    let b = service("default", "b", json!({"clusterIP": "None"}));
    let ep = json!([{"addresses": ["10.244.9.9"], "hostname": "x"}]);
    let mut z = Zone::empty("cluster.local", 5);
    z.update_service(
        "default",
        "a",
        Some(&a),
        &[slice("default", "a", ep.clone())],
    );
    z.update_service("default", "b", Some(&b), &[slice("default", "b", ep)]);
    let reverse = name("9.9.244.10.in-addr.arpa.");
    assert_eq!(
        data(&z.lookup(&reverse, RecordType::PTR)),
        [
            "x.a.default.svc.cluster.local.",
            "x.b.default.svc.cluster.local."
        ]
    );
    z.update_service("default", "a", None, []);
    assert_eq!(
        data(&z.lookup(&reverse, RecordType::PTR)),
        ["x.b.default.svc.cluster.local."]
    );
}

#[test]
fn updates_ignore_other_services_slices_and_match_a_whole_build() {
    let kubia = service("default", "kubia", json!({"clusterIP": "None"}));
    let other = slice("default", "other", json!([{"addresses": ["10.244.7.7"]}]));
    let mut z = Zone::empty("cluster.local", 5);
    z.update_service("default", "kubia", Some(&kubia), [&other]);
    assert_eq!(
        z.lookup(&name("kubia.default.svc.cluster.local."), RecordType::A),
        Outcome::NoData
    );
    assert_eq!(z, Zone::build("cluster.local", 5, [&kubia], [&other]));
}
