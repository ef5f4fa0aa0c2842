//! Abuse limits, each in its own file: the request rate per connection ([`rate`]), the
//! pace of its replies ([`pace`]), the login backoff per username and address ([`login`]), registrations per address
//! ([`register`]) and the listener that caps
//! connections per address and times out handshakes ([`listener`]); [`Shield`] is
//! what the server shares of them between connections.
//!
//! Every limit is a flag (and `JETWAY_<NAME>` variable) in
//! [`crate::config::LimitsConfig`]; docs/security.md lists them.

mod listener;
mod login;
mod pace;
mod rate;
mod register;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

pub use listener::{AddrSlot, GuardedListener, GuardedStream, Peer, TcpHold};
pub use pace::{clock as pace_clock, PaidUntil, ReplyPace};
pub use rate::{RateLimit, RateLimiter, Verdict};

use listener::AddrCounter;
pub use login::Claimant;
use login::LoginGuard;
use register::RegisterGuard;

/// What the per-address limits count under: an IPv4 address, or an IPv6 address's
/// leading `--ipv6-prefix` bits (a /64 by default: an IPv6 host is usually given a
/// whole /64 and may send from any address in it, so keyed by the full address every
/// limit here would be one address change away). IPv6 addresses that stand for one
/// IPv4 address count as that address: IPv4-mapped (`::ffff:0:0/96`), NAT64's
/// well-known prefix (`64:ff9b::/96`), 6to4 (`2002::/16`, whose owner of one IPv4
/// address has the whole /48) and Teredo (`2001::/32`: its last 32 bits are the
/// client's public IPv4 address, inverted; its first 64 are the Teredo server's, and
/// the rest changes with the client's port). Those a prefix says nothing about count
/// whole: `::/96` (IPv4-compatible, loopback) and link-local `fe80::/10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey {
    ip: IpAddr,
    prefix: u8,
}

impl AddrKey {
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let v4 = |v4: Ipv4Addr| AddrKey {
            ip: v4.into(),
            prefix: 32,
        };
        let v6 = match ip {
            IpAddr::V4(a) => return v4(a),
            IpAddr::V6(v6) => v6,
        };
        if let Some(a) = v6.to_ipv4_mapped() {
            return v4(a);
        }
        let bits = u128::from(v6);
        let within = |net: u128, len: u32| (bits ^ net) >> (128 - len) == 0;
        if within(0x0064_ff9b << 96, 96) {
            return v4(Ipv4Addr::from(bits as u32));
        }
        if within(0x2002 << 112, 16) {
            return v4(Ipv4Addr::from((bits >> 80) as u32));
        }
        if within(0x2001_0000 << 96, 32) {
            return v4(Ipv4Addr::from(!(bits as u32)));
        }
        if within(0, 96) || within(0xfe80 << 112, 10) {
            return AddrKey { ip, prefix: 128 };
        }
        let prefix = ipv6_prefix.clamp(1, 128);
        let mask = !0u128 << (128 - u32::from(prefix));
        AddrKey {
            ip: IpAddr::V6(Ipv6Addr::from(bits & mask)),
            prefix,
        }
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            IpAddr::V6(v6) if self.prefix < 128 => write!(f, "{v6}/{}", self.prefix),
            ip => write!(f, "{ip}"),
        }
    }
}

impl LimitsConfig {
    /// The key `ip` is counted under by the per-address limits.
    pub fn addr_key(&self, ip: IpAddr) -> AddrKey {
        AddrKey::of(ip, self.ipv6_prefix)
    }
}

/// When a map of per-key state is swept of the keys it no longer needs: once it holds
/// more than twice what the last sweep kept, and at least its soft cap. A map of many
/// keys that are all still needed is then not scanned again at every insertion (which
/// would stall the reactor thread for every request past the cap): the sweeps cost
/// O(1) per insertion, amortized.
struct SweepAt {
    cap: usize,
    at: AtomicUsize,
}

impl SweepAt {
    fn new(cap: usize) -> Self {
        SweepAt {
            cap,
            at: AtomicUsize::new(cap),
        }
    }

    /// Whether a map of `len` keys is due for a sweep.
    fn due(&self, len: usize) -> bool {
        len > self.at.load(Ordering::Relaxed)
    }

    /// A sweep kept `kept` keys.
    fn swept(&self, kept: usize) {
        self.at.store(self.cap.max(2 * kept), Ordering::Relaxed);
    }
}

/// Everything the server front shares between connections for the limits.
pub struct Shield {
    pub limits: Arc<LimitsConfig>,
    pub counter: Arc<AddrCounter>,
    pub logins: LoginGuard,
    pub registrations: RegisterGuard,
    pub metrics: Arc<Metrics>,
}

impl Shield {
    pub fn new(limits: LimitsConfig, metrics: Arc<Metrics>) -> Arc<Shield> {
        Arc::new(Shield {
            logins: LoginGuard::new(limits.login_free_attempts, limits.login_backoff_max),
            registrations: RegisterGuard::new(limits.registrations_per_hour),
            limits: Arc::new(limits),
            counter: Arc::default(),
            metrics,
        })
    }

    /// The address key for the login backoff and the registration limit, unless this
    /// peer is exempt.
    pub fn login_addr(&self, ip: IpAddr) -> Option<AddrKey> {
        self.limits
            .limits_addr(ip)
            .then(|| self.limits.addr_key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AddrKey {
        AddrKey::of(s.parse().unwrap(), 64)
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_and_ipv4_by_its_address() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ab:cd:ef"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::9").to_string(), "2001:db8:1:2::/64");
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1");
        // one IPv4 client, however it is written
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("64:ff9b::192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("64:ff9b::192.0.2.1"), key("64:ff9b::192.0.2.2"));
        assert_eq!(key("2002:c000:201:1::1"), key("192.0.2.1"));
        assert_eq!(key("2002:c000:201:ffff::9"), key("192.0.2.1"));
        // Teredo: the client's address inverted in the last 32 bits (RFC 4380's
        // example), whatever the server, flags and port before it
        assert_eq!(
            key("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            key("192.0.2.45")
        );
        assert_eq!(key("2001:0:1:2:0:ffff:3fff:fdd2"), key("192.0.2.45"));
        assert_ne!(
            key("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            key("192.0.2.46")
        );
        // addresses a prefix says nothing about count whole
        for (a, b) in [
            ("::1", "::2"),
            ("::192.0.2.1", "::192.0.2.2"),
            ("fe80::1", "fe80::2"),
        ] {
            assert_ne!(key(a), key(b), "{a} {b}");
            assert_eq!(key(a).to_string(), a.parse::<IpAddr>().unwrap().to_string());
        }
        // --ipv6-prefix 128: every address on its own; 48: the site
        let with = |s: &str, p| AddrKey::of(s.parse().unwrap(), p);
        assert_ne!(with("2001:db8::1", 128), with("2001:db8::2", 128));
        assert_eq!(with("2001:db8::1", 128).to_string(), "2001:db8::1");
        assert_eq!(with("2001:db8:0:1::1", 48), with("2001:db8:0:2::1", 48));
    }
}
