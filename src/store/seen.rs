//! Which keys the journaled store may hold: Bloom filters over every key ever put
//! into sled or the journal's overlay, so that a lookup of a key never written (the
//! remembered reply of a fresh request id, a new locator, a new index entry) answers
//! "absent" without walking sled's tree, whose leaves a small page cache often has to
//! read back from disk (a quarter of the server's CPU under booking load,
//! docs/benchmarks.md, "The sixteenth session").
//!
//! A key is added before it becomes readable, and deletes leave it in: a filter may
//! say "maybe" of an absent key (that lookup then asks sled), never "no" of a present
//! one. Filters only grow: once one holds what it was sized for, a new one twice as
//! large takes the new keys (a scalable Bloom filter, Almeida et al. 2007), so
//! nothing is ever rebuilt by scanning the store again.

use fastbloom::AtomicBloomFilter;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Each filter's false-positive rate; with filters doubling in size, a store that
/// grew a thousandfold since it opened has about ten of them.
const FALSE_POSITIVES: f64 = 0.002;
/// The first filter's size, in keys, when the store holds fewer at open.
const MIN_KEYS: usize = 1 << 18;

pub struct Seen {
    /// Oldest first; only the last takes new keys.
    filters: RwLock<Vec<AtomicBloomFilter>>,
    /// Keys added to the last filter, and how many it was sized for.
    added: AtomicUsize,
    sized_for: AtomicUsize,
    /// Lookups answered "absent" without asking sled.
    #[cfg(test)]
    pub skipped: AtomicUsize,
}

impl Seen {
    /// Filters holding `keys` (every key the store holds now), `count` of them.
    pub fn new<K: AsRef<[u8]>>(count: usize, keys: impl Iterator<Item = K>) -> Seen {
        let sized_for = count.saturating_mul(2).max(MIN_KEYS);
        let first = filter(sized_for);
        let mut added = 0;
        for k in keys {
            first.insert(k.as_ref());
            added += 1;
        }
        Seen {
            filters: RwLock::new(vec![first]),
            added: AtomicUsize::new(added),
            sized_for: AtomicUsize::new(sized_for),
            #[cfg(test)]
            skipped: AtomicUsize::new(0),
        }
    }

    /// Notes `k` as possibly present. Call it before the key can be read, from one
    /// writer at a time.
    pub fn add(&self, k: &[u8]) {
        let added = self.added.fetch_add(1, Ordering::Relaxed) + 1;
        if added > self.sized_for.load(Ordering::Relaxed) {
            let mut filters = self.filters.write();
            let size = self.sized_for.load(Ordering::Relaxed).saturating_mul(2);
            filters.push(filter(size));
            self.sized_for.store(size, Ordering::Relaxed);
            self.added.store(1, Ordering::Relaxed);
        }
        if let Some(last) = self.filters.read().last() {
            last.insert(k);
        }
    }

    /// False only when `k` was never added.
    pub fn may_hold(&self, k: &[u8]) -> bool {
        let maybe = self.filters.read().iter().any(|f| f.contains(k));
        #[cfg(test)]
        if !maybe {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        maybe
    }

    /// How many filters there are (one, until the store doubled since it opened).
    #[cfg(test)]
    pub fn filters(&self) -> usize {
        self.filters.read().len()
    }
}

fn filter(keys: usize) -> AtomicBloomFilter {
    AtomicBloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_added_or_given_at_the_start_may_be_held_across_growth() {
        let at_start: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let seen = Seen::new(at_start.len(), at_start.iter());
        let more = MIN_KEYS * 3 + 5;
        for i in 0..more as u64 {
            seen.add(&(i | 1 << 40).to_be_bytes());
        }
        assert!(seen.filters() >= 2, "the filters grew");
        assert!(at_start.iter().all(|k| seen.may_hold(k)));
        assert!((0..more as u64).all(|i| seen.may_hold(&(i | 1 << 40).to_be_bytes())));
    }

    #[test]
    fn keys_never_added_are_mostly_known_absent() {
        let seen = Seen::new(0, std::iter::empty::<&[u8]>());
        for i in 0..10_000u64 {
            seen.add(&i.to_be_bytes());
        }
        let maybe = (0..10_000u64)
            .filter(|i| seen.may_hold(&(i | 1 << 50).to_be_bytes()))
            .count();
        assert!(
            maybe < 100,
            "{maybe} of 10,000 absent keys reported as maybe held"
        );
    }
}
