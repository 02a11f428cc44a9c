//! What a pooled server connection carries from one client to the next: an open transaction
//! left by a client that went away, session settings, LISTEN registrations, the parameters
//! reported at startup, and notification pids. Each test runs a gateway in front of a fresh
//! database of the cluster this binary shares.

mod common;

use std::time::Duration;

use common::gateway::{
    connect, create_app_database, runtime, start_gateway, within, Gateway, GatewayOptions,
    AGENT_TOKEN,
};
use common::{shared_pg, superuser_on, with_shared_pg};

/// A gateway with one core and a pool of one in front of a fresh database `db`.
fn pool_of_one(db: &str, mode: &'static str) -> Gateway {
    with_shared_pg(|c| create_app_database(c, db));
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            size: 1,
            cores: 1,
            timeout: "3s",
            ..GatewayOptions::default()
        },
    )
}

/// The database directly, as the cluster's superuser.
fn direct(db: &str) -> String {
    superuser_on(shared_pg(), db).conn_str()
}

/// A client that leaves inside a transaction (with a Terminate, or by dropping its socket)
/// leaves no `idle in transaction` server behind: its row lock is gone at once, and the pool's
/// only slot serves the next client.
fn departure_mid_transaction_releases_locks(mode: &'static str, db: &str) {
    let gw = pool_of_one(db, mode);
    let rt = runtime();
    rt.block_on(async {
        let admin = connect(&direct(db)).await;
        admin
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);
                 GRANT ALL ON t TO app",
            )
            .await
            .unwrap();
        for abrupt in [false, true] {
            let conn_str = gw.conn_str(AGENT_TOKEN);
            if abrupt {
                // A raw socket: log in through tokio-postgres's own connection, then drop the
                // socket without a Terminate by aborting the task that drives it.
                let (client, conn) = within(
                    10,
                    "connecting",
                    tokio_postgres::connect(&conn_str, tokio_postgres::NoTls),
                )
                .await
                .unwrap();
                let driver = tokio::spawn(conn);
                client
                    .batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
                    .await
                    .unwrap();
                driver.abort();
                let _ = driver.await;
                drop(client);
            } else {
                let client = connect(&conn_str).await;
                client
                    .batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
                    .await
                    .unwrap();
                drop(client);
            }
            // Another session updates the row within a second.
            within(5, "updating the row the client had locked", async {
                admin
                    .batch_execute("SET lock_timeout = '1s'; UPDATE t SET v = v + 1 WHERE id = 1")
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{mode}, abrupt={abrupt}: the row is still locked: {e:?}")
                    });
            })
            .await;
            let open: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                     AND state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                open, 0,
                "{mode}, abrupt={abrupt}: a server was left in a transaction"
            );
            // The pool's one slot serves the next client, outside any transaction.
            let next = connect(&conn_str).await;
            // The first command of a transaction is the only one whose statement timestamp is
            // the transaction's.
            let rows = within(
                5,
                "the next client's query",
                next.simple_query("SELECT now() = statement_timestamp()"),
            )
            .await
            .unwrap();
            assert_eq!(
                first_value(&rows),
                "t",
                "{mode}: the next client runs inside an old transaction"
            );
            drop(next);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn session_mode_departure_mid_transaction_releases_locks() {
    departure_mid_transaction_releases_locks("session", "leave_session_db");
}

#[test]
fn transaction_mode_departure_mid_transaction_releases_locks() {
    departure_mid_transaction_releases_locks("transaction", "leave_txn_db");
}

/// The first column of the first row of a simple query's answer.
fn first_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> String {
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .expect("a row")
}
