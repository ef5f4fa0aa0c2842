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

    pub fn check(&mut self, limit: &RateLimit) -> Verdict {
        self.check_at(Instant::now(), limit)
    }

    pub fn check_at(&mut self, now: Instant, limit: &RateLimit) -> Verdict {
        if limit.rate == 0 {
            return Verdict::Allow;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let burst = limit.burst.max(1) as f32;
        self.tokens = (self.tokens + dt * limit.rate as f32).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
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
            assert_eq!(r.check_at(t0, &limit), Verdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(r.check_at(t0, &limit), Verdict::Refuse);
        }
        assert_eq!(r.check_at(t0, &limit), Verdict::Close);
        // 100 ms later one token is back and the strikes are forgiven
        let mut r = RateLimiter::new(&limit);
        for _ in 0..6 {
            r.check_at(t0, &limit);
        }
        assert_eq!(
            r.check_at(t0 + Duration::from_millis(100), &limit),
            Verdict::Allow
        );
        assert_eq!(r.strikes, 0);
        let off = RateLimit {
            rate: 0,
            burst: 1,
            close_after: 0,
        };
        assert_eq!(RateLimiter::new(&off).check_at(t0, &off), Verdict::Allow);
    }
}
