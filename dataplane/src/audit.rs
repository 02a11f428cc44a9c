//! Audit shipping: one record per statement from the cores, batched, sent to the control
//! plane, and spooled to disk while it is away.
//!
//! ```text
//!  core 0 ─┐ AuditSink::record                   sealed batches, oldest first
//!  core 1 ─┼─▶ bounded channel ─▶ batcher ─▶ [ spool segments on disk | memory ] ─▶ sender ─▶ POST /v1/audit/batches
//!  core n ─┘  (try_send)          thread        (older)               (newer)     thread
//! ```
//!
//! [`AuditShipper::start`] loads the spool a previous run left, starts two threads and returns
//! the handle and an [`AuditSink`] (cheap to clone: one per core).
//!
//! - **Cores** call [`AuditSink::record`]: a `try_send` of a boxed record on a bounded
//!   crossbeam channel ([`ShipperConfig::channel_capacity`], 65,536 by default). It never
//!   blocks and does no I/O, logging or allocation beyond the box. When the channel is full the
//!   record is dropped and counted ([`AuditStats::dropped_channel_full`]); the batcher then
//!   logs the loss and puts a *loss marker* record into the stream (below), so the gap shows in
//!   the audit trail and not only in a metric. The channel is large and drained by a thread
//!   that never waits on the network, so it fills only if the disk cannot keep up.
//! - **The batcher** serializes each record as it arrives into the JSON body of the batch being
//!   built (the bytes sent, and the bytes spooled, are built once) and seals the batch at
//!   [`max_batch_records`](ShipperConfig::max_batch_records), at
//!   [`max_batch_bytes`](ShipperConfig::max_batch_bytes), or [`max_delay`](ShipperConfig::max_delay)
//!   after its first record. Sealing gives the batch its id: `<run id>-<sequence>`, where the
//!   run id is 128 random bits drawn at start, so ids never repeat across nodes or restarts
//!   without persisting a counter. The id is inside the batch's bytes from then on.
//! - **The queue** holds sealed batches in order: spooled ones (older) then in-memory ones
//!   (newer). While the control plane answers, batches wait in memory; once a send fails, every
//!   batch in memory and every new one goes to the spool until a send succeeds again, and when
//!   memory holds more than [`memory_max_bytes`](ShipperConfig::memory_max_bytes) the oldest
//!   spill to the spool. Either way the spool stays older than memory, so order is kept.
//! - **The sender** posts the oldest batch, retries it with capped exponential backoff until
//!   the control plane answers, and only then removes it. `200` (stored, or `duplicate: true`
//!   for an id seen before) acknowledges it. `400`, `413` and `422` mean the batch itself is
//!   refused and a retry would get the same answer: it is appended to `rejected.jsonl` in the
//!   spool directory (never silently discarded), logged and counted, and the queue moves on.
//!   Anything else (no answer, timeouts, `401`/`403` while a token is being fixed, `5xx`) is
//!   retried.
//!
//! # The spool
//!
//! A directory holding `LOCK` (an exclusive `flock`, so two processes never share a spool),
//! segments `audit-<n>.jsonl` (one batch per line, exactly the body posted, each at most
//! [`segment_max_bytes`](ShipperConfig::segment_max_bytes) before the next segment starts) and
//! `rejected.jsonl`. Segments in total stay under
//! [`spool_max_bytes`](ShipperConfig::spool_max_bytes); a batch that does not fit is dropped,
//! logged and counted in [`AuditStats::dropped_spool_full`], and reported by a loss marker once
//! there is room again (a data plane that stops while its spool is still full leaves only the
//! log line and the counter). At start the segments left by a previous run are read, oldest
//! first, and queued ahead of anything new; each process appends to segments of its own (a
//! new number), never to an old one.
//!
//! # Why a crash neither loses a spooled batch nor stores one twice
//!
//! 1. A batch's bytes, id included, are fixed when it is sealed. Every send of it, from memory
//!    or from the spool, in this process or the next, sends the same id. The control plane
//!    stores an id at most once (its key, in the transaction that stores the records) and
//!    answers a repeat `200 duplicate: true`. So resending is always safe and the only fault
//!    to avoid is not sending: when in doubt, the shipper resends.
//! 2. Appending a batch writes the line and its `\n`, then `fdatasync`s, before the batch
//!    counts as spooled; creating a segment also syncs the directory. A crash during an append
//!    leaves at most a torn last line in the segment that was being written (no `\n`, or not
//!    a JSON batch). Loading detects it, logs it, counts it
//!    ([`AuditStats::spool_corrupt`]) and cuts the segment there; the lines before it are
//!    intact because each was synced before the next was written, and since the next run
//!    writes to a new segment nothing is ever appended after a torn line. A complete line that
//!    does not parse (damage from outside) is skipped the same way, and its segment is kept as
//!    `audit-<n>.jsonl.corrupt` for inspection instead of being deleted once drained.
//! 3. A batch leaves the queue only after an answer: acknowledged, or refused and written to
//!    `rejected.jsonl` first. A segment is deleted only once every batch in it has left the
//!    queue. A crash after the control plane committed a batch but before its answer arrived,
//!    or after the answer but before the segment was deleted, leaves the batch in the spool:
//!    the next run sends it again and the control plane answers it as a duplicate (point 1),
//!    so it is counted once. A crash after the delete has nothing left to send, and everything
//!    in the deleted segment was acknowledged.
//!
//! What a crash (not a clean shutdown) can lose is what was only in memory: records still in
//! the channel, the batch being built, and sealed batches not yet spooled. While the control
//! plane answers that is at most [`max_delay`](ShipperConfig::max_delay) plus one request of
//! records (bounded by `memory_max_bytes`); while it is away every batch is spooled as it is
//! sealed. Making each statement durable on its own would cost an fsync per statement on the
//! core, which is not this design. [`AuditShipper::shutdown`] loses nothing: it seals what the
//! channel holds, ships what it can within the grace period, and spools the rest.
//!
//! # Loss markers
//!
//! Records dropped (channel full, spool full) are reported in the audit trail itself by a
//! record with `identity` [`LOSS_MARKER_IDENTITY`], `rule_id` [`LOSS_MARKER_RULE`],
//! `verdict` `deny`, `rows` the number of records lost since the last marker, and the
//! explanation in `statement` and `error`. A marker rides at the head of the next batch (or a
//! batch of its own after a quiet second); if that batch is dropped too, its count is carried
//! to the next marker.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use sluice_client::wire::audit::BatchAck;
pub use sluice_policy::audit::{AuditBatch, AuditRecord};

use spool::{read_line, Spool, REJECTED_FILE};

mod batch;
mod send;
mod spool;

#[cfg(test)]
use batch::begin_body;
use batch::Batcher;
use send::SenderLoop;

/// `identity` of a loss-marker record.
pub const LOSS_MARKER_IDENTITY: &str = "sluice:audit";
/// `rule_id` of a loss-marker record.
pub const LOSS_MARKER_RULE: &str = "sluice.audit.records_lost";
/// The largest batch body the control plane accepts by default (its audit body limit).
pub const CONTROL_PLANE_MAX_BATCH_BYTES: usize = 32 << 20;

/// How long the batcher waits for a record when no batch is open, so pending loss markers
/// still go out when the cores are quiet.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// At most one log line per this interval for each kind of repeated loss.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Where the shipper sends, where it spools, and its bounds.
#[derive(Clone)]
pub struct ShipperConfig {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:7070`.
    pub base_url: String,
    /// A node token (API role `node`); sent as a bearer token, never logged.
    pub node_token: String,
    /// This data plane's id, carried by every batch.
    pub node_id: String,
    /// The spool directory (created with mode 0700 if missing).
    pub spool_dir: PathBuf,
    /// Seal a batch at this many records (default 512).
    pub max_batch_records: usize,
    /// Seal a batch before its JSON body would pass this many bytes (default 1 MiB; at most
    /// [`CONTROL_PLANE_MAX_BATCH_BYTES`]). A single larger record makes a batch of its own.
    pub max_batch_bytes: usize,
    /// Seal a batch this long after its first record (default 200 ms).
    pub max_delay: Duration,
    /// Bound of the spool segments together (default 1 GiB); beyond it batches are dropped,
    /// counted and reported by a loss marker.
    pub spool_max_bytes: u64,
    /// Start a new segment past this size (default 8 MiB). A crash re-sends at most the
    /// acknowledged part of one segment, which the control plane answers as duplicates.
    pub segment_max_bytes: u64,
    /// Records the channel from the cores holds (default 65,536); a record that finds it full
    /// is dropped and counted.
    pub channel_capacity: usize,
    /// Sealed batches kept in memory while the control plane answers (default 16 MiB); past
    /// it the oldest go to the spool.
    pub memory_max_bytes: usize,
    /// Connect and whole-request timeout of one send (default 10 s).
    pub request_timeout: Duration,
    /// First retry delay after a failed send; doubles up to `backoff_max` (default 100 ms).
    pub backoff_min: Duration,
    /// Longest retry delay (default 10 s).
    pub backoff_max: Duration,
    /// Which certificates an `https://` server must present (default: the webpki roots).
    pub trust: sluice_client::Trust,
}

impl std::fmt::Debug for ShipperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperConfig")
            .field("base_url", &self.base_url)
            .field(
                "node_token",
                &sluice_auth::token::fingerprint(&self.node_token),
            )
            .field("node_id", &self.node_id)
            .field("spool_dir", &self.spool_dir)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_delay", &self.max_delay)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ShipperConfig {
    /// A configuration with the default bounds (see each field).
    pub fn new(base_url: &str, node_token: &str, node_id: &str, spool_dir: PathBuf) -> Self {
        ShipperConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            node_token: node_token.to_owned(),
            node_id: node_id.to_owned(),
            spool_dir,
            max_batch_records: 512,
            max_batch_bytes: 1 << 20,
            max_delay: Duration::from_millis(200),
            spool_max_bytes: 1 << 30,
            segment_max_bytes: 8 << 20,
            channel_capacity: 1 << 16,
            memory_max_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            trust: sluice_client::Trust::default(),
        }
    }

    fn validate(&self) -> Result<(), ShipperError> {
        let bad = |m: &str| Err(ShipperError::Config(m.to_owned()));
        if self.base_url.is_empty() {
            return bad("base_url must not be empty");
        }
        if self.node_id.is_empty() {
            return bad("node_id must not be empty");
        }
        if self.max_batch_records == 0 || self.channel_capacity == 0 {
            return bad("max_batch_records and channel_capacity must be at least 1");
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > CONTROL_PLANE_MAX_BATCH_BYTES {
            return bad("max_batch_bytes must be 1 byte to 32 MiB");
        }
        if self.max_delay.is_zero() || self.backoff_min.is_zero() {
            return bad("max_delay and backoff_min must be positive");
        }
        if self.segment_max_bytes == 0 {
            return bad("segment_max_bytes must be positive");
        }
        Ok(())
    }
}

/// Why the shipper could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// A setting is out of range.
    #[error("audit shipper: {0}")]
    Config(String),
    /// Another process (or shipper) holds the spool directory.
    #[error("audit spool {} is in use by another process", path.display())]
    SpoolLocked {
        /// The spool directory.
        path: PathBuf,
    },
    /// The spool directory could not be created, locked or read.
    #[error("audit spool {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The shipper's counters: plain relaxed atomics, for metrics and tests.
///
/// "Records" are statements' audit records; loss markers are counted apart.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records the batcher took from the channel.
    pub accepted: AtomicU64,
    /// Records refused by [`AuditSink::record`] because the channel was full.
    pub dropped_channel_full: AtomicU64,
    /// Records refused by [`AuditSink::record`] after the shipper stopped.
    pub dropped_after_shutdown: AtomicU64,
    /// Records in batches that did not fit in the spool.
    pub dropped_spool_full: AtomicU64,
    /// Batches the control plane acknowledged (stored now, or a duplicate of one stored before).
    pub batches_shipped: AtomicU64,
    /// Records in acknowledged batches (markers excluded).
    pub records_shipped: AtomicU64,
    /// Acknowledged batches the control plane had already stored (`duplicate: true`).
    pub duplicate_batches: AtomicU64,
    /// Sends that got no acknowledgement and will be retried.
    pub send_failures: AtomicU64,
    /// Batches the control plane refused (400, 413, 422), kept in `rejected.jsonl`.
    pub rejected_batches: AtomicU64,
    /// Records in refused batches, and records refused before batching (unknown verdict).
    pub rejected_records: AtomicU64,
    /// Bytes in spool segments now (acknowledged parts of a segment count until it is deleted).
    pub spool_bytes: AtomicU64,
    /// Batches in the spool waiting to be sent.
    pub spool_batches: AtomicU64,
    /// Batches written to the spool since start.
    pub spooled_batches: AtomicU64,
    /// Sealed batches waiting in memory.
    pub memory_batches: AtomicU64,
    /// Spool lines skipped at load: torn tails and damaged lines.
    pub spool_corrupt: AtomicU64,
    /// Spool writes or syncs that failed.
    pub spool_errors: AtomicU64,
    /// Loss markers put into the stream.
    pub loss_markers: AtomicU64,
}

/// A copy of [`AuditStats`] at one moment (the fields mean what they mean there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub dropped_channel_full: u64,
    pub dropped_after_shutdown: u64,
    pub dropped_spool_full: u64,
    pub batches_shipped: u64,
    pub records_shipped: u64,
    pub duplicate_batches: u64,
    pub send_failures: u64,
    pub rejected_batches: u64,
    pub rejected_records: u64,
    pub spool_bytes: u64,
    pub spool_batches: u64,
    pub spooled_batches: u64,
    pub memory_batches: u64,
    pub spool_corrupt: u64,
    pub spool_errors: u64,
    pub loss_markers: u64,
}

impl AuditStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: g(&self.accepted),
            dropped_channel_full: g(&self.dropped_channel_full),
            dropped_after_shutdown: g(&self.dropped_after_shutdown),
            dropped_spool_full: g(&self.dropped_spool_full),
            batches_shipped: g(&self.batches_shipped),
            records_shipped: g(&self.records_shipped),
            duplicate_batches: g(&self.duplicate_batches),
            send_failures: g(&self.send_failures),
            rejected_batches: g(&self.rejected_batches),
            rejected_records: g(&self.rejected_records),
            spool_bytes: g(&self.spool_bytes),
            spool_batches: g(&self.spool_batches),
            spooled_batches: g(&self.spooled_batches),
            memory_batches: g(&self.memory_batches),
            spool_corrupt: g(&self.spool_corrupt),
            spool_errors: g(&self.spool_errors),
            loss_markers: g(&self.loss_markers),
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn set(a: &AtomicU64, n: u64) {
    a.store(n, Ordering::Relaxed);
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What travels from the cores and the handle to the batcher.
enum Msg {
    /// Boxed so a channel slot is a pointer, not a ~370-byte record.
    Record(Box<AuditRecord>),
    /// Seal the open batch and answer with the ordinal of the last batch queued.
    Flush(Sender<u64>),
    /// Seal what the channel holds and stop.
    Stop,
}

/// Where a core sends its audit records. Cheap to clone; one per core.
#[derive(Clone)]
pub struct AuditSink {
    tx: Sender<Msg>,
    stats: Arc<AuditStats>,
}

impl AuditSink {
    /// Hands a record to the shipper. Never blocks and does no I/O: when the channel is full
    /// (or the shipper stopped) the record is dropped and counted
    /// ([`AuditStats::dropped_channel_full`], [`AuditStats::dropped_after_shutdown`]), and a
    /// loss marker in the audit trail reports the channel-full drops.
    pub fn record(&self, r: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => add(&self.stats.dropped_channel_full, 1),
            Err(TrySendError::Disconnected(_)) => add(&self.stats.dropped_after_shutdown, 1),
        }
    }

    /// The shipper's counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

/// The running shipper: flush, stats, shutdown. Dropping it shuts down with no grace period
/// (everything not yet acknowledged is spooled).
pub struct AuditShipper {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    batcher: Option<JoinHandle<()>>,
    sender: Option<JoinHandle<()>>,
}

impl AuditShipper {
    /// Locks and loads the spool directory, then starts the batcher and sender threads.
    /// Batches a previous run left in the spool are sent first, in order.
    pub fn start(cfg: ShipperConfig) -> Result<(AuditShipper, AuditSink), ShipperError> {
        cfg.validate()?;
        let stats = Arc::new(AuditStats::default());
        let spool = Spool::open(&cfg, stats.clone())?;
        let loaded = spool.entries.len();
        let last = spool.entries.back().map_or(0, |e| e.ordinal);
        if loaded > 0 {
            tracing::info!(
                batches = loaded,
                bytes = spool.bytes,
                dir = %cfg.spool_dir.display(),
                "audit spool from a previous run: sending it first"
            );
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                memory: VecDeque::new(),
                memory_bytes: 0,
                spool,
                degraded: false,
                last_queued: last,
                batcher_done: false,
                stop_deadline: None,
                unreported_loss: 0,
                spool_full_log: RateLimit::default(),
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            stats: stats.clone(),
            memory_max_bytes: cfg.memory_max_bytes,
        });
        let (tx, rx) = crossbeam_channel::bounded(cfg.channel_capacity);
        let run_id = format!("{:032x}", rand::random::<u128>());
        let client = sluice_client::Client::new(
            &cfg.base_url,
            &cfg.node_token,
            &cfg.trust,
            cfg.request_timeout,
        );
        let spawn_err = |source| ShipperError::Io {
            path: cfg.spool_dir.clone(),
            source,
        };
        let batcher = Batcher {
            rx,
            shared: shared.clone(),
            node_id: cfg.node_id.clone(),
            run_id,
            next_ordinal: last + 1,
            max_records: cfg.max_batch_records,
            max_bytes: cfg.max_batch_bytes,
            max_delay: cfg.max_delay,
            seen_channel_drops: 0,
            scratch: Vec::new(),
        };
        let batcher = std::thread::Builder::new()
            .name("sluice-audit-batch".into())
            .spawn(move || batcher.run())
            .map_err(spawn_err)?;
        let sender = SenderLoop {
            shared: shared.clone(),
            client,
            backoff_min: cfg.backoff_min,
            backoff_max: cfg.backoff_max,
        };
        let sender = match std::thread::Builder::new()
            .name("sluice-audit-send".into())
            .spawn(move || sender.run())
        {
            Ok(h) => h,
            Err(e) => {
                let _ = tx.send(Msg::Stop);
                let _ = batcher.join();
                return Err(spawn_err(e));
            }
        };
        tracing::info!(server = %cfg.base_url, node = %cfg.node_id, "audit shipper started");
        let sink = AuditSink {
            tx: tx.clone(),
            stats,
        };
        Ok((
            AuditShipper {
                tx,
                shared,
                batcher: Some(batcher),
                sender: Some(sender),
            },
            sink,
        ))
    }

    /// Another sink (for another core).
    pub fn sink(&self) -> AuditSink {
        AuditSink {
            tx: self.tx.clone(),
            stats: self.shared.stats.clone(),
        }
    }

    /// The counters, shared: keep the `Arc` to export them after the handle is gone.
    pub fn stats(&self) -> Arc<AuditStats> {
        self.shared.stats.clone()
    }

    /// Seals the open batch and waits until every batch queued so far (including a spool from
    /// a previous run) has left the queue: acknowledged, refused into `rejected.jsonl`, or
    /// dropped for lack of spool room. True when that happened within `timeout`; false when
    /// the control plane did not acknowledge in time (nothing is lost; shipping goes on).
    ///
    /// Records recorded before the call on the calling thread are included; records from
    /// other threads are included if they reached the channel first.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (reply, target) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Flush(reply), deadline).is_err() {
            return false;
        }
        let Ok(target) = target.recv_deadline(deadline) else {
            return false;
        };
        let q = self.shared.lock();
        let (q, _) = self
            .shared
            .progress
            .wait_timeout_while(q, deadline.saturating_duration_since(Instant::now()), |q| {
                q.done_through() < target
            })
            .unwrap_or_else(|p| p.into_inner());
        q.done_through() >= target
    }

    /// Stops: seals what the channel holds, keeps sending for up to `grace`, spools whatever
    /// is left, and joins both threads. A send in flight at the end of `grace` is waited for
    /// (at most the request timeout). Records recorded after this are dropped and counted.
    pub fn shutdown(mut self, grace: Duration) -> StatsSnapshot {
        self.stop(grace);
        self.shared.stats.snapshot()
    }

    fn stop(&mut self, grace: Duration) {
        if self.batcher.is_none() && self.sender.is_none() {
            return;
        }
        {
            let mut q = self.shared.lock();
            q.stop_deadline = Some(Instant::now() + grace);
        }
        self.shared.work.notify_all();
        // The batcher drains the channel continuously, so this waits only for records
        // already queued ahead of the stop.
        if self.tx.send(Msg::Stop).is_err() {
            tracing::error!("audit batcher is gone; records in its channel are lost");
        }
        if let Some(t) = self.batcher.take() {
            if t.join().is_err() {
                tracing::error!("audit batcher panicked");
                self.shared.lock().batcher_done = true;
                self.shared.work.notify_all();
            }
        }
        if let Some(t) = self.sender.take() {
            if t.join().is_err() {
                tracing::error!("audit sender panicked; batches in memory are lost");
            }
        }
        let s = self.shared.stats.snapshot();
        tracing::info!(
            shipped = s.batches_shipped,
            spooled_batches = s.spool_batches,
            spool_bytes = s.spool_bytes,
            "audit shipper stopped"
        );
    }
}

impl Drop for AuditShipper {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

// ---- the queue ---------------------------------------------------------------------------

struct Shared {
    queue: Mutex<Queue>,
    /// The sender waits here for batches, and sleeps its backoff here (woken to stop).
    work: Condvar,
    /// Flushes wait here; notified whenever a batch leaves the queue.
    progress: Condvar,
    stats: Arc<AuditStats>,
    memory_max_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A sealed batch waiting in memory.
struct Batch {
    ordinal: u64,
    /// The JSON body, as posted and as spooled (without the newline).
    body: Arc<Vec<u8>>,
    /// Statement records (the marker, if any, excluded).
    records: usize,
    /// Records lost before this batch that its marker reports (0: no marker).
    marker_loss: u64,
}

/// Sealed batches in order: `spool.entries` (older) then `memory` (newer). Ordinals increase
/// along the queue; only the head ever leaves it, except for drops when spilling.
struct Queue {
    memory: VecDeque<Batch>,
    memory_bytes: usize,
    spool: Spool,
    /// The last send failed: new batches go straight to the spool.
    degraded: bool,
    /// Ordinal of the last batch queued (or dropped on arrival).
    last_queued: u64,
    batcher_done: bool,
    stop_deadline: Option<Instant>,
    /// Records dropped and not yet reported by a loss marker (channel drops are counted by
    /// the batcher from the stats).
    unreported_loss: u64,
    spool_full_log: RateLimit,
}

/// The head of the queue, taken to be sent without holding the lock.
enum Job {
    Memory(Arc<Vec<u8>>),
    Spooled(PathBuf, u64, usize),
}

struct Head {
    ordinal: u64,
    records: usize,
    job: Job,
}

impl Queue {
    /// Every batch with an ordinal up to this one has left the queue.
    fn done_through(&self) -> u64 {
        match (self.spool.entries.front(), self.memory.front()) {
            (Some(e), _) => e.ordinal - 1,
            (None, Some(b)) => b.ordinal - 1,
            (None, None) => self.last_queued,
        }
    }

    fn head(&self) -> Option<Head> {
        if let Some(e) = self.spool.entries.front() {
            return Some(Head {
                ordinal: e.ordinal,
                records: e.records,
                job: Job::Spooled(self.spool.segment_path(e.segment), e.offset, e.len),
            });
        }
        self.memory.front().map(|b| Head {
            ordinal: b.ordinal,
            records: b.records,
            job: Job::Memory(b.body.clone()),
        })
    }

    /// Removes the head, which must be `ordinal` (it may have moved from memory to the spool
    /// while it was being sent; nothing else removes the head).
    fn pop_head(&mut self, ordinal: u64, stats: &AuditStats) {
        if self.spool.entries.front().map(|e| e.ordinal) == Some(ordinal) {
            self.spool.pop_front();
        } else if self.memory.front().map(|b| b.ordinal) == Some(ordinal) {
            if let Some(b) = self.memory.pop_front() {
                self.memory_bytes -= b.body.len();
            }
            set(&stats.memory_batches, count(self.memory.len()));
        } else {
            debug_assert!(false, "batch {ordinal} left the queue twice");
        }
    }

    /// Queues a sealed batch: to memory while the control plane answers, else to the spool.
    fn push(&mut self, b: Batch, stats: &AuditStats, memory_max_bytes: usize) {
        self.last_queued = b.ordinal;
        if self.degraded {
            self.spill(vec![b], stats);
            return;
        }
        self.memory_bytes += b.body.len();
        self.memory.push_back(b);
        if self.memory_bytes > memory_max_bytes {
            let mut out = Vec::new();
            while self.memory_bytes > memory_max_bytes / 2 {
                let Some(b) = self.memory.pop_front() else {
                    break;
                };
                self.memory_bytes -= b.body.len();
                out.push(b);
            }
            self.spill(out, stats);
        }
        set(&stats.memory_batches, count(self.memory.len()));
    }

    /// Moves every batch in memory to the spool (after a failed send, and at shutdown).
    fn spill_memory(&mut self, stats: &AuditStats) {
        let all: Vec<Batch> = self.memory.drain(..).collect();
        self.memory_bytes = 0;
        set(&stats.memory_batches, 0);
        self.spill(all, stats);
    }

    /// Appends batches (all older than what stays in memory) to the spool; those that do
    /// not fit are dropped and counted.
    fn spill(&mut self, batches: Vec<Batch>, stats: &AuditStats) {
        if batches.is_empty() {
            return;
        }
        let dropped = self.spool.append(batches);
        let mut lost = 0;
        for b in &dropped {
            lost += count(b.records);
            self.unreported_loss += count(b.records) + b.marker_loss;
        }
        if !dropped.is_empty() {
            add(&stats.dropped_spool_full, lost);
            if self.spool_full_log.ready() {
                tracing::error!(
                    batches = dropped.len(),
                    records = lost,
                    spool_bytes = self.spool.bytes,
                    spool_max_bytes = self.spool.max_bytes,
                    "audit spool full (or failing): records dropped and counted in \
                     sluice_audit_records_dropped_total; a loss marker reports them once there is \
                     room (none if the data plane stops first)"
                );
            }
        }
    }
}

/// The record that reports `lost` records in the audit trail (see the module documentation).
pub fn loss_marker(node_id: &str, lost: u64) -> AuditRecord {
    let text = format!(
        "sluice: {lost} audit record(s) were lost on data plane {node_id} (shipper channel or \
         spool full); see its audit drop counters"
    );
    AuditRecord {
        time_ms: now_ms(),
        identity: LOSS_MARKER_IDENTITY.into(),
        connection: String::new(),
        statement: format!("-- {text}"),
        verdict: "deny".into(),
        rule_id: Some(LOSS_MARKER_RULE.into()),
        rows: Some(i64::try_from(lost).unwrap_or(i64::MAX)),
        error: Some(text),
        ..AuditRecord::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// True at most once per [`LOG_EVERY`].
#[derive(Default)]
struct RateLimit(Option<Instant>);

impl RateLimit {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

#[cfg(test)]
mod tests;
