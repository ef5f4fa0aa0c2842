//! Holding, paying, cancelling and changing bookings, and reading them back.

use rand::RngCore;
use serde_json::{json, Value};
use std::sync::Arc;

use super::busy::{busy_error, Busy};
use super::refunds::CANCEL;
use super::{event, remember_ok, App, AuthSession, Step};
use crate::domain::booking::{passenger_name, MAX_SEATS_PER_BOOKING};
use crate::domain::{self, seating, Booking, Cabin, Locator, SeatId};
use crate::inventory::{FlightSeats, Occupant, Working};
use crate::protocol::{params, wire, ApiError};
use crate::store::{Batch, RefundReason, RefundRecord, StoreError};

/// The airline accounting code that starts every ticket number.
pub const AIRLINE_CODE: u16 = 729;
pub const DEFAULT_HISTORY: u32 = 50;
pub const MAX_HISTORY: u32 = 500;

enum CancelStep {
    Released(Value),
    /// This refund, just opened: make it.
    Refund(Busy, RefundRecord),
    /// An earlier refund of the booking is open: finish it first.
    Finish(Busy, RefundRecord),
}

enum Wanted {
    Seats(Vec<SeatId>),
    Best { count: usize, cabin: Cabin },
}

fn seat_list(raw: &[String]) -> Result<Vec<SeatId>, ApiError> {
    let mut bad = Vec::new();
    let mut seats: Vec<SeatId> = Vec::new();
    for s in raw {
        match SeatId::parse(s) {
            Ok(id) if seats.contains(&id) => {
                return Err(ApiError::InvalidParams(format!(
                    "seat {id} is listed twice"
                )))
            }
            Ok(id) => seats.push(id),
            Err(_) => bad.push(s.chars().take(16).collect()),
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::InvalidSeat(bad));
    }
    Ok(seats)
}

/// Seats of a booking named by a request (`booking.cancel`, `booking.check_in`).
pub(super) fn booking_seats(raw: &[String]) -> Result<Vec<SeatId>, ApiError> {
    seat_list(raw).map_err(|e| match e {
        ApiError::InvalidSeat(bad) => {
            ApiError::InvalidParams(format!("invalid seats: {}", bad.join(", ")))
        }
        e => e,
    })
}

fn wanted(p: &params::Hold) -> Result<Wanted, ApiError> {
    let w = match (&p.seats, p.count, &p.cabin) {
        (Some(seats), None, None) => Wanted::Seats(seat_list(seats)?),
        (None, Some(count), Some(cabin)) => Wanted::Best {
            count: count as usize,
            cabin: Cabin::parse(cabin).ok_or_else(|| {
                ApiError::InvalidParams("cabin must be economy or business".into())
            })?,
        },
        _ => {
            return Err(ApiError::InvalidParams(
                "give either seats, or count and cabin".into(),
            ))
        }
    };
    let n = match &w {
        Wanted::Seats(s) => s.len(),
        Wanted::Best { count, .. } => *count,
    };
    if n == 0 || n > MAX_SEATS_PER_BOOKING {
        return Err(ApiError::InvalidParams(format!(
            "a booking holds 1 to {MAX_SEATS_PER_BOOKING} seats"
        )));
    }
    if n != p.passengers.len() {
        return Err(ApiError::InvalidParams(
            "give exactly one passenger per seat".into(),
        ));
    }
    Ok(w)
}

pub(super) fn new_locator() -> Locator {
    let mut r = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut r);
    Locator::from_random(r)
}

fn seat_indices(w: &Working, seats: &[SeatId]) -> Result<Vec<usize>, ApiError> {
    let mut out = Vec::with_capacity(seats.len());
    let mut bad = Vec::new();
    for s in seats {
        match w.index(*s) {
            Some(i) => out.push(i),
            None => bad.push(s.to_string()),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::InvalidSeat(bad))
    }
}

/// The flight, if its status allows `op` (see [`domain::Flight::check`]) and no
/// cancellation has started. Call it with the working map locked (see
/// [`FlightSeats::set_closing`]).
pub(super) fn check_flight(
    fs: &FlightSeats,
    op: domain::flight::Operation,
    now: domain::Millis,
) -> Result<domain::Flight, ApiError> {
    let flight = fs.flight();
    if fs.is_closing() && flight.cancelled.is_none() {
        return Err(ApiError::InvalidState(format!(
            "flight {} is cancelled",
            flight.number
        )));
    }
    flight.check(op, now)?;
    Ok(flight)
}

/// The flight, if passengers may hold, change or pay seats on it.
pub(super) fn check_bookable(
    fs: &FlightSeats,
    now: domain::Millis,
) -> Result<domain::Flight, ApiError> {
    check_flight(fs, domain::flight::Operation::Book, now)
}

impl App {
    /// Refuses a new hold while the user already has `--max-open-holds` unexpired
    /// holds (a hold-everything attack on a flight). Runs under the user's request
    /// lock (inside [`App::idempotent`]), so two holds of one user cannot both slip by.
    fn check_open_holds(&self, user: domain::UserId, now: domain::Millis) -> Result<(), ApiError> {
        let max = self.config.limits.max_open_holds;
        if max == 0 {
            return Ok(());
        }
        let held = self.store.open_holds(user, now);
        if held < max {
            return Ok(());
        }
        // waitlist offers do not count against the cap (read only at the cap: a
        // user's waitlist entries grow with their history)
        let offers = domain::waitlist::offered_holds(&self.store.user_waitlist(user)?).len();
        if held.saturating_sub(offers) >= max {
            return Err(ApiError::InvalidState(format!(
                "at most {max} open holds per user: pay for or cancel one first"
            )));
        }
        Ok(())
    }

    /// Answers `seat_unavailable` without waiting for the user's turn when the
    /// published (durable) map shows the wanted seats taken and this request was not
    /// answered before. A reply is durable before its seats are published, so looking
    /// it up after the map cannot miss a twin of this request that took them.
    fn unavailable_at_once(
        &self,
        fs: &FlightSeats,
        want: &Wanted,
        user: domain::UserId,
        request_id: &str,
    ) -> Result<(), ApiError> {
        if check_bookable(fs, domain::now_ms()).is_err() {
            return Ok(());
        }
        let taken = match want {
            Wanted::Seats(seats) => {
                let idx: Option<Vec<usize>> =
                    seats.iter().map(|s| fs.aircraft.seat_index(*s)).collect();
                match idx.map(|idx| fs.published_taken(&idx)) {
                    Some(taken) if !taken.is_empty() => taken,
                    _ => return Ok(()),
                }
            }
            Wanted::Best { count, cabin } => {
                let free = fs
                    .available()
                    .iter()
                    .find(|(c, _)| c == cabin)
                    .map_or(0, |(_, n)| *n as usize);
                if free >= *count {
                    return Ok(());
                }
                Vec::new()
            }
        };
        let key = super::idem_key(user, "booking.hold", request_id)?;
        match self.store.reply(&key)? {
            Some(_) => Ok(()),
            None => Err(ApiError::SeatUnavailable(
                taken.iter().map(|s| s.to_string()).collect(),
            )),
        }
    }

    /// A party's validated passenger names and the flight's seats, caught up with
    /// the cluster (what holding and joining a waitlist start from).
    pub(super) async fn party_on(
        &self,
        passengers: &[params::Passenger],
        flight_id: &str,
    ) -> Result<(Vec<String>, Arc<FlightSeats>), ApiError> {
        let names = passengers
            .iter()
            .map(|x| passenger_name(&x.name))
            .collect::<Result<Vec<_>, _>>()?;
        let fs = self
            .inventory
            .get(flight_id)
            .ok_or(ApiError::NotFound("flight"))?;
        self.committer.catch_up().await?;
        Ok((names, fs))
    }

    pub async fn hold(&self, s: &AuthSession, p: params::Hold) -> Result<Value, ApiError> {
        let want = wanted(&p)?;
        let (passengers, fs) = self.party_on(&p.passengers, &p.flight_id).await?;
        self.unavailable_at_once(&fs, &want, s.user_id, &p.request_id)?;
        self.idempotent(s.user_id, "booking.hold", &p.request_id, |key| async move {
            let now = domain::now_ms();
            self.check_open_holds(s.user_id, now)?;
            let ttl = self.config.hold_ttl as domain::Millis * 1000;
            self.seat_step(&fs, Some(&key), |w| {
                let flight = check_bookable(&fs, now)?;
                let idx = match &want {
                    Wanted::Seats(seats) => {
                        let idx = seat_indices(w, seats)?;
                        let taken = w.taken(&idx);
                        if !taken.is_empty() {
                            return Err(ApiError::SeatUnavailable(taken.iter().map(|s| s.to_string()).collect()));
                        }
                        idx
                    }
                    Wanted::Best { count, cabin } => seating::pick(fs.aircraft, &w.free_mask(), *cabin, *count)
                        .ok_or_else(|| ApiError::SeatUnavailable(Vec::new()))?,
                };
                let seats: Vec<_> = idx
                    .iter()
                    .map(|&i| {
                        let info = &fs.aircraft.seats()[i];
                        (info.id, info.cabin, flight.fares.of(info.cabin))
                    })
                    .collect();
                let mut attempt = 0;
                let booking = loop {
                    let b = Booking::hold(new_locator(), s.user_id, flight.id.clone(), seats.clone(), passengers.clone(), now, ttl)?;
                    let result = json!({ "booking": wire::booking(&b, Some(&flight)) });
                    let batch = Batch {
                        new_bookings: vec![b.clone()],
                        events: vec![(s.user_id, event("held", Some(&b.locator), now, json!({
                            "flight_id": flight.id, "seats": b.seats.iter().map(|x| x.seat.to_string()).collect::<Vec<_>>(),
                            "total": wire::money(b.total),
                        })))],
                        replies: vec![(key.clone(), remember_ok(&result))],
                        ..Default::default()
                    };
                    let occupant = Occupant { locator: b.locator.clone(), booked: false };
                    let updates = idx.iter().map(|&i| (i, Some(occupant.clone()))).collect();
                    match self.change_seats(&fs, w, batch, updates, &b) {
                        Ok(ticket) => break (ticket, b, result),
                        Err(StoreError::Conflict) if attempt < 8 => attempt += 1,
                        Err(e) => return Err(e.into()),
                    }
                };
                let (ticket, b, result) = booking;
                if let Some(t) = b.hold_expires_at {
                    self.expiry.schedule(t, &b.flight_id, &b.locator);
                }
                Ok((Some(ticket), result))
            })
            .await?
            .reply()
        })
        .await
    }

    pub async fn cancel(&self, s: &AuthSession, p: params::Cancel) -> Result<Value, ApiError> {
        self.committer.catch_up().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let only = p.seats.as_deref().map(booking_seats).transpose()?;
        let fs = self.flight_seats(&booking.flight_id)?;
        self.idempotent(s.user_id, CANCEL, &p.request_id, |key| async move {
            let loc = booking.locator;
            let departs_at = fs.flight().departs_at;
            loop {
                // a hold is released at once; a confirmed booking is refunded first
                let step = self.seat_step(&fs, Some(&key), |w| {
                    let now = domain::now_ms();
                    let mut b = self
                        .store
                        .booking(&loc)?
                        .ok_or(ApiError::NotFound("booking"))?;
                    if self.paying(w, &loc, &|_| false)? {
                        return Err(busy_error());
                    }
                    if let Some(open) = self.store.open_refund(loc.as_str())? {
                        return Ok((None, CancelStep::Finish(Busy::mark(&fs, w, &loc)?, open)));
                    }
                    if b.status == domain::BookingStatus::Held {
                        if only.is_some() {
                            return Err(ApiError::InvalidState(
                                "only a confirmed booking can be cancelled seat by seat".into(),
                            ));
                        }
                        b.release(now)?;
                        let result = json!({ "booking": self.booking_json(&b) });
                        let reply = Some((key.clone(), remember_ok(&result)));
                        let ticket =
                            self.end_hold(&fs, w, &b, "cancelled", json!({}), reply)?;
                        Ok((Some(ticket), CancelStep::Released(result)))
                    } else {
                        if fs.flight().cancelled.is_some() || fs.is_closing() {
                            // the airline's job refunds it in full; the passenger's
                            // rule could pay back less
                            return Err(ApiError::InvalidState(
                                "the airline cancelled this flight: every booking on it is refunded in full".into(),
                            ));
                        }
                        let (seats, amount) = b.refund_quote(only.as_deref(), departs_at, now)?;
                        let order_id = b.order_id.clone().unwrap_or_default();
                        let order = self.store.order(&order_id)?.ok_or(ApiError::Internal)?;
                        let reason = RefundReason::Cancel {
                            request_id: key.request_id.clone(),
                        };
                        let refund = self.seat_refund(&b, &order, seats, amount, reason)?;
                        if w.busy.contains(&loc) {
                            return Err(busy_error());
                        }
                        // opened only on the flight's version quoted: after a seat change
                        // through another node in between, the quote is made again
                        let open = Batch {
                            new_refunds: vec![refund.clone()],
                            ..Default::default()
                        };
                        let expect = Some((fs.id.clone(), w.version));
                        let ticket = self.committer.submit(open, expect, || None)?;
                        // marked only now: a guard dropped on an error above would
                        // lock the working map this closure already holds
                        let busy = Busy::mark(&fs, w, &loc)?;
                        Ok((Some(ticket), CancelStep::Refund(busy, refund)))
                    }
                });
                match step.await? {
                    Step::Done(CancelStep::Released(result)) => return Ok(result),
                    Step::Replayed(r) => return r,
                    Step::Done(CancelStep::Finish(busy, open)) => {
                        // this request's own refund, interrupted: finishing it answers;
                        // another's: finish it, then decide this one anew
                        let ours = open.reason
                            == (RefundReason::Cancel {
                                request_id: key.request_id.clone(),
                            });
                        let result = self.finish_seat_refund(&fs, open, busy).await?;
                        if ours {
                            return Ok(result);
                        }
                        continue;
                    }
                    Step::Done(CancelStep::Refund(busy, refund)) => {
                        return self.finish_seat_refund(&fs, refund, busy).await;
                    }
                }
            }
        })
        .await
    }

    pub async fn change_seat(
        &self,
        s: &AuthSession,
        p: params::ChangeSeat,
    ) -> Result<Value, ApiError> {
        self.committer.catch_up().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let from = SeatId::parse(&p.from)
            .map_err(|_| ApiError::InvalidParams(format!("invalid seat {:?}", p.from)))?;
        let to = seat_list(std::slice::from_ref(&p.to))?[0];
        let fs = self.flight_seats(&booking.flight_id)?;
        self.idempotent(
            s.user_id,
            "booking.change_seat",
            &p.request_id,
            |key| async move {
                let loc = booking.locator;
                self.seat_step(&fs, Some(&key), |w| {
                    let now = domain::now_ms();
                    check_bookable(&fs, now)?;
                    let mut b = self
                        .store
                        .booking(&loc)?
                        .ok_or(ApiError::NotFound("booking"))?;
                    if self.paying(w, &loc, &|_| false)?
                        || self.store.open_refund(loc.as_str())?.is_some()
                    {
                        return Err(busy_error());
                    }
                    let to_idx = seat_indices(w, &[to])?[0];
                    let from_idx = w.index(from).ok_or_else(|| {
                        ApiError::InvalidParams(format!("seat {from} is not on this booking"))
                    })?;
                    if b.seats.iter().any(|x| x.seat == to) {
                        return Err(ApiError::SeatUnavailable(vec![to.to_string()]));
                    }
                    b.change_seat(from, to, fs.aircraft.seats()[to_idx].cabin, now)?;
                    let taken = w.taken(&[to_idx]);
                    if !taken.is_empty() {
                        return Err(ApiError::SeatUnavailable(vec![to.to_string()]));
                    }
                    let result = json!({ "booking": self.booking_json(&b) });
                    let batch = Batch {
                        bookings: vec![b.clone()],
                        events: vec![(
                            s.user_id,
                            event(
                                "seat_changed",
                                Some(&loc),
                                now,
                                json!({
                                    "from": from.to_string(), "to": to.to_string(),
                                }),
                            ),
                        )],
                        replies: vec![(key.clone(), remember_ok(&result))],
                        ..Default::default()
                    };
                    let occupant = Occupant {
                        locator: loc.clone(),
                        booked: true,
                    };
                    let updates = vec![(from_idx, None), (to_idx, Some(occupant))];
                    Ok((Some(self.change_seats(&fs, w, batch, updates, &b)?), result))
                })
                .await?
                .reply()
            },
        )
        .await
    }

    pub async fn booking_get(
        &self,
        s: &AuthSession,
        p: params::LocatorRef,
    ) -> Result<Value, ApiError> {
        let b = self
            .consistent_read(|| self.own_booking(s.user_id, &p.locator))
            .await?;
        Ok(json!({ "booking": self.booking_json(&b) }))
    }

    pub async fn bookings_list(&self, s: &AuthSession) -> Result<Value, ApiError> {
        let list = self
            .consistent_read(|| Ok(self.store.user_bookings(s.user_id)?))
            .await?;
        let list: Vec<Value> = list.iter().map(|b| self.booking_json(b)).collect();
        Ok(json!({ "bookings": list }))
    }

    pub async fn orders_list(&self, s: &AuthSession) -> Result<Value, ApiError> {
        let list = self
            .consistent_read(|| Ok(self.store.user_orders(s.user_id)?))
            .await?;
        Ok(json!({ "orders": list.iter().map(wire::order).collect::<Vec<_>>() }))
    }

    pub async fn history_list(&self, s: &AuthSession, p: params::Limit) -> Result<Value, ApiError> {
        let limit = p.limit.unwrap_or(DEFAULT_HISTORY);
        if limit == 0 || limit > MAX_HISTORY {
            return Err(ApiError::InvalidParams(format!(
                "limit must be 1-{MAX_HISTORY}"
            )));
        }
        let events = self
            .consistent_read(|| Ok(self.store.history(s.user_id, limit as usize)?))
            .await?;
        let events: Vec<Value> = events
            .into_iter()
            .map(|e| {
                let mut v = json!({ "at": domain::rfc3339(e.at), "type": e.kind });
                if let Some(l) = e.locator {
                    v["locator"] = json!(l);
                }
                if let Value::Object(extra) = e.detail {
                    for (k, x) in extra {
                        v.as_object_mut().map(|o| o.entry(k).or_insert(x));
                    }
                }
                v
            })
            .collect();
        Ok(json!({ "events": events }))
    }
}
