//! Where "now" comes from: the system's monotonic clock in the daemon, a hand-driven one in tests.
//!
//! The selection logic itself never reads a clock: its functions take `now: Instant`, so
//! they stay pure. The daemon asks a [`Clock`] once per event and passes the answer down;
//! tests use [`FakeClock`] and move time forward explicitly, so timing rules (rise and fall,
//! hold-downs, failback holds, slow start) are tested without sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The operating system's monotonic clock ([`Instant::now`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to.
///
/// Clones share the same time, so a test can hand one clone to the code under test and
/// keep another to advance it. `Instant` has no public constructor, so the clock starts at
/// the real time of its creation; tests should only reason about offsets from
/// [`FakeClock::start`].
#[derive(Debug, Clone)]
pub struct FakeClock {
    start: Instant,
    now: Arc<Mutex<Instant>>,
}

impl FakeClock {
    /// A clock stopped at the current real time.
    pub fn new() -> Self {
        let start = Instant::now();
        Self {
            start,
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// The instant the clock was created at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Moves the clock forward by `by` and returns the new time.
    pub fn advance(&self, by: Duration) -> Instant {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
        *now
    }

    /// How far the clock has moved since [`FakeClock::start`].
    pub fn elapsed(&self) -> Duration {
        self.now() - self.start
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        // A panic while holding this lock cannot leave the `Instant` half-written.
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_stands_still_until_advanced() {
        let clock = FakeClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        assert_eq!(t0, clock.start());
        let t1 = clock.advance(Duration::from_millis(250));
        assert_eq!(t1 - t0, Duration::from_millis(250));
        assert_eq!(clock.now(), t1);
        assert_eq!(clock.elapsed(), Duration::from_millis(250));
    }

    #[test]
    fn fake_clock_clones_share_time() {
        let clock = FakeClock::new();
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        clock.advance(Duration::from_secs(3));
        assert_eq!(shared.now(), clock.now());
        assert_eq!(shared.now() - clock.start(), Duration::from_secs(3));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock;
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[test]
    fn references_are_clocks() {
        fn read(clock: impl Clock) -> Instant {
            clock.now()
        }
        let clock = FakeClock::new();
        assert_eq!(read(&clock), clock.now());
    }
}
