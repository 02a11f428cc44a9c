//! Thread per core: one monoio runtime, one SO_REUSEPORT listener, one set of pools per core.
//!
//! Cores share only [`Shared`] (process settings, cancel registry, metrics and the [`Live`]
//! state in force), behind an `Arc`, and never touch each other's pools or sessions.
//!
//! What a control-plane snapshot changes (connections, roles, policies, token issuers, grant
//! revocations) lives in a [`Live`], built off the cores and swapped in whole
//! ([`Shared::install`]): a mutex holds the current `Arc<Live>` and an atomic generation says
//! when it changed, so a core reads one relaxed atomic per check and takes the lock only after
//! a swap. Each core picks the new `Live` up at a message boundary (logins use the newest;
//! running sessions keep their server connections and look their policy up again), and a
//! watcher task per core, woken by the swap, closes the sessions whose access the snapshot
//! withdrew (a revoked grant, a removed role or connection).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use sluice_auth::tls::BackendTlsVerify;
use sluice_auth::token::TokenVerifier;

use crate::backend::Target;
use crate::cancel::CancelRegistry;
use crate::config::{BackendTls, Config, Connection, ControlPlaneSettings};
use crate::metrics::{self, CoreMetrics};
use crate::pool::Pool;
use crate::prepared::{Statement, StatementRegistry};
use crate::snapshot::{self, Applied, ClientSettings, GrantRules, SnapshotClient};

/// What one configuration version puts in force: built whole off the cores, then swapped in.
pub struct Live {
    /// Snapshot version (0: the local configuration file, before any snapshot).
    pub version: u64,
    /// The configuration: local process settings merged with the snapshot's content.
    pub config: Arc<Config>,
    /// Client token verification with this version's issuers and keys.
    pub verifier: TokenVerifier,
    /// Which issuer signs grants, and which grants are revoked.
    pub grants: Arc<GrantRules>,
    backends: HashMap<String, BackendInfo>,
}

#[derive(Clone)]
struct BackendInfo {
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Pool id per backend user: kept from the previous version while the connection's
    /// address, database, TLS and pool settings and that user's credentials are unchanged, so
    /// unchanged connections keep their pools across swaps and changed ones get new pools.
    pool_ids: HashMap<String, u64>,
}

impl Live {
    /// Builds a version: loads keys and certificates and resolves backend addresses, so errors
    /// surface before anything is swapped. Connections unchanged since `previous` keep its
    /// resolved address, TLS configuration and pool ids.
    fn build(
        version: u64,
        config: Arc<Config>,
        grants: Arc<GrantRules>,
        previous: Option<&Live>,
        next_pool_id: &AtomicU64,
    ) -> anyhow::Result<Live> {
        let verifier = TokenVerifier::new(&config.auth).context("auth")?;
        if verifier.is_empty() {
            tracing::warn!(
                version,
                "no token issuers or static tokens are configured: every client will be refused"
            );
        }
        let mut backends = HashMap::new();
        for c in &config.connections {
            let before = previous.and_then(|p| {
                let old = p.config.connection(&c.name)?;
                Some((old, p.backends.get(&c.name)?))
            });
            let same_endpoint = |old: &Connection| {
                old.host == c.host
                    && old.port == c.port
                    && old.database == c.database
                    && old.tls == c.tls
                    && old.pool == c.pool
            };
            let info = match before {
                Some((old, info)) if same_endpoint(old) => {
                    let mut pool_ids = HashMap::with_capacity(c.users.len());
                    for (name, user) in &c.users {
                        let id = match (old.users.get(name), info.pool_ids.get(name)) {
                            (Some(u), Some(&id)) if u == user => id,
                            _ => next_pool_id.fetch_add(1, Ordering::Relaxed),
                        };
                        pool_ids.insert(name.clone(), id);
                    }
                    BackendInfo {
                        addr: info.addr,
                        tls_config: info.tls_config.clone(),
                        pool_ids,
                    }
                }
                _ => BackendInfo {
                    addr: resolve(c)?,
                    tls_config: backend_tls(c)?,
                    pool_ids: c
                        .users
                        .keys()
                        .map(|u| (u.clone(), next_pool_id.fetch_add(1, Ordering::Relaxed)))
                        .collect(),
                },
            };
            backends.insert(c.name.clone(), info);
        }
        Ok(Live {
            version,
            config,
            verifier,
            grants,
            backends,
        })
    }

    /// Why a session of `role` on `connection` (with grant `grant_id`, if any) may no longer
    /// run under this version, if it may not.
    fn withdrawn(&self, grant_id: Option<&str>, role: &str, connection: &str) -> Option<String> {
        if let Some(g) = grant_id {
            if self.grants.is_revoked(g) {
                return Some(format!("grant {g} was revoked"));
            }
        }
        let Some(r) = self.config.roles.iter().find(|r| r.name == role) else {
            return Some(format!("role \"{role}\" was removed"));
        };
        if self.config.connection(connection).is_none() {
            return Some(format!("connection \"{connection}\" was removed"));
        }
        if !r.connections.contains_key(connection) {
            return Some(format!(
                "role \"{role}\" may no longer use connection \"{connection}\""
            ));
        }
        None
    }
}

fn resolve(c: &Connection) -> anyhow::Result<SocketAddr> {
    (c.host.as_str(), c.port)
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "connection {}: cannot resolve {}:{}",
                c.name, c.host, c.port
            )
        })?
        .next()
        .with_context(|| format!("connection {}: {} has no address", c.name, c.host))
}

fn backend_tls(c: &Connection) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    Ok(match &c.tls {
        BackendTls::Disable => None,
        BackendTls::Prefer | BackendTls::Require => Some(sluice_auth::tls::client_config(
            &BackendTlsVerify::Insecure,
        )?),
        BackendTls::VerifyFull { ca } => Some(
            sluice_auth::tls::client_config(&BackendTlsVerify::Full {
                ca_pem_path: Some(ca.clone()),
            })
            .with_context(|| format!("connection {}: tls_ca", c.name))?,
        ),
    })
}

/// Counters of snapshot handling, for `/metrics`.
#[derive(Default)]
struct SnapshotCounters {
    swaps: AtomicU64,
    /// Snapshots the data plane itself refused (a persisted file that does not verify, a
    /// snapshot whose backends do not resolve); the client counts the rest.
    refused: AtomicU64,
    sessions_closed: AtomicU64,
}

/// What all cores share, read-only on the hot path.
pub struct Shared {
    /// The configuration the process started with. Its process-level settings (listen,
    /// cores, TLS, limits, metrics) hold for the whole run; connections, roles, policies and
    /// issuers may be replaced by snapshots: read those from [`CoreCtx::live`] or
    /// [`Shared::live`].
    pub config: Arc<Config>,
    /// Cancel keys of all clients.
    pub cancel: CancelRegistry,
    /// Every core's counters.
    pub metrics: Vec<Arc<CoreMetrics>>,
    client_tls: Option<Arc<rustls::ServerConfig>>,
    live: Mutex<Arc<Live>>,
    /// Bumped after each swap of `live`; cores compare it with the one they run.
    generation: AtomicU64,
    next_pool_id: AtomicU64,
    /// Wakes each core's watcher after a swap.
    wake_cores: Mutex<Vec<futures::channel::mpsc::Sender<()>>>,
    counters: SnapshotCounters,
    client: Mutex<Option<SnapshotClient>>,
    /// Audit records go here (each session clones the sink) when there is a control plane.
    audit_sink: std::sync::OnceLock<crate::audit::AuditSink>,
    audit_shipper: Mutex<Option<crate::audit::AuditShipper>>,
    /// The control plane's review API, when there is one.
    reviews: std::sync::OnceLock<crate::review::ReviewClient>,
}

impl Shared {
    /// Builds what the cores share from a validated configuration: loads keys and
    /// certificates and resolves backend addresses, so that errors surface at start.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_live(config, None)
    }

    /// Like [`Shared::new`], with `initial` (a snapshot) in force instead of the file's
    /// connections, roles, policies and issuers.
    fn with_live(config: Config, initial: Option<Applied>) -> anyhow::Result<Self> {
        if config.tls.is_some() && !config.require_tls_for_non_loopback {
            tracing::warn!("tls.require_for_non_loopback is false: tokens from the network may travel in clear text");
        }
        let client_tls = match &config.tls {
            Some(t) => Some(sluice_auth::tls::server_config(&t.cert, &t.key).context("tls")?),
            None => None,
        };
        let config = Arc::new(config);
        let next_pool_id = AtomicU64::new(1);
        let live = match initial {
            Some(a) => Live::build(a.version, a.config, a.grants, None, &next_pool_id)
                .with_context(|| format!("snapshot version {}", a.version))?,
            None => Live::build(
                0,
                config.clone(),
                Arc::new(GrantRules::default()),
                None,
                &next_pool_id,
            )?,
        };
        let cores = config.cores;
        Ok(Self {
            cancel: CancelRegistry::new(cores),
            metrics: (0..cores)
                .map(|_| Arc::new(CoreMetrics::default()))
                .collect(),
            client_tls,
            live: Mutex::new(Arc::new(live)),
            generation: AtomicU64::new(1),
            next_pool_id,
            wake_cores: Mutex::new(Vec::new()),
            counters: SnapshotCounters::default(),
            client: Mutex::new(None),
            audit_sink: std::sync::OnceLock::new(),
            audit_shipper: Mutex::new(None),
            reviews: std::sync::OnceLock::new(),
            config,
        })
    }

    /// Where sessions send audit records (`None` without a control plane).
    pub fn audit_sink(&self) -> Option<crate::audit::AuditSink> {
        self.audit_sink.get().cloned()
    }

    /// The control plane's review API (`None` without a control plane).
    pub fn review_client(&self) -> Option<crate::review::ReviewClient> {
        self.reviews.get().cloned()
    }

    /// Ships what the audit shipper holds, waiting up to `timeout`; true when nothing is
    /// left unacknowledged (or there is no shipper).
    pub fn flush_audit(&self, timeout: Duration) -> bool {
        self.audit_shipper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|s| s.flush(timeout))
    }

    /// The version in force now (off the cores; a core uses [`CoreCtx::live`]).
    pub fn live(&self) -> Arc<Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshot version in force (0: the local configuration).
    pub fn snapshot_version(&self) -> u64 {
        self.live().version
    }

    /// Builds the [`Live`] of an accepted snapshot and swaps it in; each core takes it at its
    /// next message boundary, and its watcher closes the sessions the snapshot withdraws.
    /// On error (e.g. a new backend host does not resolve) the version in force stays.
    pub fn install(&self, applied: Applied) -> anyhow::Result<()> {
        let version = applied.version;
        // One swap at a time: the next version is built against the one it replaces.
        let mut slot = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let live = Live::build(
            version,
            applied.config,
            applied.grants,
            Some(&slot),
            &self.next_pool_id,
        )
        .inspect_err(|e| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(version, error = %format!("{e:#}"), "snapshot cannot be put in force; keeping version {}", slot.version);
        })?;
        *slot = Arc::new(live);
        self.generation.fetch_add(1, Ordering::Release);
        drop(slot);
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        for tx in self
            .wake_cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            // A full channel already holds a wake-up.
            let _ = tx.try_send(());
        }
        tracing::info!(version, "snapshot in force");
        Ok(())
    }

    /// Prometheus text of all cores' metrics and of snapshot handling.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = metrics::render(&self.metrics);
        let stats = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(SnapshotClient::stats)
            .unwrap_or_default();
        let c = &self.counters;
        let lines: [(&str, &str, &str, u64); 6] = [
            (
                "snapshot_version",
                "gauge",
                "Snapshot version in force (0: the local configuration file)",
                self.snapshot_version(),
            ),
            (
                "snapshot_swaps_total",
                "counter",
                "Snapshots swapped in since start",
                c.swaps.load(Ordering::Relaxed),
            ),
            (
                "snapshot_refused_total",
                "counter",
                "Snapshots refused (invalid, tampered, oversized, unusable); the previous one stayed in force",
                stats.rejected + c.refused.load(Ordering::Relaxed),
            ),
            (
                "snapshot_fetch_failures_total",
                "counter",
                "Failed requests to the control plane (it was away or answered an error)",
                stats.failures,
            ),
            (
                "snapshot_persist_failures_total",
                "counter",
                "Snapshots in force that could not be written to the state directory",
                stats.persist_failures,
            ),
            (
                "sessions_closed_by_snapshot_total",
                "counter",
                "Sessions closed because a snapshot revoked their grant or removed their role or connection",
                c.sessions_closed.load(Ordering::Relaxed),
            ),
        ];
        let audit = self.audit_sink.get().map(|s| s.stats().snapshot());
        let audit_lines = audit.iter().flat_map(|a| {
            [
                (
                    "audit_records_shipped_total",
                    "counter",
                    "Audit records acknowledged by the control plane",
                    a.records_shipped,
                ),
                (
                    "audit_records_dropped_total",
                    "counter",
                    "Audit records lost (channel or spool full, or after shutdown); loss markers record them",
                    a.dropped_channel_full + a.dropped_spool_full + a.dropped_after_shutdown,
                ),
                (
                    "audit_spool_bytes",
                    "gauge",
                    "Bytes of audit batches spooled while the control plane is away",
                    a.spool_bytes,
                ),
            ]
        });
        for (name, kind, help, value) in lines.into_iter().chain(audit_lines) {
            let _ = writeln!(out, "# HELP sluice_{name} {help}");
            let _ = writeln!(out, "# TYPE sluice_{name} {kind}");
            let _ = writeln!(out, "sluice_{name} {value}");
        }
        out
    }
}

/// What closes a session, with the reason.
type KillFn = Rc<dyn Fn(&str)>;

/// A session known to its core, so a snapshot can close it.
struct Registered {
    grant_id: Option<Arc<str>>,
    role: Arc<str>,
    connection: Arc<str>,
    kill: Weak<dyn Fn(&str)>,
}

#[derive(Default)]
struct SessionRegistry {
    next: u64,
    sessions: HashMap<u64, Registered>,
}

/// A session's entry in its core's registry; dropping it unregisters the session.
pub struct SessionRegistration {
    registry: Weak<RefCell<SessionRegistry>>,
    id: u64,
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            // A kill callback that drops its own registration runs with the registry
            // unborrowed (see `CoreCtx::enforce`), so this borrow cannot collide.
            if let Ok(mut r) = r.try_borrow_mut() {
                r.sessions.remove(&self.id);
            }
        }
    }
}

/// One core's context, owned by its thread.
pub struct CoreCtx {
    /// Core number.
    pub id: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    /// TLS towards clients, if configured.
    pub tls_acceptor: Option<monoio_rustls::TlsAcceptor>,
    live: RefCell<Arc<Live>>,
    /// The `Shared` generation `live` was read at.
    live_generation: Cell<u64>,
    /// Pools by (connection, backend user, pool id); see [`BackendInfo::pool_ids`].
    pools: RefCell<HashMap<(String, String, u64), Rc<Pool>>>,
    sessions: Rc<RefCell<SessionRegistry>>,
    statements: RefCell<StatementRegistry>,
    /// Verdicts by statement text and policy version.
    pub verdicts: RefCell<sluice_policy::VerdictCache>,
}

impl CoreCtx {
    /// This core's audit sink, when the data plane ships audit records.
    pub fn audit_sink(&self) -> Option<crate::audit::AuditSink> {
        self.shared.audit_sink()
    }

    /// The control plane's review API, when the data plane has a control plane.
    pub fn review_client(&self) -> Option<crate::review::ReviewClient> {
        self.shared.review_client()
    }

    /// The configuration version this core runs now, taking a newer one if it was swapped in.
    pub fn live(&self) -> Arc<Live> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.live_generation.get() {
            *self.live.borrow_mut() = self.shared.live();
            self.live_generation.set(generation);
        }
        self.live.borrow().clone()
    }

    /// This core's pool for (connection, backend user) under the version in force, created
    /// on first use.
    pub fn pool(&self, conn: &Connection, user: &str) -> Rc<Pool> {
        self.pool_in(&self.live(), conn, user)
    }

    /// This core's pool for (connection, backend user) as `live` defines them. Pools are keyed
    /// by pool id too: a connection whose address or credentials changed gets a new pool,
    /// while sessions that hold the old one keep it until they end (then it closes).
    pub fn pool_in(&self, live: &Live, conn: &Connection, user: &str) -> Rc<Pool> {
        let info = &live.backends[&conn.name];
        let pool_id = info.pool_ids[user];
        let key = (conn.name.clone(), user.to_owned(), pool_id);
        if let Some(p) = self.pools.borrow().get(&key) {
            return p.clone();
        }
        let target = Target {
            addr: info.addr,
            host: conn.host.clone(),
            database: conn.database.clone(),
            user: conn.users[user].clone(),
            tls: conn.tls.clone(),
            tls_config: info.tls_config.clone(),
            connect_timeout: conn.pool.connect_timeout,
        };
        let cores = self.shared.config.cores;
        let per_core = conn.pool.size.div_ceil(cores);
        let pool = Rc::new(Pool::new(
            target,
            conn.pool.clone(),
            per_core,
            self.metrics.clone(),
        ));
        self.pools.borrow_mut().insert(key, pool.clone());
        pool
    }

    /// The configuration generation this core runs: bumped whenever a new snapshot is swapped
    /// in. Sessions compare it at message boundaries and look their policy up again.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The current policy of `role` (deny-all when the role no longer exists).
    pub fn policy_for(&self, role: &str) -> Arc<sluice_policy::Policy> {
        self.live()
            .config
            .roles
            .iter()
            .find(|r| r.name == role)
            .map(|r| r.policy.clone())
            .unwrap_or_else(|| Arc::new(sluice_policy::Policy::deny_all()))
    }

    /// The statement for this text on this core (transaction pooling).
    pub fn intern_statement(&self, query: &str, param_types: &[u8]) -> Rc<Statement> {
        self.statements.borrow_mut().intern(query, param_types)
    }

    /// Registers a running session so that a snapshot that withdraws its access (revokes
    /// `grant_id`, removes `role` or `connection`, or takes the connection from the role)
    /// closes it: `kill` is called on this core with the reason, outside any borrow of the
    /// registry, from a task of its own. If the version in force already withdraws it (a
    /// swap during the login), `kill` is called right after this returns, from a new task.
    /// Dropping the registration unregisters the session.
    pub fn register_session(
        &self,
        grant_id: Option<Arc<str>>,
        role: Arc<str>,
        connection: Arc<str>,
        kill: Weak<dyn Fn(&str)>,
    ) -> SessionRegistration {
        if let Some(reason) = self
            .live()
            .withdrawn(grant_id.as_deref(), &role, &connection)
        {
            self.shared
                .counters
                .sessions_closed
                .fetch_add(1, Ordering::Relaxed);
            let kill = kill.clone();
            monoio::spawn(async move {
                if let Some(k) = kill.upgrade() {
                    k(&reason);
                }
            });
        }
        let mut r = self.sessions.borrow_mut();
        let id = r.next;
        r.next += 1;
        r.sessions.insert(
            id,
            Registered {
                grant_id,
                role,
                connection,
                kill,
            },
        );
        SessionRegistration {
            registry: Rc::downgrade(&self.sessions),
            id,
        }
    }

    /// Puts the version in force on this core: closes the sessions it withdraws and drops
    /// pools it no longer defines (sessions still holding one keep it until they end).
    fn enforce(&self) {
        let live = self.live();
        let mut doomed: Vec<(KillFn, String)> = Vec::new();
        {
            let mut r = self.sessions.borrow_mut();
            r.sessions.retain(|_, s| {
                let Some(kill) = s.kill.upgrade() else {
                    return false;
                };
                match live.withdrawn(s.grant_id.as_deref(), &s.role, &s.connection) {
                    Some(reason) => {
                        doomed.push((kill, reason));
                        false
                    }
                    None => true,
                }
            });
        }
        self.pools.borrow_mut().retain(|(conn, user, id), _| {
            live.backends.get(conn).and_then(|b| b.pool_ids.get(user)) == Some(id)
        });
        if !doomed.is_empty() {
            self.shared
                .counters
                .sessions_closed
                .fetch_add(doomed.len() as u64, Ordering::Relaxed);
        }
        for (kill, reason) in doomed {
            tracing::info!(core = self.id, version = live.version, %reason, "closing a session");
            kill(&reason);
        }
    }
}

/// Where the snapshot is kept in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// Where a generated node id is kept in the state directory.
pub const NODE_ID_FILE: &str = "node-id";

/// A running data plane.
pub struct Dataplane {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Binds one SO_REUSEPORT listener per core on `config.listen` (port 0 picks a free port
    /// shared by all cores) and starts the cores.
    ///
    /// With a `control_plane` section, the snapshot kept in its `state_dir` is put in force
    /// first (fail-static: the control plane need not be up), then a [`SnapshotClient`]
    /// swaps in each new snapshot. A persisted snapshot that does not verify is refused with
    /// an error log, and the file's own settings run until the control plane answers.
    pub fn start(config: Config) -> anyhow::Result<Dataplane> {
        let cp = config.control_plane.clone();
        let trust = config.control_plane_trust.clone();
        let mut persisted_refused = false;
        let initial = match &cp {
            None => None,
            Some(cp) => {
                let (initial, refused) = load_persisted(&config, cp)?;
                persisted_refused = refused;
                initial
            }
        };
        let running = initial.as_ref().map(|a| a.version);
        let shared = Arc::new(Shared::with_live(config, initial)?);
        if persisted_refused {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cp) = &cp {
            let node = node_id(cp)?;
            let (shipper, sink) = crate::audit::AuditShipper::start(crate::audit::ShipperConfig {
                trust: trust.clone(),
                ..crate::audit::ShipperConfig::new(
                    &cp.url,
                    &cp.node_token,
                    &node,
                    cp.state_dir.join("audit-spool"),
                )
            })
            .context("starting the audit shipper")?;
            let _ = shared.audit_sink.set(sink);
            *shared
                .audit_shipper
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(shipper);
            let _ = shared
                .reviews
                .set(crate::review::ReviewClient::with_settings(
                    &cp.url,
                    &cp.node_token,
                    &node,
                    crate::review::ReviewClientSettings {
                        trust: trust.clone(),
                        ..Default::default()
                    },
                ));
        }
        let config = shared.config.clone();
        let listeners = bind_listeners(config.listen, config.cores)?;
        let local_addr = listeners[0].local_addr()?;
        let mut threads = Vec::with_capacity(config.cores);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        for (id, listener) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let (wake_tx, wake_rx) = futures::channel::mpsc::channel(1);
            shared
                .wake_cores
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(wake_tx);
            let started = started_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("sluice-core-{id}"))
                .spawn(move || {
                    if let Err(e) = run_core(id, shared, listener, wake_rx, started) {
                        tracing::error!(core = id, error = %format!("{e:#}"), "core stopped");
                    }
                })
                .context("spawning a core thread")?;
            threads.push(t);
        }
        drop(started_tx);
        let mut drivers = vec![String::from("unknown"); config.cores];
        for _ in 0..config.cores {
            match started_rx.recv_timeout(Duration::from_secs(10)) {
                Ok((id, driver)) => drivers[id] = driver.to_owned(),
                Err(_) => break,
            }
        }
        if let Some(addr) = config.metrics_listen {
            let shared = shared.clone();
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics_listen {addr}"))?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            std::thread::Builder::new()
                .name("sluice-metrics".into())
                .spawn(move || serve_metrics(listener, shared))?;
        }
        if let Some(cp) = cp {
            let mut settings = ClientSettings::new(
                &cp.url,
                &cp.node_token,
                &node_id(&cp)?,
                cp.state_dir.join(SNAPSHOT_FILE),
            );
            settings.address = local_addr.to_string();
            settings.trust = trust;
            settings.drivers = drivers;
            let weak = Arc::downgrade(&shared);
            let client =
                SnapshotClient::start(settings, (*config).clone(), running, move |applied| {
                    match weak.upgrade() {
                        Some(shared) => {
                            shared.install(applied).map_err(|e| format!("{e:#}").into())
                        }
                        None => Err("the data plane is gone".into()),
                    }
                })
                .context("starting the snapshot client")?;
            *shared.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        }
        tracing::info!(%local_addr, cores = config.cores, snapshot_version = shared.snapshot_version(), "data plane listening");
        Ok(Dataplane {
            shared,
            local_addr,
            threads,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the cores share (metrics, configuration, the version in force).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops the audit shipper: what it holds goes to the control plane within `grace`, the
    /// rest to the spool (which a later start drains); records after this are counted as
    /// dropped. Releases the spool directory for another data plane.
    pub fn stop_audit_shipper(&self, grace: Duration) {
        let shipper = self
            .shared
            .audit_shipper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = shipper {
            s.shutdown(grace);
        }
    }

    /// Stops taking snapshots from the control plane (the one in force stays); returns at
    /// once between requests, within a long-poll's wait otherwise.
    pub fn stop_snapshot_client(&self) {
        let client = self
            .shared
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = client {
            c.stop();
        }
    }

    /// Blocks until every core stops (they run until the process ends).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The snapshot kept in the state directory, put in force at start; the flag says a file was
/// there but refused.
fn load_persisted(
    config: &Config,
    cp: &ControlPlaneSettings,
) -> anyhow::Result<(Option<Applied>, bool)> {
    create_private_dir(&cp.state_dir)?;
    let path = cp.state_dir.join(SNAPSHOT_FILE);
    let snap = match SnapshotClient::load_persisted(&path) {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no persisted snapshot; the configuration file's settings run until the control plane answers");
            return Ok((None, false));
        }
        Ok(Some(s)) => s,
        Err(e) => {
            tracing::error!(error = %e, "persisted snapshot refused; the configuration file's settings run until the control plane answers");
            return Ok((None, true));
        }
    };
    match snapshot::apply_snapshot(config, &snap) {
        Ok(a) => {
            tracing::info!(version = a.version, path = %path.display(), "serving the persisted snapshot");
            Ok((Some(a), false))
        }
        Err(e) => {
            tracing::error!(error = %e, "persisted snapshot refused; the configuration file's settings run until the control plane answers");
            Ok((None, true))
        }
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("control_plane.state_dir {}", dir.display()))
}

/// The configured node id, or the one generated on first start and kept in the state dir.
fn node_id(cp: &ControlPlaneSettings) -> anyhow::Result<String> {
    if let Some(id) = &cp.node_id {
        return Ok(id.clone());
    }
    let path = cp.state_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("dp-{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn bind_listeners(addr: SocketAddr, cores: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(cores);
    let mut addr = addr;
    for _ in 0..cores {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        // The first bind resolves port 0; the others join it.
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Verdicts cached per core.
const VERDICT_CACHE_SIZE: usize = 16 * 1024;

type CoreRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Builds this core's runtime: io_uring with cooperative task running (measured faster than
/// the default ring), falling back to a default ring and then to epoll when the kernel or
/// its limits refuse.
fn build_runtime(core: usize) -> anyhow::Result<(CoreRuntime, &'static str)> {
    let mut urb = io_uring::IoUring::builder();
    match std::env::var("SLUICE_URING_SETUP").as_deref() {
        Ok("defer") => {
            urb.setup_single_issuer().setup_defer_taskrun();
        }
        Ok("default") => {}
        _ => {
            urb.setup_coop_taskrun();
        }
    }
    let tuned = RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .build();
    let e = match tuned {
        Ok(rt @ FusionRuntime::Uring(_)) => return Ok((rt, "io_uring")),
        Ok(rt) => return Ok((rt, "epoll")),
        Err(e) => e,
    };
    tracing::warn!(core, error = %e, "io_uring with COOP_TASKRUN refused; trying a default ring");
    let plain = RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(256)
        .enable_timer()
        .build();
    let e = match plain {
        Ok(rt @ FusionRuntime::Uring(_)) => return Ok((rt, "io_uring")),
        Ok(rt) => return Ok((rt, "epoll")),
        Err(e) => e,
    };
    tracing::warn!(core, error = %e, "io_uring refused; falling back to epoll");
    let legacy = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .context("building an epoll runtime")?;
    Ok((legacy.into(), "epoll"))
}

fn run_core(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    wake: futures::channel::mpsc::Receiver<()>,
    started: std::sync::mpsc::Sender<(usize, &'static str)>,
) -> anyhow::Result<()> {
    let (mut rt, driver) = build_runtime(id)?;
    tracing::info!(core = id, driver, "core started");
    let _ = started.send((id, driver));
    let metrics = shared.metrics[id].clone();
    if driver == "io_uring" {
        metrics.io_uring.inc();
    }
    let live_generation = shared.generation.load(Ordering::Acquire);
    let ctx = Rc::new(CoreCtx {
        id,
        tls_acceptor: shared
            .client_tls
            .clone()
            .map(monoio_rustls::TlsAcceptor::from),
        metrics,
        live: RefCell::new(shared.live()),
        live_generation: Cell::new(live_generation),
        pools: RefCell::new(HashMap::new()),
        sessions: Rc::new(RefCell::new(SessionRegistry::default())),
        statements: RefCell::new(StatementRegistry::new(id)),
        verdicts: RefCell::new(sluice_policy::VerdictCache::new(VERDICT_CACHE_SIZE)),
        shared,
    });
    rt.block_on(async move {
        monoio::spawn(watch_swaps(ctx.clone(), wake));
        accept_loop(ctx, listener).await
    })
}

/// Runs [`CoreCtx::enforce`] after each swap (woken from the thread that swapped).
async fn watch_swaps(ctx: Rc<CoreCtx>, mut wake: futures::channel::mpsc::Receiver<()>) {
    while wake.next().await.is_some() {
        ctx.enforce();
    }
}

async fn accept_loop(ctx: Rc<CoreCtx>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let max_clients = ctx.shared.config.limits.max_client_connections_per_core;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if ctx.metrics.clients_active.get() >= max_clients as i64 {
                    monoio::spawn(crate::login::refuse(tcp, "too many client connections"));
                    continue;
                }
                monoio::spawn(crate::login::serve(ctx.clone(), tcp, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn serve_metrics(listener: std::net::TcpListener, shared: Arc<Shared>) {
    use std::io::{Read, Write};
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let mut req = [0u8; 1024];
        let n = stream.read(&mut req).unwrap_or(0);
        let ok = req[..n].starts_with(b"GET /metrics");
        let (status, body) = if ok {
            ("200 OK", shared.render_metrics())
        } else {
            ("404 Not Found", "see /metrics\n".to_string())
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: u16, password: &str) -> Arc<Config> {
        let yaml = format!(
            "listen: 127.0.0.1:0\nconnections:\n  - {{ name: a, port: {port}, database: d, users: [{{ name: r, password: {password} }}, {{ name: w, password: w }}] }}\n  - {{ name: b, port: 2, database: d, users: [{{ name: r }}] }}\nroles:\n  - {{ name: x, subjects: [s], connections: {{ a: r, b: r }} }}\n"
        );
        Arc::new(Config::from_yaml(&yaml, Path::new("."), &|_| None).unwrap())
    }

    fn build(c: Arc<Config>, previous: Option<&Live>, ids: &AtomicU64) -> Live {
        Live::build(1, c, Arc::new(GrantRules::default()), previous, ids).unwrap()
    }

    #[test]
    fn pools_are_kept_for_unchanged_backends_only() {
        let ids = AtomicU64::new(1);
        let v1 = build(config(1, "p"), None, &ids);
        let id = |l: &Live, c: &str, u: &str| l.backends[c].pool_ids[u];
        let same = build(config(1, "p"), Some(&v1), &ids);
        for (c, u) in [("a", "r"), ("a", "w"), ("b", "r")] {
            assert_eq!(id(&v1, c, u), id(&same, c, u), "{c}/{u} unchanged");
        }
        let password = build(config(1, "q"), Some(&same), &ids);
        assert_ne!(
            id(&same, "a", "r"),
            id(&password, "a", "r"),
            "new credentials"
        );
        assert_eq!(id(&same, "a", "w"), id(&password, "a", "w"));
        assert_eq!(id(&same, "b", "r"), id(&password, "b", "r"));
        let moved = build(config(3, "q"), Some(&password), &ids);
        assert_ne!(id(&password, "a", "w"), id(&moved, "a", "w"), "new address");
        assert_eq!(id(&password, "b", "r"), id(&moved, "b", "r"));
    }

    #[test]
    fn withdrawn_sessions() {
        let ids = AtomicU64::new(1);
        let mut grants = GrantRules::default();
        grants.revoked.insert("g1".into());
        let live = Live::build(2, config(1, "p"), Arc::new(grants), None, &ids).unwrap();
        assert_eq!(live.withdrawn(Some("g2"), "x", "a"), None);
        assert_eq!(live.withdrawn(None, "x", "b"), None);
        assert!(live
            .withdrawn(Some("g1"), "x", "a")
            .unwrap()
            .contains("revoked"));
        assert!(live
            .withdrawn(None, "gone", "a")
            .unwrap()
            .contains("removed"));
        assert!(live
            .withdrawn(None, "x", "c")
            .unwrap()
            .contains("connection \"c\""));
    }
}
