//! The quickstart (the README's usage block plus a read-back) against the real PostgreSQL and
//! Kafka, in a database and on a topic of its own: the committed event arrives exactly once,
//! with its key, and the rolled-back one never does.

use example_quickstart::{Quickstart, run};
use outbox_test_harness::{TestDatabase, TestTopic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_event_arrives_once_and_the_rolled_back_one_never() {
    let database = TestDatabase::create().await;
    let topic = TestTopic::create("quickstart", 3).await;
    let config = Quickstart {
        database_url: database.url().to_owned(),
        bootstrap: topic.bootstrap(),
        topic: topic.name().to_owned(),
    };
    let report = run(&config).await.expect("the quickstart runs");
    assert_eq!(report.count(report.committed), 1, "{:?}", report.received);
    assert_eq!(report.count(report.rolled_back), 0, "{:?}", report.received);
    let message = report
        .received
        .iter()
        .find(|m| m.value.contains("\"total\":42"))
        .expect("the OrderPlaced envelope");
    assert!(
        message.key.starts_with("order-"),
        "keyed by the order: {message:?}"
    );
}
