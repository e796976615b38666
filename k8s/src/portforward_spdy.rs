//! Port-forward over SPDY (`portforward.k8s.io`), what `kubectl port-forward` speaks: the
//! rules the API server and the agent share.
//!
//! - The client upgrades `pods/{name}/portforward` with `Upgrade: SPDY/3.1` and
//!   `X-Stream-Protocol-Version: portforward.k8s.io`, or (kubectl 1.31+, KEP-4006) opens a
//!   WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io` whose binary messages carry
//!   the SPDY bytes. No `ports` parameter: each stream names its port.
//! - Each forwarded connection is a pair of client-opened streams with the same
//!   `requestID`: first the error stream (`streamType: error`, half-closed by the client at
//!   once), then the data stream (`streamType: data`); both carry `port`. The server answers
//!   each with SYN_REPLY, dials the port in the pod once it has both ([`Pairs`]), copies bytes
//!   between the connection and the data stream, and writes the kubelet's `error forwarding
//!   port ...` text on the error stream when that fails; it then closes both. The session stays
//!   up for further pairs until the client ends it.

use std::collections::HashMap;

use crate::spdy::headers::{self, Headers};

/// The stream protocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The HTTP upgrade token of SPDY.
pub const UPGRADE: &str = "SPDY/3.1";
/// The header naming the stream protocols.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// The WebSocket subprotocol of SPDY tunnelled in binary messages.
pub const WEBSOCKET_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The stream headers (lowercase, as SPDY sends them).
pub const STREAM_TYPE: &str = "streamtype";
/// The port a stream forwards to.
pub const PORT: &str = "port";
/// The connection a stream belongs to.
pub const REQUEST_ID: &str = "requestid";

/// Connections waiting for their second stream, per session: each holds two streams, and a
/// client opens the two back to back.
pub const MAX_PENDING_PAIRS: usize = 64;

/// Which half of a connection a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Server-to-client error text.
    Error,
    /// The connection's bytes, both ways.
    Data,
}

/// What a stream's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Error or data.
    pub kind: StreamKind,
    /// The port in the pod.
    pub port: u16,
    /// The connection it belongs to.
    pub request_id: String,
}

/// Why a stream's headers are refused (the stream is reset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No `streamType`, or another value than `error` or `data`.
    #[error("invalid stream type {0:?}")]
    BadType(String),
    /// No `port`, or not 1-65535.
    #[error("unable to parse {0:?} as a port")]
    BadPort(String),
    /// A second error (or data) stream for a connection.
    #[error("{0} stream already assigned for request {1}")]
    Duplicate(&'static str, String),
    /// Too many connections waiting for their second stream.
    #[error("too many port-forward connections waiting for their streams (at most {max})", max = MAX_PENDING_PAIRS)]
    TooManyPending,
}

/// Why the client's `X-Stream-Protocol-Version` offer cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to negotiate protocol: client supports {offered:?}, server supports [\"{PROTOCOL_V1}\"]")]
pub struct NegotiationError {
    /// What the client offered.
    pub offered: Vec<String>,
}

/// The protocol for the client's offer: `portforward.k8s.io` when offered, `None` when it
/// offered nothing (old clients; the same protocol, no header in the answer).
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'static str>, NegotiationError> {
    let offered: Vec<String> = header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    if offered.iter().any(|o| o == PROTOCOL_V1) {
        Ok(Some(PROTOCOL_V1))
    } else {
        Err(NegotiationError { offered })
    }
}

/// Reads a client stream's headers. Without `requestID` (clients before Kubernetes 1.6) the
/// connection is named by the stream ids as the kubelet does: a data stream's is its id - 2
/// (the error stream opened just before it), an error stream's its own.
pub fn stream_info(headers: &Headers, stream_id: u32) -> Result<StreamInfo, StreamError> {
    let kind = match headers::get(headers, STREAM_TYPE) {
        Some("error") => StreamKind::Error,
        Some("data") => StreamKind::Data,
        other => return Err(StreamError::BadType(other.unwrap_or_default().to_owned())),
    };
    let raw_port = headers::get(headers, PORT).unwrap_or_default();
    let port = raw_port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| raw_port.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p > 0)
        .ok_or_else(|| StreamError::BadPort(raw_port.to_owned()))?;
    let request_id = match headers::get(headers, REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => match kind {
            StreamKind::Data => stream_id.saturating_sub(2).to_string(),
            StreamKind::Error => stream_id.to_string(),
        },
    };
    Ok(StreamInfo {
        kind,
        port,
        request_id,
    })
}

/// A connection's two streams.
#[derive(Debug, PartialEq, Eq)]
pub struct Pair<S> {
    /// The port of the data stream.
    pub port: u16,
    /// The error stream.
    pub error: S,
    /// The data stream.
    pub data: S,
}

/// The streams of a connection so far.
#[derive(Debug)]
struct Waiting<S> {
    error: Option<S>,
    /// With its port.
    data: Option<(u16, S)>,
}

impl<S> Default for Waiting<S> {
    fn default() -> Self {
        Self {
            error: None,
            data: None,
        }
    }
}

/// Streams waiting for their partner, by request id.
#[derive(Debug)]
pub struct Pairs<S> {
    pending: HashMap<String, Waiting<S>>,
}

impl<S> Default for Pairs<S> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<S> Pairs<S> {
    /// Adds a stream; the pair once both streams of its connection are in. A refused stream
    /// comes back with the reason.
    pub fn add(
        &mut self,
        info: StreamInfo,
        stream: S,
    ) -> Result<Option<Pair<S>>, (StreamError, S)> {
        if !self.pending.contains_key(&info.request_id) && self.pending.len() >= MAX_PENDING_PAIRS {
            return Err((StreamError::TooManyPending, stream));
        }
        let entry = self.pending.entry(info.request_id.clone()).or_default();
        match info.kind {
            StreamKind::Error if entry.error.is_some() => {
                return Err((StreamError::Duplicate("error", info.request_id), stream))
            }
            StreamKind::Data if entry.data.is_some() => {
                return Err((StreamError::Duplicate("data", info.request_id), stream))
            }
            StreamKind::Error => entry.error = Some(stream),
            StreamKind::Data => entry.data = Some((info.port, stream)),
        }
        if entry.error.is_some() && entry.data.is_some() {
            if let Some(Waiting {
                error: Some(error),
                data: Some((port, data)),
            }) = self.pending.remove(&info.request_id)
            {
                return Ok(Some(Pair { port, error, data }));
            }
        }
        Ok(None)
    }

    /// Takes out the streams of a connection that never completed.
    pub fn remove(&mut self, request_id: &str) -> Vec<S> {
        self.pending
            .remove(request_id)
            .map(|w| w.error.into_iter().chain(w.data.map(|(_, s)| s)).collect())
            .unwrap_or_default()
    }

    /// Whether `request_id` still waits for a stream.
    pub fn is_pending(&self, request_id: &str) -> bool {
        self.pending.contains_key(request_id)
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

    #[test]
    fn stream_headers_are_read_as_the_kubelet_reads_them() {
        let error = h(&[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "4"),
        ]);
        assert_eq!(
            stream_info(&error, 9),
            Ok(StreamInfo {
                kind: StreamKind::Error,
                port: 8080,
                request_id: "4".into()
            })
        );
        // Without requestID: the data stream follows its error stream.
        let old = h(&[("streamtype", "data"), ("port", "80")]);
        assert_eq!(stream_info(&old, 3).unwrap().request_id, "1");
        let old_error = h(&[("streamtype", "error"), ("port", "80")]);
        assert_eq!(stream_info(&old_error, 1).unwrap().request_id, "1");
        for (headers, err) in [
            (h(&[("port", "80")]), StreamError::BadType(String::new())),
            (
                h(&[("streamtype", "stdin"), ("port", "80")]),
                StreamError::BadType("stdin".into()),
            ),
            (
                h(&[("streamtype", "data")]),
                StreamError::BadPort(String::new()),
            ),
            (
                h(&[("streamtype", "data"), ("port", "0")]),
                StreamError::BadPort("0".into()),
            ),
            (
                h(&[("streamtype", "data"), ("port", "65536")]),
                StreamError::BadPort("65536".into()),
            ),
            (
                h(&[("streamtype", "data"), ("port", "+80")]),
                StreamError::BadPort("+80".into()),
            ),
        ] {
            assert_eq!(stream_info(&headers, 1), Err(err), "{headers:?}");
        }
    }

    #[test]
    fn the_protocol_is_negotiated() {
        assert_eq!(negotiate([]), Ok(None));
        assert_eq!(negotiate(["portforward.k8s.io"]), Ok(Some(PROTOCOL_V1)));
        assert_eq!(
            negotiate(["v2.portforward.k8s.io, portforward.k8s.io"]),
            Ok(Some(PROTOCOL_V1))
        );
        let e = negotiate(["channel.k8s.io"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to negotiate protocol: client supports [\"channel.k8s.io\"], server supports [\"portforward.k8s.io\"]"
        );
    }

    fn info(kind: StreamKind, id: &str) -> StreamInfo {
        StreamInfo {
            kind,
            port: 80,
            request_id: id.into(),
        }
    }

    #[test]
    fn streams_pair_up_by_request_id_in_any_order() {
        let mut pairs = Pairs::default();
        assert_eq!(pairs.add(info(StreamKind::Error, "0"), 1), Ok(None));
        assert_eq!(pairs.add(info(StreamKind::Data, "1"), 5), Ok(None));
        assert!(pairs.is_pending("0"));
        assert_eq!(
            pairs.add(info(StreamKind::Data, "0"), 3),
            Ok(Some(Pair {
                port: 80,
                error: 1,
                data: 3
            }))
        );
        assert!(!pairs.is_pending("0"));
        assert_eq!(
            pairs.add(info(StreamKind::Data, "1"), 7),
            Err((StreamError::Duplicate("data", "1".into()), 7))
        );
        assert_eq!(
            pairs.add(info(StreamKind::Error, "1"), 9),
            Ok(Some(Pair {
                port: 80,
                error: 9,
                data: 5
            }))
        );
        pairs.add(info(StreamKind::Error, "2"), 11).unwrap();
        assert_eq!(pairs.remove("2"), vec![11]);
        assert!(pairs.remove("2").is_empty());
    }

    #[test]
    fn waiting_connections_are_bounded() {
        let mut pairs = Pairs::default();
        for i in 0..MAX_PENDING_PAIRS {
            pairs
                .add(info(StreamKind::Error, &i.to_string()), i)
                .unwrap();
        }
        assert_eq!(
            pairs.add(info(StreamKind::Error, "new"), 999),
            Err((StreamError::TooManyPending, 999))
        );
        // A waiting connection can still complete.
        assert!(pairs
            .add(info(StreamKind::Data, "0"), 1000)
            .unwrap()
            .is_some());
    }
}
