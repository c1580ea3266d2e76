//! A conformance suite for [`InboxStore`]s (feature `test-utils`), written once and run against
//! every store: the PostgreSQL inbox in `outbox-seaorm`'s tests, and the in-memory double here,
//! so the double the worker's unit tests rely on behaves like the real thing.
//!
//! Implement [`InboxTarget`] for a fresh, empty inbox and expand
//! [`inbox_store_conformance!`](crate::inbox_store_conformance) in a test file:
//!
//! ```text
//! outbox_core::inbox_store_conformance!(MyInboxTarget::new());
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{InboxEntry, InboxMessage, InboxStore};

/// A fresh, empty inbox for one conformance check.
#[async_trait]
pub trait InboxTarget: Send + Sync {
    /// The store under test.
    type Store: InboxStore + 'static;

    /// A store on this inbox (each call may be a new one, as another process would have).
    async fn store(&self) -> Arc<Self::Store>;

    /// The committed outcome of `(consumer, event_id)`, or `None` when there is no row.
    async fn outcome(&self, consumer: &str, event_id: Uuid) -> Option<String>;

    /// Moves the committed row of `(consumer, event_id)` back in time by `by`, as if it had been
    /// processed that much earlier.
    async fn backdate(&self, consumer: &str, event_id: Uuid, by: Duration);
}

fn entry(consumer: &str, event_id: Uuid, offset: i64) -> InboxEntry {
    InboxEntry {
        consumer: consumer.to_owned(),
        event_id,
        topic: "conformance".into(),
        partition: 1,
        offset,
        event_type: Some("ThingHappened".into()),
        correlation_id: Some(format!("corr-{offset}")),
    }
}

fn message(offset: i64) -> InboxMessage {
    InboxMessage {
        topic: "conformance".into(),
        partition: 1,
        offset,
        key: Some(b"key \x00\xff".to_vec()),
        payload: Some(format!("{{\"n\":{offset}}} \u{e9}").into_bytes()),
        headers: vec![
            ("event_id".into(), b"not checked".to_vec()),
            ("binary".into(), vec![0, 159, 146, 150, 255]),
            ("empty".into(), Vec::new()),
            ("binary".into(), b"second with the same name".to_vec()),
        ],
        timestamp: None,
    }
}

async fn record<S: InboxStore>(store: &S, entries: &[InboxEntry]) -> Vec<bool> {
    let txn = store.begin().await.unwrap();
    let fresh = store.record(&txn, entries).await.unwrap();
    store.commit(txn).await.unwrap();
    fresh
}

/// `record` says which entries are new: a repeat within one call and an entry committed before
/// are not; the same event for another consumer is.
pub async fn records_new_entries_and_flags_duplicates<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        record(
            &*store,
            &[entry("one", a, 1), entry("one", b, 2), entry("one", a, 3)]
        )
        .await,
        [true, true, false]
    );
    assert_eq!(
        record(
            &*store,
            &[entry("one", b, 4), entry("one", c, 5), entry("two", a, 6)]
        )
        .await,
        [false, true, true]
    );
    assert_eq!(record(&*store, &[]).await, Vec::<bool>::new());
    assert_eq!(target.outcome("one", a).await.as_deref(), Some("applied"));
    assert_eq!(target.outcome("two", a).await.as_deref(), Some("applied"));
    let other = target.store().await;
    assert_eq!(record(&*other, &[entry("one", c, 7)]).await, [false]);
}

/// A rolled-back transaction leaves no row and no outcome behind.
pub async fn rollback_leaves_nothing<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let id = Uuid::now_v7();
    let txn = store.begin().await.unwrap();
    assert_eq!(
        store.record(&txn, &[entry("c", id, 1)]).await.unwrap(),
        [true]
    );
    store.set_outcome(&txn, "c", id, "stale").await.unwrap();
    store.rollback(txn).await.unwrap();
    assert_eq!(target.outcome("c", id).await, None);
    assert_eq!(record(&*store, &[entry("c", id, 1)]).await, [true]);
    assert_eq!(target.outcome("c", id).await.as_deref(), Some("applied"));
}

/// `set_outcome` changes the outcome of a row recorded in the same transaction.
pub async fn set_outcome_is_kept_with_the_row<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let txn = store.begin().await.unwrap();
    store
        .record(&txn, &[entry("c", a, 1), entry("c", b, 2)])
        .await
        .unwrap();
    store
        .set_outcome(&txn, "c", b, "unknown_batch")
        .await
        .unwrap();
    store.commit(txn).await.unwrap();
    assert_eq!(target.outcome("c", a).await.as_deref(), Some("applied"));
    assert_eq!(
        target.outcome("c", b).await.as_deref(),
        Some("unknown_batch")
    );
}

/// `reject` records the message once, with its error and every byte of it; a second reject,
/// or a reject of an applied entry, changes nothing; a rejected entry is a duplicate to
/// `record`.
pub async fn reject_is_idempotent_and_keeps_the_bytes<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let (bad, applied) = (Uuid::now_v7(), Uuid::now_v7());
    let poison = message(7);
    assert!(
        store
            .reject(&entry("c", bad, 7), &poison, "no good")
            .await
            .unwrap()
    );
    assert!(
        !store
            .reject(&entry("c", bad, 7), &message(8), "again")
            .await
            .unwrap()
    );
    record(&*store, &[entry("c", applied, 9)]).await;
    assert!(
        !store
            .reject(&entry("c", applied, 9), &message(9), "late")
            .await
            .unwrap()
    );
    assert_eq!(
        target.outcome("c", applied).await.as_deref(),
        Some("applied")
    );
    assert_eq!(target.outcome("c", bad).await.as_deref(), Some("rejected"));
    assert_eq!(record(&*store, &[entry("c", bad, 7)]).await, [false]);

    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r.error, "no good");
    assert_eq!(r.entry, entry("c", bad, 7));
    assert_eq!(r.message, poison, "the message is kept byte for byte");

    let tombstone = InboxMessage {
        payload: None,
        key: None,
        headers: Vec::new(),
        ..message(10)
    };
    let gone = Uuid::now_v7();
    assert!(
        store
            .reject(&entry("d", gone, 10), &tombstone, "x")
            .await
            .unwrap()
    );
    let rejected = store.rejected(Some("d"), 10).await.unwrap();
    assert_eq!(rejected[0].message, tombstone);
}

/// `rejected` lists oldest first, filtered by consumer, at most `limit`.
pub async fn rejected_are_listed_oldest_first_by_consumer<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let consumers = ["one", "two", "one"];
    for (i, (id, consumer)) in ids.iter().zip(consumers).enumerate() {
        let offset = i as i64;
        assert!(
            store
                .reject(&entry(consumer, *id, offset), &message(offset), "bad")
                .await
                .unwrap()
        );
    }
    // The last rejected is the oldest, then the first.
    target
        .backdate("one", ids[2], Duration::from_secs(7200))
        .await;
    target
        .backdate("one", ids[0], Duration::from_secs(3600))
        .await;
    let listed = |r: Vec<crate::RejectedMessage>| {
        r.into_iter().map(|r| r.entry.event_id).collect::<Vec<_>>()
    };
    assert_eq!(
        listed(store.rejected(None, 10).await.unwrap()),
        [ids[2], ids[0], ids[1]]
    );
    assert_eq!(
        listed(store.rejected(Some("one"), 10).await.unwrap()),
        [ids[2], ids[0]]
    );
    assert_eq!(listed(store.rejected(None, 1).await.unwrap()), [ids[2]]);
    assert!(store.rejected(Some("three"), 10).await.unwrap().is_empty());
    let applied = Uuid::now_v7();
    record(&*store, &[entry("one", applied, 5)]).await;
    assert_eq!(store.rejected(None, 10).await.unwrap().len(), 3);
}

/// A replay takes the rejected row and records the message again in one transaction; a rolled
/// back replay leaves the row rejected; only rejected rows can be taken.
pub async fn take_rejected_and_record_again_in_one_transaction<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let id = Uuid::now_v7();
    store
        .reject(&entry("c", id, 3), &message(3), "bad")
        .await
        .unwrap();

    let txn = store.begin().await.unwrap();
    assert_eq!(
        store.take_rejected(&txn, "c", id).await.unwrap(),
        Some(message(3))
    );
    store.rollback(txn).await.unwrap();
    assert_eq!(target.outcome("c", id).await.as_deref(), Some("rejected"));

    let txn = store.begin().await.unwrap();
    assert_eq!(
        store.take_rejected(&txn, "c", id).await.unwrap(),
        Some(message(3))
    );
    assert_eq!(
        store.record(&txn, &[entry("c", id, 3)]).await.unwrap(),
        [true]
    );
    store.commit(txn).await.unwrap();
    assert_eq!(target.outcome("c", id).await.as_deref(), Some("applied"));
    assert!(store.rejected(None, 10).await.unwrap().is_empty());

    let txn = store.begin().await.unwrap();
    assert_eq!(
        store.take_rejected(&txn, "c", id).await.unwrap(),
        None,
        "applied"
    );
    assert_eq!(
        store
            .take_rejected(&txn, "c", Uuid::now_v7())
            .await
            .unwrap(),
        None
    );
    store.rollback(txn).await.unwrap();
    assert_eq!(target.outcome("c", id).await.as_deref(), Some("applied"));
}

/// `update_rejected` replaces the error of a rejected row and of nothing else.
pub async fn update_rejected_replaces_the_error<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let (bad, applied) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .reject(&entry("c", bad, 1), &message(1), "first")
        .await
        .unwrap();
    record(&*store, &[entry("c", applied, 2)]).await;
    assert!(store.update_rejected("c", bad, "second").await.unwrap());
    assert!(!store.update_rejected("c", applied, "x").await.unwrap());
    assert!(
        !store
            .update_rejected("c", Uuid::now_v7(), "x")
            .await
            .unwrap()
    );
    let rejected = store.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].error, "second");
    assert_eq!(rejected[0].message, message(1));
    assert_eq!(
        target.outcome("c", applied).await.as_deref(),
        Some("applied")
    );
}

/// `delete_expired` deletes only rows older than the retention, rejected ones included, at most
/// `limit` a call.
pub async fn delete_expired_is_bounded_by_age_and_limit<T: InboxTarget>(target: &T) {
    let store = target.store().await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    record(
        &*store,
        &[
            entry("c", ids[0], 0),
            entry("c", ids[1], 1),
            entry("c", ids[2], 2),
        ],
    )
    .await;
    store
        .reject(&entry("c", ids[3], 3), &message(3), "bad")
        .await
        .unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    let older = week + Duration::from_secs(3600);
    for id in [ids[0], ids[1], ids[3]] {
        target.backdate("c", id, older).await;
    }
    assert_eq!(store.delete_expired(week, 2).await.unwrap(), 2);
    assert_eq!(store.delete_expired(week, 10).await.unwrap(), 1);
    assert_eq!(store.delete_expired(week, 10).await.unwrap(), 0);
    for id in [ids[0], ids[1], ids[3]] {
        assert_eq!(target.outcome("c", id).await, None);
    }
    assert_eq!(
        target.outcome("c", ids[2]).await.as_deref(),
        Some("applied")
    );
    assert!(store.rejected(None, 10).await.unwrap().is_empty());
    // A deleted row's event is new again: retention must outlast redelivery.
    assert_eq!(
        record(&*store, &[entry("c", ids[0], 0), entry("c", ids[2], 2)]).await,
        [true, false]
    );
}

/// Expands to one `#[tokio::test]` per inbox conformance check, each on a fresh target made by
/// `$make` (an expression, awaited when it is a future: pass `async { ... }`).
#[macro_export]
macro_rules! inbox_store_conformance {
    ($make:expr) => {
        mod inbox_store_conformance {
            #[allow(unused_imports)]
            use super::*;

            $crate::inbox_store_conformance!(@tests $make;
                records_new_entries_and_flags_duplicates,
                rollback_leaves_nothing,
                set_outcome_is_kept_with_the_row,
                reject_is_idempotent_and_keeps_the_bytes,
                rejected_are_listed_oldest_first_by_consumer,
                take_rejected_and_record_again_in_one_transaction,
                update_rejected_replaces_the_error,
                delete_expired_is_bounded_by_age_and_limit,
            );
        }
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let target = $make.await;
                $crate::conformance::inbox::$check(&target).await;
            }
        )*
    };
}

/// The in-memory inbox as a conformance target.
#[derive(Debug)]
pub struct MemoryInboxTarget(Arc<crate::testing::MemoryInboxStore>);

impl MemoryInboxTarget {
    /// A fresh in-memory inbox.
    pub async fn new() -> Self {
        Self(crate::testing::MemoryInboxStore::new())
    }
}

#[async_trait]
impl InboxTarget for MemoryInboxTarget {
    type Store = crate::testing::MemoryInboxStore;

    async fn store(&self) -> Arc<Self::Store> {
        self.0.clone()
    }

    async fn outcome(&self, consumer: &str, event_id: Uuid) -> Option<String> {
        self.0.row(consumer, event_id).map(|r| r.outcome)
    }

    async fn backdate(&self, consumer: &str, event_id: Uuid, by: Duration) {
        self.0.backdate(consumer, event_id, by);
    }
}
