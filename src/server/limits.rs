//! Abuse limits: the per-connection request rate limit, the count of
//! connections per address, the HTTP/WebSocket handshake timeout (a listener that
//! wraps every accepted TCP stream) and the login backoff per username and address.
//!
//! Every limit is a flag (and `JETWAY_<NAME>` variable) in
//! [`crate::config::LimitsConfig`]; docs/security.md lists them.

use dashmap::DashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::LimitsConfig;
use crate::metrics::{Metrics, Rejection};

/// Trusted proxies are a server concern: their WebSockets count for the clients they
/// forward.
impl LimitsConfig {
    /// Whether a TCP peer is counted against the per-address cap when it connects: a
    /// trusted proxy is not (its WebSockets count for the clients it forwards).
    pub fn counts_tcp_peer(&self, ip: IpAddr) -> bool {
        self.limits_addr(ip) && !super::forwarded::is_trusted(ip, &self.trusted_proxies)
    }
}

// ---------------------------------------------------------------------------
// Card data

/// True for text that may be a card number (12-19 digits, spaces or dashes
/// between): such a `payment_method` is refused before it is stored or logged.
pub fn looks_like_card_number(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (12..=19).contains(&digits)
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
}

// ---------------------------------------------------------------------------
// Request rate per connection

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Requests refused in a row.
    pub strikes: u32,
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `rate_limited`.
    Refuse,
    /// The client keeps flooding: close the connection.
    Close,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            strikes: 0,
        }
    }

    pub fn check(&mut self, close_after: u32) -> Verdict {
        self.check_at(Instant::now(), close_after)
    }

    pub fn check_at(&mut self, now: Instant, close_after: u32) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allow;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

// ---------------------------------------------------------------------------
// Login backoff

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
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

    fn keys(username: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![format!("u:{}", username.trim().to_lowercase())];
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
            });
            if now.duration_since(f.last) >= self.max * 2 {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count > self.free {
                let exp = (f.count - self.free - 1).min(20);
                let wait = Duration::from_secs(1u64 << exp).min(self.max);
                f.wait_until = now + wait;
            }
        }
    }

    /// A successful login clears the username's failures (not the address's: an
    /// attacker could otherwise reset it with an account of their own).
    pub fn succeeded(&self, username: &str) {
        self.failures
            .remove(&format!("u:{}", username.trim().to_lowercase()));
    }
}

// ---------------------------------------------------------------------------
// Connections per address, and the handshake timeout

/// Open connections per address.
#[derive(Default)]
pub struct AddrCounter {
    open: DashMap<IpAddr, usize>,
}

/// One counted connection; uncounts itself when dropped.
pub struct AddrSlot {
    counter: Arc<AddrCounter>,
    ip: IpAddr,
}

impl AddrCounter {
    /// Counts a connection unless `max` are already open from `ip`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddrSlot> {
        let mut n = self.open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            counter: self.clone(),
            ip,
        })
    }

    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ip).map_or(0, |n| *n)
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        self.counter.open.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// What the HTTP side knows about one TCP connection: its peer and the deadline
/// by which it must have become a WebSocket (or started its next request).
#[derive(Debug)]
pub struct ConnMark {
    pub peer: SocketAddr,
    upgraded: AtomicBool,
    /// Milliseconds since `epoch`.
    deadline_ms: AtomicI64,
    epoch: Instant,
    timeout: Duration,
}

impl ConnMark {
    fn new(peer: SocketAddr, timeout: Duration) -> Self {
        ConnMark {
            peer,
            upgraded: AtomicBool::new(false),
            deadline_ms: AtomicI64::new(timeout.as_millis() as i64),
            epoch: Instant::now(),
            timeout,
        }
    }

    /// A request arrived: the connection gets another full timeout.
    pub fn request_started(&self) {
        let ms = (self.epoch.elapsed() + self.timeout).as_millis() as i64;
        self.deadline_ms.store(ms, Ordering::Relaxed);
    }

    /// The connection is now a WebSocket: the handshake timeout no longer applies
    /// (the idle timeout does).
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn deadline(&self) -> Option<Instant> {
        if self.upgraded.load(Ordering::Relaxed) {
            return None;
        }
        let ms = self.deadline_ms.load(Ordering::Relaxed).max(0) as u64;
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// The connect info every handler can extract: the peer and its mark.
#[derive(Clone, Debug)]
pub struct Peer(pub Arc<ConnMark>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        Peer(stream.io().mark.clone())
    }
}

/// A TCP listener that refuses an address over its connection limit and wraps each
/// accepted stream in a [`GuardedStream`].
pub struct GuardedListener {
    inner: TcpListener,
    limits: Arc<LimitsConfig>,
    counter: Arc<AddrCounter>,
    metrics: Arc<Metrics>,
}

impl GuardedListener {
    pub fn new(
        inner: TcpListener,
        limits: Arc<LimitsConfig>,
        counter: Arc<AddrCounter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        GuardedListener {
            inner,
            limits,
            counter,
            metrics,
        }
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // out of file descriptors and the like: wait, as axum does
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = if self.limits.counts_tcp_peer(peer.ip()) {
                match self
                    .counter
                    .try_acquire(peer.ip(), self.limits.max_connections_per_addr)
                {
                    Some(s) => Some(s),
                    None => {
                        self.metrics.rejected(Rejection::PerAddressLimit);
                        tracing::info!(peer = %peer.ip(), "too many connections from one address");
                        let _ = stream.try_write(TOO_MANY);
                        drop(stream);
                        continue;
                    }
                }
            } else {
                None
            };
            let _ = stream.set_nodelay(true);
            let timeout = Duration::from_secs(self.limits.handshake_timeout.max(1));
            let mark = Arc::new(ConnMark::new(peer, timeout));
            let first = mark.deadline().unwrap_or_else(Instant::now);
            return (
                GuardedStream {
                    inner: stream,
                    mark,
                    timer: Some(Box::pin(tokio::time::sleep_until(first.into()))),
                    timer_at: first,
                    metrics: ConnGauge::new(self.metrics.clone()),
                    _slot: slot,
                },
                peer,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Counts an open TCP connection in the metrics while it lives.
struct ConnGauge(Arc<Metrics>);

impl ConnGauge {
    fn new(m: Arc<Metrics>) -> Self {
        m.tcp_opened();
        ConnGauge(m)
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.tcp_closed();
    }
}

/// A TCP stream that fails its reads once its handshake deadline passes before it
/// became a WebSocket.
pub struct GuardedStream {
    inner: TcpStream,
    mark: Arc<ConnMark>,
    /// Until the upgrade.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timer_at: Instant,
    metrics: ConnGauge,
    _slot: Option<AddrSlot>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match (this.mark.deadline(), this.timer.as_mut()) {
            (Some(deadline), Some(timer)) => {
                if deadline != this.timer_at {
                    this.timer_at = deadline;
                    timer.as_mut().reset(deadline.into());
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.metrics.0.rejected(Rejection::HandshakeTimeout);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "handshake timeout",
                    )));
                }
            }
            // a WebSocket for good: the timer's memory goes back
            (None, Some(_)) => this.timer = None,
            _ => {}
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Everything the server front shares between connections for the limits.
pub struct Shield {
    pub limits: Arc<LimitsConfig>,
    pub counter: Arc<AddrCounter>,
    pub logins: LoginGuard,
    pub metrics: Arc<Metrics>,
}

impl Shield {
    pub fn new(limits: LimitsConfig, metrics: Arc<Metrics>) -> Arc<Shield> {
        Arc::new(Shield {
            logins: LoginGuard::new(limits.login_free_attempts, limits.login_backoff_max),
            limits: Arc::new(limits),
            counter: Arc::default(),
            metrics,
        })
    }

    /// The address key for login backoff, unless this peer is exempt.
    pub fn login_addr(&self, ip: IpAddr) -> Option<IpAddr> {
        self.limits.limits_addr(ip).then_some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_then_closes() {
        let mut r = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(r.check_at(t0, 3), Verdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(r.check_at(t0, 3), Verdict::Refuse);
        }
        assert_eq!(r.check_at(t0, 3), Verdict::Close);
        // 100 ms later one token is back and the strikes are forgiven
        let mut r = RateLimiter::new(10, 5);
        for _ in 0..6 {
            r.check_at(t0, 3);
        }
        assert_eq!(
            r.check_at(t0 + Duration::from_millis(100), 3),
            Verdict::Allow
        );
        assert_eq!(r.strikes, 0);
        assert_eq!(RateLimiter::new(0, 1).check_at(t0, 0), Verdict::Allow);
    }

    #[test]
    fn login_backoff_doubles_and_success_clears_the_username() {
        let g = LoginGuard::new(2, 60);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        g.failed("Bob", Some(ip));
        g.failed("bob", Some(ip));
        assert!(g.check("bob", Some(ip)).is_ok(), "two free attempts");
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

    #[test]
    fn card_numbers_are_recognised() {
        assert!(looks_like_card_number("4242424242424242"));
        assert!(looks_like_card_number("4242 4242 4242 4242"));
        assert!(looks_like_card_number("4242-4242-4242-4242"));
        assert!(!looks_like_card_number("pm_card_visa"));
        assert!(!looks_like_card_number("pm_1234567890123456"));
        assert!(!looks_like_card_number("12345"));
    }

    #[test]
    fn address_slots_count_and_release() {
        let c = Arc::new(AddrCounter::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = c.try_acquire(ip, 2).unwrap();
        let _b = c.try_acquire(ip, 2).unwrap();
        assert!(c.try_acquire(ip, 2).is_none());
        drop(a);
        assert_eq!(c.open(ip), 1);
        assert!(c.try_acquire(ip, 2).is_some());
        assert!(c.try_acquire(ip, 0).is_some(), "0 means no limit");
    }
}
