//! The public masking bypass suite: statements that try to read a masked value through the
//! gateway, against a real PostgreSQL, checked on the bytes the client actually received.
//!
//! Every client connects through a [`Tap`], a TCP relay between the client and the gateway
//! that records every byte the gateway sends. After each probe the recording is searched for
//! each seeded secret in clear, upper- and lower-cased, reversed, without separators, as hex
//! (both cases), base64 and MD5 (an SSN's MD5 is brute-forced in seconds), and for numbers and
//! addresses also their binary encodings, so text and binary results, COPY data, errors,
//! notices and notifications are all covered by the same check.
//!
//! The role `masked` (token [`MASKED_TOKEN`], policy `masked` in tests/common/gateway.rs)
//! masks `public.customers`: `ssn` partial (last 4), `email` redact, `card` keyed hash, `pin`
//! tokenise, `salary` keyed hash (and `predicates: deny`: no WHERE/ORDER BY/GROUP BY/JOIN on
//! it), every `inet` by type (null), and runs every content
//! detector; `max_rows` is 1000. `pin` values are invisible to detectors, so only the column
//! lineage can protect them: most probes read `pin`.
//!
//! A probe passes when the statement either returns its rows with nothing leaked, or (where the
//! issue allows it: lineage that cannot be established, writes of masked values) is refused
//! (42501 from the gateway, or the gateway's fail-closed error). Ordinary statements must still
//! pass with their values in clear: over-blocking is a failure too. Each test runs all its
//! probes and then fails listing every probe that leaked or misbehaved.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::gateway::{
    connect, connect_with_messages, create_app_database, runtime, sqlstate, start_gateway, within,
    Async, Gateway, GatewayOptions, APP_PASSWORD, APP_USER, CONN, MASKED_TOKEN,
};
use common::{psql_cmd, run_ok, shared_pg, superuser_on, with_shared_pg, PgTarget};
use tokio_postgres::{Client, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------
// Seeded data and the forms a leak may take.
// ---------------------------------------------------------------------------------------------

const SEED: &str = "
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text, ssn text, card text,
    pin text UNIQUE, salary int, last_ip inet, note text);
INSERT INTO customers VALUES
 (1, 'Alice Adams', 'alice.adams@example.com', '512-48-3921', '4539 1488 0343 6467',
  'kiwi-orchard-7731', 987654, '203.0.113.77', 'prefers mail to alice.home@example.org'),
 (2, 'Bob Brown', 'bob.brown@example.net', '287-65-4310', '5555555555554444',
  'lemon-harbor-0458', 876543, '198.51.100.23', 'VIP since 2019'),
 (3, 'Carol Chen', 'carol.chen@example.com', '401-22-7788', '378282246310005',
  'mango-summit-2290', 765432, '192.0.2.199', 'no notes');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, amount int,
    note text);
INSERT INTO orders VALUES (10, 1, 250, 'first order'), (11, 2, 100, 'gift'),
    (12, 1, 75, 'callback 415-867-5309');
CREATE TABLE scratch (id int, v text);
CREATE VIEW customer_contacts AS
    SELECT id, name, email, ssn, upper(pin) AS pin_upper FROM customers;
CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 1500) g;
";

/// Text secrets: the value, and its MD5 (hex) as PostgreSQL's `md5()` prints it.
const TEXT_SECRETS: &[(&str, &str)] = &[
    ("512-48-3921", "200a0b402f5a9980ed97123ed99613d7"),
    ("287-65-4310", "c9ac2ff02eaa74931cd69e71a5808042"),
    ("401-22-7788", "145e3b0710f5c9316aeba4027e4cbbfe"),
    ("kiwi-orchard-7731", "790de653846b484242f2a87eb8fb14ec"),
    ("lemon-harbor-0458", "a13f56bea1cbaca39e7a3813222db580"),
    ("mango-summit-2290", "caf93f3c7b6826de309d1f34270a844f"),
    (
        "alice.adams@example.com",
        "261fa581265c8aa510b8934938229e05",
    ),
    ("bob.brown@example.net", "775b528d20e6b3b9706dd5bb2cd77379"),
    ("carol.chen@example.com", "8be79bf680c64ec9c1dcdee6a47bd830"),
    ("4539 1488 0343 6467", "67760e0c33e6cba376efe50462fc096e"),
    ("5555555555554444", "7957566d6e5fac82272c6cd6b1d1ce95"),
    ("378282246310005", "a5d172d46fc909f47e337374892330e8"),
    // Detectors only (columns nobody masks by name).
    ("alice.home@example.org", ""),
    ("415-867-5309", ""),
];
/// `salary`: masked by column (keyed hash); text and int4 binary forms are both looked for.
const SALARIES: &[i32] = &[987654, 876543, 765432];
/// `last_ip`: masked by its type (inet); the four address bytes of the binary form too.
const ADDRESSES: &[[u8; 4]] = &[[203, 0, 113, 77], [198, 51, 100, 23], [192, 0, 2, 199]];

fn hex(b: &[u8], upper: bool) -> String {
    b.iter()
        .map(|x| {
            if upper {
                format!("{x:02X}")
            } else {
                format!("{x:02x}")
            }
        })
        .collect()
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &x)| a | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every byte string whose presence in the client's stream means a secret leaked, with a name.
fn needles() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: String, bytes: Vec<u8>| {
        if bytes.len() >= 4 && !v.iter().any(|(_, b)| *b == bytes) {
            v.push((what, bytes));
        }
    };
    for (s, md5) in TEXT_SECRETS {
        add(format!("{s:?} in clear"), s.as_bytes().to_vec());
        add(format!("{s:?} upper-cased"), s.to_uppercase().into_bytes());
        add(
            format!("{s:?} reversed"),
            s.chars().rev().collect::<String>().into_bytes(),
        );
        let compact: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if compact.len() >= 8 {
            add(format!("{s:?} without separators"), compact.into_bytes());
        }
        add(
            format!("{s:?} as hex"),
            hex(s.as_bytes(), false).into_bytes(),
        );
        add(
            format!("{s:?} as HEX"),
            hex(s.as_bytes(), true).into_bytes(),
        );
        add(
            format!("{s:?} as base64"),
            base64(s.as_bytes()).into_bytes(),
        );
        if !md5.is_empty() {
            add(format!("{s:?} as md5"), md5.as_bytes().to_vec());
        }
    }
    for n in SALARIES {
        add(format!("salary {n} as text"), n.to_string().into_bytes());
        add(format!("salary {n} as int4"), n.to_be_bytes().to_vec());
    }
    for a in ADDRESSES {
        let text = format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        add(format!("address {text} as text"), text.into_bytes());
        add(format!("address {a:?} as bytes"), a.to_vec());
    }
    v
}

/// The first leak in `seen`, described with some context.
fn find_leak(seen: &[u8]) -> Option<String> {
    for (what, needle) in needles() {
        if let Some(at) = seen
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            let from = at.saturating_sub(40);
            let to = (at + needle.len() + 40).min(seen.len());
            return Some(format!(
                "{what} at byte {at}: …{}…",
                String::from_utf8_lossy(&seen[from..to]).escape_debug()
            ));
        }
    }
    None
}

#[test]
fn the_seeded_secrets_are_what_the_detectors_and_needles_expect() {
    // The needles themselves (so a typo cannot make every leak check vacuous).
    assert_eq!(base64(b"512-48-3921"), "NTEyLTQ4LTM5MjE=");
    assert_eq!(hex(b"kiwi", false), "6b697769");
    assert!(find_leak(b"xx KIWI-ORCHARD-7731 yy").is_some());
    assert!(find_leak(b"\\x6b6977692d6f7263686172642d37373331").is_some());
    assert!(find_leak(b"1377-drahcro-iwik").is_some());
    assert!(find_leak(b"512483921").is_some());
    assert!(find_leak(&987654i32.to_be_bytes()).is_some());
    assert!(find_leak(b"***-**-3921 and ****").is_none());
}

// ---------------------------------------------------------------------------------------------
// A recording relay in front of the gateway.
// ---------------------------------------------------------------------------------------------

/// A TCP relay that records everything the gateway sends to clients.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn new(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the tap");
        let addr = listener.local_addr().expect("tap address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut c_in, mut c_out) = (client.try_clone().expect("clone"), client);
                let (mut s_in, mut s_out) = (server.try_clone().expect("clone"), server);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Recorded before the client can see it: once a client has its
                        // answer, the recording holds it.
                        record
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        Tap { addr, seen }
    }

    /// Everything recorded since the last take.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture: a seeded database, a gateway in front of it, a tap in front of the gateway.
// ---------------------------------------------------------------------------------------------

struct Fx {
    db: String,
    _gw: Gateway,
    tap: Tap,
    /// Probes that went wrong, reported together at the end of the test.
    failures: Mutex<Vec<String>>,
    probes: Mutex<usize>,
}

fn fixture(db: &str, mode: &'static str) -> Fx {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(APP_USER, APP_PASSWORD, db, SEED)
            .expect("seeding the masking database");
    });
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            ..GatewayOptions::default()
        },
    );
    let tap = Tap::new(gw.addr);
    Fx {
        db: db.into(),
        _gw: gw,
        tap,
        failures: Mutex::new(Vec::new()),
        probes: Mutex::new(0),
    }
}

/// What a probe accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Exactly this many rows, nothing leaked.
    Rows(usize),
    /// Rows with nothing leaked, or refused by the gateway (deny or fail closed).
    RowsOrRefused,
    /// Refused by the gateway.
    Refused,
    /// Any error (from the database or the gateway), nothing leaked.
    Error,
}

/// How a statement ended.
#[derive(Debug)]
enum Outcome {
    Rows(usize),
    Error { code: String, message: String },
}

/// The gateway's denial (42501; the database never returns it here, the backend user owns
/// every table) or its fail-closed error (a message starting `sluice:`).
fn is_refusal(code: &str, message: &str) -> bool {
    code == "42501" || message.starts_with("sluice:")
}

impl Fx {
    fn target(&self) -> PgTarget {
        PgTarget::new(self.tap.addr.port(), "agent", MASKED_TOKEN, CONN)
    }

    fn conn_str(&self) -> String {
        self.target().conn_str()
    }

    /// The superuser's answer on the database itself (not through the gateway).
    fn backend(&self, sql: &str) -> String {
        run_ok(&mut psql_cmd(&superuser_on(shared_pg(), &self.db), sql))
            .trim()
            .to_owned()
    }

    fn fail(&self, msg: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }

    /// Checks what the gateway sent since the last check; `what` names the probe.
    fn check_leaks(&self, what: &str) -> bool {
        match find_leak(&self.tap.take()) {
            Some(leak) => {
                self.fail(format!("{what}: LEAKED {leak}"));
                false
            }
            None => true,
        }
    }

    fn judge(&self, what: &str, outcome: Outcome, want: Want) {
        *self.probes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let leak_free = self.check_leaks(what);
        let ok = match (&outcome, want) {
            (Outcome::Rows(n), Want::Rows(w)) => *n == w,
            (Outcome::Rows(_), Want::RowsOrRefused) => true,
            (Outcome::Error { code, message }, Want::RowsOrRefused | Want::Refused) => {
                is_refusal(code, message)
            }
            (Outcome::Error { .. }, Want::Error) => true,
            _ => false,
        };
        if !ok && leak_free {
            self.fail(format!("{what}: wanted {want:?}, got {outcome:?}"));
        }
    }

    /// Runs `sql` in the simple protocol (text results) and judges it.
    async fn simple(&self, c: &Client, sql: &str, want: Want) {
        let outcome = match within(20, sql, c.simple_query(sql)).await {
            Ok(msgs) => Outcome::Rows(
                msgs.iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                    .count(),
            ),
            Err(e) => error_outcome(&e),
        };
        self.judge(&format!("simple `{sql}`"), outcome, want);
    }

    /// Runs `sql` in the extended protocol (binary results) and judges it.
    async fn extended(&self, c: &Client, sql: &str, want: Want) {
        let outcome = match within(20, sql, c.query(sql, &[])).await {
            Ok(rows) => Outcome::Rows(rows.len()),
            Err(e) => error_outcome(&e),
        };
        self.judge(&format!("extended `{sql}`"), outcome, want);
    }

    /// Both protocols.
    async fn both(&self, c: &Client, sql: &str, want: Want) {
        self.simple(c, sql, want).await;
        self.extended(c, sql, want).await;
    }

    /// `psql -c sql` through the tap: stdout, or stderr when it fails.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = psql_cmd(&self.target(), sql)
            .args(["-v", "VERBOSITY=verbose"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Panics listing every failed probe.
    fn finish(&self) {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let probes = *self.probes.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            failures.is_empty(),
            "{} of {} probes failed:\n  {}",
            failures.len(),
            probes,
            failures.join("\n  ")
        );
    }
}

/// `ERROR:  42501: message` (psql with VERBOSITY=verbose) as an outcome.
fn psql_error(stderr: &str) -> Outcome {
    let rest = stderr.trim().trim_start_matches("ERROR:  ");
    match rest.split_once(": ") {
        Some((code, message)) if code.len() == 5 => Outcome::Error {
            code: code.into(),
            message: message.into(),
        },
        _ => Outcome::Error {
            code: "psql".into(),
            message: rest.into(),
        },
    }
}

fn error_outcome(e: &tokio_postgres::Error) -> Outcome {
    Outcome::Error {
        code: sqlstate(e),
        message: e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    }
}

/// Text of the simple-protocol rows of `sql`, or panics.
async fn simple_rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    within(20, sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_owned))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Direct reads, aliases, expressions.
// ---------------------------------------------------------------------------------------------

#[test]
fn direct_columns_are_masked_with_their_strategies() {
    let fx = fixture("mask_direct", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT id, email, ssn, card, pin, salary, last_ip FROM customers ORDER BY id",
            "SELECT * FROM customers",
            "SELECT c.* FROM customers c",
            "SELECT customers.pin FROM public.customers",
            "SELECT PIN, Ssn FROM Public.Customers",
            "SELECT \"pin\", \"email\" FROM \"public\".\"customers\"",
            "SELECT /* pin */ pin -- ssn\n FROM customers",
            "SELECT pin FROM customers GROUP BY pin",
            "SELECT DISTINCT pin FROM customers",
            "SELECT pin, pin, ssn FROM customers",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }

        // sqlparser cannot parse these (a documented limit: unparsable text is denied unless
        // the policy sets allow_unparsed); whichever way, nothing leaks.
        for sql in ["TABLE customers", "SELECT pin FROM ONLY customers"] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }

        // What each strategy gives, in text.
        let rows = simple_rows(
            &c,
            "SELECT ssn, email, card, pin, salary, last_ip FROM customers ORDER BY id",
        )
        .await;
        fx.check_leaks("strategy check");
        let first = &rows[0];
        let ssn = first[0].as_deref().unwrap_or("");
        if !(ssn.ends_with("3921") && ssn != "512-48-3921") {
            fx.fail(format!("ssn partial keep_last 4: got {ssn:?}"));
        }
        if first[1].as_deref() != Some("****") {
            fx.fail(format!("email redact: got {:?}", first[1]));
        }
        if first[2].is_none() {
            fx.fail("card keyed hash: got NULL".into());
        }
        if let Some(s) = &first[4] {
            if s.parse::<i32>().is_err() {
                fx.fail(format!("salary hash must stay an integer: got {s:?}"));
            }
        }
        if first[5].is_some() {
            fx.fail(format!("last_ip null by type: got {:?}", first[5]));
        }
        // The core metrics count the rows that went through the masker.
        let metrics = fx._gw.dp.shared().render_metrics();
        let masked: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_rows_masked_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if masked < 3 {
            fx.fail(format!(
                "sluice_rows_masked_total is {masked} after masked reads"
            ));
        }
        // Tokens are deterministic (joins still work), and differ between values.
        let again = simple_rows(&c, "SELECT pin FROM customers ORDER BY id").await;
        fx.check_leaks("token check");
        let pins: Vec<_> = rows.iter().map(|r| r[3].clone()).collect();
        let again: Vec<_> = again.into_iter().map(|r| r[0].clone()).collect();
        if pins != again || pins[0] == pins[1] {
            fx.fail(format!(
                "tokenise must be deterministic and distinct: {pins:?} vs {again:?}"
            ));
        }

        // Binary results keep their types valid.
        match within(
            20,
            "binary",
            c.query(
                "SELECT salary, last_ip, pin FROM customers ORDER BY id",
                &[],
            ),
        )
        .await
        {
            Ok(rows) => {
                fx.check_leaks("binary types");
                for r in &rows {
                    match r.try_get::<_, Option<i32>>(0) {
                        Ok(Some(v)) if SALARIES.contains(&v) => {
                            fx.fail(format!("binary salary in clear: {v}"))
                        }
                        Ok(_) => {}
                        Err(e) => fx.fail(format!("binary salary no longer an int4: {e}")),
                    }
                    if let Err(e) = r.try_get::<_, Option<std::net::IpAddr>>(1) {
                        fx.fail(format!("binary inet no longer valid: {e}"));
                    }
                    if let Err(e) = r.try_get::<_, Option<String>>(2) {
                        fx.fail(format!("binary text no longer valid: {e}"));
                    }
                }
            }
            Err(e) => fx.fail(format!("binary query failed: {e:?}")),
        }
    });
    fx.finish();
}

#[test]
fn aliases_do_not_unmask() {
    let fx = fixture("mask_alias", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT ssn AS id, pin AS name, email AS note FROM customers",
            "SELECT pin AS \"Harmless Label\" FROM customers",
            "SELECT x FROM (SELECT pin AS x FROM customers) s",
            "SELECT t.f, t.d FROM customers AS t(a, b, c, d, e, f)",
            "SELECT s.a FROM (SELECT pin, id FROM customers) AS s(a, b)",
            "SELECT k.pin FROM customers k",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }
    });
    fx.finish();
}

#[test]
fn expressions_over_masked_columns_are_masked() {
    let fx = fixture("mask_expr", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT upper(pin), lower(email), upper(ssn) FROM customers",
            "SELECT pin || '' FROM customers",
            "SELECT 'x' || pin || 'y' FROM customers",
            "SELECT concat(pin, ''), concat_ws('-', pin, email) FROM customers",
            "SELECT substr(pin, 1, 40), substring(pin from 1), left(pin, 40) FROM customers",
            "SELECT replace(ssn, '-', ''), replace(card, ' ', '') FROM customers",
            "SELECT reverse(pin), reverse(ssn) FROM customers",
            "SELECT pin::bytea, ssn::bytea FROM customers",
            "SELECT encode(pin::bytea, 'hex'), upper(encode(pin::bytea, 'hex')) FROM customers",
            "SELECT encode(convert_to(pin, 'UTF8'), 'base64') FROM customers",
            "SELECT md5(pin), md5(ssn) FROM customers",
            "SELECT pin::text, pin::varchar(40), CAST(pin AS char(30)) FROM customers",
            "SELECT format('%s', pin), format('%I', pin) FROM customers",
            "SELECT translate(pin, 'k', 'k'), initcap(ssn), btrim(pin), lpad(pin, 40) FROM customers",
            "SELECT quote_literal(pin), quote_ident(pin) FROM customers",
            "SELECT salary + 0, salary::text, salary * 1 FROM customers",
            "SELECT host(last_ip), last_ip::text, text(last_ip) FROM customers",
            "SELECT (pin), COALESCE(pin, 'x'), NULLIF(pin, 'x'), GREATEST(pin, '') FROM customers",
            "SELECT pin COLLATE \"C\" FROM customers",
            "SELECT to_json(pin), to_jsonb(ssn)::text FROM customers",
            "SELECT ARRAY[pin], ARRAY[ssn]::text FROM customers",
            "SELECT (SELECT pin) FROM customers",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }
        for sql in [
            "SELECT CASE WHEN true THEN pin END FROM customers",
            "SELECT CASE id WHEN 1 THEN pin ELSE email END FROM customers",
            "SELECT CASE WHEN pin IS NOT NULL THEN 'x' || pin ELSE 'none' END FROM customers",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }
    });
    fx.finish();
}

#[test]
fn aggregates_and_windows_are_masked_or_refused() {
    let fx = fixture("mask_agg", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT string_agg(pin, ',') FROM customers",
            "SELECT array_agg(pin), array_agg(ssn)::text FROM customers",
            "SELECT json_agg(pin), jsonb_agg(ssn) FROM customers",
            "SELECT min(pin), max(ssn), min(salary), max(last_ip) FROM customers",
            "SELECT json_object_agg(id, pin) FROM customers",
            "SELECT array_to_string(array_agg(pin), ',') FROM customers",
            "SELECT string_agg(pin, ',') FILTER (WHERE id > 0) FROM customers",
            "SELECT mode() WITHIN GROUP (ORDER BY pin) FROM customers",
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY salary) FROM customers",
            "SELECT first_value(pin) OVER (ORDER BY id), lag(ssn) OVER (ORDER BY id) FROM customers",
            "SELECT string_agg(reverse(pin), '') OVER () FROM customers",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// Whole rows, JSON, CTEs, subqueries, set operations, views, set-returning functions.
// ---------------------------------------------------------------------------------------------

#[test]
fn whole_rows_and_json_are_masked_or_refused() {
    let fx = fixture("mask_rows", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT c FROM customers c",
            "SELECT c::text FROM customers c",
            "SELECT to_jsonb(c.*) FROM customers c",
            "SELECT row_to_json(c) FROM customers c",
            "SELECT to_json(c), to_jsonb(c)::text FROM customers c",
            "SELECT ROW(c.*) FROM customers c",
            "SELECT (c).pin FROM customers c",
            "SELECT json_build_object('p', pin, 's', ssn) FROM customers",
            "SELECT jsonb_build_array(pin, email) FROM customers",
            "SELECT row(pin, id) FROM customers",
            "SELECT (SELECT c2 FROM customers c2 WHERE c2.id = c.id) FROM customers c",
            "SELECT customers FROM customers",
            "SELECT array[c] FROM customers c",
            "SELECT j.key, j.value FROM customers c, jsonb_each_text(to_jsonb(c)) j",
            "SELECT to_jsonb(v) FROM customer_contacts v",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
    });
    fx.finish();
}

#[test]
fn ctes_subqueries_and_set_operations_are_masked() {
    let fx = fixture("mask_cte", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "WITH x AS (SELECT pin FROM customers) SELECT * FROM x",
            "WITH x(a) AS (SELECT pin FROM customers) SELECT a FROM x",
            "WITH x AS MATERIALIZED (SELECT pin, ssn FROM customers) SELECT upper(pin), ssn FROM x",
            "WITH a AS (SELECT pin AS p FROM customers), b AS (SELECT p AS q FROM a) SELECT q FROM b",
            "SELECT * FROM (SELECT pin FROM customers) s",
            "SELECT x.* FROM (SELECT * FROM customers) x",
            "SELECT (SELECT pin FROM customers c2 WHERE c2.id = c.id) FROM customers c",
            "SELECT name FROM customers UNION ALL SELECT pin FROM customers",
            "SELECT 'x' UNION ALL SELECT pin FROM customers WHERE id < 3",
            "SELECT pin FROM customers INTERSECT SELECT pin FROM customers",
            "SELECT pin FROM customers EXCEPT SELECT 'nothing'",
            "SELECT l.x FROM customers c, LATERAL (SELECT c.pin AS x) l",
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
            "SELECT * FROM customers c1 JOIN customers c2 USING (id)",
            "SELECT * FROM customers WHERE id IN (SELECT id FROM customers)",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
        for sql in [
            "WITH RECURSIVE r(n, p) AS (SELECT 1, pin FROM customers WHERE id = 1 \
             UNION ALL SELECT n + 1, p FROM r WHERE n < 3) SELECT p FROM r",
            "SELECT * FROM (VALUES ((SELECT pin FROM customers WHERE id = 1))) v(x)",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
    });
    fx.finish();
}

#[test]
fn views_are_masked_through_their_definition() {
    let fx = fixture("mask_view", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT * FROM customer_contacts",
            "SELECT pin_upper FROM customer_contacts",
            "SELECT email AS e, ssn AS s FROM customer_contacts",
            "SELECT lower(pin_upper) FROM customer_contacts",
            "SELECT v.* FROM customer_contacts v JOIN orders o ON o.customer_id = v.id",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
        fx.both(&c, "SELECT pin_upper FROM customer_contacts", Want::Rows(3))
            .await;
    });
    fx.finish();
}

#[test]
fn planner_statistics_are_refused_and_catalog_reads_pass() {
    let fx = fixture("mask_stats", "transaction");
    // pg_stats then holds customers' values (histogram bounds of every column).
    fx.backend("ANALYZE customers");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
            "SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE attname = 'pin'",
            "SELECT count(*) FROM pg_stats WHERE histogram_bounds::text LIKE '%kiwi%'",
            "SELECT * FROM pg_stats_ext",
        ] {
            fx.both(&c, sql, Want::Refused).await;
        }
        // `\d customers`-style catalog reads and information_schema still work.
        fx.both(
            &c,
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'customers' AND n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped",
            Want::Rows(9),
        )
        .await;
        fx.both(
            &c,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'customers'",
            Want::Rows(9),
        )
        .await;
    });
    fx.finish();
}

#[test]
fn predicates_on_a_column_whose_rule_denies_them_are_refused() {
    let fx = fixture("mask_predicates", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT id FROM customers WHERE salary > 900000",
            "SELECT id FROM customers WHERE salary BETWEEN 980000 AND 990000",
            "SELECT id FROM customers ORDER BY salary",
            "SELECT count(*) FROM customers GROUP BY salary",
            "SELECT o.id FROM orders o JOIN customers c ON c.salary = o.amount",
            "SELECT id, rank() OVER (ORDER BY salary) FROM customers",
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM customers WHERE salary > 900000)",
            "DELETE FROM customers WHERE salary > 2000000",
        ] {
            fx.both(&c, sql, Want::Refused).await;
        }
        // Other columns still choose rows, and salary itself is returned masked.
        fx.both(
            &c,
            "SELECT salary FROM customers WHERE id = 1",
            Want::Rows(1),
        )
        .await;
        fx.both(&c, "SELECT id FROM customers ORDER BY name", Want::Rows(3))
            .await;
    });
    assert_eq!(fx.backend("SELECT count(*) FROM customers"), "3");
    fx.finish();
}

#[test]
fn set_returning_functions_are_masked_or_refused() {
    let fx = fixture("mask_srf", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "SELECT unnest(array[ssn, pin]) FROM customers",
            "SELECT * FROM unnest(array(SELECT pin FROM customers))",
            "SELECT u FROM customers, unnest(array[pin]) u",
            "SELECT regexp_split_to_table(pin, 'zz') FROM customers",
            "SELECT string_to_table(pin, 'zz') FROM customers",
            "SELECT generate_series(1, 1), pin FROM customers",
            "SELECT jsonb_array_elements_text(jsonb_agg(pin)) FROM customers",
            "SELECT unnest(regexp_match(pin, '.*')) FROM customers",
            "SELECT regexp_matches(pin, '(.*)') FROM customers",
            "SELECT * FROM ROWS FROM (unnest((SELECT array_agg(pin) FROM customers)))",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// RETURNING, cursors, prepared statements, portals, COPY.
// ---------------------------------------------------------------------------------------------

#[test]
fn returning_rows_are_masked() {
    let fx = fixture("mask_returning", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "UPDATE customers SET name = name WHERE id = 1 RETURNING pin, ssn, email",
            "UPDATE customers SET name = name WHERE id = 1 RETURNING *",
            "UPDATE customers SET name = name WHERE id = 1 RETURNING upper(pin) AS x",
            "DELETE FROM customers WHERE id = 999 RETURNING *",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
        // A DELETE's rows, rolled back afterwards.
        fx.simple(
            &c,
            "BEGIN; DELETE FROM customers WHERE id = 3 RETURNING *; ROLLBACK",
            Want::RowsOrRefused,
        )
        .await;
        fx.simple(
            &c,
            "INSERT INTO scratch SELECT id, 'x' FROM customers \
             RETURNING (SELECT pin FROM customers c WHERE c.id = scratch.id)",
            Want::RowsOrRefused,
        )
        .await;
        fx.simple(
            &c,
            "WITH u AS (UPDATE customers SET name = name WHERE id = 2 RETURNING pin) SELECT * FROM u",
            Want::RowsOrRefused,
        )
        .await;
    });
    assert_eq!(fx.backend("SELECT count(*) FROM customers"), "3");
    fx.finish();
}

#[test]
fn cursors_are_masked() {
    let fx = fixture("mask_cursor", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        fx.simple(
            &c,
            "BEGIN; DECLARE cur CURSOR FOR SELECT pin, ssn FROM customers; FETCH ALL FROM cur; COMMIT",
            Want::Rows(3),
        )
        .await;
        // Statement by statement inside a transaction, with name folding and MOVE.
        within(10, "begin", c.batch_execute("BEGIN")).await.unwrap();
        fx.simple(
            &c,
            "DECLARE Cur2 CURSOR FOR SELECT upper(pin), email FROM customers ORDER BY id",
            Want::Rows(0),
        )
        .await;
        fx.simple(&c, "FETCH 1 FROM CUR2", Want::Rows(1)).await;
        fx.extended(&c, "FETCH NEXT FROM cur2", Want::Rows(1)).await;
        fx.extended(&c, "FETCH ALL FROM cur2", Want::Rows(1)).await;
        fx.simple(
            &c,
            "DECLARE \"Quoted\" SCROLL CURSOR FOR SELECT c FROM customers c",
            Want::RowsOrRefused,
        )
        .await;
        fx.simple(&c, "FETCH ALL FROM \"Quoted\"", Want::RowsOrRefused)
            .await;
        fx.simple(&c, "FETCH PRIOR FROM \"Quoted\"", Want::RowsOrRefused)
            .await;
        within(10, "commit", c.batch_execute("COMMIT")).await.ok();
        // sqlparser has no MOVE: the guardrail denies it as unparsable (documented limit).
        fx.simple(
            &c,
            "BEGIN; DECLARE m CURSOR FOR SELECT pin FROM customers; MOVE 1 IN m; FETCH ALL FROM m; COMMIT",
            Want::RowsOrRefused,
        )
        .await;
        // A cursor the gateway never saw declared fails closed (here it does not exist
        // either; the point is that nothing is returned in clear).
        fx.simple(&c, "BEGIN; FETCH ALL FROM nosuch; COMMIT", Want::Error)
            .await;
    });
    fx.finish();
}

#[test]
fn prepared_statements_are_masked() {
    // Session pooling: SQL-level prepared statements live on the server connection.
    let fx = fixture("mask_prepare", "session");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        fx.simple(
            &c,
            "PREPARE p AS SELECT pin, ssn FROM customers",
            Want::RowsOrRefused,
        )
        .await;
        fx.simple(&c, "EXECUTE p", Want::RowsOrRefused).await;
        fx.extended(&c, "EXECUTE p", Want::RowsOrRefused).await;
        fx.simple(
            &c,
            "PREPARE q(int) AS SELECT upper(pin) FROM customers WHERE id = $1",
            Want::RowsOrRefused,
        )
        .await;
        fx.simple(&c, "EXECUTE q(1)", Want::RowsOrRefused).await;
        // Re-prepared under the same name with a different shape.
        fx.simple(&c, "DEALLOCATE p", Want::RowsOrRefused).await;
        fx.simple(
            &c,
            "PREPARE p AS SELECT id FROM customers; EXECUTE p",
            Want::RowsOrRefused,
        )
        .await;

        // Protocol-level prepared statements, reused.
        match within(
            10,
            "prepare",
            c.prepare("SELECT pin, email FROM customers WHERE id = $1"),
        )
        .await
        {
            Ok(stmt) => {
                for id in 1..=3i32 {
                    let r = within(10, "run", c.query(&stmt, &[&id])).await;
                    let n = r.as_ref().map_or(0, Vec::len);
                    fx.judge(
                        &format!("prepared statement with id {id}"),
                        match r {
                            Ok(_) => Outcome::Rows(n),
                            Err(e) => error_outcome(&e),
                        },
                        Want::Rows(1),
                    );
                }
            }
            Err(e) => fx.fail(format!("prepare: {e:?}")),
        }
    });
    fx.finish();
}

#[test]
fn portals_with_row_limits_and_pipelines_are_masked() {
    let fx = fixture("mask_portal", "transaction");
    runtime().block_on(async {
        let mut c = connect(&fx.conn_str()).await;
        {
            let tx = within(10, "begin", c.transaction()).await.unwrap();
            let stmt = within(
                10,
                "prepare",
                tx.prepare("SELECT pin, name FROM customers ORDER BY id"),
            )
            .await
            .unwrap();
            let portal = within(10, "bind", tx.bind(&stmt, &[])).await.unwrap();
            let mut names = Vec::new();
            for step in 0..4 {
                match within(10, "portal", tx.query_portal(&portal, 1)).await {
                    Ok(rows) => {
                        names.extend(rows.iter().map(|r| r.get::<_, String>(1)));
                        fx.judge(
                            &format!("portal step {step}"),
                            Outcome::Rows(rows.len()),
                            Want::Rows(usize::from(step < 3)),
                        );
                    }
                    Err(e) => fx.judge(
                        &format!("portal step {step}"),
                        error_outcome(&e),
                        Want::Rows(1),
                    ),
                }
            }
            if names != ["Alice Adams", "Bob Brown", "Carol Chen"] {
                fx.fail(format!("portal names must pass in clear: {names:?}"));
            }
            within(10, "commit", tx.commit()).await.unwrap();
        }
        // Pipelined: tokio-postgres sends these before reading any answer.
        let (a, b, d) = within(20, "pipeline", async {
            futures::join!(
                c.query("SELECT id FROM orders ORDER BY id", &[]),
                c.query("SELECT pin, ssn FROM customers ORDER BY id", &[]),
                c.query("SELECT name FROM customers ORDER BY id", &[]),
            )
        })
        .await;
        let leak_free = fx.check_leaks("pipelined queries");
        match (a, b, d) {
            (Ok(a), Ok(b), Ok(d)) => {
                if a.len() != 3 || b.len() != 3 || d.len() != 3 {
                    fx.fail("pipelined queries: wrong row counts".into());
                }
                let names: Vec<String> = d.iter().map(|r| r.get(0)).collect();
                if leak_free && names != ["Alice Adams", "Bob Brown", "Carol Chen"] {
                    fx.fail(format!("pipelined names must pass in clear: {names:?}"));
                }
            }
            other => fx.fail(format!("pipelined queries failed: {other:?}")),
        }
        // Several statements in one simple Query: masking follows each result.
        let sets = simple_rows(
            &c,
            "SELECT id FROM orders ORDER BY id; SELECT pin FROM customers ORDER BY id; \
             SELECT name FROM customers ORDER BY id",
        )
        .await;
        fx.check_leaks("multi-statement query");
        let flat: Vec<Option<String>> = sets.into_iter().map(|mut r| r.remove(0)).collect();
        if flat.len() != 9
            || flat[0].as_deref() != Some("10")
            || flat[6].as_deref() != Some("Alice Adams")
        {
            fx.fail(format!("multi-statement results: {flat:?}"));
        }
    });
    fx.finish();
}

#[test]
fn copy_out_is_masked() {
    let fx = fixture("mask_copy", "transaction");
    for sql in [
        "COPY customers TO STDOUT",
        "COPY (SELECT pin, ssn, email FROM customers) TO STDOUT",
        "COPY (SELECT upper(pin) FROM customers) TO STDOUT",
        "COPY customers (id, pin) TO STDOUT (DELIMITER '|')",
        "COPY customers TO STDOUT (FORMAT csv)",
        "COPY customers TO STDOUT (FORMAT csv, HEADER, QUOTE '''', FORCE_QUOTE *)",
        "COPY customers TO STDOUT (FORMAT binary)",
        "COPY (SELECT * FROM customer_contacts) TO STDOUT",
        "COPY (SELECT c FROM customers c) TO STDOUT",
    ] {
        let out = fx.psql(sql);
        fx.judge(
            &format!("psql `{sql}`"),
            match &out {
                Ok(text) => Outcome::Rows(text.lines().count()),
                Err(e) => psql_error(e),
            },
            Want::RowsOrRefused,
        );
    }
    // Over-blocking: a table without masked columns copies in clear.
    match fx.psql("COPY orders TO STDOUT") {
        Ok(text) if text.contains("first order") && text.lines().count() == 3 => {}
        other => fx.fail(format!("COPY orders TO STDOUT must pass: {other:?}")),
    }
    fx.check_leaks("COPY orders");

    // The extended protocol (tokio-postgres sends COPY through Parse/Bind/Execute).
    runtime().block_on(async {
        use futures::TryStreamExt;
        let c = connect(&fx.conn_str()).await;
        for (sql, must_pass) in [
            ("COPY (SELECT pin, ssn FROM customers) TO STDOUT", false),
            ("COPY customers TO STDOUT", false),
            ("COPY orders TO STDOUT", true),
        ] {
            let got: Result<Vec<bytes::Bytes>, _> = within(20, sql, async {
                let s = c.copy_out(sql).await?;
                s.try_collect().await
            })
            .await;
            let what = format!("copy_out `{sql}`");
            match got {
                Ok(chunks) => {
                    let text: Vec<u8> = chunks.concat();
                    let lines = text.split(|b| *b == b'\n').count().saturating_sub(1);
                    fx.judge(&what, Outcome::Rows(lines), Want::RowsOrRefused);
                    if must_pass && lines != 3 {
                        fx.fail(format!("{what}: wanted 3 lines, got {lines}"));
                    }
                }
                Err(e) => {
                    let o = error_outcome(&e);
                    fx.judge(
                        &what,
                        o,
                        if must_pass {
                            Want::Rows(3)
                        } else {
                            Want::RowsOrRefused
                        },
                    );
                }
            }
        }
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// Side channels: errors, notifications, writes elsewhere, row limits.
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_do_not_echo_masked_values() {
    let fx = fixture("mask_errors", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            // Class 22: data exceptions quoting the value.
            "SELECT ssn::int FROM customers",
            "SELECT pin::int FROM customers",
            "SELECT pin::numeric FROM customers",
            "SELECT pin::uuid FROM customers",
            "SELECT pin::date FROM customers",
            "SELECT ('x' || reverse(pin))::int FROM customers",
            "SELECT 1 FROM customers WHERE pin::int > 0",
            // A value holding a quote must not split the quoted span.
            "SELECT ('\"' || pin)::int FROM customers",
            "SELECT ('a\"' || pin || '\"b')::int FROM customers",
            "SELECT email::int FROM customers",
            // Class 22 with the value in DETAIL or CONTEXT, unquoted.
            "SELECT pin::json FROM customers",
            "SELECT ('\"' || pin)::json FROM customers",
            "SELECT xmlparse(document pin) FROM customers",
            // Other classes that quote a value taken as a name.
            "SELECT pin::regclass FROM customers",
            "SELECT 1 FROM customers WHERE pin::regclass IS NULL",
            "SELECT pin::regtype FROM customers",
            "SELECT current_setting(pin) FROM customers",
            "SELECT nextval(pin) FROM customers",
            "SELECT ('\"' || pin)::regclass FROM customers",
        ] {
            fx.both(&c, sql, Want::Error).await;
        }
        // Class 23: the failing row and the duplicate key.
        for sql in [
            "UPDATE customers SET name = NULL WHERE id = 1",
            "UPDATE customers SET pin = (SELECT pin FROM customers c2 WHERE c2.id = 2) WHERE id = 1",
        ] {
            fx.both(&c, sql, Want::Error).await;
        }
    });
    assert_eq!(
        fx.backend("SELECT name, pin FROM customers WHERE id = 1"),
        "Alice Adams|kiwi-orchard-7731"
    );
    fx.finish();
}

#[test]
fn notifications_are_scrubbed() {
    let fx = fixture("mask_notify", "session");
    runtime().block_on(async {
        let (listener, mut rx) = connect_with_messages(&fx.conn_str()).await;
        within(10, "listen", listener.batch_execute("LISTEN ch"))
            .await
            .unwrap();
        let c = connect(&fx.conn_str()).await;
        for (sql, want) in [
            (
                "NOTIFY ch, 'write to alice.adams@example.com'",
                Want::Rows(0),
            ),
            (
                "SELECT pg_notify('ch', email) FROM customers",
                Want::RowsOrRefused,
            ),
            (
                "SELECT pg_notify('ch', 'ssn ' || ssn) FROM customers",
                Want::RowsOrRefused,
            ),
            (
                "SELECT pg_notify('ch', pin) FROM customers",
                Want::RowsOrRefused,
            ),
            (
                "SELECT pg_notify('ch', reverse(ssn)) FROM customers",
                Want::RowsOrRefused,
            ),
            (
                "SELECT 1 FROM customers WHERE pg_notify('ch', pin) IS NULL",
                Want::RowsOrRefused,
            ),
        ] {
            fx.simple(&c, sql, want).await;
        }
        // A plain payload passes unchanged, and marks the end.
        within(10, "notify end", c.batch_execute("NOTIFY ch, 'the end'"))
            .await
            .unwrap();
        let mut payloads = Vec::new();
        let end = within(10, "waiting for the last notification", async {
            while let Some(m) = rx.recv().await {
                if let Async::Notification(_, p) = m {
                    if p == "the end" {
                        return true;
                    }
                    payloads.push(p);
                }
            }
            false
        })
        .await;
        if !end {
            fx.fail("the plain notification never arrived".into());
        }
        fx.check_leaks(&format!("notifications {payloads:?}"));
    });
    fx.finish();
}

#[test]
fn writing_masked_values_elsewhere_is_denied() {
    let fx = fixture("mask_writes", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        for sql in [
            "INSERT INTO scratch SELECT id, pin FROM customers",
            "INSERT INTO scratch (v) SELECT upper(ssn) FROM customers",
            "INSERT INTO scratch SELECT 1, string_agg(pin, ',') FROM customers",
            "WITH s AS (SELECT pin FROM customers) INSERT INTO scratch SELECT 1, pin FROM s",
            "INSERT INTO scratch SELECT id, note FROM customers UNION ALL SELECT id, pin FROM customers",
            "CREATE TABLE leak1 AS SELECT pin FROM customers",
            "SELECT pin INTO leak2 FROM customers",
            "CREATE TABLE leak3 AS TABLE customers",
            "CREATE MATERIALIZED VIEW leak4 AS SELECT pin FROM customers",
            "CREATE TEMP TABLE leak5 AS SELECT pin FROM customers",
            "UPDATE customers SET note = pin WHERE id = 1",
            "UPDATE orders SET note = (SELECT pin FROM customers WHERE id = 1) WHERE id = 10",
            "UPDATE orders o SET note = c.ssn FROM customers c WHERE c.id = o.customer_id",
            "INSERT INTO orders SELECT 100 + id, id, 0, ssn FROM customers",
            "INSERT INTO scratch VALUES (1, (SELECT pin FROM customers WHERE id = 1))",
        ] {
            fx.simple(&c, sql, Want::Refused).await;
        }
        // Same through the extended protocol.
        fx.extended(&c, "INSERT INTO scratch SELECT id, pin FROM customers", Want::Refused)
            .await;
        fx.extended(&c, "UPDATE customers SET note = pin WHERE id = 2", Want::Refused)
            .await;
    });
    // Nothing was written (checked on the database).
    let state = fx.backend(
        "SELECT (SELECT count(*) FROM scratch), \
                (SELECT count(*) FROM pg_class WHERE relname LIKE 'leak%'), \
                (SELECT count(*) FROM orders), \
                (SELECT string_agg(coalesce(note, '-'), ',' ORDER BY id) FROM orders), \
                (SELECT string_agg(coalesce(note, '-'), ',' ORDER BY id) FROM customers)",
    );
    assert_eq!(
        state,
        "0|0|3|first order,gift,callback 415-867-5309|\
         prefers mail to alice.home@example.org,VIP since 2019,no notes",
        "the database must hold no copy of a masked value"
    );
    fx.finish();
}

#[test]
fn max_rows_truncates_with_a_warning() {
    let fx = fixture("mask_max_rows", "transaction");
    runtime().block_on(async {
        let (c, mut rx) = connect_with_messages(&fx.conn_str()).await;
        fx.simple(&c, "SELECT id FROM big", Want::Rows(1000)).await;
        fx.extended(&c, "SELECT id FROM big", Want::Rows(1000))
            .await;
        fx.simple(&c, "SELECT id FROM big LIMIT 10", Want::Rows(10))
            .await;
        // Aggregates see every row; only what is returned is limited.
        let n = simple_rows(&c, "SELECT count(*) FROM big").await;
        if n[0][0].as_deref() != Some("1500") {
            fx.fail(format!("count(*) over big: {n:?}"));
        }
        // The CommandComplete reports the rows sent.
        let msgs = within(10, "tag", c.simple_query("SELECT id FROM big"))
            .await
            .unwrap();
        let tag = msgs.iter().find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        });
        if tag != Some(1000) {
            fx.fail(format!("CommandComplete after truncation: {tag:?}"));
        }
        // A portal read in pieces is limited across the pieces.
        let mut total = 0;
        {
            let mut c2 = connect(&fx.conn_str()).await;
            let tx = within(10, "begin", c2.transaction()).await.unwrap();
            let stmt = within(10, "prepare", tx.prepare("SELECT id FROM big"))
                .await
                .unwrap();
            let portal = within(10, "bind", tx.bind(&stmt, &[])).await.unwrap();
            for _ in 0..4 {
                match within(10, "portal", tx.query_portal(&portal, 600)).await {
                    Ok(rows) => total += rows.len(),
                    Err(_) => break,
                }
            }
            let _ = tx.rollback().await;
        }
        if total != 1000 {
            fx.fail(format!(
                "a portal read 600 rows at a time returned {total} rows"
            ));
        }
        fx.check_leaks("max_rows");
        let mut warned = false;
        while let Ok(m) = rx.try_recv() {
            if let Async::Notice(n) = m {
                warned |= n.contains("truncated to 1000 rows");
            }
        }
        if !warned {
            fx.fail("no truncation WARNING reached the client".into());
        }
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// DDL done directly on the database, not through the gateway.
// ---------------------------------------------------------------------------------------------

/// Drops `customers` (and what depends on it) and creates it again with the seeded rows, as a
/// migration tool or a restore would: the table gets a new OID the gateway has never seen.
const RECREATE_CUSTOMERS: &str = "
BEGIN;
DROP TABLE customers CASCADE;
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text, ssn text, card text,
    pin text UNIQUE, salary int, last_ip inet, note text);
INSERT INTO customers VALUES
 (1, 'Alice Adams', 'alice.adams@example.com', '512-48-3921', '4539 1488 0343 6467',
  'kiwi-orchard-7731', 987654, '203.0.113.77', 'prefers mail to alice.home@example.org'),
 (2, 'Bob Brown', 'bob.brown@example.net', '287-65-4310', '5555555555554444',
  'lemon-harbor-0458', 876543, '198.51.100.23', 'VIP since 2019'),
 (3, 'Carol Chen', 'carol.chen@example.com', '401-22-7788', '378282246310005',
  'mango-summit-2290', 765432, '192.0.2.199', 'no notes');
ALTER TABLE customers OWNER TO app;
COMMIT;
";

#[test]
fn a_table_recreated_elsewhere_is_masked_at_once() {
    let fx = fixture("mask_recreated", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        let sql = "SELECT id, ssn, pin, salary FROM customers ORDER BY id";
        // The gateway's catalog knows the table as it was.
        fx.both(&c, sql, Want::Rows(3)).await;
        fx.backend(RECREATE_CUSTOMERS);
        // At once, on the same session (same core, same catalog): masked rows, no error.
        fx.simple(&c, sql, Want::Rows(3)).await;
        fx.simple(&c, "SELECT * FROM customers", Want::Rows(3))
            .await;
        let rows = simple_rows(&c, sql).await;
        fx.check_leaks("recreated, strategies");
        let ssn = rows[0][1].as_deref().unwrap_or("");
        if !(ssn.ends_with("3921") && ssn != "512-48-3921") {
            fx.fail(format!("ssn after recreation: got {ssn:?}"));
        }
        fx.backend(RECREATE_CUSTOMERS);
        fx.extended(&c, sql, Want::Rows(3)).await;
        fx.extended(&c, "SELECT * FROM customers", Want::Rows(3))
            .await;
        // Clients on other cores (new sessions) too, in both protocols.
        fx.backend(RECREATE_CUSTOMERS);
        for _ in 0..4 {
            let c = connect(&fx.conn_str()).await;
            fx.both(&c, sql, Want::Rows(3)).await;
        }
        // Several recreations in a row, each read at once.
        for _ in 0..3 {
            fx.backend(RECREATE_CUSTOMERS);
            fx.both(&c, "SELECT pin, upper(ssn) FROM customers", Want::Rows(3))
                .await;
        }
    });
    fx.finish();
}

#[test]
fn a_column_renamed_elsewhere_is_masked_under_its_new_name() {
    let fx = fixture("mask_renamed", "transaction");
    // `public.accounts.secret` is masked (redact); `code` is not.
    fx.backend(
        "CREATE TABLE accounts (id int, code text); \
         INSERT INTO accounts VALUES (1, 'kiwi-orchard-7731'), (2, 'lemon-harbor-0458'); \
         ALTER TABLE accounts OWNER TO app;",
    );
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        // Until the catalog has seen the table, the gateway refuses it or sees it at once.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        fx.both(&c, "SELECT id FROM accounts", Want::Rows(2)).await;
        fx.backend("ALTER TABLE accounts RENAME COLUMN code TO secret");
        // The catalog's fingerprint is checked at most once a second.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        for sql in [
            "SELECT secret FROM accounts",
            "SELECT * FROM accounts",
            "SELECT id, upper(secret) FROM accounts",
        ] {
            fx.both(&c, sql, Want::Rows(2)).await;
        }
        let rows = simple_rows(&c, "SELECT secret FROM accounts ORDER BY id").await;
        fx.check_leaks("renamed, strategy");
        if rows[0][0].as_deref() != Some("****") {
            fx.fail(format!("secret after the rename: got {:?}", rows[0][0]));
        }
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// User-defined functions whose bodies read masked columns.
// ---------------------------------------------------------------------------------------------

const FUNCTIONS: &str = "
CREATE FUNCTION get_pin(int) RETURNS text LANGUAGE sql STABLE
    AS 'SELECT pin FROM customers WHERE id = $1';
CREATE FUNCTION get_pin_definer(int) RETURNS text LANGUAGE sql SECURITY DEFINER
    AS 'SELECT upper(pin) || ssn FROM customers WHERE id = $1';
CREATE FUNCTION all_customers() RETURNS SETOF customers LANGUAGE sql
    AS 'SELECT * FROM customers';
CREATE FUNCTION pins() RETURNS TABLE (p text) LANGUAGE sql
    AS 'SELECT pin FROM customers';
CREATE FUNCTION pl_pin(int) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
    AS $$BEGIN RETURN (SELECT pin FROM customers WHERE id = $1); END$$;
CREATE FUNCTION pl_customers() RETURNS SETOF customers LANGUAGE plpgsql
    AS $$BEGIN RETURN QUERY SELECT * FROM customers; END$$;
CREATE FUNCTION trusted_label(int) RETURNS text LANGUAGE plpgsql
    AS $$BEGIN RETURN 'label ' || $1; END$$;
CREATE FUNCTION order_note(int) RETURNS text LANGUAGE sql
    AS 'SELECT note FROM orders WHERE id = $1';
";

#[test]
fn functions_reading_masked_columns_are_masked_or_refused() {
    let fx = fixture("mask_functions", "transaction");
    fx.backend(FUNCTIONS);
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        // LANGUAGE sql bodies are traced, scalar or set-returning, definer or not.
        for sql in [
            "SELECT get_pin(1)",
            "SELECT public.get_pin(id) FROM orders",
            "SELECT get_pin_definer(2)",
            "SELECT length(get_pin(1)) > 0, get_pin(3)",
            "SELECT p FROM pins()",
            "SELECT * FROM pins()",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
        fx.both(&c, "SELECT get_pin(1)", Want::Rows(1)).await;
        // SETOF a masked table masks as the table does.
        for sql in [
            "SELECT * FROM all_customers()",
            "SELECT pin, ssn, salary FROM all_customers()",
            "SELECT c.email FROM all_customers() c",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }
        fx.both(&c, "SELECT all_customers()", Want::RowsOrRefused)
            .await;
        // Bodies the gateway cannot read are refused.
        for sql in ["SELECT pl_pin(1)", "SELECT id, pl_pin(id) FROM orders"] {
            fx.both(&c, sql, Want::Refused).await;
        }
        // Whatever its language, a function returning a masked table's rows masks by type.
        fx.both(&c, "SELECT * FROM pl_customers()", Want::Rows(3))
            .await;
        // Unless the policy trusts them.
        fx.both(&c, "SELECT trusted_label(7)", Want::Rows(1)).await;
        let rows = simple_rows(&c, "SELECT trusted_label(7)").await;
        if rows[0][0].as_deref() != Some("label 7") {
            fx.fail(format!("trusted function: got {:?}", rows[0][0]));
        }
        // Clean bodies and built-ins are unaffected.
        let rows = simple_rows(&c, "SELECT order_note(11)").await;
        if rows[0][0].as_deref() != Some("gift") {
            fx.fail(format!(
                "a function over clean columns: got {:?}",
                rows[0][0]
            ));
        }
        for sql in [
            "SELECT upper(name), length(note), now() IS NOT NULL FROM customers",
            "SELECT md5('x'), generate_series(1, 3)",
        ] {
            fx.both(&c, sql, Want::Rows(3)).await;
        }
        fx.both(
            &c,
            "SELECT coalesce(name, 'x') FROM customers",
            Want::Rows(3),
        )
        .await;
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// What must still pass, unmasked.
// ---------------------------------------------------------------------------------------------

#[test]
fn ordinary_statements_pass_unmasked() {
    let fx = fixture("mask_ordinary", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        let expect = |what: &str, got: Vec<Vec<Option<String>>>, want: &[&[&str]]| {
            let got: Vec<Vec<String>> = got
                .into_iter()
                .map(|r| r.into_iter().map(|v| v.unwrap_or_default()).collect())
                .collect();
            let want: Vec<Vec<String>> = want
                .iter()
                .map(|r| r.iter().map(|s| s.to_string()).collect())
                .collect();
            if got != want {
                fx.fail(format!("{what}: wanted {want:?}, got {got:?}"));
            }
        };
        for (sql, want) in [
            (
                "SELECT id, name FROM customers ORDER BY id",
                &[&["1", "Alice Adams"][..], &["2", "Bob Brown"], &["3", "Carol Chen"]][..],
            ),
            (
                "SELECT o.id, c.name, o.amount FROM orders o JOIN customers c \
                 ON c.id = o.customer_id WHERE o.id < 12 ORDER BY o.id",
                &[&["10", "Alice Adams", "250"][..], &["11", "Bob Brown", "100"]],
            ),
            (
                "SELECT count(ssn), count(DISTINCT pin), count(*) FILTER (WHERE email LIKE '%@%') \
                 FROM customers",
                &[&["3", "3", "3"][..]],
            ),
            (
                "SELECT note FROM customers WHERE id = 2",
                &[&["VIP since 2019"][..]],
            ),
            (
                "SELECT name FROM customer_contacts ORDER BY id",
                &[&["Alice Adams"][..], &["Bob Brown"], &["Carol Chen"]],
            ),
            (
                "SELECT id, amount, note FROM orders WHERE id IN (10, 11) ORDER BY id",
                &[&["10", "250", "first order"][..], &["11", "100", "gift"]],
            ),
            ("SELECT 1 + 1, 'hello'", &[&["2", "hello"][..]]),
            // Known limit, by design of column masking: WHERE, ORDER BY and joins on masked
            // columns are not prevented, so a client can test guesses against a masked value
            // (here it learns that Alice's pin is kiwi-orchard-7731 and her ssn starts 512).
            (
                "SELECT id FROM customers WHERE pin = 'kiwi-orchard-7731'",
                &[&["1"][..]],
            ),
            (
                "SELECT id FROM customers WHERE ssn LIKE '512%'",
                &[&["1"][..]],
            ),
            (
                "SELECT id FROM customers ORDER BY pin DESC",
                &[&["3"][..], &["2"], &["1"]],
            ),
        ] {
            let got = within(20, sql, c.simple_query(sql)).await;
            fx.check_leaks(sql);
            match got {
                Ok(msgs) => expect(
                    sql,
                    msgs.into_iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::Row(r) => Some(
                                (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect(),
                            ),
                            _ => None,
                        })
                        .collect(),
                    want,
                ),
                Err(e) => fx.fail(format!("{sql}: over-blocked: {e:?}")),
            }
        }
        // Binary results of unmasked columns come through unchanged.
        match within(
            20,
            "binary",
            c.query("SELECT c.id, c.name, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = 10", &[]),
        )
        .await
        {
            Ok(rows) if rows.len() == 1
                && rows[0].get::<_, i32>(0) == 1
                && rows[0].get::<_, String>(1) == "Alice Adams"
                && rows[0].get::<_, i32>(2) == 250 => {}
            other => fx.fail(format!("binary unmasked join: {other:?}")),
        }
        match within(
            20,
            "binary params",
            c.query("SELECT name FROM customers WHERE id = $1", &[&2i32]),
        )
        .await
        {
            Ok(rows) if rows.len() == 1 && rows[0].get::<_, String>(0) == "Bob Brown" => {}
            other => fx.fail(format!("binary with a parameter: {other:?}")),
        }
        // Writes of ordinary values work, and read back in clear.
        for sql in [
            "INSERT INTO scratch VALUES (1, 'plain value')",
            "UPDATE orders SET amount = amount + 1 WHERE id = 11",
        ] {
            if let Err(e) = within(10, sql, c.batch_execute(sql)).await {
                fx.fail(format!("{sql}: over-blocked: {e:?}"));
            }
        }
        let got = simple_rows(&c, "SELECT v FROM scratch").await;
        expect("scratch", got, &[&["plain value"]]);
        fx.check_leaks("ordinary writes");
    });
    assert_eq!(fx.backend("SELECT amount FROM orders WHERE id = 11"), "101");
    fx.finish();
}

#[test]
fn content_detectors_scrub_unmasked_columns() {
    let fx = fixture("mask_detectors", "transaction");
    runtime().block_on(async {
        let c = connect(&fx.conn_str()).await;
        // `note` and `orders.note` are not masked by name; detectors find what they hold.
        for sql in [
            "SELECT note FROM customers ORDER BY id",
            "SELECT note FROM orders ORDER BY id",
            "SELECT string_agg(note, ' ') FROM orders",
        ] {
            fx.both(&c, sql, Want::RowsOrRefused).await;
        }
        let notes = simple_rows(&c, "SELECT note FROM orders ORDER BY id").await;
        fx.check_leaks("orders notes");
        let first = notes.first().and_then(|r| r[0].clone());
        if first.as_deref() != Some("first order") {
            fx.fail(format!("detectors must leave plain text alone: {first:?}"));
        }
    });
    fx.finish();
}
