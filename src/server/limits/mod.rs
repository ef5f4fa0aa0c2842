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

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

pub use listener::{AddrSlot, GuardedListener, GuardedStream, Peer, TcpHold};
pub use rate::{RateLimit, RateLimiter, Verdict};

use listener::AddrCounter;
use login::LoginGuard;
use register::RegisterGuard;

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
    pub fn login_addr(&self, ip: IpAddr) -> Option<IpAddr> {
        self.limits.limits_addr(ip).then_some(ip)
    }
}
