//! The document's `notifications:` section: webhooks the control plane calls when something
//! happens that people should hear about.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_name, check_unique, FieldError};

/// What a webhook can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Event {
    /// A statement was filed for review.
    #[serde(rename = "review.created")]
    ReviewCreated,
    /// A review left `pending`: approved (by enough approvers) or denied.
    #[serde(rename = "review.decided")]
    ReviewDecided,
    /// A just-in-time grant was issued.
    #[serde(rename = "grant.issued")]
    GrantIssued,
    /// A data plane denied a statement (from the audit records it ships).
    #[serde(rename = "statement.denied")]
    StatementDenied,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ReviewCreated => "review.created",
            Event::ReviewDecided => "review.decided",
            Event::GrantIssued => "grant.issued",
            Event::StatementDenied => "statement.denied",
        }
    }
}

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `{id, event, at_ms, data}`, `data` being the review, grant or audit record.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` and `blocks`).
    Slack,
}

/// One webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationSpec {
    pub name: String,
    /// `http://` or `https://` URL the control plane POSTs to.
    pub url: String,
    /// Which events it receives (at least one).
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: PayloadFormat,
    /// Name of the control plane's environment variable holding the HMAC-SHA256 key: the body
    /// is signed in `X-Sluice-Signature: sha256=<hex>`. The secret itself is never in the
    /// document, the store or an answer. Required for the `json` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Base URL of the web console; review events then carry links to
    /// `{console_url}/reviews/{id}` (approve and deny with `?action=approve|deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
}

fn is_default(f: &PayloadFormat) -> bool {
    *f == PayloadFormat::default()
}

impl NotificationSpec {
    /// Whether this webhook receives `event`.
    pub fn wants(&self, event: Event) -> bool {
        self.events.contains(&event)
    }
}

/// Checks the `notifications` section, adding every problem to `errors`.
pub fn validate(specs: &[NotificationSpec], errors: &mut Vec<FieldError>) {
    check_unique(
        errors,
        "notifications",
        specs.iter().map(|n| n.name.as_str()),
    );
    for (i, n) in specs.iter().enumerate() {
        let p = |f: &str| format!("notifications[{i}].{f}");
        check_name(errors, p("name"), &n.name);
        if !is_http_url(&n.url) {
            errors.push(FieldError::new(
                p("url"),
                "must be an http:// or https:// URL",
            ));
        }
        if n.events.is_empty() {
            errors.push(FieldError::new(p("events"), "at least one event is needed"));
        }
        match &n.secret_env {
            None if n.format == PayloadFormat::Json => errors.push(FieldError::new(
                p("secret_env"),
                "the json format is signed: name the environment variable holding the key",
            )),
            Some(v) if !is_env_name(v) => errors.push(FieldError::new(
                p("secret_env"),
                "must be an environment variable name (letters, digits, `_`)",
            )),
            _ => {}
        }
        if let Some(c) = &n.console_url {
            if !is_http_url(c) {
                errors.push(FieldError::new(
                    p("console_url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
