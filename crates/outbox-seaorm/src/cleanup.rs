//! Deleting published rows kept for a retention period: one bounded `DELETE` from `sql/`,
//! through sqlx on the pool like the relay's other statements.

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{OutboxCleanup, OutboxError};
use sea_orm::sqlx;

use crate::PostgresOutbox;
use crate::outbox::sqlx_error;

/// Deletes up to `$2` rows published more than `$1` seconds ago, oldest first.
const DELETE_EXPIRED: &str = include_str!("../sql/delete_expired.sql");

#[async_trait]
impl OutboxCleanup for PostgresOutbox {
    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError> {
        let result = sqlx::query(DELETE_EXPIRED)
            .bind(older_than.as_secs_f64())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(self.db.get_postgres_connection_pool())
            .await
            .map_err(sqlx_error)?;
        Ok(result.rows_affected())
    }
}
