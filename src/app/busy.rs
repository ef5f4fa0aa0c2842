//! A booking's "payment operation in progress" guard: while a gateway call for a
//! booking is in flight, nothing else changes its seats or money.

use std::sync::Arc;

use super::App;
use crate::app::AppError;
use crate::domain::{self, Locator};
use crate::inventory::{FlightSeats, Working};
use crate::store::{Batch, PaymentMark, StoreError};

/// Marks a booking busy (a gateway call in flight) for as long as it lives.
pub(super) struct Busy {
    fs: Arc<FlightSeats>,
    locator: Locator,
}

impl Busy {
    /// Marks the booking busy in an already locked working map. Take it last under
    /// that lock: dropping a guard locks the working map again.
    pub(super) fn mark(
        fs: &Arc<FlightSeats>,
        w: &mut Working,
        locator: &Locator,
    ) -> Result<Busy, AppError> {
        if !w.busy.insert(locator.clone()) {
            return Err(busy_error());
        }
        Ok(Busy {
            fs: fs.clone(),
            locator: locator.clone(),
        })
    }
}

impl App {
    /// Whether a payment on the booking is in flight: on this node (`w.busy`), or
    /// through another one (a live payment mark, unless `except` excuses it).
    pub(super) fn paying(
        &self,
        w: &Working,
        loc: &Locator,
        except: &dyn Fn(&PaymentMark) -> bool,
    ) -> Result<bool, AppError> {
        if w.busy.contains(loc) {
            return Ok(true);
        }
        let now = domain::now_ms();
        Ok(self
            .store
            .payment_mark(loc)?
            .is_some_and(|m| m.live(now) && !except(&m)))
    }

    /// Makes `batch`, which ends the hold `loc` decided while [`Self::paying`] said no,
    /// fail on a cluster if a node takes the booking's payment mark before it commits
    /// (a lapsed mark read here may only be left as it is): the decision is then made
    /// again, and finds the payment. The paying node, for its part, looks at the
    /// booking again once its mark is taken (see `hold_ended_under_mark`).
    pub(super) fn unless_paid_meanwhile(
        &self,
        batch: &mut Batch,
        loc: &Locator,
    ) -> Result<(), StoreError> {
        if self.committer.is_replicated() {
            let now = domain::now_ms();
            // a live mark read here was taken since: expecting none fails the batch
            let read = self.store.payment_mark(loc)?.filter(|m| !m.live(now));
            batch.marks_read.push((loc.clone(), read));
        }
        Ok(())
    }

    /// [`Self::paying`] for a booking by its locator alone, excusing no mark;
    /// `false` if there is no such booking.
    pub(super) fn paying_now(&self, loc: &Locator) -> Result<bool, AppError> {
        let Some(b) = self.store.booking(loc)? else {
            return Ok(false);
        };
        let Some(fs) = self.inventory.get(b.flight_id.as_str()) else {
            return Ok(false);
        };
        let w = fs.working();
        self.paying(&w, loc, &|_| false)
    }
}

const BUSY: &str = "a payment operation on this booking is in progress";

pub(super) fn busy_error() -> AppError {
    AppError::InvalidState(BUSY.into())
}

/// Whether `e` is [`busy_error`]: nothing was done, the booking was busy.
pub(super) fn is_busy(e: &AppError) -> bool {
    matches!(e, AppError::InvalidState(m) if m == BUSY)
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.fs.working().busy.remove(&self.locator);
    }
}
