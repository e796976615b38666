//! `GET /exec/{ns}/{pod}/{container}?command=..&stdin=1&stdout=1&stderr=1&tty=1`: runs a
//! command in a container ([`crate::runtime::Runtime::exec`]) and streams its stdio over a
//! websocket in the channel protocol of [`super::streaming`]. The process's pipes (or its
//! terminal's master) are read and written by blocking threads; their bytes meet the socket
//! in one task. When the process ends its exit code goes out on the error channel and the
//! socket closes; when the client goes first the process is killed.

#![allow(
    clippy::result_large_err,
    reason = "a bad parameter's error is the axum Response sent for it, built once per request"
)]

use std::io::Write as _;
use std::os::fd::OwnedFd;

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
use super::streaming::{self, Channel, ClientFrame};
use crate::runtime::stdio::set_window_size;
use crate::runtime::{Container, ExecProcess};

/// What the client asked for.
#[derive(Debug, Clone)]
struct ExecRequest {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The handler.
pub async fn exec(
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
            query_bool(&pairs, "tty")?,
        ))
    })();
    let (stdin, stdout, stderr, tty) = match flags {
        Ok(f) => f,
        Err(r) => return r,
    };
    let request = ExecRequest {
        command: pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect(),
        stdin,
        stdout,
        stderr,
        // A terminal merges stderr into stdout.
        tty,
    };
    let bad = |msg: &str| status_response(StatusCode::BAD_REQUEST, "BadRequest", msg);
    if request.command.is_empty() {
        return bad("you must specify at least 1 command");
    }
    if !(stdin || stdout || stderr) {
        return bad("you must specify at least 1 of stdin, stdout, stderr");
    }
    let located = match state.directory.locate(&namespace, &pod, Some(&container)) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let Some(running) = located.running.filter(Container::is_running) else {
        return bad(&format!(
            "container {:?} in pod {pod:?} is not running",
            located.container
        ));
    };
    let (ws, protocol) = match accept_streaming(ws, "exec") {
        Ok(accepted) => accepted,
        Err(refused) => return refused,
    };
    ws.on_upgrade(move |socket| async move {
        run(socket, protocol, state, running, request).await;
    })
}

/// A chunk of output or the end of an output stream.
enum Out {
    Data(Channel, Vec<u8>),
    /// The process's exit code (or why it could not run).
    Exited(Result<i32, String>),
}

/// Input for the process.
enum In {
    Data(Vec<u8>),
    Resize(u16, u16),
}

/// Copies `reader` to the client on `channel`; without `tx` (output the client did not ask
/// for) it still reads, so that the process never blocks on a full pipe.
fn read_into(mut reader: impl std::io::Read, channel: Channel, tx: Option<mpsc::Sender<Out>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(tx) = &tx {
                    if tx
                        .blocking_send(Out::Data(channel, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

async fn run(
    socket: WebSocket,
    protocol: String,
    state: ServerState,
    container: Container,
    request: ExecRequest,
) {
    let (mut sink, mut source) = socket.split();
    let started = {
        let (runtime, argv, tty) = (state.runtime.clone(), request.command.clone(), request.tty);
        tokio::task::spawn_blocking(move || runtime.exec(&container, &argv, tty)).await
    };
    let mut process: ExecProcess = match started {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let status = streaming::failure_status(&format!("exec: {e}"));
            let _ = sink
                .send(Message::Binary(
                    streaming::frame(Channel::Error, status.to_string().as_bytes()).into(),
                ))
                .await;
            let _ = sink.send(normal_close()).await;
            return;
        }
        Err(e) => {
            tracing::warn!("exec task: {e}");
            return;
        }
    };
    let shim_pid = process.child.id();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    let (in_tx, in_rx) = std::sync::mpsc::channel::<In>();
    let mut readers = Vec::new();

    // Process -> client.
    let master = process.pty.take();
    let master_writer = master.as_ref().map(|m| {
        m.try_clone()
            .map(std::fs::File::from)
            .map_err(|e| tracing::warn!("terminal: {e}"))
    });
    if let Some(m) = &master {
        if let Ok(reader) = m.try_clone() {
            let tx = request.stdout.then(|| out_tx.clone());
            readers.push(std::thread::spawn(move || {
                read_into(std::fs::File::from(reader), Channel::Stdout, tx)
            }));
        }
    }
    for (pipe, channel, wanted) in [
        (
            process.child.stdout.take().map(OwnedFd::from),
            Channel::Stdout,
            request.stdout,
        ),
        (
            process.child.stderr.take().map(OwnedFd::from),
            Channel::Stderr,
            request.stderr || request.tty,
        ),
    ] {
        if let Some(pipe) = pipe {
            let tx = wanted.then(|| out_tx.clone());
            readers.push(std::thread::spawn(move || {
                read_into(std::fs::File::from(pipe), channel, tx)
            }));
        }
    }

    // Client -> process.
    let stdin_pipe = process.child.stdin.take();
    let writer = std::thread::spawn(move || {
        let mut pipe = stdin_pipe.map(|p| std::fs::File::from(OwnedFd::from(p)));
        let mut terminal = master_writer.and_then(Result::ok);
        for input in in_rx {
            match input {
                In::Data(bytes) => {
                    let target = terminal.as_mut().or(pipe.as_mut());
                    if let Some(t) = target {
                        if t.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                }
                In::Resize(width, height) => {
                    if let Some(t) = &terminal {
                        if let Ok(fd) = t.try_clone() {
                            set_window_size(&OwnedFd::from(fd), width, height);
                        }
                    }
                }
            }
        }
        // The channel closed: stdin's EOF (closing the pipe; a terminal stays open until the
        // process ends).
    });
    let stdin_wanted = request.stdin;
    let in_tx = if stdin_wanted { Some(in_tx) } else { None };

    // The shim's exit is the process's.
    let waiter = {
        let tx = out_tx.clone();
        std::thread::spawn(move || {
            let code = match process.child.wait() {
                Ok(status) => Ok(status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(0)
                })),
                Err(e) => Err(format!("waiting for the exec: {e}")),
            };
            // Output first: the readers end when the process (and the shim) closed them.
            for r in readers {
                let _ = r.join();
            }
            let _ = tx.blocking_send(Out::Exited(code));
        })
    };
    drop(out_tx);
    let mut in_tx = in_tx;
    let mut exit = None;
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(Out::Data(channel, bytes)) => {
                    if sink.send(Message::Binary(streaming::frame(channel, &bytes).into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Exited(code)) => {
                    exit = Some(code);
                    break;
                }
                None => break,
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => match streaming::parse_client_frame(&bytes) {
                    Ok(ClientFrame::Stdin(data)) => {
                        if let Some(tx) = &in_tx {
                            let _ = tx.send(In::Data(data.to_vec()));
                        }
                    }
                    Ok(ClientFrame::Resize { width, height }) => {
                        if let Some(tx) = &in_tx {
                            let _ = tx.send(In::Resize(width, height));
                        } else if let Some(m) = &master {
                            set_window_size(m, width, height);
                        }
                    }
                    Ok(ClientFrame::Close(Channel::Stdin)) if protocol == streaming::V5 => {
                        in_tx = None;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("exec: ignoring a client message: {e}"),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = state.shutdown.cancelled() => break,
        }
    }
    if exit.is_none() {
        // Nobody listens: end the process rather than leave it running in the container.
        crate::runtime::kill_exec(shim_pid);
    }
    drop(in_tx);
    if let Some(code) = exit {
        let status = match code {
            Ok(code) => streaming::exit_status(&request.command, code),
            Err(message) => streaming::failure_status(&message),
        };
        let _ = sink
            .send(Message::Binary(
                streaming::frame(Channel::Error, status.to_string().as_bytes()).into(),
            ))
            .await;
        let _ = sink.send(normal_close()).await;
    }
    drop(master);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = waiter.join();
        let _ = writer.join();
    })
    .await;
}
