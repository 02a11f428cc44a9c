//! The review client against the control plane in-process (SQLite in a temp dir): request and
//! de-duplication, waiting for a decision (with the approvers' names), denial, timeout,
//! consuming single-use and windowed approvals, errors; the futures are driven by a monoio
//! runtime as the cores drive them, and never block it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_controlplane::crypto::MasterKey;
use sluice_controlplane::inprocess::InProcess;
use sluice_controlplane::service::{Role, Settings};
use sluice_dataplane::review::{
    ReviewClient, ReviewClientSettings, ReviewError, ReviewRequest, ReviewStatus,
};

const ADMIN: &str = "test-admin-token-0123456789abcdef";

struct Fixture {
    cp: InProcess,
    _dir: tempfile::TempDir,
    client: ReviewClient,
    agent: ureq::Agent,
    alice: String,
    bob: String,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("sluice.db").display()
        );
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let settings = Settings {
            admin_token: Some(ADMIN.into()),
            ..Settings::default()
        };
        let cp = InProcess::start(&url, key, settings, "127.0.0.1:0".parse().unwrap()).unwrap();
        let node = cp.create_token("node-a", Role::Node).unwrap();
        let alice = cp.create_token("alice", Role::Approver).unwrap();
        let bob = cp.create_token("bob", Role::Approver).unwrap();
        let client = ReviewClient::new(cp.base_url(), &node, "node-a");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Fixture {
            cp,
            _dir: dir,
            client,
            agent,
            alice,
            bob,
        }
    }

    /// An approver's decision through the API.
    fn decide(&self, token: &str, id: &str, verb: &str, body: Value) -> u16 {
        self.agent
            .post(format!("{}/v1/reviews/{id}/{verb}", self.cp.base_url()))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap()
            .status()
            .as_u16()
    }
}

fn request(statement: &str, min_approvers: u32, expires_in: Duration) -> ReviewRequest {
    ReviewRequest {
        identity: "ci-bot".into(),
        connection: "app".into(),
        role: "deployer".into(),
        statement: statement.into(),
        rule_id: "policy:ops/classes.review".into(),
        message: Some("DDL needs an approver".into()),
        node_id: "node-a".into(),
        session_id: Some("core0-17".into()),
        min_approvers,
        wait: true,
        expires_in_ms: u64::try_from(expires_in.as_millis()).unwrap(),
    }
}

/// Drives `f` on a monoio runtime, the way a core does.
fn on_core<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn request_wait_approve_consume() {
    let fx = Fixture::start();
    let stmt = "ALTER TABLE accounts ADD COLUMN note text";
    let ticket = on_core(fx.client.request(request(stmt, 1, Duration::from_secs(60)))).unwrap();
    assert_eq!(ticket.status, ReviewStatus::Pending);
    assert!(!ticket.existing);
    let again = on_core(fx.client.request(request(stmt, 1, Duration::from_secs(60)))).unwrap();
    assert_eq!(again.id, ticket.id);
    assert!(again.existing, "de-duplicated");
    assert_eq!(
        on_core(fx.client.consume("ci-bot", "app", stmt)).unwrap(),
        None
    );

    // The approval arrives from another thread 200 ms into the wait.
    let id = ticket.id.clone();
    let (status, latency) = std::thread::scope(|scope| {
        let approve = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            let sent = Instant::now();
            let status = fx.decide(&fx.alice, &id, "approve", json!({"comment": "go"}));
            assert_eq!(status, 200);
            sent
        });
        let status = on_core(fx.client.wait(&id, Duration::from_secs(10)));
        let woke = Instant::now();
        let sent = approve.join().unwrap();
        (status, woke.saturating_duration_since(sent))
    });
    assert_eq!(
        status.unwrap(),
        ReviewStatus::Approved {
            approvers: vec!["alice".into()]
        }
    );
    eprintln!("approve sent -> ReviewClient::wait resolved on the core: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Single use: the first consume uses it up, with the approvers for the audit record.
    let used = on_core(fx.client.consume("ci-bot", "app", stmt))
        .unwrap()
        .unwrap();
    assert_eq!(used.id, ticket.id);
    assert_eq!(
        used.status,
        ReviewStatus::Used {
            approvers: vec!["alice".into()]
        }
    );
    assert!(!used.reusable);
    assert_eq!(
        on_core(fx.client.consume("ci-bot", "app", stmt)).unwrap(),
        None
    );
    // Other identity, connection or text: nothing.
    assert_eq!(
        on_core(fx.client.consume("etl-bot", "app", stmt)).unwrap(),
        None
    );
    assert_eq!(
        on_core(fx.client.consume("ci-bot", "dw", stmt)).unwrap(),
        None
    );
    let got = on_core(fx.client.get(&ticket.id)).unwrap();
    assert_eq!(got.status.as_str(), "used");
}

#[test]
fn the_core_is_never_blocked() {
    let fx = Fixture::start();
    let ticket = on_core(
        fx.client
            .request(request("DROP TABLE t", 1, Duration::from_secs(60))),
    )
    .unwrap();
    // While a 600 ms wait is in flight, a 10 ms timer on the same runtime keeps firing.
    let (status, ticks) = on_core(async {
        let wait = fx.client.wait(&ticket.id, Duration::from_millis(600));
        let mut ticks = 0u32;
        futures::pin_mut!(wait);
        loop {
            let tick = monoio::time::sleep(Duration::from_millis(10));
            futures::pin_mut!(tick);
            match futures::future::select(wait.as_mut(), tick).await {
                futures::future::Either::Left((s, _)) => break (s, ticks),
                futures::future::Either::Right(_) => ticks += 1,
            }
        }
    });
    assert_eq!(status.unwrap(), ReviewStatus::Pending, "timed out pending");
    assert!(
        ticks >= 20,
        "the core ran other work meanwhile: {ticks} ticks"
    );
}

#[test]
fn denial_two_approvers_window_and_errors() {
    let fx = Fixture::start();
    // Denied: the status names who and why.
    let t = on_core(
        fx.client
            .request(request("TRUNCATE audit", 1, Duration::from_secs(60))),
    )
    .unwrap();
    assert_eq!(
        fx.decide(&fx.bob, &t.id, "deny", json!({"comment": "no"})),
        200
    );
    assert_eq!(
        on_core(fx.client.wait(&t.id, Duration::from_secs(5))).unwrap(),
        ReviewStatus::Denied {
            by: "bob".into(),
            comment: Some("no".into())
        }
    );

    // Two approvers, each with a window: usable repeatedly, approvers in order.
    let stmt = "DELETE FROM sessions WHERE expired";
    let t = on_core(fx.client.request(request(stmt, 2, Duration::from_secs(60)))).unwrap();
    assert_eq!(
        fx.decide(&fx.alice, &t.id, "approve", json!({"window_s": 3600})),
        200
    );
    assert_eq!(
        on_core(fx.client.wait(&t.id, Duration::from_millis(200))).unwrap(),
        ReviewStatus::Pending,
        "one of two approvals"
    );
    assert_eq!(
        fx.decide(&fx.bob, &t.id, "approve", json!({"window_s": 60})),
        200
    );
    for _ in 0..2 {
        let used = on_core(fx.client.consume("ci-bot", "app", stmt))
            .unwrap()
            .unwrap();
        assert_eq!(used.status.approvers(), ["alice", "bob"]);
        assert!(used.reusable);
        assert!(matches!(used.status, ReviewStatus::Approved { .. }));
        assert!(used.use_until_ms.is_some());
    }
    // Filed again while approved: the existing approval comes back.
    let again = on_core(fx.client.request(request(stmt, 2, Duration::from_secs(60)))).unwrap();
    assert!(again.existing);
    assert_eq!(again.id, t.id);

    // Expiry ends a wait.
    let t = on_core(
        fx.client
            .request(request("DROP INDEX i", 1, Duration::from_secs(1))),
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        on_core(fx.client.wait(&t.id, Duration::from_secs(10))).unwrap(),
        ReviewStatus::Expired
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Errors: unknown id, bad input, wrong token, control plane away.
    let e = on_core(fx.client.wait("no-such-id", Duration::from_secs(1))).unwrap_err();
    assert!(matches!(e, ReviewError::NotFound(_)), "{e}");
    let e = on_core(
        fx.client
            .request(request("SELECT 1", 0, Duration::from_secs(60))),
    )
    .unwrap_err();
    match &e {
        ReviewError::Status { status, message } => {
            assert_eq!(*status, 400);
            assert!(message.contains("min_approvers"), "{message}");
        }
        e => panic!("{e}"),
    }
    assert!(!e.is_retryable());
    let wrong = ReviewClient::new(fx.cp.base_url(), "not-a-token", "node-a");
    let e = on_core(wrong.consume("ci-bot", "app", stmt)).unwrap_err();
    assert!(matches!(e, ReviewError::Status { status: 401, .. }), "{e}");
    let base = fx.cp.base_url().to_owned();
    drop(fx);
    let settings = ReviewClientSettings {
        backoff_min: Duration::from_millis(20),
        ..ReviewClientSettings::default()
    };
    let gone = ReviewClient::with_settings(&base, "t", "node-a", settings);
    let started = Instant::now();
    let e = on_core(gone.wait("any", Duration::from_millis(300))).unwrap_err();
    assert!(matches!(e, ReviewError::Unavailable(_)), "{e}");
    assert!(e.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "retried until the timeout, then gave up: {:?}",
        started.elapsed()
    );
}
