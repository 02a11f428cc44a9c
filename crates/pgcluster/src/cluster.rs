//! The throwaway cluster itself: initdb, configure, start, wait, run SQL, stop, remove.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use tempfile::TempDir;

use crate::account::{self, Account};
use crate::binaries::{find_binaries, PgBinaries};
use crate::sql::{quote_conf, quote_conninfo, quote_ident, quote_literal};
use crate::{sweep, try_free_port};

/// Address the server listens on (TCP); nothing else is exposed.
const HOST: &str = "127.0.0.1";
/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How long we wait for TCP readiness after `pg_ctl start -w` returned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts retried with another port when an auto-picked port was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 30;
/// Our settings, included from postgresql.conf so they can be rewritten (e.g. a new port).
const CONF_FILE: &str = "sluice.conf";

/// How TCP (`host`) connections authenticate; the local socket always trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password needed.
    Trust,
    /// SCRAM-SHA-256 (passwords stored as SCRAM verifiers).
    #[default]
    ScramSha256,
    /// MD5 (passwords stored as MD5 hashes, `password_encryption = md5`).
    Md5,
}

impl AuthMethod {
    /// The pg_hba.conf method name, as `initdb --auth-host` takes it.
    pub fn hba_method(&self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }

    /// `password_encryption` to store passwords with, so that this method can check them.
    fn password_encryption(&self) -> &'static str {
        match self {
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust | AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// How to set up a cluster; `ClusterOptions::default()` is a SCRAM cluster on a free port.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// TCP port; `None` picks a free one (and retries with another if it is taken at start).
    pub port: Option<u16>,
    /// Bootstrap superuser name (`initdb -U`), default `"postgres"`.
    pub superuser: String,
    /// The superuser's password, set so SCRAM/MD5 logins work; default `"postgres"`.
    pub superuser_password: String,
    /// Authentication for TCP connections (pg_hba `host` lines); default SCRAM-SHA-256.
    pub auth: AuthMethod,
    /// `(certificate, key)` PEM files; when set they are copied into the data dir and `ssl = on`.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// Extra postgresql.conf settings, applied after ours (so they win), e.g. `("max_connections", "300")`.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            port: None,
            superuser: "postgres".to_string(),
            superuser_password: "postgres".to_string(),
            auth: AuthMethod::ScramSha256,
            ssl: None,
            settings: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// Adds a postgresql.conf setting (builder style).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            !self.superuser.is_empty(),
            "superuser name must not be empty"
        );
        ensure!(
            !self.superuser_password.contains(['\n', '\r', '\0']),
            "superuser password must be a single line"
        );
        for (name, value) in &self.settings {
            ensure!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
                "invalid postgresql.conf setting name {name:?}"
            );
            ensure!(
                !value.contains(['\n', '\r', '\0']),
                "postgresql.conf setting {name} must be a single line"
            );
        }
        Ok(())
    }
}

/// A running throwaway PostgreSQL cluster in its own temp dir; stopped and removed on drop.
///
/// Layout: `<tmp>/sluice-pgcluster-<uid>/cluster-XXXX/` holds `data/`, the Unix socket and
/// `postgres.log`. When we run as root the server runs as `postgres` (or `nobody`).
#[derive(Debug)]
pub struct PgCluster {
    bins: PgBinaries,
    opts: ClusterOptions,
    port: u16,
    account: Option<Account>,
    /// `None` only while dropping; removed after the server has stopped.
    dir: Option<TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// True from the first `pg_ctl start` until a successful stop: drop stops it if set.
    running: bool,
}

impl PgCluster {
    /// Creates and starts a cluster from the binaries [`find_binaries`] finds.
    ///
    /// Runs initdb (local socket trust, TCP per `opts.auth`, UTF8, C locale, no fsync), writes the
    /// configuration, starts the server with `pg_ctl start -w`, waits until it accepts TCP
    /// connections and sets the superuser password. Errors quote the server log's tail.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster> {
        Self::start_with(find_binaries()?, opts)
    }

    /// Like [`PgCluster::start`], with the binaries given.
    pub fn start_with(bins: PgBinaries, opts: ClusterOptions) -> Result<PgCluster> {
        let began = Instant::now();
        opts.validate()?;
        let account = account::server_account()?;
        let parent = clusters_parent()?;
        sweep::remove_orphans(&parent, &bins, account.as_ref());

        let dir = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a cluster dir in {}", parent.display()))?;
        let root = dir.path().to_path_buf();
        account::give(&root, account.as_ref())?;
        sweep::mark_owner(&root)?;

        // From here on, `Drop` stops the server and removes the dir if anything fails.
        let mut cluster = PgCluster {
            data_dir: root.join("data"),
            log_file: root.join("postgres.log"),
            root,
            bins,
            port: opts.port.unwrap_or(0),
            opts,
            account,
            dir: Some(dir),
            running: false,
        };
        cluster.initdb()?;
        cluster.install_ssl_files()?;
        cluster.start_first_time()?;
        cluster.set_superuser_password()?;
        tracing::debug!(
            port = cluster.port,
            dir = %cluster.root.display(),
            elapsed_ms = began.elapsed().as_millis(),
            "PostgreSQL {} cluster started",
            cluster.bins.version
        );
        Ok(cluster)
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Bootstrap superuser name.
    pub fn superuser(&self) -> &str {
        &self.opts.superuser
    }

    /// Bootstrap superuser password.
    pub fn superuser_password(&self) -> &str {
        &self.opts.superuser_password
    }

    /// TCP authentication method of this cluster.
    pub fn auth(&self) -> &AuthMethod {
        &self.opts.auth
    }

    /// The binaries this cluster runs.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// Directory of the server binaries.
    pub fn bindir(&self) -> &Path {
        &self.bins.bindir
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the Unix socket (`.s.PGSQL.<port>`); usable as libpq's `host`.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last `lines` lines of the server log (empty if it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Path of a program of the same installation (`psql`, `pgbench`, ...), else a PATH name.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bins.tool(name)
    }

    /// libpq/tokio-postgres `key=value` connection string for the superuser over TCP.
    pub fn connection_string(&self, db: &str) -> String {
        self.connection_string_as(&self.opts.superuser, &self.opts.superuser_password, db)
    }

    /// libpq/tokio-postgres `key=value` connection string for `user` over TCP.
    pub fn connection_string_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port,
            quote_conninfo(user),
            quote_conninfo(password),
            quote_conninfo(db)
        )
    }

    /// Runs SQL with psql over TCP as the superuser and returns its stdout (`-X -q -At`,
    /// `ON_ERROR_STOP=1`; psql meta-commands work). The error includes psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_as(&self.opts.superuser, &self.opts.superuser_password, db, sql)
    }

    /// Like [`PgCluster::psql`], as `user` with `password`.
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_command(HOST, user, db);
        cmd.env("PGPASSWORD", password);
        run_with_stdin(cmd, sql)
            .with_context(|| format!("psql as {user} on {HOST}:{}/{db}", self.port))
    }

    /// Runs a SQL file with psql over TCP as the superuser and returns its stdout.
    pub fn psql_file(&self, db: &str, file: &Path) -> Result<String> {
        let sql =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        self.psql(db, &sql)
            .with_context(|| format!("running {}", file.display()))
    }

    /// Creates a LOGIN role whose password is stored for this cluster's auth method.
    pub fn create_role(&self, name: &str, password: &str) -> Result<()> {
        let sql = format!(
            "SET password_encryption = {};\nCREATE ROLE {} LOGIN PASSWORD {};\n",
            quote_literal(self.opts.auth.password_encryption()),
            quote_ident(name),
            quote_literal(password)
        );
        self.psql("postgres", &sql)
            .with_context(|| format!("creating role {name}"))
            .map(drop)
    }

    /// Creates database `name` owned by `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {};\n",
            quote_ident(name),
            quote_ident(owner)
        );
        self.psql("postgres", &sql)
            .with_context(|| format!("creating database {name}"))
            .map(drop)
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`); a no-op when it is not running.
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`, crash recovery on next start).
    pub fn kill(&mut self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill`](Self::kill): same data
    /// dir, same port. A no-op when it is running.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    // ---- setup steps ------------------------------------------------------------------

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", &self.opts.superuser])
            .args([
                "--auth-local=trust",
                "--auth-host",
                self.opts.auth.hba_method(),
            ])
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"]);
        let out = output(cmd, "initdb")?;
        if !out.status.success() {
            bail!("initdb failed ({}):\n{}", out.status, both_streams(&out));
        }
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("opening {}", conf.display()))?;
        writeln!(f, "\n# Added by sluice-pgcluster\ninclude '{CONF_FILE}'")
            .with_context(|| format!("writing {}", conf.display()))?;
        Ok(())
    }

    /// Copies the TLS certificate and key into the data dir with the modes the server demands.
    fn install_ssl_files(&self) -> Result<()> {
        let Some((cert, key)) = &self.opts.ssl else {
            return Ok(());
        };
        for (src, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let dst = self.data_dir.join(name);
            fs::copy(src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", dst.display()))?;
            account::give(&dst, self.account.as_ref())?;
        }
        Ok(())
    }

    fn write_conf(&self) -> Result<()> {
        let mut conf = String::new();
        let mut set = |name: &str, value: &str| {
            // Writing to a String cannot fail.
            let _ = writeln!(conf, "{name} = {}", quote_conf(value));
        };
        set("listen_addresses", HOST);
        set("port", &self.port.to_string());
        set("unix_socket_directories", &self.root.to_string_lossy());
        // Durability against OS crashes is pointless for a throwaway cluster; speed is not.
        // synchronous_commit stays on: with fsync off a commit costs one write(2), and
        // turning it off would lose just-committed rows (even the superuser password) when a
        // test simulates a backend crash with `kill()`.
        set("fsync", "off");
        set("full_page_writes", "off");
        set("max_connections", "200");
        set("shared_buffers", "128MB");
        set("logging_collector", "off");
        set("log_line_prefix", "%m [%p] %q%u@%d ");
        set("password_encryption", self.opts.auth.password_encryption());
        if self.opts.ssl.is_some() {
            set("ssl", "on");
            set("ssl_cert_file", "server.crt");
            set("ssl_key_file", "server.key");
        }
        for (name, value) in &self.opts.settings {
            set(name, value);
        }
        let path = self.data_dir.join(CONF_FILE);
        fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        account::give(&path, self.account.as_ref())
    }

    /// First start: when the port was picked for us and someone took it meanwhile, pick another.
    fn start_first_time(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.opts.port.is_none() {
                self.port = try_free_port().context("picking a free port")?;
            }
            self.write_conf()?;
            let log_len = fs::read(&self.log_file).map(|log| log.len()).unwrap_or(0);
            match self.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if self.opts.port.is_none() && attempt < PORT_ATTEMPTS => {
                    let log = fs::read(&self.log_file).unwrap_or_default();
                    let new = String::from_utf8_lossy(log.get(log_len..).unwrap_or(&[]));
                    if !new.contains("Address already in use") {
                        return Err(e);
                    }
                    tracing::debug!(
                        port = self.port,
                        "port taken at start, retrying with another"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_ready()
    }

    fn set_superuser_password(&self) -> Result<()> {
        // Over the trusted Unix socket: TCP needs the password we are about to set.
        let mut cmd = self.psql_command(
            &self.root.to_string_lossy(),
            &self.opts.superuser,
            "postgres",
        );
        let sql = format!(
            "SET synchronous_commit = on;\nSET password_encryption = {};\nALTER ROLE {} PASSWORD {};\n",
            quote_literal(self.opts.auth.password_encryption()),
            quote_ident(&self.opts.superuser),
            quote_literal(&self.opts.superuser_password)
        );
        cmd.env_remove("PGPASSWORD");
        run_with_stdin(cmd, &sql).context("setting the superuser password")?;
        Ok(())
    }

    // ---- pg_ctl -----------------------------------------------------------------------

    fn pg_ctl_start(&mut self) -> Result<()> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("start")
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file);
        // Set before running: a start that times out may leave a server that drop must stop.
        self.running = true;
        let out = output(cmd, "pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed on port {} ({}):\n{}\n--- server log (tail) ---\n{}",
                self.port,
                out.status,
                both_streams(&out),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop")
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s", "-m", mode, "-D"])
            .arg(&self.data_dir);
        let out = output(cmd, "pg_ctl stop")?;
        if !out.status.success() && self.data_dir.join("postmaster.pid").exists() {
            bail!(
                "pg_ctl stop -m {mode} failed ({}):\n{}\n--- server log (tail) ---\n{}",
                out.status,
                both_streams(&out),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        // Either it stopped, or it was not running (no postmaster.pid): both mean stopped.
        self.running = false;
        Ok(())
    }

    /// Waits until the server accepts TCP connections (pg_isready), quoting the log on timeout.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut cmd = Command::new(self.tool("pg_isready"));
            scrub_pg_env(&mut cmd);
            cmd.args(["-q", "-t", "2", "-h", HOST, "-p", &self.port.to_string()])
                .args(["-U", &self.opts.superuser, "-d", "postgres"]);
            let out = output(cmd, "pg_isready")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "server on {HOST}:{} not ready after {READY_TIMEOUT:?} (pg_isready {})\n--- server log (tail) ---\n{}",
                    self.port,
                    out.status,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- commands ---------------------------------------------------------------------

    /// A server program run as the server account from the cluster dir, in the C locale.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bins.bindir.join(program));
        scrub_pg_env(&mut cmd);
        // The server account may not be able to enter our working directory.
        cmd.current_dir(&self.root)
            .env("LC_ALL", "C")
            .env("LANG", "C");
        account::run_as(&mut cmd, self.account.as_ref());
        cmd
    }

    /// psql reading SQL from stdin, stopping at the first error, unaligned tuples-only output.
    fn psql_command(&self, host: &str, user: &str, db: &str) -> Command {
        let mut cmd = Command::new(self.tool("psql"));
        scrub_pg_env(&mut cmd);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args([
                "-h",
                host,
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "sluice-pgcluster");
        cmd
    }
}

impl Drop for PgCluster {
    /// Stops the server (`-m immediate`) if running and removes the cluster dir; never panics.
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.kill() {
                tracing::warn!(
                    "stopping the throwaway cluster on port {}: {e:#}",
                    self.port
                );
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

/// `/tmp/sluice-pgcluster-<uid>`, mode 0755 so the server account can traverse it.
///
/// Under `/tmp` rather than `$TMPDIR`: Unix socket paths are limited to ~100 bytes, and a
/// `$TMPDIR` under a private home would not be traversable by the server account.
fn clusters_parent() -> Result<PathBuf> {
    let uid = account::effective_uid()?;
    let parent = PathBuf::from(format!("/tmp/sluice-pgcluster-{uid}"));
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    // /tmp is shared: refuse a look-alike planted by someone else (or a symlink to elsewhere).
    let meta =
        fs::symlink_metadata(&parent).with_context(|| format!("stat {}", parent.display()))?;
    ensure!(
        meta.is_dir() && meta.uid() == uid,
        "{} is not a directory owned by uid {uid}; remove it and retry",
        parent.display()
    );
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", parent.display()))?;
    Ok(parent)
}

/// Removes inherited libpq variables (`PGHOST`, `PGPASSWORD`, ...) so only ours apply.
pub(crate) fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Runs `cmd` to completion with captured output.
pub(crate) fn output(mut cmd: Command, what: &str) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} ({:?})", cmd.get_program()))
}

/// Runs `cmd` feeding `input` on stdin (from a thread, so large outputs cannot deadlock);
/// returns stdout, or an error with stdout and stderr.
fn run_with_stdin(mut cmd: Command, input: &str) -> Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let input = input.to_owned();
    // A write error (the child exited early) shows up as the child's own failure below.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("waiting for psql")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}",
            cmd.get_program(),
            out.status,
            both_streams(&out)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn both_streams(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (stdout.trim().is_empty(), stderr.trim().is_empty()) {
        (true, _) => stderr.trim().to_string(),
        (false, true) => stdout.trim().to_string(),
        (false, false) => format!("{}\n{}", stdout.trim(), stderr.trim()),
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
