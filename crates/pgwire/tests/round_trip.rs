//! Encode/decode round trips: every encoder's output is one frame that decodes to the same fields.

use bytes::{BufMut, BytesMut};
use sluice_pgwire::backend::{self, Authentication, BackendMessage};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::startup::{self, StartupPacket};
use sluice_pgwire::{frame_len, sqlstate, DEFAULT_MAX_MESSAGE_LEN};

/// Encodes with `f`, checks the result is exactly one frame, returns it.
fn one(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_slice(b"prefix"); // encoders append; they must not touch what is already there
    f(&mut buf);
    assert_eq!(&buf[..6], b"prefix");
    let frame = buf.split_off(6);
    assert_eq!(
        frame_len(&frame, DEFAULT_MAX_MESSAGE_LEN),
        Ok(Some(frame.len()))
    );
    frame
}

fn one_startup(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    f(&mut buf);
    assert_eq!(startup::startup_frame_len(&buf), Ok(Some(buf.len())));
    buf
}

fn be(f: impl FnOnce(&mut BytesMut)) -> BackendMessage<'static> {
    let frame = one(f);
    backend::parse(Vec::leak(frame.to_vec())).unwrap()
}

fn fe(f: impl FnOnce(&mut BytesMut)) -> FrontendMessage<'static> {
    let frame = one(f);
    frontend::parse(Vec::leak(frame.to_vec())).unwrap()
}

#[test]
fn error_and_notice_responses() {
    let full = ErrorResponse {
        severity: "FATAL",
        code: sqlstate::INVALID_PASSWORD,
        message: "password authentication failed for user \"alice\"",
        detail: Some("the token expired"),
        hint: Some("request a new token"),
    };
    let BackendMessage::ErrorResponse(f) = be(|b| encode::error_response(b, &full)) else {
        panic!()
    };
    assert_eq!(
        f.iter().collect::<Vec<_>>(),
        [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', full.message),
            (b'D', "the token expired"),
            (b'H', "request a new token"),
        ]
    );
    let minimal = ErrorResponse::error(sqlstate::INSUFFICIENT_PRIVILEGE, "denied");
    let BackendMessage::NoticeResponse(f) = be(|b| encode::notice_response(b, &minimal)) else {
        panic!()
    };
    assert_eq!(f.severity(), Some("ERROR"));
    assert_eq!(f.code(), Some("42501"));
    assert_eq!(f.message(), Some("denied"));
    assert_eq!(f.get(b'D'), None);
    assert_eq!(f.get(b'H'), None);
    assert_eq!(ErrorResponse::fatal("08P01", "x").severity, "FATAL");
}

#[test]
fn authentication_messages() {
    let auth = |f: fn(&mut BytesMut)| match be(f) {
        BackendMessage::Authentication(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(auth(encode::authentication_ok), Authentication::Ok);
    assert_eq!(
        auth(encode::authentication_cleartext_password),
        Authentication::CleartextPassword
    );
    assert_eq!(
        auth(|b| encode::authentication_md5_password(b, *b"salt")),
        Authentication::Md5Password { salt: *b"salt" }
    );
    let sasl = auth(|b| encode::authentication_sasl(b, &["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]));
    assert_eq!(
        sasl.mechanisms().unwrap().collect::<Vec<_>>(),
        ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    );
    assert_eq!(
        auth(|b| encode::authentication_sasl_continue(b, b"r=nonce,s=salt,i=4096")),
        Authentication::SaslContinue(b"r=nonce,s=salt,i=4096")
    );
    assert_eq!(
        auth(|b| encode::authentication_sasl_final(b, b"v=sig")),
        Authentication::SaslFinal(b"v=sig")
    );
}

#[test]
fn session_messages() {
    assert_eq!(
        be(|b| encode::parameter_status(b, "server_version", "15.8")),
        BackendMessage::ParameterStatus {
            name: "server_version",
            value: "15.8"
        }
    );
    assert_eq!(
        be(|b| encode::backend_key_data(b, 1234, i32::MIN)),
        BackendMessage::BackendKeyData {
            pid: 1234,
            secret: i32::MIN
        }
    );
    for status in [b'I', b'T', b'E'] {
        assert_eq!(
            be(|b| encode::ready_for_query(b, status)),
            BackendMessage::ReadyForQuery { status }
        );
    }
    assert_eq!(
        be(|b| encode::command_complete(b, "SELECT 1000")),
        BackendMessage::CommandComplete { tag: "SELECT 1000" }
    );
    for (f, tag) in [
        (encode::parse_complete as fn(&mut BytesMut), b'1'),
        (encode::bind_complete, b'2'),
        (encode::close_complete, b'3'),
        (encode::no_data, b'n'),
        (encode::empty_query_response, b'I'),
    ] {
        assert_eq!(be(f), BackendMessage::Other { tag, body: b"" });
    }
}

#[test]
fn negotiate_protocol_version() {
    let BackendMessage::Other { tag, body } =
        be(|b| encode::negotiate_protocol_version(b, 0, &["_pq_.foo", "_pq_.bar"]))
    else {
        panic!()
    };
    assert_eq!(tag, backend::NEGOTIATE_PROTOCOL_VERSION);
    let mut expected = 196_608i32.to_be_bytes().to_vec();
    expected.extend_from_slice(&2i32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.foo\0_pq_.bar\0");
    assert_eq!(body, expected);
    let BackendMessage::Other { body, .. } = be(|b| encode::negotiate_protocol_version(b, 2, &[]))
    else {
        panic!()
    };
    assert_eq!(body, [0, 3, 0, 2, 0, 0, 0, 0]);
}

#[test]
fn startup_packets() {
    let buf = one_startup(|b| {
        encode::startup_message(
            b,
            &[
                ("user", "alice"),
                ("database", "app"),
                ("application_name", ""),
            ],
        )
    });
    let StartupPacket::Startup(p) = startup::parse_startup(&buf).unwrap() else {
        panic!()
    };
    assert_eq!(p.minor, 0);
    assert_eq!(
        p.iter().collect::<Vec<_>>(),
        [
            ("user", "alice"),
            ("database", "app"),
            ("application_name", "")
        ]
    );
    let buf = one_startup(|b| encode::startup_message(b, &[]));
    assert!(matches!(
        startup::parse_startup(&buf),
        Ok(StartupPacket::Startup(p)) if p.iter().count() == 0
    ));
    let buf = one_startup(encode::ssl_request);
    assert_eq!(startup::parse_startup(&buf), Ok(StartupPacket::SslRequest));
    let buf = one_startup(encode::gss_enc_request);
    assert_eq!(
        startup::parse_startup(&buf),
        Ok(StartupPacket::GssEncRequest)
    );
    let buf = one_startup(|b| encode::cancel_request(b, 77, -99));
    assert_eq!(buf.len(), 16);
    assert_eq!(
        startup::parse_startup(&buf),
        Ok(StartupPacket::Cancel {
            pid: 77,
            secret: -99
        })
    );
}

#[test]
fn password_and_sasl() {
    let FrontendMessage::Password(body) = fe(|b| encode::password_message(b, b"hunter2\0")) else {
        panic!()
    };
    assert_eq!(frontend::password_cleartext(body), Ok(&b"hunter2"[..]));
    let FrontendMessage::Password(body) =
        fe(|b| encode::sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc"))
    else {
        panic!()
    };
    let r = frontend::sasl_initial_response(body).unwrap();
    assert_eq!(r.mechanism, "SCRAM-SHA-256");
    assert_eq!(r.data, Some(&b"n,,n=,r=abc"[..]));
    assert_eq!(
        fe(|b| encode::sasl_response(b, b"c=biws,r=abc,p=xyz")),
        FrontendMessage::Password(b"c=biws,r=abc,p=xyz")
    );
}

#[test]
fn simple_and_extended_query() {
    assert_eq!(
        fe(|b| encode::query(b, "SELECT 'é'")),
        FrontendMessage::Query {
            sql: "SELECT 'é'".as_bytes()
        }
    );
    let types = [0u8, 2, 0, 0, 0, 23, 0, 0, 0, 0];
    let FrontendMessage::Parse {
        name,
        query,
        param_types,
    } = fe(|b| encode::parse(b, "s1", b"SELECT $1, $2", &types))
    else {
        panic!()
    };
    assert_eq!(
        (name, query, param_types),
        ("s1", &b"SELECT $1, $2"[..], &types[..])
    );
    assert_eq!(
        frontend::param_oids(param_types).collect::<Vec<_>>(),
        [23, 0]
    );
    assert_eq!(
        fe(|b| encode::parse(b, "", b"SELECT 1", &[])),
        FrontendMessage::Parse {
            name: "",
            query: b"SELECT 1",
            param_types: &[0, 0]
        }
    );
    for kind in [b'S', b'P'] {
        assert_eq!(
            fe(|b| encode::describe(b, kind, "x")),
            FrontendMessage::Describe { kind, name: "x" }
        );
        assert_eq!(
            fe(|b| encode::close(b, kind, "")),
            FrontendMessage::Close { kind, name: "" }
        );
    }
    assert_eq!(
        fe(|b| encode::execute(b, "p", 100)),
        FrontendMessage::Execute {
            portal: "p",
            max_rows: 100
        }
    );
    assert_eq!(fe(encode::sync), FrontendMessage::Sync);
    assert_eq!(fe(encode::flush), FrontendMessage::Flush);
    assert_eq!(fe(encode::terminate), FrontendMessage::Terminate);
}

#[test]
fn bind_renamed_keeps_the_rest_byte_for_byte() {
    let mut rest = BytesMut::new();
    rest.put_i16(2);
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i16(2);
    rest.put_i32(3);
    rest.put_slice(b"abc");
    rest.put_i32(-1);
    rest.put_i16(1);
    rest.put_i16(1);
    let original = fe(|b| encode::bind_with_statement(b, "portal", "client_stmt", &rest));
    let FrontendMessage::Bind {
        portal,
        statement,
        rest: parsed_rest,
    } = original
    else {
        panic!()
    };
    assert_eq!(
        (portal, statement, parsed_rest),
        ("portal", "client_stmt", &rest[..])
    );
    let renamed = fe(|b| encode::bind_with_statement(b, portal, "sluice_s_1", parsed_rest));
    assert_eq!(
        renamed,
        FrontendMessage::Bind {
            portal: "portal",
            statement: "sluice_s_1",
            rest: &rest[..]
        }
    );
}

/// Release builds cut strings at an interior NUL instead of corrupting the field layout
/// (debug builds assert, so this only runs without debug assertions).
#[cfg(not(debug_assertions))]
#[test]
fn interior_nul_is_cut_not_injected() {
    let e = ErrorResponse::error("42501", "denied\0Hinjected");
    let BackendMessage::ErrorResponse(f) = be(|b| encode::error_response(b, &e)) else {
        panic!()
    };
    assert_eq!(f.message(), Some("denied"));
    assert_eq!(f.get(b'H'), None);
}

/// Debug builds catch a NUL inside a string before it reaches the wire.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "contains a NUL")]
fn interior_nul_is_a_bug_in_debug_builds() {
    let mut buf = BytesMut::new();
    encode::query(&mut buf, "SELECT 1\0; DROP TABLE t");
}
