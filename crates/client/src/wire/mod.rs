//! The request and response bodies of the control plane's API, as both sides see them.

pub mod audit;
pub mod error;
pub mod node;
pub mod review;

/// The snapshot a node long-polls for (`GET /v1/nodes/{id}/snapshot`) is sluice-policy's
/// format; re-exported here with the rest of the API's bodies.
pub use sluice_policy::snapshot::Snapshot;
