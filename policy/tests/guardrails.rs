//! Guardrails that must neither over-block nor under-block: writes behind a WITH, MERGE under
//! the require-WHERE rule, and the built-in function list a policy can lift by name.

use sluice_policy::{analyze, judge, Policy, PolicySet, Verdict};

const DOC: &str = r#"
policies:
  - name: agent
    classes:
      allow: [read, write, transaction, session]
      deny: [ddl, dcl, admin]
    tables:
      deny: [public.secrets]
  - name: narrow_writer
    classes: {allow: [read, write]}
    rules:
      - classes: [write]
        tables: {allow: [public.orders]}
  - name: reader
    classes: {allow: [read]}
  - name: no_merge
    classes: {allow: [read, write]}
    allow_merge: false
  - name: reviewed_merge
    classes: {allow: [read, write]}
    review: {on: [require_where]}
"#;

fn policy_in(doc: &str, name: &str) -> Policy {
    let set = PolicySet::from_yaml(doc, 1).expect("valid test policy");
    (**set.get(name).expect("policy exists")).clone()
}

fn policy(name: &str) -> Policy {
    policy_in(DOC, name)
}

fn verdict(p: &Policy, sql: &str) -> Verdict {
    judge(p, &analyze(sql))
}

#[track_caller]
fn denied_by(p: &Policy, rule: &str, sqls: &[&str]) {
    for sql in sqls {
        let v = verdict(p, sql);
        assert!(
            v.is_deny() && v.rule().is_some_and(|r| r.as_str() == rule),
            "expected deny by {rule} under {}: {sql}\n  got {v:?}",
            p.name()
        );
    }
}

#[track_caller]
fn allowed(p: &Policy, sqls: &[&str]) {
    for sql in sqls {
        let v = verdict(p, sql);
        assert!(
            v.is_allow(),
            "expected allow under {}: {sql}\n  got {v:?}",
            p.name()
        );
    }
}

#[test]
fn a_write_after_a_reading_with_is_that_write() {
    let agent = policy("agent");
    allowed(
        &agent,
        &[
            "WITH s AS (SELECT id FROM orders WHERE state = 'new') UPDATE orders SET state = 'paid' FROM s WHERE orders.id = s.id",
            "WITH s AS (SELECT id FROM cart) DELETE FROM orders USING s WHERE orders.id = s.id",
            "WITH s AS (SELECT 1 AS id) INSERT INTO orders (id) SELECT id FROM s",
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a) UPDATE orders SET n = 1 FROM b WHERE orders.id = 1",
        ],
    );
    // The outer write keeps its own rules: WHERE, table rules, and CTEs that do write.
    denied_by(
        &agent,
        "agent/require_where",
        &[
            "WITH s AS (SELECT 1) UPDATE orders SET state = 'x'",
            "WITH s AS (SELECT 1) DELETE FROM orders WHERE true",
        ],
    );
    denied_by(
        &agent,
        "agent/tables.deny[0]",
        &["WITH s AS (SELECT 1 AS id) UPDATE secrets SET a = 1 FROM s WHERE secrets.id = s.id"],
    );
    denied_by(
        &agent,
        "agent/allow_data_modifying_cte",
        &[
            "WITH d AS (DELETE FROM cart WHERE id = 1 RETURNING id) UPDATE orders SET n = 1 FROM d WHERE orders.id = d.id",
            "WITH s AS (WITH d AS (DELETE FROM cart WHERE id = 1 RETURNING id) SELECT id FROM d) UPDATE orders SET n = 1 FROM s WHERE orders.id = s.id",
        ],
    );
    denied_by(
        &policy("reader"),
        "reader/classes",
        &["WITH s AS (SELECT 1 AS id) UPDATE orders SET n = 1 FROM s WHERE orders.id = s.id"],
    );
    let narrow = policy("narrow_writer");
    allowed(
        &narrow,
        &["WITH s AS (SELECT id FROM customers) UPDATE orders SET n = 1 FROM s WHERE orders.id = s.id"],
    );
    denied_by(
        &narrow,
        "narrow_writer/rules[0].tables.allow",
        &["WITH s AS (SELECT id FROM orders) UPDATE customers SET n = 1 FROM s WHERE customers.id = s.id"],
    );
}

#[test]
fn merge_join_condition_is_judged_like_a_where() {
    let agent = policy("agent");
    allowed(
        &agent,
        &[
            "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN UPDATE SET state = s.state WHEN NOT MATCHED THEN INSERT (id, state) VALUES (s.id, s.state)",
            "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "MERGE INTO orders t USING incoming s ON true WHEN MATCHED AND t.id = s.id THEN DELETE",
            // Only inserts: no rows are changed, whatever the join condition.
            "MERGE INTO orders t USING incoming s ON false WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
            "MERGE INTO orders t USING incoming s ON true WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
            "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
            "WITH s AS (SELECT 1 AS id) MERGE INTO orders t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            // Without ANALYZE nothing runs.
            "EXPLAIN MERGE INTO orders t USING incoming s ON true WHEN MATCHED THEN DELETE",
        ],
    );
    denied_by(
        &agent,
        "agent/require_where",
        &[
            "MERGE INTO orders t USING incoming s ON true WHEN MATCHED THEN DELETE",
            "MERGE INTO orders t USING incoming s ON 1 = 1 WHEN MATCHED THEN UPDATE SET state = 'x'",
            "merge into orders t using incoming s on (true) when matched and true then delete",
            "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN UPDATE SET n = 1 WHEN NOT MATCHED THEN INSERT (id) VALUES (1); MERGE INTO orders USING incoming ON true WHEN MATCHED THEN DELETE",
            "MERGE INTO orders t USING incoming s ON false WHEN NOT MATCHED BY SOURCE THEN DELETE",
            "MERGE INTO orders t USING incoming s ON true WHEN NOT MATCHED BY SOURCE THEN UPDATE SET n = 1",
            "WITH s AS (SELECT 1 AS id) MERGE INTO orders t USING s ON true WHEN MATCHED THEN DELETE",
        ],
    );
    let v = verdict(
        &policy("reviewed_merge"),
        "MERGE INTO orders t USING incoming s ON true WHEN MATCHED THEN DELETE",
    );
    assert!(matches!(v, Verdict::Review { .. }), "{v:?}");
    // Its actions are writes of the target; the source is read.
    denied_by(
        &agent,
        "agent/tables.deny[0]",
        &[
            "MERGE INTO secrets t USING incoming s ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
            "MERGE INTO orders t USING secrets s ON t.id = s.id WHEN MATCHED THEN UPDATE SET n = s.n",
        ],
    );
    denied_by(
        &policy("reader"),
        "reader/classes",
        &["MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN DELETE"],
    );
    denied_by(
        &policy("narrow_writer"),
        "narrow_writer/rules[0].tables.allow",
        &["MERGE INTO customers t USING orders s ON t.id = s.id WHEN MATCHED THEN DELETE"],
    );
    allowed(
        &policy("narrow_writer"),
        &["MERGE INTO orders t USING customers s ON t.id = s.id WHEN MATCHED THEN DELETE"],
    );
}

#[test]
fn merge_is_a_statement_kind_a_policy_can_deny() {
    let p = policy("no_merge");
    denied_by(
        &p,
        "no_merge/allow_merge",
        &[
            "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "WITH s AS (SELECT 1 AS id) MERGE INTO orders t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        ],
    );
    allowed(
        &p,
        &[
            "UPDATE orders SET n = 1 WHERE id = 1",
            "INSERT INTO orders (id) VALUES (1)",
            "DELETE FROM orders WHERE id = 1",
        ],
    );
    // `merge` is a rule kind review.on accepts.
    let doc = "policies:\n  - name: m\n    classes: {allow: [read, write]}\n    allow_merge: false\n    review: {on: [merge]}\n";
    let v = verdict(
        &policy_in(doc, "m"),
        "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN DELETE",
    );
    assert!(matches!(v, Verdict::Review { .. }), "{v:?}");
}
