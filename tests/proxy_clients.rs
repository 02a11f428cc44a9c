//! Real clients through the gateway: psql, pgbench, tokio-postgres, COPY, notices and
//! notifications, in both pool modes, against a real PostgreSQL shared by this binary.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway::{
    agent_jwt, connect, connect_with_messages, create_app_database, runtime, start_gateway, within,
    Async, Gateway, GatewayOptions, AGENT_TOKEN, APP_USER,
};
use common::{pgbench_cmd, psql_cmd, run_ok, run_ok_both, shared_pg, superuser_on, with_shared_pg};
use futures::{SinkExt as _, StreamExt as _};

/// A gateway in front of a fresh database `db` of the shared cluster.
fn gateway_on_new_db(db: &str, opts: GatewayOptions) -> Gateway {
    with_shared_pg(|c| create_app_database(c, db));
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            ..opts
        },
    )
}

fn session() -> GatewayOptions {
    GatewayOptions {
        mode: "session",
        ..GatewayOptions::default()
    }
}

#[test]
fn psql_command_and_script_run_through_the_gateway() {
    let gw = gateway_on_new_db("psql_db", GatewayOptions::default());
    let agent = gw.target(AGENT_TOKEN);

    // The gateway logs in with its own credentials, to the configured database.
    let who = run_ok(&mut psql_cmd(
        &agent,
        "SELECT current_user, session_user, current_database(), 6 * 7",
    ));
    assert_eq!(who.trim(), format!("{APP_USER}|{APP_USER}|psql_db|42"));

    // Several -c in one session; the JWT works the same way as the static token.
    let mut cmd = psql_cmd(&gw.target(&agent_jwt()), "SELECT 'first'");
    cmd.args(["-c", "SELECT current_setting('application_name'), 2"]);
    assert_eq!(run_ok(&mut cmd).trim(), "first\npsql|2");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        r#"
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
BEGIN;
INSERT INTO accounts SELECT g, 'owner-' || g, g * 10 FROM generate_series(1, 100) g;
UPDATE accounts SET balance = balance + 1 WHERE id % 2 = 0;
COMMIT;
BEGIN;
DELETE FROM accounts;
ROLLBACK;
\echo between
SELECT count(*), sum(balance), min(owner), max(id) FROM accounts;
SELECT owner FROM accounts WHERE id IN (7, 99) ORDER BY id;
"#,
    )
    .unwrap();
    let mut cmd = psql_cmd(&agent, "SELECT 'before'");
    cmd.arg("-f").arg(&script);
    let out = run_ok(&mut cmd);
    // sum(10 * g) for 1..=100 is 50500, plus 1 for each of the 50 even ids.
    assert_eq!(
        out.trim(),
        "before\nCREATE TABLE\nBEGIN\nINSERT 0 100\nUPDATE 50\nCOMMIT\nBEGIN\nDELETE 100\nROLLBACK\nbetween\n100|50550|owner-1|100\nowner-7\nowner-99"
    );

    // The rows are really in the backend database.
    let direct = superuser_on(shared_pg(), "psql_db");
    assert_eq!(
        run_ok(&mut psql_cmd(&direct, "SELECT count(*) FROM accounts")).trim(),
        "100"
    );
}

/// `pgbench -i` (COPY, DDL, VACUUM) and short TPC-B runs in each protocol mode through a
/// gateway with pool `mode`; every transaction must land in the backend.
fn pgbench_through(mode: &'static str, db: &str) {
    let gw = gateway_on_new_db(
        db,
        GatewayOptions {
            mode,
            // The size is split across the 2 cores, and the kernel may send all 4 pgbench
            // clients to one core: session mode needs 4 per core.
            size: 8,
            ..GatewayOptions::default()
        },
    );
    let agent = gw.target(AGENT_TOKEN);
    let init = run_ok(pgbench_cmd(&agent).args(["-i", "-s", "1", "-q"]));
    assert!(init.is_empty(), "pgbench -i printed to stdout: {init}");
    let direct = superuser_on(shared_pg(), db);
    assert_eq!(
        run_ok(&mut psql_cmd(
            &direct,
            "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_branches)"
        ))
        .trim(),
        "100000|1"
    );

    let (clients, per_client) = (4, 25);
    for protocol in ["simple", "extended", "prepared"] {
        let out = run_ok(pgbench_cmd(&agent).args([
            "-n",
            "-M",
            protocol,
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-t",
            &per_client.to_string(),
        ]));
        let total = clients * per_client;
        assert!(
            out.contains(&format!(
                "number of transactions actually processed: {total}/{total}"
            )),
            "pgbench -M {protocol} in {mode} mode:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "pgbench -M {protocol} in {mode} mode:\n{out}"
        );
    }
    // Each TPC-B transaction inserts one history row and moves `delta` through every table.
    let check = "SELECT (SELECT count(*) FROM pgbench_history), \
                 (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history), \
                 (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)";
    assert_eq!(
        run_ok(&mut psql_cmd(&direct, check)).trim(),
        format!("{}|t|t", 3 * clients * per_client)
    );
}

#[test]
fn pgbench_init_and_all_protocols_in_transaction_mode() {
    pgbench_through("transaction", "bench_txn");
}

#[test]
fn pgbench_init_and_all_protocols_in_session_mode() {
    pgbench_through("session", "bench_session");
}

#[test]
fn tokio_postgres_parameters_types_and_large_results() {
    let gw = gateway_on_new_db("params_db", GatewayOptions::default());
    runtime().block_on(async {
        let client = connect(&gw.conn_str(AGENT_TOKEN)).await;
        client
            .batch_execute(
                "CREATE TABLE things (id int PRIMARY KEY, name text, ok bool, score float8, raw bytea, note text)",
            )
            .await
            .unwrap();
        let insert = "INSERT INTO things VALUES ($1, $2, $3, $4, $5, $6)";
        for id in 1..=20i32 {
            let name = format!("thing-{id}");
            let note: Option<&str> = if id % 5 == 0 { None } else { Some("n'o\"te") };
            let raw: Vec<u8> = vec![0, 255, id as u8];
            let n = client
                .execute(
                    insert,
                    &[&id, &name, &(id % 2 == 0), &(f64::from(id) / 4.0), &raw, &note],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        let rows = client
            .query(
                "SELECT id, name, ok, score, raw, note FROM things WHERE id > $1 AND name LIKE $2 ORDER BY id",
                &[&15i32, &"thing-%"],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        let r = &rows[4];
        assert_eq!(r.get::<_, i32>(0), 20);
        assert_eq!(r.get::<_, String>(1), "thing-20");
        assert!(r.get::<_, bool>(2));
        assert_eq!(r.get::<_, f64>(3), 5.0);
        assert_eq!(r.get::<_, Vec<u8>>(4), vec![0, 255, 20]);
        assert_eq!(r.get::<_, Option<String>>(5), None);
        assert_eq!(rows[0].get::<_, Option<String>>(5).as_deref(), Some("n'o\"te"));

        // A result far larger than the gateway's buffers arrives whole and in order.
        let rows = client
            .query(
                "SELECT g, repeat(chr(65 + g % 26), 1000) FROM generate_series(1, 20000) g",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 20000);
        for (i, row) in rows.iter().enumerate() {
            let g: i32 = row.get(0);
            assert_eq!(g, i as i32 + 1);
            let s: &str = row.get(1);
            assert_eq!(s.len(), 1000);
            assert_eq!(s.as_bytes()[0], b'A' + (g % 26) as u8);
        }

        // An error mid-stream reaches the client and the connection goes on.
        let err = client
            .query("SELECT 1 / (g - 5000) FROM generate_series(1, 9000) g", &[])
            .await
            .unwrap_err();
        assert_eq!(common::gateway::sqlstate(&err), "22012");
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
}

#[test]
fn prepared_statements_are_reused_across_transactions_on_shared_servers() {
    // One core and one server connection: both clients' statements live on the same server.
    // (tokio-postgres names statements from a process-wide counter, so their names never
    // collide; colliding names are covered by `pgbench -M prepared`, whose clients all call
    // theirs P_0, P_1, ...)
    let gw = gateway_on_new_db(
        "prepared_db",
        GatewayOptions {
            size: 1,
            cores: 1,
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let a = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let b = connect(&gw.conn_str(&agent_jwt())).await;
        a.batch_execute(
            "CREATE TABLE pets (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO pets SELECT g, 'pet-' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
        let by_id = a
            .prepare("SELECT name FROM pets WHERE id = $1")
            .await
            .unwrap();
        let by_name = b
            .prepare("SELECT id, length(name) FROM pets WHERE name = $1")
            .await
            .unwrap();

        for round in 1..=10i32 {
            // Each statement in its own transaction, interleaved between the two clients.
            let tx = a.simple_query("BEGIN").await.unwrap();
            assert!(!tx.is_empty());
            let name: String = a.query_one(&by_id, &[&round]).await.unwrap().get(0);
            assert_eq!(name, format!("pet-{round}"));
            a.simple_query("COMMIT").await.unwrap();

            let row = b
                .query_one(&by_name, &[&format!("pet-{}", round + 20)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), round + 20);
            assert_eq!(
                row.get::<_, i32>(1),
                format!("pet-{}", round + 20).len() as i32
            );
        }

        // A failed transaction does not lose the statement.
        a.batch_execute("BEGIN").await.unwrap();
        let err = a.query_one("SELECT 1 / 0", &[]).await.unwrap_err();
        assert_eq!(common::gateway::sqlstate(&err), "22012");
        a.batch_execute("ROLLBACK").await.unwrap();
        let name: String = a.query_one(&by_id, &[&42i32]).await.unwrap().get(0);
        assert_eq!(name, "pet-42");

        // Concurrent use from many tasks of one client, and of a third client.
        let c = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let by_id_c = c
            .prepare("SELECT name FROM pets WHERE id = $1")
            .await
            .unwrap();
        let a = std::sync::Arc::new(a);
        let mut tasks = Vec::new();
        for id in 1..=30i32 {
            let a = a.clone();
            let st = by_id.clone();
            tasks.push(tokio::spawn(async move {
                let name: String = a.query_one(&st, &[&id]).await.unwrap().get(0);
                assert_eq!(name, format!("pet-{id}"));
            }));
        }
        for id in 31..=50i32 {
            let name: String = c.query_one(&by_id_c, &[&id]).await.unwrap().get(0);
            assert_eq!(name, format!("pet-{id}"));
        }
        for t in tasks {
            within(10, "prepared query task", t).await.unwrap();
        }
    });
}

#[test]
fn copy_in_and_out_with_psql() {
    let gw = gateway_on_new_db("copy_psql_db", GatewayOptions::default());
    let agent = gw.target(AGENT_TOKEN);
    run_ok(&mut psql_cmd(
        &agent,
        "CREATE TABLE people (id int PRIMARY KEY, name text, email text)",
    ));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::new();
    for i in 1..=5000 {
        csv += &format!("{i},\"Name, {i}\",user{i}@example.com\n");
    }
    std::fs::write(&input, &csv).unwrap();
    let copy_in = format!("\\copy people FROM '{}' WITH (FORMAT csv)", input.display());
    assert_eq!(run_ok(&mut psql_cmd(&agent, &copy_in)).trim(), "COPY 5000");
    let copy_out = format!(
        "\\copy (SELECT * FROM people ORDER BY id) TO '{}' WITH (FORMAT csv)",
        output.display()
    );
    assert_eq!(run_ok(&mut psql_cmd(&agent, &copy_out)).trim(), "COPY 5000");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), csv);

    // Bad data: the COPY fails as a whole, with PostgreSQL's error, and nothing is left.
    std::fs::write(&input, "1,dup,x@y\nnot-a-number,a,b\n").unwrap();
    let err = common::run_err(&mut psql_cmd(
        &agent,
        &format!("\\copy people FROM '{}' WITH (FORMAT csv)", input.display()),
    ));
    assert!(
        err.contains("invalid input syntax for type integer") || err.contains("duplicate key"),
        "{err}"
    );
    assert_eq!(
        run_ok(&mut psql_cmd(
            &agent,
            "SELECT count(*), max(id) FROM people"
        ))
        .trim(),
        "5000|5000"
    );
}

#[test]
fn copy_in_and_out_with_tokio_postgres() {
    // One server connection: after each COPY it must go back to the pool for `other`.
    let gw = gateway_on_new_db(
        "copy_tokio_db",
        GatewayOptions {
            size: 1,
            cores: 1,
            timeout: "3s",
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let client = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let other = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let other_counts = || async {
            let n: i64 = other
                .query_one("SELECT count(*) FROM blobs", &[])
                .await
                .expect("the server went back to the pool after the COPY")
                .get(0);
            n
        };
        client
            .batch_execute("CREATE TABLE blobs (id int, body text)")
            .await
            .unwrap();
        let sink = client
            .copy_in::<_, Bytes>("COPY blobs FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        // Small rows (buffered by the client into shared CopyData messages)...
        for i in 0..1000 {
            sink.send(Bytes::from(format!("{i}\tsmall-{i}\n")))
                .await
                .unwrap();
        }
        // ...and single CopyData messages far larger than the gateway's read buffer.
        let big_row = |i: usize| format!("{i}\t{}\n", "x".repeat(300_000 + i));
        for i in 1000..1004 {
            sink.send(Bytes::from(big_row(i))).await.unwrap();
        }
        let n = within(30, "COPY FROM STDIN", sink.finish()).await.unwrap();
        assert_eq!(n, 1004);
        assert_eq!(other_counts().await, 1004);

        let row = client
            .query_one(
                "SELECT count(*), sum(length(body)), max(id) FROM blobs",
                &[],
            )
            .await
            .unwrap();
        let small: i64 = (0..1000).map(|i| format!("small-{i}").len() as i64).sum();
        let big: i64 = (1000..1004).map(|i| 300_000 + i as i64).sum();
        assert_eq!(row.get::<_, i64>(0), 1004);
        assert_eq!(row.get::<_, i64>(1), small + big);
        assert_eq!(row.get::<_, i32>(2), 1003);

        let stream = client
            .copy_out("COPY (SELECT id, body FROM blobs ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        futures::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = within(30, "COPY TO STDOUT", stream.next()).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        let mut expected = String::new();
        for i in 0..1000 {
            expected += &format!("{i}\tsmall-{i}\n");
        }
        for i in 1000..1004 {
            expected += &big_row(i);
        }
        assert_eq!(out.len(), expected.len());
        assert!(out == expected.as_bytes(), "COPY OUT content differs");
        assert_eq!(other_counts().await, 1004);

        // A COPY the client aborts leaves nothing behind, and the session goes on.
        let sink = client
            .copy_in::<_, Bytes>("COPY blobs FROM STDIN")
            .await
            .unwrap();
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from_static(b"5000\tnever\n"))
            .await
            .unwrap();
        drop(sink); // dropping an unfinished sink sends CopyFail
        let n: i64 = client
            .query_one("SELECT count(*) FROM blobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1004);
        assert_eq!(other_counts().await, 1004);
    });
}

#[test]
fn notices_reach_psql_and_tokio_postgres() {
    let gw = gateway_on_new_db("notice_db", GatewayOptions::default());
    let (out, err) = run_ok_both(&mut psql_cmd(
        &gw.target(AGENT_TOKEN),
        "DO $$ BEGIN RAISE NOTICE 'hello %', 6 * 7; RAISE WARNING 'careful'; END $$",
    ));
    assert_eq!(out.trim(), "DO");
    assert!(err.contains("NOTICE:  hello 42"), "{err}");
    assert!(err.contains("WARNING:  careful"), "{err}");

    runtime().block_on(async {
        let (client, mut messages) = connect_with_messages(&gw.conn_str(AGENT_TOKEN)).await;
        client
            .batch_execute("DO $$ BEGIN RAISE NOTICE 'from %', 'tokio'; END $$")
            .await
            .unwrap();
        let got = within(5, "notice", messages.recv()).await;
        assert_eq!(got, Some(Async::Notice("from tokio".into())));
    });
}

#[test]
fn notifications_reach_a_listener_in_session_mode() {
    let gw = gateway_on_new_db("notify_db", session());
    runtime().block_on(async {
        let (listener, mut messages) = connect_with_messages(&gw.conn_str(AGENT_TOKEN)).await;
        listener.batch_execute("LISTEN jobs").await.unwrap();
        let notifier = connect(&gw.conn_str(&agent_jwt())).await;
        notifier
            .batch_execute("NOTIFY jobs, 'first'; SELECT pg_notify('jobs', 'second')")
            .await
            .unwrap();
        // Delivered after the listener's next round trip at the latest...
        listener.batch_execute("SELECT 1").await.unwrap();
        let first = within(5, "first notification", messages.recv()).await;
        assert_eq!(
            first,
            Some(Async::Notification("jobs".into(), "first".into()))
        );
        let second = within(5, "second notification", messages.recv()).await;
        assert_eq!(
            second,
            Some(Async::Notification("jobs".into(), "second".into()))
        );
    });
}

#[test]
fn session_settings_persist_in_session_mode() {
    let gw = gateway_on_new_db("settings_session_db", session());
    let mut cmd = psql_cmd(&gw.target(AGENT_TOKEN), "SET application_name = 'probe'");
    cmd.args(["-c", "SET TimeZone = 'Asia/Kolkata'"]);
    cmd.args([
        "-c",
        "SELECT current_setting('application_name'), current_setting('TimeZone')",
    ]);
    assert_eq!(run_ok(&mut cmd).trim(), "SET\nSET\nprobe|Asia/Kolkata");
}

#[test]
fn transaction_mode_keeps_a_clients_reported_parameters() {
    let gw = gateway_on_new_db("settings_txn_db", GatewayOptions::default());
    // A setting the client did not send at startup survives...
    let mut cmd = psql_cmd(&gw.target(AGENT_TOKEN), "SET TimeZone = 'Asia/Kolkata'");
    cmd.args(["-c", "SELECT current_setting('TimeZone')"]);
    assert_eq!(run_ok(&mut cmd).trim(), "SET\nAsia/Kolkata");
    // ...but one it sent (psql sends application_name) is re-applied from the startup packet.
    let mut cmd = psql_cmd(&gw.target(AGENT_TOKEN), "SET application_name = 'probe'");
    cmd.args(["-c", "SELECT current_setting('application_name')"]);
    assert_eq!(run_ok(&mut cmd).trim(), "SET\nprobe");
}

#[test]
fn notifications_reach_an_idle_listener_in_session_mode() {
    let gw = gateway_on_new_db("notify_idle_db", session());
    runtime().block_on(async {
        let (listener, mut messages) = connect_with_messages(&gw.conn_str(AGENT_TOKEN)).await;
        listener.batch_execute("LISTEN idle_jobs").await.unwrap();
        let notifier = connect(&gw.conn_str(AGENT_TOKEN)).await;
        notifier
            .batch_execute("NOTIFY idle_jobs, 'wake up'")
            .await
            .unwrap();
        // PostgreSQL sends a notification to an idle listener at once; so must the gateway.
        let got = tokio::time::timeout(Duration::from_secs(3), messages.recv()).await;
        assert_eq!(
            got.ok().flatten(),
            Some(Async::Notification("idle_jobs".into(), "wake up".into())),
            "an idle listener got no notification within 3s"
        );
    });
}
