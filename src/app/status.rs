//! Flight status and times: `admin.flights.update`, the automatic departure of a
//! flight whose time has passed, and the `flight.changed` push that tells every
//! interested connection (seat-map subscribers, owners of live bookings, board
//! watchers) of a stored change of status or times, once per connection.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::admin::{occupants, optional_reason};
use super::{flight_view, App, AuthSession};
use crate::app::AppError;
use crate::domain::flight::StatusUpdate;
use crate::domain::{self, Flight, Millis};
use crate::fanout::{FrameKind, Outbox, Utf8Bytes};
use crate::inventory::FlightSeats;
use crate::protocol::params::UpdateFlight;
use crate::protocol::results::{self, FlightChanged, FlightResult};
use crate::store::{Batch, StoreError};

/// How often flights whose departure passed are looked for.
pub const DEPARTURE_TICK: Duration = Duration::from_secs(5);
/// How many times a flight record's change is made again on the record another
/// node wrote meanwhile before the request gives up.
const FLIGHT_TRIES: usize = 5;
/// How far an estimate may lie from the schedule.
pub const MAX_ESTIMATE_SHIFT_MS: Millis = 48 * 3600 * 1000;

fn estimate(s: Option<&str>, field: &str, scheduled: Millis) -> Result<Option<Millis>, AppError> {
    let Some(s) = s else {
        return Ok(None);
    };
    let t = domain::parse_rfc3339(s)
        .ok_or_else(|| AppError::InvalidParams(format!("{field} must be an RFC 3339 time")))?;
    if (t - scheduled).abs() > MAX_ESTIMATE_SHIFT_MS {
        return Err(AppError::InvalidParams(format!(
            "{field} must be within 48 hours of the schedule"
        )));
    }
    Ok(Some(t))
}

/// Checks the params of `admin.flights.update` against the flight's schedule.
fn status_update(p: &UpdateFlight, f: &Flight) -> Result<StatusUpdate, AppError> {
    let u = StatusUpdate {
        estimated_departs_at: estimate(
            p.estimated_departs_at.as_deref(),
            "estimated_departs_at",
            f.departs_at,
        )?,
        estimated_arrives_at: estimate(
            p.estimated_arrives_at.as_deref(),
            "estimated_arrives_at",
            f.arrives_at,
        )?,
        status: p.status,
        reason: optional_reason(p.reason.as_deref())?,
    };
    Ok(u)
}

/// The `flight.changed` push of a flight record.
pub(super) fn changed_frame(f: &Flight, fs: &FlightSeats, reason: Option<&str>) -> Utf8Bytes {
    let params = FlightChanged {
        flight: flight_view(f.clone(), fs),
        reason: reason.map(str::to_owned),
    };
    Utf8Bytes::from(results::push("flight.changed", &params))
}

/// Pushes queued under whatever locks order them against other pushes, and written
/// (kicked) by [`Pushes::send`] once those are released: no socket write holds a
/// lock others wait for.
#[derive(Default)]
pub(super) struct Pushes {
    kick: Vec<Outbox>,
}

impl Pushes {
    /// Queues `frame` once to each connection among `targets`.
    pub(super) fn queue(&mut self, targets: impl IntoIterator<Item = Outbox>, frame: &Utf8Bytes) {
        self.queue_except(targets, frame, &HashSet::new());
    }

    /// Queues `frame` once to each connection among `targets` not in `told`.
    pub(super) fn queue_except(
        &mut self,
        targets: impl IntoIterator<Item = Outbox>,
        frame: &Utf8Bytes,
        told: &HashSet<u64>,
    ) {
        let mut seen = HashSet::new();
        for o in targets {
            if !told.contains(&o.id())
                && seen.insert(o.id())
                && o.queue_quiet(FrameKind::Push, std::iter::once(frame)) == Some(true)
            {
                self.kick.push(o);
            }
        }
    }

    /// Connections queued to elsewhere, to be written with the rest.
    pub(super) fn kick_also(&mut self, queued: Vec<Outbox>) {
        self.kick.extend(queued);
    }

    /// Writes what was queued.
    pub(super) fn send(self) {
        for o in self.kick {
            o.kick();
        }
    }
}

impl App {
    /// `admin.flights.update`: new estimates and/or the next status, durable before
    /// the reply and then pushed.
    pub async fn admin_update_flight(
        &self,
        _s: &AuthSession,
        p: UpdateFlight,
    ) -> Result<FlightResult, AppError> {
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        let _serial = self.flights_turn().await;
        // every field is optional: an update of nothing answers the flight as it is,
        // with nothing written or pushed (the params are checked against the
        // schedule, which never changes; any refusal is left to the path below,
        // which puts a departed or cancelled flight first)
        if status_update(&p, &fs.flight()).is_ok_and(|u| u.is_empty()) {
            self.committer.catch_up().await?;
            let current = fs.flight();
            current.check_updatable(domain::now_ms())?;
            return Ok(FlightResult {
                flight: flight_view(current, &fs),
            });
        }
        let flight = self
            .commit_flight(&fs, |f| {
                let now = domain::now_ms();
                // a departed or cancelled flight refuses any update, even a malformed one
                f.check_updatable(now)?;
                let update = status_update(&p, f)?;
                f.update(&update, now).map_err(AppError::from)
            })
            .await?;
        tracing::info!(flight = %fs.id, status = flight.status(domain::now_ms()).as_str(), "flight updated");
        self.flight_record(&fs, flight.clone());
        Ok(FlightResult {
            flight: flight_view(flight, &fs),
        })
    }

    /// Makes `change` of the flight's record as it is now durable, written only over
    /// that record (compare-and-swap): a change through another node of a cluster in
    /// between is read, and `change` made on it again, a few times at most. Returns
    /// the record written, for [`Self::flight_record`]. The caller holds the admin's
    /// flight lock (on one node, flight records change one at a time).
    pub(in crate::app) async fn commit_flight(
        &self,
        fs: &FlightSeats,
        change: impl Fn(&mut Flight) -> Result<(), AppError>,
    ) -> Result<Flight, AppError> {
        for _ in 0..FLIGHT_TRIES {
            self.committer.catch_up().await?;
            let read = fs.flight();
            let mut f = read.clone();
            change(&mut f)?;
            let written = self.commit(Batch {
                flights_read: vec![read],
                flights: vec![f.clone()],
                ..Default::default()
            });
            match written.await {
                Ok(()) => return Ok(f),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::InvalidState(
            "the flight kept changing through other nodes; try again".into(),
        ))
    }

    /// Takes a durable flight record (written here, or heard from the cluster) and,
    /// if its status or times changed, pushes `flight.changed`.
    pub(super) fn flight_record(&self, fs: &Arc<FlightSeats>, f: Flight) {
        // the sweep it may wake judges the line by the record installed here
        let old = fs.replace_flight(f.clone());
        self.note_line(&f);
        let Some(old) = old else {
            return;
        };
        if old.differs_in_status(&f) {
            self.announce_flight(fs, &f);
        }
    }

    /// Pushes `flight.changed` once to every connection subscribed to the flight's
    /// seats, watching a board that shows it, or of a user with a live booking on it.
    fn announce_flight(&self, fs: &Arc<FlightSeats>, f: &Flight) {
        let mut owners = HashSet::new();
        for loc in occupants(fs) {
            match self.store.booking(&loc) {
                Ok(Some(b)) => {
                    owners.insert(b.user_id);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a booking to push a flight change")
                }
            }
        }
        let others = owners
            .into_iter()
            .flat_map(|u| self.users.outboxes(u))
            .collect();
        self.send_with_boards(fs, f, others);
    }

    /// Marks every flight whose departure has passed as of `now` as departed, durably,
    /// and pushes that (the departure tick's work). Under the admin's flight lock, so
    /// that an update or cancellation still being made durable is not written over
    /// by a record read before it.
    pub async fn mark_departures(&self, now: domain::Millis) {
        let _serial = self.flights_turn().await;
        let mut due = Vec::new();
        for fs in self.inventory.all() {
            let read = fs.flight();
            let mut f = read.clone();
            if f.mark_departed(now) {
                due.push((fs, read, f));
            }
        }
        if due.is_empty() {
            return;
        }
        // in chunks: etcd bounds the operations of one transaction
        let mut marked = 0;
        for chunk in due.chunks(super::SEED_CHUNK) {
            // written over the records read: an update or a cancellation through
            // another node in between wins, and the next tick looks again
            let batch = Batch {
                flights_read: chunk.iter().map(|(_, read, _)| read.clone()).collect(),
                flights: chunk.iter().map(|(_, _, f)| f.clone()).collect(),
                ..Default::default()
            };
            if let Err(e) = self.commit(batch).await {
                tracing::warn!(error = %e, "cannot mark departed flights; trying again later");
                continue;
            }
            for (fs, _, f) in chunk {
                self.flight_record(fs, f.clone());
            }
            marked += chunk.len();
        }
        if marked > 0 {
            tracing::info!(flights = marked, "flights marked departed");
        }
    }
}

/// Marks departed flights every [`DEPARTURE_TICK`], and expires the waitlists of
/// cancelled and departed flights, until `stop`.
pub(super) async fn run_departures(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(DEPARTURE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // lines that closed while the server was down
    for fs in app.inventory.all() {
        app.note_line(&fs.flight());
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                app.mark_departures(domain::now_ms()).await;
                app.expire_closed_lines().await;
            }
            _ = app.closed_lines.wake.notified() => app.expire_closed_lines().await,
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dep: Option<&str>, status: Option<domain::FlightStatus>) -> UpdateFlight {
        UpdateFlight {
            flight_id: "JW100-20261201".into(),
            estimated_departs_at: dep.map(Into::into),
            estimated_arrives_at: None,
            status,
            reason: None,
        }
    }

    #[test]
    fn update_params_are_checked() {
        let f = domain::schedule::demo_schedule(time::macros::date!(2026 - 12 - 01), 1).remove(0);
        assert!(status_update(&params(None, None), &f).unwrap().is_empty());
        assert!(status_update(&params(Some("soon"), None), &f).is_err());
        assert!(status_update(&params(Some("2026-12-05T07:15:00Z"), None), &f).is_err());
        let u = status_update(&params(Some("2026-12-01T08:00:00Z"), None), &f).unwrap();
        assert_eq!(
            u.estimated_departs_at,
            domain::parse_rfc3339("2026-12-01T08:00:00Z")
        );
        assert!(status_update(&params(None, Some(domain::FlightStatus::Boarding)), &f).is_ok());
    }
}
