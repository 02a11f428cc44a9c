//! Prometheus text metrics for the control plane: requests by route and status, audit
//! records ingested, applies, reviews filed and decided, and the current snapshot version. Owned by the control plane
//! (no globals), rendered at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub audit_records: AtomicU64,
    pub audit_batches: AtomicU64,
    pub applies: AtomicU64,
    pub reviews_created: AtomicU64,
    pub review_decisions: AtomicU64,
    snapshot_version: AtomicU64,
}

impl Metrics {
    /// Counts one answered request; `route` is the matched route template, not the raw path.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
    }

    pub fn set_snapshot_version(&self, v: u64) {
        self.snapshot_version.store(v, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str(
            "# HELP sluice_cp_http_requests_total API requests answered, by route and status.\n",
        );
        out.push_str("# TYPE sluice_cp_http_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "sluice_cp_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    route.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
        let mut gauge = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "sluice_cp_audit_records_ingested_total",
            "counter",
            "Audit records stored (duplicates of a retried batch are not counted).",
            self.audit_records.load(Ordering::Relaxed),
        );
        gauge(
            "sluice_cp_audit_batches_total",
            "counter",
            "Audit batches acknowledged, including retried duplicates.",
            self.audit_batches.load(Ordering::Relaxed),
        );
        gauge(
            "sluice_cp_applies_total",
            "counter",
            "Documents applied.",
            self.applies.load(Ordering::Relaxed),
        );
        gauge(
            "sluice_cp_reviews_created_total",
            "counter",
            "Reviews filed by data planes (not counting de-duplicated repeats).",
            self.reviews_created.load(Ordering::Relaxed),
        );
        gauge(
            "sluice_cp_review_decisions_total",
            "counter",
            "Approvals and denials recorded.",
            self.review_decisions.load(Ordering::Relaxed),
        );
        gauge(
            "sluice_cp_snapshot_version",
            "gauge",
            "Version of the current snapshot.",
            self.snapshot_version.load(Ordering::Relaxed),
        );
        out
    }
}
