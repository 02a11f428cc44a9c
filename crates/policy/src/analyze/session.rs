//! State a statement leaves on its server connection past the end of its transaction: what a
//! transaction pooler must keep with one client (pin) or refuse.

use std::fmt;

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::{Analysis, Name, StatementFacts};
use crate::sql;

/// Session state a statement creates on the server connection that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionState {
    /// `LISTEN channel`: notifications go to that server connection.
    Listen,
    /// A temporary table (or other relation or function in `pg_temp`).
    TempTable,
    /// A session-level advisory lock (`pg_advisory_lock`, `pg_try_advisory_lock`, shared or
    /// not); the `_xact_` ones end with the transaction and are not session state.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`: a cursor that outlives its transaction.
    HoldCursor,
    /// `PREPARE TRANSACTION`: two-phase commit, begun on that server connection.
    PrepareTransaction,
}

impl SessionState {
    /// Every kind, in the order of their names in configuration.
    pub const ALL: [SessionState; 5] = [
        SessionState::Listen,
        SessionState::TempTable,
        SessionState::AdvisoryLock,
        SessionState::HoldCursor,
        SessionState::PrepareTransaction,
    ];

    /// The kind's name in configuration and metrics (`listen`, `temp_table`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Listen => "listen",
            SessionState::TempTable => "temp_table",
            SessionState::AdvisoryLock => "advisory_lock",
            SessionState::HoldCursor => "hold_cursor",
            SessionState::PrepareTransaction => "prepare_transaction",
        }
    }

    /// The kind named `name` in configuration.
    pub fn from_name(name: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// What the statement is, for messages (`LISTEN`, `a temporary table`, ...).
    pub fn statement(self) -> &'static str {
        match self {
            SessionState::Listen => "LISTEN",
            SessionState::TempTable => "a temporary table",
            SessionState::AdvisoryLock => "a session-level advisory lock",
            SessionState::HoldCursor => "a WITH HOLD cursor",
            SessionState::PrepareTransaction => "PREPARE TRANSACTION",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Session-level advisory lock functions (the `_xact_` variants end with the transaction).
const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// The session state one parsed statement creates, from its syntax tree and collected facts.
/// (`PREPARE` and `EXPLAIN` carry their inner statement's facts, these included.)
pub(super) fn of_statement(stmt: &Statement, f: &StatementFacts) -> Vec<SessionState> {
    let mut kinds = Vec::new();
    let temporary = match stmt {
        Statement::CreateTable(ct) => ct.temporary,
        Statement::CreateView(cv) => cv.temporary,
        Statement::CreateSequence { temporary, .. } => *temporary,
        Statement::CreateFunction(cf) => cf.temporary,
        Statement::Query(q) => select_into_temporary(&q.body),
        _ => false,
    };
    // `CREATE TABLE pg_temp.t`, `SELECT ... INTO pg_temp.t`, `CREATE FUNCTION pg_temp.f`: the
    // session's temporary schema, named.
    let creates = f.tag.starts_with("CREATE") || f.tag == "SELECT INTO";
    if temporary || (creates && f.targets.iter().any(in_temp_schema)) {
        kinds.push(SessionState::TempTable);
    }
    if matches!(stmt, Statement::LISTEN { .. }) {
        kinds.push(SessionState::Listen);
    }
    if let Statement::Declare { stmts } = stmt {
        if stmts.iter().any(|d| d.hold == Some(true)) {
            kinds.push(SessionState::HoldCursor);
        }
    }
    if f.functions.iter().any(is_session_advisory_lock) {
        kinds.push(SessionState::AdvisoryLock);
    }
    kinds
}

/// `SELECT ... INTO TEMP t` (a set operation's first branch included).
fn select_into_temporary(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => s.into.as_ref().is_some_and(|i| i.temporary),
        SetExpr::SetOperation { left, .. } => select_into_temporary(left),
        SetExpr::Query(q) => select_into_temporary(&q.body),
        _ => false,
    }
}

fn in_temp_schema(n: &Name) -> bool {
    n.schema.as_deref().is_some_and(is_temp_schema)
}

/// `pg_temp`, or a session's own `pg_temp_N`.
fn is_temp_schema(s: &str) -> bool {
    s == "pg_temp"
        || s.strip_prefix("pg_temp_")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_session_advisory_lock(n: &Name) -> bool {
    matches!(n.schema.as_deref(), None | Some("pg_catalog"))
        && SESSION_ADVISORY_LOCKS.contains(&&*n.name)
}

/// The session state a text creates, in order, without repeats. Text the parser could not
/// read (e.g. `PREPARE TRANSACTION`, which sqlparser does not know) is read by its tokens, so
/// a comment or a string literal never counts, and any hint of a kind counts (fail safe).
pub fn session_state(analysis: &Analysis, sql: &str) -> Vec<SessionState> {
    let mut kinds = match analysis {
        Analysis::Statements(v) => v.iter().flat_map(|f| f.session_state.clone()).collect(),
        Analysis::Unparsed { .. } => by_tokens(sql),
    };
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Kinds named by the tokens of text that does not parse: `LISTEN` or `PREPARE TRANSACTION`
/// at a statement's start, `TEMP`/`TEMPORARY`/`pg_temp` and `WITH HOLD` anywhere, and calls of
/// the session-level advisory lock functions.
fn by_tokens(sql: &str) -> Vec<SessionState> {
    let Some(tokens) = sql::significant_tokens(sql) else {
        // Not even tokens: the text cannot run either.
        return Vec::new();
    };
    let word = |t: Option<&Token>| match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => {
            Some((w.keyword, w.value.to_ascii_lowercase()))
        }
        Some(Token::Word(w)) => Some((Keyword::NoKeyword, w.value.clone())),
        _ => None,
    };
    let mut kinds = Vec::new();
    let mut start = true;
    for (i, t) in tokens.iter().enumerate() {
        if matches!(t, Token::SemiColon) {
            start = true;
            continue;
        }
        let Some((kw, value)) = word(Some(t)) else {
            start = false;
            continue;
        };
        let next = word(tokens.get(i + 1));
        if start && kw == Keyword::LISTEN {
            kinds.push(SessionState::Listen);
        }
        if start
            && kw == Keyword::PREPARE
            && next.as_ref().is_some_and(|n| n.0 == Keyword::TRANSACTION)
        {
            kinds.push(SessionState::PrepareTransaction);
        }
        if matches!(kw, Keyword::TEMP | Keyword::TEMPORARY) || is_temp_schema(&value) {
            kinds.push(SessionState::TempTable);
        }
        if kw == Keyword::WITH && next.as_ref().is_some_and(|n| n.0 == Keyword::HOLD) {
            kinds.push(SessionState::HoldCursor);
        }
        if SESSION_ADVISORY_LOCKS.contains(&value.as_str())
            && matches!(tokens.get(i + 1), Some(Token::LParen))
        {
            kinds.push(SessionState::AdvisoryLock);
        }
        start = false;
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::SessionState as S;
    use super::*;

    fn kinds(sql: &str) -> Vec<SessionState> {
        session_state(&crate::analyze(sql), sql)
    }

    #[test]
    fn detects_each_kind() {
        let cases: &[(&str, &[SessionState])] = &[
            ("LISTEN ch", &[S::Listen]),
            ("listen \"Mixed\"", &[S::Listen]),
            ("CREATE TEMP TABLE t (a int)", &[S::TempTable]),
            ("CREATE TEMPORARY TABLE t AS SELECT 1", &[S::TempTable]),
            ("create local temporary table t (a int)", &[S::TempTable]),
            ("CREATE TABLE pg_temp.t (a int)", &[S::TempTable]),
            ("CREATE TABLE pg_temp_3.t (a int)", &[S::TempTable]),
            ("CREATE TEMP VIEW v AS SELECT 1", &[S::TempTable]),
            ("CREATE TEMP SEQUENCE s", &[S::TempTable]),
            ("SELECT 1 AS a INTO TEMP t", &[S::TempTable]),
            ("SELECT 1 AS a INTO pg_temp.t", &[S::TempTable]),
            ("SELECT pg_advisory_lock(1)", &[S::AdvisoryLock]),
            (
                "SELECT pg_catalog.pg_advisory_lock_shared(1, 2)",
                &[S::AdvisoryLock],
            ),
            ("SELECT pg_try_advisory_lock(7)", &[S::AdvisoryLock]),
            (
                "SELECT x FROM (SELECT pg_try_advisory_lock_shared(7) AS x) s",
                &[S::AdvisoryLock],
            ),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", &[S::HoldCursor]),
            (
                "declare c no scroll cursor with hold for select 1",
                &[S::HoldCursor],
            ),
            ("PREPARE TRANSACTION 'tx1'", &[S::PrepareTransaction]),
            ("prepare transaction 'tx1';", &[S::PrepareTransaction]),
            (
                "PREPARE p AS SELECT pg_advisory_lock(1)",
                &[S::AdvisoryLock],
            ),
            (
                "LISTEN a; CREATE TEMP TABLE t (a int); SELECT pg_advisory_lock(1)",
                &[S::Listen, S::TempTable, S::AdvisoryLock],
            ),
            // Unparsed as a whole: read by tokens.
            (
                "SELECT pg_advisory_lock(1); PREPARE TRANSACTION 'x'",
                &[S::AdvisoryLock, S::PrepareTransaction],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql), *want, "{sql}");
        }
    }

    #[test]
    fn leaves_transaction_scoped_and_unrelated_statements_alone() {
        for sql in [
            "SELECT 1",
            "CREATE TABLE t (a int)",
            "CREATE TABLE public.pg_temporary (a int)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_try_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock(1)",
            "SELECT myschema.pg_advisory_lock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "UNLISTEN ch",
            "NOTIFY ch",
            "SELECT 'LISTEN x; CREATE TEMP TABLE t; pg_advisory_lock(1)'",
            "SELECT 1 -- PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'tx1'",
            "ROLLBACK PREPARED 'tx1'",
            "INSERT INTO temp VALUES (1)",
        ] {
            assert_eq!(kinds(sql), Vec::<SessionState>::new(), "{sql}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in SessionState::ALL {
            assert_eq!(SessionState::from_name(k.as_str()), Some(k));
        }
        assert_eq!(SessionState::from_name("temp"), None);
    }
}
