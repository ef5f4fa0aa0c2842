//! Ordering under concurrent writers: every watcher sees each version once and in
//! order, and `flights.get` is one version while seats change.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_every_watcher_sees_each_version_once_in_order() {
    let _machine = MACHINE.read().await;
    const WATCHERS: usize = 100;
    const WRITERS: usize = 20;
    const CYCLES: usize = 10;
    const SHARED: usize = 4;
    let s = Server::start().await;
    let url = s.url();
    let mut setup = s.client().await;
    setup.new_user().await;
    let fid = fid_of(&later_flight(&mut setup).await);
    let seats = free_seats(&mut setup, &fid, "economy", 1 + SHARED + 2 * WRITERS).await;
    assert_eq!(seats.len(), 1 + SHARED + 2 * WRITERS);
    // one seat stays held throughout: every writer's first hold asks for it too
    let blocker = seats[0].clone();
    hold(&mut setup, &fid, std::slice::from_ref(&blocker), "blocker").await;
    let start = setup.ok("flights.get", json!({ "flight_id": fid })).await["version"]
        .as_u64()
        .unwrap();
    let shared = seats[1..=SHARED].to_vec();
    let own = seats[1 + SHARED..].to_vec();

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut c = s.client().await;
        c.new_user().await;
        writers.push(c);
    }

    // half the watchers join before the writers start, half while they write
    let (final_tx, final_rx) = watch::channel(None::<u64>);
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let spawn_watcher = |early: bool| {
        let (url, fid, mut done, joined) = (
            url.clone(),
            fid.clone(),
            final_rx.clone(),
            joined_tx.clone(),
        );
        tokio::spawn(async move {
            let mut w = Watcher::join(&url, &fid).await;
            assert_eq!(w.began, Began::Snapshot);
            let first = w.map.version;
            if early {
                let _ = joined.send(());
            }
            loop {
                if let Some(t) = *done.borrow_and_update() {
                    if w.map.version >= t {
                        break;
                    }
                }
                tokio::select! {
                    _ = w.next() => {}
                    r = done.changed() => r.expect("the final version is announced"),
                }
            }
            (first, w)
        })
    };
    let mut watchers: Vec<_> = (0..WATCHERS / 2).map(|_| spawn_watcher(true)).collect();
    for _ in 0..WATCHERS / 2 {
        joined_rx.recv().await.expect("an early watcher joined");
    }

    let mut tasks = Vec::new();
    for (i, mut c) in writers.into_iter().enumerate() {
        let fid = fid.clone();
        let mine = [own[2 * i].clone(), own[2 * i + 1].clone()];
        let shared = shared.clone();
        let blocker = blocker.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0usize;
            for k in 0..CYCLES {
                let seat = mine[k % 2].clone();
                let other = if k == 0 {
                    blocker.clone()
                } else {
                    shared[(i + k) % SHARED].clone()
                };
                let r = c
                    .call(
                        "booking.hold",
                        json!({"flight_id": fid, "seats": [seat, other], "passengers": passengers(2), "request_id": format!("pair{k}")}),
                    )
                    .await;
                let booking = match r.get("result") {
                    Some(ok) => {
                        assert!(k > 0, "the blocker's seat is held: {r}");
                        ok["booking"].clone()
                    }
                    None => {
                        assert_eq!(r["error"]["data"]["reason"], "seat_unavailable", "{r}");
                        assert_eq!(r["error"]["data"]["seats"], json!([other]), "{r}");
                        refused += 1;
                        hold(&mut c, &fid, &[seat], &format!("one{k}")).await
                    }
                };
                assert_eq!(booking["status"], "held");
                let done = c
                    .ok(
                        "booking.cancel",
                        json!({"locator": booking["locator"], "request_id": format!("cancel{k}")}),
                    )
                    .await;
                assert_eq!(done["booking"]["status"], "cancelled");
                c.pushes.clear();
            }
            refused
        }));
    }
    watchers.extend((0..WATCHERS / 2).map(|_| spawn_watcher(false)));

    let mut refused = 0;
    for t in tasks {
        refused += t.await.expect("writer");
    }
    assert!(
        refused >= WRITERS,
        "every first hold was refused: {refused}"
    );

    // one version per successful hold and per cancel, nothing for a refused hold
    let expected = start + (WRITERS * CYCLES * 2) as u64;
    let got = setup.ok("flights.get", json!({ "flight_id": fid })).await;
    assert_eq!(got["version"].as_u64(), Some(expected));
    final_tx.send(Some(expected)).expect("watchers listen");

    let mut joined_late = 0;
    for w in watchers {
        let (first, mut w) = tokio::time::timeout(PATIENCE, w)
            .await
            .expect("every watcher reached the final version in time")
            .expect("watcher");
        assert!(first >= start && first <= expected);
        if first > start {
            joined_late += 1;
        }
        assert_eq!(w.map.version, expected);
        w.check().await;
    }
    eprintln!(
        "ordering: {WATCHERS} watchers ({joined_late} joined mid-stream), {} versions, {refused} holds refused",
        expected - start
    );
    drop(final_tx);
    s.stop().await;
}

/// `flights.get` while seats change: every reply's `cabins` must count the seats of
/// that same reply, or a client holding "what flights.get returns at a version"
/// holds two versions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_get_is_one_version_while_seats_change() {
    let _machine = MACHINE.read().await;
    const WRITERS: usize = 10;
    const CYCLES: usize = 20;
    // the prober asks as fast as it can: no request rate limit for it
    let s = Server::start_with(|c| {
        c.limits.rate_limit = 1_000_000;
        c.limits.rate_burst = 1_000_000;
    })
    .await;
    let mut setup = s.client().await;
    let fid = fid_of(&later_flight(&mut setup).await);
    let seats = free_seats(&mut setup, &fid, "economy", WRITERS).await;
    let writing = Arc::new(AtomicBool::new(true));
    let prober = {
        let (url, fid, writing) = (s.url(), fid.clone(), writing.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let (mut last, mut probes) = (0, 0u32);
            while writing.load(Ordering::SeqCst) {
                let got = c.ok("flights.get", json!({ "flight_id": fid })).await;
                let v = got["version"].as_u64().unwrap();
                assert!(v >= last, "flights.get went back from {last} to {v}");
                last = v;
                let m = Map::from_snapshot(&fid, v, &got["seats"]);
                assert_eq!(
                    cabin_counts(&got["flight"]["cabins"]),
                    m.available,
                    "flights.get at version {v}: its cabins do not count its seats"
                );
                probes += 1;
            }
            probes
        })
    };
    let mut tasks = Vec::new();
    for seat in seats {
        let mut c = s.client().await;
        c.new_user().await;
        let fid = fid.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..CYCLES {
                let b = hold(&mut c, &fid, std::slice::from_ref(&seat), &format!("h{k}")).await;
                c.ok(
                    "booking.cancel",
                    json!({"locator": b["locator"], "request_id": format!("c{k}")}),
                )
                .await;
                c.pushes.clear();
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    writing.store(false, Ordering::SeqCst);
    let probes = prober.await.expect("prober");
    assert!(probes > 0);
    s.stop().await;
}
