//! The session's side of reviews: a statement the policy holds for an approver stops the
//! batch before it, the client reader asks the control plane and waits (without blocking the
//! core), and the next pass over the same message runs it once or fails it.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::sqlstate;

use super::{Session, State};
use crate::review::{ReviewClient, ReviewError, ReviewStatus};

/// A statement held for review, as the client reader needs it.
pub(super) struct ReviewNeeded {
    sql: String,
    rule: String,
    message: String,
}

/// Where the session is with reviews.
#[derive(Default)]
pub(super) struct ReviewState {
    /// A statement held for review stopped the batch before it; the client reader asks.
    pub(super) needed: Option<ReviewNeeded>,
    /// The reviewed text may run once (approved).
    pass: Option<String>,
    /// The reviewed text fails with this error (denied, expired, unreachable).
    outcome: Option<(String, Bytes)>,
    /// Approvers of the statement a review just let through, for its audit record.
    pub(super) approvers: Option<(String, Vec<String>)>,
    /// The statement just judged was let through by a review approval.
    pub(super) passed: bool,
    /// Texts that went over `max_affected_rows` under `over_limit: review`: sent again, each
    /// is judged a review, and runs once without the limit when approved.
    pub(super) over_limit: HashSet<String>,
    /// A write just rolled back for going over its limit, to hold for review: its text, rule
    /// and message.
    pub(super) hold: Option<(String, String, String)>,
}

impl Session {
    /// What the client gets for a review verdict: the statement runs once if an approval was
    /// just found for this exact text, fails with the decision's error if one was just
    /// reached, and otherwise stops the batch (see [`ReviewState::needed`]) so the client
    /// reader can ask the control plane.
    pub(super) fn review_verdict(
        &self,
        st: &mut State,
        sql: &str,
        rule: &str,
        message: String,
    ) -> Option<Bytes> {
        if st.review.pass.as_deref() == Some(sql) {
            st.review.pass = None;
            st.review.passed = true;
            return None;
        }
        if let Some((text, error)) = st.review.outcome.take() {
            if text == sql {
                self.audit_denied(sql, rule, "review did not approve it");
                return Some(error);
            }
        }
        if self.ctx.review_client().is_none() {
            return Some(self.denial(
                rule,
                &format!(
                    "{message} (needs an approver's review, and this gateway has no control plane to ask: denied)"
                ),
            ));
        }
        st.review.needed = Some(ReviewNeeded {
            sql: sql.to_owned(),
            rule: rule.to_owned(),
            message,
        });
        // A placeholder: the batch stops before this message.
        Some(Bytes::new())
    }

    /// Asks the control plane about a statement held for review, then records the outcome
    /// for the next pass over the same message: a pass, or the error the client gets.
    pub(super) async fn review(self: &Rc<Self>, need: ReviewNeeded) {
        let Some(client) = self.ctx.review_client() else {
            return;
        };
        let outcome = self.ask(&client, &need).await;
        let mut st = self.st.borrow_mut();
        match outcome {
            Ok(approvers) => {
                st.review.approvers = Some((need.sql.clone(), approvers));
                st.review.pass = Some(need.sql);
            }
            Err(e) => st.review.outcome = Some((need.sql, e)),
        }
    }

    /// An approval given earlier for this exact statement, else a new review, waited for when
    /// the policy says so: the approvers, or the error the client gets.
    async fn ask(&self, client: &ReviewClient, need: &ReviewNeeded) -> Result<Vec<String>, Bytes> {
        let settings = self.st.borrow().judge.policy().review().clone();
        let identity = self.subject.clone();
        let unreachable = |e: ReviewError| {
            self.review_error(
                sqlstate::CONNECTION_FAILURE,
                &format!(
                    "sluice: statement needs review and the control plane cannot be asked: {e}"
                ),
            )
        };
        // An approval given earlier for this exact statement (the resend mode).
        if let Some(ticket) = client
            .consume(&identity, &self.connection, &need.sql)
            .await
            .map_err(unreachable)?
        {
            return Ok(ticket.status.approvers().to_vec());
        }
        let ticket = client
            .request(crate::review::ReviewRequest {
                identity: identity.clone(),
                connection: self.connection.to_string(),
                role: self.role.to_string(),
                statement: need.sql.clone(),
                rule_id: need.rule.clone(),
                message: Some(need.message.clone()),
                node_id: client.node_id().to_owned(),
                session_id: None,
                min_approvers: settings.min_approvers,
                wait: settings.wait,
                expires_in_ms: u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
            })
            .await
            .map_err(unreachable)?;
        self.ctx.metrics.reviews_requested.inc();
        if !settings.wait {
            return Err(self.review_error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                &format!(
                    "sluice: {} — held for review {}; run the same statement again once it is approved",
                    need.message, ticket.id
                ),
            ));
        }
        let mut notice = BytesMut::new();
        let text = format!(
            "sluice: statement held for review {} ({}); waiting up to {} s for an approver",
            ticket.id,
            need.rule,
            settings.timeout.as_secs()
        );
        encode::notice_response(
            &mut notice,
            &ErrorResponse {
                severity: "NOTICE",
                ..ErrorResponse::error("01000", &text)
            },
        );
        {
            let mut st = self.st.borrow_mut();
            self.push_out(&mut st.out, notice.freeze());
        }
        let Some(status) = self
            .wait_or_cancel(client, &ticket.id, settings.timeout)
            .await
        else {
            return Err(self.review_error(
                sqlstate::QUERY_CANCELED,
                &format!(
                    "canceling statement due to user request (review {} stays pending)",
                    ticket.id
                ),
            ));
        };
        let id = &ticket.id;
        match status {
            Ok(ReviewStatus::Approved { approvers }) => {
                // Use the approval up (single-use unless it has a window).
                match client.consume(&identity, &self.connection, &need.sql).await {
                    Ok(Some(_)) => Ok(approvers),
                    _ => Err(self.review_error(
                        sqlstate::QUERY_CANCELED,
                        &format!("sluice: review {id} was approved but could not be used"),
                    )),
                }
            }
            Ok(ReviewStatus::Denied { by, comment }) => Err(self.review_error(
                sqlstate::QUERY_CANCELED,
                &format!(
                    "sluice: review {id} was denied by {by}{}",
                    comment.map(|c| format!(": {c}")).unwrap_or_default()
                ),
            )),
            Ok(other) => Err(self.review_error(
                sqlstate::QUERY_CANCELED,
                &format!(
                    "sluice: review {id} was not approved in time ({})",
                    other.as_str()
                ),
            )),
            Err(e) => Err(self.review_error(
                sqlstate::QUERY_CANCELED,
                &format!("sluice: waiting for review {id} failed: {e}"),
            )),
        }
    }

    /// Waits for review `id` to be decided; `None` when a CancelRequest (or the session's
    /// end) stops the wait first, as it would a running query (57014). The review stays
    /// pending for the approvers either way.
    async fn wait_or_cancel(
        &self,
        client: &ReviewClient,
        id: &str,
        timeout: Duration,
    ) -> Option<Result<ReviewStatus, ReviewError>> {
        use futures::FutureExt as _;
        self.slot.take_cancel_request();
        let mut wait = std::pin::pin!(client.wait(id, timeout).fuse());
        let cancelled = async {
            loop {
                monoio::time::sleep(Duration::from_millis(50)).await;
                if self.slot.take_cancel_request() || self.st.borrow().out.closing {
                    break;
                }
            }
        };
        let mut cancelled = std::pin::pin!(cancelled.fuse());
        futures::select! {
            s = wait => Some(s),
            _ = cancelled => None,
        }
    }

    /// Holds a write that went over its row limit (and was rolled back) for review; the
    /// error the client gets, carrying the review's id.
    pub(super) async fn request_over_limit_review(
        &self,
        sql: &str,
        rule: &str,
        message: &str,
    ) -> Bytes {
        let hint = "an approver may let this statement run once without the limit";
        let Some(client) = self.ctx.review_client() else {
            return super::guard::over_limit_response(
                &format!("{message} (needs an approver's review, and this gateway has no control plane to ask)"),
                hint,
            );
        };
        let settings = self.st.borrow().judge.policy().review().clone();
        let ticket = client
            .request(crate::review::ReviewRequest {
                identity: self.subject.clone(),
                connection: self.connection.to_string(),
                role: self.role.to_string(),
                statement: sql.to_owned(),
                rule_id: rule.to_owned(),
                message: Some(message.to_owned()),
                node_id: client.node_id().to_owned(),
                session_id: None,
                min_approvers: settings.min_approvers,
                wait: false,
                expires_in_ms: u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
            })
            .await;
        match ticket {
            Ok(ticket) => {
                self.ctx.metrics.reviews_requested.inc();
                super::guard::over_limit_response(
                    &format!(
                        "{message}; held for review {}: run the same statement again in this session once it is approved",
                        ticket.id
                    ),
                    hint,
                )
            }
            Err(e) => super::guard::over_limit_response(
                &format!("{message} (needs an approver's review, and the control plane cannot be asked: {e})"),
                hint,
            ),
        }
    }

    fn review_error(&self, code: &'static str, message: &str) -> Bytes {
        tracing::info!(peer = %self.peer, subject = %self.subject, message, "statement not run after review");
        let mut b = BytesMut::new();
        encode::error_response(&mut b, &ErrorResponse::error(code, message));
        b.freeze()
    }
}
