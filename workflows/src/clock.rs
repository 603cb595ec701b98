//! The engine's clock, injected so tests can move time by hand.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::watch;

use crate::Millis;

#[async_trait::async_trait]
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Millis;
    /// Returns once `now() >= at`.
    async fn sleep_until(&self, at: Millis);
}

/// The system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as Millis).unwrap_or(0)
    }

    async fn sleep_until(&self, at: Millis) {
        loop {
            let left = at - self.now();
            if left <= 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(left as u64)).await;
        }
    }
}

/// A clock that moves only when told ([`ManualClock::advance`]).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: watch::Sender<Millis>,
}

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        ManualClock { now: AtomicI64::new(start), moved: watch::channel(start).0 }
    }

    pub fn advance(&self, by: Millis) {
        let now = self.now.fetch_add(by, Ordering::AcqRel) + by;
        self.moved.send_replace(now);
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::Acquire)
    }

    async fn sleep_until(&self, at: Millis) {
        let mut moved = self.moved.subscribe();
        let _ = moved.wait_for(|now| *now >= at).await;
    }
}
