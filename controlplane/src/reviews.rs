//! The review (human approval) queue: statements a policy holds for approvers.
//!
//! A data plane files a review (`POST /v1/reviews`) when a statement's verdict is *review*;
//! approvers approve or deny it; the data plane either long-polls for the decision
//! (`GET /v1/reviews/{id}/wait`) or, when its client resends the statement, asks to use the
//! approval (`POST /v1/reviews/consume`).
//!
//! Rules, all enforced here under the store's write lock:
//! - one live review per (identity, connection, exact statement): filing it again returns the
//!   pending one, or the approved one that has not been used up;
//! - nobody approves their own request (the API token's name against the review's identity,
//!   compared case-insensitively), and each approver counts once: `min_approvers` distinct
//!   approvals make it approved; one denial by anyone with the role ends it;
//! - an approval is for that statement, identity and connection only; it is single-use unless
//!   every approval states a time window (`window_s`), in which case it may be used repeatedly
//!   for the shortest window stated; a single-use approval not used within
//!   [`Settings::review_approval_ttl`](crate::service::Settings) expires;
//! - a pending review past its expiry reads as `expired` (the stored status is only
//!   updated lazily; every read computes the status at the current time).
//!
//! Waiters are woken in-process by a broadcast of changed review ids and then re-read the
//! store; they also re-read it every [`Settings::review_recheck`](crate::service::Settings),
//! which is how a decision taken on *another* replica over the same PostgreSQL reaches them
//! (within that interval rather than at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;
use utoipa::IntoParams;

/// The review bodies are the API's wire types, shared with its clients.
pub use sluice_client::wire::review::{
    ConsumeRequest, Decision, DecisionKind, DecisionRequest, Review, ReviewRequest, ReviewStatus,
    MAX_COMMENT_CHARS, MAX_MIN_APPROVERS, MAX_STATEMENT_BYTES,
};

use crate::document::Event;
use crate::notify;
use crate::service::{audit_change, ControlPlane, Principal, ServiceError};
use crate::store::reviews::{self as rows, ReviewRow};
use crate::store::{now_ms, StoreError};

/// A stored review as the API shows it at `now`.
fn review_of(row: ReviewRow, decisions: Vec<Decision>, now: i64) -> Review {
    let status = row.status_at(now);
    let approvers = decisions
        .iter()
        .filter(|d| d.decision == DecisionKind::Approve)
        .map(|d| d.approver.clone())
        .collect();
    let deny = decisions.iter().find(|d| d.decision == DecisionKind::Deny);
    Review {
        status,
        approvers,
        denied_by: deny.map(|d| d.approver.clone()),
        deny_comment: deny.and_then(|d| d.comment.clone()),
        decisions,
        id: row.id,
        identity: row.identity,
        connection: row.connection,
        role: row.role,
        statement: row.statement,
        rule_id: row.rule_id,
        message: row.message,
        node_id: row.node_id,
        session_id: row.session_id,
        min_approvers: row.min_approvers,
        wait: row.wait,
        created_at: row.created_at,
        expires_at: row.expires_at,
        decided_at: row.decided_at,
        use_until: row.use_until,
        reusable: row.reusable,
        used_at: row.used_at,
        use_count: row.use_count,
    }
}

/// `GET /v1/reviews` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only reviews with this status now.
    pub status: Option<ReviewStatus>,
    /// At most this many, newest first (1-1000, default 100).
    pub limit: Option<u32>,
}

/// `GET /v1/reviews/{id}/wait` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// How long to wait for a decision, in ms (at most the server's long-poll timeout, ~30 s).
    pub timeout_ms: Option<u64>,
}

/// Wakes long-polls when a review changes; see the module documentation.
#[derive(Debug)]
pub struct ReviewHub {
    changed: broadcast::Sender<Arc<str>>,
}

impl Default for ReviewHub {
    fn default() -> Self {
        // A waiter that falls this far behind re-reads the store (`Lagged`), so the capacity
        // only bounds memory.
        let (changed, _) = broadcast::channel(1024);
        ReviewHub { changed }
    }
}

impl ReviewHub {
    fn notify(&self, id: &str) {
        let _ = self.changed.send(Arc::from(id));
    }
}

/// SHA-256 of a statement, hex: the de-duplication key.
pub fn statement_hash(statement: &str) -> String {
    Sha256::digest(statement.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ServiceError> {
    if v.is_empty() || v.len() > max {
        return Err(ServiceError::BadRequest(format!(
            "{field} must be 1-{max} bytes"
        )));
    }
    Ok(())
}

/// Whether `approver` is the identity that filed the review. Case-insensitive: refusing
/// `CI-Bot` approving `ci-bot` errs on the safe side.
fn same_person(approver: &str, identity: &str) -> bool {
    approver.to_lowercase() == identity.to_lowercase()
}

impl ControlPlane {
    /// Files a review, or returns the live one for the same identity, connection and
    /// statement; the flag is true when it was created now.
    pub async fn create_review(
        &self,
        who: &Principal,
        req: ReviewRequest,
    ) -> Result<(Review, bool), ServiceError> {
        check_text("identity", &req.identity, 200)?;
        check_text("connection", &req.connection, 200)?;
        check_text("role", &req.role, 200)?;
        check_text("rule_id", &req.rule_id, 500)?;
        check_text("node_id", &req.node_id, 100)?;
        check_text("statement", &req.statement, MAX_STATEMENT_BYTES)?;
        if req.message.as_ref().is_some_and(|m| m.len() > 4096) {
            return Err(ServiceError::BadRequest(
                "message must be at most 4096 bytes".into(),
            ));
        }
        if req.session_id.as_ref().is_some_and(|s| s.len() > 200) {
            return Err(ServiceError::BadRequest(
                "session_id must be at most 200 bytes".into(),
            ));
        }
        if !(1..=MAX_MIN_APPROVERS).contains(&req.min_approvers) {
            return Err(ServiceError::BadRequest(format!(
                "min_approvers must be 1-{MAX_MIN_APPROVERS}"
            )));
        }
        let max_expiry = self.settings.max_review_expiry;
        if req.expires_in_ms < 1000 || req.expires_in_ms > ms(max_expiry).unsigned_abs() {
            return Err(ServiceError::BadRequest(format!(
                "expires_in_ms must be between 1000 and {}",
                ms(max_expiry)
            )));
        }
        let hash = statement_hash(&req.statement);
        let mut w = self.store().write().await?;
        let now = now_ms();
        // Pending reviews past their expiry no longer hold the one-pending slot.
        rows::expire_stale(&mut w.tx, &req.identity, &req.connection, &hash, now).await?;
        let live = rows::live_reviews(&mut w.tx, &req.identity, &req.connection, &hash, now, false)
            .await?;
        if let Some(row) = live.into_iter().find(|r| r.statement == req.statement) {
            w.commit().await?;
            return Ok((self.load(row, now).await?, false));
        }
        let row = ReviewRow {
            id: uuid::Uuid::new_v4().to_string(),
            identity: req.identity,
            connection: req.connection,
            role: req.role,
            statement: req.statement,
            statement_hash: hash,
            rule_id: req.rule_id,
            message: req.message,
            node_id: req.node_id,
            session_id: req.session_id,
            min_approvers: req.min_approvers,
            wait: req.wait,
            status: ReviewStatus::Pending,
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(req.expires_in_ms).unwrap_or(i64::MAX)),
            decided_at: None,
            use_until: None,
            reusable: false,
            used_at: None,
            use_count: 0,
        };
        rows::insert_review(&mut w.tx, &row).await?;
        let detail = serde_json::json!({
            "identity": row.identity, "connection": row.connection, "role": row.role,
            "rule_id": row.rule_id, "node_id": row.node_id, "min_approvers": row.min_approvers,
            "expires_at": row.expires_at, "statement_hash": row.statement_hash,
        });
        audit_change(&mut w, who, "review.create", &row.id, detail).await?;
        let review = review_of(row, Vec::new(), now);
        let told = notify::enqueue(
            &mut w,
            Event::ReviewCreated,
            &review.id,
            &serde_json::to_value(&review).unwrap_or_default(),
        )
        .await?;
        w.commit().await?;
        if told {
            self.deliveries.wake();
        }
        self.metrics
            .reviews_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((review, true))
    }

    /// One review as it stands now.
    pub async fn review(&self, id: &str) -> Result<Review, ServiceError> {
        let mut c = self.store().conn().await?;
        let Some(row) = rows::review(&mut c, id).await? else {
            return Err(ServiceError::NotFound(format!("no review `{id}`")));
        };
        let decisions = rows::decisions(&mut c, &[id]).await?;
        Ok(review_of(
            row,
            decisions.into_iter().map(|(_, d)| d).collect(),
            now_ms(),
        ))
    }

    async fn load(&self, row: ReviewRow, now: i64) -> Result<Review, StoreError> {
        let mut c = self.store().conn().await?;
        let decisions = rows::decisions(&mut c, &[row.id.as_str()]).await?;
        Ok(review_of(
            row,
            decisions.into_iter().map(|(_, d)| d).collect(),
            now,
        ))
    }

    /// Reviews by their status now, newest first.
    pub async fn list_reviews(&self, q: &ListParams) -> Result<Vec<Review>, ServiceError> {
        let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
        let now = now_ms();
        let mut c = self.store().conn().await?;
        let found = rows::list_reviews(&mut c, q.status, now, limit).await?;
        let mut by_review: HashMap<String, Vec<Decision>> = HashMap::new();
        // Bounded IN lists: well under both stores' bind limits.
        for chunk in found.chunks(500) {
            let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
            for (id, d) in rows::decisions(&mut c, &ids).await? {
                by_review.entry(id).or_default().push(d);
            }
        }
        Ok(found
            .into_iter()
            .map(|r| {
                let d = by_review.remove(&r.id).unwrap_or_default();
                review_of(r, d, now)
            })
            .collect())
    }

    /// Approves or denies a pending review as `who`; see the module documentation.
    pub async fn decide_review(
        &self,
        who: &Principal,
        id: &str,
        kind: DecisionKind,
        req: DecisionRequest,
    ) -> Result<Review, ServiceError> {
        if req
            .comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
        {
            return Err(ServiceError::BadRequest(format!(
                "comment must be at most {MAX_COMMENT_CHARS} characters"
            )));
        }
        let max_window = self.settings.max_review_window.as_secs();
        match (kind, req.window_s) {
            (DecisionKind::Deny, Some(_)) => {
                return Err(ServiceError::BadRequest(
                    "window_s applies to approvals only".into(),
                ))
            }
            (DecisionKind::Approve, Some(w)) if w == 0 || w > max_window => {
                return Err(ServiceError::BadRequest(format!(
                    "window_s must be between 1 and {max_window}"
                )))
            }
            _ => {}
        }
        let mut w = self.store().write().await?;
        let now = now_ms();
        let Some(row) = rows::review(&mut w.tx, id).await? else {
            return Err(ServiceError::NotFound(format!("no review `{id}`")));
        };
        let status = row.status_at(now);
        if status != ReviewStatus::Pending {
            return Err(ServiceError::Conflict(format!(
                "review `{id}` is {status}; only a pending review can be decided"
            )));
        }
        if kind == DecisionKind::Approve && same_person(&who.name, &row.identity) {
            return Err(ServiceError::Forbidden(format!(
                "nobody approves their own request: the token `{}` is the identity that sent \
                 the statement under review",
                who.name
            )));
        }
        let mut decisions: Vec<Decision> = rows::decisions(&mut w.tx, &[id])
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        if decisions.iter().any(|d| d.approver == who.name) {
            return Err(ServiceError::Conflict(format!(
                "`{}` has already decided review `{id}`; each approver counts once \
                 ({} distinct approvals needed)",
                who.name, row.min_approvers
            )));
        }
        let decision = Decision {
            approver: who.name.clone(),
            decision: kind,
            comment: req.comment,
            window_s: req.window_s,
            at: now,
        };
        rows::insert_decision(&mut w.tx, id, &decision).await?;
        decisions.push(decision);
        let approvals: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.decision == DecisionKind::Approve)
            .collect();
        let new_status = match kind {
            DecisionKind::Deny => Some((ReviewStatus::Denied, None, false)),
            DecisionKind::Approve if approvals.len() >= row.min_approvers as usize => {
                // Reusable only if every approver agreed to a window; then the shortest.
                let window = approvals
                    .iter()
                    .map(|d| d.window_s)
                    .collect::<Option<Vec<u64>>>()
                    .and_then(|w| w.into_iter().min());
                let valid_for = match window {
                    Some(s) => Duration::from_secs(s),
                    None => self.settings.review_approval_ttl,
                };
                let until = now.saturating_add(ms(valid_for));
                Some((ReviewStatus::Approved, Some(until), window.is_some()))
            }
            DecisionKind::Approve => None,
        };
        if let Some((status, until, reusable)) = new_status {
            if !rows::decide(&mut w.tx, id, status, now, until, reusable).await? {
                return Err(ServiceError::Conflict(format!(
                    "review `{id}` was decided concurrently; read it again"
                )));
            }
        }
        let detail = serde_json::json!({
            "status": new_status.map_or(ReviewStatus::Pending, |s| s.0),
            "approvals": approvals.len(), "min_approvers": row.min_approvers,
            "window_s": req.window_s, "identity": row.identity, "connection": row.connection,
        });
        let action = match kind {
            DecisionKind::Approve => "review.approve",
            DecisionKind::Deny => "review.deny",
        };
        audit_change(&mut w, who, action, id, detail).await?;
        let told = match (new_status, rows::review(&mut w.tx, id).await?) {
            (Some(_), Some(decided)) => {
                let review = review_of(decided, decisions, now);
                let data = serde_json::to_value(&review).unwrap_or_default();
                notify::enqueue(&mut w, Event::ReviewDecided, id, &data).await?
            }
            _ => false,
        };
        w.commit().await?;
        if told {
            self.deliveries.wake();
        }
        self.metrics
            .review_decisions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reviews.notify(id);
        self.review(id).await
    }

    /// Uses the approval of exactly this statement, identity and connection, if there is
    /// one: a single-use approval becomes `used`; one with a window stays approved.
    pub async fn consume_review(
        &self,
        who: &Principal,
        req: &ConsumeRequest,
    ) -> Result<Option<Review>, ServiceError> {
        check_text("identity", &req.identity, 200)?;
        check_text("connection", &req.connection, 200)?;
        check_text("statement", &req.statement, MAX_STATEMENT_BYTES)?;
        let hash = statement_hash(&req.statement);
        let mut w = self.store().write().await?;
        let now = now_ms();
        let live =
            rows::live_reviews(&mut w.tx, &req.identity, &req.connection, &hash, now, true).await?;
        let Some(row) = live.into_iter().find(|r| r.statement == req.statement) else {
            return Ok(None);
        };
        if !rows::record_use(&mut w.tx, &row.id, row.reusable, now).await? {
            // Used up concurrently (another replica): as if there were none.
            return Ok(None);
        }
        let detail = serde_json::json!({
            "identity": row.identity, "connection": row.connection,
            "reusable": row.reusable, "use": row.use_count + 1,
        });
        audit_change(&mut w, who, "review.consume", &row.id, detail).await?;
        w.commit().await?;
        self.reviews.notify(&row.id);
        Ok(Some(self.review(&row.id).await?))
    }

    /// Waits until review `id` is no longer pending, or `timeout` passes; answers the review
    /// as it stands then.
    pub async fn wait_review(&self, id: &str, timeout: Duration) -> Result<Review, ServiceError> {
        // Subscribe before reading, so a decision between the read and the wait is not missed.
        let mut rx = self.reviews.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.review(id).await?;
            let now = tokio::time::Instant::now();
            if r.status != ReviewStatus::Pending || now >= deadline {
                return Ok(r);
            }
            // Wake at the deadline, at the review's expiry (it then reads as expired), or for
            // the periodic re-read that picks up other replicas' decisions.
            let to_expiry = u64::try_from(r.expires_at.saturating_sub(now_ms()))
                .unwrap_or(0)
                .saturating_add(1);
            let wake = deadline
                .min(now + Duration::from_millis(to_expiry))
                .min(now + self.settings.review_recheck);
            loop {
                match tokio::time::timeout_at(wake, rx.recv()).await {
                    Ok(Ok(changed)) if &*changed == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(wake).await;
                        break;
                    }
                    Err(_elapsed) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in [
            ReviewStatus::Pending,
            ReviewStatus::Approved,
            ReviewStatus::Denied,
            ReviewStatus::Expired,
            ReviewStatus::Used,
        ] {
            assert_eq!(ReviewStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(ReviewStatus::parse("Pending"), None);
    }

    #[test]
    fn self_approval_ignores_case() {
        assert!(same_person("CI-Bot", "ci-bot"));
        assert!(!same_person("alice", "ci-bot"));
    }

    #[test]
    fn hashes_are_stable_hex() {
        let h = statement_hash("DELETE FROM t");
        assert_eq!(h.len(), 64);
        assert_eq!(h, statement_hash("DELETE FROM t"));
        assert_ne!(h, statement_hash("DELETE FROM t "));
    }
}
