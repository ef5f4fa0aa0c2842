//! The request rate limit of one connection: a token bucket, and the verdict on each
//! request (allow, refuse with `rate_limited`, or close a flooding client).

use std::time::Instant;

/// The limit every connection's bucket follows: `rate` tokens per second, at most
/// `burst` saved up, and the connection closed after `close_after` refusals in a row.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
    pub close_after: u32,
}

impl RateLimit {
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        RateLimit {
            rate: limits.rate_limit,
            burst: limits.rate_burst,
            close_after: limits.rate_limit_close,
        }
    }
}

/// The bytes of a frame one token pays for: every request a client makes fits.
pub const TOKEN_BYTES: usize = 4096;

/// One connection's token bucket, following a [`RateLimit`] it is given at each
/// check (every connection has a bucket; the limit is the server's). In `f32`s:
/// whole tokens are all it counts.
pub struct RateLimiter {
    tokens: f32,
    /// Requests refused in a row.
    pub strikes: u32,
    last: Instant,
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
    /// A full bucket.
    pub fn new(limit: &RateLimit) -> Self {
        RateLimiter {
            tokens: limit.burst.max(1) as f32,
            strikes: 0,
            last: Instant::now(),
        }
    }

    /// The verdict on a frame of `bytes`.
    pub fn check(&mut self, limit: &RateLimit, bytes: usize) -> Verdict {
        self.check_at(Instant::now(), limit, bytes)
    }

    /// A frame costs a token per started [`TOKEN_BYTES`] (never more than a full
    /// bucket): parsing a large frame costs the server far more than a small one
    /// (a 64 KiB frame of small objects ~3 ms of CPU, a request ~10 µs), so a
    /// connection sending large frames gets fewer of them.
    pub fn check_at(&mut self, now: Instant, limit: &RateLimit, bytes: usize) -> Verdict {
        if limit.rate == 0 {
            return Verdict::Allow;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let burst = limit.burst.max(1);
        let cost = bytes.div_ceil(TOKEN_BYTES).clamp(1, burst as usize) as f32;
        self.tokens = (self.tokens + dt * limit.rate as f32).min(burst as f32);
        if self.tokens >= cost {
            self.tokens -= cost;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > limit.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refuses_then_closes() {
        let limit = RateLimit {
            rate: 10,
            burst: 5,
            close_after: 3,
        };
        let mut r = RateLimiter::new(&limit);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(r.check_at(t0, &limit, 100), Verdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(r.check_at(t0, &limit, 100), Verdict::Refuse);
        }
        assert_eq!(r.check_at(t0, &limit, 100), Verdict::Close);
        // 100 ms later one token is back and the strikes are forgiven
        let mut r = RateLimiter::new(&limit);
        for _ in 0..6 {
            r.check_at(t0, &limit, 100);
        }
        assert_eq!(
            r.check_at(t0 + Duration::from_millis(100), &limit, 100),
            Verdict::Allow
        );
        assert_eq!(r.strikes, 0);
        let off = RateLimit {
            rate: 0,
            burst: 1,
            close_after: 0,
        };
        assert_eq!(
            RateLimiter::new(&off).check_at(t0, &off, 1 << 20),
            Verdict::Allow
        );
    }

    #[test]
    fn a_large_frame_costs_a_token_per_started_4_kib_up_to_the_burst() {
        let limit = RateLimit {
            rate: 100,
            burst: 20,
            close_after: 100,
        };
        let t0 = Instant::now();
        let mut r = RateLimiter::new(&limit);
        assert_eq!(r.check_at(t0, &limit, 16 * TOKEN_BYTES), Verdict::Allow);
        assert_eq!(r.check_at(t0, &limit, TOKEN_BYTES + 1), Verdict::Allow);
        assert_eq!(r.check_at(t0, &limit, 3 * TOKEN_BYTES), Verdict::Refuse);
        assert_eq!(r.check_at(t0, &limit, 0), Verdict::Allow);
        assert_eq!(r.check_at(t0, &limit, 1), Verdict::Allow);
        // a frame costing more than the bucket holds costs a full bucket: it passes
        // once the bucket is full again
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(r.check_at(t1, &limit, 64 * TOKEN_BYTES), Verdict::Allow);
        assert_eq!(r.check_at(t1, &limit, 1), Verdict::Refuse);
    }
}
