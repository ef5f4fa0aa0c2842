//! The waitlist use cases: joining and leaving a sold-out cabin's line, listing
//! one's entries, and serving the line inside every seat change of a flight
//! ([`App::serve_waitlist`]), so that freed seats become the next entries' holds in
//! the very version that frees them. Entries of a flight that is cancelled or
//! departs expire in a sweep of their own ([`App::expire_closed_lines`]), woken by the
//! flight record that closes the line, so a flight whose seats never change again
//! still ends its line.

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;

use super::bookings::{check_bookable, new_locator};
use super::busy::busy_error;
use super::Step;
use super::{booking_push, event, remember_ok, App, AuthSession};
use crate::app::AppError;
use crate::domain::waitlist::{self, MAX_WAITING_PER_USER};
use crate::domain::{
    self, seating, Booking, BookingStatus, Cabin, Flight, FlightId, FlightStatus, Millis, UserId,
    WaitlistEntry, WaitlistStatus,
};
use crate::fanout::Utf8Bytes;
use crate::inventory::{FlightSeats, Occupant, Working};
use crate::protocol::results::{
    self, Answer, BookingView, Entries, EntryResult, EntryView, Offered,
};
use crate::protocol::{params, wire};
use crate::store::{Batch, StoreError, UserLineCheck};

/// Flights whose line closed (cancelled or departed) and may still have waiting
/// entries, for the sweep that expires them, and that sweep's wake-up.
#[derive(Default)]
pub(super) struct ClosedLines {
    due: parking_lot::Mutex<HashSet<FlightId>>,
    pub(super) wake: Notify,
}

/// Waiting entries of a closed line expired in one batch: 3 writes and a compare
/// each stay well within etcd's default limit of 128 operations per transaction.
const EXPIRY_CHUNK: usize = 32;

/// An entry a closed line still has to end: waiting, or offered and not yet paid.
fn still_open(status: WaitlistStatus) -> bool {
    matches!(status, WaitlistStatus::Waiting | WaitlistStatus::Offered)
}

/// Whether a flight's waitlist is over: the flight is cancelled or has departed.
fn line_closed(f: &Flight, now: Millis) -> bool {
    matches!(
        f.status(now),
        FlightStatus::Cancelled | FlightStatus::Departed
    )
}

/// What serving a flight's waitlist in one seat change did, for after it is durable.
#[derive(Default)]
pub(super) struct Served {
    /// Pushes to entry owners.
    pub frames: Vec<(UserId, Utf8Bytes)>,
    /// The holds offered, for the expiry queue.
    pub holds: Vec<Booking>,
}

fn entry_view(e: &WaitlistEntry, position: Option<usize>) -> EntryView {
    EntryView {
        entry: e.clone(),
        position,
    }
}

/// `waitlist.updated`: an entry's new state or place in line.
fn updated_push(e: &WaitlistEntry, position: Option<usize>) -> Utf8Bytes {
    let params = EntryResult {
        entry: entry_view(e, position),
    };
    Utf8Bytes::from(results::push("waitlist.updated", &params))
}

/// `waitlist.offered`: an entry's seats, held for its owner as `booking`.
fn offered_push(
    e: &WaitlistEntry,
    position: Option<usize>,
    booking: &Booking,
    flight: Option<Flight>,
) -> Utf8Bytes {
    let params = Offered {
        entry: entry_view(e, position),
        booking: BookingView {
            booking: booking.clone(),
            flight,
        },
    };
    Utf8Bytes::from(results::push("waitlist.offered", &params))
}

/// Free seats per cabin in a seat mask.
fn free_by_cabin(fs: &FlightSeats, free: &[bool]) -> HashMap<Cabin, usize> {
    let mut n = HashMap::new();
    for (info, _) in fs.aircraft.seats().iter().zip(free).filter(|(_, f)| **f) {
        *n.entry(info.cabin).or_insert(0) += 1;
    }
    n
}

/// Sets seat `i`'s update in `updates`, replacing an earlier one for the same seat.
fn set_update(updates: &mut Vec<(usize, Option<Occupant>)>, i: usize, o: Option<Occupant>) {
    match updates.iter_mut().find(|(k, _)| *k == i) {
        Some(u) => u.1 = o,
        None => updates.push((i, o)),
    }
}

impl App {
    /// Brings a flight's waitlist up to date with a seat change about to be written
    /// (`updates` to the working map `w`, made by `booking`, if any): the entry offered
    /// `booking` is accepted when it is paid and expires when it ends; then every
    /// waiting entry the free seats now serve gets its held booking, in `batch` and
    /// `updates`. On a cancelled or departed flight waiting entries expire instead;
    /// while it boards (no holds) nothing is offered.
    pub(super) fn serve_waitlist(
        &self,
        fs: &Arc<FlightSeats>,
        w: &Working,
        batch: &mut Batch,
        updates: &mut Vec<(usize, Option<Occupant>)>,
        booking: Option<&Booking>,
    ) -> Result<Served, StoreError> {
        let stored = self.store.flight_waitlist(&fs.id)?;
        if stored.is_empty() && batch.waitlist.is_empty() {
            return Ok(Served::default());
        }
        let now = domain::now_ms();
        let before = waitlist::positions(&stored);
        let read = stored.clone();
        let mut entries = stored;
        let mut changed: HashSet<String> = HashSet::new();
        // entries the batch writes already (a leave) are taken as the batch has them
        for e in std::mem::take(&mut batch.waitlist) {
            changed.insert(e.id.clone());
            match entries.iter_mut().find(|x| x.id == e.id) {
                Some(x) => *x = e,
                None => entries.push(e),
            }
        }
        if let Some(b) = booking {
            for e in entries.iter_mut().filter(|e| {
                e.status == WaitlistStatus::Offered && e.locator.as_ref() == Some(&b.locator)
            }) {
                let end = match b.status {
                    BookingStatus::Held => continue,
                    BookingStatus::Confirmed => WaitlistStatus::Accepted,
                    _ => WaitlistStatus::Expired,
                };
                if e.end(end, now).is_ok() {
                    changed.insert(e.id.clone());
                }
            }
        }
        let mut offered: Vec<(String, Booking)> = Vec::new();
        if line_closed(&fs.flight(), now) {
            // one chunk per batch (an etcd transaction has at most `--max-txn-ops`
            // operations), the back of the line first so the rest keep their positions
            // an offer ends too: its hold can no longer be paid, and stays until it
            // is released or runs out
            let mut waiting: Vec<&mut WaitlistEntry> = entries
                .iter_mut()
                .filter(|e| still_open(e.status))
                .collect();
            waiting.sort_by(|a, b| b.order().cmp(&a.order()));
            for e in waiting.into_iter().take(EXPIRY_CHUNK) {
                if e.end(WaitlistStatus::Expired, now).is_ok() {
                    changed.insert(e.id.clone());
                }
            }
        } else if let Ok(flight) = check_bookable(fs, now) {
            // (while boarding nothing is offered: the line waits for the departure)
            let mut free = w.free_mask();
            for (i, o) in updates.iter() {
                free[*i] = o.is_none();
            }
            let counts = free_by_cabin(fs, &free);
            let ttl = self.config.hold_ttl as Millis * 1000;
            for i in waitlist::serve(&entries, |c| counts.get(&c).copied().unwrap_or(0)) {
                let e = &mut entries[i];
                let Some(idx) = seating::pick(fs.aircraft, &free, e.cabin, e.count()) else {
                    continue;
                };
                let seats: Vec<_> = idx
                    .iter()
                    .map(|&k| {
                        let info = &fs.aircraft.seats()[k];
                        (info.id, info.cabin, flight.fares.of(info.cabin))
                    })
                    .collect();
                let b = match Booking::hold(
                    new_locator(),
                    e.user_id,
                    flight.id.clone(),
                    seats,
                    e.passengers.clone(),
                    now,
                    ttl,
                ) {
                    Ok(b) => b,
                    // an entry joined before joins checked the offer's total (it would
                    // be above the largest amount): it can never be served, so it ends
                    // rather than hold the line; the change goes on
                    Err(x) => {
                        tracing::warn!(entry = %e.id, error = %x, "a waitlist entry that cannot be offered its seats expires");
                        if e.end(WaitlistStatus::Expired, now).is_ok() {
                            changed.insert(e.id.clone());
                        }
                        continue;
                    }
                };
                let occupant = Occupant {
                    locator: b.locator.clone(),
                    booked: false,
                };
                for &k in &idx {
                    free[k] = false;
                    set_update(updates, k, Some(occupant.clone()));
                }
                e.offer(b.locator.clone(), now);
                changed.insert(e.id.clone());
                batch.events.push((
                    e.user_id,
                    event(
                        "held",
                        Some(&b.locator),
                        now,
                        json!({
                            "flight_id": flight.id,
                            "seats": b.seats.iter().map(|x| x.seat.to_string()).collect::<Vec<_>>(),
                            "total": wire::money(b.total),
                            "waitlist": e.id,
                        }),
                    ),
                ));
                batch.new_bookings.push(b.clone());
                offered.push((e.id.clone(), b));
            }
        }
        let after = waitlist::positions(&entries);
        let flight = fs.flight();
        let mut served = Served::default();
        for e in &entries {
            let position = after.get(&e.id).copied();
            if let Some((_, b)) = offered.iter().find(|(id, _)| *id == e.id) {
                served.frames.push((
                    e.user_id,
                    offered_push(e, position, b, Some(flight.clone())),
                ));
                served
                    .frames
                    .push((e.user_id, booking_push(b, Some(&flight))));
            } else if changed.contains(&e.id) || before.get(&e.id).copied() != position {
                served.frames.push((e.user_id, updated_push(e, position)));
            }
        }
        batch.waitlist = entries
            .into_iter()
            .filter(|e| changed.contains(&e.id))
            .collect();
        // written only over the entries as read: two nodes expiring one closed line
        // at once cannot both expire an entry and tell its owner
        batch
            .waitlist_read
            .extend(read.into_iter().filter(|e| changed.contains(&e.id)));
        served.holds = offered.into_iter().map(|(_, b)| b).collect();
        Ok(served)
    }

    /// The action telling entry owners of a durable waitlist change (all of it runs
    /// before the replies), and queueing the offered holds' expiry.
    pub(super) fn served_action(&self, served: Served) -> crate::store::commit::Action {
        for b in &served.holds {
            if let Some(t) = b.hold_expires_at {
                self.expiry.schedule(t, &b.flight_id, &b.locator);
            }
        }
        let users = self.users.clone();
        let runtime = tokio::runtime::Handle::try_current().ok();
        Box::new(move || {
            for (user, frame) in &served.frames {
                users.push(*user, frame, runtime.as_ref(), None);
            }
            None
        })
    }

    /// Takes note of a flight record: when it closes the flight's line (cancelled or
    /// departed), the sweep is woken to expire the line's waiting entries.
    pub(super) fn note_line(&self, f: &Flight) {
        if line_closed(f, domain::now_ms()) {
            self.closed_lines.due.lock().insert(f.id.clone());
            self.closed_lines.wake.notify_one();
        }
    }

    /// Expires the waiting entries of every flight whose line closed since the last
    /// sweep; a flight that fails is tried again at the next one.
    pub(super) async fn expire_closed_lines(&self) {
        let due: Vec<FlightId> = self.closed_lines.due.lock().drain().collect();
        for id in due {
            let Some(fs) = self.inventory.get(id.as_str()) else {
                continue;
            };
            if let Err(e) = self.expire_line(&fs).await {
                tracing::warn!(flight = %id, error = %e, "cannot expire a closed waitlist; trying again later");
                self.closed_lines.due.lock().insert(id);
            }
        }
    }

    /// Expires the waiting and offered entries of a cancelled or departed flight, durably, a
    /// chunk per batch, and tells their owners (`waitlist.updated`).
    async fn expire_line(&self, fs: &Arc<FlightSeats>) -> Result<(), AppError> {
        self.committer.catch_up().await?;
        loop {
            let step = self.seat_step(fs, None, |w| {
                let waiting = self
                    .store
                    .flight_waitlist(&fs.id)?
                    .iter()
                    .any(|e| still_open(e.status));
                if !waiting || !line_closed(&fs.flight(), domain::now_ms()) {
                    return Ok((None, false));
                }
                Ok((
                    Some(self.write_change(fs, w, Batch::default(), Vec::new(), None)?),
                    true,
                ))
            });
            if let Step::Done(false) = step.await? {
                return Ok(());
            }
        }
    }

    fn own_entry(&self, user: UserId, id: &str) -> Result<WaitlistEntry, AppError> {
        match self.store.waitlist_entry(id)? {
            Some(e) if e.user_id == user => Ok(e),
            _ => Err(AppError::NotFound("waitlist entry")),
        }
    }

    pub async fn waitlist_join(
        &self,
        s: &AuthSession,
        p: params::WaitlistJoinRequest,
    ) -> Result<Answer<EntryResult>, AppError> {
        let (cabin, count) = (p.cabin, p.count);
        let (passengers, fs) = self.party_on(&p.passengers, &p.flight_id).await?;
        self.idempotent(s.user_id, "waitlist.join", &p.request_id, |key, _| async move {
            let under_cap = |n: usize| match n {
                n if n < MAX_WAITING_PER_USER => Ok(()),
                _ => Err(AppError::InvalidState(format!(
                    "at most {MAX_WAITING_PER_USER} waiting entries per user"
                ))),
            };
            let replicated = self.committer.is_replicated();
            // one node: the user's requests take turns, so the count cannot go stale
            if !replicated {
                under_cap(self.store.waiting_entries(s.user_id))?;
            }
            let id = format!("W{}", self.store.next_id()?);
            self.seat_step(&fs, Some(&key), |w| {
                // a cluster: the user's joins as read with their entries' count (one
                // applied from another node is in both or neither); a join through
                // another node after it fails this one's write, and the next round
                // counts again
                let user_lines = match replicated {
                    true => {
                        let (read, waiting) = self.store.user_line(s.user_id)?;
                        under_cap(waiting)?;
                        vec![UserLineCheck {
                            user: s.user_id,
                            read,
                        }]
                    }
                    false => Vec::new(),
                };
                let now = domain::now_ms();
                let flight = check_bookable(&fs, now)?;
                // the hold an offer would make must be one a booking can be
                domain::Money::sum(std::iter::repeat_n(flight.fares.of(cabin), count))?;
                let free = free_by_cabin(&fs, &w.free_mask())
                    .get(&cabin)
                    .copied()
                    .unwrap_or(0);
                if free >= count {
                    return Err(AppError::SeatsAvailable(format!(
                        "{free} seats are available in {}: hold them instead",
                        cabin.as_str()
                    )));
                }
                // the line's revision before the line: a join through another node
                // that this read misses fails this one's write, and it is made again
                let line_check = self.line_check(&fs, true)?;
                let mut line = self.store.flight_waitlist(&fs.id)?;
                let joined = waitlist::join_time(&line, now);
                let entry = WaitlistEntry {
                    id: id.clone(),
                    user_id: s.user_id,
                    flight_id: fs.id.clone(),
                    cabin,
                    passengers: passengers.clone(),
                    status: WaitlistStatus::Waiting,
                    created_at: joined,
                    updated_at: joined,
                    locator: None,
                };
                line.push(entry.clone());
                let position = waitlist::positions(&line).get(&id).copied();
                let result = EntryResult {
                    entry: EntryView {
                        entry: entry.clone(),
                        position,
                    },
                };
                let mut batch = Batch {
                    events: vec![(
                        s.user_id,
                        event(
                            "waitlisted",
                            None,
                            now,
                            json!({ "flight_id": fs.id, "cabin": cabin.as_str(), "count": count, "waitlist": id }),
                        ),
                    )],
                    waitlist: vec![entry],
                    // a twin through another node is not ordered by the version (a
                    // join moves no seat): the first reply wins, the other replays it
                    first_replies: vec![(key.clone(), remember_ok(&result))],
                    // a seat freed through another node at this moment sees the entry
                    lines: line_check.into_iter().collect(),
                    user_lines,
                    ..Default::default()
                };
                // ordered with the flight's seat changes: on a cluster, a seat freed
                // through another node meanwhile makes this decision again
                let expect = self.decided_on(&fs, w, &mut batch);
                let ticket = self.committer.submit(batch, expect, || None)?;
                Ok((Some(ticket), Answer::Now(result)))
            })
            .await?
            .reply()
        })
        .await
    }

    /// Leaves the line; an offered entry's hold is released and its seats offered on,
    /// and its payments still waiting for their customer are cancelled.
    pub async fn waitlist_leave(
        self: &Arc<Self>,
        s: &AuthSession,
        p: params::WaitlistRef,
    ) -> Result<Answer<EntryResult>, AppError> {
        self.committer.catch_up_at_start().await?;
        let entry = self.own_entry(s.user_id, &p.id)?;
        let fs = self.flight_seats(&entry.flight_id)?;
        let _serial = self.user_turn(s.user_id).await;
        let mut released = None;
        let step = self.seat_step(&fs, None, |w| {
            released = None;
            let now = domain::now_ms();
            let mut e = self.own_entry(s.user_id, &p.id)?;
            if e.status == WaitlistStatus::Left {
                return Ok((None, Answer::Now(EntryResult::left(e))));
            }
            e.end(WaitlistStatus::Left, now)?;
            let result = Answer::Now(EntryResult::left(e.clone()));
            let mut batch = Batch {
                events: vec![(
                    s.user_id,
                    event(
                        "waitlist_left",
                        e.locator.as_ref(),
                        now,
                        json!({ "waitlist": e.id }),
                    ),
                )],
                waitlist: vec![e.clone()],
                ..Default::default()
            };
            let hold = match &e.locator {
                Some(loc) => self
                    .store
                    .booking(loc)?
                    .filter(|b| b.status == BookingStatus::Held),
                None => None,
            };
            if let Some(mut b) = hold {
                if self.paying(w, &b.locator, &|_| false)? {
                    return Err(busy_error());
                }
                b.release(now)?;
                self.unless_paid_meanwhile(&mut batch, &b.locator)?;
                batch.bookings.push(b.clone());
                batch.events.push((
                    s.user_id,
                    event("cancelled", Some(&b.locator), now, json!({})),
                ));
                let updates = w.release(&b.locator, b.seats.iter().map(|x| x.seat));
                let ticket = self.change_seats(&fs, w, batch, updates, &b)?;
                released = Some(b.locator);
                return Ok((Some(ticket), result));
            }
            Ok((
                Some(self.write_change(&fs, w, batch, Vec::new(), None)?),
                result,
            ))
        });
        let step = step.await?;
        if let Some(loc) = released {
            self.cancel_waiting(&loc);
        }
        step.reply()
    }

    pub async fn waitlist_list(
        &self,
        s: &AuthSession,
        p: params::ListPage,
    ) -> Result<Entries, AppError> {
        // the page and its positions in one read
        let (entries, more) = self
            .list_page(
                p,
                |id| {
                    let e = self.own_entry(s.user_id, id)?;
                    Ok((e.created_at, e.id))
                },
                |page| {
                    let (mine, more) = self.store.user_waitlist(s.user_id, page)?;
                    Ok((self.with_positions(mine)?, more))
                },
            )
            .await?;
        Ok(Entries { entries, more })
    }

    /// Entries with each waiting one's current position in its line.
    fn with_positions(&self, mine: Vec<WaitlistEntry>) -> Result<Vec<EntryView>, StoreError> {
        let mut lines: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let mut out = Vec::with_capacity(mine.len());
        for e in mine {
            let position = match e.status {
                WaitlistStatus::Waiting => {
                    let line = match lines.get(e.flight_id.as_str()) {
                        Some(l) => l,
                        None => {
                            let l = waitlist::positions(&self.store.flight_waitlist(&e.flight_id)?);
                            lines.entry(e.flight_id.to_string()).or_insert(l)
                        }
                    };
                    line.get(&e.id).copied()
                }
                _ => None,
            };
            out.push(EntryView { entry: e, position });
        }
        Ok(out)
    }
}

/// The pushes of one replicated revision's entry changes to their owners on this
/// node: an offer when its hold is in the same revision, an update otherwise, and an
/// update to every other waiting entry of those lines whose position moved (told
/// from the changed entries' previous states, so every node sends them).
pub(super) fn replicated_pushes(
    app: &App,
    changed: &[&WaitlistEntry],
    bookings: &[&Booking],
) -> Vec<(UserId, Utf8Bytes)> {
    let mut out = Vec::new();
    let flights: HashSet<&FlightId> = changed.iter().map(|e| &e.flight_id).collect();
    for flight in flights {
        let line = app.store.flight_waitlist(flight).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read a waitlist to push its changes");
            Vec::new()
        });
        let mine: Vec<&WaitlistEntry> = changed
            .iter()
            .copied()
            .filter(|e| e.flight_id == *flight)
            .collect();
        let is_changed = |id: &str| mine.iter().any(|e| e.id == id);
        let mut earlier: Vec<WaitlistEntry> = line
            .iter()
            .filter(|e| !is_changed(&e.id))
            .cloned()
            .collect();
        earlier.extend(mine.iter().filter_map(|e| {
            e.previous_status().map(|status| WaitlistEntry {
                status,
                ..(*e).clone()
            })
        }));
        let (before, after) = (waitlist::positions(&earlier), waitlist::positions(&line));
        let meta = app.inventory.get(flight.as_str()).map(|f| f.flight());
        // a join is answered to its requester, not pushed
        for e in mine.iter().filter(|e| e.previous_status().is_some()) {
            let position = after.get(&e.id).copied();
            let hold = bookings.iter().find(|b| {
                e.status == WaitlistStatus::Offered
                    && Some(&b.locator) == e.locator.as_ref()
                    && b.status == BookingStatus::Held
            });
            let frame = match hold {
                Some(b) => offered_push(e, position, b, meta.clone()),
                None => updated_push(e, position),
            };
            out.push((e.user_id, frame));
        }
        for e in line.iter().filter(|e| !is_changed(&e.id)) {
            let position = after.get(&e.id).copied();
            if position.is_some() && before.get(&e.id).copied() != position {
                out.push((e.user_id, updated_push(e, position)));
            }
        }
    }
    out
}
