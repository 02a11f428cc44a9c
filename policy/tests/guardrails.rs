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
