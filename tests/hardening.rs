//! Hostile clients and abuse limits (docs/security.md): request floods, too many
//! connections from one address, handshakes that never finish, subscriptions and
//! holds beyond their limits, login brute force, the authorization matrix, the
//! WebSocket Origin check, security headers and `/metrics`.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use jetway::protocol::params::{Access, Method};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it returns Some, failing after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP/1.1 exchange (off the runtime's threads): status code, lower-cased
/// headers, body.
async fn http_raw(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let request = request.to_owned();
    tokio::task::spawn_blocking(move || http_raw_blocking(addr, &request))
        .await
        .unwrap()
}

fn http_raw_blocking(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

async fn metrics_page(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.expect("metrics").1
}

/// A server allowing a burst of `burst` requests, then one a second, and closing a
/// connection after 5 refusals in a row.
async fn flood_server(burst: u32) -> Server {
    Server::start_with(|c| {
        c.limits.rate_limit = 1;
        c.limits.rate_burst = burst;
        c.limits.rate_limit_close = 5;
    })
    .await
}

#[tokio::test]
async fn a_request_flood_is_refused_then_closed() {
    let s = flood_server(3).await;
    let mut c = s.client().await;
    let sent: Vec<u64> = (1..=20).collect();
    for id in &sent {
        c.send_text(&json!({"jsonrpc":"2.0","id":id,"method":"flights.airports"}).to_string())
            .await;
    }
    let (mut ok, mut limited) = (0, 0);
    let close = loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("the server answers or closes");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert!(sent.contains(&v["id"].as_u64().unwrap()), "{v}");
                if v.get("result").is_some() {
                    ok += 1;
                } else {
                    assert_eq!(v["error"]["data"]["reason"], "rate_limited", "{v}");
                    assert_eq!(v["error"]["code"], -32029);
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    assert!(ok >= 3, "the burst is served: {ok}");
    assert!(limited >= 1, "then requests are refused");
    assert!(
        ok + limited < 20,
        "the connection is closed before the flood ends"
    );
    // other connections are not affected
    let mut d = s.client().await;
    d.ok("flights.airports", json!({})).await;
    let page = metrics_page(s.addr).await;
    assert!(metric(&page, "jetway_rejected_total{reason=\"rate_limited\"}").unwrap() >= 1.0);
    assert!(metric(&page, "jetway_rejected_total{reason=\"rate_limit_close\"}").unwrap() >= 1.0);
    s.stop().await;
}

/// Pings draw on the same budget as requests: a ping flood (each costs the server a
/// read and a pong) is closed as a request flood is. Before, control frames were
/// never counted, and a client could keep a server busy with pings forever.
#[tokio::test]
async fn a_ping_flood_is_closed_as_a_request_flood_is() {
    let s = flood_server(3).await;
    let mut c = s.client().await;
    for _ in 0..20 {
        c.ws.feed(Message::Ping(vec![b'p'; 64].into()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("the server closes")
        {
            Some(Ok(Message::Close(f))) => break f.expect("a close code"),
            Some(Ok(Message::Pong(_))) => continue,
            other => panic!("expected pongs, then a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    let page = metrics_page(s.addr).await;
    assert!(metric(&page, "jetway_rejected_total{reason=\"rate_limit_close\"}").unwrap() >= 1.0);
    // a client sending a few pings is served as before
    let mut d = s.client().await;
    d.ws.send(Message::Ping(vec![b'q'].into())).await.unwrap();
    d.ok("flights.airports", json!({})).await;
    s.stop().await;
}

/// A client that reads slowly still gets every reply the server queued before it
/// closed the connection, and the close frame: the server drains the client's unread
/// input instead of closing a socket with input pending, which resets the
/// connection and throws away what the kernel had not sent yet (here megabytes of
/// search results the client had not read when the flood close came).
#[tokio::test]
async fn a_client_reading_late_gets_everything_sent_before_the_close() {
    let s = flood_server(60).await;
    let c = s.client().await;
    let (mut tx, mut rx) = c.ws.split();
    let sending = tokio::spawn(async move {
        for id in 1..=200 {
            let req =
                json!({"jsonrpc":"2.0","id":id,"method":"flights.search","params":{"limit":100}});
            if tx.feed(Message::text(req.to_string())).await.is_err() {
                break;
            }
        }
        let _ = tx.flush().await;
        tx
    });
    eventually("the flood close", || async {
        let page = metrics_page(s.addr).await;
        metric(&page, "jetway_rejected_total{reason=\"rate_limit_close\"}").filter(|n| *n >= 1.0)
    })
    .await;
    let (mut ok, mut limited, mut bytes) = (0, 0, 0);
    let close = loop {
        match tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Text(t))) => {
                bytes += t.len();
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v.get("result") {
                    Some(_) => ok += 1,
                    None => limited += 1,
                }
            }
            Some(Ok(Message::Close(f))) => break f.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("after {ok} results ({bytes} bytes) and {limited} refusals: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    // a token may come back while the client reads (one a second)
    assert!(ok >= 60 && limited >= 5, "{ok} results, {limited} refusals");
    assert!(
        bytes > 1 << 20,
        "{bytes} bytes: more than the socket buffers hold"
    );
    drop(sending.await);
    s.stop().await;
}

/// The close code a server sends after `frame` (raw bytes) on a fresh WebSocket.
fn close_code_after(addr: SocketAddr, frame: &[u8]) -> u16 {
    let mut t = raw_upgrade(addr);
    t.write_all(frame).unwrap();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    // the server's frames are unmasked with short lengths: find the close (0x88)
    let mut i = 0;
    while i + 1 < rest.len() {
        let len = (rest[i + 1] & 0x7f) as usize;
        if rest[i] == 0x88 && len >= 2 {
            return u16::from_be_bytes([rest[i + 2], rest[i + 3]]);
        }
        i += 2 + len;
    }
    panic!("no close frame after {frame:?} in {rest:?}");
}

/// A frame that breaks the protocol is answered with close code 1002, a text
/// message that is not UTF-8 with 1007 (RFC 6455 7.4.1), not 1000 as a normal end.
#[tokio::test]
async fn protocol_errors_close_with_their_own_codes() {
    let s = Server::start().await;
    let addr = s.addr;
    let codes = tokio::task::spawn_blocking(move || {
        let unmasked = [0x81u8, 0x02, b'h', b'i'];
        [
            close_code_after(addr, &client_frame(0x1, 0, &[0xff, 0xfe, 0x41])),
            close_code_after(addr, &client_frame(0x1, 0x40, b"{}")),
            close_code_after(addr, &client_frame(0x3, 0, b"")),
            close_code_after(addr, &unmasked),
            close_code_after(addr, &client_frame(0x8, 0, &[0x03, 0xe8])),
        ]
    })
    .await
    .unwrap();
    assert_eq!(codes, [1007, 1002, 1002, 1002, 1000]);
    s.stop().await;
}

#[tokio::test]
async fn a_polite_client_is_never_rate_limited() {
    let s = Server::start_with(|c| {
        c.limits.rate_limit = 1000;
        c.limits.rate_burst = 60;
    })
    .await;
    let mut c = s.client().await;
    // request-reply, one at a time: fewer requests than the burst allowance, so no timing can trip it
    for _ in 0..50 {
        c.ok("flights.airports", json!({})).await;
    }
    s.stop().await;
}

/// A frame costs a token per started 4 KiB: twenty 60 KiB frames sent at once
/// overdraw the default burst of 200 (twenty small ones would not), while the
/// connection stays open and a small request passes once tokens are back.
#[tokio::test]
async fn large_frames_spend_the_rate_limit_faster() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let pad = "x".repeat(60 * 1024);
    for i in 0..20 {
        let req = json!({"jsonrpc": "2.0", "id": i, "method": "flights.airports", "params": {"pad": pad}});
        c.send_text(&req.to_string()).await;
    }
    let mut limited = 0;
    for _ in 0..20 {
        let r = c.recv().await.unwrap();
        if r["error"]["data"]["reason"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 20 large frames refused");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.call("flights.airports", json!({})).await;
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(r["error"]["data"]["reason"], "rate_limited", "{r}");
        assert!(Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_limited_except_loopback_by_default() {
    // loopback exempt by default
    let s = Server::start_with(|c| c.limits.max_connections_per_addr = 2).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(s.client().await);
    }
    s.stop().await;

    let s = Server::start_with(|c| {
        c.limits.max_connections_per_addr = 2;
        c.limits.limit_loopback = true;
    })
    .await;
    let mut a = s.client().await;
    let b = s.client().await;
    let refused = tokio_tungstenite::connect_async(s.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        Err(_) => {}
        Ok(_) => panic!("a third connection from one address must be refused"),
    }
    // plain HTTP counts too
    let (code, _, _) = http_raw(s.addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 429);
    a.ok("flights.airports", json!({})).await;
    drop(b);
    // once a connection is gone its slot is free again
    let url = s.url();
    let mut c = eventually("a freed slot", || {
        let url = url.clone();
        async move { tokio_tungstenite::connect_async(url).await.ok() }
    })
    .await
    .0;
    c.send(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"method":"flights.airports"}"#,
    ))
    .await
    .unwrap();
    assert!(c.next().await.unwrap().unwrap().is_text());
    drop((a, c));
    // /metrics needs a slot too
    let addr = s.addr;
    let refused = eventually("metrics", || async move {
        let (code, body) = http_get(addr, "/metrics").await?;
        (code == 200)
            .then(|| metric(&body, "jetway_rejected_total{reason=\"per_address_limit\"}"))
            .flatten()
    })
    .await;
    assert!(refused >= 2.0, "{refused}");
    s.stop().await;
}

/// Opens a WebSocket whose upgrade request carries `header: value`.
async fn connect_with(
    url: &str,
    header: &'static str,
    value: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(header, value.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn refused_with_429(r: Result<Ws, tokio_tungstenite::tungstenite::Error>) {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a connection over the per-address cap must be refused"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    // loopback is the proxy: every client's WebSockets count for its own address
    let s = Server::start_with(|c| {
        c.limits.max_connections_per_addr = 2;
        c.limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let url = s.url();
    let a1 = connect_with(&url, "x-forwarded-for", "198.51.100.1, 203.0.113.5")
        .await
        .unwrap();
    let a2 = connect_with(&url, "x-forwarded-for", "203.0.113.5")
        .await
        .unwrap();
    refused_with_429(connect_with(&url, "x-forwarded-for", "203.0.113.5").await);
    // a `Forwarded` header is the client's own (the proxy writes X-Forwarded-For):
    // not believed, so it cannot name another address (or loopback) to dodge the cap
    let mut spoofed = Vec::new();
    for _ in 0..3 {
        spoofed.push(
            connect_with(&url, "forwarded", "for=203.0.113.5")
                .await
                .unwrap(),
        );
    }
    // the proxy itself and other clients are not held back by that one
    let mut others = Vec::new();
    for i in 0..4 {
        let ip = format!("203.0.113.{}", 10 + i);
        others.push(connect_with(&url, "x-forwarded-for", &ip).await.unwrap());
    }
    // a closed WebSocket gives its client's slot back
    drop(a1);
    eventually("the forwarded address's slot is freed", || {
        let url = url.clone();
        async move {
            connect_with(&url, "x-forwarded-for", "203.0.113.5")
                .await
                .ok()
        }
    })
    .await;
    drop((a2, others, spoofed));
    s.stop().await;

    // a proxy that writes `Forwarded` (`--forwarded-header forwarded`)
    let s = Server::start_with(|c| {
        c.limits.max_connections_per_addr = 2;
        c.limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        c.limits.forwarded_header = jetway::config::ForwardedHeader::Forwarded;
    })
    .await;
    let url = s.url();
    let c1 = connect_with(&url, "forwarded", "for=203.0.113.5;proto=https")
        .await
        .unwrap();
    let c2 = connect_with(&url, "forwarded", "for=\"203.0.113.5:4711\"")
        .await
        .unwrap();
    refused_with_429(connect_with(&url, "forwarded", "for=203.0.113.5").await);
    drop((c1, c2));
    s.stop().await;

    // from a peer that is not a trusted proxy the headers are ignored: loopback
    // (limited here) is the address, whatever the client claims
    let s = Server::start_with(|c| {
        c.limits.max_connections_per_addr = 2;
        c.limits.limit_loopback = true;
        c.limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let url = s.url();
    let b1 = connect_with(&url, "x-forwarded-for", "203.0.113.1")
        .await
        .unwrap();
    let b2 = connect_with(&url, "forwarded", "for=203.0.113.2")
        .await
        .unwrap();
    refused_with_429(connect_with(&url, "x-forwarded-for", "203.0.113.3").await);
    drop((b1, b2));
    s.stop().await;
}

/// An IPv6 host usually has a whole /64 to send from: the per-address limits count
/// the /64, so changing the address within it does not reset them.
#[tokio::test]
async fn an_ipv6_client_is_limited_by_its_64() {
    let s = Server::start_with(|c| {
        c.limits.max_connections_per_addr = 2;
        c.limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let url = s.url();
    let a1 = connect_with(&url, "x-forwarded-for", "2001:db8:5:7::1")
        .await
        .unwrap();
    let a2 = connect_with(&url, "x-forwarded-for", "2001:db8:5:7:a:b:c:d")
        .await
        .unwrap();
    refused_with_429(connect_with(&url, "x-forwarded-for", "2001:db8:5:7::99").await);
    // the next /64 is another client
    let b = connect_with(&url, "x-forwarded-for", "2001:db8:5:8::1")
        .await
        .unwrap();
    drop((a1, a2, b));
    s.stop().await;
}

/// True when the server closed the connection (EOF or reset), false on data or
/// when nothing happened within the read timeout.
fn closed_by_server(t: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match t.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Connects, sends `bytes`, and tells (off the runtime's threads) whether the server
/// then closes the connection without an answer.
fn closed_after_sending(addr: SocketAddr, bytes: &'static [u8]) -> tokio::task::JoinHandle<bool> {
    tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        t.write_all(bytes).unwrap();
        closed_by_server(&mut t)
    })
}

#[tokio::test]
async fn a_handshake_that_never_finishes_times_out() {
    let s = Server::start_with(|c| c.limits.handshake_timeout = 1).await;
    let addr = s.addr;
    let started = Instant::now();
    let silent = closed_after_sending(addr, b"");
    let slowloris = closed_after_sending(
        addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
    );
    assert!(silent.await.unwrap(), "a silent connection is closed");
    assert!(slowloris.await.unwrap(), "a half-sent request is closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // a WebSocket is not subject to it once upgraded
    let mut c = s.client().await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // longer than the timeout on purpose
    c.ok("flights.airports", json!({})).await;
    let page = metrics_page(s.addr).await;
    assert!(metric(&page, "jetway_rejected_total{reason=\"handshake_timeout\"}").unwrap() >= 2.0);
    s.stop().await;
}

/// A server with `--metrics-listen` and a handshake timeout of `timeout` seconds,
/// and the metrics listener's address.
async fn metrics_listener_server(timeout: u64) -> (Server, SocketAddr) {
    let s = Server::start_with(|c| {
        c.limits.handshake_timeout = timeout;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = s.metrics_addr().unwrap();
    (s, addr)
}

/// The `--metrics-listen` listener has the main listener's guards: a connection that
/// never finishes its request is closed after the handshake timeout (it used to be
/// kept for good, holding a file descriptor the main listener needs).
#[tokio::test]
async fn the_metrics_listener_times_out_a_request_that_never_finishes() {
    let (s, addr) = metrics_listener_server(1).await;
    let slowloris = closed_after_sending(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    assert!(slowloris.await.unwrap(), "a half-sent request is closed");
    let (code, _) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200, "a whole request is served");
    s.stop().await;
}

/// A scraper's kept-alive connection to the `--metrics-listen` listener is served
/// for as long as it keeps asking within the handshake timeout, as on the main
/// listener: each request gives it another timeout (when the listener first got the
/// guards, the timeout ran from the accept, and cut a scraper's connection mid-use).
#[tokio::test]
async fn a_scraper_s_kept_alive_connection_is_served_past_the_handshake_timeout() {
    let (s, addr) = metrics_listener_server(2).await;
    tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        let started = Instant::now();
        for i in 0..4 {
            if i > 0 {
                // the scenario is time passing: 0.8 s apart, 2.4 s in all
                std::thread::sleep(Duration::from_millis(800));
            }
            t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap_or_else(|e| panic!("request {i} after {:?}: {e}", started.elapsed()));
            let (code, len) = read_response(&mut t);
            assert_eq!((code, len > 0), (200, true), "request {i}");
        }
    })
    .await
    .unwrap();
    s.stop().await;
}

/// A server with a 1 s handshake timeout, and an admin's session token.
async fn backup_admin() -> (Server, String) {
    let password = "backup admin 2026";
    let s = Server::start_with(|c| {
        c.limits.handshake_timeout = 1;
        c.admin_password = Some(password.into());
    })
    .await;
    let mut admin = s.client().await;
    let login = json!({"username": "admin", "password": password});
    let token = admin.ok("auth.login", login).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (s, token)
}

/// An admin's backup may take longer to make and send than the handshake timeout, but
/// the keep-alive connection it came on is held to the timeout again once it is sent
/// (it used to be exempt for the rest of its life), and it can ask again meanwhile.
#[tokio::test]
async fn a_backup_s_connection_is_held_to_the_timeout_again_afterwards() {
    let (s, token) = backup_admin().await;
    let addr = s.addr;
    let (sizes, closed) = tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        let request = format!(
            "POST /admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let mut sizes = Vec::new();
        for _ in 0..2 {
            t.write_all(request.as_bytes()).unwrap();
            sizes.push(read_response(&mut t));
        }
        (sizes, closed_by_server(&mut t))
    })
    .await
    .unwrap();
    for (status, len) in &sizes {
        assert_eq!(*status, 200);
        assert!(*len > 0);
    }
    assert!(closed, "the idle connection is closed at the timeout");
    s.stop().await;
}

/// An admin's backup of a snapshot of some megabytes (the demo schedule's is ~130 KB,
/// so filler replies are stored first) asked on a connection with a receive buffer of
/// `window` bytes (small: the server's send buffer fills long before the snapshot is
/// sent): the connection once the response's head is read, the body's length, and
/// the server's count of connections cut at the handshake timeout.
async fn large_backup(s: &Server, token: &str, window: u32) -> (tokio::net::TcpStream, usize, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut filler = jetway::store::Batch::default();
    for i in 0..12 {
        let text: String = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let key = jetway::store::IdemKey {
            user: jetway::domain::UserId(1),
            method: "booking.hold",
            request_id: format!("filler-{i}"),
        };
        let memo = jetway::store::Memo(format!(r#"{{"ok":"{text}"}}"#).into_bytes());
        filler.replies.push((key, memo));
    }
    s.app().store.write(&filler).unwrap();
    s.app().store.sync().unwrap();
    let cut = metric(&metrics_page(s.addr).await, HANDSHAKE_TIMEOUTS).unwrap_or(0.0);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(window).unwrap();
    let mut t = socket.connect(s.addr).await.unwrap();
    let request = format!(
        "POST /admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    t.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(t.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    assert!(
        len > 8 << 20,
        "a snapshot larger than the buffers: {len} bytes"
    );
    (t, len, cut)
}

const HANDSHAKE_TIMEOUTS: &str = "jetway_rejected_total{reason=\"handshake_timeout\"}";

/// A backup's client that stops reading partway is cut a handshake timeout after the
/// server last wrote to it. (The connection was exempt from the timeout until the
/// body was sent, which then was never.)
#[tokio::test]
async fn a_backup_client_that_stops_reading_is_cut() {
    use tokio::io::AsyncReadExt;
    let (s, token) = backup_admin().await;
    let (mut t, len, before) = large_backup(&s, &token, 4096).await;
    // the client reads nothing more: the connection is cut at the timeout
    let deadline = Instant::now() + WAIT;
    while metric(&metrics_page(s.addr).await, HANDSHAKE_TIMEOUTS).unwrap_or(0.0) <= before {
        assert!(
            Instant::now() < deadline,
            "the stalled backup was never cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let read = t.read_to_end(&mut rest).await;
    assert!(
        read.is_err() || rest.len() < len,
        "{read:?}: {} of {len}",
        rest.len()
    );
    s.stop().await;
}

/// A backup's client that reads slowly but steadily gets the whole snapshot, however
/// much longer than the handshake timeout it takes, the end included: once the body's
/// last chunk is taken, hyper's buffer and the socket's still hold what an
/// autotuned send buffer took (megabytes), which used to have to be read within one
/// timeout; now only the capped send buffer's worth after the last write is.
#[tokio::test]
async fn a_slow_backup_client_that_keeps_reading_gets_it_all() {
    use tokio::io::AsyncReadExt;
    // the client's pace: about 8 s for the snapshot (the timeout is 1 s), the ~0.4 MB
    // of a capped send buffer in ~0.3 s (what an autotuned one held after the last
    // chunk was taken took longer than the timeout here)
    const READ_RATE: f64 = 1.5e6;
    let (s, token) = backup_admin().await;
    let (mut t, len, before) = large_backup(&s, &token, 4096).await;
    let started = Instant::now();
    let mut got = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while got < len {
        let n = t.read(&mut buf).await.expect("not cut while reading");
        assert!(n > 0, "ended after {got} of {len} bytes");
        got += n;
        let due = started + Duration::from_secs_f64(got as f64 / READ_RATE);
        tokio::time::sleep_until(due.into()).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "slower than the timeout"
    );
    drop(t);
    let page = metrics_page(s.addr).await;
    assert_eq!(metric(&page, HANDSHAKE_TIMEOUTS).unwrap_or(0.0), before);
    s.stop().await;
}

/// Reads one HTTP/1.1 response with a `Content-Length`: its status and body length.
fn read_response(t: &mut std::net::TcpStream) -> (u16, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        t.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    t.read_exact(&mut body).unwrap();
    (status, len)
}

/// A client that pipelines requests and never reads the responses is closed at the
/// handshake timeout, with a reset: it used to be kept for good, because only reads
/// checked the deadline and the server was stuck writing; and a plain close would
/// leave the megabytes it never read queued in the kernel for minutes.
#[tokio::test]
async fn a_client_that_stops_reading_its_responses_is_closed() {
    let s = Server::start_with(|c| c.limits.handshake_timeout = 1).await;
    let addr = s.addr;
    let mut stalled = tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        // ~4 MB of responses, more than the socket buffers hold; the requests are
        // few enough for the server to have read them all
        let request = "GET /openrpc.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
        t.write_all(request.as_bytes()).unwrap();
        t
    })
    .await
    .unwrap();
    eventually("the stalled connection is closed", || async {
        let page = metrics_page(addr).await;
        (metric(&page, "jetway_rejected_total{reason=\"handshake_timeout\"}").unwrap() >= 1.0)
            .then_some(())
    })
    .await;
    let end = tokio::task::spawn_blocking(move || {
        stalled.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) => return Some(e.kind()),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    s.stop().await;
}

/// HTTP/2 (prior knowledge) is refused before a frame is answered: its many requests
/// at once on one connection would slip past the limits that count HTTP/1 requests.
#[tokio::test]
async fn http2_is_refused() {
    let s = Server::start().await;
    let addr = s.addr;
    let closed = closed_after_sending(
        addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    );
    assert!(closed.await.unwrap(), "closed without an answer");
    let (code, _, _) = http_raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200, "HTTP/1.1 is served");
    s.stop().await;
}

/// The status of the first response to `head` followed by `body`, read as soon as
/// its status line is in, without waiting for the connection to end.
fn status_after(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    t.write_all(head.as_bytes()).unwrap();
    t.write_all(body).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match t.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return 0,
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A webhook's body is read only when webhooks are taken, and only up to 256 KiB:
/// an anonymous sender used to make the server hold 2 MB per request, and with
/// webhooks off too. A body that cannot be read is a bad request, not a large one.
#[tokio::test]
async fn webhook_bodies_are_read_only_when_taken_and_bounded() {
    let head = |len: usize| {
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n")
    };
    let s = Server::start().await;
    let addr = s.addr;
    // most of the body withheld: answered at once all the same
    let code = tokio::task::spawn_blocking(move || status_after(addr, &head(1_000_000), b"{}"))
        .await
        .unwrap();
    assert_eq!(code, 404, "not configured, not read");
    s.stop().await;

    let s = Server::start_with(|c| c.stripe_webhook_secret = Some("whsec_test".into())).await;
    let addr = s.addr;
    let codes = tokio::task::spawn_blocking(move || {
        [200 * 1024, 300 * 1024].map(|len| status_after(addr, &head(len), &vec![b' '; len]))
    })
    .await
    .unwrap();
    assert_eq!(
        codes,
        [400, 413],
        "read and refused for its signature; too large"
    );
    // a chunked body whose chunk size is not hexadecimal: malformed, not too large
    let chunked = "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let code =
        tokio::task::spawn_blocking(move || status_after(addr, chunked, b"zz\r\n{}\r\n0\r\n\r\n"))
            .await
            .unwrap();
    assert_eq!(code, 400, "malformed");
    s.stop().await;
}

/// The byte rate of the paced servers below (no burst).
const PACED_RATE: u32 = 400_000;

/// A server whose replies are paced at `rate` bytes a second from the first byte, and
/// a client.
async fn paced(rate: u32) -> (Server, Client) {
    let s = Server::start_with(|c| {
        c.limits.reply_rate = rate;
        c.limits.reply_burst = 0;
    })
    .await;
    let c = s.client().await;
    (s, c)
}

/// Large replies draw on their connection's byte budget: past it, the next request
/// is read only once the replies are paid for at the rate, and none is refused. (A
/// reply used to cost one request token whatever its size, so a connection within
/// its request rate could keep a sixth of a core busy encoding searches.)
#[tokio::test]
async fn large_replies_are_paced() {
    let (s, mut c) = paced(PACED_RATE).await;
    let started = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..6 {
        let r = c.call("flights.search", json!({"limit": 500})).await;
        assert!(
            r["result"]["flights"].as_array().unwrap().len() > 100,
            "{r}"
        );
        bytes.push(r.to_string().len());
    }
    let took = started.elapsed();
    // each reply but the last was paid for before the next request was read
    let at_least = |bytes: &[usize]| {
        let paid: usize = bytes.iter().sum();
        Duration::from_secs_f64(paid as f64 / f64::from(PACED_RATE)).mul_f64(0.95)
    };
    assert!(took >= at_least(&bytes[..5]), "{took:?} for {bytes:?}");
    // a seat map, the reply its use case sends, is paid for as well
    let flights = c.ok("flights.search", json!({"limit": 1})).await;
    let flight = flights["flights"][0]["flight_id"].clone();
    let started = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..4 {
        let r = c
            .call("seats.subscribe", json!({"flight_id": flight}))
            .await;
        assert!(r["result"]["seats"].as_array().unwrap().len() > 50);
        bytes.push(r.to_string().len());
        c.ok("seats.unsubscribe", json!({"flight_id": flight}))
            .await;
    }
    let took = started.elapsed();
    assert!(took >= at_least(&bytes), "{took:?} for {bytes:?}");
    let page = metrics_page(s.addr).await;
    assert!(metric(&page, "jetway_replies_paced_total").unwrap() >= 5.0);
    assert_eq!(
        metric(&page, "jetway_rejected_total{reason=\"rate_limited\"}"),
        Some(0.0)
    );
    s.stop().await;
}

/// A notification's result is paid for as if it were sent: encoding it costs the
/// same, and a connection sending searches without ids used to draw nothing on its
/// reply budget (one address's connections could keep several cores busy).
#[tokio::test]
async fn notifications_are_paced_as_their_results() {
    let (s, mut c) = paced(PACED_RATE).await;
    let search = json!({"limit": 200});
    let size = c
        .call("flights.search", search.clone())
        .await
        .to_string()
        .len();
    let started = Instant::now();
    let notification = json!({"jsonrpc": "2.0", "method": "flights.search", "params": search});
    for _ in 0..5 {
        c.send_text(&notification.to_string()).await;
    }
    c.ok("flights.airports", json!({})).await;
    let took = started.elapsed();
    let paid = Duration::from_secs_f64((5 * size) as f64 / f64::from(PACED_RATE)).mul_f64(0.9);
    assert!(took >= paid, "{took:?} for 5 results of {size} bytes");
    s.stop().await;
}

/// A connection waiting for its replies to be paid for before it reads again has no
/// request in flight: a shutdown closes it at once. (The wait used to be the
/// request's: the connection could not close before it ended, and the server's stop
/// gave up on it after 10 s.)
#[tokio::test]
async fn a_paced_connection_closes_at_once_on_shutdown() {
    let s = Server::start_with(|c| {
        c.limits.reply_rate = 1_000;
        c.limits.reply_burst = 0;
    })
    .await;
    let mut c = s.client().await;
    let r = c.call("flights.search", json!({"limit": 500})).await;
    let bytes = r.to_string().len();
    // paid for in a minute or more at 1,000 bytes a second
    assert!(bytes > 60_000, "{bytes}");
    let stopping = tokio::spawn(s.stop());
    let close = loop {
        let m = tokio::time::timeout(Duration::from_secs(8), c.ws.next())
            .await
            .expect("closed before the pace ends");
        match m {
            Some(Ok(Message::Close(f))) => break f.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "server shutting down");
    tokio::time::timeout(Duration::from_secs(8), stopping)
        .await
        .expect("the server stops before the pace ends")
        .unwrap();
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let s = Server::start_with(|c| c.limits.max_subscriptions = 3).await;
    let mut c = s.client().await;
    let flights = c.ok("flights.search", json!({"limit": 10})).await["flights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["flight_id"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    for f in &flights[..3] {
        c.ok("seats.subscribe", json!({"flight_id": f})).await;
    }
    assert_eq!(
        c.reason("seats.subscribe", json!({"flight_id": flights[3]}))
            .await,
        "invalid_state"
    );
    // an unknown flight is not_found, full or not
    assert_eq!(
        c.reason("seats.subscribe", json!({"flight_id": "JW999-20991231"}))
            .await,
        "not_found"
    );
    // re-subscribing to a watched flight is fine; unsubscribing frees a place
    c.ok("seats.subscribe", json!({"flight_id": flights[0]}))
        .await;
    c.ok("seats.unsubscribe", json!({"flight_id": flights[0]}))
        .await;
    c.ok("seats.subscribe", json!({"flight_id": flights[3]}))
        .await;
    // the limit is per connection
    let mut d = s.client().await;
    d.ok("seats.subscribe", json!({"flight_id": flights[0]}))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn open_holds_per_user_are_limited() {
    let s = Server::start_with(|c| c.limits.max_open_holds = 2).await;
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut c, fid, "economy", 4).await;
    let first = hold(&mut c, fid, &seats[0..1], "h1").await;
    hold(&mut c, fid, &seats[1..2], "h2").await;
    let third = json!({"flight_id": fid, "seats": [seats[2]], "passengers": passengers(1), "request_id": "h3"});
    let e = c.err("booking.hold", third.clone()).await;
    assert_eq!(e["data"]["reason"], "invalid_state", "{e}");
    assert!(e["message"].as_str().unwrap().contains("open holds"), "{e}");
    // the refused hold changed nothing
    let m = c.ok("flights.get", json!({"flight_id": fid})).await;
    assert_eq!(m["version"], 2);
    // a retry of an answered hold still gets its first reply
    let again = c
        .ok(
            "booking.hold",
            json!({"flight_id": fid, "seats": [seats[0]], "passengers": passengers(1), "request_id": "h1"}),
        )
        .await;
    assert_eq!(again["booking"], first);
    // another user is not affected
    let mut d = s.client().await;
    d.new_user().await;
    hold(&mut d, fid, &seats[3..4], "d1").await;
    // releasing a hold makes room
    c.ok(
        "booking.cancel",
        json!({"locator": first["locator"], "request_id": "c1"}),
    )
    .await;
    c.ok("booking.hold", third).await;
    s.stop().await;
}

/// The open holds are counted from state kept as bookings are written: rebuilt from
/// the data dir at start, and a hold that expired no longer counts.
#[tokio::test]
async fn open_holds_are_counted_after_a_restart_and_freed_by_expiry() {
    let mut s = Server::start_with(|c| c.limits.max_open_holds = 1).await;
    let mut c = s.client().await;
    let token = c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut c, &fid, "economy", 3).await;
    let first = hold(&mut c, &fid, &seats[0..1], "h1").await;
    s.restart_with(|c| {
        c.limits.max_open_holds = 1;
        c.hold_ttl = 1;
    })
    .await;
    let mut c = s.client().await;
    c.ok("auth.resume", json!({"token": token})).await;
    let hold_one = |rid: &str, seat: &String| json!({"flight_id": fid, "seats": [seat], "passengers": passengers(1), "request_id": rid});
    let e = c.err("booking.hold", hold_one("h2", &seats[1])).await;
    assert!(e["message"].as_str().unwrap().contains("open holds"), "{e}");
    c.ok(
        "booking.cancel",
        json!({"locator": first["locator"], "request_id": "c1"}),
    )
    .await;
    // a hold of 1 s: once it expired, the user may hold again
    let short = hold(&mut c, &fid, &seats[1..2], "h3").await;
    let deadline = Instant::now() + WAIT;
    while c
        .ok("booking.get", json!({"locator": short["locator"]}))
        .await["booking"]["status"]
        != "expired"
    {
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.ok("booking.hold", hold_one("h4", &seats[2])).await;
    s.stop().await;
}

/// Sends `n` wrong passwords for `name`, each answered `bad_credentials`; returns
/// the params.
async fn fail_logins(c: &mut Client, name: &str, n: usize) -> Value {
    let wrong = json!({"username": name, "password": "not the password"});
    for _ in 0..n {
        assert_eq!(
            c.reason("auth.login", wrong.clone()).await,
            "bad_credentials"
        );
    }
    wrong
}

/// A server whose logins back off after `free` failures, for up to a minute.
async fn backing_off(free: u32) -> Server {
    Server::start_with(|c| {
        c.limits.login_free_attempts = free;
        c.limits.login_backoff_max = 60;
    })
    .await
}

#[tokio::test]
async fn login_brute_force_backs_off_per_username() {
    let s = Server::start_with(|c| {
        c.limits.login_free_attempts = 2;
        c.limits.login_backoff_max = 2;
    })
    .await;
    let mut c = s.client().await;
    let name = unique_name("brute");
    c.register(&name).await;
    let mut attacker = s.client().await;
    // the two free failures; the third attempt has to wait
    let wrong = fail_logins(&mut attacker, &name, 2).await;
    // now even the right password waits (the password is not even checked)
    let right = json!({"username": name.to_uppercase(), "password": PASSWORD});
    let e = attacker.err("auth.login", right.clone()).await;
    assert_eq!(e["data"]["reason"], "rate_limited", "{e}");
    // loopback is exempt from the per-address backoff: other users log in
    let other = unique_name("other");
    let mut o = s.client().await;
    o.register(&other).await;
    o.ok(
        "auth.login",
        json!({"username": other, "password": PASSWORD}),
    )
    .await;
    // after the wait the right password works, and clears the failures
    let addr = s.url();
    let r = eventually("the backoff to pass", || {
        let right = right.clone();
        let addr = addr.clone();
        async move {
            let mut c = Client::connect(&addr).await;
            let r = c.call("auth.login", right).await;
            match r["error"]["data"]["reason"].as_str() {
                Some("rate_limited") => None,
                _ => Some(r),
            }
        }
    })
    .await;
    assert!(r["result"]["token"].is_string(), "{r}");
    assert_eq!(
        attacker.reason("auth.login", wrong.clone()).await,
        "bad_credentials",
        "failures were cleared by the success"
    );
    s.stop().await;
}

/// A device that logged in to an account before (its `device_token`) is not held up
/// by wrong passwords for the username sent from elsewhere, while a login without one
/// is: an attacker who knows the username cannot lock its owner out. The token
/// vouches for that account only, and the device's own wrong passwords back it off.
#[tokio::test]
async fn a_known_device_logs_in_while_its_username_backs_off() {
    let s = backing_off(2).await;
    let (name, other) = (unique_name("device"), unique_name("devother"));
    let mut owner = s.client().await;
    let registered = owner.register(&name).await;
    let right = json!({"username": name, "password": PASSWORD});
    let first = owner.ok("auth.login", right.clone()).await;
    let device = first["device_token"].as_str().expect("a device token");
    assert!(registered["device_token"].is_string(), "{registered}");
    assert_ne!(registered["device_token"], first["device_token"]);
    let with = |token: &str, password: &str| json!({"username": name, "password": password, "device_token": token});
    let mut attacker = s.client().await;
    fail_logins(&mut attacker, &name, 2).await;
    assert_eq!(
        attacker.reason("auth.login", right.clone()).await,
        "rate_limited"
    );
    // the owner's device logs in, and keeps its token
    let again = owner.ok("auth.login", with(device, PASSWORD)).await;
    assert_eq!(again["device_token"], device, "{again}");
    assert_eq!(
        attacker.reason("auth.login", right.clone()).await,
        "rate_limited",
        "the device's success does not clear the username's failures"
    );
    // another account's token, or one altered, vouches for nothing
    let theirs = s.client().await.register(&other).await;
    let theirs = theirs["device_token"].as_str().expect("a device token");
    let mut altered = device.to_owned();
    let last = if altered.ends_with('0') { "1" } else { "0" };
    altered.replace_range(altered.len() - 1.., last);
    for token in [theirs, altered.as_str(), "d1.", "junk"] {
        let e = attacker.reason("auth.login", with(token, PASSWORD)).await;
        assert_eq!(e, "rate_limited", "{token}");
    }
    // the device's own wrong passwords back it off
    for _ in 0..2 {
        let e = owner
            .reason("auth.login", with(device, "not the password"))
            .await;
        assert_eq!(e, "bad_credentials");
    }
    assert_eq!(
        owner.reason("auth.login", with(device, PASSWORD)).await,
        "rate_limited"
    );
    s.stop().await;
}

/// Wrong passwords sent side by side on many connections get no more checks than
/// the free attempts: the rest are `rate_limited` (each used to pass the backoff's
/// check before any had failed). The right password sent side by side on many
/// connections logs every one of them in.
#[tokio::test]
async fn guesses_sent_side_by_side_get_only_the_free_attempts() {
    let s = backing_off(2).await;
    let (victim, shared) = (unique_name("wave"), unique_name("shared"));
    s.client().await.register(&victim).await;
    s.client().await.register(&shared).await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(s.client().await);
    }
    let wrong = json!({"username": victim, "password": "not the password"});
    let answers = futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.reason("auth.login", wrong.clone())),
    )
    .await;
    let checked = answers.iter().filter(|r| *r == "bad_credentials").count();
    assert!(
        checked == 2
            && answers
                .iter()
                .all(|r| r == "bad_credentials" || r == "rate_limited"),
        "{answers:?}"
    );
    all_log_in(&mut clients, &shared).await;
    s.stop().await;
}

/// Sends the right password for `username` side by side on every client: each is
/// logged in.
async fn all_log_in(clients: &mut [Client], username: &str) {
    let right = json!({"username": username, "password": PASSWORD});
    let logins = futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.call("auth.login", right.clone())),
    )
    .await;
    assert!(
        logins.iter().all(|r| r["result"]["token"].is_string()),
        "{logins:?}"
    );
}

/// Logins from one address take turns too: a spray of many usernames sent side by
/// side from one address gets only the address's free password checks (each costs an
/// Argon2 hash on the queue every login waits in), the rest `rate_limited`.
#[tokio::test]
async fn a_spray_of_usernames_side_by_side_gets_only_the_free_attempts() {
    let s = Server::start_with(|c| {
        c.limits.login_free_attempts = 3;
        c.limits.login_backoff_max = 60;
        c.limits.limit_loopback = true;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(s.client().await);
    }
    // the right password sent side by side from the address logs every one in
    let shared = unique_name("office");
    s.client().await.register(&shared).await;
    all_log_in(&mut clients, &shared).await;
    let answers = futures::future::join_all(clients.iter_mut().map(|c| {
        let guess = json!({"username": unique_name("spray"), "password": "not the password"});
        async move { c.reason("auth.login", guess).await }
    }))
    .await;
    let checked = answers.iter().filter(|r| *r == "bad_credentials").count();
    assert!(
        checked == 3
            && answers
                .iter()
                .all(|r| r == "bad_credentials" || r == "rate_limited"),
        "{answers:?}"
    );
    s.stop().await;
}

/// One address registers at most `--registrations-per-hour` accounts (each costs a
/// password hash on the queue every login waits in); another address is not held back,
/// and loopback is exempt unless `--limit-loopback`.
#[tokio::test]
async fn registrations_are_limited_per_address() {
    let s = Server::start_with(|c| {
        c.limits.registrations_per_hour = 2;
        c.limits.limit_loopback = true;
    })
    .await;
    let mut c = s.client().await;
    let taken = unique_name("taken");
    c.register(&taken).await;
    // a taken name costs a registration too, or a spent address could still tell
    // taken names (username_taken) from free ones (rate_limited)
    let again = json!({"username": taken, "password": PASSWORD});
    assert_eq!(
        c.reason("auth.register", again.clone()).await,
        "username_taken"
    );
    let third = json!({"username": unique_name("third"), "password": PASSWORD});
    assert_eq!(
        c.reason("auth.register", third.clone()).await,
        "rate_limited"
    );
    assert_eq!(c.reason("auth.register", again).await, "rate_limited");
    // a malformed name or a weak password costs nothing and is answered as such
    let bad = json!({"username": "x", "password": PASSWORD});
    assert_eq!(c.reason("auth.register", bad).await, "invalid_params");
    let weak = json!({"username": unique_name("weak"), "password": "short"});
    assert_eq!(c.reason("auth.register", weak).await, "weak_password");
    let page = metrics_page(s.addr).await;
    assert_eq!(
        metric(&page, "jetway_rejected_total{reason=\"register_limit\"}"),
        Some(2.0)
    );
    s.stop().await;

    let s = Server::start_with(|c| c.limits.registrations_per_hour = 2).await;
    let mut c = s.client().await;
    for _ in 0..3 {
        c.new_user().await;
    }
    s.stop().await;
}

#[tokio::test]
async fn login_brute_force_backs_off_per_address() {
    let s = Server::start_with(|c| {
        c.limits.login_free_attempts = 3;
        c.limits.limit_loopback = true;
    })
    .await;
    let mut c = s.client().await;
    let name = unique_name("known");
    let device = c.register(&name).await["device_token"].clone();
    for i in 0..3 {
        // a different (unknown) username every time: password spraying
        assert_eq!(
            c.reason(
                "auth.login",
                json!({"username": format!("{}{i}", unique_name("spray")), "password": PASSWORD})
            )
            .await,
            "bad_credentials"
        );
    }
    let mut d = s.client().await;
    assert_eq!(
        d.reason(
            "auth.login",
            json!({"username": "someone-else", "password": PASSWORD})
        )
        .await,
        "rate_limited",
        "the address is backing off"
    );
    // a known device's login waits for its address too
    let known = json!({"username": name, "password": PASSWORD, "device_token": device});
    assert_eq!(d.reason("auth.login", known).await, "rate_limited");
    // registering (a fresh account) is not a login attempt
    d.new_user().await;
    s.stop().await;
}

/// An upgrade whose `Sec-WebSocket-Key` is not the base64 of 16 bytes is refused
/// with 400 (RFC 6455 4.2.1), as a missing one is.
#[tokio::test]
async fn a_malformed_handshake_key_is_refused() {
    let s = Server::start().await;
    for key in [
        "!!!",
        "",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25jZQ==x",
    ] {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nConnection: close\r\n\r\n",
            s.addr
        );
        let (code, _, body) = http_raw(s.addr, &req).await;
        assert_eq!(code, 400, "key {key:?}: {body}");
    }
    s.client().await.ok("flights.airports", json!({})).await;
    s.stop().await;
}

#[tokio::test]
async fn deep_nesting_and_huge_frames() {
    let s = Server::start().await;
    let mut c = s.client().await;
    // nesting deeper than serde_json's limit (128) inside otherwise valid params
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"flights.search","params":{{"x":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    c.send_text(&deep).await;
    let r = c.recv().await.unwrap();
    assert_eq!(r["error"]["code"], -32700, "{r}");
    // nesting within the limit but in a place no method reads is an invalid-params error
    let shallow = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"flights.search","params":{{"from":{}1{}}}}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    c.send_text(&shallow).await;
    let r = c.recv().await.unwrap();
    assert_eq!(r["error"]["data"]["reason"], "invalid_params", "{r}");
    // over the hard 1 MiB message limit: the connection is closed, the server lives
    let huge = "x".repeat(jetway::server::MAX_MESSAGE + 1);
    let _ = c.ws.send(Message::text(huge)).await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection ends");
    let mut d = s.client().await;
    d.ok("flights.airports", json!({})).await;
    s.stop().await;
}

/// A message over the hard 1 MiB limit ends the connection, but only after what was
/// queued for it and a `too_large` refusal went out (they used to be dropped with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_hard_limit_is_refused_before_the_close() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let asked = json!({"jsonrpc": "2.0", "id": 7, "method": "flights.airports"});
    c.send_text(&asked.to_string()).await;
    let huge = "x".repeat(jetway::server::MAX_MESSAGE + 1);
    let _ = c.ws.send(Message::text(huge)).await;
    let mut replies = Vec::new();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    replies.push(serde_json::from_str::<Value>(t.as_str()).unwrap())
                }
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?} after {replies:?}"),
            }
        }
    })
    .await
    .expect("the connection ends");
    assert_eq!(close, Some(1009));
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["id"], 7, "{replies:?}");
    assert!(replies[0]["result"].is_object(), "{replies:?}");
    assert_eq!(replies[1]["id"], Value::Null);
    assert_eq!(replies[1]["error"]["data"]["reason"], "too_large");
    s.stop().await;
}

/// The methods of `access`, from the one list.
fn methods_for(access: &[Access]) -> Vec<&'static str> {
    Method::ALL
        .iter()
        .filter(|m| access.contains(&m.access()))
        .map(|m| m.name())
        .collect()
}

/// Every method that needs login (admin methods included).
fn auth_methods() -> Vec<&'static str> {
    methods_for(&[Access::LoggedIn, Access::Admin])
}

/// Params that would be valid for each method, given a locator and a flight.
fn params_for(method: &str, locator: &str, flight: &str, seat: &str) -> Value {
    match method {
        "booking.hold" => {
            json!({"flight_id": flight, "seats": [seat], "passengers": passengers(1), "request_id": "m1"})
        }
        "booking.pay" => {
            json!({"locator": locator, "payment_method": "pm_card_visa", "request_id": "m2"})
        }
        "booking.cancel" => json!({"locator": locator, "request_id": "m3"}),
        "booking.change_seat" => {
            json!({"locator": locator, "from": seat, "to": "1A", "request_id": "m4"})
        }
        "booking.get" => json!({"locator": locator}),
        "admin.flights.create" => json!({
            "number": "JW999", "from": "LHR", "to": "CDG",
            "departs_at": "2099-01-01T10:00:00Z", "arrives_at": "2099-01-01T11:00:00Z",
            "aircraft": "A320",
            "fares": {"economy": {"amount": 100, "currency": "EUR"}, "business": {"amount": 300, "currency": "EUR"}}
        }),
        "admin.flights.cancel" => json!({"flight_id": flight, "reason": "test"}),
        _ => json!({}),
    }
}

#[tokio::test]
async fn authorization_matrix() {
    // a generous rate limit: this test sends hundreds of requests on one connection
    let s = Server::start_with(|c| c.limits.rate_limit = 100_000).await;
    let mut owner = s.client().await;
    owner.new_user().await;
    let f = later_flight(&mut owner).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut owner, &fid, "economy", 2).await;
    let bk = hold(&mut owner, &fid, &seats[..1], "own").await;
    let loc = bk["locator"].as_str().unwrap().to_owned();

    // 1. anonymous: every method that needs login refuses, with valid params too;
    // admin methods are forbidden to everyone but an admin (the contract)
    let mut anon = s.client().await;
    for m in auth_methods() {
        let want = if m.starts_with("admin.") {
            "forbidden"
        } else {
            "unauthenticated"
        };
        for p in [json!({}), params_for(m, &loc, &fid, &seats[0])] {
            assert_eq!(anon.reason(m, p).await, want, "{m}");
        }
    }
    // card data in place of a payment method: the login is checked first
    let card = json!({"locator": loc, "payment_method": "4242 4242 4242 4242", "request_id": "c"});
    assert_eq!(
        anon.reason("booking.pay", card.clone()).await,
        "unauthenticated"
    );
    assert_eq!(owner.reason("booking.pay", card).await, "invalid_params");

    // 2. another passenger: someone else's or guessed locators are always not_found,
    // admin methods are forbidden
    let mut other = s.client().await;
    other.new_user().await;
    let mut guesses: Vec<String> = vec![
        loc.clone(),
        loc.to_lowercase(),
        format!(" {loc}"),
        "AAAAAA".into(),
        "ZZZZZZ".into(),
        "222222".into(),
        "".into(),
        "bad".into(),
        "../../".into(),
        "A".repeat(1000),
    ];
    // enumeration: a sweep of plausible locators finds nothing
    guesses.extend((0..40).map(|i| format!("{}{:02}", &loc[..4], i)));
    for g in &guesses {
        for m in [
            "booking.get",
            "booking.pay",
            "booking.cancel",
            "booking.change_seat",
        ] {
            let r = other.reason(m, params_for(m, g, &fid, &seats[0])).await;
            assert_eq!(r, "not_found", "{m} {g}");
        }
    }
    for m in methods_for(&[Access::Admin]) {
        assert_eq!(
            other.reason(m, params_for(m, &loc, &fid, &seats[0])).await,
            "forbidden",
            "{m}"
        );
    }
    assert!(other.ok("bookings.list", json!({})).await["bookings"]
        .as_array()
        .unwrap()
        .is_empty());
    let history = other.ok("history.list", json!({})).await;
    assert!(!history.to_string().contains(&loc));
    // the owner's booking is untouched
    let got = owner.ok("booking.get", json!({"locator": loc})).await;
    assert_eq!(got["booking"]["status"], "held");
    assert_eq!(
        owner.ok("flights.get", json!({"flight_id": fid})).await["version"],
        1
    );

    // 3. a logged-out token works nowhere: not on its connection, not on another
    // connection that resumed it, not resumed again
    let mut a = s.client().await;
    let token = a.new_user().await;
    let mut b = s.client().await;
    b.ok("auth.resume", json!({"token": token})).await;
    a.ok("auth.logout", json!({})).await;
    for m in auth_methods() {
        let r = b.reason(m, params_for(m, &loc, &fid, &seats[1])).await;
        let refused = if m.starts_with("admin.") {
            r == "forbidden"
        } else {
            r == "invalid_token" || r == "unauthenticated"
        };
        assert!(refused, "{m}: {r} (the first refusal detaches the session)");
    }
    assert_eq!(
        a.reason("bookings.list", json!({})).await,
        "unauthenticated"
    );
    let mut c = s.client().await;
    assert_eq!(
        c.reason("auth.resume", json!({"token": token})).await,
        "invalid_token"
    );
    s.stop().await;
}

/// An account holds at most `--max-sessions-per-user` sessions: a login past it ends
/// the oldest (its connection is logged out at its next request, and its token
/// resumes nowhere) and the newest keep working; the store keeps no more than the
/// cap, and a logout takes the session out of the user's index too.
#[tokio::test]
async fn a_login_past_the_session_cap_ends_the_oldest_session() {
    let s = Server::start_with(|c| c.max_sessions_per_user = 3).await;
    let name = unique_name("cap");
    let mut first = s.client().await;
    let reg = first.register(&name).await;
    let user = jetway::domain::UserId(reg["user"]["id"].as_u64().unwrap());
    let mut tokens = vec![reg["token"].as_str().unwrap().to_owned()];
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = s.client().await;
        let login = json!({"username": name, "password": PASSWORD});
        tokens.push(
            c.ok("auth.login", login).await["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        clients.push(c);
    }
    let store = &s.app().store;
    let (held, oldest) = store.oldest_sessions(user, 16).unwrap();
    assert_eq!(held, 3, "{oldest:?}");
    assert_eq!(
        first.reason("bookings.list", json!({})).await,
        "invalid_token",
        "the oldest session's connection is logged out"
    );
    assert_eq!(
        clients[0].reason("bookings.list", json!({})).await,
        "invalid_token"
    );
    for (i, token) in tokens.iter().enumerate() {
        let mut c = s.client().await;
        let resumed = c.call("auth.resume", json!({"token": token})).await;
        assert_eq!(
            resumed.get("result").is_some(),
            i >= 2,
            "session {i}: {resumed}"
        );
    }
    clients[3].ok("auth.logout", json!({})).await;
    assert_eq!(store.oldest_sessions(user, 0).unwrap().0, 2);
    let all = store.sessions().unwrap();
    assert_eq!(all.iter().filter(|r| r.user_id == user).count(), 2);
    s.stop().await;
}

/// Logins of one account at once (two or three), at the session cap, each count the
/// sessions before the others' are written: the account still ends up with exactly
/// the cap (it kept one more before, until its next login), the newest sessions are
/// the ones kept, and a session ended is refused at once (not kept alive by the
/// session cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_at_once_at_the_session_cap_leave_no_more_than_the_cap() {
    use common::faulty::{close, faulty_app, login, register};
    use jetway::store::Store;
    for (cap, at_once) in [(1, 2), (2, 2), (1, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let (app, store) = faulty_app(dir.path(), |c| c.max_sessions_per_user = cap).await;
        let name = unique_name("caprace");
        let user = register(&app, &name).await.unwrap().user_id;
        for _ in 1..cap {
            login(&app, &name, PASSWORD).await;
        }
        assert_eq!(store.oldest_sessions(user, 16).unwrap().0, cap as usize);
        store.meet_in_oldest_sessions(at_once);
        let logins = (0..at_once).map(|_| login(&app, &name, PASSWORD));
        let new = futures::future::join_all(logins).await;
        let (held, _) = store.oldest_sessions(user, 16).unwrap();
        assert_eq!(held, cap as usize, "cap {cap}, {at_once} at once");
        let mut live = 0;
        for s in &new {
            let stored = store.session(&s.token_hash).unwrap().is_some();
            let answered = app.authenticate(&mut Some(Box::new(s.clone()))).await;
            assert_eq!(answered.is_ok(), stored, "cap {cap}: {answered:?}");
            live += usize::from(stored);
        }
        // the new sessions are newer than every other: they are the ones kept
        assert_eq!(
            live,
            (cap as usize).min(at_once),
            "cap {cap}, {at_once} at once"
        );
        close(app, store).await;
    }
}

/// An account's history keeps its newest `--max-account-events` logins and logouts,
/// and as many failed logins apart: each new one deletes the oldest of its kind, so
/// a login loop cannot grow it without bound, and failed logins (which anyone who
/// knows the username can cause) never push the account's logins out; the account's
/// other events stay.
#[tokio::test]
async fn an_accounts_history_keeps_its_newest_account_events() {
    let s = Server::start_with(|c| c.max_account_events = 3).await;
    let name = unique_name("hist");
    let mut first = s.client().await;
    first.register(&name).await;
    let login = json!({"username": name, "password": PASSWORD});
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = s.client().await;
        c.ok("auth.login", login.clone()).await;
        clients.push(c);
    }
    let wrong = json!({"username": name, "password": "not the password"});
    for _ in 0..4 {
        let failed = first.reason("auth.login", wrong.clone()).await;
        assert_eq!(failed, "bad_credentials");
    }
    clients[4].ok("auth.logout", json!({})).await;
    let kinds = history_types(&mut clients[0]).await;
    let failed = ["login_failed"; 3];
    let expected = [&["logout"][..], &failed, &["login", "login", "registered"]].concat();
    assert_eq!(kinds, expected);
    s.stop().await;
}

#[tokio::test]
async fn an_expired_token_works_nowhere() {
    let s = Server::start_with(|c| c.session_ttl = 1).await;
    let mut e = s.client().await;
    let reg = e.register(&unique_name("exp")).await;
    let token = reg["token"].as_str().unwrap().to_owned();
    let expires = time::OffsetDateTime::parse(
        reg["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    while time::OffsetDateTime::now_utc() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        e.reason("bookings.list", json!({})).await,
        "invalid_token",
        "an expired session stops working on its connection"
    );
    let mut f2 = s.client().await;
    assert_eq!(
        f2.reason("auth.resume", json!({"token": token})).await,
        "invalid_token"
    );
    for m in methods_for(&[Access::LoggedIn]) {
        assert_eq!(f2.reason(m, json!({})).await, "unauthenticated", "{m}");
    }
    for m in methods_for(&[Access::Admin]) {
        assert_eq!(f2.reason(m, json!({})).await, "forbidden", "{m}");
    }
    s.stop().await;
}

#[tokio::test]
async fn admin_methods_work_only_for_admins() {
    let admin_password = "admin password 42";
    let s = Server::start_with(|c| c.admin_password = Some(admin_password.into())).await;
    let mut adm = s.client().await;
    adm.ok(
        "auth.login",
        json!({"username": "admin", "password": admin_password}),
    )
    .await;
    adm.ok("admin.flights.stats", json!({})).await;
    let mut p = s.client().await;
    p.new_user().await;
    assert_eq!(
        p.reason("admin.flights.stats", json!({})).await,
        "forbidden"
    );
    s.stop().await;
}

/// A page of a hostile name pointed at 127.0.0.1 (DNS rebinding) sends its own
/// name as both `Origin` and `Host`: over loopback the server refuses it unless the
/// name is a loopback one, or a trusted proxy forwarded the request (its
/// `X-Forwarded-For`, which a page cannot set, says so; the proxy's `server_name`
/// pins the host). A server listening on every address is reached over loopback
/// too.
#[tokio::test]
async fn a_rebound_page_cannot_open_a_websocket_on_a_loopback_server() {
    let as_host = |addr: std::net::SocketAddr, name: &str, forwarded: bool| {
        let host = format!("{name}:{}", addr.port());
        let url = format!("ws://127.0.0.1:{}/ws", addr.port());
        let mut req = url.into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("host", host.parse().unwrap());
        h.insert("origin", format!("http://{host}").parse().unwrap());
        if forwarded {
            h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let refused = |opened: Result<_, tokio_tungstenite::tungstenite::Error>, why: &str| match opened
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403, "{why}")
        }
        Err(e) => panic!("{why}: must be refused with 403: {e}"),
        Ok(_) => panic!("{why}: must be refused"),
    };
    let s = Server::start().await;
    refused(
        as_host(s.addr, "evil.example", false).await,
        "a rebound name",
    );
    for name in ["localhost", "127.0.0.1", "app.localhost"] {
        let opened = as_host(s.addr, name, false).await;
        assert!(opened.is_ok(), "{name}: {:?}", opened.map(|_| ()));
    }
    s.stop().await;
    let everywhere = Server::start_with(|c| c.listen = "0.0.0.0:0".parse().unwrap()).await;
    refused(
        as_host(everywhere.addr, "evil.example", false).await,
        "over loopback to a server listening on every address",
    );
    everywhere.stop().await;
    let proxied =
        Server::start_with(|c| c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
            .await;
    let opened = as_host(proxied.addr, "tickets.example.com", true).await;
    assert!(
        opened.is_ok(),
        "forwarded by a trusted proxy: {:?}",
        opened.map(|_| ())
    );
    refused(
        as_host(proxied.addr, "evil.example", false).await,
        "straight from a trusted proxy's address, not forwarded by it",
    );
    proxied.stop().await;
}

#[tokio::test]
async fn origin_allowlist_and_security_headers() {
    let s =
        Server::start_with(|c| c.limits.allowed_origins = vec!["https://app.example".into()]).await;
    let connect = |origin: Option<&'static str>| {
        let url = s.url();
        async move {
            let mut req = url.into_client_request().unwrap();
            if let Some(o) = origin {
                req.headers_mut().insert("origin", o.parse().unwrap());
            }
            tokio_tungstenite::connect_async(req).await
        }
    };
    assert!(connect(None).await.is_ok(), "no Origin (wscat) is allowed");
    let same: &'static str = Box::leak(format!("http://{}", s.addr).into_boxed_str());
    assert!(connect(Some(same)).await.is_ok(), "same origin");
    assert!(
        connect(Some("https://app.example")).await.is_ok(),
        "allowlisted"
    );
    for bad in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
    ] {
        match connect(Some(bad)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{bad}")
            }
            other => panic!("{bad} must be refused with 403: {:?}", other.map(|_| ())),
        }
    }
    // security headers on the app and on the API endpoints
    for path in ["/", "/healthz", "/nope.html"] {
        let (code, h, _) = http_raw(
            s.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(code == 200 || code == 404, "{path}: {code}");
        let get = |k: &str| {
            h.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{path}: no {k} header"))
        };
        assert_eq!(get("x-content-type-options"), "nosniff");
        assert_eq!(get("x-frame-options"), "DENY");
        let csp = get("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-eval"), "{csp}");
    }
    s.stop().await;
}

/// A real scrape after some traffic passes `promtool check metrics`; with
/// `--metrics-listen` it is served there and not on the main listener.
#[tokio::test]
async fn metrics_health_and_readiness() {
    let s = Server::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    assert_eq!(http_get(s.addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(s.addr, "/readyz").await.unwrap().0, 200);
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    c.ok("seats.subscribe", json!({"flight_id": fid})).await;
    let seats = free_seats(&mut c, fid, "economy", 1).await;
    hold(&mut c, fid, &seats, "m").await;
    c.push("seats.changed").await;
    assert_eq!(
        c.reason("booking.get", json!({"locator": "ZZZZZZ"})).await,
        "not_found"
    );
    c.send_text(r#"{"jsonrpc":"2.0","id":5,"method":"no.such"}"#)
        .await;
    c.recv().await;

    let (code, _) = http_get(s.addr, "/metrics").await.unwrap();
    assert_eq!(
        code, 404,
        "with --metrics-listen, /metrics is not on the main listener"
    );
    let (code, page) = http_get(s.metrics_addr().unwrap(), "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    if let Err(complaints) = promtool_check(&page) {
        panic!("promtool check metrics:\n{complaints}\non\n{page}");
    }
    let get = |name: &str| metric(&page, name).unwrap_or_else(|| panic!("no {name} in\n{page}"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(&format!("jetway_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert!(get("jetway_process_resident_memory_bytes") > 1e6);
    assert!(get("jetway_process_open_fds") >= 3.0);
    assert!(metric(&page, "jetway_process_cpu_seconds_total").is_some());
    // the contract: "names prefixed `jetway_`", every one of them
    for line in page.lines().filter(|l| !l.is_empty()) {
        let name = match line.strip_prefix("# ") {
            Some(comment) => comment.split_whitespace().nth(1).unwrap_or_default(),
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        assert!(name.starts_with("jetway_"), "{line}");
    }
    assert!(get("jetway_store_commits_total") >= 1.0);
    assert_eq!(get("jetway_rejected_total{reason=\"origin\"}"), 0.0);
    assert!(get("jetway_connections_open") >= 1.0);
    assert!(get("jetway_subscriptions") >= 1.0);
    assert!(get("jetway_requests_total{method=\"booking.hold\",outcome=\"ok\"}") >= 1.0);
    assert!(get("jetway_requests_total{method=\"booking.get\",outcome=\"not_found\"}") >= 1.0);
    assert!(get("jetway_requests_total{method=\"other\",outcome=\"method_not_found\"}") >= 1.0);
    assert!(get("jetway_request_duration_seconds_count{method=\"booking.hold\"}") >= 1.0);
    assert!(
        get("jetway_request_duration_seconds_bucket{method=\"booking.hold\",le=\"+Inf\"}") >= 1.0
    );
    assert!(get("jetway_pushes_total") >= 1.0);
    assert!(metric(&page, "jetway_frames_dropped_total").is_some());
    assert_eq!(get("jetway_bookings{status=\"held\"}"), 1.0);
    assert_eq!(get("jetway_bookings{status=\"confirmed\"}"), 0.0);
    assert!(get("jetway_store_sync_duration_seconds_count") >= 1.0);
    // every sample line is `name{labels} number`, the server's own or the process's
    for l in page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
        assert!(l.starts_with("jetway_") || l.starts_with("process_"), "{l}");
    }
    let seen: HashSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert!(seen.len() > 10);
    s.stop().await;
}
