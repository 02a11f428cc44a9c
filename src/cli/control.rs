//! The control plane's commands: `up` (both planes, in `crate::up`), and the clients of a
//! running control plane's API (`apply`, `get`, `diff`, `rollback`, `grant`, `audit tail`;
//! `review` in its own module).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sluice_client::wire::audit::AuditPage;
use sluice_controlplane::up::{ApiTls, UpArgs};

use super::api::{content_type, urlencode, Api, ClientArgs};
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
        client: ClientArgs,
    },
    /// Show what the control plane holds.
    Get {
        kind: Kind,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What applying FILE would change.
    Diff {
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make an earlier document version current again (as a new version).
    Rollback {
        version: u64,
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
    /// Print the latest records, then follow new ones.
    Tail {
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long)]
        verdict: Option<String>,
        /// How many past records to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `sluice get` shows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Connections,
    IdentityProviders,
    Roles,
    Policies,
    Document,
    Documents,
    Snapshot,
    Grants,
    Nodes,
    ApiAudit,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Connections => "/v1/connections",
            Kind::IdentityProviders => "/v1/identity-providers",
            Kind::Roles => "/v1/roles",
            Kind::Policies => "/v1/policies",
            Kind::Document => "/v1/document",
            Kind::Documents => "/v1/documents",
            Kind::Snapshot => "/v1/snapshot/current",
            Kind::Grants => "/v1/grants",
            Kind::Nodes => "/v1/nodes",
            Kind::ApiAudit => "/v1/api-audit",
        }
    }
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
            client,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let q = if dry_run { "?dry_run=true" } else { "" };
            let out = Api::new(client)?
                .post(&format!("/v1/apply{q}"), Some((content_type(&file), &body)))?;
            println!("{out}");
            Ok(())
        }
        ControlCommand::Diff { file, client } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = Api::new(client)?
                .post("/v1/apply?dry_run=true", Some((content_type(&file), &body)))?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            println!("{}", serde_json::to_string_pretty(&v["diff"])?);
            Ok(())
        }
        ControlCommand::Get { kind, client } => {
            println!("{}", Api::new(client)?.get(kind.path())?);
            Ok(())
        }
        ControlCommand::Rollback { version, client } => {
            println!(
                "{}",
                Api::new(client)?.post(&format!("/v1/rollback/{version}"), None)?
            );
            Ok(())
        }
        ControlCommand::Grant {
            identity,
            connection,
            role,
            ttl,
            client,
        } => {
            let body = serde_json::json!({"identity": identity, "connection": connection, "role": role, "ttl": ttl});
            let out = Api::new(client)?.post_json("/v1/grants", &body)?;
            println!("{out}");
            Ok(())
        }
        ControlCommand::Review { cmd } => super::review::run(cmd),
        ControlCommand::Audit {
            cmd:
                AuditCommand::Tail {
                    identity,
                    connection,
                    verdict,
                    lines,
                    no_follow,
                    client,
                },
        } => {
            let c = Api::new(client)?;
            let mut filters = String::new();
            for (k, v) in [
                ("identity", identity),
                ("connection", connection),
                ("verdict", verdict),
            ] {
                if let Some(v) = v {
                    filters.push_str(&format!("&{k}={}", urlencode(&v)));
                }
            }
            let page: AuditPage = serde_json::from_str(
                &c.get(&format!("/v1/audit?limit={}{filters}", lines.max(1)))?,
            )?;
            let mut last = page.records.first().map_or(0, |r| r.id);
            for r in page.records.iter().rev() {
                println!("{}", serde_json::to_string(r)?);
            }
            if no_follow {
                return Ok(());
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let page: AuditPage = serde_json::from_str(
                    &c.get(&format!("/v1/audit?after={last}&limit=1000{filters}"))?,
                )?;
                for r in &page.records {
                    println!("{}", serde_json::to_string(r)?);
                    last = r.id;
                }
            }
        }
    }
}
