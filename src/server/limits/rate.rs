//! The request rate limit of one connection: a token bucket, and the verdict on each
//! request (allow, refuse with `rate_limited`, or close a flooding client).

use std::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Kept in
/// `f32`s: every connection has one, and whole tokens are all it counts.
pub struct RateLimiter {
    rate: f32,
    burst: f32,
    tokens: f32,
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
        let burst = burst.max(1) as f32;
        RateLimiter {
            rate: rate as f32,
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
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
