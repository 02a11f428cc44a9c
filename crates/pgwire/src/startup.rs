//! Untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest.

use crate::read::Reader;
use crate::{ProtocolError, MAX_STARTUP_LEN, STARTUP_TAG};

/// Version word of protocol 3.0 (`3 << 16`).
pub const PROTOCOL_3_0: i32 = 196_608;
/// Request code of an SSLRequest (`1234 << 16 | 5679`).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a GSSENCRequest (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of a CancelRequest (`1234 << 16 | 5678`).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Smallest startup packet: length word and request code.
const MIN_STARTUP_LEN: usize = 8;
/// Exact size of a protocol 3.0 CancelRequest.
const CANCEL_LEN: usize = 16;
/// A Terminate message (`'X'`, length 4). Some clients send one where a startup packet belongs
/// when they give up before starting (e.g. after the answer to an SSLRequest). No startup
/// packet can begin with `'X'`: read as a length that would be above 1.4 GB.
const TERMINATE_FRAME: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Length of the whole untagged startup packet at the start of `buf` (its `i32` length counts itself).
///
/// `Ok(None)` means more bytes are needed. A length below 8 is [`ProtocolError::MalformedLength`],
/// above [`MAX_STARTUP_LEN`] is [`ProtocolError::MessageTooLarge`] (both tagged [`STARTUP_TAG`]).
/// A Terminate message is framed as itself (see [`StartupPacket::Terminate`]).
pub fn startup_frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.first() == Some(&TERMINATE_FRAME[0]) {
        if buf.len() < TERMINATE_FRAME.len() && TERMINATE_FRAME.starts_with(buf) {
            return Ok(None);
        }
        if buf.starts_with(&TERMINATE_FRAME) {
            return Ok(Some(TERMINATE_FRAME.len()));
        }
    }
    let Some(&word) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = checked_startup_len(i32::from_be_bytes(word))?;
    Ok((buf.len() >= len).then_some(len))
}

fn checked_startup_len(wire: i32) -> Result<usize, ProtocolError> {
    let len = usize::try_from(wire).map_err(|_| ProtocolError::MalformedLength {
        tag: STARTUP_TAG,
        len: wire,
    })?;
    if len < MIN_STARTUP_LEN {
        return Err(ProtocolError::MalformedLength {
            tag: STARTUP_TAG,
            len: wire,
        });
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::MessageTooLarge {
            tag: STARTUP_TAG,
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(len)
}

/// A decoded startup-phase packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// StartupMessage for protocol 3.x.
    Startup(StartupParams<'a>),
    /// SSLRequest: the client asks to switch to TLS.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// A Terminate message instead of a startup packet: the client is leaving before it
    /// started (not a protocol error; PostgreSQL's clients do this).
    Terminate,
    /// CancelRequest (protocol 3.0 layout, exactly 16 bytes).
    Cancel {
        /// Backend process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
}

/// The parameters of a StartupMessage, validated at parse time.
///
/// Every key and value is NUL-terminated UTF-8, keys are non-empty, and the list ends with an
/// extra NUL. Iteration is therefore allocation-free and infallible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartupParams<'a> {
    /// Minor protocol version requested (major is always 3). Above 0 the proxy may have to
    /// answer with NegotiateProtocolVersion.
    pub minor: u16,
    /// The `key\0value\0...\0` area, final NUL included.
    raw: &'a [u8],
}

impl<'a> StartupParams<'a> {
    /// The `(key, value)` pairs in wire order.
    pub fn iter(&self) -> Params<'a> {
        Params {
            rest: Reader::new(self.raw, STARTUP_TAG),
        }
    }

    /// The value of the first parameter named `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// The `user` parameter (PostgreSQL requires it; checking that is the caller's job).
    pub fn user(&self) -> Option<&'a str> {
        self.get("user")
    }

    /// The `database` parameter (PostgreSQL defaults it to the user name when absent).
    pub fn database(&self) -> Option<&'a str> {
        self.get("database")
    }

    /// The raw `key\0value\0...\0` area, final NUL included, for forwarding as is.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl<'a> IntoIterator for &StartupParams<'a> {
    type Item = (&'a str, &'a str);
    type IntoIter = Params<'a>;

    fn into_iter(self) -> Params<'a> {
        self.iter()
    }
}

/// Iterator over the `(key, value)` pairs of [`StartupParams`].
#[derive(Clone)]
pub struct Params<'a> {
    rest: Reader<'a>,
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        // Validated at parse time; an error here can only mean the end of the list.
        let key = self.rest.cstr().ok().filter(|k| !k.is_empty())?;
        let value = self.rest.cstr().ok()?;
        Some((key, value))
    }
}

/// Decodes one whole startup-phase packet; `frame` includes its length word.
///
/// The length word must match `frame.len()`. Protocol versions other than 3.x, including 2.0 and
/// unknown request codes, are [`ProtocolError::UnsupportedProtocolVersion`].
pub fn parse_startup(frame: &[u8]) -> Result<StartupPacket<'_>, ProtocolError> {
    if frame == TERMINATE_FRAME {
        return Ok(StartupPacket::Terminate);
    }
    let mut r = Reader::new(frame, STARTUP_TAG);
    let wire = r.i32("truncated length")?;
    let len = checked_startup_len(wire)?;
    if len != frame.len() {
        return Err(r.malformed("length word does not match packet size"));
    }
    let [a, b, c, d] = r.array::<4>("truncated request code")?;
    let code = i32::from_be_bytes([a, b, c, d]);
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            if len != CANCEL_LEN {
                return Err(r.malformed("CancelRequest must be 16 bytes"));
            }
            let pid = r.i32("truncated CancelRequest")?;
            let secret = r.i32("truncated CancelRequest")?;
            r.finish()?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        _ => {
            let major = u16::from_be_bytes([a, b]);
            let minor = u16::from_be_bytes([c, d]);
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocolVersion { major, minor });
            }
            let raw = r.rest();
            validate_params(raw)?;
            Ok(StartupPacket::Startup(StartupParams { minor, raw }))
        }
    }
}

/// Checks the `key\0value\0...\0` layout: NUL-terminated UTF-8 pairs, then a final NUL as the last byte.
fn validate_params(raw: &[u8]) -> Result<(), ProtocolError> {
    let mut r = Reader::new(raw, STARTUP_TAG);
    loop {
        match r.peek() {
            None => return Err(r.malformed("missing final NUL in startup parameters")),
            Some(0) => {
                r.u8("final NUL")?;
                return if r.is_empty() {
                    Ok(())
                } else {
                    Err(r.malformed("bytes after the final NUL of startup parameters"))
                };
            }
            Some(_) => {
                r.cstr()?;
                if r.is_empty() {
                    return Err(r.malformed("startup parameter without a value"));
                }
                r.cstr()?;
            }
        }
    }
}
