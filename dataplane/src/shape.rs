//! The *shape* of a statement text: the text with its literal values replaced, so that
//! statements that differ only in their constants (`... WHERE aid = 17` / `... WHERE aid = 42`,
//! as simple-protocol clients send them) share one cached verdict.
//!
//! This is a cache key, never a security decision: a verdict is stored under a shape only when
//! the statement was analyzed in full and its kind cannot depend on literal values (see
//! `literal_independent` in `session/judge.rs`), and a text gets a shape only when a tiny lexer
//! reads it exactly as PostgreSQL does. Anything that lexer does not handle exactly yields no
//! shape and goes through the parser: backslashes (escape strings,
//! `standard_conforming_strings = off`), comments, dollar quoting, and unterminated quotes.

/// Marks shape keys so they never collide with a real statement text in the same cache.
const SHAPE_PREFIX: char = '\u{1}';

/// The shape of `sql`, or `None` when the text is not lexically simple.
pub fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.contains(&b'\\') || b.contains(&0) {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + 1);
    out.push(SHAPE_PREFIX);
    let mut i = 0;
    // Start of the verbatim run not yet copied.
    let mut run = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                out.push_str(&sql[run..i]);
                i = skip_quoted(b, i, b'\'')?;
                out.push_str("'?'");
                run = i;
            }
            b'"' => {
                // Quoted identifier: kept verbatim.
                i = skip_quoted(b, i, b'"')?;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'$' => {
                // `$1` is a parameter; anything else is dollar quoting or an identifier part.
                if !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() && !(i > 0 && is_ident_byte(b[i - 1])) => {
                out.push_str(&sql[run..i]);
                i = skip_number(b, i);
                out.push('?');
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[run..]);
    Some(out)
}

/// Bytes that continue an identifier or keyword (a digit after one is part of it).
fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Index after a quoted token starting at `start` (doubled quotes escape), or `None` if it
/// does not end.
fn skip_quoted(b: &[u8], start: usize, q: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match b.get(i) {
            None => return None,
            Some(&c) if c == q => {
                if b.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// Index after a numeric constant starting with a digit at `start`, as PostgreSQL's lexer
/// reads it: digits, an optional fraction, an exponent only when digits follow it.
fn skip_number(b: &[u8], start: usize) -> usize {
    let digits = |mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(j);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sql: &str) -> Option<String> {
        shape(sql).map(|s| s[1..].to_owned())
    }

    #[test]
    fn literals_are_replaced() {
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"),
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 98765;")
        );
        assert_eq!(
            s("SELECT 'it''s', 1.5e-3, 2.").as_deref(),
            Some("SELECT '?', ?, ?")
        );
        assert_eq!(
            s("SELECT B'0101', x'ff'").as_deref(),
            Some("SELECT B'?', x'?'")
        );
    }

    #[test]
    fn identifiers_and_parameters_are_kept() {
        assert_eq!(
            s("SELECT t1.col2, \"Tab 9\".x FROM t1, \"Tab 9\" WHERE a = $1").as_deref(),
            Some("SELECT t1.col2, \"Tab 9\".x FROM t1, \"Tab 9\" WHERE a = $1")
        );
        // 1e is the number 1 then the alias e, as PostgreSQL reads it.
        assert_eq!(s("SELECT 1e FROM t").as_deref(), Some("SELECT ?e FROM t"));
        assert_ne!(shape("SELECT 'a' FROM t"), shape("SELECT \"a\" FROM t"));
        assert_ne!(shape("SELECT 1 FROM t"), shape("SELECT 1 FROM u"));
    }

    #[test]
    fn anything_not_lexed_exactly_has_no_shape() {
        for sql in [
            "SELECT E'x\\' FROM secrets --' FROM t",
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT a$b FROM t",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }
}
