//! `kubectl logs` and `kubectl exec` through skiff-control's pods/log and pods/exec, and
//! port-forward through pods/portforward (with a WebSocket client speaking the channel
//! protocols, and with the real kubectl speaking SPDY: tunnelled in a WebSocket by kubectl
//! 1.37, a plain upgrade by 1.29), proxied to the node's HTTPS endpoint
//! (agent/src/kubelet/server.rs).
//!
//! The pod manager that maps API pods to running containers is not part of these tests: the
//! node's endpoint runs in this process with a small directory that maps the test pod to a
//! real busybox container run by the agent's runtime (so exec is real: libcontainer joins the
//! container; and port-forward enters the pod's network namespace). Everything between the
//! client and the container is the real code: kubectl or the WebSocket client, the API
//! server's authorization and proxy, the websocket protocols, TLS and the kubelet's
//! authentication and authorization. Needs root (containers); skipped with a message otherwise.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use skiff_agent::kubelet::auth::{ApiReviewer, KubeletAuth};
use skiff_agent::kubelet::directory::{LocateError, Located, PodDirectory};
use skiff_agent::kubelet::identity::rotation::CertSlot;
use skiff_agent::kubelet::identity::store::KeyedCert;
use skiff_agent::kubelet::server::{self, ServerArgs, ServerConfig};
use skiff_agent::kubelet::spdy;
use skiff_agent::runtime::busybox_pod::BusyboxPod;
use skiff_agent::runtime::{Container, Runtime};
use skiff_e2e::{agent_bin, wait_for, ControlPlane};
use skiff_test_support::{eventually_within, require_root};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;

/// One pod `default/<name>` with one container `app`.
struct OnePod {
    name: &'static str,
    container: Container,
}

impl PodDirectory for OnePod {
    fn pods(&self) -> Vec<Pod> {
        Vec::new()
    }

    fn pod_uid(&self, ns: &str, pod: &str) -> Result<String, LocateError> {
        if (ns, pod) != ("default", self.name) {
            return Err(LocateError::PodNotFound {
                namespace: ns.into(),
                name: pod.into(),
            });
        }
        Ok(self.container.pod_uid.clone())
    }

    fn locate(&self, ns: &str, pod: &str, c: Option<&str>) -> Result<Located, LocateError> {
        let pod_uid = self.pod_uid(ns, pod)?;
        if c.is_some_and(|c| c != "app") {
            return Err(LocateError::ContainerNotFound {
                pod: pod.into(),
                container: c.unwrap_or_default().into(),
            });
        }
        Ok(Located {
            pod_uid,
            container: "app".into(),
            running: Some(self.container.clone()).filter(Container::is_running),
            log: Some(self.container.log_path.clone()),
            previous_log: None,
        })
    }
}

#[test]
fn kubectl_logs_and_exec_through_the_api_server() {
    require_root!("the exec'd container");
    let cp = ControlPlane::start();
    let pod = BusyboxPod::start(
        agent_bin(),
        &format!("streams-{}", std::process::id()),
        "streams-host",
        "echo line 1; echo line 2; while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo bye",
    );
    let container = pod.container.clone();

    let (rt, shutdown) = serve_node(
        &cp,
        "stream-node",
        &pod.root(),
        Arc::new(OnePod {
            name: "streams",
            container: container.clone(),
        }),
        pod.runtime.clone(),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "streams"},
                "spec": {"nodeName": "stream-node", "containers": [{"name": "app", "image": "busybox"}]}}
               "#,
        ),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unscheduled"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}"#,
        ),
    );

    wait_for(
        "the node endpoint and the first log lines",
        Duration::from_secs(20),
        || cp.kubectl_output(&["logs", "streams"], None).stdout == b"line 1\nline 2\n",
    );
    assert_eq!(cp.kubectl(&["logs", "streams", "--tail=1"]), "line 2\n");
    assert_eq!(
        cp.kubectl(&["logs", "streams", "-c", "app", "--limit-bytes=4"]),
        "line"
    );

    // exec: output, exit code, stdin.
    let out = cp.kubectl_output(
        &["exec", "streams", "--", "sh", "-c", "hostname; exit 3"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streams-host\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cp.kubectl_stdin(
            &["exec", "-i", "streams", "--", "cat"],
            Some("through stdin\n")
        ),
        "through stdin\n"
    );

    // logs -f follows until the container ends; exec makes it end.
    let mut follow = cp.kubectl_cmd(&["logs", "-f", "streams"]);
    let mut follow = follow
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "line 1\n");
    cp.kubectl(&["exec", "streams", "--", "touch", "/tmp/stop"]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert_eq!(rest, "line 2\nbye\n");
    assert!(follow.wait().unwrap().success());

    // Errors as kubectl users know them.
    let err = cp.kubectl_fails(&["logs", "nosuch"], None);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = cp.kubectl_fails(&["logs", "streams", "-c", "wrong"], None);
    assert!(
        err.contains("container wrong is not valid for pod streams"),
        "{err}"
    );
    let err = cp.kubectl_fails(&["logs", "unscheduled"], None);
    assert!(err.contains("does not have a host assigned"), "{err}");
    let err = cp.kubectl_fails(&["exec", "unscheduled", "--", "true"], None);
    assert!(err.contains("does not have a host assigned"), "{err}");
    // The container has ended: exec is refused by the node.
    let err = cp.kubectl_fails(&["exec", "streams", "--", "true"], None);
    assert!(err.contains("is not running"), "{err}");

    shutdown.cancel();
    drop(rt);
}

/// Serves the node endpoint of Node `node` in this process (on a runtime it returns, with the
/// token that stops it) and registers the Node with it as its kubelet at 127.0.0.1, as a
/// joined node serves it: a serving certificate from the cluster CA (what its kubelet-serving
/// CSR would get), callers authenticated by client certificates of that CA and authorized by
/// SubjectAccessReviews through the API.
fn serve_node(
    cp: &ControlPlane,
    node: &str,
    root: &std::path::Path,
    directory: Arc<dyn PodDirectory>,
    runtime: Arc<Runtime>,
) -> (tokio::runtime::Runtime, CancellationToken) {
    let pki = cp.dir.path().join("data/pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let (serving_cert, serving_key) = serving_certificate(&pki, node);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reviews = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    let security = server::ServerSecurity {
        auth: Arc::new(KubeletAuth::new(
            node,
            Some(Arc::new(ApiReviewer(reviews))),
            None,
        )),
        client_ca_pem: Some(ca_pem),
        serving: Some(
            CertSlot::new(Some(KeyedCert::new(&serving_cert, &serving_key).unwrap())).unwrap(),
        ),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ServerConfig {
        args: ServerArgs {
            kubelet_port: port,
            kubelet_address: "127.0.0.1".parse().unwrap(),
            read_only_port: 0,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
        },
        root_dir: root.to_owned(),
        token: String::new(),
        tls_sans: vec![],
    };
    let shutdown = CancellationToken::new();
    rt.spawn(server::serve_with(
        config,
        security,
        directory,
        runtime,
        shutdown.clone(),
    ));

    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{node}"}}}}"#
        )),
    );
    let status = format!(
        r#"{{"status": {{"addresses": [{{"type": "InternalIP", "address": "127.0.0.1"}}],
            "daemonEndpoints": {{"kubeletEndpoint": {{"Port": {port}}}}}}}}}"#
    );
    cp.kubectl(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    (rt, shutdown)
}

type ApiSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of the API server with the client certificate of a kubeconfig (the
/// admin's, or a user's from `skiff-control user`).
struct ApiSockets {
    tls: Arc<rustls::ClientConfig>,
    port: u16,
}

impl ApiSockets {
    fn new(kubeconfig: &std::path::Path, port: u16) -> Self {
        use base64::Engine as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let kc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
        let pem = |v: &serde_yaml::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("a kubeconfig field"))
                .unwrap()
        };
        let ca = pem(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
        let cert = pem(&kc["users"][0]["user"]["client-certificate-data"]);
        let key = pem(&kc["users"][0]["user"]["client-key-data"]);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        Self {
            tls: Arc::new(tls),
            port,
        }
    }

    /// Opens `path` as a websocket offering `protocol`; the socket and the protocol the server
    /// chose.
    async fn open(
        &self,
        path: &str,
        protocol: Option<&str>,
    ) -> Result<(ApiSocket, Option<String>), tungstenite::Error> {
        let mut request = format!("wss://127.0.0.1:{}{path}", self.port)
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let (socket, response) = tokio_tungstenite::client_async(request, tls).await?;
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((socket, chosen))
    }

    /// Upgrades `path` to SPDY/3.1 (`portforward.k8s.io`) as kubectl before 1.31 does: the
    /// connection after the 101.
    async fn spdy(&self, path: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
        let mut tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\
             Content-Length: 0\r\n\r\n",
            self.port
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte: what follows the head is the SPDY session's.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tls.read_u8().await.unwrap());
            assert!(head.len() < 16 << 10, "an endless response head");
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls
    }

    /// The status and body of a refused upgrade of `path`.
    async fn refused(&self, path: &str) -> (u16, String) {
        match self.open(path, None).await {
            Err(tungstenite::Error::Http(r)) => (
                r.status().as_u16(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
            ),
            other => panic!("expected a refusal of {path}, got {:?}", other.map(|_| ())),
        }
    }
}

/// Forwards one connection: sends `request` on port 0's data channel and reads until the
/// server closes the stream. Returns what came on the data channel and on the error channel
/// after each one's first message (the port, checked), and the close code.
async fn forward_once(
    socket: &mut ApiSocket,
    port: u16,
    request: &[u8],
) -> (Vec<u8>, String, Option<u16>) {
    socket
        .send(tungstenite::Message::Binary(
            [&[0u8][..], request].concat().into(),
        ))
        .await
        .unwrap();
    let (mut data, mut error, mut code) = (Vec::new(), Vec::new(), None);
    let mut seen = [false; 2];
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = socket.next().await {
            match msg.unwrap() {
                tungstenite::Message::Binary(b) => {
                    let channel = usize::from(b[0]);
                    assert!(channel < 2, "channel {channel} of a one-port request");
                    if !seen[channel] {
                        assert_eq!(&b[1..], &port.to_le_bytes(), "the port first");
                        seen[channel] = true;
                    } else if channel == 0 {
                        data.extend_from_slice(&b[1..]);
                    } else {
                        error.extend_from_slice(&b[1..]);
                    }
                }
                tungstenite::Message::Close(frame) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the port-forward stream did not end");
    (data, String::from_utf8_lossy(&error).into_owned(), code)
}

#[test]
fn port_forward_through_the_api_server_reaches_a_server_in_the_pod() {
    require_root!("the pod's container and network namespace");
    let cp = ControlPlane::start();
    // httpd on the pod's loopback only: reachable from inside its network namespace alone.
    let pod = BusyboxPod::start(
        agent_bin(),
        &format!("pf-{}", std::process::id()),
        "pf-host",
        "mkdir -p /tmp/www && echo served from inside pod pf > /tmp/www/index.html \
         && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    );
    let uid = pod.uid.clone();
    let (rt, shutdown) = serve_node(
        &cp,
        "pf-node",
        &pod.root(),
        Arc::new(OnePod {
            name: "pf",
            container: pod.container.clone(),
        }),
        pod.runtime.clone(),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pf"},
                "spec": {"nodeName": "pf-node", "containers": [{"name": "app", "image": "busybox",
                         "ports": [{"containerPort": 8080}]}]}}"#,
        ),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}"#,
        ),
    );
    // No agent reports this pod's status here: say it runs, as its agent would.
    cp.kubectl(&[
        "patch",
        "pod",
        "pf",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"phase": "Running"}}"#,
    ]);
    let alice = cp.user_kubeconfig("alice", &[]);
    // Read rights on pods and pods/portforward, but not create: a websocket GET on
    // portforward needs create too (KEP-4006).
    cp.kubectl(&[
        "create",
        "role",
        "pf-reader",
        "--verb=get",
        "--resource=pods,pods/portforward",
    ]);
    cp.kubectl(&[
        "create",
        "rolebinding",
        "pf-reader",
        "--role=pf-reader",
        "--user=alice",
    ]);

    let admin = &ApiSockets::new(&cp.kubeconfig, cp.port);
    let as_alice = &ApiSockets::new(&alice, cp.port);
    let path = "/api/v1/namespaces/default/pods/pf/portforward?ports=8080";
    rt.block_on(async {
        // No subprotocol (kr8s): retried until httpd listens; the body is the pod's file.
        let (response, code) =
            eventually_within(Duration::from_secs(30), "httpd in the pod", || async move {
                let (mut s, chosen) = admin.open(path, None).await.unwrap();
                assert_eq!(chosen, None);
                let (data, error, code) =
                    forward_once(&mut s, 8080, b"GET / HTTP/1.0\r\nHost: pf\r\n\r\n").await;
                error.is_empty().then_some((data, code))
            })
            .await;
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.ends_with("\r\n\r\nserved from inside pod pf\n"),
            "{response}"
        );
        assert_eq!(code, Some(1000));

        // kube-rs's offer: v4 (port-forward has no v5), the same framing; a 404 from httpd.
        let (mut s, chosen) = admin
            .open(path, Some("v5.channel.k8s.io, v4.channel.k8s.io"))
            .await
            .unwrap();
        assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
        let (data, error, _) = forward_once(&mut s, 8080, b"GET /nope HTTP/1.0\r\n\r\n").await;
        assert!(error.is_empty(), "{error}");
        assert!(
            String::from_utf8_lossy(&data).starts_with("HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&data)
        );

        // A port nothing listens on: the kubelet's error on the error channel.
        let (mut s, _) = admin
            .open("/api/v1/namespaces/default/pods/pf/portforward?ports=8081", None)
            .await
            .unwrap();
        let (data, error, code) = forward_once(&mut s, 8081, b"hello?").await;
        assert!(data.is_empty());
        assert!(
            error.starts_with(&format!(
                "error forwarding port 8081 to pod default/pf, uid {uid}: failed to connect"
            )),
            "{error}"
        );
        assert_eq!(code, Some(1000));

        // Refusals, as Status bodies.
        for (query, expected) in [
            ("ports=0", r#"port "0" must be > 0"#),
            ("ports=65536", r#"unable to parse "65536" as a port"#),
            ("ports=", r#"query parameter "ports" cannot be empty"#),
            ("x=1", r#"query parameter "ports" is required"#),
        ] {
            let (code, body) = admin
                .refused(&format!(
                    "/api/v1/namespaces/default/pods/pf/portforward?{query}"
                ))
                .await;
            assert_eq!(code, 400, "{query}: {body}");
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(status["reason"], "BadRequest", "{body}");
            let message = status["message"].as_str().unwrap();
            assert!(message.contains(expected), "{query}: {body}");
        }
        let (code, body) = admin
            .refused("/api/v1/namespaces/default/pods/nosuch/portforward?ports=80")
            .await;
        assert_eq!(code, 404, "{body}");
        let (code, body) = admin
            .refused("/api/v1/namespaces/default/pods/pending/portforward?ports=80")
            .await;
        assert_eq!(code, 400, "{body}");
        assert!(
            body.contains("unable to forward port because pod is not running"),
            "{body}"
        );

        // A user who may read pods/portforward but not create it: 403 in Kubernetes' words.
        // The binding applies once the authorizer's watch has it: until then the refusal is
        // of the get.
        let body = eventually_within(Duration::from_secs(20), "alice's binding", || async move {
            let (code, body) = as_alice.refused(path).await;
            assert_eq!(code, 403, "{body}");
            body.contains("cannot create").then_some(body)
        })
        .await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["reason"], "Forbidden", "{body}");
        assert!(
            status["message"].as_str().unwrap().contains(
                r#"User "alice" cannot create resource "pods/portforward" in API group "" in the namespace "default""#
            ),
            "{body}"
        );
    });

    shutdown.cancel();
    drop(rt);
}

/// kubectl that only speaks plain SPDY (before 1.31 it does not try the WebSocket tunnel): the
/// machine image's 1.29, or `SKIFF_OLD_KUBECTL`.
fn old_kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("SKIFF_OLD_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.29"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED the plain-SPDY kubectl part: no {} (set SKIFF_OLD_KUBECTL to a kubectl \
             before 1.31)",
            path.display()
        );
        None
    }
}

/// `kubectl port-forward` running in the background, killed on drop.
struct KubectlForward {
    child: std::process::Child,
    /// The local port of each forwarded port, in order.
    ports: Vec<u16>,
    /// Its stderr, as it comes.
    stderr: std::sync::mpsc::Receiver<String>,
}

impl KubectlForward {
    /// Runs `kubectl port-forward ARGS` and waits until it listens on every port.
    fn start(kubectl: &std::path::Path, cp: &ControlPlane, args: &[&str]) -> Self {
        let mut child = std::process::Command::new(kubectl)
            .args(["port-forward", "--address", "127.0.0.1"])
            .args(args)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl port-forward");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        let wanted = args.iter().filter(|a| a.contains(':')).count();
        let mut ports = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ports.len() < wanted {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = stdout.recv_timeout(left) else {
                let _ = child.kill();
                let err: Vec<String> = stderr.try_iter().collect();
                panic!(
                    "kubectl port-forward {args:?} did not listen: {}",
                    err.join("\n")
                );
            };
            // "Forwarding from 127.0.0.1:41234 -> 8080"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                ports.push(rest.split(' ').next().unwrap().parse().unwrap());
            }
        }
        // Later stdout ("Handling connection for ...") is not needed, but must be read.
        std::thread::spawn(move || for _ in stdout {});
        Self {
            child,
            ports,
            stderr,
        }
    }

    /// Waits for kubectl to end; its exit status and what it wrote on stderr.
    fn wait_for_exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err: Vec<String> = self.stderr.try_iter().collect();
                return (status, err.join("\n"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl port-forward did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KubectlForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a local port with HTTP/1.0: the whole response.
fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: pf\r\n\r\n")?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path).unwrap()
}

/// A fresh `requestID` for [`spdy_forward`].
fn next_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One connection forwarded as kubectl forwards it: its error stream (half-closed at once),
/// its data stream with a GET and FIN. What came on the data and on the error stream.
async fn spdy_forward(session: &spdy::Session, port: u16, request_id: u32) -> (Vec<u8>, String) {
    let headers = |kind: &str| {
        vec![
            ("streamtype".to_owned(), kind.to_owned()),
            ("port".to_owned(), port.to_string()),
            ("requestid".to_owned(), request_id.to_string()),
        ]
    };
    let mut error = session.open(headers("error")).await.unwrap();
    error.writer.close().await.unwrap();
    let mut data = session.open(headers("data")).await.unwrap();
    data.writer
        .write(bytes::Bytes::from_static(
            b"GET / HTTP/1.0\r\nHost: pf\r\n\r\n",
        ))
        .await
        .unwrap();
    data.writer.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut body = Vec::new();
        while let Some(b) = data.reader.read().await {
            body.extend_from_slice(&b);
        }
        let mut text = Vec::new();
        while let Some(b) = error.reader.read().await {
            text.extend_from_slice(&b);
        }
        (body, String::from_utf8_lossy(&text).into_owned())
    })
    .await
    .expect("the forwarded connection did not end")
}

fn assert_served(response: &str) {
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response:?}");
    assert!(
        response.ends_with("\r\n\r\nserved from inside pod pf\n"),
        "{response:?}"
    );
}

#[test]
fn kubectl_port_forward_speaks_spdy_through_the_api_server() {
    require_root!("the pod's container and network namespace");
    let cp = ControlPlane::start();
    let pod = BusyboxPod::start(
        agent_bin(),
        &format!("kpf-{}", std::process::id()),
        "pf-host",
        "mkdir -p /tmp/www && echo served from inside pod pf > /tmp/www/index.html \
         && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    );
    let (rt, shutdown) = serve_node(
        &cp,
        "pf-node",
        &pod.root(),
        Arc::new(OnePod {
            name: "pf",
            container: pod.container.clone(),
        }),
        pod.runtime.clone(),
    );
    // kubectl resolves svc/ and deploy/ to a Running pod their selector matches. The pod is
    // owned by a ConfigMap, so that the Deployment's ReplicaSet does not adopt (and, at zero
    // replicas, delete) it.
    cp.kubectl(&["create", "configmap", "pf-owner"]);
    let owner = cp.kubectl(&[
        "get",
        "configmap",
        "pf-owner",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "pf", "labels": {{"app": "pf"}},
                "ownerReferences": [{{"apiVersion": "v1", "kind": "ConfigMap", "name": "pf-owner",
                                     "uid": "{owner}", "controller": true}}]}},
                "spec": {{"nodeName": "pf-node", "containers": [{{"name": "app", "image": "busybox",
                         "ports": [{{"containerPort": 8080}}]}}]}}}}"#
        )),
    );
    cp.kubectl(&[
        "patch",
        "pod",
        "pf",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"phase": "Running"}}"#,
    ]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "pf"}, "ports": [{"port": 80, "targetPort": 8080}]}}"#,
        ),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "pf"}},
                         "template": {"metadata": {"labels": {"app": "pf"}},
                                      "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}"#,
        ),
    );

    // A SPDY session through the API server: a connection to a port nothing listens on gets
    // the agent's error on its error stream, and the same session goes on forwarding (kubectl
    // itself gives up on the first error, so a client of its own shows it).
    rt.block_on(async {
        let admin = ApiSockets::new(&cp.kubeconfig, cp.port);
        let tls = admin
            .spdy("/api/v1/namespaces/default/pods/pf/portforward")
            .await;
        let stop = CancellationToken::new();
        let (session, _incoming, _task) = spdy::start(
            tls,
            spdy::Role::Client,
            skiff_k8s::spdy::Limits::default(),
            stop.clone(),
        );
        let session = &session;
        let (data, error) = eventually_within(Duration::from_secs(20), "httpd in the pod", || {
            let id = next_id();
            async move {
                let (data, error) = spdy_forward(session, 8080, id).await;
                error.is_empty().then_some((data, error))
            }
        })
        .await;
        assert_served(&String::from_utf8_lossy(&data));
        assert!(error.is_empty());
        let (data, error) = spdy_forward(session, 8081, next_id()).await;
        assert!(data.is_empty());
        assert!(
            error.starts_with(&format!(
                "error forwarding port 8081 to pod default/pf, uid {}: failed to connect",
                pod.uid
            )),
            "{error}"
        );
        let (data, error) = spdy_forward(session, 8080, next_id()).await;
        assert!(error.is_empty(), "{error}");
        assert_served(&String::from_utf8_lossy(&data));
        stop.cancel();
    });

    // A user who may get pods/portforward but not create it: refused in both protocols
    // (the plain upgrade is a POST, create; the WebSocket tunnel a GET, which needs create too).
    let alice = cp.user_kubeconfig("alice", &[]);
    cp.kubectl(&[
        "create",
        "role",
        "pf-reader",
        "--verb=get",
        "--resource=pods,pods/portforward",
    ]);
    cp.kubectl(&[
        "create",
        "rolebinding",
        "pf-reader",
        "--role=pf-reader",
        "--user=alice",
    ]);

    // kubectl 1.37 tunnels SPDY in a WebSocket; 1.29 upgrades to SPDY directly.
    let kubectls: Vec<PathBuf> = std::iter::once(skiff_e2e::kubectl_bin())
        .chain(old_kubectl())
        .collect();
    for kubectl in &kubectls {
        // The binding applies once the authorizer's watch has it: until then the refusal is
        // of the get (of the pod, by kubectl).
        wait_for("alice's binding", Duration::from_secs(20), || {
            let out = std::process::Command::new("timeout")
                .arg("30")
                .arg(kubectl)
                .args(["port-forward", "pod/pf", ":8080"])
                .env("KUBECONFIG", &alice)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(!out.status.success(), "alice forwarded");
            let err = String::from_utf8_lossy(&out.stderr);
            err.contains(r#"User "alice" cannot create resource "pods/portforward""#)
        });
    }
    for kubectl in &kubectls {
        let name = kubectl.display().to_string();
        // httpd may still be starting: the first answer is awaited.
        let forward = KubectlForward::start(kubectl, &cp, &["pod/pf", ":8080"]);
        let port = forward.ports[0];
        wait_for("httpd in the pod", Duration::from_secs(20), || {
            try_http_get(port, "/").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        });
        assert_served(&http_get(port, "/"));
        // Twenty connections at once through the one forward (one SPDY session).
        std::thread::scope(|s| {
            let answers: Vec<_> = (0..20).map(|_| s.spawn(|| http_get(port, "/"))).collect();
            for a in answers {
                assert_served(&a.join().unwrap());
            }
        });
        let missing = http_get(port, "/nope");
        assert!(missing.starts_with("HTTP/1.1 404"), "{name}: {missing}");
        drop(forward);

        // A Service's port maps to its target port; a Deployment to a pod of its selector.
        for (target, ports) in [("svc/web", ":80"), ("deploy/web", ":8080")] {
            let forward = KubectlForward::start(kubectl, &cp, &[target, ports]);
            assert_served(&http_get(forward.ports[0], "/"));
        }

        // Nothing listens on 8081: the agent's error reaches kubectl on that connection's
        // error stream. kubectl (since 1.23) then ends the whole forward itself, "lost
        // connection to pod"; the session on the agent would serve further connections (the
        // agent's component test checks that).
        let forward = KubectlForward::start(kubectl, &cp, &["pod/pf", ":8081"]);
        let answer = try_http_get(forward.ports[0], "/").unwrap_or_default();
        assert!(answer.is_empty(), "{name}: {answer}");
        let (_, err) = forward.wait_for_exit();
        assert!(
            err.contains(&format!(
                "error forwarding port 8081 to pod default/pf, uid {}: failed to connect to localhost:8081",
                pod.uid
            )),
            "{name}: {err}"
        );
    }

    shutdown.cancel();
    drop(rt);
}

/// A serving certificate for `node` at 127.0.0.1 from the control plane's CA, as its
/// `kubernetes.io/kubelet-serving` CSR would get.
fn serving_certificate(pki: &std::path::Path, node: &str) -> (String, String) {
    let ca_cert = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
