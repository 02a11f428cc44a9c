//! The `sluice` binary's client commands against a real control plane (in this process, on
//! the embedded store, port 0): tables for people by default, `-o json|yaml` that parse,
//! `audit tail -f` following until Ctrl-C, one-line errors with the HTTP status, and shell
//! completion scripts.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_client::{Client, Trust};
use sluice_controlplane::crypto::MasterKey;
use sluice_controlplane::inprocess::InProcess;
use sluice_controlplane::service::Settings;

const ADMIN: &str = "cli-test-admin-token-0123456789";

const DOCUMENT: &str = "connections:
  - name: app
    port: 5432
    database: app
    users: [ { name: app, user: app_rw, password: pw } ]
roles:
  - name: analyst
    groups: [analysts]
    connections: { app: app }
    policy: reader
policies:
  - name: reader
    classes: { allow: [read] }
notifications:
  - name: chat
    url: http://127.0.0.1:9/nobody-listens
    events: [grant.issued]
    format: slack
";

fn start(dir: &std::path::Path) -> InProcess {
    let url = format!("sqlite://{}?mode=rwc", dir.join("cp.db").display());
    let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
    let settings = Settings {
        admin_token: Some(ADMIN.into()),
        ..Settings::default()
    };
    InProcess::start(&url, key, settings, "127.0.0.1:0".parse().unwrap()).expect("control plane")
}

/// `sluice ARGS --server BASE --token ADMIN`.
fn sluice(base: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .args(["--server", base, "--token", ADMIN])
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_CA");
    c
}

fn run(base: &str, args: &[&str]) -> Output {
    sluice(base, args).output().expect("running sluice")
}

/// Standard output of a command that must succeed.
fn ok(base: &str, args: &[&str]) -> String {
    let o = run(base, args);
    assert!(
        o.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Standard error of a command that must fail: exactly one line.
fn fails(base: &str, args: &[&str]) -> String {
    let o = run(base, args);
    assert!(!o.status.success(), "sluice {args:?} succeeded");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    err
}

/// The cells of a table's lines, split on runs of 3+ spaces, checking that every line's
/// columns start where the header's do.
fn cells(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = header
        .match_indices(|c: char| c.is_ascii_uppercase())
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || header[..i].ends_with("   "))
        .collect();
    let split = |l: &str| -> Vec<String> {
        l.split("   ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut rows = vec![split(header)];
    for l in lines {
        for &s in &starts[1..] {
            let before = &l[..s.min(l.len())];
            assert!(
                s >= l.len() || before.ends_with(' '),
                "column at {s} misaligned in {l:?} (header {header:?})"
            );
        }
        rows.push(split(l));
    }
    rows
}

fn api(base: &str) -> Client {
    Client::new(base, ADMIN, &Trust::webpki(), Duration::from_secs(30))
}

fn post(base: &str, path: &str, body: &Value) -> Value {
    let a = api(base).post_json(path, body, 1 << 20).expect("request");
    assert!(a.is_success(), "{path}: {}", a.text());
    a.json().unwrap()
}

fn audit_record(id: u32, verdict: &str, statement: &str) -> Value {
    json!({"time_ms": 1_796_316_561_000_i64 + i64::from(id), "identity": "ci-bot", "connection": "app",
           "statement": statement, "verdict": verdict, "rule_id": "tables.deny", "rows": 3, "duration_us": 1500})
}

#[test]
fn client_commands_print_tables_for_people_and_json_or_yaml_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let base = cp.base_url().to_owned();
    let doc = dir.path().join("doc.yaml");
    std::fs::write(&doc, DOCUMENT).unwrap();

    // apply: the diff as a table, then the versions
    let out = ok(&base, &["apply", "-f", doc.to_str().unwrap()]);
    let rows = cells(&out[..out.rfind("applied").unwrap()]);
    assert_eq!(rows[0], ["KIND", "NAME", "CHANGE", "FIELDS"]);
    assert!(rows.contains(&vec![
        "role".into(),
        "analyst".into(),
        "added".into(),
        "-".into()
    ]));
    assert!(
        out.ends_with("applied: document version 1, snapshot version 2\n"),
        "{out}"
    );

    // get: a table by default, wide adds columns, json and yaml are the API's answer
    let out = ok(&base, &["get", "roles"]);
    assert_eq!(
        cells(&out),
        [
            vec!["NAME", "POLICY", "SUBJECTS", "GROUPS", "CONNECTIONS"],
            vec!["analyst", "reader", "-", "analysts", "app=app"]
        ]
    );
    let out = ok(&base, &["get", "connections", "-o", "wide"]);
    assert_eq!(
        cells(&out)[0],
        ["NAME", "HOST", "PORT", "DATABASE", "USERS", "TLS", "POOL"]
    );
    let json: Value = serde_json::from_str(&ok(&base, &["get", "roles", "-o", "json"])).unwrap();
    assert_eq!(json[0]["name"], "analyst");
    let yaml: Value =
        serde_yaml_ng::from_str(&ok(&base, &["get", "connections", "-o", "yaml"])).unwrap();
    assert_eq!(yaml[0]["users"][0]["user"], "app_rw");
    assert!(yaml[0]["users"][0].get("password").is_none());

    // grant: the token in a table, or JSON
    let out = ok(
        &base,
        &[
            "grant",
            "--identity",
            "ci-bot",
            "--connection",
            "app",
            "--role",
            "analyst",
        ],
    );
    let rows = cells(&out);
    assert_eq!(rows[0], ["ID", "EXPIRES", "TOKEN"]);
    assert_eq!(rows[1][1], "in 14m");
    let grant: Value = serde_json::from_str(&ok(
        &base,
        &[
            "grant",
            "--identity",
            "bot2",
            "--connection",
            "app",
            "--role",
            "analyst",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert!(grant["token"].as_str().unwrap().starts_with("ey"));
    let rows = cells(&ok(&base, &["get", "grants"]));
    assert_eq!(
        rows[0],
        [
            "ID",
            "IDENTITY",
            "CONNECTION",
            "ROLE",
            "STATUS",
            "AGE",
            "EXPIRES"
        ]
    );
    assert!(rows[1..].iter().all(|r| r[4] == "active"), "{rows:?}");

    // deliveries: the two grants' notifications, sent to nobody
    let rows = cells(&ok(&base, &["get", "deliveries"]));
    assert_eq!(
        rows[0],
        ["ID", "EVENT", "WEBHOOK", "SUBJECT", "STATUS", "ATTEMPTS", "HTTP", "AGE"]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[1][1..3], ["grant.issued", "chat"]);
    assert_eq!(rows[1][3], grant["id"].as_str().unwrap());

    // nodes
    post(
        &base,
        "/v1/nodes",
        &json!({"id": "dp-1", "address": "10.0.0.5:6432", "drivers": ["io_uring", "epoll"]}),
    );
    let rows = cells(&ok(&base, &["get", "nodes"]));
    assert_eq!(
        rows[0],
        ["ID", "ADDRESS", "VERSION", "LAST-SEEN", "DRIVERS"]
    );
    assert_eq!(rows[1][..2], ["dp-1", "10.0.0.5:6432"]);
    assert_eq!(rows[1][4], "io_uring,epoll");

    // reviews: list, show, approve
    let review = post(
        &base,
        "/v1/reviews",
        &json!({"identity": "ci-bot", "connection": "app", "role": "analyst",
                "statement": "DELETE FROM orders\n WHERE id = 7", "rule_id": "writes.review",
                "node_id": "dp-1", "min_approvers": 1, "wait": true, "expires_in_ms": 600000}),
    );
    let id = review["id"].as_str().unwrap();
    let rows = cells(&ok(&base, &["review", "list"]));
    assert_eq!(
        rows[0],
        [
            "ID",
            "STATUS",
            "IDENTITY",
            "CONNECTION",
            "APPROVALS",
            "AGE",
            "STATEMENT"
        ]
    );
    assert_eq!(rows[1][..5], [id, "pending", "ci-bot", "app", "0/1"]);
    assert_eq!(rows[1][6], "DELETE FROM orders WHERE id = 7");
    let listed: Value =
        serde_json::from_str(&ok(&base, &["review", "list", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["id"], id);
    let shown = ok(&base, &["review", "show", id]);
    assert!(shown.contains("Status:       pending\n"), "{shown}");
    let out = ok(&base, &["review", "approve", id, "--comment", "ok"]);
    assert_eq!(
        out,
        format!("review {id}: approved by bootstrap-admin, usable once\n")
    );
    let rows = cells(&ok(&base, &["get", "reviews"]));
    assert_eq!(rows[1][1], "approved");

    // api-audit
    let rows = cells(&ok(&base, &["get", "api-audit"]));
    assert_eq!(rows[0], ["ID", "TIME", "ACTOR", "ROLE", "ACTION", "TARGET"]);
    assert!(rows.iter().any(|r| r[4] == "review.approve"), "{rows:?}");
}

#[test]
fn errors_are_one_line_with_the_reason_and_the_http_status() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let base = cp.base_url().to_owned();

    let err = fails(&base, &["review", "show", "nope"]);
    assert_eq!(
        err,
        "sluice: no review `nope` (HTTP 404 Not Found, GET /v1/reviews/nope)\n"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "roles:\n  - name: r\n    connections: { nowhere: u }\n    policy: missing\n",
    )
    .unwrap();
    let err = fails(&base, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.starts_with("sluice: "), "{err}");
    assert!(err.contains("roles[0]"), "names the path: {err}");
    assert!(
        err.ends_with("(HTTP 422 Unprocessable Entity, POST /v1/apply)\n"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["get", "roles", "--server", &base, "--token", "wrong-token"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(o.stderr).unwrap(),
        "sluice: unknown or revoked API token (HTTP 401 Unauthorized, GET /v1/roles)\n"
    );
    // Nothing listening: the transport's reason, on one line.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = fails(&closed, &["get", "roles"]);
    assert!(err.contains("Connection refused"), "{err}");
    assert!(
        !err.contains("Transport(") && !err.contains("Error {"),
        "no debug dump: {err}"
    );
}

#[test]
fn audit_tail_prints_a_table_and_follows_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let base = cp.base_url().to_owned();
    let batch = |id: &str, recs: Vec<Value>| {
        post(
            &base,
            "/v1/audit/batches",
            &json!({"batch_id": id, "node_id": "dp-1", "records": recs}),
        )
    };
    batch(
        "b1",
        vec![
            audit_record(1, "allow", "SELECT 1"),
            audit_record(2, "deny", "DROP TABLE t"),
        ],
    );

    let rows = cells(&ok(&base, &["audit", "tail"]));
    assert_eq!(
        rows[0],
        [
            "TIME",
            "IDENTITY",
            "CONNECTION",
            "VERDICT",
            "RULE",
            "ROWS",
            "MS",
            "STATEMENT"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "2026-12-03 16:49:21",
            "ci-bot",
            "app",
            "allow",
            "tables.deny",
            "3",
            "1.5",
            "SELECT 1"
        ]
    );
    assert_eq!(rows[2][3], "deny");
    let only_denials = cells(&ok(&base, &["audit", "tail", "--verdict", "deny"]));
    assert_eq!(only_denials.len(), 2);
    let lines = ok(&base, &["audit", "tail", "-o", "json"]);
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed[1]["statement"], "DROP TABLE t");
    let yaml = ok(&base, &["audit", "tail", "-o", "yaml"]);
    let docs: Vec<Value> = yaml
        .split("---\n")
        .filter(|d| !d.is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);

    // -f: a record stored after the start is printed, aligned under the header; Ctrl-C ends
    // the command with status 0.
    let mut child = sluice(&base, &["audit", "tail", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut read_line = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l
    };
    let header = read_line();
    let first = read_line();
    assert!(first.contains("DROP TABLE t"), "{first}");
    batch("b2", vec![audit_record(3, "review", "DELETE FROM orders")]);
    let t0 = Instant::now();
    let next = read_line();
    assert!(next.contains("DELETE FROM orders"), "{next}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "followed within a poll"
    );
    cells(&format!("{header}{first}{next}"));
    // SAFETY: signalling our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C ends a follow cleanly: {status:?}");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _sluice"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        let script = String::from_utf8(o.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker} missing");
        assert!(script.contains("audit"), "{shell}: subcommands listed");
    }
}
