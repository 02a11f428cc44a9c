//! Deterministic robustness test: pseudo-random and mutated-valid buffers through every decoder.
//!
//! No decoder may panic, and whatever an `Ok` result borrows must lie inside the input. A cheap
//! stand-in for the cargo-fuzz targets in `/fuzz` that runs on every `cargo test`.

use bytes::{BufMut, BytesMut};
use sluice_pgwire::backend::{self, Authentication, BackendMessage, ErrorFields};
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::startup::{self, StartupPacket};
use sluice_pgwire::{encode, frame_len, parse_header, Frames, HEADER_LEN, MAX_STARTUP_LEN};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

fn check_error_fields(buf: &[u8], f: &ErrorFields<'_>) {
    assert!(within(buf, f.raw()));
    for (code, value) in f.iter() {
        assert_ne!(code, 0);
        assert!(within(buf, value.as_bytes()));
    }
    let _ = (f.severity(), f.code(), f.message());
}

fn exercise(buf: &[u8]) {
    // Framing.
    for cap in [0, 16, 1 << 30, usize::MAX] {
        if let Ok(Some(h)) = parse_header(buf, cap) {
            assert!(h.len >= 4 && usize::try_from(h.len).unwrap() <= cap);
        }
        if let Ok(Some(n)) = frame_len(buf, cap) {
            assert!((HEADER_LEN..=buf.len()).contains(&n));
        }
    }
    for f in Frames::new(buf, 1 << 30).flatten() {
        assert!(within(buf, f));
    }

    // Decoders accept only exactly-framed input: the single framing path agrees with them.
    let exact = frame_len(buf, usize::MAX) == Ok(Some(buf.len()));

    match frontend::parse(buf) {
        Ok(msg) => {
            assert!(exact);
            assert_eq!(msg.tag(), buf[0]);
            let parts: Vec<&[u8]> = match msg {
                FrontendMessage::Query { sql } => vec![sql],
                FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                } => {
                    assert_eq!(
                        frontend::param_oids(param_types).len() * 4 + 2,
                        param_types.len()
                    );
                    vec![name.as_bytes(), query, param_types]
                }
                FrontendMessage::Bind {
                    portal,
                    statement,
                    rest,
                } => vec![portal.as_bytes(), statement.as_bytes(), rest],
                FrontendMessage::Describe { name, kind }
                | FrontendMessage::Close { name, kind } => {
                    assert!(kind == b'S' || kind == b'P');
                    vec![name.as_bytes()]
                }
                FrontendMessage::Execute { portal, .. } => vec![portal.as_bytes()],
                FrontendMessage::CopyFail { message } => vec![message],
                FrontendMessage::CopyData(b)
                | FrontendMessage::Password(b)
                | FrontendMessage::FunctionCall(b)
                | FrontendMessage::Unknown { body: b, .. } => vec![b],
                FrontendMessage::Sync
                | FrontendMessage::Flush
                | FrontendMessage::Terminate
                | FrontendMessage::CopyDone => vec![],
            };
            assert!(parts.iter().all(|p| within(buf, p)));
        }
        Err(e) => {
            let _ = (e.to_string(), e.sqlstate());
        }
    }

    match backend::parse(buf) {
        Ok(msg) => {
            assert!(exact);
            assert_eq!(msg.tag(), buf[0]);
            match msg {
                BackendMessage::Authentication(a) => match a {
                    Authentication::Sasl { mechanisms } => {
                        assert!(within(buf, mechanisms));
                        assert!(a.mechanisms().unwrap().count() >= 1);
                        for m in a.mechanisms().unwrap() {
                            assert!(within(buf, m.as_bytes()));
                        }
                    }
                    Authentication::SaslContinue(d)
                    | Authentication::SaslFinal(d)
                    | Authentication::Other { data: d, .. } => assert!(within(buf, d)),
                    Authentication::Ok
                    | Authentication::CleartextPassword
                    | Authentication::Md5Password { .. } => {}
                },
                BackendMessage::ParameterStatus { name, value } => {
                    assert!(within(buf, name.as_bytes()) && within(buf, value.as_bytes()));
                }
                BackendMessage::ReadyForQuery { status } => {
                    assert!(matches!(status, b'I' | b'T' | b'E'));
                }
                BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => {
                    check_error_fields(buf, &f);
                }
                BackendMessage::CommandComplete { tag } => assert!(within(buf, tag.as_bytes())),
                BackendMessage::Other { body, .. } => assert!(within(buf, body)),
                BackendMessage::BackendKeyData { .. } => {}
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.sqlstate());
        }
    }

    if let Ok(cols) = backend::data_row_ranges(buf) {
        assert!(exact);
        let n = usize::from(cols.columns());
        let mut items = 0;
        let mut last_end = HEADER_LEN + 2;
        for c in cols {
            items += 1;
            assert!(items <= n + 1);
            if let Ok(Some(r)) = c {
                assert!(r.start >= last_end && r.start <= r.end && r.end <= buf.len());
                last_end = r.end;
            }
        }
    }

    // Startup phase.
    if let Ok(Some(n)) = startup::startup_frame_len(buf) {
        assert!((n == 5 || (8..=MAX_STARTUP_LEN).contains(&n)) && n <= buf.len());
    }
    match startup::parse_startup(buf) {
        Ok(StartupPacket::Startup(p)) => {
            assert!(within(buf, p.raw()));
            for (k, v) in p.iter() {
                assert!(!k.is_empty());
                assert!(within(buf, k.as_bytes()) && within(buf, v.as_bytes()));
            }
            let _ = (p.user(), p.database());
        }
        Ok(StartupPacket::Cancel { .. }) => assert_eq!(buf.len(), 16),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => assert_eq!(buf.len(), 8),
        Ok(StartupPacket::Terminate) => assert_eq!(buf, b"X\0\0\0\x04"),
        Err(e) => {
            let _ = (e.to_string(), e.sqlstate());
        }
    }

    // Body-level helpers, which callers apply to bodies of already-parsed messages.
    if let Ok(r) = frontend::sasl_initial_response(buf) {
        assert!(within(buf, r.mechanism.as_bytes()));
        assert!(r.data.is_none_or(|d| within(buf, d)));
    }
    if let Ok(pw) = frontend::password_cleartext(buf) {
        assert!(within(buf, pw));
    }
    for m in backend::sasl_mechanisms(buf) {
        assert!(within(buf, m.as_bytes()));
    }
    if let Ok(f) = ErrorFields::from_body(buf) {
        check_error_fields(buf, &f);
    }
    for _ in frontend::param_oids(buf) {}
}

/// Valid messages of every kind the decoders know, as mutation seeds.
fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut push = |f: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        f(&mut b);
        out.push(b.to_vec());
    };
    push(&|b| encode::query(b, "SELECT 1"));
    push(&|b| encode::parse(b, "s", b"SELECT $1", &[0, 1, 0, 0, 0, 23]));
    push(&|b| {
        let mut rest = BytesMut::new();
        rest.put_slice(&[
            0, 1, 0, 1, 0, 2, 0, 0, 0, 2, b'h', b'i', 255, 255, 255, 255, 0, 1, 0, 0,
        ]);
        encode::bind_with_statement(b, "p", "s", &rest);
    });
    push(&|b| encode::describe(b, b'S', "s"));
    push(&|b| encode::close(b, b'P', "p"));
    push(&|b| encode::execute(b, "p", 10));
    push(&encode::sync);
    push(&|b| encode::sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=x"));
    push(&|b| encode::password_message(b, b"pw\0"));
    push(&encode::authentication_ok);
    push(&|b| encode::authentication_md5_password(b, [1, 2, 3, 4]));
    push(&|b| encode::authentication_sasl(b, &["SCRAM-SHA-256"]));
    push(&|b| encode::authentication_sasl_continue(b, b"r=x"));
    push(&|b| encode::parameter_status(b, "a", "b"));
    push(&|b| encode::backend_key_data(b, 1, 2));
    push(&|b| encode::ready_for_query(b, b'I'));
    push(&|b| encode::command_complete(b, "SELECT 1"));
    push(&|b| {
        encode::error_response(
            b,
            &encode::ErrorResponse {
                severity: "ERROR",
                code: "XX000",
                message: "m",
                detail: Some("d"),
                hint: None,
            },
        )
    });
    push(&|b| encode::startup_message(b, &[("user", "u"), ("database", "d")]));
    push(&|b| encode::cancel_request(b, 1, 2));
    push(&encode::ssl_request);
    push(&|b| {
        b.put_u8(b'D');
        b.put_i32(4 + 2 + 4 + 1 + 4 + 4);
        b.put_i16(3);
        b.put_i32(1);
        b.put_u8(b'7');
        b.put_i32(-1);
        b.put_i32(0);
    });
    // Real frames from the captured sessions.
    for name in ["pgbench_prepared.s2c.bin", "error_division_by_zero.s2c.bin"] {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let stream = std::fs::read(path).unwrap();
        out.extend(Frames::new(&stream, 1 << 30).map(|f| f.unwrap().to_vec()));
    }
    out
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        match rng.below(7) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.byte();
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = [0, 0xff, 0x7f, 0x80, b'S', b'P'][rng.below(6)];
            }
            2 => buf.truncate(rng.below(buf.len() + 1)),
            3 => {
                let i = rng.below(buf.len() + 1);
                buf.insert(i, rng.byte());
            }
            4 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf.remove(i);
            }
            5 => buf.extend((0..rng.below(8)).map(|_| rng.byte())),
            _ => {
                // A 16-bit count or length word somewhere set to an extreme.
                if buf.len() >= 2 {
                    let i = rng.below(buf.len() - 1);
                    let v: [u8; 2] = [[0xff, 0xff], [0x7f, 0xff], [0, 0], [0x80, 0]][rng.below(4)];
                    buf[i..i + 2].copy_from_slice(&v);
                }
            }
        }
    }
}

/// Rewrites the length word so the mutated body is reached instead of failing framing.
fn fix_length(buf: &mut [u8], tagged: bool) {
    let at = usize::from(tagged);
    if buf.len() >= at + 4 {
        let len = i32::try_from(buf.len() - at).unwrap();
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[test]
fn random_and_mutated_buffers_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_0f51_101c_e5e5);
    let tags = b"QPBDECSHXcdfpFRKZENTIns12tvGHWA\0\xff";
    for round in 0..60_000 {
        let mut buf = if round % 4 == 0 {
            // Structured random: a plausible tag and length word, random body.
            let mut b = vec![tags[rng.below(tags.len())]];
            let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.byte()).collect();
            b.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
            b.extend_from_slice(&body);
            b
        } else if round % 4 == 1 {
            (0..rng.below(48)).map(|_| rng.byte()).collect()
        } else {
            let mut b = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut b);
            b
        };
        if round % 2 == 0 {
            let tagged = buf.first().is_some_and(|&t| t != 0);
            fix_length(&mut buf, tagged);
        }
        exercise(&buf);
        // Also every prefix of small buffers: the "need more" paths.
        if buf.len() <= 24 {
            for k in 0..buf.len() {
                exercise(&buf[..k]);
            }
        }
    }
}

#[test]
fn seeds_are_valid() {
    for s in seeds() {
        let ok = frontend::parse(&s).is_ok()
            || backend::parse(&s).is_ok()
            || startup::parse_startup(&s).is_ok();
        assert!(ok, "{s:?}");
        exercise(&s);
    }
}
