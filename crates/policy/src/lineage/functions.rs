//! User-defined functions: what their results derive from, traced through their bodies
//! where the catalog gives one that can be read.

use sqlparser::ast::{ObjectName, Statement};

use super::scope::Ctx;
use super::taint::*;
use super::*;

/// What a call of a user-defined function returns.
pub(super) struct Call {
    /// The lineage of its value (every column, for a row).
    pub(super) taint: Taint,
    /// Its columns, when it returns a relation's row type.
    pub(super) columns: Option<Vec<Col>>,
}

impl<'c> Ctx<'c> {
    /// The lineage of a call of `name` if it names user-defined functions the policy does
    /// not trust; `None` for built-in (and trusted) functions, whose results derive from
    /// their arguments only.
    pub(super) fn user_function(&mut self, name: &ObjectName) -> Option<Call> {
        let parts = name_parts(name)?;
        let (schema, fname) = match parts.as_slice() {
            [n] => (None, n.clone()),
            [.., s, n] => (Some(s.clone()), n.clone()),
            [] => return None,
        };
        if schema
            .as_deref()
            .is_some_and(|s| matches!(s, "pg_catalog" | "information_schema"))
        {
            return None;
        }
        let catalog = self.catalog;
        let candidates: Vec<&Function> = catalog
            .functions(&fname)
            .iter()
            .filter(|f| schema.as_deref().is_none_or(|s| *f.schema == *s))
            .filter(|f| !self.policy.function_trusted(&f.schema, &f.name))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut call = Call {
            taint: Taint::default(),
            columns: None,
        };
        for f in candidates {
            let (taint, columns) = self.function_lineage(f);
            call.taint.union(&taint);
            if let Some(cols) = columns {
                call.columns = Some(match call.columns.take() {
                    // Overloads with different row types: column by column, fail closed.
                    Some(prev) if prev.len() == cols.len() => prev
                        .into_iter()
                        .zip(cols)
                        .map(|(mut a, b)| {
                            a.taint.union(&b.taint);
                            a
                        })
                        .collect(),
                    Some(_) => {
                        return Some(unknown_call(self, f, "overloads return different rows"))
                    }
                    None => cols,
                });
            }
        }
        Some(call)
    }

    /// What one function's result derives from: its row type's columns, or its body.
    fn function_lineage(&mut self, f: &Function) -> (Taint, Option<Vec<Col>>) {
        let label = format!("{}.{}", f.schema, f.name);
        if let Some(rel) = f.return_relation.and_then(|oid| self.catalog.by_oid(oid)) {
            let cols = self.relation_columns(rel);
            let mut t = Taint::default();
            for c in &cols {
                t.union(&c.taint);
            }
            return (t, Some(cols));
        }
        if &*f.language != "sql" || f.source.trim().is_empty() {
            self.sensitive = true;
            return (
                Taint::unknown(format!(
                    "function {label}() is written in {} and its result cannot be traced; the policy may list it in functions.trusted",
                    f.language
                )),
                None,
            );
        }
        if self.views.contains(&f.oid) || self.views.len() >= MAX_VIEW_DEPTH {
            self.sensitive = true;
            return (
                Taint::unknown(format!("function {label}() is nested too deeply to trace")),
                None,
            );
        }
        let parsed = (f.source.len() <= MAX_SQL_BYTES)
            .then(|| sql::parse(&f.source, RECURSION_LIMIT).ok())
            .flatten();
        let Some(Statement::Query(q)) = parsed.as_deref().and_then(|s| s.last()) else {
            self.sensitive = true;
            return (
                Taint::unknown(format!(
                    "the body of function {label}() could not be parsed or does not end in a query"
                )),
                None,
            );
        };
        if let Some((name, why)) = parsed
            .as_deref()
            .and_then(|s| s.iter().find_map(super::exposure::stored_value_read))
        {
            self.sensitive = true;
            return (
                Taint::unknown(format!("function {label}() reads {name}, which {why}")),
                None,
            );
        }
        self.views.push(f.oid);
        let saved_ctes = std::mem::take(&mut self.ctes);
        let shape = self.query(q, None);
        self.ctes = saved_ctes;
        self.views.pop();
        match shape {
            Ok(shape) => (shape.whole(), None),
            Err(d) => {
                self.sensitive = true;
                (
                    Taint::unknown(format!("function {label}(): {}", d.message)),
                    None,
                )
            }
        }
    }
}

fn unknown_call(cx: &mut Ctx<'_>, f: &Function, why: &str) -> Call {
    cx.sensitive = true;
    Call {
        taint: Taint::unknown(format!(
            "function {}.{}(): {why}, so its result cannot be traced",
            f.schema, f.name
        )),
        columns: None,
    }
}
