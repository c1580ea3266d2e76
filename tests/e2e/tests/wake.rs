//! Writers in another process wake the relay through PostgreSQL (`pg_notify` after their commit,
//! `LISTEN` on the leader), and polling still delivers everything when notifications are lost.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{EventRelayWorker, NewOutboxEvent, OutboxWriter};
use outbox_e2e::{Written, check_delivery, fast_settings, migrated, wait_until};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::PostgresOutbox;
use outbox_test_harness::{TestDatabase, TestTopic, consume_until_quiet, init_tracing};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

fn kafka(topic: &TestTopic) -> Arc<KafkaPublisher> {
    Arc::new(KafkaPublisher::new(KafkaConfig::new(topic.bootstrap())).unwrap())
}

async fn write(conn: &DatabaseConnection, topic: &str, key: &str, seq: usize) -> Written {
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let event = NewOutboxEvent::json(
        "test",
        key.to_owned(),
        "Numbered",
        &serde_json::json!({"seq": seq}),
    )
    .unwrap()
    .with_topic(topic);
    let written = Written {
        event_id: event.event_id,
        key: key.to_owned(),
        seq,
    };
    let txn = conn.begin().await.unwrap();
    outbox.add_event(&txn, event).await.unwrap();
    txn.commit().await.unwrap();
    written
}

#[tokio::test]
async fn a_writer_in_another_process_wakes_the_relay_long_before_its_next_poll() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_remote_wake", 2).await;
    // The relay polls every two minutes: only a wake-up can bring these events out sooner.
    let settings = fast_settings()
        .with_min_poll_interval(Duration::from_secs(120))
        .with_poll_interval(Duration::from_secs(120));
    let worker = EventRelayWorker::new(
        Arc::new(PostgresOutbox::new(conn.clone()).unwrap()),
        kafka(&topic),
        settings,
    )
    .unwrap();
    worker.start().unwrap();
    wait_until("the relay polled once", Duration::from_secs(30), || async {
        worker.status().last_poll_at.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another process: its own pool, no relay, only the store's wake-up notifier.
    let other = db.connect().await;
    let notifier = PostgresOutbox::new(other.clone()).unwrap().wake_notifier();
    let mut written = Vec::new();
    for seq in 0..3 {
        written.push(write(&other, topic.name(), "remote", seq).await);
        notifier.notify();
    }
    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        written.len(),
        Duration::from_secs(30),
        Duration::from_millis(200),
    )
    .await;
    let report = check_delivery(&written, &received);
    assert!(
        report.is_complete_and_ordered(),
        "delivered well before the two-minute poll: {report:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_relay_delivers_by_polling_when_wake_ups_are_lost() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_lost_wake", 2).await;
    let settings = fast_settings()
        .with_min_poll_interval(Duration::from_millis(200))
        .with_poll_interval(Duration::from_millis(400));
    let worker = EventRelayWorker::new(
        Arc::new(PostgresOutbox::new(conn.clone()).unwrap()),
        kafka(&topic),
        settings,
    )
    .unwrap();
    worker.start().unwrap();

    // A writer that never notifies (its notifications lost).
    let other = db.connect().await;
    let mut written = vec![write(&other, topic.name(), "lost", 0).await];
    wait_until("the leader listens", Duration::from_secs(30), || {
        let conn = conn.clone();
        async move { listeners(&conn).await > 0 }
    })
    .await;
    // The listening session dies too: the relay goes on polling.
    conn.execute_unprepared(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .await
    .unwrap();
    for seq in 1..4 {
        written.push(write(&other, topic.name(), "lost", seq).await);
    }
    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        written.len(),
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    worker.stop().await.unwrap();
    let report = check_delivery(&written, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
}

/// Sessions of this database whose last statement was a `LISTEN`.
async fn listeners(conn: &DatabaseConnection) -> i64 {
    conn.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}
