//! Thread per core: one monoio runtime, one SO_REUSEPORT listener, one set of pools per core.
//!
//! [`Dataplane::start`] binds the listeners, starts one thread per core, each with its own
//! [`CoreCtx`] over the [`Shared`] state, and the control plane's clients (snapshots, audit,
//! reviews) when there is one.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::{Config, ControlPlaneSettings};
pub use crate::ctx::CoreCtx;
pub use crate::shared::{Live, Shared};
use crate::snapshot::{self, Applied, ClientSettings, SnapshotClient};

/// Where the snapshot is kept in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// Where a generated node id is kept in the state directory.
pub const NODE_ID_FILE: &str = "node-id";

/// A running data plane.
pub struct Dataplane {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    /// A second handle on each core's listening socket, to stop accepting from outside.
    listeners: Vec<std::net::TcpListener>,
}

/// How a graceful shutdown went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Client connections still open when the drain timeout ran out (then closed with
    /// 57P01).
    pub closed_at_timeout: i64,
    /// Whether every audit record was acknowledged by the control plane or spooled.
    pub audit_flushed: bool,
}

/// How long the cores have to close the sessions the drain timeout cut short.
const AFTER_TIMEOUT: Duration = Duration::from_secs(5);

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
        let handles = listeners
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .context("cloning the listeners")?;
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
            listeners: handles,
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

    /// Reads the local configuration file again and puts it in force as a new snapshot
    /// would be (new logins and each session's next statement follow it; sessions it
    /// withdraws are closed). The process settings (listen, cores, TLS, limits, metrics)
    /// keep the values the process started with. Refused for a data plane that takes its
    /// snapshots from a control plane, and on any error (the version in force stays).
    /// Returns the new version.
    pub fn reload_file(&self, path: &Path) -> anyhow::Result<u64> {
        if self.shared.config.control_plane.is_some() {
            anyhow::bail!("the configuration comes from the control plane: nothing to reload");
        }
        let version = self.shared.snapshot_version() + 1;
        let config = Config::from_file_as_version(path, version)?;
        if config.control_plane.is_some() {
            anyhow::bail!("a control_plane section takes a restart");
        }
        self.shared.install(Applied {
            version,
            content_hash: String::new(),
            config: Arc::new(config),
            grants: Arc::default(),
        })?;
        Ok(version)
    }

    /// Graceful shutdown: stops accepting (the listeners close, so another data plane on
    /// the same port takes the new clients), closes idle sessions and the others once
    /// their transaction is over, then, after `drain_timeout`, every session left (57P01).
    /// Once the cores are done, ships the audit records held (what the control plane does
    /// not take within `audit_grace` is spooled). The snapshot client, if any, runs on.
    pub fn shutdown(&self, drain_timeout: Duration, audit_grace: Duration) -> Drained {
        let mut drained = Drained::default();
        self.shared.start_drain();
        for l in &self.listeners {
            stop_accepting(l);
        }
        tracing::info!(
            clients = self.shared.clients_open(),
            timeout = ?drain_timeout,
            "draining: no new clients; sessions close once idle"
        );
        if !self.wait_for_clients(drain_timeout) {
            drained.closed_at_timeout = self.shared.clients_open();
            tracing::warn!(
                clients = drained.closed_at_timeout,
                "drain timeout: closing the sessions still busy"
            );
            self.shared.expire_drain();
            self.wait_for_clients(AFTER_TIMEOUT);
        }
        let deadline = std::time::Instant::now() + AFTER_TIMEOUT;
        for t in &self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drained.audit_flushed = self.shared.flush_audit(audit_grace);
        // What the control plane did not take within the grace goes to the spool now.
        self.stop_audit_shipper(Duration::ZERO);
        tracing::info!(?drained, "data plane stopped");
        drained
    }

    /// Waits up to `timeout` for every client connection to close; false on timeout.
    fn wait_for_clients(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.clients_open() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Shuts a listening socket down: the kernel takes it out of the port's SO_REUSEPORT group
/// (new connections go to the other listeners on the port), and the accept in flight on it
/// returns an error, which ends its core's accept loop.
fn stop_accepting(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: shutdown(2) on a listening socket this data plane owns and has not closed (the
    // handle is kept open until the data plane is dropped).
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
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
    if driver == "io_uring" {
        shared.metrics[id].io_uring.inc();
    }
    let ctx = Rc::new(CoreCtx::new(id, shared));
    rt.block_on(async move {
        monoio::spawn(watch_swaps(ctx.clone(), wake));
        accept_loop(ctx.clone(), listener).await?;
        // Draining: the core runs until its last client is gone.
        while ctx.metrics.clients_active.get() > 0 {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    })
}

/// Runs [`CoreCtx::enforce`] after each swap and each step of a drain (woken from the
/// thread that swapped or drains).
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
            Err(_) if ctx.shared.draining() => return Ok(()),
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
