//! Per-key order under the conditions that broke it: a transaction that takes its id early and
//! commits late while the relay works through a backlog, many such keys at once beside writers
//! that keep batches full, and the commit-horizon migration applied to a live, populated table
//! while a relay and a writer run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{EventRelayWorker, NewOutboxEvent, OutboxWriter};
use outbox_e2e::{
    CountingStore, Written, check_delivery, fast_settings, keys, migrated, wait_until,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::{AddCommitHorizon, CreateEventOutbox, PostgresOutbox};
use outbox_test_harness::{TestDatabase, TestTopic, consume_until_quiet, init_tracing};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager};

fn kafka(topic: &TestTopic) -> Arc<KafkaPublisher> {
    Arc::new(KafkaPublisher::new(KafkaConfig::new(topic.bootstrap())).unwrap())
}

fn numbered(topic: &str, key: &str, seq: usize) -> NewOutboxEvent {
    NewOutboxEvent::json(
        "test",
        key.to_owned(),
        "Numbered",
        &serde_json::json!({"key": key, "seq": seq}),
    )
    .unwrap()
    .with_topic(topic)
}

fn record(event: &NewOutboxEvent, seq: usize) -> Written {
    Written {
        event_id: event.event_id,
        key: event.key().to_owned(),
        seq,
    }
}

/// The deterministic form of the reordering found under load: the first event of a key is
/// inserted (taking the lowest id) in a transaction held open while other keys' events commit
/// and the relay polls again and again; then it commits, and the second event of its key is
/// written after that commit. The second must never reach Kafka first.
#[tokio::test]
async fn a_late_commit_is_delivered_before_every_write_that_began_after_it() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_late_commit", 3).await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let store = CountingStore::new(Arc::new(PostgresOutbox::new(conn.clone()).unwrap()));
    let worker = EventRelayWorker::new(
        store.clone(),
        kafka(&topic),
        fast_settings().with_batch_size(10),
    )
    .unwrap();
    worker.start().unwrap();

    let mut expected = Vec::new();
    let late_txn = conn.begin().await.unwrap();
    let first = numbered(topic.name(), "late", 0);
    expected.push(record(&first, 0));
    outbox.add_event(&late_txn, first).await.unwrap();
    for n in 0..50 {
        let event = numbered(topic.name(), &format!("other-{}", n % 5), n / 5);
        expected.push(record(&event, n / 5));
        outbox.add_event(&conn, event).await.unwrap();
    }
    // The relay looks again and again while the first transaction stays open: with id-ordered
    // claims it published the other keys (ids above the late one) here.
    let calls = store.calls();
    wait_until(
        "the relay polled ten more times",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move { store.calls() >= calls + 10 }
        },
    )
    .await;
    assert_eq!(
        worker.status().relayed,
        0,
        "everything waits for the open transaction"
    );

    late_txn.commit().await.unwrap();
    let second = numbered(topic.name(), "late", 1);
    expected.push(record(&second, 1));
    outbox.add_event(&conn, second).await.unwrap();

    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        expected.len(),
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    worker.stop().await.unwrap();
    let report = check_delivery(&expected, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    let late: Vec<usize> = received
        .iter()
        .filter(|m| m.key.as_deref() == Some("late"))
        .map(|m| m.json::<serde_json::Value>()["seq"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(late, [0, 1]);
}

/// The load that reordered 5 of 40 keys: batches kept full by two writers, and 40 keys each
/// written as `BEGIN; INSERT seq 0; pg_sleep(0.4); COMMIT; INSERT seq 1`.
#[tokio::test]
async fn keys_written_one_after_another_stay_in_order_while_batches_are_full() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = migrated(&db).await;
    let topic = TestTopic::create("e2e_busy_order", 6).await;
    let worker = EventRelayWorker::new(
        Arc::new(PostgresOutbox::new(conn.clone()).unwrap()),
        kafka(&topic),
        fast_settings().with_batch_size(200),
    )
    .unwrap();
    worker.start().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut fillers = Vec::new();
    for writer in 0..2 {
        let (conn, stop, topic) = (conn.clone(), stop.clone(), topic.name().to_owned());
        fillers.push(tokio::spawn(async move {
            let outbox = PostgresOutbox::new(conn.clone()).unwrap();
            let mut written = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                let events: Vec<NewOutboxEvent> = (0..50)
                    .map(|n| numbered(&topic, &format!("fill-{writer}-{n}"), seq))
                    .collect();
                written.extend(events.iter().map(|e| record(e, seq)));
                let txn = conn.begin().await.unwrap();
                outbox.add_events(&txn, events).await.unwrap();
                txn.commit().await.unwrap();
                seq += 1;
            }
            written
        }));
    }
    let mut slow = Vec::new();
    for key in keys(40) {
        let (conn, topic) = (conn.clone(), topic.name().to_owned());
        slow.push(tokio::spawn(async move {
            let outbox = PostgresOutbox::new(conn.clone()).unwrap();
            let first = numbered(&topic, &key, 0);
            let second = numbered(&topic, &key, 1);
            let expected = vec![record(&first, 0), record(&second, 1)];
            let txn = conn.begin().await.unwrap();
            outbox.add_event(&txn, first).await.unwrap();
            txn.execute_unprepared("SELECT pg_sleep(0.4)")
                .await
                .unwrap();
            txn.commit().await.unwrap();
            outbox.add_event(&conn, second).await.unwrap();
            expected
        }));
    }
    let mut expected = Vec::new();
    for task in slow {
        expected.extend(task.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    for task in fillers {
        expected.extend(task.await.unwrap());
    }

    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        expected.len(),
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await;
    worker.stop().await.unwrap();
    let report = check_delivery(&expected, &received);
    println!(
        "{} events ({} of 40 slow keys), {} duplicates, {} order violations",
        expected.len(),
        80,
        report.duplicates,
        report.order_violations.len()
    );
    assert!(report.is_complete_and_ordered(), "{report:?}");
}

/// Applies the commit-horizon migration to a table that was created without it and holds
/// 100,000 pending events, while a relay (which cannot claim until the column exists) and a
/// writer run. Every event arrives, in order per key, the old ones included.
#[tokio::test]
async fn the_commit_horizon_migration_runs_on_a_live_populated_table() {
    init_tracing();
    let db = TestDatabase::create().await;
    let conn = db.connect_with(16).await;
    let manager = SchemaManager::new(&conn);
    CreateEventOutbox.up(&manager).await.unwrap();
    let topic = TestTopic::create("e2e_live_migration", 6).await;

    // 100,000 events of 100 keys, written before the migration, in id order per key.
    let backlog = 100_000usize;
    conn.execute_unprepared(&format!(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, \
         event_key, payload)
         SELECT gen_random_uuid(), 'test', 'old-' || (n % 100), 'Numbered', '{topic}', \
                'old-' || (n % 100), convert_to(format('{{\"seq\": %s}}', n / 100), 'UTF8')
         FROM generate_series(0, {last}) AS n ORDER BY n",
        topic = topic.name(),
        last = backlog - 1,
    ))
    .await
    .unwrap();

    let worker = EventRelayWorker::new(
        Arc::new(PostgresOutbox::new(conn.clone()).unwrap()),
        kafka(&topic),
        fast_settings().with_batch_size(1000),
    )
    .unwrap();
    worker.start().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (conn, stop, topic) = (conn.clone(), stop.clone(), topic.name().to_owned());
        tokio::spawn(async move {
            let outbox = PostgresOutbox::new(conn.clone()).unwrap();
            let mut written = Vec::new();
            let mut seq = 0;
            // Writes go on through the migration (the table is not yet migrated: the writer's
            // INSERT names no xid column, so it works on both shapes).
            while !stop.load(Ordering::SeqCst) || seq < 20 {
                let events: Vec<NewOutboxEvent> = (0..10)
                    .map(|n| numbered(&topic, &format!("new-{n}"), seq))
                    .collect();
                written.extend(events.iter().map(|e| record(e, seq)));
                let txn = conn.begin().await.unwrap();
                outbox.add_events(&txn, events).await.unwrap();
                txn.commit().await.unwrap();
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        worker.status().relayed,
        0,
        "no claim before the column exists"
    );

    let started = Instant::now();
    migrate_horizon(&conn).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let new_events = writer.await.unwrap();

    let expected_total = backlog + new_events.len();
    let received = consume_until_quiet(
        &topic.bootstrap(),
        topic.name(),
        expected_total,
        Duration::from_secs(180),
        Duration::from_secs(1),
    )
    .await;
    worker.stop().await.unwrap();

    let report = check_delivery(&new_events, &received);
    assert!(report.missing.is_empty(), "{report:?}");
    assert!(report.order_violations.is_empty(), "{report:?}");
    // The old events carry no writer-side ids: check them by key and sequence number.
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut old = 0;
    for message in &received {
        let key = message.key.clone().unwrap_or_default();
        if !key.starts_with("old-") {
            continue;
        }
        old += 1;
        let seq = message.json::<serde_json::Value>()["seq"].as_i64().unwrap();
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(previous < seq, "{key}: {seq} arrived after {previous}");
        }
    }
    assert!(
        old >= backlog,
        "every old event arrived: {old} of {backlog}"
    );
    println!(
        "migration on {backlog} pending rows took {took:?}; {} events written meanwhile",
        new_events.len()
    );
}

/// Runs the commit-horizon migration as a service's migrator would, in one transaction.
async fn migrate_horizon(conn: &DatabaseConnection) {
    struct Only;
    impl MigratorTrait for Only {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateEventOutbox), Box::new(AddCommitHorizon)]
        }
    }
    // The table exists already: record the first migration as applied, as a service that ran it
    // earlier would have it.
    Only::install(conn).await.unwrap();
    conn.execute_unprepared(
        "INSERT INTO seaql_migrations (version, applied_at) \
         VALUES ('m20261127_000001_create_event_outbox', 0)",
    )
    .await
    .unwrap();
    Only::up(conn, None).await.unwrap();
}
