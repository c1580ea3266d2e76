//! An invoicing service adopting the transactional outbox, one step at a time. The
//! implementation guide (`docs/implementation_guide.md`) quotes this file between its
//! `ANCHOR` comments, and a test keeps the two identical.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox::prelude::*;
use outbox::{EventId, Inbox, Outbox};
use sea_orm::{DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::prelude::*;
use serde::{Deserialize, Serialize};

// ANCHOR: migrator
/// The service's migrator: the outbox table is one more migration in the list.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateInvoices),
            Box::new(outbox_seaorm::CreateEventOutbox),
            Box::new(outbox_seaorm::AddCommitHorizon),
            // Only for a service that consumes through the inbox (section 13).
            Box::new(outbox_seaorm::CreateEventInbox),
            // New payloads compress with lz4, not pglz: large events cost far less to write.
            Box::new(outbox_seaorm::CompressPayloadsWithLz4),
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

// ANCHOR: wiring
/// Builds the outbox (the PostgreSQL repository, the Kafka publisher and the relay) and starts the
/// relay. `InvoiceIssued` events go to `invoice_topic`.
pub fn start_outbox(
    db: DatabaseConnection,
    brokers: &str,
    invoice_topic: &str,
) -> Result<Outbox, outbox::Error> {
    Outbox::builder(db)
        .kafka(KafkaConfig::new(brokers).with_property("client.id", "billing-relay"))
        .topic("InvoiceIssued", invoice_topic)
        .settings(
            RelaySettings::default()
                .with_batch_size(500)
                .with_poll_interval(Duration::from_millis(500)),
        )
        .start()
}
// ANCHOR_END: wiring

// ANCHOR: write
/// Issues an invoice: the invoice row and its `InvoiceIssued` event commit together, or neither
/// does. The commit wakes the relay, so the event leaves within milliseconds.
pub async fn issue_invoice(
    outbox: &Outbox,
    customer_id: &str,
    amount_cents: i64,
) -> Result<EventId, outbox::Error> {
    let txn = outbox.begin().await?;
    let event_id = write_invoice(&txn, customer_id, amount_cents).await?;
    txn.commit().await?;
    Ok(event_id)
}

/// Writes an invoice and its `InvoiceIssued` event on `txn`.
pub async fn write_invoice(
    txn: &OutboxTransaction,
    customer_id: &str,
    amount_cents: i64,
) -> Result<EventId, outbox::Error> {
    let invoice_id = uuid::Uuid::now_v7();
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
    txn.add(new_event).await
}
// ANCHOR_END: write

/// The payload of `OrderPlaced`, which the orders service publishes (fields this service does
/// not use are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Who ordered.
    pub customer_id: String,
    /// The order's total.
    pub amount_cents: i64,
}

/// The topic of `OrderPlaced`.
pub const ORDER_PLACED_TOPIC: &str = "orders.order.placed.v1";

// ANCHOR: handler
/// Invoices each order once: the inbox records the event's id, and this handler writes the
/// invoice and its `InvoiceIssued` event, on one transaction. A redelivered `OrderPlaced`
/// (same `event_id`) applies nothing.
pub struct InvoiceOrders;

#[async_trait::async_trait]
impl InboxHandler<OutboxTransaction> for InvoiceOrders {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        // An unparsable message is a permanent error: recorded `rejected` and skipped.
        let order: EventEnvelope<OrderPlaced> = message.json()?;
        if order.data.amount_cents <= 0 {
            return Err(HandlerError::permanent(
                "an order of nothing cannot be invoiced",
            ));
        }
        // Database errors are transient (retried); `?` classifies them.
        write_invoice(txn, &order.data.customer_id, order.data.amount_cents).await?;
        Ok(Handled::applied())
    }
}
// ANCHOR_END: handler

// ANCHOR: inbox
/// Starts consuming `OrderPlaced` from `order_topic` as the consumer group `billing`.
pub fn start_inbox(
    outbox: &Outbox,
    brokers: &str,
    order_topic: &str,
) -> Result<Inbox, outbox::Error> {
    outbox
        .inbox(KafkaConsumerConfig::new(brokers, "billing").with_property("client.id", "billing"))
        .handler("billing.invoice-orders", [order_topic], InvoiceOrders)
        .start()
}
// ANCHOR_END: inbox

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
    outbox::parts::core::metrics::describe();
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
/// Waits for SIGTERM or ctrl-c, then stops the outbox's relay: it returns once the batch in
/// flight is acknowledged by Kafka and in the outbox, and the producer is flushed.
pub async fn run_until_signal(outbox: &Outbox) -> Result<(), Box<dyn std::error::Error>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    outbox.stop().await?;
    Ok(())
}
// ANCHOR_END: shutdown
