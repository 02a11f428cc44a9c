//! One client connection: startup, token authentication, then the relay to pooled servers.
//!
//! A session runs as up to three tasks on its core, sharing state through an `Rc`:
//! - the *client reader* (this module's [`serve`]) reads and judges client messages, takes a
//!   server connection from the pool when it needs one, and writes to the server;
//! - the *server reader* runs only while requests are outstanding: it relays the server's
//!   answers, and once the server is idle it parks its read half (and, in transaction mode,
//!   returns the connection to the pool at ReadyForQuery 'I');
//! - the *client writer* is the only one that writes to the client, draining an ordered queue
//!   that both readers append to. That queue is what keeps answers in order when the proxy
//!   adds messages of its own (synthesized ParseComplete, errors), and its high-water mark is
//!   the backpressure that bounds a session's memory whatever the result size.
//!
//! No read is ever dropped while in flight: a reader stops only between reads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::{backend as bmsg, parse_header, sqlstate, ProtocolError};

use crate::backend::{ServerConn, ServerRead, ServerState, ServerWrite};
use crate::cancel::CancelSlot;
use crate::config::PoolMode;
use crate::io::{fill, write_all};
use crate::login::{Fatal, LoggedIn};
use crate::masking::{Action, Masker};
use crate::pool::Pool;
use crate::prepared::Statement;
use crate::runtime::CoreCtx;
use crate::stream::ClientStream;
use crate::tracker::{Delivery, Request, Tracker, Verdict};
use sluice_policy::audit::AuditRecord;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest server message the proxy buffers whole to look inside (ReadyForQuery,
/// ParameterStatus, CommandComplete).
const MAX_INSPECTED_MESSAGE: usize = 64 * 1024;
/// Queued bytes for the client above which the server reader stops reading.
const HIGH_WATER: usize = 256 * 1024;
/// Largest result message (DataRow, CopyData, error) the masker buffers whole to rewrite.
const MAX_MASKED_MESSAGE: usize = 16 << 20;
/// Client messages larger than this are streamed to the server, not buffered (COPY data).
const STREAM_COPY_DATA_ABOVE: usize = 64 * 1024;

type ClientRead = OwnedReadHalf<ClientStream>;
type ClientWrite = OwnedWriteHalf<ClientStream>;

/// A one-waiter wake-up flag for tasks on the same thread.
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            Poll::Ready(())
        } else {
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// The server connection a session holds.
struct Attached {
    state: ServerState,
    /// `None` while the client reader is writing.
    write: Option<ServerWrite>,
    /// The read half, while no server reader runs (the server owes nothing).
    parked: Option<(ServerRead, BytesMut)>,
    /// Raw fd of the server socket, to shut it down when abandoning a busy connection.
    fd: RawFd,
}

struct State {
    tracker: Tracker,
    attached: Option<Attached>,
    /// Bumped on every attach, so a server reader can tell its connection from a later one.
    generation: u64,
    /// The last server message was ReadyForQuery, with this status.
    ready: Option<u8>,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// No more writes to the client: it left, or the session is ending.
    closing: bool,
    /// Client statement name → statement (transaction pooling).
    statements: HashMap<String, Rc<Statement>>,
    last_forwarded_tag: u8,
    /// Session parameters this client wants on every server connection it gets: from its
    /// startup packet, updated when the server reports that the client changed one.
    wanted: Rc<Vec<(String, String)>>,
    /// Session mode: the reset query was sent by `finish`, so the connection is clean once
    /// the server reader has read its answer.
    reset_sent: bool,
    /// Result masking and row limits, when the role's policy has any.
    masker: Option<Masker>,
    /// SQL-level prepared statements (`PREPARE name AS ...`): what `EXECUTE name` runs.
    sql_prepared: HashMap<String, sluice_policy::StatementFacts>,
    /// A statement held for review stopped the batch before it; the client reader asks.
    review_needed: Option<ReviewNeeded>,
    /// The reviewed text may run once (approved).
    review_pass: Option<String>,
    /// The reviewed text fails with this error (denied, expired, unreachable).
    review_outcome: Option<(String, Bytes)>,
    /// Audit records of requests the server is answering, by request tag.
    audits: HashMap<u64, Audit>,
    /// Request tags when the masker does not hand them out (from [`OWN_TAGS`] up).
    next_tag: u64,
    /// Approvers of the statement a review just let through, for its audit record.
    review_approvers: Option<(String, Vec<String>)>,
    /// The key the masking plan of the statement just judged is cached under: its shape
    /// when the verdict is shared across constants, else its text.
    plan_key: Option<String>,
    /// Extended-protocol statements by client name: the text, and the configuration
    /// generation it was judged in (a Bind in a later one judges it again).
    statement_sql: HashMap<String, Parsed>,
    /// Tags of Parse requests in flight, by client statement name: a Parse the server fails
    /// or skips makes the name unusable (see [`Tracker::take_failed_jobs`]).
    parse_tags: HashMap<u64, String>,
    /// The statement just judged was let through by a review approval.
    review_passed: bool,
    /// Portal texts, for audit records (only when auditing).
    portal_sql: HashMap<String, Rc<str>>,
}

impl State {
    /// A request tag of the session's own (the masker hands out the others).
    fn own_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

/// A statement this session parsed in the extended protocol.
struct Parsed {
    sql: Rc<str>,
    /// The configuration generation it was judged in (a Bind in a later one judges again).
    judged_in: u64,
    /// The server connection (attach generation) it was parsed on: the unnamed statement
    /// lives on that connection only.
    server: u64,
    /// Let through by a review approval: one Bind may use it, later ones are judged again.
    reviewed: bool,
    approved_binds: u8,
}

/// Request tags the session allocates itself start here, far above the masker's.
const OWN_TAGS: u64 = 1 << 62;

/// An allowed request's audit record in the making.
struct Audit {
    record: sluice_policy::audit::AuditRecord,
    started: std::time::Instant,
    rows: i64,
    bytes: i64,
}

/// A statement held for review, as the client reader needs it.
struct ReviewNeeded {
    sql: String,
    rule: String,
    message: String,
}

/// Parameters PostgreSQL reports with ParameterStatus that a client may change with SET and
/// expects to keep in transaction pooling (as PgBouncer tracks them).
const TRACKED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

struct Session {
    ctx: Rc<CoreCtx>,
    pool: Rc<Pool>,
    /// The role's statement policy, looked up again when the core runs a new snapshot.
    policy: RefCell<Arc<sluice_policy::Policy>>,
    /// The core's configuration generation `policy` was looked up in.
    policy_generation: Cell<u64>,
    mode: PoolMode,
    max_message: usize,
    slot: Arc<CancelSlot>,
    client_fd: RawFd,
    st: RefCell<State>,
    /// Wakes the client writer.
    out_ready: Notify,
    /// Wakes the server reader when the client queue drained below the high-water mark.
    out_space: Notify,
    /// The same for the client reader (each Notify has one waiter).
    out_space_client: Notify,
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
}

pub(crate) async fn relay(
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
        identity,
        pid,
        slot,
        server,
        peer,
    } = login;
    let (read, write) = stream.into_split();
    let expires_at = identity.expires_at;
    let session = Rc::new(Session {
        max_message: ctx.shared.config.limits.max_message_bytes,
        mode: pool.config().mode,
        ctx: ctx.clone(),
        pool,
        policy_generation: Cell::new(ctx.generation()),
        policy: RefCell::new(policy.clone()),
        slot,
        client_fd,
        st: RefCell::new(State {
            wanted: Rc::new(wanted),
            reset_sent: false,
            masker: Masker::new(policy),
            sql_prepared: HashMap::new(),
            review_needed: None,
            review_pass: None,
            review_outcome: None,
            audits: HashMap::new(),
            next_tag: OWN_TAGS,
            review_approvers: None,
            plan_key: None,
            statement_sql: HashMap::new(),
            parse_tags: HashMap::new(),
            review_passed: false,
            portal_sql: HashMap::new(),
            tracker: Tracker::new(),
            attached: None,
            generation: 0,
            ready: Some(b'I'),
            out: VecDeque::new(),
            out_bytes: 0,
            closing: false,
            statements: HashMap::new(),
            last_forwarded_tag: 0,
        }),
        out_ready: Notify::default(),
        out_space: Notify::default(),
        out_space_client: Notify::default(),
        peer,
        subject: identity.subject,
        role: role.clone(),
        connection: connection.clone(),
        grant_id: grant_id.clone(),
        token_id,
        audit: ctx.audit_sink(),
        session_id: format!("{}-{pid}", ctx.id),
    });
    if session.audit.is_some() {
        if let Some(m) = session.st.borrow_mut().masker.as_mut() {
            m.record_columns = true;
        }
    }
    if let Some(server) = server {
        session.attach(server);
    }
    // A snapshot that withdraws this session's access (a revoked grant, a removed role or
    // connection) ends it.
    let weak = Rc::downgrade(&session);
    let kill: Rc<dyn Fn(&str)> = Rc::new(move |reason: &str| {
        if let Some(s) = weak.upgrade() {
            s.terminate(reason);
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
    let writer = monoio::spawn(client_writer(session.clone(), write));
    session.clone().client_reader(read, buf).await;
    session.finish().await;
    writer.await;
    ctx.shared.cancel.unregister(pid);
}

impl Session {
    fn push_out(&self, st: &mut State, chunk: Bytes) {
        if st.closing || chunk.is_empty() {
            return;
        }
        st.out_bytes += chunk.len();
        st.out.push_back(chunk);
        self.out_ready.notify();
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
        self.push_out(&mut st, out.freeze());
        st.closing = true;
        self.out_ready.notify();
        self.out_space.notify();
        self.out_space_client.notify();
    }

    fn attach(self: &Rc<Self>, conn: ServerConn) {
        let ServerConn {
            read,
            rbuf,
            write,
            state,
        } = conn;
        let fd = state.fd;
        self.slot.set(Some(state.key));
        self.ctx.metrics.server_checkouts.inc();
        let mut st = self.st.borrow_mut();
        st.generation += 1;
        st.attached = Some(Attached {
            state,
            write: Some(write),
            parked: Some((read, rbuf)),
            fd,
        });
    }

    /// Starts a server reader if the server's read half is parked.
    fn unpark(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        let generation = st.generation;
        if let Some((read, rbuf)) = st.attached.as_mut().and_then(|a| a.parked.take()) {
            drop(st);
            monoio::spawn(self.clone().server_reader(read, rbuf, generation));
        }
    }

    /// Whether the attached server can go back to the pool now.
    fn releasable(&self, st: &State) -> bool {
        st.tracker.is_idle()
            && st.ready == Some(b'I')
            && (self.mode == PoolMode::Transaction || st.closing)
    }

    /// Returns the attached server to the pool if it is parked, writable and idle.
    fn release_if_idle(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        if !self.releasable(&st) {
            return;
        }
        let Some(a) = st.attached.as_mut() else {
            return;
        };
        if a.write.is_none() || a.parked.is_none() {
            return;
        }
        let a = st.attached.take().expect("checked above");
        let st_reset_sent = std::mem::take(&mut st.reset_sent);
        drop(st);
        self.slot.set(None);
        let (read, rbuf) = a.parked.expect("checked above");
        let conn = ServerConn {
            read,
            rbuf,
            write: a.write.expect("checked above"),
            state: a.state,
        };
        if self.mode == PoolMode::Session && !st_reset_sent {
            let pool = self.pool.clone();
            monoio::spawn(async move { pool.release_after_reset(conn).await });
        } else {
            let mut conn = conn;
            if st_reset_sent {
                conn.state.applied.clear();
                conn.state.prepared.clear();
            }
            self.pool.release(conn);
        }
    }

    /// The server connection failed: forget it and end the session with an error.
    fn server_lost(&self, generation: u64, why: &str) {
        let mut st = self.st.borrow_mut();
        if st.generation != generation || st.attached.is_none() {
            return;
        }
        st.attached = None;
        st.tracker.reset();
        let told = st.last_forwarded_tag == bmsg::ERROR_RESPONSE;
        let abandoned = st.closing;
        drop(st);
        self.slot.set(None);
        if abandoned {
            // finish() shut the socket down on purpose.
            self.pool.close_abandoned();
            return;
        }
        self.pool.broken(None);
        tracing::warn!(peer = %self.peer, subject = %self.subject, why, "server connection lost");
        if told {
            let mut st = self.st.borrow_mut();
            st.closing = true;
            self.out_ready.notify();
        } else {
            self.fatal(Fatal::new(
                sqlstate::CONNECTION_FAILURE,
                "server connection lost; the session is closed",
            ));
        }
    }

    /// Reads the client until it leaves or the session ends.
    async fn client_reader(self: Rc<Self>, mut read: ClientRead, mut buf: BytesMut) {
        let mut copy_skip = 0usize;
        loop {
            if self.st.borrow().closing {
                return;
            }
            if buf.is_empty() || (copy_skip == 0 && self.need_more(&buf)) {
                match fill(&mut read, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                continue;
            }
            if self.st.borrow().closing {
                return;
            }
            if copy_skip == 0 && buf[0] == frontend::TERMINATE {
                return;
            }
            // The policy and catalog first: these awaits must not come between attaching a
            // server and processing (the server reader may return an idle server meanwhile).
            self.refresh_policy().await;
            // Answers the gateway gives itself (synthesized ParseComplete, CloseComplete) go
            // to the client queue too: stop reading while the client does not read.
            loop {
                let full = {
                    let st = self.st.borrow();
                    !st.closing && st.out_bytes > HIGH_WATER
                };
                if !full {
                    break;
                }
                self.out_space_client.notified().await;
            }
            if self.st.borrow().closing {
                return;
            }
            // A server for whatever these messages need.
            if self.st.borrow().attached.is_none() {
                match self.pool.acquire().await {
                    Ok(mut conn) => {
                        let wanted = self.st.borrow().wanted.clone();
                        if let Err(e) = conn.apply_params(&wanted).await {
                            tracing::warn!(peer = %self.peer, error = %e, "could not prepare a server connection");
                            self.pool.broken_or_close(conn, &e);
                            self.fatal(Fatal::from(&e));
                            return;
                        }
                        self.attach(conn);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, subject = %self.subject, error = %e, "no server connection for a client");
                        self.fatal(Fatal::from(&e));
                        return;
                    }
                }
            }
            self.unpark();
            let (chunks, terminated) = match self.process_client(&mut buf, &mut copy_skip) {
                Ok(c) => c,
                Err(f) => {
                    self.ctx.metrics.protocol_errors.inc();
                    tracing::info!(peer = %self.peer, error = %f.message, "client protocol error");
                    self.fatal(f);
                    return;
                }
            };
            if !self.write_server(chunks).await || terminated {
                // On a failed write, server_lost() has told the client.
                return;
            }
            let need = self.st.borrow_mut().review_needed.take();
            if let Some(need) = need {
                self.review(need).await;
            }
        }
    }

    /// Whether `buf` lacks a whole message to act on (COPY data large enough is streamed).
    fn need_more(&self, buf: &[u8]) -> bool {
        match parse_header(buf, self.max_message) {
            Ok(Some(h)) => {
                let streamable =
                    h.tag == frontend::COPY_DATA && h.total_len() > STREAM_COPY_DATA_ABOVE;
                !streamable && buf.len() < h.total_len()
            }
            Ok(None) => true,
            Err(_) => false, // let process_client report it
        }
    }

    /// Turns buffered client messages into bytes for the server, recording what answers to
    /// expect. Pass-through messages are split off the read buffer without copying.
    fn process_client(
        self: &Rc<Self>,
        buf: &mut BytesMut,
        copy_skip: &mut usize,
    ) -> Result<(Vec<Bytes>, bool), Fatal> {
        let mut chunks = Vec::new();
        let mut st_guard = self.st.borrow_mut();
        let st = &mut *st_guard;
        let mut synth = BytesMut::new();
        let mut unprepared = Vec::new();
        let mut pos = 0usize;
        let m = &self.ctx.metrics;
        macro_rules! flush {
            () => {
                if pos > 0 {
                    chunks.push(buf.split_to(pos).freeze());
                    #[allow(unused_assignments)]
                    {
                        pos = 0;
                    }
                }
            };
        }
        loop {
            if *copy_skip > 0 {
                let take = (*copy_skip).min(buf.len() - pos);
                pos += take;
                *copy_skip -= take;
                if *copy_skip > 0 {
                    break;
                }
                continue;
            }
            let Some(h) = parse_header(&buf[pos..], self.max_message)? else {
                break;
            };
            let total = h.total_len();
            let available = buf.len() - pos;
            if available < total {
                if h.tag == frontend::COPY_DATA && total > STREAM_COPY_DATA_ABOVE {
                    pos += available;
                    *copy_skip = total - available;
                }
                break;
            }
            let frame = &buf[pos..pos + total];
            let msg = frontend::parse(frame)?;
            let tag = msg.tag();
            let mut rewritten: Option<BytesMut> = None;
            let txn = self.mode == PoolMode::Transaction;
            let mut parse_denial = match msg {
                FrontendMessage::Parse { name, .. } if name.starts_with("sluice") => {
                    Some(self.denial(
                        "builtin/reserved-name",
                        "statement names starting with \"sluice\" are reserved for the gateway",
                    ))
                }
                FrontendMessage::Parse { name, query, .. } => self.judge_statement(st, name, query),
                _ => None,
            };
            let mut query_judged = match msg {
                FrontendMessage::Query { sql } => Some(self.judge_and_plan(st, sql)),
                _ => None,
            };
            // A statement prepared under an older snapshot is judged again when bound, so
            // a new policy reaches statements prepared before it.
            let generation = self.policy_generation.get();
            let mut bind_denial = None;
            if let FrontendMessage::Bind { statement, .. } = msg {
                // Only statements this session parsed (and, unnamed, on this server) may be
                // bound: a pooled server may hold other clients' statements, under names a
                // client could guess.
                let attached = st.generation;
                let usable = st.statement_sql.get(statement).filter(|p| {
                    !(statement.is_empty() && self.mode == PoolMode::Transaction)
                        || p.server == attached
                });
                let stale = match usable {
                    None => {
                        bind_denial = Some(no_such_statement(statement));
                        None
                    }
                    Some(p) if p.reviewed && p.approved_binds == 0 => Some(p.sql.clone()),
                    Some(p) if p.judged_in != generation => Some(p.sql.clone()),
                    Some(_) => None,
                };
                if let Some(text) = stale {
                    bind_denial = self.judge_statement(st, statement, &text);
                }
            }
            if st.review_needed.is_some() {
                // Held for review: the client reader asks, then this message comes again.
                break;
            }
            let reviewed = std::mem::take(&mut st.review_passed);
            match msg {
                FrontendMessage::Parse { name, query, .. } => {
                    if parse_denial.is_none() {
                        let server = st.generation;
                        st.statement_sql.insert(
                            name.to_owned(),
                            Parsed {
                                sql: Rc::from(query),
                                judged_in: generation,
                                server,
                                reviewed,
                                approved_binds: u8::from(reviewed),
                            },
                        );
                    } else {
                        st.statement_sql.remove(name);
                    }
                }
                FrontendMessage::Bind {
                    portal, statement, ..
                } if bind_denial.is_none() => {
                    if let Some(p) = st.statement_sql.get_mut(statement) {
                        p.judged_in = generation;
                        if p.reviewed {
                            // This Bind uses the approval (or the one just given).
                            p.approved_binds = p.approved_binds.saturating_sub(1);
                            if reviewed {
                                p.approved_binds = 0;
                            }
                        }
                        if self.audit.is_some() {
                            let text = p.sql.clone();
                            st.portal_sql.insert(portal.to_owned(), text);
                        }
                    }
                }
                _ => {}
            }
            match msg {
                FrontendMessage::Query { sql } => {
                    m.queries.inc();
                    let judged = query_judged.take().expect("judged above");
                    match judged {
                        Ok(plan) => {
                            st.tracker.push(
                                Request::Simple,
                                Delivery::Forward,
                                None,
                                &mut synth,
                                &mut unprepared,
                            );
                            let mut tag = 0;
                            if let (Some(plan), Some(mk)) = (plan, st.masker.as_mut()) {
                                tag = mk.job_simple(plan);
                            }
                            self.audit_request(st, tag, sql);
                        }
                        Err(error) => {
                            st.tracker.push_replacing(Request::Simple, error);
                            rewritten = Some(stand_in_query());
                        }
                    }
                }
                FrontendMessage::FunctionCall(_) => {
                    // Fastpath calls name a function by OID, out of the policy's sight.
                    let error = self.denial(
                        "builtin/function-call",
                        "function calls by OID (fastpath) are not allowed through the gateway",
                    );
                    st.tracker.push_replacing(Request::Simple, error);
                    rewritten = Some(stand_in_query());
                }
                FrontendMessage::Parse { name, .. } if parse_denial.is_some() => {
                    let error = parse_denial.take().expect("checked by the guard");
                    if txn {
                        st.statements.remove(name);
                    }
                    let mut b = BytesMut::with_capacity(64);
                    encode::parse(&mut b, "", DENIED_STAND_IN, &[0, 0]);
                    st.tracker.push_replacing(Request::Parse, error);
                    rewritten = Some(b);
                }
                FrontendMessage::Sync => {
                    m.queries.inc();
                    st.tracker.push(
                        Request::Sync,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                }
                FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                } if txn && !name.is_empty() => {
                    let stmt = self.ctx.intern_statement(query, param_types);
                    st.statements.insert(name.to_owned(), stmt.clone());
                    let server = st.attached.as_mut().expect("attached before processing");
                    if server.state.prepared.contains(&stmt.id) {
                        st.tracker.push(
                            Request::Parse,
                            Delivery::Synthesize,
                            Some(stmt.id),
                            &mut synth,
                            &mut unprepared,
                        );
                        rewritten = Some(BytesMut::new());
                    } else {
                        server.state.prepared.insert(stmt.id);
                        let mut b = BytesMut::with_capacity(total + 16);
                        encode::parse(&mut b, &stmt.server_name, query, param_types);
                        st.tracker.push(
                            Request::Parse,
                            Delivery::Forward,
                            Some(stmt.id),
                            &mut synth,
                            &mut unprepared,
                        );
                        self.tag_parse(st, name);
                        rewritten = Some(b);
                    }
                }
                FrontendMessage::Parse { name, .. } => {
                    st.tracker.push(
                        Request::Parse,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    self.tag_parse(st, name);
                }
                FrontendMessage::Bind {
                    portal,
                    statement: _,
                    rest,
                } if bind_denial.is_some() => {
                    // Bound to a statement no server has: the server fails the Bind and
                    // skips to Sync; its error is replaced by the gateway's.
                    let error = bind_denial.take().expect("checked by the guard");
                    let mut b = BytesMut::with_capacity(total + 32);
                    encode::bind_with_statement(&mut b, portal, DENIED_STATEMENT, rest);
                    st.tracker.push_replacing(Request::Bind, error);
                    rewritten = Some(b);
                }
                FrontendMessage::Bind {
                    portal,
                    statement,
                    rest,
                } => {
                    if txn && !statement.is_empty() {
                        if let Some(stmt) = st.statements.get(statement).cloned() {
                            let mut b = BytesMut::with_capacity(total + 64);
                            self.ensure_prepared(st, &stmt, &mut b, &mut synth, &mut unprepared);
                            encode::bind_with_statement(&mut b, portal, &stmt.server_name, rest);
                            rewritten = Some(b);
                        }
                    }
                    st.tracker.push(
                        Request::Bind,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    if let Some(mk) = st.masker.as_mut() {
                        mk.bound(portal, statement);
                    }
                    // A DataRow carries no description: unless the client describes the
                    // portal next itself (libpq does), describe it for the masker (the
                    // client never sees this answer).
                    let describes_next = st.masker.is_some()
                        && client_describes_portal(&buf[pos + total..], portal, self.max_message);
                    if let (Some(mk), false) = (st.masker.as_mut(), describes_next) {
                        let mut b = rewritten.take().unwrap_or_else(|| BytesMut::from(frame));
                        encode::describe(&mut b, b'P', portal);
                        rewritten = Some(b);
                        st.tracker.push(
                            Request::DescribePortal,
                            Delivery::Swallow,
                            None,
                            &mut synth,
                            &mut unprepared,
                        );
                        st.tracker.tag_last(mk.job_describe(portal));
                    }
                }
                FrontendMessage::Describe { kind, name } => {
                    let request = if kind == b'S' {
                        Request::DescribeStatement
                    } else {
                        Request::DescribePortal
                    };
                    if txn && kind == b'S' && !name.is_empty() {
                        if let Some(stmt) = st.statements.get(name).cloned() {
                            let mut b = BytesMut::with_capacity(64);
                            self.ensure_prepared(st, &stmt, &mut b, &mut synth, &mut unprepared);
                            encode::describe(&mut b, b'S', &stmt.server_name);
                            rewritten = Some(b);
                        }
                    }
                    st.tracker.push(
                        request,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    if let (b'P', Some(mk)) = (kind, st.masker.as_mut()) {
                        st.tracker.tag_last(mk.job_describe(name));
                    }
                }
                FrontendMessage::Close { kind, name }
                    if txn && kind == b'S' && !name.is_empty() =>
                {
                    // The server keeps the statement for other clients; the client's name goes.
                    st.statements.remove(name);
                    forget_statement(st, name);
                    st.tracker.push(
                        Request::Close,
                        Delivery::Synthesize,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    rewritten = Some(BytesMut::new());
                }
                FrontendMessage::Close { kind, name } => {
                    if kind == b'S' {
                        forget_statement(st, name);
                    }
                    st.tracker.push(
                        Request::Close,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                }
                FrontendMessage::Execute { portal, .. } => {
                    st.tracker.push(
                        Request::Execute,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    let tag = st.masker.as_mut().map_or(0, |mk| mk.job_execute(portal));
                    let sql = st.portal_sql.get(portal).cloned();
                    self.audit_request(st, tag, sql.as_deref().unwrap_or(""));
                }
                FrontendMessage::Flush | FrontendMessage::CopyData(_) => {}
                FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                    st.tracker.push(
                        Request::CopyEnd,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                }
                FrontendMessage::Terminate => {
                    // Not forwarded: the server connection stays open for the pool.
                    rewritten = Some(BytesMut::new());
                }
                FrontendMessage::Password(_) => {
                    return Err(Fatal::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected password message after authentication",
                    ));
                }
                FrontendMessage::Unknown { tag, .. } => {
                    return Err(Fatal::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {}", tag.escape_ascii()),
                    ));
                }
            }
            // Anything that reaches the server (but Flush, which it never answers) means the
            // server is no longer known to be idle at ReadyForQuery.
            let forwarded = rewritten.as_ref().is_none_or(|b| !b.is_empty());
            if forwarded && tag != frontend::FLUSH && tag != frontend::TERMINATE {
                st.ready = None;
            }
            if let Some(state) = st.attached.as_mut() {
                for id in unprepared.drain(..) {
                    state.state.prepared.remove(&id);
                }
            }
            m.client_bytes.add(total as u64);
            match rewritten {
                None => pos += total,
                Some(b) => {
                    flush!();
                    buf.advance(total);
                    if !b.is_empty() {
                        chunks.push(b.freeze());
                    }
                }
            }
            if !synth.is_empty() {
                let s = synth.split().freeze();
                self.push_out(st, s);
            }
            if tag == frontend::TERMINATE {
                flush!();
                return Ok((chunks, true));
            }
        }
        flush!();
        Ok((chunks, false))
    }

    /// Makes sure the attached server has `stmt` prepared, injecting a Parse whose answer
    /// the client never sees.
    fn ensure_prepared(
        &self,
        st: &mut State,
        stmt: &Statement,
        out: &mut BytesMut,
        synth: &mut BytesMut,
        unprepared: &mut Vec<u64>,
    ) {
        let server = st.attached.as_mut().expect("attached before processing");
        if server.state.prepared.insert(stmt.id) {
            encode::parse(out, &stmt.server_name, &stmt.query, &stmt.param_types);
            st.tracker.push(
                Request::Parse,
                Delivery::Swallow,
                Some(stmt.id),
                synth,
                unprepared,
            );
        }
    }

    /// Writes to the attached server. Returns false when the session is over.
    async fn write_server(self: &Rc<Self>, chunks: Vec<Bytes>) -> bool {
        for chunk in chunks {
            let (generation, write) = {
                let mut st = self.st.borrow_mut();
                let generation = st.generation;
                match st.attached.as_mut().and_then(|a| a.write.take()) {
                    Some(w) => (generation, w),
                    None => return false,
                }
            };
            if !self.write_taken(generation, write, chunk).await {
                return false;
            }
        }
        self.release_if_idle();
        !self.st.borrow().closing
    }

    /// Writes `chunk` with the write half taken out of the attached server, puts the half
    /// back (unless the server changed meanwhile), and reports a failed write as a lost
    /// server. Returns whether the write succeeded.
    async fn write_taken(&self, generation: u64, mut write: ServerWrite, chunk: Bytes) -> bool {
        let result = write_all(&mut write, chunk).await;
        {
            let mut st = self.st.borrow_mut();
            if st.generation == generation {
                if let Some(a) = st.attached.as_mut() {
                    a.write = Some(write);
                }
            }
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                self.server_lost(generation, &format!("write failed: {e}"));
                false
            }
        }
    }

    /// Relays the server's answers until it owes nothing more, then parks (or releases).
    async fn server_reader(
        self: Rc<Self>,
        mut read: ServerRead,
        mut buf: BytesMut,
        generation: u64,
    ) {
        let mut skip = 0usize;
        let mut skip_forward = true;
        loop {
            if let Err(e) = self.process_server(&mut buf, &mut skip, &mut skip_forward, generation)
            {
                self.server_lost(generation, &format!("protocol error: {e}"));
                return;
            }
            {
                let mut st = self.st.borrow_mut();
                if st.generation != generation || st.attached.is_none() {
                    return;
                }
                // Session mode keeps reading an idle server while its client is there, so
                // notifications and server-initiated messages reach the client at once.
                let may_park = self.mode == PoolMode::Transaction || st.closing;
                if may_park
                    && skip == 0
                    && buf.is_empty()
                    && st.tracker.is_idle()
                    && st.ready.is_some()
                {
                    let a = st.attached.as_mut().expect("checked above");
                    a.parked = Some((read, buf));
                    drop(st);
                    self.release_if_idle();
                    self.finish_if_closing();
                    return;
                }
            }
            loop {
                let full = {
                    let st = self.st.borrow();
                    !st.closing && st.out_bytes > HIGH_WATER
                };
                if !full {
                    break;
                }
                self.out_space.notified().await;
            }
            match fill(&mut read, &mut buf).await {
                Ok(0) => {
                    self.server_lost(generation, "server closed the connection");
                    return;
                }
                Err(e) => {
                    self.server_lost(generation, &format!("read failed: {e}"));
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// Walks the server bytes in `buf`: forwards runs of messages as split-off chunks,
    /// inspects the few message types that matter, drops answers to injected requests.
    fn process_server(
        &self,
        buf: &mut BytesMut,
        skip: &mut usize,
        skip_forward: &mut bool,
        generation: u64,
    ) -> Result<(), ProtocolError> {
        let mut st_guard = self.st.borrow_mut();
        let st = &mut *st_guard;
        if st.generation != generation {
            return Ok(());
        }
        let mut synth = BytesMut::new();
        let mut unprepared = Vec::new();
        let mut pos = 0usize;
        let mut bytes = 0u64;
        let max = self.max_message;
        let mut chunks: Vec<Bytes> = Vec::new();
        loop {
            if *skip > 0 {
                let take = (*skip).min(buf.len() - pos);
                if *skip_forward {
                    pos += take;
                } else {
                    if pos > 0 {
                        chunks.push(buf.split_to(pos).freeze());
                        pos = 0;
                    }
                    buf.advance(take);
                }
                *skip -= take;
                if *skip > 0 {
                    break;
                }
                continue;
            }
            let Some(h) = parse_header(&buf[pos..], max)? else {
                break;
            };
            let total = h.total_len();
            let available = buf.len() - pos;
            let inspect = matches!(
                h.tag,
                bmsg::READY_FOR_QUERY | bmsg::PARAMETER_STATUS | bmsg::COMMAND_COMPLETE
            );
            if inspect && total > MAX_INSPECTED_MESSAGE {
                return Err(ProtocolError::MessageTooLarge {
                    tag: h.tag,
                    len: total,
                    max: MAX_INSPECTED_MESSAGE,
                });
            }
            let job = st.tracker.head_job();
            let mut mask = st
                .masker
                .as_ref()
                .is_some_and(|mk| mk.needs_whole(h.tag, job));
            // A message the masker must hold whole is held up to a bound: a larger one is
            // dropped as it streams, and its result fails closed.
            let oversize = mask && total > MAX_MASKED_MESSAGE;
            if oversize {
                if let Some(mk) = st.masker.as_mut() {
                    mk.fail_job(
                        job,
                        format!(
                            "sluice: a {total}-byte result message is larger than the {MAX_MASKED_MESSAGE} bytes the masker holds; result refused"
                        ),
                    );
                }
                mask = false;
            }
            if (inspect || mask) && available < total {
                if buf.capacity() - pos < total {
                    buf.reserve(total - available);
                }
                break;
            }
            let verdict = st.tracker.on_server(h.tag, &mut synth, &mut unprepared);
            st.ready = None;
            if inspect {
                let frame = &buf[pos..pos + total];
                match bmsg::parse(frame)? {
                    bmsg::BackendMessage::ReadyForQuery { status } => st.ready = Some(status),
                    bmsg::BackendMessage::ParameterStatus { name, value } => {
                        // The client changed a parameter (or the server did for it): keep the
                        // new value for the server connections it gets next.
                        let wanted_before = st.wanted.iter().any(|(n, _)| n == name);
                        if wanted_before || TRACKED_PARAMS.contains(&name) {
                            let wanted = Rc::make_mut(&mut st.wanted);
                            match wanted.iter_mut().find(|(n, _)| n == name) {
                                Some(entry) => entry.1 = value.to_owned(),
                                None => wanted.push((name.to_owned(), value.to_owned())),
                            }
                        }
                        if let Some(a) = st.attached.as_mut() {
                            a.state.applied.insert(name.to_owned(), value.to_owned());
                            a.state.reported.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    bmsg::BackendMessage::CommandComplete { tag }
                        if tag == "DISCARD ALL" || tag == "DEALLOCATE ALL" =>
                    {
                        if let Some(a) = st.attached.as_mut() {
                            a.state.prepared.clear();
                        }
                        st.sql_prepared.clear();
                        let names: Vec<String> = st.statement_sql.keys().cloned().collect();
                        for n in names {
                            forget_statement(st, &n);
                        }
                        if let Some(mk) = st.masker.as_mut() {
                            mk.forget_sql_state();
                        }
                    }
                    bmsg::BackendMessage::CommandComplete { tag }
                        if crate::catalog::is_ddl_tag(tag)
                            && st.masker.as_ref().is_some_and(Masker::needs_catalog) =>
                    {
                        crate::catalog::mark_stale(&self.connection);
                    }
                    _ => {}
                }
            }
            if let Some(a) = st.attached.as_mut() {
                for id in unprepared.drain(..) {
                    a.state.prepared.remove(&id);
                }
            }
            let whole = available >= total;
            let present = total.min(available);
            let mut verdict = if oversize { Verdict::Drop } else { verdict };
            if mask && whole {
                let mk = st.masker.as_mut().expect("checked by needs_whole");
                match mk.on_message(job, &mut buf[pos..pos + total]) {
                    Action::Forward => {}
                    Action::Drop if verdict == Verdict::Forward => verdict = Verdict::Drop,
                    Action::Replace(b) if verdict == Verdict::Forward => {
                        verdict = Verdict::Replace(b)
                    }
                    Action::Drop | Action::Replace(_) => {}
                }
                if job != 0
                    && matches!(
                        h.tag,
                        bmsg::COMMAND_COMPLETE
                            | bmsg::EMPTY_QUERY
                            | bmsg::PORTAL_SUSPENDED
                            | bmsg::READY_FOR_QUERY
                            | bmsg::NO_DATA
                            | bmsg::ROW_DESCRIPTION
                            | bmsg::ERROR_RESPONSE
                    )
                    && !st.tracker.has_job(job)
                {
                    mk.finish_job(job);
                }
            }
            if let (Some(status), Some(mk)) = (st.ready, st.masker.as_mut()) {
                if st.tracker.is_idle() {
                    mk.idle(status);
                }
            }
            if st.ready == Some(b'I') && st.tracker.is_idle() {
                // Portals do not outlive a transaction.
                st.portal_sql.clear();
            }
            if job != 0 && !st.audits.is_empty() {
                self.audit_response(st, job, h.tag, &buf[pos..pos + present], whole);
            }
            // After the masker and the audit saw the message: requests that failed or were
            // skipped.
            self.settle_failed(st);
            if job >= OWN_TAGS && !st.parse_tags.is_empty() && !st.tracker.has_job(job) {
                // The Parse was answered (ParseComplete): its name is the server's now.
                st.parse_tags.remove(&job);
            }
            let forward = verdict == Verdict::Forward;
            match verdict {
                Verdict::Forward => {
                    st.last_forwarded_tag = h.tag;
                    bytes += present as u64;
                    pos += present;
                }
                Verdict::Drop | Verdict::Replace(_) => {
                    if pos > 0 {
                        chunks.push(buf.split_to(pos).freeze());
                        pos = 0;
                    }
                    buf.advance(present);
                    if let Verdict::Replace(ours) = verdict {
                        st.last_forwarded_tag = h.tag;
                        chunks.push(ours);
                    }
                }
            }
            if !whole {
                *skip = total - available;
                *skip_forward = forward;
                break;
            }
            if !synth.is_empty() {
                if pos > 0 {
                    chunks.push(buf.split_to(pos).freeze());
                    pos = 0;
                }
                chunks.push(synth.split().freeze());
            }
        }
        if pos > 0 {
            chunks.push(buf.split_to(pos).freeze());
        }
        self.ctx.metrics.server_bytes.add(bytes);
        if let Some(mk) = st.masker.as_ref() {
            self.ctx
                .metrics
                .rows_masked
                .add(mk.counts.rows_masked.take());
            self.ctx
                .metrics
                .results_failed_closed
                .add(mk.counts.failed_closed.take());
        }
        for c in chunks {
            self.push_out(st, c);
        }
        Ok(())
    }

    /// After the client left: once the server is parked, return it or close it.
    fn finish_if_closing(self: &Rc<Self>) {
        let mut st = self.st.borrow_mut();
        if !st.closing {
            return;
        }
        let Some(a) = st.attached.as_ref() else {
            return;
        };
        if a.parked.is_none() || a.write.is_none() {
            return;
        }
        if self.releasable(&st) {
            drop(st);
            self.release_if_idle();
            return;
        }
        // Idle inside a transaction (or failed one): not reusable as it is.
        st.attached = None;
        drop(st);
        self.slot.set(None);
        self.pool.close_abandoned();
    }

    /// The client reader is done: stop writing, and settle the server connection.
    async fn finish(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            st.closing = true;
            st.statements.clear();
        }
        self.out_ready.notify();
        self.out_space.notify();
        let busy_fd = {
            let st = self.st.borrow();
            // A reader that owes nothing parks (and settles the server) as soon as it runs,
            // without reading: e.g. one spawned for messages that then failed validation. Shut
            // its socket down and it would park a dead connection back into the pool.
            let owes_answers = !(st.tracker.is_idle() && st.ready.is_some());
            st.attached
                .as_ref()
                .filter(|a| a.parked.is_none() && owes_answers)
                .map(|a| a.fd)
        };
        if busy_fd.is_none() && self.reset_through_reader().await {
            return;
        }
        match busy_fd {
            None => self.finish_if_closing(),
            Some(fd) => {
                // The server is still answering: cancel the query and stop reading; the
                // connection cannot be trusted back into the pool mid-answer.
                if let Some(key) = self.slot.get() {
                    monoio::spawn(async move {
                        let _ = crate::backend::send_cancel(key).await;
                    });
                }
                shutdown_fd(fd);
            }
        }
    }
}

impl Session {
    /// Session mode, client gone, server idle with its reader still reading: send the reset
    /// query (or an empty one) so the reader gets an answer, swallows it and parks, and the
    /// connection goes back to the pool clean. Returns false if there was nothing to do.
    async fn reset_through_reader(self: &Rc<Self>) -> bool {
        let (generation, write) = {
            let mut st = self.st.borrow_mut();
            let idle = st.tracker.is_idle() && st.ready == Some(b'I');
            let generation = st.generation;
            let Some(a) = st.attached.as_mut().filter(|a| a.parked.is_none()) else {
                return false;
            };
            if self.mode != PoolMode::Session || !idle {
                return false;
            }
            let Some(w) = a.write.take() else {
                return false;
            };
            let mut ignored = (BytesMut::new(), Vec::new());
            st.tracker.push(
                Request::Simple,
                Delivery::Swallow,
                None,
                &mut ignored.0,
                &mut ignored.1,
            );
            st.ready = None;
            st.reset_sent = true;
            (generation, w)
        };
        let mut q = BytesMut::new();
        encode::query(&mut q, &self.pool.config().reset_query);
        self.write_taken(generation, write, q.freeze()).await;
        // The reader parks once it has read the answer, and settles the connection.
        self.finish_if_closing();
        true
    }
}

/// Whether the next whole message in `rest` is a Describe of `portal`.
fn client_describes_portal(rest: &[u8], portal: &str, max: usize) -> bool {
    let Ok(Some(h)) = parse_header(rest, max) else {
        return false;
    };
    if h.tag != frontend::DESCRIBE || rest.len() < h.total_len() {
        return false;
    }
    matches!(
        frontend::parse(&rest[..h.total_len()]),
        Ok(FrontendMessage::Describe { kind: b'P', name }) if name == portal
    )
}

/// A statement name the server does not have (its Parse failed or was skipped, or SQL-level
/// PREPARE/DEALLOCATE reused it): Binds to it are refused and its lineage is unknown.
fn forget_statement(st: &mut State, name: &str) {
    st.statement_sql.remove(name);
    if let Some(mk) = st.masker.as_mut() {
        mk.invalidate_statement(name);
    }
}

/// Whether no literal value in the text can change its verdict: one plain SELECT or INSERT
/// (constants there are values, never names, classes or flags). UPDATE and DELETE are left
/// out on purpose: a constant WHERE (`1 = 1`) is something the policy looks at.
fn literal_independent(analysis: &sluice_policy::Analysis) -> bool {
    match analysis {
        sluice_policy::Analysis::Statements(v) => {
            v.len() == 1 && {
                let f = &v[0];
                matches!(f.tag, "SELECT" | "INSERT")
                    && matches!(f.kind, sluice_policy::Kind::Other)
                    && f.copy.is_none()
                    && !f.role_change
                    && !f.search_path_change
                    && !f.data_modifying_cte
            }
        }
        _ => false,
    }
}

/// What the proxy sends the server in place of a denied statement: text that fails to parse,
/// so the server itself aborts a transaction in progress, skips to Sync in the extended
/// protocol and reports the right transaction status; its error is replaced by the
/// gateway's (see [`Delivery::ReplaceError`]).
const DENIED_STAND_IN: &str = "sluice: statement denied by policy";

/// The statement a denied Bind names instead of the client's: no server has one by this name
/// (the gateway's own are `sluice_<core>_<id>`), so the server fails the Bind.
const DENIED_STATEMENT: &str = "sluice: denied";

/// The error PostgreSQL gives for a Bind to a statement that does not exist (26000).
fn no_such_statement(name: &str) -> Bytes {
    let message = if name.is_empty() {
        "unnamed prepared statement does not exist".to_owned()
    } else {
        format!("prepared statement \"{name}\" does not exist")
    };
    let mut b = BytesMut::new();
    encode::error_response(
        &mut b,
        &ErrorResponse::error(sqlstate::INVALID_SQL_STATEMENT_NAME, &message),
    );
    b.freeze()
}

fn stand_in_query() -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    encode::query(&mut b, DENIED_STAND_IN);
    b
}

impl Session {
    /// At a message boundary: the role's policy from the snapshot the core runs now, and the
    /// backend catalog that masking resolves columns with.
    async fn refresh_policy(&self) {
        let generation = self.ctx.generation();
        if generation != self.policy_generation.get() {
            self.policy_generation.set(generation);
            let policy = self.ctx.policy_for(&self.role);
            *self.policy.borrow_mut() = policy.clone();
            let mut st = self.st.borrow_mut();
            match st.masker.as_mut() {
                Some(m) => m.set_policy(policy),
                None => {
                    st.masker = Masker::new(policy);
                    if let Some(m) = st.masker.as_mut() {
                        m.record_columns = self.audit.is_some();
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
            if let Ok(c) = crate::catalog::current(&self.connection, self.pool.target()).await {
                if let Some(m) = self.st.borrow_mut().masker.as_mut() {
                    m.set_catalog(c);
                }
            }
        }
    }

    /// The policy's verdict on a statement text (cached per core): `None` when allowed, else
    /// the ErrorResponse the client gets. Texts that PREPARE, EXECUTE or DEALLOCATE depend on
    /// the session's prepared statements: judged each time, never cached.
    fn judge(&self, st: &mut State, sql: &str) -> Option<Bytes> {
        let policy = self.policy.borrow().clone();
        let key = policy.cache_key();
        let mut cache = self.ctx.verdicts.borrow_mut();
        // The exact text first: constant texts (extended protocol) never pay for the lexer.
        let mut shape = None;
        st.plan_key = None;
        let cached = match cache.get(key, sql) {
            Some(v) => Some(v.clone()),
            None => {
                shape = crate::shape::shape(sql);
                let v = shape.as_deref().and_then(|s| cache.get(key, s)).cloned();
                if v.is_some() {
                    // Shared across constants: so is the masking plan.
                    st.plan_key = shape.clone();
                }
                v
            }
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let analysis = sluice_policy::analyze(sql);
                let stateful = match &analysis {
                    sluice_policy::Analysis::Statements(v) => v.iter().any(|f| {
                        matches!(
                            f.kind,
                            sluice_policy::Kind::Prepare { .. }
                                | sluice_policy::Kind::Execute { .. }
                                | sluice_policy::Kind::Deallocate { .. }
                        )
                    }),
                    _ => false,
                };
                if stateful {
                    drop(cache);
                    if let sluice_policy::Analysis::Statements(v) = &analysis {
                        if v.iter().any(|f| {
                            matches!(&f.kind, sluice_policy::Kind::Prepare { name } if name.starts_with("sluice"))
                        }) {
                            return Some(self.denial(
                                "builtin/reserved-name",
                                "statement names starting with \"sluice\" are reserved for the gateway",
                            ));
                        }
                    }
                    let verdict = sluice_policy::judge_with(&policy, &analysis, |name| {
                        st.sql_prepared.get(name)
                    });
                    if matches!(verdict, sluice_policy::Verdict::Allow) {
                        self.track_prepared(st, &analysis);
                    }
                    return self.verdict_response(st, sql, verdict);
                }
                let verdict = sluice_policy::judge(&policy, &analysis);
                match shape {
                    // Statements that differ only in constants share the verdict.
                    Some(s) if literal_independent(&analysis) => {
                        cache.insert(key, &s, verdict.clone());
                        st.plan_key = Some(s);
                    }
                    _ => cache.insert(key, sql, verdict.clone()),
                }
                verdict
            }
        };
        drop(cache);
        self.verdict_response(st, sql, verdict)
    }

    /// Follows `PREPARE`/`DEALLOCATE` of an allowed text, so `EXECUTE name` is judged by what
    /// was prepared under that name.
    fn track_prepared(&self, st: &mut State, analysis: &sluice_policy::Analysis) {
        let sluice_policy::Analysis::Statements(v) = analysis else {
            return;
        };
        // SQL-level and protocol-level prepared statements share one namespace on the
        // server: a SQL PREPARE or DEALLOCATE of a name also ends the protocol statement the
        // session knew by that name.
        for f in v {
            match &f.kind {
                sluice_policy::Kind::Prepare { name } => {
                    if st.sql_prepared.contains_key(name) {
                        // The server refuses a duplicate and keeps the old one: EXECUTE of
                        // this name is judged unknown (denied) until DEALLOCATE.
                        st.sql_prepared.remove(name);
                    } else {
                        st.sql_prepared.insert(name.clone(), f.clone());
                    }
                    forget_statement(st, name);
                }
                sluice_policy::Kind::Deallocate { name: Some(name) } => {
                    st.sql_prepared.remove(name);
                    forget_statement(st, name);
                    if let Some(mk) = st.masker.as_mut() {
                        mk.forget_prepared(name);
                    }
                }
                sluice_policy::Kind::Deallocate { name: None } => {
                    st.sql_prepared.clear();
                    let names: Vec<String> = st.statement_sql.keys().cloned().collect();
                    for n in names {
                        forget_statement(st, &n);
                    }
                    if let Some(mk) = st.masker.as_mut() {
                        mk.forget_sql_state();
                    }
                }
                _ => {}
            }
        }
    }

    /// What the client gets for a verdict. A review verdict: the statement runs once if an
    /// approval was just found for this exact text, fails with the decision's error if one
    /// was just reached, and otherwise stops the batch (see [`State::review_needed`]) so the
    /// client reader can ask the control plane and wait without blocking the core.
    fn verdict_response(
        &self,
        st: &mut State,
        sql: &str,
        verdict: sluice_policy::Verdict,
    ) -> Option<Bytes> {
        match verdict {
            sluice_policy::Verdict::Allow => None,
            sluice_policy::Verdict::Deny { rule, message } => {
                self.audit_denied(sql, rule.as_str(), &message);
                Some(self.denial(rule.as_str(), &message))
            }
            sluice_policy::Verdict::Review { rule, message } => {
                if st.review_pass.as_deref() == Some(sql) {
                    st.review_pass = None;
                    st.review_passed = true;
                    return None;
                }
                if let Some((text, error)) = st.review_outcome.take() {
                    if text == sql {
                        self.audit_denied(sql, rule.as_str(), "review did not approve it");
                        return Some(error);
                    }
                }
                if self.ctx.review_client().is_none() {
                    return Some(self.denial(
                        rule.as_str(),
                        &format!(
                            "{message} (needs an approver's review, and this gateway has no control plane to ask: denied)"
                        ),
                    ));
                }
                st.review_needed = Some(ReviewNeeded {
                    sql: sql.to_owned(),
                    rule: rule.as_str().to_owned(),
                    message,
                });
                // A placeholder: the batch stops before this message.
                Some(Bytes::new())
            }
        }
    }

    /// Asks the control plane about a statement held for review, then records the outcome
    /// for the next pass over the same message: a pass, or the error the client gets.
    async fn review(self: &Rc<Self>, need: ReviewNeeded) {
        let Some(client) = self.ctx.review_client() else {
            return;
        };
        let policy = self.policy.borrow().clone();
        let settings = policy.review().clone();
        let identity = self.subject.clone();
        let outcome: Result<Vec<String>, Bytes> = async {
            // An approval given earlier for this exact statement (the resend mode).
            match client
                .consume(&identity, &self.connection, &need.sql)
                .await
            {
                Ok(Some(ticket)) => return Ok(ticket.status.approvers().to_vec()),
                Ok(None) => {}
                Err(e) => return Err(self.review_error(sqlstate::CONNECTION_FAILURE, &format!("sluice: statement needs review and the control plane cannot be asked: {e}"))),
            }
            let ticket = client
                .request(crate::review::ReviewRequest {
                    identity: identity.clone(),
                    connection: self.connection.to_string(),
                    role: self.role.to_string(),
                    statement: need.sql.clone(),
                    rule_id: need.rule.clone(),
                    message: Some(need.message.clone()),
                    node_id: client.node_id().to_owned(),
                    session_id: None,
                    min_approvers: settings.min_approvers,
                    wait: settings.wait,
                    expires_in_ms: u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
                })
                .await
                .map_err(|e| self.review_error(sqlstate::CONNECTION_FAILURE, &format!("sluice: statement needs review and the control plane cannot be asked: {e}")))?;
            self.ctx.metrics.reviews_requested.inc();
            if !settings.wait {
                return Err(self.review_error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    &format!(
                        "sluice: {} — held for review {}; run the same statement again once it is approved",
                        need.message, ticket.id
                    ),
                ));
            }
            let mut notice = BytesMut::new();
            let text = format!(
                "sluice: statement held for review {} ({}); waiting up to {} s for an approver",
                ticket.id,
                need.rule,
                settings.timeout.as_secs()
            );
            encode::notice_response(
                &mut notice,
                &ErrorResponse {
                    severity: "NOTICE",
                    ..ErrorResponse::error("01000", &text)
                },
            );
            {
                let mut st = self.st.borrow_mut();
                self.push_out(&mut st, notice.freeze());
            }
            // A CancelRequest ends the wait as it would a running query (57014); the review
            // stays pending for the approvers.
            self.slot.take_cancel_request();
            let status = {
                use futures::FutureExt as _;
                let mut wait = std::pin::pin!(client.wait(&ticket.id, settings.timeout).fuse());
                let cancelled = async {
                    loop {
                        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
                        if self.slot.take_cancel_request() || self.st.borrow().closing {
                            break;
                        }
                    }
                };
                let mut cancelled = std::pin::pin!(cancelled.fuse());
                futures::select! {
                    s = wait => Some(s),
                    _ = cancelled => None,
                }
            };
            let Some(status) = status else {
                return Err(self.review_error(
                    sqlstate::QUERY_CANCELED,
                    &format!(
                        "canceling statement due to user request (review {} stays pending)",
                        ticket.id
                    ),
                ));
            };
            match status {
                Ok(crate::review::ReviewStatus::Approved { approvers }) => {
                    // Use the approval up (single-use unless it has a window).
                    match client.consume(&identity, &self.connection, &need.sql).await {
                        Ok(Some(_)) => Ok(approvers),
                        _ => Err(self.review_error(
                            sqlstate::QUERY_CANCELED,
                            &format!("sluice: review {} was approved but could not be used", ticket.id),
                        )),
                    }
                }
                Ok(crate::review::ReviewStatus::Denied { by, comment }) => Err(self.review_error(
                    sqlstate::QUERY_CANCELED,
                    &format!(
                        "sluice: review {} was denied by {by}{}",
                        ticket.id,
                        comment.map(|c| format!(": {c}")).unwrap_or_default()
                    ),
                )),
                Ok(other) => Err(self.review_error(
                    sqlstate::QUERY_CANCELED,
                    &format!(
                        "sluice: review {} was not approved in time ({})",
                        ticket.id,
                        other.as_str()
                    ),
                )),
                Err(e) => Err(self.review_error(
                    sqlstate::QUERY_CANCELED,
                    &format!("sluice: waiting for review {} failed: {e}", ticket.id),
                )),
            }
        }
        .await;
        let mut st = self.st.borrow_mut();
        match outcome {
            Ok(approvers) => {
                st.review_approvers = Some((need.sql.clone(), approvers));
                st.review_pass = Some(need.sql);
            }
            Err(e) => st.review_outcome = Some((need.sql, e)),
        }
    }

    /// Tags the Parse just pushed, so that its failure (or its skip after an earlier error)
    /// makes the name unusable; a Parse the server will skip is forgotten at once.
    fn tag_parse(&self, st: &mut State, name: &str) {
        let tag = st.own_tag();
        if st.tracker.tag_last(tag) {
            st.parse_tags.insert(tag, name.to_owned());
        } else {
            forget_statement(st, name);
        }
    }

    /// Settles what the session recorded for requests that failed or were skipped.
    fn settle_failed(&self, st: &mut State) {
        for tag in st.tracker.take_failed_jobs() {
            if let Some(name) = st.parse_tags.remove(&tag) {
                forget_statement(st, &name);
            }
            if let Some(mk) = st.masker.as_mut() {
                mk.finish_job(tag);
            }
            // A request that never ran leaves no record (the failure before it has its own).
            st.audits.remove(&tag);
        }
    }

    /// A record for this session's audit trail.
    fn audit_record(&self, statement: &str, verdict: &str, rule: Option<&str>) -> AuditRecord {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        AuditRecord {
            time_ms,
            identity: self.subject.clone(),
            token_id: Some(self.token_id.to_string()),
            grant_id: self.grant_id.as_deref().map(str::to_owned),
            connection: self.connection.to_string(),
            session_id: Some(self.session_id.clone()),
            statement: statement.to_owned(),
            verdict: verdict.to_owned(),
            rule_id: rule.map(str::to_owned),
            review_id: None,
            approvers: Vec::new(),
            masked_columns: Vec::new(),
            rows: None,
            bytes: None,
            duration_us: None,
            error: None,
        }
    }

    /// Records a denied statement at once.
    fn audit_denied(&self, statement: &str, rule: &str, message: &str) {
        if let Some(sink) = &self.audit {
            let mut r = self.audit_record(statement, "deny", Some(rule));
            r.error = Some(message.to_owned());
            sink.record(r);
        }
    }

    /// Starts the audit record of an allowed request just pushed to the tracker, tagging it
    /// (`tag` is the masker's job, or 0 to take one of the session's own).
    fn audit_request(&self, st: &mut State, mut tag: u64, sql: &str) {
        if tag == 0 {
            if self.audit.is_none() {
                return;
            }
            tag = st.own_tag();
        }
        if !st.tracker.tag_last(tag) || self.audit.is_none() {
            return;
        }
        let mut record = self.audit_record(sql, "allow", None);
        if let Some((text, approvers)) = st.review_approvers.take() {
            if text == sql {
                record.verdict = "review".into();
                record.approvers = approvers;
            }
        }
        st.audits.insert(
            tag,
            Audit {
                record,
                started: std::time::Instant::now(),
                rows: 0,
                bytes: 0,
            },
        );
    }

    /// Follows a server message answering an audited request; ships the record once the
    /// request is answered.
    fn audit_response(&self, st: &mut State, tag: u64, msg_tag: u8, bytes: &[u8], whole: bool) {
        let Some(a) = st.audits.get_mut(&tag) else {
            return;
        };
        a.bytes += bytes.len() as i64;
        match msg_tag {
            bmsg::COMMAND_COMPLETE if whole => {
                if let Ok(bmsg::BackendMessage::CommandComplete { tag: t }) = bmsg::parse(bytes) {
                    if let Some(n) = t.rsplit(' ').next().and_then(|n| n.parse::<i64>().ok()) {
                        a.rows += n;
                    }
                }
            }
            bmsg::ERROR_RESPONSE if whole => {
                if let Ok(bmsg::BackendMessage::ErrorResponse(f)) = bmsg::parse(bytes) {
                    a.record.error.get_or_insert_with(|| {
                        format!(
                            "{}: {}",
                            f.code().unwrap_or("XX000"),
                            f.message().unwrap_or("")
                        )
                    });
                }
            }
            _ => {}
        }
        let done = matches!(
            msg_tag,
            bmsg::COMMAND_COMPLETE
                | bmsg::EMPTY_QUERY
                | bmsg::PORTAL_SUSPENDED
                | bmsg::READY_FOR_QUERY
                | bmsg::ERROR_RESPONSE
        ) && !st.tracker.has_job(tag);
        if done {
            let mut a = st.audits.remove(&tag).expect("present above");
            a.record.rows = Some(a.rows);
            a.record.bytes = Some(a.bytes);
            a.record.duration_us = Some(a.started.elapsed().as_micros() as i64);
            if let Some(mk) = st.masker.as_mut() {
                a.record.masked_columns = mk.masked_columns.drain(..).map(Into::into).collect();
            }
            if let Some(sink) = &self.audit {
                sink.record(a.record);
            }
        }
    }

    fn review_error(&self, code: &'static str, message: &str) -> Bytes {
        tracing::info!(peer = %self.peer, subject = %self.subject, message, "statement not run after review");
        let mut b = BytesMut::new();
        encode::error_response(&mut b, &ErrorResponse::error(code, message));
        b.freeze()
    }

    /// The verdict and, if allowed, the masking plan of a text: `Err` with the client's
    /// ErrorResponse when either denies it.
    fn judge_and_plan(
        &self,
        st: &mut State,
        sql: &str,
    ) -> Result<Option<Rc<sluice_policy::lineage::MaskPlan>>, Bytes> {
        match self.judge(st, sql) {
            Some(denial) => Err(denial),
            None => self.mask_plan(st, sql),
        }
    }

    /// Judges the text of extended-protocol statement `name` (at Parse, or again at Bind) and
    /// records its lineage for the portals bound to it; the denial, if any.
    fn judge_statement(&self, st: &mut State, name: &str, sql: &str) -> Option<Bytes> {
        match self.judge_and_plan(st, sql) {
            Ok(plan) => {
                if let (Some(plan), Some(mk)) = (plan, st.masker.as_mut()) {
                    mk.parsed(name, &plan);
                }
                None
            }
            Err(denial) => Some(denial),
        }
    }

    /// The masking plan of an allowed text: `Ok(None)` when the session masks nothing,
    /// `Err` with the ErrorResponse when the text would let a masked value out.
    fn mask_plan(
        &self,
        st: &mut State,
        sql: &str,
    ) -> Result<Option<Rc<sluice_policy::lineage::MaskPlan>>, Bytes> {
        let Some(m) = st.masker.as_mut() else {
            return Ok(None);
        };
        let key = st.plan_key.take();
        match m.plan(key.as_deref().unwrap_or(sql), sql) {
            Ok(p) => Ok(Some(p)),
            Err((rule, message)) => {
                self.audit_denied(sql, &rule, &message);
                Err(self.denial(&rule, &message))
            }
        }
    }

    /// Counts and logs a denial, and encodes the client's ErrorResponse (42501).
    fn denial(&self, rule: &str, message: &str) -> Bytes {
        self.ctx.metrics.statements_denied.inc();
        tracing::info!(peer = %self.peer, subject = %self.subject, rule, "statement denied");
        let mut b = BytesMut::with_capacity(message.len() + 64);
        encode::error_response(
            &mut b,
            &ErrorResponse {
                hint: Some("the gateway's policy for your role does not allow this statement"),
                ..ErrorResponse::error(sqlstate::INSUFFICIENT_PRIVILEGE, message)
            },
        );
        b.freeze()
    }
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
}

/// Shuts a socket down both ways, so a read in flight on it returns.
fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor we own and have not closed; it only changes the
    // socket's state, and the owning half closes the descriptor later as usual.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The only writer to the client: drains the session's queue in order.
async fn client_writer(s: Rc<Session>, mut write: ClientWrite) {
    loop {
        let next = {
            let mut st = s.st.borrow_mut();
            let n = st.out.len();
            if n == 0 {
                None
            } else if n == 1 || st.out_bytes > 64 * 1024 {
                st.out.pop_front()
            } else {
                // Several small chunks: one write instead of many.
                let mut joined = BytesMut::with_capacity(st.out_bytes);
                for c in st.out.drain(..) {
                    joined.extend_from_slice(&c);
                }
                Some(joined.freeze())
            }
        };
        match next {
            Some(chunk) => {
                let len = chunk.len();
                let failed = write_all(&mut write, chunk).await.is_err();
                let mut st = s.st.borrow_mut();
                st.out_bytes = st.out_bytes.saturating_sub(len);
                if failed {
                    st.closing = true;
                    st.out.clear();
                    st.out_bytes = 0;
                }
                drop(st);
                s.out_space.notify();
                s.out_space_client.notify();
                if failed {
                    shutdown_fd(s.client_fd);
                    return;
                }
            }
            None => {
                if s.st.borrow().closing {
                    shutdown_fd(s.client_fd);
                    return;
                }
                s.out_ready.notified().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_verdicts_are_shared_across_constants() {
        let yes = |sql: &str| literal_independent(&sluice_policy::analyze(sql));
        assert!(yes(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
        ));
        assert!(yes("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);"));
        assert!(!yes(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1;"
        ));
        assert!(!yes("DELETE FROM t WHERE 1 = 1"));
        assert!(!yes("SELECT 1; SELECT 2"));
        assert!(!yes("EXPLAIN ANALYZE SELECT 1"));
        assert!(!yes("COPY t TO STDOUT"));
    }
}
