//! The control plane's commands: `up` (both planes, in `crate::up`), and the clients of a
//! running control plane's API (`apply`, `get`, `diff`, `rollback`, `grant`, `audit tail`;
//! `review` in its own module).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sluice_controlplane::up::{ApiTls, UpArgs};

use super::api::{content_type, Api, ClientArgs};
use super::apply::{print_diff, print_outcome};
use super::audit::TailArgs;
use super::get::{self, Kind};
use super::output::{self, col, print_value, text, Column, OutputArgs};
use super::review::ReviewCommand;

/// Control-plane commands: `up` serves the API (with a data plane beside it); the others are
/// clients of a running control plane.
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Serve the control plane (API, snapshots, grants, audit) on the embedded store, or on
    /// PostgreSQL with --store.
    Up {
        #[command(flatten)]
        args: UpFlags,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Apply a whole document (YAML or JSON) as a new version.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Validate and show the diff only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what the control plane holds.
    Get {
        kind: Kind,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What applying FILE would change.
    Diff {
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make an earlier document version current again (as a new version).
    Rollback {
        version: u64,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue a just-in-time grant token.
    Grant {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        connection: String,
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "15m")]
        ttl: String,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Audit records.
    Audit {
        #[command(subcommand)]
        cmd: AuditCommand,
    },
    /// Statements held for human approval: list, show, approve, deny.
    Review {
        #[command(subcommand)]
        cmd: ReviewCommand,
    },
}

/// `sluice audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the latest records; with -f, follow new ones until Ctrl-C.
    Tail(TailArgs),
}

/// `sluice up` options.
#[derive(Debug, Args)]
pub struct UpFlags {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite store (and, if the environment has none, a generated
    /// master key and bootstrap admin token).
    #[arg(long, default_value = "sluice-data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL URL instead of the embedded store.
    #[arg(long, env = "SLUICE_STORE")]
    pub store: Option<String>,
    /// `iss` of grant tokens (generated once and kept in the store when absent).
    #[arg(long)]
    pub issuer: Option<String>,
    /// The data plane's settings (listen, cores, TLS, limits, metrics, static break-glass
    /// tokens) for the `sluice` binary, which runs the data plane beside the control plane;
    /// its `control_plane` section is filled in. Default: listen on 127.0.0.1:6432.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `sluice up` TLS options. Both or neither; without them the API is plain HTTP.
#[derive(Clone, Debug, Default, Args)]
pub struct TlsFlags {
    /// PEM certificate chain: serve the API over HTTPS only (with --tls-key). It must name
    /// the address clients use; `sluice up`'s own data plane uses 127.0.0.1 when the API
    /// listens on loopback or on all interfaces.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl From<UpFlags> for UpArgs {
    fn from(f: UpFlags) -> UpArgs {
        UpArgs {
            listen: f.listen,
            data_dir: f.data_dir,
            store: f.store,
            issuer: f.issuer,
            config: f.config,
        }
    }
}

impl From<TlsFlags> for ApiTls {
    fn from(f: TlsFlags) -> ApiTls {
        ApiTls {
            tls_cert: f.tls_cert,
            tls_key: f.tls_key,
        }
    }
}

/// Runs a client command (`up` is the caller's: it starts both planes).
pub fn run(cmd: ControlCommand) -> Result<()> {
    match cmd {
        ControlCommand::Up { args, tls } => crate::up::run(args.into(), tls.into()),
        ControlCommand::Apply {
            file,
            dry_run,
            output,
            client,
        } => {
            let q = if dry_run { "?dry_run=true" } else { "" };
            let answer = post_file(client, &format!("/v1/apply{q}"), &file)?;
            print_outcome(&serde_json::from_str(&answer)?, output.output)
        }
        ControlCommand::Diff {
            file,
            output,
            client,
        } => {
            let answer = post_file(client, "/v1/apply?dry_run=true", &file)?;
            let v: serde_json::Value = serde_json::from_str(&answer)?;
            print_diff(&v["diff"], output.output)
        }
        ControlCommand::Get {
            kind,
            output,
            client,
        } => {
            let answer = Api::new(client)?.get(kind.path())?;
            get::print(kind, &serde_json::from_str(&answer)?, output.output)
        }
        ControlCommand::Rollback {
            version,
            output,
            client,
        } => {
            let answer = Api::new(client)?.post(&format!("/v1/rollback/{version}"), None)?;
            print_outcome(&serde_json::from_str(&answer)?, output.output)
        }
        ControlCommand::Grant {
            identity,
            connection,
            role,
            ttl,
            output,
            client,
        } => {
            let body = serde_json::json!({"identity": identity, "connection": connection, "role": role, "ttl": ttl});
            let answer: serde_json::Value =
                serde_json::from_str(&Api::new(client)?.post_json("/v1/grants", &body)?)?;
            print_value(
                &answer,
                std::slice::from_ref(&answer),
                GRANT_ISSUED,
                output.output,
            )
        }
        ControlCommand::Review { cmd } => super::review::run(cmd),
        ControlCommand::Audit {
            cmd: AuditCommand::Tail(args),
        } => super::audit::tail(args),
    }
}

/// An issued grant: the token is shown this once.
const GRANT_ISSUED: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("EXPIRES", |v| output::age(v, "expires_at")),
    col("TOKEN", |v| text(v, "token")),
];

/// `POST path` with the document in `file`.
fn post_file(client: ClientArgs, path: &str, file: &Path) -> Result<String> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Api::new(client)?.post(path, Some((content_type(file), &body)))
}
