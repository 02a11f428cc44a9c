//! Client messages on their way to the server: one handler per message kind, each judging
//! what needs judging, recording the answers to expect, and saying what the server gets.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use sluice_pgwire::encode;
use sluice_pgwire::frontend::{self, FrontendMessage};
use sluice_pgwire::{parse_header, sqlstate};

use super::judge::{no_such_statement, stand_in_query, DENIED_STAND_IN, DENIED_STATEMENT};
use super::text::{self, Text};
use super::{split_run, Session, State};
use crate::config::PoolMode;
use crate::error::Fatal;
use crate::prepared::Statement;
use crate::tracker::{Delivery, Request, Tracker};

/// Client messages larger than this are streamed to the server, not buffered (COPY data).
const STREAM_COPY_DATA_ABOVE: usize = 64 * 1024;

/// The client's statements and portals, as the session follows them.
#[derive(Default)]
pub(super) struct Statements {
    /// Client statement name → the core's statement (transaction pooling).
    pub(super) pooled: HashMap<String, Rc<Statement>>,
    /// Extended-protocol statements by client name: the text, and the configuration
    /// generation it was judged in (a Bind in a later one judges it again).
    parsed: HashMap<String, Parsed>,
    /// Tags of Parse requests in flight, by client statement name: a Parse the server fails
    /// or skips makes the name unusable (see [`Tracker::take_failed_jobs`]).
    pub(super) parse_tags: HashMap<u64, String>,
    /// Portal texts, for audit records (only when auditing).
    pub(super) portal_sql: HashMap<String, Rc<str>>,
    /// Portals whose writes are limited by `max_affected_rows`: the limit, and the text.
    pub(super) portal_limits: HashMap<String, (u64, Rc<str>)>,
}

/// A statement this session parsed in the extended protocol.
struct Parsed {
    /// Its text as judged (decoded from the client's encoding at Parse).
    sql: Rc<str>,
    /// Why the text could not be decoded, when it could not (judged as unparsed again).
    undecodable: Option<Rc<str>>,
    /// The configuration generation it was judged in (a Bind in a later one judges again).
    judged_in: u64,
    /// The server connection (attach generation) it was parsed on: the unnamed statement
    /// lives on that connection only.
    server: u64,
    /// Transaction pooling, unnamed statement: its Parse's text as sent and raw parameter
    /// types, so that a Bind or Describe after a Sync, on another server connection, can
    /// parse it there again first (pg8000 parses and describes in one round trip, binds in
    /// the next).
    reparse: Option<Reparse>,
    /// Let through by a review approval: one Bind may use it, later ones are judged again.
    reviewed: bool,
    approved_binds: u8,
    /// The most rows it may affect (`max_affected_rows`), when it is a counted write.
    limit: Option<u64>,
}

/// The unnamed statement's Parse as the client sent it.
struct Reparse {
    query: Box<[u8]>,
    param_types: Box<[u8]>,
    /// The client encoding it was read in.
    read_in: crate::client_encoding::ClientEncoding,
}

impl Parsed {
    /// The text to judge again at Bind.
    fn text(&self) -> Text<'static> {
        match &self.undecodable {
            None => Text::Decoded(std::borrow::Cow::Owned(self.sql.to_string())),
            Some(why) => Text::undecodable(&self.sql, why),
        }
    }
}

impl State {
    /// The server parsed this core's statement `id`: a Parse of it needs no server from now on.
    pub(super) fn statement_parsed(&self, id: u64) {
        if let Some(s) = self.stmts.pooled.values().find(|s| s.id == id) {
            s.parsed.set(true);
        }
    }

    /// A statement name the server does not have (its Parse failed or was skipped, or
    /// SQL-level PREPARE/DEALLOCATE reused it): Binds to it are refused and its lineage is
    /// unknown.
    pub(super) fn forget_statement(&mut self, name: &str) {
        self.stmts.parsed.remove(name);
        if let Some(mk) = self.masker.as_mut() {
            mk.invalidate_statement(name);
        }
    }

    /// Every statement name is gone (DISCARD ALL, DEALLOCATE ALL).
    pub(super) fn forget_all_statements(&mut self) {
        let names: Vec<String> = self.stmts.parsed.keys().cloned().collect();
        for n in names {
            self.forget_statement(&n);
        }
        if let Some(mk) = self.masker.as_mut() {
            mk.forget_sql_state();
        }
    }
}

/// What the server gets for one client message.
enum Send {
    /// The message as the client sent it.
    AsIs,
    /// These bytes instead (nothing at all when empty).
    Instead(BytesMut),
}

/// What one pass over the buffered client messages produces besides bytes for the server.
#[derive(Default)]
struct Pass {
    /// Answers the gateway gives itself, for the client queue.
    synth: BytesMut,
    /// Statements the attached server turned out not to have.
    unprepared: Vec<u64>,
}

impl Pass {
    /// Records a request the server will answer (or the gateway answers for it).
    fn push(
        &mut self,
        tracker: &mut Tracker,
        request: Request,
        delivery: Delivery,
        id: Option<u64>,
    ) {
        tracker.push(request, delivery, id, &mut self.synth, &mut self.unprepared);
    }
}

impl Session {
    /// Whether `buf` lacks a whole message to act on (COPY data large enough is streamed).
    pub(super) fn need_more(&self, buf: &[u8]) -> bool {
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

    /// Transaction pooling with no server held: whether the gateway answers every whole
    /// message in `buf` itself (Parse of a named statement one of this core's servers has
    /// parsed and the policy allows by its cached verdict, Close of a named statement, Flush,
    /// Sync), so that the client does not wait for a server. A client that prepares its
    /// statements with blocking calls (libpq's `PQprepare`, as pgbench `-M prepared` does)
    /// while other clients on its thread hold every server in open transactions would
    /// otherwise wait for servers that thread never lets go. Masking sessions always take a
    /// server: their Parse needs a masking plan.
    pub(super) fn answers_without_server(&self, buf: &[u8], copy_skip: usize) -> bool {
        if self.mode != PoolMode::Transaction || copy_skip > 0 {
            return false;
        }
        let st = self.st.borrow();
        if st.server.attached.is_some() || !st.tracker.is_settled() || st.masker.is_some() {
            return false;
        }
        let verdicts = self.ctx.verdicts.borrow();
        let mut pos = 0;
        let mut any = false;
        while let Ok(Some(h)) = parse_header(&buf[pos..], self.max_message) {
            let total = h.total_len();
            if buf.len() - pos < total {
                break;
            }
            let answerable = match frontend::parse(&buf[pos..pos + total]) {
                Ok(FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                }) => {
                    !name.is_empty()
                        && !name.starts_with("sluice")
                        && self
                            .ctx
                            .statement_parsed(query, st.encodings.client(), param_types)
                        && match text::decode(&st, query) {
                            Text::Decoded(sql) => st.judge.allows_cached(&verdicts, &sql),
                            Text::Undecodable { .. } => false,
                        }
                }
                Ok(FrontendMessage::Close { kind: b'S', name }) => !name.is_empty(),
                Ok(FrontendMessage::Sync | FrontendMessage::Flush) => true,
                _ => false,
            };
            if !answerable {
                return false;
            }
            any = true;
            pos += total;
        }
        any
    }

    /// Turns buffered client messages into bytes for the server, recording what answers to
    /// expect. Pass-through messages are split off the read buffer without copying. Returns
    /// the bytes and whether the client terminated.
    pub(super) fn process_client(
        self: &Rc<Self>,
        buf: &mut BytesMut,
        copy_skip: &mut usize,
    ) -> Result<(Vec<Bytes>, bool), Fatal> {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let mut pass = Pass::default();
        let mut chunks = Vec::new();
        let mut pos = 0usize;
        let mut terminated = false;
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
            let (frame, rest) = buf[pos..].split_at(total);
            let msg = frontend::parse(frame)?;
            let tag = msg.tag();
            let Some(send) = self.on_message(st, &mut pass, msg, frame, rest)? else {
                // Held for review: the client reader asks, then this message comes again.
                break;
            };
            // Anything that reaches the server (but Flush, which it never answers) means the
            // server is no longer known to be idle at ReadyForQuery.
            let forwarded = !matches!(&send, Send::Instead(b) if b.is_empty());
            if forwarded && tag != frontend::FLUSH && tag != frontend::TERMINATE {
                st.server.ready = None;
            }
            st.server.unprepared(&mut pass.unprepared);
            self.ctx.metrics.client_bytes.add(total as u64);
            match send {
                Send::AsIs => pos += total,
                Send::Instead(b) => {
                    split_run(buf, &mut pos, &mut chunks);
                    buf.advance(total);
                    if !b.is_empty() {
                        chunks.push(b.freeze());
                    }
                }
            }
            if !pass.synth.is_empty() {
                let s = pass.synth.split().freeze();
                self.push_out(&mut st.out, s);
            }
            if tag == frontend::TERMINATE {
                terminated = true;
                break;
            }
            if st.guard.as_ref().is_some_and(super::guard::Guard::waiting) {
                // The rest waits for the guarded write's count.
                break;
            }
        }
        split_run(buf, &mut pos, &mut chunks);
        Ok((chunks, terminated))
    }

    /// One whole client message (`frame`, followed by `rest` in the buffer): what the server
    /// gets, or `None` when it is held for review.
    fn on_message(
        &self,
        st: &mut State,
        pass: &mut Pass,
        msg: FrontendMessage<'_>,
        frame: &[u8],
        rest: &[u8],
    ) -> Result<Option<Send>, Fatal> {
        Ok(match msg {
            FrontendMessage::Query { sql } => self.on_query(st, pass, sql),
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => self.on_parse(st, pass, name, query, param_types),
            FrontendMessage::Bind {
                portal,
                statement,
                rest: params,
            } => self.on_bind(
                st,
                pass,
                Bind {
                    portal,
                    statement,
                    params,
                    frame,
                },
                rest,
            ),
            FrontendMessage::Describe { kind, name } => {
                Some(self.on_describe(st, pass, kind, name))
            }
            FrontendMessage::Execute { portal, max_rows } => {
                Some(self.on_execute(st, pass, portal, max_rows, frame))
            }
            FrontendMessage::Close { kind, name } => Some(self.on_close(st, pass, kind, name)),
            FrontendMessage::Sync if st.server.attached.is_none() => {
                // Nothing since the last Sync needed a server (see
                // [`Session::answers_without_server`]): the client is outside a transaction.
                self.ctx.metrics.queries.inc();
                pass.push(&mut st.tracker, Request::Sync, Delivery::Synthesize, None);
                Some(Send::Instead(BytesMut::new()))
            }
            FrontendMessage::Sync => {
                self.ctx.metrics.queries.inc();
                pass.push(&mut st.tracker, Request::Sync, Delivery::Forward, None);
                Some(Send::AsIs)
            }
            FrontendMessage::Flush if st.server.attached.is_none() => {
                Some(Send::Instead(BytesMut::new()))
            }
            FrontendMessage::FunctionCall(_) => {
                // Fastpath calls name a function by OID, out of the policy's sight.
                let error = self.denial(
                    "builtin/function-call",
                    "function calls by OID (fastpath) are not allowed through the gateway",
                );
                st.tracker.push_replacing(Request::Simple, error);
                Some(Send::Instead(stand_in_query()))
            }
            FrontendMessage::Flush | FrontendMessage::CopyData(_) => Some(Send::AsIs),
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                pass.push(&mut st.tracker, Request::CopyEnd, Delivery::Forward, None);
                Some(Send::AsIs)
            }
            // Not forwarded: the server connection stays open for the pool.
            FrontendMessage::Terminate => Some(Send::Instead(BytesMut::new())),
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
        })
    }

    /// A simple-protocol query: judged, masked and audited as one text.
    fn on_query(&self, st: &mut State, pass: &mut Pass, sql: &[u8]) -> Option<Send> {
        let text = text::decode(st, sql);
        let judged = self.judge_and_plan(st, &text);
        if st.review.needed.is_some() {
            return None;
        }
        st.review.passed = false;
        self.ctx.metrics.queries.inc();
        match judged {
            Ok((plan, Some(max))) if !st.tracker.skipping() => {
                let Pass { synth, unprepared } = pass;
                Some(Send::Instead(self.guarded_query(
                    st,
                    (synth, unprepared),
                    (sql, text.as_str()),
                    max,
                    plan,
                )))
            }
            Ok((plan, _)) => {
                pass.push(&mut st.tracker, Request::Simple, Delivery::Forward, None);
                let mut tag = 0;
                if let (Some(plan), Some(mk)) = (plan, st.masker.as_mut()) {
                    tag = mk.job_simple(plan);
                }
                self.audit_request(st, tag, text.as_str());
                Some(Send::AsIs)
            }
            Err(error) => {
                st.tracker.push_replacing(Request::Simple, error);
                Some(Send::Instead(stand_in_query()))
            }
        }
    }

    /// A Parse: judged now (and again at Bind under a newer policy); in transaction pooling
    /// a named statement becomes the core's statement, parsed once per server connection.
    fn on_parse(
        &self,
        st: &mut State,
        pass: &mut Pass,
        name: &str,
        query: &[u8],
        param_types: &[u8],
    ) -> Option<Send> {
        let txn = self.mode == PoolMode::Transaction;
        let text = text::decode(st, query);
        let judged = if name.starts_with("sluice") {
            Err(self.denial(
                "builtin/reserved-name",
                "statement names starting with \"sluice\" are reserved for the gateway",
            ))
        } else {
            self.judge_statement(st, name, &text)
        };
        let (denial, limit) = match judged {
            Ok(limit) => (None, limit),
            Err(denial) => (Some(denial), None),
        };
        if st.review.needed.is_some() {
            return None;
        }
        let reviewed = std::mem::take(&mut st.review.passed);
        if let Some(error) = denial {
            st.stmts.parsed.remove(name);
            if txn {
                st.stmts.pooled.remove(name);
            }
            let mut b = BytesMut::with_capacity(64);
            encode::parse(&mut b, "", DENIED_STAND_IN.as_bytes(), &[0, 0]);
            st.tracker.push_replacing(Request::Parse, error);
            return Some(Send::Instead(b));
        }
        st.stmts.parsed.insert(
            name.to_owned(),
            Parsed {
                sql: Rc::from(text.as_str()),
                undecodable: match &text {
                    Text::Decoded(_) => None,
                    Text::Undecodable { why, .. } => Some(Rc::from(why.as_str())),
                },
                judged_in: self.policy_generation.get(),
                server: st.server.generation,
                reparse: (txn && name.is_empty()).then(|| Reparse {
                    query: query.into(),
                    param_types: param_types.into(),
                    read_in: st.encodings.client(),
                }),
                reviewed,
                approved_binds: u8::from(reviewed),
                limit,
            },
        );
        if !txn && !name.is_empty() {
            let sql = match &text {
                Text::Decoded(sql) => Some(&**sql),
                Text::Undecodable { .. } => None,
            };
            st.judge.protocol_prepared(name, sql);
        }
        if !txn || name.is_empty() {
            pass.push(&mut st.tracker, Request::Parse, Delivery::Forward, None);
            self.tag_parse(st, name);
            return Some(Send::AsIs);
        }
        let stmt = self
            .ctx
            .intern_statement(query, st.encodings.client(), param_types);
        st.stmts.pooled.insert(name.to_owned(), stmt.clone());
        if st.server.attached.is_none() || !st.server.mark_prepared(stmt.id) {
            // The server has it already, or no server is held and one of this core's servers
            // parsed it (a Bind parses it on the server it gets): the gateway answers
            // ParseComplete itself.
            pass.push(
                &mut st.tracker,
                Request::Parse,
                Delivery::Synthesize,
                Some(stmt.id),
            );
            return Some(Send::Instead(BytesMut::new()));
        }
        let mut b = BytesMut::with_capacity(query.len() + param_types.len() + 32);
        encode::parse(&mut b, &stmt.server_name, query, param_types);
        pass.push(
            &mut st.tracker,
            Request::Parse,
            Delivery::Forward,
            Some(stmt.id),
        );
        self.tag_parse(st, name);
        Some(Send::Instead(b))
    }

    /// A Bind: only to a statement this session parsed, judged again if the policy changed
    /// since (or if a review let it through once); in transaction pooling, to the server's
    /// name for it. When masking, a Describe of the portal follows unless the client sends
    /// one itself.
    fn on_bind(
        &self,
        st: &mut State,
        pass: &mut Pass,
        bind: Bind<'_>,
        rest: &[u8],
    ) -> Option<Send> {
        let Bind {
            portal,
            statement,
            params,
            frame,
        } = bind;
        let txn = self.mode == PoolMode::Transaction;
        // A statement prepared under an older snapshot is judged again when bound, so a new
        // policy reaches statements prepared before it.
        let generation = self.policy_generation.get();
        // Only statements this session parsed may be bound: a pooled server may hold other
        // clients' statements, under names a client could guess (the unnamed one included,
        // which is parsed again on this server first when it was parsed on another).
        let stale = match st.stmts.parsed.get(statement) {
            None => return Some(deny_bind(st, &bind, no_such_statement(statement))),
            Some(p) if p.reviewed && p.approved_binds == 0 => Some(p.text()),
            Some(p) if p.judged_in != generation => Some(p.text()),
            Some(_) => None,
        };
        let judged = stale.map(|text| self.judge_statement(st, statement, &text));
        if st.review.needed.is_some() {
            return None;
        }
        let reviewed = std::mem::take(&mut st.review.passed);
        let limit = match judged {
            Some(Err(error)) => return Some(deny_bind(st, &bind, error)),
            Some(Ok(limit)) => Some(limit),
            None => None,
        };
        if let Some(p) = st.stmts.parsed.get_mut(statement) {
            p.judged_in = generation;
            if let Some(limit) = limit {
                p.limit = limit;
            }
            let limits = &mut st.stmts.portal_limits;
            match p.limit {
                Some(max) => {
                    limits.insert(portal.to_owned(), (max, p.sql.clone()));
                }
                // Without a limit in the policy the map stays empty: no lookup per Bind.
                None if !limits.is_empty() => {
                    limits.remove(portal);
                }
                None => {}
            }
            if p.reviewed {
                // This Bind uses the approval (or the one just given).
                p.approved_binds = p.approved_binds.saturating_sub(1);
                if reviewed {
                    p.approved_binds = 0;
                }
            }
            if self.audit.is_some() {
                st.stmts.portal_sql.insert(portal.to_owned(), p.sql.clone());
            }
        }
        let mut send = Send::AsIs;
        if txn && statement.is_empty() {
            let mut b = BytesMut::new();
            self.ensure_unnamed_parsed(st, pass, &mut b);
            if !b.is_empty() {
                b.extend_from_slice(frame);
                send = Send::Instead(b);
            }
        } else if txn {
            if let Some(stmt) = st.stmts.pooled.get(statement).cloned() {
                let mut b = BytesMut::with_capacity(frame.len() + 64);
                self.ensure_prepared(st, pass, &stmt, &mut b);
                encode::bind_with_statement(&mut b, portal, &stmt.server_name, params);
                send = Send::Instead(b);
            }
        }
        pass.push(&mut st.tracker, Request::Bind, Delivery::Forward, None);
        if let Some(mk) = st.masker.as_mut() {
            mk.bound(portal, statement);
        }
        // A DataRow carries no description: unless the client describes the portal next
        // itself (libpq does), describe it for the masker (the client never sees this answer).
        let describes_next =
            st.masker.is_some() && client_describes_portal(rest, portal, self.max_message);
        if let (Some(mk), false) = (st.masker.as_mut(), describes_next) {
            let mut b = match send {
                Send::Instead(b) => b,
                Send::AsIs => BytesMut::from(frame),
            };
            encode::describe(&mut b, b'P', portal);
            send = Send::Instead(b);
            pass.push(
                &mut st.tracker,
                Request::DescribePortal,
                Delivery::Swallow,
                None,
            );
            st.tracker.tag_last(mk.job_describe(portal));
        }
        Some(send)
    }

    /// A Describe: of a statement, by the server's name for it in transaction pooling; of a
    /// portal, tagged for the masker.
    fn on_describe(&self, st: &mut State, pass: &mut Pass, kind: u8, name: &str) -> Send {
        let txn = self.mode == PoolMode::Transaction;
        let request = if kind == b'S' {
            Request::DescribeStatement
        } else {
            Request::DescribePortal
        };
        if txn && kind == b'S' && !st.stmts.parsed.contains_key(name) {
            // A pooled server may hold other clients' statements (the unnamed one, or one
            // under a name a client could guess): describing them would show their types.
            let mut b = BytesMut::with_capacity(32);
            encode::describe(&mut b, b'S', DENIED_STATEMENT);
            st.tracker.push_replacing(request, no_such_statement(name));
            return Send::Instead(b);
        }
        let mut send = Send::AsIs;
        if txn && kind == b'S' && name.is_empty() {
            let mut b = BytesMut::new();
            self.ensure_unnamed_parsed(st, pass, &mut b);
            if !b.is_empty() {
                encode::describe(&mut b, b'S', "");
                send = Send::Instead(b);
            }
        } else if txn && kind == b'S' {
            if let Some(stmt) = st.stmts.pooled.get(name).cloned() {
                let mut b = BytesMut::with_capacity(64);
                self.ensure_prepared(st, pass, &stmt, &mut b);
                encode::describe(&mut b, b'S', &stmt.server_name);
                send = Send::Instead(b);
            }
        }
        pass.push(&mut st.tracker, request, Delivery::Forward, None);
        if let (b'P', Some(mk)) = (kind, st.masker.as_mut()) {
            st.tracker.tag_last(mk.job_describe(name));
        }
        send
    }

    /// An Execute: its rows go to the portal's masking job and its audit record. A portal
    /// whose write is limited runs alone, answered at once (a Flush), and what follows it
    /// waits for its count ([`super::guard`]); fetched in parts it is refused, since its
    /// count would come only with the last part.
    fn on_execute(
        &self,
        st: &mut State,
        pass: &mut Pass,
        portal: &str,
        max_rows: i32,
        frame: &[u8],
    ) -> Send {
        let limits = &st.stmts.portal_limits;
        let limit = if limits.is_empty() {
            None
        } else {
            limits.get(portal).cloned()
        };
        if let (Some((max, _)), true) = (&limit, max_rows != 0) {
            let rule = format!("{}/max_affected_rows", st.judge.policy().name());
            let error = self.denial(
                &rule,
                &format!("sluice: denied by rule \"{rule}\": a write limited to {max} affected rows cannot be fetched in parts (Execute with a row limit)"),
            );
            let mut b = BytesMut::with_capacity(32);
            encode::bind_with_statement(&mut b, "", DENIED_STATEMENT, &[0; 6]);
            st.tracker.push_replacing(Request::Execute, error);
            return Send::Instead(b);
        }
        pass.push(&mut st.tracker, Request::Execute, Delivery::Forward, None);
        let tag = st.masker.as_mut().map_or(0, |mk| mk.job_execute(portal));
        if let (Some((max, sql)), false) = (limit, st.tracker.skipping()) {
            self.guard_last(st, tag, &sql, max, false);
            let mut b = BytesMut::with_capacity(frame.len() + 5);
            b.extend_from_slice(frame);
            encode::flush(&mut b);
            return Send::Instead(b);
        }
        let sql = st.stmts.portal_sql.get(portal).cloned();
        self.audit_request(st, tag, sql.as_deref().unwrap_or(""));
        Send::AsIs
    }

    /// A Close. In transaction pooling the server keeps a named statement for other clients:
    /// only the client's name goes, and the gateway answers CloseComplete itself.
    fn on_close(&self, st: &mut State, pass: &mut Pass, kind: u8, name: &str) -> Send {
        if kind == b'S' {
            st.forget_statement(name);
            if self.mode == PoolMode::Session {
                st.judge.protocol_closed(name);
            }
        }
        if self.mode == PoolMode::Transaction && kind == b'S' && !name.is_empty() {
            st.stmts.pooled.remove(name);
            pass.push(&mut st.tracker, Request::Close, Delivery::Synthesize, None);
            return Send::Instead(BytesMut::new());
        }
        pass.push(&mut st.tracker, Request::Close, Delivery::Forward, None);
        Send::AsIs
    }

    /// Makes sure the attached server has `stmt` prepared, injecting a Parse whose answer
    /// the client never sees.
    fn ensure_prepared(
        &self,
        st: &mut State,
        pass: &mut Pass,
        stmt: &Statement,
        out: &mut BytesMut,
    ) {
        // Text read in another encoding now is not the one that was judged: not prepared, so
        // the Bind or Describe fails on the server.
        if stmt.reads_alike(st.encodings.client()) && st.server.mark_prepared(stmt.id) {
            encode::parse(out, &stmt.server_name, &stmt.query, &stmt.param_types);
            pass.push(
                &mut st.tracker,
                Request::Parse,
                Delivery::Swallow,
                Some(stmt.id),
            );
        }
    }

    /// Transaction pooling: makes sure the attached server has the client's unnamed statement,
    /// when the client parsed it on another server connection (before a Sync that let that
    /// one go back to the pool). The Parse is injected with the text and parameter types the
    /// client sent, under the verdict and masking plan it was judged with; its answer is
    /// dropped. If it fails or is skipped, the statement is forgotten, as when the client's
    /// own Parse fails.
    fn ensure_unnamed_parsed(&self, st: &mut State, pass: &mut Pass, out: &mut BytesMut) {
        let attached = st.server.generation;
        let Some(p) = st.stmts.parsed.get("") else {
            return;
        };
        let (true, Some(r)) = (p.server != attached, p.reparse.as_ref()) else {
            return;
        };
        if r.read_in != st.encodings.client() && !r.query.is_ascii() {
            // Read in another encoding now: not the text that was judged. The Bind or
            // Describe fails on the server, as for a statement it never saw.
            return;
        }
        encode::parse(out, "", &r.query, &r.param_types);
        pass.push(&mut st.tracker, Request::Parse, Delivery::Swallow, None);
        let tag = st.own_tag();
        if st.tracker.tag_last(tag) {
            st.stmts.parse_tags.insert(tag, String::new());
            if let Some(p) = st.stmts.parsed.get_mut("") {
                p.server = attached;
            }
        } else {
            // The server skips it (an error before it, no Sync since): it stays unparsed
            // here, and the Bind or Describe after it is skipped too.
            out.clear();
        }
    }

    /// Tags the Parse just pushed, so that its failure (or its skip after an earlier error)
    /// makes the name unusable; a Parse the server will skip is forgotten at once.
    fn tag_parse(&self, st: &mut State, name: &str) {
        let tag = st.own_tag();
        if st.tracker.tag_last(tag) {
            st.stmts.parse_tags.insert(tag, name.to_owned());
        } else {
            st.forget_statement(name);
        }
    }
}

/// A Bind message's parts.
struct Bind<'a> {
    portal: &'a str,
    statement: &'a str,
    /// What follows the statement name, as the client sent it.
    params: &'a [u8],
    /// The whole message.
    frame: &'a [u8],
}

/// A denied Bind: bound to a statement no server has, so the server fails it and skips to
/// Sync; its error is replaced by the gateway's.
fn deny_bind(st: &mut State, bind: &Bind<'_>, error: Bytes) -> Send {
    let mut b = BytesMut::with_capacity(bind.frame.len() + 32);
    encode::bind_with_statement(&mut b, bind.portal, DENIED_STATEMENT, bind.params);
    st.tracker.push_replacing(Request::Bind, error);
    Send::Instead(b)
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
