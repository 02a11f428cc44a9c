//! SQL helpers the analyser and the lineage walk share: parsing, tokens, identifier folding, option values.

use sqlparser::ast::{Expr, Ident, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

/// Parses `sql` as PostgreSQL with the given nesting limit.
pub(crate) fn parse(sql: &str, recursion_limit: usize) -> Result<Vec<Statement>, ParserError> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(recursion_limit)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
}

/// The tokens of `sql` without whitespace (comments included) and without one trailing
/// semicolon; `None` if it does not tokenize.
pub(crate) fn significant_tokens(sql: &str) -> Option<Vec<Token>> {
    let mut tokens: Vec<Token> = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if matches!(tokens.last(), Some(Token::SemiColon)) {
        tokens.pop();
    }
    Some(tokens)
}

/// Folds a word per PostgreSQL: unquoted → ASCII lower case, quoted → as written.
pub(crate) fn fold_word(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_ascii_lowercase()
    }
}

/// Folds one identifier per PostgreSQL (see [`fold_word`]).
pub(crate) fn fold_ident(ident: &Ident) -> String {
    fold_word(&ident.value, ident.quote_style.is_some())
}

/// An option argument that is explicitly false (`false`, `off`, `0`, `no`, `'off'`, ...).
pub(crate) fn is_false(arg: Option<&Expr>) -> bool {
    let text = match arg {
        None => return false,
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => return !b,
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
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
