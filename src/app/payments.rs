//! Paying a booking, crash-safe: a payment attempt is written to disk before the
//! gateway is called, and its payment reference before the charge is confirmed. An
//! attempt whose outcome is unknown (a crash, a gateway timeout) is reconciled with the
//! gateway at start-up, periodically, and on webhooks, through one path
//! ([`App::settle_charged`]): a charge confirms the booking if its seats are still its
//! own and its flight still takes payments (`scheduled` or `delayed`), and is refunded
//! otherwise. Never a charge without a ticket, never a ticket without a charge.
//!
//! ```text
//! started ──create+confirm ok──▶ succeeded (booking confirmed, same batch)
//!    │  ├──declined / not charged──▶ failed
//!    │  └──customer must act (3-D Secure)──▶ action_required
//!    └──charged but seats gone──▶ refunded
//! action_required ──next booking.pay, or the hold's end──▶ (as started)
//! ```
//!
//! An attempt waiting for the customer's action is left alone while its booking's hold
//! runs; the next `booking.pay` (same payment method) reads its outcome from the
//! gateway, and once the hold falls due its expiry (or a `booking.pay` that comes
//! first) asks the gateway before the seats go (a payment completed confirms the
//! booking, one still waiting is cancelled; the reconciler refunds a charge that
//! landed too late).

use futures::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::bookings::{check_bookable, AIRLINE_CODE};
use super::busy::{busy_error, is_busy, Busy};
use super::refunds::new_refund;
use super::{event, remember_err, remember_ok, App, AuthSession, Step};
use crate::app::AppError;
use crate::domain::flight::Operation;
use crate::domain::{self, BookingStatus, Order, OrderStatus, TicketNumber};
use crate::inventory::{FlightSeats, Occupant, Working};
use crate::payments::{webhook, PaymentError, PaymentRequest, PaymentStatus};
use crate::protocol::results::{self, Answer, BookingResult};
use crate::protocol::{params, wire};
use crate::store::commit::Ticket;
use crate::store::{
    AttemptState, Batch, Committer, HistoryEvent, IdemKey, PaymentAttempt, PaymentMark,
    RefundReason, RefundRecord, StoreError,
};

const PAY: &str = "booking.pay";
/// The answer to a pay whose attempt the reconciler closed as not charged.
const INTERRUPTED: &str = "the payment was interrupted and did not go through";

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks are not configured (STRIPE_WEBHOOK_SECRET)")]
    NotConfigured,
    #[error("bad signature: {0}")]
    Signature(#[from] webhook::SignatureError),
    #[error("malformed event")]
    Malformed,
    #[error("internal error")]
    Internal,
}

/// What a charge does to its booking.
enum Settle {
    Confirmed(Box<BookingResult>),
    /// Settled already, through another node: the booking paid (`true`) or the
    /// charge refunded.
    Already(bool),
    /// The booking cannot take the charge: refund it through this open refund.
    RefundOpen(Box<RefundRecord>),
    /// The booking cannot take the charge: refund it through a new refund, opened
    /// over the attempt as read then.
    Refund(Option<Box<PaymentAttempt>>),
}

/// The order a charge makes, drawn before its booking is decided on: its numbers
/// are taken off the flight's lock.
struct OrderDraft {
    payment_ref: String,
    tickets: Vec<TicketNumber>,
    order_id: String,
}

/// What [`App::reconcile`] did with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconciled {
    /// Settled or checked against the gateway (or nothing was left to check).
    Settled,
    /// Left for later: its booking is busy or unknown here, or the gateway cannot
    /// tell yet.
    Skipped,
}

/// The request id of the payment mark a reconciler settling attempt `attempt_id`
/// takes: a client's `request_id` has no control character, so no request can be
/// its twin.
fn reconciler_request(attempt_id: &str) -> String {
    format!("\u{0}reconcile:{attempt_id}")
}

fn pay_key(a: &PaymentAttempt) -> IdemKey {
    IdemKey {
        user: a.user_id,
        method: PAY,
        request_id: a.request_id.clone(),
    }
}

/// The keys of the earlier requests a continued attempt answered
/// `payment_action_required` (see [`PaymentAttempt::earlier_requests`]), its own
/// never among them (one key written twice in a batch fails etcd's transaction).
fn earlier_keys(a: &PaymentAttempt) -> impl Iterator<Item = IdemKey> + '_ {
    a.earlier_requests
        .iter()
        .filter(|r| **r != a.request_id)
        .map(|r| IdemKey {
            user: a.user_id,
            method: PAY,
            request_id: r.clone(),
        })
}

/// Makes `rid` the request `a` answers to, keeping the one before it among the
/// earlier ones (each once, `rid` not among them, the last [`EARLIER_REQUESTS`]).
fn continued_by(a: &mut PaymentAttempt, rid: &str) {
    let earlier = std::mem::replace(&mut a.request_id, rid.to_owned());
    a.earlier_requests.retain(|r| r != rid && *r != earlier);
    if earlier != rid {
        a.earlier_requests.push(earlier);
    }
    let over = a.earlier_requests.len().saturating_sub(EARLIER_REQUESTS);
    a.earlier_requests.drain(..over);
}

/// The opening of `r`, the refund of an orphaned charge, over its attempt as `read`
/// when the booking could not take the charge: it conflicts if the attempt was
/// settled meanwhile (a twin through another node confirmed the booking with it).
fn orphan_opening(r: &RefundRecord, read: Option<PaymentAttempt>) -> Batch {
    Batch {
        new_refunds: vec![r.clone()],
        attempts_read: read.into_iter().collect(),
        ..Default::default()
    }
}

/// The write that keeps `a`'s charge (`a` succeeded), over the attempt as `read`:
/// it conflicts if a refund of the charge was opened meanwhile, or the attempt was
/// settled (the refund made and closed) through another node.
fn keeping_charge(a: PaymentAttempt, read: Option<PaymentAttempt>) -> Batch {
    Batch {
        refunds_absent: vec![a.id.clone()],
        attempts: vec![a],
        attempts_read: read.into_iter().collect(),
        ..Default::default()
    }
}

/// The waiting attempt `fresh` as continued by request `rid`, and its write. The
/// write expects the attempt as read: a twin of this request that settled it
/// meanwhile must not see it opened again.
fn continuing(fresh: PaymentAttempt, rid: &str) -> (PaymentAttempt, Batch) {
    let mut a = fresh.clone();
    continued_by(&mut a, rid);
    a.updated_at = domain::now_ms();
    let batch = Batch {
        attempts: vec![a.clone()],
        attempts_read: vec![fresh],
        ..Default::default()
    };
    (a, batch)
}

/// What a pay request is answered, unremembered, when another request (a twin, the
/// reconciler, a webhook, an admin) settled its payment without answering it: the
/// booking paid, or the charge refunded. Not [`busy_error`]: nothing is in progress.
fn settled_elsewhere(paid: bool) -> AppError {
    let how = match paid {
        true => "completed meanwhile (by another request or by reconciliation); booking.get shows the booking",
        false => "ended meanwhile (by another request or by reconciliation): the charge was refunded",
    };
    AppError::InvalidState(format!("the payment was {how}"))
}

/// Most earlier requests an attempt keeps (the oldest go first): each is a
/// `booking.pay` sent while the customer acts, and the hold bounds how many there are.
const EARLIER_REQUESTS: usize = 16;

impl App {
    pub async fn pay(
        &self,
        s: &AuthSession,
        p: params::Pay,
    ) -> Result<Answer<BookingResult>, AppError> {
        if p.payment_method.is_empty() || p.payment_method.len() > 128 {
            return Err(AppError::InvalidParams(
                "payment_method must be 1-128 bytes".into(),
            ));
        }
        self.committer.catch_up_at_start().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let fs = self.flight_seats(&booking.flight_id)?;
        self.idempotent(s.user_id, PAY, &p.request_id, |key, _| async move {
            let past_due = booking.is_expired(domain::now_ms());
            let loc = booking.locator;
            // an earlier pay left unanswered (a crash, a timeout) may have charged, and
            // once the hold is past due a payment waiting for its customer may have
            // been completed: settle those first (as the hold's expiry does), so that a
            // retry tells what became of that money within one payment span; after it
            // the hold's expiry stops waiting too
            let now = domain::now_ms();
            let settle_first = |a: &PaymentAttempt| self.settles_before_hold_ends(a, now);
            let mut unsettled = false;
            for a in self.store.booking_attempts(&loc)? {
                if settle_first(&a) {
                    unsettled |= !self.try_reconcile(a).await;
                }
            }
            if let Some(v) = self.success_reply(&key).await? {
                return super::replay(v);
            }
            if let Some(paid) = self.paid_with(&fs, s.user_id, &loc, &p.payment_method)? {
                // remembered: a repeat of this request gets it again, whatever follows
                self.commit(Batch {
                    replies: vec![(key, remember_ok(&paid))],
                    ..Default::default()
                })
                .await?;
                return Ok(Answer::Now(paid));
            }
            // still unknown, and either no request or live mark (a twin's too) in flight
            // that the usual path below answers, or that path would say "expired" while
            // the hold's expiry may yet confirm the booking (the hold stays until the
            // outcome is known): answer that
            let expiry_settles = past_due && self.expiry.is_settling(&loc);
            let in_flight = self.paying(&fs.working(), &loc, &|_| false)?;
            if (unsettled || expiry_settles) && (!in_flight || past_due) {
                let open = self.store.booking_attempts(&loc)?;
                if expiry_settles || open.iter().any(settle_first) {
                    let held = self
                        .store
                        .booking(&loc)?
                        .is_some_and(|b| b.status == domain::BookingStatus::Held);
                    let sells = check_bookable(&fs, domain::now_ms()).is_ok();
                    // not remembered: a retry looks again once the outcome is known
                    return Err(AppError::PaymentFailed(match (held, sells) {
                        (true, true) => "an earlier payment of this booking is not settled \
                             yet; the booking is confirmed if it was charged"
                            .into(),
                        (true, false) => "an earlier payment of this booking is not settled \
                             yet; it is refunded if it was charged (the flight no longer \
                             takes payments)"
                            .into(),
                        (false, _) => "an earlier payment of this booking is not settled \
                             yet; it is refunded if it was charged (the booking is no \
                             longer held)"
                            .into(),
                    }));
                }
            }
            let (busy, amount) = {
                let mut w = fs.working();
                let now = domain::now_ms();
                check_bookable(&fs, now)?;
                let b = self
                    .store
                    .booking(&loc)?
                    .ok_or(AppError::NotFound("booking"))?;
                b.check_payable(now)?;
                if self.paying(&w, &loc, &|m| m.request_id == key.request_id)? {
                    return Err(busy_error());
                }
                (Busy::mark(&fs, &mut w, &loc)?, b.total)
            };
            let now = domain::now_ms();
            if let Some(waiting) = self.awaiting_action(&loc)? {
                return self
                    .continue_action(&fs, key, waiting, &p.payment_method, busy)
                    .await;
            }
            let attempt = PaymentAttempt {
                id: super::unique_id("pa"),
                user_id: s.user_id,
                locator: loc.clone(),
                amount,
                request_id: key.request_id.clone(),
                payment_ref: None,
                state: AttemptState::Started,
                created_at: now,
                updated_at: now,
                certain: false,
                payment_method: Some(p.payment_method.clone()),
                earlier_requests: Vec::new(),
                client_secret: None,
            };
            let (id, rid) = (attempt.id.clone(), attempt.request_id.clone());
            self.take_mark(&attempt).await?;
            let settled = match self.hold_ended_under_mark(&loc) {
                Ok(None) => self.charge(&fs, key, attempt, p.payment_method, busy).await,
                Ok(Some(e)) | Err(e) => self.abandon(&key, attempt, busy, e).await,
            };
            self.release_mark(&id, &rid, &loc, true).await;
            settled
        })
        .await
    }

    /// The booking and order of a booking `user` paid with `payment_method`: what a
    /// `booking.pay` sent again under a new `request_id` answers (the first one's reply
    /// may have been lost). A booking paid with another payment method (or by an
    /// older version, which kept none) stays `invalid_state`, as does one whose flight
    /// no longer takes payments.
    fn paid_with(
        &self,
        fs: &FlightSeats,
        user: domain::UserId,
        loc: &domain::Locator,
        payment_method: &str,
    ) -> Result<Option<BookingResult>, AppError> {
        let Some(b) = self.store.booking(loc)? else {
            return Ok(None);
        };
        let confirmed = b.status == domain::BookingStatus::Confirmed && b.user_id == user;
        let Some(order_id) = b.order_id.as_deref().filter(|_| confirmed) else {
            return Ok(None);
        };
        let Some(order) = self.store.order(order_id)? else {
            return Ok(None);
        };
        let paid_so = self
            .store
            .attempt_by_ref(&order.charge_id)?
            .is_some_and(|a| {
                a.state == AttemptState::Succeeded
                    && a.user_id == user
                    && a.payment_method.as_deref() == Some(payment_method)
            });
        if !paid_so || check_bookable(fs, domain::now_ms()).is_err() {
            return Ok(None);
        }
        Ok(Some(self.paid_view(b, order)))
    }

    /// Creates and confirms the payment of a written attempt and settles it.
    async fn charge(
        &self,
        fs: &Arc<FlightSeats>,
        key: IdemKey,
        mut attempt: PaymentAttempt,
        payment_method: String,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        let (loc, amount) = (attempt.locator.clone(), attempt.amount);
        let request = PaymentRequest {
            amount,
            payment_method,
            locator: loc.clone(),
            attempt_id: attempt.id.clone(),
        };
        let outcome = match self.payments.create(request).await {
            Ok(r) => {
                attempt.payment_ref = Some(r.clone());
                // the reference is on disk before anything can be charged
                self.commit(Batch {
                    attempts: vec![attempt.clone()],
                    ..Default::default()
                })
                .await?;
                self.money_may_move()?;
                self.payments.confirm(&r, &attempt.id).await
            }
            Err(e) => Err(e),
        };
        self.settle_outcome(fs, key, attempt, outcome, busy).await
    }

    /// Attempt `id` as stored now, if it still waits for its customer: read again under
    /// the booking's payment mark (on a cluster, once this node has every write
    /// committed so far), since the copy read before it may be from before another node
    /// (a webhook, its reconciler, the cancel after the hold's end) settled it, and
    /// writing that copy would undo the settling.
    async fn still_waiting(&self, id: &str) -> Result<Option<PaymentAttempt>, AppError> {
        self.committer.catch_up().await?;
        Ok(self
            .store
            .attempt(id)?
            .filter(|a| a.state == AttemptState::ActionRequired))
    }

    /// On a cluster, once this node's payment mark on the booking is taken: `Some` of
    /// the error a pay of it answers if its hold has ended, `None` while it is held.
    /// Another node may have ended the hold after this one checked it and before the
    /// mark was taken (after it, that node's release fails on the mark, see
    /// [`App::unless_paid_meanwhile`]); the mark's write has brought this node's copy
    /// up to it, so such a release is seen here. A hold past its time but not yet
    /// released stays payable, as before the mark: its expiry now waits for the
    /// payment.
    fn hold_ended_under_mark(&self, loc: &domain::Locator) -> Result<Option<AppError>, AppError> {
        if !self.committer.is_replicated() {
            return Ok(None);
        }
        let b = self
            .store
            .booking(loc)?
            .ok_or(AppError::NotFound("booking"))?;
        Ok(match b.status {
            domain::BookingStatus::Held => None,
            _ => b.check_payable(domain::now_ms()).err().map(Into::into),
        })
    }

    /// Ends an attempt of the pay request `key` given up before anything was asked of
    /// the gateway (nothing is charged). A twin of the request through another node
    /// that paid the booking meanwhile gives its success as the answer; otherwise
    /// `err`, not remembered: a retry finds the booking as this request did.
    async fn abandon(
        &self,
        key: &IdemKey,
        mut a: PaymentAttempt,
        busy: Busy,
        err: AppError,
    ) -> Result<Answer<BookingResult>, AppError> {
        let _busy = busy;
        a.state = AttemptState::Failed;
        self.write_certain(a).await?;
        match self.success_reply(key).await? {
            Some(first) => super::replay(first),
            None => Err(err),
        }
    }

    /// Writes attempt `a` as known for certain to have charged nothing more.
    async fn write_certain(&self, mut a: PaymentAttempt) -> Result<(), AppError> {
        a.certain = true;
        a.updated_at = domain::now_ms();
        Ok(self
            .commit(Batch {
                attempts: vec![a],
                ..Default::default()
            })
            .await?)
    }

    /// The booking's attempt waiting for the customer's action, if any.
    fn awaiting_action(&self, loc: &domain::Locator) -> Result<Option<PaymentAttempt>, AppError> {
        Ok(self
            .store
            .booking_attempts(loc)?
            .into_iter()
            .find(|a| a.state == AttemptState::ActionRequired))
    }

    /// A `booking.pay` after the customer was asked to act: with the same payment
    /// method, the gateway tells how the payment ended; with another, or once the
    /// hold ended through another node of a cluster, the waiting payment is cancelled
    /// (or, if it went through meanwhile, pays the booking, or is refunded).
    async fn continue_action(
        &self,
        fs: &Arc<FlightSeats>,
        key: IdemKey,
        mut a: PaymentAttempt,
        payment_method: &str,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        let (id, rid, loc) = (a.id.clone(), key.request_id.clone(), a.locator.clone());
        if self.committer.is_replicated() {
            let mark = self.new_mark(&loc, &id, &rid);
            self.claim_mark(&mark, None, |m| m.request_id == rid, |_| false)
                .await?;
        }
        // `Ok(None)`: the attempt changed before it could be continued
        let continued = async {
            let Some(fresh) = self.still_waiting(&id).await? else {
                return Ok(None);
            };
            let (continued, batch) = continuing(fresh, &rid);
            a = continued;
            match self.write_soon(batch).await {
                Err(StoreError::Conflict) => return Ok(None),
                written => written?,
            }
            self.hold_ended_under_mark(&loc).map(Some)
        };
        let ended = match continued.await {
            Ok(Some(ended)) => ended,
            stopped => {
                self.release_mark(&id, &rid, &loc, true).await;
                return match stopped {
                    Err(e) => Err(e),
                    Ok(_) => self.overtaken(&key, &id).await,
                };
            }
        };
        let same = a.payment_method.as_deref() == Some(payment_method);
        // a hold ended through another node meanwhile: the waiting payment is
        // cancelled (or, had it gone through, refunded), never left to the customer
        let outcome = match (ended, &a.payment_ref, same) {
            (Some(e), ..) => Err(PaymentError::Failed(format!(
                "{e}; the payment waiting for authentication is being cancelled"
            ))),
            (None, Some(r), true) => match self.payments.status(r).await {
                Ok(PaymentStatus::Succeeded) => Ok(()),
                Ok(PaymentStatus::ActionRequired) => Err(PaymentError::ActionRequired(
                    a.client_secret.clone().unwrap_or_default(),
                )),
                Ok(PaymentStatus::NotCharged) => {
                    Err(PaymentError::Declined("the payment was cancelled".into()))
                }
                Ok(PaymentStatus::Pending) => Err(PaymentError::Failed(
                    "the payment did not complete (authentication failed or still processing)"
                        .into(),
                )),
                Err(e) => Err(e),
            },
            _ => Err(PaymentError::Failed(
                "the payment waiting for authentication was given up".into(),
            )),
        };
        let settled = self.settle_outcome(fs, key, a, outcome, busy).await;
        self.release_mark(&id, &rid, &loc, true).await;
        settled
    }

    /// What a continuing request is answered when the waiting attempt `id` changed
    /// before it could continue it: the success another request answered it, or how
    /// that request settled the attempt ([`settled_elsewhere`]); busy while the
    /// attempt is open (another request is continuing it) or ended uncharged (a
    /// retry finds the booking's state).
    async fn overtaken(&self, key: &IdemKey, id: &str) -> Result<Answer<BookingResult>, AppError> {
        let settled = self.store.attempt(id)?.filter(|a| a.state.is_final());
        let Some(settled) = settled else {
            return Err(busy_error());
        };
        // the reply may be from a batch whose sync has not finished yet
        self.committer.settle_reads().await?;
        match self.store.reply(key)?.filter(|v| v.get("ok").is_some()) {
            Some(v) => super::replay(v),
            None => Err(settled_elsewhere(settled.state == AttemptState::Succeeded)),
        }
    }

    /// Settles an attempt from what the gateway answered to its confirm.
    async fn settle_outcome(
        &self,
        fs: &Arc<FlightSeats>,
        key: IdemKey,
        attempt: PaymentAttempt,
        outcome: Result<(), PaymentError>,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        match outcome {
            Ok(()) => self.settle_paid(fs, key, attempt, busy).await,
            Err(PaymentError::ActionRequired(secret)) => {
                self.await_action(attempt, secret, busy).await
            }
            Err(PaymentError::Declined(m)) => {
                self.settle_failed(attempt, busy, AppError::PaymentDeclined(m), "declined")
                    .await
            }
            Err(PaymentError::Failed(m) | PaymentError::Refused(m) | PaymentError::Rejected(m)) => {
                match self.resolve(&attempt).await {
                    Ok(PaymentStatus::Succeeded) => self.settle_paid(fs, key, attempt, busy).await,
                    Ok(PaymentStatus::NotCharged) => {
                        self.settle_failed(
                            attempt,
                            busy,
                            AppError::PaymentFailed(m),
                            "payment_failed",
                        )
                        .await
                    }
                    // unknown: the attempt stays open for the reconciler, and the
                    // request is told so (whatever it was about to be told)
                    _ => {
                        let m = format!(
                            "{m}; whether it was charged is not known yet: repeat this \
                             request_id later to learn the outcome"
                        );
                        self.left_open(key, &attempt.locator, &attempt.id, m, Some(busy))
                            .await
                    }
                }
            }
        }
    }

    /// Settles a charge for the pay request `key`. If the booking cannot take it and its
    /// refund must wait for another node's payment operation on the booking, the
    /// request ends with `payment_failed` (or the success a twin of it answered) and
    /// the attempt is left open for the reconciler, which refunds the charge.
    async fn settle_paid(
        &self,
        fs: &Arc<FlightSeats>,
        key: IdemKey,
        attempt: PaymentAttempt,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        let (loc, id) = (attempt.locator.clone(), attempt.id.clone());
        match self.settle_charged(fs, attempt, &busy).await {
            Err(e) if is_busy(&e) => {
                let m = "the payment went through but the booking could not take it; the \
                         charge is being refunded";
                self.left_open(key, &loc, &id, m.into(), Some(busy)).await
            }
            settled => settled,
        }
    }

    /// Ends a pay request with `payment_failed` (`message`), its attempt left open for
    /// the reconciler: the reply is remembered until the attempt settles. `busy` (the
    /// booking's, if still held) is let go only once that reply is written: a
    /// reconciler on this node settling the attempt earlier would have its success
    /// reply overwritten by this error.
    async fn left_open(
        &self,
        key: IdemKey,
        loc: &domain::Locator,
        attempt_id: &str,
        message: String,
        busy: Option<Busy>,
    ) -> Result<Answer<BookingResult>, AppError> {
        let _busy = busy;
        let err = AppError::PaymentFailed(message);
        let failed = (
            key.user,
            event(
                "payment_failed",
                Some(loc),
                domain::now_ms(),
                json!({"message": err.to_string()}),
            ),
        );
        self.end_with_error(key, Batch::default(), Some(attempt_id), Some(failed), err)
            .await
    }

    /// The customer must act: the attempt waits (not charged, still open) and the
    /// request fails with the client secret; the booking stays held.
    async fn await_action(
        &self,
        mut a: PaymentAttempt,
        secret: String,
        busy: Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        // busy until the new state is written: a reconciler must not take the attempt
        // for an interrupted one and cancel the payment the customer is to complete
        let _busy = busy;
        let now = domain::now_ms();
        a.state = AttemptState::ActionRequired;
        a.client_secret = Some(secret.clone());
        a.updated_at = now;
        let err = AppError::PaymentActionRequired {
            client_secret: secret,
        };
        let waits = (
            a.user_id,
            event("payment_action_required", Some(&a.locator), now, json!({})),
        );
        let key = pay_key(&a);
        let batch = Batch {
            attempts: vec![a],
            ..Default::default()
        };
        self.end_with_error(key, batch, None, Some(waits), err)
            .await
    }

    /// Writes a new attempt; on a cluster with the booking's payment mark, which another
    /// node's request may hold (`invalid_state`) unless it lapsed or is a twin of this
    /// one. A single node needs none: its working map's busy mark covers it, and no
    /// mark outlives its restart. Creating a payment charges nothing, so this record
    /// need not be durable yet: the next commit (with the payment reference) makes
    /// both durable.
    async fn take_mark(&self, a: &PaymentAttempt) -> Result<(), AppError> {
        if !self.committer.is_replicated() {
            return Ok(self
                .write_soon(Batch {
                    attempts: vec![a.clone()],
                    ..Default::default()
                })
                .await?);
        }
        let mark = self.new_mark(&a.locator, &a.id, &a.request_id);
        // a twin of this request through another node: both go on, a second charge
        // is refunded
        self.claim_mark(&mark, Some(a), |m| m.request_id == a.request_id, |_| false)
            .await?;
        Ok(())
    }

    /// A payment mark of `locator` for `attempt_id` (an attempt or a refund), running
    /// one payment span from now.
    fn new_mark(
        &self,
        locator: &domain::Locator,
        attempt_id: &str,
        request_id: &str,
    ) -> PaymentMark {
        PaymentMark {
            locator: locator.clone(),
            attempt_id: attempt_id.to_owned(),
            request_id: request_id.to_owned(),
            until: domain::now_ms() + self.payment_span().as_millis() as domain::Millis,
            owner: self.mark_owner.clone(),
        }
    }

    /// Whether this process took `m` (since it started).
    fn owns(&self, m: &PaymentMark) -> bool {
        m.owner == self.mark_owner
    }

    /// Takes `mark` on a cluster, in one write with `attempt` if given: by
    /// compare-and-swap, so of two nodes only one takes it. `Ok(false)` without taking
    /// it when the live mark found is one `shares` lets this go on under (the attempt
    /// is still written); a live mark `takes_over` allows is replaced, as a lapsed one
    /// is; `invalid_state` under any other live mark.
    async fn claim_mark(
        &self,
        mark: &PaymentMark,
        attempt: Option<&PaymentAttempt>,
        shares: impl Fn(&PaymentMark) -> bool,
        takes_over: impl Fn(&PaymentMark) -> bool,
    ) -> Result<bool, AppError> {
        let with = || Batch {
            attempts: attempt.cloned().into_iter().collect(),
            ..Default::default()
        };
        let mut take = with();
        take.new_marks = vec![mark.clone()];
        match self.write_soon(take).await {
            Err(StoreError::Conflict) => {}
            other => return Ok(other.map(|()| true)?),
        }
        let mut take = with();
        let now = domain::now_ms();
        match self.store.payment_mark(&mark.locator)? {
            Some(m) if m.live(now) && shares(&m) => {
                if attempt.is_some() {
                    self.write_soon(take).await?;
                }
                return Ok(false);
            }
            Some(m) if m.live(now) && !takes_over(&m) => return Err(busy_error()),
            Some(replaced) => take.marks = vec![(replaced, mark.clone())],
            None => take.new_marks = vec![mark.clone()],
        }
        match self.write_soon(take).await {
            // another node took it first
            Err(StoreError::Conflict) => Err(busy_error()),
            other => Ok(other.map(|()| true)?),
        }
    }

    /// On a cluster, takes the booking's payment mark for making refund `r` at the
    /// gateway (on one node its busy mark covers it), so that no other node pays,
    /// refunds or resolves the booking's refund meanwhile: `invalid_state` while one
    /// does. `covered` tells a live mark this node's request holds already (the pay
    /// or reconciliation settling the charge refunded): then none is taken. Returns
    /// the mark taken, for [`Self::release_held`].
    pub(super) async fn take_refund_mark(
        &self,
        r: &RefundRecord,
        covered: impl Fn(&PaymentMark) -> bool,
    ) -> Result<HeldMark, AppError> {
        self.hold_mark(&r.locator, &r.id, &r.id, covered, |_| false)
            .await
    }

    /// On a cluster, takes the payment mark of booking `loc` for `attempt_id` (an
    /// attempt or a refund) of `request_id`, as [`Self::take_refund_mark`] does; a
    /// live mark `takes_over` allows is replaced by it.
    async fn hold_mark(
        &self,
        loc: &domain::Locator,
        attempt_id: &str,
        request_id: &str,
        covered: impl Fn(&PaymentMark) -> bool,
        takes_over: impl Fn(&PaymentMark) -> bool,
    ) -> Result<HeldMark, AppError> {
        let mut held = HeldMark {
            committer: self.committer.clone(),
            tasks: self.tasks.clone(),
            mark: None,
        };
        if !self.committer.is_replicated() {
            return Ok(held);
        }
        let mark = self.new_mark(loc, attempt_id, request_id);
        if self.claim_mark(&mark, None, covered, takes_over).await? {
            held.mark = Some(mark);
        }
        Ok(held)
    }

    /// Releases a mark [`Self::hold_mark`] took.
    pub(super) async fn release_held(&self, mut held: HeldMark) {
        if let Some(mark) = held.mark.take() {
            release(&self.committer, mark).await;
        }
    }

    /// Releases the booking's payment mark if `attempt` holds it for `request_id`, or
    /// a twin of that request holds it (when `twins`: a pay request's twin through
    /// another node) and its attempt is over; else it lapses. A live mark another process took
    /// is left to it, unless it is such a twin's. A twin's attempt still open is
    /// first settled with the gateway: made through a node that died, it is
    /// cancelled (or its charge refunded) and its mark released; one still being
    /// charged stays uncertain and keeps its mark.
    fn release_mark<'a>(
        &'a self,
        attempt: &'a str,
        request_id: &'a str,
        loc: &'a domain::Locator,
        twins: bool,
    ) -> BoxFuture<'a, ()> {
        // boxed: settling a twin releases its mark through here again
        async move {
            let now = domain::now_ms();
            let mark = match self.store.payment_mark(loc) {
                Ok(Some(m))
                    if m.live(now) && !self.owns(&m) && !(twins && m.request_id == request_id) =>
                {
                    return
                }
                // not a reconciler's mark that took this one over
                Ok(Some(m)) if m.attempt_id == attempt && m.request_id == request_id => m,
                Ok(Some(m)) if twins && m.request_id == request_id => {
                    match self.store.attempt(&m.attempt_id) {
                        Ok(Some(twin)) if twin.is_open() => {
                            if twin.payment_ref.is_some() && !self.awaits_customer(&twin, now) {
                                // settling it releases its mark
                                let id = twin.id.clone();
                                let settled = self.reconcile(twin, true).await;
                                log_reconciled(&id, settled);
                            }
                            return;
                        }
                        Ok(_) => m,
                        Err(_) => return,
                    }
                }
                _ => return,
            };
            release(&self.committer, mark).await;
        }
        .boxed()
    }

    /// What became of an attempt's payment, deciding an uncertain one: a payment that
    /// is not final is cancelled, and only a successful cancel means not charged (a
    /// cancel refused because the payment succeeded means charged; an error, pending).
    async fn resolve(&self, a: &PaymentAttempt) -> Result<PaymentStatus, PaymentError> {
        // no reference: the payment was never created, or never confirmed
        let Some(r) = &a.payment_ref else {
            return Ok(PaymentStatus::NotCharged);
        };
        match self.payments.status(r).await? {
            // a fresh key per try: cancelling is idempotent by nature, and Stripe
            // would replay a refusal (the payment was processing) under a reused key
            s if !s.is_final() => {
                let key = super::unique_id(&format!("{}-cancel", a.id));
                self.payments.cancel(r, &key).await
            }
            settled => Ok(settled),
        }
    }

    /// What `a`'s charge does to its booking, decided on the flight's locked working
    /// map. The confirmation expects the attempt as read and no refund of it open:
    /// through another node, its refund may be opened (or even made and closed)
    /// meanwhile, as [`orphan_opening`] expects the attempt unsettled.
    fn charge_decision(
        &self,
        fs: &Arc<FlightSeats>,
        w: &mut Working,
        a: &PaymentAttempt,
        order: &OrderDraft,
    ) -> Result<(Option<Ticket>, Settle), AppError> {
        // once a refund of the charge is open, the charge is refunded, whatever else
        if let Some(r) = self.store.open_refund(&a.id)? {
            return Ok((None, Settle::RefundOpen(Box::new(r))));
        }
        let read = self.store.attempt(&a.id)?;
        let now = domain::now_ms();
        let mut b = self
            .store
            .booking(&a.locator)?
            .ok_or(AppError::NotFound("booking"))?;
        let idx: Vec<usize> = b.seats.iter().filter_map(|x| w.index(x.seat)).collect();
        let ours = b.status == domain::BookingStatus::Held
            && fs.flight().status(now).allows(Operation::Book)
            && idx.len() == b.seats.len()
            && idx.iter().all(|&i| {
                w.seats[i]
                    .as_ref()
                    .is_some_and(|o| o.locator == a.locator && !o.booked)
            });
        let paid_by_this_charge = b.status == domain::BookingStatus::Confirmed
            && b.order_id.as_deref().is_some_and(
                |o| matches!(self.store.order(o), Ok(Some(o)) if o.charge_id == order.payment_ref),
            );
        if paid_by_this_charge {
            return Ok((None, Settle::Already(true)));
        }
        if let Some(settled) = read.as_ref().filter(|r| r.state.is_final()) {
            let paid = settled.state == AttemptState::Succeeded;
            return Ok((None, Settle::Already(paid)));
        }
        if !ours
            || b.confirm(order.tickets.clone(), order.order_id.clone(), now)
                .is_err()
        {
            return Ok((None, Settle::Refund(read.map(Box::new))));
        }
        let mut a = a.clone();
        let order = Order {
            order_id: order.order_id.clone(),
            locator: a.locator.clone(),
            user_id: a.user_id,
            status: OrderStatus::Paid,
            amount: b.total,
            refunded: domain::Money::ZERO,
            created_at: now,
            charge_id: order.payment_ref.clone(),
        };
        let result = self.paid_view(b.clone(), order.clone());
        a.state = AttemptState::Succeeded;
        a.updated_at = now;
        let batch = Batch {
            bookings: vec![b.clone()],
            new_orders: vec![order.clone()],
            events: vec![(
                a.user_id,
                event(
                    "paid",
                    Some(&a.locator),
                    now,
                    json!({
                        "amount": wire::money(b.total), "order_id": order.order_id,
                    }),
                ),
            )],
            replies: std::iter::once(pay_key(&a))
                .chain(earlier_keys(&a))
                .map(|k| (k, remember_ok(&result)))
                .collect(),
            ..keeping_charge(a.clone(), read)
        };
        let occupant = Occupant {
            locator: a.locator.clone(),
            booked: true,
        };
        let updates = idx
            .into_iter()
            .map(|i| (i, Some(occupant.clone())))
            .collect();
        let ticket = self.change_seats(fs, w, batch, updates, &b)?;
        Ok((Some(ticket), Settle::Confirmed(Box::new(result))))
    }

    /// Ends an attempt that charged nothing (and never will).
    async fn settle_failed(
        &self,
        mut a: PaymentAttempt,
        busy: Busy,
        err: AppError,
        kind: &str,
    ) -> Result<Answer<BookingResult>, AppError> {
        // the booking stays busy until the attempt's end is written: a reconciler
        // settling it meanwhile would write a second failure
        let _busy = busy;
        let now = domain::now_ms();
        a.state = AttemptState::Failed;
        a.certain = true;
        a.updated_at = now;
        let failed = (
            a.user_id,
            event(
                kind,
                Some(&a.locator),
                now,
                json!({ "message": err.to_string() }),
            ),
        );
        let key = pay_key(&a);
        let batch = Batch {
            attempts: vec![a],
            ..Default::default()
        };
        self.end_with_error(key, batch, None, Some(failed), err)
            .await
    }

    /// A charge went through: confirm the booking if its seats are still its own and
    /// its flight still takes payments, in one batch with the attempt's end; otherwise
    /// refund the charge (a flight that began boarding or departed while the charge
    /// was made sells nothing more, as an airline cancellation). The caller keeps
    /// the booking busy until it has written what follows (the refund is recorded
    /// here, a resolve on this node must not slip in before).
    async fn settle_charged(
        &self,
        fs: &Arc<FlightSeats>,
        mut a: PaymentAttempt,
        _busy: &Busy,
    ) -> Result<Answer<BookingResult>, AppError> {
        let payment_ref = a.payment_ref.clone().ok_or(AppError::Internal)?;
        let tickets_needed = self.store.booking(&a.locator)?.map_or(0, |b| b.seats.len());
        let tickets = (0..tickets_needed)
            .map(|_| {
                self.store
                    .next_id()
                    .map(|n| TicketNumber::new(AIRLINE_CODE, n))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let order = OrderDraft {
            payment_ref: payment_ref.clone(),
            tickets,
            order_id: format!("ORD{:010}", self.store.next_id()?),
        };
        let key = pay_key(&a);
        let mut tries = 0;
        // charged, but the booking cannot have it: give the money back
        let refund = loop {
            // no request key here: a success reply under it may come from a twin
            // request that paid with another charge, which this one must then refund
            let decided = self.seat_step(fs, None, |w| self.charge_decision(fs, w, &a, &order));
            let read = match decided.await? {
                Step::Done(Settle::Confirmed(result)) => return Ok(Answer::Now(*result)),
                Step::Replayed(memo) => return super::replay(memo),
                Step::Done(Settle::RefundOpen(open)) => break *open,
                Step::Done(Settle::Refund(read)) => read.map(|a| *a),
                Step::Done(Settle::Already(paid)) => {
                    // the reply may be from a batch whose sync has not finished yet
                    self.committer.settle_reads().await?;
                    return match self.store.reply(&key)? {
                        Some(v) => super::replay(v),
                        None => Err(settled_elsewhere(paid)),
                    };
                }
            };
            let mut r = new_refund(
                a.user_id,
                &a.locator,
                payment_ref.clone(),
                Vec::new(),
                a.amount,
                RefundReason::Orphan {
                    attempt_id: a.id.clone(),
                },
            );
            if a.is_legacy() {
                // an older version may have asked for this refund under that key
                r.id = format!("{}-refund", a.id);
            }
            if self.opens(orphan_opening(&r, read)).await? {
                break r;
            }
            // opened, or the attempt settled, through another node meanwhile: decide
            // again once this node has that write
            tries += 1;
            if tries > 3 {
                // still racing another node: the attempt stays open for whoever is
                // left (the caller's busy handling)
                return Err(busy_error());
            }
            self.committer.catch_up().await?;
        };
        // made under this process's mark for this request (or its twin), else under
        // one of its own: never under another node's, which may be refunding it too
        let covered = |m: &PaymentMark| {
            self.owns(m) && (m.attempt_id == a.id || m.request_id == a.request_id)
        };
        let mark = self.take_refund_mark(&refund, covered).await?;
        let ended = async {
            let err = self.orphan_refunded(fs, &a.locator);
            // the record as it is now, under the mark: another node may have closed it
            let Some(mut refund) = self.store.open_refund(&a.id)?.filter(|r| r.id == refund.id)
            else {
                return Err(err);
            };
            let made = match self.make_refund(&mut refund, false).await {
                Ok(made) => made,
                Err(e) => {
                    tracing::error!(attempt = %a.id, error = %e, "refund of an orphaned charge failed; will retry");
                    return Err(e);
                }
            };
            // the record as this request wrote its try: the close is written only over it
            let read = refund.clone();
            super::refunds::made_by(&mut refund, made);
            let now = domain::now_ms();
            refund.done = true;
            refund.updated_at = now;
            a.state = AttemptState::Refunded;
            a.updated_at = now;
            let refunded = (
                a.user_id,
                event(
                    "payment_refunded",
                    Some(&a.locator),
                    now,
                    json!({ "amount": wire::money(a.amount) }),
                ),
            );
            // a twin request through another node may have paid the booking and answered
            let batch = Batch {
                events: vec![refunded],
                attempts: vec![a.clone()],
                refunds: vec![refund],
                refunds_read: vec![read],
                ..Default::default()
            };
            self.end_with_error(key, batch, None, None, err).await
        };
        let ended = ended.await;
        self.release_held(mark).await;
        ended
    }

    /// Answers the pay request of the batch's attempt, an orphaned charge refunded by
    /// other means, and the ones it answered earlier, as [`Self::orphan_refunded`]
    /// (see [`Self::answer_error`]).
    pub(super) fn answer_orphan_refunded(
        &self,
        fs: &FlightSeats,
        batch: &mut Batch,
    ) -> Result<(), AppError> {
        let a = batch.attempts.first().ok_or(AppError::Internal)?;
        let (key, err) = (pay_key(a), self.orphan_refunded(fs, &a.locator));
        self.answer_error(&key, self.store.reply(&key)?, batch, &err)
    }

    /// What a pay request whose charge the booking could not take is answered once
    /// the charge is refunded.
    fn orphan_refunded(&self, fs: &FlightSeats, loc: &domain::Locator) -> AppError {
        let why = match self.store.booking(loc).ok().flatten().map(|b| b.status) {
            _ if fs.flight().cancelled.is_some() || fs.is_closing() => {
                "the airline cancelled the flight"
            }
            Some(BookingStatus::Expired) => "the booking's hold expired",
            Some(BookingStatus::Cancelled) => "the booking was cancelled",
            _ if !fs.flight().status(domain::now_ms()).allows(Operation::Book) => {
                "the flight closed for sale (boarding or departed)"
            }
            _ => "the booking's hold ended",
        };
        AppError::InvalidState(format!(
            "{why} before the payment completed; the charge was refunded"
        ))
    }

    /// Refuses to move money once a sync has failed: the store's memory may then hold
    /// records (an open refund, an attempt) that never reach the disk, and a restart
    /// would not know the money moved.
    pub(super) fn money_may_move(&self) -> Result<(), AppError> {
        match self.committer.has_failed() {
            true => Err(AppError::Internal),
            false => Ok(()),
        }
    }

    /// Ends a pay request with `err`: writes `batch` (what became of the attempt) with
    /// `failed` (the user's event of the failure) and the error as the request's
    /// reply. If another request settled the attempt first (a twin of this one through
    /// another node, say), or answered this one with a success, its answer stands; one
    /// that settled it without answering this request has it answered how (see
    /// [`settled_elsewhere`]), with no reply remembered, never the error (the charge
    /// may have gone through).
    async fn end_with_error(
        &self,
        key: IdemKey,
        batch: Batch,
        open: Option<&str>,
        failed: Option<(domain::UserId, HistoryEvent)>,
        err: AppError,
    ) -> Result<Answer<BookingResult>, AppError> {
        let decide = || self.error_ending(&key, &batch, open, &failed, &err);
        match self.write_decided(decide).await? {
            Some(answer) => super::replay(answer),
            None => Err(err),
        }
    }

    /// Writes what `decide` makes of the store as it is now (on a cluster, with every
    /// write acknowledged through any node) and gives its answer. The write expects
    /// what the decision read still stored so, and conflicts if another request
    /// changed it in between: then it is decided again (at most three more times).
    async fn write_decided<T>(
        &self,
        mut decide: impl FnMut() -> Result<(Option<Batch>, T), AppError>,
    ) -> Result<T, AppError> {
        let mut tries = 0;
        loop {
            self.committer.catch_up().await?;
            let (write, answer) = decide()?;
            let written = match write {
                Some(batch) => self.commit(batch).await,
                None => Ok(()),
            };
            match written {
                Err(StoreError::Conflict) if tries < 3 => tries += 1,
                written => return Ok(written.map(|()| answer)?),
            }
        }
    }

    /// What [`Self::end_with_error`] writes, as the store holds things now (None:
    /// nothing), and the answer that stands instead of the error, if any. An attempt
    /// stored as succeeded or refunded was settled by another request, whose reply to
    /// `key` stands ([`settled_elsewhere`] if it wrote none), as does a success reply:
    /// the copy of it is not written (one read before, still waiting for the customer
    /// say, would open it again, where nothing would close it and a later cancel
    /// would refund its charge twice), nor the error, nor the close of a refund that
    /// request closed (or that was reopened since). A refund this request made whose
    /// record changed since it was read (`refunds_read`) writes nothing: the answer
    /// that stands if the attempt was settled, else `payment_failed` (the refund stays
    /// open as changed). Otherwise the error (see [`Self::answer_error`]). The write
    /// expects the reply and each attempt it touches (`open`: one it leaves open and
    /// does not write) and each refund as read here.
    fn error_ending(
        &self,
        key: &IdemKey,
        batch: &Batch,
        open: Option<&str>,
        failed: &Option<(domain::UserId, HistoryEvent)>,
        err: &AppError,
    ) -> Result<(Option<Batch>, Option<Value>), AppError> {
        let reply = self.store.reply(key)?;
        let mut settled = reply.as_ref().is_some_and(|v| v.get("ok").is_some());
        // how another request settled an attempt this one touches, if it did
        let mut paid = false;
        let mut finals = |stored: &PaymentAttempt| {
            paid |= stored.state == AttemptState::Succeeded;
            settled |= stored.state.is_final();
            stored.state.is_final()
        };
        let mut batch = batch.clone();
        // a refund this request made whose record changed meanwhile through another
        // node (an admin's retry gave it a fresh key after this request's mark lapsed)
        // is not closed over the change: it stays open as changed, for the next try
        let mut changed = false;
        for read in &batch.refunds_read {
            let open = self.store.open_refund(read.subject())?;
            changed |= open.is_some_and(|o| o.id == read.id && o != *read);
        }
        let mut kept = Vec::with_capacity(batch.attempts.len());
        let opened = match open {
            Some(id) => self.store.attempt(id)?,
            None => None,
        };
        for a in std::mem::take(&mut batch.attempts) {
            match self.store.attempt(&a.id)? {
                Some(stored) if finals(&stored) => {}
                stored => {
                    batch.attempts_read.extend(stored);
                    kept.push(a);
                }
            }
        }
        batch.attempts = kept;
        if let Some(a) = &opened {
            finals(a);
        }
        batch.attempts_read.extend(opened);
        let standing = || {
            reply
                .clone()
                .unwrap_or_else(|| results::err_memo(&settled_elsewhere(paid).into()))
        };
        if changed {
            // nothing written; a success or settling another request answered stands
            return match settled {
                true => Ok((None, Some(standing()))),
                false => Err(super::refunds::changed_while_made()),
            };
        }
        if settled {
            // a refund closed by whoever settled the attempt (one that took over this
            // request's lapsed mark) was recorded there, with its event (the only
            // event of a batch closing a refund); one reopened since (its refund failed
            // at the bank) is open under another subject, and not this one
            let mut closed = false;
            for r in std::mem::take(&mut batch.refunds) {
                match self.store.open_refund(r.subject())? {
                    Some(open) if open.id == r.id => batch.refunds.push(r),
                    _ => closed = true,
                }
            }
            if closed {
                batch.events.clear();
            }
            let kept = &batch.refunds;
            batch
                .refunds_read
                .retain(|r| kept.iter().any(|k| k.id == r.id));
            let nothing =
                batch.attempts.is_empty() && batch.events.is_empty() && batch.refunds.is_empty();
            batch.replies_read.push((key.clone(), reply.clone()));
            return Ok(((!nothing).then_some(batch), Some(standing())));
        }
        batch.events.extend(failed.clone());
        self.answer_error(key, reply, &mut batch, err)?;
        Ok((Some(batch), None))
    }

    /// Adds `err` as the reply to the pay request `key` (whose reply is `read`) and to
    /// the requests the batch's attempts answered earlier, except to one answered a
    /// success (each key once: etcd refuses a batch writing one twice). Each reply is
    /// replaced only if still stored as read.
    fn answer_error(
        &self,
        key: &IdemKey,
        read: Option<Value>,
        batch: &mut Batch,
        err: &AppError,
    ) -> Result<(), AppError> {
        let mut earlier: Vec<IdemKey> = batch.attempts.iter().flat_map(earlier_keys).collect();
        earlier.sort_by(|a, b| a.request_id.cmp(&b.request_id));
        earlier.dedup();
        let mut answer = |k: IdemKey, read: Option<Value>| {
            if read.as_ref().is_none_or(|v| v.get("ok").is_none()) {
                batch.replies.push((k.clone(), remember_err(err)));
                batch.replies_read.push((k, read));
            }
        };
        for k in earlier.into_iter().filter(|k| k != key) {
            answer(k.clone(), self.store.reply(&k)?);
        }
        answer(key.clone(), read);
        Ok(())
    }

    /// The pay request's success reply, if some node already gave one: an error
    /// reply must never replace it.
    async fn success_reply(&self, key: &IdemKey) -> Result<Option<Value>, AppError> {
        self.committer.catch_up().await?;
        Ok(self.store.reply(key)?.filter(|v| v.get("ok").is_some()))
    }

    /// Settles one open attempt, or checks again one closed as failed, from what the
    /// gateway says, unless a payment for the booking is in flight right now (that
    /// request settles it). A charge found for a failed attempt confirms the booking if
    /// its seats are still held by it, and is refunded otherwise. A live payment mark
    /// of the attempt taken by another process is that process's to settle under
    /// (skipped), unless this is a `twin` of its request settling it.
    async fn reconcile(&self, a: PaymentAttempt, twin: bool) -> Result<Reconciled, AppError> {
        if !a.is_open() && a.state != AttemptState::Failed {
            return Ok(Reconciled::Settled);
        }
        let Some(b) = self.store.booking(&a.locator)? else {
            return Ok(Reconciled::Skipped);
        };
        let fs = self.flight_seats(&b.flight_id)?;
        // a twin's mark is shared; this process's own (a pay of the attempt about to
        // release it, or whose release failed) is taken over, so that the pay's
        // release or a retry of its request through another node cannot take it while
        // the gateway is asked
        let shares = |m: &PaymentMark| m.attempt_id == a.id && twin;
        let own = |m: &PaymentMark| m.attempt_id == a.id && !twin && self.owns(m);
        let busy = {
            let mut w = fs.working();
            if self.paying(&w, &a.locator, &|m| shares(m) || own(m))? {
                return Ok(Reconciled::Skipped);
            }
            Busy::mark(&fs, &mut w, &a.locator)?
        };
        // on a cluster, other nodes' payments and reconcilers keep off the booking
        // while this one asks the gateway and settles (they would settle it twice);
        // under a request id no pay has, or a retry of the attempt's pay request
        // would take it for its twin's mark and go on under it
        let mark = match self
            .hold_mark(&a.locator, &a.id, &reconciler_request(&a.id), shares, own)
            .await
        {
            Err(e) if is_busy(&e) => return Ok(Reconciled::Skipped),
            held => held?,
        };
        let reconciled = self.reconcile_under_mark(a, twin, fs, busy).await;
        self.release_held(mark).await;
        reconciled
    }

    /// [`Self::reconcile`], once the booking is this node's.
    async fn reconcile_under_mark(
        &self,
        a: PaymentAttempt,
        twin: bool,
        fs: Arc<FlightSeats>,
        busy: Busy,
    ) -> Result<Reconciled, AppError> {
        // read again under the mark: `a` may be a copy from before another settling
        // (a webhook, a pay, another task) finished; settling it again would refund or
        // fail it twice (on a cluster, once this node has every write committed so far)
        self.committer.catch_up().await?;
        let Some(a) = self.store.attempt(&a.id)? else {
            return Ok(Reconciled::Skipped);
        };
        if !a.is_open() && a.state != AttemptState::Failed {
            return Ok(Reconciled::Settled);
        }
        let interrupted = || AppError::PaymentFailed(INTERRUPTED.into());
        let status = self
            .resolve(&a)
            .await
            .map_err(|e| AppError::PaymentFailed(e.to_string()))?;
        let (id, rid, loc) = (a.id.clone(), a.request_id.clone(), a.locator.clone());
        let settled = match status {
            PaymentStatus::Succeeded => {
                // let go before the mark's release below: it may settle a twin here
                let settled = self.settle_charged(&fs, a, &busy).await;
                drop(busy);
                settled
            }
            PaymentStatus::NotCharged if a.is_open() => {
                self.settle_failed(a, busy, interrupted(), "payment_failed")
                    .await
            }
            PaymentStatus::NotCharged => {
                drop(busy);
                self.write_certain(a).await?;
                return Ok(Reconciled::Settled);
            }
            PaymentStatus::Pending | PaymentStatus::ActionRequired => {
                return Ok(Reconciled::Skipped)
            }
        };
        if matches!(&settled, Err(e) if is_busy(e)) {
            // its refund waits for another node's payment operation on the booking
            return Ok(Reconciled::Skipped);
        }
        // a node that died mid-payment left its mark
        self.release_mark(&id, &rid, &loc, twin).await;
        match settled {
            Ok(_) | Err(AppError::PaymentDeclined(_) | AppError::InvalidState(_)) => {
                Ok(Reconciled::Settled)
            }
            // the answer `settle_failed` gives for the attempt it closed
            Err(AppError::PaymentFailed(m)) if m == INTERRUPTED => Ok(Reconciled::Settled),
            Err(e) => Err(e),
        }
    }

    /// Whether an attempt waits for the customer's action while its booking is still
    /// held: then only the next `booking.pay` settles it.
    pub(super) fn awaits_customer(&self, a: &PaymentAttempt, now: domain::Millis) -> bool {
        a.state == AttemptState::ActionRequired
            && matches!(self.store.booking(&a.locator), Ok(Some(b))
                if b.status == domain::BookingStatus::Held
                    && b.hold_expires_at.is_some_and(|t| t > now))
    }

    /// Whether `a` is settled with the gateway before its booking's hold ends (by the
    /// hold's expiry, or by a `booking.pay` finding it past due): it may have charged,
    /// or it waited for its customer, who may have completed it, and the hold is over.
    /// Only until [`Self::settle_deadline`]: after it the hold goes without asking,
    /// and the reconciler settles the attempt.
    pub(super) fn settles_before_hold_ends(&self, a: &PaymentAttempt, now: domain::Millis) -> bool {
        let lapsed_action =
            a.state == AttemptState::ActionRequired && !self.awaits_customer(a, now);
        (a.may_have_charged() || lapsed_action) && now < self.settle_deadline(a)
    }

    /// Until when a due hold waits for `a` to settle: one payment span after its last
    /// step (its start, or the `booking.pay` that continued it). For a payment waiting
    /// for its customer, who may complete it until the hold ends, one payment span
    /// after the hold's end if that is later.
    pub(super) fn settle_deadline(&self, a: &PaymentAttempt) -> domain::Millis {
        let span = self.payment_span().as_millis() as domain::Millis;
        let last_step = a.updated_at.max(a.created_at);
        let hold_end = match a.state {
            AttemptState::ActionRequired => match self.store.booking(&a.locator) {
                Ok(b) => b.and_then(|b| b.hold_expires_at),
                Err(e) => {
                    // rather ask the gateway than refund a payment that may confirm
                    tracing::error!(attempt = %a.id, error = %e, "cannot read the booking of a payment");
                    Some(domain::now_ms())
                }
            },
            _ => None,
        };
        hold_end
            .map_or(last_step, |t| t.max(last_step))
            .saturating_add(span)
    }

    /// Reconciles `a`; `false` (logged) if it was skipped or failed, so it is still
    /// to be settled or checked.
    pub(super) async fn try_reconcile(&self, a: PaymentAttempt) -> bool {
        let id = a.id.clone();
        log_reconciled(&id, self.reconcile(a, false).await)
    }

    /// Reconciles every open attempt older than `min_age` with the gateway, and, until
    /// all are checked, the attempts an older version closed as failed on a mere
    /// status read (a charge may have landed after it).
    pub async fn reconcile_payments(&self, min_age: Duration) {
        if self.money_may_move().is_err() {
            return;
        }
        let attempts = match self.store.open_attempts() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list open payment attempts");
                return;
            }
        };
        let now = domain::now_ms();
        let cutoff = now - min_age.as_millis() as domain::Millis;
        for a in attempts.into_iter().filter(|a| a.created_at <= cutoff) {
            if !self.awaits_customer(&a, now) {
                self.try_reconcile(a).await;
            }
        }
        self.reconcile_refunds(cutoff).await;
        if self.failures_checked.load(Ordering::SeqCst) {
            return;
        }
        // a scan of every attempt ever made: off the reactor
        let store = self.store.clone();
        let failures = tokio::task::spawn_blocking(move || store.uncertain_failures())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(e.to_string())));
        let failures = match failures {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list failed payment attempts");
                return;
            }
        };
        let mut all_checked = true;
        for a in failures {
            all_checked &= self.try_reconcile(a).await;
        }
        self.failures_checked.store(all_checked, Ordering::SeqCst);
    }

    /// The secret webhooks are signed with, if they are taken at all. An empty one (a
    /// compose file's `${STRIPE_WEBHOOK_SECRET}` left unset) would let anyone sign: it
    /// counts as none.
    pub fn webhook_secret(&self) -> Result<&str, WebhookError> {
        self.config
            .stripe_webhook_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(WebhookError::NotConfigured)
    }

    /// [`App::stripe_webhook`] on a task of its own, which [`App::stop`] waits for
    /// before the store closes: the caller's connection ending (its deadline, Stripe
    /// giving up on the answer) does not stop the work between two gateway calls,
    /// losing what it learnt of their answers and leaving a payment mark to lapse.
    pub async fn stripe_webhook_detached(
        self: &Arc<Self>,
        signature: String,
        body: bytes::Bytes,
    ) -> Result<(), WebhookError> {
        if self.stop.is_cancelled() {
            return Err(WebhookError::Internal);
        }
        let app = self.clone();
        let handled = self
            .tasks
            .spawn(async move { app.stripe_webhook(&signature, &body).await });
        handled.await.unwrap_or(Err(WebhookError::Internal))
    }

    /// Applies a signed Stripe event once; a repeat is acknowledged and ignored.
    pub async fn stripe_webhook(&self, signature: &str, body: &[u8]) -> Result<(), WebhookError> {
        let secret = self.webhook_secret()?;
        webhook::verify(secret, signature, body, domain::now_ms() / 1000)?;
        let event: Value = serde_json::from_slice(body).map_err(|_| WebhookError::Malformed)?;
        // kept for good once applied: only the shape of Stripe's ids (`evt_...`)
        let id = event["id"]
            .as_str()
            .filter(|id| webhook::is_stripe_id(id))
            .ok_or(WebhookError::Malformed)?;
        if self
            .store
            .webhook_seen(id)
            .map_err(|_| WebhookError::Internal)?
        {
            return Ok(());
        }
        let kind = event["type"].as_str().unwrap_or_default();
        let object_id = event["data"]["object"]["id"].as_str().unwrap_or_default();
        match kind {
            "payment_intent.succeeded" | "payment_intent.payment_failed" => {
                let attempt = self
                    .store
                    .attempt_by_ref(object_id)
                    .map_err(|_| WebhookError::Internal)?;
                let open_or_failed =
                    |a: &PaymentAttempt| a.is_open() || a.state == AttemptState::Failed;
                let now = domain::now_ms();
                // a payment waiting for the customer is settled by their next
                // `booking.pay`, or cancelled when the hold ends
                let waiting = |a: &PaymentAttempt| self.awaits_customer(a, now);
                if let Some(a) = attempt.filter(|a| open_or_failed(a) && !waiting(a)) {
                    // the gateway is asked, not the event trusted: the same path as start-up
                    // not recorded as seen unless applied: Stripe retries it
                    if !self.try_reconcile(a).await {
                        tracing::info!(event = id, "webhook not applied yet");
                        return Err(WebhookError::Internal);
                    }
                }
            }
            "charge.refunded" => tracing::info!(event = id, charge = object_id, "charge refunded"),
            // a refund's status changed: one that failed after it was recorded as made
            // is paid back again (the gateway is asked, not the event trusted)
            "charge.refund.updated" | "refund.updated" | "refund.failed" => {
                let reopened = async {
                    let asked = self.payments.refund_now(object_id).await;
                    match asked.map_err(|e| AppError::PaymentFailed(e.to_string()))? {
                        Some(g) => self.reopen_failed_refund(g, None).await,
                        None => Ok(()),
                    }
                };
                if let Err(e) = reopened.await {
                    tracing::info!(event = id, error = %e, "webhook not applied yet");
                    return Err(WebhookError::Internal);
                }
            }
            other => tracing::debug!(event = id, kind = other, "webhook ignored"),
        }
        self.commit(Batch {
            webhook_events: vec![id.to_owned()],
            ..Default::default()
        })
        .await
        .map_err(|_| WebhookError::Internal)?;
        Ok(())
    }
}

/// Reconciles open attempts every `every` until `stop`.
pub async fn run_reconciler(
    app: Arc<App>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                app.reconcile_payments(app.in_flight_age(every)).await;
                app.watch_pending_refunds().await;
                app.resume_cancellations();
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// A refund's payment mark taken (if any). Dropped unreleased, as when the future
/// making the refund is dropped midway (a cancellation job stopping), it is released
/// by a task of its own rather than left until it lapses.
/// That task is tracked: `App::stop` waits for it before the store closes.
pub(super) struct HeldMark {
    committer: Arc<Committer>,
    tasks: tokio_util::task::TaskTracker,
    mark: Option<PaymentMark>,
}

impl Drop for HeldMark {
    fn drop(&mut self) {
        let Some(mark) = self.mark.take() else {
            return;
        };
        let committer = self.committer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks
                .spawn_on(async move { release(&committer, mark).await }, &rt);
        }
    }
}

/// Releases a payment mark while it is still the one given (one taken anew meanwhile
/// is left alone; one not released lapses).
async fn release(committer: &Committer, mark: PaymentMark) {
    let id = mark.attempt_id.clone();
    let batch = Batch {
        unmarks: vec![mark],
        ..Default::default()
    };
    let released = match committer.submit(batch, None, || None) {
        Ok(t) => committer.durable(t).await,
        Err(e) => Err(e),
    };
    match released {
        Ok(()) | Err(StoreError::Conflict) => {}
        Err(e) => {
            tracing::warn!(attempt = %id, error = %e, "payment mark not released; it lapses")
        }
    }
}

/// Logs what [`App::reconcile`] did with attempt `id`; `false` if it is still to be
/// settled or checked.
fn log_reconciled(id: &str, r: Result<Reconciled, AppError>) -> bool {
    match r {
        Ok(Reconciled::Settled) => true,
        Ok(Reconciled::Skipped) => {
            tracing::info!(attempt = %id, "payment attempt left for later");
            false
        }
        Err(e) => {
            tracing::warn!(attempt = %id, error = %e, "payment attempt not reconciled yet");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::{Cabin, Locator, Money, SeatId, UserId};
    use crate::payments::{PaymentGateway, Sandbox, Stripe};
    use crate::store::SledStore;

    /// A request continuing the attempt again (its earlier answer was not
    /// remembered) is not kept among the earlier ones too: its key would be written
    /// twice in the outcome's batch, which etcd refuses, and the payment could never
    /// end.
    #[test]
    fn a_request_continuing_again_is_kept_once() {
        let mut a = PaymentAttempt {
            id: "pa-x".into(),
            user_id: UserId(1),
            locator: Locator::parse("LAPSED").unwrap(),
            amount: Money::cents(10_000).unwrap(),
            request_id: "p1".into(),
            payment_ref: None,
            state: AttemptState::ActionRequired,
            created_at: 0,
            updated_at: 0,
            certain: false,
            payment_method: None,
            client_secret: None,
            earlier_requests: Vec::new(),
        };
        continued_by(&mut a, "p2");
        continued_by(&mut a, "p3");
        continued_by(&mut a, "p2");
        assert_eq!(a.request_id, "p2");
        assert_eq!(a.earlier_requests, ["p1", "p3"]);
        let keys: Vec<String> = earlier_keys(&a).map(|k| k.request_id).collect();
        assert_eq!(keys, ["p1", "p3"]);
        for n in 0..40 {
            continued_by(&mut a, &format!("q{n}"));
        }
        assert_eq!(a.earlier_requests.len(), EARLIER_REQUESTS);
        assert_eq!(a.earlier_requests.last().unwrap(), "q38");
    }

    #[test]
    fn no_client_request_is_a_reconcilers() {
        let id = super::super::unique_id("pa");
        assert!(domain::RequestId::parse(&reconciler_request(&id)).is_err());
    }

    /// An app on a fresh sled store in `dir` paying through `payments`, and the store.
    async fn app_with(
        dir: &std::path::Path,
        payments: Arc<dyn PaymentGateway>,
    ) -> (Arc<SledStore>, Arc<App>) {
        let store = Arc::new(SledStore::open(dir).unwrap());
        let mut config = Config::for_tests(dir.to_path_buf());
        // the test reconciles when it means to
        config.reconcile_interval = 3600;
        let app = App::with_parts(config, store.clone(), payments)
            .await
            .unwrap();
        (store, app)
    }

    /// An app on a fresh sled store in a temporary directory (kept as long as the
    /// app is used), paying through the sandbox gateway.
    async fn sandbox_app() -> (tempfile::TempDir, Arc<App>) {
        let dir = tempfile::tempdir().unwrap();
        let (_store, app) = app_with(dir.path(), Arc::new(Sandbox::default())).await;
        (dir, app)
    }

    /// A 10,000-cent charge made and confirmed at `app`'s gateway for attempt
    /// `attempt_id`, and the attempt of [`lapsed_challenge`] that waited for it.
    async fn charged_challenge(app: &App, attempt_id: &str) -> PaymentAttempt {
        let request = PaymentRequest {
            amount: Money::cents(10_000).unwrap(),
            payment_method: "pm_card_visa".into(),
            locator: Locator::parse("LAPSED").unwrap(),
            attempt_id: attempt_id.into(),
        };
        let pi = app.payments.create(request).await.unwrap();
        app.payments.confirm(&pi, attempt_id).await.unwrap();
        lapsed_challenge(app, Some(pi))
    }

    /// A booking of user 1 on the first flight whose hold ended `ago` ms ago
    /// without being paid (expired), and its payment attempt, last stepped then,
    /// waiting for the customer's 3-D Secure with `payment_ref`. Both written.
    fn lapsed_challenge(app: &App, payment_ref: Option<String>) -> PaymentAttempt {
        let flight = app.store.flights().unwrap().remove(0);
        let now = domain::now_ms();
        let ago = 86_400_000;
        let mut b = domain::Booking::hold(
            Locator::parse("LAPSED").unwrap(),
            UserId(1),
            flight.id,
            vec![(
                SeatId::parse("12A").unwrap(),
                Cabin::Economy,
                Money::cents(10_000).unwrap(),
            )],
            vec!["Ada".into()],
            now - ago,
            600_000,
        )
        .unwrap();
        b.expire(now).unwrap();
        let a = PaymentAttempt {
            id: super::super::unique_id("pa"),
            user_id: b.user_id,
            locator: b.locator.clone(),
            amount: b.total,
            request_id: "p1".into(),
            payment_ref,
            state: AttemptState::ActionRequired,
            created_at: now - ago,
            updated_at: now - ago,
            certain: false,
            payment_method: Some("pm_card_visa".into()),
            client_secret: Some("secret".into()),
            earlier_requests: Vec::new(),
        };
        app.store
            .write(&Batch {
                bookings: vec![b],
                attempts: vec![a.clone()],
                ..Default::default()
            })
            .unwrap();
        app.store.sync().unwrap();
        a
    }

    /// What another request that settles `stale` writes (a twin of its request
    /// through another node, say): `settled` (`stale` itself or another attempt of the
    /// request) in `state`, and `reply` as the request's reply.
    fn twin_settles(
        app: &App,
        stale: &PaymentAttempt,
        settled: &str,
        state: AttemptState,
        reply: &str,
    ) {
        let mut settled = PaymentAttempt {
            id: settled.into(),
            ..stale.clone()
        };
        settled.state = state;
        app.store
            .write(&Batch {
                attempts: vec![settled],
                replies: vec![(
                    pay_key(stale),
                    crate::store::Memo(reply.as_bytes().to_vec()),
                )],
                ..Default::default()
            })
            .unwrap();
    }

    /// How many `payment_refunded` events user 1's history holds.
    fn refunded_events(app: &App) -> usize {
        let events = app.store.history(UserId(1), 1000).unwrap();
        events
            .iter()
            .filter(|e| e.kind == "payment_refunded")
            .count()
    }

    const SUCCESS: &str = r#"{"ok":{}}"#;
    const REFUNDED: &str = r#"{"err":{"code":-32011,"message":"invalid state: the charge was refunded","data":{"reason":"invalid_state"}}}"#;
    /// How a twin settles an attempt, and its answer.
    const SETTLED: [(AttemptState, &str); 2] = [
        (AttemptState::Succeeded, SUCCESS),
        (AttemptState::Refunded, REFUNDED),
    ];

    /// The attempt `id` is stored in `state`, and the reply to `stale`'s request is `reply`.
    fn assert_stands(
        app: &App,
        stale: &PaymentAttempt,
        id: &str,
        state: AttemptState,
        reply: &str,
    ) {
        let stored = app.store.attempt(id).unwrap().unwrap();
        assert_eq!(stored.state, state);
        let stored = app.store.reply(&pay_key(stale)).unwrap().unwrap();
        assert_eq!(stored, serde_json::from_str::<Value>(reply).unwrap());
    }

    /// How the pay request of `stale`, a copy of its attempt, ends when interrupted.
    async fn interrupted(
        app: &App,
        stale: &PaymentAttempt,
    ) -> Result<Answer<BookingResult>, AppError> {
        let batch = Batch {
            attempts: vec![stale.clone()],
            ..Default::default()
        };
        let err = AppError::PaymentFailed("interrupted".into());
        app.end_with_error(pay_key(stale), batch, None, None, err)
            .await
    }

    /// A twin of a continuing `booking.pay` that read the attempt still waiting for the
    /// customer, and ends with an error after the other twin settled it: with a
    /// success, or with a refund (the hold had ended). The other's answer stands, and
    /// the attempt stays settled (the copy used to be written back, reopening the
    /// attempt for good: a later cancel or settling refunded the charge again).
    #[tokio::test]
    async fn a_twin_ending_after_the_attempt_settled_does_not_reopen_it() {
        let (_dir, app) = sandbox_app().await;
        for (i, &(state, reply)) in SETTLED.iter().enumerate() {
            let mut stale = lapsed_challenge(&app, Some(format!("pi_twin{i}")));
            stale.request_id = format!("p{i}");
            twin_settles(&app, &stale, &stale.id, state, reply);
            let answered = interrupted(&app, &stale).await;
            match state {
                AttemptState::Succeeded => assert!(answered.is_ok(), "{answered:?}"),
                _ => assert!(
                    matches!(answered, Err(AppError::InvalidState(_))),
                    "{answered:?}"
                ),
            }
            assert_stands(&app, &stale, &stale.id, state, reply);
        }
    }

    /// A request whose attempt another request settled without answering it (a
    /// request the attempt no longer names among its own, say) is told how it was
    /// settled, paid or refunded, with no reply remembered: never its own error, which
    /// would tell the customer a payment failed that may have gone through. (It used
    /// to answer the error.) Not as busy either: nothing is in progress, and the
    /// reconciler would take it for a payment another process is settling.
    #[tokio::test]
    async fn a_request_left_unanswered_by_the_settling_is_told_how_it_was_settled() {
        let (_dir, app) = sandbox_app().await;
        for (i, &(state, _)) in SETTLED.iter().enumerate() {
            let stale = lapsed_challenge(&app, Some(format!("pi_unanswered{i}")));
            let mut settled = stale.clone();
            settled.state = state;
            settled.request_id = "p-other".into();
            app.store
                .write(&Batch {
                    attempts: vec![settled],
                    ..Default::default()
                })
                .unwrap();
            let answered = interrupted(&app, &stale).await;
            let told = match answered {
                Err(AppError::InvalidState(told)) => told,
                other => panic!("{i}: {other:?}"),
            };
            match state {
                AttemptState::Succeeded => {
                    assert!(told.contains("was completed"), "{told}")
                }
                _ => assert!(told.contains("the charge was refunded"), "{told}"),
            }
            assert_eq!(app.store.attempt(&stale.id).unwrap().unwrap().state, state);
            assert_eq!(app.store.reply(&pay_key(&stale)).unwrap(), None, "{i}");
        }
    }

    /// An error answer is never written over a success, the request's own included:
    /// an admin closing an orphaned charge's refund as paid elsewhere, after a twin of
    /// its pay request confirmed the booking with another attempt, wrote it over.
    #[tokio::test]
    async fn an_error_answer_skips_a_request_answered_a_success() {
        let (_dir, app) = sandbox_app().await;
        let stale = lapsed_challenge(&app, Some("pi_orphan".into()));
        let key = pay_key(&stale);
        let err = AppError::InvalidState("the charge was refunded".into());
        let mut batch = Batch::default();
        app.answer_error(&key, app.store.reply(&key).unwrap(), &mut batch, &err)
            .unwrap();
        assert_eq!(batch.replies.len(), 1, "answered while unanswered");
        twin_settles(&app, &stale, "pa-other", AttemptState::Succeeded, SUCCESS);
        let mut batch = Batch::default();
        app.answer_error(&key, app.store.reply(&key).unwrap(), &mut batch, &err)
            .unwrap();
        assert!(batch.replies.is_empty(), "{:?}", batch.replies);
    }

    /// An orphaned charge's refund made by a request whose mark lapsed meanwhile, and
    /// finished and closed by the reconciler that took it over (under the same key):
    /// the request's ending writes nothing and answers the reconciler's reply. Before,
    /// its close of the closed refund conflicted four times, and it answered
    /// `internal`. The same when the refund was reopened since (it failed at the
    /// bank): the reopened refund stays open, not closed as made by the first try.
    #[tokio::test]
    async fn a_refund_closed_by_whoever_took_over_ends_the_request_with_their_answer() {
        let (_dir, app) = sandbox_app().await;
        for reopened in [false, true] {
            let stale = lapsed_challenge(&app, Some(format!("pi_taken_over{reopened}")));
            let open = new_refund(
                stale.user_id,
                &stale.locator,
                format!("pi_taken_over{reopened}"),
                Vec::new(),
                stale.amount,
                RefundReason::Orphan {
                    attempt_id: stale.id.clone(),
                },
            );
            assert!(app.opens(orphan_opening(&open, None)).await.unwrap());
            let mut refund = open.clone();
            refund.done = true;
            let mut refunded = stale.clone();
            refunded.state = AttemptState::Refunded;
            let detail = json!({ "amount": wire::money(stale.amount) });
            let mut closed = Batch {
                events: vec![(
                    stale.user_id,
                    event("payment_refunded", Some(&stale.locator), 0, detail),
                )],
                attempts: vec![refunded.clone()],
                refunds: vec![refund.clone()],
                ..Default::default()
            };
            let ours = Batch {
                refunds_read: vec![open.clone()],
                ..closed.clone()
            };
            closed.replies.push((
                pay_key(&stale),
                crate::store::Memo(REFUNDED.as_bytes().to_vec()),
            ));
            app.store.write(&closed).unwrap();
            let mut again = open.clone();
            if reopened {
                again.failed_later.push("re_failed".into());
                again.gateway_key = Some("rf-again".into());
                app.store
                    .write(&Batch {
                        new_refunds: vec![again.clone()],
                        ..Default::default()
                    })
                    .unwrap();
            }
            let before = refunded_events(&app);

            let key = pay_key(&stale);
            let err = AppError::InvalidState("the charge was refunded".into());
            let decide = || app.error_ending(&key, &ours, None, &None, &err);
            let answer = app.write_decided(decide).await.unwrap();
            let reply = serde_json::from_str::<Value>(REFUNDED).unwrap();
            assert_eq!(answer, Some(reply), "{reopened}");
            assert_eq!(refunded_events(&app), before, "{reopened}");
            // a reissue is open under the refund that failed
            let still_open = app.store.open_refund(again.subject()).unwrap();
            assert_eq!(still_open, reopened.then_some(again), "{reopened}");
        }
    }

    /// Another request closing the attempt alone (say, as failed) between a twin's
    /// decision and its write: the write conflicts too.
    #[tokio::test]
    async fn an_attempt_closed_between_a_twins_check_and_its_write_is_not_written_over() {
        let (_dir, app) = sandbox_app().await;
        let stale = lapsed_challenge(&app, Some("pi_closed".into()));
        let batch = Batch {
            attempts: vec![stale.clone()],
            ..Default::default()
        };
        let err = AppError::PaymentFailed("interrupted".into());
        let (write, _) = app
            .error_ending(&pay_key(&stale), &batch, None, &None, &err)
            .unwrap();
        let mut closed = stale.clone();
        closed.state = AttemptState::Failed;
        app.store
            .write(&Batch {
                attempts: vec![closed],
                ..Default::default()
            })
            .unwrap();
        let written = app.commit(write.unwrap()).await;
        assert!(matches!(written, Err(StoreError::Conflict)), "{written:?}");
    }

    /// A continuing `booking.pay` that found the attempt still waiting for the
    /// customer, when a twin of its request settles it before its write: the write
    /// conflicts (the pay answers "in progress"), and the attempt stays settled with
    /// the twin's answer. Before, the copy was written over it, and the attempt waited
    /// for the customer again beside a confirmed booking.
    #[tokio::test]
    async fn a_twin_settling_before_a_continuing_pay_writes_is_not_reopened() {
        let (_dir, app) = sandbox_app().await;
        for (i, &(state, reply)) in SETTLED.iter().enumerate() {
            let stale = lapsed_challenge(&app, Some(format!("pi_cont{i}")));
            let fresh = app.store.attempt(&stale.id).unwrap().unwrap();
            let (continued, batch) = continuing(fresh, "p2");
            assert_eq!(continued.earlier_requests, ["p1"]);
            twin_settles(&app, &stale, &stale.id, state, reply);
            let written = app.write_soon(batch).await;
            assert!(matches!(written, Err(StoreError::Conflict)), "{written:?}");
            assert_stands(&app, &stale, &stale.id, state, reply);
            let stored = app.store.attempt(&stale.id).unwrap().unwrap();
            assert_eq!(stored.request_id, "p1", "{i}: not continued");
        }
    }

    /// The same twin, when the other request's success is written after it decided
    /// and before its own write: the success of the same attempt or of another one
    /// (two twins of a first pay each start one), and the ending writing the attempt
    /// back or leaving it open and unwritten. That write conflicts (before, the error
    /// replaced the success, and the attempt was open again), and the ending is decided
    /// again and answers the success.
    #[tokio::test]
    async fn a_success_between_a_twins_check_and_its_write_stands() {
        let (_dir, app) = sandbox_app().await;
        let err = AppError::PaymentFailed("interrupted".into());
        let mut case = 0;
        for same_attempt in [true, false] {
            for written_back in [true, false] {
                // a fresh waiting attempt of a request of its own, how the twin ends
                // it, and which attempt the other request settles
                let mut fresh = || {
                    case += 1;
                    let mut stale = lapsed_challenge(&app, Some(format!("pi_twin{case}")));
                    stale.request_id = format!("p{case}");
                    app.store
                        .write(&Batch {
                            attempts: vec![stale.clone()],
                            ..Default::default()
                        })
                        .unwrap();
                    let (batch, open) = match written_back {
                        true => (
                            Batch {
                                attempts: vec![stale.clone()],
                                ..Default::default()
                            },
                            None,
                        ),
                        false => (Batch::default(), Some(stale.id.clone())),
                    };
                    let settled = match same_attempt {
                        true => stale.id.clone(),
                        false => format!("pa-other{case}"),
                    };
                    (case, stale, batch, open, settled)
                };

                let (case, stale, batch, open, settled) = fresh();
                let key = pay_key(&stale);
                let (write, answer) = app
                    .error_ending(&key, &batch, open.as_deref(), &None, &err)
                    .unwrap();
                assert!(answer.is_none(), "{case}: not settled yet");
                twin_settles(&app, &stale, &settled, AttemptState::Succeeded, SUCCESS);
                let written = app.commit(write.unwrap()).await;
                assert!(
                    matches!(written, Err(StoreError::Conflict)),
                    "{case}: {written:?}"
                );
                assert_stands(&app, &stale, &settled, AttemptState::Succeeded, SUCCESS);
                let waiting = app.store.attempt(&stale.id).unwrap().unwrap();
                assert_eq!(
                    waiting.state == AttemptState::Succeeded,
                    same_attempt,
                    "{case}"
                );

                // the ending decided again: the success is the answer
                let (case, stale, batch, open, settled) = fresh();
                let key = pay_key(&stale);
                let first = std::cell::Cell::new(true);
                let decide = || {
                    let decided = app.error_ending(&key, &batch, open.as_deref(), &None, &err);
                    if first.replace(false) {
                        assert!(decided.as_ref().unwrap().1.is_none(), "{case}");
                        twin_settles(&app, &stale, &settled, AttemptState::Succeeded, SUCCESS);
                    }
                    decided
                };
                let answer = app.write_decided(decide).await.unwrap();
                assert_eq!(
                    answer,
                    Some(serde_json::from_str::<Value>(SUCCESS).unwrap()),
                    "{case}"
                );
                assert_stands(&app, &stale, &settled, AttemptState::Succeeded, SUCCESS);
            }
        }
    }

    /// An app paying through the fake Stripe `f`, and a copy of a waiting attempt
    /// (see [`lapsed_challenge`]) read before the reconciler refunded its charge (the
    /// customer completed 3-D Secure after the hold ended), and the amount charged.
    async fn refunded_challenge(
        f: &fake_stripe::FakeStripe,
        dir: &std::path::Path,
    ) -> (Arc<App>, PaymentAttempt, Money) {
        let stripe = Stripe::new(&f.base(), "sk_test_jetway".into(), Duration::from_secs(5));
        let (_store, app) = app_with(dir, Arc::new(stripe.unwrap())).await;
        let amount = Money::cents(10_000).unwrap();
        let stale = charged_challenge(&app, "pa-charged").await;
        app.reconcile_payments(Duration::ZERO).await;
        assert_refunded_once(f, &app, &stale, amount);
        (app, stale, amount)
    }

    /// `stale`'s attempt is stored refunded, with no refund left open, and the fake
    /// Stripe `f` refunded `amount` with one call.
    fn assert_refunded_once(
        f: &fake_stripe::FakeStripe,
        app: &App,
        stale: &PaymentAttempt,
        amount: Money,
    ) {
        let stored = app.store.attempt(&stale.id).unwrap().unwrap();
        assert_eq!(stored.state, AttemptState::Refunded);
        assert!(app.store.open_refunds().unwrap().is_empty());
        let l = f.ledger();
        assert_eq!(l.refunded(), amount.amount(), "{l:?}");
        assert_eq!(f.received(fake_stripe::Step::Refund), 1, "{l:?}");
    }

    /// A copy of a waiting attempt read before the reconciler refunded its charge (the
    /// customer completed 3-D Secure after the hold ended), reconciled afterwards as
    /// the cancel task after a hold's release does: the attempt is read again under
    /// the booking's mark and left alone, not refunded a second time (a second refund
    /// record the gateway would refuse forever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_copy_of_a_refunded_attempt_is_not_refunded_again() {
        let f = fake_stripe::FakeStripe::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (app, stale, amount) = refunded_challenge(&f, dir.path()).await;

        assert!(app.try_reconcile(stale.clone()).await, "settled already");
        assert_refunded_once(&f, &app, &stale, amount);
        let events = app.store.history(stale.user_id, 100).unwrap();
        let refunds = events.iter().filter(|e| e.kind == "payment_refunded");
        assert_eq!(refunds.count(), 1, "{events:?}");
        app.stop().await;
    }

    /// A charge settled while the booking is decided on through another node: the
    /// refund of the charge opens only over the attempt as the decision read it, so
    /// not once a twin confirmed the booking with it; and the booking is confirmed
    /// with it only while no refund of it is open, or was made meanwhile. Before, both
    /// were written, leaving a confirmed booking whose charge was refunded.
    #[tokio::test]
    async fn a_charge_is_either_kept_or_refunded_never_both() {
        let (_dir, app) = sandbox_app().await;
        for case in 0..3 {
            let stale = lapsed_challenge(&app, Some(format!("pi_both{case}")));
            let read = app.store.attempt(&stale.id).unwrap();
            let refund = new_refund(
                stale.user_id,
                &stale.locator,
                format!("pi_both{case}"),
                Vec::new(),
                stale.amount,
                RefundReason::Orphan {
                    attempt_id: stale.id.clone(),
                },
            );
            let mut kept = stale.clone();
            kept.state = AttemptState::Succeeded;
            if case == 0 {
                twin_settles(&app, &stale, &stale.id, AttemptState::Succeeded, SUCCESS);
                let opened = app.opens(orphan_opening(&refund, read)).await.unwrap();
                assert!(!opened, "opened over a kept charge");
                assert_eq!(app.store.open_refund(&stale.id).unwrap(), None);
                continue;
            }
            assert!(app.opens(orphan_opening(&refund, None)).await.unwrap());
            if case == 2 {
                let mut refunded = stale.clone();
                refunded.state = AttemptState::Refunded;
                let mut done = refund.clone();
                done.done = true;
                app.store
                    .write(&Batch {
                        attempts: vec![refunded],
                        refunds: vec![done],
                        ..Default::default()
                    })
                    .unwrap();
                assert_eq!(app.store.open_refund(&stale.id).unwrap(), None);
            }
            let written = app.commit(keeping_charge(kept, read)).await;
            assert!(
                matches!(written, Err(StoreError::Conflict)),
                "{case}: {written:?}"
            );
            assert_ne!(
                app.store.attempt(&stale.id).unwrap().unwrap().state,
                AttemptState::Succeeded,
                "{case}"
            );
        }
    }

    /// The same, when whoever settled the attempt did not answer the request: it is
    /// told how the payment ended, and no refund is made (before, a kept charge was
    /// refunded, or a refunded one refunded again under a new key).
    #[tokio::test]
    async fn a_charge_settled_unanswered_before_its_settling_is_told_how() {
        let (_dir, app) = sandbox_app().await;
        for (i, &(state, _)) in SETTLED.iter().enumerate() {
            let stale = charged_challenge(&app, &format!("pa-told{i}")).await;
            let mut settled = stale.clone();
            settled.state = state;
            app.store
                .write(&Batch {
                    attempts: vec![settled],
                    ..Default::default()
                })
                .unwrap();
            let before = refunded_events(&app);
            let b = app.store.booking(&stale.locator).unwrap().unwrap();
            let fs = app.flight_seats(&b.flight_id).unwrap();
            let busy = Busy::mark(&fs, &mut fs.working(), &stale.locator).unwrap();
            let answered = app.settle_charged(&fs, stale.clone(), &busy).await;
            let told = match answered {
                Err(AppError::InvalidState(told)) => told,
                other => panic!("{i}: {:?}", other.map(|_| ())),
            };
            let how = settled_elsewhere(state == AttemptState::Succeeded);
            assert!(
                matches!(&how, AppError::InvalidState(m) if *m == told),
                "{i}: {told}"
            );
            assert!(app.store.open_refunds().unwrap().is_empty(), "{i}");
            assert_eq!(refunded_events(&app), before, "{i}");
            assert_eq!(app.store.attempt(&stale.id).unwrap().unwrap().state, state);
        }
    }

    /// The sandbox, whose refunds are answered only once `answer` has a permit for
    /// each; `asked` counts the refunds asked for.
    struct HeldRefunds {
        inner: Sandbox,
        asked: std::sync::atomic::AtomicUsize,
        answer: tokio::sync::Semaphore,
    }

    impl PaymentGateway for HeldRefunds {
        fn create(
            &self,
            req: crate::payments::PaymentRequest,
        ) -> futures::future::BoxFuture<'_, Result<String, PaymentError>> {
            self.inner.create(req)
        }
        fn confirm<'a>(
            &'a self,
            payment_ref: &'a str,
            attempt_id: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<(), PaymentError>> {
            self.inner.confirm(payment_ref, attempt_id)
        }
        fn status<'a>(
            &'a self,
            payment_ref: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::payments::PaymentStatus, PaymentError>>
        {
            self.inner.status(payment_ref)
        }
        fn cancel<'a>(
            &'a self,
            payment_ref: &'a str,
            key: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::payments::PaymentStatus, PaymentError>>
        {
            self.inner.cancel(payment_ref, key)
        }
        fn refund(
            &self,
            req: crate::payments::RefundRequest,
        ) -> futures::future::BoxFuture<'_, Result<crate::payments::MadeRefund, PaymentError>>
        {
            Box::pin(async move {
                self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let permit = self.answer.acquire().await;
                permit
                    .map_err(|e| PaymentError::Failed(e.to_string()))?
                    .forget();
                self.inner.refund(req).await
            })
        }
        fn name(&self) -> &'static str {
            "held-refunds"
        }
    }

    /// The refund of an orphaned charge made while its record changed through another
    /// node (there, after this request's mark lapsed, an admin's retry gave it a fresh
    /// key, under which a third node may make it) is not closed over the change: the
    /// fresh key would be lost with what was made under it, and a later reopening could
    /// pay twice. The refund stays open as changed, the attempt unsettled, nothing is
    /// written, and the request answers `payment_failed`, unless a twin of it answered
    /// a success meanwhile: that answer stands. The next try looks up what each key
    /// made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orphan_refund_made_while_its_record_changed_is_not_closed_over_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Arc::new(HeldRefunds {
            inner: Sandbox::default(),
            asked: Default::default(),
            answer: tokio::sync::Semaphore::new(0),
        });
        let (_store, app) = app_with(dir.path(), gateway.clone()).await;
        for (i, twin_paid) in [false, true].into_iter().enumerate() {
            let mut stale = charged_challenge(&app, &format!("pa-changed{i}")).await;
            stale.request_id = format!("p{i}");
            let events = refunded_events(&app);
            let settling = {
                let (app, stale) = (app.clone(), stale.clone());
                tokio::spawn(async move {
                    let b = app.store.booking(&stale.locator).unwrap().unwrap();
                    let fs = app.flight_seats(&b.flight_id).unwrap();
                    let busy = Busy::mark(&fs, &mut fs.working(), &stale.locator).unwrap();
                    app.settle_charged(&fs, stale, &busy).await.map(|_| ())
                })
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while gateway.asked.load(std::sync::atomic::Ordering::SeqCst) == i {
                assert!(std::time::Instant::now() < deadline, "no refund asked");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let read = app.store.open_refund(&stale.id).unwrap().expect("open");
            let mut changed = read.clone();
            changed.previous_keys.push(read.key().to_owned());
            changed.gateway_key = Some(format!("rf-fresh{i}"));
            app.store
                .write(&Batch {
                    refunds: vec![changed.clone()],
                    refunds_read: vec![read],
                    ..Default::default()
                })
                .unwrap();
            if twin_paid {
                twin_settles(&app, &stale, "pa-twin", AttemptState::Succeeded, SUCCESS);
            }
            let reply = app.store.reply(&pay_key(&stale)).unwrap();
            gateway.answer.add_permits(1);
            let settled = settling.await.unwrap();
            match twin_paid {
                true => assert!(settled.is_ok(), "{settled:?}"),
                false => assert!(
                    matches!(&settled, Err(AppError::PaymentFailed(m)) if m.contains("changed")),
                    "{settled:?}"
                ),
            }
            assert_eq!(app.store.open_refund(&stale.id).unwrap(), Some(changed));
            let attempt = app.store.attempt(&stale.id).unwrap().unwrap();
            assert_ne!(attempt.state, AttemptState::Refunded);
            let after = app.store.reply(&pay_key(&stale)).unwrap();
            assert_eq!((refunded_events(&app), after), (events, reply));
        }
        app.stop().await;
    }

    /// A copy of a charged attempt settled with a caller's copy read before the
    /// reconciler refunded its charge: the decision reads the attempt again and
    /// leaves it, answering how it ended, rather than opening a second refund.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_charge_refunded_before_its_settling_is_not_refunded_again() {
        let f = fake_stripe::FakeStripe::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (app, stale, amount) = refunded_challenge(&f, dir.path()).await;
        let b = app.store.booking(&stale.locator).unwrap().unwrap();
        let fs = app.flight_seats(&b.flight_id).unwrap();
        let busy = Busy::mark(&fs, &mut fs.working(), &stale.locator).unwrap();
        let settled = app.settle_charged(&fs, stale.clone(), &busy).await;
        // the reconciler's answer to the request
        let stored = app.store.reply(&pay_key(&stale)).unwrap().unwrap();
        let stored = stored["err"]["message"].as_str().unwrap();
        match settled {
            Err(AppError::InvalidState(told)) => assert!(stored.ends_with(&told), "{told}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_refunded_once(&f, &app, &stale, amount);
        drop(busy);
        app.stop().await;
    }

    /// A `booking.pay` continuing a payment that waited for its customer, with a copy
    /// of the attempt read before its charge was refunded (on a cluster: read through
    /// one node while another settled it): the attempt is read again under the mark, so
    /// the settling is neither undone nor repeated (no second refund), and the request
    /// is told the charge was refunded (before, "in progress", though nothing was).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_continued_payment_read_before_it_was_refunded_is_not_refunded_again() {
        let f = fake_stripe::FakeStripe::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (app, stale, amount) = refunded_challenge(&f, dir.path()).await;
        let attempt = || app.store.attempt(&stale.id).unwrap().unwrap();

        let b = app.store.booking(&stale.locator).unwrap().unwrap();
        let fs = app.flight_seats(&b.flight_id).unwrap();
        let busy = Busy::mark(&fs, &mut fs.working(), &stale.locator).unwrap();
        let key = IdemKey {
            user: stale.user_id,
            method: PAY,
            request_id: "p2".into(),
        };
        let continued = app
            .continue_action(&fs, key, stale.clone(), "pm_card_visa", busy)
            .await;
        match continued {
            Err(AppError::InvalidState(told)) => {
                assert!(told.contains("the charge was refunded"), "{told}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_refunded_once(&f, &app, &stale, amount);
        assert_eq!(attempt().request_id, stale.request_id);
        app.stop().await;
    }

    /// A payment waiting for its customer, asked about long after its last step while
    /// its booking cannot be read: the due hold waits for it as if the hold ended now
    /// (the gateway is asked), rather than going without asking.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_payment_whose_booking_cannot_be_read_is_settled_before_the_hold_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, app) = app_with(dir.path(), Arc::new(Sandbox::default())).await;
        let a = lapsed_challenge(&app, Some("pi_waiting".into()));
        let now = domain::now_ms();
        assert!(
            !app.settles_before_hold_ends(&a, now),
            "readable: a day past the hold's end, the hold goes without asking"
        );
        // where sled keeps the booking (checked below: its read fails)
        let booking_key = format!("B{}", a.locator.as_str()).into_bytes();
        store
            .apply_raw(&[(booking_key, Some(b"not json".to_vec()))])
            .unwrap();
        assert!(app.store.booking(&a.locator).is_err());
        assert!(app.settle_deadline(&a) > now);
        assert!(app.settles_before_hold_ends(&a, now));
        app.stop().await;
    }
}
