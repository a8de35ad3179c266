//! One retry policy for every call and stream of a client ([`RetryPolicy`]): exponential
//! backoff with jitter between attempts (backon's), how many attempts a unary call makes.
//! Watches and keep-alives retry for as long as they live, with the same delays.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// How a client waits between attempts. `RetryPolicy::default()`: 25 ms, doubling to 1 s,
/// with jitter (so many clients that lost the same member do not retry in step), at most
/// 20 attempts of a unary call (within the request timeout).
///
/// ```
/// use cairn_sdk::{ConnectOptions, RetryPolicy};
/// use std::time::Duration;
/// let patient = RetryPolicy::default().with_delays(Duration::from_millis(100), Duration::from_secs(5)).with_max_attempts(50);
/// let opts = ConnectOptions::default().with_retry(patient);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    min: Duration,
    max: Duration,
    jitter: bool,
    attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { min: Duration::from_millis(25), max: Duration::from_secs(1), jitter: true, attempts: 20 }
    }
}

impl RetryPolicy {
    /// The first delay and the largest one (it doubles in between).
    pub fn with_delays(mut self, first: Duration, largest: Duration) -> Self {
        self.min = first;
        self.max = largest.max(first);
        self
    }

    /// Randomize each delay (on by default).
    pub fn with_jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// How many times a unary call is sent at most (at least 1: no retry).
    pub fn with_max_attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// How many times a unary call is sent at most.
    pub fn max_attempts(&self) -> usize {
        self.attempts
    }

    /// The delays between attempts, without end (streams and recipes that retry for as
    /// long as they live); a unary call stops after [`RetryPolicy::max_attempts`].
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut b = ExponentialBuilder::default().with_min_delay(self.min).with_max_delay(self.max).without_max_times();
        if self.jitter {
            b = b.with_jitter();
        }
        let max = self.max;
        b.build().map(move |d| d.min(max.saturating_mul(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_largest_and_never_end() {
        let p =
            RetryPolicy::default().with_jitter(false).with_delays(Duration::from_millis(10), Duration::from_millis(80));
        let d: Vec<u64> = p.delays().take(6).map(|d| d.as_millis() as u64).collect();
        // (backon computes in floating point: a millisecond either way.)
        for (got, want) in d.iter().zip([10u64, 20, 40, 80, 80, 80]) {
            assert!(got.abs_diff(want) <= 1, "{d:?}");
        }
        let jittered = RetryPolicy::default().delays().take(100).count();
        assert_eq!(jittered, 100);
    }
}
