//! The writer's log line, in a test binary of its own (`tracing` caches per-callsite interest
//! process-wide): `outbox event added` is logged once the `INSERT` succeeded, with the event's
//! ids, and never for an insert that failed.

use std::sync::{Arc, Mutex};

use outbox_core::{NewOutboxEvent, OutboxWriter};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, TransactionTrait};
use sea_orm_migration::MigratorTrait;

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_event_is_logged_as_added_only_once_its_insert_succeeded() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    OutboxMigrator::up(&conn, None).await.unwrap();
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();

    let good = NewOutboxEvent::new("order", "o-1", "OrderPlaced", b"{}".to_vec()).with_topic("t");
    let good_id = good.event_id;
    let txn = conn.begin().await.unwrap();
    outbox.add_event(&txn, good).await.unwrap();
    txn.commit().await.unwrap();

    // An insert that fails: its transaction is already aborted.
    let bad = NewOutboxEvent::new("order", "o-2", "OrderPlaced", b"{}".to_vec()).with_topic("t");
    let bad_id = bad.event_id;
    let txn = conn.begin().await.unwrap();
    assert!(txn.execute_unprepared("SELECT 1/0").await.is_err());
    assert!(outbox.add_event(&txn, bad).await.is_err());
    txn.rollback().await.unwrap();

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let added: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["fields"]["message"] == "outbox event added")
        .collect();
    assert_eq!(added.len(), 1, "only the insert that succeeded:\n{text}");
    let line = &added[0]["fields"];
    assert_eq!(line["event_id"], good_id.to_string());
    assert_eq!(line["event_type"], "OrderPlaced");
    assert_eq!(line["aggregate_type"], "order");
    assert_eq!(line["aggregate_id"], "o-1");
    assert_eq!(line["topic"], "t");
    assert_eq!(line["key"], "o-1");
    assert!(
        !text.contains(&bad_id.to_string()),
        "nothing logged for the failed add"
    );
}
