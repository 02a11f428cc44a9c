//! Expressions: what each value derives from, through column references and subqueries.

use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Query, Visit, Visitor,
};

use super::scope::*;
use super::taint::*;
use super::*;

impl<'c> Ctx<'c> {
    /// What an expression's value derives from.
    pub(super) fn expr(&mut self, e: &Expr, scope: &Scope<'_>) -> R<Taint> {
        let mut w = ExprWalk::new(self, scope);
        match e.visit(&mut w) {
            ControlFlow::Continue(()) => Ok(w.taint),
            ControlFlow::Break(d) => Err(d),
        }
    }

    /// The generic walk over any node: every expression and subquery in it taints the result.
    pub(super) fn generic<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) -> R<Taint> {
        let mut w = ExprWalk::new(self, scope);
        match node.visit(&mut w) {
            ControlFlow::Continue(()) => Ok(w.taint),
            ControlFlow::Break(d) => Err(d),
        }
    }

    /// A column reference (`x`, `t.x`, `s.t.x`, `db.s.t.x`, or a whole row `t`).
    pub(super) fn column_ref(&self, idents: &[Ident], scope: &Scope<'_>) -> Taint {
        let parts: Vec<Rc<str>> = idents.iter().map(fold).collect();
        let quoted = idents.first().is_some_and(|i| i.quote_style.is_some());
        match parts.as_slice() {
            [] => Taint::default(),
            [x] => resolve_unqualified(scope, x, quoted),
            [t, c] => match qualified(scope, None, t, c) {
                Some(taint) => taint,
                // `composite_column.field`
                None => resolve_unqualified(scope, t, quoted),
            },
            [.., s, t, c] => match qualified(scope, Some(s), t, c) {
                Some(taint) => taint,
                None => {
                    // `table.composite_column.field` or deeper field access.
                    let [a, b, ..] = parts.as_slice() else {
                        return Taint::unknown("an unresolvable column reference");
                    };
                    qualified(scope, None, a, b)
                        .unwrap_or_else(|| resolve_unqualified(scope, a, quoted))
                }
            },
        }
    }
}

/// `count(...)` returns how many, never a value.
pub(super) fn is_count(f: &ast::Function) -> bool {
    match name_parts(&f.name).as_deref() {
        Some([n]) => &**n == "count",
        Some([s, n]) => &**s == "pg_catalog" && &**n == "count",
        _ => false,
    }
}

/// The expression walk: sqlparser's visitor finds every column reference and subquery at
/// this query level; subqueries are traced on their own (with this level as their outer
/// scope), and their nodes are not looked at again by this walk.
pub(super) struct ExprWalk<'a, 'c, 's> {
    pub(super) cx: &'a mut Ctx<'c>,
    pub(super) scope: &'a Scope<'s>,
    /// Queries entered below the root (their expressions belong to them).
    pub(super) depth: usize,
    /// Expressions whose subtree carries no value into the result (window specs, FILTER,
    /// the field names of `(row).field`).
    pub(super) skip: Vec<*const Expr>,
    /// The skipped expression being walked, if any.
    pub(super) skipping: Option<*const Expr>,
    pub(super) taint: Taint,
}

impl<'a, 'c, 's> ExprWalk<'a, 'c, 's> {
    pub(super) fn new(cx: &'a mut Ctx<'c>, scope: &'a Scope<'s>) -> Self {
        Self {
            cx,
            scope,
            depth: 0,
            skip: Vec::new(),
            skipping: None,
            taint: Taint::default(),
        }
    }

    pub(super) fn active(&self) -> bool {
        self.depth == 0 && self.skipping.is_none()
    }
}

impl Visitor for ExprWalk<'_, '_, '_> {
    type Break = Denied;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Denied> {
        if self.active() {
            match self.cx.query(q, Some(self.scope)) {
                Ok(shape) => self.taint.union(&shape.whole()),
                Err(d) => return ControlFlow::Break(d),
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<Denied> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Denied> {
        if !self.active() {
            return ControlFlow::Continue(());
        }
        let ptr: *const Expr = e;
        if self.skip.iter().any(|s| std::ptr::eq(*s, ptr)) {
            self.skipping = Some(ptr);
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Identifier(i) => {
                let t = self.cx.column_ref(std::slice::from_ref(i), self.scope);
                self.taint.union(&t);
            }
            Expr::CompoundIdentifier(ids) => {
                let t = self.cx.column_ref(ids, self.scope);
                self.taint.union(&t);
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                // `(c).name`: the root carries the value; `.name` is a field, not a column.
                for a in access_chain {
                    if let ast::AccessExpr::Dot(d) = a {
                        self.skip.push(d);
                    }
                }
            }
            Expr::Wildcard(_) => self.taint.union(&every_item(self.scope)),
            Expr::QualifiedWildcard(n, _) => self.taint.union(&whole_row(self.scope, n)),
            Expr::Function(f) => {
                // FILTER and the window choose and order rows (also for count).
                if let Some(filter) = &f.filter {
                    if let Err(d) = self.cx.check_predicate(filter, self.scope, "FILTER") {
                        return ControlFlow::Break(d);
                    }
                }
                if let Some(ast::WindowType::WindowSpec(spec)) = &f.over {
                    if let Err(d) = self.cx.check_window(spec, self.scope) {
                        return ControlFlow::Break(d);
                    }
                }
                if is_count(f) {
                    self.skipping = Some(ptr);
                    return ControlFlow::Continue(());
                }
                // A user-defined function's result derives from its body too.
                if let Some(call) = self.cx.user_function(&f.name) {
                    self.taint.union(&call.taint);
                }
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        // `f(name => value)`: the name is a parameter, not a column.
                        if let FunctionArg::ExprNamed { name, .. } = a {
                            self.skip.push(name);
                        }
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        match arg {
                            FunctionArgExpr::QualifiedWildcard(n) => {
                                self.taint.union(&whole_row(self.scope, n))
                            }
                            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                                self.taint.union(&every_item(self.scope))
                            }
                            FunctionArgExpr::Expr(_) => {}
                        }
                    }
                }
                if let Some(filter) = &f.filter {
                    self.skip.push(&**filter);
                }
                if let Some(ast::WindowType::WindowSpec(spec)) = &f.over {
                    for p in &spec.partition_by {
                        self.skip.push(p);
                    }
                    for o in &spec.order_by {
                        self.skip.push(&o.expr);
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<Denied> {
        let ptr: *const Expr = e;
        if self.depth == 0 && self.skipping.is_some_and(|s| std::ptr::eq(s, ptr)) {
            self.skipping = None;
        }
        ControlFlow::Continue(())
    }
}
