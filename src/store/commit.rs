//! Group commit. A use case writes its batch, then enqueues a ticket (with an optional
//! action such as publishing a seat change) and waits for it. One task makes all
//! writes so far durable with a single `Store::sync`, runs the actions of every ticket
//! it covered in ticket order, wakes the waiters, and only then runs what the actions
//! left for later (the fan-out to everyone but the requesters), in the same order. So
//! concurrent requests share one fsync, a requester has its own pushes before its
//! reply and is woken before the fan-out (a worker can answer it meanwhile),
//! and nobody (requester or watcher) hears of a change before it is on disk.
//! While it runs a round's later parts, the next sync (of every write whose ticket is
//! already enqueued) runs on a blocking thread, so they and the next fsync overlap;
//! the next round's actions still wait for both, so the order is unchanged. A
//! seat change's later part only queues the push on every watcher; the writes into
//! their sockets are made by a loop of the flight's own
//! (`FlightSeats::fan_out` in `inventory`), so the writers are not paced by them.
//! A ticket enqueued meanwhile waits for the sync already running, then for the next
//! one.
//!
//! In the server the loop runs on a thread of its own ([`Committer::spawn`]), where a
//! sync that nothing overlaps runs in place: its wake-ups (a ticket enqueued, a sync
//! done) do not wait in the server's run queue. There, with a commit delay (off by
//! default: `--commit-delay-us`) and under concurrent writes (the
//! last sync covered [`COMMIT_SIBLINGS`] tickets or more and ended less than the commit
//! delay ago), it waits up to that delay before such a sync for as many tickets as the
//! last one covered, while they keep coming (each [`DELAY_STEP`] brings one) and some
//! request being handled is not yet waiting for a ticket, so that one sync covers more
//! of them (after PostgreSQL's `commit_delay` and `commit_siblings`); a lone write
//! never waits, nor does a write after a pause, nor writes that all wait for this
//! sync.
//!
//! A failed sync is fatal for the data dir: after an I/O error the kernel may drop
//! the dirty pages and report the next fsync as a success, so no later sync can
//! vouch for them. From the first failure on, every ticket (that one's and later
//! ones) gets [`StoreError::SyncFailed`], no further write is taken, nothing is
//! synced again and no action runs; the process goes unready and a restart recovers
//! from what is on disk.
//!
//! On a replicated store ([`Store::replicated`]) a batch is instead committed to the
//! cluster by a task of its own, and its ticket resolves once the cluster committed it
//! and this node applied it; the change feed announces it on every node, so actions
//! are not used.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

use super::{Batch, Store, StoreError};
use crate::domain::FlightId;

/// Runs once the write it follows is durable, before its waiter is woken; what it
/// returns runs once the waiters of its sync are woken. Both run on the commit loop,
/// in the server on its own thread and runtime ([`Committer::spawn`]), which has no
/// timers and whose tasks would run only while the loop idles: they must not use
/// `tokio::spawn`, `tokio::time` or `block_in_place`, nor block.
pub type Action = Box<dyn FnOnce() -> Option<Later> + Send>;

/// The part of an [`Action`] that need not delay any reply.
pub type Later = Box<dyn FnOnce() + Send>;

/// The tickets the last sync must have covered for the next one to wait for more
/// (with a commit delay): fewer means writes were not concurrent, and waiting would
/// only add to their latency.
pub const COMMIT_SIBLINGS: u64 = 4;
/// With this many tickets pending, a sync waits no longer.
const DELAY_ENOUGH_TICKETS: u64 = 256;

/// How long the commit delay sleeps between looks at the queue.
const DELAY_STEP: Duration = Duration::from_micros(250);

/// The last sync: how many tickets it covered, and when it ended.
#[derive(Clone, Copy)]
struct LastSync {
    tickets: u64,
    ended: Instant,
}

/// The commit delay: how long a sync may wait for more tickets at most, and how
/// often it looks at the queue meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delay {
    max: Duration,
    step: Duration,
}

/// A request being handled, from [`Committer::request_running`].
pub struct RequestRunning<'a>(&'a Committer);

impl Drop for RequestRunning<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

tokio::task_local! {
    /// When the request this task handles caught up for its token check, if no later
    /// step has rested on that yet ([`Committer::catch_up_at_start`]) or waited since
    /// ([`Committer::waiting`]).
    static CAUGHT_UP: std::cell::Cell<Option<Instant>>;
}

/// Forgets the request's token-check catch-up: what happens after a wait may not
/// rest on it.
fn forget_token_check() {
    let _ = CAUGHT_UP.try_with(|c| c.set(None));
}

/// Runs `f` as a request's step right after its token check's catch-up; with its
/// output, whether a later step could still rest on that catch-up.
#[cfg(test)]
pub(crate) async fn after_token_check<F: std::future::Future>(f: F) -> (F::Output, bool) {
    let fresh = std::cell::Cell::new(Some(Instant::now()));
    CAUGHT_UP
        .scope(fresh, async {
            let out = f.await;
            (out, CAUGHT_UP.with(|c| c.get().is_some()))
        })
        .await
}

/// The longest after the token check's catch-up completed (its read may be older:
/// it came after the request arrived, which is what counts) that a step counts as the
/// request's start ([`Committer::catch_up_at_start`]): a step that comes later (one that waited
/// on something, against its documented use) reads again.
const AT_START: Duration = Duration::from_millis(1);

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
    /// Every ticket up to here has been through a sync (or refused after a failed one).
    done: u64,
    /// The first ticket of the first sync that failed: it and every later one fail.
    failed_from: Option<u64>,
    /// The commit loop has returned: a ticket not done by then never will be.
    stopped: bool,
}

impl Progress {
    fn fails(&self, t: u64) -> bool {
        self.failed_from.is_some_and(|f| t >= f)
    }
}

/// Marks the commit loop stopped when dropped, and wakes the waiters. A loop that
/// ends other than by its stop (a panic, its task aborted) also counts as a failed
/// sync from the first ticket it did not finish: the store is then not ready, and no
/// more writes are taken (they would change memory, and perhaps disk, while every
/// requester is told they failed).
struct Stopped<'a> {
    progress: &'a watch::Sender<Progress>,
    clean: bool,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let clean = self.clean;
        self.progress.send_modify(|p| {
            p.stopped = true;
            if !clean && p.failed_from.is_none() {
                p.failed_from = Some(p.done + 1);
            }
        });
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub syncs: u64,
    pub tickets: u64,
}

pub struct Committer {
    store: Arc<dyn Store>,
    /// The data dir, for the operator's log line when a sync fails.
    location: String,
    /// Held shared by writers from their store write to their enqueue; taken
    /// exclusively by [`Committer::settle_reads`] to wait those sections out.
    gate: parking_lot::RwLock<()>,
    queue: Mutex<Queue>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    /// Every ticket up to here has had its [`Later`] run too.
    announced: watch::Sender<u64>,
    stats: Mutex<CommitStats>,
    last_sync: Mutex<Option<LastSync>>,
    /// Requests being handled ([`Committer::request_running`]): those not waiting
    /// for a ticket may still write.
    running: AtomicU64,
    sync_seconds: metrics::Histogram,
}

impl Committer {
    /// `sync_seconds` records how long each durable sync takes.
    pub fn new(
        store: Arc<dyn Store>,
        location: String,
        sync_seconds: metrics::Histogram,
    ) -> Arc<Self> {
        Arc::new(Committer {
            store,
            location,
            gate: parking_lot::RwLock::new(()),
            queue: Mutex::new(Queue {
                next: 1,
                actions: VecDeque::new(),
            }),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
            announced: watch::channel(0).0,
            stats: Mutex::new(CommitStats::default()),
            last_sync: Mutex::new(None),
            running: Default::default(),
            sync_seconds,
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
            self.write_unsynced(&batch)?;
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

    /// Writes `batch` to a local store without a ticket: the next sync makes it
    /// durable. Refused once a sync has failed.
    pub fn write_unsynced(&self, batch: &Batch) -> Result<(), StoreError> {
        if self.has_failed() {
            return Err(StoreError::SyncFailed);
        }
        self.store.write(batch).inspect_err(|e| {
            // a write that failed part-way may have left some of the batch in the
            // store's memory (sled applies a batch before its buffer's `pwrite`,
            // which can fail): a sync right after tells whether the store is still
            // sound, and if it is not, its failure fails this process as any failed
            // sync does, so no read settles on what was never written
            if matches!(e, StoreError::Io(_)) {
                self.enqueue(None);
            }
        })
    }

    /// Whether a sync has failed: then this process acknowledges no more writes.
    pub fn has_failed(&self) -> bool {
        self.progress.borrow().failed_from.is_some()
    }

    /// On a replicated store, waits until this node has every write committed
    /// anywhere so far (call it before reading); a local store has them all already.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        forget_token_check();
        match self.store.replicated() {
            Some(r) => r.settle().await,
            None => Ok(()),
        }
    }

    /// [`Committer::catch_up`], as the request's token check: the request's
    /// [`Committer::catch_up_at_start`] rests on it.
    pub(crate) async fn catch_up_for_request(&self) -> Result<(), StoreError> {
        self.catch_up().await?;
        let _ = CAUGHT_UP.try_with(|c| c.set(Some(Instant::now())));
        Ok(())
    }

    /// [`Committer::catch_up`], as a request's first step after its token check,
    /// before it has waited on anything since (a lock, a gateway, a timer): within
    /// [`Committer::handling_request`] it rests on the token check's read instead of
    /// reading again. Both came after the request arrived, so what either sees is as
    /// new as the request needs: a write committed between them is concurrent with
    /// it. Only the first such call, within [`AT_START`], rests on that read, and only
    /// if the request has not waited since: [`Committer::durable`],
    /// [`Committer::catch_up`] and [`Committer::waiting`] forget it.
    pub(crate) async fn catch_up_at_start(&self) -> Result<(), StoreError> {
        let checked = CAUGHT_UP.try_with(|c| c.take()).ok().flatten();
        if checked.is_some_and(|at| at.elapsed() < AT_START) {
            return Ok(());
        }
        self.catch_up().await
    }

    /// Tells that the request is about to wait on something besides the committer (a
    /// user's or a flight's turn, the admin's flight lock): a later
    /// [`Committer::catch_up_at_start`] then reads again, as one does after any wait
    /// for a write ([`Committer::durable`]) or a catch-up. Today's gateway calls in a
    /// request come after one of these; any other wait is left to the [`AT_START`]
    /// bound.
    pub(crate) fn waiting(&self) {
        forget_token_check();
    }

    /// Runs `handling` as the handling of one request, whose first step may rest on
    /// its token check's catch-up ([`Committer::catch_up_at_start`]); a local store's
    /// requests need no scope.
    pub(crate) fn handling_request<F: std::future::Future>(
        &self,
        handling: F,
    ) -> impl std::future::Future<Output = F::Output> {
        use futures::future::Either;
        match self.is_replicated() {
            true => Either::Left(CAUGHT_UP.scope(std::cell::Cell::new(None), handling)),
            false => Either::Right(handling),
        }
    }

    /// Hold this from a store write until its ticket is enqueued, so that
    /// [`Committer::settle_reads`] can tell which writes a read may have seen.
    pub fn write_gate(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Waits until every write completed so far is durable and its actions (their
    /// later part too) have run.
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
        self.durable(Ticket::Local(last)).await?;
        let stopped = || StoreError::Io("committer stopped".into());
        let mut announced = self.announced.subscribe();
        if *announced.borrow_and_update() >= last {
            return Ok(());
        }
        // a loop that died in a later part never announces the rest
        let mut progress = self.progress.subscribe();
        tokio::select! {
            biased;
            a = announced.wait_for(|a| *a >= last) => a.map(|_| ()).map_err(|_| stopped()),
            _ = progress.wait_for(|p| p.stopped) => Err(stopped()),
        }
    }

    /// Waits until the ticket's write is durable.
    pub async fn durable(&self, t: Ticket) -> Result<(), StoreError> {
        forget_token_check();
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
            .wait_for(|p| p.done >= t || p.fails(t) || p.stopped)
            .await
            .map_err(|_| StoreError::Io("committer stopped".into()))?;
        if p.fails(t) {
            Err(StoreError::SyncFailed)
        } else if p.done >= t {
            Ok(())
        } else {
            Err(StoreError::Io("committer stopped".into()))
        }
    }

    /// Enqueues a ticket with no action and waits for it: "everything so far is durable".
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let t = self.enqueue(None);
        self.durable(t).await
    }

    pub fn stats(&self) -> CommitStats {
        *self.stats.lock()
    }

    /// Starts [`Committer::run`] on a thread of its own, with a runtime of its own: its
    /// wake-ups (a sync done, a ticket enqueued) then never wait in the server's run
    /// queue behind the thousands of connection tasks a large fan-out has just woken.
    /// The receiver resolves once the loop has ended and its runtime is gone (or
    /// errs, if the loop panicked). A runtime that cannot be built counts as a loop
    /// that ended abnormally: waiters fail, and no write is taken. `delay` is the
    /// commit delay (see the module's doc).
    pub fn spawn(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        delay: Duration,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        self.spawn_stepping(stop, delay, DELAY_STEP)
    }

    /// [`Committer::spawn`], whose commit delay looks at the queue every `step`.
    fn spawn_stepping(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        delay: Duration,
        step: Duration,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let (done, finished) = tokio::sync::oneshot::channel();
        let this = self.clone();
        std::thread::Builder::new()
            .name("jetway-commit".into())
            .spawn(move || {
                // built here, not by the caller: a runtime must not be dropped in an
                // async context, as it would be if this thread could not start
                match tokio::runtime::Builder::new_current_thread()
                    .thread_name("jetway-commit-sync")
                    .build()
                {
                    Ok(rt) => rt.block_on(
                        this.clone()
                            .run_loop(stop, Syncs::Inline(Delay { max: delay, step })),
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the commit loop's runtime");
                        drop(Stopped {
                            progress: &this.progress,
                            clean: false,
                        });
                    }
                }
                drop(this);
                let _ = done.send(());
            })?;
        Ok(finished)
    }

    /// The commit loop; runs until `stop`, committing what is pending first. However
    /// it ends (also by a panic or its task aborted), it is marked stopped, so that
    /// waiters for tickets it did not sync get an error instead of waiting forever.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        self.run_loop(stop, Syncs::Blocking).await
    }

    async fn run_loop(self: Arc<Self>, stop: tokio_util::sync::CancellationToken, syncs: Syncs) {
        let mut stopped = Stopped {
            progress: &self.progress,
            clean: false,
        };
        loop {
            tokio::select! {
                _ = self.wake.notified() => self.commit_pending(syncs, &stop).await,
                _ = stop.cancelled() => {
                    self.commit_pending(syncs, &stop).await;
                    stopped.clean = true;
                    return;
                }
            }
        }
    }

    async fn commit_pending(&self, syncs: Syncs, stop: &tokio_util::sync::CancellationToken) {
        // a sync started while the previous round's fan-out ran, and its target
        let mut started: Option<(u64, RunningSync)> = None;
        loop {
            let done = self.progress.borrow().done;
            let (target, result) = match started.take() {
                Some((target, sync)) => (target, sync.finish(self, target - done).await),
                None => {
                    let mut target = self.queue.lock().next - 1;
                    if target <= done {
                        return;
                    }
                    if let Syncs::Inline(delay) = syncs {
                        target = self.more_tickets(done, target, delay, stop);
                    }
                    let result = match self.has_failed() {
                        true => Err(StoreError::SyncFailed),
                        false if matches!(syncs, Syncs::Inline(_)) => {
                            // nothing to overlap it with: on the loop's own thread, a
                            // sync in place saves a hand-off to another thread and back
                            let (result, took) = timed_sync(&*self.store);
                            self.record_sync(target - done, took);
                            result
                        }
                        false => self.start_sync().finish(self, target - done).await,
                    };
                    (target, result)
                }
            };
            let actions: Vec<Action> = {
                let mut q = self.queue.lock();
                let n = q.actions.iter().take_while(|(t, _)| *t <= target).count();
                q.actions.drain(..n).map(|(_, a)| a).collect()
            };
            let mut later: Vec<Later> = Vec::new();
            match &result {
                Ok(()) => later.extend(actions.into_iter().filter_map(|a| a())),
                // what they would announce may never reach the disk
                Err(StoreError::SyncFailed) => {}
                Err(e) => tracing::error!(
                    data_dir = %self.location,
                    error = %e,
                    "syncing the data dir failed, so writes since the last good sync may \
                     not be on disk (after an I/O error the kernel may drop them and report \
                     the next sync as a success). This process now refuses every write and \
                     /readyz answers 503. Check the disk, then restart the server: it \
                     recovers from what is on disk."
                ),
            }
            self.progress.send_modify(|p| {
                if result.is_err() && p.failed_from.is_none() {
                    p.failed_from = Some(done + 1);
                }
                p.done = target;
            });
            if !later.is_empty() && !self.has_failed() {
                // the writes of every ticket enqueued so far are in the store (a ticket
                // is enqueued after its write): their sync runs while this round's
                // fan-out does, and their actions still run after that fan-out
                let next = self.queue.lock().next - 1;
                if next > target {
                    started = Some((next, self.start_sync()));
                }
            }
            later.into_iter().for_each(|l| l());
            self.announced.send_replace(target);
        }
    }

    /// With `target` the last ticket enqueued (after `done`): if writes are concurrent
    /// (the last sync had company and ended less than `delay` ago), sleeps on the
    /// loop's own thread, in steps, until as many tickets are pending as that sync
    /// covered, or a step brought none, or `delay` has passed, or the loop is stopping;
    /// returns the last ticket enqueued by then.
    fn more_tickets(
        &self,
        done: u64,
        mut target: u64,
        delay: Delay,
        stop: &tokio_util::sync::CancellationToken,
    ) -> u64 {
        if delay.max.is_zero() {
            return target;
        }
        let Some(last) = *self.last_sync.lock() else {
            return target;
        };
        if last.tickets < COMMIT_SIBLINGS || last.ended.elapsed() >= delay.max {
            return target;
        }
        let want = last.tickets.min(DELAY_ENOUGH_TICKETS);
        let until = Instant::now() + delay.max;
        loop {
            let now = Instant::now();
            // every request being handled is waiting for a ticket: none will come
            let nobody_else = self.running.load(Ordering::Relaxed) <= target - done;
            if target - done >= want
                || nobody_else
                || now >= until
                || self.has_failed()
                || stop.is_cancelled()
            {
                return target;
            }
            std::thread::sleep((until - now).min(delay.step));
            let before = target;
            target = self.queue.lock().next - 1;
            if target == before {
                // nobody else is writing now: the rest are waiting for this sync
                return target;
            }
        }
    }

    /// Counts a request as being handled until the guard drops: the commit delay
    /// does not wait for writes once every such request waits for a ticket.
    pub fn request_running(&self) -> RequestRunning<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        RequestRunning(self)
    }

    fn record_sync(&self, tickets: u64, took: std::time::Duration) {
        *self.last_sync.lock() = Some(LastSync {
            tickets,
            ended: Instant::now(),
        });
        let mut st = self.stats.lock();
        st.syncs += 1;
        st.tickets += tickets;
        self.sync_seconds.record(took.as_secs_f64());
    }

    /// Starts one sync of everything written so far, on a blocking thread.
    fn start_sync(&self) -> RunningSync {
        let store = self.store.clone();
        RunningSync {
            // timed on its thread: the histogram is the sync's, not the fan-out's it
            // overlapped
            task: tokio::task::spawn_blocking(move || timed_sync(&*store)),
        }
    }
}

/// One sync of `store`, and how long it took (the sync alone, wherever it runs).
fn timed_sync(store: &dyn Store) -> (Result<(), StoreError>, std::time::Duration) {
    let started = Instant::now();
    (store.sync(), started.elapsed())
}

/// Where the loop runs the syncs nothing overlaps: in place on a thread of its own
/// ([`Committer::spawn`]), with its commit delay, or on a blocking thread when it
/// shares a runtime's workers (where it must not sleep, so without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syncs {
    Inline(Delay),
    Blocking,
}

/// A sync of the store running on a blocking thread, and how long it took.
struct RunningSync {
    task: tokio::task::JoinHandle<(Result<(), StoreError>, std::time::Duration)>,
}

impl RunningSync {
    /// Waits for it; counted as covering `tickets` tickets.
    async fn finish(self, c: &Committer, tickets: u64) -> Result<(), StoreError> {
        let (result, took) = self
            .task
            .await
            .unwrap_or_else(|e| (Err(StoreError::Io(e.to_string())), Default::default()));
        c.record_sync(tickets, took);
        result
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
        let c = Committer::new(store.clone(), "test".into(), metrics::Histogram::noop());
        tokio::spawn(c.clone().run(Default::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..200 {
            store.write(&Batch::default()).unwrap();
            let s = seen.clone();
            let t = c.enqueue(Some(Box::new(move || {
                s.lock().push(i);
                None
            })));
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
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        tokio::spawn(c.clone().run(Default::default()));
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        c.enqueue(Some(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
            None
        })));
        c.barrier().await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_ticket_after_the_loop_stopped_fails_instead_of_waiting_forever() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(c.clone().run(stop.clone()));
        let before = c.enqueue(None);
        stop.cancel();
        run.await.unwrap();
        c.durable(before).await.unwrap();
        let after = c.enqueue(None);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), c.durable(after))
            .await
            .expect("durable() returned");
        assert!(matches!(waited, Err(StoreError::Io(_))), "{waited:?}");
    }

    /// How a commit loop can end without being stopped.
    #[derive(Debug, Clone, Copy)]
    enum Death {
        ActionPanics,
        LaterPanics,
        Aborted,
    }

    /// A ticket enqueued before a round's fan-out has its sync started under that
    /// fan-out; if the fan-out panics meanwhile, that ticket still fails (its action
    /// never runs), though its sync may complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ticket_synced_under_a_fan_out_that_panicked_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        let run = tokio::spawn(c.clone().run(Default::default()));
        c.barrier().await.unwrap();
        let second: Arc<Mutex<Option<Ticket>>> = Arc::default();
        let second_ran = Arc::new(AtomicUsize::new(0));
        let first = {
            let (c, second, second_ran) = (c.clone(), second.clone(), second_ran.clone());
            c.clone().enqueue(Some(Box::new(move || {
                // enqueued before this round's fan-out: its sync starts under it
                let ran = second_ran.clone();
                *second.lock() = Some(c.enqueue(Some(Box::new(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    None
                }))));
                Some(Box::new(|| panic!("a fan-out panicked")) as Later)
            })))
        };
        c.durable(first).await.unwrap();
        assert!(run.await.unwrap_err().is_panic());
        let second = second
            .lock()
            .take()
            .expect("the second ticket was enqueued");
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), c.durable(second))
            .await
            .expect("the wait returned");
        assert!(
            matches!(waited, Err(StoreError::SyncFailed | StoreError::Io(_))),
            "{waited:?}"
        );
        assert_eq!(second_ran.load(Ordering::SeqCst), 0);
        assert!(c.has_failed());
    }

    #[tokio::test]
    async fn waits_after_the_loop_panicked_or_was_aborted_fail_instead_of_hanging() {
        async fn within<F: std::future::Future>(f: F) -> F::Output {
            tokio::time::timeout(std::time::Duration::from_secs(10), f)
                .await
                .expect("the wait returned")
        }
        for death in [Death::ActionPanics, Death::LaterPanics, Death::Aborted] {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
            let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
            let run = tokio::spawn(c.clone().run(Default::default()));
            c.barrier().await.unwrap();
            match death {
                Death::ActionPanics => {
                    c.enqueue(Some(Box::new(|| panic!("an action panicked"))));
                }
                Death::LaterPanics => {
                    c.enqueue(Some(Box::new(|| {
                        Some(Box::new(|| panic!("a later part panicked")) as Later)
                    })));
                }
                Death::Aborted => {
                    // a ticket the loop never got to
                    c.enqueue(None);
                    run.abort();
                }
            }
            let ended = run.await.unwrap_err();
            assert!(ended.is_panic() || ended.is_cancelled(), "{death:?}");
            let settled = within(c.settle_reads()).await;
            assert!(
                matches!(settled, Err(StoreError::Io(_) | StoreError::SyncFailed)),
                "{death:?}: {settled:?}"
            );
            let after = c.enqueue(None);
            let waited = within(c.durable(after)).await;
            assert!(
                matches!(waited, Err(StoreError::Io(_) | StoreError::SyncFailed)),
                "{death:?}: {waited:?}"
            );
            // the process takes no more writes, and is not ready
            assert!(c.has_failed(), "{death:?}");
            assert!(
                matches!(
                    c.write_unsynced(&Batch::default()),
                    Err(StoreError::SyncFailed)
                ),
                "{death:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_loop_on_its_own_thread_runs_actions_there_and_ends_with_its_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store.clone(), "test".into(), metrics::Histogram::noop());
        let stop = tokio_util::sync::CancellationToken::new();
        let finished = c.spawn(stop.clone(), Duration::ZERO).unwrap();
        let ran_on = Arc::new(Mutex::new(None));
        let r = ran_on.clone();
        store.write(&Batch::default()).unwrap();
        let t = c.enqueue(Some(Box::new(move || {
            *r.lock() = std::thread::current().name().map(String::from);
            None
        })));
        c.durable(t).await.unwrap();
        assert_eq!(ran_on.lock().as_deref(), Some("jetway-commit"));
        let last = c.enqueue(None);
        stop.cancel();
        finished.await.unwrap();
        c.durable(last).await.unwrap();
        assert_eq!(c.stats().tickets, 2);
        // ended cleanly: a later ticket is refused as "stopped", not as a failed sync
        assert!(!c.has_failed());
        assert!(matches!(
            c.durable(c.enqueue(None)).await,
            Err(StoreError::Io(_))
        ));
    }

    /// Waits for `t` up to `limit`: `None` if it was not durable by then.
    async fn durable_within(c: &Committer, t: Ticket, limit: Duration) -> Option<()> {
        tokio::time::timeout(limit, c.durable(t))
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    /// A committer on its own thread with `delay`, whose first sync covers
    /// [`COMMIT_SIBLINGS`] tickets (enqueued before the loop starts).
    async fn after_a_concurrent_sync(
        delay: Duration,
        step: Duration,
    ) -> (
        tempfile::TempDir,
        Arc<dyn Store>,
        Arc<Committer>,
        tokio_util::sync::CancellationToken,
        tokio::sync::oneshot::Receiver<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store.clone(), "test".into(), metrics::Histogram::noop());
        let first: Vec<Ticket> = (0..COMMIT_SIBLINGS).map(|_| c.enqueue(None)).collect();
        let stop = tokio_util::sync::CancellationToken::new();
        let finished = c.spawn_stepping(stop.clone(), delay, step).unwrap();
        for t in first {
            c.durable(t).await.unwrap();
        }
        assert_eq!((c.stats().syncs, c.stats().tickets), (1, COMMIT_SIBLINGS));
        (dir, store, c, stop, finished)
    }

    /// One write after [`after_a_concurrent_sync`] gets the second sync within `limit`.
    async fn synced_alone_within(store: &Arc<dyn Store>, c: &Committer, limit: Duration) {
        store.write(&Batch::default()).unwrap();
        let t = c.enqueue(None);
        durable_within(c, t, limit).await.unwrap();
        assert_eq!(c.stats().syncs, 2);
    }

    #[tokio::test]
    async fn under_concurrent_writes_a_sync_waits_for_as_many_tickets_as_the_last() {
        let step = Duration::from_secs(2);
        let (_dir, store, c, stop, finished) =
            after_a_concurrent_sync(Duration::from_secs(60), step).await;
        // one write right after a sync of four, with other requests still being
        // handled, waits for company
        let _requests: Vec<_> = (0..2 * COMMIT_SIBLINGS)
            .map(|_| c.request_running())
            .collect();
        store.write(&Batch::default()).unwrap();
        let first = c.enqueue(None);
        assert!(durable_within(&c, first, Duration::from_millis(300))
            .await
            .is_none());
        assert_eq!(c.stats().syncs, 1);
        // and goes once the last sync's company is back (at the end of the step it
        // arrived in), not a step later
        let rest: Vec<Ticket> = (1..COMMIT_SIBLINGS).map(|_| c.enqueue(None)).collect();
        for t in rest {
            durable_within(&c, t, step * 3 / 2).await.unwrap();
        }
        assert_eq!(
            (c.stats().syncs, c.stats().tickets),
            (2, 2 * COMMIT_SIBLINGS)
        );
        stop.cancel();
        finished.await.unwrap();
    }

    #[tokio::test]
    async fn a_sync_waits_no_longer_once_writes_stop_coming() {
        let (_dir, store, c, stop, finished) =
            after_a_concurrent_sync(Duration::from_secs(60), Duration::from_millis(500)).await;
        // requests are being handled, but one step brings no write from them
        let _requests: Vec<_> = (0..COMMIT_SIBLINGS).map(|_| c.request_running()).collect();
        synced_alone_within(&store, &c, Duration::from_secs(20)).await;
        stop.cancel();
        finished.await.unwrap();
    }

    #[tokio::test]
    async fn a_sync_does_not_wait_when_every_request_waits_for_it() {
        // a step as long as the delay: any wait would be the whole delay
        let delay = Duration::from_secs(60);
        let (_dir, store, c, stop, finished) = after_a_concurrent_sync(delay, delay).await;
        let _request = c.request_running();
        synced_alone_within(&store, &c, Duration::from_secs(20)).await;
        stop.cancel();
        finished.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_after_a_pause_does_not_wait_for_the_commit_delay() {
        let delay = Duration::from_secs(2);
        // a step as long as the delay: any wait would be the whole delay
        let (_dir, store, c, stop, finished) = after_a_concurrent_sync(delay, delay).await;
        // the condition under test is the pause itself: longer than the delay
        tokio::time::sleep(delay + Duration::from_millis(100)).await;
        let _requests: Vec<_> = (0..COMMIT_SIBLINGS).map(|_| c.request_running()).collect();
        synced_alone_within(&store, &c, delay * 3 / 4).await;
        stop.cancel();
        finished.await.unwrap();
    }

    #[tokio::test]
    async fn a_lone_write_does_not_wait_for_the_commit_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store.clone(), "test".into(), metrics::Histogram::noop());
        // the last sync had some company, but less than COMMIT_SIBLINGS
        let first: Vec<Ticket> = (1..COMMIT_SIBLINGS).map(|_| c.enqueue(None)).collect();
        let stop = tokio_util::sync::CancellationToken::new();
        // a step as long as the delay, and other requests (reads) in flight: only
        // the siblings rule keeps the next write from waiting the whole delay
        let delay = Duration::from_secs(60);
        let finished = c.spawn_stepping(stop.clone(), delay, delay).unwrap();
        for t in first {
            c.durable(t).await.unwrap();
        }
        let _requests: Vec<_> = (0..2 * COMMIT_SIBLINGS)
            .map(|_| c.request_running())
            .collect();
        for n in 2..=4 {
            store.write(&Batch::default()).unwrap();
            let t = c.enqueue(None);
            durable_within(&c, t, Duration::from_secs(20))
                .await
                .unwrap();
            assert_eq!(c.stats().syncs, n);
        }
        stop.cancel();
        finished.await.unwrap();
    }

    #[tokio::test]
    async fn a_panic_on_the_commit_thread_fails_the_waiters_and_ends_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        let finished = c.spawn(Default::default(), Duration::ZERO).unwrap();
        c.barrier().await.unwrap();
        c.enqueue(Some(Box::new(|| panic!("an action panicked"))));
        let after = c.enqueue(None);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), c.durable(after))
            .await
            .expect("the wait returned");
        assert!(
            matches!(waited, Err(StoreError::Io(_) | StoreError::SyncFailed)),
            "{waited:?}"
        );
        assert!(finished.await.is_err(), "the thread ended by its panic");
        assert!(c.has_failed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_is_woken_before_the_later_part_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        tokio::spawn(c.clone().run(Default::default()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (first, later) = (events.clone(), events.clone());
        let (back, heard) = std::sync::mpsc::channel::<()>();
        let t = c.enqueue(Some(Box::new(move || {
            first.lock().push("action");
            Some(Box::new(move || {
                // holds the committer until the waiter is back, if it is let back
                let _ = heard.recv_timeout(std::time::Duration::from_secs(30));
                later.lock().push("later");
            }) as Later)
        })));
        c.durable(t).await.unwrap();
        events.lock().push("waiter");
        back.send(()).unwrap();
        c.settle_reads().await.unwrap();
        assert_eq!(*events.lock(), ["action", "waiter", "later"]);
    }

    #[tokio::test]
    async fn settled_reads_see_only_durable_announced_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        tokio::spawn(c.clone().run(Default::default()));
        let announced = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let _gate = c.write_gate();
            let a = announced.clone();
            c.enqueue(Some(Box::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
                Some(Box::new(move || {
                    a.fetch_add(1, Ordering::SeqCst);
                }) as Later)
            })));
        }
        c.settle_reads().await.unwrap();
        assert_eq!(announced.load(Ordering::SeqCst), 10, "later parts too");
        // nothing pending: returns at once
        c.settle_reads().await.unwrap();
        assert_eq!(c.stats().tickets, 5);
    }

    /// A step that waited (for a write, a catch-up, or a turn it announces) leaves no
    /// token-check catch-up for a later step to rest on.
    #[tokio::test]
    async fn a_wait_forgets_the_token_checks_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::new(store, "test".into(), metrics::Histogram::noop());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(c.clone().run(stop.clone()));
        assert!(after_token_check(async {}).await.1, "nothing waited for");
        let t = c.enqueue(None);
        let (synced, left) = after_token_check(c.durable(t)).await;
        synced.unwrap();
        assert!(!left, "durable");
        assert!(!after_token_check(c.barrier()).await.1, "barrier");
        assert!(!after_token_check(c.catch_up()).await.1, "catch_up");
        assert!(!after_token_check(async { c.waiting() }).await.1, "waiting");
        stop.cancel();
    }
}
