//! The booking state machine driven by any byte string (one operation per byte):
//! refused operations change nothing, terminal states are final, a booking occupies
//! seats only while held or confirmed, and refunds never exceed the total.
#![no_main]

use jetway::domain::{
    Booking, BookingStatus, Cabin, FlightId, Locator, Money, SeatId, TicketNumber, UserId,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, ops)) = data.split_first() else { return };
    let n = usize::from(n % 4) + 1;
    let mut now = 1_000_000i64;
    let departs = now + 10 * 86_400_000;
    let fare = Money::cents(10_000).unwrap();
    let seats: Vec<_> = (0..n)
        .map(|i| (SeatId::parse(&format!("{}A", i + 1)).unwrap(), Cabin::Economy, fare))
        .collect();
    let mut b = Booking::hold(
        Locator::from_random([1, 2, 3, 4, 5, 6]),
        UserId(7),
        FlightId::parse("JW1-2030-01-01").unwrap(),
        seats,
        (0..n).map(|i| format!("P{i}")).collect(),
        now,
        600_000,
    )
    .unwrap();
    let total = b.total;
    let mut ticket = 0u64;
    for &op in ops.iter().take(64) {
        let before = b.clone();
        let arg = usize::from(op >> 3);
        let r = match op & 7 {
            0 => {
                now += i64::from(op) * 5_000;
                Ok(())
            }
            1 => b.check_payable(now).and_then(|_| {
                let t = (0..b.seats.len())
                    .map(|_| {
                        ticket += 1;
                        TicketNumber::new(729, ticket)
                    })
                    .collect();
                b.confirm(t, "ORD1".into(), now)
            }),
            2 => b.release(now),
            3 => b.expire(now),
            4 => b
                .refund_quote(None, departs, now)
                .and_then(|(s, m)| b.refund(&s, m, now)),
            5 => {
                let s = vec![b.seats[arg % b.seats.len()].seat];
                b.refund_quote(Some(&s), departs, now)
                    .and_then(|(s, m)| b.refund(&s, m, now))
            }
            _ => {
                let from = b.seats[arg % b.seats.len()].seat;
                let to = SeatId::parse(&format!("{}C", arg % 40 + 1)).unwrap();
                b.change_seat(from, to, Cabin::Economy, now)
            }
        };
        if r.is_err() {
            assert_eq!(b, before);
        }
        if matches!(
            before.status,
            BookingStatus::Cancelled | BookingStatus::Expired | BookingStatus::Refunded
        ) {
            assert_eq!(b, before);
        }
        let occupied = b.occupied_seats().count();
        assert_eq!(occupied == 0, !b.status.occupies_seats());
        if let Some(r) = b.refund {
            assert!(r >= Money::ZERO && r <= total);
        }
    }
});
