//! The shipper's sender thread: posts the queue's head batch to the control plane, retries
//! with backoff while it is away, and sets aside batches it refuses.

use super::*;

pub(super) struct SenderLoop {
    pub(super) shared: Arc<Shared>,
    pub(super) client: sluice_client::Client,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
}

/// How the control plane answered one batch.
enum Outcome {
    /// Stored (or stored before: `duplicate`).
    Acked { duplicate: bool },
    /// Refused for what it is; a retry would get the same answer.
    Refused { status: u16, message: String },
    /// No answer, or one worth retrying.
    Failed {
        status: Option<u16>,
        message: String,
    },
}

impl SenderLoop {
    pub(super) fn run(self) {
        let shared = &*self.shared;
        let stats = &*shared.stats;
        let mut backoff = self.backoff_min;
        let mut failing_since: Option<Instant> = None;
        loop {
            let head = {
                let mut q = shared.lock();
                loop {
                    let past_deadline = q.stop_deadline.is_some_and(|d| Instant::now() >= d);
                    if past_deadline && q.batcher_done {
                        break None;
                    }
                    if let Some(h) = q.head() {
                        if !past_deadline {
                            break Some(h);
                        }
                    } else if q.batcher_done {
                        break None;
                    }
                    // Wait for a batch, the batcher's end, or the stop deadline.
                    let wait = match q.stop_deadline {
                        Some(d) => d.saturating_duration_since(Instant::now()),
                        None => Duration::from_secs(3600),
                    };
                    q = shared
                        .work
                        .wait_timeout(q, wait.max(Duration::from_millis(1)))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            let Some(head) = head else { break };
            let body = match &head.job {
                Job::Memory(b) => Ok(b.clone()),
                Job::Spooled(path, offset, len) => read_line(path, *offset, *len).map(Arc::new),
            };
            let outcome = match body {
                Ok(body) => self.post(&body),
                Err(e) => {
                    // The spool file cannot be read back (deleted or damaged from outside):
                    // nothing to send. Count it as corrupt and move on rather than jam.
                    tracing::error!(error = %e, "audit spool batch unreadable; skipped");
                    add(&stats.spool_corrupt, 1);
                    let mut q = shared.lock();
                    q.unreported_loss += count(head.records);
                    q.pop_head(head.ordinal, stats);
                    drop(q);
                    shared.progress.notify_all();
                    continue;
                }
            };
            match outcome {
                Outcome::Acked { duplicate } => {
                    if let Some(t) = failing_since.take() {
                        tracing::info!(
                            after_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "control plane acknowledges audit batches again"
                        );
                    }
                    backoff = self.backoff_min;
                    add(&stats.batches_shipped, 1);
                    add(&stats.records_shipped, count(head.records));
                    if duplicate {
                        add(&stats.duplicate_batches, 1);
                    }
                    let mut q = shared.lock();
                    q.pop_head(head.ordinal, stats);
                    q.degraded = false;
                    drop(q);
                    shared.progress.notify_all();
                }
                Outcome::Refused { status, message } => {
                    tracing::error!(
                        status,
                        %message,
                        records = head.records,
                        "control plane refused an audit batch; kept in {REJECTED_FILE}"
                    );
                    add(&stats.rejected_batches, 1);
                    add(&stats.rejected_records, count(head.records));
                    let line = match &head.job {
                        Job::Memory(b) => Ok(b.as_ref().clone()),
                        Job::Spooled(p, o, l) => read_line(p, *o, *l),
                    };
                    let mut q = shared.lock();
                    if let Ok(line) = line {
                        q.spool.reject(&line);
                    }
                    q.pop_head(head.ordinal, stats);
                    drop(q);
                    shared.progress.notify_all();
                }
                Outcome::Failed { status, message } => {
                    add(&stats.send_failures, 1);
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(
                            status,
                            %message,
                            "audit batch not acknowledged; spooling until the control plane answers"
                        );
                    } else {
                        tracing::debug!(status, %message, "audit batch not acknowledged");
                    }
                    let mut q = shared.lock();
                    q.degraded = true;
                    q.spill_memory(stats);
                    // Back off, unless told to stop; the batch stays at the head.
                    let wait_until = Instant::now() + backoff;
                    while q.stop_deadline.is_none_or(|d| Instant::now() < d) {
                        let left = wait_until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let left = match q.stop_deadline {
                            Some(d) => left.min(d.saturating_duration_since(Instant::now())),
                            None => left,
                        };
                        q = shared
                            .work
                            .wait_timeout(q, left.max(Duration::from_millis(1)))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
        // Stopping: whatever is still in memory goes to the spool.
        let mut q = shared.lock();
        q.spill_memory(stats);
        drop(q);
        shared.progress.notify_all();
    }

    fn post(&self, body: &[u8]) -> Outcome {
        let answer = match self.client.ship_audit(body) {
            Ok(a) => a,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    message: e.to_string(),
                }
            }
        };
        match answer.status {
            // 200 is sent only after the commit; an unreadable body does not undo it.
            200 => Outcome::Acked {
                duplicate: answer.json::<BatchAck>().is_ok_and(|a| a.duplicate),
            },
            status @ (400 | 413 | 422) => Outcome::Refused {
                status,
                message: answer.error_message(MAX_ERROR_MESSAGE),
            },
            status => Outcome::Failed {
                status: Some(status),
                message: answer.error_message(MAX_ERROR_MESSAGE),
            },
        }
    }
}

/// Longest control-plane error message kept (in logs and the rejected-batch file).
const MAX_ERROR_MESSAGE: usize = 500;
