//! SPDY/3.1 frames on the wire (the spec's section 2.2): control frames (a set high bit,
//! version 3, a type, flags and a 24-bit length) and data frames (a 31-bit stream id, flags
//! and a 24-bit length). [`Decoder`] reads them from a buffer as bytes arrive, checking each
//! length against [`Limits`] before waiting for the payload; [`Encoder`] writes them.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use super::headers::{Deflater, Headers, Inflater};
use super::{FrameError, Limits};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The length of every frame's header.
pub const HEADER_LEN: usize = 8;
/// The FIN flag: the sender's last frame on that stream.
pub const FLAG_FIN: u8 = 0x01;
/// The UNIDIRECTIONAL flag of SYN_STREAM: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The CLEAR_SETTINGS flag of SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (the spec's section 2.4.2).
pub mod rst {
    /// A generic error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// An error in the sender, not the protocol.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The peer broke flow control.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// A second SYN_STREAM or SYN_REPLY for a stream.
    pub const STREAM_IN_USE: u32 = 8;
    /// Data on a stream the peer had half-closed.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// A frame larger than the receiver accepts.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes (the spec's section 2.6.6).
pub mod goaway {
    /// A normal end of the session.
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// An error in the sender.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids this implementation acts on.
pub mod settings {
    /// How many streams the sender lets the receiver open at once.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// The initial send window of every stream the receiver of the frame sends on.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Its flags (persist / persisted).
    pub flags: u8,
    /// Its 24-bit id.
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Data on a stream.
    Data {
        /// The stream (31 bits).
        stream: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The payload.
        data: Bytes,
    },
    /// Opens a stream.
    SynStream {
        /// The new stream: odd from the client, even from the server, increasing.
        stream: u32,
        /// The stream it belongs to (0: none).
        associated: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// The opener sends nothing more.
        fin: bool,
        /// The receiver may not send.
        unidirectional: bool,
        /// Its headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream.
        stream: u32,
        /// The replier sends nothing more.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// The stream.
        stream: u32,
        /// Why ([`rst`]).
        status: u32,
    },
    /// Session parameters.
    Settings {
        /// Forget persisted settings.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// A round trip: the receiver echoes a ping the sender started.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// The sender opens no more streams and accepts none above `last_good`.
    GoAway {
        /// The last stream the sender processed.
        last_good: u32,
        /// Why ([`goaway`]).
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// More room in the sender's receive window (stream 0: the session's).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream: u32,
        /// The added bytes (1 to 2^31-1).
        delta: u32,
    },
}

/// Reads frames: holds the peer's header-compression stream.
pub struct Decoder {
    inflater: Inflater,
    limits: Limits,
}

impl Decoder {
    /// A decoder for one session's incoming direction.
    pub fn new(limits: Limits) -> Self {
        Self {
            inflater: Inflater::new(limits.clone()),
            limits,
        }
    }

    /// The next whole frame at the start of `buf`, taken out of it; `None` until all of it has
    /// arrived. A frame longer than the limits is an error as soon as its header is in.
    /// Control frames of unknown types (CREDENTIAL, NOOP) are skipped, as the spec says.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let control = buf[0] & 0x80 != 0;
            let flags = buf[4];
            let len =
                (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
            if !control {
                if len > self.limits.max_data_frame {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.limits.max_data_frame,
                    });
                }
                if buf.len() < HEADER_LEN + len {
                    return Ok(None);
                }
                let stream = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) & 0x7fff_ffff;
                if stream == 0 {
                    return Err(FrameError::ZeroStream("DATA"));
                }
                buf.advance(HEADER_LEN);
                let data = buf.split_to(len).freeze();
                return Ok(Some(Frame::Data {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    data,
                }));
            }
            let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            if len > self.limits.max_control_frame {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.limits.max_control_frame,
                });
            }
            if buf.len() < HEADER_LEN + len {
                return Ok(None);
            }
            let kind = u16::from_be_bytes([buf[2], buf[3]]);
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            if let Some(frame) = self.control(kind, flags, payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn control(&mut self, kind: u16, flags: u8, mut p: Bytes) -> Result<Option<Frame>, FrameError> {
        let len = p.len();
        let exactly = |n: usize, name: &'static str| {
            if len == n {
                Ok(())
            } else {
                Err(FrameError::BadLength { frame: name, len })
            }
        };
        let at_least = |n: usize, name: &'static str| {
            if len >= n {
                Ok(())
            } else {
                Err(FrameError::BadLength { frame: name, len })
            }
        };
        let stream_id = |p: &mut Bytes, name: &'static str| {
            let id = p.get_u32() & 0x7fff_ffff;
            if id == 0 {
                Err(FrameError::ZeroStream(name))
            } else {
                Ok(id)
            }
        };
        let fin = flags & FLAG_FIN != 0;
        Ok(Some(match kind {
            SYN_STREAM => {
                at_least(10, "SYN_STREAM")?;
                let stream = stream_id(&mut p, "SYN_STREAM")?;
                let associated = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.inflater.inflate(&p)?,
                }
            }
            SYN_REPLY => {
                at_least(4, "SYN_REPLY")?;
                let stream = stream_id(&mut p, "SYN_REPLY")?;
                Frame::SynReply {
                    stream,
                    fin,
                    headers: self.inflater.inflate(&p)?,
                }
            }
            RST_STREAM => {
                exactly(8, "RST_STREAM")?;
                Frame::RstStream {
                    stream: stream_id(&mut p, "RST_STREAM")?,
                    status: p.get_u32(),
                }
            }
            SETTINGS => {
                at_least(4, "SETTINGS")?;
                let count = p.get_u32() as usize;
                if count > self.limits.max_settings || len != 4 + 8 * count {
                    return Err(FrameError::BadLength {
                        frame: "SETTINGS",
                        len,
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let head = p.get_u32();
                        Setting {
                            flags: (head >> 24) as u8,
                            id: head & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            PING => {
                exactly(4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            GOAWAY => {
                exactly(8, "GOAWAY")?;
                Frame::GoAway {
                    last_good: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            HEADERS => {
                at_least(4, "HEADERS")?;
                let stream = stream_id(&mut p, "HEADERS")?;
                Frame::Headers {
                    stream,
                    fin,
                    headers: self.inflater.inflate(&p)?,
                }
            }
            WINDOW_UPDATE => {
                exactly(8, "WINDOW_UPDATE")?;
                // Stream 0 is the session's window (SPDY/3.1).
                let stream = p.get_u32() & 0x7fff_ffff;
                let delta = p.get_u32() & 0x7fff_ffff;
                if delta == 0 {
                    return Err(FrameError::ZeroWindowDelta);
                }
                Frame::WindowUpdate { stream, delta }
            }
            _ => return Ok(None),
        }))
    }
}

/// Writes frames: holds this side's header-compression stream.
#[derive(Default)]
pub struct Encoder {
    deflater: Deflater,
}

impl Encoder {
    /// An encoder for one session's outgoing direction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `frame` to `out`. Fails only for a frame no peer could read (a payload above
    /// 2^24-1 bytes).
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data { stream, fin, data } => {
                let len = frame_len(data.len())?;
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                out.put_slice(&len);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let block = self.deflater.deflate(headers)?;
                let flags =
                    u8::from(*fin) * FLAG_FIN + u8::from(*unidirectional) * FLAG_UNIDIRECTIONAL;
                control(out, SYN_STREAM, flags, 10 + block.len())?;
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32(associated & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => {
                let block = self.deflater.deflate(headers)?;
                control(out, SYN_REPLY, u8::from(*fin) * FLAG_FIN, 4 + block.len())?;
                out.put_u32(stream & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { stream, status } => {
                control(out, RST_STREAM, 0, 8)?;
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { clear, entries } => {
                let flags = u8::from(*clear) * FLAG_CLEAR_SETTINGS;
                control(out, SETTINGS, flags, 4 + 8 * entries.len())?;
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                    out.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                control(out, PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway { last_good, status } => {
                control(out, GOAWAY, 0, 8)?;
                out.put_u32(last_good & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Headers {
                stream,
                fin,
                headers,
            } => {
                let block = self.deflater.deflate(headers)?;
                control(out, HEADERS, u8::from(*fin) * FLAG_FIN, 4 + block.len())?;
                out.put_u32(stream & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::WindowUpdate { stream, delta } => {
                control(out, WINDOW_UPDATE, 0, 8)?;
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
        }
        Ok(())
    }
}

/// The 24-bit length field.
fn frame_len(len: usize) -> Result<[u8; 3], FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok([(len >> 16) as u8, (len >> 8) as u8, len as u8])
}

/// The largest payload the length field can express.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), FrameError> {
    let len = frame_len(len)?;
    out.reserve(HEADER_LEN + 16);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_slice(&len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        let h = |p: &[(&str, &str)]| -> Headers {
            p.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 2,
                fin: false,
                unidirectional: false,
                headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream: 3,
                associated: 1,
                priority: 7,
                fin: true,
                unidirectional: true,
                headers: h(&[("streamtype", "data")]),
            },
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                clear: true,
                entries: vec![Setting {
                    flags: 1,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: 1 << 20,
                }],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good: 9,
                status: goaway::OK,
            },
            Frame::Headers {
                stream: 1,
                fin: true,
                headers: h(&[("x", "y")]),
            },
            Frame::WindowUpdate {
                stream: 0,
                delta: 65536,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_byte_by_byte() {
        let frames = all_kinds();
        let mut encoder = Encoder::new();
        let mut wire = BytesMut::new();
        for f in &frames {
            encoder.encode(f, &mut wire).unwrap();
        }
        // Fed one byte at a time: no frame comes out before all of it is in.
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn the_wire_format_is_the_specs() {
        let mut wire = BytesMut::new();
        let mut e = Encoder::new();
        e.encode(&Frame::Ping { id: 1 }, &mut wire).unwrap();
        assert_eq!(
            &wire[..],
            b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
        );
        wire.clear();
        e.encode(
            &Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"hi"),
            },
            &mut wire,
        )
        .unwrap();
        assert_eq!(&wire[..], b"\x00\x00\x00\x03\x01\x00\x00\x02hi");
        wire.clear();
        e.encode(
            &Frame::WindowUpdate {
                stream: 3,
                delta: 0x10000,
            },
            &mut wire,
        )
        .unwrap();
        assert_eq!(
            &wire[..],
            b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x03\x00\x01\x00\x00"
        );
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        Decoder::new(Limits::default()).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn oversized_frames_fail_on_their_header() {
        let limits = Limits::default();
        // Only the header has arrived: the length alone decides.
        let big = limits.max_data_frame + 1;
        let head = [
            0,
            0,
            0,
            1,
            0,
            (big >> 16) as u8,
            (big >> 8) as u8,
            big as u8,
        ];
        assert_eq!(
            decode_one(&head),
            Err(FrameError::TooLarge {
                len: big,
                max: limits.max_data_frame
            })
        );
        let big = limits.max_control_frame + 1;
        let head = [
            0x80,
            3,
            0,
            1,
            0,
            (big >> 16) as u8,
            (big >> 8) as u8,
            big as u8,
        ];
        assert_eq!(
            decode_one(&head),
            Err(FrameError::TooLarge {
                len: big,
                max: limits.max_control_frame
            })
        );
        let mut out = BytesMut::new();
        let huge = Frame::Data {
            stream: 1,
            fin: false,
            data: Bytes::from(vec![0; MAX_FRAME_LEN + 1]),
        };
        assert!(matches!(
            Encoder::new().encode(&huge, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_frames_say_why() {
        assert_eq!(
            decode_one(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"),
            Err(FrameError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode_one(b"\x80\x03\x00\x06\x00\x00\x00\x05\x00\x00\x00\x01\x00"),
            Err(FrameError::BadLength {
                frame: "PING",
                len: 5
            })
        );
        assert_eq!(
            decode_one(b"\x80\x03\x00\x03\x00\x00\x00\x04\x00\x00\x00\x01"),
            Err(FrameError::BadLength {
                frame: "RST_STREAM",
                len: 4
            })
        );
        assert_eq!(
            decode_one(b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x05"),
            Err(FrameError::ZeroStream("RST_STREAM"))
        );
        assert_eq!(
            decode_one(b"\x00\x00\x00\x00\x00\x00\x00\x00"),
            Err(FrameError::ZeroStream("DATA"))
        );
        assert_eq!(
            decode_one(b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00"),
            Err(FrameError::ZeroWindowDelta)
        );
        // SETTINGS whose count disagrees with its length, and too many entries.
        assert_eq!(
            decode_one(b"\x80\x03\x00\x04\x00\x00\x00\x04\x00\x00\x00\x01"),
            Err(FrameError::BadLength {
                frame: "SETTINGS",
                len: 4
            })
        );
        let n = Limits::default().max_settings + 1;
        let mut s = BytesMut::new();
        s.put_slice(b"\x80\x03\x00\x04\x00");
        let len = 4 + 8 * n;
        s.put_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        s.put_u32(n as u32);
        s.put_slice(&vec![0; 8 * n]);
        assert!(matches!(
            Decoder::new(Limits::default()).decode(&mut s),
            Err(FrameError::BadLength {
                frame: "SETTINGS",
                ..
            })
        ));
        // A SYN_STREAM whose header block is not zlib.
        assert!(matches!(
            decode_one(
                b"\x80\x03\x00\x01\x00\x00\x00\x0e\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00nope"
            ),
            Err(FrameError::Compression(_))
        ));
    }

    #[test]
    fn mangled_frames_are_errors_never_panics() {
        // Valid frames, then bits flipped, bytes cut and lengths rewritten, with a fixed
        // xorshift sequence: every outcome is a frame, a wait for more, or an error.
        let mut valid = BytesMut::new();
        let mut encoder = Encoder::new();
        for f in all_kinds() {
            encoder.encode(&f, &mut valid).unwrap();
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bytes = valid.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    _ => bytes.truncate(at.max(1)),
                }
            }
            let mut decoder = Decoder::new(Limits::default());
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        // A CREDENTIAL frame (type 10), then a PING.
        let mut buf = BytesMut::from(
            &b"\x80\x03\x00\x0a\x00\x00\x00\x02ab\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x02"
                [..],
        );
        let mut d = Decoder::new(Limits::default());
        assert_eq!(d.decode(&mut buf), Ok(Some(Frame::Ping { id: 2 })));
        assert!(buf.is_empty());
    }
}
