//! Pure booking domain: identifiers, money, aircraft layouts, flights, bookings and
//! their state machine, the refund rule, check-in and boarding passes, and the demo
//! schedule. No I/O, no async.

pub mod aircraft;
pub mod bcbp;
pub mod booking;
pub mod checkin;
pub mod fare;
pub mod flight;
pub mod ids;
pub mod money;
pub mod schedule;
pub mod seating;
pub mod waitlist;

pub use aircraft::{Aircraft, Cabin, SeatInfo};
pub use booking::{BookedSeat, Booking, BookingStatus, Order, OrderStatus};
pub use flight::{Fares, Flight, FlightStatus, SeatStatus};
pub use ids::{FlightId, Locator, RequestId, SeatId, TicketNumber, UserId, Username};
pub use money::Money;
pub use waitlist::{WaitlistEntry, WaitlistStatus};

/// A rule of the domain was broken; each variant maps to one wire error reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("the hold has expired")]
    HoldExpired,
    #[error("check-in is not open for this flight now")]
    CheckinClosed,
    #[error("the passenger is checked in; the seat can no longer be changed")]
    CheckedIn,
    #[error("seat {0} is taken")]
    SeatTaken(SeatId),
}

/// Milliseconds since the Unix epoch, UTC: the one time type of the domain.
pub type Millis = i64;

/// Formats a timestamp as RFC 3339 in UTC to the millisecond, e.g.
/// `2026-11-25T19:04:05Z` or `2026-11-25T19:04:05.25Z`.
pub fn rfc3339(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 timestamp into milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// The UTC calendar date (`YYYY-MM-DD`) of a timestamp.
pub fn date_of(ms: Millis) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date()
}

/// Current wall-clock time in milliseconds.
pub fn now_ms() -> Millis {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_to_the_millisecond() {
        for ms in [1_795_000_000_000, 1_795_000_000_001, 1_795_000_000_250] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn date_of_uses_utc() {
        assert_eq!(date_of(0).to_string(), "1970-01-01");
        assert_eq!(date_of(86_399_999).to_string(), "1970-01-01");
        assert_eq!(date_of(86_400_000).to_string(), "1970-01-02");
    }
}
