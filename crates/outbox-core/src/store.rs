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

/// What happens to an event after a failed attempt, or while it waits behind one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Try again after this delay, counted from the database's clock (never the relay's, so a
    /// relay whose clock is off still backs off).
    RetryAfter(Duration),
    /// Give up: park the row as a dead letter.
    DeadLetter,
    /// Not a failure of this event: an earlier event of its topic and key failed, so it waits
    /// behind that one (no attempt is counted). It is retried once every earlier event of its
    /// key is published or dead-lettered.
    Held,
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
    /// How long the oldest committed event that waits behind the commit horizon has waited:
    /// `None` while no event waits for it. See [`HorizonHolder`].
    pub horizon_wait: Option<Duration>,
    /// The transaction holding the commit horizon back, while events wait behind it.
    pub horizon_holder: Option<HorizonHolder>,
}

/// The oldest transaction still running in the database cluster, which holds the relay's commit
/// horizon: events committed after it began wait until it ends, so that a transaction that
/// began after another committed is always delivered after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HorizonHolder {
    /// The server process (`pg_stat_activity.pid`; end it with `pg_terminate_backend`).
    pub pid: Option<i32>,
    /// How long its transaction has been open.
    pub age: Option<Duration>,
    /// Its state (`active`, `idle in transaction`, ...).
    pub state: Option<String>,
    /// When its current or last query started.
    pub query_start: Option<DateTime<Utc>>,
    /// The start of that query (at most 200 characters).
    pub query: Option<String>,
    /// Its database and user, for finding its owner.
    pub database: Option<String>,
    /// Its role.
    pub user: Option<String>,
    /// Its application name.
    pub application: Option<String>,
}

/// A position in the relay's claim order, `(transaction id, row id)`: every event at or before
/// it has been published, dead-lettered or parked for a retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimCursor {
    /// The writer's transaction id (`event_outbox.xid`).
    pub xid: u64,
    /// The row id.
    pub id: i64,
}

/// What one claim returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedBatch {
    /// The events to publish: first the retries that are due (the first `retries` events), then
    /// new events in claim order.
    pub events: Vec<OutboxEvent>,
    /// How many of `events` are retries of events parked earlier.
    pub retries: usize,
    /// Where the next claim continues once every new event of this batch is published or
    /// recorded: the last new row this claim read (rows it parked behind a retrying event of their
    /// key included). `None` when it read no new row.
    pub cursor: Option<ClaimCursor>,
    /// The claim read as many rows as it was allowed: more may be waiting.
    pub full: bool,
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

    /// Reads up to `limit` pending events, holding no lock after it returns, in two lanes:
    ///
    /// - **retries**: parked events whose retry time has come, in claim order, skipping every
    ///   event queued behind a parked event of its topic and key that is not due yet;
    /// - **new events** after `after` (from the start with `None`), in claim order
    ///   `(xid, id)`: the writer's transaction id, then the row id. Only events whose transaction
    ///   is older than every transaction still running are read (the commit horizon), so no event
    ///   can ever appear behind a cursor, and a transaction that began after another committed is
    ///   always claimed after it. A new event whose topic and key has a parked event is parked
    ///   behind it ([`FailureOutcome::Held`]) instead of returned.
    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError>;

    /// Marks events as published, in one statement, and returns the rows affected: deletes them,
    /// or with `keep` records their publication time instead, so they stay until
    /// [`OutboxCleanup::delete_expired`] removes them. The relay passes `keep` when
    /// [`RelaySettings::retention`](crate::RelaySettings::retention) is set: the store holds no
    /// retention setting of its own.
    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError>;

    /// Records failed attempts and held events: counts the attempt (not for
    /// [`FailureOutcome::Held`]), stores the error, and parks the row for a retry (the delay
    /// counted on the store's clock) or as a dead letter.
    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError>;

    /// Counts pending and dead-lettered events and measures the oldest pending one.
    async fn stats(&self) -> Result<OutboxStats, OutboxError>;

    /// Returns when a writer in another process asks the active relay to claim now (see
    /// [`remote_wake`](Self::remote_wake)). The leader waits on it between polls, beside its
    /// poll timer, which stays the fallback for wake-ups that are lost. It must be cancel-safe
    /// and must not return in a loop when the wake-up channel is broken (wait and reconnect
    /// instead). The default never returns: polling only.
    async fn wait_for_wake_up(&self) {
        std::future::pending::<()>().await;
    }

    /// How a writer's [`RelayNotifier`](crate::RelayNotifier) in this process wakes the active
    /// relay in another process. `None` (the default): it cannot, and that relay polls.
    fn remote_wake(&self) -> Option<std::sync::Arc<dyn crate::RemoteWake>> {
        None
    }
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
    /// Deletes up to `limit` rows published (acknowledged with `keep`) more than `older_than`
    /// ago, oldest first, and returns how many it deleted. The relay passes
    /// [`RelaySettings::retention`](crate::RelaySettings::retention).
    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError>;
}
