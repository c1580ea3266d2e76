//! Adding events: one `INSERT` on the caller's connection or transaction. These go through a
//! SeaORM [`Statement`] on that connection, because they must share the caller's transaction
//! (the event commits with the business change or not at all) and the caller holds a SeaORM
//! type. The statement's fixed part is `sql/insert.sql`; only the `VALUES` list of a multi-row
//! `INSERT` is built here.

use async_trait::async_trait;
use outbox_core::metrics as m;
use outbox_core::{EventId, NewOutboxEvent, OutboxError, OutboxWriter};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement, Value,
};
use tracing::debug;

use crate::PostgresOutbox;
use crate::outbox::db_error;

/// `INSERT INTO event_outbox (...columns...) VALUES`, followed by one `(...)` a row.
const INSERT: &str = include_str!("../sql/insert.sql");

/// Columns a row carries, each one parameter.
const COLUMNS: usize = 8;

/// The single-row `INSERT` (the row contract's statement).
const INSERT_ONE: &str = concat!(
    include_str!("../sql/insert.sql"),
    "($1, $2, $3, $4, $5, $6, $7, $8)"
);

/// Most rows one multi-row `INSERT` carries: PostgreSQL takes at most 65,535 parameters, 8 a row.
const MAX_ROWS_PER_INSERT: usize = 65_535 / COLUMNS;

/// An event ready to insert.
struct Prepared {
    event_id: EventId,
    event_type: String,
    values: Vec<Value>,
    logged: Option<Added>,
}

/// The fields of the "outbox event added" line.
struct Added {
    aggregate_type: String,
    aggregate_id: String,
    topic: String,
    key: String,
}

impl Prepared {
    /// Counts the event and logs it: only once its `INSERT` succeeded.
    fn added(self) -> EventId {
        metrics::counter!(m::EVENTS_ADDED_TOTAL, "event_type" => self.event_type.clone())
            .increment(1);
        if let Some(added) = self.logged {
            debug!(
                event_id = %self.event_id,
                event_type = %self.event_type,
                aggregate_type = %added.aggregate_type,
                aggregate_id = %added.aggregate_id,
                topic = %added.topic,
                key = %added.key,
                "outbox event added"
            );
        }
        self.event_id
    }
}

/// The connections an event can be added on. Concrete rather than generic over
/// `ConnectionTrait`, so the writer's code is compiled (and measured) once.
#[derive(Clone, Copy)]
enum Writer<'a> {
    Pool(&'a DatabaseConnection),
    Transaction(&'a DatabaseTransaction),
}

impl Writer<'_> {
    async fn execute(self, statement: Statement) -> Result<(), OutboxError> {
        match self {
            Self::Pool(conn) => conn.execute(statement).await,
            Self::Transaction(txn) => txn.execute(statement).await,
        }
        .map(|_| ())
        .map_err(db_error)
    }
}

/// The `VALUES` list of `rows` rows, numbering parameters from `$1`.
fn values_list(rows: usize) -> String {
    (0..rows)
        .map(|row| {
            let first = row * COLUMNS + 1;
            let placeholders: Vec<String> =
                (first..first + COLUMNS).map(|n| format!("${n}")).collect();
            format!("({})", placeholders.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl PostgresOutbox {
    fn prepare(&self, event: NewOutboxEvent) -> Result<Prepared, OutboxError> {
        event.validate()?;
        let topic = match &event.topic {
            Some(topic) => topic.clone(),
            None => self
                .mapper
                .topic_for(&event.event_type)
                .ok_or_else(|| OutboxError::UnknownEventType(event.event_type.clone()))?,
        };
        outbox_core::validate_topic(&topic)?;
        let key = event.key().to_owned();
        let headers = serde_json::to_value(&event.headers)?;
        let event_id = event.event_id;
        let event_type = event.event_type.clone();
        // What the "added" line names, copied only when that line is logged.
        let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| Added {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            topic: topic.clone(),
            key: key.clone(),
        });
        let values = vec![
            event_id.as_uuid().into(),
            event.aggregate_type.into(),
            event.aggregate_id.into(),
            event.event_type.into(),
            topic.into(),
            key.into(),
            event.payload.into(),
            headers.into(),
        ];
        Ok(Prepared {
            event_id,
            event_type,
            values,
            logged,
        })
    }

    async fn add_one(
        &self,
        conn: Writer<'_>,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        let mut prepared = self.prepare(event)?;
        let values = std::mem::take(&mut prepared.values);
        conn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            INSERT_ONE,
            values,
        ))
        .await?;
        Ok(prepared.added())
    }

    /// One multi-row `INSERT` per [`MAX_ROWS_PER_INSERT`] events, in order.
    async fn add_many(
        &self,
        conn: Writer<'_>,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        let mut prepared = events
            .into_iter()
            .map(|event| self.prepare(event))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = Vec::with_capacity(prepared.len());
        for chunk in prepared.chunks_mut(MAX_ROWS_PER_INSERT) {
            let mut values = Vec::with_capacity(chunk.len() * COLUMNS);
            for event in chunk.iter_mut() {
                values.append(&mut event.values);
            }
            let sql = format!("{INSERT}{}", values_list(chunk.len()));
            conn.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        }
        for event in prepared {
            ids.push(event.added());
        }
        Ok(ids)
    }
}

#[async_trait]
impl OutboxWriter<DatabaseTransaction> for PostgresOutbox {
    async fn add_event(
        &self,
        txn: &DatabaseTransaction,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        self.add_one(Writer::Transaction(txn), event).await
    }

    async fn add_events(
        &self,
        txn: &DatabaseTransaction,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        self.add_many(Writer::Transaction(txn), events).await
    }
}

/// Adding on the pool commits the event on its own: for events that belong to no business
/// transaction. Inside a business change, add on its `DatabaseTransaction`.
#[async_trait]
impl OutboxWriter<DatabaseConnection> for PostgresOutbox {
    async fn add_event(
        &self,
        conn: &DatabaseConnection,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        self.add_one(Writer::Pool(conn), event).await
    }

    async fn add_events(
        &self,
        conn: &DatabaseConnection,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        self.add_many(Writer::Pool(conn), events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_row_insert_numbers_eight_parameters_a_row() {
        assert_eq!(
            format!("{INSERT}{}", values_list(1)),
            INSERT_ONE,
            "one row is the single-row statement"
        );
        let two = values_list(2);
        assert_eq!(
            two,
            "($1, $2, $3, $4, $5, $6, $7, $8), ($9, $10, $11, $12, $13, $14, $15, $16)"
        );
    }
}
