//! Audit records as the API returns them; the batches data planes ship are
//! [`sluice_policy::audit`]'s.

use serde::Deserialize;

/// The batches data planes ship, and the pages this API answers, are wire types shared with
/// the API's clients (the record format is sluice-policy's); re-exported at their old paths.
pub use sluice_client::wire::audit::{
    AuditBatch, AuditPage, AuditRecord, StoredAuditRecord, MAX_BATCH_ID_LEN, VERDICTS,
};

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

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    /// The shared wire types keep their schema in the OpenAPI document (sluice-policy's
    /// `openapi` feature), field by field.
    #[test]
    fn openapi_describes_the_shared_audit_types() {
        let doc = serde_json::to_value(crate::api::ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let batch = &schemas["AuditBatch"];
        assert_eq!(
            batch["required"],
            serde_json::json!(["batch_id", "node_id", "records"]),
            "{batch}"
        );
        let record = &schemas["AuditRecord"]["properties"];
        for field in [
            "time_ms",
            "identity",
            "verdict",
            "masked_columns",
            "duration_us",
        ] {
            assert!(
                record[field].is_object(),
                "AuditRecord lacks {field}: {record}"
            );
        }
        assert!(schemas["AuditPage"].is_object());
    }
}
