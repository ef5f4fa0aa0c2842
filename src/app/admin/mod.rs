//! Airline operations (role `admin`): who is an admin, scheduling a flight (its
//! params checked here), cancelling one (refunding every confirmed booking in full
//! and releasing every hold, resumably: `cancel_job`), and per-flight statistics
//! (`stats`).

mod cancel_job;
mod stats;

use parking_lot::Mutex;

use super::{App, AuthSession, ConnSession};
use crate::app::flight_view;
use crate::app::AppError;
use crate::domain::{
    self, aircraft::Aircraft, flight::airport, Fares, Flight, FlightId, Locator, Money,
};
use crate::inventory::FlightSeats;
use crate::protocol::params::CreateFlight;
use crate::protocol::results::FlightResult;
use crate::store::{Batch, Role, StoreError};
use stats::RevenueCache;

/// Longest cancellation reason, in characters.
pub const MAX_REASON: usize = 200;
/// Longest block time of a new flight.
pub const MAX_BLOCK_MS: domain::Millis = 24 * 3600 * 1000;
/// How far ahead a flight may be scheduled.
pub const MAX_AHEAD_MS: domain::Millis = 366 * 24 * 3600 * 1000;

/// What the admin use cases keep between calls.
#[derive(Default)]
pub struct AdminState {
    /// Serializes changes of flight records (create, cancel).
    pub(super) flights: tokio::sync::Mutex<()>,
    stats: Mutex<Option<RevenueCache>>,
    /// Flights whose cancellation job runs on this node.
    cancelling: Mutex<std::collections::HashSet<FlightId>>,
}

fn invalid(m: impl Into<String>) -> AppError {
    AppError::InvalidParams(m.into())
}

fn flight_number(n: &str) -> Result<String, AppError> {
    let digits = n.strip_prefix("JW").unwrap_or("");
    let ok = (1..=4).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(n.to_owned())
    } else {
        Err(invalid(
            "number must be JW followed by 1-4 digits, e.g. JW123",
        ))
    }
}

fn airport_code(code: &str, field: &str) -> Result<String, AppError> {
    airport(code)
        .map(|a| a.code.to_owned())
        .ok_or_else(|| invalid(format!("{field} must be a known airport code")))
}

fn time_field(s: &str, field: &str) -> Result<domain::Millis, AppError> {
    domain::parse_rfc3339(s).ok_or_else(|| invalid(format!("{field} must be an RFC 3339 time")))
}

/// Checks a new flight and builds it, with its id `{number}-{YYYYMMDD}`.
pub fn new_flight(p: &CreateFlight, now: domain::Millis) -> Result<Flight, AppError> {
    let number = flight_number(&p.number)?;
    let from = airport_code(&p.from, "from")?;
    let to = airport_code(&p.to, "to")?;
    if from == to {
        return Err(invalid("from and to must differ"));
    }
    let departs_at = time_field(&p.departs_at, "departs_at")?;
    let arrives_at = time_field(&p.arrives_at, "arrives_at")?;
    if departs_at <= now {
        return Err(invalid("departs_at must be in the future"));
    }
    if departs_at > now + MAX_AHEAD_MS {
        return Err(invalid("departs_at must be within 366 days"));
    }
    if arrives_at <= departs_at {
        return Err(invalid("arrives_at must be after departs_at"));
    }
    if arrives_at - departs_at > MAX_BLOCK_MS {
        return Err(invalid("a flight lasts at most 24 hours"));
    }
    let aircraft = Aircraft::by_code(&p.aircraft).ok_or_else(|| {
        let codes: Vec<&str> = domain::aircraft::FLEET.iter().map(|a| a.code).collect();
        invalid(format!("aircraft must be one of {}", codes.join(", ")))
    })?;
    if p.fares.economy == Money::ZERO || p.fares.business == Money::ZERO {
        return Err(invalid("fares must be more than zero"));
    }
    let date = domain::date_of(departs_at);
    let id = format!(
        "{number}-{:04}{:02}{:02}",
        date.year(),
        date.month() as u8,
        date.day()
    );
    Ok(Flight::scheduled(
        FlightId::parse(&id)?,
        number,
        (from, to),
        (departs_at, arrives_at),
        aircraft.code.to_owned(),
        Fares {
            economy: p.fares.economy,
            business: p.fares.business,
        },
    ))
}

fn cancel_reason(r: &str) -> Result<String, AppError> {
    let r = r.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(invalid(format!(
            "reason must be 1-{MAX_REASON} characters without control characters"
        )));
    }
    Ok(r.to_owned())
}

/// An optional reason, checked like a cancellation's.
pub(super) fn optional_reason(r: Option<&str>) -> Result<Option<String>, AppError> {
    r.map(cancel_reason).transpose()
}

/// The bookings occupying a flight's seats right now, each once.
pub(super) fn occupants(fs: &FlightSeats) -> Vec<Locator> {
    let w = fs.working();
    let mut out: Vec<Locator> = Vec::new();
    for o in w.seats.iter().flatten() {
        if !out.contains(&o.locator) {
            out.push(o.locator.clone());
        }
    }
    out
}

impl App {
    /// Waits for this node's turn to change flight records (see [`AdminState`]); a
    /// request's later catch-up reads again ([`crate::store::commit::Committer::waiting`]).
    pub(super) async fn flights_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.committer.waiting();
        self.admin.flights.lock().await
    }

    /// The connection's session if it is a live admin's. The contract: everyone else
    /// gets `forbidden`, anonymous callers included; an admin whose session has ended
    /// is told so (`invalid_token`).
    pub async fn require_admin(&self, conn: &mut ConnSession) -> Result<AuthSession, AppError> {
        if conn.as_ref().map(|s| s.role) != Some(Role::Admin) {
            return Err(AppError::Forbidden);
        }
        self.authenticate(conn).await
    }

    /// Checks that a bearer token (of an HTTP admin endpoint) is a live admin session:
    /// `invalid_token` if it is none (on a cluster, after catching up, so that a
    /// logout through any node ends it here too), `forbidden` for a passenger's; any
    /// other error is the store's.
    pub async fn admin_by_token(&self, token: &str) -> Result<(), AppError> {
        if token.is_empty() {
            return Err(AppError::InvalidToken);
        }
        self.committer.catch_up().await?;
        let session = self
            .live_session(&super::auth::token_hash(token))?
            .ok_or(AppError::InvalidToken)?;
        let user = self
            .store
            .user(session.user_id)?
            .ok_or(AppError::InvalidToken)?;
        match user.role {
            Role::Admin => Ok(()),
            Role::Passenger => Err(AppError::Forbidden),
        }
    }

    /// A snapshot of the whole database as of one moment (`jetway backup`);
    /// everything in it is durable here before it is handed out.
    pub async fn backup(&self) -> Result<Vec<u8>, StoreError> {
        let store = self.store.clone();
        let bytes = tokio::task::spawn_blocking(move || store.snapshot())
            .await
            .map_err(|e| StoreError::Io(e.to_string()))??;
        self.committer.barrier().await?;
        Ok(bytes)
    }

    /// `admin.flights.create`: schedules a flight; durable before the reply, then
    /// searchable and subscribable at once.
    pub async fn admin_create_flight(
        &self,
        _s: &AuthSession,
        p: CreateFlight,
    ) -> Result<FlightResult, AppError> {
        let now = domain::now_ms();
        let flight = new_flight(&p, now)?;
        let _serial = self.flights_turn().await;
        self.committer.catch_up().await?;
        let exists = || AppError::InvalidState(format!("flight {} already exists", flight.id));
        if self.inventory.get(flight.id.as_str()).is_some() {
            return Err(exists());
        }
        match self
            .commit(Batch {
                new_flights: vec![flight.clone()],
                ..Default::default()
            })
            .await
        {
            Err(StoreError::Conflict) => return Err(exists()),
            r => r?,
        }
        let fs = self.inventory.add_new(flight.clone());
        tracing::info!(flight = %flight.id, "flight scheduled");
        Ok(FlightResult {
            flight: flight_view(flight, &fs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::params::CreateFares;

    fn params(number: &str, from: &str, to: &str, dep: &str, arr: &str, ac: &str) -> CreateFlight {
        CreateFlight {
            number: number.into(),
            from: from.into(),
            to: to.into(),
            departs_at: dep.into(),
            arrives_at: arr.into(),
            aircraft: ac.into(),
            fares: CreateFares {
                economy: Money::cents(10_000).unwrap(),
                business: Money::cents(30_000).unwrap(),
            },
        }
    }

    #[test]
    fn new_flight_gets_its_id_from_number_and_departure_date() {
        let now = domain::parse_rfc3339("2026-11-25T10:00:00Z").unwrap();
        let f = new_flight(
            &params(
                "JW900",
                "LHR",
                "VIE",
                "2026-12-01T23:30:00Z",
                "2026-12-02T01:50:00Z",
                "A320",
            ),
            now,
        )
        .unwrap();
        assert_eq!(f.id.as_str(), "JW900-20261201");
        assert_eq!(f.arrives_at - f.departs_at, 140 * 60_000);
        assert!(f.cancelled.is_none());
    }

    #[test]
    fn new_flight_is_validated() {
        let now = domain::parse_rfc3339("2026-11-25T10:00:00Z").unwrap();
        let (d, a) = ("2026-12-01T09:00:00Z", "2026-12-01T11:00:00Z");
        for p in [
            params("JW0", "LHR", "VIE", d, a, "A320"),
            params("JW12345", "LHR", "VIE", d, a, "A320"),
            params("BA900", "LHR", "VIE", d, a, "A320"),
            params("JW900", "XXX", "VIE", d, a, "A320"),
            params("JW900", "LHR", "LHR", d, a, "A320"),
            params("JW900", "LHR", "VIE", "tomorrow", a, "A320"),
            params("JW900", "LHR", "VIE", "2026-11-24T09:00:00Z", a, "A320"),
            params("JW900", "LHR", "VIE", d, d, "A320"),
            params("JW900", "LHR", "VIE", d, "2026-12-03T09:00:00Z", "A320"),
            params("JW900", "LHR", "VIE", d, a, "B747"),
        ] {
            assert!(
                matches!(new_flight(&p, now), Err(AppError::InvalidParams(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn reasons_are_trimmed_and_bounded() {
        assert_eq!(cancel_reason("  weather ").unwrap(), "weather");
        assert!(cancel_reason("   ").is_err());
        assert!(cancel_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(cancel_reason("a\u{7}b").is_err());
    }
}
