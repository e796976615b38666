//! The built-in Ingress controller end to end: two Deployments of kubia behind two Services and
//! one Ingress of the default class `skiff`, reached from outside the nodes (the host side of
//! the cluster's bridge) on every node's ports 80 and 443. It routes by host and path, sends
//! what no rule matches to the default backend, answers 503 for a route to a missing Service
//! or port (with an Event) while the other routes work, terminates TLS for two hosts with
//! their own certificates chosen by SNI (a third, whose Secret is no certificate, gets the
//! default one and an Event), upgrades a WebSocket to a Python echo server, lists the nodes' addresses in the Ingress's status, and serves
//! a rolling update of a backend with no failed request. Needs root.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::wait_for;
use skiff_test_support::require_root;

/// One HTTP/1.1 request for `host` and `path` to `addr`: the whole response, or the error.
fn http(addr: SocketAddr, host: &str, path: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    attempt().unwrap_or_else(|e| format!("error: {e}"))
}

/// One HTTPS request with SNI `host`, trusting only `roots`: the response and the
/// certificate the server presented, or the error.
fn https(addr: SocketAddr, host: &str, roots: &[Vec<u8>]) -> Result<(String, Vec<u8>), String> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // The server may close without close_notify after the response; what was read counts.
    let _ = tls.read_to_end(&mut out);
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    Ok((String::from_utf8_lossy(&out).into_owned(), cert))
}

/// A self-signed certificate for `host`, as PEM files in `dir`: (cert path, key path, DER).
fn certificate(dir: &std::path::Path, host: &str) -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let (crt, key) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    std::fs::write(&crt, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (
        crt.display().to_string(),
        key.display().to_string(),
        c.cert.der().to_vec(),
    )
}

const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: kubia}
spec:
  defaultBackend: {service: {name: kubia-b, port: {number: 80}}}
  tls:
  - {hosts: [a.example.com], secretName: a-tls}
  - {hosts: [b.example.com], secretName: b-tls}
  - {hosts: [c.example.com], secretName: not-tls}
  rules:
  - host: a.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: kubia-a, port: {number: 80}}}}
      - {path: /b, pathType: Prefix, backend: {service: {name: kubia-b, port: {name: http}}}}
      - {path: /missing, pathType: Exact, backend: {service: {name: nothing, port: {number: 80}}}}
      - {path: /noport, pathType: Exact, backend: {service: {name: kubia-a, port: {number: 81}}}}
  - host: b.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: kubia-b, port: {number: 80}}}}
  - host: ws.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
"#;

/// A WebSocket echo server in Python's standard library (the `python:3` image), port 8080.
const WS_ECHO: &str = r#"
import base64, hashlib, socket, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(c):
    f = c.makefile("rb")
    key = None
    while True:
        line = f.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    if key is None:
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return c.close()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n").encode())
    while True:
        h = f.read(2)
        if len(h) < 2:
            return c.close()
        op, n = h[0] & 15, h[1] & 127
        if n == 126:
            n = int.from_bytes(f.read(2), "big")
        elif n == 127:
            n = int.from_bytes(f.read(8), "big")
        mask = f.read(4) if h[1] & 128 else bytes(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return c.close()
        size = bytes([len(payload)]) if len(payload) < 126 else bytes([126]) + len(payload).to_bytes(2, "big")
        c.sendall(bytes([0x80 | op]) + size + payload)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 8080))
s.listen(16)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"#;

/// Sends `messages` over a WebSocket to `ws://{host}/` at `addr` and returns the echoes.
fn websocket_echo(addr: SocketAddr, host: &str, messages: &[&str]) -> Result<Vec<String>, String> {
    use futures::{SinkExt as _, StreamExt as _};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let tcp =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{host}/echo"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut echoes = Vec::new();
        for m in messages {
            ws.send(tokio_tungstenite::tungstenite::Message::text(*m))
                .await
                .map_err(|e| e.to_string())?;
            let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .map_err(|_| "no echo".to_owned())?
                .ok_or("closed")?
                .map_err(|e| e.to_string())?;
            echoes.push(reply.into_text().map_err(|e| e.to_string())?.to_string());
        }
        let _ = ws.close(None).await;
        Ok(echoes)
    })
}

#[test]
fn ingress_routes_hosts_paths_and_tls_from_outside_the_nodes() {
    require_root!("network namespaces, containers, BPF");
    let c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        ..Options::test("ting", 230, 2)
    });
    let k = Kubectl(c.state.kubeconfig.clone());
    for name in ["kubia-a", "kubia-b"] {
        k.run(&[
            "create",
            "deployment",
            name,
            "--image=kubia:v1",
            "--replicas=2",
        ]);
        k.run(&["create", "service", "clusterip", name, "--tcp=80:8080"]);
    }
    let echo = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"matchLabels": {"app": "echo"}},
            "template": {"metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{"name": "echo", "image": "python:3",
                    "command": ["python3", "-u", "-c", WS_ECHO],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}});
    k.apply(&echo.to_string());
    k.run(&["create", "service", "clusterip", "echo", "--tcp=80:8080"]);
    // `kubectl create service` names the port `80-8080`; the Ingress names it `http`.
    k.run(&[
        "patch",
        "service",
        "kubia-b",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/ports/0/name", "value": "http"}]"#,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (a_crt, a_key, a_der) = certificate(dir.path(), "a.example.com");
    let (b_crt, b_key, b_der) = certificate(dir.path(), "b.example.com");
    for (name, crt, key) in [("a-tls", &a_crt, &a_key), ("b-tls", &b_crt, &b_key)] {
        k.run(&[
            "create",
            "secret",
            "tls",
            name,
            &format!("--cert={crt}"),
            &format!("--key={key}"),
        ]);
    }
    // Not a kubernetes.io/tls Secret: c.example.com gets the default certificate.
    k.run(&[
        "create",
        "secret",
        "generic",
        "not-tls",
        "--from-literal=tls.crt=nonsense",
    ]);
    k.apply(INGRESS);
    assert_eq!(
        k.run(&[
            "get",
            "ingress",
            "kubia",
            "-o",
            "jsonpath={.spec.ingressClassName}"
        ]),
        "skiff",
        "the default class is given"
    );
    for (name, n) in [("kubia-a", 2), ("kubia-b", 2), ("echo", 1)] {
        wait_for(
            &format!("{n} ready endpoints of {name}"),
            Duration::from_secs(90),
            || k.ready_endpoints(name) == n,
        );
    }

    let mut node_ips: Vec<String> = c.state.nodes.iter().map(|n| n.ip.to_string()).collect();
    node_ips.sort();
    wait_for("the Ingress's addresses", Duration::from_secs(30), || {
        let ips = k.run(&[
            "get",
            "ingress",
            "kubia",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        let mut got: Vec<&str> = ips.split_whitespace().collect();
        got.sort_unstable();
        got == node_ips
    });
    let table = k.run(&["get", "ingress", "kubia"]);
    assert!(
        table.contains("skiff") && table.contains("80, 443") && table.contains(&node_ips.join(",")),
        "{table}"
    );

    for ip in &node_ips {
        let http_addr = SocketAddr::new(ip.parse().unwrap(), 80);
        let mut last = String::new();
        wait_for(
            &format!("a.example.com at {http_addr}"),
            Duration::from_secs(30),
            || {
                last = http(http_addr, "a.example.com", "/");
                last.contains("You've hit kubia-a-")
            },
        );
        for (host, path, want) in [
            ("a.example.com", "/anything", "You've hit kubia-a-"),
            ("a.example.com", "/b/x", "You've hit kubia-b-"),
            ("b.example.com", "/", "You've hit kubia-b-"),
            // No rule for the host: the default backend.
            ("unknown.example.com", "/", "You've hit kubia-b-"),
        ] {
            let got = http(http_addr, host, path);
            assert!(got.contains(want), "{host}{path} at {http_addr}: {got}");
        }
        let missing = http(http_addr, "a.example.com", "/missing");
        assert!(
            missing.starts_with("HTTP/1.1 503")
                && missing.contains("\"default/nothing\" not found"),
            "{missing}"
        );

        let noport = http(http_addr, "a.example.com", "/noport");
        assert!(
            noport.starts_with("HTTP/1.1 503") && noport.contains("does not have port 81"),
            "{noport}"
        );

        let https_addr = SocketAddr::new(ip.parse().unwrap(), 443);
        let roots = [a_der.clone(), b_der.clone()];
        for (host, der, want) in [
            ("a.example.com", &a_der, "You've hit kubia-a-"),
            ("b.example.com", &b_der, "You've hit kubia-b-"),
        ] {
            let mut last = Err(String::new());
            wait_for(
                &format!("{host}'s certificate at {https_addr}"),
                Duration::from_secs(60),
                || {
                    last = https(https_addr, host, &roots);
                    last.as_ref()
                        .is_ok_and(|(body, cert)| cert == der && body.contains(want))
                },
            );
        }
    }

    // A WebSocket through the proxy: the upgrade reaches the pod, messages come back.
    let http_addr = SocketAddr::new(node_ips[1].parse().unwrap(), 80);
    let echoes = websocket_echo(http_addr, "ws.example.com", &["hello", "again"]);
    assert_eq!(echoes, Ok(vec!["hello".to_owned(), "again".to_owned()]));

    // The host whose Secret is no certificate is served with the default one, which a client
    // trusting the two real certificates refuses.
    let https_addr = SocketAddr::new(node_ips[0].parse().unwrap(), 443);
    let fallback = https(https_addr, "c.example.com", &[a_der.clone(), b_der.clone()]);
    assert!(fallback.is_err(), "{fallback:?}");
    wait_for(
        "the InvalidTLSSecret Event",
        Duration::from_secs(30),
        || {
            k.items(&["get", "events"]).iter().any(|e| {
                e["involvedObject"]["kind"] == "Ingress"
                    && e["reason"] == "InvalidTLSSecret"
                    && e["message"].as_str().is_some_and(|m| {
                        m.contains("default/not-tls") && m.contains("kubernetes.io/tls")
                    })
            })
        },
    );

    // The broken route is told in an Event on the Ingress.
    wait_for(
        "the BackendUnavailable Event",
        Duration::from_secs(30),
        || {
            k.items(&["get", "events"]).iter().any(|e| {
                e["involvedObject"]["kind"] == "Ingress"
                    && e["reason"] == "BackendUnavailable"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("default/nothing"))
            })
        },
    );

    // A rolling update of kubia-a under a steady stream of requests: none fails.
    let addr = SocketAddr::new(node_ips[0].parse().unwrap(), 80);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let got = http(addr, "a.example.com", "/");
                if got.starts_with("HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(got);
                }
            }
            failures
        })
    };
    k.run(&["set", "image", "deployment/kubia-a", "kubia=kubia:v2"]);
    k.run(&["rollout", "status", "deployment/kubia-a", "--timeout=120s"]);
    wait_for("only v2 answering", Duration::from_secs(60), || {
        (0..4).all(|_| http(addr, "a.example.com", "/").contains("This is v2"))
    });
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the rollout: {failures:?}"
    );
}
