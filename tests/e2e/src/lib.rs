//! Helpers for the workspace's end-to-end and fault tests: writing numbered events through the
//! library, checking what Kafka received against what was written, and a store wrapper that
//! counts the relay's database calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    AttemptFailure, ClaimCursor, ClaimedBatch, EventId, NewOutboxEvent, OutboxError, OutboxStats,
    OutboxWriter, RelaySettings, RelayStore,
};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use outbox_test_harness::{Received, TestDatabase};
use sea_orm::{DatabaseConnection, TransactionTrait};
use sea_orm_migration::MigratorTrait;

/// One event the test wrote: its id, key and number within the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The event id.
    pub event_id: EventId,
    /// The Kafka key.
    pub key: String,
    /// Its position among the events of its key (0, 1, 2, ...).
    pub seq: usize,
}

/// A migrated connection pool to `db`.
pub async fn migrated(db: &TestDatabase) -> DatabaseConnection {
    let conn = db.connect_with(16).await;
    OutboxMigrator::up(&conn, None)
        .await
        .expect("outbox migration");
    conn
}

/// Relay settings that react within tens of milliseconds, for tests.
pub fn fast_settings() -> RelaySettings {
    RelaySettings::default()
        .with_batch_size(100)
        .with_min_poll_interval(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(50))
        .with_retry_backoff_base(Duration::from_millis(100))
        .with_retry_backoff_max(Duration::from_millis(400))
        .with_transient_backoff_base(Duration::from_millis(50))
        .with_transient_backoff_max(Duration::from_secs(1))
        .with_leader_retry_interval(Duration::from_millis(200))
        .with_stats_interval(Duration::from_millis(500))
        .with_shutdown_timeout(Duration::from_secs(30))
}

/// Writes `per_key` events for each key, interleaved (k0:0, k1:0, ..., k0:1, ...), through the
/// library's writer, `per_txn` events per committed transaction. `first_seq` numbers them on
/// from an earlier call.
pub async fn write_events(
    conn: &DatabaseConnection,
    topic: &str,
    keys: &[String],
    per_key: usize,
    first_seq: usize,
    per_txn: usize,
) -> Vec<Written> {
    let outbox = PostgresOutbox::new(conn.clone()).expect("repository");
    let mut written = Vec::with_capacity(keys.len() * per_key);
    let mut pending: Vec<NewOutboxEvent> = Vec::new();
    for seq in first_seq..first_seq + per_key {
        for key in keys {
            let event = NewOutboxEvent::json(
                "test",
                key.clone(),
                "Numbered",
                &serde_json::json!({"key": key, "seq": seq, "padding": "x".repeat(200)}),
            )
            .expect("json")
            .with_topic(topic);
            written.push(Written {
                event_id: event.event_id,
                key: key.clone(),
                seq,
            });
            pending.push(event);
            if pending.len() >= per_txn {
                commit(&outbox, conn, std::mem::take(&mut pending)).await;
            }
        }
    }
    if !pending.is_empty() {
        commit(&outbox, conn, pending).await;
    }
    written
}

async fn commit(outbox: &PostgresOutbox, conn: &DatabaseConnection, events: Vec<NewOutboxEvent>) {
    let txn = conn.begin().await.expect("begin");
    outbox.add_events(&txn, events).await.expect("add events");
    txn.commit().await.expect("commit");
}

/// `n` key names.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i}")).collect()
}

/// What Kafka received, compared with what was written.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Written events that never arrived.
    pub missing: Vec<EventId>,
    /// Messages beyond the first for an event id.
    pub duplicates: usize,
    /// Messages whose event id was never written.
    pub unexpected: usize,
    /// Keys whose events (first arrivals) came out of order, with the offending pair.
    pub order_violations: Vec<String>,
    /// Messages received.
    pub received: usize,
}

impl DeliveryReport {
    /// Nothing missing, nothing unexpected, every key in order.
    pub fn is_complete_and_ordered(&self) -> bool {
        self.missing.is_empty() && self.unexpected == 0 && self.order_violations.is_empty()
    }
}

/// Compares received messages with written events: every event arrived (by its `event_id`
/// header), how many duplicates, and whether each key's events arrived in written order
/// (counting first arrivals; a duplicate may repeat an earlier event later).
pub fn check_delivery(written: &[Written], received: &[Received]) -> DeliveryReport {
    let by_id: HashMap<String, &Written> = written
        .iter()
        .map(|w| (w.event_id.to_string(), w))
        .collect();
    let mut report = DeliveryReport {
        received: received.len(),
        ..DeliveryReport::default()
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_seq: HashMap<&str, usize> = HashMap::new();
    for message in received {
        let Some(id) = message.header("event_id") else {
            report.unexpected += 1;
            continue;
        };
        let Some(event) = by_id.get(id) else {
            report.unexpected += 1;
            continue;
        };
        if message.key.as_deref() != Some(event.key.as_str()) {
            report
                .order_violations
                .push(format!("{id} arrived with key {:?}", message.key));
        }
        if !seen.insert(id.to_owned()) {
            report.duplicates += 1;
            continue;
        }
        if let Some(previous) = last_seq.insert(event.key.as_str(), event.seq)
            && previous >= event.seq
        {
            report.order_violations.push(format!(
                "{}: {} arrived after {}",
                event.key, event.seq, previous
            ));
        }
    }
    report.missing = written
        .iter()
        .filter(|w| !seen.contains(&w.event_id.to_string()))
        .map(|w| w.event_id)
        .collect();
    report
}

/// Reads `topic` until `expected` messages arrived (for at most a minute) and then `quiet` passed
/// without more, and compares what arrived with what was written.
pub async fn delivery(
    bootstrap: &str,
    topic: &str,
    written: &[Written],
    expected: usize,
    quiet: Duration,
) -> DeliveryReport {
    let received = outbox_test_harness::consume_until_quiet(
        bootstrap,
        topic,
        expected,
        Duration::from_secs(60),
        quiet,
    )
    .await;
    check_delivery(written, &received)
}

/// Waits until `done` holds, polling every 20 ms, for at most `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real PostgreSQL store, counting every call the relay makes (each is one database
/// statement or, for a standby's leadership attempt, one query).
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<PostgresOutbox>,
    calls: AtomicUsize,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<PostgresOutbox>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: AtomicUsize::new(0),
        })
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl RelayStore for CountingStore {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        // Free while held (no statement runs), so it is not counted then.
        let result = self.inner.acquire_leadership().await;
        if !matches!(result, Ok(true)) {
            self.count();
        }
        result
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        self.count();
        self.inner.release_leadership().await
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError> {
        self.count();
        self.inner.claim_batch(limit, after).await
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        self.count();
        self.inner.acknowledge(ids, keep).await
    }

    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError> {
        self.count();
        self.inner.record_failures(failures).await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.count();
        self.inner.stats().await
    }
}
