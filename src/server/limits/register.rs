//! Registrations per client address: a token bucket per address, so that one client
//! cannot fill the password-hashing queue every login waits in, nor the user store.

use super::{AddrKey, SweepAt};
use dashmap::DashMap;
use std::time::Instant;

/// Addresses remembered before idle ones (a full bucket) are dropped.
const ADDRS_SOFT_CAP: usize = 100_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RegisterGuard {
    per_hour: u32,
    buckets: DashMap<AddrKey, Bucket>,
    /// When full buckets are swept (at least [`ADDRS_SOFT_CAP`] addresses).
    sweep_at: SweepAt,
}

impl RegisterGuard {
    pub fn new(per_hour: u32) -> Self {
        RegisterGuard {
            per_hour,
            buckets: DashMap::new(),
            sweep_at: SweepAt::new(ADDRS_SOFT_CAP),
        }
    }

    /// Whether `ip` may register one more account now (`None`: an exempt address).
    pub fn admit(&self, ip: Option<AddrKey>) -> bool {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: Option<AddrKey>, now: Instant) -> bool {
        let (Some(ip), true) = (ip, self.per_hour > 0) else {
            return true;
        };
        let full = f64::from(self.per_hour);
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * full / 3600.0)
                .min(full)
        };
        if self.sweep_at.due(self.buckets.len()) {
            self.buckets.retain(|_, b| refill(b) < full);
            self.sweep_at.swept(self.buckets.len());
        }
        let mut b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: full,
            last: now,
        });
        b.tokens = refill(&b);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_address_registers_its_hourly_share_then_waits() {
        let g = RegisterGuard::new(3);
        let [a, b] = ["10.0.0.1", "10.0.0.2"].map(|s| AddrKey::of(s.parse().unwrap(), 64));
        let t = Instant::now();
        assert!((0..3).all(|_| g.admit_at(Some(a), t)));
        assert!(!g.admit_at(Some(a), t));
        assert!(g.admit_at(Some(b), t), "another address has its own bucket");
        assert!(g.admit_at(None, t), "exempt addresses are not counted");
        // one more every 20 minutes
        assert!(!g.admit_at(Some(a), t + Duration::from_secs(19 * 60)));
        assert!(g.admit_at(Some(a), t + Duration::from_secs(20 * 60 + 1)));
        assert!(!g.admit_at(Some(a), t + Duration::from_secs(20 * 60 + 2)));
        let off = RegisterGuard::new(0);
        assert!((0..100).all(|_| off.admit_at(Some(a), t)));
    }

    /// Past the soft cap, full buckets are swept, and a map of addresses that are all
    /// still registering is not scanned again until it has doubled (it used to be
    /// scanned at every registration once over the cap).
    #[test]
    fn sweeps_drop_full_buckets_and_are_amortized() {
        let g = RegisterGuard::new(2);
        let t = Instant::now();
        let addr = |i: u32| Some(AddrKey::of(std::net::Ipv4Addr::from(i).into(), 64));
        for i in 0..=ADDRS_SOFT_CAP as u32 {
            assert!(g.admit_at(addr(i), t));
        }
        assert_eq!(g.buckets.len(), ADDRS_SOFT_CAP + 1);
        // an hour later every bucket is full again: the next admission sweeps them
        let later = t + std::time::Duration::from_secs(3600);
        assert!(g.admit_at(addr(u32::MAX), later));
        assert_eq!(g.buckets.len(), 1, "full buckets swept");
        // a map of live buckets over the cap is swept once (keeping them all), then
        // not again until it doubles
        for i in 0..=ADDRS_SOFT_CAP as u32 {
            g.admit_at(addr(i), later);
        }
        let live = ADDRS_SOFT_CAP + 1;
        assert_eq!(
            g.sweep_at.at.load(std::sync::atomic::Ordering::Relaxed),
            2 * live
        );
        for i in 1..=1000 {
            g.admit_at(addr(u32::MAX - i), later);
        }
        assert_eq!(g.buckets.len(), live + 1001, "none full: none swept");
        assert_eq!(
            g.sweep_at.at.load(std::sync::atomic::Ordering::Relaxed),
            2 * live,
            "no sweep since"
        );
    }
}
