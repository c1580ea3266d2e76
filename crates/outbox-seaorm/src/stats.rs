//! The backlog gauges: pending and dead-lettered counts, the oldest pending event's age, and the
//! transaction holding the commit horizon. Read-only statements from `sql/`, through sqlx on the
//! pool (like the rest of the relay's statements; they need no leadership).

use std::time::Duration;

use chrono::Utc;
use outbox_core::{HorizonHolder, OutboxError, OutboxStats};
use sea_orm::sqlx::{self, Row};

use crate::outbox::sqlx_error;

/// Backlog, dead letters, and how long the oldest committed event has waited behind the commit
/// horizon.
const STATS: &str = include_str!("../sql/stats.sql");

/// The oldest transaction holding an xid: the one that holds the commit horizon.
const HORIZON_HOLDER: &str = include_str!("../sql/horizon_holder.sql");

/// [`RelayStore::stats`](outbox_core::RelayStore::stats).
pub(crate) async fn stats(pool: &sqlx::PgPool) -> Result<OutboxStats, OutboxError> {
    let row = sqlx::query(STATS)
        .fetch_one(pool)
        .await
        .map_err(sqlx_error)?;
    let pending: i64 = row.try_get("pending").map_err(sqlx_error)?;
    let oldest: Option<f64> = row.try_get("oldest_age").map_err(sqlx_error)?;
    let dead: i64 = row.try_get("dead").map_err(sqlx_error)?;
    let horizon_wait: Option<f64> = row.try_get("horizon_wait").map_err(sqlx_error)?;
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let horizon_holder = match horizon_wait {
        Some(_) => horizon_holder(pool).await.map_err(sqlx_error)?,
        None => None,
    };
    Ok(OutboxStats {
        pending: u64::try_from(pending).unwrap_or_default(),
        oldest_pending_age: oldest.map(seconds),
        dead_lettered: u64::try_from(dead).unwrap_or_default(),
        horizon_wait: horizon_wait.map(seconds),
        horizon_holder,
    })
}

/// The transaction holding the commit horizon, as far as this role may see it
/// (`pg_read_all_stats` shows every session's query).
async fn horizon_holder(pool: &sqlx::PgPool) -> Result<Option<HorizonHolder>, sqlx::Error> {
    let Some(row) = sqlx::query(HORIZON_HOLDER).fetch_optional(pool).await? else {
        return Ok(None);
    };
    let age: Option<f64> = row.try_get("age")?;
    let query_start: Option<chrono::DateTime<Utc>> = row.try_get("query_start")?;
    Ok(Some(HorizonHolder {
        pid: row.try_get("pid")?,
        age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
        state: row.try_get("state")?,
        query_start,
        query: row.try_get("query")?,
        database: row.try_get("datname")?,
        user: row.try_get("usename")?,
        application: row.try_get("application_name")?,
    }))
}
