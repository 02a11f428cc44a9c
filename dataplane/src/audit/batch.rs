//! The batcher thread: records from the cores into sealed, numbered batches, spooled in order.

use super::*;

/// The batch being built: its JSON body so far.
struct Building {
    ordinal: u64,
    body: Vec<u8>,
    records: usize,
    marker_loss: u64,
    opened: Instant,
}

pub(super) struct Batcher {
    pub(super) rx: Receiver<Msg>,
    pub(super) shared: Arc<Shared>,
    pub(super) node_id: String,
    pub(super) run_id: String,
    pub(super) next_ordinal: u64,
    pub(super) max_records: usize,
    pub(super) max_bytes: usize,
    pub(super) max_delay: Duration,
    /// Channel drops already reported (or being reported) by a marker.
    pub(super) seen_channel_drops: u64,
    /// One record's JSON, before it goes into the body.
    pub(super) scratch: Vec<u8>,
}

impl Batcher {
    pub(super) fn run(mut self) {
        let mut open: Option<Building> = None;
        let mut drop_log = RateLimit::default();
        loop {
            let wait = match &open {
                Some(b) => (b.opened + self.max_delay).saturating_duration_since(Instant::now()),
                None => IDLE_TICK,
            };
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Record(r)) => self.add(&mut open, *r),
                Ok(Msg::Flush(reply)) => {
                    self.seal(&mut open);
                    let _ = reply.send(self.shared.lock().last_queued);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if open.is_some() {
                        self.seal(&mut open);
                    } else {
                        self.marker_only_batch(&mut open);
                    }
                }
            }
            let drops = self
                .shared
                .stats
                .dropped_channel_full
                .load(Ordering::Relaxed);
            if drops > self.seen_channel_drops && drop_log.ready() {
                tracing::error!(
                    dropped_total = drops,
                    "audit channel full: records dropped on the cores; a loss marker will report them"
                );
            }
        }
        // Stopping: take what the cores queued ahead of the stop, then seal.
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Record(r) => self.add(&mut open, *r),
                Msg::Flush(reply) => {
                    self.seal(&mut open);
                    let _ = reply.send(self.shared.lock().last_queued);
                }
                Msg::Stop => {}
            }
        }
        self.seal(&mut open);
        self.marker_only_batch(&mut open);
        self.shared.lock().batcher_done = true;
        self.shared.work.notify_all();
    }

    fn add(&mut self, open: &mut Option<Building>, r: AuditRecord) {
        add(&self.shared.stats.accepted, 1);
        if !r.has_known_verdict() {
            self.reject_record(&r);
            return;
        }
        self.scratch.clear();
        if serde_json::to_writer(&mut self.scratch, &r).is_err() {
            // Serializing plain strings and numbers cannot fail; keep the count honest anyway.
            add(&self.shared.stats.rejected_records, 1);
            return;
        }
        if let Some(b) = open {
            // `,` before it and `]}` after it.
            if b.records > 0 && b.body.len() + self.scratch.len() + 3 > self.max_bytes {
                self.seal(open);
            }
        }
        let b = open.get_or_insert_with(|| {
            let ordinal = self.next_ordinal;
            self.next_ordinal += 1;
            let mut b = Building {
                ordinal,
                body: Vec::with_capacity(self.max_bytes.min(1 << 20)),
                records: 0,
                marker_loss: 0,
                opened: Instant::now(),
            };
            begin_body(
                &mut b.body,
                &format!("{}-{ordinal}", self.run_id),
                &self.node_id,
            );
            b
        });
        if b.records == 0 && b.marker_loss == 0 {
            let loss = self.take_loss();
            if loss > 0 {
                b.marker_loss = loss;
                let _ = serde_json::to_writer(&mut b.body, &loss_marker(&self.node_id, loss));
                b.body.push(b',');
                add(&self.shared.stats.loss_markers, 1);
            }
        }
        if b.records > 0 {
            b.body.push(b',');
        }
        b.body.extend_from_slice(&self.scratch);
        b.records += 1;
        if b.records >= self.max_records || b.body.len() + 2 >= self.max_bytes {
            self.seal(open);
        }
    }

    /// Records dropped since the last marker: channel drops (from the stats) and spool drops
    /// (from the queue).
    fn take_loss(&mut self) -> u64 {
        let drops = self
            .shared
            .stats
            .dropped_channel_full
            .load(Ordering::Relaxed);
        let channel = drops - self.seen_channel_drops;
        self.seen_channel_drops = drops;
        channel + std::mem::take(&mut self.shared.lock().unreported_loss)
    }

    /// A batch holding only a loss marker, when records were lost and nothing else is being
    /// sent, and the control plane answers (otherwise the marker would just be dropped again).
    fn marker_only_batch(&mut self, open: &mut Option<Building>) {
        let healthy = !self.shared.lock().degraded;
        let pending = self
            .shared
            .stats
            .dropped_channel_full
            .load(Ordering::Relaxed)
            > self.seen_channel_drops
            || self.shared.lock().unreported_loss > 0;
        if open.is_some() || !pending || !healthy {
            return;
        }
        let loss = self.take_loss();
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let mut body = Vec::new();
        begin_body(
            &mut body,
            &format!("{}-{ordinal}", self.run_id),
            &self.node_id,
        );
        let _ = serde_json::to_writer(&mut body, &loss_marker(&self.node_id, loss));
        add(&self.shared.stats.loss_markers, 1);
        *open = Some(Building {
            ordinal,
            body,
            records: 0,
            marker_loss: loss,
            opened: Instant::now(),
        });
        self.seal(open);
    }

    fn seal(&mut self, open: &mut Option<Building>) {
        let Some(mut b) = open.take() else {
            return;
        };
        b.body.extend_from_slice(b"]}");
        let batch = Batch {
            ordinal: b.ordinal,
            body: Arc::new(b.body),
            records: b.records,
            marker_loss: b.marker_loss,
        };
        let shared = &self.shared;
        shared
            .lock()
            .push(batch, &shared.stats, shared.memory_max_bytes);
        shared.work.notify_one();
        // A batch dropped on arrival lets a flush waiting for it finish.
        shared.progress.notify_all();
    }

    /// A record the control plane would refuse (its verdict is not one of `allow`, `deny`,
    /// `review`) would take its whole batch down with it: it goes to `rejected.jsonl` alone.
    fn reject_record(&mut self, r: &AuditRecord) {
        let batch = AuditBatch {
            batch_id: format!("{}-rejected-{}", self.run_id, self.next_ordinal),
            node_id: self.node_id.clone(),
            records: vec![r.clone()],
        };
        let line = serde_json::to_vec(&batch).unwrap_or_default();
        let shared = &self.shared;
        add(&shared.stats.rejected_records, 1);
        tracing::error!(
            verdict = %r.verdict,
            "audit record with an unknown verdict: kept in {REJECTED_FILE}, not shipped"
        );
        shared.lock().spool.reject(&line);
    }
}

/// `{"batch_id":"…","node_id":"…","records":[`
pub(super) fn begin_body(body: &mut Vec<u8>, batch_id: &str, node_id: &str) {
    body.extend_from_slice(b"{\"batch_id\":");
    let _ = serde_json::to_writer(&mut *body, batch_id);
    body.extend_from_slice(b",\"node_id\":");
    let _ = serde_json::to_writer(&mut *body, node_id);
    body.extend_from_slice(b",\"records\":[");
}
