//! A topic's own size limit (`max.message.bytes`, which the broker checks against whole record
//! batches) through the real relay on the real PostgreSQL and Kafka: it neither dead-letters
//! valid events nor reorders a key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    DeadLetterFilter, DeadLetterStore, Delivery, EventId, EventPublisher, EventRelayWorker,
    NewOutboxEvent, OutboxEvent, OutboxWriter, PublishError,
};
use outbox_e2e::{Written, check_delivery, fast_settings, migrated, wait_until};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::{PostgresOutbox, entity};
use outbox_test_harness::{TestDatabase, TestTopic, consume_until_quiet, init_tracing};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait,
};

/// Rows neither published nor dead-lettered.
async fn pending(conn: &DatabaseConnection) -> u64 {
    entity::Entity::find()
        .filter(entity::Column::DeadLetteredAt.is_null())
        .count(conn)
        .await
        .unwrap()
}

async fn dead_lettered(conn: &DatabaseConnection) -> Vec<entity::Model> {
    entity::Entity::find()
        .filter(entity::Column::DeadLetteredAt.is_not_null())
        .all(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn events_that_fit_a_small_topic_limit_all_arrive_in_key_order_and_none_is_dead_lettered() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    // Below the producer's default batch size (1 MB): a batch of these events would be refused.
    let topic = TestTopic::create_with(
        &bootstrap,
        "limit_20k",
        3,
        &[("max.message.bytes", "20000")],
    )
    .await;

    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let keys: Vec<String> = (0..10).map(|k| format!("key-{k}")).collect();
    let mut written = Vec::new();
    let txn = conn.begin().await.unwrap();
    for seq in 0..10 {
        for key in &keys {
            let mut payload = format!("{key}:{seq}:").into_bytes();
            payload.resize(1024, b'.');
            let event =
                NewOutboxEvent::new("test", key.clone(), "Sized", payload).with_topic(topic.name());
            written.push(Written {
                event_id: event.event_id,
                key: key.clone(),
                seq,
            });
            outbox.add_event(&txn, event).await.unwrap();
        }
    }
    txn.commit().await.unwrap();
    assert_eq!(written.len(), 100);

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let publisher = Arc::new(KafkaPublisher::new(KafkaConfig::new(&bootstrap)).unwrap());
    let worker =
        EventRelayWorker::new(store, publisher, fast_settings().with_max_attempts(1)).unwrap();
    worker.start().unwrap();
    wait_until("the outbox drained", Duration::from_secs(60), || async {
        entity::Entity::find().count(&conn).await.unwrap() == 0
            || !dead_lettered(&conn).await.is_empty()
    })
    .await;
    worker.stop().await.unwrap();

    assert!(
        dead_lettered(&conn).await.is_empty(),
        "no valid event is dead-lettered: {:?}",
        dead_lettered(&conn)
            .await
            .iter()
            .map(|m| m.last_error.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(worker.status().dead_lettered, 0);
    let received = consume_until_quiet(
        &bootstrap,
        topic.name(),
        written.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let report = check_delivery(&written, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
}

/// The Kafka publisher, noting for every publish that carries `watched` whether `until` was
/// already dead-lettered in the database at that moment.
struct Watching {
    inner: KafkaPublisher,
    conn: DatabaseConnection,
    watched: EventId,
    until: EventId,
    seen: Mutex<Vec<bool>>,
}

#[async_trait]
impl EventPublisher for Watching {
    async fn prepare(&self, events: &[OutboxEvent]) {
        self.inner.prepare(events).await;
    }

    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        self.inner.check(event)
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        if events.iter().any(|e| e.event_id == self.watched) {
            let until = entity::Entity::find()
                .filter(entity::Column::EventId.eq(self.until.as_uuid()))
                .one(&self.conn)
                .await
                .unwrap()
                .expect("the big event's row is kept when dead-lettered");
            self.seen
                .lock()
                .unwrap()
                .push(until.dead_lettered_at.is_some());
        }
        self.inner.publish(events).await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

#[tokio::test]
async fn only_the_event_too_large_for_its_topic_is_dead_lettered_and_its_key_waits_for_it() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let topic =
        TestTopic::create_with(&bootstrap, "limit_2k", 1, &[("max.message.bytes", "2000")]).await;

    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let event = |payload: Vec<u8>| {
        NewOutboxEvent::new("test", "key-a", "Sized", payload).with_topic(topic.name())
    };
    let (first, big, last) = (
        event(b"one1".to_vec()),
        event(vec![b'x'; 5000]),
        event(b"two2".to_vec()),
    );
    let ids = (first.event_id, big.event_id, last.event_id);
    let txn = conn.begin().await.unwrap();
    outbox
        .add_events(&txn, vec![first, big, last])
        .await
        .unwrap();
    txn.commit().await.unwrap();

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let publisher = Arc::new(Watching {
        inner: KafkaPublisher::new(KafkaConfig::new(&bootstrap)).unwrap(),
        conn: conn.clone(),
        watched: ids.2,
        until: ids.1,
        seen: Mutex::new(Vec::new()),
    });
    let settings = fast_settings()
        .with_max_attempts(2)
        .with_retry_backoff_base(Duration::from_millis(50))
        .with_retry_backoff_max(Duration::from_millis(100));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();
    wait_until(
        "the big event dead-lettered and the rest relayed",
        Duration::from_secs(60),
        || async { pending(&conn).await == 0 },
    )
    .await;
    worker.stop().await.unwrap();

    let dead = store
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event.event_id, ids.1);
    assert_eq!(dead[0].event.attempts, 2);
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(
        error.contains("max.message.bytes=2000") && error.contains(topic.name()),
        "the error names the topic's limit: {error}"
    );

    let seen = publisher.seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|dead| *dead),
        "the later event of the key is sent only once the big one is dead-lettered: {seen:?}"
    );
    let received = consume_until_quiet(
        &bootstrap,
        topic.name(),
        2,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let order: Vec<&str> = received
        .iter()
        .map(|m| m.header("event_id").unwrap())
        .collect();
    assert_eq!(
        order,
        [ids.0.to_string(), ids.2.to_string()],
        "the small events arrive, in order, and the big one never"
    );
    assert_eq!(worker.status().dead_lettered, 1);
}
