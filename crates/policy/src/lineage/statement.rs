//! Statements: which ones return rows, and what writes may store.

use std::rc::Rc;

use sqlparser::ast::{
    self, AssignmentTarget, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable,
    Insert, ObjectName, ObjectNamePart, SetExpr, Statement, TableAlias, TableFactor, TableObject,
};

use super::query::*;
use super::scope::*;
use super::taint::*;
use super::*;

impl<'c> Ctx<'c> {
    pub(super) fn statement(&mut self, stmt: &Statement, outer: Option<&Scope<'_>>) -> R<Plan> {
        Ok(match stmt {
            Statement::Query(q) => {
                if let SetExpr::Select(s) = &*q.body {
                    if s.into.is_some() {
                        let shape = self.query(q, outer)?;
                        self.check_store(&shape.whole(), None, "SELECT INTO")?;
                        return Ok(Plan::NoRows);
                    }
                }
                Plan::Rows(self.query(q, outer)?)
            }
            Statement::Insert(ins) => match self.insert(ins, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Update(up) => match self.update(up, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Delete(del) => match self.delete(del, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Merge(m) => match self.merge(m, outer)? {
                Some(s) => Plan::Rows(s),
                None => Plan::NoRows,
            },
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => return self.copy(source, *to, target, options, legacy_options),
            Statement::Explain {
                analyze,
                statement,
                options,
                ..
            } => {
                let analyze = *analyze
                    || options.iter().flatten().any(|o| {
                        o.name.value.eq_ignore_ascii_case("analyze")
                            && !sql::is_false(o.arg.as_ref())
                    });
                if analyze {
                    // EXPLAIN ANALYZE runs the statement: whatever it stores is checked.
                    self.statement(statement, None)?;
                }
                // A plan is text about the query, not values from its tables.
                Plan::Rows(Shape::Known(vec![Col {
                    name: "QUERY PLAN".into(),
                    taint: Taint::default(),
                }]))
            }
            Statement::ShowVariable { variable } => {
                let all = matches!(variable.as_slice(), [v] if v.value.eq_ignore_ascii_case("all"));
                let names: &[&str] = if all {
                    &["name", "setting", "description"]
                } else {
                    &["setting"]
                };
                Plan::Rows(Shape::Known(
                    names
                        .iter()
                        .map(|n| Col {
                            name: (*n).into(),
                            taint: Taint::default(),
                        })
                        .collect(),
                ))
            }
            Statement::Declare { stmts } => return self.declare(stmts),
            Statement::Prepare {
                name, statement, ..
            } => {
                let rows = match self.statement(statement, None)? {
                    Plan::Rows(s) => Some(s),
                    _ => None,
                };
                Plan::Prepare {
                    name: fold(name),
                    rows,
                }
            }
            Statement::Fetch { name, .. } => Plan::Fetch(fold(name)),
            Statement::Execute {
                name: Some(n),
                immediate: false,
                ..
            } => match last_name(n) {
                Some(name) => Plan::Execute(name),
                None => return Err(Denied::lineage("EXECUTE of a computed name".into())),
            },
            Statement::Execute { .. } => {
                return Err(Denied::lineage(
                    "EXECUTE of dynamic SQL cannot be traced".into(),
                ))
            }
            Statement::CreateTable(ct) => {
                if let Some(q) = &ct.query {
                    let shape = self.query(q, None)?;
                    self.check_store(&shape.whole(), None, "CREATE TABLE AS")?;
                }
                Plan::NoRows
            }
            Statement::CreateView(cv) => {
                let shape = self.query(&cv.query, None)?;
                let what = if cv.materialized {
                    "CREATE MATERIALIZED VIEW"
                } else {
                    "CREATE VIEW"
                };
                self.check_store(&shape.whole(), None, what)?;
                Plan::NoRows
            }
            Statement::AlterView { name, query, .. } => {
                self.check_renamable(name)?;
                let shape = self.query(query, None)?;
                self.check_store(&shape.whole(), None, "ALTER VIEW")?;
                Plan::NoRows
            }
            Statement::AlterTable(at) => {
                self.check_renamable(&at.name)?;
                Plan::NoRows
            }
            Statement::RenameTable(renames) => {
                for r in renames {
                    self.check_renamable(&r.old_name)?;
                }
                Plan::NoRows
            }
            Statement::AlterSchema(a) => {
                // The catalog cannot list a schema's relations: any schema change could move
                // a masked column out from under its glob.
                return Err(Denied::lineage(format!(
                    "ALTER SCHEMA {} could change which columns the masking rules cover",
                    a.name
                )));
            }
            // Everything else returns no rows and moves no values between relations.
            _ => Plan::NoRows,
        })
    }

    /// COPY: TO STDOUT returns rows (text format only when masked); TO a file or program
    /// stores them where they can be read back unmasked.
    fn copy(
        &mut self,
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy_options: &[CopyLegacyOption],
    ) -> R<Plan> {
        if !to {
            return Ok(Plan::NoRows);
        }
        let shape = match source {
            CopySource::Table {
                table_name,
                columns,
            } => {
                let item = self.relation_item(table_name, None, false)?;
                copy_columns(item.shape, columns)
            }
            CopySource::Query(q) => self.query(q, None)?,
        };
        let format = options
            .iter()
            .find_map(|o| match o {
                CopyOption::Format(f) => Some(f.value.to_ascii_lowercase()),
                _ => None,
            })
            .or_else(|| {
                legacy_options.iter().find_map(|o| match o {
                    CopyLegacyOption::Binary => Some("binary".to_owned()),
                    CopyLegacyOption::Csv(_) => Some("csv".to_owned()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| "text".to_owned());
        let whole = shape.whole();
        if let Some(r) = whole.rules.first() {
            if !matches!(target, CopyTarget::Stdout) {
                return Err(self.store_denial(r, "COPY to a server file or program"));
            }
            if format != "text" {
                return Err(Denied {
                    rule: RuleId::new(self.rule_id(r)),
                    message: format!(
                        "COPY in {format} format cannot be masked, and it would return values masked by {}; use the text format",
                        self.rule_id(r)
                    ),
                });
            }
        }
        Ok(match target {
            CopyTarget::Stdout => Plan::Rows(shape),
            _ => {
                self.check_store(&whole, None, "COPY to a server file or program")?;
                Plan::NoRows
            }
        })
    }

    /// DECLARE: the cursor's rows, fetched later; a BINARY cursor cannot be masked.
    fn declare(&mut self, stmts: &[ast::Declare]) -> R<Plan> {
        Ok(match stmts {
            [d] => match (&d.for_query, d.names.as_slice()) {
                (Some(q), [name]) => {
                    let rows = self.query(q, None)?;
                    if d.binary == Some(true) {
                        if let Some(r) = rows.whole().rules.first() {
                            return Err(Denied {
                        rule: RuleId::new(self.rule_id(r)),
                        message: format!(
                            "a BINARY cursor cannot be masked, and this one returns values masked by {}",
                            self.rule_id(r)
                        ),
                    });
                        }
                    }
                    Plan::Declare {
                        cursor: fold(name),
                        rows,
                    }
                }
                _ => Plan::NoRows,
            },
            _ => Plan::NoRows,
        })
    }

    /// ALTER/RENAME of a relation with covered columns could move them out from under the
    /// masking rules (renamed columns or tables, changed types, generated copies).
    pub(super) fn check_renamable(&mut self, name: &ObjectName) -> R<()> {
        let item = self.relation_item(name, None, false)?;
        if let Some(r) = item.shape.whole().rules.first() {
            return Err(Denied {
                rule: RuleId::new(self.rule_id(r)),
                message: format!(
                    "altering {name} could move columns masked by {} out of the rule's reach",
                    self.rule_id(r)
                ),
            });
        }
        Ok(())
    }

    pub(super) fn store_denial(&self, r: RuleIndex, what: &str) -> Denied {
        let id = self.rule_id(r);
        Denied {
            rule: RuleId::new(id),
            message: format!(
                "{what} would store values masked by {id} where they can be read back unmasked"
            ),
        }
    }

    /// A value deriving from `src` is stored where `dest` masks it (`None`: unmasked).
    pub(super) fn check_store(&self, src: &Taint, dest: Option<RuleIndex>, what: &str) -> R<()> {
        if let Some(r) = src.rules.first_except(dest) {
            return Err(self.store_denial(r, what));
        }
        if let (Some(why), true) = (&src.unknown, self.sensitive) {
            return Err(Denied::lineage(format!(
                "{what} reads masked data and the origin of what it stores could not be traced: {why}"
            )));
        }
        Ok(())
    }

    /// The item for a DML target (`UPDATE t`, `DELETE FROM t`, `INSERT INTO t`).
    pub(super) fn target_item(&mut self, tf: &TableFactor) -> R<(Item, Option<&'c Relation>)> {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let rel = name_parts(name).and_then(|p| match self.lookup(&p, false) {
                    Lookup::Relation(r) => Some(r),
                    _ => None,
                });
                Ok((self.relation_item(name, alias.as_ref(), false)?, rel))
            }
            _ => Err(Denied::lineage(
                "a write to something other than a table cannot be traced".into(),
            )),
        }
    }

    /// The rule covering column `col` of a write target (its own rule or, for a view, what
    /// the view column derives from).
    pub(super) fn dest_rule(&mut self, rel: Option<&'c Relation>, col: &str) -> Option<RuleIndex> {
        let rel = rel?;
        let cols = self.relation_columns(rel);
        cols.iter()
            .find(|c| &*c.name == col)
            .and_then(|c| c.taint.rules.first())
    }

    pub(super) fn insert(&mut self, ins: &Insert, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let TableObject::TableName(table) = &ins.table else {
            return Err(Denied::lineage(
                "INSERT into something other than a table cannot be traced".into(),
            ));
        };
        let source = match &ins.source {
            Some(q) => self.query(q, outer)?,
            None => Shape::Known(Vec::new()),
        };
        let needs_target = !source.whole().is_clean()
            || ins.returning.is_some()
            || ins.on.is_some()
            || ins.output.is_some();
        if !needs_target {
            return Ok(None);
        }
        let rel = name_parts(table).and_then(|p| match self.lookup(&p, false) {
            Lookup::Relation(r) => Some(r),
            _ => None,
        });
        let alias = ins.table_alias.as_ref().map(|a| TableAlias {
            explicit: true,
            name: a.alias.clone(),
            columns: Vec::new(),
            at: None,
        });
        let target = self.relation_item(table, alias.as_ref(), false)?;
        let Shape::Known(target_cols) = &target.shape else {
            // A system relation: never masked, and nothing masked can be stored there unseen.
            self.check_store(&source.whole(), None, "INSERT")?;
            return Ok(None);
        };
        let dest_names: Vec<Rc<str>> = if ins.columns.is_empty() {
            target_cols.iter().map(|c| c.name.clone()).collect()
        } else {
            ins.columns
                .iter()
                .map(|c| last_name(c).unwrap_or_else(|| Rc::from("")))
                .collect()
        };
        // What each target column receives, for the check and for `excluded.*`.
        let mut received: Vec<Col> = target_cols
            .iter()
            .map(|c| Col {
                name: c.name.clone(),
                taint: Taint::default(),
            })
            .collect();
        let what = format!("INSERT INTO {table}");
        match &source {
            Shape::Known(cols) => {
                for (i, src) in cols.iter().enumerate() {
                    let dest = dest_names.get(i).cloned().unwrap_or_else(|| Rc::from(""));
                    let rule = self.dest_rule(rel, &dest);
                    self.check_store(&src.taint, rule, &format!("{what} ({dest})"))?;
                    if let Some(r) = received.iter_mut().find(|r| r.name == dest) {
                        r.taint.union(&src.taint);
                    }
                }
            }
            Shape::Opaque(t) => {
                self.check_store(t, None, &what)?;
                for r in &mut received {
                    r.taint.union(t);
                }
            }
        }
        let excluded = Item {
            name: "excluded".into(),
            schema: None,
            shape: Shape::Known(received),
        };
        let scope = Scope {
            items: vec![target, excluded],
            parent: outer,
        };
        if let Some(ast::OnInsert::OnConflict(oc)) = &ins.on {
            if let ast::OnConflictAction::DoUpdate(du) = &oc.action {
                self.assignments(
                    &du.assignments,
                    &scope,
                    rel,
                    "INSERT ... ON CONFLICT DO UPDATE",
                )?;
            }
        }
        if let Some(ast::OnInsert::DuplicateKeyUpdate(a)) = &ins.on {
            self.assignments(a, &scope, rel, "INSERT ... ON DUPLICATE KEY UPDATE")?;
        }
        let returning = ins.returning.as_deref().or(match &ins.output {
            Some(ast::OutputClause::Returning { select_items, .. }) => Some(select_items),
            Some(ast::OutputClause::Output { select_items, .. }) => Some(select_items),
            None => None,
        });
        match returning {
            Some(items) => {
                // RETURNING sees the target only.
                let scope = Scope {
                    items: scope.items.into_iter().take(1).collect(),
                    parent: outer,
                };
                Ok(Some(self.projection(items, &scope)?))
            }
            None => Ok(None),
        }
    }

    /// `SET col = value, (a, b) = (...)` against a target relation.
    pub(super) fn assignments(
        &mut self,
        assignments: &[ast::Assignment],
        scope: &Scope<'_>,
        rel: Option<&'c Relation>,
        what: &str,
    ) -> R<()> {
        for a in assignments {
            let targets: Vec<&ObjectName> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![n],
                AssignmentTarget::Tuple(ns) => ns.iter().collect(),
            };
            let values: Vec<Taint> = match (&a.value, targets.len()) {
                (Expr::Tuple(es), n) if es.len() == n => {
                    let mut v = Vec::with_capacity(n);
                    for e in es {
                        v.push(self.expr(e, scope)?);
                    }
                    v
                }
                (e, n) => vec![self.expr(e, scope)?; n],
            };
            for (t, v) in targets.iter().zip(&values) {
                // `SET col[1] = ..`, `SET col.field = ..`: the first part names the column.
                let col = match t.0.first() {
                    Some(ObjectNamePart::Identifier(i)) => fold(i),
                    _ => Rc::from(""),
                };
                let rule = self.dest_rule(rel, &col);
                self.check_store(v, rule, &format!("{what} (SET {col})"))?;
            }
        }
        Ok(())
    }

    pub(super) fn update(
        &mut self,
        up: &ast::Update,
        outer: Option<&Scope<'_>>,
    ) -> R<Option<Shape>> {
        let (target, rel) = self.target_item(&up.table.relation)?;
        let mut items = vec![target];
        for j in &up.table.joins {
            self.join_factor(j, &mut items, outer)?;
        }
        if let Some(from) = &up.from {
            let (ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) =
                from;
            self.add_from(f, &mut items, outer)?;
        }
        let scope = Scope {
            items,
            parent: outer,
        };
        if let Some(w) = &up.selection {
            self.check_predicate(w, &scope, "WHERE")?;
        }
        self.assignments(&up.assignments, &scope, rel, "UPDATE")?;
        let returning = up.returning.as_deref().or(match &up.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Some(select_items),
            None => None,
        });
        returning
            .map(|items| self.projection(items, &scope))
            .transpose()
    }

    pub(super) fn delete(
        &mut self,
        del: &ast::Delete,
        outer: Option<&Scope<'_>>,
    ) -> R<Option<Shape>> {
        let returning = del.returning.as_deref().or(match &del.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Some(select_items),
            None => None,
        });
        if returning.is_none() && !self.checks_predicates() {
            return Ok(None);
        }
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &del.from;
        let mut items = Vec::new();
        self.add_from(from, &mut items, outer)?;
        if let Some(using) = &del.using {
            self.add_from(using, &mut items, outer)?;
        }
        let scope = Scope {
            items,
            parent: outer,
        };
        if let Some(w) = &del.selection {
            self.check_predicate(w, &scope, "WHERE")?;
        }
        returning
            .map(|items| self.projection(items, &scope))
            .transpose()
    }

    pub(super) fn merge(&mut self, m: &ast::Merge, outer: Option<&Scope<'_>>) -> R<Option<Shape>> {
        let (target, rel) = self.target_item(&m.table)?;
        let mut items = vec![target];
        self.factor(&m.source, &mut items, outer)?;
        let scope = Scope {
            items,
            parent: outer,
        };
        self.check_predicate(&m.on, &scope, "MERGE ... ON")?;
        for clause in &m.clauses {
            if let Some(p) = &clause.predicate {
                self.check_predicate(p, &scope, "MERGE ... WHEN ... AND")?;
            }
            match &clause.action {
                ast::MergeAction::Update(u) => match &u.kind {
                    ast::MergeUpdateKind::Set(a) => {
                        self.assignments(a, &scope, rel, "MERGE ... UPDATE")?
                    }
                    #[allow(unreachable_patterns)]
                    _ => {
                        let t = scope
                            .items
                            .get(1)
                            .map(|i| i.shape.whole())
                            .unwrap_or_default();
                        self.check_store(&t, None, "MERGE ... UPDATE SET *")?;
                    }
                },
                ast::MergeAction::Insert(ins) => {
                    let names: Vec<Rc<str>> = if ins.columns.is_empty() {
                        rel.map(|r| r.columns.iter().map(|c| Rc::from(&*c.name)).collect())
                            .unwrap_or_default()
                    } else {
                        ins.columns
                            .iter()
                            .map(|c| last_name(c).unwrap_or_else(|| Rc::from("")))
                            .collect()
                    };
                    match &ins.kind {
                        ast::MergeInsertKind::Values(v) => {
                            for row in &v.rows {
                                for (i, e) in row.content.iter().enumerate() {
                                    let t = self.expr(e, &scope)?;
                                    let dest =
                                        names.get(i).cloned().unwrap_or_else(|| Rc::from(""));
                                    let rule = self.dest_rule(rel, &dest);
                                    self.check_store(
                                        &t,
                                        rule,
                                        &format!("MERGE ... INSERT ({dest})"),
                                    )?;
                                }
                            }
                        }
                        #[allow(unreachable_patterns)]
                        _ => {
                            let t = scope
                                .items
                                .get(1)
                                .map(|i| i.shape.whole())
                                .unwrap_or_default();
                            self.check_store(&t, None, "MERGE ... INSERT ROW")?;
                        }
                    }
                }
                ast::MergeAction::Delete { .. } | ast::MergeAction::DoNothing { .. } => {}
            }
        }
        match &m.output {
            Some(
                ast::OutputClause::Returning { select_items, .. }
                | ast::OutputClause::Output { select_items, .. },
            ) => Ok(Some(self.projection(select_items, &scope)?)),
            None => Ok(None),
        }
    }
}
