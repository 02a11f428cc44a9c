//! The Sluice control plane: the HTTP API users configure Sluice through, the store behind it
//! (SQLite embedded, PostgreSQL for production), compiled snapshots pushed to data planes by
//! long-poll, just-in-time grants signed with Ed25519, the review (human approval) queue,
//! webhook notifications, the audit-record collector and its export to syslog.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod compile;
pub mod crypto;
pub mod document;
pub mod grants;
pub mod inprocess;
pub mod metrics;
pub mod notify;
pub mod reviews;
pub mod service;
pub mod siem;
/// The snapshot format lives in the shared crate; re-exported at its old path.
pub use sluice_policy::snapshot;
pub mod store;
pub mod up;
