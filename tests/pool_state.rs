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
use common::{pgbench_cmd, run_ok, shared_pg, superuser_on, with_shared_pg};

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

/// A raw protocol client: what PostgreSQL tells it, message by message.
struct Raw {
    s: std::net::TcpStream,
    /// ParameterStatus values received, latest last.
    params: std::collections::HashMap<String, String>,
    /// The pid of BackendKeyData.
    pid: i32,
}

impl Raw {
    /// Logs in to `port` as `user` with `password` to `db`, with extra startup parameters.
    fn login(port: u16, user: &str, password: &str, db: &str, extra: &[(&str, &str)]) -> Raw {
        use std::io::Write as _;
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Raw {
            s,
            params: Default::default(),
            pid: 0,
        };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", db)].iter().chain(extra) {
            for s in [k, v] {
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        raw.s.write_all(&startup).unwrap();
        loop {
            let (tag, body) = raw.read();
            match tag {
                b'R' if body[..4] == 3i32.to_be_bytes() => {
                    let mut pw = password.as_bytes().to_vec();
                    pw.push(0);
                    raw.send(b'p', &pw);
                }
                b'R' if body[..4] == 0i32.to_be_bytes() => {}
                b'R' => panic!("only cleartext passwords here (direct clusters use trust)"),
                b'K' => raw.pid = i32::from_be_bytes(body[..4].try_into().unwrap()),
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                b'Z' => return raw,
                _ => {}
            }
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        use std::io::Write as _;
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.s.write_all(&m).unwrap();
    }

    /// The next message; ParameterStatus values are recorded on the way.
    fn read(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read as _;
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).expect("a message");
        let len = i32::from_be_bytes(head[1..].try_into().unwrap());
        let mut body = vec![0u8; usize::try_from(len - 4).unwrap()];
        self.s.read_exact(&mut body).unwrap();
        if head[0] == b'S' {
            let mut parts = body
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let name = parts.next().unwrap();
            let value = parts.next().unwrap();
            self.params.insert(name, value);
        }
        (head[0], body)
    }

    /// Runs a simple query; the rows' first columns (NULL as "") and the messages' tags.
    fn query(&mut self, sql: &str) -> (Vec<String>, Vec<u8>) {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(b'Q', &q);
        let (mut rows, mut tags) = (Vec::new(), Vec::new());
        loop {
            let (tag, body) = self.read();
            tags.push(tag);
            match tag {
                b'D' => {
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    rows.push(match usize::try_from(len) {
                        Ok(n) => String::from_utf8_lossy(&body[6..6 + n]).into_owned(),
                        Err(_) => String::new(),
                    });
                }
                b'E' => panic!("{sql}: {}", String::from_utf8_lossy(&body)),
                b'Z' => return (rows, tags),
                _ => {}
            }
        }
    }
}

/// The reported parameters a client is told at startup, and the settings it runs with, are
/// those of a backend of its own: `application_name` empty (not the gateway's), every
/// parameter PostgreSQL reports, with PostgreSQL's values.
fn startup_mirrors_the_backend(mode: &'static str, db: &str) {
    let gw = pool_of_one(db, mode);
    let mut through = Raw::login(gw.port(), "agent", AGENT_TOKEN, common::gateway::CONN, &[]);
    // What PostgreSQL itself reports to a client of its own.
    let direct: Vec<(String, String)> = runtime().block_on(async {
        let c = connect(&direct(db)).await;
        let mut out = Vec::new();
        for name in REPORTED {
            let v: Option<String> = c
                .query_one("SELECT current_setting($1, true)", &[name])
                .await
                .unwrap()
                .get(0);
            out.push((name.to_string(), v.unwrap_or_default()));
        }
        out
    });
    for (name, direct) in direct {
        let (actual, _) = through.query(&format!("SELECT current_setting('{name}')"));
        assert_eq!(
            through.params.get(&name),
            Some(&actual[0]),
            "{mode}: ParameterStatus {name} differs from the setting"
        );
        match name.as_str() {
            // The gateway logs in as its backend user, not the superuser.
            "session_authorization" | "is_superuser" => {}
            _ => assert_eq!(
                actual[0], direct,
                "{mode}: {name} differs from PostgreSQL's"
            ),
        }
    }
    let (rows, _) = through.query("SHOW application_name");
    assert_eq!(
        rows,
        [""],
        "{mode}: the gateway's application_name shows through"
    );
}

/// Parameters PostgreSQL 14+ reports at startup.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "server_version",
    "server_encoding",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
];

#[test]
fn session_mode_startup_mirrors_the_backend() {
    startup_mirrors_the_backend("session", "startup_session_db");
}

#[test]
fn transaction_mode_startup_mirrors_the_backend() {
    startup_mirrors_the_backend("transaction", "startup_txn_db");
}

/// Transaction pooling, one server connection for two clients: what one client sets (SET of
/// reported and unreported parameters, startup options, LISTEN) never reaches the other,
/// neither in ParameterStatus nor in behaviour, while the client's own reported settings
/// follow it to every server it gets.
#[test]
fn transaction_mode_settings_stay_with_their_client() {
    let db = "settings_txn_db";
    let gw = pool_of_one(db, "transaction");
    let conn = common::gateway::CONN;
    let mut a = Raw::login(
        gw.port(),
        "agent",
        AGENT_TOKEN,
        conn,
        &[
            ("application_name", "client-a"),
            ("options", "-c search_path=a_schema"),
        ],
    );
    let defaults = a.params.clone();
    assert_eq!(
        defaults.get("application_name").map(String::as_str),
        Some("client-a")
    );
    a.query(
        "SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'; \
         SET standard_conforming_strings = off; SET statement_timeout = '4321ms'",
    );
    assert_eq!(a.params["TimeZone"], "Asia/Kathmandu");
    assert_eq!(a.params["standard_conforming_strings"], "off");

    let mut b = Raw::login(gw.port(), "agent", AGENT_TOKEN, conn, &[]);
    for name in ["TimeZone", "DateStyle", "standard_conforming_strings"] {
        assert_ne!(b.params[name], a.params[name], "B was told A's {name}");
    }
    assert_eq!(b.params["application_name"], "");
    let (rows, tags) = b.query(
        "SELECT concat_ws('|', current_setting('TimeZone'), current_setting('DateStyle'), \
         current_setting('standard_conforming_strings'), current_setting('statement_timeout'), \
         current_setting('search_path'), current_setting('application_name'), 'a\\b')",
    );
    assert_eq!(
        rows,
        [format!(
            "{}|{}|on|0|\"$user\", public||a\\b",
            defaults["TimeZone"], defaults["DateStyle"]
        )],
        "B runs with A's settings"
    );
    assert!(
        !tags.contains(&b'S'),
        "B is told of settings it never changed: {tags:?}"
    );

    // A gets the server back as it left it: its reported settings, its startup options.
    let (rows, tags) = a.query(
        "SELECT concat_ws('|', current_setting('TimeZone'), current_setting('DateStyle'), \
         current_setting('standard_conforming_strings'), current_setting('search_path'), \
         current_setting('application_name'))",
    );
    assert_eq!(rows, ["Asia/Kathmandu|SQL, DMY|off|a_schema|client-a"]);
    assert!(
        !tags.contains(&b'S'),
        "A is told of settings it never changed: {tags:?}"
    );

    // A LISTEN stays with the client that ran it: after it leaves, the next client of its
    // server connection is not listening.
    a.query("LISTEN chan_a");
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Raw::login(gw.port(), "agent", AGENT_TOKEN, conn, &[]);
    let (rows, _) = c.query("SELECT count(*) FROM pg_listening_channels()");
    assert_eq!(rows, ["0"], "C listens on A's channel");
    drop(b);
}

/// A notification the client's own session sent carries the pid the client was given in
/// BackendKeyData, as it would from its own backend.
fn own_notification_pid(mode: &'static str, db: &str) {
    let gw = pool_of_one(db, mode);
    let mut a = Raw::login(gw.port(), "agent", AGENT_TOKEN, common::gateway::CONN, &[]);
    let mut q = b"LISTEN chan_self; NOTIFY chan_self, 'me'".to_vec();
    q.push(0);
    a.send(b'Q', &q);
    let mut pid = None;
    loop {
        let (tag, body) = a.read();
        if tag == b'A' {
            pid = Some(i32::from_be_bytes(body[..4].try_into().unwrap()));
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(
        pid,
        Some(a.pid),
        "{mode}: the client's own notification names another pid"
    );
}

#[test]
fn session_mode_own_notification_pid() {
    own_notification_pid("session", "notify_pid_session_db");
}

#[test]
fn transaction_mode_own_notification_pid() {
    own_notification_pid("transaction", "notify_pid_txn_db");
}

/// pgbench `-M prepared` prepares each statement with a blocking call (libpq's `PQprepare`)
/// while the other clients of its thread sit in open transactions, holding every server of
/// the pool: a Parse and Sync the gateway can answer itself (a statement a server of this core
/// has parsed already) must not wait for a server, or the thread never lets those
/// transactions end and every client times out. Sixteen clients on one thread, a pool of two.
#[test]
fn transaction_mode_prepares_without_waiting_for_a_server() {
    let db = "pool_prepared_queue";
    with_shared_pg(|c| create_app_database(c, db));
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            mode: "transaction",
            size: 2,
            cores: 1,
            timeout: "3s",
            ..GatewayOptions::default()
        },
    );
    let agent = gw.target(AGENT_TOKEN);
    run_ok(pgbench_cmd(&agent).args(["-i", "-s", "1", "-q"]));
    let (clients, per_client) = (16, 20);
    let out = run_ok(pgbench_cmd(&agent).args([
        "-n",
        "-M",
        "prepared",
        "-c",
        &clients.to_string(),
        "-j",
        "1",
        "-t",
        &per_client.to_string(),
    ]));
    let total = clients * per_client;
    assert!(
        out.contains(&format!(
            "number of transactions actually processed: {total}/{total}"
        )),
        "{out}"
    );
}
