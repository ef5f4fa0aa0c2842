//! The socket under a WebSocket connection: what tungstenite writes is gathered in
//! memory until it flushes, then sent in as few system calls as the kernel takes,
//! and the memory is freed once sent. A full seat map (many small fragments) or a
//! burst of pushes costs one `send`, and an idle connection keeps no write buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Gathered bytes beyond this are sent before more are taken.
const LIMIT: usize = 64 * 1024;

pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` is already sent.
    sent: usize,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Sends everything gathered, then gives its memory back.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + data.len() > LIMIT {
            ready!(this.poll_send(cx))?;
            if data.len() >= LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
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
        assert!(w.pending.capacity() > 0);
        w.flush().await.unwrap();
        assert_eq!(w.pending.capacity(), 0, "memory given back once sent");
        let expected = [&b"hello world"[..], &mid, &big, b"!"].concat();
        let mut got = vec![0; expected.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }
}
