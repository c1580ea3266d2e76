//! Run with: `cargo run -p example-di-submodule` (after `scripts/services.sh up`)
//!
//! A service wires the outbox with shaku: its own module lists its components and takes
//! `outbox_di::OutboxModule` as a submodule; its `OrderService` gets the outbox repository
//! injected and writes each order and its event in one transaction. The relay comes from the
//! same module, is started with the service and stopped at the end.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{EventEnvelope, OutboxError, TopicMap};
use outbox_di::{
    OutboxModule, OutboxPublisher, OutboxRelayWorker, OutboxRepository, OutboxSettings,
};
use outbox_kafka::KafkaConfig;
use outbox_seaorm::OutboxMigrator;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use shaku::{Component, HasComponent, Interface, module};

const TOPIC: &str = "example.di.orders.v1";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The service's own capability: placing orders.
#[async_trait]
trait OrderService: Interface {
    async fn place(&self, order_id: &str, total: i32) -> Result<(), Error>;
}

#[derive(Component)]
#[shaku(interface = OrderService)]
struct OrderServiceImpl {
    db: DatabaseConnection,
    #[shaku(inject)]
    outbox: Arc<dyn OutboxRepository>,
}

#[async_trait]
impl OrderService for OrderServiceImpl {
    async fn place(&self, order_id: &str, total: i32) -> Result<(), Error> {
        let txn = self.db.begin().await?;
        txn.execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO di_orders (id, total) VALUES ($1, $2)",
            [order_id.into(), total.into()],
        ))
        .await?;
        let event = EventEnvelope::new(
            "OrderPlaced",
            "orders",
            serde_json::json!({"order_id": order_id, "total": total}),
        );
        self.outbox
            .add_event(&txn, event.to_outbox_event("order", order_id)?)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}

module! {
    OrdersModule {
        components = [OrderServiceImpl],
        providers = [],
        use OutboxModule {
            components = [dyn OutboxRepository, dyn OutboxPublisher, dyn OutboxRelayWorker],
            providers = []
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into());
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());

    let db = Database::connect(&database_url).await?;
    OutboxMigrator::up(&db, None).await?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS di_orders (id text PRIMARY KEY, total int NOT NULL)",
    )
    .await?;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1));
    admin.create_topics(&[topic], &AdminOptions::new()).await?;

    // The outbox module from settings, then the service's module on top of it.
    let settings = OutboxSettings::default()
        .with_kafka(KafkaConfig::new(&bootstrap))
        .with_mapper(Arc::new(TopicMap::new().with("OrderPlaced", TOPIC)?));
    let outbox = OutboxModule::from_settings(db.clone(), settings)?;
    let module = OrdersModule::builder(Arc::new(outbox))
        .with_component_parameters::<OrderServiceImpl>(OrderServiceImplParameters { db })
        .build();

    let relay: Arc<dyn OutboxRelayWorker> = module.resolve();
    relay.start()?;
    let orders: Arc<dyn OrderService> = module.resolve();
    let run = std::process::id();
    for n in 1..=3 {
        orders.place(&format!("di-{run}-{n}"), n * 10).await?;
        relay.notifier().notify();
    }
    while relay.status().relayed < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay
        .stop()
        .await
        .map_err(|e: OutboxError| Box::new(e) as Error)?;
    println!(
        "placed 3 orders through the injected repository; the injected relay published {} events to {TOPIC}",
        relay.status().relayed
    );
    Ok(())
}
