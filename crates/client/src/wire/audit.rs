//! Audit shipping and reading: the batch a data plane posts, its acknowledgement, and the
//! pages `GET /v1/audit` answers.

use serde::{Deserialize, Serialize};

/// The batch and record formats are sluice-policy's (the data path builds the records);
/// re-exported here with the rest of the API's bodies.
pub use sluice_policy::audit::{AuditBatch, AuditRecord, MAX_BATCH_ID_LEN, VERDICTS};

/// `POST /v1/audit/batches` answer: the batch is stored durably (or was seen before).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchAck {
    pub batch_id: String,
    /// Records stored by this call (0 for a batch seen before).
    pub stored: usize,
    pub duplicate: bool,
}

/// A stored record, with where it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredAuditRecord {
    /// Increasing; page with `before`/`after`.
    pub id: i64,
    pub batch_id: String,
    pub node_id: String,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// One page of records.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub records: Vec<StoredAuditRecord>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}
