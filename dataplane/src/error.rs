//! Errors of the data plane, each knowing which side is at fault and what the client is told.

use bytes::BytesMut;
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::{sqlstate, ProtocolError};

/// Something went wrong with a backend server connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("cannot connect to backend {addr}: {source}")]
    Connect {
        /// Backend address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Connecting and logging in took too long.
    #[error("backend {addr} did not complete login within {secs}s")]
    Timeout {
        /// Backend address.
        addr: String,
        /// The limit.
        secs: u64,
    },
    /// TLS to the backend failed or was refused.
    #[error("TLS to backend failed: {0}")]
    Tls(String),
    /// The gateway could not authenticate to the backend.
    #[error("backend authentication failed: {0}")]
    Auth(String),
    /// The backend refused with an ErrorResponse.
    #[error("backend refused: {message} (SQLSTATE {code})")]
    Refused {
        /// SQLSTATE from the backend.
        code: String,
        /// Message from the backend.
        message: String,
    },
    /// The backend broke the protocol.
    #[error("backend protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection dropped.
    #[error("backend connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// No server connection became free in time.
    #[error("no server connection available within {secs}s (pool of {size})")]
    PoolTimeout {
        /// The pool's wait limit.
        secs: u64,
        /// Server connections per core.
        size: usize,
    },
}

impl BackendError {
    /// Whether the backend is briefly away rather than broken or misconfigured: it refuses
    /// connections or drops them during login, or says it is starting up or shutting down
    /// (57P03), as while it restarts. Connecting again later may work.
    pub fn backend_away(&self) -> bool {
        match self {
            BackendError::Connect { .. } | BackendError::Io(_) => true,
            BackendError::Refused { code, .. } => code == sqlstate::CANNOT_CONNECT_NOW,
            _ => false,
        }
    }

    /// SQLSTATE for the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            BackendError::PoolTimeout { .. } => sqlstate::TOO_MANY_CONNECTIONS,
            BackendError::Refused { code, .. } if code == sqlstate::CANNOT_CONNECT_NOW => {
                sqlstate::CANNOT_CONNECT_NOW
            }
            BackendError::Refused { code, .. } if code == sqlstate::TOO_MANY_CONNECTIONS => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            BackendError::Connect { .. } | BackendError::Timeout { .. } => {
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            }
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }

    /// The message the client sees. Never carries credentials; backend addresses are the
    /// operator's business, so the client gets a summary and the log gets the details.
    pub fn client_message(&self) -> String {
        match self {
            BackendError::PoolTimeout { secs, .. } => {
                format!("timed out after {secs}s waiting for a server connection")
            }
            BackendError::Refused { message, .. } => {
                format!("backend refused the connection: {message}")
            }
            BackendError::Auth(_) => "the gateway could not authenticate to the backend".into(),
            BackendError::Connect { .. } | BackendError::Timeout { .. } => {
                "the backend database is not reachable".into()
            }
            _ => "the connection to the backend database failed".into(),
        }
    }
}

/// A FATAL error to send the client before closing.
#[derive(Debug)]
pub struct Fatal {
    code: &'static str,
    /// What the client is told.
    pub message: String,
}

impl Fatal {
    /// A FATAL error with this SQLSTATE and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Encodes the ErrorResponse.
    pub fn encode(&self, buf: &mut BytesMut) {
        encode::error_response(buf, &ErrorResponse::fatal(self.code, &self.message));
    }
}

impl From<ProtocolError> for Fatal {
    fn from(e: ProtocolError) -> Self {
        Fatal::new(e.sqlstate(), e.to_string())
    }
}

impl From<&BackendError> for Fatal {
    fn from(e: &BackendError) -> Self {
        Fatal::new(e.sqlstate(), e.client_message())
    }
}
