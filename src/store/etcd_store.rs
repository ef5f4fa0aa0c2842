//! The etcd backend, for several Jetway nodes sharing one Raft-replicated store.
//!
//! Every record lives under one key prefix in etcd, with the same key bytes as in
//! sled. A batch is one etcd transaction: its create-only keys must be absent and,
//! for a seat change, the flight's version key must still hold the version the node
//! decided on, so two nodes can never both win a seat. A write is acknowledged once
//! etcd committed it (a quorum has it on disk).
//!
//! Each node keeps a full copy of the prefix in a temporary sled database (the
//! mirror), loaded at start and then fed by one watch from the next revision, in
//! revision order. Reads are served from the mirror; [`Replicated::settle`] first
//! waits until the mirror has every revision committed before the call, so a read
//! after a write made anywhere sees it. Every transaction also puts the key `!rev`,
//! so a linearizable read of `!rev` tells the last revision that wrote anything, and
//! waiting for it never depends on watch progress notifications (which etcd before
//! 3.4.25 may send ahead of events still on their way, etcd issue 15220). The [`Listener`] runs for each revision
//! before the revision counts as applied: that is how seat maps, replay buffers and
//! pushes on every node follow changes made through any other node.
//!
//! Each request to etcd gets a short timeout and is retried on the next endpoint
//! (a dead member must not stall a third of the requests). A transaction whose reply
//! was lost may have committed: every transaction also writes a unique marker key
//! (on a lease, so markers expire) that must be absent, and its `else` branch reads
//! that marker back, so a retry that finds its own marker knows it already succeeded,
//! and no try is ever applied twice.

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::sled_store::{batch_ops, decode_change, version_key, Op};
use super::{
    Batch, BookingCounts, HistoryEvent, IdemKey, Listener, PaymentAttempt, PaymentMark,
    RefundRecord, Replicated, SessionRecord, SledStore, Store, StoreError, StoreResult, UserRecord,
};
use crate::domain::{
    Booking, Flight, FlightId, Locator, Millis, Order, UserId, Username, WaitlistEntry,
};

/// One try of one request to one member.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write or a settle keeps retrying (covers an etcd leader election).
const DEADLINE: Duration = Duration::from_secs(15);
/// Ids are reserved from etcd in blocks of this many.
const ID_BLOCK: u64 = 10_000;
/// Transaction markers live this long (seconds); a fresh lease is taken halfway.
const MARKER_TTL: i64 = 600;
const PAGE: i64 = 500;
/// etcd's answer to a write on a lease that has expired (retrying cannot help).
const LEASE_GONE: &str = "lease not found";
/// A node's presence counts outlive it by at most this (seconds).
const PRESENCE_TTL: i64 = 10;
/// How often the presence lease is kept alive.
const PRESENCE_KEEP: Duration = Duration::from_secs(2);
/// Presence keys written per transaction.
const PRESENCE_CHUNK: usize = 100;
/// How often the markers' lease is kept alive.
const LEASE_CHECK: Duration = Duration::from_secs(60);
/// The exit status of a node that can no longer follow the cluster.
pub const EXIT_FELL_BEHIND: i32 = 3;

pub struct EtcdStore {
    me: Weak<EtcdStore>,
    mirror: SledStore,
    clients: Vec<Client>,
    prefix: Vec<u8>,
    prefix_end: Vec<u8>,
    preferred: AtomicUsize,
    /// The newest revision whose changes are in the mirror and heard by the listener
    /// (advanced only by the snapshot and by events, never by progress notifications).
    applied: watch::Sender<u64>,
    ids: Mutex<IdBlocks>,
    refilling: AtomicBool,
    lease: AtomicI64,
    /// The lease of this node's presence counts (0: none yet).
    presence_lease: AtomicI64,
    presence_kept: Mutex<Option<Instant>>,
    node: String,
    markers: AtomicU64,
    listener: OnceLock<Listener>,
    stop: tokio_util::sync::CancellationToken,
}

/// Reserved ids: `next..end` now, then the spare block.
#[derive(Default)]
struct IdBlocks {
    next: u64,
    end: u64,
    spare: Option<(u64, u64)>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects to the cluster and loads this node's copy of every record. Nothing
    /// is followed until [`Replicated::follow`].
    pub async fn connect(endpoints: &[String], prefix: &str) -> StoreResult<Arc<EtcdStore>> {
        if endpoints.is_empty() {
            return Err(StoreError::Io("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT * 2)
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
        let mut clients = Vec::new();
        for e in endpoints {
            clients.push(
                Client::connect([e.as_str()], Some(options.clone()))
                    .await
                    .map_err(|e| StoreError::Io(format!("etcd endpoint: {e}")))?,
            );
        }
        let mut token = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut token);
        let mirror = SledStore::temporary()?;
        let store = Arc::new_cyclic(|me| EtcdStore {
            me: me.clone(),
            mirror,
            clients,
            prefix: prefix.as_bytes().to_vec(),
            prefix_end: range_end(prefix.as_bytes()),
            preferred: AtomicUsize::new(0),
            applied: watch::channel(0).0,
            ids: Mutex::new(IdBlocks::default()),
            refilling: AtomicBool::new(false),
            lease: AtomicI64::new(0),
            presence_lease: AtomicI64::new(0),
            presence_kept: Mutex::new(None),
            node: hex::encode(token),
            markers: AtomicU64::new(0),
            listener: OnceLock::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        store.load().await?;
        store.refill_ids().await?;
        store.renew_lease().await;
        Ok(store)
    }

    fn full(&self, k: &[u8]) -> Vec<u8> {
        let mut f = self.prefix.clone();
        f.extend_from_slice(k);
        f
    }

    /// Runs `call` against one member after another until one answers within
    /// [`REQUEST_TIMEOUT`], for up to [`DEADLINE`].
    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> StoreResult<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
            let err =
                match tokio::time::timeout(REQUEST_TIMEOUT, call(self.clients[i].clone())).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) if e.to_string().contains(LEASE_GONE) => {
                        return Err(StoreError::Io(format!("etcd {what}: {e}")))
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
            let _ = self.preferred.compare_exchange(
                i,
                (i + 1) % self.clients.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if started.elapsed() > DEADLINE || self.stop.is_cancelled() {
                return Err(StoreError::Io(format!("etcd {what}: {err}")));
            }
            tracing::debug!(member = i, error = %err, "etcd {what} failed; trying the next member");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Loads every record under the prefix, as of one revision, into the mirror.
    async fn load(&self) -> StoreResult<()> {
        let mut start = self.prefix.clone();
        let mut revision = 0i64;
        loop {
            let (from, rev) = (start.clone(), revision);
            let end = self.prefix_end.clone();
            let mut resp = self
                .retry("load", |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        c.get(
                            from,
                            Some(
                                GetOptions::new()
                                    .with_range(end)
                                    .with_limit(PAGE)
                                    .with_revision(rev),
                            ),
                        )
                        .await
                    }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let writes: Vec<_> = kvs
                .iter()
                .filter_map(|kv| {
                    kv.key()
                        .strip_prefix(self.prefix.as_slice())
                        .map(|k| (k.to_vec(), Some(kv.value().to_vec())))
                })
                .collect();
            self.mirror.apply_raw(&writes)?;
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        self.applied.send_replace(revision.max(0) as u64);
        tracing::info!(revision, "loaded the replicated store");
        Ok(())
    }

    /// Reserves the next block of ids with a compare-and-set on the counter.
    async fn refill_ids(&self) -> StoreResult<()> {
        let k = self.full(b"!ids");
        let block = self
            .retry("id block", |mut c| {
                let k = k.clone();
                async move {
                    loop {
                        let cur = c.get(k.clone(), None).await?;
                        let (cond, from) = match cur.kvs().first() {
                            Some(kv) => {
                                let Ok(bytes) = <[u8; 8]>::try_from(kv.value()) else {
                                    return Err(etcd_client::Error::InvalidArgs(
                                        "the id counter is corrupt".into(),
                                    ));
                                };
                                (
                                    Compare::mod_revision(
                                        k.clone(),
                                        CompareOp::Equal,
                                        kv.mod_revision(),
                                    ),
                                    u64::from_be_bytes(bytes),
                                )
                            }
                            None => (Compare::create_revision(k.clone(), CompareOp::Equal, 0), 0),
                        };
                        let to = from + ID_BLOCK;
                        let txn = Txn::new().when([cond]).and_then([TxnOp::put(
                            k.clone(),
                            to.to_be_bytes().to_vec(),
                            None,
                        )]);
                        if c.txn(txn).await?.succeeded() {
                            return Ok((from + 1, to + 1));
                        }
                    }
                }
            })
            .await?;
        let mut ids = self.ids.lock();
        if ids.next >= ids.end {
            (ids.next, ids.end) = block;
        } else {
            ids.spare = Some(block);
        }
        Ok(())
    }

    /// Keeps the markers' lease alive, or takes a new one if it is gone.
    async fn renew_lease(&self) {
        let id = self.lease.load(Ordering::Relaxed);
        if id != 0 {
            let alive = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
                let (mut keeper, mut replies) =
                    self.clients[i].lease_client().keep_alive(id).await?;
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(replies.message().await?.map_or(0, |r| r.ttl()))
            })
            .await;
            if matches!(alive, Ok(Ok(ttl)) if ttl > 0) {
                return;
            }
        }
        let granted = self
            .retry("lease", |c| async move {
                c.lease_client().grant(MARKER_TTL, None).await
            })
            .await;
        match granted {
            Ok(l) => self.lease.store(l.id(), Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "no lease for transaction markers"),
        }
    }

    /// Keeps the presence lease alive (or takes a new one: then `false`) and writes
    /// this node's counts on it.
    async fn put_presence(&self, counts: Vec<(FlightId, u32)>) -> StoreResult<bool> {
        let mut kept = self.keep_presence_lease().await;
        if !kept {
            let l = self
                .retry("lease", |c| async move {
                    c.lease_client().grant(PRESENCE_TTL, None).await
                })
                .await?;
            self.presence_lease.store(l.id(), Ordering::Relaxed);
        }
        let lease = self.presence_lease.load(Ordering::Relaxed);
        let ops: Vec<TxnOp> = counts
            .iter()
            .map(|(f, n)| {
                let k = self.full(&super::presence_key(&self.node, f));
                match n {
                    0 => TxnOp::delete(k, None),
                    n => TxnOp::put(
                        k,
                        n.to_be_bytes().to_vec(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                }
            })
            .collect();
        // etcd bounds the operations of one transaction
        for chunk in ops.chunks(PRESENCE_CHUNK) {
            let txn = Txn::new().and_then(chunk.to_vec());
            let r = self
                .retry("presence", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await;
            if let Err(e) = r {
                // the lease ran out meanwhile: the caller publishes everything again
                self.presence_lease.store(0, Ordering::Relaxed);
                kept = false;
                if !e.to_string().contains(LEASE_GONE) {
                    return Err(e);
                }
            }
        }
        Ok(kept)
    }

    /// True if the presence lease exists and is kept alive (asked at most every
    /// [`PRESENCE_KEEP`]).
    async fn keep_presence_lease(&self) -> bool {
        let id = self.presence_lease.load(Ordering::Relaxed);
        if id == 0 {
            return false;
        }
        if self
            .presence_kept
            .lock()
            .is_some_and(|t| t.elapsed() < PRESENCE_KEEP)
        {
            return true;
        }
        let alive = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
            let (mut keeper, mut replies) = self.clients[i].lease_client().keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(replies.message().await?.map_or(0, |r| r.ttl()))
        })
        .await;
        let kept = matches!(alive, Ok(Ok(ttl)) if ttl > 0);
        *self.presence_kept.lock() = kept.then(Instant::now);
        kept
    }

    /// Waits until the mirror has applied `revision`, which must be the revision of
    /// a write under the prefix (its event is on the way).
    async fn applied_to(&self, revision: u64) -> StoreResult<()> {
        let mut rx = self.applied.subscribe();
        let caught_up = tokio::time::timeout(DEADLINE, rx.wait_for(|a| *a >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        match caught_up {
            true => Ok(()),
            false => Err(StoreError::Io(format!(
                "this node has not caught up with revision {revision}"
            ))),
        }
    }

    /// The revision of the last write under the prefix, from a reply that read `!rev`.
    fn last_write(resp: &etcd_client::TxnResponse) -> Option<u64> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .filter(|kv| kv.key().ends_with(b"!rev"))
                .map(|kv| kv.mod_revision() as u64),
            _ => None,
        })
    }

    async fn commit_batch(&self, batch: Batch, expect: Option<(FlightId, u64)>) -> StoreResult<()> {
        let ids = (0..batch.events.len())
            .map(|_| self.next_id())
            .collect::<StoreResult<Vec<_>>>()?;
        let ops = batch_ops(&batch, &ids)?;
        let marker = self.full(
            format!(
                "!txn/{}/{}",
                self.node,
                self.markers.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        let mut when = vec![Compare::create_revision(
            marker.clone(),
            CompareOp::Equal,
            0,
        )];
        let mut then = Vec::new();
        if let Some((flight, v)) = &expect {
            let k = self.full(&version_key(flight));
            when.push(if *v == 0 {
                Compare::create_revision(k, CompareOp::Equal, 0)
            } else {
                Compare::value(k, CompareOp::Equal, v.to_be_bytes().to_vec())
            });
        }
        for op in ops {
            match op {
                Op::Put(k, v) => then.push(TxnOp::put(self.full(&k), v, None)),
                Op::Create(k, v) => {
                    let k = self.full(&k);
                    when.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                    then.push(TxnOp::put(k, v, None));
                }
                Op::Delete(k) => then.push(TxnOp::delete(self.full(&k), None)),
                Op::Expect(k, v) => when.push(Compare::value(self.full(&k), CompareOp::Equal, v)),
            }
        }
        let rev_key = self.full(b"!rev");
        then.push(TxnOp::put(rev_key.clone(), Vec::new(), None));
        let build = |lease: i64| {
            let mut then = then.clone();
            then.push(TxnOp::put(
                marker.clone(),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            Txn::new().when(when.clone()).and_then(then).or_else([
                TxnOp::get(marker.clone(), None),
                TxnOp::get(rev_key.clone(), None),
            ])
        };
        let send = |txn: Txn| {
            self.retry("write", move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
        };
        let resp = match send(build(self.lease.load(Ordering::Relaxed))).await {
            Err(StoreError::Io(e)) if e.contains(LEASE_GONE) => {
                // the markers' lease ran out (this node was cut off for a long time)
                self.lease.store(0, Ordering::Relaxed);
                self.renew_lease().await;
                send(build(self.lease.load(Ordering::Relaxed))).await?
            }
            r => r?,
        };
        let revision = resp.header().map_or(0, |h| h.revision()) as u64;
        if resp.succeeded() {
            return self.applied_to(revision).await;
        }
        let ours = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .filter(|kv| kv.key() == marker.as_slice())
                .map(|kv| kv.mod_revision() as u64),
            _ => None,
        });
        match ours {
            // an earlier try committed and only its reply was lost
            Some(rev) => self.applied_to(rev).await,
            None => {
                // wait for the write that made the compare fail
                self.applied_to(Self::last_write(&resp).unwrap_or(0))
                    .await?;
                Err(if expect.is_some() {
                    StoreError::Stale
                } else {
                    StoreError::Conflict
                })
            }
        }
    }

    /// Follows the prefix from the revision after the mirror's, forever: applies each
    /// revision's writes to the mirror, tells the listener, then marks it applied.
    async fn watch_loop(self: Arc<Self>) {
        let mut lease_at = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let from = *self.applied.borrow() as i64 + 1;
            let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
            let options = WatchOptions::new()
                .with_range(self.prefix_end.clone())
                .with_start_revision(from)
                .with_progress_notify();
            let mut stream = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.clients[i]
                    .watch_client()
                    .watch(self.prefix.clone(), Some(options)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                other => {
                    let e = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(member = i, error = %e, "cannot watch etcd; trying the next member");
                    self.preferred
                        .store((i + 1) % self.clients.len(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            loop {
                if lease_at.elapsed() > LEASE_CHECK {
                    lease_at = Instant::now();
                    let me = self.clone();
                    tokio::spawn(async move { me.renew_lease().await });
                }
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        // a silent member may be cut off: make it prove it is alive
                        if stream.request_progress().await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(REQUEST_TIMEOUT * 2, stream.message()).await {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    }
                    _ = self.stop.cancelled() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                if resp.compact_revision() > 0 {
                    // the revisions this node missed are gone: its seat maps can no
                    // longer be brought up to date in order. Everything acknowledged
                    // is in etcd, so stop like a crash; a restart reloads it all.
                    tracing::error!(
                        compacted = resp.compact_revision(),
                        "this node fell behind etcd's compaction; exiting to be restarted"
                    );
                    std::process::exit(EXIT_FELL_BEHIND);
                }
                if resp.canceled() {
                    break;
                }
                if resp.events().is_empty() {
                    // created, or a progress notification: proof of life only
                    continue;
                }
                if let Err(e) = self.apply_events(resp.events()) {
                    tracing::error!(error = %e, "cannot apply replicated changes; exiting to be restarted");
                    std::process::exit(EXIT_FELL_BEHIND);
                }
            }
            tracing::warn!(member = i, "etcd watch ended; resuming on the next member");
            self.preferred
                .store((i + 1) % self.clients.len(), Ordering::Relaxed);
        }
    }

    fn apply_events(&self, events: &[etcd_client::Event]) -> StoreResult<()> {
        let mut group: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut rev = 0u64;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let r = kv.mod_revision() as u64;
            if r != rev && !group.is_empty() {
                self.apply_revision(rev, std::mem::take(&mut group))?;
            }
            rev = r;
            if let Some(k) = kv.key().strip_prefix(self.prefix.as_slice()) {
                let v = match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                group.push((k.to_vec(), v));
            }
        }
        if !group.is_empty() {
            self.apply_revision(rev, group)?;
        }
        Ok(())
    }

    fn apply_revision(&self, rev: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> StoreResult<()> {
        if rev <= *self.applied.borrow() {
            return Ok(());
        }
        self.mirror.apply_raw(&writes)?;
        let changes: Vec<_> = writes
            .iter()
            .filter_map(|(k, v)| decode_change(k, v.as_deref()))
            .collect();
        if let Some(l) = self.listener.get() {
            if !changes.is_empty() {
                l(&changes);
            }
        }
        self.applied.send_replace(rev);
        Ok(())
    }
}

impl Replicated for EtcdStore {
    fn commit(
        &self,
        batch: Batch,
        expect: Option<(FlightId, u64)>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.commit_batch(batch, expect))
    }

    fn settle(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let k = self.full(b"!rev");
            let resp = self
                .retry("read", |mut c| {
                    let k = k.clone();
                    async move { c.get(k, None).await }
                })
                .await?;
            let last = resp.kvs().first().map_or(0, |kv| kv.mod_revision() as u64);
            self.applied_to(last).await
        })
    }

    fn follow(&self, listener: Listener) -> StoreResult<()> {
        if self.listener.set(listener).is_err() {
            return Err(StoreError::Io("already following".into()));
        }
        let me = self.me.upgrade().ok_or_else(|| io("store dropped"))?;
        tokio::spawn(me.watch_loop());
        Ok(())
    }

    fn close(&self) {
        self.stop.cancel();
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn set_presence(&self, counts: Vec<(FlightId, u32)>) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(self.put_presence(counts))
    }

    fn presence(&self) -> StoreResult<Vec<(String, FlightId, u32)>> {
        Ok(self
            .mirror
            .raw_prefix(b"!presence/")?
            .into_iter()
            .filter_map(|(k, v)| {
                let (node, flight) = super::parse_presence_key(&k)?;
                Some((node, flight, super::presence_count(Some(&v))))
            })
            .collect())
    }
}

impl Store for EtcdStore {
    fn write(&self, _batch: &Batch) -> StoreResult<()> {
        Err(StoreError::Io(
            "a replicated store is written through Replicated::commit".into(),
        ))
    }

    fn sync(&self) -> StoreResult<()> {
        Ok(())
    }

    fn next_id(&self) -> StoreResult<u64> {
        let (id, low) = {
            let mut ids = self.ids.lock();
            if ids.next >= ids.end {
                if let Some((next, end)) = ids.spare.take() {
                    (ids.next, ids.end) = (next, end);
                }
            }
            let id = (ids.next < ids.end).then(|| {
                ids.next += 1;
                ids.next - 1
            });
            (id, ids.spare.is_none() && ids.end - ids.next < ID_BLOCK / 2)
        };
        if low && !self.refilling.swap(true, Ordering::SeqCst) {
            if let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) {
                rt.spawn(async move {
                    if let Err(e) = me.refill_ids().await {
                        tracing::error!(error = %e, "cannot reserve ids");
                    }
                    me.refilling.store(false, Ordering::SeqCst);
                });
            } else {
                self.refilling.store(false, Ordering::SeqCst);
            }
        }
        id.ok_or_else(|| StoreError::Io("out of reserved ids; retry".into()))
    }

    fn user_by_name(&self, name: &Username) -> StoreResult<Option<UserRecord>> {
        self.mirror.user_by_name(name)
    }
    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.mirror.user(id)
    }
    fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.mirror.session(token_hash)
    }
    fn sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.mirror.sessions()
    }
    fn flights(&self) -> StoreResult<Vec<Flight>> {
        self.mirror.flights()
    }
    fn version(&self, flight: &FlightId) -> StoreResult<u64> {
        self.mirror.version(flight)
    }
    fn checkin_sequence(&self, flight: &FlightId) -> StoreResult<u64> {
        self.mirror.checkin_sequence(flight)
    }
    fn booking(&self, locator: &Locator) -> StoreResult<Option<Booking>> {
        self.mirror.booking(locator)
    }
    fn all_bookings(&self) -> StoreResult<Vec<Booking>> {
        self.mirror.all_bookings()
    }

    fn booking_counts(&self) -> BookingCounts {
        self.mirror.booking_counts()
    }
    fn open_holds(&self, user: UserId, now: Millis) -> usize {
        self.mirror.open_holds(user, now)
    }
    fn user_bookings(&self, user: UserId) -> StoreResult<Vec<Booking>> {
        self.mirror.user_bookings(user)
    }
    fn order(&self, order_id: &str) -> StoreResult<Option<Order>> {
        self.mirror.order(order_id)
    }
    fn user_orders(&self, user: UserId) -> StoreResult<Vec<Order>> {
        self.mirror.user_orders(user)
    }
    fn history(&self, user: UserId, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        self.mirror.history(user, limit)
    }
    fn reply(&self, key: &IdemKey) -> StoreResult<Option<Value>> {
        self.mirror.reply(key)
    }
    fn open_attempts(&self) -> StoreResult<Vec<PaymentAttempt>> {
        self.mirror.open_attempts()
    }
    fn attempt(&self, id: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.mirror.attempt(id)
    }
    fn attempt_by_ref(&self, payment_ref: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.mirror.attempt_by_ref(payment_ref)
    }
    fn uncertain_failures(&self) -> StoreResult<Vec<PaymentAttempt>> {
        self.mirror.uncertain_failures()
    }
    fn open_refund(&self, subject: &str) -> StoreResult<Option<RefundRecord>> {
        self.mirror.open_refund(subject)
    }
    fn open_refunds(&self) -> StoreResult<Vec<RefundRecord>> {
        self.mirror.open_refunds()
    }
    fn payment_mark(&self, locator: &Locator) -> StoreResult<Option<PaymentMark>> {
        self.mirror.payment_mark(locator)
    }
    fn webhook_seen(&self, event_id: &str) -> StoreResult<bool> {
        self.mirror.webhook_seen(event_id)
    }
    fn waitlist_entry(&self, id: &str) -> StoreResult<Option<WaitlistEntry>> {
        self.mirror.waitlist_entry(id)
    }
    fn flight_waitlist(&self, flight: &FlightId) -> StoreResult<Vec<WaitlistEntry>> {
        self.mirror.flight_waitlist(flight)
    }
    fn user_waitlist(&self, user: UserId) -> StoreResult<Vec<WaitlistEntry>> {
        self.mirror.user_waitlist(user)
    }

    fn replicated(&self) -> Option<&dyn Replicated> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(range_end(b"jetway/"), b"jetway0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff"), vec![0]);
    }
}
