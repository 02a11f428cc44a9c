//! Rows of the review queue (`reviews`, `review_decisions`), each on a connection or
//! transaction the caller holds. Status as read from here is the stored one; what a review
//! *is* at a given time ([`ReviewRow::status_at`]) also depends on the clock.

use sqlx::{AnyConnection, Row};

use super::StoreError;
use crate::reviews::{Decision, DecisionKind, ReviewStatus};

type Conn = AnyConnection;

/// A review as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: String,
    pub identity: String,
    pub connection: String,
    pub role: String,
    pub statement: String,
    pub statement_hash: String,
    pub rule_id: String,
    pub message: Option<String>,
    pub node_id: String,
    pub session_id: Option<String>,
    pub min_approvers: u32,
    pub wait: bool,
    pub status: ReviewStatus,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub use_until: Option<i64>,
    pub reusable: bool,
    pub used_at: Option<i64>,
    pub use_count: u64,
}

impl ReviewRow {
    /// The status at `now`: a pending review past its expiry, or an approval past its use
    /// window, is expired whatever is stored.
    pub fn status_at(&self, now: i64) -> ReviewStatus {
        match self.status {
            ReviewStatus::Pending if now >= self.expires_at => ReviewStatus::Expired,
            ReviewStatus::Approved if self.use_until.is_none_or(|u| now >= u) => {
                ReviewStatus::Expired
            }
            s => s,
        }
    }
}

const COLS: &str = "id, identity, connection, role, statement, statement_hash, rule_id, message, \
    node_id, session_id, min_approvers, wait, status, created_at, expires_at, decided_at, \
    use_until, reusable, used_at, use_count";

fn row_of(r: &sqlx::any::AnyRow) -> Result<ReviewRow, StoreError> {
    let status: String = r.try_get("status")?;
    let min: i64 = r.try_get("min_approvers")?;
    let wait: i64 = r.try_get("wait")?;
    let reusable: i64 = r.try_get("reusable")?;
    let uses: i64 = r.try_get("use_count")?;
    Ok(ReviewRow {
        id: r.try_get("id")?,
        identity: r.try_get("identity")?,
        connection: r.try_get("connection")?,
        role: r.try_get("role")?,
        statement: r.try_get("statement")?,
        statement_hash: r.try_get("statement_hash")?,
        rule_id: r.try_get("rule_id")?,
        message: r.try_get("message")?,
        node_id: r.try_get("node_id")?,
        session_id: r.try_get("session_id")?,
        min_approvers: u32::try_from(min)
            .map_err(|_| StoreError::Corrupt(format!("reviews.min_approvers {min}")))?,
        wait: wait != 0,
        status: ReviewStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("reviews.status `{status}`")))?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
        use_until: r.try_get("use_until")?,
        reusable: reusable != 0,
        used_at: r.try_get("used_at")?,
        use_count: u64::try_from(uses).unwrap_or(0),
    })
}

pub async fn insert_review(c: &mut Conn, r: &ReviewRow) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO reviews ({COLS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    ))
    .bind(&r.id)
    .bind(&r.identity)
    .bind(&r.connection)
    .bind(&r.role)
    .bind(&r.statement)
    .bind(&r.statement_hash)
    .bind(&r.rule_id)
    .bind(r.message.clone())
    .bind(&r.node_id)
    .bind(r.session_id.clone())
    .bind(i64::from(r.min_approvers))
    .bind(i64::from(r.wait))
    .bind(r.status.as_str())
    .bind(r.created_at)
    .bind(r.expires_at)
    .bind(r.decided_at)
    .bind(r.use_until)
    .bind(i64::from(r.reusable))
    .bind(r.used_at)
    .bind(i64::try_from(r.use_count).unwrap_or(i64::MAX))
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn review(c: &mut Conn, id: &str) -> Result<Option<ReviewRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLS} FROM reviews WHERE id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(row_of).transpose()
}

/// Marks pending reviews of this (identity, connection, statement) that expired before `now`
/// as expired, so they no longer hold the one-pending slot.
pub async fn expire_stale(
    c: &mut Conn,
    identity: &str,
    connection: &str,
    hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE reviews SET status = 'expired' WHERE identity = $1 AND connection = $2 \
         AND statement_hash = $3 AND status = 'pending' AND expires_at <= $4",
    )
    .bind(identity)
    .bind(connection)
    .bind(hash)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

/// Reviews of this (identity, connection, statement hash) that are live at `now`: pending and
/// not expired, or approved within their use window; `approved_only` leaves out pending ones.
/// Oldest approval first, so a consumer uses up the one that expires soonest.
pub async fn live_reviews(
    c: &mut Conn,
    identity: &str,
    connection: &str,
    hash: &str,
    now: i64,
    approved_only: bool,
) -> Result<Vec<ReviewRow>, StoreError> {
    let pending = if approved_only {
        ""
    } else {
        "(status = 'pending' AND expires_at > $4) OR "
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM reviews WHERE identity = $1 AND connection = $2 AND statement_hash = $3 \
         AND ({pending}(status = 'approved' AND use_until > $4)) \
         ORDER BY decided_at ASC, created_at ASC LIMIT 20"
    ))
    .bind(identity)
    .bind(connection)
    .bind(hash)
    .bind(now)
    .fetch_all(c)
    .await?;
    rows.iter().map(row_of).collect()
}

/// Reviews whose status at `now` is `status` (all when `None`), newest first.
pub async fn list_reviews(
    c: &mut Conn,
    status: Option<ReviewStatus>,
    now: i64,
    limit: i64,
) -> Result<Vec<ReviewRow>, StoreError> {
    // `$1` is `now` where the condition depends on the clock, else the limit.
    let (cond, clocked) = match status {
        None => ("", false),
        Some(ReviewStatus::Pending) => ("WHERE status = 'pending' AND expires_at > $1", true),
        Some(ReviewStatus::Approved) => ("WHERE status = 'approved' AND use_until > $1", true),
        Some(ReviewStatus::Denied) => ("WHERE status = 'denied'", false),
        Some(ReviewStatus::Used) => ("WHERE status = 'used'", false),
        Some(ReviewStatus::Expired) => (
            "WHERE status = 'expired' OR (status = 'pending' AND expires_at <= $1) \
             OR (status = 'approved' AND (use_until IS NULL OR use_until <= $1))",
            true,
        ),
    };
    let limit_mark = if clocked { "$2" } else { "$1" };
    let sql = format!(
        "SELECT {COLS} FROM reviews {cond} ORDER BY created_at DESC, id LIMIT {limit_mark}"
    );
    let mut q = sqlx::query(&sql);
    if clocked {
        q = q.bind(now);
    }
    let rows = q.bind(limit).fetch_all(c).await?;
    rows.iter().map(row_of).collect()
}

/// The decisions on the reviews `ids`, in the order they were made.
pub async fn decisions(c: &mut Conn, ids: &[&str]) -> Result<Vec<(String, Decision)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT review_id, approver, decision, comment, window_ms, at_ms FROM review_decisions \
         WHERE review_id IN ({}) ORDER BY at_ms, approver",
        marks.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(c).await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("decision")?;
            let window_ms: Option<i64> = r.try_get("window_ms")?;
            Ok((
                r.try_get("review_id")?,
                Decision {
                    approver: r.try_get("approver")?,
                    decision: match kind.as_str() {
                        "approve" => DecisionKind::Approve,
                        "deny" => DecisionKind::Deny,
                        other => {
                            return Err(StoreError::Corrupt(format!(
                                "review_decisions.decision `{other}`"
                            )))
                        }
                    },
                    comment: r.try_get("comment")?,
                    window_s: window_ms.and_then(|ms| u64::try_from(ms / 1000).ok()),
                    at: r.try_get("at_ms")?,
                },
            ))
        })
        .collect()
}

pub async fn insert_decision(
    c: &mut Conn,
    review_id: &str,
    d: &Decision,
) -> Result<(), StoreError> {
    let window_ms = d
        .window_s
        .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO review_decisions (review_id, approver, decision, comment, window_ms, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(review_id)
    .bind(&d.approver)
    .bind(d.decision.as_str())
    .bind(d.comment.clone())
    .bind(window_ms)
    .bind(d.at)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// Moves a pending review to `approved` or `denied`; false if it was no longer pending
/// (another replica decided it first).
pub async fn decide(
    c: &mut Conn,
    id: &str,
    status: ReviewStatus,
    at: i64,
    use_until: Option<i64>,
    reusable: bool,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE reviews SET status = $1, decided_at = $2, use_until = $3, reusable = $4 \
         WHERE id = $5 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(at)
    .bind(use_until)
    .bind(i64::from(reusable))
    .bind(id)
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records one use of an approval: a single-use one becomes `used`, one with a window stays
/// `approved`. False if it was no longer approved (used up by another replica).
pub async fn record_use(
    c: &mut Conn,
    id: &str,
    reusable: bool,
    at: i64,
) -> Result<bool, StoreError> {
    let status = if reusable { "approved" } else { "used" };
    let r = sqlx::query(
        "UPDATE reviews SET status = $1, used_at = $2, use_count = use_count + 1 \
         WHERE id = $3 AND status = 'approved'",
    )
    .bind(status)
    .bind(at)
    .bind(id)
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}
