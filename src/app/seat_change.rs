//! The one way seats change: with the flight's working map locked, a use case's
//! decision becomes one store batch carrying the flight's next version (the
//! waitlist served in the same batch), submitted to the committer; once durable,
//! the working map has the change and its announcement goes out (`seats.changed`,
//! `booking.updated`). On a replicated store a decision that lost a race to another
//! node is made again on the newer map.

use serde_json::Value;
use std::sync::Arc;

use crate::app::AppError;
use crate::domain::{self, Booking, Flight, UserId};
use crate::fanout::Requester;
use crate::inventory::{FlightSeats, Occupant, SeatChange, Working};
use crate::protocol::envelope;
use crate::protocol::results::{self, Replayable};
use crate::store::commit::{Action, Later, Ticket};
use crate::store::{Batch, IdemKey, LineCheck, Memo, StoreError};

use super::{cluster, event, replay, waitlist, App, Turn, REPLY_KEY};

/// A request's reply, sent by the announcement of its change
/// ([`App::early_reply`]).
type EarlyReply = (Arc<Requester>, crate::fanout::Utf8Bytes);

/// How often a seat change is decided again after other nodes changed the flight first.
const MAX_SEAT_TRIES: usize = 64;

/// How a seat change ended: done here, or the request had been answered already.
pub(super) enum Step<R> {
    Done(R),
    /// The memo of the answer it got.
    Replayed(Value),
}

impl<R: Replayable> Step<R> {
    pub(super) fn reply(self) -> Result<R, AppError> {
        match self {
            Step::Done(v) => Ok(v),
            Step::Replayed(memo) => replay(memo),
        }
    }
}

impl App {
    /// The action that tells the world of a durable seat change made for `booking`:
    /// first the connections of the users it concerns (the booking's owner, among them
    /// the requester, and the waitlist entries `served`) get the seat change and their
    /// pushes; what it returns, run once the requests are woken, sends the seat
    /// change to the flight's other watchers.
    fn announce(
        &self,
        fs: &Arc<FlightSeats>,
        change: SeatChange,
        booking: Option<&Booking>,
        served: waitlist::Served,
        early: Option<EarlyReply>,
    ) -> Action {
        let fs = fs.clone();
        let owner = booking.map(|b| (b.user_id, booking_push(b, Some(&fs.flight()))));
        let mut concerned: Vec<UserId> = served.frames.iter().map(|(u, _)| *u).collect();
        concerned.extend(owner.as_ref().map(|(u, _)| *u));
        let users = self.users.clone();
        let boards = self.boards.clone();
        let waitlist = self.served_action(served);
        // the fan-out's writes go to the server's blocking threads, not the commit loop
        let runtime = tokio::runtime::Handle::try_current().ok();
        let requester = crate::fanout::requester();
        Box::new(move || {
            let others = fs.publish_first(&change, &users.connection_ids(concerned));
            if change.availability_changed {
                boards.seats_changed(&fs.id);
            }
            if let Some((owner, frame)) = &owner {
                users.push(*owner, frame, runtime.as_ref(), requester);
            }
            waitlist();
            if let Some((request, reply)) = early {
                request.reply_early(reply);
            }
            others.then(|| Box::new(move || fs.fan_out(change.version, runtime.as_ref())) as Later)
        })
    }

    /// Frees the seats of `b`, a hold just ended (released, expired, cancelled by the
    /// airline) at `b.updated_at`, in the flight's locked working map: writes the
    /// booking with the user's event `kind` (and `reply`, the request's answer) as the
    /// flight's next version (see [`App::change_seats`]). The caller found no payment
    /// of it running; on a cluster the write fails if one began meanwhile (see
    /// [`App::unless_paid_meanwhile`]).
    pub(super) fn end_hold(
        &self,
        fs: &Arc<FlightSeats>,
        w: &mut Working,
        b: &Booking,
        kind: &str,
        detail: Value,
        reply: Option<(IdemKey, Memo)>,
    ) -> Result<Ticket, StoreError> {
        let mut batch = Batch {
            bookings: vec![b.clone()],
            events: vec![(
                b.user_id,
                event(kind, Some(&b.locator), b.updated_at, detail),
            )],
            replies: reply.into_iter().collect(),
            ..Default::default()
        };
        self.unless_paid_meanwhile(&mut batch, &b.locator)?;
        let updates = w.release(&b.locator, b.seats.iter().map(|x| x.seat));
        self.change_seats(fs, w, batch, updates, b)
    }

    /// The one way seats change, called with the flight's working map locked: writes
    /// `batch` with the flight's next version, applies `updates` to the working map and
    /// enqueues the announcement of `booking`, published once the batch is durable.
    ///
    /// On a replicated store the working map is left as it is: the write commits only
    /// if no other node changed the flight meanwhile, and the change feed applies it.
    ///
    /// The flight's waitlist is served in the same batch and version (see
    /// [`App::serve_waitlist`]).
    pub(super) fn change_seats(
        &self,
        fs: &Arc<FlightSeats>,
        w: &mut Working,
        batch: Batch,
        updates: Vec<(usize, Option<Occupant>)>,
        booking: &Booking,
    ) -> Result<Ticket, StoreError> {
        self.write_change(fs, w, batch, updates, Some(booking))
    }

    /// What a batch decided under the flight's working-map lock expects of the store:
    /// the flight's version, and on a replicated store its record as this node has it
    /// (which cannot change under that lock): a cancellation, boarding or departure
    /// through another node that this node has not applied yet moves no version, so
    /// it fails the batch by the record, and the decision is made again on the new one.
    pub(super) fn decided_on(
        &self,
        fs: &FlightSeats,
        w: &Working,
        batch: &mut Batch,
    ) -> Option<(domain::FlightId, u64)> {
        if self.committer.is_replicated() {
            batch.flights_read.push(fs.flight());
        }
        Some((fs.id.clone(), w.version))
    }

    /// [`App::change_seats`], also for a change of the flight's waitlist made by no
    /// booking (`booking` `None`: a leave, an expiry of the line). Such a change moves
    /// no seat and takes no version, unless serving the line offers seats: on a
    /// cluster a seat freed through another node can miss a waiting entry that joined
    /// at the same moment, and the next change of the line offers it then, as the
    /// flight's next version like any other seat change.
    pub(super) fn write_change(
        &self,
        fs: &Arc<FlightSeats>,
        w: &mut Working,
        mut batch: Batch,
        mut updates: Vec<(usize, Option<Occupant>)>,
        booking: Option<&Booking>,
    ) -> Result<Ticket, StoreError> {
        if booking.is_none() || updates.iter().any(|(_, o)| o.is_none()) {
            // read before the line is: a join through another node after this read
            // fails this change, which is then decided again seeing the new entry
            batch.lines.extend(self.line_check(fs, false)?);
        }
        let served = self.serve_waitlist(fs, w, &mut batch, &mut updates, booking)?;
        let expect = self.decided_on(fs, w, &mut batch);
        if booking.is_none() && updates.is_empty() {
            return self
                .committer
                .submit(batch, expect, || Some(self.served_action(served)));
        }
        let next = w.version + 1;
        batch.versions.push((fs.id.clone(), next));
        if self.committer.is_replicated() {
            batch.seat_feed = Some(cluster::feed(&fs.id, next, &updates));
        }
        let early = self.early_reply(&batch);
        self.committer.submit(batch, expect, || {
            let change = w.apply(updates);
            if let Some(b) = booking.filter(|b| b.status != domain::BookingStatus::Held) {
                self.expiry.forget(&b.locator);
            }
            Some(self.announce(fs, change, booking, served, early))
        })
    }

    /// The reply to the request this task handles, if `batch` remembers it as a
    /// success (under the key [`App::idempotent`] set): the announcement sends it
    /// once the batch is durable, right behind the requester's pushes, so that the
    /// request is answered without waiting for its task to run again. Not on a
    /// replicated store, whose changes are announced by the change feed.
    fn early_reply(&self, batch: &Batch) -> Option<EarlyReply> {
        if self.committer.is_replicated() {
            return None;
        }
        let request = crate::fanout::request()?;
        let id = request.reply_id()?;
        let memo = REPLY_KEY
            .try_with(|key| batch.replies.iter().find(|(k, _)| k == key).map(|(_, m)| m))
            .ok()
            .flatten()?;
        let result = results::remembered_ok(&memo.0)?;
        let reply = crate::fanout::Utf8Bytes::from(envelope::success_encoded(id, result));
        Some((request, reply))
    }

    /// The flight's waitlist line as it reads now, for a batch that changes it
    /// (`advance`: a join) or may serve it; none on one node, which orders both by the
    /// flight's lock (see [`LineCheck`]).
    pub(super) fn line_check(
        &self,
        fs: &FlightSeats,
        advance: bool,
    ) -> Result<Option<LineCheck>, StoreError> {
        if !self.committer.is_replicated() {
            return Ok(None);
        }
        Ok(Some(LineCheck {
            flight: fs.id.clone(),
            read: self.store.line_revision(&fs.id)?,
            advance,
        }))
    }

    /// Decides a seat change with `decide` (which gets the locked working map and
    /// returns the ticket of its [`App::change_seats`], if it made one) and waits until
    /// it is durable. On a replicated store the flight's changes through this node
    /// take turns, and when another node changed the flight first the decision is
    /// made again on the newer map, unless the request (`key`) was answered meanwhile.
    pub(super) async fn seat_step<R>(
        &self,
        fs: &Arc<FlightSeats>,
        key: Option<&IdemKey>,
        decide: impl FnMut(&mut Working) -> Result<(Option<Ticket>, R), AppError>,
    ) -> Result<Step<R>, AppError> {
        self.seat_step_ending(fs, key, None, decide).await
    }

    /// [`App::seat_step`] for a change whose batch writes the request's reply (under
    /// `key`): on a local store the user's turn ends once the batch is written, and
    /// only then does the request wait for it to be durable (see
    /// [`App::idempotent`]). A replicated store keeps the turn to the end: a
    /// decision may be made again there.
    pub(super) async fn seat_step_replying<R>(
        &self,
        fs: &Arc<FlightSeats>,
        key: &IdemKey,
        turn: &Turn<'_>,
        decide: impl FnMut(&mut Working) -> Result<(Option<Ticket>, R), AppError>,
    ) -> Result<Step<R>, AppError> {
        self.seat_step_ending(fs, Some(key), Some(turn), decide)
            .await
    }

    async fn seat_step_ending<R>(
        &self,
        fs: &Arc<FlightSeats>,
        key: Option<&IdemKey>,
        turn: Option<&Turn<'_>>,
        mut decide: impl FnMut(&mut Working) -> Result<(Option<Ticket>, R), AppError>,
    ) -> Result<Step<R>, AppError> {
        let replicated = self.committer.is_replicated();
        for _ in 0..MAX_SEAT_TRIES {
            let _turn = match replicated {
                true => {
                    self.committer.waiting();
                    Some(fs.turn.lock().await)
                }
                false => None,
            };
            let decided = {
                let mut w = fs.working();
                // a twin of the request may have succeeded through another node: the
                // mirror has every revision the working map has, so under its lock
                // this read cannot miss a change the decision would see (one node
                // serializes a user's requests, so a local store needs no look)
                let key = key.filter(|_| replicated);
                let answered = key.map(|k| self.store.reply(k)).transpose()?.flatten();
                if let Some(v) = answered.filter(|v| v.get("ok").is_some()) {
                    return Ok(Step::Replayed(v));
                }
                decide(&mut w).map_err(|e| (e, w.version))
            };
            let (ticket, out) = match decided {
                Ok(d) => d,
                // a refusal may rest on a change of another request that the working
                // map has and the disk may not yet (a seat held a moment ago): it is
                // answered once every change it could have seen is durable and
                // published, as any read is (a replicated store decides on committed
                // revisions only)
                Err((e, seen)) if !replicated && seen > fs.published_version() => {
                    self.committer.settle_reads().await?;
                    return Err(e);
                }
                Err((e, _)) => return Err(e),
            };
            let Some(ticket) = ticket else {
                return Ok(Step::Done(out));
            };
            if let Some(turn) = turn.filter(|_| !replicated) {
                turn.end(&ticket);
            }
            match self.committer.durable(ticket).await {
                Ok(()) => return Ok(Step::Done(out)),
                Err(StoreError::Stale) if replicated => self.refresh_flight(fs)?,
                Err(StoreError::Stale) => {}
                // a twin's reply was written first (`Batch::first_replies`): the next
                // round finds and replays it; or something the decision read changed
                // through another node: the next round decides on what is there now
                Err(StoreError::Conflict) if replicated => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(flight = %fs.id, "gave up on a seat change after {MAX_SEAT_TRIES} lost races");
        Err(AppError::Internal)
    }

    /// After a lost race on a replicated store, the flight's record as this node's
    /// copy of the store holds it, taken as any other (the change feed installs it
    /// too; this covers a record that fell behind anyway).
    fn refresh_flight(&self, fs: &Arc<FlightSeats>) -> Result<(), AppError> {
        if let Some(f) = self.store.flight(&fs.id)? {
            self.flight_record(fs, f);
        }
        Ok(())
    }
}

/// The `booking.updated` push telling a booking's owner of its new state.
pub(super) fn booking_push(b: &Booking, flight: Option<&Flight>) -> crate::fanout::Utf8Bytes {
    crate::fanout::Utf8Bytes::from(results::booking_updated(b, flight))
}
