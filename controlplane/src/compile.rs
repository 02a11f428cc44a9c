//! Compiles a validated document into snapshot content (the policy compiler proper arrives
//! with sluice-policy; policies pass through as given for now).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::document::{Credentials, Document};
use crate::snapshot::{
    GrantIssuer, SnapshotConnection, SnapshotContent, SnapshotIdentityProvider, SnapshotRole,
    SnapshotUser,
};

/// Builds the content of a snapshot. Every list comes out sorted by name.
pub fn compile(
    doc: &Document,
    creds: &Credentials,
    grants: GrantIssuer,
    mut revoked_grants: Vec<String>,
) -> SnapshotContent {
    let mut doc = doc.clone();
    doc.normalize();
    revoked_grants.sort();
    revoked_grants.dedup();
    let connections = doc
        .connections
        .iter()
        .map(|c| {
            let pool: BTreeMap<String, Value> = c
                .pool
                .as_ref()
                .and_then(|p| serde_json::to_value(p).ok())
                .and_then(|v| v.as_object().cloned())
                .map(|m| m.into_iter().collect())
                .unwrap_or_default();
            SnapshotConnection {
                name: c.name.clone(),
                host: c.host.clone(),
                port: c.port,
                database: c.database.clone(),
                tls: c.tls.clone().unwrap_or_else(|| "disable".into()),
                tls_ca: c.tls_ca.clone(),
                pool,
                users: c
                    .users
                    .iter()
                    .map(|u| SnapshotUser {
                        name: u.name.clone(),
                        user: u.user.clone().unwrap_or_else(|| u.name.clone()),
                        password: creds.get(&c.name).and_then(|m| m.get(&u.name)).cloned(),
                    })
                    .collect(),
            }
        })
        .collect();
    let identity_providers = doc
        .identity_providers
        .iter()
        .map(|i| SnapshotIdentityProvider {
            name: i.name.clone(),
            issuer: i.issuer.clone(),
            audience: i.audience.clone(),
            jwks: i.jwks.clone(),
            jwks_url: i.jwks_url.clone(),
            groups_claim: i.groups_claim.clone().unwrap_or_else(|| "groups".into()),
            leeway_secs: i.leeway_secs.unwrap_or(30),
        })
        .collect();
    let roles = doc
        .roles
        .iter()
        .map(|r| {
            let mut subjects = r.subjects.clone();
            subjects.sort();
            let mut groups = r.groups.clone();
            groups.sort();
            SnapshotRole {
                name: r.name.clone(),
                subjects,
                groups,
                connections: r.connections.clone(),
                policy: r.policy.clone(),
            }
        })
        .collect();
    let policies = doc
        .policies
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect();
    SnapshotContent {
        grants,
        connections,
        identity_providers,
        roles,
        policies,
        revoked_grants,
    }
}
