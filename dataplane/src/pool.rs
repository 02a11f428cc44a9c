//! A per-core pool of server connections for one (connection, backend user).
//!
//! Lives on one core and is never shared across threads, so it needs no locks: `Cell` and
//! `RefCell` suffice. Clients that find the pool exhausted queue in order and give up after
//! the pool's timeout. A server connection that breaks bumps the pool's epoch, so the other
//! idle connections of that generation (likely dead too, e.g. after a backend restart) are
//! closed instead of handed out.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::backend::{ServerConn, Target};
use crate::config::PoolConfig;
use crate::error::BackendError;
use crate::metrics::CoreMetrics;

/// What a queued client receives: a connection, or word that a slot freed up.
type Handoff = Option<ServerConn>;

/// Idle connections idle at least this long have their socket peeked at before reuse. Under
/// load connections come back within microseconds and skip the syscall; after a backend
/// restart the dead ones have sat longer than this and are caught before a client gets one.
const PEEK_AFTER: Duration = Duration::from_millis(10);

/// The first wait before connecting again to a backend that is away; it doubles up to
/// [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(50);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(500);

/// One core's pool for one (connection, backend user).
pub struct Pool {
    target: Target,
    cfg: PoolConfig,
    /// Most connections on this core.
    max: usize,
    idle: RefCell<Vec<ServerConn>>,
    /// Open connections: idle, in use, or being opened.
    open: Cell<usize>,
    waiters: RefCell<VecDeque<oneshot::Sender<Handoff>>>,
    epoch: Cell<u64>,
    metrics: Arc<CoreMetrics>,
}

impl Pool {
    /// A pool of at most `max` connections to `target`.
    pub fn new(target: Target, cfg: PoolConfig, max: usize, metrics: Arc<CoreMetrics>) -> Self {
        Self {
            target,
            cfg,
            max: max.max(1),
            idle: RefCell::new(Vec::new()),
            open: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
            epoch: Cell::new(0),
            metrics,
        }
    }

    /// Where this pool's connections go (for the proxy's own unpooled connections).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Open connections on this core.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Idle connections on this core.
    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Takes a server connection: an idle one, a new one, or the next one released.
    pub async fn acquire(&self) -> Result<ServerConn, BackendError> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            if let Some(conn) = self.take_idle().await {
                return Ok(conn);
            }
            if self.open.get() < self.max {
                self.open.set(self.open.get() + 1);
                return match self.connect_until(deadline).await {
                    Ok(conn) => Ok(conn),
                    Err(e) => {
                        self.slot_freed();
                        Err(e)
                    }
                };
            }
            self.metrics.pool_waits.inc();
            let (tx, mut rx) = oneshot::channel();
            self.waiters.borrow_mut().push_back(tx);
            let left = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, &mut rx).await {
                Ok(Ok(Some(conn))) => return Ok(conn),
                // A slot freed up (or the sender went away): try again.
                Ok(Ok(None)) | Ok(Err(_)) => continue,
                Err(_) => {
                    // A hand-off may have landed as the wait ended: pass it on, or the
                    // connection (or the freed slot) would be lost to every later client.
                    rx.close();
                    match rx.try_recv() {
                        Ok(Some(Some(conn))) => self.release(conn),
                        Ok(Some(None)) => self.pass_on_freed_slot(),
                        _ => {}
                    }
                    self.metrics.pool_timeouts.inc();
                    return Err(BackendError::PoolTimeout {
                        secs: self.cfg.timeout.as_secs(),
                        size: self.max,
                    });
                }
            }
        }
    }

    /// Opens a server connection, trying again while the backend is briefly away (it
    /// refuses connections, or says it is starting up or shutting down, as during a
    /// restart) until `deadline`: a client whose transaction has not started waits for the
    /// backend to come back, up to the pool's timeout, instead of failing at once.
    async fn connect_until(&self, deadline: Instant) -> Result<ServerConn, BackendError> {
        let mut backoff = CONNECT_RETRY_FIRST;
        loop {
            self.metrics.server_connects.inc();
            let e = match ServerConn::connect(&self.target, self.epoch.get()).await {
                Ok(conn) => return Ok(conn),
                Err(e) => e,
            };
            self.metrics.server_connect_errors.inc();
            let left = deadline.saturating_duration_since(Instant::now());
            if !e.backend_away() || left < backoff {
                return Err(e);
            }
            tracing::debug!(backend = %self.target.addr, error = %e, "backend away; connecting again");
            monoio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(CONNECT_RETRY_MAX);
        }
    }

    /// An idle connection that is still usable, checking the ones idle for long.
    async fn take_idle(&self) -> Option<ServerConn> {
        loop {
            let mut conn = self.idle.borrow_mut().pop()?;
            if !self.reusable(&conn) {
                self.close(conn);
                continue;
            }
            // A TLS socket may hold records that are not messages (e.g. session tickets), so
            // only plain sockets are peeked; TLS ones rely on the check below.
            if !conn.state.tls
                && conn.state.idle_since.elapsed() >= PEEK_AFTER
                && !socket_is_quiet(conn.state.fd)
            {
                // An idle server says nothing: EOF or bytes mean it went away (a restart sends
                // FATAL 57P01 then closes). Its whole generation is suspect.
                tracing::info!(backend = %self.target.addr, "idle server connection was closed by the server; dropping its generation");
                self.broken(Some(conn));
                continue;
            }
            if conn.state.idle_since.elapsed() >= self.cfg.check_after {
                let check =
                    monoio::time::timeout(Duration::from_secs(5), conn.run_control_query("")).await;
                if !matches!(check, Ok(Ok(()))) {
                    tracing::info!(backend = %self.target.addr, "idle server connection failed its check; closing it");
                    self.close(conn);
                    continue;
                }
            }
            return Some(conn);
        }
    }

    fn reusable(&self, conn: &ServerConn) -> bool {
        conn.state.epoch == self.epoch.get() && conn.state.created.elapsed() < self.cfg.max_lifetime
    }

    /// Returns a healthy, idle (ReadyForQuery 'I') connection for the next client.
    pub fn release(&self, mut conn: ServerConn) {
        if !self.reusable(&conn) || !conn.rbuf.is_empty() {
            self.close(conn);
            return;
        }
        conn.state.idle_since = Instant::now();
        let mut handoff = Some(conn);
        while let Some(tx) = self.waiters.borrow_mut().pop_front() {
            match tx.send(handoff) {
                Ok(()) => return,
                Err(back) => handoff = back,
            }
        }
        if let Some(conn) = handoff {
            self.idle.borrow_mut().push(conn);
        }
    }

    /// Returns a session-mode connection after running the reset query on it.
    pub async fn release_after_reset(&self, mut conn: ServerConn) {
        let reset = self.cfg.reset_query.clone();
        if !reset.is_empty() {
            if let Err(e) = conn.run_control_query(&reset).await {
                tracing::info!(error = %e, "reset query failed; closing the server connection");
                self.close(conn);
                return;
            }
        }
        self.release(conn);
    }

    /// Closes a connection that cannot be reused.
    pub fn close(&self, conn: ServerConn) {
        drop(conn);
        self.slot_freed();
    }

    /// A connection broke: close it, and treat its whole generation as suspect.
    pub fn broken(&self, conn: Option<ServerConn>) {
        self.epoch.set(self.epoch.get() + 1);
        self.metrics.server_errors.inc();
        if let Some(conn) = conn {
            drop(conn);
        }
        self.slot_freed();
        let stale: Vec<_> = self.idle.borrow_mut().drain(..).collect();
        for conn in stale {
            self.close(conn);
        }
    }

    /// A connection failed while being prepared for a client: a broken socket condemns its
    /// generation, a refusal (bad parameter) only this connection.
    pub fn broken_or_close(&self, conn: ServerConn, err: &BackendError) {
        match err {
            BackendError::Io(_) | BackendError::Protocol(_) => self.broken(Some(conn)),
            _ => self.close(conn),
        }
    }

    /// A session dropped a connection it could not return (abandoned mid-answer, or idle in a
    /// transaction when its client left).
    pub fn close_abandoned(&self) {
        self.slot_freed();
    }

    /// One fewer open connection; wake a queued client so it can open one.
    fn slot_freed(&self) {
        self.open.set(self.open.get().saturating_sub(1));
        self.pass_on_freed_slot();
    }

    /// Wakes the first queued client still waiting to open a connection in a free slot.
    fn pass_on_freed_slot(&self) {
        while let Some(tx) = self.waiters.borrow_mut().pop_front() {
            if tx.send(None).is_ok() {
                return;
            }
        }
    }
}

/// Whether an idle server socket has nothing to read and no EOF pending, without consuming
/// anything. Only for connections with no read in flight (idle in the pool).
fn socket_is_quiet(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) into a one-byte stack buffer that outlives the call, on a socket the
    // pool owns and nobody reads meanwhile; MSG_PEEK consumes nothing, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::addr_of_mut!(byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}
