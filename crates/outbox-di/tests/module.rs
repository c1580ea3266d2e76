//! The module wires a working outbox: an event written by a service component through the
//! injected outbox reaches the real Kafka through its relay, woken by the commit; the inbox module
//! provides an inbox that applies what the outbox published.

use std::sync::Arc;
use std::time::Duration;

use outbox::prelude::*;
use outbox::{Outbox, TopicMap};
use outbox_core::{DeadLetterStore, OutboxError};
use outbox_di::OutboxModule;
use outbox_test_harness::{TestDatabase, TestTopic, consume};
use shaku::{Component, HasComponent, Interface, module};

/// A service component that writes through the injected outbox.
trait Orders: Interface {
    fn outbox(&self) -> &Outbox;
}

#[derive(Component)]
#[shaku(interface = Orders)]
struct OrdersImpl {
    #[shaku(inject)]
    outbox: Arc<Outbox>,
}

impl Orders for OrdersImpl {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

module! {
    OrdersModule {
        components = [OrdersImpl],
        providers = [],
        use OutboxModule {
            components = [Outbox],
            providers = []
        }
    }
}

#[tokio::test]
async fn a_service_module_writes_through_the_outbox_submodule_and_the_relay_delivers() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    let topic = TestTopic::create("di", 1).await;

    // A long poll interval: only the commit's wake-up gets the event out quickly.
    let builder = Outbox::builder(conn)
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .mapper(Arc::new(
            TopicMap::new().with("OrderPlaced", topic.name()).unwrap(),
        ))
        .settings(RelaySettings::default().with_poll_interval(Duration::from_secs(60)));
    let module =
        OrdersModule::builder(Arc::new(OutboxModule::from_builder(builder).unwrap())).build();

    let orders: &dyn Orders = module.resolve_ref();
    orders.outbox().start().unwrap();
    let resolved: Arc<Outbox> = module.resolve();
    assert!(
        resolved.status().is_some_and(|s| s.running),
        "the same outbox, running"
    );

    let txn = orders.outbox().begin().await.unwrap();
    let event =
        NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({"n": 1})).unwrap();
    let event_id = txn.add(event).await.unwrap();
    txn.commit().await.unwrap();

    let received = consume(&topic.bootstrap(), topic.name(), 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("event_id"),
        Some(event_id.to_string().as_str())
    );
    assert_eq!(received[0].key.as_deref(), Some("o-1"));
    orders.outbox().stop().await.unwrap();

    // The same repository serves administration.
    assert!(
        orders
            .outbox()
            .repository()
            .dead_letters(&Default::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_is_built() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    let kafka = KafkaConfig::new("127.0.0.1:9092");
    let invalid_relay = Outbox::builder(conn.clone())
        .kafka(kafka.clone())
        .settings(RelaySettings::default().with_batch_size(0));
    assert!(matches!(
        OutboxModule::from_builder(invalid_relay),
        Err(outbox::Error::Outbox(OutboxError::Config(message))) if message.contains("batch_size")
    ));
    let bad_property =
        Outbox::builder(conn.clone()).kafka(kafka.clone().with_property("acks", "sometimes"));
    assert!(matches!(
        OutboxModule::from_builder(bad_property),
        Err(outbox::Error::Outbox(OutboxError::Config(message))) if message.contains("acks")
    ));
    let bad_topic = Outbox::builder(conn.clone())
        .kafka(kafka)
        .topic("OrderPlaced", "bad topic!");
    assert!(matches!(
        OutboxModule::from_builder(bad_topic),
        Err(outbox::Error::Outbox(
            OutboxError::InvalidEvent(_) | OutboxError::Config(_)
        ))
    ));
    let no_kafka = Outbox::builder(conn);
    assert!(matches!(
        OutboxModule::from_builder(no_kafka),
        Err(outbox::Error::Outbox(OutboxError::Config(message))) if message.contains("writer_only")
    ));
}

/// Counts what it applies.
struct Count(Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl InboxHandler<OutboxTransaction> for Count {
    async fn handle(
        &self,
        _txn: &OutboxTransaction,
        _message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Handled::applied())
    }
}

#[tokio::test]
async fn the_inbox_module_provides_an_inbox_that_applies_what_the_outbox_published() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    let topic = TestTopic::create("di_inbox", 1).await;
    let outbox = Outbox::builder(conn)
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .topic("OrderPlaced", topic.name())
        .start()
        .unwrap();
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let builder = outbox
        .inbox(KafkaConsumerConfig::new(
            topic.bootstrap(),
            outbox_test_harness::unique_name("di"),
        ))
        .handler("orders.placed", [topic.name()], Count(applied.clone()));
    let module = outbox_di::InboxModule::from_builder(builder).unwrap();
    let inbox: Arc<outbox_di::Inbox> = module.resolve();
    inbox.start().unwrap();

    let txn = outbox.begin().await.unwrap();
    txn.add(NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({})).unwrap())
        .await
        .unwrap();
    txn.commit().await.unwrap();
    for _ in 0..600 {
        if inbox.status().consumed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox.status().consumed, 1);
    assert_eq!(applied.load(std::sync::atomic::Ordering::SeqCst), 1);
    inbox.stop().await.unwrap();
    outbox.stop().await.unwrap();

    let no_handler = outbox.inbox(KafkaConsumerConfig::new(topic.bootstrap(), "g"));
    assert!(outbox_di::InboxModule::from_builder(no_handler).is_err());
}
