//! Which server response belongs to which client request.
//!
//! The proxy pushes one entry per request it sends (or pretends to send) to the server, in
//! order, and shows the tracker the tag of every message the server sends back. From that it
//! knows when the server has answered everything (so a transaction-mode connection can go back
//! to the pool), which responses answer requests the proxy injected itself (to drop them), and
//! when to emit a response for a request it answered on the server's behalf (to synthesize it
//! in the right place). It follows PostgreSQL's rule that after an error in the extended
//! protocol the server discards every message until the next Sync.
//!
//! Pure and synchronous: no I/O, unit-tested on tag sequences.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use sluice_pgwire::{backend, encode};

/// The kind of a request, which decides which server message completes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Simple Query or FunctionCall: answered by everything up to ReadyForQuery.
    Simple,
    /// Sync: answered by ReadyForQuery.
    Sync,
    /// Parse: ParseComplete or an error.
    Parse,
    /// Bind: BindComplete or an error.
    Bind,
    /// Close: CloseComplete or an error.
    Close,
    /// Describe of a statement: ParameterDescription then RowDescription or NoData.
    DescribeStatement,
    /// Describe of a portal: RowDescription or NoData.
    DescribePortal,
    /// Execute: CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute,
    /// CopyDone or CopyFail from the client: a marker that is never answered. It ends the
    /// stretch in which the server, being in copy-in mode, ignores Sync (tokio-postgres sends
    /// Bind, Execute, Sync before the COPY data).
    CopyEnd,
}

impl Request {
    fn is_extended(self) -> bool {
        !matches!(self, Request::Simple | Request::Sync | Request::CopyEnd)
    }

    /// Whether `tag` is the message that finishes the answer to this request.
    fn completed_by(self, tag: u8) -> bool {
        use backend::*;
        match self {
            Request::Simple | Request::Sync => tag == READY_FOR_QUERY,
            Request::Parse => tag == PARSE_COMPLETE,
            Request::Bind => tag == BIND_COMPLETE,
            Request::Close => tag == CLOSE_COMPLETE,
            Request::DescribeStatement | Request::DescribePortal => {
                tag == ROW_DESCRIPTION || tag == NO_DATA
            }
            Request::Execute => {
                tag == COMMAND_COMPLETE || tag == EMPTY_QUERY || tag == PORTAL_SUSPENDED
            }
            Request::CopyEnd => false,
        }
    }
}

/// What happens to the server's answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The client sent it; the answer goes to the client.
    Forward,
    /// The proxy injected it; its success is dropped (errors still reach the client).
    Swallow,
    /// The proxy answered it without the server (ParseComplete or CloseComplete).
    Synthesize,
    /// The proxy sent a stand-in that fails on the server (a denied statement): the server's
    /// error is replaced by the proxy's, and everything else (ReadyForQuery with the real
    /// transaction status, the skip to Sync) is the server's own.
    ReplaceError,
}

#[derive(Debug)]
struct Entry {
    request: Request,
    delivery: Delivery,
    /// For Parse: the proxy's statement id, reported back if the server never prepares it.
    statement: Option<u64>,
    /// For [`Delivery::ReplaceError`]: the ErrorResponse the client gets instead.
    replacement: Option<Bytes>,
    /// The caller's tag for the answer (0: none): which masking job its rows belong to.
    job: u64,
}

/// What to do with one server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client.
    Forward,
    /// Drop it: it answers a request the proxy injected.
    Drop,
    /// Send this message (a whole ErrorResponse) instead.
    Replace(Bytes),
}

/// The queue of requests awaiting their answers.
#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Entry>,
    /// An extended-protocol error happened and no Sync has been sent since: the server
    /// discards what arrives until then, so new entries are discarded too.
    skipping: bool,
    /// The server is in copy-in mode and the client has not ended the COPY yet: the server
    /// ignores the Syncs it gets meanwhile, so they are not recorded.
    copy_in: bool,
    /// The last push queued an entry (for [`Tracker::tag_last`]).
    last_queued: bool,
    /// Tags of requests that failed or that the server skipped (after an error, before Sync),
    /// for the caller to forget what it recorded for them.
    failed_jobs: Vec<u64>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when every request sent has been answered.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of requests awaiting answers.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Records a request sent to the server (or answered by the proxy). Synthesized answers
    /// that are due now are written to `to_client`; ids of Parse requests the server will skip
    /// are pushed to `unprepared`.
    pub fn push(
        &mut self,
        request: Request,
        delivery: Delivery,
        statement: Option<u64>,
        to_client: &mut BytesMut,
        unprepared: &mut Vec<u64>,
    ) {
        self.last_queued = false;
        if self.copy_in {
            match request {
                Request::Sync => return,
                Request::CopyEnd => {
                    self.copy_in = false;
                    return;
                }
                _ => {}
            }
        }
        if self.skipping {
            if request == Request::Sync {
                self.skipping = false;
            } else {
                // The server discards it unanswered.
                if let (Request::Parse, Some(id), Delivery::Forward | Delivery::Swallow) =
                    (request, statement, delivery)
                {
                    unprepared.push(id);
                }
                return;
            }
        }
        self.queue.push_back(Entry {
            request,
            delivery,
            statement,
            replacement: None,
            job: 0,
        });
        // A synthesized answer may leave the queue at once: never tag one.
        self.last_queued = delivery != Delivery::Synthesize;
        self.emit_synthetic(to_client);
    }

    /// Tags the request pushed last with `job`, if it is still waiting for its answer (it is
    /// not when the server will skip it, or when the proxy answered it itself). Returns
    /// whether it was tagged.
    pub fn tag_last(&mut self, job: u64) -> bool {
        if !self.last_queued {
            return false;
        }
        match self.queue.back_mut() {
            Some(e) if e.job == 0 && e.delivery != Delivery::Synthesize => {
                e.job = job;
                true
            }
            _ => false,
        }
    }

    /// The tag of the request the server is answering now (0: none).
    pub fn head_job(&self) -> u64 {
        self.queue.front().map_or(0, |e| e.job)
    }

    /// Takes the tags of requests that failed or were skipped since the last call (a simple
    /// Query that fails is not among them: its answer goes on to ReadyForQuery).
    pub fn take_failed_jobs(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.failed_jobs)
    }

    /// Whether a request tagged `job` still waits for (part of) its answer.
    pub fn has_job(&self, job: u64) -> bool {
        self.queue.iter().any(|e| e.job == job)
    }

    /// Records a stand-in request whose server error is replaced by `error` (a whole
    /// ErrorResponse message).
    pub fn push_replacing(&mut self, request: Request, error: Bytes) {
        self.last_queued = false;
        if self.copy_in && request == Request::Sync {
            return;
        }
        if self.skipping {
            // The server will discard the stand-in, just as it would the original.
            return;
        }
        self.queue.push_back(Entry {
            request,
            delivery: Delivery::ReplaceError,
            statement: None,
            replacement: Some(error),
            job: 0,
        });
    }

    /// Shows the tracker one server message by its tag. Returns whether the client gets it;
    /// synthesized answers that become due are written to `to_client` *after* this message.
    pub fn on_server(
        &mut self,
        tag: u8,
        to_client: &mut BytesMut,
        unprepared: &mut Vec<u64>,
    ) -> Verdict {
        use backend::*;
        // Messages that may come at any time are never answers.
        if matches!(tag, NOTICE_RESPONSE | PARAMETER_STATUS | NOTIFICATION) {
            return Verdict::Forward;
        }
        let Some(head) = self.queue.front() else {
            return Verdict::Forward;
        };
        let on_error = match (&head.replacement, tag == ERROR_RESPONSE) {
            (Some(r), true) => Verdict::Replace(r.clone()),
            _ => Verdict::Forward,
        };
        if tag == ERROR_RESPONSE && head.request.is_extended() {
            // The failing request is answered by the error; the server now skips to Sync.
            let failed = self.queue.pop_front().expect("head exists");
            if failed.request == Request::Parse && failed.delivery != Delivery::Synthesize {
                unprepared.extend(failed.statement);
            }
            if failed.job != 0 {
                self.failed_jobs.push(failed.job);
            }
            while let Some(e) = self.queue.front() {
                if e.request == Request::Sync {
                    break;
                }
                let e = self.queue.pop_front().expect("front exists");
                if e.request == Request::Parse && e.delivery != Delivery::Synthesize {
                    unprepared.extend(e.statement);
                }
                if e.job != 0 {
                    self.failed_jobs.push(e.job);
                }
            }
            if self.queue.is_empty() {
                self.skipping = true;
            }
            self.emit_synthetic(to_client);
            return on_error;
        }
        let delivery = head.delivery;
        if head.request.completed_by(tag) {
            self.queue.pop_front();
        } else if tag == COPY_IN {
            self.enter_copy_in();
        }
        let verdict = if tag == ERROR_RESPONSE {
            on_error
        } else if delivery == Delivery::Swallow {
            Verdict::Drop
        } else {
            Verdict::Forward
        };
        self.emit_synthetic(to_client);
        verdict
    }

    /// Forgets everything: the server connection is gone.
    pub fn reset(&mut self) {
        self.failed_jobs
            .extend(self.queue.iter().map(|e| e.job).filter(|j| *j != 0));
        self.queue.clear();
        self.skipping = false;
        self.copy_in = false;
    }

    /// CopyInResponse to the request at the head: the server ignores Sync until the client's
    /// CopyDone or CopyFail, so the Syncs already recorded before that never get an answer.
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        loop {
            match self.queue.get(i).map(|e| e.request) {
                Some(Request::Sync) => {
                    self.queue.remove(i);
                }
                Some(Request::CopyEnd) => {
                    self.queue.remove(i);
                    return;
                }
                Some(_) => i += 1,
                None => {
                    self.copy_in = true;
                    return;
                }
            }
        }
    }

    fn emit_synthetic(&mut self, to_client: &mut BytesMut) {
        while let Some(e) = self.queue.front() {
            if e.request == Request::CopyEnd {
                // A marker whose COPY ended without copy-in mode (e.g. it failed at once).
                self.queue.pop_front();
                continue;
            }
            if e.delivery != Delivery::Synthesize {
                break;
            }
            match e.request {
                Request::Parse => encode::parse_complete(to_client),
                Request::Close => encode::close_complete(to_client),
                other => debug_assert!(false, "cannot synthesize {other:?}"),
            }
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Tracker, tags: &[u8]) -> (Vec<Verdict>, BytesMut, Vec<u64>) {
        let mut out = BytesMut::new();
        let mut unprepared = Vec::new();
        let v = tags
            .iter()
            .map(|&tag| t.on_server(tag, &mut out, &mut unprepared))
            .collect();
        (v, out, unprepared)
    }

    fn push(t: &mut Tracker, r: Request, d: Delivery, id: Option<u64>) -> BytesMut {
        let mut out = BytesMut::new();
        let mut unprepared = Vec::new();
        t.push(r, d, id, &mut out, &mut unprepared);
        assert!(unprepared.is_empty());
        out
    }

    use Delivery::*;
    use Request::*;
    use Verdict::{Drop, Forward as Fwd};

    #[test]
    fn simple_query_is_idle_after_ready() {
        let mut t = Tracker::new();
        push(&mut t, Simple, Forward, None);
        let (v, _, _) = run(&mut t, b"TDDCE");
        assert!(v.iter().all(|v| *v == Fwd));
        assert!(
            !t.is_idle(),
            "an error inside a simple query does not end it"
        );
        run(&mut t, b"Z");
        assert!(t.is_idle());
    }

    #[test]
    fn extended_batch() {
        let mut t = Tracker::new();
        for r in [Parse, Bind, DescribePortal, Execute, Sync] {
            push(&mut t, r, Forward, None);
        }
        run(&mut t, b"12TDDC");
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());
    }

    #[test]
    fn describe_statement_waits_for_row_description() {
        let mut t = Tracker::new();
        push(&mut t, DescribeStatement, Forward, None);
        push(&mut t, Sync, Forward, None);
        run(&mut t, b"t");
        assert_eq!(t.pending(), 2);
        run(&mut t, b"n");
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn injected_parse_is_swallowed_but_its_error_is_not() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Swallow, Some(7));
        push(&mut t, Bind, Forward, None);
        push(&mut t, Execute, Forward, None);
        push(&mut t, Sync, Forward, None);
        let (v, _, _) = run(&mut t, b"12CZ");
        assert_eq!(v, vec![Drop, Fwd, Fwd, Fwd]);

        let mut t = Tracker::new();
        push(&mut t, Parse, Swallow, Some(7));
        push(&mut t, Bind, Forward, None);
        push(&mut t, Sync, Forward, None);
        let (v, _, unprepared) = run(&mut t, b"EZ");
        assert_eq!(v, vec![Fwd, Fwd]);
        assert_eq!(unprepared, vec![7]);
        assert!(t.is_idle());
    }

    #[test]
    fn synthesized_parse_complete_lands_in_order() {
        let mut t = Tracker::new();
        // Nothing in flight: the synthetic answer is due at once.
        let out = push(&mut t, Parse, Synthesize, Some(1));
        assert_eq!(&out[..], b"1\0\0\0\x04");
        assert!(t.is_idle());

        // Behind an Execute: due only once the Execute is answered.
        push(&mut t, Execute, Forward, None);
        let out = push(&mut t, Parse, Synthesize, Some(1));
        assert!(out.is_empty());
        push(&mut t, Bind, Forward, None);
        push(&mut t, Sync, Forward, None);
        let (_, out, _) = run(&mut t, b"D");
        assert!(out.is_empty());
        let (_, out, _) = run(&mut t, b"C");
        assert_eq!(&out[..], b"1\0\0\0\x04");
        run(&mut t, b"2Z");
        assert!(t.is_idle());
    }

    #[test]
    fn error_skips_to_sync_and_drops_synthetic_answers() {
        let mut t = Tracker::new();
        push(&mut t, Bind, Forward, None);
        push(&mut t, Execute, Forward, None);
        push(&mut t, Parse, Synthesize, Some(3));
        push(&mut t, Parse, Swallow, Some(4));
        push(&mut t, Sync, Forward, None);
        let (v, out, unprepared) = run(&mut t, b"E");
        assert_eq!(v, vec![Fwd]);
        assert!(
            out.is_empty(),
            "the server skipped the Parse: no ParseComplete"
        );
        assert_eq!(unprepared, vec![4]);
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());
    }

    #[test]
    fn error_before_sync_was_sent_discards_until_sync() {
        let mut t = Tracker::new();
        push(&mut t, Bind, Forward, None);
        run(&mut t, b"E");
        assert!(t.is_idle());
        let mut out = BytesMut::new();
        let mut unprepared = Vec::new();
        t.push(Parse, Swallow, Some(9), &mut out, &mut unprepared);
        t.push(Execute, Forward, None, &mut out, &mut unprepared);
        assert_eq!(unprepared, vec![9]);
        assert!(t.is_idle());
        t.push(Sync, Forward, None, &mut out, &mut unprepared);
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());
    }

    #[test]
    fn a_stand_in_error_is_replaced_and_the_rest_is_the_servers() {
        let ours = Bytes::from_static(b"E\0\0\0\x04");
        // Simple query: error replaced, ReadyForQuery forwarded.
        let mut t = Tracker::new();
        t.push_replacing(Simple, ours.clone());
        let (v, _, _) = run(&mut t, b"EZ");
        assert_eq!(v, vec![Verdict::Replace(ours.clone()), Fwd]);
        assert!(t.is_idle());

        // Extended: the stand-in Parse fails, the server skips to Sync.
        let mut t = Tracker::new();
        t.push_replacing(Parse, ours.clone());
        push(&mut t, Bind, Forward, None);
        push(&mut t, Execute, Forward, None);
        push(&mut t, Sync, Forward, None);
        let (v, _, _) = run(&mut t, b"EZ");
        assert_eq!(v, vec![Verdict::Replace(ours), Fwd]);
        assert!(t.is_idle());
    }

    #[test]
    fn async_messages_are_not_answers() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        run(&mut t, b"NSA");
        assert_eq!(t.pending(), 1);
        let (v, _, _) = run(&mut t, b"A");
        assert_eq!(v, vec![Fwd]);
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_answer() {
        // tokio-postgres: Bind, Execute, Sync, then the data once CopyInResponse arrived.
        for end in [b'C', b'E'] {
            let mut t = Tracker::new();
            for r in [Bind, Execute, Sync] {
                push(&mut t, r, Forward, None);
            }
            run(&mut t, b"2G");
            push(&mut t, Sync, Forward, None); // ignored by the server in copy-in mode
            push(&mut t, CopyEnd, Forward, None);
            push(&mut t, Sync, Forward, None);
            // CommandComplete after CopyDone, or an error after CopyFail.
            run(&mut t, &[end]);
            assert_eq!(t.pending(), 1);
            run(&mut t, b"Z");
            assert!(t.is_idle(), "after {}", end as char);
        }

        // The same messages pipelined before the server's CopyInResponse.
        let mut t = Tracker::new();
        for r in [Bind, Execute, Sync, CopyEnd, Sync] {
            push(&mut t, r, Forward, None);
        }
        run(&mut t, b"2GC");
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());

        // COPY by simple query: nothing to forget.
        let mut t = Tracker::new();
        push(&mut t, Simple, Forward, None);
        run(&mut t, b"G");
        push(&mut t, CopyEnd, Forward, None);
        run(&mut t, b"C");
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());

        // A COPY that fails before copy-in mode leaves no marker behind.
        let mut t = Tracker::new();
        push(&mut t, Simple, Forward, None);
        push(&mut t, CopyEnd, Forward, None);
        run(&mut t, b"EZ");
        assert!(t.is_idle());
    }

    #[test]
    fn error_at_sync_is_not_a_skip() {
        // A commit failing at Sync time: error then ReadyForQuery.
        let mut t = Tracker::new();
        push(&mut t, Sync, Forward, None);
        run(&mut t, b"E");
        assert_eq!(t.pending(), 1);
        run(&mut t, b"Z");
        assert!(t.is_idle());
    }

    #[test]
    fn job_tags_follow_the_answers() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        push(&mut t, Bind, Forward, None);
        push(&mut t, DescribePortal, Swallow, None);
        assert!(t.tag_last(7));
        assert!(!t.tag_last(8), "already tagged");
        push(&mut t, Execute, Forward, None);
        assert!(t.tag_last(9));
        push(&mut t, Sync, Forward, None);
        run(&mut t, b"12");
        assert_eq!(t.head_job(), 7);
        run(&mut t, b"T");
        assert_eq!(t.head_job(), 9);
        assert!(!t.has_job(7) && t.has_job(9));
        run(&mut t, b"DDC");
        assert!(!t.has_job(9));
        run(&mut t, b"Z");
        assert!(t.is_idle());

        // A request the server will skip (after an error, before Sync) takes no tag, and a
        // synthesized answer never does.
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        run(&mut t, b"E");
        push(&mut t, Execute, Forward, None);
        assert!(!t.tag_last(1));
        push(&mut t, Sync, Forward, None);
        push(&mut t, Close, Synthesize, None);
        assert!(!t.tag_last(2));

        // A failed request and those skipped after it are reported by tag.
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        assert!(t.tag_last(5));
        push(&mut t, Bind, Forward, None);
        push(&mut t, Execute, Forward, None);
        assert!(t.tag_last(6));
        push(&mut t, Sync, Forward, None);
        run(&mut t, b"E");
        assert_eq!(t.take_failed_jobs(), vec![5, 6]);
        assert!(t.take_failed_jobs().is_empty());
    }

    #[test]
    fn a_lost_server_fails_every_tagged_request_and_starts_clean() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        assert!(t.tag_last(3));
        push(&mut t, Execute, Forward, None);
        assert!(t.tag_last(4));
        run(&mut t, b"E");
        assert_eq!(t.take_failed_jobs(), vec![3, 4]);
        // Skipping to a Sync not sent yet: what comes before it is discarded.
        push(&mut t, Bind, Forward, None);
        push(&mut t, Execute, Forward, None);
        assert!(!t.tag_last(5));
        assert!(t.is_idle());
        push(&mut t, Sync, Forward, None);
        assert_eq!(t.pending(), 1);
        push(&mut t, Simple, Forward, None);
        assert!(t.tag_last(6));
        t.reset();
        assert!(t.is_idle());
        assert_eq!(t.take_failed_jobs(), vec![6]);
        // Nothing of the old server's state is left: a new request is recorded and answered.
        push(&mut t, Simple, Forward, None);
        assert!(t.tag_last(7));
        let (v, _, _) = run(&mut t, b"TDCZ");
        assert_eq!(v, vec![Fwd, Fwd, Fwd, Fwd]);
        assert!(t.is_idle());
        assert!(t.take_failed_jobs().is_empty());
    }

    #[test]
    fn a_failed_simple_query_is_answered_not_failed() {
        let mut t = Tracker::new();
        push(&mut t, Simple, Forward, None);
        assert!(t.tag_last(1));
        run(&mut t, b"E");
        assert!(t.has_job(1), "its answer goes on to ReadyForQuery");
        assert!(t.take_failed_jobs().is_empty());
        run(&mut t, b"Z");
        assert!(t.is_idle());
        // No skipping after it: the next extended request is recorded.
        push(&mut t, Parse, Forward, None);
        assert!(t.tag_last(2));
    }

    #[test]
    fn stand_ins_the_server_will_skip_are_not_recorded() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, None);
        run(&mut t, b"E");
        t.push_replacing(Bind, Bytes::from_static(b"ours"));
        assert!(t.is_idle(), "discarded with the rest until Sync");
        push(&mut t, Sync, Forward, None);
        assert_eq!(t.pending(), 1);
        let (v, _, _) = run(&mut t, b"Z");
        assert_eq!(v, vec![Fwd]);
        assert!(t.is_idle());
        // Once the Sync is answered the stand-in's error is the gateway's.
        t.push_replacing(Bind, Bytes::from_static(b"ours"));
        push(&mut t, Sync, Forward, None);
        let (v, _, _) = run(&mut t, b"EZ");
        assert_eq!(v, vec![Verdict::Replace(Bytes::from_static(b"ours")), Fwd]);
    }

    #[test]
    fn parses_the_server_skips_or_fails_are_unprepared() {
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, Some(10));
        push(&mut t, Parse, Swallow, Some(11));
        push(&mut t, Bind, Forward, None);
        push(&mut t, Sync, Forward, None);
        let (_, _, unprepared) = run(&mut t, b"E");
        assert_eq!(unprepared, vec![10, 11]);
        // While skipping, a Parse pushed before the Sync goes out is unprepared at once.
        let mut t = Tracker::new();
        push(&mut t, Parse, Forward, Some(1));
        run(&mut t, b"E");
        let mut out = BytesMut::new();
        let mut unprepared = Vec::new();
        t.push(Parse, Swallow, Some(12), &mut out, &mut unprepared);
        assert_eq!(unprepared, vec![12]);
        t.push(Parse, Synthesize, Some(13), &mut out, &mut unprepared);
        assert_eq!(
            unprepared,
            vec![12],
            "a synthesized Parse needs the server to have it"
        );
    }
}
