//! Webhook notifications: a delivery row per event and webhook is written in the transaction
//! of the change it tells about (so a committed change is never left untold), and a task of
//! the control plane sends due rows off the request path, signing each body with HMAC-SHA256
//! and retrying failures with exponential backoff. Every attempt updates its row
//! (`GET /v1/notifications/deliveries`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::document::{Document, Event, NotificationSpec, PayloadFormat};
use crate::service::ControlPlane;
use crate::store::notifications::{self as rows, Attempt, DueDelivery, NewDelivery};
use crate::store::{self, now_ms, StoreError, WriteTx};

/// The header carrying `sha256=<hex of HMAC-SHA256(key, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Sluice-Signature";

/// Longest wait between two attempts at one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Longest a webhook may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the delivery task looks for due rows when nothing wakes it (rows written by
/// another replica, retries coming due).
const RECHECK: Duration = Duration::from_secs(1);

/// Rows sent per round.
const BATCH: i64 = 32;

/// Wakes the delivery task after a commit that queued deliveries.
#[derive(Debug, Default)]
pub struct Deliveries {
    wake: Notify,
}

impl Deliveries {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Queues `event` about `subject` (`data`: the review, grant or audit record) for every
/// webhook of the current document that wants it, in the caller's transaction. True when
/// something was queued (the caller wakes the delivery task after its commit).
pub async fn enqueue(
    w: &mut WriteTx,
    event: Event,
    subject: &str,
    data: &Value,
) -> Result<bool, StoreError> {
    enqueue_many(w, event, &[(subject.to_owned(), data.clone())]).await
}

/// [`enqueue`] for several subjects of one event, reading the document once.
pub async fn enqueue_many(
    w: &mut WriteTx,
    event: Event,
    items: &[(String, Value)],
) -> Result<bool, StoreError> {
    if items.is_empty() {
        return Ok(false);
    }
    let hooks: Vec<NotificationSpec> = current_webhooks(w)
        .await?
        .into_iter()
        .filter(|n| n.wants(event))
        .collect();
    let at = now_ms();
    for hook in &hooks {
        for (subject, data) in items {
            let payload = payload(hook, event, at, data).to_string();
            let row = NewDelivery {
                event: event.as_str(),
                webhook: &hook.name,
                url: &hook.url,
                subject,
                secret_env: hook.secret_env.as_deref(),
                payload: &payload,
                at,
            };
            rows::insert_delivery(&mut w.tx, &row).await?;
        }
    }
    Ok(!hooks.is_empty())
}

async fn current_webhooks(w: &mut WriteTx) -> Result<Vec<NotificationSpec>, StoreError> {
    let Some(row) = store::document(&mut w.tx, None).await? else {
        return Ok(Vec::new());
    };
    let doc: Document = serde_json::from_str(&row.document)
        .map_err(|e| StoreError::Corrupt(format!("document {}: {e}", row.version)))?;
    Ok(doc.notifications)
}

/// The body `hook` receives for `event`.
pub fn payload(hook: &NotificationSpec, event: Event, at_ms: i64, data: &Value) -> Value {
    match hook.format {
        PayloadFormat::Json => json!({"event": event.as_str(), "at_ms": at_ms, "data": data}),
        PayloadFormat::Slack => slack(event, data, hook.console_url.as_deref()),
    }
}

/// A Slack incoming-webhook message: a summary line, the statement, who and where, and for
/// reviews the console's approve, deny and open links.
fn slack(event: Event, data: &Value, console_url: Option<&str>) -> Value {
    let s = |k: &str| data[k].as_str().unwrap_or("-").to_owned();
    let title = match event {
        Event::ReviewCreated => "Statement held for review".to_owned(),
        Event::ReviewDecided => format!("Review {}", s("status")),
        Event::GrantIssued => "Just-in-time grant issued".to_owned(),
        Event::StatementDenied => "Statement denied".to_owned(),
    };
    let summary = format!("{title}: {} on {}", s("identity"), s("connection"));
    let mut fields = vec![
        mrkdwn(&format!("*Identity*\n{}", s("identity"))),
        mrkdwn(&format!("*Connection*\n{}", s("connection"))),
    ];
    for (key, label) in [("role", "Role"), ("rule_id", "Rule"), ("status", "Status")] {
        if let Some(v) = data[key].as_str() {
            fields.push(mrkdwn(&format!("*{label}*\n{v}")));
        }
    }
    let mut blocks = vec![
        json!({"type": "section", "text": mrkdwn(&format!("*{title}*"))}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(stmt) = data["statement"].as_str() {
        let stmt: String = stmt.chars().take(2900).collect();
        blocks.push(json!({"type": "section", "text": mrkdwn(&format!("```{stmt}```"))}));
    }
    let review_id = data["id"].as_str();
    if let (Some(base), Some(id), Event::ReviewCreated | Event::ReviewDecided) =
        (console_url, review_id, event)
    {
        let page = format!("{}/reviews/{id}", base.trim_end_matches('/'));
        let mut buttons = Vec::new();
        if event == Event::ReviewCreated {
            buttons.push(button(
                "Approve",
                &format!("{page}?action=approve"),
                Some("primary"),
            ));
            buttons.push(button(
                "Deny",
                &format!("{page}?action=deny"),
                Some("danger"),
            ));
        }
        buttons.push(button("Open", &page, None));
        blocks.push(json!({"type": "actions", "elements": buttons}));
    }
    json!({"text": summary, "blocks": blocks})
}

fn mrkdwn(text: &str) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

fn button(text: &str, url: &str, style: Option<&str>) -> Value {
    let mut b = json!({"type": "button", "text": {"type": "plain_text", "text": text}, "url": url});
    if let Some(s) = style {
        b["style"] = json!(s);
    }
    b
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the delivery task on the current runtime; it ends when the control plane is gone.
pub fn spawn(cp: Weak<ControlPlane>, deliveries: Arc<Deliveries>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(SEND_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    tokio::spawn(async move {
        loop {
            let Some(plane) = cp.upgrade() else { return };
            let wait = match plane.deliver_due(&agent).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliveries: store unavailable");
                    RECHECK
                }
            };
            drop(plane);
            tokio::select! {
                () = deliveries.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

impl ControlPlane {
    /// Sends the due deliveries; how long until the next one is due (at most [`RECHECK`]).
    async fn deliver_due(&self, agent: &ureq::Agent) -> Result<Duration, StoreError> {
        loop {
            let due = {
                let mut c = self.store().conn().await?;
                rows::due_deliveries(&mut c, now_ms(), BATCH).await?
            };
            for d in &due {
                let attempt = self.attempt(agent, d).await;
                let mut w = self.store().write().await?;
                rows::record_attempt(&mut w.tx, d.id, now_ms(), &attempt).await?;
                w.commit().await?;
                self.metrics.count_delivery(&attempt);
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        let mut c = self.store().conn().await?;
        let next = rows::next_due(&mut c).await?;
        let wait = next.map_or(RECHECK, |at| {
            Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
        });
        Ok(wait.min(RECHECK))
    }

    /// One attempt at `d`: delivered on a 2xx answer, else retried after a backoff that
    /// doubles each time, until the attempts are used up.
    async fn attempt(&self, agent: &ureq::Agent, d: &DueDelivery) -> Attempt {
        let agent = agent.clone();
        let d2 = d.clone();
        let sent = tokio::task::spawn_blocking(move || send(&agent, &d2))
            .await
            .unwrap_or_else(|e| Err((None, format!("delivery task: {e}"))));
        let (http_status, error) = match sent {
            Ok(status) if (200..300).contains(&status) => {
                return Attempt::Delivered {
                    http_status: status,
                }
            }
            Ok(status) => (Some(status), format!("HTTP {status}")),
            Err((status, e)) => (status, e),
        };
        let attempts = u32::try_from(d.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        tracing::info!(delivery = d.id, event = %d.event, attempts, error = %error, "webhook delivery failed");
        if attempts >= self.settings.notify_attempts {
            return Attempt::Failed { http_status, error };
        }
        let backoff = self
            .settings
            .notify_backoff
            .saturating_mul(1 << (attempts - 1).min(20))
            .min(MAX_BACKOFF);
        Attempt::Retry {
            next_at: now_ms().saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(0)),
            http_status,
            error,
        }
    }
}

/// POSTs the delivery's body: its status, or why there was none. A delivery whose key is
/// missing from the environment is not sent unsigned.
fn send(agent: &ureq::Agent, d: &DueDelivery) -> Result<u16, (Option<u16>, String)> {
    let mut req = agent
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "sluice-controlplane")
        .header("X-Sluice-Event", &d.event)
        .header("X-Sluice-Delivery", d.id.to_string());
    if let Some(var) = &d.secret_env {
        let key = std::env::var(var).map_err(|_| {
            (
                None,
                format!("environment variable {var} (the signing key) is not set"),
            )
        })?;
        req = req.header(
            SIGNATURE_HEADER,
            signature(key.as_bytes(), d.payload.as_bytes()),
        );
    }
    match req.send(d.payload.as_bytes()) {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err((None, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slack_messages_carry_the_statement_and_console_links() {
        let hook = NotificationSpec {
            name: "chat".into(),
            url: "https://hooks.example/x".into(),
            events: vec![Event::ReviewCreated],
            format: PayloadFormat::Slack,
            secret_env: None,
            console_url: Some("https://sluice.example/".into()),
        };
        let review = json!({"id": "r1", "identity": "ci-bot", "connection": "app",
                            "statement": "DELETE FROM t", "rule_id": "writes"});
        let p = payload(&hook, Event::ReviewCreated, 0, &review);
        assert_eq!(p["text"], "Statement held for review: ci-bot on app");
        let text = p.to_string();
        assert!(text.contains("```DELETE FROM t```"), "{text}");
        let actions = &p["blocks"][3]["elements"];
        assert_eq!(
            actions[0]["url"],
            "https://sluice.example/reviews/r1?action=approve"
        );
        assert_eq!(
            actions[1]["url"],
            "https://sluice.example/reviews/r1?action=deny"
        );
    }
}
