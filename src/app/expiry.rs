//! Hold expiry: a timer queue of held bookings, and the use case that releases a
//! hold once it falls due (also for holds that fell due while the server was down).

use parking_lot::Mutex;
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

use super::{App, AppError, Step};
use crate::domain::{self, BookingStatus, FlightId, Locator, Millis};
use crate::inventory::FlightSeats;
use crate::store::{AttemptState, PaymentAttempt};

/// How long to wait before retrying a hold whose payment is in flight.
const BUSY_RETRY_MS: Millis = 500;
/// How long to wait before retrying a hold whose charged payment could not be settled.
const SETTLE_RETRY_MS: Millis = 5_000;
/// At most this many due holds settle their payments with the gateway at once.
const SETTLING_MAX: usize = 16;

/// At most this many released holds' waiting payments are cancelled at once.
const CANCELLING_MAX: usize = 4;

/// The timer queue of held bookings.
pub struct Expiry {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Due holds whose payments are being settled with the gateway, each on a task
    /// of its own: one task per booking at a time.
    settling: Mutex<HashSet<Locator>>,
    /// Bounds how many of those tasks call the gateway at once.
    settle_slots: Semaphore,
    /// Bounds how many released holds' waiting payments are cancelled at once.
    cancel_slots: Semaphore,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            queue: Mutex::default(),
            wake: Notify::new(),
            settling: Mutex::default(),
            settle_slots: Semaphore::new(SETTLING_MAX),
            cancel_slots: Semaphore::new(CANCELLING_MAX),
        }
    }
}

/// The holds to look at, by due time, with one entry per booking.
#[derive(Default)]
struct Queue {
    due: BTreeSet<(Millis, FlightId, Locator)>,
    /// Each booking's entry in `due`, so that a paid or released hold leaves at once.
    entry: HashMap<Locator, (Millis, FlightId)>,
}

impl Expiry {
    /// Looks at the booking at `at` (or earlier, if it is already due earlier).
    pub fn schedule(&self, at: Millis, flight: &FlightId, locator: &Locator) {
        let earliest = {
            let mut q = self.queue.lock();
            if let Some((t, f)) = q.entry.get(locator).cloned() {
                if t <= at {
                    return;
                }
                q.due.remove(&(t, f, locator.clone()));
            }
            q.entry.insert(locator.clone(), (at, flight.clone()));
            q.due.insert((at, flight.clone(), locator.clone()));
            q.due
                .first()
                .is_some_and(|(t, _, l)| *t == at && l == locator)
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Drops the booking's entry: it is no longer held.
    pub fn forget(&self, locator: &Locator) {
        let mut q = self.queue.lock();
        if let Some((t, f)) = q.entry.remove(locator) {
            q.due.remove(&(t, f, locator.clone()));
        }
    }

    fn take_due(&self, now: Millis) -> Vec<(FlightId, Locator)> {
        let mut q = self.queue.lock();
        let mut out = Vec::new();
        while q.due.first().is_some_and(|(t, _, _)| *t <= now) {
            if let Some((_, f, l)) = q.due.pop_first() {
                q.entry.remove(&l);
                out.push((f, l));
            }
        }
        out
    }

    fn next_due(&self) -> Option<Millis> {
        self.queue.lock().due.first().map(|(t, _, _)| *t)
    }

    pub fn pending(&self) -> usize {
        self.queue.lock().due.len()
    }

    /// Whether a task settles the due hold's payments with the gateway right now.
    pub(super) fn is_settling(&self, locator: &Locator) -> bool {
        self.settling.lock().contains(locator)
    }
}

/// A due hold's place in [`Expiry::settling`], left when dropped, also by a task
/// that panicked: a hold whose task did not finish is looked at again shortly
/// rather than never.
struct Settling {
    app: Arc<App>,
    flight: FlightId,
    locator: Locator,
    finished: bool,
}

impl Settling {
    /// Takes the hold's place; `None` if a task has it already.
    fn enter(app: &Arc<App>, flight: &FlightId, locator: &Locator) -> Option<Settling> {
        app.expiry
            .settling
            .lock()
            .insert(locator.clone())
            .then(|| Settling {
                app: app.clone(),
                flight: flight.clone(),
                locator: locator.clone(),
                finished: false,
            })
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        let expiry = &self.app.expiry;
        expiry.settling.lock().remove(&self.locator);
        if !self.finished {
            expiry.schedule(
                domain::now_ms() + SETTLE_RETRY_MS,
                &self.flight,
                &self.locator,
            );
        }
    }
}

/// The expiry loop: sleeps until the earliest hold is due (or a new earlier one is
/// scheduled), then expires everything due.
pub async fn run(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    while !stop.is_cancelled() {
        let wait = app
            .expiry
            .next_due()
            .map(|t| Duration::from_millis((t - domain::now_ms()).clamp(0, 60_000) as u64));
        match wait {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = app.expiry.wake.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
            None => tokio::select! {
                _ = app.expiry.wake.notified() => {}
                _ = stop.cancelled() => return,
            },
        }
        app.expire_due().await;
    }
}

impl App {
    /// Expires every hold that is due now and waits until that is durable; `false`
    /// if none was due. A hold whose payment must be settled with the gateway first
    /// is expired by a task of its own, so that a slow gateway delays no other hold.
    pub async fn expire_due(self: &Arc<Self>) -> bool {
        let due = self.expiry.take_due(domain::now_ms());
        if due.is_empty() {
            return false;
        }
        let results = futures::future::join_all(
            due.iter()
                .map(|(flight, locator)| self.expire_one(flight, locator)),
        )
        .await;
        for ((flight, locator), r) in due.iter().zip(results) {
            if let Err(e) = r {
                self.expire_failed(flight, locator, e);
            }
        }
        if let Err(e) = self.committer.barrier().await {
            tracing::error!(error = %e, "expiry not durable");
        }
        true
    }

    fn expire_failed(&self, flight: &FlightId, locator: &Locator, e: AppError) {
        tracing::error!(%locator, error = %e, "expiring a hold failed; retrying soon");
        self.expiry
            .schedule(domain::now_ms() + BUSY_RETRY_MS, flight, locator);
    }

    /// Expires one hold if it is still held and due. On a cluster every node may try
    /// the same hold: the first to commit wins, the others find it expired. A charge
    /// whose payer died before recording it, or a payment its customer completed as
    /// the hold ended, is settled first (on a task of its own), so that it confirms
    /// the booking rather than being refunded after the seats are gone. The wait is
    /// bounded: past an attempt's [`App::settle_deadline`] the gateway is not asked,
    /// the hold goes as before, and the reconciler refunds a charge it finds later (a
    /// payment still waiting for its customer is cancelled right after the release).
    async fn expire_one(
        self: &Arc<Self>,
        flight: &FlightId,
        locator: &Locator,
    ) -> Result<(), super::AppError> {
        let Some(fs) = self.inventory.get(flight.as_str()) else {
            return Ok(());
        };
        let Some(deadline) = self.settle_first(locator)? else {
            return self.release_hold(&fs, flight, locator).await;
        };
        let Some(settling) = Settling::enter(self, flight, locator) else {
            // its task is at it; looked at again later in case that task's own retry
            // was the entry just taken from the queue
            self.expiry
                .schedule(domain::now_ms() + SETTLE_RETRY_MS, flight, locator);
            return Ok(());
        };
        let (app, flight, locator) = (self.clone(), flight.clone(), locator.clone());
        self.tasks.spawn(async move {
            let mut settling = settling;
            tokio::select! {
                biased;
                // the next start settles it
                _ = app.stop.cancelled() => {}
                r = app.settle_then_expire(&fs, &flight, &locator, deadline) => {
                    if let Err(e) = r {
                        app.expire_failed(&flight, &locator, e);
                    }
                }
            }
            settling.finished = true;
        });
        Ok(())
    }

    /// Until when the due hold `locator` waits for its payments to settle with the
    /// gateway; `None` if it need not wait.
    fn settle_first(&self, locator: &Locator) -> Result<Option<Millis>, AppError> {
        let now = domain::now_ms();
        Ok(self
            .store
            .booking_attempts(locator)?
            .iter()
            .filter(|a| self.settles_before_hold_ends(a, now))
            .map(|a| self.settle_deadline(a))
            .max())
    }

    /// Settles a due hold's payments with the gateway, then expires it, unless one
    /// of them cannot be settled yet: then the hold is looked at again shortly. A hold
    /// still waiting for its turn at `deadline` (the gateway slow for many holds) goes
    /// without asking.
    async fn settle_then_expire(
        self: &Arc<Self>,
        fs: &Arc<FlightSeats>,
        flight: &FlightId,
        locator: &Locator,
        deadline: Millis,
    ) -> Result<(), AppError> {
        let left = Duration::from_millis(deadline.saturating_sub(domain::now_ms()).max(0) as u64);
        let slot = tokio::select! {
            slot = self.expiry.settle_slots.acquire() => slot.ok(),
            _ = tokio::time::sleep(left) => None,
        };
        if let Some(_slot) = slot {
            // read again: a `booking.pay` may have settled some meanwhile
            let now = domain::now_ms();
            for a in self.store.booking_attempts(locator)? {
                if !self.settles_before_hold_ends(&a, now) {
                    continue;
                }
                let until = self.settle_deadline(&a);
                if !self.try_reconcile(a).await && domain::now_ms() < until {
                    let retry = (domain::now_ms() + SETTLE_RETRY_MS).min(until);
                    self.expiry.schedule(retry, flight, locator);
                    return Ok(());
                }
            }
        }
        self.release_hold(fs, flight, locator).await
    }

    /// Releases a hold if it is still held and due (and no payment of it is in flight),
    /// then cancels the payments of it still waiting for their customer.
    async fn release_hold(
        self: &Arc<Self>,
        fs: &Arc<FlightSeats>,
        flight: &FlightId,
        locator: &Locator,
    ) -> Result<(), AppError> {
        let released = self
            .seat_step(fs, None, |w| {
                let now = domain::now_ms();
                let Some(mut b) = self.store.booking(locator)? else {
                    return Ok((None, false));
                };
                if b.status != BookingStatus::Held {
                    return Ok((None, false));
                }
                if self.paying(w, locator, &|_| false)? {
                    self.expiry.schedule(now + BUSY_RETRY_MS, flight, locator);
                    return Ok((None, false));
                }
                if !b.is_expired(now) {
                    if let Some(t) = b.hold_expires_at {
                        self.expiry.schedule(t, flight, locator);
                    }
                    return Ok((None, false));
                }
                b.expire(now)?;
                Ok((
                    Some(self.end_hold(fs, w, &b, "expired", json!({}), None)?),
                    true,
                ))
            })
            .await?;
        if matches!(released, Step::Done(true)) {
            self.cancel_waiting(locator);
        }
        Ok(())
    }

    /// Cancels at the gateway, on a task of its own, the payments of a released hold
    /// still waiting for their customer: those an expiry's settling did not get to (past
    /// their deadline, or the gateway could not tell then), or those of a hold its
    /// passenger or the airline cancelled. A charge that landed after all is refunded;
    /// a payment whose outcome stays unknown (or a failure here) is left to the
    /// reconciler. Called once the release is durable, so it never fails the release.
    pub(super) fn cancel_waiting(self: &Arc<Self>, locator: &Locator) {
        let waiting = |app: &App, locator: &Locator| -> Result<Vec<PaymentAttempt>, AppError> {
            Ok(app
                .store
                .booking_attempts(locator)?
                .into_iter()
                .filter(|a| a.state == AttemptState::ActionRequired)
                .collect())
        };
        match waiting(self, locator) {
            Ok(w) if w.is_empty() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(%locator, error = %e, "cannot look for a waiting payment to cancel");
                return;
            }
        }
        if self.stop.is_cancelled() {
            return;
        }
        let app = self.clone();
        let locator = locator.clone();
        self.tasks.spawn(async move {
            let cancel = async {
                // slots of their own: cancels never hold up a due hold's settling
                let Ok(_slot) = app.expiry.cancel_slots.acquire().await else {
                    return;
                };
                // read again: the customer, a webhook or the reconciler may have
                // settled some while this waited for its slot
                match waiting(&app, &locator) {
                    Ok(attempts) => {
                        for a in attempts {
                            app.try_reconcile(a).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%locator, error = %e, "cannot look for a waiting payment to cancel")
                    }
                }
            };
            tokio::select! {
                biased;
                // the next start's reconciliation cancels them
                _ = app.stop.cancelled() => {}
                _ = cancel => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: &str) -> (FlightId, Locator) {
        (
            FlightId::parse("JW1-20261201").unwrap(),
            Locator::parse(n).unwrap(),
        )
    }

    #[test]
    fn one_entry_per_booking_and_forgotten_when_no_longer_held() {
        let e = Expiry::default();
        let (f, a) = ids("AAAAAA");
        let (_, b) = ids("BBBBBB");
        e.schedule(100, &f, &a);
        e.schedule(200, &f, &a);
        e.schedule(50, &f, &b);
        e.schedule(40, &f, &b);
        assert_eq!(e.pending(), 2, "the earliest time per booking is kept");
        e.forget(&a);
        e.forget(&a);
        assert_eq!(e.pending(), 1);
        assert_eq!(e.take_due(39), vec![]);
        assert_eq!(e.take_due(40), vec![(f.clone(), b.clone())]);
        assert_eq!(e.pending(), 0);
        e.schedule(300, &f, &b);
        assert_eq!(e.next_due(), Some(300), "a taken entry can come back");
    }
}
