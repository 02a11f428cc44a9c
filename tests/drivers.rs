//! Drivers other than libpq and tokio-postgres through the gateway, in transaction pooling:
//! psycopg 3 (Python) and pgjdbc (Java), each with server-side prepared statements that land on
//! shared server connections, COPY and pipelined batches.
//!
//! The drivers are not Rust crates: `.ci/run` installs them (`pip install psycopg[binary]`,
//! `apt-get install libpostgresql-jdbc-java`). On a machine without them these tests say so on
//! stderr and pass without checking, unless SLUICE_REQUIRE_DRIVERS=1 (set by CI), which
//! makes a missing driver a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::gateway::{create_app_database, start_gateway, GatewayOptions, AGENT_TOKEN};
use common::{run_ok, shared_pg, with_shared_pg};

fn drivers_required() -> bool {
    std::env::var("SLUICE_REQUIRE_DRIVERS").is_ok_and(|v| v == "1")
}

fn missing(what: &str) {
    assert!(
        !drivers_required(),
        "{what} is not installed and SLUICE_REQUIRE_DRIVERS=1"
    );
    eprintln!("SKIPPED: {what} is not installed (see .ci/run for how CI installs it)");
}

fn gateway(db: &str) -> common::gateway::Gateway {
    with_shared_pg(|c| create_app_database(c, db));
    start_gateway(
        shared_pg(),
        GatewayOptions {
            database: db.into(),
            size: 2,
            ..GatewayOptions::default()
        },
    )
}

#[test]
fn psycopg_prepared_statements_and_copy() {
    let has_psycopg = Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_psycopg {
        return missing("python3 with psycopg");
    }
    let gw = gateway("psycopg_db");
    let url = format!(
        "postgresql://agent:{AGENT_TOKEN}@127.0.0.1:{}/appdb",
        gw.port()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/psycopg_check.py");
    let out = run_ok(Command::new("python3").arg(script).arg(url));
    // 40+2 and the text; sum of 2*i for i < 20; COPY count and sum; COPY OUT rows.
    assert_eq!(
        out.trim(),
        "[(42, 'forty-two'), 380, (1000, 499500), ['0', '1', '2']]"
    );
}

#[test]
fn jdbc_prepared_statements_and_batches() {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    let has_java = Command::new("javac")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !jar.exists() || !has_java {
        return missing("a JDK with pgjdbc (/usr/share/java/postgresql.jar)");
    }
    let gw = gateway("jdbc_db");
    let build = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/JdbcCheck.java");
    run_ok(Command::new("javac").arg("-d").arg(build.path()).arg(src));
    let classpath = format!("{}:{}", jar.display(), build.path().display());
    let out = run_ok(
        Command::new("java")
            .args(["-cp", &classpath, "JdbcCheck"])
            .arg(format!("jdbc:postgresql://127.0.0.1:{}/appdb", gw.port()))
            .arg(AGENT_TOKEN),
    );
    // 3 * (1 + … + 10), then the batch's count and sum.
    assert_eq!(out.trim(), "165 100 4950");
}
