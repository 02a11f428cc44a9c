//! Unit tests of the judge: verdicts, their caching by shape, SQL-level prepared statements,
//! and the stand-ins for denied messages.

use super::*;

const POLICIES: &str = r#"
policies:
  - name: reader
    classes: {allow: [read, session]}
  - name: writer
    classes: {allow: [read, write, session]}
"#;

fn judge(name: &str) -> Judge {
    let set = sluice_policy::PolicySet::from_yaml(POLICIES, 1).unwrap();
    Judge::new(set.get(name).unwrap().clone())
}

fn allowed(j: &Judgement) -> bool {
    j.verdict == Judged::Policy(Verdict::Allow)
}

#[test]
fn which_verdicts_are_shared_across_constants() {
    let yes = |sql: &str| literal_independent(&sluice_policy::analyze(sql));
    assert!(yes(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
    ));
    assert!(yes("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);"));
    assert!(yes(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1;"
    ));
    assert!(yes("DELETE FROM t WHERE id = 7 AND v > 2.5"));
    assert!(
        yes("UPDATE t SET a = 'x'"),
        "no WHERE: unfiltered whatever the constants"
    );
    for constant in [
        "DELETE FROM t WHERE 1 = 1",
        "DELETE FROM t WHERE 1 = 2",
        "UPDATE t SET a = 1 WHERE true",
        "UPDATE t SET a = 1 WHERE 'a' = 'a'",
        "UPDATE t SET a = 1 WHERE id = 3 OR (2 = 2)",
        "UPDATE t SET a = 1 WHERE NOT false",
        "DELETE FROM t WHERE 1::int = '1'",
    ] {
        assert!(!yes(constant), "{constant}");
    }
    assert!(!yes("SELECT 1; SELECT 2"));
    assert!(!yes("EXPLAIN ANALYZE SELECT 1"));
    assert!(!yes("COPY t TO STDOUT"));
    assert!(!yes("SELECT set_config('application_name', 'x', false)"));
}

#[test]
fn verdicts_follow_the_policy() {
    let mut cache = VerdictCache::new(16);
    let mut reader = judge("reader");
    assert!(allowed(
        &reader.judge(&mut cache, "SELECT a FROM t WHERE id = 1")
    ));
    let j = reader.judge(&mut cache, "DELETE FROM t WHERE id = 1");
    assert!(
        matches!(j.verdict, Judged::Policy(Verdict::Deny { .. })),
        "{j:?}"
    );
    let mut writer = judge("writer");
    assert!(allowed(
        &writer.judge(&mut cache, "DELETE FROM t WHERE id = 1")
    ));
    let mut none = Judge::new(Arc::new(Policy::deny_all()));
    assert!(!allowed(&none.judge(&mut cache, "SELECT 1")));
}

#[test]
fn a_plain_select_shares_its_verdict_and_plan_across_constants() {
    let mut cache = VerdictCache::new(16);
    let mut j = judge("reader");
    let first = j.judge(&mut cache, "SELECT a FROM t WHERE id = 1");
    let shape = first.plan_key.clone().expect("cached by shape");
    assert_eq!(cache.len(), 1);
    let second = j.judge(&mut cache, "SELECT a FROM t WHERE id = 2");
    assert!(allowed(&second));
    assert_eq!(second.plan_key.as_deref(), Some(shape.as_str()));
    assert_eq!(cache.len(), 1, "the second text hit the shape");
    let update = judge("writer").judge(&mut cache, "UPDATE t SET a = 1 WHERE id = 1");
    assert!(
        update.plan_key.is_some(),
        "an UPDATE's WHERE on a column is shared too"
    );
    assert_eq!(cache.len(), 2);
}

#[test]
fn a_constant_true_where_is_judged_by_its_own_text() {
    let set = sluice_policy::PolicySet::from_yaml(
        r#"
policies:
  - name: careful
    classes: {allow: [read, write]}
    require_where: true
"#,
        1,
    )
    .unwrap();
    let mut j = Judge::new(set.get("careful").unwrap().clone());
    let mut cache = VerdictCache::new(16);
    // Filtered statements are allowed and cached by shape: `1 = 2` has the shape of `1 = 1`.
    for sql in [
        "UPDATE t SET a = 1 WHERE id = 1",
        "UPDATE t SET a = 1 WHERE id = 2",
        "UPDATE t SET a = 1 WHERE 1 = 2",
        "DELETE FROM t WHERE 'a' = 'b'",
        "DELETE FROM t WHERE id = 5",
    ] {
        assert!(allowed(&j.judge(&mut cache, sql)), "{sql}");
    }
    for sql in [
        "UPDATE t SET a = 1 WHERE 1 = 1",
        "UPDATE t SET a = 7 WHERE true",
        "DELETE FROM t WHERE 'a' = 'a'",
        "DELETE FROM t WHERE 5 = 5",
        "UPDATE t SET a = 1",
    ] {
        let v = j.judge(&mut cache, sql);
        assert!(
            matches!(&v.verdict, Judged::Policy(Verdict::Deny { rule, .. }) if rule.as_str().contains("require_where")),
            "{sql}: {v:?}"
        );
    }
}

#[test]
fn execute_is_judged_by_what_was_prepared_under_the_name() {
    let mut cache = VerdictCache::new(16);
    let mut j = judge("reader");
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE p")), "unknown name");
    let prepared = j.judge(&mut cache, "PREPARE p AS SELECT a FROM t");
    assert!(allowed(&prepared));
    assert_eq!(prepared.ended, [Ended::Prepared("p".into())]);
    assert!(allowed(&j.judge(&mut cache, "EXECUTE p")));
    // The server refuses a duplicate and keeps the old one: the name is unknown now.
    let again = j.judge(&mut cache, "PREPARE p AS SELECT b FROM t");
    assert_eq!(again.ended, [Ended::Prepared("p".into())]);
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE p")));
    let gone = j.judge(&mut cache, "DEALLOCATE p");
    assert_eq!(gone.ended, [Ended::Deallocated("p".into())]);
    assert!(allowed(
        &j.judge(&mut cache, "PREPARE q AS SELECT a FROM t")
    ));
    assert_eq!(j.judge(&mut cache, "DEALLOCATE ALL").ended, [Ended::All]);
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE q")));
    // A denied PREPARE records nothing.
    let denied = j.judge(&mut cache, "PREPARE d AS DELETE FROM t");
    assert!(!allowed(&denied));
    assert!(denied.ended.is_empty());
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE d")));
    assert_eq!(cache.len(), 0, "stateful texts are never cached");
}

#[test]
fn the_gateways_statement_names_are_reserved() {
    let mut cache = VerdictCache::new(16);
    let mut j = judge("reader");
    let j1 = j.judge(&mut cache, "PREPARE sluice_0_1 AS SELECT 1");
    assert_eq!(j1.verdict, Judged::Reserved);
    assert!(j1.ended.is_empty());
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE sluice_0_1")));
}

#[test]
fn discarding_forgets_sql_prepared_statements() {
    let mut cache = VerdictCache::new(16);
    let mut j = judge("reader");
    assert!(allowed(&j.judge(&mut cache, "PREPARE p AS SELECT 1")));
    j.forget_prepared();
    assert!(!allowed(&j.judge(&mut cache, "EXECUTE p")));
}

#[test]
fn a_new_policy_judges_the_next_text() {
    let mut cache = VerdictCache::new(16);
    let mut j = judge("reader");
    assert!(!allowed(&j.judge(&mut cache, "DELETE FROM t WHERE id = 1")));
    j.set_policy(judge("writer").policy().clone());
    assert!(allowed(&j.judge(&mut cache, "DELETE FROM t WHERE id = 1")));
}

#[test]
fn stand_ins_are_what_the_server_fails_on() {
    let q = stand_in_query();
    assert_eq!(q[0], b'Q');
    assert!(q
        .windows(DENIED_STAND_IN.len())
        .any(|w| w == DENIED_STAND_IN.as_bytes()));
    let e = no_such_statement("s1");
    assert_eq!(e[0], b'E');
    assert!(e.windows(5).any(|w| w == b"26000"));
    assert!(e
        .windows(b"prepared statement \"s1\" does not exist".len())
        .any(|w| w == b"prepared statement \"s1\" does not exist"));
    let unnamed = no_such_statement("");
    assert!(unnamed
        .windows(b"unnamed prepared statement".len())
        .any(|w| w == b"unnamed prepared statement"));
}
