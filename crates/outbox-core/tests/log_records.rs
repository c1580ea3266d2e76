//! An application that logs through the `log` crate (env_logger, log4rs, ...) and installs no
//! `tracing` subscriber still gets the relay's lines, with their fields: `tracing`'s `log`
//! feature hands them to the `log` logger. In a test binary of its own, which never sets a
//! `tracing` subscriber (with one set, nothing reaches `log`).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use outbox_core::testing::{MemoryPublisher, MemoryStore};
use outbox_core::{EventRelayWorker, NewOutboxEvent, RelaySettings, RelayStore};

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

impl Records {
    /// The lines containing `message`.
    fn with(&self, message: &str) -> Vec<String> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(message))
            .cloned()
            .collect()
    }
}

fn fast() -> RelaySettings {
    RelaySettings::default()
        .with_batch_size(10)
        .with_min_poll_interval(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(20))
        .with_transient_backoff_base(Duration::from_millis(20))
        .with_transient_backoff_max(Duration::from_millis(40))
        .with_leader_retry_interval(Duration::from_millis(20))
        .with_stats_interval(Duration::from_millis(20))
}

fn event(key: &str, n: usize) -> NewOutboxEvent {
    NewOutboxEvent::new(
        "thing",
        key,
        "ThingHappened",
        format!("{key}:{n}").into_bytes(),
    )
    .with_topic("things")
}

/// Waits (up to 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "timed out waiting until {what}; log records:\n{}",
        records().0.lock().unwrap().join("\n")
    );
}

/// Waits until a record contains `message`, and returns the first that does.
async fn logged(message: &str) -> String {
    until(message, || !records().with(message).is_empty()).await;
    records().with(message).remove(0)
}

#[tokio::test]
async fn batches_a_held_horizon_and_publish_and_store_failures_reach_a_log_logger() {
    records();
    let store = MemoryStore::new();
    let publisher = MemoryPublisher::new();
    let open = store.reserve_id();
    store.add(event("a", 1));
    let settings = fast().with_horizon_warn_after(Duration::from_millis(30));
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), settings).unwrap();
    worker.start().unwrap();

    let held = logged("outbox events wait behind a transaction that is still open").await;
    assert!(held.starts_with("WARN "), "{held}");
    assert!(held.contains("waiting_s="), "{held}");
    store.add_reserved(open, event("a", 0));
    until("both delivered", || publisher.delivered().len() == 2).await;
    let batch = logged("outbox relay batch").await;
    assert!(batch.starts_with("INFO "), "{batch}");
    for field in ["count=", "published=", "failed=", "duration_ms="] {
        assert!(batch.contains(field), "{field} in {batch}");
    }

    publisher.set_down(true);
    store.add(event("b", 2));
    let backing_off = logged("outbox relay backing off after a transient publish failure").await;
    for field in ["error=", "consecutive_failures=", "retry_in_ms="] {
        assert!(backing_off.contains(field), "{field} in {backing_off}");
    }
    publisher.set_down(false);
    until("delivered after the outage", || {
        publisher.delivered().len() == 3
    })
    .await;

    store
        .unavailable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let unreachable = logged("outbox relay cannot reach the store; backing off").await;
    for field in ["error=", "operation=", "retry_in_ms="] {
        assert!(unreachable.contains(field), "{field} in {unreachable}");
    }
    store
        .unavailable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    worker.stop().await.unwrap();
    assert_eq!(store.pending(), 0);
}

#[tokio::test]
async fn a_batch_left_unacknowledged_by_a_lost_leadership_reaches_a_log_logger() {
    records();
    let store = MemoryStore::new();
    let standby = store.handle();
    let publisher = MemoryPublisher::new();
    for n in 0..3 {
        store.add(event("c", n));
    }
    publisher.hang();
    let worker = EventRelayWorker::new(store.clone(), publisher.clone(), fast()).unwrap();
    worker.start().unwrap();
    until("a batch in flight", || {
        publisher
            .publishes
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    store.revoke_leadership();
    assert!(standby.acquire_leadership().await.unwrap());
    publisher.release();
    let lost = logged("outbox relay lost the leadership before acknowledging a batch").await;
    assert!(lost.contains("published=3"), "{lost}");
    standby.release_leadership().await.unwrap();
    until("sent again by the old leader", || store.pending() == 0).await;
    worker.stop().await.unwrap();
}
