//! `sluice get KIND`: what the control plane holds, as a table per kind of resource (or the
//! API's JSON or YAML with `-o`).

use anyhow::Result;
use clap::ValueEnum;
use serde_json::Value;

use super::output::{self, age, col, count, print_list, print_value, text, wide, Column, Format};

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
    Reviews,
    ApiAudit,
    /// Webhook deliveries.
    Deliveries,
}

impl Kind {
    /// The API path the kind is read from.
    pub fn path(self) -> &'static str {
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
            Kind::Reviews => "/v1/reviews",
            Kind::ApiAudit => "/v1/api-audit",
            Kind::Deliveries => "/v1/notifications/deliveries",
        }
    }

    /// The table's columns.
    fn columns(self) -> &'static [Column] {
        match self {
            Kind::Connections => CONNECTIONS,
            Kind::IdentityProviders => IDENTITY_PROVIDERS,
            Kind::Roles => ROLES,
            Kind::Policies => POLICIES,
            Kind::Document => DOCUMENT,
            Kind::Documents => DOCUMENTS,
            Kind::Snapshot => SNAPSHOT,
            Kind::Grants => GRANTS,
            Kind::Nodes => NODES,
            Kind::Reviews => REVIEWS,
            Kind::ApiAudit => API_AUDIT,
            Kind::Deliveries => DELIVERIES,
        }
    }
}

/// Prints the answer of `GET kind.path()`.
pub fn print(kind: Kind, answer: &Value, format: Format) -> Result<()> {
    match kind {
        Kind::Document | Kind::Snapshot => {
            print_value(answer, std::slice::from_ref(answer), kind.columns(), format)
        }
        _ => print_list(answer, kind.columns(), format),
    }
}

const CONNECTIONS: &[Column] = &[
    col("NAME", |v| text(v, "name")),
    col("HOST", |v| text(v, "host")),
    col("PORT", |v| text(v, "port")),
    col("DATABASE", |v| text(v, "database")),
    col("USERS", |v| names(&v["users"])),
    wide("TLS", |v| text(v, "tls")),
    wide("POOL", |v| compact(&v["pool"])),
];

const IDENTITY_PROVIDERS: &[Column] = &[
    col("NAME", |v| text(v, "name")),
    col("ISSUER", |v| text(v, "issuer")),
    col("AUDIENCE", |v| text(v, "audience")),
    col("KEYS", |v| {
        if v["jwks_url"].is_string() {
            text(v, "jwks_url")
        } else {
            format!("{} inline", count(&v["jwks"], "keys"))
        }
    }),
    wide("GROUPS-CLAIM", |v| text(v, "groups_claim")),
    wide("LEEWAY-S", |v| text(v, "leeway_secs")),
];

const ROLES: &[Column] = &[
    col("NAME", |v| text(v, "name")),
    col("POLICY", |v| text(v, "policy")),
    col("SUBJECTS", |v| text(v, "subjects")),
    col("GROUPS", |v| text(v, "groups")),
    col("CONNECTIONS", |v| pairs(&v["connections"])),
];

const POLICIES: &[Column] = &[
    col("NAME", |v| text(v, "name")),
    col("SECTIONS", |v| {
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| {
                o.keys()
                    .map(String::as_str)
                    .filter(|k| *k != "name")
                    .collect()
            })
            .unwrap_or_default();
        if keys.is_empty() {
            "-".into()
        } else {
            keys.join(",")
        }
    }),
];

const DOCUMENT: &[Column] = &[
    col("VERSION", |v| text(v, "version")),
    col("CONNECTIONS", |v| count(&v["document"], "connections")),
    col("IDENTITY-PROVIDERS", |v| {
        count(&v["document"], "identity_providers")
    }),
    col("ROLES", |v| count(&v["document"], "roles")),
    col("POLICIES", |v| count(&v["document"], "policies")),
    col("NOTIFICATIONS", |v| count(&v["document"], "notifications")),
];

const DOCUMENTS: &[Column] = &[
    col("VERSION", |v| text(v, "version")),
    col("AGE", |v| age(v, "created_at")),
    col("BY", |v| text(v, "created_by")),
    wide("CREATED", |v| utc_at(v, "created_at")),
    wide("BYTES", |v| {
        v["source"].as_str().map_or(0, str::len).to_string()
    }),
];

const SNAPSHOT: &[Column] = &[
    col("VERSION", |v| text(v, "version")),
    col("DOCUMENT", |v| text(v, "document_version")),
    col("AGE", |v| age(v, "created_at_ms")),
    col("HASH", |v| output::cut(&text(v, "content_hash"), 16)),
    wide("CREATED", |v| utc_at(v, "created_at_ms")),
];

const GRANTS: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("IDENTITY", |v| text(v, "identity")),
    col("CONNECTION", |v| text(v, "connection")),
    col("ROLE", |v| text(v, "role")),
    col("STATUS", grant_status),
    col("AGE", |v| age(v, "issued_at")),
    col("EXPIRES", |v| age(v, "expires_at")),
    wide("ISSUED-BY", |v| text(v, "issued_by")),
    wide("ISSUED", |v| utc_at(v, "issued_at")),
];

const NODES: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("ADDRESS", |v| text(v, "address")),
    col("VERSION", |v| text(v, "snapshot_version")),
    col("LAST-SEEN", |v| age(v, "last_seen")),
    col("DRIVERS", |v| text(v, "drivers")),
    wide("REGISTERED", |v| utc_at(v, "registered_at")),
];

/// Reviews, as `sluice review list` prints them.
pub const REVIEWS: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("STATUS", |v| text(v, "status")),
    col("IDENTITY", |v| text(v, "identity")),
    col("CONNECTION", |v| text(v, "connection")),
    col("APPROVALS", |v| {
        format!("{}/{}", count(v, "approvers"), text(v, "min_approvers"))
    }),
    col("AGE", |v| age(v, "created_at")),
    col("STATEMENT", |v| {
        output::cut(&output::one_line(text(v, "statement")), 60)
    }),
    wide("RULE", |v| text(v, "rule_id")),
    wide("ROLE", |v| text(v, "role")),
    wide("APPROVERS", |v| text(v, "approvers")),
];

const API_AUDIT: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("TIME", |v| utc_at(v, "at_ms")),
    col("ACTOR", |v| text(v, "actor")),
    col("ROLE", |v| text(v, "role")),
    col("ACTION", |v| text(v, "action")),
    col("TARGET", |v| text(v, "target")),
    wide("DETAIL", |v| text(v, "detail")),
];

const DELIVERIES: &[Column] = &[
    col("ID", |v| text(v, "id")),
    col("EVENT", |v| text(v, "event")),
    col("WEBHOOK", |v| text(v, "webhook")),
    col("SUBJECT", |v| text(v, "subject")),
    col("STATUS", |v| text(v, "status")),
    col("ATTEMPTS", |v| text(v, "attempts")),
    col("HTTP", |v| text(v, "last_http_status")),
    col("AGE", |v| age(v, "created_at_ms")),
    wide("ERROR", |v| text(v, "last_error")),
    wide("URL", |v| text(v, "url")),
];

/// A grant's state now: revoked, expired or active.
fn grant_status(v: &Value) -> String {
    if !v["revoked_at"].is_null() {
        "revoked".into()
    } else if v["expires_at"]
        .as_i64()
        .is_some_and(|e| e <= output::now_ms())
    {
        "expired".into()
    } else {
        "active".into()
    }
}

/// The `name`s of an array of objects, comma-separated.
fn names(v: &Value) -> String {
    let names: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// An object's entries as `key=value`, comma-separated.
fn pairs(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(",")
    }
}

/// A value as compact JSON, `-` when null.
fn compact(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}

/// The epoch milliseconds at `key` as UTC, `-` when absent.
fn utc_at(v: &Value, key: &str) -> String {
    v[key].as_i64().map_or_else(|| "-".into(), output::utc)
}
