//! Webhook delivery rows: queued in the transaction of the change they tell about, picked up
//! when due, and updated after each attempt.

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::StoreError;

type Conn = AnyConnection;

/// A delivery to queue.
#[derive(Clone, Debug)]
pub struct NewDelivery<'a> {
    pub event: &'a str,
    pub webhook: &'a str,
    pub url: &'a str,
    pub subject: &'a str,
    pub secret_env: Option<&'a str>,
    pub payload: &'a str,
    pub at: i64,
}

/// A delivery as the API lists it (without its payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// `review.created`, `review.decided`, `grant.issued`, `statement.denied`.
    pub event: String,
    /// The webhook's name in the document.
    pub webhook: String,
    pub url: String,
    /// The review id, grant id, or audit batch and record index it is about.
    pub subject: String,
    /// pending (to be sent or retried), delivered, failed (attempts used up).
    pub status: String,
    pub attempts: i64,
    /// The HTTP status of the last attempt, if it got an answer.
    pub last_http_status: Option<i64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub next_attempt_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// A delivery to send now.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    pub id: i64,
    pub event: String,
    pub url: String,
    pub secret_env: Option<String>,
    pub payload: String,
    pub attempts: i64,
}

/// What an attempt came to.
#[derive(Clone, Debug)]
pub enum Attempt {
    Delivered {
        http_status: u16,
    },
    Retry {
        next_at: i64,
        http_status: Option<u16>,
        error: String,
    },
    Failed {
        http_status: Option<u16>,
        error: String,
    },
}

pub async fn insert_delivery(c: &mut Conn, d: &NewDelivery<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notification_deliveries (event, webhook, url, subject, secret_env, payload, \
         status, attempts, created_at_ms, next_attempt_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(d.event)
    .bind(d.webhook)
    .bind(d.url)
    .bind(d.subject)
    .bind(d.secret_env)
    .bind(d.payload)
    .bind(d.at)
    .execute(c)
    .await?;
    Ok(())
}

/// Pending deliveries due at `now`, oldest first.
pub async fn due_deliveries(
    c: &mut Conn,
    now: i64,
    limit: i64,
) -> Result<Vec<DueDelivery>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, event, url, secret_env, payload, attempts FROM notification_deliveries \
         WHERE status = 'pending' AND next_attempt_ms <= $1 ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(c)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(DueDelivery {
                id: r.try_get("id")?,
                event: r.try_get("event")?,
                url: r.try_get("url")?,
                secret_env: r.try_get("secret_env")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

/// The earliest time a pending delivery is due, if any is pending.
pub async fn next_due(c: &mut Conn) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(next_attempt_ms) FROM notification_deliveries WHERE status = 'pending'",
    )
    .fetch_one(c)
    .await?)
}

/// Records an attempt at delivery `id` made at `now`.
pub async fn record_attempt(
    c: &mut Conn,
    id: i64,
    now: i64,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    let (status, next, http, error, delivered) = match attempt {
        Attempt::Delivered { http_status } => {
            ("delivered", now, Some(*http_status), None, Some(now))
        }
        Attempt::Retry {
            next_at,
            http_status,
            error,
        } => (
            "pending",
            *next_at,
            *http_status,
            Some(error.as_str()),
            None,
        ),
        Attempt::Failed { http_status, error } => {
            ("failed", now, *http_status, Some(error.as_str()), None)
        }
    };
    sqlx::query(
        "UPDATE notification_deliveries SET status = $1, attempts = attempts + 1, \
         next_attempt_ms = $2, last_http_status = $3, last_error = $4, delivered_at_ms = $5 \
         WHERE id = $6",
    )
    .bind(status)
    .bind(next)
    .bind(http.map(i64::from))
    .bind(error)
    .bind(delivered)
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

/// Deliveries, newest first, of one status or all.
pub async fn list_deliveries(
    c: &mut Conn,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let cols = "id, event, webhook, url, subject, status, attempts, last_http_status, last_error, \
                created_at_ms, next_attempt_ms, delivered_at_ms";
    let filter = if status.is_some() {
        "WHERE status = $2"
    } else {
        ""
    };
    let sql =
        format!("SELECT {cols} FROM notification_deliveries {filter} ORDER BY id DESC LIMIT $1");
    let mut q = sqlx::query(&sql).bind(limit);
    if let Some(s) = status {
        q = q.bind(s.to_owned());
    }
    let rows = q.fetch_all(c).await?;
    rows.into_iter()
        .map(|r| {
            Ok(Delivery {
                id: r.try_get("id")?,
                event: r.try_get("event")?,
                webhook: r.try_get("webhook")?,
                url: r.try_get("url")?,
                subject: r.try_get("subject")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                last_http_status: r.try_get("last_http_status")?,
                last_error: r.try_get("last_error")?,
                created_at_ms: r.try_get("created_at_ms")?,
                next_attempt_ms: r.try_get("next_attempt_ms")?,
                delivered_at_ms: r.try_get("delivered_at_ms")?,
            })
        })
        .collect()
}
