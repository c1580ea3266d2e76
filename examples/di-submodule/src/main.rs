//! Run with: `cargo run -p example-di-submodule` (after `scripts/services.sh up`)
//!
//! A service wires the outbox with shaku: its own module lists its components and takes
//! `outbox_di::OutboxModule` as a submodule; its `OrderService` gets the `Outbox` injected and
//! writes each order and its event in one transaction, whose commit wakes the relay. The relay
//! is started with the service and stopped at the end.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox::prelude::*;
use outbox_di::OutboxModule;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sea_orm::{Database, Statement};
use shaku::{Component, HasComponent, Interface, module};

const TOPIC: &str = "example.di.orders.v1";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service's own capability: placing orders.
#[async_trait]
trait OrderService: Interface {
    async fn place(&self, order_id: &str, total: i32) -> Result<(), outbox::Error>;
}

#[derive(Component)]
#[shaku(interface = OrderService)]
struct OrderServiceImpl {
    #[shaku(inject)]
    outbox: Arc<Outbox>,
}

#[async_trait]
impl OrderService for OrderServiceImpl {
    async fn place(&self, order_id: &str, total: i32) -> Result<(), outbox::Error> {
        let txn = self.outbox.begin().await?;
        txn.execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO di_orders (id, total) VALUES ($1, $2)",
            [order_id.into(), total.into()],
        ))
        .await?;
        let placed = serde_json::json!({"order_id": order_id, "total": total});
        txn.add(NewOutboxEvent::json(
            "order",
            order_id,
            "OrderPlaced",
            &placed,
        )?)
        .await?;
        txn.commit().await
    }
}

module! {
    OrdersModule {
        components = [OrderServiceImpl],
        providers = [],
        use OutboxModule {
            components = [Outbox],
            providers = []
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into());
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());

    let db = Database::connect(&database_url).await?;
    outbox::migrate(&db).await?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS di_orders (id text PRIMARY KEY, total int NOT NULL)",
    )
    .await?;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1));
    admin.create_topics(&[topic], &AdminOptions::new()).await?;

    // The outbox module from the outbox builder, then the service's module on top of it.
    let builder = Outbox::builder(db)
        .kafka(KafkaConfig::new(&bootstrap))
        .topic("OrderPlaced", TOPIC);
    let module = OrdersModule::builder(Arc::new(OutboxModule::from_builder(builder)?)).build();

    let outbox: Arc<Outbox> = module.resolve();
    outbox.start()?;
    let orders: Arc<dyn OrderService> = module.resolve();
    let run = std::process::id();
    for n in 1..=3 {
        orders.place(&format!("di-{run}-{n}"), n * 10).await?;
    }
    let relayed = || outbox.status().map_or(0, |s| s.relayed);
    while relayed() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outbox.stop().await?;
    println!(
        "placed 3 orders through the injected outbox; its relay published {} events to {TOPIC}",
        relayed()
    );
    Ok(())
}
