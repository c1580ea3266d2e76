//! The capabilities a storage adapter provides: writing events, relaying them, inspecting and
//! replaying dead letters, and cleaning up published rows. Each is a trait of its own.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{EventId, NewOutboxEvent, OutboxError, OutboxEvent};

/// The writer side: adds events inside the caller's own transaction.
///
/// `C` is the adapter's connection or transaction type (for SeaORM, `DatabaseTransaction` or
/// any `ConnectionTrait`), which keeps this crate free of any ORM. The event exists if and only
/// if that transaction commits.
#[async_trait]
pub trait OutboxWriter<C: ?Sized + Sync>: Send + Sync {
    /// Adds one event with a single `INSERT` on `conn` and returns its id.
    async fn add_event(&self, conn: &C, event: NewOutboxEvent) -> Result<EventId, OutboxError>;

    /// Adds several events, in order, on `conn`.
    async fn add_events(
        &self,
        conn: &C,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            ids.push(self.add_event(conn, event).await?);
        }
        Ok(ids)
    }
}

/// What happens to an event after a failed permanent attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Try again, not before this time.
    RetryAt(DateTime<Utc>),
    /// Give up: park the row as a dead letter.
    DeadLetter,
}

/// A failed attempt to publish one event, to record in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The row's id.
    pub id: i64,
    /// The event's id, for logs.
    pub event_id: EventId,
    /// The event's topic, for metrics.
    pub topic: String,
    /// What went wrong (stored as the row's `last_error`).
    pub error: String,
    /// What to do next.
    pub outcome: FailureOutcome,
}

/// The state of the outbox at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events waiting to be published (not yet published, not dead-lettered).
    pub pending: u64,
    /// Age of the oldest pending event.
    pub oldest_pending_age: Option<Duration>,
    /// Events parked as dead letters.
    pub dead_lettered: u64,
}

/// The relay side: what [`EventRelayWorker`](crate::EventRelayWorker) needs from the store.
///
/// Only one relay publishes at a time: it must hold the leadership (for PostgreSQL, an advisory
/// lock on a session of its own) and every claim and acknowledgement must fail with
/// [`OutboxError::LeadershipLost`] once that session is gone, so a relay that lost the lock can
/// never acknowledge.
#[async_trait]
pub trait RelayStore: Send + Sync {
    /// Tries to become (or stay) the active relay. `Ok(true)` while this store holds the
    /// leadership, `Ok(false)` while another one does.
    async fn acquire_leadership(&self) -> Result<bool, OutboxError>;

    /// Gives the leadership up, so a standby takes over at once.
    async fn release_leadership(&self) -> Result<(), OutboxError>;

    /// Reads up to `limit` pending events in `id` order, skipping events whose retry time has
    /// not come and every event queued behind one of those with the same topic and key (so
    /// per-key order holds while an event backs off). Holds no lock after it returns.
    ///
    /// With `after`, only events with a higher id are read, and none at all while any event is
    /// backing off after a failure (only the full claim keeps such keys in order). The worker
    /// passes it while batches come back full and fully published, so the claim need not walk
    /// again over rows it just deleted; it claims without it at least every `full_scan_interval`
    /// to collect events committed late with a lower id.
    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<i64>,
    ) -> Result<Vec<OutboxEvent>, OutboxError>;

    /// Marks events as published, in one statement: deletes them, or records the publication
    /// time when published rows are kept for a retention period. Returns the rows affected.
    async fn acknowledge(&self, ids: &[i64]) -> Result<u64, OutboxError>;

    /// Records failed permanent attempts: counts the attempt, stores the error, and schedules a
    /// retry or parks the row as a dead letter.
    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError>;

    /// Counts pending and dead-lettered events and measures the oldest pending one.
    async fn stats(&self) -> Result<OutboxStats, OutboxError>;
}

/// Selects dead letters by what they are; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this Kafka key (the `event_key` column).
    pub key: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only this aggregate.
    pub aggregate_id: Option<String>,
    /// Only rows dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only rows dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
}

/// A parked event and why it was parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event as stored.
    pub event: OutboxEvent,
    /// When it was parked.
    pub dead_lettered_at: DateTime<Utc>,
    /// The last error.
    pub last_error: Option<String>,
}

/// Inspecting, replaying and discarding dead letters (operations, not the relay).
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Dead letters matching `filter`, oldest first, at most `limit`.
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, OutboxError>;

    /// Makes these dead letters pending again with their attempts reset. Returns how many were
    /// dead letters.
    async fn replay(&self, ids: &[i64]) -> Result<u64, OutboxError>;

    /// Replays every dead letter matching `filter`.
    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError>;

    /// Deletes these dead letters for good. Returns how many were deleted.
    async fn discard(&self, ids: &[i64]) -> Result<u64, OutboxError>;

    /// Deletes every dead letter matching `filter`.
    async fn discard_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError>;
}

/// Deleting published rows kept for a retention period, in bounded batches.
#[async_trait]
pub trait OutboxCleanup: Send + Sync {
    /// Deletes up to `limit` published rows older than the retention period and returns how many
    /// it deleted (0 when rows are deleted on acknowledgement).
    async fn delete_expired(&self, limit: u64) -> Result<u64, OutboxError>;
}
