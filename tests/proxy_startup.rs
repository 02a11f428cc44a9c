//! The startup phase as clients really use it, with raw clients where drivers cannot show it:
//! clients that leave before starting, and CancelRequests sent inside TLS (libpq 17's
//! `PQcancelCreate`: GSSENCRequest, SSLRequest, then the CancelRequest over TLS), and
//! SCRAM-SHA-256 towards clients for a static token's login name.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use common::gateway::{
    generate_pki, start_gateway, ClientTls, Gateway, GatewayOptions, TestPki, AGENT_TOKEN, CONN,
};
use common::gateway::{APP_DB, APP_PASSWORD, APP_USER};
use common::{psql_cmd, run_err, run_ok, shared_pg, PgTarget};
use sluice_dataplane::{Config, Dataplane};
use sluice_pgwire::encode;

/// Everything the gateways of this binary log.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init()
            .expect("installing the log capture");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn tls_gateway(pki: &TestPki) -> Gateway {
    start_gateway(
        shared_pg(),
        GatewayOptions {
            client_tls: Some(ClientTls {
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            }),
            ..GatewayOptions::default()
        },
    )
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connecting to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send(s: &mut impl Write, build: impl FnOnce(&mut BytesMut)) {
    let mut b = BytesMut::new();
    build(&mut b);
    s.write_all(&b).expect("writing to the gateway");
}

/// Everything the gateway sends until it closes.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("waiting for the gateway to close: {e} (read {got:?})"),
    }
    got
}

fn one_byte(s: &mut impl Read) -> u8 {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("reading the answer");
    b[0]
}

/// One backend message: its tag and body.
fn read_msg(s: &mut impl Read) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("reading a message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("reading a message body");
    (head[0], body)
}

/// The SQLSTATE field of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

fn protocol_errors(gw: &Gateway) -> u64 {
    gw.dp
        .shared()
        .metrics
        .iter()
        .map(|m| m.protocol_errors.get())
        .sum()
}

#[test]
fn clients_that_leave_before_starting_are_not_protocol_errors() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_pki(dir.path(), "Sluice startup test CA");
    let plain = start_gateway(shared_pg(), GatewayOptions::default());
    let tls = tls_gateway(&pki);

    // Terminate where the startup packet belongs.
    let mut s = tcp(plain.addr);
    send(&mut s, encode::terminate);
    assert_eq!(read_to_close(&mut s), b"", "Terminate before startup");

    // SSLRequest refused ('N'), then Terminate (libpq with sslmode=prefer giving up).
    let mut s = tcp(plain.addr);
    send(&mut s, encode::ssl_request);
    assert_eq!(one_byte(&mut s), b'N');
    send(&mut s, encode::terminate);
    assert_eq!(read_to_close(&mut s), b"", "Terminate after SSLRequest");

    // Connect and close, with nothing sent or right after an SSLRequest.
    drop(tcp(plain.addr));
    let mut s = tcp(plain.addr);
    send(&mut s, encode::ssl_request);
    drop(s);

    // SSLRequest accepted ('S'), then the client closes instead of the TLS handshake.
    let mut s = tcp(tls.addr);
    send(&mut s, encode::ssl_request);
    assert_eq!(one_byte(&mut s), b'S');
    drop(s);

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(protocol_errors(&plain), 0);
    assert_eq!(protocol_errors(&tls), 0);
    let log = logs();
    for noisy in ["too large", "TLS handshake with client failed"] {
        let lines: Vec<_> = log.lines().filter(|l| l.contains(noisy)).collect();
        assert!(lines.is_empty(), "{lines:#?}");
    }

    // A real oversized startup packet is still one.
    let mut s = tcp(plain.addr);
    s.write_all(&20_000i32.to_be_bytes()).unwrap();
    let got = read_to_close(&mut s);
    assert!(
        String::from_utf8_lossy(&got).contains("too large"),
        "{got:?}"
    );
    assert_eq!(protocol_errors(&plain), 1);
}

/// Logs in over plain TCP with the agent's static token; returns the stream and the cancel key.
fn raw_login(addr: SocketAddr) -> (TcpStream, i32, i32) {
    let mut s = tcp(addr);
    send(&mut s, |b| {
        encode::startup_message(b, &[("user", "agent"), ("database", CONN)])
    });
    let (tag, body) = read_msg(&mut s);
    assert_eq!(
        (tag, &body[..]),
        (b'R', &3i32.to_be_bytes()[..]),
        "cleartext"
    );
    let mut password = AGENT_TOKEN.as_bytes().to_vec();
    password.push(0);
    send(&mut s, |b| encode::password_message(b, &password));
    let mut key = None;
    loop {
        match read_msg(&mut s) {
            (b'K', body) => {
                let pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
                let secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                key = Some((pid, secret));
            }
            (b'Z', _) => break,
            (b'E', body) => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    let (pid, secret) = key.expect("BackendKeyData");
    (s, pid, secret)
}

fn tls_client(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn cancel_request_inside_tls_is_delivered_and_ends_with_close_notify() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_pki(dir.path(), "Sluice cancel test CA");
    let gw = tls_gateway(&pki);
    let config = tls_client(&pki.ca);

    let (mut session, pid, secret) = raw_login(gw.addr);
    send(&mut session, |b| encode::query(b, "SELECT pg_sleep(30)"));
    std::thread::sleep(Duration::from_millis(500));

    // What libpq 17 sends on its cancel connection with gssencmode=prefer and sslmode=require.
    let mut s = tcp(gw.addr);
    send(&mut s, encode::gss_enc_request);
    assert_eq!(one_byte(&mut s), b'N', "no GSSAPI encryption");
    send(&mut s, encode::ssl_request);
    assert_eq!(one_byte(&mut s), b'S');
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    send(&mut tls, |b| encode::cancel_request(b, pid, secret));
    let mut rest = Vec::new();
    // rustls reports a close without close_notify as UnexpectedEof.
    tls.read_to_end(&mut rest)
        .expect("the gateway ends the TLS session with close_notify");
    assert_eq!(rest, b"", "nothing but close_notify");

    // RowDescription, then the cancel's error.
    let (tag, body) = loop {
        match read_msg(&mut session) {
            (b'T', _) => continue,
            other => break other,
        }
    };
    assert_eq!(
        (tag, error_code(&body)),
        (b'E', "57014".to_owned()),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// Static token of the SCRAM login [`SCRAM_USER`].
const SCRAM_TOKEN: &str = "scram-agent-token-4b5c6d7e8f";
/// The login name that selects [`SCRAM_TOKEN`].
const SCRAM_USER: &str = "ci-scram";

/// A gateway whose static token [`SCRAM_TOKEN`] has the login name [`SCRAM_USER`], next to
/// [`AGENT_TOKEN`] without one.
fn scram_gateway() -> Dataplane {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
cores: 1
auth:
  static_tokens:
    - {{ token: {AGENT_TOKEN}, subject: agent-1, groups: [analysts] }}
    - {{ token: {SCRAM_TOKEN}, subject: ci-1, groups: [analysts], user: {SCRAM_USER} }}
connections:
  - name: {CONN}
    port: {port}
    database: {APP_DB}
    pool: {{ mode: transaction, size: 2 }}
    users: [{{ name: app, user: {APP_USER}, password: {APP_PASSWORD} }}]
roles:
  - {{ name: analyst, groups: [analysts], connections: {{ {CONN}: app }}, policy: reads }}
policies:
  - {{ name: reads, classes: {{ allow: [read] }} }}
"#,
        port = shared_pg(),
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("gateway config rejected: {e}\n{yaml}"));
    Dataplane::start(config).expect("starting the gateway")
}

#[test]
fn a_static_tokens_login_name_is_asked_for_scram() {
    capture_logs();
    let dp = scram_gateway();
    let addr = dp.local_addr();

    // The wire: AuthenticationSASL offering SCRAM-SHA-256 only (no -PLUS), then the exchange
    // with rust-postgres' client.
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let mut s = tcp(addr);
    send(&mut s, |b| {
        encode::startup_message(b, &[("user", SCRAM_USER), ("database", CONN)])
    });
    let (tag, body) = read_msg(&mut s);
    assert_eq!(tag, b'R');
    assert_eq!(
        (&body[..4], &body[4..]),
        (&10i32.to_be_bytes()[..], &b"SCRAM-SHA-256\0\0"[..]),
        "AuthenticationSASL"
    );
    let mut client = ScramSha256::new(SCRAM_TOKEN.as_bytes(), ChannelBinding::unrequested());
    send(&mut s, |b| {
        encode::sasl_initial_response(b, "SCRAM-SHA-256", client.message())
    });
    let (tag, body) = read_msg(&mut s);
    assert_eq!((tag, &body[..4]), (b'R', &11i32.to_be_bytes()[..]));
    client.update(&body[4..]).expect("server-first-message");
    send(&mut s, |b| encode::sasl_response(b, client.message()));
    let (tag, body) = read_msg(&mut s);
    assert_eq!((tag, &body[..4]), (b'R', &12i32.to_be_bytes()[..]));
    client
        .finish(&body[4..])
        .expect("the gateway proves it knows the verifier");
    assert_eq!(read_msg(&mut s), (b'R', 0i32.to_be_bytes().to_vec()));

    // libpq (psql) logs in with SCRAM, without channel binding.
    let target = PgTarget::new(addr.port(), SCRAM_USER, SCRAM_TOKEN, CONN);
    let mut cmd = psql_cmd(&target, "SELECT current_user");
    cmd.env("PGCHANNELBINDING", "disable");
    assert_eq!(run_ok(&mut cmd).trim(), APP_USER);

    // A wrong token is refused as PostgreSQL refuses a wrong password.
    let wrong = PgTarget::new(addr.port(), SCRAM_USER, "scram-agent-token-wrong", CONN);
    let err = run_err(&mut psql_cmd(&wrong, "SELECT 1"));
    assert!(
        err.contains(&format!(
            "password authentication failed for user \"{SCRAM_USER}\""
        )),
        "{err}"
    );

    // Other user names keep the cleartext token, for this token too.
    for token in [AGENT_TOKEN, SCRAM_TOKEN] {
        let plain = PgTarget::new(addr.port(), "agent", token, CONN);
        assert_eq!(run_ok(&mut psql_cmd(&plain, "SELECT 6 * 7")).trim(), "42");
    }
    let log = logs();
    assert!(!log.contains(SCRAM_TOKEN), "the token is never logged");
    assert!(log.contains("client SCRAM authentication failed"), "{log}");
}
