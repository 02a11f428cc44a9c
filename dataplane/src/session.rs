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
use crate::pool::Pool;
use crate::prepared::Statement;
use crate::runtime::CoreCtx;
use crate::stream::ClientStream;
use crate::tracker::{Delivery, Request, Tracker, Verdict};

/// Largest server message the proxy buffers whole to look inside (ReadyForQuery,
/// ParameterStatus, CommandComplete).
const MAX_INSPECTED_MESSAGE: usize = 64 * 1024;
/// Queued bytes for the client above which the server reader stops reading.
const HIGH_WATER: usize = 256 * 1024;
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
    /// The role's statement policy.
    policy: Arc<sluice_policy::Policy>,
    mode: PoolMode,
    max_message: usize,
    slot: Arc<CancelSlot>,
    client_fd: RawFd,
    st: RefCell<State>,
    /// Wakes the client writer.
    out_ready: Notify,
    /// Wakes the server reader when the client queue drained below the high-water mark.
    out_space: Notify,
    peer: SocketAddr,
    subject: String,
    role: Arc<str>,
    connection: Arc<str>,
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
        wanted,
        identity,
        pid,
        slot,
        server,
        peer,
    } = login;
    let (read, write) = stream.into_split();
    let session = Rc::new(Session {
        max_message: ctx.shared.config.limits.max_message_bytes,
        mode: pool.config().mode,
        ctx: ctx.clone(),
        pool,
        policy,
        slot,
        client_fd,
        st: RefCell::new(State {
            wanted: Rc::new(wanted),
            reset_sent: false,
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
        peer,
        subject: identity.subject,
        role,
        connection,
    });
    if let Some(server) = server {
        session.attach(server);
    }
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

    /// Queues a FATAL error and ends the session.
    fn fatal(&self, f: Fatal) {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let mut st = self.st.borrow_mut();
        self.push_out(&mut st, out.freeze());
        st.closing = true;
        self.out_ready.notify();
        self.out_space.notify();
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
                FrontendMessage::Parse { query, .. } => self.judge(query),
                _ => None,
            };
            match msg {
                FrontendMessage::Query { sql } => {
                    m.queries.inc();
                    match self.judge(sql) {
                        None => st.tracker.push(
                            Request::Simple,
                            Delivery::Forward,
                            None,
                            &mut synth,
                            &mut unprepared,
                        ),
                        Some(error) => {
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
                        rewritten = Some(b);
                    }
                }
                FrontendMessage::Parse { .. } => {
                    st.tracker.push(
                        Request::Parse,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
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
                }
                FrontendMessage::Close { kind, name }
                    if txn && kind == b'S' && !name.is_empty() =>
                {
                    // The server keeps the statement for other clients; the client's name goes.
                    st.statements.remove(name);
                    st.tracker.push(
                        Request::Close,
                        Delivery::Synthesize,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                    rewritten = Some(BytesMut::new());
                }
                FrontendMessage::Close { .. } => {
                    st.tracker.push(
                        Request::Close,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
                }
                FrontendMessage::Execute { .. } => {
                    st.tracker.push(
                        Request::Execute,
                        Delivery::Forward,
                        None,
                        &mut synth,
                        &mut unprepared,
                    );
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
            if inspect && available < total {
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

fn stand_in_query() -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    encode::query(&mut b, DENIED_STAND_IN);
    b
}

impl Session {
    /// The policy's verdict on a statement text (cached per core): `None` when allowed, else
    /// the ErrorResponse the client gets.
    fn judge(&self, sql: &str) -> Option<Bytes> {
        let key = self.policy.cache_key();
        let mut cache = self.ctx.verdicts.borrow_mut();
        // The exact text first: constant texts (extended protocol) never pay for the lexer.
        let mut shape = None;
        let cached = match cache.get(key, sql) {
            Some(v) => Some(v.clone()),
            None => {
                shape = crate::shape::shape(sql);
                shape.as_deref().and_then(|s| cache.get(key, s)).cloned()
            }
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let analysis = sluice_policy::analyze(sql);
                let verdict = sluice_policy::judge(&self.policy, &analysis);
                match shape {
                    // Statements that differ only in constants share the verdict.
                    Some(s) if literal_independent(&analysis) => {
                        cache.insert(key, &s, verdict.clone())
                    }
                    _ => cache.insert(key, sql, verdict.clone()),
                }
                verdict
            }
        };
        drop(cache);
        match verdict {
            sluice_policy::Verdict::Allow => None,
            sluice_policy::Verdict::Deny { rule, message } => {
                Some(self.denial(rule.as_str(), &message))
            }
            sluice_policy::Verdict::Review { rule, message } => Some(self.denial(
                rule.as_str(),
                &format!(
                    "{message} (needs an approver's review, which this gateway does not run yet: denied)"
                ),
            )),
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
