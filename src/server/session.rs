//! One WebSocket connection, on one task: it reads and handles requests one at a time
//! (the request in flight runs on a task of its own, so it goes on while the loop
//! writes, and runs to completion even if the client goes away), writes whatever the connection's outbound queue holds at
//! each wake-up in one batch, pings an idle client and closes a dead or stalled one.
//! Whatever the connection registered (subscriptions, its user's registry entry) is
//! removed when its state is dropped, however the connection ends.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::dispatch::{self, ConnState};
use super::limits::{RateLimiter, Shield, Verdict};
use crate::app::App;
use crate::fanout::{self, Next, Utf8Bytes, CLOSE_GOING_AWAY};
use crate::protocol::{envelope, parse_request, ApiError};

/// Largest request frame handled; larger ones get `too_large`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A frame longer than this is sent in fragments of at most this size, and smaller
/// frames are gathered up to this size in tungstenite's write buffer (the socket
/// below, [`super::coalesce`], sends a whole batch at once). That buffer never
/// shrinks, so this bounds what it keeps per connection: without it, every
/// connection would keep a buffer the size of the full seat map it was sent once.
pub const FRAGMENT: usize = 512;
/// How long writing one batch to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Socket =
    WebSocketStream<super::coalesce::Coalesce<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>;
type Sink = SplitSink<Socket, Message>;
/// The request being handled, giving the connection's state back (or the panic).
/// The connection's request in progress, on its own task: it goes on while the
/// connection writes pushes to a slow client (a payment's gateway timer must not
/// stall behind a socket), and a panic in it ends the task, not the connection loop.
type InFlight = tokio::task::JoinHandle<ConnState>;

/// Serves the connection until it closes.
pub fn run(
    app: Arc<App>,
    socket: Socket,
    shutdown: CancellationToken,
    shield: Arc<Shield>,
    peer: IpAddr,
) -> impl Future<Output = ()> + Send {
    // split before the connection's future exists: an `async fn` keeps room for its
    // arguments (here a whole WebSocket) in its state for as long as it runs
    let (sink, stream) = socket.split();
    serve(app, sink, stream, shutdown, shield, peer)
}

async fn serve(
    app: Arc<App>,
    mut sink: Sink,
    mut stream: SplitStream<Socket>,
    shutdown: CancellationToken,
    shield: Arc<Shield>,
    peer: IpAddr,
) {
    shield.metrics.ws_opened();
    let _open = OpenConn(shield.clone());
    let mut limiter = RateLimiter::new(shield.limits.rate_limit, shield.limits.rate_burst);
    let (outbox, mut rx) = fanout::outbox(app.queue_limits());
    let mut state = Some(ConnState::new(
        app.clone(),
        outbox.clone(),
        peer,
        shield.clone(),
    ));
    let mut in_flight: Option<InFlight> = None;
    let ping_every = Duration::from_secs(app.config.ping_interval.max(1));
    let idle_timeout = Duration::from_secs(app.config.idle_timeout.max(2));
    let mut tick = tokio::time::interval(ping_every.min(idle_timeout / 2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // the client may still send requests
    let mut reading = true;
    // the close frame went out, or the socket failed: nothing more is written
    let mut written_off = false;
    let reply_error = |id: serde_json::Value, e: ApiError| {
        outbox.send(Utf8Bytes::from(envelope::failure(&id, &e)));
    };

    while !(written_off && in_flight.is_none()) {
        tokio::select! {
            biased;
            done = request_done(&mut in_flight) => {
                in_flight = None;
                match done {
                    Ok(s) => state = Some(s),
                    Err(_) => {
                        // the state was dropped with the panic, and with it the
                        // connection's subscriptions and registry entry
                        tracing::error!(peer = %peer, "a request panicked; closing its connection");
                        outbox.close(fanout::CLOSE_INTERNAL, "internal error");
                        reading = false;
                    }
                }
            }
            next = rx.next(), if !written_off => {
                written_off = match next {
                    // boxed: an idle connection's task keeps no room for a write
                    Next::Frames(frames) => !Box::pin(write_batch(&mut sink, frames)).await,
                    Next::Close(code, reason) => {
                        Box::pin(close(&mut sink, code, reason)).await;
                        true
                    }
                };
                if written_off {
                    outbox.close(fanout::CLOSE_NORMAL, "connection lost");
                    reading = false;
                }
            }
            // an in-flight request finishes (and its reply is queued) before the close
            _ = shutdown.cancelled(), if reading && in_flight.is_none() => {
                outbox.finish(CLOSE_GOING_AWAY, "server shutting down");
                reading = false;
            }
            _ = tick.tick(), if !written_off => {
                if in_flight.is_some() {
                    // waiting for our own reply is not silence (frames are not read
                    // meanwhile, pongs included)
                    last_seen = Instant::now();
                }
                let silent = last_seen.elapsed();
                if silent >= idle_timeout {
                    outbox.close(CLOSE_GOING_AWAY, "idle timeout");
                    reading = false;
                } else if silent >= ping_every && !Box::pin(ping(&mut sink)).await {
                    outbox.close(fanout::CLOSE_NORMAL, "connection lost");
                    written_off = true;
                    reading = false;
                }
            }
            msg = stream.next(), if reading && in_flight.is_none() => {
                last_seen = Instant::now();
                match received(msg, &mut limiter, &shield, &reply_error) {
                    Received::Request(req) => {
                        if let Some(mut s) = state.take() {
                            let app = app.clone();
                            let handled = async move {
                                dispatch::handle(&app, &mut s, req).await;
                                s
                            };
                            in_flight = Some(tokio::spawn(handled));
                        }
                    }
                    Received::Nothing => {}
                    Received::End(code, reason) => {
                        // what is queued (replies, refusals) goes out before the close
                        outbox.finish(code, reason);
                        reading = false;
                    }
                }
            }
        }
    }
    drop(state);
}

/// The outcome of the request in flight; never ready when there is none.
async fn request_done(
    in_flight: &mut Option<InFlight>,
) -> Result<ConnState, tokio::task::JoinError> {
    match in_flight {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

enum Received {
    Request(crate::protocol::Request),
    Nothing,
    /// Stop reading and close with this code once what is queued is sent.
    End(u16, &'static str),
}

/// Handles one frame from the client, up to the request it carries.
fn received(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    limiter: &mut RateLimiter,
    shield: &Shield,
    reply_error: &impl Fn(serde_json::Value, ApiError),
) -> Received {
    if let Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) = &msg {
        match limiter.check(shield.limits.rate_limit_close) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::RateLimited);
                if let Some(id) = reply_id(m) {
                    reply_error(id, ApiError::RateLimited);
                }
                return Received::Nothing;
            }
            Verdict::Close => {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::RateLimitClose);
                tracing::info!("closing a connection that keeps flooding");
                return Received::End(fanout::CLOSE_POLICY, "rate limit exceeded");
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
                return Received::Nothing;
            }
            match parse_request(text.as_str()) {
                Err((id, e)) => {
                    reply_error(id, e);
                    Received::Nothing
                }
                Ok(req) => Received::Request(req),
            }
        }
        Some(Ok(Message::Binary(_))) => {
            reply_error(
                serde_json::Value::Null,
                ApiError::InvalidRequest(
                    "binary frames are not supported; send JSON-RPC as text".into(),
                ),
            );
            Received::Nothing
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Received::Nothing,
        Some(Ok(Message::Close(_))) | None => Received::End(fanout::CLOSE_NORMAL, "bye"),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket read failed");
            Received::End(fanout::CLOSE_NORMAL, "bye")
        }
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

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.metrics.ws_closed();
    }
}

/// Writes frames in order and flushes; false if the client is gone or too slow.
async fn write_batch(sink: &mut Sink, frames: VecDeque<Utf8Bytes>) -> bool {
    let write = async {
        for f in frames {
            if f.len() <= FRAGMENT {
                sink.feed(Message::Text(f)).await?;
            } else {
                for piece in fragments(f) {
                    sink.feed(Message::Frame(piece)).await?;
                }
            }
        }
        sink.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// A text frame as WebSocket fragments of at most [`FRAGMENT`] bytes, cut between
/// characters.
fn fragments(text: Utf8Bytes) -> Vec<Frame> {
    let bounds = fragment_bounds(text.as_str());
    let bytes = Bytes::from(text);
    let last = bounds.len().saturating_sub(1);
    bounds
        .into_iter()
        .enumerate()
        .map(|(i, (start, end))| {
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            Frame::message(bytes.slice(start..end), opcode, i == last)
        })
        .collect()
}

fn fragment_bounds(s: &str) -> Vec<(usize, usize)> {
    let mut bounds = Vec::with_capacity(s.len() / FRAGMENT + 1);
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + FRAGMENT).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        bounds.push((start, end));
        start = end;
    }
    bounds
}

async fn ping(sink: &mut Sink) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Bytes::new()))).await,
        Ok(Ok(()))
    )
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    async fn call(ws: &mut Client, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        ws.send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = ws.next().await.expect("open").expect("frame");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == json!(id) {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v;
                }
            }
        }
    }

    /// Issue 13, defect 9: the connection's subscriptions and registry entry used to
    /// stay behind when the task handling one of its requests panicked.
    #[tokio::test]
    async fn a_panicking_request_leaves_nothing_of_its_connection_behind() {
        let dir = tempfile::tempdir().unwrap();
        let running = crate::server::start(crate::Config::for_tests(dir.path().into()))
            .await
            .unwrap();
        let app = running.app.clone();
        let flight = app.inventory.all().into_iter().next().expect("a flight");
        let url = format!("ws://{}/ws", running.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let creds = json!({"username": "panicky", "password": "correct horse 42"});
        call(&mut ws, 1, "auth.register", creds).await;
        call(
            &mut ws,
            2,
            "seats.subscribe",
            json!({"flight_id": flight.id}),
        )
        .await;
        assert_eq!((flight.watchers(), app.users.connections()), (1, 1));

        let req = json!({"jsonrpc": "2.0", "id": 3, "method": "test.panic"});
        ws.send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => break c,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(
            close.map(|c| u16::from(c.code)),
            Some(fanout::CLOSE_INTERNAL)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (flight.watchers(), app.users.connections()) != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "left behind: {} watchers, {} registered connections",
                flight.watchers(),
                app.users.connections()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // the server itself carries on
        let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr))
            .await
            .unwrap();
        call(&mut other, 1, "flights.airports", json!({})).await;
        running.shutdown().await;
    }

    #[test]
    fn fragments_cover_the_text_and_cut_between_characters() {
        let text = "é".repeat(FRAGMENT) + "tail";
        let bounds = fragment_bounds(&text);
        assert!(bounds.len() > 2);
        assert_eq!(bounds[0].0, 0);
        assert_eq!(bounds.last().map(|b| b.1), Some(text.len()));
        for w in bounds.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        for &(s, e) in &bounds {
            assert!(e - s <= FRAGMENT && e > s);
            assert!(text.is_char_boundary(s) && text.is_char_boundary(e));
        }
        let frames = fragments(Utf8Bytes::from(text.clone()));
        assert_eq!(frames.len(), bounds.len());
        assert!(frames
            .iter()
            .take(frames.len() - 1)
            .all(|f| !f.header().is_final));
        assert!(frames.last().is_some_and(|f| f.header().is_final));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, text.as_bytes());
    }
}
