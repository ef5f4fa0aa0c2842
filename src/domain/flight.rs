//! Flights, airports and fares.

use serde::{Deserialize, Serialize};

use super::{Aircraft, Cabin, DomainError, FlightId, Millis, Money};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlightStatus {
    #[default]
    Scheduled,
    Delayed,
    Boarding,
    Departed,
    Cancelled,
}

impl FlightStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlightStatus::Scheduled => "scheduled",
            FlightStatus::Delayed => "delayed",
            FlightStatus::Boarding => "boarding",
            FlightStatus::Departed => "departed",
            FlightStatus::Cancelled => "cancelled",
        }
    }

    /// The contract's table of what each status allows.
    pub fn allows(self, op: Operation) -> bool {
        use FlightStatus::*;
        match op {
            Operation::Book => matches!(self, Scheduled | Delayed),
            Operation::CheckIn => matches!(self, Scheduled | Delayed | Boarding),
            Operation::Cancel | Operation::Refund => !matches!(self, Departed | Cancelled),
        }
    }
}

/// What a flight's status may allow or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `booking.hold`, `booking.pay`, `booking.change_seat`.
    Book,
    /// `booking.check_in`.
    CheckIn,
    /// `admin.flights.cancel`.
    Cancel,
    /// `booking.cancel` of a confirmed booking (the passenger's refund): not once the
    /// flight counts as departed, whatever its schedule says.
    Refund,
}

/// An `admin.flights.update`, parsed: new estimates and the status asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusUpdate {
    pub estimated_departs_at: Option<Millis>,
    pub estimated_arrives_at: Option<Millis>,
    pub status: Option<FlightStatus>,
    pub reason: Option<String>,
}

impl StatusUpdate {
    /// Whether it changes nothing (no estimate, no status: a `reason` alone).
    pub fn is_empty(&self) -> bool {
        self.estimated_departs_at.is_none()
            && self.estimated_arrives_at.is_none()
            && self.status.is_none()
    }
}

/// What anyone may know of a seat: whether it can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeatStatus {
    Available,
    Held,
    Booked,
}

impl SeatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SeatStatus::Available => "available",
            SeatStatus::Held => "held",
            SeatStatus::Booked => "booked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fares {
    pub economy: Money,
    pub business: Money,
}

impl Fares {
    pub fn of(&self, cabin: Cabin) -> Money {
        match cabin {
            Cabin::Economy => self.economy,
            Cabin::Business => self.business,
        }
    }
}

/// A scheduled flight; its seats live in the inventory. `departs_at`/`arrives_at` are
/// the schedule (the flight's identity); the airline's estimates are kept apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    pub id: FlightId,
    pub number: String,
    pub from: String,
    pub to: String,
    pub departs_at: Millis,
    pub arrives_at: Millis,
    pub aircraft: String,
    pub fares: Fares,
    /// The cancellation reason, once cancelled.
    #[serde(default)]
    pub cancelled: Option<String>,
    /// The stored status (`Cancelled` is kept in `cancelled`).
    #[serde(default)]
    pub stage: FlightStatus,
    #[serde(default)]
    pub estimated_departs_at: Option<Millis>,
    #[serde(default)]
    pub estimated_arrives_at: Option<Millis>,
    /// The reason given with the last status or time change.
    #[serde(default)]
    pub remark: Option<String>,
    /// Counts the record's changes, so that an older copy never replaces a newer one.
    #[serde(default)]
    pub revision: u64,
}

impl Flight {
    /// A flight as scheduled: no estimates, no remark, not cancelled, first revision.
    pub fn scheduled(
        id: FlightId,
        number: String,
        (from, to): (String, String),
        (departs_at, arrives_at): (Millis, Millis),
        aircraft: String,
        fares: Fares,
    ) -> Flight {
        Flight {
            id,
            number,
            from,
            to,
            departs_at,
            arrives_at,
            aircraft,
            fares,
            cancelled: None,
            stage: FlightStatus::Scheduled,
            estimated_departs_at: None,
            estimated_arrives_at: None,
            remark: None,
            revision: 0,
        }
    }

    /// The status as of `now`: the stored one, except that a flight whose departure
    /// has passed counts as departed before anyone marks it.
    pub fn status(&self, now: Millis) -> FlightStatus {
        if self.cancelled.is_some() {
            FlightStatus::Cancelled
        } else if self.stage == FlightStatus::Departed || now >= self.departure() {
            FlightStatus::Departed
        } else {
            self.stage
        }
    }

    /// When the flight leaves: the estimate if there is one, else the schedule.
    pub fn departure(&self) -> Millis {
        self.estimated_departs_at.unwrap_or(self.departs_at)
    }

    /// Orders flight numbers by number (`JW9` before `JW10`): every number is `JW`
    /// and digits without leading zeros, so the shorter is the smaller.
    pub fn number_order(&self) -> (usize, &str) {
        (self.number.len(), &self.number)
    }

    /// The order of a list of flights: by scheduled departure, then by number.
    pub fn schedule_order(&self) -> (Millis, (usize, &str)) {
        (self.departs_at, self.number_order())
    }

    /// Whether the flight's status as of `now` allows `op`; if not, the refusal names
    /// the status.
    pub fn check(&self, op: Operation, now: Millis) -> Result<(), DomainError> {
        let status = self.status(now);
        if status.allows(op) {
            Ok(())
        } else {
            Err(DomainError::InvalidState(format!(
                "flight {} is {}",
                self.number,
                status.as_str()
            )))
        }
    }

    /// True when `other` differs in what `flight.changed` announces: the stored
    /// status or the estimates.
    pub fn differs_in_status(&self, other: &Flight) -> bool {
        (self.stage, self.cancelled.is_some()) != (other.stage, other.cancelled.is_some())
            || self.estimated_departs_at != other.estimated_departs_at
            || self.estimated_arrives_at != other.estimated_arrives_at
    }

    /// The reason `flight.changed` gives for the record's last change.
    pub fn change_reason(&self) -> Option<&str> {
        self.cancelled.as_deref().or(self.remark.as_deref())
    }

    /// Cancels the flight, if its status allows that.
    pub fn cancel(&mut self, reason: String, now: Millis) -> Result<(), DomainError> {
        self.check(Operation::Cancel, now)?;
        self.cancelled = Some(reason);
        self.revision += 1;
        Ok(())
    }

    /// Marks a flight whose departure has passed as departed; false if there is
    /// nothing to mark.
    pub fn mark_departed(&mut self, now: Millis) -> bool {
        if self.cancelled.is_some()
            || self.stage == FlightStatus::Departed
            || now < self.departure()
        {
            return false;
        }
        self.stage = FlightStatus::Departed;
        self.remark = None;
        self.revision += 1;
        true
    }

    /// Whether the flight may still be updated at all: not once it has departed or
    /// been cancelled, whatever the update says.
    pub fn check_updatable(&self, now: Millis) -> Result<(), DomainError> {
        let current = self.status(now);
        if matches!(current, FlightStatus::Departed | FlightStatus::Cancelled) {
            return Err(DomainError::InvalidState(format!(
                "flight {} is {}: it can no longer be updated",
                self.number,
                current.as_str()
            )));
        }
        Ok(())
    }

    /// Applies an `admin.flights.update`: estimates (while scheduled, delayed or
    /// boarding) move the flight between `scheduled` and `delayed`; the status moves
    /// forward only, `scheduled`/`delayed` -> `boarding` -> `departed`.
    pub fn update(&mut self, u: &StatusUpdate, now: Millis) -> Result<(), DomainError> {
        self.check_updatable(now)?;
        let current = self.status(now);
        let refuse = |what: &str| {
            Err(DomainError::InvalidState(format!(
                "flight {} is {}: {what}",
                self.number,
                current.as_str()
            )))
        };
        let dep = u.estimated_departs_at.or(self.estimated_departs_at);
        let arr = u.estimated_arrives_at.or(self.estimated_arrives_at);
        if let Some(a) = arr {
            if a <= dep.unwrap_or(self.departs_at) {
                return Err(DomainError::Invalid(
                    "estimated_arrives_at must be after the departure".into(),
                ));
            }
        }
        let mut stage = current;
        if let Some(d) = u.estimated_departs_at {
            stage = match stage {
                FlightStatus::Scheduled if d > self.departs_at => FlightStatus::Delayed,
                FlightStatus::Delayed if d <= self.departs_at => FlightStatus::Scheduled,
                s => s,
            };
        }
        if let Some(next) = u.status {
            let forward = matches!(
                (stage, next),
                (
                    FlightStatus::Scheduled | FlightStatus::Delayed,
                    FlightStatus::Boarding
                ) | (FlightStatus::Boarding, FlightStatus::Departed)
            );
            if !forward {
                return refuse(&format!("it cannot become {}", next.as_str()));
            }
            stage = next;
        }
        if now >= dep.unwrap_or(self.departs_at) {
            // an estimate already passed: departed now, in this record (and its
            // push), not again by the departure tick
            stage = FlightStatus::Departed;
        }
        self.estimated_departs_at = dep;
        self.estimated_arrives_at = arr;
        self.stage = stage;
        self.remark = u.reason.clone();
        self.revision += 1;
        Ok(())
    }

    /// The layout of the flight's aircraft; an unknown code falls back to the first type.
    pub fn aircraft(&self) -> &'static Aircraft {
        Aircraft::by_code(&self.aircraft).unwrap_or(&super::aircraft::FLEET[0])
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Airport {
    pub code: &'static str,
    /// The IANA time zone.
    pub tz: &'static str,
    pub city: &'static str,
    pub name: &'static str,
}

pub static AIRPORTS: &[Airport] = &[
    Airport {
        code: "AMS",
        tz: "Europe/Amsterdam",
        city: "Amsterdam",
        name: "Schiphol",
    },
    Airport {
        code: "BCN",
        tz: "Europe/Madrid",
        city: "Barcelona",
        name: "El Prat",
    },
    Airport {
        code: "CDG",
        tz: "Europe/Paris",
        city: "Paris",
        name: "Charles de Gaulle",
    },
    Airport {
        code: "CPH",
        tz: "Europe/Copenhagen",
        city: "Copenhagen",
        name: "Kastrup",
    },
    Airport {
        code: "DUB",
        tz: "Europe/Dublin",
        city: "Dublin",
        name: "Dublin Airport",
    },
    Airport {
        code: "FCO",
        tz: "Europe/Rome",
        city: "Rome",
        name: "Fiumicino",
    },
    Airport {
        code: "FRA",
        tz: "Europe/Berlin",
        city: "Frankfurt",
        name: "Frankfurt am Main",
    },
    Airport {
        code: "LHR",
        tz: "Europe/London",
        city: "London",
        name: "Heathrow",
    },
    Airport {
        code: "MAD",
        tz: "Europe/Madrid",
        city: "Madrid",
        name: "Barajas",
    },
    Airport {
        code: "MUC",
        tz: "Europe/Berlin",
        city: "Munich",
        name: "Franz Josef Strauss",
    },
    Airport {
        code: "VIE",
        tz: "Europe/Vienna",
        city: "Vienna",
        name: "Schwechat",
    },
    Airport {
        code: "ZRH",
        tz: "Europe/Zurich",
        city: "Zurich",
        name: "Kloten",
    },
];

pub fn airport(code: &str) -> Option<&'static Airport> {
    AIRPORTS.iter().find(|a| a.code == code)
}

/// The IANA time zone of an airport of the schedule (UTC for an unknown code).
pub fn time_zone(code: &str) -> &'static str {
    airport(code).map_or("UTC", |a| a.tz)
}

/// A scheduled A320 flight LHR-CDG, for tests.
#[cfg(test)]
pub(crate) fn sample() -> Flight {
    Flight::scheduled(
        FlightId::parse("JW1-20260101").unwrap(),
        "JW1".into(),
        ("LHR".into(), "CDG".into()),
        (1_000_000, 2_000_000),
        "A320".into(),
        Fares {
            economy: Money::cents(100).unwrap(),
            business: Money::cents(300).unwrap(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight() -> Flight {
        sample()
    }

    #[test]
    fn status_follows_time_and_cancellation() {
        let mut f = flight();
        assert_eq!(f.status(999_999), FlightStatus::Scheduled);
        assert_eq!(f.status(1_000_000), FlightStatus::Departed);
        f.cancelled = Some("weather".into());
        assert_eq!(f.status(0), FlightStatus::Cancelled);
    }

    fn update(d: Option<Millis>, a: Option<Millis>, s: Option<FlightStatus>) -> StatusUpdate {
        StatusUpdate {
            estimated_departs_at: d,
            estimated_arrives_at: a,
            status: s,
            reason: None,
        }
    }

    #[test]
    fn an_estimate_already_passed_departs_the_flight_in_the_same_record() {
        let mut f = flight();
        let u = StatusUpdate {
            reason: Some("left early".into()),
            ..update(Some(900_000), None, None)
        };
        f.update(&u, 950_000).unwrap();
        assert_eq!(f.stage, FlightStatus::Departed);
        assert_eq!(f.change_reason(), Some("left early"));
        assert!(
            !f.mark_departed(950_000),
            "departed once, not again by the tick"
        );
    }

    #[test]
    fn estimates_move_between_scheduled_and_delayed() {
        let mut f = flight();
        f.update(&update(Some(1_600_000), None, None), 0).unwrap();
        assert_eq!(f.status(0), FlightStatus::Delayed);
        assert_eq!(f.departure(), 1_600_000);
        // the schedule stays the identity; the delayed flight has not left yet
        assert_eq!(f.departs_at, 1_000_000);
        assert_eq!(f.status(1_200_000), FlightStatus::Delayed);
        assert_eq!(f.status(1_600_000), FlightStatus::Departed);
        f.update(&update(Some(1_000_000), None, None), 0).unwrap();
        assert_eq!(f.status(0), FlightStatus::Scheduled);
        f.update(&update(None, Some(2_500_000), None), 0).unwrap();
        assert_eq!(f.estimated_arrives_at, Some(2_500_000));
        assert_eq!(f.status(0), FlightStatus::Scheduled);
        assert!(matches!(
            f.update(&update(None, Some(900_000), None), 0),
            Err(DomainError::Invalid(_))
        ));
    }

    #[test]
    fn status_moves_forward_only() {
        use FlightStatus::*;
        let mut f = flight();
        for bad in [Scheduled, Delayed, Departed, Cancelled] {
            assert!(matches!(
                f.update(&update(None, None, Some(bad)), 0),
                Err(DomainError::InvalidState(_))
            ));
        }
        f.update(&update(None, None, Some(Boarding)), 0).unwrap();
        assert_eq!(f.status(0), Boarding);
        // an estimate while boarding keeps it boarding
        f.update(&update(Some(1_200_000), None, None), 0).unwrap();
        assert_eq!(f.status(0), Boarding);
        assert!(f.update(&update(None, None, Some(Boarding)), 0).is_err());
        f.update(&update(None, None, Some(Departed)), 0).unwrap();
        assert_eq!(f.status(0), Departed);
        assert!(f.update(&update(Some(1_300_000), None, None), 0).is_err());
        let mut c = flight();
        c.cancelled = Some("weather".into());
        assert!(c.update(&update(Some(1_300_000), None, None), 0).is_err());
        // a refused update changes nothing
        let before = flight();
        let mut g = before.clone();
        assert!(g
            .update(&update(Some(1_500_000), None, Some(Departed)), 0)
            .is_err());
        assert_eq!(g, before);
    }

    #[test]
    fn each_status_allows_what_the_contract_says() {
        use FlightStatus::*;
        use Operation::*;
        let table = [
            (Scheduled, [true, true, true]),
            (Delayed, [true, true, true]),
            (Boarding, [false, true, true]),
            (Departed, [false, false, false]),
            (Cancelled, [false, false, false]),
        ];
        for (status, allowed) in table {
            for (op, want) in [Book, CheckIn, Cancel].into_iter().zip(allowed) {
                assert_eq!(status.allows(op), want, "{status:?} {op:?}");
            }
        }
        let mut f = flight();
        assert!(f.check(Book, 0).is_ok());
        assert!(f.check(Book, 1_000_000).is_err());
        f.stage = Boarding;
        assert!(f.check(Book, 0).is_err() && f.check(CheckIn, 0).is_ok());
    }

    #[test]
    fn every_airport_has_a_time_zone() {
        assert!(AIRPORTS.iter().all(|a| a.tz.starts_with("Europe/")));
        assert_eq!(time_zone("LHR"), "Europe/London");
    }

    #[test]
    fn airports_are_unique_iata_codes() {
        let mut codes: Vec<_> = AIRPORTS.iter().map(|a| a.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), AIRPORTS.len());
        assert!(codes
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert!(airport("LHR").is_some() && airport("XXX").is_none());
    }
}
