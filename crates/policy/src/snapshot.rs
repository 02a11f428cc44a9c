//! The compiled, immutable, versioned snapshot the control plane publishes and data planes load.
//!
//! Only serde, serde_json and sha2 here (no HTTP, no store): both planes speak this format,
//! the control plane when it compiles and serves a snapshot, the data plane when it verifies,
//! persists and loads one. The content hash is SHA-256 over a canonical
//! JSON encoding of [`SnapshotContent`] (object keys sorted at every depth, lists sorted by
//! name when compiled), so equal content always hashes equally, whatever its version.
//!
//! Policies travel twice: as given in the document (`policies`, for people and
//! `GET /v1/snapshot/current`) and compiled (`compiled_policies`: [`CompiledPolicy`], every
//! glob split and folded, every class list a bit mask), which a data plane turns into
//! ready-to-evaluate policies with [`PolicySet::from_compiled`](crate::PolicySet::from_compiled)
//! without parsing YAML or validating again. Both are covered by the content hash. A snapshot
//! without `compiled_policies` (from a control plane before it, or with no policies) hashes
//! exactly as before the field existed, and data planes build its policies from source.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::Policy;

/// A snapshot as delivered to a data plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Increases by one with every change (apply, rollback, revocation).
    pub version: u64,
    /// The policy-document version this snapshot was compiled from.
    pub document_version: u64,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Hex SHA-256 of the canonical encoding of `content`.
    pub content_hash: String,
    /// What the snapshot says; hashed by [`SnapshotContent::content_hash`].
    pub content: SnapshotContent,
}

/// Everything a data plane needs to authenticate, authorize and connect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotContent {
    /// Grants from the control plane: their `iss` and the public keys that verify them.
    pub grants: GrantIssuer,
    /// Backends, sorted by name.
    pub connections: Vec<SnapshotConnection>,
    /// Trusted OIDC issuers, sorted by name.
    pub identity_providers: Vec<SnapshotIdentityProvider>,
    /// Roles, sorted by name.
    pub roles: Vec<SnapshotRole>,
    /// Policies as given in the document, sorted by name: what people read.
    pub policies: Vec<Value>,
    /// The same policies compiled, in the same order: what data planes load. Empty (and then
    /// left out of the encoding, so the hash of older snapshots is unchanged) when the
    /// control plane did not compile them; data planes then build `policies` instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compiled_policies: Vec<CompiledPolicy>,
    /// Ids (`jti`) of revoked grants that have not expired yet, sorted.
    pub revoked_grants: Vec<String>,
}

/// One policy as the control plane compiled it: a validated [`Policy`] without its place in
/// a set (no cache key; not valid until [`PolicySet::from_compiled`](crate::PolicySet::from_compiled)
/// checks it and gives it one). Made only by [`PolicySet::compile`](crate::PolicySet::compile)
/// or by deserializing a snapshot.
///
/// The encoding is the policy's fields by name: `classes` (the decision per class, in the
/// order of [`StatementClass::ALL`](crate::StatementClass::ALL)), `deny`, `allow`,
/// `function_deny` (entries with their rule `id`, a `classes` bit mask, a `target` and
/// compiled globs), `search_path`, the `require_where` and `allow_*` flags, `max_rows`,
/// `review` and `masking`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CompiledPolicy(pub(crate) Policy);

impl CompiledPolicy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }
}

/// The control plane as a token issuer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantIssuer {
    /// The `iss` claim of every grant token.
    pub issuer: String,
    /// A JWKS document: `{"keys": [ {kty: OKP, crv: Ed25519, alg: EdDSA, kid, x} ]}`.
    pub jwks: Value,
}

/// One backend, in the data plane's configuration vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConnection {
    /// Name clients use as their `database`.
    pub name: String,
    /// Backend host.
    pub host: String,
    /// Backend port.
    pub port: u16,
    /// Real database name on the backend.
    pub database: String,
    /// `disable`, `prefer`, `require` or `verify-full`.
    pub tls: String,
    /// CA bundle path on the data plane, for `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// Pool settings as strings, in the data plane's configuration syntax.
    pub pool: std::collections::BTreeMap<String, Value>,
    /// Backend users the gateway logs in as.
    pub users: Vec<SnapshotUser>,
}

/// A backend user with its password, for the data plane only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotUser {
    /// Name roles refer to.
    pub name: String,
    /// The PostgreSQL role name.
    pub user: String,
    /// `None` for trust authentication, or when redacted for an API reader.
    pub password: Option<String>,
}

impl std::fmt::Debug for SnapshotUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotUser")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A trusted OIDC issuer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotIdentityProvider {
    /// Name in the policy document.
    pub name: String,
    /// Must equal the token's `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (any, when empty).
    pub audience: Vec<String>,
    /// Inline JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// Where to fetch the JWKS instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Claim carrying the caller's groups.
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`, in seconds.
    pub leeway_secs: u64,
}

/// Which identities a role covers and what it may reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRole {
    /// Role name.
    pub name: String,
    /// Token subjects that have this role, sorted.
    pub subjects: Vec<String>,
    /// Token groups that have this role, sorted.
    pub groups: Vec<String>,
    /// Connection name → backend user name.
    pub connections: std::collections::BTreeMap<String, String>,
    /// Name of the policy that judges this role's statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl SnapshotContent {
    /// Canonical bytes: JSON with object keys sorted at every depth, no whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("snapshot content always serializes");
        let mut out = Vec::with_capacity(1024);
        write_canonical(&v, &mut out);
        out
    }

    /// Hex SHA-256 of [`SnapshotContent::canonical_bytes`].
    pub fn content_hash(&self) -> String {
        hex(&Sha256::digest(self.canonical_bytes()))
    }

    /// A copy without backend passwords, for API readers.
    pub fn redacted(&self) -> SnapshotContent {
        let mut c = self.clone();
        for conn in &mut c.connections {
            for u in &mut conn.users {
                u.password = None;
            }
        }
        c
    }
}

impl Snapshot {
    /// Wraps content with its version and hash.
    pub fn new(
        version: u64,
        document_version: u64,
        created_at_ms: i64,
        content: SnapshotContent,
    ) -> Self {
        Snapshot {
            version,
            document_version,
            created_at_ms,
            content_hash: content.content_hash(),
            content,
        }
    }

    /// True when the hash matches the content (what a data plane checks before loading).
    pub fn verify_hash(&self) -> bool {
        self.content.content_hash() == self.content_hash
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(k, out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => write_scalar(other, out),
    }
}

/// A key or scalar, escaped as `Value::to_string` escapes it, written straight into `out`.
fn write_scalar<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, v).expect("a string or scalar always serializes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_and_version() {
        let mut a = SnapshotContent::default();
        a.policies
            .push(serde_json::json!({"b": 1, "a": {"y": 2, "x": 1}}));
        let mut b = SnapshotContent::default();
        b.policies
            .push(serde_json::from_str(r#"{"a": {"x": 1, "y": 2}, "b": 1}"#).unwrap());
        assert_eq!(a.content_hash(), b.content_hash());
        let s1 = Snapshot::new(1, 1, 0, a.clone());
        let s2 = Snapshot::new(2, 1, 5, b);
        assert_eq!(s1.content_hash, s2.content_hash);
        assert!(s1.verify_hash());
        a.revoked_grants.push("g".into());
        assert_ne!(a.content_hash(), s1.content_hash);
    }
}
