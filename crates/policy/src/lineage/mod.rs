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
//! - Inference is out of scope unless a rule says `predicates: deny` (see `predicates.rs`): a
//!   masked column used only in WHERE, JOIN ... ON, GROUP BY, HAVING, ORDER BY, DISTINCT ON,
//!   LIMIT, a window's PARTITION BY/ORDER BY or an aggregate's FILTER leaves the output clean,
//!   although the rows chosen can reveal something about it. Relations read only there are
//!   not looked up either (they are when some rule denies predicates).
//! - User-defined functions ([`Catalog::functions`]) are traced where their body can be:
//!   a `LANGUAGE sql` body's last SELECT is traced like a view (its parameters carry the
//!   arguments' lineage), and a function returning a relation's row type (`RETURNS t`,
//!   `SETOF t`) returns that relation's columns with their rules. Any other function
//!   (`plpgsql`, `c`, a `BEGIN ATOMIC` body, ...) is of unknown lineage, so its result in a
//!   statement of a masking role is denied, unless the policy's `functions.trusted` lists it
//!   (then its result derives from its arguments only, as a built-in's does). Overloads are
//!   not told apart: every function of that name counts. Built-in functions are assumed
//!   when the name has no user-defined function; `count` is assumed to be
//!   `pg_catalog.count` when unqualified.
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

/// One user-defined function (`pg_proc`, OID from 16384 up, outside `pg_catalog` and
/// `information_schema`). Built-in functions are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// `pg_proc.oid`.
    pub oid: u32,
    /// Schema name, as stored.
    pub schema: Box<str>,
    /// Function name, as stored.
    pub name: Box<str>,
    /// Argument type OIDs (`proargtypes`).
    pub arg_types: Vec<u32>,
    /// `pg_language.lanname` (`sql`, `plpgsql`, `c`, ...).
    pub language: Box<str>,
    /// `prosrc`: the body of a `sql` or `plpgsql` function (empty for `BEGIN ATOMIC` bodies).
    pub source: Box<str>,
    /// `prorettype`.
    pub return_type: u32,
    /// `proretset`: `RETURNS SETOF`.
    pub returns_set: bool,
    /// The relation whose row type the function returns (`RETURNS t`, `SETOF t`).
    pub return_relation: Option<u32>,
}

/// A read-only snapshot of one backend database's relations.
pub trait Catalog {
    /// The relation `schema.name` (exact, case-sensitive names as stored).
    fn relation(&self, schema: &str, name: &str) -> Option<&Relation>;
    /// The relation with this OID.
    fn by_oid(&self, oid: u32) -> Option<&Relation>;
    /// The name of the type with this OID (`pg_type.typname`).
    fn type_name(&self, oid: u32) -> Option<&str>;
    /// The user-defined functions named `name` (exact, as stored), in every schema and with
    /// every argument list. A name with none is taken for a built-in function.
    fn functions(&self, name: &str) -> &[Function] {
        let _ = name;
        &[]
    }
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

mod exposure;
mod expr;
mod functions;
mod predicates;
mod query;
mod scope;
mod statement;
mod taint;

use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, ObjectNamePart,
    Statement,
};
use sqlparser::parser::ParserError;
use sqlparser::tokenizer::Token;

pub use self::exposure::{STORED_VALUES_RULE, STORED_VALUE_FUNCTIONS, STORED_VALUE_RELATIONS};
use self::scope::Ctx;
use crate::analyze::{MAX_SQL_BYTES, RECURSION_LIMIT};
use crate::glob::Case;
use crate::model::{Policy, RuleId};
use crate::sql;

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
    let stmts = match sql::parse(sql, RECURSION_LIMIT) {
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
    if let Some((name, why)) = stmts.iter().find_map(exposure::stored_value_read) {
        return MaskPlan::Deny {
            rule: RuleId::new(STORED_VALUES_RULE),
            message: format!(
                "{name} {why}, which would show masked columns unmasked; it is not available to this role"
            ),
        };
    }
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
    let toks = sql::significant_tokens(sql)?;
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
        Token::Word(w) if ok => Some(sql::fold_word(&w.value, w.quote_style.is_some())),
        _ => None,
    }
}

/// Folds one identifier per PostgreSQL: unquoted → ASCII lower case, quoted → as written.
fn fold(ident: &Ident) -> Rc<str> {
    sql::fold_ident(ident).into()
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
