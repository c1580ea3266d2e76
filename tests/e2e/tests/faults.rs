//! Faults made for real: the broker process stopped, PostgreSQL crashed and restarted, an event
//! too large for Kafka. Each test runs its own broker or database server where it breaks one.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    DeadLetterFilter, DeadLetterStore, EventRelayWorker, NewOutboxEvent, OutboxWriter, RelayStore,
};
use outbox_e2e::{
    CountingStore, Written, delivery, fast_settings, keys, migrated, wait_until, write_events,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::{PostgresOutbox, entity};
use outbox_test_harness::{
    KafkaNode, PostgresNode, TestDatabase, TestTopic, consume_until_quiet, init_tracing,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

async fn pending(conn: &DatabaseConnection) -> Option<u64> {
    entity::Entity::find().count(conn).await.ok()
}

#[tokio::test]
async fn a_broker_outage_dead_letters_nothing_and_every_event_arrives_in_order_after_it() {
    init_tracing();
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "outage", 2).await;
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let batch_size = 100;

    let store = CountingStore::new(Arc::new(PostgresOutbox::new(conn.clone()).unwrap()));
    let publisher = Arc::new(KafkaPublisher::new(KafkaConfig::new(node.bootstrap())).unwrap());
    let settings = fast_settings()
        .with_batch_size(batch_size)
        .with_stats_interval(Duration::from_secs(1));
    let worker = EventRelayWorker::new(store.clone(), publisher, settings).unwrap();
    worker.start().unwrap();

    let mut written = write_events(&conn, topic.name(), &keys(6), 50, 0, 10).await;
    wait_until(
        "the first events relayed",
        Duration::from_secs(60),
        || async { pending(&conn).await == Some(0) },
    )
    .await;

    node.stop().await;
    written.extend(write_events(&conn, topic.name(), &keys(6), 100, 50, 10).await);

    // While Kafka is down the relay waits on its batch instead of hammering the database.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = store.calls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = store.calls() - before;
    println!("relay store calls during 5 s of broker outage: {during}");
    assert!(
        during <= 12,
        "{during} store calls in 5 s of outage: not bounded"
    );
    let dead = entity::Entity::find()
        .filter(entity::Column::DeadLetteredAt.is_not_null())
        .count(&conn)
        .await
        .unwrap();
    let attempts = entity::Entity::find()
        .filter(entity::Column::Attempts.gt(0))
        .count(&conn)
        .await
        .unwrap();
    assert_eq!(
        (dead, attempts),
        (0, 0),
        "an outage never counts toward dead-lettering"
    );

    node.start_again().await;
    wait_until("the backlog drained", Duration::from_secs(120), || async {
        pending(&conn).await == Some(0)
    })
    .await;
    worker.stop().await.unwrap();

    let report = delivery(
        &node.bootstrap(),
        topic.name(),
        &written,
        written.len(),
        Duration::from_secs(2),
    )
    .await;
    println!(
        "broker outage: {} events written, {} messages received, {} duplicates",
        written.len(),
        report.received,
        report.duplicates
    );
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert!(
        report.duplicates <= batch_size,
        "duplicates only from the batch in flight: {}",
        report.duplicates
    );
}

#[tokio::test]
async fn the_relay_recovers_from_a_postgres_restart_without_restarting_the_process() {
    init_tracing();
    let server = PostgresNode::start().await;
    let db = TestDatabase::create_on(&server.url()).await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("pg_restart", 2).await;

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let publisher = Arc::new(KafkaPublisher::new(KafkaConfig::new(topic.bootstrap())).unwrap());
    let worker = EventRelayWorker::new(store, publisher, fast_settings()).unwrap();
    worker.start().unwrap();

    let mut written = write_events(&conn, topic.name(), &keys(4), 25, 0, 10).await;
    wait_until(
        "relayed before the crash",
        Duration::from_secs(60),
        || async { pending(&conn).await == Some(0) },
    )
    .await;

    server.restart(Duration::from_secs(1)).await;
    // The pool reconnects on its own; writers retry until the server accepts them again.
    let mut more: Option<Vec<Written>> = None;
    for _ in 0..100 {
        let attempt = tokio::spawn({
            let conn = conn.clone();
            let topic = topic.name().to_owned();
            async move { write_events(&conn, &topic, &keys(4), 25, 25, 10).await }
        })
        .await;
        if let Ok(events) = attempt {
            more = Some(events);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    written.extend(more.expect("writes resume after the restart"));
    wait_until(
        "relayed after the restart",
        Duration::from_secs(60),
        || async { pending(&conn).await == Some(0) },
    )
    .await;
    assert!(worker.status().leader, "the relay took its leadership back");
    worker.stop().await.unwrap();

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
}

#[tokio::test]
async fn an_oversized_event_is_dead_lettered_while_other_keys_flow_and_replays_once_fixed() {
    init_tracing();
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let topic = TestTopic::create_with(
        &bootstrap,
        "oversized",
        2,
        &[("max.message.bytes", "4194304")],
    )
    .await;
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();

    let event = |key: &str, payload: Vec<u8>| {
        NewOutboxEvent::new("test", key, "Numbered", payload).with_topic(topic.name())
    };
    let a1 = outbox
        .add_event(&conn, event("a", b"a1".to_vec()))
        .await
        .unwrap();
    let big = outbox
        .add_event(&conn, event("a", vec![b'x'; 1_500_000]))
        .await
        .unwrap();
    let a3 = outbox
        .add_event(&conn, event("a", b"a3".to_vec()))
        .await
        .unwrap();
    let mut b_ids = Vec::new();
    for n in 0..5 {
        b_ids.push(
            outbox
                .add_event(&conn, event("b", format!("b{n}").into_bytes()))
                .await
                .unwrap(),
        );
    }

    let store = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    let default_limits = Arc::new(KafkaPublisher::new(KafkaConfig::new(&bootstrap)).unwrap());
    let settings = fast_settings().with_max_attempts(3);
    let worker = EventRelayWorker::new(store.clone(), default_limits, settings.clone()).unwrap();
    worker.start().unwrap();
    wait_until(
        "the big event dead-lettered",
        Duration::from_secs(30),
        || async {
            !store
                .dead_letters(&DeadLetterFilter::default(), 10)
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    wait_until(
        "everything else relayed",
        Duration::from_secs(30),
        || async { pending(&conn).await == Some(1) },
    )
    .await;
    worker.stop().await.unwrap();

    let dead = store
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.event_id, big);
    assert_eq!(dead[0].event.attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("message.max.bytes")
    );
    let received = consume_until_quiet(
        &bootstrap,
        topic.name(),
        7,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let order: Vec<String> = received
        .iter()
        .map(|m| m.header("event_id").unwrap().to_owned())
        .collect();
    let position = |id: outbox_core::EventId| order.iter().position(|o| *o == id.to_string());
    assert!(position(a1) < position(a3), "a1 before a3");
    assert!(
        b_ids.iter().all(|id| position(*id).is_some()),
        "key b flowed"
    );
    assert_eq!(position(big), None);

    // The operator raises the producer's limit, replays, and the event goes through.
    let raised = Arc::new(
        KafkaPublisher::new(
            KafkaConfig::new(&bootstrap).with_property("message.max.bytes", "4000000"),
        )
        .unwrap(),
    );
    assert_eq!(store.replay(&[dead[0].event.id]).await.unwrap(), 1);
    let worker = EventRelayWorker::new(store.clone(), raised, settings).unwrap();
    worker.start().unwrap();
    wait_until(
        "the replayed event relayed",
        Duration::from_secs(30),
        || async { pending(&conn).await == Some(0) },
    )
    .await;
    worker.stop().await.unwrap();
    let received = consume_until_quiet(
        &bootstrap,
        topic.name(),
        8,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let replayed = received
        .iter()
        .find(|m| m.header("event_id") == Some(big.to_string().as_str()))
        .expect("the replayed event arrived");
    assert_eq!(replayed.payload.len(), 1_500_000);
    assert!(store.stats().await.unwrap().dead_lettered == 0);
}
