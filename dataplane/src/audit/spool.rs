//! The spool: segments of batches on disk, their index, and the `rejected.jsonl` file.
//!
//! See the parent module for the format and the crash argument.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{
    add, count, set, AuditStats, Batch, RateLimit, ShipperConfig, ShipperError,
    LOSS_MARKER_IDENTITY, LOSS_MARKER_RULE,
};

const SEGMENT_PREFIX: &str = "audit-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const LOCK_FILE: &str = "LOCK";
/// Batches the control plane refused, kept for inspection.
pub(super) const REJECTED_FILE: &str = "rejected.jsonl";

/// One spooled batch.
pub(super) struct Entry {
    pub(super) ordinal: u64,
    pub(super) segment: u64,
    pub(super) offset: u64,
    /// Without the newline.
    pub(super) len: usize,
    pub(super) records: usize,
}

#[derive(Default)]
pub(super) struct Segment {
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

/// The segments on disk and the index of the batches in them (the older part of the
/// shipper's queue); always used under the queue's lock.
pub(super) struct Spool {
    dir: PathBuf,
    /// Held for the life of the spool: the `flock` on `LOCK`.
    _lock: File,
    pub(super) entries: VecDeque<Entry>,
    pub(super) segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    pub(super) next_segment: u64,
    /// Bytes in all segments.
    pub(super) bytes: u64,
    pub(super) max_bytes: u64,
    segment_max_bytes: u64,
    stats: Arc<AuditStats>,
    error_log: RateLimit,
}

/// The parts of a spooled line that loading checks; records are only told apart from
/// loss markers, the rest of each is skipped.
#[derive(Deserialize)]
pub(super) struct SpooledBatch {
    #[serde(rename = "batch_id")]
    _batch_id: IgnoredAny,
    #[serde(rename = "node_id")]
    _node_id: IgnoredAny,
    pub(super) records: Vec<SpooledRecord>,
}

#[derive(Deserialize)]
pub(super) struct SpooledRecord {
    identity: String,
    #[serde(default)]
    rule_id: Option<String>,
}

impl SpooledRecord {
    pub(super) fn is_marker(&self) -> bool {
        self.identity == LOSS_MARKER_IDENTITY && self.rule_id.as_deref() == Some(LOSS_MARKER_RULE)
    }
}

impl Spool {
    /// Creates or locks the directory and reads the segments a previous run left.
    pub(super) fn open(cfg: &ShipperConfig, stats: Arc<AuditStats>) -> Result<Spool, ShipperError> {
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

    pub(super) fn segment_path(&self, n: u64) -> PathBuf {
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
    pub(super) fn append(&mut self, batches: Vec<Batch>) -> Vec<Batch> {
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
    pub(super) fn pop_front(&mut self) {
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
    pub(super) fn reject(&mut self, line: &[u8]) {
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

pub(super) fn read_line(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
