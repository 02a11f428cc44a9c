//! Audit records as data planes ship them (one per statement) and as the API returns them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A batch from one data plane. `batch_id` makes retries idempotent.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditBatch {
    pub batch_id: String,
    pub node_id: String,
    pub records: Vec<AuditRecord>,
}

/// What happened to one statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the statement started, unix milliseconds.
    pub time_ms: i64,
    /// The token's subject.
    pub identity: String,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub grant_id: Option<String>,
    pub connection: String,
    #[serde(default)]
    pub session_id: Option<String>,
    pub statement: String,
    /// `allow`, `deny` or `review`.
    pub verdict: String,
    #[serde(default)]
    pub rule_id: Option<String>,
    #[serde(default)]
    pub review_id: Option<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub masked_columns: Vec<String>,
    #[serde(default)]
    pub rows: Option<i64>,
    #[serde(default)]
    pub bytes: Option<i64>,
    #[serde(default)]
    pub duration_us: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The verdicts a record may carry.
pub const VERDICTS: [&str; 3] = ["allow", "deny", "review"];

/// A stored record, with where it came from.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StoredAuditRecord {
    /// Increasing; page with `before`/`after`.
    pub id: i64,
    pub batch_id: String,
    pub node_id: String,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Filters for `GET /v1/audit`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub identity: Option<String>,
    pub connection: Option<String>,
    pub verdict: Option<String>,
    /// Unix ms, inclusive.
    pub from_ms: Option<i64>,
    /// Unix ms, exclusive.
    pub to_ms: Option<i64>,
    /// Case-insensitive substring of the statement.
    pub text: Option<String>,
    /// Only records with a smaller id (next page, newest first).
    pub before: Option<i64>,
    /// Only records with a larger id, oldest first (for tailing).
    pub after: Option<i64>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

/// One page of records.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<StoredAuditRecord>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}
