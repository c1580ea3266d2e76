//! The implementation guide's testing step: the service's own behaviour against the real
//! PostgreSQL and Kafka, each test on a database and topic of its own.

use std::time::Duration;

use example_adoption::{Migrator, issue_invoice, start_outbox};
use outbox_test_harness::{TestDatabase, TestTopic, consume};
use sea_orm_migration::MigratorTrait;

// ANCHOR: test
#[tokio::test]
async fn an_issued_invoice_reaches_kafka_keyed_by_its_customer() {
    let db = TestDatabase::create().await; // a fresh database, dropped at the end
    let conn = db.connect().await;
    Migrator::up(&conn, None).await.unwrap();
    let topic = TestTopic::create("invoices", 3).await; // a uniquely named topic

    let outbox = start_outbox(conn.clone(), &topic.bootstrap(), topic.name()).unwrap();
    let event_id = issue_invoice(&outbox, "customer-7", 4200).await.unwrap();

    let received = consume(&topic.bootstrap(), topic.name(), 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].key.as_deref(), Some("customer-7"));
    assert_eq!(
        received[0].header("event_id"),
        Some(event_id.to_string().as_str())
    );
    let envelope: serde_json::Value = received[0].json();
    assert_eq!(envelope["data"]["amount_cents"], 4200);
    outbox.stop().await.unwrap();
}
// ANCHOR_END: test
