//! The generic walk that collects relations, functions and nested writes (CTE-scope aware).

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, MergeAction, MergeClauseKind,
    ObjectName, ObjectNamePart, Query, Select, Statement, TableFactor, Value, Visitor,
};

use super::names::*;
use super::*;

/// The CTE names one `WITH` introduces and how many are visible so far.
pub(super) struct CteFrame {
    pub(super) query: *const Query,
    pub(super) names: Vec<String>,
    pub(super) bodies: Vec<*const Query>,
    pub(super) recursive: bool,
    /// CTEs defined so far (a non-recursive CTE sees only earlier siblings).
    pub(super) visible: usize,
    /// The CTE whose body is being walked.
    pub(super) current: Option<usize>,
}

/// The generic walk: it only collects relations, functions and nested writes.
pub(super) struct Collector {
    pub(super) facts: StatementFacts,
    /// Relation occurrences the top-level match already placed (DDL targets etc.).
    pub(super) skip: Vec<*const ObjectName>,
    pub(super) ctes: Vec<CteFrame>,
    pub(super) depth: usize,
    /// The write a top-level `WITH ... UPDATE` (etc.) is: nested in the tree, but not in a CTE.
    pub(super) main: Option<*const Statement>,
    /// set_config calls seen, and how many of them name a constant setting.
    pub(super) set_config_calls: usize,
    pub(super) constant_set_configs: usize,
}

impl Collector {
    pub(super) fn new(skip: Vec<*const ObjectName>) -> Self {
        Self {
            facts: StatementFacts::new("", None),
            skip,
            ctes: Vec::new(),
            depth: 0,
            main: None,
            set_config_calls: 0,
            constant_set_configs: 0,
        }
    }

    pub(super) fn finish(self, f: &mut StatementFacts) {
        // A set_config the walk did not see as a call (CALL set_config(...)) stays denied.
        f.sets_config = self.set_config_calls > 0
            && self.set_config_calls == self.constant_set_configs
            && !f.functions.iter().any(|n| &*n.name == "set_config");
        let c = self.facts;
        for (dst, src) in [
            (&mut f.reads, c.reads),
            (&mut f.targets, c.targets),
            (&mut f.functions, c.functions),
            (&mut f.unfiltered_writes, c.unfiltered_writes),
        ] {
            for n in src {
                if !dst.contains(&n) {
                    dst.push(n);
                }
            }
        }
        f.data_modifying_cte |= c.data_modifying_cte;
        f.merge |= c.merge;
        f.constant_condition |= c.constant_condition;
        f.role_change |= c.role_change;
        f.search_path_change |= c.search_path_change;
        f.opaque = f.opaque.or(c.opaque);
        if c.class == Some(StatementClass::Ddl) && f.class == Some(StatementClass::Read) {
            // SELECT ... INTO creates a table.
            f.class = Some(StatementClass::Ddl);
            f.target_class = StatementClass::Ddl;
            f.tag = "SELECT INTO";
        }
        if f.opaque.is_some() {
            f.class = None;
        }
    }

    pub(super) fn is_cte(&self, name: &ObjectName) -> bool {
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return false; // a qualified name never refers to a CTE
        };
        let n = fold(ident);
        self.ctes.iter().rev().any(|frame| {
            let mut visible = frame.visible;
            if frame.recursive {
                if let Some(i) = frame.current {
                    visible = visible.max(i + 1);
                }
            }
            frame.names[..visible.min(frame.names.len())].contains(&n)
        })
    }

    pub(super) fn dml_target(&mut self, table: &TableFactor) {
        match table {
            TableFactor::Table {
                name, args: None, ..
            } => push_name(&mut self.facts, name, Slot::Target),
            _ => self.facts.opaque = Some("a write to something other than a table"),
        }
    }

    pub(super) fn function(&mut self, name: &ObjectName) {
        push_name(&mut self.facts, name, Slot::Function);
        if last_part(name) == "set_config" {
            self.set_config_calls += 1;
        }
    }

    /// `set_config('name', ...)` with a constant name is judged as `SET name` is.
    pub(super) fn set_config(&mut self, func: &ast::Function) {
        let Some(setting) = constant_first_arg(func) else {
            return;
        };
        self.constant_set_configs += 1;
        let setting = setting.to_ascii_lowercase();
        self.facts.role_change |= is_role_param(&setting);
        self.facts.search_path_change |= setting == "search_path";
    }

    pub(super) fn unfiltered(&mut self, table: &TableFactor) {
        if let TableFactor::Table { name, .. } = table {
            push_name(&mut self.facts, name, Slot::Unfiltered);
        }
    }
}

/// `WHERE true`, `WHERE 1 = 1`, `WHERE 'a' = 'a'`: a filter in form only.
pub(super) fn trivially_true(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Boolean(true)),
        Expr::Nested(inner) => trivially_true(inner),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } => {
            matches!((&**left, &**right), (Expr::Value(a), Expr::Value(b)) if a.value == b.value && !matches!(a.value, Value::Null))
        }
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Or,
            right,
        } => trivially_true(left) || trivially_true(right),
        _ => false,
    }
}

/// Whether a WHERE holds a test of constants alone where [`trivially_true`] (or a reader of
/// the same kind) would look: the condition itself, either side of AND/OR/NOT, or a
/// comparison whose two sides are both constants. `aid = 5` holds none; `1 = 1`, `true`,
/// `aid = 5 OR 'a' = 'a'` do.
pub(super) fn has_constant_test(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::Nested(inner) => has_constant_test(inner),
        Expr::UnaryOp { expr, .. } => has_constant_test(expr),
        Expr::BinaryOp { left, op, right } => match op {
            ast::BinaryOperator::And | ast::BinaryOperator::Or => {
                has_constant_test(left) || has_constant_test(right)
            }
            _ => is_constant(left) && is_constant(right),
        },
        Expr::IsTrue(inner)
        | Expr::IsNotTrue(inner)
        | Expr::IsFalse(inner)
        | Expr::IsNotFalse(inner)
        | Expr::IsNull(inner)
        | Expr::IsNotNull(inner) => is_constant(inner),
        _ => false,
    }
}

/// A literal, possibly parenthesised, negated or cast.
fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => is_constant(inner),
        Expr::Cast { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// The first argument of a call if it is a plain string literal.
fn constant_first_arg(func: &ast::Function) -> Option<&str> {
    let FunctionArguments::List(list) = &func.args else {
        return None;
    };
    match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// `WHERE false`, `1 = 0`, `NULL`: a condition that holds for no row.
fn trivially_false(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Boolean(false) | Value::Null),
        Expr::Nested(inner) => trivially_false(inner),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } => {
            matches!((&**left, &**right), (Expr::Value(a), Expr::Value(b)) if a.value != b.value)
        }
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => trivially_false(left) || trivially_false(right),
        _ => false,
    }
}

/// Whether a MERGE updates or deletes target rows without a filter, as `require_where` sees
/// it: a `WHEN MATCHED` UPDATE/DELETE whose join condition (and own `AND`) is constant-true,
/// or a `WHEN NOT MATCHED BY SOURCE` UPDATE/DELETE (it acts on the target rows the join does
/// not match) whose join condition is a constant and which has no `AND` of its own.
fn merge_unfiltered(m: &ast::Merge) -> bool {
    let on_true = trivially_true(&m.on);
    let on_constant = on_true || trivially_false(&m.on);
    m.clauses.iter().any(|c| {
        let changes = matches!(
            c.action,
            MergeAction::Update(_) | MergeAction::Delete { .. }
        );
        let own_filter = !c.predicate.as_ref().is_none_or(trivially_true);
        changes
            && !own_filter
            && match c.clause_kind {
                MergeClauseKind::Matched => on_true,
                MergeClauseKind::NotMatchedBySource => on_constant,
                // NOT MATCHED [BY TARGET] only inserts.
                MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget => false,
            }
    })
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        let nested = self.depth > 1 && !self.main.is_some_and(|m| std::ptr::eq(m, stmt));
        match stmt {
            Statement::Insert(ins) => {
                match &ins.table {
                    TableObject::TableName(name) => {
                        self.skip.push(name);
                        push_name(&mut self.facts, name, Slot::Target);
                    }
                    TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                        self.facts.opaque = Some("INSERT INTO something other than a table")
                    }
                }
                self.facts.data_modifying_cte |= nested;
            }
            Statement::Update(up) => {
                self.facts.constant_condition |=
                    up.selection.as_ref().is_some_and(has_constant_test);
                self.dml_target(&up.table.relation);
                if up.selection.as_ref().is_none_or(trivially_true) {
                    self.unfiltered(&up.table.relation);
                }
                self.facts.data_modifying_cte |= nested;
            }
            Statement::Delete(del) => {
                let from = match &del.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                if !del.tables.is_empty() {
                    self.facts.opaque = Some("multi-table DELETE");
                }
                self.facts.constant_condition |=
                    del.selection.as_ref().is_some_and(has_constant_test);
                for t in from {
                    self.dml_target(&t.relation);
                    if del.selection.as_ref().is_none_or(trivially_true) {
                        self.unfiltered(&t.relation);
                    }
                }
                self.facts.data_modifying_cte |= nested;
            }
            Statement::Merge(m) => {
                self.dml_target(&m.table);
                if merge_unfiltered(m) {
                    self.unfiltered(&m.table);
                }
                self.facts.merge = true;
                self.facts.data_modifying_cte |= nested;
            }
            _ if nested => self.facts.opaque = Some("a nested statement"),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _stmt: &Statement) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let ptr: *const Query = q;
        if let Some(frame) = self.ctes.last_mut() {
            if let Some(i) = frame.bodies.iter().position(|b| std::ptr::eq(*b, ptr)) {
                frame.current = Some(i);
            }
        }
        if let Some(with) = &q.with {
            self.ctes.push(CteFrame {
                query: ptr,
                names: with
                    .cte_tables
                    .iter()
                    .map(|c| fold(&c.alias.name))
                    .collect(),
                bodies: with
                    .cte_tables
                    .iter()
                    .map(|c| &*c.query as *const Query)
                    .collect(),
                recursive: with.recursive,
                visible: 0,
                current: None,
            });
        }
        // `TABLE name` holds plain strings, not a visited relation.
        let mut stack = vec![&*q.body];
        while let Some(body) = stack.pop() {
            match body {
                SetExpr::Table(t) => match &t.table_name {
                    Some(name) => {
                        let n = Name {
                            schema: t
                                .schema_name
                                .as_ref()
                                .map(|s| s.to_ascii_lowercase().into()),
                            name: name.to_ascii_lowercase().into(),
                        };
                        let is_cte = n.schema.is_none()
                            && self.is_cte(&ObjectName::from(vec![ast::Ident::new(&*n.name)]));
                        if !is_cte && !self.facts.reads.contains(&n) {
                            self.facts.reads.push(n);
                        }
                    }
                    None => self.facts.opaque = Some("TABLE without a name"),
                },
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let ptr: *const Query = q;
        if self.ctes.last().is_some_and(|f| std::ptr::eq(f.query, ptr)) {
            self.ctes.pop();
        }
        if let Some(frame) = self.ctes.last_mut() {
            if let Some(i) = frame.bodies.iter().position(|b| std::ptr::eq(*b, ptr)) {
                frame.current = None;
                frame.visible = i + 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.facts.class = Some(StatementClass::Ddl);
            for t in &into.targets {
                match t {
                    Expr::Identifier(i) => push_name(
                        &mut self.facts,
                        &ObjectName::from(vec![i.clone()]),
                        Slot::Target,
                    ),
                    Expr::CompoundIdentifier(is) => {
                        push_name(&mut self.facts, &ObjectName::from(is.clone()), Slot::Target)
                    }
                    _ => self.facts.opaque = Some("SELECT INTO an unusual target"),
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let ptr: *const ObjectName = relation;
        if self.skip.iter().any(|s| std::ptr::eq(*s, ptr)) || self.is_cte(relation) {
            return ControlFlow::Continue(());
        }
        push_name(&mut self.facts, relation, Slot::Read);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            // `FROM pg_ls_dir('.')` parses as a table with arguments: a function call.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.skip.push(name);
                self.function(name);
            }
            TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(func) = expr {
            self.function(&func.name);
            if last_part(&func.name) == "set_config" {
                self.set_config(func);
            }
        }
        ControlFlow::Continue(())
    }
}
