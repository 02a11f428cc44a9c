//! One client connection's start: startup packets, TLS, token authentication, role and
//! connection checks, and the first server connection; then [`crate::session::run`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;
use sluice_auth::scram;
use sluice_auth::token::{fingerprint, Identity, ScramLogin};
use sluice_pgwire::encode::{self, ErrorResponse};
use sluice_pgwire::frontend;
use sluice_pgwire::sqlstate;
use sluice_pgwire::startup::{self, StartupPacket};

use crate::backend::valid_param_name;
use crate::config::{Connection, PoolMode, Role};
use crate::ctx::CoreCtx;
use crate::error::{BackendError, Fatal};
use crate::io::{read_frame, write_all, ReadError};
use crate::loglimit::Admit;
use crate::pool::Pool;
use crate::session::{self, LoggedIn};
use crate::shared::Live;
use crate::stream::{ClientStream, MaybeTls};

/// Largest password message (token) accepted.
const MAX_PASSWORD_MESSAGE: usize = 32 * 1024;

/// Serves one accepted client connection to its end.
pub async fn serve(ctx: Rc<CoreCtx>, tcp: TcpStream, peer: SocketAddr) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let _ = tcp.set_nodelay(true);
    let m = ctx.metrics.clone();
    m.clients_accepted.inc();
    m.clients_active.inc();
    let startup_timeout = ctx.shared.config.limits.startup_timeout;
    let login = monoio::time::timeout(startup_timeout, login(&ctx, tcp, peer)).await;
    match login {
        Err(_) => {
            m.startup_timeouts.inc();
            tracing::info!(%peer, "client did not finish startup in time");
        }
        Ok(None) => {}
        Ok(Some((stream, buf, login))) => session::run(ctx.clone(), stream, buf, login, fd).await,
    }
    m.clients_active.dec();
}

/// Startup and authentication. Returns `None` when the connection is done (a CancelRequest,
/// or a failure already reported to the client).
async fn login(
    ctx: &Rc<CoreCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(ClientStream, BytesMut, LoggedIn)> {
    let mut stream = Some(ClientStream::Plain(tcp));
    let mut buf = BytesMut::with_capacity(1024);
    let result = login_inner(ctx, &mut stream, &mut buf, peer).await;
    let mut stream = stream?;
    match result {
        Ok(Some(l)) => return Some((stream, buf, l)),
        Err(LoginError::Gone) => return None,
        Ok(None) => {}
        Err(LoginError::Fatal(f)) => {
            let mut out = BytesMut::new();
            f.encode(&mut out);
            if write_all(&mut stream, out.freeze()).await.is_err() {
                return None;
            }
        }
    }
    // As PostgreSQL does: a TLS session ends with close_notify (libpq 17 reports a bare close
    // of its TLS cancel connection as "SSL error: unexpected eof"), then the TCP close.
    let _ = stream.shutdown().await;
    None
}

enum LoginError {
    /// The client went away; nothing to say.
    Gone,
    /// Tell the client and close.
    Fatal(Fatal),
}

impl From<Fatal> for LoginError {
    fn from(f: Fatal) -> Self {
        LoginError::Fatal(f)
    }
}

impl From<ReadError> for LoginError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed | ReadError::Io(_) => LoginError::Gone,
            ReadError::Protocol(p) => LoginError::Fatal(p.into()),
        }
    }
}

impl From<std::io::Error> for LoginError {
    fn from(_: std::io::Error) -> Self {
        LoginError::Gone
    }
}

/// A TLS handshake that failed because the client closed or reset the connection.
fn gone_quietly(e: &monoio_rustls::TlsError) -> bool {
    use std::io::ErrorKind;
    matches!(e, monoio_rustls::TlsError::Io(io) if matches!(
        io.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    ))
}

/// What a StartupMessage asked for.
struct Startup {
    /// Session parameters to apply to each server connection.
    wanted: Vec<(String, String)>,
    /// The connection asked for (the `database` parameter, else the user).
    database: String,
    /// The `user` parameter: a static token's login name selects SCRAM.
    user: String,
    /// A NegotiateProtocolVersion to send before the authentication request, if any.
    out: BytesMut,
}

/// Who the client is, by its token.
struct Authenticated {
    identity: Identity,
    /// The just-in-time grant it logged in with, if any.
    grant_id: Option<Arc<str>>,
}

/// What the client may use: its role, the connection, and the pool for the role's backend
/// user there.
struct Authorized<'a> {
    role: &'a Role,
    connection: &'a Connection,
    pool: Rc<Pool>,
}

async fn login_inner(
    ctx: &Rc<CoreCtx>,
    slot: &mut Option<ClientStream>,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<Option<LoggedIn>, LoginError> {
    // Process-level settings are the file's; who may use what comes from the version in
    // force when the client arrives (a snapshot swapped in meanwhile applies to the next login).
    let live = ctx.live();
    let Some(startup) = read_startup(ctx, slot, buf, peer).await? else {
        return Ok(None);
    };
    // `slot` is only empty for the moment of a TLS upgrade.
    let Some(stream) = slot.as_mut() else {
        return Err(LoginError::Gone);
    };
    let who = match live.verifier.scram_login(&startup.user) {
        Some(login) => {
            authenticate_scram(ctx, stream, buf, peer, startup.out, &startup.user, login).await?
        }
        None => authenticate(ctx, &live, stream, buf, peer, startup.out).await?,
    };
    let access = authorize(ctx, &live, &who, &startup.database, peer)?;
    greet(ctx, stream, access, startup.wanted, who, peer)
        .await
        .map(Some)
}

/// Startup packets: SSLRequest / GSSENCRequest / CancelRequest until a StartupMessage, whose
/// parameters are checked. `None` when the connection is done (a CancelRequest).
async fn read_startup(
    ctx: &Rc<CoreCtx>,
    slot: &mut Option<ClientStream>,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<Option<Startup>, LoginError> {
    let shared = &ctx.shared;
    let m = &ctx.metrics;
    let mut tls_tried = false;
    let frame = loop {
        let Some(stream) = slot.as_mut() else {
            return Err(LoginError::Gone);
        };
        let frame = read_frame(stream, buf, startup::startup_frame_len)
            .await
            .inspect_err(|e| match e {
                ReadError::Protocol(_) => m.protocol_errors.inc(),
                // A client that connects and leaves (a port probe, a pool's health check).
                ReadError::Closed | ReadError::Io(_) => {
                    tracing::debug!(%peer, "client left before its startup packet");
                }
            })?;
        match startup::parse_startup(&frame).map_err(Fatal::from)? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if !buf.is_empty() => {
                // Bytes pipelined after an encryption request would bypass it (CVE-2021-23214).
                m.protocol_errors.inc();
                return Err(Fatal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    "unexpected data after an encryption request",
                )
                .into());
            }
            StartupPacket::SslRequest => {
                let acceptor = ctx.tls_acceptor.as_ref().filter(|_| !tls_tried);
                tls_tried = true;
                let Some(current) = slot.take() else {
                    return Err(LoginError::Gone);
                };
                *slot = Some(match (acceptor, current) {
                    (Some(acceptor), MaybeTls::Plain(mut tcp)) => {
                        write_all(&mut tcp, Bytes::from_static(b"S")).await?;
                        match acceptor.accept(tcp).await {
                            Ok(tls) => MaybeTls::Tls(tls),
                            Err(e) if gone_quietly(&e) => {
                                tracing::debug!(%peer, "client left during the TLS handshake");
                                return Err(LoginError::Gone);
                            }
                            Err(e) => {
                                tracing::info!(%peer, error = %e, "TLS handshake with client failed");
                                return Err(LoginError::Gone);
                            }
                        }
                    }
                    (_, mut other) => {
                        let sent = write_all(&mut other, Bytes::from_static(b"N")).await;
                        *slot = Some(other);
                        sent?;
                        continue;
                    }
                });
            }
            StartupPacket::GssEncRequest => {
                // No GSSAPI encryption: the client may go on with an SSLRequest (libpq's cancel
                // connections do, with gssencmode=prefer) or in plain text.
                write_all(stream, Bytes::from_static(b"N")).await?;
            }
            StartupPacket::Terminate => {
                tracing::debug!(%peer, "client left before its startup packet");
                return Err(LoginError::Gone);
            }
            StartupPacket::Cancel { pid, secret } => {
                m.cancel_requests.inc();
                if let Some(key) = shared.cancel.lookup(pid, secret) {
                    if let Err(e) = crate::backend::send_cancel(key).await {
                        tracing::info!(error = %e, "could not deliver a cancel request to the backend");
                    }
                }
                return Ok(None);
            }
            StartupPacket::Startup(_) => break frame,
        }
    };
    let StartupPacket::Startup(params) = startup::parse_startup(&frame).map_err(Fatal::from)?
    else {
        unreachable!("loop breaks only on a StartupMessage");
    };

    let is_tls = matches!(slot, Some(MaybeTls::Tls(_)));
    let loopback = peer.ip().is_loopback();
    if !is_tls && !loopback && shared.config.require_tls_for_non_loopback {
        return Err(Fatal::new(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "connections from the network must use TLS (sslmode=require)",
        )
        .into());
    }
    if params
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        return Err(Fatal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by the gateway",
        )
        .into());
    }
    let wanted = session_params(params.iter())?;
    let database = params.database().or(params.user()).unwrap_or("").to_owned();
    let user = params.user().unwrap_or("").to_owned();

    let mut out = BytesMut::with_capacity(512);
    let unknown_options: Vec<&str> = params
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if params.minor > 0 || !unknown_options.is_empty() {
        encode::negotiate_protocol_version(&mut out, 0, &unknown_options);
    }
    Ok(Some(Startup {
        wanted,
        database,
        user,
        out,
    }))
}

/// The token in the password field: verified, and, for a just-in-time grant, not revoked.
async fn authenticate(
    ctx: &CoreCtx,
    live: &Live,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    mut out: BytesMut,
) -> Result<Authenticated, LoginError> {
    let m = &ctx.metrics;
    encode::authentication_cleartext_password(&mut out);
    write_all(stream, out.freeze()).await?;
    let frame = read_password_frame(ctx, stream, buf).await?;
    let token = frontend::password_cleartext(&frame[5..]).map_err(Fatal::from)?;
    let token = std::str::from_utf8(token).map_err(|_| {
        Fatal::new(
            sqlstate::INVALID_PASSWORD,
            "token authentication failed: token is not UTF-8",
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let identity = match live.verifier.verify(token, now) {
        Ok(id) => id,
        Err(e) => {
            m.auth_failures.inc();
            if let Admit::Log { suppressed } = ctx.auth_log.admit(std::time::Instant::now()) {
                if suppressed > 0 {
                    tracing::warn!(
                        core = ctx.id,
                        suppressed,
                        "client tokens rejected and not logged in the last second (sluice_auth_failures_total counts them all)"
                    );
                }
                tracing::warn!(%peer, token = %fingerprint(token), error = %e, "client token rejected");
            }
            return Err(Fatal::new(
                sqlstate::INVALID_PASSWORD,
                format!("token authentication failed: {e}"),
            )
            .into());
        }
    };
    if !live.grants.is_grant_issuer(&identity.issuer) {
        return Ok(Authenticated {
            identity,
            grant_id: None,
        });
    }
    if live.grants.is_revoked(&identity.token_id) {
        m.auth_failures.inc();
        tracing::warn!(%peer, subject = %identity.subject, grant = %identity.token_id, "revoked grant presented");
        return Err(Fatal::new(
            sqlstate::INVALID_PASSWORD,
            "token authentication failed: the grant has been revoked",
        )
        .into());
    }
    let grant_id = Some(Arc::<str>::from(identity.token_id.as_str()));
    Ok(Authenticated { identity, grant_id })
}

/// SCRAM-SHA-256 for a static token's login name: the client proves it knows the token, which
/// never crosses the wire (so plain TCP is no worse than TLS for the secret itself).
async fn authenticate_scram(
    ctx: &CoreCtx,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    mut out: BytesMut,
    user: &str,
    login: ScramLogin<'_>,
) -> Result<Authenticated, LoginError> {
    let m = &ctx.metrics;
    encode::authentication_sasl(&mut out, &[scram::MECHANISM]);
    write_all(stream, out.split().freeze()).await?;
    let frame = read_password_frame(ctx, stream, buf).await?;
    let initial = frontend::sasl_initial_response(&frame[5..]).map_err(Fatal::from)?;
    if initial.mechanism != scram::MECHANISM {
        m.protocol_errors.inc();
        return Err(Fatal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        )
        .into());
    }
    let failed = |e: scram::ScramError| {
        m.auth_failures.inc();
        tracing::warn!(%peer, %user, error = %e, "client SCRAM authentication failed");
        LoginError::Fatal(Fatal::new(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ))
    };
    let nonce: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect()
    };
    let client_first = initial.data.unwrap_or_default();
    let (exchange, server_first) =
        scram::ScramExchange::start(login.verifier(), client_first, &nonce).map_err(failed)?;
    encode::authentication_sasl_continue(&mut out, server_first.as_bytes());
    write_all(stream, out.split().freeze()).await?;
    let frame = read_password_frame(ctx, stream, buf).await?;
    let server_final = exchange.finish(&frame[5..]).map_err(failed)?;
    encode::authentication_sasl_final(&mut out, server_final.as_bytes());
    write_all(stream, out.freeze()).await?;
    Ok(Authenticated {
        identity: login.identity(),
        grant_id: None,
    })
}

/// The next `'p'` message of an authentication exchange.
async fn read_password_frame(
    ctx: &CoreCtx,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<Bytes, LoginError> {
    let frame = read_frame(stream, buf, |b| {
        sluice_pgwire::frame_len(b, MAX_PASSWORD_MESSAGE)
    })
    .await?;
    if frame[0] != frontend::PASSWORD {
        ctx.metrics.protocol_errors.inc();
        return Err(Fatal::new(sqlstate::PROTOCOL_VIOLATION, "expected a password message").into());
    }
    Ok(frame)
}

/// The role the identity has (a grant's, or the one its subject or groups match), and the
/// connection it asked for, if the role may use it.
fn authorize<'a>(
    ctx: &CoreCtx,
    live: &'a Live,
    who: &Authenticated,
    database: &str,
    peer: SocketAddr,
) -> Result<Authorized<'a>, LoginError> {
    let m = &ctx.metrics;
    let config = &live.config;
    let identity = &who.identity;
    let role = match &who.grant_id {
        // A grant gives exactly the role it names (its `role` claim, the issuer's groups
        // claim), never one its subject might match.
        Some(g) => {
            let named = identity.groups.first().map(String::as_str).unwrap_or("");
            let Some(role) = config.roles.iter().find(|r| r.name == named) else {
                m.auth_failures.inc();
                tracing::warn!(%peer, subject = %identity.subject, grant = %g, role = %named, "grant names a role that does not exist");
                return Err(Fatal::new(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    format!("the grant's role \"{named}\" does not exist"),
                )
                .into());
            };
            role
        }
        None => {
            let Some(role) = config.role_for(&identity.subject, &identity.groups) else {
                m.auth_failures.inc();
                tracing::warn!(%peer, subject = %identity.subject, "no role covers this identity");
                return Err(Fatal::new(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    format!("no role grants access to identity \"{}\"", identity.subject),
                )
                .into());
            };
            role
        }
    };
    if let Some(g) = &who.grant_id {
        // A grant is scoped to one connection.
        let scoped = identity.connection.as_deref().unwrap_or("");
        if scoped != database {
            m.auth_failures.inc();
            tracing::warn!(%peer, subject = %identity.subject, grant = %g, granted = %scoped, asked = %database, "grant used for another connection");
            return Err(Fatal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("the grant is for connection \"{scoped}\", not \"{database}\""),
            )
            .into());
        }
    }
    let Some(connection) = config.connection(database) else {
        return Err(Fatal::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("connection \"{database}\" does not exist"),
        )
        .into());
    };
    let Some(backend_user) = role.connections.get(&connection.name) else {
        tracing::warn!(%peer, subject = %identity.subject, role = %role.name, connection = %connection.name, "role may not use connection");
        return Err(Fatal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\" may not use connection \"{}\"",
                role.name, connection.name
            ),
        )
        .into());
    };
    let pool = ctx.pool_in(live, connection, backend_user);
    Ok(Authorized {
        role,
        connection,
        pool,
    })
}

/// A first server connection (it proves the backend is there, validates the client's session
/// parameters, and gives the ParameterStatus values to report), then AuthenticationOk and the
/// rest of the greeting.
async fn greet(
    ctx: &CoreCtx,
    stream: &mut ClientStream,
    access: Authorized<'_>,
    wanted: Vec<(String, String)>,
    who: Authenticated,
    peer: SocketAddr,
) -> Result<LoggedIn, LoginError> {
    let Authorized {
        role,
        connection,
        pool,
    } = access;
    let shared = &ctx.shared;
    let mut server = match pool.acquire().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, connection = %connection.name, error = %e, "no server connection for a new client");
            return Err(Fatal::from(&e).into());
        }
    };
    let (view, notices) = match server.hand_to_new_client(&wanted).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::info!(%peer, error = %e, "client startup parameters rejected by the backend");
            let fatal = match &e {
                BackendError::Refused { message, .. } => Fatal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup parameter: {message}"),
                ),
                other => Fatal::from(other),
            };
            pool.broken_or_close(server, &e);
            return Err(fatal.into());
        }
    };
    let (pid, secret, slot) = shared.cancel.register(ctx.id);
    let owner = crate::session::owner_token(pid, secret);
    server.state.owner = Some(owner);
    let mut out = BytesMut::with_capacity(512);
    encode::authentication_ok(&mut out);
    // What applying the client's startup parameters raised, where PostgreSQL sends it.
    for n in notices {
        out.extend_from_slice(&n);
    }
    // What the client's own backend would report, not what the pooled one says now.
    let mut reported: Vec<_> = view.iter().collect();
    reported.sort();
    for (name, value) in reported {
        encode::parameter_status(&mut out, name, value);
    }
    encode::backend_key_data(&mut out, pid, secret);
    encode::ready_for_query(&mut out, b'I');
    let server = match pool.config().mode {
        PoolMode::Session => Some(server),
        PoolMode::Transaction => {
            pool.release(server);
            None
        }
    };
    if let Err(e) = write_all(stream, out.freeze()).await {
        shared.cancel.unregister(pid);
        if let Some(s) = server {
            pool.release_after_reset(s).await;
        }
        return Err(e.into());
    }
    let Authenticated { identity, grant_id } = who;
    tracing::debug!(%peer, subject = %identity.subject, role = %role.name, connection = %connection.name, "client logged in");
    let token_id = Arc::<str>::from(identity.token_id.as_str());
    Ok(LoggedIn {
        grant_id,
        token_id,
        policy: role.policy.clone(),
        role: role.name.as_str().into(),
        connection: connection.name.as_str().into(),
        pool,
        wanted,
        view,
        identity,
        pid,
        owner,
        slot,
        server,
        peer,
    })
}

/// Session parameters from the StartupMessage that the proxy applies to each server
/// connection it hands this client (PostgreSQL applies them at backend start).
fn session_params<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(String, String)>, Fatal> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    let mut fallback_app = None;
    let mut app = None;
    for (k, v) in params {
        match k {
            "user" | "database" | "replication" => {}
            k if k.starts_with("_pq_.") => {}
            "fallback_application_name" => fallback_app = Some(v),
            "application_name" => app = Some(v),
            "options" => {
                for (name, value) in parse_options(v)? {
                    wanted.push((name, value));
                }
            }
            k if valid_param_name(k) => wanted.push((k.to_owned(), v.to_owned())),
            k => {
                return Err(Fatal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup parameter name \"{k}\""),
                ));
            }
        }
    }
    if let Some(a) = app.or(fallback_app) {
        wanted.push(("application_name".into(), a.to_owned()));
    }
    wanted.sort();
    wanted.dedup_by(|a, b| a.0 == b.0);
    Ok(wanted)
}

/// The `-c name=value` / `--name=value` settings of the `options` startup parameter.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, Fatal> {
    let mut out = Vec::new();
    let mut words = options.split_ascii_whitespace();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest)
        } else {
            w.strip_prefix("-c")
        };
        let Some((name, value)) = setting.and_then(|s| s.split_once('=')) else {
            return Err(Fatal::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("unsupported startup option \"{w}\" (only -c name=value)"),
            ));
        };
        let name = name.replace('-', "_");
        if !valid_param_name(&name) {
            return Err(Fatal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid setting name \"{name}\" in options"),
            ));
        }
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

/// Refuses a client over the per-core connection limit with 53300, as PostgreSQL does.
pub async fn refuse(mut tcp: TcpStream, why: &str) {
    let mut out = BytesMut::new();
    encode::error_response(
        &mut out,
        &ErrorResponse::fatal(sqlstate::TOO_MANY_CONNECTIONS, why),
    );
    let _ = write_all(&mut tcp, out.freeze()).await;
}
