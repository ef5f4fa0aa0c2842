//! The sled backend: one tree, keys prefixed by record kind, JSON values, each
//! [`Batch`] written one at a time as one atomic record of the write-ahead journal
//! (`journal`), with sled written behind it and the writes it does not have yet laid
//! over every read (`behind`); `sync` appends to the journal and fdatasyncs it. A
//! node's temporary copy of a replicated store has no journal: each batch is one
//! atomic sled batch there.
//! It also keeps, as booking and payment attempt records are written, the count of
//! bookings per status, each user's open holds and each booking's open attempts.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::behind::{be_u64, stored_u64, Behind, JOURNAL_SEQ};
use super::seen::Seen;
use super::{
    AccountEvent, AccountLine, Batch, BookingCounts, Change, HistoryEvent, IdemKey, Page, Paged,
    PaymentAttempt, PaymentMark, RefundRecord, SessionKey, SessionRecord, Store, StoreError,
    StoreResult, UserRecord,
};
use crate::domain::{
    Booking, BookingStatus, Flight, FlightId, Locator, Millis, Order, UserId, Username,
    WaitlistEntry, WaitlistStatus,
};
use dashmap::DashMap;

const USER: u8 = b'U';
const USER_ID: u8 = b'I';
const SESSION: u8 = b'S';
/// A user's sessions, by `created_at` then token hash: empty.
const USER_SESSION: u8 = b's';
/// A user's logins and logouts ([`AccountLine::Access`]), by time then sequence
/// number (the event's history key past its first byte): the event's history key.
const ACCESS_EVENT: u8 = b'a';
/// A user's failed logins ([`AccountLine::Failed`]), the same way.
const FAILED_LOGIN: u8 = b'f';
const FLIGHT: u8 = b'F';
const VERSION: u8 = b'V';
const BOOKING: u8 = b'B';
const USER_BOOKING: u8 = b'b';
const ORDER: u8 = b'O';
const USER_ORDER: u8 = b'o';
const HISTORY: u8 = b'H';
const REPLY: u8 = b'K';
const ATTEMPT: u8 = b'P';
const OPEN_ATTEMPT: u8 = b'p';
const ATTEMPT_REF: u8 = b'R';
const WEBHOOK: u8 = b'W';
const FEED: u8 = b'Q';
const REFUND: u8 = b'D';
/// The open refund of a subject: its id.
const OPEN_REFUND: u8 = b'd';
/// A refund's gateway key other than its id (an admin's retry): the refund's id.
const REFUND_KEY: u8 = b'k';
/// A gateway refund recorded as made while pending, until it settles: the record's id.
const PENDING_REFUND: u8 = b'g';
const PAYMENT_MARK: u8 = b'y';
/// A flight's last check-in sequence number.
const CHECKIN_SEQUENCE: u8 = b'n';
/// Added to sled's id generator: a data dir restored from a snapshot starts a new
/// generator, and its ids must stay above every id the snapshot holds.
pub(super) const ID_FLOOR: &[u8] = b"\0id_floor";
/// Where the last durable id reservation ends (see [`Ids`]).
const ID_NEXT: &[u8] = b"\0id_next";
/// sled's persisted id counter when the last reservation was made (see [`Ids`]).
const ID_SLED: &[u8] = b"\0id_sled";
const WAITLIST: u8 = b'L';
/// A flight's active (waiting or offered) entries, by `created_at` then id as text:
/// the entry's id.
const FLIGHT_WAITLIST: u8 = b'l';
const USER_WAITLIST: u8 = b'x';
/// A flight's waitlist line revision (see [`super::LineCheck`]), big-endian.
const LINE_REVISION: u8 = b'w';
/// A user's waitlist join revision (see [`super::UserLineCheck`]), big-endian.
const USER_LINE_REVISION: u8 = b'j';

pub struct SledStore {
    db: sled::Db,
    /// The journal and the overlay of writes not yet in sled (none for a node's
    /// temporary copy of a replicated store, which writes sled directly).
    behind: Option<Behind>,
    /// With the journal: which keys may be held, so that most lookups of absent
    /// keys skip sled.
    seen: Option<Seen>,
    tally: Tally,
    /// One write at a time: a batch's conditions and old values are read, and its
    /// writes applied, as one step. sled's transactions would do that too, but they
    /// hold a process-wide lock that every sled read then waits on (most of the
    /// server's waits under booking load, docs/benchmarks.md). Two sled batches at
    /// once would also hang sled's log (vendor/sled/VENDORED.md, change 5).
    writer: parking_lot::Mutex<()>,
    /// Odd while a batch's writes are applied (into the journal's overlay, or, for a
    /// temporary store, into sled, which applies them one key at a time,
    /// vendor/sled/VENDORED.md change 5), counting up by one at the start and end of
    /// each: a read of several keys that saw it even and unchanged around it saw each
    /// batch whole or not at all ([`SledStore::read_whole`]). sled catching up with
    /// the overlay changes no value a read sees, so it is not counted.
    applying: AtomicU64,
    /// Held shared by every write, exclusively by a snapshot at its start and end.
    snapshot_gate: parking_lot::RwLock<()>,
    /// While a snapshot copies the database: the keys written since it started.
    pub(super) written: parking_lot::Mutex<Option<HashSet<Vec<u8>>>>,
    ids: Arc<Ids>,
}

/// How many ids one reservation covers: each costs a sled flush and a file sync.
const ID_BLOCK: u64 = 1_000_000;
/// How many ids a run reserves at open. Small, because a run that crashes before
/// it gives any id skips them all (ticket numbers, an id's last ten digits, repeat
/// once ids pass ten billion); a whole block is reserved ahead at its first id.
const ID_FIRST: u64 = 1_000;
/// No id is given at or above this (far beyond any use), so the counter cannot wrap.
const ID_LIMIT: u64 = u64::MAX / 2;

/// Hands out ids (users, orders, tickets, history keys, attempts) that no run gives
/// twice, even after `kill -9`. Jetway keeps its own counter instead of sled's
/// `generate_id`: sled persists its counter with a compare-and-swap whose failure
/// during a segment rewrite goes unreported, so a later run could start below ids
/// already given. An id is given only once a reservation above it is durable
/// ([`Ids::record`]: sled flushed and its file synced). A few ([`ID_FIRST`]) are
/// reserved at open, which runs off the async workers, and [`ID_BLOCK`] more on a
/// thread of its own whenever less than half a block is left, so that no request
/// waits for a flush; a request waits only when ids are given faster than a
/// reservation is made. A run starts where the last reservation ends; a clean stop
/// gives the rest back.
///
/// An older release (rolled back to) gives ids from sled's counter plus
/// [`ID_FLOOR`], and moves sled's persisted counter when it does; this release never
/// does. So each record also holds sled's persisted counter ([`ID_SLED`]), and a
/// counter found moved at the next start means an older release gave ids meanwhile:
/// the run then starts above them, where sled's own counter would.
struct Ids {
    next: AtomicU64,
    /// Every id below this is covered by a durable reservation.
    reserved: AtomicU64,
    block: u64,
    reserving: parking_lot::Mutex<()>,
    /// The thread reserving the next block, if one was started.
    ahead: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set while a block is reserved ahead, or after that failed (the next
    /// reservation made by a request clears it).
    reserving_ahead: AtomicBool,
    /// sled's file, to sync after its flush (`None`: a test's database).
    file: Option<File>,
    db: sled::Db,
    /// Whether reservations are recorded at all (not for a temporary store, which
    /// is gone when the process is).
    durable: bool,
}

impl Ids {
    /// Starts above every id a run before gave: at the last reservation's end, or,
    /// on a data dir an older release wrote (no reservation recorded) or gave ids
    /// in since, where sled's counter plus the floor continues; and reserves the
    /// run's first `first` ids.
    fn open(db: &sled::Db, file: Option<File>, first: u64, block: u64) -> StoreResult<Arc<Self>> {
        let floor = stored_u64(db, ID_FLOOR, "id floor")?.unwrap_or(0);
        let by_sled = || {
            db.generate_id()
                .map_err(io)?
                .checked_add(floor)
                .ok_or_else(ran_out)
        };
        let start = match stored_u64(db, ID_NEXT, "id reservation")? {
            Some(next) => {
                let sled_then = stored_u64(db, ID_SLED, "id counter mark")?;
                let sled_now = db.persisted_id_counter().map_err(io)?;
                if sled_then.is_some_and(|then| sled_now <= then) {
                    next.max(floor)
                } else {
                    tracing::warn!(
                        "an older release gave ids on this data dir since this one last \
                         ran; continuing above them"
                    );
                    next.max(by_sled()?)
                }
            }
            None if db.was_recovered() => by_sled()?,
            None => floor,
        };
        if start >= ID_LIMIT {
            return Err(ran_out());
        }
        let end = start.saturating_add(first);
        let ids = Ids {
            next: AtomicU64::new(start),
            reserved: AtomicU64::new(start),
            block,
            reserving: Default::default(),
            ahead: Default::default(),
            reserving_ahead: Default::default(),
            file,
            db: db.clone(),
            durable: true,
        };
        ids.record(end)?;
        ids.reserved.store(end, Ordering::Release);
        Ok(Arc::new(ids))
    }

    /// Ids for a temporary store: nothing to outlive.
    fn in_memory(db: &sled::Db) -> Arc<Self> {
        Arc::new(Ids {
            next: AtomicU64::new(0),
            reserved: AtomicU64::new(ID_LIMIT),
            block: ID_BLOCK,
            reserving: Default::default(),
            ahead: Default::default(),
            reserving_ahead: Default::default(),
            file: None,
            db: db.clone(),
            durable: false,
        })
    }

    fn take(self: &Arc<Self>) -> StoreResult<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if id >= ID_LIMIT {
            return Err(ran_out());
        }
        let reserved = self.reserved.load(Ordering::Acquire);
        if id < reserved {
            if self.durable
                && reserved - id <= self.block / 2
                && !self.reserving_ahead.load(Ordering::Relaxed)
                && !self.reserving_ahead.swap(true, Ordering::AcqRel)
            {
                self.reserve_ahead(reserved);
            }
            return Ok(id);
        }
        self.reserve(id)?;
        Ok(id)
    }

    /// Reserves on a thread of its own a block past `seen`, the reservation's end
    /// when less than half a block was left.
    fn reserve_ahead(self: &Arc<Self>, seen: u64) {
        let ids = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("jetway-ids".into())
            .spawn(move || {
                if let Err(e) = ids.extend(seen) {
                    tracing::error!(error = %e, "reserving ids ahead failed");
                }
            });
        match spawned {
            Ok(thread) => *self.ahead.lock() = Some(thread),
            Err(e) => tracing::error!(error = %e, "no thread to reserve ids ahead"),
        }
    }

    /// Makes sure a durable reservation covers `id`: records a block past it, unless
    /// another reservation already covers it.
    fn reserve(&self, id: u64) -> StoreResult<()> {
        self.reserve_past(id, |reserved| id >= reserved)
    }

    /// Records a block past `seen`, unless the reservation has changed since (a
    /// request reserved, or the ids were given back: the end then may be below ids
    /// given, or was just recorded as where they stop).
    fn extend(&self, seen: u64) -> StoreResult<()> {
        self.reserve_past(seen, |reserved| reserved == seen)
    }

    /// Records a block past `from` if `due` says so of the reservation's end.
    fn reserve_past(&self, from: u64, due: impl FnOnce(u64) -> bool) -> StoreResult<()> {
        let _reserving = self.reserving.lock();
        if !due(self.reserved.load(Ordering::Acquire)) {
            return Ok(());
        }
        let end = from.saturating_add(self.block);
        self.record(end)?;
        self.reserved.store(end, Ordering::Release);
        self.reserving_ahead.store(false, Ordering::Release);
        Ok(())
    }

    /// Waits for a reservation made ahead to end.
    fn wait_ahead(&self) {
        let thread = self.ahead.lock().take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the thread reserving ids ahead panicked");
            }
        }
    }

    /// At a clean stop: records where the ids given end, so that the next run goes on
    /// from there instead of skipping the rest of the block (ticket numbers, the id's
    /// last ten digits, repeat only once ids pass ten billion). Takes meanwhile wait
    /// for the lock (the fast path is closed first), then reserve anew.
    fn give_back(&self) -> StoreResult<()> {
        if !self.durable {
            return Ok(());
        }
        self.wait_ahead();
        let _reserving = self.reserving.lock();
        let reserved = self.reserved.swap(0, Ordering::SeqCst);
        let end = self.next.load(Ordering::SeqCst).min(reserved);
        let recorded = self.record(end);
        // after a failed record the disk may hold either end: the next take records anew
        let bound = if recorded.is_ok() { end } else { 0 };
        self.reserved.store(bound, Ordering::SeqCst);
        recorded
    }

    /// Makes `end` the durable bound of every id given, in one sled batch (never
    /// torn), flushed and synced. An older release gives sled's counter (from above
    /// its persisted value, which is recorded) plus the floor: the floor is `end`
    /// less that value, so that its ids stay above `end` without counting sled's
    /// counter twice. The batch is the only one written to an on-disk store's sled
    /// (the journal's records reach it key by key), and `reserving` keeps two of
    /// them apart, so it takes none of sled's process-wide lock (`apply_batch`
    /// would, and every sled call after it would wait on that lock:
    /// vendor/sled/VENDORED.md, change 5).
    fn record(&self, end: u64) -> StoreResult<()> {
        let db = &self.db;
        let counter = db.persisted_id_counter().map_err(io)?;
        let mut batch = sled::Batch::default();
        batch.insert(ID_NEXT, &end.to_be_bytes());
        batch.insert(ID_FLOOR, &end.saturating_sub(counter).to_be_bytes());
        batch.insert(ID_SLED, &counter.to_be_bytes());
        db.apply_batch_unisolated(batch).map_err(io)?;
        db.flush().map_err(io)?;
        if let Some(f) = &self.file {
            f.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

fn ran_out() -> StoreError {
    StoreError::Corrupt("the id counter has run out".into())
}

/// Bookings by status, each user's holds, each booking's open payment attempts and
/// each user's open waitlist entries, changed by every write of a booking, attempt or
/// waitlist record (seeded by one pass at open), so that counting or finding them
/// scans no records.
#[derive(Default)]
struct Tally {
    statuses: [AtomicI64; BookingStatus::ALL.len()],
    /// Each user's held bookings, with when the hold expires.
    holds: DashMap<UserId, Vec<Net<Locator, Option<Millis>>>>,
    /// Each booking's open attempts (their ids).
    attempts: DashMap<Locator, Vec<Net<String, ()>>>,
    /// Each user's waiting waitlist entries (their ids).
    waiting: DashMap<UserId, Vec<Net<String, ()>>>,
    /// Each user's offered waitlist entries (the holds offered).
    offered: DashMap<UserId, Vec<Net<Locator, ()>>>,
}

/// One record counted under a key, with what the tally keeps of it. `net` counts the
/// writes that made it count minus those that ended it, so that two writes of one
/// record may reach the tally in either order; the entry goes once it drops to 0.
struct Net<I, X> {
    id: I,
    extra: X,
    net: i32,
}

/// Adds `delta` to the entry `id` under `key`, keeping `extra` from a write that adds.
fn count<K, I, X>(map: &DashMap<K, Vec<Net<I, X>>>, key: &K, id: &I, extra: X, delta: i32)
where
    K: std::hash::Hash + Eq + Clone,
    I: PartialEq + Clone,
    X: Copy,
{
    let mut list = map.entry(key.clone()).or_default();
    let i = match list.iter().position(|e| e.id == *id) {
        Some(i) => i,
        None => {
            list.push(Net {
                id: id.clone(),
                extra,
                net: 0,
            });
            list.len() - 1
        }
    };
    let e = &mut list[i];
    e.net += delta;
    if delta > 0 {
        e.extra = extra;
    }
    if e.net == 0 {
        list.swap_remove(i);
    }
    let empty = list.is_empty();
    drop(list);
    if empty {
        map.remove_if(key, |_, l| l.is_empty());
    }
}

/// Whether a tallied hold is live and unexpired at `now`.
fn held_at(e: &Net<Locator, Option<Millis>>, now: Millis) -> bool {
    e.net > 0 && e.extra.is_some_and(|t| t > now)
}

/// The fields of a booking record the tally needs.
#[derive(Deserialize)]
struct TallyFields {
    status: BookingStatus,
    user_id: UserId,
    locator: Locator,
    hold_expires_at: Option<Millis>,
}

/// The fields of a payment attempt record the tally needs.
#[derive(Deserialize)]
struct AttemptFields {
    id: String,
    locator: Locator,
    state: super::AttemptState,
}

/// The fields of a waitlist entry the tally needs.
#[derive(Deserialize)]
struct WaitlistFields {
    id: String,
    user_id: UserId,
    status: WaitlistStatus,
    locator: Option<Locator>,
}

impl Tally {
    fn seeded(db: &sled::Db) -> StoreResult<Tally> {
        let t = Tally::default();
        for prefix in [BOOKING, WAITLIST] {
            for kv in db.scan_prefix([prefix]) {
                let (k, v) = kv.map_err(io)?;
                t.change(&k, None, Some(&v));
            }
        }
        for kv in db.scan_prefix([OPEN_ATTEMPT]) {
            let (_, id) = kv.map_err(io)?;
            let k = key(ATTEMPT, &[&id]);
            if let Some(v) = db.get(&k).map_err(io)? {
                t.change(&k, None, Some(&v));
            }
        }
        Ok(t)
    }

    /// Whether a write of `k` concerns the tally.
    fn counts_key(k: &[u8]) -> bool {
        matches!(k.first(), Some(&BOOKING) | Some(&ATTEMPT) | Some(&WAITLIST))
    }

    /// The record at `k` went from `old` to `new` (`None`: absent).
    fn change(&self, k: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        match k.first() {
            Some(&BOOKING) => {
                let fields = |v: &[u8]| serde_json::from_slice::<TallyFields>(v).ok();
                for (b, delta) in [(old.and_then(fields), -1), (new.and_then(fields), 1)] {
                    if let Some(b) = b {
                        self.statuses[b.status.index()].fetch_add(delta.into(), Ordering::Relaxed);
                        if b.status == BookingStatus::Held {
                            count(
                                &self.holds,
                                &b.user_id,
                                &b.locator,
                                b.hold_expires_at,
                                delta,
                            );
                        }
                    }
                }
            }
            Some(&ATTEMPT) => {
                let fields = |v: &[u8]| serde_json::from_slice::<AttemptFields>(v).ok();
                for (a, delta) in [(old.and_then(fields), -1), (new.and_then(fields), 1)] {
                    if let Some(a) = a.filter(|a| a.state.is_open()) {
                        count(&self.attempts, &a.locator, &a.id, (), delta);
                    }
                }
            }
            Some(&WAITLIST) => {
                let fields = |v: &[u8]| serde_json::from_slice::<WaitlistFields>(v).ok();
                for (e, delta) in [(old.and_then(fields), -1), (new.and_then(fields), 1)] {
                    match e {
                        Some(e) if e.status == WaitlistStatus::Waiting => {
                            count(&self.waiting, &e.user_id, &e.id, (), delta);
                        }
                        Some(WaitlistFields {
                            user_id,
                            status: WaitlistStatus::Offered,
                            locator: Some(loc),
                            ..
                        }) => count(&self.offered, &user_id, &loc, (), delta),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn counts(&self) -> BookingCounts {
        BookingCounts(
            self.statuses
                .each_ref()
                .map(|n| n.load(Ordering::Relaxed).max(0) as u64),
        )
    }

    #[cfg(test)]
    fn open_holds(&self, user: UserId, now: Millis) -> usize {
        self.holds
            .get(&user)
            .map_or(0, |list| list.iter().filter(|e| held_at(e, now)).count())
    }

    /// The user's holds unexpired at `now` and not offered to one of their waitlist
    /// entries (an offered hold that expired counts in neither).
    fn capped_holds(&self, user: UserId, now: Millis) -> usize {
        let offered: std::collections::HashSet<Locator> =
            self.offered
                .get(&user)
                .map_or_else(Default::default, |list| {
                    list.iter()
                        .filter(|e| e.net > 0)
                        .map(|e| e.id.clone())
                        .collect()
                });
        self.holds.get(&user).map_or(0, |list| {
            list.iter()
                .filter(|e| held_at(e, now) && !offered.contains(&e.id))
                .count()
        })
    }

    fn live(map: &DashMap<UserId, Vec<Net<impl Sized, ()>>>, user: UserId) -> usize {
        map.get(&user)
            .map_or(0, |list| list.iter().filter(|e| e.net > 0).count())
    }

    fn open_attempts(&self, locator: &Locator) -> Vec<String> {
        self.attempts.get(locator).map_or_else(Vec::new, |list| {
            list.iter()
                .filter(|e| e.net > 0)
                .map(|e| e.id.clone())
                .collect()
        })
    }
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A record that cannot be read, with its key (escaped where not printable): an
/// operator can then find it.
fn naming(key: &[u8], e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(m) => {
            StoreError::Corrupt(format!("{m} (record {})", key.escape_ascii()))
        }
        other => other,
    }
}

fn reply_key(k: &IdemKey) -> Vec<u8> {
    key(
        REPLY,
        &[
            &k.user.0.to_be_bytes(),
            k.method.as_bytes(),
            &[0],
            k.request_id.as_bytes(),
        ],
    )
}

/// sled's page cache when no size is given (`--cache-mb`'s default). sled counts the
/// cache by the pages' size on disk and a cached page takes more than that in memory:
/// over 100,000 seat changes RSS grew by 210 MiB with 64 and by 120 MiB with 16
/// (docs/benchmarks.md, "Memory under churn").
pub const DEFAULT_CACHE_MB: u64 = 16;

impl SledStore {
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE_MB)
    }

    /// Opens with a page cache of `cache_mb` MiB (sled's own default is 1 GiB, which
    /// a long-running server fills with every page it ever wrote).
    pub fn open_with_cache(dir: &Path, cache_mb: u64) -> StoreResult<Self> {
        // the data dir's own entry survives a crash (its files' entries: the
        // journal's open syncs the data dir)
        super::create_dir_durably(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.saturating_mul(1 << 20))
            .open()
            .map_err(io)?;
        let data_file = File::open(dir.join("db")).map_err(io)?;
        let behind = Behind::open(db.clone(), data_file, &dir.join("journal"))?;
        let data = File::open(dir.join("db")).map_err(io)?;
        let ids = Ids::open(&db, Some(data), ID_FIRST, ID_BLOCK)?;
        // the journal is replayed into sled by now, and the overlay empty
        let seen = Seen::open(db.clone(), scanned_prefix);
        Ok(SledStore {
            tally: Tally::seeded(&db)?,
            db,
            behind: Some(behind),
            seen: Some(seen),
            writer: Default::default(),
            applying: Default::default(),
            snapshot_gate: Default::default(),
            written: Default::default(),
            ids,
        })
    }

    /// A big-endian `u64` counter; 0 when absent.
    fn counter(&self, k: &[u8], what: &str) -> StoreResult<u64> {
        Ok(self.stored_counter(k, what)?.unwrap_or(0))
    }

    /// A big-endian `u64` under `k`, if one is stored.
    fn stored_counter(&self, k: &[u8], what: &str) -> StoreResult<Option<u64>> {
        self.kv_get(k)?.map(|v| be_u64(&v, what)).transpose()
    }

    /// The bytes under `k` now: the overlay's, else sled's (absent without asking
    /// sled when the key filter never saw `k`).
    fn kv_get(&self, k: &[u8]) -> StoreResult<Option<sled::IVec>> {
        match self.behind.as_ref().and_then(|b| b.get(k)) {
            Some(v) => Ok(v),
            None if self.seen.as_ref().is_some_and(|s| !s.may_hold(k)) => Ok(None),
            None => self.db.get(k).map_err(io),
        }
    }

    /// The first refund record `wanted`, record by record.
    fn first_refund_where(
        &self,
        wanted: impl Fn(&RefundRecord) -> bool,
    ) -> StoreResult<Option<RefundRecord>> {
        for kv in self.kv_scan(&[REFUND], false) {
            let (_, v) = kv?;
            // one record this version cannot read must not hide the others
            if let Ok(r) = decode::<RefundRecord>(&v) {
                if wanted(&r) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// The records under `prefix` now (sled's, the overlay's laid over them), in key
    /// order or (`rev`) the reverse.
    fn kv_scan(&self, prefix: &[u8], rev: bool) -> Merged<'static> {
        self.kv_scan_below(prefix, None, rev)
    }

    /// [`Self::kv_scan`] of the keys under `prefix` below `below` (which starts with
    /// `prefix`), if given: a page that starts deep in a long list reads only from
    /// there, not every newer record first.
    fn kv_scan_below(&self, prefix: &[u8], below: Option<&[u8]>, rev: bool) -> Merged<'static> {
        let mut over = self
            .behind
            .as_ref()
            .map_or_else(Vec::new, |b| b.range(prefix));
        let base = match below {
            Some(end) => {
                over.retain(|(k, _)| k.as_ref() < end);
                self.db.range(prefix.to_vec()..end.to_vec())
            }
            None => self.db.scan_prefix(prefix),
        };
        let (base, over): (Box<dyn Iterator<Item = _>>, Box<dyn Iterator<Item = _>>) = match rev {
            false => (Box::new(base), Box::new(over.into_iter())),
            true => (Box::new(base.rev()), Box::new(over.into_iter().rev())),
        };
        Merged {
            base: base.peekable(),
            over: over.peekable(),
            rev,
        }
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> StoreResult<Option<T>> {
        match self.kv_get(k)? {
            Some(v) => decode(&v).map(Some).map_err(|e| naming(k, e)),
            None => Ok(None),
        }
    }

    /// Runs `read`, a read of several keys, so that it sees each batch whole or not
    /// at all: while no batch is being applied (once more if one was), else holding
    /// the writer. Readers hold neither writers nor each other up, except in that
    /// fallback, where the read waits for the batch being applied and writers wait
    /// for the read.
    fn read_whole<T>(&self, read: impl Fn() -> StoreResult<T>) -> StoreResult<T> {
        for _ in 0..2 {
            let before = self.applying.load(Ordering::SeqCst);
            if before.is_multiple_of(2) {
                let out = read();
                if self.applying.load(Ordering::SeqCst) == before {
                    return out;
                }
            }
            std::thread::yield_now();
        }
        let _one = self.writer.lock();
        read()
    }

    /// The user's line revision ([`Store::user_line`]) and `count`, read as one.
    fn with_user_revision(
        &self,
        user: UserId,
        count: impl Fn() -> usize,
    ) -> StoreResult<(Option<u64>, usize)> {
        self.read_whole(|| {
            let revision = self.stored_counter(&user_line_key(user), "user line revision")?;
            Ok((revision, count()))
        })
    }

    /// The record of kind `record` whose id the key `reference` holds.
    fn via_reference<T: DeserializeOwned>(
        &self,
        reference: &[u8],
        record: u8,
    ) -> StoreResult<Option<T>> {
        self.read_whole(|| match self.kv_get(reference)? {
            Some(id) => self.get(&key(record, &[&id])),
            None => Ok(None),
        })
    }

    /// The records of kind `record` whose ids the keys under `prefix` hold, in key
    /// order.
    fn via_index<T: DeserializeOwned>(&self, prefix: &[u8], record: u8) -> StoreResult<Vec<T>> {
        self.read_whole(|| {
            let mut out = Vec::new();
            for kv in self.kv_scan(prefix, false) {
                let (_, id) = kv?;
                out.extend(self.get(&key(record, &[&id]))?);
            }
            Ok(out)
        })
    }

    /// Every record under `prefix`, each as written (a full scan is not held to
    /// batch boundaries: it would hold writers up for as long as it takes).
    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> StoreResult<Vec<T>> {
        self.kv_scan(prefix, false)
            .map(|kv| kv.and_then(|(k, v)| decode(&v).map_err(|e| naming(&k, e))))
            .collect()
    }

    /// How many keys a user's index under `prefix` holds, and the oldest `n` of its
    /// entries (keys lead with the time), oldest first: a count as long as the index,
    /// for a cap on it. Not held to batch boundaries (`read_whole`): what it lists is
    /// deleted, and deleting twice is harmless.
    fn oldest_under(
        &self,
        prefix: &[u8],
        n: usize,
    ) -> StoreResult<(usize, Vec<(sled::IVec, sled::IVec)>)> {
        let (mut count, mut oldest) = (0, Vec::new());
        for kv in self.kv_scan(prefix, false) {
            let entry = kv?;
            if oldest.len() < n {
                oldest.push(entry);
            }
            count += 1;
        }
        Ok((count, oldest))
    }

    /// A page of the records pointed to by a user's index, newest first (index keys
    /// are the user, the record's `created_at` and the record key).
    fn newest_via_index<T: DeserializeOwned>(
        &self,
        index: u8,
        user: UserId,
        record: u8,
        page: Page,
    ) -> StoreResult<Paged<T>> {
        self.read_whole(|| {
            let prefix = key(index, &[&user.0.to_be_bytes()]);
            let before = page.before.map(|(at, id)| {
                key(
                    index,
                    &[&user.0.to_be_bytes(), &at.to_be_bytes(), id.as_bytes()],
                )
            });
            let mut out = Vec::new();
            for kv in self.kv_scan_below(&prefix, before.as_deref(), true) {
                let (k, _) = kv?;
                let id = k.get(prefix.len() + 8..).ok_or_else(|| {
                    StoreError::Corrupt(format!("index key {:?} is too short", k.as_ref()))
                })?;
                if out.len() == page.limit {
                    return Ok((out, true));
                }
                if let Some(v) = self.get(&key(record, &[id]))? {
                    out.push(v);
                }
            }
            Ok((out, false))
        })
    }
}

/// sled's records under a prefix with the overlay's laid over them, both in the same
/// direction (see [`SledStore::kv_scan`]).
struct Merged<'a> {
    base: std::iter::Peekable<SledRecords<'a>>,
    over: std::iter::Peekable<Box<dyn Iterator<Item = Overlaid> + 'a>>,
    rev: bool,
}

type SledRecords<'a> = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>;
/// A key and what the overlay holds for it (`None`: deleted).
type Overlaid = (sled::IVec, Option<sled::IVec>);

impl Iterator for Merged<'_> {
    type Item = StoreResult<(sled::IVec, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let base_first = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((b, _))), Some((o, _))) => match b.cmp(o) {
                    std::cmp::Ordering::Equal => {
                        self.base.next();
                        false
                    }
                    ord => (ord == std::cmp::Ordering::Less) != self.rev,
                },
            };
            if base_first {
                return self.base.next().map(|kv| kv.map_err(io));
            }
            if let Some((k, Some(v))) = self.over.next() {
                return Some(Ok((k, v)));
            }
        }
    }
}

/// One write of a [`Batch`], as raw key and value bytes, shared by every backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    /// Put, but the batch fails with [`StoreError::Conflict`] if the key exists.
    Create(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Writes nothing, but the batch fails with [`StoreError::Conflict`] unless the
    /// key holds this value (see [`holds`]; compare-and-swap with the writes after it).
    Expect(Vec<u8>, Vec<u8>),
    /// Writes nothing, but the batch fails with [`StoreError::Conflict`] if the key
    /// exists.
    Absent(Vec<u8>),
}

impl Op {
    pub fn key(&self) -> &Vec<u8> {
        match self {
            Op::Put(k, _) | Op::Create(k, _) | Op::Delete(k) | Op::Expect(k, _) | Op::Absent(k) => {
                k
            }
        }
    }
}

/// Whether `held`, the bytes stored under `k`, hold what an [`Op::Expect`] on `k`
/// expects: those very bytes, or the same record encoded otherwise. The expected
/// bytes re-encode a record as read, and a record written by another version (a
/// field it lacked, `null` for a field this version leaves out, a field this version
/// does not know, another order) decodes to the same record but re-encodes to other
/// bytes: compared as bytes, it could never be changed again.
pub fn holds(k: &[u8], held: &[u8], expected: &[u8]) -> bool {
    fn same<T: DeserializeOwned + PartialEq>(a: &[u8], b: &[u8]) -> bool {
        matches!((decode::<T>(a), decode::<T>(b)), (Ok(x), Ok(y)) if x == y)
    }
    held == expected
        || match k.first() {
            Some(&REFUND) => same::<RefundRecord>(held, expected),
            Some(&FLIGHT) => same::<Flight>(held, expected),
            Some(&PAYMENT_MARK) => same::<PaymentMark>(held, expected),
            Some(&WAITLIST) => same::<WaitlistEntry>(held, expected),
            Some(&ATTEMPT) => same::<PaymentAttempt>(held, expected),
            Some(&USER) => same::<UserRecord>(held, expected),
            Some(&REPLY) => same::<Value>(held, expected),
            _ => false,
        }
}

fn put_json<T: Serialize>(ops: &mut Vec<Op>, k: Vec<u8>, v: &T) -> StoreResult<()> {
    ops.push(Op::Put(k, encode(v)?));
    Ok(())
}

fn booking_ops(ops: &mut Vec<Op>, b: &Booking, new: bool) -> StoreResult<()> {
    let k = key(BOOKING, &[b.locator.as_str().as_bytes()]);
    let v = encode(b)?;
    ops.push(if new { Op::Create(k, v) } else { Op::Put(k, v) });
    let idx = key(
        USER_BOOKING,
        &[
            &b.user_id.0.to_be_bytes(),
            &b.created_at.to_be_bytes(),
            b.locator.as_str().as_bytes(),
        ],
    );
    ops.push(Op::Put(idx, Vec::new()));
    Ok(())
}

/// Marks a batch being applied in [`SledStore::applying`] for as long as it lives.
struct Applying<'a>(&'a AtomicU64);

impl<'a> Applying<'a> {
    fn start(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Applying(count)
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether a put under `k` may write again what the key holds: index entries and
/// references, written with each write of their record.
fn may_repeat(k: &[u8]) -> bool {
    matches!(
        k.first(),
        Some(
            &USER_ID
                | &USER_BOOKING
                | &USER_ORDER
                | &OPEN_ATTEMPT
                | &ATTEMPT_REF
                | &WEBHOOK
                | &FLIGHT_WAITLIST
                | &USER_WAITLIST
        )
    )
}

/// The prefix a frequent scan asks for that `k` falls under: a flight's waitlist
/// line, read by every seat change on the flight (`flight_waitlist`).
fn scanned_prefix(k: &[u8]) -> Option<&[u8]> {
    if k.first() != Some(&FLIGHT_WAITLIST) {
        return None;
    }
    let end = k.iter().skip(1).position(|&b| b == 0)? + 1;
    k.get(..=end)
}

/// The key holding a flight's version.
pub fn version_key(flight: &FlightId) -> Vec<u8> {
    key(VERSION, &[flight.as_str().as_bytes()])
}

/// A history event's key: its user, its time, then its sequence number, so that the
/// user's events list newest first on a cluster too, where each node takes sequence
/// numbers from its own block (a later event through a node whose block is lower
/// used to list below every event of a higher block). Keys written before the time
/// was part of them (user, then sequence number) sort below these, as their events
/// are older, so a data dir needs no migration.
fn history_key(user: UserId, at: Millis, seq: u64) -> Vec<u8> {
    let at = u64::try_from(at).unwrap_or(0);
    key(
        HISTORY,
        &[&user.0.to_be_bytes(), &at.to_be_bytes(), &seq.to_be_bytes()],
    )
}

fn account_line(line: AccountLine) -> u8 {
    match line {
        AccountLine::Access => ACCESS_EVENT,
        AccountLine::Failed => FAILED_LOGIN,
    }
}

fn user_session_key(s: &SessionKey) -> Vec<u8> {
    key(
        USER_SESSION,
        &[
            &s.user_id.0.to_be_bytes(),
            &s.created_at.to_be_bytes(),
            s.token_hash.as_bytes(),
        ],
    )
}

/// The writes of a batch; `history_ids` gives each event its sequence number.
pub fn batch_ops(batch: &Batch, history_ids: &[u64]) -> StoreResult<Vec<Op>> {
    let mut ops = Vec::new();
    // before the users' writes: each compares with the record as stored
    for u in &batch.users_read {
        let k = key(USER, &[u.username.as_str().as_bytes()]);
        ops.push(Op::Expect(k, encode(u)?));
    }
    for (u, new) in batch
        .new_users
        .iter()
        .map(|u| (u, true))
        .chain(batch.users.iter().map(|u| (u, false)))
    {
        let k = key(USER, &[u.username.as_str().as_bytes()]);
        let v = encode(u)?;
        ops.push(if new { Op::Create(k, v) } else { Op::Put(k, v) });
        ops.push(Op::Put(
            key(USER_ID, &[&u.id.0.to_be_bytes()]),
            u.username.as_str().as_bytes().to_vec(),
        ));
    }
    for name in &batch.retired_names {
        ops.push(Op::Delete(key(USER, &[name.as_str().as_bytes()])));
    }
    for s in &batch.sessions {
        put_json(&mut ops, key(SESSION, &[s.token_hash.as_bytes()]), s)?;
        ops.push(Op::Put(user_session_key(&s.key()), Vec::new()));
    }
    for s in &batch.revoke_sessions {
        ops.push(Op::Delete(key(SESSION, &[s.token_hash.as_bytes()])));
        ops.push(Op::Delete(user_session_key(s)));
    }
    for f in &batch.new_flights {
        let k = key(FLIGHT, &[f.id.as_str().as_bytes()]);
        ops.push(Op::Create(k, encode(f)?));
    }
    for f in &batch.flights_read {
        ops.push(Op::Expect(
            key(FLIGHT, &[f.id.as_str().as_bytes()]),
            encode(f)?,
        ));
    }
    for f in &batch.flights {
        put_json(&mut ops, key(FLIGHT, &[f.id.as_str().as_bytes()]), f)?;
    }
    for (f, v) in &batch.versions {
        ops.push(Op::Put(version_key(f), v.to_be_bytes().to_vec()));
    }
    for (f, n) in &batch.checkin_sequences {
        ops.push(Op::Put(
            key(CHECKIN_SEQUENCE, &[f.as_str().as_bytes()]),
            n.to_be_bytes().to_vec(),
        ));
    }
    if let Some(feed) = &batch.seat_feed {
        put_json(
            &mut ops,
            key(FEED, &[feed.flight.as_str().as_bytes()]),
            feed,
        )?;
    }
    for b in &batch.new_bookings {
        booking_ops(&mut ops, b, true)?;
    }
    for b in &batch.bookings {
        booking_ops(&mut ops, b, false)?;
    }
    for (o, new) in batch
        .new_orders
        .iter()
        .map(|o| (o, true))
        .chain(batch.orders.iter().map(|o| (o, false)))
    {
        let k = key(ORDER, &[o.order_id.as_bytes()]);
        let v = encode(o)?;
        ops.push(if new { Op::Create(k, v) } else { Op::Put(k, v) });
        let idx = key(
            USER_ORDER,
            &[
                &o.user_id.0.to_be_bytes(),
                &o.created_at.to_be_bytes(),
                o.order_id.as_bytes(),
            ],
        );
        ops.push(Op::Put(idx, Vec::new()));
    }
    for ((user, ev), seq) in batch.events.iter().zip(history_ids) {
        let k = history_key(*user, ev.at, *seq);
        if let Some(line) = AccountLine::of(&ev.kind) {
            // the line's key: the history key's user, time and sequence number
            let mut index = k.clone();
            index[0] = account_line(line);
            ops.push(Op::Put(index, k.clone()));
        }
        put_json(&mut ops, k, ev)?;
    }
    for e in &batch.pruned_events {
        ops.push(Op::Delete(e.index.clone()));
        ops.push(Op::Delete(e.history.clone()));
    }
    for (k, read) in &batch.replies_read {
        ops.push(match read {
            Some(v) => Op::Expect(reply_key(k), encode(v)?),
            None => Op::Absent(reply_key(k)),
        });
    }
    for (k, memo) in &batch.replies {
        ops.push(Op::Put(reply_key(k), memo.0.clone()));
    }
    for (k, memo) in &batch.first_replies {
        ops.push(Op::Create(reply_key(k), memo.0.clone()));
    }
    for a in &batch.attempts_read {
        ops.push(Op::Expect(key(ATTEMPT, &[a.id.as_bytes()]), encode(a)?));
    }
    for a in &batch.attempts {
        put_json(&mut ops, key(ATTEMPT, &[a.id.as_bytes()]), a)?;
        let open = key(
            OPEN_ATTEMPT,
            &[&a.created_at.to_be_bytes(), a.id.as_bytes()],
        );
        if a.is_open() {
            ops.push(Op::Put(open, a.id.as_bytes().to_vec()));
        } else {
            ops.push(Op::Delete(open));
        }
        if let Some(r) = &a.payment_ref {
            ops.push(Op::Put(
                key(ATTEMPT_REF, &[r.as_bytes()]),
                a.id.as_bytes().to_vec(),
            ));
        }
    }
    for r in &batch.refunds_read {
        ops.push(Op::Expect(key(REFUND, &[r.id.as_bytes()]), encode(r)?));
    }
    for subject in &batch.refunds_absent {
        ops.push(Op::Absent(key(OPEN_REFUND, &[subject.as_bytes()])));
    }
    for (r, new) in batch
        .new_refunds
        .iter()
        .map(|r| (r, true))
        .chain(batch.refunds.iter().map(|r| (r, false)))
    {
        put_json(&mut ops, key(REFUND, &[r.id.as_bytes()]), r)?;
        if let Some(k) = &r.gateway_key {
            ops.push(Op::Put(
                key(REFUND_KEY, &[k.as_bytes()]),
                r.id.as_bytes().to_vec(),
            ));
        }
        if let Some(made) = r.made_ref.as_ref().filter(|_| r.done && r.made_pending) {
            ops.push(Op::Put(
                key(PENDING_REFUND, &[made.as_bytes()]),
                r.id.as_bytes().to_vec(),
            ));
        }
        let open = key(OPEN_REFUND, &[r.subject().as_bytes()]);
        let id = r.id.as_bytes().to_vec();
        match (new, r.done) {
            (true, true) => ops.push(Op::Delete(open)),
            (true, false) => ops.push(Op::Create(open, id)),
            (false, false) => ops.push(Op::Expect(open, id)),
            (false, true) => {
                ops.push(Op::Expect(open.clone(), id));
                ops.push(Op::Delete(open));
            }
        }
    }
    let mark_key = |loc: &Locator| key(PAYMENT_MARK, &[loc.as_str().as_bytes()]);
    for m in &batch.new_marks {
        ops.push(Op::Create(mark_key(&m.locator), encode(m)?));
    }
    for (lapsed, m) in &batch.marks {
        ops.push(Op::Expect(mark_key(&lapsed.locator), encode(lapsed)?));
        ops.push(Op::Put(mark_key(&m.locator), encode(m)?));
    }
    for m in &batch.unmarks {
        ops.push(Op::Expect(mark_key(&m.locator), encode(m)?));
        ops.push(Op::Delete(mark_key(&m.locator)));
    }
    for (loc, read) in &batch.marks_read {
        ops.push(match read {
            Some(m) => Op::Expect(mark_key(loc), encode(m)?),
            None => Op::Absent(mark_key(loc)),
        });
    }
    for l in &batch.lines {
        let k = key(LINE_REVISION, &[l.flight.as_str().as_bytes()]);
        revision_ops(&mut ops, k, l.read, l.advance);
    }
    for l in &batch.user_lines {
        revision_ops(&mut ops, user_line_key(l.user), l.read, true);
    }
    for g in &batch.settled_refunds {
        ops.push(Op::Delete(key(PENDING_REFUND, &[g.as_bytes()])));
    }
    for e in &batch.webhook_events {
        ops.push(Op::Put(key(WEBHOOK, &[e.as_bytes()]), Vec::new()));
    }
    for e in &batch.waitlist_read {
        ops.push(Op::Expect(key(WAITLIST, &[e.id.as_bytes()]), encode(e)?));
    }
    for e in &batch.waitlist {
        waitlist_ops(&mut ops, e)?;
    }
    Ok(ops)
}

/// The ops of a revision read as `read` (`None`: never written), kept (the write
/// fails if it changed meanwhile) and advanced by one if `advance`.
fn revision_ops(ops: &mut Vec<Op>, k: Vec<u8>, read: Option<u64>, advance: bool) {
    let at = |r: u64| r.to_be_bytes().to_vec();
    match (read, advance) {
        (None, true) => ops.push(Op::Create(k, at(1))),
        (None, false) => ops.push(Op::Create(k, at(0))),
        (Some(r), advance) => {
            ops.push(Op::Expect(k.clone(), at(r)));
            if advance {
                ops.push(Op::Put(k, at(r + 1)));
            }
        }
    }
}

fn user_line_key(user: UserId) -> Vec<u8> {
    key(USER_LINE_REVISION, &[&user.0.to_be_bytes()])
}

fn waitlist_ops(ops: &mut Vec<Op>, e: &WaitlistEntry) -> StoreResult<()> {
    put_json(ops, key(WAITLIST, &[e.id.as_bytes()]), e)?;
    let line = key(
        FLIGHT_WAITLIST,
        &[
            e.flight_id.as_str().as_bytes(),
            &[0],
            &e.created_at.to_be_bytes(),
            e.id.as_bytes(),
        ],
    );
    ops.push(match e.status.is_active() {
        true => Op::Put(line, e.id.as_bytes().to_vec()),
        false => Op::Delete(line),
    });
    let mine = key(
        USER_WAITLIST,
        &[
            &e.user_id.0.to_be_bytes(),
            &e.created_at.to_be_bytes(),
            e.id.as_bytes(),
        ],
    );
    ops.push(Op::Put(mine, Vec::new()));
    Ok(())
}

/// What a written key means to the rest of a node, for the records that other nodes
/// must react to; `None` for every other key.
pub fn decode_change(k: &[u8], value: Option<&[u8]>) -> Option<Change> {
    if let Some((node, flight)) = super::parse_presence_key(k) {
        return Some(Change::Presence {
            node,
            flight,
            viewers: super::presence_count(value),
        });
    }
    let (&kind, rest) = k.split_first()?;
    let parsed = match (kind, value) {
        (FLIGHT, Some(v)) => decode(v).map(Change::Flight),
        (BOOKING, Some(v)) => decode(v).map(Change::Booking),
        (FEED, Some(v)) => decode(v).map(Change::Seats),
        (WAITLIST, Some(v)) => decode(v).map(Change::Waitlist),
        (SESSION, None) => Ok(Change::SessionEnded(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        _ => return None,
    };
    parsed
        .map_err(|e| tracing::error!(error = %e, "undecodable replicated record"))
        .ok()
}

impl SledStore {
    /// The bytes stored under `k`.
    pub fn raw(&self, k: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.kv_get(k)?.map(|v| v.to_vec()))
    }

    /// A store in memory only (deleted when dropped): a node's copy of a replicated store.
    pub fn temporary() -> StoreResult<Self> {
        let db = sled::Config::new().temporary(true).open().map_err(io)?;
        Ok(SledStore {
            ids: Ids::in_memory(&db),
            db,
            behind: None,
            seen: None,
            tally: Tally::default(),
            writer: Default::default(),
            applying: Default::default(),
            snapshot_gate: Default::default(),
            written: Default::default(),
        })
    }

    /// The user's bookings held and unexpired at `now` (the cap reads
    /// [`Store::capped_holds`]).
    #[cfg(test)]
    pub fn open_holds(&self, user: UserId, now: Millis) -> usize {
        self.tally.open_holds(user, now)
    }

    /// The holds offered to the user's waitlist entries still `offered`.
    #[cfg(test)]
    pub fn offered_holds(&self, user: UserId) -> usize {
        Tally::live(&self.tally.offered, user)
    }

    /// Tells a snapshot being copied which keys a write changed (call it holding
    /// `snapshot_gate` shared).
    fn note_written<'a>(&self, keys: impl Iterator<Item = &'a Vec<u8>>) {
        if let Some(set) = self.written.lock().as_mut() {
            set.extend(keys.cloned());
        }
    }

    /// Applies raw puts (`Some`) and deletes (`None`) atomically.
    pub fn apply_raw(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> StoreResult<()> {
        let _gate = self.snapshot_gate.read();
        let ops: Vec<Op> = writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Op::Put(k.clone(), v.clone()),
                None => Op::Delete(k.clone()),
            })
            .collect();
        self.apply(&ops)
    }

    /// Checks the conditions of `ops` and applies their writes as one batch: to the
    /// journal and its overlay (sled written behind), or, for a temporary store, as
    /// one sled batch (call it holding `snapshot_gate` shared). A put of what the key
    /// already holds (an index entry or reference written again as it is, on each
    /// write of its record) writes nothing. Only such puts, the conditions and (with
    /// a journal) the counted records' old values read the store first: every read
    /// here is paid by all writers.
    fn apply(&self, ops: &[Op]) -> StoreResult<()> {
        let _one = self.writer.lock();
        let journaled = self.behind.is_some();
        // what the ops before have left under a key, ahead of the store
        let mut ahead: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        // the keys written, in order, each once
        let mut order: Vec<&[u8]> = Vec::new();
        // the counted records' values before the batch
        let mut before: Vec<(&[u8], Option<sled::IVec>)> = Vec::new();
        for op in ops {
            let k = op.key().as_slice();
            let counted = journaled && Tally::counts_key(k);
            let read = counted
                || match op {
                    Op::Put(..) => may_repeat(k),
                    Op::Delete(_) => false,
                    Op::Create(..) | Op::Expect(..) | Op::Absent(_) => true,
                };
            let old = match ahead.get(k) {
                Some(v) => v.map(sled::IVec::from),
                None if read => {
                    let old = self.kv_get(k)?;
                    // a first op that changed nothing leaves the key out of `ahead`
                    if counted && !before.iter().any(|(b, _)| *b == k) {
                        before.push((k, old.clone()));
                    }
                    old
                }
                None => None,
            };
            let new = match op {
                Op::Put(_, v) if old.as_deref() == Some(v.as_slice()) => continue,
                Op::Put(_, v) => Some(v.as_slice()),
                Op::Create(_, v) if old.is_none() => Some(v.as_slice()),
                Op::Create(..) => return Err(StoreError::Conflict),
                Op::Delete(_) => None,
                Op::Expect(_, v) => match old {
                    Some(held) if holds(k, &held, v) => continue,
                    _ => return Err(StoreError::Conflict),
                },
                Op::Absent(_) if old.is_none() => continue,
                Op::Absent(_) => return Err(StoreError::Conflict),
            };
            if ahead.insert(k, new).is_none() {
                order.push(k);
            }
        }
        if ahead.is_empty() {
            return Ok(());
        }
        let _applying = Applying::start(&self.applying);
        let Some(behind) = &self.behind else {
            let mut batch = sled::Batch::default();
            for k in &order {
                match ahead.get(k).copied().flatten() {
                    Some(v) => batch.insert(*k, v),
                    None => batch.remove(*k),
                }
            }
            let applied = self.db.apply_batch_unisolated(batch);
            // noted even when it failed part-way: some of its keys may be written
            self.note_written(ops.iter().map(Op::key));
            // the counts change with the records, inside the same window
            for (k, old) in applied.map_err(io)? {
                let Some(&new) = ahead.get(k.as_ref()) else {
                    continue;
                };
                if Tally::counts_key(&k) && old.as_deref() != new {
                    self.tally.change(&k, old.as_deref(), new);
                }
            }
            return Ok(());
        };
        if let Some(seen) = &self.seen {
            for k in &order {
                if ahead.get(k).is_some_and(Option::is_some) {
                    seen.add(k);
                }
            }
        }
        behind.write(
            order
                .iter()
                .map(|k| {
                    (
                        sled::IVec::from(*k),
                        ahead.get(k).copied().flatten().map(sled::IVec::from),
                    )
                })
                .collect(),
        );
        self.note_written(ops.iter().map(Op::key));
        for (k, old) in before {
            // a key whose writes all left it as it was is not in `ahead`
            let Some(&new) = ahead.get(k) else {
                continue;
            };
            if old.as_deref() != new {
                self.tally.change(k, old.as_deref(), new);
            }
        }
        Ok(())
    }

    /// Every raw record whose key starts with `prefix`.
    pub fn raw_prefix(&self, prefix: &[u8]) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.kv_scan(prefix, false)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }
}

impl Store for SledStore {
    fn write(&self, batch: &Batch) -> StoreResult<()> {
        let _gate = self.snapshot_gate.read();
        let mut history_ids = Vec::with_capacity(batch.events.len());
        for _ in &batch.events {
            history_ids.push(self.next_id()?);
        }
        let ops = batch_ops(batch, &history_ids)?;
        self.apply(&ops)
    }

    fn sync(&self) -> StoreResult<()> {
        match &self.behind {
            Some(b) => b.sync(),
            None => self.db.flush().map(|_| ()).map_err(io),
        }
    }

    fn shut_down(&self) -> StoreResult<()> {
        self.behind.as_ref().map_or(Ok(()), Behind::close)?;
        self.ids.give_back()
    }

    fn next_id(&self) -> StoreResult<u64> {
        self.ids.take()
    }

    /// Copies the database while writes go on, noting the keys they change; then,
    /// with writes paused only for that, reads those keys again: the copy is the
    /// database as of that moment.
    fn snapshot(&self) -> StoreResult<Vec<u8>> {
        {
            let _paused = self.snapshot_gate.write();
            let mut written = self.written.lock();
            if written.is_some() {
                return Err(StoreError::Io("a backup is already being made".into()));
            }
            // writes not yet in sled are read again at the end, like those made during the copy
            let pending = self.behind.as_ref().map_or_else(Vec::new, Behind::keys);
            *written = Some(pending.into_iter().collect());
        }
        let copied: StoreResult<BTreeMap<sled::IVec, sled::IVec>> =
            self.db.iter().map(|kv| kv.map_err(io)).collect();
        let (floor, mut records, written) = {
            let _paused = self.snapshot_gate.write();
            let written = self.written.lock().take().unwrap_or_default();
            let mut records = copied?;
            for k in written.iter() {
                match self.kv_get(k)? {
                    Some(v) => records.insert(k.as_slice().into(), v),
                    None => records.remove(k.as_slice()),
                };
            }
            (self.next_id()?.saturating_add(1), records, written.len())
        };
        tracing::info!(records = records.len(), written, "backup snapshot copied");
        // the floor alone carries the ids on: a restored dir starts above it
        records.remove(ID_NEXT);
        records.remove(ID_SLED);
        // the source's journal numbering, not data (a restored dir numbers its own)
        records.remove(JOURNAL_SEQ);
        records.insert(ID_FLOOR.into(), floor.to_be_bytes().as_slice().into());
        Ok(super::snapshot::encode(records.iter()))
    }

    fn user_by_name(&self, name: &Username) -> StoreResult<Option<UserRecord>> {
        self.get(&key(USER, &[name.as_str().as_bytes()]))
    }

    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.via_reference(&key(USER_ID, &[&id.0.to_be_bytes()]), USER)
    }

    fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.get(&key(SESSION, &[token_hash.as_bytes()]))
    }

    fn sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.scan(&[SESSION])
    }

    fn oldest_account_events(
        &self,
        user: UserId,
        line: AccountLine,
        n: usize,
    ) -> StoreResult<(usize, Vec<AccountEvent>)> {
        let prefix = key(account_line(line), &[&user.0.to_be_bytes()]);
        let (count, oldest) = self.oldest_under(&prefix, n)?;
        let events = oldest.into_iter().map(|(index, history)| AccountEvent {
            index: index.to_vec(),
            history: history.to_vec(),
        });
        Ok((count, events.collect()))
    }

    fn oldest_sessions(&self, user: UserId, n: usize) -> StoreResult<(usize, Vec<SessionKey>)> {
        let prefix = key(USER_SESSION, &[&user.0.to_be_bytes()]);
        let (count, oldest) = self.oldest_under(&prefix, n)?;
        let mut sessions = Vec::with_capacity(oldest.len());
        for (k, _) in oldest {
            let rest = k.get(prefix.len()..).unwrap_or_default();
            let (at, hash) = rest.split_at_checked(8).ok_or_else(|| {
                StoreError::Corrupt(format!("session index key {:?} is too short", k.as_ref()))
            })?;
            let mut created = [0; 8];
            created.copy_from_slice(at);
            sessions.push(SessionKey {
                token_hash: String::from_utf8_lossy(hash).into_owned(),
                user_id: user,
                created_at: Millis::from_be_bytes(created),
            });
        }
        Ok((count, sessions))
    }

    fn flights(&self) -> StoreResult<Vec<Flight>> {
        self.scan(&[FLIGHT])
    }

    fn flight(&self, id: &FlightId) -> StoreResult<Option<Flight>> {
        self.get(&key(FLIGHT, &[id.as_str().as_bytes()]))
    }

    fn version(&self, flight: &FlightId) -> StoreResult<u64> {
        self.counter(&version_key(flight), "version")
    }

    fn line_revision(&self, flight: &FlightId) -> StoreResult<Option<u64>> {
        let k = key(LINE_REVISION, &[flight.as_str().as_bytes()]);
        self.stored_counter(&k, "line revision")
    }

    fn user_line(&self, user: UserId) -> StoreResult<(Option<u64>, usize)> {
        self.with_user_revision(user, || self.waiting_entries(user))
    }

    fn user_holds(&self, user: UserId, now: Millis) -> StoreResult<(Option<u64>, usize)> {
        self.with_user_revision(user, || self.tally.capped_holds(user, now))
    }

    fn checkin_sequence(&self, flight: &FlightId) -> StoreResult<u64> {
        let k = key(CHECKIN_SEQUENCE, &[flight.as_str().as_bytes()]);
        self.counter(&k, "check-in sequence")
    }

    fn booking(&self, locator: &Locator) -> StoreResult<Option<Booking>> {
        self.get(&key(BOOKING, &[locator.as_str().as_bytes()]))
    }

    fn all_bookings(&self) -> StoreResult<Vec<Booking>> {
        self.scan(&[BOOKING])
    }

    fn booking_counts(&self) -> BookingCounts {
        self.tally.counts()
    }

    fn waiting_entries(&self, user: UserId) -> usize {
        Tally::live(&self.tally.waiting, user)
    }

    fn capped_holds(&self, user: UserId, now: Millis) -> StoreResult<usize> {
        self.read_whole(|| Ok(self.tally.capped_holds(user, now)))
    }

    fn user_bookings(&self, user: UserId, page: Page) -> StoreResult<Paged<Booking>> {
        self.newest_via_index(USER_BOOKING, user, BOOKING, page)
    }

    fn order(&self, order_id: &str) -> StoreResult<Option<Order>> {
        self.get(&key(ORDER, &[order_id.as_bytes()]))
    }

    fn user_orders(&self, user: UserId, page: Page) -> StoreResult<Paged<Order>> {
        self.newest_via_index(USER_ORDER, user, ORDER, page)
    }

    fn history(&self, user: UserId, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        self.read_whole(|| {
            self.kv_scan(&key(HISTORY, &[&user.0.to_be_bytes()]), true)
                .take(limit)
                .map(|kv| kv.and_then(|(_, v)| decode(&v)))
                .collect()
        })
    }

    fn reply(&self, k: &IdemKey) -> StoreResult<Option<Value>> {
        self.get(&reply_key(k))
    }

    fn open_attempts(&self) -> StoreResult<Vec<PaymentAttempt>> {
        self.via_index(&[OPEN_ATTEMPT], ATTEMPT)
    }

    fn attempt(&self, id: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.get(&key(ATTEMPT, &[id.as_bytes()]))
    }

    fn booking_attempts(&self, locator: &Locator) -> StoreResult<Vec<PaymentAttempt>> {
        self.read_whole(|| {
            let mut out = Vec::new();
            for id in self.tally.open_attempts(locator) {
                out.extend(self.attempt(&id)?.filter(PaymentAttempt::is_open));
            }
            out.sort_by_key(|a| a.created_at);
            Ok(out)
        })
    }

    fn uncertain_failures(&self) -> StoreResult<Vec<PaymentAttempt>> {
        let all: Vec<PaymentAttempt> = self.scan(&[ATTEMPT])?;
        Ok(all
            .into_iter()
            .filter(PaymentAttempt::is_uncertain_failure)
            .collect())
    }

    fn attempt_by_ref(&self, payment_ref: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.via_reference(&key(ATTEMPT_REF, &[payment_ref.as_bytes()]), ATTEMPT)
    }

    fn webhook_seen(&self, event_id: &str) -> StoreResult<bool> {
        Ok(self
            .kv_get(&key(WEBHOOK, &[event_id.as_bytes()]))?
            .is_some())
    }

    fn open_refund(&self, subject: &str) -> StoreResult<Option<RefundRecord>> {
        self.via_reference(&key(OPEN_REFUND, &[subject.as_bytes()]), REFUND)
    }

    fn payment_mark(&self, locator: &Locator) -> StoreResult<Option<PaymentMark>> {
        self.get(&key(PAYMENT_MARK, &[locator.as_str().as_bytes()]))
    }

    fn open_refunds(&self) -> StoreResult<Vec<RefundRecord>> {
        self.via_index(&[OPEN_REFUND], REFUND)
    }

    fn pending_refunds(&self) -> StoreResult<Vec<(String, String)>> {
        self.kv_scan(&[PENDING_REFUND], false)
            .map(|kv| {
                let (k, id) = kv?;
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                Ok((text(&k[1..]), text(&id)))
            })
            .collect()
    }

    fn refund_by_key(&self, k: &str) -> StoreResult<Option<RefundRecord>> {
        if let Some(r) = self.via_reference(&key(REFUND_KEY, &[k.as_bytes()]), REFUND)? {
            return Ok(Some(r));
        }
        if let Some(r) = self.get(&key(REFUND, &[k.as_bytes()]))? {
            return Ok(Some(r));
        }
        // a key given before this index existed: looked for record by record. Only a
        // webhook about a refund that failed asks, so a scan costs little (a key
        // nobody here gave, another installation's, costs one too)
        self.first_refund_where(|r| r.keys().any(|x| x == k))
    }

    fn refund_made_by(&self, gateway_ref: &str) -> StoreResult<Option<RefundRecord>> {
        self.first_refund_where(|r| {
            r.made_ref.as_deref() == Some(gateway_ref)
                || r.failed_later.iter().any(|f| f == gateway_ref)
        })
    }

    fn waitlist_entry(&self, id: &str) -> StoreResult<Option<WaitlistEntry>> {
        self.get(&key(WAITLIST, &[id.as_bytes()]))
    }

    fn flight_waitlist(&self, flight: &FlightId) -> StoreResult<Vec<WaitlistEntry>> {
        let line = key(FLIGHT_WAITLIST, &[flight.as_str().as_bytes(), &[0]]);
        if self.seen.as_ref().is_some_and(|s| !s.may_hold(&line)) {
            return Ok(Vec::new());
        }
        self.via_index(&line, WAITLIST)
    }

    fn user_waitlist(&self, user: UserId, page: Page) -> StoreResult<Paged<WaitlistEntry>> {
        self.newest_via_index(USER_WAITLIST, user, WAITLIST, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cabin, Money, SeatId, WaitlistStatus};
    use crate::store::{AttemptState, Memo, RefundReason, Role};
    use serde_json::json;

    /// Opens the store at `dir` once the previous handle's background thread has let
    /// go of sled's file lock (it can outlive the handle's drop by a moment).
    fn open_when_free(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match SledStore::open(dir) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r.unwrap(),
            }
        }
    }

    fn user(id: u64, name: &str) -> UserRecord {
        UserRecord {
            id: UserId(id),
            username: Username::parse(name).unwrap(),
            password_hash: "h".into(),
            role: Role::Passenger,
            created_at: 0,
        }
    }

    fn booking(loc: &str, user: u64, created: i64) -> Booking {
        Booking::hold(
            Locator::parse(loc).unwrap(),
            UserId(user),
            FlightId::parse("JW1-20260101").unwrap(),
            vec![(
                SeatId::parse("12A").unwrap(),
                Cabin::Economy,
                Money::cents(1).unwrap(),
            )],
            vec!["A".into()],
            created,
            1,
        )
        .unwrap()
    }

    #[test]
    fn batches_become_the_same_raw_ops_a_mirror_can_replay() {
        let b = booking("AAAAAA", 1, 5);
        let batch = Batch {
            new_users: vec![user(1, "ada")],
            new_bookings: vec![b.clone()],
            revoke_sessions: vec![SessionKey {
                token_hash: "feed".into(),
                user_id: UserId(1),
                created_at: 5,
            }],
            ..Default::default()
        };
        let ops = batch_ops(&batch, &[]).unwrap();
        let creates = ops.iter().filter(|o| matches!(o, Op::Create(..))).count();
        assert_eq!(creates, 2, "the username and the locator must be new");
        // a mirror fed the raw writes reads them back like the store itself
        let mirror = SledStore::temporary().unwrap();
        let raw: Vec<_> = ops
            .iter()
            .map(|o| match o {
                Op::Put(k, v) | Op::Create(k, v) => (k.clone(), Some(v.clone())),
                Op::Delete(k) => (k.clone(), None),
                Op::Expect(..) | Op::Absent(_) => unreachable!("no compare in this batch"),
            })
            .collect();
        mirror.apply_raw(&raw).unwrap();
        assert_eq!(mirror.booking(&b.locator).unwrap(), Some(b.clone()));
        assert_eq!(
            mirror.user(UserId(1)).unwrap().unwrap().username.as_str(),
            "ada"
        );
        // what other nodes react to, decoded from the same bytes
        let changes: Vec<_> = raw
            .iter()
            .filter_map(|(k, v)| decode_change(k, v.as_deref()))
            .collect();
        assert!(
            matches!(&changes[..], [Change::SessionEnded(h), Change::Booking(x)] if h == "feed" && *x == b)
        );
    }

    #[test]
    fn a_short_index_key_is_an_error_not_a_panic() {
        let s = SledStore::temporary().unwrap();
        let b = booking("AAAAAA", 1, 5);
        s.write(&Batch {
            new_bookings: vec![b],
            ..Default::default()
        })
        .unwrap();
        s.db.insert(
            key(USER_BOOKING, &[&1u64.to_be_bytes(), b"x"]),
            b"".as_slice(),
        )
        .unwrap();
        assert!(matches!(
            s.user_bookings(UserId(1), Page::ALL),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A record this build cannot read is named in the error, so an operator whose
    /// server refuses to start can find it (the error used to say only what serde
    /// could not parse).
    #[test]
    fn an_unreadable_record_is_named_in_its_error() {
        let s = SledStore::temporary().unwrap();
        s.write(&Batch {
            new_bookings: vec![booking("AAAAAA", 1, 5)],
            ..Default::default()
        })
        .unwrap();
        s.db.insert(key(BOOKING, &[b"ZZZZZZ"]), b"{\"status\":7}".as_slice())
            .unwrap();
        for e in [
            s.all_bookings().map(drop).unwrap_err(),
            s.booking(&Locator::parse("ZZZZZZ").unwrap())
                .map(drop)
                .unwrap_err(),
        ] {
            match e {
                StoreError::Corrupt(m) => assert!(m.contains("(record BZZZZZZ)"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_key_written_again_as_it_is_is_left_alone() {
        let s = SledStore::temporary().unwrap();
        let b = booking("AAAAAA", 1, 5);
        s.write(&Batch {
            new_bookings: vec![b.clone()],
            ..Default::default()
        })
        .unwrap();
        let mut events = s.db.watch_prefix([]);
        let mut paid = b.clone();
        paid.status = BookingStatus::Confirmed;
        paid.hold_expires_at = None;
        s.write(&Batch {
            bookings: vec![paid.clone()],
            ..Default::default()
        })
        .unwrap();
        // a write's events are complete when it returns
        let mut written = Vec::new();
        while let Ok(e) = events.next_timeout(std::time::Duration::ZERO) {
            written.push(e.key().to_vec());
        }
        assert_eq!(
            written,
            [key(BOOKING, &[b"AAAAAA"])],
            "the booking changed, its index entry did not"
        );
        assert_eq!(s.user_bookings(UserId(1), Page::ALL).unwrap().0, [paid]);
        assert_eq!(s.open_holds(UserId(1), 0), 0, "the tally saw the change");
    }

    #[test]
    fn a_payment_mark_is_swapped_and_released_only_while_unchanged() {
        let s = SledStore::temporary().unwrap();
        let loc = Locator::parse("MARKED").unwrap();
        let mark = |attempt: &str| PaymentMark {
            locator: loc.clone(),
            attempt_id: attempt.into(),
            request_id: "r".into(),
            until: 1,
            owner: String::new(),
        };
        let held = || s.payment_mark(&loc).unwrap().map(|m| m.attempt_id);
        s.write(&Batch {
            new_marks: vec![mark("a")],
            ..Default::default()
        })
        .unwrap();
        let swap = |old: &str, new: &str| Batch {
            marks: vec![(mark(old), mark(new))],
            ..Default::default()
        };
        s.write(&swap("a", "b")).unwrap();
        assert!(matches!(
            s.write(&swap("a", "c")),
            Err(StoreError::Conflict)
        ));
        let release = |m: &str| Batch {
            unmarks: vec![mark(m)],
            ..Default::default()
        };
        assert!(matches!(s.write(&release("a")), Err(StoreError::Conflict)));
        assert_eq!(held().as_deref(), Some("b"));
        // a write decided on the mark as read: refused once another is there
        let decided_on = |read: Option<&str>| Batch {
            marks_read: vec![(loc.clone(), read.map(mark))],
            bookings: vec![booking("MARKED", 1, 5)],
            ..Default::default()
        };
        for read in [None, Some("a")] {
            assert!(matches!(
                s.write(&decided_on(read)),
                Err(StoreError::Conflict)
            ));
        }
        assert_eq!(s.booking(&loc).unwrap(), None, "nothing of it written");
        s.write(&decided_on(Some("b"))).unwrap();
        s.write(&release("b")).unwrap();
        assert_eq!(held(), None);
        assert!(matches!(
            s.write(&decided_on(Some("b"))),
            Err(StoreError::Conflict)
        ));
        s.write(&decided_on(None)).unwrap();
        assert!(s.booking(&loc).unwrap().is_some());
    }

    #[test]
    fn a_refund_is_closed_only_while_it_is_open() {
        let s = SledStore::temporary().unwrap();
        let refund = |id: &str, done: bool| RefundRecord {
            id: id.into(),
            user_id: UserId(1),
            locator: Locator::parse("REFUND").unwrap(),
            payment_ref: "pi".into(),
            amount: Money::cents(1).unwrap(),
            seats: Vec::new(),
            reason: RefundReason::Orphan {
                attempt_id: "a".into(),
            },
            done,
            created_at: 0,
            updated_at: 0,
            gateway_key: None,
            previous_keys: Vec::new(),
            resolutions: Vec::new(),
            failed_later: Vec::new(),
            made_ref: None,
            made_pending: false,
            asked_at: None,
            asked_until: None,
            refused_at: None,
            rejected_at: None,
            earlier_until: None,
        };
        let open = |id: &str| Batch {
            new_refunds: vec![refund(id, false)],
            ..Default::default()
        };
        let close = |id: &str| Batch {
            refunds: vec![refund(id, true)],
            ..Default::default()
        };
        s.write(&open("one")).unwrap();
        s.write(&close("one")).unwrap();
        assert!(matches!(s.write(&close("one")), Err(StoreError::Conflict)));
        s.write(&open("two")).unwrap();
        assert!(
            matches!(s.write(&close("one")), Err(StoreError::Conflict)),
            "a stale close leaves the next refund of its subject open"
        );
        assert_eq!(
            s.open_refund("a").unwrap().map(|r| r.id).as_deref(),
            Some("two")
        );
    }

    /// A record an older release gave a fresh key (an admin's retry) has no entry in
    /// the key index; the refund asked under that key is still found.
    #[test]
    fn a_refund_rekeyed_before_the_key_index_is_found_by_its_key() {
        let s = SledStore::temporary().unwrap();
        let refund = serde_json::json!({
            "updated_at": 0, "created_at": 0, "done": true, "id": "rf-x",
            "user_id": 1, "locator": "REFUND", "payment_ref": "pi", "seats": [],
            "amount": {"currency": "EUR", "amount": 1}, "gateway_key": "rf-y",
            "previous_keys": ["rf-x"],
            "reason": {"attempt_id": "a", "kind": "orphan"},
        });
        s.db.insert(key(REFUND, &[b"rf-x"]), refund.to_string().as_bytes())
            .unwrap();
        for k in ["rf-y", "rf-x"] {
            let found = s.refund_by_key(k).unwrap().map(|r| r.id);
            assert_eq!(found.as_deref(), Some("rf-x"), "{k}");
        }
        assert!(s.refund_by_key("rf-z").unwrap().is_none());
    }

    /// A waitlist join advances its flight's line revision; a change expecting the
    /// revision it read fails once a join came in between (see `super::LineCheck`).
    #[test]
    fn a_join_fails_a_release_decided_on_the_line_before_it() {
        let s = SledStore::temporary().unwrap();
        let flight = FlightId::parse("JW1-20260101").unwrap();
        let line = |read, advance| Batch {
            lines: vec![super::super::LineCheck {
                flight: flight.clone(),
                read,
                advance,
            }],
            ..Default::default()
        };
        s.write(&line(None, false)).unwrap();
        assert_eq!(s.line_revision(&flight).unwrap(), Some(0));
        s.write(&line(Some(0), true)).unwrap();
        assert!(matches!(
            s.write(&line(Some(0), false)),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            s.write(&line(None, true)),
            Err(StoreError::Conflict)
        ));
        s.write(&line(Some(1), false)).unwrap();
        assert_eq!(s.line_revision(&flight).unwrap(), Some(1));
    }

    /// A flight record is changed only over the record as read, and created only where
    /// missing: a change decided on a stale copy (another node's cancellation came in
    /// between) is refused instead of writing over it.
    #[test]
    fn flight_records_change_by_compare_and_swap() {
        let s = SledStore::temporary().unwrap();
        let today = crate::domain::date_of(0);
        let first = crate::domain::schedule::demo_schedule(today, 1).remove(0);
        let create = Batch {
            new_flights: vec![first.clone()],
            ..Default::default()
        };
        s.write(&create).unwrap();
        assert!(matches!(s.write(&create), Err(StoreError::Conflict)));
        let mut cancelled = first.clone();
        cancelled.cancel("weather".into(), 0).unwrap();
        let over = |read: &Flight, f: &Flight| Batch {
            flights_read: vec![read.clone()],
            flights: vec![f.clone()],
            ..Default::default()
        };
        s.write(&over(&first, &cancelled)).unwrap();
        let mut delayed = first.clone();
        delayed.departs_at += 60_000;
        assert!(matches!(
            s.write(&over(&first, &delayed)),
            Err(StoreError::Conflict)
        ));
        let kept = s.flights().unwrap();
        assert_eq!(kept, vec![cancelled]);
    }

    #[test]
    fn a_record_another_version_encoded_is_still_changed_by_compare_and_swap() {
        let s = SledStore::temporary().unwrap();
        // as another version may have written them: fields in another order, a field
        // this version does not know, `null` for one it leaves out
        let refund = json!({
            "updated_at": 0, "created_at": 0, "done": false, "future": 1, "id": "rf-x",
            "user_id": 1, "locator": "REFUND", "payment_ref": "pi", "seats": [],
            "amount": {"currency": "EUR", "amount": 1}, "gateway_key": null,
            "reason": {"attempt_id": "a", "kind": "orphan"},
        });
        let mark = json!({
            "until": 1, "request_id": "r", "attempt_id": "a", "locator": "MARKED",
            "future": [],
        });
        let entry = json!({
            "updated_at": 0, "created_at": 0, "status": "waiting", "id": "wl-x",
            "user_id": 1, "flight_id": "JW1-20260101", "cabin": "economy",
            "passengers": ["Ada"], "locator": null, "future": true,
        });
        let attempt = json!({
            "state": "action_required", "id": "pa-x", "user_id": 1, "locator": "PAYING",
            "amount": {"currency": "EUR", "amount": 1}, "request_id": "r",
            "payment_ref": "pi", "created_at": 0, "updated_at": 0, "client_secret": null,
            "future": 1,
        });
        let raw =
            |k: Vec<u8>, v: &serde_json::Value| s.db.insert(k, v.to_string().as_bytes()).unwrap();
        raw(key(REFUND, &[b"rf-x"]), &refund);
        s.db.insert(key(OPEN_REFUND, &[b"a"]), b"rf-x".as_slice())
            .unwrap();
        raw(key(PAYMENT_MARK, &[b"MARKED"]), &mark);
        raw(key(WAITLIST, &[b"wl-x"]), &entry);
        raw(key(ATTEMPT, &[b"pa-x"]), &attempt);

        let read = s.open_refund("a").unwrap().unwrap();
        let mut decided = read.clone();
        decided.gateway_key = Some("rf-y".into());
        let mut other = read.clone();
        other.updated_at = 1;
        let decide = |read: &RefundRecord| Batch {
            refunds_read: vec![read.clone()],
            refunds: vec![decided.clone()],
            ..Default::default()
        };
        assert!(matches!(
            s.write(&decide(&other)),
            Err(StoreError::Conflict)
        ));
        s.write(&decide(&read)).unwrap();
        assert_eq!(s.open_refund("a").unwrap(), Some(decided));

        let loc = Locator::parse("MARKED").unwrap();
        let held = s.payment_mark(&loc).unwrap().unwrap();
        s.write(&Batch {
            unmarks: vec![held],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.payment_mark(&loc).unwrap(), None);

        let waiting = s.waitlist_entry("wl-x").unwrap().unwrap();
        let mut expired = waiting.clone();
        expired.end(WaitlistStatus::Expired, 1).unwrap();
        s.write(&Batch {
            waitlist_read: vec![waiting],
            waitlist: vec![expired.clone()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.waitlist_entry("wl-x").unwrap(), Some(expired));

        let waiting = s.attempt("pa-x").unwrap().unwrap();
        let mut paid = waiting.clone();
        paid.state = AttemptState::Succeeded;
        let settle = |read: &PaymentAttempt| Batch {
            attempts_read: vec![read.clone()],
            attempts: vec![paid.clone()],
            ..Default::default()
        };
        let mut other = waiting.clone();
        other.updated_at = 1;
        assert!(matches!(
            s.write(&settle(&other)),
            Err(StoreError::Conflict)
        ));
        s.write(&settle(&waiting)).unwrap();
        assert_eq!(s.attempt("pa-x").unwrap(), Some(paid));

        // a reply as its writer encoded it (fields in their struct's order), expected
        // as read back (a JSON value, its keys in another order)
        let k = IdemKey {
            user: UserId(1),
            method: "booking.pay",
            request_id: "r".into(),
        };
        s.db.insert(reply_key(&k), br#"{"ok":{"z":1,"a":[2]}}"#.as_slice())
            .unwrap();
        let read = s.reply(&k).unwrap();
        let answer = |read: Option<Value>| Batch {
            replies_read: vec![(k.clone(), read)],
            replies: vec![(k.clone(), Memo(br#"{"ok":{}}"#.to_vec()))],
            ..Default::default()
        };
        assert!(matches!(s.write(&answer(None)), Err(StoreError::Conflict)));
        assert!(matches!(
            s.write(&answer(Some(json!({"ok": {}})))),
            Err(StoreError::Conflict)
        ));
        s.write(&answer(read)).unwrap();
        assert_eq!(s.reply(&k).unwrap(), Some(json!({"ok": {}})));
        let fresh = IdemKey {
            request_id: "fresh".into(),
            ..k.clone()
        };
        s.write(&Batch {
            replies_read: vec![(fresh.clone(), None)],
            replies: vec![(fresh.clone(), Memo(br#"{"ok":{}}"#.to_vec()))],
            ..Default::default()
        })
        .unwrap();
    }

    /// vendor/sled change 6: a page's fragments read back from the file (each with a
    /// first read sized by its length: at least 128 bytes) whatever their size, from
    /// under 128 bytes to past a blob's threshold, while open and after a reopen.
    #[test]
    fn sled_reads_back_fragments_of_every_size_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sizes: Vec<usize> = [1, 60, 100, 120, 128, 200, 4_000, 9_000, 140_000]
            .into_iter()
            .chain((0..40).map(|i| 80 + i * 3))
            .collect();
        let value = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (i * 7 + j) as u8).collect() };
        let check = |db: &sled::Db| {
            for (i, n) in sizes.iter().enumerate() {
                let got = db.get(format!("k{i:03}")).unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(value(i, *n).as_slice()),
                    "value {i} ({n} B)"
                );
            }
        };
        let open = || {
            sled::Config::new()
                .path(dir.path())
                .cache_capacity(4096)
                .open()
                .unwrap()
        };
        {
            let db = open();
            for round in 0..3 {
                for (i, n) in sizes.iter().enumerate() {
                    db.insert(format!("k{i:03}"), value(i + round, *n)).unwrap();
                }
            }
            for (i, n) in sizes.iter().enumerate() {
                db.insert(format!("k{i:03}"), value(i, *n)).unwrap();
            }
            check(&db);
            db.flush().unwrap();
        }
        check(&open());
    }

    #[test]
    fn booking_counts_follow_writes_raw_writes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = SledStore::temporary().unwrap();
        let held = |n| {
            let mut c = BookingCounts::default();
            c.0[BookingStatus::Held.index()] = n;
            c
        };
        let mut cancelled = booking("BBBBBB", 1, 6);
        cancelled.status = BookingStatus::Cancelled;
        let batches = [
            Batch {
                new_bookings: vec![booking("AAAAAA", 1, 5), booking("BBBBBB", 1, 6)],
                ..Default::default()
            },
            Batch {
                bookings: vec![cancelled],
                ..Default::default()
            },
        ];
        {
            let s = open_when_free(dir.path());
            s.write(&batches[0]).unwrap();
            assert_eq!(s.booking_counts(), held(2));
            // a refused batch changes nothing
            assert!(s.write(&batches[0]).is_err());
            assert_eq!(s.booking_counts(), held(2));
            s.write(&batches[1]).unwrap();
            s.sync().unwrap();
        }
        let mut expected = held(1);
        expected.0[BookingStatus::Cancelled.index()] = 1;
        let s = open_when_free(dir.path());
        assert_eq!(s.booking_counts(), expected, "seeded at open");
        assert_eq!(s.open_holds(UserId(1), 0), 1, "open holds seeded at open");
        for batch in &batches {
            mirror_write(&mirror, batch, &[]);
        }
        assert_eq!(mirror.booking_counts(), expected, "a mirror counts too");
        assert_eq!(mirror.open_holds(UserId(1), 0), 1, "and tallies open holds");
        let waiting = waiting_entry("w1", 1, FlightId::parse("JW1-20260101").unwrap());
        let joined = Batch {
            waitlist: vec![waiting],
            ..Default::default()
        };
        mirror_write(&mirror, &joined, &[]);
        assert_eq!(mirror.waiting_entries(UserId(1)), 1, "and waiting entries");
    }

    #[test]
    fn open_holds_follow_pay_expiry_time_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = booking("AAAAAA", 1, 100);
        let b = booking("BBBBBB", 1, 200);
        let mut paid = a.clone();
        paid.status = BookingStatus::Confirmed;
        paid.hold_expires_at = None;
        {
            let s = open_when_free(dir.path());
            s.write(&Batch {
                new_bookings: vec![a.clone(), b.clone(), booking("CCCCCC", 2, 100)],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.open_holds(UserId(1), 0), 2);
            assert_eq!(s.open_holds(UserId(1), 101), 1, "a's hold lapsed at 101");
            assert_eq!(s.open_holds(UserId(2), 0), 1);
            assert_eq!(s.open_holds(UserId(3), 0), 0);
            s.write(&Batch {
                bookings: vec![paid.clone()],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.open_holds(UserId(1), 0), 1, "paying ends a hold");
            s.sync().unwrap();
        }
        let s = open_when_free(dir.path());
        assert_eq!(s.open_holds(UserId(1), 0), 1, "rebuilt at open");
        assert_eq!(s.open_holds(UserId(2), 0), 1);
        let mut expired = b;
        expired.status = BookingStatus::Expired;
        s.write(&Batch {
            bookings: vec![expired],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.open_holds(UserId(1), 0), 0, "expiring ends a hold");
        assert!(!s.tally.holds.contains_key(&UserId(1)), "no empty entries");

        // two writes of one booking may reach the tally in either order
        let t = Tally::default();
        let (held, ended) = (encode(&a).unwrap(), encode(&paid).unwrap());
        let k = key(BOOKING, &[b"AAAAAA"]);
        t.change(&k, Some(&held), Some(&ended));
        t.change(&k, None, Some(&held));
        assert_eq!(t.open_holds(UserId(1), 0), 0);
        assert!(t.holds.is_empty());
    }

    fn attempt(id: &str, loc: &str, state: AttemptState, created_at: Millis) -> PaymentAttempt {
        PaymentAttempt {
            id: id.into(),
            user_id: UserId(1),
            locator: Locator::parse(loc).unwrap(),
            amount: Money::cents(1).unwrap(),
            request_id: format!("r-{id}"),
            payment_ref: None,
            state,
            created_at,
            updated_at: created_at,
            certain: false,
            payment_method: None,
            client_secret: None,
            earlier_requests: Vec::new(),
        }
    }

    fn ids(attempts: Vec<PaymentAttempt>) -> Vec<String> {
        attempts.into_iter().map(|a| a.id).collect()
    }

    #[test]
    fn a_bookings_open_attempts_follow_writes_reopen_and_a_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Locator::parse("AAAAAA").unwrap(),
            Locator::parse("BBBBBB").unwrap(),
        );
        let started = attempt("pa-2", "AAAAAA", AttemptState::Started, 20);
        let waiting = attempt("pa-1", "AAAAAA", AttemptState::ActionRequired, 10);
        let other = attempt("pa-3", "BBBBBB", AttemptState::Started, 30);
        let mut closed = started.clone();
        closed.state = AttemptState::Failed;
        let batches = [
            Batch {
                attempts: vec![started.clone(), waiting.clone(), other.clone()],
                ..Default::default()
            },
            Batch {
                attempts: vec![closed.clone()],
                ..Default::default()
            },
        ];
        {
            let s = open_when_free(dir.path());
            s.write(&batches[0]).unwrap();
            assert_eq!(
                ids(s.booking_attempts(&a).unwrap()),
                ["pa-1", "pa-2"],
                "oldest first"
            );
            assert_eq!(ids(s.booking_attempts(&b).unwrap()), ["pa-3"]);
            s.write(&batches[1]).unwrap();
            assert_eq!(
                ids(s.booking_attempts(&a).unwrap()),
                ["pa-1"],
                "closing ends it"
            );
            s.sync().unwrap();
        }
        let s = open_when_free(dir.path());
        assert_eq!(
            ids(s.booking_attempts(&a).unwrap()),
            ["pa-1"],
            "seeded at open"
        );
        assert_eq!(ids(s.booking_attempts(&b).unwrap()), ["pa-3"]);
        let mut done = other;
        done.state = AttemptState::Succeeded;
        s.write(&Batch {
            attempts: vec![done],
            ..Default::default()
        })
        .unwrap();
        assert!(s.booking_attempts(&b).unwrap().is_empty());
        assert!(!s.tally.attempts.contains_key(&b), "no empty entries");

        let mirror = SledStore::temporary().unwrap();
        for batch in &batches {
            mirror_write(&mirror, batch, &[]);
        }
        assert_eq!(
            ids(mirror.booking_attempts(&a).unwrap()),
            ["pa-1"],
            "a mirror too"
        );

        // two writes of one attempt may reach the tally in either order
        let t = Tally::default();
        let (open, ended) = (encode(&started).unwrap(), encode(&closed).unwrap());
        let k = key(ATTEMPT, &[b"pa-2"]);
        t.change(&k, Some(&open), Some(&ended));
        t.change(&k, None, Some(&open));
        assert!(t.open_attempts(&a).is_empty());
        assert!(t.attempts.is_empty());
    }

    #[test]
    fn undecodable_replicated_records_are_skipped() {
        assert!(decode_change(&key(BOOKING, &[b"AAAAAA"]), Some(b"{not json")).is_none());
        assert!(decode_change(&key(FEED, &[b"JW1"]), Some(b"[]")).is_none());
        assert!(decode_change(&[], None).is_none());
        assert!(decode_change(&key(HISTORY, &[b"x"]), Some(b"{}")).is_none());
    }

    /// A read of several keys sees each batch whole: a batch writes `a` and `b`
    /// together (sled applies them one at a time), and a reader of both never finds
    /// them apart.
    #[test]
    fn a_read_of_several_keys_never_sees_half_a_batch() {
        reads_see_whole_batches(SledStore::temporary().unwrap());
    }

    /// The same with a journal: the batches reach sled behind the reads, some while
    /// they run.
    #[test]
    fn a_read_of_several_keys_never_sees_half_a_batch_while_sled_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        reads_see_whole_batches(SledStore::open(dir.path()).unwrap());
    }

    fn reads_see_whole_batches(s: SledStore) {
        let s = std::sync::Arc::new(s);
        let pair = |n: u32| {
            let v = Some(n.to_be_bytes().to_vec());
            vec![(b"a".to_vec(), v.clone()), (b"b".to_vec(), v)]
        };
        s.apply_raw(&pair(0)).unwrap();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 1..=3_000 {
                    s.apply_raw(&pair(n)).unwrap();
                    if n % 16 == 0 {
                        s.sync().unwrap();
                    }
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let (a, b) = s.read_whole(|| Ok((s.raw(b"a")?, s.raw(b"b")?))).unwrap();
            assert_eq!(a, b, "read {reads} saw half a batch");
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
    }

    /// Writers from many threads are taken one at a time: of concurrent creations of
    /// one booking exactly one succeeds, and the counts see it once.
    #[test]
    fn concurrent_creations_of_one_record_let_exactly_one_through() {
        let s = std::sync::Arc::new(SledStore::temporary().unwrap());
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    s.write(&Batch {
                        new_bookings: vec![booking("ONEONE", 1, 5)],
                        ..Default::default()
                    })
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::Conflict))));
        assert_eq!(s.booking_counts().get(BookingStatus::Held), 1);
    }

    #[test]
    fn usernames_and_locators_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_when_free(dir.path());
        s.write(&Batch {
            new_users: vec![user(1, "ada")],
            ..Default::default()
        })
        .unwrap();
        let again = s.write(&Batch {
            new_users: vec![user(2, "ada")],
            ..Default::default()
        });
        assert!(matches!(again, Err(StoreError::Conflict)));
        assert!(
            s.user(UserId(2)).unwrap().is_none(),
            "a failed batch writes nothing"
        );
        s.write(&Batch {
            new_bookings: vec![booking("AAAAAA", 1, 5)],
            ..Default::default()
        })
        .unwrap();
        let dup = s.write(&Batch {
            new_bookings: vec![booking("AAAAAA", 1, 6)],
            versions: vec![(FlightId::parse("JW1-20260101").unwrap(), 9)],
            ..Default::default()
        });
        assert!(matches!(dup, Err(StoreError::Conflict)));
        assert_eq!(
            s.version(&FlightId::parse("JW1-20260101").unwrap())
                .unwrap(),
            0
        );
    }

    #[test]
    fn every_id_given_is_below_a_durable_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ids = Ids::open(&db, None, 4, 10).unwrap();
        let reserved = || stored_u64(&db, ID_NEXT, "").unwrap();
        assert_eq!(
            reserved(),
            Some(4),
            "the first few are reserved at open, not by the first id taken"
        );
        let mut last = None;
        for _ in 0..35 {
            let id = ids.take().unwrap();
            ids.wait_ahead();
            assert!(last.is_none_or(|l| id > l));
            let r = reserved().unwrap();
            assert!(
                r - id > 10 / 2,
                "{id}: more is reserved ahead once less than half a block is left ({r})"
            );
            // an older release gives more than its counter's mark plus the floor
            let floor = stored_u64(&db, ID_FLOOR, "").unwrap().unwrap();
            let mark = stored_u64(&db, ID_SLED, "").unwrap().unwrap();
            assert!(floor + mark >= r);
            last = Some(id);
        }
        let end = reserved().unwrap();
        drop(ids);
        // a new run starts at the reservation's end, whatever sled's counter says
        let again = Ids::open(&db, None, 4, 10).unwrap();
        assert_eq!(reserved(), Some(end + 4));
        assert_eq!(again.take().unwrap(), end);
    }

    #[test]
    fn reserving_ids_leaves_sleds_global_lock_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ids = Ids::open(&db, None, 4, 4).unwrap();
        for _ in 0..20 {
            ids.take().unwrap();
        }
        ids.wait_ahead();
        ids.give_back().unwrap();
        assert!(
            !sled::global_lock_engaged(),
            "every sled call in the process would now take its process-wide lock"
        );
    }

    #[test]
    fn ids_continue_above_those_an_older_version_gave() {
        let dir = tempfile::tempdir().unwrap();
        let given = {
            // as an older version gave them: sled's counter plus the floor
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(ID_FLOOR, &500u64.to_be_bytes()).unwrap();
            let ids: Vec<u64> = (0..3).map(|_| db.generate_id().unwrap() + 500).collect();
            db.flush().unwrap();
            ids
        };
        let open = || sled::Config::new().path(dir.path()).open().unwrap();
        for _ in 0..3 {
            // starts that give out no id
            let db = open();
            drop(Ids::open(&db, None, 10, 10).unwrap());
        }
        let db = open();
        let ids = Ids::open(&db, None, 10, 10).unwrap();
        let next = ids.take().unwrap();
        assert!(given.iter().all(|&g| next > g), "{next} after {given:?}");
        assert!(
            next < 502 + 2_000_000 + 1_000,
            "one start above sled's margin, not four: {next}"
        );
        // and an older version opening the dir again gives ids above this one's
        let floor = stored_u64(&db, ID_FLOOR, "").unwrap().unwrap();
        let mark = stored_u64(&db, ID_SLED, "").unwrap().unwrap();
        assert!(floor + mark > next);
    }

    #[test]
    fn ids_stay_above_those_an_older_release_gave_after_a_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let open = || sled::Config::new().path(dir.path()).open().unwrap();
        let end = {
            let db = open();
            let ids = Ids::open(&db, None, 10, 10).unwrap();
            for _ in 0..3 {
                ids.take().unwrap();
            }
            stored_u64(&db, ID_NEXT, "").unwrap().unwrap()
        };
        {
            // a restart of this release: no older release ran, nothing skipped
            let db = open();
            let ids = Ids::open(&db, None, 10, 10).unwrap();
            assert_eq!(ids.take().unwrap(), end);
        }
        let end = stored_u64(&open(), ID_NEXT, "").unwrap().unwrap();
        let older = {
            // rolled back: the older release gives sled's counter plus the floor
            let db = open();
            let floor = stored_u64(&db, ID_FLOOR, "").unwrap().unwrap();
            assert_eq!(floor, end);
            let given: Vec<u64> = (0..3).map(|_| db.generate_id().unwrap() + floor).collect();
            db.flush().unwrap();
            given
        };
        // and forward again
        let db = open();
        let ids = Ids::open(&db, None, 10, 10).unwrap();
        let next = ids.take().unwrap();
        assert!(older.iter().all(|&o| next > o), "{next} after {older:?}");
        drop(ids);
        let again = Ids::open(&db, None, 10, 10).unwrap();
        assert!(again.take().unwrap() > next);
    }

    #[test]
    fn a_clean_stop_gives_the_rest_of_the_block_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ids = Ids::open(&db, None, 1_000, 1_000).unwrap();
        let mut last = 0;
        for _ in 0..5 {
            last = ids.take().unwrap();
        }
        ids.give_back().unwrap();
        assert_eq!(stored_u64(&db, ID_NEXT, "").unwrap(), Some(last + 1));
        // ids taken after it are reserved anew, never below the record
        let after = ids.take().unwrap();
        assert_eq!(after, last + 1);
        assert!(stored_u64(&db, ID_NEXT, "")
            .unwrap()
            .is_some_and(|r| r > after));
        drop(ids);
        let again = Ids::open(&db, None, 1_000, 1_000).unwrap();
        assert!(again.take().unwrap() > after);
    }

    #[test]
    fn a_reservation_ahead_that_finds_the_ids_given_back_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ids = Ids::open(&db, None, 1_000, 1_000).unwrap();
        for _ in 0..400 {
            ids.take().unwrap();
        }
        let seen = ids.reserved.load(Ordering::SeqCst);
        ids.give_back().unwrap();
        assert_eq!(stored_u64(&db, ID_NEXT, "").unwrap(), Some(400));
        // a thread started before the give-back runs after it
        ids.extend(seen).unwrap();
        assert_eq!(stored_u64(&db, ID_NEXT, "").unwrap(), Some(400));
        // nor after a give-back whose record failed (the end held is then 0)
        ids.reserved.store(0, Ordering::SeqCst);
        ids.extend(seen).unwrap();
        assert_eq!(stored_u64(&db, ID_NEXT, "").unwrap(), Some(400));
    }

    #[test]
    fn ids_taken_at_once_are_all_different() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ids = Ids::open(&db, None, 7, 7).unwrap();
        let all: Vec<u64> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..50).map(|_| ids.take().unwrap()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 200);
        let max = all.iter().max().unwrap();
        assert!(stored_u64(&db, ID_NEXT, "")
            .unwrap()
            .is_some_and(|r| *max < r));
    }

    #[test]
    fn an_order_id_given_twice_never_overwrites_the_first_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_when_free(dir.path());
        let order = |user: u64, loc: &str| Order {
            order_id: "ORD0000000042".into(),
            locator: Locator::parse(loc).unwrap(),
            user_id: UserId(user),
            status: crate::domain::OrderStatus::Paid,
            amount: Money::cents(12_000).unwrap(),
            refunded: Money::ZERO,
            created_at: 5,
            charge_id: format!("pi_{loc}"),
        };
        let first = order(1, "AAAAAA");
        s.write(&Batch {
            new_orders: vec![first.clone()],
            ..Default::default()
        })
        .unwrap();
        let again = s.write(&Batch {
            new_orders: vec![order(2, "BBBBBB")],
            ..Default::default()
        });
        assert!(matches!(again, Err(StoreError::Conflict)));
        assert_eq!(s.order("ORD0000000042").unwrap(), Some(first.clone()));
        assert!(s.user_orders(UserId(2), Page::ALL).unwrap().0.is_empty());
        // an existing order is still updated in place (a refund)
        let mut refunded = first.clone();
        refunded.record_refund(Money::cents(12_000).unwrap(), true);
        s.write(&Batch {
            orders: vec![refunded.clone()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.order("ORD0000000042").unwrap(), Some(refunded));
    }

    #[test]
    fn a_page_before_a_record_starts_right_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_when_free(dir.path());
        let locs = ["AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD", "EEEEEE"];
        s.write(&Batch {
            new_bookings: locs
                .iter()
                .zip(1..)
                .map(|(l, at)| booking(l, 1, at))
                .chain([booking("ZZZZZZ", 2, 3)])
                .collect(),
            ..Default::default()
        })
        .unwrap();
        let page = |limit, before| {
            let (items, more) = s.user_bookings(UserId(1), Page { limit, before }).unwrap();
            let locs: Vec<String> = items.iter().map(|b| b.locator.to_string()).collect();
            (locs, more)
        };
        assert_eq!(
            page(2, None),
            (vec!["EEEEEE".into(), "DDDDDD".into()], true)
        );
        assert_eq!(
            page(2, Some((4, "DDDDDD"))),
            (vec!["CCCCCC".into(), "BBBBBB".into()], true)
        );
        assert_eq!(page(2, Some((2, "BBBBBB"))), (vec!["AAAAAA".into()], false));
        assert_eq!(page(2, Some((1, "AAAAAA"))), (vec![], false));
        // a cursor between records (same time, a smaller id) and one past them all
        assert_eq!(
            page(9, Some((3, "BBBBBB"))),
            (vec!["BBBBBB".into(), "AAAAAA".into()], false)
        );
        assert_eq!(page(1, Some((99, ""))), (vec!["EEEEEE".into()], true));
    }

    #[test]
    fn survives_reopen_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_when_free(dir.path());
            s.write(&Batch {
                new_users: vec![user(1, "ada")],
                new_bookings: vec![
                    booking("AAAAAA", 1, 5),
                    booking("BBBBBB", 1, 9),
                    booking("CCCCCC", 2, 7),
                ],
                events: vec![
                    (
                        UserId(1),
                        HistoryEvent {
                            at: 1,
                            kind: "first".into(),
                            locator: None,
                            detail: json!({}),
                        },
                    ),
                    (
                        UserId(1),
                        HistoryEvent {
                            at: 2,
                            kind: "second".into(),
                            locator: None,
                            detail: json!({}),
                        },
                    ),
                ],
                replies: vec![(
                    IdemKey {
                        user: UserId(1),
                        method: "booking.hold",
                        request_id: "r1".into(),
                    },
                    Memo(br#"{"ok":1}"#.to_vec()),
                )],
                versions: vec![(FlightId::parse("JW1-20260101").unwrap(), 3)],
                ..Default::default()
            })
            .unwrap();
            s.sync().unwrap();
        }
        let s = open_when_free(dir.path());
        assert_eq!(s.user(UserId(1)).unwrap().unwrap().username.as_str(), "ada");
        let mine: Vec<_> = s
            .user_bookings(UserId(1), Page::ALL)
            .unwrap()
            .0
            .into_iter()
            .map(|b| b.locator.to_string())
            .collect();
        assert_eq!(mine, ["BBBBBB", "AAAAAA"]);
        let h = s.history(UserId(1), 10).unwrap();
        assert_eq!(h[0].kind, "second");
        assert_eq!(s.history(UserId(1), 1).unwrap().len(), 1);
        assert!(s.history(UserId(2), 10).unwrap().is_empty());
        let k = IdemKey {
            user: UserId(1),
            method: "booking.hold",
            request_id: "r1".into(),
        };
        assert_eq!(s.reply(&k).unwrap(), Some(json!({"ok":1})));
        let other = IdemKey {
            user: UserId(2),
            ..k
        };
        assert_eq!(s.reply(&other).unwrap(), None);
        assert_eq!(
            s.version(&FlightId::parse("JW1-20260101").unwrap())
                .unwrap(),
            3
        );
        assert_eq!(s.all_bookings().unwrap().len(), 3);
    }

    fn raw_keys(s: &SledStore, prefix: &[u8]) -> Vec<Vec<u8>> {
        s.raw_prefix(prefix)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// A store closed while its key filter is still being filled opens again, and
    /// reads what it held (the scan's own test: `seen::dropping_the_filters_ends_the_scan`).
    #[test]
    fn a_store_closed_while_its_keys_are_scanned_can_be_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for n in 0..100_000u32 {
                s.db.insert(format!("Kz{n:08}"), b"v".as_slice()).unwrap();
            }
            s.db.flush().unwrap();
        }
        for _ in 0..3 {
            drop(open_when_free(dir.path()));
        }
        let s = open_when_free(dir.path());
        assert!(s.seen.as_ref().unwrap().scanned());
        assert_eq!(s.raw(b"Kz00099999").unwrap(), Some(b"v".to_vec()));
    }

    /// Lookups of keys never written are answered without sled (the filter of
    /// possibly held keys), while every key written reads back: from the overlay,
    /// from sled once it caught up, and after a reopen, whose filter is built from
    /// what sled holds.
    #[test]
    fn keys_never_written_skip_sled_and_every_written_key_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let written = |n: u32| format!("Kw{n:06}").into_bytes();
        let fresh = |n: u32| format!("Kf{n:06}").into_bytes();
        let check = |s: &SledStore| {
            let seen = s.seen.as_ref().unwrap();
            assert!(seen.scanned());
            let before = seen.skipped();
            for n in 0..2000 {
                assert_eq!(s.raw(&written(n)).unwrap(), Some(n.to_be_bytes().to_vec()));
                assert_eq!(s.raw(&fresh(n)).unwrap(), None);
            }
            let skipped = seen.skipped() - before;
            assert!(skipped > 1900, "{skipped} of 2000 absent keys skipped sled");
        };
        {
            let s = SledStore::open(dir.path()).unwrap();
            for chunk in 0..4u32 {
                let writes: Vec<_> = (chunk * 500..(chunk + 1) * 500)
                    .map(|n| (written(n), Some(n.to_be_bytes().to_vec())))
                    .collect();
                s.apply_raw(&writes).unwrap();
                s.sync().unwrap();
            }
            check(&s);
            s.shut_down().unwrap();
            check(&s);
        }
        check(&open_when_free(dir.path()));
    }

    /// Applies `batch`'s writes to `mirror` as an etcd store's mirror does (its
    /// conditions checked by etcd), its events numbered `history_ids`.
    fn mirror_write(mirror: &SledStore, batch: &Batch, history_ids: &[u64]) {
        let raw: Vec<_> = batch_ops(batch, history_ids)
            .unwrap()
            .into_iter()
            .filter_map(|o| match o {
                Op::Put(k, v) | Op::Create(k, v) => Some((k, Some(v))),
                Op::Delete(k) => Some((k, None)),
                Op::Expect(..) | Op::Absent(_) => None,
            })
            .collect();
        mirror.apply_raw(&raw).unwrap();
    }

    /// History lists newest first by time, whatever the sequence numbers: on a
    /// cluster a later event may get a lower one (another node's block). An event
    /// stored under the older key (no time) lists after the newer keys.
    #[test]
    fn history_lists_newest_first_by_time_across_id_blocks_and_key_formats() {
        let s = SledStore::temporary().unwrap();
        let user = UserId(7);
        let ev = |at: Millis, kind: &str| HistoryEvent {
            at,
            kind: kind.into(),
            locator: None,
            detail: json!({}),
        };
        const T: Millis = 1_780_000_000_000;
        let old = encode(&ev(T, "registered")).unwrap();
        s.db.insert(
            key(HISTORY, &[&user.0.to_be_bytes(), &90_000u64.to_be_bytes()]),
            old,
        )
        .unwrap();
        let write = |at, kind: &str, seq: u64| {
            let batch = Batch {
                events: vec![(user, ev(at, kind))],
                ..Default::default()
            };
            mirror_write(&s, &batch, &[seq]);
        };
        // node B's block is above node A's
        write(T + 1, "held", 10_001);
        write(T + 2, "cancelled", 50);
        let kinds: Vec<_> = s
            .history(user, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["cancelled", "held", "registered"]);
        assert_eq!(s.history(user, 1).unwrap()[0].kind, "cancelled");
    }

    /// Applies `batch(i)` for `i` in `0..n` to `s` as a mirror does, on a thread of
    /// its own, running `check` over and over meanwhile.
    fn racing_mirror_writes(
        s: &std::sync::Arc<SledStore>,
        n: usize,
        batch: impl Fn(usize) -> Batch + Send + 'static,
        check: impl Fn(),
    ) {
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || (0..n).for_each(|i| mirror_write(&s, &batch(i), &[])))
        };
        while !writer.is_finished() {
            check();
        }
        writer.join().unwrap();
    }

    /// A user's join revision and waiting count are read together: a reader racing
    /// the mirror's application of joins never sees a revision with the count of
    /// before it (a cluster's waitlist cap let a sixth entry through on that).
    #[test]
    fn a_users_line_revision_and_waiting_count_are_read_together() {
        let s = std::sync::Arc::new(SledStore::temporary().unwrap());
        let user = UserId(3);
        let flight = FlightId::parse("JW1-20260101").unwrap();
        let n = 3000;
        let join = move |i: usize| Batch {
            waitlist: vec![waiting_entry(&format!("w{i}"), 3, flight.clone())],
            user_lines: vec![crate::store::UserLineCheck {
                user,
                read: (i > 0).then_some(i as u64),
            }],
            ..Default::default()
        };
        racing_mirror_writes(&s, n, join, || {
            let (revision, waiting) = s.user_line(user).unwrap();
            assert_eq!(revision.unwrap_or(0) as usize, waiting);
        });
        assert_eq!(s.user_line(user).unwrap(), (Some(n as u64), n));
    }

    /// The holds counted against a user's cap are read with the offers among them: a
    /// reader racing offers (a hold and its offered entry in one batch) never sees the
    /// hold without the offer or the offer without the hold.
    #[test]
    fn a_users_holds_and_offers_among_them_are_read_together() {
        let s = std::sync::Arc::new(SledStore::temporary().unwrap());
        let user = UserId(3);
        let loc = |i: usize| {
            let a = crate::domain::ids::LOCATOR_ALPHABET;
            let name: String = (0..6)
                .map(|d| a[(i / a.len().pow(d)) % a.len()] as char)
                .collect();
            Locator::parse(&name).unwrap()
        };
        let held = move |i: usize| booking(loc(i).as_str(), 3, 1_000_000);
        let mine = (0..5).map(held).collect();
        s.write(&Batch {
            new_bookings: mine,
            ..Default::default()
        })
        .unwrap();
        let flight = FlightId::parse("JW1-20260101").unwrap();
        let n = 3000;
        let offer = move |i: usize| {
            let hold = held(5 + i);
            let mut entry = waiting_entry(&format!("w{i}"), 3, flight.clone());
            entry.offer(hold.locator.clone(), 6);
            Batch {
                new_bookings: vec![hold],
                waitlist: vec![entry],
                ..Default::default()
            }
        };
        racing_mirror_writes(&s, n, offer, || {
            assert_eq!(s.capped_holds(user, 0).unwrap(), 5)
        });
        assert_eq!((s.open_holds(user, 0), s.offered_holds(user)), (n + 5, n));
    }

    /// A hold offered to a waitlist entry that expired (the expiry job has not ended
    /// it yet) counts neither as an open hold nor as an offer among them: it used to
    /// be subtracted from the open holds anyway, which let one more hold past the cap.
    #[test]
    fn an_expired_offered_hold_takes_no_place_under_the_cap() {
        let s = SledStore::temporary().unwrap();
        let flight = FlightId::parse("JW1-20260101").unwrap();
        let offered_hold = booking("OFFERA", 3, 100);
        let mut entry = waiting_entry("w1", 3, flight);
        entry.offer(offered_hold.locator.clone(), 6);
        s.write(&Batch {
            new_bookings: vec![offered_hold, booking("PLAINA", 3, 1_000)],
            waitlist: vec![entry],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.capped_holds(UserId(3), 50).unwrap(), 1, "the offer's own");
        assert_eq!(s.capped_holds(UserId(3), 500).unwrap(), 1, "expired offer");
        assert_eq!(s.capped_holds(UserId(3), 5_000).unwrap(), 0, "both expired");
    }

    /// A waiting entry of one passenger, joined at 5.
    fn waiting_entry(id: &str, user: u64, flight_id: FlightId) -> WaitlistEntry {
        WaitlistEntry {
            id: id.into(),
            user_id: UserId(user),
            flight_id,
            cabin: Cabin::Economy,
            passengers: vec!["Ann Lee".into()],
            status: WaitlistStatus::Waiting,
            created_at: 5,
            updated_at: 5,
            locator: None,
        }
    }

    /// Each user's waiting entries and offered holds are counted as entries are
    /// written, and counted again from the records at open: a join or a hold at the
    /// cap reads none of the user's waitlist history.
    #[test]
    fn waiting_entries_and_offered_holds_follow_the_entries_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let entry =
            |id: &str, user| waiting_entry(id, user, FlightId::parse("JW1-20260101").unwrap());
        let (a, b, c) = (entry("w1", 1), entry("w2", 1), entry("w3", 2));
        let mut offered = a.clone();
        offered.offer(Locator::parse("OFFERA").unwrap(), 6);
        let mut left = b.clone();
        left.end(WaitlistStatus::Left, 6).unwrap();
        {
            let s = open_when_free(dir.path());
            s.write(&Batch {
                waitlist: vec![a.clone(), b, c],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.waiting_entries(UserId(1)), 2);
            assert_eq!(s.waiting_entries(UserId(2)), 1);
            assert_eq!(s.offered_holds(UserId(1)), 0);
            s.write(&Batch {
                waitlist: vec![offered.clone(), left],
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.waiting_entries(UserId(1)), 0, "offered and left");
            assert_eq!(s.offered_holds(UserId(1)), 1);
            s.sync().unwrap();
        }
        let s = open_when_free(dir.path());
        assert_eq!(s.waiting_entries(UserId(1)), 0, "rebuilt at open");
        assert_eq!(s.waiting_entries(UserId(2)), 1);
        assert_eq!(s.offered_holds(UserId(1)), 1);
        let mut booked = offered;
        booked.end(WaitlistStatus::Expired, 7).unwrap();
        s.write(&Batch {
            waitlist: vec![booked],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.offered_holds(UserId(1)), 0, "an offer that ended");
        assert!(
            !s.tally.offered.contains_key(&UserId(1)),
            "no empty entries"
        );
        assert!(!s.tally.waiting.contains_key(&UserId(1)));
    }

    /// A flight's waitlist line, read by every seat change, is answered empty without
    /// a scan of sled when no entry was ever written under it, and read whole (from the
    /// overlay, and after a reopen from sled) when one was.
    #[test]
    fn a_waitlist_line_never_written_is_not_scanned_and_a_written_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let busy = FlightId::parse("JW1-20260101").unwrap();
        let quiet: Vec<_> = (2..52)
            .map(|n| FlightId::parse(&format!("JW{n}-20260101")).unwrap())
            .collect();
        let entry = waiting_entry("w1", 1, busy.clone());
        let check = |s: &SledStore| {
            let seen = s.seen.as_ref().unwrap();
            assert!(seen.scanned());
            let before = seen.skipped();
            assert_eq!(s.flight_waitlist(&busy).unwrap(), vec![entry.clone()]);
            assert_eq!(seen.skipped(), before, "a written line is read");
            for f in &quiet {
                assert!(s.flight_waitlist(f).unwrap().is_empty());
            }
            let skipped = seen.skipped() - before;
            assert!(skipped >= 45, "{skipped} of 50 empty lines not scanned");
        };
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.write(&Batch {
                waitlist: vec![entry.clone()],
                ..Default::default()
            })
            .unwrap();
            check(&s);
            s.shut_down().unwrap();
        }
        check(&open_when_free(dir.path()));
    }

    /// Writes not yet in sled (no sync has handed them over) are read from the
    /// overlay: a put over sled's value, a delete hiding it, new keys merged into
    /// scans in both directions, a backup's snapshot; and once closed, sled alone holds
    /// it all, so that a release without the journal reads the same.
    #[test]
    fn writes_not_yet_in_sled_read_as_written_and_a_close_leaves_sled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let put = |k: &str, v: &str| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
        s.apply_raw(&[put("Hu1", "a"), put("Hu3", "c"), put("Hu5", "e")])
            .unwrap();
        s.shut_down().unwrap();
        assert_eq!(s.db.get("Hu3").unwrap().unwrap(), b"c".as_slice());
        s.apply_raw(&[
            put("Hu2", "b"),
            (b"Hu3".to_vec(), None),
            put("Hu5", "E"),
            put("Hu6", "f"),
        ])
        .unwrap();
        assert_eq!(
            s.db.get("Hu2").unwrap(),
            None,
            "not handed to sled before a sync"
        );
        assert_eq!(s.db.get("Hu3").unwrap().unwrap(), b"c".as_slice());
        assert_eq!(s.raw(b"Hu2").unwrap(), Some(b"b".to_vec()));
        assert_eq!(s.raw(b"Hu3").unwrap(), None);
        assert_eq!(s.raw(b"Hu5").unwrap(), Some(b"E".to_vec()));
        let keys = |v: &[&str]| v.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(raw_keys(&s, b"Hu"), keys(&["Hu1", "Hu2", "Hu5", "Hu6"]));
        let newest: Vec<Vec<u8>> = s
            .kv_scan(b"Hu", true)
            .map(|kv| kv.unwrap().0.to_vec())
            .collect();
        assert_eq!(newest, keys(&["Hu6", "Hu5", "Hu2", "Hu1"]));
        let backup = s.snapshot().unwrap();
        let records = crate::store::snapshot::decode(&backup).unwrap();
        let held: Vec<&[u8]> = records
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.starts_with(b"Hu"))
            .collect();
        assert_eq!(held, vec![&b"Hu1"[..], b"Hu2", b"Hu5", b"Hu6"]);
        s.shut_down().unwrap();
        assert_eq!(s.behind.as_ref().unwrap().journal_files(), 0);
        drop(s);
        let plain = sled::open(dir.path()).unwrap();
        let plain_keys: Vec<Vec<u8>> = plain
            .scan_prefix("Hu")
            .map(|kv| kv.unwrap().0.to_vec())
            .collect();
        assert_eq!(plain_keys, keys(&["Hu1", "Hu2", "Hu5", "Hu6"]));
        assert_eq!(plain.get("Hu5").unwrap().unwrap(), b"E".as_slice());
    }

    /// What a crash leaves in the journal (synced, not yet in sled) is in the store
    /// when it opens again, and the journal is emptied once sled holds it.
    #[test]
    fn a_journal_left_by_a_crash_is_replayed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.apply_raw(&[(b"a".to_vec(), Some(b"1".to_vec()))])
            .unwrap();
        drop(s);
        let (j, found) = super::super::journal::Journal::open(&dir.path().join("journal")).unwrap();
        assert!(found.is_empty(), "a clean close leaves nothing to replay");
        let mut bytes = Vec::new();
        super::super::journal::encode(
            7,
            &[
                (b"b".as_slice().into(), Some(b"2".as_slice().into())),
                (b"a".as_slice().into(), None),
            ],
            &mut bytes,
        );
        super::super::journal::encode(
            8,
            &[(b"b".as_slice().into(), Some(b"3".as_slice().into()))],
            &mut bytes,
        );
        j.append(&bytes, 7).unwrap();
        drop(j);
        let s = open_when_free(dir.path());
        assert_eq!(
            s.db.get("b").unwrap().unwrap(),
            b"3".as_slice(),
            "in sled itself"
        );
        assert_eq!(s.db.get("a").unwrap(), None);
        assert_eq!(s.behind.as_ref().unwrap().journal_files(), 0);
        s.apply_raw(&[(b"c".to_vec(), Some(b"4".to_vec()))])
            .unwrap();
        s.sync().unwrap();
        drop(s);
        let s = open_when_free(dir.path());
        assert_eq!(s.raw(b"b").unwrap(), Some(b"3".to_vec()));
        assert_eq!(s.raw(b"c").unwrap(), Some(b"4".to_vec()));
    }

    /// A journaled store holding one held booking of user 1, with its key and bytes.
    fn one_held_booking(dir: &Path) -> (SledStore, Booking, Vec<u8>, Vec<u8>) {
        let s = SledStore::open(dir).unwrap();
        let b = booking("AAAAAA", 1, 0);
        s.write(&Batch {
            new_bookings: vec![b.clone()],
            ..Default::default()
        })
        .unwrap();
        let k = key(BOOKING, &[b"AAAAAA"]);
        let same = s.raw(&k).unwrap().unwrap();
        (s, b, k, same)
    }

    /// A batch naming a counted record twice, first as it already is, counts its
    /// change once.
    #[test]
    fn a_record_named_twice_in_a_batch_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (s, b, k, same) = one_held_booking(dir.path());
        let mut paid = b.clone();
        paid.status = BookingStatus::Confirmed;
        s.apply_raw(&[(k.clone(), Some(same)), (k, Some(encode(&paid).unwrap()))])
            .unwrap();
        let counts = s.booking_counts();
        assert_eq!(counts.get(BookingStatus::Held), 0);
        assert_eq!(counts.get(BookingStatus::Confirmed), 1);
    }

    /// Many writes reach sled at once under a tiny page cache, with readers pulling
    /// other pages in meanwhile: sled takes them all, and the catch-up finishes. (Its
    /// first form, one sled batch, could hang: a page the batch changed, evicted and
    /// read back before the batch ended, waited for the batch. That hang was seen
    /// under load, docs/benchmarks.md, but this test does not reproduce it.)
    #[test]
    fn a_large_catch_up_under_a_tiny_cache_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open_with_cache(dir.path(), 1).unwrap());
        // a tree far larger than the cache, written to sled directly
        for n in 0..60_000u32 {
            let k = format!("P{:010}", n.wrapping_mul(2_246_822_519));
            s.db.insert(k, vec![b'o'; 300]).unwrap();
        }
        for chunk in 0..40u32 {
            let writes: Vec<_> = (0..500u32)
                .map(|i| {
                    let n = (chunk * 500 + i).wrapping_mul(2_654_435_761);
                    (
                        format!("K{n:010}").into_bytes(),
                        Some(vec![b'v'; 200 + (n % 300) as usize]),
                    )
                })
                .collect();
            s.apply_raw(&writes).unwrap();
        }
        // readers keep pulling other pages into the cache meanwhile, as a server's do
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2u32)
            .map(|r| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = r;
                    while !stop.load(Ordering::Relaxed) {
                        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        let k = format!("P{:010}", (n % 60_000).wrapping_mul(2_246_822_519));
                        s.db.get(k).unwrap();
                    }
                })
            })
            .collect();
        let (done, finished) = std::sync::mpsc::channel();
        let closing = s.clone();
        std::thread::spawn(move || {
            let _ = done.send(closing.shut_down());
        });
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("sled never caught up with the journal");
        stop.store(true, Ordering::Relaxed);
        readers.into_iter().for_each(|r| r.join().unwrap());
        result.unwrap();
        assert_eq!(s.raw_prefix(b"K").unwrap().len(), 20_000);
        assert_eq!(s.db.scan_prefix(b"K").count(), 20_000, "all in sled itself");
    }

    /// A batch that writes a counted record again as it is, with other writes,
    /// leaves the counts as they were.
    #[test]
    fn an_unchanged_record_in_a_batch_leaves_the_counts_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _, k, same) = one_held_booking(dir.path());
        s.apply_raw(&[(k, Some(same)), (b"x".to_vec(), Some(b"1".to_vec()))])
            .unwrap();
        assert_eq!(s.booking_counts().get(BookingStatus::Held), 1);
        assert_eq!(s.open_holds(UserId(1), 0), 1);
    }
}
