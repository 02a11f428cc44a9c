//! Data-plane configuration: YAML with `${ENV}` substitution, validated into typed structs.
//!
//! Parsing is split in two steps on purpose: serde reads the document into `raw` structs that
//! mirror the YAML, and [`Config::from_yaml`] validates them into the typed [`Config`] that the
//! rest of the data plane receives as an argument. Nothing here is global.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_auth::token::TokenConfig;
use sluice_policy::{Policy, PolicySet};

/// A configuration problem, naming the file (when known), the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{field}: {message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
pub struct ConfigError {
    /// The file the configuration came from, if any.
    pub file: Option<PathBuf>,
    /// Dotted path of the offending field, e.g. `connections[0].pool.size`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How server connections are shared between clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A client holds a server connection only for the length of a transaction.
    Transaction,
}

/// How the gateway protects its connection to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTls {
    /// Plain TCP.
    Disable,
    /// TLS if the server agrees, without verifying its certificate (like `sslmode=prefer`).
    Prefer,
    /// TLS required, certificate not verified (like `sslmode=require`).
    Require,
    /// TLS required and the certificate verified against `ca` (like `sslmode=verify-full`).
    VerifyFull {
        /// CA bundle (PEM).
        ca: PathBuf,
    },
}

/// Pool settings of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Most server connections per (connection, backend user), across all cores.
    pub size: usize,
    /// How long a client waits for a server connection before it gets an error.
    pub timeout: Duration,
    /// Query run when a session-mode server connection goes back to the pool.
    pub reset_query: String,
    /// An idle server connection unused for this long is checked before it is handed out.
    pub check_after: Duration,
    /// Server connections older than this are closed when they return to the pool.
    pub max_lifetime: Duration,
    /// How long connecting and authenticating to the backend may take.
    pub connect_timeout: Duration,
    /// Transaction pooling: the session state that pins a client to its server connection
    /// for the rest of its session; statements creating a kind not listed are refused.
    pub pin_on: Vec<sluice_policy::SessionState>,
}

/// Credentials the gateway holds for one backend user. Never sent to clients or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUser {
    /// The PostgreSQL role name.
    pub user: String,
    /// Its password; `None` for trust authentication.
    pub password: Option<String>,
}

impl std::fmt::Debug for BackendUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendUser")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One backend a client can ask for by name (the StartupMessage `database`).
#[derive(Clone, Debug)]
pub struct Connection {
    /// Name clients use as their `database`.
    pub name: String,
    /// Backend host.
    pub host: String,
    /// Backend port.
    pub port: u16,
    /// Real database name on the backend.
    pub database: String,
    /// TLS to the backend.
    pub tls: BackendTls,
    /// Pooling.
    pub pool: PoolConfig,
    /// Backend users by their name in this file.
    pub users: HashMap<String, BackendUser>,
}

/// Which identities a role covers and what it may reach.
#[derive(Clone, Debug)]
pub struct Role {
    /// Role name (appears in logs and errors).
    pub name: String,
    /// Token subjects that have this role.
    pub subjects: HashSet<String>,
    /// Token groups that have this role.
    pub groups: HashSet<String>,
    /// Connection name → backend user name, for the connections this role may use.
    pub connections: HashMap<String, String>,
    /// The statement policy every statement of this role is judged by. A role without one
    /// has [`Policy::deny_all`]: it can log in, and every statement is denied.
    pub policy: Arc<Policy>,
}

/// TLS towards clients.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Protocol limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message accepted in either direction once a session is running.
    pub max_message_bytes: usize,
    /// Time a client has from connecting to finishing authentication.
    pub startup_timeout: Duration,
    /// Most client connections per core; more are refused with 53300.
    pub max_client_connections_per_core: usize,
}

/// Where the data plane gets its snapshots (connections, identity providers, roles, policies,
/// grant keys and revocations) from; see [`crate::snapshot`].
#[derive(Clone)]
pub struct ControlPlaneSettings {
    /// Base URL of the control plane's API: `https://cp.example:7070`, or `http://...` (then
    /// snapshots, with backend passwords, cross the network in the clear: loopback only). How
    /// an `https://` server is checked is [`Config::control_plane_trust`].
    pub url: String,
    /// An API token with role `node`. Never logged (a fingerprint is).
    pub node_token: String,
    /// This data plane's stable id; `None` means one generated on first start and kept in
    /// `state_dir/node-id`.
    pub node_id: Option<String>,
    /// Where the last accepted snapshot is kept (`snapshot.json`, mode 0600: it carries backend
    /// passwords), so a restart without the control plane serves it (fail-static).
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for ControlPlaneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneSettings")
            .field("url", &self.url)
            .field(
                "node_token",
                &sluice_auth::token::fingerprint(&self.node_token),
            )
            .field("node_id", &self.node_id)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// The whole, validated data-plane configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the per-core listeners bind (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Worker threads, one runtime each.
    pub cores: usize,
    /// Optional Prometheus metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS towards clients, if configured.
    pub tls: Option<ClientTls>,
    /// Refuse plain-text clients that do not come from loopback.
    pub require_tls_for_non_loopback: bool,
    /// Limits.
    pub limits: Limits,
    /// How client tokens are verified.
    pub auth: TokenConfig,
    /// Backends by name.
    pub connections: Vec<Connection>,
    /// Roles, in order; the first one that matches an identity wins.
    pub roles: Vec<Role>,
    /// The statement policies roles refer to.
    pub policies: Arc<PolicySet>,
    /// The control plane this data plane takes snapshots from, if any. With one, the
    /// connections, roles, policies and JWT issuers above are only what runs until the first
    /// snapshot arrives (or is loaded from `state_dir`), and may be empty.
    pub control_plane: Option<ControlPlaneSettings>,
    /// Which certificates an `https://` control plane must present: the `control_plane.ca`
    /// bundle, else the webpki roots. Handed to the snapshot, review and audit clients. (Here
    /// rather than in [`ControlPlaneSettings`], whose literal callers would all have to change.)
    pub control_plane_trust: crate::http::Trust,
}

impl Config {
    /// Reads, substitutes and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base, &|k| std::env::var(k).ok()).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses a configuration from YAML text. Relative paths resolve against `base_dir`;
    /// `${NAME}` is replaced through `env` (an unset variable is an error).
    pub fn from_yaml(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, env, None)
    }

    /// Like [`Config::from_yaml`], for a data plane whose control plane the caller knows
    /// (`sluice up` runs both in one process): `control_plane` replaces the text's own
    /// section, if it has one.
    pub fn from_yaml_with_control_plane(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        control_plane: ControlPlaneSettings,
    ) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, env, Some(control_plane))
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        control_plane: Option<ControlPlaneSettings>,
    ) -> Result<Config, ConfigError> {
        let text = substitute_env(text, env)?;
        let mut raw: raw::Config = serde_yaml_ng::from_str(&text).map_err(|e| {
            let field = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            ConfigError::new(field, e.to_string())
        })?;
        if control_plane.is_some() {
            raw.control_plane = None;
        }
        let mut config = raw.validate(base_dir, control_plane.is_some())?;
        if control_plane.is_some() {
            config.control_plane = control_plane;
        }
        Ok(config)
    }

    /// The connection a client asked for by name.
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// The first role that covers a subject or one of its groups.
    pub fn role_for(&self, subject: &str, groups: &[String]) -> Option<&Role> {
        self.roles
            .iter()
            .find(|r| r.subjects.contains(subject) || groups.iter().any(|g| r.groups.contains(g)))
    }
}

/// True when `url`'s host is `localhost` or a loopback address (`127.0.0.0/8`, `[::1]`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Replaces `${NAME}` with the variable's value; `$$` stands for a literal `$`. Comment
/// lines (first non-blank character `#`) are left as they are.
pub fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            substitute_line(line, env, &mut out)?;
        }
    }
    Ok(out)
}

fn substitute_line(
    line: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ConfigError> {
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ConfigError::new("${...}", "unterminated ${ in configuration"))?;
            let name = &body[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(ConfigError::new(
                    format!("${{{name}}}"),
                    "environment variable names are letters, digits and _",
                ));
            }
            let value = env(name).ok_or_else(|| {
                ConfigError::new(format!("${{{name}}}"), "environment variable is not set")
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(())
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 5s, 2m"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m, h)")),
    };
    Ok(d)
}

/// Parses `512`, `64KiB`, `16MiB`, `1GiB` (also KB/MB/GB, meaning the same powers of two).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64KiB, 16MiB, 1GiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

mod raw {
    //! Serde mirror of the YAML document; validated into the typed config above.
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        pub listen: String,
        #[serde(default)]
        pub cores: Option<usize>,
        #[serde(default)]
        pub metrics_listen: Option<String>,
        #[serde(default)]
        pub tls: Option<Tls>,
        #[serde(default)]
        pub limits: Option<Limits>,
        #[serde(default)]
        pub auth: TokenConfig,
        #[serde(default)]
        pub connections: Vec<Connection>,
        #[serde(default)]
        pub roles: Vec<Role>,
        /// Statement policies, in sluice-policy's document format (the list under `policies:`).
        #[serde(default)]
        pub policies: Option<serde_yaml_ng::Value>,
        #[serde(default)]
        pub control_plane: Option<ControlPlane>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ControlPlane {
        pub url: String,
        pub node_token: String,
        #[serde(default)]
        pub node_id: Option<String>,
        pub state_dir: PathBuf,
        /// PEM CA bundle an `https://` control plane's certificate must chain to.
        #[serde(default)]
        pub ca: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        #[serde(default)]
        pub cert: Option<PathBuf>,
        #[serde(default)]
        pub key: Option<PathBuf>,
        #[serde(default)]
        pub require_for_non_loopback: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        #[serde(default)]
        pub max_message_bytes: Option<String>,
        #[serde(default)]
        pub startup_timeout: Option<String>,
        #[serde(default)]
        pub max_client_connections_per_core: Option<usize>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Connection {
        pub name: String,
        #[serde(default = "default_host")]
        pub host: String,
        pub port: u16,
        pub database: String,
        #[serde(default)]
        pub tls: Option<String>,
        #[serde(default)]
        pub tls_ca: Option<PathBuf>,
        #[serde(default)]
        pub pool: Pool,
        pub users: Vec<User>,
    }

    fn default_host() -> String {
        "127.0.0.1".into()
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        #[serde(default)]
        pub mode: Option<PoolMode>,
        #[serde(default)]
        pub size: Option<usize>,
        #[serde(default)]
        pub timeout: Option<String>,
        #[serde(default)]
        pub reset_query: Option<String>,
        #[serde(default)]
        pub check_after: Option<String>,
        #[serde(default)]
        pub max_lifetime: Option<String>,
        #[serde(default)]
        pub connect_timeout: Option<String>,
        #[serde(default)]
        pub pin_on: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct User {
        pub name: String,
        #[serde(default)]
        pub user: Option<String>,
        #[serde(default)]
        pub password: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Role {
        pub name: String,
        #[serde(default)]
        pub subjects: Vec<String>,
        #[serde(default)]
        pub groups: Vec<String>,
        pub connections: HashMap<String, String>,
        #[serde(default)]
        pub policy: Option<String>,
    }

    /// `pool.pin_on`: kind names, every kind when absent.
    fn pin_on(
        field: &str,
        v: Option<Vec<String>>,
    ) -> Result<Vec<sluice_policy::SessionState>, ConfigError> {
        use sluice_policy::SessionState;
        let Some(names) = v else {
            return Ok(SessionState::ALL.to_vec());
        };
        let mut kinds = Vec::with_capacity(names.len());
        for n in names {
            let kind = SessionState::from_name(&n).ok_or_else(|| {
                let known: Vec<&str> = SessionState::ALL.iter().map(|k| k.as_str()).collect();
                ConfigError::new(field, format!("`{n}` is not one of {}", known.join(", ")))
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    fn dur(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| ConfigError::new(field, m)),
        }
    }

    fn resolve(base: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    }

    impl Config {
        /// `external_control_plane`: the caller supplies the control plane (no connections needed).
        pub fn validate(
            self,
            base: &Path,
            external_control_plane: bool,
        ) -> Result<super::Config, ConfigError> {
            let listen: SocketAddr = self.listen.parse().map_err(|_| {
                ConfigError::new(
                    "listen",
                    format!("`{}` is not an address like 127.0.0.1:6432", self.listen),
                )
            })?;
            let metrics_listen = match &self.metrics_listen {
                None => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    ConfigError::new(
                        "metrics_listen",
                        format!("`{s}` is not an address like 127.0.0.1:9187"),
                    )
                })?),
            };
            let cores = match self.cores {
                None | Some(0) => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                Some(n) if n > 1024 => return Err(ConfigError::new("cores", "at most 1024")),
                Some(n) => n,
            };
            let (tls, require_tls) = match self.tls {
                None => (None, false),
                Some(t) => {
                    let tls = match (t.cert, t.key) {
                        (Some(c), Some(k)) => Some(super::ClientTls {
                            cert: resolve(base, &c),
                            key: resolve(base, &k),
                        }),
                        (None, None) => None,
                        _ => return Err(ConfigError::new("tls", "cert and key go together")),
                    };
                    let require = t.require_for_non_loopback.unwrap_or(tls.is_some());
                    if require && tls.is_none() {
                        return Err(ConfigError::new(
                            "tls.require_for_non_loopback",
                            "requires tls.cert and tls.key",
                        ));
                    }
                    (tls, require)
                }
            };
            let l = self.limits.unwrap_or_default();
            let max_message_bytes = match &l.max_message_bytes {
                None => sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN,
                Some(s) => {
                    parse_size(s).map_err(|m| ConfigError::new("limits.max_message_bytes", m))?
                }
            };
            if !(1024..=sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN).contains(&max_message_bytes) {
                return Err(ConfigError::new(
                    "limits.max_message_bytes",
                    "must be between 1KiB and 1GiB",
                ));
            }
            let limits = super::Limits {
                max_message_bytes,
                startup_timeout: dur(
                    "limits.startup_timeout",
                    &l.startup_timeout,
                    Duration::from_secs(15),
                )?,
                max_client_connections_per_core: l
                    .max_client_connections_per_core
                    .unwrap_or(10_000),
            };

            let mut control_plane_trust = crate::http::Trust::webpki();
            let control_plane = match self.control_plane {
                None => None,
                Some(cp) => {
                    let url = cp.url.trim_end_matches('/').to_owned();
                    let https = url.starts_with("https://");
                    if !https && !url.starts_with("http://") {
                        return Err(ConfigError::new(
                            "control_plane.url",
                            format!("`{url}` is not an http:// or https:// URL"),
                        ));
                    }
                    if let Some(ca) = &cp.ca {
                        if !https {
                            return Err(ConfigError::new(
                                "control_plane.ca",
                                "a CA bundle is for an https:// url; this one is plain http",
                            ));
                        }
                        control_plane_trust = crate::http::Trust::from_ca_file(&resolve(base, ca))
                            .map_err(|e| ConfigError::new("control_plane.ca", e.to_string()))?;
                    }
                    if !https && !is_loopback_url(&url) {
                        tracing::warn!(
                            %url,
                            "control_plane.url is plain http to a host that is not loopback: \
                             snapshots carry backend passwords; use https:// (control plane \
                             started with --tls-cert/--tls-key)"
                        );
                    }
                    if cp.node_token.trim().is_empty() {
                        return Err(ConfigError::new(
                            "control_plane.node_token",
                            "must not be empty",
                        ));
                    }
                    if let Some(id) = &cp.node_id {
                        if id.is_empty() || id.len() > 100 {
                            return Err(ConfigError::new(
                                "control_plane.node_id",
                                "must be 1-100 characters",
                            ));
                        }
                    }
                    Some(super::ControlPlaneSettings {
                        url,
                        node_token: cp.node_token,
                        node_id: cp.node_id,
                        state_dir: resolve(base, &cp.state_dir),
                    })
                }
            };
            // With a control plane, connections come with its snapshots.
            if self.connections.is_empty() && control_plane.is_none() && !external_control_plane {
                return Err(ConfigError::new(
                    "connections",
                    "at least one connection is needed (or a control_plane to take them from)",
                ));
            }
            let mut connections = Vec::with_capacity(self.connections.len());
            let mut names = HashSet::new();
            for (i, c) in self.connections.into_iter().enumerate() {
                let f = |s: &str| format!("connections[{i}].{s}");
                if c.name.is_empty() {
                    return Err(ConfigError::new(f("name"), "must not be empty"));
                }
                if !names.insert(c.name.clone()) {
                    return Err(ConfigError::new(
                        f("name"),
                        format!("`{}` is defined twice", c.name),
                    ));
                }
                let tls = match c.tls.as_deref().unwrap_or("disable") {
                    "disable" => BackendTls::Disable,
                    "prefer" => BackendTls::Prefer,
                    "require" => BackendTls::Require,
                    "verify-full" => BackendTls::VerifyFull {
                        ca: resolve(
                            base,
                            c.tls_ca.as_deref().ok_or_else(|| {
                                ConfigError::new(f("tls_ca"), "verify-full needs a CA file")
                            })?,
                        ),
                    },
                    other => {
                        return Err(ConfigError::new(
                            f("tls"),
                            format!(
                                "`{other}` is not one of disable, prefer, require, verify-full"
                            ),
                        ))
                    }
                };
                let p = c.pool;
                let size = p.size.unwrap_or(20);
                if size == 0 {
                    return Err(ConfigError::new(f("pool.size"), "must be at least 1"));
                }
                let mode = p.mode.unwrap_or(PoolMode::Transaction);
                let pin_on = pin_on(&f("pool.pin_on"), p.pin_on)?;
                let reset_query = p.reset_query.unwrap_or_else(|| "DISCARD ALL".into());
                if mode == PoolMode::Transaction
                    && !pin_on.is_empty()
                    && reset_query.trim().is_empty()
                {
                    return Err(ConfigError::new(
                        f("pool.reset_query"),
                        "a transaction pool that pins clients (pool.pin_on) needs a reset query to clean a pinned server connection for the next client (DISCARD ALL, the default)",
                    ));
                }
                let pool = PoolConfig {
                    mode,
                    size,
                    timeout: dur(&f("pool.timeout"), &p.timeout, Duration::from_secs(10))?,
                    reset_query,
                    check_after: dur(
                        &f("pool.check_after"),
                        &p.check_after,
                        Duration::from_secs(30),
                    )?,
                    max_lifetime: dur(
                        &f("pool.max_lifetime"),
                        &p.max_lifetime,
                        Duration::from_secs(3600),
                    )?,
                    connect_timeout: dur(
                        &f("pool.connect_timeout"),
                        &p.connect_timeout,
                        Duration::from_secs(5),
                    )?,
                    pin_on,
                };
                if c.users.is_empty() {
                    return Err(ConfigError::new(
                        f("users"),
                        "at least one backend user is needed",
                    ));
                }
                let mut users = HashMap::new();
                for (j, u) in c.users.into_iter().enumerate() {
                    let user = u.user.unwrap_or_else(|| u.name.clone());
                    if users
                        .insert(
                            u.name.clone(),
                            BackendUser {
                                user,
                                password: u.password,
                            },
                        )
                        .is_some()
                    {
                        return Err(ConfigError::new(
                            f(&format!("users[{j}].name")),
                            format!("`{}` is defined twice", u.name),
                        ));
                    }
                }
                connections.push(super::Connection {
                    name: c.name,
                    host: c.host,
                    port: c.port,
                    database: c.database,
                    tls,
                    pool,
                    users,
                });
            }

            let policies = match self.policies {
                None => PolicySet::from_yaml("", 0),
                Some(v) => {
                    let mut doc = serde_yaml_ng::Mapping::new();
                    doc.insert("policies".into(), v);
                    let text = serde_yaml_ng::to_string(&doc)
                        .map_err(|e| ConfigError::new("policies", e.to_string()))?;
                    PolicySet::from_yaml(&text, 0)
                }
            }
            .map_err(|e| match e {
                sluice_policy::PolicyError::Invalid { path, message } => {
                    ConfigError::new(path, message)
                }
                other => ConfigError::new("policies", other.to_string()),
            })?;
            let deny_all = Arc::new(Policy::deny_all());
            let mut roles = Vec::with_capacity(self.roles.len());
            for (i, r) in self.roles.into_iter().enumerate() {
                if r.subjects.is_empty() && r.groups.is_empty() {
                    return Err(ConfigError::new(
                        format!("roles[{i}]"),
                        "names no subjects and no groups, so nobody has it",
                    ));
                }
                for (conn, user) in &r.connections {
                    let Some(c) = connections.iter().find(|c| &c.name == conn) else {
                        return Err(ConfigError::new(
                            format!("roles[{i}].connections.{conn}"),
                            "no such connection",
                        ));
                    };
                    if !c.users.contains_key(user) {
                        return Err(ConfigError::new(
                            format!("roles[{i}].connections.{conn}"),
                            format!("connection `{conn}` has no backend user `{user}`"),
                        ));
                    }
                }
                let policy = match &r.policy {
                    None => deny_all.clone(),
                    Some(name) => policies.get(name).cloned().ok_or_else(|| {
                        ConfigError::new(
                            format!("roles[{i}].policy"),
                            format!("no policy named `{name}` under `policies`"),
                        )
                    })?,
                };
                roles.push(super::Role {
                    name: r.name,
                    subjects: r.subjects.into_iter().collect(),
                    groups: r.groups.into_iter().collect(),
                    connections: r.connections,
                    policy,
                });
            }

            let mut auth = self.auth;
            for issuer in &mut auth.jwt {
                if let Some(p) = issuer.jwks_file.take() {
                    issuer.jwks_file = Some(resolve(base, &p));
                }
            }

            Ok(super::Config {
                listen,
                cores,
                metrics_listen,
                tls,
                require_tls_for_non_loopback: require_tls,
                limits,
                auth,
                connections,
                roles,
                policies: Arc::new(policies),
                control_plane,
                control_plane_trust,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen: 127.0.0.1:6432
cores: 2
auth:
  static_tokens:
    - token: ${DEMO_TOKEN}
      subject: demo-agent
      groups: [analysts]
connections:
  - name: demo
    port: 5432
    database: demo
    pool: { mode: transaction, size: 10, timeout: 250ms }
    users:
      - name: ro
        user: app_ro
        password: ${RO_PASSWORD}
roles:
  - name: analyst
    groups: [analysts]
    connections: { demo: ro }
    policy: read-only
policies:
  - name: read-only
    classes: { allow: [read, transaction, session] }
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "DEMO_TOKEN" => Some("tok".into()),
            "RO_PASSWORD" => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn parses_minimal() {
        let c = Config::from_yaml(MINIMAL, Path::new("/etc/sluice"), &env).unwrap();
        assert_eq!(c.listen.port(), 6432);
        assert_eq!(c.cores, 2);
        let conn = c.connection("demo").unwrap();
        assert_eq!(conn.pool.mode, PoolMode::Transaction);
        assert_eq!(conn.pool.size, 10);
        assert_eq!(conn.pool.timeout, Duration::from_millis(250));
        assert_eq!(conn.users["ro"].password.as_deref(), Some("s3cret"));
        assert_eq!(c.auth.static_tokens[0].token, "tok");
        let role = c.role_for("someone", &["analysts".into()]).unwrap();
        assert_eq!(role.connections["demo"], "ro");
        assert!(c.role_for("someone", &["other".into()]).is_none());
        assert!(!format!("{:?}", conn.users["ro"]).contains("s3cret"));
    }

    #[test]
    fn pin_on_defaults_to_every_kind_and_is_checked() {
        use sluice_policy::SessionState;
        let c = Config::from_yaml(MINIMAL, Path::new("."), &env).unwrap();
        let pool = &c.connection("demo").unwrap().pool;
        assert_eq!(pool.pin_on, SessionState::ALL.to_vec());

        let some = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, pin_on: [listen, listen]");
        let c = Config::from_yaml(&some, Path::new("."), &env).unwrap();
        assert_eq!(
            c.connection("demo").unwrap().pool.pin_on,
            [SessionState::Listen]
        );

        let bad = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, pin_on: [temp]");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "connections[0].pool.pin_on");
        assert!(
            e.message
                .contains("`temp` is not one of listen, temp_table"),
            "{e}"
        );

        // A pinned server is cleaned by the reset query before the next client gets it.
        let bad = MINIMAL.replace("timeout: 250ms", "timeout: 250ms, reset_query: ''");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "connections[0].pool.reset_query");
        let none = MINIMAL.replace(
            "timeout: 250ms",
            "timeout: 250ms, reset_query: '', pin_on: []",
        );
        Config::from_yaml(&none, Path::new("."), &env).unwrap();
    }

    #[test]
    fn unset_env_is_an_error() {
        let e = Config::from_yaml(MINIMAL, Path::new("."), &|_| None).unwrap_err();
        assert!(e.to_string().contains("DEMO_TOKEN"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = MINIMAL.replace("size: 10", "size: 0");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "connections[0].pool.size");

        let bad = MINIMAL.replace("demo: ro", "demo: rw");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert!(e.message.contains("no backend user `rw`"), "{e}");

        let bad = MINIMAL.replace("timeout: 250ms", "timeout: 5 parsecs");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "connections[0].pool.timeout");

        let bad = MINIMAL.replace("policy: read-only", "policy: nope");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "roles[0].policy");

        let bad = MINIMAL.replace("cores: 2", "cores: 2\nbogus: 1");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn control_plane_section() {
        let yaml = "listen: 127.0.0.1:6432\ncontrol_plane:\n  url: http://cp:7070/\n  node_token: ${T}\n  state_dir: state\n";
        let env = |k: &str| (k == "T").then(|| "sluice_node_x".to_string());
        let c = Config::from_yaml(yaml, Path::new("/var/lib/sluice"), &env).unwrap();
        assert!(c.connections.is_empty(), "connections come with snapshots");
        let cp = c.control_plane.as_ref().unwrap();
        assert_eq!(cp.url, "http://cp:7070");
        assert_eq!(cp.state_dir, Path::new("/var/lib/sluice/state"));
        assert_eq!(cp.node_id, None);
        assert!(
            !format!("{cp:?}").contains("sluice_node_x"),
            "token not in Debug"
        );

        let e = Config::from_yaml("listen: 127.0.0.1:6432\n", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "connections");
        let bad = yaml.replace("http://cp", "ftp://cp");
        let e = Config::from_yaml(&bad, Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "control_plane.url");
        assert!(!c.control_plane_trust.has_ca());

        // https, with the webpki roots or a CA bundle (relative to the file); a bundle with
        // a plain-http url, or one that is not PEM, is refused at load.
        let https = yaml.replace("http://cp", "https://cp");
        let c = Config::from_yaml(&https, Path::new("."), &env).unwrap();
        assert_eq!(c.control_plane.unwrap().url, "https://cp:7070");
        assert!(!c.control_plane_trust.has_ca());
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["cp".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
        let with_ca = format!("{https}  ca: ca.pem\n");
        let c = Config::from_yaml(&with_ca, dir.path(), &env).unwrap();
        assert!(c.control_plane_trust.has_ca());
        let e =
            Config::from_yaml(&with_ca.replace("ca.pem", "bad.pem"), dir.path(), &env).unwrap_err();
        assert_eq!(e.field, "control_plane.ca");
        let e = Config::from_yaml(&with_ca.replace("ca.pem", "missing.pem"), dir.path(), &env)
            .unwrap_err();
        assert_eq!(e.field, "control_plane.ca");
        let e = Config::from_yaml(&format!("{yaml}  ca: ca.pem\n"), dir.path(), &env).unwrap_err();
        assert_eq!(e.field, "control_plane.ca");

        // `sluice up` supplies the section, replacing the text's own.
        let given = ControlPlaneSettings {
            url: "http://127.0.0.1:1".into(),
            node_token: "t".into(),
            node_id: Some("n".into()),
            state_dir: "/s".into(),
        };
        let c = Config::from_yaml_with_control_plane(yaml, Path::new("."), &env, given).unwrap();
        assert_eq!(c.control_plane.unwrap().url, "http://127.0.0.1:1");
        let c = Config::from_yaml_with_control_plane(
            "listen: 127.0.0.1:0\n",
            Path::new("."),
            &env,
            ControlPlaneSettings {
                url: "http://127.0.0.1:1".into(),
                node_token: "t".into(),
                node_id: None,
                state_dir: "/s".into(),
            },
        )
        .unwrap();
        assert!(c.connections.is_empty());
    }

    #[test]
    fn loopback_urls() {
        for u in [
            "http://127.0.0.1:7070",
            "http://localhost",
            "http://[::1]:7070/x",
            "http://127.9.0.1",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://cp:7070",
            "http://10.0.0.1:7070",
            "http://127.0.0.1.evil.example",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }

    #[test]
    fn substitution() {
        let e = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(substitute_env("a${A}b$$c$d", &e).unwrap(), "axb$c$d");
        assert!(substitute_env("${A", &e).is_err());
        assert!(substitute_env("${A-B}", &e).is_err());
        assert_eq!(
            substitute_env("  # ${UNSET}\nx: ${A}\n", &e).unwrap(),
            "  # ${UNSET}\nx: x\n"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("s").is_err());
    }
}
