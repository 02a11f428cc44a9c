//! Pins the public API shapes the proxy is written against: if a signature changes, this file
//! stops compiling before the proxy does.

use std::ops::Range;

use bytes::BytesMut;
use sluice_pgwire::backend::{self, Authentication, BackendMessage, DataRowRanges, ErrorFields};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::startup::{self, StartupPacket, StartupParams};
use sluice_pgwire::{sqlstate, Header, ProtocolError};

#[test]
fn signatures() {
    let _: usize = sluice_pgwire::HEADER_LEN;
    let _: usize = sluice_pgwire::MAX_STARTUP_LEN;
    let _: usize = sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN;
    let _: fn(&[u8], usize) -> Result<Option<Header>, ProtocolError> = sluice_pgwire::parse_header;
    let _: fn(&[u8], usize) -> Result<Option<usize>, ProtocolError> = sluice_pgwire::frame_len;
    let h = Header { tag: b'Q', len: 4 };
    let _: (usize, usize) = (h.total_len(), h.body_len());

    let _: fn(&[u8]) -> Result<Option<usize>, ProtocolError> = startup::startup_frame_len;
    let _: for<'a> fn(&'a [u8]) -> Result<StartupPacket<'a>, ProtocolError> =
        startup::parse_startup;
    let _: for<'a> fn(&'a [u8]) -> Result<FrontendMessage<'a>, ProtocolError> = frontend::parse;
    let _: for<'a> fn(&'a [u8]) -> Result<BackendMessage<'a>, ProtocolError> = backend::parse;
    let _: for<'a> fn(&'a [u8]) -> Result<DataRowRanges<'a>, ProtocolError> =
        backend::data_row_ranges;

    let _: fn(&mut BytesMut, &ErrorResponse<'_>) = encode::error_response;
    let _: fn(&mut BytesMut, &ErrorResponse<'_>) = encode::notice_response;
    let _: fn(&mut BytesMut) = encode::authentication_ok;
    let _: fn(&mut BytesMut) = encode::authentication_cleartext_password;
    let _: fn(&mut BytesMut, &str, &str) = encode::parameter_status;
    let _: fn(&mut BytesMut, i32, i32) = encode::backend_key_data;
    let _: fn(&mut BytesMut, u8) = encode::ready_for_query;
    let _: fn(&mut BytesMut) = encode::parse_complete;
    let _: fn(&mut BytesMut) = encode::bind_complete;
    let _: fn(&mut BytesMut) = encode::close_complete;
    let _: fn(&mut BytesMut, u16, &[&str]) = encode::negotiate_protocol_version;
    let _: fn(&mut BytesMut, &[(&str, &str)]) = encode::startup_message;
    let _: fn(&mut BytesMut) = encode::ssl_request;
    let _: fn(&mut BytesMut, i32, i32) = encode::cancel_request;
    let _: fn(&mut BytesMut, &[u8]) = encode::password_message;
    let _: fn(&mut BytesMut, &str, &[u8]) = encode::sasl_initial_response;
    let _: fn(&mut BytesMut, &[u8]) = encode::sasl_response;
    let _: fn(&mut BytesMut, &str) = encode::query;
    let _: fn(&mut BytesMut, &str, &[u8], &[u8]) = encode::parse;
    let _: fn(&mut BytesMut, &str, &str, &[u8]) = encode::bind_with_statement;
    let _: fn(&mut BytesMut, u8, &str) = encode::describe;
    let _: fn(&mut BytesMut, u8, &str) = encode::close;
    let _: fn(&mut BytesMut) = encode::sync;
    let _: fn(&mut BytesMut) = encode::flush;
    let _: fn(&mut BytesMut) = encode::terminate;

    let _ = ErrorResponse {
        severity: "FATAL",
        code: sqlstate::PROTOCOL_VIOLATION,
        message: "",
        detail: None,
        hint: None,
    };
}

#[test]
fn shapes() {
    // Error variants and their fields.
    let errors = [
        ProtocolError::MalformedLength { tag: 0, len: 0i32 },
        ProtocolError::MessageTooLarge {
            tag: 0,
            len: 0usize,
            max: 0usize,
        },
        ProtocolError::Malformed { tag: 0, what: "" },
        ProtocolError::InvalidUtf8 { tag: 0 },
        ProtocolError::UnsupportedProtocolVersion {
            major: 0u16,
            minor: 0u16,
        },
        ProtocolError::UnexpectedMessage { tag: 0, phase: "" },
    ];
    for e in &errors {
        let _: &'static str = e.sqlstate();
    }

    fn startup_variants(p: StartupPacket<'_>) {
        match p {
            StartupPacket::Startup(params) => {
                let _: u16 = params.minor;
                let _: Option<&str> = params.user();
                let _: Option<&str> = params.database();
                let _: Option<&str> = params.get("x");
                for (_k, _v) in params.iter() {}
                let _: StartupParams<'_> = params;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest | StartupPacket::Terminate => {
            }
            StartupPacket::Cancel { pid, secret } => {
                let _: (i32, i32) = (pid, secret);
            }
        }
    }
    startup_variants(StartupPacket::SslRequest);

    fn frontend_variants(m: FrontendMessage<'_>) {
        match m {
            FrontendMessage::Query { sql } => {
                let _: &[u8] = sql;
            }
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => {
                let _: (&str, &[u8], &[u8]) = (name, query, param_types);
            }
            FrontendMessage::Bind {
                portal,
                statement,
                rest,
            } => {
                let _: (&str, &str, &[u8]) = (portal, statement, rest);
            }
            FrontendMessage::Describe { kind, name } | FrontendMessage::Close { kind, name } => {
                let _: (u8, &str) = (kind, name);
            }
            FrontendMessage::Execute { portal, max_rows } => {
                let _: (&str, i32) = (portal, max_rows);
            }
            FrontendMessage::Sync
            | FrontendMessage::Flush
            | FrontendMessage::Terminate
            | FrontendMessage::CopyDone => {}
            FrontendMessage::CopyData(b)
            | FrontendMessage::Password(b)
            | FrontendMessage::FunctionCall(b) => {
                let _: &[u8] = b;
            }
            FrontendMessage::CopyFail { message } => {
                let _: &[u8] = message;
            }
            FrontendMessage::Unknown { tag, body } => {
                let _: (u8, &[u8]) = (tag, body);
            }
        }
    }
    frontend_variants(FrontendMessage::Sync);

    fn backend_variants(m: BackendMessage<'_>) {
        match m {
            BackendMessage::Authentication(a) => match a {
                Authentication::Ok | Authentication::CleartextPassword => {}
                Authentication::Md5Password { salt } => {
                    let _: [u8; 4] = salt;
                }
                Authentication::Sasl { mechanisms } => {
                    let _: &[u8] = mechanisms;
                }
                Authentication::SaslContinue(d) | Authentication::SaslFinal(d) => {
                    let _: &[u8] = d;
                }
                Authentication::Other { code, data } => {
                    let _: (i32, &[u8]) = (code, data);
                }
            },
            BackendMessage::BackendKeyData { pid, secret } => {
                let _: (i32, i32) = (pid, secret);
            }
            BackendMessage::ParameterStatus { name, value } => {
                let _: (&str, &str) = (name, value);
            }
            BackendMessage::ReadyForQuery { status } => {
                let _: u8 = status;
            }
            BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => {
                let _: ErrorFields<'_> = f;
                let _: Option<&str> = f.get(b'M');
                let _: (Option<&str>, Option<&str>, Option<&str>) =
                    (f.severity(), f.code(), f.message());
                for (_code, _value) in f.iter() {
                    let _: u8 = _code;
                }
            }
            BackendMessage::CommandComplete { tag } => {
                let _: &str = tag;
            }
            BackendMessage::Other { tag, body } => {
                let _: (u8, &[u8]) = (tag, body);
            }
        }
    }
    backend_variants(BackendMessage::ReadyForQuery { status: b'I' });

    let frame = [b'D', 0, 0, 0, 6, 0, 0];
    let rows = backend::data_row_ranges(&frame).unwrap();
    let _: Vec<Result<Option<Range<usize>>, ProtocolError>> = rows.collect();
}
