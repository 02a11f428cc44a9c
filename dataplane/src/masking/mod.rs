//! A session's result masking: which masking job each server answer belongs to, the row plan
//! of each result set, and what happens to each server message on its way to the client.
//!
//! The session asks [`Masker::plan`] about every statement text before sending it (a masked
//! value the gateway could not mask denies the statement), tags the request that will carry
//! rows with a job ([`Masker::job_simple`], [`Masker::job_describe`], [`Masker::job_execute`]),
//! and shows [`Masker::on_message`] every server message of a tagged request (and every
//! notice, error and notification), whole. Rows are rewritten in place when lengths allow;
//! otherwise the masked copy replaces the message. Untouched messages stay in the read buffer
//! and go out as they came.
//!
//! In the extended protocol a DataRow carries no description, so after every Bind, unless the
//! client's next message describes that portal itself, the session injects a Describe of the
//! portal; its RowDescription (which the client never sees) plans the portal's rows.
//!
//! Plans are cached: mask plans per core with the catalog (by text, or by shape when
//! constants cannot change them), row plans per session by RowDescription bytes and lineage,
//! so a repeated statement costs hash lookups and the in-place rewrite.
//!
//! Fail closed: a row that cannot be masked, a description that does not match the statement's
//! lineage, a result column from a relation the catalog does not know, a cursor or prepared
//! statement the session did not see declared — each turns the rest of that result into one
//! ErrorResponse (the rows are dropped, the CommandComplete is replaced).
//!
//! `max_rows` truncates: rows beyond the limit are dropped, the CommandComplete reports the
//! rows sent, and a NoticeResponse says so. (Cancelling the query instead could hit the next
//! query on a pooled server connection.)

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sluice_mask::{
    ColumnType, DetectorKind, Detectors, FieldDescription, HashKey, RowPlan, Sensitivity, Strategy,
};
use sluice_pgwire::backend as bmsg;
use sluice_policy::lineage::{Catalog, MaskPlan, ResultMask, ResultPlan};
use sluice_policy::{Detector, DetectorSensitivity, Keep, MaskStrategy, Policy};

use crate::catalog::{Loaded, FIRST_NORMAL_OID};

mod result;

/// Masked column names kept for one audit record at most.
const MAX_NOTED_COLUMNS: usize = 256;

/// Row plans a session keeps (by RowDescription bytes and lineage).
const MAX_ROW_PLANS: usize = 64;

/// What to do with one server message.
#[derive(Debug)]
pub enum Action {
    /// Forward the message (possibly rewritten in place).
    Forward,
    /// Drop it.
    Drop,
    /// Send these bytes instead.
    Replace(Bytes),
}

/// The state of one result set being relayed.
#[derive(Default)]
struct ResultState {
    rows: Option<Rc<RowPlan>>,
    copy: Option<Rc<RowPlan>>,
    sent: u64,
    truncated: bool,
    /// The result failed closed: drop until its end, then send this error.
    failed: Option<String>,
}

enum Job {
    /// A simple Query: one plan per statement, advanced at each CommandComplete.
    Simple {
        plans: Rc<MaskPlan>,
        /// The text, for telling a client's own words from echoed data in errors.
        sql: Option<Rc<str>>,
        index: usize,
        state: ResultState,
    },
    /// A Describe of a portal: its RowDescription plans the portal's rows.
    Describe { portal: Box<str> },
    /// An Execute of a portal.
    Execute {
        portal: Box<str>,
        state: ResultState,
    },
}

/// A portal: its statement's lineage, and its row plan once described.
#[derive(Clone, Default)]
struct Portal {
    /// The client's name of the statement it was bound to.
    statement: Box<str>,
    lineage: Lineage,
    /// Its statement's text (see [`Job::Simple`]).
    sql: Option<Rc<str>>,
    rows: Option<Rc<RowPlan>>,
    /// Rows already sent from this portal (Execute with a row limit resumes it).
    sent: u64,
}

/// What is known about where a result's columns come from.
#[derive(Clone, Debug, Default)]
enum Lineage {
    /// Nothing masked can be read (content detectors and origins still apply).
    #[default]
    Clear,
    /// By position.
    Columns(Rc<ResultMask>),
    /// Unknown: fail closed with this message.
    Unknown(Rc<str>),
}

/// What a masker did, for the core's metrics.
#[derive(Default)]
pub struct Counts {
    /// DataRows that went through a plan with work to do.
    pub rows_masked: std::cell::Cell<u64>,
    /// Results failed closed.
    pub failed_closed: std::cell::Cell<u64>,
}

/// A cached row plan: the lineage it was built under, the plan, the masked column names.
type RowPlanEntry = (Option<Vec<Option<usize>>>, Rc<RowPlan>, Vec<Box<str>>);

/// One session's masking.
pub struct Masker {
    policy: Arc<Policy>,
    /// Strategy per masking rule (by rule index); `None` for detector-only rules.
    strategies: Vec<Option<Strategy>>,
    detectors: Detectors,
    /// The policy has column or type rules: needs the catalog and lineage.
    by_column: bool,
    max_rows: Option<u64>,
    catalog: Option<Rc<Loaded>>,
    jobs: HashMap<u64, Job>,
    next_job: u64,
    /// Extended-protocol statements by client name: their lineage and text.
    statements: HashMap<Box<str>, (Lineage, Option<Rc<str>>)>,
    /// The text [`Masker::plan`] planned last, with its plan: the session hands that plan
    /// to [`Masker::job_simple`] or [`Masker::parsed`] right after.
    last_planned: Option<(Rc<MaskPlan>, Rc<str>)>,
    portals: HashMap<Box<str>, Portal>,
    /// SQL-level cursors and prepared statements: the lineage of what they return.
    cursors: HashMap<Box<str>, Lineage>,
    prepared: HashMap<Box<str>, Option<Lineage>>,
    /// Names of columns masked so far in the current request (for audit records).
    pub masked_columns: Vec<Box<str>>,
    /// Rows masked and results failed closed since the session last took them (for metrics).
    pub counts: Counts,
    /// Whether masked column names are kept for audit records.
    pub record_columns: bool,
    /// Row plans by RowDescription bytes, then lineage (with the masked column names).
    row_plans: HashMap<Vec<u8>, Vec<RowPlanEntry>>,
    /// The catalog was reloaded for the RowDescription the session holds: plan it with what
    /// is known now (failing closed), never ask again.
    reloaded: bool,
    /// The client's `client_encoding` is not UTF-8: masked values are written in ASCII
    /// ([`Strategy::for_non_utf8_client`]).
    non_utf8_client: bool,
}

/// The key of keyed-hash and tokenise strategies, one per data plane (every core hashes
/// alike): `SLUICE_MASKING_KEY` (at least 16 bytes of text), else a random key made on first
/// use (hashes then differ across restarts and nodes).
pub struct MaskingKey {
    configured: Option<Vec<u8>>,
    key: OnceLock<Arc<HashKey>>,
}

impl MaskingKey {
    /// The key `SLUICE_MASKING_KEY` configures, if it is long enough.
    pub fn from_env() -> Self {
        Self::new(std::env::var("SLUICE_MASKING_KEY").ok())
    }

    /// `configured` if it has 16 bytes or more, else a random key on first use.
    pub fn new(configured: Option<String>) -> Self {
        Self {
            configured: configured.filter(|k| k.len() >= 16).map(String::into_bytes),
            key: OnceLock::new(),
        }
    }

    fn get(&self) -> Arc<HashKey> {
        self.key
            .get_or_init(|| {
                let key = match &self.configured {
                    Some(k) => k.clone(),
                    None => {
                        tracing::warn!("SLUICE_MASKING_KEY is not set (16+ bytes): keyed-hash and tokenised values use a random per-process key");
                        let mut k = vec![0u8; 32];
                        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
                        k
                    }
                };
                Arc::new(HashKey::new(&key).expect("a 16+ byte key is valid"))
            })
            .clone()
    }
}

fn strategy(s: &MaskStrategy, key: &MaskingKey) -> Option<Strategy> {
    let r = match s {
        MaskStrategy::Redact { text } => Strategy::redact(text),
        MaskStrategy::Partial(Keep::Last(n)) => {
            Strategy::partial(0, u16::try_from(*n).unwrap_or(u16::MAX), '*')
        }
        MaskStrategy::Partial(Keep::First(n)) => {
            Strategy::partial(u16::try_from(*n).unwrap_or(u16::MAX), 0, '*')
        }
        MaskStrategy::Hash => Strategy::keyed_hash(key.get(), 16),
        MaskStrategy::Tokenise => Ok(Strategy::tokenize(key.get())),
        MaskStrategy::Null => Ok(Strategy::null()),
    };
    // A strategy the engine refuses masks to NULL: never forward the value.
    Some(r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "masking strategy refused; masking to NULL");
        Strategy::null()
    }))
}

/// The strategy of rule `r`; NULL when the rule has none here (an index planned under another
/// policy): a column a plan says is masked is never sent as it is.
fn strategy_of(strategies: &[Option<Strategy>], r: usize, non_utf8_client: bool) -> Strategy {
    match strategies.get(r).and_then(Option::as_ref) {
        Some(s) if non_utf8_client => s.for_non_utf8_client(),
        Some(s) => s.clone(),
        None => Strategy::null(),
    }
}

fn detector(d: Detector) -> DetectorKind {
    match d {
        Detector::Email => DetectorKind::Email,
        Detector::Card => DetectorKind::Card,
        Detector::Ssn => DetectorKind::Ssn,
        Detector::Phone => DetectorKind::Phone,
        Detector::Iban => DetectorKind::Iban,
        Detector::ApiKey => DetectorKind::ApiKey,
    }
}

impl Masker {
    /// The masking of `policy`; `None` when it masks nothing (the session then skips all of
    /// this and relays results untouched).
    pub fn new(policy: Arc<Policy>, key: &MaskingKey) -> Option<Masker> {
        let rules = policy.masking();
        let max_rows = policy.max_rows();
        if rules.is_empty() && max_rows.is_none() {
            return None;
        }
        let mut detectors = Detectors::NONE;
        let mut by_column = false;
        let mut strategies = Vec::with_capacity(rules.len());
        for r in rules {
            for d in &r.detectors {
                detectors = detectors.with(detector(*d));
            }
            let columns = !r.columns.is_empty() || !r.types.is_empty();
            by_column |= columns;
            strategies.push(if columns {
                strategy(&r.strategy, key)
            } else {
                None
            });
        }
        // Balanced only when every detector rule asks for it: the detectors err toward masking.
        let mut with_detectors = rules.iter().filter(|r| !r.detectors.is_empty()).peekable();
        if with_detectors.peek().is_some()
            && with_detectors.all(|r| r.sensitivity == DetectorSensitivity::Balanced)
        {
            detectors = detectors.with_sensitivity(Sensitivity::Balanced);
        }
        Some(Masker {
            policy,
            strategies,
            detectors,
            by_column,
            max_rows,
            catalog: None,
            jobs: HashMap::new(),
            next_job: 1,
            statements: HashMap::new(),
            last_planned: None,
            portals: HashMap::new(),
            cursors: HashMap::new(),
            prepared: HashMap::new(),
            masked_columns: Vec::new(),
            row_plans: HashMap::new(),
            record_columns: false,
            counts: Counts::default(),
            reloaded: false,
            non_utf8_client: false,
        })
    }

    /// A new policy (a new snapshot) for the statements to come; results in flight keep the
    /// plans they were given.
    pub fn set_policy(&mut self, policy: Arc<Policy>, key: &MaskingKey) {
        let (strategies, detectors, by_column, max_rows) = match Masker::new(policy.clone(), key) {
            Some(m) => (m.strategies, m.detectors, m.by_column, m.max_rows),
            None => (Vec::new(), Detectors::NONE, false, None),
        };
        self.policy = policy;
        self.row_plans.clear();
        // Lineage planned under the old policy names its rules: SQL-level statements and
        // cursors fail closed until prepared or declared again (protocol statements are
        // planned again at their next Bind).
        let stale = || {
            Lineage::Unknown(
                "sluice: the policy changed since this was prepared; prepare it again".into(),
            )
        };
        for l in self.cursors.values_mut() {
            *l = stale();
        }
        for l in self.prepared.values_mut() {
            *l = Some(stale());
        }
        self.strategies = strategies;
        self.detectors = detectors;
        self.by_column = by_column;
        self.max_rows = max_rows;
    }

    /// The client's `client_encoding` is (now) UTF-8 or not: results planned from here on
    /// write masked values the client can read.
    pub fn set_client_utf8(&mut self, utf8: bool) {
        if self.non_utf8_client == utf8 {
            self.non_utf8_client = !utf8;
            self.row_plans.clear();
        }
    }

    /// Whether statements need the backend catalog (column or type rules).
    pub fn needs_catalog(&self) -> bool {
        self.by_column
    }

    /// The catalog to plan with (the session loads it before processing client messages).
    pub fn set_catalog(&mut self, catalog: Rc<Loaded>) {
        if !self
            .catalog
            .as_ref()
            .is_some_and(|c| Rc::ptr_eq(c, &catalog))
        {
            self.row_plans.clear();
            self.catalog = Some(catalog);
        }
    }

    /// The catalog that cannot resolve this whole RowDescription (of a result this masker
    /// plans): the session holds the message and what follows it until
    /// [`crate::catalog::Catalogs::refresh`] answers, then calls [`Masker::reloaded`].
    /// `None` when the catalog knows every origin, or was already reloaded for it.
    pub fn wants_reload(&self, job: u64, frame: &[u8]) -> Option<Rc<Loaded>> {
        if !self.by_column || self.reloaded || !self.jobs.contains_key(&job) {
            return None;
        }
        let cat = self.catalog.as_ref()?;
        let mut fields = sluice_mask::row_description_fields(frame).ok()?;
        fields
            .any(|f| f.is_ok_and(|f| cat.catalog.misses(f.table_oid, f.column_id, f.type_oid)))
            .then(|| cat.clone())
    }

    /// The catalog was reloaded (`catalog`, or `None` when that failed) for the held
    /// RowDescription of `job`: the job's statement is planned again with it.
    pub fn reloaded(&mut self, job: u64, catalog: Option<Rc<Loaded>>) {
        self.reloaded = true;
        let Some(catalog) = catalog else {
            return;
        };
        self.set_catalog(catalog.clone());
        let sql = match self.jobs.get(&job) {
            Some(Job::Simple { sql, .. }) => sql.clone(),
            Some(Job::Describe { portal }) => {
                self.portals.get(&**portal).and_then(|p| p.sql.clone())
            }
            _ => None,
        };
        // Without the text the old plan stands; the origins are resolved with the new
        // catalog either way.
        let Some(sql) = sql else {
            return;
        };
        let plan = catalog.plan(&self.policy, &sql, &sql);
        match self.jobs.get_mut(&job) {
            Some(Job::Simple { plans, state, .. }) => match &*plan {
                MaskPlan::Deny { message, .. } => {
                    state.failed.get_or_insert_with(|| message.clone());
                }
                _ => *plans = plan,
            },
            Some(Job::Describe { portal }) => {
                let portal = portal.clone();
                let lineage = self.lineage_of(&plan, 0);
                if let Some(p) = self.portals.get_mut(&*portal) {
                    p.lineage = lineage;
                }
            }
            _ => {}
        }
    }

    /// Whether a message with `tag`, answering the request tagged `job`, must be whole in
    /// the buffer before [`Masker::on_message`] sees it.
    pub fn needs_whole(&self, tag: u8, job: u64) -> bool {
        match tag {
            bmsg::ERROR_RESPONSE | bmsg::NOTICE_RESPONSE | bmsg::NOTIFICATION => true,
            bmsg::DATA_ROW | bmsg::COPY_DATA => match self.jobs.get(&job) {
                // An Execute's row plan is taken from its portal at the first row.
                Some(Job::Execute { .. }) => true,
                Some(Job::Simple { state, .. }) => {
                    state.rows.is_some()
                        || state.copy.is_some()
                        || state.failed.is_some()
                        || self.max_rows.is_some()
                }
                Some(Job::Describe { .. }) => false,
                // Rows of a request the masker never saw (one sent before the policy that
                // masks arrived): dropped, never forwarded unmasked.
                None => self.by_column || !self.detectors.is_empty(),
            },
            // PortalSuspended and EmptyQueryResponse end a result as CommandComplete does:
            // the masker must see them to carry a portal's row count (max_rows) across
            // Executes and to turn a failed result into its error.
            bmsg::ROW_DESCRIPTION
            | bmsg::COPY_OUT
            | bmsg::COMMAND_COMPLETE
            | bmsg::PORTAL_SUSPENDED
            | bmsg::EMPTY_QUERY => self.jobs.contains_key(&job),
            _ => false,
        }
    }

    /// The masking plan of a statement text; `Err` with a message when it must be denied.
    /// `key` is what the plan is cached under (the text, or its shape when constants cannot
    /// change it).
    pub fn plan(&mut self, key: &str, sql: &str) -> Result<Rc<MaskPlan>, (String, String)> {
        let plan = match (&self.catalog, self.by_column) {
            (_, false) => Rc::new(MaskPlan::Clear),
            (Some(c), true) => c.plan(&self.policy, key, sql),
            (None, true) => {
                return Err((
                    "masking/catalog".into(),
                    "sluice: the backend's catalog could not be loaded, so masked columns cannot be resolved".into(),
                ))
            }
        };
        match &*plan {
            MaskPlan::Deny { rule, message } => Err((rule.as_str().to_owned(), message.clone())),
            MaskPlan::Statements(v) => {
                for p in v {
                    match p {
                        // A name already in use fails on the server (duplicate cursor or
                        // statement), leaving the old one: its rows are untraceable then.
                        ResultPlan::Declare { cursor, rows } => {
                            let lineage = if self.cursors.contains_key(cursor) {
                                Lineage::Unknown(
                                    format!("sluice: cursor \"{cursor}\" was declared twice; close it and declare it again").into(),
                                )
                            } else {
                                Lineage::Columns(Rc::new(rows.clone()))
                            };
                            self.cursors.insert(cursor.clone(), lineage);
                        }
                        ResultPlan::Prepare { name, rows } => {
                            let lineage = if self.prepared.contains_key(name) {
                                Some(Lineage::Unknown(
                                    format!("sluice: \"{name}\" was prepared twice; deallocate it and prepare it again").into(),
                                ))
                            } else {
                                rows.clone().map(|r| Lineage::Columns(Rc::new(r)))
                            };
                            self.prepared.insert(name.clone(), lineage);
                        }
                        _ => {}
                    }
                }
                Ok(plan)
            }
            MaskPlan::Clear => Ok(plan),
        }
        .inspect(|plan| self.last_planned = Some((plan.clone(), sql.into())))
    }

    /// The text of `plan`, if it is the one planned last.
    fn sql_of(&self, plan: &MaskPlan) -> Option<Rc<str>> {
        self.last_planned
            .as_ref()
            .filter(|(p, _)| std::ptr::eq(&**p, plan))
            .map(|(_, sql)| sql.clone())
    }

    fn job(&mut self, job: Job) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, job);
        id
    }

    /// A job for a simple Query with this plan.
    pub fn job_simple(&mut self, plans: Rc<MaskPlan>) -> u64 {
        let sql = self.sql_of(&plans);
        self.job(Job::Simple {
            plans,
            sql,
            index: 0,
            state: ResultState::default(),
        })
    }

    /// Records what an extended-protocol Parse of `name` returns.
    pub fn parsed(&mut self, name: &str, plan: &MaskPlan) {
        let lineage = self.lineage_of(plan, 0);
        let sql = self.sql_of(plan);
        self.statements.insert(name.into(), (lineage, sql));
    }

    /// Records a Bind of `portal` to `statement`.
    pub fn bound(&mut self, portal: &str, statement: &str) {
        let (lineage, sql) = self.statements.get(statement).cloned().unwrap_or_else(|| {
            (
                Lineage::Unknown(
                    format!(
                        "sluice: statement \"{statement}\" was not prepared through this session"
                    )
                    .into(),
                ),
                None,
            )
        });
        self.portals.insert(
            portal.into(),
            Portal {
                statement: statement.into(),
                lineage,
                sql,
                rows: None,
                sent: 0,
            },
        );
    }

    /// A job for a Describe of `portal` (the client's or the gateway's).
    pub fn job_describe(&mut self, portal: &str) -> u64 {
        self.job(Job::Describe {
            portal: portal.into(),
        })
    }

    /// A job for an Execute of `portal`.
    pub fn job_execute(&mut self, portal: &str) -> u64 {
        self.job(Job::Execute {
            portal: portal.into(),
            state: ResultState::default(),
        })
    }

    /// Fails the result of `job` closed (its rows are dropped, its end becomes an error).
    pub fn fail_job(&mut self, job: u64, why: String) {
        match self.jobs.get_mut(&job) {
            Some(Job::Simple { state, .. }) | Some(Job::Execute { state, .. }) => {
                state.failed.get_or_insert(why);
            }
            _ => {}
        }
    }

    /// Forgets a job whose request is answered.
    pub fn finish_job(&mut self, job: u64) {
        self.jobs.remove(&job);
    }

    /// The server is idle: every job is answered, and portals do not outlive transactions.
    pub fn idle(&mut self, status: u8) {
        self.jobs.clear();
        if status == b'I' {
            self.portals.clear();
        }
    }

    /// `DEALLOCATE`/`DISCARD`: the session's SQL-level state on the server is gone.
    pub fn forget_sql_state(&mut self) {
        self.prepared.clear();
        self.cursors.clear();
    }

    /// The server may not have (or may have another) statement `name`: rows from it fail
    /// closed until it is parsed again.
    pub fn invalidate_statement(&mut self, name: &str) {
        // A Bind of an unknown name plans its portal as Unknown; portals already bound to it
        // (pipelined before the failure was known) are bound to whatever the server has.
        self.statements.remove(name);
        for p in self.portals.values_mut() {
            if &*p.statement == name {
                p.lineage = Lineage::Unknown(
                    format!("sluice: statement \"{name}\" did not take effect on the server")
                        .into(),
                );
                p.rows = None;
            }
        }
    }

    /// Forgets a SQL-level prepared statement (DEALLOCATE).
    pub fn forget_prepared(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    fn lineage_of(&self, plan: &MaskPlan, index: usize) -> Lineage {
        match plan {
            MaskPlan::Clear => Lineage::Clear,
            MaskPlan::Deny { message, .. } => Lineage::Unknown(message.as_str().into()),
            MaskPlan::Statements(v) => match v.get(index) {
                Some(ResultPlan::Rows(m)) => Lineage::Columns(Rc::new(m.clone())),
                // DECLARE and PREPARE answer without rows.
                Some(ResultPlan::Declare { .. }) | Some(ResultPlan::Prepare { .. }) => {
                    Lineage::Clear
                }
                // Rows from a statement planned to return none (CALL with OUT parameters,
                // anything the lineage does not model): fail closed.
                Some(ResultPlan::NoRows) => Lineage::Unknown(
                    "sluice: this statement returned rows the gateway did not expect, so their columns cannot be traced"
                        .into(),
                ),
                Some(ResultPlan::Fetch { cursor }) => {
                    self.cursors.get(cursor).cloned().unwrap_or_else(|| {
                        Lineage::Unknown(
                            format!("sluice: cursor \"{cursor}\" was not declared through this session").into(),
                        )
                    })
                }
                Some(ResultPlan::Execute { name }) => match self.prepared.get(name) {
                    Some(Some(l)) => l.clone(),
                    Some(None) => Lineage::Clear,
                    None => Lineage::Unknown(
                        format!("sluice: prepared statement \"{name}\" was not prepared through this session").into(),
                    ),
                },
                None => Lineage::Unknown("sluice: more results than statements".into()),
            },
        }
    }

    /// Builds the row plan of a RowDescription under `lineage`.
    /// The row plan of a RowDescription under `lineage`, cached by the description's bytes
    /// and the lineage (the same statement's results share one plan).
    fn row_plan(&mut self, frame: &[u8], lineage: &Lineage) -> Result<Rc<RowPlan>, String> {
        let key: Option<Vec<Option<usize>>> = match lineage {
            Lineage::Clear => None,
            Lineage::Columns(m) => Some(m.columns.clone()),
            Lineage::Unknown(why) => return Err(why.to_string()),
        };
        if let Some(hit) = self
            .row_plans
            .get(frame)
            .and_then(|v| v.iter().find(|(k, _, _)| *k == key))
        {
            let (_, plan, names) = hit;
            let plan = plan.clone();
            if self.record_columns {
                let names = names.clone();
                self.note_masked(names);
            }
            return Ok(plan);
        }
        let (plan, names) = self.build_row_plan(frame, lineage)?;
        let plan = Rc::new(plan);
        self.note_masked(names.iter().cloned());
        if self.row_plans.len() >= MAX_ROW_PLANS {
            self.row_plans.clear();
        }
        self.row_plans
            .entry(frame.to_vec())
            .or_default()
            .push((key, plan.clone(), names));
        Ok(plan)
    }

    /// Remembers masked column names for the request's audit record (bounded: the session
    /// drains them when it ships the record, and nobody does without audit shipping).
    fn note_masked(&mut self, names: impl IntoIterator<Item = Box<str>>) {
        if self.record_columns && self.masked_columns.len() < MAX_NOTED_COLUMNS {
            self.masked_columns.extend(names);
        }
    }

    /// Builds a row plan; also returns the names of the masked columns.
    fn build_row_plan(
        &self,
        frame: &[u8],
        lineage: &Lineage,
    ) -> Result<(RowPlan, Vec<Box<str>>), String> {
        let fields: Vec<FieldDescription<'_>> = sluice_mask::row_description_fields(frame)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sluice: malformed RowDescription: {e}"))?;
        let by_position = match lineage {
            Lineage::Clear => None,
            Lineage::Columns(m) => {
                if m.columns.len() != fields.len() {
                    return Err(format!(
                        "sluice: the result has {} columns where the statement's lineage has {}; refusing to guess which are masked",
                        fields.len(),
                        m.columns.len()
                    ));
                }
                Some(m.clone())
            }
            Lineage::Unknown(why) => return Err(why.to_string()),
        };
        let mut rules = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let mut rule = by_position.as_ref().and_then(|m| m.columns[i]);
            if self.by_column {
                let cat = self
                    .catalog
                    .as_ref()
                    .ok_or_else(|| "sluice: no catalog to resolve result columns".to_string())?;
                if f.table_oid >= FIRST_NORMAL_OID {
                    if cat.catalog.by_oid(f.table_oid).is_none() {
                        return Err(format!(
                            "sluice: result column \"{}\" comes from a relation (oid {}) the gateway's catalog does not know yet; retry",
                            f.name_lossy(), f.table_oid
                        ));
                    }
                    rule = rule.or_else(|| cat.origin_rule(&self.policy, f.table_oid, f.column_id));
                }
                if rule.is_none() {
                    if let Some(t) = cat.catalog.type_name(f.type_oid) {
                        rule = sluice_policy::lineage::type_rule(&self.policy, t);
                    }
                }
            }
            rules.push(rule);
        }
        let names = fields
            .iter()
            .zip(&rules)
            .filter(|(_, r)| r.is_some())
            .map(|(f, _)| Box::<str>::from(f.name_lossy()))
            .collect();
        let (strategies, non_utf8) = (&self.strategies, self.non_utf8_client);
        RowPlan::from_row_description(frame, None, self.detectors, |i, _| {
            rules[i].map(|r| strategy_of(strategies, r, non_utf8))
        })
        .map(|plan| (plan, names))
        .map_err(|e| format!("sluice: cannot plan masking: {e}"))
    }

    /// Plans a COPY TO's text rows: the masked columns as text, detectors on every column.
    fn copy_plan(&self, frame: &[u8], lineage: &Lineage) -> Result<Option<RowPlan>, String> {
        let body = &frame[5..];
        let (format, columns) = match body {
            [f, a, b, ..] => (*f, u16::from_be_bytes([*a, *b]) as usize),
            _ => return Err("sluice: malformed CopyOutResponse".into()),
        };
        let masks: Vec<Option<usize>> = match lineage {
            Lineage::Clear => vec![None; columns],
            Lineage::Columns(m) if m.columns.len() == columns => m.columns.clone(),
            Lineage::Columns(m) => {
                return Err(format!(
                    "sluice: COPY has {columns} columns where its lineage has {}",
                    m.columns.len()
                ))
            }
            Lineage::Unknown(why) => return Err(why.to_string()),
        };
        let work = masks.iter().any(Option::is_some) || !self.detectors.is_empty();
        if !work {
            return Ok(None);
        }
        if format != 0 {
            return Err("sluice: binary COPY cannot be masked; use text format".into());
        }
        let (strategies, non_utf8) = (&self.strategies, self.non_utf8_client);
        Ok(Some(RowPlan::new(
            masks.iter().map(|r| {
                (
                    ColumnType::text(sluice_mask::oid::TEXT),
                    r.map(|r| strategy_of(strategies, r, non_utf8)),
                )
            }),
            self.detectors,
        )))
    }
}
