//! Notifications end to end against a real PostgreSQL: `sluice up`'s two planes in this
//! process, a real client (tokio-postgres), and an HTTP receiver on a local port. A write held
//! for review through the gateway reaches the webhook as `review.created`, signed over its
//! body; the approval arrives as `review.decided` and the client proceeds; a statement the
//! gateway denies arrives as `statement.denied` from the audit records the data plane ships.

mod common;

use common::planes::*;

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::gateway::{connect, create_app_database, runtime, sqlstate, APP_PASSWORD};
use common::{shared_pg, with_shared_pg};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const AGENT: &str = "agent-token-notify-0123456789";
const KEY_VAR: &str = "SLUICE_TEST_E2E_WEBHOOK_KEY";
const KEY: &str = "e2e-webhook-signing-key";

/// A request the receiver got: its headers (lower-cased names) and body.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 receiver answering 200 to everything, one thread per connection.
fn receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/sluice", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                while let Some(req) = read_request(&mut r) {
                    let _ = tx.send(req);
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

fn read_request(r: &mut impl BufRead) -> Option<Received> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Received { headers, body })
}

/// The next delivery of `event`, checking its signature.
fn next_event(rx: &mpsc::Receiver<Received>, event: &str) -> Value {
    let got = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("{event} within 15 s"));
    assert_eq!(got.header("x-sluice-event"), Some(event));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(&got.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        got.header("x-sluice-signature"),
        Some(format!("sha256={want}").as_str()),
        "HMAC-SHA256 over the body"
    );
    serde_json::from_slice(&got.body).unwrap()
}

fn document(conn: &str, db: &str, url: &str) -> String {
    let pg = shared_pg();
    format!(
        r#"connections:
  - name: {conn}
    port: {pg}
    database: {db}
    users: [ {{ name: app, user: app, password: {APP_PASSWORD} }} ]
roles:
  - name: agent
    groups: [agents]
    connections: {{ {conn}: app }}
    policy: careful
policies:
  - name: careful
    classes: {{ allow: [read, transaction, session], review: [write] }}
    tables: {{ deny: [secrets] }}
    review: {{ wait: true, timeout: 20s }}
notifications:
  - name: approvers
    url: {url}
    events: [review.created, review.decided, statement.denied]
    secret_env: {KEY_VAR}
"#
    )
}

#[test]
fn a_review_filed_by_the_gateway_and_a_denied_statement_reach_the_webhook_signed() {
    std::env::set_var(KEY_VAR, KEY);
    let db = "notify_e2e";
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
             CREATE TABLE secrets (id int);",
        )
        .expect("seeding");
    });
    let (url, rx) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\ncores: 1\nauth:\n  static_tokens:\n    - {{ token: {AGENT}, subject: agent-7, groups: [agents] }}\n"
    );
    let up = start_up(dir.path(), &yaml);
    let conn = "notify_app";
    let v = up
        .served
        .apply_yaml(&document(conn, db, &url))
        .expect("apply");
    assert!(up.wait_for_version(v, Duration::from_secs(10)));
    let api = up.served.addr;
    let admin = up.served.admin_token.clone().expect("admin token");
    let rt = runtime();

    // A write waits for review: the webhook hears of it with the statement and who asked.
    let client = rt.block_on(connect(&conn_str(&up.dataplane, AGENT, conn)));
    let update = rt.spawn(async move {
        let r = client
            .simple_query("UPDATE items SET v = 'b' WHERE id = 1")
            .await;
        (client, r)
    });
    let created = next_event(&rx, "review.created");
    let review = &created["data"];
    assert_eq!(review["statement"], "UPDATE items SET v = 'b' WHERE id = 1");
    assert_eq!(review["identity"], "agent-7");
    assert_eq!(review["connection"], conn);
    assert_eq!(review["status"], "pending");
    let id = review["id"].as_str().unwrap();

    // Approved through the API: review.decided, and the client proceeds.
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &admin,
        None,
    );
    assert_eq!(s, 200, "{body}");
    let decided = next_event(&rx, "review.decided");
    assert_eq!(decided["data"]["id"], id);
    assert_eq!(decided["data"]["status"], "approved");
    let (client, r) = rt.block_on(update).unwrap();
    r.expect("the approved statement runs");

    // Denied by the gateway: told once its audit record reaches the control plane.
    let err = rt
        .block_on(client.simple_query("SELECT * FROM secrets"))
        .expect_err("denied");
    assert_eq!(sqlstate(&err), "42501");
    let denied = next_event(&rx, "statement.denied");
    assert_eq!(denied["data"]["statement"], "SELECT * FROM secrets");
    assert_eq!(denied["data"]["identity"], "agent-7");
    assert_eq!(denied["data"]["verdict"], "deny");

    let (s, listed) = http(api, "GET", "/v1/notifications/deliveries", &admin, None);
    assert_eq!(s, 200, "{listed}");
    let events: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["statement.denied", "review.decided", "review.created"]
    );
}
