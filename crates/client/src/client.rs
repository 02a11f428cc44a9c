//! The one blocking client of the control plane's API (ureq 3): bearer token, JSON bodies, a
//! bound on every answer read, and the typed calls the data plane and the CLI make.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::trust::{agent, Trust};
use crate::wire::node::NodeRegistration;
use crate::wire::review::{ConsumeRequest, ReviewRequest};

/// Why a request got no answer to look at.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane could not be reached, or the connection failed mid-answer.
    #[error("{0}")]
    Transport(String),
    /// A success answer larger than the caller's limit.
    #[error("answer larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

/// An answer: its status and body, whatever the status.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty when an error answer's body could not be read).
    pub body: Vec<u8>,
}

impl Answer {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The status with its reason phrase, as `422 Unprocessable Entity`.
    pub fn status_line(&self) -> String {
        ureq::http::StatusCode::from_u16(self.status)
            .map_or_else(|_| self.status.to_string(), |s| s.to_string())
    }

    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error answer's `error.message` cut at `max` bytes, or `request failed`.
    pub fn error_message(&self, max: usize) -> String {
        crate::wire::error::error_message(&self.body, max)
            .unwrap_or_else(|| "request failed".into())
    }
}

/// A blocking client of one control plane with one API token. Cheap to clone (the agent's
/// connection pool is shared); the token never appears in its `Debug` output or its errors.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    server: String,
    auth: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the control plane at `server` (`http://` or `https://HOST:PORT`, a trailing
    /// `/` ignored) with API token `token`; `timeout` bounds the connect (TLS handshake
    /// included) and each whole request unless the request sets its own.
    pub fn new(server: &str, token: &str, trust: &Trust, timeout: Duration) -> Client {
        Client {
            agent: agent(trust, timeout),
            server: server.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {token}"),
        }
    }

    /// The server's base URL, without a trailing `/`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `GET path`, reading at most `limit` bytes of the answer; `timeout` replaces the
    /// client's whole-request timeout (a long-poll's).
    pub fn get(
        &self,
        path: &str,
        timeout: Option<Duration>,
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let req = self
            .agent
            .get(format!("{}{path}", self.server))
            .header("Authorization", &self.auth);
        let resp = match timeout {
            Some(t) => req.config().timeout_global(Some(t)).build().call(),
            None => req.call(),
        };
        read(resp, limit)
    }

    /// `POST path` with `body` of `content_type` (`None`: an empty body).
    pub fn post(
        &self,
        path: &str,
        body: Option<(&str, &[u8])>,
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let req = self
            .agent
            .post(format!("{}{path}", self.server))
            .header("Authorization", &self.auth);
        let resp = match body {
            Some((content_type, b)) => req.header("Content-Type", content_type).send(b),
            None => req.send_empty(),
        };
        read(resp, limit)
    }

    /// `POST path` with `body` as JSON.
    pub fn post_json<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let bytes = serde_json::to_vec(body).expect("API bodies serialize");
        self.post(path, Some(("application/json", &bytes)), limit)
    }

    /// `POST /v1/nodes`: registers (or re-registers) a data plane.
    pub fn register_node(&self, reg: &NodeRegistration) -> Result<Answer, ClientError> {
        self.post_json("/v1/nodes", reg, ERROR_BODY_LIMIT)
    }

    /// `GET /v1/nodes/{id}/snapshot?after=V&timeout_ms=`: a snapshot newer than `after`
    /// (200, at most `limit` bytes, else [`ClientError::TooLarge`]), or 204 after `wait`; the
    /// request may take `wait + slack`.
    pub fn poll_snapshot(
        &self,
        node_id: &str,
        after: u64,
        wait: Duration,
        slack: Duration,
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let path = format!(
            "/v1/nodes/{}/snapshot?after={after}&timeout_ms={}",
            encode_path_segment(node_id),
            wait.as_millis()
        );
        self.get(&path, Some(wait + slack), limit)
    }

    /// `POST /v1/reviews`: files a statement for review (201 new, 200 the live one).
    pub fn file_review(&self, req: &ReviewRequest) -> Result<Answer, ClientError> {
        self.post_json("/v1/reviews", req, REVIEW_ANSWER_LIMIT)
    }

    /// `GET /v1/reviews/{id}`.
    pub fn get_review(&self, id: &str) -> Result<Answer, ClientError> {
        let path = format!("/v1/reviews/{}", encode_path_segment(id));
        self.get(&path, None, REVIEW_ANSWER_LIMIT)
    }

    /// `GET /v1/reviews/{id}/wait?timeout_ms=`: one long-poll round of at most `round`; the
    /// request may take `round + slack`.
    pub fn wait_review(
        &self,
        id: &str,
        round: Duration,
        slack: Duration,
    ) -> Result<Answer, ClientError> {
        let path = format!(
            "/v1/reviews/{}/wait?timeout_ms={}",
            encode_path_segment(id),
            round.as_millis()
        );
        self.get(&path, Some(round + slack), REVIEW_ANSWER_LIMIT)
    }

    /// `POST /v1/reviews/consume`: uses the approval of exactly this statement (404 when there
    /// is none).
    pub fn consume_review(&self, req: &ConsumeRequest) -> Result<Answer, ClientError> {
        self.post_json("/v1/reviews/consume", req, REVIEW_ANSWER_LIMIT)
    }

    /// `POST /v1/audit/batches` with a batch already serialized as JSON.
    pub fn ship_audit(&self, batch_json: &[u8]) -> Result<Answer, ClientError> {
        self.post(
            "/v1/audit/batches",
            Some(("application/json", batch_json)),
            ERROR_BODY_LIMIT,
        )
    }
}

/// Largest error (or small acknowledgement) body read.
pub const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// Largest review answer read; a review carries one statement (the control plane caps it at
/// 1 MiB).
pub const REVIEW_ANSWER_LIMIT: u64 = 4 << 20;

/// Reads an answer. A success body over `limit` is [`ClientError::TooLarge`]; an error
/// answer whose body cannot be read keeps its status with an empty body.
fn read(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    limit: u64,
) -> Result<Answer, ClientError> {
    let mut resp = resp.map_err(|e| ClientError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(limit).read_to_vec();
    let body = match body {
        Ok(b) => b,
        Err(_) if !(200..300).contains(&status) => Vec::new(),
        Err(ureq::Error::BodyExceedsLimit(_)) => return Err(ClientError::TooLarge { limit }),
        Err(e) => return Err(ClientError::Transport(e.to_string())),
    };
    Ok(Answer { status, body })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a path segment or a query
/// value).
pub fn encode_path_segment(s: &str) -> String {
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
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("node-1_a.b~c"), "node-1_a.b~c");
        assert_eq!(encode_path_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[test]
    fn unreachable_servers_are_transport_errors_without_the_token() {
        let c = Client::new(
            "http://127.0.0.1:1/",
            "secret-token",
            &Trust::webpki(),
            Duration::from_secs(2),
        );
        assert_eq!(c.server(), "http://127.0.0.1:1");
        let e = c.get("/healthz", None, 1024).unwrap_err();
        assert!(matches!(e, ClientError::Transport(_)), "{e}");
        assert!(!e.to_string().contains("secret-token"));
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
