//! Queries, set operations, select lists and FROM items.

use std::rc::Rc;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Ident, JoinConstraint, JoinOperator, ObjectName,
    Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, TableAlias, TableFactor,
    TableWithJoins,
};

use super::predicates;
use super::scope::*;
use super::taint::*;
use super::*;

impl<'c> Ctx<'c> {
    pub(super) fn query(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Shape> {
        if self.depth >= MAX_QUERY_DEPTH {
            self.sensitive = true;
            return Ok(Shape::Opaque(Taint::unknown(
                "queries are nested too deeply to trace",
            )));
        }
        self.depth += 1;
        let frames = self.ctes.len();
        let r = self.query_inner(q, outer);
        self.ctes.truncate(frames);
        self.depth -= 1;
        r
    }

    pub(super) fn query_inner(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Shape> {
        if let Some(with) = &q.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                let shape = if with.recursive {
                    self.recursive_cte(&name, cte, outer)?
                } else {
                    self.query(&cte.query, outer)?
                };
                let shape = shape.renamed(Some(&cte.alias));
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push((name, shape));
                }
            }
        }
        match (&*q.body, &q.order_by) {
            (SetExpr::Select(s), Some(order)) if self.checks_predicates() => {
                self.select(s, outer, Some(order))
            }
            (_, Some(order)) if self.checks_predicates() => {
                let shape = self.set_expr(&q.body, outer)?;
                let scope = predicates::with_output(
                    &Scope {
                        items: Vec::new(),
                        parent: outer,
                    },
                    &shape,
                );
                self.check_order_by(order, &scope, &shape)?;
                Ok(shape)
            }
            _ => self.set_expr(&q.body, outer),
        }
    }

    /// A recursive CTE: start from its non-recursive branch, then re-trace the whole body
    /// with the CTE bound to what is known so far, until nothing changes.
    pub(super) fn recursive_cte(
        &mut self,
        name: &Rc<str>,
        cte: &ast::Cte,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let seed = match &*cte.query.body {
            SetExpr::SetOperation { left, .. } => self.set_expr(left, outer)?,
            _ => return self.query(&cte.query, outer),
        };
        let mut current = seed.renamed(Some(&cte.alias));
        for _ in 0..MAX_FIXPOINT_PASSES {
            if let Some(frame) = self.ctes.last_mut() {
                frame.push((name.clone(), current.clone()));
            }
            let next = self.query(&cte.query, outer);
            if let Some(frame) = self.ctes.last_mut() {
                frame.pop();
            }
            let next = merge_positional(&current, &next?.renamed(Some(&cte.alias)));
            if same_taints(&next, &current) {
                return Ok(next);
            }
            current = next;
        }
        self.sensitive = true;
        Ok(Shape::Opaque(Taint::unknown(format!(
            "recursive query \"{name}\" did not settle"
        ))))
    }

    pub(super) fn set_expr(&mut self, body: &SetExpr, outer: Option<&Scope<'_>>) -> R<Shape> {
        match body {
            SetExpr::Select(s) => self.select(s, outer, None),
            SetExpr::Query(q) => self.query(q, outer),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left, outer)?;
                let r = self.set_expr(right, outer)?;
                Ok(merge_positional(&l, &r))
            }
            SetExpr::Values(v) => {
                let scope = Scope {
                    items: Vec::new(),
                    parent: outer,
                };
                let mut cols: Vec<Col> = Vec::new();
                for row in &v.rows {
                    if !cols.is_empty() && row.content.len() != cols.len() {
                        let mut t = Shape::Known(cols).whole();
                        t.union(&Taint::unknown("VALUES rows of different lengths"));
                        return Ok(Shape::Opaque(t));
                    }
                    for (i, e) in row.content.iter().enumerate() {
                        let t = self.expr(e, &scope)?;
                        match cols.get_mut(i) {
                            Some(c) => c.taint.union(&t),
                            None => cols.push(Col {
                                name: format!("column{}", i + 1).into(),
                                taint: t,
                            }),
                        }
                    }
                }
                Ok(Shape::Known(cols))
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                // A data-modifying CTE: its writes are checked, RETURNING is its result.
                match self.statement(s, outer)? {
                    Plan::Rows(shape) => Ok(shape),
                    _ => Ok(Shape::Known(Vec::new())),
                }
            }
            SetExpr::Table(t) => {
                let Some(name) = &t.table_name else {
                    return Err(Denied::lineage("TABLE without a name".into()));
                };
                let mut parts: Vec<Rc<str>> = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(s.to_ascii_lowercase().into());
                }
                parts.push(name.to_ascii_lowercase().into());
                let obj = ObjectName::from(
                    parts
                        .iter()
                        .map(|p| Ident::with_quote('"', &**p))
                        .collect::<Vec<_>>(),
                );
                Ok(self.relation_item(&obj, None, true)?.shape)
            }
        }
    }

    /// One SELECT level; `order` is its query's ORDER BY when predicates are checked.
    pub(super) fn select(
        &mut self,
        s: &Select,
        outer: Option<&Scope<'_>>,
        order: Option<&ast::OrderBy>,
    ) -> R<Shape> {
        let mut items = Vec::new();
        let star = self.add_from(&s.from, &mut items, outer)?;
        let scope = Scope {
            items,
            parent: outer,
        };
        let shape = self.projection_with_star(&s.projection, &scope, star)?;
        self.check_select_predicates(s, &scope, &shape, order)?;
        Ok(shape)
    }

    /// A select list over `scope` (RETURNING lists too: `*` is every item's columns).
    pub(super) fn projection(&mut self, list: &[SelectItem], scope: &Scope<'_>) -> R<Shape> {
        let mut star = Shape::Known(Vec::new());
        for item in &scope.items {
            star = concat(star, item.shape.clone());
        }
        self.projection_with_star(list, scope, star)
    }

    pub(super) fn projection_with_star(
        &mut self,
        list: &[SelectItem],
        scope: &Scope<'_>,
        star: Shape,
    ) -> R<Shape> {
        let mut out = Shape::Known(Vec::with_capacity(list.len()));
        for item in list {
            let part = match item {
                SelectItem::UnnamedExpr(e) => Shape::Known(vec![Col {
                    name: expr_name(e),
                    taint: self.expr(e, scope)?,
                }]),
                SelectItem::ExprWithAlias { expr, alias } => Shape::Known(vec![Col {
                    name: fold(alias),
                    taint: self.expr(expr, scope)?,
                }]),
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let t = self.expr(expr, scope)?;
                    Shape::Known(
                        aliases
                            .iter()
                            .map(|a| Col {
                                name: fold(a),
                                taint: t.clone(),
                            })
                            .collect(),
                    )
                }
                SelectItem::Wildcard(opts) => {
                    if has_options(opts) {
                        let mut t = star.whole();
                        t.union(&Taint::unknown("`*` with options"));
                        Shape::Opaque(t)
                    } else if scope.items.is_empty() {
                        Shape::Opaque(Taint::unknown("`*` without a FROM clause"))
                    } else {
                        star.clone()
                    }
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    let shape = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            match find_item(scope, n) {
                                Some(item) => item.shape.clone(),
                                None => Shape::Opaque(Taint::unknown(format!(
                                    "{n}.* names no FROM item"
                                ))),
                            }
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let mut t = self.expr(e, scope)?;
                            t.union(&Taint::unknown("(expression).* has no known columns"));
                            Shape::Opaque(t)
                        }
                    };
                    if has_options(opts) {
                        let mut t = shape.whole();
                        t.union(&Taint::unknown("`.*` with options"));
                        Shape::Opaque(t)
                    } else {
                        shape
                    }
                }
            };
            out = concat(out, part);
        }
        Ok(out)
    }

    // ---- FROM ---------------------------------------------------------------------------

    /// Adds the FROM items of `from` to `items`; returns what `*` expands to.
    pub(super) fn add_from(
        &mut self,
        from: &[TableWithJoins],
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let mut star = Shape::Known(Vec::new());
        for twj in from {
            let s = self.table_with_joins(twj, items, outer)?;
            star = concat(star, s);
        }
        Ok(star)
    }

    pub(super) fn table_with_joins(
        &mut self,
        twj: &TableWithJoins,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let mut star = self.factor(&twj.relation, items, outer)?;
        for j in &twj.joins {
            let right = self.factor(&j.relation, items, outer)?;
            star = join_star(star, right, join_constraint(&j.join_operator));
        }
        Ok(star)
    }

    pub(super) fn join_factor(
        &mut self,
        j: &ast::Join,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        self.factor(&j.relation, items, outer)
    }

    /// Adds one FROM item (or the items of a parenthesised join) to `items`; returns its `*`.
    /// Items already in `items` are visible to it (LATERAL, and function arguments).
    pub(super) fn factor(
        &mut self,
        tf: &TableFactor,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
    ) -> R<Shape> {
        let item = match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.relation_item(name, alias.as_ref(), true)?,
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                with_ordinality,
                ..
            } => self.with_lateral(items, outer, |cx, scope| {
                cx.function_item(name, &args.args, *with_ordinality, alias.as_ref(), scope)
            })?,
            TableFactor::Function {
                name,
                args,
                with_ordinality,
                alias,
                ..
            } => self.with_lateral(items, outer, |cx, scope| {
                cx.function_item(name, args, *with_ordinality, alias.as_ref(), scope)
            })?,
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let shape =
                    self.with_lateral(items, outer, |cx, scope| cx.query(subquery, Some(scope)))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: shape.renamed(alias.as_ref()),
                }
            }
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_ordinality,
                with_offset,
                ..
            } => {
                let mut cols = Vec::with_capacity(array_exprs.len() + 1);
                for e in array_exprs {
                    let t = self.with_lateral(items, outer, |cx, scope| cx.expr(e, scope))?;
                    cols.push(Col {
                        name: "unnest".into(),
                        taint: t,
                    });
                }
                if *with_ordinality || *with_offset {
                    cols.push(Col {
                        name: "ordinality".into(),
                        taint: Taint::default(),
                    });
                }
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| "unnest".into(), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Known(cols).renamed(alias.as_ref()),
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let Some(alias) = alias else {
                    return self.table_with_joins(table_with_joins, items, outer);
                };
                // `(a JOIN b) AS j`: only `j` is visible outside.
                let mut inner = Vec::new();
                let star = self.with_lateral(items, outer, |cx, scope| {
                    cx.table_with_joins(table_with_joins, &mut inner, Some(scope))
                })?;
                Item {
                    name: fold(&alias.name),
                    schema: None,
                    shape: star.renamed(Some(alias)),
                }
            }
            TableFactor::TableFunction { expr, alias } => {
                let t = self.with_lateral(items, outer, |cx, scope| cx.expr(expr, scope))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Opaque(t),
                }
            }
            TableFactor::JsonTable { alias, .. } | TableFactor::XmlTable { alias, .. } => {
                // Every column derives from the document expression(s).
                let t = self.with_lateral(items, outer, |cx, scope| cx.generic(tf, scope))?;
                Item {
                    name: alias
                        .as_ref()
                        .map_or_else(|| Rc::from(""), |a| fold(&a.name)),
                    schema: None,
                    shape: Shape::Opaque(t),
                }
            }
            _ => {
                // Other dialects' FROM items (PIVOT, MATCH_RECOGNIZE, ...): PostgreSQL has
                // none of them; nothing under them is traced.
                self.sensitive = true;
                Item {
                    name: Rc::from(""),
                    schema: None,
                    shape: Shape::Opaque(Taint::unknown("an unsupported FROM item")),
                }
            }
        };
        let star = item.shape.clone();
        items.push(item);
        Ok(star)
    }

    /// Runs `f` with the items so far visible as the innermost scope.
    pub(super) fn with_lateral<T>(
        &mut self,
        items: &mut Vec<Item>,
        outer: Option<&Scope<'_>>,
        f: impl FnOnce(&mut Self, &Scope<'_>) -> R<T>,
    ) -> R<T> {
        let scope = Scope {
            items: std::mem::take(items),
            parent: outer,
        };
        let r = f(self, &scope);
        *items = scope.items;
        r
    }

    /// A function in FROM: every column derives from every argument.
    pub(super) fn function_item(
        &mut self,
        name: &ObjectName,
        args: &[FunctionArg],
        ordinality: bool,
        alias: Option<&TableAlias>,
        scope: &Scope<'_>,
    ) -> R<Item> {
        let mut taint = Taint::default();
        for a in args {
            let t = self.function_arg(a, scope)?;
            taint.union(&t);
        }
        let parts = name_parts(name).unwrap_or_default();
        let item_name_of = |alias: Option<&TableAlias>, fname: &Rc<str>| {
            alias.map_or_else(|| fname.clone(), |a| fold(&a.name))
        };
        if let Some(call) = self.user_function(name) {
            if let Some(mut cols) = call.columns {
                // `FROM f()` where f returns a relation's rows: that relation's columns.
                for c in &mut cols {
                    c.taint.union(&taint);
                }
                if ordinality {
                    cols.push(Col {
                        name: "ordinality".into(),
                        taint: Taint::default(),
                    });
                }
                let fname = parts.last().cloned().unwrap_or_else(|| Rc::from(""));
                return Ok(Item {
                    name: item_name_of(alias, &fname),
                    schema: None,
                    shape: Shape::Known(cols).renamed(alias),
                });
            }
            taint.union(&call.taint);
        }
        let builtin = match parts.as_slice() {
            [n] => Some(n.clone()),
            [s, n] if &**s == "pg_catalog" => Some(n.clone()),
            _ => None,
        };
        let fname = parts.last().cloned().unwrap_or_else(|| Rc::from(""));
        let single = |n: &str| -> Vec<Rc<str>> { vec![n.into()] };
        let names: Option<Vec<Rc<str>>> = match builtin.as_deref() {
            Some("unnest") => Some(vec![fname.clone(); args.len().max(1)]),
            Some("json_each" | "jsonb_each" | "json_each_text" | "jsonb_each_text") => {
                Some(vec!["key".into(), "value".into()])
            }
            Some(
                "generate_series"
                | "generate_subscripts"
                | "regexp_split_to_table"
                | "regexp_matches"
                | "string_to_table"
                | "json_array_elements"
                | "jsonb_array_elements"
                | "json_array_elements_text"
                | "jsonb_array_elements_text"
                | "json_object_keys"
                | "jsonb_object_keys"
                | "jsonb_path_query"
                | "upper"
                | "lower"
                | "substr"
                | "concat"
                | "coalesce"
                | "now"
                | "random",
            ) => Some(single(&fname)),
            _ => alias
                .filter(|a| !a.columns.is_empty())
                .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect()),
        };
        let item_name = alias.map_or_else(|| fname.clone(), |a| fold(&a.name));
        let shape = match names {
            Some(mut names) => {
                // A scalar-valued function's one column takes the alias's name.
                if names.len() == 1 && alias.is_some_and(|a| a.columns.is_empty()) {
                    names[0] = item_name.clone();
                }
                let mut cols: Vec<Col> = names
                    .into_iter()
                    .map(|n| Col {
                        name: n,
                        taint: taint.clone(),
                    })
                    .collect();
                if ordinality {
                    cols.push(Col {
                        name: "ordinality".into(),
                        taint: Taint::default(),
                    });
                }
                Shape::Known(cols).renamed(alias)
            }
            None => Shape::Opaque(taint),
        };
        Ok(Item {
            name: item_name,
            schema: None,
            shape,
        })
    }

    pub(super) fn function_arg(&mut self, a: &FunctionArg, scope: &Scope<'_>) -> R<Taint> {
        let arg = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        Ok(match arg {
            FunctionArgExpr::Expr(e) => self.expr(e, scope)?,
            FunctionArgExpr::QualifiedWildcard(n) => whole_row(scope, n),
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                every_item(scope)
            }
        })
    }
}

pub(super) fn has_options(o: &ast::WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_some()
        || o.opt_exclude.is_some()
        || o.opt_except.is_some()
        || o.opt_replace.is_some()
        || o.opt_rename.is_some()
}

/// The column name PostgreSQL gives an unaliased select-list expression (close enough for
/// messages: the mask is positional).
pub(super) fn expr_name(e: &Expr) -> Rc<str> {
    match e {
        Expr::Identifier(i) => fold(i),
        Expr::CompoundIdentifier(ids) => ids.last().map_or_else(|| "?column?".into(), fold),
        Expr::Function(f) => last_name(&f.name).unwrap_or_else(|| "?column?".into()),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        _ => "?column?".into(),
    }
}

/// Columns side by side (`SELECT a, b`, `FROM x, y`).
pub(super) fn concat(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Shape::Known(mut x), Shape::Known(y)) => {
            x.extend(y);
            Shape::Known(x)
        }
        (a, b) => {
            let mut t = a.whole();
            t.union(&b.whole());
            Shape::Opaque(t)
        }
    }
}

/// Column i of a UNION/INTERSECT/EXCEPT derives from column i of both sides.
pub(super) fn merge_positional(a: &Shape, b: &Shape) -> Shape {
    match (a, b) {
        (Shape::Known(x), Shape::Known(y)) if x.len() == y.len() => Shape::Known(
            x.iter()
                .zip(y)
                .map(|(l, r)| {
                    let mut taint = l.taint.clone();
                    taint.union(&r.taint);
                    Col {
                        name: l.name.clone(),
                        taint,
                    }
                })
                .collect(),
        ),
        (a, b) => {
            let mut t = a.whole();
            t.union(&b.whole());
            if matches!((a, b), (Shape::Known(_), Shape::Known(_))) {
                t.union(&Taint::unknown(
                    "set operation branches of different widths",
                ));
            }
            Shape::Opaque(t)
        }
    }
}

pub(super) fn same_taints(a: &Shape, b: &Shape) -> bool {
    match (a, b) {
        (Shape::Known(x), Shape::Known(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(l, r)| l.taint == r.taint)
        }
        (Shape::Opaque(x), Shape::Opaque(y)) => x == y,
        _ => false,
    }
}

pub(super) enum Merge {
    None,
    Using(Vec<Rc<str>>),
    Natural,
}

pub(super) fn join_constraint(op: &JoinOperator) -> Merge {
    let Some(c) = constraint(op) else {
        return Merge::None;
    };
    match c {
        JoinConstraint::Using(names) => Merge::Using(names.iter().filter_map(last_name).collect()),
        JoinConstraint::Natural => Merge::Natural,
        JoinConstraint::On(_) | JoinConstraint::None => Merge::None,
    }
}

/// A join's constraint (ON, USING, NATURAL or none), for every operator that has one.
pub(super) fn constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => Some(c),
        _ => None,
    }
}

/// What `*` over a join is: merged (USING/NATURAL) columns first, deriving from both sides,
/// then the rest of the left side, then the rest of the right.
pub(super) fn join_star(left: Shape, right: Shape, merge: Merge) -> Shape {
    let names = match (&merge, &left, &right) {
        (Merge::None, _, _) => return concat(left, right),
        (Merge::Using(n), _, _) => n.clone(),
        (Merge::Natural, Shape::Known(l), Shape::Known(r)) => l
            .iter()
            .filter(|c| r.iter().any(|d| d.name == c.name))
            .map(|c| c.name.clone())
            .collect(),
        (Merge::Natural, _, _) => return concat(left, right),
    };
    let (Shape::Known(mut l), Shape::Known(mut r)) = (left.clone(), right.clone()) else {
        return concat(left, right);
    };
    let mut merged = Vec::with_capacity(names.len());
    for n in &names {
        let lp = l.iter().position(|c| &c.name == n);
        let rp = r.iter().position(|c| &c.name == n);
        let (Some(lp), Some(rp)) = (lp, rp) else {
            let mut t = concat(left, right).whole();
            t.union(&Taint::unknown(format!(
                "USING column \"{n}\" is not on both sides"
            )));
            return Shape::Opaque(t);
        };
        let mut c = l.remove(lp);
        c.taint.union(&r.remove(rp).taint);
        merged.push(c);
    }
    merged.extend(l);
    merged.extend(r);
    Shape::Known(merged)
}

/// `COPY t (a, b) TO ...`: the listed columns, in the listed order.
pub(super) fn copy_columns(shape: Shape, columns: &[Ident]) -> Shape {
    if columns.is_empty() {
        return shape;
    }
    let Shape::Known(cols) = shape else {
        return shape;
    };
    Shape::Known(
        columns
            .iter()
            .map(|i| {
                let n = fold(i);
                let taint = cols.iter().find(|c| c.name == n).map_or_else(
                    || Taint::unknown(format!("column \"{n}\" could not be resolved")),
                    |c| c.taint.clone(),
                );
                Col { name: n, taint }
            })
            .collect(),
    )
}
