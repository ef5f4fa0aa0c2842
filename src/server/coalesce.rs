//! The socket under a WebSocket connection: what tungstenite writes (control
//! frames) and the text frames the connection writes itself ([`Coalesce::push_text`])
//! are gathered in memory until a flush, then sent in as few system calls as the
//! kernel takes, and the memory is freed once sent. A burst of pushes costs one
//! `send`, and an idle connection keeps no write buffer.

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

    /// Appends a whole text message as one final, unmasked frame (a server's,
    /// RFC 6455 5.2).
    pub fn push_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let n = payload.len();
        self.pending.reserve(n + 10);
        self.pending.push(0x81);
        if n < 126 {
            self.pending.push(n as u8);
        } else if let Ok(short) = u16::try_from(n) {
            self.pending.push(126);
            self.pending.extend_from_slice(&short.to_be_bytes());
        } else {
            self.pending.push(127);
            self.pending.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.pending.extend_from_slice(payload);
    }

    /// Whether enough is gathered to send before taking more.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= LIMIT
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Sends everything gathered, then gives its memory back.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
            w.push_text(t);
        }
        assert!(w.is_full());
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
        assert_eq!(w.pending.capacity(), 0);
    }
}
