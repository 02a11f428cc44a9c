//! `sluice up`'s control plane: the store opened (secrets generated into the data directory on
//! first start), the API served on a tokio runtime of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::crypto::{MasterKey, MASTER_KEY_ENV};
use crate::service::{ControlPlane, Settings};
use crate::store::{redact_url, Backend, Store};

/// `sluice up` options (the `sluice` binary's flags fill them in).
#[derive(Clone, Debug)]
pub struct UpArgs {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite store (and, if the environment has none, a generated
    /// master key and bootstrap admin token).
    pub data_dir: PathBuf,
    /// A PostgreSQL URL instead of the embedded store.
    pub store: Option<String>,
    /// `iss` of grant tokens (generated once and kept in the store when absent).
    pub issuer: Option<String>,
    /// The data plane's settings for the `sluice` binary, which runs the data plane beside
    /// the control plane; its `control_plane` section is filled in.
    pub config: Option<PathBuf>,
}

/// `sluice up` TLS options (apart from [`UpArgs`], whose callers build it field by field).
/// Both or neither; without them the API is plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct ApiTls {
    /// PEM certificate chain: serve the API over HTTPS only (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// Largest apply answer read (the diff of a whole document).
const APPLY_ANSWER_LIMIT: u64 = 64 << 20;

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

/// A control plane serving its API on a tokio runtime of its own (`sluice up`; the `sluice`
/// binary runs a data plane beside it in the same process).
pub struct Served {
    /// The control plane.
    pub cp: Arc<ControlPlane>,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// `https://ADDR` with TLS, else `http://ADDR`, where ADDR is 127.0.0.1 (or `[::1]`) for
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
        let trust = match &self.tls_cert {
            Some(ca) => sluice_client::Trust::from_ca_file(ca)?,
            None => sluice_client::Trust::webpki(),
        };
        let token = self
            .admin_token
            .as_deref()
            .context("no bootstrap admin token to apply with")?;
        let client = sluice_client::Client::new(&self.url, token, &trust, Duration::from_secs(60));
        let answer = client.post(
            "/v1/apply",
            Some(("application/yaml", yaml.as_bytes())),
            APPLY_ANSWER_LIMIT,
        )?;
        if !answer.is_success() {
            bail!(
                "POST /v1/apply: {}\n{}",
                answer.status_line(),
                answer.error_message(usize::MAX)
            );
        }
        let v: serde_json::Value = answer.json()?;
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
        syslog: std::env::var("SLUICE_SYSLOG")
            .ok()
            .filter(|a| !a.is_empty()),
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
