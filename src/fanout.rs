//! Delivery to connections: each connection's bounded outbound queue ([`Outbox`]) and
//! the registry of which connections belong to which user. A push is encoded once and
//! the same bytes are queued for every receiver; a receiver whose queue is full is
//! closed rather than waited for.
//!
//! The queue is a plain `VecDeque` behind a short lock, handed to the connection's
//! writer whole at each wake-up ([`OutboxReceiver::next`]), so an idle connection holds
//! no queue memory and a burst is written in one go.
//!
//! A connection is ended in one of two ways: [`Outbox::close`] skips whatever is
//! still queued (a stalled client will not read it anyway), [`Outbox::finish`] sends
//! it first (a reply to a request that was carried out must not be lost to a
//! shutdown).
//!
//! The [`Roster`] of a server's connections replaces a timer per connection: one
//! sweep asks the silent ones for a ping and closes the dead ones, and a shutdown
//! reaches every connection through its outbox.

use dashmap::DashMap;
use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::UserId;

/// WebSocket close codes the server uses.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_INTERNAL: u16 = 1011;

/// Limits of one connection's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub messages: u32,
    pub bytes: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            messages: 1024,
            bytes: 4 << 20,
        }
    }
}

/// Why a connection is being closed: the close frame's code and reason.
#[derive(Debug, Clone, Copy)]
struct Closing {
    code: u16,
    reason: &'static str,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// At most `QueueLimits::bytes`, as is `taken`'s.
    bytes: u32,
    /// The batch the writer took last and is writing (frames, bytes): it counts
    /// against the limits until the writer comes back for more.
    taken: (u32, u32),
    /// Set once a close was asked for; no frame is queued after.
    closing: Option<Closing>,
    /// The receiver is gone.
    ended: bool,
}

struct Shared {
    id: u64,
    limits: QueueLimits,
    queue: parking_lot::Mutex<Queue>,
    /// Mirrors `queue.closing.is_some()` for lock-free checks.
    closing: AtomicBool,
    waker: AtomicWaker,
    /// When the client was last heard from ([`now_ms`]).
    seen_ms: AtomicU64,
    /// A request of the connection is being handled: the client is waiting, not
    /// silent.
    busy: AtomicBool,
    /// What the [`Roster`] asked of the connection's task ([`ASK_PING`],
    /// [`ASK_IDLE`], [`ASK_STOP`]).
    asks: AtomicU8,
}

const ASK_PING: u8 = 1;
const ASK_STOP: u8 = 2;
const ASK_IDLE: u8 = 4;

/// Milliseconds since the process's first call.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The sending side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The connection's writer end of the queue.
pub struct OutboxReceiver {
    outbox: Outbox,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Process-wide counts of outbound frames, for `/metrics`.
struct FrameCounters {
    pushes: AtomicU64,
    dropped: AtomicU64,
    slow_closes: AtomicU64,
}

static STATS: FrameCounters = FrameCounters {
    pushes: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    slow_closes: AtomicU64::new(0),
};

/// What a queued frame is: a push the server sends on its own, or the reply to a
/// request. Only pushes are counted as such; both count when dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Push,
    Reply,
}

#[derive(Debug, Clone, Copy)]
pub struct FrameStats {
    /// Pushes queued.
    pub pushes: u64,
    /// Frames (pushes or replies) not queued: the connection was full or closing.
    pub dropped: u64,
    /// Connections closed because their queue overflowed.
    pub slow_closes: u64,
}

pub fn frame_stats() -> FrameStats {
    FrameStats {
        pushes: STATS.pushes.load(Ordering::Relaxed),
        dropped: STATS.dropped.load(Ordering::Relaxed),
        slow_closes: STATS.slow_closes.load(Ordering::Relaxed),
    }
}

pub fn outbox(limits: QueueLimits) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        limits: QueueLimits {
            messages: limits.messages.max(1),
            bytes: limits.bytes,
        },
        queue: parking_lot::Mutex::new(Queue::default()),
        closing: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        seen_ms: AtomicU64::new(now_ms()),
        busy: AtomicBool::new(false),
        asks: AtomicU8::new(0),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver {
            outbox: Outbox { shared },
        },
    )
}

impl Outbox {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues a frame without waiting. On overflow the connection is told to close
    /// (the writer sends a close frame) and `false` is returned.
    pub fn send(&self, kind: FrameKind, frame: Utf8Bytes) -> bool {
        let ok = self.queue(frame);
        let counter = match (ok, kind) {
            (true, FrameKind::Push) => &STATS.pushes,
            (true, FrameKind::Reply) => return true,
            (false, _) => &STATS.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    fn queue(&self, frame: Utf8Bytes) -> bool {
        let limits = self.shared.limits;
        let mut q = self.shared.queue.lock();
        if q.closing.is_some() || q.ended {
            return false;
        }
        let (taken_frames, taken_bytes) = q.taken;
        if q.frames.len() + taken_frames as usize >= limits.messages as usize
            || q.bytes as usize + taken_bytes as usize + frame.len() > limits.bytes as usize
        {
            drop(q);
            self.close(CLOSE_POLICY, "slow consumer: outbound queue full");
            return false;
        }
        q.bytes += frame.len() as u32;
        if q.frames.capacity() == 0 {
            // one frame is the usual batch (a push reaching thousands of idle
            // connections at once): room for one, not a `VecDeque`'s first four
            q.frames.reserve_exact(1);
        }
        q.frames.push_back(frame);
        let first = q.frames.len() == 1;
        drop(q);
        if first {
            self.shared.waker.wake();
        }
        true
    }

    /// Asks the writer to send a close frame at once, dropping what is still queued,
    /// and end the connection.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.end(code, reason, false);
    }

    /// Asks the writer to send everything already queued, then a close frame, and
    /// end the connection. Nothing queued after this call is sent.
    pub fn finish(&self, code: u16, reason: &'static str) {
        self.end(code, reason, true);
    }

    /// The first request to end the connection wins.
    fn end(&self, code: u16, reason: &'static str, drain: bool) {
        let mut q = self.shared.queue.lock();
        if q.closing.is_some() {
            return;
        }
        if code == CLOSE_POLICY && reason.starts_with("slow consumer") {
            STATS.slow_closes.fetch_add(1, Ordering::Relaxed);
        }
        q.closing = Some(Closing { code, reason });
        if !drain {
            q.frames = VecDeque::new();
            q.bytes = 0;
        }
        self.shared.closing.store(true, Ordering::Relaxed);
        drop(q);
        self.shared.waker.wake();
    }

    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }

    /// The client was just heard from.
    pub fn heard(&self) {
        self.shared.seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the client was last heard from.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.shared.seen_ms.load(Ordering::Relaxed)))
    }

    /// A request of the connection started (`true`) or ended: while one runs, the
    /// client is waiting for its reply, which is not silence.
    pub fn set_busy(&self, busy: bool) {
        self.heard();
        self.shared.busy.store(busy, Ordering::Relaxed);
    }

    fn ask(&self, what: u8) {
        self.shared.asks.fetch_or(what, Ordering::Relaxed);
        self.shared.waker.wake();
    }
}

/// What the writer should do next.
pub enum Next {
    /// Every frame queued since the last wake-up, in order.
    Frames(VecDeque<Utf8Bytes>),
    Close(u16, &'static str),
    /// The client has been silent: ping it.
    Ping,
    /// The client looked silent for the idle timeout to the sweep: the connection
    /// decides on its own state (a request it read since, or one running, keeps it).
    Idle,
    /// The server is shutting down: finish the request in flight, then close.
    Stop,
}

impl OutboxReceiver {
    /// The sending side of the same queue.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Waits for queued frames or a close. Cancel-safe: nothing is taken until it
    /// is returned.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| {
            if let Some(n) = self.try_next() {
                return Poll::Ready(n);
            }
            self.outbox.shared.waker.register(cx.waker());
            match self.try_next() {
                Some(n) => Poll::Ready(n),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// What is queued, without waiting: what the roster asked (so that a connection
    /// that always has frames queued is still pinged and checked for idleness), then
    /// the frames (those queued before a [`Outbox::finish`] first), then the close.
    pub fn try_next(&mut self) -> Option<Next> {
        let mut q = self.outbox.shared.queue.lock();
        // the writer is back: the batch it took is written
        q.taken = (0, 0);
        if self.outbox.shared.asks.load(Ordering::Relaxed) != 0 {
            let asks = self.outbox.shared.asks.swap(0, Ordering::Relaxed);
            if asks & ASK_STOP != 0 {
                return Some(Next::Stop);
            } else if asks & ASK_IDLE != 0 {
                return Some(Next::Idle);
            } else if asks & ASK_PING != 0 {
                return Some(Next::Ping);
            }
        }
        if !q.frames.is_empty() {
            q.taken = (q.frames.len() as u32, std::mem::take(&mut q.bytes));
            return Some(Next::Frames(std::mem::take(&mut q.frames)));
        }
        q.closing.map(|c| Next::Close(c.code, c.reason))
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut q = self.outbox.shared.queue.lock();
        q.ended = true;
        q.frames = VecDeque::new();
        q.bytes = 0;
        if q.closing.is_none() {
            q.closing = Some(Closing {
                code: CLOSE_NORMAL,
                reason: "closed",
            });
        }
        self.outbox.shared.closing.store(true, Ordering::Relaxed);
    }
}

/// A server's open connections, for one liveness sweep and the shutdown instead of a
/// timer and a shutdown waiter in every connection. A connection's entry is a weak
/// reference, forgotten by the first sweep after the connection ended.
#[derive(Default)]
pub struct Roster {
    inner: parking_lot::Mutex<RosterInner>,
}

#[derive(Default)]
struct RosterInner {
    conns: Vec<Weak<Shared>>,
    stopping: bool,
}

impl Roster {
    /// Adds a connection; one that joins after [`Roster::stop`] is asked to stop.
    pub fn join(&self, outbox: &Outbox) {
        let mut r = self.inner.lock();
        r.conns.push(Arc::downgrade(&outbox.shared));
        if r.stopping {
            outbox.ask(ASK_STOP);
        }
    }

    /// Asks every connection silent for `ping_after` for a ping, and those silent
    /// for `idle_after` to close unless they heard from their client since (a
    /// connection whose request is running is not silent); forgets the connections
    /// that ended. The sweep never closes a connection itself: a request read in the
    /// same instant must not lose its reply.
    pub fn sweep(&self, ping_after: Duration, idle_after: Duration) {
        let now = now_ms();
        let (ping_after, idle_after) =
            (ping_after.as_millis() as u64, idle_after.as_millis() as u64);
        self.inner.lock().conns.retain(|conn| {
            let Some(shared) = conn.upgrade() else {
                return false;
            };
            if shared.closing.load(Ordering::Relaxed) {
                return !shared.queue.lock().ended;
            }
            let outbox = Outbox { shared };
            if outbox.shared.busy.load(Ordering::Relaxed) {
                outbox.heard();
                return true;
            }
            let silent = now.saturating_sub(outbox.shared.seen_ms.load(Ordering::Relaxed));
            if silent >= idle_after {
                outbox.ask(ASK_IDLE);
            } else if silent >= ping_after {
                outbox.ask(ASK_PING);
            }
            true
        });
    }

    /// Asks every connection, and any that joins later, to stop.
    pub fn stop(&self) {
        let mut r = self.inner.lock();
        r.stopping = true;
        for shared in r.conns.iter().filter_map(Weak::upgrade) {
            Outbox { shared }.ask(ASK_STOP);
        }
    }

    /// Connections joined and not yet forgotten.
    pub fn count(&self) -> usize {
        self.inner.lock().conns.len()
    }
}

/// A connection that is logged in, for `booking.updated` pushes.
#[derive(Clone)]
struct UserConn {
    outbox: Outbox,
    token_hash: Arc<str>,
}

/// Which connections belong to which user, and how many there are (kept as they
/// change, so that nothing counts them at scrape time).
#[derive(Default)]
pub struct UserRegistry {
    conns: DashMap<UserId, Vec<UserConn>>,
    count: std::sync::atomic::AtomicUsize,
}

impl UserRegistry {
    /// Runs `f` on `user`'s connections (dropping the user once none is left) and
    /// moves the count by what it added or removed.
    fn change(&self, user: UserId, f: impl FnOnce(&mut Vec<UserConn>)) {
        let (mut before, mut after) = (0, 0);
        self.conns.remove_if_mut(&user, |_, v| {
            before = v.len();
            f(v);
            after = v.len();
            v.is_empty()
        });
        self.count.fetch_sub(before - after, Ordering::Relaxed);
    }

    pub fn attach(&self, user: UserId, token_hash: &str, outbox: &Outbox) {
        let mut v = self.conns.entry(user).or_default();
        let before = v.len();
        v.retain(|c| c.outbox.id() != outbox.id());
        v.push(UserConn {
            outbox: outbox.clone(),
            token_hash: token_hash.into(),
        });
        if v.len() > before {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn detach(&self, user: UserId, conn_id: u64) {
        self.change(user, |v| v.retain(|c| c.outbox.id() != conn_id));
    }

    /// Detaches every connection that used `token_hash` (logout).
    pub fn revoke(&self, user: UserId, token_hash: &str) {
        self.change(user, |v| v.retain(|c| &*c.token_hash != token_hash));
    }

    /// Queues `frame` on every connection of `user`, forgetting closed ones.
    pub fn push(&self, user: UserId, frame: &Utf8Bytes) {
        self.change(user, |v| {
            v.retain(|c| c.outbox.send(FrameKind::Push, frame.clone()) || !c.outbox.is_closing())
        });
    }

    /// The ids of the connections of `users`.
    pub fn connection_ids(&self, users: impl IntoIterator<Item = UserId>) -> Vec<u64> {
        let mut ids = Vec::new();
        for u in users {
            if let Some(v) = self.conns.get(&u) {
                ids.extend(v.iter().map(|c| c.outbox.id()));
            }
        }
        ids
    }

    /// The open connections of `user`.
    pub fn outboxes(&self, user: UserId) -> Vec<Outbox> {
        self.conns
            .get(&user)
            .map_or_else(Vec::new, |v| v.iter().map(|c| c.outbox.clone()).collect())
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: Option<Next>) -> Vec<String> {
        match n {
            Some(Next::Frames(f)) => f.iter().map(|f| f.as_str().to_owned()).collect(),
            _ => panic!("expected frames"),
        }
    }

    #[tokio::test]
    async fn overflow_closes_instead_of_blocking() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        });
        assert!(o.send(FrameKind::Reply, "a".into()));
        assert!(o.send(FrameKind::Reply, "b".into()));
        assert!(!o.send(FrameKind::Reply, "c".into()));
        assert!(o.is_closing());
        assert!(matches!(rx.next().await, Next::Close(1008, r) if r.contains("slow consumer")));
    }

    #[tokio::test]
    async fn finish_sends_what_is_queued_then_closes() {
        let (o, mut rx) = outbox(QueueLimits::default());
        assert!(o.send(FrameKind::Reply, "reply".into()));
        o.finish(CLOSE_GOING_AWAY, "bye");
        assert!(
            !o.send(FrameKind::Reply, "late".into()),
            "nothing is queued after finish"
        );
        o.close(CLOSE_POLICY, "ignored: the first request wins");
        assert!(matches!(rx.next().await, Next::Frames(f) if f[0].as_str() == "reply"));
        assert!(matches!(rx.next().await, Next::Close(1001, "bye")));
    }

    #[tokio::test]
    async fn close_skips_what_is_queued() {
        let (o, mut rx) = outbox(QueueLimits::default());
        assert!(o.send(FrameKind::Reply, "a".into()));
        assert!(o.send(FrameKind::Reply, "b".into()));
        o.close(CLOSE_POLICY, "stalled");
        assert!(matches!(rx.try_next(), Some(Next::Close(1008, "stalled"))));
    }

    #[tokio::test]
    async fn byte_bound_is_enforced() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 100,
            bytes: 10,
        });
        assert!(o.send(FrameKind::Reply, "12345".into()));
        assert!(o.send(FrameKind::Reply, "12345".into()));
        assert!(!o.send(FrameKind::Reply, "1".into()));
        assert!(matches!(rx.next().await, Next::Close(..)));
    }

    /// Frames handed to the writer used to stop counting at once, so the queue could
    /// take a second full load while the first was still being written.
    #[test]
    fn frames_being_written_count_until_the_writer_is_back() {
        let limits = QueueLimits {
            messages: 3,
            bytes: 10,
        };
        let (o, mut rx) = outbox(limits);
        assert!(o.send(FrameKind::Reply, "123456".into()));
        assert_eq!(frames(rx.try_next()), ["123456"]);
        assert!(o.send(FrameKind::Reply, "1234".into()));
        assert!(
            !o.send(FrameKind::Reply, "1".into()),
            "6 bytes being written and 4 queued fill the 10"
        );
        let (o, mut rx) = outbox(limits);
        for f in ["a", "b"] {
            assert!(o.send(FrameKind::Reply, f.into()));
        }
        assert_eq!(frames(rx.try_next()), ["a", "b"]);
        assert!(o.send(FrameKind::Reply, "c".into()));
        assert!(!o.send(FrameKind::Reply, "d".into()), "3 messages at most");
        let (o, mut rx) = outbox(limits);
        assert!(o.send(FrameKind::Reply, "123456".into()));
        assert_eq!(frames(rx.try_next()), ["123456"]);
        assert!(rx.try_next().is_none(), "the writer is back for more");
        assert!(o.send(FrameKind::Reply, "1234567890".into()));
    }

    #[test]
    fn a_written_batch_stops_counting_when_the_writer_comes_back_for_a_ping() {
        let roster = Roster::default();
        let (o, mut rx) = outbox(QueueLimits {
            messages: 3,
            bytes: 10,
        });
        roster.join(&o);
        assert!(o.send(FrameKind::Push, "123456".into()));
        assert_eq!(frames(rx.try_next()), ["123456"]);
        roster.sweep(Duration::ZERO, Duration::from_secs(3600));
        assert!(matches!(rx.try_next(), Some(Next::Ping)));
        assert!(
            o.send(FrameKind::Push, "1234567890".into()),
            "the batch written before the ping no longer counts"
        );
    }

    #[tokio::test]
    async fn frames_flow_in_order_in_batches_and_free_their_bytes() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 4,
            bytes: 10,
        });
        for _ in 0..10 {
            assert!(o.send(FrameKind::Reply, "12345".into()));
            assert_eq!(frames(Some(rx.next().await)), ["12345"]);
        }
        assert!(o.send(FrameKind::Reply, "a".into()));
        assert!(o.send(FrameKind::Reply, "b".into()));
        assert_eq!(frames(rx.try_next()), ["a", "b"]);
        assert!(rx.try_next().is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken() {
        let (o, mut rx) = outbox(QueueLimits::default());
        let waiter = tokio::spawn(async move { frames(Some(rx.next().await)) });
        tokio::task::yield_now().await;
        assert!(o.send(FrameKind::Reply, "x".into()));
        assert_eq!(waiter.await.unwrap(), ["x"]);
    }

    #[test]
    fn a_dropped_receiver_refuses_frames() {
        let (o, rx) = outbox(QueueLimits::default());
        drop(rx);
        assert!(o.is_closing());
        assert!(!o.send(FrameKind::Reply, "x".into()));
    }

    #[test]
    fn the_roster_pings_the_silent_asks_the_idle_and_stops_everyone() {
        let roster = Roster::default();
        let hour = Duration::from_secs(3600);
        let (quiet, mut quiet_rx) = outbox(QueueLimits::default());
        let (busy, mut busy_rx) = outbox(QueueLimits::default());
        roster.join(&quiet);
        roster.join(&busy);
        busy.set_busy(true);
        roster.sweep(Duration::ZERO, hour);
        assert!(matches!(quiet_rx.try_next(), Some(Next::Ping)));
        assert!(quiet_rx.try_next().is_none(), "asked once per sweep");
        assert!(
            busy_rx.try_next().is_none(),
            "a request running is not silence"
        );
        roster.sweep(Duration::ZERO, Duration::ZERO);
        assert!(matches!(quiet_rx.try_next(), Some(Next::Idle)));
        assert!(busy_rx.try_next().is_none());
        drop(quiet_rx);
        roster.sweep(hour, hour);
        assert_eq!(roster.count(), 1, "an ended connection is forgotten");
        roster.stop();
        assert!(matches!(busy_rx.try_next(), Some(Next::Stop)));
        let (late, mut late_rx) = outbox(QueueLimits::default());
        roster.join(&late);
        assert!(
            matches!(late_rx.try_next(), Some(Next::Stop)),
            "joined after the stop"
        );
    }

    /// The sweep used to close an idle connection itself, so a request read in the
    /// same instant could run with its reply dropped: now the connection decides.
    #[test]
    fn the_sweep_asks_an_idle_connection_and_never_closes_it_itself() {
        let roster = Roster::default();
        let (conn, mut rx) = outbox(QueueLimits::default());
        roster.join(&conn);
        roster.sweep(Duration::ZERO, Duration::ZERO);
        assert!(!conn.is_closing(), "closing is the connection's decision");
        assert!(conn.send(FrameKind::Reply, "a reply".into()));
        assert!(matches!(rx.try_next(), Some(Next::Idle)));
        assert_eq!(frames(rx.try_next()), ["a reply"]);
    }

    /// What the roster asked used to be looked at only once the queue was empty, so
    /// a connection that always had frames queued was never pinged.
    #[test]
    fn a_connection_that_always_has_frames_queued_is_still_pinged() {
        let roster = Roster::default();
        let (conn, mut rx) = outbox(QueueLimits::default());
        roster.join(&conn);
        assert!(conn.send(FrameKind::Push, "first".into()));
        roster.sweep(Duration::ZERO, Duration::from_secs(3600));
        let mut pinged = false;
        for i in 0..3 {
            assert!(conn.send(FrameKind::Push, format!("push {i}").into()));
            match rx.try_next() {
                Some(Next::Ping) => pinged = true,
                Some(Next::Frames(_)) => {}
                _ => panic!("expected frames or a ping"),
            }
        }
        assert!(pinged, "never pinged while frames were queued");
        assert!(conn.silent_for() < Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn registry_pushes_to_every_connection_of_a_user() {
        let reg = UserRegistry::default();
        let (a, mut ra) = outbox(QueueLimits::default());
        let (b, mut rb) = outbox(QueueLimits::default());
        let (c, mut rc) = outbox(QueueLimits::default());
        reg.attach(UserId(1), "t1", &a);
        reg.attach(UserId(1), "t2", &b);
        reg.attach(UserId(2), "t3", &c);
        reg.push(UserId(1), &"hi".into());
        assert!(matches!(ra.next().await, Next::Frames(_)));
        assert!(matches!(rb.next().await, Next::Frames(_)));
        assert!(rc.try_next().is_none());
        reg.revoke(UserId(1), "t1");
        reg.push(UserId(1), &"again".into());
        assert!(ra.try_next().is_none());
        assert!(rb.try_next().is_some());
        reg.detach(UserId(1), b.id());
        assert_eq!(reg.connections(), 1);
    }

    #[test]
    fn the_registry_counts_connections_as_they_come_and_go() {
        let reg = UserRegistry::default();
        let (a, _ra) = outbox(QueueLimits::default());
        let (b, rb) = outbox(QueueLimits::default());
        reg.attach(UserId(1), "t1", &a);
        reg.attach(UserId(1), "t1", &a);
        reg.attach(UserId(2), "t2", &b);
        assert_eq!(reg.connections(), 2, "attaching again adds nothing");
        drop(rb);
        reg.push(UserId(2), &"x".into());
        assert_eq!(reg.connections(), 1, "a closed connection is forgotten");
        reg.detach(UserId(3), 7);
        reg.revoke(UserId(1), "other");
        assert_eq!(reg.connections(), 1);
        reg.revoke(UserId(1), "t1");
        assert_eq!(reg.connections(), 0);
    }

    /// A push to thousands of idle connections queues one frame on each at once: a
    /// `VecDeque`'s first growth (room for four, a 144-byte chunk) on every one of
    /// them was a peak of ~140 bytes per connection that the allocator kept.
    #[test]
    fn a_lone_frame_takes_room_for_one() {
        let (o, mut rx) = outbox(QueueLimits::default());
        assert!(o.send(FrameKind::Push, "x".into()));
        assert!(o.shared.queue.lock().frames.capacity() < 4);
        assert!(o.send(FrameKind::Push, "y".into()));
        assert_eq!(frames(rx.try_next()), ["x", "y"]);
    }

    /// Every connection keeps one: with its counts in `u32`s, its `Arc` (16 bytes of
    /// counts more) takes a 160-byte heap chunk instead of 192.
    #[test]
    fn an_outboxs_shared_state_stays_small() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 136, "an outbox's shared state grew to {size} bytes");
    }
}
