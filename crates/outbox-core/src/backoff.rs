//! Capped exponential backoff with jitter.

use std::time::Duration;

/// The delay before attempt `attempt` (1 for the first retry): `base * 2^(attempt-1)` capped at
/// `max`, then jittered to between half and all of it, so that many relays or events failing
/// together do not retry together.
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let ceiling = base.saturating_mul(1u32 << exponent.min(31)).min(max);
    let half = ceiling / 2;
    let jitter_nanos = fastrand::u64(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
    half + Duration::from_nanos(jitter_nanos)
}

/// Consecutive-failure backoff: each [`next`](Self::next) waits longer, up to the cap, until
/// [`reset`](Self::reset).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub(crate) fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff_delay(self.base, self.max, self.failures)
    }

    /// Forgets the failures after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for _ in 0..200 {
            let first = backoff_delay(base, max, 1);
            assert!(
                (Duration::from_millis(50)..=base).contains(&first),
                "{first:?}"
            );
            let third = backoff_delay(base, max, 3);
            assert!(
                (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third),
                "{third:?}"
            );
            let late = backoff_delay(base, max, 40);
            assert!((Duration::from_secs(1)..=max).contains(&late), "{late:?}");
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|_| backoff_delay(Duration::from_secs(1), Duration::from_secs(60), 4))
            .collect();
        assert!(
            delays.len() > 40,
            "retries at the same moment would stampede"
        );
    }

    #[test]
    fn consecutive_failures_grow_until_reset() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let first = b.next();
        b.next();
        b.next();
        let fourth = b.next();
        assert!(fourth > first);
        assert_eq!(b.failures(), 4);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next() <= Duration::from_millis(10));
    }
}
