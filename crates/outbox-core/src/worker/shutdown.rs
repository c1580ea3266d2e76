//! The end of a relay's run: its last batch acknowledged, the publisher flushed, the leadership
//! given up. What [`EventRelayWorker::stop`](crate::EventRelayWorker::stop) waits for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use super::Shared;
use super::publish::{Outcome, write_back};
use crate::OutboxError;
use crate::backoff::backoff_delay;

/// Writes back the results of the last batch (`unwritten`, when the run ended before it could),
/// flushes the publisher and releases the leadership.
pub(super) async fn shutdown(
    shared: &Shared,
    unwritten: Option<Outcome>,
) -> Result<(), OutboxError> {
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
