//! One logged-in client's session: its messages relayed to pooled servers, judged, masked
//! and audited on the way.
//!
//! A session runs as up to three tasks on its core ([`relay`]), sharing its [`State`]
//! through an `Rc`:
//! - the *client reader* reads and judges client messages ([`client`]), takes a server
//!   connection from the pool when it needs one ([`attach`]), and writes to the server;
//! - the *server reader* runs only while requests are outstanding: it relays the server's
//!   answers ([`server`]), and once the server is idle it parks its read half (and, in
//!   transaction mode, returns the connection to the pool at ReadyForQuery 'I');
//! - the *client writer* is the only one that writes to the client, draining an ordered queue
//!   that both readers append to. That queue is what keeps answers in order when the proxy
//!   adds messages of its own (synthesized ParseComplete, errors), and its high-water mark is
//!   the backpressure that bounds a session's memory whatever the result size.
//!
//! No read is ever dropped while in flight: a reader stops only between reads.
//!
//! What the policy says about a statement is [`judge`]'s, holding a write to its row limit
//! [`guard`]'s; holding a statement for an
//! approver is [`review`]'s, and the session's audit records are [`audit`]'s. Keeping the
//! server of a transaction-pooled client whose statements left session state on it is
//! [`pin`]'s.

mod attach;
mod audit;
mod client;
mod guard;
mod judge;
mod pin;
mod relay;
mod review;
mod server;
mod text;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use monoio::io::Splitable;
use sluice_auth::token::Identity;
use sluice_pgwire::sqlstate;

use crate::backend::ServerConn;
use crate::cancel::CancelSlot;
use crate::config::PoolMode;
use crate::ctx::{CoreCtx, Ending};
use crate::error::Fatal;
use crate::masking::Masker;
use crate::pool::Pool;
use crate::stream::ClientStream;
use crate::tracker::Tracker;

use attach::ServerSlot;
use audit::Audit;
use client::Statements;
use judge::Judge;
pub(crate) use judge::Verdicts;
use relay::{Outbox, Wakers};
use review::ReviewState;

/// A logged-in client, ready for its session.
pub(crate) struct LoggedIn {
    pub(crate) pool: Rc<Pool>,
    pub(crate) policy: Arc<sluice_policy::Policy>,
    /// The role's name: the session looks its policy up again when a new snapshot arrives.
    pub(crate) role: Arc<str>,
    /// The connection's name.
    pub(crate) connection: Arc<str>,
    pub(crate) wanted: Vec<(String, String)>,
    /// The parameters the client was told at startup (ParameterStatus), by the server's names.
    pub(crate) view: HashMap<String, String>,
    pub(crate) identity: Identity,
    /// The id (`jti`) of the just-in-time grant the client logged in with, if it did: what a
    /// snapshot revokes (see [`CoreCtx::register_session`]).
    pub(crate) grant_id: Option<Arc<str>>,
    /// The token's id: its `jti`, else a fingerprint (never the token itself).
    pub(crate) token_id: Arc<str>,
    pub(crate) pid: i32,
    /// Names this client as a server connection's owner (see [`owner_token`]).
    pub(crate) owner: u64,
    pub(crate) slot: Arc<CancelSlot>,
    /// Session mode: the server connection kept from login.
    pub(crate) server: Option<ServerConn>,
    pub(crate) peer: SocketAddr,
}

/// Request tags the session allocates itself start here, far above the masker's.
const OWN_TAGS: u64 = 1 << 62;

/// What a session's tasks share, each part owned by the module that keeps it.
struct State {
    /// Which server answer belongs to which request.
    tracker: Tracker,
    /// Result masking and row limits, when the role's policy has any.
    masker: Option<Masker>,
    /// The server connection held, and what is known of it.
    server: ServerSlot,
    /// The client queue.
    out: Outbox,
    /// The client's prepared statements and portals.
    stmts: Statements,
    /// The role's policy, and the SQL-level prepared statements it judges `EXECUTE` by.
    judge: Judge,
    /// A statement held for review, and the outcome of the last review.
    review: ReviewState,
    /// The write limited by `max_affected_rows` that the server runs now ([`guard`]).
    guard: Option<guard::Guard>,
    /// Transaction pooling: set once a statement left session state on the server, which the
    /// session then keeps until it ends ([`pin`]).
    pinned: Option<pin::Pinned>,
    /// Audit records of requests the server is answering, by request tag.
    audits: HashMap<u64, Audit>,
    /// Request tags when the masker does not hand them out (from [`OWN_TAGS`] up).
    next_tag: u64,
    /// The encodings the client's statement text is read in.
    encodings: text::Encodings,
}

impl State {
    /// A request tag of the session's own (the masker hands out the others).
    fn own_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

/// One client's session: what its tasks share (through an `Rc`) and what stays fixed for
/// its life.
struct Session {
    ctx: Rc<CoreCtx>,
    pool: Rc<Pool>,
    /// The core's configuration generation the policy was looked up in.
    policy_generation: Cell<u64>,
    mode: PoolMode,
    max_message: usize,
    slot: Arc<CancelSlot>,
    /// The client's pid (BackendKeyData), the gateway's own.
    pid: i32,
    /// Names this client as the owner of the server connections it uses.
    owner: u64,
    client_fd: RawFd,
    st: RefCell<State>,
    wake: Wakers,
    peer: SocketAddr,
    subject: String,
    role: Arc<str>,
    connection: Arc<str>,
    /// The just-in-time grant the client logged in with, if any.
    grant_id: Option<Arc<str>>,
    /// Fingerprint of the token the client logged in with (for audit records).
    token_id: Arc<str>,
    /// Where this core's audit records go, when the data plane ships them.
    audit: Option<crate::audit::AuditSink>,
    /// This session's id in audit records.
    session_id: String,
    /// The client reader waits for the client's next message with nothing of it read: with
    /// no request outstanding, the session is idle.
    awaiting_client: Cell<bool>,
    /// When the session started, and whether the client has sent anything since: a client
    /// that just logged in has its first request on the way, and a drain lets it run.
    started: std::time::Instant,
    sent_anything: Cell<bool>,
    /// A drain's second look at a client that had sent nothing yet is scheduled.
    drain_recheck: Cell<bool>,
}

/// What names a client as a server connection's owner: its gateway pid and cancel secret
/// (the pid alone comes back once its core's serial wraps).
pub(crate) fn owner_token(pid: i32, secret: i32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(secret as u32)
}

/// Runs a logged-in client's session to its end.
pub(crate) async fn run(
    ctx: Rc<CoreCtx>,
    stream: ClientStream,
    buf: BytesMut,
    login: LoggedIn,
    client_fd: RawFd,
) {
    let LoggedIn {
        pool,
        policy,
        role,
        connection,
        grant_id,
        token_id,
        wanted,
        view,
        identity,
        pid,
        owner,
        slot,
        server,
        peer,
    } = login;
    let (read, write) = stream.into_split();
    let expires_at = identity.expires_at;
    let audit = ctx.audit_sink();
    let mut masker = Masker::new(policy.clone(), &ctx.shared.masking_key);
    let encodings = text::Encodings::from_view(&view);
    if let Some(m) = masker.as_mut() {
        m.record_columns = audit.is_some();
        m.set_client_utf8(encodings.client_is_utf8());
    }
    let session = Rc::new(Session {
        max_message: ctx.shared.config.limits.max_message_bytes,
        mode: pool.config().mode,
        ctx: ctx.clone(),
        pool,
        policy_generation: Cell::new(ctx.generation()),
        slot,
        pid,
        owner,
        client_fd,
        st: RefCell::new(State {
            tracker: Tracker::new(),
            masker,
            server: ServerSlot::new(wanted, view),
            out: Outbox::default(),
            stmts: Statements::default(),
            judge: Judge::new(policy),
            review: ReviewState::default(),
            guard: None,
            pinned: None,
            audits: HashMap::new(),
            next_tag: OWN_TAGS,
            encodings,
        }),
        wake: Wakers::default(),
        peer,
        subject: identity.subject,
        role: role.clone(),
        connection: connection.clone(),
        grant_id: grant_id.clone(),
        token_id,
        audit,
        session_id: format!("{}-{pid}", ctx.id),
        awaiting_client: Cell::new(false),
        started: std::time::Instant::now(),
        sent_anything: Cell::new(false),
        drain_recheck: Cell::new(false),
    });
    if let Some(server) = server {
        session.attach(server);
    }
    // A snapshot that withdraws this session's access (a revoked grant, a removed role or
    // connection) ends it.
    let weak = Rc::downgrade(&session);
    // So does the data plane's drain, at the session's next idle point.
    let kill: Rc<dyn Fn(Ending<'_>)> = Rc::new(move |ending: Ending<'_>| {
        if let Some(s) = weak.upgrade() {
            s.end(ending);
        }
    });
    // A just-in-time grant ends with its expiry, open sessions included.
    if let (Some(_), Some(exp)) = (&grant_id, expires_at) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let weak = Rc::downgrade(&session);
        monoio::spawn(async move {
            monoio::time::sleep(std::time::Duration::from_secs(exp.saturating_sub(now))).await;
            if let Some(s) = weak.upgrade() {
                s.terminate("the grant has expired");
            }
        });
    }
    let _registration = ctx.register_session(grant_id, role, connection, Rc::downgrade(&kill));
    let writer = monoio::spawn(relay::client_writer(session.clone(), write));
    session.clone().client_reader(read, buf).await;
    session.finish().await;
    writer.await;
    ctx.shared.cancel.unregister(pid);
}

/// How long a draining gateway waits for the first request of a client that has just
/// logged in (it most likely sent it already) before it closes the session as idle.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a draining gateway tells the clients it closes.
const DRAINED: &str = "the gateway is shutting down";
/// What it tells those still busy when its drain timeout ran out.
const DRAIN_EXPIRED: &str =
    "the gateway is shutting down and its drain timeout ran out before the session was idle";

impl Session {
    /// Asked to end from outside (see [`Ending`]).
    fn end(self: &Rc<Self>, ending: Ending<'_>) {
        match ending {
            Ending::Withdrawn(reason) => self.terminate(reason),
            Ending::Drain => self.close_if_drained(),
            Ending::DrainExpired => self.terminate(DRAIN_EXPIRED),
        }
    }

    /// Whether the session is idle: the client reader waits for a message, no request is
    /// outstanding, and the server (if one is held) is outside a transaction.
    fn is_idle(&self) -> bool {
        let st = self.st.borrow();
        self.awaiting_client.get()
            && !st.out.closing
            && st.tracker.is_idle()
            && st.server.ready == Some(b'I')
    }

    /// While the data plane drains: ends the session if it is idle (its transaction, if it
    /// had one, is over). Called when the drain starts and at each idle point after. A
    /// client that has sent nothing since it logged in is given [`FIRST_REQUEST_GRACE`]
    /// for its first request (then looked at again).
    fn close_if_drained(self: &Rc<Self>) {
        if !self.ctx.shared.draining() || !self.is_idle() {
            return;
        }
        let waited = self.started.elapsed();
        if !self.sent_anything.get()
            && waited < FIRST_REQUEST_GRACE
            && !self.ctx.shared.drain_expired()
        {
            if !self.drain_recheck.replace(true) {
                let weak = Rc::downgrade(self);
                let left = FIRST_REQUEST_GRACE - waited;
                monoio::spawn(async move {
                    monoio::time::sleep(left).await;
                    if let Some(s) = weak.upgrade() {
                        s.close_if_drained();
                    }
                });
            }
            return;
        }
        self.terminate(if self.ctx.shared.drain_expired() {
            DRAIN_EXPIRED
        } else {
            DRAINED
        });
    }

    /// Ends the session from outside its tasks (its access was withdrawn): a FATAL error to
    /// the client, then the client socket's read side shut so the client reader stops.
    fn terminate(&self, reason: &str) {
        tracing::info!(peer = %self.peer, subject = %self.subject, reason, "closing session");
        self.fatal(Fatal::new(
            sqlstate::ADMIN_SHUTDOWN,
            format!("terminating connection: {reason}"),
        ));
        // SAFETY: shutdown(2) on the client socket this session owns and has not closed.
        unsafe {
            libc::shutdown(self.client_fd, libc::SHUT_RD);
        }
    }

    /// Queues a FATAL error and ends the session.
    fn fatal(&self, f: Fatal) {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let mut st = self.st.borrow_mut();
        self.push_out(&mut st.out, out.freeze());
        st.out.closing = true;
        self.wake.all();
    }

    /// At a message boundary: the role's policy from the snapshot the core runs now, and the
    /// backend catalog that masking resolves columns with.
    async fn refresh_policy(&self) {
        let generation = self.ctx.generation();
        if generation != self.policy_generation.get() {
            self.policy_generation.set(generation);
            let policy = self.ctx.policy_for(&self.role);
            let mut st = self.st.borrow_mut();
            st.judge.set_policy(policy.clone());
            let key = &self.ctx.shared.masking_key;
            match st.masker.as_mut() {
                Some(m) => m.set_policy(policy, key),
                None => {
                    st.masker = Masker::new(policy, key);
                    let utf8 = st.encodings.client_is_utf8();
                    if let Some(m) = st.masker.as_mut() {
                        m.record_columns = self.audit.is_some();
                        m.set_client_utf8(utf8);
                    }
                }
            }
        }
        let needs_catalog = self
            .st
            .borrow()
            .masker
            .as_ref()
            .is_some_and(Masker::needs_catalog);
        if needs_catalog {
            // On failure the masker keeps what it had; without any catalog, masked
            // statements are denied.
            let catalog = self
                .ctx
                .catalogs
                .current(&self.connection, self.pool.target())
                .await;
            if let Ok(c) = catalog {
                if let Some(m) = self.st.borrow_mut().masker.as_mut() {
                    m.set_catalog(c);
                }
            }
        }
    }
}

/// Splits the run of messages before `pos` off `buf` as one chunk (bytes that go on as they
/// came, without copying).
fn split_run(buf: &mut BytesMut, pos: &mut usize, chunks: &mut Vec<Bytes>) {
    if *pos > 0 {
        chunks.push(buf.split_to(*pos).freeze());
        *pos = 0;
    }
}
