//! The review queue's bodies: what a data plane files, what approvers send, and a review as
//! the API shows it.

use serde::{Deserialize, Serialize};

/// Longest statement a review may carry.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// Most approvers a review may ask for.
pub const MAX_MIN_APPROVERS: u32 = 10;
/// Longest comment on a decision.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// Where a review stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    /// Waiting for approvers.
    Pending,
    /// Approved and usable (once, or repeatedly within its window).
    Approved,
    /// Denied by an approver.
    Denied,
    /// Not decided before its expiry, or an approval not used (or its window passed).
    Expired,
    /// A single-use approval that has been used.
    Used,
}

impl ReviewStatus {
    /// The name the API uses (`pending`, `approved`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Denied => "denied",
            ReviewStatus::Expired => "expired",
            ReviewStatus::Used => "used",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ReviewStatus::Pending,
            "approved" => ReviewStatus::Approved,
            "denied" => ReviewStatus::Denied,
            "expired" => ReviewStatus::Expired,
            "used" => ReviewStatus::Used,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ReviewStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/reviews` body: a statement a data plane holds for review.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// Who sent the statement (token subject).
    pub identity: String,
    /// The connection name the client used.
    pub connection: String,
    /// The role the identity was mapped to.
    pub role: String,
    /// The full statement text (at most 1 MiB); the approval is for exactly this text.
    pub statement: String,
    /// The policy rule that asked for review.
    pub rule_id: String,
    /// The verdict's message, for approvers.
    #[serde(default)]
    pub message: Option<String>,
    /// The data plane filing it.
    pub node_id: String,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Distinct approvals needed (1-10; the requester never counts).
    pub min_approvers: u32,
    /// Whether the client waits for the decision (informational, for approvers).
    pub wait: bool,
    /// How long the review stays pending (1 s up to the server's maximum, 24 h by default).
    pub expires_in_ms: u64,
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    Approve,
    Deny,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approve => "approve",
            DecisionKind::Deny => "deny",
        }
    }
}

/// One approver's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decision {
    /// The API token's name.
    pub approver: String,
    pub decision: DecisionKind,
    #[serde(default)]
    pub comment: Option<String>,
    /// The reuse window this approval asked for, in seconds.
    #[serde(default)]
    pub window_s: Option<u64>,
    /// Unix ms.
    pub at: i64,
}

/// `POST /v1/reviews/{id}/approve` and `/deny` body (may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    #[serde(default)]
    pub comment: Option<String>,
    /// Approve only: the approval may be used repeatedly for this many seconds; without it,
    /// once.
    #[serde(default)]
    pub window_s: Option<u64>,
}

/// `POST /v1/reviews/consume` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsumeRequest {
    pub identity: String,
    pub connection: String,
    pub statement: String,
}

/// A review as the API shows it; `status` is the status at the time of the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Review {
    pub id: String,
    pub identity: String,
    pub connection: String,
    pub role: String,
    pub statement: String,
    pub rule_id: String,
    pub message: Option<String>,
    pub node_id: String,
    pub session_id: Option<String>,
    pub min_approvers: u32,
    pub wait: bool,
    pub status: ReviewStatus,
    /// Unix ms.
    pub created_at: i64,
    /// Until when it may be decided (unix ms).
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    /// Until when the approval may be used (unix ms).
    pub use_until: Option<i64>,
    /// Usable repeatedly until `use_until` (every approval stated a window) instead of once.
    pub reusable: bool,
    pub used_at: Option<i64>,
    pub use_count: u64,
    /// Who approved, in order (for audit records).
    pub approvers: Vec<String>,
    pub denied_by: Option<String>,
    pub deny_comment: Option<String>,
    pub decisions: Vec<Decision>,
}
