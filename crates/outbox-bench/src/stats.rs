//! Percentiles of latency samples.

use std::time::Duration;

use serde_json::{Value, json};

/// Latency percentiles in milliseconds, by nearest rank over all samples (no histogram
/// bucketing, so p99 of 3,000 samples is the 2,970th smallest).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Sorts `samples` and summarises them; all zero when there are none.
    pub(crate) fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let n = samples.len();
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(samples[index])
        };
        let total: Duration = samples.iter().sum();
        Self {
            count: samples.len(),
            mean: ms(total) / samples.len() as f64,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max: ms(samples[samples.len() - 1]),
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "mean_ms": round3(self.mean),
            "p50_ms": round3(self.p50),
            "p99_ms": round3(self.p99),
            "p999_ms": round3(self.p999),
            "max_ms": round3(self.max),
        })
    }
}

/// `value` to three decimals, so the JSON stays readable.
/// The median of `values` (0 when empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut samples);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500.0);
        assert_eq!(s.p99, 990.0);
        assert_eq!(s.p999, 999.0);
        assert_eq!(s.max, 1000.0);
        assert_eq!(Summary::of(&mut []).count, 0);
    }
}
