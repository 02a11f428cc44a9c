//! A policy document of 10,000 rules: how large its snapshot is and how long each step of an
//! apply takes (parse, validation with the policy model, compile and hash, the data plane's
//! decoding, hash check and build of ready-to-evaluate policies, from the compiled section
//! and, as older snapshots need, from source; and a whole apply through the API). Prints
//! medians of five runs:
//! `cargo test -p sluice-controlplane --release --test policy_scale -- --nocapture`.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{test_key, Server};
use sluice_controlplane::compile::compile;
use sluice_controlplane::document::{self, Credentials, Format};
use sluice_controlplane::snapshot::{GrantIssuer, Snapshot};

const POLICIES: usize = 10;
/// Per policy: 700 per-class rules, 200 table deny globs, 100 masking rules.
const RULES: usize = 700;
const DENIES: usize = 200;
const MASKS: usize = 100;

/// A document with `POLICIES * (RULES + DENIES + MASKS)` = 10,000 rules; `marker` changes
/// one value so successive applies are real changes.
fn document(marker: u64) -> String {
    let mut y = String::with_capacity(2 << 20);
    y.push_str(
        "connections:\n  - name: app\n    host: 127.0.0.1\n    port: 5432\n    database: app\n    \
         users: [{name: reader, password: pw}]\nroles:\n",
    );
    for p in 0..POLICIES {
        let _ = write!(
            y,
            "  - name: r{p}\n    groups: [g{p}]\n    connections: {{app: reader}}\n    policy: p{p}\n"
        );
    }
    y.push_str("policies:\n");
    for p in 0..POLICIES {
        let _ = write!(
            y,
            "  - name: p{p}\n    max_rows: {marker}\n    classes: {{allow: [read, write], review: [ddl]}}\n    rules:\n"
        );
        for r in 0..RULES {
            let _ = writeln!(
                y,
                "      - {{classes: [write], tables: {{allow: [\"app.t{r}\", \"app.t{r}_*\", \"s{p}.*\"]}}}}"
            );
        }
        y.push_str("    tables:\n      deny:\n");
        for d in 0..DENIES {
            let _ = writeln!(y, "        - \"secret{d}.*\"");
        }
        y.push_str("    masking:\n");
        for m in 0..MASKS {
            let _ = writeln!(
                y,
                "      - {{columns: [\"app.customers{m}.ssn\", \"*.*.email{m}\"], strategy: {{partial: {{keep_last: 4}}}}}}"
            );
        }
    }
    y
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn ten_thousand_rules() {
    let yaml = document(100);
    let (mut parse, mut validate, mut compile_hash) = (vec![], vec![], vec![]);
    let (mut decode, mut verify, mut from_source, mut from_compiled) =
        (vec![], vec![], vec![], vec![]);
    let (mut snapshot_bytes, mut source_only_bytes) = (0, 0);
    let issuer = GrantIssuer {
        issuer: "sluice-test".into(),
        jwks: serde_json::json!({"keys": []}),
    };
    for _ in 0..5 {
        let t = Instant::now();
        let doc = document::parse(yaml.as_bytes(), Format::Yaml).unwrap();
        parse.push(t.elapsed());
        let t = Instant::now();
        let creds = doc.validate(&Credentials::new()).unwrap();
        validate.push(t.elapsed());
        let t = Instant::now();
        let content = compile(&doc, &creds, issuer.clone(), vec![]);
        let snap = Snapshot::new(2, 1, 0, content);
        compile_hash.push(t.elapsed());
        assert_eq!(snap.content.compiled_policies.len(), POLICIES);
        let bytes = serde_json::to_vec(&snap).unwrap();
        snapshot_bytes = bytes.len();
        let mut source_only = snap.clone();
        source_only.content.compiled_policies.clear();
        source_only_bytes = serde_json::to_vec(&source_only).unwrap().len();

        // What a data plane does with it: decode, check the hash, build every policy into
        // ready-to-evaluate structures (the compiled section is cloned out of the snapshot,
        // as the data plane does, which keeps the snapshot to persist it).
        let t = Instant::now();
        let snap: Snapshot = serde_json::from_slice(&bytes).unwrap();
        decode.push(t.elapsed());
        let t = Instant::now();
        assert!(snap.verify_hash());
        verify.push(t.elapsed());
        let t = Instant::now();
        let compiled = sluice_policy::PolicySet::from_compiled(
            snap.content.compiled_policies.clone(),
            snap.version,
        )
        .unwrap();
        from_compiled.push(t.elapsed());
        let t = Instant::now();
        let built = sluice_policy::PolicySet::from_yaml(
            &serde_json::json!({ "policies": snap.content.policies }).to_string(),
            snap.version,
        )
        .unwrap();
        from_source.push(t.elapsed());
        assert_eq!(built.len(), POLICIES);
        assert!(
            built.iter().zip(compiled.iter()).all(|(a, b)| a == b),
            "the compiled section builds the same policies as the source"
        );
    }

    // A whole apply through the API (HTTP, validation, compile, seal, SQLite commit).
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sluice.db").display()
    );
    let settings = sluice_controlplane::service::Settings {
        max_body_bytes: 16 << 20,
        ..common::settings()
    };
    let srv = Server::try_start(&url, &test_key(), settings).unwrap();
    let mut apply = vec![];
    for i in 0..5 {
        let body = document(1000 + i);
        let t = Instant::now();
        let (s, v) = srv.apply_yaml(&body);
        apply.push(t.elapsed());
        assert_eq!(s, 200, "{v}");
    }
    srv.stop();

    let rules = POLICIES * (RULES + DENIES + MASKS);
    eprintln!(
        "policy document of {rules} rules ({POLICIES} policies), {} KiB of YAML; medians of 5:\n  \
         parse {:?}, validate (incl. sluice-policy build) {:?}, compile + content hash {:?}\n  \
         snapshot {} KiB of JSON ({} KiB without the compiled policies)\n  \
         data plane: decode {:?}, content hash check {:?}, PolicySet from the compiled \
         policies {:?} (from source {:?})\n  \
         whole apply through the API (SQLite) {:?}",
        yaml.len() / 1024,
        median(parse),
        median(validate),
        median(compile_hash),
        snapshot_bytes / 1024,
        source_only_bytes / 1024,
        median(decode),
        median(verify),
        median(from_compiled),
        median(from_source),
        median(apply),
    );
}
