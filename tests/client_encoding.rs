//! Clients whose `client_encoding` is not UTF-8 (LATIN1, WIN1252, EUC_JP), against a UTF8
//! server, in raw protocol so the bytes are exactly what such a client sends: their text
//! reaches the server untouched and is judged as the server reads it, in both pool modes and
//! both query protocols; a denied statement stays denied, masked columns stay masked (in
//! bytes the client's encoding can hold), and text that is not valid in the client's
//! encoding is judged as unparsed text rather than refused as a protocol error.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::{
    create_app_database, start_gateway, Gateway, GatewayOptions, AGENT_TOKEN, APP_PASSWORD,
    APP_USER, AUDITOR_TOKEN, CONN, MASKED_TOKEN,
};
use common::{shared_pg, with_shared_pg};

/// `café` and `José` in LATIN1 (and WIN1252), as such a client sends them.
const CAFE: &[u8] = b"caf\xe9";

fn setup(db: &str, mode: &'static str, seed: &str) -> Gateway {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(APP_USER, APP_PASSWORD, db, seed).expect("seed");
    });
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            size: 2,
            cores: 1,
            ..GatewayOptions::default()
        },
    )
}

// ---- a raw frontend that sends bytes, not strings -----------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}
fn cstr(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(s);
    v.push(0);
}
fn query(sql: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}
/// Parse (unnamed or named), Bind with text parameters, Describe, Execute, Sync.
fn extended(name: &[u8], sql: &[u8], params: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    cstr(&mut p, name);
    cstr(&mut p, sql);
    p.extend_from_slice(&0u16.to_be_bytes());
    let mut b = Vec::new();
    cstr(&mut b, b"");
    cstr(&mut b, name);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&u16::try_from(params.len()).unwrap().to_be_bytes());
    for v in params {
        b.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
        b.extend_from_slice(v);
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    let mut e = Vec::new();
    cstr(&mut e, b"");
    e.extend_from_slice(&0i32.to_be_bytes());
    [
        msg(b'P', &p),
        msg(b'B', &b),
        msg(b'D', b"P\0"),
        msg(b'E', &e),
        msg(b'S', &[]),
    ]
    .concat()
}

/// What came back for one request: DataRow values as bytes, the error's SQLSTATE, and the
/// client_encoding ParameterStatus values seen.
#[derive(Debug, Default)]
struct Answer {
    rows: Vec<Vec<Vec<u8>>>,
    error: Option<String>,
    encodings: Vec<String>,
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16, token: &str, database: &str, encoding: &str) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [
            ("user", "agent"),
            ("database", database),
            ("client_encoding", encoding),
        ] {
            cstr(&mut body, k.as_bytes());
            cstr(&mut body, v.as_bytes());
        }
        body.push(0);
        let mut start = u32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        start.extend_from_slice(&body);
        let mut c = Client { s, buf: Vec::new() };
        c.s.write_all(&start).unwrap();
        let mut told = None;
        loop {
            let (tag, body) = c.next().expect("login answer");
            match tag {
                b'R' if body[..4] == 3i32.to_be_bytes() => {
                    let mut p = Vec::new();
                    cstr(&mut p, token.as_bytes());
                    c.s.write_all(&msg(b'p', &p)).unwrap();
                }
                b'S' => {
                    if let Some(v) = parameter(&body, "client_encoding") {
                        told = Some(v);
                    }
                }
                b'Z' => break,
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
        assert_eq!(
            told.as_deref(),
            Some(encoding),
            "client_encoding at startup"
        );
        c
    }

    fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        let until = Instant::now() + Duration::from_secs(30);
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

    /// Sends `bytes` and reads up to the next ReadyForQuery.
    fn ask(&mut self, bytes: &[u8]) -> Answer {
        self.s.write_all(bytes).unwrap();
        let mut a = Answer::default();
        loop {
            let (tag, body) = self
                .next()
                .unwrap_or_else(|| panic!("no ReadyForQuery (connection closed?); got {a:?}"));
            match tag {
                b'D' => a.rows.push(data_row(&body)),
                b'E' => a.error = Some(field(&body, b'C')),
                b'S' => a.encodings.extend(parameter(&body, "client_encoding")),
                b'Z' => return a,
                _ => {}
            }
        }
    }

    /// One row of one column, as bytes; panics on an error.
    fn value(&mut self, bytes: &[u8]) -> Vec<u8> {
        let a = self.ask(bytes);
        assert_eq!(a.error, None, "{a:?}");
        assert_eq!(a.rows.len(), 1, "{a:?}");
        a.rows[0][0].clone()
    }
}

fn data_row(body: &[u8]) -> Vec<Vec<u8>> {
    let n = u16::from_be_bytes([body[0], body[1]]);
    let mut at = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            cols.push(b"NULL".to_vec());
        } else {
            let len = len as usize;
            cols.push(body[at..at + len].to_vec());
            at += len;
        }
    }
    cols
}

fn field(body: &[u8], code: u8) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

fn parameter(body: &[u8], name: &str) -> Option<String> {
    let mut parts = body.split(|&b| b == 0);
    (parts.next()? == name.as_bytes())
        .then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- text through both protocols, both modes ------------------------------------------------

fn latin1_text_round_trips(mode: &'static str) {
    let db = format!("enc_text_{mode}");
    let gw = setup(&db, mode, "CREATE TABLE words (w text);");
    let mut c = Client::connect(gw.port(), AGENT_TOKEN, CONN, "LATIN1");

    // Simple protocol: the server reads LATIN1 and answers in LATIN1.
    let sql = cat(&[b"SELECT '", CAFE, b"' || ' ' || length('", CAFE, b"')"]);
    assert_eq!(c.value(&query(&sql)), cat(&[CAFE, b" 4"]));
    // The server's error messages and notices quote the text back, in LATIN1.
    let bad = cat(&[b"SELECT '", CAFE, b"'::int"]);
    assert_eq!(c.ask(&query(&bad)).error.as_deref(), Some("22P02"));
    let notice = cat(&[b"DO $$ BEGIN RAISE NOTICE '", CAFE, b"'; END $$"]);
    assert_eq!(c.ask(&query(&notice)).error, None);
    let insert = cat(&[b"INSERT INTO words VALUES ('", CAFE, b"')"]);
    assert_eq!(c.ask(&query(&insert)).error, None);

    // Extended protocol: text and parameters in LATIN1, named and unnamed statements.
    let sql = cat(&[b"SELECT w || $1 FROM words WHERE w = '", CAFE, b"'"]);
    assert_eq!(
        c.value(&extended(b"", &sql, &[b" cr\xe8me"])),
        cat(&[CAFE, b" cr\xe8me"])
    );
    assert_eq!(c.value(&extended(b"s1", &sql, &[b"!"])), cat(&[CAFE, b"!"]));

    // A later SET client_encoding, confirmed by ParameterStatus: WIN1252 has the euro sign.
    let a = c.ask(&query(b"SET client_encoding TO 'WIN1252'"));
    assert_eq!(a.encodings, ["WIN1252"]);
    assert_eq!(
        c.value(&query(b"SELECT '\x80' || length('\x80')")),
        b"\x801"
    );
    // ... and set_config back to UTF8: the same bytes are now the UTF-8 text they spell.
    let a = c.ask(&query(
        b"SELECT set_config('client_encoding', 'UTF8', false)",
    ));
    assert_eq!(a.encodings, ["UTF8"]);
    assert_eq!(c.value(&query("SELECT length('café')".as_bytes())), b"4");
    // The statement parsed in LATIN1 (text with é) is not the same statement in UTF8.
    assert_eq!(
        c.value(&extended(
            b"",
            "SELECT count(*) FROM words WHERE w = 'café'".as_bytes(),
            &[]
        )),
        b"1"
    );
}

#[test]
fn latin1_text_round_trips_in_session_mode() {
    latin1_text_round_trips("session");
}

#[test]
fn latin1_text_round_trips_in_transaction_mode() {
    latin1_text_round_trips("transaction");
}

/// In transaction pooling, a named statement's text in LATIN1 is prepared again on the next
/// server connection as the client sent it, and two clients sending the same bytes in two
/// encodings get two statements.
#[test]
fn same_bytes_in_two_encodings_are_two_statements() {
    let gw = setup("enc_twice", "transaction", "SELECT 1;");
    let mut latin1 = Client::connect(gw.port(), AGENT_TOKEN, CONN, "LATIN1");
    let mut utf8 = Client::connect(gw.port(), AGENT_TOKEN, CONN, "UTF8");
    // "cafÃ©" in LATIN1 is the two-byte UTF-8 "é" bytes read as two characters.
    let sql = b"SELECT length('caf\xc3\xa9')";
    for _ in 0..3 {
        assert_eq!(latin1.value(&extended(b"s", sql, &[])), b"5");
        assert_eq!(utf8.value(&extended(b"s", sql, &[])), b"4");
    }
}

// ---- judged as the server reads it --------------------------------------------------------

#[test]
fn latin1_statements_are_judged() {
    let gw = setup("enc_judged", "session", "CREATE TABLE secrets (note text);");
    let mut c = Client::connect(gw.port(), AUDITOR_TOKEN, "otherdb", "LATIN1");
    // Reads are allowed in LATIN1 as in UTF-8...
    let sql = cat(&[b"SELECT '", CAFE, b"' || length('", CAFE, b"')"]);
    assert_eq!(c.value(&query(&sql)), cat(&[CAFE, b"4"]));
    // ... the secrets table is denied however its text is spelled, in both protocols ...
    let denied = cat(&[b"SELECT * FROM secrets WHERE note = '", CAFE, b"'"]);
    assert_eq!(c.ask(&query(&denied)).error.as_deref(), Some("42501"));
    assert_eq!(
        c.ask(&extended(b"", &denied, &[])).error.as_deref(),
        Some("42501")
    );
    // ... and a write is still a write.
    let write = cat(&[b"INSERT INTO secrets VALUES ('", CAFE, b"')"]);
    assert_eq!(c.ask(&query(&write)).error.as_deref(), Some("42501"));
    assert_eq!(c.value(&query(b"SELECT 1")), b"1");
}

/// Bytes that are not valid in the client's encoding (LATIN1 bytes from a UTF8 client) are
/// judged as text that does not parse: denied where the policy denies unparsed text, passed
/// to the server (which refuses them itself) where it allows it; the session goes on.
#[test]
fn undecodable_text_is_judged_as_unparsed() {
    let gw = setup("enc_bad", "session", "SELECT 1;");
    let sql = cat(&[b"SELECT '", CAFE, b"'"]);

    let mut strict = Client::connect(gw.port(), AUDITOR_TOKEN, "otherdb", "UTF8");
    assert_eq!(strict.ask(&query(&sql)).error.as_deref(), Some("42501"));
    assert_eq!(
        strict.ask(&extended(b"", &sql, &[])).error.as_deref(),
        Some("42501")
    );
    assert_eq!(strict.value(&query(b"SELECT 1")), b"1");

    let mut lenient = Client::connect(gw.port(), AGENT_TOKEN, CONN, "UTF8");
    // 22021: invalid byte sequence for encoding "UTF8", from the server.
    assert_eq!(lenient.ask(&query(&sql)).error.as_deref(), Some("22021"));
    assert_eq!(lenient.value(&query(b"SELECT 2")), b"2");
}

// ---- masking in other encodings ----------------------------------------------------------

const CUSTOMERS: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text);
INSERT INTO customers VALUES
 (1, 'José', 'josé@exemple.fr', '512-48-3921'),
 (2, 'Ōno', 'ono@example.jp', 'xの123');";

fn masked_rows(c: &mut Client, sql: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let a = c.ask(&query(sql));
    assert_eq!(a.error, None, "{a:?}");
    a.rows
}

/// A LATIN1 client's masked columns are masked, and what replaces them is ASCII.
#[test]
fn latin1_masked_columns_are_masked() {
    let gw = setup("enc_masked", "session", CUSTOMERS);
    let mut c = Client::connect(gw.port(), MASKED_TOKEN, CONN, "LATIN1");
    let rows = masked_rows(
        &mut c,
        b"SELECT name, email, ssn FROM customers WHERE name = 'Jos\xe9'",
    );
    assert_eq!(rows.len(), 1);
    let (name, email, ssn) = (&rows[0][0], &rows[0][1], &rows[0][2]);
    assert_eq!(name, b"Jos\xe9");
    assert!(
        email.is_ascii() && !email.windows(4).any(|w| w == b"jos\xe9"),
        "{email:?}"
    );
    assert_eq!(ssn, b"*******3921");
    // A column named in LATIN1, and an error quoting LATIN1 text, through the masker.
    let rows = masked_rows(
        &mut c,
        b"SELECT ssn AS \"n\xb0\", name AS \"pr\xe9nom\" FROM customers WHERE id = 1",
    );
    assert_eq!(rows[0], [b"*******3921".to_vec(), b"Jos\xe9".to_vec()]);
    let bad = c.ask(&query(b"SELECT name::int FROM customers WHERE id = 1"));
    assert_eq!(bad.error.as_deref(), Some("22P02"));
    assert_eq!(c.value(&query(b"SELECT 1")), b"1");
}

/// In a multi-byte encoding the masker cannot cut a value between the bytes of a character:
/// a partial mask of a value with non-ASCII text masks all of it, in ASCII.
#[test]
fn euc_jp_partial_mask_stays_valid() {
    let gw = setup("enc_eucjp", "transaction", CUSTOMERS);
    let mut c = Client::connect(gw.port(), MASKED_TOKEN, CONN, "EUC_JP");
    let rows = masked_rows(&mut c, b"SELECT ssn FROM customers ORDER BY id");
    assert_eq!(rows[0][0], b"*******3921");
    let ssn = &rows[1][0];
    assert!(ssn.iter().all(|&b| b == b'*'), "{ssn:?}");
}
