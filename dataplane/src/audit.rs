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
//! there is room again. At start the segments left by a previous run are read, oldest first,
//! and queued ahead of anything new; each process appends to segments of its own (a new
//! number), never to an old one.
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

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::de::IgnoredAny;
use serde::Deserialize;
pub use sluice_policy::audit::{AuditBatch, AuditRecord};

/// `identity` of a loss-marker record.
pub const LOSS_MARKER_IDENTITY: &str = "sluice:audit";
/// `rule_id` of a loss-marker record.
pub const LOSS_MARKER_RULE: &str = "sluice.audit.records_lost";
/// The largest batch body the control plane accepts by default (its audit body limit).
pub const CONTROL_PLANE_MAX_BATCH_BYTES: usize = 32 << 20;

const SEGMENT_PREFIX: &str = "audit-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const REJECTED_FILE: &str = "rejected.jsonl";
const LOCK_FILE: &str = "LOCK";
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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.request_timeout))
            .timeout_global(Some(cfg.request_timeout))
            .build()
            .into();
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
        let url = format!("{}/v1/audit/batches", cfg.base_url);
        let sender = SenderLoop {
            shared: shared.clone(),
            agent,
            url,
            auth: format!("Bearer {}", cfg.node_token),
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
                    "audit spool full (or failing): records dropped; a loss marker will report them"
                );
            }
        }
    }
}

// ---- the batcher -------------------------------------------------------------------------

/// The batch being built: its JSON body so far.
struct Building {
    ordinal: u64,
    body: Vec<u8>,
    records: usize,
    marker_loss: u64,
    opened: Instant,
}

struct Batcher {
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    node_id: String,
    run_id: String,
    next_ordinal: u64,
    max_records: usize,
    max_bytes: usize,
    max_delay: Duration,
    /// Channel drops already reported (or being reported) by a marker.
    seen_channel_drops: u64,
    /// One record's JSON, before it goes into the body.
    scratch: Vec<u8>,
}

impl Batcher {
    fn run(mut self) {
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
fn begin_body(body: &mut Vec<u8>, batch_id: &str, node_id: &str) {
    body.extend_from_slice(b"{\"batch_id\":");
    let _ = serde_json::to_writer(&mut *body, batch_id);
    body.extend_from_slice(b",\"node_id\":");
    let _ = serde_json::to_writer(&mut *body, node_id);
    body.extend_from_slice(b",\"records\":[");
}

/// The record that reports `lost` records in the audit trail (see the module documentation).
pub fn loss_marker(node_id: &str, lost: u64) -> AuditRecord {
    let text = format!(
        "sluice: {lost} audit record(s) were lost on data plane {node_id} (shipper channel or \
         spool full); see its sluice_audit_dropped metrics"
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

// ---- the sender --------------------------------------------------------------------------

struct SenderLoop {
    shared: Arc<Shared>,
    agent: ureq::Agent,
    url: String,
    auth: String,
    backoff_min: Duration,
    backoff_max: Duration,
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
    fn run(self) {
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
        let resp = self
            .agent
            .post(&self.url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body);
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    message: e.to_string(),
                }
            }
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Ack {
            #[serde(default)]
            duplicate: bool,
        }
        match status {
            // 200 is sent only after the commit; an unreadable body does not undo it.
            200 => Outcome::Acked {
                duplicate: serde_json::from_slice::<Ack>(&text).is_ok_and(|a| a.duplicate),
            },
            400 | 413 | 422 => Outcome::Refused {
                status,
                message: error_message(&text),
            },
            _ => Outcome::Failed {
                status: Some(status),
                message: error_message(&text),
            },
        }
    }
}

/// The control plane's JSON `error.message`, cut at 500 bytes.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|mut m| {
            if m.len() > 500 {
                let mut end = 500;
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m.truncate(end);
            }
            m
        })
        .unwrap_or_else(|| "request failed".into())
}

fn read_line(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

// ---- the spool ---------------------------------------------------------------------------

/// One spooled batch.
struct Entry {
    ordinal: u64,
    segment: u64,
    offset: u64,
    /// Without the newline.
    len: usize,
    records: usize,
}

#[derive(Default)]
struct Segment {
    bytes: u64,
    /// Entries of this segment still in the queue.
    pending: usize,
    /// Held a damaged line: kept (renamed) rather than deleted once drained.
    corrupt: bool,
}

struct Active {
    number: u64,
    file: File,
}

struct Spool {
    dir: PathBuf,
    /// Held for the life of the spool: the `flock` on `LOCK`.
    _lock: File,
    entries: VecDeque<Entry>,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    next_segment: u64,
    /// Bytes in all segments.
    bytes: u64,
    max_bytes: u64,
    segment_max_bytes: u64,
    stats: Arc<AuditStats>,
    error_log: RateLimit,
}

/// The parts of a spooled line that loading checks; records are only told apart from
/// loss markers, the rest of each is skipped.
#[derive(Deserialize)]
struct SpooledBatch {
    #[serde(rename = "batch_id")]
    _batch_id: IgnoredAny,
    #[serde(rename = "node_id")]
    _node_id: IgnoredAny,
    records: Vec<SpooledRecord>,
}

#[derive(Deserialize)]
struct SpooledRecord {
    identity: String,
    #[serde(default)]
    rule_id: Option<String>,
}

impl SpooledRecord {
    fn is_marker(&self) -> bool {
        self.identity == LOSS_MARKER_IDENTITY && self.rule_id.as_deref() == Some(LOSS_MARKER_RULE)
    }
}

impl Spool {
    /// Creates or locks the directory and reads the segments a previous run left.
    fn open(cfg: &ShipperConfig, stats: Arc<AuditStats>) -> Result<Spool, ShipperError> {
        let dir = cfg.spool_dir.clone();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ShipperError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock_exclusive(&lock).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                ShipperError::SpoolLocked { path: dir.clone() }
            } else {
                ShipperError::Io {
                    path: lock_path.clone(),
                    source: e,
                }
            }
        })?;

        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix(SEGMENT_PREFIX)
                .and_then(|s| s.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|s| s.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut spool = Spool {
            dir,
            _lock: lock,
            entries: VecDeque::new(),
            segments: BTreeMap::new(),
            active: None,
            next_segment: numbers.last().map_or(1, |n| n + 1),
            bytes: 0,
            max_bytes: cfg.spool_max_bytes,
            segment_max_bytes: cfg.segment_max_bytes,
            stats,
            error_log: RateLimit::default(),
        };
        for n in numbers {
            spool.load_segment(n)?;
        }
        spool.publish();
        Ok(spool)
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir
            .join(format!("{SEGMENT_PREFIX}{n:016}{SEGMENT_SUFFIX}"))
    }

    /// Queues the good lines of segment `n`, cutting a torn tail and skipping damaged lines.
    fn load_segment(&mut self, n: u64) -> Result<(), ShipperError> {
        let path = self.segment_path(n);
        let io_err = |source| ShipperError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut seg = Segment::default();
        let mut offset = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(io_err)?;
            if read == 0 {
                break;
            }
            let read = count(read);
            if line.last() != Some(&b'\n') {
                // A torn tail: the process died while appending. That batch was never
                // spooled (it was still in memory), so cut it off.
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    bytes = read,
                    "audit spool ends in a torn line (a crash mid-write); cut off"
                );
                add(&self.stats.spool_corrupt, 1);
                file.set_len(offset).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
                break;
            }
            let body = &line[..line.len() - 1];
            match serde_json::from_slice::<SpooledBatch>(body) {
                Ok(b) => {
                    self.entries.push_back(Entry {
                        ordinal: self.entries.back().map_or(1, |e| e.ordinal + 1),
                        segment: n,
                        offset,
                        len: body.len(),
                        records: b.records.iter().filter(|r| !r.is_marker()).count(),
                    });
                    seg.pending += 1;
                }
                Err(e) => {
                    tracing::error!(
                        file = %path.display(),
                        offset,
                        bytes = read,
                        error = %e,
                        "damaged audit spool line skipped; the segment is kept as .corrupt"
                    );
                    add(&self.stats.spool_corrupt, 1);
                    seg.corrupt = true;
                }
            }
            offset += read;
        }
        seg.bytes = offset;
        self.bytes += offset;
        let drained = seg.pending == 0;
        self.segments.insert(n, seg);
        if drained {
            self.retire(n);
        }
        Ok(())
    }

    /// Appends batches, one sync for all; returns those that did not fit or could not be
    /// written.
    fn append(&mut self, batches: Vec<Batch>) -> Vec<Batch> {
        let mut dropped = Vec::new();
        let mut written = 0;
        let mut touched = false;
        for b in batches {
            let len = count(b.body.len()) + 1;
            if self.bytes + len > self.max_bytes {
                dropped.push(b);
                continue;
            }
            match self.write_line(&b.body) {
                Ok((segment, offset)) => {
                    touched = true;
                    written += 1;
                    self.entries.push_back(Entry {
                        ordinal: b.ordinal,
                        segment,
                        offset,
                        len: b.body.len(),
                        records: b.records,
                    });
                    if let Some(s) = self.segments.get_mut(&segment) {
                        s.pending += 1;
                    }
                }
                Err(e) => {
                    add(&self.stats.spool_errors, 1);
                    if self.error_log.ready() {
                        tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the audit spool");
                    }
                    dropped.push(b);
                }
            }
        }
        if touched {
            if let Some(a) = &self.active {
                if let Err(e) = a.file.sync_data() {
                    // The lines are in the page cache and will be sent from it; only their
                    // survival of a machine crash is in doubt.
                    add(&self.stats.spool_errors, 1);
                    tracing::error!(error = %e, "cannot sync the audit spool");
                }
            }
        }
        add(&self.stats.spooled_batches, written);
        self.publish();
        dropped
    }

    /// Writes one line to the active segment (starting a new one when needed); returns the
    /// segment and the line's offset. A failed write is cut back off, so no torn line stays.
    fn write_line(&mut self, body: &[u8]) -> io::Result<(u64, u64)> {
        let full = match &self.active {
            Some(a) => self
                .segments
                .get(&a.number)
                .is_some_and(|s| s.bytes >= self.segment_max_bytes),
            None => true,
        };
        if full {
            self.start_segment()?;
        }
        let Some(a) = &mut self.active else {
            return Err(io::Error::other("no active segment"));
        };
        let seg = self.segments.entry(a.number).or_default();
        let offset = seg.bytes;
        let res = a
            .file
            .write_all(body)
            .and_then(|()| a.file.write_all(b"\n"));
        if let Err(e) = res {
            if a.file.set_len(offset).is_err() {
                // Could not cut the partial line: never append to this segment again.
                self.active = None;
            }
            return Err(e);
        }
        let len = count(body.len()) + 1;
        seg.bytes += len;
        self.bytes += len;
        Ok((a.number, offset))
    }

    fn start_segment(&mut self) -> io::Result<()> {
        if let Some(old) = self.active.take() {
            // Lines appended in this round are synced here, before the segment is left.
            if let Err(e) = old.file.sync_data() {
                add(&self.stats.spool_errors, 1);
                tracing::error!(error = %e, "cannot sync the audit spool");
            }
        }
        let n = self.next_segment;
        self.next_segment += 1;
        let path = self.segment_path(n);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // The new name must survive a crash as well as the lines written into it.
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(n, Segment::default());
        self.active = Some(Active { number: n, file });
        Ok(())
    }

    /// Removes the head entry (it left the queue); a segment with nothing left goes.
    fn pop_front(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        let drained = match self.segments.get_mut(&e.segment) {
            Some(s) => {
                s.pending -= 1;
                s.pending == 0
            }
            None => false,
        };
        if drained {
            self.retire(e.segment);
        }
        self.publish();
    }

    /// Deletes (or, if it held a damaged line, renames) a segment none of whose batches is
    /// still queued.
    fn retire(&mut self, n: u64) {
        if self.active.as_ref().is_some_and(|a| a.number == n) {
            self.active = None;
        }
        let Some(seg) = self.segments.remove(&n) else {
            return;
        };
        self.bytes -= seg.bytes;
        let path = self.segment_path(n);
        let res = if seg.corrupt {
            let to = path.with_extension("jsonl.corrupt");
            tracing::warn!(file = %to.display(), "audit spool segment with damaged lines kept for inspection");
            std::fs::rename(&path, &to)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = res {
            // Left behind, it is sent again after a restart and answered as duplicates.
            add(&self.stats.spool_errors, 1);
            tracing::error!(error = %e, file = %path.display(), "cannot remove a drained audit spool segment");
        }
    }

    /// Keeps a refused batch (or record) in `rejected.jsonl`, synced.
    fn reject(&mut self, line: &[u8]) {
        let path = self.dir.join(REJECTED_FILE);
        let res = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(line)?;
                f.write_all(b"\n")?;
                f.sync_data()
            });
        if let Err(e) = res {
            add(&self.stats.spool_errors, 1);
            tracing::error!(error = %e, file = %path.display(), "cannot keep a refused audit batch; it is lost");
        }
    }

    fn publish(&self) {
        set(&self.stats.spool_bytes, self.bytes);
        set(&self.stats.spool_batches, count(self.entries.len()));
    }
}

/// An exclusive, non-blocking `flock`, released when the file is closed (or the process dies).
fn lock_exclusive(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock only reads the descriptor number, which `f` keeps open for the call.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            time_ms: 1,
            identity: "agent".into(),
            connection: "app".into(),
            statement: format!("SELECT {i}"),
            verdict: "allow".into(),
            ..AuditRecord::default()
        }
    }

    fn config(dir: &Path) -> ShipperConfig {
        // Port 9 (discard) on loopback: nothing listens, every send fails at once.
        ShipperConfig::new("http://127.0.0.1:9", "t", "node-1", dir.to_owned())
    }

    #[test]
    fn a_full_channel_drops_and_counts_without_blocking() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sink = AuditSink {
            tx,
            stats: Arc::default(),
        };
        sink.record(record(1));
        sink.record(record(2));
        assert_eq!(sink.stats().dropped_channel_full.load(Ordering::Relaxed), 1);
        drop(rx);
        sink.record(record(3));
        assert_eq!(
            sink.stats().dropped_after_shutdown.load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn bodies_built_piecewise_are_batches_and_markers_say_what_was_lost() {
        let mut body = Vec::new();
        begin_body(&mut body, "run-1", "node \"q\"");
        serde_json::to_writer(&mut body, &loss_marker("node", 7)).unwrap();
        body.push(b',');
        serde_json::to_writer(&mut body, &record(1)).unwrap();
        body.extend_from_slice(b"]}");
        let b: AuditBatch = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (b.batch_id.as_str(), b.node_id.as_str()),
            ("run-1", "node \"q\"")
        );
        assert_eq!(b.records.len(), 2);
        let m = &b.records[0];
        assert!(m.has_known_verdict());
        assert_eq!(m.rule_id.as_deref(), Some(LOSS_MARKER_RULE));
        assert_eq!(m.rows, Some(7));
        assert!(
            m.statement.contains("7 audit record(s) were lost"),
            "{}",
            m.statement
        );
        let s: SpooledBatch = serde_json::from_slice(&body).unwrap();
        assert_eq!(s.records.iter().filter(|r| !r.is_marker()).count(), 1);
    }

    #[test]
    fn a_spool_is_locked_and_loaded_with_torn_tails_cut_and_damaged_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let line = |id: &str, n: usize| {
            let b = AuditBatch {
                batch_id: id.into(),
                node_id: "node-1".into(),
                records: (0..n).map(record).collect(),
            };
            let mut v = serde_json::to_vec(&b).unwrap();
            v.push(b'\n');
            v
        };
        let mut first = line("a", 2);
        first.extend_from_slice(b"{not json}\n");
        first.extend(line("b", 3));
        std::fs::write(dir.path().join("audit-0000000000000001.jsonl"), &first).unwrap();
        let mut second = line("c", 1);
        let torn = line("d", 4);
        second.extend_from_slice(&torn[..torn.len() / 2]);
        let second_path = dir.path().join("audit-0000000000000002.jsonl");
        std::fs::write(&second_path, &second).unwrap();

        let stats = Arc::new(AuditStats::default());
        let mut spool = Spool::open(&cfg, stats.clone()).unwrap();
        let records: Vec<_> = spool.entries.iter().map(|e| e.records).collect();
        assert_eq!(records, [2, 3, 1]);
        let ordinals: Vec<_> = spool.entries.iter().map(|e| e.ordinal).collect();
        assert_eq!(ordinals, [1, 2, 3]);
        assert_eq!(stats.spool_corrupt.load(Ordering::Relaxed), 2);
        assert_eq!(
            std::fs::metadata(&second_path).unwrap().len(),
            count(line("c", 1).len()) as u64,
            "the torn tail is cut off"
        );
        assert_eq!(spool.next_segment, 3, "new lines go to a new segment");
        assert!(matches!(
            Spool::open(&cfg, Arc::default()),
            Err(ShipperError::SpoolLocked { .. })
        ));

        // Draining the first segment keeps it for inspection (it had a damaged line); the
        // second is deleted.
        for _ in 0..3 {
            spool.pop_front();
        }
        assert!(dir
            .path()
            .join("audit-0000000000000001.jsonl.corrupt")
            .exists());
        assert!(!second_path.exists());
        assert_eq!(spool.bytes, 0);
        assert_eq!(stats.spool_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn appends_rotate_segments_respect_the_bound_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.segment_max_bytes = 300;
        cfg.spool_max_bytes = 1000;
        let batch = |ordinal: u64| {
            let mut body = Vec::new();
            begin_body(&mut body, &format!("r-{ordinal}"), "node-1");
            serde_json::to_writer(&mut body, &record(0)).unwrap();
            body.extend_from_slice(b"]}");
            Batch {
                ordinal,
                body: Arc::new(body),
                records: 1,
                marker_loss: 0,
            }
        };
        let len = batch(1).body.len() as u64 + 1;
        let fit = 1000 / len;
        let stats = Arc::new(AuditStats::default());
        let mut spool = Spool::open(&cfg, stats.clone()).unwrap();
        let dropped = spool.append((1..=fit + 2).map(batch).collect());
        assert_eq!(dropped.len(), 2, "beyond spool_max_bytes");
        assert_eq!(spool.entries.len() as u64, fit);
        assert!(spool.segments.len() > 1, "rotated at segment_max_bytes");
        assert_eq!(spool.bytes, fit * len);
        drop(spool);

        let spool = Spool::open(&cfg, Arc::default()).unwrap();
        assert_eq!(spool.entries.len() as u64, fit);
        assert_eq!(spool.bytes, fit * len);
    }
}
