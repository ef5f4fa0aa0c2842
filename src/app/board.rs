//! Departure boards: `flights.watch {airport, hours?}` / `flights.unwatch`. Watchers
//! are grouped by (airport, hours), so a change costs one look per group of its
//! airport, not per board. A group remembers which flights it has shown; a flight
//! that enters its window later (time passing, a new flight, a delay) is pushed as
//! `flight.changed`; one is dropped silently only an hour past its departure (a
//! flight delayed past the window's far end stays shown). Status and time changes
//! are pushed at once (with the other `flight.changed` targets); seat availability
//! is coalesced to at most one push per flight per [`AVAILABILITY_INTERVAL`].

use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status::{changed_frame, Pushes};
use super::App;
use crate::app::AppError;
use crate::domain::{self, flight::airport, Flight, FlightId, Millis};
use crate::fanout::{FrameKind, Outbox, Utf8Bytes};
use crate::inventory::FlightSeats;
use crate::protocol::results::{Board, Done, FlightView};
use crate::protocol::{envelope, params};

/// Most boards one connection may watch.
pub const MAX_WATCHES: usize = 4;
pub const DEFAULT_HOURS: u8 = 24;
pub const MAX_HOURS: u8 = 48;
/// A board keeps a flight until this long after its departure.
pub const KEEP_AFTER_MS: Millis = 3600 * 1000;
/// At most one availability push per flight this often.
pub const AVAILABILITY_INTERVAL: Duration = Duration::from_secs(1);
/// How often windows slide.
const SLIDE_EVERY: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);

/// The boards of one airport with one window length.
#[derive(Default)]
struct Group {
    watchers: Vec<Outbox>,
    /// The flights in the group's window that its boards have been shown.
    shown: HashSet<FlightId>,
    /// Flights shown before and delayed past the window's far end, each with the
    /// connections that were shown it: their changes still reach those boards (not
    /// one that joined since and did not list it), and they are pushed to every
    /// board again when they come back into the window.
    kept: HashMap<FlightId, HashSet<u64>>,
}

impl Group {
    /// Keeps `flight`, which left the window's far end, for the boards watching now.
    fn keep(&mut self, flight: &FlightId) {
        self.kept.insert(
            flight.clone(),
            self.watchers.iter().map(Outbox::id).collect(),
        );
    }
}

/// Every board being watched, and the availability changes waiting to be pushed.
#[derive(Default)]
pub struct Boards {
    /// Every push to a board is queued under this lock (and written after it): so
    /// pushes keep the order of their reads, and a board whose `flights.unwatch` is
    /// answered (its leave takes the lock) gets nothing more.
    groups: Mutex<HashMap<(String, u8), Group>>,
    /// Whether any board is watched: read by every seat change (on the commit loop),
    /// which must not wait for `groups`.
    any: AtomicBool,
    /// Flights whose seats changed since their last availability push.
    dirty: Mutex<HashSet<FlightId>>,
    sent: Mutex<HashMap<FlightId, Instant>>,
}

/// True if a flight departing from `from` at `departure` belongs on a board of
/// `airport` covering `hours` from `now`.
fn in_window(f: &Flight, airport: &str, hours: u8, now: Millis) -> bool {
    let dep = f.departure();
    f.from == airport && dep >= now - KEEP_AFTER_MS && dep <= now + hours as Millis * 3_600_000
}

fn board_airport(code: &str) -> Result<String, AppError> {
    let c = code.trim().to_ascii_uppercase();
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AppError::InvalidParams(
            "airport must be a 3-letter IATA airport code".into(),
        ));
    }
    airport(&c)
        .map(|a| a.code.to_owned())
        .ok_or(AppError::NotFound("airport"))
}

impl Boards {
    /// Notes a published seat change of a flight (pushed later, coalesced).
    pub fn seats_changed(&self, flight: &FlightId) {
        if self.any.load(Ordering::SeqCst) {
            self.dirty.lock().insert(flight.clone());
        }
    }

    /// Removes a connection's boards.
    pub fn leave(&self, conn_id: u64, airports: &[String]) {
        let mut groups = self.groups.lock();
        groups.retain(|(a, _), g| {
            if airports.contains(a) {
                g.watchers.retain(|w| w.id() != conn_id);
                for shown_to in g.kept.values_mut() {
                    shown_to.remove(&conn_id);
                }
            }
            !g.watchers.is_empty()
        });
        self.any.store(!groups.is_empty(), Ordering::SeqCst);
    }

    /// Adds to `out` the connections of the boards that show `f` (after its
    /// change), noting it shown or kept. Call it with `groups` locked, `f` read
    /// under that lock or the latest change of it, and queue to them before
    /// unlocking.
    fn watchers_of(
        groups: &mut HashMap<(String, u8), Group>,
        f: &Flight,
        now: Millis,
        out: &mut Vec<Outbox>,
    ) {
        for ((a, hours), g) in groups.iter_mut() {
            if a != &f.from {
                continue;
            }
            if in_window(f, a, *hours, now) {
                g.kept.remove(&f.id);
                g.shown.insert(f.id.clone());
            } else if g.shown.remove(&f.id) {
                g.keep(&f.id);
            } else if let Some(shown_to) = g.kept.get(&f.id) {
                let to = g.watchers.iter().filter(|w| shown_to.contains(&w.id()));
                out.extend(to.cloned());
                continue;
            } else {
                continue;
            }
            out.extend(g.watchers.iter().cloned());
        }
    }

    /// The dirty flights whose last availability push is old enough.
    fn due(&self, now: Instant) -> Vec<FlightId> {
        let mut sent = self.sent.lock();
        let mut dirty = self.dirty.lock();
        let ready: Vec<FlightId> = dirty
            .iter()
            .filter(|f| {
                sent.get(*f)
                    .is_none_or(|at| now.duration_since(*at) >= AVAILABILITY_INTERVAL)
            })
            .cloned()
            .collect();
        for f in &ready {
            dirty.remove(f);
            sent.insert(f.clone(), now);
        }
        sent.retain(|_, at| now.duration_since(*at) < AVAILABILITY_INTERVAL * 2);
        ready
    }
}

impl App {
    /// `flights.watch`: the board's flights, soonest first, queued on the outbox with
    /// the joining of the board's group, so that it precedes every push.
    pub fn watch_board(
        &self,
        id: Option<&Value>,
        p: params::Watch,
        outbox: &Outbox,
        boards: &mut Vec<String>,
    ) -> Result<(), AppError> {
        let code = board_airport(&p.airport)?;
        let hours = p.hours.unwrap_or(DEFAULT_HOURS);
        if !(1..=MAX_HOURS).contains(&hours) {
            return Err(AppError::InvalidParams(format!(
                "hours must be 1-{MAX_HOURS}"
            )));
        }
        if !boards.contains(&code) && boards.len() >= MAX_WATCHES {
            return Err(AppError::InvalidState(format!(
                "a connection may watch at most {MAX_WATCHES} boards"
            )));
        }
        self.boards.leave(outbox.id(), std::slice::from_ref(&code));
        let now = domain::now_ms();
        let mut groups = self.boards.groups.lock();
        // before the flights' seats are read: a change announced after this is noted
        // for the push, one announced before it is in the snapshot
        self.boards.any.store(true, Ordering::SeqCst);
        let group = groups.entry((code.clone(), hours)).or_default();
        let mut shown: Vec<(Flight, Arc<FlightSeats>)> = self
            .inventory
            .all()
            .into_iter()
            .map(|fs| (fs.flight(), fs))
            .filter(|(f, _)| in_window(f, &code, hours, now))
            .collect();
        shown.sort_by(|(a, _), (b, _)| {
            (a.departure(), a.number_order()).cmp(&(b.departure(), b.number_order()))
        });
        // a flight that entered the window since the last slide is new to the group's
        // boards too: they get it now, as the slide would have, before it counts as shown
        let mut pushes = Pushes::default();
        for (f, fs) in &shown {
            if !group.shown.contains(&f.id) && !group.watchers.is_empty() {
                let frame = changed_frame(f, fs, None);
                pushes.queue(group.watchers.iter().cloned(), &frame);
            }
        }
        group.shown.extend(shown.iter().map(|(f, _)| f.id.clone()));
        let result = Board {
            airport: code.clone(),
            flights: shown
                .into_iter()
                .map(|(flight, fs)| FlightView {
                    flight,
                    cabins: fs.available(),
                    now,
                })
                .collect(),
        };
        if let Some(id) = id {
            outbox.send(
                FrameKind::Reply,
                Utf8Bytes::from(envelope::success(id, &result)),
            );
        }
        group.watchers.push(outbox.clone());
        drop(groups);
        pushes.send();
        if !boards.contains(&code) {
            boards.push(code);
        }
        Ok(())
    }

    /// `flights.unwatch`.
    pub fn unwatch_board(
        &self,
        p: params::Unwatch,
        conn_id: u64,
        boards: &mut Vec<String>,
    ) -> Result<Done, AppError> {
        let code = board_airport(&p.airport)?;
        // a push queued before the leave precedes the reply
        self.boards.leave(conn_id, std::slice::from_ref(&code));
        boards.retain(|a| a != &code);
        Ok(Done {})
    }

    /// Sends a status or time change of `f` (the record just set) to the watchers of
    /// its seat map, `others` and the boards showing it. The frame is made, with the
    /// seats available, and queued under the boards' lock that availability pushes
    /// are read and queued under: a push that read the record or the seats before
    /// this is queued before it, never after (it used to be queued after the lock,
    /// and could follow this change with the old status), and one after it reads
    /// both as they are now.
    pub(super) fn send_with_boards(&self, fs: &FlightSeats, f: &Flight, others: Vec<Outbox>) {
        let mut groups = self.boards.groups.lock();
        let frame = changed_frame(f, fs, f.change_reason());
        let mut pushes = Pushes::default();
        let (told, queued) = fs.queue_to_watchers(|_| true, &frame);
        pushes.kick_also(queued);
        let mut out = others;
        Boards::watchers_of(&mut groups, f, domain::now_ms(), &mut out);
        pushes.queue_except(out, &frame, &told);
        drop(groups);
        pushes.send();
    }

    /// Pushes the availability of every flight that is due.
    fn push_availability(&self) {
        let now = domain::now_ms();
        for id in self.boards.due(Instant::now()) {
            let Some(fs) = self.inventory.get(id.as_str()) else {
                continue;
            };
            let mut out = Vec::new();
            // read and queued under the lock: a status change (queued under it too)
            // must neither be undone in the groups nor followed by an older copy
            let mut groups = self.boards.groups.lock();
            let f = fs.flight();
            Boards::watchers_of(&mut groups, &f, now, &mut out);
            let mut pushes = Pushes::default();
            if !out.is_empty() {
                pushes.queue(out, &changed_frame(&f, &fs, None));
            }
            drop(groups);
            pushes.send();
        }
    }

    /// Slides every group's window: flights that entered it are pushed, those more
    /// than [`KEEP_AFTER_MS`] past their departure forgotten (a flight delayed past
    /// the window's far end stays: its boards show it until then).
    fn slide_boards(&self) {
        let now = domain::now_ms();
        let mut pushes = Pushes::default();
        let mut groups = self.boards.groups.lock();
        // read under the lock: a status change noted in the groups meanwhile must not
        // be undone by an older copy
        let all: Vec<(Flight, Arc<FlightSeats>)> = self
            .inventory
            .all()
            .into_iter()
            .map(|fs| (fs.flight(), fs))
            .collect();
        for ((a, hours), g) in groups.iter_mut() {
            let mut shown = HashSet::new();
            for (f, fs) in all.iter().filter(|(f, _)| &f.from == a) {
                if in_window(f, a, *hours, now) {
                    if !g.shown.contains(&f.id) {
                        let frame = changed_frame(f, fs, None);
                        pushes.queue(g.watchers.iter().cloned(), &frame);
                    }
                    g.kept.remove(&f.id);
                    shown.insert(f.id.clone());
                } else if f.departure() < now - KEEP_AFTER_MS {
                    g.kept.remove(&f.id);
                } else if g.shown.contains(&f.id) {
                    g.keep(&f.id);
                }
            }
            g.shown = shown;
            // flights gone from the schedule
            let known: HashSet<&FlightId> = all.iter().map(|(f, _)| &f.id).collect();
            g.kept.retain(|id, _| known.contains(id));
        }
        drop(groups);
        pushes.send();
    }
}

/// Pushes coalesced availability and slides the windows, until `stop`.
pub(super) async fn run_boards(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slid = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        app.push_availability();
        if slid.elapsed() >= SLIDE_EVERY {
            slid = Instant::now();
            app.slide_boards();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_runs_from_an_hour_ago_to_hours_ahead_by_the_estimate() {
        let mut f =
            domain::schedule::demo_schedule(time::macros::date!(2026 - 12 - 01), 1).remove(0);
        let dep = f.departs_at;
        assert!(in_window(&f, &f.from.clone(), 1, dep - 3_600_000));
        assert!(!in_window(&f, &f.from.clone(), 1, dep - 3_600_001));
        assert!(in_window(&f, &f.from.clone(), 1, dep + KEEP_AFTER_MS));
        assert!(!in_window(&f, &f.from.clone(), 1, dep + KEEP_AFTER_MS + 1));
        assert!(!in_window(&f, "ZZZ", 48, dep));
        // a delay keeps it on the board longer
        f.estimated_departs_at = Some(dep + 2 * 3_600_000);
        assert!(in_window(&f, &f.from.clone(), 1, dep + KEEP_AFTER_MS + 1));
    }

    #[test]
    fn availability_is_due_once_per_interval() {
        let b = Boards::default();
        let f = FlightId::parse("JW1-20261201").unwrap();
        let t0 = Instant::now();
        b.seats_changed(&f);
        assert!(b.due(t0).is_empty(), "no board is watched");
        b.groups.lock().insert(("LHR".into(), 24), Group::default());
        b.any.store(true, Ordering::Relaxed);
        b.seats_changed(&f);
        assert_eq!(b.due(t0), vec![f.clone()]);
        b.seats_changed(&f);
        assert!(b.due(t0 + Duration::from_millis(900)).is_empty());
        assert_eq!(b.due(t0 + AVAILABILITY_INTERVAL), vec![f.clone()]);
        assert!(airport("LHR").is_some() && board_airport("lhr").unwrap() == "LHR");
        assert!(matches!(board_airport("XXX"), Err(AppError::NotFound(_))));
        assert!(matches!(
            board_airport("L1"),
            Err(AppError::InvalidParams(_))
        ));
    }
}
