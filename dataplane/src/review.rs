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
use serde::Deserialize;
use serde_json::{json, Value};

/// What a review is about: the statement held back and who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewRequest {
    /// The client's identity (token subject), as audit records name it.
    pub identity: String,
    /// The connection name the client used (its `dbname`).
    pub connection: String,
    /// The role the identity was mapped to.
    pub role: String,
    /// The full statement text; an approval is for exactly this text.
    pub statement: String,
    /// The rule that asked for review (`Verdict::Review { rule, .. }`).
    pub rule_id: String,
    /// The verdict's message, shown to approvers.
    pub message: Option<String>,
    /// The session, for audit correlation.
    pub session_id: Option<String>,
    /// Distinct approvals needed (`ReviewSettings::min_approvers`, at least 1).
    pub min_approvers: u32,
    /// Whether the client waits for the decision (`ReviewSettings::wait`).
    pub wait: bool,
    /// How long the review stays pending before it expires (`ReviewSettings::timeout`).
    pub expires_in: Duration,
}

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
    pub trust: crate::http::Trust,
}

impl Default for ReviewClientSettings {
    fn default() -> Self {
        ReviewClientSettings {
            request_timeout: Duration::from_secs(5),
            poll_wait: Duration::from_secs(20),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_in_flight: 256,
            trust: crate::http::Trust::default(),
        }
    }
}

/// The review client; cheap to clone (one per node, shared by the cores).
#[derive(Clone)]
pub struct ReviewClient {
    inner: Arc<Inner>,
}

struct Inner {
    agent: ureq::Agent,
    base: String,
    token: String,
    node_id: String,
    settings: ReviewClientSettings,
    in_flight: AtomicUsize,
}

impl std::fmt::Debug for ReviewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewClient")
            .field("base", &self.inner.base)
            .field("token", &sluice_auth::token::fingerprint(&self.inner.token))
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
        let agent = crate::http::agent(&settings.trust, settings.request_timeout);
        ReviewClient {
            inner: Arc::new(Inner {
                agent,
                base: base_url.trim_end_matches('/').to_owned(),
                token: node_token.to_owned(),
                node_id: node_id.to_owned(),
                settings,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Creates a pending review for `req` (`POST /v1/reviews`), or finds the one that exists
    /// for the same identity, connection and statement (pending, or approved and unused:
    /// then the ticket says [`ReviewStatus::Approved`] and `existing`).
    pub fn request(
        &self,
        req: ReviewRequest,
    ) -> impl Future<Output = Result<ReviewTicket, ReviewError>> + Send + 'static {
        let body = json!({
            "identity": req.identity,
            "connection": req.connection,
            "role": req.role,
            "statement": req.statement,
            "rule_id": req.rule_id,
            "message": req.message,
            "node_id": self.inner.node_id,
            "session_id": req.session_id,
            "min_approvers": req.min_approvers,
            "wait": req.wait,
            "expires_in_ms": u64::try_from(req.expires_in.as_millis()).unwrap_or(u64::MAX),
        });
        self.spawn("sluice-review-request", move |inner, _| {
            let (status, v) = inner.post("/v1/reviews", &body)?;
            match status {
                200 | 201 => ticket_of(&v, status == 200),
                _ => Err(inner.status_error(status, &v, None)),
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
        let body = json!({"identity": identity, "connection": connection, "statement": statement});
        self.spawn("sluice-review-consume", move |inner, _| {
            let (status, v) = inner.post("/v1/reviews/consume", &body)?;
            match status {
                200 => ticket_of(&v, true).map(Some),
                404 => Ok(None),
                _ => Err(inner.status_error(status, &v, None)),
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
            let path = format!("/v1/reviews/{}", encode_path_segment(&id));
            let (status, v) = inner.get(&path, None)?;
            match status {
                200 => ticket_of(&v, false),
                _ => Err(inner.status_error(status, &v, Some(&id))),
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
    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ReviewError> {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        read(resp)
    }

    fn get(&self, path: &str, timeout: Option<Duration>) -> Result<(u16, Value), ReviewError> {
        let req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth());
        let resp = match timeout {
            Some(t) => req.config().timeout_global(Some(t)).build().call(),
            None => req.call(),
        };
        read(resp)
    }

    /// One long-poll round of at most `round`.
    fn wait_round(&self, id: &str, round: Duration) -> Result<ReviewStatus, ReviewError> {
        let path = format!(
            "/v1/reviews/{}/wait?timeout_ms={}",
            encode_path_segment(id),
            round.as_millis()
        );
        let (status, v) = self.get(&path, Some(round + self.settings.request_timeout))?;
        match status {
            200 => ticket_of(&v, false).map(|t| t.status),
            _ => Err(self.status_error(status, &v, Some(id))),
        }
    }

    fn status_error(&self, status: u16, v: &Value, id: Option<&str>) -> ReviewError {
        let message = v["error"]["message"]
            .as_str()
            .map_or_else(|| "request failed".to_owned(), str::to_owned);
        match (status, id) {
            (404, Some(id)) => ReviewError::NotFound(id.to_owned()),
            _ => ReviewError::Status { status, message },
        }
    }
}

/// Largest answer read; a review carries one statement (the control plane caps it at 1 MiB).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

fn read(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Value), ReviewError> {
    let mut resp = resp.map_err(|e| ReviewError::Unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    Ok((status, v))
}

/// The fields of the control plane's review JSON this client reads.
#[derive(Deserialize)]
struct WireReview {
    id: String,
    status: String,
    expires_at: i64,
    #[serde(default)]
    use_until: Option<i64>,
    #[serde(default)]
    reusable: bool,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    denied_by: Option<String>,
    #[serde(default)]
    deny_comment: Option<String>,
}

fn ticket_of(v: &Value, existing: bool) -> Result<ReviewTicket, ReviewError> {
    let w = WireReview::deserialize(v).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let status = match w.status.as_str() {
        "pending" => ReviewStatus::Pending,
        "approved" => ReviewStatus::Approved {
            approvers: w.approvers,
        },
        "used" => ReviewStatus::Used {
            approvers: w.approvers,
        },
        "denied" => ReviewStatus::Denied {
            by: w.denied_by.unwrap_or_default(),
            comment: w.deny_comment,
        },
        "expired" => ReviewStatus::Expired,
        other => return Err(ReviewError::Malformed(format!("unknown status `{other}`"))),
    };
    Ok(ReviewTicket {
        id: w.id,
        status,
        expires_at_ms: w.expires_at,
        use_until_ms: w.use_until,
        reusable: w.reusable,
        existing,
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_carry_the_deciders() {
        let v = json!({"id": "r1", "status": "approved", "expires_at": 5, "use_until": 9,
            "reusable": true, "approvers": ["ann", "bob"], "statement": "x"});
        let t = ticket_of(&v, true).unwrap();
        assert_eq!(t.status.approvers(), ["ann", "bob"]);
        assert!(t.reusable && t.existing);
        assert_eq!(t.use_until_ms, Some(9));
        let v = json!({"id": "r1", "status": "denied", "expires_at": 5, "denied_by": "cat",
            "deny_comment": "no"});
        assert_eq!(
            ticket_of(&v, false).unwrap().status,
            ReviewStatus::Denied {
                by: "cat".into(),
                comment: Some("no".into())
            }
        );
        assert!(ticket_of(&json!({"id": "r", "status": "odd", "expires_at": 1}), false).is_err());
        assert!(ticket_of(&Value::Null, false).is_err());
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
