//! Delivery to connections: each connection's bounded outbound queue ([`Outbox`]) and
//! the registry of which connections belong to which user. A push is encoded once and
//! the same bytes are queued for every receiver; a receiver whose queue is full is
//! closed rather than waited for.
//!
//! A connection is ended in one of two ways: [`Outbox::close`] skips whatever is
//! still queued (a stalled client will not read it anyway), [`Outbox::finish`] sends
//! it first (a reply to a request that was carried out must not be lost to a
//! shutdown).

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

use crate::domain::UserId;

/// WebSocket close codes the server uses.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;

/// Limits of one connection's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            messages: 1024,
            bytes: 4 << 20,
        }
    }
}

/// Why and how a connection is being closed.
#[derive(Debug, Clone, Copy)]
struct Closing {
    code: u16,
    reason: &'static str,
    /// Send the frames already queued before the close frame.
    drain: bool,
}

struct Shared {
    id: u64,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Set (after `close_reason`) once a close was asked for; no frame is queued after.
    closing: AtomicBool,
    close_reason: parking_lot::Mutex<Option<Closing>>,
    kill: Notify,
}

/// The sending side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    shared: Arc<Shared>,
}

/// The connection's writer end of the queue.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Utf8Bytes>,
    shared: Arc<Shared>,
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

/// How every push starts (see `protocol::envelope::push`); a reply starts with `"id"`.
const PUSH_PREFIX: &str = "{\"jsonrpc\":\"2.0\",\"method\":";

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
    let (tx, rx) = mpsc::channel(limits.messages.max(1));
    let shared = Arc::new(Shared {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.bytes,
        closing: AtomicBool::new(false),
        close_reason: parking_lot::Mutex::new(None),
        kill: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReceiver { rx, shared },
    )
}

impl Outbox {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues a frame without waiting. On overflow the connection is told to close
    /// (the writer sends a close frame) and `false` is returned.
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        self.send_inner(frame.as_str().starts_with(PUSH_PREFIX), frame)
    }

    fn send_inner(&self, push: bool, frame: Utf8Bytes) -> bool {
        let ok = self.queue(frame);
        let counter = match (ok, push) {
            (true, true) => &STATS.pushes,
            (true, false) => return true,
            (false, _) => &STATS.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    fn queue(&self, frame: Utf8Bytes) -> bool {
        if self.shared.closing.load(Ordering::Relaxed) {
            return false;
        }
        let len = frame.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close(CLOSE_POLICY, "slow consumer: outbound queue full");
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.close(CLOSE_POLICY, "slow consumer: outbound queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
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
        let mut slot = self.shared.close_reason.lock();
        if slot.is_none() {
            if code == CLOSE_POLICY && reason.starts_with("slow consumer") {
                STATS.slow_closes.fetch_add(1, Ordering::Relaxed);
            }
            *slot = Some(Closing {
                code,
                reason,
                drain,
            });
            self.shared.closing.store(true, Ordering::SeqCst);
            drop(slot);
            self.shared.kill.notify_one();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }
}

/// What the writer should do next.
pub enum Next {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
    Ended,
}

impl OutboxReceiver {
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(c) = self.close_reason() {
                if c.drain {
                    if let Some(f) = self.take() {
                        return Next::Frame(f);
                    }
                }
                return Next::Close(c.code, c.reason);
            }
            tokio::select! {
                biased;
                _ = self.shared.kill.notified() => continue,
                f = self.rx.recv() => return match f {
                    Some(f) => {
                        self.shared.queued_bytes.fetch_sub(f.len(), Ordering::Relaxed);
                        Next::Frame(f)
                    }
                    None => Next::Ended,
                },
            }
        }
    }

    /// Takes a frame that is already queued, without waiting; none once the
    /// connection is to be closed at once.
    pub fn try_next(&mut self) -> Option<Utf8Bytes> {
        if self.close_reason().is_some_and(|c| !c.drain) {
            return None;
        }
        self.take()
    }

    fn take(&mut self) -> Option<Utf8Bytes> {
        let f = self.rx.try_recv().ok()?;
        self.shared
            .queued_bytes
            .fetch_sub(f.len(), Ordering::Relaxed);
        Some(f)
    }

    fn close_reason(&self) -> Option<Closing> {
        if self.shared.closing.load(Ordering::SeqCst) {
            Some(self.shared.close_reason.lock().unwrap_or(Closing {
                code: CLOSE_NORMAL,
                reason: "closing",
                drain: false,
            }))
        } else {
            None
        }
    }
}

/// A connection that is logged in, for `booking.updated` pushes.
#[derive(Clone)]
struct UserConn {
    outbox: Outbox,
    token_hash: Arc<str>,
}

/// Which connections belong to which user.
#[derive(Default)]
pub struct UserRegistry {
    conns: DashMap<UserId, Vec<UserConn>>,
}

impl UserRegistry {
    pub fn attach(&self, user: UserId, token_hash: &str, outbox: &Outbox) {
        let mut v = self.conns.entry(user).or_default();
        v.retain(|c| c.outbox.id() != outbox.id());
        v.push(UserConn {
            outbox: outbox.clone(),
            token_hash: token_hash.into(),
        });
    }

    pub fn detach(&self, user: UserId, conn_id: u64) {
        self.conns.remove_if_mut(&user, |_, v| {
            v.retain(|c| c.outbox.id() != conn_id);
            v.is_empty()
        });
    }

    /// Detaches every connection that used `token_hash` (logout).
    pub fn revoke(&self, user: UserId, token_hash: &str) {
        self.conns.remove_if_mut(&user, |_, v| {
            v.retain(|c| &*c.token_hash != token_hash);
            v.is_empty()
        });
    }

    /// Queues `frame` on every connection of `user`, forgetting closed ones.
    pub fn push(&self, user: UserId, frame: &Utf8Bytes) {
        self.conns.remove_if_mut(&user, |_, v| {
            v.retain(|c| c.outbox.send(frame.clone()) || !c.outbox.is_closing());
            v.is_empty()
        });
    }

    pub fn connections(&self) -> usize {
        self.conns.iter().map(|e| e.value().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_instead_of_blocking() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 2,
            bytes: 1 << 20,
        });
        assert!(o.send("a".into()));
        assert!(o.send("b".into()));
        assert!(!o.send("c".into()));
        assert!(o.is_closing());
        assert!(matches!(rx.next().await, Next::Close(1008, r) if r.contains("slow consumer")));
    }

    #[tokio::test]
    async fn finish_sends_what_is_queued_then_closes() {
        let (o, mut rx) = outbox(QueueLimits::default());
        assert!(o.send("reply".into()));
        o.finish(CLOSE_GOING_AWAY, "bye");
        assert!(!o.send("late".into()), "nothing is queued after finish");
        o.close(CLOSE_POLICY, "ignored: the first request wins");
        assert!(matches!(rx.next().await, Next::Frame(f) if f.as_str() == "reply"));
        assert!(matches!(rx.next().await, Next::Close(1001, "bye")));
    }

    #[tokio::test]
    async fn close_skips_what_is_queued() {
        let (o, mut rx) = outbox(QueueLimits::default());
        assert!(o.send("a".into()));
        assert!(o.send("b".into()));
        o.close(CLOSE_POLICY, "stalled");
        assert!(rx.try_next().is_none());
        assert!(matches!(rx.next().await, Next::Close(1008, "stalled")));
    }

    #[tokio::test]
    async fn byte_bound_is_enforced() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 100,
            bytes: 10,
        });
        assert!(o.send("12345".into()));
        assert!(o.send("12345".into()));
        assert!(!o.send("1".into()));
        assert!(matches!(rx.next().await, Next::Close(..)));
    }

    #[tokio::test]
    async fn frames_flow_in_order_and_free_their_bytes() {
        let (o, mut rx) = outbox(QueueLimits {
            messages: 4,
            bytes: 10,
        });
        for _ in 0..10 {
            assert!(o.send("12345".into()));
            assert!(matches!(rx.next().await, Next::Frame(f) if f.as_str() == "12345"));
        }
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
        assert!(matches!(ra.next().await, Next::Frame(_)));
        assert!(matches!(rb.next().await, Next::Frame(_)));
        assert!(rc.try_next().is_none());
        reg.revoke(UserId(1), "t1");
        reg.push(UserId(1), &"again".into());
        assert!(ra.try_next().is_none());
        assert!(rb.try_next().is_some());
        reg.detach(UserId(1), b.id());
        assert_eq!(reg.connections(), 1);
    }
}
