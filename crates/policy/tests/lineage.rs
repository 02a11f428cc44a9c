//! Result-column lineage and mask planning against a small in-memory catalog: every kind of
//! derivation must keep a masked column masked, writes of masked values are denied, and
//! ordinary statements stay clear (over-masking and over-blocking are failures too).

use std::collections::HashMap;

use sluice_policy::{
    mask_plan, origin_rule, type_rule, Catalog, Column, Function, MaskPlan, Policy, PolicySet,
    RelKind, Relation, ResultPlan, RuleIndex,
};

const DOC: &str = r#"
policies:
  - name: agent
    classes: {allow: [read, write, copy, session, transaction]}
    functions:
      trusted: ["app.trusted_*"]
    masking:
      - columns: [app.customers.ssn]
        strategy: {partial: {keep_last: 4}}
      - columns: ["app.customers.email"]
        strategy: tokenise
      - detectors: [card]
        strategy: redact
  - name: typed
    classes: {allow: [read]}
    masking:
      - types: [inet]
        strategy: "null"
  - name: detectors_only
    classes: {allow: [read]}
    masking:
      - detectors: [email]
        strategy: redact
  - name: plain
    classes: {allow: [read]}
"#;

const SSN: Option<RuleIndex> = Some(0);
const EMAIL: Option<RuleIndex> = Some(1);

fn policy(name: &str) -> Policy {
    let set = PolicySet::from_yaml(DOC, 1).expect("valid test policy");
    (**set.get(name).expect("policy exists")).clone()
}

/// An in-memory catalog: relations by (schema, name) and OID.
#[derive(Default)]
struct TestCatalog {
    rels: Vec<Relation>,
    by_name: HashMap<(String, String), usize>,
    funcs: HashMap<String, Vec<Function>>,
}

impl TestCatalog {
    fn add(&mut self, oid: u32, schema: &str, name: &str, kind: RelKind, cols: &[(&str, &str)]) {
        self.add_view(oid, schema, name, kind, cols, None);
    }

    fn add_view(
        &mut self,
        oid: u32,
        schema: &str,
        name: &str,
        kind: RelKind,
        cols: &[(&str, &str)],
        sql: Option<&str>,
    ) {
        let columns = cols
            .iter()
            .enumerate()
            .map(|(i, (n, t))| Column {
                attnum: i16::try_from(i + 1).expect("few columns"),
                name: (*n).into(),
                type_name: (*t).into(),
                type_oid: 25,
            })
            .collect();
        self.by_name
            .insert((schema.into(), name.into()), self.rels.len());
        self.rels.push(Relation {
            oid,
            schema: schema.into(),
            name: name.into(),
            kind,
            columns,
            view_sql: sql.map(Into::into),
        });
    }
}

impl Catalog for TestCatalog {
    fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.by_name
            .get(&(schema.to_owned(), name.to_owned()))
            .map(|&i| &self.rels[i])
    }
    fn by_oid(&self, oid: u32) -> Option<&Relation> {
        self.rels.iter().find(|r| r.oid == oid)
    }
    fn type_name(&self, _oid: u32) -> Option<&str> {
        None
    }
    fn functions(&self, name: &str) -> &[Function] {
        self.funcs.get(name).map_or(&[], Vec::as_slice)
    }
}

const CUSTOMERS: u32 = 1000;
const ORDERS: u32 = 1001;
const V_CUSTOMERS: u32 = 1002;
const V_NESTED: u32 = 1003;
const V_BROKEN: u32 = 1004;
const MV: u32 = 1005;
const V_SELF: u32 = 1006;
const HOSTS: u32 = 1007;
const V_CLEAN: u32 = 1008;

/// A user-defined function in schema `app`.
fn function(name: &str, language: &str, source: &str, returns: Option<u32>) -> Function {
    Function {
        oid: 5000 + u32::try_from(name.len()).expect("short"),
        schema: "app".into(),
        name: name.into(),
        arg_types: vec![23],
        language: language.into(),
        source: source.into(),
        return_type: 25,
        returns_set: returns.is_some(),
        return_relation: returns,
    }
}

fn catalog() -> TestCatalog {
    let mut c = TestCatalog::default();
    for f in [
        function(
            "get_ssn",
            "sql",
            "SELECT ssn FROM app.customers WHERE id = $1",
            None,
        ),
        function(
            "get_note",
            "sql",
            "SELECT note FROM app.orders WHERE id = $1",
            None,
        ),
        function(
            "all_customers",
            "sql",
            "SELECT * FROM app.customers",
            Some(CUSTOMERS),
        ),
        function(
            "pl_ssn",
            "plpgsql",
            "BEGIN RETURN (SELECT ssn FROM app.customers LIMIT 1); END",
            None,
        ),
        function("trusted_ssn", "plpgsql", "BEGIN RETURN 'x'; END", None),
        function("atomic", "sql", "", None),
    ] {
        c.funcs.entry(f.name.to_string()).or_default().push(f);
    }
    c.add(
        CUSTOMERS,
        "app",
        "customers",
        RelKind::Table,
        &[
            ("id", "int4"),
            ("name", "text"),
            ("email", "text"),
            ("ssn", "text"),
            ("card", "text"),
        ],
    );
    c.add(
        ORDERS,
        "app",
        "orders",
        RelKind::Table,
        &[("id", "int4"), ("customer_id", "int4"), ("note", "text")],
    );
    c.add_view(
        V_CUSTOMERS,
        "app",
        "v_customers",
        RelKind::View,
        &[("id", "int4"), ("s", "text")],
        Some("SELECT customers.id, upper(customers.ssn) AS s FROM app.customers"),
    );
    c.add_view(
        V_NESTED,
        "app",
        "v_nested",
        RelKind::View,
        &[("s", "text"), ("n", "int4")],
        Some("SELECT lower(v.s) AS s, v.id AS n FROM app.v_customers v"),
    );
    c.add_view(
        V_BROKEN,
        "app",
        "v_broken",
        RelKind::View,
        &[("x", "text")],
        Some("SELECT frobnicate FROM WHERE"),
    );
    c.add_view(
        MV,
        "app",
        "mv_emails",
        RelKind::MaterializedView,
        &[("customer", "int4"), ("mail", "text")],
        Some("SELECT id AS customer, email AS mail FROM app.customers"),
    );
    c.add_view(
        V_SELF,
        "app",
        "v_self",
        RelKind::View,
        &[("x", "text")],
        Some("SELECT x FROM app.v_self"),
    );
    c.add(
        HOSTS,
        "app",
        "hosts",
        RelKind::Table,
        &[("id", "int4"), ("addr", "inet")],
    );
    c.add_view(
        V_CLEAN,
        "app",
        "v_orders",
        RelKind::View,
        &[("id", "int4"), ("note", "text")],
        Some("SELECT id, note FROM app.orders"),
    );
    c.add_view(
        1200,
        "app",
        "v_stats",
        RelKind::View,
        &[("attname", "name"), ("vals", "anyarray")],
        Some("SELECT attname, most_common_vals AS vals FROM pg_catalog.pg_stats"),
    );
    c.add(
        1100,
        "public",
        "things",
        RelKind::Table,
        &[("id", "int4"), ("label", "text")],
    );
    c
}

fn plan(sql: &str) -> MaskPlan {
    mask_plan(&policy("agent"), &catalog(), sql)
}

/// The masks of a one-statement text that returns rows.
#[track_caller]
fn masks(sql: &str) -> Vec<Option<RuleIndex>> {
    match plan(sql) {
        MaskPlan::Statements(v) => match v.as_slice() {
            [ResultPlan::Rows(m)] => m.columns.clone(),
            other => panic!("expected one Rows plan for {sql}, got {other:?}"),
        },
        other => panic!("expected a mask plan for {sql}, got {other:?}"),
    }
}

#[track_caller]
fn clear(sql: &str) {
    assert_eq!(plan(sql), MaskPlan::Clear, "expected Clear for {sql}");
}

/// Denied; returns (rule, message).
#[track_caller]
fn denied(sql: &str) -> (String, String) {
    match plan(sql) {
        MaskPlan::Deny { rule, message } => (rule.to_string(), message),
        other => panic!("expected Deny for {sql}, got {other:?}"),
    }
}

#[test]
fn plain_columns_and_aliases() {
    assert_eq!(masks("SELECT ssn FROM app.customers"), vec![SSN]);
    assert_eq!(masks("SELECT ssn AS x FROM app.customers"), vec![SSN]);
    assert_eq!(
        masks("SELECT id, email, ssn FROM app.customers c"),
        vec![None, EMAIL, SSN]
    );
    assert_eq!(masks("SELECT c.ssn FROM app.customers AS c"), vec![SSN]);
    assert_eq!(
        masks("SELECT app.customers.ssn FROM app.customers"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT customers.email FROM app.customers"),
        vec![EMAIL]
    );
    // Identifier folding: unquoted names fold to lower case.
    assert_eq!(masks("SELECT SSN FROM App.Customers"), vec![SSN]);
    assert_eq!(
        masks("SELECT \"ssn\" FROM \"app\".\"customers\""),
        vec![SSN]
    );
    // Column aliases on the FROM item rename, they do not launder.
    assert_eq!(
        masks("SELECT b, d FROM app.customers AS c(a, b, e, d)"),
        vec![None, SSN]
    );
}

#[test]
fn expressions_carry_the_mask() {
    for sql in [
        "SELECT upper(ssn) FROM app.customers",
        "SELECT ssn || '' FROM app.customers",
        "SELECT substr(ssn, 1, 3) FROM app.customers",
        "SELECT substring(ssn FROM 1 FOR 3) FROM app.customers",
        "SELECT ssn::bytea FROM app.customers",
        "SELECT CAST(ssn AS varchar(20)) FROM app.customers",
        "SELECT CASE WHEN id > 0 THEN ssn ELSE 'x' END FROM app.customers",
        "SELECT COALESCE(NULL, ssn) FROM app.customers",
        "SELECT string_agg(ssn, ',') FROM app.customers",
        "SELECT array_agg(ssn) FROM app.customers",
        "SELECT json_agg(ssn) FROM app.customers",
        "SELECT jsonb_agg(c.ssn) FROM app.customers c",
        "SELECT max(ssn) FROM app.customers",
        "SELECT (array[ssn])[1] FROM app.customers",
        "SELECT ROW(id, ssn) FROM app.customers",
        "SELECT my_unknown_function(42, ssn) FROM app.customers",
        "SELECT first_value(ssn) OVER (ORDER BY id) FROM app.customers",
        "SELECT lower(reverse(translate(ssn, '0123456789', 'abcdefghij'))) FROM app.customers",
        "SELECT format('%s', ssn) FROM app.customers",
        "SELECT md5(ssn) FROM app.customers",
    ] {
        assert_eq!(masks(sql), vec![SSN], "{sql}");
    }
}

#[test]
fn whole_rows_carry_every_column() {
    for sql in [
        "SELECT c FROM app.customers c",
        "SELECT to_jsonb(c.*) FROM app.customers c",
        "SELECT row_to_json(c) FROM app.customers c",
        "SELECT to_json(customers) FROM app.customers",
        "SELECT (c).name || (c).ssn FROM app.customers c",
    ] {
        // The first rule by index among ssn (0) and email (1).
        assert_eq!(masks(sql), vec![SSN], "{sql}");
    }
    // `(c).name` is the whole row narrowed to one field: still tainted by the row (over-masking
    // a field access is the safe direction).
    assert_eq!(masks("SELECT (c).id FROM app.customers c"), vec![SSN]);
}

#[test]
fn stars_expand_in_attnum_order() {
    assert_eq!(
        masks("SELECT * FROM app.customers"),
        vec![None, None, EMAIL, SSN, None]
    );
    assert_eq!(
        masks("SELECT o.*, c.* FROM app.orders o JOIN app.customers c ON c.id = o.customer_id"),
        vec![None, None, None, None, None, EMAIL, SSN, None]
    );
    // sqlparser reads `TABLE t` only inside a query (parenthesised, or as a set operand).
    assert_eq!(
        masks("(TABLE App.Customers)"),
        vec![None, None, EMAIL, SSN, None]
    );
    assert_eq!(
        masks("SELECT 1, 'a', 'b', 'c', 'd' UNION ALL TABLE app.customers"),
        vec![None, None, EMAIL, SSN, None]
    );
}

#[test]
fn count_and_clean_columns_are_not_masked() {
    clear("SELECT count(ssn) FROM app.customers");
    clear("SELECT count(*) FROM app.customers");
    clear("SELECT id, name FROM app.customers");
    clear("SELECT id, name FROM app.customers WHERE ssn = '123-45-6789' ORDER BY email");
    clear("SELECT * FROM generate_series(1, 10)");
    clear("SELECT g FROM generate_series(1, 10) g");
    clear("SELECT o.note, c.name FROM app.orders o JOIN app.customers c ON c.id = o.customer_id");
    clear("SELECT 1");
    clear("SELECT now(), current_user, version()");
    // Bare value keywords and named arguments are not column references.
    clear("SELECT id, current_schema, current_date, session_user FROM app.customers");
    clear("SELECT id, make_interval(days => 1) FROM app.customers");
    clear("SELECT row_number() OVER (PARTITION BY ssn ORDER BY email), id FROM app.customers");
    clear("SELECT count(*) FILTER (WHERE ssn LIKE '1%') FROM app.customers");
    clear("SELECT id FROM app.customers WHERE id IN (SELECT customer_id FROM app.orders)");
    clear("SELECT EXISTS (SELECT 1 FROM app.customers WHERE ssn = 'x')");
    clear("BEGIN; SELECT id FROM app.orders; COMMIT");
    clear("SET statement_timeout = 0");
    clear("SHOW search_path");
    clear("EXPLAIN SELECT ssn FROM app.customers");
    clear("INSERT INTO app.orders (customer_id, note) VALUES (1, 'hello')");
    clear("UPDATE app.orders SET note = 'x' WHERE id = 1");
    clear("DELETE FROM app.customers WHERE ssn = '1'");
    clear("UPDATE app.customers SET ssn = NULL WHERE id = 1");
    clear("SELECT label FROM things"); // search_path: public
    clear("SELECT relname FROM pg_class"); // pg_catalog, not in this catalog
    clear("SELECT table_name FROM information_schema.columns");
}

#[test]
fn ctes_subqueries_and_set_operations() {
    assert_eq!(
        masks("WITH x AS (SELECT ssn AS s FROM app.customers) SELECT s FROM x"),
        vec![SSN]
    );
    assert_eq!(
        masks("WITH x(a, b) AS (SELECT id, email FROM app.customers) SELECT b, a FROM x"),
        vec![EMAIL, None]
    );
    assert_eq!(
        masks("SELECT t.v FROM (SELECT lower(ssn) AS v FROM app.customers) t"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT id, (SELECT ssn FROM app.customers c WHERE c.id = o.customer_id) FROM app.orders o"),
        vec![None, SSN]
    );
    // Masked in the second branch only.
    assert_eq!(
        masks("SELECT note FROM app.orders UNION ALL SELECT ssn FROM app.customers"),
        vec![SSN]
    );
    assert_eq!(
        masks("WITH d AS (DELETE FROM app.customers WHERE id = 1 RETURNING ssn) SELECT * FROM d"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT ARRAY(SELECT ssn FROM app.customers)"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT id, note FROM app.orders EXCEPT SELECT id, email FROM app.customers"),
        vec![None, EMAIL]
    );
    assert_eq!(
        masks(
            "SELECT * FROM (VALUES (1, 'a'), (2, (SELECT ssn FROM app.customers LIMIT 1))) v(a, b)"
        ),
        vec![None, SSN]
    );
    // A CTE name shadows nothing outside its WITH.
    clear("WITH customers AS (SELECT 1 AS ssn) SELECT ssn FROM customers");
    // Recursive CTE: the masked value enters in the recursive branch.
    assert_eq!(
        masks(
            "WITH RECURSIVE r(n, v) AS (SELECT 1, 'x'::text UNION ALL \
             SELECT r.n + 1, c.ssn FROM r JOIN app.customers c ON c.id = r.n WHERE r.n < 5) \
             SELECT n, v FROM r"
        ),
        vec![None, SSN]
    );
}

#[test]
fn joins_using_natural_and_lateral() {
    // `*` over USING: the merged column first, deriving from both sides.
    assert_eq!(
        masks("SELECT * FROM app.orders o JOIN (SELECT id, ssn FROM app.customers) c USING (id)"),
        vec![None, None, None, SSN]
    );
    assert_eq!(
        masks("SELECT id FROM app.orders JOIN (SELECT ssn AS id FROM app.customers) c USING (id)"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT * FROM (SELECT 1 AS k, ssn AS note FROM app.customers) a NATURAL JOIN app.orders"),
        vec![SSN, None, None, None]
    );
    assert_eq!(
        masks(
            "SELECT o.id, l.s FROM app.orders o, \
             LATERAL (SELECT ssn AS s FROM app.customers c WHERE c.id = o.customer_id) l"
        ),
        vec![None, SSN]
    );
    // An ambiguous unqualified name derives from every candidate.
    assert_eq!(
        masks("SELECT note FROM app.orders, (SELECT email AS note FROM app.customers) x"),
        vec![EMAIL]
    );
}

#[test]
fn set_returning_functions_in_from() {
    assert_eq!(
        masks("SELECT u FROM app.customers c, unnest(array[c.ssn]) u"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT * FROM unnest((SELECT array_agg(ssn) FROM app.customers)) AS u(x)"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT x FROM (SELECT array_agg(ssn) AS a FROM app.customers) s, unnest(s.a) x"),
        vec![SSN]
    );
    assert_eq!(
        masks("SELECT key, value FROM app.customers c, jsonb_each(to_jsonb(c))"),
        vec![SSN, SSN]
    );
    assert_eq!(
        masks("SELECT t FROM app.customers c, regexp_split_to_table(c.email, '@') t"),
        vec![EMAIL]
    );
    // An unknown function's columns all derive from its arguments.
    assert_eq!(
        masks("SELECT f.a FROM app.customers c, my_srf(c.ssn) AS f(a, b)"),
        vec![SSN]
    );
    clear("SELECT * FROM generate_series(1, 3) WITH ORDINALITY");
}

#[test]
fn views_use_their_definition() {
    assert_eq!(masks("SELECT s FROM app.v_customers"), vec![SSN]);
    assert_eq!(masks("SELECT * FROM app.v_customers"), vec![None, SSN]);
    assert_eq!(masks("SELECT n, s FROM app.v_nested"), vec![None, SSN]);
    assert_eq!(masks("SELECT mail FROM app.mv_emails"), vec![EMAIL]);
    clear("SELECT id FROM app.v_customers");
    clear("SELECT * FROM app.v_orders");
    // A view whose definition cannot be parsed reads who-knows-what: its columns cannot be
    // traced, so reading them is denied.
    let (rule, msg) = denied("SELECT x FROM app.v_broken");
    assert_eq!(rule, "masking/lineage");
    assert!(msg.contains("v_broken"), "{msg}");
    // A view that refers to itself stops at the depth guard instead of recursing forever.
    let (rule, _) = denied("SELECT x FROM app.v_self");
    assert_eq!(rule, "masking/lineage");
}

#[test]
fn quoted_names_that_do_not_exist_are_unknown() {
    // "SSN" is not ssn: PostgreSQL would fail it; lineage cannot be traced → denied, since the
    // statement reads a relation with masked columns.
    let (rule, msg) = denied("SELECT \"SSN\" FROM app.customers");
    assert_eq!(rule, "masking/lineage");
    assert!(msg.contains("SSN"), "{msg}");
    // Over a relation with nothing masked, unknown lineage is harmless.
    clear("SELECT \"NOTE\" FROM app.orders");
}

#[test]
fn unknown_relations_are_denied() {
    let (rule, msg) = denied("SELECT * FROM app.customers_backup");
    assert_eq!(rule, "masking/lineage");
    assert!(
        msg.contains("app.customers_backup") && msg.contains("catalog"),
        "{msg}"
    );
    let (_, msg) = denied("SELECT id FROM nowhere");
    assert!(msg.contains("\"nowhere\""), "{msg}");
    // Even when only a harmless column is selected: the catalog may be stale.
    denied("SELECT 1 FROM app.newtable");
}

#[test]
fn writes_of_masked_values_are_denied() {
    let cases = [
        ("INSERT INTO app.orders (note) SELECT ssn FROM app.customers", "masking[0]"),
        ("INSERT INTO app.orders (customer_id, note) SELECT id, upper(email) FROM app.customers", "masking[1]"),
        ("INSERT INTO app.orders (note) VALUES ((SELECT ssn FROM app.customers LIMIT 1))", "masking[0]"),
        ("INSERT INTO app.orders SELECT id, id, ssn FROM app.customers", "masking[0]"),
        ("CREATE TABLE leak AS SELECT ssn FROM app.customers", "masking[0]"),
        ("CREATE TABLE leak AS SELECT * FROM app.v_customers", "masking[0]"),
        ("SELECT ssn INTO leak FROM app.customers", "masking[0]"),
        ("CREATE MATERIALIZED VIEW leak AS SELECT email FROM app.customers", "masking[1]"),
        ("CREATE VIEW leak AS SELECT c FROM app.customers c", "masking[0]"),
        ("UPDATE app.customers SET name = ssn", "masking[0]"),
        ("UPDATE app.orders o SET note = c.email FROM app.customers c WHERE c.id = o.customer_id", "masking[1]"),
        ("UPDATE app.orders SET note = (SELECT ssn FROM app.customers LIMIT 1)", "masking[0]"),
        ("WITH moved AS (INSERT INTO app.orders (note) SELECT ssn FROM app.customers RETURNING id) SELECT count(*) FROM moved", "masking[0]"),
        ("INSERT INTO app.orders (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = (SELECT email FROM app.customers LIMIT 1)", "masking[1]"),
        ("MERGE INTO app.orders o USING app.customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET note = c.ssn", "masking[0]"),
        ("EXPLAIN ANALYZE CREATE TABLE leak AS SELECT ssn FROM app.customers", "masking[0]"),
        ("COPY (SELECT ssn FROM app.customers) TO '/tmp/x'", "masking[0]"),
    ];
    for (sql, rule) in cases {
        let (got, msg) = denied(sql);
        assert_eq!(got, format!("agent/{rule}"), "{sql}: {msg}");
        assert!(msg.contains("masked"), "{sql}: {msg}");
    }
    // Storing a masked value where the same rule masks it again is fine.
    clear("UPDATE app.customers SET ssn = upper(ssn) WHERE id = 1");
    // ... but not where another rule (a different strategy) would show it.
    let (rule, _) = denied("UPDATE app.customers SET email = ssn");
    assert_eq!(rule, "agent/masking[0]");
    // Clean copies stay allowed.
    clear("INSERT INTO app.orders (customer_id, note) SELECT id, name FROM app.customers");
    clear("CREATE TABLE ids AS SELECT id FROM app.customers");
}

#[test]
fn renaming_masked_columns_away_is_denied() {
    let (rule, _) = denied("ALTER TABLE app.customers RENAME COLUMN ssn TO s");
    assert_eq!(rule, "agent/masking[0]");
    denied("ALTER TABLE app.customers RENAME TO people");
    clear("ALTER TABLE app.orders ADD COLUMN extra text");
}

#[test]
fn returning_is_masked() {
    assert_eq!(
        masks("UPDATE app.customers SET name = 'x' WHERE id = 1 RETURNING id, ssn"),
        vec![None, SSN]
    );
    assert_eq!(
        masks("DELETE FROM app.customers WHERE id = 1 RETURNING *"),
        vec![None, None, EMAIL, SSN, None]
    );
    assert_eq!(
        masks("INSERT INTO app.customers (id, name) VALUES (1, 'a') RETURNING email"),
        vec![EMAIL]
    );
    assert_eq!(
        masks("DELETE FROM app.orders o USING app.customers c WHERE c.id = o.customer_id RETURNING o.id, c.ssn"),
        vec![None, SSN]
    );
    clear("INSERT INTO app.orders (note) VALUES ('x') RETURNING id, note");
}

#[test]
fn copy_to_stdout() {
    assert_eq!(
        masks("COPY app.customers TO STDOUT"),
        vec![None, None, EMAIL, SSN, None]
    );
    assert_eq!(
        masks("COPY app.customers (ssn, id) TO STDOUT"),
        vec![SSN, None]
    );
    assert_eq!(
        masks("COPY (SELECT upper(email) FROM app.customers) TO STDOUT"),
        vec![EMAIL]
    );
    assert_eq!(
        masks("COPY app.customers TO STDOUT (FORMAT text)"),
        vec![None, None, EMAIL, SSN, None]
    );
    for sql in [
        "COPY app.customers TO STDOUT (FORMAT binary)",
        "COPY app.customers TO STDOUT WITH BINARY",
        "COPY app.customers TO STDOUT (FORMAT csv)",
        "COPY (SELECT ssn FROM app.customers) TO STDOUT CSV",
    ] {
        let (rule, msg) = denied(sql);
        assert_eq!(rule, "agent/masking[0]", "{sql}");
        assert!(msg.contains("format"), "{msg}");
    }
    // Binary of clean columns is fine; COPY FROM returns nothing.
    clear("COPY app.orders TO STDOUT (FORMAT binary)");
    clear("COPY app.customers (id, name) TO STDOUT (FORMAT csv)");
    clear("COPY app.customers FROM STDIN");
}

#[test]
fn cursors_and_prepared_statements() {
    match plan("DECLARE c CURSOR FOR SELECT id, ssn FROM app.customers") {
        MaskPlan::Statements(v) => match v.as_slice() {
            [ResultPlan::Declare { cursor, rows }] => {
                assert_eq!(&**cursor, "c");
                assert_eq!(rows.columns, vec![None, SSN]);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Registered even when clean, so a later FETCH can find it.
    assert!(matches!(
        plan("DECLARE \"Cur\" CURSOR FOR SELECT id FROM app.orders"),
        MaskPlan::Statements(v) if matches!(v.as_slice(), [ResultPlan::Declare { cursor, rows }] if &**cursor == "Cur" && rows.columns == vec![None])
    ));
    assert_eq!(
        plan("FETCH 10 FROM C"),
        MaskPlan::Statements(vec![ResultPlan::Fetch { cursor: "c".into() }])
    );
    assert_eq!(
        plan("MOVE FORWARD 5 IN c;"),
        MaskPlan::Statements(vec![ResultPlan::Fetch { cursor: "c".into() }])
    );
    let (rule, _) = denied("DECLARE b BINARY CURSOR FOR SELECT ssn FROM app.customers");
    assert_eq!(rule, "agent/masking[0]");

    assert_eq!(
        plan("PREPARE q(int) AS SELECT email FROM app.customers WHERE id = $1"),
        MaskPlan::Statements(vec![ResultPlan::Prepare {
            name: "q".into(),
            rows: Some(sluice_policy::ResultMask {
                columns: vec![EMAIL]
            }),
        }])
    );
    assert_eq!(
        plan("PREPARE w AS UPDATE app.orders SET note = 'x'"),
        MaskPlan::Statements(vec![ResultPlan::Prepare {
            name: "w".into(),
            rows: None
        }])
    );
    assert_eq!(
        plan("EXECUTE Q(1)"),
        MaskPlan::Statements(vec![ResultPlan::Execute { name: "q".into() }])
    );
    let (rule, _) =
        denied("PREPARE leak AS INSERT INTO app.orders (note) SELECT ssn FROM app.customers");
    assert_eq!(rule, "agent/masking[0]");
}

#[test]
fn several_statements_one_plan_each() {
    assert_eq!(
        plan("SET x = 1; SELECT ssn FROM app.customers; SELECT id FROM app.orders; SHOW ALL"),
        MaskPlan::Statements(vec![
            ResultPlan::NoRows,
            ResultPlan::Rows(sluice_policy::ResultMask { columns: vec![SSN] }),
            ResultPlan::Rows(sluice_policy::ResultMask {
                columns: vec![None]
            }),
            ResultPlan::Rows(sluice_policy::ResultMask {
                columns: vec![None, None, None]
            }),
        ])
    );
    // One denial denies the text.
    denied("SELECT id FROM app.orders; CREATE TABLE t AS SELECT ssn FROM app.customers");
}

#[test]
fn unparsed_text_fails_closed() {
    let (rule, msg) = denied("SELEKT ssn FROM app.customers");
    assert_eq!(rule, "masking/lineage");
    assert!(msg.contains("parsed"), "{msg}");
    denied("DO $$ BEGIN PERFORM 1; END $$");
    let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    denied(&deep);
    denied(&"x".repeat(sluice_policy::MAX_SQL_BYTES + 1));
}

#[test]
fn policies_without_column_rules_are_clear_without_parsing() {
    let cat = catalog();
    for name in ["detectors_only", "plain"] {
        let p = policy(name);
        assert_eq!(
            mask_plan(&p, &cat, "SELECT ssn FROM app.customers"),
            MaskPlan::Clear
        );
        assert_eq!(mask_plan(&p, &cat, "this is not SQL"), MaskPlan::Clear);
        assert_eq!(
            mask_plan(&p, &cat, "SELECT * FROM nowhere"),
            MaskPlan::Clear
        );
    }
    assert_eq!(
        mask_plan(&Policy::deny_all(), &cat, "garbage"),
        MaskPlan::Clear
    );
}

#[test]
fn type_rules() {
    let p = policy("typed");
    let cat = catalog();
    assert_eq!(
        mask_plan(&p, &cat, "SELECT id, host(addr) FROM app.hosts"),
        MaskPlan::Statements(vec![ResultPlan::Rows(sluice_policy::ResultMask {
            columns: vec![None, Some(0)]
        })])
    );
    assert_eq!(
        mask_plan(&p, &cat, "SELECT * FROM app.orders"),
        MaskPlan::Clear
    );
    assert_eq!(type_rule(&p, "inet"), Some(0));
    assert_eq!(type_rule(&p, "INET"), Some(0));
    assert_eq!(type_rule(&p, "_inet"), Some(0), "arrays of a masked type");
    assert_eq!(type_rule(&p, "text"), None);
    assert_eq!(type_rule(&policy("agent"), "inet"), None);
}

#[test]
fn origin_rules_for_row_description_fields() {
    let p = policy("agent");
    let cat = catalog();
    assert_eq!(origin_rule(&p, &cat, CUSTOMERS, 4), SSN);
    assert_eq!(origin_rule(&p, &cat, CUSTOMERS, 3), EMAIL);
    assert_eq!(origin_rule(&p, &cat, CUSTOMERS, 1), None);
    assert_eq!(origin_rule(&p, &cat, CUSTOMERS, -1), None, "system column");
    assert_eq!(origin_rule(&p, &cat, ORDERS, 3), None);
    assert_eq!(origin_rule(&p, &cat, V_CUSTOMERS, 2), SSN);
    assert_eq!(origin_rule(&p, &cat, V_CUSTOMERS, 1), None);
    assert_eq!(origin_rule(&p, &cat, V_NESTED, 1), SSN);
    assert_eq!(origin_rule(&p, &cat, MV, 2), EMAIL);
    // Fails closed: an untraceable view, or an attnum the catalog does not list.
    assert_eq!(origin_rule(&p, &cat, V_BROKEN, 1), Some(0));
    assert_eq!(origin_rule(&p, &cat, CUSTOMERS, 9), Some(0));
    assert_eq!(
        origin_rule(&p, &cat, 4242, 1),
        None,
        "unknown OID: the caller decides"
    );
    assert_eq!(
        origin_rule(&policy("detectors_only"), &cat, CUSTOMERS, 4),
        None
    );
}

/// Odd, hostile and random statements: never a panic, and never Clear when the text reads
/// ssn in a way the planner might miss.
#[test]
fn odd_statements_never_panic() {
    let pieces = [
        "SELECT",
        "ssn",
        "FROM",
        "app.customers",
        "c",
        ",",
        "(",
        ")",
        "*",
        "c.*",
        "UNION",
        "WITH",
        "x",
        "AS",
        "JOIN",
        "USING",
        "LATERAL",
        "VALUES",
        "RETURNING",
        "INSERT INTO",
        "UPDATE",
        "SET",
        "=",
        "'",
        "\"",
        ";",
        "$1",
        "::text",
        "[1]",
        "OVER",
        "ROW",
        "TABLE",
        "COPY",
        "TO STDOUT",
        "unnest",
        "count",
        "NATURAL",
        "WHERE",
        "1",
        "--",
        "/*",
        "*/",
    ];
    let cat = catalog();
    let p = policy("agent");
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..4000 {
        let mut sql = String::new();
        let len = (seed % 14) as usize + 1;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            sql.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            sql.push(' ');
        }
        let _ = mask_plan(&p, &cat, &sql);
    }
    for sql in [
        "",
        ";",
        ";;;",
        "SELECT",
        "SELECT * FROM",
        "SELECT (SELECT (SELECT (SELECT ssn FROM app.customers)))",
        "WITH RECURSIVE a AS (SELECT * FROM a) SELECT * FROM a",
        "WITH RECURSIVE a(x) AS (SELECT 1 UNION SELECT ssn FROM app.customers, a) SELECT x FROM a",
        "SELECT * FROM (app.customers JOIN app.orders USING (id)) j",
        "SELECT j.* FROM (app.customers c JOIN app.orders o ON true) AS j(a, b)",
        "SELECT a.b.c.d.e FROM app.customers",
        "SELECT (c).* FROM app.customers c",
        "SELECT x FROM unnest(array[1,2], array['a', 'b']) AS t(x, y)",
        "SELECT * FROM app.customers c JOIN app.customers d USING (nonexistent)",
        "SELECT * FROM app.customers NATURAL JOIN app.customers",
        "UPDATE app.customers SET (name, note) = (SELECT ssn, email FROM app.customers LIMIT 1)",
        "SELECT 1 UNION SELECT 1, 2",
        "VALUES (1), (1, 2)",
        "SELECT * FROM xmltable('/a' PASSING '<a/>' COLUMNS x text) t",
    ] {
        let _ = mask_plan(&p, &cat, sql);
        let _ = origin_rule(&p, &cat, V_SELF, 1);
    }
    // Deep nesting just under the parser limit, on a small stack.
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let p = policy("agent");
            let cat = catalog();
            let mut sql = String::from("SELECT ssn FROM app.customers");
            for _ in 0..12 {
                sql = format!("SELECT * FROM ({sql}) s");
            }
            mask_plan(&p, &cat, &sql)
        })
        .expect("spawn");
    let deep = handle.join().expect("no stack overflow");
    assert_eq!(
        deep,
        MaskPlan::Statements(vec![ResultPlan::Rows(sluice_policy::ResultMask {
            columns: vec![SSN]
        })])
    );
}

/// Views within views, each nested as deeply as the parser allows: the walk stays bounded
/// (view depth and total query depth) and fits a 1 MiB stack even in a debug build.
#[test]
fn deep_view_chains_are_bounded() {
    fn nested(inner: &str, n: usize) -> String {
        let mut sql = inner.to_owned();
        for _ in 0..n {
            sql = format!("SELECT * FROM (SELECT (SELECT ssn) AS ssn FROM ({sql}) s) t");
        }
        sql
    }
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            let mut cat = catalog();
            let mut prev = "app.customers".to_owned();
            for i in 0..12u32 {
                let name = format!("chain_{i}");
                let sql = nested(&format!("SELECT ssn FROM {prev}"), 10);
                cat.add_view(
                    2000 + i,
                    "app",
                    &name,
                    RelKind::View,
                    &[("ssn", "text")],
                    Some(&sql),
                );
                prev = format!("app.{name}");
            }
            let p = policy("agent");
            (
                mask_plan(&p, &cat, "SELECT ssn FROM app.chain_2"),
                mask_plan(&p, &cat, "SELECT ssn FROM app.chain_11"),
                origin_rule(&p, &cat, 2011, 1),
            )
        })
        .expect("spawn");
    let (shallow, deep, origin) = handle.join().expect("no stack overflow");
    assert_eq!(
        shallow,
        MaskPlan::Statements(vec![ResultPlan::Rows(sluice_policy::ResultMask {
            columns: vec![SSN]
        })])
    );
    // Too deep to trace: masked or denied, never clear.
    assert!(
        matches!(&deep, MaskPlan::Deny { rule, .. } if rule.as_str() == "masking/lineage"),
        "{deep:?}"
    );
    assert_eq!(origin, SSN);
}

#[test]
fn nothing_masked_in_the_whole_text_is_clear_but_any_mask_lists_every_statement() {
    clear("SELECT id FROM app.customers; SELECT note FROM app.orders");
    assert!(matches!(
        plan("SELECT id FROM app.customers; SELECT email FROM app.customers"),
        MaskPlan::Statements(v) if v.len() == 2
    ));
}

#[test]
fn side_channel_functions_with_computed_arguments_are_denied() {
    for sql in [
        "SELECT pg_notify('ch', ssn) FROM app.customers",
        "SELECT pg_notify('ch', reverse(ssn)) FROM app.customers",
        "SELECT 1 FROM app.customers WHERE pg_notify('ch', ssn) IS NULL",
        "SELECT 1 WHERE pg_notify('ch', (SELECT ssn FROM app.customers LIMIT 1)) IS NULL",
        "SELECT set_config('my.v', ssn, false) FROM app.customers",
        "SELECT dblink_exec('host=x', 'insert ' || ssn) FROM app.customers",
    ] {
        let (rule, message) = denied(sql);
        assert_eq!(rule, "masking/lineage", "{sql}");
        assert!(message.contains("()"), "{sql}: {message}");
    }
    // Constant arguments carry nothing masked.
    clear("SELECT pg_notify('ch', 'done')");
    clear("SELECT set_config('application_name', 'agent', false)");
}

#[test]
fn statistics_and_raw_pages_are_denied_to_masking_roles() {
    for sql in [
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
        "SELECT histogram_bounds FROM pg_catalog.pg_stats WHERE attname = 'ssn'",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_stats WHERE most_common_vals::text LIKE '%123%')",
        "SELECT * FROM pg_stats_ext",
        "SELECT * FROM pg_stats_ext_exprs",
        "SELECT stavalues1 FROM pg_statistic",
        "SELECT * FROM PG_CATALOG.PG_STATISTIC_EXT_DATA",
        "SELECT * FROM heap_page_items(get_raw_page('app.customers', 0))",
        "SELECT get_raw_page('app.customers', 0)",
        "SELECT * FROM heap_page_item_attrs(get_raw_page('customers', 0), 'app.customers'::regclass)",
        "SELECT tuple_data_split('app.customers'::regclass, t_data, t_infomask, t_infomask2, t_bits) FROM x",
        "SELECT * FROM bt_page_items('customers_ssn_idx', 1)",
        "SELECT * FROM public.brin_page_items(get_raw_page('i', 2), 'i')",
        "SELECT * FROM gin_leafpage_items(get_raw_page('i', 2))",
        "SELECT * FROM gist_page_items(get_raw_page('i', 0), 'i')",
        "SELECT * FROM hash_page_items(get_raw_page('i', 1))",
        "SELECT m.* FROM pg_statistic_ext_data d, pg_mcv_list_items(d.stxdmcv) m",
        "WITH s AS (SELECT * FROM pg_stats) SELECT 1",
    ] {
        let (rule, message) = denied(sql);
        assert_eq!(rule, "masking/stored_values", "{sql}");
        assert!(message.contains("not available to this role"), "{sql}: {message}");
    }
    // A view over the statistics is no way around it.
    let (rule, message) = denied("SELECT vals FROM app.v_stats");
    assert_eq!(rule, "masking/lineage");
    assert!(message.contains("pg_stats"), "{message}");
    // Ordinary catalog reads stay clear.
    clear("SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app' AND a.attnum > 0");
    clear("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'customers'");
    clear("SELECT * FROM pg_stat_user_tables");
    // Roles without column masking are not affected.
    for name in ["plain", "detectors_only"] {
        assert_eq!(
            mask_plan(
                &policy(name),
                &catalog(),
                "SELECT most_common_vals FROM pg_stats"
            ),
            MaskPlan::Clear
        );
    }
}

const PREDICATES_DOC: &str = r#"
policies:
  - name: strict
    classes: {allow: [read, write]}
    masking:
      - columns: [app.customers.ssn]
        strategy: redact
        predicates: deny
      - columns: [app.customers.email]
        strategy: tokenise
"#;

fn strict_plan(sql: &str) -> MaskPlan {
    let set = PolicySet::from_yaml(PREDICATES_DOC, 1).expect("valid policy");
    mask_plan(set.get("strict").expect("policy"), &catalog(), sql)
}

#[test]
fn predicates_on_masked_columns_can_be_denied() {
    for sql in [
        "SELECT id FROM app.customers WHERE ssn = '512-48-3921'",
        "SELECT id FROM app.customers WHERE ssn LIKE '5%'",
        "SELECT id FROM app.customers c WHERE upper(c.ssn) > 'M'",
        "SELECT id FROM app.customers ORDER BY ssn",
        "SELECT id, ssn AS s FROM app.customers ORDER BY s",
        "SELECT id, ssn FROM app.customers ORDER BY 2",
        // A position counts as every output column (plans are shared across constants).
        "SELECT id, ssn FROM app.customers ORDER BY 1",
        "SELECT ssn, count(*) FROM app.customers GROUP BY 1",
        "SELECT ssn AS s, count(*) FROM app.customers GROUP BY s",
        "SELECT count(*) FROM app.customers GROUP BY ssn",
        "SELECT count(*) FROM app.customers GROUP BY id HAVING max(ssn) > '5'",
        "SELECT o.id FROM app.orders o JOIN app.customers c ON c.ssn = o.note",
        "SELECT o.id FROM app.orders o JOIN (app.customers c JOIN app.customers d ON c.ssn = d.ssn) ON c.id = o.customer_id",
        "SELECT id, rank() OVER (ORDER BY ssn) FROM app.customers",
        "SELECT id, row_number() OVER (PARTITION BY ssn) FROM app.customers",
        "SELECT id, rank() OVER w FROM app.customers WINDOW w AS (ORDER BY ssn)",
        "SELECT count(*) FILTER (WHERE ssn LIKE '5%') FROM app.customers",
        "SELECT DISTINCT ON (ssn) id FROM app.customers",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM app.customers WHERE ssn = 'x')",
        "SELECT id FROM app.orders WHERE customer_id IN (SELECT id FROM app.customers WHERE ssn = 'x')",
        "SELECT id FROM app.v_customers WHERE s = 'X'",
        "UPDATE app.orders SET note = 'x' WHERE customer_id IN (SELECT id FROM app.customers WHERE ssn = 'x')",
        "DELETE FROM app.customers WHERE ssn = 'x'",
        "SELECT ssn FROM app.customers UNION SELECT ssn FROM app.customers ORDER BY 1",
    ] {
        match strict_plan(sql) {
            MaskPlan::Deny { rule, message } => {
                assert_eq!(rule.as_str(), "strict/masking[0]", "{sql}: {message}");
                assert!(message.contains("predicates: deny"), "{sql}: {message}");
            }
            other => panic!("expected Deny for {sql}, got {other:?}"),
        }
    }
    // Output stays masked, and rows chosen by other columns are fine.
    for sql in [
        "SELECT ssn FROM app.customers WHERE id = 1",
        "SELECT id FROM app.customers WHERE email = 'a@b'",
        "SELECT id FROM app.customers ORDER BY email",
        "SELECT id, name FROM app.customers ORDER BY 2",
        "SELECT c.ssn FROM app.customers c JOIN app.orders o ON o.customer_id = c.id ORDER BY o.id",
        "SELECT count(*) FROM app.customers GROUP BY name",
        "SELECT id, rank() OVER (ORDER BY id) FROM app.customers",
        "UPDATE app.customers SET name = 'x' WHERE id = 1",
    ] {
        assert!(
            !matches!(strict_plan(sql), MaskPlan::Deny { .. }),
            "{sql}: {:?}",
            strict_plan(sql)
        );
    }
    // Without `predicates: deny` (the default) inference is not refused.
    assert!(!matches!(
        plan("SELECT id FROM app.customers WHERE ssn = 'x' ORDER BY ssn"),
        MaskPlan::Deny { .. }
    ));
    let bad = "policies:\n  - name: p\n    masking:\n      - {columns: [a.b.c], strategy: redact, predicates: maybe}\n";
    assert_eq!(
        PolicySet::from_yaml(bad, 1).err().map(|e| e.to_string()),
        Some("policies[0].masking[0].predicates: expected allow or deny, not \"maybe\"".into())
    );
}

#[test]
fn user_functions_are_traced_through_their_bodies_or_denied() {
    // A sql function's single SELECT: its result derives from what the body returns.
    assert_eq!(masks("SELECT app.get_ssn(1)"), vec![SSN]);
    assert_eq!(
        masks("SELECT get_ssn(id) AS s, id FROM app.orders"),
        vec![SSN, None]
    );
    assert_eq!(masks("SELECT upper(get_ssn(1))"), vec![SSN]);
    assert_eq!(masks("SELECT x FROM get_ssn(1) AS x"), vec![SSN]);
    // Functions returning a masked relation's rows mask like the relation.
    assert_eq!(
        masks("SELECT * FROM app.all_customers()"),
        vec![None, None, EMAIL, SSN, None]
    );
    assert_eq!(
        masks("SELECT c.ssn, c.id FROM all_customers() c"),
        vec![SSN, None]
    );
    assert_eq!(masks("SELECT all_customers()"), vec![SSN]);
    // Clean bodies stay clean.
    clear("SELECT get_note(1)");
    // Bodies the gateway cannot read are of unknown lineage: denied.
    let (rule, message) = denied("SELECT pl_ssn()");
    assert_eq!(rule, "masking/lineage");
    assert!(message.contains("plpgsql"), "{message}");
    assert!(message.contains("functions.trusted"), "{message}");
    denied("SELECT * FROM pl_ssn()");
    denied("SELECT app.atomic()");
    denied("SELECT id, pl_ssn() FROM app.orders");
    // Trusted functions carry their arguments' lineage only.
    clear("SELECT app.trusted_ssn()");
    assert_eq!(
        masks("SELECT trusted_ssn(ssn) FROM app.customers"),
        vec![SSN]
    );
    // Built-ins are unaffected; a schema-qualified built-in never resolves to a user one.
    clear("SELECT upper('a'), now(), pg_catalog.get_ssn(1)");
}

#[test]
fn trusted_function_globs_are_validated_with_their_path() {
    let doc = r#"
policies:
  - name: p
    classes: {allow: [read]}
    functions: {trusted: ["app.ok_*", "a.b.c"]}
"#;
    let err = PolicySet::from_yaml(doc, 1).expect_err("three parts is not a function name");
    assert!(
        err.to_string().contains("policies[0].functions.trusted[1]"),
        "{err}"
    );
    let ok = PolicySet::from_yaml(
        "policies:\n  - name: p\n    classes: {allow: [read]}\n    functions: {trusted: [\"app.ok_*\", helper]}\n",
        1,
    )
    .expect("valid");
    let p = ok.get("p").expect("policy");
    assert!(p.function_trusted("app", "ok_report"));
    assert!(
        p.function_trusted("other", "HELPER"),
        "an unqualified glob matches any schema"
    );
    assert!(!p.function_trusted("app", "report"));
}
