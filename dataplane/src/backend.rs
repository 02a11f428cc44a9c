//! Server connections: connect, TLS, log in with the gateway's credentials, keep their state.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use sluice_auth::backend::{AuthProgress, BackendAuthenticator, BackendCredentials};
use sluice_pgwire::{backend as msg, encode, frame_len, sqlstate, ProtocolError};

use crate::cancel::BackendKey;
use crate::config::{BackendTls, BackendUser};
use crate::error::BackendError;
use crate::io::{read_frame, write_all, ReadError};
use crate::stream::{BackendStream, MaybeTls};

/// Largest message accepted from a backend while logging in or running the proxy's own queries.
const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Everything needed to open server connections for one (connection, backend user).
#[derive(Clone)]
pub struct Target {
    /// Backend address.
    pub addr: SocketAddr,
    /// Host name, for TLS server name checks.
    pub host: String,
    /// Real database name.
    pub database: String,
    /// Credentials only the gateway holds.
    pub user: BackendUser,
    /// TLS mode.
    pub tls: BackendTls,
    /// TLS client configuration when TLS may be used.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Login time limit.
    pub connect_timeout: Duration,
}

/// Read half of a server connection.
pub type ServerRead = OwnedReadHalf<BackendStream>;
/// Write half of a server connection.
pub type ServerWrite = OwnedWriteHalf<BackendStream>;

/// What the proxy knows about one server connection, beside its socket.
#[derive(Debug)]
pub struct ServerState {
    /// Cancel key of the backend process.
    pub key: BackendKey,
    /// Parameters as the server last reported them (ParameterStatus).
    pub reported: HashMap<String, String>,
    /// Parameters PostgreSQL does not report that the proxy set for a client, as the client
    /// asked for them (its startup parameters): what a client that asked otherwise gets reset.
    pub applied: HashMap<String, String>,
    /// The parameters a client that asks for nothing would be told: what the server reported
    /// at login, with `application_name` as PostgreSQL's default rather than the gateway's.
    pub startup: HashMap<String, String>,
    /// The client that used the connection last (`None` before any): its gateway pid and
    /// cancel secret, so a pid reused after its serial wraps is not taken for the same client.
    pub owner: Option<u64>,
    /// A client ran `SET`/`RESET` on it: settings the proxy does not track may differ from
    /// the defaults until a `RESET ALL`.
    pub dirty: bool,
    /// A client ran `LISTEN` on it: notifications would reach whoever holds it next.
    pub listening: bool,
    /// Ids of statements prepared on this server by the proxy (transaction pooling).
    pub prepared: HashSet<u64>,
    /// When the connection was opened.
    pub created: Instant,
    /// When it was last returned to the pool.
    pub idle_since: Instant,
    /// Pool generation it belongs to; older generations are closed, not reused.
    pub epoch: u64,
    /// The socket's descriptor, to shut it down when a busy connection is abandoned.
    pub fd: std::os::fd::RawFd,
    /// Whether the connection runs TLS (its socket then carries records, not messages).
    pub tls: bool,
}

/// An open, logged-in, idle server connection.
pub struct ServerConn {
    /// Reading side (with any bytes already read).
    pub read: ServerRead,
    /// Read buffer.
    pub rbuf: BytesMut,
    /// Writing side.
    pub write: ServerWrite,
    /// Bookkeeping.
    pub state: ServerState,
}

impl ServerConn {
    /// Opens a connection and logs in; bounded by the target's connect timeout.
    pub async fn connect(target: &Target, epoch: u64) -> Result<ServerConn, BackendError> {
        match monoio::time::timeout(target.connect_timeout, Self::connect_inner(target, epoch))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                addr: target.addr.to_string(),
                secs: target.connect_timeout.as_secs(),
            }),
        }
    }

    async fn connect_inner(target: &Target, epoch: u64) -> Result<ServerConn, BackendError> {
        let tcp = TcpStream::connect_addr(target.addr)
            .await
            .map_err(|source| BackendError::Connect {
                addr: target.addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let mut stream = Self::negotiate_tls(target, tcp).await?;
        let tls = matches!(stream, MaybeTls::Tls(_));

        let mut out = BytesMut::with_capacity(256);
        encode::startup_message(
            &mut out,
            &[
                ("user", &target.user.user),
                ("database", &target.database),
                ("application_name", "sluice"),
            ],
        );
        write_all(&mut stream, out.split().freeze()).await?;

        let mut auth = BackendAuthenticator::new(BackendCredentials {
            user: target.user.user.clone(),
            password: target.user.password.clone(),
        });
        let mut rbuf = BytesMut::with_capacity(8192);
        let mut reported = HashMap::new();
        let mut key = None;
        loop {
            let frame = read_msg(&mut stream, &mut rbuf).await?;
            match msg::parse(&frame)? {
                msg::BackendMessage::Authentication(_) => {
                    let body = &frame[5..];
                    let code =
                        i32::from_be_bytes(body.get(..4).and_then(|b| b.try_into().ok()).ok_or(
                            ProtocolError::Malformed {
                                tag: msg::AUTHENTICATION,
                                what: "missing authentication code",
                            },
                        )?);
                    match auth
                        .on_request(code, &body[4..], &mut out)
                        .map_err(|e| BackendError::Auth(e.to_string()))?
                    {
                        AuthProgress::Continue => {
                            write_all(&mut stream, out.split().freeze()).await?;
                        }
                        AuthProgress::Done => {}
                    }
                }
                msg::BackendMessage::ParameterStatus { name, value } => {
                    reported.insert(name.to_owned(), value.to_owned());
                }
                msg::BackendMessage::BackendKeyData { pid, secret } => {
                    key = Some(BackendKey {
                        addr: target.addr,
                        pid,
                        secret,
                    });
                }
                msg::BackendMessage::ErrorResponse(fields) => {
                    let code = fields.code().unwrap_or(sqlstate::CONNECTION_FAILURE);
                    let message = fields.message().unwrap_or("unknown error").to_owned();
                    if code == sqlstate::INVALID_PASSWORD
                        || code == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
                    {
                        return Err(BackendError::Auth(message));
                    }
                    return Err(BackendError::Refused {
                        code: code.to_owned(),
                        message,
                    });
                }
                msg::BackendMessage::ReadyForQuery { .. } => break,
                // NoticeResponse and NegotiateProtocolVersion need no answer.
                _ => {}
            }
        }
        if !auth.is_done() {
            return Err(BackendError::Auth(
                "server finished login without AuthenticationOk".into(),
            ));
        }
        let key = key.ok_or(ProtocolError::Malformed {
            tag: msg::BACKEND_KEY_DATA,
            what: "server sent no BackendKeyData",
        })?;
        let (read, write) = stream.into_split();
        let now = Instant::now();
        let mut startup = reported.clone();
        startup.insert("application_name".into(), String::new());
        Ok(ServerConn {
            read,
            rbuf,
            write,
            state: ServerState {
                key,
                reported,
                applied: HashMap::new(),
                startup,
                owner: None,
                dirty: false,
                listening: false,
                prepared: HashSet::new(),
                created: now,
                idle_since: now,
                epoch,
                fd,
                tls,
            },
        })
    }

    async fn negotiate_tls(
        target: &Target,
        mut tcp: TcpStream,
    ) -> Result<BackendStream, BackendError> {
        let Some(tls_config) = target.tls_config.clone() else {
            return Ok(MaybeTls::Plain(tcp));
        };
        if target.tls == BackendTls::Disable {
            return Ok(MaybeTls::Plain(tcp));
        }
        let mut req = BytesMut::with_capacity(8);
        encode::ssl_request(&mut req);
        write_all(&mut tcp, req.freeze()).await?;
        // Exactly one byte: anything the server sends after it belongs to the TLS handshake.
        let (res, answer) =
            monoio::io::AsyncReadRentExt::read_exact(&mut tcp, Box::new([0u8; 1])).await;
        res?;
        match answer.first() {
            Some(b'S') => {
                let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                    BackendError::Tls(format!("invalid server name {}: {e}", target.host))
                })?;
                let connector = monoio_rustls::TlsConnector::from(tls_config);
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BackendError::Tls(e.to_string()))?;
                Ok(MaybeTls::Tls(tls))
            }
            Some(b'N') if target.tls == BackendTls::Prefer => Ok(MaybeTls::Plain(tcp)),
            Some(b'N') => Err(BackendError::Tls(
                "the backend does not accept TLS connections".into(),
            )),
            _ => Err(BackendError::Tls("unexpected answer to SSLRequest".into())),
        }
    }

    /// Runs one simple query that returns no rows the client needs (SET, DISCARD ALL, an
    /// empty query), reading until ReadyForQuery. Fails on an ErrorResponse.
    pub async fn run_control_query(&mut self, sql: &str) -> Result<(), BackendError> {
        self.run_control_query_noting(sql, &mut Vec::new()).await
    }

    /// [`Self::run_control_query`], keeping the whole NoticeResponse frames the server sends
    /// in `notices`.
    async fn run_control_query_noting(
        &mut self,
        sql: &str,
        notices: &mut Vec<Bytes>,
    ) -> Result<(), BackendError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode::query(&mut out, sql);
        write_all(&mut self.write, out.freeze()).await?;
        let mut error = None;
        loop {
            let frame = read_msg(&mut self.read, &mut self.rbuf).await?;
            match msg::parse(&frame)? {
                msg::BackendMessage::NoticeResponse(_) => notices.push(frame.clone()),
                msg::BackendMessage::ParameterStatus { name, value } => {
                    self.state.applied.remove(name);
                    self.state
                        .reported
                        .insert(name.to_owned(), value.to_owned());
                }
                msg::BackendMessage::ErrorResponse(fields) if error.is_none() => {
                    error = Some(BackendError::Refused {
                        code: fields.code().unwrap_or(sqlstate::INTERNAL_ERROR).to_owned(),
                        message: fields.message().unwrap_or("unknown error").to_owned(),
                    });
                }
                msg::BackendMessage::CommandComplete { tag } => self.state.completed(tag),
                msg::BackendMessage::ReadyForQuery { status } => {
                    return match error {
                        Some(e) => Err(e),
                        None if status != b'I' => Err(BackendError::Refused {
                            code: sqlstate::INTERNAL_ERROR.into(),
                            message: "server left a transaction open".into(),
                        }),
                        None => Ok(()),
                    };
                }
                _ => {}
            }
        }
    }

    /// Runs a read-only catalog query and returns its rows as text (NULL as `None`).
    /// Bounded: rows larger than 1 MiB or results beyond `max_rows` fail with an error rather
    /// than grow without end.
    pub async fn query_rows(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        const MAX_ROW: usize = 1 << 20;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode::query(&mut out, sql);
        write_all(&mut self.write, out.freeze()).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = read_frame(&mut self.read, &mut self.rbuf, |b| frame_len(b, MAX_ROW))
                .await
                .map_err(|e| match e {
                    ReadError::Closed => BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                    ReadError::Io(e) => BackendError::Io(e),
                    ReadError::Protocol(p) => BackendError::Protocol(p),
                })?;
            if frame[0] == msg::DATA_ROW {
                if rows.len() >= max_rows {
                    error.get_or_insert(BackendError::Refused {
                        code: sqlstate::PROGRAM_LIMIT_EXCEEDED.into(),
                        message: format!("catalog query returned more than {max_rows} rows"),
                    });
                    continue;
                }
                let mut row = Vec::new();
                for range in msg::data_row_ranges(&frame)? {
                    row.push(range?.map(|r| String::from_utf8_lossy(&frame[r]).into_owned()));
                }
                rows.push(row);
                continue;
            }
            match msg::parse(&frame)? {
                msg::BackendMessage::ErrorResponse(fields) if error.is_none() => {
                    error = Some(BackendError::Refused {
                        code: fields.code().unwrap_or(sqlstate::INTERNAL_ERROR).to_owned(),
                        message: fields.message().unwrap_or("unknown error").to_owned(),
                    });
                }
                msg::BackendMessage::ReadyForQuery { .. } => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Makes the connection look to client `owner` (its gateway pid; `None` while it logs
    /// in) as its own backend would: what another client changed undone, the client's
    /// startup parameters (`wanted`) set, and every reported parameter as the client was
    /// told it (`view`, by the server's names). At most two round trips (one to clear
    /// another client's untracked settings and LISTENs), none when nothing differs.
    pub async fn hand_to(
        &mut self,
        owner: Option<u64>,
        wanted: &[(String, String)],
        view: &HashMap<String, String>,
    ) -> Result<(), BackendError> {
        self.hand_to_noting(owner, wanted, view, &mut Vec::new())
            .await
    }

    /// [`Self::hand_to`], keeping the notices the server raised while applying the client's
    /// settings (whole frames), e.g. that a 64-character application_name will be truncated.
    async fn hand_to_noting(
        &mut self,
        owner: Option<u64>,
        wanted: &[(String, String)],
        view: &HashMap<String, String>,
        notices: &mut Vec<Bytes>,
    ) -> Result<(), BackendError> {
        let foreign = owner.is_none() || self.state.owner != owner;
        if foreign && (self.state.dirty || self.state.listening) {
            // RESET ALL leaves the role and the session authorization alone.
            let sql = if self.state.listening {
                "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; UNLISTEN *"
            } else {
                "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL"
            };
            self.run_control_query(sql).await?;
            self.state.applied.clear();
            self.state.dirty = false;
            self.state.listening = false;
        }
        let reported = |name: &str| view.keys().any(|k| k.eq_ignore_ascii_case(name));
        let mut sql = String::new();
        // Settings PostgreSQL does not report: the client's own, and another client's reset.
        for (name, value) in wanted.iter().filter(|(n, _)| !reported(n)) {
            if self.state.applied.get(name) != Some(value) {
                push_set(&mut sql, name, value);
            }
        }
        let stale: Vec<String> = self
            .state
            .applied
            .keys()
            .filter(|k| !wanted.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        for name in &stale {
            sql.push_str("RESET ");
            sql.push_str(name);
            sql.push(';');
        }
        // Reported ones: as the client was told.
        for (name, value) in view {
            let settable = !READ_ONLY_REPORTED.contains(&name.as_str());
            if settable && self.state.reported.get(name) != Some(value) {
                push_set(&mut sql, name, value);
            }
        }
        if !sql.is_empty() {
            // The proxy's own SETs leave nothing a RESET ALL must undo for the next client.
            let dirty = self.state.dirty;
            self.run_control_query_noting(&sql, notices).await?;
            self.state.dirty = dirty;
        }
        for name in stale {
            self.state.applied.remove(&name);
        }
        for (name, value) in wanted.iter().filter(|(n, _)| !reported(n)) {
            self.state.applied.insert(name.clone(), value.clone());
        }
        self.state.owner = owner;
        Ok(())
    }

    /// Prepares the connection for a client logging in with startup parameters `wanted`, and
    /// returns the parameters to report to it: the server's defaults (as a backend of its own
    /// would report them), with what the client asked for, as the server spells them; and the
    /// notices applying them raised, which PostgreSQL sends the client during startup.
    pub async fn hand_to_new_client(
        &mut self,
        wanted: &[(String, String)],
    ) -> Result<(HashMap<String, String>, Vec<Bytes>), BackendError> {
        let mut view = self.state.startup.clone();
        for (name, value) in wanted {
            if let Some(k) = view.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned() {
                view.insert(k, value.clone());
            }
        }
        let mut notices = Vec::new();
        self.hand_to_noting(None, wanted, &view, &mut notices)
            .await?;
        // The values as the server canonicalised them ('iso' is reported as "ISO, MDY").
        for (name, value) in view.iter_mut() {
            if let Some(v) = self.state.reported.get(name) {
                value.clone_from(v);
            }
        }
        Ok((view, notices))
    }
}

/// Reported parameters no client can set (their values are the backend's, the same on every
/// connection of one backend user).
const READ_ONLY_REPORTED: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "is_superuser",
    "session_authorization",
];

impl ServerState {
    /// What a CommandComplete tag says about the connection's session state.
    pub fn completed(&mut self, tag: &str) {
        match tag {
            "SET" | "RESET" => self.dirty = true,
            "LISTEN" => self.listening = true,
            "DISCARD ALL" => {
                self.applied.clear();
                self.prepared.clear();
                self.dirty = false;
                self.listening = false;
            }
            _ => {}
        }
    }
}

/// Appends `SET name = 'value';`.
fn push_set(sql: &mut String, name: &str, value: &str) {
    sql.push_str("SET ");
    sql.push_str(name);
    sql.push_str(" = ");
    push_literal(sql, value);
    sql.push(';');
}

/// Quotes a string as a SQL literal that means the same whatever the connection's
/// standard_conforming_strings (a value with a backslash is written as an `E''` string).
fn push_literal(sql: &mut String, value: &str) {
    if value.contains('\\') {
        sql.push('E');
    }
    sql.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            sql.push(c);
        }
        sql.push(c);
    }
    sql.push('\'');
}

/// Whether a client-supplied parameter name is safe to put in a SET statement.
pub fn valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.as_bytes()[0].is_ascii_digit()
}

async fn read_msg<R: monoio::io::AsyncReadRent>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, BackendError> {
    read_frame(r, buf, |b| frame_len(b, MAX_CONTROL_MESSAGE))
        .await
        .map_err(|e| match e {
            ReadError::Closed => BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            ReadError::Io(e) => BackendError::Io(e),
            ReadError::Protocol(p) => BackendError::Protocol(p),
        })
}

/// Sends a CancelRequest for `key` on a fresh connection, as PostgreSQL expects.
pub async fn send_cancel(key: BackendKey) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect_addr(key.addr).await?;
    let mut out = BytesMut::with_capacity(16);
    encode::cancel_request(&mut out, key.pid, key.secret);
    write_all(&mut tcp, out.freeze()).await?;
    // The server closes the connection after reading the request; wait for that so the
    // cancel is delivered before we report back.
    let _ = monoio::time::timeout(
        Duration::from_secs(2),
        monoio::io::AsyncReadRent::read(&mut tcp, Box::new([0u8; 16])),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_names() {
        let mut s = String::new();
        push_literal(&mut s, "it's");
        assert_eq!(s, "'it''s'");
        s.clear();
        push_literal(&mut s, r"C:\dir's");
        assert_eq!(s, r"E'C:\\dir''s'");
        assert!(valid_param_name("application_name"));
        assert!(valid_param_name("my.setting"));
        assert!(!valid_param_name("x; DROP TABLE t"));
        assert!(!valid_param_name(""));
        assert!(!valid_param_name("1abc"));
    }
}
