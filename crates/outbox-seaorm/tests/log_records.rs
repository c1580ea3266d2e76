//! An application that logs through the `log` crate and installs no `tracing` subscriber still
//! gets the repository's lines, with their fields. In a test binary of its own, which never sets a
//! `tracing` subscriber (with one set, nothing reaches `log`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use outbox_core::{AttemptFailure, FailureOutcome, NewOutboxEvent, OutboxWriter, RelayStore};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use outbox_test_harness::TestDatabase;
use sea_orm_migration::MigratorTrait;

/// Every `log` record of the process, as `LEVEL message`.
struct Records(Mutex<Vec<String>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn records() -> &'static Records {
    static RECORDS: OnceLock<&'static Records> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let records: &'static Records = Box::leak(Box::new(Records(Mutex::new(Vec::new()))));
        log::set_logger(records).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        records
    })
}

fn event(key: &str) -> NewOutboxEvent {
    NewOutboxEvent::new("order", key, "OrderPlaced", b"{}".to_vec()).with_topic("orders")
}

#[tokio::test]
async fn events_parked_behind_a_retrying_event_are_logged_with_their_count() {
    let records = records();
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    OutboxMigrator::up(&conn, None).await.unwrap();
    let store = PostgresOutbox::new(conn.clone()).unwrap();
    let failing = store.add_event(&conn, event("a")).await.unwrap();
    assert!(store.acquire_leadership().await.unwrap());
    let mut first = store.claim_batch(10, None).await.unwrap();
    while first.events.is_empty() {
        // Another test's transaction on the server holds the commit horizon for a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        first = store.claim_batch(10, None).await.unwrap();
    }
    store
        .record_failures(&[AttemptFailure {
            id: first.events[0].id,
            event_id: failing,
            topic: "orders".into(),
            error: "refused".into(),
            outcome: FailureOutcome::RetryAfter(Duration::from_secs(600)),
        }])
        .await
        .unwrap();
    store.add_event(&conn, event("a")).await.unwrap();
    store.add_event(&conn, event("a")).await.unwrap();
    let mut cursor = first.cursor;
    let mut parked = 0;
    for _ in 0..500 {
        let batch = store.claim_batch(10, cursor).await.unwrap();
        assert!(batch.events.is_empty(), "a's events wait behind its retry");
        if batch.cursor.is_some() {
            cursor = batch.cursor;
            parked += 1;
        }
        if cursor.map(|c| c.id) == Some(first.events[0].id + 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(parked >= 1);
    let lines: Vec<String> = records
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("outbox events parked behind a retrying event of their key"))
        .cloned()
        .collect();
    let held: usize = lines
        .iter()
        .map(|l| {
            let count = l.split("held=").nth(1).expect("the count is a field");
            count
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(lines.iter().all(|l| l.starts_with("DEBUG ")), "{lines:?}");
    assert_eq!(held, 2, "both of a's new events were parked: {lines:?}");
}
