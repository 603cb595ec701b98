//! The wall clock the log reads segment ages from, behind a trait so that
//! tests of age rolls and age retention move time by hand instead of
//! sleeping.
//!
//! Only ages go through it (when a segment was first and last written).
//! The writer thread's check interval is real time: it only decides how
//! often ages are looked at, never what they are.

use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock { now: Mutex::new(start) }
    }

    /// Starts at the real time now, so that files' own times (read at open
    /// for segments closed before it) stay comparable with it.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemTime::now())
    }

    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock()
    }
}

/// How long ago `then` was; zero when `then` is in the future (a file time
/// from another clock, or a clock set back).
pub(crate) fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), start + Duration::from_secs(5));
        assert_eq!(age(clock.now(), start), Duration::from_secs(5));
        assert_eq!(age(start, clock.now()), Duration::ZERO, "a time in the future has no age");
    }
}
