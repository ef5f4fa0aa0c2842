//! Hold expiry: a timer queue of held bookings, and the use case that releases a
//! hold once it falls due (also for holds that fell due while the server was down).

use parking_lot::Mutex;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use super::App;
use crate::domain::{self, BookingStatus, FlightId, Locator, Millis};

/// How long to wait before retrying a hold whose payment is in flight.
const BUSY_RETRY_MS: Millis = 500;
/// How long to wait before retrying a hold whose charged payment could not be settled.
const SETTLE_RETRY_MS: Millis = 5_000;

/// The timer queue of held bookings.
#[derive(Default)]
pub struct Expiry {
    queue: Mutex<Queue>,
    wake: Notify,
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
        if app.expire_due().await {
            // payments that waited for the customer on those holds are cancelled
            let app = app.clone();
            tokio::spawn(async move { app.cancel_lapsed_actions().await });
        }
    }
}

impl App {
    /// Expires every hold that is due now and waits until that is durable; `false`
    /// if none was due.
    pub async fn expire_due(&self) -> bool {
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
                tracing::error!(%locator, error = %e, "expiring a hold failed; retrying soon");
                self.expiry
                    .schedule(domain::now_ms() + BUSY_RETRY_MS, flight, locator);
            }
        }
        if let Err(e) = self.committer.barrier().await {
            tracing::error!(error = %e, "expiry not durable");
        }
        true
    }

    /// Expires one hold if it is still held and due. On a cluster every node may try
    /// the same hold: the first to commit wins, the others find it expired. A charge
    /// whose payer died before recording it is settled first, so that it confirms the
    /// booking rather than being refunded after the seats are gone.
    async fn expire_one(
        &self,
        flight: &FlightId,
        locator: &Locator,
    ) -> Result<(), crate::protocol::ApiError> {
        let Some(fs) = self.inventory.get(flight.as_str()) else {
            return Ok(());
        };
        // waiting for the gateway is bounded: after one payment span the hold goes as
        // before, and the reconciler refunds a charge it finds later
        let span = self.payment_span().as_millis() as Millis;
        for a in self.store.booking_attempts(locator)? {
            let waited_enough = a.created_at.saturating_add(span) <= domain::now_ms();
            if a.may_have_charged() && !self.try_reconcile(a).await && !waited_enough {
                self.expiry
                    .schedule(domain::now_ms() + SETTLE_RETRY_MS, flight, locator);
                return Ok(());
            }
        }
        self.seat_step(&fs, None, |w| {
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
                Some(self.end_hold(&fs, w, &b, "expired", json!({}), None)?),
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
