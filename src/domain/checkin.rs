//! Online check-in: the window it is open in, checking in the passengers of a
//! confirmed booking with the flight's next sequence numbers, and the boarding passes
//! that follow from it.

use serde::{Deserialize, Serialize};

use super::{bcbp, BookedSeat, Booking, BookingStatus, DomainError, Flight, Millis, SeatId};

/// A passenger's check-in: the flight's check-in sequence number given to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckIn {
    pub sequence: u64,
    pub at: Millis,
}

/// When check-in is open, relative to the departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Opens this long before departure.
    pub opens_before: Millis,
    /// Closes this long before departure.
    pub closes_before: Millis,
}

impl Window {
    pub fn new(opens_hours: u64, closes_minutes: u64) -> Window {
        Window {
            opens_before: opens_hours as Millis * 3_600_000,
            closes_before: closes_minutes as Millis * 60_000,
        }
    }

    /// Whether check-in for a flight departing at `departure` (the estimate if there
    /// is one, else the schedule) is open at `now`.
    pub fn check(&self, departure: Millis, now: Millis) -> Result<(), DomainError> {
        if now >= departure - self.opens_before && now < departure - self.closes_before {
            Ok(())
        } else {
            Err(DomainError::CheckinClosed)
        }
    }
}

/// One boarding pass, as the contract shapes it (without the flight id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardingPass {
    pub seat: SeatId,
    pub passenger: String,
    pub sequence: u64,
    pub bcbp: String,
}

impl Booking {
    /// Checks in the passengers in `seats` (every passenger when `None`) of a
    /// confirmed booking while `window` is open for `departure`, giving those not
    /// checked in yet the numbers `next` hands out, in booking order. Returns the
    /// seats asked for; checking in again changes nothing.
    pub fn check_in(
        &mut self,
        seats: Option<&[SeatId]>,
        window: (&Window, Millis),
        mut next: impl FnMut() -> u64,
        now: Millis,
    ) -> Result<Vec<SeatId>, DomainError> {
        if self.status != BookingStatus::Confirmed {
            return Err(DomainError::InvalidState(format!(
                "booking is {}, only a confirmed booking can be checked in",
                self.status.as_str()
            )));
        }
        let (window, departure) = window;
        window.check(departure, now)?;
        let chosen: Vec<SeatId> = match seats {
            None => self.seats.iter().map(|s| s.seat).collect(),
            Some([]) => return Err(DomainError::Invalid("seats must not be empty".into())),
            Some(list) => {
                if let Some(s) = list
                    .iter()
                    .find(|s| !self.seats.iter().any(|b| b.seat == **s))
                {
                    return Err(DomainError::Invalid(format!(
                        "seat {s} is not on this booking"
                    )));
                }
                list.to_vec()
            }
        };
        let mut changed = false;
        for s in self.seats.iter_mut().filter(|s| chosen.contains(&s.seat)) {
            if s.check_in.is_none() {
                s.check_in = Some(CheckIn {
                    sequence: next(),
                    at: now,
                });
                changed = true;
            }
        }
        if changed {
            self.updated_at = now;
        }
        Ok(chosen)
    }

    /// Whether a passenger still on the booking (one of `seats`) holds a valid
    /// boarding pass: checked in, on a booking still confirmed, for a flight (when
    /// known) not cancelled. A cancelled passenger's pass is void, and so is every
    /// pass of a cancelled flight while its refund is still being made.
    pub fn checked_in(&self, s: &BookedSeat, flight: Option<&Flight>) -> bool {
        self.status == BookingStatus::Confirmed
            && s.check_in.is_some()
            && flight.is_none_or(|f| f.cancelled.is_none())
    }

    /// The valid boarding passes of the booking, in booking order, limited to `only`
    /// when given.
    pub fn boarding_passes(&self, flight: &Flight, only: Option<&[SeatId]>) -> Vec<BoardingPass> {
        let number = bcbp::flight_number(&flight.number).unwrap_or(0);
        self.seats
            .iter()
            .filter(|s| only.is_none_or(|o| o.contains(&s.seat)))
            .filter_map(|s| Some((s, s.check_in.filter(|_| self.checked_in(s, Some(flight)))?)))
            .map(|(s, c)| BoardingPass {
                seat: s.seat,
                passenger: s.passenger.clone(),
                sequence: c.sequence,
                bcbp: bcbp::encode(&bcbp::Pass {
                    passenger: &s.passenger,
                    locator: self.locator.as_str(),
                    from: &flight.from,
                    to: &flight.to,
                    flight_number: number,
                    departs_at: flight.departs_at,
                    cabin: s.cabin,
                    seat: s.seat,
                    sequence: c.sequence,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cabin, FlightId, Locator, Money, TicketNumber, UserId};

    const H: Millis = 3_600_000;
    const M: Millis = 60_000;
    /// A window of 30 hours to 45 minutes, with a departure in 10 hours.
    const OPEN: (&Window, Millis) = (
        &Window {
            opens_before: 30 * H,
            closes_before: 45 * M,
        },
        10 * H,
    );

    fn seat(s: &str) -> SeatId {
        SeatId::parse(s).unwrap()
    }

    fn confirmed() -> Booking {
        let mut b = Booking::hold(
            Locator::parse("ABCDEF").unwrap(),
            UserId(1),
            FlightId::parse("JW100-20261201").unwrap(),
            vec![
                (seat("12A"), Cabin::Economy, Money::cents(100).unwrap()),
                (seat("12B"), Cabin::Economy, Money::cents(100).unwrap()),
            ],
            vec!["Ada Lovelace".into(), "Alan Turing".into()],
            0,
            600_000,
        )
        .unwrap();
        let tickets = (0..2).map(|i| TicketNumber::new(729, i)).collect();
        b.confirm(tickets, "O".into(), 1).unwrap();
        b
    }

    fn flight() -> Flight {
        Flight {
            id: FlightId::parse("JW100-20261201").unwrap(),
            number: "JW100".into(),
            departs_at: 1_796_109_300_000,
            arrives_at: 1_796_113_800_000,
            ..crate::domain::flight::sample()
        }
    }

    fn counter(start: u64) -> impl FnMut() -> u64 {
        let mut n = start;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn the_window_opens_30_hours_and_closes_45_minutes_before() {
        let w = Window::new(30, 45);
        let dep = 100 * H;
        assert_eq!(
            w.check(dep, dep - 30 * H - 1),
            Err(DomainError::CheckinClosed)
        );
        assert_eq!(w.check(dep, dep - 30 * H), Ok(()));
        assert_eq!(w.check(dep, dep - 45 * M - 1), Ok(()));
        assert_eq!(w.check(dep, dep - 45 * M), Err(DomainError::CheckinClosed));
        assert_eq!(w.check(dep, dep + H), Err(DomainError::CheckinClosed));
    }

    #[test]
    fn partial_then_full_check_in_numbers_in_order() {
        let mut b = confirmed();
        let mut next = counter(6);
        assert_eq!(
            b.check_in(Some(&[seat("12B")]), OPEN, &mut next, 5)
                .unwrap(),
            [seat("12B")]
        );
        assert!(!b.checked_in(&b.seats[0], None) && b.checked_in(&b.seats[1], None));
        assert_eq!(b.updated_at, 5);
        let all = b.check_in(None, OPEN, &mut next, 6).unwrap();
        assert_eq!(all, [seat("12A"), seat("12B")]);
        let seqs: Vec<_> = b
            .seats
            .iter()
            .map(|s| s.check_in.unwrap().sequence)
            .collect();
        assert_eq!(seqs, [8, 7]);
        // again: the same passes, no number used
        b.check_in(None, OPEN, || unreachable!(), 7).unwrap();
        assert_eq!(b.updated_at, 6);
        let passes = b.boarding_passes(&flight(), None);
        assert_eq!(passes.len(), 2);
        assert_eq!(passes[0].sequence, 8);
        assert_eq!(
            passes[0].bcbp,
            "M1LOVELACE/ADA        EABCDEF LHRCDGJW 0100 335Y012A0008 100"
        );
        let only = b.boarding_passes(&flight(), Some(&[seat("12B")]));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].passenger, "Alan Turing");
    }

    #[test]
    fn only_a_confirmed_booking_and_its_own_seats() {
        let mut b = confirmed();
        assert!(matches!(
            b.check_in(Some(&[seat("1A")]), OPEN, counter(0), 1),
            Err(DomainError::Invalid(_))
        ));
        assert!(matches!(
            b.check_in(Some(&[]), OPEN, counter(0), 1),
            Err(DomainError::Invalid(_))
        ));
        assert!(b.seats.iter().all(|s| s.check_in.is_none()));
        let (w, dep) = OPEN;
        assert_eq!(
            b.check_in(None, (w, dep), counter(0), dep - 45 * M),
            Err(DomainError::CheckinClosed)
        );
        assert_eq!(
            b.check_in(None, (w, dep), counter(0), dep - 31 * H),
            Err(DomainError::CheckinClosed)
        );
        b.status = BookingStatus::Held;
        assert!(matches!(
            b.check_in(None, OPEN, counter(0), 1),
            Err(DomainError::InvalidState(_))
        ));
    }

    #[test]
    fn a_checked_in_passenger_keeps_the_seat_and_a_cancellation_voids_the_pass() {
        let mut b = confirmed();
        b.check_in(Some(&[seat("12A")]), OPEN, counter(0), 1)
            .unwrap();
        assert_eq!(
            b.change_seat(seat("12A"), seat("14A"), Cabin::Economy, 2),
            Err(DomainError::CheckedIn)
        );
        b.change_seat(seat("12B"), seat("14B"), Cabin::Economy, 2)
            .unwrap();
        b.refund(&[seat("12A")], Money::ZERO, 3).unwrap();
        assert!(b.boarding_passes(&flight(), None).is_empty());
        b.check_in(None, OPEN, counter(1), 4).unwrap();
        let passes = b.boarding_passes(&flight(), None);
        assert_eq!(passes.len(), 1);
        assert_eq!((passes[0].seat, passes[0].sequence), (seat("14B"), 2));
        b.refund(&[seat("14B")], Money::ZERO, 5).unwrap();
        assert_eq!(b.status, BookingStatus::Refunded);
        assert!(b.boarding_passes(&flight(), None).is_empty());
        assert!(!b.checked_in(&b.seats[0], None));
    }

    /// A cancelled flight's passes are void at once, before its refunds are made.
    #[test]
    fn a_cancelled_flights_passes_are_void() {
        let mut b = confirmed();
        b.check_in(None, OPEN, counter(0), 1).unwrap();
        let mut f = flight();
        assert_eq!(b.boarding_passes(&f, None).len(), 2);
        assert!(b.checked_in(&b.seats[0], Some(&f)));
        f.cancel("weather".into(), 2).unwrap();
        assert!(b.boarding_passes(&f, None).is_empty());
        assert!(!b.checked_in(&b.seats[0], Some(&f)));
        assert!(b.checked_in(&b.seats[0], None), "no flight at hand");
    }
}
