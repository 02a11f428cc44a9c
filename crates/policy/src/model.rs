//! The policy document (YAML), validated into immutable typed policies with path-carrying errors.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::glob::{Case, Glob, GlobError, MAX_GLOB_PARTS};
use crate::snapshot::CompiledPolicy;

mod document;

use self::document::{build_policy, cache_key, RawDocument};

/// A statement class, the coarsest thing a policy allows, denies or sends to review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementClass {
    /// SELECT, VALUES, TABLE, EXPLAIN without ANALYZE, FETCH/CLOSE of a cursor.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, TRUNCATE, LOCK, CALL, NOTIFY.
    Write,
    /// CREATE/ALTER/DROP of tables, views, indexes, schemas, functions, ...; SELECT INTO.
    Ddl,
    /// GRANT, REVOKE, roles, row-level security policies.
    Dcl,
    /// VACUUM, ANALYZE and other maintenance; CREATE DATABASE.
    Admin,
    /// COPY in either direction (also judged as a read or write of its table).
    Copy,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, SET TRANSACTION.
    Transaction,
    /// SET, RESET, SHOW, DISCARD, DEALLOCATE, LISTEN/UNLISTEN.
    Session,
}

impl StatementClass {
    /// Every class, in a fixed order.
    pub const ALL: [StatementClass; 8] = [
        Self::Read,
        Self::Write,
        Self::Ddl,
        Self::Dcl,
        Self::Admin,
        Self::Copy,
        Self::Transaction,
        Self::Session,
    ];

    /// The name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Dcl => "dcl",
            Self::Admin => "admin",
            Self::Copy => "copy",
            Self::Transaction => "transaction",
            Self::Session => "session",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of statement classes (an empty set in a rule means "every class"). Compiled as its
/// bit mask, bit `n` for the `n`th class of [`StatementClass::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClassSet(u8);

impl ClassSet {
    /// Every class.
    pub const ALL: ClassSet = ClassSet(u8::MAX);

    /// Whether `class` is in the set.
    pub fn contains(self, class: StatementClass) -> bool {
        self.0 & class.bit() != 0
    }

    fn insert(&mut self, class: StatementClass) {
        self.0 |= class.bit();
    }
}

/// Identifies the rule behind a verdict, e.g. `analyst/tables.deny[1]` or
/// `builtin/functions`. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleId(Arc<str>);

impl RuleId {
    /// A rule id from its text.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for RuleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<str>::deserialize(d).map(|s| Self(s.into()))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The kinds of rule whose violations a policy may send to review instead of denying
/// (`review.on` in the document). Class-level review is `classes.review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Table or schema allow/deny lists.
    Tables,
    /// The policy's own function deny list.
    Functions,
    /// The built-in list of dangerous functions.
    BuiltinFunctions,
    /// UPDATE/DELETE without WHERE, TRUNCATE.
    RequireWhere,
    /// `COPY ... PROGRAM`.
    CopyProgram,
    /// `COPY ... TO/FROM 'server file'`.
    CopyFile,
    /// SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE, RESET ALL, DISCARD ALL.
    SetRole,
    /// `SET search_path`.
    SearchPath,
    /// `WITH x AS (DELETE ...) SELECT ...`.
    DataModifyingCte,
    /// `EXPLAIN ANALYZE` of a statement that writes.
    ExplainAnalyzeWrite,
    /// `DO` blocks.
    DoBlocks,
    /// CREATE FUNCTION/PROCEDURE/TRIGGER/EXTENSION, ALTER FUNCTION.
    CodeDefinitions,
    /// `MERGE` (when the policy sets `allow_merge: false`).
    Merge,
    /// Text that does not parse, or statement kinds the analyser does not know.
    Unparsed,
}

impl RuleKind {
    const ALL: [RuleKind; 14] = [
        Self::Tables,
        Self::Functions,
        Self::BuiltinFunctions,
        Self::RequireWhere,
        Self::CopyProgram,
        Self::CopyFile,
        Self::SetRole,
        Self::SearchPath,
        Self::DataModifyingCte,
        Self::ExplainAnalyzeWrite,
        Self::DoBlocks,
        Self::CodeDefinitions,
        Self::Merge,
        Self::Unparsed,
    ];

    /// The name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tables => "tables",
            Self::Functions => "functions",
            Self::BuiltinFunctions => "builtin_functions",
            Self::RequireWhere => "require_where",
            Self::CopyProgram => "copy_program",
            Self::CopyFile => "copy_file",
            Self::SetRole => "set_role",
            Self::SearchPath => "search_path",
            Self::DataModifyingCte => "data_modifying_cte",
            Self::ExplainAnalyzeWrite => "explain_analyze_write",
            Self::DoBlocks => "do_blocks",
            Self::CodeDefinitions => "code_definitions",
            Self::Merge => "merge",
            Self::Unparsed => "unparsed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a policy says about one statement class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassDecision {
    /// Listed under `classes.allow`.
    Allow,
    /// Listed under `classes.review`.
    Review,
    /// Listed under `classes.deny`, or not listed at all (default deny).
    Deny,
}

/// Whether a name rule applies to tables or whole schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameTarget {
    /// `schema.table` globs.
    Table,
    /// `schema` globs.
    Schema,
}

/// One entry of a table or schema deny list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyEntry {
    /// The rule id (`analyst/rules[0].tables.deny[1]`).
    pub id: RuleId,
    /// The classes it applies to.
    pub classes: ClassSet,
    /// Tables or schemas.
    pub target: NameTarget,
    /// The glob, matched case-insensitively.
    pub glob: Glob,
}

/// A table or schema allow list: a relation accessed under one of `classes` must match one
/// of `globs` (exactly, after identifier folding). Several applicable lists must all match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// The rule id (`analyst/tables.allow`).
    pub id: RuleId,
    /// The classes it applies to.
    pub classes: ClassSet,
    /// Tables or schemas.
    pub target: NameTarget,
    /// The globs.
    pub globs: Vec<Glob>,
}

/// An entry of the policy's own function deny list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDeny {
    /// The rule id (`analyst/functions.deny[0]`).
    pub id: RuleId,
    /// `[schema.]name` glob, matched case-insensitively; unqualified matches any schema.
    pub glob: Glob,
}

/// Where review verdicts go and how the client waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSettings {
    /// Rule kinds whose violations become reviews instead of denials.
    pub on: Vec<RuleKind>,
    /// `true`: the client waits for the decision; `false`: it gets an error with the review id.
    pub wait: bool,
    /// How long a waiting client waits (default 5 minutes).
    pub timeout: Duration,
    /// Approvals needed (default 1; the requester never counts).
    pub min_approvers: u32,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        Self {
            on: Vec::new(),
            wait: true,
            timeout: Duration::from_secs(300),
            min_approvers: 1,
        }
    }
}

/// A content detector a masking rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (Luhn-checked).
    Card,
    /// US social security numbers.
    Ssn,
    /// Phone numbers.
    Phone,
    /// IBANs.
    Iban,
    /// Common API key / token shapes.
    ApiKey,
}

impl Detector {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "email" => Self::Email,
            "card" => Self::Card,
            "ssn" => Self::Ssn,
            "phone" => Self::Phone,
            "iban" => Self::Iban,
            "api_key" => Self::ApiKey,
            _ => return None,
        })
    }
}

/// How far a masking rule's detectors lean toward masking look-alikes (values shaped like an
/// identifier that fail a validity check, such as ITIN-area SSNs). A role's detectors run
/// balanced only if every detector rule says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorSensitivity {
    /// Mask look-alikes too (the default).
    #[default]
    Strict,
    /// Mask only what passes the validity checks.
    Balanced,
}

impl DetectorSensitivity {
    fn is_strict(&self) -> bool {
        *self == Self::Strict
    }
}

/// Which end of a value a partial mask keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Keep the last N characters.
    Last(u32),
    /// Keep the first N characters.
    First(u32),
}

/// How a masked value is rewritten (the masking engine implements these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// Replace with a fixed text (default `****`).
    Redact {
        /// The replacement.
        text: Box<str>,
    },
    /// Keep some characters, mask the rest.
    Partial(Keep),
    /// Keyed hash (HMAC with the snapshot's key).
    Hash,
    /// Deterministic token (HMAC-derived), so joins still work.
    Tokenise,
    /// NULL.
    Null,
}

/// One masking rule: which columns, types or detected contents, and how to mask them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// The rule id (`analyst/masking[0]`).
    pub id: RuleId,
    /// `schema.table.column` globs (fewer parts leave the leading ones open).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Glob>,
    /// Type names (lower case, e.g. `text`, `varchar`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<Box<str>>,
    /// Content detectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<Detector>,
    /// How the detectors treat look-alikes.
    #[serde(default, skip_serializing_if = "DetectorSensitivity::is_strict")]
    pub sensitivity: DetectorSensitivity,
    /// The strategy.
    pub strategy: MaskStrategy,
    /// `predicates: deny`: statements that compare, sort, group or join on a column this rule
    /// masks are refused (inference through the rows chosen). Default: allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny_predicates: bool,
}

/// What happens to a write that affects more rows than `max_affected_rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Rolled back, and the client gets 42501 naming the limit (the default).
    #[default]
    Deny,
    /// Rolled back, and sent to an approver's review; once approved, the same text runs
    /// without the limit.
    Review,
}

impl OverLimit {
    fn is_deny(&self) -> bool {
        *self == Self::Deny
    }
}

/// One role's policy, validated and immutable. [`Policy::deny_all`] is the policy of a role
/// without one, and of every role when the document is invalid.
///
/// Its serde form is the compiled policy of a snapshot ([`CompiledPolicy`]): every field but
/// `valid` and `cache_key`, which belong to one [`PolicySet`] and are set only by
/// [`PolicySet::from_yaml`] and [`PolicySet::from_compiled`]. A policy deserialized any other
/// way is therefore not valid and denies every statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub(crate) name: Box<str>,
    #[serde(skip)]
    pub(crate) valid: bool,
    #[serde(skip)]
    pub(crate) cache_key: u64,
    /// Indexed by `StatementClass as usize` (the order of [`StatementClass::ALL`]).
    pub(crate) classes: [ClassDecision; 8],
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) deny: Vec<DenyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow: Vec<AllowList>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) function_deny: Vec<FunctionDeny>,
    /// Functions of the built-in denied list this policy allows by name (folded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) builtin_allow: Vec<Box<str>>,
    /// User-defined functions a masking role may call although their bodies cannot be
    /// traced (`functions.trusted`): their results carry only their arguments' lineage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) function_trusted: Vec<Glob>,
    pub(crate) search_path: Vec<Box<str>>,
    pub(crate) require_where: bool,
    pub(crate) allow_copy_program: bool,
    pub(crate) allow_copy_file: bool,
    pub(crate) allow_set_role: bool,
    pub(crate) allow_set_search_path: bool,
    pub(crate) allow_data_modifying_cte: bool,
    pub(crate) allow_explain_analyze_write: bool,
    pub(crate) allow_do_blocks: bool,
    pub(crate) allow_code_definitions: bool,
    pub(crate) allow_unparsed: bool,
    /// Absent from snapshots while true (the default), so their hashes do not change.
    #[serde(default = "document::yes", skip_serializing_if = "is_true")]
    pub(crate) allow_merge: bool,
    pub(crate) max_rows: Option<u64>,
    /// Absent from snapshots while unset, so their hashes do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_affected_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "OverLimit::is_deny")]
    pub(crate) over_limit: OverLimit,
    pub(crate) review: ReviewSettings,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) masking: Vec<MaskRule>,
}

impl Policy {
    /// The policy that denies every statement (rule `policy/none`).
    pub fn deny_all() -> Self {
        Self {
            name: "".into(),
            valid: false,
            cache_key: 0,
            classes: [ClassDecision::Deny; 8],
            deny: Vec::new(),
            allow: Vec::new(),
            function_deny: Vec::new(),
            builtin_allow: Vec::new(),
            function_trusted: Vec::new(),
            search_path: vec!["public".into()],
            require_where: true,
            allow_copy_program: false,
            allow_copy_file: false,
            allow_set_role: false,
            allow_set_search_path: false,
            allow_data_modifying_cte: false,
            allow_explain_analyze_write: false,
            allow_do_blocks: false,
            allow_code_definitions: false,
            allow_unparsed: false,
            allow_merge: false,
            max_rows: None,
            max_affected_rows: None,
            over_limit: OverLimit::Deny,
            review: ReviewSettings::default(),
            masking: Vec::new(),
        }
    }

    /// What an operator should know about this valid policy: each built-in function denial
    /// it lifts (`functions.allow_builtin_denied`), with the reason the function is listed.
    pub fn warnings(&self) -> Vec<String> {
        self.builtin_allow
            .iter()
            .map(|f| {
                let why = crate::evaluate::builtin_denial(f).map_or("", |(_, why)| why);
                format!("functions.allow_builtin_denied: {f}() is allowed although it {why}")
            })
            .collect()
    }

    /// The policy's name (empty for [`Policy::deny_all`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a real policy (false for [`Policy::deny_all`]).
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Identifies this policy in this snapshot version, for [`crate::VerdictCache`] keys.
    pub fn cache_key(&self) -> u64 {
        self.cache_key
    }

    /// What the policy says about a class.
    pub fn class_decision(&self, class: StatementClass) -> ClassDecision {
        self.classes[class as usize]
    }

    /// The most rows a statement may return; the data plane enforces it on results.
    pub fn max_rows(&self) -> Option<u64> {
        self.max_rows
    }

    /// The most rows one UPDATE, DELETE or MERGE may affect, and what happens to one that
    /// affects more; the data plane counts them from the server's command tag.
    pub fn max_affected_rows(&self) -> Option<(u64, OverLimit)> {
        self.max_affected_rows.map(|n| (n, self.over_limit))
    }

    /// Review settings.
    pub fn review(&self) -> &ReviewSettings {
        &self.review
    }

    /// Masking rules, for the masking engine.
    pub fn masking(&self) -> &[MaskRule] {
        &self.masking
    }

    /// Schemas an unqualified relation name may resolve to (besides `pg_catalog` for `pg_*`
    /// names). Default `[public]`; `SET search_path` is denied unless allowed, so it holds.
    pub fn search_path(&self) -> &[Box<str>] {
        &self.search_path
    }

    /// Whether `functions.trusted` lists the function `schema.name` (case-insensitively;
    /// an unqualified glob matches any schema).
    pub fn function_trusted(&self, schema: &str, name: &str) -> bool {
        self.function_trusted.iter().any(|g| {
            g.matches(&[schema, name], Case::Insensitive) || g.matches(&[name], Case::Insensitive)
        })
    }
}

/// The most policies one set may hold: [`cache_key`] keeps 20 bits of a policy's index.
pub const MAX_POLICIES: usize = 1 << 20;

/// The policies of one snapshot, in document order and by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    version: u64,
    /// In document order: a policy's index is part of its cache key.
    policies: Vec<Arc<Policy>>,
    by_name: HashMap<Box<str>, usize>,
}

impl PolicySet {
    /// Parses and validates a YAML policy document. `version` is the snapshot version; it
    /// becomes part of each policy's cache key so cached verdicts never outlive a policy.
    pub fn from_yaml(src: &str, version: u64) -> Result<Self, PolicyError> {
        let doc: RawDocument = if src.trim().is_empty() {
            RawDocument::default()
        } else {
            serde_yaml_ng::from_str(src).map_err(|e| PolicyError::Syntax(e.to_string()))?
        };
        let mut set = Self {
            version,
            ..Self::default()
        };
        for (i, raw) in doc.policies.into_iter().enumerate() {
            let path = format!("policies[{i}]");
            let policy = build_policy(raw, &path, version, i)?;
            set.push(policy, &path)?;
        }
        Ok(set)
    }

    /// The compiled form of every policy, in document order, for a snapshot: what
    /// [`PolicySet::from_compiled`] turns back into this set without parsing or validating
    /// the document again. The compiled form carries no version; the set built from it takes
    /// the snapshot's.
    pub fn compile(&self) -> Vec<CompiledPolicy> {
        self.policies
            .iter()
            .map(|p| {
                let mut p = Policy::clone(p);
                // Inert until `from_compiled` checks it and gives it a key in its set.
                p.valid = false;
                p.cache_key = 0;
                CompiledPolicy(p)
            })
            .collect()
    }

    /// Builds a set from policies [`PolicySet::compile`] produced (normally on the control
    /// plane, from a document validated there). Only the structure is checked here: names
    /// present and unique, at most `MAX_POLICIES`, every glob with as many parts as its
    /// rule allows, rule ids under their policy's name, no empty masking rule or type name,
    /// `min_approvers` at least 1. The YAML validation is not run again; the snapshot's
    /// content hash vouches for the rest. Cache keys come from `(version, index)` exactly as
    /// in [`PolicySet::from_yaml`], so a verdict cached under another version never matches.
    /// Error paths name the snapshot field, e.g. `compiled_policies[2].deny[0].glob`.
    pub fn from_compiled(compiled: Vec<CompiledPolicy>, version: u64) -> Result<Self, PolicyError> {
        if compiled.len() > MAX_POLICIES {
            return Err(PolicyError::invalid(
                "compiled_policies",
                format!("{} policies, at most {MAX_POLICIES}", compiled.len()),
            ));
        }
        let mut set = Self {
            version,
            policies: Vec::with_capacity(compiled.len()),
            by_name: HashMap::with_capacity(compiled.len()),
        };
        for (i, CompiledPolicy(mut policy)) in compiled.into_iter().enumerate() {
            let path = format!("compiled_policies[{i}]");
            check_compiled(&policy, &path)?;
            policy.valid = true;
            policy.cache_key = cache_key(version, i);
            set.push(policy, &path)?;
        }
        Ok(set)
    }

    fn push(&mut self, policy: Policy, path: &str) -> Result<(), PolicyError> {
        if self.by_name.contains_key(&policy.name) {
            return Err(PolicyError::invalid(
                format!("{path}.name"),
                format!("duplicate policy name {:?}", policy.name),
            ));
        }
        self.by_name
            .insert(policy.name.clone(), self.policies.len());
        self.policies.push(Arc::new(policy));
        Ok(())
    }

    /// The snapshot version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The named policy, if the document has it. Callers use [`Policy::deny_all`] otherwise.
    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.by_name.get(name).map(|&i| &self.policies[i])
    }

    /// The policies in document order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.iter()
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the document had no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// The structural checks of [`PolicySet::from_compiled`] on one policy at `path`. Paths are
/// formatted only for an error: this runs over every entry of every policy.
fn check_compiled(p: &Policy, path: &str) -> Result<(), PolicyError> {
    let name = &*p.name;
    if name.is_empty() || name.trim() != name {
        return Err(PolicyError::invalid(
            format!("{path}.name"),
            "empty, or with surrounding spaces",
        ));
    }
    // Verdicts name their rule; a rule id outside its policy would blame another one.
    let id = |id: &RuleId, at: &dyn Fn() -> String| match id
        .as_str()
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(local) if !local.is_empty() => Ok(()),
        _ => Err(PolicyError::invalid(
            at(),
            format!("rule id {:?} is not under policy {name:?}", id.as_str()),
        )),
    };
    let glob = |g: &Glob, max: usize, at: &dyn Fn() -> String| {
        if g.part_count() <= max {
            Ok(())
        } else {
            Err(PolicyError::invalid(
                at(),
                format!("glob {:?} has more than {max} parts", g.as_str()),
            ))
        }
    };
    let parts = |t: NameTarget| match t {
        NameTarget::Table => 2,
        NameTarget::Schema => 1,
    };
    for (i, d) in p.deny.iter().enumerate() {
        id(&d.id, &|| format!("{path}.deny[{i}].id"))?;
        glob(&d.glob, parts(d.target), &|| {
            format!("{path}.deny[{i}].glob")
        })?;
    }
    for (i, a) in p.allow.iter().enumerate() {
        id(&a.id, &|| format!("{path}.allow[{i}].id"))?;
        for (j, g) in a.globs.iter().enumerate() {
            glob(g, parts(a.target), &|| {
                format!("{path}.allow[{i}].globs[{j}]")
            })?;
        }
    }
    for (i, f) in p.builtin_allow.iter().enumerate() {
        if f.contains(['*', '?']) || crate::evaluate::builtin_denial(f).is_none() {
            return Err(PolicyError::invalid(
                format!("{path}.builtin_allow[{i}]"),
                format!("{f:?} is not a function of the built-in denied list"),
            ));
        }
    }
    for (i, f) in p.function_deny.iter().enumerate() {
        id(&f.id, &|| format!("{path}.function_deny[{i}].id"))?;
        glob(&f.glob, 2, &|| format!("{path}.function_deny[{i}].glob"))?;
    }
    for (i, g) in p.function_trusted.iter().enumerate() {
        glob(g, 2, &|| format!("{path}.function_trusted[{i}]"))?;
    }
    if let Some(i) = p.search_path.iter().position(|s| s.is_empty()) {
        return Err(PolicyError::invalid(
            format!("{path}.search_path[{i}]"),
            "empty schema name",
        ));
    }
    if p.review.min_approvers == 0 {
        return Err(PolicyError::invalid(
            format!("{path}.review.min_approvers"),
            "must be at least 1",
        ));
    }
    for (i, m) in p.masking.iter().enumerate() {
        id(&m.id, &|| format!("{path}.masking[{i}].id"))?;
        if m.columns.is_empty() && m.types.is_empty() && m.detectors.is_empty() {
            return Err(PolicyError::invalid(
                format!("{path}.masking[{i}]"),
                "a masking rule needs columns, types or detectors",
            ));
        }
        for (c, g) in m.columns.iter().enumerate() {
            glob(g, MAX_GLOB_PARTS, &|| {
                format!("{path}.masking[{i}].columns[{c}]")
            })?;
        }
        // Type rules compare with lower-case type names; anything else would never match.
        if let Some(t) = m
            .types
            .iter()
            .position(|t| t.is_empty() || t.trim() != &**t || t.chars().any(char::is_uppercase))
        {
            return Err(PolicyError::invalid(
                format!("{path}.masking[{i}].types[{t}]"),
                "type names are compiled trimmed, non-empty and lower case",
            ));
        }
    }
    Ok(())
}

/// Why a policy document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML, or not the document's shape (unknown field, wrong type); serde's message
    /// carries the location.
    #[error("policy document: {0}")]
    Syntax(String),
    /// A value is wrong; `path` points at it (`policies[2].rules[0].tables.deny[1]`).
    #[error("{path}: {message}")]
    Invalid {
        /// Where in the document.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
