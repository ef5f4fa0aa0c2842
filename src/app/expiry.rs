//! Hold expiry: a timer queue of held bookings, and the use case that releases a
//! hold once it falls due (also for holds that fell due while the server was down).

use parking_lot::Mutex;
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

use super::App;
use super::AppError;
use crate::domain::{self, BookingStatus, FlightId, Locator, Millis};
use crate::inventory::FlightSeats;
use crate::store::{AttemptState, PaymentAttempt};

/// How long to wait before retrying a hold whose payment is in flight.
const BUSY_RETRY_MS: Millis = 500;
/// How long to wait before retrying a hold whose charged payment could not be settled.
const SETTLE_RETRY_MS: Millis = 5_000;
/// At most this many due holds settle their payments with the gateway at once.
const SETTLING_MAX: usize = 16;

/// The timer queue of held bookings.
pub struct Expiry {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Due holds whose payments are being settled with the gateway, each on a task
    /// of its own: one task per booking at a time.
    settling: Mutex<HashSet<Locator>>,
    /// Bounds how many of those tasks call the gateway at once.
    settle_slots: Semaphore,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            queue: Mutex::default(),
            wake: Notify::new(),
            settling: Mutex::default(),
            settle_slots: Semaphore::new(SETTLING_MAX),
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
    /// the booking rather than being refunded after the seats are gone.
    async fn expire_one(
        self: &Arc<Self>,
        flight: &FlightId,
        locator: &Locator,
    ) -> Result<(), super::AppError> {
        let Some(fs) = self.inventory.get(flight.as_str()) else {
            return Ok(());
        };
        let now = domain::now_ms();
        let unsettled: Vec<PaymentAttempt> = self
            .store
            .booking_attempts(locator)?
            .into_iter()
            .filter(|a| {
                a.may_have_charged()
                    || (a.state == AttemptState::ActionRequired && !self.awaits_customer(a, now))
            })
            .collect();
        if unsettled.is_empty() {
            return self.release_hold(&fs, flight, locator).await;
        }
        if !self.expiry.settling.lock().insert(locator.clone()) {
            // its task is at it, and expires or reschedules the hold when done
            return Ok(());
        }
        let (app, flight, locator) = (self.clone(), flight.clone(), locator.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = app.settle_then_expire(&fs, &flight, &locator, unsettled) => {}
                // the next start settles it
                _ = app.stop.cancelled() => {}
            }
            app.expiry.settling.lock().remove(&locator);
        });
        Ok(())
    }

    /// Settles a due hold's payments with the gateway, then expires it, unless one
    /// of them cannot be settled yet: then the hold is looked at again shortly. The
    /// wait is bounded: one payment span after an attempt's last step the hold goes
    /// as before, and the reconciler refunds a charge it finds later (or cancels a
    /// payment still waiting for its customer).
    async fn settle_then_expire(
        &self,
        fs: &Arc<FlightSeats>,
        flight: &FlightId,
        locator: &Locator,
        unsettled: Vec<PaymentAttempt>,
    ) {
        let span = self.payment_span().as_millis() as Millis;
        {
            let Ok(_slot) = self.expiry.settle_slots.acquire().await else {
                return;
            };
            for a in unsettled {
                let last_step = a.updated_at.max(a.created_at);
                let waited_enough = last_step.saturating_add(span) <= domain::now_ms();
                if !self.try_reconcile(a).await && !waited_enough {
                    self.expiry
                        .schedule(domain::now_ms() + SETTLE_RETRY_MS, flight, locator);
                    return;
                }
            }
        }
        if let Err(e) = self.release_hold(fs, flight, locator).await {
            self.expire_failed(flight, locator, e);
        }
    }

    /// Releases a hold if it is still held and due (and no payment of it is in flight).
    async fn release_hold(
        &self,
        fs: &Arc<FlightSeats>,
        flight: &FlightId,
        locator: &Locator,
    ) -> Result<(), AppError> {
        self.seat_step(fs, None, |w| {
            let now = domain::now_ms();
            let Some(mut b) = self.store.booking(locator)? else {
                return Ok((None, ()));
            };
            if b.status != BookingStatus::Held {
                return Ok((None, ()));
            }
            if self.paying(w, locator, &|_| false)? {
                self.expiry.schedule(now + BUSY_RETRY_MS, flight, locator);
                return Ok((None, ()));
            }
            if !b.is_expired(now) {
                if let Some(t) = b.hold_expires_at {
                    self.expiry.schedule(t, flight, locator);
                }
                return Ok((None, ()));
            }
            b.expire(now)?;
            Ok((
                Some(self.end_hold(fs, w, &b, "expired", json!({}), None)?),
                (),
            ))
        })
        .await?;
        Ok(())
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
