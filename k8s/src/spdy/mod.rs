//! SPDY/3.1, the stream multiplexing that `kubectl port-forward` (and exec and attach before
//! WebSockets) speaks to Kubernetes: its frames ([`frame`]), compressed header blocks
//! ([`headers`], with the spec's zlib [`dictionary`]) and flow-control windows ([`flow`]), with
//! no I/O. The session that drives them over a socket lives with its user (the agent's
//! `kubelet::spdy`).
//!
//! Written from the SPDY/3.1 draft and what Kubernetes' peers do (moby/spdystream, which
//! kubectl, the kubelet and the container runtimes all use): no maintained Rust crate serves
//! the accepting side (`spdy-mux` is a young client-only multiplexer that opens stream pairs
//! over its own WebSocket transport).
//!
//! Everything read is bounded by [`Limits`]: frame lengths (checked from the 8-byte header,
//! before the payload is waited for), the inflated size and count of header blocks and the
//! size of each header.

pub mod dictionary;
pub mod flow;
pub mod frame;
pub mod headers;

pub use frame::{Decoder, Encoder, Frame};
pub use headers::Headers;

/// Bounds on what a peer may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest DATA payload. spdystream writes each `Write` as one frame; kubectl copies
    /// in 32 KiB pieces.
    pub max_data_frame: usize,
    /// The largest control frame payload (compressed header blocks included).
    pub max_control_frame: usize,
    /// The largest header block once inflated.
    pub max_header_block: usize,
    /// The most name/value pairs in one block.
    pub max_headers: usize,
    /// The longest name or value.
    pub max_header_field: usize,
    /// The most entries in one SETTINGS frame (the spec defines eight ids).
    pub max_settings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_frame: 1 << 20,
            max_control_frame: 16 << 10,
            max_header_block: 16 << 10,
            max_headers: 64,
            max_header_field: 4 << 10,
            max_settings: 16,
        }
    }
}

/// Why a peer's bytes are not a frame this side accepts. Any of these ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than [`Limits`] allow (or than the length field can say).
    #[error("a frame of {len} bytes: at most {max} are accepted")]
    TooLarge {
        /// The frame's payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control frame of a version other than 3.
    #[error("SPDY version {0} is not supported: only SPDY/3.1")]
    UnsupportedVersion(u16),
    /// A control frame whose length does not fit its type.
    #[error("a {frame} frame of {len} bytes is malformed")]
    BadLength {
        /// The frame's type.
        frame: &'static str,
        /// Its payload length.
        len: usize,
    },
    /// A frame for stream 0, where a stream is required.
    #[error("a {0} frame for stream 0")]
    ZeroStream(&'static str),
    /// A WINDOW_UPDATE adding nothing.
    #[error("a WINDOW_UPDATE with a delta of 0")]
    ZeroWindowDelta,
    /// A header block zlib cannot read (or this side could not write).
    #[error("header compression: {0}")]
    Compression(String),
    /// A header block that inflates beyond [`Limits::max_header_block`].
    #[error("a header block larger than {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        max: usize,
    },
    /// More pairs than [`Limits::max_headers`].
    #[error("a header block of {count} headers: at most {max} are accepted")]
    TooManyHeaders {
        /// The block's count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A name or value longer than [`Limits::max_header_field`].
    #[error("a header name or value is too long")]
    HeaderTooLarge,
    /// An inflated block that is not a valid list of pairs.
    #[error("malformed header block: {0}")]
    MalformedHeaderBlock(&'static str),
}
