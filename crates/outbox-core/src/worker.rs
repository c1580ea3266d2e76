//! The relay worker: moves events from the store to the publisher.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, backoff_delay};
use crate::metrics as m;
use crate::{
    AttemptFailure, ClaimCursor, ClaimedBatch, ErrorClass, EventPublisher, FailureOutcome,
    OutboxCleanup, OutboxError, OutboxEvent, OutboxStats, PublishError, RelaySettings, RelayStore,
};

/// Wakes the active relay, wherever it runs, from a writer in another process: stores provide
/// one (for PostgreSQL, a `pg_notify` sent after the writer's commit, outside its transaction).
pub trait RemoteWake: Send + Sync + std::fmt::Debug {
    /// Asks the active relay to claim now. Returns at once: implementations send in the
    /// background, coalescing a burst of calls into few messages.
    fn wake(&self);
}

#[derive(Debug, Default)]
struct NotifierInner {
    local: Notify,
    remote: std::sync::OnceLock<Arc<dyn RemoteWake>>,
    /// This process's relay leads: the local wake-up reaches it, so no message is sent.
    leader: std::sync::atomic::AtomicBool,
}

/// Wakes the relay at once after a commit, so the event is sent within milliseconds instead of
/// at the next poll. In the process whose relay leads, that costs no database work; in any
/// other process (another replica, or a writer without a relay) it also asks the store to wake
/// the active relay remotely ([`RemoteWake`], coalesced, sent outside any transaction). Cheap to
/// clone: every clone wakes the same relay.
#[derive(Debug, Clone, Default)]
pub struct RelayNotifier(Arc<NotifierInner>);

impl RelayNotifier {
    /// A notifier not yet connected to a worker (waking it does nothing useful until a worker
    /// is built with [`EventRelayWorker::with_notifier`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A notifier that only wakes relays in other processes through `remote`: for writers in a
    /// process that runs no relay of its own.
    pub fn remote(remote: Arc<dyn RemoteWake>) -> Self {
        let notifier = Self::default();
        let _ = notifier.0.remote.set(remote);
        notifier
    }

    /// Wakes the relay. Call it after the transaction that added events has committed; calling
    /// it before the commit only makes the relay look too early.
    pub fn notify(&self) {
        self.0.local.notify_one();
        if !self.0.leader.load(Ordering::Relaxed)
            && let Some(remote) = self.0.remote.get()
        {
            remote.wake();
        }
    }

    fn connect(&self, remote: Option<Arc<dyn RemoteWake>>) {
        if let Some(remote) = remote {
            let _ = self.0.remote.set(remote);
        }
    }

    fn set_leader(&self, leader: bool) {
        self.0.leader.store(leader, Ordering::Relaxed);
    }

    async fn notified(&self) {
        self.0.local.notified().await;
    }
}

/// What the relay is doing, for health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// The worker's task runs.
    pub running: bool,
    /// This relay holds the leadership and publishes.
    pub leader: bool,
    /// When the relay last read the store successfully.
    pub last_poll_at: Option<DateTime<Utc>>,
    /// Events this worker published and acknowledged since it started.
    pub relayed: u64,
    /// Events this worker dead-lettered since it started.
    pub dead_lettered: u64,
    /// The last error, cleared by the next successful batch.
    pub last_error: Option<String>,
    /// The outbox's state at the last stats refresh.
    pub stats: Option<OutboxStats>,
}

/// Controls a relay: the interface the dependency-injection module provides.
#[async_trait]
pub trait OutboxRelay: Send + Sync {
    /// Starts relaying in the background (needs a Tokio runtime).
    fn start(&self) -> Result<(), OutboxError>;
    /// Stops claiming, finishes the batch in flight (sent, acknowledged by Kafka and in the
    /// store), flushes the publisher, gives up the leadership and returns.
    async fn stop(&self) -> Result<(), OutboxError>;
    /// The handle writers use to wake the relay after their commit.
    fn notifier(&self) -> RelayNotifier;
    /// What the relay is doing.
    fn status(&self) -> RelayStatus;
}

/// Relays events from a [`RelayStore`] to an [`EventPublisher`].
///
/// One loop, one batch at a time, so at most one batch is ever unacknowledged:
///
/// 1. make sure this relay is the leader (standbys retry every `leader_retry_interval`);
/// 2. claim up to `batch_size` pending events in `id` order;
/// 3. check each with [`EventPublisher::check`], send the rest in one bulk
///    [`publish`](EventPublisher::publish) and await the acknowledgements together; once an event
///    fails, later events with the same topic and key wait for the next batch;
/// 4. acknowledge the published events in one statement and record permanent failures (retry
///    time with backoff, or dead letter after `max_attempts`);
/// 5. after a transient failure (broker or database unavailable), wait with capped exponential
///    backoff and jitter, without touching the failed rows; otherwise poll again at once while
///    batches come back full, or wait for a wake-up, backing off to `poll_interval` when idle.
///
/// A second task refreshes the backlog gauges every `stats_interval` and, under retention,
/// deletes expired published rows in bounded batches.
pub struct EventRelayWorker {
    shared: Arc<Shared>,
    tasks: Mutex<Option<Tasks>>,
}

impl std::fmt::Debug for EventRelayWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelayWorker")
            .field("settings", &self.shared.settings)
            .field("status", &self.status())
            .finish()
    }
}

struct Tasks {
    stop: watch::Sender<bool>,
    relay: JoinHandle<Result<(), OutboxError>>,
    housekeeping: JoinHandle<()>,
}

struct Shared {
    store: Arc<dyn RelayStore>,
    publisher: Arc<dyn EventPublisher>,
    cleanup: Option<Arc<dyn OutboxCleanup>>,
    settings: RelaySettings,
    wake: RelayNotifier,
    status: Mutex<RelayStatus>,
    /// Events handed to the publisher whose rows are not acknowledged yet.
    unacknowledged: AtomicUsize,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, RelayStatus> {
        // The status is plain data: a panic while it was held cannot leave it inconsistent.
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_leader(&self, leader: bool) {
        self.wake.set_leader(leader);
        let mut status = self.status();
        if status.leader != leader {
            status.leader = leader;
            if leader {
                info!("outbox relay is now the active relay");
            } else {
                info!("outbox relay is a standby: another relay holds the leadership");
            }
        }
        metrics::gauge!(m::RELAY_LEADER).set(if leader { 1.0 } else { 0.0 });
    }

    fn record_error(&self, class: ErrorClass, error: &dyn std::fmt::Display) {
        metrics::counter!(m::RELAY_ERRORS_TOTAL, "kind" => class.as_str()).increment(1);
        self.status().last_error = Some(error.to_string());
    }
}

impl EventRelayWorker {
    /// A worker over `store` and `publisher`. Fails when the settings are invalid.
    pub fn new(
        store: Arc<dyn RelayStore>,
        publisher: Arc<dyn EventPublisher>,
        settings: RelaySettings,
    ) -> Result<Self, OutboxError> {
        settings.validate()?;
        let wake = RelayNotifier::new();
        wake.connect(store.remote_wake());
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                publisher,
                cleanup: None,
                settings,
                wake,
                status: Mutex::new(RelayStatus::default()),
                unacknowledged: AtomicUsize::new(0),
            }),
            tasks: Mutex::new(None),
        })
    }

    /// Deletes expired published rows through `cleanup` when `retention` is set.
    pub fn with_cleanup(mut self, cleanup: Arc<dyn OutboxCleanup>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cleanup = Some(cleanup);
        }
        self
    }

    /// Uses `notifier` as the wake-up handle (for a notifier handed to writers before the
    /// worker was built).
    pub fn with_notifier(mut self, notifier: RelayNotifier) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            notifier.connect(shared.store.remote_wake());
            shared.wake = notifier;
        }
        self
    }

    /// The settings the worker runs with.
    pub fn settings(&self) -> &RelaySettings {
        &self.shared.settings
    }

    /// The handle writers call after their commit.
    pub fn notifier(&self) -> RelayNotifier {
        self.shared.wake.clone()
    }

    /// What the relay is doing.
    pub fn status(&self) -> RelayStatus {
        self.shared.status().clone()
    }

    fn tasks(&self) -> MutexGuard<'_, Option<Tasks>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the relay and housekeeping tasks on the current Tokio runtime.
    pub fn start(&self) -> Result<(), OutboxError> {
        let mut tasks = self.tasks();
        if tasks.is_some() {
            return Err(OutboxError::AlreadyRunning);
        }
        m::describe();
        let (stop, stop_rx) = watch::channel(false);
        {
            let mut status = self.shared.status();
            *status = RelayStatus {
                running: true,
                ..RelayStatus::default()
            };
        }
        let relay = tokio::spawn(run(self.shared.clone(), stop_rx.clone()));
        let housekeeping = tokio::spawn(housekeeping(self.shared.clone(), stop_rx));
        let settings = &self.shared.settings;
        let (batch_size, max_attempts) = (settings.batch_size, settings.max_attempts);
        let poll_interval_ms = millis(settings.poll_interval);
        info!(
            batch_size,
            poll_interval_ms, max_attempts, "outbox relay started"
        );
        *tasks = Some(Tasks {
            stop,
            relay,
            housekeeping,
        });
        Ok(())
    }

    /// Stops the relay gracefully: no new batch is claimed; the batch in flight is finished
    /// (Kafka acknowledgements awaited, rows acknowledged in the store); the publisher is
    /// flushed; the leadership is released. Returns once all of that is done.
    ///
    /// If that takes longer than `shutdown_timeout` (Kafka unreachable), the sends still waiting
    /// are aborted and their events stay in the outbox for the next relay:
    /// [`OutboxError::ShutdownTimedOut`] says how many. Stopping a worker that is not running
    /// does nothing.
    pub async fn stop(&self) -> Result<(), OutboxError> {
        let Some(tasks) = self.tasks().take() else {
            return Ok(());
        };
        let _ = tasks.stop.send(true);
        self.shared.wake.0.local.notify_one();
        let timeout = self.shared.settings.shutdown_timeout;
        let mut relay = tasks.relay;
        let result = match tokio::time::timeout(timeout, &mut relay).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(OutboxError::WorkerFailed(e.to_string()))),
            Err(_) => {
                let unacknowledged = self.shared.unacknowledged.load(Ordering::SeqCst);
                let timeout_ms = millis(timeout);
                warn!(
                    unacknowledged,
                    timeout_ms, "outbox relay shutdown timed out; aborting sends still in flight"
                );
                self.shared.publisher.abort_in_flight();
                // A publisher that ignores the abort does not get to hang shutdown for good.
                if tokio::time::timeout(timeout, &mut relay).await.is_err() {
                    relay.abort();
                }
                Err(OutboxError::ShutdownTimedOut {
                    timeout,
                    unacknowledged,
                })
            }
        };
        let _ = tasks.housekeeping.await;
        {
            let mut status = self.shared.status();
            status.running = false;
            status.leader = false;
        }
        metrics::gauge!(m::RELAY_LEADER).set(0.0);
        info!(ok = result.is_ok(), "outbox relay stopped");
        result
    }

    /// Kills the relay without any of `stop()`'s care: nothing in flight is acknowledged and the
    /// leadership is not released (it lapses when the store's session closes). This is what a
    /// crash looks like; tests use it to prove nothing is lost.
    pub fn abort(&self) {
        if let Some(tasks) = self.tasks().take() {
            tasks.relay.abort();
            tasks.housekeeping.abort();
            self.shared.status().running = false;
            warn!("outbox relay aborted");
        }
    }
}

impl Drop for EventRelayWorker {
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks().take() {
            let _ = tasks.stop.send(true);
            self.shared.wake.0.local.notify_one();
        }
    }
}

#[async_trait]
impl OutboxRelay for EventRelayWorker {
    fn start(&self) -> Result<(), OutboxError> {
        EventRelayWorker::start(self)
    }

    async fn stop(&self) -> Result<(), OutboxError> {
        EventRelayWorker::stop(self).await
    }

    fn notifier(&self) -> RelayNotifier {
        EventRelayWorker::notifier(self)
    }

    fn status(&self) -> RelayStatus {
        EventRelayWorker::status(self)
    }
}

/// What one batch did, to be written back to the store.
#[derive(Debug, Default)]
struct Outcome {
    published: Vec<i64>,
    failures: Vec<AttemptFailure>,
    /// Events that failed transiently: left as they are (the cursor does not move past them),
    /// so the next claim sends them again.
    left_pending: usize,
    transient_error: Option<PublishError>,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.published.is_empty() && self.failures.is_empty()
    }
}

/// Whole milliseconds, for log fields.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Waits `duration`, or less if a stop is requested. Returns `true` when stopping.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Result<(), OutboxError> {
    let settings = &shared.settings;
    let mut transient = Backoff::new(
        settings.transient_backoff_base,
        settings.transient_backoff_max,
    );
    let mut idle = settings.min_poll_interval;
    // Results of a batch that could not be written back yet: written before any new claim, or
    // the same events would be sent again.
    let mut unwritten: Option<Outcome> = None;
    // Every new event at or before this position is published, dead-lettered or parked; the
    // commit horizon guarantees no event can appear behind it later.
    let mut cursor: Option<ClaimCursor> = None;
    // The next batch, claimed while the current one was being sent.
    let mut prefetched: Option<ClaimedBatch> = None;

    while !*stop.borrow() {
        match shared.store.acquire_leadership().await {
            Ok(true) => shared.set_leader(true),
            Ok(false) => {
                shared.set_leader(false);
                if let Some(lost) = unwritten.take() {
                    let published = lost.published.len();
                    warn!(
                        published,
                        "outbox relay lost the leadership before acknowledging a batch; the new \
                         leader will send those events again (duplicates carry the same event_id)"
                    );
                    shared.unacknowledged.store(0, Ordering::SeqCst);
                }
                (cursor, prefetched) = (None, None);
                sleep_or_stop(settings.leader_retry_interval, &mut stop).await;
                continue;
            }
            Err(e) => {
                shared.set_leader(false);
                (cursor, prefetched) = (None, None);
                store_failed(&shared, e, "acquire leadership", &mut transient, &mut stop).await;
                continue;
            }
        }

        if let Some(outcome) = unwritten.take()
            && let Err(e) = write_back(&shared, &outcome).await
        {
            unwritten = Some(outcome);
            store_failed(&shared, e, "acknowledge", &mut transient, &mut stop).await;
            continue;
        }

        let claimed = match prefetched.take() {
            Some(claimed) => claimed,
            None => match shared.store.claim_batch(settings.batch_size, cursor).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    store_failed(&shared, e, "claim", &mut transient, &mut stop).await;
                    continue;
                }
            },
        };
        let now = Utc::now();
        shared.status().last_poll_at = Some(now);
        metrics::gauge!(m::RELAY_LAST_POLL_TIMESTAMP_SECONDS)
            .set(now.timestamp_millis() as f64 / 1000.0);

        if claimed.events.is_empty() {
            // Every row read was parked behind a retrying event of its key (or nothing was
            // there): move past them, and look again at once if the claim was full.
            cursor = claimed.cursor.or(cursor);
            transient.reset();
            if !claimed.full {
                wait_for_work(&shared, idle, &mut stop).await;
                idle = (idle * 2).min(settings.poll_interval);
            }
            continue;
        }

        let started = Instant::now();
        // While batches come back full, claim the next one as this one is sent: its events are
        // sent only after this batch is acknowledged, so at most one batch is ever
        // unacknowledged, and only if this one was published whole. A batch with retries is
        // not overlapped: the next claim could return the same retries.
        let prefetch = claimed.full && claimed.retries == 0;
        let (outcome, next) = if prefetch {
            let (outcome, next) = tokio::join!(
                publish_batch(&shared, &claimed.events),
                shared
                    .store
                    .claim_batch(settings.batch_size, claimed.cursor.or(cursor))
            );
            (outcome, next.ok())
        } else {
            (publish_batch(&shared, &claimed.events).await, None)
        };
        let clean = outcome.failures.is_empty() && outcome.left_pending == 0;
        let transient_error = outcome.transient_error.clone();
        let written = write_back(&shared, &outcome).await;
        let elapsed = started.elapsed();
        metrics::histogram!(m::RELAY_BATCH_DURATION_SECONDS).record(elapsed.as_secs_f64());
        log_batch(&claimed, &outcome, elapsed);
        if let Err(e) = written {
            unwritten = Some(outcome);
            store_failed(&shared, e, "acknowledge", &mut transient, &mut stop).await;
            continue;
        }
        if let Some(error) = transient_error {
            // The cursor stays: the events left pending are claimed again, in order.
            let delay = transient.next();
            let (consecutive_failures, retry_in_ms) = (transient.failures(), millis(delay));
            warn!(
                error = %error,
                consecutive_failures,
                retry_in_ms,
                "outbox relay backing off after a transient publish failure"
            );
            sleep_or_stop(delay, &mut stop).await;
            continue;
        }
        cursor = claimed.cursor.or(cursor);
        transient.reset();
        idle = settings.min_poll_interval;
        if clean {
            prefetched = next;
        }
        if !claimed.full {
            // The backlog is drained: wait briefly for more, or for a wake-up.
            wait_for_work(&shared, idle, &mut stop).await;
        }
    }

    shutdown(&shared, unwritten).await
}

/// One `info` line per batch: what was claimed, what became of it, and how long it took.
fn log_batch(claimed: &ClaimedBatch, outcome: &Outcome, elapsed: Duration) {
    let events = &claimed.events;
    let (first_id, last_id) = (events.first().map(|e| e.id), events.last().map(|e| e.id));
    let held = outcome
        .failures
        .iter()
        .filter(|f| f.outcome == FailureOutcome::Held)
        .count();
    info!(
        count = events.len(),
        retries = claimed.retries,
        first_id,
        last_id,
        published = outcome.published.len(),
        failed = outcome.failures.len() - held,
        held,
        left_pending = outcome.left_pending,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "outbox relay batch"
    );
}

/// After a store operation failed: a lost leadership session yields to the standbys; anything
/// else (the database unavailable) backs off.
async fn store_failed(
    shared: &Shared,
    error: OutboxError,
    operation: &'static str,
    transient: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) {
    shared.record_error(ErrorClass::Transient, &error);
    if matches!(error, OutboxError::LeadershipLost) {
        yield_leadership(shared, stop).await;
    } else {
        let delay = transient.next();
        let retry_in_ms = millis(delay);
        warn!(
            error = %error,
            operation,
            retry_in_ms,
            "outbox relay cannot reach the store; backing off"
        );
        sleep_or_stop(delay, stop).await;
    }
}

/// After losing the leadership session involuntarily, stays away for two leadership retry
/// intervals: a healthy standby, which retries every interval, takes over, instead of the relay
/// whose session just died winning the lock straight back.
async fn yield_leadership(shared: &Shared, stop: &mut watch::Receiver<bool>) {
    shared.set_leader(false);
    warn!("outbox relay lost its leadership session; yielding to standby relays");
    sleep_or_stop(shared.settings.leader_retry_interval * 2, stop).await;
}

/// Waits for a wake-up (from this process, or through the store from another), a stop, or
/// `idle` to pass.
async fn wait_for_work(shared: &Shared, idle: Duration, stop: &mut watch::Receiver<bool>) {
    if *stop.borrow() {
        return;
    }
    tokio::select! {
        _ = shared.wake.notified() => {}
        _ = shared.store.wait_for_wake_up() => {}
        _ = tokio::time::sleep(idle) => {}
        _ = stop.changed() => {}
    }
}

async fn shutdown(shared: &Shared, unwritten: Option<Outcome>) -> Result<(), OutboxError> {
    let mut result = Ok(());
    if let Some(outcome) = unwritten {
        let mut written = false;
        for attempt in 1..=3u32 {
            match write_back(shared, &outcome).await {
                Ok(()) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    warn!(error = %e, attempt, "outbox relay cannot acknowledge its last batch");
                    tokio::time::sleep(backoff_delay(
                        Duration::from_millis(100),
                        Duration::from_secs(1),
                        attempt,
                    ))
                    .await;
                }
            }
        }
        if !written {
            result = Err(OutboxError::ShutdownTimedOut {
                timeout: shared.settings.shutdown_timeout,
                unacknowledged: outcome.published.len(),
            });
        }
    }
    if let Err(e) = shared
        .publisher
        .flush(shared.settings.shutdown_timeout)
        .await
    {
        warn!(error = %e, "outbox publisher did not flush");
        result = result.and(Err(OutboxError::Publish(e)));
    }
    if let Err(e) = shared.store.release_leadership().await {
        warn!(error = %e, "outbox relay could not release the leadership; it lapses with the session");
    }
    shared.unacknowledged.store(0, Ordering::SeqCst);
    result
}

/// Checks and sends one batch and sorts out what happened to each event.
async fn publish_batch(shared: &Shared, batch: &[OutboxEvent]) -> Outcome {
    shared.publisher.prepare(batch).await;
    let mut outcome = Outcome::default();
    // Keys with a failed event in this batch: their later events wait for a later batch, so
    // per-key order holds.
    let mut held: HashSet<(&str, &str)> = HashSet::new();
    let mut sendable: Vec<usize> = Vec::with_capacity(batch.len());

    for (index, event) in batch.iter().enumerate() {
        let key = (event.topic.as_str(), event.key.as_str());
        if held.contains(&key) {
            outcome.failures.push(AttemptFailure {
                id: event.id,
                event_id: event.event_id,
                topic: event.topic.clone(),
                error: "waiting behind an earlier event of its key that failed".to_owned(),
                outcome: FailureOutcome::Held,
            });
            continue;
        }
        let checked = match &event.defect {
            Some(defect) => Err(PublishError::permanent(defect.clone())),
            None => shared.publisher.check(event),
        };
        match checked {
            Ok(()) => sendable.push(index),
            Err(error) => {
                held.insert(key);
                fail(shared, event, error, &mut outcome);
            }
        }
    }

    if sendable.is_empty() {
        return outcome;
    }
    // Usually every event goes: send the batch as it is. Copy only when some stay behind.
    let filtered: Vec<OutboxEvent>;
    let to_send: &[OutboxEvent] = if sendable.len() == batch.len() {
        batch
    } else {
        filtered = sendable.iter().map(|&i| batch[i].clone()).collect();
        &filtered
    };
    shared.unacknowledged.store(to_send.len(), Ordering::SeqCst);
    let results = shared.publisher.publish(to_send).await;
    let acked_at = Utc::now();

    let mut per_topic: HashMap<&str, u64> = HashMap::new();
    let mut sent_held: HashSet<(&str, &str)> = HashSet::new();
    for (event, result) in to_send
        .iter()
        .zip(results.into_iter().chain(std::iter::repeat_with(|| {
            Err(PublishError::transient(
                "the publisher returned no result for this event",
            ))
        })))
    {
        let key = (event.topic.as_str(), event.key.as_str());
        match result {
            Ok(delivery) => {
                debug!(
                    event_id = %event.event_id,
                    id = event.id,
                    topic = %event.topic,
                    key = %event.key,
                    event_type = %event.event_type,
                    partition = delivery.partition,
                    offset = delivery.offset,
                    "outbox event published"
                );
                if sent_held.contains(&key) {
                    // An earlier event of this key failed after both were handed to the
                    // producer: Kafka has this one first. Rare (broker-side rejection); logged
                    // so it can be seen.
                    warn!(
                        event_id = %event.event_id,
                        id = event.id,
                        topic = %event.topic,
                        "outbox event published after an earlier event of its key failed"
                    );
                }
                outcome.published.push(event.id);
                *per_topic.entry(event.topic.as_str()).or_default() += 1;
                let lag = (acked_at - event.created_at).to_std().unwrap_or_default();
                metrics::histogram!(m::PUBLISH_LAG_SECONDS, "topic" => event.topic.clone())
                    .record(lag.as_secs_f64());
            }
            Err(error) if error.is_transient() => {
                sent_held.insert(key);
                shared.record_error(ErrorClass::Transient, &error);
                outcome.left_pending += 1;
                outcome.transient_error.get_or_insert(error);
            }
            Err(error) => {
                sent_held.insert(key);
                fail(shared, event, error, &mut outcome);
            }
        }
    }
    for (topic, count) in per_topic {
        metrics::counter!(m::EVENTS_RELAYED_TOTAL, "topic" => topic.to_owned()).increment(count);
    }
    outcome
}

/// Records a permanent failure of `event`: a retry later (the delay counted on the store's
/// clock), or a dead letter.
fn fail(shared: &Shared, event: &OutboxEvent, error: PublishError, outcome: &mut Outcome) {
    let settings = &shared.settings;
    shared.record_error(ErrorClass::Permanent, &error);
    let attempts = u32::try_from(event.attempts.max(0))
        .unwrap_or(0)
        .saturating_add(1);
    let failure = if attempts >= settings.max_attempts {
        error!(
            event_id = %event.event_id,
            id = event.id,
            topic = %event.topic,
            event_type = %event.event_type,
            attempts,
            error = %error.message,
            "outbox event dead-lettered"
        );
        AttemptFailure {
            id: event.id,
            event_id: event.event_id,
            topic: event.topic.clone(),
            error: error.message,
            outcome: FailureOutcome::DeadLetter,
        }
    } else {
        let delay = backoff_delay(
            settings.retry_backoff_base,
            settings.retry_backoff_max,
            attempts,
        );
        let retry_in_ms = millis(delay);
        warn!(
            event_id = %event.event_id,
            id = event.id,
            topic = %event.topic,
            event_type = %event.event_type,
            attempts,
            max_attempts = settings.max_attempts,
            retry_in_ms,
            error = %error.message,
            "outbox event failed; will retry"
        );
        AttemptFailure {
            id: event.id,
            event_id: event.event_id,
            topic: event.topic.clone(),
            error: error.message,
            outcome: FailureOutcome::RetryAfter(delay),
        }
    };
    outcome.failures.push(failure);
}

/// Acknowledges published events and records failures.
async fn write_back(shared: &Shared, outcome: &Outcome) -> Result<(), OutboxError> {
    if outcome.is_empty() {
        shared.unacknowledged.store(0, Ordering::SeqCst);
        return Ok(());
    }
    if !outcome.published.is_empty() {
        shared
            .store
            .acknowledge(&outcome.published, shared.settings.retention.is_some())
            .await?;
        shared.unacknowledged.store(0, Ordering::SeqCst);
        let mut status = shared.status();
        status.relayed += outcome.published.len() as u64;
        if outcome.failures.is_empty() && outcome.transient_error.is_none() {
            status.last_error = None;
        }
    }
    if !outcome.failures.is_empty() {
        shared.store.record_failures(&outcome.failures).await?;
        let dead: Vec<&AttemptFailure> = outcome
            .failures
            .iter()
            .filter(|f| f.outcome == FailureOutcome::DeadLetter)
            .collect();
        for failure in &dead {
            metrics::counter!(m::EVENTS_DEAD_LETTERED_TOTAL, "topic" => failure.topic.clone())
                .increment(1);
        }
        shared.status().dead_lettered += dead.len() as u64;
    }
    shared.unacknowledged.store(0, Ordering::SeqCst);
    Ok(())
}

/// Refreshes the backlog gauges and, under retention, deletes expired published rows.
async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let settings = &shared.settings;
    let mut last_cleanup = Instant::now();
    loop {
        match shared.store.stats().await {
            Ok(stats) => {
                metrics::gauge!(m::EVENTS_PENDING).set(stats.pending as f64);
                metrics::gauge!(m::OLDEST_PENDING_AGE_SECONDS)
                    .set(stats.oldest_pending_age.unwrap_or_default().as_secs_f64());
                metrics::gauge!(m::EVENTS_DEAD_LETTERED).set(stats.dead_lettered as f64);
                metrics::gauge!(m::COMMIT_HORIZON_WAIT_SECONDS)
                    .set(stats.horizon_wait.unwrap_or_default().as_secs_f64());
                warn_if_horizon_held(settings, &stats);
                shared.status().stats = Some(stats);
            }
            Err(e) => {
                shared.record_error(ErrorClass::Transient, &e);
                warn!(error = %e, "outbox stats could not be read");
            }
        }
        if let (Some(cleanup), Some(retention)) = (&shared.cleanup, settings.retention)
            && last_cleanup.elapsed() >= settings.cleanup_interval
        {
            last_cleanup = Instant::now();
            let mut deleted = 0u64;
            loop {
                match cleanup
                    .delete_expired(retention, settings.cleanup_batch_size)
                    .await
                {
                    Ok(n) => {
                        deleted += n;
                        if n < settings.cleanup_batch_size || *stop.borrow() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        shared.record_error(ErrorClass::Transient, &e);
                        warn!(error = %e, "outbox cleanup failed");
                        break;
                    }
                }
            }
            let retention_s = retention.as_secs();
            if deleted > 0 {
                info!(
                    deleted,
                    retention_s, "outbox cleanup deleted expired published rows"
                );
            }
        }
        if sleep_or_stop(settings.stats_interval, &mut stop).await {
            return;
        }
    }
}

/// Names the transaction that has held the commit horizon longer than `horizon_warn_after`, so
/// an operator can find and end it (the playbook says how).
fn warn_if_horizon_held(settings: &RelaySettings, stats: &OutboxStats) {
    let Some(wait) = stats
        .horizon_wait
        .filter(|w| *w >= settings.horizon_warn_after)
    else {
        return;
    };
    let holder = stats.horizon_holder.clone().unwrap_or_default();
    warn!(
        waiting_s = wait.as_secs_f64(),
        holder_pid = holder.pid,
        holder_age_s = holder.age.map(|a| a.as_secs_f64()),
        holder_state = holder.state.as_deref(),
        holder_query_start = holder.query_start.map(|t| t.to_rfc3339()),
        holder_query = holder.query.as_deref(),
        holder_database = holder.database.as_deref(),
        holder_user = holder.user.as_deref(),
        holder_application = holder.application.as_deref(),
        "outbox events wait behind a transaction that is still open; the relay keeps waiting \
         so that no key is reordered: end that transaction (see the operations playbook)"
    );
}
