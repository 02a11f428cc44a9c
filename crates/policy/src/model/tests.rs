use super::document::parse_duration;
use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
    assert_eq!(parse_duration("5 minutes"), None);
    assert_eq!(parse_duration("m"), None);
}

#[test]
fn error_paths() {
    let doc = r#"
policies:
  - name: a
  - name: b
  - name: c
    rules:
      - classes: [read]
        tables:
          deny: [ok, "bad\"quote"]
"#;
    let e = PolicySet::from_yaml(doc, 1).unwrap_err();
    assert_eq!(
            e.to_string(),
            "policies[2].rules[0].tables.deny[1]: invalid glob \"bad\\\"quote\": unexpected quote inside an unquoted name part"
        );
    let e = PolicySet::from_yaml("policies:\n  - name: a\n    clases: {}\n", 1).unwrap_err();
    assert!(matches!(e, PolicyError::Syntax(m) if m.contains("clases")));
    let e = PolicySet::from_yaml(
        "policies:\n  - name: a\n    classes: {allow: [read], deny: [read]}\n",
        1,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "policies[0].classes.deny[0]: class read is also listed under classes.allow"
    );
    let e = PolicySet::from_yaml("policies:\n  - name: a\n  - name: a\n", 1).unwrap_err();
    assert!(e.to_string().starts_with("policies[1].name: duplicate"));
}

#[test]
fn full_document() {
    let doc = r#"
policies:
  - name: analyst
    classes: {allow: [read, transaction, session], review: [write]}
    tables: {allow: ["public.*"], deny: [public.secrets]}
    rules:
      - classes: [write]
        tables: {allow: [public.orders]}
    functions: {deny: ["pg_advisory_*"]}
    max_rows: 1000
    review: {on: [require_where], wait: false, timeout: 2m, min_approvers: 2}
    masking:
      - columns: ["public.customers.ssn"]
        strategy: {partial: {keep_last: 4}}
      - detectors: [email, card]
        strategy: {redact: {text: "[x]"}}
      - types: [inet]
        strategy: "null"
      - columns: ["*.*.email"]
        strategy: tokenise
"#;
    let set = PolicySet::from_yaml(doc, 7).unwrap();
    let p = set.get("analyst").unwrap();
    assert_eq!(p.class_decision(StatementClass::Read), ClassDecision::Allow);
    assert_eq!(
        p.class_decision(StatementClass::Write),
        ClassDecision::Review
    );
    assert_eq!(p.class_decision(StatementClass::Ddl), ClassDecision::Deny);
    assert_eq!(p.max_rows(), Some(1000));
    assert_eq!(p.review().timeout, Duration::from_secs(120));
    assert_eq!(p.review().min_approvers, 2);
    assert!(!p.review().wait);
    assert_eq!(p.masking().len(), 4);
    assert_eq!(
        p.masking()[0].strategy,
        MaskStrategy::Partial(Keep::Last(4))
    );
    assert_eq!(p.masking()[2].strategy, MaskStrategy::Null);
    assert_eq!(p.allow.len(), 2);
    assert_eq!(p.deny[0].id.as_str(), "analyst/tables.deny[0]");

    let e = PolicySet::from_yaml(
            "policies:\n  - name: a\n    masking:\n      - columns: [a.b.c]\n        strategy: {partial: {keep_last: 4, keep_first: 1}}\n",
            1,
        )
        .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("policies[0].masking[0].strategy: partial needs"));
}

#[test]
fn empty_document_has_no_policies() {
    assert!(PolicySet::from_yaml("", 1).unwrap().is_empty());
    assert!(PolicySet::from_yaml("policies: []", 1).unwrap().is_empty());
    assert!(!Policy::deny_all().is_valid());
}

#[test]
fn detector_sensitivity() {
    let doc = r#"
policies:
  - name: a
    classes: {allow: [read]}
    masking:
      - detectors: [ssn]
        strategy: redact
      - detectors: [card]
        sensitivity: balanced
        strategy: redact
"#;
    let set = PolicySet::from_yaml(doc, 1).unwrap();
    let m = set.get("a").unwrap().masking();
    assert_eq!(m[0].sensitivity, DetectorSensitivity::Strict);
    assert_eq!(m[1].sensitivity, DetectorSensitivity::Balanced);
    let bad = doc.replace("balanced", "lax");
    let err = PolicySet::from_yaml(&bad, 1).unwrap_err().to_string();
    assert!(err.contains("policies[0].masking[1].sensitivity"), "{err}");
}
