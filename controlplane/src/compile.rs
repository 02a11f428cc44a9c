//! Compiles a validated document into snapshot content: connections, identity providers and
//! roles in the data plane's vocabulary, and policies twice, as given (for people) and
//! compiled by sluice-policy (what data planes load without parsing or validating again).

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_policy::snapshot::CompiledPolicy;
use sluice_policy::PolicySet;

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
    let policies: Vec<Value> = doc
        .policies
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect();
    let compiled_policies = compile_policies(&policies);
    SnapshotContent {
        grants,
        connections,
        identity_providers,
        roles,
        policies,
        compiled_policies,
        revoked_grants,
    }
}

/// The compiled form of `policies`, in their order (so each keeps its index, and its cache
/// key on the data plane). The document was validated with the same builder, so this does
/// not fail; if it did, the snapshot carries the source only and data planes build from it,
/// refusing it with the same error.
fn compile_policies(policies: &[Value]) -> Vec<CompiledPolicy> {
    // JSON is YAML: the builder reads the document as validation read it.
    let src = serde_json::json!({ "policies": policies }).to_string();
    match PolicySet::from_yaml(&src, 0) {
        Ok(set) => set.compile(),
        Err(e) => {
            tracing::error!(error = %e, "a validated policy document did not compile; the snapshot carries its source only");
            Vec::new()
        }
    }
}
