//! Verdicts: a pure function of a policy and an analysis (allow, deny naming the rule, review).

use std::fmt;

use crate::analyze::{Analysis, CopyEndpoint, Kind, Name, StatementFacts};
use crate::glob::{wildcard, Case};
use crate::model::{ClassDecision, NameTarget, Policy, RuleId, RuleKind, StatementClass};

/// The verdict on a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Refuse it (the data plane answers with SQLSTATE 42501 and `message`).
    Deny {
        /// The rule that refused it.
        rule: RuleId,
        /// A message for the client's ErrorResponse; names the rule.
        message: String,
    },
    /// Hold it for a human approver.
    Review {
        /// The rule that asked for review.
        rule: RuleId,
        /// A message for the client (notice or error) and the approver.
        message: String,
    },
}

impl Verdict {
    /// Whether this is [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// Whether this is [`Verdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny { .. })
    }

    /// The rule behind a deny or review.
    pub fn rule(&self) -> Option<&RuleId> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny { rule, .. } | Verdict::Review { rule, .. } => Some(rule),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow => f.write_str("allow"),
            Verdict::Deny { message, .. } | Verdict::Review { message, .. } => f.write_str(message),
        }
    }
}

/// Functions every policy denies, whatever its own lists say (matched on the function's
/// name in any schema, case-insensitively), with the reason each is here. A policy can only
/// send these to review (`review.on: [builtin_functions]`), never allow them outright.
pub const BUILTIN_DENIED_FUNCTIONS: &[(&str, &str)] = &[
    // Server files: read, list or write files on the database host.
    ("pg_read_file", "reads a file on the database server"),
    ("pg_read_binary_file", "reads a file on the database server"),
    ("pg_stat_file", "inspects a file on the database server"),
    ("pg_ls_*", "lists a directory on the database server"),
    ("pg_logdir_ls", "lists the server log directory"),
    (
        "pg_file_*",
        "writes, renames or deletes server files (adminpack)",
    ),
    // Large objects: a storage channel outside every table rule; lo_import/lo_export also
    // touch server files. All of them, not only import/export.
    (
        "lo_*",
        "large objects bypass table rules (and lo_import/lo_export touch server files)",
    ),
    ("loread", "large objects bypass table rules"),
    ("lowrite", "large objects bypass table rules"),
    // Other servers and background execution.
    (
        "dblink*",
        "connects to another server or runs SQL out of the gateway's sight",
    ),
    ("pg_background_*", "runs SQL in a background worker"),
    (
        "query_export_to_s3",
        "runs a query and exports the result (aws_s3)",
    ),
    (
        "table_import_from_s3",
        "loads external data into a table (aws_s3)",
    ),
    // Dynamic SQL: these take a query (or table name) as text and run it.
    ("query_to_xml*", "runs a query given as text"),
    ("cursor_to_xml*", "reads a cursor given by name"),
    (
        "table_to_xml*",
        "reads a table given as text, bypassing table rules",
    ),
    (
        "schema_to_xml*",
        "reads a whole schema, bypassing table rules",
    ),
    (
        "database_to_xml*",
        "reads the whole database, bypassing table rules",
    ),
    ("ts_stat", "runs a query given as text"),
    ("ts_rewrite", "can run a query given as text"),
    // Other sessions and the server process.
    ("pg_terminate_backend", "terminates another session"),
    ("pg_cancel_backend", "cancels another session's query"),
    ("pg_reload_conf", "reloads the server configuration"),
    ("pg_rotate_logfile*", "rotates the server log"),
    ("pg_promote", "promotes a standby"),
    (
        "pg_log_backend_memory_contexts",
        "writes other sessions' internals to the log",
    ),
    ("pg_switch_wal", "forces a WAL switch"),
    ("pg_create_restore_point", "writes a WAL restore point"),
    ("pg_backup_*", "starts or stops a base backup"),
    ("pg_start_backup", "starts a base backup"),
    ("pg_stop_backup", "stops a base backup"),
    ("pg_wal_replay_*", "pauses or resumes recovery"),
    (
        "pg_*replication_slot*",
        "creates, copies, advances or drops replication slots",
    ),
    (
        "pg_logical_slot_*",
        "reads every change in the database through a logical slot",
    ),
    ("pg_logical_emit_message", "writes into the WAL stream"),
    ("pg_replication_origin_*", "changes replication progress"),
    ("pg_stat_*reset*", "resets server statistics"),
    ("binary_upgrade_*", "pg_upgrade internals"),
    // Session state the gateway relies on: set_config can change role and search_path.
    (
        "set_config",
        "changes session settings (role, search_path) behind the gateway's back",
    ),
];

/// The built-in list's entry for a function name (matched case-insensitively, in any schema).
pub(crate) fn builtin_denial(name: &str) -> Option<&'static (&'static str, &'static str)> {
    let base = name.to_lowercase();
    BUILTIN_DENIED_FUNCTIONS
        .iter()
        .find(|(pattern, _)| wildcard(pattern, &base))
}

/// Judges a whole text against a policy; `EXECUTE` of a prepared statement is denied,
/// because only the caller knows what the name refers to (use [`judge_with`]).
pub fn judge(policy: &Policy, analysis: &Analysis) -> Verdict {
    judge_with(policy, analysis, |_| None)
}

/// Judges a whole text; `resolve` maps an `EXECUTE name` to the facts of what was prepared
/// under that name on this client's session (from the `PREPARE`'s analysis), and returns
/// `None` for a name the client never prepared (denied).
///
/// A multi-statement text is denied whole if any statement is denied, held for review if any
/// needs review and none is denied, and allowed otherwise.
pub fn judge_with<'a>(
    policy: &Policy,
    analysis: &Analysis,
    resolve: impl Fn(&str) -> Option<&'a StatementFacts>,
) -> Verdict {
    if !policy.is_valid() {
        return Verdict::Deny {
            rule: RuleId::new("policy/none"),
            message: "sluice: no valid policy for this role; every statement is denied".into(),
        };
    }
    let mut j = Judge {
        policy,
        review: None,
    };
    if let Err(deny) = countable(policy, analysis) {
        return deny;
    }
    let result = match analysis {
        Analysis::Unparsed { reason, do_block } => {
            if *do_block {
                if policy.allow_do_blocks {
                    Ok(())
                } else {
                    j.violate(
                        RuleKind::DoBlocks,
                        "allow_do_blocks",
                        "DO blocks are not allowed".into(),
                    )
                }
            } else if policy.allow_unparsed {
                Ok(())
            } else {
                j.violate(
                    RuleKind::Unparsed,
                    "allow_unparsed",
                    format!("statement could not be analysed ({reason})"),
                )
            }
        }
        Analysis::Statements(stmts) => stmts
            .iter()
            .try_for_each(|s| j.statement(s, &resolve, false)),
    };
    match result {
        Err(deny) => deny,
        Ok(()) => match j.review {
            Some((rule, message)) => Verdict::Review { rule, message },
            None => Verdict::Allow,
        },
    }
}

/// Whether the server's command tag for `s` counts the rows it affects: UPDATE, DELETE and
/// MERGE (also after a reading WITH), and an `EXECUTE` (of what may be one of them).
fn counted_write(s: &StatementFacts) -> bool {
    matches!(s.tag, "UPDATE" | "DELETE" | "MERGE") || matches!(s.kind, Kind::Execute { .. })
}

/// The limit on affected rows the data plane must enforce for a text the policy allows:
/// `Some` when the policy sets `max_affected_rows` and the text is a counted write.
pub fn affected_rows_limit(policy: &Policy, analysis: &Analysis) -> Option<u64> {
    let (max, _) = policy.max_affected_rows()?;
    match analysis {
        Analysis::Statements(v) if v.iter().any(counted_write) => Some(max),
        _ => None,
    }
}

/// Under `max_affected_rows`, writes whose rows the data plane cannot count are denied: a
/// write inside WITH or EXPLAIN ANALYZE (the command tag counts something else), a counted
/// write among other statements of one text (the limit is enforced per statement), and a
/// text the analyser cannot read (whether it writes is unknown; `allow_unparsed` does not
/// lift the limit).
fn countable(policy: &Policy, analysis: &Analysis) -> Result<(), Verdict> {
    let Some((max, _)) = policy.max_affected_rows() else {
        return Ok(());
    };
    let v = match analysis {
        Analysis::Statements(v) => v,
        Analysis::Unparsed { .. } => {
            return Err(uncountable(
                policy,
                "a statement the gateway cannot analyse",
                max,
            ))
        }
    };
    let why = if v.iter().any(|s| s.data_modifying_cte) {
        "a data-modifying statement inside WITH"
    } else if v.iter().any(|s| s.explain_analyze_write) {
        "EXPLAIN ANALYZE of a write"
    } else if v.len() > 1 && v.iter().any(counted_write) {
        "an UPDATE, DELETE or MERGE sent with other statements in one query (send it on its own)"
    } else {
        return Ok(());
    };
    Err(uncountable(policy, why, max))
}

/// The denial of a text whose affected rows cannot be counted against the limit `max`.
fn uncountable(policy: &Policy, why: &str, max: u64) -> Verdict {
    let rule = RuleId::new(format!("{}/max_affected_rows", policy.name()));
    let message = format!(
        "sluice: denied by rule \"{rule}\": {why} affects rows the gateway cannot count against the limit of {max}"
    );
    Verdict::Deny { rule, message }
}

/// Judges one statement's facts (for the data plane's extended-protocol paths).
pub fn judge_statement(policy: &Policy, facts: &StatementFacts) -> Verdict {
    judge(policy, &Analysis::Statements(vec![facts.clone()]))
}

struct Judge<'p> {
    policy: &'p Policy,
    review: Option<(RuleId, String)>,
}

impl Judge<'_> {
    fn rule(&self, local: &str) -> RuleId {
        RuleId::new(format!("{}/{local}", self.policy.name()))
    }

    /// A rule is broken: a review if the policy routes this kind to review, else a denial.
    fn violate(&mut self, kind: RuleKind, local: &str, what: String) -> Result<(), Verdict> {
        let rule = self.rule(local);
        self.violate_id(kind, rule, what)
    }

    fn violate_id(&mut self, kind: RuleKind, rule: RuleId, what: String) -> Result<(), Verdict> {
        if self.policy.review.on.contains(&kind) {
            if self.review.is_none() {
                let message = format!("sluice: review required by rule \"{rule}\": {what}");
                self.review = Some((rule, message));
            }
            Ok(())
        } else {
            let message = format!("sluice: denied by rule \"{rule}\": {what}");
            Err(Verdict::Deny { rule, message })
        }
    }

    fn class(&mut self, class: StatementClass, tag: &str) -> Result<(), Verdict> {
        match self.policy.class_decision(class) {
            ClassDecision::Allow => Ok(()),
            ClassDecision::Review => {
                if self.review.is_none() {
                    let rule = self.rule("classes.review");
                    let message = format!(
                        "sluice: review required by rule \"{rule}\": {tag} is a {class} statement"
                    );
                    self.review = Some((rule, message));
                }
                Ok(())
            }
            ClassDecision::Deny => {
                let rule = self.rule("classes");
                let message = format!(
                    "sluice: denied by rule \"{rule}\": {class} statements ({tag}) are not allowed for this role"
                );
                Err(Verdict::Deny { rule, message })
            }
        }
    }

    fn statement<'a>(
        &mut self,
        s: &StatementFacts,
        resolve: &impl Fn(&str) -> Option<&'a StatementFacts>,
        resolved: bool,
    ) -> Result<(), Verdict> {
        let p = self.policy;
        if let Kind::Execute { name } = &s.kind {
            // Arguments are expressions: their function calls are judged here.
            self.functions(s)?;
            return match resolve(name) {
                Some(prepared) if !resolved && !matches!(prepared.kind, Kind::Execute { .. }) => {
                    self.statement(prepared, resolve, true)
                }
                _ => self.violate(
                    RuleKind::Unparsed,
                    "execute",
                    format!(
                        "EXECUTE of a prepared statement the gateway did not see prepared: {name}"
                    ),
                ),
            };
        }
        match s.class {
            None => {
                if !p.allow_unparsed {
                    let why = s
                        .opaque
                        .unwrap_or("a statement kind the gateway does not judge");
                    self.violate(
                        RuleKind::Unparsed,
                        "allow_unparsed",
                        format!("{} could not be judged ({why})", s.tag),
                    )?;
                }
            }
            Some(class) => {
                self.class(class, s.tag)?;
                if let Some(copy) = &s.copy {
                    // COPY is also a read (TO) or a write (FROM) of its table.
                    self.class(
                        if copy.to {
                            StatementClass::Read
                        } else {
                            StatementClass::Write
                        },
                        s.tag,
                    )?;
                }
                if s.sets_config && class != StatementClass::Session {
                    // set_config() changes the session as SET does.
                    self.class(StatementClass::Session, "set_config()")?;
                }
                if s.writes() && class != StatementClass::Write && s.copy.is_none() {
                    self.class(StatementClass::Write, s.tag)?;
                }
            }
        }

        self.flags(s)?;
        self.functions(s)?;
        for r in &s.reads {
            self.relation(r, StatementClass::Read, "reading")?;
        }
        let target_class = if s.copy.is_some() {
            StatementClass::Write
        } else {
            s.target_class
        };
        for t in &s.targets {
            let verb = match target_class {
                StatementClass::Write => "writing",
                StatementClass::Ddl => "changing the definition of",
                _ => "acting on",
            };
            self.relation(t, target_class, verb)?;
        }
        for schema in &s.schemas {
            self.schema(schema, target_class)?;
        }
        Ok(())
    }

    /// The policy's yes/no rules on what a statement does (CTE writes, EXPLAIN ANALYZE,
    /// MERGE, missing WHERE, COPY endpoints, role and search_path changes, code).
    fn flags(&mut self, s: &StatementFacts) -> Result<(), Verdict> {
        let p = self.policy;
        if s.data_modifying_cte && !p.allow_data_modifying_cte {
            self.violate(
                RuleKind::DataModifyingCte,
                "allow_data_modifying_cte",
                "data-modifying statements inside WITH are not allowed".into(),
            )?;
        }
        if s.explain_analyze_write && !p.allow_explain_analyze_write {
            self.violate(
                RuleKind::ExplainAnalyzeWrite,
                "allow_explain_analyze_write",
                "EXPLAIN ANALYZE of a write executes it and is not allowed".into(),
            )?;
        }
        if s.merge && !p.allow_merge {
            self.violate(
                RuleKind::Merge,
                "allow_merge",
                "MERGE is not allowed for this role".into(),
            )?;
        }
        if p.require_where {
            if let Some(t) = s.unfiltered_writes.first() {
                let what = if s.merge {
                    format!("MERGE that updates or deletes rows of {t} on a constant join condition (it acts on every row)")
                } else {
                    format!("{} without a WHERE clause on {t}", s.tag)
                };
                self.violate(RuleKind::RequireWhere, "require_where", what)?;
            }
        }
        if let Some(copy) = &s.copy {
            match &copy.endpoint {
                CopyEndpoint::Client => {}
                CopyEndpoint::Program(_) if !p.allow_copy_program => self.violate(
                    RuleKind::CopyProgram,
                    "allow_copy_program",
                    "COPY ... PROGRAM runs a command on the database server".into(),
                )?,
                CopyEndpoint::ServerFile(_) if !p.allow_copy_file => self.violate(
                    RuleKind::CopyFile,
                    "allow_copy_file",
                    "COPY to or from a server file is not allowed".into(),
                )?,
                _ => {}
            }
        }
        if s.role_change && !p.allow_set_role {
            self.violate(
                RuleKind::SetRole,
                "allow_set_role",
                format!("{} changes the session's role, which is not allowed", s.tag),
            )?;
        }
        if s.search_path_change && !p.allow_set_search_path {
            self.violate(
                RuleKind::SearchPath,
                "allow_set_search_path",
                "changing search_path is not allowed".into(),
            )?;
        }
        if s.code_definition && !p.allow_code_definitions {
            self.violate(
                RuleKind::CodeDefinitions,
                "allow_code_definitions",
                format!("{} defines code that runs later and is not allowed", s.tag),
            )?;
        }
        Ok(())
    }

    fn functions(&mut self, s: &StatementFacts) -> Result<(), Verdict> {
        let policy = self.policy;
        for f in &s.functions {
            let base = f.name.to_lowercase();
            // A policy may lift a built-in denial by naming the function; set_config with
            // constant setting names is judged as SET is (see `StatementFacts::sets_config`).
            let lifted = policy.builtin_allow.iter().any(|a| **a == *base)
                || (base == "set_config" && s.sets_config);
            if let Some((pattern, why)) = builtin_denial(&base).filter(|_| !lifted) {
                self.violate_id(
                    RuleKind::BuiltinFunctions,
                    RuleId::new(format!("builtin/functions/{pattern}")),
                    format!("function {f} {why}"),
                )?;
            }
            for deny in &policy.function_deny {
                let hit = candidates(f, policy, true)
                    .iter()
                    .any(|(schema, name)| deny.glob.matches(&[schema, name], Case::Insensitive))
                    || deny.glob.matches(&[&f.name], Case::Insensitive);
                if hit {
                    self.violate_id(
                        RuleKind::Functions,
                        deny.id.clone(),
                        format!("function {f} is denied"),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn relation(&mut self, r: &Name, class: StatementClass, verb: &str) -> Result<(), Verdict> {
        let policy = self.policy;
        let cands = candidates(r, policy, false);
        for deny in policy.deny.iter().filter(|d| d.classes.contains(class)) {
            let hit = cands.iter().any(|(schema, name)| match deny.target {
                NameTarget::Table => deny.glob.matches(&[schema, name], Case::Insensitive),
                NameTarget::Schema => deny.glob.matches(&[schema], Case::Insensitive),
            });
            if hit {
                self.violate_id(
                    RuleKind::Tables,
                    deny.id.clone(),
                    format!(
                        "{verb} {r} is denied ({} {})",
                        target_word(deny.target),
                        deny.glob
                    ),
                )?;
            }
        }
        for allow in policy.allow.iter().filter(|a| a.classes.contains(class)) {
            // Every schema the name may resolve to must be allowed.
            let ok = cands.iter().all(|(schema, name)| {
                allow.globs.iter().any(|g| match allow.target {
                    NameTarget::Table => g.matches(&[schema, name], Case::Exact),
                    NameTarget::Schema => g.matches(&[schema], Case::Exact),
                })
            });
            if !ok {
                self.violate_id(
                    RuleKind::Tables,
                    allow.id.clone(),
                    format!("{verb} {r} is not allowed (not in {})", allow.id),
                )?;
            }
        }
        Ok(())
    }

    fn schema(&mut self, schema: &str, class: StatementClass) -> Result<(), Verdict> {
        let policy = self.policy;
        for deny in policy.deny.iter().filter(|d| d.classes.contains(class)) {
            if deny.target == NameTarget::Schema && deny.glob.matches(&[schema], Case::Insensitive)
            {
                self.violate_id(
                    RuleKind::Tables,
                    deny.id.clone(),
                    format!("schema {schema} is denied"),
                )?;
            }
        }
        for allow in policy.allow.iter().filter(|a| a.classes.contains(class)) {
            if allow.target == NameTarget::Schema
                && !allow
                    .globs
                    .iter()
                    .any(|g| g.matches(&[schema], Case::Exact))
            {
                self.violate_id(
                    RuleKind::Tables,
                    allow.id.clone(),
                    format!("schema {schema} is not allowed (not in {})", allow.id),
                )?;
            }
        }
        Ok(())
    }
}

fn target_word(t: NameTarget) -> &'static str {
    match t {
        NameTarget::Table => "table",
        NameTarget::Schema => "schema",
    }
}

/// The (schema, name) pairs a name may refer to. A qualified name is itself. An unqualified
/// one may resolve through `pg_catalog` (always searched first: every catalog relation is
/// named `pg_*`, and every function may live there) and then the policy's search path.
fn candidates<'n>(n: &'n Name, policy: &'n Policy, function: bool) -> Vec<(&'n str, &'n str)> {
    match &n.schema {
        Some(s) => vec![(s, &n.name)],
        None => {
            let mut v = Vec::with_capacity(policy.search_path.len() + 1);
            if function || n.name.starts_with("pg_") {
                v.push(("pg_catalog", &*n.name));
            }
            v.extend(policy.search_path.iter().map(|s| (&**s, &*n.name)));
            v
        }
    }
}
