//! Beside the path: the Redis circuit breaker (SPEC §7).
//!
//! In: the outcome of every Redis call the worker makes, and the monotonic
//! now. Out: whether an attempt may use Redis now.
//!
//! States: **closed** (every attempt goes on) until `failures` failures in a
//! row; then **open**: attempts get 1002 at once, on the event loop, instead
//! of filling the queue; every `probe_ms` one attempt is let through as a
//! probe. A probe that succeeds closes the breaker; one that fails keeps it
//! open for another `probe_ms`.
//!
//! Invariants: while closed, `admit` is one relaxed atomic load (it runs on
//! the event loop for every attempt); state changes are logged once each.
//! Never: sleeps, or reads a clock itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The breaker's state machine, pure: time comes in as `now`.
#[derive(Debug, Clone)]
pub(crate) struct State {
    threshold: u32,
    probe_every: Duration,
    failures: u32,
    // INVARIANT: Some exactly while open; the instant the next probe may go.
    next_probe_at: Option<Instant>,
}

impl State {
    /// Closed, opening after `threshold` failures in a row.
    pub(crate) fn new(threshold: u32, probe_every: Duration) -> Self {
        State {
            threshold: threshold.max(1),
            probe_every,
            failures: 0,
            next_probe_at: None,
        }
    }

    /// Whether the breaker is open (tests; callers ask `try_call`).
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.next_probe_at.is_some()
    }

    /// Whether a call may go to Redis now; while open, true once per
    /// `probe_every` (that call is the probe).
    pub(crate) fn try_call(&mut self, now: Instant) -> bool {
        match self.next_probe_at {
            None => true,
            Some(at) if now >= at => {
                self.next_probe_at = Some(now + self.probe_every);
                true
            }
            Some(_) => false,
        }
    }

    /// Whether an attempt would be let through now, without claiming the
    /// probe (the event loop asks this; the worker claims).
    pub(crate) fn would_admit(&self, now: Instant) -> bool {
        self.next_probe_at.is_none_or(|at| now >= at)
    }

    /// Records a call's outcome. Returns the new open state when it changed.
    pub(crate) fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        if ok {
            self.failures = 0;
            return self.next_probe_at.take().map(|_| false);
        }
        self.failures = self.failures.saturating_add(1);
        if self.next_probe_at.is_none() && self.failures >= self.threshold {
            self.next_probe_at = Some(now + self.probe_every);
            return Some(true);
        }
        None
    }
}

/// Shared handle: the loops ask, the worker records.
#[derive(Debug, Clone)]
pub struct Breaker {
    // Mirrors `state.is_open()`, so the closed path costs no lock.
    open: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

impl Breaker {
    /// From `[breaker]`.
    pub fn new(failures: u32, probe_every: Duration) -> Self {
        Breaker {
            open: Arc::default(),
            state: Arc::new(Mutex::new(State::new(failures, probe_every))),
        }
    }

    /// Event loop: may this attempt be queued? False = answer 1002 now.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        !self.open.load(Ordering::Relaxed) || self.state.lock().would_admit(now)
    }

    /// Worker: may this task call Redis? While open, true only for the probe.
    pub(crate) fn try_call(&self, now: Instant) -> bool {
        !self.open.load(Ordering::Relaxed) || self.state.lock().try_call(now)
    }

    /// Worker: the outcome of a Redis call.
    pub(crate) fn record(&self, ok: bool, now: Instant) {
        if ok && !self.open.load(Ordering::Relaxed) {
            // The common case; the failure count may still need a reset.
            let mut s = self.state.lock();
            s.record(true, now);
            return;
        }
        let changed = self.state.lock().record(ok, now);
        if let Some(open) = changed {
            self.open.store(open, Ordering::Relaxed);
            if open {
                let probe_ms = self.state.lock().probe_every.as_millis();
                log::warn!("redis breaker open: answering 1002 without trying Redis, one probe every {probe_ms} ms");
            } else {
                log::info!("redis breaker closed: a probe succeeded");
            }
        }
    }

    /// Whether it is open (for `/metrics`).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let clock = ManualClock::new(0);
        let mut s = State::new(3, Duration::from_secs(1));
        assert_eq!(s.record(false, clock.now()), None);
        assert_eq!(s.record(false, clock.now()), None);
        assert_eq!(
            s.record(true, clock.now()),
            None,
            "a success resets the count"
        );
        assert_eq!(s.record(false, clock.now()), None);
        assert_eq!(s.record(false, clock.now()), None);
        assert_eq!(s.record(false, clock.now()), Some(true));
        assert!(s.is_open());
        assert!(!s.try_call(clock.now()));
        assert!(!s.would_admit(clock.now()));
    }

    #[test]
    fn open_breaker_lets_one_probe_through_per_interval() {
        let clock = ManualClock::new(0);
        let mut s = State::new(1, Duration::from_secs(1));
        s.record(false, clock.now());
        clock.advance(Duration::from_millis(999));
        assert!(!s.try_call(clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(s.would_admit(clock.now()));
        assert!(s.try_call(clock.now()), "the probe");
        assert!(!s.try_call(clock.now()), "only one probe");
        assert_eq!(
            s.record(false, clock.now()),
            None,
            "a failed probe keeps it open"
        );
        clock.advance(Duration::from_secs(1));
        assert!(s.try_call(clock.now()));
        assert_eq!(
            s.record(true, clock.now()),
            Some(false),
            "a good probe closes it"
        );
        assert!(s.try_call(clock.now()));
    }

    #[test]
    fn shared_handle_mirrors_the_state() {
        let clock = ManualClock::new(0);
        let b = Breaker::new(2, Duration::from_secs(1));
        assert!(b.admit(clock.now()));
        b.record(false, clock.now());
        b.record(false, clock.now());
        assert!(b.is_open());
        assert!(!b.admit(clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(b.admit(clock.now()));
        assert!(b.try_call(clock.now()));
        b.record(true, clock.now());
        assert!(!b.is_open());
    }
}
