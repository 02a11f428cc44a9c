//! Relaying one result through a [`Masker`]: rows rewritten by their plan, results failed
//! closed or truncated, and errors and notices scrubbed of the data they may echo.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use sluice_mask::{
    mask_copy_data, mask_row_in_place, mask_row_into, scrub_error_response, scrub_notification,
    CopyText, ScrubOptions,
};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::{backend as bmsg, sqlstate};

use super::{Action, Job, Lineage, Masker, Portal, ResultState};
impl Masker {
    /// Decides what happens to one whole server message answering the request tagged `job`
    /// (0 for none); may rewrite `frame` in place.
    pub fn on_message(&mut self, job: u64, frame: &mut [u8]) -> Action {
        let tag = frame[0];
        match tag {
            bmsg::ERROR_RESPONSE | bmsg::NOTICE_RESPONSE => {
                let opts = ScrubOptions {
                    detectors: self.detectors,
                    redact_data_values: self.by_column,
                };
                if scrub_error_response(frame, &opts).is_err() {
                    return Action::Replace(error(
                        sqlstate::INTERNAL_ERROR,
                        "sluice: an error message from the server could not be scrubbed",
                    ));
                }
                if self.by_column {
                    if let Some(sql) = self.job_text(job) {
                        scrub_echoes(frame, sql.as_deref());
                    }
                }
                if tag == bmsg::ERROR_RESPONSE {
                    // The request failed: its result is over.
                    if let Some(Job::Simple { state, index, .. }) = self.jobs.get_mut(&job) {
                        *state = ResultState::default();
                        *index += 1;
                    }
                }
                return Action::Forward;
            }
            bmsg::NOTIFICATION => {
                if !self.detectors.is_empty() && scrub_notification(frame, self.detectors).is_err()
                {
                    return Action::Drop;
                }
                return Action::Forward;
            }
            _ => {}
        }
        if tag == bmsg::ROW_DESCRIPTION {
            // The next description gets its own chance at a reload.
            self.reloaded = false;
        }
        let Some(mut j) = self.jobs.remove(&job) else {
            if matches!(tag, bmsg::DATA_ROW | bmsg::COPY_DATA)
                && (self.by_column || !self.detectors.is_empty())
            {
                tracing::warn!("dropping a result row of a request the masker did not plan");
                self.counts
                    .failed_closed
                    .set(self.counts.failed_closed.get() + 1);
                return Action::Drop;
            }
            return Action::Forward;
        };
        let action = self.on_job_message(&mut j, frame);
        self.jobs.insert(job, j);
        action
    }

    /// The statement text of a job that runs a statement (`Some(None)` when unknown); `None`
    /// for jobs that read no data (Describe) and for messages outside any job.
    fn job_text(&self, job: u64) -> Option<Option<Rc<str>>> {
        match self.jobs.get(&job)? {
            Job::Simple { sql, .. } => Some(sql.clone()),
            Job::Execute { portal, .. } => {
                Some(self.portals.get(&**portal).and_then(|p| p.sql.clone()))
            }
            Job::Describe { .. } => None,
        }
    }

    fn on_job_message(&mut self, job: &mut Job, frame: &mut [u8]) -> Action {
        let tag = frame[0];
        match job {
            Job::Describe { portal } => {
                if tag == bmsg::ROW_DESCRIPTION {
                    let p = self.portals.get(&**portal).cloned().unwrap_or_else(|| Portal {
                        lineage: Lineage::Unknown(
                            format!("sluice: portal \"{portal}\" was not bound through this session").into(),
                        ),
                        ..Portal::default()
                    });
                    let rows = self.row_plan(frame, &p.lineage);
                    let entry = self.portals.entry((&**portal).into()).or_default();
                    match rows {
                        Ok(plan) => entry.rows = Some(plan),
                        Err(why) => entry.lineage = Lineage::Unknown(why.into()),
                    }
                }
                Action::Forward
            }
            Job::Simple {
                plans,
                index,
                state,
                ..
            } => {
                match tag {
                    bmsg::ROW_DESCRIPTION => {
                        let lineage = self.lineage_of(plans, *index);
                        match self.row_plan(frame, &lineage) {
                            Ok(p) => state.rows = Some(p),
                            Err(why) => {
                                state.failed = Some(why);
                                return Action::Drop;
                            }
                        }
                        Action::Forward
                    }
                    bmsg::COPY_OUT => {
                        let lineage = self.lineage_of(plans, *index);
                        match self.copy_plan(frame, &lineage) {
                            Ok(p) => state.copy = p.map(Rc::new),
                            Err(why) => state.failed = Some(why),
                        }
                        // The client must see the COPY start to read its end (or error).
                        Action::Forward
                    }
                    bmsg::COMMAND_COMPLETE | bmsg::EMPTY_QUERY => {
                        *index += 1;
                        let s = std::mem::take(state);
                        self.end_result(s, frame)
                    }
                    _ => self.row(state, frame),
                }
            }
            Job::Execute { portal, state } => match tag {
                bmsg::COMMAND_COMPLETE | bmsg::PORTAL_SUSPENDED | bmsg::EMPTY_QUERY => {
                    let s = std::mem::take(state);
                    if let Some(p) = self.portals.get_mut(&**portal) {
                        // `s.sent` started from the portal's count (see below).
                        p.sent = p.sent.max(s.sent);
                    }
                    if tag == bmsg::PORTAL_SUSPENDED {
                        return match s.failed {
                            Some(why) => Action::Replace(error(sqlstate::INTERNAL_ERROR, &why)),
                            None => Action::Forward,
                        };
                    }
                    self.end_result(s, frame)
                }
                bmsg::COPY_OUT => {
                    // COPY ... TO STDOUT through Parse/Bind/Execute (tokio-postgres'
                    // copy_out): its portal describes as NoData, so the plan comes from the
                    // portal's lineage, as a simple Query's COPY does.
                    let lineage = self.portals.get(&**portal).map_or_else(
                        || {
                            Lineage::Unknown(
                                format!("sluice: portal \"{portal}\" was not bound through this session")
                                    .into(),
                            )
                        },
                        |p| p.lineage.clone(),
                    );
                    match self.copy_plan(frame, &lineage) {
                        Ok(p) => state.copy = p.map(Rc::new),
                        Err(why) => state.failed = Some(why),
                    }
                    Action::Forward
                }
                _ => {
                    if state.rows.is_none()
                        && state.failed.is_none()
                        && !(tag == bmsg::COPY_DATA || tag == bmsg::COPY_DONE)
                    {
                        match self.portals.get(&**portal) {
                            Some(p) => match (&p.rows, &p.lineage) {
                                (Some(r), _) => {
                                    state.rows = Some(r.clone());
                                    state.sent = p.sent;
                                }
                                (None, Lineage::Unknown(why)) => {
                                    state.failed = Some(why.to_string())
                                }
                                (None, _) => {
                                    state.failed = Some(
                                        "sluice: rows of a portal that was never described".into(),
                                    )
                                }
                            },
                            None => {
                                state.failed = Some(format!(
                                    "sluice: portal \"{portal}\" was not bound through this session"
                                ))
                            }
                        }
                    }
                    self.row(state, frame)
                }
            },
        }
    }

    /// A DataRow or CopyData of a result.
    fn row(&mut self, state: &mut ResultState, frame: &mut [u8]) -> Action {
        let tag = frame[0];
        if state.failed.is_some() {
            return if matches!(tag, bmsg::DATA_ROW | bmsg::COPY_DATA) {
                Action::Drop
            } else {
                Action::Forward
            };
        }
        match tag {
            bmsg::DATA_ROW => {
                if let Some(max) = self.max_rows {
                    if state.sent >= max {
                        state.truncated = true;
                        return Action::Drop;
                    }
                }
                state.sent += 1;
                let Some(plan) = state.rows.clone() else {
                    return Action::Forward;
                };
                if plan.is_noop() {
                    return Action::Forward;
                }
                self.counts
                    .rows_masked
                    .set(self.counts.rows_masked.get() + 1);
                match mask_row_in_place(frame, &plan) {
                    Ok(true) => Action::Forward,
                    Ok(false) => {
                        let mut out = BytesMut::with_capacity(frame.len() + 64);
                        match mask_row_into(frame, &plan, &mut out) {
                            Ok(()) => Action::Replace(out.freeze()),
                            Err(e) => self.fail(state, format!("sluice: cannot mask a row: {e}")),
                        }
                    }
                    Err(e) => self.fail(state, format!("sluice: cannot mask a row: {e}")),
                }
            }
            bmsg::COPY_DATA => {
                let Some(plan) = state.copy.clone() else {
                    return Action::Forward;
                };
                let mut out = BytesMut::with_capacity(frame.len() + 64);
                match mask_copy_data(frame, &plan, &CopyText::default(), &mut out) {
                    Ok(()) => Action::Replace(out.freeze()),
                    Err(e) => self.fail(state, format!("sluice: cannot mask COPY data: {e}")),
                }
            }
            _ => Action::Forward,
        }
    }

    fn fail(&self, state: &mut ResultState, why: String) -> Action {
        tracing::warn!(error = %why, "result failed closed");
        state.failed = Some(why);
        Action::Drop
    }

    /// The end of a result (CommandComplete or EmptyQueryResponse in `frame`).
    fn end_result(&self, state: ResultState, frame: &[u8]) -> Action {
        if let Some(why) = state.failed {
            self.counts
                .failed_closed
                .set(self.counts.failed_closed.get() + 1);
            return Action::Replace(error(sqlstate::INTERNAL_ERROR, &why));
        }
        if !state.truncated {
            return Action::Forward;
        }
        let max = self.max_rows.unwrap_or(0);
        let mut out = BytesMut::new();
        let notice = format!(
            "sluice: the result was truncated to {max} rows, the most this role's policy returns"
        );
        encode::notice_response(
            &mut out,
            &ErrorResponse {
                severity: "WARNING",
                ..ErrorResponse::error("01000", &notice)
            },
        );
        // CommandComplete with the count of rows actually sent.
        let tag = match bmsg::parse(frame) {
            Ok(bmsg::BackendMessage::CommandComplete { tag }) => tag.to_owned(),
            _ => String::new(),
        };
        let verb = tag.split(' ').next().unwrap_or("SELECT");
        let new_tag = match verb {
            "INSERT" => format!("INSERT 0 {max}"),
            v => format!("{v} {max}"),
        };
        encode::command_complete(&mut out, &new_tag);
        Action::Replace(out.freeze())
    }
}

/// Blanks what an error or notice of a statement may echo from the data it read, beyond what
/// `sluice_mask::scrub_error_response` does (classes 22 and 23, quote pairs):
/// - in the message, detail, hint, context and internal query of any class, the span from the
///   first to the last `"` unless that text is in the client's own statement `sql` (so
///   `relation "nosuch" does not exist` stays readable, `relation "<a value>" does not exist`
///   from `value::regclass` does not; a value holding quotes cannot split the span);
/// - for data exceptions (class 22), the detail and context after their first `": "`, where
///   the server quotes the input unquoted (`xmlparse`'s input line, `JSON data, line 1: ...`).
///
/// `sql` is `None` when the text is unknown: every quoted span is blanked.
fn scrub_echoes(frame: &mut [u8], sql: Option<&str>) {
    const HEADER: usize = 5;
    let mut data_class = false;
    let mut fields = Vec::new();
    let mut i = HEADER;
    while i < frame.len() && frame[i] != 0 {
        let code = frame[i];
        let Some(len) = frame[i + 1..].iter().position(|&b| b == 0) else {
            return;
        };
        let value = i + 1..i + 1 + len;
        if code == b'C' {
            data_class = frame[value.clone()].starts_with(b"22");
        }
        if matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            fields.push((code, value.clone()));
        }
        i = value.end + 1;
    }
    for (code, range) in fields {
        let v = &mut frame[range];
        if data_class && matches!(code, b'D' | b'W') {
            if let Some(at) = v.windows(2).position(|w| w == b": ") {
                blank(&mut v[at + 2..]);
                continue;
            }
        }
        let quote = |b: &u8| *b == b'"';
        let (Some(first), Some(last)) = (v.iter().position(quote), v.iter().rposition(quote))
        else {
            continue;
        };
        if last <= first + 1 {
            continue;
        }
        let inner = &v[first + 1..last];
        let own = sql.is_some_and(|sql| std::str::from_utf8(inner).is_ok_and(|t| sql.contains(t)));
        if !own {
            blank(&mut v[first + 1..last]);
        }
    }
}

/// Overwrites bytes with `*`, keeping newlines (the field stays valid UTF-8: every byte of a
/// multi-byte character becomes `*`).
fn blank(v: &mut [u8]) {
    for b in v {
        if *b != b'\n' {
            *b = b'*';
        }
    }
}

fn error(code: &'static str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    encode::error_response(&mut b, &ErrorResponse::error(code, message));
    b.freeze()
}
