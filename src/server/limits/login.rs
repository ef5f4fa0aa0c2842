//! The login backoff: failed logins counted per claimant (a username, or a device
//! that logged in to the account before) and per address, each attempt past the free
//! ones made to wait longer before the password is checked. Logins of one claimant
//! take turns ([`LoginGuard::turn`]), and so do logins from one address
//! ([`LoginGuard::address_turn`]): each is checked against the backoff only once the
//! one before it has been answered and counted, so that attempts sent side by side
//! cannot all pass the check before any has failed.

use super::{AddrKey, SweepAt};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
}

/// One login's turn at a claimant or an address (see [`LoginGuard::turn`]);
/// dropping it passes the turn on.
pub struct Turn<'a> {
    turns: &'a DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    key: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.held = None;
        // the map's own reference is the last: nobody waits, forget the key
        self.turns
            .remove_if(&self.key, |_, m| Arc::strong_count(m) == 1);
    }
}

/// Failed logins by claimant and by address; past the free attempts every attempt
/// waits 1 s, 2 s, 4 s, ... up to the maximum, and is refused with `rate_limited`
/// (without checking the password) before then.
pub struct LoginGuard {
    free: u32,
    max: Duration,
    failures: DashMap<String, Failures>,
    /// When failures older than twice the maximum wait are swept (at least
    /// [`LOGIN_KEYS_SOFT_CAP`] keys).
    sweep_at: SweepAt,
    /// The claimants and addresses a login is being checked for, each with the queue
    /// of the others.
    turns: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

const LOGIN_KEYS_SOFT_CAP: usize = 100_000;

/// Whose failures a login counts against and waits for.
#[derive(Debug, Clone, Copy)]
pub enum Claimant<'a> {
    /// A login without a device token the account vouches for.
    Username(&'a str),
    /// A login with one (`App::trusted_device`, by its device id): its own failures
    /// only, so that wrong passwords sent for the username from elsewhere do not
    /// hold it up.
    Device(&'a str),
}

impl Claimant<'_> {
    fn key(self) -> String {
        match self {
            Claimant::Username(name) => format!("u:{}", name.trim().to_lowercase()),
            Claimant::Device(id) => format!("d:{id}"),
        }
    }
}

impl LoginGuard {
    pub fn new(free: u32, max_secs: u64) -> Self {
        LoginGuard {
            free,
            max: Duration::from_secs(max_secs.max(1)),
            failures: DashMap::new(),
            sweep_at: SweepAt::new(LOGIN_KEYS_SOFT_CAP),
            turns: DashMap::new(),
        }
    }

    fn addr_key(ip: AddrKey) -> String {
        format!("a:{ip}")
    }

    fn keys(who: Claimant<'_>, ip: Option<AddrKey>) -> Vec<String> {
        let mut k = vec![who.key()];
        k.extend(ip.map(Self::addr_key));
        k
    }

    /// `Err(wait)` while the claimant or the address is backing off.
    pub fn check(&self, who: Claimant<'_>, ip: Option<AddrKey>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for k in Self::keys(who, ip) {
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

    /// Waits for the turn of a login of `who`: logins of one claimant are checked
    /// against the backoff, and their passwords, one at a time. A correct password
    /// waits for the ones before it and passes; wrong ones sent side by side get no
    /// more checks than the free attempts (the rest find the backoff).
    pub async fn turn(&self, who: Claimant<'_>) -> Turn<'_> {
        self.turn_of(who.key()).await
    }

    /// Waits for the turn of a login from `ip`, taken after the claimant's (always in
    /// that order, so two logins cannot wait for each other): logins from one address
    /// are checked one at a time too, so that a spray of many usernames sent side by
    /// side gets no more password checks than the address's free attempts.
    pub async fn address_turn(&self, ip: AddrKey) -> Turn<'_> {
        self.turn_of(Self::addr_key(ip)).await
    }

    async fn turn_of(&self, key: String) -> Turn<'_> {
        let queue = self.turns.entry(key.clone()).or_default().clone();
        let held = Some(queue.lock_owned().await);
        Turn {
            turns: &self.turns,
            key,
            held,
        }
    }

    pub fn failed(&self, who: Claimant<'_>, ip: Option<AddrKey>) {
        self.failed_at(who, ip, Instant::now());
    }

    fn failed_at(&self, who: Claimant<'_>, ip: Option<AddrKey>, now: Instant) {
        if self.sweep_at.due(self.failures.len()) {
            let forget = self.max * 2;
            self.failures
                .retain(|_, f| now.saturating_duration_since(f.last) < forget);
            self.sweep_at.swept(self.failures.len());
        }
        for k in Self::keys(who, ip) {
            let mut f = self.failures.entry(k).or_insert(Failures {
                count: 0,
                last: now,
                wait_until: now,
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

    /// A successful login clears its claimant's failures (not the address's: an
    /// attacker could otherwise reset it with an account of their own; and a device's
    /// success leaves the username's, which counts the failures sent from elsewhere).
    pub fn succeeded(&self, who: Claimant<'_>) {
        self.failures.remove(&who.key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Claimant::Username as U;

    /// `--login-free-attempts N`: N failures, then every further attempt waits (the
    /// N+1st one already); with 0 the first failure starts the wait, as with 1.
    #[test]
    fn the_wait_starts_once_the_free_failures_are_used_up() {
        for (free, waits_after) in [(5, 5), (1, 1), (0, 1)] {
            let g = LoginGuard::new(free, 60);
            for n in 1..waits_after {
                g.failed(U("ann"), None);
                assert!(g.check(U("ann"), None).is_ok(), "free={free}: after {n}");
            }
            g.failed(U("ann"), None);
            let w = g.check(U("ann"), None).unwrap_err();
            assert!(
                w <= Duration::from_secs(1) && w > Duration::from_millis(500),
                "free={free}"
            );
        }
    }

    /// Past the soft cap, failures older than twice the maximum wait are swept, and a
    /// map of failures that are all recent is not scanned again until it has doubled
    /// (it used to be scanned at every failure once over the cap).
    #[test]
    fn sweeps_drop_old_failures_and_are_amortized() {
        use std::sync::atomic::Ordering;
        let g = LoginGuard::new(3, 60);
        let t = Instant::now();
        let name = |i: usize| format!("user{i}");
        for i in 0..=LOGIN_KEYS_SOFT_CAP {
            g.failed_at(U(&name(i)), None, t);
        }
        assert_eq!(g.failures.len(), LOGIN_KEYS_SOFT_CAP + 1);
        // two maximum waits later every failure is old: the next failure sweeps them
        let later = t + Duration::from_secs(121);
        g.failed_at(U("late"), None, later);
        assert_eq!(g.failures.len(), 1, "old failures swept");
        // a map of recent failures over the cap is swept once (keeping them all),
        // then not again until it doubles
        for i in 0..=LOGIN_KEYS_SOFT_CAP {
            g.failed_at(U(&name(i)), None, later);
        }
        let kept = LOGIN_KEYS_SOFT_CAP + 1;
        assert_eq!(g.sweep_at.at.load(Ordering::Relaxed), 2 * kept);
        for i in 0..1000 {
            g.failed_at(U(&format!("more{i}")), None, later);
        }
        assert_eq!(g.failures.len(), kept + 1001, "all recent: none swept");
        assert_eq!(
            g.sweep_at.at.load(Ordering::Relaxed),
            2 * kept,
            "no sweep since"
        );
    }

    /// Logins of one username take turns, other usernames do not wait, and the
    /// queue is forgotten once nobody waits in it.
    #[test]
    fn logins_of_one_username_take_turns() {
        use futures::FutureExt;
        let g = LoginGuard::new(3, 60);
        let first = g.turn(U("dora")).now_or_never().expect("nobody before");
        let mut second = Box::pin(g.turn(U("Dora")));
        assert!(
            (&mut second).now_or_never().is_none(),
            "waits for the first"
        );
        let other = g.turn(U("eve")).now_or_never().expect("another username");
        // logins from one address take turns as well, other addresses do not wait
        let [a, b] = ["192.0.2.1", "192.0.2.2"].map(|s| AddrKey::of(s.parse().unwrap(), 64));
        let from_a = g.address_turn(a).now_or_never().expect("nobody before");
        assert!(
            g.address_turn(a).now_or_never().is_none(),
            "waits for the first"
        );
        let from_b = g.address_turn(b).now_or_never().expect("another address");
        drop((from_a, from_b));
        drop(first);
        let second = second.now_or_never().expect("the turn passed on");
        drop((second, other));
        assert_eq!(g.turns.len(), 0, "nothing left behind");
    }

    #[test]
    fn login_backoff_doubles_and_success_clears_the_username() {
        let g = LoginGuard::new(2, 60);
        let ip = AddrKey::of("10.0.0.1".parse().unwrap(), 64);
        g.failed(U("Bob"), Some(ip));
        assert!(g.check(U("bob"), Some(ip)).is_ok(), "two free failures");
        g.failed(U("bob"), Some(ip));
        let w = g.check(U("BOB"), None).unwrap_err();
        assert!(w <= Duration::from_secs(1) && w > Duration::from_millis(500));
        g.failed(U("bob"), Some(ip));
        assert!(g.check(U("bob"), None).unwrap_err() > Duration::from_secs(1));
        // another username from the same address waits too
        assert!(g.check(U("carol"), Some(ip)).is_err());
        assert!(g.check(U("carol"), None).is_ok());
        g.succeeded(U("bob"));
        assert!(g.check(U("bob"), None).is_ok());
        assert!(
            g.check(U("bob"), Some(ip)).is_err(),
            "the address still waits"
        );
    }

    /// A device's failures and the username's are counted apart: a username backing
    /// off from failures sent elsewhere does not hold up the device, nor a device's
    /// success clear them; the device backs off from its own.
    #[test]
    fn a_device_counts_its_own_failures() {
        let g = LoginGuard::new(1, 60);
        let device = Claimant::Device("0a1b");
        g.failed(U("ann"), None);
        assert!(g.check(U("ann"), None).is_err());
        assert!(
            g.check(device, None).is_ok(),
            "the username's wait is not the device's"
        );
        g.succeeded(device);
        assert!(
            g.check(U("ann"), None).is_err(),
            "still counted for the username"
        );
        g.failed(device, None);
        assert!(
            g.check(device, None).is_err(),
            "the device backs off from its own"
        );
        assert!(g.check(Claimant::Device("0a1c"), None).is_ok());
    }
}
