//! The audit-record wire format: what data planes ship and the control plane stores.
//!
//! One [`AuditRecord`] per statement; records travel in an [`AuditBatch`] to
//! `POST /v1/audit/batches`. The `batch_id` makes delivery idempotent: the control plane
//! stores a batch id once and answers a repeat with `duplicate: true`, so a data plane may
//! resend whatever it is not sure was stored. Only serde here, so both planes share it;
//! with the `openapi` feature the types also derive `utoipa::ToSchema` for the control
//! plane's OpenAPI document.

use serde::{Deserialize, Serialize};

/// The verdicts a record may carry; the control plane refuses a batch with any other.
pub const VERDICTS: [&str; 3] = ["allow", "deny", "review"];

/// The longest `batch_id` the control plane accepts.
pub const MAX_BATCH_ID_LEN: usize = 200;

/// A batch from one data plane. `batch_id` makes retries idempotent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditBatch {
    /// Chosen by the data plane once per batch and kept across every retry (1-200 characters,
    /// unique across nodes).
    pub batch_id: String,
    /// The data plane that recorded the batch.
    pub node_id: String,
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
}

/// What happened to one statement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the statement started, unix milliseconds.
    pub time_ms: i64,
    /// The token's subject.
    pub identity: String,
    /// The token's id (`jti`) or fingerprint.
    #[serde(default)]
    pub token_id: Option<String>,
    /// The just-in-time grant the session runs under.
    #[serde(default)]
    pub grant_id: Option<String>,
    /// The connection (by its name in the policy, not a real database name).
    pub connection: String,
    /// The client session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The statement text as the client sent it.
    pub statement: String,
    /// `allow`, `deny` or `review` (see [`VERDICTS`]).
    pub verdict: String,
    /// The rule that decided the verdict.
    #[serde(default)]
    pub rule_id: Option<String>,
    /// The review that approved or refused the statement.
    #[serde(default)]
    pub review_id: Option<String>,
    /// Who approved it.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Columns masked in the result.
    #[serde(default)]
    pub masked_columns: Vec<String>,
    /// Rows returned or affected.
    #[serde(default)]
    pub rows: Option<i64>,
    /// Result bytes sent to the client.
    #[serde(default)]
    pub bytes: Option<i64>,
    /// From the statement's arrival to its completion, microseconds.
    #[serde(default)]
    pub duration_us: Option<i64>,
    /// The error the client got, if any.
    #[serde(default)]
    pub error: Option<String>,
}

impl AuditRecord {
    /// True when `verdict` is one the control plane accepts.
    pub fn has_known_verdict(&self) -> bool {
        VERDICTS.contains(&self.verdict.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_may_be_left_out_and_unknown_fields_are_refused() {
        let r: AuditRecord = serde_json::from_str(
            r#"{"time_ms":1,"identity":"a","connection":"c","statement":"SELECT 1","verdict":"allow"}"#,
        )
        .unwrap();
        assert_eq!(r.identity, "a");
        assert!(r.has_known_verdict());
        assert!(r.approvers.is_empty() && r.rows.is_none());
        let e = serde_json::from_str::<AuditRecord>(
            r#"{"time_ms":1,"identity":"a","connection":"c","statement":"","verdict":"allow","x":1}"#,
        );
        assert!(e.is_err());
    }

    #[test]
    fn batches_round_trip() {
        let b = AuditBatch {
            batch_id: "b-1".into(),
            node_id: "n".into(),
            records: vec![AuditRecord {
                verdict: "deny".into(),
                masked_columns: vec!["email".into()],
                rows: Some(3),
                ..AuditRecord::default()
            }],
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<AuditBatch>(&text).unwrap(), b);
    }
}
