//! Statement guardrails through the gateway, against a real PostgreSQL: what the policy
//! denies never reaches the database (checked on the database itself), the client gets 42501
//! naming the rule, the session stays usable, and a denial inside a transaction aborts it as
//! an error from PostgreSQL would. The role `auditor` has the policy `read-only` (reads,
//! transactions and session settings; never `public.secrets`), see tests/common/gateway.rs.

mod common;

use common::gateway::{
    connect, create_app_database, runtime, sqlstate, start_gateway, within, GatewayOptions,
    AGENT_TOKEN, AUDITOR_TOKEN, CAPPED_TOKEN, CONN, MASKED_TOKEN,
};
use common::{psql_cmd, run_err, run_ok, shared_pg, superuser_on, with_shared_pg, PgTarget};

fn setup(db: &str) -> common::gateway::Gateway {
    seed(db);
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            ..GatewayOptions::default()
        },
    )
}

fn seed(db: &str) {
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            common::gateway::APP_PASSWORD,
            db,
            "CREATE TABLE orders (id int PRIMARY KEY, amount int);
             INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 5) g;
             CREATE TABLE secrets (id int, value text);
             INSERT INTO secrets VALUES (1, 'the-launch-code');",
        )
        .expect("seeding");
    });
}

fn auditor(gw: &common::gateway::Gateway) -> PgTarget {
    PgTarget::new(gw.port(), "auditor", AUDITOR_TOKEN, "otherdb")
}

fn backend_scalar(db: &str, sql: &str) -> String {
    run_ok(&mut psql_cmd(&superuser_on(shared_pg(), db), sql))
        .trim()
        .to_owned()
}

#[test]
fn denied_statements_never_reach_the_database() {
    let db = "guardrails_never";
    let gw = setup(db);
    let who = auditor(&gw);
    // Allowed: a read, including a string that merely mentions DROP.
    let out = run_ok(&mut psql_cmd(
        &who,
        "SELECT count(*), 'drop table orders' FROM orders",
    ));
    assert_eq!(out.trim(), "5|drop table orders");

    for sql in [
        "DELETE FROM orders",
        "DrOp /* hidden */ TABLE public.orders",
        "SELECT 1; DROP TABLE orders",
        "UPDATE orders SET amount = 0 WHERE id = 1",
        "SELECT value FROM \"public\".\"secrets\"",
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        "SELECT pg_read_file('/etc/passwd')",
        "COPY orders TO PROGRAM 'cat > /tmp/x'",
    ] {
        let err = run_err(&mut psql_cmd(&who, sql));
        assert!(err.contains("ERROR:  sluice: denied"), "{sql}: {err}");
        assert!(!err.contains("the-launch-code"), "{sql}: {err}");
    }
    // The database saw none of it.
    assert_eq!(
        backend_scalar(db, "SELECT count(*), sum(amount) FROM orders"),
        "5|150"
    );
    assert_eq!(
        backend_scalar(db, "SELECT to_regclass('public.orders') IS NOT NULL"),
        "t"
    );
}

#[test]
fn a_denial_is_an_ordinary_error_for_the_session() {
    let db = "guardrails_session";
    let gw = setup(db);
    let rt = runtime();
    rt.block_on(async {
        let client = connect(&auditor(&gw).conn_str()).await;
        // Extended protocol with parameters: denied at Parse, 42501, then the session goes on.
        let err = within(
            10,
            "denied query",
            client.query("DELETE FROM orders WHERE id = $1", &[&1i32]),
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{err:?}");
        let rows = within(
            10,
            "next query",
            client.query("SELECT amount FROM orders WHERE id = $1", &[&2i32]),
        )
        .await
        .expect("the session stays usable");
        assert_eq!(rows[0].get::<_, i32>(0), 20);

        // Simple protocol inside a transaction: the denial aborts it, as PostgreSQL would.
        within(10, "begin", client.batch_execute("BEGIN"))
            .await
            .unwrap();
        let err = within(
            10,
            "denied in txn",
            client.batch_execute("DROP TABLE orders"),
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&err), "42501");
        let err = within(10, "after denial", client.batch_execute("SELECT 1"))
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err),
            "25P02",
            "the transaction is aborted: {err:?}"
        );
        within(10, "rollback", client.batch_execute("ROLLBACK"))
            .await
            .unwrap();
        let n: i64 = within(
            10,
            "count",
            client.query_one("SELECT count(*) FROM orders", &[]),
        )
        .await
        .unwrap()
        .get(0);
        assert_eq!(n, 5);

        // A prepared statement that is denied cannot be used later either.
        let err = within(
            10,
            "prepare denied",
            client.prepare("SELECT * FROM secrets"),
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&err), "42501");
        let ok = within(
            10,
            "prepare allowed",
            client.prepare("SELECT id FROM orders ORDER BY id"),
        )
        .await
        .unwrap();
        let rows = within(10, "run prepared", client.query(&ok, &[]))
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
    });
    assert_eq!(backend_scalar(db, "SELECT count(*) FROM orders"), "5");
}

/// Role `analyst`: policy `unrestricted` (every class, no require_where, but no
/// data-modifying CTEs and the built-in function denials).
fn analyst(gw: &common::gateway::Gateway) -> PgTarget {
    PgTarget::new(gw.port(), "agent", AGENT_TOKEN, CONN)
}

/// Role `masked`: the shared policy that allows writes and keeps `require_where` (its
/// masking rules cover `customers` only, which these statements do not touch).
fn writer(gw: &common::gateway::Gateway) -> PgTarget {
    PgTarget::new(gw.port(), "agent", MASKED_TOKEN, CONN)
}

#[test]
fn writes_behind_a_reading_with_run_and_writing_ctes_do_not() {
    let db = "guardrails_with_write";
    let gw = setup(db);
    let who = analyst(&gw);
    run_ok(&mut psql_cmd(
        &who,
        "WITH s AS (SELECT id FROM orders WHERE id <= 2) UPDATE orders SET amount = 0 FROM s WHERE orders.id = s.id",
    ));
    assert_eq!(
        backend_scalar(
            db,
            "SELECT string_agg(amount::text, ',' ORDER BY id) FROM orders"
        ),
        "0,0,30,40,50"
    );
    let err = run_err(&mut psql_cmd(
        &who,
        "WITH d AS (DELETE FROM orders WHERE id = 5 RETURNING id) UPDATE orders SET amount = 1 FROM d WHERE orders.id = d.id",
    ));
    assert!(err.contains("allow_data_modifying_cte"), "{err}");
    assert_eq!(backend_scalar(db, "SELECT count(*) FROM orders"), "5");
}

#[test]
fn merge_on_a_constant_join_needs_a_where() {
    let db = "guardrails_merge";
    let gw = setup(db);
    let who = writer(&gw);
    for sql in [
        "MERGE INTO orders t USING (SELECT 1 AS id) s ON true WHEN MATCHED THEN DELETE",
        "MERGE INTO orders t USING (SELECT 1 AS id) s ON 1 = 1 WHEN MATCHED THEN UPDATE SET amount = 0",
    ] {
        let err = run_err(&mut psql_cmd(&who, sql));
        assert!(err.contains("require_where"), "{sql}: {err}");
    }
    assert_eq!(
        backend_scalar(db, "SELECT count(*), sum(amount) FROM orders"),
        "5|150"
    );
    run_ok(&mut psql_cmd(
        &who,
        "MERGE INTO orders t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ));
    assert_eq!(backend_scalar(db, "SELECT count(*) FROM orders"), "4");
}

#[test]
fn set_config_of_a_plain_setting_runs_and_of_the_role_does_not() {
    let db = "guardrails_set_config";
    let gw = setup(db);
    let who = analyst(&gw);
    let out = run_ok(&mut psql_cmd(
        &who,
        "SELECT set_config('application_name', 'agent-7', false)",
    ));
    assert_eq!(out.trim(), "agent-7");
    for (sql, rule) in [
        (
            "SELECT set_config('role', 'postgres', false)",
            "allow_set_role",
        ),
        (
            "SELECT set_config(current_setting('application_name'), 'x', false)",
            "builtin/functions/set_config",
        ),
        (
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "builtin/functions/pg_terminate_backend",
        ),
    ] {
        let err = run_err(&mut psql_cmd(&who, sql));
        assert!(err.contains(rule), "{sql}: {err}");
    }
}

/// Role `capped`: policy `capped` (reads and writes, `max_affected_rows: 3`).
fn capped(gw: &common::gateway::Gateway) -> PgTarget {
    PgTarget::new(gw.port(), "agent", CAPPED_TOKEN, CONN)
}

fn amounts(db: &str) -> String {
    backend_scalar(
        db,
        "SELECT string_agg(id || ':' || amount, ',' ORDER BY id) FROM orders",
    )
}

const UNTOUCHED: &str = "1:10,2:20,3:30,4:40,5:50";

fn capped_gateway(db: &str, mode: &'static str) -> common::gateway::Gateway {
    seed(db);
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode,
            ..GatewayOptions::default()
        },
    )
}

#[test]
fn writes_over_max_affected_rows_are_rolled_back_in_the_simple_protocol() {
    for mode in ["transaction", "session"] {
        let db = &format!("guardrails_blast_simple_{mode}");
        let gw = capped_gateway(db, mode);
        let who = capped(&gw);
        // Always-true WHEREs pass require_where; the count stops them.
        for sql in [
            "DELETE FROM orders WHERE id > 0",
            "UPDATE orders SET amount = 0 WHERE id IS NOT NULL",
            "MERGE INTO orders t USING orders s ON t.id = s.id WHEN MATCHED THEN UPDATE SET amount = 0",
            "UPDATE orders SET amount = 0 WHERE id >= 1 RETURNING id",
        ] {
            let err = run_err(&mut psql_cmd(&who, sql));
            assert!(
                err.contains("capped/max_affected_rows")
                    && err.contains("affected 5 rows, more than the limit of 3"),
                "{mode}: {sql}: {err}"
            );
            assert_eq!(amounts(db), UNTOUCHED, "{mode}: {sql} changed nothing");
        }
        // At the limit: it runs and commits, RETURNING rows come back.
        let out = run_ok(&mut psql_cmd(
            &who,
            "UPDATE orders SET amount = amount + 1 WHERE id <= 3 RETURNING id",
        ));
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["1", "2", "3", "UPDATE", "3"]
        );
        // RETURNING rows of a limited write are masked as any result.
        let out = run_ok(&mut psql_cmd(
            &who,
            "UPDATE secrets SET id = id WHERE id = 1 RETURNING value",
        ));
        assert!(
            out.starts_with("****") && !out.contains("launch"),
            "{mode}: {out}"
        );
        let out = run_ok(&mut psql_cmd(&who, "DELETE FROM orders WHERE id = 5"));
        assert_eq!(out.trim(), "DELETE 1", "{mode}");
        assert_eq!(amounts(db), "1:11,2:21,3:31,4:40", "{mode}");
        // One text with a counted write among other statements cannot be counted per
        // statement: refused whole.
        let err = run_err(&mut psql_cmd(
            &who,
            "UPDATE orders SET amount = 0 WHERE id = 1; SELECT 1",
        ));
        assert!(err.contains("send it on its own"), "{mode}: {err}");
        // Inside a transaction the refusal is an error like any other: the transaction is
        // aborted, and its COMMIT rolls it back whole, the statements before it included.
        runtime().block_on(async {
            let client = connect(&who.conn_str()).await;
            for sql in ["BEGIN", "UPDATE orders SET amount = 7 WHERE id = 1"] {
                within(10, sql, client.batch_execute(sql)).await.unwrap();
            }
            let err = within(
                10,
                "over in a transaction",
                client.batch_execute("DELETE FROM orders WHERE id > 0"),
            )
            .await
            .unwrap_err();
            assert_eq!(sqlstate(&err), "42501", "{mode}: {err:?}");
            let err = within(10, "after", client.batch_execute("SELECT 1"))
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&err), "25P02", "{mode}: {err:?}");
            within(10, "commit", client.batch_execute("COMMIT"))
                .await
                .unwrap();
            // The session goes on, and a write within the limit commits.
            let n = within(
                10,
                "within",
                client.execute("DELETE FROM orders WHERE id = 4", &[]),
            )
            .await
            .unwrap();
            assert_eq!(n, 1);
        });
        assert_eq!(amounts(db), "1:11,2:21,3:31", "{mode}");
    }
}

#[test]
fn writes_over_max_affected_rows_are_rolled_back_in_the_extended_protocol() {
    for mode in ["transaction", "session"] {
        let db = &format!("guardrails_blast_extended_{mode}");
        let gw = capped_gateway(db, mode);
        let rt = runtime();
        rt.block_on(async {
            let mut client = connect(&capped(&gw).conn_str()).await;
            let err = within(
                10,
                "over the limit",
                client.execute("DELETE FROM orders WHERE id > $1", &[&0i32]),
            )
            .await
            .unwrap_err();
            assert_eq!(sqlstate(&err), "42501", "{mode}: {err:?}");
            assert!(
                format!("{err:?}").contains("affected 5 rows, more than the limit of 3"),
                "{err:?}"
            );
            assert_eq!(amounts(db), UNTOUCHED, "{mode}");
            let n = within(
                10,
                "within the limit",
                client.execute("UPDATE orders SET amount = 0 WHERE id <= $1", &[&2i32]),
            )
            .await
            .expect("a write within the limit runs");
            assert_eq!(n, 2);
            assert_eq!(amounts(db), "1:0,2:0,3:30,4:40,5:50", "{mode}");
            let rows = within(
                10,
                "masked RETURNING",
                client.query(
                    "UPDATE secrets SET id = id WHERE id = $1 RETURNING value",
                    &[&1i32],
                ),
            )
            .await
            .unwrap();
            let value: String = rows[0].get(0);
            assert!(!value.contains("launch"), "{mode}: {value}");

            // Pipelined: a refused write and the statements sent behind it, each answered
            // in order.
            let over = client.execute("UPDATE orders SET amount = 1 WHERE id > $1", &[&0i32]);
            let read = client.query_one("SELECT count(*) FROM orders", &[]);
            let under = client.execute("UPDATE orders SET amount = 9 WHERE id = $1", &[&5i32]);
            let (over, read, under) =
                within(10, "pipelined", async { futures::join!(over, read, under) }).await;
            assert_eq!(sqlstate(&over.unwrap_err()), "42501", "{mode}");
            assert_eq!(read.unwrap().get::<_, i64>(0), 5);
            assert_eq!(under.unwrap(), 1);
            assert_eq!(amounts(db), "1:0,2:0,3:30,4:40,5:9", "{mode}");

            // Inside a transaction: the refusal aborts it, as any error would; nothing
            // of it commits.
            let tx = client.transaction().await.unwrap();
            tx.execute("UPDATE orders SET amount = 100 WHERE id = $1", &[&1i32])
                .await
                .unwrap();
            let err = within(
                10,
                "over in a transaction",
                tx.execute("DELETE FROM orders WHERE id > $1", &[&0i32]),
            )
            .await
            .unwrap_err();
            assert_eq!(sqlstate(&err), "42501", "{mode}");
            let err = tx.query_one("SELECT 1", &[]).await.unwrap_err();
            assert_eq!(
                sqlstate(&err),
                "25P02",
                "{mode}: the transaction is aborted"
            );
            tx.rollback().await.unwrap();
            assert_eq!(amounts(db), "1:0,2:0,3:30,4:40,5:9", "{mode}");

            // Within the limit inside a transaction: committed with it.
            let tx = client.transaction().await.unwrap();
            let n = tx
                .execute("DELETE FROM orders WHERE id >= $1", &[&4i32])
                .await
                .unwrap();
            assert_eq!(n, 2);
            tx.commit().await.unwrap();
            assert_eq!(amounts(db), "1:0,2:0,3:30", "{mode}");
        });
    }
}
