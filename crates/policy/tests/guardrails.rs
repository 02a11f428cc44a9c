//! Guardrails that must neither over-block nor under-block: writes behind a WITH, MERGE under
//! the require-WHERE rule, and the built-in function list a policy can lift by name.

use sluice_policy::{
    affected_rows_limit, analyze, judge, Analysis, OverLimit, Policy, PolicySet, Verdict,
};

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
  - name: operator
    classes: {allow: [read, write, ddl, dcl, admin, copy, transaction, session]}
    functions:
      allow_builtin_denied: [pg_terminate_backend, PG_CANCEL_BACKEND]
  - name: no_session
    classes: {allow: [read]}
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

#[test]
fn builtin_denials_can_be_lifted_by_name() {
    let op = policy("operator");
    allowed(
        &op,
        &[
            "SELECT pg_terminate_backend(12345)",
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'batch'",
            "SELECT pg_cancel_backend(12345)",
        ],
    );
    // Only what it names: everything else on the list stays denied.
    denied_by(
        &op,
        "builtin/functions/pg_read_file",
        &["SELECT pg_read_file('/etc/passwd')"],
    );
    denied_by(
        &op,
        "builtin/functions/pg_reload_conf",
        &["SELECT pg_reload_conf()"],
    );
    // Another policy is not affected.
    denied_by(
        &policy("agent"),
        "builtin/functions/pg_terminate_backend",
        &["SELECT pg_terminate_backend(12345)"],
    );
    assert_eq!(
        op.warnings(),
        [
            "functions.allow_builtin_denied: pg_terminate_backend() is allowed although it terminates another session",
            "functions.allow_builtin_denied: pg_cancel_backend() is allowed although it cancels another session's query",
        ]
    );
    assert!(policy("agent").warnings().is_empty());
}

#[test]
fn allow_builtin_denied_takes_exact_listed_names() {
    for (entry, message) in [
        ("\"*\"", "policies[0].functions.allow_builtin_denied[0]: entries are function names, not globs"),
        ("pg_*", "policies[0].functions.allow_builtin_denied[0]: entries are function names, not globs"),
        ("now", "policies[0].functions.allow_builtin_denied[0]: \"now\" is not on the built-in list of denied functions"),
        ("public.set_config", "policies[0].functions.allow_builtin_denied[0]: invalid glob \"public.set_config\": too many name parts (at most 1)"),
    ] {
        let doc = format!("policies:\n  - name: p\n    functions: {{allow_builtin_denied: [{entry}]}}\n");
        let err = PolicySet::from_yaml(&doc, 1).expect_err(entry).to_string();
        assert_eq!(err, message, "{entry}");
    }
}

#[test]
fn set_config_is_judged_like_set() {
    let agent = policy("agent");
    allowed(
        &agent,
        &[
            "SELECT set_config('application_name', 'agent-7', false)",
            "SELECT set_config('statement_timeout', '5s', true)",
            "SELECT pg_catalog.set_config('TimeZone', 'UTC', false), set_config('work_mem', '64MB', true)",
            "SET application_name = 'agent-7'",
        ],
    );
    denied_by(
        &agent,
        "agent/allow_set_role",
        &[
            "SELECT set_config('role', 'postgres', false)",
            "SELECT set_config('ROLE', 'postgres', false)",
            "SELECT set_config('session_authorization', 'postgres', false)",
            "SELECT set_config('application_name', 'x', false), set_config('role', 'postgres', false)",
            "SET role = 'postgres'",
        ],
    );
    denied_by(
        &agent,
        "agent/allow_set_search_path",
        &["SELECT set_config('search_path', 'vault', false)"],
    );
    // A name the gateway cannot read stays a built-in denial.
    denied_by(
        &agent,
        "builtin/functions/set_config",
        &[
            "SELECT set_config(current_setting('my.name'), 'x', false)",
            "SELECT set_config('application_name', 'x', false), set_config(name, 'x', false) FROM pg_settings",
            "SELECT set_config(setting_name => 'role', new_value => 'postgres', is_local => false)",
            "SELECT set_config('ro' || 'le', 'postgres', false)",
            "SELECT * FROM set_config('application_name', 'x', false)",
        ],
    );
    // Like SET, it needs the session class.
    denied_by(
        &policy("no_session"),
        "no_session/classes",
        &[
            "SELECT set_config('application_name', 'agent-7', false)",
            "SET application_name = 'x'",
        ],
    );
    // A role policy may still lift it outright, with every setting.
    let doc = "policies:\n  - name: s\n    classes: {allow: [read, session]}\n    allow_set_role: true\n    functions: {allow_builtin_denied: [set_config]}\n";
    allowed(
        &policy_in(doc, "s"),
        &[
            "SELECT set_config(current_setting('my.name'), 'x', false)",
            "SELECT set_config('role', 'postgres', false)",
        ],
    );
}

#[test]
fn max_affected_rows_counts_updates_deletes_and_merges_alone() {
    let doc = "policies:\n  - name: capped\n    classes: {allow: [read, write]}\n    allow_data_modifying_cte: true\n    allow_explain_analyze_write: true\n    max_affected_rows: 10\n";
    let p = policy_in(doc, "capped");
    assert_eq!(p.max_affected_rows(), Some((10, OverLimit::Deny)));
    for sql in [
        "UPDATE orders SET n = 1 WHERE id > 0",
        "DELETE FROM orders WHERE id IS NOT NULL",
        "WITH s AS (SELECT 1 AS id) UPDATE orders SET n = 0 FROM s WHERE orders.id = s.id",
        "MERGE INTO orders t USING incoming s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        assert_eq!(verdict(&p, sql), Verdict::Allow, "{sql}");
        assert_eq!(affected_rows_limit(&p, &analyze(sql)), Some(10), "{sql}");
    }
    for sql in ["SELECT 1", "INSERT INTO orders (id) VALUES (1)"] {
        assert_eq!(affected_rows_limit(&p, &analyze(sql)), None, "{sql}");
    }
    // Writes whose rows the command tag does not count are refused under a limit.
    denied_by(
        &p,
        "capped/max_affected_rows",
        &[
            "WITH d AS (DELETE FROM orders WHERE id > 0 RETURNING id) SELECT count(*) FROM d",
            "EXPLAIN ANALYZE DELETE FROM orders WHERE id > 0",
            "UPDATE orders SET n = 1 WHERE id > 0; SELECT 1",
        ],
    );
    // A text the gateway cannot read cannot be counted either, even where unparsed texts are
    // otherwise allowed.
    let doc = "policies:\n  - name: capped\n    classes: {allow: [read, write]}\n    allow_unparsed: true\n    max_affected_rows: 10\n";
    let p = policy_in(doc, "capped");
    let unparsed = "UPDATE orders SET n = 1 WHERE id > 0 FOR NO KEY UPDATE OF orders ))";
    assert!(matches!(analyze(unparsed), Analysis::Unparsed { .. }));
    denied_by(&p, "capped/max_affected_rows", &[unparsed]);
    // Without a limit, nothing changes.
    let p = policy("agent");
    assert_eq!(
        affected_rows_limit(&p, &analyze("DELETE FROM orders WHERE id = 1")),
        None
    );
}

#[test]
fn over_limit_takes_deny_or_review_and_needs_a_limit() {
    let doc = "policies:\n  - name: capped\n    classes: {allow: [write]}\n    max_affected_rows: 0\n    over_limit: review\n";
    let p = policy_in(doc, "capped");
    assert_eq!(p.max_affected_rows(), Some((0, OverLimit::Review)));
    let bad =
        "policies:\n  - name: capped\n    classes: {allow: [write]}\n    over_limit: review\n";
    let err = PolicySet::from_yaml(bad, 1).unwrap_err().to_string();
    assert!(err.contains("policies[0].over_limit"), "{err}");
    let bad = "policies:\n  - name: capped\n    max_affected_rows: 5\n    over_limit: warn\n";
    let err = PolicySet::from_yaml(bad, 1).unwrap_err().to_string();
    assert!(err.contains("expected deny or review"), "{err}");
}
