//! Client-to-server messages of protocol 3.0 (after startup): tag constants and a borrowing decoder.

use crate::read::{split_frame, Reader};
use crate::ProtocolError;

/// Bind: portal and statement names, parameters, result formats.
pub const BIND: u8 = b'B';
/// Close a prepared statement or portal.
pub const CLOSE: u8 = b'C';
/// CopyData during COPY FROM STDIN.
pub const COPY_DATA: u8 = b'd';
/// CopyDone: end of COPY FROM STDIN data.
pub const COPY_DONE: u8 = b'c';
/// CopyFail: abort COPY FROM STDIN.
pub const COPY_FAIL: u8 = b'f';
/// Describe a prepared statement or portal.
pub const DESCRIBE: u8 = b'D';
/// Execute a portal.
pub const EXECUTE: u8 = b'E';
/// Flush: ask the server to send what it has.
pub const FLUSH: u8 = b'H';
/// FunctionCall (legacy fast-path interface).
pub const FUNCTION_CALL: u8 = b'F';
/// Parse: create a prepared statement.
pub const PARSE: u8 = b'P';
/// PasswordMessage, GSSResponse, SASLInitialResponse and SASLResponse all share this tag.
pub const PASSWORD: u8 = b'p';
/// Simple query.
pub const QUERY: u8 = b'Q';
/// Sync: end of an extended-query batch.
pub const SYNC: u8 = b'S';
/// Terminate: the client is closing the connection.
pub const TERMINATE: u8 = b'X';

/// Describe/Close target: a prepared statement.
pub const KIND_STATEMENT: u8 = b'S';
/// Describe/Close target: a portal.
pub const KIND_PORTAL: u8 = b'P';

/// A decoded client message, borrowing from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// Simple query.
    Query {
        /// The SQL text (may hold several statements), in the session's client encoding:
        /// bytes, since PostgreSQL does not require UTF-8 (see `client_encoding`).
        sql: &'a [u8],
    },
    /// Parse (create a prepared statement; `name` is empty for the unnamed one).
    Parse {
        /// Statement name.
        name: &'a str,
        /// SQL text, in the session's client encoding (bytes, as [`FrontendMessage::Query`]).
        query: &'a [u8],
        /// Raw `i16` count followed by that many `i32` type OIDs, validated; see [`param_oids`].
        param_types: &'a [u8],
    },
    /// Bind (create a portal from a prepared statement).
    Bind {
        /// Portal name (empty for the unnamed portal).
        portal: &'a str,
        /// Statement name (empty for the unnamed statement).
        statement: &'a str,
        /// Everything after the statement name (formats, parameters, result formats), layout
        /// validated but bytes untouched, for [`crate::encode::bind_with_statement`].
        rest: &'a [u8],
    },
    /// Describe a statement or portal.
    Describe {
        /// [`KIND_STATEMENT`] or [`KIND_PORTAL`].
        kind: u8,
        /// Statement or portal name.
        name: &'a str,
    },
    /// Execute a portal.
    Execute {
        /// Portal name.
        portal: &'a str,
        /// Row limit; 0 means no limit.
        max_rows: i32,
    },
    /// Close a statement or portal.
    Close {
        /// [`KIND_STATEMENT`] or [`KIND_PORTAL`].
        kind: u8,
        /// Statement or portal name.
        name: &'a str,
    },
    /// Sync.
    Sync,
    /// Flush.
    Flush,
    /// Terminate.
    Terminate,
    /// CopyDone.
    CopyDone,
    /// CopyData payload.
    CopyData(&'a [u8]),
    /// CopyFail.
    CopyFail {
        /// The client's reason, in the session's client encoding.
        message: &'a [u8],
    },
    /// A `'p'` body as is: a password, GSS token, or SASL (initial) response depending on the
    /// authentication phase; see [`sasl_initial_response`].
    Password(&'a [u8]),
    /// FunctionCall body, unparsed.
    FunctionCall(&'a [u8]),
    /// Any other tag; the caller decides (the proxy rejects it).
    Unknown {
        /// Message type.
        tag: u8,
        /// Body after the header.
        body: &'a [u8],
    },
}

impl FrontendMessage<'_> {
    /// The wire tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query { .. } => QUERY,
            FrontendMessage::Parse { .. } => PARSE,
            FrontendMessage::Bind { .. } => BIND,
            FrontendMessage::Describe { .. } => DESCRIBE,
            FrontendMessage::Execute { .. } => EXECUTE,
            FrontendMessage::Close { .. } => CLOSE,
            FrontendMessage::Sync => SYNC,
            FrontendMessage::Flush => FLUSH,
            FrontendMessage::Terminate => TERMINATE,
            FrontendMessage::CopyDone => COPY_DONE,
            FrontendMessage::CopyData(_) => COPY_DATA,
            FrontendMessage::CopyFail { .. } => COPY_FAIL,
            FrontendMessage::Password(_) => PASSWORD,
            FrontendMessage::FunctionCall(_) => FUNCTION_CALL,
            FrontendMessage::Unknown { tag, .. } => *tag,
        }
    }
}

/// Decodes one whole client message; `frame` includes the 5-byte header, as delimited by
/// [`crate::frame_len`], and its length word must match `frame.len()`.
///
/// Bodies are validated strictly (NUL terminators, Describe/Close kind, counts that fit, no
/// trailing bytes), as PostgreSQL itself would, so what passes can be forwarded as is.
pub fn parse(frame: &[u8]) -> Result<FrontendMessage<'_>, ProtocolError> {
    let (tag, body) = split_frame(frame)?;
    let mut r = Reader::new(body, tag);
    let msg = match tag {
        QUERY => FrontendMessage::Query {
            sql: r.cstr_bytes()?,
        },
        PARSE => {
            let name = r.cstr()?;
            let query = r.cstr_bytes()?;
            let param_types = r.rest();
            validate_param_types(param_types)?;
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            }
        }
        BIND => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            let rest = r.rest();
            validate_bind_rest(rest)?;
            FrontendMessage::Bind {
                portal,
                statement,
                rest,
            }
        }
        DESCRIBE | CLOSE => {
            let kind = r.u8("missing kind")?;
            if kind != KIND_STATEMENT && kind != KIND_PORTAL {
                return Err(r.malformed("kind must be 'S' or 'P'"));
            }
            let name = r.cstr()?;
            if tag == DESCRIBE {
                FrontendMessage::Describe { kind, name }
            } else {
                FrontendMessage::Close { kind, name }
            }
        }
        EXECUTE => FrontendMessage::Execute {
            portal: r.cstr()?,
            max_rows: r.i32("truncated row limit")?,
        },
        SYNC => FrontendMessage::Sync,
        FLUSH => FrontendMessage::Flush,
        TERMINATE => FrontendMessage::Terminate,
        COPY_DONE => FrontendMessage::CopyDone,
        COPY_FAIL => FrontendMessage::CopyFail {
            message: r.cstr_bytes()?,
        },
        COPY_DATA => FrontendMessage::CopyData(r.rest()),
        PASSWORD => FrontendMessage::Password(r.rest()),
        FUNCTION_CALL => FrontendMessage::FunctionCall(r.rest()),
        _ => FrontendMessage::Unknown {
            tag,
            body: r.rest(),
        },
    };
    r.finish()?;
    Ok(msg)
}

/// Parse's parameter types: an unsigned 16-bit count, then exactly that many `i32` OIDs.
fn validate_param_types(raw: &[u8]) -> Result<(), ProtocolError> {
    let mut r = Reader::new(raw, PARSE);
    let n = r.count16("bad parameter type count")?;
    r.bytes(n * 4, "parameter type count exceeds message")?;
    r.finish()
}

/// The type OIDs of a validated Parse `param_types` area (0 = let the server infer).
pub fn param_oids(param_types: &[u8]) -> impl ExactSizeIterator<Item = u32> + '_ {
    param_types
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// Bind after the statement name: format codes, parameter values, result format codes.
fn validate_bind_rest(rest: &[u8]) -> Result<(), ProtocolError> {
    let mut r = Reader::new(rest, BIND);
    let formats = r.count16("bad parameter format count")?;
    r.bytes(formats * 2, "parameter format count exceeds message")?;
    let params = r.count16("bad parameter count")?;
    // PostgreSQL: zero formats (all text), one (applies to all), or one per parameter.
    if formats > 1 && formats != params {
        return Err(r.malformed("parameter format count does not match parameter count"));
    }
    for _ in 0..params {
        let len = r.i32("truncated parameter length")?;
        if len == -1 {
            continue; // NULL
        }
        let len = usize::try_from(len).map_err(|_| r.malformed("negative parameter length"))?;
        r.bytes(len, "parameter value exceeds message")?;
    }
    let results = r.count16("bad result format count")?;
    r.bytes(results * 2, "result format count exceeds message")?;
    r.finish()
}

/// A SASLInitialResponse carried in a [`FrontendMessage::Password`] body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// Selected mechanism, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// Initial client response; `None` when the client sent length -1.
    pub data: Option<&'a [u8]>,
}

/// Reads a `'p'` body as SASLInitialResponse (only meaningful right after AuthenticationSASL).
pub fn sasl_initial_response(body: &[u8]) -> Result<SaslInitialResponse<'_>, ProtocolError> {
    let mut r = Reader::new(body, PASSWORD);
    let mechanism = r.cstr()?;
    let len = r.i32("truncated SASL data length")?;
    let data = match len {
        -1 => None,
        len => {
            let len = usize::try_from(len).map_err(|_| r.malformed("negative SASL data length"))?;
            Some(r.bytes(len, "SASL data length exceeds message")?)
        }
    };
    r.finish()?;
    Ok(SaslInitialResponse { mechanism, data })
}

/// Reads a `'p'` body as a cleartext PasswordMessage: the bytes before the terminating NUL.
///
/// Bytes, not `str`: PostgreSQL does not require passwords to be UTF-8.
pub fn password_cleartext(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, PASSWORD);
    let pw = r.cstr_bytes()?;
    r.finish()?;
    Ok(pw)
}
