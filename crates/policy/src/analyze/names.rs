//! Relation and function names as the analyser records them, and names sqlparser misreads.

use sqlparser::ast::{ObjectName, ObjectNamePart};

use super::*;

/// The last part of a name, folded (`""` if it is not a plain identifier).
pub(super) fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => fold(i),
        _ => String::new(),
    }
}

/// `[[database.]schema.]name` → [`Name`]; other shapes are unreadable.
pub(super) fn to_name(obj: &ObjectName) -> Result<Name, &'static str> {
    let mut parts = Vec::with_capacity(obj.0.len());
    for p in &obj.0 {
        match p {
            ObjectNamePart::Identifier(i) => parts.push(fold(i)),
            ObjectNamePart::Function(_) => return Err("a computed name part"),
        }
    }
    match parts.len() {
        1 => Ok(Name {
            schema: None,
            name: parts.pop().unwrap_or_default().into(),
        }),
        // database.schema.name: PostgreSQL only accepts the current database, so the
        // database part does not change what is read.
        2 | 3 => {
            let name = parts.pop().unwrap_or_default();
            let schema = parts.pop().unwrap_or_default();
            Ok(Name {
                schema: Some(schema.into()),
                name: name.into(),
            })
        }
        _ => Err("a name with more than three parts"),
    }
}

#[derive(Clone, Copy)]
pub(super) enum Slot {
    Read,
    Target,
    Function,
    Unfiltered,
}

/// PostgreSQL's reserved keywords (they can never be unquoted identifiers there).
pub(super) const PG_RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "system_user",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// Whether sqlparser took a PostgreSQL reserved word for a name. PostgreSQL would read the
/// text differently (`FROM ONLY secrets` is parsed as table `only` aliased `secrets`), so
/// the statement is opaque rather than judged on the parser's reading.
pub(super) fn misread_keyword(obj: &ObjectName, relation: bool) -> bool {
    obj.0.iter().any(|p| match p {
        ObjectNamePart::Identifier(i) if i.quote_style.is_none() => {
            let v = i.value.to_ascii_lowercase();
            if relation {
                PG_RESERVED.contains(&v.as_str())
            } else {
                // CURRENT_TIMESTAMP and friends are legitimately function-like.
                v == "only"
            }
        }
        _ => false,
    })
}

pub(super) fn push_name(f: &mut StatementFacts, obj: &ObjectName, slot: Slot) {
    if misread_keyword(obj, !matches!(slot, Slot::Function)) {
        f.opaque = f.opaque.or(Some(
            "a reserved word where a name was expected (e.g. ONLY)",
        ));
        return;
    }
    match to_name(obj) {
        Ok(n) => {
            let v = match slot {
                Slot::Read => &mut f.reads,
                Slot::Target => &mut f.targets,
                Slot::Function => &mut f.functions,
                Slot::Unfiltered => &mut f.unfiltered_writes,
            };
            if !v.contains(&n) {
                v.push(n);
            }
        }
        Err(why) => f.opaque = f.opaque.or(Some(why)),
    }
}
