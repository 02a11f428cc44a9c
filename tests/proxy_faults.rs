//! Faults and load: query cancellation, a backend restart, clients speaking garbage or
//! announcing huge messages, 500 concurrent clients over a pool of 10, an exhausted pool.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{
    connect, create_app_database, prepare_backend, runtime, sqlstate, start_gateway, try_connect,
    within, Gateway, GatewayOptions, AGENT_TOKEN, CONN,
};
use common::{shared_options, shared_pg, start_pg, superuser_on, with_shared_pg};
use tokio_postgres::NoTls;

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

#[test]
fn cancel_request_stops_pg_sleep_on_either_core() {
    let port = shared_pg();
    for mode in ["transaction", "session"] {
        let gw = start_gateway(
            port,
            GatewayOptions {
                mode,
                ..GatewayOptions::default()
            },
        );
        runtime().block_on(async {
            let direct = connect(&superuser_on(port, "postgres").conn_str()).await;
            // Several clients, so that both cores' cancel paths are taken.
            for i in 0..4 {
                let client = Arc::new(connect(&gw.conn_str(AGENT_TOKEN)).await);
                let sql = format!("SELECT pg_sleep(30) /* cancel {mode} {i} */");
                let running = {
                    let client = client.clone();
                    let sql = sql.clone();
                    tokio::spawn(async move { client.simple_query(&sql).await })
                };
                let active = format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{sql}'"
                );
                within(10, "the sleep to start", async {
                    while direct.query_one(&active, &[]).await.unwrap().get::<_, i64>(0) != 1 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                let started = Instant::now();
                client.cancel_token().cancel_query(NoTls).await.unwrap();
                let err = within(5, "the cancelled query", running)
                    .await
                    .unwrap()
                    .unwrap_err();
                assert_eq!(sqlstate(&err), "57014", "{mode} {i}: {err:?}");
                assert!(started.elapsed() < Duration::from_secs(3));
                // The session goes on.
                let row = client.query_one("SELECT $1::int * 2", &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 2);
            }
            // A forged cancel key cancels nothing (the key is the gateway's own).
            let client = Arc::new(connect(&gw.conn_str(AGENT_TOKEN)).await);
            let mut raw = TcpStream::connect(gw.addr).unwrap();
            let mut cancel = Vec::new();
            cancel.extend_from_slice(&16i32.to_be_bytes());
            cancel.extend_from_slice(&80877102i32.to_be_bytes());
            cancel.extend_from_slice(&1i32.to_be_bytes());
            cancel.extend_from_slice(&2i32.to_be_bytes());
            raw.write_all(&cancel).unwrap();
            let rows = client
                .query("SELECT pg_sleep(0.3)::text, 'not cancelled'", &[])
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].get::<_, &str>(1), "not cancelled");
        });
    }
}

#[test]
fn backend_restart_costs_an_error_once_then_new_clients_work() {
    let mut cluster = start_pg(shared_options());
    prepare_backend(&cluster);
    let gw = start_gateway(
        cluster.port(),
        GatewayOptions {
            size: 4,
            ..GatewayOptions::default()
        },
    );
    let rt = runtime();
    let (idle, busy) = rt.block_on(async {
        // Fill the pools of both cores with idle server connections.
        let mut warm = Vec::new();
        for _ in 0..6 {
            warm.push(connect(&gw.conn_str(AGENT_TOKEN)).await);
        }
        let runs: Vec<_> = warm
            .iter()
            .map(|c| c.simple_query("SELECT pg_sleep(0.2)"))
            .collect();
        for r in futures::future::join_all(runs).await {
            r.unwrap();
        }
        let idle = connect(&gw.conn_str(AGENT_TOKEN)).await;
        assert_eq!(
            idle.query_one("SELECT 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
        let busy = Arc::new(connect(&gw.conn_str(AGENT_TOKEN)).await);
        let sleeping = {
            let busy = busy.clone();
            tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(30)").await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        (idle, (busy, sleeping))
    });

    cluster.stop().unwrap();
    rt.block_on(async {
        // The query in flight fails at once (PostgreSQL terminated it).
        let err = within(10, "the in-flight query", busy.1)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            ["57P01", "08006", "none"].contains(&sqlstate(&err).as_str()),
            "{err:?}"
        );
        // A client that connects while the backend is down is told so.
        let err = try_connect(&gw.conn_str(AGENT_TOKEN)).await.unwrap_err();
        assert_eq!(sqlstate(&err), "08001", "{err:?}");
    });
    cluster.start_again().unwrap();
    rt.block_on(async {
        // The idle client's next query may fail, once: its session is then over.
        let first = within(
            10,
            "the idle client's query",
            idle.query_one("SELECT 2", &[]),
        )
        .await;
        if let Err(e) = first {
            assert!(
                idle.is_closed(),
                "an error, yet the client stays open: {e:?}"
            );
        }
        // Every client from now on works, whichever core it lands on.
        for i in 0..10i32 {
            let c = connect(&gw.conn_str(AGENT_TOKEN)).await;
            let row = within(
                10,
                "a new client's query",
                c.query_one("SELECT $1::int + 1", &[&i]),
            )
            .await
            .unwrap_or_else(|e| panic!("new client {i} after the restart: {e:?}"));
            assert_eq!(row.get::<_, i32>(0), i + 1);
        }
    });
}

/// A StartupMessage for `user` and `database`.
fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Reads one backend message; `None` at EOF (or a reset: the gateway hung up).
fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading from the gateway: {e}"),
    }
    let len = i32::from_be_bytes(head[1..].try_into().unwrap());
    let mut body = vec![0u8; usize::try_from(len - 4).unwrap()];
    s.read_exact(&mut body).unwrap();
    Some((head[0], body))
}

/// A raw connection, logged in with the agent token, after ReadyForQuery.
fn raw_login(addr: SocketAddr) -> TcpStream {
    let mut s = raw_connect(addr);
    s.write_all(&startup("raw", CONN)).unwrap();
    let (tag, body) = read_msg(&mut s).expect("an authentication request");
    assert_eq!((tag, &body[..]), (b'R', &3i32.to_be_bytes()[..]));
    let mut pw = vec![b'p'];
    pw.extend_from_slice(&((AGENT_TOKEN.len() + 5) as i32).to_be_bytes());
    pw.extend_from_slice(AGENT_TOKEN.as_bytes());
    pw.push(0);
    s.write_all(&pw).unwrap();
    loop {
        let (tag, _) = read_msg(&mut s).expect("login to finish");
        assert_ne!(tag, b'E', "login failed");
        if tag == b'Z' {
            return s;
        }
    }
}

fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads up to the ErrorResponse and returns (severity, code); then expects the gateway to
/// hang up.
fn expect_fatal(s: &mut TcpStream, what: &str) -> (String, String) {
    let body = loop {
        match read_msg(s) {
            Some((b'E', body)) => break body,
            Some(_) => continue,
            None => panic!("{what}: the gateway hung up without an ErrorResponse"),
        }
    };
    let mut fields = std::collections::HashMap::new();
    for f in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        fields.insert(f[0], String::from_utf8_lossy(&f[1..]).into_owned());
    }
    assert!(read_msg(s).is_none(), "{what}: the connection stays open");
    (fields[&b'S'].clone(), fields[&b'C'].clone())
}

#[test]
fn garbage_and_huge_lengths_get_08p01_and_disturb_nobody_else() {
    let gw = gateway_on_new_db(
        "garbage_db",
        GatewayOptions {
            max_message_bytes: Some("1MiB"),
            ..GatewayOptions::default()
        },
    );
    let rt = runtime();
    // A well-behaved client keeps querying while the others misbehave.
    let stop = Arc::new(AtomicBool::new(false));
    let good_queries = Arc::new(AtomicUsize::new(0));
    let good = {
        let stop = stop.clone();
        let n = good_queries.clone();
        let conn_str = gw.conn_str(AGENT_TOKEN);
        rt.spawn(async move {
            let c = connect(&conn_str).await;
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let row = c.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + 1);
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c
        })
    };

    let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "HTTP instead of a startup packet",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "oversized startup packet",
            {
                let mut m = 0x0010_0000i32.to_be_bytes().to_vec();
                m.extend_from_slice(&196608i32.to_be_bytes());
                m
            },
            false,
        ),
        ("startup length below 8", vec![0, 0, 0, 2, 0, 0], false),
    ];
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&0x7fff_ff00i32.to_be_bytes());
    huge.extend_from_slice(b"SELECT ");
    cases.push(("'Q' announcing 2 GiB", huge, true));
    let mut above_limit = vec![b'Q'];
    above_limit.extend_from_slice(&(2i32 << 20).to_be_bytes());
    cases.push(("'Q' above max_message_bytes", above_limit, true));
    cases.push(("length below 4", vec![b'Q', 0, 0, 0, 2], true));
    cases.push((
        "unknown message type",
        vec![b'!', 0, 0, 0, 8, 1, 2, 3, 4],
        true,
    ));
    cases.push((
        "random bytes",
        vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03],
        true,
    ));

    for (what, bytes, after_login) in &cases {
        let mut s = if *after_login {
            raw_login(gw.addr)
        } else {
            raw_connect(gw.addr)
        };
        s.write_all(bytes).unwrap();
        let (severity, code) = expect_fatal(&mut s, what);
        assert_eq!(
            (severity.as_str(), code.as_str()),
            ("FATAL", "08P01"),
            "{what}"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(!good.is_finished(), "the good client failed after: {what}");
    }

    // A real client whose query is above the limit loses its session. The gateway answers
    // 08P01 after the header and closes while the client is still writing megabytes, so the
    // client may see the reset before it reads the error: either is a refusal.
    rt.block_on(async {
        let c = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let big = format!("SELECT '{}'", "x".repeat(2 << 20));
        let err = within(10, "the oversized query", c.simple_query(&big))
            .await
            .unwrap_err();
        assert!(
            sqlstate(&err) == "08P01" || (err.code().is_none() && c.is_closed()),
            "{err:?}"
        );
        // tokio-postgres notices the close on its connection task, a moment after the error.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !c.is_closed() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            c.is_closed(),
            "the gateway closed the oversized client's session"
        );
    });

    stop.store(true, Ordering::Relaxed);
    let good = rt.block_on(async { within(10, "the good client", good).await.unwrap() });
    assert!(good_queries.load(Ordering::Relaxed) > 0);
    rt.block_on(async {
        let row = good.query_one("SELECT 'still here'", &[]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "still here");
    });
}

#[test]
fn five_hundred_clients_share_ten_server_connections() {
    const CLIENTS: i32 = 500;
    let gw = gateway_on_new_db(
        "many_db",
        GatewayOptions {
            size: 10,
            timeout: "20s",
            ..GatewayOptions::default()
        },
    );
    let port = shared_pg();
    let rt = runtime();
    rt.block_on(async {
        let direct = connect(&superuser_on(port, "many_db").conn_str()).await;
        direct
            .batch_execute("CREATE TABLE hits (id int PRIMARY KEY, doubled int); ALTER TABLE hits OWNER TO app")
            .await
            .unwrap();
        let all_connected = Arc::new(tokio::sync::Barrier::new(CLIENTS as usize + 1));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for id in 0..CLIENTS {
            let conn_str = gw.conn_str(AGENT_TOKEN);
            let all_connected = all_connected.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let c = connect(&conn_str).await;
                all_connected.wait().await;
                let row = c.query_one("SELECT $1::int * 2", &[&id]).await.unwrap();
                let doubled: i32 = row.get(0);
                assert_eq!(doubled, id * 2);
                c.batch_execute("BEGIN").await.unwrap();
                c.execute("INSERT INTO hits VALUES ($1, $2)", &[&id, &doubled])
                    .await
                    .unwrap();
                c.batch_execute("COMMIT").await.unwrap();
                let mine: i32 = c
                    .query_one("SELECT doubled FROM hits WHERE id = $1", &[&id])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(mine, id * 2);
                done.fetch_add(1, Ordering::SeqCst);
                c
            }));
        }
        within(60, "500 clients to connect", all_connected.wait()).await;
        // While they work, the backend never sees more than the pool's 10 connections.
        let busiest = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'many_db'";
        let mut most = 0;
        let mut samples = 0;
        within(60, "500 clients to finish", async {
            while done.load(Ordering::SeqCst) < CLIENTS as usize {
                let n: i64 = direct.query_one(busiest, &[]).await.unwrap().get(0);
                most = most.max(n);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(within(10, "a client task", t).await.unwrap());
        }
        assert_eq!(clients.len(), CLIENTS as usize);
        let n: i64 = direct.query_one(busiest, &[]).await.unwrap().get(0);
        most = most.max(n);
        assert!(samples > 0);
        assert!((1..=10).contains(&most), "backend connections seen: {most}");
        let row = direct
            .query_one("SELECT count(*), sum(id)::int8, sum(doubled)::int8 FROM hits", &[])
            .await
            .unwrap();
        let sum: i64 = (0..i64::from(CLIENTS)).sum();
        assert_eq!(row.get::<_, i64>(0), i64::from(CLIENTS));
        assert_eq!(row.get::<_, i64>(1), sum);
        assert_eq!(row.get::<_, i64>(2), 2 * sum);
    });
}

#[test]
fn exhausted_session_pool_gives_53300_after_its_timeout() {
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            mode: "session",
            size: 1,
            cores: 1,
            timeout: "500ms",
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let holder = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let pid: i32 = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let started = Instant::now();
        let err = try_connect(&gw.conn_str(AGENT_TOKEN)).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(sqlstate(&err), "53300", "{err:?}");
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // The holder is unaffected, and once it leaves its server serves the next client.
        let again: i32 = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(again, pid);
        drop(holder);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let row = next
            .query_one(
                "SELECT pg_backend_pid(), current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            pid,
            "the same server connection, reused"
        );
    });
}

#[test]
fn a_client_arriving_while_the_backend_restarts_waits_for_it_within_the_pool_timeout() {
    let mut cluster = start_pg(shared_options());
    prepare_backend(&cluster);
    let gw = start_gateway(
        cluster.port(),
        GatewayOptions {
            size: 4,
            timeout: "8s",
            ..GatewayOptions::default()
        },
    );
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&gw.conn_str(AGENT_TOKEN)).await;
        c.simple_query("SELECT 1").await.unwrap();
    });
    cluster.stop().unwrap();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.start_again().unwrap();
        cluster
    });
    let started = std::time::Instant::now();
    rt.block_on(async {
        // Logging in needs a server connection: the client waits until the backend is back.
        let c = connect(&gw.conn_str(AGENT_TOKEN)).await;
        let row = within(
            10,
            "a query after the restart",
            c.query_one("SELECT 7", &[]),
        )
        .await
        .expect("the client that waited for the backend");
        assert_eq!(row.get::<_, i32>(0), 7);
    });
    assert!(started.elapsed() >= Duration::from_millis(1000));
    let _cluster = back.join().unwrap();
}
