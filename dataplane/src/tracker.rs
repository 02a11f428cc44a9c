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
    /// The proxy answered it without the server (ParseComplete, CloseComplete, or for a Sync
    /// while no server is held, ReadyForQuery outside a transaction).
    Synthesize,
    /// The proxy sent it in place of part of a simple Query: the client gets the answer as a
    /// simple Query's (a RowDescription, never a NoData).
    AsSimple,
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
    /// Statement ids whose Parse the server completed, since the last call to
    /// [`Tracker::take_parsed`].
    parsed: Vec<u64>,
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

    /// Whether the server discards what it gets until the next Sync (an extended-protocol
    /// error came and no Sync was sent since).
    pub fn skipping(&self) -> bool {
        self.skipping
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

    /// Takes the ids of statements the server parsed since the last call.
    pub fn take_parsed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.parsed)
    }

    /// Whether nothing is pending and no error has the server skipping to a Sync.
    pub fn is_settled(&self) -> bool {
        self.queue.is_empty() && !self.skipping && !self.copy_in
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
            let done = self.queue.pop_front().expect("head exists");
            if done.request == Request::Parse && delivery != Delivery::Synthesize {
                self.parsed.extend(done.statement);
            }
        } else if tag == COPY_IN {
            self.enter_copy_in();
        }
        let verdict = if tag == ERROR_RESPONSE {
            on_error
        } else if delivery == Delivery::Swallow
            || (delivery == Delivery::AsSimple && tag == NO_DATA)
        {
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
                // Only when no server is held (transaction pooling): outside a transaction.
                Request::Sync => encode::ready_for_query(to_client, b'I'),
                Request::Parse => encode::parse_complete(to_client),
                Request::Close => encode::close_complete(to_client),
                other => debug_assert!(false, "cannot synthesize {other:?}"),
            }
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
