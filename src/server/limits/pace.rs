//! The pace of one connection's replies: a byte budget (`rate` bytes a second, `burst`
//! saved up) that every reply draws on. A connection whose replies outrun it has its
//! next request read only once they are paid for; no reply is held back or refused
//! (a client paging through a long list is slowed, never failed). Encoding a large
//! reply costs the server far more than reading its request (a `flights.search` of
//! 500 flights, ~150 KB, ~1.7 ms of CPU), so without it one connection within its
//! request rate kept a sixth of a core busy.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The budget every connection follows (0: none).
#[derive(Debug, Clone, Copy)]
pub struct ReplyPace {
    pub rate: u32,
    pub burst: u32,
}

/// What a connection's replies so far have drawn: the time by which they are paid
/// for at the pace's rate, in [`UNIT_MICROS`] from the process's [`EPOCH`], wrapping
/// (every 76 hours). Four bytes: they fit in the padding of the connection's state,
/// which every idle connection keeps. A fresh connection starts at the [`clock`], and
/// its mark is brought up to it whenever the connection is heard from or pinged
/// ([`ReplyPace::catch_up`]; a silent connection is pinged at least daily), so that it
/// is never left behind long enough (a wrap less 20 minutes) to read as ahead.
pub type PaidUntil = u32;

const UNIT_MICROS: u64 = 64;
/// The most one reply, or the burst, counts for (10 minutes): a connection is never
/// ahead of the clock by more than both, so a mark further ahead is one left behind
/// by a clock that wrapped since.
const MAX_UNITS: u32 = (600_000_000 / UNIT_MICROS) as u32;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The clock a [`PaidUntil`] is on: a fresh connection's mark, all paid for.
pub fn clock() -> PaidUntil {
    (EPOCH.elapsed().as_micros() / u128::from(UNIT_MICROS)) as u32
}

fn catch_up_at(now: u32, paid: &mut PaidUntil) {
    *paid = now.wrapping_add(ahead(now, *paid));
}

/// How far `paid` is ahead of the clock at `now`: none if behind it (all paid for),
/// or if it is a mark from before the clock last wrapped.
fn ahead(now: u32, paid: PaidUntil) -> u32 {
    Some(paid.wrapping_sub(now))
        .filter(|a| *a <= 2 * MAX_UNITS)
        .unwrap_or(0)
}

impl ReplyPace {
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        ReplyPace {
            rate: limits.reply_rate,
            burst: limits.reply_burst,
        }
    }

    /// Charges replies of `bytes` to a connection that has drawn `paid`: how long its
    /// next request must wait.
    pub fn charge(&self, paid: &mut PaidUntil, bytes: usize) -> Duration {
        self.charge_at(clock(), paid, bytes)
    }

    /// Sets a mark that fell behind the clock to the clock (see [`PaidUntil`]).
    pub fn catch_up(paid: &mut PaidUntil) {
        catch_up_at(clock(), paid);
    }

    fn charge_at(&self, now: u32, paid: &mut PaidUntil, bytes: usize) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let units = |bytes: u64| {
            let per = u64::from(self.rate) * UNIT_MICROS;
            bytes
                .saturating_mul(1_000_000)
                .div_ceil(per)
                .min(u64::from(MAX_UNITS)) as u32
        };
        let ahead = ahead(now, *paid) + units(bytes as u64);
        *paid = now.wrapping_add(ahead);
        let wait = ahead.saturating_sub(units(u64::from(self.burst)));
        Duration::from_micros(u64::from(wait) * UNIT_MICROS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock at `secs` seconds.
    fn at(secs: f64) -> u32 {
        (secs * 1e6 / UNIT_MICROS as f64) as u32
    }

    #[test]
    fn replies_within_the_burst_go_on_and_past_it_wait_for_the_rate() {
        let pace = ReplyPace {
            rate: 1000,
            burst: 4000,
        };
        let mut paid = 0;
        // 4,000 bytes at once: the burst
        for _ in 0..4 {
            assert_eq!(pace.charge_at(at(0.0), &mut paid, 1000), Duration::ZERO);
        }
        // one more kilobyte: a second at 1,000 bytes a second
        assert_eq!(
            pace.charge_at(at(0.0), &mut paid, 1000),
            Duration::from_secs(1)
        );
        // waited for: the next small reply goes on, the budget spent
        let small = pace.charge_at(at(1.0), &mut paid, 10);
        assert!(
            small > Duration::ZERO && small <= Duration::from_millis(11),
            "{small:?}"
        );
        // ten seconds idle refill the burst, no more
        let later = at(11.0);
        for _ in 0..4 {
            assert_eq!(pace.charge_at(later, &mut paid, 1000), Duration::ZERO);
        }
        assert!(pace.charge_at(later, &mut paid, 1000) > Duration::ZERO);
    }

    #[test]
    fn a_mark_from_before_the_clock_wrapped_is_no_debt() {
        let pace = ReplyPace {
            rate: 1000,
            burst: 0,
        };
        let second = Duration::from_secs(1);
        // paid up to just before the wrap and asked after it; a mark from half a wrap
        // ago; one unit ahead, still owed
        for (paid, now, wait) in [
            (u32::MAX - 10, 5, second),
            (0, u32::MAX / 2 + 1, second),
            (100, 99, second + Duration::from_micros(UNIT_MICROS)),
        ] {
            let mut p = paid;
            assert_eq!(pace.charge_at(now, &mut p, 1000), wait, "{paid} {now}");
        }
    }

    /// A connection made ten minutes before the clock wraps (its mark used to start
    /// at 0, which then read as ten minutes ahead: its first reply waited that long),
    /// and one silent for 70 hours, its mark kept up by pings, owe nothing.
    #[test]
    fn fresh_and_long_idle_connections_owe_nothing_near_the_wrap() {
        let pace = ReplyPace {
            rate: 1 << 20,
            burst: 4 << 20,
        };
        let before_wrap = u32::MAX - at(600.0);
        let mut fresh = before_wrap;
        assert_eq!(pace.charge_at(before_wrap, &mut fresh, 200), Duration::ZERO);
        let mut old = 0;
        assert!(pace.charge_at(before_wrap, &mut old, 200) > Duration::from_secs(500));

        // silent for a wrap less ten minutes, pinged every 20 s: a mark not kept up
        // reads as ten minutes ahead
        let start = at(1.0);
        let (mut kept, mut now) = (start, start);
        let until = start.wrapping_add(u32::MAX - MAX_UNITS);
        while now != until {
            now = until.wrapping_sub(now).min(at(20.0)).wrapping_add(now);
            catch_up_at(now, &mut kept);
        }
        assert_eq!(kept, now);
        assert_eq!(pace.charge_at(now, &mut kept, 200), Duration::ZERO);
        let mut stale = start;
        assert!(pace.charge_at(now, &mut stale, 200) > Duration::from_secs(500));
    }

    #[test]
    fn no_rate_is_no_budget() {
        let pace = ReplyPace { rate: 0, burst: 0 };
        let mut paid = 0;
        assert_eq!(pace.charge(&mut paid, usize::MAX), Duration::ZERO);
        assert_eq!(paid, 0);
    }
}
