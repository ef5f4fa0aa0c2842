//! sled written behind the journal. A batch's key writes go to the journal's
//! buffer and to an in-memory overlay (`pending`) that every read consults before
//! sled, so the writer never touches sled's tree; a sync appends the buffer to the
//! journal and fdatasyncs it, then hands the batches to a thread of their own that
//! gathers them for up to 100 ms (asleep: a sync's hand-over does not wake it) and
//! writes them into sled (each key's last write,
//! key by key, so a key rewritten meanwhile reaches sled once), drops them from the
//! overlay, and about a second later flushes sled, syncs its file and deletes the journal
//! files sled now holds (the one being appended to stays until it is full or the
//! store closes). At open, whatever the journal still holds is written into
//! sled and flushed before anything else reads it.

use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{self, Journal, KeyWrite, Record};
use super::{StoreError, StoreResult};

/// How long sled may go unflushed while it has writes the journal also holds.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Journal bytes handed to the thread that writes sled and not yet applied, beyond
/// which a sync waits for it to catch up (bounds the overlay's memory).
const MAX_BEHIND: usize = 32 << 20;
/// How long the thread writing sled gathers records before it writes them (less when
/// a flush is due sooner, or a drain is asked for). Longer buys more (against writing
/// each sync's records at once, the median pairs/s was 1.17x at 100 ms and ~1.3x at
/// 300 ms) but holds more in memory (past the churn target's room at 250 ms):
/// docs/benchmarks.md, "The sixteenth session".
const GATHER: Duration = Duration::from_millis(100);
/// Gathering stops once this many bytes are taken (a catch-up takes no more).
const GATHER_BYTES: usize = 4 << 20;
const _: () = assert!(GATHER_BYTES < MAX_BEHIND);

/// The number of the last journal record sled holds (u64 big-endian), written with
/// the records. A run numbers its records on from it (see [`first_number`]): a
/// number used again could make stale blocks of a deleted journal file, which a crash
/// may leave in a new file's place, read as that file's records.
pub(super) const JOURNAL_SEQ: &[u8] = b"\0journal_seq";

/// The number of a run's first journal record: above the last record sled holds
/// (`stored`) and the last one replayed, and above the clock in microseconds, so that
/// a data dir of an older release (which began every run at 1) or one restored from a
/// backup does not use its old numbers again either.
fn first_number(stored: Option<u64>, replayed: u64) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
    stored
        .unwrap_or(0)
        .max(replayed)
        .max(clock)
        .saturating_add(1)
}

/// A big-endian `u64` stored under `k` in sled itself (no overlay: read at open).
pub(super) fn stored_u64(db: &sled::Db, k: &[u8], what: &str) -> StoreResult<Option<u64>> {
    db.get(k).map_err(io)?.map(|v| be_u64(&v, what)).transpose()
}

pub(super) fn be_u64(v: &[u8], what: &str) -> StoreResult<u64> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(what.into()))
}

/// A key's write not yet in sled, and the batch that made it.
struct Pending {
    seq: u64,
    value: Option<sled::IVec>,
}

/// The writes sled does not have yet: looked up by key in a hash map (every read of
/// a key asks here first; a B-tree search compared ~13 long keys for each: lookups
/// ~5 % of the server's CPU under booking load, ~8 % with the overlay's writes and
/// forgets), and in key order for scans.
#[derive(Default)]
struct Overlay {
    by_key: HashMap<sled::IVec, Pending>,
    order: BTreeSet<sled::IVec>,
}

impl Overlay {
    fn insert(&mut self, k: sled::IVec, p: Pending) {
        if let Some(old) = self.by_key.get_mut(&k) {
            *old = p;
        } else {
            self.order.insert(k.clone());
            self.by_key.insert(k, p);
        }
    }

    fn get(&self, k: &[u8]) -> Option<&Pending> {
        self.by_key.get(k)
    }

    /// Drops `k` if its write is still the one batch `seq` made.
    fn forget(&mut self, k: &[u8], seq: u64) {
        if self.by_key.get(k).is_some_and(|p| p.seq == seq) {
            self.by_key.remove(k);
            self.order.remove(k);
        }
    }
}

/// Batches written since the last sync.
#[derive(Default)]
struct Unsynced {
    bytes: Vec<u8>,
    first_seq: u64,
    records: Vec<Record>,
}

enum Msg {
    Apply(Vec<Record>, usize),
    Drain(mpsc::Sender<StoreResult<()>>),
}

struct Shared {
    db: sled::Db,
    data_file: File,
    journal: Journal,
    pending: RwLock<Overlay>,
    /// Journal bytes handed to the thread and not yet applied.
    behind: Mutex<usize>,
    caught_up: Condvar,
    /// sled could not be written or flushed: no sync succeeds any more.
    failed: AtomicBool,
    /// The thread writing sled, to wake it from a gather ([`Shared::wake`]).
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Turns of the loop writing sled (a test checks it waits after a failure).
    #[cfg(test)]
    turns: AtomicU64,
    /// Times records were written to sled.
    #[cfg(test)]
    applies: AtomicU64,
}

pub struct Behind {
    shared: Arc<Shared>,
    unsynced: Mutex<Unsynced>,
    next_seq: AtomicU64,
    /// One sync at a time, so the journal and sled get batches in order.
    syncing: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Applies `records` to `db`: each key's last write, in key order (neighbours share
/// sled's pages). Key by key, not as a sled batch: a batch keeps sled's log from
/// becoming stable until it ends, so when a page it changed is evicted from sled's
/// cache and read back before it ends, the read waits for the batch and the batch for
/// the read (a large batch under a small cache hung the server). Atomicity is not
/// needed here: the journal keeps every record until sled has them all durably.
fn apply(db: &sled::Db, records: &[Record]) -> StoreResult<()> {
    let mut last: BTreeMap<&sled::IVec, &Option<sled::IVec>> = BTreeMap::new();
    for r in records {
        for (k, v) in &r.writes {
            last.insert(k, v);
        }
    }
    for (k, v) in last {
        match v {
            Some(v) => db.insert(k, v.clone()),
            None => db.remove(k),
        }
        .map_err(io)?;
    }
    if let Some(r) = records.last() {
        db.insert(JOURNAL_SEQ, &r.seq.to_be_bytes()).map_err(io)?;
    }
    Ok(())
}

/// Makes what sled holds durable: its buffers written, its file synced.
fn flush(db: &sled::Db, data_file: &File) -> StoreResult<()> {
    db.flush().map_err(io)?;
    data_file.sync_data().map_err(io)
}

impl Behind {
    /// Replays what the journal in `dir` holds into `db`, makes it durable, and starts
    /// writing behind it.
    pub fn open(db: sled::Db, data_file: File, dir: &std::path::Path) -> StoreResult<Behind> {
        let (journal, records) = Journal::open(dir)?;
        let stored = stored_u64(&db, JOURNAL_SEQ, "the journal's last number")?;
        let first = first_number(stored, records.last().map_or(0, |r| r.seq));
        if !records.is_empty() {
            tracing::info!(
                batches = records.len(),
                "replaying the journal into the database"
            );
            for chunk in records.chunks(1024) {
                apply(&db, chunk)?;
            }
            flush(&db, &data_file)?;
        }
        journal.release_all()?;
        let shared = Arc::new(Shared {
            db,
            data_file,
            journal,
            pending: Default::default(),
            behind: Mutex::new(0),
            caught_up: Condvar::new(),
            failed: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            #[cfg(test)]
            turns: AtomicU64::new(0),
            #[cfg(test)]
            applies: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("jetway-sled".into())
                .spawn(move || shared.run(rx))
                .map_err(io)?
        };
        let _ = shared.thread.set(thread.thread().clone());
        Ok(Behind {
            shared,
            unsynced: Default::default(),
            next_seq: AtomicU64::new(first),
            syncing: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes one batch's final key writes: readers see them at once, the next
    /// [`Behind::sync`] makes them durable. Call it with writers excluded.
    pub fn write(&self, writes: Vec<KeyWrite>) {
        let mut u = self.unsynced.lock();
        // numbered under the lock that orders the journal, so that numbers follow
        // each other there (`Journal::open` checks it)
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        if u.records.is_empty() {
            u.first_seq = seq;
        }
        journal::encode(seq, &writes, &mut u.bytes);
        {
            let mut pending = self.shared.pending.write();
            for (k, v) in &writes {
                pending.insert(
                    k.clone(),
                    Pending {
                        seq,
                        value: v.clone(),
                    },
                );
            }
        }
        u.records.push(Record { seq, writes });
    }

    /// What the overlay holds for `k`: `None` if sled has its latest value, else
    /// `Some` of the value (`None` inside: deleted).
    pub fn get(&self, k: &[u8]) -> Option<Option<sled::IVec>> {
        self.shared.pending.read().get(k).map(|p| p.value.clone())
    }

    /// The overlay's keys under `prefix`, in order, with their values.
    pub fn range(&self, prefix: &[u8]) -> Vec<(sled::IVec, Option<sled::IVec>)> {
        let pending = self.shared.pending.read();
        pending
            .order
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|k| k.starts_with(prefix))
            .filter_map(|k| Some((k.clone(), pending.get(k)?.value.clone())))
            .collect()
    }

    /// Every key the overlay holds.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let pending = self.shared.pending.read();
        pending.order.iter().map(|k| k.to_vec()).collect()
    }

    /// Makes every write so far durable in the journal and hands it to the thread
    /// that writes sled. Waits while sled is far behind.
    pub fn sync(&self) -> StoreResult<()> {
        let syncing = self.syncing.lock();
        let Some(tx) = syncing.as_ref() else {
            return Err(StoreError::Io("the store is closed".into()));
        };
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(StoreError::SyncFailed);
        }
        let u = std::mem::take(&mut *self.unsynced.lock());
        if u.records.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.shared.journal.append(&u.bytes, u.first_seq) {
            // its bytes may be in the file in part: nothing may be appended after them
            self.shared.fail("appending to the journal", &e);
            return Err(e);
        }
        let size = u.bytes.len();
        let handed = {
            let mut behind = self.shared.behind.lock();
            *behind += size;
            *behind
        };
        tx.send(Msg::Apply(u.records, size))
            .map_err(|_| StoreError::Io("the database writer stopped".into()))?;
        if handed >= GATHER_BYTES {
            self.shared.wake();
        }
        let mut behind = self.shared.behind.lock();
        while *behind > MAX_BEHIND && !self.shared.failed.load(Ordering::SeqCst) {
            self.shared.caught_up.wait(&mut behind);
        }
        Ok(())
    }

    /// Waits until sled holds every write synced so far, durably.
    fn drain(&self, tx: &mpsc::Sender<Msg>) -> StoreResult<()> {
        let stopped = || StoreError::Io("the database writer stopped".into());
        let (ack, done) = mpsc::channel();
        tx.send(Msg::Drain(ack)).map_err(|_| stopped())?;
        self.shared.wake();
        done.recv().map_err(|_| stopped())?
    }

    /// Makes every write so far durable in sled itself and empties the journal, so
    /// that the data dir reads the same to a release without one. Writes after it
    /// are journaled again.
    pub fn close(&self) -> StoreResult<()> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(StoreError::SyncFailed);
        }
        self.sync()?;
        let syncing = self.syncing.lock();
        let Some(tx) = syncing.as_ref() else {
            return Ok(());
        };
        self.drain(tx)?;
        if self.unsynced.lock().records.is_empty() {
            self.shared.journal.release_all()?;
        }
        Ok(())
    }

    /// How many journal files there are.
    #[cfg(test)]
    pub fn journal_files(&self) -> usize {
        self.shared.journal.files()
    }
}

impl Drop for Behind {
    /// Makes what was written durable in sled, and stops the thread.
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "the last sync of the data dir failed");
        }
        self.syncing.lock().take();
        self.shared.wake();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// What the thread writing sled took from its queue for one catch-up.
#[derive(Default)]
struct Gathered {
    records: Vec<Record>,
    /// Their bytes, as counted against [`MAX_BEHIND`].
    size: usize,
    drains: Vec<mpsc::Sender<StoreResult<()>>>,
}

impl Gathered {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Apply(r, s) => {
                self.records.extend(r);
                self.size += s;
            }
            Msg::Drain(ack) => self.drains.push(ack),
        }
    }
}

impl Shared {
    fn run(&self, rx: mpsc::Receiver<Msg>) {
        /// A panic here fails the store instead of leaving syncs waiting for it.
        struct Panicking<'a>(&'a Shared);
        impl Drop for Panicking<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.fail(
                        "the thread writing the database",
                        &StoreError::Io("panicked".into()),
                    );
                }
            }
        }
        let _guard = Panicking(self);
        // the last batch applied, and since when sled has writes not flushed
        let mut applied = 0;
        let mut dirty: Option<Instant> = None;
        loop {
            let first = match dirty {
                Some(since) => rx.recv_timeout(FLUSH_EVERY.saturating_sub(since.elapsed())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            #[cfg(test)]
            self.turns.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let mut got = Gathered::default();
            let mut stop = false;
            match first {
                Ok(m) => got.take(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
            }
            // records gathered for a while are written to sled together: a key
            // written again meanwhile (a flight's seats, a booking moving on) reaches
            // sled once, and neighbouring keys share sled's pages
            let mut until = started + GATHER;
            if let Some(since) = dirty {
                until = until.min(since + FLUSH_EVERY);
            }
            // the gather sleeps rather than waits on the queue: a sync's records do
            // not wake this thread (a wake-up per sync cost both threads, and the
            // commit loop's before its announcements); a drain, a stop, a failure or
            // a gather's worth of bytes does ([`Shared::wake`])
            while !stop
                && !got.records.is_empty()
                && got.drains.is_empty()
                && got.size < GATHER_BYTES
                && !self.failed.load(Ordering::SeqCst)
            {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
                loop {
                    match rx.try_recv() {
                        Ok(m) => got.take(m),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            stop = true;
                            break;
                        }
                    }
                }
            }
            while got.size < GATHER_BYTES {
                match rx.try_recv() {
                    Ok(m) => got.take(m),
                    Err(_) => break,
                }
            }
            let Gathered {
                records,
                size,
                drains,
            } = got;
            // after a failure nothing more reaches sled and no journal file goes: a
            // restart replays them all
            let failed = self.failed.load(Ordering::SeqCst);
            if let (Some(last), false) = (records.last(), failed) {
                #[cfg(test)]
                self.applies.fetch_add(1, Ordering::Relaxed);
                match apply(&self.db, &records) {
                    Ok(()) => {
                        applied = last.seq;
                        dirty.get_or_insert(started);
                        self.forget(&records);
                    }
                    Err(e) => self.fail("writing the database behind the journal", &e),
                }
            }
            if size > 0 {
                *self.behind.lock() -= size;
                self.caught_up.notify_all();
            }
            let due = dirty.is_some_and(|since| since.elapsed() >= FLUSH_EVERY);
            let failed = self.failed.load(Ordering::SeqCst);
            if dirty.is_some() && !failed && (stop || !drains.is_empty() || due) {
                let result = flush(&self.db, &self.data_file)
                    .and_then(|()| self.journal.release_through(applied));
                dirty = None;
                if let Err(e) = &result {
                    self.fail("flushing the database", e);
                }
            }
            let failed = self.failed.load(Ordering::SeqCst);
            if failed {
                // nothing is flushed after a failure (the journal keeps it all): no
                // flush is due, so the loop waits instead of spinning on a deadline
                dirty = None;
            }
            for ack in drains {
                let _ = ack.send(if failed {
                    Err(StoreError::SyncFailed)
                } else {
                    Ok(())
                });
            }
            if stop {
                return;
            }
        }
    }

    /// Drops from the overlay the writes sled now has (unless written again since).
    fn forget(&self, records: &[Record]) {
        let mut pending = self.pending.write();
        for r in records {
            for (k, _) in &r.writes {
                pending.forget(k, r.seq);
            }
        }
    }

    fn fail(&self, what: &str, e: &StoreError) {
        tracing::error!(error = %e, "{what} failed: the journal keeps every acknowledged \
             write, and a restart replays it; until then no write is taken");
        // under the lock a sync checks `failed` with, so its wait cannot miss this
        let _behind = self.behind.lock();
        self.failed.store(true, Ordering::SeqCst);
        self.caught_up.notify_all();
        self.wake();
    }

    /// Ends the writing thread's gather early (see [`Shared::run`]).
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_in(dir: &std::path::Path) -> Behind {
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        let data_file = File::open(dir.join("db").join("db")).unwrap();
        Behind::open(db, data_file, &dir.join("journal")).unwrap()
    }

    /// Syncs that come close together reach sled in one write, not one each.
    #[test]
    fn syncs_close_together_are_written_to_sled_together() {
        let dir = tempfile::tempdir().unwrap();
        let b = open_in(dir.path());
        let syncs = 10;
        let started = Instant::now();
        for i in 0..syncs {
            b.write(vec![(
                sled::IVec::from(format!("k{i}").as_bytes()),
                Some(sled::IVec::from("v")),
            )]);
            b.sync().unwrap();
            // the spacing of syncs by separate requests, far inside one gather
            std::thread::sleep(Duration::from_millis(1));
        }
        // a slow machine spreads them over more gathers (of GATHER, 100 ms)
        let gathers = (started.elapsed().as_millis() / 100) as u64 + 1;
        let last = format!("k{}", syncs - 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.shared.db.get(&last).unwrap().is_none() {
            assert!(Instant::now() < deadline, "sled never got the last write");
            std::thread::yield_now();
        }
        let applies = b.shared.applies.load(Ordering::Relaxed);
        assert!(
            applies <= gathers + 1,
            "{applies} writes to sled for {syncs} syncs over {gathers} gathers' time"
        );
    }

    /// A clean stop empties the journal, and the next run used to number its records
    /// from 1 again; now it numbers on from the last one sled holds.
    #[test]
    fn journal_numbers_are_not_used_again_after_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let b = open_in(dir.path());
        let first = b.next_seq.load(Ordering::SeqCst);
        for i in 0..3 {
            b.write(vec![(
                sled::IVec::from(format!("k{i}").as_bytes()),
                Some(sled::IVec::from("v")),
            )]);
        }
        b.sync().unwrap();
        drop(b);
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let stored = stored_u64(&db, JOURNAL_SEQ, "").unwrap();
        assert_eq!(stored, Some(first + 2));
        // a number the clock has not reached: only the stored one can give it
        let ahead = u64::MAX / 4;
        db.insert(JOURNAL_SEQ, &ahead.to_be_bytes()).unwrap();
        db.flush().unwrap();
        drop(db);
        let b = open_in(dir.path());
        assert_eq!(b.next_seq.load(Ordering::SeqCst), ahead + 1);
    }

    /// After a failure nothing is flushed again; the thread writing sled used to keep
    /// a flush deadline it would never meet and spin on it at 100 % of a core.
    #[test]
    fn after_a_failure_the_thread_writing_sled_waits_instead_of_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let b = open_in(dir.path());
        b.write(vec![(sled::IVec::from("k"), Some(sled::IVec::from("v")))]);
        b.sync().unwrap();
        // sled has it and owes a flush
        while b.shared.db.get("k").unwrap().is_none() {
            std::thread::yield_now();
        }
        b.shared.fail("a test", &StoreError::Io("injected".into()));
        let before = b.shared.turns.load(Ordering::Relaxed);
        // an observation window past the flush deadline, not a wait for a condition
        std::thread::sleep(FLUSH_EVERY * 2);
        let turns = b.shared.turns.load(Ordering::Relaxed) - before;
        assert!(turns < 10, "{turns} turns of the loop while failed");
    }
}
