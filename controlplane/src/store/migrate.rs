//! Migrations: numbered SQL texts embedded in the binary, one text for both backends.
//!
//! Each runs in its own transaction together with its row in `sluice_schema`, so a migration
//! is applied whole or not at all (DDL is transactional in SQLite and PostgreSQL). A replica
//! that loses a race to apply the same migration fails on the primary key and re-checks.

use super::{now_ms, Backend, Store, StoreError};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "reviews",
        include_str!("../../migrations/0002_reviews.sql"),
    ),
    (
        3,
        "notifications",
        include_str!("../../migrations/0003_notifications.sql"),
    ),
];

fn dialect(sql: &str, backend: Backend) -> String {
    let (id, bytes) = match backend {
        Backend::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        Backend::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
    };
    sql.replace("{{ID}}", id).replace("{{BYTES}}", bytes)
}

pub(super) async fn run(store: &Store) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sluice_schema (version BIGINT PRIMARY KEY, \
         name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(store.pool())
    .await?;
    for &(version, name, sql) in MIGRATIONS {
        let mut w = store.write().await?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM sluice_schema WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *w.tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(&dialect(sql, store.backend()))
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO sluice_schema (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *w.tx)
            .await
            .map_err(StoreError::classify)?;
        w.commit().await?;
        tracing::info!(version, name, "store migrated");
    }
    Ok(())
}
