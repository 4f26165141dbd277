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
//! Lanes: on a single Redis there is one breaker for every goods. On a
//! Redis Cluster there is one per hash slot (a goods' keys share one), so
//! a master that stops answering opens the breakers of the goods it serves
//! and the goods of the other masters sell on; a whole cluster down opens
//! each goods' breaker after its own `failures`. SPEC §7 describes one
//! breaker; per slot is the same state machine per failure domain.
//!
//! Invariants: while closed, `admit` is one relaxed atomic load (it runs on
//! the event loop for every attempt); state changes are logged once each;
//! a lane's open bit changes only under the lock, with its state.
//! Never: sleeps, or reads a clock itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::access::SLOTS;

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

    /// Whether the breaker is open (callers ask `try_call`).
    pub(crate) fn is_open_now(&self) -> bool {
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

/// Which breaker an attempt answers to: one per node on a single Redis;
/// on a Redis Cluster one per hash slot, so a master that stops answering
/// stops only the goods it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Lane(u16);

/// Shared handle: the loops ask, the worker and the lookup thread record.
#[derive(Debug, Clone)]
pub struct Breaker {
    per_slot: bool,
    threshold: u32,
    probe_every: Duration,
    // One bit per lane, set while that lane is open, so the closed path
    // costs one relaxed load and no lock. INVARIANT: mirrors `states`,
    // changed only under its lock.
    open: Arc<[AtomicU64]>,
    // Lanes open now (for `/metrics`).
    open_lanes: Arc<AtomicUsize>,
    // Lanes with failures counted or open; a lane back to closed with no
    // failure is removed. INVARIANT: `tracked` = its length.
    states: Arc<Mutex<HashMap<Lane, State>>>,
    tracked: Arc<AtomicUsize>,
}

impl Breaker {
    /// From `[breaker]`: one breaker for every goods (a single Redis).
    pub fn new(failures: u32, probe_every: Duration) -> Self {
        Self::with_lanes(false, failures, probe_every)
    }

    /// From `[breaker]`, one breaker per hash slot (a Redis Cluster).
    pub fn per_slot(failures: u32, probe_every: Duration) -> Self {
        Self::with_lanes(true, failures, probe_every)
    }

    fn with_lanes(per_slot: bool, failures: u32, probe_every: Duration) -> Self {
        let words = if per_slot {
            usize::from(SLOTS).div_ceil(64)
        } else {
            1
        };
        Breaker {
            per_slot,
            threshold: failures,
            probe_every,
            open: (0..words).map(|_| AtomicU64::new(0)).collect(),
            open_lanes: Arc::default(),
            states: Arc::default(),
            tracked: Arc::default(),
        }
    }

    /// The lane of a goods: its hash slot (of the tag `{E:G}` every key
    /// of the goods carries) on a cluster, else the one lane.
    pub(crate) fn lane(&self, event_id: &str, goods_id: &str) -> Lane {
        if !self.per_slot {
            return Lane(0);
        }
        let mut crc = crc16::State::<crc16::XMODEM>::new();
        crc.update(event_id.as_bytes());
        crc.update(b":");
        crc.update(goods_id.as_bytes());
        Lane(crc.get() % SLOTS)
    }

    fn is_lane_open(&self, lane: Lane) -> bool {
        let (word, bit) = (usize::from(lane.0 / 64), lane.0 % 64);
        self.open
            .get(word)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << bit) != 0)
    }

    fn set_lane_open(&self, lane: Lane, open: bool) {
        let (word, bit) = (usize::from(lane.0 / 64), lane.0 % 64);
        if let Some(w) = self.open.get(word) {
            if open {
                w.fetch_or(1 << bit, Ordering::Relaxed);
                self.open_lanes.fetch_add(1, Ordering::Relaxed);
            } else {
                w.fetch_and(!(1 << bit), Ordering::Relaxed);
                self.open_lanes.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Event loop: may this attempt be queued? False = answer 1002 now.
    pub(crate) fn admit(&self, lane: Lane, now: Instant) -> bool {
        !self.is_lane_open(lane)
            || self
                .states
                .lock()
                .get(&lane)
                .is_none_or(|s| s.would_admit(now))
    }

    /// Worker: may this lane's tasks call Redis? While open, true only for
    /// the probe.
    pub(crate) fn try_call(&self, lane: Lane, now: Instant) -> bool {
        !self.is_lane_open(lane)
            || self
                .states
                .lock()
                .get_mut(&lane)
                .is_none_or(|s| s.try_call(now))
    }

    /// Worker: the outcome of a Redis call for `lane`.
    pub(crate) fn record(&self, lane: Lane, ok: bool, now: Instant) {
        if ok && !self.is_lane_open(lane) && self.tracked.load(Ordering::Relaxed) == 0 {
            // The common case: no failure counted anywhere.
            return;
        }
        let mut states = self.states.lock();
        let state = states
            .entry(lane)
            .or_insert_with(|| State::new(self.threshold, self.probe_every));
        let changed = state.record(ok, now);
        if ok && !state.is_open_now() {
            states.remove(&lane);
        }
        self.tracked.store(states.len(), Ordering::Relaxed);
        // The bit changes under the lock, so two recorders cannot leave it
        // disagreeing with the state.
        if let Some(open) = changed {
            self.set_lane_open(lane, open);
        }
        drop(states);
        if let Some(open) = changed {
            let which = if self.per_slot {
                format!(" for hash slot {}", lane.0)
            } else {
                String::new()
            };
            if open {
                let probe_ms = self.probe_every.as_millis();
                log::warn!("redis breaker open{which}: answering 1002 without trying Redis, one probe every {probe_ms} ms");
            } else {
                log::info!("redis breaker closed{which}: a probe succeeded");
            }
        }
    }

    /// Whether it is open (on a cluster: for any slot), for `/metrics`.
    pub(crate) fn is_open(&self) -> bool {
        self.open_lanes.load(Ordering::Relaxed) > 0
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
        assert!(s.is_open_now());
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
        let lane = b.lane("e1", "g1");
        assert_eq!(lane, b.lane("e2", "g9"), "one lane on a single Redis");
        assert!(b.admit(lane, clock.now()));
        b.record(lane, false, clock.now());
        b.record(lane, false, clock.now());
        assert!(b.is_open());
        assert!(!b.admit(lane, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(b.admit(lane, clock.now()));
        assert!(b.try_call(lane, clock.now()));
        b.record(lane, true, clock.now());
        assert!(!b.is_open());
        assert!(b.states.lock().is_empty(), "a closed lane is forgotten");
    }

    #[test]
    fn on_a_cluster_each_slot_has_its_own_breaker() {
        let clock = ManualClock::new(0);
        let b = Breaker::per_slot(2, Duration::from_secs(1));
        let (down, up) = (b.lane("e1", "g1"), b.lane("e1", "g2"));
        assert_ne!(down, up);
        // The lane is the slot of the goods' keys.
        let k = crate::store::keys::GoodsKeys::new("e1", "g1");
        assert_eq!(down.0, crate::store::access::slot(k.stock.as_bytes()));
        b.record(down, false, clock.now());
        b.record(up, true, clock.now());
        b.record(down, false, clock.now());
        assert!(b.is_open());
        assert!(!b.admit(down, clock.now()));
        assert!(b.admit(up, clock.now()), "another slot sells on");
        assert!(b.try_call(up, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(b.try_call(down, clock.now()), "the probe");
        b.record(down, true, clock.now());
        assert!(!b.is_open());
    }
}
