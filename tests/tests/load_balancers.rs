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

/// One HTTP/1.0 GET to `addr`: the response, or the error.
fn get(addr: SocketAddr) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
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
