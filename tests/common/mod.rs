//! Test harness: a real Jetway on port 0 with a temporary data dir (in-process, or
//! as a child process that can be killed with SIGKILL), and a WebSocket client.

#![allow(dead_code)]

pub mod cluster;
pub mod faulty;
pub mod gateway;
pub mod seat_map;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "correct horse 42";
const WAIT: Duration = Duration::from_secs(20);

/// An in-process server.
pub struct Server {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    running: Option<jetway::Running>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut jetway::Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = jetway::Config::for_tests(dir.path().to_path_buf());
        tweak(&mut config);
        let running = jetway::start(config).await.expect("server starts");
        Server {
            addr: running.addr,
            dir,
            running: Some(running),
        }
    }

    /// Where `/metrics` is served when the config sets `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.metrics_addr)
    }

    pub fn app(&self) -> &std::sync::Arc<jetway::app::App> {
        &self.running.as_ref().expect("running").app
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Shuts down gracefully and starts again on the same data dir (new port).
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut jetway::Config)) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let mut config = jetway::Config::for_tests(self.dir.path().to_path_buf());
        tweak(&mut config);
        // a connection task that outlived the shutdown's grace period on a loaded
        // machine may still hold the old database open: wait until it lets go
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let running = loop {
            match jetway::start(config.clone()).await {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                r => break r.expect("server restarts"),
            }
        };
        self.addr = running.addr;
        self.running = Some(running);
    }

    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Writes a refund record of `booking` straight to the store and syncs it, as an
    /// interrupted run, another node or an older release left it: a passenger's
    /// cancel (`request_id`) of `amount` cents of `payment_ref`, open and with no
    /// seats unless `edit` says otherwise.
    pub fn store_refund(
        &self,
        id: &str,
        booking: &jetway::domain::Booking,
        payment_ref: &str,
        (amount, request_id): (i64, &str),
        edit: impl FnOnce(&mut jetway::store::RefundRecord),
    ) {
        // as stored: the fields left out take their defaults
        let mut r: jetway::store::RefundRecord = serde_json::from_value(json!({
            "id": id, "user_id": booking.user_id, "locator": booking.locator,
            "payment_ref": payment_ref, "amount": {"amount": amount, "currency": "EUR"},
            "seats": [], "reason": {"kind": "cancel", "request_id": request_id},
            "done": false, "created_at": booking.created_at, "updated_at": booking.created_at,
        }))
        .unwrap();
        edit(&mut r);
        let batch = jetway::store::Batch {
            new_refunds: vec![r],
            ..Default::default()
        };
        self.app().store.write(&batch).unwrap();
        self.app().store.sync().unwrap();
    }

    /// Shuts down gracefully and hands over the data dir.
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }

    /// Starts on an existing data dir; if it refuses, the dir back and the reason.
    pub async fn try_start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut jetway::Config),
    ) -> Result<Server, (tempfile::TempDir, String)> {
        let mut config = jetway::Config::for_tests(dir.path().to_path_buf());
        tweak(&mut config);
        match jetway::start(config).await {
            Ok(running) => Ok(Server {
                addr: running.addr,
                dir,
                running: Some(running),
            }),
            Err(e) => Err((dir, e.to_string())),
        }
    }
}

/// Jetway as a child process (for SIGKILL tests).
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

/// The jetway binary, without any `MIMALLOC_*` variable of the test's environment:
/// those override the allocator options the binary sets (src/main.rs), which the
/// memory tests rely on.
pub fn jetway_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetway"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MIMALLOC_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Proc {
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Proc {
        Self::spawn_with_env(data_dir, args, &[])
    }

    pub fn spawn_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = jetway_command()
            .envs(envs.iter().copied())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jetway");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read stdout");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Proc { child, addr }
    }

    /// Starts Jetway on a free port picked here and waits until `/healthz` answers.
    /// Unlike [`Proc::spawn`] it needs nothing printed on stdout (which is discarded).
    pub fn start(data_dir: &Path, args: &[&str]) -> Proc {
        Self::start_with_env(data_dir, args, &[])
    }

    /// [`Proc::start`] with extra environment variables (secrets, the admin password).
    pub fn start_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = jetway_command()
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jetway");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("jetway exited at start: {status}");
            }
            if http_get_blocking(addr, "/healthz").is_some_and(|(code, _)| code == 200) {
                return Proc { child, addr };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "jetway did not answer /healthz within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites the open refund of `subject` (its booking's locator) as `change` says,
/// only over the record as read.
pub fn rewrite_open_refund(
    store: &dyn jetway::store::Store,
    subject: &str,
    change: impl FnOnce(&mut jetway::store::RefundRecord),
) {
    let read = store.open_refund(subject).unwrap().expect("an open refund");
    let mut changed = read.clone();
    change(&mut changed);
    let write = jetway::store::Batch {
        refunds: vec![changed],
        refunds_read: vec![read],
        ..Default::default()
    };
    store.write(&write).unwrap();
    store.sync().unwrap();
}

/// Dates every try on the open refund of `subject` so long ago that no request of
/// theirs may still be made at the gateway (its window, [`jetway::app::App`]'s wait
/// before an admin decides, is over); the time they now began.
pub fn tries_long_ago(app: &jetway::app::App, subject: &str) -> i64 {
    let span = app.payment_span().as_millis() as i64;
    let long_ago = jetway::domain::now_ms() - 4 * span;
    rewrite_open_refund(app.store.as_ref(), subject, |r| {
        r.asked_at = r.asked_at.map(|_| long_ago);
        r.asked_until = r.asked_until.map(|_| long_ago + span);
        r.earlier_until = r.earlier_until.map(|_| long_ago);
    });
    long_ago
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A WebSocket connection upgraded by hand on a plain socket (read timeout [`WAIT`]),
/// for frames no client library sends.
pub fn raw_upgrade(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        t,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        t.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    t
}

/// A masked client frame of `opcode` (FIN set) carrying `payload` (at most 125
/// bytes), with `rsv` bits.
pub fn client_frame(opcode: u8, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | rsv | opcode, 0x80 | payload.len() as u8];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A plain HTTP/1.0 GET: the status code and the body, or None if nothing answered.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_blocking(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}

/// A `POST /admin/backup` with an admin's session `token` over HTTP/1.0: the status
/// code and the body (the snapshot, read as text), or None if nothing answered.
pub async fn http_backup(addr: SocketAddr, token: &str) -> Option<(u16, String)> {
    let request = format!(
        "POST /admin/backup HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || http_blocking(addr, &request))
        .await
        .ok()
        .flatten()
}

/// Sends a whole HTTP/1.0 `request`: the status code and the body, or None if
/// nothing answered.
fn http_blocking(addr: SocketAddr, request: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// [`http_get_blocking`] off the async runtime's threads.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get_blocking(addr, &path))
        .await
        .ok()
        .flatten()
}

/// `promtool check metrics` on a page: its complaints, if any (names, units, types,
/// help texts, a family declared twice).
pub fn promtool_check(page: &str) -> Result<(), String> {
    use std::io::Write;
    let tool = std::env::var("JETWAY_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = match Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "{tool}: {e}: run scripts/test.sh (it installs Debian's prometheus package) or set JETWAY_PROMTOOL"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// The status a `flights.get` result shows for `seat`.
pub fn seat_status(map: &Value, seat: &str) -> Value {
    map["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .find(|s| s["seat"] == seat)
        .expect("the seat is on the map")["status"]
        .clone()
}

/// The value of a gauge or counter in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON-RPC client that keeps pushes aside while waiting for replies.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
    pub pushes: VecDeque<Value>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A username no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client {
            ws,
            next_id: 0,
            pushes: VecDeque::new(),
        }
    }

    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            next_id: 0,
            pushes: VecDeque::new(),
        }
    }

    /// Like [`Client::call`], but None instead of a panic when the connection fails
    /// or nothing answers within `wait`.
    pub async fn try_call(&mut self, method: &str, params: Value, wait: Duration) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        self.ws.send(Message::text(req.to_string())).await.ok()?;
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            let Message::Text(t) = m else {
                if m.is_close() {
                    return None;
                }
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).ok()?;
            if v.get("id") == Some(&json!(id)) {
                return Some(v);
            }
            if v.get("id").is_none() {
                self.pushes.push_back(v);
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next frame from the server, parsed, or None when the connection ended.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("server answered in time")?;
            match m {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a request and returns the whole reply (result or error), keeping pushes.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        self.send_text(&req.to_string()).await;
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("connection closed waiting for {method}"));
            if m.get("id") == Some(&json!(id)) {
                return m;
            }
            if m.get("id").is_none() {
                self.pushes.push_back(m);
            }
        }
    }

    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        match r.get("result") {
            Some(v) => v.clone(),
            None => panic!("{method} failed: {r}"),
        }
    }

    /// The error object of a call that must fail.
    pub async fn err(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        r.get("error")
            .cloned()
            .unwrap_or_else(|| panic!("{method} should fail: {r}"))
    }

    pub async fn reason(&mut self, method: &str, params: Value) -> String {
        let e = self.err(method, params).await;
        e["data"]["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// The next push of `method` (earlier pushes of other methods are kept).
    pub async fn push(&mut self, method: &str) -> Value {
        if let Some(pos) = self.pushes.iter().position(|p| p["method"] == method) {
            return self
                .pushes
                .remove(pos)
                .map(|p| p["params"].clone())
                .unwrap_or_default();
        }
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("connection closed waiting for {method}"));
            if m["method"] == method {
                return m["params"].clone();
            }
            if m.get("id").is_none() {
                self.pushes.push_back(m);
            }
        }
    }

    /// The params of every `method` push received so far, after a round trip: anything
    /// queued for this connection before now arrives before its reply.
    pub async fn pushes_so_far(&mut self, method: &str) -> Vec<Value> {
        self.ok("flights.airports", json!({})).await;
        self.pushes
            .iter()
            .filter(|p| p["method"] == method)
            .map(|p| p["params"].clone())
            .collect()
    }

    pub async fn register(&mut self, name: &str) -> Value {
        self.ok(
            "auth.register",
            json!({"username": name, "password": PASSWORD}),
        )
        .await
    }

    /// Registers a fresh user on this connection and returns the token.
    pub async fn new_user(&mut self) -> String {
        let r = self.register(&unique_name("u")).await;
        r["token"].as_str().expect("token").to_owned()
    }
}

/// The types of a user's history events, newest first.
pub async fn history_types(c: &mut Client) -> Vec<String> {
    let h = c.ok("history.list", json!({})).await;
    h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// A flight that departs more than two days from now (full refunds in economy).
pub async fn later_flight(c: &mut Client) -> Value {
    departing_within(c, time::Duration::days(2), time::Duration::MAX)
        .await
        .expect("a flight more than two days out")
}

/// The first flight that departs between `from` and `to` from now.
pub async fn departing_within(
    c: &mut Client,
    from: time::Duration,
    to: time::Duration,
) -> Option<Value> {
    all_departing_within(c, from, to).await.into_iter().next()
}

/// Every flight (of the first 500) that departs between `from` and `to` from now.
pub async fn all_departing_within(
    c: &mut Client,
    from: time::Duration,
    to: time::Duration,
) -> Vec<Value> {
    let r = c.ok("flights.search", json!({"limit": 500})).await;
    let now = time::OffsetDateTime::now_utc();
    r["flights"]
        .as_array()
        .expect("flights")
        .iter()
        .filter(|f| {
            let dep = time::OffsetDateTime::parse(
                f["departs_at"].as_str().unwrap_or(""),
                &time::format_description::well_known::Rfc3339,
            );
            dep.is_ok_and(|d| d - now > from && d - now < to)
        })
        .cloned()
        .collect()
}

/// Free seats of a cabin on a flight, in map order.
pub async fn free_seats(c: &mut Client, flight_id: &str, cabin: &str, n: usize) -> Vec<String> {
    let m = c.ok("flights.get", json!({"flight_id": flight_id})).await;
    m["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .filter(|s| s["status"] == "available" && s["cabin"] == cabin)
        .take(n)
        .map(|s| s["seat"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn passengers(n: usize) -> Value {
    json!((0..n)
        .map(|i| json!({"name": format!("Passenger {i}")}))
        .collect::<Vec<_>>())
}

/// Holds seats and returns the booking.
pub async fn hold(c: &mut Client, flight_id: &str, seats: &[String], rid: &str) -> Value {
    let r = c
        .ok(
            "booking.hold",
            json!({"flight_id": flight_id, "seats": seats, "passengers": passengers(seats.len()), "request_id": rid}),
        )
        .await;
    r["booking"].clone()
}

/// Holds seats (request `hold_rid`) and pays them with `pm_card_visa` (request
/// `pay_rid`); returns the booking's locator.
pub async fn paid(
    c: &mut Client,
    flight_id: &str,
    seats: &[String],
    hold_rid: &str,
    pay_rid: &str,
) -> String {
    let b = hold(c, flight_id, seats, hold_rid).await;
    let locator = b["locator"].as_str().expect("a locator").to_owned();
    c.ok(
        "booking.pay",
        json!({"locator": locator, "payment_method": "pm_card_visa", "request_id": pay_rid}),
    )
    .await;
    locator
}

pub fn data_dir() -> PathBuf {
    tempfile::tempdir().expect("tempdir").keep()
}

/// The cents of a wire Money (`{amount, currency}`).
pub fn cents(m: &Value) -> i64 {
    m["amount"].as_i64().unwrap_or_default()
}

/// Money kept per booking, at the gateway (charged minus refunded over the fake's
/// PaymentIntents with that locator) against Jetway's word (its order's amount minus
/// refunded, 0 without an order): one line per booking where they differ. Empty means
/// no charge without a ticket or a refund, and every refund recorded was paid.
pub fn money_mismatches(orders: &[Value], ledger: &fake_stripe::Ledger) -> Vec<String> {
    let mut kept: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for i in &ledger.intents {
        let loc = i.metadata.get("locator").cloned().unwrap_or_default();
        kept.entry(loc).or_default().0 += i.charged - i.refunded();
    }
    for o in orders {
        let loc = o["locator"].as_str().unwrap_or_default().to_owned();
        kept.entry(loc).or_default().1 += cents(&o["amount"]) - cents(&o["refunded"]);
    }
    kept.into_iter()
        .filter(|(_, (gateway, jetway))| gateway != jetway)
        .map(|(loc, (gateway, jetway))| {
            format!("{loc}: the gateway kept {gateway} cents, Jetway's order says {jetway}")
        })
        .collect()
}

/// The environment variable with a Stripe secret key, for a Jetway on the fake Stripe.
pub const FAKE_STRIPE_KEY: (&str, &str) = ("STRIPE_SECRET_KEY", "sk_test_fake");

/// Flags that make Jetway pay through the fake Stripe at `base`, with the shortest
/// gateway timeout (1 s) and a reconciliation round every second.
pub fn fake_stripe_flags(base: &str) -> [&str; 8] {
    [
        "--payments",
        "stripe",
        "--stripe-api-base",
        base,
        "--gateway-timeout",
        "1",
        "--reconcile-interval",
        "1",
    ]
}
