//! `predicates: deny` on a masking rule: statements that choose, order, group or join rows by a column it masks are refused.

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, JoinConstraint, NamedWindowExpr, OrderBy, OrderByKind, Select,
    TableFactor, TableWithJoins, Value, WindowSpec,
};

use super::scope::*;
use super::taint::*;
use super::*;

impl<'c> Ctx<'c> {
    /// Whether any rule of the policy refuses predicates on what it masks.
    pub(super) fn checks_predicates(&self) -> bool {
        !self.predicate_rules.is_empty()
    }

    /// Refuses `e`, used in `clause`, if it derives from a column whose rule says
    /// `predicates: deny` (or, in a statement that reads masked data, from something
    /// untraceable).
    pub(super) fn check_predicate(&mut self, e: &Expr, scope: &Scope<'_>, clause: &str) -> R<()> {
        if !self.checks_predicates() {
            return Ok(());
        }
        let t = self.expr(e, scope)?;
        self.check_predicate_taint(&t, clause)
    }

    pub(super) fn check_predicate_taint(&self, t: &Taint, clause: &str) -> R<()> {
        if let Some(r) = t.rules.first_common(&self.predicate_rules) {
            let id = self.rule_id(r);
            return Err(Denied {
                rule: RuleId::new(id),
                message: format!(
                    "{clause} uses a column masked by {id}, which refuses predicates on its columns (masking predicates: deny)"
                ),
            });
        }
        if let (Some(why), true) = (&t.unknown, self.sensitive) {
            return Err(Denied::lineage(format!(
                "{clause} uses a value whose lineage cannot be traced ({why}), and masking predicates are denied"
            )));
        }
        Ok(())
    }

    /// WHERE, GROUP BY, HAVING, QUALIFY, DISTINCT ON, JOIN ... ON/USING, named windows and
    /// (`order`) the query's ORDER BY of one SELECT level, over its FROM scope and its
    /// output columns (`output`).
    pub(super) fn check_select_predicates(
        &mut self,
        s: &Select,
        scope: &Scope<'_>,
        output: &Shape,
        order: Option<&OrderBy>,
    ) -> R<()> {
        if !self.checks_predicates() {
            return Ok(());
        }
        let scope = &with_output(scope, output);
        if let Some(w) = &s.selection {
            self.check_predicate(w, scope, "WHERE")?;
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                self.check_sort_key(e, scope, output, "GROUP BY")?;
            }
        }
        if let Some(h) = &s.having {
            self.check_predicate(h, scope, "HAVING")?;
        }
        if let Some(q) = &s.qualify {
            self.check_predicate(q, scope, "QUALIFY")?;
        }
        if let Some(Distinct::On(exprs)) = &s.distinct {
            for e in exprs {
                self.check_sort_key(e, scope, output, "DISTINCT ON")?;
            }
        }
        for w in &s.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.check_window(spec, scope)?;
            }
        }
        for twj in &s.from {
            self.check_joins(twj, scope)?;
        }
        if let Some(order) = order {
            self.check_order_by(order, scope, output)?;
        }
        Ok(())
    }

    /// A GROUP BY / ORDER BY / DISTINCT ON key. An output column number (`ORDER BY 2`) counts
    /// as every output column: the mask plan must not depend on a literal's value, because
    /// the data plane shares it between texts that differ only in constants.
    fn check_sort_key(
        &mut self,
        e: &Expr,
        scope: &Scope<'_>,
        output: &Shape,
        clause: &str,
    ) -> R<()> {
        if let Expr::Value(v) = e {
            if matches!(v.value, Value::Number(..)) {
                return self.check_predicate_taint(&output.whole(), clause);
            }
        }
        self.check_predicate(e, scope, clause)
    }

    /// A window's PARTITION BY and ORDER BY.
    pub(super) fn check_window(&mut self, spec: &WindowSpec, scope: &Scope<'_>) -> R<()> {
        for p in &spec.partition_by {
            self.check_predicate(p, scope, "a window's PARTITION BY")?;
        }
        for o in &spec.order_by {
            self.check_predicate(&o.expr, scope, "a window's ORDER BY")?;
        }
        Ok(())
    }

    pub(super) fn check_joins(&mut self, twj: &TableWithJoins, scope: &Scope<'_>) -> R<()> {
        self.check_nested_join(&twj.relation, scope)?;
        for j in &twj.joins {
            self.check_nested_join(&j.relation, scope)?;
            let Some(c) = super::query::constraint(&j.join_operator) else {
                continue;
            };
            match c {
                JoinConstraint::On(e) => self.check_predicate(e, scope, "JOIN ... ON")?,
                JoinConstraint::Using(names) => {
                    for n in names {
                        let idents: Vec<_> =
                            n.0.iter().filter_map(|p| p.as_ident().cloned()).collect();
                        let t = self.column_ref(&idents, scope);
                        self.check_predicate_taint(&t, "JOIN ... USING")?;
                    }
                }
                // A natural join compares every column the two sides share.
                JoinConstraint::Natural => {
                    self.check_predicate_taint(&every_item(scope), "NATURAL JOIN")?
                }
                JoinConstraint::None => {}
            }
        }
        Ok(())
    }

    fn check_nested_join(&mut self, tf: &TableFactor, scope: &Scope<'_>) -> R<()> {
        if let TableFactor::NestedJoin {
            table_with_joins, ..
        } = tf
        {
            self.check_joins(table_with_joins, scope)?;
        }
        Ok(())
    }

    /// ORDER BY of a query over `scope` (which holds the output columns as an item too).
    pub(super) fn check_order_by(
        &mut self,
        order: &OrderBy,
        scope: &Scope<'_>,
        output: &Shape,
    ) -> R<()> {
        let OrderByKind::Expressions(exprs) = &order.kind else {
            // ORDER BY ALL sorts by every output column.
            return self.check_predicate_taint(&output.whole(), "ORDER BY");
        };
        for o in exprs {
            self.check_sort_key(&o.expr, scope, output, "ORDER BY")?;
        }
        Ok(())
    }
}

/// `scope` with the output columns as one more (unnamed) item, for clauses that may name
/// an output column (`SELECT ssn AS s ... ORDER BY s`). Where a name means both, both count.
pub(super) fn with_output<'s>(scope: &Scope<'s>, output: &Shape) -> Scope<'s> {
    let out = Item {
        name: "".into(),
        schema: None,
        shape: output.clone(),
    };
    Scope {
        items: scope.items.iter().cloned().chain([out]).collect(),
        parent: scope.parent,
    }
}
