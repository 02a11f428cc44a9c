//! Snapshot delivery end to end: the control plane in-process on port 0 (SQLite in a temp
//! dir), a [`SnapshotClient`] against it; and a fake control plane that serves bad snapshots.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_auth::token::TokenVerifier;
use sluice_controlplane::crypto::MasterKey;
use sluice_controlplane::inprocess::InProcess;
use sluice_controlplane::service::Settings;
use sluice_dataplane::config::Config;
use sluice_dataplane::snapshot::{
    config_from_snapshot, Applied, ClientSettings, SnapshotClient, SnapshotError,
};
use sluice_policy::snapshot::Snapshot;

const ADMIN: &str = "test-admin-token-0123456789abcdef";
/// The RFC 8037 example Ed25519 public key, as an identity provider's JWKS.
const IDP_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

/// The control plane on a runtime of its own, so the test can stop it like a crash.
struct ControlPlaneProcess {
    base: String,
    inner: InProcess,
    agent: ureq::Agent,
}

impl ControlPlaneProcess {
    fn start(store_url: &str, key: &MasterKey, addr: &str) -> Self {
        let settings = Settings {
            admin_token: Some(ADMIN.into()),
            ..Settings::default()
        };
        let inner = InProcess::start(store_url, key.clone(), settings, addr.parse().unwrap())
            .expect("starting the control plane");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        ControlPlaneProcess {
            base: inner.base_url().to_owned(),
            inner,
            agent,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, String)>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {ADMIN}");
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some((ct, b))) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", ct)
                .send(b.as_bytes()),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut resp = resp.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn apply(&self, yaml: &str) -> u64 {
        let (s, v) = self.call("POST", "/v1/apply", Some(("application/yaml", yaml.into())));
        assert_eq!(s, 200, "{v}");
        v["snapshot_version"].as_u64().unwrap()
    }

    /// Like a crash: the runtime goes, with the listener and every connection.
    fn kill(self) {
        self.inner.stop();
    }
}

fn document(pool_size: u64) -> String {
    format!(
        r#"
connections:
  - name: app
    host: 127.0.0.1
    port: 5433
    database: appdb
    pool: {{ mode: transaction, size: {pool_size}, timeout: 5s }}
    users:
      - name: reader
        user: app_reader
        password: reader-pa$$word
      - name: writer
        password: writer-pw
identity_providers:
  - name: corp
    issuer: https://idp.example
    audience: [sluice]
    groups_claim: grp
    jwks: {{ keys: [ {{ kty: OKP, crv: Ed25519, alg: EdDSA, kid: corp-1, x: {IDP_X} }} ] }}
roles:
  - name: analyst
    groups: [analysts]
    connections: {{ app: reader }}
    policy: read-only
  - name: jit
    subjects: [ci-bot]
    connections: {{ app: writer }}
policies:
  - name: read-only
    classes: {{ allow: [read] }}
    max_rows: 100
"#
    )
}

/// The local file: process-level settings, and a placeholder connection snapshots replace.
fn local_config() -> Config {
    let yaml = r#"
listen: 127.0.0.1:0
cores: 2
auth:
  static_tokens:
    - { token: break-glass-token-0123456789, subject: oncall }
connections:
  - { name: placeholder, port: 1, database: x, users: [{ name: u }] }
"#;
    Config::from_yaml(yaml, Path::new("/"), &|_| None).unwrap()
}

fn client_settings(base: &str, token: &str, state: &Path) -> ClientSettings {
    let mut s = ClientSettings::new(base, token, "node-a", state.to_owned());
    s.address = "127.0.0.1:6432".into();
    s.drivers = vec!["io_uring".into(), "io_uring".into()];
    s.poll_wait = Duration::from_secs(2);
    s.request_timeout = Duration::from_secs(2);
    s.backoff_min = Duration::from_millis(50);
    s.backoff_max = Duration::from_millis(400);
    s
}

type Deliveries = mpsc::Receiver<(Applied, Instant)>;

fn start_client(settings: ClientSettings, running: Option<u64>) -> (SnapshotClient, Deliveries) {
    let (tx, rx) = mpsc::channel();
    let client = SnapshotClient::start(settings, local_config(), running, move |a| {
        let _ = tx.send((a, Instant::now()));
        Ok(())
    })
    .unwrap();
    (client, rx)
}

/// Waits for the delivery of `version` (skipping older ones).
fn wait_for(rx: &Deliveries, version: u64) -> (Applied, Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (a, t) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("version {version} not delivered"));
        if a.version >= version {
            assert_eq!(a.version, version);
            return (a, t);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn snapshots_arrive_survive_a_control_plane_outage_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
    let state = dir.path().join("node").join("snapshot.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();

    let cp = ControlPlaneProcess::start(&store_url, &key, "127.0.0.1:0");
    let (s, v) = cp.call(
        "POST",
        "/v1/tokens",
        Some((
            "application/json",
            json!({"name": "node-a", "role": "node"}).to_string(),
        )),
    );
    assert_eq!(s, 201, "{v}");
    let node_token = v["token"].as_str().unwrap().to_owned();
    let first = cp.apply(&document(10));

    // ---- first delivery: what the document says, merged with the local file ----
    let (client, rx) = start_client(client_settings(&cp.base, &node_token, &state), None);
    let (a, _) = wait_for(&rx, first);
    let c = &a.config;
    assert_eq!(c.cores, 2, "process settings stay local");
    assert_eq!(c.connections.len(), 1);
    let app = c.connection("app").expect("connection from the snapshot");
    assert_eq!((app.port, app.database.as_str()), (5433, "appdb"));
    assert_eq!(app.pool.size, 10);
    assert_eq!(app.users["reader"].user, "app_reader");
    assert_eq!(
        app.users["reader"].password.as_deref(),
        Some("reader-pa$$word")
    );
    assert_eq!(app.users["writer"].user, "writer");
    let analyst = c.role_for("someone", &["analysts".into()]).unwrap();
    assert_eq!(
        (analyst.name.as_str(), analyst.connections["app"].as_str()),
        ("analyst", "reader")
    );
    assert_eq!(analyst.policy.name(), "read-only");
    assert_eq!(analyst.policy.max_rows(), Some(100));
    let jit = c.role_for("ci-bot", &[]).unwrap();
    assert!(
        !jit.policy.is_valid(),
        "a role without a policy denies everything"
    );
    assert_eq!(
        (jit.name.as_str(), jit.connections["app"].as_str()),
        ("jit", "writer")
    );
    assert!(c.auth.jwt.iter().any(|j| j.issuer == "https://idp.example"));
    assert_eq!(
        c.auth.static_tokens.len(),
        1,
        "break-glass tokens stay local"
    );

    // The control plane records the version the node runs (its next poll's `after`).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, nodes) = cp.call("GET", "/v1/nodes", None);
        if nodes[0]["snapshot_version"].as_u64() == Some(first) {
            assert_eq!(nodes[0]["id"], "node-a");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node's version not reported: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // ---- a grant verifies with the delivered keys; its revocation arrives ----
    let (s, g) = cp.call(
        "POST",
        "/v1/grants",
        Some((
            "application/json",
            json!({"identity": "ci-bot", "connection": "app", "role": "jit", "ttl": "15m"})
                .to_string(),
        )),
    );
    assert_eq!(s, 201, "{g}");
    let grant_id = g["id"].as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = TokenVerifier::new(&c.auth)
        .unwrap()
        .verify(g["token"].as_str().unwrap(), now)
        .expect("grant verifies with the snapshot's key");
    assert!(a.grants.is_grant_issuer(&id.issuer));
    assert_eq!(
        (id.subject.as_str(), id.token_id.as_str()),
        ("ci-bot", grant_id.as_str())
    );
    assert_eq!(id.groups, ["jit"], "the grant's role claim");
    assert!(!a.grants.is_revoked(&grant_id));
    let (s, v) = cp.call("DELETE", &format!("/v1/grants/{grant_id}"), None);
    assert!(s == 200 || s == 204, "{s} {v}");
    let revoked = cp.call("GET", "/v1/snapshot/current", None).1["version"]
        .as_u64()
        .unwrap();
    let (a, _) = wait_for(&rx, revoked);
    assert!(a.grants.is_revoked(&grant_id));

    // ---- delivery latency over 20 applies ----
    let mut from_send = Vec::new();
    let mut from_answer = Vec::new();
    let mut from_send_last = 0;
    for i in 0..20u64 {
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        let v = cp.apply(&document(11 + i));
        let t1 = Instant::now();
        from_send_last = v;
        let (a, t2) = wait_for(&rx, v);
        assert_eq!(
            a.config.connection("app").unwrap().pool.size,
            (11 + i) as usize
        );
        from_send.push(t2 - t0);
        from_answer.push(t2.saturating_duration_since(t1));
    }
    from_send.sort();
    from_answer.sort();
    let median = from_send[from_send.len() / 2];
    println!(
        "apply → callback over {} applies: from sending the apply median {:.2} ms, p95 {:.2} ms, max {:.2} ms; \
         from the apply's answer median {:.3} ms, max {:.3} ms",
        from_send.len(),
        ms(median),
        ms(from_send[from_send.len() * 95 / 100]),
        ms(from_send[from_send.len() - 1]),
        ms(from_answer[from_answer.len() / 2]),
        ms(from_answer[from_answer.len() - 1]),
    );
    assert!(median < Duration::from_millis(100), "median {median:?}");
    // The last version is in force once the callback returns, and on disk right after.
    let running = from_send_last;
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.version() != running
        || SnapshotClient::load_persisted(&state)
            .unwrap()
            .unwrap()
            .version
            != running
    {
        assert!(
            Instant::now() < deadline,
            "version {running} not in force and persisted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // ---- the control plane goes away: the client keeps its snapshot and retries ----
    let addr = cp.base.trim_start_matches("http://").to_owned();
    cp.kill();
    let before = client.stats();
    std::thread::sleep(Duration::from_millis(1500));
    let during = client.stats();
    assert_eq!(during.version, running, "fail-static");
    assert_eq!(during.applied, before.applied);
    assert!(
        during.failures >= before.failures + 3,
        "retries while away: {before:?} → {during:?}"
    );
    assert!(rx.try_recv().is_err(), "nothing delivered while away");

    // ---- it comes back on the same address: the client picks up the next change ----
    let cp = ControlPlaneProcess::start(&store_url, &key, &addr);
    let t = Instant::now();
    let v = cp.apply(&document(99));
    let (a, _) = wait_for(&rx, v);
    println!(
        "after the control plane's restart, a new version arrived {:.0} ms after the apply",
        ms(t.elapsed())
    );
    assert_eq!(a.config.connection("app").unwrap().pool.size, 99);
    let t = Instant::now();
    client.stop();
    println!("client stop took {:.0} ms", ms(t.elapsed()));
    cp.kill();

    // ---- a restart of the data plane without the control plane ----
    let snap = SnapshotClient::load_persisted(&state)
        .unwrap()
        .expect("persisted snapshot");
    assert_eq!(snap.version, v);
    let cfg = config_from_snapshot(&local_config(), &snap).unwrap();
    assert_eq!(cfg.connection("app").unwrap().pool.size, 99);
    let (client, rx2) = start_client(
        client_settings(&format!("http://{addr}"), &node_token, &state),
        Some(snap.version),
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = client.stats();
    assert_eq!((st.version, st.applied), (v, 0));
    assert!(st.failures >= 1, "{st:?}");
    assert!(rx2.try_recv().is_err());
    client.stop();

    // ---- a tampered file is refused ----
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("appdb", "otherdb")).unwrap();
    let e = SnapshotClient::load_persisted(&state).unwrap_err();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e}");
    println!("tampered file: {e}");

    // ---- so is one whose compiled policies were changed (the source left as it was) ----
    assert_eq!(
        snap.content.compiled_policies.len(),
        1,
        "the control plane compiles"
    );
    let mut v = serde_json::to_value(&snap).unwrap();
    v["content"]["compiled_policies"][0]["classes"] =
        json!(["allow", "allow", "allow", "allow", "allow", "allow", "allow", "allow"]);
    std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = SnapshotClient::load_persisted(&state).unwrap_err();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e}");
    let tampered: Snapshot = serde_json::from_value(v).unwrap();
    let e = config_from_snapshot(&local_config(), &tampered).unwrap_err();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e}");

    // ---- a snapshot naming a missing backend user is refused with the field ----
    let mut content = snap.content.clone();
    content
        .roles
        .iter_mut()
        .find(|r| r.name == "analyst")
        .unwrap()
        .connections
        .insert("app".into(), "admin".into());
    let bad = Snapshot::new(snap.version + 1, 0, 0, content);
    let e = config_from_snapshot(&local_config(), &bad).unwrap_err();
    println!("missing backend user: {e}");
    assert!(
        e.to_string()
            .contains("roles[0].connections.app: connection `app` has no backend user `admin`"),
        "{e}"
    );
}

/// A control plane that answers POST /v1/nodes with 200 and each snapshot poll with the
/// next of `answers` (status, body), then 204s.
fn fake_control_plane(answers: Vec<(u16, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut r = BufReader::new(stream);
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let (status, body) = if head.starts_with("POST /v1/nodes ") {
                (200, br#"{"id":"node-a"}"#.to_vec())
            } else {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                answers.get(n).cloned().unwrap_or((204, Vec::new()))
            };
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (base, polls)
}

#[test]
fn bad_snapshots_from_the_wire_are_refused_and_the_last_good_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("snapshot.json");
    let good_content = {
        let mut c = sluice_policy::snapshot::SnapshotContent::default();
        c.connections
            .push(sluice_policy::snapshot::SnapshotConnection {
                name: "app".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                database: "app".into(),
                tls: "disable".into(),
                tls_ca: None,
                pool: Default::default(),
                users: vec![sluice_policy::snapshot::SnapshotUser {
                    name: "reader".into(),
                    user: "reader".into(),
                    password: None,
                }],
            });
        c
    };
    let good = Snapshot::new(1, 1, 0, good_content.clone());
    let mut missing_user = good_content.clone();
    missing_user
        .roles
        .push(sluice_policy::snapshot::SnapshotRole {
            name: "r".into(),
            subjects: vec!["s".into()],
            groups: vec![],
            connections: [("app".to_owned(), "writer".to_owned())].into(),
            policy: None,
        });
    let missing_user = Snapshot::new(2, 2, 0, missing_user);
    let mut tampered = Snapshot::new(3, 3, 0, good_content.clone());
    tampered.content.connections[0].host = "evil.example".into();
    // Compiled policies are covered by the hash as the source is.
    let mut with_policy = good_content.clone();
    with_policy.policies = vec![json!({"name": "p", "classes": {"allow": ["read"]}})];
    with_policy.compiled_policies =
        sluice_policy::PolicySet::from_yaml("policies: [{name: p, classes: {allow: [read]}}]", 0)
            .unwrap()
            .compile();
    let mut tampered_policy = Snapshot::new(4, 4, 0, with_policy);
    tampered_policy.content.compiled_policies = sluice_policy::PolicySet::from_yaml(
        "policies: [{name: p, classes: {allow: [read, write, ddl]}}]",
        0,
    )
    .unwrap()
    .compile();
    assert!(
        serde_json::to_vec(&tampered_policy).unwrap().len() < 1024,
        "refused for its hash, not its size"
    );
    let oversized = vec![b' '; 2048];
    let answers = vec![
        (200, serde_json::to_vec(&good).unwrap()),
        (200, serde_json::to_vec(&missing_user).unwrap()),
        (200, serde_json::to_vec(&tampered).unwrap()),
        (200, serde_json::to_vec(&tampered_policy).unwrap()),
        (200, oversized),
        (200, b"{\"version\": 9".to_vec()),
        (500, br#"{"error":{"message":"boom"}}"#.to_vec()),
    ];
    let n_answers = answers.len();
    let (base, polls) = fake_control_plane(answers);
    let mut settings = client_settings(&base, "node-token", &state);
    settings.max_snapshot_bytes = 1024;
    settings.backoff_min = Duration::from_millis(10);
    settings.backoff_max = Duration::from_millis(20);
    let (client, rx) = start_client(settings, None);
    let (a, _) = wait_for(&rx, 1);
    assert!(a.config.connection("app").is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while polls.load(Ordering::SeqCst) <= n_answers {
        assert!(Instant::now() < deadline, "client stopped polling");
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = client.stats();
    client.stop();
    assert_eq!((st.version, st.applied), (1, 1), "{st:?}");
    assert_eq!(
        st.rejected, 5,
        "missing user, tampered, tampered policy, oversized, malformed: {st:?}"
    );
    assert!(st.failures >= 1, "the 500: {st:?}");
    assert!(
        rx.try_recv().is_err(),
        "no bad snapshot reached the callback"
    );
    let on_disk = SnapshotClient::load_persisted(&state).unwrap().unwrap();
    assert_eq!(on_disk, good, "the last good snapshot stays on disk");
}

#[test]
fn a_snapshot_the_callback_refuses_is_not_reported_and_is_asked_for_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("snapshot.json");
    let good = Snapshot::new(1, 1, 0, sluice_policy::snapshot::SnapshotContent::default());
    let body = serde_json::to_vec(&good).unwrap();
    let (base, polls) = fake_control_plane(vec![(200, body.clone()), (200, body)]);
    let mut settings = client_settings(&base, "node-token", &state);
    settings.backoff_min = Duration::from_millis(10);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let client = SnapshotClient::start(settings, local_config(), None, move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("backend host does not resolve".into())
        } else {
            Ok(())
        }
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.version() != 1 {
        assert!(Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = client.stats();
    client.stop();
    assert_eq!((st.applied, st.rejected), (1, 1), "{st:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(polls.load(Ordering::SeqCst) >= 2);
    assert_eq!(SnapshotClient::load_persisted(&state).unwrap(), Some(good));
}

/// A document of 10,000 rules (10 policies of 700 per-class rules, 200 table deny globs and
/// 100 masking rules, as in the control plane's `policy_scale` test).
fn large_document() -> String {
    use std::fmt::Write as _;
    let mut y = String::from(
        "connections:\n  - {name: app, host: 127.0.0.1, port: 5432, database: app, users: [{name: reader, password: pw}]}\nroles:\n",
    );
    for p in 0..10 {
        let _ = writeln!(
            y,
            "  - {{name: r{p}, groups: [g{p}], connections: {{app: reader}}, policy: p{p}}}"
        );
    }
    y.push_str("policies:\n");
    for p in 0..10 {
        let _ = writeln!(
            y,
            "  - name: p{p}\n    classes: {{allow: [read, write], review: [ddl]}}\n    rules:"
        );
        for r in 0..700 {
            let _ = writeln!(
                y,
                "      - {{classes: [write], tables: {{allow: [\"app.t{r}\", \"app.t{r}_*\", \"s{p}.*\"]}}}}"
            );
        }
        y.push_str("    tables:\n      deny:\n");
        for d in 0..200 {
            let _ = writeln!(y, "        - \"secret{d}.*\"");
        }
        y.push_str("    masking:\n");
        for m in 0..100 {
            let _ = writeln!(
                y,
                "      - {{columns: [\"app.customers{m}.ssn\", \"*.*.email{m}\"], strategy: {{partial: {{keep_last: 4}}}}}}"
            );
        }
    }
    y
}

/// What loading a 10,000-rule snapshot costs the data plane (decode with the hash check,
/// then `config_from_snapshot`, which checks the hash again), from its compiled policies and
/// from source only (a snapshot from an older control plane). Medians of 3; release figures
/// with `cargo test --release -p sluice-dataplane --test snapshot_client large -- --nocapture`.
#[test]
fn a_large_snapshot_loads_from_its_compiled_policies() {
    use sluice_controlplane::compile::compile;
    use sluice_controlplane::document::{self, Credentials, Format};
    use sluice_dataplane::snapshot::decode;

    let doc = document::parse(large_document().as_bytes(), Format::Yaml).unwrap();
    let creds = doc.validate(&Credentials::new()).unwrap();
    let content = compile(&doc, &creds, Default::default(), vec![]);
    let compiled = Snapshot::new(2, 1, 0, content);
    let mut source_only = compiled.clone();
    source_only.content.compiled_policies.clear();
    let source_only = Snapshot::new(2, 1, 0, source_only.content);

    let mut lines = Vec::new();
    let mut configs = Vec::new();
    for (label, snap) in [("compiled", &compiled), ("source only", &source_only)] {
        let bytes = serde_json::to_vec(snap).unwrap();
        let (mut decoding, mut loading) = (vec![], vec![]);
        for _ in 0..3 {
            let t = Instant::now();
            let snap = decode(&bytes, "test").unwrap();
            decoding.push(t.elapsed());
            let t = Instant::now();
            let cfg = config_from_snapshot(&local_config(), &snap).unwrap();
            loading.push(t.elapsed());
            configs.push(cfg);
        }
        decoding.sort();
        loading.sort();
        lines.push(format!(
            "{label}: {} KiB, decode + hash check {:.1} ms, config_from_snapshot {:.1} ms",
            bytes.len() / 1024,
            ms(decoding[1]),
            ms(loading[1])
        ));
    }
    println!("a 10,000-rule snapshot on the data plane (medians of 3):");
    for l in lines {
        println!("  {l}");
    }
    let (a, b) = (&configs[0], &configs[3]);
    assert_eq!(a.roles.len(), 10);
    for (ra, rb) in a.roles.iter().zip(&b.roles) {
        assert!(ra.policy.is_valid());
        assert_eq!(ra.policy, rb.policy, "role {}", ra.name);
    }
}
