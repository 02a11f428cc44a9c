//! The declarative document users apply: connections, identity providers, roles, policies,
//! notifications.
//!
//! [`parse`] reads JSON or YAML strictly (unknown fields are errors, with their path);
//! [`Document::validate`] checks the whole document and returns every problem with its path,
//! so a document is applied whole or not at all. Backend passwords are write-only: they are
//! accepted here, kept apart as [`Credentials`], and never serialized back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

mod notifications;
pub use notifications::{Event, NotificationSpec, PayloadFormat};

/// Backend passwords by connection name, then backend user name.
pub type Credentials = BTreeMap<String, BTreeMap<String, String>>;

/// The whole declarative configuration, as `sluice apply -f` sends it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Backends agents may reach.
    #[serde(default)]
    pub connections: Vec<ConnectionSpec>,
    /// Trusted OIDC/JWT issuers.
    #[serde(default)]
    pub identity_providers: Vec<IdentityProviderSpec>,
    /// Who may use which connection, as which backend user, under which policy.
    #[serde(default)]
    pub roles: Vec<RoleSpec>,
    /// Statement, table, row-limit and masking rules (evaluated by the data plane).
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// Webhooks told about reviews, grants and denied statements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationSpec>,
}

/// One backend (the name is what clients send as their database).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    pub database: String,
    /// `disable` (default), `prefer`, `require` or `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// CA bundle path on the data-plane host, for `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    pub users: Vec<BackendUserSpec>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

/// Pool settings, as in the data plane's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// Transaction pooling: session state that pins a client to its server connection
    /// (`listen`, `temp_table`, `advisory_lock`, `hold_cursor`, `prepare_transaction`; all
    /// when absent); statements creating a kind not listed are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_on: Option<Vec<String>>,
}

/// A backend user the gateway logs in as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendUserSpec {
    /// Name roles refer to.
    pub name: String,
    /// PostgreSQL role name (defaults to `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Write-only: stored encrypted, never returned. Omitted on a later apply, the stored
    /// password is kept.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

/// A trusted JWT issuer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderSpec {
    pub name: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// Inline JWKS (`{"keys": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<Value>,
    /// JWKS URL (fetched by the data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Claim carrying the caller's groups (default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_secs: Option<u64>,
}

/// Which identities a role covers and what it may reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Connection name → backend user name.
    pub connections: BTreeMap<String, String>,
    /// Name of the policy that judges this role's statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A named policy. Its body is the policy format of sluice-policy (`crates/policy/README.md`), kept as
/// given and checked with that crate's own parser on every apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicySpec {
    pub name: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub body: BTreeMap<String, Value>,
}

/// Builds one policy with the data plane's own model (sluice-policy), so a policy that would
/// be refused there (and leave data planes on the previous snapshot) is refused here, with its
/// path in this document.
fn check_policy(i: usize, pol: &PolicySpec) -> Result<(), FieldError> {
    let src = serde_json::json!({ "policies": [pol] }).to_string();
    match sluice_policy::PolicySet::from_yaml(&src, 0) {
        Ok(set) => {
            // Valid, but worth an operator's attention (there is no warnings field to answer
            // with, so the log carries them).
            for warning in set.iter().flat_map(|p| p.warnings()) {
                tracing::warn!(policy = %pol.name, path = %format!("policies[{i}]"), "{warning}");
            }
            Ok(())
        }
        Err(sluice_policy::PolicyError::Invalid { path, message }) => {
            // The policy was alone at index 0; put it back at its index.
            let rest = path.strip_prefix("policies[0]").unwrap_or("");
            Err(FieldError::new(format!("policies[{i}]{rest}"), message))
        }
        Err(sluice_policy::PolicyError::Syntax(message)) => {
            // serde's location is in the generated JSON, so drop it; the message starts with
            // the path inside it (`policies[0].masking[0]: unknown field ...`).
            let message = message.split(" at line ").next().unwrap_or(&message);
            let (path, message) = match message.split_once(": ") {
                Some((p, m)) if p.starts_with("policies[0]") => {
                    (format!("policies[{i}]{}", &p["policies[0]".len()..]), m)
                }
                _ => (format!("policies[{i}]"), message),
            };
            Err(FieldError::new(path, message))
        }
    }
}

/// One problem in a document (a wire type: error answers carry it).
pub use sluice_client::wire::error::FieldError;

/// The syntax a document arrives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Parses a document strictly. The error names the path where parsing stopped.
pub fn parse(bytes: &[u8], format: Format) -> Result<Document, FieldError> {
    fn path_of(p: &serde_path_to_error::Path) -> String {
        let s = p.to_string();
        if s == "." {
            String::new()
        } else {
            s
        }
    }
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let doc = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| FieldError::new(path_of(e.path()), e.inner().to_string()))?;
            de.end()
                .map_err(|e| FieldError::new("", format!("trailing data: {e}")))?;
            Ok(doc)
        }
        Format::Yaml => {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Document::default());
            }
            let de = serde_yaml_ng::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(de)
                .map_err(|e| FieldError::new(path_of(e.path()), e.inner().to_string()))
        }
    }
}

const TLS_MODES: [&str; 4] = ["disable", "prefer", "require", "verify-full"];

fn check_name(errors: &mut Vec<FieldError>, path: String, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        errors.push(FieldError::new(
            path,
            "must be 1-63 characters of letters, digits, `_`, `-`, `.`",
        ));
    }
}

fn check_unique<'a>(
    errors: &mut Vec<FieldError>,
    kind: &str,
    names: impl Iterator<Item = &'a str>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            errors.push(FieldError::new(
                format!("{kind}[{i}].name"),
                format!("`{n}` is defined twice"),
            ));
        }
    }
    seen
}

impl Document {
    /// Checks the whole document and resolves its credentials: a password given here wins,
    /// an omitted one keeps what `previous` holds for that connection and user. Returns every
    /// problem found, not just the first.
    pub fn validate(&self, previous: &Credentials) -> Result<Credentials, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut creds = Credentials::new();
        let conn_names = check_unique(
            &mut errors,
            "connections",
            self.connections.iter().map(|c| c.name.as_str()),
        );
        for (i, c) in self.connections.iter().enumerate() {
            let p = |f: &str| format!("connections[{i}].{f}");
            check_name(&mut errors, p("name"), &c.name);
            if c.host.is_empty() {
                errors.push(FieldError::new(p("host"), "must not be empty"));
            }
            if c.port == 0 {
                errors.push(FieldError::new(p("port"), "must be 1-65535"));
            }
            if c.database.is_empty() {
                errors.push(FieldError::new(p("database"), "must not be empty"));
            }
            let tls = c.tls.as_deref().unwrap_or("disable");
            if !TLS_MODES.contains(&tls) {
                errors.push(FieldError::new(
                    p("tls"),
                    format!("`{tls}` is not one of disable, prefer, require, verify-full"),
                ));
            }
            if tls == "verify-full" && c.tls_ca.is_none() {
                errors.push(FieldError::new(p("tls_ca"), "verify-full needs a CA file"));
            }
            if let Some(pool) = &c.pool {
                if let Some(m) = &pool.mode {
                    if m != "session" && m != "transaction" {
                        errors.push(FieldError::new(
                            p("pool.mode"),
                            format!("`{m}` is not one of session, transaction"),
                        ));
                    }
                }
                if pool.size == Some(0) {
                    errors.push(FieldError::new(p("pool.size"), "must be at least 1"));
                }
                for kind in pool.pin_on.iter().flatten() {
                    if sluice_policy::SessionState::from_name(kind).is_none() {
                        let known: Vec<&str> = sluice_policy::SessionState::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect();
                        errors.push(FieldError::new(
                            p("pool.pin_on"),
                            format!("`{kind}` is not one of {}", known.join(", ")),
                        ));
                    }
                }
                for (field, v) in [
                    ("timeout", &pool.timeout),
                    ("check_after", &pool.check_after),
                    ("max_lifetime", &pool.max_lifetime),
                    ("connect_timeout", &pool.connect_timeout),
                ] {
                    if let Some(v) = v {
                        if let Err(m) = parse_duration(v) {
                            errors.push(FieldError::new(p(&format!("pool.{field}")), m));
                        }
                    }
                }
            }
            if c.users.is_empty() {
                errors.push(FieldError::new(p("users"), "at least one user is needed"));
            }
            let mut user_names = BTreeSet::new();
            let mut conn_creds = BTreeMap::new();
            for (j, u) in c.users.iter().enumerate() {
                let up = p(&format!("users[{j}].name"));
                check_name(&mut errors, up.clone(), &u.name);
                if !user_names.insert(u.name.as_str()) {
                    errors.push(FieldError::new(
                        up,
                        format!("`{}` is defined twice", u.name),
                    ));
                }
                if u.user.as_deref() == Some("") {
                    errors.push(FieldError::new(
                        p(&format!("users[{j}].user")),
                        "must not be empty",
                    ));
                }
                let pw = u
                    .password
                    .clone()
                    .or_else(|| previous.get(&c.name).and_then(|m| m.get(&u.name)).cloned());
                if let Some(pw) = pw {
                    conn_creds.insert(u.name.clone(), pw);
                }
            }
            creds.insert(c.name.clone(), conn_creds);
        }

        let idp_names = check_unique(
            &mut errors,
            "identity_providers",
            self.identity_providers.iter().map(|c| c.name.as_str()),
        );
        let mut issuers = BTreeSet::new();
        for (i, idp) in self.identity_providers.iter().enumerate() {
            let p = |f: &str| format!("identity_providers[{i}].{f}");
            check_name(&mut errors, p("name"), &idp.name);
            if idp.issuer.is_empty() {
                errors.push(FieldError::new(p("issuer"), "must not be empty"));
            } else if !issuers.insert(idp.issuer.as_str()) {
                errors.push(FieldError::new(
                    p("issuer"),
                    "another identity provider has this issuer",
                ));
            }
            match (&idp.jwks, &idp.jwks_url) {
                (None, None) => errors.push(FieldError::new(p("jwks"), "set jwks or jwks_url")),
                (Some(_), Some(_)) => errors.push(FieldError::new(
                    p("jwks_url"),
                    "set jwks or jwks_url, not both",
                )),
                (Some(jwks), None) => {
                    // The data plane's own verifier checks the keys, so what passes here loads there.
                    let cfg = sluice_auth::token::TokenConfig {
                        jwt: vec![idp_issuer_config(idp, jwks.clone())],
                        static_tokens: Vec::new(),
                    };
                    if let Err(e) = sluice_auth::token::TokenVerifier::new(&cfg) {
                        errors.push(FieldError::new(p("jwks"), e.to_string()));
                    }
                }
                (None, Some(url)) => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        errors.push(FieldError::new(p("jwks_url"), "must be an http(s) URL"));
                    }
                }
            }
            if idp.groups_claim.as_deref() == Some("") {
                errors.push(FieldError::new(p("groups_claim"), "must not be empty"));
            }
        }
        let _ = idp_names;

        let policy_names = check_unique(
            &mut errors,
            "policies",
            self.policies.iter().map(|c| c.name.as_str()),
        );
        for (i, pol) in self.policies.iter().enumerate() {
            check_name(&mut errors, format!("policies[{i}].name"), &pol.name);
            if let Err(e) = check_policy(i, pol) {
                errors.push(e);
            }
        }

        check_unique(
            &mut errors,
            "roles",
            self.roles.iter().map(|c| c.name.as_str()),
        );
        for (i, r) in self.roles.iter().enumerate() {
            let p = |f: &str| format!("roles[{i}].{f}");
            check_name(&mut errors, p("name"), &r.name);
            if r.subjects.is_empty() && r.groups.is_empty() {
                errors.push(FieldError::new(
                    p("subjects"),
                    "a role needs subjects or groups (grants can still name it)",
                ));
            }
            if r.connections.is_empty() {
                errors.push(FieldError::new(p("connections"), "at least one connection"));
            }
            for (conn, user) in &r.connections {
                let cp = p(&format!("connections.{conn}"));
                if !conn_names.contains(conn.as_str()) {
                    errors.push(FieldError::new(cp, format!("no connection named `{conn}`")));
                    continue;
                }
                let c = self.connections.iter().find(|c| &c.name == conn);
                if !c.is_some_and(|c| c.users.iter().any(|u| &u.name == user)) {
                    errors.push(FieldError::new(
                        cp,
                        format!("connection `{conn}` has no user `{user}`"),
                    ));
                }
            }
            if let Some(pol) = &r.policy {
                if !policy_names.contains(pol.as_str()) {
                    errors.push(FieldError::new(
                        p("policy"),
                        format!("no policy named `{pol}`"),
                    ));
                }
            }
        }
        notifications::validate(&self.notifications, &mut errors);
        if errors.is_empty() {
            Ok(creds)
        } else {
            Err(errors)
        }
    }

    /// Sorts every list by name, so equal configurations serialize identically.
    pub fn normalize(&mut self) {
        self.connections.sort_by(|a, b| a.name.cmp(&b.name));
        self.identity_providers.sort_by(|a, b| a.name.cmp(&b.name));
        self.roles.sort_by(|a, b| a.name.cmp(&b.name));
        self.policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.notifications.sort_by(|a, b| a.name.cmp(&b.name));
        for c in &mut self.connections {
            c.users.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

/// The data plane's issuer configuration for an identity provider with an inline JWKS.
pub fn idp_issuer_config(
    idp: &IdentityProviderSpec,
    jwks: Value,
) -> sluice_auth::token::JwtIssuerConfig {
    sluice_auth::token::JwtIssuerConfig {
        issuer: idp.issuer.clone(),
        audience: idp.audience.clone(),
        hs256_secret: None,
        jwks: Some(jwks),
        jwks_file: None,
        groups_claim: idp.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        leeway_secs: idp.leeway_secs.unwrap_or(30),
    }
}

/// Parses `250ms`, `5s`, `15m`, `1h`, `2d` (a bare number means seconds), like the data plane.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 5s, 15m"))?;
    let secs = |m: u64| std::time::Duration::from_secs(n.saturating_mul(m));
    Ok(match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h, d)"
            ))
        }
    })
}

/// What applying a document would change, per kind of resource, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Diff {
    pub connections: KindDiff,
    pub identity_providers: KindDiff,
    pub roles: KindDiff,
    pub policies: KindDiff,
    #[serde(default)]
    pub notifications: KindDiff,
}

/// Added, removed and changed resources of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KindDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed resources and which of their fields changed (`credentials` for a password,
    /// whose values are never shown).
    pub changed: Vec<Change>,
}

/// One changed resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub name: String,
    pub fields: Vec<String>,
}

impl Diff {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        [
            &self.connections,
            &self.identity_providers,
            &self.roles,
            &self.policies,
            &self.notifications,
        ]
        .iter()
        .all(|k| k.added.is_empty() && k.removed.is_empty() && k.changed.is_empty())
    }

    /// Compares two documents and their credentials.
    pub fn between(
        old: &Document,
        old_creds: &Credentials,
        new: &Document,
        new_creds: &Credentials,
    ) -> Diff {
        fn kind<T: Serialize>(
            old: &[T],
            new: &[T],
            name: impl Fn(&T) -> &str,
            extra: impl Fn(&str) -> Vec<String>,
        ) -> KindDiff {
            let as_map = |items: &[T]| -> BTreeMap<String, Value> {
                items
                    .iter()
                    .map(|i| {
                        (
                            name(i).to_owned(),
                            serde_json::to_value(i).unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            };
            let (o, n) = (as_map(old), as_map(new));
            let mut d = KindDiff::default();
            for (k, nv) in &n {
                match o.get(k) {
                    None => d.added.push(k.clone()),
                    Some(ov) => {
                        let mut fields = changed_fields(ov, nv);
                        fields.extend(extra(k));
                        if !fields.is_empty() {
                            d.changed.push(Change {
                                name: k.clone(),
                                fields,
                            });
                        }
                    }
                }
            }
            d.removed = o.keys().filter(|k| !n.contains_key(*k)).cloned().collect();
            d
        }
        Diff {
            connections: kind(
                &old.connections,
                &new.connections,
                |c| &c.name,
                |name| {
                    if old_creds.get(name) != new_creds.get(name) {
                        vec!["credentials".into()]
                    } else {
                        vec![]
                    }
                },
            ),
            identity_providers: kind(
                &old.identity_providers,
                &new.identity_providers,
                |c| &c.name,
                |_| vec![],
            ),
            roles: kind(&old.roles, &new.roles, |c| &c.name, |_| vec![]),
            policies: kind(&old.policies, &new.policies, |c| &c.name, |_| vec![]),
            notifications: kind(
                &old.notifications,
                &new.notifications,
                |c| &c.name,
                |_| vec![],
            ),
        }
    }
}

fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
