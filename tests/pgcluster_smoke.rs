//! Smoke test of the e2e harness: the throwaway clusters every other e2e test builds on.

mod common;

use std::time::Duration;

use common::{pg, psql_cmd, run_err, run_ok, wait_port, PgTarget};

#[test]
fn cluster_with_a_role_restarts_and_is_removed_on_drop() {
    let mut cluster = pg();
    cluster.create_role("smoke", "smoke-pw").unwrap();
    let as_smoke = PgTarget::new(cluster.port(), "smoke", "smoke-pw", "postgres");
    assert_eq!(run_ok(&mut psql_cmd(&as_smoke, "SELECT 1")).trim(), "1");
    let wrong = as_smoke.clone().with_user("smoke", "wrong");
    assert!(run_err(&mut psql_cmd(&wrong, "SELECT 1")).contains("password authentication failed"));

    cluster.stop().unwrap();
    run_err(&mut psql_cmd(&as_smoke, "SELECT 1"));
    cluster.start_again().unwrap();
    wait_port(("127.0.0.1", cluster.port()), Duration::from_secs(5));
    assert_eq!(run_ok(&mut psql_cmd(&as_smoke, "SELECT 1")).trim(), "1");

    let data_dir = cluster.data_dir().to_path_buf();
    assert!(data_dir.exists());
    drop(cluster);
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
}

#[test]
fn second_cluster_runs_concurrently_on_another_port() {
    let a = pg();
    let b = pg();
    assert_ne!(a.port(), b.port());
    let on_a = PgTarget::superuser(&a, "postgres");
    let on_b = PgTarget::superuser(&b, "postgres");
    run_ok(&mut psql_cmd(&on_a, "CREATE TABLE mine (x int)"));
    let port = "SELECT current_setting('port')";
    assert_eq!(
        run_ok(&mut psql_cmd(&on_a, port)).trim(),
        a.port().to_string()
    );
    assert_eq!(
        run_ok(&mut psql_cmd(&on_b, port)).trim(),
        b.port().to_string()
    );
    let has_mine = "SELECT count(*) FROM pg_class WHERE relname = 'mine'";
    assert_eq!(run_ok(&mut psql_cmd(&on_b, has_mine)).trim(), "0");
}
