//! Shared helpers for Sluice's end-to-end tests, which always start their own PostgreSQL server.
//!
//! No test relies on a server already running: each one starts a throwaway cluster with
//! [`start_pg`] (initdb into a temp dir from the machine's PostgreSQL binaries, a free port,
//! removed on drop), then talks to it, or to a Sluice listener in front of it, with real
//! clients (`psql`, `pgbench`, tokio-postgres). Use it from a test file with `mod common;`.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod gateway;
pub mod planes;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use sluice_pgcluster::{free_port, AuthMethod, ClusterOptions, PgCluster};

/// Starts a throwaway cluster, panicking with the full error (including the server log tail).
pub fn start_pg(opts: ClusterOptions) -> PgCluster {
    PgCluster::start(opts).unwrap_or_else(|e| panic!("starting a throwaway PostgreSQL: {e:#}"))
}

/// Starts a throwaway cluster with the defaults: SCRAM for TCP, superuser `postgres`/`postgres`.
pub fn pg() -> PgCluster {
    start_pg(ClusterOptions::default())
}

/// Where and as whom a client connects: a cluster directly, or a Sluice listener.
#[derive(Clone, Debug)]
pub struct PgTarget {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name sent in the startup message.
    pub user: String,
    /// Password (or token) the client answers the authentication request with.
    pub password: String,
    /// Database name.
    pub db: String,
    /// libpq `sslmode` (`disable`, `prefer`, `require`, ...); `disable` unless set.
    pub sslmode: String,
}

impl PgTarget {
    /// A target on `127.0.0.1:port`, without TLS.
    pub fn new(port: u16, user: &str, password: &str, db: &str) -> PgTarget {
        PgTarget {
            host: "127.0.0.1".into(),
            port,
            user: user.into(),
            password: password.into(),
            db: db.into(),
            sslmode: "disable".into(),
        }
    }

    /// The cluster itself, as its superuser.
    pub fn superuser(cluster: &PgCluster, db: &str) -> PgTarget {
        PgTarget {
            host: cluster.host().into(),
            ..PgTarget::new(
                cluster.port(),
                cluster.superuser(),
                cluster.superuser_password(),
                db,
            )
        }
    }

    /// The same target with another libpq `sslmode`.
    pub fn with_sslmode(mut self, mode: &str) -> PgTarget {
        self.sslmode = mode.into();
        self
    }

    /// The same target as another user.
    pub fn with_user(mut self, user: &str, password: &str) -> PgTarget {
        self.user = user.into();
        self.password = password.into();
        self
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `key=value` connection string for tokio-postgres (its `sslmode` knows only
    /// disable/prefer/require, so stricter libpq modes are sent as `require`).
    pub fn conn_str(&self) -> String {
        let sslmode = match self.sslmode.as_str() {
            "verify-ca" | "verify-full" => "require",
            other => other,
        };
        format!(
            "host={} port={} user={} password={} dbname={} sslmode={sslmode}",
            self.host,
            self.port,
            quote(&self.user),
            quote(&self.password),
            quote(&self.db)
        )
    }

    /// Sets the libpq environment for this target on `cmd`, removing any inherited `PG*`.
    fn apply_env(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.db)
            .env("PGSSLMODE", &self.sslmode)
            .env("PGCONNECT_TIMEOUT", "10");
    }
}

/// Quotes a connection-string value.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Path of a client tool of the installed server's version (`psql`, `pgbench`), else a PATH name.
pub fn client_tool(name: &str) -> PathBuf {
    static BINS: OnceLock<Option<sluice_pgcluster::PgBinaries>> = OnceLock::new();
    match BINS.get_or_init(|| sluice_pgcluster::find_binaries().ok()) {
        Some(bins) => bins.tool(name),
        None => PathBuf::from(name),
    }
}

/// `psql -X -At -v ON_ERROR_STOP=1 -c <sql>` against `target` (PGPASSWORD, PGSSLMODE set).
///
/// Add arguments (e.g. more `-c`) before running it with [`run_ok`] or [`run_err`].
pub fn psql_cmd(target: &PgTarget, sql: &str) -> Command {
    let mut cmd = Command::new(client_tool("psql"));
    target.apply_env(&mut cmd);
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    cmd
}

/// `pgbench` against `target` (connection via the PG* environment); add its arguments.
pub fn pgbench_cmd(target: &PgTarget) -> Command {
    let mut cmd = Command::new(client_tool("pgbench"));
    target.apply_env(&mut cmd);
    cmd
}

/// Runs `cmd` (stdin closed) and returns its stdout; panics with stdout and stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}", out.status, streams(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` expecting it to fail and returns its stderr; panics if it succeeds.
pub fn run_err(cmd: &mut Command) -> String {
    let out = run(cmd);
    if out.status.success() {
        panic!("{cmd:?} unexpectedly succeeded:\n{}", streams(&out));
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn streams(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until something accepts TCP connections on `addr`; panics after `timeout`.
pub fn wait_port(addr: impl ToSocketAddrs + std::fmt::Debug, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("resolving {addr:?}: {e}"))
        .collect();
    loop {
        let step = Duration::from_millis(200);
        if addrs
            .iter()
            .any(|a| TcpStream::connect_timeout(a, step).is_ok())
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!("nothing accepted connections on {addr:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin closed), panicking if it fails; returns stdout and stderr.
pub fn run_ok_both(cmd: &mut Command) -> (String, String) {
    let out = run(cmd);
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}", out.status, streams(&out));
    }
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cluster shared by the tests of one binary (see [`shared_pg`]).
static SHARED: std::sync::Mutex<Option<PgCluster>> = std::sync::Mutex::new(None);

/// Port of a cluster shared by the tests of this binary, started on first use with
/// `max_connections = 300` and `log_connections = on`, and prepared with
/// [`gateway::prepare_backend`]. It is stopped and removed when the process exits (statics
/// are never dropped, so an `atexit` hook does it). Tests that stop or kill their backend
/// start their own cluster instead.
pub fn shared_pg() -> u16 {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = guard.as_ref() {
        return c.port();
    }
    let cluster = start_pg(shared_options());
    gateway::prepare_backend(&cluster);
    let port = cluster.port();
    *guard = Some(cluster);
    extern "C" fn stop_shared() {
        let taken = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }
    // SAFETY: registers a plain `extern "C" fn` without arguments; it only takes the cluster
    // out of its mutex and drops it (pg_ctl stop, temp dir removal), and never unwinds.
    let registered = unsafe { libc::atexit(stop_shared) };
    assert_eq!(registered, 0, "atexit refused the cleanup hook");
    port
}

/// Options of the clusters these tests start: room for the 500-client test's direct
/// connections, and connection logging (the server log shows the backend auth method).
pub fn shared_options() -> ClusterOptions {
    ClusterOptions::default()
        .setting("max_connections", "300")
        .setting("log_connections", "on")
}

/// Runs `f` with the shared cluster (started if needed), holding its lock meanwhile.
pub fn with_shared_pg<R>(f: impl FnOnce(&PgCluster) -> R) -> R {
    shared_pg();
    let guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.as_ref().expect("started above"))
}

/// The superuser of a cluster started with the default options, on `port`.
pub fn superuser_on(port: u16, db: &str) -> PgTarget {
    let defaults = ClusterOptions::default();
    PgTarget::new(port, &defaults.superuser, &defaults.superuser_password, db)
}
