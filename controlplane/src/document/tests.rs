use super::*;

const DOC: &str = r#"
connections:
  - name: app
    port: 5432
    database: app
    users: [{name: reader, password: pw}]
roles:
  - name: r
    groups: [g]
    connections: {app: reader}
"#;

#[test]
fn yaml_and_json_parse_strictly_with_paths() {
    let d = parse(DOC.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(d.connections[0].host, "127.0.0.1");
    let e = parse(
        br#"{"roles": [{"name": "r", "connections": {}, "colour": 1}]}"#,
        Format::Json,
    )
    .unwrap_err();
    assert_eq!(e.path, "roles[0].colour");
    assert!(parse(b"{} x", Format::Json).is_err());
    assert_eq!(parse(b"  \n", Format::Yaml).unwrap(), Document::default());
}

#[test]
fn validation_reports_every_problem_and_keeps_passwords() {
    let d = parse(DOC.as_bytes(), Format::Yaml).unwrap();
    let creds = d.validate(&Credentials::new()).unwrap();
    assert_eq!(creds["app"]["reader"], "pw");
    // Omitted on a later apply, the stored password is kept.
    let mut d2 = d.clone();
    d2.connections[0].users[0].password = None;
    assert_eq!(d2.validate(&creds).unwrap(), creds);
    // Serialization never carries it.
    assert!(!serde_json::to_string(&d).unwrap().contains("pw\""));

    let mut bad = d.clone();
    bad.connections.push(bad.connections[0].clone());
    bad.roles[0].connections.insert("nosuch".into(), "x".into());
    bad.roles[0]
        .connections
        .insert("app".into(), "ghost".into());
    bad.roles[0].policy = Some("p".into());
    let errs = bad.validate(&Credentials::new()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "connections[1].name",
            "roles[0].connections.app",
            "roles[0].connections.nosuch",
            "roles[0].policy"
        ]
    );
}

#[test]
fn diff_by_name_and_field() {
    let a = parse(DOC.as_bytes(), Format::Yaml).unwrap();
    let ca = a.validate(&Credentials::new()).unwrap();
    let mut b = a.clone();
    b.roles[0].groups.push("h".into());
    b.connections[0].users[0].password = Some("new".into());
    let cb = b.validate(&ca).unwrap();
    let d = Diff::between(&a, &ca, &b, &cb);
    assert_eq!(d.roles.changed[0].fields, ["groups"]);
    assert_eq!(d.connections.changed[0].fields, ["credentials"]);
    assert!(Diff::between(&a, &ca, &a, &ca).is_empty());
    let d = Diff::between(&Document::default(), &Credentials::new(), &a, &ca);
    assert_eq!(d.connections.added, ["app"]);
}

#[test]
fn policies_are_checked_by_the_policy_model_with_their_path() {
    let doc = format!(
        "{DOC}policies:\n  - name: ok\n    classes: {{allow: [read]}}\n  - name: typo\n    classes: {{allow: [reed]}}\n  - name: unknown\n    statements: [read]\n  - name: regex\n    masking: [{{columns: ['*.ssn'], strategy: partial, keep_last: 0}}]\n"
    );
    let d = parse(doc.as_bytes(), Format::Yaml).unwrap();
    let errors = d.validate(&Credentials::new()).unwrap_err();
    let at = |path: &str| {
        errors
            .iter()
            .find(|e| e.path.starts_with(path))
            .unwrap_or_else(|| panic!("no error at {path}: {errors:?}"))
    };
    assert!(
        at("policies[1].classes").message.contains("reed"),
        "{errors:?}"
    );
    let unknown = at("policies[2]");
    assert!(unknown.message.contains("statements"), "{unknown:?}");
    assert!(!unknown.message.contains("line"), "{unknown:?}");
    assert!(
        unknown.message.starts_with("unknown field `statements`"),
        "{unknown:?}"
    );
    assert!(
        at("policies[3].masking[0]").message.contains("keep_last"),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|e| e.path.starts_with("policies[0]")),
        "{errors:?}"
    );
}
