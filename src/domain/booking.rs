//! Bookings, orders and the booking state machine:
//!
//! ```text
//! held ──pay──▶ confirmed ──cancel──▶ refunded
//!  │ │              └─cancel some seats─▶ confirmed (order partially_refunded)
//!  │ └─cancel──▶ cancelled
//!  └──ttl──▶ expired
//! ```

use serde::{Deserialize, Serialize};

use super::checkin::CheckIn;
use super::{
    fare, Cabin, DomainError, FlightId, Locator, Millis, Money, SeatId, TicketNumber, UserId,
};

pub const MAX_SEATS_PER_BOOKING: usize = 9;
pub const MAX_PASSENGER_NAME: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    Held,
    Confirmed,
    Cancelled,
    Expired,
    Refunded,
}

impl BookingStatus {
    /// Every status, in declaration order ([`BookingStatus::index`]).
    pub const ALL: [BookingStatus; 5] = [
        BookingStatus::Held,
        BookingStatus::Confirmed,
        BookingStatus::Cancelled,
        BookingStatus::Expired,
        BookingStatus::Refunded,
    ];

    /// The position in [`BookingStatus::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Held => "held",
            BookingStatus::Confirmed => "confirmed",
            BookingStatus::Cancelled => "cancelled",
            BookingStatus::Expired => "expired",
            BookingStatus::Refunded => "refunded",
        }
    }

    /// Whether the booking still occupies its seats.
    pub fn occupies_seats(self) -> bool {
        matches!(self, BookingStatus::Held | BookingStatus::Confirmed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookedSeat {
    pub seat: SeatId,
    pub cabin: Cabin,
    pub passenger: String,
    pub fare: Money,
    #[serde(default)]
    pub ticket_number: Option<TicketNumber>,
    #[serde(default)]
    pub check_in: Option<CheckIn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub locator: Locator,
    pub user_id: UserId,
    pub flight_id: FlightId,
    pub status: BookingStatus,
    /// Passengers still on the booking.
    pub seats: Vec<BookedSeat>,
    /// Passengers cancelled one by one from a confirmed booking.
    #[serde(default)]
    pub cancelled_seats: Vec<BookedSeat>,
    pub total: Money,
    pub hold_expires_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default)]
    pub refund: Option<Money>,
    #[serde(default)]
    pub order_id: Option<String>,
}

/// Validates a passenger name: 1-64 characters, trimmed, at least one letter (of any
/// script), no control characters, and none of the invisible ones that hide or
/// reorder what a name shows: a zero-width space, a word joiner, a byte order mark,
/// the bidirectional embeddings, overrides and isolates. (The zero-width joiner and
/// non-joiner, which some scripts' names need, are kept.)
pub fn passenger_name(name: &str) -> Result<String, DomainError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_PASSENGER_NAME || n.chars().any(char::is_control) {
        return Err(DomainError::Invalid(format!(
            "passenger name must be 1-{MAX_PASSENGER_NAME} characters"
        )));
    }
    let hiding = |c: char| matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if n.chars().any(hiding) {
        return Err(DomainError::Invalid(
            "passenger name must not contain invisible or direction-changing characters".into(),
        ));
    }
    if !n.chars().any(char::is_alphabetic) {
        return Err(DomainError::Invalid(
            "passenger name must contain a letter".into(),
        ));
    }
    Ok(n.to_owned())
}

impl Booking {
    /// A new hold of `seats` (with their cabins and fares) for `passengers`, in order.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        locator: Locator,
        user_id: UserId,
        flight_id: FlightId,
        seats: Vec<(SeatId, Cabin, Money)>,
        passengers: Vec<String>,
        now: Millis,
        ttl_ms: Millis,
    ) -> Result<Booking, DomainError> {
        if seats.is_empty() || seats.len() > MAX_SEATS_PER_BOOKING {
            return Err(DomainError::Invalid(format!(
                "a booking holds 1 to {MAX_SEATS_PER_BOOKING} seats"
            )));
        }
        if seats.len() != passengers.len() {
            return Err(DomainError::Invalid(
                "give exactly one passenger per seat".into(),
            ));
        }
        let seats: Vec<BookedSeat> = seats
            .into_iter()
            .zip(passengers)
            .map(|((seat, cabin, fare), passenger)| BookedSeat {
                seat,
                cabin,
                passenger,
                fare,
                ticket_number: None,
                check_in: None,
            })
            .collect();
        Ok(Booking {
            locator,
            user_id,
            flight_id,
            status: BookingStatus::Held,
            total: Money::sum(seats.iter().map(|s| s.fare))?,
            seats,
            cancelled_seats: Vec::new(),
            hold_expires_at: Some(now + ttl_ms),
            created_at: now,
            updated_at: now,
            refund: None,
            order_id: None,
        })
    }

    /// Refuses any state but `want`.
    fn require(&self, want: BookingStatus) -> Result<(), DomainError> {
        if self.status == want {
            Ok(())
        } else {
            Err(DomainError::InvalidState(format!(
                "booking is {}",
                self.status.as_str()
            )))
        }
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        self.status == BookingStatus::Held && self.hold_expires_at.is_some_and(|t| now >= t)
    }

    /// Checks that the booking can be paid now.
    pub fn check_payable(&self, now: Millis) -> Result<(), DomainError> {
        match self.status {
            BookingStatus::Held if self.is_expired(now) => Err(DomainError::HoldExpired),
            BookingStatus::Held => Ok(()),
            BookingStatus::Expired => Err(DomainError::HoldExpired),
            s => Err(DomainError::InvalidState(format!(
                "booking is {}, only a held booking can be paid",
                s.as_str()
            ))),
        }
    }

    /// Held → confirmed, with one ticket per passenger.
    pub fn confirm(
        &mut self,
        tickets: Vec<TicketNumber>,
        order_id: String,
        now: Millis,
    ) -> Result<(), DomainError> {
        self.require(BookingStatus::Held)?;
        if tickets.len() != self.seats.len() {
            return Err(DomainError::Invalid("one ticket per passenger".into()));
        }
        for (s, t) in self.seats.iter_mut().zip(tickets) {
            s.ticket_number = Some(t);
        }
        self.status = BookingStatus::Confirmed;
        self.hold_expires_at = None;
        self.order_id = Some(order_id);
        self.updated_at = now;
        Ok(())
    }

    /// Held → expired, once the hold is due.
    pub fn expire(&mut self, now: Millis) -> Result<(), DomainError> {
        if !self.is_expired(now) {
            return Err(DomainError::InvalidState("hold is not due".into()));
        }
        self.status = BookingStatus::Expired;
        self.updated_at = now;
        Ok(())
    }

    /// Held → cancelled (the seats are simply released).
    pub fn release(&mut self, now: Millis) -> Result<(), DomainError> {
        self.require(BookingStatus::Held)?;
        self.status = BookingStatus::Cancelled;
        self.updated_at = now;
        Ok(())
    }

    /// What cancelling `seats` (all passengers when `None`) of a confirmed booking
    /// refunds at `now` under the fare rule, and which seats that is.
    pub fn refund_quote(
        &self,
        seats: Option<&[SeatId]>,
        departs_at: Millis,
        now: Millis,
    ) -> Result<(Vec<SeatId>, Money), DomainError> {
        self.require(BookingStatus::Confirmed)?;
        if now >= departs_at {
            return Err(DomainError::InvalidState(
                "the flight's scheduled departure (departs_at) has passed; the booking can no longer be cancelled".into(),
            ));
        }
        let chosen: Vec<SeatId> = match seats {
            None => self.seats.iter().map(|s| s.seat).collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(DomainError::Invalid("seats must not be empty".into()));
                }
                let mut out: Vec<SeatId> = Vec::new();
                for s in list {
                    if !self.seats.iter().any(|b| b.seat == *s) {
                        return Err(DomainError::Invalid(format!(
                            "seat {s} is not on this booking"
                        )));
                    }
                    if !out.contains(s) {
                        out.push(*s);
                    }
                }
                out
            }
        };
        let amount = Money::sum(
            self.seats
                .iter()
                .filter(|b| chosen.contains(&b.seat))
                .map(|b| fare::refund(b.cabin, b.fare, departs_at, now)),
        )?;
        Ok((chosen, amount))
    }

    /// Cancels `seats` of a confirmed booking with `amount` refunded. Cancelling all
    /// remaining passengers makes the booking `refunded` (they stay in `seats`);
    /// cancelling some moves them to `cancelled_seats`.
    pub fn refund(
        &mut self,
        seats: &[SeatId],
        amount: Money,
        now: Millis,
    ) -> Result<(), DomainError> {
        self.require(BookingStatus::Confirmed)?;
        if self.seats.iter().all(|b| seats.contains(&b.seat)) {
            self.status = BookingStatus::Refunded;
        } else {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.seats)
                .into_iter()
                .partition(|b| seats.contains(&b.seat));
            self.seats = kept;
            self.cancelled_seats.extend(gone);
        }
        self.refund = Some(
            self.refund
                .unwrap_or(Money::ZERO)
                .checked_add(amount)
                .unwrap_or(amount),
        );
        self.updated_at = now;
        Ok(())
    }

    /// Moves the passenger in `from` to `to` on a confirmed booking.
    pub fn change_seat(
        &mut self,
        from: SeatId,
        to: SeatId,
        to_cabin: Cabin,
        now: Millis,
    ) -> Result<(), DomainError> {
        self.require(BookingStatus::Confirmed)?;
        let on_booking = self.seats.iter().any(|b| b.seat == to);
        let s = self
            .seats
            .iter_mut()
            .find(|b| b.seat == from)
            .ok_or_else(|| DomainError::Invalid(format!("seat {from} is not on this booking")))?;
        // a checked-in passenger's seat is final, whatever the seat asked for
        if s.check_in.is_some() {
            return Err(DomainError::CheckedIn);
        }
        if on_booking {
            return Err(DomainError::SeatTaken(to));
        }
        if s.cabin != to_cabin {
            return Err(DomainError::Invalid(format!(
                "seat {to} is in {}, the passenger travels {}",
                to_cabin.as_str(),
                s.cabin.as_str()
            )));
        }
        s.seat = to;
        self.updated_at = now;
        Ok(())
    }

    /// The seats the booking currently occupies.
    pub fn occupied_seats(&self) -> impl Iterator<Item = SeatId> + '_ {
        self.seats
            .iter()
            .filter(|_| self.status.occupies_seats())
            .map(|s| s.seat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Paid,
    Refunded,
    PartiallyRefunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Paid => "paid",
            OrderStatus::Refunded => "refunded",
            OrderStatus::PartiallyRefunded => "partially_refunded",
        }
    }
}

/// The money side of a confirmed booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub locator: Locator,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub amount: Money,
    pub refunded: Money,
    pub created_at: Millis,
    /// The gateway's reference for the charge (never card data).
    pub charge_id: String,
}

impl Order {
    /// Adds a refund; the order is `refunded` once the booking has no passenger
    /// left (whatever the fare rule paid back), `partially_refunded` before that.
    pub fn record_refund(&mut self, amount: Money, booking_closed: bool) {
        self.refunded = self
            .refunded
            .checked_add(amount)
            .unwrap_or(self.amount)
            .min(self.amount);
        self.status = if booking_closed {
            OrderStatus::Refunded
        } else {
            OrderStatus::PartiallyRefunded
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3600 * 1000;

    fn seat(s: &str) -> SeatId {
        SeatId::parse(s).unwrap()
    }

    fn held(now: Millis) -> Booking {
        Booking::hold(
            Locator::parse("ABCDEF").unwrap(),
            UserId(1),
            FlightId::parse("JW1-20260101").unwrap(),
            vec![
                (seat("12A"), Cabin::Economy, Money::cents(10_000).unwrap()),
                (seat("2C"), Cabin::Business, Money::cents(40_000).unwrap()),
            ],
            vec!["Ada".into(), "Alan".into()],
            now,
            600_000,
        )
        .unwrap()
    }

    fn tickets(n: u64) -> Vec<TicketNumber> {
        (0..n).map(|i| TicketNumber::new(729, i)).collect()
    }

    /// A total no amount could hold is refused: it was stored, and then no read of
    /// the booking (nor the next start, which reads every booking) could decode it.
    #[test]
    fn a_hold_whose_total_is_above_the_largest_amount_is_refused() {
        let top = Money::cents(Money::MAX_CENTS).unwrap();
        let hold = |fares: &[Money]| {
            Booking::hold(
                Locator::parse("ABCDEF").unwrap(),
                UserId(1),
                FlightId::parse("JW1-20260101").unwrap(),
                fares
                    .iter()
                    .zip(["1A", "1C"])
                    .map(|(f, s)| (seat(s), Cabin::Business, *f))
                    .collect(),
                fares.iter().map(|_| "Ada".to_string()).collect(),
                0,
                600_000,
            )
        };
        let one = hold(&[top]).unwrap();
        let back: Booking = serde_json::from_slice(&serde_json::to_vec(&one).unwrap()).unwrap();
        assert_eq!(back.total, top);
        assert!(matches!(
            hold(&[top, Money::cents(1).unwrap()]),
            Err(DomainError::Invalid(_))
        ));
    }

    #[test]
    fn hold_computes_total_and_expiry() {
        let b = held(1000);
        assert_eq!(b.status, BookingStatus::Held);
        assert_eq!(b.total.amount(), 50_000);
        assert_eq!(b.hold_expires_at, Some(601_000));
        assert!(!b.is_expired(600_999));
        assert!(b.is_expired(601_000));
    }

    #[test]
    fn hold_rejects_bad_shapes() {
        let mk = |n_seats: usize, n_pax: usize| {
            Booking::hold(
                Locator::parse("ABCDEF").unwrap(),
                UserId(1),
                FlightId::parse("JW1-20260101").unwrap(),
                (0..n_seats)
                    .map(|i| {
                        (
                            SeatId::new(10 + i as u8, 'A').unwrap(),
                            Cabin::Economy,
                            Money::ZERO,
                        )
                    })
                    .collect(),
                (0..n_pax).map(|i| format!("P{i}")).collect(),
                0,
                1,
            )
        };
        assert!(mk(0, 0).is_err());
        assert!(mk(10, 10).is_err());
        assert!(mk(2, 1).is_err());
        assert!(mk(9, 9).is_ok());
    }

    #[test]
    fn pay_confirms_with_tickets_only_when_held_and_live() {
        let mut b = held(0);
        assert_eq!(b.check_payable(599_999), Ok(()));
        assert_eq!(b.check_payable(600_000), Err(DomainError::HoldExpired));
        b.confirm(tickets(2), "O1".into(), 10).unwrap();
        assert_eq!(b.status, BookingStatus::Confirmed);
        assert!(b.seats.iter().all(|s| s.ticket_number.is_some()));
        assert_eq!(b.hold_expires_at, None);
        assert!(matches!(
            b.check_payable(20),
            Err(DomainError::InvalidState(_))
        ));
        assert!(b.confirm(tickets(2), "O2".into(), 30).is_err());
    }

    #[test]
    fn confirm_needs_one_ticket_per_passenger() {
        let mut b = held(0);
        assert!(b.confirm(tickets(1), "O".into(), 1).is_err());
        assert_eq!(b.status, BookingStatus::Held);
    }

    #[test]
    fn expire_only_when_due_and_held() {
        let mut b = held(0);
        assert!(b.expire(599_999).is_err());
        b.expire(600_000).unwrap();
        assert_eq!(b.status, BookingStatus::Expired);
        assert_eq!(b.check_payable(0), Err(DomainError::HoldExpired));
        assert!(b.release(1).is_err());
        assert_eq!(b.occupied_seats().count(), 0);
    }

    #[test]
    fn release_cancels_a_hold() {
        let mut b = held(0);
        b.release(5).unwrap();
        assert_eq!(b.status, BookingStatus::Cancelled);
        assert!(b.release(6).is_err());
        assert!(b.refund_quote(None, 100 * H, 0).is_err());
    }

    #[test]
    fn full_refund_follows_fare_rule() {
        let mut b = held(0);
        b.confirm(tickets(2), "O".into(), 0).unwrap();
        let dep = 10 * H;
        let (seats, amount) = b.refund_quote(None, dep, 0).unwrap();
        assert_eq!(seats.len(), 2);
        // economy within 24 h: half of 100.00; business: full 400.00
        assert_eq!(amount.amount(), 5_000 + 40_000);
        b.refund(&seats, amount, 1).unwrap();
        assert_eq!(b.status, BookingStatus::Refunded);
        assert_eq!(b.refund, Some(amount));
        assert_eq!(
            b.seats.len(),
            2,
            "a fully refunded booking keeps its passengers"
        );
        assert_eq!(b.occupied_seats().count(), 0);
        assert!(b.refund_quote(None, dep, 2).is_err());
    }

    #[test]
    fn partial_refund_keeps_the_rest_confirmed() {
        let mut b = held(0);
        b.confirm(tickets(2), "O".into(), 0).unwrap();
        let (seats, amount) = b.refund_quote(Some(&[seat("12A")]), 100 * H, 0).unwrap();
        assert_eq!(amount.amount(), 10_000);
        b.refund(&seats, amount, 1).unwrap();
        assert_eq!(b.status, BookingStatus::Confirmed);
        assert_eq!(b.seats.len(), 1);
        assert_eq!(b.cancelled_seats.len(), 1);
        assert!(b.refund_quote(Some(&[seat("12A")]), 100 * H, 2).is_err());
        assert!(b.refund_quote(Some(&[]), 100 * H, 2).is_err());
    }

    #[test]
    fn no_cancellation_after_departure() {
        let mut b = held(0);
        b.confirm(tickets(2), "O".into(), 0).unwrap();
        assert!(matches!(
            b.refund_quote(None, 10, 10),
            Err(DomainError::InvalidState(_))
        ));
    }

    #[test]
    fn change_seat_stays_in_cabin() {
        let mut b = held(0);
        assert!(b
            .change_seat(seat("12A"), seat("14A"), Cabin::Economy, 1)
            .is_err());
        b.confirm(tickets(2), "O".into(), 0).unwrap();
        assert!(b
            .change_seat(seat("12A"), seat("2A"), Cabin::Business, 1)
            .is_err());
        assert!(b
            .change_seat(seat("30A"), seat("14A"), Cabin::Economy, 1)
            .is_err());
        assert_eq!(
            b.change_seat(seat("12A"), seat("2C"), Cabin::Economy, 1),
            Err(DomainError::SeatTaken(seat("2C")))
        );
        b.change_seat(seat("12A"), seat("14A"), Cabin::Economy, 1)
            .unwrap();
        assert!(b.occupied_seats().any(|s| s == seat("14A")));
    }

    #[test]
    fn order_refunds_accumulate() {
        let mut o = Order {
            order_id: "O".into(),
            locator: Locator::parse("ABCDEF").unwrap(),
            user_id: UserId(1),
            status: OrderStatus::Paid,
            amount: Money::cents(100).unwrap(),
            refunded: Money::ZERO,
            created_at: 0,
            charge_id: "ch".into(),
        };
        o.record_refund(Money::cents(40).unwrap(), false);
        assert_eq!(o.status, OrderStatus::PartiallyRefunded);
        o.record_refund(Money::cents(30).unwrap(), true);
        assert_eq!(o.status, OrderStatus::Refunded);
        assert_eq!(o.refunded.amount(), 70);
        o.record_refund(Money::cents(500).unwrap(), true);
        assert_eq!(o.refunded.amount(), 100, "never more than was paid");
    }

    #[test]
    fn passenger_names_are_checked() {
        assert_eq!(passenger_name("  Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert!(passenger_name("").is_err());
        assert!(passenger_name("   ").is_err());
        assert!(passenger_name(&"x".repeat(65)).is_err());
        assert!(passenger_name("a\u{0}b").is_err());
        for hidden in [
            "\u{200b}",
            "\u{202e}evil",
            "Ada\u{2066}Lovelace",
            "\u{feff}Ada",
            "12 34",
            "\u{301}\u{301}",
        ] {
            assert!(passenger_name(hidden).is_err(), "{hidden:?}");
        }
        for fine in [
            "李 小龙",
            "Дмитрий Иванов",
            "Zoë O'Brien-Smith",
            "مهسا\u{200c}زاده",
            "X Æ A-12",
        ] {
            assert_eq!(passenger_name(fine).unwrap(), fine);
        }
    }
}
