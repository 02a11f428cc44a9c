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

    /// A non-2xx answer becomes an error carrying the server's `error` object (pretty), or its
    /// text when it is not JSON.
    fn answer(
        &self,
        method: &str,
        path: &str,
        answer: Result<sluice_client::Answer, sluice_client::ClientError>,
    ) -> Result<String> {
        let answer = answer.with_context(|| format!("{method} {}{path}", self.client.server()))?;
        let text = answer.text();
        if !answer.is_success() {
            let msg = sluice_client::wire::error::error_object(&answer.body)
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or(text);
            bail!("{method} {path}: {}\n{msg}", answer.status_line());
        }
        Ok(text)
    }
}

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
