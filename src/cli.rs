//! Command-line interface: the `sluice` command's arguments and its subcommands.

mod api;
mod apply;
mod audit;
mod control;
mod get;
mod output;
mod review;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use sluice_dataplane::{Config, Dataplane};

use crate::signals::{Signal, Signals};

/// Sluice: an identity-aware PostgreSQL gateway for AI agents and automation.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `sluice_dataplane=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data plane from a local configuration file (with a `control_plane` section,
    /// it takes connections, roles and policies from the control plane's snapshots).
    Dataplane {
        /// YAML configuration (see configs/example.yaml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// YAML configuration.
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with sample data, and Sluice (control plane and data
    /// plane, as `sluice up`) in front of it.
    Demo {
        /// Address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// Address of the control plane's API (a free port if this one is taken).
        #[arg(long, default_value = "127.0.0.1:7070")]
        api_listen: SocketAddr,
        /// Port for the throwaway PostgreSQL (default: a free one).
        #[arg(long)]
        pg_port: Option<u16>,
    },
    /// Control-plane commands: `up` runs the control plane and a data plane; the others are
    /// clients of its API.
    #[command(flatten)]
    Control(control::ControlCommand),
    /// Print a shell completion script: `source <(sluice completion bash)`, or write it where
    /// the shell looks (zsh: a `_sluice` file on `$fpath`; fish:
    /// `~/.config/fish/completions/sluice.fish`).
    Completion { shell: clap_complete::Shell },
}

/// Parses arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Dataplane { config } => run_dataplane(&config),
        Command::CheckConfig { config } => Config::from_file(&config)
            .map(|c| {
                println!(
                    "{}: ok ({} connections, {} roles)",
                    config.display(),
                    c.connections.len(),
                    c.roles.len()
                )
            })
            .map_err(Into::into),
        Command::Demo {
            listen,
            api_listen,
            pg_port,
        } => crate::demo::run(listen, api_listen, pg_port),
        Command::Control(cmd) => control::run(cmd),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the causes joined by `: `, never a debug dump.
            eprintln!("sluice: {}", output::one_line(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// How long a stopping data plane waits for the control plane to take its audit records
/// before it spools them.
pub const AUDIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `sluice dataplane`: runs until SIGTERM or SIGINT, then drains; SIGHUP reloads the file.
fn run_dataplane(path: &std::path::Path) -> anyhow::Result<()> {
    let signals = Signals::block().context("blocking signals")?;
    let config = Config::from_file(path)?;
    let drain_timeout = config.limits.drain_timeout;
    let dp = Dataplane::start(config).context("starting the data plane")?;
    while signals.wait() == Signal::Reload {
        match dp.reload_file(path) {
            Ok(version) => {
                tracing::info!(version, path = %path.display(), "configuration reloaded")
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration not reloaded; the version in force stays")
            }
        }
    }
    dp.shutdown(drain_timeout, AUDIT_GRACE);
    Ok(())
}
