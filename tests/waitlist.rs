//! The waitlist against real servers: freed seats go to the first waiting entry in
//! the very version that frees them (nobody else gets them, watchers never see them
//! available), offers move on when they expire or are left, and entries and offers
//! survive a restart.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CABIN: &str = "business";

fn fast(c: &mut jetway::Config) {
    c.insecure_fast_hashing = true;
    // the stampede below sends as fast as the server answers for as long as the
    // offer takes on a busy machine; the per-connection limit is not under test here
    c.limits.rate_limit = 0;
}

async fn pay(c: &mut Client, locator: &str, rid: &str) -> Value {
    c.ok(
        "booking.pay",
        json!({"locator": locator, "payment_method": "pm_card_visa", "request_id": rid}),
    )
    .await
}

/// Sells every seat of the cabin (paid, so short hold TTLs do not free them); the
/// last booking has exactly one seat. Returns that booking's locator and seat.
async fn sell_out(c: &mut Client, flight: &str) -> (String, String) {
    let seats = free_seats(c, flight, CABIN, 500).await;
    assert!(seats.len() > 1);
    let (rest, last) = seats.split_at(seats.len() - 1);
    for (i, chunk) in rest.chunks(9).enumerate() {
        let b = hold(c, flight, chunk, &format!("fill{i}")).await;
        pay(c, b["locator"].as_str().unwrap(), &format!("payfill{i}")).await;
    }
    let b = hold(c, flight, last, "filllast").await;
    let loc = b["locator"].as_str().unwrap().to_owned();
    pay(c, &loc, "paylast").await;
    (loc, last[0].clone())
}

/// A logged-in seller and a flight far enough out for full refunds.
async fn seller(s: &Server) -> (Client, String) {
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, f)
}

fn join_params(flight: &str, count: usize, rid: &str) -> Value {
    json!({"flight_id": flight, "cabin": CABIN, "count": count, "passengers": passengers(count), "request_id": rid})
}

async fn join(c: &mut Client, flight: &str, rid: &str) -> Value {
    c.ok("waitlist.join", join_params(flight, 1, rid)).await["entry"].clone()
}

async fn cancel(c: &mut Client, locator: &str, rid: &str) {
    c.ok(
        "booking.cancel",
        json!({"locator": locator, "request_id": rid}),
    )
    .await;
}

async fn entry(c: &mut Client, id: &str) -> Value {
    let list = c.ok("waitlist.list", json!({})).await;
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("entry {id} listed: {list}"))
}

/// Polls the owner's entry until it has `status`.
async fn wait_status(c: &mut Client, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = entry(c, id).await;
        if e["status"] == status {
            return e;
        }
        assert!(Instant::now() < deadline, "entry never {status}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The business seats a `seats.changed` push lists, and the cabin's new count.
fn cabin_change(p: &Value) -> (Vec<(String, String)>, u64) {
    let seats = p["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["seat"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let n = p["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cabin"] == CABIN)
        .and_then(|c| c["seats_available"].as_u64())
        .unwrap();
    (seats, n)
}

/// Reads `seats.changed` pushes until one lists `seat`; every business count seen
/// on the way must be 0 (no seat of the sold-out cabin is ever shown available).
async fn change_of(watcher: &mut Client, seat: &str) -> (Vec<(String, String)>, u64) {
    loop {
        let p = watcher.push("seats.changed").await;
        let (seats, n) = cabin_change(&p);
        assert_eq!(n, 0, "the sold-out cabin stays sold out: {p}");
        if seats.iter().any(|(s, _)| s == seat) {
            return (seats, p["version"].as_u64().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_last_seat_goes_to_the_first_entry_and_nobody_else() {
    let s = Server::start_with(fast).await;
    let (mut seller, flight) = seller(&s).await;
    let (last, seat) = sell_out(&mut seller, &flight).await;
    let mut watcher = s.client().await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": flight}))
        .await;

    let mut waiters = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut c = s.client().await;
        c.new_user().await;
        let e = join(&mut c, &flight, "j").await;
        assert_eq!(e["status"], "waiting");
        assert_eq!(e["position"], i + 1);
        assert_eq!(e["count"], 1);
        // the same request again is answered the same, and joins nothing twice
        assert_eq!(join(&mut c, &flight, "j").await, e);
        ids.push(e["id"].as_str().unwrap().to_owned());
        waiters.push(c);
    }

    // 100 buyers try to hold a seat of the cabin while the last seat is released
    let done = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let mut buyers = Vec::new();
    for i in 0..100 {
        let mut c = s.client().await;
        c.new_user().await;
        let (done, got, flight) = (done.clone(), got.clone(), flight.clone());
        buyers.push(tokio::spawn(async move {
            let mut after_done = 0;
            for n in 0.. {
                let r = c
                    .call(
                        "booking.hold",
                        json!({"flight_id": flight, "count": 1, "cabin": CABIN,
                               "passengers": passengers(1), "request_id": format!("b{i}-{n}")}),
                    )
                    .await;
                if r.get("result").is_some() {
                    got.fetch_add(1, Ordering::SeqCst);
                } else {
                    assert_eq!(r["error"]["data"]["reason"], "seat_unavailable", "{r}");
                }
                if done.load(Ordering::SeqCst) {
                    after_done += 1;
                    if after_done == 3 {
                        break;
                    }
                }
            }
        }));
    }
    cancel(&mut seller, &last, "c").await;

    let offer = waiters[0].push("waitlist.offered").await;
    done.store(true, Ordering::SeqCst);
    for b in buyers {
        b.await.unwrap();
    }
    assert_eq!(got.load(Ordering::SeqCst), 0, "no buyer got the freed seat");
    assert_eq!(offer["entry"]["id"], ids[0].as_str());
    assert_eq!(offer["entry"]["status"], "offered");
    assert!(offer["entry"].get("position").is_none());
    assert_eq!(offer["booking"]["status"], "held");
    assert_eq!(offer["booking"]["seats"][0]["seat"], seat.as_str());
    assert_eq!(offer["entry"]["locator"], offer["booking"]["locator"]);
    let booking = waiters[0].push("booking.updated").await;
    assert_eq!(booking["booking"]["locator"], offer["booking"]["locator"]);

    // the version that freed the seat shows it held, never available
    let (seats, _) = change_of(&mut watcher, &seat).await;
    assert_eq!(seats, vec![(seat.clone(), "held".to_owned())]);

    // the others moved up, and their entries say so
    for (k, c) in waiters.iter_mut().enumerate().skip(1) {
        let u = c.push("waitlist.updated").await;
        assert_eq!(u["entry"]["position"], k);
        let e = entry(c, &ids[k]).await;
        assert_eq!(
            (e["status"].clone(), e["position"].clone()),
            (json!("waiting"), json!(k))
        );
    }
    let mine = entry(&mut waiters[0], &ids[0]).await;
    assert_eq!(mine["status"], "offered");
    // paying the offer accepts the entry
    let loc = offer["booking"]["locator"].as_str().unwrap().to_owned();
    pay(&mut waiters[0], &loc, "p").await;
    assert_eq!(entry(&mut waiters[0], &ids[0]).await["status"], "accepted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_is_for_sold_out_cabins_only_and_leaving_an_offer_moves_it_on() {
    let s = Server::start_with(fast).await;
    let (mut seller, flight) = seller(&s).await;
    let mut a = s.client().await;
    a.new_user().await;
    let economy = json!({"flight_id": flight, "cabin": "economy", "count": 1,
                         "passengers": passengers(1), "request_id": "e"});
    assert_eq!(a.reason("waitlist.join", economy).await, "seats_available");
    let mismatch = json!({"flight_id": flight, "cabin": CABIN, "count": 2,
                          "passengers": passengers(1), "request_id": "m"});
    assert_eq!(a.reason("waitlist.join", mismatch).await, "invalid_params");
    assert_eq!(
        a.reason("waitlist.join", join_params(&flight, 10, "x"))
            .await,
        "invalid_params"
    );

    let (last, seat) = sell_out(&mut seller, &flight).await;
    let first = join(&mut a, &flight, "a1").await;
    // five waiting entries per user
    for i in 2..=5 {
        join(&mut a, &flight, &format!("a{i}")).await;
    }
    assert_eq!(
        a.reason("waitlist.join", join_params(&flight, 1, "a6"))
            .await,
        "invalid_state"
    );
    let mut b = s.client().await;
    b.new_user().await;
    let theirs = join(&mut b, &flight, "b1").await;
    assert_eq!(theirs["position"], 6);
    // someone else's entry cannot be left
    assert_eq!(
        b.reason("waitlist.leave", json!({"id": first["id"]})).await,
        "not_found"
    );
    // leaving waiting entries moves b up
    let list = a.ok("waitlist.list", json!({})).await;
    let mine: Vec<String> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        mine.last(),
        first["id"].as_str().map(str::to_owned).as_ref(),
        "newest first"
    );
    for id in &mine[..4] {
        let left = a.ok("waitlist.leave", json!({"id": id})).await;
        assert_eq!(left["entry"]["status"], "left");
    }
    let u = loop {
        let u = b.push("waitlist.updated").await;
        if u["entry"]["position"] == 2 {
            break u;
        }
    };
    assert_eq!(u["entry"]["status"], "waiting");

    cancel(&mut seller, &last, "c").await;
    let offer = a.push("waitlist.offered").await;
    assert_eq!(offer["entry"]["id"], first["id"]);
    assert_eq!(offer["booking"]["seats"][0]["seat"], seat.as_str());
    let left = a.ok("waitlist.leave", json!({"id": first["id"]})).await;
    assert_eq!(left["entry"]["status"], "left");
    loop {
        let b = a.push("booking.updated").await;
        if b["booking"]["status"] == "cancelled" {
            assert_eq!(b["booking"]["locator"], offer["booking"]["locator"]);
            break;
        }
    }
    let next = b.push("waitlist.offered").await;
    assert_eq!(next["entry"]["id"], theirs["id"]);
    assert_eq!(next["booking"]["seats"][0]["seat"], seat.as_str());
    // leaving again answers the same
    let again = a.ok("waitlist.leave", json!({"id": first["id"]})).await;
    assert_eq!(again["entry"]["status"], "left");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_offer_moves_on_through_three_entries_across_a_restart() {
    let ttl = |c: &mut jetway::Config| {
        c.insecure_fast_hashing = true;
        c.hold_ttl = 3;
    };
    let mut s = Server::start_with(ttl).await;
    let (mut seller, flight) = seller(&s).await;
    let (last, seat) = sell_out(&mut seller, &flight).await;
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut c = s.client().await;
        tokens.push(c.new_user().await);
        ids.push(
            join(&mut c, &flight, "j").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut watcher = s.client().await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": flight}))
        .await;
    let mut first = s.client().await;
    first.ok("auth.resume", json!({"token": tokens[0]})).await;
    cancel(&mut seller, &last, "c").await;
    let offer = first.push("waitlist.offered").await;
    let (seats, _) = change_of(&mut watcher, &seat).await;
    assert_eq!(seats, vec![(seat.clone(), "held".to_owned())]);

    // the first offer expires: the seat goes to the second entry in that version
    let mut second = s.client().await;
    second.ok("auth.resume", json!({"token": tokens[1]})).await;
    let offer2 = second.push("waitlist.offered").await;
    assert_eq!(offer2["booking"]["seats"][0]["seat"], seat.as_str());
    assert_ne!(offer2["booking"]["locator"], offer["booking"]["locator"]);
    let (seats, _) = change_of(&mut watcher, &seat).await;
    assert_eq!(seats, vec![(seat.clone(), "held".to_owned())]);
    let expired = first.push("waitlist.updated").await;
    assert_eq!(expired["entry"]["status"], "expired");

    // entries and the live offer survive a restart; the offer still expires on time
    s.restart_with(ttl).await;
    let mut third = s.client().await;
    third.ok("auth.resume", json!({"token": tokens[2]})).await;
    let mut second = s.client().await;
    second.ok("auth.resume", json!({"token": tokens[1]})).await;
    let e2 = entry(&mut second, &ids[1]).await;
    assert!(
        e2["status"] == "offered" || e2["status"] == "expired",
        "{e2}"
    );
    assert_eq!(e2["locator"], offer2["booking"]["locator"]);
    let e3 = wait_status(&mut third, &ids[2], "offered").await;
    assert_eq!(
        wait_status(&mut second, &ids[1], "expired").await["locator"],
        e2["locator"]
    );
    let b3 = third
        .ok("booking.get", json!({"locator": e3["locator"]}))
        .await;
    assert_eq!(b3["booking"]["seats"][0]["seat"], seat.as_str());
    let loc3 = e3["locator"].as_str().unwrap().to_owned();
    pay(&mut third, &loc3, "p").await;
    assert_eq!(entry(&mut third, &ids[2]).await["status"], "accepted");
    let f = third.ok("flights.get", json!({"flight_id": flight})).await;
    assert_eq!(seat_status(&f, &seat), "booked");
    s.stop().await;
}

/// Two nodes on one etcd: a seat freed through one node is offered to an entry
/// whose owner is connected to the other, in the version that frees it, and the
/// offer's expiry moves it on once for the whole cluster.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_line() {
    use common::cluster::{node, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("wl"));
    let flags = ["--hold-ttl", "3", "--insecure-fast-hashing"];
    let nodes = [node(&etcd, &prefix, &flags), node(&etcd, &prefix, &flags)];
    let mut seller = Client::connect(&nodes[0].url()).await;
    seller.new_user().await;
    let flight = later_flight(&mut seller).await["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (last, seat) = sell_out(&mut seller, &flight).await;
    let mut first = Client::connect(&nodes[1].url()).await;
    first.new_user().await;
    let e1 = join(&mut first, &flight, "j").await;
    let mut second = Client::connect(&nodes[0].url()).await;
    second.new_user().await;
    let e2 = join(&mut second, &flight, "j").await;
    assert_eq!(e2["position"], 2);
    let mut watcher = Client::connect(&nodes[1].url()).await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": flight}))
        .await;

    cancel(&mut seller, &last, "c").await;
    let offer = first.push("waitlist.offered").await;
    assert_eq!(offer["entry"]["id"], e1["id"]);
    assert_eq!(offer["booking"]["seats"][0]["seat"], seat.as_str());
    let (seats, _) = change_of(&mut watcher, &seat).await;
    assert_eq!(seats, vec![(seat.clone(), "held".to_owned())]);

    // expired through whichever node gets there first, offered on exactly once
    let offer2 = second.push("waitlist.offered").await;
    assert_eq!(offer2["entry"]["id"], e2["id"]);
    assert_eq!(offer2["booking"]["seats"][0]["seat"], seat.as_str());
    let (seats, _) = change_of(&mut watcher, &seat).await;
    assert_eq!(seats, vec![(seat.clone(), "held".to_owned())]);
    assert_eq!(
        wait_status(&mut first, e1["id"].as_str().unwrap(), "expired").await["locator"],
        offer["booking"]["locator"]
    );
    let loc = offer2["booking"]["locator"].as_str().unwrap().to_owned();
    pay(&mut second, &loc, "p").await;
    wait_status(&mut second, e2["id"].as_str().unwrap(), "accepted").await;
    let held = second.ok("bookings.list", json!({})).await["bookings"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(held, 1, "one offer per entry");
}
