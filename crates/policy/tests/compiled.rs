//! Compiled policies, as snapshots carry them: validate → compile → JSON → `from_compiled`
//! must give the same policies, the same verdicts and the same mask plans as building from
//! the document, on every statement of the other policy suites; and `from_compiled` refuses
//! compiled policies that are structurally wrong, with the field's path.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};
use sluice_policy::snapshot::{CompiledPolicy, Snapshot, SnapshotContent};
use sluice_policy::{
    analyze, judge, mask_plan, Catalog, Column, MaskPlan, Policy, PolicySet, RelKind, Relation,
    ResultMask, ResultPlan,
};

/// Every feature of the document format, for the round trip.
const FULL: &str = r#"
policies:
  - name: everything
    classes: {allow: [read, transaction, session], review: [write], deny: [ddl]}
    tables: {allow: ["public.*", "app.*", "\"Mixed\".\"Case?\""], deny: [public.secrets, "\"Payroll\""]}
    schemas: {deny: [vault]}
    rules:
      - classes: [write]
        tables: {allow: [public.orders, "app.order_*"], deny: ["app.order_archive"]}
      - classes: [read, copy]
        schemas: {allow: [public, app, "Mixed"]}
    functions: {deny: ["pg_advisory_*", "internal.*", "\"Weird\".f?"]}
    search_path: [app, public, "\"Mixed\""]
    require_where: false
    allow_copy_program: false
    allow_copy_file: false
    allow_set_role: false
    allow_set_search_path: true
    allow_data_modifying_cte: true
    allow_explain_analyze_write: false
    allow_do_blocks: false
    allow_code_definitions: false
    allow_unparsed: false
    max_rows: 250
    review: {on: [tables, functions, require_where, unparsed], wait: false, timeout: 1h30m, min_approvers: 2}
    masking:
      - columns: [app.customers.ssn]
        strategy: {partial: {keep_last: 4}}
      - columns: ["*.*.email", "customers.name"]
        strategy: tokenise
      - detectors: [card, email, ssn, phone, iban, api_key]
        strategy: {redact: {text: "[x]"}}
      - types: [inet, "  CIDR "]
        strategy: "null"
      - columns: [app.customers.card]
        strategy: {partial: {keep_first: 2}}
      - columns: [app.orders.note]
        strategy: hash
  - name: all_flags
    classes: {allow: [read, write, ddl, dcl, admin, copy, transaction, session]}
    allow_copy_program: true
    allow_copy_file: true
    allow_set_role: true
    allow_set_search_path: true
    allow_data_modifying_cte: true
    allow_explain_analyze_write: true
    allow_do_blocks: true
    allow_code_definitions: true
    allow_unparsed: true
    review: {on: [builtin_functions, copy_program, copy_file, set_role, search_path, data_modifying_cte, explain_analyze_write, do_blocks, code_definitions]}
  - name: empty
"#;

/// Every string literal of a Rust source file (plain and `r#"..."#`), decoded; comments
/// skipped. The policy suites' statements and policy documents, without copying them here.
fn literals(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find(['"', '/', 'r']) {
        let tail = &rest[i..];
        if tail.starts_with("//") {
            rest = tail.find('\n').map_or("", |n| &tail[n..]);
        } else if let Some(body) = tail.strip_prefix("r#\"") {
            let end = body.find("\"#").expect("raw string closed");
            out.push(body[..end].to_owned());
            rest = &body[end + 2..];
        } else if let Some(body) = tail.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next().expect("string closed") {
                    (j, '"') => break j,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        '0' => s.push('\0'),
                        '\n' => {
                            // A line continuation skips the next line's indentation.
                            while chars.clone().next().is_some_and(|(_, c)| c.is_whitespace()) {
                                chars.next();
                            }
                        }
                        c => s.push(c),
                    },
                    (_, c) => s.push(c),
                }
            };
            out.push(s);
            rest = &body[end + 1..];
        } else {
            rest = &tail[1..];
        }
    }
    out
}

fn sources() -> Vec<String> {
    [
        include_str!("bypass.rs"),
        include_str!("lineage.rs"),
        include_str!("../../../tests/guardrails.rs"),
    ]
    .iter()
    .flat_map(|s| literals(s))
    .collect()
}

/// The statements of the other suites (and their other strings, which are judged as what
/// they are: mostly text that does not parse).
fn corpus() -> BTreeSet<String> {
    let mut c: BTreeSet<String> = sources()
        .into_iter()
        .filter(|s| !s.contains("policies:"))
        .collect();
    c.extend(
        [
            "SELECT * FROM \"Mixed\".\"CaseX\"",
            "SELECT * FROM customers",
            "SELECT email, name FROM app.customers",
            "SELECT ssn, card FROM app.customers JOIN app.orders o ON o.customer_id = customers.id",
            "SELECT addr FROM app.hosts",
            "UPDATE app.order_lines SET x = 1",
            "DELETE FROM app.order_archive WHERE id = 1",
            "SELECT \"Weird\".fx(1)",
            "SELECT internal.anything()",
            "SET search_path = app",
        ]
        .map(String::from),
    );
    c
}

/// The other suites' policy documents that validate, and [`FULL`].
fn documents() -> Vec<String> {
    let mut docs: Vec<String> = sources()
        .into_iter()
        .filter(|s| s.contains("policies:") && PolicySet::from_yaml(s, 1).is_ok())
        .collect();
    assert!(docs.len() >= 4, "found {} policy documents", docs.len());
    docs.push(FULL.to_owned());
    docs
}

/// Compiles `set`, sends it through JSON as a snapshot would, and builds it again.
fn through_snapshot(set: &PolicySet, version: u64) -> PolicySet {
    let json = serde_json::to_string(&set.compile()).unwrap();
    let back: Vec<CompiledPolicy> = serde_json::from_str(&json).unwrap();
    PolicySet::from_compiled(back, version).unwrap()
}

#[derive(Default)]
struct TestCatalog {
    rels: Vec<Relation>,
    by_name: HashMap<(String, String), usize>,
}

impl TestCatalog {
    fn add(&mut self, schema: &str, name: &str, cols: &[(&str, &str)], view: Option<&str>) {
        let oid = 1000 + u32::try_from(self.rels.len()).unwrap();
        let columns = cols
            .iter()
            .enumerate()
            .map(|(i, (n, t))| Column {
                attnum: i16::try_from(i + 1).unwrap(),
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
            kind: if view.is_some() {
                RelKind::View
            } else {
                RelKind::Table
            },
            columns,
            view_sql: view.map(Into::into),
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
}

/// The relations the lineage suite's statements and [`FULL`]'s masking rules refer to.
fn catalog() -> TestCatalog {
    let mut c = TestCatalog::default();
    let customers = [
        ("id", "int4"),
        ("name", "text"),
        ("email", "text"),
        ("ssn", "text"),
        ("card", "text"),
    ];
    c.add("app", "customers", &customers, None);
    c.add("public", "customers", &customers, None);
    let orders = [("id", "int4"), ("customer_id", "int4"), ("note", "text")];
    c.add("app", "orders", &orders, None);
    c.add("public", "orders", &orders, None);
    c.add("app", "hosts", &[("id", "int4"), ("addr", "inet")], None);
    c.add(
        "app",
        "v_customers",
        &[("id", "int4"), ("s", "text")],
        Some("SELECT customers.id, upper(customers.ssn) AS s FROM app.customers"),
    );
    c.add(
        "app",
        "mv_emails",
        &[("customer", "int4"), ("mail", "text")],
        Some("SELECT id AS customer, email AS mail FROM app.customers"),
    );
    c.add(
        "public",
        "things",
        &[("id", "int4"), ("label", "text")],
        None,
    );
    c
}

/// Whether a plan masks a column or denies for masking.
fn masks(plan: &MaskPlan) -> bool {
    let any = |m: &ResultMask| m.columns.iter().any(Option::is_some);
    match plan {
        MaskPlan::Clear => false,
        MaskPlan::Deny { .. } => true,
        MaskPlan::Statements(s) => s.iter().any(|r| match r {
            ResultPlan::Rows(m) | ResultPlan::Declare { rows: m, .. } => any(m),
            ResultPlan::Prepare { rows, .. } => rows.as_ref().is_some_and(any),
            _ => false,
        }),
    }
}

#[test]
fn compiled_policies_judge_and_mask_exactly_like_their_source() {
    let corpus = corpus();
    assert!(corpus.len() > 300, "corpus of {}", corpus.len());
    let catalog = catalog();
    let (mut verdicts, mut plans, mut masked) = (0, 0, 0);
    for doc in documents() {
        let built = PolicySet::from_yaml(&doc, 7).unwrap();
        let loaded = through_snapshot(&built, 7);
        assert_eq!(loaded.len(), built.len());
        assert_eq!(loaded.version(), 7);
        for (a, b) in built.iter().zip(loaded.iter()) {
            // Field for field, cache key and validity included.
            assert_eq!(a, b, "policy {}", a.name());
            assert!(b.is_valid());
            for sql in &corpus {
                let analysis = analyze(sql);
                assert_eq!(
                    judge(a, &analysis),
                    judge(b, &analysis),
                    "{}: {sql}",
                    a.name()
                );
                verdicts += 1;
                let plan = mask_plan(a, &catalog, sql);
                assert_eq!(plan, mask_plan(b, &catalog, sql), "{}: {sql}", a.name());
                plans += 1;
                masked += usize::from(masks(&plan));
            }
        }
    }
    assert!(masked > 10, "the corpus exercises masking ({masked} plans)");
    println!("{verdicts} verdicts and {plans} mask plans identical ({masked} masking)");
}

#[test]
fn cache_keys_come_from_the_version_and_the_index() {
    let built = PolicySet::from_yaml(FULL, 3).unwrap();
    let compiled = built.compile();
    let same = PolicySet::from_compiled(compiled.clone(), 3).unwrap();
    let next = PolicySet::from_compiled(compiled, 4).unwrap();
    let keys = |s: &PolicySet| s.iter().map(|p| p.cache_key()).collect::<Vec<_>>();
    assert_eq!(keys(&same), keys(&built));
    let distinct: BTreeSet<u64> = keys(&same).into_iter().chain(keys(&next)).collect();
    assert_eq!(distinct.len(), 2 * built.len(), "no key survives a version");
    assert_eq!(
        next.get("empty").unwrap().cache_key(),
        PolicySet::from_yaml(FULL, 4)
            .unwrap()
            .get("empty")
            .unwrap()
            .cache_key()
    );
}

#[test]
fn the_compiled_form_is_inert_outside_a_set() {
    let built = PolicySet::from_yaml(FULL, 3).unwrap();
    let v = serde_json::to_value(&built.compile()[0]).unwrap();
    assert_eq!(v["name"], "everything");
    assert_eq!(
        v["classes"],
        json!(["allow", "review", "deny", "deny", "deny", "deny", "allow", "allow"])
    );
    assert_eq!(v["deny"][0]["glob"], json!(["public", "secrets"]));
    assert_eq!(v["masking"][3]["types"], json!(["inet", "cidr"]));
    assert!(v.get("valid").is_none() && v.get("cache_key").is_none());
    // A policy deserialized outside `from_compiled` is not valid: it denies everything.
    let p: Policy = serde_json::from_value(v).unwrap();
    assert!(!p.is_valid());
    assert!(judge(&p, &analyze("SELECT 1")).is_deny());
}

/// A change to the JSON of compiled policies.
type Tamper = Box<dyn FnOnce(&mut Value)>;

/// The compiled form of [`FULL`] as JSON, changed by `f`, then loaded.
fn load_tampered(f: impl FnOnce(&mut Value)) -> Result<PolicySet, String> {
    let mut v = serde_json::to_value(PolicySet::from_yaml(FULL, 1).unwrap().compile()).unwrap();
    f(&mut v);
    let compiled: Vec<CompiledPolicy> = serde_json::from_value(v).map_err(|e| e.to_string())?;
    PolicySet::from_compiled(compiled, 1).map_err(|e| e.to_string())
}

#[test]
fn structurally_wrong_compiled_policies_are_refused_with_their_path() {
    assert!(load_tampered(|_| {}).is_ok());
    let cases: Vec<(Tamper, &str)> = vec![
        (
            Box::new(|v| v[2]["name"] = json!("everything")),
            "compiled_policies[2].name: duplicate policy name \"everything\"",
        ),
        (
            Box::new(|v| v[2]["name"] = json!("")),
            "compiled_policies[2].name: empty, or with surrounding spaces",
        ),
        (
            Box::new(|v| v[0]["deny"][0]["target"] = json!("schema")),
            "compiled_policies[0].deny[0].glob: glob \"public.secrets\" has more than 1 parts",
        ),
        (
            Box::new(|v| v[0]["allow"][0]["id"] = json!("all_flags/tables.allow")),
            "compiled_policies[0].allow[0].id: rule id \"all_flags/tables.allow\" is not under policy \"everything\"",
        ),
        (
            Box::new(|v| v[0]["function_deny"][1]["glob"] = json!(["a", "b", "c"])),
            "compiled_policies[0].function_deny[1].glob: glob \"a.b.c\" has more than 2 parts",
        ),
        (
            Box::new(|v| v[0]["review"]["min_approvers"] = json!(0)),
            "compiled_policies[0].review.min_approvers: must be at least 1",
        ),
        (
            Box::new(|v| v[0]["masking"][3]["types"][0] = json!("INET")),
            "compiled_policies[0].masking[3].types[0]: type names are compiled trimmed, non-empty and lower case",
        ),
        (
            Box::new(|v| v[0]["search_path"][0] = json!("")),
            "compiled_policies[0].search_path[0]: empty schema name",
        ),
        (
            Box::new(|v| {
                let m = &mut v[0]["masking"][2];
                m["detectors"] = json!([]);
            }),
            "compiled_policies[0].masking[2]: a masking rule needs columns, types or detectors",
        ),
    ];
    for (tamper, want) in cases {
        assert_eq!(load_tampered(tamper).unwrap_err(), want);
    }
    // Shape errors are serde's: unknown fields, empty glob parts, bad enum values.
    for (tamper, want) in [
        (
            Box::new(|v: &mut Value| v[0]["valid"] = json!(true)) as Tamper,
            "unknown field `valid`",
        ),
        (
            Box::new(|v| v[0]["deny"][0]["glob"] = json!(["public", ""])),
            "empty name part",
        ),
        (
            Box::new(|v| v[0]["classes"][0] = json!("maybe")),
            "unknown variant `maybe`",
        ),
    ] {
        let e = load_tampered(tamper).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    assert!(matches!(
        PolicySet::from_compiled(Vec::new(), 1).map(|s| s.len()),
        Ok(0)
    ));
}

#[test]
fn snapshots_carry_both_forms_and_older_ones_hash_as_before() {
    // Content as a control plane before `compiled_policies` wrote it, with the hash that
    // control plane computed: it must still verify.
    let old = r#"{"grants":{"issuer":"","jwks":{"keys":[]}},"connections":[],"identity_providers":[],"roles":[],"policies":[{"name":"ro","classes":{"allow":["read"]},"max_rows":100}],"revoked_grants":[]}"#;
    let content: SnapshotContent = serde_json::from_str(old).unwrap();
    assert!(content.compiled_policies.is_empty());
    assert_eq!(
        content.content_hash(),
        "06bfcbbc610de86e2d50e47d890057f595cdf5c4ace70d87f135175156894499"
    );

    // With the compiled form: covered by the hash, and it survives the wire.
    let mut with = content.clone();
    with.compiled_policies =
        PolicySet::from_yaml(&json!({ "policies": content.policies }).to_string(), 0)
            .unwrap()
            .compile();
    assert_ne!(with.content_hash(), content.content_hash());
    let snap = Snapshot::new(5, 5, 0, with);
    let back: Snapshot = serde_json::from_slice(&serde_json::to_vec(&snap).unwrap()).unwrap();
    assert_eq!(back, snap);
    assert!(back.verify_hash());
    let mut tampered = back.clone();
    tampered.content.compiled_policies[0] = serde_json::from_value({
        let mut v = serde_json::to_value(&back.content.compiled_policies[0]).unwrap();
        v["classes"][1] = json!("allow");
        v
    })
    .unwrap();
    assert!(!tampered.verify_hash());
}
