//! Port-forward over WebSocket, as the kubelet serves it (`/portForward/{ns}/{pod}`, behind the
//! API server's `pods/{name}/portforward`): the rules the API server and the agent share.
//!
//! - The request names its ports in `?ports=`, repeated or comma separated (`ports=80,8080`),
//!   each 1-65535 ([`parse_ports`]).
//! - Subprotocols: none offered (the client then speaks the binary framing; kr8s and other
//!   clients built on a bare WebSocket library do this), `v4.channel.k8s.io` (binary) or
//!   `v4.base64.channel.k8s.io` (text); the first offered one the server speaks wins
//!   ([`negotiate`]), as in Kubernetes' `wsstream` handshake.
//! - Port `i` of the request has two channels: data `2i` (both ways) and error `2i+1` (server
//!   to client). Every message starts with its channel: a byte in the binary framing, the
//!   ASCII digit `'0' + channel` followed by base64 data in the text framing ([`encode`],
//!   [`decode`]).
//! - Before anything else the server sends, on the data and then the error channel of each
//!   port, that port as two little-endian bytes ([`port_prefix`]); clients (kubectl, kr8s,
//!   kube-rs) read and drop that first message per channel.
//! - A port whose connection fails gets a text message on its error channel
//!   ([`forward_error`]); the socket closes when every port's connection has ended.
//!
//! SPDY (`portforward.k8s.io`, and kubectl's `SPDY/3.1+portforward.k8s.io` tunnelled over a
//! WebSocket) is another protocol: [`crate::portforward_spdy`].

use base64::Engine as _;

/// The binary framing's subprotocol.
pub const V4_BINARY: &str = "v4.channel.k8s.io";
/// The text (base64) framing's subprotocol.
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// The subprotocols a server speaks, besides none at all.
pub const PROTOCOLS: [&str; 2] = [V4_BINARY, V4_BASE64];

/// Ports one request may forward. Kubernetes sets no limit; the channel numbers (`2i+1`)
/// must fit in a byte below 255 (reserved), and each port is a connection in the pod, so a
/// request gets a handful, not hundreds.
pub const MAX_PORTS: usize = 32;

/// Why a request's `ports` cannot be used. `Display` is the message of the 400 Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// No `ports` parameter.
    #[error("query parameter \"ports\" is required")]
    Missing,
    /// A `ports` parameter without a value.
    #[error("query parameter \"ports\" cannot be empty")]
    Empty,
    /// A port that is not a number from 0 to 65535.
    #[error("unable to parse {0:?} as a port: ports are numbers from 1 to 65535")]
    NotAPort(String),
    /// Port 0.
    #[error("port {0:?} must be > 0")]
    Zero(String),
    /// More ports than [`MAX_PORTS`].
    #[error("{0} ports requested: at most {max} can be forwarded at once", max = MAX_PORTS)]
    TooMany(usize),
}

/// The ports of a request from the values of its `ports` parameters, in order (each value
/// may list several, comma separated, as Kubernetes reads them). Duplicates are kept: each
/// is a connection of its own.
pub fn parse_ports(values: &[&str]) -> Result<Vec<u16>, PortError> {
    if values.is_empty() {
        return Err(PortError::Missing);
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err(PortError::Empty);
        }
        for part in value.split(',') {
            // Digits only: `+80` and ` 80` are not ports in Go's ParseUint either.
            let port = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse::<u16>().ok())
                .flatten()
                .ok_or_else(|| PortError::NotAPort(part.to_owned()))?;
            if port == 0 {
                return Err(PortError::Zero(part.to_owned()));
            }
            ports.push(port);
        }
    }
    // Counted after parsing: the request line's length bounds the work.
    if ports.len() > MAX_PORTS {
        return Err(PortError::TooMany(ports.len()));
    }
    Ok(ports)
}

/// Why no subprotocol could be agreed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The client offered subprotocols, none of them one of [`PROTOCOLS`].
    #[error(
        "none of the offered subprotocols {offered:?} is supported for port-forward; use {} or {} (or offer none), or {} for SPDY",
        V4_BINARY,
        V4_BASE64,
        crate::portforward_spdy::WEBSOCKET_TUNNEL
    )]
    Unsupported {
        /// What the client offered.
        offered: Vec<String>,
    },
}

/// The subprotocol for the client's `Sec-WebSocket-Protocol` header values (each possibly a
/// comma-separated list): `None` when it offered none (binary framing, no protocol in the
/// answer), else the first offered one the server speaks.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'static str>, ProtocolError> {
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
    offered
        .iter()
        .find_map(|o| PROTOCOLS.iter().copied().find(|p| p == o))
        .map(Some)
        .ok_or(ProtocolError::Unsupported { offered })
}

/// How messages are framed on a negotiated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary messages: the channel byte, then the data.
    Binary,
    /// Text messages: `'0' + channel`, then the data in standard base64.
    Base64,
}

impl Codec {
    /// The framing of a negotiated subprotocol (`None`: none was offered).
    pub fn of(protocol: Option<&str>) -> Self {
        match protocol {
            Some(V4_BASE64) => Codec::Base64,
            _ => Codec::Binary,
        }
    }
}

/// The data channel of the request's `index`th port.
pub fn data_channel(index: usize) -> u8 {
    debug_assert!(index < MAX_PORTS);
    (2 * index) as u8
}

/// The error channel of the request's `index`th port.
pub fn error_channel(index: usize) -> u8 {
    data_channel(index) + 1
}

/// The index of the port whose data channel is `channel`, if it is one of `ports` ports'.
pub fn data_port_index(channel: u8, ports: usize) -> Option<usize> {
    let channel = usize::from(channel);
    (channel % 2 == 0 && channel / 2 < ports).then_some(channel / 2)
}

/// The first message of both channels of a port: the port, little endian.
pub fn port_prefix(port: u16) -> [u8; 2] {
    port.to_le_bytes()
}

/// A message ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message.
    Text(String),
}

/// The message carrying `data` on `channel`.
pub fn encode(codec: Codec, channel: u8, data: &[u8]) -> Encoded {
    match codec {
        Codec::Binary => {
            let mut out = Vec::with_capacity(data.len() + 1);
            out.push(channel);
            out.extend_from_slice(data);
            Encoded::Binary(out)
        }
        Codec::Base64 => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            let mut out = String::with_capacity(encoded.len() + 1);
            // Channels stay below 2 * MAX_PORTS, so '0' + channel is ASCII.
            out.push(char::from(b'0'.wrapping_add(channel)));
            out.push_str(&encoded);
            Encoded::Text(out)
        }
    }
}

/// Why a client's message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty message has no channel.
    #[error("empty message without a channel")]
    Empty,
    /// The channel character of a text message is below `'0'`.
    #[error("bad channel character {0:?}")]
    BadChannel(u8),
    /// The data of a text message is not base64.
    #[error("bad base64 data: {0}")]
    BadBase64(String),
}

/// The channel and data of a client's message (text or binary: its bytes).
pub fn decode(codec: Codec, message: &[u8]) -> Result<(u8, Vec<u8>), FrameError> {
    let (&first, data) = message.split_first().ok_or(FrameError::Empty)?;
    match codec {
        Codec::Binary => Ok((first, data.to_vec())),
        Codec::Base64 => {
            let channel = first
                .checked_sub(b'0')
                .ok_or(FrameError::BadChannel(first))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| FrameError::BadBase64(e.to_string()))?;
            Ok((channel, data))
        }
    }
}

/// The error channel's message when forwarding `port` failed, in the kubelet's words.
pub fn forward_error(port: u16, pod: &str, uid: &str, cause: &str) -> String {
    format!("error forwarding port {port} to pod {pod}, uid {uid}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(values: &[&str]) -> Result<Vec<u16>, PortError> {
        parse_ports(values)
    }

    #[test]
    fn ports_are_read_as_kubernetes_reads_them() {
        assert_eq!(ports(&["80"]), Ok(vec![80]));
        assert_eq!(ports(&["80,8080", "443"]), Ok(vec![80, 8080, 443]));
        assert_eq!(ports(&["65535", "1"]), Ok(vec![65535, 1]));
        assert_eq!(ports(&["80,80"]), Ok(vec![80, 80]));
    }

    #[test]
    fn bad_ports_say_why() {
        assert_eq!(ports(&[]), Err(PortError::Missing));
        assert_eq!(ports(&[""]), Err(PortError::Empty));
        assert_eq!(ports(&["0"]), Err(PortError::Zero("0".into())));
        for bad in [
            "65536",
            "-1",
            "http",
            "80,",
            ",80",
            " 80",
            "+80",
            "8o",
            "99999999999999",
        ] {
            assert!(
                matches!(ports(&[bad]), Err(PortError::NotAPort(_))),
                "{bad:?}: {:?}",
                ports(&[bad])
            );
        }
        assert_eq!(
            ports(&["65536"]).unwrap_err().to_string(),
            "unable to parse \"65536\" as a port: ports are numbers from 1 to 65535"
        );
        assert_eq!(
            ports(&["0"]).unwrap_err().to_string(),
            "port \"0\" must be > 0"
        );
        assert_eq!(
            ports(&[]).unwrap_err().to_string(),
            "query parameter \"ports\" is required"
        );
    }

    #[test]
    fn the_number_of_ports_is_bounded() {
        let max: Vec<String> = (1..=MAX_PORTS).map(|p| p.to_string()).collect();
        let max_refs: Vec<&str> = max.iter().map(String::as_str).collect();
        assert_eq!(ports(&max_refs).unwrap().len(), MAX_PORTS);
        let one_more = format!("{},9999", max.join(","));
        let e = ports(&[&one_more]).unwrap_err();
        assert_eq!(e, PortError::TooMany(MAX_PORTS + 1));
        assert!(e.to_string().contains("at most 32"), "{e}");
        // Every channel, base64 included, fits in a byte below 255.
        assert!(u8::try_from(2 * MAX_PORTS + usize::from(b'0')).is_ok());
    }

    #[test]
    fn subprotocols_are_negotiated_as_wsstream_does() {
        assert_eq!(negotiate([]), Ok(None));
        assert_eq!(negotiate([""]), Ok(None));
        assert_eq!(negotiate([V4_BINARY]), Ok(Some(V4_BINARY)));
        // The client's order, as in Kubernetes' handshake.
        assert_eq!(
            negotiate(["v4.base64.channel.k8s.io, v4.channel.k8s.io"]),
            Ok(Some(V4_BASE64))
        );
        // kube-rs offers v5 first; port-forward has no v5, so v4.
        assert_eq!(
            negotiate(["v5.channel.k8s.io, v4.channel.k8s.io"]),
            Ok(Some(V4_BINARY))
        );
        // The SPDY tunnel is told apart before (portforward_spdy): here it is not a framing.
        let e = negotiate(["v2.portforward.k8s.io"]).unwrap_err();
        assert!(e.to_string().contains("SPDY/3.1+portforward.k8s.io"), "{e}");
        assert_eq!(
            e,
            ProtocolError::Unsupported {
                offered: vec!["v2.portforward.k8s.io".into()]
            }
        );
        assert_eq!(Codec::of(None), Codec::Binary);
        assert_eq!(Codec::of(Some(V4_BINARY)), Codec::Binary);
        assert_eq!(Codec::of(Some(V4_BASE64)), Codec::Base64);
    }

    #[test]
    fn channels_pair_up_per_port() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!((data_channel(3), error_channel(3)), (6, 7));
        assert_eq!(data_port_index(0, 1), Some(0));
        assert_eq!(data_port_index(2, 2), Some(1));
        assert_eq!(data_port_index(1, 2), None, "an error channel");
        assert_eq!(data_port_index(4, 2), None, "beyond the request's ports");
        assert_eq!(port_prefix(8080), [0x90, 0x1f]);
    }

    #[test]
    fn frames_round_trip_in_both_framings() {
        assert_eq!(
            encode(Codec::Binary, 2, b"GET /"),
            Encoded::Binary(b"\x02GET /".to_vec())
        );
        assert_eq!(decode(Codec::Binary, b"\x00hi"), Ok((0, b"hi".to_vec())));
        assert_eq!(decode(Codec::Binary, b"\x00"), Ok((0, Vec::new())));
        assert_eq!(
            encode(Codec::Base64, 1, b"\x50\x00"),
            Encoded::Text("1UAA=".into())
        );
        assert_eq!(
            decode(Codec::Base64, b"0Zm9vCg=="),
            Ok((0, b"foo\n".to_vec()))
        );
        assert_eq!(decode(Codec::Binary, b""), Err(FrameError::Empty));
        assert!(matches!(
            decode(Codec::Base64, b"0not base64!"),
            Err(FrameError::BadBase64(_))
        ));
        assert_eq!(
            decode(Codec::Base64, b"\x01AA=="),
            Err(FrameError::BadChannel(1))
        );
        assert_eq!(
            forward_error(80, "default/web", "u-1", "connection refused"),
            "error forwarding port 80 to pod default/web, uid u-1: connection refused"
        );
    }
}
