//! The TCP listener: accepts connections, refuses an address over its connection cap
//! (a trusted proxy is not counted), refuses HTTP/2, and fails a connection that has
//! not become a WebSocket within the handshake timeout, reading or writing.

use dashmap::DashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::AddrKey;
use crate::config::LimitsConfig;
use crate::metrics::{Metrics, Rejection};

/// Trusted proxies are a server concern: their WebSockets count for the clients they
/// forward.
impl LimitsConfig {
    /// Whether a TCP peer is counted against the per-address cap when it connects: a
    /// trusted proxy is not (its WebSockets count for the clients it forwards).
    pub fn counts_tcp_peer(&self, ip: IpAddr) -> bool {
        self.limits_addr(ip) && !crate::server::forwarded::is_trusted(ip, &self.trusted_proxies)
    }
}

/// Open connections per address.
#[derive(Default)]
pub struct AddrCounter {
    open: DashMap<AddrKey, usize>,
}

/// One counted connection; uncounts itself when dropped.
pub struct AddrSlot {
    counter: Arc<AddrCounter>,
    key: AddrKey,
}

impl AddrCounter {
    /// Counts a connection unless `max` are already open from `ip`.
    pub fn try_acquire(self: &Arc<Self>, key: AddrKey, max: usize) -> Option<AddrSlot> {
        let mut n = self.open.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            counter: self.clone(),
            key,
        })
    }

    pub fn open(&self, key: AddrKey) -> usize {
        self.open.get(&key).map_or(0, |n| *n)
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        self.counter.open.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// What the HTTP side knows about one TCP connection: its peer and the deadline
/// by which it must have become a WebSocket (or started its next request).
#[derive(Debug)]
pub struct ConnMark {
    pub peer: SocketAddr,
    /// A plain HTTP exchange allowed to outlast the timeout is in progress.
    unbounded: AtomicBool,
    /// Every write that makes progress gives the connection a full timeout again.
    paced_by_writes: AtomicBool,
    /// Milliseconds since `epoch`.
    deadline_ms: AtomicI64,
    epoch: Instant,
    timeout: Duration,
}

impl ConnMark {
    fn new(peer: SocketAddr, timeout: Duration) -> Self {
        ConnMark {
            peer,
            unbounded: AtomicBool::new(false),
            paced_by_writes: AtomicBool::new(false),
            deadline_ms: AtomicI64::new(timeout.as_millis() as i64),
            epoch: Instant::now(),
            timeout,
        }
    }

    /// A request arrived: the connection gets another full timeout.
    pub fn request_started(&self) {
        let ms = (self.epoch.elapsed() + self.timeout).as_millis() as i64;
        self.deadline_ms.store(ms, Ordering::Relaxed);
    }

    /// From now on each write to the connection that makes progress gives it a full
    /// timeout again (a large response, such as an admin's backup, sent to a slow
    /// reader): a client that stops reading is cut a timeout after its last write.
    pub fn paced_by_writes(&self) {
        self.paced_by_writes.store(true, Ordering::Relaxed);
    }

    /// A write of `n` bytes was taken.
    fn wrote(&self, n: usize) {
        if n > 0 && self.paced_by_writes.load(Ordering::Relaxed) {
            self.request_started();
        }
    }

    /// A plain HTTP exchange that may take longer than the timeout (an admin's
    /// backup being made): the connection has no deadline until the guard is
    /// dropped, and then a full timeout again.
    pub fn unbounded(self: &Arc<Self>) -> Unbounded {
        self.unbounded.store(true, Ordering::Relaxed);
        Unbounded(self.clone())
    }

    fn deadline(&self) -> Option<Instant> {
        if self.unbounded.load(Ordering::Relaxed) {
            return None;
        }
        let ms = self.deadline_ms.load(Ordering::Relaxed).max(0) as u64;
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// See [`ConnMark::unbounded`].
#[derive(Debug)]
pub struct Unbounded(Arc<ConnMark>);

impl Drop for Unbounded {
    fn drop(&mut self) {
        self.0.request_started();
        self.0.unbounded.store(false, Ordering::Relaxed);
    }
}

/// The connect info every handler can extract: the peer and its mark.
#[derive(Clone, Debug)]
pub struct Peer(pub Arc<ConnMark>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        Peer(stream.io().mark.clone())
    }
}

/// A TCP listener that refuses an address over its connection limit and wraps each
/// accepted stream in a [`GuardedStream`].
pub struct GuardedListener {
    inner: TcpListener,
    limits: Arc<LimitsConfig>,
    counter: Arc<AddrCounter>,
    metrics: Arc<Metrics>,
}

impl GuardedListener {
    pub fn new(
        inner: TcpListener,
        limits: Arc<LimitsConfig>,
        counter: Arc<AddrCounter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        GuardedListener {
            inner,
            limits,
            counter,
            metrics,
        }
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // out of file descriptors and the like: wait, as axum does
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = if self.limits.counts_tcp_peer(peer.ip()) {
                let key = self.limits.addr_key(peer.ip());
                match self
                    .counter
                    .try_acquire(key, self.limits.max_connections_per_addr)
                {
                    Some(s) => Some(s),
                    None => {
                        self.metrics.rejected(Rejection::PerAddressLimit);
                        tracing::info!(peer = %peer.ip(), counted_as = %key, "too many connections from one address");
                        let _ = stream.try_write(TOO_MANY);
                        drop(stream);
                        continue;
                    }
                }
            } else {
                None
            };
            let _ = stream.set_nodelay(true);
            let timeout = Duration::from_secs(self.limits.handshake_timeout.max(1));
            let mark = Arc::new(ConnMark::new(peer, timeout));
            let first = mark.deadline().unwrap_or_else(Instant::now);
            return (
                GuardedStream {
                    inner: stream,
                    mark,
                    timer: Some(Box::pin(tokio::time::sleep_until(first.into()))),
                    timer_at: first,
                    preface: 0,
                    send_capped: false,
                    metrics: ConnGauge::new(self.metrics.clone()),
                    _slot: slot,
                },
                peer,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Counts an open TCP connection in the metrics while it lives.
struct ConnGauge(Arc<Metrics>);

impl ConnGauge {
    fn new(m: Arc<Metrics>) -> Self {
        m.tcp_opened();
        ConnGauge(m)
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.tcp_closed();
    }
}

/// A TCP stream that fails its reads and writes once its handshake deadline passes
/// before it became a WebSocket (a client that stops reading its responses is cut off
/// too), and its first read if it opens with HTTP/2's preface.
pub struct GuardedStream {
    inner: TcpStream,
    mark: Arc<ConnMark>,
    /// Until the upgrade.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timer_at: Instant,
    /// How many bytes of [`H2_PREFACE`] the stream began with so far; [`NOT_H2`] once it
    /// began otherwise.
    preface: u8,
    /// The send buffer was made small for a connection paced by its writes.
    send_capped: bool,
    metrics: ConnGauge,
    _slot: Option<AddrSlot>,
}

/// The send buffer of a connection paced by its writes ([`ConnMark::paced_by_writes`]):
/// the kernel lets a writer through once a third of the buffer has drained, and of an
/// autotuned one (up to 4 MiB) a client reading at 50 KB/s would drain that in 28 s,
/// near the timeout; of this one (clamped to `wmem_max`, ~208 KiB by default, then
/// doubled), in under 3 s. It stays for the connection's life (no autotuning: about
/// 4 MB/s at a 100 ms round trip).
const PACED_SEND_BUFFER: usize = 256 * 1024;

/// HTTP/2 with prior knowledge (RFC 9113, 3.4) is refused: hyper would serve it
/// (hyper-util's `server-auto`, which the upgrade's downcast needs, turns it on, and
/// `axum::serve` has no switch), and its many requests at once on one connection
/// would slip past the per-connection limits, which count HTTP/1 requests. Only the
/// part every such client sends first is compared.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
const NOT_H2: u8 = u8::MAX;

/// What a WebSocket keeps of its TCP connection's accounting once upgraded: the
/// connection counted in the metrics and against its address's cap while it is open.
pub struct TcpHold {
    _metrics: ConnGauge,
    _slot: Option<AddrSlot>,
}

impl GuardedStream {
    /// The bare stream once the connection is a WebSocket (its handshake deadline, timer
    /// and mark are done with) and the accounting that must live as long as it.
    pub fn into_websocket(self) -> (TcpStream, TcpHold) {
        (
            self.inner,
            TcpHold {
                _metrics: self.metrics,
                _slot: self._slot,
            },
        )
    }
}

impl GuardedStream {
    /// An error once the handshake deadline has passed; otherwise the deadline's timer
    /// wakes this task when it does.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match (self.mark.deadline(), self.timer.as_mut()) {
            (Some(deadline), Some(timer)) => {
                if deadline != self.timer_at {
                    self.timer_at = deadline;
                    timer.as_mut().reset(deadline.into());
                }
                if timer.as_mut().poll(cx).is_ready() {
                    self.metrics.0.rejected(Rejection::HandshakeTimeout);
                    // closed with a reset: the responses a client never read go with
                    // it (a plain close left them queued in the kernel for minutes,
                    // the connection no longer counted against its address)
                    let _ = self.inner.set_zero_linger();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "handshake timeout",
                    ));
                }
            }
            // for as long as an unbounded exchange lasts (the timer's memory goes back)
            (None, Some(_)) => self.timer = None,
            (Some(deadline), None) => {
                self.timer_at = deadline;
                self.timer = Some(Box::pin(tokio::time::sleep_until(deadline.into())));
                return self.check_deadline(cx);
            }
            _ => {}
        }
        Ok(())
    }

    /// Before a write: a connection now paced by its writes gets a small send buffer.
    fn before_write(&mut self) {
        if !self.send_capped && self.mark.paced_by_writes.load(Ordering::Relaxed) {
            self.send_capped = true;
            let capped =
                socket2::SockRef::from(&self.inner).set_send_buffer_size(PACED_SEND_BUFFER);
            if let Err(e) = capped {
                tracing::warn!(peer = %self.mark.peer, error = %e, "could not shrink a send buffer");
            }
        }
    }

    /// Compares the stream's first bytes, `read`, with HTTP/2's preface.
    fn check_preface(&mut self, read: &[u8]) -> std::io::Result<()> {
        let at = usize::from(self.preface);
        if at >= H2_PREFACE.len() {
            return Ok(());
        }
        let n = read.len().min(H2_PREFACE.len() - at);
        if read[..n] != H2_PREFACE[at..at + n] {
            self.preface = NOT_H2;
            return Ok(());
        }
        self.preface += n as u8;
        if usize::from(self.preface) < H2_PREFACE.len() {
            return Ok(());
        }
        tracing::debug!(peer = %self.mark.peer, "HTTP/2 refused");
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "HTTP/2 is not served",
        ))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.check_deadline(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.check_preface(&buf.filled()[before..])?;
        }
        read
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check_deadline(cx)?;
        self.before_write();
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.mark.wrote(n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check_deadline(cx)?;
        self.before_write();
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.mark.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_slots_count_and_release() {
        let c = Arc::new(AddrCounter::default());
        let ip = AddrKey::of("192.0.2.7".parse().unwrap(), 64);
        let a = c.try_acquire(ip, 2).unwrap();
        let _b = c.try_acquire(ip, 2).unwrap();
        assert!(c.try_acquire(ip, 2).is_none());
        drop(a);
        assert_eq!(c.open(ip), 1);
        assert!(c.try_acquire(ip, 2).is_some());
        assert!(c.try_acquire(ip, 0).is_some(), "0 means no limit");
    }
}
