//! The codec's error type: every way a frame can be rejected, with the SQLSTATE to report.

use std::fmt;

use crate::{sqlstate, STARTUP_TAG};

/// Why bytes from the wire were rejected.
///
/// Payloads are small and fixed (tag, lengths, static descriptions): nothing from a message body
/// is ever echoed, so [`Display`](fmt::Display) is safe to send back to a client in an
/// ErrorResponse along with [`ProtocolError::sqlstate`]. All of these are fatal to the connection:
/// once framing is in doubt the stream cannot be resynchronised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The declared length is below the minimum (4 for tagged messages, 8 for startup packets),
    /// including negative `i32` values.
    #[error("invalid length {len} in {}", Msg(*.tag))]
    MalformedLength {
        /// Message type, or [`STARTUP_TAG`] for a startup packet.
        tag: u8,
        /// The length word as sent.
        len: i32,
    },
    /// The declared length is above the configured cap.
    #[error("{} too large: {len} bytes exceeds the limit of {max}", Msg(*.tag))]
    MessageTooLarge {
        /// Message type, or [`STARTUP_TAG`] for a startup packet.
        tag: u8,
        /// The declared length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The body does not have the layout its type requires.
    #[error("malformed {}: {what}", Msg(*.tag))]
    Malformed {
        /// Message type, or [`STARTUP_TAG`] for a startup packet.
        tag: u8,
        /// What is wrong (static text, e.g. "missing NUL terminator").
        what: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in {}", Msg(*.tag))]
    InvalidUtf8 {
        /// Message type, or [`STARTUP_TAG`] for a startup packet.
        tag: u8,
    },
    /// A startup packet asked for a protocol other than 3.x (or an unknown request code).
    #[error(
        "unsupported frontend protocol {major}.{minor}: server supports 3.0 and later 3.x versions"
    )]
    UnsupportedProtocolVersion {
        /// High 16 bits of the version word.
        major: u16,
        /// Low 16 bits of the version word.
        minor: u16,
    },
    /// A well-formed message that is not allowed at this point of the conversation.
    #[error("unexpected {} during {phase}", Msg(*.tag))]
    UnexpectedMessage {
        /// Message type, or [`STARTUP_TAG`] for a startup packet.
        tag: u8,
        /// Where we were (static text, e.g. "authentication").
        phase: &'static str,
    },
}

impl ProtocolError {
    /// The SQLSTATE a client should receive for this error: `0A000` (feature not supported) for an
    /// unsupported protocol version, `08P01` (protocol violation) for everything else.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedProtocolVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            ProtocolError::MalformedLength { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::Malformed { .. }
            | ProtocolError::InvalidUtf8 { .. }
            | ProtocolError::UnexpectedMessage { .. } => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// The message type the error is about ([`STARTUP_TAG`] for startup packets), if any.
    pub fn tag(&self) -> Option<u8> {
        match *self {
            ProtocolError::MalformedLength { tag, .. }
            | ProtocolError::MessageTooLarge { tag, .. }
            | ProtocolError::Malformed { tag, .. }
            | ProtocolError::InvalidUtf8 { tag }
            | ProtocolError::UnexpectedMessage { tag, .. } => Some(tag),
            ProtocolError::UnsupportedProtocolVersion { .. } => None,
        }
    }
}

/// Names a message in error text: `message 'Q'`, `message 0x01`, or `startup packet`.
struct Msg(u8);

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            STARTUP_TAG => f.write_str("startup packet"),
            t if t.is_ascii_graphic() => write!(f, "message '{}'", char::from(t)),
            t => write!(f, "message 0x{t:02x}"),
        }
    }
}
