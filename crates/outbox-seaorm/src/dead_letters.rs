//! Dead letters: listing, replaying and discarding them. These go through the SeaORM query
//! builder over [`entity`]: a [`DeadLetterFilter`] becomes a condition that composes with
//! others (ids, pages, counts), here and in the operator tools built on
//! [`Entity::find_dead_letters`](entity::Entity::find_dead_letters).

use async_trait::async_trait;
use outbox_core::{DeadLetter, DeadLetterFilter, DeadLetterStore, OutboxError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select, Value,
};
use tracing::{info, warn};

use crate::PostgresOutbox;
use crate::entity::{self, Column};
use crate::outbox::db_error;
use crate::rows::model_to_dead_letter;

/// The `WHERE` condition selecting the dead letters that match `filter` (every dead letter for
/// the default filter).
fn dead_letter_condition(filter: &DeadLetterFilter) -> Condition {
    let mut condition = Condition::all().add(Column::DeadLetteredAt.is_not_null());
    if let Some(topic) = &filter.topic {
        condition = condition.add(Column::Topic.eq(topic.as_str()));
    }
    if let Some(key) = &filter.key {
        condition = condition.add(Column::EventKey.eq(key.as_str()));
    }
    if let Some(event_type) = &filter.event_type {
        condition = condition.add(Column::EventType.eq(event_type.as_str()));
    }
    if let Some(aggregate_type) = &filter.aggregate_type {
        condition = condition.add(Column::AggregateType.eq(aggregate_type.as_str()));
    }
    if let Some(aggregate_id) = &filter.aggregate_id {
        condition = condition.add(Column::AggregateId.eq(aggregate_id.as_str()));
    }
    if let Some(since) = filter.since {
        condition = condition.add(Column::DeadLetteredAt.gte(since));
    }
    if let Some(until) = filter.until {
        condition = condition.add(Column::DeadLetteredAt.lt(until));
    }
    condition
}

/// The dead letters with these ids.
fn dead_letters_with_ids(ids: &[i64]) -> Condition {
    dead_letter_condition(&DeadLetterFilter::default()).add(Column::Id.is_in(ids.iter().copied()))
}

impl entity::Entity {
    /// The rows that are dead letters matching `filter` (every dead letter for the default
    /// filter), as a query to narrow, order, page or count, for operator tools of your own:
    ///
    /// ```no_run
    /// # async fn demo(db: sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    /// use outbox_core::DeadLetterFilter;
    /// use outbox_seaorm::entity;
    /// use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
    ///
    /// let mut filter = DeadLetterFilter::default();
    /// filter.topic = Some("orders.v1".into());
    /// let retried = entity::Entity::find_dead_letters(&filter)
    ///     .filter(entity::Column::Attempts.gt(3))
    ///     .count(&db)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn find_dead_letters(filter: &DeadLetterFilter) -> Select<entity::Entity> {
        entity::Entity::find().filter(dead_letter_condition(filter))
    }
}

impl PostgresOutbox {
    async fn replay_where(&self, condition: Condition) -> Result<u64, OutboxError> {
        let result = entity::Entity::update_many()
            .col_expr(
                Column::DeadLetteredAt,
                Expr::value(Value::ChronoDateTimeWithTimeZone(None)),
            )
            // Parked and due: the retry lane claims it, however far the cursor has moved.
            .col_expr(Column::NextAttemptAt, Expr::current_timestamp().into())
            .col_expr(Column::Attempts, Expr::value(0))
            .filter(condition)
            .exec(&self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected)
    }

    async fn discard_where(&self, condition: Condition) -> Result<u64, OutboxError> {
        let result = entity::Entity::delete_many()
            .filter(condition)
            .exec(&self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected)
    }
}

#[async_trait]
impl DeadLetterStore for PostgresOutbox {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        let models = entity::Entity::find_dead_letters(filter)
            .order_by_asc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?;
        Ok(models
            .into_iter()
            .filter_map(model_to_dead_letter)
            .collect())
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let replayed = self.replay_where(dead_letters_with_ids(ids)).await?;
        info!(replayed, ids = ?ids, "outbox dead letters replayed");
        Ok(replayed)
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let replayed = self.replay_where(dead_letter_condition(filter)).await?;
        info!(replayed, filter = ?filter, "outbox dead letters replayed");
        Ok(replayed)
    }

    async fn discard(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let discarded = self.discard_where(dead_letters_with_ids(ids)).await?;
        warn!(discarded, ids = ?ids, "outbox dead letters discarded");
        Ok(discarded)
    }

    async fn discard_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let discarded = self.discard_where(dead_letter_condition(filter)).await?;
        warn!(discarded, filter = ?filter, "outbox dead letters discarded");
        Ok(discarded)
    }
}
