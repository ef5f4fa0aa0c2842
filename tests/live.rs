//! Live seat maps (issue 3) against a real server: every watcher sees each version
//! once and in order while many writers contend, `since` replays exactly what was
//! missed (or gets a snapshot when it cannot), random interleavings of holds, pays,
//! cancels and expiries keep every watcher's map equal to `flights.get`, a stalled
//! watcher is cut off without hurting the others or the server's memory,
//! `booking.updated` reaches every connection of the owner and nobody else, dead
//! connections are dropped, and shutdown closes every connection with 1001.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// The slow-consumer test needs both cores and a quiet machine for its time and
/// memory bounds: it holds this exclusively, every other test shares it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The longest any single awaited condition may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A client-side seat map: a snapshot plus every change applied in order.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Map {
    flight_id: String,
    version: u64,
    status: BTreeMap<String, String>,
    cabin_of: BTreeMap<String, String>,
    /// Available seats per cabin, kept up to date as changes are applied.
    available: BTreeMap<String, u64>,
}

fn cabin_counts(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .unwrap_or_else(|| panic!("cabins is a list: {list}"))
        .iter()
        .map(|c| {
            (
                c["cabin"].as_str().expect("cabin").to_owned(),
                c["seats_available"].as_u64().expect("seats_available"),
            )
        })
        .collect()
}

impl Map {
    fn from_snapshot(flight_id: &str, version: u64, seats: &Value) -> Map {
        let mut status = BTreeMap::new();
        let mut cabin_of = BTreeMap::new();
        let mut available = BTreeMap::new();
        for s in seats.as_array().expect("seats is a list") {
            let id = s["seat"].as_str().expect("seat id").to_owned();
            let st = s["status"].as_str().expect("status").to_owned();
            let cabin = s["cabin"].as_str().expect("cabin").to_owned();
            let n = available.entry(cabin.clone()).or_insert(0);
            if st == "available" {
                *n += 1;
            }
            assert!(status.insert(id.clone(), st).is_none(), "{id} listed twice");
            cabin_of.insert(id, cabin);
        }
        assert!(!status.is_empty(), "a snapshot lists every seat");
        Map {
            flight_id: flight_id.to_owned(),
            version,
            status,
            cabin_of,
            available,
        }
    }

    /// Applies one change (a push's params or an element of `changes`). It must be
    /// the next version, each seat in it must really change, and its `cabins` must
    /// be the counts of the map it makes.
    fn apply(&mut self, change: &Value) {
        let v = change["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("change without a version: {change}"));
        assert_eq!(
            v,
            self.version + 1,
            "flight {}: version {v} arrived after {}: a gap, a repeat or out of order",
            self.flight_id,
            self.version
        );
        let seats = change["seats"].as_array().expect("changed seats");
        assert!(!seats.is_empty(), "change {v} changes no seat");
        for s in seats {
            let id = s["seat"].as_str().expect("seat");
            let st = s["status"].as_str().expect("status");
            assert!(
                matches!(st, "available" | "held" | "booked"),
                "change {v}: {s}"
            );
            let cabin = self
                .cabin_of
                .get(id)
                .unwrap_or_else(|| panic!("change {v} names unknown seat {id}"));
            let old = self.status.get_mut(id).expect("seat in the map");
            assert_ne!(old, st, "change {v} leaves {id} as it was");
            let n = self.available.get_mut(cabin).expect("cabin");
            if old == "available" {
                *n -= 1;
            }
            if st == "available" {
                *n += 1;
            }
            *old = st.to_owned();
        }
        self.version = v;
        assert_eq!(
            cabin_counts(&change["cabins"]),
            self.available,
            "flight {}: the cabins of change {v} do not match the seats",
            self.flight_id
        );
    }

    /// Asserts that the map is exactly what a `flights.get` reply says.
    fn assert_matches(&self, got: &Value) {
        assert_eq!(
            got["version"].as_u64(),
            Some(self.version),
            "flight {}: flights.get is at another version",
            self.flight_id
        );
        let theirs = Map::from_snapshot(&self.flight_id, self.version, &got["seats"]);
        let differ: Vec<_> = self
            .status
            .iter()
            .filter(|(seat, st)| theirs.status.get(*seat) != Some(st))
            .map(|(seat, st)| {
                format!(
                    "{seat}: mine {st}, flights.get {:?}",
                    theirs.status.get(seat)
                )
            })
            .collect();
        assert!(
            differ.is_empty() && theirs.status.len() == self.status.len(),
            "flight {} at version {}: maps differ: {differ:?}",
            self.flight_id,
            self.version
        );
        assert_eq!(
            cabin_counts(&got["flight"]["cabins"]),
            self.available,
            "flight {}: flights.get cabins do not count the map's available seats",
            self.flight_id
        );
    }
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Began {
    Snapshot,
    /// `changes` with this many entries.
    Replay(usize),
}

/// Applies a `seats.subscribe` reply to `prior`, the map at `since` (if one was sent).
fn begin(flight_id: &str, prior: Option<Map>, reply: &Value) -> (Map, Began) {
    assert_eq!(reply["flight_id"], flight_id, "{reply}");
    let version = reply["version"].as_u64().expect("version");
    match (reply.get("seats"), reply.get("changes")) {
        (Some(seats), None) => (
            Map::from_snapshot(flight_id, version, seats),
            Began::Snapshot,
        ),
        (None, Some(changes)) => {
            let mut m = prior.expect("`changes` answer only a subscribe with `since`");
            let list = changes.as_array().expect("changes is a list");
            for c in list {
                m.apply(c);
            }
            assert_eq!(m.version, version, "changes end at the reply's version");
            (m, Began::Replay(list.len()))
        }
        _ => panic!("a subscribe reply has exactly one of seats and changes: {reply}"),
    }
}

/// A connection watching one flight, with the map it has built.
struct Watcher {
    c: Client,
    map: Map,
    began: Began,
}

impl Watcher {
    async fn join(url: &str, flight_id: &str) -> Watcher {
        Self::resume(url, flight_id, None).await
    }

    /// Subscribes on a new connection, with `since` = the prior map's version if given.
    async fn resume(url: &str, flight_id: &str, prior: Option<Map>) -> Watcher {
        let mut c = Client::connect(url).await;
        let mut params = json!({ "flight_id": flight_id });
        if let Some(m) = &prior {
            params["since"] = json!(m.version);
        }
        let r = c.ok("seats.subscribe", params).await;
        let (map, began) = begin(flight_id, prior, &r);
        Watcher { c, map, began }
    }

    /// Waits for the next `seats.changed` and applies it.
    async fn next(&mut self) {
        let p = self.c.push("seats.changed").await;
        assert_eq!(p["flight_id"], self.map.flight_id.as_str(), "{p}");
        self.map.apply(&p);
    }

    async fn catch_up(&mut self, version: u64) {
        while self.map.version < version {
            self.next().await;
        }
        assert_eq!(self.map.version, version);
    }

    /// Compares the map with `flights.get` asked on the watcher's own connection (so
    /// any push queued before the reply has arrived) and checks that nothing beyond
    /// the map's version was pushed.
    async fn check(&mut self) {
        let got = self
            .c
            .ok("flights.get", json!({ "flight_id": self.map.flight_id }))
            .await;
        let extra: Vec<_> = self
            .c
            .pushes
            .iter()
            .filter(|p| p["method"] == "seats.changed")
            .collect();
        assert!(
            extra.is_empty(),
            "pushes beyond version {}: {extra:?}",
            self.map.version
        );
        self.map.assert_matches(&got);
    }

    /// Disconnects and keeps the map.
    async fn leave(mut self) -> Map {
        let _ = self.c.ws.close(None).await;
        self.map
    }
}

/// Reads until the server closes the connection: the close frame's code, or None
/// when it ended without one.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the server closed the connection in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn fid_of(f: &Value) -> String {
    f["flight_id"].as_str().expect("flight_id").to_owned()
}

// ---------------------------------------------------------------------------
// 1. Ordering under concurrent writers
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 2. Resuming with `since`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resubscribing_with_since_replays_exactly_the_missed_changes() {
    let _machine = MACHINE.read().await;
    let s = Server::start().await;
    let url = s.url();
    let mut c = s.client().await;
    c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", 4).await;
    let mut w = Watcher::join(&url, &fid).await;
    assert_eq!(w.began, Began::Snapshot);
    let a = hold(&mut c, &fid, &seats[..1], "a").await;
    w.next().await;
    let away = w.leave().await;
    let since = away.version;

    // five changes while it is away: hold, pay, release, refund, hold
    let b = hold(&mut c, &fid, &seats[1..3], "b").await;
    c.ok(
        "booking.pay",
        json!({"locator": b["locator"], "payment_method": "pm_card_visa", "request_id": "pb"}),
    )
    .await;
    c.ok(
        "booking.cancel",
        json!({"locator": a["locator"], "request_id": "ca"}),
    )
    .await;
    c.ok(
        "booking.cancel",
        json!({"locator": b["locator"], "request_id": "cb"}),
    )
    .await;
    let d = hold(&mut c, &fid, &seats[3..4], "d").await;

    // `begin` checks the replayed versions are since+1, since+2, ... in order
    let mut w = Watcher::resume(&url, &fid, Some(away)).await;
    assert_eq!(w.began, Began::Replay(5));
    assert_eq!(w.map.version, since + 5);
    w.check().await;

    // the feed goes on live after the reply
    c.ok(
        "booking.cancel",
        json!({"locator": d["locator"], "request_id": "cd"}),
    )
    .await;
    w.next().await;
    assert_eq!(w.map.version, since + 6);
    w.check().await;

    // a `since` equal to the current version replays nothing, and then goes on live
    let here = w.leave().await;
    let mut z = Watcher::resume(&url, &fid, Some(here)).await;
    assert_eq!(z.began, Began::Replay(0));
    z.check().await;
    hold(&mut c, &fid, &seats[..1], "e").await;
    z.next().await;
    z.check().await;
    s.stop().await;
}

#[tokio::test]
async fn since_older_than_the_replay_buffer_gets_a_snapshot() {
    let _machine = MACHINE.read().await;
    const BUFFER: usize = 4;
    let s = Server::start_with(|c| c.replay_buffer = BUFFER).await;
    let url = s.url();
    let mut c = s.client().await;
    c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", BUFFER + 1).await;
    let away = Watcher::join(&url, &fid).await.leave().await;

    // exactly as many changes as the buffer keeps: still replayable
    let mut held = Vec::new();
    for (i, seat) in seats[..BUFFER].iter().enumerate() {
        held.push(hold(&mut c, &fid, std::slice::from_ref(seat), &format!("h{i}")).await);
    }
    let mut w = Watcher::resume(&url, &fid, Some(away)).await;
    assert_eq!(w.began, Began::Replay(BUFFER));
    w.check().await;
    let away = w.leave().await;

    // one more than the buffer keeps: a snapshot instead
    for (i, b) in held.iter().enumerate() {
        c.ok(
            "booking.cancel",
            json!({"locator": b["locator"], "request_id": format!("c{i}")}),
        )
        .await;
    }
    hold(&mut c, &fid, &seats[BUFFER..], "last").await;
    let mut w = Watcher::resume(&url, &fid, Some(away.clone())).await;
    assert_eq!(w.began, Began::Snapshot);
    assert_eq!(w.map.version, away.version + BUFFER as u64 + 1);
    w.check().await;

    // and the snapshot is followed by live pushes
    c.ok(
        "booking.cancel",
        json!({"locator": held[0]["locator"], "request_id": "c0"}),
    )
    .await; // a repeated request id: nothing happens, no version
    let again = hold(&mut c, &fid, &seats[..1], "again").await;
    w.next().await;
    w.check().await;
    assert_eq!(again["status"], "held");
    s.stop().await;
}

#[tokio::test]
async fn after_a_restart_versions_go_on_and_older_since_gets_a_snapshot() {
    let _machine = MACHINE.read().await;
    let mut s = Server::start().await;
    let mut c = s.client().await;
    let token = c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", 3).await;
    let mut w = Watcher::join(&s.url(), &fid).await;
    let a = hold(&mut c, &fid, &seats[..1], "a").await;
    let b = hold(&mut c, &fid, &seats[1..2], "b").await;
    w.next().await;
    w.next().await;
    let previous = w.map.clone();
    c.ok(
        "booking.pay",
        json!({"locator": b["locator"], "payment_method": "pm_card_visa", "request_id": "pb"}),
    )
    .await;
    w.next().await;
    w.check().await;
    let before = w.map.clone();
    assert_eq!(before.version, previous.version + 1);

    s.restart().await;
    assert_eq!(
        close_code(&mut w.c.ws).await,
        Some(1001),
        "the old connection was closed as going away"
    );

    // the buffer was lost with the restart: the current version replays nothing,
    // an older one gets a snapshot; neither goes backwards
    let url = s.url();
    let mut same = Watcher::resume(&url, &fid, Some(before.clone())).await;
    assert_eq!(same.began, Began::Replay(0));
    assert_eq!(same.map.version, before.version);
    same.check().await;
    let mut older = Watcher::resume(&url, &fid, Some(previous)).await;
    assert_eq!(older.began, Began::Snapshot);
    assert_eq!(older.map.version, before.version);
    older.check().await;

    // the next change is the next version, for both
    let mut c = s.client().await;
    c.ok("auth.resume", json!({ "token": token })).await;
    c.ok(
        "booking.cancel",
        json!({"locator": a["locator"], "request_id": "ca"}),
    )
    .await;
    same.next().await;
    older.next().await;
    assert_eq!(same.map.version, before.version + 1);
    same.check().await;
    older.check().await;
    s.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Random interleavings (proptest)
// ---------------------------------------------------------------------------

const P_USERS: usize = 3;
const P_POOL: usize = 8;
const P_BUFFER: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    Hold {
        user: usize,
        seats: Vec<usize>,
    },
    Pay {
        user: usize,
        nth: usize,
    },
    Cancel {
        user: usize,
        nth: usize,
    },
    /// Waits until a held booking of the user expires (if it has one).
    AwaitExpiry {
        user: usize,
        nth: usize,
    },
    /// A new watcher subscribes; with `back`, `since` is that many versions ago.
    Watch {
        back: Option<u64>,
    },
    /// A watcher drops its connection and resubscribes with `since`.
    Reconnect {
        watcher: usize,
    },
    /// A watcher reads up to `n` of the pushes waiting for it.
    Read {
        watcher: usize,
        n: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..P_USERS, proptest::collection::btree_set(0..P_POOL, 1..=3))
            .prop_map(|(user, s)| Op::Hold { user, seats: s.into_iter().collect() }),
        3 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::Pay { user, nth }),
        3 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::Cancel { user, nth }),
        1 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::AwaitExpiry { user, nth }),
        2 => proptest::option::of(0..(2 * P_BUFFER as u64)).prop_map(|back| Op::Watch { back }),
        1 => (0..8usize).prop_map(|watcher| Op::Reconnect { watcher }),
        1 => (0..8usize, 1..6usize).prop_map(|(watcher, n)| Op::Read { watcher, n }),
    ]
}

/// One case: its own fresh flight, the users' connections, and what the test knows.
struct Case {
    url: String,
    fid: String,
    pool: Vec<String>,
    users: Vec<Client>,
    /// Each user's bookings, oldest first.
    bookings: Vec<Vec<String>>,
    owner: HashMap<String, usize>,
    seats_of: HashMap<String, Vec<String>>,
    /// The last status each booking was pushed with.
    status: HashMap<String, String>,
    /// Successful holds, pays and cancels (expiries are counted at the end).
    writes: u64,
    /// Reads everything, and remembers its map at every version.
    reference: Watcher,
    history: BTreeMap<u64, Map>,
    watchers: Vec<Watcher>,
    rid: u64,
    stats: Stats,
}

/// What the random cases exercised, for the log.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    holds: u64,
    refused: u64,
    pays: u64,
    cancels: u64,
    expiries: u64,
    snapshots: u64,
    replays: u64,
}

impl Case {
    /// Takes in the `booking.updated` pushes the user has received so far.
    fn absorb(&mut self, user: usize) {
        let pushes = std::mem::take(&mut self.users[user].pushes);
        for p in pushes.iter().filter(|p| p["method"] == "booking.updated") {
            self.note(&p["params"]);
        }
    }

    fn note(&mut self, update: &Value) {
        let b = &update["booking"];
        if b["flight_id"] != self.fid.as_str() {
            return;
        }
        let loc = b["locator"].as_str().expect("locator").to_owned();
        self.status
            .insert(loc, b["status"].as_str().expect("status").to_owned());
    }

    /// Waits until the user's booking is no longer held.
    async fn settle(&mut self, user: usize, loc: &str) {
        self.absorb(user);
        while self.status.get(loc).map(String::as_str) == Some("held") {
            let p = self.users[user].push("booking.updated").await;
            self.note(&p);
        }
    }

    fn pick(&self, user: usize, nth: usize) -> Option<String> {
        let list = &self.bookings[user];
        (!list.is_empty()).then(|| list[nth % list.len()].clone())
    }

    /// A request id not used before by these users (they take part in every case).
    fn next_rid(&mut self) -> String {
        self.rid += 1;
        format!("{}-{}", self.fid, self.rid)
    }

    /// Brings the reference watcher up to the published version, remembering maps.
    async fn advance_reference(&mut self) -> u64 {
        let got = self
            .reference
            .c
            .ok("flights.get", json!({ "flight_id": self.fid }))
            .await;
        let v = got["version"].as_u64().expect("version");
        while self.reference.map.version < v {
            self.reference.next().await;
            self.history
                .insert(self.reference.map.version, self.reference.map.clone());
        }
        v
    }

    /// Checks that a subscribe with `since` replayed exactly when it could.
    fn check_start(&mut self, w: &Watcher, since: Option<u64>) {
        match w.began {
            Began::Snapshot => self.stats.snapshots += 1,
            Began::Replay(_) => self.stats.replays += 1,
        }
        match (since, w.began) {
            (None, b) => assert_eq!(b, Began::Snapshot),
            (Some(s), Began::Replay(n)) => {
                assert_eq!(n as u64, w.map.version - s);
                assert!(n <= P_BUFFER, "replayed more than the buffer holds");
            }
            (Some(s), Began::Snapshot) => assert!(
                w.map.version - s > P_BUFFER as u64,
                "a snapshot although since {s} was replayable at version {}",
                w.map.version
            ),
        }
    }

    async fn run(&mut self, op: &Op) {
        match op {
            Op::Hold { user, seats } => {
                let seats: Vec<String> = seats.iter().map(|&i| self.pool[i].clone()).collect();
                let rid = self.next_rid();
                let r = self.users[*user]
                    .call(
                        "booking.hold",
                        json!({"flight_id": self.fid, "seats": seats, "passengers": passengers(seats.len()), "request_id": rid}),
                    )
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    let loc = ok["booking"]["locator"].as_str().unwrap().to_owned();
                    assert_eq!(ok["booking"]["status"], "held");
                    assert_eq!(self.status.get(&loc).map(String::as_str), Some("held"));
                    self.writes += 1;
                    self.stats.holds += 1;
                    self.bookings[*user].push(loc.clone());
                    self.owner.insert(loc.clone(), *user);
                    self.seats_of.insert(loc, seats);
                } else {
                    assert_eq!(r["error"]["data"]["reason"], "seat_unavailable", "{r}");
                    self.stats.refused += 1;
                }
            }
            Op::Pay { user, nth } => {
                let Some(loc) = self.pick(*user, *nth) else {
                    return;
                };
                let rid = self.next_rid();
                let r = self.users[*user]
                    .call(
                        "booking.pay",
                        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": rid}),
                    )
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    assert_eq!(ok["booking"]["status"], "confirmed");
                    assert_eq!(self.status[&loc], "confirmed");
                    self.writes += 1;
                    self.stats.pays += 1;
                } else {
                    let reason = r["error"]["data"]["reason"].as_str().unwrap_or_default();
                    assert!(matches!(reason, "hold_expired" | "invalid_state"), "{r}");
                }
            }
            Op::Cancel { user, nth } => {
                let Some(loc) = self.pick(*user, *nth) else {
                    return;
                };
                let rid = self.next_rid();
                let r = self.users[*user]
                    .call("booking.cancel", json!({"locator": loc, "request_id": rid}))
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    let st = ok["booking"]["status"].as_str().unwrap().to_owned();
                    assert!(matches!(st.as_str(), "cancelled" | "refunded"), "{r}");
                    assert_eq!(self.status[&loc], st);
                    self.writes += 1;
                    self.stats.cancels += 1;
                } else {
                    let reason = r["error"]["data"]["reason"].as_str().unwrap_or_default();
                    assert!(matches!(reason, "hold_expired" | "invalid_state"), "{r}");
                }
            }
            Op::AwaitExpiry { user, nth } => {
                self.absorb(*user);
                let held: Vec<String> = self.bookings[*user]
                    .iter()
                    .filter(|l| self.status.get(*l).map(String::as_str) == Some("held"))
                    .cloned()
                    .collect();
                if held.is_empty() {
                    return;
                }
                let loc = held[nth % held.len()].clone();
                self.settle(*user, &loc).await;
                assert_eq!(self.status[&loc], "expired");
            }
            Op::Watch { back } => {
                let v = self.advance_reference().await;
                let since = back.map(|b| v.saturating_sub(b));
                let prior = since.map(|s| self.history[&s].clone());
                let w = Watcher::resume(&self.url, &self.fid, prior).await;
                self.check_start(&w, since);
                self.watchers.push(w);
            }
            Op::Reconnect { watcher } => {
                if self.watchers.is_empty() {
                    return;
                }
                let w = self.watchers.swap_remove(watcher % self.watchers.len());
                let map = w.leave().await;
                let since = map.version;
                let w = Watcher::resume(&self.url, &self.fid, Some(map)).await;
                self.check_start(&w, Some(since));
                self.watchers.push(w);
            }
            Op::Read { watcher, n } => {
                if self.watchers.is_empty() {
                    return;
                }
                let i = watcher % self.watchers.len();
                let w = &mut self.watchers[i];
                // after this reply every push up to its version is already here
                let got =
                    w.c.ok("flights.get", json!({ "flight_id": self.fid }))
                        .await;
                let v = got["version"].as_u64().unwrap();
                let until = v.min(w.map.version + *n as u64);
                w.catch_up(until).await;
            }
        }
    }

    /// Lets every hold run out, then compares everything with `flights.get`.
    async fn finish(&mut self) {
        let held: Vec<(usize, String)> = self.owner.iter().map(|(l, u)| (*u, l.clone())).collect();
        for (user, loc) in held {
            self.settle(user, &loc).await;
        }
        let expired = self.status.values().filter(|s| *s == "expired").count() as u64;
        self.stats.expiries = expired;
        let v = self.advance_reference().await;
        assert_eq!(
            v,
            self.writes + expired,
            "one version per hold, pay, cancel and expiry"
        );
        self.reference.check().await;
        let got = self
            .reference
            .c
            .ok("flights.get", json!({ "flight_id": self.fid }))
            .await;
        // the model: seats of confirmed bookings are booked, every other seat is free
        let mut expect: BTreeMap<String, String> = got["seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["seat"].as_str().unwrap().to_owned(),
                    "available".to_owned(),
                )
            })
            .collect();
        for (loc, st) in &self.status {
            assert!(
                matches!(
                    st.as_str(),
                    "confirmed" | "cancelled" | "refunded" | "expired"
                ),
                "{loc} is {st}"
            );
            if st == "confirmed" {
                for seat in &self.seats_of[loc] {
                    expect.insert(seat.clone(), "booked".to_owned());
                }
            }
        }
        assert_eq!(
            self.reference.map.status, expect,
            "the map follows the bookings"
        );
        for w in &mut self.watchers {
            w.catch_up(v).await;
            w.check().await;
        }
    }
}

#[test]
fn random_interleavings_keep_every_watcher_equal_to_flights_get() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _machine = rt.block_on(MACHINE.read());
    let s = rt.block_on(Server::start_with(|c| {
        c.hold_ttl = 1;
        c.replay_buffer = P_BUFFER;
    }));
    let url = s.url();
    let (tokens, flights) = rt.block_on(async {
        let mut c = s.client().await;
        let mut tokens = Vec::new();
        for _ in 0..P_USERS {
            tokens.push(c.new_user().await);
        }
        let now = time::OffsetDateTime::now_utc();
        let all = c.ok("flights.search", json!({"limit": 500})).await;
        let flights: Vec<String> = all["flights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                time::OffsetDateTime::parse(
                    f["departs_at"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|d| d - now > time::Duration::days(1))
            })
            .map(fid_of)
            .collect();
        (tokens, flights)
    });
    let next_flight = RefCell::new(0usize);
    let totals = RefCell::new(Stats::default());
    let started = Instant::now();

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        max_shrink_iters: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 6..28);
    let result = runner.run(&strategy, |ops| {
        let fid = {
            let mut n = next_flight.borrow_mut();
            *n += 1;
            flights
                .get(*n - 1)
                .cloned()
                .expect("a fresh flight for every case")
        };
        rt.block_on(async {
            let mut users = Vec::new();
            for t in &tokens {
                let mut c = Client::connect(&url).await;
                c.ok("auth.resume", json!({ "token": t })).await;
                users.push(c);
            }
            let mut setup = Client::connect(&url).await;
            let pool = {
                let mut p = free_seats(&mut setup, &fid, "economy", P_POOL - 2).await;
                p.extend(free_seats(&mut setup, &fid, "business", 2).await);
                p
            };
            let reference = Watcher::join(&url, &fid).await;
            assert_eq!(reference.map.version, 0, "a fresh flight");
            let mut history = BTreeMap::new();
            history.insert(0, reference.map.clone());
            let mut case = Case {
                url: url.clone(),
                fid: fid.clone(),
                pool,
                users,
                bookings: vec![Vec::new(); P_USERS],
                owner: HashMap::new(),
                seats_of: HashMap::new(),
                status: HashMap::new(),
                writes: 0,
                reference,
                history,
                watchers: Vec::new(),
                rid: 0,
                stats: Stats::default(),
            };
            for op in &ops {
                case.run(op).await;
            }
            case.finish().await;
            let (mut t, c) = (totals.borrow_mut(), case.stats);
            t.holds += c.holds;
            t.refused += c.refused;
            t.pays += c.pays;
            t.cancels += c.cancels;
            t.expiries += c.expiries;
            t.snapshots += c.snapshots;
            t.replays += c.replays;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "property: {} cases in {:.1?}: {:?}",
        next_flight.borrow(),
        started.elapsed(),
        totals.borrow()
    );
    rt.block_on(s.stop());
}

// ---------------------------------------------------------------------------
// 4. A stalled watcher
// ---------------------------------------------------------------------------

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
            "3600",
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

// ---------------------------------------------------------------------------
// 5. booking.updated on every connection of the owner
// ---------------------------------------------------------------------------

/// Asserts that no `booking.updated` reached the connection: anything queued for it
/// before now arrives before the reply to this request.
async fn assert_no_updates(c: &mut Client) {
    c.ok("flights.airports", json!({})).await;
    let seen: Vec<_> = c
        .pushes
        .iter()
        .filter(|p| p["method"] == "booking.updated")
        .collect();
    assert!(seen.is_empty(), "another user's updates arrived: {seen:?}");
}

async fn expect_update(c: &mut Client, loc: &str, status: &str) -> Value {
    let u = c.push("booking.updated").await;
    assert_eq!(u["booking"]["locator"], loc, "{u}");
    assert_eq!(u["booking"]["status"], status, "{u}");
    u
}

#[tokio::test]
async fn booking_updates_reach_every_connection_of_the_owner_and_nobody_else() {
    let _machine = MACHINE.read().await;
    let mut s = Server::start().await;
    let mut tab1 = s.client().await;
    let token = tab1.new_user().await;
    let mut tab2 = s.client().await;
    tab2.ok("auth.resume", json!({ "token": token })).await;
    let mut stranger = s.client().await;
    let stranger_token = stranger.new_user().await;
    let fid = fid_of(&later_flight(&mut tab1).await);
    let seats = free_seats(&mut tab1, &fid, "economy", 2).await;

    // held in one tab, paid in the other: both tabs hear of both
    let b = hold(&mut tab1, &fid, &seats[..1], "h1").await;
    let loc = b["locator"].as_str().unwrap().to_owned();
    for tab in [&mut tab1, &mut tab2] {
        expect_update(tab, &loc, "held").await;
    }
    tab2.ok(
        "booking.pay",
        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"}),
    )
    .await;
    for tab in [&mut tab1, &mut tab2] {
        let u = expect_update(tab, &loc, "confirmed").await;
        assert_eq!(
            u["booking"]["seats"][0]["ticket_number"]
                .as_str()
                .map(str::len),
            Some(13)
        );
    }
    assert_no_updates(&mut stranger).await;

    // an expiry, with a one-second hold TTL; both tabs come back after the restart
    s.restart_with(|c| c.hold_ttl = 1).await;
    let mut tab1 = s.client().await;
    tab1.ok("auth.resume", json!({ "token": token })).await;
    let mut tab2 = s.client().await;
    tab2.ok("auth.resume", json!({ "token": token })).await;
    let mut stranger = s.client().await;
    stranger
        .ok("auth.resume", json!({ "token": stranger_token }))
        .await;
    let b = hold(&mut tab2, &fid, &seats[1..], "h2").await;
    let loc2 = b["locator"].as_str().unwrap().to_owned();
    for tab in [&mut tab1, &mut tab2] {
        expect_update(tab, &loc2, "held").await;
        expect_update(tab, &loc2, "expired").await;
    }
    assert_no_updates(&mut stranger).await;
    assert_eq!(
        tab1.ok("booking.get", json!({ "locator": loc2 })).await["booking"]["status"],
        "expired"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Shutdown and liveness
// ---------------------------------------------------------------------------

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
