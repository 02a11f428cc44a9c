//! The walk's state, FROM items and name resolution against scopes, CTEs and the catalog.

use std::collections::HashMap;
use std::rc::Rc;

use sqlparser::ast::{ObjectName, Statement, TableAlias};

use super::taint::*;
use super::*;

/// One FROM item, as column references see it.
#[derive(Debug, Clone)]
pub(super) struct Item {
    /// The name it is referred to by (its alias, or the relation's own name).
    pub(super) name: Rc<str>,
    /// For an unaliased relation: its schema, for `schema.table.column` references.
    pub(super) schema: Option<Rc<str>>,
    pub(super) shape: Shape,
}

/// The FROM items visible at one query level, and the levels around it (correlation).
pub(super) struct Scope<'s> {
    pub(super) items: Vec<Item>,
    pub(super) parent: Option<&'s Scope<'s>>,
}

/// A relation name as a statement resolves it.
pub(super) enum Lookup<'c> {
    Cte(Shape),
    Relation(&'c Relation),
    /// `pg_catalog` / `information_schema` relations the catalog does not list: never masked,
    /// columns unknown.
    System,
    Missing(String),
}

/// The state of one [`mask_plan`] (or [`origin_rule`]) call.
pub(super) struct Ctx<'c> {
    pub(super) policy: &'c Policy,
    pub(super) catalog: &'c dyn Catalog,
    /// CTE frames in scope, innermost last. A view's definition starts with none.
    pub(super) ctes: Vec<Vec<(Rc<str>, Shape)>>,
    /// Queries currently nested.
    pub(super) depth: usize,
    /// Views currently being expanded (cycle and depth guard).
    pub(super) views: Vec<u32>,
    /// Column lineage of views already expanded in this call, with their sensitivity.
    pub(super) view_cache: HashMap<u32, (Vec<Col>, bool)>,
    /// The current statement reads a relation with a covered column (or one it cannot see
    /// into): unknown lineage in its output is then a denial.
    pub(super) sensitive: bool,
    /// Rules with `predicates: deny`.
    pub(super) predicate_rules: RuleSet,
}

impl<'c> Ctx<'c> {
    pub(super) fn new(policy: &'c Policy, catalog: &'c dyn Catalog) -> Self {
        Self {
            policy,
            catalog,
            ctes: Vec::new(),
            depth: 0,
            views: Vec::new(),
            view_cache: HashMap::new(),
            sensitive: false,
            predicate_rules: policy
                .masking()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.deny_predicates)
                .fold(RuleSet::default(), |mut s, (i, _)| {
                    s.add(i);
                    s
                }),
        }
    }

    pub(super) fn rule_id(&self, i: RuleIndex) -> &str {
        self.policy
            .masking()
            .get(i)
            .map_or(LINEAGE_RULE, |r| r.id.as_str())
    }

    // ---- relations ----------------------------------------------------------------------

    /// The first rule covering `rel.col` by column glob or type.
    pub(super) fn column_rule(&self, rel: &Relation, col: &Column) -> Option<RuleIndex> {
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
    pub(super) fn relation_columns(&mut self, rel: &Relation) -> Vec<Col> {
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
    pub(super) fn view_columns(&mut self, rel: &Relation) -> Vec<Col> {
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

    pub(super) fn expand_view(&mut self, rel: &Relation) -> Vec<Col> {
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
        let parsed = (sql.len() <= MAX_SQL_BYTES)
            .then(|| sql::parse(sql, RECURSION_LIMIT).ok())
            .flatten();
        if let Some((name, why)) = parsed
            .as_deref()
            .and_then(|s| s.iter().find_map(super::exposure::stored_value_read))
        {
            return unknown(self, format!("view \"{label}\" reads {name}, which {why}"));
        }
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
    pub(super) fn lookup(&self, parts: &[Rc<str>], with_ctes: bool) -> Lookup<'c> {
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
    pub(super) fn relation_item(
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
}

/// An unqualified name: a column of some FROM item (all of them if several have it), else a
/// whole row (`SELECT c FROM customers c`), at the innermost level that has it.
pub(super) fn resolve_unqualified(scope: &Scope<'_>, x: &str, quoted: bool) -> Taint {
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
pub(super) const SQL_VALUE_KEYWORDS: &[&str] = &[
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

pub(super) fn any_opaque(scope: &Scope<'_>) -> bool {
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
pub(super) fn qualified(
    scope: &Scope<'_>,
    schema: Option<&Rc<str>>,
    t: &str,
    c: &str,
) -> Option<Taint> {
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
pub(super) fn find_item<'s>(scope: &'s Scope<'s>, name: &ObjectName) -> Option<&'s Item> {
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

pub(super) fn whole_row(scope: &Scope<'_>, name: &ObjectName) -> Taint {
    match find_item(scope, name) {
        Some(i) => i.shape.whole(),
        None => Taint::unknown(format!("{name}.* names no FROM item")),
    }
}

/// `f(*)` other than `count(*)`: everything at the innermost level.
pub(super) fn every_item(scope: &Scope<'_>) -> Taint {
    let mut t = Taint::default();
    for i in &scope.items {
        t.union(&i.shape.whole());
    }
    t
}
