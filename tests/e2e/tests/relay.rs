//! The relay end to end on the real PostgreSQL and Kafka: delivery and atomicity, per-key order
//! across batches, graceful stop, a killed relay, and two relays on one table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    Delivery, EventPublisher, EventRelayWorker, NewOutboxEvent, OutboxEvent, OutboxWriter,
    PublishError,
};
use outbox_e2e::{
    check_delivery, delivery, fast_settings, keys, migrated, wait_until, write_events,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::{PostgresOutbox, entity};
use outbox_test_harness::{TestDatabase, TestTopic, consume_until_quiet, init_tracing};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, TransactionTrait};
use tokio::sync::Notify;

async fn pending(conn: &DatabaseConnection) -> u64 {
    entity::Entity::find().count(conn).await.unwrap()
}

fn kafka(topic: &TestTopic) -> Arc<KafkaPublisher> {
    Arc::new(KafkaPublisher::new(KafkaConfig::new(topic.bootstrap())).unwrap())
}

#[tokio::test]
async fn committed_events_arrive_in_key_order_across_batches_and_rolled_back_ones_never() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_order", 3).await;
    let written = write_events(&conn, topic.name(), &keys(5), 30, 0, 7).await;

    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let txn = conn.begin().await.unwrap();
    let doomed = NewOutboxEvent::new("test", "key-0", "Numbered", b"never".to_vec())
        .with_topic(topic.name());
    let doomed_id = outbox.add_event(&txn, doomed).await.unwrap();
    txn.rollback().await.unwrap();

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let worker =
        EventRelayWorker::new(store, kafka(&topic), fast_settings().with_batch_size(10)).unwrap();
    worker.start().unwrap();
    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        written.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    worker.stop().await.unwrap();

    let report = check_delivery(&written, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert!(
        received
            .iter()
            .all(|m| m.header("event_id") != Some(doomed_id.to_string().as_str())),
        "a rolled-back event must never be sent"
    );
    assert_eq!(pending(&conn).await, 0, "every published row is deleted");
    assert!(worker.status().relayed >= 150);
}

#[tokio::test]
async fn a_graceful_stop_leaves_nothing_sent_but_unacknowledged() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_stop", 2).await;
    let written = write_events(&conn, topic.name(), &keys(10), 300, 0, 100).await;

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let worker = EventRelayWorker::new(store, kafka(&topic), fast_settings()).unwrap();
    worker.start().unwrap();
    wait_until("some batches relayed", Duration::from_secs(60), || async {
        worker.status().relayed >= 500
    })
    .await;
    worker.stop().await.unwrap();
    let left = pending(&conn).await as usize;

    let report = delivery(
        &topic.bootstrap(),
        topic.name(),
        &written,
        written.len() - left,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.unexpected, 0);
    assert!(report.order_violations.is_empty(), "{report:?}");
    assert_eq!(
        report.missing.len(),
        left,
        "exactly the rows still in the outbox are the events Kafka has not got: nothing was \
         sent without being acknowledged"
    );
    let still_pending: Vec<String> = entity::Entity::find()
        .all(&conn)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.event_id.to_string())
        .collect();
    for id in &report.missing {
        assert!(still_pending.contains(&id.to_string()));
    }
}

/// Passes sends to Kafka, then (from batch `kill_at` on) signals and waits before reporting the
/// acknowledgements: the window in which a relay that dies has published but not acknowledged.
struct SlowAck {
    inner: Arc<KafkaPublisher>,
    batches: std::sync::atomic::AtomicUsize,
    kill_at: usize,
    acked: Arc<Notify>,
}

#[async_trait]
impl EventPublisher for SlowAck {
    async fn prepare(&self, events: &[OutboxEvent]) {
        self.inner.prepare(events).await;
    }

    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        self.inner.check(event)
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        let results = self.inner.publish(events).await;
        let batch = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if batch + 1 >= self.kill_at {
            self.acked.notify_one();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        results
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

#[tokio::test]
async fn a_relay_killed_between_kafka_ack_and_database_ack_loses_nothing() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_kill", 3).await;
    let written = write_events(&conn, topic.name(), &keys(8), 250, 0, 100).await;
    let batch_size = 200;

    let acked = Arc::new(Notify::new());
    let slow = Arc::new(SlowAck {
        inner: kafka(&topic),
        batches: Default::default(),
        kill_at: 3,
        acked: acked.clone(),
    });
    let first_store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let first = EventRelayWorker::new(
        first_store.clone(),
        slow,
        fast_settings().with_batch_size(batch_size),
    )
    .unwrap();
    first.start().unwrap();
    acked.notified().await;
    // Kafka has the third batch; the relay dies before the database hears of it.
    first.abort();
    drop(first);
    drop(first_store);

    let second_store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let second = EventRelayWorker::new(
        second_store.clone(),
        kafka(&topic),
        fast_settings().with_batch_size(batch_size),
    )
    .unwrap();
    second.start().unwrap();
    wait_until("the outbox drained", Duration::from_secs(60), || async {
        pending(&conn).await == 0
    })
    .await;
    second.stop().await.unwrap();

    let report = delivery(
        &topic.bootstrap(),
        topic.name(),
        &written,
        written.len() + batch_size,
        Duration::from_secs(2),
    )
    .await;
    println!(
        "killed relay: {} messages for {} events, {} duplicates (batch size {batch_size})",
        report.received,
        written.len(),
        report.duplicates
    );
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert!(
        (1..=batch_size).contains(&report.duplicates),
        "the unacknowledged batch is sent again, and nothing more: {} duplicates",
        report.duplicates
    );
}

async fn terminate_leader_session(conn: &DatabaseConnection) -> i64 {
    conn.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND database = (
             SELECT oid FROM pg_database WHERE datname = current_database())",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap()
}

#[tokio::test]
async fn of_two_relays_only_one_publishes_and_the_other_takes_over_when_its_session_dies() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_ha", 2).await;

    let a_store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let a = EventRelayWorker::new(a_store.clone(), kafka(&topic), fast_settings()).unwrap();
    let b_store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let b = EventRelayWorker::new(b_store.clone(), kafka(&topic), fast_settings()).unwrap();
    a.start().unwrap();
    wait_until("a leads", Duration::from_secs(10), || async {
        a.status().leader
    })
    .await;
    b.start().unwrap();

    let mut written = write_events(&conn, topic.name(), &keys(4), 100, 0, 20).await;
    wait_until(
        "the first events relayed",
        Duration::from_secs(60),
        || async { pending(&conn).await == 0 },
    )
    .await;
    // The worker counts a batch just after its rows are deleted.
    wait_until(
        "the leader counted them",
        Duration::from_secs(10),
        || async { a.status().relayed >= 400 },
    )
    .await;
    assert_eq!(a.status().relayed, 400);
    assert_eq!(b.status().relayed, 0, "the standby publishes nothing");
    assert!(!b.status().leader);

    assert_eq!(terminate_leader_session(&conn).await, 1);
    let killed_at = Instant::now();
    written.extend(write_events(&conn, topic.name(), &keys(4), 100, 100, 20).await);
    wait_until("b took over", Duration::from_secs(10), || async {
        b.status().leader
    })
    .await;
    let takeover = killed_at.elapsed();
    wait_until("the rest relayed", Duration::from_secs(60), || async {
        pending(&conn).await == 0
    })
    .await;
    println!("takeover after the leader's session died: {takeover:?}");
    assert!(b.status().relayed > 0);
    assert!(!a.status().leader, "the old leader is a standby now");

    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let report = delivery(
        &topic.bootstrap(),
        topic.name(),
        &written,
        written.len(),
        Duration::from_secs(1),
    )
    .await;
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert!(report.duplicates <= 100, "{report:?}");
    drop((a_store, b_store));
}
