//! Unit tests of the shipper's pieces: the sink, batch bodies, the spool.

use std::path::Path;

use super::spool::SpooledBatch;
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
        count(line("c", 1).len()),
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
