//! What the service consumes: its inbox handlers, their consumer names and topics
//! ([`handlers`]), and the helpers they share.

use std::sync::Arc;

use outbox::OutboxTransaction;
use outbox_core::{HandlerError, InboxHandler, InboxMessage};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};
use uuid::Uuid;

use crate::config::{Config, Readiness};
use crate::events::{
    CONTENT_PROVISIONING_COMPLETED_TOPIC, ESSAY_CONTENT_PROVISIONED_TOPIC,
    ESSAY_VALIDATION_FAILED_TOPIC,
};
use crate::provisioning::ProvisioningCompletedHandler;
use crate::readiness::ReadinessHandler;

/// The readiness module's consumer name (its inbox rows are keyed by it).
pub const READINESS_CONSUMER: &str = "readiness";
/// The provisioning-completed handler's consumer name.
pub const PROVISIONING_COMPLETED_CONSUMER: &str = "provisioning_completed";

/// An inbox handler of the service, run on the outbox's transaction.
pub type Handler = Arc<dyn InboxHandler<OutboxTransaction>>;

/// One consumer of the service: its name, the (prefixed) topics it reads, and its handler.
#[derive(Clone)]
pub struct Consumer {
    /// The consumer name the inbox deduplicates by.
    pub name: &'static str,
    /// The topics, with the configured prefix.
    pub topics: Vec<String>,
    /// The handler.
    pub handler: Handler,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// The consumers `serve` runs: the provisioning-completed handler always, and the readiness
/// module (the File Service's two essay events) unless `READINESS=els`.
pub fn handlers(config: &Config) -> Vec<Consumer> {
    let mut consumers = Vec::new();
    if config.readiness == Readiness::Internal {
        consumers.push(Consumer {
            name: READINESS_CONSUMER,
            topics: vec![
                config.topic(ESSAY_CONTENT_PROVISIONED_TOPIC),
                config.topic(ESSAY_VALIDATION_FAILED_TOPIC),
            ],
            handler: Arc::new(ReadinessHandler::new(config.topic_prefix.clone())),
        });
    }
    consumers.push(Consumer {
        name: PROVISIONING_COMPLETED_CONSUMER,
        topics: vec![config.topic(CONTENT_PROVISIONING_COMPLETED_TOPIC)],
        handler: Arc::new(ProvisioningCompletedHandler::new(
            config.topic_prefix.clone(),
        )),
    });
    consumers
}

/// A database error inside a handler, classified as the facade does: an integrity violation,
/// bad data or a statement that cannot run is permanent (the same message would repeat it);
/// anything else (the connection, a deadlock, a restarting server) is transient and retried.
pub(crate) fn db_error(error: DbErr) -> HandlerError {
    outbox::Error::Database(error).into()
}

/// An outbox error inside a handler, with its retry class.
pub(crate) fn outbox_error(error: outbox::Error) -> HandlerError {
    error.into()
}

/// The correlation id for events a handler publishes: the consumed envelope's, or else the
/// consumed event's id (stable across redeliveries).
pub(crate) fn correlation_of(
    incoming: Option<Uuid>,
    message: &InboxMessage,
) -> Result<Uuid, HandlerError> {
    match incoming {
        Some(id) => Ok(id),
        None => message.event_id(),
    }
}

/// Runs `sql` with `values` on `txn`.
pub(crate) async fn execute(
    txn: &OutboxTransaction,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, HandlerError> {
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .map(|r| r.rows_affected())
    .map_err(db_error)
}

/// The first row of `sql` on `txn`.
pub(crate) async fn query_one(
    txn: &OutboxTransaction,
    sql: &str,
    values: Vec<Value>,
) -> Result<Option<QueryResult>, HandlerError> {
    txn.query_one(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .map_err(db_error)
}

/// Every row of `sql` on `txn`.
pub(crate) async fn query_all(
    txn: &OutboxTransaction,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, HandlerError> {
    txn.query_all(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .map_err(db_error)
}

/// Column `name` of `row`.
pub(crate) fn get<T: sea_orm::TryGetable>(
    row: &QueryResult,
    name: &str,
) -> Result<T, HandlerError> {
    row.try_get("", name).map_err(db_error)
}

/// A string field of a batch's stored request (`processing_metadata`).
pub(crate) fn metadata_field(metadata: &Option<String>, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(metadata.as_deref()?).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}
