//! Webhook notifications against a real HTTP receiver on a local port: events from reviews,
//! grants and shipped audit records arrive signed (HMAC-SHA256 over the body), a receiver
//! that fails is retried with backoff, attempts used up mark a delivery failed, and every
//! delivery is listed by the API.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{settings, test_key, Server, ADMIN};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_controlplane::service::{Role, Settings};

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A tiny HTTP/1.1 server: answers each request with the next status of `statuses` (the last
/// one repeats), and sends what it got down a channel.
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let statuses = Arc::new(Mutex::new(statuses));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (tx, statuses) = (tx.clone(), statuses.clone());
            std::thread::spawn(move || serve(stream, &tx, &statuses));
        }
    });
    (url, rx)
}

fn serve(stream: std::net::TcpStream, tx: &mpsc::Sender<Received>, statuses: &Mutex<Vec<u16>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let status = {
            let mut s = statuses.lock().unwrap();
            if s.len() > 1 {
                s.remove(0)
            } else {
                s[0]
            }
        };
        let _ = tx.send(Received {
            path,
            headers,
            body,
        });
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn next(rx: &mpsc::Receiver<Received>) -> Received {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a delivery within 10 s")
}

fn expected_signature(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display())
}

fn start(dir: &tempfile::TempDir, tweak: impl FnOnce(&mut Settings)) -> Server {
    let mut s = settings();
    s.notify_backoff = Duration::from_millis(200);
    tweak(&mut s);
    Server::try_start(&sqlite(dir), &test_key(), s).expect("control plane starts")
}

/// A document with connection `app`, role `analyst` and the given notifications section.
fn document(notifications: &str) -> String {
    format!(
        "connections:\n  - name: app\n    port: 5432\n    database: app\n    users: [ {{ name: app, password: pw }} ]\nroles:\n  - name: analyst\n    groups: [analysts]\n    connections: {{ app: app }}\npolicies: []\nnotifications:\n{notifications}"
    )
}

fn review_request(statement: &str) -> Value {
    json!({"identity": "ci-bot", "connection": "app", "role": "analyst", "statement": statement,
           "rule_id": "writes.review", "node_id": "node-a", "min_approvers": 1, "wait": true,
           "expires_in_ms": 600000})
}

fn deliveries(srv: &Server, query: &str) -> Vec<Value> {
    let v = srv.get(&format!("/v1/notifications/deliveries{query}"));
    v.as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

/// Waits until the delivery listing satisfies `done`.
fn wait_deliveries(srv: &Server, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = deliveries(srv, "");
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "deliveries never settled: {d:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn events_reach_the_webhook_signed_and_every_delivery_is_listed() {
    std::env::set_var("SLUICE_TEST_HOOK_KEY_A", "k3y-for-the-test-receiver");
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir, |_| {});
    let (url, rx) = receiver(vec![200]);
    let (s, v) = srv.apply_yaml(&document(&format!(
        "  - name: ops\n    url: {url}\n    events: [review.created, review.decided, grant.issued, statement.denied]\n    secret_env: SLUICE_TEST_HOOK_KEY_A\n"
    )));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["diff"]["notifications"]["added"], json!(["ops"]));
    // The document as read back names the variable, never a key.
    let doc = srv.get("/v1/document");
    assert_eq!(
        doc["document"]["notifications"][0]["secret_env"],
        "SLUICE_TEST_HOOK_KEY_A"
    );
    let node = srv.token("node-a", Role::Node);
    let alice = srv.token("alice", Role::Approver);

    // review.created
    let (s, review) = srv.post_json("/v1/reviews", &node, &review_request("DELETE FROM t"));
    assert_eq!(s, 201, "{review}");
    let got = next(&rx);
    assert_eq!(got.path, "/hook");
    assert_eq!(got.header("X-Sluice-Event"), Some("review.created"));
    assert_eq!(got.header("Content-Type"), Some("application/json"));
    assert_eq!(
        got.header("X-Sluice-Signature"),
        Some(expected_signature("k3y-for-the-test-receiver", &got.body).as_str()),
        "signed over the body"
    );
    let body = got.json();
    assert_eq!(body["event"], "review.created");
    assert_eq!(body["data"]["id"], review["id"]);
    assert_eq!(body["data"]["statement"], "DELETE FROM t");
    assert_eq!(body["data"]["identity"], "ci-bot");

    // review.decided (once, when it leaves pending)
    let id = review["id"].as_str().unwrap();
    let (s, v) = srv.post_json(&format!("/v1/reviews/{id}/approve"), &alice, &json!({}));
    assert_eq!(s, 200, "{v}");
    let got = next(&rx);
    assert_eq!(got.header("X-Sluice-Event"), Some("review.decided"));
    assert_eq!(got.json()["data"]["status"], "approved");
    assert_eq!(got.json()["data"]["approvers"], json!(["alice"]));

    // grant.issued
    let (s, g) = srv.post_json(
        "/v1/grants",
        ADMIN,
        &json!({"identity": "ci-bot", "connection": "app", "role": "analyst", "ttl": "5m"}),
    );
    assert_eq!(s, 201, "{g}");
    let got = next(&rx);
    assert_eq!(got.header("X-Sluice-Event"), Some("grant.issued"));
    assert_eq!(got.json()["data"]["id"], g["id"]);
    assert!(
        !String::from_utf8_lossy(&got.body).contains(g["token"].as_str().unwrap()),
        "the grant's token is never sent"
    );

    // statement.denied: from the audit records a data plane ships; a retried batch tells nothing
    let rec = |verdict: &str, sql: &str| {
        json!({"time_ms": 1, "identity": "ci-bot", "connection": "app", "statement": sql,
               "verdict": verdict, "rule_id": "tables.deny"})
    };
    let batch = json!({"batch_id": "b-1", "node_id": "node-a",
                       "records": [rec("allow", "SELECT 1"), rec("deny", "DROP TABLE users")]});
    for _ in 0..2 {
        let (s, v) = srv.post_json("/v1/audit/batches", &node, &batch);
        assert_eq!(s, 200, "{v}");
    }
    let got = next(&rx);
    assert_eq!(got.header("X-Sluice-Event"), Some("statement.denied"));
    assert_eq!(got.json()["data"]["statement"], "DROP TABLE users");
    assert_eq!(got.json()["data"]["node_id"], "node-a");

    let listed = wait_deliveries(&srv, |d| {
        d.len() == 4 && d.iter().all(|x| x["status"] == "delivered")
    });
    let events: Vec<&str> = listed
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "statement.denied",
            "grant.issued",
            "review.decided",
            "review.created"
        ],
        "newest first"
    );
    assert_eq!(listed[0]["subject"], "b-1#1");
    assert_eq!(listed[0]["webhook"], "ops");
    assert_eq!(listed[0]["attempts"], 1);
    assert_eq!(listed[0]["last_http_status"], 200);
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing more: the retried batch and the allowed statement told nothing"
    );
    assert_eq!(deliveries(&srv, "?status=failed").len(), 0);
    let (s, _) = srv.call(
        "GET",
        "/v1/notifications/deliveries?status=nope",
        Some(ADMIN),
        None,
    );
    assert_eq!(s, 400);
    let auditor = srv.token("carol", Role::Auditor);
    let (s, _) = srv.call("GET", "/v1/notifications/deliveries", Some(&auditor), None);
    assert_eq!(s, 200, "auditors read deliveries");
    let (s, _) = srv.call("GET", "/v1/notifications/deliveries", Some(&node), None);
    assert_eq!(s, 403, "nodes do not");
    let (_, api) = srv.call("GET", "/v1/openapi.json", None, None);
    let listing = &api["paths"]["/v1/notifications/deliveries"]["get"];
    assert!(
        listing["responses"]["200"].is_object(),
        "in the OpenAPI document: {listing}"
    );
}

#[test]
fn a_failing_receiver_is_retried_with_backoff_until_it_answers_or_attempts_run_out() {
    let dir = tempfile::tempdir().unwrap();
    retries(&start(&dir, |s| s.notify_attempts = 3));
}

/// The retry scenario on PostgreSQL: the same rows, queries and cursor updates.
#[test]
fn retries_on_postgres() {
    let pg = match sluice_pgcluster::PgCluster::start(sluice_pgcluster::ClusterOptions::default()) {
        Ok(pg) => pg,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: no PostgreSQL server binaries: {e:#}");
            return;
        }
        Err(e) => panic!("PostgreSQL: {e:#}"),
    };
    pg.create_role("sluice_cp", "cp-pass").unwrap();
    pg.create_database("sluice_cp", "sluice_cp").unwrap();
    let url = format!(
        "postgres://sluice_cp:cp-pass@{}:{}/sluice_cp",
        pg.host(),
        pg.port()
    );
    let mut s = settings();
    s.notify_backoff = Duration::from_millis(200);
    s.notify_attempts = 3;
    let srv = Server::try_start(&url, &test_key(), s).expect("control plane on PostgreSQL");
    retries(&srv);
    srv.stop();
}

fn retries(srv: &Server) {
    std::env::set_var("SLUICE_TEST_HOOK_KEY_B", "another-key");
    let (flaky, flaky_rx) = receiver(vec![500, 200]);
    let (down, down_rx) = receiver(vec![503]);
    let (s, v) = srv.apply_yaml(&document(&format!(
        "  - name: flaky\n    url: {flaky}\n    events: [grant.issued]\n    secret_env: SLUICE_TEST_HOOK_KEY_B\n  - name: down\n    url: {down}\n    events: [grant.issued]\n    secret_env: SLUICE_TEST_HOOK_KEY_B\n"
    )));
    assert_eq!(s, 200, "{v}");
    let (s, g) = srv.post_json(
        "/v1/grants",
        ADMIN,
        &json!({"identity": "ci-bot", "connection": "app", "role": "analyst", "ttl": "5m"}),
    );
    assert_eq!(s, 201, "{g}");

    // 500, then 200 after the backoff: the same delivery, the same body and signature.
    let first = next(&flaky_rx);
    let t0 = Instant::now();
    let second = next(&flaky_rx);
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "waited a backoff: {:?}",
        t0.elapsed()
    );
    assert_eq!(first.body, second.body);
    assert_eq!(
        first.header("X-Sluice-Delivery"),
        second.header("X-Sluice-Delivery")
    );
    assert_eq!(
        first.header("X-Sluice-Signature"),
        second.header("X-Sluice-Signature")
    );

    // 503 three times, 200 ms then 400 ms apart: failed.
    let times: Vec<Instant> = (0..3)
        .map(|_| {
            next(&down_rx);
            Instant::now()
        })
        .collect();
    assert!(
        times[2] - times[1] > times[1] - times[0] + Duration::from_millis(100),
        "backoff doubles"
    );
    let listed = wait_deliveries(srv, |d| {
        d.len() == 2 && d.iter().all(|x| x["status"] != "pending")
    });
    let by = |name: &str| {
        listed
            .iter()
            .find(|d| d["webhook"] == name)
            .unwrap()
            .clone()
    };
    let (ok, failed) = (by("flaky"), by("down"));
    assert_eq!(
        (ok["status"].as_str(), ok["attempts"].as_i64()),
        (Some("delivered"), Some(2))
    );
    assert_eq!(ok["last_http_status"], 200);
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(failed["last_http_status"], 503);
    assert_eq!(failed["last_error"], "HTTP 503");
    assert!(
        down_rx.recv_timeout(Duration::from_millis(800)).is_err(),
        "no attempt after failed"
    );
}

#[test]
fn slack_payloads_and_what_the_document_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir, |_| {});
    let (url, rx) = receiver(vec![200]);
    // A signed JSON webhook needs its key's variable; names and URLs are checked.
    let (s, v) = srv.apply_yaml(&document(
        "  - name: ops\n    url: ftp://x\n    events: [review.created]\n  - name: ops\n    url: http://h/\n    events: []\n    secret_env: 1BAD\n",
    ));
    assert_eq!(s, 422, "{v}");
    let paths: Vec<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for p in [
        "notifications[0].url",
        "notifications[0].secret_env",
        "notifications[1].name",
        "notifications[1].events",
        "notifications[1].secret_env",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let (s, v) = srv.apply_yaml(&document(
        "  - name: ops\n    url: http://h/\n    events: [budget.spent]\n",
    ));
    assert_eq!(s, 400, "unknown event: {v}");

    let (s, v) = srv.apply_yaml(&document(&format!(
        "  - name: chat\n    url: {url}\n    events: [review.created]\n    format: slack\n    console_url: https://sluice.example.com\n"
    )));
    assert_eq!(s, 200, "{v}");
    let node = srv.token("node-a", Role::Node);
    let (s, review) = srv.post_json(
        "/v1/reviews",
        &node,
        &review_request("UPDATE accounts SET x = 1"),
    );
    assert_eq!(s, 201, "{review}");
    let got = next(&rx);
    assert!(
        got.header("X-Sluice-Signature").is_none(),
        "no key, no signature"
    );
    let body = got.json();
    assert_eq!(body["text"], "Statement held for review: ci-bot on app");
    let text = body.to_string();
    assert!(text.contains("UPDATE accounts SET x = 1"), "{text}");
    let id = review["id"].as_str().unwrap();
    let buttons = body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("an actions block")["elements"]
        .clone();
    assert_eq!(
        buttons[0]["url"],
        format!("https://sluice.example.com/reviews/{id}?action=approve")
    );
    assert_eq!(
        buttons[1]["url"],
        format!("https://sluice.example.com/reviews/{id}?action=deny")
    );
}
