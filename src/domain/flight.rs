//! Flights, airports and fares.

use serde::{Deserialize, Serialize};

use super::{Aircraft, Cabin, FlightId, Millis, Money};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlightStatus {
    Scheduled,
    Departed,
    Cancelled,
}

impl FlightStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlightStatus::Scheduled => "scheduled",
            FlightStatus::Departed => "departed",
            FlightStatus::Cancelled => "cancelled",
        }
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

/// A scheduled flight; its seats live in the inventory.
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
    #[serde(default)]
    pub cancelled: Option<String>,
}

impl Flight {
    pub fn status(&self, now: Millis) -> FlightStatus {
        if self.cancelled.is_some() {
            FlightStatus::Cancelled
        } else if now >= self.departs_at {
            FlightStatus::Departed
        } else {
            FlightStatus::Scheduled
        }
    }

    /// The layout of the flight's aircraft; an unknown code falls back to the first type.
    pub fn aircraft(&self) -> &'static Aircraft {
        Aircraft::by_code(&self.aircraft).unwrap_or(&super::aircraft::FLEET[0])
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Airport {
    pub code: &'static str,
    pub city: &'static str,
    pub name: &'static str,
}

pub static AIRPORTS: &[Airport] = &[
    Airport {
        code: "AMS",
        city: "Amsterdam",
        name: "Schiphol",
    },
    Airport {
        code: "BCN",
        city: "Barcelona",
        name: "El Prat",
    },
    Airport {
        code: "CDG",
        city: "Paris",
        name: "Charles de Gaulle",
    },
    Airport {
        code: "CPH",
        city: "Copenhagen",
        name: "Kastrup",
    },
    Airport {
        code: "DUB",
        city: "Dublin",
        name: "Dublin Airport",
    },
    Airport {
        code: "FCO",
        city: "Rome",
        name: "Fiumicino",
    },
    Airport {
        code: "FRA",
        city: "Frankfurt",
        name: "Frankfurt am Main",
    },
    Airport {
        code: "LHR",
        city: "London",
        name: "Heathrow",
    },
    Airport {
        code: "MAD",
        city: "Madrid",
        name: "Barajas",
    },
    Airport {
        code: "MUC",
        city: "Munich",
        name: "Franz Josef Strauss",
    },
    Airport {
        code: "VIE",
        city: "Vienna",
        name: "Schwechat",
    },
    Airport {
        code: "ZRH",
        city: "Zurich",
        name: "Kloten",
    },
];

pub fn airport(code: &str) -> Option<&'static Airport> {
    AIRPORTS.iter().find(|a| a.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight() -> Flight {
        Flight {
            id: FlightId::parse("JW1-20260101").unwrap(),
            number: "JW1".into(),
            from: "LHR".into(),
            to: "CDG".into(),
            departs_at: 1_000_000,
            arrives_at: 2_000_000,
            aircraft: "A320".into(),
            fares: Fares {
                economy: Money::cents(100).unwrap(),
                business: Money::cents(300).unwrap(),
            },
            cancelled: None,
        }
    }

    #[test]
    fn status_follows_time_and_cancellation() {
        let mut f = flight();
        assert_eq!(f.status(999_999), FlightStatus::Scheduled);
        assert_eq!(f.status(1_000_000), FlightStatus::Departed);
        f.cancelled = Some("weather".into());
        assert_eq!(f.status(0), FlightStatus::Cancelled);
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
