//! Log lines of the relay, in a test binary of its own: `tracing` caches per-callsite interest
//! process-wide, and a thread-local subscriber can miss events whose callsites another test's
//! thread registered first.

mod common;

use std::time::Duration;

use outbox_core::testing::{MemoryPublisher, MemoryStore};
use outbox_core::{EventRelayWorker, NewOutboxEvent, RelaySettings};

fn fast() -> RelaySettings {
    RelaySettings::default()
        .with_batch_size(10)
        .with_min_poll_interval(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(20))
        .with_retry_backoff_base(Duration::from_millis(20))
        .with_retry_backoff_max(Duration::from_millis(40))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "current_thread")]
async fn failures_retries_and_dead_letters_are_structured_log_lines() {
    let (lines, _guard) = common::capture();

    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    publisher.rejected_types.lock().unwrap().push("Bad".into());
    let id = store.add(NewOutboxEvent::new("t", "k", "Bad", b"x".to_vec()).with_topic("t"));
    let event_id = store.row(id).unwrap().event.event_id;
    let good = store.add(
        NewOutboxEvent::new("thing", "a", "ThingHappened", b"a:0".to_vec()).with_topic("things"),
    );
    let good_event_id = store.row(good).unwrap().event.event_id;
    let worker = EventRelayWorker::new(
        store.clone(),
        publisher.clone(),
        fast().with_max_attempts(2),
    )
    .unwrap();
    worker.start().unwrap();
    until("dead-lettered", || {
        store.row(id).is_some_and(|r| r.dead_lettered_at.is_some())
    })
    .await;
    worker.stop().await.unwrap();

    let text = lines.text();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |message: &str| {
        records
            .iter()
            .find(|r| r["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` line in:\n{text}"))
            .clone()
    };
    let retry = find("outbox event failed; will retry");
    assert_eq!(retry["fields"]["event_id"], event_id.to_string());
    assert_eq!(retry["fields"]["attempts"], 1);
    assert_eq!(retry["level"], "WARN");
    let dead = find("outbox event dead-lettered");
    assert_eq!(dead["fields"]["event_id"], event_id.to_string());
    assert_eq!(dead["fields"]["topic"], "t");
    assert_eq!(dead["level"], "ERROR");
    let batch = find("outbox relay batch");
    assert_eq!(batch["level"], "INFO", "one line per batch at info");
    assert_eq!(batch["fields"]["count"], 2);
    assert_eq!(batch["fields"]["first_id"], id);
    assert_eq!(batch["fields"]["last_id"], good);
    assert_eq!(batch["fields"]["published"], 1);
    assert_eq!(batch["fields"]["failed"], 1);
    assert!(batch["fields"]["duration_ms"].as_f64().unwrap() >= 0.0);
    let published = find("outbox event published");
    assert_eq!(published["level"], "DEBUG", "one line per event at debug");
    assert_eq!(published["fields"]["event_id"], good_event_id.to_string());
    assert_eq!(published["fields"]["id"], good);
    assert_eq!(published["fields"]["topic"], "things");
    assert_eq!(published["fields"]["key"], "a");
    assert!(published["fields"]["offset"].is_i64());
    find("outbox relay started");
    find("outbox relay stopped");
}
