//! Human approval and the audit trail, end to end against a real PostgreSQL: `sluice up`'s two
//! planes in this process, real clients (tokio-postgres). A write held for review waits for
//! an approver and then runs once; a denied one fails with 57014 and never reaches the
//! database; in the resend mode the client gets the review id, and the same statement runs
//! after approval; a CancelRequest ends a wait with 57014. Every statement leaves exactly one
//! audit record at the control plane, with its verdict, rule, approvers and rows.

mod common;

use common::planes::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::gateway::{connect, create_app_database, runtime, sqlstate, APP_PASSWORD};
use common::{psql_cmd, run_ok, shared_pg, superuser_on, with_shared_pg};

const WAITER: &str = "agent-token-review-wait-0123456789";
const RESENDER: &str = "agent-token-review-resend-0123456789";
const CAPPED: &str = "agent-token-review-capped-0123456789";

fn dataplane_yaml() -> String {
    format!(
        "listen: 127.0.0.1:0\ncores: 2\nauth:\n  static_tokens:\n    - {{ token: {WAITER}, subject: agent-wait, groups: [waiters] }}\n    - {{ token: {RESENDER}, subject: agent-resend, groups: [resenders] }}\n    - {{ token: {CAPPED}, subject: agent-capped, groups: [capped] }}\n"
    )
}

fn document(conn: &str, db: &str) -> String {
    let pg = shared_pg();
    format!(
        r#"connections:
  - name: {conn}
    port: {pg}
    database: {db}
    pool: {{ mode: transaction, size: 6, timeout: 5s }}
    users: [ {{ name: app, user: app, password: {APP_PASSWORD} }} ]
roles:
  - name: waiter
    groups: [waiters]
    connections: {{ {conn}: app }}
    policy: wait-for-approval
  - name: resender
    groups: [resenders]
    connections: {{ {conn}: app }}
    policy: resend-after-approval
  - name: capped
    groups: [capped]
    connections: {{ {conn}: app }}
    policy: capped-for-review
policies:
  - name: wait-for-approval
    classes: {{ allow: [read, transaction, session], review: [write] }}
    review: {{ wait: true, timeout: 20s }}
  - name: resend-after-approval
    classes: {{ allow: [read, transaction, session], review: [write] }}
    review: {{ wait: false }}
  - name: capped-for-review
    classes: {{ allow: [read, write, transaction, session] }}
    max_affected_rows: 2
    over_limit: review
    review: {{ wait: false }}
"#
    )
}

/// The pending reviews of `identity`, waiting up to 10 s for one to appear.
fn pending_review(addr: SocketAddr, token: &str, identity: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = http(addr, "GET", "/v1/reviews?status=pending", token, None);
        assert_eq!(s, 200, "{v}");
        let list = v
            .get("reviews")
            .or(Some(&v))
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        if let Some(r) = list.iter().find(|r| r["identity"] == identity) {
            return r["id"].as_str().expect("review id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no pending review for {identity}: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backend_value(db: &str, id: i32) -> String {
    run_ok(&mut psql_cmd(
        &superuser_on(shared_pg(), db),
        &format!("SELECT v FROM items WHERE id = {id}"),
    ))
    .trim()
    .to_owned()
}

#[test]
fn reviewed_writes_wait_for_an_approver_and_every_statement_is_audited() {
    let db = "review_audit";
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;",
        )
        .expect("seeding");
    });
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let conn = "review_audit";
    let v = up.served.apply_yaml(&document(conn, db)).expect("apply");
    assert!(up.wait_for_version(v, Duration::from_secs(10)));
    let api = up.served.addr;
    let admin = up
        .served
        .admin_token
        .clone()
        .expect("bootstrap admin token");
    let (s, tok) = http(
        api,
        "POST",
        "/v1/tokens",
        &admin,
        Some(r#"{"name": "alice", "role": "approver"}"#),
    );
    assert!(s == 200 || s == 201, "{tok}");
    let alice = tok["token"].as_str().expect("token").to_owned();
    let (s, tok) = http(
        api,
        "POST",
        "/v1/tokens",
        &admin,
        Some(r#"{"name": "agent-wait", "role": "approver"}"#),
    );
    assert!(s == 200 || s == 201, "{tok}");
    let self_approver = tok["token"].as_str().expect("token").to_owned();

    let port = up.dataplane.local_addr().port();
    let cs = |token: &str, user: &str| {
        format!("host=127.0.0.1 port={port} user={user} password='{token}' dbname={conn} sslmode=disable")
    };
    let rt = runtime();

    // ---- wait mode: the client waits, an approver approves, the statement runs once ----
    let waiter = rt.block_on(connect(&cs(WAITER, "agent")));
    let n: i64 = rt
        .block_on(waiter.query_one("SELECT count(*) FROM items", &[]))
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let update = rt.spawn(async move {
        let r = waiter
            .simple_query("UPDATE items SET v = 'approved' WHERE id = 1")
            .await;
        (waiter, r)
    });
    let id = pending_review(api, &alice, "agent-wait");
    // Nobody approves their own request.
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &self_approver,
        None,
    );
    assert_eq!(s, 403, "{body}");
    assert_eq!(backend_value(db, 1), "v1", "nothing runs before approval");
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &alice,
        None,
    );
    assert_eq!(s, 200, "{body}");
    let (waiter, r) = rt.block_on(update).unwrap();
    r.expect("the approved statement runs");
    assert_eq!(backend_value(db, 1), "approved");

    // Denied: 57014, nothing written, the session goes on.
    let update = rt.spawn(async move {
        let r = waiter
            .simple_query("UPDATE items SET v = 'denied' WHERE id = 2")
            .await;
        (waiter, r)
    });
    let id = pending_review(api, &alice, "agent-wait");
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/deny"),
        &alice,
        Some(r#"{"comment": "not today"}"#),
    );
    assert_eq!(s, 200, "{body}");
    let (waiter, r) = rt.block_on(update).unwrap();
    let e = r.expect_err("a denied review fails the statement");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(format!("{e:?}").contains("not today"), "{e:?}");
    assert_eq!(backend_value(db, 2), "v2");
    let n: i64 = rt
        .block_on(waiter.query_one("SELECT count(*) FROM items", &[]))
        .unwrap()
        .get(0);
    assert_eq!(n, 5, "the session is still usable");

    // Cancelled while waiting: 57014 as for a running query; nothing written.
    let cancel = waiter.cancel_token();
    let update = rt.spawn(async move {
        let r = waiter
            .simple_query("UPDATE items SET v = 'cancelled' WHERE id = 4")
            .await;
        (waiter, r)
    });
    let cancelled_review = pending_review(api, &alice, "agent-wait");
    rt.block_on(cancel.cancel_query(tokio_postgres::NoTls))
        .expect("cancel request sent");
    let (waiter, r) = rt.block_on(update).unwrap();
    let e = r.expect_err("a cancelled wait fails the statement");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert_eq!(backend_value(db, 4), "v4");
    let n: i64 = rt
        .block_on(waiter.query_one("SELECT count(*) FROM items", &[]))
        .unwrap()
        .get(0);
    assert_eq!(n, 5, "the session is still usable after a cancel");
    // The cancelled statement's review is still pending; an approver clears it.
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{cancelled_review}/deny"),
        &alice,
        None,
    );
    assert_eq!(s, 200, "the review outlives the cancel: {body}");

    // ---- extended protocol: an approval covers one execution of the prepared statement ----
    let prepared_sql = "UPDATE items SET v = $1 WHERE id = 5";
    let prepare = rt.spawn(async move {
        let st = waiter.prepare(prepared_sql).await;
        (waiter, st)
    });
    let id = pending_review(api, &alice, "agent-wait");
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &alice,
        None,
    );
    assert_eq!(s, 200, "{body}");
    let (waiter, stmt) = rt.block_on(prepare).unwrap();
    let stmt = stmt.expect("prepared once approved");
    rt.block_on(waiter.execute(&stmt, &[&"once"]))
        .expect("the approved statement runs once");
    assert_eq!(backend_value(db, 5), "once");
    // A second execution needs its own approval: here it is denied.
    let again = rt.spawn(async move {
        let r = waiter.execute(&stmt, &[&"twice"]).await;
        (waiter, r)
    });
    let id = pending_review(api, &alice, "agent-wait");
    let (s, body) = http(api, "POST", &format!("/v1/reviews/{id}/deny"), &alice, None);
    assert_eq!(s, 200, "{body}");
    let (_waiter, r) = rt.block_on(again).unwrap();
    let e = r.expect_err("the second execution is not covered by the first approval");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert_eq!(backend_value(db, 5), "once");

    // ---- resend mode: an error carrying the review id, then the same text runs ----
    let resender = rt.block_on(connect(&cs(RESENDER, "agent")));
    let sql = "UPDATE items SET v = 'resent' WHERE id = 3";
    let e = rt
        .block_on(resender.simple_query(sql))
        .expect_err("held for review");
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    let id = pending_review(api, &alice, "agent-resend");
    assert!(format!("{e:?}").contains(&id), "{e:?} names {id}");
    assert_eq!(backend_value(db, 3), "v3");
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &alice,
        None,
    );
    assert_eq!(s, 200, "{body}");
    rt.block_on(resender.simple_query(sql))
        .expect("the approved text runs");
    assert_eq!(backend_value(db, 3), "resent");
    // Single use: the same text needs a new review.
    let e = rt.block_on(resender.simple_query(sql)).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");

    // ---- the audit trail: one record per statement ----
    assert!(up.dataplane.shared().flush_audit(Duration::from_secs(10)));
    let (s, page) = http(api, "GET", "/v1/audit?limit=100", &admin, None);
    assert_eq!(s, 200, "{page}");
    let records: Vec<&serde_json::Value> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r.get("record").unwrap_or(r))
        .collect();
    let of = |identity: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = records
            .iter()
            .filter(|r| r["identity"] == identity)
            .map(|r| {
                (
                    r["verdict"].as_str().unwrap_or("").to_owned(),
                    r["statement"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        of("agent-wait"),
        vec![
            ("allow".to_owned(), "SELECT count(*) FROM items".to_owned()),
            ("allow".to_owned(), "SELECT count(*) FROM items".to_owned()),
            ("allow".to_owned(), "SELECT count(*) FROM items".to_owned()),
            (
                "deny".to_owned(),
                "UPDATE items SET v = $1 WHERE id = 5".to_owned()
            ),
            (
                "deny".to_owned(),
                "UPDATE items SET v = 'cancelled' WHERE id = 4".to_owned()
            ),
            (
                "deny".to_owned(),
                "UPDATE items SET v = 'denied' WHERE id = 2".to_owned()
            ),
            (
                "review".to_owned(),
                "UPDATE items SET v = $1 WHERE id = 5".to_owned()
            ),
            (
                "review".to_owned(),
                "UPDATE items SET v = 'approved' WHERE id = 1".to_owned()
            ),
        ],
        "{records:#?}"
    );
    let approved = records
        .iter()
        .find(|r| r["identity"] == "agent-wait" && r["verdict"] == "review")
        .unwrap();
    assert_eq!(approved["approvers"], serde_json::json!(["alice"]));
    assert_eq!(approved["rows"], 1);
    assert_eq!(
        of("agent-resend"),
        vec![
            ("deny".to_owned(), sql.to_owned()),
            ("deny".to_owned(), sql.to_owned()),
            ("review".to_owned(), sql.to_owned()),
        ],
        "{records:#?}"
    );
    up.stop();
}

#[test]
fn a_write_over_its_row_limit_is_rolled_back_and_held_for_review() {
    let db = "review_over_limit";
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;",
        )
        .expect("seeding");
    });
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &dataplane_yaml());
    let conn = "review_over_limit";
    let v = up.served.apply_yaml(&document(conn, db)).expect("apply");
    assert!(up.wait_for_version(v, Duration::from_secs(10)));
    let api = up.served.addr;
    let admin = up.served.admin_token.clone().expect("admin token");
    let (s, tok) = http(
        api,
        "POST",
        "/v1/tokens",
        &admin,
        Some(r#"{"name": "alice", "role": "approver"}"#),
    );
    assert!(s == 200 || s == 201, "{tok}");
    let alice = tok["token"].as_str().expect("token").to_owned();
    let port = up.dataplane.local_addr().port();
    let cs = format!(
        "host=127.0.0.1 port={port} user=agent password='{CAPPED}' dbname={conn} sslmode=disable"
    );
    let rt = runtime();
    let client = rt.block_on(connect(&cs));
    let all = "UPDATE items SET v = 'all' WHERE id > 0";
    // Within the limit: runs, no review.
    rt.block_on(client.simple_query("UPDATE items SET v = 'one' WHERE id = 1"))
        .expect("within the limit");
    assert_eq!(backend_value(db, 1), "one");
    // Over it: rolled back, held for review, the id in the error.
    let e = rt.block_on(client.simple_query(all)).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    let id = pending_review(api, &alice, "agent-capped");
    assert!(format!("{e:?}").contains(&id), "{e:?}");
    assert!(
        format!("{e:?}").contains("more than the limit of 2"),
        "{e:?}"
    );
    assert_eq!(backend_value(db, 2), "v2", "rolled back");
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        &alice,
        None,
    );
    assert_eq!(s, 200, "{body}");
    // Sent again after approval: runs once without the limit.
    rt.block_on(client.simple_query(all))
        .expect("the approved write runs");
    for id in 1..=5 {
        assert_eq!(backend_value(db, id), "all");
    }
}
