//! The socket under a WebSocket connection: what tungstenite writes (control
//! frames) and the text frames the connection writes itself ([`Coalesce::push_text`])
//! are gathered in memory until a flush, then sent in as few system calls as the
//! kernel takes, and the memory is freed once sent. A burst of pushes costs one
//! `send`, and an idle connection keeps no write buffer. A large message (a seat
//! map) is not copied: it is sent from the message itself, which every subscriber of
//! the same version shares.
//!
//! Reads go through a read-ahead: tungstenite, which keeps no read buffer of its own
//! up front, asks for a few bytes at a time, and each socket read takes up to
//! [`READ_AHEAD`] bytes; what tungstenite has not taken yet is kept only until it
//! has, so an idle connection keeps no read buffer either.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::fanout::{unsent, FrameHead, Wire};

/// The stream under a [`Coalesce`], told when everything it was given is sent: a
/// [`Wire`] lets direct writers in again then.
pub trait Settle {
    fn settled(&self) {}
}

impl Settle for Wire {
    fn settled(&self) {
        Wire::settled(self)
    }
}

/// Gathered bytes beyond this are sent before more are taken.
const LIMIT: usize = 64 * 1024;
/// Most bytes taken from the socket by one read.
const READ_AHEAD: usize = 4096;
/// Messages from this size on are sent from the message itself instead of a copy.
const BY_REFERENCE: usize = 2048;

pub struct Coalesce<S> {
    inner: S,
    /// What is gathered and what is read ahead; none between bursts, so that an idle
    /// connection keeps one pointer here (its task keeps the rest of this struct for
    /// as long as it runs).
    bufs: Option<Box<Buffers>>,
}

#[derive(Default)]
struct Buffers {
    pending: Vec<u8>,
    /// A large message's payload, sent after `pending`.
    large: Option<Utf8Bytes>,
    /// How much of `pending`, then of `large`, is already sent.
    sent: usize,
    /// Bytes read from the socket and not yet taken.
    ahead: Vec<u8>,
    /// How much of `ahead` is already taken.
    taken: usize,
}

impl Buffers {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.large.is_none() && self.ahead.is_empty()
    }
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce { inner, bufs: None }
    }

    fn bufs(&mut self) -> &mut Buffers {
        self.bufs.get_or_insert_with(Box::default)
    }

    /// Gives the buffers back once nothing is gathered or read ahead.
    fn release(&mut self) {
        if self.bufs.as_ref().is_some_and(|b| b.is_empty()) {
            self.bufs = None;
        }
    }

    /// Serves `bytes` (read from the socket before it was handed over) before
    /// reading the socket. A copy: what they are a view of (hyper's whole read
    /// buffer) is not kept.
    pub fn read_first(mut self, bytes: &[u8]) -> Self {
        if !bytes.is_empty() {
            let b = self.bufs();
            b.ahead = bytes.to_vec();
            b.taken = 0;
        }
        self
    }

    /// Appends a whole text message as one final, unmasked frame (a server's,
    /// RFC 6455 5.2). A large one is sent from `text` itself, and fills the socket:
    /// send it before pushing more.
    pub fn push_text(&mut self, text: &Utf8Bytes) {
        let b = self.bufs();
        debug_assert!(b.large.is_none(), "a large message is still unsent");
        let payload = text.as_bytes();
        let n = payload.len();
        let by_reference = n >= BY_REFERENCE;
        b.pending.reserve(if by_reference { 10 } else { n + 10 });
        b.pending.extend_from_slice(FrameHead::text(n).as_bytes());
        if by_reference {
            b.large = Some(text.clone());
        } else {
            b.pending.extend_from_slice(payload);
        }
    }

    /// Whether enough is gathered to send before taking more.
    pub fn is_full(&self) -> bool {
        self.bufs
            .as_ref()
            .is_some_and(|b| b.pending.len() >= LIMIT || b.large.is_some())
    }
}

impl<S: AsyncWrite + Settle + Unpin> Coalesce<S> {
    /// Sends everything gathered and flushes the stream (a [`Wire`] sends what a
    /// direct write left), then tells the stream it is settled.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_gathered(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.inner.settled();
        Poll::Ready(Ok(()))
    }

    /// Sends everything gathered, then gives its memory back. A large message goes
    /// out in the same write as the frame header and whatever was gathered before it
    /// (one vectored write), so that no header leaves as a segment of its own.
    fn poll_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Coalesce { inner, bufs } = self;
        if let Some(b) = bufs.as_deref_mut() {
            let Buffers {
                pending,
                sent,
                large,
                ..
            } = b;
            loop {
                let payload = large.as_ref().map_or(&[][..], |t| t.as_bytes());
                let (head, tail) = unsent(pending, payload, *sent);
                let n = match (head.is_empty(), tail.is_empty()) {
                    (true, true) => break,
                    (false, true) => ready!(Pin::new(&mut *inner).poll_write(cx, head))?,
                    (true, false) => ready!(Pin::new(&mut *inner).poll_write(cx, tail))?,
                    (false, false) => {
                        let both = [IoSlice::new(head), IoSlice::new(tail)];
                        ready!(Pin::new(&mut *inner).poll_write_vectored(cx, &both))?
                    }
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *sent += n;
            }
            *pending = Vec::new();
            *sent = 0;
            *large = None;
            self.release();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(b) = this.bufs.as_deref_mut().filter(|b| b.taken < b.ahead.len()) else {
            if buf.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len().min(buf.remaining());
            buf.put_slice(&read.filled()[..n]);
            if n < read.filled().len() {
                let b = this.bufs();
                b.ahead = read.filled()[n..].to_vec();
                b.taken = 0;
            }
            return Poll::Ready(Ok(()));
        };
        let n = (b.ahead.len() - b.taken).min(buf.remaining());
        buf.put_slice(&b.ahead[b.taken..b.taken + n]);
        b.taken += n;
        if b.taken == b.ahead.len() {
            b.ahead = Vec::new();
            b.taken = 0;
            this.release();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Settle + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // what tungstenite writes goes after a large message still being sent
        let gathered = this.bufs.as_ref().map_or(0, |b| b.pending.len());
        if this.bufs.as_ref().is_some_and(|b| b.large.is_some()) || gathered + data.len() > LIMIT {
            // not settled: tungstenite may have more of the same frame to write
            ready!(this.poll_gathered(cx))?;
            if data.len() >= LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.bufs().pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl Settle for tokio::io::DuplexStream {}
    impl Settle for tokio::io::Empty {}
    impl Settle for Calls {}

    #[tokio::test]
    async fn writes_go_out_in_order_once_flushed_and_the_memory_is_given_back() {
        let (a, mut b) = tokio::io::duplex(LIMIT * 4);
        let mut w = Coalesce::new(a);
        let mid: Vec<u8> = vec![7; LIMIT - 20];
        let big: Vec<u8> = (0..LIMIT + 300).map(|i| (i % 251) as u8).collect();
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        let mut buf = [0u8; 16];
        assert!(
            b.read(&mut buf).now_or_never().is_none(),
            "nothing is sent before the flush"
        );
        w.write_all(&mid).await.unwrap();
        // over the limit: what is gathered goes first, then the big piece directly
        w.write_all(&big).await.unwrap();
        w.write_all(b"!").await.unwrap();
        assert!(w.bufs.as_ref().is_some_and(|b| b.pending.capacity() > 0));
        w.flush().await.unwrap();
        assert!(w.bufs.is_none(), "memory given back once sent");
        let expected = [&b"hello world"[..], &mid, &big, b"!"].concat();
        let mut got = vec![0; expected.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn text_frames_written_directly_read_back_as_messages() {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        // every length encoding: 7-bit, 16-bit (both ends), 64-bit; multi-byte text
        let texts: Vec<String> = [0, 1, 125, 126, 127, 65_535, 65_536, 70_001]
            .into_iter()
            .map(|n| "é".repeat(n / 2) + &"x".repeat(n % 2))
            .collect();
        for t in &texts {
            w.push_text(&Utf8Bytes::from(t.clone()));
            if w.is_full() {
                w.flush().await.unwrap();
            }
        }
        let client = tokio_tungstenite::WebSocketStream::from_raw_socket(b, Role::Client, None);
        let (_, read) = tokio::join!(w.flush(), async {
            let mut client = client.await;
            let mut got = Vec::new();
            for _ in &texts {
                match client.next().await {
                    Some(Ok(Message::Text(t))) => got.push(t.as_str().to_string()),
                    other => panic!("expected a text message, got {other:?}"),
                }
            }
            got
        });
        assert_eq!(read, texts);
        assert!(w.bufs.is_none());
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_read_ahead_that_is_freed_once_taken() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = Coalesce::new(b);
        let sent: Vec<u8> = (0..3000).map(|i| (i % 253) as u8).collect();
        a.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 14];
        while got.len() < sent.len() {
            let n = r.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
            if got.len() == sent.len() {
                assert!(r.bufs.is_none(), "nothing kept once all is taken");
            }
        }
        assert_eq!(got, sent);
    }

    /// Records what each write call was given, taking at most `cap` bytes a call.
    struct Calls {
        cap: usize,
        writes: Vec<Vec<u8>>,
    }

    impl Calls {
        fn take(&mut self, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let mut taken: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            taken.truncate(self.cap);
            let n = taken.len();
            self.writes.push(taken);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Calls {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(&[IoSlice::new(data)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(bufs)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A large message's header used to be written on its own before the payload:
    /// with TCP_NODELAY, a segment of its own.
    #[tokio::test]
    async fn a_large_message_goes_out_with_its_header_in_one_write() {
        let big = "m".repeat(BY_REFERENCE);
        let expected = [
            &[0x81, 5][..],
            b"small",
            &[0x81, 126, 0x08, 0x00],
            big.as_bytes(),
        ]
        .concat();
        for cap in [usize::MAX, 1000, 3] {
            let mut w = Coalesce::new(Calls {
                cap,
                writes: Vec::new(),
            });
            w.push_text(&"small".into());
            w.push_text(&Utf8Bytes::from(big.clone()));
            w.flush().await.unwrap();
            assert_eq!(w.inner.writes.concat(), expected, "at most {cap} a write");
            assert_eq!(
                w.inner.writes.len(),
                expected.len().div_ceil(cap.min(expected.len()))
            );
            assert!(w.bufs.is_none());
        }
    }

    #[tokio::test]
    async fn bytes_read_before_the_upgrade_come_first() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = Coalesce::new(b).read_first(b"early ");
        a.write_all(b"late").await.unwrap();
        drop(a);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        // hyper's read buffer, of which they are a view, used to be kept whole
        let none = Coalesce::new(tokio::io::empty()).read_first(&[]);
        assert!(none.bufs.is_none());
    }

    #[tokio::test]
    async fn what_tungstenite_writes_goes_after_a_large_message() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Coalesce::new(a);
        let big = "m".repeat(BY_REFERENCE * 3);
        w.push_text(&Utf8Bytes::from(big.clone()));
        assert!(w.is_full());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        w.write_all(b"pong").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let all = reader.await.unwrap();
        let header = [0x81, 126, 0x18, 0x00];
        assert_eq!(&all[..4], &header);
        assert_eq!(&all[4..4 + big.len()], big.as_bytes());
        assert_eq!(&all[4 + big.len()..], b"pong");
    }
}
