//! Cluster DNS end to end: busybox pods on two nodes resolve Services by short name, by FQDN
//! and across namespaces, an ExternalName as its CNAME, a name outside the cluster through a
//! fake upstream resolver on the cluster's own test network (nothing leaves the machine), and a
//! Service created after the pods; their /etc/resolv.conf is the kubelet's. The lookups go
//! through the `kube-dns` Service's address, which each node's datapath sends to its own
//! responder. Needs root.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::json;
use skiff_e2e::cluster::{self, Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

/// The fake upstream's port, on the host side of the node bridge (172.31.<index>.1).
const UPSTREAM_PORT: u16 = 10_053;
/// What the fake upstream answers for every A question.
const OUTSIDE_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);

/// A resolver for `*.example.` on the cluster's bridge: A questions get [`OUTSIDE_ANSWER`],
/// others an empty answer; it counts the questions it got.
fn fake_upstream(addr: SocketAddr) -> Arc<AtomicUsize> {
    let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let mut reply = Message::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            reply.metadata.recursion_desired = request.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            for q in &request.queries {
                reply.add_query(q.clone());
                let name = q.name().to_ascii().to_ascii_lowercase();
                if !name.ends_with("example.") {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                } else if q.query_type() == RecordType::A {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(OUTSIDE_ANSWER.into()),
                    ));
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    asked
}

/// `nslookup NAME` in pod `pod`: its output (busybox prints the answers after `Name:`), or
/// the failure text.
fn nslookup(k: &Kubectl, pod: &str, name: &str) -> String {
    let out = k.output(
        &[
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            &format!("nslookup {name} 2>&1; echo rc=$?"),
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lookups_go_to_the_nodes_own_responder_in_ebpf_mode() {
    require_root!("network namespaces, containers, BPF");
    pods_on_every_node_resolve_services("ebpf", 217);
}

#[test]
fn lookups_go_to_the_nodes_own_responder_in_iptables_mode() {
    require_root!("network namespaces, containers, iptables");
    pods_on_every_node_resolve_services("iptables", 218);
}

#[test]
fn lookups_go_to_the_nodes_own_responder_in_nftables_mode() {
    require_root!("network namespaces, containers, nftables");
    pods_on_every_node_resolve_services("nftables", 219);
}

fn pods_on_every_node_resolve_services(mode: &str, index: u8) {
    let upstream = SocketAddr::from((Ipv4Addr::new(172, 31, index, 1), UPSTREAM_PORT));
    let mut c = Guard::test(&Options {
        proxy_mode: mode.into(),
        agent_args: vec![format!("--dns-upstream={upstream}")],
        ..Options::test(&format!("tdns{}", &mode[..1]), index, 2)
    });
    // The bridge exists once the cluster is up; the agents only send to it when asked.
    let asked = fake_upstream(upstream);
    let k = Kubectl(c.state.kubeconfig.clone());

    let dns = k.json(&["-n", "kube-system", "get", "svc", "kube-dns"]);
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10", "{dns}");
    wait_for(
        "the kube-dns EndpointSlice to list both nodes' responders",
        Duration::from_secs(60),
        || {
            let args = [
                "-n",
                "kube-system",
                "get",
                "endpointslice",
                "kube-dns",
                "-o",
                "json",
            ];
            let slice: serde_json::Value =
                serde_json::from_slice(&k.output(&args, None).stdout).unwrap_or_default();
            slice["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["conditions"]["ready"] == true))
        },
    );

    k.run(&["create", "namespace", "prod"]);
    k.run(&["create", "service", "clusterip", "kubia", "--tcp=80:8080"]);
    k.run(&[
        "-n",
        "prod",
        "create",
        "service",
        "clusterip",
        "db",
        "--tcp=5432",
    ]);
    k.run(&[
        "create",
        "service",
        "externalname",
        "docs",
        "--external-name=docs.example",
    ]);
    let kubia_ip = k.json(&["get", "svc", "kubia"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let db_ip = k.json(&["-n", "prod", "get", "svc", "db"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();

    let nodes: Vec<String> = c.state.nodes.iter().map(|n| n.name.clone()).collect();
    for (i, node) in nodes.iter().enumerate() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("client-{i}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                "command": ["sleep", "3600"]}]}});
        k.apply(&pod.to_string());
    }
    for i in 0..nodes.len() {
        k.wait_phase(&format!("client-{i}"), "Running", Duration::from_secs(90));
    }

    let resolv = k.run(&["exec", "client-0", "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(
        resolv,
        "search default.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 10.96.0.10\n\
         options ndots:5\n"
    );

    for i in 0..nodes.len() {
        let pod = format!("client-{i}");
        // busybox's nslookup applies the search list to dotless names only (glibc's
        // resolver also to `kubia.default`, having fewer dots than ndots:5).
        for name in [
            "kubia",
            "kubia.default.svc.cluster.local",
            "KUBIA.Default.SVC.cluster.local",
        ] {
            let out = nslookup(&k, &pod, name);
            assert!(
                out.contains(&format!("Address: {kubia_ip}")),
                "{pod}: {name}: {out}"
            );
        }
        let out = nslookup(&k, &pod, "db.prod.svc.cluster.local");
        assert!(
            out.contains(&format!("Address: {db_ip}")),
            "{pod}: db.prod: {out}"
        );
        let out = nslookup(&k, &pod, "nothere.default.svc.cluster.local");
        assert!(
            !out.contains("rc=0"),
            "{pod}: a missing Service must not resolve: {out}"
        );
    }

    // Outside the cluster domain: forwarded to the fake upstream; an ExternalName is a CNAME
    // to such a name.
    let before = asked.load(Ordering::SeqCst);
    let out = nslookup(&k, "client-1", "www.example.");
    assert!(out.contains(&format!("Address: {OUTSIDE_ANSWER}")), "{out}");
    assert!(
        asked.load(Ordering::SeqCst) > before,
        "the upstream was asked"
    );
    let out = nslookup(&k, "client-0", "docs.default.svc.cluster.local");
    assert!(out.contains("docs.example"), "the CNAME: {out}");

    // Headless: the Service's name is its pods' addresses, a pod with hostname and subdomain
    // has its own name, and a named port its SRV records.
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nginx"},
            "spec": {"clusterIP": "None", "selector": {"app": "nginx"},
                "ports": [{"name": "web", "port": 80}]}})
        .to_string(),
    );
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "nginx"}},
            "spec": {"hostname": "web-0", "subdomain": "nginx", "nodeName": nodes[1],
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
        .to_string(),
    );
    let web = k.wait_phase("web-0", "Running", Duration::from_secs(90));
    let web_ip = web["status"]["podIP"].as_str().unwrap().to_owned();
    wait_for(
        "the headless Service to resolve to its pod",
        Duration::from_secs(30),
        || {
            nslookup(&k, "client-0", "nginx.default.svc.cluster.local")
                .contains(&format!("Address: {web_ip}"))
        },
    );
    let out = nslookup(&k, "client-0", "web-0.nginx.default.svc.cluster.local");
    assert!(out.contains(&format!("Address: {web_ip}")), "{out}");
    let out = nslookup(
        &k,
        "client-1",
        "-type=srv _web._tcp.nginx.default.svc.cluster.local",
    );
    assert!(
        out.contains("80 web-0.nginx.default.svc.cluster.local"),
        "SRV: {out}"
    );
    // PTR: the Service address names the Service.
    let out = nslookup(&k, "client-1", &kubia_ip);
    assert!(
        out.contains("kubia.default.svc.cluster.local"),
        "PTR: {out}"
    );

    // dnsPolicy None takes only the pod's dnsConfig.
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "own-dns"},
            "spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.53"],
                "searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]},
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
        .to_string(),
    );
    k.wait_phase("own-dns", "Running", Duration::from_secs(90));
    assert_eq!(
        k.run(&["exec", "own-dns", "--", "cat", "/etc/resolv.conf"]),
        "search corp.example\nnameserver 192.0.2.53\noptions ndots:2\n"
    );

    // The first node's agent stops (its pods keep running): their lookups go to the other
    // node's responder until it is back. With the agent away there is no exec or logs on that
    // node, so a pod there writes each lookup, stamped with the second it started, to a host
    // directory.
    let out_dir = tempfile::tempdir().unwrap();
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "looker"},
            "spec": {"nodeName": nodes[0], "containers": [{"name": "c", "image": "busybox",
                "command": ["sh", "-c", "while true; do s=$(date +%s); \
                    r=$(nslookup kubia 2>&1); printf '%s\\n%s\\n' \"$s\" \"$r\" > /out/tmp; \
                    mv /out/tmp /out/last; sleep 0.2; done"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
                "volumes": [{"name": "out", "hostPath": {"path": out_dir.path(), "type": "Directory"}}]}})
        .to_string(),
    );
    k.wait_phase("looker", "Running", Duration::from_secs(90));
    let last = || std::fs::read_to_string(out_dir.path().join("last")).unwrap_or_default();
    let started = |text: &str| text.lines().next().and_then(|l| l.parse::<u64>().ok());
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    wait_for("the looker's first lookup", Duration::from_secs(30), || {
        started(&last()).is_some()
    });
    cluster::stop_agent(&c.state.nodes[0]);
    let stopped = now();
    let mut result = String::new();
    wait_for(
        "a lookup started after the agent stopped",
        Duration::from_secs(30),
        || {
            result = last();
            started(&result).is_some_and(|s| s >= stopped + 2)
        },
    );
    assert!(
        result.contains(&format!("Address: {kubia_ip}")),
        "with the agent stopped: {result}"
    );
    cluster::start_agent(&mut c.state.nodes[0]).unwrap();
    c.save().unwrap();

    // A Service made now resolves on both nodes, and is gone once deleted.
    k.run(&["create", "service", "clusterip", "late", "--tcp=80"]);
    let late_ip = k.json(&["get", "svc", "late"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..nodes.len() {
        let pod = format!("client-{i}");
        wait_for(
            &format!("{pod} to resolve the new Service"),
            Duration::from_secs(10),
            || nslookup(&k, &pod, "late").contains(&format!("Address: {late_ip}")),
        );
    }
    k.run(&["delete", "service", "late"]);
    wait_for(
        "the deleted Service to stop resolving",
        Duration::from_secs(10),
        || !nslookup(&k, "client-0", "late").contains(&late_ip),
    );
}
