//! Verdict latency: uncached analyse + judge of pgbench's statements and a 3-way join, and a
//! cached lookup.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice_policy::{analyze, judge, PolicySet, Verdict, VerdictCache};

const POLICY: &str = r#"
policies:
  - name: agent
    classes: {allow: [read, write, transaction, session]}
    tables: {deny: [public.secrets, "audit.*"]}
    functions: {deny: ["pg_advisory_*"]}
"#;

const PGBENCH: &[&str] = &[
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 45678;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 45678;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -4321 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 45678, -4321, CURRENT_TIMESTAMP);",
    "END;",
];

const JOIN3: &str = "SELECT o.id, c.name, sum(i.qty * i.price) AS total FROM orders o \
    JOIN customers c ON c.id = o.customer_id JOIN order_items i ON i.order_id = o.id \
    WHERE o.created_at > now() - interval '7 days' GROUP BY o.id, c.name ORDER BY total DESC LIMIT 10";

fn bench(c: &mut Criterion) {
    let set = PolicySet::from_yaml(POLICY, 1).unwrap();
    let policy = set.get("agent").unwrap();
    for sql in PGBENCH.iter().chain([&JOIN3]) {
        assert_eq!(judge(policy, &analyze(sql)), Verdict::Allow, "{sql}");
    }

    c.bench_function("uncached/pgbench_select", |b| {
        b.iter(|| judge(policy, &analyze(black_box(PGBENCH[2]))))
    });
    c.bench_function("uncached/pgbench_update", |b| {
        b.iter(|| judge(policy, &analyze(black_box(PGBENCH[1]))))
    });
    c.bench_function("uncached/pgbench_insert", |b| {
        b.iter(|| judge(policy, &analyze(black_box(PGBENCH[5]))))
    });
    c.bench_function("uncached/pgbench_script_7_statements", |b| {
        b.iter(|| {
            for sql in PGBENCH {
                black_box(judge(policy, &analyze(black_box(sql))));
            }
        })
    });
    c.bench_function("uncached/join3", |b| {
        b.iter(|| judge(policy, &analyze(black_box(JOIN3))))
    });
    let analysis = analyze(JOIN3);
    c.bench_function("judge_only/join3", |b| {
        b.iter(|| judge(policy, black_box(&analysis)))
    });

    let mut cache = VerdictCache::new(4096);
    for sql in PGBENCH.iter().chain([&JOIN3]) {
        cache.insert(policy.cache_key(), sql, judge(policy, &analyze(sql)));
    }
    let key = policy.cache_key();
    c.bench_function("cached/pgbench_update", |b| {
        b.iter(|| cache.get(key, black_box(PGBENCH[1])).is_some())
    });
    c.bench_function("cached/join3", |b| {
        b.iter(|| cache.get(key, black_box(JOIN3)).is_some())
    });
}

criterion_group!(benches, bench, lineage_bench::bench);
criterion_main!(benches);

// ---- masking lineage: what planning a statement's masking costs on a cache miss ----

mod lineage_bench {
    use std::collections::HashMap;

    use criterion::{black_box, Criterion};
    use sluice_policy::lineage::{mask_plan, Catalog, Column, MaskPlan, RelKind, Relation};
    use sluice_policy::PolicySet;

    #[derive(Default)]
    struct Cat {
        rels: HashMap<u32, Relation>,
    }

    impl Catalog for Cat {
        fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
            self.rels
                .values()
                .find(|r| &*r.schema == schema && &*r.name == name)
        }
        fn by_oid(&self, oid: u32) -> Option<&Relation> {
            self.rels.get(&oid)
        }
        fn type_name(&self, _: u32) -> Option<&str> {
            Some("text")
        }
    }

    fn table(oid: u32, name: &str, cols: &[&str], view: Option<&str>) -> Relation {
        Relation {
            oid,
            schema: "public".into(),
            name: name.into(),
            kind: if view.is_some() {
                RelKind::View
            } else {
                RelKind::Table
            },
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| Column {
                    attnum: i as i16 + 1,
                    name: (*c).into(),
                    type_name: "text".into(),
                    type_oid: 25,
                })
                .collect(),
            view_sql: view.map(Into::into),
        }
    }

    pub fn bench(c: &mut Criterion) {
        let set = PolicySet::from_yaml(
            "policies:\n  - name: m\n    classes: {allow: [read]}\n    masking:\n      - columns: [public.people.ssn]\n        strategy: {partial: {keep_last: 4}}\n",
            1,
        )
        .unwrap();
        let policy = set.get("m").unwrap();
        let mut cat = Cat::default();
        let people = [
            "id", "name", "email", "ssn", "card", "city", "plan", "score", "created", "note",
        ];
        cat.rels
            .insert(16384, table(16384, "people", &people, None));
        cat.rels.insert(
            16385,
            table(
                16385,
                "people_v",
                &["id", "s"],
                Some("SELECT people.id, upper(people.ssn) AS s FROM people"),
            ),
        );
        let select = "SELECT id, name, email, ssn, card, city, plan, score, created, note FROM people WHERE id = 42";
        let cte = "WITH x AS (SELECT id, ssn || '' AS s FROM people) SELECT string_agg(s, ',') FROM x UNION ALL SELECT s FROM people_v";
        for sql in [select, cte] {
            assert!(
                matches!(mask_plan(policy, &cat, sql), MaskPlan::Statements(_)),
                "{sql}"
            );
        }
        c.bench_function("mask_plan/select_10_columns_1_masked", |b| {
            b.iter(|| mask_plan(policy, &cat, black_box(select)))
        });
        c.bench_function("mask_plan/cte_union_view", |b| {
            b.iter(|| mask_plan(policy, &cat, black_box(cte)))
        });
    }
}
