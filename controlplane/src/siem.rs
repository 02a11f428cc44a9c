//! SIEM export: audit records and API-audit rows streamed to a syslog receiver as RFC 5424
//! messages over TCP (octet-counted framing, RFC 6587), oldest first. Where the export stands
//! is a cursor per stream kept in the store, moved only after a batch has been written and
//! flushed to the receiver, so a restart or a lost connection resends from the last batch
//! written and never skips a record (at least once).

use std::sync::Weak;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::audit::{AuditQuery, StoredAuditRecord};
use crate::service::ControlPlane;
use crate::store::{self, ApiAuditEntry, StoreError};

/// The store settings holding the last id sent of each stream.
const AUDIT_CURSOR: &str = "siem.syslog.audit_cursor";
const API_AUDIT_CURSOR: &str = "siem.syslog.api_audit_cursor";

/// Rows per batch.
const BATCH: u32 = 500;

/// How often the export looks for new rows when it has caught up.
const POLL: Duration = Duration::from_secs(1);

/// Longest wait between two connection attempts.
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// The structured-data id of every message: `sluice` under the example private enterprise
/// number of RFC 5612 (no number of our own is registered).
const SD_ID: &str = "sluice@32473";

/// Facility 13, "log audit".
const FACILITY: u8 = 13;

/// Why a round of the export stopped.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("syslog receiver: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Starts the export to `addr` (`host:port`) on the current runtime; it ends when the control
/// plane is gone.
pub fn spawn(cp: Weak<ControlPlane>, addr: String) {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match TcpStream::connect(&addr).await {
                Ok(mut stream) => {
                    wait = Duration::from_millis(200);
                    tracing::info!(%addr, "syslog export connected");
                    match follow(&cp, &mut stream).await {
                        None => return,
                        Some(e) => tracing::warn!(%addr, error = %e, "syslog export interrupted"),
                    }
                }
                Err(e) => tracing::warn!(%addr, error = %e, "syslog export cannot connect"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RECONNECT);
        }
    });
}

/// Sends batches over `stream` until an error (returned) or the control plane is gone (`None`).
async fn follow(cp: &Weak<ControlPlane>, stream: &mut TcpStream) -> Option<ExportError> {
    loop {
        let plane = cp.upgrade()?;
        match plane.export_batch(stream).await {
            Ok(sent) => {
                drop(plane);
                if sent < BATCH as usize {
                    tokio::time::sleep(POLL).await;
                }
            }
            Err(e) => return Some(e),
        }
    }
}

impl ControlPlane {
    /// Writes the next batch of both streams and moves their cursors; how many rows went.
    async fn export_batch(&self, stream: &mut TcpStream) -> Result<usize, ExportError> {
        let (audit_after, api_after, records, entries) = {
            let mut c = self.store().conn().await?;
            let audit_after = cursor(&mut c, AUDIT_CURSOR).await?;
            let api_after = cursor(&mut c, API_AUDIT_CURSOR).await?;
            let q = AuditQuery {
                after: Some(audit_after),
                limit: Some(BATCH),
                ..AuditQuery::default()
            };
            let records = store::query_audit(&mut c, &q).await?.records;
            let entries = store::api_audit_after(&mut c, api_after, i64::from(BATCH)).await?;
            (audit_after, api_after, records, entries)
        };
        if records.is_empty() && entries.is_empty() {
            return Ok(0);
        }
        let mut out = Vec::new();
        for r in &records {
            frame(&mut out, &audit_message(r));
        }
        for e in &entries {
            frame(&mut out, &api_audit_message(e));
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
        let audit_last = records.last().map_or(audit_after, |r| r.id);
        let api_last = entries.last().map_or(api_after, |e| e.id);
        let mut w = self.store().write().await?;
        store::set_setting(&mut w.tx, AUDIT_CURSOR, &audit_last.to_string()).await?;
        store::set_setting(&mut w.tx, API_AUDIT_CURSOR, &api_last.to_string()).await?;
        w.commit().await?;
        Ok(records.len().max(entries.len()))
    }
}

async fn cursor(c: &mut sqlx::AnyConnection, name: &str) -> Result<i64, StoreError> {
    Ok(store::get_setting(c, name)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Appends `msg` with its octet count (RFC 6587 §3.4.1).
fn frame(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// An audit record as RFC 5424: severity by verdict, the node as HOSTNAME, MSGID `audit`, the
/// record's keys as structured data and the whole record as JSON.
pub fn audit_message(r: &StoredAuditRecord) -> String {
    let severity = match r.record.verdict.as_str() {
        "deny" => 4,
        "review" => 5,
        _ => 6,
    };
    let mut params = vec![
        ("id", r.id.to_string()),
        ("identity", r.record.identity.clone()),
        ("connection", r.record.connection.clone()),
        ("verdict", r.record.verdict.clone()),
    ];
    for (k, v) in [("rule", &r.record.rule_id), ("review", &r.record.review_id)] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let json = serde_json::to_string(r).unwrap_or_default();
    message(
        severity,
        r.record.time_ms,
        &r.node_id,
        "audit",
        &params,
        &json,
    )
}

/// An API-audit row as RFC 5424, MSGID `api-audit`.
pub fn api_audit_message(e: &ApiAuditEntry) -> String {
    let params = vec![
        ("id", e.id.to_string()),
        ("actor", e.actor.clone()),
        ("role", e.role.clone()),
        ("action", e.action.clone()),
        ("target", e.target.clone()),
    ];
    let json = serde_json::to_value(e)
        .map(|v: Value| v.to_string())
        .unwrap_or_default();
    message(5, e.at_ms, "-", "api-audit", &params, &json)
}

fn message(
    severity: u8,
    at_ms: i64,
    host: &str,
    msgid: &str,
    params: &[(&str, String)],
    msg: &str,
) -> String {
    let sd: String = params
        .iter()
        .map(|(k, v)| format!(" {k}=\"{}\"", sd_escape(v)))
        .collect();
    format!(
        "<{}>1 {} {} sluice - {msgid} [{SD_ID}{sd}] {msg}",
        FACILITY * 8 + severity,
        timestamp(at_ms),
        header_field(host, 255),
    )
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Epoch milliseconds as an RFC 3339 UTC timestamp with milliseconds.
fn timestamp(ms: i64) -> String {
    let t = sluice_client::Utc::from_epoch_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_rfc_5424() {
        assert_eq!(timestamp(1_796_316_561_042), "2026-12-03T16:49:21.042Z");
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        let e = ApiAuditEntry {
            id: 7,
            at_ms: 0,
            actor: "alice".into(),
            role: "admin".into(),
            action: "apply".into(),
            target: "document:1".into(),
            detail: "{}".into(),
        };
        let m = api_audit_message(&e);
        assert!(
            m.starts_with(
                "<109>1 1970-01-01T00:00:00.000Z - sluice - api-audit [sluice@32473 id=\"7\" actor=\"alice\""
            ),
            "{m}"
        );
        let mut out = Vec::new();
        frame(&mut out, "héllo");
        assert_eq!(out, "6 héllo".as_bytes());
    }
}
