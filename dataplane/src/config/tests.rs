//! Tests of configuration parsing and validation.

use super::*;

const MINIMAL: &str = r#"
listen: 127.0.0.1:6432
cores: 2
auth:
  static_tokens:
    - token: ${DEMO_TOKEN}
      subject: demo-agent
      groups: [analysts]
connections:
  - name: demo
    port: 5432
    database: demo
    pool: { mode: transaction, size: 10, timeout: 250ms }
    users:
      - name: ro
        user: app_ro
        password: ${RO_PASSWORD}
roles:
  - name: analyst
    groups: [analysts]
    connections: { demo: ro }
    policy: read-only
policies:
  - name: read-only
    classes: { allow: [read, transaction, session] }
"#;

fn env(k: &str) -> Option<String> {
    match k {
        "DEMO_TOKEN" => Some("tok".into()),
        "RO_PASSWORD" => Some("s3cret".into()),
        _ => None,
    }
}

#[test]
fn parses_minimal() {
    let c = Config::from_yaml(MINIMAL, Path::new("/etc/sluice"), &env).unwrap();
    assert_eq!(c.listen.port(), 6432);
    assert_eq!(c.cores, 2);
    let conn = c.connection("demo").unwrap();
    assert_eq!(conn.pool.mode, PoolMode::Transaction);
    assert_eq!(conn.pool.size, 10);
    assert_eq!(conn.pool.timeout, Duration::from_millis(250));
    assert_eq!(conn.users["ro"].password.as_deref(), Some("s3cret"));
    assert_eq!(c.auth.static_tokens[0].token, "tok");
    let role = c.role_for("someone", &["analysts".into()]).unwrap();
    assert_eq!(role.connections["demo"], "ro");
    assert!(c.role_for("someone", &["other".into()]).is_none());
    assert!(!format!("{:?}", conn.users["ro"]).contains("s3cret"));
}

#[test]
fn pin_on_defaults_to_every_kind_and_is_checked() {
    use sluice_policy::SessionState;
    let c = Config::from_yaml(MINIMAL, Path::new("."), &env).unwrap();
    let pool = &c.connection("demo").unwrap().pool;
    assert_eq!(pool.pin_on, SessionState::ALL.to_vec());

    let some = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, pin_on: [listen, listen]");
    let c = Config::from_yaml(&some, Path::new("."), &env).unwrap();
    assert_eq!(
        c.connection("demo").unwrap().pool.pin_on,
        [SessionState::Listen]
    );

    let bad = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, pin_on: [temp]");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "connections[0].pool.pin_on");
    assert!(
        e.message
            .contains("`temp` is not one of listen, temp_table"),
        "{e}"
    );

    // A pinned server is cleaned by the reset query before the next client gets it.
    let bad = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, reset_query: ''");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "connections[0].pool.reset_query");
    let none = MINIMAL.replace(
        "timeout: 250ms",
        "timeout: 250ms, reset_query: '', pin_on: []",
    );
    Config::from_yaml(&none, Path::new("."), &env).unwrap();
}

#[test]
fn unset_env_is_an_error() {
    let e = Config::from_yaml(MINIMAL, Path::new("."), &|_| None).unwrap_err();
    assert!(e.to_string().contains("DEMO_TOKEN"), "{e}");
}

#[test]
fn errors_name_the_field() {
    let bad = MINIMAL.replace("size: 10", "size: 0");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "connections[0].pool.size");

    let bad = MINIMAL.replace("demo: ro", "demo: rw");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert!(e.message.contains("no backend user `rw`"), "{e}");

    let bad = MINIMAL.replace("timeout: 250ms", "timeout: 5 parsecs");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "connections[0].pool.timeout");

    let bad = MINIMAL.replace("policy: read-only", "policy: nope");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "roles[0].policy");

    let bad = MINIMAL.replace("cores: 2", "cores: 2\nbogus: 1");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
fn control_plane_section() {
    let yaml = "listen: 127.0.0.1:6432\ncontrol_plane:\n  url: http://cp:7070/\n  node_token: ${T}\n  state_dir: state\n";
    let env = |k: &str| (k == "T").then(|| "sluice_node_x".to_string());
    let c = Config::from_yaml(yaml, Path::new("/var/lib/sluice"), &env).unwrap();
    assert!(c.connections.is_empty(), "connections come with snapshots");
    let cp = c.control_plane.as_ref().unwrap();
    assert_eq!(cp.url, "http://cp:7070");
    assert_eq!(cp.state_dir, Path::new("/var/lib/sluice/state"));
    assert_eq!(cp.node_id, None);
    assert!(
        !format!("{cp:?}").contains("sluice_node_x"),
        "token not in Debug"
    );

    let e = Config::from_yaml("listen: 127.0.0.1:6432\n", Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "connections");
    let bad = yaml.replace("http://cp", "ftp://cp");
    let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
    assert_eq!(e.field, "control_plane.url");
    assert!(!c.control_plane_trust.has_ca());

    // https, with the webpki roots or a CA bundle (relative to the file); a bundle with
    // a plain-http url, or one that is not PEM, is refused at load.
    let https = yaml.replace("http://cp", "https://cp");
    let c = Config::from_yaml(&https, Path::new("."), &env).unwrap();
    assert_eq!(c.control_plane.unwrap().url, "https://cp:7070");
    assert!(!c.control_plane_trust.has_ca());
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["cp".into()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let with_ca = format!("{https}  ca: ca.pem\n");
    let c = Config::from_yaml(&with_ca, dir.path(), &env).unwrap();
    assert!(c.control_plane_trust.has_ca());
    let e = Config::from_yaml(&with_ca.replace("ca.pem", "bad.pem"), dir.path(), &env).unwrap_err();
    assert_eq!(e.field, "control_plane.ca");
    let e =
        Config::from_yaml(&with_ca.replace("ca.pem", "missing.pem"), dir.path(), &env).unwrap_err();
    assert_eq!(e.field, "control_plane.ca");
    let e = Config::from_yaml(&format!("{yaml}  ca: ca.pem\n"), dir.path(), &env).unwrap_err();
    assert_eq!(e.field, "control_plane.ca");

    // `sluice up` supplies the section, replacing the text's own.
    let given = ControlPlaneSettings {
        url: "http://127.0.0.1:1".into(),
        node_token: "t".into(),
        node_id: Some("n".into()),
        state_dir: "/s".into(),
    };
    let c = Config::from_yaml_with_control_plane(yaml, Path::new("."), &env, given).unwrap();
    assert_eq!(c.control_plane.unwrap().url, "http://127.0.0.1:1");
    let c = Config::from_yaml_with_control_plane(
        "listen: 127.0.0.1:0\n",
        Path::new("."),
        &env,
        ControlPlaneSettings {
            url: "http://127.0.0.1:1".into(),
            node_token: "t".into(),
            node_id: None,
            state_dir: "/s".into(),
        },
    )
    .unwrap();
    assert!(c.connections.is_empty());
}

#[test]
fn loopback_urls() {
    for u in [
        "http://127.0.0.1:7070",
        "http://localhost",
        "http://[::1]:7070/x",
        "http://127.9.0.1",
    ] {
        assert!(is_loopback_url(u), "{u}");
    }
    for u in [
        "http://cp:7070",
        "http://10.0.0.1:7070",
        "http://127.0.0.1.evil.example",
        "http://[::2]:1",
    ] {
        assert!(!is_loopback_url(u), "{u}");
    }
}

#[test]
fn substitution() {
    let e = |k: &str| (k == "A").then(|| "x".to_string());
    assert_eq!(substitute_env("a${A}b$$c$d", &e).unwrap(), "axb$c$d");
    assert!(substitute_env("${A", &e).is_err());
    assert!(substitute_env("${A-B}", &e).is_err());
    assert_eq!(
        substitute_env("  # ${UNSET}\nx: ${A}\n", &e).unwrap(),
        "  # ${UNSET}\nx: x\n"
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("64KiB").unwrap(), 65536);
    assert!(parse_size("99999999999999999999GiB").is_err());
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("s").is_err());
}
