//! SQL statement analysis: parse with sqlparser (PostgreSQL dialect), classify each statement
//! by an exhaustive match, and collect the facts the verdict needs.

use std::fmt;

use sqlparser::ast::{
    self, CopySource, CopyTarget, FromTable, ObjectName, ObjectType, Query, SetExpr, Statement,
    TableObject, Visit,
};
use sqlparser::keywords::Keyword;
use sqlparser::parser::ParserError;
use sqlparser::tokenizer::Token;

use crate::model::StatementClass;
use crate::sql::{self, fold_ident as fold, is_false};

mod collect;
mod names;
mod session;

use self::collect::Collector;
use self::names::*;
pub use self::session::{session_state, SessionState};

/// Largest statement text analysed; longer text is [`Analysis::Unparsed`] (fail closed).
/// 1 MiB is far above any hand-written or ORM statement and bounds parse time and memory.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// sqlparser's recursion limit, set on purpose rather than inherited: it bounds nesting
/// depth (parenthesised expressions, subqueries) and so the depth of the syntax tree that
/// the collector walks recursively without stack growth. 50 nested levels is far beyond
/// real queries; deeper text is [`Analysis::Unparsed`]. The test `deep_nesting` checks that
/// analysis at this depth fits a 256 KiB thread stack (the data plane's cores have more).
pub const RECURSION_LIMIT: usize = 50;

/// Limits for [`analyze_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted text in bytes.
    pub max_bytes: usize,
    /// Parser recursion limit.
    pub recursion_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_SQL_BYTES,
            recursion_limit: RECURSION_LIMIT,
        }
    }
}

/// The result of analysing one text (a simple Query may hold several statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    /// Every statement parsed; one entry per statement, in order (empty for empty text).
    Statements(Vec<StatementFacts>),
    /// The text as a whole could not be analysed: it is judged as one unparsed statement.
    Unparsed {
        /// Why (parser message, size or depth limit).
        reason: String,
        /// The text is exactly one `DO` block (sqlparser cannot parse DO); judged under
        /// `allow_do_blocks` instead of `allow_unparsed`.
        do_block: bool,
    },
}

/// A (possibly schema-qualified) relation or function name, folded per PostgreSQL rules:
/// unquoted identifiers in lower case, quoted ones as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name {
    /// The schema, if the statement named one.
    pub schema: Option<Box<str>>,
    /// The object name.
    pub name: Box<str>,
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if plain {
                f.write_str(s)
            } else {
                write!(f, "\"{}\"", s.replace('"', "\"\""))
            }
        }
        if let Some(schema) = &self.schema {
            part(f, schema)?;
            f.write_str(".")?;
        }
        part(f, &self.name)
    }
}

/// COPY's direction and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// `COPY ... TO` (true) or `COPY ... FROM` (false).
    pub to: bool,
    /// Where the data goes or comes from.
    pub endpoint: CopyEndpoint,
}

/// The other end of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEndpoint {
    /// STDIN/STDOUT: the data flows through the gateway.
    Client,
    /// A file on the database server.
    ServerFile(String),
    /// A shell command on the database server.
    Program(String),
}

/// What kind of statement this is, where the data plane needs more than a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Anything else; see [`StatementFacts::tag`].
    Other,
    /// `PREPARE name AS ...`: the facts are those of the prepared statement.
    Prepare {
        /// The prepared statement's name (folded).
        name: String,
    },
    /// `EXECUTE name(...)`: judged through the resolver given to [`crate::judge_with`].
    Execute {
        /// The prepared statement's name (folded).
        name: String,
    },
    /// `DEALLOCATE [PREPARE] name | ALL`.
    Deallocate {
        /// The name, `None` for ALL.
        name: Option<String>,
    },
    /// `DECLARE name CURSOR FOR query`: the facts are the query's.
    DeclareCursor {
        /// The cursor's name.
        name: String,
    },
    /// `FETCH ... FROM name` (rows come from a cursor judged at DECLARE).
    Fetch {
        /// The cursor's name.
        name: String,
    },
    /// `CLOSE name | ALL`.
    Close {
        /// The cursor's name, `None` for ALL.
        name: Option<String>,
    },
    /// `LISTEN channel`.
    Listen {
        /// Channel.
        channel: String,
    },
    /// `UNLISTEN channel | *`.
    Unlisten {
        /// Channel (`*` for all).
        channel: String,
    },
    /// `NOTIFY channel[, payload]`.
    Notify {
        /// Channel.
        channel: String,
    },
    /// EXPLAIN (with or without ANALYZE); the facts are the inner statement's.
    Explain {
        /// EXPLAIN ANALYZE executes the statement.
        analyze: bool,
    },
}

/// Everything the verdict needs to know about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    /// A PostgreSQL-style command tag (`SELECT`, `DROP TABLE`, ...), for messages and audit.
    pub tag: &'static str,
    /// Kinds the data plane treats specially.
    pub kind: Kind,
    /// The statement class; `None` for a statement kind the analyser does not handle
    /// (denied unless the policy allows unparsed statements).
    pub class: Option<StatementClass>,
    /// Relations whose rows the statement may read (judged under the `read` class).
    pub reads: Vec<Name>,
    /// Relations the statement modifies or acts on (judged under [`Self::target_class`]).
    pub targets: Vec<Name>,
    /// The class the targets are judged under (`write` for DML and COPY FROM, `ddl` for
    /// DDL, `admin` for maintenance).
    pub target_class: StatementClass,
    /// Schemas created, altered or dropped.
    pub schemas: Vec<Box<str>>,
    /// Functions called anywhere in the statement (deduplicated).
    pub functions: Vec<Name>,
    /// Targets of UPDATE/DELETE without a WHERE (or with a constant-true one), and TRUNCATE.
    pub unfiltered_writes: Vec<Name>,
    /// An UPDATE/DELETE whose WHERE is, or compares, constants alone somewhere (`true`,
    /// `1 = 1`, `'a' = 'b' OR ...`): whether it filters at all turns on the values, so its
    /// verdict holds for this text only, never for others of its shape.
    pub constant_condition: bool,
    /// COPY details.
    pub copy: Option<CopyFacts>,
    /// SET ROLE / SET SESSION AUTHORIZATION / RESET ROLE / RESET ALL / DISCARD ALL, or
    /// SET of the `role` / `session_authorization` parameters.
    pub role_change: bool,
    /// `SET search_path` (unqualified names would then resolve elsewhere).
    pub search_path_change: bool,
    /// A data-modifying statement nested in a WITH (or any non-top-level position).
    pub data_modifying_cte: bool,
    /// EXPLAIN ANALYZE of a statement that writes (it executes it).
    pub explain_analyze_write: bool,
    /// CREATE FUNCTION/PROCEDURE/TRIGGER/EXTENSION/SERVER, ALTER FUNCTION: hidden code.
    pub code_definition: bool,
    /// Every `set_config()` call in the statement names a constant setting, so it is judged
    /// as `SET` is: it needs the `session` class, and `role`, `session_authorization` and
    /// `search_path` set [`Self::role_change`] / [`Self::search_path_change`]. Otherwise
    /// set_config stays a built-in denied function.
    pub sets_config: bool,
    /// A MERGE (also after a WITH). Its actions are writes of its target; a constant join
    /// condition on a clause that updates or deletes counts as a missing WHERE.
    pub merge: bool,
    /// Something in the statement the analyser could not read (an unusual name form, a
    /// nested statement in an unexpected place): the statement is judged as unknown.
    pub opaque: Option<&'static str>,
    /// State the statement leaves on its server connection past its transaction (what
    /// transaction pooling must pin or refuse); empty for nearly every statement.
    pub session_state: Vec<SessionState>,
}

impl StatementFacts {
    fn new(tag: &'static str, class: Option<StatementClass>) -> Self {
        Self {
            tag,
            kind: Kind::Other,
            class,
            reads: Vec::new(),
            targets: Vec::new(),
            target_class: StatementClass::Write,
            schemas: Vec::new(),
            functions: Vec::new(),
            unfiltered_writes: Vec::new(),
            constant_condition: false,
            copy: None,
            role_change: false,
            search_path_change: false,
            data_modifying_cte: false,
            explain_analyze_write: false,
            code_definition: false,
            merge: false,
            sets_config: false,
            opaque: None,
            session_state: Vec::new(),
        }
    }

    /// Whether the statement modifies data (has targets under the `write` class).
    pub fn writes(&self) -> bool {
        !self.targets.is_empty() && self.target_class == StatementClass::Write
    }
}

/// Analyses `sql` with the default [`Limits`].
pub fn analyze(sql: &str) -> Analysis {
    analyze_with(sql, &Limits::default())
}

/// Analyses `sql`: every statement is parsed (PostgreSQL dialect) and classified; if any part
/// does not parse, the whole text is [`Analysis::Unparsed`].
pub fn analyze_with(sql: &str, limits: &Limits) -> Analysis {
    if sql.len() > limits.max_bytes {
        return Analysis::Unparsed {
            reason: format!(
                "statement text of {} bytes exceeds the {}-byte limit",
                sql.len(),
                limits.max_bytes
            ),
            do_block: false,
        };
    }
    match sql::parse(sql, limits.recursion_limit) {
        Ok(stmts) => Analysis::Statements(stmts.iter().map(statement_facts).collect()),
        Err(e) => Analysis::Unparsed {
            reason: match e {
                ParserError::RecursionLimitExceeded => format!(
                    "statement nesting exceeds the analyser's limit of {}",
                    limits.recursion_limit
                ),
                ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            },
            do_block: is_single_do_block(sql),
        },
    }
}

/// Whether `sql` is exactly one `DO [LANGUAGE l] 'body' [LANGUAGE l] [;]`, by tokens (so a
/// comment or string cannot fake it, and `DO $$..$$; DROP TABLE t` is not one).
fn is_single_do_block(sql: &str) -> bool {
    let Some(tokens) = sql::significant_tokens(sql) else {
        return false;
    };
    let is_kw = |t: Option<&Token>, kw: Keyword| matches!(t, Some(Token::Word(w)) if w.keyword == kw && w.quote_style.is_none());
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    if !is_kw(Some(first), Keyword::DO) {
        return false;
    }
    let mut seen_body = false;
    let mut i = 0;
    while i < rest.len() {
        match &rest[i] {
            Token::Word(w) if w.keyword == Keyword::LANGUAGE && w.quote_style.is_none() => {
                if !matches!(rest.get(i + 1), Some(Token::Word(_))) {
                    return false;
                }
                i += 2;
            }
            Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::DollarQuotedString(_)
                if !seen_body =>
            {
                seen_body = true;
                i += 1;
            }
            _ => return false,
        }
    }
    seen_body
}

/// Facts for one parsed statement: the exhaustive match decides the class and the explicit
/// targets; the collector then walks the tree for relations, functions and nested writes.
// One arm per sqlparser `Statement` variant and no wildcard, so a variant added by a new
// sqlparser fails to compile until someone decides its class; that is why this function is
// long and stays one match.
fn statement_facts(stmt: &Statement) -> StatementFacts {
    use StatementClass as C;
    let mut skip: Vec<*const ObjectName> = Vec::new();
    let mut f = match stmt {
        // ---- read ----
        // `WITH s AS (...) UPDATE ...`: sqlparser nests the write in the WITH's query, but it
        // is the statement itself (judged as that write), not a data-modifying CTE.
        Statement::Query(q) => match main_write(q) {
            Some(Statement::Insert(_)) => StatementFacts::new("INSERT", Some(C::Write)),
            Some(Statement::Update(_)) => StatementFacts::new("UPDATE", Some(C::Write)),
            Some(Statement::Delete(_)) => StatementFacts::new("DELETE", Some(C::Write)),
            Some(Statement::Merge(_)) => StatementFacts::new("MERGE", Some(C::Write)),
            _ => StatementFacts::new("SELECT", Some(C::Read)),
        },

        // ---- write (targets are collected by the walker, also for nested DML) ----
        Statement::Insert(_) => StatementFacts::new("INSERT", Some(C::Write)),
        Statement::Update(_) => StatementFacts::new("UPDATE", Some(C::Write)),
        Statement::Delete(_) => StatementFacts::new("DELETE", Some(C::Write)),
        Statement::Merge(_) => StatementFacts::new("MERGE", Some(C::Write)),
        Statement::Truncate(t) => {
            let mut f = StatementFacts::new("TRUNCATE", Some(C::Write));
            for target in &t.table_names {
                skip.push(&target.name);
                push_name(&mut f, &target.name, Slot::Target);
                push_name(&mut f, &target.name, Slot::Unfiltered);
            }
            f
        }
        Statement::Lock(l) => {
            let mut f = StatementFacts::new("LOCK TABLE", Some(C::Write));
            for target in &l.tables {
                skip.push(&target.name);
                push_name(&mut f, &target.name, Slot::Target);
            }
            f
        }
        // A procedure can do anything its owner can; judged as a write, and its name goes
        // through the function rules.
        Statement::Call(func) => {
            let mut f = StatementFacts::new("CALL", Some(C::Write));
            push_name(&mut f, &func.name, Slot::Function);
            f
        }
        // NOTIFY reaches other sessions (a side effect), so it is a write.
        Statement::NOTIFY { channel, .. } => {
            let mut f = StatementFacts::new("NOTIFY", Some(C::Write));
            f.kind = Kind::Notify {
                channel: fold(channel),
            };
            f
        }

        // ---- copy ----
        Statement::Copy {
            source, to, target, ..
        } => {
            let mut f = StatementFacts::new("COPY", Some(C::Copy));
            let endpoint = match target {
                CopyTarget::Stdin | CopyTarget::Stdout => CopyEndpoint::Client,
                CopyTarget::File { filename } => CopyEndpoint::ServerFile(filename.clone()),
                CopyTarget::Program { command } => CopyEndpoint::Program(command.clone()),
            };
            f.copy = Some(CopyFacts { to: *to, endpoint });
            if let CopySource::Table { table_name, .. } = source {
                // COPY's table name is not visited as a relation by sqlparser's walker.
                if *to {
                    push_name(&mut f, table_name, Slot::Read);
                } else {
                    push_name(&mut f, table_name, Slot::Target);
                }
            }
            f
        }

        // ---- transaction ----
        Statement::StartTransaction { statements, .. } => {
            let mut f = StatementFacts::new("BEGIN", Some(C::Transaction));
            if !statements.is_empty() {
                f.opaque = Some("a transaction block with statements inside");
            }
            f
        }
        Statement::Commit { .. } => StatementFacts::new("COMMIT", Some(C::Transaction)),
        Statement::Rollback { .. } => StatementFacts::new("ROLLBACK", Some(C::Transaction)),
        Statement::Savepoint { .. } => StatementFacts::new("SAVEPOINT", Some(C::Transaction)),
        Statement::ReleaseSavepoint { .. } => {
            StatementFacts::new("RELEASE SAVEPOINT", Some(C::Transaction))
        }

        // ---- session ----
        Statement::Set(set) => set_facts(set),
        Statement::Reset(r) => {
            let mut f = StatementFacts::new("RESET", Some(C::Session));
            match &r.reset {
                // RESET ALL also resets the role and session authorization.
                ast::Reset::ALL | ast::Reset::SessionAuthorization => f.role_change = true,
                ast::Reset::ConfigurationParameter(name) => {
                    let param = last_part(name);
                    f.role_change = is_role_param(&param);
                }
            }
            f
        }
        Statement::ShowVariable { .. } => StatementFacts::new("SHOW", Some(C::Session)),
        Statement::Discard { object_type } => {
            let mut f = StatementFacts::new("DISCARD", Some(C::Session));
            // DISCARD ALL includes RESET ALL, hence SET SESSION AUTHORIZATION DEFAULT.
            f.role_change = matches!(object_type, ast::DiscardObject::ALL);
            f
        }
        Statement::Deallocate { name, .. } => {
            let mut f = StatementFacts::new("DEALLOCATE", Some(C::Session));
            let n = fold(name);
            f.kind = Kind::Deallocate {
                name: (!n.eq_ignore_ascii_case("all") || name.quote_style.is_some()).then_some(n),
            };
            f
        }
        Statement::LISTEN { channel } => {
            let mut f = StatementFacts::new("LISTEN", Some(C::Session));
            f.kind = Kind::Listen {
                channel: fold(channel),
            };
            f
        }
        Statement::UNLISTEN { channel } => {
            let mut f = StatementFacts::new("UNLISTEN", Some(C::Session));
            f.kind = Kind::Unlisten {
                channel: fold(channel),
            };
            f
        }

        // ---- statements wrapping another: analyse the inner one ----
        Statement::Prepare {
            name, statement, ..
        } => {
            let mut f = statement_facts(statement);
            f.kind = Kind::Prepare { name: fold(name) };
            return f;
        }
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let mut f = statement_facts(statement);
            // `EXPLAIN (ANALYZE [true|on|1]) ...` is the same as `EXPLAIN ANALYZE`; any
            // argument other than an explicit false counts as on (fail closed).
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze") && !is_false(o.arg.as_ref())
                });
            if analyze {
                f.explain_analyze_write = f.writes() || f.data_modifying_cte;
            } else if f.class.is_some() {
                // Without ANALYZE nothing runs: a plan is a read of what it would touch.
                for t in std::mem::take(&mut f.targets) {
                    if !f.reads.contains(&t) {
                        f.reads.push(t);
                    }
                }
                f.unfiltered_writes.clear();
                f.data_modifying_cte = false;
                f.merge = false;
                f.class = Some(C::Read);
            }
            f.kind = Kind::Explain { analyze };
            f.tag = "EXPLAIN";
            return f;
        }
        Statement::Execute {
            name,
            immediate,
            using,
            into,
            ..
        } => {
            let mut f = StatementFacts::new("EXECUTE", Some(C::Read));
            match name {
                Some(n) if !immediate && using.is_empty() && into.is_empty() => {
                    f.kind = Kind::Execute { name: last_part(n) }
                }
                _ => {
                    f.class = None;
                    f.opaque = Some("EXECUTE of dynamic SQL");
                }
            }
            f
        }
        Statement::Declare { stmts } => {
            let mut f = StatementFacts::new("DECLARE CURSOR", Some(C::Read));
            match stmts.as_slice() {
                [d] if d.for_query.is_some()
                    && matches!(d.declare_type, None | Some(ast::DeclareType::Cursor))
                    && d.names.len() == 1 =>
                {
                    f.kind = Kind::DeclareCursor {
                        name: fold(&d.names[0]),
                    };
                }
                _ => {
                    f.class = None;
                    f.opaque = Some("DECLARE other than one cursor");
                }
            }
            f
        }
        Statement::Fetch { name, into, .. } => {
            let mut f = StatementFacts::new("FETCH", Some(C::Read));
            f.kind = Kind::Fetch { name: fold(name) };
            if into.is_some() {
                f.class = None;
                f.opaque = Some("FETCH INTO");
            }
            f
        }
        Statement::Close { cursor } => {
            let mut f = StatementFacts::new("CLOSE", Some(C::Read));
            f.kind = Kind::Close {
                name: match cursor {
                    ast::CloseCursor::All => None,
                    ast::CloseCursor::Specific { name } => Some(fold(name)),
                },
            };
            f
        }

        // ---- ddl ----
        Statement::CreateTable(ct) => {
            let mut f = ddl("CREATE TABLE");
            skip.push(&ct.name);
            push_name(&mut f, &ct.name, Slot::Target);
            f
        }
        Statement::CreateView(cv) => {
            let mut f = ddl(if cv.materialized {
                "CREATE MATERIALIZED VIEW"
            } else {
                "CREATE VIEW"
            });
            skip.push(&cv.name);
            push_name(&mut f, &cv.name, Slot::Target);
            f
        }
        Statement::CreateIndex(ci) => {
            let mut f = ddl("CREATE INDEX");
            skip.push(&ci.table_name);
            push_name(&mut f, &ci.table_name, Slot::Target);
            f
        }
        Statement::AlterTable(at) => {
            let mut f = ddl("ALTER TABLE");
            skip.push(&at.name);
            push_name(&mut f, &at.name, Slot::Target);
            f
        }
        Statement::AlterIndex { name, .. } => {
            let mut f = ddl("ALTER INDEX");
            push_name(&mut f, name, Slot::Target);
            f
        }
        Statement::AlterView { name, .. } => {
            let mut f = ddl("ALTER VIEW");
            skip.push(name);
            push_name(&mut f, name, Slot::Target);
            f
        }
        Statement::RenameTable(renames) => {
            let mut f = ddl("ALTER TABLE");
            for r in renames {
                push_name(&mut f, &r.old_name, Slot::Target);
                push_name(&mut f, &r.new_name, Slot::Target);
            }
            f
        }
        Statement::Drop {
            object_type, names, ..
        } => drop_facts(object_type, names),
        Statement::CreateSchema { schema_name, .. } => {
            let mut f = ddl("CREATE SCHEMA");
            match schema_name {
                ast::SchemaName::Simple(n) | ast::SchemaName::NamedAuthorization(n, _) => {
                    f.schemas.push(last_part(n).into())
                }
                ast::SchemaName::UnnamedAuthorization(_) => {
                    f.opaque = Some("CREATE SCHEMA AUTHORIZATION without a name")
                }
            }
            f
        }
        Statement::AlterSchema(a) => {
            let mut f = ddl("ALTER SCHEMA");
            f.schemas.push(last_part(&a.name).into());
            f
        }
        Statement::CreateSequence { name, .. } => {
            let mut f = ddl("CREATE SEQUENCE");
            push_name(&mut f, name, Slot::Target);
            f
        }
        Statement::CreateType { .. } => ddl("CREATE TYPE"),
        Statement::AlterType(_) => ddl("ALTER TYPE"),
        Statement::CreateDomain(_) => ddl("CREATE DOMAIN"),
        Statement::DropDomain(_) => ddl("DROP DOMAIN"),
        Statement::CreateCollation(_) => ddl("CREATE COLLATION"),
        Statement::AlterCollation(_) => ddl("ALTER COLLATION"),
        Statement::Comment { .. } => ddl("COMMENT"),
        Statement::CreateOperator(_) => ddl("CREATE OPERATOR"),
        Statement::CreateOperatorFamily(_) => ddl("CREATE OPERATOR FAMILY"),
        Statement::CreateOperatorClass(_) => ddl("CREATE OPERATOR CLASS"),
        Statement::AlterOperator(_) => ddl("ALTER OPERATOR"),
        Statement::AlterOperatorFamily(_) => ddl("ALTER OPERATOR FAMILY"),
        Statement::AlterOperatorClass(_) => ddl("ALTER OPERATOR CLASS"),
        Statement::DropOperator(_) => ddl("DROP OPERATOR"),
        Statement::DropOperatorFamily(_) => ddl("DROP OPERATOR FAMILY"),
        Statement::DropOperatorClass(_) => ddl("DROP OPERATOR CLASS"),
        Statement::CreateTextSearch(_) => ddl("CREATE TEXT SEARCH"),
        Statement::AlterTextSearch(_) => ddl("ALTER TEXT SEARCH"),
        Statement::DropFunction(_) => ddl("DROP FUNCTION"),
        Statement::DropProcedure { .. } => ddl("DROP PROCEDURE"),
        Statement::DropTrigger(_) => ddl("DROP TRIGGER"),
        Statement::DropExtension(_) => ddl("DROP EXTENSION"),
        // Code definitions: their bodies run later, out of the gateway's sight.
        Statement::CreateFunction(cf) => {
            let mut f = ddl("CREATE FUNCTION");
            f.code_definition = true;
            push_name(&mut f, &cf.name, Slot::Target);
            f
        }
        Statement::CreateProcedure { .. } => code("CREATE PROCEDURE"),
        Statement::CreateTrigger(ct) => {
            let mut f = code("CREATE TRIGGER");
            push_name(&mut f, &ct.table_name, Slot::Target);
            f
        }
        Statement::AlterFunction(_) => code("ALTER FUNCTION"),
        Statement::CreateExtension(_) => code("CREATE EXTENSION"),
        Statement::CreateServer(_) => code("CREATE SERVER"),

        // ---- dcl ----
        Statement::Grant(_) => StatementFacts::new("GRANT", Some(C::Dcl)),
        Statement::Revoke(_) => StatementFacts::new("REVOKE", Some(C::Dcl)),
        Statement::CreateRole(_) => StatementFacts::new("CREATE ROLE", Some(C::Dcl)),
        Statement::AlterRole { .. } => StatementFacts::new("ALTER ROLE", Some(C::Dcl)),
        Statement::CreateUser(_) => StatementFacts::new("CREATE USER", Some(C::Dcl)),
        Statement::AlterUser(_) => StatementFacts::new("ALTER USER", Some(C::Dcl)),
        Statement::CreatePolicy(p) => {
            let mut f = StatementFacts::new("CREATE POLICY", Some(C::Dcl));
            f.target_class = C::Dcl;
            skip.push(&p.table_name);
            push_name(&mut f, &p.table_name, Slot::Target);
            f
        }
        Statement::AlterPolicy(p) => {
            let mut f = StatementFacts::new("ALTER POLICY", Some(C::Dcl));
            f.target_class = C::Dcl;
            skip.push(&p.table_name);
            push_name(&mut f, &p.table_name, Slot::Target);
            f
        }
        Statement::DropPolicy(p) => {
            let mut f = StatementFacts::new("DROP POLICY", Some(C::Dcl));
            f.target_class = C::Dcl;
            skip.push(&p.table_name);
            push_name(&mut f, &p.table_name, Slot::Target);
            f
        }

        // ---- admin ----
        Statement::Analyze(a) => {
            let mut f = admin("ANALYZE");
            if let Some(t) = &a.table_name {
                skip.push(t);
                push_name(&mut f, t, Slot::Target);
            }
            f
        }
        Statement::Vacuum(v) => {
            let mut f = admin("VACUUM");
            if let Some(t) = &v.table_name {
                push_name(&mut f, t, Slot::Target);
            }
            f
        }
        Statement::CreateDatabase { .. } => admin("CREATE DATABASE"),

        // ---- kinds from other dialects, or that this analyser does not judge ----
        Statement::Msck(_)
        | Statement::Install { .. }
        | Statement::Load { .. }
        | Statement::Directory { .. }
        | Statement::Case(_)
        | Statement::If(_)
        | Statement::While(_)
        | Statement::Raise(_)
        | Statement::CopyIntoSnowflake { .. }
        | Statement::Open(_)
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateSecret { .. }
        | Statement::CreateConnector(_)
        | Statement::AlterConnector { .. }
        | Statement::AlterSession { .. }
        | Statement::AttachDatabase { .. }
        | Statement::AttachDuckDBDatabase { .. }
        | Statement::DetachDuckDBDatabase { .. }
        | Statement::DropSecret { .. }
        | Statement::DropConnector { .. }
        | Statement::Flush { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::Use(_)
        | Statement::CreateMacro { .. }
        | Statement::CreateStage { .. }
        | Statement::CreateFileFormat { .. }
        | Statement::CreateWarehouse(_)
        | Statement::Assert { .. }
        | Statement::Deny(_)
        | Statement::Kill { .. }
        | Statement::ExplainTable { .. }
        | Statement::Cache { .. }
        | Statement::UNCache { .. }
        | Statement::Pragma { .. }
        | Statement::LockTables { .. }
        | Statement::UnlockTables
        | Statement::Unload { .. }
        | Statement::OptimizeTable { .. }
        | Statement::LoadData { .. }
        | Statement::List(_)
        | Statement::Put { .. }
        | Statement::Remove(_)
        | Statement::RaisError { .. }
        | Statement::Throw(_)
        | Statement::Print(_)
        | Statement::WaitFor(_)
        | Statement::Return(_)
        | Statement::ExportData(_) => StatementFacts::new(unknown_tag(stmt), None),
    };
    let mut c = Collector::new(skip);
    if let Statement::Query(q) = stmt {
        c.main = main_write(q).map(|w| w as *const Statement);
    }
    // The walk only collects; `Break` is never returned.
    let _ = stmt.visit(&mut c);
    c.finish(&mut f);
    f.session_state = session::of_statement(stmt, &f);
    f
}

/// The write a query's body is (`WITH ... INSERT/UPDATE/DELETE/MERGE`), if it is one.
fn main_write(q: &Query) -> Option<&Statement> {
    match &*q.body {
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => Some(s),
        _ => None,
    }
}

fn unknown_tag(_stmt: &Statement) -> &'static str {
    "UNKNOWN"
}

fn ddl(tag: &'static str) -> StatementFacts {
    let mut f = StatementFacts::new(tag, Some(StatementClass::Ddl));
    f.target_class = StatementClass::Ddl;
    f
}

fn code(tag: &'static str) -> StatementFacts {
    let mut f = ddl(tag);
    f.code_definition = true;
    f
}

fn admin(tag: &'static str) -> StatementFacts {
    let mut f = StatementFacts::new(tag, Some(StatementClass::Admin));
    f.target_class = StatementClass::Admin;
    f
}

fn drop_facts(object_type: &ObjectType, names: &[ObjectName]) -> StatementFacts {
    let (tag, class, relation) = match object_type {
        ObjectType::Table => ("DROP TABLE", StatementClass::Ddl, true),
        ObjectType::View => ("DROP VIEW", StatementClass::Ddl, true),
        ObjectType::MaterializedView => ("DROP MATERIALIZED VIEW", StatementClass::Ddl, true),
        ObjectType::Index => ("DROP INDEX", StatementClass::Ddl, true),
        ObjectType::Sequence => ("DROP SEQUENCE", StatementClass::Ddl, true),
        ObjectType::Schema => ("DROP SCHEMA", StatementClass::Ddl, false),
        ObjectType::Type => ("DROP TYPE", StatementClass::Ddl, false),
        ObjectType::Collation => ("DROP COLLATION", StatementClass::Ddl, false),
        ObjectType::Database => ("DROP DATABASE", StatementClass::Admin, false),
        ObjectType::Role => ("DROP ROLE", StatementClass::Dcl, false),
        ObjectType::User => ("DROP USER", StatementClass::Dcl, false),
        ObjectType::Stage | ObjectType::Stream | ObjectType::Warehouse => {
            return StatementFacts::new("DROP", None)
        }
    };
    let mut f = StatementFacts::new(tag, Some(class));
    f.target_class = class;
    for n in names {
        if relation {
            push_name(&mut f, n, Slot::Target);
        } else if matches!(object_type, ObjectType::Schema) {
            f.schemas.push(last_part(n).into());
        }
    }
    f
}

fn set_facts(set: &ast::Set) -> StatementFacts {
    use ast::Set as S;
    let mut f = StatementFacts::new("SET", Some(StatementClass::Session));
    let check = |name: &ObjectName, f: &mut StatementFacts| {
        let p = last_part(name);
        f.role_change |= is_role_param(&p);
        f.search_path_change |= p == "search_path";
    };
    match set {
        S::SingleAssignment { variable, .. } => check(variable, &mut f),
        S::ParenthesizedAssignments { variables, .. } => {
            for v in variables {
                check(v, &mut f);
            }
        }
        S::MultipleAssignments { assignments } => {
            for a in assignments {
                check(&a.name, &mut f);
            }
        }
        S::SetSessionAuthorization(_) | S::SetRole { .. } => f.role_change = true,
        S::SetTransaction { .. } => {
            f.class = Some(StatementClass::Transaction);
            f.tag = "SET TRANSACTION";
        }
        S::SetTimeZone { .. } | S::SetNames { .. } | S::SetNamesDefault {} => {}
        S::SetSessionParam(_) => {
            f.class = None;
            f.opaque = Some("SET session parameter of another dialect");
        }
    }
    f
}

pub(super) fn is_role_param(p: &str) -> bool {
    matches!(p, "role" | "session_authorization")
}

#[cfg(test)]
mod tests;
