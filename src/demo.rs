//! `sluice demo`: a throwaway PostgreSQL with sensitive sample data, and the gateway in front.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use sluice_dataplane::{Config, Dataplane};
use sluice_pgcluster::{AuthMethod, ClusterOptions, PgCluster};

/// The configuration the demo runs (also in the repository as configs/demo.yaml).
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.yaml");
/// Sample schema and data (configs/demo-seed.sql).
pub const DEMO_SEED: &str = include_str!("../configs/demo-seed.sql");

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Runs the demo until Ctrl-C.
pub fn run(listen: SocketAddr, pg_port: Option<u16>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = PgCluster::start(ClusterOptions {
        port: pg_port,
        auth: AuthMethod::ScramSha256,
        ..ClusterOptions::default()
    })?;
    let app_password = random_hex(16);
    cluster.create_role("app", &app_password)?;
    cluster.create_database("demo", "app")?;
    cluster
        .psql_as("app", &app_password, "demo", DEMO_SEED)
        .context("loading the demo data")?;

    let token = format!("demo-{}", random_hex(16));
    let port = cluster.port().to_string();
    let listen_s = listen.to_string();
    let env = |k: &str| match k {
        "SLUICE_LISTEN" => Some(listen_s.clone()),
        "SLUICE_DEMO_TOKEN" => Some(token.clone()),
        "SLUICE_DEMO_PG_PORT" => Some(port.clone()),
        "SLUICE_DEMO_PG_PASSWORD" => Some(app_password.clone()),
        _ => None,
    };
    let config =
        Config::from_yaml(DEMO_CONFIG, Path::new("configs"), &env).context("configs/demo.yaml")?;
    let dp = Dataplane::start(config)?;
    let addr = dp.local_addr();

    println!();
    println!(
        "Sluice is running in front of a throwaway PostgreSQL {} (port {}).",
        cluster.binaries().version,
        cluster.port()
    );
    println!("The agent's token goes where a password would; the database password stays with the gateway.");
    println!();
    println!(
        "  psql \"postgresql://agent:{token}@{}:{}/demo\"",
        addr.ip(),
        addr.port()
    );
    println!();
    println!("Try: SELECT full_name, email, ssn FROM app.customers LIMIT 5;");
    println!("     DELETE FROM app.orders;           -- denied by the analyst policy (42501)");
    println!("     SELECT * FROM app.api_keys;       -- denied: that table is off limits");
    println!("Metrics: curl -s http://127.0.0.1:9187/metrics");
    println!("Ctrl-C stops the gateway and removes the cluster.");

    let _ = stop_rx.recv();
    eprintln!("stopping ...");
    drop(cluster);
    std::process::exit(0);
}
