//! Component tests of the node's HTTP endpoints (agent/src/kubelet/server.rs) with a fake
//! pod directory: logs (tail, previous, limit, follow across rotation) over real HTTPS with
//! the bearer token, the read-only endpoint, exec and port-forward over the websocket protocols
//! against a real container (root only; skipped with a message otherwise), and the kubelet's
//! authentication
//! (client certificates of the cluster CA, bearer tokens through a reviewer) and authorization
//! (access reviews of nodes/<subresource>) with the issued serving certificate swapped in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use skiff_agent::kubelet::auth::{Decision, KubeletAuth, Reviewer, UserInfo};
use skiff_agent::kubelet::directory::{LocateError, Located, PodDirectory};
use skiff_agent::kubelet::identity::rotation::CertSlot;
use skiff_agent::kubelet::identity::store::KeyedCert;
use skiff_agent::kubelet::server::{self, ServerArgs, ServerConfig, ServerState};
use skiff_agent::kubelet::spdy;
use skiff_agent::runtime::busybox_pod::BusyboxPod;
use skiff_agent::runtime::{Container, Runtime};
use skiff_test_support::eventually_within;
use skiff_test_support::root::root_or_skip;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;

const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
const TOKEN: &str = "test-token";

/// One pod `default/web` with container `app`; its logs and running container are set by
/// the test.
#[derive(Default)]
struct FakeDirectory {
    log: Mutex<Option<PathBuf>>,
    previous: Mutex<Option<PathBuf>>,
    running: Mutex<Option<Container>>,
}

impl PodDirectory for FakeDirectory {
    fn pods(&self) -> Vec<Pod> {
        vec![serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "busybox",
                "imageID": "", "ready": true, "restartCount": 1, "state": {"running": {}}}]}
        }))
        .unwrap()]
    }

    fn pod_uid(&self, namespace: &str, pod: &str) -> Result<String, LocateError> {
        if (namespace, pod) != ("default", "web") {
            return Err(LocateError::PodNotFound {
                namespace: namespace.into(),
                name: pod.into(),
            });
        }
        // The running container's sandbox when there is one (port-forward enters it).
        Ok(self
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map_or_else(|| "uid-1".into(), |c| c.pod_uid.clone()))
    }

    fn locate(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<Located, LocateError> {
        if (namespace, pod) != ("default", "web") {
            return Err(LocateError::PodNotFound {
                namespace: namespace.into(),
                name: pod.into(),
            });
        }
        match container {
            None | Some("app") => Ok(Located {
                pod_uid: "uid-1".into(),
                container: "app".into(),
                running: self.running.lock().unwrap().clone(),
                log: self.log.lock().unwrap().clone(),
                previous_log: self.previous.lock().unwrap().clone(),
            }),
            Some(other) => Err(LocateError::ContainerNotFound {
                pod: pod.into(),
                container: other.into(),
            }),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    https: String,
    read_only: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

async fn start(root: &Path, directory: Arc<FakeDirectory>, runtime: Arc<Runtime>) -> Server {
    let (port, ro_port) = (free_port(), free_port());
    let config = ServerConfig {
        args: ServerArgs {
            kubelet_port: port,
            kubelet_address: "127.0.0.1".parse().unwrap(),
            read_only_port: ro_port,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
        },
        root_dir: root.to_owned(),
        token: TOKEN.into(),
        tls_sans: vec![],
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::serve(config, directory, runtime, shutdown.clone()));
    let server = Server {
        https: format!("https://127.0.0.1:{port}"),
        read_only: format!("http://127.0.0.1:{ro_port}"),
        shutdown,
        task,
    };
    // Ready once both answer.
    eventually_within(
        Duration::from_secs(20),
        "the kubelet server to come up",
        || {
            let (https, ro) = (server.https.clone(), server.read_only.clone());
            async move {
                let https = client()
                    .get(format!("{https}/healthz"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                let ro = client().get(format!("{ro}/healthz")).send().await;
                (https.is_ok_and(|r| r.status().is_success())
                    && ro.is_ok_and(|r| r.status().is_success()))
                .then_some(())
            }
        },
    )
    .await;
    server
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).bearer_auth(TOKEN).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_health_pods_metrics_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::with_binary(dir.path().join("state"), AGENT).unwrap());
    let directory = Arc::new(FakeDirectory::default());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("0.log"), "old 1\nold 2\n").unwrap();
    std::fs::write(logs.join("1.log"), "a\nb\nc\n").unwrap();
    *directory.previous.lock().unwrap() = Some(logs.join("0.log"));
    *directory.log.lock().unwrap() = Some(logs.join("1.log"));
    let s = start(dir.path(), directory.clone(), runtime).await;
    let base = format!("{}/containerLogs/default/web/app", s.https);

    assert_eq!(get(&base).await, (200, "a\nb\nc\n".into()));
    assert_eq!(
        get(&format!("{base}?tailLines=2")).await,
        (200, "b\nc\n".into())
    );
    assert_eq!(
        get(&format!("{base}?limitBytes=3")).await,
        (200, "a\nb".into())
    );
    assert_eq!(
        get(&format!("{base}?previous=true")).await,
        (200, "old 1\nold 2\n".into())
    );
    // Follow of an instance that no longer runs returns what there is and ends.
    assert_eq!(
        get(&format!("{base}?follow=true")).await,
        (200, "a\nb\nc\n".into())
    );

    let (code, body) = get(&format!("{}/containerLogs/default/nope/app", s.https)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");
    let (code, body) = get(&format!("{}/containerLogs/default/web/other", s.https)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("container other is not valid for pod web"),
        "{body}"
    );
    let (code, body) = get(&format!("{base}?tailLines=x")).await;
    assert_eq!(code, 400, "{body}");
    *directory.previous.lock().unwrap() = None;
    let (code, body) = get(&format!("{base}?previous=1")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("previous terminated container"), "{body}");

    // Authentication: no token, a wrong token.
    let r = client().get(&base).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(&base)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The read-only endpoint needs no token and serves no logs.
    let pods: serde_json::Value = client()
        .get(format!("{}/pods", s.read_only))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert_eq!(pods["items"][0]["metadata"]["name"], "web");
    let metrics = client()
        .get(format!("{}/metrics", s.read_only))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kubelet_running_pods 1\n"), "{metrics}");
    assert!(metrics.contains(
        "kubelet_container_restarts_total{namespace=\"default\",pod=\"web\",container=\"app\"} 1"
    ));
    assert!(metrics.contains("process_open_fds "));
    let r = client()
        .get(format!("{}/containerLogs/default/web/app", s.read_only))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    s.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
}

/// A busybox pod running `script`, removed on drop; `None` (with a message) when not root.
/// The kubelet's router on a loopback port over plain HTTP, accepting the test token: the
/// streaming tests speak to the handlers, not to TLS. Returns `host:port`.
async fn serve_plain(directory: Arc<FakeDirectory>, runtime: Arc<Runtime>) -> String {
    let state = ServerState {
        directory,
        runtime,
        auth: server::ServerSecurity::token_only(TOKEN).auth,
        shutdown: CancellationToken::new(),
        cpu_rates: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, server::app(state)).await });
    addr
}

fn busybox_container(script: &str) -> Option<BusyboxPod> {
    if !root_or_skip("the exec test", "namespaces, mounts, cgroups") {
        return None;
    }
    // One pod per test: the tests of this binary run at once.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let uid = format!("ks-{}-{seq}", std::process::id());
    Some(BusyboxPod::start(AGENT, &uid, "exec-pod", script))
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens an exec websocket to the plain-HTTP router (TLS is covered by the logs test).
async fn open_exec(addr: &str, query: &str, protocol: &str) -> Result<Socket, tungstenite::Error> {
    let mut req = format!("ws://{addr}/exec/default/web/app?{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(s, _)| s)
}

/// Reads frames until the error channel's status and the close; returns (stdout, stderr,
/// status).
async fn drain(socket: &mut Socket) -> (String, String, serde_json::Value) {
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), serde_json::Value::Null);
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = socket.next().await {
            match msg.unwrap() {
                tungstenite::Message::Binary(b) if !b.is_empty() => match b[0] {
                    1 => out.extend_from_slice(&b[1..]),
                    2 => err.extend_from_slice(&b[1..]),
                    3 => status = serde_json::from_slice(&b[1..]).unwrap(),
                    other => panic!("unexpected channel {other}"),
                },
                tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await
    .expect("the exec stream did not end");
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_over_the_channel_protocol() {
    let Some(c) = busybox_container("echo started; exec sleep 1000") else {
        return;
    };
    let directory = Arc::new(FakeDirectory::default());
    *directory.running.lock().unwrap() = Some(c.container.clone());
    *directory.log.lock().unwrap() = Some(c.container.log_path.clone());
    let addr = serve_plain(directory.clone(), c.runtime.clone()).await;

    // v5, stdin half-closed: the process sees EOF; output, stderr and exit code come back.
    let q = "command=sh&command=-c&command=hostname%3B%20cat%3B%20echo%20oops%20%3E%262%3B%20exit%203&stdin=1&stdout=1&stderr=1";
    let mut s = open_exec(&addr, q, "v5.channel.k8s.io").await.unwrap();
    s.send(tungstenite::Message::Binary(
        b"\x00from stdin\n".to_vec().into(),
    ))
    .await
    .unwrap();
    s.send(tungstenite::Message::Binary(vec![255, 0].into()))
        .await
        .unwrap();
    let (out, err, status) = drain(&mut s).await;
    assert_eq!(out, "exec-pod\nfrom stdin\n");
    assert_eq!(err, "oops\n");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // v4 without stdin; success.
    let mut s = open_exec(
        &addr,
        "command=echo&command=hi&stdout=1",
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    let (out, _, status) = drain(&mut s).await;
    assert_eq!(out, "hi\n");
    assert_eq!(status["status"], "Success", "{status}");

    // A terminal, resized by the client before it sends a line (applied in order).
    let q = "command=sh&command=-c&command=read%20x%3B%20stty%20size%3B%20tty%3B%20exit%200&stdin=1&stdout=1&tty=1";
    let mut s = open_exec(&addr, q, "v5.channel.k8s.io").await.unwrap();
    s.send(tungstenite::Message::Binary(
        b"\x04{\"Width\":100,\"Height\":33}".to_vec().into(),
    ))
    .await
    .unwrap();
    s.send(tungstenite::Message::Binary(b"\x00go\n".to_vec().into()))
        .await
        .unwrap();
    let (out, _, status) = drain(&mut s).await;
    assert!(out.contains("33 100"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(status["status"], "Success", "{status} {out:?}");

    // Unsupported protocol and unknown container are refused before the upgrade.
    match open_exec(&addr, "command=true&stdout=1", "channel.k8s.io").await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    *directory.running.lock().unwrap() = None;
    match open_exec(&addr, "command=true&stdout=1", "v5.channel.k8s.io").await {
        Err(tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 400);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("is not running"), "{body}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}

/// Opens a port-forward websocket to pod `default/web` on the plain-HTTP router.
async fn open_forward(
    addr: &str,
    query: &str,
    protocol: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut req = format!("ws://{addr}/portForward/default/web?{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(s, _)| s)
}

/// Every message of a port-forward stream as (channel, data), binary or base64 framed, until
/// the server closes it; and the close code.
async fn forwarded(socket: &mut Socket) -> (Vec<(u8, Vec<u8>)>, Option<u16>) {
    use base64::Engine as _;
    let mut messages = Vec::new();
    let mut code = None;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = socket.next().await {
            match msg.unwrap() {
                tungstenite::Message::Binary(b) => messages.push((b[0], b[1..].to_vec())),
                tungstenite::Message::Text(t) => {
                    let (first, data) = t.as_bytes().split_first().unwrap();
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap();
                    messages.push((first - b'0', data));
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
    (messages, code)
}

/// The bytes of `channel` after its first message (the port).
fn channel_data(messages: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
    messages
        .iter()
        .filter(|(c, _)| *c == channel)
        .skip(1)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

const HTTP_GET: &[u8] = b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_servers_inside_the_pod() {
    // Two servers that only the pod's network namespace can reach: busybox httpd on the
    // pod's loopback, and an echo server (nc running cat per connection).
    let script = "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html \
        && i=0; while [ $i -lt 3000 ]; do echo \"line $i of a body larger than one message\"; \
        i=$((i+1)); done > /tmp/www/big; nc -ll -p 9000 -e /bin/cat & \
        exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let Some(c) = busybox_container(script) else {
        return;
    };
    let directory = Arc::new(FakeDirectory::default());
    *directory.running.lock().unwrap() = Some(c.container.clone());
    let addr = serve_plain(directory.clone(), c.runtime.clone()).await;

    // No subprotocol (kr8s): binary framing. Retried until httpd listens.
    let (messages, code) = eventually_within(Duration::from_secs(20), "httpd in the pod", || {
        let addr = addr.clone();
        async move {
            let mut s = open_forward(&addr, "ports=8080", None).await.unwrap();
            s.send(tungstenite::Message::Binary(
                [&[0u8][..], HTTP_GET].concat().into(),
            ))
            .await
            .unwrap();
            let (messages, code) = forwarded(&mut s).await;
            channel_data(&messages, 1)
                .is_empty()
                .then_some((messages, code))
        }
    })
    .await;
    // The port, little endian, first on the data channel and then on the error channel.
    assert_eq!(messages[0], (0, vec![0x90, 0x1f]));
    assert_eq!(messages[1], (1, vec![0x90, 0x1f]));
    let response = String::from_utf8(channel_data(&messages, 0)).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nhello from the pod\n"),
        "{response}"
    );
    assert_eq!(code, Some(1000), "a normal closure once the pod closed");

    // A body of several messages arrives whole.
    let mut s = open_forward(&addr, "ports=8080", None).await.unwrap();
    s.send(tungstenite::Message::Binary(
        b"\x00GET /big HTTP/1.0\r\n\r\n".to_vec().into(),
    ))
    .await
    .unwrap();
    let (messages, _) = forwarded(&mut s).await;
    let response = channel_data(&messages, 0);
    let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = String::from_utf8_lossy(&response[body_at..]).into_owned();
    assert_eq!(body.lines().count(), 3000);
    assert!(body.ends_with("line 2999 of a body larger than one message\n"));
    assert!(messages.len() > 3, "{} messages", messages.len());

    // Both ways at once: 1 MiB through the echo server in 64 KiB messages, read while
    // written; then the client closes and the server answers the close.
    let s = open_forward(&addr, "ports=9000", Some("v4.channel.k8s.io"))
        .await
        .unwrap();
    let (mut tx, mut rx) = s.split();
    let sent: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for chunk in sent.chunks(64 << 10) {
                tx.send(tungstenite::Message::Binary(
                    [&[0u8][..], chunk].concat().into(),
                ))
                .await
                .unwrap();
            }
            tx
        })
    };
    let mut echoed = Vec::new();
    let mut first = true;
    tokio::time::timeout(Duration::from_secs(30), async {
        while echoed.len() < sent.len() {
            match rx.next().await.unwrap().unwrap() {
                tungstenite::Message::Binary(b) if b[0] == 0 => {
                    if first {
                        assert_eq!(&b[1..], &9000u16.to_le_bytes());
                        first = false;
                    } else {
                        echoed.extend_from_slice(&b[1..]);
                    }
                }
                tungstenite::Message::Binary(b) if b[0] == 1 && b.len() > 3 => {
                    panic!("error: {}", String::from_utf8_lossy(&b[1..]))
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the echo did not come back");
    assert!(echoed == sent, "the echo differs");
    let mut tx = writer.await.unwrap();
    tx.send(tungstenite::Message::Close(None)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await
    .expect("the server did not end the stream after the client's close");

    // Nothing listens on 8081: its error channel says so, port 8080 of the same request works,
    // and the stream closes once both are done.
    let mut s = open_forward(&addr, "ports=8080,8081", None).await.unwrap();
    s.send(tungstenite::Message::Binary(
        [&[0u8][..], HTTP_GET].concat().into(),
    ))
    .await
    .unwrap();
    let (messages, code) = forwarded(&mut s).await;
    let prefixes: Vec<&(u8, Vec<u8>)> = messages.iter().take(4).collect();
    assert_eq!(
        prefixes,
        [
            &(0, vec![0x90, 0x1f]),
            &(1, vec![0x90, 0x1f]),
            &(2, vec![0x91, 0x1f]),
            &(3, vec![0x91, 0x1f])
        ]
    );
    let error = String::from_utf8(channel_data(&messages, 3)).unwrap();
    assert!(
        error.starts_with(&format!(
            "error forwarding port 8081 to pod default/web, uid {}: failed to connect to localhost:8081",
            c.container.pod_uid
        )),
        "{error}"
    );
    assert!(String::from_utf8(channel_data(&messages, 0))
        .unwrap()
        .contains("hello from the pod"));
    assert!(channel_data(&messages, 1).is_empty());
    assert!(channel_data(&messages, 2).is_empty());
    assert_eq!(code, Some(1000));

    // The base64 framing, in text messages.
    let mut s = open_forward(&addr, "ports=8080", Some("v4.base64.channel.k8s.io"))
        .await
        .unwrap();
    {
        use base64::Engine as _;
        let text = format!(
            "0{}",
            base64::engine::general_purpose::STANDARD.encode(HTTP_GET)
        );
        s.send(tungstenite::Message::text(text)).await.unwrap();
    }
    let (messages, _) = forwarded(&mut s).await;
    assert_eq!(messages[0], (0, vec![0x90, 0x1f]));
    assert!(String::from_utf8(channel_data(&messages, 0))
        .unwrap()
        .ends_with("hello from the pod\n"));

    // A message over the bound ends the stream rather than being buffered.
    let mut s = open_forward(&addr, "ports=9000", None).await.unwrap();
    let huge = vec![0u8; skiff_agent::kubelet::portforward::MAX_MESSAGE_BYTES + 2];
    let _ = s.send(tungstenite::Message::Binary(huge.into())).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = s.next().await {}
    })
    .await
    .expect("an oversized message did not end the stream");

    // Refusals, before the upgrade.
    let refused = |r: Result<Socket, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    };
    for (query, expected) in [
        ("ports=0", "must be > 0"),
        ("ports=65536", "unable to parse"),
        ("ports=80,x", "unable to parse"),
        ("", "is required"),
    ] {
        let (code, body) = refused(open_forward(&addr, query, None).await);
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(expected), "{query}: {body}");
    }
    let (code, body) =
        refused(open_forward(&addr, "ports=8080", Some("SPDY/3.1+portforward.k8s.io")).await);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("SPDY"), "{body}");
    let mut req = format!("ws://{addr}/portForward/default/nope?ports=80")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (code, _) = refused(
        tokio_tungstenite::client_async(req, tcp)
            .await
            .map(|(s, _)| s),
    );
    assert_eq!(code, 404);
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/portForward/default/web"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("port-forward needs an upgrade"));
    // The uid form of the path names the pod's uid.
    let mut req = format!("ws://{addr}/portForward/default/web/other-uid?ports=8080")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (code, _) = refused(
        tokio_tungstenite::client_async(req, tcp)
            .await
            .map(|(s, _)| s),
    );
    assert_eq!(code, 404);
    // A pod without a running sandbox.
    *directory.running.lock().unwrap() = None;
    let (code, body) = refused(open_forward(&addr, "ports=8080", None).await);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("has no running sandbox"), "{body}");
}

/// Upgrades `/portForward/default/web` on the plain-HTTP router to SPDY/3.1, offering
/// `protocol`: the connection, the response's status line and headers (lowercased).
async fn spdy_upgrade(addr: &str, protocol: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /portForward/default/web HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {TOKEN}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte: what follows the head is the SPDY session's.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
        assert!(head.len() < 16 << 10, "an endless response head");
    }
    (tcp, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

fn stream_headers(kind: &str, port: u16, request_id: u32) -> skiff_k8s::spdy::Headers {
    vec![
        ("streamtype".into(), kind.into()),
        ("port".into(), port.to_string()),
        ("requestid".into(), request_id.to_string()),
    ]
}

/// One forwarded connection as kubectl makes it: the error stream (half-closed at once), then
/// the data stream with `request` and FIN. What came on the data and on the error stream.
async fn spdy_forward(
    session: &spdy::Session,
    port: u16,
    request_id: u32,
    request: &[u8],
) -> (Vec<u8>, String) {
    let mut error = session
        .open(stream_headers("error", port, request_id))
        .await
        .unwrap();
    error.writer.close().await.unwrap();
    let mut data = session
        .open(stream_headers("data", port, request_id))
        .await
        .unwrap();
    data.writer
        .write(bytes::Bytes::copy_from_slice(request))
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
        (body, String::from_utf8(text).unwrap())
    })
    .await
    .expect("the forwarded connection did not end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_serves_many_connections_in_one_session() {
    let script = "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html; \
        nc -ll -p 9000 -e /bin/cat & exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let Some(c) = busybox_container(script) else {
        return;
    };
    let directory = Arc::new(FakeDirectory::default());
    *directory.running.lock().unwrap() = Some(c.container.clone());
    let addr = serve_plain(directory.clone(), c.runtime.clone()).await;

    let (tcp, head) = spdy_upgrade(&addr, "portforward.k8s.io").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: spdy/3.1\r\n"), "{head}");
    assert!(
        head.contains("x-stream-protocol-version: portforward.k8s.io\r\n"),
        "{head}"
    );
    let stop = CancellationToken::new();
    let (session, _incoming, _task) = spdy::start(
        tcp,
        spdy::Role::Client,
        skiff_k8s::spdy::Limits::default(),
        stop.clone(),
    );
    let session = &session;
    // Retried (new request ids) until httpd listens.
    let next_id = &std::sync::atomic::AtomicU32::new(0);
    let id = || next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = eventually_within(Duration::from_secs(20), "httpd in the pod", || async move {
        let (body, error) = spdy_forward(session, 8080, id(), HTTP_GET).await;
        error.is_empty().then_some(body)
    })
    .await;
    let response = String::from_utf8(body).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nhello from the pod\n"),
        "{response}"
    );

    // Nothing listens on 8081: the kubelet's error on that connection's error stream, and
    // the session goes on serving others.
    let (body, error) = spdy_forward(session, 8081, id(), b"hello?").await;
    assert!(body.is_empty());
    assert!(
        error.starts_with(&format!(
            "error forwarding port 8081 to pod default/web, uid {}: failed to connect",
            c.uid
        )),
        "{error}"
    );

    // Twenty connections at once through the same session.
    let results = futures::future::join_all((0..20).map(|_| {
        let request_id = id();
        async move { spdy_forward(session, 8080, request_id, HTTP_GET).await }
    }))
    .await;
    for (body, error) in results {
        assert!(error.is_empty(), "{error}");
        assert!(
            String::from_utf8_lossy(&body).ends_with("\r\n\r\nhello from the pod\n"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    // Both ways at once: 4 MiB through the echo server, read while written.
    let request_id = id();
    let mut error = session
        .open(stream_headers("error", 9000, request_id))
        .await
        .unwrap();
    error.writer.close().await.unwrap();
    let mut data = session
        .open(stream_headers("data", 9000, request_id))
        .await
        .unwrap();
    let sent: bytes::Bytes = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let writer = {
        let (w, sent) = (data.writer.clone(), sent.clone());
        tokio::spawn(async move {
            for chunk in sent.chunks(32 << 10) {
                w.write(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
            }
        })
    };
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while echoed.len() < sent.len() {
            echoed.extend_from_slice(&data.reader.read().await.expect("the echo ended early"));
        }
    })
    .await
    .expect("the echo did not come back");
    assert!(echoed == sent, "the echo differs");
    writer.await.unwrap();
    data.writer.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while data.reader.read().await.is_some() {}
        while error.reader.read().await.is_some() {}
    })
    .await
    .expect("the echo connection did not end after the client's FIN");

    // A stream without a port is reset; the session goes on.
    let mut bad = session
        .open(vec![("streamtype".into(), "data".into())])
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), bad.reader.read())
            .await
            .unwrap(),
        None
    );
    let (body, error) = spdy_forward(session, 8080, id(), HTTP_GET).await;
    assert!(error.is_empty() && !body.is_empty(), "{error}");
    stop.cancel();

    // A protocol other than portforward.k8s.io: refused as the kubelet does.
    let (_, head) = spdy_upgrade(&addr, "v4.channel.k8s.io").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
}

/// A CA for the endpoint's client and serving certificates.
struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cluster-ca");
        let pem = params.clone().self_signed(&key).unwrap().pem();
        Self { key, params, pem }
    }

    fn issue(&self, cn: &str, orgs: &[&str], sans: &[&str], server: bool) -> KeyedCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        KeyedCert::new(&cert.pem(), &key.serialize_pem()).unwrap()
    }
}

/// Knows the token `alice-token` (alice, in `devs`); allows alice `get` on `proxy`, the API
/// server's client certificate user everything; records every access review.
#[derive(Default)]
struct TestReviewer {
    reviews: Mutex<Vec<(String, String, String, String)>>,
}

impl Reviewer for TestReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<UserInfo>, String>> {
        Box::pin(async move {
            Ok((token == "alice-token").then(|| UserInfo::new("alice", ["devs".to_owned()])))
        })
    }

    fn review_access<'a>(
        &'a self,
        user: &'a UserInfo,
        verb: &'a str,
        node: &'a str,
        subresource: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Decision, String>> {
        Box::pin(async move {
            self.reviews.lock().unwrap().push((
                user.name.clone(),
                verb.to_owned(),
                node.to_owned(),
                subresource.to_owned(),
            ));
            let allowed = user.name == "kube-apiserver-kubelet-client"
                || (user.name == "alice" && verb == "get" && subresource == "proxy");
            Ok(Decision {
                allowed,
                reason: String::new(),
            })
        })
    }
}

fn client_with(ca: Option<&str>, identity: Option<&KeyedCert>) -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    b = match ca {
        Some(pem) => b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
        None => b.danger_accept_invalid_certs(true),
    };
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.combined().as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_authenticated_by_certificate_or_token_and_authorized_by_review() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::with_binary(dir.path().join("state"), AGENT).unwrap());
    let directory = Arc::new(FakeDirectory::default());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("1.log"), "hello\n").unwrap();
    *directory.log.lock().unwrap() = Some(logs.join("1.log"));
    let ca = TestCa::new();
    let reviewer = Arc::new(TestReviewer::default());
    let serving = CertSlot::new(None).unwrap();
    let port = free_port();
    let config = ServerConfig {
        args: ServerArgs {
            kubelet_port: port,
            kubelet_address: "127.0.0.1".parse().unwrap(),
            read_only_port: 0,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
        },
        root_dir: dir.path().to_owned(),
        token: String::new(),
        tls_sans: vec![],
    };
    let security = server::ServerSecurity {
        auth: Arc::new(KubeletAuth::new("n1", Some(reviewer.clone()), None)),
        client_ca_pem: Some(ca.pem.clone()),
        serving: Some(serving.clone()),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::serve_with(
        config,
        security,
        directory,
        runtime,
        shutdown.clone(),
    ));
    let base = format!("https://127.0.0.1:{port}");
    let logs_url = format!("{base}/containerLogs/default/web/app");
    eventually_within(Duration::from_secs(20), "the endpoint to listen", || {
        let url = format!("{base}/healthz");
        async move { client_with(None, None).get(url).send().await.ok() }
    })
    .await;

    // No credentials, an unknown token: 401 with a Status.
    let r = client_with(None, None).get(&logs_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(401))
    );
    let r = client_with(None, None)
        .get(&logs_url)
        .bearer_auth("stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // alice's token: logs yes (nodes/proxy get), exec no.
    let alice = |req: reqwest::RequestBuilder| req.bearer_auth("alice-token").send();
    let r = alice(client_with(None, None).get(&logs_url)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "hello\n");
    let r = alice(client_with(None, None).post(format!("{base}/exec/default/web/app?command=id")))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Forbidden (user=alice, verb=create, resource=nodes, subresource=proxy)"
    );
    assert_eq!(status["reason"], "Forbidden");
    // A websocket exec is a create too, though it is a GET.
    let r = alice(
        client_with(None, None)
            .get(format!("{base}/exec/default/web/app?command=id&stdout=1"))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // /pods: `pods` first, then `proxy`.
    let r = alice(client_with(None, None).get(format!("{base}/pods")))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let reviews = reviewer.reviews.lock().unwrap().clone();
    let alice_reviews: Vec<_> = reviews
        .iter()
        .map(|(u, v, n, s)| format!("{u} {v} {n} {s}"))
        .collect();
    assert_eq!(
        alice_reviews,
        [
            "alice get n1 proxy",
            "alice create n1 proxy",
            "alice get n1 pods",
        ],
        "the exec create and the /pods proxy answers come from the cache"
    );

    // The API server's client certificate of the cluster CA: no token needed.
    let apiserver = ca.issue(
        "kube-apiserver-kubelet-client",
        &["kubelet-api-admins"],
        &[],
        false,
    );
    let r = client_with(None, Some(&apiserver))
        .get(&logs_url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(reviewer.reviews.lock().unwrap().contains(&(
        "kube-apiserver-kubelet-client".into(),
        "get".into(),
        "n1".into(),
        "proxy".into()
    )));
    // /metrics/resource (this host's cgroups: the node's figures) is nodes/metrics.
    let r = client_with(None, Some(&apiserver))
        .get(format!("{base}/metrics/resource"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\nnode_cpu_usage_seconds_total "), "{text}");
    assert!(text.contains("\nresource_scrape_error "), "{text}");
    let r = alice(client_with(None, None).get(format!("{base}/metrics/resource")))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Forbidden (user=alice, verb=get, resource=nodes, subresource=metrics)"
    );
    // /stats/summary is nodes/stats.
    let r = client_with(None, Some(&apiserver))
        .get(format!("{base}/stats/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let summary: serde_json::Value = r.json().await.unwrap();
    assert_eq!(summary["node"]["nodeName"], "n1", "{summary}");
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{summary}"
    );
    let r = alice(client_with(None, None).get(format!("{base}/stats/summary")))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Forbidden (user=alice, verb=get, resource=nodes, subresource=stats)"
    );
    // A certificate of another CA authenticates no one.
    let stranger = TestCa::new().issue("kube-apiserver-kubelet-client", &[], &[], false);
    let r = client_with(None, Some(&stranger))
        .get(&logs_url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Until the node has an issued serving certificate, a client that trusts only the
    // cluster CA cannot connect; once the slot holds one, the next handshake presents it.
    let strict = client_with(Some(&ca.pem), Some(&apiserver));
    assert!(strict.get(format!("{base}/healthz")).send().await.is_err());
    serving
        .set(ca.issue(
            "system:node:n1",
            &["system:nodes"],
            &["127.0.0.1", "n1"],
            true,
        ))
        .unwrap();
    let strict = client_with(Some(&ca.pem), Some(&apiserver));
    let r = strict.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
}
