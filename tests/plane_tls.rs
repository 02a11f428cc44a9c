//! TLS between the planes, end to end against a real PostgreSQL: `sluice up` with
//! `--tls-cert/--tls-key` serves the API over HTTPS only, its own data plane takes snapshots
//! over HTTPS trusting that certificate file, and a policy applied through the HTTPS API is
//! enforced. Plain HTTP to the port gets no answer; a client (the `sluice` CLI, the data
//! plane's agent) with the wrong CA is refused; a data plane with the wrong CA takes no
//! snapshot and keeps serving the one it had persisted.

mod common;

use common::planes::conn_str;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::{
    connect, create_app_database, generate_pki, runtime, sqlstate, APP_PASSWORD,
};
use common::{shared_pg, with_shared_pg};
use sluice::up::Up;
use sluice_client::{agent, Trust};
use sluice_controlplane::up::{ApiTls, UpArgs};
use sluice_dataplane::{Config, Dataplane};

const AGENT_TOKEN: &str = "agent-token-tls-0123456789";

fn dataplane_yaml() -> String {
    format!(
        "listen: 127.0.0.1:0\ncores: 1\nauth:\n  static_tokens:\n    - {{ token: {AGENT_TOKEN}, subject: agent-1, groups: [analysts] }}\n"
    )
}

/// Connection `conn` to `db`, role `analyst` (the agent) with policy `reader` denying `deny`.
fn document(conn: &str, db: &str, deny: &[&str]) -> String {
    let pg = shared_pg();
    let deny = deny.join(", ");
    format!(
        "connections:\n  - name: {conn}\n    port: {pg}\n    database: {db}\n    users: [ {{ name: app, user: app, password: {APP_PASSWORD} }} ]\nroles:\n  - name: analyst\n    groups: [analysts]\n    connections: {{ {conn}: app }}\n    policy: reader\npolicies:\n  - name: reader\n    classes: {{ allow: [read, transaction, session] }}\n    tables: {{ deny: [{deny}] }}\n"
    )
}

fn wait_version(dp: &Dataplane, v: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dp.shared().snapshot_version() < v {
        assert!(Instant::now() < deadline, "version {v} not in force");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `SELECT count(*) FROM table` through `dp`: `Ok(count)` or the SQLSTATE of the refusal.
fn count(
    rt: &tokio::runtime::Runtime,
    dp: &Dataplane,
    conn: &str,
    table: &str,
) -> Result<i64, String> {
    rt.block_on(async {
        let c = connect(&conn_str(dp, AGENT_TOKEN, conn)).await;
        c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map(|r| r.get(0))
            .map_err(|e| sqlstate(&e))
    })
}

/// `sluice get roles` through the binary against `server`, trusting `ca`.
fn cli_get_roles(server: &str, ca: &Path, token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["get", "roles", "--server", server, "--ca"])
        .arg(ca)
        .args(["--token", token])
        .env_remove("SLUICE_CA")
        .output()
        .expect("running sluice")
}

#[test]
fn planes_talk_https_and_a_wrong_ca_is_refused_by_clients_and_data_planes() {
    let t0 = Instant::now();
    let conn = "tls_app";
    let db = "sluice_tls";
    with_shared_pg(|c| {
        create_app_database(c, db);
        c.psql_as(
            common::gateway::APP_USER,
            APP_PASSWORD,
            db,
            "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2);
             CREATE TABLE secrets (id int); INSERT INTO secrets VALUES (1);",
        )
        .expect("seeding");
    });
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_pki(dir.path(), "sluice-plane-ca");
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let other = generate_pki(&dir.path().join("other"), "not-the-plane-ca");
    // The API's certificate file is the full chain, so the in-process data plane, which
    // trusts the certificates in it, finds the CA there.
    let chain = dir.path().join("api-chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(&pki.cert).unwrap() + &std::fs::read_to_string(&pki.ca).unwrap(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = UpArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        store: None,
        issuer: None,
        config: None,
    };
    let tls = ApiTls {
        tls_cert: Some(chain.clone()),
        tls_key: Some(pki.key.clone()),
    };
    let up = Up::start_with_tls(&args, &tls, &dataplane_yaml(), Path::new("."), &|_| None)
        .expect("sluice up with TLS");
    let url = up.served.url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let rt = runtime();

    // ---- a policy applied through the HTTPS API reaches the data plane over HTTPS ----
    let v1 = up
        .served
        .apply_yaml(&document(conn, db, &["secrets"]))
        .expect("apply over https");
    wait_version(&up.dataplane, v1);
    assert_eq!(count(&rt, &up.dataplane, conn, "items"), Ok(2));
    assert_eq!(
        count(&rt, &up.dataplane, conn, "secrets"),
        Err("42501".into())
    );

    // ---- plain HTTP to the HTTPS port: no HTTP answer, the connection just ends ----
    let mut s = std::net::TcpStream::connect(up.served.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let plain = format!("http://{}/healthz", up.served.addr);
    assert!(agent(&Trust::webpki(), Duration::from_secs(5))
        .get(&plain)
        .call()
        .is_err());

    // ---- clients: the right CA is answered, the wrong one (or none) refused ----
    let healthz = format!("{url}/healthz");
    let right = Trust::from_ca_file(&pki.ca).unwrap();
    let resp = agent(&right, Duration::from_secs(5)).get(&healthz).call();
    assert_eq!(resp.expect("https with the right CA").status(), 200);
    for trust in [Trust::from_ca_file(&other.ca).unwrap(), Trust::webpki()] {
        let e = agent(&trust, Duration::from_secs(5))
            .get(&healthz)
            .call()
            .expect_err("a certificate from another CA");
        assert!(
            e.to_string().contains("certificate") || e.to_string().contains("Unknown"),
            "{e}"
        );
    }
    let admin = up
        .served
        .admin_token
        .clone()
        .expect("the generated admin token");
    let ok = cli_get_roles(&url, &pki.ca, &admin);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("analyst"));
    let refused = cli_get_roles(&url, &other.ca, &admin);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("Unknown"),
        "{stderr}"
    );

    // ---- a data plane with the wrong CA takes no snapshot: it serves the one it persisted ----
    let state = dir.path().join("wrong-ca-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(
        data.join("dataplane").join("snapshot.json"),
        state.join("snapshot.json"),
    )
    .unwrap();
    let node_token = std::fs::read_to_string(data.join("node.token")).unwrap();
    let yaml = format!(
        "{}control_plane:\n  url: {url}\n  node_token: {}\n  node_id: wrong-ca\n  state_dir: {}\n  ca: {}\n",
        dataplane_yaml(),
        node_token.trim(),
        state.display(),
        other.ca.display()
    );
    let config = Config::from_yaml(&yaml, Path::new("."), &|_| None).unwrap();
    assert!(config.control_plane_trust.has_ca());
    let wrong = Dataplane::start(config).expect("starting the wrong-CA data plane");
    assert_eq!(
        wrong.shared().snapshot_version(),
        v1,
        "the persisted snapshot"
    );

    let v2 = up
        .served
        .apply_yaml(&document(conn, db, &["secrets", "items"]))
        .unwrap();
    wait_version(&up.dataplane, v2);
    assert_eq!(
        count(&rt, &up.dataplane, conn, "items"),
        Err("42501".into())
    );
    // Its long-poll would have had v2 within milliseconds; give it far more.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        wrong.shared().snapshot_version(),
        v1,
        "took a snapshot with the wrong CA"
    );
    assert_eq!(count(&rt, &wrong, conn, "items"), Ok(2));
    assert_eq!(count(&rt, &wrong, conn, "secrets"), Err("42501".into()));

    wrong.stop_snapshot_client();
    up.stop();
    println!("plane TLS end to end: {:.1} s", t0.elapsed().as_secs_f64());
}
