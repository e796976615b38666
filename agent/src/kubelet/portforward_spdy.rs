//! `/portForward/{ns}/{pod}` upgraded to SPDY/3.1 (`portforward.k8s.io`), what kubectl
//! speaks, through the API server, which passes the upgraded connection through (and unwraps
//! kubectl's WebSocket tunnel of it): the protocol of [`skiff_k8s::portforward_spdy`] on a
//! [`super::spdy`] session.
//!
//! Every connection the client forwards is a pair of streams; once both are in, the agent
//! dials the port inside the pod's network namespace as the WebSocket protocol does
//! ([`super::portforward::connect`]) and copies bytes both ways. A failure (nothing listening,
//! a reset) is written on the pair's error stream in the kubelet's words and ends that
//! connection only: the session serves further pairs until the client ends it. A pair whose
//! second stream does not come within [`PAIR_TIMEOUT`] is dropped with a message, as the
//! kubelet's `streamCreationTimeout` does.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use skiff_k8s::portforward as ws_protocol;
use skiff_k8s::portforward_spdy::{self as protocol, Pair, Pairs};
use skiff_k8s::spdy::frame::rst;
use skiff_k8s::spdy::{headers, Headers, Limits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::http::status_response;
use super::portforward::{connect, Target, LINGER, READ_CHUNK};
use super::spdy::{self, Stream};

/// How long the first stream of a connection waits for the second.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `headers` ask for a SPDY upgrade (`Connection: Upgrade`, `Upgrade: SPDY/3.1`).
pub fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, protocol::UPGRADE)
}

/// Answers the upgrade (101, or the Status of a refused protocol) and serves the session on
/// the upgraded connection.
pub(super) fn upgrade(
    target: Arc<Target>,
    headers: &HeaderMap,
    mut request: Request,
    shutdown: CancellationToken,
) -> Response {
    let chosen = match protocol::negotiate(
        headers
            .get_all(protocol::PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    ) {
        Ok(p) => p,
        Err(e) => {
            return status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("unable to upgrade: {e}"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), target, shutdown).await,
            Err(e) => tracing::debug!("port-forward: the SPDY upgrade failed: {e}"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(protocol::UPGRADE));
    if let Some(p) = chosen {
        h.insert(protocol::PROTOCOL_HEADER, HeaderValue::from_static(p));
    }
    response.into_response()
}

/// Serves one session: pairs streams and forwards each pair's connection.
pub(super) async fn serve<IO>(io: IO, target: Arc<Target>, shutdown: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (_session, mut incoming, session) =
        spdy::start(io, spdy::Role::Server, Limits::default(), shutdown.clone());
    let mut pairs: Pairs<Stream> = Pairs::default();
    let mut timers: JoinSet<String> = JoinSet::new();
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            stream = incoming.accept() => {
                let Some(stream) = stream else { break };
                let info = match protocol::stream_info(&stream.headers, stream.id) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::debug!("port-forward: refusing stream {}: {e}", stream.id);
                        stream.writer.reset(rst::CANCEL);
                        continue;
                    }
                };
                stream.writer.reply(Headers::new());
                let request_id = info.request_id.clone();
                let first = !pairs.is_pending(&request_id);
                match pairs.add(info, stream) {
                    Ok(Some(pair)) => {
                        forwards.spawn(forward(pair, target.clone(), shutdown.clone()));
                    }
                    Ok(None) => {
                        if first {
                            timers.spawn(async move {
                                tokio::time::sleep(PAIR_TIMEOUT).await;
                                request_id
                            });
                        }
                    }
                    Err((e, stream)) => {
                        tracing::debug!("port-forward: stream {}: {e}", stream.id);
                        if is_error_stream(&stream) {
                            let _ = stream.writer.write(Bytes::from(format!(
                                "error processing stream for request {request_id}: {e}"
                            ))).await;
                        }
                        stream.writer.reset(rst::CANCEL);
                    }
                }
            }
            Some(Ok(request_id)) = timers.join_next(), if !timers.is_empty() => {
                for stream in pairs.remove(&request_id) {
                    if is_error_stream(&stream) {
                        let _ = stream.writer.write(Bytes::from(format!(
                            "timed out waiting for the streams of request {request_id}"
                        ))).await;
                    }
                    let _ = stream.writer.close().await;
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The peer said GOAWAY or left: connections under way finish (they end with the session).
    while forwards.join_next().await.is_some() {}
    let _ = session.await;
}

fn is_error_stream(stream: &Stream) -> bool {
    headers::get(&stream.headers, protocol::STREAM_TYPE) == Some("error")
}

/// One forwarded connection: dials the port in the pod and copies both ways until one side
/// ends (the other then has [`LINGER`]); a failure goes to the error stream.
async fn forward(pair: Pair<Stream>, target: Arc<Target>, shutdown: CancellationToken) {
    let Pair { port, error, data } = pair;
    // Nothing comes on the error stream (kubectl half-closes it at once): dropping its reader
    // lets the session consume anything that does.
    let Stream {
        writer: error,
        reader: unread,
        ..
    } = error;
    drop(unread);
    let Stream {
        reader: mut from_client,
        writer: to_client,
        ..
    } = data;
    let fail = |cause: String| {
        let text = ws_protocol::forward_error(port, &target.name, &target.uid, &cause);
        tracing::info!("port-forward: {text}");
        Bytes::from(text)
    };
    let outcome = match connect(target.netns.clone(), port).await {
        Err(cause) => Err(cause),
        Ok(stream) => {
            let (mut from_pod, mut to_pod) = stream.into_split();
            let pod_to_client = async {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match from_pod.read(&mut buf).await {
                        Ok(0) => return Ok::<(), String>(()),
                        Ok(n) => {
                            if to_client
                                .write(Bytes::copy_from_slice(&buf[..n]))
                                .await
                                .is_err()
                            {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(format!("reading from the pod: {e}")),
                    }
                }
            };
            let client_to_pod = async {
                while let Some(bytes) = from_client.read().await {
                    to_pod
                        .write_all(&bytes)
                        .await
                        .map_err(|e| format!("writing to the pod: {e}"))?;
                }
                // The client has finished: the pod reads the end of its input.
                let _ = to_pod.shutdown().await;
                Ok::<(), String>(())
            };
            tokio::pin!(pod_to_client, client_to_pod);
            tokio::select! {
                r = &mut pod_to_client => {
                    let _ = to_client.close().await;
                    let _ = tokio::time::timeout(LINGER, &mut client_to_pod).await;
                    r
                }
                r = &mut client_to_pod => {
                    let _ = tokio::time::timeout(LINGER, &mut pod_to_client).await;
                    r
                }
                () = shutdown.cancelled() => Ok(()),
            }
        }
    };
    if let Err(cause) = outcome {
        let _ = error.write(fail(cause)).await;
    }
    // kubectl waits for the end of both streams before it closes the local connection.
    let _ = error.close().await;
    let _ = to_client.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdy_upgrades_are_told_from_websockets() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(is_spdy_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrade"),
        );
        assert!(is_spdy_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_spdy_upgrade(&h));
        assert!(!is_spdy_upgrade(&HeaderMap::new()));
    }
}
