//! PostgreSQL wire protocol (3.0) codec for a proxy: framing and messages over borrowed bytes, no I/O.
//!
//! The layers, bottom up:
//! - [`parse_header`] / [`frame_len`]: the one framing path for tagged messages (both directions),
//!   with the length bounds built in. [`startup::startup_frame_len`] does the same for the untagged
//!   startup-phase packets.
//! - [`frontend::parse`], [`backend::parse`], [`startup::parse_startup`]: decode one whole frame into a
//!   borrowed view. Nothing is copied or allocated; bodies are validated strictly and every failure is a
//!   [`ProtocolError`] that says which SQLSTATE the client should get.
//! - [`encode`]: free functions that append whole messages to a `BytesMut`.
//!
//! A proxy's read loop, after the startup phase:
//!
//! ```
//! use bytes::BytesMut;
//! use sluice_pgwire::frontend::{self, FrontendMessage};
//! use sluice_pgwire::{encode, frame_len, ProtocolError, DEFAULT_MAX_MESSAGE_LEN};
//!
//! # fn main() -> Result<(), ProtocolError> {
//! let mut inbound = BytesMut::new(); // filled by the I/O layer
//! encode::query(&mut inbound, "SELECT 1");
//! encode::sync(&mut inbound);
//! inbound.extend_from_slice(&[b'Q', 0, 0]); // the start of a message still in flight
//!
//! let mut seen = Vec::new();
//! while let Some(n) = frame_len(&inbound, DEFAULT_MAX_MESSAGE_LEN)? {
//!     let frame = inbound.split_to(n).freeze(); // whole message: forward, or rewrite
//!     match frontend::parse(&frame)? {
//!         FrontendMessage::Query { sql } => seen.push(String::from_utf8_lossy(sql).into_owned()),
//!         other => seen.push(format!("{}", char::from(other.tag()))),
//!     }
//! }
//! assert_eq!(seen, ["SELECT 1", "S"]);
//! assert_eq!(&inbound[..], &[b'Q', 0, 0]); // kept for the next read
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod backend;
pub mod encode;
mod error;
pub mod frontend;
mod read;
pub mod sqlstate;
pub mod startup;

pub use error::ProtocolError;

/// Size of a tagged message header: one tag byte and an `i32` length.
pub const HEADER_LEN: usize = 5;

/// Largest startup-phase packet accepted, length word included (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Default cap on the length field of a tagged message (1 GiB, PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 30;

/// The `tag` used in a [`ProtocolError`] about an untagged startup-phase packet.
pub const STARTUP_TAG: u8 = 0;

/// The 5-byte header of a tagged message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Length as on the wire: counts itself (4 bytes) and the body, not the tag.
    pub len: u32,
}

impl Header {
    /// Bytes the whole message occupies on the wire: tag + `len`.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// Bytes of the body after the header: `len - 4`.
    #[inline]
    pub fn body_len(&self) -> usize {
        usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(4)
    }
}

/// Parses the 5-byte header of a tagged message at the start of `buf`.
///
/// `Ok(None)` means fewer than [`HEADER_LEN`] bytes are available. A declared length below 4
/// (including any negative `i32`) is [`ProtocolError::MalformedLength`]; one above `max_len` is
/// [`ProtocolError::MessageTooLarge`], so callers can cap before reserving memory. Never allocates.
#[inline]
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let wire = i32::from_be_bytes([a, b, c, d]);
    let len = match u32::try_from(wire) {
        Ok(len) if len >= 4 => len,
        _ => return Err(ProtocolError::MalformedLength { tag, len: wire }),
    };
    // On targets where u32 does not fit in usize the message cannot be buffered anyway.
    let too_large = |len| ProtocolError::MessageTooLarge {
        tag,
        len,
        max: max_len,
    };
    let len_usize = usize::try_from(len).map_err(|_| too_large(usize::MAX))?;
    if len_usize > max_len {
        return Err(too_large(len_usize));
    }
    Ok(Some(Header { tag, len }))
}

/// Length of the whole tagged message at the start of `buf`.
///
/// `Ok(Some(n))` when `buf[..n]` is one complete message, `Ok(None)` when more bytes are needed
/// (the header, or the rest of the body). Errors as [`parse_header`].
#[inline]
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    Ok(match parse_header(buf, max_len)? {
        Some(h) if buf.len() >= h.total_len() => Some(h.total_len()),
        _ => None,
    })
}

/// Iterator over the whole tagged messages at the start of a buffer, via [`frame_len`].
///
/// Yields each complete frame; stops at the first incomplete one (see [`Frames::remaining`]) or
/// after yielding the first framing error.
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    buf: &'a [u8],
    max_len: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Frames over `buf`, each capped at `max_len` like [`parse_header`].
    pub fn new(buf: &'a [u8], max_len: usize) -> Self {
        Frames {
            buf,
            max_len,
            failed: false,
        }
    }

    /// The bytes not yet yielded: an incomplete trailing message, or empty.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match frame_len(self.buf, self.max_len) {
            Ok(Some(n)) => {
                let (frame, rest) = self.buf.split_at(n);
                self.buf = rest;
                Some(Ok(frame))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Frames<'_> {}

#[cfg(test)]
mod tests;
