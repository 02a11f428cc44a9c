//! Session state in transaction pooling: LISTEN, temporary tables, session-level advisory
//! locks, WITH HOLD cursors and PREPARE TRANSACTION live on one server connection. Listed in
//! the pool's `pin_on` (the default lists them all), they pin their client to that
//! connection for the rest of its session, and no other client sees the state; not listed,
//! they are refused with 0A000 naming the setting. Never a hang.
//!
//! Each pinning test runs a pool of one server connection on one core: while the pinned
//! client is there, a second client waits for a server and gets 53300 after the pool timeout,
//! as any client of a full pool; once the pinned client leaves, the next one gets the same
//! server connection, reset.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{
    connect, connect_with_messages, prepare_backend, runtime, sqlstate, start_gateway, try_connect,
    within, Async, Gateway, GatewayOptions, AGENT_TOKEN, APP_DB, AUDITOR_TOKEN,
};
use common::{shared_options, shared_pg, start_pg, superuser_on};
use tokio_postgres::Client;

/// A transaction pool of one server connection on one core, in front of the cluster on `port`.
fn pool_of_one(port: u16, pin_on: Option<&'static str>) -> Gateway {
    start_gateway(
        port,
        GatewayOptions {
            size: 1,
            cores: 1,
            timeout: "1s",
            pin_on,
            ..GatewayOptions::default()
        },
    )
}

/// A second client of the full pool: it waits for a server and gets 53300 after the pool
/// timeout (at login, which needs a server for the parameters it reports, or at its first
/// query), neither hanging nor running on the pinned server.
async fn second_client_waits_then_times_out(gw: &Gateway) {
    let started = Instant::now();
    let err = match try_connect(&gw.conn_str(AGENT_TOKEN)).await {
        Err(e) => e,
        Ok(c) => within(
            10,
            "a query of the second client",
            c.simple_query("SELECT 1"),
        )
        .await
        .expect_err("a second client ran on the pinned server"),
    };
    let waited = started.elapsed();
    assert_eq!(sqlstate(&err), "53300", "{err:?}");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// The server pid a client runs on now.
async fn backend_pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The client that comes after the pinned one left: on the same server connection (the pool
/// has one), reset.
async fn next_client(gw: &Gateway, pinned_pid: i32) -> Client {
    // The gateway resets the server after the pinned client's Terminate.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_connect(&gw.conn_str(AGENT_TOKEN)).await {
            Ok(c) => {
                assert_eq!(
                    backend_pid(&c).await,
                    pinned_pid,
                    "the pinned server, reused"
                );
                return c;
            }
            Err(e) if Instant::now() < deadline && sqlstate(&e) == "53300" => {}
            Err(e) => panic!("the next client: {e:?}"),
        }
    }
}

fn metrics(gw: &Gateway) -> String {
    gw.dp.shared().render_metrics()
}

fn assert_pinned_once(gw: &Gateway, reason: &str) {
    let m = metrics(gw);
    let line = format!("sluice_sessions_pinned_total{{core=\"0\",reason=\"{reason}\"}} 1\n");
    assert!(m.contains(&line), "{line} in\n{m}");
}

#[test]
fn listen_pins_and_notifications_arrive_while_idle() {
    let port = shared_pg();
    let gw = pool_of_one(port, None);
    runtime().block_on(async {
        let (a, mut rx) = connect_with_messages(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("LISTEN pin_channel").await.unwrap();
        let pid = backend_pid(&a).await;
        // Later transactions stay on the listening server, and a notification reaches the
        // client while it is idle.
        assert_eq!(backend_pid(&a).await, pid);
        let direct = connect(&superuser_on(port, APP_DB).conn_str()).await;
        direct
            .batch_execute("NOTIFY pin_channel, 'hello'")
            .await
            .unwrap();
        let got = within(5, "the notification", rx.recv()).await;
        assert_eq!(
            got,
            Some(Async::Notification("pin_channel".into(), "hello".into()))
        );
        assert!(metrics(&gw).contains("sluice_pinned_servers{core=\"0\"} 1\n"));
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "listen");
        drop(a);
        let c = next_client(&gw, pid).await;
        let listening: i64 = c
            .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            listening, 0,
            "the next client does not listen on the pinned channel"
        );
        // The next client is not pinned: its server goes back between transactions.
        assert!(metrics(&gw).contains("sluice_pinned_servers{core=\"0\"} 0\n"));
        direct
            .batch_execute("NOTIFY pin_channel, 'again'")
            .await
            .unwrap();
    });
}

#[test]
fn temp_table_pins_across_transactions_in_both_protocols() {
    let gw = pool_of_one(shared_pg(), None);
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        // Extended protocol for the CREATE, simple and extended for the rest.
        a.execute("CREATE TEMP TABLE pin_scratch (a int)", &[])
            .await
            .unwrap();
        let pid = backend_pid(&a).await;
        a.batch_execute("INSERT INTO pin_scratch VALUES (1)")
            .await
            .unwrap();
        a.execute("INSERT INTO pin_scratch VALUES ($1)", &[&2i32])
            .await
            .unwrap();
        let n: i64 = a
            .query_one("SELECT count(*) FROM pin_scratch", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "temp_table");
        drop(a);
        let c = next_client(&gw, pid).await;
        let err = c
            .simple_query("SELECT * FROM pin_scratch")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "42P01", "{err:?}");
    });
}

#[test]
fn create_table_in_pg_temp_pins_like_create_temp_table() {
    let gw = pool_of_one(shared_pg(), None);
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("CREATE TABLE pg_temp.pin_named (a int)")
            .await
            .unwrap();
        a.batch_execute("INSERT INTO pg_temp.pin_named VALUES (1)")
            .await
            .unwrap();
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "temp_table");
    });
}

#[test]
fn session_advisory_lock_pins_and_is_released_when_the_client_leaves() {
    let port = shared_pg();
    let gw = pool_of_one(port, None);
    runtime().block_on(async {
        let direct = connect(&superuser_on(port, APP_DB).conn_str()).await;
        let try_lock = "SELECT pg_try_advisory_lock(914001) AND pg_advisory_unlock(914001)";
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.query_one("SELECT pg_advisory_lock(914001)", &[])
            .await
            .unwrap();
        let pid = backend_pid(&a).await;
        let free: bool = direct.query_one(try_lock, &[]).await.unwrap().get(0);
        assert!(!free, "the lock is held");
        // The client unlocks it in a later transaction: it is still its server's.
        let unlocked: bool = a
            .query_one("SELECT pg_advisory_unlock(914001)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(unlocked);
        a.batch_execute("SELECT pg_try_advisory_lock(914001)")
            .await
            .unwrap();
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "advisory_lock");
        drop(a);
        let _c = next_client(&gw, pid).await;
        let free: bool = direct.query_one(try_lock, &[]).await.unwrap().get(0);
        assert!(free, "the reset released the pinned client's lock");
    });
}

#[test]
fn transaction_scoped_advisory_locks_do_not_pin() {
    let gw = pool_of_one(shared_pg(), None);
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("SELECT pg_advisory_xact_lock(914002)")
            .await
            .unwrap();
        // Not pinned: a second client gets the server between the first one's transactions.
        let b = connect(&gw.conn_str(AGENT_TOKEN)).await;
        b.batch_execute("SELECT 1").await.unwrap();
        assert!(metrics(&gw).contains("sluice_pinned_servers{core=\"0\"} 0\n"));
    });
}

#[test]
fn hold_cursor_pins_and_fetches_across_transactions() {
    let gw = pool_of_one(shared_pg(), None);
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("DECLARE pin_cur CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
            .await
            .unwrap();
        let pid = backend_pid(&a).await;
        for want in 1..=2 {
            let got: i32 = a
                .query_one("FETCH 1 FROM pin_cur", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, want);
        }
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "hold_cursor");
        drop(a);
        let c = next_client(&gw, pid).await;
        let err = c.simple_query("FETCH 1 FROM pin_cur").await.unwrap_err();
        assert_eq!(sqlstate(&err), "34000", "{err:?}");
    });
}

#[test]
fn prepare_transaction_pins_until_the_client_leaves() {
    let cluster = start_pg(shared_options().setting("max_prepared_transactions", "4"));
    prepare_backend(&cluster);
    let gw = pool_of_one(cluster.port(), None);
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("CREATE TABLE two_phase (a int)")
            .await
            .unwrap();
        a.batch_execute("BEGIN; INSERT INTO two_phase VALUES (1); PREPARE TRANSACTION 'pin_tx'")
            .await
            .unwrap();
        second_client_waits_then_times_out(&gw).await;
        assert_pinned_once(&gw, "prepare_transaction");
        a.batch_execute("COMMIT PREPARED 'pin_tx'").await.unwrap();
        let n: i64 = a
            .query_one("SELECT count(*) FROM two_phase", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

/// Each kind, with the statement that creates it and what the refusal calls it.
const KINDS: &[(&str, &str, &str)] = &[
    ("LISTEN pin_refused", "listen", "LISTEN"),
    (
        "CREATE TEMP TABLE pin_refused (a int)",
        "temp_table",
        "a temporary table",
    ),
    (
        "CREATE TABLE pg_temp.pin_refused (a int)",
        "temp_table",
        "a temporary table",
    ),
    (
        "SELECT pg_advisory_lock(914003)",
        "advisory_lock",
        "a session-level advisory lock",
    ),
    (
        "DECLARE pin_refused CURSOR WITH HOLD FOR SELECT 1",
        "hold_cursor",
        "a WITH HOLD cursor",
    ),
    (
        "PREPARE TRANSACTION 'pin_refused'",
        "prepare_transaction",
        "PREPARE TRANSACTION",
    ),
];

fn assert_refused(err: &tokio_postgres::Error, kind: &str, what: &str, connection: &str) {
    assert_eq!(sqlstate(err), "0A000", "{err:?}");
    let msg = err.as_db_error().expect("a server error").message();
    assert_eq!(
        msg,
        format!(
            "{what} needs a pinned server connection in transaction pooling; add {kind} to pin_on for connection \"{connection}\""
        )
    );
}

#[test]
fn kinds_not_in_pin_on_are_refused_in_both_protocols() {
    let gw = pool_of_one(shared_pg(), Some("[]"));
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        for (sql, kind, what) in KINDS {
            let err = within(10, sql, a.batch_execute(sql)).await.unwrap_err();
            assert_refused(&err, kind, what, "appdb");
            let err = within(10, sql, a.execute(*sql, &[])).await.unwrap_err();
            assert_refused(&err, kind, what, "appdb");
            // The session goes on, and its server goes back between transactions.
            a.batch_execute("SELECT 1").await.unwrap();
        }
        let b = connect(&gw.conn_str(AGENT_TOKEN)).await;
        b.batch_execute("SELECT 1").await.unwrap();
        // Inside a transaction a refusal aborts it, as any error would.
        a.batch_execute("BEGIN").await.unwrap();
        let err = a.batch_execute("LISTEN pin_refused").await.unwrap_err();
        assert_refused(&err, "listen", "LISTEN", "appdb");
        let err = a.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&err), "25P02", "{err:?}");
        a.batch_execute("ROLLBACK").await.unwrap();
        assert!(metrics(&gw).contains("sluice_pinned_servers{core=\"0\"} 0\n"));
    });
}

#[test]
fn pin_on_lists_the_kinds_that_pin_and_the_others_are_refused() {
    let gw = pool_of_one(shared_pg(), Some("[listen]"));
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        a.batch_execute("LISTEN pin_partial").await.unwrap();
        assert_pinned_once(&gw, "listen");
        let err = a
            .batch_execute("CREATE TEMP TABLE pin_partial (a int)")
            .await
            .unwrap_err();
        assert_refused(&err, "temp_table", "a temporary table", "appdb");
    });
}

#[test]
fn the_policy_judges_first() {
    // The auditor's policy allows reads, transactions and session statements only.
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            pin_on: Some("[]"),
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let conn = gw
            .target(AUDITOR_TOKEN)
            .conn_str()
            .replace("dbname='appdb'", "dbname='otherdb'");
        let a = connect(&conn).await;
        let err = a
            .batch_execute("CREATE TEMP TABLE pin_policy (a int)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{err:?}");
        let err = a.batch_execute("LISTEN pin_policy").await.unwrap_err();
        assert_refused(&err, "listen", "LISTEN", "otherdb");
    });
}

#[test]
fn session_pooling_needs_no_pin() {
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            mode: "session",
            pin_on: Some("[]"),
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let once = KINDS
            .iter()
            .filter(|k| k.1 != "prepare_transaction" && !k.0.contains("pg_temp"));
        for (sql, _, _) in once {
            a.batch_execute(sql).await.unwrap();
        }
        assert!(metrics(&gw).contains("sluice_pinned_servers{core=\"0\"} 0\n"));
    });
}
