//! The relay's second task: backlog gauges, retention cleanup, and the warning about a
//! transaction that holds the commit horizon.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Shared, sleep_or_stop};
use crate::metrics as m;
use crate::{ErrorClass, OutboxStats, RelaySettings};

/// Refreshes the backlog gauges and, under retention, deletes expired published rows.
pub(super) async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
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
