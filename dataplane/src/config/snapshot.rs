//! A configuration from a control-plane snapshot: the snapshot's identity providers,
//! connections and roles, checked as a configuration file's would be, over this process's own
//! settings.

use std::path::Path;
use std::sync::Arc;

use sluice_auth::token::{JwtIssuerConfig, TokenVerifier};
use sluice_policy::snapshot::{Snapshot, SnapshotConnection, SnapshotRole};
use sluice_policy::{Policy, PolicySet};

use super::{raw, Config, ConfigError, GRANT_ROLE_CLAIM};

impl Config {
    /// This configuration's process-level settings (listen, cores, metrics, TLS, limits,
    /// static tokens, control plane) with `snap`'s identity providers, grant issuer,
    /// connections and roles, validated as a configuration file's are; each role takes its
    /// policy from `policies` (built from the same snapshot, keyed by its version), none
    /// meaning deny everything. Identity providers with only a `jwks_url` are left out with a
    /// warning (nothing fetches JWKS URLs yet), so their tokens are refused. A snapshot
    /// without connections is valid (a control plane before its first apply): every client is
    /// refused. The content hash is the caller's to check.
    pub fn with_snapshot(
        &self,
        snap: &Snapshot,
        policies: PolicySet,
    ) -> Result<Config, ConfigError> {
        let c = &snap.content;
        let mut auth = self.auth.clone();
        auth.jwt = issuers(snap)?;
        // Keys are checked now (the verifier is built again when the cores take the config),
        // so an unusable JWKS refuses the snapshot instead of failing later.
        TokenVerifier::new(&auth)
            .map_err(|e| ConfigError::new("identity_providers", e.to_string()))?;

        for (i, conn) in c.connections.iter().enumerate() {
            if conn
                .tls_ca
                .as_deref()
                .is_some_and(|ca| !Path::new(ca).is_absolute())
            {
                return Err(ConfigError::new(
                    format!("connections[{i}].tls_ca"),
                    "must be an absolute path on the data plane",
                ));
            }
        }
        let raw_connections = c
            .connections
            .iter()
            .enumerate()
            .map(|(i, conn)| raw_connection(i, conn))
            .collect::<Result<Vec<_>, _>>()?;
        let connections = raw::connections(raw_connections, Path::new("/"))?;
        if connections.is_empty() {
            // Checked first, as the only fault a role can have towards no connections at all.
            if let Some((i, r)) = c
                .roles
                .iter()
                .enumerate()
                .find(|(_, r)| !r.connections.is_empty())
            {
                let conn = r.connections.keys().next().map_or("", String::as_str);
                return Err(ConfigError::new(
                    format!("roles[{i}].connections.{conn}"),
                    "no such connection",
                ));
            }
        }
        // No `policy` yet: the snapshot's policies are assigned below.
        let raw_roles = c.roles.iter().map(raw_role).collect();
        let mut roles = raw::roles(raw_roles, &connections, &PolicySet::default())?;
        let deny_all = Arc::new(Policy::deny_all());
        for (i, (role, src)) in roles.iter_mut().zip(&c.roles).enumerate() {
            role.policy = match &src.policy {
                None => deny_all.clone(),
                Some(name) => policies.get(name).cloned().ok_or_else(|| {
                    ConfigError::new(
                        format!("roles[{i}].policy"),
                        format!("no policy named `{name}`"),
                    )
                })?,
            };
        }
        Ok(Config {
            auth,
            connections,
            roles,
            policies: Arc::new(policies),
            ..self.clone()
        })
    }
}

/// The identity providers that carry their keys, then the control plane's grant issuer.
fn issuers(snap: &Snapshot) -> Result<Vec<JwtIssuerConfig>, ConfigError> {
    let c = &snap.content;
    let mut jwt = Vec::with_capacity(c.identity_providers.len() + 1);
    for (i, idp) in c.identity_providers.iter().enumerate() {
        let Some(jwks) = &idp.jwks else {
            tracing::warn!(
                version = snap.version,
                identity_provider = %idp.name,
                "identity provider has only a jwks_url, which the data plane does not fetch yet; its tokens will be refused"
            );
            continue;
        };
        if idp.issuer.is_empty() {
            return Err(ConfigError::new(
                format!("identity_providers[{i}].issuer"),
                "must not be empty",
            ));
        }
        jwt.push(JwtIssuerConfig {
            issuer: idp.issuer.clone(),
            audience: idp.audience.clone(),
            hs256_secret: None,
            jwks: Some(jwks.clone()),
            jwks_file: None,
            groups_claim: idp.groups_claim.clone(),
            leeway_secs: idp.leeway_secs,
        });
    }
    if !c.grants.issuer.is_empty() {
        jwt.push(JwtIssuerConfig {
            issuer: c.grants.issuer.clone(),
            audience: Vec::new(),
            hs256_secret: None,
            jwks: Some(c.grants.jwks.clone()),
            jwks_file: None,
            groups_claim: GRANT_ROLE_CLAIM.into(),
            leeway_secs: 30,
        });
    }
    Ok(jwt)
}

/// A snapshot connection as a configuration file's; its pool settings are read as a
/// configuration file's `pool:` (unknown keys refused).
fn raw_connection(i: usize, conn: &SnapshotConnection) -> Result<raw::Connection, ConfigError> {
    let pool = serde_json::to_value(&conn.pool)
        .and_then(serde_json::from_value::<raw::Pool>)
        .map_err(|e| ConfigError::new(format!("connections[{i}].pool"), e.to_string()))?;
    Ok(raw::Connection {
        name: conn.name.clone(),
        host: conn.host.clone(),
        port: conn.port,
        database: conn.database.clone(),
        tls: Some(conn.tls.clone()),
        tls_ca: conn.tls_ca.as_ref().map(Into::into),
        pool,
        users: conn
            .users
            .iter()
            .map(|u| raw::User {
                name: u.name.clone(),
                user: Some(u.user.clone()),
                password: u.password.clone(),
            })
            .collect(),
    })
}

fn raw_role(r: &SnapshotRole) -> raw::Role {
    raw::Role {
        name: r.name.clone(),
        subjects: r.subjects.clone(),
        groups: r.groups.clone(),
        connections: r.connections.clone().into_iter().collect(),
        policy: None,
    }
}
