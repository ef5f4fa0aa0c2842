//! One WebSocket connection, on one task: it reads and handles requests one at a time
//! (the request in flight runs on a task of its own, so it goes on while the loop
//! writes, and runs to completion even if the client goes away), writes whatever the
//! connection's outbound queue holds at each wake-up in one batch (frames sent while
//! the connection is idle are written by their sender, see [`crate::fanout`]; the task
//! writes what the socket did not take then), and pings or closes the connection when
//! the server's liveness sweep ([`sweeper`]) asks it to through its outbox.
//! Whatever the connection registered (subscriptions, its user's registry entry) is
//! removed when its state is dropped, however the connection ends.

use futures::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::dispatch::{self, ConnState};
use super::limits::{AddrSlot, RateLimit, RateLimiter, Shield, Verdict};
use crate::app::App;
use crate::fanout::{self, FrameKind, Next, Roster, Utf8Bytes, CLOSE_GOING_AWAY};
use crate::protocol::{envelope, parse_request, ApiError};

/// Largest request frame handled; larger ones get `too_large`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The close code for a message over the WebSocket layer's hard size limit.
const CLOSE_TOO_BIG: u16 = 1009;
/// RFC 6455 7.4.1: the client broke the protocol (a bad frame), or sent a text
/// message that is not UTF-8.
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_NOT_UTF8: u16 = 1007;
/// How long writing one batch to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection the server closed reads (and drops) what its client still
/// sends, waiting for it to hang up.
const LINGER: Duration = Duration::from_secs(1);

/// Tungstenite reads the connection and writes its control frames (ping, pong,
/// close); text frames are written straight into the socket below it (see
/// [`write_batch`]), so tungstenite's write buffer, which never shrinks, only ever
/// holds a control frame.
pub type Socket = WebSocketStream<super::coalesce::Coalesce<fanout::Wire>>;
/// The connection's request in progress, on its own task: it goes on while the
/// connection writes pushes to a slow client (a payment's gateway timer must not
/// stall behind a socket), and a panic in it ends the task, not the connection loop.
/// Or, after it, the connection's wait before it reads again.
type InFlight = tokio::task::JoinHandle<Outcome>;

enum Outcome {
    /// A request gives the connection's state back, and how long the connection
    /// waits before it reads again (see [`dispatch::handle`]).
    Handled(ConnState, Duration),
    /// That wait ended. It is the loop's, on a task of its own, not a request's: a
    /// close or a shutdown meanwhile goes ahead at once. (A task, not a timer in the
    /// loop: a connection that is not paced keeps no room for one.)
    Paced,
}

/// Serves the connection until it closes. Pings, the idle timeout and the shutdown
/// come through the outbox, from the server's [`Roster`] sweep ([`sweeper`]): an
/// idle connection keeps no timer of its own.
/// A plain function around an `async move` block: an `async fn` would keep a copy of
/// its arguments (the whole WebSocket) in its state besides the one it works on.
#[allow(clippy::manual_async_fn)]
pub fn run(
    app: Arc<App>,
    upgrade: hyper::upgrade::OnUpgrade,
    slot: Option<AddrSlot>,
    roster: Arc<Roster>,
    shield: Arc<Shield>,
    peer: IpAddr,
) -> impl std::future::Future<Output = ()> + Send {
    // made before the task: the task keeps room for whatever it captures for as long
    // as it runs, so it captures one copy of each thing it needs to the end (the app
    // through the connection's state, the outbox through its receiving end)
    let (outbox, mut rx) = fanout::outbox(app.queue_limits());
    roster.join(&outbox);
    shield.metrics.ws_opened();
    let open = OpenConn { shield, slot };
    let mut state = Some(ConnState::new(app, outbox, peer));
    async move {
        // bound by a pattern, never moved: one copy of the WebSocket in the task
        let Some((mut socket, _tcp)) = upgrade.await.ok().and_then(|u| super::websocket(u, &rx))
        else {
            return;
        };
        let shield = &open.shield;
        let mut limiter = RateLimiter::new(&RateLimit::of(&shield.limits));
        let mut in_flight: Option<InFlight> = None;
        // what is in flight is the wait after a request (see [`Outcome::Paced`])
        let mut paced = false;
        // the client may still send requests
        let mut reading = true;
        // the server is shutting down: close once the request in flight is answered
        let mut stopping = false;
        // the close frame went out, or the socket failed: nothing more is written
        let mut written_off = false;
        // the close frame went out: the client's unread input is drained at the end
        let mut closed = false;

        while !(written_off && (in_flight.is_none() || paced)) {
            if stopping && reading && (in_flight.is_none() || paced) {
                rx.outbox().finish(CLOSE_GOING_AWAY, "server shutting down");
                reading = false;
            }
            // decided in a block of its own, so that the task keeps no room for the
            // select's output while it writes; boxed: an idle connection's task keeps
            // no room for a write either
            let write: Option<Write<'_>> = {
                let event = tokio::select! {
                    biased;
                    done = request_done(&mut in_flight) => Event::Done(done),
                    // before the outbox: a connection that always has frames queued
                    // still reads (its client's requests, its pongs)
                    msg = socket.next(), if reading && in_flight.is_none() => Event::Read(msg),
                    next = rx.next(), if !written_off => Event::Next(next),
                };
                let outbox = rx.outbox();
                match event {
                    Event::Done(done) => {
                        in_flight = None;
                        let was_paced = std::mem::replace(&mut paced, false);
                        match done {
                            Ok(Outcome::Handled(s, wait)) => {
                                state = Some(s);
                                // a connection that reads nothing more need not wait
                                if wait.is_zero() || !reading || stopping || outbox.is_closing() {
                                    outbox.set_busy(false);
                                } else {
                                    // busy still: its client waits to be read
                                    shield.metrics.reply_paced();
                                    paced = true;
                                    in_flight = Some(tokio::spawn(async move {
                                        tokio::time::sleep(wait).await;
                                        Outcome::Paced
                                    }));
                                }
                            }
                            Ok(Outcome::Paced) => outbox.set_busy(false),
                            // the wait's task, not a request, failed: the state is here
                            Err(_) if was_paced => outbox.set_busy(false),
                            Err(_) => {
                                outbox.set_busy(false);
                                // the state was dropped with the panic, and with it the
                                // connection's subscriptions and registry entry
                                tracing::error!(
                                    conn = outbox.id(),
                                    "a request panicked; closing its connection"
                                );
                                outbox.close(fanout::CLOSE_INTERNAL, "internal error");
                                reading = false;
                            }
                        }
                        None
                    }
                    Event::Read(msg) => {
                        outbox.heard();
                        if let Some(s) = state.as_mut() {
                            s.keep_pace();
                        }
                        match received(msg, &mut limiter, shield, outbox) {
                            Received::Request(req) => {
                                if let Some(mut s) = state.take() {
                                    let shield = shield.clone();
                                    let id = req.id.clone();
                                    let handled =
                                        fanout::handle_request_of(outbox, id, async move {
                                            let wait = dispatch::handle(&shield, &mut s, req).await;
                                            Outcome::Handled(s, wait)
                                        });
                                    outbox.set_busy(true);
                                    in_flight = Some(tokio::spawn(handled));
                                }
                            }
                            Received::Nothing => {}
                            Received::End(code, reason) => {
                                // what is queued (replies, refusals) goes out before the close
                                outbox.finish(code, reason);
                                reading = false;
                            }
                            Received::Gone(code, reason) => {
                                // the client closed (tungstenite has queued its answer), broke
                                // the protocol or the socket failed: what is queued is dropped
                                outbox.close(code, reason);
                                reading = false;
                            }
                        }
                        None
                    }
                    Event::Next(Next::Frames(frames)) => {
                        Some(Box::pin(write_batch(&mut socket, frames)))
                    }
                    Event::Next(Next::Close(code, reason)) => {
                        closed = true;
                        Some(Box::pin(close(&mut socket, code, reason)))
                    }
                    Event::Next(Next::Ping) => {
                        if let Some(s) = state.as_mut() {
                            s.keep_pace();
                        }
                        Some(Box::pin(ping(&mut socket)))
                    }
                    Event::Next(Next::Idle) => {
                        // decided here, on the connection's own state: a request read
                        // since the sweep looked, or running, keeps it open
                        let idle = state.as_ref().map(|s| liveness(&s.app().config).1);
                        if in_flight.is_none()
                            && idle.is_some_and(|idle| outbox.silent_for() >= idle)
                        {
                            outbox.close(CLOSE_GOING_AWAY, "idle timeout");
                            reading = false;
                        }
                        None
                    }
                    Event::Next(Next::Stop) => {
                        stopping = true;
                        None
                    }
                }
            };
            if let Some(write) = write {
                if !write.await {
                    written_off = true;
                    rx.outbox().close(fanout::CLOSE_NORMAL, "connection lost");
                    reading = false;
                }
            }
        }
        if let Some(wait) = in_flight.take() {
            wait.abort();
        }
        drop(state);
        // (not while the server stops: it waits for every connection to end)
        if closed && !stopping {
            // boxed: an idle connection's task keeps no room for it
            Box::pin(linger(socket.get_mut())).await;
        }
        // after the linger: the socket counts against its address until closed
        drop(open);
    }
}

/// After the server's close frame: shuts the write side (the kernel still sends what
/// it holds, then the end) and reads and drops what the client still sends until it
/// hangs up, for at most [`LINGER`]. A socket closed with unread input is reset, and
/// the reset throws away what the kernel had not sent yet: replies to requests that
/// ran, and the close frame saying why, lost to a client that reads slowly.
async fn linger<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 4096];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The liveness sweep of a server's connections: every `min(ping, idle / 2)`, a
/// connection silent for `--ping-interval` is pinged and one silent for
/// `--idle-timeout` asked to close (it checks its own state first); at shutdown every
/// connection is asked to stop.
pub async fn sweeper(
    roster: Arc<Roster>,
    config: &crate::config::Config,
    shutdown: CancellationToken,
) {
    let (ping_every, idle_timeout) = liveness(config);
    let mut tick = tokio::time::interval(ping_every.min(idle_timeout / 2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => roster.sweep(ping_every, idle_timeout),
        }
    }
    roster.stop();
}

/// How long a client may be silent before it is pinged, and before it is closed
/// (clamped: a config built in code, as tests do, skips `Config::check`, and a zero
/// interval would stop the sweeper).
fn liveness(config: &crate::config::Config) -> (Duration, Duration) {
    (
        Duration::from_secs(config.ping_interval.max(1)),
        Duration::from_secs(config.idle_timeout.max(2)),
    )
}

/// What woke the connection's task.
enum Event {
    Done(Result<Outcome, tokio::task::JoinError>),
    Read(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Next(Next),
}

/// A write to the client; false if the client is gone or too slow.
type Write<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// The outcome of the request in flight, or the end of the wait after it; never
/// ready when there is neither.
async fn request_done(in_flight: &mut Option<InFlight>) -> Result<Outcome, tokio::task::JoinError> {
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
    /// The client closed, broke the protocol, or the socket failed: stop reading,
    /// and close with this code and reason (nothing queued goes out first).
    Gone(u16, &'static str),
}

/// Handles one frame from the client, up to the request it carries.
fn received(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    limiter: &mut RateLimiter,
    shield: &Shield,
    outbox: &fanout::Outbox,
) -> Received {
    let reply_error = |id: serde_json::Value, e: ApiError| {
        outbox.send(
            FrameKind::Reply,
            Utf8Bytes::from(envelope::failure(&id, &e)),
        );
    };
    // every frame but a close draws on the budget: a ping costs the server a read
    // and a pong, so a ping flood is closed as a request flood is
    if let Some(Ok(m)) = msg.as_ref().filter(|m| !matches!(m, Ok(Message::Close(_)))) {
        let data = matches!(m, Message::Text(_) | Message::Binary(_));
        match limiter.check(&RateLimit::of(&shield.limits), m.len()) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::RateLimited);
                // a control frame is not answered
                if let Some(id) = reply_id(m).filter(|_| data) {
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
        Some(Ok(Message::Close(_))) | None => Received::Gone(fanout::CLOSE_NORMAL, "bye"),
        // over the hard limit: the rest of the frame is never read, but what is
        // queued and the refusal still go out before the close
        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
            tracing::debug!(error = %e, "websocket message over the hard limit");
            reply_error(
                serde_json::Value::Null,
                ApiError::TooLarge(MAX_REQUEST_BYTES),
            );
            Received::End(CLOSE_TOO_BIG, "message too big")
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket read failed");
            use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
            match e {
                // a hang-up without a close frame is the socket's end, not a bad frame
                Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                    Received::Gone(fanout::CLOSE_NORMAL, "bye")
                }
                Error::Protocol(_) => Received::Gone(CLOSE_PROTOCOL, "protocol error"),
                Error::Utf8(_) => Received::Gone(CLOSE_NOT_UTF8, "text frame not UTF-8"),
                _ => Received::Gone(fanout::CLOSE_NORMAL, "bye"),
            }
        }
    }
}

/// The id to answer a refused frame with; none for a notification. Only the id is
/// decoded (the rest is skipped, not built into a tree): a refusal costs the server
/// far less than the request would have.
fn reply_id(m: &Message) -> Option<serde_json::Value> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;
    /// Whether a key is `id` (escaped or not), read without allocating it.
    struct IsId(bool);
    impl<'de> serde::Deserialize<'de> for IsId {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = IsId;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsId, E> {
                    Ok(IsId(v == "id"))
                }
            }
            d.deserialize_str(V)
        }
    }
    /// The top-level `id`: the last one when the key repeats, as `parse_request`'s
    /// `serde_json::Value` keeps it (a derived struct would refuse the repeat).
    struct LastId<'a>(Option<&'a RawValue>);
    impl<'de> serde::Deserialize<'de> for LastId<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = LastId<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut id = None;
                    while let Some(IsId(id_key)) = map.next_key()? {
                        if id_key {
                            id = Some(map.next_value::<&'de RawValue>()?);
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(LastId(id))
                }
            }
            d.deserialize_map(V)
        }
    }
    let Message::Text(t) = m else {
        return Some(serde_json::Value::Null);
    };
    if t.len() > MAX_REQUEST_BYTES || !t.trim_start().starts_with('{') {
        return Some(serde_json::Value::Null);
    }
    match serde_json::from_str::<LastId>(t.as_str()) {
        // absent: a notification, not answered
        Ok(LastId(None)) => None,
        Ok(LastId(Some(raw))) => Some(envelope::reply_id_of(raw)),
        Err(_) => Some(serde_json::Value::Null),
    }
}

/// Counts the connection as open, and against its forwarded client's address (behind
/// a trusted proxy), until the session ends, however it ends.
struct OpenConn {
    shield: Arc<Shield>,
    slot: Option<AddrSlot>,
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.slot = None;
        self.shield.metrics.ws_closed();
    }
}

/// Writes frames in order and flushes; false if the client is gone or too slow.
/// Each is one unmasked text frame written into the socket's gathering buffer (a
/// frame header is a few bytes: RFC 6455, 5.2), sent whenever that buffer is full
/// or a large message was pushed, and at the end; nothing of it stays with the
/// connection afterwards.
async fn write_batch(socket: &mut Socket, frames: VecDeque<Utf8Bytes>) -> bool {
    let write = async {
        for f in frames {
            socket.get_mut().push_text(&f);
            if socket.get_ref().is_full() {
                flush(socket).await?;
            }
        }
        flush(socket).await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// Sends what tungstenite holds (a pong it owes) and everything gathered.
async fn flush(socket: &mut Socket) -> std::io::Result<()> {
    socket.flush().await.map_err(std::io::Error::other)?;
    // tungstenite does not flush the socket once it has closed
    std::future::poll_fn(|cx| socket.get_mut().poll_send(cx)).await
}

async fn ping(socket: &mut Socket) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Ping(Bytes::new()))).await,
        Ok(Ok(()))
    )
}

/// Sends a close frame; the connection writes nothing after it (false).
async fn close(socket: &mut Socket, code: u16, reason: &'static str) -> bool {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
        match socket.send(Message::Close(Some(frame))).await {
            // the client closed first: tungstenite queued the answer RFC 6455 5.5.1
            // requires, and sends it on a flush (a new close is refused)
            Err(Error::Protocol(ProtocolError::SendAfterClosing)) => socket.flush().await,
            sent => sent,
        }
    })
    .await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    #[test]
    fn a_refused_frame_is_answered_with_the_id_parse_request_would_give() {
        let many = format!(
            r#"{{"jsonrpc":"2.0","params":{{"x":[{}]}},"id":"late","method":"x"}}"#,
            vec![r#"{"a":[1,2,{"b":"\u00e9"}]}"#; 500].join(",")
        );
        let frames = [
            many.as_str(),
            r#"{"jsonrpc":"2.0","id":7,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":-4.5e200,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":"\"q\u00e9","method":"x"}"#,
            r#"{"jsonrpc":"2.0","method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","id":2}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","\u0069d":"b"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","id":{"bad":1}}"#,
            r#"{"jsonrpc":"2.0","id":[2],"method":"x","id":3}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
            "[]",
            r#"[1]"#,
            r#"  ["abc"]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x""#,
            "7",
        ];
        for f in frames {
            let full = match parse_request(f) {
                Ok(r) => r.id,
                Err((id, _)) => Some(id),
            };
            assert_eq!(reply_id(&Message::text(f)), full, "{f}");
        }
        assert_eq!(reply_id(&Message::binary(vec![1u8])), Some(Value::Null));
        let huge = format!(r#"{{"id":1,"x":"{}"}}"#, "y".repeat(MAX_REQUEST_BYTES));
        assert_eq!(reply_id(&Message::text(huge)), Some(Value::Null));
        assert_eq!(reply_id(&Message::text(many.clone())), Some(json!("late")));
    }

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

    /// Tokio keeps a task in a cell of 128-byte lines (the future, plus 112 bytes of
    /// its own and the tracker's); an idle connection's whole task is that cell, so
    /// 6 lines (768 bytes) instead of 7 or more is what this guards. (616 bytes since
    /// the socket moved into the connection's outbox, 40 bytes less: room to spare.)
    #[tokio::test]
    async fn the_connection_task_fits_in_six_cache_lines() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(crate::config::Config::for_tests(dir.path().into()))
            .await
            .unwrap();
        let shield = Shield::new(app.config.limits.clone(), app.metrics.clone());
        let upgrade = hyper::upgrade::on(axum::http::Request::new(()));
        let conn = run(
            app.clone(),
            upgrade,
            None,
            Arc::new(Roster::default()),
            shield,
            IpAddr::from([127, 0, 0, 1]),
        );
        // an unoptimized build may lay the same future out 8 bytes larger
        let limit = if cfg!(debug_assertions) { 624 } else { 616 };
        assert!(
            std::mem::size_of_val(&conn) <= limit,
            "the connection's future grew to {} bytes",
            std::mem::size_of_val(&conn)
        );
        drop(conn);
        app.stop().await;
    }

    /// A push a request queued to go out with its reply is written as soon as the
    /// request waits for something else (as a cancel may wait for the gateway after
    /// its change), not held back until the reply.
    #[tokio::test]
    async fn a_push_queued_for_the_reply_goes_out_once_the_request_waits() {
        let dir = tempfile::tempdir().unwrap();
        let running = crate::server::start(crate::config::Config::for_tests(dir.path().into()))
            .await
            .unwrap();
        let url = format!("ws://{}/ws", running.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "test.push_then_wait"});
        ws.send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        let mut next = async || loop {
            if let Message::Text(t) = ws.next().await.expect("open").expect("frame") {
                return serde_json::from_str::<Value>(t.as_str()).unwrap();
            }
        };
        let first = tokio::time::timeout(Duration::from_secs(5), next())
            .await
            .expect("the push came while the request was waiting");
        assert_eq!(first["method"], "test.pushed");
        dispatch::TEST_RELEASE.notify_one();
        let reply = next().await;
        assert_eq!(reply["id"], 1);
        assert_eq!(reply["result"], json!(null));
        running.shutdown().await;
    }

    /// Issue 13, defect 9: the connection's subscriptions and registry entry used to
    /// stay behind when the task handling one of its requests panicked.
    #[tokio::test]
    async fn a_panicking_request_leaves_nothing_of_its_connection_behind() {
        let dir = tempfile::tempdir().unwrap();
        let running = crate::server::start(crate::config::Config::for_tests(dir.path().into()))
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
}
