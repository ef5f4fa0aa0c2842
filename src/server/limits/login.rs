//! The login backoff: failed logins counted per username and per address, each
//! attempt past the free ones made to wait longer before the password is checked.
//! Password checks of one username under way count against its free attempts, so
//! that attempts sent side by side cannot all pass the check before any has failed.

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
    /// Password checks of this username under way ([`Attempt`]s alive).
    in_flight: u32,
}

/// A password check admitted by [`LoginGuard::begin`]; dropping it ends it.
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    user: String,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(mut f) = self.guard.failures.get_mut(&self.user) {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
        self.guard
            .failures
            .remove_if(&self.user, |_, f| f.in_flight == 0 && f.count == 0);
    }
}

/// Failed logins by username and by address; past the free attempts every attempt
/// waits 1 s, 2 s, 4 s, ... up to the maximum, and is refused with `rate_limited`
/// (without checking the password) before then.
pub struct LoginGuard {
    free: u32,
    max: Duration,
    failures: DashMap<String, Failures>,
}

const LOGIN_KEYS_SOFT_CAP: usize = 100_000;

impl LoginGuard {
    pub fn new(free: u32, max_secs: u64) -> Self {
        LoginGuard {
            free,
            max: Duration::from_secs(max_secs.max(1)),
            failures: DashMap::new(),
        }
    }

    fn user_key(username: &str) -> String {
        format!("u:{}", username.trim().to_lowercase())
    }

    fn keys(username: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![Self::user_key(username)];
        if let Some(ip) = ip {
            k.push(format!("a:{ip}"));
        }
        k
    }

    /// `Err(wait)` while the username or the address is backing off.
    pub fn check(&self, username: &str, ip: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for k in Self::keys(username, ip) {
            if let Some(f) = self.failures.get(&k) {
                wait = wait.max(f.wait_until.saturating_duration_since(now));
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Admits a password check of `username` from `ip`: `Err(wait)` while the
    /// username or the address is backing off, or while the username's checks under
    /// way, counted as failures, would use up its free attempts.
    pub fn begin(&self, username: &str, ip: Option<IpAddr>) -> Result<Attempt<'_>, Duration> {
        self.check(username, ip)?;
        let user = Self::user_key(username);
        let now = Instant::now();
        let mut f = self.failures.entry(user.clone()).or_insert(Failures {
            count: 0,
            last: now,
            wait_until: now,
            in_flight: 0,
        });
        let count = if now.duration_since(f.last) >= self.max * 2 {
            0
        } else {
            f.count
        };
        if f.in_flight > 0 && count.saturating_add(f.in_flight) >= self.free.max(1) {
            return Err(Duration::from_secs(1));
        }
        f.in_flight += 1;
        drop(f);
        Ok(Attempt { guard: self, user })
    }

    pub fn failed(&self, username: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        if self.failures.len() > LOGIN_KEYS_SOFT_CAP {
            let forget = self.max * 2;
            self.failures
                .retain(|_, f| now.duration_since(f.last) < forget);
        }
        for k in Self::keys(username, ip) {
            let mut f = self.failures.entry(k).or_insert(Failures {
                count: 0,
                last: now,
                wait_until: now,
                in_flight: 0,
            });
            if now.duration_since(f.last) >= self.max * 2 {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            // once the free failures are used up, the next attempt waits 1 s
            let first = self.free.max(1);
            if f.count >= first {
                let exp = (f.count - first).min(20);
                let wait = Duration::from_secs(1u64 << exp).min(self.max);
                f.wait_until = now + wait;
            }
        }
    }

    /// A successful login clears the username's failures (not the address's: an
    /// attacker could otherwise reset it with an account of their own).
    pub fn succeeded(&self, username: &str) {
        self.failures.remove(&Self::user_key(username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--login-free-attempts N`: N failures, then every further attempt waits (the
    /// N+1st one already); with 0 the first failure starts the wait, as with 1.
    #[test]
    fn the_wait_starts_once_the_free_failures_are_used_up() {
        for (free, waits_after) in [(5, 5), (1, 1), (0, 1)] {
            let g = LoginGuard::new(free, 60);
            for n in 1..waits_after {
                g.failed("ann", None);
                assert!(g.check("ann", None).is_ok(), "free={free}: after {n}");
            }
            g.failed("ann", None);
            let w = g.check("ann", None).unwrap_err();
            assert!(
                w <= Duration::from_secs(1) && w > Duration::from_millis(500),
                "free={free}"
            );
        }
    }

    /// Attempts sent side by side count against the free ones while their passwords
    /// are checked: with 3 free, a fourth attempt at one username waits while three
    /// are under way (they used to all pass the check before any had failed: 64
    /// connections got 64 guesses per backoff window); other usernames do not.
    #[test]
    fn checks_under_way_count_against_the_free_attempts() {
        let g = LoginGuard::new(3, 60);
        let under_way: Vec<_> = (0..3).map(|_| g.begin("dora", None).unwrap()).collect();
        assert!(g.begin("Dora", None).is_err());
        let other = g.begin("eve", None).unwrap();
        drop(under_way);
        drop(other);
        assert_eq!(
            g.failures.len(),
            0,
            "nothing left behind by attempts that ended"
        );
        let a = g.begin("dora", None).unwrap();
        g.failed("dora", None);
        g.failed("dora", None);
        drop(a);
        // two failures: one attempt at a time until the third
        let a = g.begin("dora", None).unwrap();
        assert!(g.begin("dora", None).is_err());
        drop(a);
        assert!(g.begin("dora", None).is_ok());
    }

    #[test]
    fn login_backoff_doubles_and_success_clears_the_username() {
        let g = LoginGuard::new(2, 60);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        g.failed("Bob", Some(ip));
        assert!(g.check("bob", Some(ip)).is_ok(), "two free failures");
        g.failed("bob", Some(ip));
        let w = g.check("BOB", None).unwrap_err();
        assert!(w <= Duration::from_secs(1) && w > Duration::from_millis(500));
        g.failed("bob", Some(ip));
        assert!(g.check("bob", None).unwrap_err() > Duration::from_secs(1));
        // another username from the same address waits too
        assert!(g.check("carol", Some(ip)).is_err());
        assert!(g.check("carol", None).is_ok());
        g.succeeded("bob");
        assert!(g.check("bob", None).is_ok());
        assert!(g.check("bob", Some(ip)).is_err(), "the address still waits");
    }
}
