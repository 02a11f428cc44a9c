//! One core's context: its pools, the sessions it runs, its caches of statements, verdicts
//! and backend catalogs, and the configuration version it runs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::Target;
use crate::catalog::Catalogs;
use crate::config::Connection;
use crate::metrics::CoreMetrics;
use crate::pool::Pool;
use crate::prepared::{Statement, StatementRegistry};
use crate::shared::{Live, Shared};

/// Verdicts cached per core.
const VERDICT_CACHE_SIZE: usize = 16 * 1024;
/// Rejected-token log lines per core and second; the others are counted in one line.
const AUTH_LOG_LINES_PER_SECOND: u32 = 10;

/// Why a session is asked to end from outside its tasks.
#[derive(Clone, Copy, Debug)]
pub enum Ending<'a> {
    /// A snapshot withdrew its access, for this reason: it ends now.
    Withdrawn(&'a str),
    /// The data plane drains: the session ends now if it is idle, else at its next idle
    /// point (once its transaction is over).
    Drain,
    /// The drain timeout ran out: it ends now, whatever it is doing.
    DrainExpired,
}

/// What ends a session (see [`Ending`]).
type KillFn = Rc<dyn Fn(Ending<'_>)>;

/// A session known to its core, so a snapshot can close it.
struct Registered {
    grant_id: Option<Arc<str>>,
    role: Arc<str>,
    connection: Arc<str>,
    kill: Weak<dyn Fn(Ending<'_>)>,
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
    /// Pools by (connection, backend user, pool id); see [`crate::shared::BackendInfo::pool_ids`].
    pools: RefCell<HashMap<(String, String, u64), Rc<Pool>>>,
    sessions: Rc<RefCell<SessionRegistry>>,
    statements: RefCell<StatementRegistry>,
    /// Verdicts by statement text and policy version.
    pub verdicts: RefCell<crate::session::Verdicts>,
    /// The backend catalogs masking resolves columns with, by connection.
    pub catalogs: Catalogs,
    /// Log lines for rejected tokens (a client can send them at any rate).
    pub auth_log: crate::loglimit::LogLimiter,
}

impl CoreCtx {
    /// Core `id`'s context, running the version in force now.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let live_generation = shared.generation();
        CoreCtx {
            id,
            tls_acceptor: shared
                .client_tls
                .clone()
                .map(monoio_rustls::TlsAcceptor::from),
            metrics: shared.metrics[id].clone(),
            live: RefCell::new(shared.live()),
            live_generation: Cell::new(live_generation),
            pools: RefCell::new(HashMap::new()),
            sessions: Rc::new(RefCell::new(SessionRegistry::default())),
            statements: RefCell::new(StatementRegistry::new(id)),
            verdicts: RefCell::new(crate::session::Verdicts::new(VERDICT_CACHE_SIZE)),
            catalogs: Catalogs::default(),
            auth_log: crate::loglimit::LogLimiter::new(
                AUTH_LOG_LINES_PER_SECOND,
                std::time::Duration::from_secs(1),
            ),
            shared,
        }
    }

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
        let generation = self.shared.generation();
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
        self.shared.generation()
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
    pub fn intern_statement(
        &self,
        query: &[u8],
        encoding: crate::client_encoding::ClientEncoding,
        param_types: &[u8],
    ) -> Rc<Statement> {
        self.statements
            .borrow_mut()
            .intern(query, encoding, param_types)
    }

    /// Whether a server of this core has parsed this text with these parameter types.
    pub fn statement_parsed(
        &self,
        query: &[u8],
        encoding: crate::client_encoding::ClientEncoding,
        param_types: &[u8],
    ) -> bool {
        self.statements
            .borrow()
            .get(query, encoding, param_types)
            .is_some_and(|s| s.parsed.get())
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
        kill: Weak<dyn Fn(Ending<'_>)>,
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
                    k(Ending::Withdrawn(&reason));
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
    pub(crate) fn enforce(&self) {
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
            kill(Ending::Withdrawn(&reason));
        }
        if self.shared.draining() {
            self.drain_sessions();
        }
    }

    /// Tells every session of this core that the data plane drains (or that the drain
    /// timeout ran out), outside any borrow of the registry.
    fn drain_sessions(&self) {
        let ending = if self.shared.drain_expired() {
            Ending::DrainExpired
        } else {
            Ending::Drain
        };
        let sessions: Vec<KillFn> = self
            .sessions
            .borrow()
            .sessions
            .values()
            .filter_map(|s| s.kill.upgrade())
            .collect();
        for kill in sessions {
            kill(ending);
        }
    }
}
