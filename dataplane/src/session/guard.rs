//! The limit on rows a write affects (`max_affected_rows`): a guarded UPDATE, DELETE or MERGE
//! runs, its command tag is read, and one over the limit fails before anything commits.
//!
//! The server only counts rows once the statement has run, so the decision comes after its
//! CommandComplete and before anything the client sent after it: the client reader sends the
//! guarded Execute with a Flush (so the server answers it at once) and holds the messages
//! behind it until the server reader has seen the answer. Over the limit, the client gets a
//! 42501 in place of the CommandComplete and the server a Bind that fails, so PostgreSQL
//! itself rolls back: outside a transaction the implicit transaction of the messages up to
//! Sync, inside one the transaction (aborted, as by any error, until the client's ROLLBACK).
//! A simple Query is sent as Parse, Bind, Describe, Execute of the unnamed statement (what a
//! simple Query uses too), its answers shaped as a simple Query's, and the gateway's own
//! Sync once the count is read.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::{backend as bmsg, sqlstate};
use sluice_policy::lineage::MaskPlan;
use sluice_policy::OverLimit;

use super::judge::DENIED_STATEMENT;
use super::{Session, State};
use crate::tracker::{Delivery, Request};

/// A Bind's parameter and result formats for a statement without parameters.
const NO_PARAMETERS: [u8; 6] = [0; 6];

/// The guarded write the server is running now (there is at most one: the messages behind it
/// wait).
pub(super) struct Guard {
    /// The tag of the guarded Execute.
    job: u64,
    max: u64,
    /// The text, for the error, the audit record and a review.
    sql: String,
    /// Sent as a simple Query: the gateway sends the Sync.
    simple: bool,
    /// The failing Bind is sent (before a review was requested).
    failed_already: bool,
    outcome: Option<Outcome>,
}

/// What the guarded Execute did.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// It affected no more rows than the limit (or is not a counted write after all).
    Within,
    /// It affected this many rows, more than the limit (`None`: unknown, as for a portal
    /// suspended before its command tag).
    Over(Option<u64>),
    /// It failed or never ran.
    Failed,
}

impl Guard {
    /// Whether the client reader must wait for the guarded Execute's answer.
    pub(super) fn waiting(&self) -> bool {
        self.outcome.is_none()
    }
}

/// The rows a command tag says a counted write affected (`UPDATE n`, `DELETE n`, `MERGE n`);
/// `None` for other tags.
fn counted_rows(tag: &str) -> Option<u64> {
    let (verb, n) = tag.rsplit_once(' ')?;
    matches!(verb, "UPDATE" | "DELETE" | "MERGE")
        .then(|| n.parse().ok())
        .flatten()
}

impl Session {
    /// A simple Query that affects at most `max` rows: what the server gets instead (the
    /// unnamed statement's Parse, Bind, Describe and Execute, then a Flush), with the answers
    /// recorded; `plan` masks its rows (RETURNING), as an extended client's would be.
    pub(super) fn guarded_query(
        &self,
        st: &mut State,
        (synth, unprepared): (&mut BytesMut, &mut Vec<u64>),
        (raw, sql): (&[u8], &str),
        max: u64,
        plan: Option<Rc<MaskPlan>>,
    ) -> BytesMut {
        let mut b = BytesMut::with_capacity(raw.len() + 64);
        // A simple Query replaces the unnamed statement and portal too.
        st.forget_statement("");
        if let (Some(plan), Some(mk)) = (plan, st.masker.as_mut()) {
            mk.parsed("", &plan);
            mk.bound("", "");
        }
        encode::parse(&mut b, "", raw, &[]);
        st.tracker
            .push(Request::Parse, Delivery::Swallow, None, synth, unprepared);
        encode::bind_with_statement(&mut b, "", "", &NO_PARAMETERS);
        st.tracker
            .push(Request::Bind, Delivery::Swallow, None, synth, unprepared);
        encode::describe(&mut b, b'P', "");
        st.tracker.push(
            Request::DescribePortal,
            Delivery::AsSimple,
            None,
            synth,
            unprepared,
        );
        if let Some(mk) = st.masker.as_mut() {
            st.tracker.tag_last(mk.job_describe(""));
        }
        encode::execute(&mut b, "", 0);
        encode::flush(&mut b);
        st.tracker
            .push(Request::Execute, Delivery::Forward, None, synth, unprepared);
        let tag = st.masker.as_mut().map_or(0, |mk| mk.job_execute(""));
        self.guard_last(st, tag, sql, max, true);
        b
    }

    /// Guards the Execute just recorded (if the server will run it), tagged `tag` (its
    /// masking job; 0: none, and a tag of the session's own is taken).
    pub(super) fn guard_last(
        &self,
        st: &mut State,
        mut tag: u64,
        sql: &str,
        max: u64,
        simple: bool,
    ) {
        if tag == 0 {
            tag = st.own_tag();
        }
        self.audit_request(st, tag, sql);
        if st.tracker.has_job(tag) {
            st.guard = Some(Guard {
                job: tag,
                max,
                sql: sql.to_owned(),
                simple,
                failed_already: false,
                outcome: None,
            });
        }
    }

    /// A message of the server's answer to request `job`: for the guarded Execute, its
    /// CommandComplete (or PortalSuspended) settles the guard; over the limit, the ErrorResponse
    /// the client gets in its place.
    pub(super) fn guard_answer(
        &self,
        st: &mut State,
        job: u64,
        tag: u8,
        frame: &[u8],
    ) -> Option<Bytes> {
        let g = st.guard.as_mut().filter(|g| g.job == job && g.waiting())?;
        let outcome = match tag {
            bmsg::COMMAND_COMPLETE => match bmsg::parse(frame) {
                Ok(bmsg::BackendMessage::CommandComplete { tag }) => match counted_rows(tag) {
                    Some(n) if n > g.max => Outcome::Over(Some(n)),
                    _ => Outcome::Within,
                },
                _ => Outcome::Over(None),
            },
            bmsg::PORTAL_SUSPENDED => Outcome::Over(None),
            bmsg::EMPTY_QUERY => Outcome::Within,
            _ => return None,
        };
        g.outcome = Some(outcome);
        self.wake.guard();
        let Outcome::Over(n) = outcome else {
            return None;
        };
        let (max, sql) = (g.max, g.sql.clone());
        Some(self.over_limit_error(st, job, &sql, max, n))
    }

    /// A request that failed or was skipped: if it is the guarded Execute, the guard is
    /// settled (nothing to roll back beyond what the failure does).
    pub(super) fn guard_failed(&self, st: &mut State, job: u64) {
        if let Some(g) = st.guard.as_mut().filter(|g| g.job == job && g.waiting()) {
            g.outcome = Some(Outcome::Failed);
            self.wake.guard();
        }
    }

    /// The client reader, after sending a guarded Execute: waits for its answer, then sends
    /// what follows from it (a failing Bind when over the limit; the Sync of a simple Query).
    /// Returns false when the session is over.
    pub(super) async fn settle_guard(self: &Rc<Self>) -> bool {
        loop {
            {
                let st = self.st.borrow();
                match &st.guard {
                    None => return true,
                    Some(g) if !g.waiting() => break,
                    Some(_) if st.out.closing || st.server.attached.is_none() => {
                        drop(st);
                        self.st.borrow_mut().guard = None;
                        return false;
                    }
                    Some(_) => {}
                }
            }
            self.wake.guard_settled().await;
        }
        let held = self.st.borrow_mut().review.hold.take();
        if let Some((sql, rule, message)) = held {
            // The write is rolled back first (the failing Bind), then the review requested,
            // then the client told, before the Sync's ReadyForQuery.
            if !self.write_server(vec![self.fail_guarded()]).await {
                return false;
            }
            let error = self.request_over_limit_review(&sql, &rule, &message).await;
            let mut st = self.st.borrow_mut();
            self.push_out(&mut st.out, error);
        }
        let suffix = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            let Some(g) = st.guard.take() else {
                return true;
            };
            let mut b = BytesMut::new();
            if matches!(g.outcome, Some(Outcome::Over(_))) && !g.failed_already {
                fail_bind(st, &mut b);
            }
            if g.simple {
                encode::sync(&mut b);
                let (mut synth, mut unprepared) = (BytesMut::new(), Vec::new());
                st.tracker.push(
                    Request::Sync,
                    Delivery::Forward,
                    None,
                    &mut synth,
                    &mut unprepared,
                );
                st.server.unprepared(&mut unprepared);
            }
            if !b.is_empty() {
                st.server.ready = None;
            }
            b.freeze()
        };
        if suffix.is_empty() {
            return true;
        }
        self.unpark();
        self.write_server(vec![suffix]).await
    }

    /// The failing Bind that rolls the guarded write back, sent ahead of the rest.
    fn fail_guarded(&self) -> Bytes {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let mut b = BytesMut::new();
        fail_bind(st, &mut b);
        if let Some(g) = st.guard.as_mut() {
            g.failed_already = true;
        }
        st.server.ready = None;
        b.freeze()
    }

    /// The 42501 a write over the limit gets, recorded as a denial in its audit record. Under
    /// `over_limit: review` the client gets it (with the review's id) from the client reader
    /// once the review is requested: empty here.
    fn over_limit_error(
        &self,
        st: &mut State,
        job: u64,
        sql: &str,
        max: u64,
        n: Option<u64>,
    ) -> Bytes {
        let policy = st.judge.policy().clone();
        let rule = format!("{}/max_affected_rows", policy.name());
        let count = n.map_or_else(
            || "an unknown number of rows (its result was fetched in parts)".to_owned(),
            |n| format!("{n} rows"),
        );
        let message = format!(
            "sluice: denied by rule \"{rule}\": the statement affected {count}, more than the limit of {max}; it was rolled back"
        );
        if let Some(a) = st.audits.get_mut(&job) {
            a.deny(&rule, &message);
        }
        self.ctx.metrics.statements_denied.inc();
        tracing::info!(peer = %self.peer, subject = %self.subject, rule, max, rows = n, "write over its row limit rolled back");
        if matches!(policy.max_affected_rows(), Some((_, OverLimit::Review))) {
            st.review.over_limit.insert(sql.to_owned());
            st.review.hold = Some((sql.to_owned(), rule, message));
            return Bytes::new();
        }
        over_limit_response(
            &message,
            "narrow the WHERE clause, or split the write into smaller ones",
        )
    }
}

/// A Bind the server fails, so it skips to Sync and the write is rolled back with whatever
/// its transaction did; its error is not the client's.
fn fail_bind(st: &mut State, b: &mut BytesMut) {
    encode::bind_with_statement(b, "", DENIED_STATEMENT, &NO_PARAMETERS);
    st.tracker.push_replacing(Request::Bind, Bytes::new());
}

/// The ErrorResponse (42501) of a write over its limit.
pub(super) fn over_limit_response(message: &str, hint: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + hint.len() + 64);
    encode::error_response(
        &mut b,
        &ErrorResponse {
            hint: Some(hint),
            ..ErrorResponse::error(sqlstate::INSUFFICIENT_PRIVILEGE, message)
        },
    );
    b.freeze()
}
