//! Thread per core: one monoio runtime, one SO_REUSEPORT listener, one set of pools per core.
//!
//! Cores share only [`Shared`] (configuration, token verifier, cancel registry, metrics),
//! behind an `Arc`, and never touch each other's pools or sessions.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use sluice_auth::tls::BackendTlsVerify;
use sluice_auth::token::TokenVerifier;

use crate::backend::Target;
use crate::cancel::CancelRegistry;
use crate::config::{BackendTls, Config, Connection};
use crate::metrics::{self, CoreMetrics};
use crate::pool::Pool;
use crate::prepared::{Statement, StatementRegistry};

/// What all cores share, read-only on the hot path.
pub struct Shared {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Client token verification.
    pub verifier: TokenVerifier,
    /// Cancel keys of all clients.
    pub cancel: CancelRegistry,
    /// Every core's counters.
    pub metrics: Vec<Arc<CoreMetrics>>,
    client_tls: Option<Arc<rustls::ServerConfig>>,
    backends: HashMap<String, BackendInfo>,
}

struct BackendInfo {
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl Shared {
    /// Builds what the cores share from a validated configuration: loads keys and
    /// certificates and resolves backend addresses, so that errors surface at start.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let verifier = TokenVerifier::new(&config.auth).context("auth")?;
        if verifier.is_empty() {
            tracing::warn!(
                "no token issuers or static tokens are configured: every client will be refused"
            );
        }
        if config.tls.is_some() && !config.require_tls_for_non_loopback {
            tracing::warn!("tls.require_for_non_loopback is false: tokens from the network may travel in clear text");
        }
        let client_tls = match &config.tls {
            Some(t) => Some(sluice_auth::tls::server_config(&t.cert, &t.key).context("tls")?),
            None => None,
        };
        let mut backends = HashMap::new();
        for c in &config.connections {
            let addr = (c.host.as_str(), c.port)
                .to_socket_addrs()
                .with_context(|| {
                    format!(
                        "connection {}: cannot resolve {}:{}",
                        c.name, c.host, c.port
                    )
                })?
                .next()
                .with_context(|| format!("connection {}: {} has no address", c.name, c.host))?;
            let tls_config = match &c.tls {
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
            };
            backends.insert(c.name.clone(), BackendInfo { addr, tls_config });
        }
        let cores = config.cores;
        Ok(Self {
            verifier,
            cancel: CancelRegistry::new(cores),
            metrics: (0..cores)
                .map(|_| Arc::new(CoreMetrics::default()))
                .collect(),
            client_tls,
            backends,
            config: Arc::new(config),
        })
    }

    /// Prometheus text of all cores' metrics.
    pub fn render_metrics(&self) -> String {
        metrics::render(&self.metrics)
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
    pools: RefCell<HashMap<(String, String), Rc<Pool>>>,
    statements: RefCell<StatementRegistry>,
    /// Verdicts by statement text and policy version.
    pub verdicts: RefCell<sluice_policy::VerdictCache>,
}

impl CoreCtx {
    /// This core's pool for (connection, backend user), created on first use.
    pub fn pool(&self, conn: &Connection, user: &str) -> Rc<Pool> {
        let key = (conn.name.clone(), user.to_owned());
        if let Some(p) = self.pools.borrow().get(&key) {
            return p.clone();
        }
        let info = &self.shared.backends[&conn.name];
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
        0
    }

    /// The current policy of `role` (deny-all when the role no longer exists).
    pub fn policy_for(&self, role: &str) -> Arc<sluice_policy::Policy> {
        self.shared
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
}

/// A running data plane.
pub struct Dataplane {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Binds one SO_REUSEPORT listener per core on `config.listen` (port 0 picks a free port
    /// shared by all cores) and starts the cores.
    pub fn start(config: Config) -> anyhow::Result<Dataplane> {
        let shared = Arc::new(Shared::new(config)?);
        let config = shared.config.clone();
        let listeners = bind_listeners(config.listen, config.cores)?;
        let local_addr = listeners[0].local_addr()?;
        let mut threads = Vec::with_capacity(config.cores);
        for (id, listener) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("sluice-core-{id}"))
                .spawn(move || {
                    if let Err(e) = run_core(id, shared, listener) {
                        tracing::error!(core = id, error = %format!("{e:#}"), "core stopped");
                    }
                })
                .context("spawning a core thread")?;
            threads.push(t);
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
        tracing::info!(%local_addr, cores = config.cores, "data plane listening");
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

    /// What the cores share (metrics, configuration).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Blocks until every core stops (they run until the process ends).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
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

fn run_core(id: usize, shared: Arc<Shared>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let (mut rt, driver) = build_runtime(id)?;
    tracing::info!(core = id, driver, "core started");
    let metrics = shared.metrics[id].clone();
    if driver == "io_uring" {
        metrics.io_uring.inc();
    }
    let ctx = Rc::new(CoreCtx {
        id,
        tls_acceptor: shared
            .client_tls
            .clone()
            .map(monoio_rustls::TlsAcceptor::from),
        metrics,
        pools: RefCell::new(HashMap::new()),
        statements: RefCell::new(StatementRegistry::new(id)),
        verdicts: RefCell::new(sluice_policy::VerdictCache::new(VERDICT_CACHE_SIZE)),
        shared,
    });
    rt.block_on(accept_loop(ctx, listener))
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
