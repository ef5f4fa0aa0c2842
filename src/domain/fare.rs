//! The refund rule.
//!
//! - economy: full refund until 24 hours before departure, half after that;
//! - business: full refund until departure;
//! - nothing once the flight has departed (such bookings cannot be cancelled).

use super::{Cabin, Millis, Money};

pub const ECONOMY_FULL_REFUND_BEFORE_MS: Millis = 24 * 3600 * 1000;

/// What a passenger in `cabin` who paid `fare` gets back when cancelling at `now`.
pub fn refund(cabin: Cabin, fare: Money, departs_at: Millis, now: Millis) -> Money {
    if now >= departs_at {
        return Money::ZERO;
    }
    match cabin {
        Cabin::Business => fare,
        Cabin::Economy if departs_at - now >= ECONOMY_FULL_REFUND_BEFORE_MS => fare,
        Cabin::Economy => fare.scale(1, 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3600 * 1000;

    #[test]
    fn economy_is_full_then_half_then_nothing() {
        let fare = Money::cents(10_001).unwrap();
        let dep = 100 * H;
        assert_eq!(refund(Cabin::Economy, fare, dep, 0), fare);
        assert_eq!(refund(Cabin::Economy, fare, dep, dep - 24 * H), fare);
        assert_eq!(
            refund(Cabin::Economy, fare, dep, dep - 24 * H + 1).amount(),
            5_000
        );
        assert_eq!(refund(Cabin::Economy, fare, dep, dep - 1).amount(), 5_000);
        assert_eq!(refund(Cabin::Economy, fare, dep, dep), Money::ZERO);
    }

    #[test]
    fn business_is_full_until_departure() {
        let fare = Money::cents(50_000).unwrap();
        let dep = 100 * H;
        assert_eq!(refund(Cabin::Business, fare, dep, dep - 1), fare);
        assert_eq!(refund(Cabin::Business, fare, dep, dep + 1), Money::ZERO);
    }
}
