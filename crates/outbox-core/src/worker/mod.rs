//! The relay worker: moves events from the store to the publisher.
//!
//! - this module: [`EventRelayWorker`] itself (build, start, stop, status);
//! - `run`: the relay loop, one batch at a time;
//! - `window`: where the next claim starts, and the batch claimed ahead;
//! - `publish`: sending one batch and writing its results back;
//! - `shutdown`: the relay's last steps once a stop is requested;
//! - `housekeeping`: backlog gauges, retention cleanup, the commit-horizon warning;
//! - `notifier`: waking the relay after a commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics as m;
use crate::{
    ErrorClass, EventPublisher, OutboxCleanup, OutboxError, OutboxStats, RelaySettings, RelayStore,
};

mod housekeeping;
mod notifier;
mod publish;
mod run;
mod shutdown;
mod window;

pub use notifier::{RelayNotifier, RemoteWake};

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

/// Relays events from a [`RelayStore`] to an [`EventPublisher`].
///
/// One loop, one batch sent at a time, and at most `batch_size` events ever sent but not
/// acknowledged in the store (the bound on duplicates after a crash):
///
/// 1. make sure this relay is the leader (standbys retry every `leader_retry_interval`);
/// 2. claim up to `batch_size` events: retries that are due, then committed events in commit
///    order after the last position it settled (while batches come back full, the next batch is
///    claimed as this one is sent);
/// 3. check each with [`EventPublisher::check`], send the rest in one bulk
///    [`publish`](EventPublisher::publish) and await the acknowledgements together; once an event
///    fails, later events with the same topic and key wait for the next batch;
/// 4. acknowledge the published events in one statement and record permanent failures (retry
///    time with backoff, or dead letter after `max_attempts`). A batch that was not full went
///    out clean (no failure, no retry) is acknowledged beside the next one's send instead: right
///    after Kafka's acknowledgement the relay claims what committed meanwhile, at most
///    `batch_size` minus the batch's events, and sends that while the store acknowledges;
/// 5. after a transient failure (broker or database unavailable), wait with capped exponential
///    backoff and jitter, without touching the failed rows; otherwise claim again at once after
///    a batch that sent something, or wait for a wake-up after a claim that found nothing,
///    backing off to `poll_interval` when idle.
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

/// The running worker's two tasks and the signal that stops them.
struct Tasks {
    stop: watch::Sender<bool>,
    relay: JoinHandle<Result<(), OutboxError>>,
    housekeeping: JoinHandle<()>,
}

/// What the worker, its relay loop and its housekeeping task share.
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
        let relay = tokio::spawn(run::run(self.shared.clone(), stop_rx.clone()));
        let housekeeping = tokio::spawn(housekeeping::housekeeping(self.shared.clone(), stop_rx));
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
        self.shared.wake.wake_local();
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
            self.shared.wake.wake_local();
        }
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
