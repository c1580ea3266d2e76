//! The inbox worker: takes messages from a [`MessageSource`], applies each once through its
//! topic's [`InboxHandler`] on an [`InboxStore`] transaction, then commits the offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{
    Handled, HandlerError, InboxEntry, InboxHandler, InboxMessage, InboxStore, MessagePosition,
    MessageSource, SourceError,
};
use crate::backoff::Backoff;
use crate::metrics as m;
use crate::{InboxSettings, OutboxError};

/// The consumer name under which messages of a topic without a handler are rejected (the
/// source should only deliver handled topics; this keeps a stray one from blocking).
pub const UNROUTED_CONSUMER: &str = "<unrouted>";

/// Longest error text an inbox row keeps; a longer one is cut (at a character boundary).
const MAX_ERROR_LEN: usize = 4096;

/// Longest outcome label a handler may answer.
const MAX_OUTCOME_LEN: usize = 64;

/// What the inbox worker is doing, for health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxStatus {
    /// The worker's task runs.
    pub running: bool,
    /// Messages applied (handler run and committed) since the worker started.
    pub consumed: u64,
    /// Messages skipped as already applied or rejected since the worker started.
    pub duplicates: u64,
    /// Messages rejected since the worker started.
    pub rejected: u64,
    /// The last error, cleared by the next batch finished without one.
    pub last_error: Option<String>,
    /// When the worker last finished a batch of messages.
    pub last_message_at: Option<DateTime<Utc>>,
}

/// What an operator's [`InboxWorker::replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replayed {
    /// The handler applied the message and the transaction committed: the row is no longer
    /// rejected.
    Applied(Handled),
    /// The handler failed. A permanent error is now the rejected row's error; after a
    /// transient one nothing changed (try again later).
    Failed(HandlerError),
    /// There is no rejected row for that consumer and event id.
    NotRejected,
}

/// One topic's handler and the consumer name its inbox rows carry.
struct Route<T: Send + Sync> {
    consumer: String,
    handler: Arc<dyn InboxHandler<T>>,
}

/// What the worker and its tasks share.
struct Shared<S: InboxStore + ?Sized, Src: MessageSource + ?Sized> {
    store: Arc<S>,
    source: Arc<Src>,
    settings: InboxSettings,
    routes: HashMap<String, Route<S::Transaction>>,
    status: Mutex<InboxStatus>,
    /// Messages of the batch being processed.
    in_flight: AtomicUsize,
}

/// The running worker's tasks and the signal that stops them.
struct Tasks {
    stop: watch::Sender<bool>,
    consumer: JoinHandle<Result<(), OutboxError>>,
    cleanup: JoinHandle<()>,
}

/// Applies each message of a [`MessageSource`] exactly once through the [`InboxHandler`] of its
/// topic, on a transaction of an [`InboxStore`], and commits the offsets after the transaction.
///
/// One loop, one batch at a time:
///
/// 1. take up to `max_batch` messages ([`MessageSource::next_batch`]);
/// 2. derive each message's [`InboxEntry`]: a message without a usable event id, or on a topic
///    without a handler, is [rejected](InboxStore::reject) at once (a transaction of its own)
///    and skipped;
/// 3. in one transaction: [`record`](InboxStore::record) every entry in one call, run the
///    handler of each new one in order, set the outcomes that are not `applied`, commit;
/// 4. [`commit`](MessageSource::commit) the offsets of the whole batch, duplicates included.
///
/// When a handler fails or the transaction does, the batch is rolled back and applied again one
/// message per transaction, to isolate the failure: a transient error is retried with capped
/// backoff and jitter (the messages after it wait, its offset is not committed); a permanent one
/// rejects the message, with the error, and the batch goes on. A
/// [`SourceError::Revoked`] on the offset commit forgets the batch: the partition's new owner
/// delivers it again and the inbox drops what was applied.
///
/// A second task deletes inbox rows older than `retention`, `cleanup_batch_size` at a time,
/// every `cleanup_interval`.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use outbox_core::testing::{MemoryInboxStore, MemoryInboxTransaction, MemorySource};
/// use outbox_core::{Handled, HandlerError, InboxHandler, InboxMessage, InboxSettings, InboxWorker};
///
/// struct Count;
///
/// #[async_trait]
/// impl InboxHandler<MemoryInboxTransaction> for Count {
///     async fn handle(
///         &self,
///         txn: &MemoryInboxTransaction,
///         message: &InboxMessage,
///     ) -> Result<Handled, HandlerError> {
///         txn.effect(format!("counted {}", message.offset)); // commits with the inbox row
///         Ok(Handled::applied())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), outbox_core::OutboxError> {
/// let store = MemoryInboxStore::new();
/// let source = MemorySource::new();
/// let worker = InboxWorker::new(store.clone(), source.clone(), InboxSettings::default())?
///     .handler("counter", ["clicks"], Arc::new(Count))?;
/// worker.start()?;
/// let id = uuid::Uuid::now_v7().to_string();
/// source.send("clicks", 0, vec![("event_id".into(), id.clone().into_bytes())], b"{}");
/// source.send("clicks", 0, vec![("event_id".into(), id.into_bytes())], b"{}"); // a duplicate
/// while source.committed("clicks", 0) != Some(2) {
///     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
/// }
/// worker.stop().await?;
/// assert_eq!(store.effects(), ["counted 0"]);
/// # Ok(())
/// # }
/// ```
pub struct InboxWorker<S: InboxStore + ?Sized + 'static, Src: MessageSource + ?Sized + 'static> {
    shared: Arc<Shared<S, Src>>,
    tasks: Mutex<Option<Tasks>>,
}

impl<S, Src> std::fmt::Debug for InboxWorker<S, Src>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorker")
            .field("settings", &self.shared.settings)
            .field("topics", &self.topics())
            .field("status", &self.status())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic while it was held cannot leave it inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S, Src> InboxWorker<S, Src>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    /// A worker over `store` and `source`, without handlers yet. Fails when the settings are
    /// invalid.
    pub fn new(
        store: Arc<S>,
        source: Arc<Src>,
        settings: InboxSettings,
    ) -> Result<Self, OutboxError> {
        settings.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                source,
                settings,
                routes: HashMap::new(),
                status: Mutex::new(InboxStatus::default()),
                in_flight: AtomicUsize::new(0),
            }),
            tasks: Mutex::new(None),
        })
    }

    /// Handles the messages of `topics` with `handler`, recording them in the inbox as
    /// `consumer` (the inbox deduplicates per consumer and event id). Fails when `consumer` is
    /// empty, too long or reserved, when `topics` is empty or names an invalid topic, when a
    /// topic already has a handler, or once the worker has started. Several topics may share one
    /// consumer name.
    pub fn handler<I, N>(
        mut self,
        consumer: &str,
        topics: I,
        handler: Arc<dyn InboxHandler<S::Transaction>>,
    ) -> Result<Self, OutboxError>
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        let fail = |message: String| Err(OutboxError::Config(message));
        if consumer.trim().is_empty() {
            return fail("an inbox consumer needs a name".into());
        }
        if consumer.len() > 200 || consumer == UNROUTED_CONSUMER || consumer.contains('\0') {
            return fail(format!(
                "`{consumer:?}` cannot name an inbox consumer (at most 200 bytes, no NUL, not {UNROUTED_CONSUMER})"
            ));
        }
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        if topics.is_empty() {
            return fail(format!("inbox consumer `{consumer}` handles no topic"));
        }
        let Some(shared) = Arc::get_mut(&mut self.shared) else {
            return Err(OutboxError::AlreadyRunning);
        };
        for topic in &topics {
            crate::validate_topic(topic)?;
            if let Some(existing) = shared.routes.get(topic) {
                return fail(format!(
                    "topic `{topic}` already has a handler (consumer `{}`): a topic has exactly one",
                    existing.consumer
                ));
            }
            if topics.iter().filter(|t| *t == topic).count() > 1 {
                return fail(format!("topic `{topic}` is listed twice for `{consumer}`"));
            }
        }
        for topic in topics {
            shared.routes.insert(
                topic,
                Route {
                    consumer: consumer.to_owned(),
                    handler: handler.clone(),
                },
            );
        }
        Ok(self)
    }

    /// The topics with a handler, sorted: what the source should subscribe to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.shared.routes.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// The settings the worker runs with.
    pub fn settings(&self) -> &InboxSettings {
        &self.shared.settings
    }

    /// What the worker is doing.
    pub fn status(&self) -> InboxStatus {
        lock(&self.shared.status).clone()
    }

    /// Starts the consumer and cleanup tasks on the current Tokio runtime. Fails when the
    /// worker runs already or has no handler.
    pub fn start(&self) -> Result<(), OutboxError> {
        let mut tasks = lock(&self.tasks);
        if tasks.is_some() {
            return Err(OutboxError::AlreadyRunning);
        }
        if self.shared.routes.is_empty() {
            return Err(OutboxError::Config(
                "the inbox worker has no handler: add one with `handler(...)`".into(),
            ));
        }
        m::describe();
        let (stop, stop_rx) = watch::channel(false);
        *lock(&self.shared.status) = InboxStatus {
            running: true,
            ..InboxStatus::default()
        };
        let shared = self.shared.clone();
        let consumer_stop = stop_rx.clone();
        let consumer = tokio::spawn(async move {
            // However the loop ends (an error, or a panic in the store or the source), the
            // status says the worker no longer runs, so health checks see it.
            let result = std::panic::AssertUnwindSafe(run(shared.clone(), consumer_stop))
                .catch_unwind()
                .await;
            let mut status = lock(&shared.status);
            status.running = false;
            match result {
                Ok(result) => result,
                Err(panic) => {
                    let text = format!("the inbox worker panicked: {}", panic_text(panic.as_ref()));
                    status.last_error = Some(text.clone());
                    drop(status);
                    warn!(error = %text, "outbox inbox worker stopped");
                    Err(OutboxError::WorkerFailed(text))
                }
            }
        });
        let cleanup = tokio::spawn(cleanup(self.shared.clone(), stop_rx));
        let settings = &self.shared.settings;
        info!(
            max_batch = settings.max_batch,
            topics = ?self.topics(),
            retention_h = settings.retention.as_secs() / 3600,
            "outbox inbox worker started"
        );
        *tasks = Some(Tasks {
            stop,
            consumer,
            cleanup,
        });
        Ok(())
    }

    /// Stops the worker gracefully: no new batch is taken; the batch in flight is finished
    /// (applied and committed in the store, its offsets committed to the source), or, when it
    /// waits on a transient failure, what is done is committed and the rest is
    /// [rewound](MessageSource::rewind) for the next run. Returns once that is done.
    ///
    /// If it takes longer than `shutdown_timeout`, the batch is abandoned (its uncommitted
    /// messages are delivered again) and [`OutboxError::InboxStopTimedOut`] says how many it
    /// held. Stopping a worker that is not running does nothing.
    pub async fn stop(&self) -> Result<(), OutboxError> {
        let Some(tasks) = lock(&self.tasks).take() else {
            return Ok(());
        };
        let _ = tasks.stop.send(true);
        let timeout = self.shared.settings.shutdown_timeout;
        let mut consumer = tasks.consumer;
        let result = match tokio::time::timeout(timeout, &mut consumer).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(OutboxError::WorkerFailed(e.to_string()))),
            Err(_) => {
                consumer.abort();
                let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
                warn!(
                    in_flight,
                    timeout_ms = millis(timeout),
                    "outbox inbox worker shutdown timed out; abandoning the batch in flight"
                );
                Err(OutboxError::InboxStopTimedOut { timeout, in_flight })
            }
        };
        let mut cleanup = tasks.cleanup;
        if tokio::time::timeout(timeout, &mut cleanup).await.is_err() {
            cleanup.abort();
        }
        lock(&self.shared.status).running = false;
        info!(ok = result.is_ok(), "outbox inbox worker stopped");
        result
    }

    /// Kills the worker without any of `stop()`'s care: the batch in flight is rolled back or
    /// committed in the store but its offsets are not committed. This is what a crash looks
    /// like; tests use it to prove nothing is applied twice.
    pub fn abort(&self) {
        if let Some(tasks) = lock(&self.tasks).take() {
            tasks.consumer.abort();
            tasks.cleanup.abort();
            lock(&self.shared.status).running = false;
            warn!("outbox inbox worker aborted");
        }
    }

    /// Runs a rejected message again, for an operator who fixed its cause: in one transaction,
    /// [`take_rejected`](InboxStore::take_rejected), [`record`](InboxStore::record), the
    /// handler of the message's topic, commit. After a permanent failure the message stays
    /// rejected, with the new error; after a transient one nothing changes. Works whether or
    /// not the worker runs.
    ///
    /// Fails when the store fails, or when the message's topic has no handler recording as
    /// `consumer`.
    pub async fn replay(&self, consumer: &str, event_id: Uuid) -> Result<Replayed, OutboxError> {
        let shared = &self.shared;
        let store = &shared.store;
        let txn = store.begin().await?;
        let message = match store.take_rejected(&txn, consumer, event_id).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                store.rollback(txn).await?;
                return Ok(Replayed::NotRejected);
            }
            Err(e) => {
                let _ = store.rollback(txn).await;
                return Err(e);
            }
        };
        let Some(route) = shared
            .routes
            .get(&message.topic)
            .filter(|r| r.consumer == consumer)
        else {
            let _ = store.rollback(txn).await;
            return Err(OutboxError::Config(format!(
                "no handler records topic `{}` as `{consumer}`: cannot replay {event_id}",
                message.topic
            )));
        };
        let mut entry = InboxEntry::for_message(consumer, &message)
            .unwrap_or_else(|_| InboxEntry::for_rejection(consumer, &message));
        entry.event_id = event_id;
        let outcome = match store.record(&txn, std::slice::from_ref(&entry)).await {
            Ok(fresh) if fresh.first().copied().unwrap_or(false) => {
                handle(shared, route, &txn, &entry, &message).await
            }
            // Recorded again by someone else meanwhile: nothing is rejected any more.
            Ok(_) => {
                store.rollback(txn).await?;
                return Ok(Replayed::NotRejected);
            }
            Err(e) => {
                let _ = store.rollback(txn).await;
                return Err(e);
            }
        };
        match outcome {
            Ok(handled) => {
                store.commit(txn).await?;
                metrics::counter!(
                    m::INBOX_CONSUMED_TOTAL,
                    "consumer" => consumer.to_owned(),
                    "outcome" => handled.as_str().to_owned()
                )
                .increment(1);
                info!(
                    consumer,
                    %event_id,
                    topic = %message.topic,
                    outcome = handled.as_str(),
                    "outbox inbox replayed a rejected message"
                );
                Ok(Replayed::Applied(handled))
            }
            Err(Failure::Handler(error)) => {
                store.rollback(txn).await?;
                if !error.is_transient() {
                    store
                        .update_rejected(consumer, event_id, &bounded(&error.to_string()))
                        .await?;
                }
                warn!(consumer, %event_id, error = %error, "outbox inbox replay failed");
                Ok(Replayed::Failed(error))
            }
            Err(Failure::Store(e)) => {
                let _ = store.rollback(txn).await;
                Err(e)
            }
        }
    }
}

impl<S, Src> Drop for InboxWorker<S, Src>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    fn drop(&mut self) {
        if let Some(tasks) = lock(&self.tasks).take() {
            let _ = tasks.stop.send(true);
        }
    }
}

/// Whole milliseconds, for log fields.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `text`, cut to [`MAX_ERROR_LEN`] bytes at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_LEN {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Waits `duration`, or less if a stop is requested. Returns `true` when stopping.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// Why applying one or more messages failed.
enum Failure {
    /// A handler failed.
    Handler(HandlerError),
    /// The store failed (begin, record, set the outcome, commit).
    Store(OutboxError),
}

/// Runs `route`'s handler for `message` on `txn` and sets the outcome it answers.
/// The message of a panic's payload, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

async fn handle<S, Src>(
    shared: &Shared<S, Src>,
    route: &Route<S::Transaction>,
    txn: &S::Transaction,
    entry: &InboxEntry,
    message: &InboxMessage,
) -> Result<Handled, Failure>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    let started = Instant::now();
    // A handler that panics fails its message for good instead of killing the worker (which
    // would stop every partition, and every replica the partitions move to).
    let result = match std::panic::AssertUnwindSafe(route.handler.handle(txn, message))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(HandlerError::permanent(format!(
            "the handler of `{}` panicked: {}",
            route.consumer,
            panic_text(panic.as_ref())
        ))),
    };
    metrics::histogram!(m::INBOX_HANDLER_DURATION_SECONDS, "consumer" => route.consumer.clone())
        .record(started.elapsed().as_secs_f64());
    let handled = match result {
        Ok(handled) => handled,
        Err(error) => {
            let kind = if error.is_transient() {
                "transient"
            } else {
                "permanent"
            };
            metrics::counter!(
                m::INBOX_HANDLER_ERRORS_TOTAL,
                "consumer" => route.consumer.clone(),
                "kind" => kind
            )
            .increment(1);
            return Err(Failure::Handler(error));
        }
    };
    let outcome = handled.as_str();
    if outcome == "applied" {
        return Ok(handled);
    }
    if outcome.is_empty() || outcome.len() > MAX_OUTCOME_LEN || outcome == "rejected" {
        return Err(Failure::Handler(HandlerError::permanent(format!(
            "the handler of `{}` answered the outcome `{outcome}`: an outcome is 1 to \
             {MAX_OUTCOME_LEN} bytes and not `rejected` (return a permanent error to reject)",
            route.consumer
        ))));
    }
    shared
        .store
        .set_outcome(txn, &entry.consumer, entry.event_id, outcome)
        .await
        .map_err(Failure::Store)?;
    Ok(handled)
}

/// The row a message is recorded as and the route that handles it.
type Apply<'a, T> = (InboxEntry, &'a Route<T>);

/// One message of a batch and what is to be done with it.
struct Item<'a, T: Send + Sync> {
    message: InboxMessage,
    /// The entry and route to apply it with; `None` once it was rejected before the batch.
    apply: Option<Apply<'a, T>>,
    done: bool,
}

/// Counts of one batch, reported together.
#[derive(Default)]
struct Tally {
    consumed: BTreeMap<(String, String), u64>,
    duplicates: BTreeMap<String, u64>,
    rejected: u64,
}

impl Tally {
    fn report(self, status: &mut InboxStatus) {
        for ((consumer, outcome), n) in self.consumed {
            status.consumed += n;
            metrics::counter!(m::INBOX_CONSUMED_TOTAL, "consumer" => consumer, "outcome" => outcome)
                .increment(n);
        }
        for (consumer, n) in self.duplicates {
            status.duplicates += n;
            metrics::counter!(m::INBOX_DUPLICATES_TOTAL, "consumer" => consumer).increment(n);
        }
        status.rejected += self.rejected;
    }
}

/// The consumer loop: one batch at a time until a stop is requested.
async fn run<S, Src>(
    shared: Arc<Shared<S, Src>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    let mut batcher = Batcher {
        shared: &shared,
        backoff: Backoff::new(
            shared.settings.transient_backoff_base,
            shared.settings.transient_backoff_max,
        ),
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let polled = tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return Ok(());
                }
                continue;
            }
            polled = shared.source.next_batch(shared.settings.max_batch) => polled,
        };
        match polled {
            Ok(messages) if messages.is_empty() => tokio::task::yield_now().await,
            Ok(messages) => {
                batcher.backoff.reset();
                if let Err(e) = batcher.process(messages, &mut stop).await {
                    warn!(error = %e, "outbox inbox worker stops: its message source failed");
                    lock(&shared.status).running = false;
                    return Err(e);
                }
            }
            Err(SourceError::Fatal(reason)) => {
                let error = SourceError::Fatal(reason);
                batcher.source_failed(&error);
                warn!(error = %error, "outbox inbox worker stops: its message source failed");
                lock(&shared.status).running = false;
                return Err(error.into());
            }
            Err(error) => {
                batcher.source_failed(&error);
                let delay = batcher.backoff.next();
                warn!(
                    error = %error,
                    retry_in_ms = millis(delay),
                    "outbox inbox cannot take messages from the broker; backing off"
                );
                sleep_or_stop(delay, &mut stop).await;
            }
        }
    }
}

/// Processes batches for the consumer loop.
struct Batcher<'s, S: InboxStore + ?Sized + 'static, Src: MessageSource + ?Sized + 'static> {
    shared: &'s Shared<S, Src>,
    backoff: Backoff,
}

impl<'s, S, Src> Batcher<'s, S, Src>
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    fn source_failed(&self, error: &SourceError) {
        metrics::counter!(m::INBOX_ERRORS_TOTAL, "operation" => "source").increment(1);
        lock(&self.shared.status).last_error = Some(error.to_string());
    }

    fn store_failed(&self, error: &dyn std::fmt::Display) {
        metrics::counter!(m::INBOX_ERRORS_TOTAL, "operation" => "store").increment(1);
        lock(&self.shared.status).last_error = Some(error.to_string());
    }

    /// Applies one batch and commits its offsets; when a stop interrupts a retry, commits what
    /// is done and rewinds the rest.
    async fn process(
        &mut self,
        messages: Vec<InboxMessage>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), OutboxError> {
        let shared = self.shared;
        let started = Instant::now();
        let count = messages.len();
        shared.in_flight.store(count, Ordering::SeqCst);
        metrics::histogram!(m::INBOX_BATCH_SIZE).record(count as f64);
        let first = messages.first().map(InboxMessage::position_label);
        let last = messages.last().map(InboxMessage::position_label);
        let mut tally = Tally::default();
        let mut had_error = false;

        let mut items = Vec::with_capacity(count);
        let mut rejections = Vec::new();
        for message in messages {
            let apply = match shared.routes.get(&message.topic) {
                None => Err((
                    InboxEntry::for_rejection(UNROUTED_CONSUMER, &message),
                    HandlerError::permanent(format!(
                        "no handler for topic `{}` (message {})",
                        message.topic,
                        message.position_label()
                    )),
                )),
                Some(route) => match InboxEntry::for_message(&route.consumer, &message) {
                    Ok(entry) => Ok((entry, route)),
                    Err(e) => Err((InboxEntry::for_rejection(&route.consumer, &message), e)),
                },
            };
            let apply = match apply {
                Ok(apply) => Some(apply),
                Err(rejection) => {
                    rejections.push((items.len(), rejection));
                    None
                }
            };
            items.push(Item {
                message,
                apply,
                done: false,
            });
        }
        // Rejected before the rest of the batch: they have no effects, so order does not matter.
        for (index, (entry, error)) in rejections {
            had_error = true;
            if !self
                .reject(&entry, &items[index].message, &error, &mut tally, stop)
                .await
            {
                return self.interrupted(items, tally).await;
            }
            items[index].done = true;
        }

        match self.apply_together(&mut items, &mut tally).await {
            Ok(()) => {}
            Err(failure) => {
                had_error = true;
                let reason = match &failure {
                    Failure::Handler(e) => e.to_string(),
                    Failure::Store(e) => e.to_string(),
                };
                debug!(
                    count,
                    reason, "outbox inbox batch failed; applying its messages one by one"
                );
                for index in 0..items.len() {
                    if items[index].done {
                        continue;
                    }
                    if !self.apply_alone(&items[index], &mut tally, stop).await {
                        return self.interrupted(items, tally).await;
                    }
                    items[index].done = true;
                }
            }
        }

        let lag = items
            .iter()
            .filter_map(|i| i.message.timestamp.map(|t| (i.message.topic.as_str(), t)))
            .fold(BTreeMap::new(), |mut lag, (topic, t)| {
                lag.insert(topic, t);
                lag
            });
        let committed = self.commit_offsets(&items).await?;
        let now = Utc::now();
        for (topic, timestamp) in lag {
            let seconds = (now - timestamp).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!(m::INBOX_LAG_SECONDS, "topic" => topic.to_owned()).set(seconds);
        }
        {
            let mut status = lock(&shared.status);
            tally.report(&mut status);
            status.last_message_at = Some(now);
            if !had_error && committed {
                status.last_error = None;
            }
        }
        shared.in_flight.store(0, Ordering::SeqCst);
        debug!(
            count,
            first = first.as_deref(),
            last = last.as_deref(),
            duration_ms = millis(started.elapsed()),
            "outbox inbox batch applied"
        );
        Ok(())
    }

    /// The fast path: every message of the batch in one transaction.
    async fn apply_together(
        &self,
        items: &mut [Item<'s, S::Transaction>],
        tally: &mut Tally,
    ) -> Result<(), Failure> {
        let pending: Vec<(usize, &Apply<'s, S::Transaction>)> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| !item.done)
            .filter_map(|(i, item)| item.apply.as_ref().map(|apply| (i, apply)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let entries: Vec<InboxEntry> = pending.iter().map(|(_, (e, _))| e.clone()).collect();
        let store = &self.shared.store;
        let txn = store.begin().await.map_err(Failure::Store)?;
        let result = async {
            let fresh = store.record(&txn, &entries).await.map_err(Failure::Store)?;
            if fresh.len() != entries.len() {
                return Err(Failure::Store(OutboxError::Config(format!(
                    "the inbox store answered {} flags for {} entries",
                    fresh.len(),
                    entries.len()
                ))));
            }
            let mut outcomes = Vec::with_capacity(pending.len());
            for (&(index, (entry, route)), new) in pending.iter().zip(fresh) {
                if new {
                    let message = &items[index].message;
                    let handled = handle(self.shared, route, &txn, entry, message).await?;
                    outcomes.push((route.consumer.clone(), Some(handled)));
                } else {
                    outcomes.push((route.consumer.clone(), None));
                }
            }
            Ok(outcomes)
        }
        .await;
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(failure) => {
                let _ = store.rollback(txn).await;
                return Err(failure);
            }
        };
        store.commit(txn).await.map_err(Failure::Store)?;
        for (consumer, handled) in outcomes {
            match handled {
                Some(handled) => {
                    *tally
                        .consumed
                        .entry((consumer, handled.as_str().to_owned()))
                        .or_default() += 1
                }
                None => *tally.duplicates.entry(consumer).or_default() += 1,
            }
        }
        let done: Vec<usize> = pending.into_iter().map(|(index, _)| index).collect();
        for index in done {
            items[index].done = true;
        }
        Ok(())
    }

    /// Applies one message in a transaction of its own: retried while it fails transiently,
    /// rejected when it fails for good. `false` when a stop came first (nothing applied).
    async fn apply_alone(
        &mut self,
        item: &Item<'s, S::Transaction>,
        tally: &mut Tally,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let Some((entry, route)) = &item.apply else {
            return true;
        };
        let message = &item.message;
        let store = &self.shared.store;
        loop {
            let attempt = async {
                let txn = store.begin().await.map_err(Failure::Store)?;
                let result = async {
                    let fresh = store
                        .record(&txn, std::slice::from_ref(entry))
                        .await
                        .map_err(Failure::Store)?;
                    if fresh.first().copied().unwrap_or(false) {
                        handle(self.shared, route, &txn, entry, message)
                            .await
                            .map(Some)
                    } else {
                        Ok(None)
                    }
                }
                .await;
                match result {
                    Ok(handled) => {
                        store.commit(txn).await.map_err(Failure::Store)?;
                        Ok(handled)
                    }
                    Err(failure) => {
                        let _ = store.rollback(txn).await;
                        Err(failure)
                    }
                }
            }
            .await;
            match attempt {
                Ok(Some(handled)) => {
                    *tally
                        .consumed
                        .entry((route.consumer.clone(), handled.as_str().to_owned()))
                        .or_default() += 1;
                    self.backoff.reset();
                    return true;
                }
                Ok(None) => {
                    *tally.duplicates.entry(route.consumer.clone()).or_default() += 1;
                    self.backoff.reset();
                    return true;
                }
                Err(Failure::Handler(error)) if !error.is_transient() => {
                    return self.reject(entry, message, &error, tally, stop).await;
                }
                // The store refused this message's transaction for good (a constraint its
                // writes violate at commit, a statement whose error the handler ignored):
                // retrying would block the partition forever.
                Err(Failure::Store(error)) if matches!(error, OutboxError::Refused(_)) => {
                    let error = HandlerError::permanent(error.to_string());
                    return self.reject(entry, message, &error, tally, stop).await;
                }
                Err(failure) => {
                    let error = match failure {
                        Failure::Handler(e) => {
                            lock(&self.shared.status).last_error = Some(e.to_string());
                            e.to_string()
                        }
                        Failure::Store(e) => {
                            self.store_failed(&e);
                            e.to_string()
                        }
                    };
                    let delay = self.backoff.next();
                    warn!(
                        consumer = %entry.consumer,
                        event_id = %entry.event_id,
                        topic = %message.topic,
                        partition = message.partition,
                        offset = message.offset,
                        error,
                        consecutive_failures = self.backoff.failures(),
                        retry_in_ms = millis(delay),
                        "outbox inbox message failed transiently; retrying it (later messages wait)"
                    );
                    if sleep_or_stop(delay, stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Records `message` as rejected with `error`, retrying while the store is unavailable.
    /// `false` when a stop came first (nothing recorded).
    async fn reject(
        &mut self,
        entry: &InboxEntry,
        message: &InboxMessage,
        error: &HandlerError,
        tally: &mut Tally,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let text = bounded(&error.to_string());
        loop {
            match self.shared.store.reject(entry, message, &text).await {
                Ok(new) => {
                    self.backoff.reset();
                    if new {
                        tally.rejected += 1;
                        metrics::counter!(
                            m::INBOX_REJECTED_TOTAL,
                            "consumer" => entry.consumer.clone()
                        )
                        .increment(1);
                        lock(&self.shared.status).last_error = Some(text.clone());
                        warn!(
                            consumer = %entry.consumer,
                            event_id = %entry.event_id,
                            topic = %message.topic,
                            partition = message.partition,
                            offset = message.offset,
                            event_type = entry.event_type.as_deref(),
                            error = %text,
                            "outbox inbox rejected a message; it is skipped and can be replayed"
                        );
                    } else {
                        *tally.duplicates.entry(entry.consumer.clone()).or_default() += 1;
                    }
                    return true;
                }
                Err(e) => {
                    self.store_failed(&e);
                    let delay = self.backoff.next();
                    warn!(
                        error = %e,
                        retry_in_ms = millis(delay),
                        offset = message.offset,
                        topic = %message.topic,
                        "outbox inbox cannot record a rejected message; retrying"
                    );
                    if sleep_or_stop(delay, stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Commits the offset after the last message of each partition whose messages are all done
    /// up to it. `Ok(false)` when the partition was revoked or the commit was given up.
    async fn commit_offsets(
        &mut self,
        items: &[Item<'s, S::Transaction>],
    ) -> Result<bool, OutboxError> {
        let mut done: BTreeMap<(&str, i32), Option<i64>> = BTreeMap::new();
        let mut blocked: BTreeMap<(&str, i32), bool> = BTreeMap::new();
        for item in items {
            let key = (item.message.topic.as_str(), item.message.partition);
            let stopped = blocked.entry(key).or_insert(false);
            if !item.done {
                *stopped = true;
            }
            if !*stopped {
                done.insert(key, Some(item.message.offset));
            }
        }
        let positions: Vec<MessagePosition> = done
            .into_iter()
            .filter_map(|((topic, partition), offset)| {
                offset.map(|offset| MessagePosition {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                })
            })
            .collect();
        if positions.is_empty() {
            return Ok(true);
        }
        let shared = self.shared;
        let mut attempts = 0u32;
        loop {
            match shared.source.commit(&positions).await {
                Ok(()) => return Ok(true),
                Err(SourceError::Revoked(reason)) => {
                    info!(
                        reason,
                        "outbox inbox lost a partition before committing its offsets; its new \
                         owner delivers the messages again and the inbox drops those applied"
                    );
                    return Ok(false);
                }
                Err(SourceError::Fatal(reason)) => {
                    let error = SourceError::Fatal(reason);
                    self.source_failed(&error);
                    return Err(error.into());
                }
                Err(error) => {
                    self.source_failed(&error);
                    attempts += 1;
                    let delay = self.backoff.next();
                    warn!(
                        error = %error,
                        attempts,
                        retry_in_ms = millis(delay),
                        "outbox inbox cannot commit offsets; retrying (the messages are applied)"
                    );
                    // Even while stopping: a graceful stop commits what is done, bounded by
                    // the shutdown timeout.
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// After a stop interrupted the batch: commits what is done and rewinds each partition to
    /// its first message not done, so the next run delivers it again.
    async fn interrupted(
        &mut self,
        items: Vec<Item<'s, S::Transaction>>,
        tally: Tally,
    ) -> Result<(), OutboxError> {
        self.commit_offsets(&items).await?;
        let mut rewound: Vec<(&str, i32)> = Vec::new();
        for item in items.iter().filter(|i| !i.done) {
            let key = (item.message.topic.as_str(), item.message.partition);
            if rewound.contains(&key) {
                continue;
            }
            rewound.push(key);
            let from = MessagePosition::from(&item.message);
            if let Err(e) = self.shared.source.rewind(&from).await {
                warn!(
                    error = %e,
                    topic = %from.topic,
                    partition = from.partition,
                    offset = from.offset,
                    "outbox inbox could not rewind an unfinished partition; its uncommitted \
                     messages are delivered again after a restart"
                );
            }
        }
        let undone = items.iter().filter(|i| !i.done).count();
        info!(
            undone,
            "outbox inbox stopped part-way through a batch; what was done is committed"
        );
        tally.report(&mut lock(&self.shared.status));
        self.shared.in_flight.store(0, Ordering::SeqCst);
        Ok(())
    }
}

/// The cleanup task: deletes rows older than `retention` every `cleanup_interval`.
async fn cleanup<S, Src>(shared: Arc<Shared<S, Src>>, mut stop: watch::Receiver<bool>)
where
    S: InboxStore + ?Sized + 'static,
    Src: MessageSource + ?Sized + 'static,
{
    let settings = &shared.settings;
    loop {
        if sleep_or_stop(settings.cleanup_interval, &mut stop).await {
            return;
        }
        let mut deleted = 0u64;
        loop {
            match shared
                .store
                .delete_expired(settings.retention, settings.cleanup_batch_size)
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
                    metrics::counter!(m::INBOX_ERRORS_TOTAL, "operation" => "store").increment(1);
                    lock(&shared.status).last_error = Some(e.to_string());
                    warn!(error = %e, "outbox inbox cleanup failed");
                    break;
                }
            }
        }
        if deleted > 0 {
            info!(
                deleted,
                retention_h = settings.retention.as_secs() / 3600,
                "outbox inbox cleanup deleted expired rows"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_ERROR_LEN + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(bounded("short"), "short");
    }
}
