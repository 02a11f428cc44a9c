//! Unit tests: framing bounds, startup packets, strict body validation, DataRow walking.

use bytes::{BufMut, BytesMut};

use crate::backend::{self, data_row_ranges, Authentication, BackendMessage};
use crate::frontend::{self, FrontendMessage};
use crate::startup::{parse_startup, startup_frame_len, StartupPacket};
use crate::{
    encode, frame_len, parse_header, Frames, Header, ProtocolError, DEFAULT_MAX_MESSAGE_LEN,
    MAX_STARTUP_LEN, STARTUP_TAG,
};

const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

/// A tagged frame with the given body and a correct length word.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A startup packet with the given body after the length word and a correct length.
fn startup(body: &[u8]) -> Vec<u8> {
    let mut v = i32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(body);
    v
}

fn header_with_len(tag: u8, len: i32) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn malformed(r: Result<impl std::fmt::Debug, ProtocolError>) -> &'static str {
    match r {
        Err(ProtocolError::Malformed { what, .. }) => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

// ---- tagged framing -------------------------------------------------------------------------

#[test]
fn header_fewer_than_five_bytes_needs_more() {
    let q = frame(b'Q', b"SELECT 1\0");
    for k in 0..5 {
        assert_eq!(parse_header(&q[..k], MAX), Ok(None));
        assert_eq!(frame_len(&q[..k], MAX), Ok(None));
    }
    assert_eq!(
        parse_header(&q, MAX),
        Ok(Some(Header { tag: b'Q', len: 13 }))
    );
}

#[test]
fn header_lengths() {
    let h = Header { tag: b'Q', len: 13 };
    assert_eq!(h.total_len(), 14);
    assert_eq!(h.body_len(), 9);
    let h = Header { tag: b'S', len: 4 };
    assert_eq!((h.total_len(), h.body_len()), (5, 0));
    // Out-of-range values built by hand saturate instead of wrapping.
    let h = Header { tag: b'S', len: 0 };
    assert_eq!(h.body_len(), 0);
    let h = Header {
        tag: b'S',
        len: u32::MAX,
    };
    assert!(h.total_len() > usize::try_from(u32::MAX).unwrap_or(0) || h.total_len() == usize::MAX);
}

#[test]
fn length_below_four_is_malformed() {
    for len in [0, 1, 2, 3, -1, -4, i32::MIN] {
        let buf = header_with_len(b'Q', len);
        assert_eq!(
            parse_header(&buf, MAX),
            Err(ProtocolError::MalformedLength { tag: b'Q', len })
        );
        assert_eq!(
            frame_len(&buf, MAX),
            Err(ProtocolError::MalformedLength { tag: b'Q', len })
        );
    }
}

#[test]
fn length_four_is_an_empty_body() {
    let buf = header_with_len(b'S', 4);
    assert_eq!(frame_len(&buf, MAX), Ok(Some(5)));
    assert_eq!(frontend::parse(&buf), Ok(FrontendMessage::Sync));
}

#[test]
fn length_above_cap_is_too_large_before_the_body_arrives() {
    let buf = header_with_len(b'd', i32::MAX);
    assert_eq!(
        frame_len(&buf, MAX),
        Err(ProtocolError::MessageTooLarge {
            tag: b'd',
            len: 2_147_483_647,
            max: MAX
        })
    );
    // i32::MAX is fine if the caller allows it: then we just need more bytes.
    assert_eq!(frame_len(&buf, usize::MAX), Ok(None));
    assert_eq!(
        parse_header(&buf, usize::MAX).unwrap().unwrap().total_len(),
        1usize << 31
    );
}

#[test]
fn length_exactly_at_cap_is_accepted() {
    let cap = 100;
    let buf = header_with_len(b'd', 100);
    assert_eq!(
        parse_header(&buf, cap),
        Ok(Some(Header {
            tag: b'd',
            len: 100
        }))
    );
    assert_eq!(frame_len(&buf, cap), Ok(None));
    let full = frame(b'd', &[7; 96]);
    assert_eq!(frame_len(&full, cap), Ok(Some(101)));
    let over = frame(b'd', &[7; 97]);
    assert_eq!(
        frame_len(&over, cap),
        Err(ProtocolError::MessageTooLarge {
            tag: b'd',
            len: 101,
            max: cap
        })
    );
    // Default cap exactly.
    let at = header_with_len(b'd', 1 << 30);
    assert_eq!(frame_len(&at, MAX), Ok(None));
    let above = header_with_len(b'd', (1 << 30) + 1);
    assert!(matches!(
        frame_len(&above, MAX),
        Err(ProtocolError::MessageTooLarge { .. })
    ));
}

fn batch() -> (BytesMut, Vec<usize>) {
    let mut buf = BytesMut::new();
    let mut ends = Vec::new();
    encode::parse(&mut buf, "s1", b"SELECT $1::int", &[0, 1, 0, 0, 0, 23]);
    ends.push(buf.len());
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i32(2);
    rest.put_slice(b"42");
    rest.put_i16(0);
    encode::bind_with_statement(&mut buf, "", "s1", &rest);
    ends.push(buf.len());
    encode::describe(&mut buf, b'P', "");
    ends.push(buf.len());
    encode::execute(&mut buf, "", 0);
    ends.push(buf.len());
    encode::sync(&mut buf);
    ends.push(buf.len());
    encode::query(&mut buf, "SELECT 1");
    ends.push(buf.len());
    (buf, ends)
}

#[test]
fn need_more_at_every_split_point() {
    let (buf, ends) = batch();
    for k in 0..=buf.len() {
        let prefix = &buf[..k];
        let mut pos = 0;
        let mut complete = 0;
        while let Some(n) = frame_len(&prefix[pos..], MAX).unwrap() {
            pos += n;
            complete += 1;
            assert_eq!(pos, ends[complete - 1]);
        }
        let expected = ends.iter().filter(|&&e| e <= k).count();
        assert_eq!(complete, expected, "split at {k}");
        // Each complete frame parses; the tail is left for the next read.
        let mut frames = Frames::new(prefix, MAX);
        for f in frames.by_ref() {
            frontend::parse(f.unwrap()).unwrap();
        }
        assert_eq!(frames.remaining().len(), k - pos);
    }
}

#[test]
fn frames_stops_after_an_error() {
    let mut buf = frame(b'S', b"");
    buf.extend_from_slice(&header_with_len(b'Q', 2));
    buf.extend_from_slice(&frame(b'S', b""));
    let items: Vec<_> = Frames::new(&buf, MAX).collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert_eq!(
        items[1],
        Err(ProtocolError::MalformedLength { tag: b'Q', len: 2 })
    );
}

#[test]
fn parse_rejects_frames_that_were_not_delimited_by_frame_len() {
    let mut q = frame(b'Q', b"SELECT 1\0");
    assert_eq!(malformed(frontend::parse(&q[..4])), "truncated header");
    assert_eq!(
        malformed(frontend::parse(&q[..8])),
        "length word does not match frame size"
    );
    q.push(0);
    assert_eq!(
        malformed(backend::parse(&q)),
        "length word does not match frame size"
    );
    assert_eq!(malformed(frontend::parse(&[])), "truncated header");
}

// ---- startup --------------------------------------------------------------------------------

#[test]
fn startup_length_bounds() {
    for len in [-1, 0, 4, 7, i32::MIN] {
        assert_eq!(
            startup_frame_len(&len.to_be_bytes()),
            Err(ProtocolError::MalformedLength {
                tag: STARTUP_TAG,
                len
            })
        );
    }
    assert_eq!(
        startup_frame_len(&10_001i32.to_be_bytes()),
        Err(ProtocolError::MessageTooLarge {
            tag: STARTUP_TAG,
            len: 10_001,
            max: MAX_STARTUP_LEN
        })
    );
    assert!(matches!(
        startup_frame_len(&i32::MAX.to_be_bytes()),
        Err(ProtocolError::MessageTooLarge { .. })
    ));
    assert_eq!(startup_frame_len(&10_000i32.to_be_bytes()), Ok(None));
    assert_eq!(startup_frame_len(&8i32.to_be_bytes()), Ok(None));
    let ssl = startup(&80_877_103i32.to_be_bytes());
    for k in 0..ssl.len() {
        assert_eq!(startup_frame_len(&ssl[..k]), Ok(None));
    }
    assert_eq!(startup_frame_len(&ssl), Ok(Some(8)));
    assert_eq!(parse_startup(&ssl), Ok(StartupPacket::SslRequest));
}

#[test]
fn terminate_where_a_startup_packet_belongs() {
    // A client that leaves before starting up sends Terminate; read as a length it would be
    // "startup packet too large".
    let terminate = b"X\0\0\0\x04";
    for k in 1..terminate.len() {
        assert_eq!(startup_frame_len(&terminate[..k]), Ok(None), "{k}");
    }
    let mut buf = terminate.to_vec();
    buf.extend_from_slice(b"trailing");
    assert_eq!(startup_frame_len(&buf), Ok(Some(5)));
    assert_eq!(parse_startup(terminate), Ok(StartupPacket::Terminate));
    // Anything else starting with 'X' is still an oversized length.
    assert!(matches!(
        startup_frame_len(b"X\0\0\0\x05"),
        Err(ProtocolError::MessageTooLarge { .. })
    ));
    assert!(matches!(
        startup_frame_len(b"X\x01\0\0"),
        Err(ProtocolError::MessageTooLarge { .. })
    ));
}

#[test]
fn startup_largest_packet_is_accepted() {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    let value_len = MAX_STARTUP_LEN - 4 - body.len() - 2;
    body.extend(std::iter::repeat_n(b'a', value_len));
    body.extend_from_slice(b"\0\0");
    let pkt = startup(&body);
    assert_eq!(pkt.len(), MAX_STARTUP_LEN);
    assert_eq!(startup_frame_len(&pkt), Ok(Some(MAX_STARTUP_LEN)));
    let StartupPacket::Startup(p) = parse_startup(&pkt).unwrap() else {
        panic!()
    };
    assert_eq!(p.user().map(str::len), Some(value_len));
}

fn startup_v(major: u16, minor: u16, params: &[u8]) -> Vec<u8> {
    let mut body = major.to_be_bytes().to_vec();
    body.extend_from_slice(&minor.to_be_bytes());
    body.extend_from_slice(params);
    startup(&body)
}

#[test]
fn startup_versions() {
    let p = startup_v(3, 0, b"user\0alice\0database\0db\0\0");
    let StartupPacket::Startup(params) = parse_startup(&p).unwrap() else {
        panic!()
    };
    assert_eq!(params.minor, 0);
    assert_eq!(params.user(), Some("alice"));
    assert_eq!(params.database(), Some("db"));
    assert_eq!(params.get("options"), None);
    assert_eq!(
        params.iter().collect::<Vec<_>>(),
        [("user", "alice"), ("database", "db")]
    );

    let p = startup_v(3, 2, b"user\0bob\0_pq_.x\0y\0\0");
    let StartupPacket::Startup(params) = parse_startup(&p).unwrap() else {
        panic!()
    };
    assert_eq!(params.minor, 2);
    assert_eq!(params.get("_pq_.x"), Some("y"));

    for (major, minor) in [(2, 0), (4, 0), (0, 0), (1234, 9999), (u16::MAX, u16::MAX)] {
        assert_eq!(
            parse_startup(&startup_v(major, minor, b"user\0a\0\0")),
            Err(ProtocolError::UnsupportedProtocolVersion { major, minor })
        );
    }
    let err = parse_startup(&startup_v(2, 0, b"")).unwrap_err();
    assert_eq!(err.sqlstate(), "0A000");
    assert_eq!(
        err.to_string(),
        "unsupported frontend protocol 2.0: server supports 3.0 and later 3.x versions"
    );
}

#[test]
fn startup_params_layout_is_strict() {
    // No parameters at all is well-formed (the server then complains about the missing user).
    let pkt = startup_v(3, 0, b"\0");
    let StartupPacket::Startup(p) = parse_startup(&pkt).unwrap() else {
        panic!()
    };
    assert_eq!(p.iter().count(), 0);
    assert_eq!(
        malformed(parse_startup(&startup_v(3, 0, b""))),
        "missing final NUL in startup parameters"
    );
    assert_eq!(
        malformed(parse_startup(&startup_v(3, 0, b"user\0a\0"))),
        "missing final NUL in startup parameters"
    );
    assert_eq!(
        malformed(parse_startup(&startup_v(3, 0, b"user\0"))),
        "startup parameter without a value"
    );
    assert_eq!(
        malformed(parse_startup(&startup_v(3, 0, b"user\0a"))),
        "missing NUL terminator"
    );
    assert_eq!(
        malformed(parse_startup(&startup_v(3, 0, b"user\0a\0\0x"))),
        "bytes after the final NUL of startup parameters"
    );
    assert_eq!(
        parse_startup(&startup_v(3, 0, b"user\0\xff\0\0")),
        Err(ProtocolError::InvalidUtf8 { tag: STARTUP_TAG })
    );
    // The length word must match the packet.
    let mut p = startup_v(3, 0, b"user\0a\0\0");
    p.push(0);
    assert_eq!(
        malformed(parse_startup(&p)),
        "length word does not match packet size"
    );
    assert!(matches!(
        parse_startup(&[0, 0, 0, 8]),
        Err(ProtocolError::Malformed { .. })
    ));
    assert!(matches!(
        parse_startup(&[0, 0, 0]),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn special_startup_requests() {
    let mut body = 80_877_102i32.to_be_bytes().to_vec();
    body.extend_from_slice(&42i32.to_be_bytes());
    body.extend_from_slice(&(-7i32).to_be_bytes());
    assert_eq!(
        parse_startup(&startup(&body)),
        Ok(StartupPacket::Cancel {
            pid: 42,
            secret: -7
        })
    );
    // Wrong length: short, long (protocol 3.2 style 256-bit key), bare code.
    for n in [4, 9, 12, 32, 0] {
        let pkt = startup(&body.iter().copied().cycle().take(n + 4).collect::<Vec<_>>());
        assert_eq!(
            malformed(parse_startup(&pkt)),
            "CancelRequest must be 16 bytes",
            "{n}"
        );
    }
    let gss = startup(&80_877_104i32.to_be_bytes());
    assert_eq!(parse_startup(&gss), Ok(StartupPacket::GssEncRequest));
    let mut ssl_extra = 80_877_103i32.to_be_bytes().to_vec();
    ssl_extra.push(0);
    assert_eq!(
        malformed(parse_startup(&startup(&ssl_extra))),
        "unexpected trailing bytes"
    );
}

// ---- frontend bodies ------------------------------------------------------------------------

#[test]
fn frontend_strings_are_strict() {
    assert_eq!(
        frontend::parse(&frame(b'Q', b"SELECT 1\0")),
        Ok(FrontendMessage::Query { sql: b"SELECT 1" })
    );
    assert_eq!(
        malformed(frontend::parse(&frame(b'Q', b"SELECT 1"))),
        "missing NUL terminator"
    );
    assert_eq!(
        malformed(frontend::parse(&frame(b'Q', b"SELECT 1\0\0"))),
        "unexpected trailing bytes"
    );
    // Statement text is in the client's encoding (LATIN1 'é' here), not necessarily UTF-8.
    assert_eq!(
        frontend::parse(&frame(b'Q', b"SELECT '\xe9'\0")),
        Ok(FrontendMessage::Query {
            sql: b"SELECT '\xe9'"
        })
    );
    assert_eq!(
        frontend::parse(&frame(b'P', b"\0SELECT '\xe9'\0\0\0")),
        Ok(FrontendMessage::Parse {
            name: "",
            query: b"SELECT '\xe9'",
            param_types: b"\0\0",
        })
    );
    assert_eq!(
        frontend::parse(&frame(b'f', b"\xe9chec\0")),
        Ok(FrontendMessage::CopyFail {
            message: b"\xe9chec"
        })
    );
    assert_eq!(
        malformed(frontend::parse(&frame(b'f', b""))),
        "missing NUL terminator"
    );
}

#[test]
fn describe_and_close_kind() {
    assert_eq!(
        frontend::parse(&frame(b'D', b"Sstmt\0")),
        Ok(FrontendMessage::Describe {
            kind: b'S',
            name: "stmt"
        })
    );
    assert_eq!(
        frontend::parse(&frame(b'C', b"P\0")),
        Ok(FrontendMessage::Close {
            kind: b'P',
            name: ""
        })
    );
    for tag in [b'D', b'C'] {
        assert_eq!(
            malformed(frontend::parse(&frame(tag, b"Xstmt\0"))),
            "kind must be 'S' or 'P'"
        );
        assert_eq!(malformed(frontend::parse(&frame(tag, b""))), "missing kind");
        assert_eq!(
            malformed(frontend::parse(&frame(tag, b"S"))),
            "missing NUL terminator"
        );
    }
}

#[test]
fn parse_param_types() {
    let ok = frame(
        b'P',
        b"s\0SELECT $1, $2\0\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    );
    let FrontendMessage::Parse { param_types, .. } = frontend::parse(&ok).unwrap() else {
        panic!()
    };
    assert_eq!(
        frontend::param_oids(param_types).collect::<Vec<_>>(),
        [23, 25]
    );
    for (body, what) in [
        (&b"s\0q\0"[..], "bad parameter type count"),
        (b"s\0q\0\x00", "bad parameter type count"),
        // Unsigned, as the server reads it: 65535 types declared, none present.
        (b"s\0q\0\xff\xff", "parameter type count exceeds message"),
        (
            b"s\0q\0\x00\x01\x00\x00\x00",
            "parameter type count exceeds message",
        ),
        (b"s\0q\0\x00\x00\x00", "unexpected trailing bytes"),
        (b"s\0q", "missing NUL terminator"),
    ] {
        assert_eq!(malformed(frontend::parse(&frame(b'P', body))), what);
    }
}

/// PostgreSQL reads Parse's and Bind's 16-bit counts unsigned and accepts up to 65535
/// parameters; counts of 32768 and above must parse, with every bound still checked.
#[test]
fn counts_above_i16_max_are_unsigned() {
    for n in [32_767usize, 32_768, 40_000, 65_535] {
        let count = u16::try_from(n).unwrap();
        // Parse with n declared types.
        let mut types = BytesMut::new();
        types.put_u16(count);
        for _ in 0..n {
            types.put_u32(23);
        }
        let mut buf = BytesMut::new();
        encode::parse(&mut buf, "s", b"SELECT 1", &types);
        let FrontendMessage::Parse { param_types, .. } = frontend::parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(frontend::param_oids(param_types).len(), n);
        // One type short of the count.
        let short = frame(b'P', &[&b"s\0q\0"[..], &types[..types.len() - 4]].concat());
        assert_eq!(
            malformed(frontend::parse(&short)),
            "parameter type count exceeds message"
        );

        // Bind with n formats, n values (alternately NULL and "7") and n result formats.
        let mut rest = BytesMut::new();
        rest.put_u16(count);
        for _ in 0..n {
            rest.put_i16(0);
        }
        rest.put_u16(count);
        for i in 0..n {
            if i % 2 == 0 {
                rest.put_i32(-1);
            } else {
                rest.put_i32(1);
                rest.put_slice(b"7");
            }
        }
        rest.put_u16(count);
        for _ in 0..n {
            rest.put_i16(0);
        }
        let mut buf = BytesMut::new();
        encode::bind_with_statement(&mut buf, "", "s", &rest);
        assert_eq!(
            frontend::parse(&buf),
            Ok(FrontendMessage::Bind {
                portal: "",
                statement: "s",
                rest: &rest[..]
            })
        );
        // The bound checks still hold at this size: a missing result format, a missing value.
        let cut = frame(b'B', &bind_body(&rest[..rest.len() - 2]));
        assert_eq!(
            malformed(frontend::parse(&cut)),
            "result format count exceeds message"
        );
        let mut mismatched = rest.to_vec();
        let at = 2 + 2 * n;
        mismatched[at..at + 2].copy_from_slice(&(count - 1).to_be_bytes());
        assert_eq!(
            malformed(frontend::parse(&frame(b'B', &bind_body(&mismatched)))),
            "parameter format count does not match parameter count"
        );
    }
}

fn bind_body(rest: &[u8]) -> Vec<u8> {
    let mut v = b"portal\0stmt\0".to_vec();
    v.extend_from_slice(rest);
    v
}

#[test]
fn bind_layout() {
    // 1 format (binary), 2 params (one NULL), 1 result format.
    let rest = b"\x00\x01\x00\x01\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff\x00\x01\x00\x01";
    assert_eq!(
        frontend::parse(&frame(b'B', &bind_body(rest))),
        Ok(FrontendMessage::Bind {
            portal: "portal",
            statement: "stmt",
            rest
        })
    );
    for (rest, what) in [
        (&b""[..], "bad parameter format count"),
        (b"\xff\xff", "parameter format count exceeds message"),
        (
            b"\x00\x05\x00\x00",
            "parameter format count exceeds message",
        ),
        (b"\x00\x00", "bad parameter count"),
        (
            b"\x00\x02\x00\x00\x00\x00\x00\x01",
            "parameter format count does not match parameter count",
        ),
        (b"\x00\x00\x00\x01\x00\x00", "truncated parameter length"),
        (
            b"\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00",
            "negative parameter length",
        ),
        (
            b"\x00\x00\x00\x01\x7f\xff\xff\xff\x00\x00",
            "parameter value exceeds message",
        ),
        (b"\x00\x00\x00\x00", "bad result format count"),
        (
            b"\x00\x00\x00\x00\x00\x01",
            "result format count exceeds message",
        ),
        (b"\x00\x00\x00\x00\x00\x00\x00", "unexpected trailing bytes"),
    ] {
        assert_eq!(
            malformed(frontend::parse(&frame(b'B', &bind_body(rest)))),
            what,
            "{rest:?}"
        );
    }
}

#[test]
fn fixed_size_messages() {
    for (tag, msg) in [
        (b'S', FrontendMessage::Sync),
        (b'H', FrontendMessage::Flush),
        (b'X', FrontendMessage::Terminate),
        (b'c', FrontendMessage::CopyDone),
    ] {
        assert_eq!(frontend::parse(&frame(tag, b"")), Ok(msg));
        assert_eq!(msg.tag(), tag);
        assert_eq!(
            malformed(frontend::parse(&frame(tag, b"\0"))),
            "unexpected trailing bytes"
        );
    }
    assert_eq!(
        malformed(frontend::parse(&frame(b'E', b"\0\0\0\0"))),
        "truncated row limit"
    );
    assert_eq!(
        frontend::parse(&frame(b'E', b"\0\0\0\0\x05")),
        Ok(FrontendMessage::Execute {
            portal: "",
            max_rows: 5
        })
    );
    assert_eq!(
        frontend::parse(&frame(b'?', b"xyz")),
        Ok(FrontendMessage::Unknown {
            tag: b'?',
            body: b"xyz"
        })
    );
    assert_eq!(
        frontend::parse(&frame(b'd', b"\x01\x02")),
        Ok(FrontendMessage::CopyData(b"\x01\x02"))
    );
}

#[test]
fn password_bodies() {
    assert_eq!(
        frontend::password_cleartext(b"s3cret\0"),
        Ok(&b"s3cret"[..])
    );
    assert!(frontend::password_cleartext(b"s3cret").is_err());
    assert!(frontend::password_cleartext(b"a\0b").is_err());
    let r = frontend::sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").unwrap();
    assert_eq!((r.mechanism, r.data), ("SCRAM-SHA-256", None));
    let r = frontend::sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03n,,").unwrap();
    assert_eq!(r.data, Some(&b"n,,"[..]));
    assert!(frontend::sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x04n,,").is_err());
    assert!(frontend::sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err());
    assert!(frontend::sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x02n,,").is_err());
}

// ---- backend bodies -------------------------------------------------------------------------

#[test]
fn backend_fixed_layouts() {
    for s in [b'I', b'T', b'E'] {
        assert_eq!(
            backend::parse(&frame(b'Z', &[s])),
            Ok(BackendMessage::ReadyForQuery { status: s })
        );
    }
    assert_eq!(
        malformed(backend::parse(&frame(b'Z', b"X"))),
        "status must be 'I', 'T' or 'E'"
    );
    assert_eq!(
        malformed(backend::parse(&frame(b'Z', b""))),
        "missing status"
    );
    assert_eq!(
        malformed(backend::parse(&frame(b'Z', b"II"))),
        "unexpected trailing bytes"
    );
    assert_eq!(
        backend::parse(&frame(b'K', b"\0\0\0\x01\xff\xff\xff\xff")),
        Ok(BackendMessage::BackendKeyData { pid: 1, secret: -1 })
    );
    // Protocol 3.2 variable-length keys are rejected (we speak 3.0 upstream).
    assert!(backend::parse(&frame(b'K', &[1; 40])).is_err());
    assert!(backend::parse(&frame(b'K', &[1; 7])).is_err());
    assert_eq!(
        malformed(backend::parse(&frame(b'S', b"a\0"))),
        "missing NUL terminator"
    );
    assert_eq!(
        backend::parse(&frame(b'C', b"SELECT 1\0")),
        Ok(BackendMessage::CommandComplete { tag: "SELECT 1" })
    );
    assert_eq!(
        backend::parse(&frame(b'1', b"")),
        Ok(BackendMessage::Other {
            tag: b'1',
            body: b""
        })
    );
}

#[test]
fn authentication_variants() {
    let auth = |body: &[u8]| match backend::parse(Vec::leak(frame(b'R', body))) {
        Ok(BackendMessage::Authentication(a)) => Ok(a),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(auth(b"\0\0\0\0"), Ok(Authentication::Ok));
    assert!(auth(b"\0\0\0\0\0").is_err());
    assert!(auth(b"\0\0\0").is_err());
    assert_eq!(auth(b"\0\0\0\x03"), Ok(Authentication::CleartextPassword));
    assert_eq!(
        auth(b"\0\0\0\x05abcd"),
        Ok(Authentication::Md5Password { salt: *b"abcd" })
    );
    assert!(auth(b"\0\0\0\x05abc").is_err());
    assert!(auth(b"\0\0\0\x05abcde").is_err());
    let sasl = auth(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap();
    assert_eq!(
        sasl.mechanisms().unwrap().collect::<Vec<_>>(),
        ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );
    assert_eq!(
        malformed(auth(b"\0\0\0\x0a\0")),
        "empty SASL mechanism list"
    );
    assert!(auth(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err());
    assert!(auth(b"\0\0\0\x0aSCRAM-SHA-256\0\0x").is_err());
    assert_eq!(
        auth(b"\0\0\0\x0br=abc"),
        Ok(Authentication::SaslContinue(b"r=abc"))
    );
    assert_eq!(
        auth(b"\0\0\0\x0cv=xyz"),
        Ok(Authentication::SaslFinal(b"v=xyz"))
    );
    assert_eq!(
        auth(b"\0\0\0\x07"),
        Ok(Authentication::Other { code: 7, data: b"" })
    );
    // The mechanism iterator is safe on garbage.
    assert_eq!(
        backend::sasl_mechanisms(b"A\0\xff\0B\0").collect::<Vec<_>>(),
        ["A"]
    );
    assert_eq!(backend::sasl_mechanisms(b"A").count(), 0);
}

#[test]
fn error_fields() {
    let body = b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0";
    let fr = frame(b'E', body);
    let BackendMessage::ErrorResponse(f) = backend::parse(&fr).unwrap() else {
        panic!()
    };
    assert_eq!(f.severity(), Some("ERROR"));
    assert_eq!(f.severity_nonlocalized(), Some("ERROR"));
    assert_eq!(f.code(), Some("22012"));
    assert_eq!(f.message(), Some("division by zero"));
    assert_eq!(f.get(b'D'), None);
    assert_eq!(f.iter().count(), 4);
    assert_eq!(f.raw(), body);
    assert!(matches!(
        backend::parse(&frame(b'N', b"\0")),
        Ok(BackendMessage::NoticeResponse(f)) if f.iter().next().is_none()
    ));
    for body in [&b""[..], b"SERROR\0", b"SERROR", b"SERROR\0\0\0", b"S"] {
        assert!(backend::parse(&frame(b'E', body)).is_err(), "{body:?}");
    }
    // A message in the client's LATIN1 is valid; only its UTF-8 fields are given as text.
    let latin1 = frame(b'E', b"SERROR\0C22P02\0Mcaf\xe9\0\0");
    let Ok(BackendMessage::ErrorResponse(f)) = backend::parse(&latin1) else {
        panic!("LATIN1 error message refused");
    };
    assert_eq!((f.code(), f.message()), (Some("22P02"), None));
    assert_eq!(f.iter().count(), 2);
}

#[test]
fn data_row_walk() {
    let body = b"\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00";
    let f = frame(b'D', body);
    let rows = data_row_ranges(&f).unwrap();
    assert_eq!(rows.columns(), 3);
    let cols: Vec<_> = rows.map(Result::unwrap).collect();
    assert_eq!(cols, [Some(11..12), None, Some(20..20)]);
    assert_eq!(&f[11..12], b"1");

    let empty = frame(b'D', b"\x00\x00");
    assert_eq!(data_row_ranges(&empty).unwrap().count(), 0);

    let errs = |body: &[u8]| -> Vec<&'static str> {
        let f = frame(b'D', body);
        data_row_ranges(&f)
            .unwrap()
            .filter_map(|r| match r {
                Err(ProtocolError::Malformed { what, .. }) => Some(what),
                _ => None,
            })
            .collect()
    };
    assert_eq!(errs(b"\x00\x01\x00\x00\x00"), ["truncated column length"]);
    assert_eq!(
        errs(b"\x00\x01\x00\x00\x00\x05abc"),
        ["column value exceeds message"]
    );
    assert_eq!(
        errs(b"\x00\x01\x7f\xff\xff\xffabc"),
        ["column value exceeds message"]
    );
    assert_eq!(
        errs(b"\x00\x01\xff\xff\xff\xfe"),
        ["negative column length"]
    );
    assert_eq!(
        errs(b"\x00\x01\xff\xff\xff\xffzz"),
        ["trailing bytes after last column"]
    );
    assert_eq!(
        errs(b"\x00\x02\x00\x00\x00\x05abc"),
        ["column value exceeds message"],
        "iteration ends at the first error"
    );
    // The count is unsigned: 0xffff declares 65535 columns, and the missing ones are reported.
    let wide = frame(b'D', b"\xff\xff");
    assert_eq!(data_row_ranges(&wide).unwrap().columns(), u16::MAX);
    assert_eq!(errs(b"\xff\xff"), ["truncated column length"]);
    assert!(data_row_ranges(&frame(b'D', b"\x00")).is_err());
    assert_eq!(
        data_row_ranges(&frame(b'T', b"\x00\x00")).unwrap_err(),
        ProtocolError::UnexpectedMessage {
            tag: b'T',
            phase: "DataRow walk"
        }
    );
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn error_text_and_sqlstate() {
    let cases = [
        (
            ProtocolError::MalformedLength { tag: b'Q', len: -1 },
            "invalid length -1 in message 'Q'",
        ),
        (
            ProtocolError::MessageTooLarge {
                tag: 0,
                len: 10_001,
                max: 10_000,
            },
            "startup packet too large: 10001 bytes exceeds the limit of 10000",
        ),
        (
            ProtocolError::Malformed {
                tag: 0x01,
                what: "missing NUL terminator",
            },
            "malformed message 0x01: missing NUL terminator",
        ),
        (
            ProtocolError::InvalidUtf8 { tag: b'P' },
            "invalid UTF-8 in message 'P'",
        ),
        (
            ProtocolError::UnexpectedMessage {
                tag: b'B',
                phase: "authentication",
            },
            "unexpected message 'B' during authentication",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
        assert_eq!(err.sqlstate(), "08P01");
        assert!(err.tag().is_some());
    }
}

#[test]
fn protocol_error_response_is_well_formed() {
    let mut buf = BytesMut::new();
    let err = ProtocolError::MalformedLength { tag: b'Q', len: 2 };
    encode::protocol_error(&mut buf, &err);
    assert_eq!(frame_len(&buf, MAX), Ok(Some(buf.len())));
    let BackendMessage::ErrorResponse(f) = backend::parse(&buf).unwrap() else {
        panic!()
    };
    assert_eq!(f.severity(), Some("FATAL"));
    assert_eq!(f.code(), Some("08P01"));
    assert_eq!(f.message(), Some("invalid length 2 in message 'Q'"));
}
