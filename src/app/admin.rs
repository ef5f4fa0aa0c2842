//! Airline operations (role `admin`): scheduling a flight, cancelling one (refunding
//! every confirmed booking in full and releasing every hold, resumably), and per-flight
//! statistics.
//!
//! Cancelling a flight is a durable job in two stages. First the flight's cancelled
//! state is written and made durable; from then on nobody can hold or change seats on
//! it. Then every booking that still occupies seats is processed one by one, each as
//! one version of the flight: a hold is released; a confirmed booking is marked busy,
//! refunded in full through the gateway (a refund record with its own unique key,
//! durable before the call: see `refunds`), and only then are its `refunded` status
//! and the order's refund written in one batch.
//! A crash anywhere leaves a cancelled flight with some bookings still occupying seats;
//! [`App::resume_cancellations`] finishes those at the next start, and with every
//! reconciliation round (on a cluster, any node takes over). A gateway refund made
//! just before a crash is asked for again with its stored key, so it is never paid twice.

use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::busy::Busy;
use super::{App, AuthSession, Step};
use crate::domain::{
    self, aircraft::Aircraft, flight::airport, BookingStatus, Fares, Flight, FlightId,
    FlightStatus, Locator, Money, SeatId,
};
use crate::inventory::FlightSeats;
use crate::protocol::params::{CancelFlight, CreateFlight};
use crate::protocol::{wire, ApiError};
use crate::store::{Batch, RefundReason, Role, StoreError};

/// Longest cancellation reason, in characters.
pub const MAX_REASON: usize = 200;
/// Longest block time of a new flight.
pub const MAX_BLOCK_MS: domain::Millis = 24 * 3600 * 1000;
/// How far ahead a flight may be scheduled.
pub const MAX_AHEAD_MS: domain::Millis = 366 * 24 * 3600 * 1000;
/// How long to wait before looking again at a booking with a payment in flight.
const BUSY_RETRY: Duration = Duration::from_millis(50);
/// Gateway refund retries back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long cached revenue figures may be reused while no flight version moves.
const STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// What the admin use cases keep between calls.
#[derive(Default)]
pub struct AdminState {
    /// Serializes changes of flight records (create, cancel).
    pub(super) flights: tokio::sync::Mutex<()>,
    stats: Mutex<Option<RevenueCache>>,
    /// Flights whose cancellation job runs on this node.
    cancelling: Mutex<std::collections::HashSet<FlightId>>,
}

/// Paid minus refunded, in cents, per flight.
type Revenue = Arc<HashMap<FlightId, i64>>;

struct RevenueCache {
    /// (number of flights, sum of their versions) when computed: every change of a
    /// paid or refunded amount also moves its flight's version.
    key: (usize, u64),
    at: Instant,
    revenue: Revenue,
}

/// One flight's line of `admin.flights.stats`, from its published seat map.
struct StatsRow {
    flight: Flight,
    total: usize,
    version: u64,
    held: usize,
    booked: usize,
}

/// What happened to one booking of a cancelled flight.
enum Outcome {
    Released,
    Refunded,
    /// Nothing to do (no longer occupies seats, or not this flight's).
    Skipped,
    /// A payment operation is in flight; look again shortly.
    Busy,
    /// The gateway refund failed; try again later.
    Failed(String),
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::InvalidParams(m.into())
}

fn flight_number(n: &str) -> Result<String, ApiError> {
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

fn airport_code(code: &str, field: &str) -> Result<String, ApiError> {
    airport(code)
        .map(|a| a.code.to_owned())
        .ok_or_else(|| invalid(format!("{field} must be a known airport code")))
}

fn time_field(s: &str, field: &str) -> Result<domain::Millis, ApiError> {
    domain::parse_rfc3339(s).ok_or_else(|| invalid(format!("{field} must be an RFC 3339 time")))
}

/// Checks a new flight and builds it, with its id `{number}-{YYYYMMDD}`.
pub fn new_flight(p: &CreateFlight, now: domain::Millis) -> Result<Flight, ApiError> {
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
    Ok(Flight {
        id: FlightId::parse(&id)?,
        number,
        from,
        to,
        departs_at,
        arrives_at,
        aircraft: aircraft.code.to_owned(),
        fares: Fares {
            economy: p.fares.economy,
            business: p.fares.business,
        },
        cancelled: None,
        stage: FlightStatus::Scheduled,
        estimated_departs_at: None,
        estimated_arrives_at: None,
        remark: None,
        revision: 0,
    })
}

fn cancel_reason(r: &str) -> Result<String, ApiError> {
    let r = r.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(invalid(format!(
            "reason must be 1-{MAX_REASON} characters without control characters"
        )));
    }
    Ok(r.to_owned())
}

/// An optional reason, checked like a cancellation's.
pub(super) fn optional_reason(r: Option<&str>) -> Result<Option<String>, ApiError> {
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
    /// The connection's session if it is an admin's: anonymous is `unauthenticated`,
    /// anyone else `forbidden`.
    pub fn require_admin(&self, conn: &mut Option<AuthSession>) -> Result<AuthSession, ApiError> {
        let s = self.authenticate(conn)?;
        if s.role != Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(s)
    }

    /// Checks that a bearer token (of an HTTP admin endpoint) is a live admin session.
    pub fn admin_by_token(&self, token: &str) -> Result<(), ApiError> {
        let session = self
            .live_session(&super::auth::token_hash(token))?
            .ok_or(ApiError::InvalidToken)?;
        let user = self
            .store
            .user(session.user_id)?
            .ok_or(ApiError::InvalidToken)?;
        match user.role {
            Role::Admin => Ok(()),
            Role::Passenger => Err(ApiError::Forbidden),
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
    ) -> Result<Value, ApiError> {
        let now = domain::now_ms();
        let flight = new_flight(&p, now)?;
        let _serial = self.admin.flights.lock().await;
        self.committer.catch_up().await?;
        let exists = || ApiError::InvalidState(format!("flight {} already exists", flight.id));
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
        let fs = self.inventory.add(flight.clone());
        tracing::info!(flight = %flight.id, "flight scheduled");
        Ok(json!({ "flight": wire::flight(&flight, &fs.available(), domain::now_ms()) }))
    }

    /// `admin.flights.cancel`: makes the flight's cancelled state durable, then
    /// refunds and releases every booking (see the module docs) and waits for that.
    pub async fn admin_cancel_flight(
        self: &Arc<Self>,
        _s: &AuthSession,
        p: CancelFlight,
    ) -> Result<Value, ApiError> {
        let reason = cancel_reason(&p.reason)?;
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(ApiError::NotFound("flight"))?;
        {
            let _serial = self.admin.flights.lock().await;
            let mut flight = fs.flight();
            flight.cancel(reason, domain::now_ms())?;
            // no hold, seat change or payment may start while this becomes durable
            fs.set_closing(true);
            let written = self
                .commit(Batch {
                    flights: vec![flight.clone()],
                    ..Default::default()
                })
                .await;
            if let Err(e) = written {
                fs.set_closing(false);
                return Err(e.into());
            }
            self.flight_record(&fs, flight);
        }
        tracing::info!(flight = %fs.id, "flight cancelled; refunding and releasing its bookings");
        let job = self.spawn_cancel_job(fs.clone());
        let (refunded, released) = job.await?;
        // the admin's connection, if it watches the flight, has every push before this
        self.committer.settle_reads().await?;
        let flight = fs.flight();
        Ok(json!({
            "flight": wire::flight(&flight, &fs.available(), domain::now_ms()),
            "refunded": refunded,
            "released": released,
        }))
    }

    /// Finishes, in the background, the cancellation of every cancelled flight that
    /// still has bookings occupying seats and no job on this node (a crash, here or
    /// on another node of a cluster, interrupted it). Called at start, once the seat
    /// maps are loaded, and then with every reconciliation round.
    pub(super) fn resume_cancellations(self: &Arc<Self>) {
        for fs in self.inventory.all() {
            if fs.flight().cancelled.is_some()
                && !self.admin.cancelling.lock().contains(&fs.id)
                && !occupants(&fs).is_empty()
            {
                tracing::info!(flight = %fs.id, "resuming an interrupted flight cancellation");
                let stop = self.stop.clone();
                let job = self.spawn_cancel_job(fs);
                tokio::spawn(async move {
                    match job.await {
                        Ok((refunded, released)) => {
                            tracing::info!(refunded, released, "flight cancellation finished")
                        }
                        Err(_) if stop.is_cancelled() => {
                            tracing::info!("flight cancellation paused by shutdown")
                        }
                        Err(e) => tracing::error!(error = %e, "flight cancellation failed"),
                    }
                });
            }
        }
    }

    /// Runs the booking stage of a flight cancellation as a task of its own, so that
    /// it finishes even if the requester goes away; shutdown pauses it.
    fn spawn_cancel_job(
        self: &Arc<Self>,
        fs: Arc<FlightSeats>,
    ) -> impl std::future::Future<Output = Result<(u32, u32), ApiError>> {
        let app = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.admin.cancelling.lock().insert(fs.id.clone());
        let task = tokio::spawn(async move {
            let r = app.finish_cancel(&fs).await;
            app.admin.cancelling.lock().remove(&fs.id);
            let _ = tx.send(r);
        });
        {
            // App::stop waits for the job (which stops at its next step)
            let mut bg = self.background.lock();
            bg.retain(|t| !t.is_finished());
            bg.push(task);
        }
        async move { rx.await.unwrap_or(Err(ApiError::Internal)) }
    }

    /// Waits for `fut` unless the server is stopping (then `internal`; the job
    /// resumes at the next start).
    async fn unless_stopping<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, ApiError> {
        tokio::select! {
            v = fut => Ok(v),
            _ = self.stop.cancelled() => Err(ApiError::Internal),
        }
    }

    /// Refunds and releases every booking that occupies a seat on a cancelled flight;
    /// returns how many were refunded and released.
    async fn finish_cancel(&self, fs: &Arc<FlightSeats>) -> Result<(u32, u32), ApiError> {
        let (mut refunded, mut released) = (0u32, 0u32);
        let mut backoff = Duration::from_millis(100);
        loop {
            let pending = occupants(fs);
            if pending.is_empty() {
                return Ok((refunded, released));
            }
            let (mut progress, mut wait) = (false, None);
            for loc in pending {
                match self.cancel_booking(fs, &loc).await? {
                    Outcome::Released => {
                        released += 1;
                        progress = true;
                    }
                    Outcome::Refunded => {
                        refunded += 1;
                        progress = true;
                        backoff = Duration::from_millis(100);
                    }
                    Outcome::Skipped => {}
                    Outcome::Busy => {
                        wait.get_or_insert(BUSY_RETRY);
                    }
                    Outcome::Failed(e) => {
                        tracing::warn!(locator = %loc, error = %e, "refund failed; retrying");
                        wait = Some(wait.unwrap_or(backoff).max(backoff));
                    }
                }
            }
            match wait {
                Some(d) => {
                    if d >= backoff {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    self.unless_stopping(tokio::time::sleep(d)).await?;
                }
                None if !progress => {
                    // the seat map names bookings the store does not: never loop on that
                    tracing::error!(flight = %fs.id, "seats held by bookings that are not open");
                    return Ok((refunded, released));
                }
                None => {}
            }
        }
    }

    /// One booking of a cancelled flight: a hold is released, a confirmed booking is
    /// refunded in full. Each is one version of the flight.
    async fn cancel_booking(
        &self,
        fs: &Arc<FlightSeats>,
        loc: &Locator,
    ) -> Result<Outcome, ApiError> {
        let reason = fs.flight().cancelled.unwrap_or_default();
        let step = self.seat_step(fs, None, |w| {
            let now = domain::now_ms();
            let Some(mut b) = self.store.booking(loc)? else {
                return Ok((None, Err(Outcome::Skipped)));
            };
            if b.flight_id != fs.id || !b.status.occupies_seats() {
                return Ok((None, Err(Outcome::Skipped)));
            }
            if self.paying(w, loc, &|_| false)? {
                return Ok((None, Err(Outcome::Busy)));
            }
            if let Some(open) = self.store.open_refund(loc.as_str())? {
                return Ok((None, Ok((Busy::mark(fs, w, loc)?, b, Some(open)))));
            }
            if b.status == BookingStatus::Held {
                b.release(now)?;
                let detail = json!({ "by": "airline", "reason": reason });
                let ticket = self.end_hold(fs, w, &b, "cancelled", detail, None)?;
                Ok((Some(ticket), Err(Outcome::Released)))
            } else {
                Ok((None, Ok((Busy::mark(fs, w, loc)?, b, None))))
            }
        });
        // a hold is released at once; a confirmed booking is refunded first
        let (mark, booking, open) = match self.unless_stopping(step).await?? {
            Step::Done(Ok(refund)) => refund,
            Step::Done(Err(outcome)) => return Ok(outcome),
            Step::Replayed(_) => return Err(ApiError::Internal),
        };
        // an earlier refund of the booking (the passenger's, or this job's before a
        // crash) is finished first; the booking is then looked at again
        let (refund, again) = match open {
            Some(r) => {
                let again = r.reason != RefundReason::FlightCancelled;
                (r, again)
            }
            None => {
                let order_id = booking.order_id.clone().ok_or(ApiError::Internal)?;
                let order = self.store.order(&order_id)?.ok_or(ApiError::Internal)?;
                // everything still on the booking, in full: the airline cancelled
                let left = Money::cents(order.amount.amount() - order.refunded.amount())
                    .unwrap_or_default();
                let amount = Money::sum(booking.seats.iter().map(|s| s.fare)).min(left);
                let seats: Vec<SeatId> = booking.seats.iter().map(|s| s.seat).collect();
                let r = self.seat_refund(
                    &booking,
                    &order,
                    seats,
                    amount,
                    RefundReason::FlightCancelled,
                )?;
                if !self.unless_stopping(self.open_refund(&r)).await?? {
                    return Ok(Outcome::Busy);
                }
                (r, false)
            }
        };
        match self
            .unless_stopping(self.finish_seat_refund(fs, refund, mark))
            .await?
        {
            Ok(_) if again => Ok(Outcome::Busy),
            Ok(_) => Ok(Outcome::Refunded),
            Err(e) => Ok(Outcome::Failed(e.to_string())),
        }
    }

    /// `admin.flights.stats`: seats held and booked, load factor and revenue (paid
    /// minus refunded) of every flight, in departure order. Only durable state: the
    /// published seat maps, and orders answered once durable.
    pub async fn admin_stats(&self) -> Result<Value, ApiError> {
        let (rows, revenue) = self.consistent_read(|| self.stats_rows()).await?;
        let now = domain::now_ms();
        let flights: Vec<Value> = rows
            .into_iter()
            .map(
                |StatsRow {
                     flight: f,
                     total,
                     version,
                     held,
                     booked,
                 }| {
                    let load = if total == 0 {
                        0.0
                    } else {
                        ((held + booked) as f64 / total as f64 * 1000.0).round() / 1000.0
                    };
                    let cents = revenue.get(&f.id).copied().unwrap_or(0);
                    let mut row = json!({
                        "flight_id": f.id,
                        "number": f.number,
                        "from": f.from,
                        "to": f.to,
                        "departs_at": domain::rfc3339(f.departs_at),
                        "status": f.status(now).as_str(),
                        "version": version,
                        "seats_total": total,
                        "seats_held": held,
                        "seats_booked": booked,
                        "load_factor": load,
                        "revenue": { "amount": cents, "currency": domain::money::CURRENCY },
                    });
                    if let Some(t) = f.estimated_departs_at {
                        row["estimated_departs_at"] = json!(domain::rfc3339(t));
                    }
                    row
                },
            )
            .collect();
        Ok(json!({ "flights": flights }))
    }

    /// Every flight's published occupancy, in departure order, and the revenue.
    fn stats_rows(&self) -> Result<(Vec<StatsRow>, Revenue), ApiError> {
        let mut rows = Vec::new();
        let mut key = (0usize, 0u64);
        for fs in self.inventory.all() {
            let (version, held, booked) = fs.published_occupancy();
            key = (key.0 + 1, key.1.wrapping_add(version));
            rows.push(StatsRow {
                flight: fs.flight(),
                total: fs.aircraft.seats().len(),
                version,
                held,
                booked,
            });
        }
        rows.sort_by(|a, b| {
            (a.flight.departs_at, &a.flight.number).cmp(&(b.flight.departs_at, &b.flight.number))
        });
        Ok((rows, self.revenue(key)?))
    }

    /// Paid minus refunded per flight, from the orders; recomputed only when some
    /// flight's version moved (or the figures are a few seconds old).
    fn revenue(&self, key: (usize, u64)) -> Result<Revenue, ApiError> {
        if let Some(c) = self.admin.stats.lock().as_ref() {
            if c.key == key && c.at.elapsed() < STATS_MAX_AGE {
                return Ok(c.revenue.clone());
            }
        }
        let mut revenue: HashMap<FlightId, i64> = HashMap::new();
        for b in self.store.all_bookings()? {
            let Some(order_id) = &b.order_id else {
                continue;
            };
            if let Some(o) = self.store.order(order_id)? {
                *revenue.entry(b.flight_id.clone()).or_default() +=
                    o.amount.amount() - o.refunded.amount();
            }
        }
        let revenue = Arc::new(revenue);
        *self.admin.stats.lock() = Some(RevenueCache {
            key,
            at: Instant::now(),
            revenue: revenue.clone(),
        });
        Ok(revenue)
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
                matches!(new_flight(&p, now), Err(ApiError::InvalidParams(_))),
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
