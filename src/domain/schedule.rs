//! The demo schedule an empty database is seeded with: daily flights on 24 routes
//! between 12 European airports, for 14 days from a given date.

use time::{Date, Duration, Time};

use super::flight::Fares;
use super::{Flight, FlightId, Millis, Money};

/// (from, to, block minutes, aircraft, departure hour UTC, minute)
const PAIRS: &[(&str, &str, i64, &str, u8, u8)] = &[
    ("LHR", "CDG", 75, "A320", 7, 15),
    ("LHR", "FRA", 95, "B789", 8, 40),
    ("LHR", "MAD", 140, "B789", 10, 5),
    ("LHR", "DUB", 80, "E190", 6, 30),
    ("CDG", "FCO", 125, "A320", 9, 50),
    ("CDG", "AMS", 80, "E190", 12, 20),
    ("FRA", "VIE", 80, "A320", 13, 45),
    ("FRA", "BCN", 120, "A320", 15, 10),
    ("AMS", "CPH", 85, "E190", 16, 35),
    ("MUC", "ZRH", 55, "E190", 17, 55),
    ("MAD", "FCO", 150, "B789", 11, 25),
    ("ZRH", "BCN", 110, "A320", 18, 40),
];

/// Daily flights on every route in both directions for `days` days from `first_day`.
pub fn demo_schedule(first_day: Date, days: u32) -> Vec<Flight> {
    let mut out = Vec::new();
    for day in 0..days {
        let date = first_day + Duration::days(day as i64);
        for (i, &(a, b, minutes, aircraft, hour, minute)) in PAIRS.iter().enumerate() {
            for (dir, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
                let number = format!("JW{}", 100 + 2 * i + dir);
                // the return leg leaves a turnaround after the outbound one lands
                let dep_minutes = hour as i64 * 60 + minute as i64 + dir as i64 * (minutes + 55);
                out.push(flight(
                    date,
                    &number,
                    from,
                    to,
                    dep_minutes,
                    minutes,
                    aircraft,
                ));
            }
        }
    }
    out
}

fn flight(
    date: Date,
    number: &str,
    from: &str,
    to: &str,
    dep_minutes: i64,
    minutes: i64,
    aircraft: &str,
) -> Flight {
    let midnight = date.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp() * 1000;
    let departs_at: Millis = midnight + dep_minutes * 60_000;
    let economy = 4_900 + minutes * 75;
    let id = format!(
        "{number}-{:04}{:02}{:02}",
        date.year(),
        date.month() as u8,
        date.day()
    );
    Flight::scheduled(
        FlightId::parse(&id).unwrap_or_else(|_| unreachable_id()),
        number.to_owned(),
        (from.to_owned(), to.to_owned()),
        (departs_at, departs_at + minutes * 60_000),
        aircraft.to_owned(),
        Fares {
            economy: Money::cents(economy).unwrap_or(Money::ZERO),
            business: Money::cents(economy * 7 / 2).unwrap_or(Money::ZERO),
        },
    )
}

fn unreachable_id() -> FlightId {
    // numbers and dates above always form a valid id
    FlightId::parse("JW0-00000000").unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aircraft::FLEET;
    use crate::domain::flight::airport;
    use std::collections::HashSet;
    use time::macros::date;

    #[test]
    fn schedule_is_realistic() {
        let flights = demo_schedule(date!(2026 - 11 - 25), 14);
        assert_eq!(flights.len(), 14 * PAIRS.len() * 2);
        let routes: HashSet<_> = flights
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect();
        assert!(routes.len() >= 20);
        let airports: HashSet<_> = flights.iter().map(|f| f.from.clone()).collect();
        assert!(airports.len() >= 8);
        assert!(airports.iter().all(|a| airport(a).is_some()));
        let types: HashSet<_> = flights.iter().map(|f| f.aircraft.clone()).collect();
        assert!(types.len() >= 2 && types.iter().all(|t| FLEET.iter().any(|a| a.code == t)));
        let ids: HashSet<_> = flights.iter().map(|f| f.id.clone()).collect();
        assert_eq!(ids.len(), flights.len());
        for f in &flights {
            assert!(f.arrives_at > f.departs_at);
            assert!(f.fares.business > f.fares.economy);
            assert_ne!(f.from, f.to);
        }
    }

    #[test]
    fn check_in_is_open_for_some_flight_at_any_time_of_the_first_day() {
        let day = date!(2026 - 11 - 25);
        let flights = demo_schedule(day, 14);
        let window = crate::domain::checkin::Window::new(30, 45);
        let midnight = flights[0].departs_at - flights[0].departs_at.rem_euclid(86_400_000);
        for minute in (0..24 * 60).step_by(5) {
            let now = midnight + minute * 60_000;
            let open = flights
                .iter()
                .filter(|f| window.check(f.departs_at, now).is_ok())
                .count();
            assert!(open >= 10, "only {open} flights open at minute {minute}");
        }
    }

    #[test]
    fn schedule_starts_on_the_given_day() {
        let flights = demo_schedule(date!(2026 - 11 - 25), 1);
        assert!(flights.iter().all(|f| f.id.as_str().ends_with("-20261125")));
        assert_eq!(
            crate::domain::date_of(flights[0].departs_at),
            date!(2026 - 11 - 25)
        );
    }
}
