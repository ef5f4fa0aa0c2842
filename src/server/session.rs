//! One WebSocket connection: a reader that parses and handles requests one at a
//! time, and a writer that drains the connection's bounded outbound queue, pings an
//! idle client and closes a dead or stalled one.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::dispatch::{self, ConnState};
use super::limits::{RateLimiter, Shield, Verdict};
use crate::app::App;
use crate::domain::now_ms;
use crate::fanout::{self, Next, OutboxReceiver, CLOSE_GOING_AWAY};
use crate::protocol::{envelope, parse_request, ApiError};
use std::net::IpAddr;

/// Largest request frame handled; larger ones get `too_large`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long one write to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    app: Arc<App>,
    socket: WebSocket,
    shutdown: CancellationToken,
    shield: Arc<Shield>,
    peer: IpAddr,
) {
    shield.metrics.ws_opened();
    let _open = scopeguard(shield.clone());
    let mut limiter = RateLimiter::new(shield.limits.rate_limit, shield.limits.rate_burst);
    let (sink, mut stream) = socket.split();
    let (outbox, rx) = fanout::outbox(app.queue_limits());
    let last_seen = Arc::new(AtomicI64::new(now_ms()));
    let mut writer = tokio::spawn(write_loop(
        sink,
        rx,
        last_seen.clone(),
        Duration::from_secs(app.config.ping_interval.max(1)),
        Duration::from_secs(app.config.idle_timeout.max(2)),
    ));
    let mut conn = Some(ConnState {
        outbox: outbox.clone(),
        session: None,
        subscriptions: Vec::new(),
        peer,
        shield: shield.clone(),
    });
    let reply_error = |id: serde_json::Value, e: ApiError| {
        outbox.send(Utf8Bytes::from(envelope::failure(&id, &e)));
    };
    // a finished JoinHandle must not be polled again
    let mut writer_done = false;

    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => {
                // replies already queued (an in-flight request's) go out before the close
                outbox.finish(CLOSE_GOING_AWAY, "server shutting down");
                break;
            }
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            msg = stream.next() => msg,
        };
        last_seen.store(now_ms(), Ordering::Relaxed);
        if let Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) = &msg {
            match limiter.check(shield.limits.rate_limit_close) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    shield.metrics.rejected("rate_limited");
                    if let Some(id) = reply_id(m) {
                        reply_error(id, ApiError::RateLimited);
                    }
                    continue;
                }
                Verdict::Close => {
                    shield.metrics.rejected("rate_limit_close");
                    tracing::info!(peer = %peer, "closing a connection that keeps flooding");
                    // the refusals already queued go out before the close
                    outbox.finish(fanout::CLOSE_POLICY, "rate limit exceeded");
                    break;
                }
            }
        }
        match msg {
            Some(Ok(Message::Text(text))) => {
                if text.len() > MAX_REQUEST_BYTES {
                    reply_error(
                        serde_json::Value::Null,
                        ApiError::TooLarge(MAX_REQUEST_BYTES),
                    );
                    continue;
                }
                match parse_request(text.as_str()) {
                    Err((id, e)) => reply_error(id, e),
                    Ok(req) => {
                        let Some(mut state) = conn.take() else { break };
                        // the request runs to completion even if the client goes away
                        let app2 = app.clone();
                        let task = tokio::spawn(async move {
                            dispatch::handle(&app2, &mut state, req).await;
                            state
                        });
                        match task.await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                tracing::error!(error = %e, "request task failed");
                                break;
                            }
                        }
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => reply_error(
                serde_json::Value::Null,
                ApiError::InvalidRequest(
                    "binary frames are not supported; send JSON-RPC as text".into(),
                ),
            ),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                break;
            }
        }
    }

    outbox.finish(fanout::CLOSE_NORMAL, "bye");
    if let Some(conn) = &conn {
        app.inventory
            .unsubscribe_all(outbox.id(), &conn.subscriptions);
        if let Some(s) = &conn.session {
            app.users.detach(s.user_id, outbox.id());
        }
    }
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
}

/// The id to answer a refused frame with; none for a notification.
fn reply_id(m: &Message) -> Option<serde_json::Value> {
    match m {
        Message::Text(t) if t.len() <= MAX_REQUEST_BYTES => match parse_request(t.as_str()) {
            Ok(req) => req.id,
            Err((id, _)) => Some(id),
        },
        _ => Some(serde_json::Value::Null),
    }
}

/// Counts the connection as closed when the session ends, however it ends.
struct OpenConn(Arc<Shield>);

fn scopeguard(shield: Arc<Shield>) -> OpenConn {
    OpenConn(shield)
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.metrics.ws_closed();
    }
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: OutboxReceiver,
    last_seen: Arc<AtomicI64>,
    ping_every: Duration,
    idle_timeout: Duration,
) {
    let mut tick = tokio::time::interval(ping_every.min(idle_timeout / 2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            n = rx.next() => n,
            _ = tick.tick() => {
                let silent = Duration::from_millis((now_ms() - last_seen.load(Ordering::Relaxed)).max(0) as u64);
                if silent >= idle_timeout {
                    close(&mut sink, CLOSE_GOING_AWAY, "idle timeout").await;
                    return;
                }
                if silent >= ping_every && !send(&mut sink, Message::Ping(Default::default())).await {
                    return;
                }
                continue;
            }
        };
        match next {
            Next::Frame(f) => {
                if !feed(&mut sink, Message::Text(f)).await {
                    return;
                }
                while let Some(f) = rx.try_next() {
                    if !feed(&mut sink, Message::Text(f)).await {
                        return;
                    }
                }
                if !matches!(
                    tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Next::Close(code, reason) => {
                close(&mut sink, code, reason).await;
                return;
            }
            Next::Ended => return,
        }
    }
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

async fn feed(sink: &mut Sink, m: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.feed(m)).await,
        Ok(Ok(()))
    )
}

async fn send(sink: &mut Sink, m: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.send(m)).await,
        Ok(Ok(()))
    )
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}
