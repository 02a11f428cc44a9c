//! Protocol-level bypass attempts, sent as raw wire-protocol bytes (no driver smoothing them
//! over) to the gateway with the `masked` role of tests/common/gateway.rs: pipelines whose
//! Parse the server skips, duplicate statement names, SQL-level and protocol-level statements
//! sharing a name, a Bind to another role's statement on a pooled server, a server returned to
//! the pool while a catalog load is awaited. Each fails if a seeded secret (the upper-cased
//! pin, which only lineage protects) reaches the client in clear, or if a verdict is bypassed.
//! These were found in review of the masking and review work; each describes the attack that
//! once worked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::{
    create_app_database, start_gateway, GatewayOptions, AGENT_TOKEN, APP_PASSWORD, APP_USER,
    AUDITOR_TOKEN, CONN, MASKED_TOKEN,
};
use common::{psql_cmd, run_ok, shared_pg, superuser_on, with_shared_pg};

const SEED: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, ssn text, card text,
    pin text UNIQUE, salary int, last_ip inet, note text);
INSERT INTO customers VALUES
 (1, 'Alice Adams', 'alice.adams@example.com', '512-48-3921', '4539 1488 0343 6467',
  'kiwi-orchard-7731', 987654, '203.0.113.77', 'x'),
 (2, 'Bob Brown', 'bob.brown@example.net', '287-65-4310', '5555555555554444',
  'lemon-harbor-0458', 876543, '198.51.100.23', 'y');
CREATE TABLE scratch (id int, v text);
CREATE VIEW customer_contacts AS SELECT id, name, email, ssn, upper(pin) AS pin_upper FROM customers;
";

/// The secret as `upper(pin)` prints it.
const SECRET: &[u8] = b"KIWI-ORCHARD-7731";

fn setup(db: &str, mode: &'static str, cores: usize) -> common::gateway::Gateway {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(APP_USER, APP_PASSWORD, db, SEED).expect("seed");
    });
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            cores,
            ..GatewayOptions::default()
        },
    )
}

// ---- a raw frontend ---------------------------------------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}
fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}
fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}
fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
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
    /// Everything the gateway sent after login.
    seen: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        Raw::connect_as(port, MASKED_TOKEN, CONN)
    }

    fn connect_as(port: u16, token: &str, dbname: &str) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        cstr(&mut body, "user");
        cstr(&mut body, "agent");
        cstr(&mut body, "database");
        cstr(&mut body, dbname);
        body.push(0);
        let mut start = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        start.extend_from_slice(&body);
        s.write_all(&start).unwrap();
        let mut r = Raw {
            s,
            buf: Vec::new(),
            seen: Vec::new(),
        };
        // AuthenticationCleartextPassword, then our token.
        loop {
            let (tag, body) = r.next(Duration::from_secs(10)).expect("auth request");
            if tag == b'R' && body[..4] == 3i32.to_be_bytes() {
                let mut p = Vec::new();
                cstr(&mut p, token);
                r.s.write_all(&msg(b'p', &p)).unwrap();
            } else if tag == b'Z' {
                break;
            } else if tag == b'E' {
                panic!("login failed: {}", String::from_utf8_lossy(&body));
            }
        }
        r.seen.clear();
        r
    }

    fn send(&mut self, parts: &[Vec<u8>]) {
        let all: Vec<u8> = parts.concat();
        self.s.write_all(&all).unwrap();
    }

    /// The next whole backend message, or None after `wait` without one.
    fn next(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let until = Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let m: Vec<u8> = self.buf.drain(..1 + len).collect();
                    self.seen.extend_from_slice(&m);
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

    /// Reads until `n` ReadyForQuery (or `wait` passes); prints a summary of what came.
    fn until_ready(&mut self, n: usize, wait: Duration) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        let until = Instant::now() + wait;
        let mut z = 0;
        while z < n && Instant::now() < until {
            if let Some((t, b)) = self.next(Duration::from_millis(300)) {
                if t == b'Z' {
                    z += 1;
                }
                got.push((t, b));
            }
        }
        for (t, b) in &got {
            let text: String = String::from_utf8_lossy(b)
                .chars()
                .map(|c| if c.is_control() { '|' } else { c })
                .collect();
            println!("  <- {} {}", *t as char, &text[..text.len().min(160)]);
        }
        got
    }

    /// Waits for one message with `tag`.
    fn expect_tag(&mut self, tag: u8, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some((t, b)) = self.next(Duration::from_millis(300)) {
                let text: String = String::from_utf8_lossy(&b)
                    .chars()
                    .map(|c| if c.is_control() { '|' } else { c })
                    .collect();
                println!("  <- {} {}", t as char, &text[..text.len().min(160)]);
                if t == tag {
                    return true;
                }
            }
        }
        false
    }

    fn leaked(&self) -> bool {
        self.seen.windows(SECRET.len()).any(|w| w == SECRET)
    }
}

fn verdict(name: &str, r: &Raw) {
    if r.leaked() {
        println!(
            "### {name}: LEAKED {:?} in clear",
            String::from_utf8_lossy(SECRET)
        );
    } else {
        println!("### {name}: no leak");
    }
}

// ---- probes ------------------------------------------------------------------------------

/// Sanity: the ordinary read is masked.
#[test]
fn p0_baseline_is_masked() {
    let gw = setup("rp_base", "session", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[query("SELECT upper(pin) FROM customers")]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[
        parse("", "SELECT upper(pin) FROM customers"),
        bind("", ""),
        execute(""),
        sync(),
    ]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("baseline", &r);
    assert!(!r.leaked());
}

/// F1: the masker records a Parse's lineage when the gateway forwards it, not when the server
/// accepts it. An unnamed Parse that the server discards (skip-till-Sync after an error) leaves
/// the server's previous unnamed statement in place while the masker plans the new one.
#[test]
fn p1_skipped_unnamed_parse() {
    let gw = setup("rp_skip", "transaction", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[
        parse("", "SELECT upper(pin) AS v FROM customers"),
        sync(),
        bind("p0", "nosuch"),               // fails: the server skips to Sync
        parse("", "SELECT 'x'::text AS v"), // discarded by the server
        sync(),
        bind("", ""),
        execute(""),
        sync(),
    ]);
    r.until_ready(3, Duration::from_secs(10));
    verdict("skipped unnamed Parse", &r);
    assert!(
        !r.leaked(),
        "rows of the server's statement were planned with the discarded one's lineage"
    );
}

/// F1 (session mode): a second Parse of an existing named statement fails on the server
/// (42P05) but replaces the masker's lineage for that name.
#[test]
fn p2_duplicate_named_parse_session_mode() {
    let gw = setup("rp_dup", "session", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[parse("s", "SELECT upper(pin) AS v FROM customers"), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[parse("s", "SELECT 'x'::text AS v"), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[bind("", "s"), execute(""), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("duplicate named Parse (session)", &r);
    assert!(!r.leaked());
}

/// F2: SQL-level PREPARE / DECLARE lineage is recorded at planning time; a PREPARE that fails
/// on the server (duplicate name) still replaces it.
#[test]
fn p3_duplicate_sql_prepare_and_cursor() {
    let gw = setup("rp_prep", "session", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[query("PREPARE s AS SELECT upper(pin) AS v FROM customers")]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query("PREPARE s AS SELECT 'x'::text AS v")]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query("EXECUTE s")]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("duplicate PREPARE", &r);
    let prepare_leak = r.leaked();
    r.seen.clear();
    r.send(&[query(
        "DECLARE c CURSOR WITH HOLD FOR SELECT upper(pin) AS v FROM customers",
    )]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query(
        "DECLARE c CURSOR WITH HOLD FOR SELECT 'x'::text AS v",
    )]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query("FETCH ALL FROM c")]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("duplicate DECLARE WITH HOLD", &r);
    assert!(!prepare_leak && !r.leaked());
}

/// F3 (session mode): protocol and SQL-level prepared statements share one namespace on the
/// server; Close of a protocol statement does not clear the masker's record of it.
#[test]
fn p4_close_then_sql_prepare_same_name() {
    let gw = setup("rp_close", "session", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[parse("s", "SELECT 'x'::text AS v"), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[close_stmt("s"), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query("PREPARE s AS SELECT upper(pin) AS v FROM customers")]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[bind("", "s"), execute(""), sync()]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("Close + SQL PREPARE", &r);
    assert!(!r.leaked());
}

/// F4: a Query sent while the server is in COPY IN is consumed by the server as the error
/// trigger and never answered; the tracker still waits for its ReadyForQuery, so every later
/// answer is relayed under the previous request's masking job.
#[test]
fn p5_query_during_copy_in_desyncs_the_tracker() {
    let gw = setup("rp_copy", "session", 1);
    let mut r = Raw::connect(gw.port());
    r.send(&[query("COPY scratch FROM STDIN")]);
    assert!(
        r.expect_tag(b'G', Duration::from_secs(10)),
        "CopyInResponse"
    );
    r.send(&[query("SELECT 'x'::text AS v")]);
    r.until_ready(1, Duration::from_secs(10));
    r.send(&[query("SELECT upper(pin) AS v FROM customers")]);
    r.until_ready(1, Duration::from_secs(10));
    verdict("Query during COPY IN", &r);
    assert!(!r.leaked());
}

/// F5: `expect("attached before processing")` after `refresh_policy().await`: in transaction
/// mode the server can go back to the pool while the client reader waits for a catalog load,
/// and a named Parse then panics the core thread (monoio does not catch task panics).
#[test]
fn p6_release_during_catalog_load_panics_the_core() {
    let gw = setup("rp_panic", "transaction", 1);
    let db = "rp_panic";
    let mut r = Raw::connect(gw.port());
    r.send(&[query("SELECT id FROM customers")]); // loads the catalog
    r.until_ready(1, Duration::from_secs(10));
    let mut b = Raw::connect(gw.port()); // a second session on the same (only) core
    b.send(&[query("SELECT 1")]);
    b.until_ready(1, Duration::from_secs(10));
    // A's server stays busy for 3 s.
    r.send(&[query("SELECT pg_sleep(3)")]);
    std::thread::sleep(Duration::from_millis(200));
    // B's DDL marks the core's catalog stale.
    b.send(&[query("CREATE TABLE IF NOT EXISTS zz (a int)")]);
    b.until_ready(1, Duration::from_secs(10));
    // Block the catalog reload (pg_get_viewdef reads pg_rewrite) for a while.
    let lock = std::thread::spawn(move || {
        run_ok(&mut psql_cmd(
            &superuser_on(shared_pg(), db),
            "BEGIN; LOCK TABLE pg_catalog.pg_rewrite IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;",
        ))
    });
    std::thread::sleep(Duration::from_millis(1000));
    // Arrives while the server is busy: the client reader sees it attached, then waits for
    // the catalog; the server finishes meanwhile and goes back to the pool.
    r.send(&[parse("s1", "SELECT 1"), bind("", "s1"), execute(""), sync()]);
    let t0 = Instant::now();
    let got = r.until_ready(2, Duration::from_secs(8));
    println!("answers took {:?}", t0.elapsed());
    println!("lock thread: {:?}", lock.join());
    println!("messages after the Parse batch: {}", got.len());
    // Is the core still serving?
    let port = gw.port();
    let alive = std::panic::catch_unwind(move || {
        let mut r2 = Raw::connect(port);
        r2.send(&[query("SELECT 1")]);
        r2.until_ready(1, Duration::from_secs(5))
            .iter()
            .any(|(t, _)| *t == b'Z')
    });
    println!("### core alive after: {alive:?}");
    assert!(matches!(alive, Ok(true)), "the core thread died");
}

#[test]
fn p7_does_the_lock_block_viewdef() {
    let _gw = setup("rp_lock", "transaction", 1);
    let db = "rp_lock";
    let lock = std::thread::spawn(move || {
        run_ok(&mut psql_cmd(
            &superuser_on(shared_pg(), db),
            "BEGIN; LOCK TABLE pg_catalog.pg_rewrite IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;",
        ))
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out = psql_cmd(&superuser_on(shared_pg(), db), "SELECT version(); SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c WHERE relkind = 'v' AND relname = 'customer_contacts'").output().unwrap();
    println!(
        "viewdef took {:?}: {}",
        t0.elapsed(),
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = lock.join();
}

/// F6: in transaction pooling a Bind naming a statement the session never parsed is forwarded
/// verbatim and never judged, so a role can run statements another role prepared on the same
/// pooled server connection (the gateway's own `sluice_<core>_<id>` names are predictable).
/// Here `auditor` (read-only policy) runs the `analyst`'s DELETE on connection `otherdb`.
#[test]
fn p8_bind_to_another_roles_statement() {
    let gw = setup("rp_cross", "transaction", 1);
    let db = "rp_cross";
    let count = || {
        run_ok(&mut psql_cmd(
            &superuser_on(shared_pg(), db),
            "SELECT count(*) FROM scratch",
        ))
        .trim()
        .to_owned()
    };
    run_ok(&mut psql_cmd(
        &superuser_on(shared_pg(), db),
        "INSERT INTO scratch SELECT g, 'v' FROM generate_series(1, 5) g",
    ));
    // Control: the auditor may not delete.
    let mut b = Raw::connect_as(gw.port(), AUDITOR_TOKEN, "otherdb");
    b.send(&[query("DELETE FROM scratch")]);
    b.until_ready(1, Duration::from_secs(10));
    println!("rows after the auditor's own DELETE: {}", count());
    // The analyst prepares a DELETE (named: interned as sluice_0_<n> on the pooled server).
    let mut a = Raw::connect_as(gw.port(), AGENT_TOKEN, "otherdb");
    a.send(&[parse("wipe", "DELETE FROM scratch"), sync()]);
    a.until_ready(1, Duration::from_secs(10));
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    for n in 1..=5 {
        b.send(&[bind("", &format!("sluice_0_{n}")), execute(""), sync()]);
        b.until_ready(1, Duration::from_secs(10));
    }
    let after = count();
    println!("### rows after the auditor's Binds: {after}");
    assert_eq!(after, "5", "a read-only role deleted rows");
}
