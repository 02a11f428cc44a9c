//! Tests of snapshot conversion, verification and persistence.

use std::collections::BTreeMap;

use sluice_policy::snapshot::{
    GrantIssuer, SnapshotConnection, SnapshotContent, SnapshotIdentityProvider, SnapshotRole,
    SnapshotUser,
};

use super::*;

/// The RFC 8037 example Ed25519 public key.
const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn jwks() -> Value {
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1", "x": ED25519_X}]})
}

fn local() -> Config {
    let yaml = r#"
listen: 127.0.0.1:7432
cores: 3
metrics_listen: 127.0.0.1:9187
limits: { startup_timeout: 2s }
auth:
  static_tokens:
    - { token: break-glass-token-0123456789, subject: oncall }
  jwt:
    - { issuer: https://local.example, hs256_secret: local-secret-local-secret }
connections:
  - { name: local, port: 5432, database: l, users: [{ name: u }] }
"#;
    Config::from_yaml(yaml, Path::new("/"), &|_| None).unwrap()
}

fn content() -> SnapshotContent {
    let mut pool = BTreeMap::new();
    pool.insert("mode".to_owned(), json!("session"));
    pool.insert("size".to_owned(), json!(4));
    pool.insert("timeout".to_owned(), json!("250ms"));
    SnapshotContent {
        grants: GrantIssuer {
            issuer: "sluice-cp-test".into(),
            jwks: jwks(),
        },
        connections: vec![SnapshotConnection {
            name: "app".into(),
            host: "db.internal".into(),
            port: 5433,
            database: "appdb".into(),
            tls: "disable".into(),
            tls_ca: None,
            pool,
            users: vec![SnapshotUser {
                name: "reader".into(),
                user: "app_reader".into(),
                password: Some("pa$$w${0}rd".into()),
            }],
        }],
        identity_providers: vec![SnapshotIdentityProvider {
            name: "corp".into(),
            issuer: "https://idp.example".into(),
            audience: vec!["sluice".into()],
            jwks: Some(jwks()),
            jwks_url: None,
            groups_claim: "grp".into(),
            leeway_secs: 5,
        }],
        roles: vec![SnapshotRole {
            name: "analyst".into(),
            subjects: vec![],
            groups: vec!["analysts".into()],
            connections: [("app".to_owned(), "reader".to_owned())].into(),
            policy: None,
        }],
        policies: vec![],
        compiled_policies: vec![],
        revoked_grants: vec!["g-1".into()],
    }
}

fn snap(c: SnapshotContent) -> Snapshot {
    Snapshot::new(7, 3, 0, c)
}

#[test]
fn merges_local_process_settings_with_snapshot_content() {
    let l = local();
    let a = apply_snapshot(&l, &snap(content())).unwrap();
    let c = &a.config;
    assert_eq!((c.listen, c.cores), (l.listen, 3));
    assert_eq!(c.metrics_listen, l.metrics_listen);
    assert_eq!(c.limits.startup_timeout, Duration::from_secs(2));
    assert_eq!(c.connections.len(), 1);
    let conn = c.connection("app").unwrap();
    assert_eq!((conn.host.as_str(), conn.port), ("db.internal", 5433));
    assert_eq!(conn.database, "appdb");
    assert_eq!(conn.pool.mode, crate::config::PoolMode::Session);
    assert_eq!(conn.pool.size, 4);
    assert_eq!(conn.pool.timeout, Duration::from_millis(250));
    assert_eq!(conn.users["reader"].user, "app_reader");
    assert_eq!(
        conn.users["reader"].password.as_deref(),
        Some("pa$$w${0}rd"),
        "no ${{}} substitution in snapshot values"
    );
    let role = c.role_for("x", &["analysts".into()]).unwrap();
    assert_eq!(role.connections["app"], "reader");
    // JWT issuers: the identity provider and the grant issuer replace the local ones;
    // static break-glass tokens stay.
    let issuers: Vec<_> = c.auth.jwt.iter().map(|j| j.issuer.as_str()).collect();
    assert_eq!(issuers, ["https://idp.example", "sluice-cp-test"]);
    assert_eq!(c.auth.jwt[0].groups_claim, "grp");
    assert_eq!(c.auth.jwt[0].audience, ["sluice"]);
    assert_eq!(c.auth.jwt[1].groups_claim, GRANT_ROLE_CLAIM);
    assert_eq!(c.auth.static_tokens.len(), 1);
    assert!(a.grants.is_grant_issuer("sluice-cp-test"));
    assert!(!a.grants.is_grant_issuer("https://idp.example"));
    assert!(a.grants.is_revoked("g-1") && !a.grants.is_revoked("g-2"));
    assert_eq!(a.version, 7);
}

#[test]
fn missing_backend_user_is_refused_with_the_field() {
    let mut c = content();
    c.roles[0].connections.insert("app".into(), "writer".into());
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, SnapshotError::Invalid { field, .. } if field == "roles[0].connections.app"),
        "{e:?}"
    );
    assert!(msg.contains("no backend user `writer`"), "{msg}");
    assert!(msg.contains("version 7"), "{msg}");
    assert!(!e.is_retryable());
}

#[test]
fn other_invalid_content_is_refused() {
    let mut c = content();
    c.roles[0].connections = [("nope".to_owned(), "reader".to_owned())].into();
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("no such connection"), "{e}");

    let mut c = content();
    c.connections[0].pool.insert("bogus".into(), json!(1));
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");

    let mut c = content();
    c.connections[0].tls = "verify-full".into();
    c.connections[0].tls_ca = Some("ca.pem".into());
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");

    let mut c = content();
    c.identity_providers[0].jwks = Some(json!({"keys": [{"kty": "oct", "k": "AAAA"}]}));
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("https://idp.example"), "{e}");

    let mut c = content();
    c.identity_providers[0].issuer = "sluice-cp-test".into();
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("more than once"), "{e}");
}

#[test]
fn policies_come_from_the_snapshot_keyed_by_its_version() {
    let mut c = content();
    c.policies
        .push(json!({"name": "read-only", "classes": {"allow": ["read"]}, "max_rows": 5}));
    c.roles[0].policy = Some("read-only".into());
    c.roles.push(SnapshotRole {
        name: "nopolicy".into(),
        subjects: vec!["bot".into()],
        groups: vec![],
        connections: BTreeMap::new(),
        policy: None,
    });
    let v7 = config_from_snapshot(&local(), &snap(c.clone())).unwrap();
    let p = &v7.roles[0].policy;
    assert_eq!((p.name(), p.max_rows()), ("read-only", Some(5)));
    assert!(!v7.roles[1].policy.is_valid(), "no policy: deny everything");
    assert_eq!(v7.policies.version(), 7);
    let v8 = config_from_snapshot(&local(), &Snapshot::new(8, 3, 0, c.clone())).unwrap();
    assert_ne!(
        v7.roles[0].policy.cache_key(),
        v8.roles[0].policy.cache_key()
    );

    let mut bad = c.clone();
    bad.policies[0]["classes"]["allow"] = json!(["reed"]);
    let e = config_from_snapshot(&local(), &snap(bad)).unwrap_err();
    assert!(e.to_string().contains("policies[0]"), "{e}");
    let mut bad = c;
    bad.roles[0].policy = Some("missing".into());
    let e = config_from_snapshot(&local(), &snap(bad)).unwrap_err();
    assert!(e.to_string().contains("roles[0].policy"), "{e}");
}

fn compiled(doc: &str) -> Vec<sluice_policy::snapshot::CompiledPolicy> {
    PolicySet::from_yaml(doc, 0).unwrap().compile()
}

#[test]
fn compiled_policies_are_loaded_as_they_are() {
    let mut c = content();
    c.policies
        .push(json!({"name": "read-only", "classes": {"allow": ["read"]}, "max_rows": 5}));
    // What data planes load is the compiled form: it says 6 here, to tell them apart.
    c.compiled_policies =
        compiled("policies: [{name: read-only, classes: {allow: [read]}, max_rows: 6}]");
    c.roles[0].policy = Some("read-only".into());
    let v7 = config_from_snapshot(&local(), &snap(c.clone())).unwrap();
    let p = &v7.roles[0].policy;
    assert_eq!((p.name(), p.max_rows()), ("read-only", Some(6)));
    assert!(p.is_valid());
    let v8 = config_from_snapshot(&local(), &Snapshot::new(8, 3, 0, c.clone())).unwrap();
    assert_ne!(p.cache_key(), v8.roles[0].policy.cache_key());

    let refused = |c: SnapshotContent| match config_from_snapshot(&local(), &snap(c)) {
        Err(SnapshotError::Invalid { field, message, .. }) => format!("{field}: {message}"),
        other => panic!("{other:?}"),
    };
    let mut bad = c.clone();
    bad.compiled_policies = compiled("policies: [{name: other}]");
    assert_eq!(
        refused(bad),
        "compiled_policies[0].name: `other` where policies[0] is Some(\"read-only\")"
    );
    let mut bad = c.clone();
    bad.compiled_policies
        .extend(compiled("policies: [{name: x}]"));
    assert_eq!(
        refused(bad),
        "compiled_policies: 2 compiled policies for 1 in `policies`"
    );
    let mut bad = c.clone();
    let mut v = serde_json::to_value(&bad.compiled_policies).unwrap();
    v[0]["review"]["min_approvers"] = json!(0);
    bad.compiled_policies = serde_json::from_value(v).unwrap();
    assert_eq!(
        refused(bad),
        "compiled_policies[0].review.min_approvers: must be at least 1"
    );
    let mut bad = c;
    bad.roles[0].policy = Some("missing".into());
    assert_eq!(refused(bad), "roles[0].policy: no policy named `missing`");
}

#[test]
fn tampered_content_is_refused() {
    let mut s = snap(content());
    s.content.connections[0].host = "evil.example".into();
    let e = config_from_snapshot(&local(), &s).unwrap_err();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e:?}");
}

#[test]
fn empty_snapshot_serves_nothing_and_jwks_url_providers_are_left_out() {
    let c = SnapshotContent::default();
    let cfg = config_from_snapshot(&local(), &snap(c)).unwrap();
    assert!(cfg.connections.is_empty() && cfg.roles.is_empty());
    assert!(cfg.auth.jwt.is_empty());

    let mut c = content();
    c.identity_providers[0].jwks = None;
    c.identity_providers[0].jwks_url = Some("https://idp.example/jwks".into());
    let cfg = config_from_snapshot(&local(), &snap(c)).unwrap();
    let issuers: Vec<_> = cfg.auth.jwt.iter().map(|j| j.issuer.as_str()).collect();
    assert_eq!(issuers, ["sluice-cp-test"]);

    let c = SnapshotContent {
        roles: content().roles,
        ..SnapshotContent::default()
    };
    let e = config_from_snapshot(&local(), &snap(c)).unwrap_err();
    assert!(e.to_string().contains("no such connection"), "{e}");
}

#[test]
fn persist_and_load_round_trip_and_refuse_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.json");
    assert!(SnapshotClient::load_persisted(&path).unwrap().is_none());
    let s = snap(content());
    persist(&path, &serde_json::to_vec(&s).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(SnapshotClient::load_persisted(&path).unwrap(), Some(s));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left behind");

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("db.internal", "db.evil")).unwrap();
    let e = SnapshotClient::load_persisted(&path).unwrap_err();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e:?}");
    std::fs::write(&path, "{not json").unwrap();
    let e = SnapshotClient::load_persisted(&path).unwrap_err();
    assert!(matches!(e, SnapshotError::Malformed { .. }), "{e:?}");
}
