//! Where result columns come from, and which masking rule covers each: pure functions over a
//! statement's syntax tree and a [`Catalog`] snapshot of the backend database.
//!
//! INTERFACE CONTRACT (fixed; the data plane codes against it):
//! - [`Catalog`] is implemented by the data plane (`sluice_dataplane::catalog`) over
//!   `pg_class`/`pg_attribute`/`pg_namespace`/`pg_type` and `pg_get_viewdef`.
//! - [`mask_plan`] is called once per statement text (its result is cached with the verdict);
//!   [`origin_rule`] once per RowDescription field that carries a table OID.

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
