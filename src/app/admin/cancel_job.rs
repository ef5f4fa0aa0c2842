//! The cancellation of a flight (`admin.flights.cancel`), a durable job in two
//! stages. First the flight's cancelled state is written and made durable; from then
//! on nobody can hold or change seats on it. Then every booking that still occupies
//! seats is processed one by one, each as one version of the flight: a hold is
//! released; a confirmed booking is marked busy, refunded in full through the gateway
//! (a refund record with its own unique key, durable before the call: see
//! `refunds`), and only then are its `refunded` status and the order's refund written
//! in one batch.
//!
//! A crash anywhere leaves a cancelled flight with some bookings still occupying seats;
//! [`App::resume_cancellations`] finishes those at the next start, and with every
//! reconciliation round (on a cluster, any node takes over). A gateway refund made
//! just before a crash is asked for again with its stored key, so it is never paid twice.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::{cancel_reason, occupants};
use crate::app::busy::{is_busy, Busy};
use crate::app::AppError;
use crate::app::{flight_view, App, AuthSession, Step};
use crate::domain::{self, BookingStatus, FlightId, Locator, Money, SeatId};
use crate::inventory::FlightSeats;
use crate::protocol::params::CancelFlight;
use crate::protocol::results::FlightCancelled;
use crate::store::{Batch, RefundReason, RefundRecord};

/// How long to wait before looking again at a booking with a payment in flight.
const BUSY_RETRY: Duration = Duration::from_millis(50);
/// Gateway refund retries back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A flight's cancellation job on this node, marked in `AdminState::cancelling` for
/// as long as this lives, however it ends (a panic included: the mark used to stay,
/// and reconciliation rounds then never resumed the flight's refunds), so that
/// they do not start a second job meanwhile.
struct JobMark {
    app: Arc<App>,
    flight: FlightId,
}

impl JobMark {
    /// None if the flight has a job here already.
    fn take(app: &Arc<App>, flight: &FlightId) -> Option<JobMark> {
        app.admin
            .cancelling
            .lock()
            .insert(flight.clone())
            .then(|| JobMark {
                app: app.clone(),
                flight: flight.clone(),
            })
    }
}

impl Drop for JobMark {
    fn drop(&mut self) {
        self.app.admin.cancelling.lock().remove(&self.flight);
    }
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

impl App {
    /// `admin.flights.cancel`: makes the flight's cancelled state durable, then
    /// refunds and releases every booking (see the module docs) and waits for that.
    pub async fn admin_cancel_flight(
        self: &Arc<Self>,
        _s: &AuthSession,
        p: CancelFlight,
    ) -> Result<FlightCancelled, AppError> {
        let reason = cancel_reason(&p.reason)?;
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        let job = {
            let _serial = self.flights_turn().await;
            // marked as this node's job before the record can show it cancelled: a
            // reconciliation round in between would start a second job, and this
            // reply would count only the bookings its own job got to
            let mark = JobMark::take(self, &fs.id);
            let written = self.commit_flight(&fs, |flight| {
                flight.cancel(reason.clone(), domain::now_ms())?;
                // no hold, seat change or payment may start while this becomes durable
                fs.set_closing(true);
                Ok(())
            });
            match written.await {
                Ok(flight) => self.flight_record(&fs, flight),
                Err(e) => {
                    fs.set_closing(false);
                    return Err(e);
                }
            }
            // a job here means the flight was cancelled already, which the write refused
            let Some(mark) = mark else {
                return Err(AppError::Internal);
            };
            tracing::info!(flight = %fs.id, "flight cancelled; refunding and releasing its bookings");
            self.spawn_cancel_job(fs.clone(), mark)
        };
        let (refunded, released) = job.await?;
        // the admin's connection, if it watches the flight, has every push before this
        self.committer.settle_reads().await?;
        Ok(FlightCancelled {
            flight: flight_view(fs.flight(), &fs),
            refunded,
            released,
        })
    }

    /// Finishes, in the background, the cancellation of every cancelled flight that
    /// still has bookings occupying seats and no job on this node (a crash, here or
    /// on another node of a cluster, interrupted it). Called at start, once the seat
    /// maps are loaded, and then with every reconciliation round.
    pub(in crate::app) fn resume_cancellations(self: &Arc<Self>) {
        for fs in self.inventory.all() {
            if fs.flight().cancelled.is_none() || occupants(&fs).is_empty() {
                continue;
            }
            // none: a job of this node has it
            if let Some(mark) = JobMark::take(self, &fs.id) {
                tracing::info!(flight = %fs.id, "resuming an interrupted flight cancellation");
                let stop = self.stop.clone();
                let job = self.spawn_cancel_job(fs, mark);
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
    /// `mark`: the job's mark, which it holds until it ends.
    fn spawn_cancel_job(
        self: &Arc<Self>,
        fs: Arc<FlightSeats>,
        mark: JobMark,
    ) -> impl std::future::Future<Output = Result<(u32, u32), AppError>> {
        let app = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let r = app.finish_cancel(&fs).await;
            drop(mark);
            let _ = tx.send(r);
        });
        {
            // App::stop waits for the job (which stops at its next step)
            let mut bg = self.background.lock();
            bg.retain(|t| !t.is_finished());
            bg.push(task);
        }
        async move { rx.await.unwrap_or(Err(AppError::Internal)) }
    }

    /// Waits for `fut` unless the server is stopping (then `internal`; the job
    /// resumes at the next start).
    async fn unless_stopping<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, AppError> {
        tokio::select! {
            v = fut => Ok(v),
            _ = self.stop.cancelled() => Err(AppError::Internal),
        }
    }

    /// Refunds and releases every booking that occupies a seat on a cancelled flight;
    /// returns how many were refunded and released.
    async fn finish_cancel(
        self: &Arc<Self>,
        fs: &Arc<FlightSeats>,
    ) -> Result<(u32, u32), AppError> {
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

    /// The refund of everything still on confirmed booking `b`, in full: the airline
    /// cancelled its flight.
    fn full_refund(&self, b: &domain::Booking) -> Result<RefundRecord, AppError> {
        let order_id = b.order_id.clone().ok_or(AppError::Internal)?;
        let order = self.store.order(&order_id)?.ok_or(AppError::Internal)?;
        let left =
            Money::cents(order.amount.amount() - order.refunded.amount()).unwrap_or_default();
        // (a booking's fares never sum above its stored total, which reads back)
        let amount = Money::sum(b.seats.iter().map(|s| s.fare))
            .unwrap_or(left)
            .min(left);
        let seats: Vec<SeatId> = b.seats.iter().map(|s| s.seat).collect();
        self.seat_refund(b, &order, seats, amount, RefundReason::FlightCancelled)
    }

    /// One booking of a cancelled flight: a hold is released, a confirmed booking is
    /// refunded in full. Each is one version of the flight.
    async fn cancel_booking(
        self: &Arc<Self>,
        fs: &Arc<FlightSeats>,
        loc: &Locator,
    ) -> Result<Outcome, AppError> {
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
                return Ok((None, Ok((Busy::mark(fs, w, loc)?, open))));
            }
            if b.status == BookingStatus::Held {
                b.release(now)?;
                let detail = json!({ "by": "airline", "reason": reason });
                let ticket = self.end_hold(fs, w, &b, "cancelled", detail, None)?;
                return Ok((Some(ticket), Err(Outcome::Released)));
            }
            if w.busy.contains(loc) {
                return Ok((None, Err(Outcome::Busy)));
            }
            // opened only on the flight's version read: a refund of the booking
            // recorded in between (this job through another node, or a passenger's
            // cancel) fails it, and the booking is looked at again
            let refund = self.full_refund(&b)?;
            let mut open = Batch {
                new_refunds: vec![refund.clone()],
                ..Default::default()
            };
            let expect = self.decided_on(fs, w, &mut open);
            let ticket = self.committer.submit(open, expect, || None)?;
            // marked only now: a guard dropped on an error above would lock the
            // working map this closure holds
            Ok((Some(ticket), Ok((Busy::mark(fs, w, loc)?, refund))))
        });
        // a hold is released at once; a confirmed booking is refunded first
        let (mark, refund) = match self.unless_stopping(step).await?? {
            Step::Done(Ok(refund)) => refund,
            Step::Done(Err(outcome)) => {
                if matches!(outcome, Outcome::Released) {
                    self.cancel_waiting(loc);
                }
                return Ok(outcome);
            }
            Step::Replayed(_) => return Err(AppError::Internal),
        };
        // an open refund of the booking is finished first (this job's own, opened in
        // the step or before a crash, or a passenger's: then the booking is looked at
        // again)
        let again = refund.reason != RefundReason::FlightCancelled;
        match self
            .unless_stopping(self.finish_seat_refund(fs, refund, mark))
            .await?
        {
            Ok(_) if again => Ok(Outcome::Busy),
            Ok(_) => Ok(Outcome::Refunded),
            Err(e) if is_busy(&e) => Ok(Outcome::Busy),
            Err(e) => Ok(Outcome::Failed(e.to_string())),
        }
    }
}
