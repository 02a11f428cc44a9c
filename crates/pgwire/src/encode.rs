//! Encoders: free functions that append one whole message (length included) to a `BytesMut`.
//!
//! Lengths are measured after the body is written and patched in with a checked conversion, so
//! they can never wrap or disagree with the bytes. Strings are written as C strings: a `&str`
//! holding a NUL is a caller bug (caught by `debug_assert!`); release builds cut it at the first
//! NUL rather than let text spill into the next field or message.
//!
//! # Panics
//!
//! Every function panics if the message would be longer than `i32::MAX` bytes. Messages the proxy
//! builds are small, and bodies it forwards come from frames capped at
//! [`DEFAULT_MAX_MESSAGE_LEN`](crate::DEFAULT_MAX_MESSAGE_LEN) (1 GiB), so this is unreachable in
//! practice.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::backend::{self, field};
use crate::startup::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE};
use crate::{frontend, ProtocolError};

/// Appends a tagged message: tag, length placeholder, body from `body`, then the real length.
#[inline]
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    untagged(buf, body);
}

/// Appends a length word and body (the length counts itself), as startup packets are framed.
#[inline]
fn untagged(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = i32::try_from(buf.len() - start).expect("message longer than i32::MAX bytes");
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `s` and a NUL; see the module docs for strings that contain a NUL.
#[inline]
fn put_cstr(buf: &mut BytesMut, s: &str) {
    put_cstr_bytes(buf, s.as_bytes());
}

#[inline]
fn put_cstr_bytes(buf: &mut BytesMut, s: &[u8]) {
    let end = memchr::memchr(0, s);
    debug_assert!(end.is_none(), "string written to the wire contains a NUL");
    buf.put_slice(&s[..end.unwrap_or(s.len())]);
    buf.put_u8(0);
}

/// An `i32` count or length prefix for `n` items/bytes.
#[inline]
fn wire_len(n: usize) -> i32 {
    i32::try_from(n).expect("length longer than i32::MAX")
}

// ---------------------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------------------

/// The fields the proxy sets in its own ErrorResponse / NoticeResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// `ERROR` or `FATAL` (or `WARNING`, `NOTICE`, ... for a notice); sent as both `S` and `V`.
    pub severity: &'a str,
    /// SQLSTATE, see [`crate::sqlstate`].
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
    /// Optional detail.
    pub detail: Option<&'a str>,
    /// Optional hint.
    pub hint: Option<&'a str>,
}

impl<'a> ErrorResponse<'a> {
    /// Severity `ERROR`: the statement failed, the session goes on.
    pub const fn error(code: &'a str, message: &'a str) -> Self {
        ErrorResponse {
            severity: "ERROR",
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// Severity `FATAL`: the session ends after this message.
    pub const fn fatal(code: &'a str, message: &'a str) -> Self {
        ErrorResponse {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        }
    }
}

fn error_fields(buf: &mut BytesMut, tag: u8, e: &ErrorResponse<'_>) {
    message(buf, tag, |buf| {
        let fields = [
            (field::SEVERITY, Some(e.severity)),
            (field::SEVERITY_NONLOCALIZED, Some(e.severity)),
            (field::CODE, Some(e.code)),
            (field::MESSAGE, Some(e.message)),
            (field::DETAIL, e.detail),
            (field::HINT, e.hint),
        ];
        for (code, value) in fields {
            if let Some(value) = value {
                buf.put_u8(code);
                put_cstr(buf, value);
            }
        }
        buf.put_u8(0);
    });
}

/// ErrorResponse with fields `S`, `V`, `C`, `M`, and `D`/`H` when present.
pub fn error_response(buf: &mut BytesMut, e: &ErrorResponse<'_>) {
    debug_assert_eq!(e.code.len(), 5, "SQLSTATE is 5 characters");
    error_fields(buf, backend::ERROR_RESPONSE, e);
}

/// NoticeResponse with the same fields as [`error_response`].
pub fn notice_response(buf: &mut BytesMut, e: &ErrorResponse<'_>) {
    debug_assert_eq!(e.code.len(), 5, "SQLSTATE is 5 characters");
    error_fields(buf, backend::NOTICE_RESPONSE, e);
}

/// FATAL ErrorResponse for a [`ProtocolError`]: its SQLSTATE and its Display text, formatted
/// straight into `buf` (no intermediate `String`).
pub fn protocol_error(buf: &mut BytesMut, err: &ProtocolError) {
    message(buf, backend::ERROR_RESPONSE, |buf| {
        for code in [field::SEVERITY, field::SEVERITY_NONLOCALIZED] {
            buf.put_u8(code);
            put_cstr(buf, "FATAL");
        }
        buf.put_u8(field::CODE);
        put_cstr(buf, err.sqlstate());
        buf.put_u8(field::MESSAGE);
        // Display text is built from static strings and numbers: no NUL, never fails.
        let _ = write!(buf, "{err}");
        buf.put_u8(0);
        buf.put_u8(0);
    });
}

fn authentication(buf: &mut BytesMut, code: i32, data: &[u8]) {
    message(buf, backend::AUTHENTICATION, |buf| {
        buf.put_i32(code);
        buf.put_slice(data);
    });
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    authentication(buf, backend::AUTH_OK, &[]);
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    authentication(buf, backend::AUTH_CLEARTEXT_PASSWORD, &[]);
}

/// AuthenticationMD5Password with its salt.
pub fn authentication_md5_password(buf: &mut BytesMut, salt: [u8; 4]) {
    authentication(buf, backend::AUTH_MD5_PASSWORD, &salt);
}

/// AuthenticationSASL offering `mechanisms` (e.g. `["SCRAM-SHA-256"]`).
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    debug_assert!(mechanisms.iter().all(|m| !m.is_empty()));
    message(buf, backend::AUTHENTICATION, |buf| {
        buf.put_i32(backend::AUTH_SASL);
        for m in mechanisms {
            put_cstr(buf, m);
        }
        buf.put_u8(0);
    });
}

/// AuthenticationSASLContinue with the server's challenge.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    authentication(buf, backend::AUTH_SASL_CONTINUE, data);
}

/// AuthenticationSASLFinal with the server's final message.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    authentication(buf, backend::AUTH_SASL_FINAL, data);
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, backend::PARAMETER_STATUS, |buf| {
        put_cstr(buf, name);
        put_cstr(buf, value);
    });
}

/// BackendKeyData (protocol 3.0: 4-byte secret).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, backend::BACKEND_KEY_DATA, |buf| {
        buf.put_i32(pid);
        buf.put_i32(secret);
    });
}

/// ReadyForQuery; `status` is [`backend::STATUS_IDLE`], [`backend::STATUS_IN_TRANSACTION`] or
/// [`backend::STATUS_FAILED`].
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    debug_assert!(
        matches!(status, b'I' | b'T' | b'E'),
        "bad transaction status"
    );
    message(buf, backend::READY_FOR_QUERY, |buf| buf.put_u8(status));
}

/// CommandComplete with a command tag such as `SELECT 1`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, backend::COMMAND_COMPLETE, |buf| put_cstr(buf, tag));
}

/// ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    message(buf, backend::PARSE_COMPLETE, |_| {});
}

/// BindComplete.
pub fn bind_complete(buf: &mut BytesMut) {
    message(buf, backend::BIND_COMPLETE, |_| {});
}

/// CloseComplete.
pub fn close_complete(buf: &mut BytesMut) {
    message(buf, backend::CLOSE_COMPLETE, |_| {});
}

/// NoData.
pub fn no_data(buf: &mut BytesMut) {
    message(buf, backend::NO_DATA, |_| {});
}

/// EmptyQueryResponse.
pub fn empty_query_response(buf: &mut BytesMut) {
    message(buf, backend::EMPTY_QUERY, |_| {});
}

/// NegotiateProtocolVersion: the newest 3.x minor we support and the `_pq_.` options we did not
/// recognise.
pub fn negotiate_protocol_version(
    buf: &mut BytesMut,
    newest_minor: u16,
    unrecognized_options: &[&str],
) {
    message(buf, backend::NEGOTIATE_PROTOCOL_VERSION, |buf| {
        buf.put_i32(PROTOCOL_3_0 | i32::from(newest_minor));
        buf.put_i32(wire_len(unrecognized_options.len()));
        for opt in unrecognized_options {
            put_cstr(buf, opt);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------------

/// StartupMessage for protocol 3.0 with `(key, value)` parameters (`user` is required by servers).
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    debug_assert!(params.iter().all(|(k, _)| !k.is_empty()));
    untagged(buf, |buf| {
        buf.put_i32(PROTOCOL_3_0);
        for (key, value) in params {
            put_cstr(buf, key);
            put_cstr(buf, value);
        }
        buf.put_u8(0);
    });
    // Not checked against MAX_STARTUP_LEN: the server will reject an oversized packet itself.
}

/// SSLRequest.
pub fn ssl_request(buf: &mut BytesMut) {
    untagged(buf, |buf| buf.put_i32(SSL_REQUEST_CODE));
}

/// GSSENCRequest.
pub fn gss_enc_request(buf: &mut BytesMut) {
    untagged(buf, |buf| buf.put_i32(GSSENC_REQUEST_CODE));
}

/// CancelRequest (protocol 3.0, 16 bytes).
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    untagged(buf, |buf| {
        buf.put_i32(CANCEL_REQUEST_CODE);
        buf.put_i32(pid);
        buf.put_i32(secret);
    });
}

/// A `'p'` message with `body` as is (a cleartext password must include its NUL; an MD5
/// response is `md5` + hex + NUL).
pub fn password_message(buf: &mut BytesMut, body: &[u8]) {
    message(buf, frontend::PASSWORD, |buf| buf.put_slice(body));
}

/// SASLInitialResponse: mechanism name and the client-first message.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, frontend::PASSWORD, |buf| {
        put_cstr(buf, mechanism);
        buf.put_i32(wire_len(data.len()));
        buf.put_slice(data);
    });
}

/// SASLResponse: the next client message of the exchange.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, frontend::PASSWORD, |buf| buf.put_slice(data));
}

/// Simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, frontend::QUERY, |buf| put_cstr(buf, sql));
}

/// Parse. `param_types_raw` is the raw `i16` count + `i32` OIDs as in
/// [`FrontendMessage::Parse`](crate::frontend::FrontendMessage::Parse); empty means no types.
pub fn parse(buf: &mut BytesMut, name: &str, query: &[u8], param_types_raw: &[u8]) {
    debug_assert!(
        param_types_raw.is_empty()
            || (param_types_raw.len() >= 2 && (param_types_raw.len() - 2) % 4 == 0),
        "param_types_raw is not an i16 count followed by i32 OIDs"
    );
    message(buf, frontend::PARSE, |buf| {
        put_cstr(buf, name);
        put_cstr_bytes(buf, query);
        if param_types_raw.is_empty() {
            buf.put_i16(0);
        } else {
            buf.put_slice(param_types_raw);
        }
    });
}

/// Bind rebuilt with a different statement name; `rest` is
/// [`FrontendMessage::Bind::rest`](crate::frontend::FrontendMessage::Bind) copied as is.
pub fn bind_with_statement(buf: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    buf.reserve(HEADER_RESERVE + portal.len() + statement.len() + 2 + rest.len());
    message(buf, frontend::BIND, |buf| {
        put_cstr(buf, portal);
        put_cstr(buf, statement);
        buf.put_slice(rest);
    });
}

/// Header bytes, for `reserve` before large bodies.
const HEADER_RESERVE: usize = crate::HEADER_LEN;

/// Describe; `kind` is [`frontend::KIND_STATEMENT`] or [`frontend::KIND_PORTAL`].
pub fn describe(buf: &mut BytesMut, kind: u8, name: &str) {
    debug_assert!(matches!(kind, b'S' | b'P'), "bad Describe kind");
    message(buf, frontend::DESCRIBE, |buf| {
        buf.put_u8(kind);
        put_cstr(buf, name);
    });
}

/// Execute with a row limit (0 = no limit).
pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    message(buf, frontend::EXECUTE, |buf| {
        put_cstr(buf, portal);
        buf.put_i32(max_rows);
    });
}

/// Close; `kind` is [`frontend::KIND_STATEMENT`] or [`frontend::KIND_PORTAL`].
pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
    debug_assert!(matches!(kind, b'S' | b'P'), "bad Close kind");
    message(buf, frontend::CLOSE, |buf| {
        buf.put_u8(kind);
        put_cstr(buf, name);
    });
}

/// Sync.
pub fn sync(buf: &mut BytesMut) {
    message(buf, frontend::SYNC, |_| {});
}

/// Flush.
pub fn flush(buf: &mut BytesMut) {
    message(buf, frontend::FLUSH, |_| {});
}

/// Terminate.
pub fn terminate(buf: &mut BytesMut) {
    message(buf, frontend::TERMINATE, |_| {});
}
