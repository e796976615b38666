//! `GET /attach/{ns}/{pod}/{container}?stdin=1&stdout=1&stderr=1&tty=1`: attaches to a running
//! container's own process over a websocket in the channel protocol of [`super::streaming`].
//!
//! Output is the container's log followed from its current end (the runtime writes stdout and
//! stderr, or the terminal's output, there), so attach sees what the process prints from now
//! on, all on the stdout channel (the log does not keep the two apart). Input goes to the
//! stdin the runtime holds for containers created with `stdin: true`
//! ([`crate::runtime::ContainerStdio`]); without it input is dropped, as Kubernetes does.
//! The stream ends with a Success status when the container exits; a client that goes away
//! leaves the container running (with `stdinOnce` its stdin is closed then).

#![allow(
    clippy::result_large_err,
    reason = "a bad parameter's error is the axum Response sent for it, built once per request"
)]

use std::io::Write as _;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use super::http::{
    accept_streaming, normal_close, query_bool, query_pairs, status_response, ServerState,
};
use super::logs::{self, LogOptions};
use super::streaming::{self, Channel, ClientFrame};
use crate::runtime::{Container, ContainerStdio};

/// The handler.
pub async fn attach(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let flags = (|| {
        Ok::<_, Response>((
            query_bool(&pairs, "stdin")?,
            query_bool(&pairs, "stdout")?,
            query_bool(&pairs, "stderr")?,
        ))
    })();
    let (stdin, stdout, stderr) = match flags {
        Ok(f) => f,
        Err(r) => return r,
    };
    let bad = |msg: &str| status_response(StatusCode::BAD_REQUEST, "BadRequest", msg);
    if !(stdin || stdout || stderr) {
        return bad("you must specify at least 1 of stdin, stdout, stderr");
    }
    let located = match state.directory.locate(&namespace, &pod, Some(&container)) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let (Some(running), Some(log)) = (located.running.filter(Container::is_running), located.log)
    else {
        return bad(&format!(
            "container {:?} in pod {pod:?} is not running",
            located.container
        ));
    };
    let (ws, protocol) = match accept_streaming(ws, "attach") {
        Ok(accepted) => accepted,
        Err(refused) => return refused,
    };
    let held = state.runtime.stdio(&running);
    let request = Request {
        stdin,
        output: stdout || stderr,
        log,
    };
    ws.on_upgrade(move |socket| async move {
        run(socket, protocol, state, running, held, request).await;
    })
}

struct Request {
    stdin: bool,
    /// The client wants the container's output.
    output: bool,
    log: std::path::PathBuf,
}

async fn run(
    socket: WebSocket,
    protocol: String,
    state: ServerState,
    container: Container,
    held: Option<std::sync::Arc<ContainerStdio>>,
    request: Request,
) {
    let (mut sink, mut source) = socket.split();
    // Output: the log from its end on, until the container's instance ends.
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let follower = {
        let alive_container = container.clone();
        tokio::spawn(logs::stream(
            request.log.clone(),
            LogOptions {
                follow: true,
                tail_lines: Some(0),
                ..LogOptions::default()
            },
            move || alive_container.is_running(),
            out_tx,
        ))
    };
    // Input: written by a thread, so that a container that does not read never blocks this
    // task.
    let input = request
        .stdin
        .then(|| held.as_ref().and_then(|h| h.stdin()))
        .flatten();
    let took_stdin = input.is_some();
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = input.map(|mut target| {
        std::thread::spawn(move || {
            for bytes in in_rx {
                if target.write_all(&bytes).is_err() {
                    return;
                }
            }
        })
    });
    let mut in_tx = Some(in_tx);
    let mut ended = false;
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(Ok(bytes)) => {
                    if request.output
                        && sink
                            .send(Message::Binary(streaming::frame(Channel::Stdout, &bytes).into()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("attach: {e}");
                    break;
                }
                None => {
                    ended = true;
                    break;
                }
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => match streaming::parse_client_frame(&bytes) {
                    Ok(ClientFrame::Stdin(data)) => {
                        if let Some(tx) = &in_tx {
                            let _ = tx.send(data.to_vec());
                        }
                    }
                    Ok(ClientFrame::Resize { width, height }) => {
                        if let Some(h) = &held {
                            h.resize(width, height);
                        }
                    }
                    Ok(ClientFrame::Close(Channel::Stdin)) if protocol == streaming::V5 => {
                        // The client's EOF: with stdinOnce the container's too, once the
                        // writer has passed on what came before.
                        in_tx = None;
                        close_once(took_stdin, held.as_deref());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("attach: ignoring a client message: {e}"),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = state.shutdown.cancelled() => break,
        }
    }
    follower.abort();
    // The writer ends with its channel; it is not joined, since a container that reads no
    // input could keep it blocked on a full pipe.
    drop(in_tx);
    drop(writer);
    // stdinOnce: the first client that had stdin closes it when it detaches.
    close_once(took_stdin, held.as_deref());
    if ended {
        let status = serde_json::json!({"metadata": {}, "status": "Success"});
        let _ = sink
            .send(Message::Binary(
                streaming::frame(Channel::Error, status.to_string().as_bytes()).into(),
            ))
            .await;
        let _ = sink.send(normal_close()).await;
    }
}

/// Closes the container's stdin if it is `stdinOnce` and this client had it.
fn close_once(took_stdin: bool, held: Option<&ContainerStdio>) {
    if let Some(h) = held.filter(|h| took_stdin && h.stdin_once()) {
        h.close_stdin();
    }
}
