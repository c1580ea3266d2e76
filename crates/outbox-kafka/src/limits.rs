//! What each topic accepts: its `max.message.bytes`, read from the brokers and cached.
//!
//! The broker checks a topic's `max.message.bytes` against whole record batches, not single
//! messages, so the publisher needs each topic's limit to keep its batches under it (see
//! [`batch_class`]) and to refuse only an event that is itself too large.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a limit read from the brokers is trusted before it is read again.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(300);

/// How long after a failed read (brokers away, topic not created yet, no `DescribeConfigs`
/// permission) a topic's limits are asked for again.
pub(crate) const RETRY_FAILED_READ_AFTER: Duration = Duration::from_secs(10);

/// More topics than this and the cache starts over (topic names come from outbox rows).
const MAX_TOPICS: usize = 10_000;

/// Bytes a record batch may need beyond `batch.size` (compression of incompressible data adds a
/// little): a producer's `batch.size` stays this far below the topic's limit.
fn headroom(limit: usize) -> usize {
    limit / 64 + 512
}

/// The `batch.size` of the producer for a topic limited to `limit` bytes per record batch, or
/// `None` when the default producer's batches (at most `default_batch` bytes) already fit.
///
/// Classes are powers of two, so topics with similar limits share one producer and there are at
/// most a few dozen producers however many topics there are.
pub(crate) fn batch_class(limit: usize, default_batch: usize) -> Option<usize> {
    let room = limit.saturating_sub(headroom(limit));
    if room >= default_batch {
        return None;
    }
    // The largest power of two not above `room` (1 for a room of 0).
    let class = match room.checked_ilog2() {
        Some(log) => 1usize << log,
        None => 1,
    };
    Some(class)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The limit as last read; `None` until a read succeeded.
    max_message_bytes: Option<usize>,
    /// When it was last read successfully.
    read_at: Option<Instant>,
    /// When a read was last tried, successful or not.
    tried_at: Instant,
    /// The broker refused a batch as too large: read again before the next batch.
    stale: bool,
}

/// Each topic's `max.message.bytes` as last read from the brokers.
///
/// A topic whose limit has never been read successfully is unknown (the publisher then uses its
/// producer's defaults); a failed read never caches a value. Limits are read again after
/// `refresh_every`, after the broker refused a batch as too large ([`invalidate`](Self::invalidate)),
/// and, while a read fails, every `retry_after`.
#[derive(Debug)]
pub(crate) struct TopicLimits {
    entries: Mutex<HashMap<String, Entry>>,
    refresh_every: Duration,
    retry_after: Duration,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self::new(REFRESH_EVERY, RETRY_FAILED_READ_AFTER)
    }
}

impl TopicLimits {
    pub(crate) fn new(refresh_every: Duration, retry_after: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            refresh_every,
            retry_after,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topic's `max.message.bytes` as last read, or `None` if it was never read.
    pub(crate) fn max_message_bytes(&self, topic: &str) -> Option<usize> {
        self.entries()
            .get(topic)
            .and_then(|entry| entry.max_message_bytes)
    }

    /// Which of `topics` should be read (again) at `now`, each named once.
    pub(crate) fn due<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Vec<String> {
        let entries = self.entries();
        let mut due: Vec<String> = Vec::new();
        for topic in topics {
            let needed = match entries.get(topic) {
                None => true,
                Some(entry) if entry.stale => true,
                Some(entry) => {
                    let fresh = entry.read_at.is_some_and(|read| {
                        now.saturating_duration_since(read) < self.refresh_every
                    });
                    !fresh && now.saturating_duration_since(entry.tried_at) >= self.retry_after
                }
            };
            if needed && !due.iter().any(|t| t == topic) {
                due.push(topic.to_owned());
            }
        }
        due
    }

    /// Records a successful read of `topic`'s limit at `now`.
    pub(crate) fn record(&self, topic: &str, max_message_bytes: usize, now: Instant) {
        let mut entries = self.entries();
        if entries.len() >= MAX_TOPICS && !entries.contains_key(topic) {
            entries.clear();
        }
        entries.insert(
            topic.to_owned(),
            Entry {
                max_message_bytes: Some(max_message_bytes),
                read_at: Some(now),
                tried_at: now,
                stale: false,
            },
        );
    }

    /// Records a failed read of `topic`'s limit at `now`: a topic never read stays unknown; one
    /// read before keeps its last limit. Either is tried again after `retry_after`. Returns
    /// whether this is the first failure since the last successful read (or ever).
    pub(crate) fn record_failure(&self, topic: &str, now: Instant) -> bool {
        let mut entries = self.entries();
        if entries.len() >= MAX_TOPICS && !entries.contains_key(topic) {
            entries.clear();
        }
        let first = entries
            .get(topic)
            .is_none_or(|entry| entry.read_at.is_some_and(|read| read >= entry.tried_at));
        let entry = entries.entry(topic.to_owned()).or_insert(Entry {
            max_message_bytes: None,
            read_at: None,
            tried_at: now,
            stale: false,
        });
        entry.tried_at = now;
        entry.stale = false;
        first
    }

    /// The broker refused a batch of `topic` as too large: its limit is read again before the
    /// next batch (keeping the last one until then).
    pub(crate) fn invalidate(&self, topic: &str) {
        if let Some(entry) = self.entries().get_mut(topic) {
            entry.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits() -> TopicLimits {
        TopicLimits::new(5 * MINUTE, Duration::from_secs(10))
    }

    #[test]
    fn an_unread_topic_is_unknown_and_due() {
        let limits = limits();
        let now = Instant::now();
        assert_eq!(limits.max_message_bytes("orders"), None);
        assert_eq!(
            limits.due(["orders", "orders", "files"], now),
            ["orders", "files"]
        );
    }

    #[test]
    fn a_read_limit_is_cached_until_the_refresh_interval_passes() {
        let limits = limits();
        let t0 = Instant::now();
        limits.record("orders", 20_000, t0);
        assert_eq!(limits.max_message_bytes("orders"), Some(20_000));
        assert!(limits.due(["orders"], t0 + 4 * MINUTE).is_empty());
        assert_eq!(limits.due(["orders"], t0 + 5 * MINUTE), ["orders"]);
        limits.record("orders", 30_000, t0 + 5 * MINUTE);
        assert_eq!(limits.max_message_bytes("orders"), Some(30_000));
        assert!(limits.due(["orders"], t0 + 6 * MINUTE).is_empty());
    }

    #[test]
    fn a_failed_read_caches_nothing_and_is_retried_after_a_while() {
        let limits = limits();
        let t0 = Instant::now();
        limits.record_failure("orders", t0);
        assert_eq!(
            limits.max_message_bytes("orders"),
            None,
            "not cached as known"
        );
        assert!(
            limits
                .due(["orders"], t0 + Duration::from_secs(9))
                .is_empty()
        );
        assert_eq!(
            limits.due(["orders"], t0 + Duration::from_secs(10)),
            ["orders"]
        );
        limits.record("orders", 2_000, t0 + Duration::from_secs(10));
        assert_eq!(limits.max_message_bytes("orders"), Some(2_000));
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_limit() {
        let limits = limits();
        let t0 = Instant::now();
        limits.record("orders", 20_000, t0);
        assert!(
            limits.record_failure("orders", t0 + 5 * MINUTE),
            "first since the read"
        );
        assert_eq!(limits.max_message_bytes("orders"), Some(20_000));
        assert!(limits.due(["orders"], t0 + 5 * MINUTE).is_empty());
        assert_eq!(
            limits.due(["orders"], t0 + 5 * MINUTE + Duration::from_secs(10)),
            ["orders"]
        );
    }

    #[test]
    fn a_size_refusal_makes_the_topic_due_at_once() {
        let limits = limits();
        let t0 = Instant::now();
        limits.record("orders", 20_000, t0);
        limits.record("files", 20_000, t0);
        limits.invalidate("orders");
        assert_eq!(limits.due(["orders", "files"], t0), ["orders"]);
        assert_eq!(
            limits.max_message_bytes("orders"),
            Some(20_000),
            "kept until read"
        );
        limits.invalidate("never-read");
        assert_eq!(limits.max_message_bytes("never-read"), None);
    }

    #[test]
    fn batch_classes_fit_under_the_limit_and_are_few() {
        let default_batch = 1_000_000;
        assert_eq!(
            batch_class(1_048_588, default_batch),
            None,
            "the broker's default"
        );
        assert_eq!(batch_class(20_000, default_batch), Some(16_384));
        assert_eq!(batch_class(2_000, default_batch), Some(1_024));
        assert_eq!(batch_class(100, default_batch), Some(1));
        assert_eq!(batch_class(0, default_batch), Some(1));
        assert_eq!(batch_class(1_000_000, default_batch), Some(524_288));
        assert_eq!(
            batch_class(1_000_000, 100_000),
            None,
            "smaller batches already"
        );
        for limit in (1..3_000_000).step_by(997) {
            if let Some(class) = batch_class(limit, default_batch) {
                assert!(
                    class + headroom(limit) <= limit || class == 1,
                    "{limit}: {class}"
                );
                assert!(class.is_power_of_two());
            }
        }
    }
}
