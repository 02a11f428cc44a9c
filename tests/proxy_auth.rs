//! Who gets in, and how the gateway itself logs in: client tokens (static, HS256 JWT, and every
//! way of getting one wrong), roles and connections, client TLS with a generated certificate,
//! and backend SCRAM, MD5 and TLS.

mod common;

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use common::gateway::prepare_backend;
use common::gateway::{
    agent_claims, agent_jwt, connect, generate_pki, jwt, now_secs, runtime, sqlstate,
    start_gateway, try_connect, ClientTls, GatewayOptions, AGENT_TOKEN, APP_PASSWORD, APP_USER,
    AUDITOR_TOKEN, CONN, JWT_SECRET, OUTSIDER_TOKEN,
};
use common::{
    psql_cmd, run_err, run_ok, shared_options, shared_pg, start_pg, with_shared_pg, AuthMethod,
    PgTarget,
};

/// Everything the gateways of this binary log, for checking that no secret is ever in it.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init()
            .expect("installing the log capture");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// The whole error as a client could see it: Display and Debug (message, detail, hint...).
fn everything_about(e: &tokio_postgres::Error) -> String {
    format!("{e} {e:?}")
}

#[test]
fn static_token_and_jwt_log_in_as_the_gateway_held_user() {
    capture_logs();
    let gw = start_gateway(shared_pg(), GatewayOptions::default());
    let q = "SELECT current_user, current_database(), 1 + 1";
    for token in [AGENT_TOKEN.to_string(), agent_jwt()] {
        let out = run_ok(&mut psql_cmd(&gw.target(&token), q));
        assert_eq!(out.trim(), format!("{APP_USER}|app|2"));
    }
    // `aud` as an array, and groups as a single string, work too.
    let mut claims = agent_claims();
    claims["aud"] = serde_json::json!(["other", "sluice"]);
    claims["groups"] = serde_json::json!("analysts");
    let out = run_ok(&mut psql_cmd(&gw.target(&jwt(&claims, JWT_SECRET)), q));
    assert_eq!(out.trim(), format!("{APP_USER}|app|2"));

    // The agent's token is no database password.
    let direct = PgTarget::new(shared_pg(), APP_USER, AGENT_TOKEN, "app");
    let err = run_err(&mut psql_cmd(&direct, "SELECT 1"));
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn rejected_tokens_get_28p01_and_are_never_echoed_or_logged() {
    capture_logs();
    let gw = start_gateway(shared_pg(), GatewayOptions::default());
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut claims = agent_claims();
    claims["exp"] = serde_json::json!(now_secs() - 3600);
    cases.push(("expired", jwt(&claims, JWT_SECRET)));
    cases.push((
        "forged",
        jwt(&agent_claims(), "another-secret-another-secret-12"),
    ));
    let mut claims = agent_claims();
    claims["aud"] = serde_json::json!("somebody-else");
    cases.push(("wrong audience", jwt(&claims, JWT_SECRET)));
    let mut claims = agent_claims();
    claims["iss"] = serde_json::json!("rogue-issuer");
    cases.push(("unknown issuer", jwt(&claims, JWT_SECRET)));
    let mut claims = agent_claims();
    claims["nbf"] = serde_json::json!(now_secs() + 3600);
    cases.push(("not yet valid", jwt(&claims, JWT_SECRET)));
    let mut claims = agent_claims();
    claims.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", jwt(&claims, JWT_SECRET)));
    let valid = agent_jwt();
    let (head, _) = valid.rsplit_once('.').unwrap();
    cases.push((
        "tampered signature",
        format!("{head}.c2lnbmF0dXJlLWZvcmdlZA"),
    ));
    cases.push(("wrong static token", format!("{AGENT_TOKEN}-x")));
    cases.push(("garbage", "not a token at all 🙂".to_string()));

    runtime().block_on(async {
        for (what, token) in &cases {
            let err = try_connect(&gw.conn_str(token))
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: the token was accepted"));
            assert_eq!(sqlstate(&err), "28P01", "{what}: {err:?}");
            let db = err.as_db_error().expect("a server error");
            assert_eq!(db.severity(), "FATAL", "{what}");
            assert!(
                db.message().starts_with("token authentication failed"),
                "{what}: {}",
                db.message()
            );
            let seen = everything_about(&err);
            assert!(
                !seen.contains(token.as_str()),
                "{what}: token echoed: {seen}"
            );
            // Not even the signature or payload part of a JWT.
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!seen.contains(part), "{what}: token part echoed: {seen}");
            }
        }
    });
    let err = run_err(&mut psql_cmd(&gw.target(&cases[0].1), "SELECT 1"));
    assert!(err.contains("token authentication failed"), "{err}");
    assert!(!err.contains(&cases[0].1), "{err}");

    let log = logs();
    assert!(log.contains("client token rejected"), "no log line:\n{log}");
    for (what, token) in &cases {
        assert!(!log.contains(token.as_str()), "{what}: token in the log");
    }
    assert!(!log.contains(APP_PASSWORD), "backend password in the log");
}

#[test]
fn roles_and_connections_decide_access() {
    capture_logs();
    let gw = start_gateway(shared_pg(), GatewayOptions::default());
    runtime().block_on(async {
        // A valid identity that no role covers, static or JWT.
        let mut claims = agent_claims();
        claims["groups"] = serde_json::json!(["visitors"]);
        for token in [OUTSIDER_TOKEN.to_string(), jwt(&claims, JWT_SECRET)] {
            let err = try_connect(&gw.conn_str(&token)).await.unwrap_err();
            assert_eq!(sqlstate(&err), "28000", "{err:?}");
            assert!(!everything_about(&err).contains(&token));
        }

        // A role without this connection, but with another one.
        let err = try_connect(&gw.conn_str(AUDITOR_TOKEN)).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{err:?}");
        let msg = err.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains("auditor") && msg.contains(CONN), "{msg}");
        let mut other = gw.target(AUDITOR_TOKEN);
        other.db = "otherdb".into();
        let auditor = connect(&other.conn_str()).await;
        let row = auditor
            .query_one("SELECT current_user::text, 40 + 2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), APP_USER);
        assert_eq!(row.get::<_, i32>(1), 42);

        // A connection that does not exist.
        let mut nowhere = gw.target(AGENT_TOKEN);
        nowhere.db = "no_such_connection".into();
        let err = try_connect(&nowhere.conn_str()).await.unwrap_err();
        assert_eq!(sqlstate(&err), "3D000", "{err:?}");
    });
}

#[test]
fn client_tls_with_a_generated_certificate() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_pki(dir.path(), "Sluice client-side test CA");
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = generate_pki(other_dir.path(), "Some other CA").ca;
    let gw = start_gateway(
        shared_pg(),
        GatewayOptions {
            client_tls: Some(ClientTls {
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            }),
            ..GatewayOptions::default()
        },
    );

    // verify-full: the chain and the 127.0.0.1 name check out, and the session is encrypted.
    let agent = gw.target(AGENT_TOKEN).with_sslmode("verify-full");
    let mut cmd = psql_cmd(&agent, "\\conninfo");
    cmd.env("PGSSLROOTCERT", &pki.ca)
        .args(["-c", "SELECT current_user, 6 * 7"]);
    let out = run_ok(&mut cmd);
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    assert!(out.trim_end().ends_with(&format!("{APP_USER}|42")), "{out}");

    // A client that trusts another CA refuses the gateway.
    let mut cmd = psql_cmd(&agent, "SELECT 1");
    cmd.env("PGSSLROOTCERT", &other_ca);
    let err = run_err(&mut cmd);
    assert!(err.contains("certificate verify failed"), "{err}");

    // Loopback clients may still connect without TLS.
    let plain = gw.target(AGENT_TOKEN).with_sslmode("disable");
    let mut cmd = psql_cmd(&plain, "\\conninfo");
    cmd.args(["-c", "SELECT 7"]);
    let out = run_ok(&mut cmd);
    assert!(!out.contains("SSL connection"), "{out}");
    assert!(out.trim_end().ends_with('7'), "{out}");
}

/// Lines of the server log about the gateway's logins as `app`.
fn authenticated_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("connection authenticated: identity=\"app\""))
        .collect()
}

#[test]
fn gateway_logs_in_to_the_backend_with_scram() {
    capture_logs();
    let gw = start_gateway(shared_pg(), GatewayOptions::default());
    let out = run_ok(&mut psql_cmd(&gw.target(AGENT_TOKEN), "SELECT 'via scram'"));
    assert_eq!(out.trim(), "via scram");
    let log = with_shared_pg(|c| std::fs::read_to_string(c.log_file()).unwrap());
    let lines = authenticated_lines(&log);
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains("method=scram-sha-256")),
        "{lines:#?}"
    );

    // With a wrong backend password the client gets a clear error that reveals nothing.
    let wrong = "wrong-backend-password-1234";
    let bad = start_gateway(
        shared_pg(),
        GatewayOptions {
            backend_password: wrong.into(),
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let err = try_connect(&bad.conn_str(AGENT_TOKEN)).await.unwrap_err();
        assert_eq!(sqlstate(&err), "08006", "{err:?}");
        let seen = everything_about(&err);
        assert!(
            !seen.contains(wrong) && !seen.contains(APP_PASSWORD),
            "{seen}"
        );
    });
    assert!(
        !logs().contains(wrong),
        "backend password in the gateway log"
    );
}

#[test]
fn gateway_logs_in_with_md5_and_over_backend_tls() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_pki(dir.path(), "Sluice backend test CA");
    let mut opts = shared_options();
    opts.auth = AuthMethod::Md5;
    opts.ssl = Some((pki.cert.clone(), pki.key.clone()));
    let cluster = start_pg(opts);
    prepare_backend(&cluster);
    let ssl_q = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let cases = [
        (None, None, "f"),
        (Some("require"), None, "t"),
        (Some("verify-full"), Some(pki.ca.clone()), "t"),
    ];
    for (tls, ca, expect) in cases {
        let gw = start_gateway(
            cluster.port(),
            GatewayOptions {
                backend_tls: tls,
                backend_ca: ca,
                ..GatewayOptions::default()
            },
        );
        let mut cmd = psql_cmd(&gw.target(AGENT_TOKEN), ssl_q);
        cmd.args(["-c", "SELECT current_user"]);
        let out = run_ok(&mut cmd);
        assert_eq!(
            out.trim(),
            format!("{expect}\n{APP_USER}"),
            "backend tls {tls:?}"
        );
    }
    let log = std::fs::read_to_string(cluster.log_file()).unwrap();
    let lines = authenticated_lines(&log);
    assert!(
        lines.len() >= 3 && lines.iter().all(|l| l.contains("method=md5")),
        "{lines:#?}"
    );

    // verify-full against a CA that did not sign the server's certificate fails closed.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = generate_pki(other_dir.path(), "Some other CA").ca;
    let gw = start_gateway(
        cluster.port(),
        GatewayOptions {
            backend_tls: Some("verify-full"),
            backend_ca: Some(other_ca),
            ..GatewayOptions::default()
        },
    );
    runtime().block_on(async {
        let err = try_connect(&gw.conn_str(AGENT_TOKEN)).await.unwrap_err();
        assert!(sqlstate(&err).starts_with("08"), "{err:?}");
    });
}
