//! Live presence: how many connections, on every node, are subscribed to each
//! flight's seat map. The count is in the `seats.subscribe` result and pushed to the
//! flight's subscribers as `flight.presence` when it changes, coalesced to at most one
//! push per flight per [`PRESENCE_INTERVAL`] that carries the latest count, to those
//! who do not know it yet. On a
//! cluster each node publishes its own counts (see [`crate::store::Replicated`]) and
//! adds up the others' from the change feed.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::App;
use crate::domain::{self, FlightId};
use crate::fanout::Utf8Bytes;
use crate::inventory::FlightSeats;
use crate::protocol::results;

/// At most one `flight.presence` per flight this often.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often due pushes are looked for.
const TICK: Duration = Duration::from_millis(100);
/// A node republishes its counts this often, keeping them alive on the cluster.
const REPUBLISH: Duration = Duration::from_secs(3);

/// The connections that subscribed since a flight's last push (by id), and the count
/// each one's reply told it (none for a subscription sent as a notification).
type Joiners = HashMap<u64, Option<u32>>;

/// What presence keeps between ticks.
#[derive(Default)]
pub struct Presence {
    /// Flights whose count may have changed, with the connections that subscribed
    /// since the last push and the count their reply told them (none for a
    /// subscription sent as a notification): one told otherwise hears the count even
    /// if the total ends where it was.
    dirty: Mutex<HashMap<FlightId, Joiners>>,
    /// When each flight's last push went out, and its count.
    sent: Mutex<HashMap<FlightId, (Instant, u32)>>,
    /// Other nodes' counts, by node.
    remote: Mutex<HashMap<String, HashMap<FlightId, u32>>>,
    /// This node's counts as last published to the cluster.
    published: Mutex<HashMap<FlightId, u32>>,
}

impl Presence {
    /// Notes that a flight's count may have changed (`joined`: a connection
    /// subscribed, and the count it was told).
    pub fn touch(&self, flight: &FlightId, joined: Option<(u64, Option<u32>)>) {
        let mut dirty = self.dirty.lock();
        let joiners = dirty.entry(flight.clone()).or_default();
        if let Some((conn, told)) = joined {
            joiners.insert(conn, told);
        }
    }

    /// The subscribers of a flight on the other nodes.
    pub fn remote(&self, flight: &FlightId) -> u32 {
        self.remote
            .lock()
            .values()
            .filter_map(|m| m.get(flight))
            .sum()
    }

    /// Another node's count for a flight (0: none, or the node is gone).
    pub fn set_remote(&self, node: &str, flight: &FlightId, viewers: u32) {
        let mut remote = self.remote.lock();
        let m = remote.entry(node.to_owned()).or_default();
        let before = match viewers {
            0 => m.remove(flight),
            n => m.insert(flight.clone(), n),
        };
        if m.is_empty() {
            remote.remove(node);
        }
        drop(remote);
        if before.unwrap_or(0) != viewers {
            self.touch(flight, None);
        }
    }

    /// The dirty flights whose last push is old enough, taken off the dirty list.
    fn due(&self, now: Instant) -> Vec<(FlightId, Joiners)> {
        let sent = self.sent.lock();
        let mut dirty = self.dirty.lock();
        let ready: Vec<FlightId> = dirty
            .keys()
            .filter(|f| {
                sent.get(*f)
                    .is_none_or(|(at, _)| now.duration_since(*at) >= PRESENCE_INTERVAL)
            })
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|f| dirty.remove_entry(&f))
            .collect()
    }
}

/// The push; `at` is when the count was taken.
fn presence_frame(flight: &FlightId, viewers: u32, at: domain::Millis) -> Utf8Bytes {
    Utf8Bytes::from(results::push(
        "flight.presence",
        &results::Presence {
            flight_id: flight.clone(),
            viewers,
            at,
        },
    ))
}

impl App {
    /// Connections subscribed to the flight on every node; `joining` counts one more
    /// for a connection about to subscribe.
    pub(super) fn viewers(&self, fs: &FlightSeats, joining: bool) -> u32 {
        fs.watchers() as u32 + joining as u32 + self.presence.remote(&fs.id)
    }

    /// Pushes the latest count of every flight that is due, to the subscribers that
    /// do not know it: all of them when it changed since the last push, else the
    /// ones that subscribed since and were told another count; a connection told this
    /// very count in its reply hears nothing.
    fn push_presence(&self) {
        let (now, at) = (Instant::now(), domain::now_ms());
        for (flight, joiners) in self.presence.due(now) {
            let Some(fs) = self.inventory.get(flight.as_str()) else {
                continue;
            };
            let viewers = self.viewers(&fs, false);
            let mut sent = self.presence.sent.lock();
            let last = sent.get(&flight).map(|(_, n)| *n);
            let frame = presence_frame(&flight, viewers, at);
            let told = fs.push_to_watchers(
                |o| match joiners.get(&o.id()) {
                    Some(t) => *t != Some(viewers),
                    None => last != Some(viewers),
                },
                &frame,
            );
            let at_time = match told.is_empty() {
                // nothing sent: the interval still runs from the last push
                true => sent.get(&flight).map_or_else(
                    || now.checked_sub(PRESENCE_INTERVAL).unwrap_or(now),
                    |(t, _)| *t,
                ),
                false => now,
            };
            sent.insert(flight.clone(), (at_time, viewers));
        }
    }

    /// This node's counts that changed since last published (all of them when
    /// `all`), and records them as published.
    fn local_counts(&self, all: bool) -> Vec<(FlightId, u32)> {
        let mut published = self.presence.published.lock();
        let mut out = Vec::new();
        for fs in self.inventory.all() {
            let n = fs.watchers() as u32;
            let before = published.get(&fs.id).copied().unwrap_or(0);
            if n != before || (all && n > 0) {
                out.push((fs.id.clone(), n));
            }
            match n {
                0 => published.remove(&fs.id),
                n => published.insert(fs.id.clone(), n),
            };
        }
        out
    }

    /// On a cluster: publishes this node's changed counts, and all of them every
    /// [`REPUBLISH`] (which also keeps them alive).
    async fn publish_presence(&self, all: bool) {
        let Some(r) = self.store.replicated() else {
            return;
        };
        let counts = self.local_counts(all);
        if counts.is_empty() && !all {
            return;
        }
        match r.set_presence(counts).await {
            Ok(true) => {} // kept alive
            Ok(false) => {
                // the node's earlier counts expired with their lease: all again
                let counts = self.local_counts(true);
                if let Err(e) = r.set_presence(counts).await {
                    tracing::warn!(error = %e, "cannot publish presence");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish presence");
                self.presence.published.lock().clear();
            }
        }
    }
}

/// Pushes presence every [`TICK`] (and publishes it to the cluster) until `stop`.
pub(super) async fn run_presence(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut republished = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let all = republished.elapsed() >= REPUBLISH;
        if all {
            republished = Instant::now();
        }
        app.publish_presence(all).await;
        app.push_presence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flight_is_due_once_per_interval_and_remote_counts_add_up() {
        let p = Presence::default();
        let f = FlightId::parse("JW1-20261201").unwrap();
        let t0 = Instant::now();
        p.touch(&f, None);
        p.touch(&f, Some((7, Some(2))));
        p.touch(&f, Some((8, None)));
        p.touch(&f, Some((7, Some(3))));
        assert_eq!(
            p.due(t0),
            vec![(f.clone(), HashMap::from([(8, None), (7, Some(3))]))],
            "a connection's latest subscription counts"
        );
        assert!(p.due(t0).is_empty(), "taken off the list");
        p.sent.lock().insert(f.clone(), (t0, 3));
        p.touch(&f, None);
        assert!(p.due(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(
            p.due(t0 + PRESENCE_INTERVAL),
            vec![(f.clone(), HashMap::new())]
        );
        p.set_remote("a", &f, 2);
        p.set_remote("b", &f, 5);
        assert_eq!(p.remote(&f), 7);
        p.set_remote("a", &f, 0);
        assert_eq!(p.remote(&f), 5);
        assert!(
            !p.due(t0 + PRESENCE_INTERVAL).is_empty(),
            "a remote change is a change"
        );
    }
}
