//! The data plane's client of the control plane's review (human approval) queue.
//!
//! A statement whose verdict is *review* becomes a pending review at the control plane
//! ([`ReviewClient::request`]); the session then either waits for the decision
//! ([`ReviewClient::wait`]) or tells the client the review id, and on a later resend of the
//! same statement asks for the approval ([`ReviewClient::consume`]), which marks a single-use
//! approval used.
//!
//! The HTTP calls are blocking (`ureq`), so each runs on a short-lived thread of its own and
//! answers through a `futures` oneshot channel: a monoio core awaits the returned future and is
//! never blocked. Reviews wait on humans, so they are rare and slow; a thread per call costs
//! tens of microseconds, and [`ReviewClientSettings::max_in_flight`] bounds how many exist at
//! once. A dropped [`ReviewClient::wait`] future stops its thread at the end of the current
//! long-poll round (at most [`ReviewClientSettings::poll_wait`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use sluice_client::wire::review::{self as wire, ConsumeRequest, Review};
use sluice_client::{Answer, Client, ClientError};

/// What a review is about: the statement held back and who sent it (the API's body).
pub use sluice_client::wire::review::ReviewRequest;

/// Where a review stands. Decided states carry who decided, for audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewStatus {
    /// Not decided yet (also what [`ReviewClient::wait`] answers when its timeout passes).
    Pending,
    /// Approved and not yet used up: the statement may run.
    Approved {
        /// Names of the approvers (API token names), in the order they approved.
        approvers: Vec<String>,
    },
    /// Denied; the statement must not run.
    Denied {
        /// Who denied it.
        by: String,
        /// Their comment, if any.
        comment: Option<String>,
    },
    /// Nobody decided in time, or an approval's window has passed.
    Expired,
    /// A single-use approval that has been used.
    Used {
        /// Names of the approvers.
        approvers: Vec<String>,
    },
}

impl ReviewStatus {
    /// Whether the review is still waiting for approvers.
    pub fn is_pending(&self) -> bool {
        matches!(self, ReviewStatus::Pending)
    }

    /// The approvers, for an approved or used review (empty otherwise).
    pub fn approvers(&self) -> &[String] {
        match self {
            ReviewStatus::Approved { approvers } | ReviewStatus::Used { approvers } => approvers,
            _ => &[],
        }
    }

    /// The status name the control plane uses (`pending`, `approved`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved { .. } => "approved",
            ReviewStatus::Denied { .. } => "denied",
            ReviewStatus::Expired => "expired",
            ReviewStatus::Used { .. } => "used",
        }
    }
}

/// A review as the control plane answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewTicket {
    /// The review id (tell the client; approvers use it).
    pub id: String,
    /// Where it stands.
    pub status: ReviewStatus,
    /// When a pending review expires (unix ms).
    pub expires_at_ms: i64,
    /// Until when an approval may be used (unix ms), once approved.
    pub use_until_ms: Option<i64>,
    /// Whether the approval may be used repeatedly until `use_until_ms` (approved with a
    /// time window) rather than once.
    pub reusable: bool,
    /// For [`ReviewClient::request`]: the review existed already (same identity,
    /// connection and statement, pending or approved and unused) and was not created anew.
    pub existing: bool,
}

/// Why a review call failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The control plane could not be reached or the connection failed.
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    /// The control plane answered with an error status (bad input, auth, server fault).
    #[error("control plane answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The control plane's message (never contains the node token).
        message: String,
    },
    /// No review with that id.
    #[error("no review `{0}` at the control plane")]
    NotFound(String),
    /// The answer was not the JSON expected.
    #[error("malformed answer from the control plane: {0}")]
    Malformed(String),
    /// Too many review calls in flight on this node.
    #[error("too many review calls in flight ({0}); try again")]
    Busy(usize),
    /// The worker thread could not start or died without answering.
    #[error("review worker lost: {0}")]
    Lost(String),
}

impl ReviewError {
    /// Whether trying again later may succeed (the control plane away, a server fault, busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            ReviewError::Unavailable(_) | ReviewError::Busy(_) | ReviewError::Lost(_) => true,
            ReviewError::Status { status, .. } => *status >= 500 || *status == 409,
            ReviewError::NotFound(_) | ReviewError::Malformed(_) => false,
        }
    }
}

/// Bounds of a [`ReviewClient`].
#[derive(Clone, Debug)]
pub struct ReviewClientSettings {
    /// Connect timeout and whole-request timeout of the short calls.
    pub request_timeout: Duration,
    /// How long one long-poll round of [`ReviewClient::wait`] asks the control plane to hold
    /// the request (it caps this at its own long-poll timeout, ~30 s).
    pub poll_wait: Duration,
    /// First retry delay of [`ReviewClient::wait`] after a transport failure; doubles up to
    /// `backoff_max`. Waits survive a control-plane restart.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Most calls (threads) in flight at once; more answer [`ReviewError::Busy`] at once.
    pub max_in_flight: usize,
    /// Which certificates an `https://` server must present (default: the webpki roots).
    pub trust: sluice_client::Trust,
}

impl Default for ReviewClientSettings {
    fn default() -> Self {
        ReviewClientSettings {
            request_timeout: Duration::from_secs(5),
            poll_wait: Duration::from_secs(20),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_in_flight: 256,
            trust: sluice_client::Trust::default(),
        }
    }
}

/// The review client; cheap to clone (one per node, shared by the cores).
#[derive(Clone)]
pub struct ReviewClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The node token's fingerprint, for `Debug` (the token itself is only in `client`).
    token_fingerprint: String,
    node_id: String,
    settings: ReviewClientSettings,
    in_flight: AtomicUsize,
}

impl std::fmt::Debug for ReviewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewClient")
            .field("base", &self.inner.client.server())
            .field("token", &self.inner.token_fingerprint)
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl ReviewClient {
    /// A client of the control plane at `base_url` (e.g. `http://127.0.0.1:7070`), with a
    /// node token (API role `node`), speaking for data plane `node_id`; default bounds.
    pub fn new(base_url: &str, node_token: &str, node_id: &str) -> Self {
        Self::with_settings(
            base_url,
            node_token,
            node_id,
            ReviewClientSettings::default(),
        )
    }

    /// Like [`ReviewClient::new`] with explicit bounds.
    pub fn with_settings(
        base_url: &str,
        node_token: &str,
        node_id: &str,
        settings: ReviewClientSettings,
    ) -> Self {
        let client = Client::new(
            base_url,
            node_token,
            &settings.trust,
            settings.request_timeout,
        );
        ReviewClient {
            inner: Arc::new(Inner {
                client,
                token_fingerprint: sluice_auth::token::fingerprint(node_token),
                node_id: node_id.to_owned(),
                settings,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// The data plane this client speaks for (what a [`ReviewRequest`]'s `node_id` names).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Creates a pending review for `req` (`POST /v1/reviews`), or finds the one that exists
    /// for the same identity, connection and statement (pending, or approved and unused:
    /// then the ticket says [`ReviewStatus::Approved`] and `existing`).
    pub fn request(
        &self,
        req: ReviewRequest,
    ) -> impl Future<Output = Result<ReviewTicket, ReviewError>> + Send + 'static {
        self.spawn("sluice-review-request", move |inner, _| {
            let a = answer(inner.client.file_review(&req))?;
            match a.status {
                200 | 201 => ticket_of(&a.body, a.status == 200),
                _ => Err(status_error(&a, None)),
            }
        })
    }

    /// Waits until review `id` is decided or `timeout` passes, long-polling
    /// `GET /v1/reviews/{id}/wait` in rounds; answers [`ReviewStatus::Pending`] when the
    /// timeout passes first. Transport failures are retried with backoff until the timeout
    /// (the last one is returned if it passes while the control plane is away).
    pub fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<ReviewStatus, ReviewError>> + Send + 'static {
        let id = id.to_owned();
        self.spawn("sluice-review-wait", move |inner, tx| {
            let deadline = Instant::now() + timeout;
            let mut backoff = inner.settings.backoff_min;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if tx.is_canceled() {
                    // The session went away; nobody reads the answer.
                    return Ok(ReviewStatus::Pending);
                }
                let round = left.min(inner.settings.poll_wait);
                match inner.wait_round(&id, round) {
                    Ok(status) if !status.is_pending() => return Ok(status),
                    Ok(_) if left.is_zero() => return Ok(ReviewStatus::Pending),
                    Ok(_) => backoff = inner.settings.backoff_min,
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(e);
                        }
                        tracing::warn!(review = %id, error = %e, retry_in = ?backoff, "waiting for a review decision");
                        std::thread::sleep(backoff.min(left));
                        backoff = (backoff * 2).min(inner.settings.backoff_max);
                    }
                }
            }
        })
    }

    /// Uses the approval of exactly this statement by this identity on this connection
    /// (`POST /v1/reviews/consume`): a single-use approval becomes [`ReviewStatus::Used`], one
    /// with a time window stays [`ReviewStatus::Approved`]. `None` when there is none.
    pub fn consume(
        &self,
        identity: &str,
        connection: &str,
        statement: &str,
    ) -> impl Future<Output = Result<Option<ReviewTicket>, ReviewError>> + Send + 'static {
        let body = ConsumeRequest {
            identity: identity.to_owned(),
            connection: connection.to_owned(),
            statement: statement.to_owned(),
        };
        self.spawn("sluice-review-consume", move |inner, _| {
            let a = answer(inner.client.consume_review(&body))?;
            match a.status {
                200 => ticket_of(&a.body, true).map(Some),
                404 => Ok(None),
                _ => Err(status_error(&a, None)),
            }
        })
    }

    /// The review `id` as it stands (`GET /v1/reviews/{id}`).
    pub fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ReviewTicket, ReviewError>> + Send + 'static {
        let id = id.to_owned();
        self.spawn("sluice-review-get", move |inner, _| {
            let a = answer(inner.client.get_review(&id))?;
            match a.status {
                200 => ticket_of(&a.body, false),
                _ => Err(status_error(&a, Some(&id))),
            }
        })
    }

    /// Runs `work` on a thread of its own; its result answers the returned future.
    fn spawn<T, F>(
        &self,
        name: &str,
        work: F,
    ) -> impl Future<Output = Result<T, ReviewError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &oneshot::Sender<Result<T, ReviewError>>) -> Result<T, ReviewError>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        let max = inner.settings.max_in_flight;
        let started = if inner.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(ReviewError::Busy(max))
        } else {
            let spawned = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let out = work(&inner, &tx);
                    inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let _ = tx.send(out);
                });
            spawned.map(drop).map_err(|e| {
                // The closure (and its counter decrement) never ran.
                self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                ReviewError::Lost(format!("cannot start a thread: {e}"))
            })
        };
        async move {
            started?;
            rx.await
                .unwrap_or_else(|_| Err(ReviewError::Lost("the worker thread panicked".into())))
        }
    }
}

impl Inner {
    /// One long-poll round of at most `round`.
    fn wait_round(&self, id: &str, round: Duration) -> Result<ReviewStatus, ReviewError> {
        let a = answer(
            self.client
                .wait_review(id, round, self.settings.request_timeout),
        )?;
        match a.status {
            200 => ticket_of(&a.body, false).map(|t| t.status),
            _ => Err(status_error(&a, Some(id))),
        }
    }
}

/// An answer, or why there is none (the control plane away).
fn answer(r: Result<Answer, ClientError>) -> Result<Answer, ReviewError> {
    r.map_err(|e| ReviewError::Unavailable(e.to_string()))
}

fn status_error(a: &Answer, id: Option<&str>) -> ReviewError {
    match (a.status, id) {
        (404, Some(id)) => ReviewError::NotFound(id.to_owned()),
        (status, _) => ReviewError::Status {
            status,
            message: a.error_message(usize::MAX),
        },
    }
}

fn ticket_of(body: &[u8], existing: bool) -> Result<ReviewTicket, ReviewError> {
    let r: Review =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let status = match r.status {
        wire::ReviewStatus::Pending => ReviewStatus::Pending,
        wire::ReviewStatus::Approved => ReviewStatus::Approved {
            approvers: r.approvers,
        },
        wire::ReviewStatus::Used => ReviewStatus::Used {
            approvers: r.approvers,
        },
        wire::ReviewStatus::Denied => ReviewStatus::Denied {
            by: r.denied_by.unwrap_or_default(),
            comment: r.deny_comment,
        },
        wire::ReviewStatus::Expired => ReviewStatus::Expired,
    };
    Ok(ReviewTicket {
        id: r.id,
        status,
        expires_at_ms: r.expires_at,
        use_until_ms: r.use_until,
        reusable: r.reusable,
        existing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(status: wire::ReviewStatus) -> Review {
        Review {
            id: "r1".into(),
            identity: "i".into(),
            connection: "c".into(),
            role: "r".into(),
            statement: "x".into(),
            rule_id: "rule".into(),
            message: None,
            node_id: "n".into(),
            session_id: None,
            min_approvers: 1,
            wait: true,
            status,
            created_at: 1,
            expires_at: 5,
            decided_at: None,
            use_until: None,
            reusable: false,
            used_at: None,
            use_count: 0,
            approvers: Vec::new(),
            denied_by: None,
            deny_comment: None,
            decisions: Vec::new(),
        }
    }

    #[test]
    fn tickets_carry_the_deciders() {
        let approved = Review {
            use_until: Some(9),
            reusable: true,
            approvers: vec!["ann".into(), "bob".into()],
            ..review(wire::ReviewStatus::Approved)
        };
        let t = ticket_of(&serde_json::to_vec(&approved).unwrap(), true).unwrap();
        assert_eq!(t.status.approvers(), ["ann", "bob"]);
        assert!(t.reusable && t.existing);
        assert_eq!(t.use_until_ms, Some(9));
        let denied = Review {
            denied_by: Some("cat".into()),
            deny_comment: Some("no".into()),
            ..review(wire::ReviewStatus::Denied)
        };
        assert_eq!(
            ticket_of(&serde_json::to_vec(&denied).unwrap(), false)
                .unwrap()
                .status,
            ReviewStatus::Denied {
                by: "cat".into(),
                comment: Some("no".into())
            }
        );
        let mut odd = serde_json::to_value(review(wire::ReviewStatus::Pending)).unwrap();
        odd["status"] = "odd".into();
        assert!(ticket_of(odd.to_string().as_bytes(), false).is_err());
        assert!(ticket_of(b"null", false).is_err());
    }

    #[test]
    fn busy_and_unreachable_fail_without_blocking() {
        let settings = ReviewClientSettings {
            max_in_flight: 0,
            ..ReviewClientSettings::default()
        };
        let c = ReviewClient::with_settings("http://127.0.0.1:1", "t", "n", settings);
        let r = futures::executor::block_on(c.consume("i", "c", "select 1"));
        assert!(matches!(r, Err(ReviewError::Busy(0))), "{r:?}");
        // Port 1 refuses connections: an error, retryable, and the token is not in it.
        let c = ReviewClient::new("http://127.0.0.1:1", "secret-node-token", "n");
        let e = futures::executor::block_on(c.consume("i", "c", "select 1")).unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("secret-node-token"));
        assert!(!format!("{c:?}").contains("secret-node-token"));
    }
}
