//! The extended query protocol through the gateway, sent as raw wire-protocol bytes where
//! drivers would smooth things over: the unnamed statement across a Sync in transaction
//! pooling (pg8000 parses and describes in one round trip and binds in the next, by when the
//! client may hold another server connection), and Binds with more parameters than a signed
//! 16-bit count holds (PostgreSQL accepts up to 65535).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::{
    create_app_database, start_gateway, Gateway, GatewayOptions, AGENT_TOKEN, APP_PASSWORD,
    APP_USER, CONN,
};
use common::{shared_pg, with_shared_pg};

fn setup(db: &str, mode: &'static str, size: usize) -> Gateway {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, label text);
             INSERT INTO items VALUES (1, 'one'), (2, 'two');",
        )
        .expect("seed");
    });
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            size,
            cores: 1,
            ..GatewayOptions::default()
        },
    )
}

// ---- a raw frontend ---------------------------------------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}
fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}
fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&u16::try_from(types.len()).unwrap().to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &b)
}
/// A Bind with text parameters, all results in text.
fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&u16::try_from(params.len()).unwrap().to_be_bytes());
    for p in params {
        b.extend_from_slice(&u32::try_from(p.len()).unwrap().to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'B', &b)
}
fn describe_stmt(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    msg(b'D', &b)
}
fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}
fn close_stmt(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    msg(b'C', &b)
}
fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        cstr(&mut body, "user");
        cstr(&mut body, "agent");
        cstr(&mut body, "database");
        cstr(&mut body, CONN);
        body.push(0);
        let mut start = u32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        start.extend_from_slice(&body);
        s.write_all(&start).unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        loop {
            let (tag, body) = r.next(Duration::from_secs(10)).expect("login answer");
            match tag {
                b'R' if body[..4] == 3i32.to_be_bytes() => {
                    let mut p = Vec::new();
                    cstr(&mut p, AGENT_TOKEN);
                    r.s.write_all(&msg(b'p', &p)).unwrap();
                }
                b'Z' => return r,
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }

    fn send(&mut self, parts: &[Vec<u8>]) {
        self.s.write_all(&parts.concat()).unwrap();
    }

    /// The next whole backend message, or None after `wait` without one.
    fn next(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let until = Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let m: Vec<u8> = self.buf.drain(..1 + len).collect();
                    return Some((m[0], m[5..].to_vec()));
                }
            }
            if Instant::now() > until {
                return None;
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Everything up to and including the next ReadyForQuery, as a compact transcript:
    /// tags, with DataRow values and error messages spelled out.
    fn round_trip(&mut self, parts: &[Vec<u8>]) -> Vec<String> {
        self.send(parts);
        let mut got = Vec::new();
        loop {
            let (tag, body) = self
                .next(Duration::from_secs(30))
                .unwrap_or_else(|| panic!("no ReadyForQuery; got {got:?}"));
            got.push(describe(tag, &body));
            if tag == b'Z' {
                return got;
            }
        }
    }
}

/// A backend message as a short string: `D:a|b` for a DataRow, `E:<code> <message>`.
fn describe(tag: u8, body: &[u8]) -> String {
    match tag {
        b'D' => {
            let n = u16::from_be_bytes([body[0], body[1]]);
            let mut at = 2;
            let mut cols = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    cols.push("NULL".to_owned());
                } else {
                    let len = len as usize;
                    cols.push(String::from_utf8_lossy(&body[at..at + len]).into_owned());
                    at += len;
                }
            }
            format!("D:{}", cols.join("|"))
        }
        b'E' => {
            let field = |code: u8| {
                body.split(|&b| b == 0)
                    .find(|f| f.first() == Some(&code))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .unwrap_or_default()
            };
            format!("E:{} {}", field(b'C'), field(b'M'))
        }
        t => (t as char).to_string(),
    }
}

/// pg8000's execute: Parse(unnamed) + Describe + Sync, then Bind + Execute + Sync in a later
/// round trip. With one server connection and another client's unnamed statement on it in
/// between, the gateway parses the client's statement there again before its Bind.
#[test]
fn unnamed_statement_survives_a_sync_in_transaction_mode() {
    let gw = setup("ext_unnamed", "transaction", 1);
    let mut a = Raw::connect(gw.port());
    let mut b = Raw::connect(gw.port());

    let got = a.round_trip(&[
        parse("", "SELECT label FROM items WHERE id = $1", &[23]),
        describe_stmt(""),
        sync(),
    ]);
    assert_eq!(got, ["1", "t", "T", "Z"]);

    // B's unnamed statement replaces A's on the one server connection.
    let got = b.round_trip(&[parse("", "SELECT $1::text || '!'", &[]), sync()]);
    assert_eq!(got, ["1", "Z"]);

    // A binds its own statement, not the one the server holds now.
    let got = a.round_trip(&[bind("", "", &["2"]), execute(""), sync()]);
    assert_eq!(got, ["2", "D:two", "C", "Z"]);
    // And B its own, parsed again after A's.
    let got = b.round_trip(&[bind("", "", &["b"]), execute(""), sync()]);
    assert_eq!(got, ["2", "D:b!", "C", "Z"]);

    // Described again after a Sync: on the server A holds now.
    let _ = b.round_trip(&[parse("", "SELECT 1", &[]), sync()]);
    let got = a.round_trip(&[describe_stmt(""), sync()]);
    assert_eq!(got, ["t", "T", "Z"]);

    // Bound several times in one pipeline, parsed again only once.
    let got = a.round_trip(&[
        bind("", "", &["1"]),
        execute(""),
        bind("", "", &["2"]),
        execute(""),
        sync(),
    ]);
    assert_eq!(got, ["2", "D:one", "C", "2", "D:two", "C", "Z"]);

    // Closed, it is gone for A, as on a server of its own.
    let got = a.round_trip(&[close_stmt(""), sync()]);
    assert_eq!(got, ["3", "Z"]);
    let got = a.round_trip(&[bind("", "", &["1"]), execute(""), sync()]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("E:26000"), "{got:?}");

    // A client that never parsed an unnamed statement may not bind the server's.
    let _ = b.round_trip(&[parse("", "SELECT 'secret-of-b'", &[]), sync()]);
    let mut c = Raw::connect(gw.port());
    let got = c.round_trip(&[bind("", "", &[]), execute(""), sync()]);
    assert!(got[0].starts_with("E:26000"), "{got:?}");
    assert!(!got.iter().any(|m| m.contains("secret-of-b")), "{got:?}");
}

/// The re-parse fails on the new server as the client's own Parse would (the table is gone):
/// the client gets that error for its Bind, and the statement is gone afterwards.
#[test]
fn unnamed_statement_parsed_again_reports_its_error() {
    let gw = setup("ext_unnamed_err", "transaction", 1);
    let mut a = Raw::connect(gw.port());
    let mut b = Raw::connect(gw.port());
    let got = a.round_trip(&[parse("", "SELECT label FROM items", &[]), sync()]);
    assert_eq!(got, ["1", "Z"]);
    let got = b.round_trip(&[
        parse("", "DROP TABLE items", &[]),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]);
    assert_eq!(got, ["1", "2", "C", "Z"]);
    let got = a.round_trip(&[bind("", "", &[]), execute(""), sync()]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("E:42P01"), "{got:?}");
    let got = a.round_trip(&[bind("", "", &[]), execute(""), sync()]);
    assert!(got[0].starts_with("E:26000"), "{got:?}");
}

/// A Bind with 40,000 parameters (pg8000's `test_max_parameters` sends 60,000): more than an
/// `i16` count holds, well within PostgreSQL's 65535.
#[test]
fn bind_with_40000_parameters() {
    const N: usize = 40_000;
    let gw = setup("ext_params", "transaction", 2);
    let mut a = Raw::connect(gw.port());
    let list: Vec<String> = (1..=N).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT count(*) FROM unnest(ARRAY[{}]::int[]) AS v",
        list.join(",")
    );
    let values: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let got = a.round_trip(&[
        parse("", &sql, &vec![23; N]),
        bind("", "", &values),
        execute(""),
        sync(),
    ]);
    assert_eq!(got, ["1", "2", "D:40000", "C", "Z"]);
    // Described: the server's ParameterDescription carries 40,000 types.
    let got = a.round_trip(&[parse("big", &sql, &[]), describe_stmt("big"), sync()]);
    assert_eq!(got, ["1", "t", "T", "Z"]);
    let got = a.round_trip(&[bind("", "big", &values), execute(""), sync()]);
    assert_eq!(got, ["2", "D:40000", "C", "Z"]);
}

/// In transaction pooling a client may describe only statements it parsed: the pooled server's
/// unnamed statement, or one under a guessed server name, belongs to another client.
#[test]
fn describe_of_another_clients_statement_is_refused() {
    let gw = setup("ext_describe_foreign", "transaction", 1);
    let mut a = Raw::connect(gw.port());
    let got = a.round_trip(&[
        parse("", "SELECT label FROM items WHERE id = $1", &[23]),
        parse(
            "named_a",
            "SELECT label, id FROM items WHERE id = $1",
            &[23],
        ),
        describe_stmt("named_a"),
        sync(),
    ]);
    assert_eq!(got, ["1", "1", "t", "T", "Z"]);
    let mut c = Raw::connect(gw.port());
    let got = c.round_trip(&[describe_stmt(""), sync()]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("E:26000"), "{got:?}");
    for guess in [
        "sluice_0_1",
        "sluice_0_2",
        "sluice_1_1",
        "sluice_1_2",
        "named_a",
    ] {
        let got = c.round_trip(&[describe_stmt(guess), sync()]);
        assert_eq!(got.len(), 2, "{guess}: {got:?}");
        assert!(got[0].starts_with("E:26000"), "{guess}: {got:?}");
    }
    // The client's own statements still describe as before.
    let got = c.round_trip(&[parse("", "SELECT 1", &[]), describe_stmt(""), sync()]);
    assert_eq!(got, ["1", "t", "T", "Z"]);
}

/// Session pooling: SQL-level `EXECUTE` of a statement prepared in the protocol (asyncpg's
/// `prepare(name=...)` then `EXECUTE name`) runs it, judged by its text, as PostgreSQL's one
/// namespace for both allows; after its Close the name is unknown again.
#[test]
fn sql_execute_of_a_protocol_statement_in_session_mode() {
    let gw = setup("ext_sql_execute", "session", 2);
    let mut c = Raw::connect(gw.port());
    let got = c.round_trip(&[
        parse("foobar", "SELECT label FROM items WHERE id = $1", &[23]),
        sync(),
    ]);
    assert_eq!(got, ["1", "Z"]);
    let got = c.round_trip(&[msg(b'Q', b"EXECUTE foobar(2)\0")]);
    assert_eq!(got, ["T", "D:two", "C", "Z"]);
    let got = c.round_trip(&[close_stmt("foobar"), sync()]);
    assert_eq!(got, ["3", "Z"]);
    let got = c.round_trip(&[msg(b'Q', b"EXECUTE foobar(2)\0")]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("E:42501"), "{got:?}");
}
