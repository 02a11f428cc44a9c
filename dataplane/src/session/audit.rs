//! The session's audit records: a denied statement's at once, an allowed request's once the
//! server has answered it (rows, bytes, duration, the error if any, the masked columns).

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_pgwire::backend as bmsg;
use sluice_policy::audit::AuditRecord;

use super::{Session, State};

/// An allowed request's audit record in the making.
pub(super) struct Audit {
    record: AuditRecord,
    started: std::time::Instant,
    rows: i64,
    bytes: i64,
}

impl Audit {
    /// The request ran but was refused afterwards (and rolled back).
    pub(super) fn deny(&mut self, rule: &str, message: &str) {
        self.record.verdict = "deny".into();
        self.record.rule_id = Some(rule.to_owned());
        self.record.error = Some(message.to_owned());
    }
}

impl Session {
    /// A record for this session's audit trail.
    fn audit_record(&self, statement: &str, verdict: &str, rule: Option<&str>) -> AuditRecord {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        AuditRecord {
            time_ms,
            identity: self.subject.clone(),
            token_id: Some(self.token_id.to_string()),
            grant_id: self.grant_id.as_deref().map(str::to_owned),
            connection: self.connection.to_string(),
            session_id: Some(self.session_id.clone()),
            statement: statement.to_owned(),
            verdict: verdict.to_owned(),
            rule_id: rule.map(str::to_owned),
            review_id: None,
            approvers: Vec::new(),
            masked_columns: Vec::new(),
            rows: None,
            bytes: None,
            duration_us: None,
            error: None,
        }
    }

    /// Records a denied statement at once.
    pub(super) fn audit_denied(&self, statement: &str, rule: &str, message: &str) {
        if let Some(sink) = &self.audit {
            let mut r = self.audit_record(statement, "deny", Some(rule));
            r.error = Some(message.to_owned());
            sink.record(r);
        }
    }

    /// Starts the audit record of an allowed request just pushed to the tracker, tagging it
    /// (`tag` is the masker's job, or 0 to take one of the session's own).
    pub(super) fn audit_request(&self, st: &mut State, mut tag: u64, sql: &str) {
        if tag == 0 {
            if self.audit.is_none() {
                return;
            }
            tag = st.own_tag();
        }
        if !st.tracker.tag_last(tag) || self.audit.is_none() {
            return;
        }
        let mut record = self.audit_record(sql, "allow", None);
        if let Some((text, approvers)) = st.review.approvers.take() {
            if text == sql {
                record.verdict = "review".into();
                record.approvers = approvers;
            }
        }
        st.audits.insert(
            tag,
            Audit {
                record,
                started: std::time::Instant::now(),
                rows: 0,
                bytes: 0,
            },
        );
    }

    /// Follows a server message answering an audited request; ships the record once the
    /// request is answered.
    pub(super) fn audit_response(
        &self,
        st: &mut State,
        tag: u64,
        msg_tag: u8,
        bytes: &[u8],
        whole: bool,
    ) {
        let Some(a) = st.audits.get_mut(&tag) else {
            return;
        };
        a.bytes += bytes.len() as i64;
        match msg_tag {
            bmsg::COMMAND_COMPLETE if whole => {
                if let Ok(bmsg::BackendMessage::CommandComplete { tag: t }) = bmsg::parse(bytes) {
                    if let Some(n) = t.rsplit(' ').next().and_then(|n| n.parse::<i64>().ok()) {
                        a.rows += n;
                    }
                }
            }
            bmsg::ERROR_RESPONSE if whole => {
                if let Ok(bmsg::BackendMessage::ErrorResponse(f)) = bmsg::parse(bytes) {
                    a.record.error.get_or_insert_with(|| {
                        format!(
                            "{}: {}",
                            f.code().unwrap_or("XX000"),
                            f.message().unwrap_or("")
                        )
                    });
                }
            }
            _ => {}
        }
        let done = matches!(
            msg_tag,
            bmsg::COMMAND_COMPLETE
                | bmsg::EMPTY_QUERY
                | bmsg::PORTAL_SUSPENDED
                | bmsg::READY_FOR_QUERY
                | bmsg::ERROR_RESPONSE
        ) && !st.tracker.has_job(tag);
        if done {
            let Some(mut a) = st.audits.remove(&tag) else {
                return;
            };
            a.record.rows = Some(a.rows);
            a.record.bytes = Some(a.bytes);
            a.record.duration_us = Some(a.started.elapsed().as_micros() as i64);
            if let Some(mk) = st.masker.as_mut() {
                a.record.masked_columns = mk.masked_columns.drain(..).map(Into::into).collect();
            }
            if let Some(sink) = &self.audit {
                sink.record(a.record);
            }
        }
    }
}
