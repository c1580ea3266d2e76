//! Conformance suites (feature `test-utils`): this module's for relay-side stores, [`inbox`]'s
//! for inbox stores.
//!
//! Each is written once and run against every store: the PostgreSQL ones in `outbox-seaorm`'s
//! tests, and the in-memory doubles here, so the doubles the workers' unit tests rely on behave
//! like the real thing.
//!
//! Implement [`ConformanceTarget`] for a fresh, empty outbox and expand
//! [`relay_store_conformance!`](crate::relay_store_conformance) in a test file:
//!
//! ```text
//! outbox_core::relay_store_conformance!(MyTarget::new());
//! ```

// A test suite: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

pub mod inbox;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    AttemptFailure, ClaimCursor, ClaimedBatch, DeadLetterFilter, DeadLetterStore, EventId,
    FailureOutcome, NewOutboxEvent, OutboxCleanup, OutboxError, OutboxStats, RelayStore,
};

/// The state of one row, as the suite inspects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowState {
    /// Permanent failures recorded.
    pub attempts: i32,
    /// The scheduled retry.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last recorded error.
    pub last_error: Option<String>,
    /// Parked as a dead letter.
    pub dead_lettered: bool,
    /// Marked as published (retention).
    pub published: bool,
}

/// A fresh, empty outbox for one conformance check.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// The store under test.
    type Store: RelayStore + DeadLetterStore + OutboxCleanup + 'static;

    /// A new store on this outbox, as another relay process would have (each call a new one).
    async fn store(&self) -> Arc<Self::Store>;

    /// Adds `event` (committed) and returns its row id.
    async fn add(&self, event: NewOutboxEvent) -> i64;

    /// Row `id`, or `None` once deleted.
    async fn row(&self, id: i64) -> Option<RowState>;

    /// Adds `event` in a transaction that stays open (holding the commit horizon) until
    /// [`commit_open`](Self::commit_open), and returns its row id.
    async fn add_open(&self, event: NewOutboxEvent) -> i64;

    /// Commits every transaction begun with [`add_open`](Self::add_open).
    async fn commit_open(&self);
}

fn event(key: &str, event_type: &str) -> NewOutboxEvent {
    NewOutboxEvent::new(
        "thing",
        key,
        event_type,
        format!("payload of {key}").into_bytes(),
    )
    .with_topic("conformance")
    .with_header("content-type", "text/plain")
}

async fn leader<T: ConformanceTarget>(target: &T) -> Arc<T::Store> {
    let store = target.store().await;
    assert!(
        store
            .acquire_leadership()
            .await
            .expect("acquire leadership"),
        "a lone store takes the leadership"
    );
    store
}

fn ids(batch: &ClaimedBatch) -> Vec<i64> {
    batch.events.iter().map(|e| e.id).collect()
}

/// Claims once every event committed so far is below the commit horizon. On a shared database
/// server, other sessions' open write transactions hold the horizon for a moment: the events
/// this check committed are claimable once none of them waits behind one.
async fn claim<S: RelayStore + ?Sized>(
    store: &S,
    limit: usize,
    after: Option<ClaimCursor>,
) -> ClaimedBatch {
    for _ in 0..500 {
        if store.stats().await.unwrap().horizon_wait.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.claim_batch(limit, after).await.unwrap()
}

fn retry(id: i64, after: Duration) -> AttemptFailure {
    AttemptFailure {
        id,
        event_id: EventId::new(),
        topic: "conformance".into(),
        error: format!("attempt on {id} failed"),
        outcome: FailureOutcome::RetryAfter(after),
    }
}

const LATER: Duration = Duration::from_secs(3600);

fn dead(id: i64) -> AttemptFailure {
    AttemptFailure {
        id,
        event_id: EventId::new(),
        topic: "conformance".into(),
        error: format!("{id} can never be sent"),
        outcome: FailureOutcome::DeadLetter,
    }
}

/// Claims return pending events in id order, at most `limit`, with every field as written, and
/// hold nothing: claiming again returns the same events.
pub async fn claims_pending_events_in_id_order<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    assert_eq!(claim(&*store, 10, None).await, ClaimedBatch::default());
    let written = event("a", "First")
        .with_key("key-a")
        .with_header("x-tenant", "t1");
    let first_id = written.event_id;
    let mut added = vec![target.add(written).await];
    for key in ["b", "a", "c", "b"] {
        added.push(target.add(event(key, "Next")).await);
    }
    assert!(added.windows(2).all(|w| w[0] < w[1]), "ids increase");

    let three = claim(&*store, 3, None).await;
    assert_eq!(ids(&three), added[..3]);
    assert!(three.full, "three of more");
    assert_eq!(three.retries, 0);
    let all = claim(&*store, 10, None).await;
    assert_eq!(ids(&all), added, "claiming again returns the same events");
    assert!(!all.full);
    assert_eq!(all.cursor.map(|c| c.id), added.last().copied());

    let first = &all.events[0];
    assert_eq!(first.event_id, first_id);
    assert_eq!(first.aggregate_type, "thing");
    assert_eq!(first.aggregate_id, "a");
    assert_eq!(first.event_type, "First");
    assert_eq!(first.topic, "conformance");
    assert_eq!(first.key, "key-a");
    assert_eq!(
        all.events[1].key, "b",
        "the key defaults to the aggregate id"
    );
    assert_eq!(first.payload, b"payload of a");
    assert!(first.headers.contains(&("x-tenant".into(), "t1".into())));
    assert!(
        first
            .headers
            .contains(&("content-type".into(), "text/plain".into()))
    );
    assert_eq!(first.attempts, 0);
    assert_eq!(first.defect, None);
    let age = Utc::now() - first.created_at;
    assert!(
        age < chrono::Duration::seconds(60),
        "created_at is the write time"
    );
}

/// A claim after a cursor reads only later events, and keeps doing so while an event backs
/// off: a new event of the retrying event's key is parked behind it (the cursor moves past it)
/// instead of returned.
pub async fn claims_continue_after_a_cursor<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let mut added = Vec::new();
    for key in ["a", "b", "c", "d"] {
        added.push(target.add(event(key, "T")).await);
    }
    let two = claim(&*store, 2, None).await;
    assert_eq!(ids(&two), added[..2]);
    let cursor = two.cursor.expect("a cursor after new events");
    assert_eq!(cursor.id, added[1]);
    assert_eq!(ids(&claim(&*store, 10, Some(cursor)).await), added[2..]);
    let rest = claim(&*store, 10, Some(cursor)).await;
    let end = rest.cursor.expect("a cursor");
    assert_eq!(end.id, added[3]);
    assert!(end > cursor, "cursors grow");
    assert_eq!(claim(&*store, 10, Some(end)).await.events, []);
    assert_eq!(claim(&*store, 10, Some(end)).await.cursor, None);

    store
        .record_failures(&[retry(added[0], LATER)])
        .await
        .unwrap();
    let behind = target.add(event("a", "T")).await;
    let after = target.add(event("e", "T")).await;
    let batch = claim(&*store, 10, Some(end)).await;
    assert_eq!(
        ids(&batch),
        [after],
        "the new event of key a waits behind a1"
    );
    assert_eq!(
        batch.cursor.map(|c| c.id),
        Some(after),
        "past the parked one"
    );
    let parked = target.row(behind).await.unwrap();
    assert!(parked.next_attempt_at.is_some(), "parked behind a1");
    assert_eq!(parked.attempts, 0, "waiting is not an attempt");
}

/// An open write transaction holds the commit horizon: events of transactions that began after
/// it are not claimed until it commits, and then come after its own, so an event committed late
/// with an early id can never be skipped.
pub async fn an_open_transaction_holds_the_horizon<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let first = target.add(event("a", "T")).await;
    assert_eq!(ids(&claim(&*store, 10, None).await), [first]);
    let open = target.add_open(event("a", "T")).await;
    let later = target.add(event("a", "T")).await;
    assert!(first < open && open < later);

    let batch = store.claim_batch(10, None).await.unwrap();
    assert_eq!(
        ids(&batch),
        [first],
        "the later event waits for the open one"
    );
    let cursor = batch.cursor;
    let stats = store.stats().await.unwrap();
    assert!(stats.horizon_wait.is_some(), "{stats:?}");
    store.acknowledge(&[first], false).await.unwrap();

    target.commit_open().await;
    assert_eq!(ids(&claim(&*store, 10, cursor).await), [open, later]);
}

/// Acknowledged events are gone (deleted) and never claimed again; acknowledging unknown ids
/// does nothing.
pub async fn acknowledged_events_are_deleted<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let a = target.add(event("a", "T")).await;
    let b = target.add(event("b", "T")).await;
    assert_eq!(store.acknowledge(&[a], false).await.unwrap(), 1);
    assert_eq!(target.row(a).await, None);
    assert_eq!(ids(&claim(&*store, 10, None).await), [b]);
    assert_eq!(store.acknowledge(&[a, 999_999], false).await.unwrap(), 0);
    assert_eq!(store.acknowledge(&[], false).await.unwrap(), 0);
}

/// Acknowledged with `keep`, rows are kept (marked published, never claimed again) by a store
/// built with no retention option of its own; cleanup deletes those published longer ago than
/// the age it is given, in batches of at most its limit, and never a pending row. Without
/// `keep`, acknowledged rows are deleted at once.
pub async fn retention_keeps_rows_until_cleanup<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let mut added = Vec::new();
    for n in 0..5 {
        added.push(target.add(event(&format!("k{n}"), "T")).await);
    }
    assert_eq!(store.acknowledge(&added, true).await.unwrap(), 5);
    assert_eq!(
        store.acknowledge(&added, true).await.unwrap(),
        0,
        "once only"
    );
    for id in &added {
        let row = target.row(*id).await.expect("kept when told to");
        assert!(row.published);
    }
    // Nothing to wait for here: whatever the horizon, published rows are never claimed.
    assert_eq!(store.claim_batch(10, None).await.unwrap().events, []);
    assert_eq!(store.stats().await.unwrap().pending, 0);
    let pending = target.add(event("p", "T")).await;
    let age = Duration::from_millis(300);
    assert_eq!(
        store.delete_expired(age, 10).await.unwrap(),
        0,
        "not expired yet"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store
            .delete_expired(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0,
        "younger than the age given"
    );
    assert_eq!(
        store.delete_expired(age, 2).await.unwrap(),
        2,
        "bounded by the limit"
    );
    assert_eq!(store.delete_expired(age, 10).await.unwrap(), 3);
    assert_eq!(store.delete_expired(age, 10).await.unwrap(), 0);
    for id in &added {
        assert_eq!(target.row(*id).await, None);
    }
    assert!(
        target.row(pending).await.is_some_and(|r| !r.published),
        "cleanup never deletes a pending row"
    );

    assert_eq!(store.acknowledge(&[pending], false).await.unwrap(), 1);
    assert_eq!(
        target.row(pending).await,
        None,
        "without keep, deleted at once"
    );
}

/// A failed event waiting for its retry is not claimed, nor is anything after it with the same
/// topic and key; other keys, and the same key on another topic, flow. Once the retry time has
/// come, the event and those behind it are claimed in order.
pub async fn a_retrying_event_holds_back_its_key<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let a1 = target.add(event("a", "T")).await;
    let b1 = target.add(event("b", "T")).await;
    let a2 = target.add(event("a", "T")).await;
    let other_topic = target.add(event("a", "T").with_topic("elsewhere")).await;

    store.record_failures(&[retry(a1, LATER)]).await.unwrap();
    let row = target.row(a1).await.unwrap();
    assert_eq!(row.attempts, 1);
    assert_eq!(
        row.last_error.as_deref(),
        Some(format!("attempt on {a1} failed").as_str())
    );
    assert!(row.next_attempt_at.is_some());
    assert!(!row.dead_lettered);
    let batch = claim(&*store, 10, None).await;
    assert_eq!(ids(&batch), [b1, other_topic]);
    assert_eq!(batch.retries, 0);
    assert_eq!(
        target.row(a2).await.unwrap().attempts,
        0,
        "a2 waits, unattempted"
    );

    store
        .record_failures(&[retry(a1, Duration::ZERO)])
        .await
        .unwrap();
    assert_eq!(target.row(a1).await.unwrap().attempts, 2);
    let batch = claim(&*store, 10, None).await;
    assert_eq!(
        ids(&batch),
        [a1, a2, b1, other_topic],
        "retries first, in order"
    );
    assert_eq!(batch.retries, 2);
}

/// Dead letters are skipped by claims, counted, listed with their error, replayed (pending again
/// with attempts reset) and discarded, by id and by filter.
pub async fn dead_letters_are_parked_listed_replayed_and_discarded<T: ConformanceTarget>(
    target: &T,
) {
    let store = leader(target).await;
    let d1 = target.add(event("a", "Alpha")).await;
    let d2 = target.add(event("b", "Beta")).await;
    let live = target.add(event("c", "Gamma")).await;
    let behind_d1 = target.add(event("a", "Alpha")).await;
    store.record_failures(&[dead(d1), dead(d2)]).await.unwrap();

    assert!(target.row(d1).await.unwrap().dead_lettered);
    assert_eq!(target.row(d1).await.unwrap().attempts, 1);
    assert_eq!(
        ids(&claim(&*store, 10, None).await),
        [live, behind_d1],
        "a dead letter no longer holds its key back"
    );
    assert_eq!(store.stats().await.unwrap().dead_lettered, 2);

    let all = store
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|d| d.event.id).collect::<Vec<_>>(), [d1, d2]);
    assert_eq!(
        all[0].last_error.as_deref(),
        Some(format!("{d1} can never be sent").as_str())
    );
    assert_eq!(
        store
            .dead_letters(&DeadLetterFilter::default(), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let beta = DeadLetterFilter {
        event_type: Some("Beta".into()),
        ..DeadLetterFilter::default()
    };
    let only_beta = store.dead_letters(&beta, 10).await.unwrap();
    assert_eq!(only_beta.len(), 1);
    assert_eq!(only_beta[0].event.id, d2);
    let later = DeadLetterFilter {
        since: Some(Utc::now() + chrono::Duration::hours(1)),
        ..DeadLetterFilter::default()
    };
    assert!(store.dead_letters(&later, 10).await.unwrap().is_empty());

    assert_eq!(
        store.replay(&[d1, live]).await.unwrap(),
        1,
        "only dead letters replay"
    );
    let replayed = target.row(d1).await.unwrap();
    assert!(!replayed.dead_lettered);
    assert_eq!(replayed.attempts, 0);
    let batch = claim(&*store, 10, None).await;
    assert_eq!(
        ids(&batch)[0],
        d1,
        "a replayed dead letter is claimed as a retry"
    );
    assert_eq!(batch.retries, 1);

    assert_eq!(
        store.discard(&[live]).await.unwrap(),
        0,
        "only dead letters are discarded"
    );
    assert_eq!(store.discard_matching(&beta).await.unwrap(), 1);
    assert_eq!(target.row(d2).await, None);

    store.record_failures(&[dead(d1)]).await.unwrap();
    assert_eq!(
        store
            .replay_matching(&DeadLetterFilter::default())
            .await
            .unwrap(),
        1
    );
    store.record_failures(&[dead(d1)]).await.unwrap();
    assert_eq!(store.discard(&[d1]).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().dead_lettered, 0);
}

/// Stats count pending events and dead letters and age the oldest pending event.
pub async fn stats_measure_the_backlog<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    assert_eq!(store.stats().await.unwrap(), OutboxStats::default());
    let first = target.add(event("a", "T")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    target.add(event("b", "T")).await;
    target.add(event("c", "T")).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending, 3);
    let age = stats.oldest_pending_age.expect("an oldest event");
    assert!(
        age >= Duration::from_millis(40) && age < Duration::from_secs(60),
        "{age:?}"
    );
    store.record_failures(&[dead(first)]).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead_lettered), (2, 1));
}

/// One store leads at a time; the others cannot claim, acknowledge or record failures; releasing
/// hands the leadership over; acquiring again while leading is harmless.
pub async fn only_one_store_leads<T: ConformanceTarget>(target: &T) {
    let first = target.store().await;
    let second = target.store().await;
    let id = target.add(event("a", "T")).await;
    assert!(first.acquire_leadership().await.unwrap());
    assert!(first.acquire_leadership().await.unwrap(), "idempotent");
    assert!(!second.acquire_leadership().await.unwrap());
    assert!(matches!(
        second.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(matches!(
        second.acknowledge(&[id], false).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(matches!(
        second.record_failures(&[dead(id)]).await,
        Err(OutboxError::LeadershipLost)
    ));
    assert!(target.row(id).await.is_some_and(|r| !r.dead_lettered));

    first.release_leadership().await.unwrap();
    assert!(second.acquire_leadership().await.unwrap());
    assert!(!first.acquire_leadership().await.unwrap());
    assert_eq!(ids(&claim(&*second, 10, None).await), [id]);
}

/// Recording a failure for a row that is gone, or already published, changes nothing.
pub async fn failures_of_gone_rows_are_harmless<T: ConformanceTarget>(target: &T) {
    let store = leader(target).await;
    let id = target.add(event("a", "T")).await;
    store.acknowledge(&[id], false).await.unwrap();
    store
        .record_failures(&[dead(id), retry(987_654, Duration::ZERO)])
        .await
        .unwrap();
    assert_eq!(target.row(id).await, None);
    assert_eq!(store.stats().await.unwrap(), OutboxStats::default());
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh target made by
/// `$make` (an expression, awaited when it is a future: pass `async { ... }`).
#[macro_export]
macro_rules! relay_store_conformance {
    ($make:expr) => {
        mod relay_store_conformance {
            #[allow(unused_imports)]
            use super::*;

            $crate::relay_store_conformance!(@tests $make;
                claims_pending_events_in_id_order,
                claims_continue_after_a_cursor,
                an_open_transaction_holds_the_horizon,
                acknowledged_events_are_deleted,
                retention_keeps_rows_until_cleanup,
                a_retrying_event_holds_back_its_key,
                dead_letters_are_parked_listed_replayed_and_discarded,
                stats_measure_the_backlog,
                only_one_store_leads,
                failures_of_gone_rows_are_harmless,
            );
        }
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let target = $make.await;
                $crate::conformance::$check(&target).await;
            }
        )*
    };
}

/// The in-memory store as a conformance target.
#[derive(Debug)]
pub struct MemoryTarget(
    Arc<crate::testing::MemoryStore>,
    std::sync::Mutex<Vec<(i64, NewOutboxEvent)>>,
);

impl MemoryTarget {
    /// A fresh in-memory outbox.
    pub async fn new() -> Self {
        Self(crate::testing::MemoryStore::new(), Default::default())
    }
}

#[async_trait]
impl ConformanceTarget for MemoryTarget {
    type Store = crate::testing::MemoryStore;

    async fn store(&self) -> Arc<Self::Store> {
        self.0.handle()
    }

    async fn add(&self, event: NewOutboxEvent) -> i64 {
        self.0.add(event)
    }

    async fn add_open(&self, event: NewOutboxEvent) -> i64 {
        let id = self.0.reserve_id();
        self.1.lock().unwrap().push((id, event));
        id
    }

    async fn commit_open(&self) {
        let open: Vec<_> = self.1.lock().unwrap().drain(..).collect();
        for (id, event) in open {
            self.0.add_reserved(id, event);
        }
    }

    async fn row(&self, id: i64) -> Option<RowState> {
        self.0.row(id).map(|r| RowState {
            attempts: r.event.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            dead_lettered: r.dead_lettered_at.is_some(),
            published: r.published_at.is_some(),
        })
    }
}
