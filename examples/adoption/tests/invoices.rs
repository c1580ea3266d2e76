//! The implementation guide's testing step: the service's own behaviour against the real
//! PostgreSQL and Kafka, each test on a database and topic of its own.

use std::time::Duration;

use example_adoption::{Migrator, issue_invoice, start_outbox};
use outbox_test_harness::{TestDatabase, TestTopic, consume};
use sea_orm::ConnectionTrait;
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

/// Section 13 of the guide: an `OrderPlaced` delivered twice (the same bytes and `event_id`, as
/// a relay that crashed before acknowledging sends it) is invoiced once, with one
/// `InvoiceIssued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_delivered_twice_is_invoiced_once() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    Migrator::up(&conn, None).await.unwrap();
    let orders = TestTopic::create("orders", 2).await;
    let invoices = TestTopic::create("invoices", 1).await;
    let outbox = start_outbox(conn.clone(), &invoices.bootstrap(), invoices.name()).unwrap();
    let inbox = example_adoption::start_inbox(&outbox, &orders.bootstrap(), orders.name()).unwrap();

    let order = outbox::EventEnvelope::new(
        "OrderPlaced",
        "orders",
        example_adoption::OrderPlaced {
            customer_id: "customer-9".into(),
            amount_cents: 1500,
        },
    );
    let bytes = serde_json::to_vec(&order).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", orders.bootstrap())
        .create()
        .unwrap();
    for _ in 0..2 {
        let event_id = order.event_id.to_string();
        let record = FutureRecord::to(orders.name())
            .key("customer-9")
            .payload(&bytes)
            .headers(OwnedHeaders::new().insert(Header {
                key: "event_id",
                value: Some(event_id.as_bytes()),
            }));
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let received = consume(
        &invoices.bootstrap(),
        invoices.name(),
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(received.len(), 1);
    let envelope: serde_json::Value = received[0].json();
    assert_eq!(envelope["data"]["customer_id"], "customer-9");
    for _ in 0..600 {
        if inbox.status().duplicates == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox.status().duplicates, 1, "{:?}", inbox.status());
    inbox.stop().await.unwrap();
    outbox.stop().await.unwrap();
    let invoices_written = conn
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FROM invoices",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(invoices_written, 1);
}
