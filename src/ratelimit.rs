//! Per-principal rate limiting (OWASP API4): a token bucket per principal,
//! refilled at the configured rate with a burst of twice that.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Governor};

type Keyed = Governor<String, governor::state::keyed::DefaultKeyedStateStore<String>, DefaultClock>;

pub struct RateLimiter {
    inner: Keyed,
    clock: DefaultClock,
}

impl RateLimiter {
    /// `per_second` requests per second per principal (at least 1).
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).expect("at least 2");
        Self {
            inner: Governor::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` to proceed, or the whole seconds to wait before retrying.
    pub fn check(&self, principal: &str) -> Result<(), u64> {
        // Allocates only for the key lookup; principals are few and short.
        self.inner
            .check_key(&principal.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            })
    }

    /// Forget principals whose buckets are full again, so memory stays bounded.
    pub fn shrink(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_each_principal_separately() {
        let rl = RateLimiter::new(2);
        for _ in 0..4 {
            assert!(rl.check("a").is_ok());
        }
        let wait = rl.check("a").unwrap_err();
        assert!((1..=1).contains(&wait), "wait {wait}");
        assert!(rl.check("b").is_ok());
    }
}
