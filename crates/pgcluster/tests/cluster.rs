//! End-to-end tests of the throwaway cluster against the machine's real PostgreSQL binaries.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sluice_pgcluster::{AuthMethod, ClusterOptions, PgCluster};

fn start(opts: ClusterOptions) -> PgCluster {
    let began = Instant::now();
    let pg = PgCluster::start(opts).unwrap_or_else(|e| panic!("starting a cluster: {e:#}"));
    eprintln!(
        "cluster on port {} started in {:?}",
        pg.port(),
        began.elapsed()
    );
    pg
}

#[test]
fn scram_role_survives_stop_and_start_again_and_drop_removes_the_dir() {
    let mut pg = start(ClusterOptions::default());
    pg.create_role("agent", "s3cret'pw").unwrap();
    let select = || {
        pg.psql_as("agent", "s3cret'pw", "postgres", "SELECT 1")
            .unwrap()
    };
    assert_eq!(select().trim(), "1");
    assert!(
        pg.psql_as("agent", "wrong", "postgres", "SELECT 1")
            .is_err(),
        "a wrong password must be refused"
    );
    let stored = pg
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'agent'",
        )
        .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    let port = pg.port();
    let began = Instant::now();
    pg.stop().unwrap();
    eprintln!("stop took {:?}", began.elapsed());
    assert!(!pg.is_running());
    assert!(
        pg.psql("postgres", "SELECT 1").is_err(),
        "stopped server answered"
    );
    pg.stop().unwrap(); // stopping twice is fine

    let began = Instant::now();
    pg.start_again().unwrap();
    eprintln!("start_again took {:?}", began.elapsed());
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql_as("agent", "s3cret'pw", "postgres", "SELECT 1")
            .unwrap()
            .trim(),
        "1"
    );

    let dir = pg.socket_dir().to_path_buf();
    assert!(pg.data_dir().starts_with(&dir));
    assert!(dir.exists());
    let began = Instant::now();
    drop(pg);
    eprintln!("drop took {:?}", began.elapsed());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn two_clusters_run_side_by_side() {
    let a = start(ClusterOptions::default());
    let b = start(ClusterOptions {
        superuser: "admin".into(),
        ..ClusterOptions::default()
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("postgres", "CREATE TABLE only_in_a (x int)")
        .unwrap();
    let count = "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'";
    assert_eq!(a.psql("postgres", count).unwrap().trim(), "1");
    assert_eq!(b.psql("postgres", count).unwrap().trim(), "0");
    assert_eq!(
        b.psql("postgres", "SELECT current_user").unwrap().trim(),
        "admin"
    );
}

#[test]
fn md5_cluster_stores_md5_passwords_and_settings_apply() {
    let opts = ClusterOptions {
        auth: AuthMethod::Md5,
        ..ClusterOptions::default()
    }
    .setting("max_connections", "300")
    .setting("application_name", "it's quoted");
    let pg = start(opts);
    pg.create_role("legacy", "pw").unwrap();
    pg.create_database("legacydb", "legacy").unwrap();
    assert_eq!(
        pg.psql_as("legacy", "pw", "legacydb", "SELECT current_database()")
            .unwrap()
            .trim(),
        "legacydb"
    );
    let stored = pg
        .psql(
            "postgres",
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'legacy'",
        )
        .unwrap();
    assert_eq!(stored.trim(), "md5");
    let hba = pg
        .psql(
            "postgres",
            "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'",
        )
        .unwrap();
    assert_eq!(hba.trim(), "md5");
    assert_eq!(
        pg.psql("postgres", "SHOW max_connections").unwrap().trim(),
        "300"
    );
}

#[test]
fn trust_cluster_needs_no_password() {
    let pg = start(ClusterOptions {
        auth: AuthMethod::Trust,
        ..ClusterOptions::default()
    });
    pg.create_role("anyone", "unused").unwrap();
    assert_eq!(
        pg.psql_as("anyone", "", "postgres", "SELECT 2")
            .unwrap()
            .trim(),
        "2"
    );
}

#[test]
fn ssl_cluster_accepts_tls() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let pg = start(ClusterOptions {
        ssl: Some((crt, key)),
        ..ClusterOptions::default()
    });
    let out = Command::new(pg.tool("psql"))
        .args([
            "-X",
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .arg(format!(
            "{} sslmode=require",
            pg.connection_string("postgres")
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}

#[test]
fn killed_cluster_recovers_and_pgbench_runs() {
    let mut pg = start(ClusterOptions::default());
    pg.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
    )
    .unwrap();
    pg.kill().unwrap();
    pg.start_again().unwrap();
    assert_eq!(
        pg.psql("postgres", "SELECT sum(x) FROM t").unwrap().trim(),
        "3"
    );

    let pgbench = |args: &[&str]| {
        let out = Command::new(pg.tool("pgbench"))
            .args([
                "-h",
                pg.host(),
                "-p",
                &pg.port().to_string(),
                "-U",
                pg.superuser(),
            ])
            .args(args)
            .arg("postgres")
            .env("PGPASSWORD", pg.superuser_password())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pgbench(&["-i", "-q", "-s", "1"]);
    pgbench(&["-S", "-T", "1", "-c", "2"]);
}

#[test]
fn bad_setting_fails_with_the_log_and_cleans_up() {
    let err = PgCluster::start(ClusterOptions::default().setting("shared_buffers", "lots"))
        .expect_err("a cluster with shared_buffers = lots must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("shared_buffers"),
        "error should quote the server log: {text}"
    );
    assert!(PgCluster::start(ClusterOptions::default().setting("bad\nname", "1")).is_err());
}

#[test]
fn demo_seed_loads_and_card_numbers_pass_luhn() {
    let pg = start(ClusterOptions::default());
    pg.create_database("demo", pg.superuser()).unwrap();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo-seed.sql");
    pg.psql_file("demo", &seed).unwrap();
    // Re-runnable: the demo may run it again.
    pg.psql_file("demo", &seed).unwrap();
    let counts = pg
        .psql(
            "demo",
            "SELECT (SELECT count(*) FROM app.customers), (SELECT count(*) FROM app.orders), \
             (SELECT count(*) FROM app.api_keys)",
        )
        .unwrap();
    assert_eq!(counts.trim(), "50|150|60");
    let rows = pg
        .psql(
            "demo",
            "SELECT ssn, phone, card_number, email FROM app.customers",
        )
        .unwrap();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 4, "{line}");
        assert!(is_ssn(f[0]), "ssn {}", f[0]);
        assert!(
            f[1].starts_with("+1-") && f[1].contains("-555-01"),
            "phone {}",
            f[1]
        );
        assert_eq!(f[2].len(), 16, "card {}", f[2]);
        assert!(luhn_ok(f[2]), "card {} fails Luhn", f[2]);
        assert!(f[3].ends_with("@example.com"), "email {}", f[3]);
    }
    // New rows get fresh ids after the seeded ones.
    pg.psql("demo", "INSERT INTO app.orders (customer_id, amount, status, created_at) VALUES (1, 9.99, 'paid', now())")
        .unwrap();
}

fn is_ssn(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([3, 2, 4])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && !["000", "666"].contains(&parts[0])
        && !parts[0].starts_with('9')
}

fn luhn_ok(number: &str) -> bool {
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[test]
fn taken_fixed_port_fails_with_the_log_tail() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = PgCluster::start(ClusterOptions {
        port: Some(port),
        ..ClusterOptions::default()
    })
    .expect_err("the port is taken");
    let text = format!("{err:#}");
    assert!(text.contains("Address already in use"), "{text}");
}
