//! WebSocket connections to the target and a minimal JSON-RPC caller.

use futures::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Ws = WebSocketStream<TcpStream>;

/// How long one request may take before the run counts it as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to connect, and from which loopback source addresses (each has its own
/// ephemeral port range, so one client can open far more than ~28k connections).
#[derive(Debug)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
    sources: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Endpoint {
    pub fn new(url: &str, sources: usize) -> Result<Self, Error> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("only ws:// URLs are supported")?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| format!("{url}: expected ws://IP:PORT/..."))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url}: jetway-load only talks to loopback addresses").into());
        }
        let sources = (0..sources.max(1))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8)))
            .collect();
        Ok(Endpoint {
            url: url.to_string(),
            addr,
            sources,
            next: AtomicUsize::new(0),
        })
    }

    /// Opens a WebSocket; client buffers are kept small so 20k of them fit.
    pub async fn connect(&self) -> Result<Ws, Error> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let src = if self.addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            self.sources[i % self.sources.len()]
        } else {
            self.addr.ip()
        };
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(src, 0))?;
        let tcp = tokio::time::timeout(Duration::from_secs(30), sock.connect(self.addr))
            .await
            .map_err(|_| "connect timed out")??;
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(self.url.as_str(), tcp, Some(config)),
        )
        .await
        .map_err(|_| "websocket handshake timed out")??;
        Ok(ws)
    }
}

/// An application error from the server (`error.data.reason`).
#[derive(Debug, Clone)]
pub struct RpcError {
    pub reason: String,
    pub message: String,
}

pub type Reply = Result<Value, RpcError>;

impl RpcError {
    fn from_json(e: &Value) -> Self {
        let text =
            |v: Option<&Value>, or: &str| v.and_then(Value::as_str).unwrap_or(or).to_string();
        RpcError {
            reason: text(e.pointer("/data/reason"), "unknown"),
            message: text(e.get("message"), ""),
        }
    }
}

/// What a frame is, read without decoding the rest (serde skips `result` and
/// `params` without building anything).
#[derive(serde::Deserialize)]
struct Head {
    id: Option<u64>,
}

/// A reply, its result decoded as `T`.
#[derive(serde::Deserialize)]
struct Frame<T> {
    error: Option<Value>,
    result: Option<T>,
}

/// One connection used for request/response. Pushes are counted and skipped.
pub struct Conn {
    pub ws: Ws,
    next_id: u64,
    pub pushes: u64,
}

impl Conn {
    pub async fn open(ep: &Endpoint) -> Result<Self, Error> {
        Ok(Conn {
            ws: ep.connect().await?,
            next_id: 1,
            pushes: 0,
        })
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Reply, Error> {
        self.call_as(method, params).await
    }

    /// Sends a request and decodes its result as `T`, one pass over the text: a loop
    /// that needs one field of a large result (a hold's locator) skips the rest
    /// without building a tree of values, so the tool's CPU goes to the server.
    pub async fn call_as<T>(
        &mut self,
        method: &str,
        params: Value,
    ) -> Result<Result<T, RpcError>, Error>
    where
        T: serde::de::DeserializeOwned + Default,
    {
        let text = self.exchange(method, params).await?;
        let frame: Frame<T> = serde_json::from_str(text.as_str())?;
        Ok(match frame.error {
            Some(e) => Err(RpcError::from_json(&e)),
            None => Ok(frame.result.unwrap_or_default()),
        })
    }

    /// Sends a request and checks that its reply is a success, without decoding the
    /// result: a full seat map costs the client a scan, not a tree of values, so a
    /// run opening thousands of subscribed connections measures the server.
    pub async fn check(&mut self, method: &str, params: Value) -> Result<(), Error> {
        match self.call_as::<IgnoredAny>(method, params).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{method}: {} ({})", e.reason, e.message).into()),
        }
    }

    /// Sends a request and returns the text of its reply.
    async fn exchange(&mut self, method: &str, params: Value) -> Result<Utf8Bytes, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.ws.send(Message::Text(text.to_string().into())).await?;
        tokio::time::timeout(CALL_TIMEOUT, self.reply(id))
            .await
            .map_err(|_| format!("{method}: no reply in {CALL_TIMEOUT:?}"))?
    }

    /// Reads until the reply to `id`; pushes on the way are counted and skipped.
    async fn reply(&mut self, id: u64) -> Result<Utf8Bytes, Error> {
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => {
                    return Err(format!("connection closed by the server: {c:?}").into())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("connection closed".into()),
            };
            if serde_json::from_str::<Head>(text.as_str())?.id == Some(id) {
                return Ok(text);
            }
            self.pushes += 1;
        }
    }

    /// A call whose application error is also a failure of the run.
    pub async fn must(&mut self, method: &str, params: Value) -> Result<Value, Error> {
        match self.call(method, params).await? {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("{method}: {} ({})", e.reason, e.message).into()),
        }
    }
}

/// A password that passes the server's rules.
pub const PASSWORD: &str = "load-test-password";

/// A username unique to this process run.
pub fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}{}_{i}", std::process::id() % 100_000)
}

/// Registers `n` accounts (a few at a time: each costs an Argon2 hash) and returns
/// their tokens.
pub async fn register_accounts(
    ep: &Endpoint,
    prefix: &str,
    n: usize,
    parallel: usize,
) -> Result<Vec<String>, Error> {
    let names: Vec<String> = (0..n).map(|i| username(prefix, i)).collect();
    let tokens = futures::stream::iter(names)
        .map(|name| async move {
            let mut c = Conn::open(ep).await?;
            let r = c
                .must(
                    "auth.register",
                    json!({"username": name, "password": PASSWORD}),
                )
                .await?;
            let token = r
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let _ = c.ws.close(None).await;
            Ok::<_, Error>(token)
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    tokens.into_iter().collect()
}

/// A flight to load and its seat labels.
#[derive(Debug, Clone)]
pub struct FlightInfo {
    pub flight_id: String,
    pub seats: Vec<String>,
}

/// Picks the flight with the most seats among upcoming ones (or `want`). A target
/// without flights (the bare reference) gets a made-up flight of 240 seats.
pub async fn pick_flight(conn: &mut Conn, want: Option<&str>) -> Result<FlightInfo, Error> {
    let mut id = want.map(str::to_string);
    if id.is_none() {
        let r = conn.call("flights.search", json!({"limit": 100})).await?;
        let flights = r
            .ok()
            .and_then(|v| v.get("flights").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let seats_of = |f: &Value| -> u64 {
            f.get("cabins")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("seats_total").and_then(Value::as_u64))
                        .sum()
                })
                .unwrap_or(0)
        };
        id = flights
            .iter()
            .max_by_key(|f| seats_of(f))
            .and_then(|f| f.get("flight_id").and_then(Value::as_str))
            .map(str::to_string);
    }
    let Some(id) = id else {
        let seats = (1..=40)
            .flat_map(|r| ["A", "B", "C", "D", "E", "F"].map(|l| format!("{r}{l}")))
            .collect();
        return Ok(FlightInfo {
            flight_id: made_up_flight(1),
            seats,
        });
    };
    let r = conn.must("flights.get", json!({"flight_id": id})).await?;
    let seats = r
        .get("seats")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|s| s.get("status").and_then(Value::as_str) == Some("available"))
                .filter_map(|s| s.get("seat").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(FlightInfo {
        flight_id: id,
        seats,
    })
}

/// The `i`th flight id of a target without a schedule (the bare reference, which
/// takes any id).
pub fn made_up_flight(i: usize) -> String {
    format!("REF{i}")
}

/// All upcoming flight ids (up to 500).
pub async fn all_flights(conn: &mut Conn) -> Result<Vec<String>, Error> {
    let r = conn.must("flights.search", json!({"limit": 500})).await?;
    Ok(r.get("flights")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    f.get("flight_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A hold's result with only its locator decoded (`call_as::<Held>`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Held {
    booking: Option<HeldBooking>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct HeldBooking {
    locator: Option<String>,
}

impl Held {
    pub fn locator(self) -> Option<String> {
        self.booking.and_then(|b| b.locator)
    }
}
