//! The facade against the real PostgreSQL and Kafka: committed events arrive in order and a
//! rollback or a dropped transaction leaves nothing; a commit that added events sends the
//! cross-process wake-up (`pg_notify`, observed with `LISTEN`) and one that added none does not;
//! a writer-only outbox's events reach Kafka through another outbox's relay; invalid input is
//! refused before anything is written.
//!
//! Whether a wake-up alone (without polling) gets an event out is the end-to-end wake tests'
//! subject (`tests/e2e/tests/wake.rs`): they first wait for the cluster-wide commit horizon to
//! pass, which tests running in parallel hold back.

use std::time::Duration;

use outbox::prelude::*;
use outbox::{Outbox, OutboxError, OutboxStats};
use outbox_test_harness::{TestDatabase, TestTopic, consume};
use sea_orm::sqlx::postgres::PgListener;

fn quick() -> RelaySettings {
    RelaySettings::default().with_poll_interval(Duration::from_millis(100))
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
async fn committed_events_arrive_in_order_and_rolled_back_or_dropped_ones_never() {
    let (_db, conn, topic) = setup().await;
    let outbox = Outbox::builder(conn.clone())
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .topic("OrderPlaced", topic.name())
        .settings(quick())
        .start()
        .unwrap();

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

    let received = consume(&topic.bootstrap(), topic.name(), 2, Duration::from_secs(60)).await;
    let got: Vec<_> = received
        .iter()
        .map(|m| m.header("event_id").unwrap().to_owned())
        .collect();
    let want: Vec<_> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        got, want,
        "both committed events, in order, and nothing else"
    );
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
async fn a_commit_with_events_wakes_the_relay_and_a_writer_only_outbox_reaches_kafka() {
    let (db, conn, topic) = setup().await;
    let relay = Outbox::builder(conn)
        .kafka(KafkaConfig::new(topic.bootstrap()))
        .topic("OrderPlaced", topic.name())
        .settings(quick())
        .start()
        .unwrap();

    // Another pool, as another replica's process would have, and the leader's view of wake-ups.
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
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen("outbox_wake").await.unwrap();

    // A commit without events wakes nobody.
    let txn = writer.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders VALUES ('no-event')")
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        quiet.is_err(),
        "no wake-up for a commit without events: {quiet:?}"
    );

    // A commit with events sends the wake-up, after the commit.
    let txn = writer.begin().await.unwrap();
    let id = txn.add(order("remote")).await.unwrap();
    txn.commit().await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await;
    assert!(
        matches!(woken, Ok(Ok(_))),
        "the commit sends the wake-up: {woken:?}"
    );

    let received = consume(&topic.bootstrap(), topic.name(), 1, Duration::from_secs(60)).await;
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
