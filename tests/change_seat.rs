//! `booking.change_seat`: one version frees `from` and books `to`, pushed live, and
//! every way it can be refused leaves the map untouched.

mod common;

use common::*;
use serde_json::{json, Value};

struct Setup {
    s: Server,
    owner: Client,
    watcher: Client,
    flight_id: String,
    locator: String,
    /// The booking's two economy seats.
    seats: Vec<String>,
    version: u64,
}

async fn setup() -> Setup {
    let s = Server::start().await;
    let mut owner = s.client().await;
    owner.new_user().await;
    let f = later_flight(&mut owner).await;
    let flight_id = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut owner, &flight_id, "economy", 2).await;
    let locator = paid(&mut owner, &flight_id, &seats, "h1", "p1").await;
    owner.pushes.clear();
    let mut watcher = s.client().await;
    let sub = watcher
        .ok("seats.subscribe", json!({"flight_id": flight_id}))
        .await;
    let version = sub["version"].as_u64().unwrap();
    Setup {
        s,
        owner,
        watcher,
        flight_id,
        locator,
        seats,
        version,
    }
}

fn change(loc: &str, from: &str, to: &str, rid: &str) -> Value {
    json!({"locator": loc, "from": from, "to": to, "request_id": rid})
}

async fn version(c: &mut Client, flight_id: &str) -> u64 {
    let g = c.ok("flights.get", json!({"flight_id": flight_id})).await;
    g["version"].as_u64().unwrap()
}

#[tokio::test]
async fn one_version_frees_from_and_books_to_and_is_pushed() {
    let mut t = setup().await;
    let to = free_seats(&mut t.owner, &t.flight_id, "economy", 1).await[0].clone();
    let r = t
        .owner
        .ok(
            "booking.change_seat",
            change(&t.locator, &t.seats[0], &to, "s1"),
        )
        .await;
    let seats: Vec<&str> = r["booking"]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seat"].as_str().unwrap())
        .collect();
    assert!(seats.contains(&to.as_str()) && seats.contains(&t.seats[1].as_str()));
    assert!(!seats.contains(&t.seats[0].as_str()));
    assert_eq!(r["booking"]["status"], "confirmed");

    // the watcher: exactly one version with both seats
    let ch = t.watcher.push("seats.changed").await;
    assert_eq!(ch["version"].as_u64().unwrap(), t.version + 1);
    let mut got: Vec<(String, String)> = ch["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["seat"].as_str().unwrap().to_owned(),
                x["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (t.seats[0].clone(), "available".to_owned()),
        (to.clone(), "booked".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    // cabin counts do not move: one seat freed, one taken
    let eco_before = ch["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cabin"] == "economy")
        .unwrap()["seats_available"]
        .clone();
    let g = t
        .owner
        .ok("flights.get", json!({"flight_id": t.flight_id}))
        .await;
    assert_eq!(g["version"].as_u64().unwrap(), t.version + 1);
    let eco = g["flight"]["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cabin"] == "economy")
        .unwrap()["seats_available"]
        .clone();
    assert_eq!(eco, eco_before);

    // the owner hears of it
    let up = t.owner.push("booking.updated").await;
    assert_eq!(up["booking"]["locator"], t.locator.as_str());
    assert_eq!(up["booking"]["seats"], r["booking"]["seats"]);

    // the same request id replays the reply and changes nothing
    let again = t
        .owner
        .ok(
            "booking.change_seat",
            change(&t.locator, &t.seats[0], &to, "s1"),
        )
        .await;
    assert_eq!(again, r);
    assert_eq!(version(&mut t.owner, &t.flight_id).await, t.version + 1);
    // and the history says what happened
    let h = t.owner.ok("history.list", json!({"limit": 1})).await;
    assert_eq!(h["events"][0]["type"], "seat_changed");
    assert_eq!(h["events"][0]["from"], t.seats[0].as_str());
    assert_eq!(h["events"][0]["to"], to.as_str());
    t.s.stop().await;
}

#[tokio::test]
async fn refusals_change_nothing() {
    let mut t = setup().await;
    let (loc, from) = (t.locator.clone(), t.seats[0].clone());
    // a seat someone else holds
    let mut other = t.s.client().await;
    other.new_user().await;
    let taken = free_seats(&mut other, &t.flight_id, "economy", 1).await;
    let ob = hold(&mut other, &t.flight_id, &taken, "h1").await;
    let v = t.version + 1;
    let e = t
        .owner
        .err("booking.change_seat", change(&loc, &from, &taken[0], "s1"))
        .await;
    assert_eq!(e["data"]["reason"], "seat_unavailable");
    assert_eq!(e["data"]["seats"], json!([taken[0]]));
    // the booking's own other seat is not free either
    assert_eq!(
        t.owner
            .reason(
                "booking.change_seat",
                change(&loc, &from, &t.seats[1], "s2")
            )
            .await,
        "seat_unavailable"
    );
    // no such seat on the aircraft, or not a seat at all
    for bad in ["99K", "ZZ"] {
        let e = t
            .owner
            .err("booking.change_seat", change(&loc, &from, bad, "s3"))
            .await;
        assert_eq!(e["data"]["reason"], "invalid_seat", "{bad}");
        assert_eq!(e["data"]["seats"], json!([bad]));
    }
    // a business seat for an economy passenger
    let biz = free_seats(&mut t.owner, &t.flight_id, "business", 1).await;
    assert_eq!(
        t.owner
            .reason("booking.change_seat", change(&loc, &from, &biz[0], "s4"))
            .await,
        "invalid_params"
    );
    // `from` is not on the booking
    let free = free_seats(&mut t.owner, &t.flight_id, "economy", 1).await;
    assert_eq!(
        t.owner
            .reason(
                "booking.change_seat",
                change(&loc, &taken[0], &free[0], "s5")
            )
            .await,
        "invalid_params"
    );
    // a hold cannot change seats (only a confirmed booking)
    let ob_loc = ob["locator"].as_str().unwrap();
    let free2 = free_seats(&mut other, &t.flight_id, "economy", 1).await;
    assert_eq!(
        other
            .reason(
                "booking.change_seat",
                change(ob_loc, &taken[0], &free2[0], "s1")
            )
            .await,
        "invalid_state"
    );
    // someone else's booking does not exist for you
    assert_eq!(
        other
            .reason("booking.change_seat", change(&loc, &from, &free2[0], "s2"))
            .await,
        "not_found"
    );
    assert_eq!(
        other
            .reason(
                "booking.change_seat",
                change("ZZZZZZ", &from, &free2[0], "s3")
            )
            .await,
        "not_found"
    );
    // anonymous
    let mut anon = t.s.client().await;
    assert_eq!(
        anon.reason("booking.change_seat", change(&loc, &from, &free2[0], "s1"))
            .await,
        "unauthenticated"
    );
    // a refunded booking cannot change seats
    t.owner
        .ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c1"}),
        )
        .await;
    assert_eq!(
        t.owner
            .reason("booking.change_seat", change(&loc, &from, &free2[0], "s6"))
            .await,
        "invalid_state"
    );

    // only the other hold and the cancellation made versions; the booking kept its seats
    // until it was cancelled
    assert_eq!(version(&mut t.owner, &t.flight_id).await, v + 1);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(t.watcher.push("seats.changed").await);
    }
    assert_eq!(seen[0]["version"].as_u64().unwrap(), v);
    assert_eq!(
        seen[0]["seats"],
        json!([{"seat": taken[0], "status": "held"}])
    );
    assert_eq!(seen[1]["version"].as_u64().unwrap(), v + 1);
    let mut freed: Vec<&str> = seen[1]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seat"].as_str().unwrap())
        .collect();
    freed.sort();
    let mut own: Vec<&str> = t.seats.iter().map(String::as_str).collect();
    own.sort();
    assert_eq!(freed, own);
    t.s.stop().await;
}

/// A seat change decided on a copy of the store that has not seen the booking's
/// refund opening yet (on a cluster: the passenger's cancel of that seat, through
/// another node a moment before) is refused by its write, not made beside the refund:
/// the refund names the seat, and with the seat moved it could never be finished (the
/// booking jammed, every cancel and retry refused). Before, both were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_change_never_lands_beside_a_refund_opened_meanwhile() {
    use common::faulty::{faulty_app_paying, flight_and_seats, register, Wire};
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    use std::sync::atomic::Ordering::SeqCst;
    let gateway = std::sync::Arc::new(common::gateway::CountingGateway::default());
    gateway.fail_refunds.store(true, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app_paying(dir.path(), |_| {}, gateway.clone()).await;
    let user = register(&app, "ada").await.unwrap();
    let (flight, seats) = flight_and_seats(&app, 3);
    let hold = json!({
        "flight_id": flight, "seats": [seats[0], seats[1]], "request_id": "h1",
        "passengers": [{"name": "Ada"}, {"name": "Bea"}],
    });
    let held = app.hold(&user, decode(hold).unwrap()).await.wire().unwrap();
    let loc = held["booking"]["locator"].as_str().unwrap().to_owned();
    let pay = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"});
    app.pay(&user, decode(pay).unwrap()).await.wire().unwrap();
    // the cancel's refund is opened, and stays open: the gateway is down
    let cancel = json!({"locator": loc, "seats": [seats[0]], "request_id": "c1"});
    let cancelled = app.cancel(&user, decode(cancel).unwrap()).await.wire();
    assert!(cancelled.is_err(), "{cancelled:?}");
    let locator = jetway::domain::Locator::parse(&loc).unwrap();
    let open = || store.open_refund(locator.as_str()).unwrap();
    assert_eq!(open().unwrap().seats.len(), 1);

    store.hide_open_refunds.store(true, SeqCst);
    let change = json!({"locator": loc, "from": seats[0], "to": seats[2], "request_id": "s1"});
    let changed = app.change_seat(&user, decode(change).unwrap()).await.wire();
    store.hide_open_refunds.store(false, SeqCst);
    assert!(changed.is_err(), "changed beside the refund: {changed:?}");
    let b = store.booking(&locator).unwrap().unwrap();
    let on_booking: Vec<String> = b.seats.iter().map(|s| s.seat.to_string()).collect();
    assert!(on_booking.contains(&seats[0]), "{on_booking:?}");
    assert!(!on_booking.contains(&seats[2]), "{on_booking:?}");
    assert_eq!(open().unwrap().seats[0].to_string(), seats[0]);

    // the refund can still be finished once the gateway is back
    gateway.fail_refunds.store(false, SeqCst);
    let again = json!({"locator": loc, "seats": [seats[0]], "request_id": "c1"});
    app.cancel(&user, decode(again).unwrap())
        .await
        .wire()
        .unwrap();
    assert!(open().is_none());
}
