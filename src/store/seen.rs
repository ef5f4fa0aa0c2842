//! Which keys the journaled store may hold: Bloom filters over every key ever put
//! into sled or the journal's overlay, so that a lookup of a key never written (the
//! remembered reply of a fresh request id, a new locator, a new index entry) answers
//! "absent" without walking sled's tree, whose leaves a small page cache often has to
//! read back from disk (a quarter of the server's CPU under booking load,
//! docs/benchmarks.md, "The sixteenth session").
//!
//! A store may also name, for each key, a prefix that a frequent scan asks for (a
//! flight's waitlist line): the prefix goes in with the key, so that such a scan of a
//! prefix no key was ever put under answers "empty" without walking sled either.
//!
//! A key is added before it becomes readable, and deletes leave it in: a filter may
//! say "maybe" of an absent key (that lookup then asks sled), never "no" of a present
//! one, and until a scan of what sled held at open has added all of that, every
//! lookup asks sled. Filters only grow: once one holds what it was sized for, a new
//! one twice as large takes the new keys (a scalable Bloom filter, Almeida et al.
//! 2007), so nothing is ever rebuilt.

use fastbloom::AtomicBloomFilter;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Each filter's false-positive rate; with filters doubling in size, a store that
/// grew a thousandfold since the first filter has about ten of them.
const FALSE_POSITIVES: f64 = 0.002;
/// The first filter's size, in keys.
const FIRST_KEYS: usize = 1 << 18;

/// The prefix under which a store scans for `k`, added to the filters with it.
pub type ScannedPrefix = fn(&[u8]) -> Option<&[u8]>;

/// The filters, and the scan of what sled held at open that fills them.
pub struct Seen {
    keys: Arc<Keys>,
    scan: Mutex<Option<JoinHandle<()>>>,
}

struct Keys {
    /// Oldest first; only the last takes new keys. Never empty.
    filters: RwLock<Vec<AtomicBloomFilter>>,
    /// One hash seed for all the filters, so that a key is hashed once for all.
    seed: u128,
    /// Keys added to the last filter, and how many it was sized for.
    added: AtomicUsize,
    sized_for: AtomicUsize,
    /// Set once every key sled held at open is in: until then every lookup asks sled.
    complete: AtomicBool,
    prefix_of: ScannedPrefix,
    /// Ends the scan early (the store is closing).
    stop: AtomicBool,
    /// The scan did not finish: the filters are never consulted, so nothing is added.
    disabled: AtomicBool,
    /// Lookups answered "absent" without asking sled.
    #[cfg(test)]
    skipped: AtomicUsize,
}

impl Seen {
    /// Starts filling the filters with the keys `db` holds, on a thread of its own
    /// (a full scan: seconds for a store of 100,000 bookings, which the server does
    /// not wait for). Keys put meanwhile go in through [`Seen::add`] as always.
    pub fn open(db: sled::Db, prefix_of: ScannedPrefix) -> Seen {
        let keys = Arc::new(Keys::new(prefix_of));
        let filling = keys.clone();
        let scan = std::thread::Builder::new()
            .name("jetway-keys".into())
            .spawn(move || filling.fill(&db))
            .map_err(|e| {
                tracing::warn!(error = %e, "no key filter: every lookup asks sled");
                keys.disabled.store(true, Ordering::Relaxed);
            })
            .ok();
        Seen {
            keys,
            scan: Mutex::new(scan),
        }
    }

    /// Notes `k` (and its scanned prefix) as possibly present. Call it before the key
    /// can be read.
    pub fn add(&self, k: &[u8]) {
        self.keys.add_with_prefix(k);
    }

    /// False only when `k` was never added (and sled held no such key at open).
    pub fn may_hold(&self, k: &[u8]) -> bool {
        if !self.keys.complete.load(Ordering::Acquire) {
            return true;
        }
        let maybe = self
            .keys
            .holds(&self.keys.filters.read(), k)
            .is_none_or(|(held, _)| held);
        #[cfg(test)]
        if !maybe {
            self.keys.skipped.fetch_add(1, Ordering::Relaxed);
        }
        maybe
    }

    /// Waits for the scan of the keys held at open.
    #[cfg(test)]
    pub fn scanned(&self) -> bool {
        if let Some(scan) = self.scan.lock().take() {
            scan.join().unwrap();
        }
        self.keys.complete.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub fn skipped(&self) -> usize {
        self.keys.skipped.load(Ordering::Relaxed)
    }

    /// How many filters there are.
    #[cfg(test)]
    pub fn filters(&self) -> usize {
        self.keys.filters.read().len()
    }
}

impl Drop for Seen {
    /// Ends the scan, whose copy of the database would otherwise keep it open (and
    /// locked against a reopen) after the store is gone.
    fn drop(&mut self) {
        self.keys.stop.store(true, Ordering::Relaxed);
        if let Some(scan) = self.scan.get_mut().take() {
            let _ = scan.join();
        }
    }
}

impl Keys {
    fn new(prefix_of: ScannedPrefix) -> Keys {
        let seed = rand::random();
        Keys {
            filters: RwLock::new(vec![filter(FIRST_KEYS, seed)]),
            seed,
            added: AtomicUsize::new(0),
            sized_for: AtomicUsize::new(FIRST_KEYS),
            complete: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            prefix_of,
            #[cfg(test)]
            skipped: AtomicUsize::new(0),
        }
    }

    /// Whether any of `filters` may hold `k`, and `k`'s hash (`None` without filters).
    fn holds(&self, filters: &[AtomicBloomFilter], k: &[u8]) -> Option<(bool, u64)> {
        let hash = filters.first()?.source_hash(k);
        Some((filters.iter().any(|f| f.contains_hash(hash)), hash))
    }

    fn add_with_prefix(&self, k: &[u8]) {
        if let Some(p) = (self.prefix_of)(k) {
            self.add(p);
        }
        self.add(k);
    }

    fn add(&self, k: &[u8]) {
        if self.disabled.load(Ordering::Relaxed) {
            return;
        }
        // a key written again is counted once, so the filters grow with the keys
        // held (and deleted since), not with every write
        let hash = match self.holds(&self.filters.read(), k) {
            Some((false, hash)) => hash,
            _ => return,
        };
        let added = self.added.fetch_add(1, Ordering::Relaxed) + 1;
        if added > self.sized_for.load(Ordering::Relaxed) {
            let size = self.sized_for.load(Ordering::Relaxed).saturating_mul(2);
            // made before the lock that every lookup takes shared
            let next = filter(size, self.seed);
            let mut filters = self.filters.write();
            // another caller may have grown them meanwhile
            if self.added.load(Ordering::Relaxed) > self.sized_for.load(Ordering::Relaxed) {
                filters.push(next);
                self.sized_for.store(size, Ordering::Relaxed);
                self.added.store(1, Ordering::Relaxed);
            }
        }
        if let Some(last) = self.filters.read().last() {
            last.insert_hash(hash);
        }
    }

    fn fill(&self, db: &sled::Db) {
        for k in db.iter().keys() {
            if self.stop.load(Ordering::Relaxed) {
                self.disabled.store(true, Ordering::Relaxed);
                return;
            }
            match k {
                Ok(k) => self.add_with_prefix(&k),
                Err(e) => {
                    tracing::warn!(error = %e, "key filter left unused: every lookup asks sled");
                    self.disabled.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.complete.store(true, Ordering::Release);
    }
}

fn filter(keys: usize, seed: u128) -> AtomicBloomFilter {
    AtomicBloomFilter::with_false_pos(FALSE_POSITIVES)
        .seed(&seed)
        .expected_items(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_prefix(_: &[u8]) -> Option<&[u8]> {
        None
    }

    impl Seen {
        fn open_plain(db: sled::Db) -> Seen {
            Seen::open(db, no_prefix)
        }
    }

    /// The first byte, as a scanned prefix.
    fn first_byte(k: &[u8]) -> Option<&[u8]> {
        k.get(..1)
    }

    #[test]
    fn a_prefix_goes_in_with_its_keys_held_at_open_or_added() {
        let seen = Seen::open(db_with([b"a1".to_vec()].into_iter()), first_byte);
        seen.add(b"b2");
        assert!(seen.scanned());
        assert!(seen.may_hold(b"a") && seen.may_hold(b"b"));
        let maybe = (0..1000u32)
            .filter(|i| seen.may_hold(&[b'c', (i % 250) as u8, (i / 250) as u8]))
            .count();
        assert!(maybe < 20, "{maybe}");
    }

    fn db_with(keys: impl Iterator<Item = Vec<u8>>) -> sled::Db {
        let db = sled::Config::new().temporary(true).open().unwrap();
        for k in keys {
            db.insert(k, b"v".as_slice()).unwrap();
        }
        db
    }

    #[test]
    fn every_key_held_at_open_or_added_may_be_held_across_growth() {
        let at_open: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let seen = Seen::open_plain(db_with(at_open.iter().cloned()));
        let more = FIRST_KEYS * 3 + 5;
        for i in 0..more as u64 {
            seen.add(&(i | 1 << 40).to_be_bytes());
        }
        assert!(seen.scanned());
        assert!(seen.filters() >= 2, "the filters grew");
        assert!(at_open.iter().all(|k| seen.may_hold(k)));
        assert!((0..more as u64).all(|i| seen.may_hold(&(i | 1 << 40).to_be_bytes())));
    }

    #[test]
    fn keys_never_added_are_mostly_known_absent_once_the_scan_is_done() {
        let seen = Seen::open_plain(db_with((0..10_000u64).map(|i| i.to_be_bytes().to_vec())));
        assert!(seen.scanned());
        let maybe = (0..10_000u64)
            .filter(|i| seen.may_hold(&(i | 1 << 50).to_be_bytes()))
            .count();
        assert!(
            maybe < 100,
            "{maybe} of 10,000 absent keys reported as maybe held"
        );
    }

    #[test]
    fn a_stopped_scan_leaves_the_filters_unused() {
        let keys = Keys::new(no_prefix);
        keys.stop.store(true, Ordering::Relaxed);
        keys.fill(&db_with((0..10u64).map(|i| i.to_be_bytes().to_vec())));
        assert!(!keys.complete.load(Ordering::Acquire));
        let seen = Seen {
            keys: Arc::new(keys),
            scan: Mutex::new(None),
        };
        seen.add(b"k");
        assert!(seen.may_hold(b"never added"));
        assert_eq!(
            seen.keys.added.load(Ordering::Relaxed),
            0,
            "nothing added once unused"
        );
    }

    /// Dropping the filters stops and joins the scan, whose copy of the database
    /// would otherwise keep the data dir locked against the next open.
    #[test]
    fn dropping_the_filters_ends_the_scan() {
        let seen = Seen::open_plain(db_with((0..100_000u64).map(|i| i.to_be_bytes().to_vec())));
        let keys = seen.keys.clone();
        drop(seen);
        assert_eq!(Arc::strong_count(&keys), 1, "the scan thread let go");
    }

    #[test]
    fn a_key_written_again_is_counted_once() {
        let keys = Keys::new(no_prefix);
        for _ in 0..3 {
            keys.add(b"k");
        }
        assert_eq!(keys.added.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn before_the_scan_is_done_every_key_may_be_held() {
        let keys = Arc::new(Keys::new(no_prefix));
        let seen = Seen {
            keys,
            scan: Mutex::new(None),
        };
        assert!(seen.may_hold(b"never added"));
        seen.keys.complete.store(true, Ordering::Release);
        assert!(!seen.may_hold(b"never added"));
    }
}
