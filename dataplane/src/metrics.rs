//! Counters per core, summed when scraped; Prometheus text format.
//!
//! Each core writes only its own counters (relaxed atomics on a cache line no other core
//! writes), so counting costs no cross-core traffic; a scrape reads them all.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use sluice_policy::SessionState;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! core_metrics {
    ($( $(#[doc = $doc:literal])* $kind:ident $name:ident ),* $(,)?) => {
        /// One core's counters.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct CoreMetrics {
            /// Which I/O driver this core runs (1 = io_uring, 0 = epoll fallback).
            pub io_uring: Gauge,
            /// Sessions pinned to their server connection in transaction pooling, by the kind
            /// of session state that pinned them (indexed as [`SessionState::ALL`]).
            pub sessions_pinned_by: [Counter; SessionState::ALL.len()],
            $( $(#[doc = $doc])* pub $name: $kind, )*
        }

        impl CoreMetrics {
            fn describe() -> &'static [(&'static str, &'static str, &'static str)] {
                &[ $( (stringify!($name), stringify!($kind), concat!($($doc),*)) ),* ]
            }

            fn value(&self, name: &str) -> i128 {
                match name {
                    $( stringify!($name) => core_metrics!(@get self.$name, $kind), )*
                    _ => 0,
                }
            }
        }
    };
    (@get $e:expr, Counter) => { i128::from($e.get()) };
    (@get $e:expr, Gauge) => { i128::from($e.get()) };
}

core_metrics! {
    /// Client connections accepted.
    Counter clients_accepted,
    /// Client connections open now.
    Gauge clients_active,
    /// Clients refused because their token was rejected.
    Counter auth_failures,
    /// Clients disconnected for breaking the protocol.
    Counter protocol_errors,
    /// Clients that did not finish startup in time.
    Counter startup_timeouts,
    /// CancelRequests received.
    Counter cancel_requests,
    /// Queries (simple Query and Sync) relayed.
    Counter queries,
    /// Statements denied by policy.
    Counter statements_denied,
    /// Statements held for an approver's review.
    Counter reviews_requested,
    /// Result rows masked (a column rewritten or a detector finding overwritten).
    Counter rows_masked,
    /// Results failed closed by the masker (a row or column it could not vouch for).
    Counter results_failed_closed,
    /// Bytes from clients to servers.
    Counter client_bytes,
    /// Bytes from servers to clients.
    Counter server_bytes,
    /// Server connections opened.
    Counter server_connects,
    /// Server connections that failed to open.
    Counter server_connect_errors,
    /// Server connections that broke while in use.
    Counter server_errors,
    /// Times a client had to wait for a server connection.
    Counter pool_waits,
    /// Times a client gave up waiting for a server connection.
    Counter pool_timeouts,
    /// Server connections handed to clients.
    Counter server_checkouts,
    /// Server connections pinned to one client now, in transaction pooling (each holds a
    /// pool slot until its client leaves).
    Gauge pinned_servers,
    /// Statements refused because they need a pinned server connection their pool's
    /// `pin_on` does not allow.
    Counter pin_refusals,
}

/// Renders all cores' metrics in the Prometheus text format.
pub fn render(cores: &[Arc<CoreMetrics>]) -> String {
    let mut out = String::new();
    for (name, kind, help) in CoreMetrics::describe() {
        let kind = if *kind == "Counter" {
            "counter"
        } else {
            "gauge"
        };
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "# HELP sluice_{name}{suffix} {}", help.trim());
        let _ = writeln!(out, "# TYPE sluice_{name}{suffix} {kind}");
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(
                out,
                "sluice_{name}{suffix}{{core=\"{i}\"}} {}",
                m.value(name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_io_uring 1 if the core runs io_uring, 0 if it fell back to epoll"
    );
    let _ = writeln!(out, "# TYPE sluice_io_uring gauge");
    for (i, m) in cores.iter().enumerate() {
        let _ = writeln!(out, "sluice_io_uring{{core=\"{i}\"}} {}", m.io_uring.get());
    }
    let _ = writeln!(
        out,
        "# HELP sluice_sessions_pinned_total Sessions pinned to their server connection in transaction pooling, by the session state that pinned them"
    );
    let _ = writeln!(out, "# TYPE sluice_sessions_pinned_total counter");
    for (i, m) in cores.iter().enumerate() {
        for (kind, c) in SessionState::ALL.iter().zip(&m.sessions_pinned_by) {
            let _ = writeln!(
                out,
                "sluice_sessions_pinned_total{{core=\"{i}\",reason=\"{kind}\"}} {}",
                c.get()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_core() {
        let a = Arc::new(CoreMetrics::default());
        let b = Arc::new(CoreMetrics::default());
        a.queries.add(3);
        b.clients_active.inc();
        let text = render(&[a, b]);
        assert!(
            text.contains("sluice_queries_total{core=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_clients_active{core=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE sluice_queries_total counter"));
    }
}
