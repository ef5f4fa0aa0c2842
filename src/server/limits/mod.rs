//! Abuse limits, each in its own file: the request rate per connection ([`rate`]), the
//! login backoff per username and address ([`login`]), registrations per address
//! ([`register`]) and the listener that caps
//! connections per address and times out handshakes ([`listener`]); [`Shield`] is
//! what the server shares of them between connections.
//!
//! Every limit is a flag (and `JETWAY_<NAME>` variable) in
//! [`crate::config::LimitsConfig`]; docs/security.md lists them.

mod listener;
mod login;
mod rate;
mod register;

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

pub use listener::{AddrSlot, GuardedListener, GuardedStream, Peer, TcpHold};
pub use rate::{RateLimit, RateLimiter, Verdict};

use listener::AddrCounter;
use login::LoginGuard;
use register::RegisterGuard;

/// What the per-address limits count under: an IPv4 address (an IPv4-mapped IPv6
/// one as the IPv4 address it is), or an IPv6 address's /64. An IPv6 host is
/// usually given a whole /64 and may send from any address in it, so keyed by the
/// full address every limit here would be one address change away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn of(ip: IpAddr) -> Self {
        AddrKey(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mask = !0u128 << 64;
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
            v4 => v4,
        })
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
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
        self.limits.limits_addr(ip).then(|| AddrKey::of(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AddrKey {
        AddrKey::of(s.parse().unwrap())
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_and_ipv4_by_its_address() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ab:cd:ef"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::9").to_string(), "2001:db8:1:2::/64");
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1");
    }
}
