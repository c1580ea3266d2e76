//! An invoicing service adopting the transactional outbox, one step at a time. The
//! implementation guide (`docs/implementation_guide.md`) quotes this file between its
//! `ANCHOR` comments, and a test keeps the two identical.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_core::{
    EventEnvelope, EventId, EventRelayWorker, OutboxError, OutboxWriter, RelayNotifier,
    RelaySettings, TopicMap,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::PostgresOutbox;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::prelude::*;
use serde::Serialize;

// ANCHOR: migrator
/// The service's migrator: the outbox table is one more migration in the list.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateInvoices),
            Box::new(outbox_seaorm::CreateEventOutbox),
            Box::new(outbox_seaorm::AddCommitHorizon),
        ]
    }
}
// ANCHOR_END: migrator

/// The service's own table.
pub struct CreateInvoices;

impl MigrationName for CreateInvoices {
    fn name(&self) -> &str {
        "m20261127_100000_create_invoices"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateInvoices {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE invoices (
                     id uuid PRIMARY KEY,
                     customer_id text NOT NULL,
                     amount_cents bigint NOT NULL,
                     issued_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE invoices")
            .await?;
        Ok(())
    }
}

/// The payload of `InvoiceIssued`.
#[derive(Debug, Clone, Serialize)]
pub struct InvoiceIssued {
    /// The invoice.
    pub invoice_id: uuid::Uuid,
    /// Who pays it.
    pub customer_id: String,
    /// How much.
    pub amount_cents: i64,
}

/// The topic of `InvoiceIssued`.
pub const INVOICE_ISSUED_TOPIC: &str = "billing.invoice.issued.v1";

/// The running outbox of the service: the repository writers use, and the relay.
pub struct Outbox {
    /// Adds events inside the caller's transactions.
    pub repository: Arc<PostgresOutbox>,
    /// Publishes them.
    pub relay: EventRelayWorker,
}

// ANCHOR: wiring
/// Builds the repository, the Kafka publisher and the relay, and starts the relay.
/// `InvoiceIssued` events go to `invoice_topic`.
pub fn start_outbox(
    db: DatabaseConnection,
    brokers: &str,
    invoice_topic: &str,
) -> Result<Outbox, OutboxError> {
    let topics = TopicMap::new().with("InvoiceIssued", invoice_topic)?;
    let repository = Arc::new(PostgresOutbox::new(db)?.with_mapper(Arc::new(topics)));
    let publisher =
        KafkaPublisher::new(KafkaConfig::new(brokers).with_property("client.id", "billing-relay"))?;
    let settings = RelaySettings::default()
        .with_batch_size(500)
        .with_poll_interval(Duration::from_millis(500));
    let relay = EventRelayWorker::new(repository.clone(), Arc::new(publisher), settings)?;
    relay.start()?;
    Ok(Outbox { repository, relay })
}
// ANCHOR_END: wiring

/// Why issuing an invoice failed.
#[derive(Debug)]
pub enum IssueError {
    /// The database refused the business write.
    Database(sea_orm::DbErr),
    /// The outbox refused the event.
    Outbox(OutboxError),
}

impl From<sea_orm::DbErr> for IssueError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Database(e)
    }
}

impl From<OutboxError> for IssueError {
    fn from(e: OutboxError) -> Self {
        Self::Outbox(e)
    }
}

// ANCHOR: write
/// Issues an invoice: the invoice row and its `InvoiceIssued` event commit together, or neither
/// does. The relay is woken after the commit, so the event leaves within milliseconds.
pub async fn issue_invoice(
    db: &DatabaseConnection,
    outbox: &PostgresOutbox,
    notifier: &RelayNotifier,
    customer_id: &str,
    amount_cents: i64,
) -> Result<EventId, IssueError> {
    let invoice_id = uuid::Uuid::now_v7();
    let txn = db.begin().await?;
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO invoices (id, customer_id, amount_cents) VALUES ($1, $2, $3)",
        [invoice_id.into(), customer_id.into(), amount_cents.into()],
    ))
    .await?;
    let event = EventEnvelope::new(
        "InvoiceIssued",
        "billing",
        InvoiceIssued {
            invoice_id,
            customer_id: customer_id.to_owned(),
            amount_cents,
        },
    );
    // The key orders the events: everything about one customer arrives in order.
    let new_event = event
        .to_outbox_event("invoice", invoice_id.to_string())?
        .with_key(customer_id);
    let event_id = outbox.add_event(&txn, new_event).await?;
    txn.commit().await?;
    notifier.notify();
    Ok(event_id)
}
// ANCHOR_END: write

// ANCHOR: metrics
/// Installs the Prometheus recorder: the relay's metrics (and any of the service's) render
/// through it. Latencies get histogram buckets, so dashboards can compute quantiles across
/// instances.
pub fn install_metrics() -> PrometheusHandle {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder();
    let handle = recorder.handle();
    // Fails only when a recorder is already installed; that one then renders the metrics.
    let _ = metrics::set_global_recorder(recorder);
    outbox_core::metrics::describe();
    handle
}

/// The `/metrics` route.
pub fn metrics_routes(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<PrometheusHandle>| async move { h.render() }),
        )
        .with_state(handle)
}
// ANCHOR_END: metrics

// ANCHOR: shutdown
/// Waits for SIGTERM or ctrl-c, then stops the relay: it returns once the batch in flight is
/// acknowledged by Kafka and in the outbox, and the producer is flushed.
pub async fn run_until_signal(relay: &EventRelayWorker) -> Result<(), OutboxError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| OutboxError::Config(e.to_string()))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    relay.stop().await
}
// ANCHOR_END: shutdown
