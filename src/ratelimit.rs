//! Rate limiting (OWASP API4): a token bucket per principal, refilled at the
//! configured rate with a burst of twice that ([`RateLimiter`]); and a bucket
//! of failed authentications per client address ([`AuthFailureLimiter`]), so
//! requests with bad tokens, which have no principal, are limited too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Governor};

use crate::domain::PrincipalName;

type Keyed = Governor<
    PrincipalName,
    governor::state::keyed::DefaultKeyedStateStore<PrincipalName>,
    DefaultClock,
>;

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
    pub fn check(&self, principal: &PrincipalName) -> Result<(), u64> {
        self.inner.check_key(principal).map_err(|not_until| {
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

/// Failed authentications per client address: a budget of `per_minute`
/// failures that refills at `per_minute` a minute (GCRA: one theoretical
/// arrival time per address). Once an address has spent it, every request
/// from it that needs a token is refused with 429 before its token is looked
/// at, valid or not, until the budget refills: answering a valid token while
/// refusing bad ones would still let the address test tokens at full speed.
///
/// Memory is bounded: at most `capacity` addresses are tracked (IPv6 by /64,
/// the block one host usually holds), addresses whose budget is full again
/// are forgotten, and while the table is full with addresses still in debt,
/// new addresses share one overflow bucket.
pub struct AuthFailureLimiter {
    /// Nanoseconds per failure regained.
    interval: u64,
    /// How far the arrival time may run ahead of now before requests are refused.
    tolerance: u64,
    capacity: usize,
    epoch: Instant,
    /// Mirrors `buckets.len()`, so requests skip the lock while nothing is tracked.
    tracked: AtomicUsize,
    state: Mutex<Buckets>,
}

struct Buckets {
    /// Theoretical arrival time per address, nanoseconds since `epoch`.
    by_addr: HashMap<IpKey, u64>,
    /// Shared by new addresses while `by_addr` is full.
    overflow: u64,
    last_purge: u64,
}

/// An IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => IpKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Addresses tracked at most by default (about 1 MiB).
pub const AUTH_FAILURE_ADDRESSES: usize = 16_384;

/// How often addresses whose budget is full again are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(10);

impl AuthFailureLimiter {
    /// `per_minute` failures per address (at least 1), tracking at most
    /// [`AUTH_FAILURE_ADDRESSES`] addresses.
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, AUTH_FAILURE_ADDRESSES)
    }

    pub fn with_capacity(per_minute: u32, capacity: usize) -> Self {
        let per_minute = u64::from(per_minute.max(1));
        let interval = 60_000_000_000 / per_minute;
        Self {
            interval,
            tolerance: interval * (per_minute - 1),
            capacity: capacity.max(1),
            epoch: Instant::now(),
            tracked: AtomicUsize::new(0),
            state: Mutex::new(Buckets {
                by_addr: HashMap::new(),
                overflow: 0,
                last_purge: 0,
            }),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` if `addr` may try to authenticate, else the whole seconds until it may.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = self.now();
        let mut b = self.lock();
        self.purge(&mut b, now, false);
        let key = IpKey::from(addr);
        let tat = match b.by_addr.get(&key) {
            Some(tat) => *tat,
            None if b.by_addr.len() >= self.capacity => b.overflow,
            None => return Ok(()),
        };
        let allowed_from = tat.saturating_sub(self.tolerance);
        if allowed_from <= now {
            Ok(())
        } else {
            let wait = Duration::from_nanos(allowed_from - now);
            Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        }
    }

    /// Spends one failure of `addr`'s budget.
    pub fn record_failure(&self, addr: IpAddr) {
        let now = self.now();
        let mut b = self.lock();
        let key = IpKey::from(addr);
        if !b.by_addr.contains_key(&key) && b.by_addr.len() >= self.capacity {
            self.purge(&mut b, now, true);
        }
        // Concurrent failures that all passed `check` may overshoot the
        // budget; the debt is capped at one interval past it.
        let cap = now + self.tolerance + self.interval;
        let spend = |tat: &mut u64| *tat = ((*tat).max(now) + self.interval).min(cap);
        if let Some(tat) = b.by_addr.get_mut(&key) {
            spend(tat);
        } else if b.by_addr.len() < self.capacity {
            let mut tat = 0;
            spend(&mut tat);
            b.by_addr.insert(key, tat);
        } else {
            spend(&mut b.overflow);
        }
        self.tracked.store(b.by_addr.len(), Ordering::Relaxed);
    }

    /// Forgets addresses whose budget is full again, every [`PURGE_EVERY`],
    /// or (`full`) when the table is full, at most once a second: a stream of
    /// new addresses must not turn every request into a scan of the table.
    fn purge(&self, b: &mut Buckets, now: u64, full: bool) {
        let since = now.saturating_sub(b.last_purge);
        let due = if full {
            1_000_000_000
        } else {
            PURGE_EVERY.as_nanos() as u64
        };
        if since < due {
            return;
        }
        b.last_purge = now;
        b.by_addr.retain(|_, tat| *tat > now);
        if b.by_addr.len() < b.by_addr.capacity() / 4 {
            b.by_addr.shrink_to_fit();
        }
        self.tracked.store(b.by_addr.len(), Ordering::Relaxed);
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_each_principal_separately() {
        let rl = RateLimiter::new(2);
        let (a, b) = (
            PrincipalName::parse("a").unwrap(),
            PrincipalName::parse("b").unwrap(),
        );
        for _ in 0..4 {
            assert!(rl.check(&a).is_ok());
        }
        let wait = rl.check(&a).unwrap_err();
        assert!((1..=1).contains(&wait), "wait {wait}");
        assert!(rl.check(&b).is_ok());
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn auth_failures_spend_a_budget_per_address() {
        let rl = AuthFailureLimiter::new(3);
        let a = v4(0x0a00_0001);
        for _ in 0..3 {
            assert!(rl.check(a).is_ok());
            rl.record_failure(a);
        }
        let wait = rl.check(a).unwrap_err();
        assert_eq!(wait, 20, "one failure regained every 20 s");
        assert!(rl.check(v4(0x0a00_0002)).is_ok(), "per address");
        // Hosts of one IPv6 /64 share a budget; another /64 does not.
        let six = |s: &str| s.parse::<IpAddr>().unwrap();
        for _ in 0..3 {
            rl.record_failure(six("2001:db8:0:1::1"));
        }
        assert!(rl.check(six("2001:db8:0:1::ffff")).is_err());
        assert!(rl.check(six("2001:db8:0:2::1")).is_ok());
        // A v4-mapped v6 address is the v4 address.
        assert!(rl.check(six("::ffff:10.0.0.1")).is_err());
    }

    #[test]
    fn auth_failure_memory_is_bounded_under_many_addresses() {
        let rl = AuthFailureLimiter::with_capacity(2, 1_000);
        for n in 0..200_000u32 {
            rl.record_failure(v4(n));
            assert!(rl.tracked() <= 1_000);
        }
        assert_eq!(rl.tracked(), 1_000);
        // New addresses share the overflow bucket, which is spent by now.
        assert!(rl.check(v4(0xdead_beef)).is_err());
        let table = rl.state.lock().unwrap().by_addr.capacity();
        assert!(table < 4_000, "table capacity {table}");
    }
}
