//! Refunds, exactly once. Every refund (a passenger's cancel, the airline's flight
//! cancellation, an orphaned charge) is first written as a [`RefundRecord`] with a
//! fresh globally unique id (or, for a booking an older release paid, the key that
//! release would have used), its amount and its seats, and made durable; only then is
//! the gateway asked, with that id as the idempotency key. A retry after an error or a
//! crash (the user's, the flight cancellation job's, or the reconciler's) asks again
//! with the same key and amount, so the gateway refunds once; the booking and order
//! record the refund only after the gateway made it. While a booking has an open
//! refund, nothing else changes its seats or money (on a cluster too: opening a
//! refund is a create-only write per booking).

use serde_json::json;
use std::sync::Arc;

use super::busy::{busy_error, Busy};
use super::{event, remember_ok, App, AuthSession};
use crate::app::AppError;
use crate::domain::{self, BookingStatus, Locator, Money, Order, SeatId, UserId};
use crate::inventory::FlightSeats;
use crate::payments::{GatewayRefund, MadeRefund, PaymentError, RefundRequest};
use crate::protocol::params::{self, RefundOutcome};
use crate::protocol::results::{
    Answer, BookingResult, RefundResult, RefundView, Refunds, ResolutionView,
};
use crate::protocol::wire;
use crate::store::{
    AttemptState, Batch, IdemKey, RefundReason, RefundRecord, RefundResolution, StoreError,
};

pub(super) const CANCEL: &str = "booking.cancel";

impl RefundRecord {
    /// The `booking.cancel` request a passenger's refund answers.
    fn request_key(&self) -> Option<IdemKey> {
        match &self.reason {
            RefundReason::Cancel { request_id } => Some(IdemKey {
                user: self.user_id,
                method: CANCEL,
                request_id: request_id.clone(),
            }),
            _ => None,
        }
    }
}

/// The id of a new refund of a booking's `seats`: fresh and globally unique, unless
/// the booking was paid by the release before refund records (`paid_by_old_version`)
/// and that release may have made this very refund at the gateway before a crash
/// kept it from recording it. Then the refund takes the key that release used
/// (`refund-{locator}-{sorted seats joined by '.'}` for a passenger's cancel,
/// `flight-cancel-{locator}` for the airline's), so the gateway replays it rather than
/// refunding twice; a passenger's cancel never takes it for a seat refunded before,
/// whose key would replay a refund already recorded.
fn seat_refund_id(
    b: &domain::Booking,
    seats: &[SeatId],
    reason: &RefundReason,
    paid_by_old_version: bool,
) -> String {
    let refunded_before = || {
        seats
            .iter()
            .any(|s| b.cancelled_seats.iter().any(|c| c.seat == *s))
    };
    match reason {
        RefundReason::Cancel { .. } if paid_by_old_version && !refunded_before() => {
            let mut names: Vec<String> = seats.iter().map(|s| s.to_string()).collect();
            names.sort();
            format!("refund-{}-{}", b.locator, names.join("."))
        }
        RefundReason::FlightCancelled if paid_by_old_version => {
            format!("flight-cancel-{}", b.locator)
        }
        _ => super::unique_id("rf"),
    }
}

/// A new refund, with a fresh globally unique id.
pub fn new_refund(
    user_id: UserId,
    locator: &Locator,
    payment_ref: String,
    seats: Vec<SeatId>,
    amount: Money,
    reason: RefundReason,
) -> RefundRecord {
    let now = domain::now_ms();
    RefundRecord {
        id: super::unique_id("rf"),
        user_id,
        locator: locator.clone(),
        payment_ref,
        amount,
        seats,
        reason,
        done: false,
        created_at: now,
        updated_at: now,
        gateway_key: None,
        previous_keys: Vec::new(),
        resolutions: Vec::new(),
        failed_later: Vec::new(),
        made_ref: None,
        made_pending: false,
        asked_at: None,
        asked_until: None,
        refused_at: None,
        rejected_at: None,
        earlier_until: None,
    }
}

impl App {
    /// A new refund of a booking's `seats` for `amount` of its order's charge.
    pub(super) fn seat_refund(
        &self,
        b: &domain::Booking,
        order: &Order,
        seats: Vec<SeatId>,
        amount: Money,
        reason: RefundReason,
    ) -> Result<RefundRecord, AppError> {
        let paid_by_old_version = self
            .store
            .attempt_by_ref(&order.charge_id)?
            .is_none_or(|a| a.is_legacy());
        let mut r = new_refund(
            b.user_id,
            &b.locator,
            order.charge_id.clone(),
            Vec::new(),
            amount,
            reason,
        );
        r.id = seat_refund_id(b, &seats, &r.reason, paid_by_old_version);
        r.seats = seats;
        Ok(r)
    }

    /// Writes `batch`, which opens a refund; `false` if it conflicts (another refund
    /// of that subject is open, or something else it expects changed).
    pub(super) async fn opens(&self, batch: Batch) -> Result<bool, AppError> {
        match self.commit(batch).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Asks the gateway for an open refund, with its stored key and amount; returns
    /// the gateway's refund (none when there is nothing to pay), for [`made_by`].
    /// `r`, read under its booking's payment mark, is written first with the time of
    /// the call ([`RefundRecord::asked_at`]), and holds it after: a caller writes over
    /// that copy; unless `reserved`: asked with the try [`App::reserve_try`] wrote on
    /// the record when this caller opened it, unused and untouched since.
    pub(super) async fn make_refund(
        &self,
        r: &mut RefundRecord,
        reserved: bool,
    ) -> Result<Option<MadeRefund>, AppError> {
        self.ask_for_refund(r, reserved)
            .await?
            .map_err(|e| AppError::PaymentFailed(e.to_string()))
    }

    /// Writes on `r` the start and deadline of its next try: after every earlier try
    /// and change, so that one value names one try, and one payment span long. A
    /// try writes it durably before it asks; an opener about to ask at once (which
    /// then calls [`App::finish_opened_refund`]) writes it in the opening batch
    /// instead: one durable write fewer.
    /// The try before it stays waited on ([`RefundRecord::earlier_until`]) unless the
    /// gateway answered that it made nothing.
    pub(super) fn reserve_try(&self, r: &mut RefundRecord) {
        let now = domain::now_ms();
        let at = now
            .max(r.asked_at.map_or(0, |t| t + 1))
            .max(r.updated_at + 1);
        let span = self.payment_span().as_millis() as domain::Millis;
        let unanswered = r
            .asked_at
            .filter(|t| r.refused_at != Some(*t) && r.rejected_at != Some(*t));
        if let Some(t) = unanswered {
            let end = made_until(t, r.asked_until, span);
            r.earlier_until = r.earlier_until.max(Some(end));
        }
        (r.asked_at, r.asked_until) = (Some(at), Some(at.saturating_add(span)));
    }

    /// [`App::make_refund`], with the gateway's error as it came (`Ok(Err(_))`).
    /// A try ends by [`RefundRecord::asked_until`], one [`App::payment_span`] after it
    /// began: it sends nothing after that (see [`App::check_quiet`]).
    async fn ask_for_refund(
        &self,
        r: &mut RefundRecord,
        reserved: bool,
    ) -> Result<Result<Option<MadeRefund>, PaymentError>, AppError> {
        if r.amount == Money::ZERO {
            return Ok(Ok(None));
        }
        self.money_may_move()?;
        // changed through another node since it was read: nothing was asked
        if !reserved && !self.rewrite_refund(r, |x| self.reserve_try(x)).await? {
            return Err(busy_error());
        }
        let (Some(asked_at), Some(until)) = (r.asked_at, r.asked_until) else {
            return Err(AppError::Internal);
        };
        let now = domain::now_ms();
        let call = std::time::Duration::from_secs(self.config.gateway_timeout);
        let Some(left) = time_to_ask(until, now, self.payment_span(), call) else {
            // nothing asked: the next try dates one of its own
            return Ok(Err(PaymentError::Failed(
                "the refund's try ran out of time before the gateway was asked".into(),
            )));
        };
        let asking = self.payments.refund(RefundRequest {
            payment_ref: r.payment_ref.clone(),
            amount: r.amount,
            idempotency_key: r.key().to_owned(),
            look_up_first: now - r.created_at
                >= 1000 * self.config.refund_lookup_after as domain::Millis,
            earlier_keys: r.previous_keys.clone(),
            send_by: Some(until.saturating_sub(call.as_millis() as domain::Millis)),
        });
        let made = match tokio::time::timeout(left, asking).await {
            Ok(made) => made,
            Err(_) => Err(PaymentError::Failed(
                "the payment gateway did not finish the refund within the payment span".into(),
            )),
        };
        match made {
            Ok(made) => {
                self.refund_failures.remove(&r.id);
                Ok(Ok(Some(made)))
            }
            Err(e) => {
                // for every node: this try made nothing (unwritten, it is waited on
                // as if it might have)
                let note: Option<fn(&mut RefundRecord, domain::Millis)> = match &e {
                    PaymentError::Refused(_) => Some(|x, t| x.refused_at = Some(t)),
                    PaymentError::Rejected(_) => Some(|x, t| x.rejected_at = Some(t)),
                    _ => None,
                };
                if let Some(note) = note {
                    match self.rewrite_refund(r, |x| note(x, asked_at)).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(refund = %r.id, "a refusal of a refund not noted on its record: it changed meanwhile")
                        }
                        Err(w) => {
                            tracing::warn!(refund = %r.id, error = %w, "a refusal of a refund not noted on its record")
                        }
                    }
                }
                let mut seen = self.refund_failures.entry(r.id.clone()).or_default();
                seen.tries += 1;
                seen.last_error = e.to_string();
                Ok(Err(e))
            }
        }
    }

    /// Writes `change` on open refund `r`, read under its booking's payment mark, only
    /// over `r` as read; `r` holds it after. `false`, and nothing written, if the
    /// record changed meanwhile.
    async fn rewrite_refund(
        &self,
        r: &mut RefundRecord,
        change: impl FnOnce(&mut RefundRecord),
    ) -> Result<bool, AppError> {
        let mut changed = r.clone();
        change(&mut changed);
        match self.commit(rewritten(&changed, r.clone())).await {
            Ok(()) => {
                *r = changed;
                Ok(true)
            }
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes an open seat refund at the gateway, then records it on the booking and
    /// order and frees its seats, in one version of the flight, closing it. Returns
    /// the booking and order (`booking.cancel`'s answer). `busy` marks the booking on
    /// this node; on a cluster the booking's payment mark is taken for it too
    /// (`invalid_state` while another node pays, refunds or resolves it).
    pub(super) async fn finish_seat_refund(
        &self,
        fs: &Arc<FlightSeats>,
        r: RefundRecord,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        self.finish_seat_refund_answering(fs, r, busy, None).await
    }

    /// [`App::finish_seat_refund`] of `r`, which this caller opened with a try
    /// reserved on it ([`App::reserve_try`]).
    pub(super) async fn finish_opened_refund(
        &self,
        fs: &Arc<FlightSeats>,
        r: RefundRecord,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        self.finish_refund(fs, r, busy, None, true).await
    }

    /// [`App::finish_seat_refund`], whose recording also answers `also` (a request
    /// that this refund does in full), in the same batch.
    pub(super) async fn finish_seat_refund_answering(
        &self,
        fs: &Arc<FlightSeats>,
        r: RefundRecord,
        busy: Busy,
        also: Option<IdemKey>,
    ) -> Result<Answer<BookingResult>, AppError> {
        self.finish_refund(fs, r, busy, also, false).await
    }

    /// [`App::finish_seat_refund_answering`]; `opened`: as [`App::finish_opened_refund`].
    async fn finish_refund(
        &self,
        fs: &Arc<FlightSeats>,
        r: RefundRecord,
        busy: Busy,
        also: Option<IdemKey>,
        opened: bool,
    ) -> Result<Answer<BookingResult>, AppError> {
        let mark = self.take_refund_mark(&r, |_| false).await?;
        let finished = async {
            // the record as it is now, under the mark (an admin may have given it a key)
            let (mut r, made) = match self.check_still_open(&r)? {
                Some(mut now) => {
                    // the try reserved when it was opened is this one's, unless the
                    // record changed since (any other try writes one of its own)
                    let reserved = opened && now == r && r.asked_at.is_some();
                    let made = self.make_refund(&mut now, reserved).await;
                    (now, made)
                }
                None => (r, Ok(None)),
            };
            // the record as this try last read or wrote it: the close is written only
            // over it
            let read = r.clone();
            match made {
                Ok(made) => made_by(&mut r, made),
                Err(e) => {
                    tracing::warn!(refund = %r.id, locator = %r.locator, error = %e, "refund not made yet; will retry");
                    return Err(e);
                }
            }
            self.record_seat_refund(fs, r, busy, Closing::Made(read), also)
                .await
        };
        let finished = finished.await;
        self.release_held(mark).await;
        finished
    }

    /// Records an open seat refund made (at the gateway, or by other means an admin
    /// vouched for) on the booking and order and frees its seats, in one version of
    /// the flight, closing it, only over the record as `closing` read it. One
    /// recorded already (through another node) answers as recorded, unless an admin
    /// is resolving it: then, or if the record changed since, `invalid_state`. A try's
    /// refund whose record changed since (an admin's retry gave it a fresh key after
    /// the try's payment mark lapsed, and another node may have made it under that
    /// key) stays open as changed, for the next try to find what each key made:
    /// `payment_failed`.
    /// The answer is the reply of the request the refund answers, and of `also`, for
    /// each that has none yet: a request's first successful answer stays its answer
    /// (its request_id may have been used again after this refund's request failed).
    async fn record_seat_refund(
        &self,
        fs: &Arc<FlightSeats>,
        r: RefundRecord,
        busy: Busy,
        closing: Closing,
        also: Option<IdemKey>,
    ) -> Result<Answer<BookingResult>, AppError> {
        let keys: Vec<IdemKey> = r.request_key().into_iter().chain(also).collect();
        // no twin's replay: a key's reply may be another booking's, and the refund is
        // recorded all the same
        let done = self.seat_step(fs, None, |w| {
            let now = domain::now_ms();
            let mut b = self.store.booking(&r.locator)?.ok_or(AppError::Internal)?;
            let order_id = b.order_id.clone().ok_or(AppError::Internal)?;
            let mut order = self.store.order(&order_id)?.ok_or(AppError::Internal)?;
            let open = self.store.open_refund(r.subject())?;
            let unchanged = open.as_ref() == Some(closing.read());
            if let (Closing::Resolved(_), false) = (&closing, unchanged) {
                return Err(decided_meanwhile());
            }
            let unanswered = |result: &BookingResult| -> Result<_, AppError> {
                let mut replies = Vec::new();
                for k in &keys {
                    if self.store.reply(k)?.is_none() {
                        replies.push((k.clone(), remember_ok(result)));
                    }
                }
                Ok(replies)
            };
            if open.map(|o| o.id) != Some(r.id.clone()) {
                // recorded already (through another node): the answer is the booking as
                // it is, remembered for a key that has none (`also`'s request answers
                // with it), on this version of the flight (else the step decides again)
                if let (Closing::Made(_), Some(made)) = (&closing, &r.made_ref) {
                    self.note_made_after_close(&r, made);
                }
                let result = self.paid_view(b, order);
                let replies = unanswered(&result)?;
                if replies.is_empty() {
                    return Ok((None, Answer::Now(result)));
                }
                let mut batch = Batch {
                    first_replies: replies,
                    ..Default::default()
                };
                let expect = self.decided_on(fs, w, &mut batch);
                let ticket = self.committer.submit(batch, expect, || None)?;
                return Ok((Some(ticket), Answer::Now(result)));
            }
            if !unchanged {
                tracing::warn!(refund = %r.id, locator = %r.locator, "a refund's record changed while it was being made; left open for the next try");
                return Err(changed_while_made());
            }
            b.refund(&r.seats, r.amount, now)?;
            order.record_refund(r.amount, b.status == BookingStatus::Refunded);
            let result = self.paid_view(b.clone(), order.clone());
            let mut detail = json!({
                "refund": wire::money(r.amount),
                "seats": r.seats.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            });
            if r.reason == RefundReason::FlightCancelled {
                detail["by"] = json!("airline");
                detail["reason"] = json!(fs.flight().cancelled.unwrap_or_default());
            }
            let mut closed = r.clone();
            closed.done = true;
            closed.updated_at = now;
            // written only where absent: a reply written meanwhile (through another
            // node, or by a request of the same user on another flight) fails the
            // batch, and the step decides again (a local store answers an error; the
            // refund stays open, to be recorded by a retry or the reconciliation)
            let replies = unanswered(&result)?;
            let batch = Batch {
                bookings: vec![b.clone()],
                orders: vec![order],
                events: vec![(b.user_id, event("refunded", Some(&b.locator), now, detail))],
                first_replies: replies,
                refunds: vec![closed],
                refunds_read: vec![closing.read().clone()],
                ..Default::default()
            };
            let updates = w.release(&r.locator, r.seats.iter().copied());
            Ok((
                Some(self.change_seats(fs, w, batch, updates, &b)?),
                Answer::Now(result),
            ))
        });
        let done = done.await;
        drop(busy);
        done?.reply()
    }

    /// Logs a refund this try made at the gateway whose record was closed meanwhile by
    /// something else (an admin who vouched it paid by other means or voided it, or
    /// another try's refund): the money went back twice, or against an admin's word,
    /// and only a person can settle that. A try made after the record's close only if
    /// it outlived [`App::payment_span`], so this is not expected to happen.
    fn note_made_after_close(&self, r: &RefundRecord, made: &str) {
        let now = match self.store.refund_by_key(&r.id) {
            Ok(Some(now)) => now,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(refund = %r.id, error = %e, "cannot read a refund's record to check how it was closed");
                return;
            }
        };
        if now.done && now.made_ref.as_deref() != Some(made) {
            let closed_by = now
                .resolutions
                .last()
                .map_or("another refund", |x| x.outcome.as_str());
            tracing::error!(refund = %r.id, locator = %r.locator, gateway_refund = %made, cents = r.amount.amount(), closed_by, "a refund was made at the gateway after its record was closed otherwise; check whether it was paid back twice");
        }
    }

    /// The record of `r` as it is now if it is still to be made (`None`: recorded
    /// already, from a stale list of open refunds); refuses to make an open refund of
    /// seats its booking no longer holds (a quote that raced a seat change): it would
    /// pay back, and free, someone else's seat; or of seats of a booking no longer
    /// confirmed (one opened from a stale read of a booking refunded meanwhile): it
    /// would pay back twice.
    fn check_still_open(&self, r: &RefundRecord) -> Result<Option<RefundRecord>, AppError> {
        match self.refund_backing(r)? {
            Backing::Closed => Ok(None),
            Backing::Backed(open) => Ok(Some(*open)),
            Backing::Unbacked { .. } => {
                tracing::error!(refund = %r.id, locator = %r.locator, "an open refund names seats its booking no longer holds; not made (an admin may void it)");
                Err(AppError::InvalidState(
                    "the booking's seats changed while it was being cancelled; the refund was not made"
                        .into(),
                ))
            }
        }
    }

    /// Whether open refund `r` is still backed by its booking (see
    /// [`App::check_still_open`]).
    fn refund_backing(&self, r: &RefundRecord) -> Result<Backing, AppError> {
        let Some(open) = self
            .store
            .open_refund(r.subject())?
            .filter(|o| o.id == r.id)
        else {
            return Ok(Backing::Closed);
        };
        let b = self.store.booking(&r.locator)?.ok_or(AppError::Internal)?;
        // a refunded booking keeps its passengers' seats listed
        let confirmed = b.status == domain::BookingStatus::Confirmed || r.seats.is_empty();
        let held: Vec<SeatId> = match confirmed {
            true => r
                .seats
                .iter()
                .filter(|s| b.seats.iter().any(|x| x.seat == **s))
                .copied()
                .collect(),
            false => Vec::new(),
        };
        Ok(if held.len() == r.seats.len() && confirmed {
            Backing::Backed(Box::new(open))
        } else {
            Backing::Unbacked { held }
        })
    }

    /// Marks the booking `r` refunds busy on this node, so that no other refund path
    /// makes or decides `r` meanwhile; `None` while a payment operation on it is in
    /// progress. Returns its flight's seats and the mark.
    fn mark_refunded_booking(
        &self,
        r: &RefundRecord,
    ) -> Result<Option<(Arc<FlightSeats>, Busy)>, AppError> {
        let b = self.store.booking(&r.locator)?.ok_or(AppError::Internal)?;
        let fs = self.flight_seats(&b.flight_id)?;
        let mut w = fs.working();
        if self.paying(&w, &r.locator, &|_| false)? {
            return Ok(None);
        }
        let busy = Busy::mark(&fs, &mut w, &r.locator)?;
        drop(w);
        Ok(Some((fs, busy)))
    }

    /// Finishes every open refund (a crash or a gateway error interrupted it) whose
    /// booking has no payment in flight. A refund of an orphaned charge is finished
    /// by reconciling its payment attempt.
    pub(super) async fn reconcile_refunds(&self, cutoff: domain::Millis) {
        let open = match self.store.open_refunds() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list open refunds");
                return;
            }
        };
        self.refund_failures
            .retain(|id, _| open.iter().any(|r| &r.id == id));
        // a younger one may be in the making through another node of a cluster
        for r in open.into_iter().filter(|r| r.created_at <= cutoff) {
            if r.is_reissue() {
                let id = r.id.clone();
                if let Err(e) = self.finish_reissue(r).await {
                    tracing::warn!(refund = %id, error = %e, "reopened refund not paid back yet");
                }
                continue;
            }
            if let RefundReason::Orphan { attempt_id } = &r.reason {
                // finished with its attempt (the one path that settles charges); an
                // open attempt is reconciled with the others, once old enough
                let attempt = self.store.attempt(attempt_id);
                if let Ok(Some(a)) = attempt.map(|a| a.filter(|a| !a.is_open())) {
                    if !self.try_reconcile(a).await {
                        tracing::warn!(refund = %r.id, "open refund not finished yet");
                    }
                }
                continue;
            }
            let id = r.id.clone();
            let finished = async {
                let Some((fs, busy)) = self.mark_refunded_booking(&r)? else {
                    return Ok(None);
                };
                self.finish_seat_refund(&fs, r, busy).await.map(Some)
            };
            if let Err(e) = finished.await {
                tracing::warn!(refund = %id, error = %e, "open refund not finished yet");
            }
        }
    }
}

impl App {
    /// A refund as the admin's methods show it.
    fn refund_view(&self, r: &RefundRecord) -> RefundView {
        let (tries, last_error) = self
            .refund_failures
            .get(&r.id)
            .map(|f| (f.tries, Some(f.last_error.clone())))
            .unwrap_or_default();
        let reason = match r.reason {
            RefundReason::Cancel { .. } => "cancel",
            RefundReason::FlightCancelled => "flight_cancelled",
            RefundReason::Orphan { .. } => "orphan",
        };
        RefundView {
            refund_id: r.id.clone(),
            locator: r.locator.clone(),
            reason,
            amount: r.amount,
            seats: r.seats.iter().map(|s| s.to_string()).collect(),
            created_at: r.created_at,
            done: r.done,
            gateway_key: r.key().to_owned(),
            earlier_keys: r.previous_keys.clone(),
            failed_tries: tries,
            last_error,
            resolutions: r
                .resolutions
                .iter()
                .map(|x| ResolutionView {
                    by: x.by.clone(),
                    outcome: x.outcome.clone(),
                    at: x.at,
                })
                .collect(),
            failed_later: r.failed_later.clone(),
        }
    }

    /// `admin.refunds.list`: every open refund, oldest first, with the gateway's
    /// failures of it on this node.
    pub async fn admin_refunds(&self) -> Result<Refunds, AppError> {
        let mut open = self
            .consistent_read(|| Ok(self.store.open_refunds()?))
            .await?;
        open.sort_by_key(|r| r.created_at);
        Ok(Refunds {
            refunds: open.iter().map(|r| self.refund_view(r)).collect(),
        })
    }

    /// `admin.refunds.resolve`: an admin's way out for an open refund the gateway
    /// keeps refusing (say, an older release's key asked again with another amount),
    /// recorded on the refund with the admin's name. `paid_elsewhere` closes it as made
    /// without asking the gateway (the money went back by other means) and records it
    /// like a refund made; `retry` has it asked again under a fresh key; `void` closes,
    /// unmade and unrecorded, a seat refund its booking no longer backs.
    pub async fn admin_resolve_refund(
        &self,
        admin: &AuthSession,
        p: params::ResolveRefund,
    ) -> Result<RefundResult, AppError> {
        self.committer.catch_up_at_start().await?;
        let r = self
            .store
            .open_refunds()?
            .into_iter()
            .find(|r| r.id == p.refund_id)
            .ok_or(AppError::NotFound("refund"))?;
        let by = self
            .store
            .user(admin.user_id)?
            .ok_or(AppError::Internal)?
            .username
            .to_string();
        // nobody else finishes or decides it meanwhile, on this node or another
        let (fs, busy) = self.mark_refunded_booking(&r)?.ok_or_else(busy_error)?;
        let mark = self.take_refund_mark(&r, |_| false).await?;
        let resolved = async {
            // decided on the record as it is now: a copy read before the guard may lack
            // a key another resolve added meanwhile, and a retry from it would forget it;
            // written only over that record (compare-and-swap), so of two admins
            // deciding at once the second is refused
            let mut read = self
                .store
                .open_refund(r.subject())?
                .filter(|x| x.id == r.id)
                .ok_or_else(decided_meanwhile)?;
            let mut r = read.clone();
            let now = domain::now_ms();
            r.resolutions.push(RefundResolution {
                by: by.clone(),
                outcome: p.outcome.as_str().into(),
                at: now,
            });
            r.updated_at = now;
            match (p.outcome, &r.reason) {
                (RefundOutcome::Retry, _) => {
                    self.check_not_made_now(&mut read).await?;
                    r.take_tries(&read);
                    // the fresh key comes after that try: a try under it by an older
                    // version, which leaves no trace, is waited on from here
                    r.updated_at = r.updated_at.max(read.asked_at.map_or(0, |t| t + 1));
                    self.check_no_unknown_refunds(&r).await?;
                    r.previous_keys.push(r.key().to_owned());
                    r.gateway_key = Some(super::unique_id("rf"));
                    self.commit_decision(rewritten(&r, read)).await?;
                    self.refund_failures.remove(&r.id);
                }
                (RefundOutcome::PaidElsewhere, _) if r.is_reissue() => {
                    self.check_settled(&read).await?;
                    r.done = true;
                    self.commit_decision(reissue_closed(&r, read)).await?;
                }
                (RefundOutcome::PaidElsewhere, RefundReason::Orphan { attempt_id }) => {
                    self.check_settled(&read).await?;
                    let mut a = self.store.attempt(attempt_id)?.ok_or(AppError::Internal)?;
                    a.state = AttemptState::Refunded;
                    a.updated_at = now;
                    r.done = true;
                    let refunded = event(
                        "payment_refunded",
                        Some(&r.locator),
                        now,
                        json!({ "amount": wire::money(r.amount) }),
                    );
                    let mut batch = Batch {
                        events: vec![(a.user_id, refunded)],
                        attempts: vec![a],
                        ..rewritten(&r, read)
                    };
                    // its pay request, still answered with the gateway's timeout, is
                    // told what became of the charge, as when the refund is made here
                    self.answer_orphan_refunded(&fs, &mut batch)?;
                    self.commit_decision(batch).await?;
                }
                (RefundOutcome::PaidElsewhere, _) => {
                    self.check_settled(&read).await?;
                    let closing = Closing::Resolved(read);
                    self.record_seat_refund(&fs, r.clone(), busy, closing, None)
                        .await?;
                    r.done = true;
                }
                (RefundOutcome::Void, _) => {
                    self.check_unbacked(&read)?;
                    self.check_quiet(&read)?;
                    // made by an earlier version before it found the booking unable to
                    // take it: the money went back twice, and no record can hold that
                    if let Some(made) = self.made_under_keys(&read).await? {
                        tracing::error!(refund = %r.id, locator = %r.locator, gateway_refund = %made, cents = r.amount.amount(), "a refund its booking no longer backs was made: its payment was paid back twice; closed as made");
                        r.made_ref = Some(made);
                    }
                    r.done = true;
                    self.commit_decision(rewritten(&r, read)).await?;
                }
            }
            tracing::warn!(refund = %r.id, locator = %r.locator, admin = %by, outcome = p.outcome.as_str(), "an admin resolved an open refund");
            Ok(RefundResult {
                refund: self.refund_view(&r),
            })
        };
        let resolved = resolved.await;
        self.release_held(mark).await;
        resolved
    }

    /// Writes an admin's decision on a refund, only over the records as read.
    async fn commit_decision(&self, batch: Batch) -> Result<(), AppError> {
        match self.commit(batch).await {
            Err(StoreError::Conflict) => Err(decided_meanwhile()),
            other => Ok(other?),
        }
    }

    /// Refuses to void `r` unless it is a seat refund that can never be made and pays
    /// back nothing owed: its booking holds none of the seats it names, or is no
    /// longer confirmed (see [`App::check_still_open`]). Anything else is money owed,
    /// a refund naming some seats the booking still holds too.
    fn check_unbacked(&self, r: &RefundRecord) -> Result<(), AppError> {
        if r.is_reissue() || matches!(r.reason, RefundReason::Orphan { .. }) {
            return Err(AppError::InvalidState(
                "only a seat refund its booking no longer backs can be voided; this one pays back money recorded as owed: resolve it as retry or paid_elsewhere".into(),
            ));
        }
        match self.refund_backing(r)? {
            Backing::Unbacked { held } if held.is_empty() => Ok(()),
            Backing::Unbacked { held } => Err(AppError::InvalidState(format!(
                "the booking still holds {}, which this refund names: that money is owed, so it is not voided",
                held.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            ))),
            Backing::Backed(_) => Err(AppError::InvalidState(
                "the booking still holds the seats this refund names, so it can be made: resolve it as retry or paid_elsewhere".into(),
            )),
            Backing::Closed => Err(decided_meanwhile()),
        }
    }

    /// Refuses a retry under a fresh key unless the gateway, asked once more under the
    /// refund's current key, answers that it did not make it: a refusal it keeps under
    /// the key ([`PaymentError::Refused`]), or one it does not
    /// ([`PaymentError::Rejected`]) once the tries before it may no longer be made
    /// ([`App::check_quiet`]).
    /// A last try that timed out may still be executing at the gateway, and no look-up
    /// sees a refund before it is made: asked under a fresh key meanwhile, the money
    /// would go back twice. Asked again, the gateway replays the refund made under the
    /// key (then the next reconciliation records it), refuses again, or says nothing
    /// definite (no answer, a 5xx, the key's earlier request still executing). A seat
    /// refund is asked only while its booking still holds its seats, as by
    /// [`App::finish_seat_refund`].
    async fn check_not_made_now(&self, r: &mut RefundRecord) -> Result<(), AppError> {
        if !r.is_reissue() && !matches!(r.reason, RefundReason::Orphan { .. }) {
            self.check_still_open(r)?;
        }
        match self.ask_for_refund(r, false).await? {
            // nothing to pay
            Ok(None) => Ok(()),
            Ok(Some(made)) => Err(AppError::InvalidState(format!(
                "the gateway has made this refund under one of its keys ({}); the next reconciliation records it as made",
                made.id
            ))),
            Err(PaymentError::Refused(_)) => Ok(()),
            // this ask made nothing, but a try before it under the same key may still
            // be made: the gateway kept nothing under the key to replay to it
            Err(PaymentError::Rejected(_)) => self.check_quiet(r),
            Err(e) => Err(AppError::InvalidState(format!(
                "the gateway has not answered whether it made this refund under its current key ({e}); a retry under a fresh key could pay it twice: try again once it answers"
            ))),
        }
    }

    /// Refuses to close a refund as paid elsewhere while the gateway may still make
    /// it ([`App::check_quiet`]: a try through any node without a definite refusal may
    /// still be executing, and no look-up sees a refund before it is made), and once
    /// the gateway holds a refund made under one of its keys.
    async fn check_settled(&self, r: &RefundRecord) -> Result<(), AppError> {
        self.check_quiet(r)?;
        if let Some(m) = self.made_under_keys(r).await? {
            return Err(AppError::InvalidState(format!(
                "the gateway has made this refund ({m}); the next reconciliation records it as made"
            )));
        }
        Ok(())
    }

    /// [`App::check_settled`]'s wait: refused while the gateway may still make `r`.
    /// Every try is on the record, whichever node made it: it began at
    /// [`RefundRecord::asked_at`] (written before it asks) and sends nothing after
    /// [`RefundRecord::asked_until`], and a request may execute for a payment span
    /// (the longer of the asking node's and this one's) after it is sent. A refusal
    /// the gateway keeps under the key ([`RefundRecord::refused_at`]) ends the wait:
    /// a request under the key, however late, gets it replayed. A try it turned away
    /// ([`RefundRecord::rejected_at`]) made nothing itself, but the tries before it
    /// are still waited on ([`RefundRecord::earlier_until`]). One span from the
    /// record's creation or last change (a reopening, a retry's fresh key) too,
    /// unless a try after that was answered either way: an older version asked
    /// without a trace.
    fn check_quiet(&self, r: &RefundRecord) -> Result<(), AppError> {
        let last_was = |answer: Option<domain::Millis>| {
            r.asked_at
                .is_some_and(|t| answer == Some(t) && t > r.updated_at)
        };
        if last_was(r.refused_at) {
            return Ok(());
        }
        let span = self.payment_span().as_millis() as domain::Millis;
        let mut until = r.earlier_until.unwrap_or(0);
        if !last_was(r.rejected_at) {
            let changed = r.created_at.max(r.updated_at).saturating_add(span);
            let asked = r.asked_at.map_or(0, |t| made_until(t, r.asked_until, span));
            until = until.max(changed).max(asked);
        }
        if domain::now_ms() < until {
            return Err(AppError::InvalidState(format!(
                "the gateway may still make this refund (asked under its key without a \
                 definite answer, or opened, reopened or retried lately); resolve it \
                 after {}, once that has settled",
                domain::rfc3339(until)
            )));
        }
        Ok(())
    }

    /// The gateway's refund made under one of `r`'s keys, if any.
    async fn made_under_keys(&self, r: &RefundRecord) -> Result<Option<String>, AppError> {
        let made = self
            .payments
            .refunds_of(&r.payment_ref)
            .await
            .map_err(|e| AppError::PaymentFailed(e.to_string()))?;
        Ok(made
            .into_iter()
            .find(|m| m.key.as_deref().is_some_and(|k| r.keys().any(|x| x == k)))
            .map(|m| m.id))
    }

    /// Refuses a retry under a fresh key while the gateway holds a refund of the
    /// payment asked without our metadata (an older release's): no look-up can tie it
    /// to a record, it may be this refund, and asking again would pay twice. Refunds
    /// with our metadata name their record, so one under another key is another
    /// refund. (Comparing amounts with the order's recorded refunds is no proof: those
    /// include refunds an admin resolved as paid elsewhere.)
    async fn check_no_unknown_refunds(&self, r: &RefundRecord) -> Result<(), AppError> {
        let made = self
            .payments
            .refunds_of(&r.payment_ref)
            .await
            .map_err(|e| AppError::PaymentFailed(e.to_string()))?;
        let unknown: Vec<&str> = made
            .iter()
            .filter(|m| m.key.is_none())
            .map(|m| m.id.as_str())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(AppError::InvalidState(format!(
            "the gateway holds refunds of this payment made without a record's key ({}); if one is this refund, resolve it as paid_elsewhere",
            unknown.join(", ")
        )))
    }
}

impl App {
    /// A refund the gateway failed after Jetway recorded it as made (`g`, as the
    /// gateway holds it now: the caller asked it, never trusting an event). The record it
    /// was made for is reopened under a fresh key, as a reissue (see
    /// [`RefundRecord::is_reissue`]), and the money asked for again at once; an admin
    /// resolves it if the gateway keeps refusing. Nothing happens for a refund that did
    /// not fail, is not this installation's, was reopened already, is not the one that
    /// made its record (the record was made by a refund under another of its keys), or
    /// whose record an admin closed as paid by other means or voided, or whose record is still
    /// open and waits for an admin (refused). While its record is being made (a
    /// payment operation on its booking in progress, here or through another node)
    /// the answer is [`busy_error`]: the caller (a webhook, the watch of pending
    /// refunds) tries again once the record is closed. Errors ask the caller to try
    /// again later.
    ///
    /// The record is found by the key in the refund's metadata, or given (`record`,
    /// the watch of pending refunds): a refund sent without our metadata (an older
    /// release's, resent as it was) is tied to its record by `made_ref` alone, and
    /// one not tied to any while a payment operation on its payment's booking is in
    /// progress is [`busy_error`] too.
    pub(super) async fn reopen_failed_refund(
        &self,
        g: GatewayRefund,
        record: Option<String>,
    ) -> Result<(), AppError> {
        let Some(why) = g.failure.clone() else {
            return Ok(());
        };
        self.committer.catch_up().await?;
        // a refund sent without our metadata is found by the refund that made it
        let by_key = record.or_else(|| g.key.clone());
        let mut looks = 0;
        let read = loop {
            looks += 1;
            // may scan every refund record (a key given before the key index, a refund
            // without one): off the reactor
            let (store, key, made) = (self.store.clone(), by_key.clone(), g.id.clone());
            let found = tokio::task::spawn_blocking(move || match key {
                Some(key) => store.refund_by_key(&key),
                None => store.refund_made_by(&made),
            })
            .await
            .map_err(|_| AppError::Internal)??;
            // the booking whose record may be being made right now
            let booking = match found {
                Some(read) => {
                    let closed_unmade = read.resolutions.last().is_some_and(|x| {
                        x.outcome == RefundOutcome::PaidElsewhere.as_str()
                            || x.outcome == RefundOutcome::Void.as_str()
                    });
                    let made_it = read.made_ref.as_deref() == Some(g.id.as_str());
                    let under_its_key = g
                        .key
                        .as_deref()
                        .is_some_and(|k| read.keys().any(|x| x == k));
                    if !(made_it || under_its_key)
                        || read.payment_ref != g.payment_ref
                        || read.failed_later.contains(&g.id)
                        || closed_unmade
                    {
                        return Ok(());
                    }
                    if read.done {
                        break read;
                    }
                    read.locator
                }
                // a refund without our metadata that no record names yet: one of its
                // payment's booking may be being made
                None if by_key.is_none() => match self.store.attempt_by_ref(&g.payment_ref)? {
                    Some(a) => a.locator,
                    None => return Ok(()),
                },
                None => return Ok(()),
            };
            // being made right now, it may be recorded in a moment as made by this
            // very refund, and nobody would tell of its failure again: asked later
            if self.paying_now(&booking)? {
                return Err(busy_error());
            }
            // the booking's marks drop only once its record is closed: one closed
            // between the read and that look is read again
            if looks == 2 {
                return Ok(());
            }
        };
        match &read.made_ref {
            Some(made) if *made != g.id => return Ok(()),
            Some(_) => {}
            // closed before made_ref was kept: this refund made it unless another one
            // under its keys went through
            None => {
                let made = self
                    .payments
                    .refunds_of(&read.payment_ref)
                    .await
                    .map_err(|e| AppError::PaymentFailed(e.to_string()))?;
                if made.iter().any(|m| {
                    m.key
                        .as_deref()
                        .is_some_and(|k| read.keys().any(|x| x == k))
                }) {
                    return Ok(());
                }
            }
        }
        let now = domain::now_ms();
        let mut r = read.clone();
        r.done = false;
        made_by(&mut r, None);
        r.failed_later.push(g.id.clone());
        r.previous_keys.push(r.key().to_owned());
        r.gateway_key = Some(super::unique_id("rf"));
        r.updated_at = now;
        tracing::error!(refund = %r.id, locator = %r.locator, gateway_refund = %g.id, reason = %why, "a refund recorded as made failed at the gateway; paying it back again");
        let failed = event(
            "refund_failed",
            Some(&r.locator),
            now,
            json!({ "refund": wire::money(r.amount), "reason": why }),
        );
        let reopened = self.commit(Batch {
            new_refunds: vec![r.clone()],
            refunds_read: vec![read],
            events: vec![(r.user_id, failed)],
            ..Default::default()
        });
        match reopened.await {
            // reopened meanwhile (the same failure told twice), or decided by an admin
            Err(StoreError::Conflict) => return Ok(()),
            other => other?,
        }
        if let Err(e) = self.finish_reissue(r).await {
            tracing::warn!(error = %e, "reopened refund not paid back yet; will retry");
        }
        Ok(())
    }

    /// Pays a reopened refund's money back at the gateway and closes it: its seats,
    /// booking and order were recorded when it was first made. Marks its booking as
    /// the other refund paths do, so that no admin decides on it meanwhile.
    async fn finish_reissue(&self, r: RefundRecord) -> Result<(), AppError> {
        let (_, busy) = self.mark_refunded_booking(&r)?.ok_or_else(busy_error)?;
        let mark = self.take_refund_mark(&r, |_| false).await?;
        let finished = async {
            // the record as it is now, under the marks (an admin may have given it a key)
            let Some(mut read) = self
                .store
                .open_refund(r.subject())?
                .filter(|o| o.id == r.id)
            else {
                return Ok(());
            };
            let made = self.make_refund(&mut read, false).await?;
            let mut closed = read.clone();
            closed.done = true;
            made_by(&mut closed, made);
            closed.updated_at = domain::now_ms();
            match self.commit(reissue_closed(&closed, read)).await {
                Err(StoreError::Conflict) => Ok(()),
                other => Ok(other?),
            }
        };
        let finished = finished.await;
        self.release_held(mark).await;
        drop(busy);
        finished
    }
}

/// Until when the gateway may still make a try begun `at` and cut off at `until`
/// (by its asking node; `at` plus `span` if unknown): a request sent by `until` may
/// execute for a span after it, the asking node's if longer than this one's.
fn made_until(
    at: domain::Millis,
    until: Option<domain::Millis>,
    span: domain::Millis,
) -> domain::Millis {
    let until = until.unwrap_or(at.saturating_add(span));
    until.saturating_add(span.max(until - at))
}

/// How long a try that ends at `until` may still ask at `now`: at most `span` (a
/// clock that ran ahead may have dated the try later), and nothing when less than
/// one gateway call (`call`) is left: a request handed to the connection just
/// before the cut-off can still go out after it, past the deadline the wait before
/// `paid_elsewhere` counts on.
fn time_to_ask(
    until: domain::Millis,
    now: domain::Millis,
    span: std::time::Duration,
    call: std::time::Duration,
) -> Option<std::time::Duration> {
    let left = std::time::Duration::from_millis(until.saturating_sub(now).max(0) as u64);
    Some(left.min(span)).filter(|l| *l >= call)
}

/// Notes on `r` the gateway refund that made it (see [`RefundRecord::made_ref`]).
pub(super) fn made_by(r: &mut RefundRecord, made: Option<MadeRefund>) {
    r.made_pending = made.as_ref().is_some_and(|m| m.pending);
    r.made_ref = made.map(|m| m.id);
}

/// How many pending refunds one round of the watch asks the gateway about, at most:
/// the next round goes on after the last one asked (each node watches them all, and
/// the gateway's rate limit is shared with live traffic).
const WATCH_PER_ROUND: usize = 50;

impl App {
    /// Asks the gateway about the refunds recorded as made while they were still
    /// pending, [`WATCH_PER_ROUND`] at most, in turn: one that failed since is paid
    /// back again (as its webhook would have had it), one that succeeded is no longer
    /// watched, one the gateway does not know stays watched. Without a webhook this is how a
    /// late failure is found. Called by the reconciler after each round (not at start:
    /// serving does not wait for it); a gateway that does not answer ends the round.
    pub async fn watch_pending_refunds(&self) {
        let pending = match self.store.pending_refunds() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list pending refunds");
                return;
            }
        };
        let after = self.watch_cursor.lock().clone();
        let start = after.map_or(0, |a| pending.partition_point(|(g, _)| *g <= a));
        let turn = pending[start..].iter().chain(&pending[..start]);
        for (gateway_ref, record) in turn.take(WATCH_PER_ROUND) {
            *self.watch_cursor.lock() = Some(gateway_ref.clone());
            let done = match self.payments.refund_now(gateway_ref).await {
                Ok(Some(g)) if g.failure.is_some() => {
                    let reopened = self.reopen_failed_refund(g, Some(record.clone())).await;
                    match reopened {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(refund = %record, error = %e, "a failed refund not reopened yet");
                            false
                        }
                    }
                }
                Ok(Some(g)) => !g.pending,
                // not proof that it settled (another account's key, say): still watched
                Ok(None) => {
                    tracing::error!(refund = %record, gateway_refund = %gateway_ref, "the gateway does not know a refund recorded as pending");
                    false
                }
                Err(e) => {
                    tracing::warn!(refund = %record, error = %e, "cannot ask the gateway about pending refunds; trying again next round");
                    return;
                }
            };
            if done {
                let settled = self.commit(Batch {
                    settled_refunds: vec![gateway_ref.clone()],
                    ..Default::default()
                });
                if let Err(e) = settled.await {
                    tracing::warn!(refund = %record, error = %e, "cannot note a settled refund");
                }
            }
        }
    }
}

/// What became of an open refund's booking since the refund was opened.
enum Backing {
    /// The refund is no longer open (made, or resolved).
    Closed,
    /// Its booking is confirmed and holds every seat it names: the record as it is now.
    Backed(Box<RefundRecord>),
    /// It names seats its booking no longer holds, or of a booking no longer confirmed;
    /// `held`: those it names that the booking, confirmed, still holds.
    Unbacked { held: Vec<SeatId> },
}

/// The batch that writes `r` only over `read`.
fn rewritten(r: &RefundRecord, read: RefundRecord) -> Batch {
    Batch {
        refunds: vec![r.clone()],
        refunds_read: vec![read],
        ..Default::default()
    }
}

/// The batch that closes a reissue `r` (`done`), written only over `read`.
fn reissue_closed(r: &RefundRecord, read: RefundRecord) -> Batch {
    let paid = event(
        "refund_reissued",
        Some(&r.locator),
        r.updated_at,
        json!({ "refund": wire::money(r.amount) }),
    );
    Batch {
        events: vec![(r.user_id, paid)],
        ..rewritten(r, read)
    }
}

/// Who closes a seat refund as made, with the record as they read it.
enum Closing {
    /// A try that made it (or found it closed already).
    Made(RefundRecord),
    /// An admin who vouched it was paid back by other means.
    Resolved(RefundRecord),
}

impl Closing {
    fn read(&self) -> &RefundRecord {
        match self {
            Closing::Made(r) | Closing::Resolved(r) => r,
        }
    }
}

pub(super) fn changed_while_made() -> AppError {
    AppError::PaymentFailed(
        "the refund's record changed while it was being made (through another node or an admin); it stays open, and a retry or the reconciliation records it"
            .into(),
    )
}

/// An admin decided on a refund record that was closed (made, or resolved) or
/// decided by another admin since.
fn decided_meanwhile() -> AppError {
    AppError::InvalidState(
        "the refund was closed or resolved meanwhile (by another admin, or made), or its payment was answered; list the open refunds again"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cabin, FlightId};
    use std::time::Duration;

    fn seat(s: &str) -> SeatId {
        SeatId::parse(s).unwrap()
    }

    fn booking() -> domain::Booking {
        let fare = Money::cents(10_000).unwrap();
        domain::Booking::hold(
            Locator::parse("ABCDEF").unwrap(),
            UserId(1),
            FlightId::parse("JW1-20260101").unwrap(),
            vec![
                (seat("12A"), Cabin::Economy, fare),
                (seat("3C"), Cabin::Economy, fare),
                (seat("4D"), Cabin::Economy, fare),
            ],
            vec!["Ada".into(), "Alan".into(), "Grace".into()],
            0,
            600_000,
        )
        .unwrap()
    }

    fn cancel() -> RefundReason {
        RefundReason::Cancel {
            request_id: "c".into(),
        }
    }

    #[test]
    fn a_try_near_or_past_its_deadline_asks_nothing() {
        let (span, call) = (Duration::from_secs(110), Duration::from_secs(10));
        let ask = |until: i64| time_to_ask(until, 1_000_000, span, call);
        assert_eq!(ask(1_000_000 + 60_000), Some(Duration::from_secs(60)));
        assert_eq!(ask(1_000_000 + 10_000), Some(call));
        assert_eq!(ask(1_000_000 + 9_999), None, "less than a call left");
        assert_eq!(ask(1_000_000), None);
        assert_eq!(ask(0), None, "past it");
        assert_eq!(ask(i64::MAX), Some(span), "dated ahead: one span at most");
    }

    #[test]
    fn a_booking_paid_by_the_old_version_gets_its_old_refund_keys() {
        let b = booking();
        let seats = [seat("3C"), seat("12A")];
        assert_eq!(
            seat_refund_id(&b, &seats, &cancel(), true),
            "refund-ABCDEF-12A.3C",
            "seats sorted by name, as the old version did"
        );
        assert_eq!(
            seat_refund_id(&b, &seats, &RefundReason::FlightCancelled, true),
            "flight-cancel-ABCDEF"
        );
    }

    #[test]
    fn a_booking_paid_since_gets_fresh_refund_keys() {
        let b = booking();
        let seats = [seat("12A")];
        for reason in [cancel(), RefundReason::FlightCancelled] {
            let (one, two) = (
                seat_refund_id(&b, &seats, &reason, false),
                seat_refund_id(&b, &seats, &reason, false),
            );
            assert!(one.starts_with("rf-"), "{one}");
            assert_ne!(one, two);
        }
    }

    #[test]
    fn a_seat_refunded_before_never_reuses_the_old_key() {
        let mut b = booking();
        let gone = b.seats.remove(0);
        b.cancelled_seats.push(gone);
        let again = seat_refund_id(&b, &[seat("12A")], &cancel(), true);
        assert!(again.starts_with("rf-"), "{again}");
        assert_eq!(
            seat_refund_id(&b, &[seat("4D")], &cancel(), true),
            "refund-ABCDEF-4D",
            "another seat of the booking still may"
        );
    }
}

/// What the gateway answered this node's tries of an open refund (for operators).
#[derive(Debug, Default)]
pub(super) struct RefundTrouble {
    pub tries: u32,
    pub last_error: String,
}
