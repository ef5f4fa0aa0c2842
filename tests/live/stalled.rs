//! A stalled watcher is cut off without hurting the others or the server's memory.

use super::*;

/// A request on a writer connection whose reply must be a success; the reply's
/// text is returned unparsed (the writers' JSON work is kept small so that the
/// server, not the test, is what limits the rate) and pushes are skipped.
async fn lean_call(ws: &mut Ws, id: u64, method: &str, params: Value) -> String {
    let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::text(req.to_string())).await.expect("send");
    let ok = format!(r#"{{"jsonrpc":"2.0","id":{id},"result""#);
    let reply = format!(r#"{{"jsonrpc":"2.0","id":{id},"#);
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a reply in time")
        {
            Some(Ok(Message::Text(t))) if t.starts_with(&ok) => return t.as_str().to_owned(),
            Some(Ok(Message::Text(t))) if t.starts_with(&reply) => {
                panic!("{method} failed: {}", t.as_str())
            }
            Some(Ok(_)) => continue,
            other => panic!("writer connection ended: {other:?}"),
        }
    }
}

/// The string value of `"key":"..."` in a JSON text (no escapes in it).
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let start = text
        .find(&format!(r#""{key}":""#))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + key.len()
        + 4;
    let len = text[start..].find('"').expect("closing quote");
    &text[start..start + len]
}

/// One connection watching several flights, with a map per flight.
struct Feed {
    c: Client,
    maps: BTreeMap<String, Map>,
}

impl Feed {
    async fn join(url: &str, flights: &[String]) -> Feed {
        let mut c = Client::connect(url).await;
        let mut maps = BTreeMap::new();
        for fid in flights {
            let r = c.ok("seats.subscribe", json!({ "flight_id": fid })).await;
            maps.insert(fid.clone(), begin(fid, None, &r).0);
        }
        Feed { c, maps }
    }

    async fn next(&mut self) {
        let p = self.c.push("seats.changed").await;
        let fid = p["flight_id"].as_str().expect("flight_id");
        self.maps
            .get_mut(fid)
            .unwrap_or_else(|| panic!("a push for unwatched flight {fid}"))
            .apply(&p);
    }

    fn reached(&self, targets: &BTreeMap<String, u64>) -> bool {
        targets.iter().all(|(f, v)| self.maps[f].version >= *v)
    }
}

/// A watcher that will never read: a small receive buffer, subscribed to `flights`;
/// returns the connection and the version each subscription started at.
async fn stalled_join(
    addr: std::net::SocketAddr,
    flights: &[String],
) -> (Ws, BTreeMap<String, u64>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("upgrade");
    let mut start = BTreeMap::new();
    for (id, fid) in flights.iter().enumerate() {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "seats.subscribe", "params": {"flight_id": fid}});
        ws.send(Message::text(req.to_string())).await.expect("send");
        let reply = loop {
            match tokio::time::timeout(PATIENCE, ws.next())
                .await
                .expect("a reply")
            {
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str::<Value>(t.as_str()).expect("JSON");
                    // the viewer counts of the flights subscribed before this one
                    if v["method"] == "flight.presence" {
                        continue;
                    }
                    break v;
                }
                Some(Ok(_)) => continue,
                other => panic!("subscribe failed: {other:?}"),
            }
        };
        assert_eq!(
            reply["id"], id,
            "no push before the first subscription's reply: {reply}"
        );
        let (m, began) = begin(fid, None, &reply["result"]);
        assert_eq!(began, Began::Snapshot);
        start.insert(fid.clone(), m.version);
    }
    (ws, start)
}

async fn metrics_of(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await.expect("metrics").1
}

/// A flood of pushes past watchers that never read. Numbers (debug build, 2 cores):
/// the server carries ~500-600 pushes/s through these 4 flights, so 30,000 pushes
/// take about a minute; each stalled connection is cut off after roughly its queue
/// (256 messages) plus what the kernel buffers (~1.5 MB), i.e. a few thousand pushes.
/// `SLOW_CONSUMER_PUSHES=100000` runs the longer version measured in
/// docs/benchmarks.md (the growth bound stays the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_are_cut_off_and_the_others_get_everything() {
    let _machine = MACHINE.write().await;
    let pushes: u64 = std::env::var("SLOW_CONSUMER_PUSHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    const FLIGHTS: usize = 4;
    const WRITERS: usize = 64;
    const STALLED: usize = 16;
    const ACTIVE: usize = 2;
    /// The documented bound: while the pushes flow, the server's resident memory
    /// grows by less than this. Measured: ~70 MB, nearly all of it sled's page
    /// cache filling with what is written (~2.3 KB per hold or cancel); the fan-out
    /// part is at most 256 KiB of queue per stalled connection (4 MiB for 16).
    /// Unbounded queues would have added 16 x ~18,000 pushes x ~260 B past the
    /// cut-off point, ~75 MB more.
    const RSS_GROWTH_BOUND_KIB: u64 = 112 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    // pings and the idle timeout are off: only a full queue may cut a watcher off
    let p = Proc::spawn(
        dir.path(),
        &[
            "--queue-messages",
            "256",
            "--queue-bytes",
            "262144",
            "--idle-timeout",
            "7200",
            "--ping-interval",
            "3600",
        ],
    );
    let url = p.url();
    let mut setup = Client::connect(&url).await;
    let all = setup.ok("flights.search", json!({"limit": 500})).await;
    let now = time::OffsetDateTime::now_utc();
    let flights: Vec<String> = all["flights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["aircraft"] == "B789"
                && time::OffsetDateTime::parse(
                    f["departs_at"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|d| d - now > time::Duration::days(1))
        })
        .map(fid_of)
        .take(FLIGHTS)
        .collect();
    assert_eq!(flights.len(), FLIGHTS, "enough B789 flights");
    let mut seats_of = BTreeMap::new();
    for fid in &flights {
        let got = setup.ok("flights.get", json!({ "flight_id": fid })).await;
        let seats: Vec<String> = got["seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seat"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            seats.len() * FLIGHTS >= 2 * WRITERS,
            "{} seats",
            seats.len()
        );
        seats_of.insert(fid.clone(), seats);
    }
    drop(setup);

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut c = Client::connect(&url).await;
        c.new_user().await;
        writers.push(c.ws);
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_join(p.addr, &flights).await);
    }
    let start = stalled[0].1.clone();
    let (final_tx, final_rx) = watch::channel(None::<BTreeMap<String, u64>>);
    let mut active = Vec::new();
    for _ in 0..ACTIVE {
        let mut w = Feed::join(&url, &flights).await;
        let mut done = final_rx.clone();
        active.push(tokio::spawn(async move {
            loop {
                if let Some(t) = &*done.borrow_and_update() {
                    if w.reached(t) {
                        break;
                    }
                }
                tokio::select! {
                    _ = w.next() => {}
                    r = done.changed() => r.expect("the final versions are announced"),
                }
            }
            w
        }));
    }
    let page = metrics_of(p.addr).await;
    assert_eq!(
        metric(&page, "jetway_subscriptions"),
        Some(((STALLED + ACTIVE) * FLIGHTS) as f64)
    );
    let slow_before = metric(&page, "jetway_slow_consumer_closes_total").unwrap_or(0.0);
    let rss_start = p.rss_kib();

    // memory, sampled all along
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, pid) = (sampling.clone(), p.pid());
        tokio::spawn(async move {
            let mut max = 0;
            while sampling.load(Ordering::SeqCst) {
                max = max.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };

    // the writers: each one holds and releases its own seats, one push each
    let claimed = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut ws) in writers.into_iter().enumerate() {
        let fid = flights[i % FLIGHTS].clone();
        let mine: Vec<String> = seats_of[&fid]
            .iter()
            .skip(i / FLIGHTS)
            .step_by(WRITERS / FLIGHTS)
            .cloned()
            .collect();
        let claimed = claimed.clone();
        tasks.push(tokio::spawn(async move {
            let mut id = 0;
            let mut n = 0usize;
            while claimed.fetch_add(2, Ordering::SeqCst) + 2 <= pushes {
                let seat = &mine[n % mine.len()];
                n += 1;
                id += 1;
                let held = lean_call(
                    &mut ws,
                    id,
                    "booking.hold",
                    json!({"flight_id": fid, "seats": [seat], "passengers": passengers(1), "request_id": format!("h{id}")}),
                )
                .await;
                let loc = field(&held, "locator").to_owned();
                id += 1;
                let done = lean_call(
                    &mut ws,
                    id,
                    "booking.cancel",
                    json!({"locator": loc, "request_id": format!("c{id}")}),
                )
                .await;
                assert_eq!(field(&done, "status"), "cancelled", "{done}");
            }
        }));
    }
    let writing_time = Duration::from_secs(150 * pushes.div_ceil(30_000));
    for t in tasks {
        tokio::time::timeout(writing_time.saturating_sub(began.elapsed()), t)
            .await
            .expect("the writers finished in time")
            .expect("writer");
    }
    let writing = began.elapsed();
    let mut targets = BTreeMap::new();
    let mut check = Client::connect(&url).await;
    for fid in &flights {
        let got = check.ok("flights.get", json!({ "flight_id": fid })).await;
        targets.insert(fid.clone(), got["version"].as_u64().unwrap());
    }
    let total: u64 = flights.iter().map(|f| targets[f] - start[f]).sum();
    assert_eq!(total, pushes, "one version per hold and per cancel");
    final_tx
        .send(Some(targets.clone()))
        .expect("watchers listen");
    let mut caught_up = Vec::new();
    for a in active {
        caught_up.push(
            tokio::time::timeout(PATIENCE, a)
                .await
                .expect("active watchers caught up in time")
                .expect("active watcher"),
        );
    }
    sampling.store(false, Ordering::SeqCst);
    let max_rss = sampler.await.expect("sampler");
    let rate = pushes as f64 / writing.as_secs_f64();
    eprintln!(
        "slow consumer: {pushes} pushes on {FLIGHTS} flights in {writing:.1?} ({rate:.0}/s) by {WRITERS} writers; {ACTIVE} active and {STALLED} stalled watchers; server RSS {rss_start} KiB before, at most {max_rss} KiB (growth bound {RSS_GROWTH_BOUND_KIB} KiB)"
    );

    // the active watchers got every version of every flight, in order (checked as
    // they applied them), and hold the right maps
    for w in &mut caught_up {
        for (fid, m) in &w.maps {
            assert_eq!(m.version, targets[fid]);
            let got = w.c.ok("flights.get", json!({ "flight_id": fid })).await;
            m.assert_matches(&got);
        }
        assert!(
            !w.c.pushes.iter().any(|p| p["method"] == "seats.changed"),
            "nothing beyond the final versions"
        );
    }
    // every stalled watcher, and only those, was closed as a slow consumer and
    // dropped from every flight...
    let page = metrics_of(p.addr).await;
    assert_eq!(
        metric(&page, "jetway_subscriptions"),
        Some((ACTIVE * FLIGHTS) as f64),
        "stalled watchers are unsubscribed"
    );
    assert_eq!(
        metric(&page, "jetway_slow_consumer_closes_total").map(|n| n - slow_before),
        Some(STALLED as f64)
    );
    // ...and their connections end (close or EOF) once they read what was sent,
    // a gap-free prefix of each flight's feed
    let mut cut_after = Vec::new();
    for (ws, begun) in &mut stalled {
        assert_eq!(*begun, start, "no change before the writers started");
        let mut last = start.clone();
        let ended = tokio::time::timeout(PATIENCE, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                            return;
                        };
                        if v["method"] == "flight.presence" {
                            continue;
                        }
                        let fid = v["params"]["flight_id"].as_str().expect("a push");
                        let version = v["params"]["version"].as_u64().expect("a version");
                        let at = last.get_mut(fid).expect("a watched flight");
                        assert_eq!(version, *at + 1, "a stalled watcher's prefix has no gap");
                        *at = version;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stalled connection ended");
        let got: u64 = flights.iter().map(|f| last[f] - start[f]).sum();
        assert!(
            got < pushes,
            "a stalled watcher got all {pushes} pushes: it was never cut off"
        );
        cut_after.push(got);
    }
    eprintln!("slow consumer: stalled watchers were cut off after {cut_after:?} pushes");
    assert!(
        max_rss < rss_start + RSS_GROWTH_BOUND_KIB,
        "server RSS grew from {rss_start} KiB to {max_rss} KiB, more than {RSS_GROWTH_BOUND_KIB} KiB"
    );
    p.terminate();
}
