//! LoadBalancer Services end to end, as the seeds' first walkthrough uses them: `kubectl expose
//! --type=LoadBalancer` gets an EXTERNAL-IP (without address pools, the nodes' addresses, as
//! k3s's ServiceLB gives), the app answers there from outside the nodes (the host side of the
//! cluster's bridge), and the address goes when the Service stops being a LoadBalancer. Needs
//! root.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

/// One HTTP/1.0 GET of `/` to `addr`: the response, or the error.
fn get(addr: SocketAddr) -> String {
    get_path(addr, "/")
}

/// One HTTP/1.0 GET of `path` to `addr`: the response, or the error.
fn get_path(addr: SocketAddr, path: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    attempt().unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn expose_type_load_balancer_gets_an_external_ip_that_answers() {
    require_root!("network namespaces, containers, BPF");
    let c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        ..Options::test("tlb", 220, 2)
    });
    let k = Kubectl(c.state.kubeconfig.clone());
    k.run(&[
        "create",
        "deployment",
        "kubia",
        "--image=kubia:v1",
        "--replicas=2",
    ]);
    k.run(&[
        "expose",
        "deployment",
        "kubia",
        "--type=LoadBalancer",
        "--name",
        "kubia-http",
        "--port=80",
        "--target-port=8080",
    ]);
    let mut node_ips: Vec<String> = c.state.nodes.iter().map(|n| n.ip.to_string()).collect();
    node_ips.sort();
    let mut external = String::new();
    wait_for("the EXTERNAL-IP", Duration::from_secs(30), || {
        external = k.run(&[
            "get",
            "svc",
            "kubia-http",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        !external.is_empty()
    });
    let mut got: Vec<&str> = external.split_whitespace().collect();
    got.sort_unstable();
    assert_eq!(got, node_ips, "without pools: the Ready nodes' addresses");
    let table = k.run(&["get", "svc", "kubia-http"]);
    assert!(
        table.contains(&node_ips.join(",")) && !table.contains("<pending>"),
        "{table}"
    );
    wait_for("2 ready endpoints", Duration::from_secs(90), || {
        k.ready_endpoints("kubia-http") == 2
    });
    for ip in &node_ips {
        let addr = SocketAddr::new(ip.parse().unwrap(), 80);
        let mut last = String::new();
        wait_for(
            &format!("the app to answer at {addr}"),
            Duration::from_secs(30),
            || {
                last = get(addr);
                last.contains("You've hit kubia-")
            },
        );
    }

    // No longer a LoadBalancer: the address is released.
    k.run(&[
        "patch",
        "svc",
        "kubia-http",
        "-p",
        r#"{"spec": {"type": "NodePort"}}"#,
    ]);
    wait_for(
        "the ingress to be released",
        Duration::from_secs(30),
        || {
            k.run(&[
                "get",
                "svc",
                "kubia-http",
                "-o",
                "jsonpath={.status.loadBalancer.ingress}",
            ])
            .trim()
            .is_empty()
        },
    );
}

/// The status code of an HTTP response.
fn status(response: &str) -> Option<&str> {
    response.split_whitespace().nth(1)
}

/// The peer address a [`PEER_SERVER`] response names (busybox httpd listens on IPv6 and
/// writes IPv4 peers as `[::ffff:a.b.c.d]`).
fn peer_of(response: &str) -> Option<String> {
    let line = response.lines().find_map(|l| l.strip_prefix("peer="))?;
    let addr = line.trim_start_matches('[').trim_end_matches(']');
    Some(addr.strip_prefix("::ffff:").unwrap_or(addr).to_owned())
}

/// A web server printing each request's peer address: busybox httpd running a CGI script
/// from a ConfigMap (`REMOTE_ADDR`).
const PEER_SERVER: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: peer-cgi}
data:
  peer: |
    #!/bin/sh
    printf 'Content-Type: text/plain\r\n\r\npeer=%s\n' "$REMOTE_ADDR"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: peer}
spec:
  replicas: 1
  selector: {matchLabels: {app: peer}}
  template:
    metadata: {labels: {app: peer}}
    spec:
      containers:
      - name: httpd
        image: busybox
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
        volumeMounts: [{name: cgi, mountPath: /www/cgi-bin}]
      volumes:
      - name: cgi
        configMap: {name: peer-cgi, defaultMode: 0755}
---
apiVersion: v1
kind: Service
metadata: {name: peer}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: peer}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_answers_health_checks() {
    require_root!("network namespaces, containers, BPF");
    let c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        ..Options::test("tloc", 221, 2)
    });
    let k = Kubectl(c.state.kubeconfig.clone());
    k.apply(PEER_SERVER);
    wait_for("1 ready endpoint", Duration::from_secs(90), || {
        k.ready_endpoints("peer") == 1
    });
    let svc = k.json(&["get", "svc", "peer"]);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let health_port = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("no healthCheckNodePort: {svc}")) as u16;
    assert_ne!(node_port, health_port);
    let pod = &k.items(&["get", "pods", "-l", "app=peer"])[0];
    let pod_node = pod["spec"]["nodeName"].as_str().unwrap().to_owned();
    let node_ip = |name: &str| c.state.nodes.iter().find(|n| n.name == name).unwrap().ip;
    let with = node_ip(&pod_node);
    let without = c
        .state
        .nodes
        .iter()
        .find(|n| n.name != pod_node)
        .unwrap()
        .ip;
    // The host is the client, outside the nodes: its address on the nodes' bridge (.1).
    let [a, b, net, _] = with.octets();
    let client = std::net::Ipv4Addr::new(a, b, net, 1);

    // The node with the endpoint serves the nodePort, and the pod sees the client itself.
    let mut last = String::new();
    wait_for(
        &format!("the nodePort to answer on {pod_node}"),
        Duration::from_secs(30),
        || {
            last = get_path(SocketAddr::new(with.into(), node_port), "/cgi-bin/peer");
            last.contains("peer=")
        },
    );
    assert_eq!(
        peer_of(&last),
        Some(client.to_string()),
        "the client's address reaches the pod: {last}"
    );
    // The load-balancer IPs (the nodes' addresses, without pools) behave the same.
    let lb = get_path(SocketAddr::new(with.into(), 80), "/cgi-bin/peer");
    assert_eq!(peer_of(&lb), Some(client.to_string()), "{lb}");
    // The node without one refuses: outside traffic does not hop to another node.
    let refused = get_path(SocketAddr::new(without.into(), node_port), "/cgi-bin/peer");
    assert!(refused.starts_with("error:"), "{refused}");
    // The health check port says which node to send traffic to, as kube-proxy's does.
    let with_check = get(SocketAddr::new(with.into(), health_port));
    assert_eq!(status(&with_check), Some("200"), "{with_check}");
    assert!(
        with_check.contains(r#""localEndpoints":1"#) && with_check.contains(r#""name":"peer""#),
        "{with_check}"
    );
    let mut without_check = String::new();
    wait_for("the other node's 503", Duration::from_secs(10), || {
        without_check = get(SocketAddr::new(without.into(), health_port));
        status(&without_check) == Some("503")
    });
    assert!(
        without_check.contains(r#""localEndpoints":0"#),
        "{without_check}"
    );

    // Cluster: every node serves the nodePort (the other one through a hop, masqueraded), and
    // the health check port is released.
    k.run(&[
        "patch",
        "svc",
        "peer",
        "-p",
        r#"{"spec": {"externalTrafficPolicy": "Cluster"}}"#,
    ]);
    let svc = k.json(&["get", "svc", "peer"]);
    assert!(svc["spec"].get("healthCheckNodePort").is_none(), "{svc}");
    wait_for(
        "the other node to serve the nodePort",
        Duration::from_secs(30),
        || get_path(SocketAddr::new(without.into(), node_port), "/cgi-bin/peer").contains("peer="),
    );
    wait_for(
        "the health check port to close",
        Duration::from_secs(30),
        || get(SocketAddr::new(with.into(), health_port)).starts_with("error:"),
    );
}
