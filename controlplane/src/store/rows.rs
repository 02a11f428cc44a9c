//! Row-level reads and writes, each on a connection or transaction the caller holds.

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::StoreError;
use crate::audit::{AuditBatch, AuditPage, AuditQuery, AuditRecord, StoredAuditRecord};

type Conn = AnyConnection;

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// ---- settings and keys ---------------------------------------------------------------------

pub async fn get_setting(c: &mut Conn, name: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn put_setting(c: &mut Conn, name: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
        .bind(name)
        .bind(value)
        .execute(c)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

/// Sets a setting, replacing its value if it has one.
pub async fn set_setting(c: &mut Conn, name: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(c)
    .await?;
    Ok(())
}

/// The newest signing key: (kid, sealed secret).
pub async fn latest_signing_key(c: &mut Conn) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let row = sqlx::query(
        "SELECT kid, private_key FROM signing_keys ORDER BY created_at DESC, kid LIMIT 1",
    )
    .fetch_optional(c)
    .await?;
    Ok(match row {
        None => None,
        Some(r) => Some((r.try_get("kid")?, r.try_get("private_key")?)),
    })
}

pub async fn insert_signing_key(
    c: &mut Conn,
    kid: &str,
    sealed: &[u8],
    jwk: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_jwk, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(kid)
    .bind(sealed.to_vec())
    .bind(jwk)
    .bind(at)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

// ---- API tokens ----------------------------------------------------------------------------

/// An API token as stored (without the token).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
}

pub async fn token_by_digest(c: &mut Conn, digest: &str) -> Result<Option<ApiToken>, StoreError> {
    let row = sqlx::query(
        "SELECT id, name, role, created_at, created_by FROM api_tokens \
         WHERE digest = $1 AND revoked_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(c)
    .await?;
    row.map(|r| {
        Ok(ApiToken {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            role: r.try_get("role")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
        })
    })
    .transpose()
}

pub async fn insert_token(c: &mut Conn, t: &ApiToken, digest: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_tokens (id, digest, name, role, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.id)
    .bind(digest)
    .bind(&t.name)
    .bind(&t.role)
    .bind(t.created_at)
    .bind(&t.created_by)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

// ---- policy documents and current resources -------------------------------------------------

/// A stored document version.
pub struct DocumentRow {
    pub version: u64,
    pub document: String,
    pub credentials: Vec<u8>,
    pub source: String,
    pub created_at: i64,
    pub created_by: String,
}

/// A document version without its body, for listings.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DocumentVersion {
    pub version: u64,
    pub source: String,
    pub created_at: i64,
    pub created_by: String,
}

pub async fn document(
    c: &mut Conn,
    version: Option<u64>,
) -> Result<Option<DocumentRow>, StoreError> {
    let q = match version {
        Some(v) => sqlx::query(
            "SELECT version, document, credentials, source, created_at, created_by \
             FROM policy_documents WHERE version = $1",
        )
        .bind(i64_of(v)),
        None => sqlx::query(
            "SELECT version, document, credentials, source, created_at, created_by \
             FROM policy_documents ORDER BY version DESC LIMIT 1",
        ),
    };
    let row = q.fetch_optional(c).await?;
    row.map(|r| {
        Ok(DocumentRow {
            version: u64_of(r.try_get("version")?),
            document: r.try_get("document")?,
            credentials: r.try_get("credentials")?,
            source: r.try_get("source")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
        })
    })
    .transpose()
}

pub async fn list_documents(c: &mut Conn) -> Result<Vec<DocumentVersion>, StoreError> {
    let rows = sqlx::query(
        "SELECT version, source, created_at, created_by FROM policy_documents ORDER BY version DESC LIMIT 1000",
    )
    .fetch_all(c)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(DocumentVersion {
                version: u64_of(r.try_get("version")?),
                source: r.try_get("source")?,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            })
        })
        .collect()
}

pub async fn insert_document(c: &mut Conn, d: &DocumentRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_documents (version, document, credentials, source, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(i64_of(d.version))
    .bind(&d.document)
    .bind(d.credentials.clone())
    .bind(&d.source)
    .bind(d.created_at)
    .bind(&d.created_by)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// The resource tables a document fills; replaced whole on every apply.
pub const RESOURCE_TABLES: [&str; 4] = ["connections", "identity_providers", "roles", "policies"];

pub async fn clear_resources(c: &mut Conn) -> Result<(), StoreError> {
    for t in RESOURCE_TABLES {
        sqlx::query(&format!("DELETE FROM {t}"))
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// Inserts one resource row; `credentials` only for connections.
pub async fn insert_resource(
    c: &mut Conn,
    table: &str,
    name: &str,
    spec: &str,
    credentials: Option<Vec<u8>>,
    version: u64,
) -> Result<(), StoreError> {
    let q = match (table, credentials) {
        ("connections", Some(cr)) => sqlx::query(
            "INSERT INTO connections (name, spec, credentials, document_version) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(spec)
        .bind(cr),
        ("identity_providers", None) => sqlx::query(
            "INSERT INTO identity_providers (name, spec, document_version) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(spec),
        ("roles", None) => {
            sqlx::query("INSERT INTO roles (name, spec, document_version) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(spec)
        }
        ("policies", None) => {
            sqlx::query("INSERT INTO policies (name, spec, document_version) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(spec)
        }
        _ => return Err(StoreError::Corrupt(format!("no resource table `{table}`"))),
    };
    q.bind(i64_of(version))
        .execute(c)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

/// Current resources of one kind: (name, spec JSON), sorted by name.
pub async fn list_resources(
    c: &mut Conn,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    if !RESOURCE_TABLES.contains(&table) {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!("SELECT name, spec FROM {table} ORDER BY name"))
        .fetch_all(c)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("spec")?)))
        .collect()
}

// ---- snapshots -------------------------------------------------------------------------------

pub async fn max_snapshot_version(c: &mut Conn) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM snapshots")
        .fetch_one(c)
        .await?;
    Ok(u64_of(v))
}

pub async fn insert_snapshot(
    c: &mut Conn,
    version: u64,
    document_version: u64,
    hash: &str,
    sealed: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO snapshots (version, document_version, content_hash, compiled, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(i64_of(version))
    .bind(i64_of(document_version))
    .bind(hash)
    .bind(sealed.to_vec())
    .bind(at)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// The newest snapshot: (version, sealed compiled bytes).
pub async fn latest_snapshot(c: &mut Conn) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let row = sqlx::query("SELECT version, compiled FROM snapshots ORDER BY version DESC LIMIT 1")
        .fetch_optional(c)
        .await?;
    row.map(|r| Ok((u64_of(r.try_get("version")?), r.try_get("compiled")?)))
        .transpose()
}

// ---- grants ------------------------------------------------------------------------------------

/// A grant as stored (its token is never kept).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: String,
    pub identity: String,
    pub connection: String,
    pub role: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub issued_by: String,
}

pub async fn insert_grant(c: &mut Conn, g: &Grant) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO grants (id, identity, connection, role, issued_at, expires_at, issued_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&g.id)
    .bind(&g.identity)
    .bind(&g.connection)
    .bind(&g.role)
    .bind(g.issued_at)
    .bind(g.expires_at)
    .bind(&g.issued_by)
    .execute(c)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

fn grant_of(r: &sqlx::any::AnyRow) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: r.try_get("id")?,
        identity: r.try_get("identity")?,
        connection: r.try_get("connection")?,
        role: r.try_get("role")?,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        issued_by: r.try_get("issued_by")?,
    })
}

const GRANT_COLS: &str =
    "id, identity, connection, role, issued_at, expires_at, revoked_at, issued_by";

pub async fn grant(c: &mut Conn, id: &str) -> Result<Option<Grant>, StoreError> {
    let row = sqlx::query(&format!("SELECT {GRANT_COLS} FROM grants WHERE id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?;
    row.as_ref().map(grant_of).transpose()
}

/// Grants not yet expired at `now` (revoked ones included), newest first.
pub async fn list_grants(c: &mut Conn, now: i64) -> Result<Vec<Grant>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {GRANT_COLS} FROM grants WHERE expires_at > $1 ORDER BY issued_at DESC LIMIT 1000"
    ))
    .bind(now)
    .fetch_all(c)
    .await?;
    rows.iter().map(grant_of).collect()
}

/// Marks a grant revoked; false if it was already revoked.
pub async fn revoke_grant(c: &mut Conn, id: &str, at: i64) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE grants SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(at)
        .bind(id)
        .execute(c)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Ids of revoked grants that have not expired at `now`.
pub async fn revoked_grant_ids(c: &mut Conn, now: i64) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM grants WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY id",
    )
    .bind(now)
    .fetch_all(c)
    .await?)
}

// ---- nodes -------------------------------------------------------------------------------------

/// A registered data plane.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub address: String,
    /// The snapshot version the node last reported running.
    pub snapshot_version: Option<u64>,
    /// The I/O driver of each core (`io_uring`, `epoll`, ...).
    pub drivers: Vec<String>,
    pub registered_at: i64,
    pub last_seen: i64,
}

pub async fn upsert_node(c: &mut Conn, n: &Node) -> Result<(), StoreError> {
    let drivers = serde_json::to_string(&n.drivers).unwrap_or_else(|_| "[]".into());
    let updated =
        sqlx::query("UPDATE nodes SET address = $1, drivers = $2, last_seen = $3 WHERE id = $4")
            .bind(&n.address)
            .bind(&drivers)
            .bind(n.last_seen)
            .bind(&n.id)
            .execute(&mut *c)
            .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO nodes (id, address, snapshot_version, drivers, registered_at, last_seen) \
             VALUES ($1, $2, NULL, $3, $4, $5)",
        )
        .bind(&n.id)
        .bind(&n.address)
        .bind(&drivers)
        .bind(n.registered_at)
        .bind(n.last_seen)
        .execute(c)
        .await
        .map_err(StoreError::classify)?;
    }
    Ok(())
}

/// Records that a node was seen running `version`; false if the node is unknown.
pub async fn node_seen(c: &mut Conn, id: &str, version: u64, at: i64) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE nodes SET snapshot_version = $1, last_seen = $2 WHERE id = $3")
        .bind(i64_of(version))
        .bind(at)
        .bind(id)
        .execute(c)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn list_nodes(c: &mut Conn) -> Result<Vec<Node>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, address, snapshot_version, drivers, registered_at, last_seen FROM nodes ORDER BY id",
    )
    .fetch_all(c)
    .await?;
    rows.into_iter()
        .map(|r| {
            let drivers: String = r.try_get("drivers")?;
            let v: Option<i64> = r.try_get("snapshot_version")?;
            Ok(Node {
                id: r.try_get("id")?,
                address: r.try_get("address")?,
                snapshot_version: v.map(u64_of),
                drivers: serde_json::from_str(&drivers)
                    .map_err(|e| StoreError::Corrupt(format!("nodes.drivers: {e}")))?,
                registered_at: r.try_get("registered_at")?,
                last_seen: r.try_get("last_seen")?,
            })
        })
        .collect()
}

// ---- audit ------------------------------------------------------------------------------------

/// Columns per audit row; 20 * 400 rows stays under SQLite's bind limit.
const AUDIT_COLS: usize = 20;
const AUDIT_ROWS_PER_INSERT: usize = 400;

/// Stores a batch; returns false (and stores nothing) when its id was seen before.
pub async fn insert_audit_batch(c: &mut Conn, b: &AuditBatch, at: i64) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO audit_batches (batch_id, node_id, records, received_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (batch_id) DO NOTHING",
    )
    .bind(&b.batch_id)
    .bind(&b.node_id)
    .bind(i64::try_from(b.records.len()).unwrap_or(i64::MAX))
    .bind(at)
    .execute(&mut *c)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    for (chunk_no, chunk) in b.records.chunks(AUDIT_ROWS_PER_INSERT).enumerate() {
        let mut sql = String::with_capacity(256 + chunk.len() * 120);
        sql.push_str(
            "INSERT INTO audit_records (batch_id, seq, node_id, at_ms, identity, token_id, grant_id, \
             connection, session_id, statement, verdict, rule_id, review_id, approvers, \
             masked_columns, row_count, byte_count, duration_us, error) VALUES ",
        );
        // 19 bound columns per row (id is generated).
        let per = AUDIT_COLS - 1;
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for j in 0..per {
                if j > 0 {
                    sql.push(',');
                }
                sql.push('$');
                sql.push_str(&(i * per + j + 1).to_string());
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for (i, rec) in chunk.iter().enumerate() {
            let seq = i64::try_from(chunk_no * AUDIT_ROWS_PER_INSERT + i).unwrap_or(i64::MAX);
            q = q
                .bind(b.batch_id.clone())
                .bind(seq)
                .bind(b.node_id.clone())
                .bind(rec.time_ms)
                .bind(rec.identity.clone())
                .bind(rec.token_id.clone())
                .bind(rec.grant_id.clone())
                .bind(rec.connection.clone())
                .bind(rec.session_id.clone())
                .bind(rec.statement.clone())
                .bind(rec.verdict.clone())
                .bind(rec.rule_id.clone())
                .bind(rec.review_id.clone())
                .bind(serde_json::to_string(&rec.approvers).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&rec.masked_columns).unwrap_or_else(|_| "[]".into()))
                .bind(rec.rows)
                .bind(rec.bytes)
                .bind(rec.duration_us)
                .bind(rec.error.clone());
        }
        q.execute(&mut *c).await.map_err(StoreError::classify)?;
    }
    Ok(true)
}

pub async fn count_audit_records(c: &mut Conn) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_records")
        .fetch_one(c)
        .await?)
}

/// One page of audit records matching `q`.
pub async fn query_audit(c: &mut Conn, q: &AuditQuery) -> Result<AuditPage, StoreError> {
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let mut sql = String::from(
        "SELECT id, batch_id, seq, node_id, at_ms, identity, token_id, grant_id, connection, \
         session_id, statement, verdict, rule_id, review_id, approvers, masked_columns, \
         row_count, byte_count, duration_us, error FROM audit_records WHERE 1=1",
    );
    enum B {
        S(String),
        I(i64),
    }
    let mut binds: Vec<B> = Vec::new();
    let mut add = |sql: &mut String, cond: &str, b: B| {
        binds.push(b);
        sql.push_str(&cond.replace('?', &format!("${}", binds.len())));
    };
    if let Some(v) = &q.identity {
        add(&mut sql, " AND identity = ?", B::S(v.clone()));
    }
    if let Some(v) = &q.connection {
        add(&mut sql, " AND connection = ?", B::S(v.clone()));
    }
    if let Some(v) = &q.verdict {
        add(&mut sql, " AND verdict = ?", B::S(v.clone()));
    }
    if let Some(v) = q.from_ms {
        add(&mut sql, " AND at_ms >= ?", B::I(v));
    }
    if let Some(v) = q.to_ms {
        add(&mut sql, " AND at_ms < ?", B::I(v));
    }
    if let Some(v) = &q.text {
        let escaped = v
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        add(
            &mut sql,
            " AND LOWER(statement) LIKE ? ESCAPE '\\'",
            B::S(format!("%{escaped}%")),
        );
    }
    if let Some(v) = q.before {
        add(&mut sql, " AND id < ?", B::I(v));
    }
    let ascending = q.after.is_some();
    if let Some(v) = q.after {
        add(&mut sql, " AND id > ?", B::I(v));
    }
    sql.push_str(if ascending {
        " ORDER BY id ASC"
    } else {
        " ORDER BY id DESC"
    });
    add(&mut sql, " LIMIT ?", B::I(limit));
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            B::S(s) => query.bind(s),
            B::I(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(c).await?;
    let mut records = Vec::with_capacity(rows.len());
    for r in rows {
        let approvers: String = r.try_get("approvers")?;
        let masked: String = r.try_get("masked_columns")?;
        records.push(StoredAuditRecord {
            id: r.try_get("id")?,
            batch_id: r.try_get("batch_id")?,
            node_id: r.try_get("node_id")?,
            record: AuditRecord {
                time_ms: r.try_get("at_ms")?,
                identity: r.try_get("identity")?,
                token_id: r.try_get("token_id")?,
                grant_id: r.try_get("grant_id")?,
                connection: r.try_get("connection")?,
                session_id: r.try_get("session_id")?,
                statement: r.try_get("statement")?,
                verdict: r.try_get("verdict")?,
                rule_id: r.try_get("rule_id")?,
                review_id: r.try_get("review_id")?,
                approvers: serde_json::from_str(&approvers).unwrap_or_default(),
                masked_columns: serde_json::from_str(&masked).unwrap_or_default(),
                rows: r.try_get("row_count")?,
                bytes: r.try_get("byte_count")?,
                duration_us: r.try_get("duration_us")?,
                error: r.try_get("error")?,
            },
        });
    }
    let next_before = if !ascending && i64::try_from(records.len()).unwrap_or(0) == limit {
        records.last().map(|r| r.id)
    } else {
        None
    };
    Ok(AuditPage {
        records,
        next_before,
    })
}

// ---- API audit ---------------------------------------------------------------------------------

/// One change made through the API.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiAuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// Name of the API token used.
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    /// Details as JSON text (never secrets).
    pub detail: String,
}

pub async fn insert_api_audit(
    c: &mut Conn,
    actor: &str,
    role: &str,
    action: &str,
    target: &str,
    detail: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_audit (at_ms, actor, role, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(actor)
    .bind(role)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(c)
    .await?;
    Ok(())
}

/// API-audit rows with an id above `after`, oldest first.
pub async fn api_audit_after(
    c: &mut Conn,
    after: i64,
    limit: i64,
) -> Result<Vec<ApiAuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at_ms, actor, role, action, target, detail FROM api_audit WHERE id > $1 \
         ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(c)
    .await?;
    rows.into_iter().map(|r| api_audit_entry(&r)).collect()
}

pub async fn list_api_audit(c: &mut Conn, limit: i64) -> Result<Vec<ApiAuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at_ms, actor, role, action, target, detail FROM api_audit ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(c)
    .await?;
    rows.into_iter().map(|r| api_audit_entry(&r)).collect()
}

fn api_audit_entry(r: &sqlx::any::AnyRow) -> Result<ApiAuditEntry, StoreError> {
    Ok(ApiAuditEntry {
        id: r.try_get("id")?,
        at_ms: r.try_get("at_ms")?,
        actor: r.try_get("actor")?,
        role: r.try_get("role")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        detail: r.try_get("detail")?,
    })
}
