//! The control plane's operations, independent of HTTP: apply, rollback, grants, nodes,
//! audit ingestion (reviews are in [`crate::reviews`]), and the `watch` channel that carries
//! the current snapshot to long-polls.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::audit::{AuditBatch, VERDICTS};
use crate::compile::compile;
use crate::crypto::{self, MasterKey};
use crate::document::{self, Credentials, Diff, Document, FieldError};
use crate::grants::{GrantClaims, GrantSigner};
use crate::metrics::Metrics;
use crate::notify::{self, Deliveries};
use crate::reviews::ReviewHub;
use crate::snapshot::{GrantIssuer, Snapshot};
use crate::store::{self, now_ms, ApiToken, DocumentRow, Grant, Node, Store, StoreError, WriteTx};

/// Roles an API token can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads configuration, issues and revokes grants, decides reviews.
    Approver,
    /// Reads everything, changes nothing.
    Auditor,
    /// A data plane: registers, long-polls snapshots, ships audit batches, files and uses
    /// reviews.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Node => "node",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "approver" => Role::Approver,
            "auditor" => Role::Auditor,
            "node" => Role::Node,
            _ => return None,
        })
    }
}

/// Who is calling: the API token's name and role.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Why an operation failed, in terms the API maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input parsed but is not valid; every problem with its path.
    #[error("the document is invalid ({} problems)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    /// Authenticated, and the role allows the call, but this caller may not do this (e.g.
    /// approve their own request).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of a control plane.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `iss` of grant tokens; generated and kept in the store when `None`.
    pub issuer: Option<String>,
    /// Bootstrap admin token (from `SLUICE_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// How long a snapshot long-poll waits before answering 204.
    pub long_poll_timeout: Duration,
    /// Largest request body in general.
    pub max_body_bytes: usize,
    /// Largest audit batch body.
    pub max_audit_body_bytes: usize,
    /// Longest grant.
    pub max_grant_ttl: Duration,
    /// Longest a review may stay pending (`expires_in_ms`).
    pub max_review_expiry: Duration,
    /// Longest reuse window an approval may state (`window_s`).
    pub max_review_window: Duration,
    /// How long a single-use approval stays usable after it is approved.
    pub review_approval_ttl: Duration,
    /// How often a review long-poll re-reads the store besides being woken in-process (how
    /// soon it sees a decision taken on another replica).
    pub review_recheck: Duration,
    /// Wait before the second attempt at a webhook delivery; doubled for each further one
    /// (at most 10 min).
    pub notify_backoff: Duration,
    /// Attempts at a webhook delivery before it is marked `failed`.
    pub notify_attempts: u32,
    /// `host:port` of a syslog receiver (TCP) that audit records and API-audit rows are
    /// exported to.
    pub syslog: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: None,
            admin_token: None,
            long_poll_timeout: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            max_audit_body_bytes: 32 << 20,
            max_grant_ttl: Duration::from_secs(24 * 3600),
            max_review_expiry: Duration::from_secs(24 * 3600),
            max_review_window: Duration::from_secs(24 * 3600),
            review_approval_ttl: Duration::from_secs(3600),
            review_recheck: Duration::from_secs(2),
            notify_backoff: Duration::from_secs(1),
            notify_attempts: 8,
            syslog: None,
        }
    }
}

/// The result of an apply (or a dry run).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApplyOutcome {
    /// False for a dry run and when the document changes nothing.
    pub applied: bool,
    pub document_version: u64,
    pub snapshot_version: u64,
    pub diff: Diff,
}

/// `POST /v1/grants` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub identity: String,
    pub connection: String,
    pub role: String,
    /// Like `15m`, `1h`.
    pub ttl: String,
}

/// A new grant and its token (shown once).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantIssued {
    pub id: String,
    pub token: String,
    pub expires_at: i64,
}

/// The node registration body is a wire type, shared with the data plane.
pub use sluice_client::wire::node::NodeRegistration;

/// `POST /v1/tokens` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
}

/// A new API token (shown once).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenIssued {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// The audit batch acknowledgement is a wire type, shared with the data plane.
pub use sluice_client::wire::audit::BatchAck;

/// The control plane: store, keys and the current snapshot.
pub struct ControlPlane {
    store: Store,
    key: MasterKey,
    signer: GrantSigner,
    admin_digest: Option<String>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    pub(crate) reviews: ReviewHub,
    pub(crate) deliveries: Arc<Deliveries>,
    pub metrics: Metrics,
    pub settings: Settings,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.store.backend())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

fn seal_json<T: Serialize>(key: &MasterKey, label: &str, v: &T) -> Vec<u8> {
    key.seal(
        label,
        &serde_json::to_vec(v).expect("in-memory values serialize"),
    )
}

fn open_json<T: serde::de::DeserializeOwned>(
    key: &MasterKey,
    label: &str,
    sealed: &[u8],
) -> Result<T, StoreError> {
    let bytes = key.open(label, sealed)?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{label}: {e}")))
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl ControlPlane {
    /// Loads (or creates on first start) the issuer id, the signing key and the current
    /// snapshot.
    pub async fn start(
        store: Store,
        key: MasterKey,
        settings: Settings,
    ) -> Result<Arc<Self>, StoreError> {
        let mut w = store.write().await?;
        let issuer = match store::get_setting(&mut w.tx, "issuer").await? {
            Some(i) => i,
            None => {
                let i = settings
                    .issuer
                    .clone()
                    .unwrap_or_else(|| format!("sluice-controlplane:{}", uuid::Uuid::new_v4()));
                store::put_setting(&mut w.tx, "issuer", &i).await?;
                i
            }
        };
        let signer = match store::latest_signing_key(&mut w.tx).await? {
            Some((kid, sealed)) => {
                let secret = key.open(&format!("signing-key:{kid}"), &sealed)?;
                let secret: [u8; 32] = secret
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("signing key length".into()))?;
                GrantSigner::from_secret(&secret, issuer)
            }
            None => {
                let s = GrantSigner::generate(issuer);
                let sealed = key.seal(&format!("signing-key:{}", s.kid()), &s.secret());
                store::insert_signing_key(
                    &mut w.tx,
                    s.kid(),
                    &sealed,
                    &s.public_jwk().to_string(),
                    now_ms(),
                )
                .await?;
                tracing::info!(kid = s.kid(), "generated the grant-signing key");
                s
            }
        };
        let admin_digest = settings.admin_token.as_deref().map(crypto::token_digest);
        let current = match store::latest_snapshot(&mut w.tx).await? {
            Some((v, sealed)) => open_json::<Snapshot>(&key, &format!("snapshot:{v}"), &sealed)?,
            None => {
                // The first snapshot: no document yet, but the grant key is already there.
                let content = compile(
                    &Document::default(),
                    &Credentials::new(),
                    grant_issuer(&signer),
                    vec![],
                );
                let snap = Snapshot::new(1, 0, now_ms(), content);
                let sealed = seal_json(&key, "snapshot:1", &snap);
                store::insert_snapshot(&mut w.tx, 1, 0, &snap.content_hash, &sealed, now_ms())
                    .await?;
                snap
            }
        };
        w.commit().await?;
        let metrics = Metrics::default();
        metrics.set_snapshot_version(current.version);
        let (tx, _) = watch::channel(Arc::new(current));
        let cp = Arc::new(ControlPlane {
            store,
            key,
            signer,
            admin_digest,
            snapshot: tx,
            reviews: ReviewHub::default(),
            deliveries: Arc::default(),
            metrics,
            settings,
        });
        notify::spawn(Arc::downgrade(&cp), cp.deliveries.clone());
        if let Some(addr) = cp.settings.syslog.clone() {
            crate::siem::spawn(Arc::downgrade(&cp), addr);
        }
        Ok(cp)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn issuer(&self) -> &str {
        self.signer.issuer()
    }

    /// The snapshot now current.
    pub fn current_snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Who a bearer token belongs to, if anyone.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let digest = crypto::token_digest(token);
        if let Some(admin) = &self.admin_digest {
            if ct_eq(admin, &digest) {
                return Ok(Some(Principal {
                    name: "bootstrap-admin".into(),
                    role: Role::Admin,
                }));
            }
        }
        let mut c = self.store.conn().await?;
        Ok(store::token_by_digest(&mut c, &digest)
            .await?
            .and_then(|t| Role::parse(&t.role).map(|role| Principal { name: t.name, role })))
    }

    /// Creates an API token; the token itself is returned once and only its digest is kept.
    pub async fn create_token(
        &self,
        who: &Principal,
        req: TokenRequest,
    ) -> Result<TokenIssued, ServiceError> {
        if req.name.is_empty() || req.name.len() > 100 {
            return Err(ServiceError::BadRequest(
                "name must be 1-100 characters".into(),
            ));
        }
        let token = crypto::new_token(&format!("sluice_{}", req.role.as_str()));
        let row = ApiToken {
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            role: req.role.as_str().into(),
            created_at: now_ms(),
            created_by: who.name.clone(),
        };
        let mut w = self.store.write().await?;
        store::insert_token(&mut w.tx, &row, &crypto::token_digest(&token)).await?;
        audit_change(
            &mut w,
            who,
            "token.create",
            &row.id,
            serde_json::json!({"name": row.name, "role": row.role}),
        )
        .await?;
        w.commit().await?;
        Ok(TokenIssued {
            id: row.id,
            name: req.name,
            role: req.role,
            token,
        })
    }

    /// The current document (without passwords), its version and credentials.
    pub async fn current_document(&self) -> Result<(u64, Document, Credentials), StoreError> {
        let mut c = self.store.conn().await?;
        self.load_document(&mut c, None).await
    }

    async fn load_document(
        &self,
        c: &mut sqlx::AnyConnection,
        version: Option<u64>,
    ) -> Result<(u64, Document, Credentials), StoreError> {
        match store::document(c, version).await? {
            None => Ok((0, Document::default(), Credentials::new())),
            Some(row) => {
                let doc: Document = serde_json::from_str(&row.document)
                    .map_err(|e| StoreError::Corrupt(format!("document {}: {e}", row.version)))?;
                let creds = open_json(
                    &self.key,
                    &format!("document:{}", row.version),
                    &row.credentials,
                )?;
                Ok((row.version, doc, creds))
            }
        }
    }

    /// Validates a document against the current state and computes what it would change.
    pub async fn plan(
        &self,
        mut doc: Document,
    ) -> Result<(Document, Credentials, Diff), ServiceError> {
        let (_, cur, cur_creds) = self.current_document().await?;
        let creds = doc.validate(&cur_creds).map_err(ServiceError::Invalid)?;
        doc.normalize();
        let diff = Diff::between(&cur, &cur_creds, &doc, &creds);
        Ok((doc, creds, diff))
    }

    /// Applies a whole document atomically as a new version, or rejects it whole.
    pub async fn apply(
        &self,
        who: &Principal,
        doc: Document,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ServiceError> {
        let (doc, creds, diff) = self.plan(doc).await?;
        let cur = self.current_snapshot();
        if dry_run || diff.is_empty() {
            return Ok(ApplyOutcome {
                applied: false,
                document_version: cur.document_version,
                snapshot_version: cur.version,
                diff,
            });
        }
        let mut w = self.store.write().await?;
        // Re-plan under the write lock: another apply may have committed since `plan`.
        let (_, now_doc, now_creds) = self.load_document(&mut w.tx, None).await?;
        let diff = Diff::between(&now_doc, &now_creds, &doc, &creds);
        let (dv, sv) = self
            .commit_document(w, who, &doc, &creds, "apply", &diff)
            .await?;
        self.metrics
            .applies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(ApplyOutcome {
            applied: true,
            document_version: dv,
            snapshot_version: sv,
            diff,
        })
    }

    /// Makes document `version` current again, as a new version.
    pub async fn rollback(
        &self,
        who: &Principal,
        version: u64,
    ) -> Result<ApplyOutcome, ServiceError> {
        let mut w = self.store.write().await?;
        let Some(_) = store::document(&mut w.tx, Some(version)).await? else {
            return Err(ServiceError::NotFound(format!(
                "no policy document version {version}"
            )));
        };
        let (_, old_doc, old_creds) = self.load_document(&mut w.tx, Some(version)).await?;
        let (_, cur_doc, cur_creds) = self.load_document(&mut w.tx, None).await?;
        let diff = Diff::between(&cur_doc, &cur_creds, &old_doc, &old_creds);
        let (dv, sv) = self
            .commit_document(
                w,
                who,
                &old_doc,
                &old_creds,
                &format!("rollback:{version}"),
                &diff,
            )
            .await?;
        Ok(ApplyOutcome {
            applied: true,
            document_version: dv,
            snapshot_version: sv,
            diff,
        })
    }

    /// Writes a new document version, replaces the resource tables, compiles and stores the
    /// snapshot, records the change, commits, then publishes the snapshot.
    async fn commit_document(
        &self,
        mut w: WriteTx,
        who: &Principal,
        doc: &Document,
        creds: &Credentials,
        source: &str,
        diff: &Diff,
    ) -> Result<(u64, u64), ServiceError> {
        let at = now_ms();
        let dv = store::document(&mut w.tx, None)
            .await?
            .map_or(0, |d| d.version)
            + 1;
        store::insert_document(
            &mut w.tx,
            &DocumentRow {
                version: dv,
                document: serde_json::to_string(doc).expect("documents serialize"),
                credentials: seal_json(&self.key, &format!("document:{dv}"), creds),
                source: source.into(),
                created_at: at,
                created_by: who.name.clone(),
            },
        )
        .await?;
        store::clear_resources(&mut w.tx).await?;
        for c in &doc.connections {
            let empty = Default::default();
            let sealed = seal_json(
                &self.key,
                &format!("connection:{}", c.name),
                creds.get(&c.name).unwrap_or(&empty),
            );
            let spec = serde_json::to_string(c).expect("specs serialize");
            store::insert_resource(&mut w.tx, "connections", &c.name, &spec, Some(sealed), dv)
                .await?;
        }
        for i in &doc.identity_providers {
            let spec = serde_json::to_string(i).expect("specs serialize");
            store::insert_resource(&mut w.tx, "identity_providers", &i.name, &spec, None, dv)
                .await?;
        }
        for r in &doc.roles {
            let spec = serde_json::to_string(r).expect("specs serialize");
            store::insert_resource(&mut w.tx, "roles", &r.name, &spec, None, dv).await?;
        }
        for p in &doc.policies {
            let spec = serde_json::to_string(p).expect("specs serialize");
            store::insert_resource(&mut w.tx, "policies", &p.name, &spec, None, dv).await?;
        }
        let snap = self.stage_snapshot(&mut w, dv, doc, creds).await?;
        let detail = serde_json::json!({"document_version": dv, "snapshot_version": snap.version, "diff": diff});
        let action = source.split(':').next().unwrap_or(source);
        audit_change(&mut w, who, action, &format!("document:{dv}"), detail).await?;
        let sv = snap.version;
        self.commit_and_publish(w, snap).await?;
        Ok((dv, sv))
    }

    /// Compiles and stores the next snapshot inside `w`; the caller commits and publishes it.
    async fn stage_snapshot(
        &self,
        w: &mut WriteTx,
        document_version: u64,
        doc: &Document,
        creds: &Credentials,
    ) -> Result<Arc<Snapshot>, ServiceError> {
        let at = now_ms();
        let revoked = store::revoked_grant_ids(&mut w.tx, at).await?;
        let content = compile(doc, creds, grant_issuer(&self.signer), revoked);
        let version = store::max_snapshot_version(&mut w.tx).await? + 1;
        let snap = Snapshot::new(version, document_version, at, content);
        let sealed = seal_json(&self.key, &format!("snapshot:{version}"), &snap);
        store::insert_snapshot(
            &mut w.tx,
            version,
            document_version,
            &snap.content_hash,
            &sealed,
            at,
        )
        .await?;
        Ok(Arc::new(snap))
    }

    /// Commits `w` and publishes `snap` to every long-poll.
    async fn commit_and_publish(
        &self,
        w: WriteTx,
        snap: Arc<Snapshot>,
    ) -> Result<(), ServiceError> {
        w.commit().await?;
        self.publish(snap);
        Ok(())
    }

    fn publish(&self, snap: Arc<Snapshot>) {
        self.metrics.set_snapshot_version(snap.version);
        self.snapshot.send_if_modified(|cur| {
            if snap.version > cur.version {
                *cur = snap;
                true
            } else {
                false
            }
        });
    }

    /// Loads a newer snapshot another replica committed (multi-replica PostgreSQL stores).
    pub async fn refresh_from_store(&self) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let v = store::max_snapshot_version(&mut c).await?;
        if v > self.current_snapshot().version {
            if let Some((v, sealed)) = store::latest_snapshot(&mut c).await? {
                let snap: Snapshot = open_json(&self.key, &format!("snapshot:{v}"), &sealed)?;
                self.publish(Arc::new(snap));
            }
        }
        Ok(())
    }

    /// Waits until a snapshot newer than `after` is current, or `timeout` passes.
    pub async fn wait_snapshot(&self, after: u64, timeout: Duration) -> Option<Arc<Snapshot>> {
        let mut rx = self.snapshot.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let cur = rx.borrow_and_update();
                if cur.version > after {
                    return Some(cur.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    // ---- grants --------------------------------------------------------------------------------

    /// Issues a grant token for an identity, scoped to one connection and role.
    pub async fn issue_grant(
        &self,
        who: &Principal,
        req: GrantRequest,
    ) -> Result<GrantIssued, ServiceError> {
        let ttl = document::parse_duration(&req.ttl).map_err(ServiceError::BadRequest)?;
        if ttl.is_zero() || ttl > self.settings.max_grant_ttl {
            return Err(ServiceError::BadRequest(format!(
                "ttl must be between 1s and {}s",
                self.settings.max_grant_ttl.as_secs()
            )));
        }
        if req.identity.is_empty() {
            return Err(ServiceError::BadRequest(
                "identity must not be empty".into(),
            ));
        }
        let (_, doc, _) = self.current_document().await?;
        let Some(role) = doc.roles.iter().find(|r| r.name == req.role) else {
            return Err(ServiceError::BadRequest(format!(
                "no role named `{}`",
                req.role
            )));
        };
        if !role.connections.contains_key(&req.connection) {
            return Err(ServiceError::BadRequest(format!(
                "role `{}` may not use connection `{}`",
                req.role, req.connection
            )));
        }
        let now = now_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let g = Grant {
            id: uuid::Uuid::new_v4().to_string(),
            identity: req.identity,
            connection: req.connection,
            role: req.role,
            issued_at: now,
            expires_at: now.saturating_add(ttl_ms),
            revoked_at: None,
            issued_by: who.name.clone(),
        };
        let secs = |ms: i64| u64::try_from(ms / 1000).unwrap_or(0);
        let token = self.signer.sign(&GrantClaims {
            iss: self.signer.issuer(),
            sub: &g.identity,
            iat: secs(g.issued_at),
            exp: secs(g.expires_at),
            jti: &g.id,
            connection: &g.connection,
            role: &g.role,
        });
        let mut w = self.store.write().await?;
        store::insert_grant(&mut w.tx, &g).await?;
        let detail = serde_json::json!({"identity": g.identity, "connection": g.connection, "role": g.role, "expires_at": g.expires_at});
        audit_change(&mut w, who, "grant.issue", &g.id, detail).await?;
        let told = notify::enqueue(
            &mut w,
            document::Event::GrantIssued,
            &g.id,
            &serde_json::to_value(&g).unwrap_or_default(),
        )
        .await?;
        w.commit().await?;
        if told {
            self.deliveries.wake();
        }
        Ok(GrantIssued {
            id: g.id,
            token,
            expires_at: g.expires_at,
        })
    }

    /// Revokes a grant; the revocation reaches data planes in the snapshot this creates.
    pub async fn revoke_grant(&self, who: &Principal, id: &str) -> Result<u64, ServiceError> {
        let mut w = self.store.write().await?;
        let Some(g) = store::grant(&mut w.tx, id).await? else {
            return Err(ServiceError::NotFound(format!("no grant `{id}`")));
        };
        if g.revoked_at.is_some() {
            return Ok(self.current_snapshot().version);
        }
        store::revoke_grant(&mut w.tx, id, now_ms()).await?;
        let (dv, doc, creds) = self.load_document(&mut w.tx, None).await?;
        let snap = self.stage_snapshot(&mut w, dv, &doc, &creds).await?;
        audit_change(
            &mut w,
            who,
            "grant.revoke",
            id,
            serde_json::json!({"snapshot_version": snap.version}),
        )
        .await?;
        let v = snap.version;
        self.commit_and_publish(w, snap).await?;
        Ok(v)
    }

    pub async fn list_grants(&self) -> Result<Vec<Grant>, StoreError> {
        let mut c = self.store.conn().await?;
        store::list_grants(&mut c, now_ms()).await
    }

    // ---- nodes ---------------------------------------------------------------------------------

    pub async fn register_node(
        &self,
        who: &Principal,
        reg: NodeRegistration,
    ) -> Result<Node, ServiceError> {
        let id = reg.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if id.is_empty() || id.len() > 100 || reg.address.len() > 300 {
            return Err(ServiceError::BadRequest(
                "id must be 1-100 characters, address at most 300".into(),
            ));
        }
        let now = now_ms();
        let node = Node {
            id,
            address: reg.address,
            snapshot_version: None,
            drivers: reg.drivers,
            registered_at: now,
            last_seen: now,
        };
        let mut w = self.store.write().await?;
        store::upsert_node(&mut w.tx, &node).await?;
        audit_change(
            &mut w,
            who,
            "node.register",
            &node.id,
            serde_json::json!({"address": node.address}),
        )
        .await?;
        w.commit().await?;
        Ok(node)
    }

    /// Records that a node runs `version` (its `after`); false when the node is unknown.
    pub async fn node_seen(&self, id: &str, version: u64) -> Result<bool, StoreError> {
        // Through the write lock like every write, so SQLite never sees two writers.
        let mut w = self.store.write().await?;
        let known = store::node_seen(&mut w.tx, id, version, now_ms()).await?;
        w.commit().await?;
        Ok(known)
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let mut c = self.store.conn().await?;
        store::list_nodes(&mut c).await
    }

    // ---- audit ---------------------------------------------------------------------------------

    /// Stores a batch in one transaction; a batch id seen before stores nothing.
    pub async fn ingest(&self, batch: &AuditBatch) -> Result<BatchAck, ServiceError> {
        if batch.batch_id.is_empty() || batch.batch_id.len() > 200 {
            return Err(ServiceError::BadRequest(
                "batch_id must be 1-200 characters".into(),
            ));
        }
        for (i, r) in batch.records.iter().enumerate() {
            if !VERDICTS.contains(&r.verdict.as_str()) {
                return Err(ServiceError::Invalid(vec![FieldError {
                    path: format!("records[{i}].verdict"),
                    message: format!("`{}` is not one of allow, deny, review", r.verdict),
                }]));
            }
        }
        let mut w = self.store.write().await?;
        let fresh = store::insert_audit_batch(&mut w.tx, batch, now_ms()).await?;
        let told = fresh && self.tell_denials(&mut w, batch).await?;
        w.commit().await?;
        if told {
            self.deliveries.wake();
        }
        let stored = if fresh { batch.records.len() } else { 0 };
        self.metrics
            .audit_records
            .fetch_add(stored as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .audit_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(BatchAck {
            batch_id: batch.batch_id.clone(),
            stored,
            duplicate: !fresh,
        })
    }
}

impl ControlPlane {
    /// Queues `statement.denied` for each denied statement of a newly stored batch.
    async fn tell_denials(&self, w: &mut WriteTx, batch: &AuditBatch) -> Result<bool, StoreError> {
        let denied: Vec<(String, serde_json::Value)> = batch
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.verdict == "deny")
            .map(|(i, r)| {
                let mut data = serde_json::to_value(r).unwrap_or_default();
                data["node_id"] = batch.node_id.clone().into();
                (format!("{}#{i}", batch.batch_id), data)
            })
            .collect();
        notify::enqueue_many(w, document::Event::StatementDenied, &denied).await
    }
}

fn grant_issuer(signer: &GrantSigner) -> GrantIssuer {
    GrantIssuer {
        issuer: signer.issuer().to_owned(),
        jwks: serde_json::json!({"keys": [signer.public_jwk()]}),
    }
}

/// Records a change made through the API, inside the change's own transaction.
pub(crate) async fn audit_change(
    w: &mut WriteTx,
    who: &Principal,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    store::insert_api_audit(
        &mut w.tx,
        &who.name,
        who.role.as_str(),
        action,
        target,
        &detail.to_string(),
        now_ms(),
    )
    .await
}
