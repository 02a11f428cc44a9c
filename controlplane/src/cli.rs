//! The control plane's commands, for the `sluice` binary to embed: `up` serves the API; the
//! others are HTTP clients of a running control plane (`--server`, `--token`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::crypto::{MasterKey, MASTER_KEY_ENV};
use crate::service::{ControlPlane, Settings};
use crate::store::{redact_url, Backend, Store};

/// Control-plane commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the control plane (API, snapshots, grants, audit) on the embedded store, or on
    /// PostgreSQL with --store.
    Up {
        #[command(flatten)]
        args: UpArgs,
        #[command(flatten)]
        tls: ApiTls,
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

/// `sluice review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Reviews, newest first (pending ones by default).
    List {
        /// pending, approved, denied, expired, used, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One review in full: statement, rule, decisions.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve as the token's name (never one's own request). Single-use unless --window.
    Approve {
        id: String,
        /// Let the approval be used repeatedly for this long (e.g. 30m, 1h).
        #[arg(long)]
        window: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny; the statement does not run.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
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
pub struct UpArgs {
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

/// `sluice up` TLS options (apart from [`UpArgs`], whose callers build it field by field).
/// Both or neither; without them the API is plain HTTP.
#[derive(Clone, Debug, Default, Args)]
pub struct ApiTls {
    /// PEM certificate chain: serve the API over HTTPS only (with --tls-key). It must name
    /// the address clients use; `sluice up`'s own data plane uses 127.0.0.1 when the API
    /// listens on loopback or on all interfaces.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// How the client commands reach the control plane.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// API token (else SLUICE_ADMIN_TOKEN, else ./sluice-data/admin.token).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA bundle an `https://` server's certificate must chain to (default: the webpki
    /// roots).
    #[arg(long, env = "SLUICE_CA")]
    pub ca: Option<PathBuf>,
}

/// Runs a command.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Up { args, tls } => up(args, tls),
        Command::Apply {
            file,
            dry_run,
            client,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let q = if dry_run { "?dry_run=true" } else { "" };
            let out = Client::new(client)?.send(
                "POST",
                &format!("/v1/apply{q}"),
                Some((content_type(&file), body)),
            )?;
            println!("{out}");
            Ok(())
        }
        Command::Diff { file, client } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = Client::new(client)?.send(
                "POST",
                "/v1/apply?dry_run=true",
                Some((content_type(&file), body)),
            )?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            println!("{}", serde_json::to_string_pretty(&v["diff"])?);
            Ok(())
        }
        Command::Get { kind, client } => {
            println!("{}", Client::new(client)?.send("GET", kind.path(), None)?);
            Ok(())
        }
        Command::Rollback { version, client } => {
            println!(
                "{}",
                Client::new(client)?.send("POST", &format!("/v1/rollback/{version}"), None)?
            );
            Ok(())
        }
        Command::Grant {
            identity,
            connection,
            role,
            ttl,
            client,
        } => {
            let body = serde_json::json!({"identity": identity, "connection": connection, "role": role, "ttl": ttl});
            let out = Client::new(client)?.send(
                "POST",
                "/v1/grants",
                Some(("application/json", body.to_string().into_bytes())),
            )?;
            println!("{out}");
            Ok(())
        }
        Command::Review { cmd } => review(cmd),
        Command::Audit {
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
            let c = Client::new(client)?;
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
            let page: crate::audit::AuditPage = serde_json::from_str(&c.send(
                "GET",
                &format!("/v1/audit?limit={}{filters}", lines.max(1)),
                None,
            )?)?;
            let mut last = page.records.first().map_or(0, |r| r.id);
            for r in page.records.iter().rev() {
                println!("{}", serde_json::to_string(r)?);
            }
            if no_follow {
                return Ok(());
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let page: crate::audit::AuditPage = serde_json::from_str(&c.send(
                    "GET",
                    &format!("/v1/audit?after={last}&limit=1000{filters}"),
                    None,
                )?)?;
                for r in &page.records {
                    println!("{}", serde_json::to_string(r)?);
                    last = r.id;
                }
            }
        }
    }
}

fn review(cmd: ReviewCommand) -> Result<()> {
    use crate::reviews::{Review, ReviewStatus};
    let decide = |client: ClientArgs, id: &str, verb: &str, body: serde_json::Value| {
        let out = Client::new(client)?.send(
            "POST",
            &format!("/v1/reviews/{}/{verb}", urlencode(id)),
            Some(("application/json", body.to_string().into_bytes())),
        )?;
        let r: Review = serde_json::from_str(&out)?;
        match r.status {
            ReviewStatus::Pending => println!(
                "review {}: pending, {} of {} approvals ({})",
                r.id,
                r.approvers.len(),
                r.min_approvers,
                r.approvers.join(", ")
            ),
            ReviewStatus::Approved => println!(
                "review {}: approved by {}, {}",
                r.id,
                r.approvers.join(", "),
                if r.reusable {
                    "usable repeatedly until its window ends"
                } else {
                    "usable once"
                }
            ),
            s => println!("review {}: {s}", r.id),
        }
        Ok(())
    };
    match cmd {
        ReviewCommand::List {
            status,
            json,
            client,
        } => {
            let q = match status.as_str() {
                "all" => String::new(),
                s if ReviewStatus::parse(s).is_some() => format!("?status={s}"),
                s => bail!(
                    "--status must be pending, approved, denied, expired, used or all, not `{s}`"
                ),
            };
            let out = Client::new(client)?.send("GET", &format!("/v1/reviews{q}"), None)?;
            if json {
                println!("{out}");
                return Ok(());
            }
            let reviews: Vec<Review> = serde_json::from_str(&out)?;
            println!(
                "{:<36}  {:<8}  {:<16}  {:<12}  {:<9}  STATEMENT",
                "ID", "STATUS", "IDENTITY", "CONNECTION", "APPROVALS"
            );
            for r in reviews {
                let mut stmt: String = r.statement.split_whitespace().collect::<Vec<_>>().join(" ");
                if stmt.chars().count() > 60 {
                    stmt = stmt.chars().take(59).chain(['…']).collect();
                }
                println!(
                    "{:<36}  {:<8}  {:<16}  {:<12}  {:<9}  {stmt}",
                    r.id,
                    r.status.as_str(),
                    r.identity,
                    r.connection,
                    format!("{}/{}", r.approvers.len(), r.min_approvers)
                );
            }
            Ok(())
        }
        ReviewCommand::Show { id, client } => {
            let out = Client::new(client)?.send(
                "GET",
                &format!("/v1/reviews/{}", urlencode(&id)),
                None,
            )?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        ReviewCommand::Approve {
            id,
            window,
            comment,
            client,
        } => {
            let window_s = window
                .map(|w| crate::document::parse_duration(&w).map(|d| d.as_secs()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            decide(
                client,
                &id,
                "approve",
                serde_json::json!({"comment": comment, "window_s": window_s}),
            )
        }
        ReviewCommand::Deny {
            id,
            comment,
            client,
        } => decide(client, &id, "deny", serde_json::json!({"comment": comment})),
    }
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/yaml",
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A blocking HTTP client of the API.
struct Client {
    agent: ureq::Agent,
    server: String,
    token: String,
}

impl Client {
    fn new(args: ClientArgs) -> Result<Client> {
        let token = match args.token.or_else(|| std::env::var("SLUICE_ADMIN_TOKEN").ok()) {
            Some(t) => t,
            None => std::fs::read_to_string("sluice-data/admin.token")
                .map(|t| t.trim().to_owned())
                .context("no API token: pass --token, set SLUICE_TOKEN, or run next to `sluice up`'s sluice-data/")?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(client_tls(args.ca.as_deref())?)
            .build()
            .into();
        Ok(Client {
            agent,
            server: args.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the server's message.
    fn send(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<String> {
        let url = format!("{}{path}", self.server);
        let auth = format!("Bearer {}", self.token);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some((ct, b))) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", ct)
                .send(&b[..]),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(|v| serde_json::to_string_pretty(&v["error"]).unwrap_or_default())
                .unwrap_or(text);
            bail!("{method} {path}: {status}\n{msg}");
        }
        Ok(text)
    }
}

/// rustls (ring) trusting the CA bundle at `ca`, else the webpki roots.
fn client_tls(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
    let roots = match ca {
        None => RootCerts::WebPki,
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let PemItem::Certificate(c) =
                    item.with_context(|| format!("{}: not PEM", path.display()))?
                {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                bail!("{}: no certificate in it", path.display());
            }
            RootCerts::Specific(Arc::new(certs))
        }
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .build())
}

/// Reads `name` from the data dir, or writes `make()` there (mode 0600) on first start.
fn data_dir_secret(dir: &Path, name: &str, make: impl FnOnce() -> String) -> Result<String> {
    let path = dir.join(name);
    if let Ok(v) = std::fs::read_to_string(&path) {
        return Ok(v.trim().to_owned());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let v = make();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write as _;
    opts.open(&path)
        .and_then(|mut f| f.write_all(v.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(path = %path.display(), "generated {name}; keep it safe (set the environment variable in production)");
    Ok(v)
}

fn up(args: UpArgs, tls: ApiTls) -> Result<()> {
    let served = Served::start_with_tls(&args, &tls)?;
    served.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    served.stop();
    Ok(())
}

/// A control plane serving its API on a tokio runtime of its own (`sluice up`; the `sluice`
/// binary runs a data plane beside it in the same process).
pub struct Served {
    /// The control plane.
    pub cp: Arc<ControlPlane>,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// `https://ADDR` with TLS, else `http://ADDR`, where ADDR is 127.0.0.1 (or [::1]) for
    /// an API listening on all interfaces: the URL a client in this process uses.
    pub url: String,
    /// The API's certificate (PEM file) when it serves HTTPS: what a client in this process
    /// trusts as its CA.
    pub tls_cert: Option<PathBuf>,
    /// The bootstrap admin token, if there is one (from `SLUICE_ADMIN_TOKEN` or the data dir).
    pub admin_token: Option<String>,
    data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    rt: tokio::runtime::Runtime,
}

impl Served {
    /// Opens the store (generating the master key and admin token into the data dir on first
    /// start with the embedded store), binds the API and serves it (plain HTTP) in the
    /// background.
    pub fn start(args: &UpArgs) -> Result<Served> {
        Served::start_with_tls(args, &ApiTls::default())
    }

    /// [`Served::start`], serving the API over HTTPS only when `tls` names a certificate.
    pub fn start_with_tls(args: &UpArgs, tls: &ApiTls) -> Result<Served> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-api")
            .enable_all()
            .build()?;
        let tls_cert = tls.tls_cert.clone();
        let tls = match (&tls.tls_cert, &tls.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::api::tls_server_config(cert, key).with_context(|| {
                    format!("TLS for the API ({} and {})", cert.display(), key.display())
                })?)
            }
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let (cp, listener, admin_token) = rt.block_on(start_control_plane(args))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let server = match tls.clone() {
            Some(tls) => rt.spawn(crate::api::serve_tls(listener, tls, cp.clone(), shutdown)),
            None => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        %addr,
                        "the API is plain HTTP on an address that is not loopback: tokens, and \
                         snapshots with backend passwords, cross the network in the clear; \
                         start with --tls-cert and --tls-key"
                    );
                }
                rt.spawn(crate::api::serve(listener, cp.clone(), shutdown))
            }
        };
        let local = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });
        eprintln!(
            "sluice control plane on {}://{addr} (snapshot v{}, issuer {})",
            if tls.is_some() { "https" } else { "http" },
            cp.current_snapshot().version,
            cp.issuer()
        );
        Ok(Served {
            cp,
            addr,
            url,
            tls_cert,
            admin_token,
            data_dir: args.data_dir.clone(),
            shutdown: Some(tx),
            server: Some(server),
            rt,
        })
    }

    /// Runs `f` on the control plane's runtime until it completes.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A node token for a data plane in this process: the one kept in the data dir
    /// (`node.token`) while it is still valid, else a new one (role `node`) written there.
    pub fn local_node_token(&self) -> Result<String> {
        let path = self.data_dir.join("node.token");
        if let Ok(t) = std::fs::read_to_string(&path) {
            let t = t.trim().to_owned();
            let who = self.rt.block_on(self.cp.authenticate(&t))?;
            if who.is_some_and(|p| p.role == crate::service::Role::Node) {
                return Ok(t);
            }
        }
        let up = crate::service::Principal {
            name: "sluice-up".into(),
            role: crate::service::Role::Admin,
        };
        let issued = self.rt.block_on(self.cp.create_token(
            &up,
            crate::service::TokenRequest {
                name: "local data plane (sluice up)".into(),
                role: crate::service::Role::Node,
            },
        ))?;
        let _ = std::fs::remove_file(&path);
        data_dir_secret(&self.data_dir, "node.token", || issued.token.clone())
    }

    /// Applies a YAML document through the API (`POST /v1/apply`) with the bootstrap admin
    /// token, as `sluice apply -f` does; returns the snapshot version it made current.
    pub fn apply_yaml(&self, yaml: &str) -> Result<u64> {
        let client = Client::new(ClientArgs {
            server: self.url.clone(),
            token: self.admin_token.clone(),
            ca: self.tls_cert.clone(),
        })?;
        let out = client.send(
            "POST",
            "/v1/apply",
            Some(("application/yaml", yaml.as_bytes().to_vec())),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["snapshot_version"]
            .as_u64()
            .context("the apply answer has no snapshot_version")
    }

    /// Stops serving (in-flight requests end, long-polls are cut) and closes the store.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.take();
        let cp = self.cp.clone();
        self.rt.block_on(async move {
            if let Some(s) = server {
                // Long-polls would hold a graceful shutdown for their whole wait.
                let _ = tokio::time::timeout(Duration::from_millis(500), s).await;
            }
            cp.store().close().await;
        });
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

async fn start_control_plane(
    args: &UpArgs,
) -> Result<(Arc<ControlPlane>, tokio::net::TcpListener, Option<String>)> {
    let embedded = args.store.is_none();
    let key = match std::env::var(MASTER_KEY_ENV) {
        Ok(k) => MasterKey::from_base64(&k)?,
        Err(_) if embedded => MasterKey::from_base64(&data_dir_secret(
            &args.data_dir,
            "master.key",
            MasterKey::generate_base64,
        )?)?,
        Err(_) => {
            bail!("{MASTER_KEY_ENV} must be set (base64 of 32 bytes) with a PostgreSQL store")
        }
    };
    let admin_token = match std::env::var("SLUICE_ADMIN_TOKEN") {
        Ok(t) => Some(t),
        Err(_) if embedded => Some(data_dir_secret(&args.data_dir, "admin.token", || {
            crate::crypto::new_token("sluice_admin")
        })?),
        Err(_) => None,
    };
    let store = match &args.store {
        Some(url) => Store::open(url)
            .await
            .with_context(|| format!("opening store {}", redact_url(url)))?,
        None => Store::open_data_dir(&args.data_dir).await?,
    };
    let settings = Settings {
        issuer: args.issuer.clone(),
        admin_token: admin_token.clone(),
        ..Settings::default()
    };
    let cp = ControlPlane::start(store, key, settings).await?;
    if cp.store().backend() == Backend::Postgres {
        // Other replicas over the same store may commit snapshots; pick them up.
        let cp2 = cp.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = cp2.refresh_from_store().await {
                    tracing::warn!(error = %e, "refreshing the snapshot from the store");
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    Ok((cp, listener, admin_token))
}
