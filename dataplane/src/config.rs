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
    /// On SIGTERM, how long sessions have to finish their transaction before the gateway
    /// closes them (57P01).
    pub drain_timeout: Duration,
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
    pub control_plane_trust: sluice_client::Trust,
}

impl Config {
    /// Reads, substitutes and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Self::from_file_as_version(path, 0)
    }

    /// Like [`Config::from_file`], for version `version` of the file (a reload: its
    /// policies' cached verdicts must not be taken for the previous version's).
    pub fn from_file_as_version(path: &Path, version: u64) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, &|k| std::env::var(k).ok(), None, version).map_err(|mut e| {
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
        Self::parse(text, base_dir, env, None, 0)
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
        Self::parse(text, base_dir, env, Some(control_plane), 0)
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        control_plane: Option<ControlPlaneSettings>,
        version: u64,
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
        let mut config = raw.validate(base_dir, control_plane.is_some(), version)?;
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

/// The claim of a grant token that names its role; the grant issuer's `groups_claim`, so a
/// verified grant's [`Identity::groups`](sluice_auth::token::Identity::groups) is `[role]`.
pub const GRANT_ROLE_CLAIM: &str = "role";

mod raw;
mod snapshot;

#[cfg(test)]
mod tests;
