//! In-memory seat maps, one per flight, in two layers:
//!
//! - the **working** map says who occupies each seat right now, including changes
//!   not yet durable; every seat change of a flight is decided under its lock, which
//!   also hands out the flight's next version;
//! - the **live** map is what the world may see: it advances one version at a time,
//!   only after the change is durable (the committer applies it), keeps a replay
//!   buffer of recent changes, and fans each change out to the flight's watchers:
//!   first to the connections of the users it concerns (so that a requester has its
//!   pushes before its reply), then, once the requesters are woken, to everyone else.
//!   Each watcher remembers the last version queued to it, so whichever way a push
//!   reaches it, it gets every version once, in order.

use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard, RwLock};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::domain::{Aircraft, Cabin, Flight, FlightId, Locator, SeatId, SeatStatus};
use crate::fanout::{self, FrameKind, Outbox, Utf8Bytes};
use crate::protocol::{envelope, wire};

/// Default number of recent changes kept per flight for `seats.subscribe {since}`.
pub const DEFAULT_REPLAY: usize = 1024;

/// Who occupies a seat in the working map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    pub locator: Locator,
    pub booked: bool,
}

impl Occupant {
    pub fn status(o: &Option<Occupant>) -> SeatStatus {
        match o {
            None => SeatStatus::Available,
            Some(Occupant { booked: false, .. }) => SeatStatus::Held,
            Some(Occupant { booked: true, .. }) => SeatStatus::Booked,
        }
    }
}

/// The decision layer of a flight's seats. Locked briefly by one use case at a time.
pub struct Working {
    pub aircraft: &'static Aircraft,
    pub version: u64,
    pub seats: Vec<Option<Occupant>>,
    /// Bookings with a gateway call in flight: they cannot expire or be changed meanwhile.
    pub busy: HashSet<Locator>,
}

impl Working {
    pub fn index(&self, seat: SeatId) -> Option<usize> {
        self.aircraft.seat_index(seat)
    }

    /// The seats among `wanted` that are not free.
    pub fn taken(&self, wanted: &[usize]) -> Vec<SeatId> {
        wanted
            .iter()
            .filter(|&&i| self.seats[i].is_some())
            .map(|&i| self.aircraft.seats()[i].id)
            .collect()
    }

    pub fn free_mask(&self) -> Vec<bool> {
        self.seats.iter().map(Option::is_none).collect()
    }

    /// Updates that free those of `seats` that booking `by` occupies (a seat it no
    /// longer holds is someone else's, or free).
    pub fn release(
        &self,
        by: &Locator,
        seats: impl Iterator<Item = SeatId>,
    ) -> Vec<(usize, Option<Occupant>)> {
        seats
            .filter_map(|s| self.index(s))
            .filter(|&i| self.seats[i].as_ref().is_some_and(|o| &o.locator == by))
            .map(|i| (i, None))
            .collect()
    }

    /// Applies seat updates as the next version, returning the public change.
    pub fn apply(&mut self, updates: Vec<(usize, Option<Occupant>)>) -> SeatChange {
        self.version += 1;
        let mut freed = [0i64; Cabin::ALL.len()];
        let seats = updates
            .into_iter()
            .map(|(i, occ)| {
                let cabin = self.aircraft.seats()[i].cabin as usize;
                freed[cabin] += i64::from(occ.is_none()) - i64::from(self.seats[i].is_none());
                let status = Occupant::status(&occ);
                self.seats[i] = occ;
                (i, status)
            })
            .collect();
        SeatChange {
            version: self.version,
            seats,
            availability_changed: freed.iter().any(|&n| n != 0),
        }
    }
}

/// One atomic change of a flight's seats, by seat index.
#[derive(Debug, Clone, PartialEq)]
pub struct SeatChange {
    pub version: u64,
    pub seats: Vec<(usize, SeatStatus)>,
    /// Whether a cabin's count of available seats changed (not so when a hold is
    /// paid, a passenger checks in or moves within a cabin).
    pub availability_changed: bool,
}

/// A published change, kept for replay: the `Change` of the contract, encoded once.
/// Kept as text, not as a `serde_json::Value`: a `Value` of a one-seat change (a few
/// small maps) kept 2,778 bytes of heap, the text 177 (`tests/memory.rs`), and a
/// server keeps up to `--replay-buffer` of them per flight.
struct Published {
    version: u64,
    json: Box<str>,
}

/// Pieces of encoded JSON as one JSON array.
fn encoded_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// A flight's seat-map subscribers, by connection id (joining and leaving stay cheap
/// with thousands of watchers), counted into their inventory's total as they change,
/// so that nothing counts them at scrape time.
struct Watchers {
    by_conn: HashMap<u64, Watcher>,
    total: Arc<AtomicUsize>,
}

impl Watchers {
    /// Runs `f` on the map and moves the total by what it added or removed.
    fn change<R>(&mut self, f: impl FnOnce(&mut HashMap<u64, Watcher>) -> R) -> R {
        let before = self.by_conn.len();
        let r = f(&mut self.by_conn);
        let after = self.by_conn.len();
        if after > before {
            self.total.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(before - after, Ordering::Relaxed);
        }
        r
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.total.fetch_sub(self.by_conn.len(), Ordering::Relaxed);
    }
}

/// The public layer: durable state, replay buffer and watchers.
pub struct Live {
    version: u64,
    status: Vec<SeatStatus>,
    replay: VecDeque<Published>,
    watchers: Watchers,
    /// The pushes of published versions that some watcher still lacks, oldest first.
    unsent: VecDeque<(u64, Utf8Bytes)>,
    /// The JSON array of every seat at `version`, encoded once for all the subscribers
    /// of that version; dropped by the next publish.
    encoded: Option<Arc<str>>,
    /// Watchers with pushes queued by [`FlightSeats::deliver`] and not yet written.
    writes: fanout::WriteQueue,
}

/// A connection watching a flight.
struct Watcher {
    outbox: Outbox,
    /// The last version queued to it, or given by its `seats.subscribe` reply.
    sent: u64,
}

impl Watcher {
    /// Queues the pushes of `unsent` after the last one it has, up to `upto`, in
    /// version order; `false` once its queue is closed (a slow consumer is cut off).
    /// With `kick`, the pushes are only queued, and the outbox added there if it
    /// needs an [`Outbox::kick`] to send them.
    fn catch_up(
        &mut self,
        unsent: &VecDeque<(u64, Utf8Bytes)>,
        upto: u64,
        kick: Option<&mut VecDeque<Outbox>>,
    ) -> bool {
        if self.sent >= upto {
            return true;
        }
        let from = unsent.partition_point(|(v, _)| *v <= self.sent);
        let frames = unsent.range(from..).take_while(|(v, _)| *v <= upto);
        let frames = frames.map(|(_, f)| f);
        let queued = match kick {
            None => self.outbox.send_all(FrameKind::Push, frames),
            Some(kick) => match self.outbox.queue_quiet(FrameKind::Push, frames) {
                None => false,
                Some(needs_kick) => {
                    if needs_kick {
                        kick.push_back(self.outbox.clone());
                    }
                    true
                }
            },
        };
        if queued {
            self.sent = upto;
        }
        queued
    }
}

impl Live {
    /// Forgets the pushes every watcher has.
    fn trim(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let oldest = self.watchers.by_conn.values().map(|w| w.sent).min();
        let keep_after = oldest.unwrap_or(self.version);
        while self.unsent.front().is_some_and(|(v, _)| *v <= keep_after) {
            self.unsent.pop_front();
        }
    }
}

/// What a subscriber starts from.
pub enum Start {
    /// The full map, already encoded as a JSON array of `Seat`s (shared, not copied).
    Snapshot(Arc<str>),
    /// The changes after `since`, in order, already encoded as a JSON array.
    Changes(String),
}

pub struct FlightSeats {
    pub id: FlightId,
    pub aircraft: &'static Aircraft,
    /// On a replicated store, this node's changes of the flight take turns here (held
    /// across the commit, unlike the working map's lock).
    pub turn: tokio::sync::Mutex<()>,
    flight: RwLock<Flight>,
    /// Set when an admin starts cancelling the flight, before that is durable.
    closing: AtomicBool,
    working: Mutex<Working>,
    live: Mutex<Live>,
    replay_capacity: usize,
}

impl fanout::Queued for FlightSeats {
    fn write_queue<R>(&self, f: impl FnOnce(&mut fanout::WriteQueue) -> R) -> R {
        f(&mut self.live.lock().writes)
    }
}

impl FlightSeats {
    fn new(
        flight: Flight,
        version: u64,
        seats: Vec<Option<Occupant>>,
        replay_capacity: usize,
        watching: Arc<AtomicUsize>,
    ) -> Self {
        let aircraft = flight.aircraft();
        let status = seats.iter().map(Occupant::status).collect();
        FlightSeats {
            id: flight.id.clone(),
            aircraft,
            turn: tokio::sync::Mutex::new(()),
            flight: RwLock::new(flight),
            closing: AtomicBool::new(false),
            working: Mutex::new(Working {
                aircraft,
                version,
                seats,
                busy: HashSet::new(),
            }),
            live: Mutex::new(Live {
                version,
                status,
                replay: VecDeque::new(),
                watchers: Watchers {
                    by_conn: HashMap::new(),
                    total: watching,
                },
                unsent: VecDeque::new(),
                encoded: None,
                writes: fanout::WriteQueue::default(),
            }),
            replay_capacity,
        }
    }

    pub fn flight(&self) -> Flight {
        self.flight.read().clone()
    }

    /// Takes `f` as it is, whatever its revision (a test puts back a node's stale
    /// copy with it); the server goes through [`FlightSeats::replace_flight`].
    pub fn set_flight(&self, f: Flight) {
        *self.flight.write() = f;
    }

    /// Takes `f` unless the record held is newer (a higher `revision`: changes of a
    /// flight can arrive twice, from this node and from the cluster's feed); returns
    /// the record it replaced. Under the working map's lock, so that a seat change
    /// decided under that lock writes the record it was decided on.
    pub fn replace_flight(&self, f: Flight) -> Option<Flight> {
        let _w = self.working.lock();
        let mut cur = self.flight.write();
        if f.revision < cur.revision {
            return None;
        }
        Some(std::mem::replace(&mut *cur, f))
    }

    /// Closes the flight to passengers (or opens it again): set under the working
    /// map's lock, so every seat change decided under that lock afterwards sees it.
    pub fn set_closing(&self, closing: bool) {
        let _w = self.working.lock();
        self.closing.store(closing, Ordering::SeqCst);
    }

    /// True once an admin started cancelling the flight.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Locks the working map. Never hold the guard across an `.await`.
    pub fn working(&self) -> MutexGuard<'_, Working> {
        self.working.lock()
    }

    /// Seats left per cabin as the world sees them.
    pub fn available(&self) -> wire::CabinCounts {
        let live = self.live.lock();
        counts(self.aircraft, &live.status)
    }

    /// The published map: version and every seat with its status.
    pub fn snapshot(&self) -> (u64, Vec<Value>) {
        let live = self.live.lock();
        (live.version, self.seats_json(&live.status))
    }

    /// The published map and its cabin counts, read at one version. `flights.get`
    /// needs this: [`FlightSeats::snapshot`] then [`FlightSeats::available`] are two
    /// reads that a change can come between.
    pub fn published_map(&self) -> (u64, Vec<Value>, wire::CabinCounts) {
        let live = self.live.lock();
        (
            live.version,
            self.seats_json(&live.status),
            counts(self.aircraft, &live.status),
        )
    }

    /// The published map's version and its held and booked seat counts.
    pub fn published_occupancy(&self) -> (u64, usize, usize) {
        let live = self.live.lock();
        let count = |st: SeatStatus| live.status.iter().filter(|&&s| s == st).count();
        (
            live.version,
            count(SeatStatus::Held),
            count(SeatStatus::Booked),
        )
    }

    /// The seats among `wanted` (indices) the published map shows taken.
    pub fn published_taken(&self, wanted: &[usize]) -> Vec<SeatId> {
        let live = self.live.lock();
        wanted
            .iter()
            .filter(|&&i| {
                live.status
                    .get(i)
                    .is_some_and(|&s| s != SeatStatus::Available)
            })
            .map(|&i| self.aircraft.seats()[i].id)
            .collect()
    }

    pub fn published_version(&self) -> u64 {
        self.live.lock().version
    }

    /// The published map encoded as a JSON array, built at most once per version.
    fn encoded_seats(&self, live: &mut Live) -> Arc<str> {
        if let Some(e) = &live.encoded {
            return e.clone();
        }
        let json = Value::Array(self.seats_json(&live.status)).to_string();
        let encoded: Arc<str> = Arc::from(json);
        live.encoded = Some(encoded.clone());
        encoded
    }

    fn seats_json(&self, status: &[SeatStatus]) -> Vec<Value> {
        self.aircraft
            .seats()
            .iter()
            .zip(status)
            .map(|(info, st)| wire::seat(info, *st))
            .collect()
    }

    /// Applies a committed change of the replicated change feed, in version order:
    /// to the working map, then published. Versions already applied are ignored.
    /// Returns whether it changed the flight's seats available.
    pub fn apply_committed(
        self: &Arc<Self>,
        version: u64,
        updates: Vec<(usize, Option<Occupant>)>,
    ) -> bool {
        let change = {
            let mut w = self.working.lock();
            if version <= w.version {
                return false;
            }
            if version != w.version + 1 {
                tracing::error!(flight = %self.id, have = w.version, got = version, "gap in the change feed");
                w.version = version - 1;
            }
            let updates = updates
                .into_iter()
                .filter(|(i, _)| *i < w.seats.len())
                .collect();
            w.apply(updates)
        };
        self.publish(&change);
        change.availability_changed
    }

    /// Publishes a durable change to every watcher at once.
    pub fn publish(self: &Arc<Self>, change: &SeatChange) {
        self.publish_first(change, &[]);
        self.fan_out(
            change.version,
            tokio::runtime::Handle::try_current().ok().as_ref(),
        );
    }

    /// Publishes a durable change: advances the live map, remembers it for replay,
    /// encodes its push once and queues it (with any earlier push they lack) to the
    /// watchers among the connections `first`. Returns whether other watchers still
    /// lack it: [`FlightSeats::deliver`] queues it to them.
    pub fn publish_first(&self, change: &SeatChange, first: &[u64]) -> bool {
        let mut live = self.live.lock();
        if change.version != live.version + 1 {
            tracing::error!(flight = %self.id, have = live.version, got = change.version, "out-of-order publish");
        }
        let mut seats = Vec::with_capacity(change.seats.len());
        for &(i, st) in &change.seats {
            live.status[i] = st;
            seats.push((self.aircraft.seats()[i].id, st));
        }
        live.version = change.version;
        live.encoded = None;
        let cabins = counts(self.aircraft, &live.status);
        let mut params = wire::change(change.version, &seats, &cabins);
        let json = params.to_string().into_boxed_str();
        params["flight_id"] = json!(self.id);
        let frame = Utf8Bytes::from(envelope::push("seats.changed", &params));
        if live.replay.len() == self.replay_capacity {
            live.replay.pop_front();
        }
        live.replay.push_back(Published {
            version: change.version,
            json,
        });
        live.unsent.push_back((change.version, frame));
        let Live {
            watchers, unsent, ..
        } = &mut *live;
        watchers.change(|m| {
            for id in first {
                if m.get_mut(id)
                    .is_some_and(|w| !w.catch_up(unsent, change.version, None))
                {
                    m.remove(id);
                }
            }
        });
        let pending = watchers.by_conn.values().any(|w| w.sent < change.version);
        if !pending {
            live.trim();
        }
        pending
    }

    /// Queues every published push up to `version` to each watcher that lacks it,
    /// in version order, and forgets the watchers whose queue is closed. The pushes
    /// are written by the flight's loop (their order is the queues', so any thread
    /// may write them): the caller gets the claim to it if none runs.
    #[must_use]
    pub fn deliver(self: &Arc<Self>, version: u64) -> Option<fanout::Claim<FlightSeats>> {
        let mut live = self.live.lock();
        let Live {
            watchers,
            unsent,
            writes,
            ..
        } = &mut *live;
        watchers.change(|m| m.retain(|_, w| w.catch_up(unsent, version, Some(writes.waiting()))));
        live.trim();
        let waiting = live.writes.claim();
        drop(live);
        waiting.map(|n| fanout::Claim::new(self.clone(), n))
    }

    /// [`FlightSeats::deliver`], then its writes (on one of `runtime`'s blocking
    /// threads unless they are few: [`fanout::Claim::start`]).
    pub fn fan_out(self: &Arc<Self>, version: u64, runtime: Option<&tokio::runtime::Handle>) {
        if let Some(claim) = self.deliver(version) {
            claim.start(runtime);
        }
    }

    /// Adds a watcher and tells it where to start, atomically with respect to
    /// [`FlightSeats::publish`]; `reply` turns the start into the frame queued on the
    /// watcher's outbox before any later push (none for a notification).
    pub fn subscribe(
        &self,
        outbox: &Outbox,
        since: Option<u64>,
        reply: impl FnOnce(u64, Start) -> Option<Utf8Bytes>,
    ) -> bool {
        let mut live = self.live.lock();
        let start = match since {
            Some(s) if s == live.version => Start::Changes("[]".into()),
            Some(s)
                if s < live.version && live.replay.front().is_some_and(|p| p.version <= s + 1) =>
            {
                Start::Changes(encoded_array(
                    live.replay
                        .iter()
                        .filter(|p| p.version > s)
                        .map(|p| &*p.json),
                ))
            }
            _ => Start::Snapshot(self.encoded_seats(&mut live)),
        };
        let frame = reply(live.version, start);
        let live_version = live.version;
        live.watchers.change(|m| {
            m.remove(&outbox.id());
            if frame.is_none_or(|f| outbox.send(FrameKind::Reply, f)) {
                let sent = live_version;
                m.insert(
                    outbox.id(),
                    Watcher {
                        outbox: outbox.clone(),
                        sent,
                    },
                );
                true
            } else {
                false
            }
        })
    }

    pub fn unsubscribe(&self, conn_id: u64) -> bool {
        let mut live = self.live.lock();
        let removed = live.watchers.change(|m| m.remove(&conn_id).is_some());
        live.trim();
        removed
    }

    pub fn watchers(&self) -> usize {
        self.live.lock().watchers.by_conn.len()
    }

    /// Queues `frame` to each connection subscribed to the seat map that `pick`
    /// accepts, under the lock `seats.unsubscribe` takes: a connection whose
    /// unsubscribe was answered gets nothing more, as with seat changes (a list of
    /// watchers taken first and sent to after could reach one that unsubscribed in
    /// between, after its reply). Returns the connections' ids.
    pub fn push_to_watchers(
        &self,
        pick: impl FnMut(&Outbox) -> bool,
        frame: &Utf8Bytes,
    ) -> HashSet<u64> {
        let (told, kick) = self.queue_to_watchers(pick, frame);
        for o in kick {
            o.kick();
        }
        told
    }

    /// [`FlightSeats::push_to_watchers`] without the writes: the connections that
    /// need a [`Outbox::kick`] are returned, for the caller to kick once its own
    /// locks are released.
    pub fn queue_to_watchers(
        &self,
        mut pick: impl FnMut(&Outbox) -> bool,
        frame: &Utf8Bytes,
    ) -> (HashSet<u64>, Vec<Outbox>) {
        let mut told = HashSet::new();
        // queued under the lock, written after it (as a fan-out does): no socket
        // write holds up the flight's changes
        let mut kick = Vec::new();
        let live = self.live.lock();
        for w in live.watchers.by_conn.values() {
            if pick(&w.outbox) {
                told.insert(w.outbox.id());
                if w.outbox
                    .queue_quiet(FrameKind::Push, std::iter::once(frame))
                    == Some(true)
                {
                    kick.push(w.outbox.clone());
                }
            }
        }
        (told, kick)
    }
}

fn counts(aircraft: &Aircraft, status: &[SeatStatus]) -> wire::CabinCounts {
    Cabin::ALL
        .iter()
        .map(|&c| {
            let n = aircraft
                .seats()
                .iter()
                .zip(status)
                .filter(|(info, st)| info.cabin == c && **st == SeatStatus::Available)
                .count();
            (c, n as u32)
        })
        .collect()
}

/// Every flight's seats.
pub struct Inventory {
    flights: DashMap<FlightId, Arc<FlightSeats>>,
    replay_capacity: usize,
    /// Seat-map subscriptions over all flights.
    watching: Arc<AtomicUsize>,
}

impl Inventory {
    pub fn new(replay_capacity: usize) -> Self {
        Inventory {
            flights: DashMap::new(),
            replay_capacity: replay_capacity.max(1),
            watching: Arc::default(),
        }
    }

    /// Adds (or replaces) a flight with its durable version and occupants.
    pub fn load(
        &self,
        flight: Flight,
        version: u64,
        seats: Vec<Option<Occupant>>,
    ) -> Arc<FlightSeats> {
        let entry = Arc::new(FlightSeats::new(
            flight,
            version,
            seats,
            self.replay_capacity,
            self.watching.clone(),
        ));
        self.flights.insert(entry.id.clone(), entry.clone());
        entry
    }

    /// Adds a new flight with every seat free, unless the flight is there already
    /// (then its record is updated); returns the flight's seats either way.
    pub fn add(&self, flight: Flight) -> Arc<FlightSeats> {
        match self.flights.entry(flight.id.clone()) {
            dashmap::Entry::Occupied(e) => {
                // the map's guard let go first: a decision holding the working map
                // may be reading the map
                let fs = e.get().clone();
                drop(e);
                fs.replace_flight(flight);
                fs
            }
            dashmap::Entry::Vacant(e) => {
                let seats = vec![None; flight.aircraft().seats().len()];
                e.insert(Arc::new(FlightSeats::new(
                    flight,
                    0,
                    seats,
                    self.replay_capacity,
                    self.watching.clone(),
                )))
                .clone()
            }
        }
    }

    /// Adds a flight this node just created, unless it is known already: its record
    /// heard back from the cluster meanwhile (perhaps changed since) wins.
    pub fn add_new(&self, flight: Flight) -> Arc<FlightSeats> {
        match self.get(flight.id.as_str()) {
            Some(known) => known,
            None => self.add(flight),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<FlightSeats>> {
        FlightId::parse(id)
            .ok()
            .and_then(|id| self.flights.get(&id).map(|e| e.clone()))
    }

    pub fn all(&self) -> Vec<Arc<FlightSeats>> {
        self.flights.iter().map(|e| e.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// Seat-map subscriptions over all flights, kept as they change.
    pub fn watchers(&self) -> usize {
        self.watching.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Removes a closed connection from every flight it watched.
    pub fn unsubscribe_all(&self, conn_id: u64, flights: &[FlightId]) {
        for f in flights {
            if let Some(e) = self.flights.get(f) {
                e.unsubscribe(conn_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{outbox, QueueLimits};

    fn flight() -> Flight {
        crate::domain::schedule::demo_schedule(crate::domain::date_of(0), 1)
            .into_iter()
            .next()
            .unwrap()
    }

    fn occ(loc: &str) -> Option<Occupant> {
        Some(Occupant {
            locator: Locator::parse(loc).unwrap(),
            booked: false,
        })
    }

    #[test]
    fn committed_changes_apply_once_in_order_and_reach_watchers() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let limits = QueueLimits {
            messages: 16,
            bytes: 1 << 20,
        };
        let (watcher, mut rx) = outbox(limits);
        assert!(fs.subscribe(&watcher, None, |_, _| None));
        fs.apply_committed(1, vec![(0, occ("AAAAAA"))]);
        // a repeat (a node's own change heard again) and an old version are ignored
        fs.apply_committed(1, vec![(1, occ("BBBBBB"))]);
        fs.apply_committed(0, vec![(2, occ("BBBBBB"))]);
        // an index the aircraft lacks is dropped, not a panic
        fs.apply_committed(2, vec![(1, occ("CCCCCC")), (usize::MAX, occ("DDDDDD"))]);
        let w = fs.working();
        assert_eq!(w.version, 2);
        assert_eq!(w.seats[0], occ("AAAAAA"));
        assert_eq!(w.seats[1], occ("CCCCCC"));
        assert!(w.seats[2].is_none());
        drop(w);
        assert_eq!(fs.published_version(), 2);
        assert_eq!(versions(&mut rx), [1, 2]);
    }

    #[test]
    fn a_change_alters_availability_only_if_a_cabin_count_moves() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let mut w = fs.working();
        let economy = w
            .aircraft
            .seats()
            .iter()
            .position(|s| s.cabin == Cabin::Economy)
            .unwrap();
        let booked = |o: Option<Occupant>| o.map(|o| Occupant { booked: true, ..o });
        assert!(w.apply(vec![(0, occ("AAAAAA"))]).availability_changed);
        // paid, checked in (no seat), moved within the cabin
        assert!(
            !w.apply(vec![(0, booked(occ("AAAAAA")))])
                .availability_changed
        );
        assert!(!w.apply(Vec::new()).availability_changed);
        assert!(
            !w.apply(vec![(0, None), (1, booked(occ("AAAAAA")))])
                .availability_changed
        );
        // moved to another cabin: one more left in business, one fewer in economy
        assert!(
            w.apply(vec![(1, None), (economy, booked(occ("AAAAAA")))])
                .availability_changed
        );
        assert!(w.apply(vec![(economy, None)]).availability_changed);
    }

    /// The versions of the pushes queued on a connection since the last look.
    fn versions(rx: &mut crate::fanout::OutboxReceiver) -> Vec<u64> {
        let mut versions = Vec::new();
        while let Some(crate::fanout::Next::Frames(fs)) = rx.try_next() {
            for f in fs {
                let v: Value = serde_json::from_str(f.as_str()).unwrap();
                versions.push(v["params"]["version"].as_u64().unwrap());
            }
        }
        versions
    }

    /// A push to a flight's watchers reaches only those subscribed when it is queued,
    /// and only those `pick` accepts.
    #[test]
    fn a_push_to_watchers_skips_one_that_unsubscribed() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let (a, mut a_rx) = outbox(QueueLimits::default());
        let (b, mut b_rx) = outbox(QueueLimits::default());
        assert!(fs.subscribe(&a, None, |_, _| None));
        assert!(fs.subscribe(&b, None, |_, _| None));
        let frame = Utf8Bytes::from(r#"{"params":{"version":7}}"#);
        let told = fs.push_to_watchers(|o| o.id() == a.id(), &frame);
        assert_eq!(told, HashSet::from([a.id()]));
        assert!(fs.unsubscribe(a.id()));
        let told = fs.push_to_watchers(|_| true, &frame);
        assert_eq!(told, HashSet::from([b.id()]));
        assert_eq!(versions(&mut a_rx), [7]);
        assert_eq!(versions(&mut b_rx), [7]);
    }

    fn change(version: u64, seat: usize) -> SeatChange {
        SeatChange {
            version,
            seats: vec![(seat, SeatStatus::Held)],
            availability_changed: true,
        }
    }

    #[test]
    fn the_first_connections_get_pushes_before_the_rest_each_once_in_order() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let (owner, mut owner_rx) = outbox(QueueLimits::default());
        let (other, mut other_rx) = outbox(QueueLimits::default());
        let (again, mut again_rx) = outbox(QueueLimits::default());
        for o in [&owner, &other, &again] {
            assert!(fs.subscribe(o, None, |_, _| None));
        }
        // version 1 is someone else's change, version 2 the owner's
        assert!(fs.publish_first(&change(1, 0), &[]));
        assert!(fs.publish_first(&change(2, 1), &[owner.id(), 999]));
        assert_eq!(versions(&mut owner_rx), [1, 2], "with what precedes it");
        assert!(versions(&mut other_rx).is_empty(), "the others wait");
        // a connection that subscribes again meanwhile starts after version 2
        assert!(fs.subscribe(&again, None, |_, _| None));
        fs.fan_out(1, None);
        assert_eq!(versions(&mut other_rx), [1]);
        fs.fan_out(2, None);
        fs.fan_out(2, None);
        assert_eq!(versions(&mut other_rx), [2]);
        assert!(versions(&mut owner_rx).is_empty(), "nothing twice");
        assert!(versions(&mut again_rx).is_empty());
        fs.publish(&change(3, 2));
        for rx in [&mut owner_rx, &mut other_rx, &mut again_rx] {
            assert_eq!(versions(rx), [3]);
        }
        // with every watcher among the first, nothing is left for later
        assert!(fs.unsubscribe(other.id()) && fs.unsubscribe(again.id()));
        assert!(!fs.publish_first(&change(4, 3), &[owner.id()]));
        assert_eq!(versions(&mut owner_rx), [4]);
    }

    /// The queued pushes of a fan-out are handed to one writing loop at a time, and
    /// a loop that ended (or never started) does not keep the next one from starting.
    #[test]
    fn every_fan_out_gets_a_writing_loop_when_none_runs() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let (w, mut rx) = outbox(QueueLimits::default());
        assert!(fs.subscribe(&w, None, |_, _| None));
        assert!(fs.publish_first(&change(1, 0), &[]));
        let claim = fs.deliver(1).expect("queued, and nobody writes it yet");
        assert!(fs.publish_first(&change(2, 1), &[]));
        assert!(fs.deliver(2).is_none(), "one claim at a time");
        drop(claim);
        assert!(fs.publish_first(&change(3, 2), &[]));
        let claim = fs.deliver(3).expect("a claim given up is claimed again");
        claim.start(None);
        assert!(fs.live.lock().writes.is_idle());
        assert_eq!(versions(&mut rx), [1, 2, 3]);
        assert!(fs.publish_first(&change(4, 3), &[]));
        assert!(fs.deliver(4).is_some());
    }

    #[test]
    fn a_watcher_too_slow_for_the_fan_out_is_cut_off_and_forgotten() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let (slow, mut slow_rx) = outbox(QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        });
        let (fast, mut fast_rx) = outbox(QueueLimits::default());
        assert!(fs.subscribe(&slow, None, |_, _| None));
        assert!(fs.subscribe(&fast, None, |_, _| None));
        for v in 1..=3 {
            fs.publish_first(&change(v, v as usize), &[]);
        }
        fs.fan_out(3, None);
        assert_eq!(versions(&mut fast_rx), [1, 2, 3]);
        assert!(slow.is_closing(), "its queue overflowed");
        assert!(matches!(
            slow_rx.try_next(),
            Some(crate::fanout::Next::Close(1008, _))
        ));
        assert_eq!(fs.watchers(), 1);
    }

    #[test]
    fn subscribers_share_the_map_encoded_once_per_version() {
        let inv = Inventory::new(8);
        let fs = inv.add(flight());
        let limits = QueueLimits {
            messages: 16,
            bytes: 1 << 20,
        };
        let (watcher, _rx) = outbox(limits);
        let map = || {
            let mut got = None;
            fs.subscribe(&watcher, None, |version, start| {
                if let Start::Snapshot(seats) = start {
                    got = Some((version, seats));
                }
                None
            });
            got.expect("a snapshot")
        };
        let (v0, first) = map();
        let (_, again) = map();
        assert!(Arc::ptr_eq(&first, &again), "encoded once for the version");
        assert_eq!(fs.watchers(), 1, "subscribing again does not add a watcher");
        fs.apply_committed(v0 + 1, vec![(0, occ("AAAAAA"))]);
        let (v1, after) = map();
        assert_eq!(v1, v0 + 1);
        let seats: Vec<Value> = serde_json::from_str(&after).unwrap();
        assert_eq!(seats, fs.snapshot().1, "the map of the new version");
        assert_eq!(seats[0]["status"], "held");
        assert!(fs.unsubscribe(watcher.id()));
        assert_eq!(fs.watchers(), 0);
    }

    #[test]
    fn the_watcher_total_follows_subscriptions_closed_outboxes_and_reloads() {
        let inv = Inventory::new(8);
        let limits = QueueLimits {
            messages: 16,
            bytes: 1 << 20,
        };
        let mut flights = crate::domain::schedule::demo_schedule(crate::domain::date_of(0), 1);
        let (a, b) = (inv.add(flights.remove(0)), inv.add(flights.remove(0)));
        let (w1, _rx1) = outbox(limits);
        let (w2, rx2) = outbox(limits);
        for fs in [&a, &b] {
            assert!(fs.subscribe(&w1, None, |_, _| None));
        }
        assert!(a.subscribe(&w2, None, |_, _| None));
        assert!(a.subscribe(&w2, None, |_, _| None));
        assert_eq!(inv.watchers(), 3);
        assert!(b.unsubscribe(w1.id()));
        assert!(!b.unsubscribe(w1.id()));
        assert_eq!(inv.watchers(), 2);
        // a closed watcher leaves with the next push
        drop(rx2);
        a.apply_committed(1, vec![(0, occ("AAAAAA"))]);
        assert_eq!(inv.watchers(), 1);
        // a reloaded seat map replaces the flight's watchers once the old one is gone
        inv.load(a.flight(), 1, vec![None; a.aircraft.seats().len()]);
        drop(a);
        assert_eq!(inv.watchers(), 0);
    }

    #[test]
    fn adding_a_known_flight_keeps_its_seats_and_watchers() {
        let inv = Inventory::new(8);
        let mut f = flight();
        let fs = inv.add(f.clone());
        fs.apply_committed(1, vec![(0, occ("AAAAAA"))]);
        f.cancelled = Some("weather".into());
        let again = inv.add(f);
        assert!(Arc::ptr_eq(&fs, &again));
        assert_eq!(again.working().version, 1);
        assert_eq!(again.flight().cancelled.as_deref(), Some("weather"));
    }
}
