//! Audit shipping end to end: the control plane in-process on port 0 (SQLite in a temp dir),
//! an [`AuditShipper`] against it, and `GET /v1/audit` as the judge of "exactly once".

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_controlplane::crypto::MasterKey;
use sluice_controlplane::inprocess::InProcess;
use sluice_controlplane::service::Settings;
use sluice_dataplane::audit::{
    AuditBatch, AuditRecord, AuditShipper, ShipperConfig, ShipperError, StatsSnapshot,
    LOSS_MARKER_IDENTITY, LOSS_MARKER_RULE,
};

const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// The control plane on a runtime of its own, so a test can stop it like a crash.
struct ControlPlaneProcess {
    base: String,
    inner: InProcess,
    agent: ureq::Agent,
}

impl ControlPlaneProcess {
    fn start(store_url: &str, key: &MasterKey, addr: &str) -> Self {
        let settings = Settings {
            admin_token: Some(ADMIN.into()),
            ..Settings::default()
        };
        let inner = InProcess::start(store_url, key.clone(), settings, addr.parse().unwrap())
            .expect("starting the control plane");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        ControlPlaneProcess {
            base: inner.base_url().to_owned(),
            inner,
            agent,
        }
    }

    fn post(&self, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .call()
            .expect("HTTP request");
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn node_token(&self) -> String {
        let (s, v) = self.post(
            "/v1/tokens",
            ADMIN,
            json!({"name": "node-a", "role": "node"})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Every stored record, oldest first (paging with `after`).
    fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/v1/audit?after={after}&limit=1000"));
            let recs = page["records"].as_array().unwrap();
            if recs.is_empty() {
                return out;
            }
            after = recs.last().unwrap()["id"].as_i64().unwrap();
            out.extend(recs.iter().cloned());
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Like a crash: the runtime goes, with the listener and every connection.
    fn kill(self) {
        self.inner.stop();
    }
}

/// A control plane's store, key and node token, surviving its restarts.
struct Site {
    dir: tempfile::TempDir,
    store_url: String,
    key: MasterKey,
    token: String,
}

impl Site {
    fn new() -> (Site, ControlPlaneProcess) {
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let cp = ControlPlaneProcess::start(&store_url, &key, "127.0.0.1:0");
        let token = cp.node_token();
        (
            Site {
                dir,
                store_url,
                key,
                token,
            },
            cp,
        )
    }

    fn restart(&self, addr: &str) -> ControlPlaneProcess {
        ControlPlaneProcess::start(&self.store_url, &self.key, addr)
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn config(&self, base: &str) -> ShipperConfig {
        let mut c = ShipperConfig::new(base, &self.token, "node-a", self.spool());
        c.max_delay = Duration::from_millis(20);
        c.request_timeout = Duration::from_secs(5);
        c.backoff_min = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(200);
        c
    }
}

fn record(tag: &str, i: usize) -> AuditRecord {
    AuditRecord {
        time_ms: 1_700_000_000_000 + i as i64,
        identity: "agent-7".into(),
        token_id: Some("tok-1".into()),
        connection: "app".into(),
        session_id: Some("s-1".into()),
        statement: format!("SELECT {tag} {i}"),
        verdict: if i % 10 == 0 { "deny" } else { "allow" }.into(),
        rule_id: (i % 10 == 0).then(|| "no-writes".into()),
        masked_columns: vec!["email".into()],
        rows: Some(1),
        bytes: Some(64),
        duration_us: Some(42),
        ..AuditRecord::default()
    }
}

/// Statements of ordinary (non-marker) records, in store order.
fn statements(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["identity"] != LOSS_MARKER_IDENTITY)
        .map(|r| r["statement"].as_str().unwrap().to_owned())
        .collect()
}

/// `expected` arrived, each exactly once, and nothing else.
fn assert_exactly(records: &[Value], expected: impl IntoIterator<Item = String>) {
    let got = statements(records);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "duplicates stored");
    let want: HashSet<String> = expected.into_iter().collect();
    assert_eq!(got.len(), want.len(), "stored {} records", got.len());
    assert!(got.iter().all(|s| want.contains(s)), "unexpected records");
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .filter(|p| !p.ends_with("rejected.jsonl"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Batches on disk, oldest first.
fn spooled(dir: &Path) -> Vec<AuditBatch> {
    segments(dir)
        .iter()
        .flat_map(|p| {
            BufReader::new(std::fs::File::open(p).unwrap())
                .lines()
                .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
                .collect::<Vec<AuditBatch>>()
        })
        .collect()
}

fn stats(s: &AuditShipper) -> StatsSnapshot {
    s.stats().snapshot()
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn records_from_several_cores_arrive_exactly_once() {
    let (site, cp) = Site::new();
    // `SLUICE_AUDIT_RECORDS` scales the run for figures (`--release -- --nocapture`).
    let cores = 2;
    let per_core = std::env::var("SLUICE_AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(3000, |n| n / cores);
    let mut cfg = site.config(&cp.base);
    cfg.max_delay = Duration::from_millis(200);
    cfg.max_batch_records = std::env::var("SLUICE_AUDIT_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(512);
    let batch = cfg.max_batch_records;
    let (shipper, sink) = AuditShipper::start(cfg).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..cores {
            let sink = sink.clone();
            s.spawn(move || {
                for i in 0..per_core {
                    sink.record(record(&format!("core{c}"), i));
                }
            });
        }
    });
    let recorded = t.elapsed();
    assert!(shipper.flush(LONG), "flush");
    let elapsed = t.elapsed();
    let total = cores * per_core;
    let st = stats(&shipper);
    println!(
        "{total} records from {cores} threads: recording took {:.1} ms ({:.0} ns/record), \
         all acknowledged after {:.0} ms: {:.0} records/s shipped to the SQLite control plane \
         in {} batches",
        recorded.as_secs_f64() * 1e3,
        recorded.as_nanos() as f64 / total as f64,
        elapsed.as_secs_f64() * 1e3,
        total as f64 / elapsed.as_secs_f64(),
        st.batches_shipped,
    );
    let records = cp.records();
    assert_exactly(
        &records,
        (0..cores).flat_map(|c| (0..per_core).map(move |i| format!("SELECT core{c} {i}"))),
    );
    // One core's records stay in their order.
    let core0: Vec<_> = statements(&records)
        .into_iter()
        .filter(|s| s.starts_with("SELECT core0 "))
        .collect();
    let want: Vec<_> = (0..per_core).map(|i| format!("SELECT core0 {i}")).collect();
    assert_eq!(core0, want);
    // Every field made it.
    let r = records
        .iter()
        .find(|r| r["statement"] == "SELECT core1 10")
        .unwrap();
    assert_eq!(r["node_id"], "node-a");
    assert_eq!(r["verdict"], "deny");
    assert_eq!(r["rule_id"], "no-writes");
    assert_eq!(r["masked_columns"], json!(["email"]));
    assert_eq!(
        (r["rows"].as_i64(), r["duration_us"].as_i64()),
        (Some(1), Some(42))
    );

    assert_eq!(st.accepted, total as u64);
    assert_eq!(st.records_shipped, total as u64);
    assert_eq!(st.duplicate_batches, 0);
    assert_eq!(st.dropped_channel_full + st.dropped_spool_full, 0);
    assert!(st.batches_shipped >= (total / batch) as u64);
    assert_eq!(st.spool_bytes, 0, "drained");
    if total * 400 < 16 << 20 {
        // Less than the default memory bound: nothing had to wait on disk.
        assert_eq!(st.spooled_batches, 0);
    }
    let end = shipper.shutdown(Duration::from_secs(5));
    assert_eq!(end.spool_batches, 0);
    sink.record(record("late", 0));
    assert_eq!(
        sink.stats().dropped_after_shutdown.load(Ordering::Relaxed),
        1
    );
    cp.kill();
}

#[test]
fn an_outage_spools_and_the_spool_drains_exactly_once_in_order() {
    let (site, cp) = Site::new();
    let (shipper, sink) = AuditShipper::start(site.config(&cp.base)).unwrap();
    for i in 0..200 {
        sink.record(record("before", i));
    }
    assert!(shipper.flush(LONG));

    // ---- the control plane goes away: batches go to the spool ----
    let addr = cp.addr();
    cp.kill();
    for i in 0..1000 {
        sink.record(record("during", i));
    }
    // The flush seals the open batch; it cannot be acknowledged.
    assert!(!shipper.flush(Duration::from_millis(50)));
    wait_until("everything spooled", LONG, || {
        let s = stats(&shipper);
        s.memory_batches == 0 && s.spool_batches > 0 && s.send_failures > 0
    });
    let on_disk: usize = spooled(&site.spool()).iter().map(|b| b.records.len()).sum();
    assert_eq!(on_disk, 1000, "every record recorded while away is on disk");
    let size = stats(&shipper).spool_bytes;
    assert_eq!(
        size,
        segments(&site.spool())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>()
    );
    for i in 0..500 {
        sink.record(record("still", i));
    }
    assert!(!shipper.flush(Duration::from_millis(50)));
    wait_until("the spool grows", LONG, || {
        let s = stats(&shipper);
        s.memory_batches == 0 && s.spool_bytes > size
    });

    // ---- it comes back: the spool drains, each record once, in order ----
    let t = Instant::now();
    let cp = site.restart(&addr);
    assert!(shipper.flush(LONG), "drained");
    let st = stats(&shipper);
    println!(
        "spool of {} batches drained {:.0} ms after the control plane came back",
        st.spooled_batches,
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!((st.spool_bytes, st.spool_batches), (0, 0));
    assert!(
        segments(&site.spool()).is_empty(),
        "drained segments deleted"
    );
    let records = cp.records();
    let expected: Vec<String> = (0..200)
        .map(|i| format!("SELECT before {i}"))
        .chain((0..1000).map(|i| format!("SELECT during {i}")))
        .chain((0..500).map(|i| format!("SELECT still {i}")))
        .collect();
    assert_eq!(statements(&records), expected, "exactly once, in order");
    assert_eq!(st.records_shipped, 1700);
    assert_eq!(st.dropped_spool_full + st.dropped_channel_full, 0);
    shipper.shutdown(Duration::from_secs(5));
    cp.kill();
}

/// A proxy that forwards each request to the control plane but, for the first `lose`
/// batches, hangs up instead of relaying the answer: stored, never acknowledged. With no
/// upstream it acknowledges every batch at once, storing nothing (the shipper's own ceiling).
struct LossyProxy {
    addr: String,
    lost: Arc<AtomicUsize>,
}

impl LossyProxy {
    fn start(upstream: &str, lose: usize) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lost = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let counter = lost.clone();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = Self::serve(conn, &agent, &upstream, lose, &counter);
            }
        });
        LossyProxy { addr, lost }
    }

    fn serve(
        mut conn: TcpStream,
        agent: &ureq::Agent,
        upstream: &str,
        lose: usize,
        lost: &AtomicUsize,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (mut len, mut auth) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if upstream.is_empty() {
            let ack = br#"{"batch_id":"-","stored":0,"duplicate":false}"#;
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                ack.len()
            )?;
            return conn.write_all(ack);
        }
        let mut resp = agent
            .post(format!("{upstream}{path}"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let answer = resp.body_mut().read_to_vec().unwrap_or_default();
        if lost.load(Ordering::SeqCst) < lose {
            lost.fetch_add(1, Ordering::SeqCst);
            // Stored upstream; the answer never reaches the node.
            return conn.shutdown(std::net::Shutdown::Both);
        }
        write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            answer.len()
        )?;
        conn.write_all(&answer)
    }
}

#[test]
fn a_batch_stored_but_not_acknowledged_is_counted_once() {
    let (site, cp) = Site::new();

    // ---- the answer is lost on the way back: the retry is a duplicate ----
    let proxy = LossyProxy::start(&cp.base, 2);
    let mut cfg = site.config(&format!("http://{}", proxy.addr));
    cfg.max_batch_records = 25;
    let (shipper, sink) = AuditShipper::start(cfg).unwrap();
    for i in 0..100 {
        sink.record(record("lossy", i));
    }
    assert!(shipper.flush(LONG));
    let st = shipper.shutdown(Duration::from_secs(5));
    // The first batch was stored on its first send, and its answer lost twice: the two
    // retries carried the same id, the control plane answered both as duplicates.
    assert_eq!(proxy.lost.load(Ordering::SeqCst), 2);
    assert_eq!(st.send_failures, 2, "{st:?}");
    assert_eq!((st.batches_shipped, st.duplicate_batches), (4, 1), "{st:?}");
    assert_exactly(&cp.records(), (0..100).map(|i| format!("SELECT lossy {i}")));

    // ---- a spool left by a run that crashed after the control plane stored a batch ----
    let batch = AuditBatch {
        batch_id: "crashed-run-1".into(),
        node_id: "node-a".into(),
        records: (0..10).map(|i| record("crashed", i)).collect(),
    };
    let line = serde_json::to_vec(&batch).unwrap();
    let (s, ack) = cp.post("/v1/audit/batches", &site.token, &line);
    assert_eq!((s, ack["duplicate"].as_bool()), (200, Some(false)), "{ack}");
    let mut file = line.clone();
    file.push(b'\n');
    std::fs::write(site.spool().join("audit-0000000000000099.jsonl"), file).unwrap();
    let (shipper, _sink) = AuditShipper::start(site.config(&cp.base)).unwrap();
    assert!(shipper.flush(LONG));
    let st = shipper.shutdown(Duration::from_secs(5));
    assert_eq!((st.batches_shipped, st.duplicate_batches), (1, 1));
    assert!(segments(&site.spool()).is_empty());
    assert_exactly(
        &cp.records(),
        (0..100)
            .map(|i| format!("SELECT lossy {i}"))
            .chain((0..10).map(|i| format!("SELECT crashed {i}"))),
    );
    cp.kill();
}

#[test]
fn a_restart_drains_the_spool_of_the_previous_run() {
    let (site, cp) = Site::new();
    let addr = cp.addr();
    cp.kill();

    let (first, sink) = AuditShipper::start(site.config(&format!("http://{addr}"))).unwrap();
    assert!(
        matches!(
            AuditShipper::start(site.config(&format!("http://{addr}"))),
            Err(ShipperError::SpoolLocked { .. })
        ),
        "one shipper per spool"
    );
    for i in 0..300 {
        sink.record(record("first-run", i));
    }
    let st = first.shutdown(Duration::ZERO);
    assert_eq!(st.accepted, 300);
    assert_eq!(st.memory_batches, 0);
    assert!(st.spool_batches > 0);
    let on_disk: usize = spooled(&site.spool()).iter().map(|b| b.records.len()).sum();
    assert_eq!(on_disk, 300, "a shutdown spools what was not acknowledged");

    let cp = site.restart(&addr);
    let (second, _sink) = AuditShipper::start(site.config(&cp.base)).unwrap();
    assert_eq!(stats(&second).spool_batches, st.spool_batches, "loaded");
    assert!(second.flush(LONG));
    let st = second.shutdown(Duration::from_secs(5));
    assert_eq!((st.records_shipped, st.spool_bytes), (300, 0));
    assert_exactly(
        &cp.records(),
        (0..300).map(|i| format!("SELECT first-run {i}")),
    );
    cp.kill();
}

#[test]
fn a_torn_spool_tail_is_cut_and_earlier_batches_still_ship() {
    let (site, cp) = Site::new();
    let addr = cp.addr();
    cp.kill();
    let mut cfg = site.config(&format!("http://{addr}"));
    cfg.max_batch_records = 10;
    let (shipper, sink) = AuditShipper::start(cfg).unwrap();
    for i in 0..100 {
        sink.record(record("torn", i));
    }
    shipper.shutdown(Duration::ZERO);

    // A crash while the last batch was being written: its line stops halfway.
    let last = segments(&site.spool()).pop().unwrap();
    let text = std::fs::read(&last).unwrap();
    let start_of_last = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let cut = start_of_last + (text.len() - start_of_last) / 2;
    let torn_batch: AuditBatch = serde_json::from_slice(&text[start_of_last..]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();

    let cp = site.restart(&addr);
    let (shipper, _sink) = AuditShipper::start(site.config(&cp.base)).unwrap();
    assert_eq!(stats(&shipper).spool_corrupt, 1, "torn tail detected");
    assert!(shipper.flush(LONG));
    shipper.shutdown(Duration::from_secs(5));
    let lost: HashSet<String> = torn_batch
        .records
        .iter()
        .map(|r| r.statement.clone())
        .collect();
    assert_eq!(lost.len(), 10);
    assert_exactly(
        &cp.records(),
        (0..100)
            .map(|i| format!("SELECT torn {i}"))
            .filter(|s| !lost.contains(s)),
    );
    cp.kill();
}

#[test]
fn a_full_spool_drops_loudly_and_a_marker_reports_the_loss() {
    let (site, cp) = Site::new();
    let addr = cp.addr();
    cp.kill();
    let mut cfg = site.config(&format!("http://{addr}"));
    cfg.max_batch_records = 10;
    cfg.spool_max_bytes = 8 * 1024;
    let (shipper, sink) = AuditShipper::start(cfg).unwrap();
    for i in 0..200 {
        sink.record(record("full", i));
    }
    assert!(!shipper.flush(Duration::from_millis(50)));
    wait_until("all batches spooled or dropped", LONG, || {
        let s = stats(&shipper);
        s.memory_batches == 0 && s.dropped_spool_full > 0
    });
    let on_disk: Vec<String> = spooled(&site.spool())
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.statement.clone()))
        .collect();
    let st = stats(&shipper);
    assert_eq!(
        on_disk.len() as u64 + st.dropped_spool_full,
        200,
        "every record is spooled or counted as dropped: {st:?}"
    );
    assert!(st.spool_bytes <= 8 * 1024);

    let cp = site.restart(&addr);
    assert!(shipper.flush(LONG));
    // The marker goes out once the control plane answers again (in its own batch when
    // nothing else is recorded).
    wait_until("the loss marker", LONG, || {
        cp.get(&format!("/v1/audit?identity={LOSS_MARKER_IDENTITY}"))["records"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let records = cp.records();
    assert_exactly(&records, on_disk);
    let markers: Vec<&Value> = records
        .iter()
        .filter(|r| r["identity"] == LOSS_MARKER_IDENTITY)
        .collect();
    // Usually one marker; a marker that fitted in the spool while others did not would
    // split the count, never change its sum.
    assert!(!markers.is_empty());
    for m in &markers {
        assert_eq!(
            (&m["rule_id"], &m["verdict"]),
            (&json!(LOSS_MARKER_RULE), &json!("deny"))
        );
    }
    let reported: u64 = markers.iter().map(|m| m["rows"].as_u64().unwrap()).sum();
    assert_eq!(reported, st.dropped_spool_full);
    shipper.shutdown(Duration::from_secs(5));
    cp.kill();
}

#[test]
fn a_record_the_control_plane_would_refuse_is_kept_aside() {
    let (site, cp) = Site::new();
    let (shipper, sink) = AuditShipper::start(site.config(&cp.base)).unwrap();
    sink.record(record("ok", 1));
    sink.record(AuditRecord {
        verdict: "maybe".into(),
        ..record("bad", 2)
    });
    sink.record(record("ok", 3));
    assert!(shipper.flush(LONG));
    let st = shipper.shutdown(Duration::from_secs(5));
    assert_eq!((st.rejected_records, st.records_shipped), (1, 2));
    assert_exactly(
        &cp.records(),
        ["SELECT ok 1".to_owned(), "SELECT ok 3".to_owned()],
    );
    let kept = std::fs::read_to_string(site.spool().join("rejected.jsonl")).unwrap();
    let b: AuditBatch = serde_json::from_str(kept.trim_end()).unwrap();
    assert_eq!(b.records[0].statement, "SELECT bad 2");
    cp.kill();
}

#[test]
fn the_shippers_own_ceiling_against_a_server_that_acknowledges_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ack = LossyProxy::start("", 0);
    let mut cfg = ShipperConfig::new(
        &format!("http://{}", ack.addr),
        "t",
        "node-a",
        dir.path().join("spool"),
    );
    cfg.max_delay = Duration::from_millis(20);
    let (shipper, sink) = AuditShipper::start(cfg).unwrap();
    let total = 50_000;
    let records: Vec<AuditRecord> = (0..total).map(|i| record("ceiling", i)).collect();
    let t = Instant::now();
    for r in records {
        sink.record(r);
    }
    let recorded = t.elapsed();
    assert!(shipper.flush(LONG));
    let elapsed = t.elapsed();
    let st = shipper.shutdown(Duration::from_secs(5));
    println!(
        "shipper ceiling: {total} records, AuditSink::record {:.0} ns each (record built \
         beforehand), all acknowledged after {:.0} ms: {:.0} records/s in {} batches \
         (serialize, POST over loopback, parse the answer; nothing stored)",
        recorded.as_nanos() as f64 / total as f64,
        elapsed.as_secs_f64() * 1e3,
        total as f64 / elapsed.as_secs_f64(),
        st.batches_shipped,
    );
    assert_eq!(st.records_shipped, total as u64);
    assert_eq!(st.dropped_channel_full, 0);
}
