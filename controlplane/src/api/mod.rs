//! The HTTP API under `/v1` (axum), its bearer-token auth, metrics and OpenAPI document.
//!
//! Every answer that is not a success is JSON ([`error::ErrorBody`]), including the ones axum
//! and tower-http produce themselves (413 for an oversized body, 400 for a bad query string):
//! a last layer rewrites any non-JSON error body into the same shape.

pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::audit::{AuditBatch, AuditPage, AuditQuery};
use crate::document::{self, Document, Format};
use crate::reviews::{
    ConsumeRequest, DecisionKind, DecisionRequest, ListParams, Review, ReviewRequest, WaitParams,
};
use crate::service::{
    ApplyOutcome, BatchAck, ControlPlane, GrantIssued, GrantRequest, NodeRegistration, Principal,
    Role, ServiceError, TokenIssued, TokenRequest,
};
use crate::store::notifications::{self, Delivery};
use crate::store::{self, ApiAuditEntry, DocumentVersion, Grant, Node};
use error::{ApiError, ErrorBody};

type Cp = Arc<ControlPlane>;
type ApiResult<T> = Result<T, ApiError>;

/// The caller, authenticated from `Authorization: Bearer ...`.
pub struct Auth(pub Principal);

impl FromRequestParts<Cp> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &Cp) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer <token>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        match cp.authenticate(token).await? {
            Some(p) => Ok(Auth(p)),
            None => Err(ApiError::unauthorized("unknown or revoked API token")),
        }
    }
}

fn require(p: &Principal, allowed: &[Role]) -> ApiResult<()> {
    if allowed.contains(&p.role) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(format!(
            "this needs role {}; the token `{}` has role {}",
            names.join(" or "),
            p.name,
            p.role.as_str()
        )))
    }
}

const READERS: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];
const ADMIN: &[Role] = &[Role::Admin];
const GRANTERS: &[Role] = &[Role::Admin, Role::Approver];
const NODES: &[Role] = &[Role::Admin, Role::Node];
const AUDIT_READERS: &[Role] = &[Role::Admin, Role::Auditor];
const ANYONE: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor, Role::Node];

/// Builds the router.
pub fn router(cp: Cp) -> Router {
    let general = cp.settings.max_body_bytes;
    let audit_limit = cp.settings.max_audit_body_bytes;
    let api = Router::new()
        .route("/v1/connections", get(list_connections))
        .route("/v1/identity-providers", get(list_identity_providers))
        .route("/v1/roles", get(list_roles))
        .route("/v1/policies", get(list_policies))
        .route("/v1/document", get(get_document))
        .route("/v1/documents", get(list_documents))
        .route("/v1/apply", post(apply))
        .route("/v1/rollback/{version}", post(rollback))
        .route("/v1/snapshot/current", get(current_snapshot))
        .route("/v1/grants", post(issue_grant).get(list_grants))
        .route("/v1/grants/{id}", delete(revoke_grant))
        .route("/v1/nodes", post(register_node).get(list_nodes))
        .route("/v1/nodes/{id}/snapshot", get(node_snapshot))
        .route("/v1/audit", get(query_audit))
        .route("/v1/api-audit", get(api_audit))
        .route("/v1/notifications/deliveries", get(list_deliveries))
        .route("/v1/tokens", post(create_token))
        .route("/v1/reviews", post(create_review).get(list_reviews))
        .route("/v1/reviews/consume", post(consume_review))
        .route("/v1/reviews/{id}", get(get_review))
        .route("/v1/reviews/{id}/wait", get(wait_review))
        .route("/v1/reviews/{id}/approve", post(approve_review))
        .route("/v1/reviews/{id}/deny", post(deny_review))
        .layer(RequestBodyLimitLayer::new(general));
    let ingest = Router::new()
        .route("/v1/audit/batches", post(ingest_batch))
        .layer(RequestBodyLimitLayer::new(audit_limit));
    let open = Router::new()
        .route("/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
    Router::new()
        .merge(api)
        .merge(ingest)
        .merge(open)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(cp.clone(), observe))
        .with_state(cp)
}

/// Counts requests by route and status, and turns non-JSON error bodies into JSON ones.
async fn observe(State(cp): State<Cp>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let resp = next.run(req).await;
    let status = resp.status();
    cp.metrics.request(&method, &route, status.as_u16());
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (_, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let (code, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => (
                "body_too_large",
                "request body is larger than this endpoint accepts".to_owned(),
            ),
            _ => (
                "bad_request",
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                },
            ),
        };
        let mut resp = ApiError::new(status, code, message).into_response();
        close_if_body_unread(&mut resp, has_body);
        return resp;
    }
    let mut resp = resp;
    if status.is_client_error() || status.is_server_error() {
        close_if_body_unread(&mut resp, has_body);
    }
    resp
}

/// An error answered to a request with a body may come before the body was read (a rejected
/// token, an extractor's rejection), and hyper does not reuse a connection with an unread
/// body: say so, or the client's next request on it (from its pool) finds the connection gone.
fn close_if_body_unread(resp: &mut Response, has_body: bool) {
    if has_body {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cp: Cp,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(cp);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves the API over TLS only on `listener` until `shutdown` resolves: a client that does
/// not complete a handshake (plain HTTP included) is dropped and never reaches the router.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cp: Cp,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let app = router(cp);
    // `tap_io` only so that axum's `ConnectInfo<SocketAddr>` applies to this listener.
    let listener = TlsListener::new(listener, tls)?.tap_io(|_| {});
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The API's TLS configuration from PEM files (rustls with ring, through the data plane's own
/// builder); ALPN offers `http/1.1`, the only protocol served.
pub fn tls_server_config(
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, sluice_auth::tls::TlsConfigError> {
    let mut config = (*sluice_auth::tls::server_config(cert_pem, key_pem)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a TCP connection has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, accepting waits.
const TLS_MAX_HANDSHAKES: usize = 256;

/// A TLS listener for `axum::serve`: a task accepts TCP connections and runs each handshake on
/// a task of its own (bounded in time and number), so a slow or silent client never holds up
/// the next one; finished handshakes queue for axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl TlsListener {
    /// Must run inside the runtime: it spawns the accept task.
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(TLS_MAX_HANDSHAKES));
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, as axum does.
                        tracing::warn!(error = %e, "accepting an API connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it only does when this listener is gone): nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

fn document_format(headers: &HeaderMap, body: &[u8]) -> Format {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.contains("yaml") {
        Format::Yaml
    } else if ct.contains("json") || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Format::Json
    } else {
        Format::Yaml
    }
}

// ---- resources -----------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/connections", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = [document::ConnectionSpec], description = "Connections (passwords are never returned)"),
              (status = 401, body = ErrorBody)))]
async fn list_connections(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<document::ConnectionSpec>>> {
    require(&p, READERS)?;
    Ok(Json(cp.current_document().await?.1.connections))
}

#[utoipa::path(get, path = "/v1/identity-providers", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = [document::IdentityProviderSpec]), (status = 401, body = ErrorBody)))]
async fn list_identity_providers(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<document::IdentityProviderSpec>>> {
    require(&p, READERS)?;
    Ok(Json(cp.current_document().await?.1.identity_providers))
}

#[utoipa::path(get, path = "/v1/roles", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = [document::RoleSpec]), (status = 401, body = ErrorBody)))]
async fn list_roles(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<document::RoleSpec>>> {
    require(&p, READERS)?;
    Ok(Json(cp.current_document().await?.1.roles))
}

#[utoipa::path(get, path = "/v1/policies", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = [document::PolicySpec]), (status = 401, body = ErrorBody)))]
async fn list_policies(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<document::PolicySpec>>> {
    require(&p, READERS)?;
    Ok(Json(cp.current_document().await?.1.policies))
}

/// The current document and its version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CurrentDocument {
    pub version: u64,
    pub document: Document,
}

#[utoipa::path(get, path = "/v1/document", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = CurrentDocument), (status = 401, body = ErrorBody)))]
async fn get_document(State(cp): State<Cp>, Auth(p): Auth) -> ApiResult<Json<CurrentDocument>> {
    require(&p, READERS)?;
    let (version, document, _) = cp.current_document().await?;
    Ok(Json(CurrentDocument { version, document }))
}

#[utoipa::path(get, path = "/v1/documents", tag = "config", security(("bearer" = [])),
    responses((status = 200, body = [DocumentVersion]), (status = 401, body = ErrorBody)))]
async fn list_documents(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<DocumentVersion>>> {
    require(&p, READERS)?;
    let mut c = cp.store().conn().await?;
    Ok(Json(store::list_documents(&mut c).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApplyParams {
    /// Validate and return the diff without applying.
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(post, path = "/v1/apply", tag = "config", security(("bearer" = [])), params(ApplyParams),
    request_body(content = Document, description = "The whole document, JSON or YAML (application/yaml)"),
    responses((status = 200, body = ApplyOutcome, description = "Applied as a new version (or the dry-run diff)"),
              (status = 400, body = ErrorBody, description = "Malformed JSON/YAML or an unknown field"),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody, description = "Invalid: every problem with its path; nothing applied")))]
async fn apply(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Query(params): Query<ApplyParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApplyOutcome>> {
    require(&p, ADMIN)?;
    let doc =
        document::parse(&body, document_format(&headers, &body)).map_err(ApiError::malformed)?;
    Ok(Json(cp.apply(&p, doc, params.dry_run).await?))
}

#[utoipa::path(post, path = "/v1/rollback/{version}", tag = "config", security(("bearer" = [])),
    params(("version" = u64, Path, description = "Policy-document version to make current again")),
    responses((status = 200, body = ApplyOutcome), (status = 404, body = ErrorBody)))]
async fn rollback(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(version): Path<u64>,
) -> ApiResult<Json<ApplyOutcome>> {
    require(&p, ADMIN)?;
    Ok(Json(cp.rollback(&p, version).await?))
}

#[utoipa::path(get, path = "/v1/snapshot/current", tag = "snapshots", security(("bearer" = [])),
    responses((status = 200, body = Object, description = "The current snapshot, backend passwords removed")))]
async fn current_snapshot(
    State(cp): State<Cp>,
    Auth(p): Auth,
) -> ApiResult<Json<crate::snapshot::Snapshot>> {
    require(&p, READERS)?;
    let mut s = (*cp.current_snapshot()).clone();
    s.content = s.content.redacted();
    Ok(Json(s))
}

// ---- grants ----------------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/grants", tag = "grants", security(("bearer" = [])), request_body = GrantRequest,
    responses((status = 201, body = GrantIssued, description = "The grant and its token (shown once)"), (status = 400, body = ErrorBody)))]
async fn issue_grant(
    State(cp): State<Cp>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<GrantIssued>)> {
    require(&p, GRANTERS)?;
    let req: GrantRequest = parse_json(&body)?;
    Ok((StatusCode::CREATED, Json(cp.issue_grant(&p, req).await?)))
}

#[utoipa::path(get, path = "/v1/grants", tag = "grants", security(("bearer" = [])),
    responses((status = 200, body = [Grant], description = "Grants that have not expired")))]
async fn list_grants(State(cp): State<Cp>, Auth(p): Auth) -> ApiResult<Json<Vec<Grant>>> {
    require(&p, READERS)?;
    Ok(Json(cp.list_grants().await?))
}

/// Answer to a revocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub id: String,
    /// The first snapshot version that lists the revocation.
    pub snapshot_version: u64,
}

#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "grants", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Revoked), (status = 404, body = ErrorBody)))]
async fn revoke_grant(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Revoked>> {
    require(&p, GRANTERS)?;
    let snapshot_version = cp.revoke_grant(&p, &id).await?;
    Ok(Json(Revoked {
        id,
        snapshot_version,
    }))
}

// ---- nodes ---------------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), request_body = NodeRegistration,
    responses((status = 200, body = Node)))]
async fn register_node(State(cp): State<Cp>, Auth(p): Auth, body: Bytes) -> ApiResult<Json<Node>> {
    require(&p, NODES)?;
    let reg: NodeRegistration = parse_json(&body)?;
    Ok(Json(cp.register_node(&p, reg).await?))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), responses((status = 200, body = [Node])))]
async fn list_nodes(State(cp): State<Cp>, Auth(p): Auth) -> ApiResult<Json<Vec<Node>>> {
    require(&p, READERS)?;
    Ok(Json(cp.list_nodes().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// The version the node runs now (0 for none); also recorded as the node's applied version.
    #[serde(default)]
    pub after: u64,
    /// How long to wait, in ms (at most the server's long-poll timeout, ~30 s).
    pub timeout_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/nodes/{id}/snapshot", tag = "nodes", security(("bearer" = [])),
    params(("id" = String, Path), PollParams),
    responses((status = 200, body = Object, description = "A snapshot newer than `after`, with backend credentials"),
              (status = 204, description = "Nothing newer before the timeout; ask again"),
              (status = 404, body = ErrorBody, description = "Unknown node: register first")))]
async fn node_snapshot(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<PollParams>,
) -> ApiResult<Response> {
    require(&p, NODES)?;
    if !cp.node_seen(&id, q.after).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("node `{id}` is not registered"),
        ));
    }
    let max = cp.settings.long_poll_timeout;
    let wait = q
        .timeout_ms
        .map_or(max, |ms| Duration::from_millis(ms).min(max));
    Ok(match cp.wait_snapshot(q.after, wait).await {
        Some(s) => Json(&*s).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

// ---- audit ---------------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/audit/batches", tag = "audit", security(("bearer" = [])), request_body = AuditBatch,
    responses((status = 200, body = BatchAck, description = "Stored durably (or a batch seen before: stored nothing)"),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn ingest_batch(
    State(cp): State<Cp>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<Json<BatchAck>> {
    require(&p, NODES)?;
    let mut buf = body.to_vec();
    let batch: AuditBatch = simd_json::serde::from_slice(&mut buf)
        .map_err(|e| ApiError::bad_request(format!("malformed audit batch: {e}")))?;
    Ok(Json(cp.ingest(&batch).await?))
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage)))]
async fn query_audit(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    require(&p, AUDIT_READERS)?;
    let mut c = cp.store().conn().await?;
    Ok(Json(store::query_audit(&mut c, &q).await?))
}

#[utoipa::path(get, path = "/v1/api-audit", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = [ApiAuditEntry], description = "Changes made through the API, newest first")))]
async fn api_audit(State(cp): State<Cp>, Auth(p): Auth) -> ApiResult<Json<Vec<ApiAuditEntry>>> {
    require(&p, AUDIT_READERS)?;
    let mut c = cp.store().conn().await?;
    Ok(Json(store::list_api_audit(&mut c, 1000).await?))
}

/// `GET /v1/notifications/deliveries` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only deliveries with this status: pending, delivered or failed.
    pub status: Option<String>,
    /// At most this many, newest first (1-1000, default 100).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/notifications/deliveries", tag = "notifications", security(("bearer" = [])), params(DeliveryParams),
    responses((status = 200, body = [Delivery], description = "Webhook deliveries, newest first: one per event and webhook, with its attempts"),
              (status = 400, body = ErrorBody)))]
async fn list_deliveries(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Query(q): Query<DeliveryParams>,
) -> ApiResult<Json<Vec<Delivery>>> {
    require(&p, AUDIT_READERS)?;
    if let Some(s) = q.status.as_deref() {
        if !["pending", "delivered", "failed"].contains(&s) {
            return Err(ServiceError::BadRequest(format!(
                "status must be pending, delivered or failed, not `{s}`"
            ))
            .into());
        }
    }
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let mut c = cp.store().conn().await?;
    Ok(Json(
        notifications::list_deliveries(&mut c, q.status.as_deref(), limit).await?,
    ))
}

// ---- reviews -------------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/reviews", tag = "reviews", security(("bearer" = [])), request_body = ReviewRequest,
    responses((status = 201, body = Review, description = "Filed as a new pending review"),
              (status = 200, body = Review, description = "The live review for the same identity, connection and statement (pending, or approved and unused)"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Review>)> {
    require(&p, NODES)?;
    let req: ReviewRequest = parse_json(&body)?;
    let (review, created) = cp.create_review(&p, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(review)))
}

#[utoipa::path(get, path = "/v1/reviews", tag = "reviews", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = [Review], description = "Reviews by their status now, newest first")))]
async fn list_reviews(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Query(q): Query<ListParams>,
) -> ApiResult<Json<Vec<Review>>> {
    require(&p, READERS)?;
    Ok(Json(cp.list_reviews(&q).await?))
}

#[utoipa::path(get, path = "/v1/reviews/{id}", tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Review), (status = 404, body = ErrorBody)))]
async fn get_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Review>> {
    require(&p, ANYONE)?;
    Ok(Json(cp.review(&id).await?))
}

#[utoipa::path(get, path = "/v1/reviews/{id}/wait", tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path), WaitParams),
    responses((status = 200, body = Review, description = "As soon as it is no longer pending, or still pending after the timeout"),
              (status = 404, body = ErrorBody)))]
async fn wait_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<WaitParams>,
) -> ApiResult<Json<Review>> {
    require(&p, ANYONE)?;
    let max = cp.settings.long_poll_timeout;
    let wait = q
        .timeout_ms
        .map_or(max, |ms| Duration::from_millis(ms).min(max));
    Ok(Json(cp.wait_review(&id, wait).await?))
}

/// An approve or deny body; empty means no comment and no window.
fn decision_body(body: &[u8]) -> ApiResult<DecisionRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(DecisionRequest::default())
    } else {
        parse_json(body)
    }
}

#[utoipa::path(post, path = "/v1/reviews/{id}/approve", tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path)), request_body(content = DecisionRequest, description = "Optional: a comment, and a window (s) during which the approval may be used repeatedly (else once)"),
    responses((status = 200, body = Review, description = "Approved once enough distinct approvers have; else still pending"),
              (status = 403, body = ErrorBody, description = "Not an approver, or the approver is the identity that sent the statement"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Not pending any more, or this approver already decided")))]
async fn approve_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Review>> {
    require(&p, GRANTERS)?;
    let req = decision_body(&body)?;
    Ok(Json(
        cp.decide_review(&p, &id, DecisionKind::Approve, req)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/reviews/{id}/deny", tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path)), request_body(content = DecisionRequest, description = "Optional: a comment"),
    responses((status = 200, body = Review, description = "Denied"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "Not pending any more")))]
async fn deny_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Review>> {
    require(&p, GRANTERS)?;
    let req = decision_body(&body)?;
    Ok(Json(
        cp.decide_review(&p, &id, DecisionKind::Deny, req).await?,
    ))
}

#[utoipa::path(post, path = "/v1/reviews/consume", tag = "reviews", security(("bearer" = [])), request_body = ConsumeRequest,
    responses((status = 200, body = Review, description = "The approval used: `used` if single-use, still `approved` within its window"),
              (status = 404, body = ErrorBody, description = "No usable approval for exactly this statement, identity and connection")))]
async fn consume_review(
    State(cp): State<Cp>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<Json<Review>> {
    require(&p, NODES)?;
    let req: ConsumeRequest = parse_json(&body)?;
    match cp.consume_review(&p, &req).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_approval",
            "no usable approval for exactly this statement, identity and connection",
        )),
    }
}

// ---- tokens, docs, metrics -----------------------------------------------------------------

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = TokenRequest,
    responses((status = 201, body = TokenIssued, description = "The token (shown once; only its digest is kept)")))]
async fn create_token(
    State(cp): State<Cp>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TokenIssued>)> {
    require(&p, ADMIN)?;
    let req: TokenRequest = parse_json(&body)?;
    Ok((StatusCode::CREATED, Json(cp.create_token(&p, req).await?)))
}

async fn metrics(State(cp): State<Cp>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Body::from(cp.metrics.render()),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_json().unwrap_or_default(),
    )
        .into_response()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("malformed JSON at {path}: {}", e.inner()))
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(v)
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document served at `/v1/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice control plane", description = "Configure Sluice: connections, identity providers, roles, policies, grants, reviews, webhook notifications, data-plane nodes and audit records."),
    paths(list_connections, list_identity_providers, list_roles, list_policies, get_document, list_documents,
          apply, rollback, current_snapshot, issue_grant, list_grants, revoke_grant, register_node, list_nodes,
          node_snapshot, ingest_batch, query_audit, api_audit, list_deliveries, create_token,
          create_review, list_reviews, get_review, wait_review, approve_review, deny_review, consume_review),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
