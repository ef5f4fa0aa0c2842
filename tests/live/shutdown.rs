//! Shutdown and liveness: every connection closed with 1001 after the replies of
//! finished requests, and a client that never answers pings dropped.

use super::*;

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let _machine = MACHINE.read().await;
    let s = Server::start().await;
    let mut idle = s.client().await;
    let mut user = s.client().await;
    user.new_user().await;
    let fid = fid_of(&later_flight(&mut user).await);
    let mut watcher = Watcher::join(&s.url(), &fid).await;
    s.stop().await;
    for ws in [&mut idle.ws, &mut user.ws, &mut watcher.c.ws] {
        assert_eq!(close_code(ws).await, Some(1001));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_replies_of_requests_it_finished_before_closing() {
    let _machine = MACHINE.read().await;
    const CLIENTS: usize = 8;
    let mut s = Server::start().await;
    let mut clients = Vec::new();
    let mut names = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = s.client().await;
        let name = unique_name("bye");
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "auth.register", "params": {"username": name, "password": PASSWORD}});
        c.send_text(&req.to_string()).await;
        clients.push(c);
        names.push(name);
    }
    // a graceful shutdown while the registrations are under way
    s.restart().await;
    let mut check = s.client().await;
    let mut answered = 0;
    for (c, name) in clients.iter_mut().zip(&names) {
        let mut reply = None;
        let code = loop {
            match tokio::time::timeout(PATIENCE, c.ws.next())
                .await
                .expect("the server closed the connection in time")
            {
                Some(Ok(Message::Text(t))) => {
                    reply = Some(serde_json::from_str::<Value>(t.as_str()).expect("JSON"))
                }
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        assert_eq!(code, Some(1001), "{name}: closed as going away");
        let registered = check
            .call(
                "auth.login",
                json!({"username": name, "password": PASSWORD}),
            )
            .await
            .get("result")
            .is_some();
        if registered {
            answered += 1;
            let reply = reply.unwrap_or_else(|| {
                panic!("{name} was registered but the reply never came before the close")
            });
            assert!(reply["result"]["token"].is_string(), "{reply}");
        } else {
            assert!(
                reply.is_none(),
                "{name}: a reply for nothing done: {reply:?}"
            );
        }
    }
    eprintln!("shutdown: {answered} of {CLIENTS} registrations finished and answered");
    s.stop().await;
}

/// The opcodes of the server frames in `bytes` (after the HTTP response), and the
/// close code if a close frame came.
fn frames(bytes: &[u8]) -> (Vec<u8>, Option<u16>) {
    let text = String::from_utf8_lossy(bytes);
    assert!(text.starts_with("HTTP/1.1 101"), "upgraded: {text:.80}");
    let head = text.find("\r\n\r\n").expect("end of the HTTP response") + 4;
    let mut rest = &bytes[head..];
    let (mut ops, mut close) = (Vec::new(), None);
    while rest.len() >= 2 {
        let op = rest[0] & 0x0f;
        assert_eq!(rest[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => (
                u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let Some(payload) = rest.get(at..at + len) else {
            break;
        };
        if op == 0x8 && payload.len() >= 2 {
            close = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        ops.push(op);
        rest = &rest[at + len..];
    }
    (ops, close)
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_dropped_one_that_does_stays() {
    let _machine = MACHINE.read().await;
    let s = Server::start_with(|c| {
        c.ping_interval = 1;
        c.idle_timeout = 3;
    })
    .await;

    // a raw WebSocket: it reads, but never answers a ping
    let mut raw = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    raw.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.addr
        )
        .as_bytes(),
    )
    .await
    .expect("handshake");
    let connected = Instant::now();
    let dead = async {
        let mut bytes = Vec::new();
        tokio::time::timeout(PATIENCE, raw.read_to_end(&mut bytes))
            .await
            .expect("the server dropped the silent client in time")
            .ok();
        (bytes, connected.elapsed())
    };

    // a tungstenite client answers pings while it reads: it outlives the timeout
    let mut alive = s.client().await;
    let lively = async {
        let until = tokio::time::Instant::now() + Duration::from_secs(7);
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(until, alive.ws.next()).await {
                Err(_) => return pings,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Close(f)))) => panic!("a live client was closed: {f:?}"),
                Ok(None | Some(Err(_))) => panic!("a live client lost its connection"),
                Ok(Some(Ok(_))) => {}
            }
        }
    };
    let ((bytes, after), pings) = tokio::join!(dead, lively);
    let (ops, close) = frames(&bytes);
    assert!(ops.contains(&0x9), "the silent client was pinged: {ops:?}");
    assert_eq!(close, Some(1001), "closed as going away: {ops:?}");
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(10),
        "dropped after {after:?}, idle timeout 3 s"
    );
    assert!(pings >= 2, "the live client was pinged too: {pings}");
    alive.ok("flights.airports", json!({})).await;
    eprintln!(
        "liveness: silent client dropped after {after:?}; live client answered {pings} pings"
    );
    s.stop().await;
}
