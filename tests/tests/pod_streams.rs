//! `kubectl logs` and `kubectl exec` through skiff-control's pods/log and pods/exec, and
//! port-forward through pods/portforward (with a WebSocket client: kubectl port-forward speaks
//! SPDY), proxied to the node's HTTPS endpoint (agent/src/kubelet/server.rs).
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

/// The container's pod, removed on drop.
struct Cleanup(Arc<Runtime>, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_pod_by_uid(&self.1) {
            eprintln!("cleanup of pod {}: {e}", self.1);
        }
    }
}

fn busybox_layer(dir: &std::path::Path) -> PathBuf {
    let base = dir.join("layers/busybox");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    for d in ["tmp", "proc", "sys", "dev", "etc", "root"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, cargo xtask setup)");
    for applet in [
        "sh", "sleep", "hostname", "cat", "echo", "touch", "tty", "httpd", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    base
}

#[test]
fn kubectl_logs_and_exec_through_the_api_server() {
    require_root!("the exec'd container");
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::with_binary(dir.path().join("agent"), agent_bin()).unwrap());
    let uid = format!("streams-{}", std::process::id());
    let _cleanup = Cleanup(runtime.clone(), uid.clone());
    let sandbox = runtime.create_sandbox(&uid, "streams-host").unwrap();
    let k8s = k8s_openapi::api::core::v1::Container {
        name: "app".into(),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo line 1; echo line 2; while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo bye"
                .into(),
        ]),
        ..Default::default()
    };
    let spec = skiff_agent::runtime::ContainerSpec::from_kubernetes(
        &k8s,
        &skiff_agent::runtime::ImageConfig::default(),
        vec![busybox_layer(dir.path())],
    )
    .unwrap();
    let container = runtime.create_container(&sandbox, &spec).unwrap();
    runtime.start(&container).unwrap();

    let (rt, shutdown) = serve_node(
        &cp,
        "stream-node",
        &dir.path().join("agent"),
        Arc::new(OnePod {
            name: "streams",
            container: container.clone(),
        }),
        runtime.clone(),
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
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::with_binary(dir.path().join("agent"), agent_bin()).unwrap());
    let uid = format!("pf-{}", std::process::id());
    let _cleanup = Cleanup(runtime.clone(), uid.clone());
    let sandbox = runtime.create_sandbox(&uid, "pf-host").unwrap();
    // httpd on the pod's loopback only: reachable from inside its network namespace alone.
    let k8s = k8s_openapi::api::core::v1::Container {
        name: "app".into(),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /tmp/www && echo served from inside pod pf > /tmp/www/index.html \
             && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
                .into(),
        ]),
        ..Default::default()
    };
    let spec = skiff_agent::runtime::ContainerSpec::from_kubernetes(
        &k8s,
        &skiff_agent::runtime::ImageConfig::default(),
        vec![busybox_layer(dir.path())],
    )
    .unwrap();
    let container = runtime.create_container(&sandbox, &spec).unwrap();
    runtime.start(&container).unwrap();
    let (rt, shutdown) = serve_node(
        &cp,
        "pf-node",
        &dir.path().join("agent"),
        Arc::new(OnePod {
            name: "pf",
            container,
        }),
        runtime.clone(),
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

    // kubectl port-forward speaks SPDY (tunnelled over a websocket first, then as a plain
    // upgrade): both are refused with the reason, and kubectl ends.
    let mut kubectl = cp
        .kubectl_cmd(&["port-forward", "pod/pf", ":8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kubectl.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = kubectl.kill();
            panic!("kubectl port-forward did not end");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = kubectl.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // kubectl 1.37: "error upgrading connection: unable to upgrade connection: port-forward
    // needs a websocket upgrade (...); SPDY (what kubectl port-forward speaks) is not supported"
    assert!(
        err.contains("SPDY (what kubectl port-forward speaks) is not supported"),
        "{err}"
    );

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
