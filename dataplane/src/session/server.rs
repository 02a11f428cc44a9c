//! Server messages on their way to the client: forwarded in runs, inspected where the
//! session must know (ReadyForQuery, ParameterStatus, CommandComplete), masked, audited, or
//! dropped when they answer a request the gateway injected.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use sluice_pgwire::{backend as bmsg, parse_header, ProtocolError};

use super::{split_run, Session, State, OWN_TAGS};
use crate::catalog::Loaded;
use crate::masking::{Action, Masker};
use crate::tracker::Verdict;

/// Largest server message the proxy buffers whole to look inside (ReadyForQuery,
/// ParameterStatus, CommandComplete).
const MAX_INSPECTED_MESSAGE: usize = 64 * 1024;
/// Largest result message (DataRow, CopyData, error) the masker buffers whole to rewrite.
const MAX_MASKED_MESSAGE: usize = 16 << 20;
/// Longest a result waits for a catalog reload before it is planned with what is known.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Server messages after which a masking job may be over.
fn ends_a_result(tag: u8) -> bool {
    matches!(
        tag,
        bmsg::COMMAND_COMPLETE
            | bmsg::EMPTY_QUERY
            | bmsg::PORTAL_SUSPENDED
            | bmsg::READY_FOR_QUERY
            | bmsg::NO_DATA
            | bmsg::ROW_DESCRIPTION
            | bmsg::ERROR_RESPONSE
    )
}

impl Session {
    /// Walks the server bytes in `buf`: forwards runs of messages as split-off chunks,
    /// inspects the few message types that matter, drops answers to injected requests.
    /// `skip` is what remains of a message too large to hold, forwarded (or dropped, per
    /// `skip_forward`) as it streams.
    ///
    /// Stops at a RowDescription the masker's catalog cannot resolve, leaving it first in
    /// `buf`, and returns that catalog: the caller reloads it and calls again.
    pub(super) fn process_server(
        &self,
        buf: &mut BytesMut,
        skip: &mut usize,
        skip_forward: &mut bool,
        generation: u64,
    ) -> Result<Option<Rc<Loaded>>, ProtocolError> {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        if st.server.generation != generation {
            return Ok(None);
        }
        let mut reload = None;
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
                    split_run(buf, &mut pos, &mut chunks);
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
                bmsg::READY_FOR_QUERY
                    | bmsg::PARAMETER_STATUS
                    | bmsg::COMMAND_COMPLETE
                    | bmsg::NOTIFICATION
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
            if mask && h.tag == bmsg::ROW_DESCRIPTION {
                // Held (with everything after it, unread) until the catalog is reloaded:
                // no row of this result goes out before it is planned.
                reload = st
                    .masker
                    .as_ref()
                    .and_then(|mk| mk.wants_reload(job, &buf[pos..pos + total]));
                if reload.is_some() {
                    break;
                }
            }
            let verdict = st.tracker.on_server(h.tag, &mut synth, &mut unprepared);
            // Messages that may come at any time (a notification to an idle listener) leave
            // the server as idle as it was.
            if !matches!(
                h.tag,
                bmsg::NOTICE_RESPONSE | bmsg::PARAMETER_STATUS | bmsg::NOTIFICATION
            ) {
                st.server.ready = None;
            }
            let mut param = None;
            if inspect {
                param = self.inspect(st, &buf[pos..pos + total])?;
            }
            if h.tag == bmsg::NOTIFICATION {
                self.own_notifier(st, &mut buf[pos..pos + total]);
            }
            st.server.unprepared(&mut unprepared);
            for id in st.tracker.take_parsed() {
                st.statement_parsed(id);
            }
            let whole = available >= total;
            let present = total.min(available);
            let mut verdict = if oversize { Verdict::Drop } else { verdict };
            if mask && whole {
                verdict = mask_message(st, job, h.tag, &mut buf[pos..pos + total], verdict);
            }
            if st.guard.is_some() && whole {
                if let Some(error) = self.guard_answer(st, job, h.tag, &buf[pos..pos + total]) {
                    verdict = Verdict::Replace(error);
                }
            }
            self.after_message(st, job, h.tag, &buf[pos..pos + present], whole);
            let forward = verdict == Verdict::Forward;
            match verdict {
                Verdict::Forward => {
                    if let Some((name, value)) = param.take() {
                        if name == "client_encoding" {
                            let utf8 = st.encodings.set_client(&value);
                            if let Some(mk) = st.masker.as_mut() {
                                mk.set_client_utf8(utf8);
                            }
                        }
                        // The client saw it: what it expects of every server from now on.
                        Rc::make_mut(&mut st.server.view).insert(name, value);
                    }
                    st.server.last_forwarded_tag = h.tag;
                    bytes += present as u64;
                    pos += present;
                }
                Verdict::Drop | Verdict::Replace(_) => {
                    split_run(buf, &mut pos, &mut chunks);
                    buf.advance(present);
                    if let Verdict::Replace(ours) = verdict {
                        st.server.last_forwarded_tag = h.tag;
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
                split_run(buf, &mut pos, &mut chunks);
                chunks.push(synth.split().freeze());
            }
        }
        split_run(buf, &mut pos, &mut chunks);
        self.count(st, bytes);
        for c in chunks {
            self.push_out(&mut st.out, c);
        }
        Ok(reload)
    }

    /// What each server message settles once the masker has seen it: the masker's view of an
    /// idle server, portals at the end of a transaction, the audit of request `job`, requests
    /// that failed or were skipped, and Parses answered.
    fn after_message(&self, st: &mut State, job: u64, tag: u8, msg: &[u8], whole: bool) {
        if let (Some(status), Some(mk)) = (st.server.ready, st.masker.as_mut()) {
            if st.tracker.is_idle() {
                mk.idle(status);
            }
        }
        if st.server.ready == Some(b'I') && st.tracker.is_idle() {
            // Portals do not outlive a transaction.
            st.stmts.portal_sql.clear();
            st.stmts.portal_limits.clear();
        }
        if job != 0 && !st.audits.is_empty() {
            self.audit_response(st, job, tag, msg, whole);
        }
        // After the masker and the audit saw the message: requests that failed or were
        // skipped.
        for tag in settle_failed(st) {
            self.guard_failed(st, tag);
        }
        if job >= OWN_TAGS && !st.stmts.parse_tags.is_empty() && !st.tracker.has_job(job) {
            // The Parse was answered (ParseComplete): its name is the server's now.
            st.stmts.parse_tags.remove(&job);
        }
    }

    /// Reloads the catalog that could not resolve a held RowDescription, and has the masker
    /// plan the held result with the new one (or with what it has, failing closed, when the
    /// load fails or takes longer than [`RELOAD_WAIT`]).
    pub(super) async fn reload_catalog(&self, seen: Rc<Loaded>) {
        let refresh = self
            .ctx
            .catalogs
            .refresh(&self.connection, self.pool.target(), &seen);
        // The load itself goes on (it is shared): only this wait ends.
        let catalog = match monoio::time::timeout(RELOAD_WAIT, refresh).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(_)) | Err(_) => None,
        };
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let job = st.tracker.head_job();
        if let Some(mk) = st.masker.as_mut() {
            mk.reloaded(job, catalog);
        }
    }

    /// What the session learns from a ReadyForQuery, ParameterStatus or CommandComplete; a
    /// ParameterStatus is returned, for the client's view once it is forwarded.
    fn inspect(
        &self,
        st: &mut State,
        frame: &[u8],
    ) -> Result<Option<(String, String)>, ProtocolError> {
        let msg = bmsg::parse(frame)?;
        if let (bmsg::BackendMessage::CommandComplete { tag }, Some(a)) =
            (&msg, st.server.attached.as_mut())
        {
            a.state.completed(tag);
        }
        match msg {
            bmsg::BackendMessage::ReadyForQuery { status } => st.server.ready = Some(status),
            bmsg::BackendMessage::ParameterStatus { name, value } => {
                if let Some(a) = st.server.attached.as_mut() {
                    a.state.reported.insert(name.to_owned(), value.to_owned());
                }
                return Ok(Some((name.to_owned(), value.to_owned())));
            }
            bmsg::BackendMessage::CommandComplete { tag }
                if tag == "DISCARD ALL" || tag == "DEALLOCATE ALL" =>
            {
                if let Some(a) = st.server.attached.as_mut() {
                    a.state.prepared.clear();
                }
                st.judge.forget_prepared();
                st.forget_all_statements();
            }
            bmsg::BackendMessage::CommandComplete { tag }
                if crate::catalog::is_ddl_tag(tag)
                    && st.masker.as_ref().is_some_and(Masker::needs_catalog) =>
            {
                self.ctx.catalogs.mark_stale(&self.connection);
            }
            _ => {}
        }
        Ok(None)
    }

    /// A notification sent by the client's own server connection names the client's pid
    /// (the gateway's, from BackendKeyData), not the backend's, so a client that compares
    /// the two knows its own notifications. Others' keep their backend pid.
    fn own_notifier(&self, st: &State, frame: &mut [u8]) {
        let Some(a) = st.server.attached.as_ref() else {
            return;
        };
        if let Some(pid) = frame.get_mut(5..9) {
            if *pid == a.state.key.pid.to_be_bytes() {
                pid.copy_from_slice(&self.pid.to_be_bytes());
            }
        }
    }

    /// Counts what went to the client, and what the masker did.
    fn count(&self, st: &State, bytes: u64) {
        let m = &self.ctx.metrics;
        m.server_bytes.add(bytes);
        if let Some(mk) = st.masker.as_ref() {
            m.rows_masked.add(mk.counts.rows_masked.take());
            m.results_failed_closed.add(mk.counts.failed_closed.take());
        }
    }
}

/// Shows the masker a whole message of job `job`; the tracker's verdict, or the masker's when
/// the tracker would forward it.
fn mask_message(st: &mut State, job: u64, tag: u8, frame: &mut [u8], verdict: Verdict) -> Verdict {
    let Some(mk) = st.masker.as_mut() else {
        return verdict;
    };
    let verdict = match (mk.on_message(job, frame), verdict) {
        (Action::Drop, Verdict::Forward) => Verdict::Drop,
        (Action::Replace(b), Verdict::Forward) => Verdict::Replace(b),
        (_, verdict) => verdict,
    };
    if job != 0 && ends_a_result(tag) && !st.tracker.has_job(job) {
        mk.finish_job(job);
    }
    verdict
}

/// Settles what the session recorded for requests that failed or were skipped; their tags.
fn settle_failed(st: &mut State) -> Vec<u64> {
    let failed = st.tracker.take_failed_jobs();
    for &tag in &failed {
        if let Some(name) = st.stmts.parse_tags.remove(&tag) {
            st.forget_statement(&name);
        }
        if let Some(mk) = st.masker.as_mut() {
            mk.finish_job(tag);
        }
        // A request that never ran leaves no record (the failure before it has its own).
        st.audits.remove(&tag);
    }
    failed
}
