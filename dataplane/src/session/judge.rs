//! Judging statements: the [`Judge`] (the role's policy over the core's verdict cache, pure
//! and synchronous), what the client gets for each verdict, the masking plan of an allowed
//! text, and the stand-ins the server gets in place of denied messages.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::sqlstate;
use sluice_policy::lineage::MaskPlan;
use sluice_policy::{Analysis, Kind, Policy, SessionState, StatementFacts, Verdict, VerdictCache};

use super::text::Text;
use super::{Session, State};

/// What the proxy sends the server in place of a denied statement: text that fails to parse,
/// so the server itself aborts a transaction in progress, skips to Sync in the extended
/// protocol and reports the right transaction status; its error is replaced by the
/// gateway's (see [`crate::tracker::Delivery::ReplaceError`]).
pub(super) const DENIED_STAND_IN: &str = "sluice: statement denied by policy";

/// The statement a denied Bind names instead of the client's: no server has one by this name
/// (the gateway's own are `sluice_<core>_<id>`), so the server fails the Bind.
pub(super) const DENIED_STATEMENT: &str = "sluice: denied";

/// The rule and message of a statement name the gateway keeps for itself.
const RESERVED: (&str, &str) = (
    "builtin/reserved-name",
    "statement names starting with \"sluice\" are reserved for the gateway",
);

/// What the core caches per text: the verdict, and the most rows it may affect (see
/// [`super::guard`]).
pub(crate) type Verdicts = VerdictCache<(Verdict, Option<u64>)>;

/// A session's statement judge: the role's policy, and the SQL-level prepared statements
/// (`PREPARE name AS ...`) that `EXECUTE name` is judged by.
pub(super) struct Judge {
    policy: Arc<Policy>,
    sql_prepared: HashMap<String, StatementFacts>,
}

/// What the judge says about one text.
#[derive(Debug)]
pub(super) struct Judgement {
    pub(super) verdict: Judged,
    /// The key the text's masking plan is cached under: its shape when the verdict is shared
    /// across constants (`None`: the text itself).
    pub(super) plan_key: Option<String>,
    /// Protocol-level statements the text ends, in order (SQL-level and protocol-level
    /// prepared statements share one namespace on the server).
    pub(super) ended: Vec<Ended>,
    /// Session state the text leaves on its server connection (see [`super::pin`]). Texts
    /// with any are never cached, so a cached verdict means none.
    pub(super) session_state: Vec<SessionState>,
    /// The most rows the text may affect, when the policy limits them and it is a write the
    /// server's command tag counts.
    pub(super) limit: Option<u64>,
}

/// A verdict on a text.
#[derive(Debug, PartialEq)]
pub(super) enum Judged {
    /// The policy's.
    Policy(Verdict),
    /// The text prepares a statement under a name the gateway keeps for itself.
    Reserved,
}

/// A prepared statement an allowed text ends.
#[derive(Debug, PartialEq)]
pub(super) enum Ended {
    /// `PREPARE name`: a protocol statement of that name is gone.
    Prepared(String),
    /// `DEALLOCATE name`.
    Deallocated(String),
    /// `DEALLOCATE ALL`.
    All,
}

impl Judge {
    pub(super) fn new(policy: Arc<Policy>) -> Self {
        Self {
            policy,
            sql_prepared: HashMap::new(),
        }
    }

    /// The policy in force for this session.
    pub(super) fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// A new policy (a new snapshot) for the statements to come.
    pub(super) fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// Session pooling: a Parse named `name` was allowed. SQL-level and protocol-level
    /// statements share one namespace on the server, so `EXECUTE name` runs this text and is
    /// judged by its facts (until Close, DEALLOCATE or another Parse of that name). Not in
    /// transaction pooling, where the server knows the statement by the gateway's name and
    /// `name` may be another client's SQL-level statement.
    pub(super) fn protocol_prepared(&mut self, name: &str, sql: Option<&str>) {
        let facts = sql.map(sluice_policy::analyze);
        match facts {
            Some(Analysis::Statements(mut v)) if v.len() == 1 => {
                if let Some(f) = v.pop() {
                    self.sql_prepared.insert(name.to_owned(), f);
                }
            }
            _ => {
                self.sql_prepared.remove(name);
            }
        }
    }

    /// A protocol-level Close of statement `name`: `EXECUTE name` no longer runs anything.
    pub(super) fn protocol_closed(&mut self, name: &str) {
        self.sql_prepared.remove(name);
    }

    /// The server forgot every prepared statement (DISCARD ALL, DEALLOCATE ALL).
    pub(super) fn forget_prepared(&mut self) {
        self.sql_prepared.clear();
    }

    /// Whether `cache` holds an Allow for `sql` (or its shape) under this policy; judges
    /// nothing.
    pub(super) fn allows_cached(&self, cache: &Verdicts, sql: &str) -> bool {
        let key = self.policy.cache_key();
        let verdict = cache
            .get(key, sql)
            .or_else(|| crate::shape::shape(sql).and_then(|s| cache.get(key, &s)));
        matches!(verdict, Some((Verdict::Allow, _)))
    }

    /// The verdict on a text, cached in `cache`. Texts that PREPARE, EXECUTE or DEALLOCATE
    /// depend on the session's prepared statements: judged each time, never cached.
    pub(super) fn judge(&mut self, cache: &mut Verdicts, sql: &str) -> Judgement {
        let key = self.policy.cache_key();
        let mut plan_key = None;
        // The exact text first: constant texts (extended protocol) never pay for the lexer.
        let mut shape = None;
        let cached = match cache.get(key, sql) {
            Some(v) => Some(v.clone()),
            None => {
                shape = crate::shape::shape(sql);
                let v = shape.as_deref().and_then(|s| cache.get(key, s)).cloned();
                if v.is_some() {
                    // Shared across constants: so is the masking plan.
                    plan_key = shape.clone();
                }
                v
            }
        };
        if let Some((v, limit)) = cached {
            return Judgement {
                verdict: Judged::Policy(v),
                plan_key,
                ended: Vec::new(),
                session_state: Vec::new(),
                limit,
            };
        }
        let analysis = sluice_policy::analyze(sql);
        let session_state = sluice_policy::session_state(&analysis, sql);
        if is_stateful(&analysis) {
            let mut judgement = self.judge_stateful(&analysis);
            judgement.session_state = session_state;
            return judgement;
        }
        let verdict = sluice_policy::judge(&self.policy, &analysis);
        let limit = sluice_policy::affected_rows_limit(&self.policy, &analysis);
        if !session_state.is_empty() {
            // Judged every time: the session must see the state it creates.
            return Judgement {
                verdict: Judged::Policy(verdict),
                plan_key: None,
                ended: Vec::new(),
                session_state,
                limit,
            };
        }
        match shape {
            // Statements that differ only in constants share the verdict.
            Some(s) if literal_independent(&analysis) => {
                cache.insert(key, &s, (verdict.clone(), limit));
                plan_key = Some(s);
            }
            _ => cache.insert(key, sql, (verdict.clone(), limit)),
        }
        Judgement {
            verdict: Judged::Policy(verdict),
            plan_key,
            ended: Vec::new(),
            session_state: Vec::new(),
            limit,
        }
    }

    /// The verdict on a text that could not be decoded from the client's encoding: that of
    /// text that does not parse (never cached: the same bytes may decode in another encoding).
    pub(super) fn judge_undecodable(&self, why: &str) -> Judgement {
        let analysis = Analysis::Unparsed {
            reason: why.to_owned(),
            do_block: false,
        };
        Judgement {
            verdict: Judged::Policy(sluice_policy::judge(&self.policy, &analysis)),
            plan_key: None,
            ended: Vec::new(),
            session_state: Vec::new(),
            limit: None,
        }
    }

    /// A text that prepares, executes or deallocates SQL-level statements.
    fn judge_stateful(&mut self, analysis: &Analysis) -> Judgement {
        let mut judgement = Judgement {
            verdict: Judged::Reserved,
            plan_key: None,
            ended: Vec::new(),
            session_state: Vec::new(),
            limit: sluice_policy::affected_rows_limit(&self.policy, analysis),
        };
        if let Analysis::Statements(v) = analysis {
            if v.iter()
                .any(|f| matches!(&f.kind, Kind::Prepare { name } if name.starts_with("sluice")))
            {
                return judgement;
            }
        }
        let verdict =
            sluice_policy::judge_with(&self.policy, analysis, |name| self.sql_prepared.get(name));
        if matches!(verdict, Verdict::Allow) {
            judgement.ended = self.track_prepared(analysis);
        }
        judgement.verdict = Judged::Policy(verdict);
        judgement
    }

    /// Follows `PREPARE`/`DEALLOCATE` of an allowed text, so `EXECUTE name` is judged by what
    /// was prepared under that name.
    fn track_prepared(&mut self, analysis: &Analysis) -> Vec<Ended> {
        let Analysis::Statements(v) = analysis else {
            return Vec::new();
        };
        let mut ended = Vec::new();
        for f in v {
            match &f.kind {
                Kind::Prepare { name } => {
                    if self.sql_prepared.contains_key(name) {
                        // The server refuses a duplicate and keeps the old one: EXECUTE of
                        // this name is judged unknown (denied) until DEALLOCATE.
                        self.sql_prepared.remove(name);
                    } else {
                        self.sql_prepared.insert(name.clone(), f.clone());
                    }
                    ended.push(Ended::Prepared(name.clone()));
                }
                Kind::Deallocate { name: Some(name) } => {
                    self.sql_prepared.remove(name);
                    ended.push(Ended::Deallocated(name.clone()));
                }
                Kind::Deallocate { name: None } => {
                    self.sql_prepared.clear();
                    ended.push(Ended::All);
                }
                _ => {}
            }
        }
        ended
    }
}

/// Whether a text prepares, executes or deallocates SQL-level statements.
fn is_stateful(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Statements(v) => v.iter().any(|f| {
            matches!(
                f.kind,
                Kind::Prepare { .. } | Kind::Execute { .. } | Kind::Deallocate { .. }
            )
        }),
        _ => false,
    }
}

/// Whether no literal value in the text can change its verdict: one plain SELECT, INSERT,
/// UPDATE or DELETE (constants there are values, never names, classes or flags). An UPDATE or
/// DELETE whose WHERE tests constants alone (`1 = 1`, `true`) is left out: whether it filters
/// is something the policy looks at, and `1 = 2` and `1 = 1` have one shape.
fn literal_independent(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Statements(v) => {
            v.len() == 1 && {
                let f = &v[0];
                matches!(f.tag, "SELECT" | "INSERT" | "UPDATE" | "DELETE")
                    && !f.constant_condition
                    && !f.merge
                    && matches!(f.kind, Kind::Other)
                    && f.copy.is_none()
                    && !f.role_change
                    && !f.search_path_change
                    && !f.data_modifying_cte
                    // set_config('role' | 'application_name', ...): the literal is a name.
                    && !f.sets_config
            }
        }
        _ => false,
    }
}

/// The verdict on a text that went over `max_affected_rows` before, under `over_limit:
/// review`: a review, whose approval lets it run once without the limit.
fn over_limit_review(policy: &Policy, max: u64) -> Verdict {
    let rule = format!("{}/max_affected_rows", policy.name());
    Verdict::Review {
        message: format!(
            "sluice: review required by rule \"{rule}\": the statement affected more than {max} rows when it last ran"
        ),
        rule: sluice_policy::RuleId::new(rule),
    }
}

/// The error PostgreSQL gives for a Bind to a statement that does not exist (26000).
pub(super) fn no_such_statement(name: &str) -> Bytes {
    let message = if name.is_empty() {
        "unnamed prepared statement does not exist".to_owned()
    } else {
        format!("prepared statement \"{name}\" does not exist")
    };
    let mut b = BytesMut::new();
    encode::error_response(
        &mut b,
        &ErrorResponse::error(sqlstate::INVALID_SQL_STATEMENT_NAME, &message),
    );
    b.freeze()
}

/// The Query the server gets in place of a denied one.
pub(super) fn stand_in_query() -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    encode::query(&mut b, DENIED_STAND_IN);
    b
}

impl Session {
    /// The policy's verdict on a statement text: `None` when allowed, else the
    /// ErrorResponse the client gets; the plan key, and the limit on rows it may affect.
    fn judge(
        &self,
        st: &mut State,
        text: &Text<'_>,
    ) -> (Option<Bytes>, Option<String>, Option<u64>) {
        let judgement = match text {
            Text::Decoded(sql) => st.judge.judge(&mut self.ctx.verdicts.borrow_mut(), sql),
            Text::Undecodable { why, .. } => st.judge.judge_undecodable(why),
        };
        let sql = text.as_str();
        for ended in judgement.ended {
            match ended {
                Ended::Prepared(name) => st.forget_statement(&name),
                Ended::Deallocated(name) => {
                    st.forget_statement(&name);
                    if let Some(mk) = st.masker.as_mut() {
                        mk.forget_prepared(&name);
                    }
                }
                Ended::All => st.forget_all_statements(),
            }
        }
        let mut verdict = judgement.verdict;
        if let (Judged::Policy(Verdict::Allow), Some(max)) = (&verdict, judgement.limit) {
            if st.review.over_limit.contains(sql) {
                verdict = Judged::Policy(over_limit_review(st.judge.policy(), max));
            }
        }
        let response = match verdict {
            Judged::Reserved => Some(self.denial(RESERVED.0, RESERVED.1)),
            Judged::Policy(verdict) => self.verdict_response(st, sql, verdict),
        };
        // What the policy allows may still need a server connection kept for the client.
        let response = response.or_else(|| self.pin_or_refuse(st, sql, &judgement.session_state));
        // An approval of a text held for going over the limit lets it run once without it.
        let lifted = response.is_none() && st.review.passed && st.review.over_limit.remove(sql);
        let limit = judgement.limit.filter(|_| !lifted);
        (response, judgement.plan_key, limit)
    }

    /// What the client gets for a verdict (see [`Session::review_verdict`] for reviews).
    fn verdict_response(&self, st: &mut State, sql: &str, verdict: Verdict) -> Option<Bytes> {
        match verdict {
            Verdict::Allow => None,
            Verdict::Deny { rule, message } => {
                self.audit_denied(sql, rule.as_str(), &message);
                Some(self.denial(rule.as_str(), &message))
            }
            Verdict::Review { rule, message } => {
                self.review_verdict(st, sql, rule.as_str(), message)
            }
        }
    }

    /// The verdict and, if allowed, the masking plan of a text and the most rows it may
    /// affect: `Err` with the client's ErrorResponse when either denies it.
    pub(super) fn judge_and_plan(
        &self,
        st: &mut State,
        text: &Text<'_>,
    ) -> Result<(Option<Rc<MaskPlan>>, Option<u64>), Bytes> {
        match self.judge(st, text) {
            (Some(denial), _, _) => Err(denial),
            (None, plan_key, limit) => Ok((self.mask_plan(st, text, plan_key)?, limit)),
        }
    }

    /// Judges the text of extended-protocol statement `name` (at Parse, or again at Bind) and
    /// records its lineage for the portals bound to it: the most rows it may affect, or the
    /// denial.
    pub(super) fn judge_statement(
        &self,
        st: &mut State,
        name: &str,
        text: &Text<'_>,
    ) -> Result<Option<u64>, Bytes> {
        let (plan, limit) = self.judge_and_plan(st, text)?;
        if let (Some(plan), Some(mk)) = (plan, st.masker.as_mut()) {
            mk.parsed(name, &plan);
        }
        Ok(limit)
    }

    /// The masking plan of an allowed text, cached under `key` (else the text): `Ok(None)`
    /// when the session masks nothing, `Err` with the ErrorResponse when the text would let a
    /// masked value out (or cannot be read, so its columns cannot be traced).
    fn mask_plan(
        &self,
        st: &mut State,
        text: &Text<'_>,
        key: Option<String>,
    ) -> Result<Option<Rc<MaskPlan>>, Bytes> {
        let Some(m) = st.masker.as_mut() else {
            return Ok(None);
        };
        let sql = match text {
            Text::Decoded(sql) => sql,
            Text::Undecodable { lossy, why } => {
                let message = format!("sluice: {why}, so masked columns cannot be traced");
                self.audit_denied(lossy, "masking/encoding", &message);
                return Err(self.denial("masking/encoding", &message));
            }
        };
        match m.plan(key.as_deref().unwrap_or(sql), sql) {
            Ok(p) => Ok(Some(p)),
            Err((rule, message)) => {
                self.audit_denied(sql, &rule, &message);
                Err(self.denial(&rule, &message))
            }
        }
    }

    /// Counts and logs a denial, and encodes the client's ErrorResponse (42501).
    pub(super) fn denial(&self, rule: &str, message: &str) -> Bytes {
        self.ctx.metrics.statements_denied.inc();
        tracing::info!(peer = %self.peer, subject = %self.subject, rule, "statement denied");
        let mut b = BytesMut::with_capacity(message.len() + 64);
        encode::error_response(
            &mut b,
            &ErrorResponse {
                hint: Some("the gateway's policy for your role does not allow this statement"),
                ..ErrorResponse::error(sqlstate::INSUFFICIENT_PRIVILEGE, message)
            },
        );
        b.freeze()
    }
}

#[cfg(test)]
mod tests;
