//! The facade against the real PostgreSQL and Kafka: a commit wakes the relay (the poll interval
//! is a minute, so only the wake-up can deliver in time), a rollback or a dropped transaction
//! leaves nothing, a writer-only outbox wakes the relay of another outbox over `pg_notify`, and
//! invalid input is refused before anything is written.

use std::time::Duration;

use outbox::prelude::*;
use outbox::{Outbox, OutboxError, OutboxStats};
use outbox_test_harness::{TestDatabase, TestTopic, consume};

/// Polls so rarely that only a wake-up delivers within the tests' timeouts.
fn sleepy() -> RelaySettings {
    RelaySettings::default()
        .with_poll_interval(Duration::from_secs(60))
        .with_min_poll_interval(Duration::from_secs(60))
}

fn order(id: &str) -> NewOutboxEvent {
    NewOutboxEvent::json("order", id, "OrderPlaced", &serde_json::json!({"id": id})).unwrap()
}

async fn pending(outbox: &Outbox) -> u64 {
    let stats: OutboxStats = outbox.stats().await.unwrap();
    stats.pending
}

async fn setup() -> (TestDatabase, sea_orm::DatabaseConnection, TestTopic) {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    conn.execute_unprepared("CREATE TABLE orders (id text PRIMARY KEY)")
        .await
        .unwrap();
    let topic = TestTopic::create("facade", 2).await;
    (db, conn, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_and_rolled_back_or_dropped_events_never_leave() {
    let (_db, conn, topic) = setup().await;
    let outbox = Outbox::builder(conn.clone())
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .topic("OrderPlaced", topic.name())
        .settings(sleepy())
        .start()
        .unwrap();
    // Let the relay take the leadership and go to sleep on its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rolled_back = outbox.begin().await.unwrap();
    rolled_back.add(order("never-1")).await.unwrap();
    rolled_back.rollback().await.unwrap();
    {
        let dropped = outbox.begin().await.unwrap();
        dropped.add(order("never-2")).await.unwrap();
    }

    let txn = outbox.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders VALUES ('o-1')")
        .await
        .unwrap();
    let ids = txn.add_all(vec![order("o-1"), order("o-1")]).await.unwrap();
    txn.commit().await.unwrap();

    let received = consume(&topic.bootstrap(), topic.name(), 2, Duration::from_secs(20)).await;
    let got: Vec<_> = received
        .iter()
        .map(|m| m.header("event_id").unwrap().to_owned())
        .collect();
    let want: Vec<_> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(got, want, "both events, in order, woken by the commit");
    assert!(received.iter().all(|m| m.key.as_deref() == Some("o-1")));
    outbox.stop().await.unwrap();
    assert_eq!(
        pending(&outbox).await,
        0,
        "nothing rolled back or dropped was written"
    );
    let orders = conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id FROM orders",
        ))
        .await
        .unwrap();
    assert_eq!(
        orders.len(),
        1,
        "the business row committed with its events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_only_outbox_wakes_the_relay_of_another_process() {
    let (db, conn, topic) = setup().await;
    let relay = Outbox::builder(conn)
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .topic("OrderPlaced", topic.name())
        .settings(sleepy())
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another pool, as another replica's process would have.
    let writer = Outbox::builder(db.connect().await)
        .topic("OrderPlaced", topic.name())
        .writer_only()
        .unwrap();
    assert!(
        writer.status().is_none(),
        "a writer-only outbox runs no relay"
    );
    assert!(matches!(
        writer.start(),
        Err(outbox::Error::Outbox(OutboxError::Config(_)))
    ));
    let txn = writer.begin().await.unwrap();
    let id = txn.add(order("remote")).await.unwrap();
    txn.commit().await.unwrap();

    let received = consume(&topic.bootstrap(), topic.name(), 1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("event_id"),
        Some(id.to_string().as_str())
    );
    writer.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_transaction_joins_and_bad_input_changes_nothing() {
    let (_db, conn, topic) = setup().await;
    let outbox = Outbox::builder(conn.clone())
        .topic("OrderPlaced", topic.name())
        .writer_only()
        .unwrap();

    // A transaction the service began itself joins the outbox.
    use sea_orm::TransactionTrait;
    let txn = outbox.transaction(conn.begin().await.unwrap());
    txn.add(order("wrapped")).await.unwrap();
    // An event of an unknown type has no topic: refused, and the transaction goes on.
    let unknown = NewOutboxEvent::json("order", "x", "Unknown", &serde_json::json!({})).unwrap();
    assert!(matches!(
        txn.add(unknown).await,
        Err(outbox::Error::Outbox(OutboxError::UnknownEventType(_)))
    ));
    txn.commit().await.unwrap();
    assert_eq!(pending(&outbox).await, 1);

    // A SeaORM error on the handle is the same error type, and rolls back with the events.
    let txn = outbox.begin().await.unwrap();
    txn.add(order("doomed")).await.unwrap();
    let failed = txn
        .execute_unprepared("INSERT INTO no_such_table VALUES (1)")
        .await;
    let error: outbox::Error = failed.unwrap_err().into();
    assert!(matches!(error, outbox::Error::Database(_)));
    drop(txn);
    assert_eq!(
        pending(&outbox).await,
        1,
        "the failed transaction's event is gone"
    );

    // Invalid builder input is refused before anything is built.
    assert!(
        Outbox::builder(conn.clone())
            .topic("OrderPlaced", "not a topic!")
            .writer_only()
            .is_err()
    );
    assert!(matches!(
        Outbox::builder(conn).start(),
        Err(outbox::Error::Outbox(OutboxError::Config(message))) if message.contains("writer_only")
    ));
}
