//! Rate limits: per session, per source address, per claim target. A thin layer
//! over governor's GCRA limiters (themselves pure state machines over a clock),
//! so every refusal carries how long to wait.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Limits, per second or per minute, with sane defaults for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// Enqueues per second per authenticated session (identity).
    pub enqueue_per_sec_per_session: u32,
    /// Enqueues (plain and sealed) per second per source address.
    pub enqueue_per_sec_per_address: u32,
    /// OPAQUE login and registration attempts per minute per source address.
    pub logins_per_min_per_address: u32,
    /// KeyPackage claims per minute per requester address.
    pub claims_per_min_per_requester: u32,
    /// KeyPackage claims per minute by one requester against one target device
    /// (a username counts as each of its devices). Per requester: one requester
    /// may take this share of a device's packages and no more.
    pub claims_per_min_per_target: u32,
    /// One-time KeyPackage claims per minute against one device by all
    /// requesters together: what a crowd of requesters can take of a device's
    /// one-time packages. Past it claims get the last-resort package.
    pub claims_per_min_per_device: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            enqueue_per_sec_per_session: 2_000,
            enqueue_per_sec_per_address: 20_000,
            logins_per_min_per_address: 30,
            claims_per_min_per_requester: 120,
            claims_per_min_per_target: 60,
            claims_per_min_per_device: 300,
        }
    }
}

/// A refusal: wait this long before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded, retry after {} ms", retry_after.as_millis())]
pub struct RateLimited {
    /// How long to wait before the same request can pass.
    pub retry_after: Duration,
}

struct Limiter<K: Hash + Eq + Clone> {
    inner: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `per` events per `period`, with a burst of the same size.
    fn new(per: u32, period: Duration) -> Limiter<K> {
        let burst = NonZeroU32::new(per.max(1)).expect("at least one");
        let quota = Quota::with_period(period / burst.get())
            .expect("non-zero period")
            .allow_burst(burst);
        Limiter {
            inner: governor::RateLimiter::keyed(quota),
        }
    }

    fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.inner.check_key(key).map_err(|not_until| RateLimited {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `n` events at once. More than the burst can ever allow is refused with the
    /// time a full burst takes, so the caller learns to split.
    fn check_n(&self, key: &K, n: usize) -> Result<(), RateLimited> {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.inner.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            Err(_) => Err(RateLimited {
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

/// Every limiter of a node.
pub struct RateLimits {
    /// Refusals since the last [`RateLimits::take_refused`], for the operator's
    /// log summary.
    refused: AtomicU64,
    enqueue_session: Limiter<[u8; 32]>,
    enqueue_address: Limiter<IpAddr>,
    logins: Limiter<IpAddr>,
    claims_requester: Limiter<Requester>,
    claims_target: Limiter<(Requester, [u8; 32])>,
    claims_device: Limiter<[u8; 32]>,
}

/// What a claim within the requester's limits may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimShare {
    /// One-time packages (the last-resort one when none is left).
    OneTime,
    /// A target device's claims across all requesters are used up for now:
    /// its reusable last-resort package only.
    LastResortOnly,
}

/// Who claims KeyPackages: a registered device (its session), or, on a node
/// without accounts, an address. Fixed-size either way: a limiter's keys cost
/// the same whatever a caller sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requester {
    /// A registered device with a live session.
    Device([u8; 32]),
    /// A source address (nodes without accounts).
    Address(IpAddr),
}

impl RateLimits {
    /// Limiters with these quotas and no history.
    pub fn new(c: RateConfig) -> RateLimits {
        let sec = Duration::from_secs(1);
        let min = Duration::from_secs(60);
        RateLimits {
            refused: AtomicU64::new(0),
            enqueue_session: Limiter::new(c.enqueue_per_sec_per_session, sec),
            enqueue_address: Limiter::new(c.enqueue_per_sec_per_address, sec),
            logins: Limiter::new(c.logins_per_min_per_address, min),
            claims_requester: Limiter::new(c.claims_per_min_per_requester, min),
            claims_target: Limiter::new(c.claims_per_min_per_target, min),
            claims_device: Limiter::new(c.claims_per_min_per_device, min),
        }
    }

    /// One enqueue by an authenticated session from `address`.
    pub fn enqueue(&self, session: &[u8; 32], address: IpAddr) -> Result<(), RateLimited> {
        self.counted(
            self.enqueue_session
                .check(session)
                .and_then(|()| self.enqueue_address.check(&address)),
        )
    }

    /// `n` enqueues in one call (a batch or a commit's fan-out).
    pub fn enqueue_many(
        &self,
        session: &[u8; 32],
        address: IpAddr,
        n: usize,
    ) -> Result<(), RateLimited> {
        self.counted(
            self.enqueue_session
                .check_n(session, n)
                .and_then(|()| self.enqueue_address.check_n(&address, n)),
        )
    }

    /// One sealed-sender enqueue from `address` (there is no session).
    pub fn sealed_enqueue(&self, address: IpAddr) -> Result<(), RateLimited> {
        self.counted(self.enqueue_address.check(&address))
    }

    /// One login or registration attempt from `address`.
    pub fn login(&self, address: IpAddr) -> Result<(), RateLimited> {
        self.counted(self.logins.check(&address))
    }

    fn counted(&self, r: Result<(), RateLimited>) -> Result<(), RateLimited> {
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// How many requests were refused since the last call (and resets the count).
    pub fn take_refused(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }

    /// One KeyPackage claim (or look) by `requester` against `devices` (the
    /// target resolved: a username counts as each of its devices). Refused past
    /// the requester's own limits; past a device's cap across all requesters,
    /// allowed for its reusable last-resort package only, so a crowd of
    /// requesters can use up a device's one-time packages for a while but never
    /// make it un-addable.
    pub fn claim(
        &self,
        requester: Requester,
        devices: &[[u8; 32]],
    ) -> Result<ClaimShare, RateLimited> {
        self.counted(self.claims_requester.check(&requester).and_then(|()| {
            devices
                .iter()
                .try_for_each(|d| self.claims_target.check(&(requester, *d)))
        }))?;
        let mut share = ClaimShare::OneTime;
        for d in devices {
            if self.claims_device.check(d).is_err() {
                share = ClaimShare::LastResortOnly;
            }
        }
        Ok(share)
    }

    /// Forgets keys that have been quiet long enough to be back at full burst, so
    /// the limiters' memory follows recent activity, not all activity ever.
    pub fn forget_quiet(&self) {
        self.enqueue_session.inner.retain_recent();
        self.enqueue_address.inner.retain_recent();
        self.logins.inner.retain_recent();
        self.claims_requester.inner.retain_recent();
        self.claims_target.inner.retain_recent();
        self.claims_device.inner.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_burst_and_says_how_long_to_wait() {
        let limits = RateLimits::new(RateConfig {
            logins_per_min_per_address: 3,
            ..RateConfig::default()
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limits.login(a).unwrap();
        }
        let refused = limits.login(a).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(1));
        assert!(refused.retry_after <= Duration::from_secs(20));
        limits.login(b).expect("other addresses are not affected");
        assert_eq!(limits.take_refused(), 1);
        assert_eq!(limits.take_refused(), 0);
    }

    #[test]
    fn one_requester_cannot_use_up_a_target_s_claims_for_everyone() {
        let limits = RateLimits::new(RateConfig {
            claims_per_min_per_target: 2,
            ..RateConfig::default()
        });
        let attacker = Requester::Address("127.0.0.9".parse().unwrap());
        let friend = Requester::Address("127.0.0.2".parse().unwrap());
        let (bob, carol) = ([1; 32], [2; 32]);
        limits.claim(attacker, &[bob]).unwrap();
        limits.claim(attacker, &[bob]).unwrap();
        assert!(limits.claim(attacker, &[bob]).is_err());
        limits
            .claim(friend, &[bob])
            .expect("bob stays addable for others");
        limits
            .claim(attacker, &[carol])
            .expect("other targets unaffected");
    }

    #[test]
    fn claims_per_requester_are_capped_across_targets() {
        let limits = RateLimits::new(RateConfig {
            claims_per_min_per_requester: 3,
            ..RateConfig::default()
        });
        let a = Requester::Address("127.0.0.3".parse().unwrap());
        for t in [[1; 32], [2; 32], [3; 32]] {
            limits.claim(a, &[t]).unwrap();
        }
        assert!(limits.claim(a, &[[4; 32]]).is_err());
    }

    #[test]
    fn one_requester_takes_its_share_of_a_device_and_past_the_cap_all_get_its_last_resort() {
        let limits = RateLimits::new(RateConfig {
            claims_per_min_per_target: 2,
            claims_per_min_per_device: 3,
            ..RateConfig::default()
        });
        let bob = [7; 32];
        let (r1, r2) = (Requester::Device([1; 32]), Requester::Device([2; 32]));
        assert_eq!(limits.claim(r1, &[bob]), Ok(ClaimShare::OneTime));
        assert_eq!(limits.claim(r1, &[bob]), Ok(ClaimShare::OneTime));
        assert!(limits.claim(r1, &[bob]).is_err(), "r1's share is 2");
        assert_eq!(limits.claim(r2, &[bob]), Ok(ClaimShare::OneTime));
        assert_eq!(
            limits.claim(r2, &[bob]),
            Ok(ClaimShare::LastResortOnly),
            "3 one-time claims of bob across requesters; then only its last resort"
        );
        assert_eq!(
            limits.claim(r2, &[[8; 32]]),
            Ok(ClaimShare::OneTime),
            "another device is unaffected"
        );
    }

    #[test]
    fn a_username_counts_as_each_of_its_devices() {
        let limits = RateLimits::new(RateConfig {
            claims_per_min_per_target: 1,
            ..RateConfig::default()
        });
        let r = Requester::Device([1; 32]);
        limits.claim(r, &[[7; 32], [8; 32]]).unwrap();
        assert!(limits.claim(r, &[[8; 32]]).is_err(), "[8; 32] was claimed");
    }
}
