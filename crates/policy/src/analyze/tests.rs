use super::*;
use StatementClass as C;

fn one(sql: &str) -> StatementFacts {
    match analyze(sql) {
        Analysis::Statements(mut v) if v.len() == 1 => v.remove(0),
        other => panic!("{sql}: {other:?}"),
    }
}

fn names(v: &[Name]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

#[test]
fn classes() {
    let cases: &[(&str, Option<C>)] = &[
        ("SELECT 1", Some(C::Read)),
        ("VALUES (1)", Some(C::Read)),
        ("select * from t for update", Some(C::Read)),
        ("INSERT INTO t VALUES (1)", Some(C::Write)),
        ("UPDATE t SET a = 1 WHERE id = 2", Some(C::Write)),
        ("DELETE FROM t WHERE id = 2", Some(C::Write)),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Some(C::Write),
        ),
        ("TRUNCATE t", Some(C::Write)),
        ("LOCK TABLE t", Some(C::Write)),
        ("CALL p()", Some(C::Write)),
        ("NOTIFY ch", Some(C::Write)),
        ("CREATE TABLE t (a int)", Some(C::Ddl)),
        ("DROP TABLE t", Some(C::Ddl)),
        ("ALTER TABLE t ADD COLUMN b int", Some(C::Ddl)),
        ("CREATE INDEX i ON t (a)", Some(C::Ddl)),
        ("CREATE VIEW v AS SELECT 1", Some(C::Ddl)),
        ("CREATE SCHEMA s", Some(C::Ddl)),
        ("SELECT * INTO t2 FROM t", Some(C::Ddl)),
        ("GRANT SELECT ON t TO bob", Some(C::Dcl)),
        ("REVOKE SELECT ON t FROM bob", Some(C::Dcl)),
        ("CREATE ROLE bob", Some(C::Dcl)),
        ("DROP ROLE bob", Some(C::Dcl)),
        ("ALTER ROLE bob SUPERUSER", Some(C::Dcl)),
        ("VACUUM t", Some(C::Admin)),
        ("ANALYZE t", Some(C::Admin)),
        ("COPY t TO STDOUT", Some(C::Copy)),
        ("COPY t FROM STDIN", Some(C::Copy)),
        ("BEGIN", Some(C::Transaction)),
        ("START TRANSACTION READ ONLY", Some(C::Transaction)),
        ("COMMIT", Some(C::Transaction)),
        ("ROLLBACK", Some(C::Transaction)),
        ("SAVEPOINT a", Some(C::Transaction)),
        ("RELEASE SAVEPOINT a", Some(C::Transaction)),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Some(C::Transaction),
        ),
        ("SET statement_timeout = 1000", Some(C::Session)),
        ("SET TIME ZONE 'UTC'", Some(C::Session)),
        ("RESET statement_timeout", Some(C::Session)),
        ("SHOW search_path", Some(C::Session)),
        ("DISCARD PLANS", Some(C::Session)),
        ("DEALLOCATE p", Some(C::Session)),
        ("LISTEN ch", Some(C::Session)),
        ("UNLISTEN *", Some(C::Session)),
        ("DECLARE c CURSOR FOR SELECT 1", Some(C::Read)),
        ("FETCH 10 FROM c", Some(C::Read)),
        ("CLOSE c", Some(C::Read)),
        ("EXPLAIN SELECT 1", Some(C::Read)),
        ("EXPLAIN DELETE FROM t", Some(C::Read)),
        ("EXPLAIN ANALYZE DELETE FROM t WHERE a = 1", Some(C::Write)),
        ("PREPARE p AS DELETE FROM t WHERE a = $1", Some(C::Write)),
        ("LOAD 'plugin'", None),
    ];
    for (sql, class) in cases {
        assert_eq!(one(sql).class, *class, "{sql}");
    }
}

#[test]
fn relations_are_folded_and_qualified() {
    let f = one(r#"SELECT * FROM Orders o JOIN "Sales"."Items" i ON i.o = o.id, db.Public.T"#);
    assert_eq!(
        names(&f.reads),
        ["orders", "\"Sales\".\"Items\"", "public.t"]
    );
}

#[test]
fn writes_and_reads() {
    let f = one("INSERT INTO audit SELECT * FROM src");
    assert_eq!(names(&f.targets), ["audit"]);
    assert_eq!(names(&f.reads), ["src"]);
    let f = one("UPDATE t SET a = s.a FROM s WHERE t.id = s.id");
    assert_eq!(names(&f.targets), ["t"]);
    assert_eq!(names(&f.reads), ["t", "s"]);
    assert!(f.unfiltered_writes.is_empty());
    let f = one("DELETE FROM t");
    assert_eq!(names(&f.unfiltered_writes), ["t"]);
    let f = one("UPDATE t SET a = 1 WHERE 1 = 1");
    assert_eq!(names(&f.unfiltered_writes), ["t"]);
    let f = one("COPY public.t (a, b) FROM STDIN");
    assert_eq!(names(&f.targets), ["public.t"]);
    assert_eq!(
        f.copy,
        Some(CopyFacts {
            to: false,
            endpoint: CopyEndpoint::Client
        })
    );
    let f = one("DROP TABLE a, s.b");
    assert_eq!(names(&f.targets), ["a", "s.b"]);
    assert_eq!(f.target_class, C::Ddl);
    assert!(f.reads.is_empty());
}

#[test]
fn ctes_are_not_tables_but_shadowing_is_scoped() {
    assert!(one("WITH x AS (SELECT 1) SELECT * FROM x").reads.is_empty());
    // A non-recursive CTE does not see itself: the inner `secrets` is the table.
    assert_eq!(
        names(&one("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets").reads),
        ["secrets"]
    );
    // A CTE is visible only in its own query.
    assert_eq!(
        names(&one("SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) a, s").reads),
        ["s"]
    );
    assert_eq!(
        names(&one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b").reads),
        ["b"]
    );
    assert!(
        one("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r")
            .reads
            .is_empty()
    );
    // A qualified name is never a CTE.
    assert_eq!(
        names(&one("WITH t AS (SELECT 1) SELECT * FROM public.t").reads),
        ["public.t"]
    );
}

#[test]
fn functions_everywhere() {
    for sql in [
        "SELECT f()",
        "SELECT * FROM t WHERE a = f()",
        "SELECT * FROM t ORDER BY f()",
        "SELECT (SELECT f())",
        "WITH x AS (SELECT f()) SELECT * FROM x",
        "SELECT * FROM f()",
        "SELECT * FROM t, LATERAL f(t.a)",
        "SELECT count(*) FILTER (WHERE f()) FROM t",
        "SELECT sum(a) OVER (PARTITION BY f()) FROM t",
        "SELECT CAST(f() AS int)",
        "SELECT g(f())",
        "CREATE TABLE x (a int DEFAULT f())",
        "INSERT INTO t VALUES (f())",
        "UPDATE t SET a = f() WHERE id = 1",
        "SELECT * FROM t GROUP BY a HAVING f()",
        "COPY (SELECT f()) TO STDOUT",
        "EXECUTE p(f())",
        "SELECT CASE WHEN true THEN f() END",
        "SELECT ARRAY[f()]",
    ] {
        let f = one(sql);
        assert!(
            f.functions.iter().any(|n| &*n.name == "f"),
            "{sql}: {:?}",
            f.functions
        );
    }
}

#[test]
fn special_kinds() {
    assert_eq!(one("EXECUTE p(1)").kind, Kind::Execute { name: "p".into() });
    assert_eq!(
        one("PREPARE P AS SELECT 1").kind,
        Kind::Prepare { name: "p".into() }
    );
    assert_eq!(one("DEALLOCATE ALL").kind, Kind::Deallocate { name: None });
    assert_eq!(
        one("DECLARE c CURSOR FOR SELECT 1").kind,
        Kind::DeclareCursor { name: "c".into() }
    );
    assert_eq!(
        one("FETCH NEXT FROM c").kind,
        Kind::Fetch { name: "c".into() }
    );
    assert_eq!(one("CLOSE ALL").kind, Kind::Close { name: None });
    assert!(one("SET ROLE admin").role_change);
    assert!(one("SET SESSION AUTHORIZATION bob").role_change);
    assert!(one("SET role = 'bob'").role_change);
    assert!(one("RESET ROLE").role_change);
    assert!(one("RESET ALL").role_change);
    assert!(one("DISCARD ALL").role_change);
    assert!(!one("SET application_name = 'x'").role_change);
    assert!(one("SET search_path TO x").search_path_change);
    assert!(one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").data_modifying_cte);
    assert!(one("EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE id = 1").explain_analyze_write);
    assert!(!one("EXPLAIN ANALYZE SELECT 1").explain_analyze_write);
    assert!(one("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql").code_definition);
    assert!(
        one("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()")
            .code_definition
    );
    assert_eq!(
        one("COPY t TO PROGRAM 'gzip > /tmp/x'").copy,
        Some(CopyFacts {
            to: true,
            endpoint: CopyEndpoint::Program("gzip > /tmp/x".into())
        })
    );
}

#[test]
fn unparsed_and_do_blocks() {
    for sql in [
        "SELEC 1",
        "VACUUM (FULL) t",
        "CLUSTER t",
        "REINDEX TABLE t",
        "SELECT 1; FOO",
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
    ] {
        assert!(
            matches!(
                analyze(sql),
                Analysis::Unparsed {
                    do_block: false,
                    ..
                }
            ),
            "{sql}"
        );
    }
    for sql in [
        "DO $$BEGIN END$$",
        "do language plpgsql $x$ begin end $x$;",
        "DO 'begin end' LANGUAGE plpgsql",
    ] {
        assert!(
            matches!(analyze(sql), Analysis::Unparsed { do_block: true, .. }),
            "{sql}"
        );
    }
    for sql in [
        "DO $$BEGIN END$$; DROP TABLE t",
        "/* DO */ SELEC 1",
        "DO $$ $$ $$ $$",
        "SELECT 1; DO $$ $$",
    ] {
        assert!(
            matches!(
                analyze(sql),
                Analysis::Unparsed {
                    do_block: false,
                    ..
                }
            ),
            "{sql}"
        );
    }
    assert_eq!(analyze(""), Analysis::Statements(vec![]));
    assert_eq!(analyze(" ; "), Analysis::Statements(vec![]));
}

#[test]
fn size_cap() {
    let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES));
    assert!(matches!(analyze(&long), Analysis::Unparsed { .. }));
}

#[test]
fn deep_nesting() {
    // Beyond the limit: refused, not a stack overflow.
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(matches!(analyze(&deep), Analysis::Unparsed { .. }));
    let deep_sub = format!("SELECT {}1{}", "(SELECT ".repeat(500), ")".repeat(500));
    assert!(matches!(analyze(&deep_sub), Analysis::Unparsed { .. }));
    // At the limit, on a small stack: analysis (parse + walk) fits.
    let ok = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            for n in (1..=RECURSION_LIMIT).rev() {
                let sql = format!("SELECT {}f(1){}", "(".repeat(n), ")".repeat(n));
                if let Analysis::Statements(_) = analyze(&sql) {
                    return n;
                }
            }
            0
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(ok >= RECURSION_LIMIT - 5, "deepest accepted nesting {ok}");
}

#[test]
fn with_before_a_write_is_that_write() {
    let f = one("WITH s AS (SELECT id FROM src) UPDATE t SET a = 1 FROM s WHERE t.id = s.id");
    assert_eq!((f.tag, f.class), ("UPDATE", Some(C::Write)));
    assert!(!f.data_modifying_cte);
    assert_eq!(names(&f.targets), ["t"]);
    assert_eq!(names(&f.reads), ["src", "t"]);
    assert!(f.unfiltered_writes.is_empty());
    let f = one("WITH s AS (SELECT 1) DELETE FROM t");
    assert_eq!(
        (f.tag, names(&f.unfiltered_writes)),
        ("DELETE", vec!["t".to_owned()])
    );
    assert!(
        one("WITH d AS (DELETE FROM x RETURNING id) UPDATE t SET a = 1 FROM d WHERE t.id = d.id")
            .data_modifying_cte
    );
}
