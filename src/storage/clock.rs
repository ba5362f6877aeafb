//! Where a store reads the time: task timestamps and the age of idempotency
//! records.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where a store reads the time: task timestamps and the age of idempotency
/// records. Production uses [`SystemClock`]; tests move a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in whole microseconds (what both backends keep).
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        crate::domain::now()
    }
}

/// The default clock of a store's configuration.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// Starts at the current system time.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(crate::domain::now())))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(by).expect("a test duration fits");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ManualClock {
    /// Moves the clock back, as a stepped-back system clock would.
    pub fn rewind(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t -= chrono::Duration::from_std(by).expect("a test duration fits");
    }
}
