//! A SPDY/3.1 session over a byte stream (an upgraded HTTP connection), for port-forward's
//! `portforward.k8s.io` and its tests: the frames and windows of [`skiff_k8s::spdy`] driven
//! by three tasks. A reader decodes frames, a writer sends encoded bytes, and the session task
//! owns all state (streams, windows, the header compressor) and answers both the peer's
//! frames and its own streams' commands, so no lock is shared.
//!
//! Streams are handed out as a [`StreamReader`] (data as it arrives, `None` at the peer's FIN
//! or reset) and a [`StreamWriter`] (data, FIN, reset, SYN_REPLY). Each write waits until its
//! bytes are framed, so a writer buffers at most one write.
//!
//! Backpressure: received data waits in its stream's queue; when one stream holds more than
//! [`MAX_BUFFERED`] unread bytes the session stops reading the socket until it drains, so TCP
//! holds the peer back (what spdystream, which kubectl and the kubelet use, relies on, since it
//! keeps no windows). Commands are served meanwhile, so a stream's reader waiting for its own
//! writes to go out can never stall the session. Windows follow the spec
//! ([`skiff_k8s::spdy::flow`]): this side returns what it consumes with WINDOW_UPDATE, and
//! once the peer shows it keeps windows, sends wait for them and overruns reset the stream.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use skiff_k8s::spdy::flow::{FlowError, PeerFlow, RecvWindow, SendWindow, DEFAULT_WINDOW};
use skiff_k8s::spdy::frame::{goaway, rst, settings, Setting};
use skiff_k8s::spdy::{Decoder, Encoder, Frame, FrameError, Headers, Limits};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Streams open at once in one session (both halves of a port-forward connection count).
pub const MAX_STREAMS: usize = 256;
/// Unread bytes one stream may hold before the session stops reading the socket.
pub const MAX_BUFFERED: usize = 1 << 20;
/// The receive window this side announces for every stream (SETTINGS INITIAL_WINDOW_SIZE).
pub const RECV_WINDOW: u32 = 1 << 20;
/// The receive window of the whole session (a WINDOW_UPDATE of stream 0 at the start grows
/// it from the spec's 64 KiB).
pub const RECV_SESSION_WINDOW: u32 = 16 << 20;
/// The largest DATA frame this side sends.
const MAX_SEND_FRAME: usize = 64 << 10;
/// Peer-opened streams waiting to be accepted: as many as may be open, so that a burst of
/// connections is never refused for a moment's delay in accepting.
const ACCEPT_QUEUE: usize = MAX_STREAMS;
/// Encoded frames waiting for the socket.
const WRITE_QUEUE: usize = 64;

/// Which end of the session this side is: it decides stream and ping id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens odd streams (kubectl).
    Client,
    /// Opens even streams (the kubelet).
    Server,
}

/// Why a stream or session operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// The session has ended.
    #[error("the SPDY session has ended")]
    SessionEnded,
    /// The stream was reset, or its sending side is closed.
    #[error("SPDY stream {0} is closed")]
    StreamClosed(u32),
    /// The peer broke the protocol.
    #[error("SPDY protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The peer broke the session's flow control.
    #[error("SPDY flow control error: {0}")]
    Flow(#[from] FlowError),
    /// No stream ids are left (2^31 streams were opened).
    #[error("no SPDY stream ids left")]
    StreamIdsExhausted,
}

enum Command {
    Open {
        headers: Headers,
        done: oneshot::Sender<Result<Stream, SpdyError>>,
    },
    Reply {
        id: u32,
        headers: Headers,
    },
    Data {
        id: u32,
        data: Bytes,
        fin: bool,
        done: oneshot::Sender<Result<(), SpdyError>>,
    },
    Consumed {
        id: u32,
        n: usize,
    },
    Reset {
        id: u32,
        status: u32,
    },
}

/// A stream: its id and headers, and both directions.
pub struct Stream {
    /// The stream id.
    pub id: u32,
    /// The headers it was opened with.
    pub headers: Headers,
    /// What the peer sends.
    pub reader: StreamReader,
    /// What this side sends.
    pub writer: StreamWriter,
}

/// The receiving half of a stream.
pub struct StreamReader {
    id: u32,
    data: mpsc::UnboundedReceiver<Bytes>,
    commands: mpsc::UnboundedSender<Command>,
}

impl StreamReader {
    /// The next data; `None` once the peer has finished (FIN), reset the stream or the
    /// session ended.
    pub async fn read(&mut self) -> Option<Bytes> {
        let data = self.data.recv().await?;
        let _ = self.commands.send(Command::Consumed {
            id: self.id,
            n: data.len(),
        });
        Some(data)
    }
}

/// The sending half of a stream. Clones send on the same stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    commands: mpsc::UnboundedSender<Command>,
}

impl StreamWriter {
    /// Sends `data`, returning once it is framed for the socket.
    pub async fn write(&self, data: Bytes) -> Result<(), SpdyError> {
        self.send(data, false).await
    }

    /// Sends FIN: this side sends nothing more on the stream.
    pub async fn close(&self) -> Result<(), SpdyError> {
        self.send(Bytes::new(), true).await
    }

    async fn send(&self, data: Bytes, fin: bool) -> Result<(), SpdyError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Data {
                id: self.id,
                data,
                fin,
                done,
            })
            .map_err(|_| SpdyError::SessionEnded)?;
        wait.await.map_err(|_| SpdyError::SessionEnded)?
    }

    /// Accepts a peer-opened stream (SYN_REPLY).
    pub fn reply(&self, headers: Headers) {
        let _ = self.commands.send(Command::Reply {
            id: self.id,
            headers,
        });
    }

    /// Ends the stream abnormally (RST_STREAM with `status`, [`rst`]).
    pub fn reset(&self, status: u32) {
        let _ = self.commands.send(Command::Reset {
            id: self.id,
            status,
        });
    }
}

/// Opens streams on a session (the client side's use).
#[derive(Clone)]
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
}

impl Session {
    /// Opens a stream with `headers` (SYN_STREAM).
    pub async fn open(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Open { headers, done })
            .map_err(|_| SpdyError::SessionEnded)?;
        wait.await.map_err(|_| SpdyError::SessionEnded)?
    }
}

/// Streams the peer opens, in order; `None` once the session has ended or the peer said
/// GOAWAY.
pub struct Incoming(mpsc::Receiver<Stream>);

impl Incoming {
    /// The next peer-opened stream.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.0.recv().await
    }
}

/// Starts a session on `io`. It runs until the peer closes the connection, the protocol is
/// broken (GOAWAY PROTOCOL_ERROR) or `shutdown` (GOAWAY OK). The returned task ends with it.
pub fn start<IO>(
    io: IO,
    role: Role,
    limits: Limits,
    shutdown: CancellationToken,
) -> (Session, Incoming, tokio::task::JoinHandle<()>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let (frames_tx, frames) = mpsc::channel(16);
    let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (accepted, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
    let reader = tokio::spawn(read_frames(read, Decoder::new(limits), frames_tx));
    let writer = tokio::spawn(write_bytes(write, out_rx));
    let state = State {
        role,
        encoder: Encoder::new(),
        out,
        commands: commands.clone(),
        accepted: Some(accepted),
        streams: HashMap::new(),
        next_id: match role {
            Role::Client => 1,
            Role::Server => 2,
        },
        last_peer_id: 0,
        peer_flow: PeerFlow::default(),
        peer_initial_window: DEFAULT_WINDOW,
        session_send: SendWindow::new(DEFAULT_WINDOW),
        session_recv: RecvWindow::new(RECV_SESSION_WINDOW),
    };
    let task = tokio::spawn(async move {
        state.run(frames, commands_rx, shutdown).await;
        reader.abort();
        // The writer ends once the session's sender is gone and the queue is written.
        let _ = writer.await;
    });
    (Session { commands }, Incoming(accept_rx), task)
}

async fn read_frames<R: AsyncRead>(
    read: R,
    mut decoder: Decoder,
    frames: mpsc::Sender<Result<Frame, FrameError>>,
) {
    tokio::pin!(read);
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = frames.send(Err(e)).await;
                    return;
                }
            }
        }
        buf.reserve(64 << 10);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_bytes<W: AsyncWrite>(write: W, mut out: mpsc::Receiver<Bytes>) {
    tokio::pin!(write);
    while let Some(bytes) = out.recv().await {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        // Whatever else is queued goes out before the flush.
        while let Ok(more) = out.try_recv() {
            if write.write_all(&more).await.is_err() {
                return;
            }
        }
        if write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

struct PendingWrite {
    data: Bytes,
    fin: bool,
    done: oneshot::Sender<Result<(), SpdyError>>,
}

struct StreamState {
    /// The reader's queue; `None` after the peer's FIN or once the reader is gone.
    data: Option<mpsc::UnboundedSender<Bytes>>,
    /// Bytes delivered and not yet read.
    buffered: usize,
    recv: RecvWindow,
    send: SendWindow,
    local_fin: bool,
    writes: VecDeque<PendingWrite>,
}

impl StreamState {
    fn new(peer_initial_window: u32, data: mpsc::UnboundedSender<Bytes>) -> Self {
        Self {
            data: Some(data),
            buffered: 0,
            recv: RecvWindow::new(RECV_WINDOW),
            send: SendWindow::new(peer_initial_window),
            local_fin: false,
            writes: VecDeque::new(),
        }
    }

    fn finished(&self) -> bool {
        self.data.is_none() && self.local_fin && self.writes.is_empty()
    }
}

struct State {
    role: Role,
    encoder: Encoder,
    out: mpsc::Sender<Bytes>,
    commands: mpsc::UnboundedSender<Command>,
    accepted: Option<mpsc::Sender<Stream>>,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    last_peer_id: u32,
    peer_flow: PeerFlow,
    peer_initial_window: u32,
    session_send: SendWindow,
    session_recv: RecvWindow,
}

/// Whether the session goes on after a frame.
type Flow = Result<(), SpdyError>;

impl State {
    async fn run(
        mut self,
        mut frames: mpsc::Receiver<Result<Frame, FrameError>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        // Announce the stream window this side keeps (spdystream ignores it; other peers
        // send more per round trip than the 64 KiB default allows).
        let settings = Frame::Settings {
            clear: false,
            entries: vec![Setting {
                flags: 0,
                id: settings::INITIAL_WINDOW_SIZE,
                value: RECV_WINDOW,
            }],
        };
        let session_window = Frame::WindowUpdate {
            stream: 0,
            delta: RECV_SESSION_WINDOW - DEFAULT_WINDOW,
        };
        if self.send_frame(&settings).await.is_err()
            || self.send_frame(&session_window).await.is_err()
        {
            return;
        }
        loop {
            let paused = self.streams.values().any(|s| s.buffered > MAX_BUFFERED);
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = self.go_away(goaway::OK).await;
                    return;
                }
                Some(command) = commands.recv() => self.command(command).await,
                frame = frames.recv(), if !paused => match frame {
                    Some(Ok(frame)) => self.frame(frame).await,
                    Some(Err(e)) => Err(SpdyError::Frame(e)),
                    // The peer closed the connection.
                    None => return,
                },
            };
            match result {
                Ok(()) => {}
                Err(e @ (SpdyError::Frame(_) | SpdyError::Flow(_))) => {
                    tracing::debug!("spdy: ending the session: {e}");
                    let _ = self.go_away(goaway::PROTOCOL_ERROR).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn go_away(&mut self, status: u32) -> Flow {
        let frame = Frame::GoAway {
            last_good: self.last_peer_id,
            status,
        };
        self.send_frame(&frame).await
    }

    async fn send_frame(&mut self, frame: &Frame) -> Flow {
        let mut buf = BytesMut::new();
        self.encoder.encode(frame, &mut buf)?;
        self.out
            .send(buf.freeze())
            .await
            .map_err(|_| SpdyError::SessionEnded)
    }

    async fn reset(&mut self, id: u32, status: u32) -> Flow {
        if let Some(stream) = self.streams.remove(&id) {
            for w in stream.writes {
                let _ = w.done.send(Err(SpdyError::StreamClosed(id)));
            }
        }
        self.send_frame(&Frame::RstStream { stream: id, status })
            .await
    }

    fn is_peer_id(&self, id: u32) -> bool {
        // Clients open odd streams and send odd pings.
        (id % 2 == 1) == (self.role == Role::Server)
    }

    async fn frame(&mut self, frame: Frame) -> Flow {
        match frame {
            Frame::SynStream {
                stream: id,
                fin,
                headers,
                ..
            } => {
                if !self.is_peer_id(id) || id <= self.last_peer_id {
                    return self.reset(id, rst::PROTOCOL_ERROR).await;
                }
                self.last_peer_id = id;
                let Some(accepted) = self.accepted.clone() else {
                    return self.reset(id, rst::REFUSED_STREAM).await;
                };
                if self.streams.len() >= MAX_STREAMS {
                    return self.reset(id, rst::REFUSED_STREAM).await;
                }
                let (data_tx, data_rx) = mpsc::unbounded_channel();
                let mut state = StreamState::new(self.peer_initial_window, data_tx);
                if fin {
                    state.data = None;
                }
                let stream = Stream {
                    id,
                    headers,
                    reader: StreamReader {
                        id,
                        data: data_rx,
                        commands: self.commands.clone(),
                    },
                    writer: StreamWriter {
                        id,
                        commands: self.commands.clone(),
                    },
                };
                if accepted.try_send(stream).is_err() {
                    return self.reset(id, rst::REFUSED_STREAM).await;
                }
                self.streams.insert(id, state);
                Ok(())
            }
            Frame::SynReply { stream, fin, .. } | Frame::Headers { stream, fin, .. } => {
                if fin {
                    self.remote_fin(stream);
                }
                Ok(())
            }
            Frame::Data {
                stream: id,
                fin,
                data,
            } => self.data(id, fin, data).await,
            Frame::RstStream { stream, .. } => {
                if let Some(s) = self.streams.remove(&stream) {
                    for w in s.writes {
                        let _ = w.done.send(Err(SpdyError::StreamClosed(stream)));
                    }
                }
                Ok(())
            }
            Frame::Settings { entries, .. } => {
                for e in entries {
                    if e.id == settings::INITIAL_WINDOW_SIZE {
                        let value = e.value.min(0x7fff_ffff);
                        self.peer_flow.seen();
                        for s in self.streams.values_mut() {
                            s.send.rebase(self.peer_initial_window, value);
                        }
                        self.peer_initial_window = value;
                    }
                }
                self.flush_all().await
            }
            Frame::Ping { id } => {
                if self.is_peer_id(id) {
                    self.send_frame(&Frame::Ping { id }).await
                } else {
                    // An answer to a ping of this side's: none are sent.
                    Ok(())
                }
            }
            Frame::GoAway { .. } => {
                // No new streams; those open finish.
                self.accepted = None;
                Ok(())
            }
            Frame::WindowUpdate { stream, delta } => {
                self.peer_flow.seen();
                if stream == 0 {
                    self.session_send.grow(delta)?;
                    return self.flush_all().await;
                }
                let overflow = match self.streams.get_mut(&stream) {
                    Some(s) => s.send.grow(delta).is_err(),
                    None => return Ok(()),
                };
                if overflow {
                    return self.reset(stream, rst::FLOW_CONTROL_ERROR).await;
                }
                self.flush(stream).await
            }
        }
    }

    fn remote_fin(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.data = None;
            if s.finished() {
                self.streams.remove(&id);
            }
        }
    }

    async fn data(&mut self, id: u32, fin: bool, data: Bytes) -> Flow {
        let enforced = self.peer_flow.enforced();
        if let Err(e) = self.session_recv.received(data.len()) {
            if enforced {
                return Err(e.into());
            }
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            // Data for a stream that is gone: the peer learns it is (it may have raced
            // a reset of ours, which is harmless).
            return self
                .send_frame(&Frame::RstStream {
                    stream: id,
                    status: rst::INVALID_STREAM,
                })
                .await;
        };
        if stream.recv.received(data.len()).is_err() && enforced {
            return self.reset(id, rst::FLOW_CONTROL_ERROR).await;
        }
        let n = data.len();
        let delivered = match &stream.data {
            None if n > 0 => return self.reset(id, rst::STREAM_ALREADY_CLOSED).await,
            None => false,
            Some(tx) => n > 0 && tx.send(data).is_ok(),
        };
        if delivered {
            stream.buffered += n;
        } else if n > 0 {
            // Nobody reads this stream: the data is consumed here.
            self.consumed(id, n).await?;
        }
        if fin {
            self.remote_fin(id);
        }
        Ok(())
    }

    async fn consumed(&mut self, id: u32, n: usize) -> Flow {
        if let Some(delta) = self.session_recv.consumed(n) {
            self.send_frame(&Frame::WindowUpdate { stream: 0, delta })
                .await?;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        stream.buffered = stream.buffered.saturating_sub(n);
        // No update for a stream the peer has finished sending on.
        if stream.data.is_none() {
            return Ok(());
        }
        match stream.recv.consumed(n) {
            Some(delta) => {
                self.send_frame(&Frame::WindowUpdate { stream: id, delta })
                    .await
            }
            None => Ok(()),
        }
    }

    async fn command(&mut self, command: Command) -> Flow {
        match command {
            Command::Open { headers, done } => {
                if self.next_id > 0x7fff_ffff {
                    let _ = done.send(Err(SpdyError::StreamIdsExhausted));
                    return Ok(());
                }
                let id = self.next_id;
                self.next_id += 2;
                let frame = Frame::SynStream {
                    stream: id,
                    associated: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    headers: headers.clone(),
                };
                self.send_frame(&frame).await?;
                let (data_tx, data_rx) = mpsc::unbounded_channel();
                self.streams
                    .insert(id, StreamState::new(self.peer_initial_window, data_tx));
                let _ = done.send(Ok(Stream {
                    id,
                    headers,
                    reader: StreamReader {
                        id,
                        data: data_rx,
                        commands: self.commands.clone(),
                    },
                    writer: StreamWriter {
                        id,
                        commands: self.commands.clone(),
                    },
                }));
                Ok(())
            }
            Command::Reply { id, headers } => {
                if !self.streams.contains_key(&id) {
                    return Ok(());
                }
                self.send_frame(&Frame::SynReply {
                    stream: id,
                    fin: false,
                    headers,
                })
                .await
            }
            Command::Data {
                id,
                data,
                fin,
                done,
            } => {
                match self.streams.get_mut(&id) {
                    Some(s) if !s.local_fin => s.writes.push_back(PendingWrite { data, fin, done }),
                    _ => {
                        let _ = done.send(Err(SpdyError::StreamClosed(id)));
                        return Ok(());
                    }
                }
                self.flush(id).await
            }
            Command::Consumed { id, n } => self.consumed(id, n).await,
            Command::Reset { id, status } => {
                if self.streams.contains_key(&id) {
                    self.reset(id, status).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Sends what the windows allow of every stream's queued writes.
    async fn flush_all(&mut self) -> Flow {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.writes.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush(id).await?;
        }
        Ok(())
    }

    /// Sends what the windows allow of `id`'s queued writes.
    async fn flush(&mut self, id: u32) -> Flow {
        let enforced = self.peer_flow.enforced();
        loop {
            let Some(stream) = self.streams.get_mut(&id) else {
                return Ok(());
            };
            let Some(write) = stream.writes.front_mut() else {
                break;
            };
            let mut room = MAX_SEND_FRAME;
            if enforced {
                room = room
                    .min(stream.send.available())
                    .min(self.session_send.available());
            }
            if room == 0 && !write.data.is_empty() {
                // Waits for a WINDOW_UPDATE.
                break;
            }
            let chunk = write.data.split_to(room.min(write.data.len()));
            let last = write.data.is_empty();
            let fin = last && write.fin;
            stream.send.consume(chunk.len());
            self.session_send.consume(chunk.len());
            if fin {
                stream.local_fin = true;
            }
            let done = if last {
                stream.writes.pop_front().map(|w| w.done)
            } else {
                None
            };
            self.send_frame(&Frame::Data {
                stream: id,
                fin,
                data: chunk,
            })
            .await?;
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        if self.streams.get(&id).is_some_and(StreamState::finished) {
            self.streams.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(p: &[(&str, &str)]) -> Headers {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    async fn read_all(r: &mut StreamReader) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(b) = r.read().await {
            all.extend_from_slice(&b);
        }
        all
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_end_with_fin() {
        let (a, b) = tokio::io::duplex(4096);
        let stop = CancellationToken::new();
        let (client, _none, _t1) = start(a, Role::Client, Limits::default(), stop.clone());
        let (_server, mut incoming, _t2) = start(b, Role::Server, Limits::default(), stop.clone());
        let mut opened = client.open(h(&[("port", "80")])).await.unwrap();
        let mut accepted = incoming.accept().await.unwrap();
        assert_eq!((opened.id, accepted.id), (1, 1));
        assert_eq!(accepted.headers, h(&[("port", "80")]));
        accepted.writer.reply(Headers::new());
        // Much more than a window and the session's buffers, both ways at once.
        let big = Bytes::from((0..3 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let up = {
            let (w, big) = (opened.writer.clone(), big.clone());
            tokio::spawn(async move {
                for chunk in big.chunks(100_000) {
                    w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
                }
                w.close().await.unwrap();
            })
        };
        let down = {
            let (w, big) = (accepted.writer.clone(), big.clone());
            tokio::spawn(async move {
                w.write(big).await.unwrap();
                w.close().await.unwrap();
            })
        };
        let (got_up, got_down) =
            tokio::join!(read_all(&mut accepted.reader), read_all(&mut opened.reader));
        assert_eq!(got_up, big);
        assert_eq!(got_down, big);
        up.await.unwrap();
        down.await.unwrap();
        // Both sides finished: a write now fails.
        assert_eq!(
            opened.writer.write(Bytes::from_static(b"x")).await,
            Err(SpdyError::StreamClosed(1))
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_reset_ends_the_stream_and_not_the_session() {
        let (a, b) = tokio::io::duplex(4096);
        let stop = CancellationToken::new();
        let (client, _none, _t1) = start(a, Role::Client, Limits::default(), stop.clone());
        let (_server, mut incoming, _t2) = start(b, Role::Server, Limits::default(), stop.clone());
        let mut first = client.open(Headers::new()).await.unwrap();
        let accepted = incoming.accept().await.unwrap();
        accepted.writer.reset(rst::CANCEL);
        assert_eq!(first.reader.read().await, None);
        let mut second = client.open(Headers::new()).await.unwrap();
        assert_eq!(second.id, 3);
        let s = incoming.accept().await.unwrap();
        s.writer.write(Bytes::from_static(b"ok")).await.unwrap();
        s.writer.close().await.unwrap();
        assert_eq!(read_all(&mut second.reader).await, b"ok");
        stop.cancel();
    }

    /// A raw peer: writes frames, reads what the session answers.
    async fn raw_peer(bytes: &[u8]) -> Vec<Frame> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let stop = CancellationToken::new();
        let (_s, _incoming, task) = start(a, Role::Server, Limits::default(), stop);
        b.write_all(bytes).await.unwrap();
        let mut got = BytesMut::new();
        let mut decoder = Decoder::new(Limits::default());
        let mut frames = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if b.read_buf(&mut got).await.unwrap() == 0 {
                    break;
                }
                while let Some(f) = decoder.decode(&mut got).unwrap() {
                    let end = matches!(f, Frame::GoAway { .. });
                    frames.push(f);
                    if end {
                        return;
                    }
                }
            }
        })
        .await
        .expect("the session answered");
        drop(b);
        let _ = task.await;
        frames
    }

    #[tokio::test]
    async fn pings_are_echoed_and_garbage_ends_the_session_with_goaway() {
        let mut wire = BytesMut::new();
        let mut e = Encoder::new();
        e.encode(&Frame::Ping { id: 1 }, &mut wire).unwrap();
        wire.extend_from_slice(b"\x80\x02\x00\x01\x00\x00\x00\x00");
        let frames = raw_peer(&wire).await;
        assert!(matches!(frames[0], Frame::Settings { .. }), "{frames:?}");
        assert!(matches!(frames[1], Frame::WindowUpdate { stream: 0, .. }));
        assert_eq!(frames[2], Frame::Ping { id: 1 });
        assert_eq!(
            frames[3],
            Frame::GoAway {
                last_good: 0,
                status: goaway::PROTOCOL_ERROR
            }
        );
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused() {
        let mut wire = BytesMut::new();
        let mut e = Encoder::new();
        for i in 0..=MAX_STREAMS as u32 {
            e.encode(
                &Frame::SynStream {
                    stream: 2 * i + 1,
                    associated: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    headers: Headers::new(),
                },
                &mut wire,
            )
            .unwrap();
        }
        // A stream id that does not increase, then the end.
        e.encode(
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            },
            &mut wire,
        )
        .unwrap();
        wire.extend_from_slice(b"\x80\x03\x00\x06\x00\x00\x00\x03");
        wire.extend_from_slice(b"\x00\x00\x00");
        let frames = raw_peer(&wire).await;
        let resets: Vec<&Frame> = frames
            .iter()
            .filter(|f| matches!(f, Frame::RstStream { .. }))
            .collect();
        // Nobody accepts: the accept queue (as long as the stream limit) fills, and the stream
        // beyond it is refused; the repeated id is a protocol error of that stream.
        assert!(resets.contains(&&Frame::RstStream {
            stream: 2 * MAX_STREAMS as u32 + 1,
            status: rst::REFUSED_STREAM
        }));
        assert!(resets.contains(&&Frame::RstStream {
            stream: 1,
            status: rst::PROTOCOL_ERROR
        }));
        assert!(matches!(
            frames.last(),
            Some(Frame::GoAway {
                status: goaway::PROTOCOL_ERROR,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_peer_that_keeps_windows_is_held_to_them() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let stop = CancellationToken::new();
        let (_s, mut incoming, _t) = start(a, Role::Server, Limits::default(), stop.clone());
        let (mut rd, mut wr) = tokio::io::split(b);
        let mut e = Encoder::new();
        let mut wire = BytesMut::new();
        // The peer keeps windows (its SETTINGS) and gives this side 10 bytes per stream.
        e.encode(
            &Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: 10,
                }],
            },
            &mut wire,
        )
        .unwrap();
        e.encode(
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            },
            &mut wire,
        )
        .unwrap();
        wr.write_all(&wire).await.unwrap();
        let s = incoming.accept().await.unwrap();
        let writer = s.writer.clone();
        let write = tokio::spawn(async move {
            writer
                .write(Bytes::from_static(b"0123456789abcdefghij"))
                .await
        });
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut next = async || loop {
            if let Some(f) = d.decode(&mut buf).unwrap() {
                return f;
            }
            rd.read_buf(&mut buf).await.unwrap();
        };
        assert!(matches!(next().await, Frame::Settings { .. }));
        assert_eq!(
            next().await,
            Frame::WindowUpdate {
                stream: 0,
                delta: RECV_SESSION_WINDOW - DEFAULT_WINDOW
            }
        );
        assert_eq!(
            next().await,
            Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"0123456789")
            }
        );
        assert!(!write.is_finished());
        wire.clear();
        e.encode(
            &Frame::WindowUpdate {
                stream: 1,
                delta: 10,
            },
            &mut wire,
        )
        .unwrap();
        wr.write_all(&wire).await.unwrap();
        assert_eq!(
            next().await,
            Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"abcdefghij")
            }
        );
        write.await.unwrap().unwrap();
        // More than the stream's window from the peer (nothing is read): the stream is reset.
        wire.clear();
        for len in [RECV_WINDOW as usize, 1] {
            e.encode(
                &Frame::Data {
                    stream: 1,
                    fin: false,
                    data: Bytes::from(vec![0; len]),
                },
                &mut wire,
            )
            .unwrap();
        }
        let writing = tokio::spawn(async move {
            wr.write_all(&wire).await.unwrap();
            wr
        });
        loop {
            match next().await {
                Frame::RstStream { stream, status } => {
                    assert_eq!((stream, status), (1, rst::FLOW_CONTROL_ERROR));
                    break;
                }
                Frame::WindowUpdate { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        let _ = writing.await;
        stop.cancel();
    }
}
