//! The relay loop: lead, write back what is owed, claim, send, settle, wait.
//!
//! While events keep coming, the write-back of a batch that went out clean overlaps the next
//! batch's send: right after Kafka acknowledged a batch, the relay claims what committed
//! meanwhile (at most `batch_size` events in flight and unwritten together) and writes the
//! first batch back while the second is sent.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tracing::warn;

use super::publish::{Outcome, log_batch, publish_batch, write_back};
use super::shutdown::shutdown;
use super::window::{BatchEnd, ClaimWindow};
use super::{Shared, millis, sleep_or_stop};
use crate::backoff::Backoff;
use crate::metrics as m;
use crate::{ClaimedBatch, ErrorClass, OutboxError, PublishError};

/// Runs the relay until a stop is requested, then shuts it down.
pub(super) async fn run(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let mut relay = Relay::new(&shared, stop);
    while !relay.stopping() {
        if !relay.lead().await || !relay.write_back_owed().await {
            continue;
        }
        let Some(claimed) = relay.claim().await else {
            continue;
        };
        if claimed.events.is_empty() {
            relay.pass_parked(&claimed).await;
        } else {
            relay.send(claimed).await;
        }
    }
    let owed = relay.take_owed();
    shutdown(&shared, owed).await
}

/// Writes back the results of a batch carried into this one's send. `Some` with them when that
/// failed: they are written back with this batch's results, or owed before the next claim.
async fn write_back_carried(shared: &Shared, carried: Option<Outcome>) -> Option<Outcome> {
    let carried = carried?;
    match write_back(shared, &carried).await {
        Ok(()) => None,
        Err(error) => {
            shared.record_error(ErrorClass::Transient, &error);
            warn_carried(&error, carried.published.len());
            Some(carried)
        }
    }
}

/// The relay loop's state between batches.
struct Relay<'a> {
    shared: &'a Shared,
    stop: watch::Receiver<bool>,
    /// Backoff after the store or the broker was unavailable.
    transient: Backoff,
    /// How long to wait for a wake-up when idle: short after work, doubling to `poll_interval`.
    idle: Duration,
    /// Results of a batch that could not be written back yet: written before any new claim, or
    /// the same events would be sent again.
    unwritten: Option<Outcome>,
    /// A batch that went out clean, its write-back left to run beside the next batch's send
    /// (claimed already, in the window).
    carried: Option<Outcome>,
    window: ClaimWindow,
}

impl<'a> Relay<'a> {
    fn new(shared: &'a Shared, stop: watch::Receiver<bool>) -> Self {
        let settings = &shared.settings;
        Self {
            shared,
            stop,
            transient: Backoff::new(
                settings.transient_backoff_base,
                settings.transient_backoff_max,
            ),
            idle: settings.min_poll_interval,
            unwritten: None,
            carried: None,
            window: ClaimWindow::default(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Every result not written back yet, the carried batch's included, as one.
    fn take_owed(&mut self) -> Option<Outcome> {
        let mut owed = self.unwritten.take().unwrap_or_default();
        if let Some(carried) = self.carried.take() {
            owed.absorb(carried);
        }
        Some(owed).filter(|o| !o.is_empty())
    }

    /// Makes sure this relay leads. `false` when it does not (it has waited before returning).
    async fn lead(&mut self) -> bool {
        match self.shared.store.acquire_leadership().await {
            Ok(true) => {
                self.shared.set_leader(true);
                true
            }
            Ok(false) => {
                self.shared.set_leader(false);
                if let Some(lost) = self.take_owed() {
                    warn_unacknowledged(lost.published.len());
                    self.shared.unacknowledged.store(0, Ordering::SeqCst);
                }
                self.window.reset();
                let retry = self.shared.settings.leader_retry_interval;
                sleep_or_stop(retry, &mut self.stop).await;
                false
            }
            Err(e) => {
                self.shared.set_leader(false);
                // The batch claimed to go with a carried write-back is forgotten: the write-back
                // is owed before anything is claimed again.
                self.unwritten = self.take_owed();
                self.window.reset();
                self.store_failed(e, "acquire leadership").await;
                false
            }
        }
    }

    /// Writes back the results of the last batch if that failed before. `false` when it fails
    /// again (it has waited before returning).
    async fn write_back_owed(&mut self) -> bool {
        let Some(outcome) = self.unwritten.take() else {
            return true;
        };
        match write_back(self.shared, &outcome).await {
            Ok(()) => true,
            Err(e) => {
                self.unwritten = Some(outcome);
                self.store_failed(e, "acknowledge").await;
                false
            }
        }
    }

    /// The next batch: the one claimed ahead, or a new claim.
    async fn claim(&mut self) -> Option<ClaimedBatch> {
        let claimed = match self.window.take_prefetched() {
            Some(claimed) => claimed,
            None => {
                let (batch_size, after) = (self.shared.settings.batch_size, self.window.cursor());
                match self.shared.store.claim_batch(batch_size, after).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        self.store_failed(e, "claim").await;
                        return None;
                    }
                }
            }
        };
        let now = Utc::now();
        self.shared.status().last_poll_at = Some(now);
        metrics::gauge!(m::RELAY_LAST_POLL_TIMESTAMP_SECONDS)
            .set(now.timestamp_millis() as f64 / 1000.0);
        Some(claimed)
    }

    /// A claim with nothing to send: move past what it parked, and look again at once if the
    /// claim was full.
    async fn pass_parked(&mut self, claimed: &ClaimedBatch) {
        self.window.pass_parked(claimed);
        self.transient.reset();
        if !claimed.full {
            // A wake-up says a commit happened; when its events are not claimable yet (the
            // commit horizon is held by an older transaction still running), they will be soon:
            // look again after the shortest wait instead of backing off toward `poll_interval`.
            let woken = self.wait_for_work().await;
            self.idle = if woken {
                self.shared.settings.min_poll_interval
            } else {
                (self.idle * 2).min(self.shared.settings.poll_interval)
            };
        }
    }

    /// Sends `claimed` (writing back the batch carried before it meanwhile), then writes its
    /// results back, or carries them into the next batch's send, and settles the claim window.
    async fn send(&mut self, claimed: ClaimedBatch) {
        let shared = self.shared;
        let started = Instant::now();
        // While batches come back full, claim the next one as this one is sent: its events are
        // sent only after this batch is acknowledged by Kafka and written back.
        let prefetch = ClaimWindow::should_prefetch(&claimed);
        let after = self.window.after(&claimed);
        let carried = self.carried.take();
        let (mut outcome, next, carried) = tokio::join!(
            publish_batch(shared, &claimed.events),
            async {
                if prefetch {
                    shared
                        .store
                        .claim_batch(shared.settings.batch_size, after)
                        .await
                        .ok()
                } else {
                    None
                }
            },
            write_back_carried(shared, carried)
        );
        let mut carry_failed = false;
        if let Some(unwritten) = carried {
            // Written back below with this batch's results, or owed before the next claim.
            outcome.absorb_before(unwritten);
            carry_failed = true;
        }
        if !carry_failed
            && self.can_carry(&claimed, &outcome)
            && let Some(after) = self.claim_after(&claimed, &outcome).await
        {
            if after.events.is_empty() {
                // Nothing new: write back now, then wait (the empty claim parks what it read).
                return self.settle(claimed, outcome, Some(after), started).await;
            }
            return self.carry(claimed, outcome, after, started);
        }
        // When the claim after it failed, the next loop claims again and meets the error.
        self.settle(claimed, outcome, next, started).await;
    }

    /// Whether the results of `claimed` may be carried into the next batch's send: every event
    /// went out (nothing for the claim window to send again), none was a retry (the next claim
    /// would find it due again before its write-back), the batch was not full (the next claim
    /// fits beside it in `batch_size`), and no stop is asked for.
    fn can_carry(&self, claimed: &ClaimedBatch, outcome: &Outcome) -> bool {
        !claimed.full
            && claimed.retries == 0
            && outcome.is_clean()
            && outcome.transient_error.is_none()
            && !outcome.published.is_empty()
            && !self.stopping()
    }

    /// Claims what committed while `claimed` was sent, before its write-back: at most as many
    /// events as keep the published-but-unwritten ones within `batch_size`. `None` when the
    /// claim failed.
    async fn claim_after(&self, claimed: &ClaimedBatch, outcome: &Outcome) -> Option<ClaimedBatch> {
        // Never 0: a batch that was not full held fewer events than `batch_size`.
        let limit = (self.shared.settings.batch_size).saturating_sub(outcome.published.len());
        let after = self.window.after(claimed);
        self.shared.store.claim_batch(limit, after).await.ok()
    }

    /// Keeps the results of `claimed`, which went out clean, to be written back beside the send
    /// of `next`.
    fn carry(
        &mut self,
        claimed: ClaimedBatch,
        outcome: Outcome,
        next: ClaimedBatch,
        started: Instant,
    ) {
        let elapsed = started.elapsed();
        metrics::histogram!(m::RELAY_BATCH_DURATION_SECONDS).record(elapsed.as_secs_f64());
        log_batch(&claimed, &outcome, elapsed);
        self.window
            .settle(&claimed, BatchEnd::WrittenBack { clean: true }, Some(next));
        self.transient.reset();
        self.idle = self.shared.settings.min_poll_interval;
        self.carried = Some(outcome);
    }

    /// Writes back the results of `claimed` and settles the claim window; `next` is the batch
    /// claimed meanwhile, if any.
    async fn settle(
        &mut self,
        claimed: ClaimedBatch,
        outcome: Outcome,
        next: Option<ClaimedBatch>,
        started: Instant,
    ) {
        let shared = self.shared;
        let claimed_again = next.is_some();
        let clean = outcome.is_clean();
        let transient_error = outcome.transient_error.clone();
        let written = write_back(shared, &outcome).await;
        let elapsed = started.elapsed();
        metrics::histogram!(m::RELAY_BATCH_DURATION_SECONDS).record(elapsed.as_secs_f64());
        log_batch(&claimed, &outcome, elapsed);

        if let Err(e) = written {
            self.window.settle(&claimed, BatchEnd::Again, next);
            self.unwritten = Some(outcome);
            self.store_failed(e, "acknowledge").await;
            return;
        }
        if let Some(error) = transient_error {
            // The events left pending are claimed again, in order.
            self.window.settle(&claimed, BatchEnd::Again, next);
            self.publish_failed(error).await;
            return;
        }
        self.window
            .settle(&claimed, BatchEnd::WrittenBack { clean }, next);
        self.transient.reset();
        self.idle = shared.settings.min_poll_interval;
        if !claimed.full && !claimed_again {
            // The backlog is drained: wait briefly for more, or for a wake-up.
            let _woken = self.wait_for_work().await;
        }
    }

    /// After the broker was unavailable for some events of a batch: back off.
    async fn publish_failed(&mut self, error: PublishError) {
        let delay = self.transient.next();
        warn_publish_backoff(&error, self.transient.failures(), millis(delay));
        sleep_or_stop(delay, &mut self.stop).await;
    }

    /// After a store operation failed: a lost leadership session yields to the standbys; anything
    /// else (the database unavailable) backs off.
    async fn store_failed(&mut self, error: OutboxError, operation: &'static str) {
        self.shared.record_error(ErrorClass::Transient, &error);
        if matches!(error, OutboxError::LeadershipLost) {
            self.yield_leadership().await;
        } else {
            let delay = self.transient.next();
            warn_store_backoff(&error, operation, millis(delay));
            sleep_or_stop(delay, &mut self.stop).await;
        }
    }

    /// After losing the leadership session involuntarily, stays away for two leadership retry
    /// intervals: a healthy standby, which retries every interval, takes over, instead of the
    /// relay whose session just died winning the lock straight back.
    async fn yield_leadership(&mut self) {
        self.shared.set_leader(false);
        warn!("outbox relay lost its leadership session; yielding to standby relays");
        let away = self.shared.settings.leader_retry_interval * 2;
        sleep_or_stop(away, &mut self.stop).await;
    }

    /// Waits for a wake-up (from this process, or through the store from another), a stop, or
    /// `idle` to pass. `true` when a wake-up ended the wait.
    async fn wait_for_work(&mut self) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = self.shared.wake.notified() => true,
            _ = self.shared.store.wait_for_wake_up() => true,
            _ = tokio::time::sleep(self.idle) => false,
            _ = self.stop.changed() => false,
        }
    }
}

// The relay loop's warnings, in plain functions: inside the loop's `async fn`s, the coverage
// build counted these macros' field lines as never run although tests reach them with logging
// on; in plain functions (as `publish::log_batch`) they are counted.

/// A batch sent but never acknowledged when the leadership was lost.
fn warn_unacknowledged(published: usize) {
    warn!(
        published,
        "outbox relay lost the leadership before acknowledging a batch; the new leader will send \
         those events again (duplicates carry the same event_id)"
    );
}

/// The write-back of a batch carried into the next one's send failed.
fn warn_carried(error: &OutboxError, published: usize) {
    warn!(
        error = %error,
        published,
        "outbox relay could not acknowledge a batch beside the next one's send; trying again \
         with that batch's results"
    );
}

/// A backoff after the broker was unavailable for some events of a batch.
fn warn_publish_backoff(error: &PublishError, consecutive_failures: u32, retry_in_ms: u64) {
    warn!(
        error = %error,
        consecutive_failures,
        retry_in_ms,
        "outbox relay backing off after a transient publish failure"
    );
}

/// A backoff after a store operation failed.
fn warn_store_backoff(error: &OutboxError, operation: &'static str, retry_in_ms: u64) {
    warn!(
        error = %error,
        operation,
        retry_in_ms,
        "outbox relay cannot reach the store; backing off"
    );
}
