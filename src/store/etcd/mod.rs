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
//!
//! Here: the store, its retries and the `Store` reads (from the mirror); `txn` the
//! writes, `follower` the load and the watch, `ids` the id blocks, `presence` the
//! presence counts.

mod follower;
mod ids;
mod presence;
mod txn;

use etcd_client::{Client, ConnectOptions};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::domain::{
    Booking, Flight, FlightId, Locator, Millis, Order, UserId, Username, WaitlistEntry,
};
use crate::store::{
    AccountEvent, AccountLine, Batch, BookingCounts, HistoryEvent, IdemKey, Listener, Page, Paged,
    PaymentAttempt, PaymentMark, RefundRecord, Replicated, SessionKey, SessionRecord, SledStore,
    Store, StoreError, StoreResult, UserRecord,
};
use ids::IdBlocks;

/// One try of one request to one member.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write or a settle keeps retrying (covers an etcd leader election).
const DEADLINE: Duration = Duration::from_secs(15);
/// etcd's answer to a write on a lease that has expired (retrying cannot help).
const LEASE_GONE: &str = "lease not found";
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

    /// Keeps lease `id` alive for one more period: false if it is gone or the
    /// member did not answer within [`REQUEST_TIMEOUT`].
    async fn keep_alive(&self, id: i64) -> bool {
        let alive = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
            let (mut keeper, mut replies) = self.clients[i].lease_client().keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(replies.message().await?.map_or(0, |r| r.ttl()))
        })
        .await;
        matches!(alive, Ok(Ok(ttl)) if ttl > 0)
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
                let (node, flight) = crate::store::parse_presence_key(&k)?;
                Some((node, flight, crate::store::presence_count(Some(&v))))
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
        self.take_id()
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
    fn oldest_sessions(&self, user: UserId, n: usize) -> StoreResult<(usize, Vec<SessionKey>)> {
        self.mirror.oldest_sessions(user, n)
    }
    fn oldest_account_events(
        &self,
        user: UserId,
        line: AccountLine,
        n: usize,
    ) -> StoreResult<(usize, Vec<AccountEvent>)> {
        self.mirror.oldest_account_events(user, line, n)
    }
    fn flights(&self) -> StoreResult<Vec<Flight>> {
        self.mirror.flights()
    }
    fn flight(&self, id: &FlightId) -> StoreResult<Option<Flight>> {
        self.mirror.flight(id)
    }
    fn version(&self, flight: &FlightId) -> StoreResult<u64> {
        self.mirror.version(flight)
    }
    fn checkin_sequence(&self, flight: &FlightId) -> StoreResult<u64> {
        self.mirror.checkin_sequence(flight)
    }
    fn line_revision(&self, flight: &FlightId) -> StoreResult<Option<u64>> {
        self.mirror.line_revision(flight)
    }
    fn user_line(&self, user: UserId) -> StoreResult<(Option<u64>, usize)> {
        self.mirror.user_line(user)
    }
    fn user_holds(&self, user: UserId, now: Millis) -> StoreResult<(Option<u64>, usize)> {
        self.mirror.user_holds(user, now)
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
    fn waiting_entries(&self, user: UserId) -> usize {
        self.mirror.waiting_entries(user)
    }
    fn capped_holds(&self, user: UserId, now: Millis) -> StoreResult<usize> {
        self.mirror.capped_holds(user, now)
    }
    fn user_bookings(&self, user: UserId, page: Page) -> StoreResult<Paged<Booking>> {
        self.mirror.user_bookings(user, page)
    }
    fn order(&self, order_id: &str) -> StoreResult<Option<Order>> {
        self.mirror.order(order_id)
    }
    fn user_orders(&self, user: UserId, page: Page) -> StoreResult<Paged<Order>> {
        self.mirror.user_orders(user, page)
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
    fn booking_attempts(&self, locator: &Locator) -> StoreResult<Vec<PaymentAttempt>> {
        self.mirror.booking_attempts(locator)
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
    fn refund_by_key(&self, key: &str) -> StoreResult<Option<RefundRecord>> {
        self.mirror.refund_by_key(key)
    }
    fn refund_made_by(&self, gateway_ref: &str) -> StoreResult<Option<RefundRecord>> {
        self.mirror.refund_made_by(gateway_ref)
    }
    fn pending_refunds(&self) -> StoreResult<Vec<(String, String)>> {
        self.mirror.pending_refunds()
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
    fn user_waitlist(&self, user: UserId, page: Page) -> StoreResult<Paged<WaitlistEntry>> {
        self.mirror.user_waitlist(user, page)
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
