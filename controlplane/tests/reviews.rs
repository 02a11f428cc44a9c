//! The review (human approval) queue through the API, in-process on port 0, against SQLite in
//! a temp dir and against a real PostgreSQL started for the test.

mod common;

use std::time::{Duration, Instant};

use common::{percentile, test_key, Server, ADMIN};
use serde_json::{json, Value};
use sluice_controlplane::service::{Role, Settings};

struct Tokens {
    node: String,
    alice: String,
    bob: String,
    /// An approver whose name is also an agent identity.
    ci_bot: String,
    auditor: String,
}

fn tokens(srv: &Server) -> Tokens {
    Tokens {
        node: srv.token("node-a", Role::Node),
        alice: srv.token("alice", Role::Approver),
        bob: srv.token("bob", Role::Approver),
        ci_bot: srv.token("ci-bot", Role::Approver),
        auditor: srv.token("carol", Role::Auditor),
    }
}

fn request(identity: &str, statement: &str, min_approvers: u32, expires_in_ms: u64) -> Value {
    json!({
        "identity": identity, "connection": "app", "role": "analyst", "statement": statement,
        "rule_id": "policy:ops/classes.review", "message": "DDL needs a human", "node_id": "node-a",
        "session_id": "s-1", "min_approvers": min_approvers, "wait": true,
        "expires_in_ms": expires_in_ms,
    })
}

fn create(srv: &Server, t: &Tokens, body: &Value) -> (u16, Value) {
    srv.post_json("/v1/reviews", &t.node, body)
}

fn decide(srv: &Server, token: &str, id: &str, verb: &str, body: Value) -> (u16, Value) {
    srv.post_json(&format!("/v1/reviews/{id}/{verb}"), token, &body)
}

fn consume(srv: &Server, t: &Tokens, identity: &str, statement: &str) -> (u16, Value) {
    srv.post_json(
        "/v1/reviews/consume",
        &t.node,
        &json!({"identity": identity, "connection": "app", "statement": statement}),
    )
}

fn get(srv: &Server, token: &str, path: &str) -> (u16, Value) {
    srv.call("GET", path, Some(token), None)
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

fn auth_and_bad_input(srv: &Server, t: &Tokens) {
    let body = request("ci-bot", "DROP TABLE t", 1, 60_000);
    // No token, unknown token: 401.
    let (s, v) = srv.call(
        "POST",
        "/v1/reviews",
        None,
        Some(("application/json", body.to_string().as_bytes())),
    );
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, _) = get(srv, "nope", "/v1/reviews");
    assert_eq!(s, 401);
    // Wrong role: 403 naming the role needed.
    for token in [&t.auditor, &t.alice] {
        let (s, v) = srv.post_json("/v1/reviews", token, &body);
        assert_eq!(s, 403, "{v}");
        assert!(message(&v).contains("node"), "{v}");
    }
    let (s, v) = get(srv, &t.node, "/v1/reviews");
    assert_eq!(s, 403, "nodes do not list reviews: {v}");
    let (s, v) = consume(srv, t, "ci-bot", "DROP TABLE t");
    assert_eq!(s, 404, "{v}");
    let (s, v) = srv.post_json(
        "/v1/reviews/consume",
        &t.alice,
        &json!({"identity": "x", "connection": "app", "statement": "x"}),
    );
    assert_eq!(s, 403, "approvers do not consume: {v}");

    // Malformed or invalid bodies: 400 with the reason.
    let mut missing = body.clone();
    missing.as_object_mut().unwrap().remove("statement");
    let mut unknown = body.clone();
    unknown["approve_yourself"] = json!(true);
    let mut wrong_type = body.clone();
    wrong_type["min_approvers"] = json!("two");
    for (bad, expect) in [
        (missing, "statement"),
        (unknown, "approve_yourself"),
        (wrong_type, "min_approvers"),
        (
            request("ci-bot", "DROP TABLE t", 0, 60_000),
            "min_approvers",
        ),
        (
            request("ci-bot", "DROP TABLE t", 11, 60_000),
            "min_approvers",
        ),
        (request("ci-bot", "DROP TABLE t", 1, 10), "expires_in_ms"),
        (request("ci-bot", "", 1, 60_000), "statement"),
        (request("", "DROP TABLE t", 1, 60_000), "identity"),
    ] {
        let (s, v) = create(srv, t, &bad);
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(message(&v).contains(expect), "{expect}: {v}");
    }
    let (s, v) = srv.call(
        "POST",
        "/v1/reviews",
        Some(&t.node),
        Some(("application/json", b"{not json")),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let (s, v) = get(srv, ADMIN, "/v1/reviews?status=maybe");
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "JSON error shape: {v}");
    let (s, v) = decide(srv, &t.alice, "no-such-review", "approve", json!({}));
    assert_eq!(s, 404, "{v}");
    let (s, v) = get(srv, ADMIN, "/v1/reviews/no-such-review");
    assert_eq!(s, 404, "{v}");
    let (s, v) = get(
        srv,
        &t.node,
        "/v1/reviews/no-such-review/wait?timeout_ms=10",
    );
    assert_eq!(s, 404, "{v}");
}

fn lifecycle(srv: &Server, t: &Tokens) {
    // ---- create and de-duplicate ----
    let stmt = "ALTER TABLE accounts ADD COLUMN note text";
    let (s, r) = create(srv, t, &request("ci-bot", stmt, 1, 60_000));
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["status"], "pending");
    assert_eq!(r["statement"], stmt);
    assert_eq!(r["rule_id"], "policy:ops/classes.review");
    let id = r["id"].as_str().unwrap().to_owned();
    let (s, again) = create(srv, t, &request("ci-bot", stmt, 1, 60_000));
    assert_eq!(s, 200, "the same pending review: {again}");
    assert_eq!(again["id"], id.as_str());
    // Another statement, identity or connection is another review.
    let (s, other) = create(srv, t, &request("ci-bot", &format!("{stmt} "), 1, 60_000));
    assert_eq!(s, 201);
    assert_ne!(other["id"], id.as_str());
    let (s, other) = create(srv, t, &request("etl-bot", stmt, 1, 60_000));
    assert_eq!(s, 201);
    assert_ne!(other["id"], id.as_str());
    let mut other_conn = request("ci-bot", stmt, 1, 60_000);
    other_conn["connection"] = json!("warehouse");
    let (s, other) = create(srv, t, &other_conn);
    assert_eq!(s, 201);
    assert_ne!(other["id"], id.as_str());
    // Node and readers read it; nothing to consume while pending.
    for token in [&t.node, &t.auditor, &t.alice] {
        let (s, v) = get(srv, token, &format!("/v1/reviews/{id}"));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "pending");
    }
    assert_eq!(consume(srv, t, "ci-bot", stmt).0, 404);

    // ---- nobody approves their own request ----
    let (s, v) = decide(srv, &t.ci_bot, &id, "approve", json!({}));
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("own request"), "{v}");
    // Wrong roles cannot decide at all.
    for token in [&t.node, &t.auditor] {
        let (s, v) = decide(srv, token, &id, "approve", json!({}));
        assert_eq!(s, 403, "{v}");
    }
    let (s, v) = decide(srv, &t.alice, &id, "approve", json!({"window_s": 0}));
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("window_s"), "{v}");
    let (s, v) = decide(srv, &t.alice, &id, "deny", json!({"window_s": 60}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        get(srv, ADMIN, &format!("/v1/reviews/{id}")).1["status"],
        "pending"
    );

    // ---- single-use approval ----
    let (s, v) = decide(
        srv,
        &t.alice,
        &id,
        "approve",
        json!({"comment": "ok for today"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["approvers"], json!(["alice"]));
    assert_eq!(v["reusable"], false);
    assert_eq!(v["decisions"][0]["comment"], "ok for today");
    let (s, v) = decide(srv, &t.bob, &id, "approve", json!({}));
    assert_eq!(s, 409, "decided already: {v}");
    // Filing it again before it is used returns the approval.
    let (s, v) = create(srv, t, &request("ci-bot", stmt, 1, 60_000));
    assert_eq!((s, v["id"].as_str()), (200, Some(id.as_str())), "{v}");
    assert_eq!(v["status"], "approved");
    // Only that identity, connection and statement.
    assert_eq!(consume(srv, t, "etl-bot", stmt).0, 404);
    assert_eq!(consume(srv, t, "ci-bot", &stmt.to_lowercase()).0, 404);
    let (s, v) = consume(srv, t, "ci-bot", stmt);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "used");
    assert_eq!(v["approvers"], json!(["alice"]));
    assert_eq!(v["use_count"], 1);
    let (s, v) = consume(srv, t, "ci-bot", stmt);
    assert_eq!(s, 404, "single-use: {v}");
    assert_eq!(v["error"]["code"], "no_approval");
    // Used up, so the same statement files a new review.
    let (s, v) = create(srv, t, &request("ci-bot", stmt, 1, 60_000));
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["id"], id.as_str());
    let fresh = v["id"].as_str().unwrap().to_owned();

    // ---- two distinct approvers; deny ends it ----
    let stmt2 = "DELETE FROM accounts WHERE closed";
    let (_, r) = create(srv, t, &request("ci-bot", stmt2, 2, 60_000));
    let id2 = r["id"].as_str().unwrap().to_owned();
    let (s, v) = decide(srv, &t.alice, &id2, "approve", json!({"window_s": 3600}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "pending", "one of two: {v}");
    assert_eq!(v["approvers"], json!(["alice"]));
    let (s, v) = decide(srv, &t.alice, &id2, "approve", json!({}));
    assert_eq!(s, 409, "the same approver counts once: {v}");
    assert!(message(&v).contains("counts once"), "{v}");
    assert_eq!(consume(srv, t, "ci-bot", stmt2).0, 404);
    let (s, v) = decide(srv, ADMIN, &id2, "approve", json!({"window_s": 600}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["approvers"], json!(["alice", "bootstrap-admin"]));
    assert_eq!(v["reusable"], true, "every approver gave a window");
    let window = v["use_until"].as_i64().unwrap() - v["decided_at"].as_i64().unwrap();
    assert_eq!(window, 600_000, "the shortest window");
    // Within its window an approval is used repeatedly.
    for n in 1..=3 {
        let (s, v) = consume(srv, t, "ci-bot", stmt2);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "approved");
        assert_eq!(v["use_count"], n);
        assert_eq!(v["approvers"], json!(["alice", "bootstrap-admin"]));
    }

    let (s, v) = decide(srv, &t.bob, &fresh, "deny", json!({"comment": "not today"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "denied");
    assert_eq!(v["denied_by"], "bob");
    assert_eq!(v["deny_comment"], "not today");
    let (s, v) = decide(srv, &t.alice, &fresh, "approve", json!({}));
    assert_eq!(s, 409, "{v}");
    assert!(message(&v).contains("denied"), "{v}");
    assert_eq!(consume(srv, t, "ci-bot", stmt).0, 404);
    // One denial ends a review that needed two approvals, even after one approval.
    let (_, r) = create(srv, t, &request("ci-bot", "TRUNCATE audit_log", 2, 60_000));
    let id3 = r["id"].as_str().unwrap().to_owned();
    assert_eq!(decide(srv, &t.alice, &id3, "approve", json!({})).0, 200);
    let (s, v) = decide(srv, &t.bob, &id3, "deny", json!({}));
    assert_eq!((s, v["status"].as_str()), (200, Some("denied")), "{v}");

    // ---- expiry ----
    let stmt4 = "DROP INDEX accounts_note";
    let (_, r) = create(srv, t, &request("ci-bot", stmt4, 1, 1000));
    let id4 = r["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1100));
    let (_, v) = get(srv, ADMIN, &format!("/v1/reviews/{id4}"));
    assert_eq!(v["status"], "expired", "{v}");
    let (s, v) = decide(srv, &t.alice, &id4, "approve", json!({}));
    assert_eq!(s, 409, "{v}");
    assert!(message(&v).contains("expired"), "{v}");
    let (s, v) = create(srv, t, &request("ci-bot", stmt4, 1, 60_000));
    assert_eq!(s, 201, "an expired review frees its slot: {v}");

    // ---- lists by status ----
    let ids = |status: &str| -> Vec<String> {
        let (s, v) = get(srv, &t.auditor, &format!("/v1/reviews?status={status}"));
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["status"], status, "{r}");
                r["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert!(ids("expired").contains(&id4));
    assert!(ids("used").contains(&id));
    assert!(ids("approved").contains(&id2));
    assert!(ids("denied").contains(&fresh) && ids("denied").contains(&id3));
    let pending = ids("pending");
    assert!(!pending.contains(&id) && !pending.contains(&id4) && !pending.is_empty());
    let (_, all) = get(srv, &t.alice, "/v1/reviews?limit=1000");
    assert!(all.as_array().unwrap().len() >= 9, "{all}");

    // ---- every change is in the API audit trail ----
    let (_, audit) = get(srv, &t.auditor, "/v1/api-audit");
    let actions: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (action, actor, target) in [
        ("review.create", "node-a", &id),
        ("review.approve", "alice", &id),
        ("review.consume", "node-a", &id),
        ("review.approve", "bootstrap-admin", &id2),
        ("review.deny", "bob", &fresh),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, b, c)| a == action && b == actor && c == target),
            "{action} by {actor} on {target} in {actions:?}"
        );
    }
    // Refused attempts change nothing and are not recorded as changes.
    assert!(!actions
        .iter()
        .any(|(a, b, _)| a == "review.approve" && b == "ci-bot"));
}

/// The long-poll answers as soon as a decision is committed; figures printed.
fn wait_is_prompt(srv: &Server, t: &Tokens, label: &str) {
    // A pending review past the timeout: 200, still pending, after about the timeout.
    let (_, r) = create(
        srv,
        t,
        &request("ci-bot", "VACUUM FULL accounts", 1, 60_000),
    );
    let id = r["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (s, v) = get(
        srv,
        &t.node,
        &format!("/v1/reviews/{id}/wait?timeout_ms=300"),
    );
    let took = started.elapsed();
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Expiry ends a wait too.
    let (_, r) = create(
        srv,
        t,
        &request("ci-bot", "REINDEX TABLE accounts", 1, 1000),
    );
    let id_exp = r["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (_, v) = get(
        srv,
        &t.node,
        &format!("/v1/reviews/{id_exp}/wait?timeout_ms=10000"),
    );
    assert_eq!(v["status"], "expired", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Approve while the node waits; time from sending the approval, and from its answer.
    let runs = 20;
    let mut from_send = Vec::with_capacity(runs);
    let mut from_answer = Vec::with_capacity(runs);
    for i in 0..runs {
        let (_, r) = create(
            srv,
            t,
            &request("ci-bot", &format!("ALTER TABLE t{i} ADD c int"), 1, 60_000),
        );
        let id = r["id"].as_str().unwrap().to_owned();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let v = get(
                    srv,
                    &t.node,
                    &format!("/v1/reviews/{id}/wait?timeout_ms=20000"),
                );
                (v, Instant::now())
            });
            // Let the long-poll park first.
            std::thread::sleep(Duration::from_millis(50));
            let sent = Instant::now();
            let (s, v) = decide(srv, &t.alice, &id, "approve", json!({}));
            let answered = Instant::now();
            assert_eq!(s, 200, "{v}");
            let ((s, v), woke) = waiter.join().unwrap();
            assert_eq!(s, 200);
            assert_eq!(v["status"], "approved", "{v}");
            assert_eq!(v["approvers"], json!(["alice"]));
            from_send.push(woke - sent);
            from_answer.push(woke.saturating_duration_since(answered));
        });
    }
    from_send.sort();
    from_answer.sort();
    eprintln!(
        "[{label}] approve -> wait answered, {runs} runs: from sending the approval median {:?} p99 {:?}; \
         from its answer median {:?} p99 {:?}",
        percentile(&from_send, 0.5),
        percentile(&from_send, 0.99),
        percentile(&from_answer, 0.5),
        percentile(&from_answer, 0.99)
    );
    assert!(
        percentile(&from_send, 0.5) < Duration::from_millis(500),
        "{from_send:?}"
    );
}

fn openapi_lists_the_endpoints(srv: &Server) {
    let (s, doc) = srv.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(s, 200);
    for path in [
        "/v1/reviews",
        "/v1/reviews/{id}",
        "/v1/reviews/{id}/wait",
        "/v1/reviews/{id}/approve",
        "/v1/reviews/{id}/deny",
        "/v1/reviews/consume",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["Review"].is_object());
}

fn scenario(srv: &Server, label: &str) {
    let t = tokens(srv);
    auth_and_bad_input(srv, &t);
    lifecycle(srv, &t);
    wait_is_prompt(srv, &t, label);
    openapi_lists_the_endpoints(srv);
}

#[test]
fn reviews_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sluice.db").display()
    );
    let key = test_key();
    let srv = Server::start(&url, &key);
    scenario(&srv, "sqlite");
    let pending = srv.get("/v1/reviews?status=pending");
    srv.stop();
    // Reviews survive a restart.
    let srv = Server::start(&url, &key);
    assert_eq!(srv.get("/v1/reviews?status=pending"), pending);
    srv.stop();
}

#[test]
fn single_use_approvals_expire_unused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sluice.db").display()
    );
    let settings = Settings {
        review_approval_ttl: Duration::from_millis(500),
        ..common::settings()
    };
    let srv = Server::try_start(&url, &test_key(), settings).unwrap();
    let t = tokens(&srv);
    let (_, r) = create(&srv, &t, &request("ci-bot", "DROP TABLE old", 1, 60_000));
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(decide(&srv, &t.alice, &id, "approve", json!({})).0, 200);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(consume(&srv, &t, "ci-bot", "DROP TABLE old").0, 404);
    assert_eq!(
        get(&srv, ADMIN, &format!("/v1/reviews/{id}")).1["status"],
        "expired"
    );
    srv.stop();
}

#[test]
fn reviews_on_postgres() {
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
    let srv = Server::start(&url, &test_key());
    scenario(&srv, "postgres");
    srv.stop();
}
