//! Sending one batch: check each event, send the rest in bulk, sort out what happened to each,
//! and write that back to the store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, error, info, warn};

use super::{Shared, millis};
use crate::backoff::backoff_delay;
use crate::metrics as m;
use crate::{
    AttemptFailure, ClaimedBatch, ErrorClass, FailureOutcome, OutboxError, OutboxEvent,
    PublishError,
};

/// What one batch did, to be written back to the store.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) published: Vec<i64>,
    pub(super) failures: Vec<AttemptFailure>,
    /// Events that failed transiently: left as they are (the cursor does not move past them),
    /// so the next claim sends them again.
    pub(super) left_pending: usize,
    pub(super) transient_error: Option<PublishError>,
}

impl Outcome {
    pub(super) fn is_empty(&self) -> bool {
        self.published.is_empty() && self.failures.is_empty()
    }

    /// Every event was published: nothing failed, nothing was left pending.
    pub(super) fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.left_pending == 0
    }

    /// Adds the results of a later batch, to write both back as one.
    pub(super) fn absorb(&mut self, later: Outcome) {
        self.published.extend(later.published);
        self.failures.extend(later.failures);
        self.left_pending += later.left_pending;
        if self.transient_error.is_none() {
            self.transient_error = later.transient_error;
        }
    }

    /// Puts the results of an earlier batch first, to write both back as one.
    pub(super) fn absorb_before(&mut self, earlier: Outcome) {
        let later = std::mem::replace(self, earlier);
        self.absorb(later);
    }
}

/// Counts events handed to the publisher or published whose rows are not acknowledged yet.
fn unacknowledged_less(shared: &Shared, n: usize) {
    let _ = shared
        .unacknowledged
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(v.saturating_sub(n))
        });
}

/// Checks and sends one batch and sorts out what happened to each event.
pub(super) async fn publish_batch(shared: &Shared, batch: &[OutboxEvent]) -> Outcome {
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
    shared
        .unacknowledged
        .fetch_add(to_send.len(), Ordering::SeqCst);
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
    // What failed is not waiting for an acknowledgement.
    unacknowledged_less(shared, to_send.len() - outcome.published.len());
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
pub(super) async fn write_back(shared: &Shared, outcome: &Outcome) -> Result<(), OutboxError> {
    if outcome.is_empty() {
        return Ok(());
    }
    if !outcome.published.is_empty() {
        shared
            .store
            .acknowledge(&outcome.published, shared.settings.retention.is_some())
            .await?;
        unacknowledged_less(shared, outcome.published.len());
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
    Ok(())
}

/// One `info` line per batch: what was claimed, what became of it, and how long it took.
pub(super) fn log_batch(claimed: &ClaimedBatch, outcome: &Outcome, elapsed: Duration) {
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
