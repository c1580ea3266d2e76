//! The module wires a working outbox: an event written through the injected repository reaches
//! the real Kafka through the injected relay.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{DeadLetterStore, NewOutboxEvent, OutboxError, RelaySettings, TopicMap};
use outbox_di::{
    OutboxModule, OutboxPublisher, OutboxRelayWorker, OutboxRepository, OutboxSettings,
};
use outbox_kafka::KafkaConfig;
use outbox_seaorm::OutboxMigrator;
use outbox_test_harness::{TestDatabase, TestTopic, consume};
use sea_orm::TransactionTrait;
use sea_orm_migration::MigratorTrait;
use shaku::{Component, HasComponent, Interface, module};

/// A service component that writes through the injected repository.
trait Orders: Interface {
    fn outbox(&self) -> Arc<dyn OutboxRepository>;
}

#[derive(Component)]
#[shaku(interface = Orders)]
struct OrdersImpl {
    #[shaku(inject)]
    outbox: Arc<dyn OutboxRepository>,
}

impl Orders for OrdersImpl {
    fn outbox(&self) -> Arc<dyn OutboxRepository> {
        self.outbox.clone()
    }
}

module! {
    OrdersModule {
        components = [OrdersImpl],
        providers = [],
        use OutboxModule {
            components = [dyn OutboxRepository, dyn OutboxPublisher, dyn OutboxRelayWorker],
            providers = []
        }
    }
}

fn settings(topic: &TestTopic) -> OutboxSettings {
    OutboxSettings::default()
        .with_kafka(KafkaConfig::new(topic.bootstrap()))
        .with_mapper(Arc::new(
            TopicMap::new().with("OrderPlaced", topic.name()).unwrap(),
        ))
        .with_relay(RelaySettings::default().with_poll_interval(Duration::from_millis(100)))
}

#[tokio::test]
async fn a_service_module_writes_through_the_outbox_submodule_and_the_relay_delivers() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    OutboxMigrator::up(&conn, None).await.unwrap();
    let topic = TestTopic::create("di", 1).await;

    let outbox = OutboxModule::from_settings(conn.clone(), settings(&topic)).unwrap();
    let module = OrdersModule::builder(Arc::new(outbox)).build();
    let relay: Arc<dyn OutboxRelayWorker> = module.resolve();
    relay.start().unwrap();

    let orders: &dyn Orders = module.resolve_ref();
    let txn = conn.begin().await.unwrap();
    let event =
        NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({"n": 1})).unwrap();
    let event_id = orders.outbox().add_event(&txn, event).await.unwrap();
    txn.commit().await.unwrap();
    relay.notifier().notify();

    let received = consume(&topic.bootstrap(), topic.name(), 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("event_id"),
        Some(event_id.to_string().as_str())
    );
    assert_eq!(received[0].key.as_deref(), Some("o-1"));
    relay.stop().await.unwrap();

    // The same repository serves administration through its narrower interfaces.
    let dead_letters: Arc<dyn DeadLetterStore> = orders.outbox();
    assert!(
        dead_letters
            .dead_letters(&Default::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let publisher: Arc<dyn OutboxPublisher> = module.resolve();
    publisher.flush(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_is_built() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    let invalid_relay =
        OutboxSettings::default().with_relay(RelaySettings::default().with_batch_size(0));
    assert!(matches!(
        OutboxModule::from_settings(conn.clone(), invalid_relay),
        Err(OutboxError::Config(message)) if message.contains("batch_size")
    ));
    let bad_property = OutboxSettings::default()
        .with_kafka(KafkaConfig::default().with_property("acks", "sometimes"));
    assert!(matches!(
        OutboxModule::from_settings(conn, bad_property),
        Err(OutboxError::Config(message)) if message.contains("acks")
    ));
}
