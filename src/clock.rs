//! Beside the path: time as the rest of the crate sees it.
//!
//! Every stage that decides by time (token bucket, queue deadline, token
//! expiry, event window) takes a `Clock` instead of calling `Instant::now()`
//! itself, so unit tests can move time by hand. `SystemClock` is the real one;
//! `ManualClock` is for tests and only moves when told to.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time for deadlines and pacing; wall time for expiry and windows.
pub trait Clock: Send + Sync {
    /// Monotonic now: deadlines and the token bucket.
    fn now(&self) -> Instant;
    /// Unix seconds: token expiry and event windows.
    fn unix_s(&self) -> u64;
    /// Unix milliseconds: the `ts_ms` field of an order.
    fn unix_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_s(&self) -> u64 {
        self.unix_ms() / 1000
    }

    fn unix_ms(&self) -> u64 {
        // A clock set before 1970 reads as 0: tokens then look unexpired,
        // which is the lesser harm than refusing every request.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

/// The test fixture clock: built for unit tests and with the `testing`
/// feature only.
#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::Clock;

    /// A clock that moves only when `advance` is called. A test fixture: built
    /// for unit tests and with the `testing` feature only.
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        inner: Arc<Mutex<(Instant, u64)>>,
    }

    impl ManualClock {
        /// Starts at the real monotonic now and at `unix_ms`.
        pub fn new(unix_ms: u64) -> Self {
            ManualClock {
                inner: Arc::new(Mutex::new((Instant::now(), unix_ms))),
            }
        }

        /// Moves both clocks forward by `d`.
        pub fn advance(&self, d: Duration) {
            let mut g = self.inner.lock();
            g.0 += d;
            g.1 += d.as_millis() as u64;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.inner.lock().0
        }

        fn unix_s(&self) -> u64 {
            self.inner.lock().1 / 1000
        }

        fn unix_ms(&self) -> u64 {
            self.inner.lock().1
        }
    }
}
