//! `GET /portForward/{ns}/{pod}?ports=80,8080` (and `/portForward/{ns}/{pod}/{uid}`): forwards
//! connections to ports of a pod over a websocket, in the protocol of
//! [`skiff_k8s::portforward`] (what the API server's `pods/portforward` proxies to). The same
//! paths upgraded to SPDY/3.1 (kubectl's protocol) are served by [`super::portforward_spdy`],
//! which dials the pod with [`connect`] too.
//!
//! For each port the agent connects to `127.0.0.1:PORT` (then `[::1]:PORT`, as containerd
//! does) inside the pod's network namespace, the one its sandbox's pause process holds. The
//! connection is made by a short-lived thread that enters the namespace (setns moves only the
//! calling thread, and a socket stays in the namespace it was made in) and ends right after;
//! tokio drives the socket from then on. The namespace is opened once per request and held
//! open, so a reused pause pid cannot redirect later connections.
//!
//! Bytes go both ways per port: the socket's reader hands the client's data to each port's
//! writer through a small queue, and one writer sends everything the ports read (so a pod that
//! is not reading never stops another port's, or its own, output). A connection that fails
//! gets the kubelet's `error forwarding port ...` message on its error channel. When the pod
//! ends its side, the client's side has a second to finish (containerd's linger); the socket
//! closes normally (1000) once every port is done, and every connection closes when the client
//! goes.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use skiff_k8s::portforward::{self as protocol, Codec, Encoded};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{normal_close, query_pairs, status_response, ServerState};
use crate::runtime::{Runtime, Sandbox};

/// The largest message a client may send (kr8s sends up to 1 MiB of data per message, the
/// Python client about as much).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How much is read from a pod's connection per message.
pub(super) const READ_CHUNK: usize = 64 << 10;
/// How long connecting inside the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one direction of a connection may go on once the other has ended.
pub(super) const LINGER: Duration = Duration::from_secs(1);
/// Messages queued per direction before the sender waits.
const QUEUE: usize = 8;

/// The pod a request forwards to.
pub(super) struct Target {
    /// `namespace/name`, for messages.
    pub(super) name: String,
    /// Its uid.
    pub(super) uid: String,
    /// Its network namespace, held open.
    pub(super) netns: Arc<File>,
}

/// The handler of `/portForward/{ns}/{pod}`.
pub async fn port_forward(
    State(state): State<ServerState>,
    UrlPath((namespace, pod)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Response {
    handle(state, namespace, pod, None, query, headers, request).await
}

/// The handler of `/portForward/{ns}/{pod}/{uid}`: the pod must have that uid.
pub async fn port_forward_uid(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, uid)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Response {
    handle(state, namespace, pod, Some(uid), query, headers, request).await
}

async fn handle(
    state: ServerState,
    namespace: String,
    pod: String,
    uid: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let bad = |msg: String| status_response(StatusCode::BAD_REQUEST, "BadRequest", msg);
    if super::portforward_spdy::is_spdy_upgrade(&headers) {
        // SPDY names the ports per stream, not in the query.
        let target = match target(&state, &namespace, &pod, uid.as_deref()) {
            Ok(t) => t,
            Err(response) => return *response,
        };
        return super::portforward_spdy::upgrade(target, &headers, request, state.shutdown.clone());
    }
    let (mut parts, _body) = request.into_parts();
    let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
        return bad(format!(
            "port-forward needs an upgrade: to SPDY/3.1 ({}) or to a websocket (no subprotocol, {} or {})",
            skiff_k8s::portforward_spdy::PROTOCOL_V1,
            protocol::V4_BINARY,
            protocol::V4_BASE64
        ));
    };
    let pairs = query_pairs(query.as_deref());
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "ports")
        .map(|(_, v)| v.as_str())
        .collect();
    let ports = match protocol::parse_ports(&values) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    let chosen = match protocol::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    ) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    let target = match target(&state, &namespace, &pod, uid.as_deref()) {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let mut ws = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    if let Some(p) = chosen {
        ws.set_selected_protocol(HeaderValue::from_static(p));
    }
    let shutdown = state.shutdown.clone();
    ws.on_upgrade(move |socket| run(socket, Codec::of(chosen), ports, target, shutdown))
}

/// The pod (with that uid, when the path names one) and its network namespace, held open;
/// or the Status that says why not.
fn target(
    state: &ServerState,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
) -> Result<Arc<Target>, Box<Response>> {
    let pod_uid = state
        .directory
        .pod_uid(namespace, pod)
        .map_err(|e| Box::new(e.into_response()))?;
    if uid.is_some_and(|u| u != pod_uid) {
        return Err(Box::new(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "pod not found",
        )));
    }
    let name = format!("{namespace}/{pod}");
    let netns = open_netns(&state.runtime, &pod_uid, &name).map_err(|(code, message)| {
        let reason = if code == StatusCode::BAD_REQUEST {
            "BadRequest"
        } else {
            "InternalError"
        };
        Box::new(status_response(code, reason, message))
    })?;
    Ok(Arc::new(Target {
        name,
        uid: pod_uid,
        netns: Arc::new(netns),
    }))
}

/// The network namespace of the pod's running sandbox, opened.
fn open_netns(runtime: &Runtime, pod_uid: &str, pod: &str) -> Result<File, (StatusCode, String)> {
    let not_running = || {
        (
            StatusCode::BAD_REQUEST,
            format!("pod {pod} has no running sandbox"),
        )
    };
    let sandbox = runtime
        .sandbox(pod_uid)
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the sandbox of pod {pod}: {e}"),
            )
        })?
        .filter(Sandbox::is_running)
        .ok_or_else(not_running)?;
    let netns = File::open(sandbox.netns_path()).map_err(|_| not_running())?;
    // Checked again with the namespace open: had the pause process ended and its pid been
    // reused in between, the file would be another process's namespace.
    if !sandbox.is_running() {
        return Err(not_running());
    }
    Ok(netns)
}

fn message(encoded: Encoded) -> Message {
    match encoded {
        Encoded::Binary(b) => Message::Binary(b.into()),
        Encoded::Text(t) => Message::Text(t.into()),
    }
}

async fn run(
    socket: WebSocket,
    codec: Codec,
    ports: Vec<u16>,
    target: Arc<Target>,
    shutdown: CancellationToken,
) {
    let (sink, source) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(QUEUE);
    let mut inputs = Vec::with_capacity(ports.len());
    // Dropped at the end: any connection still open is closed with it.
    let mut forwards = tokio::task::JoinSet::new();
    for (index, &port) in ports.iter().enumerate() {
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        inputs.push(in_tx);
        forwards.spawn(forward(
            codec,
            index,
            port,
            target.clone(),
            in_rx,
            out_tx.clone(),
        ));
    }
    drop(out_tx);
    let writer = write_out(sink, codec, ports, out_rx);
    let reader = read_in(source, codec, inputs);
    tokio::pin!(writer, reader);
    tokio::select! {
        () = &mut writer => {
            // Every port is done and the close is sent: wait briefly for the client's answer,
            // so that the connection ends with the close handshake rather than a reset.
            let _ = tokio::time::timeout(LINGER, &mut reader).await;
        }
        () = &mut reader => {}
        () = shutdown.cancelled() => {}
    }
    forwards.abort_all();
}

/// Sends each port's prefix on its two channels, then what the ports send, then a normal
/// closure when every port is done.
async fn write_out(
    mut sink: SplitSink<WebSocket, Message>,
    codec: Codec,
    ports: Vec<u16>,
    mut out: mpsc::Receiver<Message>,
) {
    for (index, &port) in ports.iter().enumerate() {
        for channel in [
            protocol::data_channel(index),
            protocol::error_channel(index),
        ] {
            let prefix = protocol::encode(codec, channel, &protocol::port_prefix(port));
            if sink.send(message(prefix)).await.is_err() {
                return;
            }
        }
    }
    while let Some(msg) = out.recv().await {
        if sink.send(msg).await.is_err() {
            return;
        }
    }
    let _ = sink.send(normal_close()).await;
}

/// Hands the client's data to the ports until the client closes the socket. Messages on other
/// channels (the error channels, or beyond the request's ports) are ignored, as the kubelet
/// ignores them.
async fn read_in(
    mut source: SplitStream<WebSocket>,
    codec: Codec,
    inputs: Vec<mpsc::Sender<Vec<u8>>>,
) {
    while let Some(Ok(msg)) = source.next().await {
        let bytes: &[u8] = match &msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            Message::Close(_) => {
                // One more read sends the answer to the close (tungstenite queues it).
                let _ = tokio::time::timeout(LINGER, source.next()).await;
                break;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match protocol::decode(codec, bytes) {
            Ok((channel, data)) => {
                if let Some(index) = protocol::data_port_index(channel, inputs.len()) {
                    if !data.is_empty() {
                        // A port whose connection has ended has dropped its queue.
                        let _ = inputs[index].send(data).await;
                    }
                }
            }
            Err(e) => tracing::debug!("port-forward: ignoring a client message: {e}"),
        }
    }
}

/// One port: connects inside the pod and copies both ways until one side ends (the other
/// then has [`LINGER`]).
async fn forward(
    codec: Codec,
    index: usize,
    port: u16,
    target: Arc<Target>,
    mut input: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Message>,
) {
    let data = protocol::data_channel(index);
    let fail = |cause: String| {
        let text = protocol::forward_error(port, &target.name, &target.uid, &cause);
        tracing::info!("port-forward: {text}");
        message(protocol::encode(
            codec,
            protocol::error_channel(index),
            text.as_bytes(),
        ))
    };
    let stream = match connect(target.netns.clone(), port).await {
        Ok(s) => s,
        Err(cause) => {
            let _ = out.send(fail(cause)).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = stream.into_split();
    let pod_to_client = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) => return Ok::<(), String>(()),
                Ok(n) => {
                    let msg = message(protocol::encode(codec, data, &buf[..n]));
                    if out.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(format!("reading from the pod: {e}")),
            }
        }
    };
    let client_to_pod = async {
        while let Some(bytes) = input.recv().await {
            to_pod
                .write_all(&bytes)
                .await
                .map_err(|e| format!("writing to the pod: {e}"))?;
        }
        // The client is gone: the pod reads the end of its input.
        let _ = to_pod.shutdown().await;
        Ok::<(), String>(())
    };
    tokio::pin!(pod_to_client, client_to_pod);
    let first = tokio::select! {
        r = &mut pod_to_client => {
            let _ = tokio::time::timeout(LINGER, &mut client_to_pod).await;
            r
        }
        r = &mut client_to_pod => {
            let _ = tokio::time::timeout(LINGER, &mut pod_to_client).await;
            r
        }
    };
    if let Err(cause) = first {
        let _ = out.send(fail(cause)).await;
    }
}

/// A TCP connection to `port` on the loopback of the namespace `netns`, for tokio.
pub(super) async fn connect(netns: Arc<File>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port));
        })
        .map_err(|e| format!("starting a thread to connect: {e}"))?;
    let stream = rx
        .await
        .map_err(|_| "the connecting thread ended without an answer".to_owned())??;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}

/// Enters `netns` and connects there. Runs on a thread of its own that ends right after, so
/// nothing else ever runs in the pod's namespace.
fn connect_in(netns: &File, port: u16) -> Result<std::net::TcpStream, String> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
                format!(
                    "failed to connect to localhost:{port} inside the pod's network namespace, IPv4: {e4} IPv6: {e6}"
                )
            })?
        }
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("the connection to port {port}: {e}"))?;
    // Keystrokes and small requests go out at once.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
