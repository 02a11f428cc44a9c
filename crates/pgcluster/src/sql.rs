//! Quoting for the few SQL statements and connection strings this crate builds.

/// Quotes an SQL identifier: `my "role"` -> `"my ""role"""`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings = on): `it's` -> `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes a value for a libpq `key=value` connection string: `a b'c` -> `'a b\'c'`.
pub fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes a postgresql.conf value unless the caller already quoted it: `128MB` -> `'128MB'`.
pub(crate) fn quote_conf(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"my "role""#), r#""my ""role""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conninfo(r"a b'c\"), r"'a b\'c\\'");
        assert_eq!(quote_conf("128MB"), "'128MB'");
        assert_eq!(quote_conf("'already'"), "'already'");
        assert_eq!(quote_conf("it's"), "'it''s'");
    }
}
