//! Beside the path: the stop signal, and the deadlines it shortens.
//!
//! SIGTERM or SIGINT set one flag (`signal-hook` writes it from the signal
//! handler; nothing else may run there). Every thread that owes clients an
//! answer polls it: the loops stop accepting, the worker and the lookup
//! thread stop waiting longer than the stop allows. The instant the stop
//! began is the moment the first thread noticed the flag, at most one loop
//! tick (50 ms) after the signal.
//!
//! SPEC §6.3: exit within `request_timeout_ms` plus one second. A request
//! hijacked during the stop grace would otherwise be allowed its full
//! `request_timeout_ms` from its own arrival, so while stopping every
//! deadline is also capped at `stop + request_timeout_ms`; and a Redis
//! round trip, which normally gets all of `redis.timeout_ms` however late
//! it starts (cutting it short would only make its outcome unknown), ends
//! by `stop + request_timeout_ms + TRIP_GRACE`, so a large `timeout_ms`
//! cannot hold the exit.
//!
//! Never: blocks; the signal handler only stores the flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// While stopping, how long past `stop + request_timeout_ms` a Redis round
/// trip may still run; the rest of the second is for closing.
pub(crate) const TRIP_GRACE: Duration = Duration::from_millis(500);

/// Shared handle to the stop flag. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    // INVARIANT: Some once the flag was seen set; never changes after.
    since: Arc<Mutex<Option<Instant>>>,
}

impl Shutdown {
    /// Not stopping.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// The flag a signal handler sets.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Asks every thread to stop (as a signal handler does through `flag`).
    #[cfg(test)]
    pub(crate) fn request(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether the stop was asked for (one atomic load).
    pub(crate) fn requested(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// When the stop began, if it has: the first caller to see the flag
    /// set fixes the instant (`now`).
    pub(crate) fn since(&self, now: Instant) -> Option<Instant> {
        if !self.requested() {
            return None;
        }
        Some(*self.since.lock().get_or_insert(now))
    }

    /// The deadline of a request that arrived at `arrived_at` and may take
    /// `timeout`: `arrived_at + timeout`, and while stopping no later than
    /// `stop + timeout`.
    pub(crate) fn deadline(&self, arrived_at: Instant, timeout: Duration, now: Instant) -> Instant {
        let own = arrived_at + timeout;
        match self.since(now) {
            Some(stop) => own.min(stop + timeout),
            None => own,
        }
    }
}

impl Shutdown {
    /// The latest a Redis round trip may end: none while serving; while
    /// stopping, `stop + request_timeout + TRIP_GRACE`.
    pub(crate) fn trip_deadline(&self, request_timeout: Duration, now: Instant) -> Option<Instant> {
        self.since(now)
            .map(|stop| stop + request_timeout + TRIP_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_capped_while_stopping() {
        let s = Shutdown::new();
        let t0 = Instant::now();
        let rt = Duration::from_secs(5);
        assert_eq!(s.deadline(t0, rt, t0), t0 + rt);
        s.request();
        let stop = t0 + Duration::from_secs(1);
        assert_eq!(s.since(stop), Some(stop));
        assert_eq!(s.since(stop + rt), Some(stop), "the first look fixes it");
        // Arrived before the stop: its own deadline.
        assert_eq!(s.deadline(t0, rt, stop), t0 + rt);
        // Arrived during the stop grace: no later than stop + timeout.
        let late = stop + Duration::from_millis(900);
        assert_eq!(s.deadline(late, rt, late), stop + rt);
        assert_eq!(s.trip_deadline(rt, late), Some(stop + rt + TRIP_GRACE));
    }

    #[test]
    fn round_trips_are_not_cut_while_serving() {
        let s = Shutdown::new();
        assert_eq!(
            s.trip_deadline(Duration::from_secs(5), Instant::now()),
            None
        );
    }
}
