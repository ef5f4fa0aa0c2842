//! Delivery to connections: each connection's bounded outbound queue ([`Outbox`]) and
//! the registry of which connections belong to which user. A push is encoded once and
//! the same bytes are queued for every receiver; a receiver whose queue is full is
//! closed rather than waited for.
//!
//! The queue is a plain `VecDeque` behind a short lock, handed to the connection's
//! writer whole at each wake-up ([`OutboxReceiver::next`]), so an idle connection holds
//! no queue memory and a burst is written in one go.
//!
//! The queue also owns the connection's socket once it is a WebSocket ([`Wire`]):
//! whoever queues frames to a connection with nothing queued or being written writes
//! them into the socket at once, without waking its task (a non-blocking write under
//! the queue's lock; what the socket does not take is queued for the task, and a frame
//! it took only in part is finished before any other byte). A change reaching
//! thousands of idle watchers is queued on each ([`Outbox::queue_quiet`]) and then
//! written by one loop per flight ([`Claim`], [`Outbox::kick`]; pushes to a user on
//! many connections the same way), instead of filling the
//! server's run queue with thousands of woken tasks ahead of the requests (a writer's
//! next change waited behind them: docs/benchmarks.md).
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
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::{self, Millis, UserId};

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
    /// The task has started writing bytes of its own and not yet sent them all
    /// ([`Wire::settled`] clears it).
    task_sending: bool,
    /// The connection's socket once it is a WebSocket; closed when its task ends.
    socket: Option<TcpStream>,
    /// The rest of a frame written directly only in part: the socket's next bytes.
    tail: Option<Box<Tail>>,
}

/// What a direct write left of a frame.
struct Tail {
    head: FrameHead,
    frame: Utf8Bytes,
    /// Bytes of the head, then of the frame, already sent.
    sent: usize,
}

/// What is left to send of `head` followed by `body` once `sent` bytes of the two
/// are sent: (the rest of `head`, the rest of `body`).
pub fn unsent<'a>(head: &'a [u8], body: &'a [u8], sent: usize) -> (&'a [u8], &'a [u8]) {
    (
        head.get(sent..).unwrap_or_default(),
        body.get(sent.saturating_sub(head.len())..)
            .unwrap_or_default(),
    )
}

impl Tail {
    /// The unsent rest, as (part of the head, part of the payload).
    fn rest(&self) -> [IoSlice<'_>; 2] {
        let (head, payload) = unsent(self.head.as_bytes(), self.frame.as_bytes(), self.sent);
        [IoSlice::new(head), IoSlice::new(payload)]
    }

    fn len(&self) -> usize {
        self.head.as_bytes().len() + self.frame.len()
    }
}

/// The header of a whole text message as one final, unmasked frame (a server's,
/// RFC 6455 5.2).
#[derive(Clone, Copy, Default)]
pub struct FrameHead {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHead {
    pub fn text(n: usize) -> Self {
        let mut h = FrameHead::default();
        h.bytes[0] = 0x81;
        if n < 126 {
            h.bytes[1] = n as u8;
            h.len = 2;
        } else if let Ok(short) = u16::try_from(n) {
            h.bytes[1] = 126;
            h.bytes[2..4].copy_from_slice(&short.to_be_bytes());
            h.len = 4;
        } else {
            h.bytes[1] = 127;
            h.bytes[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            h.len = 10;
        }
        h
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

tokio::task_local! {
    /// The request the current task handles.
    static REQUESTER: Arc<Requester>;
}

/// A request being handled: its connection, the JSON-RPC id its reply answers, and
/// whether that reply went out already, written by the commit loop the moment the
/// request's change was durable ([`Requester::reply_early`]).
pub struct Requester {
    outbox: Outbox,
    id: Option<serde_json::Value>,
    replied: AtomicBool,
    /// Bytes of replies sent to its connection while it was handled.
    reply_bytes: AtomicUsize,
}

impl Requester {
    /// The id its reply answers; `None` for a notification, which gets no reply.
    pub fn reply_id(&self) -> Option<&serde_json::Value> {
        self.id.as_ref()
    }

    /// Sends `reply` (the request's whole reply frame) now, behind the pushes queued
    /// for it, unless a reply went out already; the request's handler then sends
    /// none ([`replied_early`]). `reply` must be what the handler would send.
    pub fn reply_early(&self, reply: Utf8Bytes) {
        if !self.replied.swap(true, Ordering::AcqRel) {
            // counted here, not by the send (which counts for the task's own request)
            self.reply_bytes.fetch_add(reply.len(), Ordering::Relaxed);
            self.outbox
                .queue(FrameKind::Reply, std::iter::once(&reply), true);
        }
    }
}

/// Runs `handling` as the handling of a request (`id`, `None` for a notification)
/// on `outbox`'s connection: a push it makes to that connection is queued to go out
/// with its reply ([`UserRegistry::push`]). Whenever the request waits for anything
/// (a gateway, a later commit), what it queued is written at once instead, so that a
/// request that goes on after its change never holds back the push, or what is
/// queued behind it.
pub fn handle_request_of<F: std::future::Future>(
    outbox: &Outbox,
    id: Option<serde_json::Value>,
    handling: F,
) -> impl std::future::Future<Output = F::Output> {
    let outbox = outbox.clone();
    let requester = Arc::new(Requester {
        outbox: outbox.clone(),
        id,
        replied: AtomicBool::new(false),
        reply_bytes: AtomicUsize::new(0),
    });
    let mut scoped = Box::pin(REQUESTER.scope(requester, handling));
    std::future::poll_fn(move |cx| {
        let polled = std::future::Future::poll(scoped.as_mut(), cx);
        if polled.is_pending() {
            outbox.kick();
        }
        polled
    })
}

/// The connection whose request this task handles, if it handles one.
pub fn requester() -> Option<u64> {
    REQUESTER.try_with(|r| r.outbox.id()).ok()
}

/// The request this task handles, if it handles one.
pub fn request() -> Option<Arc<Requester>> {
    REQUESTER.try_with(Arc::clone).ok()
}

/// Bytes of replies sent to its connection so far while the request this task handles
/// was handled (its own reply, and any a use case sent, such as a seat map).
pub fn reply_bytes() -> usize {
    REQUESTER
        .try_with(|r| r.reply_bytes.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// Whether the reply to the request this task handles went out already
/// ([`Requester::reply_early`]).
pub fn replied_early() -> bool {
    REQUESTER
        .try_with(|r| r.replied.load(Ordering::Acquire))
        .unwrap_or(false)
}

/// Most frames written into a socket by one direct write; the rest are queued.
const DIRECT_FRAMES: usize = 8;

impl Queue {
    /// Whether frames may go into the socket now: nothing is queued before them and
    /// the task is not writing.
    fn writable_now(&self) -> bool {
        self.frames.is_empty() && self.writable_after_queue()
    }

    /// Whether the queued frames may go into the socket now: the task is not writing.
    fn writable_after_queue(&self) -> bool {
        self.socket.is_some() && self.taken.0 == 0 && self.tail.is_none() && !self.task_sending
    }

    /// Writes what is queued, as far as the socket takes it, if the task is not
    /// writing.
    fn write_queued(&mut self) {
        if self.frames.is_empty() || !self.writable_after_queue() {
            return;
        }
        let frames = std::mem::take(&mut self.frames);
        let done = self.write_now(frames.iter());
        let bytes: usize = frames.iter().take(done).map(|f| f.len()).sum();
        self.frames = frames;
        self.frames.drain(..done);
        self.bytes -= bytes as u32;
        if self.frames.is_empty() {
            // the room a burst took is not kept by an idle connection
            self.frames = VecDeque::new();
        }
    }

    /// Writes as many of `frames` (at most [`DIRECT_FRAMES`]) as the socket takes
    /// without waiting, and returns how many are dealt with: a frame taken in part
    /// is one of them, its rest kept as the tail.
    fn write_now<'a>(&mut self, frames: impl Iterator<Item = &'a Utf8Bytes> + Clone) -> usize {
        let Queue { socket, tail, .. } = self;
        let Some(socket) = socket.as_ref() else {
            return 0;
        };
        let mut heads = [FrameHead::default(); DIRECT_FRAMES];
        let mut count = 0;
        for (h, f) in heads.iter_mut().zip(frames.clone()) {
            *h = FrameHead::text(f.len());
            count += 1;
        }
        if count == 0 {
            return 0;
        }
        let mut slices = [IoSlice::new(&[]); 2 * DIRECT_FRAMES];
        for (i, f) in frames.clone().take(count).enumerate() {
            slices[2 * i] = IoSlice::new(heads[i].as_bytes());
            slices[2 * i + 1] = IoSlice::new(f.as_bytes());
        }
        // an error (the peer gone) is met again, and handled, by the task's write
        let Ok(mut n) = socket.try_write_vectored(&slices[..2 * count]) else {
            return 0;
        };
        let mut done = 0;
        for (head, f) in heads.iter().zip(frames.take(count)) {
            let whole = head.as_bytes().len() + f.len();
            if n >= whole {
                n -= whole;
                done += 1;
                continue;
            }
            if n > 0 {
                *tail = Some(Box::new(Tail {
                    head: *head,
                    frame: f.clone(),
                    sent: n,
                }));
                done += 1;
            }
            break;
        }
        done
    }

    /// Sends the tail a direct write left, if any, before anything else.
    fn poll_tail(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Queue { socket, tail, .. } = self;
        let Some(socket) = socket.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while let Some(t) = tail {
            let n = ready!(Pin::new(&mut *socket).poll_write_vectored(cx, &t.rest()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            t.sent += n;
            if t.sent >= t.len() {
                *tail = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

struct Shared {
    id: u64,
    limits: QueueLimits,
    queue: parking_lot::Mutex<Queue>,
    /// Mirrors `queue.closing.is_some()` for lock-free checks.
    closing: AtomicBool,
    waker: AtomicWaker,
    /// When the client was last heard from ([`now_tenths`]; 32 bits keep this
    /// struct in a smaller allocation and last 13 years).
    seen: AtomicU32,
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

/// Tenths of a second since the process's first call.
fn now_tenths() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let tenths = EPOCH.get_or_init(Instant::now).elapsed().as_millis() / 100;
    u32::try_from(tenths).unwrap_or(u32::MAX)
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
        seen: AtomicU32::new(now_tenths()),
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

    /// Queues a frame without waiting (or writes it at once, see the module's
    /// comment). On overflow the connection is told to close (the writer sends a
    /// close frame) and `false` is returned.
    pub fn send(&self, kind: FrameKind, frame: Utf8Bytes) -> bool {
        self.send_all(kind, std::iter::once(&frame))
    }

    /// [`Outbox::send`] of several frames in order, written at once together when
    /// the connection is idle.
    pub fn send_all<'a>(
        &self,
        kind: FrameKind,
        frames: impl Iterator<Item = &'a Utf8Bytes> + Clone,
    ) -> bool {
        if matches!(kind, FrameKind::Reply) {
            let bytes = || frames.clone().map(|f| f.len()).sum::<usize>();
            let _ = REQUESTER.try_with(|r| {
                if r.outbox.id() == self.id() {
                    r.reply_bytes.fetch_add(bytes(), Ordering::Relaxed);
                }
            });
        }
        self.queue(kind, frames, true).is_some()
    }

    /// Queues frames without writing them or waking the connection's task: a fan-out
    /// queues a change everywhere first and then [`Outbox::kick`]s the connections,
    /// on another thread. `None` if the connection is closing or overflowed;
    /// `Some(true)` if it needs that kick (its queue was empty).
    pub fn queue_quiet<'a>(
        &self,
        kind: FrameKind,
        frames: impl Iterator<Item = &'a Utf8Bytes> + Clone,
    ) -> Option<bool> {
        self.queue(kind, frames, false)
    }

    /// Writes what is queued into the socket if the connection's task is not
    /// writing, and wakes the task for whatever the socket did not take.
    pub fn kick(&self) {
        let mut q = self.shared.queue.lock();
        q.write_queued();
        let wake = !q.frames.is_empty() || q.tail.is_some();
        drop(q);
        if wake {
            self.shared.waker.wake();
        }
    }

    /// Writes (`now`: with whatever is queued before them, when the task is not
    /// writing) or only queues `frames`. `Some(needs_kick)` once all are written or
    /// queued, where `needs_kick` says that frames were queued without a write or a
    /// wake-up on a connection that had none queued; `None` if the connection is
    /// closing or overflowed (it is then told to close).
    fn queue<'a>(
        &self,
        kind: FrameKind,
        frames: impl Iterator<Item = &'a Utf8Bytes> + Clone,
        now: bool,
    ) -> Option<bool> {
        let limits = self.shared.limits;
        let mut q = self.shared.queue.lock();
        let count = |n: usize, counter: &AtomicU64| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        if q.closing.is_some() || q.ended {
            count(frames.count(), &STATS.dropped);
            return None;
        }
        let written = if now && q.writable_now() {
            q.write_now(frames.clone())
        } else {
            0
        };
        let first = q.frames.is_empty();
        let mut handled = written;
        let mut all = frames.clone().skip(written);
        let mut overflow = false;
        for frame in all.by_ref() {
            let (taken_frames, taken_bytes) = q.taken;
            if q.frames.len() + taken_frames as usize >= limits.messages as usize
                || q.bytes as usize + taken_bytes as usize + frame.len() > limits.bytes as usize
            {
                overflow = true;
                count(1 + all.count(), &STATS.dropped);
                break;
            }
            q.bytes += frame.len() as u32;
            if q.frames.capacity() == 0 {
                // one frame is the usual batch (a push reaching thousands of idle
                // connections at once): room for one, not a `VecDeque`'s first four
                q.frames.reserve_exact(1);
            }
            q.frames.push_back(frame.clone());
            handled += 1;
        }
        if now && !overflow {
            // behind frames a fan-out queued and has not written yet
            q.write_queued();
        }
        let wake = q.tail.is_some() || (now && !q.frames.is_empty());
        drop(q);
        if wake {
            self.shared.waker.wake();
        }
        if kind == FrameKind::Push {
            count(handled, &STATS.pushes);
        }
        if overflow {
            self.close(CLOSE_POLICY, "slow consumer: outbound queue full");
            return None;
        }
        Some(!now && first && handled > written)
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
        self.shared.seen.store(now_tenths(), Ordering::Relaxed);
    }

    /// How long since the client was last heard from.
    pub fn silent_for(&self) -> Duration {
        let tenths = now_tenths().saturating_sub(self.shared.seen.load(Ordering::Relaxed));
        Duration::from_millis(u64::from(tenths) * 100)
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

    /// Hands the connection's socket to the queue, for direct writes, and returns
    /// the task's end of it.
    pub fn attach(&self, socket: TcpStream) -> Wire {
        self.outbox.shared.queue.lock().socket = Some(socket);
        Wire {
            shared: self.outbox.shared.clone(),
        }
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
        if q.tail.is_some() {
            // a flush sends it (the socket sends it before anything else anyway)
            return Some(Next::Frames(VecDeque::new()));
        }
        q.closing.map(|c| Next::Close(c.code, c.reason))
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let socket = {
            let mut q = self.outbox.shared.queue.lock();
            q.ended = true;
            q.frames = VecDeque::new();
            q.bytes = 0;
            q.tail = None;
            if q.closing.is_none() {
                q.closing = Some(Closing {
                    code: CLOSE_NORMAL,
                    reason: "closed",
                });
            }
            q.socket.take()
        };
        self.outbox.shared.closing.store(true, Ordering::Relaxed);
        // closed (its FIN sent) without the lock that writers to this connection take
        drop(socket);
    }
}

/// The connection's socket as its task reads and writes it: shared with direct
/// writers through the queue's lock, and written after the tail of a direct write.
pub struct Wire {
    shared: Arc<Shared>,
}

impl Wire {
    /// The task has sent every byte it started to: others may write whole frames
    /// into the socket again.
    pub fn settled(&self) {
        self.shared.queue.lock().task_sending = false;
    }

    fn write_with<T>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut q = self.shared.queue.lock();
        q.task_sending = true;
        ready!(q.poll_tail(cx))?;
        match q.socket.as_mut() {
            Some(s) => f(Pin::new(s), cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.shared.queue.lock().socket.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s, cx| s.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.queue.lock().poll_tail(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_with(cx, |s, cx| s.poll_shutdown(cx))
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
        let now = now_tenths();
        let tenths = |d: Duration| u32::try_from(d.as_millis() / 100).unwrap_or(u32::MAX);
        let (ping_after, idle_after) = (tenths(ping_after), tenths(idle_after));
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
            let silent = now.saturating_sub(outbox.shared.seen.load(Ordering::Relaxed));
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

/// Most connections a [`Claim`] writes to in place.
const WRITE_IN_PLACE: usize = 8;
/// Connections a [`Claim`]'s loop writes per turn of its owner's lock.
const WRITE_CHUNK: usize = 256;

/// Connections whose frames were queued quietly ([`Outbox::queue_quiet`]) and wait to
/// be written, oldest first, and whether a loop ([`Claim`]) is writing them. It lives
/// under its owner's lock ([`Queued`]): a flight's (so that the loop takes each chunk
/// in a turn of the lock its fan-outs queue under, which paces it: a watcher gets the
/// changes queued meanwhile in one write), or the user registry's. One loop per
/// owner (two per flight measured slower, docs/benchmarks.md).
#[derive(Default)]
pub struct WriteQueue {
    waiting: VecDeque<Outbox>,
    running: bool,
}

impl WriteQueue {
    /// Where a fan-out adds the connections it queued frames on.
    pub(crate) fn waiting(&mut self) -> &mut VecDeque<Outbox> {
        &mut self.waiting
    }

    /// Claims the loop if none runs and connections wait: how many.
    pub(crate) fn claim(&mut self) -> Option<usize> {
        if self.running || self.waiting.is_empty() {
            return None;
        }
        self.running = true;
        Some(self.waiting.len())
    }

    /// Nothing waits and no loop runs.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && !self.running
    }

    /// The next connections to write; none left ends the loop, in the same turn of
    /// the lock as the check (what is added after it claims a loop of its own).
    fn next_chunk(&mut self) -> Option<Vec<Outbox>> {
        if self.waiting.is_empty() {
            self.running = false;
            self.waiting = VecDeque::new();
            return None;
        }
        let n = self.waiting.len().min(WRITE_CHUNK);
        Some(self.waiting.drain(..n).collect())
    }
}

/// The owner of a [`WriteQueue`], which runs `f` on it under its lock.
pub trait Queued: Send + Sync + 'static {
    fn write_queue<R>(&self, f: impl FnOnce(&mut WriteQueue) -> R) -> R;
}

/// The right and duty to run the loop of `owner`'s [`WriteQueue`], taken under its
/// lock ([`WriteQueue::claim`]) so that a burst of additions starts one loop, not
/// one each. Dropped without running to the end (never started, or a panic) it gives
/// the loop up, and the next addition claims it again.
#[must_use]
pub struct Claim<Q: Queued> {
    owner: Arc<Q>,
    waiting: usize,
    done: bool,
}

impl<Q: Queued> Claim<Q> {
    /// `waiting`: what [`WriteQueue::claim`] returned under `owner`'s lock (a claim
    /// made otherwise could give up another's loop when dropped).
    pub(crate) fn new(owner: Arc<Q>, waiting: usize) -> Self {
        Claim {
            owner,
            waiting,
            done: false,
        }
    }

    /// Runs the loop: in place for a few connections (cheaper than handing them
    /// over), or without a runtime; else on one of `runtime`'s blocking threads, so
    /// that neither the commit loop nor a worker waits for a large fan-out.
    pub fn start(self, runtime: Option<&Handle>) {
        match runtime {
            Some(rt) if self.waiting > WRITE_IN_PLACE => {
                rt.spawn_blocking(move || self.run());
            }
            _ => self.run(),
        }
    }

    /// Writes the waiting connections, a chunk at a time, until none are left.
    fn run(mut self) {
        while let Some(chunk) = self.owner.write_queue(WriteQueue::next_chunk) {
            chunk.iter().for_each(Outbox::kick);
        }
        self.done = true;
    }
}

impl<Q: Queued> Drop for Claim<Q> {
    fn drop(&mut self) {
        if !self.done {
            self.owner.write_queue(|q| q.running = false);
        }
    }
}

/// The user registry's [`WriteQueue`].
#[derive(Default)]
struct UserWrites(parking_lot::Mutex<WriteQueue>);

impl Queued for UserWrites {
    fn write_queue<R>(&self, f: impl FnOnce(&mut WriteQueue) -> R) -> R {
        f(&mut self.0.lock())
    }
}

/// A connection that is logged in, for `booking.updated` pushes, until its session
/// expires.
#[derive(Clone)]
struct UserConn {
    outbox: Outbox,
    token_hash: Arc<str>,
    expires_at: Millis,
}

impl UserConn {
    fn live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// Which connections belong to which user, and how many there are (kept as they
/// change, so that nothing counts them at scrape time).
#[derive(Default)]
pub struct UserRegistry {
    conns: DashMap<UserId, Vec<UserConn>>,
    count: std::sync::atomic::AtomicUsize,
    /// The user of each session token attached here, and on how many connections:
    /// a session ended through another node names only its token.
    tokens: DashMap<Arc<str>, (UserId, usize)>,
    /// Writes the pushes to users on many connections.
    writes: Arc<UserWrites>,
}

/// Keeps the connections `keep` says to, noting the tokens of the others in `gone`.
fn retain_conns(
    v: &mut Vec<UserConn>,
    gone: &mut Vec<Arc<str>>,
    mut keep: impl FnMut(&UserConn) -> bool,
) {
    v.retain(|c| {
        let kept = keep(c);
        if !kept {
            gone.push(c.token_hash.clone());
        }
        kept
    });
}

impl UserRegistry {
    /// Runs `f` on `user`'s connections (dropping the user once none is left); `f`
    /// removes connections with [`retain_conns`]. Moves the count and the token
    /// index by what it removed.
    fn change(&self, user: UserId, f: impl FnOnce(&mut Vec<UserConn>, &mut Vec<Arc<str>>)) {
        let mut gone = Vec::new();
        self.conns.remove_if_mut(&user, |_, v| {
            f(v, &mut gone);
            v.is_empty()
        });
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        self.forget_tokens(&gone);
    }

    fn forget_tokens(&self, gone: &[Arc<str>]) {
        for t in gone {
            self.tokens.remove_if_mut(t, |_, (_, n)| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    /// Attaches a connection logged in with the session `token_hash`, which expires
    /// at `expires_at`: from then on the connection gets none of the user's pushes.
    /// The token is indexed before the connection is attached, so a session ended
    /// meanwhile is found either here or by the caller's look at the session after.
    pub fn attach(&self, user: UserId, token_hash: &str, expires_at: Millis, outbox: &Outbox) {
        let token: Arc<str> = token_hash.into();
        self.tokens.entry(token.clone()).or_insert((user, 0)).1 += 1;
        let mut gone = Vec::new();
        {
            let mut v = self.conns.entry(user).or_default();
            retain_conns(&mut v, &mut gone, |c| c.outbox.id() != outbox.id());
            v.push(UserConn {
                outbox: outbox.clone(),
                token_hash: token,
                expires_at,
            });
            // counted while the entry is held: whoever removes it subtracts after
            if gone.is_empty() {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.forget_tokens(&gone);
    }

    pub fn detach(&self, user: UserId, conn_id: u64) {
        self.change(user, |v, gone| {
            retain_conns(v, gone, |c| c.outbox.id() != conn_id)
        });
    }

    /// Detaches every connection that used `token_hash` (logout).
    pub fn revoke(&self, user: UserId, token_hash: &str) {
        self.change(user, |v, gone| {
            retain_conns(v, gone, |c| &*c.token_hash != token_hash)
        });
    }

    /// Detaches every connection that used `token_hash`, whoever its user (a session
    /// ended through another node).
    pub fn revoke_token(&self, token_hash: &str) {
        let user = self.tokens.get(token_hash).map(|e| e.0);
        if let Some(user) = user {
            self.revoke(user, token_hash);
        }
    }

    /// Sends `frame` to every connection of `user`, forgetting closed ones and those
    /// whose session has expired (their next call needing a login is refused). A user
    /// logged in on more connections than a [`Claim`] writes in place gets it
    /// queued on each and written by the registry's loop (on a blocking thread),
    /// so that the caller (the commit loop) does not write to all of them; a reply
    /// sent on one of them after this call still comes after the frame, written
    /// behind what is queued.
    ///
    /// `with_reply` is the connection whose request made the frame (see
    /// [`requester`]), if it is among them: there the frame is only queued, and
    /// goes out with the reply that follows it, in one write; or, should the request
    /// wait for something first, then ([`handle_request_of`]); or, should no reply
    /// come, by the connection's task, which looks at its queue when the request
    /// ends.
    pub fn push(
        &self,
        user: UserId,
        frame: &Utf8Bytes,
        runtime: Option<&Handle>,
        with_reply: Option<u64>,
    ) {
        let mut to_kick = Vec::new();
        let now = domain::now_ms();
        self.change(user, |v, gone| {
            retain_conns(v, gone, |c| c.live(now));
            let in_place = v.len() <= WRITE_IN_PLACE || runtime.is_none();
            retain_conns(v, gone, |c| {
                let queued = if Some(c.outbox.id()) == with_reply {
                    c.outbox
                        .queue_quiet(FrameKind::Push, std::iter::once(frame))
                        .is_some()
                } else if in_place {
                    c.outbox.send(FrameKind::Push, frame.clone())
                } else {
                    c.outbox
                        .queue_quiet(FrameKind::Push, std::iter::once(frame))
                        .map(|kick| kick.then(|| to_kick.push(c.outbox.clone())))
                        .is_some()
                };
                queued || !c.outbox.is_closing()
            })
        });
        if to_kick.is_empty() {
            return;
        }
        let claimed = self.writes.write_queue(|q| {
            q.waiting().extend(to_kick);
            q.claim()
        });
        if let Some(waiting) = claimed {
            Claim::new(self.writes.clone(), waiting).start(runtime);
        }
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

    /// The open connections of `user` whose session has not expired (forgetting the
    /// others).
    pub fn outboxes(&self, user: UserId) -> Vec<Outbox> {
        let now = domain::now_ms();
        let mut out = Vec::new();
        self.change(user, |v, gone| {
            retain_conns(v, gone, |c| c.live(now));
            out = v.iter().map(|c| c.outbox.clone()).collect();
        });
        out
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

    /// A connected socket pair: the server's end attached to a fresh outbox, and the
    /// client's end to read from.
    async fn attached(limits: QueueLimits) -> (Outbox, OutboxReceiver, Wire, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        let (o, rx) = outbox(limits);
        let wire = rx.attach(server.unwrap().0);
        // the socket's first readiness comes from the reactor
        std::future::poll_fn(|cx| {
            let mut q = o.shared.queue.lock();
            q.socket.as_mut().unwrap().poll_write_ready(cx)
        })
        .await
        .unwrap();
        (o, rx, wire, client.unwrap())
    }

    /// Reads `n` whole unmasked text frames (small or 16-bit lengths) from `client`.
    async fn read_frames(client: &mut TcpStream, n: usize) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        for _ in 0..n {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x81, "a final text frame");
            let len = match head[1] {
                126 => {
                    let mut l = [0u8; 2];
                    client.read_exact(&mut l).await.unwrap();
                    u16::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut body = vec![0u8; len];
            client.read_exact(&mut body).await.unwrap();
            out.push(String::from_utf8(body).unwrap());
        }
        out
    }

    /// [`Outbox::queue_quiet`] of one push.
    fn quiet(o: &Outbox, text: &str) -> Option<bool> {
        o.queue_quiet(FrameKind::Push, std::iter::once(&text.into()))
    }

    #[tokio::test]
    async fn an_idle_connections_frames_are_written_without_its_task() {
        let (o, mut rx, _wire, mut client) = attached(QueueLimits::default()).await;
        assert!(o.send(FrameKind::Push, "one".into()));
        let a: Utf8Bytes = "two".into();
        let b: Utf8Bytes = "three".into();
        assert!(o.send_all(FrameKind::Push, [&a, &b].into_iter()));
        assert!(rx.try_next().is_none(), "nothing was left for the task");
        // the task (which would take them from the queue) never ran
        let read = tokio::time::timeout(Duration::from_secs(10), read_frames(&mut client, 3));
        assert_eq!(read.await.expect("written"), ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn frames_wait_behind_a_batch_the_task_holds() {
        let (o, mut rx, _wire, _client) = attached(QueueLimits::default()).await;
        assert_eq!(quiet(&o, "first"), Some(true));
        assert_eq!(frames(rx.try_next()), ["first"]);
        // the task is writing "first": a later frame must not overtake it
        assert!(o.send(FrameKind::Push, "second".into()));
        assert_eq!(frames(rx.try_next()), ["second"], "queued, not written");
        // the task is back for more, and then sends bytes of its own (a pong)
        assert!(rx.try_next().is_none());
        o.shared.queue.lock().task_sending = true;
        assert!(o.send(FrameKind::Push, "third".into()));
        assert_eq!(frames(rx.try_next()), ["third"], "queued, not written");
    }

    #[tokio::test]
    async fn a_kick_writes_what_was_queued_quietly() {
        let (o, mut rx, _wire, mut client) = attached(QueueLimits::default()).await;
        assert_eq!(quiet(&o, "quiet"), Some(true));
        assert_eq!(quiet(&o, "quiet"), Some(false));
        assert_eq!(
            o.shared.queue.lock().frames.len(),
            2,
            "not written before the kick"
        );
        o.kick();
        assert!(o.shared.queue.lock().frames.is_empty());
        let read = tokio::time::timeout(Duration::from_secs(10), read_frames(&mut client, 2));
        assert_eq!(read.await.expect("written"), ["quiet", "quiet"]);
        assert!(rx.try_next().is_none());
    }

    /// A reply must not wait for a fan-out's writing loop to reach its connection:
    /// it is written at once, after the pushes queued before it.
    #[tokio::test]
    async fn a_reply_writes_the_pushes_queued_quietly_before_it() {
        let (o, mut rx, _wire, mut client) = attached(QueueLimits::default()).await;
        assert_eq!(quiet(&o, "push"), Some(true));
        assert!(o.send(FrameKind::Reply, "reply".into()));
        assert!(o.shared.queue.lock().frames.is_empty(), "both written");
        let read = tokio::time::timeout(Duration::from_secs(10), read_frames(&mut client, 2));
        assert_eq!(read.await.expect("written"), ["push", "reply"]);
        assert!(rx.try_next().is_none());
    }

    /// A frame the socket takes only in part is finished before anything else the
    /// connection writes, and nothing is written directly until the task is done.
    #[tokio::test]
    async fn a_frame_written_in_part_is_finished_first() {
        use tokio::io::AsyncWriteExt;
        let (o, mut rx, mut wire, mut client) = attached(QueueLimits::default()).await;
        let big: Utf8Bytes = "x".repeat(60_000).into();
        let mut sent = 0;
        // fill the socket until a frame goes in only in part (a full socket takes
        // part of the next write: the kernel accepts what fits)
        while o.shared.queue.lock().tail.is_none() {
            assert!(o.send(FrameKind::Push, big.clone()));
            sent += 1;
            assert!(
                o.shared.queue.lock().frames.is_empty(),
                "the socket refused a whole frame instead of taking part of it"
            );
        }
        assert!(o.send(FrameKind::Push, "after".into()));
        assert_eq!(frames(rx.try_next()), ["after"]);
        assert!(o.send(FrameKind::Push, "late".into()));
        let reader = tokio::spawn(async move { read_frames(&mut client, sent + 2).await });
        // the task writes what it took as the session does; the tail goes first
        for text in ["after", "late"] {
            wire.write_all(&[0x81, text.len() as u8]).await.unwrap();
            wire.write_all(text.as_bytes()).await.unwrap();
            wire.flush().await.unwrap();
            wire.settled();
            if text == "after" {
                assert_eq!(frames(rx.try_next()), ["late"]);
            }
        }
        let got = reader.await.unwrap();
        assert!(got[..sent].iter().all(|f| f.len() == 60_000));
        assert_eq!(got[sent..], ["after", "late"]);
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

    /// Three connections attached to `reg`: user 1's with tokens t1 and t2, user 2's
    /// with t3.
    fn two_users(reg: &UserRegistry) -> [(Outbox, OutboxReceiver); 3] {
        [(1, "t1"), (1, "t2"), (2, "t3")].map(|(user, token)| {
            let (o, rx) = outbox(QueueLimits::default());
            reg.attach(UserId(user), token, Millis::MAX, &o);
            (o, rx)
        })
    }

    #[tokio::test]
    async fn registry_pushes_to_every_connection_of_a_user() {
        let reg = UserRegistry::default();
        let [(_a, mut ra), (b, mut rb), (_c, mut rc)] = two_users(&reg);
        reg.push(UserId(1), &"hi".into(), None, None);
        assert!(matches!(ra.next().await, Next::Frames(_)));
        assert!(matches!(rb.next().await, Next::Frames(_)));
        assert!(rc.try_next().is_none());
        reg.revoke(UserId(1), "t1");
        reg.push(UserId(1), &"again".into(), None, None);
        assert!(ra.try_next().is_none());
        assert!(rb.try_next().is_some());
        reg.detach(UserId(1), b.id());
        assert_eq!(reg.connections(), 1);
    }

    /// A connection whose session has expired gets none of its user's pushes, even
    /// before anything looks at its session again.
    #[tokio::test]
    async fn a_connection_whose_session_expired_gets_no_pushes() {
        let reg = UserRegistry::default();
        let (live, mut rl) = outbox(QueueLimits::default());
        let (expired, mut re) = outbox(QueueLimits::default());
        reg.attach(UserId(1), "t1", Millis::MAX, &live);
        reg.attach(UserId(1), "t2", domain::now_ms() - 1, &expired);
        let ids: Vec<u64> = reg.outboxes(UserId(1)).iter().map(Outbox::id).collect();
        assert_eq!(ids, [live.id()]);
        reg.push(UserId(1), &"hi".into(), None, None);
        assert!(matches!(rl.next().await, Next::Frames(_)));
        assert!(re.try_next().is_none());
        assert_eq!(reg.connections(), 1, "the expired one is forgotten");
    }

    #[tokio::test]
    async fn sessions_ended_elsewhere_detach_their_connections_whoever_the_user() {
        let reg = UserRegistry::default();
        let [(_a, mut ra), (_b, mut rb), (_c, mut rc)] = two_users(&reg);
        for t in ["t1", "t3", "unknown"] {
            reg.revoke_token(t);
        }
        assert_eq!(reg.connections(), 1);
        assert_eq!(reg.tokens.len(), 1, "only t2 is still in use");
        reg.push(UserId(1), &"hi".into(), None, None);
        reg.push(UserId(2), &"hi".into(), None, None);
        assert!(ra.try_next().is_none());
        assert!(matches!(rb.next().await, Next::Frames(_)));
        assert!(rc.try_next().is_none());
    }

    /// The token index counts each attached connection once under its token, and
    /// forgets a token with its last connection, however that goes.
    #[test]
    fn the_token_index_follows_every_attach_and_removal() {
        let reg = UserRegistry::default();
        let uses = |t: &str| reg.tokens.get(t).map(|e| *e);
        let [(a, _ra), (b, _rb), (c, _rc)] = two_users(&reg);
        // the same connection logged in again with another token
        reg.attach(UserId(1), "t2", Millis::MAX, &a);
        assert_eq!(uses("t1"), None);
        assert_eq!(uses("t2"), Some((UserId(1), 2)));
        assert_eq!(reg.connections(), 3);
        reg.detach(UserId(1), a.id());
        assert_eq!(uses("t2"), Some((UserId(1), 1)));
        // an expired connection pruned by a push, and by a listing
        reg.attach(UserId(1), "t2", domain::now_ms() - 1, &b);
        reg.push(UserId(1), &"hi".into(), None, None);
        assert_eq!(uses("t2"), None);
        reg.attach(UserId(2), "t3", domain::now_ms() - 1, &c);
        assert!(reg.outboxes(UserId(2)).is_empty());
        assert!(reg.tokens.is_empty());
        assert_eq!(reg.connections(), 0);
    }

    /// A runtime whose only blocking thread is busy until the sender is used.
    fn blocked_runtime() -> (tokio::runtime::Runtime, std::sync::mpsc::Sender<()>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        rt.spawn_blocking(move || wait.recv());
        (rt, go)
    }

    /// A user on more connections than are written in place gets a push written
    /// by a blocking thread (the caller only queues it), and a reply sent on one of
    /// them before that thread runs still comes after the push.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_to_many_connections_is_written_elsewhere_and_before_a_later_reply() {
        let reg = UserRegistry::default();
        let mut conns = Vec::new();
        for _ in 0..WRITE_IN_PLACE + 4 {
            let c = attached(QueueLimits::default()).await;
            reg.attach(UserId(1), "t", Millis::MAX, &c.0);
            conns.push(c);
        }
        let (other, go) = blocked_runtime();
        reg.push(UserId(1), &"push".into(), Some(other.handle()), None);
        for (o, ..) in &conns {
            assert_eq!(o.shared.queue.lock().frames.len(), 1, "written in place");
        }
        assert!(conns[0].0.send(FrameKind::Reply, "reply".into()));
        go.send(()).unwrap();
        for (i, (_, _, _, client)) in conns.iter_mut().enumerate() {
            let want: &[&str] = if i == 0 {
                &["push", "reply"]
            } else {
                &["push"]
            };
            let read =
                tokio::time::timeout(Duration::from_secs(10), read_frames(client, want.len()));
            assert_eq!(read.await.expect("written"), want);
        }
        other.shutdown_background();
    }

    /// Pushes to two users on many connections, made before the writing loop runs,
    /// start one loop between them (claimed under the queue's lock), which then
    /// writes both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_pushes_starts_one_writing_loop() {
        let reg = UserRegistry::default();
        let mut conns = Vec::new();
        for user in [1, 2] {
            for _ in 0..WRITE_IN_PLACE + 1 {
                let c = attached(QueueLimits::default()).await;
                reg.attach(UserId(user), "t", Millis::MAX, &c.0);
                conns.push(c);
            }
        }
        let (other, go) = blocked_runtime();
        reg.push(UserId(1), &"one".into(), Some(other.handle()), None);
        reg.push(UserId(2), &"two".into(), Some(other.handle()), None);
        {
            let q = reg.writes.0.lock();
            assert!(q.running, "the first push claims the loop at once");
            assert_eq!(q.waiting.len(), conns.len(), "the second joins it");
        }
        go.send(()).unwrap();
        for (i, (_, _, _, client)) in conns.iter_mut().enumerate() {
            let want = if i <= WRITE_IN_PLACE { "one" } else { "two" };
            let read = tokio::time::timeout(Duration::from_secs(10), read_frames(client, 1));
            assert_eq!(read.await.expect("written"), [want]);
        }
        other.shutdown_background();
    }

    #[test]
    fn the_registry_counts_connections_as_they_come_and_go() {
        let reg = UserRegistry::default();
        let (a, _ra) = outbox(QueueLimits::default());
        let (b, rb) = outbox(QueueLimits::default());
        reg.attach(UserId(1), "t1", Millis::MAX, &a);
        reg.attach(UserId(1), "t1", Millis::MAX, &a);
        reg.attach(UserId(2), "t2", Millis::MAX, &b);
        assert_eq!(reg.connections(), 2, "attaching again adds nothing");
        drop(rb);
        reg.push(UserId(2), &"x".into(), None, None);
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
    /// counts more) takes a 192-byte heap chunk instead of 224 (it holds the
    /// connection's socket, 40 bytes, which the connection's task no longer does).
    #[test]
    fn an_outboxs_shared_state_stays_small() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 176, "an outbox's shared state grew to {size} bytes");
    }
}
