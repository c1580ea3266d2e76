//! In-memory doubles for unit tests of the worker and of code built on it (feature
//! `test-utils`).
//!
//! They follow the contracts of [`RelayStore`], [`OutboxCleanup`] and [`EventPublisher`] closely
//! enough to test relay logic, and those of [`InboxStore`](crate::InboxStore) and
//! [`MessageSource`](crate::MessageSource) closely enough to test the inbox worker
//! ([`MemoryInboxStore`], [`MemorySource`]), and let a test inject failures. They are never a stand-in for
//! PostgreSQL or Kafka in integration tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

mod inbox;

pub use inbox::{MemoryInboxRow, MemoryInboxStore, MemoryInboxTransaction, MemorySource};

use crate::{
    AttemptFailure, ClaimCursor, ClaimedBatch, DeadLetter, DeadLetterFilter, DeadLetterStore,
    Delivery, EventId, EventPublisher, FailureOutcome, NewOutboxEvent, OutboxCleanup, OutboxError,
    OutboxEvent, OutboxStats, PublishError, RelayStore,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One row of the in-memory outbox.
#[derive(Debug, Clone)]
pub struct MemoryRow {
    /// The event.
    pub event: OutboxEvent,
    /// The writer's transaction id.
    pub xid: u64,
    /// When it may be retried.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// When it was published (kept only with retention).
    pub published_at: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: Option<String>,
}

impl MemoryRow {
    fn pending(&self) -> bool {
        self.published_at.is_none() && self.dead_lettered_at.is_none()
    }

    fn position(&self) -> ClaimCursor {
        ClaimCursor {
            xid: self.xid,
            id: self.event.id,
        }
    }

    fn key(&self) -> (String, String) {
        (self.event.topic.clone(), self.event.key.clone())
    }
}

/// The rows and the leadership slot shared by every handle of one in-memory outbox.
#[derive(Debug, Default)]
struct Shared {
    rows: Mutex<BTreeMap<i64, MemoryRow>>,
    /// The next row id and the next transaction id.
    next_id: Mutex<(i64, u64)>,
    /// Transactions that took an id and have not committed: reserved row id -> transaction id.
    open: Mutex<BTreeMap<i64, u64>>,
    leader: Mutex<Option<u64>>,
    next_handle: AtomicU64,
}

/// An in-memory outbox implementing the relay side, with switches for failures.
///
/// Each [`handle`](Self::handle) is like another relay process on the same table: only one
/// handle holds the leadership at a time, and dropping it releases the leadership.
#[derive(Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    id: u64,
    /// This handle believes it leads (like a PostgreSQL session holding the lock): acquiring
    /// is then free, and a revoked leadership shows up only at the next claim.
    held: AtomicBool,
    /// Store calls fail while this is `true` (a database outage).
    pub unavailable: AtomicBool,
    /// The next this many `acknowledge` calls fail with a database error.
    pub failing_acks: AtomicUsize,
    /// Number of store calls made through this handle (a database query count).
    pub calls: AtomicUsize,
    /// Number of `claim_batch` calls through this handle.
    pub claims: AtomicUsize,
    /// Number of those calls that started above a cursor.
    pub claims_after: AtomicUsize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Self::build(Arc::default())
    }

    fn build(shared: Arc<Shared>) -> Arc<Self> {
        let id = shared.next_handle.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self {
            shared,
            id,
            held: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            failing_acks: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            claims_after: AtomicUsize::new(0),
        })
    }

    /// Another handle on the same outbox (another relay process).
    pub fn handle(&self) -> Arc<Self> {
        Self::build(self.shared.clone())
    }

    /// Adds an event (its topic defaults to `test-topic`) in a transaction of its own, committed
    /// at once, and returns its row id.
    pub fn add(&self, event: NewOutboxEvent) -> i64 {
        let (id, xid) = self.next();
        self.insert(id, xid, event);
        id
    }

    fn next(&self) -> (i64, u64) {
        let mut next = lock(&self.shared.next_id);
        next.0 += 1;
        next.1 += 1;
        *next
    }

    /// Begins a transaction that takes the next id now, for an event added later with
    /// [`add_reserved`](Self::add_reserved): a transaction that inserted early and commits late.
    /// Until it commits it holds the commit horizon: no event of a later transaction is claimed.
    pub fn reserve_id(&self) -> i64 {
        let (id, xid) = self.next();
        lock(&self.shared.open).insert(id, xid);
        id
    }

    /// Commits the transaction begun with [`reserve_id`](Self::reserve_id), adding its event.
    pub fn add_reserved(&self, id: i64, event: NewOutboxEvent) {
        let xid = lock(&self.shared.open).remove(&id);
        let xid = xid.unwrap_or_else(|| self.next().1);
        self.insert(id, xid, event);
    }

    fn insert(&self, id: i64, xid: u64, event: NewOutboxEvent) {
        let key = event.key().to_owned();
        let row = MemoryRow {
            event: OutboxEvent {
                id,
                event_id: event.event_id,
                aggregate_type: event.aggregate_type,
                aggregate_id: event.aggregate_id,
                event_type: event.event_type,
                topic: event.topic.unwrap_or_else(|| "test-topic".to_owned()),
                key,
                payload: event.payload,
                headers: event.headers.into_iter().collect(),
                created_at: Utc::now(),
                attempts: 0,
                defect: None,
            },
            xid,
            next_attempt_at: None,
            dead_lettered_at: None,
            published_at: None,
            last_error: None,
        };
        lock(&self.shared.rows).insert(id, row);
    }

    /// The oldest transaction still open: events of it and of later transactions wait.
    fn horizon(&self) -> u64 {
        let open = lock(&self.shared.open);
        open.values()
            .min()
            .copied()
            .unwrap_or_else(|| lock(&self.shared.next_id).1 + 1)
    }

    /// Takes the leadership away from whoever holds it, as the death of the leader's database
    /// session would: its next claim or acknowledgement fails with
    /// [`OutboxError::LeadershipLost`].
    pub fn revoke_leadership(&self) {
        *lock(&self.shared.leader) = None;
    }

    /// Marks row `id` as malformed, as a hand-edited row would be.
    pub fn corrupt(&self, id: i64, defect: &str) {
        if let Some(row) = lock(&self.shared.rows).get_mut(&id) {
            row.event.defect = Some(defect.to_owned());
        }
    }

    /// A copy of every row, in id order.
    pub fn rows(&self) -> Vec<MemoryRow> {
        lock(&self.shared.rows).values().cloned().collect()
    }

    /// A copy of row `id`.
    pub fn row(&self, id: i64) -> Option<MemoryRow> {
        lock(&self.shared.rows).get(&id).cloned()
    }

    /// Pending row count.
    pub fn pending(&self) -> usize {
        lock(&self.shared.rows)
            .values()
            .filter(|r| r.pending())
            .count()
    }

    fn call(&self) -> Result<(), OutboxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.unavailable.load(Ordering::SeqCst) {
            Err(OutboxError::database(std::io::Error::other(
                "in-memory store is unavailable",
            )))
        } else {
            Ok(())
        }
    }

    fn leading(&self) -> Result<(), OutboxError> {
        if *lock(&self.shared.leader) == Some(self.id) {
            Ok(())
        } else {
            self.held.store(false, Ordering::SeqCst);
            Err(OutboxError::LeadershipLost)
        }
    }

    fn dead_matching(&self, filter: &DeadLetterFilter) -> Vec<i64> {
        lock(&self.shared.rows)
            .values()
            .filter(|r| {
                let Some(at) = r.dead_lettered_at else {
                    return false;
                };
                let e = &r.event;
                filter.topic.as_ref().is_none_or(|t| *t == e.topic)
                    && filter
                        .event_type
                        .as_ref()
                        .is_none_or(|t| *t == e.event_type)
                    && filter
                        .aggregate_type
                        .as_ref()
                        .is_none_or(|t| *t == e.aggregate_type)
                    && filter
                        .aggregate_id
                        .as_ref()
                        .is_none_or(|t| *t == e.aggregate_id)
                    && filter.since.is_none_or(|t| at >= t)
                    && filter.until.is_none_or(|t| at < t)
            })
            .map(|r| r.event.id)
            .collect()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        let mut leader = lock(&self.shared.leader);
        if *leader == Some(self.id) {
            *leader = None;
        }
    }
}

#[async_trait]
impl DeadLetterStore for MemoryStore {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        self.call()?;
        let ids = self.dead_matching(filter);
        let rows = lock(&self.shared.rows);
        Ok(ids
            .iter()
            .filter_map(|id| rows.get(id))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .filter_map(|r| {
                Some(DeadLetter {
                    event: r.event.clone(),
                    dead_lettered_at: r.dead_lettered_at?,
                    last_error: r.last_error.clone(),
                })
            })
            .collect())
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        self.call()?;
        let mut rows = lock(&self.shared.rows);
        let mut n = 0;
        for id in ids {
            if let Some(row) = rows.get_mut(id).filter(|r| r.dead_lettered_at.is_some()) {
                // Parked and due: it goes through the retry lane, behind the cursor.
                row.dead_lettered_at = None;
                row.next_attempt_at = Some(Utc::now());
                row.event.attempts = 0;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let ids = self.dead_matching(filter);
        self.replay(&ids).await
    }

    async fn discard(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        self.call()?;
        let mut rows = lock(&self.shared.rows);
        let mut n = 0;
        for id in ids {
            if rows.get(id).is_some_and(|r| r.dead_lettered_at.is_some()) {
                rows.remove(id);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn discard_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let ids = self.dead_matching(filter);
        self.discard(&ids).await
    }
}

#[async_trait]
impl RelayStore for MemoryStore {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        // Like a PostgreSQL session holding the lock: no query while the handle believes it
        // leads.
        if self.held.load(Ordering::SeqCst) {
            return Ok(true);
        }
        self.call()?;
        let mut leader = lock(&self.shared.leader);
        let leads = match *leader {
            None => {
                *leader = Some(self.id);
                true
            }
            Some(id) => id == self.id,
        };
        self.held.store(leads, Ordering::SeqCst);
        Ok(leads)
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        self.call()?;
        self.held.store(false, Ordering::SeqCst);
        let mut leader = lock(&self.shared.leader);
        if *leader == Some(self.id) {
            *leader = None;
        }
        Ok(())
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError> {
        self.call()?;
        self.claims.fetch_add(1, Ordering::SeqCst);
        if after.is_some() {
            self.claims_after.fetch_add(1, Ordering::SeqCst);
        }
        self.leading()?;
        let horizon = self.horizon();
        let now = Utc::now();
        let mut rows = lock(&self.shared.rows);
        let mut parked: Vec<&MemoryRow> = rows
            .values()
            .filter(|r| r.pending() && r.next_attempt_at.is_some())
            .collect();
        parked.sort_by_key(|r| r.position());
        let parked_keys: HashSet<(String, String)> = parked.iter().map(|r| r.key()).collect();

        // Retries: due parked rows, unless a parked row of their key before them is not due.
        let mut waiting: HashSet<(String, String)> = HashSet::new();
        let mut events = Vec::new();
        for row in parked {
            if row.next_attempt_at.is_some_and(|t| t > now) {
                waiting.insert(row.key());
            } else if !waiting.contains(&row.key()) && events.len() < limit {
                events.push(row.event.clone());
            }
        }
        let retries = events.len();

        // New rows after the cursor, below the horizon.
        let mut fresh: Vec<&MemoryRow> = rows
            .values()
            .filter(|r| r.pending() && r.next_attempt_at.is_none())
            .filter(|r| r.xid < horizon && after.is_none_or(|a| r.position() > a))
            .collect();
        fresh.sort_by_key(|r| r.position());
        fresh.truncate(limit - retries);
        let full = retries + fresh.len() >= limit;
        let cursor = fresh.last().map(|r| r.position());
        let mut held = Vec::new();
        for row in fresh {
            if parked_keys.contains(&row.key()) {
                held.push(row.event.id);
            } else {
                events.push(row.event.clone());
            }
        }
        for id in held {
            if let Some(row) = rows.get_mut(&id) {
                row.next_attempt_at = Some(now);
                row.last_error = Some("waiting behind an earlier event of its key".into());
            }
        }
        Ok(ClaimedBatch {
            events,
            retries,
            cursor,
            full,
        })
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        self.call()?;
        if self
            .failing_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(OutboxError::database(std::io::Error::other(
                "acknowledgement failed",
            )));
        }
        self.leading()?;
        let mut rows = lock(&self.shared.rows);
        let mut n = 0;
        for id in ids {
            if keep {
                if let Some(row) = rows.get_mut(id).filter(|r| r.published_at.is_none()) {
                    row.published_at = Some(Utc::now());
                    n += 1;
                }
            } else if rows.remove(id).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError> {
        self.call()?;
        self.leading()?;
        let mut rows = lock(&self.shared.rows);
        for failure in failures {
            if let Some(row) = rows
                .get_mut(&failure.id)
                .filter(|r| r.published_at.is_none())
            {
                let now = Utc::now();
                row.last_error = Some(failure.error.clone());
                match failure.outcome {
                    FailureOutcome::RetryAfter(delay) => {
                        row.event.attempts += 1;
                        row.next_attempt_at =
                            Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
                    }
                    FailureOutcome::DeadLetter => {
                        row.event.attempts += 1;
                        row.next_attempt_at = None;
                        row.dead_lettered_at = Some(now);
                    }
                    FailureOutcome::Held => row.next_attempt_at = Some(now),
                }
            }
        }
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.call()?;
        let horizon = self.horizon();
        let rows = lock(&self.shared.rows);
        let now = Utc::now();
        Ok(OutboxStats {
            pending: rows.values().filter(|r| r.pending()).count() as u64,
            oldest_pending_age: rows
                .values()
                .filter(|r| r.pending())
                .map(|r| (now - r.event.created_at).to_std().unwrap_or_default())
                .max(),
            dead_lettered: rows
                .values()
                .filter(|r| r.dead_lettered_at.is_some())
                .count() as u64,
            horizon_wait: rows
                .values()
                .filter(|r| r.pending() && r.next_attempt_at.is_none() && r.xid >= horizon)
                .map(|r| (now - r.event.created_at).to_std().unwrap_or_default())
                .max(),
            horizon_holder: None,
        })
    }
}

#[async_trait]
impl OutboxCleanup for MemoryStore {
    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError> {
        self.call()?;
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let mut rows = lock(&self.shared.rows);
        let expired: Vec<i64> = rows
            .values()
            .filter(|r| r.published_at.is_some_and(|t| t < cutoff))
            .map(|r| r.event.id)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        for id in &expired {
            rows.remove(id);
        }
        Ok(expired.len() as u64)
    }
}

/// How the [`MemoryPublisher`] answers.
#[derive(Debug, Clone, Default)]
enum Behaviour {
    #[default]
    Deliver,
    /// Every send fails with a transient error (broker down).
    Down,
    /// Sends wait until [`MemoryPublisher::release`] or an abort.
    Hang,
    /// Sends never complete, aborted or not (a broken client).
    Stuck,
}

/// A publisher that records what it delivers, with switches for failures.
#[derive(Debug, Default)]
pub struct MemoryPublisher {
    delivered: Mutex<Vec<OutboxEvent>>,
    behaviour: Mutex<Behaviour>,
    /// Events whose payload is larger than this fail `check` permanently.
    pub max_payload: Mutex<Option<usize>>,
    /// Event types that the broker rejects permanently after sending.
    pub rejected_types: Mutex<Vec<String>>,
    release: Notify,
    aborted: AtomicBool,
    /// Number of `publish` calls.
    pub publishes: AtomicUsize,
    /// Number of `flush` calls.
    pub flushes: AtomicUsize,
    /// `flush` fails while this is `true`.
    pub failing_flush: AtomicBool,
    /// `publish` returns this many results fewer than events (a buggy publisher).
    pub missing_results: AtomicUsize,
}

impl MemoryPublisher {
    /// A publisher that delivers everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Events delivered, in delivery order.
    pub fn delivered(&self) -> Vec<OutboxEvent> {
        lock(&self.delivered).clone()
    }

    /// Ids of events delivered, in delivery order.
    pub fn delivered_ids(&self) -> Vec<EventId> {
        lock(&self.delivered).iter().map(|e| e.event_id).collect()
    }

    /// Simulates the broker going down (`true`) or coming back.
    pub fn set_down(&self, down: bool) {
        *lock(&self.behaviour) = if down {
            Behaviour::Down
        } else {
            Behaviour::Deliver
        };
    }

    /// Makes sends wait until [`release`](Self::release) (a slow broker).
    pub fn hang(&self) {
        self.aborted.store(false, Ordering::SeqCst);
        *lock(&self.behaviour) = Behaviour::Hang;
    }

    /// Makes sends never complete, even when aborted.
    pub fn get_stuck(&self) {
        *lock(&self.behaviour) = Behaviour::Stuck;
    }

    /// Lets hanging sends complete, and later ones deliver at once.
    pub fn release(&self) {
        *lock(&self.behaviour) = Behaviour::Deliver;
        self.release.notify_waiters();
    }
}

#[async_trait]
impl EventPublisher for MemoryPublisher {
    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        match *lock(&self.max_payload) {
            Some(max) if event.payload.len() > max => Err(PublishError::permanent(format!(
                "message of {} bytes is larger than {max}",
                event.payload.len()
            ))),
            _ => Ok(()),
        }
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        self.publishes.fetch_add(1, Ordering::SeqCst);
        let behaviour = lock(&self.behaviour).clone();
        match behaviour {
            Behaviour::Down => {
                return events
                    .iter()
                    .map(|_| Err(PublishError::transient("broker transport failure")))
                    .collect();
            }
            Behaviour::Hang => {
                let released = self.release.notified();
                if !matches!(*lock(&self.behaviour), Behaviour::Deliver) {
                    released.await;
                }
                if self.aborted.swap(false, Ordering::SeqCst) {
                    return events
                        .iter()
                        .map(|_| Err(PublishError::transient("purged")))
                        .collect();
                }
            }
            Behaviour::Stuck => std::future::pending::<()>().await,
            Behaviour::Deliver => {}
        }
        let rejected = lock(&self.rejected_types).clone();
        let missing = self.missing_results.load(Ordering::SeqCst);
        let mut delivered = lock(&self.delivered);
        events[..events.len().saturating_sub(missing)]
            .iter()
            .map(|event| {
                if rejected.contains(&event.event_type) {
                    return Err(PublishError::permanent("topic authorization failed"));
                }
                delivered.push(event.clone());
                Ok(Delivery {
                    partition: 0,
                    offset: delivered.len() as i64 - 1,
                })
            })
            .collect()
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.failing_flush.load(Ordering::SeqCst) {
            return Err(PublishError::transient("flush timed out"));
        }
        Ok(())
    }

    fn abort_in_flight(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }
}
