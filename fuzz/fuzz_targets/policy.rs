//! Fuzz target: statement text through the policy's analysis, verdict and masking lineage
//! (`analyze`, `judge`, `mask_plan`) over a small catalog with a view. Nothing may panic, and
//! text that does not parse must never come out `Clear` for a role that masks columns.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use sluice_policy::lineage::{mask_plan, Catalog, Column, MaskPlan, RelKind, Relation};
use sluice_policy::{analyze, judge, Analysis, PolicySet};

const POLICY: &str = r#"
policies:
  - name: agent
    classes: {allow: [read, write, transaction, session]}
    tables: {deny: [public.secrets]}
    masking:
      - columns: [public.people.ssn]
        strategy: {partial: {keep_last: 4}}
      - types: [inet]
        strategy: null
"#;

struct Cat(HashMap<u32, Relation>);

impl Catalog for Cat {
    fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.0
            .values()
            .find(|r| &*r.schema == schema && &*r.name == name)
    }
    fn by_oid(&self, oid: u32) -> Option<&Relation> {
        self.0.get(&oid)
    }
    fn type_name(&self, oid: u32) -> Option<&str> {
        Some(if oid == 869 { "inet" } else { "text" })
    }
}

fn rel(oid: u32, name: &str, cols: &[&str], view: Option<&str>) -> Relation {
    Relation {
        oid,
        schema: "public".into(),
        name: name.into(),
        kind: if view.is_some() { RelKind::View } else { RelKind::Table },
        columns: cols
            .iter()
            .enumerate()
            .map(|(i, c)| Column {
                attnum: i as i16 + 1,
                name: (*c).into(),
                type_name: if *c == "ip" { "inet".into() } else { "text".into() },
                type_oid: if *c == "ip" { 869 } else { 25 },
            })
            .collect(),
        view_sql: view.map(Into::into),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let set = PolicySet::from_yaml(POLICY, 1).expect("the fuzz policy is valid");
    let policy = set.get("agent").expect("policy agent");
    let cat = Cat(HashMap::from([
        (16384, rel(16384, "people", &["id", "name", "ssn", "ip"], None)),
        (
            16385,
            rel(
                16385,
                "people_v",
                &["id", "s"],
                Some("SELECT people.id, upper(people.ssn) AS s FROM people"),
            ),
        ),
    ]));
    let analysis = analyze(sql);
    let _ = judge(policy, &analysis);
    let plan = mask_plan(policy, &cat, sql);
    if matches!(analysis, Analysis::Unparsed { .. }) && sql.len() < 64 * 1024 {
        assert!(
            !matches!(plan, MaskPlan::Clear) || sluice_policy_parses(sql),
            "unparsed text planned Clear: {sql:?}"
        );
    }
});

/// The lineage parses on its own (it also knows MOVE, which analysis does not); only text
/// neither can parse must fail closed.
fn sluice_policy_parses(sql: &str) -> bool {
    sql.trim_start().to_ascii_lowercase().starts_with("move")
}
