//! Catalog relations and extension functions that expose stored column values (planner statistics, raw pages), denied to roles with masking rules.

use std::ops::ControlFlow;

use sqlparser::ast::{self, Expr, ObjectName, ObjectNamePart, Statement};

use crate::glob::wildcard;

/// The rule named when a masking role reads one of these.
pub const STORED_VALUES_RULE: &str = "masking/stored_values";

/// Relations (matched on their name in any schema) whose rows carry values of other tables'
/// columns, with the reason each is here.
pub const STORED_VALUE_RELATIONS: &[(&str, &str)] = &[
    (
        "pg_stats",
        "holds most common values and histogram bounds of table columns",
    ),
    (
        "pg_stats_ext",
        "holds most common value combinations of table columns",
    ),
    (
        "pg_stats_ext_exprs",
        "holds most common values and histogram bounds of indexed expressions",
    ),
    (
        "pg_statistic",
        "holds the planner's samples of column values",
    ),
    (
        "pg_statistic_ext_data",
        "holds the planner's samples of column value combinations",
    ),
];

/// Functions (name globs, any schema) that return stored values from pages, statistics or
/// the WAL, with the reason each is here. Server files (`pg_read_file`, ...) are on the
/// built-in denied list of every policy already.
pub const STORED_VALUE_FUNCTIONS: &[(&str, &str)] = &[
    (
        "get_raw_page",
        "returns a raw table or index page (pageinspect)",
    ),
    (
        "heap_page_items",
        "returns the tuples of a raw heap page (pageinspect)",
    ),
    (
        "heap_page_item_attrs",
        "returns the column values of a raw heap page (pageinspect)",
    ),
    (
        "tuple_data_split",
        "splits raw tuple data into column values (pageinspect)",
    ),
    (
        "bt_page_items",
        "returns the keys of a raw B-tree page (pageinspect)",
    ),
    (
        "bt_multi_page_stats",
        "reads raw B-tree pages (pageinspect)",
    ),
    (
        "brin_page_items",
        "returns the summaries of a raw BRIN page (pageinspect)",
    ),
    ("gin_*", "returns the keys of a raw GIN page (pageinspect)"),
    (
        "gist_page_items*",
        "returns the keys of a raw GiST page (pageinspect)",
    ),
    (
        "hash_page_items",
        "returns the entries of a raw hash index page (pageinspect)",
    ),
    (
        "pg_mcv_list_items",
        "returns the most common values of extended statistics",
    ),
    (
        "pg_get_wal_block_info",
        "returns WAL block data, which holds row images (pg_walinspect)",
    ),
];

/// The first relation or function in `stmt` (anywhere: FROM, WHERE, subqueries, CTEs) on the
/// lists above, as `(name, reason)`.
pub(super) fn stored_value_read(stmt: &Statement) -> Option<(String, &'static str)> {
    let mut found = None;
    let mut check = |name: &ObjectName, lists: &[&[(&'static str, &'static str)]]| {
        let Some(ObjectNamePart::Identifier(i)) = name.0.last() else {
            return ControlFlow::Continue(());
        };
        let n = i.value.to_lowercase();
        for list in lists {
            if let Some((_, why)) = list.iter().find(|(p, _)| wildcard(p, &n)) {
                found = Some((name.to_string(), *why));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    // `FROM heap_page_items(...)` is a relation position with arguments: both lists apply.
    let both: &[&[(&str, &str)]] = &[STORED_VALUE_RELATIONS, STORED_VALUE_FUNCTIONS];
    if ast::visit_relations(stmt, |r| check(r, both)).is_break() {
        return found;
    }
    let _ = ast::visit_expressions(stmt, |e| match e {
        Expr::Function(f) => check(&f.name, &[STORED_VALUE_FUNCTIONS]),
        _ => ControlFlow::Continue(()),
    });
    found
}
