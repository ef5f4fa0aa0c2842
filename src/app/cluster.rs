//! Following the cluster on a replicated store: how a node applies the changes
//! committed through any node, its own included, to its seat maps, replay buffers,
//! session cache and hold expiry, and pushes them to its own connections.

use std::sync::Arc;

use super::{App, StartError};
use crate::domain::{BookingStatus, FlightId};
use crate::inventory::Occupant;
use crate::store::{Change, FeedSeat, SeatFeed};

/// The replicated form of a seat change.
pub(super) fn feed(
    flight: &FlightId,
    version: u64,
    updates: &[(usize, Option<Occupant>)],
) -> SeatFeed {
    SeatFeed {
        flight: flight.clone(),
        version,
        seats: updates
            .iter()
            .map(|(i, o)| FeedSeat {
                index: *i,
                locator: o.as_ref().map(|o| o.locator.clone()),
                booked: o.as_ref().is_some_and(|o| o.booked),
            })
            .collect(),
    }
}

fn updates(feed: &SeatFeed) -> Vec<(usize, Option<Occupant>)> {
    feed.seats
        .iter()
        .map(|s| {
            let occ = s.locator.clone().map(|locator| Occupant {
                locator,
                booked: s.booked,
            });
            (s.index, occ)
        })
        .collect()
}

impl App {
    /// Starts following the replicated store's change feed (nothing on a local store).
    pub(super) fn follow_cluster(self: &Arc<Self>) -> Result<(), StartError> {
        let Some(r) = self.store.replicated() else {
            return Ok(());
        };
        for (node, flight, viewers) in r.presence().map_err(|e| StartError::Other(e.to_string()))? {
            if node != r.node() {
                self.presence.set_remote(&node, &flight, viewers);
            }
        }
        let app = Arc::downgrade(self);
        r.follow(Box::new(move |changes| {
            if let Some(app) = app.upgrade() {
                app.on_changes(changes);
            }
        }))
        .map_err(|e| StartError::Other(e.to_string()))
    }

    /// One committed revision: flights first (a new flight before its seats), then
    /// the seat change, then what it did to bookings and sessions.
    fn on_changes(&self, changes: &[Change]) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        for c in changes {
            if let Change::Flight(f) = c {
                match self.inventory.get(f.id.as_str()) {
                    Some(fs) => self.flight_record(&fs, f.clone()),
                    None => {
                        self.inventory.add(f.clone());
                    }
                }
            }
        }
        for c in changes {
            if let Change::Seats(feed) = c {
                if let Some(fs) = self.inventory.get(feed.flight.as_str()) {
                    if fs.apply_committed(feed.version, updates(feed)) {
                        self.boards.seats_changed(&fs.id);
                    }
                }
            }
        }
        for c in changes {
            match c {
                Change::Booking(b) => {
                    let flight = self.inventory.get(b.flight_id.as_str()).map(|f| f.flight());
                    let frame = super::booking_push(b, flight.as_ref());
                    self.users.push(b.user_id, &frame, runtime.as_ref(), None);
                    match (b.status, b.hold_expires_at) {
                        (BookingStatus::Held, Some(t)) => {
                            self.expiry.schedule(t, &b.flight_id, &b.locator)
                        }
                        (BookingStatus::Held, None) => {}
                        _ => self.expiry.forget(&b.locator),
                    }
                }
                Change::SessionEnded(hash) => {
                    self.sessions.remove(hash);
                    self.users.revoke_token(hash);
                }
                Change::Presence {
                    node,
                    flight,
                    viewers,
                } => {
                    if Some(node.as_str()) != self.store.replicated().map(|r| r.node()) {
                        self.presence.set_remote(node, flight, *viewers);
                    }
                }
                Change::Flight(_) | Change::Seats(_) | Change::Waitlist(_) => {}
            }
        }
        let (mut entries, mut bookings) = (Vec::new(), Vec::new());
        for c in changes {
            match c {
                Change::Waitlist(e) => entries.push(e),
                Change::Booking(b) => bookings.push(b),
                _ => {}
            }
        }
        if !entries.is_empty() {
            for (user, frame) in super::waitlist::replicated_pushes(self, &entries, &bookings) {
                self.users.push(user, &frame, runtime.as_ref(), None);
            }
        }
    }
}
