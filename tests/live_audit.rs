//! The audit trail and live policy under the control plane's comings and goings, end to end
//! against a real PostgreSQL: `sluice up`'s two planes in this process, real clients
//! (tokio-postgres, pgbench). While the control plane is away the data plane serves on and
//! spools its audit records; once it is back the spool drains and every statement has exactly
//! one record. Policy versions applied under pgbench load reach the data plane without a
//! failed transaction or a dropped client.

mod common;

use common::planes::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{connect, create_app_database, runtime, sqlstate, APP_PASSWORD, APP_USER};
use common::{pgbench_cmd, shared_pg, with_shared_pg, PgTarget};
use sluice::up::Up;
use sluice_controlplane::up::Served;
use sluice_dataplane::Dataplane;
use tokio_postgres::Client;

const SPOOL_TOKEN: &str = "agent-token-audit-spool-0123456789";
const SPOOL_SUBJECT: &str = "audit-spool-agent";
const BENCH_TOKEN: &str = "agent-token-audit-bench-0123456789";
const BENCH_SUBJECT: &str = "audit-bench-agent";
const PROBE_TOKEN: &str = "agent-token-audit-probe-0123456789";

/// The data plane's own settings: the agents' static tokens (roles come with snapshots).
fn dataplane_yaml() -> String {
    format!(
        "listen: 127.0.0.1:0\ncores: 2\nauth:\n  static_tokens:\n    - {{ token: {SPOOL_TOKEN}, subject: {SPOOL_SUBJECT}, groups: [agents] }}\n    - {{ token: {BENCH_TOKEN}, subject: {BENCH_SUBJECT}, groups: [agents] }}\n    - {{ token: {PROBE_TOKEN}, subject: audit-probe, groups: [agents] }}\n"
    )
}

/// A database with `items` (5 rows), `secrets` and `other`, owned by the app user.
fn seed(db: &str) {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE secrets (id int, value text);
             INSERT INTO secrets VALUES (1, 'the-launch-code');
             CREATE TABLE other (id int);
             INSERT INTO other VALUES (1);",
        )
        .expect("seeding");
    });
}

/// Connection `conn` to `db`, role `agent` (group `agents`) judged by policy `reader`, which
/// reads and denies the tables in `deny`.
fn document(conn: &str, db: &str, deny: &[&str]) -> String {
    let pg = shared_pg();
    let deny: Vec<String> = deny.iter().map(|t| format!("\"{t}\"")).collect();
    let deny = deny.join(", ");
    format!(
        "connections:\n  - name: {conn}\n    port: {pg}\n    database: {db}\n    pool: {{ mode: transaction, size: 8, timeout: 5s }}\n    users: [ {{ name: app, user: app, password: {APP_PASSWORD} }} ]\nroles:\n  - name: agent\n    groups: [agents]\n    connections: {{ {conn}: app }}\n    policy: reader\npolicies:\n  - name: reader\n    classes: {{ allow: [read, transaction, session] }}\n    tables: {{ deny: [{deny}] }}\n"
    )
}

/// Applies through the API and waits until the data plane runs the new version.
fn apply_and_wait(served: &Served, dp: &Dataplane, yaml: &str) -> u64 {
    let v = served.apply_yaml(yaml).expect("apply");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dp.shared().snapshot_version() < v {
        assert!(Instant::now() < deadline, "version {v} not in force");
        std::thread::sleep(Duration::from_micros(200));
    }
    v
}

/// One HTTP/1.1 GET with `Connection: close`; the status and the JSON body.
fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let json = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(serde_json::Value::Null))
        .unwrap_or_default();
    (status, json)
}

/// Every audit record of `identity` at the control plane as (verdict, statement), paging
/// newest first with `before`/`next_before`; also the number of pages read.
fn audit_of(
    addr: SocketAddr,
    admin: &str,
    identity: &str,
    page: usize,
) -> (Vec<(String, String)>, usize) {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    let mut pages = 0;
    let mut last_id = i64::MAX;
    loop {
        let mut path = format!("/v1/audit?identity={identity}&limit={page}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let (s, body) = get(addr, &path, admin);
        assert_eq!(s, 200, "GET {path}: {body}");
        pages += 1;
        for r in body["records"].as_array().expect("records") {
            // Newest first, each id once across pages.
            let id = r["id"].as_i64().expect("record id");
            assert!(
                id < last_id,
                "ids not strictly decreasing: {id} after {last_id}"
            );
            last_id = id;
            assert_eq!(r["identity"], identity, "{r}");
            out.push((
                r["verdict"].as_str().unwrap_or("").to_owned(),
                r["statement"].as_str().unwrap_or("").to_owned(),
            ));
        }
        match body["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    (out, pages)
}

/// A metric's value in the data plane's Prometheus text.
fn metric(dp: &Dataplane, name: &str) -> u64 {
    let text = dp.shared().render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Records of `identity` in the spool's segments (`audit-<n>.jsonl`, one batch per line);
/// `None` while a line is being written.
fn spooled_records(spool: &Path, identity: &str) -> Option<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(spool).ok()? {
        let path = e.ok()?.path();
        let name = path.file_name()?.to_string_lossy().into_owned();
        if !(name.starts_with("audit-") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).ok()?.lines() {
            let batch: serde_json::Value = serde_json::from_str(line).ok()?;
            n += batch["records"]
                .as_array()?
                .iter()
                .filter(|r| r["identity"] == identity)
                .count();
        }
    }
    Some(n)
}

/// Runs `rounds` rounds of four statements on `c`, each text unique through `tag`: an allowed
/// and a denied one in the simple protocol, an allowed and a denied one in the extended
/// protocol. Each must get its verdict; returns the (verdict, statement) each should leave
/// in the audit trail.
async fn statements(c: &Client, tag: &str, rounds: usize) -> Vec<(String, String)> {
    let mut expected = Vec::new();
    for i in 0..rounds {
        let k = format!("'{tag}-{i}'");
        let sql = format!("SELECT count(*) FROM items WHERE v <> {k}");
        let rows = c
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert!(!rows.is_empty(), "{sql}");
        expected.push(("allow".to_owned(), sql));

        let sql = format!("SELECT value FROM secrets WHERE value <> {k}");
        let e = c.simple_query(&sql).await.expect_err("secrets are denied");
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e:?}");
        expected.push(("deny".to_owned(), sql));

        let sql = format!("SELECT count(*) FROM items WHERE id > $1 AND v <> {k}");
        let n: i64 = c
            .query_one(&sql, &[&0i32])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0);
        assert_eq!(n, 5, "{sql}");
        expected.push(("allow".to_owned(), sql));

        let sql = format!("SELECT value FROM secrets WHERE id = $1 AND value <> {k}");
        let e = c
            .query(&sql, &[&1i32])
            .await
            .expect_err("secrets are denied");
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e:?}");
        expected.push(("deny".to_owned(), sql));
    }
    expected
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// Counts of each (verdict, statement) seen more than once, for a readable failure.
fn repeats(v: &[(String, String)]) -> BTreeMap<&(String, String), usize> {
    let mut m = BTreeMap::new();
    for r in v {
        *m.entry(r).or_insert(0) += 1;
    }
    m.retain(|_, n| *n > 1);
    m
}

#[test]
fn audit_spools_while_the_control_plane_is_away_and_every_statement_is_counted_once() {
    let t0 = Instant::now();
    let db = "live_audit_spool";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let Up { served, dataplane } = start_up(dir.path(), &dataplane_yaml());
    let conn = "live_audit_spool";
    let v = apply_and_wait(
        &served,
        &dataplane,
        &document(conn, db, &["public.secrets"]),
    );
    let api = served.addr;
    let admin = served.admin_token.clone().expect("bootstrap admin token");
    let spool = dir.path().join("dataplane").join("audit-spool");
    let rt = runtime();
    let agent = conn_str(&dataplane, SPOOL_TOKEN, conn);

    // ---- N statements with the control plane up, shipped ----
    let open = rt.block_on(connect(&agent));
    let mut expected = rt.block_on(statements(&open, "up", 10));
    let n = expected.len();
    assert!(dataplane.shared().flush_audit(Duration::from_secs(10)));
    let (before_stop, _) = audit_of(api, &admin, SPOOL_SUBJECT, 1000);
    assert_eq!(sorted(before_stop), sorted(expected.clone()));
    assert_eq!(metric(&dataplane, "sluice_audit_spool_bytes"), 0);

    // ---- the control plane goes away: the same verdicts, on an open and a new session ----
    served.stop();
    let down = Instant::now();
    expected.extend(rt.block_on(statements(&open, "down-open", 5)));
    let fresh = rt.block_on(connect(&agent));
    expected.extend(rt.block_on(statements(&fresh, "down-new", 5)));
    let m = expected.len() - n;
    assert_eq!(dataplane.shared().snapshot_version(), v, "fail-static");

    // Every record of the outage lands in the spool (batches seal after 200 ms, the first
    // failed send sends them all there).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spooled = spooled_records(&spool, SPOOL_SUBJECT);
        if spooled == Some(m) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool holds {spooled:?} records of {SPOOL_SUBJECT}, not {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let spool_bytes = metric(&dataplane, "sluice_audit_spool_bytes");
    assert!(spool_bytes > 0, "sluice_audit_spool_bytes {spool_bytes}");
    assert!(
        !dataplane.shared().flush_audit(Duration::from_millis(200)),
        "nothing can be acknowledged with the control plane away"
    );
    println!(
        "control plane away {:.0} ms: {m} statements served, {spool_bytes} spool bytes",
        down.elapsed().as_secs_f64() * 1e3
    );

    // ---- it comes back on its address and data dir: the spool drains ----
    let served = Served::start(&up_args(dir.path(), api)).expect("control plane restart");
    let t = Instant::now();
    assert!(
        dataplane.shared().flush_audit(Duration::from_secs(15)),
        "the spool did not drain within 15 s"
    );
    println!(
        "spool drained {:.0} ms after the restart",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(metric(&dataplane, "sluice_audit_spool_bytes"), 0);
    assert_eq!(spooled_records(&spool, SPOOL_SUBJECT), Some(0));
    assert_eq!(metric(&dataplane, "sluice_audit_records_dropped_total"), 0);

    // ---- exactly N + M records, each statement once with its verdict ----
    let (records, pages) = audit_of(api, &admin, SPOOL_SUBJECT, 25);
    assert_eq!(
        records.len(),
        n + m,
        "{n} + {m} statements; repeated: {:?}",
        repeats(&records)
    );
    assert!(repeats(&records).is_empty(), "{:?}", repeats(&records));
    assert_eq!(sorted(records), sorted(expected));
    println!(
        "{} records ({n} before the outage, {m} during it) in {pages} pages, each once; test {:.1} s",
        n + m,
        t0.elapsed().as_secs_f64()
    );
    served.stop();
    dataplane.stop_snapshot_client();
}

/// Parses `label = <number>` (or `label: <number>`) out of pgbench's report.
fn report_number(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| {
            rest.trim_start_matches([' ', '=', ':'])
                .split_whitespace()
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in pgbench's report:\n{out}"))
}

#[test]
fn policy_changes_under_pgbench_load_drop_nothing() {
    let t0 = Instant::now();
    let db = "live_audit_bench";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let dp = &up.dataplane;
    let conn = "live_audit_bench";
    let plain = document(conn, db, &["public.secrets"]);
    let deny_other = document(conn, db, &["public.secrets", "public.other"]);
    let first = apply_and_wait(&up.served, dp, &plain);
    // The swap counter moves just after the version becomes visible: let it settle.
    let mut swaps_before = metric(dp, "sluice_snapshot_swaps_total");
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = metric(dp, "sluice_snapshot_swaps_total");
        if now == swaps_before {
            break;
        }
        swaps_before = now;
    }

    let script = dir.path().join("select.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 5)\nSELECT v FROM items WHERE id = :id;\n",
    )
    .unwrap();
    let target = PgTarget::new(dp.local_addr().port(), "agent", BENCH_TOKEN, conn);
    let mut cmd = pgbench_cmd(&target);
    cmd.args([
        "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6", "-f",
    ])
    .arg(&script)
    .stdin(Stdio::null());
    let bench = std::thread::spawn(move || -> Output { cmd.output().expect("running pgbench") });

    // ---- ten versions while pgbench runs, each in force and enforced ----
    let rt = runtime();
    let probe = rt.block_on(connect(&conn_str(dp, PROBE_TOKEN, conn)));
    // One version every 400 ms from 0.5 s on: all ten within pgbench's six seconds.
    let started = Instant::now();
    let mut versions = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..10u32 {
        let at = started + Duration::from_millis(500) + Duration::from_millis(400) * i;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let deny = i % 2 == 0;
        let t = Instant::now();
        let v = apply_and_wait(&up.served, dp, if deny { &deny_other } else { &plain });
        latencies.push(t.elapsed());
        versions.push(v);
        let r = rt.block_on(probe.simple_query("SELECT count(*) FROM other"));
        match (deny, r) {
            (true, Err(e)) => assert_eq!(sqlstate(&e), "42501", "{e:?}"),
            (false, Ok(_)) => {}
            (deny, r) => panic!("v{v} (deny other: {deny}) not enforced: {r:?}"),
        }
    }
    let applied_in = started.elapsed();
    latencies.sort();
    assert!(
        !bench.is_finished(),
        "pgbench ended before the ten versions were applied ({applied_in:?}; apply → in force {latencies:?})"
    );
    let out = bench.join().expect("the pgbench thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("number of failed transactions: 0 ("),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("aborted") && !stdout.contains("aborted"),
        "{stdout}\n{stderr}"
    );
    let processed = report_number(&stdout, "number of transactions actually processed");
    let tps = report_number(&stdout, "tps");
    assert!(processed > 0.0, "{stdout}");

    // Every version reached the data plane, each swapped in once, no session closed.
    assert_eq!(dp.shared().snapshot_version(), *versions.last().unwrap());
    assert_eq!(
        versions,
        (first + 1..=first + 10).collect::<Vec<_>>(),
        "consecutive versions"
    );
    let swaps = metric(dp, "sluice_snapshot_swaps_total") - swaps_before;
    assert_eq!(swaps, 10, "swaps for versions {versions:?}");
    assert_eq!(metric(dp, "sluice_snapshot_refused_total"), 0);
    assert_eq!(metric(dp, "sluice_sessions_closed_by_snapshot_total"), 0);

    // Every pgbench transaction and probe statement reached the audit shipper; none was
    // dropped. (Their exact count at the control plane is the spool test's; here the backlog
    // would take longer to drain than the load took to make.)
    let sink = dp.shared().audit_sink().expect("an audit shipper");
    let want = processed as u64 + versions.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.stats().snapshot().accepted < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = sink.stats().snapshot();
    assert_eq!(a.accepted, want, "{a:?}");
    assert_eq!(
        (
            a.dropped_channel_full + a.dropped_spool_full + a.dropped_after_shutdown,
            a.rejected_records,
            a.loss_markers
        ),
        (0, 0, 0),
        "{a:?}"
    );
    println!(
        "pgbench -M prepared -c 4 -j 2 -T 6: {processed} transactions, 0 failed, {tps:.0} tps; \
         versions v{}..v{} applied and in force under load within {:.1} s \
         (apply → in force: median {:.0} ms, max {:.0} ms); {} audit records taken, {} shipped so far \
         ({} batches, {} send failures); test {:.1} s",
        versions[0],
        versions[9],
        applied_in.as_secs_f64(),
        latencies[5].as_secs_f64() * 1e3,
        latencies[9].as_secs_f64() * 1e3,
        a.accepted,
        a.records_shipped,
        a.batches_shipped,
        a.send_failures,
        t0.elapsed().as_secs_f64()
    );
    up.stop();
}
