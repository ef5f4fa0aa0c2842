//! Online check-in and boarding passes. A check-in is a change of the flight like a
//! seat change (its next version, with no seat changing hands), so that its sequence
//! numbers, read from the store's per-flight counter and written back in the same
//! batch, are never handed out twice, by one node or by several.

use serde_json::json;

use super::bookings::check_flight;
use super::busy::busy_error;
use super::{event, remember_ok, App, AuthSession};
use crate::app::AppError;
use crate::domain::checkin::Window;
use crate::domain::flight::Operation;
use crate::domain::{self, Booking, Flight, SeatId};
use crate::protocol::params;
use crate::protocol::results::{Answer, BoardingPasses, BookingView, CheckedIn, PassView};
use crate::store::Batch;

fn passes(b: &Booking, flight: &Flight, only: Option<&[SeatId]>) -> Vec<PassView> {
    b.boarding_passes(flight, only)
        .into_iter()
        .map(|pass| PassView {
            flight_id: flight.id.clone(),
            pass,
        })
        .collect()
}

impl App {
    fn checkin_window(&self) -> Window {
        Window::new(self.config.checkin_opens, self.config.checkin_closes)
    }

    pub async fn check_in(
        &self,
        s: &AuthSession,
        p: params::CheckInRequest,
    ) -> Result<Answer<CheckedIn>, AppError> {
        self.committer.catch_up_at_start().await?;
        let booking = self.own_booking(s.user_id, &p.locator)?;
        let only = p.seats;
        let fs = self.flight_seats(&booking.flight_id)?;
        let window = self.checkin_window();
        self.idempotent(
            s.user_id,
            "booking.check_in",
            &p.request_id,
            |key, _| async move {
                let loc = booking.locator;
                let step = self.seat_step(&fs, Some(&key), |w| {
                    let now = domain::now_ms();
                    let flight = check_flight(&fs, Operation::CheckIn, now)?;
                    let mut b = self
                        .store
                        .booking(&loc)?
                        .ok_or(AppError::NotFound("booking"))?;
                    if self.paying(w, &loc, &|_| false)?
                        || self.store.open_refund(loc.as_str())?.is_some()
                    {
                        return Err(busy_error());
                    }
                    let before = self.store.checkin_sequence(&fs.id)?;
                    let mut last = before;
                    let chosen = b.check_in(
                        only.as_deref(),
                        (&window, flight.departure()),
                        || {
                            last += 1;
                            last
                        },
                        now,
                    )?;
                    let result = Answer::Now(CheckedIn {
                        boarding_passes: passes(&b, &flight, Some(&chosen)),
                        booking: BookingView {
                            booking: b.clone(),
                            flight: Some(flight),
                        },
                    });
                    if last == before {
                        // nothing to change: the answer is remembered all the same, so
                        // that a repeat of the request gets it whatever follows (a twin
                        // through another node that answered first stands)
                        let batch = Batch {
                            first_replies: vec![(key.clone(), remember_ok(&result))],
                            ..Default::default()
                        };
                        let ticket = self.committer.submit(batch, None, || None)?;
                        return Ok((Some(ticket), result));
                    }
                    let new: Vec<String> = b
                        .seats
                        .iter()
                        .filter(|x| x.check_in.is_some_and(|c| c.sequence > before))
                        .map(|x| x.seat.to_string())
                        .collect();
                    let batch = Batch {
                        bookings: vec![b.clone()],
                        checkin_sequences: vec![(fs.id.clone(), last)],
                        events: vec![(
                            s.user_id,
                            event("checked_in", Some(&loc), now, json!({ "seats": new })),
                        )],
                        replies: vec![(key.clone(), remember_ok(&result))],
                        ..Default::default()
                    };
                    Ok((
                        Some(self.change_seats(&fs, w, batch, Vec::new(), &b)?),
                        result,
                    ))
                });
                let reply = step.await?.reply()?;
                // a check-in that changed nothing read what another request may have
                // written: answer once that is durable
                self.committer.settle_reads().await?;
                Ok(reply)
            },
        )
        .await
    }

    pub async fn boarding_passes(
        &self,
        s: &AuthSession,
        p: params::LocatorRef,
    ) -> Result<BoardingPasses, AppError> {
        let b = self
            .consistent_read(|| self.own_booking(s.user_id, &p.locator))
            .await?;
        let flight = self.flight_seats(&b.flight_id)?.flight();
        Ok(BoardingPasses {
            boarding_passes: passes(&b, &flight, None),
        })
    }
}
