//! Serde mirror of the YAML document, and its validation into the typed configuration.
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
    #[serde(default)]
    pub drain_timeout: Option<String>,
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
    /// `version` keys the policies' cached verdicts (a reloaded file gets a new one).
    pub fn validate(
        self,
        base: &Path,
        external_control_plane: bool,
        version: u64,
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
        let (tls, require_tls) = client_tls(self.tls, base)?;
        let limits = limits(self.limits.unwrap_or_default())?;

        let (control_plane, control_plane_trust) = match self.control_plane {
            None => (None, sluice_client::Trust::webpki()),
            Some(cp) => {
                let (settings, trust) = cp.validate(base)?;
                (Some(settings), trust)
            }
        };
        // With a control plane, connections come with its snapshots.
        if self.connections.is_empty() && control_plane.is_none() && !external_control_plane {
            return Err(ConfigError::new(
                "connections",
                "at least one connection is needed (or a control_plane to take them from)",
            ));
        }
        let connections = connections(self.connections, base)?;

        let policies = policies(self.policies, version)?;
        let roles = roles(self.roles, &connections, &policies)?;

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

/// `tls`: the certificate clients get, and whether plain-text clients from the network are
/// refused.
fn client_tls(
    t: Option<Tls>,
    base: &Path,
) -> Result<(Option<super::ClientTls>, bool), ConfigError> {
    Ok(match t {
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
    })
}

/// `limits`, with their defaults.
fn limits(l: Limits) -> Result<super::Limits, ConfigError> {
    let max_message_bytes = match &l.max_message_bytes {
        None => sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN,
        Some(s) => parse_size(s).map_err(|m| ConfigError::new("limits.max_message_bytes", m))?,
    };
    if !(1024..=sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN).contains(&max_message_bytes) {
        return Err(ConfigError::new(
            "limits.max_message_bytes",
            "must be between 1KiB and 1GiB",
        ));
    }
    Ok(super::Limits {
        max_message_bytes,
        startup_timeout: dur(
            "limits.startup_timeout",
            &l.startup_timeout,
            Duration::from_secs(15),
        )?,
        max_client_connections_per_core: l.max_client_connections_per_core.unwrap_or(10_000),
        drain_timeout: dur(
            "limits.drain_timeout",
            &l.drain_timeout,
            Duration::from_secs(30),
        )?,
    })
}

impl ControlPlane {
    /// `control_plane`: where snapshots come from, and which certificates its `https://` URL
    /// must present.
    fn validate(
        self,
        base: &Path,
    ) -> Result<(super::ControlPlaneSettings, sluice_client::Trust), ConfigError> {
        let cp = self;
        let mut trust = sluice_client::Trust::webpki();
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
            trust = sluice_client::Trust::from_ca_file(&resolve(base, ca))
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
        Ok((
            super::ControlPlaneSettings {
                url,
                node_token: cp.node_token,
                node_id: cp.node_id,
                state_dir: resolve(base, &cp.state_dir),
            },
            trust,
        ))
    }
}

/// `connections`: names unique, TLS modes and pool settings valid, each with a backend user.
pub(super) fn connections(
    raw: Vec<Connection>,
    base: &Path,
) -> Result<Vec<super::Connection>, ConfigError> {
    let mut connections = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (i, c) in raw.into_iter().enumerate() {
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
                    format!("`{other}` is not one of disable, prefer, require, verify-full"),
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
        if mode == PoolMode::Transaction && !pin_on.is_empty() && reset_query.trim().is_empty() {
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
    Ok(connections)
}

/// `policies`, in sluice-policy's document format.
fn policies(v: Option<serde_yaml_ng::Value>, version: u64) -> Result<PolicySet, ConfigError> {
    match v {
        None => PolicySet::from_yaml("", version),
        Some(v) => {
            let mut doc = serde_yaml_ng::Mapping::new();
            doc.insert("policies".into(), v);
            let text = serde_yaml_ng::to_string(&doc)
                .map_err(|e| ConfigError::new("policies", e.to_string()))?;
            PolicySet::from_yaml(&text, version)
        }
    }
    .map_err(|e| match e {
        sluice_policy::PolicyError::Invalid { path, message } => ConfigError::new(path, message),
        other => ConfigError::new("policies", other.to_string()),
    })
}

/// `roles`: each names someone, its connections and backend users exist, and its policy is one
/// of `policies` (none: deny everything).
pub(super) fn roles(
    raw: Vec<Role>,
    connections: &[super::Connection],
    policies: &PolicySet,
) -> Result<Vec<super::Role>, ConfigError> {
    let deny_all = Arc::new(Policy::deny_all());
    let mut roles = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
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
    Ok(roles)
}
