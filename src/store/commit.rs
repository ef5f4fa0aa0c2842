//! Group commit. A use case writes its batch, then enqueues a ticket (with an optional
//! action such as publishing a seat change) and waits for it. One task makes all
//! writes so far durable with a single `Store::sync`, runs the actions of every ticket
//! it covered in ticket order, and only then wakes the waiters. So concurrent requests
//! share one fsync, and nobody (requester or watcher) hears of a change before it is
//! on disk. When a sync fails (after retries) its waiters get an error, and its
//! actions wait for the next successful sync.
//!
//! On a replicated store ([`Store::replicated`]) a batch is instead committed to the
//! cluster by a task of its own, and its ticket resolves once the cluster committed it
//! and this node applied it; the change feed announces it on every node, so actions
//! are not used.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

use super::{Batch, Store, StoreError};
use crate::domain::FlightId;

/// Runs once the write it follows is durable.
pub type Action = Box<dyn FnOnce() + Send>;

/// A pending write; [`Committer::durable`] waits for it.
#[derive(Debug)]
pub enum Ticket {
    Local(u64),
    Replicated(tokio::sync::oneshot::Receiver<Result<(), StoreError>>),
}

#[derive(Default)]
struct Queue {
    next: u64,
    actions: VecDeque<(u64, Action)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Every ticket up to here has been through a sync.
    done: u64,
    /// Tickets in `(failed_after, failed_upto]` were covered by a sync that failed.
    failed_after: u64,
    failed_upto: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub syncs: u64,
    pub tickets: u64,
    pub sync_seconds_total: f64,
}

pub struct Committer {
    store: Arc<dyn Store>,
    /// Held shared by writers from their store write to their enqueue; taken
    /// exclusively by [`Committer::settle_reads`] to wait those sections out.
    gate: parking_lot::RwLock<()>,
    queue: Mutex<Queue>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    stats: Mutex<CommitStats>,
}

impl Committer {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Committer {
            store,
            gate: parking_lot::RwLock::new(()),
            queue: Mutex::new(Queue {
                next: 1,
                actions: VecDeque::new(),
            }),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
            stats: Mutex::new(CommitStats::default()),
        })
    }

    /// Call right after the store write it covers, while still holding whatever lock
    /// ordered that write: actions run in the order tickets were taken.
    pub fn enqueue(&self, action: Option<Action>) -> Ticket {
        let mut q = self.queue.lock();
        let t = q.next;
        q.next += 1;
        if let Some(a) = action {
            q.actions.push_back((t, a));
        }
        drop(q);
        self.wake.notify_one();
        Ticket::Local(t)
    }

    pub fn is_replicated(&self) -> bool {
        self.store.replicated().is_some()
    }

    /// Writes `batch` (atomically; on a replicated store only if the flight in
    /// `expect` still has that version) and returns the ticket to wait for. Call it
    /// while holding whatever lock ordered the write. On a local store `written` runs
    /// right after the write and returns the action to run once it is durable; a
    /// replicated store does not call it (the change feed announces the write).
    pub fn submit(
        &self,
        batch: Batch,
        expect: Option<(FlightId, u64)>,
        written: impl FnOnce() -> Option<Action>,
    ) -> Result<Ticket, StoreError> {
        if self.store.replicated().is_none() {
            let _gate = self.write_gate();
            self.store.write(&batch)?;
            return Ok(self.enqueue(written()));
        }
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = match store.replicated() {
                Some(r) => r.commit(batch, expect).await,
                None => Err(StoreError::Io("store is not replicated".into())),
            };
            let _ = tx.send(r);
        });
        Ok(Ticket::Replicated(rx))
    }

    /// On a replicated store, waits until this node has every write committed
    /// anywhere so far (call it before reading); a local store has them all already.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        match self.store.replicated() {
            Some(r) => r.settle().await,
            None => Ok(()),
        }
    }

    /// Hold this from a store write until its ticket is enqueued, so that
    /// [`Committer::settle_reads`] can tell which writes a read may have seen.
    pub fn write_gate(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Waits until every write completed so far is durable and its actions have run.
    /// Call it after reading from the store and before answering: then no reply shows
    /// state that a crash could take back, or that the live seat maps do not show yet.
    /// An error means what was read may not be on disk.
    pub async fn settle_reads(&self) -> Result<(), StoreError> {
        if self.store.replicated().is_some() {
            // every acknowledged write is durable there; readers catch up first
            return Ok(());
        }
        drop(self.gate.write());
        let last = self.queue.lock().next - 1;
        self.durable(Ticket::Local(last)).await
    }

    /// Waits until the ticket's write is durable.
    pub async fn durable(&self, t: Ticket) -> Result<(), StoreError> {
        let t = match t {
            Ticket::Local(t) => t,
            Ticket::Replicated(rx) => {
                return rx
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Io("commit task ended".into())))
            }
        };
        let mut rx = self.progress.subscribe();
        let p = *rx
            .wait_for(|p| p.done >= t)
            .await
            .map_err(|_| StoreError::Io("committer stopped".into()))?;
        if t > p.failed_after && t <= p.failed_upto {
            return Err(StoreError::Io("sync failed".into()));
        }
        Ok(())
    }

    /// Enqueues a ticket with no action and waits for it: "everything so far is durable".
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let t = self.enqueue(None);
        self.durable(t).await
    }

    pub fn stats(&self) -> CommitStats {
        *self.stats.lock()
    }

    /// The commit loop; runs until `stop`, committing what is pending first.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => self.commit_pending().await,
                _ = stop.cancelled() => {
                    self.commit_pending().await;
                    return;
                }
            }
        }
    }

    async fn commit_pending(&self) {
        loop {
            let target = self.queue.lock().next - 1;
            let done = self.progress.borrow().done;
            if target <= done {
                return;
            }
            let store = self.store.clone();
            let started = Instant::now();
            let mut result = Err(StoreError::Io("not run".into()));
            for attempt in 0..3u64 {
                let s = store.clone();
                result = tokio::task::spawn_blocking(move || s.sync())
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Io(e.to_string())));
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
            }
            {
                let mut st = self.stats.lock();
                st.syncs += 1;
                st.tickets += target - done;
                st.sync_seconds_total += started.elapsed().as_secs_f64();
            }
            let failed = result.is_err();
            // actions run only once their writes are durable: after a failed sync
            // they wait for the next one that succeeds (it covers them too)
            let actions: Vec<Action> = if failed {
                Vec::new()
            } else {
                let mut q = self.queue.lock();
                let n = q.actions.iter().take_while(|(t, _)| *t <= target).count();
                q.actions.drain(..n).map(|(_, a)| a).collect()
            };
            for a in actions {
                a();
            }
            if let Err(e) = result {
                tracing::error!(error = %e, "sync failed; replies for this batch report an internal error");
            }
            self.progress.send_modify(|p| {
                if failed {
                    p.failed_after = p.done;
                    p.failed_upto = target;
                }
                p.done = target;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, SledStore};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn actions_run_in_order_after_sync_and_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store.clone());
        tokio::spawn(c.clone().run(Default::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..200 {
            store.write(&Batch::default()).unwrap();
            let s = seen.clone();
            let t = c.enqueue(Some(Box::new(move || s.lock().push(i))));
            let c2 = c.clone();
            waits.push(tokio::spawn(async move { c2.durable(t).await }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        assert_eq!(*seen.lock(), (0..200).collect::<Vec<_>>());
        let st = c.stats();
        assert_eq!(st.tickets, 200);
        assert!(st.syncs < 200, "syncs were shared: {st:?}");
    }

    #[tokio::test]
    async fn barrier_waits_for_earlier_actions() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store);
        tokio::spawn(c.clone().run(Default::default()));
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        c.enqueue(Some(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        })));
        c.barrier().await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn settled_reads_see_only_durable_announced_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store);
        tokio::spawn(c.clone().run(Default::default()));
        let announced = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let _gate = c.write_gate();
            let a = announced.clone();
            c.enqueue(Some(Box::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            })));
        }
        c.settle_reads().await.unwrap();
        assert_eq!(announced.load(Ordering::SeqCst), 5);
        // nothing pending: returns at once
        c.settle_reads().await.unwrap();
        assert_eq!(c.stats().tickets, 5);
    }
}
