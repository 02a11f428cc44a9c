//! Live policy from the control plane, end to end against a real PostgreSQL: `sluice up`'s
//! two planes in this process (control plane on a throwaway SQLite store, data plane taking
//! its snapshots over HTTP), real clients (tokio-postgres). A policy applied through the API
//! is enforced within milliseconds; changing it under a steady client load drops nothing;
//! the data plane keeps serving with the control plane gone and after its own restart
//! (persisted snapshot); a grant is scoped to its connection, and revoking it closes its
//! open session.

mod common;

use common::planes::*;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{connect, create_app_database, runtime, sqlstate, try_connect, APP_PASSWORD};
use common::{shared_pg, with_shared_pg};
use sluice::up::Up;
use sluice_controlplane::up::Served;
use sluice_dataplane::config::ControlPlaneSettings;
use sluice_dataplane::{Config, Dataplane};

const AGENT_TOKEN: &str = "agent-token-live-0123456789";

/// The data plane's own settings: the agent's static token (its role comes with snapshots).
fn dataplane_yaml() -> String {
    format!(
        "listen: 127.0.0.1:0\ncores: 2\nauth:\n  static_tokens:\n    - {{ token: {AGENT_TOKEN}, subject: agent-1, groups: [analysts] }}\n"
    )
}

/// A database with `items` (5 rows) and `secrets`, owned by the app user.
fn seed(db: &str) {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE secrets (id int, value text);
             INSERT INTO secrets VALUES (1, 'the-launch-code');",
        )
        .expect("seeding");
    });
}

/// The control-plane document: connections `conn` and `conn_other` (both to `db`), role
/// `analyst` (the agent, policy `reader`), role `jit` (only by grants), policy `reader`
/// denying the tables in `deny`.
fn document(conn: &str, db: &str, deny: &[&str]) -> String {
    let pg = shared_pg();
    let deny: Vec<String> = deny.iter().map(|t| format!("\"{t}\"")).collect();
    let deny = deny.join(", ");
    let c = |name: &str| {
        format!(
            "  - name: {name}\n    port: {pg}\n    database: {db}\n    pool: {{ mode: transaction, size: 8, timeout: 5s }}\n    users: [ {{ name: app, user: app, password: {APP_PASSWORD} }} ]\n"
        )
    };
    format!(
        "connections:\n{}{}roles:\n  - name: analyst\n    groups: [analysts]\n    connections: {{ {conn}: app, {conn}_other: app }}\n    policy: reader\n  - name: jit\n    subjects: [nobody]\n    connections: {{ {conn}: app, {conn}_other: app }}\n    policy: reader\npolicies:\n  - name: reader\n    classes: {{ allow: [read, transaction, session] }}\n    tables: {{ deny: [{deny}] }}\n",
        c(conn),
        c(&format!("{conn}_other"))
    )
}

/// Applies through the API and waits until the data plane runs the new version; returns the
/// version and the time from sending the apply to the swap.
fn apply_and_wait(up_served: &Served, dp: &Dataplane, yaml: &str) -> (u64, Duration) {
    let t0 = Instant::now();
    let v = up_served.apply_yaml(yaml).expect("apply");
    let deadline = t0 + Duration::from_secs(10);
    while dp.shared().snapshot_version() < v {
        assert!(Instant::now() < deadline, "version {v} not in force");
        std::thread::sleep(Duration::from_micros(100));
    }
    (v, t0.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[test]
fn applied_policy_is_enforced_within_milliseconds_and_changes_under_load_drop_nothing() {
    let db = "live_apply";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let dp = &up.dataplane;
    let conn = "live_apply";
    let allow_items = document(conn, db, &["public.secrets"]);
    let deny_items = document(conn, db, &["public.secrets", "public.items"]);
    let (v, first) = apply_and_wait(&up.served, dp, &allow_items);
    println!("first apply → v{v} in force: {:.2} ms", ms(first));

    let rt = runtime();
    let agent = conn_str(dp, AGENT_TOKEN, conn);
    rt.block_on(async {
        let c = connect(&agent).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
        let e = c
            .simple_query("SELECT value FROM secrets")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e:?}");
    });

    // ---- apply → swapped in, and apply → a client's next statement judged by it ----
    let mut to_swap = Vec::new();
    let mut to_verdict = Vec::new();
    let probe = rt.block_on(connect(&agent));
    for i in 0..30 {
        let deny = i % 2 == 0;
        let t0 = Instant::now();
        let (_, swap) = apply_and_wait(
            &up.served,
            dp,
            if deny { &deny_items } else { &allow_items },
        );
        to_swap.push(swap);
        // The probe's next statement after the swap already sees the new policy.
        let r = rt.block_on(probe.simple_query("SELECT count(*) FROM items"));
        to_verdict.push(t0.elapsed());
        match (deny, r) {
            (true, Err(e)) => assert_eq!(sqlstate(&e), "42501", "{e:?}"),
            (false, Ok(_)) => {}
            (deny, r) => panic!("apply {i} (deny items: {deny}) not in force: {r:?}"),
        }
    }
    to_swap.sort();
    to_verdict.sort();
    println!(
        "apply → in force over {} applies (from sending the apply, incl. its commit): median {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         apply → the client's next statement judged by it: median {:.2} ms, p99 {:.2} ms",
        to_swap.len(),
        ms(percentile(&to_swap, 50)),
        ms(percentile(&to_swap, 99)),
        ms(to_swap[to_swap.len() - 1]),
        ms(percentile(&to_verdict, 50)),
        ms(percentile(&to_verdict, 99)),
    );
    assert!(percentile(&to_swap, 50) < Duration::from_millis(100));

    // ---- policy changes while 4 clients run a steady loop: no error, nothing dropped ----
    apply_and_wait(&up.served, dp, &allow_items);
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let agent = agent.clone();
            let stop = stop.clone();
            let queries = queries.clone();
            rt.spawn(async move {
                let c = connect(&agent).await;
                let mut mine = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = c
                        .query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32])
                        .await
                        .unwrap_or_else(|e| panic!("client error under policy changes: {e:?}"))
                        .get(0);
                    assert_eq!(n, 5);
                    mine += 1;
                    queries.fetch_add(1, Ordering::Relaxed);
                }
                (c, mine)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let deny_secrets_only_a = document(conn, db, &["public.secrets"]);
    let deny_secrets_only_b = document(conn, db, &["public.secrets", "public.nothing_here"]);
    let before = queries.load(Ordering::Relaxed);
    for i in 0..10 {
        apply_and_wait(
            &up.served,
            dp,
            if i % 2 == 0 {
                &deny_secrets_only_b
            } else {
                &deny_secrets_only_a
            },
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = queries.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut conns = Vec::new();
    for h in clients {
        let (c, mine) = rt.block_on(h).expect("a client loop failed");
        total += mine;
        conns.push(c);
    }
    // Now a version that denies what the clients ran: their next statement gets 42501, on
    // the same connections, which stay up.
    apply_and_wait(&up.served, dp, &deny_items);
    for c in &conns {
        let e = rt
            .block_on(c.query_one("SELECT count(*) FROM items WHERE id > $1", &[&0i32]))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e:?}");
        rt.block_on(c.simple_query("SELECT 1"))
            .expect("the connection stays up");
    }
    println!(
        "{total} statements from 4 clients, {during} of them during 10 policy changes, no error"
    );
    assert!(during > 0);
    up.stop();
}

#[test]
fn data_plane_serves_on_without_the_control_plane_and_after_its_own_restart() {
    let db = "live_static";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let Up { served, dataplane } = start_up(dir.path(), &dataplane_yaml());
    let conn = "live_static";
    let (v, _) = apply_and_wait(
        &served,
        &dataplane,
        &document(conn, db, &["public.secrets"]),
    );
    let api = served.addr;
    let rt = runtime();
    let agent = conn_str(&dataplane, AGENT_TOKEN, conn);
    let open = rt.block_on(connect(&agent));

    // ---- the control plane goes away: sessions and new logins go on ----
    served.stop();
    std::thread::sleep(Duration::from_millis(300));
    rt.block_on(async {
        let n: i64 = open
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
        let c = connect(&agent).await;
        c.simple_query("SELECT 1").await.unwrap();
        let e = c.simple_query("SELECT * FROM secrets").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
    });
    assert_eq!(dataplane.shared().snapshot_version(), v);
    let metrics = dataplane.shared().render_metrics();
    assert!(
        metrics.contains(&format!("sluice_snapshot_version {v}\n")),
        "{metrics}"
    );

    // ---- a second data plane starts with the control plane down: the persisted snapshot ----
    dataplane.stop_snapshot_client();
    // The first one's audit spool is locked while its shipper runs: as after a real restart.
    dataplane.stop_audit_shipper(Duration::ZERO);
    let cp = ControlPlaneSettings {
        url: format!("http://{api}"),
        node_token: std::fs::read_to_string(dir.path().join("node.token")).unwrap(),
        node_id: None,
        state_dir: dir.path().join("dataplane"),
    };
    let config =
        Config::from_yaml_with_control_plane(&dataplane_yaml(), Path::new("."), &|_| None, cp)
            .unwrap();
    let t = Instant::now();
    let restarted = Dataplane::start(config).expect("starting without the control plane");
    println!(
        "data plane restart without the control plane: serving v{} after {:.1} ms",
        restarted.shared().snapshot_version(),
        ms(t.elapsed())
    );
    assert_eq!(restarted.shared().snapshot_version(), v);
    let agent2 = conn_str(&restarted, AGENT_TOKEN, conn);
    rt.block_on(async {
        let c = connect(&agent2).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
        let e = c.simple_query("SELECT * FROM secrets").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "the persisted policy is enforced");
    });

    // ---- the control plane comes back on its address: the next version arrives ----
    let served = Served::start(&up_args(dir.path(), api)).expect("control plane restart");
    let v2 = served
        .apply_yaml(&document(conn, db, &["public.secrets", "public.items"]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while restarted.shared().snapshot_version() < v2 {
        assert!(
            Instant::now() < deadline,
            "v{v2} did not arrive after the restart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(async {
        let c = connect(&agent2).await;
        let e = c.simple_query("SELECT * FROM items").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
    });
    restarted.stop_snapshot_client();
    served.stop();
}

#[test]
fn grants_are_scoped_to_their_connection_and_revoking_one_closes_its_session() {
    let db = "live_grant";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let dp = &up.dataplane;
    let conn = "live_grant";
    apply_and_wait(&up.served, dp, &document(conn, db, &["public.secrets"]));
    let admin = up.served.admin_token.clone().unwrap();
    let body =
        format!(r#"{{"identity": "ci-bot", "connection": "{conn}", "role": "jit", "ttl": "15m"}}"#);
    let (s, g) = http(up.served.addr, "POST", "/v1/grants", &admin, Some(&body));
    assert_eq!(s, 201, "{g}");
    let token = g["token"].as_str().unwrap().to_owned();
    let id = g["id"].as_str().unwrap().to_owned();

    let rt = runtime();
    let (granted, agent) = rt.block_on(async {
        // The grant gives role `jit` (whose subjects do not include ci-bot) on its connection...
        let c = connect(&conn_str(dp, &token, conn)).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 5);
        // ...and on no other, though the role may use it.
        let Err(e) = try_connect(&conn_str(dp, &token, &format!("{conn}_other"))).await else {
            panic!("a grant for another connection is refused");
        };
        assert_eq!(sqlstate(&e), "42501", "{e:?}");
        (c, connect(&conn_str(dp, AGENT_TOKEN, conn)).await)
    });

    // ---- revocation: the grant's open session is closed, others go on ----
    let t = Instant::now();
    let (s, v) = http(
        up.served.addr,
        "DELETE",
        &format!("/v1/grants/{id}"),
        &admin,
        None,
    );
    assert!(s == 200 || s == 204, "{s} {v}");
    let revoked_in = v["snapshot_version"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dp.shared().snapshot_version() < revoked_in {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.block_on(async {
        let Err(e) = try_connect(&conn_str(dp, &token, conn)).await else {
            panic!("revoked grant refused");
        };
        assert_eq!(sqlstate(&e), "28P01", "{e:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match granted.simple_query("SELECT 1").await {
                Err(e) => {
                    println!(
                        "revoked grant's session closed {:.1} ms after the DELETE: {e}",
                        ms(t.elapsed())
                    );
                    break;
                }
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the revoked grant's session is still open"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        agent
            .simple_query("SELECT count(*) FROM items")
            .await
            .expect("other sessions go on");
    });
    let metrics = dp.shared().render_metrics();
    assert!(
        metrics.contains("sluice_sessions_closed_by_snapshot_total 1\n"),
        "{metrics}"
    );

    // ---- expiry: a grant's open session ends when the grant does ----
    let body =
        format!(r#"{{"identity": "ci-bot", "connection": "{conn}", "role": "jit", "ttl": "2s"}}"#);
    let (s, g) = http(up.served.addr, "POST", "/v1/grants", &admin, Some(&body));
    assert!(s == 200 || s == 201, "{s} {g}");
    let short = g["token"].as_str().expect("grant token").to_owned();
    rt.block_on(async {
        let c = connect(&conn_str(dp, &short, conn)).await;
        c.simple_query("SELECT 1").await.expect("the grant works");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.simple_query("SELECT 1").await {
                Err(e) => {
                    // The FATAL 57P01 may arrive before the next query or be seen
                    // as the connection closing.
                    assert!(e.is_closed() || sqlstate(&e) == "57P01", "{e:?}");
                    println!("expired grant's session closed: {e}");
                    break;
                }
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the expired grant's session is still open"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    up.stop();
}

#[test]
fn statements_prepared_before_a_policy_change_are_judged_by_the_new_one() {
    let db = "live_prepared";
    seed(db);
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let dp = &up.dataplane;
    let conn = "live_prepared";
    let allow = document(conn, db, &["public.secrets"]);
    let deny = document(conn, db, &["public.secrets", "public.items"]);
    apply_and_wait(&up.served, dp, &allow);
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&conn_str(dp, AGENT_TOKEN, conn)).await;
        let stmt = c
            .prepare("SELECT v FROM items WHERE id = $1")
            .await
            .expect("prepared while allowed");
        let rows = c.query(&stmt, &[&1i32]).await.expect("allowed");
        assert_eq!(rows.len(), 1);

        apply_and_wait(&up.served, dp, &deny);
        let e = c
            .query(&stmt, &[&1i32])
            .await
            .expect_err("the new policy denies the prepared statement");
        assert_eq!(sqlstate(&e), "42501", "{e:?}");
        // The session goes on, and the statement works again once allowed again.
        c.simple_query("SELECT 1").await.expect("session usable");
        apply_and_wait(&up.served, dp, &allow);
        let rows = c.query(&stmt, &[&2i32]).await.expect("allowed again");
        assert_eq!(rows.len(), 1);
    });
    up.stop();
}
