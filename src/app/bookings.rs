//! Holding, paying, cancelling and changing bookings, and reading them back.

use rand::RngCore;
use serde_json::json;
use std::sync::Arc;

use super::busy::{busy_error, Busy};
use super::refunds::CANCEL;
use super::{event, remember_ok, App, AuthSession, Step};
use crate::app::AppError;
use crate::domain::booking::passenger_name;
use crate::domain::{self, seating, Booking, Locator, SeatId};
use crate::inventory::{FlightSeats, Occupant, Working};
use crate::protocol::params::{self, SeatChoice};
use crate::protocol::results::{
    Answer, BookingResult, BookingView, Bookings, History, HistoryEntry, OrderView, Orders,
};
use crate::protocol::wire;
use crate::store::{Batch, Page, Paged, RefundReason, RefundRecord, StoreError, UserLineCheck};

/// The airline accounting code that starts every ticket number.
pub const AIRLINE_CODE: u16 = 729;
pub const DEFAULT_HISTORY: u32 = 50;
pub const MAX_HISTORY: u32 = 500;
/// The most bookings or orders one list reply holds (~0.5 MB of bookings, 2 MB at
/// worst: nine passengers each, with 64-character names in 4-byte UTF-8), inside a
/// connection's 4 MiB outbound queue: a list of every record an account ever made
/// (cancelled holds cost nothing) would grow without bound, in memory and on the
/// wire.
pub const MAX_LIST: u32 = 500;

enum CancelStep {
    Released(Box<BookingResult>),
    /// This refund, just opened: make it.
    Refund(Busy, RefundRecord),
    /// An earlier refund of the booking is open: finish it first.
    Finish(Busy, RefundRecord),
}

pub(super) fn new_locator() -> Locator {
    let mut r = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut r);
    Locator::from_random(r)
}

fn seat_indices(w: &Working, seats: &[SeatId]) -> Result<Vec<usize>, AppError> {
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
        Err(AppError::InvalidSeat(bad))
    }
}

/// The flight, if its status allows `op` (see [`domain::Flight::check`]) and no
/// cancellation has started. Call it with the working map locked (see
/// [`FlightSeats::set_closing`]).
pub(super) fn check_flight(
    fs: &FlightSeats,
    op: domain::flight::Operation,
    now: domain::Millis,
) -> Result<domain::Flight, AppError> {
    let flight = fs.flight();
    if fs.is_closing() && flight.cancelled.is_none() {
        return Err(AppError::InvalidState(format!(
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
) -> Result<domain::Flight, AppError> {
    check_flight(fs, domain::flight::Operation::Book, now)
}

/// A passenger's cancel of a booking the airline's cancellation refunds in full.
fn airline_cancelled() -> AppError {
    AppError::InvalidState(
        "the airline cancelled this flight: every booking on it is refunded in full".into(),
    )
}

impl App {
    /// Refuses a new hold while the user already has `--max-open-holds` unexpired
    /// holds (a hold-everything attack on a flight); waitlist offers do not count.
    /// Runs where the hold is decided. One node: under the user's request lock
    /// (inside [`App::idempotent`]), so two holds of one user cannot both slip by. A
    /// cluster: the count is read with the user's revision, which the hold's write
    /// expects and advances, so a hold of the same user through another node at that
    /// moment fails this write and the next round counts it (the answer: the check to
    /// put in the hold's batch).
    fn check_open_holds(
        &self,
        user: domain::UserId,
        now: domain::Millis,
    ) -> Result<Vec<UserLineCheck>, AppError> {
        let max = self.config.limits.max_open_holds;
        if max == 0 {
            return Ok(Vec::new());
        }
        let (checks, holds) = match self.committer.is_replicated() {
            true => {
                let (read, holds) = self.store.user_holds(user, now)?;
                (vec![UserLineCheck { user, read }], holds)
            }
            false => (Vec::new(), self.store.capped_holds(user, now)?),
        };
        if holds >= max {
            return Err(AppError::InvalidState(format!(
                "at most {max} open holds per user: pay for or cancel one first"
            )));
        }
        Ok(checks)
    }

    /// Answers `seat_unavailable` without waiting for the user's turn when the
    /// published (durable) map shows the wanted seats taken and this request was not
    /// answered before. A reply is durable before its seats are published, so looking
    /// it up after the map cannot miss a twin of this request that took them.
    fn unavailable_at_once(
        &self,
        fs: &FlightSeats,
        want: &SeatChoice,
        user: domain::UserId,
        request_id: &str,
    ) -> Result<(), AppError> {
        if check_bookable(fs, domain::now_ms()).is_err() {
            return Ok(());
        }
        let taken = match want {
            SeatChoice::Named(seats) => {
                let idx: Option<Vec<usize>> =
                    seats.iter().map(|s| fs.aircraft.seat_index(*s)).collect();
                match idx.map(|idx| fs.published_taken(&idx)) {
                    Some(taken) if !taken.is_empty() => taken,
                    _ => return Ok(()),
                }
            }
            SeatChoice::Best { count, cabin } => {
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
            None => Err(AppError::SeatUnavailable(
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
    ) -> Result<(Vec<String>, Arc<FlightSeats>), AppError> {
        let names = passengers
            .iter()
            .map(|x| passenger_name(&x.name))
            .collect::<Result<Vec<_>, _>>()?;
        let fs = self
            .inventory
            .get(flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        self.committer.catch_up_at_start().await?;
        Ok((names, fs))
    }

    pub async fn hold(
        &self,
        s: &AuthSession,
        p: params::HoldRequest,
    ) -> Result<Answer<BookingResult>, AppError> {
        let want = p.seats;
        let (passengers, fs) = self.party_on(&p.passengers, &p.flight_id).await?;
        self.unavailable_at_once(&fs, &want, s.user_id, &p.request_id)?;
        self.idempotent(s.user_id, "booking.hold", &p.request_id, |key, turn| async move {
            let ttl = self.config.hold_ttl as domain::Millis * 1000;
            self.seat_step_replying(&fs, &key, &turn, |w| {
                // the time of the decision (on a cluster it may wait for the flight's
                // turn, and be made again)
                let now = domain::now_ms();
                let user_lines = self.check_open_holds(s.user_id, now)?;
                let flight = check_bookable(&fs, now)?;
                let idx = match &want {
                    SeatChoice::Named(seats) => {
                        let idx = seat_indices(w, seats)?;
                        let taken = w.taken(&idx);
                        if !taken.is_empty() {
                            return Err(AppError::SeatUnavailable(taken.iter().map(|s| s.to_string()).collect()));
                        }
                        idx
                    }
                    SeatChoice::Best { count, cabin } => seating::pick(fs.aircraft, &w.free_mask(), *cabin, *count)
                        .ok_or_else(|| AppError::SeatUnavailable(Vec::new()))?,
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
                    let result = BookingResult::new(BookingView {
                        booking: b.clone(),
                        flight: Some(flight.clone()),
                    });
                    let batch = Batch {
                        new_bookings: vec![b.clone()],
                        events: vec![(s.user_id, event("held", Some(&b.locator), now, json!({
                            "flight_id": flight.id, "seats": b.seats.iter().map(|x| x.seat.to_string()).collect::<Vec<_>>(),
                            "total": wire::money(b.total),
                        })))],
                        replies: vec![(key.clone(), remember_ok(&result))],
                        user_lines: user_lines.clone(),
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
                Ok((Some(ticket), Answer::Now(result)))
            })
            .await?
            .reply()
        })
        .await
    }

    pub async fn cancel(
        self: &Arc<Self>,
        s: &AuthSession,
        p: params::CancelRequest,
    ) -> Result<Answer<BookingResult>, AppError> {
        self.committer.catch_up_at_start().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let only = p.seats;
        let fs = self.flight_seats(&booking.flight_id)?;
        self.idempotent(s.user_id, CANCEL, &p.request_id, |key, _| async move {
            let mut only = only;
            let loc = booking.locator;
            let departs_at = fs.flight().departs_at;
            loop {
                // a hold is released at once; a confirmed booking is refunded first
                let step = self.seat_step(&fs, Some(&key), |w| {
                    let now = domain::now_ms();
                    let mut b = self
                        .store
                        .booking(&loc)?
                        .ok_or(AppError::NotFound("booking"))?;
                    if self.paying(w, &loc, &|_| false)? {
                        return Err(busy_error());
                    }
                    if let Some(open) = self.store.open_refund(loc.as_str())? {
                        // the airline's refund is its cancellation job's to make and
                        // count, whatever the passenger asks meanwhile
                        if open.reason == RefundReason::FlightCancelled {
                            return Err(airline_cancelled());
                        }
                        return Ok((None, CancelStep::Finish(Busy::mark(&fs, w, &loc)?, open)));
                    }
                    if b.status == domain::BookingStatus::Held {
                        if only.is_some() {
                            return Err(AppError::InvalidState(
                                "only a confirmed booking can be cancelled seat by seat".into(),
                            ));
                        }
                        b.release(now)?;
                        let result = BookingResult::new(self.booking_view(b.clone()));
                        let reply = Some((key.clone(), remember_ok(&result)));
                        let ticket =
                            self.end_hold(&fs, w, &b, "cancelled", json!({}), reply)?;
                        Ok((Some(ticket), CancelStep::Released(Box::new(result))))
                    } else {
                        // the airline's job refunds it in full; the passenger's rule
                        // could pay back less
                        if fs.flight().cancelled.is_some() {
                            return Err(airline_cancelled());
                        }
                        if fs.is_closing() {
                            // not durable yet, and it may still fail: not told as done
                            return Err(AppError::InvalidState(
                                "the airline is cancelling this flight, which refunds every booking on it in full; if it is not cancelled after all, cancel again".into(),
                            ));
                        }
                        fs.flight().check(domain::flight::Operation::Refund, now)?;
                        let (seats, amount) = b.refund_quote(only.as_deref(), departs_at, now)?;
                        let order_id = b.order_id.clone().unwrap_or_default();
                        let order = self.store.order(&order_id)?.ok_or(AppError::Internal)?;
                        let reason = RefundReason::Cancel {
                            request_id: key.request_id.clone(),
                        };
                        let mut refund = self.seat_refund(&b, &order, seats, amount, reason)?;
                        self.reserve_try(&mut refund);
                        if w.busy.contains(&loc) {
                            return Err(busy_error());
                        }
                        // opened only on the flight's version quoted: after a seat change
                        // through another node in between, the quote is made again
                        let mut open = Batch {
                            new_refunds: vec![refund.clone()],
                            ..Default::default()
                        };
                        let expect = self.decided_on(&fs, w, &mut open);
                        let ticket = self.committer.submit(open, expect, || None)?;
                        // marked only now: a guard dropped on an error above would
                        // lock the working map this closure already holds
                        let busy = Busy::mark(&fs, w, &loc)?;
                        Ok((Some(ticket), CancelStep::Refund(busy, refund)))
                    }
                });
                match step.await? {
                    Step::Done(CancelStep::Released(result)) => {
                        self.cancel_waiting(&loc);
                        return Ok(Answer::Now(*result));
                    }
                    Step::Replayed(memo) => return super::replay(memo),
                    Step::Done(CancelStep::Finish(busy, open)) => {
                        // this request's own refund, interrupted: finishing it answers;
                        // another's: finish it, then decide this one anew
                        let ours = open.reason
                            == (RefundReason::Cancel {
                                request_id: key.request_id.clone(),
                            });
                        if ours {
                            return self.finish_seat_refund(&fs, open, busy).await;
                        }
                        // another request's: what it leaves of this one is done next, and
                        // a request it does in full is answered with it, in its batch (not
                        // `invalid_state`: this very request made the refund)
                        let covered = |x: &SeatId| open.seats.contains(x);
                        let (done, left) = match &only {
                            Some(named) => {
                                let left: Vec<SeatId> =
                                    named.iter().copied().filter(|x| !covered(x)).collect();
                                // an empty list is refused once that refund is done
                                (!named.is_empty() && left.is_empty(), Some(left))
                            }
                            None => {
                                let b = self.store.booking(&loc)?.ok_or(AppError::Internal)?;
                                (b.seats.iter().all(|x| covered(&x.seat)), None)
                            }
                        };
                        let also = done.then(|| key.clone());
                        let result = self
                            .finish_seat_refund_answering(&fs, open, busy, also)
                            .await?;
                        if done {
                            return Ok(result);
                        }
                        only = left;
                        continue;
                    }
                    Step::Done(CancelStep::Refund(busy, refund)) => {
                        return self.finish_opened_refund(&fs, refund, busy).await;
                    }
                }
            }
        })
        .await
    }

    pub async fn change_seat(
        &self,
        s: &AuthSession,
        p: params::ChangeSeatRequest,
    ) -> Result<Answer<BookingResult>, AppError> {
        self.committer.catch_up_at_start().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let (from, to) = (p.from, p.to);
        let fs = self.flight_seats(&booking.flight_id)?;
        self.idempotent(
            s.user_id,
            "booking.change_seat",
            &p.request_id,
            |key, _| async move {
                let loc = booking.locator;
                self.seat_step(&fs, Some(&key), |w| {
                    let now = domain::now_ms();
                    check_bookable(&fs, now)?;
                    let mut b = self
                        .store
                        .booking(&loc)?
                        .ok_or(AppError::NotFound("booking"))?;
                    if self.paying(w, &loc, &|_| false)?
                        || self.store.open_refund(loc.as_str())?.is_some()
                    {
                        return Err(busy_error());
                    }
                    let to_idx = seat_indices(w, &[to])?[0];
                    let from_idx = w.index(from).ok_or_else(|| {
                        AppError::InvalidParams(format!("seat {from} is not on this booking"))
                    })?;
                    b.change_seat(from, to, fs.aircraft.seats()[to_idx].cabin, now)?;
                    let taken = w.taken(&[to_idx]);
                    if !taken.is_empty() {
                        return Err(AppError::SeatUnavailable(vec![to.to_string()]));
                    }
                    let result = BookingResult::new(self.booking_view(b.clone()));
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
                        // a refund opened through another node after this read names
                        // the seat this change moves
                        refunds_absent: vec![loc.as_str().to_owned()],
                        ..Default::default()
                    };
                    let occupant = Occupant {
                        locator: loc.clone(),
                        booked: true,
                    };
                    let updates = vec![(from_idx, None), (to_idx, Some(occupant))];
                    Ok((
                        Some(self.change_seats(&fs, w, batch, updates, &b)?),
                        Answer::Now(result),
                    ))
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
    ) -> Result<BookingResult, AppError> {
        let b = self
            .consistent_read(|| self.own_booking(s.user_id, &p.locator))
            .await?;
        Ok(BookingResult::new(self.booking_view(b)))
    }

    pub async fn bookings_list(
        &self,
        s: &AuthSession,
        p: params::ListPage,
    ) -> Result<Bookings, AppError> {
        let (list, more) = self
            .list_page(
                p,
                |l| {
                    let b = self.own_booking(s.user_id, l)?;
                    Ok((b.created_at, b.locator.to_string()))
                },
                |page| self.store.user_bookings(s.user_id, page),
            )
            .await?;
        Ok(Bookings {
            bookings: list.into_iter().map(|b| self.booking_view(b)).collect(),
            more,
        })
    }

    pub async fn orders_list(
        &self,
        s: &AuthSession,
        p: params::ListPage,
    ) -> Result<Orders, AppError> {
        let (list, more) = self
            .list_page(
                p,
                |id| match self.store.order(id)? {
                    Some(o) if o.user_id == s.user_id => Ok((o.created_at, o.order_id)),
                    _ => Err(AppError::NotFound("order")),
                },
                |page| self.store.user_orders(s.user_id, page),
            )
            .await?;
        Ok(Orders {
            orders: list.into_iter().map(OrderView).collect(),
            more,
        })
    }

    /// A page of one of the caller's lists: `cursor` gives the `created_at` and id of
    /// the record `before` names (one of the caller's, else `not_found`), `read`
    /// reads the page.
    pub(super) async fn list_page<T>(
        &self,
        p: params::ListPage,
        cursor: impl Fn(&str) -> Result<(domain::Millis, String), AppError>,
        read: impl Fn(Page) -> Result<Paged<T>, StoreError>,
    ) -> Result<Paged<T>, AppError> {
        let limit = super::checked_limit(p.limit, MAX_LIST, MAX_LIST)?;
        self.consistent_read(|| {
            let before = p.before.as_deref().map(&cursor).transpose()?;
            let before = before.as_ref().map(|(at, id)| (*at, id.as_str()));
            Ok(read(Page { limit, before })?)
        })
        .await
    }

    pub async fn history_list(
        &self,
        s: &AuthSession,
        p: params::Limit,
    ) -> Result<History, AppError> {
        let limit = super::checked_limit(p.limit, DEFAULT_HISTORY, MAX_HISTORY)?;
        let events = self
            .consistent_read(|| Ok(self.store.history(s.user_id, limit)?))
            .await?;
        Ok(History {
            events: events
                .into_iter()
                .map(|e| HistoryEntry {
                    at: e.at,
                    kind: e.kind,
                    locator: e.locator,
                    detail: e.detail,
                })
                .collect(),
        })
    }
}
