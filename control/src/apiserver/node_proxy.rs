//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: the API server finds the
//! pod's node, and proxies the request to the agent's HTTPS endpoint (the kubelet's
//! `/containerLogs`, `/exec`, `/attach` and `/portForward`), at the Node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`, over TLS that verifies the agent's CA-issued
//! serving certificate and presents the API server's client certificate
//! ([`KubeletClient`](super::kubelet_client::KubeletClient)).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{self, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use super::{ApiError, ApiState};

/// The exec streaming subprotocols the proxy (and the agent) speak, best first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The agent's default port when a Node does not advertise one.
const DEFAULT_KUBELET_PORT: u64 = 10250;

/// Where a pod's container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://<ip>:<port>` of the pod's agent.
    pub base: String,
    /// The container (named in the request, or the pod's only one).
    pub container: String,
    /// The pod's phase.
    pub phase: String,
}

/// Resolves the container as the API server does: the named one, or the only one.
pub fn resolve_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names: Vec<&str> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| {
            pod["spec"][field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
        })
        .collect();
    match asked.filter(|a| !a.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            let main: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [only] => Ok((*only).to_owned()),
                _ => Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                ))),
            }
        }
    }
}

/// The agent's base URL from its Node object.
pub fn kubelet_base(node: &Value) -> Result<String, ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {name} has no InternalIP address")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|&p| p > 0 && p <= 65535)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    Ok(format!("https://{host}:{port}"))
}

/// The pod, from the store.
async fn get_pod(state: &ApiState, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let pods = state
        .registry
        .find("", "v1", "pods")
        .ok_or(ApiError::UnknownResource)?;
    let key = pods.key(Some(namespace), name);
    state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, "pods", name))?
        .ok_or_else(|| ApiError::NotFound {
            kind: "pods".into(),
            name: name.into(),
        })
}

/// The base URL of the agent of the pod's node.
async fn node_base(state: &ApiState, pod: &Value, name: &str) -> Result<String, ApiError> {
    let nodes = state
        .registry
        .find("", "v1", "nodes")
        .ok_or(ApiError::UnknownResource)?;
    let node_name = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_owned();
    let key = nodes.key(None, &node_name);
    let node = state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, "nodes", &node_name))?
        .ok_or_else(|| ApiError::NotFound {
            kind: "nodes".into(),
            name: node_name.clone(),
        })?;
    kubelet_base(&node)
}

fn phase(pod: &Value) -> String {
    pod["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_owned()
}

async fn locate(
    state: &ApiState,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<Target, ApiError> {
    let pod = get_pod(state, namespace, name).await?;
    let container = resolve_container(&pod, name, container)?;
    Ok(Target {
        base: node_base(state, &pod, name).await?,
        container,
        phase: phase(&pod),
    })
}

fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn path_segment(s: &str) -> String {
    // Names are DNS labels/subdomains; encode anyway so nothing can alter the agent's path.
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The credentials for kubelets, which a server always has.
fn kubelet(state: &ApiState) -> Result<&super::kubelet_client::KubeletClient, ApiError> {
    state
        .kubelet
        .get()
        .ok_or_else(|| ApiError::Internal("this API server has no credentials for kubelets".into()))
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`.
pub async fn pod_log(
    State(state): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = pairs(query.as_deref());
    for key in ["tailLines", "limitBytes", "sinceSeconds"] {
        if let Some(v) = last(&params, key) {
            if v.parse::<i64>().is_err() {
                return Err(ApiError::BadRequest(format!(
                    "invalid value {v:?} for {key}: not an integer"
                )));
            }
        }
    }
    let target = locate(&state, &namespace, &name, last(&params, "container")).await?;
    let forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "follow" | "previous" | "tailLines" | "limitBytes" | "sinceSeconds" | "timestamps"
            )
        })
        .cloned()
        .collect();
    let url = format!(
        "{}/containerLogs/{}/{}/{}?{}",
        target.base,
        path_segment(&namespace),
        path_segment(&name),
        path_segment(&target.container),
        encode(&forwarded)
    );
    let response = kubelet(&state)?
        .http()
        .get(&url)
        .send()
        .await
        .map_err(|e| ApiError::Internal(format!("connecting to the node: {e}")))?;
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_owned();
    Ok((
        status,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(response.bytes_stream()),
    )
        .into_response())
}

/// The subprotocols a websocket client offered, in its order.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The best protocol both sides speak (the proxy's preference order).
pub fn choose_protocol(offered: &[String]) -> Option<&'static str> {
    EXEC_PROTOCOLS
        .iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec`: a websocket upgrade (kubectl's
/// v5/v4 channel protocols), proxied message by message to the agent's `/exec`.
pub async fn pod_exec(
    State(state): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = pairs(query.as_deref());
    if !params.iter().any(|(k, _)| k == "command") {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    stream_to_agent(
        &state,
        Stream::Exec,
        &namespace,
        &name,
        &params,
        &headers,
        upgrade,
    )
    .await
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/attach`: as [`pod_exec`], to the agent's
/// `/attach` (the container's own process).
pub async fn pod_attach(
    State(state): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = pairs(query.as_deref());
    stream_to_agent(
        &state,
        Stream::Attach,
        &namespace,
        &name,
        &params,
        &headers,
        upgrade,
    )
    .await
}

/// Which of the streaming subresources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Exec,
    Attach,
}

impl Stream {
    fn verb(self) -> &'static str {
        match self {
            Stream::Exec => "exec",
            Stream::Attach => "attach",
        }
    }
}

/// Proxies an exec or attach websocket to the pod's agent.
async fn stream_to_agent(
    state: &Arc<ApiState>,
    kind: Stream,
    namespace: &str,
    name: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let target = locate(state, namespace, name, last(params, "container")).await?;
    if matches!(target.phase.as_str(), "Succeeded" | "Failed") {
        return Err(ApiError::BadRequest(format!(
            "cannot {} a container in a completed pod; current phase is {}",
            match kind {
                Stream::Exec => "exec into",
                Stream::Attach => "attach to",
            },
            target.phase
        )));
    }
    let forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "command" | "stdin" | "stdout" | "stderr" | "tty"
            )
        })
        .cloned()
        .collect();
    let url = format!(
        "{}/{}/{}/{}/{}?{}",
        target.base,
        kind.verb(),
        path_segment(namespace),
        path_segment(name),
        path_segment(&target.container),
        encode(&forwarded)
    );
    let Ok(upgrade) = upgrade else {
        // Not a websocket (SPDY, which kubectl falls back to when the websocket upgrade was
        // refused): ask the agent without upgrading, so that the client sees the agent's
        // reason (container not running, ...) or that SPDY is not supported.
        let response = kubelet(state)?
            .http()
            .get(&url)
            .send()
            .await
            .map_err(|e| ApiError::Internal(format!("connecting to the node: {e}")))?;
        let status = StatusCode::from_u16(response.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::Internal(format!("reading from the node: {e}")))?;
        return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    };
    let offered = offered_protocols(headers);
    let protocol = choose_protocol(&offered).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "none of the offered streaming protocols {offered:?} is supported; use one of {EXEC_PROTOCOLS:?}"
        ))
    })?;
    let url = url.replacen("https://", "wss://", 1);
    // Connect to the agent first, so that its refusal (container not running, ...) reaches
    // the client as an HTTP error rather than a closed websocket.
    let tls = kubelet(state)?.tls();
    let agent = match connect_agent(&url, tls, Some(protocol), None).await {
        Ok(s) => s,
        Err(AgentError::Refused(status, body)) => {
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(AgentError::Other(message)) => {
            return Err(ApiError::Internal(format!(
                "connecting to the node for {}: {message}",
                kind.verb()
            )))
        }
    };
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .protocols([protocol])
        .on_upgrade(move |client| async move {
            tokio::select! {
                () = pump(client, agent) => {}
                () = shutdown.cancelled() => {}
            }
        }))
}

/// The largest websocket message either side of a port-forward may send (the agent's bound).
const PORTFORWARD_MAX_MESSAGE: usize = 4 << 20;

/// The ports and the negotiated subprotocol (`None`: the client offered none) of a
/// port-forward request, or the 400 for them.
pub fn portforward_options(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Vec<u16>, Option<&'static str>), ApiError> {
    use skiff_k8s::portforward as protocol;
    let params = pairs(query);
    let values: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "ports")
        .map(|(_, v)| v.as_str())
        .collect();
    let ports = protocol::parse_ports(&values).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let chosen = protocol::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((ports, chosen))
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/portforward` for a Running pod, proxied to
/// the agent's `/portForward` in the client's protocol:
///
/// - SPDY/3.1 (`portforward.k8s.io`, kubectl): a plain upgrade is passed through as bytes
///   once the agent has answered its own upgrade with 101; kubectl's WebSocket tunnel of it
///   (subprotocol `SPDY/3.1+portforward.k8s.io`) is unwrapped, its binary messages carrying
///   the SPDY bytes. The agent terminates SPDY ([`skiff_k8s::portforward_spdy`]).
/// - WebSocket channels (`?ports=80,8080`; no subprotocol, `v4.channel.k8s.io` or
///   `v4.base64.channel.k8s.io`; [`skiff_k8s::portforward`]): proxied message by message.
pub async fn pod_portforward(
    State(state): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequestParts as _;
    use skiff_k8s::portforward as protocol;
    let spdy = portforward_spdy_mode(&headers)?;
    let (mut parts, body) = request.into_parts();
    // A plain SPDY upgrade keeps its connection for the copy below; the rest are websockets.
    let upgrade = match spdy {
        Some(SpdyMode::Upgrade) => None,
        _ => ws::WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .ok(),
    };
    let ws_options = match (&spdy, &upgrade) {
        (Some(SpdyMode::WebSocketTunnel), None) => {
            return Err(ApiError::BadRequest(format!(
                "{} is a websocket subprotocol: it needs a websocket upgrade",
                skiff_k8s::portforward_spdy::WEBSOCKET_TUNNEL
            )))
        }
        (Some(_), _) => None,
        (None, Some(_)) => Some(portforward_options(query.as_deref(), &headers)?),
        (None, None) => {
            return Err(ApiError::BadRequest(format!(
                "port-forward needs an upgrade: to SPDY/3.1 ({}) or to a websocket (no \
                 subprotocol, {} or {})",
                skiff_k8s::portforward_spdy::PROTOCOL_V1,
                protocol::V4_BINARY,
                protocol::V4_BASE64
            )))
        }
    };
    let pod = get_pod(&state, &namespace, &name).await?;
    let phase = phase(&pod);
    if phase != "Running" {
        // kubectl's words for it.
        return Err(ApiError::BadRequest(format!(
            "unable to forward port because pod is not running. Current status={phase}"
        )));
    }
    let base = node_base(&state, &pod, &name).await?;
    let path = format!(
        "/portForward/{}/{}",
        path_segment(&namespace),
        path_segment(&name)
    );
    let shutdown = state.shutdown.clone();
    let tls = kubelet(&state)?.tls();
    if let Some(mode) = spdy {
        let agent = match spdy_to_agent(&base, &path, tls).await {
            Ok(a) => a,
            Err(AgentError::Refused(status, body)) => {
                return Ok(
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                )
            }
            Err(AgentError::Other(message)) => {
                return Err(ApiError::Internal(format!(
                    "connecting to the node for port-forward: {message}"
                )))
            }
        };
        let request = axum::extract::Request::from_parts(parts, body);
        return Ok(answer_spdy(mode, upgrade, request, agent, shutdown));
    }
    let (Some(upgrade), Some((ports, chosen))) = (upgrade, ws_options) else {
        return Err(ApiError::Internal("port-forward: no upgrade".into()));
    };
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let url = format!(
        "{}{path}?{}",
        base.replacen("https://", "wss://", 1),
        encode(&[("ports".to_owned(), ports.join(","))])
    );
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(PORTFORWARD_MAX_MESSAGE))
        .max_frame_size(Some(PORTFORWARD_MAX_MESSAGE));
    let agent = match connect_agent(&url, tls, chosen, Some(config)).await {
        Ok(s) => s,
        Err(AgentError::Refused(status, body)) => {
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(AgentError::Other(message)) => {
            return Err(ApiError::Internal(format!(
                "connecting to the node for port-forward: {message}"
            )))
        }
    };
    let mut upgrade = upgrade
        .max_message_size(PORTFORWARD_MAX_MESSAGE)
        .max_frame_size(PORTFORWARD_MAX_MESSAGE);
    if let Some(p) = chosen {
        upgrade = upgrade.protocols([p]);
    }
    Ok(upgrade.on_upgrade(move |client| async move {
        tokio::select! {
            () = pump(client, agent) => {}
            () = shutdown.cancelled() => {}
        }
    }))
}

/// Answers a SPDY port-forward client once the agent has upgraded: the websocket of the
/// tunnel, its messages unwrapped into `agent`; or a 101, then the bytes of both connections
/// copied as they are.
fn answer_spdy(
    mode: SpdyMode,
    upgrade: Option<ws::WebSocketUpgrade>,
    mut request: axum::extract::Request,
    agent: AgentStream,
    shutdown: tokio_util::sync::CancellationToken,
) -> Response {
    match (mode, upgrade) {
        (SpdyMode::WebSocketTunnel, Some(upgrade)) => upgrade
            .protocols([skiff_k8s::portforward_spdy::WEBSOCKET_TUNNEL])
            .max_message_size(PORTFORWARD_MAX_MESSAGE)
            .max_frame_size(PORTFORWARD_MAX_MESSAGE)
            .on_upgrade(move |client| async move {
                tokio::select! {
                    () = tunnel(client, agent) => {}
                    () = shutdown.cancelled() => {}
                }
            }),
        (SpdyMode::Upgrade, _) | (SpdyMode::WebSocketTunnel, None) => {
            let client = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(client) = client.await else { return };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut agent = agent;
                tokio::select! {
                    _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client, &mut agent, COPY_BUFFER, COPY_BUFFER) => {}
                    () = shutdown.cancelled() => {}
                }
            });
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            h.insert(
                header::UPGRADE,
                header::HeaderValue::from_static(skiff_k8s::portforward_spdy::UPGRADE),
            );
            h.insert(
                skiff_k8s::portforward_spdy::PROTOCOL_HEADER,
                header::HeaderValue::from_static(skiff_k8s::portforward_spdy::PROTOCOL_V1),
            );
            response
        }
    }
}

/// How a port-forward client speaks SPDY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpdyMode {
    /// An HTTP upgrade to `SPDY/3.1`.
    Upgrade,
    /// SPDY in the binary messages of a WebSocket (`SPDY/3.1+portforward.k8s.io`).
    WebSocketTunnel,
}

/// Whether a port-forward request speaks SPDY, and how; `None` for the WebSocket channel
/// protocols. A SPDY upgrade whose `X-Stream-Protocol-Version` offer lacks
/// `portforward.k8s.io` is refused (403, as the kubelet's handshake does).
pub fn portforward_spdy_mode(headers: &HeaderMap) -> Result<Option<SpdyMode>, ApiError> {
    use skiff_k8s::portforward_spdy as spdy;
    if offered_protocols(headers)
        .iter()
        .any(|p| p == spdy::WEBSOCKET_TUNNEL)
    {
        return Ok(Some(SpdyMode::WebSocketTunnel));
    }
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !(has(header::CONNECTION, "upgrade") && has(header::UPGRADE, spdy::UPGRADE)) {
        return Ok(None);
    }
    spdy::negotiate(
        headers
            .get_all(spdy::PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .map_err(|e| ApiError::Forbidden(format!("unable to upgrade: {e}")))?;
    Ok(Some(SpdyMode::Upgrade))
}

/// Read and write buffers of a passed-through SPDY connection.
const COPY_BUFFER: usize = 64 << 10;
/// The largest answer body read from an agent that refuses an upgrade.
const MAX_REFUSAL_BODY: usize = 64 << 10;

type AgentStream = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Upgrades `path` on the agent at `base` to SPDY/3.1 (`portforward.k8s.io`): the upgraded
/// connection, or the agent's refusal.
async fn spdy_to_agent(
    base: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<AgentStream, AgentError> {
    use http_body_util::BodyExt as _;
    use skiff_k8s::portforward_spdy as spdy;
    let uri: http::Uri = base
        .parse()
        .map_err(|e| AgentError::Other(format!("{base}: {e}")))?;
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let stream = agent_tls(&host, port, tls).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Other(format!("HTTP to {host}:{port}: {e}")))?;
    tokio::spawn(connection.with_upgrades());
    let request = http::Request::post(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, spdy::UPGRADE)
        .header(spdy::PROTOCOL_HEADER, spdy::PROTOCOL_V1)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| AgentError::Other(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| AgentError::Other(format!("upgrading at {host}:{port}: {e}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_REFUSAL_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        return Err(AgentError::Refused(status, body));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| AgentError::Other(format!("upgrading at {host}:{port}: {e}")))?;
    Ok(hyper_util::rt::TokioIo::new(upgraded))
}

/// Carries SPDY bytes between kubectl's WebSocket tunnel (one binary message per write) and
/// the agent's upgraded connection, until either side ends.
async fn tunnel(client: ws::WebSocket, agent: AgentStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut from_agent, mut to_agent) = tokio::io::split(agent);
    let (mut to_client, mut from_client) = client.split();
    let up = async {
        while let Some(Ok(msg)) = from_client.next().await {
            match msg {
                ws::Message::Binary(b) => {
                    if to_agent.write_all(&b).await.is_err() {
                        break;
                    }
                }
                ws::Message::Ping(_) | ws::Message::Pong(_) => {}
                // Text is not part of the tunnel (client-go refuses it too).
                ws::Message::Text(_) | ws::Message::Close(_) => break,
            }
        }
        // The agent's session sees the end of the connection and ends.
        let _ = to_agent.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            match from_agent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = ws::Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if to_client.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to_client
            .send(ws::Message::Close(Some(ws::CloseFrame {
                code: ws::close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut up => {
            // The agent closes its side once its session has seen the end.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut down).await;
        }
        () = &mut down => {}
    }
}

type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

enum AgentError {
    /// The agent answered the upgrade with an HTTP error (a Status body).
    Refused(StatusCode, Vec<u8>),
    Other(String),
}

/// Opens the websocket to the agent, offering `protocol` (none: no subprotocol header).
async fn connect_agent(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    protocol: Option<&str>,
    config: Option<tungstenite::protocol::WebSocketConfig>,
) -> Result<AgentSocket, AgentError> {
    use tungstenite::client::IntoClientRequest as _;
    let mut request = url
        .into_client_request()
        .map_err(|e| AgentError::Other(e.to_string()))?;
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            protocol
                .parse()
                .map_err(|_| AgentError::Other("bad protocol".into()))?,
        );
    }
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tls = agent_tls(&host, port, tls).await?;
    match tokio_tungstenite::client_async_with_config(request, tls, config).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            Err(AgentError::Refused(
                status,
                response.into_body().unwrap_or_default(),
            ))
        }
        Err(e) => Err(AgentError::Other(e.to_string())),
    }
}

/// A TLS connection to the agent at `host:port` that verifies its serving certificate and
/// presents the API server's client certificate.
async fn agent_tls(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, AgentError> {
    let host = host.trim_matches(['[', ']']).to_owned();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| AgentError::Other(format!("connecting to {host}:{port}: timed out")))?
    .map_err(|e| AgentError::Other(format!("connecting to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| AgentError::Other(format!("{host}: {e}")))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| AgentError::Other(format!("TLS to {host}:{port}: {e}")))
}

/// Copies messages both ways until either side closes.
async fn pump(client: ws::WebSocket, agent: AgentSocket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let to_agent = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let msg = match msg {
                ws::Message::Binary(b) => tungstenite::Message::Binary(b),
                ws::Message::Text(t) => tungstenite::Message::text(t.as_str()),
                ws::Message::Ping(p) => tungstenite::Message::Ping(p),
                ws::Message::Pong(p) => tungstenite::Message::Pong(p),
                ws::Message::Close(_) => break,
            };
            if agent_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = agent_tx
            .send(tungstenite::Message::Close(Some(
                tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: "".into(),
                },
            )))
            .await;
    };
    let to_client = async {
        // A normal closure unless the agent says otherwise: kubectl treats a close without a
        // status code as an error.
        let mut close = ws::CloseFrame {
            code: ws::close_code::NORMAL,
            reason: "".into(),
        };
        while let Some(Ok(msg)) = agent_rx.next().await {
            let msg = match msg {
                tungstenite::Message::Binary(b) => ws::Message::Binary(b),
                tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
                tungstenite::Message::Ping(p) => ws::Message::Ping(p),
                tungstenite::Message::Pong(p) => ws::Message::Pong(p),
                tungstenite::Message::Close(frame) => {
                    if let Some(f) = frame {
                        close = ws::CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        };
                    }
                    break;
                }
                tungstenite::Message::Frame(_) => continue,
            };
            if client_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = client_tx.send(ws::Message::Close(Some(close))).await;
    };
    // The agent ends the stream (after the exit status); the client may end it earlier.
    tokio::select! {
        () = to_client => {}
        () = to_agent => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_resolve_as_the_api_server_does() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(resolve_container(&one, "p", None).unwrap(), "app");
        assert_eq!(resolve_container(&one, "p", Some("app")).unwrap(), "app");
        let e = resolve_container(&one, "p", Some("nope")).unwrap_err();
        assert_eq!(e.code(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "container nope is not valid for pod p");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
                                   "initContainers": [{"name": "init"}]}});
        assert_eq!(
            resolve_container(&two, "p", None).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(resolve_container(&two, "p", Some("init")).unwrap(), "init");
    }

    #[test]
    fn the_node_gives_the_agent_address() {
        let node = json!({"metadata": {"name": "n"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}});
        assert_eq!(kubelet_base(&node).unwrap(), "https://10.0.0.5:11250");
        let no_port = json!({"metadata": {"name": "n"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}});
        assert_eq!(kubelet_base(&no_port).unwrap(), "https://10.0.0.5:10250");
        let no_ip = json!({"metadata": {"name": "n"}, "status": {}});
        assert_eq!(
            kubelet_base(&no_ip).unwrap_err().code(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn portforward_requests_name_valid_ports_and_a_protocol_of_port_forward() {
        let none = HeaderMap::new();
        assert_eq!(
            portforward_options(Some("ports=80"), &none).unwrap(),
            (vec![80], None)
        );
        // kube-rs's query, and its offer (v5 first: port-forward has no v5).
        let mut kube_rs = HeaderMap::new();
        kube_rs.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            portforward_options(Some("&ports=80%2C1234"), &kube_rs).unwrap(),
            (vec![80, 1234], Some("v4.channel.k8s.io"))
        );
        for (query, message) in [
            (None, "query parameter \"ports\" is required"),
            (Some("ports="), "query parameter \"ports\" cannot be empty"),
            (Some("ports=0"), "port \"0\" must be > 0"),
            (
                Some("ports=70000"),
                "unable to parse \"70000\" as a port: ports are numbers from 1 to 65535",
            ),
            (
                Some("ports=http"),
                "unable to parse \"http\" as a port: ports are numbers from 1 to 65535",
            ),
        ] {
            let e = portforward_options(query, &none).unwrap_err();
            assert_eq!(e.code(), StatusCode::BAD_REQUEST, "{query:?}");
            assert_eq!(e.to_string(), message, "{query:?}");
        }
        let many = (1..=33)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = portforward_options(Some(&format!("ports={many}")), &none).unwrap_err();
        assert_eq!(e.code(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("at most 32"), "{e}");
        let mut other = HeaderMap::new();
        other.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v2.portforward.k8s.io".parse().unwrap(),
        );
        let e = portforward_options(Some("ports=80"), &other).unwrap_err();
        assert_eq!(e.code(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("SPDY/3.1+portforward.k8s.io"), "{e}");
    }

    #[test]
    fn spdy_clients_are_told_apart() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        // kubectl 1.31+: SPDY in a websocket.
        let tunnel = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]);
        assert_eq!(
            portforward_spdy_mode(&tunnel).unwrap(),
            Some(SpdyMode::WebSocketTunnel)
        );
        // Older kubectl, and the fallback: a plain upgrade.
        let plain = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]);
        assert_eq!(
            portforward_spdy_mode(&plain).unwrap(),
            Some(SpdyMode::Upgrade)
        );
        let unversioned = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        assert_eq!(
            portforward_spdy_mode(&unversioned).unwrap(),
            Some(SpdyMode::Upgrade)
        );
        let wrong = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]);
        let e = portforward_spdy_mode(&wrong).unwrap_err();
        assert_eq!(e.code(), StatusCode::FORBIDDEN);
        assert!(
            e.to_string().contains("unable to negotiate protocol"),
            "{e}"
        );
        // The channel protocols are not SPDY.
        let channels = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        assert_eq!(portforward_spdy_mode(&channels).unwrap(), None);
    }

    #[test]
    fn the_best_common_protocol_wins() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            choose_protocol(&offered(&["v4.channel.k8s.io", "v5.channel.k8s.io"])),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            choose_protocol(&offered(&["channel.k8s.io", "v4.channel.k8s.io"])),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(choose_protocol(&offered(&["base64.channel.k8s.io"])), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            offered_protocols(&headers),
            ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        );
    }
}
