//! The Kubernetes websocket streaming protocol of `exec` (`v4.channel.k8s.io`,
//! `v5.channel.k8s.io`): every binary message starts with a channel byte, and the error
//! channel ends the stream with a `Status` carrying the exit code, as kubectl expects.

use serde_json::{json, Value};

/// The subprotocols the agent speaks, best first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];
/// v5: v4 plus the close channel (the client half-closes stdin).
pub const V5: &str = "v5.channel.k8s.io";
/// v4: stdin, stdout, stderr, an error channel with a Status, and terminal resize.
pub const V4: &str = "v4.channel.k8s.io";

/// The channels of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Client to process.
    Stdin,
    /// Process to client.
    Stdout,
    /// Process to client.
    Stderr,
    /// Server to client: a `Status` when the process ended (or could not start).
    Error,
    /// Client to server: the terminal's new size, JSON `{"Width":..,"Height":..}`.
    Resize,
    /// Client to server (v5): the channel in the next byte is closed (stdin's EOF).
    Close,
}

impl Channel {
    /// The channel's byte.
    pub fn byte(self) -> u8 {
        match self {
            Channel::Stdin => 0,
            Channel::Stdout => 1,
            Channel::Stderr => 2,
            Channel::Error => 3,
            Channel::Resize => 4,
            Channel::Close => 255,
        }
    }

    /// The channel of a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Error,
            4 => Channel::Resize,
            255 => Channel::Close,
            _ => return None,
        })
    }
}

/// A message on `channel` carrying `data`.
pub fn frame(channel: Channel, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel.byte());
    out.extend_from_slice(data);
    out
}

/// Why a message from the client cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// An empty message has no channel byte.
    #[error("empty message without a channel byte")]
    Empty,
    /// The channel byte is not one of the protocol's.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// A resize message is not `{"Width":..,"Height":..}`.
    #[error("bad terminal size: {0}")]
    BadResize(String),
    /// A close message names no channel.
    #[error("close message without a channel")]
    BadClose,
}

/// A message from the client, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Bytes for the process's stdin.
    Stdin(&'a [u8]),
    /// The terminal's new size (columns, rows).
    Resize { width: u16, height: u16 },
    /// The client closed a channel (stdin: EOF).
    Close(Channel),
    /// A message on a channel a client does not send on (ignored).
    Other(Channel),
}

#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Decodes a binary message from the client.
pub fn parse_client_frame(msg: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    let (&first, data) = msg.split_first().ok_or(FrameError::Empty)?;
    match Channel::from_byte(first).ok_or(FrameError::UnknownChannel(first))? {
        Channel::Stdin => Ok(ClientFrame::Stdin(data)),
        Channel::Resize => {
            let size: TerminalSize =
                serde_json::from_slice(data).map_err(|e| FrameError::BadResize(format!("{e}")))?;
            Ok(ClientFrame::Resize {
                width: size.width,
                height: size.height,
            })
        }
        Channel::Close => {
            let &b = data.first().ok_or(FrameError::BadClose)?;
            Ok(ClientFrame::Close(
                Channel::from_byte(b).ok_or(FrameError::UnknownChannel(b))?,
            ))
        }
        other => Ok(ClientFrame::Other(other)),
    }
}

/// The error channel's `Status` for a process that exited with `code` (as the kubelet sends
/// it: Success, or Failure with reason NonZeroExitCode and the code as an ExitCode cause,
/// from which kubectl takes its own exit code).
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error channel's `Status` for an exec that could not run at all.
pub fn failure_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_channel_byte_first() {
        assert_eq!(frame(Channel::Stdout, b"hi"), b"\x01hi");
        assert_eq!(frame(Channel::Stderr, b""), b"\x02");
        assert_eq!(frame(Channel::Error, b"{}")[0], 3);
    }

    #[test]
    fn client_frames_decode() {
        assert_eq!(
            parse_client_frame(b"\x00ls\n"),
            Ok(ClientFrame::Stdin(b"ls\n"))
        );
        assert_eq!(
            parse_client_frame(b"\x04{\"Width\":120,\"Height\":40}"),
            Ok(ClientFrame::Resize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(
            parse_client_frame(b"\xff\x00"),
            Ok(ClientFrame::Close(Channel::Stdin))
        );
        assert_eq!(
            parse_client_frame(b"\x01x"),
            Ok(ClientFrame::Other(Channel::Stdout))
        );
        assert_eq!(parse_client_frame(b""), Err(FrameError::Empty));
        assert_eq!(
            parse_client_frame(b"\x09"),
            Err(FrameError::UnknownChannel(9))
        );
        assert_eq!(parse_client_frame(b"\xff"), Err(FrameError::BadClose));
        assert!(matches!(
            parse_client_frame(b"\x04{\"Width\":-1}"),
            Err(FrameError::BadResize(_))
        ));
    }

    #[test]
    fn exit_statuses_are_what_kubectl_reads() {
        assert_eq!(
            exit_status(&[], 0),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        assert!(s["message"].as_str().unwrap().contains("exit code 3"));
        assert_eq!(failure_status("boom")["status"], "Failure");
    }
}
