//! `sluice demo`: a throwaway PostgreSQL with sensitive sample data, and Sluice in front of it
//! as `sluice up` runs it (control plane on a throwaway embedded store, data plane beside it).
//! The demo's connection, roles and policies are applied through the control plane's API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sluice_controlplane::up::UpArgs;
use sluice_dataplane::config::substitute_env;
use sluice_pgcluster::{AuthMethod, ClusterOptions, PgCluster};

use crate::up::Up;

/// The data plane's own settings in the demo (configs/demo.yaml).
pub const DEMO_CONFIG: &str = include_str!("../configs/demo.yaml");
/// The document the demo applies through the API (configs/demo-policy.yaml).
pub const DEMO_POLICY: &str = include_str!("../configs/demo-policy.yaml");
/// Sample schema and data (configs/demo-seed.sql).
pub const DEMO_SEED: &str = include_str!("../configs/demo-seed.sql");

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A directory removed when dropped (the demo's control-plane store and data-plane state).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until Ctrl-C.
pub fn run(listen: SocketAddr, api_listen: SocketAddr, pg_port: Option<u16>) -> anyhow::Result<()> {
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

    let data_dir = TempDir(std::env::temp_dir().join(format!("sluice-demo-{}", random_hex(6))));
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
    let policy = substitute_env(DEMO_POLICY, &env).context("configs/demo-policy.yaml")?;

    let mut args = UpArgs {
        listen: api_listen,
        data_dir: data_dir.0.clone(),
        store: None,
        issuer: None,
        config: None,
    };
    if std::net::TcpListener::bind(api_listen).is_err() {
        args.listen = SocketAddr::new(api_listen.ip(), 0);
    }
    let up = Up::start(&args, DEMO_CONFIG, Path::new("configs"), &env)
        .context("starting sluice up with configs/demo.yaml")?;
    let version = up
        .served
        .apply_yaml(&policy)
        .context("applying configs/demo-policy.yaml through the API")?;
    if !up.wait_for_version(version, Duration::from_secs(10)) {
        anyhow::bail!("the data plane did not take snapshot version {version} within 10 s");
    }
    let addr = up.dataplane.local_addr();
    let api = format!("http://{}", up.served.addr);
    let admin_token = up.served.admin_token.clone().unwrap_or_default();

    println!();
    println!(
        "Sluice is running in front of a throwaway PostgreSQL {} (port {}): control plane at {api}, \
         data plane on {addr}, policy snapshot v{version}.",
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
    println!();
    println!("The control plane's API (changes reach the gateway within milliseconds):");
    println!("  export SLUICE_SERVER={api} SLUICE_TOKEN={admin_token}");
    println!("  sluice get roles");
    println!("  sluice grant --identity ci-bot --connection demo --role jit-writer --ttl 15m");
    println!(
        "  # then: psql \"postgresql://ci-bot:<token>@{}:{}/demo\"",
        addr.ip(),
        addr.port()
    );
    println!("Metrics: curl -s http://127.0.0.1:9187/metrics");
    println!("Ctrl-C stops everything and removes the cluster.");

    let _ = stop_rx.recv();
    eprintln!("stopping ...");
    up.stop();
    drop(cluster);
    drop(data_dir);
    std::process::exit(0);
}
