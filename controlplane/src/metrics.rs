//! Prometheus text metrics for the control plane: requests by route and status, audit
//! records ingested, applies, reviews filed and decided, webhook attempts, and the current snapshot version. Owned by the control plane
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
    deliveries: [AtomicU64; 3],
    snapshot_version: AtomicU64,
}

impl Metrics {
    /// Counts one answered request; `route` is the matched route template, not the raw path.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
    }

    /// Counts one webhook delivery attempt by its outcome.
    pub fn count_delivery(&self, attempt: &crate::store::notifications::Attempt) {
        use crate::store::notifications::Attempt;
        let i = match attempt {
            Attempt::Delivered { .. } => 0,
            Attempt::Retry { .. } => 1,
            Attempt::Failed { .. } => 2,
        };
        self.deliveries[i].fetch_add(1, Ordering::Relaxed);
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
        out.push_str("# HELP sluice_cp_webhook_attempts_total Webhook delivery attempts, by outcome (retry: failed, to be tried again; failed: attempts used up).\n# TYPE sluice_cp_webhook_attempts_total counter\n");
        for (outcome, n) in ["delivered", "retry", "failed"]
            .iter()
            .zip(&self.deliveries)
        {
            let _ = writeln!(
                out,
                "sluice_cp_webhook_attempts_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_cp_snapshot_version Version of the current snapshot.\n# TYPE sluice_cp_snapshot_version gauge\nsluice_cp_snapshot_version {}",
            self.snapshot_version.load(Ordering::Relaxed)
        );
        out
    }
}
