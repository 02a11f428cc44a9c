//! Session state in transaction pooling: a statement that leaves state on its server
//! connection past its transaction (LISTEN, a temporary table, a session-level advisory
//! lock, a WITH HOLD cursor, PREPARE TRANSACTION) pins its client to that connection for the
//! rest of the session when the pool's `pin_on` lists its kind, and is refused otherwise.
//!
//! A pinned session keeps its server between transactions as session pooling does (the
//! server reader keeps reading, so notifications arrive while the client is idle); when the
//! client leaves, the server is reset with the pool's reset query before the next client
//! gets it, or closed if it is mid-transaction. Meanwhile it holds one of the pool's slots:
//! other clients wait for the rest, and get 53300 after the pool timeout if none frees up.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::sqlstate;
use sluice_policy::SessionState;

use super::{Session, State};
use crate::config::PoolMode;
use crate::metrics::CoreMetrics;

/// A session pinned to its server connection, counted in the core's pinned gauge for as long
/// as it lives.
pub(super) struct Pinned {
    metrics: Arc<CoreMetrics>,
}

impl Pinned {
    /// Counts the pin under `reason`, the first kind of state that pinned the session.
    fn new(reason: SessionState, metrics: Arc<CoreMetrics>) -> Self {
        let i = SessionState::ALL
            .iter()
            .position(|k| *k == reason)
            .unwrap_or_default();
        metrics.sessions_pinned_by[i].inc();
        metrics.pinned_servers.inc();
        Self { metrics }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.metrics.pinned_servers.dec();
    }
}

impl Session {
    /// Whether the session keeps its server connection between transactions: session
    /// pooling, or a client pinned to it. Consulted wherever transaction pooling would
    /// return an idle server to the pool.
    pub(super) fn keeps_server(&self, st: &State) -> bool {
        self.mode == PoolMode::Session || st.pinned.is_some()
    }

    /// For a text the policy allowed, with the session state it creates: pins the session
    /// (transaction pooling, every kind in `pin_on`), or the refusal the client gets (0A000)
    /// naming the first kind `pin_on` lacks.
    pub(super) fn pin_or_refuse(
        &self,
        st: &mut State,
        sql: &str,
        kinds: &[SessionState],
    ) -> Option<Bytes> {
        let first = *kinds.first()?;
        if self.mode != PoolMode::Transaction {
            return None;
        }
        let pin_on = &self.pool.config().pin_on;
        if let Some(kind) = kinds.iter().find(|k| !pin_on.contains(k)) {
            self.ctx.metrics.pin_refusals.inc();
            let message = format!(
                "{} needs a pinned server connection in transaction pooling; add {kind} to pin_on for connection \"{}\"",
                kind.statement(),
                self.connection
            );
            tracing::info!(peer = %self.peer, subject = %self.subject, kind = %kind, "statement refused: it needs a pinned server connection");
            self.audit_denied(sql, "pool/pin_on", &message);
            return Some(refusal(&message));
        }
        if st.pinned.is_none() && st.review.needed.is_none() {
            tracing::info!(peer = %self.peer, subject = %self.subject, reason = %first, "session pinned to its server connection");
            st.pinned = Some(Pinned::new(first, self.ctx.metrics.clone()));
        }
        None
    }
}

/// The client's ErrorResponse for a statement `pin_on` does not allow.
fn refusal(message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 160);
    encode::error_response(
        &mut b,
        &ErrorResponse {
            hint: Some(
                "transaction pooling hands a server connection to other clients between transactions; a pinned client keeps its own, and a pool slot, until it disconnects",
            ),
            ..ErrorResponse::error(sqlstate::FEATURE_NOT_SUPPORTED, message)
        },
    );
    b.freeze()
}
