//! The reference for Jetway's fan-out numbers: the least a tokio-tungstenite server
//! can do to look like Jetway to `jetway-load fanout`, and nothing more.
//!
//! What it does, exactly (see docs/benchmarks.md):
//! - Accepts WebSocket upgrades on any path (1 KiB read buffer, no write buffer).
//! - Reads each text frame as JSON only far enough to find `id`, `method` and a few
//!   params with `serde_json::Value`; there is no auth, no storage, no fsync.
//! - `seats.subscribe {flight_id}` joins the connection to that flight's
//!   `tokio::sync::broadcast` channel and answers `{flight_id, version, seats: []}`.
//! - `booking.hold {flight_id, seats}` bumps the flight's version, broadcasts one
//!   `seats.changed` push shaped like Jetway's (`seats` marked `held`, a fixed
//!   `cabins` list) and answers `{booking: {locator}}`, where the locator is
//!   `flight_id/seat,seat`.
//! - `booking.cancel {locator}` does the same with the seats marked `available`.
//! - Any other request (auth.register, auth.login, ...) is answered `{"token": "bare"}`.
//!
//! A push is encoded once and the same bytes go to every subscriber, as in Jetway.
//! A subscriber that falls more than the channel capacity behind is closed with 1008
//! (Jetway closes a slow consumer the same way).
//!
//! Prints `bare-broadcast listening on ADDR` as its first stdout line.

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser)]
#[command(about = "Bare tokio-tungstenite broadcast server: the fan-out reference")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Per-flight broadcast channel capacity, in messages.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// WebSocket read buffer per connection, in bytes.
    #[arg(long, default_value_t = 1024)]
    read_buffer: usize,
}

struct Flight {
    version: u64,
    tx: broadcast::Sender<Utf8Bytes>,
}

type Flights = Arc<Mutex<HashMap<String, Flight>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!("bare-broadcast listening on {}", listener.local_addr()?);
    let flights: Flights = Arc::default();
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => continue, // e.g. out of file descriptors: keep serving the rest
        };
        let _ = tcp.set_nodelay(true);
        let flights = flights.clone();
        let capacity = args.capacity;
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await {
                serve(ws, flights, capacity).await;
            }
        });
    }
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    flights: Flights,
    capacity: usize,
) {
    let (mut sink, mut stream) = ws.split();
    let mut sub: Option<broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        let push = async {
            match sub.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let (reply, rx) = handle(&text, &flights, capacity);
                if let Some(rx) = rx {
                    sub = Some(rx);
                }
                if sink.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
            frame = push => match frame {
                Ok(f) => {
                    if sink.feed(Message::Text(f)).await.is_err() {
                        return;
                    }
                    // send whatever else is already queued with the same flush
                    while let Some(rx) = sub.as_mut() {
                        match rx.try_recv() {
                            Ok(f) => {
                                if sink.feed(Message::Text(f)).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                return slow(&mut sink).await;
                            }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return slow(&mut sink).await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn slow<S: futures::Sink<Message> + Unpin>(sink: &mut S) {
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: "slow consumer".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// The reply to one request, and the subscription it starts, if any.
fn handle(
    text: &str,
    flights: &Flights,
    capacity: usize,
) -> (String, Option<broadcast::Receiver<Utf8Bytes>>) {
    let req: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let p = req.get("params").cloned().unwrap_or(Value::Null);
    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
    let reply = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
    match method {
        "seats.subscribe" => {
            let fid = p.get("flight_id").and_then(Value::as_str).unwrap_or("");
            let f = flights.entry(fid.to_string()).or_insert_with(|| Flight {
                version: 0,
                tx: broadcast::channel(capacity).0,
            });
            let rx = f.tx.subscribe();
            let r = json!({"flight_id": fid, "version": f.version, "seats": []});
            (reply(r), Some(rx))
        }
        "booking.hold" | "booking.cancel" => {
            let (fid, seats, status) = if method == "booking.hold" {
                let fid = p.get("flight_id").and_then(Value::as_str).unwrap_or("");
                let seats: Vec<String> = p
                    .get("seats")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                (fid.to_string(), seats, "held")
            } else {
                let loc = p.get("locator").and_then(Value::as_str).unwrap_or("");
                let (fid, seats) = loc.split_once('/').unwrap_or((loc, ""));
                let seats = seats.split(',').map(str::to_string).collect();
                (fid.to_string(), seats, "available")
            };
            let locator = format!("{fid}/{}", seats.join(","));
            if let Some(f) = flights.get_mut(&fid) {
                f.version += 1;
                let seats: Vec<Value> = seats
                    .iter()
                    .map(|s| json!({"seat": s, "status": status}))
                    .collect();
                let push = json!({"jsonrpc": "2.0", "method": "seats.changed", "params": {
                    "flight_id": fid, "version": f.version, "seats": seats,
                    "cabins": [{"cabin": "business", "seats_available": 12},
                               {"cabin": "economy", "seats_available": 150}]}});
                // no subscribers is not an error
                let _ = f.tx.send(Utf8Bytes::from(push.to_string()));
            }
            (
                reply(json!({"booking": {"locator": locator, "status": status}})),
                None,
            )
        }
        _ => (reply(json!({"token": "bare"})), None),
    }
}
