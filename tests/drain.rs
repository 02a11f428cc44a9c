//! Graceful drain and reload of the real `sluice dataplane` binary, run as a child process
//! in front of a throwaway PostgreSQL: SIGTERM lets an open transaction commit and then
//! closes the session with 57P01, the process exits 0, a second data plane on the same port
//! takes the new clients meanwhile, the drain timeout closes what is still busy, and SIGHUP
//! puts an edited configuration file in force.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{connect, runtime, sqlstate, try_connect, AGENT_TOKEN, APP_PASSWORD};
use common::{free_port, shared_pg, superuser_on, wait_port};

/// A `sluice dataplane` child process and its configuration file.
struct Plane {
    child: Child,
    config: PathBuf,
    port: u16,
}

impl Plane {
    /// Writes `yaml` to `dir/name.yaml` and starts the binary on it; waits until it listens.
    fn start(dir: &Path, name: &str, yaml: &str, port: u16) -> Plane {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).expect("writing the configuration");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["dataplane", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("starting sluice dataplane");
        let plane = Plane {
            child,
            config,
            port,
        };
        wait_port(("127.0.0.1", port), Duration::from_secs(20));
        plane
    }

    fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=agent password={AGENT_TOKEN} dbname=appdb sslmode=disable",
            self.port
        )
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// The exit status, waiting up to `timeout`; `None` if it still runs.
    fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data-plane configuration on `port` in front of the cluster on `pg_port`: the agent's
/// static token, transaction pooling, policy `classes` (a YAML list), and `limits`.
fn yaml(port: u16, pg_port: u16, classes: &str, limits: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
cores: 2
limits: {{ {limits} }}
auth:
  static_tokens:
    - {{ token: {AGENT_TOKEN}, subject: agent-1, groups: [analysts] }}
connections:
  - name: appdb
    port: {pg_port}
    database: app
    pool: {{ mode: transaction, size: 4 }}
    users: [{{ name: app, user: app, password: {APP_PASSWORD} }}]
roles:
  - {{ name: analyst, groups: [analysts], connections: {{ appdb: app }}, policy: p }}
policies:
  - name: p
    classes: {{ allow: {classes} }}
    require_where: false
"#
    )
}

const ALL: &str = "[read, write, ddl, transaction, session]";

fn table(name: &str) {
    let pg = superuser_on(shared_pg(), "app");
    common::run_ok(&mut common::psql_cmd(
        &pg,
        &format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (v int); ALTER TABLE {name} OWNER TO app"),
    ));
}

fn count(name: &str) -> String {
    let pg = superuser_on(shared_pg(), "app");
    common::run_ok(&mut common::psql_cmd(
        &pg,
        &format!("SELECT count(*) FROM {name}"),
    ))
    .trim()
    .to_owned()
}

#[test]
fn sigterm_lets_the_open_transaction_commit_then_closes_with_57p01_and_exits_0() {
    table("drain_commit");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut plane = Plane::start(dir.path(), "a", &yaml(port, shared_pg(), ALL, ""), port);
    let rt = runtime();
    rt.block_on(async {
        let busy = connect(&plane.conn_str()).await;
        let idle = connect(&plane.conn_str()).await;
        idle.simple_query("SELECT 1").await.unwrap();
        busy.batch_execute("BEGIN; INSERT INTO drain_commit VALUES (1)")
            .await
            .unwrap();
        // A client that has only just logged in gets to run its first request.
        let fresh = connect(&plane.conn_str()).await;
        plane.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        fresh
            .batch_execute("INSERT INTO drain_commit VALUES (3)")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the first request of a client that logged in just before the drain: {e:?}\n{}",
                    plane.log()
                )
            });
        // The idle session is closed at once, with the reason.
        let e = idle.simple_query("SELECT 1").await.unwrap_err();
        assert!(
            sqlstate(&e) == "57P01" || idle.is_closed(),
            "idle session: {e:?}"
        );
        // No new clients.
        assert!(
            try_connect(&plane.conn_str()).await.is_err(),
            "a draining data plane accepted a new client"
        );
        // The open transaction goes on and commits, then its session is closed.
        busy.batch_execute("INSERT INTO drain_commit VALUES (2)")
            .await
            .expect("a statement inside the open transaction");
        busy.batch_execute("COMMIT")
            .await
            .expect("COMMIT while draining");
        let e = busy.simple_query("SELECT 1").await.unwrap_err();
        assert!(
            sqlstate(&e) == "57P01"
                || format!("{e:?}").contains("shutting down")
                || busy.is_closed(),
            "after COMMIT: {e:?}"
        );
    });
    let status = plane
        .exit_within(Duration::from_secs(10))
        .expect("the data plane exits once drained");
    assert!(status.success(), "exit status {status:?}\n{}", plane.log());
    assert_eq!(count("drain_commit"), "3", "the transaction committed");
}

#[test]
fn the_idle_client_is_told_57p01_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut plane = Plane::start(dir.path(), "a", &yaml(port, shared_pg(), ALL, ""), port);
    // psql reads the FATAL the gateway sends while it waits: its next command reports it.
    let target = common::PgTarget::new(port, "agent", AGENT_TOKEN, "appdb");
    let child = common::psql_cmd(&target, "SELECT 1")
        .args(["-c", "SELECT pg_sleep(2)", "-c", "SELECT 2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    plane.signal(libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("terminating connection: the gateway is shutting down"),
        "psql: {stderr}"
    );
    assert!(plane
        .exit_within(Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn a_second_data_plane_on_the_same_port_serves_new_clients_while_the_first_drains() {
    table("drain_rolling");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut old = Plane::start(dir.path(), "old", &yaml(port, shared_pg(), ALL, ""), port);
    let rt = runtime();
    rt.block_on(async {
        let busy = connect(&old.conn_str()).await;
        busy.batch_execute("BEGIN; INSERT INTO drain_rolling VALUES (1)")
            .await
            .unwrap();
        let new = Plane::start(dir.path(), "new", &yaml(port, shared_pg(), ALL, ""), port);
        old.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..20 {
            let c = connect(&new.conn_str()).await;
            c.batch_execute(&format!("INSERT INTO drain_rolling VALUES ({})", 100 + i))
                .await
                .expect("a new client while the old data plane drains");
        }
        busy.batch_execute("COMMIT")
            .await
            .expect("COMMIT on the old one");
        let status = old.exit_within(Duration::from_secs(10)).expect("old exits");
        assert!(status.success(), "{status:?}\n{}", old.log());
        // The new one still serves.
        let c = connect(&new.conn_str()).await;
        c.simple_query("SELECT 1").await.unwrap();
        drop(new);
    });
    assert_eq!(count("drain_rolling"), "21");
}

#[test]
fn the_drain_timeout_closes_a_session_still_in_its_transaction() {
    table("drain_timeout");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = yaml(port, shared_pg(), ALL, "drain_timeout: 1s");
    let mut plane = Plane::start(dir.path(), "a", &yaml, port);
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(async {
        let busy = connect(&plane.conn_str()).await;
        busy.batch_execute("BEGIN; INSERT INTO drain_timeout VALUES (1)")
            .await
            .unwrap();
        plane.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let e = busy.batch_execute("COMMIT").await.unwrap_err();
        assert!(
            sqlstate(&e) == "57P01" || busy.is_closed(),
            "after the drain timeout: {e:?}"
        );
    });
    let status = plane.exit_within(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        count("drain_timeout"),
        "0",
        "the cut transaction rolled back"
    );
    assert!(plane.log().contains("drain timeout"), "{}", plane.log());
}

#[test]
fn sighup_puts_the_edited_file_in_force_for_new_statements() {
    table("reload_t");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pg = shared_pg();
    let mut plane = Plane::start(dir.path(), "a", &yaml(port, pg, ALL, ""), port);
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&plane.conn_str()).await;
        c.batch_execute("INSERT INTO reload_t VALUES (1)")
            .await
            .unwrap();
        std::fs::write(&plane.config, yaml(port, pg, "[read, transaction]", "")).unwrap();
        plane.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The same session's next statement is judged by the new policy.
        loop {
            match c.batch_execute("INSERT INTO reload_t VALUES (2)").await {
                Err(e) => {
                    assert_eq!(sqlstate(&e), "42501", "{e:?}");
                    break;
                }
                Ok(()) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(()) => panic!("the reloaded policy was not in force within 10 s"),
            }
        }
        c.simple_query("SELECT count(*) FROM reload_t")
            .await
            .unwrap();
        let fresh = connect(&plane.conn_str()).await;
        let e = fresh
            .batch_execute("INSERT INTO reload_t VALUES (3)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
        // A file that does not validate leaves the version in force.
        std::fs::write(&plane.config, "listen: [").unwrap();
        plane.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(300)).await;
        fresh.simple_query("SELECT 1").await.expect("still serving");
    });
    assert!(
        plane.exit_within(Duration::from_millis(100)).is_none(),
        "SIGHUP must not stop it"
    );
    assert!(
        plane.log().contains("configuration not reloaded"),
        "{}",
        plane.log()
    );
}
