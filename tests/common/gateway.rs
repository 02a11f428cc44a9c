//! In-process Sluice gateways in front of a test cluster, and what clients need to use them:
//! tokens (static and HS256 JWTs), a small tokio runtime, tokio-postgres connections.
//!
//! Every gateway has the same identities and roles; only the pool, TLS and limits vary:
//! - [`AGENT_TOKEN`] (static, group `analysts`) and [`agent_jwt`] map to role `analyst`, which
//!   may use connection [`CONN`] (and `otherdb`) as the backend user [`APP_USER`];
//! - [`AUDITOR_TOKEN`] maps to role `auditor`, which may use `otherdb` only;
//! - [`OUTSIDER_TOKEN`] is a valid token whose identity no role covers;
//! - [`MASKED_TOKEN`] (static, group `maskees`) maps to role `masked` on [`CONN`], whose
//!   policy `masked` masks `public.customers` (see tests/masking.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_dataplane::{Config, Dataplane};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{PgCluster, PgTarget};

/// Static token of `agent-1` (group `analysts`).
pub const AGENT_TOKEN: &str = "agent-token-9f8e7d6c";
/// Static token of `auditor-1` (group `auditors`: a role without [`CONN`]).
pub const AUDITOR_TOKEN: &str = "auditor-token-1a2b3c4d";
/// Static token of `outsider-1`, whom no role covers.
pub const OUTSIDER_TOKEN: &str = "outsider-token-5e6f7a8b";
/// Static token of `masked-1` (group `maskees`: role `masked`, policy `masked`).
pub const MASKED_TOKEN: &str = "masked-token-3c5e7a9b";
/// Static token of `capped-1` (group `capped`: role `capped`, policy `capped`: reads and
/// writes, at most 3 rows per UPDATE, DELETE or MERGE; `secrets.value` masked).
pub const CAPPED_TOKEN: &str = "capped-token-7d1f3b5a";
/// HS256 secret of the issuer [`JWT_ISSUER`].
pub const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The trusted JWT issuer.
pub const JWT_ISSUER: &str = "test-issuer";
/// The audience the gateway expects.
pub const JWT_AUDIENCE: &str = "sluice";
/// The connection name clients use as their database name.
pub const CONN: &str = "appdb";
/// The backend login only the gateway knows.
pub const APP_USER: &str = "app";
/// Its password.
pub const APP_PASSWORD: &str = "app-secret-only-the-gateway-knows";
/// The database `appdb` points at unless a test gives its own.
pub const APP_DB: &str = "app";

/// Creates the backend login [`APP_USER`] and the database [`APP_DB`] it owns.
pub fn prepare_backend(cluster: &PgCluster) {
    cluster
        .create_role(APP_USER, APP_PASSWORD)
        .expect("creating the app role");
    create_app_database(cluster, APP_DB);
}

/// Creates another database owned by [`APP_USER`] (for tests that need their own tables).
pub fn create_app_database(cluster: &PgCluster, name: &str) {
    cluster
        .create_database(name, APP_USER)
        .unwrap_or_else(|e| panic!("creating database {name}: {e:#}"));
}

/// Client-facing TLS files.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// What varies between the gateways of different tests.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Backend database behind [`CONN`].
    pub database: String,
    /// `transaction` or `session`.
    pub mode: &'static str,
    /// Server connections across all cores.
    pub size: usize,
    /// Pool wait limit, e.g. `5s` or `500ms`.
    pub timeout: &'static str,
    /// Worker cores.
    pub cores: usize,
    /// TLS towards clients.
    pub client_tls: Option<ClientTls>,
    /// Connection `tls:` towards the backend (`disable` unless set).
    pub backend_tls: Option<&'static str>,
    /// Connection `tls_ca:` for `verify-full`.
    pub backend_ca: Option<PathBuf>,
    /// Password the gateway logs in to the backend with.
    pub backend_password: String,
    /// `limits.max_message_bytes`.
    pub max_message_bytes: Option<&'static str>,
    /// Both pools' `pin_on` (a YAML list such as `[]` or `[listen]`); the default unless set.
    pub pin_on: Option<&'static str>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            database: APP_DB.into(),
            mode: "transaction",
            size: 10,
            timeout: "5s",
            cores: 2,
            client_tls: None,
            backend_tls: None,
            backend_ca: None,
            backend_password: APP_PASSWORD.into(),
            max_message_bytes: None,
            pin_on: None,
        }
    }
}

/// A running in-process gateway (its threads live until the test process exits).
pub struct Gateway {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The data plane itself.
    pub dp: Dataplane,
}

impl Gateway {
    /// The gateway's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq/psql target for [`CONN`] with `token` as the password.
    pub fn target(&self, token: &str) -> PgTarget {
        PgTarget::new(self.port(), "agent", token, CONN)
    }

    /// A tokio-postgres connection string for [`CONN`] with `token`.
    pub fn conn_str(&self, token: &str) -> String {
        self.target(token).conn_str()
    }
}

/// YAML string literal (JSON strings are YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn yaml_path(p: &Path) -> String {
    yaml_str(p.to_str().expect("UTF-8 temp path"))
}

/// Starts a gateway in front of the cluster on `pg_port` with the shared identities and `opts`.
pub fn start_gateway(pg_port: u16, opts: GatewayOptions) -> Gateway {
    let mut yaml = format!("listen: 127.0.0.1:0\ncores: {}\n", opts.cores);
    if let Some(tls) = &opts.client_tls {
        yaml += &format!(
            "tls: {{ cert: {}, key: {}, require_for_non_loopback: true }}\n",
            yaml_path(&tls.cert),
            yaml_path(&tls.key)
        );
    }
    if let Some(max) = opts.max_message_bytes {
        yaml += &format!("limits: {{ max_message_bytes: {max} }}\n");
    }
    let backend_tls = match (&opts.backend_tls, &opts.backend_ca) {
        (None, _) => String::new(),
        (Some(mode), None) => format!("    tls: {mode}\n"),
        (Some(mode), Some(ca)) => format!("    tls: {mode}\n    tls_ca: {}\n", yaml_path(ca)),
    };
    let pin_on = opts
        .pin_on
        .map_or_else(String::new, |p| format!(", pin_on: {p}"));
    yaml += &format!(
        r#"
auth:
  static_tokens:
    - {{ token: {agent}, subject: agent-1, groups: [analysts] }}
    - {{ token: {auditor}, subject: auditor-1, groups: [auditors] }}
    - {{ token: {outsider}, subject: outsider-1, groups: [visitors] }}
    - {{ token: {masked}, subject: masked-1, groups: [maskees] }}
    - {{ token: {capped}, subject: capped-1, groups: [capped] }}
  jwt:
    - issuer: {JWT_ISSUER}
      audience: [{JWT_AUDIENCE}]
      hs256_secret: {secret}
connections:
  - name: {CONN}
    port: {port}
    database: {database}
{backend_tls}    pool: {{ mode: {mode}, size: {size}, timeout: {timeout}, connect_timeout: 5s{pin_on} }}
    users: [{{ name: app, user: {APP_USER}, password: {password} }}]
  - name: otherdb
    port: {port}
    database: {database}
{backend_tls}    pool: {{ mode: transaction, size: 2{pin_on} }}
    users: [{{ name: app, user: {APP_USER}, password: {password} }}]
roles:
  - name: analyst
    groups: [analysts]
    connections: {{ {CONN}: app, otherdb: app }}
    policy: unrestricted
  - name: auditor
    groups: [auditors]
    connections: {{ otherdb: app }}
    policy: read-only
  - name: masked
    groups: [maskees]
    connections: {{ {CONN}: app }}
    policy: masked
  - name: capped
    groups: [capped]
    connections: {{ {CONN}: app }}
    policy: capped
policies:
  # The relay tests run everything a client may send; the built-in denials still apply.
  - name: unrestricted
    classes: {{ allow: [read, write, ddl, dcl, admin, copy, transaction, session] }}
    require_where: false
    allow_unparsed: true
    allow_do_blocks: true
  # What the guardrail tests probe: reads only, and never the secrets table.
  - name: read-only
    classes: {{ allow: [read, transaction, session] }}
    tables: {{ deny: [public.secrets] }}
  # What the blast-radius tests probe: writes that affect more than 3 rows are rolled back.
  - name: capped
    classes: {{ allow: [read, write, transaction, session] }}
    max_affected_rows: 3
    masking:
      - {{ columns: [public.secrets.value], strategy: redact }}
  # What the masking tests probe: customers' secrets masked by column, inet by type, and
  # detectors on every text; writes allowed (so a denial is the masking's, not the classes').
  - name: masked
    classes: {{ allow: [read, write, ddl, copy, transaction, session] }}
    max_rows: 1000
    functions: {{ trusted: [public.trusted_*] }}
    masking:
      - {{ columns: [public.customers.ssn], strategy: {{ partial: {{ keep_last: 4 }} }} }}
      - {{ columns: [public.customers.email], strategy: redact }}
      - {{ columns: [public.customers.card], strategy: hash }}
      - {{ columns: [public.customers.pin], strategy: tokenise }}
      - {{ columns: [public.customers.salary], strategy: hash, predicates: deny }}
      - {{ columns: [public.accounts.secret], strategy: redact }}
      - {{ types: [inet], strategy: "null" }}
      - {{ detectors: [email, card, ssn, phone, iban, api_key], strategy: redact }}
"#,
        agent = yaml_str(AGENT_TOKEN),
        auditor = yaml_str(AUDITOR_TOKEN),
        outsider = yaml_str(OUTSIDER_TOKEN),
        masked = yaml_str(MASKED_TOKEN),
        capped = yaml_str(CAPPED_TOKEN),
        secret = yaml_str(JWT_SECRET),
        port = pg_port,
        database = yaml_str(&opts.database),
        mode = opts.mode,
        size = opts.size,
        timeout = opts.timeout,
        password = yaml_str(&opts.backend_password),
    );
    let config = Config::from_yaml(&yaml, Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("gateway config rejected: {e}\n{yaml}"));
    let dp = Dataplane::start(config).unwrap_or_else(|e| panic!("starting the gateway: {e:#}"));
    Gateway {
        addr: dp.local_addr(),
        dp,
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 JWT with `claims`, signed with `secret`.
pub fn jwt(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encoding a JWT")
}

/// Claims of a valid agent JWT (group `analysts`, expires in 10 minutes); edit to break it.
pub fn agent_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": JWT_ISSUER,
        "sub": "jwt-agent-7",
        "aud": JWT_AUDIENCE,
        "exp": now_secs() + 600,
        "groups": ["analysts"],
    })
}

/// A valid agent JWT.
pub fn agent_jwt() -> String {
    jwt(&agent_claims(), JWT_SECRET)
}

/// A multi-thread tokio runtime with two workers (the machine has two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Awaits `fut`, panicking if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs}s"))
}

/// Connects with tokio-postgres (10 s limit) and drives the connection on a task.
pub async fn try_connect(conn_str: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = within(10, "connecting", tokio_postgres::connect(conn_str, NoTls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Like [`try_connect`], panicking on failure.
pub async fn connect(conn_str: &str) -> Client {
    try_connect(conn_str)
        .await
        .unwrap_or_else(|e| panic!("connecting with {conn_str:?}: {e:?}"))
}

/// What a connection reports between answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Async {
    /// A NoticeResponse's message.
    Notice(String),
    /// A NotificationResponse: channel and payload.
    Notification(String, String),
}

/// Connects and forwards the connection's notices and notifications to the returned channel.
pub async fn connect_with_messages(
    conn_str: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<Async>) {
    let (client, mut conn) = within(10, "connecting", tokio_postgres::connect(conn_str, NoTls))
        .await
        .unwrap_or_else(|e| panic!("connecting with {conn_str:?}: {e:?}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
            let fwd = match msg {
                Some(Ok(AsyncMessage::Notice(n))) => Async::Notice(n.message().to_owned()),
                Some(Ok(AsyncMessage::Notification(n))) => {
                    Async::Notification(n.channel().to_owned(), n.payload().to_owned())
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            };
            let _ = tx.send(fwd);
        }
    });
    (client, rx)
}

/// The SQLSTATE of a tokio-postgres error, or `"none"` when it carries none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| "none".into(), |c| c.code().to_owned())
}

/// A CA and a leaf certificate for `localhost` / 127.0.0.1 signed by it, written as PEM
/// files (`ca.crt`, `server.crt`, `server.key`) into `dir`.
pub struct TestPki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Leaf certificate.
    pub cert: PathBuf,
    /// Leaf key.
    pub key: PathBuf,
}

/// Generates a [`TestPki`] in `dir` with rcgen.
pub fn generate_pki(dir: &Path, ca_name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("leaf certificate");
    let pki = TestPki {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).expect("writing ca.crt");
    std::fs::write(&pki.cert, leaf.pem()).expect("writing server.crt");
    std::fs::write(&pki.key, leaf_key.serialize_pem()).expect("writing server.key");
    pki
}
