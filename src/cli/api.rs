//! How the CLI's client commands reach the control plane (`--server`, `--token`, `--ca`), over
//! the one client of its API; an error answer becomes an error carrying the server's `error`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_client::{Client, Trust, TrustError};

/// How the client commands reach the control plane.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// API token (else SLUICE_ADMIN_TOKEN, else ./sluice-data/admin.token).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA bundle an `https://` server's certificate must chain to (default: the webpki
    /// roots).
    #[arg(long, env = "SLUICE_CA")]
    pub ca: Option<PathBuf>,
}

/// Whole-request timeout of a client command.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer printed (a whole snapshot of a large document fits).
const ANSWER_LIMIT: u64 = 64 << 20;

/// A client command's connection to the API.
pub struct Api {
    client: Client,
}

impl Api {
    /// The token from `--token`, `SLUICE_ADMIN_TOKEN` or `sluice up`'s data directory; the CA
    /// bundle from `--ca`.
    pub fn new(args: ClientArgs) -> Result<Api> {
        let token = match args.token.or_else(|| std::env::var("SLUICE_ADMIN_TOKEN").ok()) {
            Some(t) => t,
            None => std::fs::read_to_string("sluice-data/admin.token")
                .map(|t| t.trim().to_owned())
                .context("no API token: pass --token, set SLUICE_TOKEN, or run next to `sluice up`'s sluice-data/")?,
        };
        let trust = match args.ca.as_deref() {
            None => Trust::webpki(),
            Some(path) => trust_of(path)?,
        };
        Ok(Api {
            client: Client::new(&args.server, &token, &trust, TIMEOUT),
        })
    }

    /// `GET path`; the answer's body.
    pub fn get(&self, path: &str) -> Result<String> {
        self.answer("GET", path, self.client.get(path, None, ANSWER_LIMIT))
    }

    /// `POST path` with `body` (content type, bytes) or none; the answer's body.
    pub fn post(&self, path: &str, body: Option<(&str, &[u8])>) -> Result<String> {
        self.answer("POST", path, self.client.post(path, body, ANSWER_LIMIT))
    }

    /// `POST path` with `body` as JSON.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<String> {
        let bytes = body.to_string().into_bytes();
        self.post(path, Some(("application/json", &bytes)))
    }

    /// A non-2xx answer becomes an [`ApiError`]: one line with the server's message and
    /// the HTTP status.
    fn answer(
        &self,
        method: &str,
        path: &str,
        answer: Result<sluice_client::Answer, sluice_client::ClientError>,
    ) -> Result<String> {
        let answer = answer.with_context(|| format!("{method} {}{path}", self.client.server()))?;
        if !answer.is_success() {
            return Err(ApiError::of(method, path, &answer).into());
        }
        Ok(answer.text())
    }
}

/// An error answer of the API, printed on one line: `MESSAGE (DETAILS) (HTTP STATUS, METHOD
/// PATH)`.
#[derive(Debug)]
pub struct ApiError {
    method: String,
    path: String,
    status: String,
    message: String,
}

impl ApiError {
    fn of(method: &str, path: &str, answer: &sluice_client::Answer) -> ApiError {
        let error = sluice_client::wire::error::error_object(&answer.body).unwrap_or_default();
        let mut message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| super::output::cut(answer.text().trim(), 200));
        if message.is_empty() {
            message = error["code"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
        }
        let details: Vec<String> = error["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|f| {
                        let (p, m) = (
                            f["path"].as_str().unwrap_or(""),
                            f["message"].as_str().unwrap_or(""),
                        );
                        if p.is_empty() {
                            m.to_owned()
                        } else {
                            format!("{p}: {m}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !details.is_empty() {
            message = format!("{message}: {}", details.join("; "));
        }
        ApiError {
            method: method.to_owned(),
            path: path.to_owned(),
            status: answer.status_line(),
            message: super::output::one_line(message),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (HTTP {}, {} {})",
            self.message, self.status, self.method, self.path
        )
    }
}

impl std::error::Error for ApiError {}

/// The CA bundle at `path`, with the messages the CLI has always given.
fn trust_of(path: &Path) -> Result<Trust> {
    Trust::from_ca_file(path).or_else(|e| match e {
        TrustError::Read { path, source } => {
            Err(anyhow::Error::new(source).context(format!("reading {}", path.display())))
        }
        TrustError::Invalid(m) => bail!("{}: {m}", path.display()),
    })
}

/// The content type of a document file: JSON by its extension, else YAML.
pub fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/yaml",
    }
}

/// Percent-encodes a path segment or query value.
pub fn urlencode(s: &str) -> String {
    sluice_client::encode_path_segment(s)
}
