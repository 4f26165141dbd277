//! Stage 6 of 8 (pacing): the worker's token bucket.
//!
//! In: the monotonic now. Out: "go" or "wait this long".
//! Invariants: tokens never exceed `burst`; one token per task; `rate` 0 means
//! unlimited (every take succeeds).
//! Never: reads a clock itself or sleeps: the caller passes `now` and decides
//! how to wait, so tests drive it with a `ManualClock`.

use std::time::{Duration, Instant};

/// Tokens refilled at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u64,
    burst: f64,
    // INVARIANT: 0.0 <= tokens <= burst.
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    /// A full bucket. `rate` 0 = unlimited.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Bucket {
            rate,
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst);
        self.refilled_at = now;
    }

    /// Spends one token, or says how long until one is there.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate as f64))
        }
    }

    /// Tokens that could be spent right now without waiting (the worker's
    /// batch size). `usize::MAX` when unlimited.
    pub(crate) fn available(&mut self, now: Instant) -> usize {
        if self.rate == 0 {
            return usize::MAX;
        }
        self.refill(now);
        self.tokens as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn full_bucket_gives_burst_then_waits() {
        let clock = ManualClock::new(0);
        let mut b = Bucket::new(10, 3, clock.now());
        for _ in 0..3 {
            assert!(b.try_take(clock.now()).is_ok());
        }
        let wait = b.try_take(clock.now()).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
    }

    #[test]
    fn tokens_come_back_at_rate() {
        let clock = ManualClock::new(0);
        let mut b = Bucket::new(10, 1, clock.now());
        assert!(b.try_take(clock.now()).is_ok());
        assert!(b.try_take(clock.now()).is_err());
        clock.advance(Duration::from_millis(50));
        assert_eq!(
            b.try_take(clock.now()).unwrap_err(),
            Duration::from_millis(50)
        );
        clock.advance(Duration::from_millis(50));
        assert!(b.try_take(clock.now()).is_ok());
    }

    #[test]
    fn refill_never_exceeds_burst() {
        let clock = ManualClock::new(0);
        let mut b = Bucket::new(1000, 5, clock.now());
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.available(clock.now()), 5);
        for _ in 0..5 {
            assert!(b.try_take(clock.now()).is_ok());
        }
        assert!(b.try_take(clock.now()).is_err());
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let clock = ManualClock::new(0);
        let mut b = Bucket::new(0, 1, clock.now());
        for _ in 0..100_000 {
            assert!(b.try_take(clock.now()).is_ok());
        }
        assert_eq!(b.available(clock.now()), usize::MAX);
    }
}
