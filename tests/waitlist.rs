//! The waitlist against real servers: freed seats go to the first waiting entry in
//! the very version that frees them (nobody else gets them, watchers never see them
//! available), offers move on when they expire or are left, and entries and offers
//! survive a restart.

mod common;

use common::*;
use serde_json::{json, Value};
#[cfg(feature = "etcd")]
use std::collections::HashMap;
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

/// A logged-in seller on the server at `url` and a flight far enough out for full
/// refunds.
async fn seller(url: &str) -> (Client, String) {
    let mut c = Client::connect(url).await;
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
    let (mut seller, flight) = seller(&s.url()).await;
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
    let (mut seller, flight) = seller(&s.url()).await;
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
    // a page at a time, as bookings.list
    let mut paged = Vec::new();
    let mut before = Value::Null;
    loop {
        let page = a
            .ok("waitlist.list", json!({"limit": 2, "before": before}))
            .await;
        let ids: Vec<Value> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        paged.extend(ids.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        if page.get("more") != Some(&json!(true)) {
            assert!(ids.len() <= 2, "{page}");
            break;
        }
        assert_eq!(ids.len(), 2, "{page}");
        before = ids[1].clone();
    }
    assert_eq!(paged, mine);
    assert_eq!(
        b.reason("waitlist.list", json!({"before": first["id"]}))
            .await,
        "not_found",
        "another user's entry is no cursor"
    );
    for limit in [0, 501] {
        let r = a.reason("waitlist.list", json!({"limit": limit})).await;
        assert_eq!(r, "invalid_params");
    }
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

/// An offered hold left with its payment waiting for the customer's 3-D Secure: the
/// waiting payment is cancelled at the gateway as the hold is released (as a cancel's
/// or an expiry's is), so the customer can no longer complete it. Before, it stayed
/// open until the reconciler's round, and a customer who authenticated meanwhile
/// was charged for a hold they had left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_an_offer_cancels_its_payment_waiting_for_the_customer() {
    let fake = fake_stripe::FakeStripe::start().await.expect("fake stripe");
    let base = fake.base();
    let s = Server::start_with(|c| {
        fast(c);
        c.payments = jetway::config::PaymentsKind::Stripe;
        c.stripe_api_base = base;
        c.stripe_secret_key = Some(FAKE_STRIPE_KEY.1.into());
        // no reconciler round during the test: only the leave can cancel it
        c.reconcile_interval = 3600;
    })
    .await;
    let (mut seller, flight) = seller(&s.url()).await;
    let (last, _) = sell_out(&mut seller, &flight).await;
    let mut a = s.client().await;
    a.new_user().await;
    let first = join(&mut a, &flight, "a1").await;
    cancel(&mut seller, &last, "c").await;
    let offer = a.push("waitlist.offered").await;
    let loc = offer["booking"]["locator"].as_str().unwrap().to_owned();
    let pay = json!({"locator": loc, "payment_method": "pm_card_threeDSecure2Required",
                     "request_id": "p"});
    assert_eq!(
        a.reason("booking.pay", pay).await,
        "payment_action_required"
    );
    let of_offer = |l: &fake_stripe::Ledger| -> Vec<fake_stripe::Intent> {
        l.intents
            .iter()
            .filter(|i| i.metadata.get("locator") == Some(&loc))
            .cloned()
            .collect()
    };
    let waiting = of_offer(&fake.ledger());
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].status, "requires_action");

    let left = a.ok("waitlist.leave", json!({"id": first["id"]})).await;
    assert_eq!(left["entry"]["status"], "left");
    let deadline = Instant::now() + Duration::from_secs(20);
    while of_offer(&fake.ledger())[0].status == "requires_action" {
        assert!(
            Instant::now() < deadline,
            "the waiting payment was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !fake.authenticate(&waiting[0].id, true),
        "too late to authenticate"
    );
    let after = of_offer(&fake.ledger());
    assert_eq!(after[0].status, "canceled", "{after:?}");
    assert_eq!(after[0].charged, 0, "{after:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_offer_moves_on_through_three_entries_across_a_restart() {
    let ttl = |c: &mut jetway::Config| {
        c.insecure_fast_hashing = true;
        c.hold_ttl = 3;
    };
    let mut s = Server::start_with(ttl).await;
    let (mut seller, flight) = seller(&s.url()).await;
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
/// An etcd member, two nodes on it (`flags` each), a seller logged in on the first,
/// and a flight far enough out for full refunds.
#[cfg(feature = "etcd")]
async fn two_nodes_and_a_flight(
    flags: &[&str],
) -> (common::cluster::Etcd, [Proc; 2], Client, String) {
    use common::cluster::{node, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("wl"));
    let nodes = [node(&etcd, &prefix, flags), node(&etcd, &prefix, flags)];
    let (seller, flight) = seller(&nodes[0].url()).await;
    (etcd, nodes, seller, flight)
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_line() {
    let (_etcd, nodes, mut seller, flight) =
        two_nodes_and_a_flight(&["--hold-ttl", "3", "--insecure-fast-hashing"]).await;
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

/// Two nodes on one etcd: one user's joins sent side by side through both nodes, on
/// one flight and on two, never take the user past the cap on waiting entries.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_on_waiting_entries_holds_across_nodes() {
    let (_etcd, nodes, mut seller, flight) =
        two_nodes_and_a_flight(&["--insecure-fast-hashing", "--rate-limit", "0"]).await;
    let other = all_departing_within(&mut seller, time::Duration::days(2), time::Duration::MAX)
        .await
        .into_iter()
        .map(|f| f["flight_id"].as_str().unwrap().to_owned())
        .find(|f| *f != flight)
        .expect("a second flight");
    sell_out(&mut seller, &flight).await;
    // (another seller: sell_out's request ids would replay the first one's)
    let mut seller2 = Client::connect(&nodes[0].url()).await;
    seller2.new_user().await;
    sell_out(&mut seller2, &other).await;
    let mut here = Client::connect(&nodes[0].url()).await;
    let token = here.new_user().await;
    let mut there = Client::connect(&nodes[1].url()).await;
    there.ok("auth.resume", json!({"token": token})).await;
    // the second node has applied both sell-outs
    let deadline = Instant::now() + Duration::from_secs(20);
    for f in [&flight, &other] {
        while !free_seats(&mut there, f, CABIN, 1).await.is_empty() {
            assert!(Instant::now() < deadline, "node 1 never saw {f} sold out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut first = None;
    for i in 1..=4 {
        let e = join(&mut here, &flight, &format!("j{i}")).await;
        first.get_or_insert(e["id"].clone());
    }
    // the 5th, sent twice side by side: on one flight, then (after leaving one) on two
    for (round, flights) in [(1, [&flight, &flight]), (2, [&flight, &other])] {
        if round == 2 {
            here.ok("waitlist.leave", json!({"id": first.take()})).await;
        }
        let (a, b) = tokio::join!(
            here.call(
                "waitlist.join",
                join_params(flights[0], 1, &format!("r{round}a"))
            ),
            there.call(
                "waitlist.join",
                join_params(flights[1], 1, &format!("r{round}b"))
            ),
        );
        let ok = [&a, &b]
            .iter()
            .filter(|r| r["result"]["entry"].is_object())
            .count();
        let refused = [&a, &b]
            .iter()
            .filter(|r| {
                r["error"]["data"]["reason"] == "invalid_state"
                    && r["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("waiting entries per user"))
            })
            .count();
        assert_eq!((ok, refused), (1, 1), "round {round}: {a} {b}");
    }
    let entries = here.ok("waitlist.list", json!({})).await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "waiting")
        .count();
    assert_eq!(entries, 5);
}

const ADMIN_PASSWORD: &str = "waitlist admin password";

async fn admin(url: &str) -> Client {
    let mut a = Client::connect(url).await;
    a.ok(
        "auth.login",
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    a
}

/// No booking may total more than the largest amount (`Money::MAX_CENTS`): a hold
/// of two seats at the largest fare, and a waitlist entry whose offer would be such a
/// hold, are `invalid_params`. Such a booking used to be stored, and then no read of
/// it (nor the next start) could decode it.
#[tokio::test]
async fn no_booking_or_offer_totals_more_than_the_largest_amount() {
    let mut s = Server::start_with(|c| {
        fast(c);
        c.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let mut ops = admin(&s.url()).await;
    let dep = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let at = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let top = json!({"amount": 100_000_000_000u64, "currency": "EUR"});
    let flight = ops
        .ok(
            "admin.flights.create",
            json!({"number": "JW8801", "from": "ZRH", "to": "VIE",
                   "departs_at": at(dep), "arrives_at": at(dep + time::Duration::hours(1)),
                   "aircraft": "E190", "fares": {"economy": top, "business": top}}),
        )
        .await["flight"]["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a = s.client().await;
    a.new_user().await;
    let seats = free_seats(&mut a, &flight, CABIN, 9).await;
    let two = a
        .call(
            "booking.hold",
            json!({"flight_id": flight, "seats": &seats[..2], "passengers": passengers(2), "request_id": "two"}),
        )
        .await;
    assert_eq!(two["error"]["data"]["reason"], "invalid_params", "{two}");
    // the business cabin held seat by seat (one seat is the largest amount, allowed)
    for seat in &seats {
        let mut c = s.client().await;
        c.new_user().await;
        hold(&mut c, &flight, std::slice::from_ref(seat), "one").await;
    }
    let pair = a.call("waitlist.join", join_params(&flight, 2, "w2")).await;
    assert_eq!(pair["error"]["data"]["reason"], "invalid_params", "{pair}");
    join(&mut a, &flight, "w1").await;
    // every booking reads back, after a restart too
    s.restart_with(|c| {
        fast(c);
        c.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let mut b = s.client().await;
    b.ok("flights.get", json!({"flight_id": flight})).await;
    s.stop().await;
}

/// Boards, then departs a flight (`admin.flights.update`).
async fn depart(ops: &mut Client, flight: &str) {
    for status in ["boarding", "departed"] {
        ops.ok(
            "admin.flights.update",
            json!({"flight_id": flight, "status": status}),
        )
        .await;
    }
}

/// Reads `waitlist.updated` pushes until one says the entry `id` is `status`.
async fn updated_to(c: &mut Client, id: &str, status: &str) -> Value {
    loop {
        let u = c.push("waitlist.updated").await;
        if u["entry"]["id"] == id && u["entry"]["status"] == status {
            return u["entry"].clone();
        }
    }
}

/// A flight that departs, or is cancelled, ends its line although no seat of it
/// changes: its waiting entries expire, and so does an offer not paid by then (it
/// used to stay `offered` until its hold ran out); their owners are told, and that is
/// durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_when_their_flight_departs_or_is_cancelled() {
    let with_admin = |c: &mut jetway::Config| {
        fast(c);
        c.admin_password = Some(ADMIN_PASSWORD.into());
    };
    let mut s = Server::start_with(with_admin).await;
    let mut ops = admin(&s.url()).await;
    let (mut seller, departing) = seller(&s.url()).await;
    let dep = |f: &Value| {
        time::OffsetDateTime::parse(
            f["departs_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let cancelled = seller.ok("flights.search", json!({"limit": 500})).await["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| dep(f) > later && f["flight_id"] != departing.as_str())
        .map(|f| f["flight_id"].as_str().unwrap().to_owned())
        .expect("a second flight two days out");
    let (last, _) = sell_out(&mut seller, &departing).await;
    // (sell_out's request ids are fixed: another seller for another flight)
    let (mut seller2, _) = self::seller(&s.url()).await;
    sell_out(&mut seller2, &cancelled).await;
    let mut a = s.client().await;
    let token = a.new_user().await;
    let first = join(&mut a, &departing, "d1").await;
    let second = join(&mut a, &departing, "d2").await;
    let third = join(&mut a, &cancelled, "c1").await;
    // a seat comes back: the first entry is offered it
    cancel(&mut seller, &last, "giveback").await;
    let offer = a.push("waitlist.offered").await;
    assert_eq!(offer["entry"]["id"], first["id"]);

    depart(&mut ops, &departing).await;
    for e in [&first, &second] {
        let id = e["id"].as_str().unwrap();
        let u = updated_to(&mut a, id, "expired").await;
        assert!(u.get("position").is_none(), "{u}");
    }
    assert_eq!(
        entry(&mut a, third["id"].as_str().unwrap()).await["status"],
        "waiting"
    );

    ops.ok(
        "admin.flights.cancel",
        json!({"flight_id": cancelled, "reason": "weather"}),
    )
    .await;
    updated_to(&mut a, third["id"].as_str().unwrap(), "expired").await;

    // durable: a restart finds them expired, and the user may wait elsewhere again
    s.restart_with(with_admin).await;
    let mut a = s.client().await;
    a.ok("auth.resume", json!({"token": token})).await;
    for e in [&first, &second, &third] {
        let got = entry(&mut a, e["id"].as_str().unwrap()).await;
        assert_eq!(got["status"], "expired", "{got}");
    }
    s.stop().await;
}

/// Two nodes on one etcd: when someone ahead leaves, the owners behind are told
/// their new position whichever node they are connected to.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_changes_reach_owners_on_every_node() {
    use common::cluster::{node_with_env, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("wlpos"));
    let flags = ["--insecure-fast-hashing", "--rate-limit", "0"];
    let env = [("JETWAY_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let nodes = [
        node_with_env(&etcd, &prefix, &flags, &env),
        node_with_env(&etcd, &prefix, &flags, &env),
    ];
    let (mut seller, flight) = seller(&nodes[0].url()).await;
    sell_out(&mut seller, &flight).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for (i, n) in [0, 1, 0].into_iter().enumerate() {
        let mut c = Client::connect(&nodes[n].url()).await;
        c.new_user().await;
        let e = join(&mut c, &flight, "j").await;
        assert_eq!(e["position"], i + 1);
        ids.push(e["id"].as_str().unwrap().to_owned());
        clients.push(c);
    }
    // the first leaves through node 0: the second (node 1) and third (node 0) move up
    clients[0].ok("waitlist.leave", json!({"id": ids[0]})).await;
    for k in 1..3 {
        let u = clients[k].push("waitlist.updated").await;
        assert_eq!(u["entry"]["id"], ids[k].as_str());
        assert_eq!(
            (
                u["entry"]["status"].as_str(),
                u["entry"]["position"].as_u64()
            ),
            (Some("waiting"), Some(k as u64))
        );
    }
    // the flight departs through node 1: every waiting entry expires, and is told so
    let mut ops = admin(&nodes[1].url()).await;
    depart(&mut ops, &flight).await;
    for k in 1..3 {
        updated_to(&mut clients[k], &ids[k], "expired").await;
        assert_eq!(entry(&mut clients[k], &ids[k]).await["status"], "expired");
    }
}

/// SIGKILL while freed seats are being offered: a seat cancelled just before the
/// kill is, after the restart and a retry of the cancel with its request id, either
/// offered exactly once or still the seller's (never both, never lost), no entry
/// gets two offers, and no freed seat is left available while someone waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_freeing_and_offering_loses_no_offer_and_doubles_none() {
    const ROUNDS: usize = 4;
    let dir = data_dir();
    let args = [
        "--insecure-fast-hashing",
        "--rate-limit",
        "0",
        "--hold-ttl",
        "600",
    ];
    let mut p = Proc::start(&dir, &args);
    let mut seller = Client::connect(&p.url()).await;
    let seller_token = seller.new_user().await;
    let flight = later_flight(&mut seller).await["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sell_out(&mut seller, &flight).await;
    let mine = seller.ok("bookings.list", json!({})).await["bookings"].clone();
    // one seat of each of ROUNDS confirmed bookings is cancelled, one per round
    let to_cancel: Vec<(String, String)> = mine
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "confirmed")
        .flat_map(|b| {
            let loc = b["locator"].as_str().unwrap().to_owned();
            b["seats"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| (loc.clone(), s["seat"].as_str().unwrap().to_owned()))
        })
        .take(ROUNDS)
        .collect();
    assert_eq!(to_cancel.len(), ROUNDS);
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..ROUNDS + 1 {
        let mut c = Client::connect(&p.url()).await;
        tokens.push(c.new_user().await);
        ids.push(
            join(&mut c, &flight, "j").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut rng_state = std::process::id() as u64;
    for (round, (loc, seat)) in to_cancel.iter().enumerate() {
        let params = json!({"locator": loc, "seats": [seat], "request_id": format!("k{round}")});
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "booking.cancel", "params": params});
        seller.send_text(&req.to_string()).await;
        // the kill lands anywhere from before the write to after the offer
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((rng_state >> 33) % 20_000);
        tokio::time::sleep(delay).await;
        p.kill9();
        p = Proc::start(&dir, &args);
        seller = Client::connect(&p.url()).await;
        seller
            .ok("auth.resume", json!({"token": seller_token}))
            .await;
        // the cancel again: done once, whether or not the first try was durable
        seller.ok("booking.cancel", params).await;

        let mut offered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            offered.clear();
            for (k, token) in tokens.iter().enumerate() {
                let mut c = Client::connect(&p.url()).await;
                c.ok("auth.resume", json!({"token": token})).await;
                let e = entry(&mut c, &ids[k]).await;
                let bookings = c.ok("bookings.list", json!({})).await["bookings"].clone();
                let bookings = bookings.as_array().unwrap();
                match e["status"].as_str().unwrap() {
                    "offered" => {
                        assert_eq!(bookings.len(), 1, "one offer per entry: {bookings:?}");
                        assert_eq!(bookings[0]["locator"], e["locator"]);
                        assert_eq!(bookings[0]["status"], "held");
                        offered.push(bookings[0]["seats"][0]["seat"].as_str().unwrap().to_owned());
                    }
                    "waiting" => assert!(bookings.is_empty(), "{bookings:?}"),
                    other => panic!("entry {} is {other}", ids[k]),
                }
            }
            if offered.len() == round + 1 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut expected: Vec<String> =
            to_cancel[..=round].iter().map(|(_, s)| s.clone()).collect();
        offered.sort();
        expected.sort();
        assert_eq!(
            offered, expected,
            "round {round}: each freed seat offered once"
        );
        let map = seller.ok("flights.get", json!({"flight_id": flight})).await;
        for s in &expected {
            assert_eq!(seat_status(&map, s), "held", "{s}");
        }
        let available = map["seats"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["cabin"] == CABIN && s["status"] == "available")
            .count();
        assert_eq!(available, 0, "no freed seat is left available");
    }
    p.kill9();
}

/// On etcd, a cancelled flight's long line (more entries than one etcd transaction
/// may write, `--max-txn-ops` 128 by default) still expires: every entry ends, and
/// each owner is told of each of its entries exactly once.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_line_of_a_cancelled_flight_expires_on_etcd() {
    use common::cluster::{node_with_env, Etcd};
    use jetway::domain::waitlist::MAX_WAITING_PER_USER;
    const ENTRIES: usize = 60;
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("wllong"));
    let flags = ["--insecure-fast-hashing", "--rate-limit", "0"];
    let node = node_with_env(
        &etcd,
        &prefix,
        &flags,
        &[("JETWAY_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    );
    let (mut seller, flight) = seller(&node.url()).await;
    sell_out(&mut seller, &flight).await;
    let mut owners = Vec::new();
    for u in 0..ENTRIES.div_ceil(MAX_WAITING_PER_USER) {
        let mut c = Client::connect(&node.url()).await;
        c.new_user().await;
        let mut ids = Vec::new();
        for k in 0..MAX_WAITING_PER_USER.min(ENTRIES - u * MAX_WAITING_PER_USER) {
            let e = join(&mut c, &flight, &format!("j{k}")).await;
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        owners.push((c, ids));
    }

    let mut ops = admin(&node.url()).await;
    ops.ok(
        "admin.flights.cancel",
        json!({"flight_id": flight, "reason": "weather"}),
    )
    .await;
    for (c, ids) in &mut owners {
        let mut told: HashMap<String, usize> = HashMap::new();
        while told.len() < ids.len() {
            let u = c.push("waitlist.updated").await;
            if u["entry"]["status"] == "expired" {
                let id = u["entry"]["id"].as_str().unwrap().to_owned();
                assert!(ids.contains(&id), "{u}");
                *told.entry(id).or_insert(0) += 1;
            }
        }
        assert!(
            told.values().all(|n| *n == 1),
            "each expiry told once: {told:?}"
        );
        for id in ids.iter() {
            assert_eq!(entry(c, id).await["status"], "expired");
        }
        let again = c
            .pushes
            .iter()
            .filter(|p| {
                p["method"] == "waitlist.updated"
                    && p["params"]["entry"]["status"] == "expired"
                    && ids
                        .iter()
                        .any(|id| p["params"]["entry"]["id"] == id.as_str())
            })
            .count();
        assert_eq!(again, 0, "each expiry is told once: {:?}", c.pushes);
    }
}

/// A change of the line that offers seats takes the flight's next version like any
/// seat change: here a leave serves an entry that waited while a seat was free (the
/// state a join and a release through two nodes at the same moment can leave; made
/// here by writing the entries straight to the store). The offered seat is held on
/// every map, watchers see it, and nobody else can hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_offered_by_a_change_of_the_line_are_held_on_the_map() {
    let s = Server::start_with(fast).await;
    let (mut other, flight) = seller(&s.url()).await;
    let mut waiter = Client::connect(&s.url()).await;
    let waiter_id = waiter.register(&unique_name("w")).await["user"]["id"].clone();
    let mut leaver = Client::connect(&s.url()).await;
    let leaver_id = leaver.register(&unique_name("l")).await["user"]["id"].clone();
    let mut watcher = Client::connect(&s.url()).await;
    let before = watcher
        .ok("seats.subscribe", json!({"flight_id": flight}))
        .await["version"]
        .as_u64()
        .unwrap();
    let entry = |id: &str, user: &Value, at: i64| jetway::domain::WaitlistEntry {
        id: id.into(),
        user_id: jetway::domain::UserId(user.as_u64().unwrap()),
        flight_id: jetway::domain::FlightId::parse(&flight).unwrap(),
        cabin: jetway::domain::Cabin::Business,
        passengers: vec!["Wai Ting".into()],
        status: jetway::domain::WaitlistStatus::Waiting,
        created_at: at,
        updated_at: at,
        locator: None,
    };
    let now = jetway::domain::now_ms();
    let batch = jetway::store::Batch {
        waitlist: vec![
            entry("wl-test-leaver", &leaver_id, now - 2),
            entry("wl-test-waiter", &waiter_id, now - 1),
        ],
        ..Default::default()
    };
    s.app().store.write(&batch).unwrap();

    leaver
        .ok("waitlist.leave", json!({"id": "wl-test-leaver"}))
        .await;
    let offered = wait_status(&mut waiter, "wl-test-waiter", "offered").await;
    let loc = offered["locator"].as_str().unwrap().to_owned();
    let b = waiter.ok("booking.get", json!({"locator": loc})).await;
    let seat = b["booking"]["seats"][0]["seat"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = watcher.push("seats.changed").await;
    assert_eq!(p["version"].as_u64(), Some(before + 1), "{p}");
    assert_eq!(cabin_change(&p).0, vec![(seat.clone(), "held".to_owned())]);
    let map = other.ok("flights.get", json!({"flight_id": flight})).await;
    assert_eq!(map["version"].as_u64(), Some(before + 1));
    let shown = map["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["seat"] == seat)
        .unwrap()
        .clone();
    assert_eq!(shown["status"], "held", "{shown}");
    assert_eq!(
        other
            .reason(
                "booking.hold",
                json!({"flight_id": flight, "seats": [seat], "passengers": passengers(1), "request_id": "steal"}),
            )
            .await,
        "seat_unavailable"
    );
    s.stop().await;
}

/// The same `waitlist.join` request sent through two nodes at once makes one entry:
/// both get the same answer. (A join moves no seat, so the flight's version does not
/// order the twins; the first remembered reply does.)
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_sent_through_two_nodes_at_once_makes_one_entry() {
    let (_etcd, nodes, mut seller, flight) =
        two_nodes_and_a_flight(&["--insecure-fast-hashing"]).await;
    sell_out(&mut seller, &flight).await;
    let mut a = Client::connect(&nodes[0].url()).await;
    let token = a.new_user().await;
    let mut b = Client::connect(&nodes[1].url()).await;
    b.ok("auth.resume", json!({"token": token})).await;
    for i in 0..4 {
        let p = join_params(&flight, 1, &format!("twin{i}"));
        let (ra, rb) = tokio::join!(
            a.call("waitlist.join", p.clone()),
            b.call("waitlist.join", p)
        );
        let (ea, eb) = (&ra["result"]["entry"], &rb["result"]["entry"]);
        assert!(ea["id"].is_string(), "{ra}");
        assert_eq!(ea["id"], eb["id"], "round {i}: {ra} {rb}");
        let waiting = a.ok("waitlist.list", json!({})).await["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "waiting")
            .count();
        assert_eq!(waiting, 1, "round {i}");
        a.ok("waitlist.leave", json!({"id": ea["id"]})).await;
    }
}
