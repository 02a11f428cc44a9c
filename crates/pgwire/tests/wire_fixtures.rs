//! Captured PostgreSQL 15 sessions (see `fixtures/README.md`): framing must walk them exactly and
//! every message must decode.

use std::collections::BTreeMap;

use sluice_pgwire::backend::{self, Authentication, BackendMessage};
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::startup::{self, StartupPacket};
use sluice_pgwire::{frame_len, Frames, DEFAULT_MAX_MESSAGE_LEN};

const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Splits a whole tagged stream into frames, asserting nothing is left over.
fn split_frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut it = Frames::new(stream, MAX);
    let out: Vec<_> = it.by_ref().map(Result::unwrap).collect();
    assert!(
        it.remaining().is_empty(),
        "{} stray bytes",
        it.remaining().len()
    );
    out
}

/// Splits a client stream: the untagged startup packet, then tagged frames.
fn client_frames(stream: &[u8]) -> (StartupPacket<'_>, Vec<&[u8]>) {
    let n = startup::startup_frame_len(stream).unwrap().unwrap();
    (
        startup::parse_startup(&stream[..n]).unwrap(),
        split_frames(&stream[n..]),
    )
}

fn tag_counts<'a>(frames: impl IntoIterator<Item = &'a &'a [u8]>) -> BTreeMap<char, usize> {
    let mut counts = BTreeMap::new();
    for f in frames {
        *counts.entry(char::from(f[0])).or_default() += 1;
    }
    counts
}

#[test]
fn select_1000_server_stream() {
    let stream = fixture("pgbench_select_1000.s2c.bin");
    let frames = split_frames(&stream);
    let total: usize = frames.iter().map(|f| f.len()).sum();
    assert_eq!(total, stream.len());

    let msgs: Vec<_> = frames.iter().map(|f| backend::parse(f).unwrap()).collect();
    assert!(matches!(
        msgs[0],
        BackendMessage::Authentication(a) if a.mechanisms().unwrap().eq(["SCRAM-SHA-256"])
    ));
    assert!(matches!(
        msgs[1],
        BackendMessage::Authentication(Authentication::SaslContinue(d)) if d.starts_with(b"r=")
    ));
    assert!(matches!(
        msgs[2],
        BackendMessage::Authentication(Authentication::SaslFinal(d)) if d.starts_with(b"v=")
    ));
    assert_eq!(msgs[3], BackendMessage::Authentication(Authentication::Ok));
    let params: BTreeMap<_, _> = msgs
        .iter()
        .filter_map(|m| match *m {
            BackendMessage::ParameterStatus { name, value } => Some((name, value)),
            _ => None,
        })
        .collect();
    assert_eq!(params["application_name"], "sluice-fixture");
    assert_eq!(params["client_encoding"], "UTF8");
    assert!(params["server_version"].starts_with("15."));
    assert_eq!(
        tag_counts(&frames),
        BTreeMap::from([
            ('C', 1),
            ('D', 1000),
            ('K', 1),
            ('R', 4),
            ('S', params.len()),
            ('T', 1),
            ('Z', 2)
        ])
    );
    assert_eq!(
        msgs[msgs.len() - 2],
        BackendMessage::CommandComplete { tag: "SELECT 1000" }
    );
    assert_eq!(
        msgs[msgs.len() - 1],
        BackendMessage::ReadyForQuery { status: b'I' }
    );

    // RowDescription: aid int4, bid int4, abalance int4, filler bpchar(84).
    let row_desc = frames.iter().find(|f| f[0] == b'T').unwrap();
    assert_eq!(&row_desc[5..7], &4i16.to_be_bytes());
    for name in ["aid", "bid", "abalance", "filler"] {
        assert!(row_desc
            .windows(name.len() + 1)
            .any(|w| w == format!("{name}\0").as_bytes()));
    }

    // Every DataRow: 4 text columns, aid counting 1..=1000, filler 84 blanks.
    let mut aid = 0;
    for f in frames.iter().filter(|f| f[0] == b'D') {
        let mut cols = backend::data_row_ranges(f).unwrap();
        assert_eq!(cols.columns(), 4);
        let ranges: Vec<_> = cols.by_ref().map(|c| c.unwrap().unwrap()).collect();
        assert_eq!(ranges.len(), 4);
        aid += 1;
        assert_eq!(&f[ranges[0].clone()], aid.to_string().as_bytes());
        assert_eq!(&f[ranges[1].clone()], b"1");
        assert_eq!(&f[ranges[2].clone()], b"0");
        assert_eq!(f[ranges[3].clone()], [b' '; 84]);
        assert_eq!(ranges[3].end, f.len());
    }
    assert_eq!(aid, 1000);
}

#[test]
fn select_1000_client_stream() {
    let stream = fixture("pgbench_select_1000.c2s.bin");
    let (startup, frames) = client_frames(&stream);
    let StartupPacket::Startup(p) = startup else {
        panic!("{startup:?}")
    };
    assert_eq!(p.minor, 0);
    assert_eq!(p.user(), Some("postgres"));
    assert_eq!(p.database(), Some("postgres"));
    assert_eq!(p.get("application_name"), Some("sluice-fixture"));
    let msgs: Vec<_> = frames.iter().map(|f| frontend::parse(f).unwrap()).collect();
    let FrontendMessage::Password(first) = msgs[0] else {
        panic!()
    };
    let init = frontend::sasl_initial_response(first).unwrap();
    assert_eq!(init.mechanism, "SCRAM-SHA-256");
    assert!(init.data.unwrap().starts_with(b"n,,n=,r="));
    assert!(matches!(msgs[1], FrontendMessage::Password(d) if d.starts_with(b"c=biws,r=")));
    assert_eq!(
        msgs[2],
        FrontendMessage::Query {
            sql: b"SELECT * FROM pgbench_accounts ORDER BY aid LIMIT 1000"
        }
    );
    assert_eq!(msgs[3], FrontendMessage::Terminate);
    assert_eq!(msgs.len(), 4);
}

#[test]
fn prepared_statement_session() {
    let client = fixture("pgbench_prepared.c2s.bin");
    let (_, frames) = client_frames(&client);
    let msgs: Vec<_> = frames.iter().map(|f| frontend::parse(f).unwrap()).collect();
    let parses: Vec<_> = msgs
        .iter()
        .filter_map(|m| match *m {
            FrontendMessage::Parse { name, query, .. } => Some((name, query)),
            _ => None,
        })
        .collect();
    assert_eq!(parses.len(), 1, "pgbench -M prepared parses once");
    assert!(String::from_utf8_lossy(parses[0].1).contains("pgbench_accounts"));
    let binds = msgs
        .iter()
        .filter(
            |m| matches!(m, FrontendMessage::Bind { statement, .. } if *statement == parses[0].0),
        )
        .count();
    assert_eq!(binds, 20);
    assert!(msgs.iter().filter(|m| **m == FrontendMessage::Sync).count() >= 20);

    let server = fixture("pgbench_prepared.s2c.bin");
    let server_frames = split_frames(&server);
    for f in &server_frames {
        backend::parse(f).unwrap();
        if f[0] == b'D' {
            for c in backend::data_row_ranges(f).unwrap() {
                c.unwrap();
            }
        }
    }
    let counts = tag_counts(&server_frames);
    assert_eq!(counts[&'1'], 1);
    assert_eq!(counts[&'2'], 20);
    assert_eq!(counts[&'D'], 20);
}

#[test]
fn error_session() {
    let server = fixture("error_division_by_zero.s2c.bin");
    let msgs: Vec<_> = split_frames(&server)
        .into_iter()
        .map(|f| backend::parse(f).unwrap())
        .collect();
    let BackendMessage::ErrorResponse(e) = msgs[msgs.len() - 2] else {
        panic!("{:?}", msgs[msgs.len() - 2])
    };
    assert_eq!(e.severity(), Some("ERROR"));
    assert_eq!(e.severity_nonlocalized(), Some("ERROR"));
    assert_eq!(e.code(), Some("22012"));
    assert_eq!(e.message(), Some("division by zero"));
    assert!(e.get(b'F').is_some(), "server sends file/line/routine");
    assert_eq!(
        msgs[msgs.len() - 1],
        BackendMessage::ReadyForQuery { status: b'I' }
    );
    let client = fixture("error_division_by_zero.c2s.bin");
    client_frames(&client);
}

/// Reads arriving in arbitrary chunk sizes yield the same frames as the whole buffer.
#[test]
fn incremental_reads_see_the_same_frames() {
    for name in [
        "pgbench_prepared.s2c.bin",
        "error_division_by_zero.s2c.bin",
        "pgbench_select_1000.s2c.bin",
    ] {
        let stream = fixture(name);
        let expected = split_frames(&stream);
        for chunk in [1, 2, 3, 5, 7, 64, 1000, 4096] {
            let mut pending = Vec::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                pending.extend_from_slice(piece);
                let mut pos = 0;
                while let Some(n) = frame_len(&pending[pos..], MAX).unwrap() {
                    got.push(pending[pos..pos + n].to_vec());
                    pos += n;
                }
                pending.drain(..pos);
            }
            assert!(pending.is_empty());
            assert_eq!(got.len(), expected.len(), "{name} chunk {chunk}");
            assert!(got.iter().zip(&expected).all(|(a, b)| a == b));
        }
    }
}
