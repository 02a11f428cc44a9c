//! Where result columns come from, and which masking rule covers each: pure functions over a
//! statement's syntax tree and a [`Catalog`] snapshot of the backend database.
//!
//! INTERFACE CONTRACT (fixed; the data plane codes against it):
//! - [`Catalog`] is implemented by the data plane (`sluice_dataplane::catalog`) over
//!   `pg_class`/`pg_attribute`/`pg_namespace`/`pg_type` and `pg_get_viewdef`.
//! - [`mask_plan`] is called once per statement text (its result is cached with the verdict);
//!   [`origin_rule`] once per RowDescription field that carries a table OID.
//!
//! # How lineage is traced
//!
//! Each statement is parsed (PostgreSQL dialect, [`crate::MAX_SQL_BYTES`],
//! [`crate::RECURSION_LIMIT`]) and every output column gets the set of masking rules covering
//! the base columns it derives from: through column references (unqualified names resolve
//! against the FROM items, every candidate when ambiguous, then outward for correlated
//! subqueries), aliases, `*`/`t.*` (catalog attnum order; USING/NATURAL merged columns first),
//! whole-row references (`c`, `c.*`, `to_jsonb(c)`), every kind of expression (any argument or
//! operand taints the result; `count(...)` carries no value; window `PARTITION BY`/`ORDER BY`
//! and `FILTER` only choose rows), scalar subqueries, derived tables, LATERAL, CTEs (recursive
//! ones to a fixpoint), set operations (column i of every branch), VALUES, set-returning
//! functions in FROM (every column from every argument), views and materialized views (their
//! definition traced like a query, at most [`MAX_VIEW_DEPTH`] deep), RETURNING, COPY and
//! cursors. A base column is folded to its covering rule as soon as it is read (only rule
//! indices matter for the plan), so the lineage of a column is a small bit set.
//!
//! A statement is *sensitive* when it reads a relation with a covered column (directly or
//! through a view), or something it cannot see into. Output columns of unknown lineage in a
//! sensitive statement deny the text (rule [`LINEAGE_RULE`]); elsewhere they are harmless.
//!
//! Writes are checked too: a value deriving from a masked column may only be stored in a
//! column the same rule masks (`UPDATE t SET ssn = upper(ssn)`); anything else (`INSERT ...
//! SELECT`, `UPDATE ... SET`, `ON CONFLICT DO UPDATE`, MERGE, `CREATE TABLE AS`, `SELECT INTO`,
//! `CREATE [MATERIALIZED] VIEW`, data-modifying CTEs, COPY to a server file) is denied naming
//! the masking rule. ALTER/RENAME of a relation with covered columns, and ALTER SCHEMA, are
//! denied because they could move a column out from under its glob.
//!
//! # Known limits
//!
//! - Inference is out of scope: a masked column used only in WHERE, JOIN ... ON, GROUP BY,
//!   HAVING, ORDER BY, DISTINCT ON, LIMIT, a window's PARTITION BY/ORDER BY or an aggregate's
//!   FILTER leaves the output clean, although the rows chosen can reveal something about it.
//!   Relations read only there are not looked up either.
//! - Function bodies are not traced: a function that reads a masked table itself
//!   (`SELECT get_ssn(1)`, `FROM my_report()`) returns clean values as far as this module
//!   knows; the function rules and the content detectors are the defence there. `count` is
//!   assumed to be `pg_catalog.count` when unqualified.
//! - Field access on a whole row (`(c).id`) is tainted by the whole row (over-masking).
//! - `TABLE "Mixed"` loses its quotes in sqlparser and is looked up in lower case (a miss is a
//!   denial, never a leak). Temporary tables are not in the catalog and are denied.
//! - Statements that may return rows of a shape this module cannot list (`SELECT *` over a
//!   function of unknown result type, a system view the catalog does not hold) are fine alone
//!   when nothing is masked, but deny a text that also needs a [`MaskPlan::Statements`] entry.
//! - `CALL` and other statements not listed above are planned as [`ResultPlan::NoRows`]; the
//!   data plane fails closed if a RowDescription arrives anyway.
//! - sqlparser cannot parse `MOVE`; a text that is exactly one MOVE is recognised by tokens.

/// Relation kinds the catalog reports (`pg_class.relkind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    /// `r` ordinary table, `p` partitioned table.
    Table,
    /// `v` view.
    View,
    /// `m` materialized view.
    MaterializedView,
    /// `f` foreign table.
    Foreign,
    /// Anything else (sequences, composite types, ...).
    Other,
}

/// One column of a relation (`pg_attribute`, dropped columns left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// `attnum` (1-based).
    pub attnum: i16,
    /// Column name, as stored (case-sensitive).
    pub name: Box<str>,
    /// Type name (`pg_type.typname`, lower case: `text`, `varchar`, `int4`, ...).
    pub type_name: Box<str>,
    /// Type OID.
    pub type_oid: u32,
}

/// One relation the catalog knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema name, as stored.
    pub schema: Box<str>,
    /// Relation name, as stored.
    pub name: Box<str>,
    /// Kind.
    pub kind: RelKind,
    /// Columns in attnum order.
    pub columns: Vec<Column>,
    /// For views and materialized views: `pg_get_viewdef(oid)`, a SELECT statement.
    pub view_sql: Option<Box<str>>,
}

/// A read-only snapshot of one backend database's relations.
pub trait Catalog {
    /// The relation `schema.name` (exact, case-sensitive names as stored).
    fn relation(&self, schema: &str, name: &str) -> Option<&Relation>;
    /// The relation with this OID.
    fn by_oid(&self, oid: u32) -> Option<&Relation>;
    /// The name of the type with this OID (`pg_type.typname`).
    fn type_name(&self, oid: u32) -> Option<&str>;
}

/// Which masking rule covers one result column: an index into [`crate::Policy::masking`].
pub type RuleIndex = usize;

/// The masking of one result set, by output position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultMask {
    /// One entry per output column, in order: the rule whose strategy masks it, if any.
    /// The data plane checks that RowDescription has exactly this many fields (else the
    /// statement fails closed), and also masks any column whose table OID/attnum
    /// [`origin_rule`] resolves to a rule (the union of both).
    pub columns: Vec<Option<RuleIndex>>,
}

/// What one statement of a statement text returns, as far as masking goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultPlan {
    /// No result rows (INSERT without RETURNING, SET, BEGIN, ...): no RowDescription expected.
    NoRows,
    /// A result set (SELECT, VALUES, TABLE, ... RETURNING, SHOW, EXPLAIN, COPY ... TO).
    Rows(ResultMask),
    /// `DECLARE name CURSOR FOR query`: no rows now; `FETCH` from it later returns `rows`.
    Declare {
        /// Cursor name, folded as PostgreSQL folds it.
        cursor: Box<str>,
        /// The masking of the rows FETCH returns.
        rows: ResultMask,
    },
    /// `PREPARE name AS query`: no rows now; `EXECUTE name` later returns `rows`
    /// (`None`: the prepared statement returns no rows).
    Prepare {
        /// Statement name, folded.
        name: Box<str>,
        /// The masking of what EXECUTE returns.
        rows: Option<ResultMask>,
    },
    /// `FETCH`/`MOVE ... FROM cursor`: rows masked as the cursor's DECLARE said (the data
    /// plane fails closed for a cursor it does not know).
    Fetch {
        /// Cursor name, folded.
        cursor: Box<str>,
    },
    /// `EXECUTE name`: rows masked as the PREPARE said.
    Execute {
        /// Statement name, folded.
        name: Box<str>,
    },
}

/// The masking a statement text needs, decided before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskPlan {
    /// The policy masks nothing this text can read (content detectors still run).
    Clear,
    /// One entry per statement in the text, in order.
    Statements(Vec<ResultPlan>),
    /// The text would let a masked value out in a way the gateway cannot mask: it writes one
    /// into a table (`INSERT ... SELECT ssn`, `CREATE TABLE AS`), copies it in a format the
    /// masker cannot rewrite, or its lineage cannot be established. Deny, naming `rule`.
    Deny {
        /// The masking rule (or `masking/lineage`) that asked for the denial.
        rule: crate::RuleId,
        /// Why, for the client's ErrorResponse.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------
// Implementation.
// ---------------------------------------------------------------------------------------

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    self, AssignmentTarget, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable,
    FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Insert, JoinConstraint, JoinOperator,
    ObjectName, ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableAlias, TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::analyze::{MAX_SQL_BYTES, RECURSION_LIMIT};
use crate::glob::Case;
use crate::model::{Policy, RuleId};

/// The rule named when lineage cannot be established (`MaskPlan::Deny`).
pub const LINEAGE_RULE: &str = "masking/lineage";

/// How deeply views may be nested inside views before the innermost is treated as unknown.
pub const MAX_VIEW_DEPTH: usize = 8;

/// How many queries (subqueries, CTE bodies, expanded views) may be nested in total before
/// the innermost is treated as unknown. Together with the parser's [`RECURSION_LIMIT`] per
/// parsed text it bounds the walk's stack depth (the test `deep_view_chains_are_bounded`
/// runs a chain of deeply nested views on a 1 MiB stack in a debug build).
pub const MAX_QUERY_DEPTH: usize = 64;

/// Passes over a recursive CTE before its lineage is declared unknown. Taint only grows
/// (rules are added, never removed), so a fixpoint is reached in a few passes.
const MAX_FIXPOINT_PASSES: usize = 16;

/// The masking plan for `sql` under `policy`, against a snapshot of the backend's catalog.
///
/// Returns [`MaskPlan::Clear`] without parsing when the policy has no column or type masking
/// rules, and when nothing in the text can return or store a masked value. Text that does not
/// parse, lineage that cannot be traced through a statement that reads a masked relation,
/// relations missing from the catalog, and writes that would store a masked value where it can
/// be read back unmasked are [`MaskPlan::Deny`].
pub fn mask_plan(policy: &Policy, catalog: &dyn Catalog, sql: &str) -> MaskPlan {
    if !has_column_rules(policy) {
        return MaskPlan::Clear;
    }
    if sql.len() > MAX_SQL_BYTES {
        return lineage_deny(format!(
            "statement text of {} bytes exceeds the {MAX_SQL_BYTES}-byte limit; masked columns cannot be traced",
            sql.len()
        ));
    }
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let stmts = match parsed {
        Ok(s) => s,
        Err(e) => {
            // sqlparser has no MOVE; it returns no rows, only repositions a cursor.
            if let Some(cursor) = single_move(sql) {
                return MaskPlan::Statements(vec![ResultPlan::Fetch {
                    cursor: cursor.into(),
                }]);
            }
            let why = match e {
                ParserError::RecursionLimitExceeded => {
                    format!("nesting exceeds the limit of {RECURSION_LIMIT}")
                }
                ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            };
            return lineage_deny(format!(
                "the statement could not be parsed ({why}), so masked columns cannot be traced"
            ));
        }
    };
    if let Some(f) = stmts.iter().find_map(side_channel_call) {
        return lineage_deny(format!(
            "{f}() with a computed argument can carry a masked value out of the result (a notification, a setting, a large object, another server); only constant arguments are allowed for this role"
        ));
    }
    let mut cx = Ctx::new(policy, catalog);
    let mut plans = Vec::with_capacity(stmts.len());
    for stmt in &stmts {
        cx.sensitive = false;
        match cx.statement(stmt, None) {
            Ok(p) => plans.push((p, cx.sensitive)),
            Err(d) => return d.into_plan(),
        }
    }
    if plans.iter().all(|(p, sensitive)| p.is_clear(*sensitive)) {
        return MaskPlan::Clear;
    }
    let mut out = Vec::with_capacity(plans.len());
    for (i, (p, sensitive)) in plans.into_iter().enumerate() {
        match p.finish(policy, sensitive, i + 1) {
            Ok(r) => out.push(r),
            Err(d) => return d.into_plan(),
        }
    }
    MaskPlan::Statements(out)
}

/// The masking rule for one RowDescription field that names a table OID and attribute.
///
/// - A relation's own column: the first rule whose `columns` glob matches
///   `schema.table.column` or whose `types` holds the column's type.
/// - A view or materialized view column, in addition: the first rule covering any base column
///   it derives from (the view's definition is traced like a query).
/// - Fails closed: a view whose definition cannot be traced, or an attribute number the
///   catalog does not list (a stale catalog), yields the first column or type rule of the
///   policy, so the value is masked rather than leaked.
/// - `None` for an OID the catalog does not know (the caller fails closed on those itself),
///   for system columns (`attnum <= 0`), and when nothing covers the column.
pub fn origin_rule(
    policy: &Policy,
    catalog: &dyn Catalog,
    table_oid: u32,
    attnum: i16,
) -> Option<RuleIndex> {
    if !has_column_rules(policy) || attnum <= 0 {
        return None;
    }
    let rel = catalog.by_oid(table_oid)?;
    let fallback = first_column_rule(policy);
    let Some(pos) = rel.columns.iter().position(|c| c.attnum == attnum) else {
        return fallback;
    };
    let mut cx = Ctx::new(policy, catalog);
    let cols = cx.relation_columns(rel);
    match cols.get(pos) {
        Some(col) if col.taint.unknown.is_some() => col.taint.rules.first().or(fallback),
        Some(col) => col.taint.rules.first(),
        None => fallback,
    }
}

/// The first masking rule whose `types` list holds `type_name` (`pg_type.typname`, or a
/// common SQL spelling such as `character varying`; array types `_x` also match rules on `x`).
pub fn type_rule(policy: &Policy, type_name: &str) -> Option<RuleIndex> {
    let canon = canonical_type(type_name);
    let element = canon.strip_prefix('_');
    policy.masking().iter().position(|r| {
        r.types.iter().any(|t| {
            let t = canonical_type(t);
            t == canon || element == Some(t.as_str())
        })
    })
}

/// Functions that send a value somewhere other than the result (and so past the masker):
/// notifications, settings read back later, large objects, other servers, server files.
const SIDE_CHANNEL_FUNCTIONS: &[&str] = &[
    "pg_notify",
    "set_config",
    "pg_logical_emit_message",
    "lo_from_bytea",
    "lo_put",
    "pg_file_write",
];

/// The first call anywhere in `stmt` (select list, WHERE, subqueries, ...) of a
/// [`SIDE_CHANNEL_FUNCTIONS`] function or a `dblink*` function with an argument that is not
/// a literal. Such a call is judged without lineage: a WHERE clause is not traced, and the
/// value leaves through the side channel whatever the result's masking.
fn side_channel_call(stmt: &Statement) -> Option<String> {
    let mut found = None;
    let _ = ast::visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e {
            let name = last_name(&f.name).map(|n| n.to_ascii_lowercase());
            let sink = name
                .as_deref()
                .is_some_and(|n| SIDE_CHANNEL_FUNCTIONS.contains(&n) || n.starts_with("dblink"));
            let computed = match &f.args {
                FunctionArguments::List(l) => l.args.iter().any(|a| {
                    let e = match a {
                        FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg) => arg,
                    };
                    !matches!(e, FunctionArgExpr::Expr(Expr::Value(_)))
                }),
                FunctionArguments::Subquery(_) => true,
                FunctionArguments::None => false,
            };
            if sink && computed {
                found = name;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

fn has_column_rules(policy: &Policy) -> bool {
    first_column_rule(policy).is_some()
}

fn first_column_rule(policy: &Policy) -> Option<RuleIndex> {
    policy
        .masking()
        .iter()
        .position(|r| !r.columns.is_empty() || !r.types.is_empty())
}

/// PostgreSQL's own names for the SQL-standard type spellings a policy may use.
fn canonical_type(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let canon = match lower.as_str() {
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "boolean" => "bool",
        "double precision" => "float8",
        "real" => "float4",
        "decimal" => "numeric",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        "time with time zone" => "timetz",
        "time without time zone" => "time",
        _ => return lower,
    };
    canon.to_owned()
}

fn lineage_deny(message: String) -> MaskPlan {
    MaskPlan::Deny {
        rule: RuleId::new(LINEAGE_RULE),
        message,
    }
}

/// `MOVE [direction] [FROM | IN] cursor [;]` as the whole text, by tokens: the cursor name.
fn single_move(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    let mut toks: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if matches!(toks.last(), Some(Token::SemiColon)) {
        toks.pop();
    }
    let (first, rest) = toks.split_first()?;
    if !matches!(first, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("move"))
    {
        return None;
    }
    let (last, middle) = rest.split_last()?;
    let ok = middle.iter().all(|t| {
        matches!(t, Token::Word(w) if w.quote_style.is_none())
            || matches!(t, Token::Number(..) | Token::Minus)
    });
    match last {
        Token::Word(w) if ok => Some(fold_word(&w.value, w.quote_style.is_some())),
        _ => None,
    }
}

fn fold_word(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_ascii_lowercase()
    }
}

/// Folds one identifier per PostgreSQL: unquoted → ASCII lower case, quoted → as written.
fn fold(ident: &Ident) -> Rc<str> {
    fold_word(&ident.value, ident.quote_style.is_some()).into()
}

/// The folded parts of a plain name; `None` for computed parts.
fn name_parts(name: &ObjectName) -> Option<Vec<Rc<str>>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

fn last_name(name: &ObjectName) -> Option<Rc<str>> {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => Some(fold(i)),
        _ => None,
    }
}

fn display_parts(parts: &[Rc<str>]) -> String {
    parts.iter().map(|p| &**p).collect::<Vec<_>>().join(".")
}

// ---- taint -----------------------------------------------------------------------------

/// The masking rules some value derives from: a bit per rule index below 64, and the
/// smallest index above (policies with that many masking rules are rare; a value tainted by
/// one is never written anywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RuleSet {
    low: u64,
    high: Option<usize>,
}

impl RuleSet {
    fn one(i: RuleIndex) -> Self {
        let mut s = Self::default();
        s.add(i);
        s
    }

    fn add(&mut self, i: RuleIndex) {
        if i < 64 {
            self.low |= 1 << i;
        } else {
            self.high = Some(self.high.map_or(i, |h| h.min(i)));
        }
    }

    fn union(&mut self, other: RuleSet) {
        self.low |= other.low;
        if let Some(h) = other.high {
            self.add(h);
        }
    }

    fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_none()
    }

    /// The first rule by index: the one that masks a column deriving from several.
    fn first(&self) -> Option<RuleIndex> {
        if self.low != 0 {
            Some(self.low.trailing_zeros() as usize)
        } else {
            self.high
        }
    }

    /// The first rule other than `allowed` (a value may be written where `allowed` masks it).
    fn first_except(&self, allowed: Option<RuleIndex>) -> Option<RuleIndex> {
        let mut rest = *self;
        if let Some(a) = allowed.filter(|a| *a < 64) {
            rest.low &= !(1 << a);
        }
        if rest.low != 0 {
            return Some(rest.low.trailing_zeros() as usize);
        }
        // Indices from 64 up are summarised by their minimum, which cannot show that the
        // value derives from that rule alone: never allowed (fails closed).
        rest.high
    }
}

/// What one value derives from, as far as masking goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Taint {
    /// Rules covering the base columns it derives from.
    rules: RuleSet,
    /// Why part of its lineage could not be traced, if so.
    unknown: Option<Rc<str>>,
}

impl Taint {
    fn rule(i: RuleIndex) -> Self {
        Self {
            rules: RuleSet::one(i),
            unknown: None,
        }
    }

    fn unknown(why: impl Into<Rc<str>>) -> Self {
        Self {
            rules: RuleSet::default(),
            unknown: Some(why.into()),
        }
    }

    fn union(&mut self, other: &Taint) {
        self.rules.union(other.rules);
        if self.unknown.is_none() {
            self.unknown.clone_from(&other.unknown);
        }
    }

    fn is_clean(&self) -> bool {
        self.rules.is_empty() && self.unknown.is_none()
    }
}

/// One output column of a query or FROM item.
#[derive(Debug, Clone)]
struct Col {
    name: Rc<str>,
    taint: Taint,
}

/// The columns of a query or FROM item: listed, or not known one by one (a set-returning
/// function of unknown shape, `*` over such a thing), with the union of what they derive from.
#[derive(Debug, Clone)]
enum Shape {
    Known(Vec<Col>),
    Opaque(Taint),
}

impl Shape {
    fn whole(&self) -> Taint {
        match self {
            Shape::Known(cols) => {
                let mut t = Taint::default();
                for c in cols {
                    t.union(&c.taint);
                }
                t
            }
            Shape::Opaque(t) => t.clone(),
        }
    }

    /// `AS alias(a, b, ...)`: renames the leading columns.
    fn renamed(self, alias: Option<&TableAlias>) -> Shape {
        let Some(alias) = alias.filter(|a| !a.columns.is_empty()) else {
            return self;
        };
        match self {
            Shape::Known(mut cols) => {
                if alias.columns.len() > cols.len() {
                    let mut t = Shape::Known(cols).whole();
                    t.union(&Taint::unknown(
                        "a column alias list longer than its relation",
                    ));
                    return Shape::Opaque(t);
                }
                for (c, a) in cols.iter_mut().zip(&alias.columns) {
                    c.name = fold(&a.name);
                }
                Shape::Known(cols)
            }
            opaque => opaque,
        }
    }
}

/// One FROM item, as column references see it.
#[derive(Debug, Clone)]
struct Item {
    /// The name it is referred to by (its alias, or the relation's own name).
    name: Rc<str>,
    /// For an unaliased relation: its schema, for `schema.table.column` references.
    schema: Option<Rc<str>>,
    shape: Shape,
}

/// The FROM items visible at one query level, and the levels around it (correlation).
struct Scope<'s> {
    items: Vec<Item>,
    parent: Option<&'s Scope<'s>>,
}

/// Why a statement text is denied.
#[derive(Debug)]
struct Denied {
    rule: RuleId,
    message: String,
}

impl Denied {
    fn lineage(message: String) -> Self {
        Self {
            rule: RuleId::new(LINEAGE_RULE),
            message,
        }
    }

    fn into_plan(self) -> MaskPlan {
        MaskPlan::Deny {
            rule: self.rule,
            message: self.message,
        }
    }
}

type R<T> = Result<T, Denied>;

/// What one statement returns, before it is checked and turned into a [`ResultPlan`].
enum Plan {
    NoRows,
    Rows(Shape),
    Declare { cursor: Rc<str>, rows: Shape },
    Prepare { name: Rc<str>, rows: Option<Shape> },
    Fetch(Rc<str>),
    Execute(Rc<str>),
}

impl Plan {
    /// Nothing masked and nothing that refers to masks decided elsewhere.
    fn is_clear(&self, sensitive: bool) -> bool {
        let clean = |s: &Shape| match s {
            Shape::Known(cols) => cols
                .iter()
                .all(|c| c.taint.rules.is_empty() && (c.taint.unknown.is_none() || !sensitive)),
            Shape::Opaque(t) => t.rules.is_empty() && (t.unknown.is_none() || !sensitive),
        };
        match self {
            Plan::NoRows => true,
            Plan::Rows(s) => clean(s),
            // The data plane needs these to register the cursor or statement.
            Plan::Declare { .. } | Plan::Prepare { .. } => false,
            Plan::Fetch(_) | Plan::Execute(_) => false,
        }
    }

    fn finish(self, policy: &Policy, sensitive: bool, n: usize) -> R<ResultPlan> {
        let mask = |s: Shape| -> R<ResultMask> {
            match s {
                Shape::Known(cols) => {
                    let mut out = Vec::with_capacity(cols.len());
                    for c in cols {
                        if let (Some(why), true) = (&c.taint.unknown, sensitive) {
                            return Err(Denied::lineage(format!(
                                "result column \"{}\" of statement {n} reads masked data and its origin could not be traced: {why}",
                                c.name
                            )));
                        }
                        out.push(c.taint.rules.first());
                    }
                    Ok(ResultMask { columns: out })
                }
                Shape::Opaque(t) => {
                    let why = match (t.rules.first(), &t.unknown) {
                        (Some(r), _) => format!(
                            "it returns values masked by {}",
                            policy
                                .masking()
                                .get(r)
                                .map_or(LINEAGE_RULE, |m| m.id.as_str())
                        ),
                        (None, Some(u)) => u.to_string(),
                        (None, None) => "its columns are not known".to_owned(),
                    };
                    Err(Denied::lineage(format!(
                        "the result columns of statement {n} cannot be listed one by one ({why})"
                    )))
                }
            }
        };
        Ok(match self {
            Plan::NoRows => ResultPlan::NoRows,
            Plan::Rows(s) => ResultPlan::Rows(mask(s)?),
            Plan::Declare { cursor, rows } => ResultPlan::Declare {
                cursor: (*cursor).into(),
                rows: mask(rows)?,
            },
            Plan::Prepare { name, rows } => ResultPlan::Prepare {
                name: (*name).into(),
                rows: rows.map(mask).transpose()?,
            },
            Plan::Fetch(c) => ResultPlan::Fetch {
                cursor: (*c).into(),
            },
            Plan::Execute(n) => ResultPlan::Execute { name: (*n).into() },
        })
    }
}

/// A relation name as a statement resolves it.
enum Lookup<'c> {
    Cte(Shape),
    Relation(&'c Relation),
    /// `pg_catalog` / `information_schema` relations the catalog does not list: never masked,
    /// columns unknown.
    System,
    Missing(String),
}

/// The state of one [`mask_plan`] (or [`origin_rule`]) call.
struct Ctx<'c> {
    policy: &'c Policy,
    catalog: &'c dyn Catalog,
    /// CTE frames in scope, innermost last. A view's definition starts with none.
    ctes: Vec<Vec<(Rc<str>, Shape)>>,
    /// Queries currently nested.
    depth: usize,
    /// Views currently being expanded (cycle and depth guard).
    views: Vec<u32>,
    /// Column lineage of views already expanded in this call, with their sensitivity.
    view_cache: HashMap<u32, (Vec<Col>, bool)>,
    /// The current statement reads a relation with a covered column (or one it cannot see
    /// into): unknown lineage in its output is then a denial.
    sensitive: bool,
}

impl<'c> Ctx<'c> {
    fn new(policy: &'c Policy, catalog: &'c dyn Catalog) -> Self {
        Self {
            policy,
            catalog,
            ctes: Vec::new(),
            depth: 0,
            views: Vec::new(),
            view_cache: HashMap::new(),
            sensitive: false,
        }
    }

    fn rule_id(&self, i: RuleIndex) -> &str {
        self.policy
            .masking()
            .get(i)
            .map_or(LINEAGE_RULE, |r| r.id.as_str())
    }

    // ---- relations ----------------------------------------------------------------------

    /// The first rule covering `rel.col` by column glob or type.
    fn column_rule(&self, rel: &Relation, col: &Column) -> Option<RuleIndex> {
        let name = [&*rel.schema, &*rel.name, &*col.name];
        let type_hit = type_rule(self.policy, &col.type_name);
        let glob_hit = self.policy.masking().iter().position(|r| {
            r.columns
                .iter()
                .any(|g| g.matches(&name, Case::Insensitive))
        });
        match (glob_hit, type_hit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Each column of `rel` with what it derives from: its own rule, and for views the
    /// lineage of the view's definition at the same position.
    fn relation_columns(&mut self, rel: &Relation) -> Vec<Col> {
        let mut cols: Vec<Col> = rel
            .columns
            .iter()
            .map(|c| Col {
                name: Rc::from(&*c.name),
                taint: self
                    .column_rule(rel, c)
                    .map(Taint::rule)
                    .unwrap_or_default(),
            })
            .collect();
        if cols.iter().any(|c| !c.taint.rules.is_empty()) {
            self.sensitive = true;
        }
        if matches!(rel.kind, RelKind::View | RelKind::MaterializedView) {
            let derived = self.view_columns(rel);
            for (i, c) in cols.iter_mut().enumerate() {
                match derived.get(i) {
                    Some(d) => c.taint.union(&d.taint),
                    None => c.taint.union(&Taint::unknown(format!(
                        "view \"{}.{}\" has more columns than its definition returns",
                        rel.schema, rel.name
                    ))),
                }
            }
        }
        cols
    }

    /// The output lineage of a view's definition (cached per call).
    fn view_columns(&mut self, rel: &Relation) -> Vec<Col> {
        if let Some((cols, sensitive)) = self.view_cache.get(&rel.oid) {
            self.sensitive |= *sensitive;
            return cols.clone();
        }
        let outer_sensitive = std::mem::replace(&mut self.sensitive, false);
        let cols = self.expand_view(rel);
        let sensitive = self.sensitive;
        self.sensitive |= outer_sensitive;
        self.view_cache.insert(rel.oid, (cols.clone(), sensitive));
        cols
    }

    fn expand_view(&mut self, rel: &Relation) -> Vec<Col> {
        let unknown = |cx: &mut Self, why: String| {
            // Whatever the view reads is out of sight: treat the statement as reading masked data.
            cx.sensitive = true;
            let t = Taint::unknown(why);
            rel.columns
                .iter()
                .map(|c| Col {
                    name: Rc::from(&*c.name),
                    taint: t.clone(),
                })
                .collect()
        };
        let label = format!("{}.{}", rel.schema, rel.name);
        if self.views.contains(&rel.oid) || self.views.len() >= MAX_VIEW_DEPTH {
            return unknown(
                self,
                format!("view \"{label}\" is nested too deeply to trace"),
            );
        }
        let Some(sql) = rel.view_sql.as_deref() else {
            return unknown(
                self,
                format!("view \"{label}\" has no definition in the catalog"),
            );
        };
        let dialect = PostgreSqlDialect {};
        let parsed = (sql.len() <= MAX_SQL_BYTES)
            .then(|| {
                Parser::new(&dialect)
                    .with_recursion_limit(RECURSION_LIMIT)
                    .try_with_sql(sql)
                    .and_then(|mut p| p.parse_statements())
                    .ok()
            })
            .flatten();
        let query = match parsed.as_deref() {
            Some([Statement::Query(q)]) => q,
            _ => {
                return unknown(
                    self,
                    format!("the definition of view \"{label}\" could not be parsed"),
                )
            }
        };
        self.views.push(rel.oid);
        let saved_ctes = std::mem::take(&mut self.ctes);
        let shape = self.query(query, None);
        self.ctes = saved_ctes;
        self.views.pop();
        match shape {
            Ok(Shape::Known(cols)) if cols.len() == rel.columns.len() => cols,
            Ok(Shape::Known(_)) | Ok(Shape::Opaque(_)) => unknown(
                self,
                format!("the columns of view \"{label}\" do not match its definition"),
            ),
            Err(d) => unknown(self, format!("view \"{label}\": {}", d.message)),
        }
    }

    /// Resolves a relation name: CTEs first (unqualified), then the catalog through the
    /// policy's search path (after `pg_catalog`, as PostgreSQL does).
    fn lookup(&self, parts: &[Rc<str>], with_ctes: bool) -> Lookup<'c> {
        let catalog = self.catalog;
        match parts {
            [name] => {
                if with_ctes {
                    for frame in self.ctes.iter().rev() {
                        if let Some((_, s)) = frame.iter().rev().find(|(n, _)| n == name) {
                            return Lookup::Cte(s.clone());
                        }
                    }
                }
                if let Some(r) = catalog.relation("pg_catalog", name) {
                    return Lookup::Relation(r);
                }
                for schema in self.policy.search_path() {
                    if let Some(r) = catalog.relation(schema, name) {
                        return Lookup::Relation(r);
                    }
                }
                if name.starts_with("pg_") {
                    Lookup::System
                } else {
                    Lookup::Missing(name.to_string())
                }
            }
            [.., schema, name] if parts.len() <= 3 => match catalog.relation(schema, name) {
                Some(r) => Lookup::Relation(r),
                None if matches!(&**schema, "pg_catalog" | "information_schema") => Lookup::System,
                None => Lookup::Missing(format!("{schema}.{name}")),
            },
            _ => Lookup::Missing(display_parts(parts)),
        }
    }

    /// The FROM item for a named relation; a name the catalog does not know is a denial.
    fn relation_item(
        &mut self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        with_ctes: bool,
    ) -> R<Item> {
        let Some(parts) = name_parts(name) else {
            return Err(Denied::lineage(format!(
                "relation name {name} cannot be resolved"
            )));
        };
        let (shape, own, schema) = match self.lookup(&parts, with_ctes) {
            Lookup::Cte(s) => (s, parts.last().cloned(), None),
            Lookup::Relation(rel) => (
                Shape::Known(self.relation_columns(rel)),
                Some(Rc::from(&*rel.name)),
                Some(Rc::from(&*rel.schema)),
            ),
            Lookup::System => (
                Shape::Opaque(Taint::default()),
                parts.last().cloned(),
                parts.len().checked_sub(2).and_then(|i| parts.get(i).cloned()),
            ),
            Lookup::Missing(n) => {
                return Err(Denied::lineage(format!(
                    "relation \"{n}\" is not in the gateway's catalog, so its columns cannot be checked for masking"
                )))
            }
        };
        let own = own.unwrap_or_else(|| Rc::from(""));
        Ok(match alias {
            Some(a) => Item {
                name: fold(&a.name),
                schema: None,
                shape: shape.renamed(Some(a)),
            },
            None => Item {
                name: own,
                schema,
                shape,
            },
        })
    }

    // ---- statements ---------------------------------------------------------------------

    fn statement(&mut self, stmt: &Statement, outer: Option<&Scope<'_>>) -> R<Plan> {
        Ok(match stmt {
            Statement::Query(q) => {
                if let SetExpr::Select(s) = &*q.body {
                    if s.into.is_some() {
                        let shape = self.query(q, outer)?;
                        self.check_store(&shape.whole(), None, "SELECT INTO")?;
                        return Ok(Plan::NoRows);
                    }
                }
                Plan::Rows(self.query(q, outer)?)
            }
            Statement::Insert(ins) => match self.insert(ins, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Update(up) => match self.update(up, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Delete(del) => match self.delete(del, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Merge(m) => match self.merge(m, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                if !*to {
                    return Ok(Plan::NoRows);
                }
                let shape = match source {
                    CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        let item = self.relation_item(table_name, None, false)?;
                        copy_columns(item.shape, columns)
                    }
                    CopySource::Query(q) => self.query(q, None)?,
                };
                let format = options
                    .iter()
                    .find_map(|o| match o {
                        CopyOption::Format(f) => Some(f.value.to_ascii_lowercase()),
                        _ => None,
                    })
                    .or_else(|| {
                        legacy_options.iter().find_map(|o| match o {
                            CopyLegacyOption::Binary => Some("binary".to_owned()),
                            CopyLegacyOption::Csv(_) => Some("csv".to_owned()),
                            _ => None,
                        })
                    })
                    .unwrap_or_else(|| "text".to_owned());
                let whole = shape.whole();
                if let Some(r) = whole.rules.first() {
                    if !matches!(target, CopyTarget::Stdout) {
                        return Err(self.store_denial(r, "COPY to a server file or program"));
                    }
                    if format != "text" {
                        return Err(Denied {
                            rule: RuleId::new(self.rule_id(r)),
                            message: format!(
                                "COPY in {format} format cannot be masked, and it would return values masked by {}; use the text format",
                                self.rule_id(r)
                            ),
                        });
                    }
                }
                match target {
                    CopyTarget::Stdout => Plan::Rows(shape),
                    _ => {
                        self.check_store(&whole, None, "COPY to a server file or program")?;
                        Plan::NoRows
                    }
                }
            }
            Statement::Explain {
                analyze,
                statement,
                options,
                ..
            } => {
                let analyze = *analyze
                    || options.iter().flatten().any(|o| {
                        o.name.value.eq_ignore_ascii_case("analyze")
                            && !explicit_false(o.arg.as_ref())
                    });
                if analyze {
                    // EXPLAIN ANALYZE runs the statement: whatever it stores is checked.
                    self.statement(statement, None)?;
                }
                // A plan is text about the query, not values from its tables.
                Plan::Rows(Shape::Known(vec![Col {
                    name: "QUERY PLAN".into(),
                    taint: Taint::default(),
                }]))
            }
            Statement::ShowVariable { variable } => {
                let all = matches!(variable.as_slice(), [v] if v.value.eq_ignore_ascii_case("all"));
                let names: &[&str] = if all {
                    &["name", "setting", "description"]
                } else {
                    &["setting"]
                };
                Plan::Rows(Shape::Known(
                    names
                        .iter()
                        .map(|n| Col {
                            name: (*n).into(),
                            taint: Taint::default(),
                        })
                        .collect(),
                ))
            }
            Statement::Declare { stmts } => match stmts.as_slice() {
                [d] => match (&d.for_query, d.names.as_slice()) {
                    (Some(q), [name]) => {
                        let rows = self.query(q, None)?;
                        if d.binary == Some(true) {
                            if let Some(r) = rows.whole().rules.first() {
                                return Err(Denied {
                                    rule: RuleId::new(self.rule_id(r)),
                                    message: format!(
                                        "a BINARY cursor cannot be masked, and this one returns values masked by {}",
                                        self.rule_id(r)
                                    ),
                                });
                            }
                        }
                        Plan::Declare {
                            cursor: fold(name),
                            rows,
                        }
                    }
                    _ => Plan::NoRows,
                },
                _ => Plan::NoRows,
            },
            Statement::Prepare {
                name, statement, ..
            } => {
                let rows = match self.statement(statement, None)? {
                    Plan::Rows(s) => Some(s),
                    _ => None,
                };
                Plan::Prepare {
                    name: fold(name),
                    rows,
                }
            }
            Statement::Fetch { name, .. } => Plan::Fetch(fold(name)),
            Statement::Execute {
                name: Some(n),
                immediate: false,
                ..
            } => match last_name(n) {
                Some(name) => Plan::Execute(name),
                None => return Err(Denied::lineage("EXECUTE of a computed name".into())),
            },
            Statement::Execute { .. } => {
                return Err(Denied::lineage(
                    "EXECUTE of dynamic SQL cannot be traced".into(),
                ))
            }
            Statement::CreateTable(ct) => {
                if let Some(q) = &ct.query {
                    let shape = self.query(q, None)?;
                    self.check_store(&shape.whole(), None, "CREATE TABLE AS")?;
                }
                Plan::NoRows
            }
            Statement::CreateView(cv) => {
                let shape = self.query(&cv.query, None)?;
                let what = if cv.materialized {
                    "CREATE MATERIALIZED VIEW"
                } else {
                    "CREATE VIEW"
                };
                self.check_store(&shape.whole(), None, what)?;
                Plan::NoRows
            }
            Statement::AlterView { name, query, .. } => {
                self.check_renamable(name)?;
                let shape = self.query(query, None)?;
                self.check_store(&shape.whole(), None, "ALTER VIEW")?;
                Plan::NoRows
            }
            Statement::AlterTable(at) => {
                self.check_renamable(&at.name)?;
                Plan::NoRows
            }
            Statement::RenameTable(renames) => {
                for r in renames {
                    self.check_renamable(&r.old_name)?;
                }
                Plan::NoRows
            }
            Statement::AlterSchema(a) => {
                // The catalog cannot list a schema's relations: any schema change could move
                // a masked column out from under its glob.
                return Err(Denied::lineage(format!(
                    "ALTER SCHEMA {} could change which columns the masking rules cover",
                    a.name
                )));
            }
            // Everything else returns no rows and moves no values between relations.
            _ => Plan::NoRows,
        })
    }

    /// ALTER/RENAME of a relation with covered columns could move them out from under the
    /// masking rules (renamed columns or tables, changed types, generated copies).
    fn check_renamable(&mut self, name: &ObjectName) -> R<()> {
        let item = self.relation_item(name, None, false)?;
        if let Some(r) = item.shape.whole().rules.first() {
            return Err(Denied {
                rule: RuleId::new(self.rule_id(r)),
                message: format!(
                    "altering {name} could move columns masked by {} out of the rule's reach",
                    self.rule_id(r)
                ),
            });
        }
        Ok(())
    }

    fn store_denial(&self, r: RuleIndex, what: &str) -> Denied {
        let id = self.rule_id(r);
        Denied {
            rule: RuleId::new(id),
            message: format!(
                "{what} would store values masked by {id} where they can be read back unmasked"
            ),
        }
    }

    /// A value deriving from `src` is stored where `dest` masks it (`None`: unmasked).
    fn check_store(&self, src: &Taint, dest: Option<RuleIndex>, what: &str) -> R<()> {
        if let Some(r) = src.rules.first_except(dest) {
            return Err(self.store_denial(r, what));
        }
        if let (Some(why), true) = (&src.unknown, self.sensitive) {
            return Err(Denied::lineage(format!(
                "{what} reads masked data and the origin of what it stores could not be traced: {why}"
            )));
        }
        Ok(())
    }

    /// The item for a DML target (`UPDATE t`, `DELETE FROM t`, `INSERT INTO t`).
    fn target_item(&mut self, tf: &TableFactor) -> R<(Item, Option<&'c Relation>)> {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let rel = name_parts(name).and_then(|p| match self.lookup(&p, false) {
                    Lookup::Relation(r) => Some(r),
                    _ => None,
                });
                Ok((self.relation_item(name, alias.as_ref(), false)?, rel))
            }
            _ => Err(Denied::lineage(
                "a write to something other than a table cannot be traced".into(),
            )),
        }
    }

    /// The rule covering column `col` of a write target (its own rule or, for a view, what
    /// the view column derives from).
    fn dest_rule(&mut self, rel: Option<&'c Relation>, col: &str) -> Option<RuleIndex> {
        let rel = rel?;
        let cols = self.relation_columns(rel);
        cols.iter()
            .find(|c| &*c.name == col)
            .and_then(|c| c.taint.rules.first())
    }

    fn insert(&mut self, ins: &Insert, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let TableObject::TableName(table) = &ins.table else {
            return Err(Denied::lineage(
                "INSERT into something other than a table cannot be traced".into(),
            ));
        };
        let source = match &ins.source {
            Some(q) => self.query(q, outer)?,
            None => Shape::Known(Vec::new()),
        };
        let needs_target = !source.whole().is_clean()
            || ins.returning.is_some()
            || ins.on.is_some()
            || ins.output.is_some();
        if !needs_target {
            return Ok(None);
        }
        let rel = name_parts(table).and_then(|p| match self.lookup(&p, false) {
            Lookup::Relation(r) => Some(r),
            _ => None,
        });
        let alias = ins.table_alias.as_ref().map(|a| TableAlias {
            explicit: true,
            name: a.alias.clone(),
            columns: Vec::new(),
            at: None,
        });
        let target = self.relation_item(table, alias.as_ref(), false)?;
        let Shape::Known(target_cols) = &target.shape else {
            // A system relation: never masked, and nothing masked can be stored there unseen.
            self.check_store(&source.whole(), None, "INSERT")?;
            return Ok(None);
        };
        let dest_names: Vec<Rc<str>> = if ins.columns.is_empty() {
            target_cols.iter().map(|c| c.name.clone()).collect()
        } else {
            ins.columns
                .iter()
                .map(|c| last_name(c).unwrap_or_else(|| Rc::from("")))
                .collect()
        };
        // What each target column receives, for the check and for `excluded.*`.
        let mut received: Vec<Col> = target_cols
            .iter()
            .map(|c| Col {
                name: c.name.clone(),
                taint: Taint::default(),
            })
            .collect();
        let what = format!("INSERT INTO {table}");
        match &source {
            Shape::Known(cols) => {
                for (i, src) in cols.iter().enumerate() {
                    let dest = dest_names.get(i).cloned().unwrap_or_else(|| Rc::from(""));
                    let rule = self.dest_rule(rel, &dest);
                    self.check_store(&src.taint, rule, &format!("{what} ({dest})"))?;
                    if let Some(r) = received.iter_mut().find(|r| r.name == dest) {
                        r.taint.union(&src.taint);
                    }
                }
            }
            Shape::Opaque(t) => {
                self.check_store(t, None, &what)?;
                for r in &mut received {
                    r.taint.union(t);
                }
            }
        }
        let excluded = Item {
            name: "excluded".into(),
            schema: None,
            shape: Shape::Known(received),
        };
        let scope = Scope {
            items: vec![target, excluded],
            parent: outer,
        };
        if let Some(ast::OnInsert::OnConflict(oc)) = &ins.on {
            if let ast::OnConflictAction::DoUpdate(du) = &oc.action {
                self.assignments(
                    &du.assignments,
                    &scope,
                    rel,
                    "INSERT ... ON CONFLICT DO UPDATE",
                )?;
            }
        }
        if let Some(ast::OnInsert::DuplicateKeyUpdate(a)) = &ins.on {
            self.assignments(a, &scope, rel, "INSERT ... ON DUPLICATE KEY UPDATE")?;
        }
        let returning = ins.returning.as_deref().or(match &ins.output {
            Some(ast::OutputClause::Returning { select_items, .. }) => Some(select_items),
            Some(ast::OutputClause::Output { select_items, .. }) => Some(select_items),
            None => None,
        });
        match returning {
            Some(items) => {
                // RETURNING sees the target only.
                let scope = Scope {
                    items: scope.items.into_iter().take(1).collect(),
                    parent: outer,
                };
                Ok(Some(self.projection(items, &scope)?))
            }
            None => Ok(None),
        }
    }

    /// `SET col = value, (a, b) = (...)` against a target relation.
    fn assignments(
        &mut self,
        assignments: &[ast::Assignment],
        scope: &Scope<'_>,
        rel: Option<&'c Relation>,
        what: &str,
    ) -> R<()> {
        for a in assignments {
            let targets: Vec<&ObjectName> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![n],
                AssignmentTarget::Tuple(ns) => ns.iter().collect(),
            };
            let values: Vec<Taint> = match (&a.value, targets.len()) {
                (Expr::Tuple(es), n) if es.len() == n => {
                    let mut v = Vec::with_capacity(n);
                    for e in es {
                        v.push(self.expr(e, scope)?);
                    }
                    v
                }
                (e, n) => vec![self.expr(e, scope)?; n],
            };
            for (t, v) in targets.iter().zip(&values) {
                // `SET col[1] = ..`, `SET col.field = ..`: the first part names the column.
                let col = match t.0.first() {
                    Some(ObjectNamePart::Identifier(i)) => fold(i),
                    _ => Rc::from(""),
                };
                let rule = self.dest_rule(rel, &col);
                self.check_store(v, rule, &format!("{what} (SET {col})"))?;
            }
        }
        Ok(())
    }

    fn update(&mut self, up: &ast::Update, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let (target, rel) = self.target_item(&up.table.relation)?;
        let mut items = vec![target];
        for j in &up.table.joins {
            self.join_factor(j, &mut items, outer)?;
        }
        if let Some(from) = &up.from {
            let (ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) =
                from;
            self.add_from(f, &mut items, outer)?;
        }
        let scope = Scope {
            items,
            parent: outer,
        };
        self.assignments(&up.assignments, &scope, rel, "UPDATE")?;
        let returning = up.returning.as_deref().or(match &up.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Some(select_items),
            None => None,
        });
        returning
            .map(|items| self.projection(items, &scope))
            .transpose()
    }

    fn delete(&mut self, del: &ast::Delete, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let returning = del.returning.as_deref().or(match &del.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Some(select_items),
            None => None,
        });
        let Some(returning) = returning else {
            return Ok(None);
        };
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &del.from;
        let mut items = Vec::new();
        self.add_from(from, &mut items, outer)?;
        if let Some(using) = &del.using {
            self.add_from(using, &mut items, outer)?;
        }
        let scope = Scope {
            items,
            parent: outer,
        };
        Ok(Some(self.projection(returning, &scope)?))
    }

    fn merge(&mut self, m: &ast::Merge, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let (target, rel) = self.target_item(&m.table)?;
        let mut items = vec![target];
        self.factor(&m.source, &mut items, outer)?;
        let scope = Scope {
            items,
            parent: outer,
        };
        for clause in &m.clauses {
            match &clause.action {
                ast::MergeAction::Update(u) => match &u.kind {
                    ast::MergeUpdateKind::Set(a) => {
                        self.assignments(a, &scope, rel, "MERGE ... UPDATE")?
                    }
                    #[allow(unreachable_patterns)]
                    _ => {
                        let t = scope
                            .items
                            .get(1)
                            .map(|i| i.shape.whole())
                            .unwrap_or_default();
                        self.check_store(&t, None, "MERGE ... UPDATE SET *")?;
                    }
                },
                ast::MergeAction::Insert(ins) => {
                    let names: Vec<Rc<str>> = if ins.columns.is_empty() {
                        rel.map(|r| r.columns.iter().map(|c| Rc::from(&*c.name)).collect())
                            .unwrap_or_default()
                    } else {
                        ins.columns
                            .iter()
                            .map(|c| last_name(c).unwrap_or_else(|| Rc::from("")))
                            .collect()
                    };
                    match &ins.kind {
                        ast::MergeInsertKind::Values(v) => {
                            for row in &v.rows {
                                for (i, e) in row.content.iter().enumerate() {
                                    let t = self.expr(e, &scope)?;
                                    let dest =
                                        names.get(i).cloned().unwrap_or_else(|| Rc::from(""));
                                    let rule = self.dest_rule(rel, &dest);
                                    self.check_store(
                                        &t,
                                        rule,
                                        &format!("MERGE ... INSERT ({dest})"),
                                    )?;
                                }
                            }
                        }
                        #[allow(unreachable_patterns)]
                        _ => {
                            let t = scope
                                .items
                                .get(1)
                                .map(|i| i.shape.whole())
                                .unwrap_or_default();
                            self.check_store(&t, None, "MERGE ... INSERT ROW")?;
                        }
                    }
                }
                ast::MergeAction::Delete { .. } | ast::MergeAction::DoNothing { .. } => {}
            }
        }
        match &m.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Ok(Some(self.projection(select_items, &scope)?)),
            None => Ok(None),
        }
    }

    // ---- queries ------------------------------------------------------------------------

    fn query(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Shape> {
        if self.depth >= MAX_QUERY_DEPTH {
            self.sensitive = true;
            return Ok(Shape::Opaque(Taint::unknown(
                "queries are nested too deeply to trace",
            )));
        }
        self.depth += 1;
        let frames = self.ctes.len();
        let r = self.query_inner(q, outer);
        self.ctes.truncate(frames);
        self.depth -= 1;
        r
    }

    fn query_inner(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Shape> {
        if let Some(with) = &q.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                let shape = if with.recursive {
                    self.recursive_cte(&name, cte, outer)?
                } else {
                    self.query(&cte.query, outer)?
                };
                let shape = shape.renamed(Some(&cte.alias));
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push((name, shape));
                }
            }
        }
        self.set_expr(&q.body, outer)
    }

    /// A recursive CTE: start from its non-recursive branch, then re-trace the whole body
    /// with the CTE bound to what is known so far, until nothing changes.
    fn recursive_cte(
        &mut self,
        name: &Rc<str>,
        cte: &ast::Cte,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let seed = match &*cte.query.body {
            SetExpr::SetOperation { left, .. } => self.set_expr(left, outer)?,
            _ => return self.query(&cte.query, outer),
        };
        let mut current = seed.renamed(Some(&cte.alias));
        for _ in 0..MAX_FIXPOINT_PASSES {
            if let Some(frame) = self.ctes.last_mut() {
                frame.push((name.clone(), current.clone()));
            }
            let next = self.query(&cte.query, outer);
            if let Some(frame) = self.ctes.last_mut() {
                frame.pop();
            }
            let next = merge_positional(&current, &next?.renamed(Some(&cte.alias)));
            if same_taints(&next, &current) {
                return Ok(next);
            }
            current = next;
        }
        self.sensitive = true;
        Ok(Shape::Opaque(Taint::unknown(format!(
            "recursive query \"{name}\" did not settle"
        ))))
    }

    fn set_expr(&mut self, body: &SetExpr, outer: Option<&Scope<'_>>) -> R<Shape> {
        match body {
            SetExpr::Select(s) => self.select(s, outer),
            SetExpr::Query(q) => self.query(q, outer),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left, outer)?;
                let r = self.set_expr(right, outer)?;
                Ok(merge_positional(&l, &r))
            }
            SetExpr::Values(v) => {
                let scope = Scope {
                    items: Vec::new(),
                    parent: outer,
                };
                let mut cols: Vec<Col> = Vec::new();
                for row in &v.rows {
                    if !cols.is_empty() && row.content.len() != cols.len() {
                        let mut t = Shape::Known(cols).whole();
                        t.union(&Taint::unknown("VALUES rows of different lengths"));
                        return Ok(Shape::Opaque(t));
                    }
                    for (i, e) in row.content.iter().enumerate() {
                        let t = self.expr(e, &scope)?;
                        match cols.get_mut(i) {
                            Some(c) => c.taint.union(&t),
                            None => cols.push(Col {
                                name: format!("column{}", i + 1).into(),
                                taint: t,
                            }),
                        }
                    }
                }
                Ok(Shape::Known(cols))
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                // A data-modifying CTE: its writes are checked, RETURNING is its result.
                match self.statement(s, outer)? {
                    Plan::Rows(shape) => Ok(shape),
                    _ => Ok(Shape::Known(Vec::new())),
                }
            }
            SetExpr::Table(t) => {
                let Some(name) = &t.table_name else {
                    return Err(Denied::lineage("TABLE without a name".into()));
                };
                let mut parts: Vec<Rc<str>> = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(s.to_ascii_lowercase().into());
                }
                parts.push(name.to_ascii_lowercase().into());
                let obj = ObjectName::from(
                    parts
                        .iter()
                        .map(|p| Ident::with_quote('"', &**p))
                        .collect::<Vec<_>>(),
                );
                Ok(self.relation_item(&obj, None, true)?.shape)
            }
        }
    }

    fn select(&mut self, s: &Select, outer: Option<&Scope<'_>>) -> R<Shape> {
        let mut items = Vec::new();
        let star = self.add_from(&s.from, &mut items, outer)?;
        let scope = Scope {
            items,
            parent: outer,
        };
        self.projection_with_star(&s.projection, &scope, star)
    }

    /// A select list over `scope` (RETURNING lists too: `*` is every item's columns).
    fn projection(&mut self, list: &[SelectItem], scope: &Scope<'_>) -> R<Shape> {
        let mut star = Shape::Known(Vec::new());
        for item in &scope.items {
            star = concat(star, item.shape.clone());
        }
        self.projection_with_star(list, scope, star)
    }

    fn projection_with_star(
        &mut self,
        list: &[SelectItem],
        scope: &Scope<'_>,
        star: Shape,
    ) -> R<Shape> {
        let mut out = Shape::Known(Vec::with_capacity(list.len()));
        for item in list {
            let part = match item {
                SelectItem::UnnamedExpr(e) => Shape::Known(vec![Col {
                    name: expr_name(e),
                    taint: self.expr(e, scope)?,
                }]),
                SelectItem::ExprWithAlias { expr, alias } => Shape::Known(vec![Col {
                    name: fold(alias),
                    taint: self.expr(expr, scope)?,
                }]),
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let t = self.expr(expr, scope)?;
                    Shape::Known(
                        aliases
                            .iter()
                            .map(|a| Col {
                                name: fold(a),
                                taint: t.clone(),
                            })
                            .collect(),
                    )
                }
                SelectItem::Wildcard(opts) => {
                    if has_options(opts) {
                        let mut t = star.whole();
                        t.union(&Taint::unknown("`*` with options"));
                        Shape::Opaque(t)
                    } else if scope.items.is_empty() {
                        Shape::Opaque(Taint::unknown("`*` without a FROM clause"))
                    } else {
                        star.clone()
                    }
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    let shape = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            match find_item(scope, n) {
                                Some(item) => item.shape.clone(),
                                None => Shape::Opaque(Taint::unknown(format!(
                                    "{n}.* names no FROM item"
                                ))),
                            }
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let mut t = self.expr(e, scope)?;
                            t.union(&Taint::unknown("(expression).* has no known columns"));
                            Shape::Opaque(t)
                        }
                    };
                    if has_options(opts) {
                        let mut t = shape.whole();
                        t.union(&Taint::unknown("`.*` with options"));
                        Shape::Opaque(t)
                    } else {
                        shape
                    }
                }
            };
            out = concat(out, part);
        }
        Ok(out)
    }

    // ---- FROM ---------------------------------------------------------------------------

    /// Adds the FROM items of `from` to `items`; returns what `*` expands to.
    fn add_from(
        &mut self,
        from: &[TableWithJoins],
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let mut star = Shape::Known(Vec::new());
        for twj in from {
            let s = self.table_with_joins(twj, items, outer)?;
            star = concat(star, s);
        }
        Ok(star)
    }

    fn table_with_joins(
        &mut self,
        twj: &TableWithJoins,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let mut star = self.factor(&twj.relation, items, outer)?;
        for j in &twj.joins {
            let right = self.factor(&j.relation, items, outer)?;
            star = join_star(star, right, join_constraint(&j.join_operator));
        }
        Ok(star)
    }

    fn join_factor(
        &mut self,
        j: &ast::Join,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        self.factor(&j.relation, items, outer)
    }

    /// Adds one FROM item (or the items of a parenthesised join) to `items`; returns its `*`.
    /// Items already in `items` are visible to it (LATERAL, and function arguments).
    fn factor(
        &mut self,
        tf: &TableFactor,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let item = match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.relation_item(name, alias.as_ref(), true)?,
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                with_ordinality,
                ..
            } => self.with_lateral(items, outer, |cx, scope| {
                cx.function_item(name, &args.args, *with_ordinality, alias.as_ref(), scope)
            })?,
            TableFactor::Function {
                name,
                args,
                with_ordinality,
                alias,
                ..
            } => self.with_lateral(items, outer, |cx, scope| {
                cx.function_item(name, args, *with_ordinality, alias.as_ref(), scope)
            })?,
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let shape =
                    self.with_lateral(items, outer, |cx, scope| cx.query(subquery, Some(scope)))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: shape.renamed(alias.as_ref()),
                }
            }
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_ordinality,
                with_offset,
                ..
            } => {
                let mut cols = Vec::with_capacity(array_exprs.len() + 1);
                for e in array_exprs {
                    let t = self.with_lateral(items, outer, |cx, scope| cx.expr(e, scope))?;
                    cols.push(Col {
                        name: "unnest".into(),
                        taint: t,
                    });
                }
                if *with_ordinality || *with_offset {
                    cols.push(Col {
                        name: "ordinality".into(),
                        taint: Taint::default(),
                    });
                }
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| "unnest".into(), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Known(cols).renamed(alias.as_ref()),
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let Some(alias) = alias else {
                    return self.table_with_joins(table_with_joins, items, outer);
                };
                // `(a JOIN b) AS j`: only `j` is visible outside.
                let mut inner = Vec::new();
                let star = self.with_lateral(items, outer, |cx, scope| {
                    cx.table_with_joins(table_with_joins, &mut inner, Some(scope))
                })?;
                Item {
                    name: fold(&alias.name),
                    schema: None,
                    shape: star.renamed(Some(alias)),
                }
            }
            TableFactor::TableFunction { expr, alias } => {
                let t = self.with_lateral(items, outer, |cx, scope| cx.expr(expr, scope))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Opaque(t),
                }
            }
            TableFactor::JsonTable { alias, .. } | TableFactor::XmlTable { alias, .. } => {
                // Every column derives from the document expression(s).
                let t = self.with_lateral(items, outer, |cx, scope| cx.generic(tf, scope))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Opaque(t),
                }
            }
            _ => {
                // Other dialects' FROM items (PIVOT, MATCH_RECOGNIZE, ...): PostgreSQL has
                // none of them; nothing under them is traced.
                self.sensitive = true;
                Item {
                    name: Rc::from(""),
                    schema: None,
                    shape: Shape::Opaque(Taint::unknown("an unsupported FROM item")),
                }
            }
        };
        let star = item.shape.clone();
        items.push(item);
        Ok(star)
    }

    /// Runs `f` with the items so far visible as the innermost scope.
    fn with_lateral<T>(
        &mut self,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
        f: impl FnOnce(&mut Self, &Scope<'_>) -> R<T>,
    ) -> R<T> {
        let scope = Scope {
            items: std::mem::take(items),
            parent: outer,
        };
        let r = f(self, &scope);
        *items = scope.items;
        r
    }

    /// A function in FROM: every column derives from every argument.
    fn function_item(
        &mut self,
        name: &ObjectName,
        args: &[FunctionArg],
        ordinality: bool,
        alias: Option<&TableAlias>,
        scope: &Scope<'_>,
    ) -> R<Item> {
        let mut taint = Taint::default();
        for a in args {
            let t = self.function_arg(a, scope)?;
            taint.union(&t);
        }
        let parts = name_parts(name).unwrap_or_default();
        let builtin = match parts.as_slice() {
            [n] => Some(n.clone()),
            [s, n] if &**s == "pg_catalog" => Some(n.clone()),
            _ => None,
        };
        let fname = parts.last().cloned().unwrap_or_else(|| Rc::from(""));
        let single = |n: &str| -> Vec<Rc<str>> { vec![n.into()] };
        let names: Option<Vec<Rc<str>>> = match builtin.as_deref() {
            Some("unnest") => Some(vec![fname.clone(); args.len().max(1)]),
            Some("json_each" | "jsonb_each" | "json_each_text" | "jsonb_each_text") => {
                Some(vec!["key".into(), "value".into()])
            }
            Some(
                "generate_series"
                | "generate_subscripts"
                | "regexp_split_to_table"
                | "regexp_matches"
                | "string_to_table"
                | "json_array_elements"
                | "jsonb_array_elements"
                | "json_array_elements_text"
                | "jsonb_array_elements_text"
                | "json_object_keys"
                | "jsonb_object_keys"
                | "jsonb_path_query"
                | "upper"
                | "lower"
                | "substr"
                | "concat"
                | "coalesce"
                | "now"
                | "random",
            ) => Some(single(&fname)),
            _ => alias
                .filter(|a| !a.columns.is_empty())
                .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect()),
        };
        let item_name = alias.map_or_else(|| fname.clone(), |a| fold(&a.name));
        let shape = match names {
            Some(mut names) => {
                // A scalar-valued function's one column takes the alias's name.
                if names.len() == 1 && alias.is_some_and(|a| a.columns.is_empty()) {
                    names[0] = item_name.clone();
                }
                let mut cols: Vec<Col> = names
                    .into_iter()
                    .map(|n| Col {
                        name: n,
                        taint: taint.clone(),
                    })
                    .collect();
                if ordinality {
                    cols.push(Col {
                        name: "ordinality".into(),
                        taint: Taint::default(),
                    });
                }
                Shape::Known(cols).renamed(alias)
            }
            None => Shape::Opaque(taint),
        };
        Ok(Item {
            name: item_name,
            schema: None,
            shape,
        })
    }

    fn function_arg(&mut self, a: &FunctionArg, scope: &Scope<'_>) -> R<Taint> {
        let arg = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        Ok(match arg {
            FunctionArgExpr::Expr(e) => self.expr(e, scope)?,
            FunctionArgExpr::QualifiedWildcard(n) => whole_row(scope, n),
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                every_item(scope)
            }
        })
    }

    // ---- expressions --------------------------------------------------------------------

    /// What an expression's value derives from.
    fn expr(&mut self, e: &Expr, scope: &Scope<'_>) -> R<Taint> {
        let mut w = ExprWalk::new(self, scope);
        match e.visit(&mut w) {
            ControlFlow::Continue(()) => Ok(w.taint),
            ControlFlow::Break(d) => Err(d),
        }
    }

    /// The generic walk over any node: every expression and subquery in it taints the result.
    fn generic<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) -> R<Taint> {
        let mut w = ExprWalk::new(self, scope);
        match node.visit(&mut w) {
            ControlFlow::Continue(()) => Ok(w.taint),
            ControlFlow::Break(d) => Err(d),
        }
    }

    /// A column reference (`x`, `t.x`, `s.t.x`, `db.s.t.x`, or a whole row `t`).
    fn column_ref(&self, idents: &[Ident], scope: &Scope<'_>) -> Taint {
        let parts: Vec<Rc<str>> = idents.iter().map(fold).collect();
        let quoted = idents.first().is_some_and(|i| i.quote_style.is_some());
        match parts.as_slice() {
            [] => Taint::default(),
            [x] => resolve_unqualified(scope, x, quoted),
            [t, c] => match qualified(scope, None, t, c) {
                Some(taint) => taint,
                // `composite_column.field`
                None => resolve_unqualified(scope, t, quoted),
            },
            [.., s, t, c] => match qualified(scope, Some(s), t, c) {
                Some(taint) => taint,
                None => {
                    // `table.composite_column.field` or deeper field access.
                    let [a, b, ..] = parts.as_slice() else {
                        return Taint::unknown("an unresolvable column reference");
                    };
                    qualified(scope, None, a, b)
                        .unwrap_or_else(|| resolve_unqualified(scope, a, quoted))
                }
            },
        }
    }
}

/// `count(...)` returns how many, never a value.
fn is_count(f: &ast::Function) -> bool {
    match name_parts(&f.name).as_deref() {
        Some([n]) => &**n == "count",
        Some([s, n]) => &**s == "pg_catalog" && &**n == "count",
        _ => false,
    }
}

/// The expression walk: sqlparser's visitor finds every column reference and subquery at
/// this query level; subqueries are traced on their own (with this level as their outer
/// scope), and their nodes are not looked at again by this walk.
struct ExprWalk<'a, 'c, 's> {
    cx: &'a mut Ctx<'c>,
    scope: &'a Scope<'s>,
    /// Queries entered below the root (their expressions belong to them).
    depth: usize,
    /// Expressions whose subtree carries no value into the result (window specs, FILTER,
    /// the field names of `(row).field`).
    skip: Vec<*const Expr>,
    /// The skipped expression being walked, if any.
    skipping: Option<*const Expr>,
    taint: Taint,
}

impl<'a, 'c, 's> ExprWalk<'a, 'c, 's> {
    fn new(cx: &'a mut Ctx<'c>, scope: &'a Scope<'s>) -> Self {
        Self {
            cx,
            scope,
            depth: 0,
            skip: Vec::new(),
            skipping: None,
            taint: Taint::default(),
        }
    }

    fn active(&self) -> bool {
        self.depth == 0 && self.skipping.is_none()
    }
}

impl Visitor for ExprWalk<'_, '_, '_> {
    type Break = Denied;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Denied> {
        if self.active() {
            match self.cx.query(q, Some(self.scope)) {
                Ok(shape) => self.taint.union(&shape.whole()),
                Err(d) => return ControlFlow::Break(d),
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<Denied> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Denied> {
        if !self.active() {
            return ControlFlow::Continue(());
        }
        let ptr: *const Expr = e;
        if self.skip.iter().any(|s| std::ptr::eq(*s, ptr)) {
            self.skipping = Some(ptr);
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Identifier(i) => {
                let t = self.cx.column_ref(std::slice::from_ref(i), self.scope);
                self.taint.union(&t);
            }
            Expr::CompoundIdentifier(ids) => {
                let t = self.cx.column_ref(ids, self.scope);
                self.taint.union(&t);
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                // `(c).name`: the root carries the value; `.name` is a field, not a column.
                for a in access_chain {
                    if let ast::AccessExpr::Dot(d) = a {
                        self.skip.push(d);
                    }
                }
            }
            Expr::Wildcard(_) => self.taint.union(&every_item(self.scope)),
            Expr::QualifiedWildcard(n, _) => self.taint.union(&whole_row(self.scope, n)),
            Expr::Function(f) => {
                if is_count(f) {
                    self.skipping = Some(ptr);
                    return ControlFlow::Continue(());
                }
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        // `f(name => value)`: the name is a parameter, not a column.
                        if let FunctionArg::ExprNamed { name, .. } = a {
                            self.skip.push(name);
                        }
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        match arg {
                            FunctionArgExpr::QualifiedWildcard(n) => {
                                self.taint.union(&whole_row(self.scope, n))
                            }
                            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                                self.taint.union(&every_item(self.scope))
                            }
                            FunctionArgExpr::Expr(_) => {}
                        }
                    }
                }
                if let Some(filter) = &f.filter {
                    self.skip.push(&**filter);
                }
                if let Some(ast::WindowType::WindowSpec(spec)) = &f.over {
                    for p in &spec.partition_by {
                        self.skip.push(p);
                    }
                    for o in &spec.order_by {
                        self.skip.push(&o.expr);
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<Denied> {
        let ptr: *const Expr = e;
        if self.depth == 0 && self.skipping.is_some_and(|s| std::ptr::eq(s, ptr)) {
            self.skipping = None;
        }
        ControlFlow::Continue(())
    }
}

/// An unqualified name: a column of some FROM item (all of them if several have it), else a
/// whole row (`SELECT c FROM customers c`), at the innermost level that has it.
fn resolve_unqualified(scope: &Scope<'_>, x: &str, quoted: bool) -> Taint {
    let mut maybe = Taint::default();
    let mut level = Some(scope);
    while let Some(s) = level {
        let mut found = false;
        let mut t = Taint::default();
        for item in &s.items {
            match &item.shape {
                Shape::Known(cols) => {
                    for c in cols.iter().filter(|c| &*c.name == x) {
                        t.union(&c.taint);
                        found = true;
                    }
                }
                // It may come from here: count it, and keep looking outward.
                Shape::Opaque(w) => maybe.union(w),
            }
        }
        if !found {
            for item in s.items.iter().filter(|i| &*i.name == x) {
                t.union(&item.shape.whole());
                found = true;
            }
        }
        if found {
            t.union(&maybe);
            return t;
        }
        level = s.parent;
    }
    if maybe == Taint::default() && !any_opaque(scope) {
        if !quoted && SQL_VALUE_KEYWORDS.contains(&x) {
            return Taint::default();
        }
        return Taint::unknown(format!("column \"{x}\" could not be resolved"));
    }
    maybe
}

/// Keywords that read as bare identifiers but are values (`SELECT current_schema`); they
/// stand for themselves only when no column of that name is in scope, as in PostgreSQL.
const SQL_VALUE_KEYWORDS: &[&str] = &[
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "localtime",
    "localtimestamp",
    "session_user",
    "system_user",
    "user",
];

fn any_opaque(scope: &Scope<'_>) -> bool {
    let mut level = Some(scope);
    while let Some(s) = level {
        if s.items.iter().any(|i| matches!(i.shape, Shape::Opaque(_))) {
            return true;
        }
        level = s.parent;
    }
    false
}

/// `t.c` or `s.t.c`: `None` when no FROM item is called `t` (then it may be a field access).
fn qualified(scope: &Scope<'_>, schema: Option<&Rc<str>>, t: &str, c: &str) -> Option<Taint> {
    let mut level = Some(scope);
    while let Some(s) = level {
        let mut hit = None::<Taint>;
        for item in s
            .items
            .iter()
            .filter(|i| &*i.name == t && schema.is_none_or(|sch| i.schema.as_ref() == Some(sch)))
        {
            let taint = match &item.shape {
                Shape::Known(cols) => {
                    let mut found = cols.iter().filter(|col| &*col.name == c).peekable();
                    if found.peek().is_none() {
                        Taint::unknown(format!("column \"{t}.{c}\" could not be resolved"))
                    } else {
                        let mut acc = Taint::default();
                        for col in found {
                            acc.union(&col.taint);
                        }
                        acc
                    }
                }
                Shape::Opaque(w) => w.clone(),
            };
            hit.get_or_insert_with(Taint::default).union(&taint);
        }
        if hit.is_some() {
            return hit;
        }
        level = s.parent;
    }
    None
}

/// The FROM item a qualified star or whole-row reference names.
fn find_item<'s>(scope: &'s Scope<'s>, name: &ObjectName) -> Option<&'s Item> {
    let parts = name_parts(name)?;
    let (schema, t) = match parts.as_slice() {
        [t] => (None, t),
        [.., s, t] => (Some(s), t),
        [] => return None,
    };
    let mut level = Some(scope);
    while let Some(s) = level {
        if let Some(i) = s
            .items
            .iter()
            .find(|i| &i.name == t && schema.is_none_or(|sch| i.schema.as_ref() == Some(sch)))
        {
            return Some(i);
        }
        level = s.parent;
    }
    None
}

fn whole_row(scope: &Scope<'_>, name: &ObjectName) -> Taint {
    match find_item(scope, name) {
        Some(i) => i.shape.whole(),
        None => Taint::unknown(format!("{name}.* names no FROM item")),
    }
}

/// `f(*)` other than `count(*)`: everything at the innermost level.
fn every_item(scope: &Scope<'_>) -> Taint {
    let mut t = Taint::default();
    for i in &scope.items {
        t.union(&i.shape.whole());
    }
    t
}

fn has_options(o: &ast::WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_some()
        || o.opt_exclude.is_some()
        || o.opt_except.is_some()
        || o.opt_replace.is_some()
        || o.opt_rename.is_some()
}

/// The column name PostgreSQL gives an unaliased select-list expression (close enough for
/// messages: the mask is positional).
fn expr_name(e: &Expr) -> Rc<str> {
    match e {
        Expr::Identifier(i) => fold(i),
        Expr::CompoundIdentifier(ids) => ids.last().map_or_else(|| "?column?".into(), fold),
        Expr::Function(f) => last_name(&f.name).unwrap_or_else(|| "?column?".into()),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        _ => "?column?".into(),
    }
}

/// Columns side by side (`SELECT a, b`, `FROM x, y`).
fn concat(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Shape::Known(mut x), Shape::Known(y)) => {
            x.extend(y);
            Shape::Known(x)
        }
        (a, b) => {
            let mut t = a.whole();
            t.union(&b.whole());
            Shape::Opaque(t)
        }
    }
}

/// Column i of a UNION/INTERSECT/EXCEPT derives from column i of both sides.
fn merge_positional(a: &Shape, b: &Shape) -> Shape {
    match (a, b) {
        (Shape::Known(x), Shape::Known(y)) if x.len() == y.len() => Shape::Known(
            x.iter()
                .zip(y)
                .map(|(l, r)| {
                    let mut taint = l.taint.clone();
                    taint.union(&r.taint);
                    Col {
                        name: l.name.clone(),
                        taint,
                    }
                })
                .collect(),
        ),
        (a, b) => {
            let mut t = a.whole();
            t.union(&b.whole());
            if matches!((a, b), (Shape::Known(_), Shape::Known(_))) {
                t.union(&Taint::unknown(
                    "set operation branches of different widths",
                ));
            }
            Shape::Opaque(t)
        }
    }
}

fn same_taints(a: &Shape, b: &Shape) -> bool {
    match (a, b) {
        (Shape::Known(x), Shape::Known(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(l, r)| l.taint == r.taint)
        }
        (Shape::Opaque(x), Shape::Opaque(y)) => x == y,
        _ => false,
    }
}

enum Merge {
    None,
    Using(Vec<Rc<str>>),
    Natural,
}

fn join_constraint(op: &JoinOperator) -> Merge {
    let c = match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => c,
        _ => return Merge::None,
    };
    match c {
        JoinConstraint::Using(names) => Merge::Using(names.iter().filter_map(last_name).collect()),
        JoinConstraint::Natural => Merge::Natural,
        JoinConstraint::On(_) | JoinConstraint::None => Merge::None,
    }
}

/// What `*` over a join is: merged (USING/NATURAL) columns first, deriving from both sides,
/// then the rest of the left side, then the rest of the right.
fn join_star(left: Shape, right: Shape, merge: Merge) -> Shape {
    let names = match (&merge, &left, &right) {
        (Merge::None, _, _) => return concat(left, right),
        (Merge::Using(n), _, _) => n.clone(),
        (Merge::Natural, Shape::Known(l), Shape::Known(r)) => l
            .iter()
            .filter(|c| r.iter().any(|d| d.name == c.name))
            .map(|c| c.name.clone())
            .collect(),
        (Merge::Natural, _, _) => return concat(left, right),
    };
    let (Shape::Known(mut l), Shape::Known(mut r)) = (left.clone(), right.clone()) else {
        return concat(left, right);
    };
    let mut merged = Vec::with_capacity(names.len());
    for n in &names {
        let lp = l.iter().position(|c| &c.name == n);
        let rp = r.iter().position(|c| &c.name == n);
        let (Some(lp), Some(rp)) = (lp, rp) else {
            let mut t = concat(left, right).whole();
            t.union(&Taint::unknown(format!(
                "USING column \"{n}\" is not on both sides"
            )));
            return Shape::Opaque(t);
        };
        let mut c = l.remove(lp);
        c.taint.union(&r.remove(rp).taint);
        merged.push(c);
    }
    merged.extend(l);
    merged.extend(r);
    Shape::Known(merged)
}

/// `COPY t (a, b) TO ...`: the listed columns, in the listed order.
fn copy_columns(shape: Shape, columns: &[Ident]) -> Shape {
    if columns.is_empty() {
        return shape;
    }
    let Shape::Known(cols) = shape else {
        return shape;
    };
    Shape::Known(
        columns
            .iter()
            .map(|i| {
                let n = fold(i);
                let taint = cols.iter().find(|c| c.name == n).map_or_else(
                    || Taint::unknown(format!("column \"{n}\" could not be resolved")),
                    |c| c.taint.clone(),
                );
                Col { name: n, taint }
            })
            .collect(),
    )
}

/// An option argument that is explicitly false (`false`, `off`, `0`, ...).
fn explicit_false(arg: Option<&Expr>) -> bool {
    let text = match arg {
        None => return false,
        Some(Expr::Value(v)) => match &v.value {
            ast::Value::Boolean(b) => return !b,
            ast::Value::Number(n, _) => n.clone(),
            ast::Value::SingleQuotedString(s) => s.clone(),
            _ => return false,
        },
        Some(Expr::Identifier(i)) => i.value.clone(),
        Some(_) => return false,
    };
    matches!(
        text.to_ascii_lowercase().as_str(),
        "false" | "off" | "0" | "no"
    )
}
