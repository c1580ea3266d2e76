//! The relay's and the inbox worker's settings.

use std::time::Duration;

use crate::OutboxError;

/// How the relay worker behaves. Build it with `RelaySettings::default()` and the `with_*`
/// methods; [`validate`](Self::validate) says which values cannot work.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::RelaySettings;
///
/// let settings = RelaySettings::default()
///     .with_batch_size(1000)
///     .with_poll_interval(Duration::from_millis(250))
///     .with_max_attempts(5);
/// settings.validate()?;
/// # Ok::<(), outbox_core::OutboxError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RelaySettings {
    /// Most events claimed and sent in one batch; also the bound on duplicates after a crash.
    /// Defaults to 1,000 (the relay drains about 20% faster than with 500 on a 2-core machine;
    /// see docs/benchmarks.md).
    pub batch_size: usize,
    /// Longest wait between polls when the outbox is idle and nobody wakes the relay.
    /// Defaults to 500 ms.
    pub poll_interval: Duration,
    /// Shortest wait between polls: the first wait after a batch that was not full, doubled on
    /// each empty poll up to `poll_interval`. Defaults to 10 ms.
    pub min_poll_interval: Duration,
    /// Permanent failures after which an event becomes a dead letter. Defaults to 10.
    pub max_attempts: u32,
    /// Wait before retrying an event after its first permanent failure, doubled on each further
    /// one, with jitter. Defaults to 1 s.
    pub retry_backoff_base: Duration,
    /// Longest wait between retries of an event. Defaults to 5 min.
    pub retry_backoff_max: Duration,
    /// First wait after a transient failure (broker or database unavailable), doubled on each
    /// consecutive one, with jitter. Defaults to 100 ms.
    pub transient_backoff_base: Duration,
    /// Longest wait after transient failures. Defaults to 30 s.
    pub transient_backoff_max: Duration,
    /// How often a standby relay tries to take over the leadership. Defaults to 1 s.
    pub leader_retry_interval: Duration,
    /// How often the backlog gauges (pending, oldest age, dead letters) are refreshed.
    /// Defaults to 5 s.
    pub stats_interval: Duration,
    /// When a committed event has waited longer than this behind the commit horizon (a write
    /// transaction still open somewhere in the database cluster), the relay logs the transaction
    /// holding it at `warn`, at every stats refresh, so it can be found and ended. The relay
    /// keeps waiting either way: publishing past the horizon could deliver a later event of a key
    /// before an earlier one. Defaults to 30 s.
    pub horizon_warn_after: Duration,
    /// Keep published rows this long instead of deleting them when they are acknowledged.
    /// Defaults to `None` (delete at once).
    pub retention: Option<Duration>,
    /// How often expired published rows are deleted, when `retention` is set. Defaults to 60 s.
    pub cleanup_interval: Duration,
    /// Most rows one cleanup statement deletes. Defaults to 10,000.
    pub cleanup_batch_size: u64,
    /// How long `stop()` waits for in-flight sends to be acknowledged before giving up on them
    /// (they stay in the outbox). Defaults to 30 s.
    pub shutdown_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(500),
            min_poll_interval: Duration::from_millis(10),
            max_attempts: 10,
            retry_backoff_base: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(300),
            transient_backoff_base: Duration::from_millis(100),
            transient_backoff_max: Duration::from_secs(30),
            leader_retry_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(5),
            horizon_warn_after: Duration::from_secs(30),
            retention: None,
            cleanup_interval: Duration::from_secs(60),
            cleanup_batch_size: 10_000,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

macro_rules! with {
    ($($(#[$doc:meta])* $method:ident => $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $method(mut self, value: $ty) -> Self {
                self.$field = value;
                self
            }
        )*
    };
}

impl RelaySettings {
    with! {
        /// Sets [`batch_size`](Self::batch_size).
        with_batch_size => batch_size: usize;
        /// Sets [`poll_interval`](Self::poll_interval).
        with_poll_interval => poll_interval: Duration;
        /// Sets [`min_poll_interval`](Self::min_poll_interval).
        with_min_poll_interval => min_poll_interval: Duration;
        /// Sets [`max_attempts`](Self::max_attempts).
        with_max_attempts => max_attempts: u32;
        /// Sets [`retry_backoff_base`](Self::retry_backoff_base).
        with_retry_backoff_base => retry_backoff_base: Duration;
        /// Sets [`retry_backoff_max`](Self::retry_backoff_max).
        with_retry_backoff_max => retry_backoff_max: Duration;
        /// Sets [`transient_backoff_base`](Self::transient_backoff_base).
        with_transient_backoff_base => transient_backoff_base: Duration;
        /// Sets [`transient_backoff_max`](Self::transient_backoff_max).
        with_transient_backoff_max => transient_backoff_max: Duration;
        /// Sets [`leader_retry_interval`](Self::leader_retry_interval).
        with_leader_retry_interval => leader_retry_interval: Duration;
        /// Sets [`stats_interval`](Self::stats_interval).
        with_stats_interval => stats_interval: Duration;
        /// Sets [`horizon_warn_after`](Self::horizon_warn_after).
        with_horizon_warn_after => horizon_warn_after: Duration;
        /// Sets [`retention`](Self::retention).
        with_retention => retention: Option<Duration>;
        /// Sets [`cleanup_interval`](Self::cleanup_interval).
        with_cleanup_interval => cleanup_interval: Duration;
        /// Sets [`cleanup_batch_size`](Self::cleanup_batch_size).
        with_cleanup_batch_size => cleanup_batch_size: u64;
        /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
        with_shutdown_timeout => shutdown_timeout: Duration;
    }

    /// Checks that the values can work: sizes and attempts at least 1, intervals above zero,
    /// each backoff base no larger than its cap, the minimum poll interval no larger than the
    /// poll interval.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let fail = |message: String| Err(OutboxError::Config(message));
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return fail(format!(
                "batch_size must be 1 to 100000, not {}",
                self.batch_size
            ));
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1".into());
        }
        if self.cleanup_batch_size == 0 {
            return fail("cleanup_batch_size must be at least 1".into());
        }
        let positive = [
            ("poll_interval", self.poll_interval),
            ("min_poll_interval", self.min_poll_interval),
            ("retry_backoff_base", self.retry_backoff_base),
            ("transient_backoff_base", self.transient_backoff_base),
            ("leader_retry_interval", self.leader_retry_interval),
            ("stats_interval", self.stats_interval),
            ("horizon_warn_after", self.horizon_warn_after),
            ("cleanup_interval", self.cleanup_interval),
            ("shutdown_timeout", self.shutdown_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return fail(format!("{name} must be above zero"));
            }
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return fail(
                "retention must be above zero, or unset to delete on acknowledgement".into(),
            );
        }
        let ordered = [
            (
                "min_poll_interval",
                self.min_poll_interval,
                "poll_interval",
                self.poll_interval,
            ),
            (
                "retry_backoff_base",
                self.retry_backoff_base,
                "retry_backoff_max",
                self.retry_backoff_max,
            ),
            (
                "transient_backoff_base",
                self.transient_backoff_base,
                "transient_backoff_max",
                self.transient_backoff_max,
            ),
        ];
        for (low_name, low, high_name, high) in ordered {
            if low > high {
                return fail(format!(
                    "{low_name} ({low:?}) is above {high_name} ({high:?})"
                ));
            }
        }
        Ok(())
    }
}

/// How the inbox worker behaves. Build it with `InboxSettings::default()` and the `with_*`
/// methods; [`validate`](Self::validate) says which values cannot work.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::InboxSettings;
///
/// let settings = InboxSettings::default()
///     .with_max_batch(200)
///     .with_retention(Duration::from_secs(72 * 3600));
/// settings.validate()?;
/// # Ok::<(), outbox_core::OutboxError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InboxSettings {
    /// Most messages applied in one database transaction; also the most a crash makes the
    /// broker deliver again (the inbox drops those already applied). Defaults to 500.
    pub max_batch: usize,
    /// First wait after a transient failure (database or broker unavailable, or a handler's
    /// transient error), doubled on each consecutive one, with jitter. Defaults to 100 ms.
    pub transient_backoff_base: Duration,
    /// Longest wait after transient failures. Defaults to 30 s.
    pub transient_backoff_max: Duration,
    /// How long inbox rows (rejected ones included) are kept. A duplicate that arrives after
    /// its row is deleted is applied again, so this must outlast any redelivery. Defaults to
    /// 168 h (7 days).
    pub retention: Duration,
    /// How often rows older than `retention` are deleted. Defaults to 60 s.
    pub cleanup_interval: Duration,
    /// Most rows one cleanup statement deletes. Defaults to 10,000.
    pub cleanup_batch_size: u64,
    /// How long `stop()` waits for the batch in flight to be applied and its offsets committed
    /// before abandoning it (its messages are delivered again). Defaults to 30 s.
    pub shutdown_timeout: Duration,
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            transient_backoff_base: Duration::from_millis(100),
            transient_backoff_max: Duration::from_secs(30),
            retention: Duration::from_secs(168 * 3600),
            cleanup_interval: Duration::from_secs(60),
            cleanup_batch_size: 10_000,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl InboxSettings {
    with! {
        /// Sets [`max_batch`](Self::max_batch).
        with_max_batch => max_batch: usize;
        /// Sets [`transient_backoff_base`](Self::transient_backoff_base).
        with_transient_backoff_base => transient_backoff_base: Duration;
        /// Sets [`transient_backoff_max`](Self::transient_backoff_max).
        with_transient_backoff_max => transient_backoff_max: Duration;
        /// Sets [`retention`](Self::retention).
        with_retention => retention: Duration;
        /// Sets [`cleanup_interval`](Self::cleanup_interval).
        with_cleanup_interval => cleanup_interval: Duration;
        /// Sets [`cleanup_batch_size`](Self::cleanup_batch_size).
        with_cleanup_batch_size => cleanup_batch_size: u64;
        /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
        with_shutdown_timeout => shutdown_timeout: Duration;
    }

    /// Checks that the values can work: `max_batch` 1 to 100,000, `cleanup_batch_size` at
    /// least 1, durations above zero, the backoff base no larger than its cap.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let fail = |message: String| Err(OutboxError::Config(message));
        if self.max_batch == 0 || self.max_batch > 100_000 {
            return fail(format!(
                "max_batch must be 1 to 100000, not {}",
                self.max_batch
            ));
        }
        if self.cleanup_batch_size == 0 {
            return fail("cleanup_batch_size must be at least 1".into());
        }
        let positive = [
            ("transient_backoff_base", self.transient_backoff_base),
            ("retention", self.retention),
            ("cleanup_interval", self.cleanup_interval),
            ("shutdown_timeout", self.shutdown_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return fail(format!("{name} must be above zero"));
            }
        }
        if self.transient_backoff_base > self.transient_backoff_max {
            return fail(format!(
                "transient_backoff_base ({:?}) is above transient_backoff_max ({:?})",
                self.transient_backoff_base, self.transient_backoff_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = RelaySettings::default();
        s.validate().unwrap();
        assert_eq!(s.batch_size, 1000);
        assert_eq!(s.poll_interval, Duration::from_millis(500));
        assert_eq!(s.max_attempts, 10);
        assert_eq!(s.retention, None);
    }

    #[test]
    fn builders_set_their_field() {
        let s = RelaySettings::default()
            .with_batch_size(7)
            .with_max_attempts(3)
            .with_retention(Some(Duration::from_secs(60)))
            .with_shutdown_timeout(Duration::from_secs(1));
        assert_eq!(s.batch_size, 7);
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.retention, Some(Duration::from_secs(60)));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(1));
    }

    #[test]
    fn inbox_defaults_are_the_documented_values_and_bad_ones_are_named() {
        let s = InboxSettings::default();
        s.validate().unwrap();
        assert_eq!(s.max_batch, 500);
        assert_eq!(s.retention, Duration::from_secs(168 * 3600));
        let cases = [
            (InboxSettings::default().with_max_batch(0), "max_batch"),
            (
                InboxSettings::default().with_retention(Duration::ZERO),
                "retention",
            ),
            (
                InboxSettings::default().with_transient_backoff_base(Duration::from_secs(60)),
                "transient_backoff_base",
            ),
            (
                InboxSettings::default().with_cleanup_batch_size(0),
                "cleanup_batch_size",
            ),
        ];
        for (settings, name) in cases {
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains(name), "{error} should name {name}");
        }
    }

    #[test]
    fn impossible_values_are_refused_with_their_name() {
        let cases = [
            (RelaySettings::default().with_batch_size(0), "batch_size"),
            (
                RelaySettings::default().with_max_attempts(0),
                "max_attempts",
            ),
            (
                RelaySettings::default().with_poll_interval(Duration::ZERO),
                "poll_interval",
            ),
            (
                RelaySettings::default().with_min_poll_interval(Duration::from_secs(5)),
                "min_poll_interval",
            ),
            (
                RelaySettings::default().with_retry_backoff_base(Duration::from_secs(600)),
                "retry_backoff_base",
            ),
            (
                RelaySettings::default().with_retention(Some(Duration::ZERO)),
                "retention",
            ),
            (
                RelaySettings::default().with_cleanup_batch_size(0),
                "cleanup_batch_size",
            ),
        ];
        for (settings, name) in cases {
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains(name), "{error} should name {name}");
        }
    }
}
