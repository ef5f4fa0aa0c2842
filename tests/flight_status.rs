//! Flight status and times against real servers: `admin.flights.update` (estimates,
//! boarding, departure; forward only), what each status allows, the automatic
//! departure by the clock, the `flight.changed` push once per connection to seat-map
//! subscribers and booking owners (who get no `booking.updated` for it), durability
//! across a restart, and the same on the etcd store across two nodes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN_PASSWORD: &str = "airline ops 2026";

async fn admin_server() -> Server {
    Server::start_with(|c| c.admin_password = Some(ADMIN_PASSWORD.into())).await
}

async fn admin_on(url: &str) -> Client {
    let mut c = Client::connect(url).await;
    c.ok(
        "auth.login",
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    c
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn parse(s: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        s.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
}

/// A new flight LHR-VIE departing `minutes` from now.
async fn create(a: &mut Client, number: &str, minutes: i64) -> Value {
    create_in(a, number, time::Duration::minutes(minutes)).await
}

/// A new flight LHR-VIE departing `after` from now.
async fn create_in(a: &mut Client, number: &str, after: time::Duration) -> Value {
    let dep = time::OffsetDateTime::now_utc() + after;
    let r = a
        .ok(
            "admin.flights.create",
            json!({
                "number": number, "from": "LHR", "to": "VIE",
                "departs_at": rfc3339(dep),
                "arrives_at": rfc3339(dep + time::Duration::minutes(140)),
                "aircraft": "A320",
                "fares": {"economy": {"amount": 15_400, "currency": "EUR"},
                          "business": {"amount": 53_900, "currency": "EUR"}},
            }),
        )
        .await;
    r["flight"].clone()
}

/// A server with an admin, and the id of a new flight departing `after` from now.
async fn with_flight(number: &str, after: time::Duration) -> (Server, Client, String) {
    let s = admin_server().await;
    let mut admin = admin_on(&s.url()).await;
    let flight = create_in(&mut admin, number, after).await;
    let id = flight["flight_id"].as_str().unwrap().to_owned();
    (s, admin, id)
}

/// `admin.flights.update {status}`: the updated flight.
async fn set_status(admin: &mut Client, id: &str, status: &str) -> Value {
    admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "status": status}),
        )
        .await["flight"]
        .clone()
}

/// A new passenger's connection, and `n` free economy seats of the flight.
async fn passenger(s: &Server, id: &str, n: usize) -> (Client, Vec<String>) {
    let mut c = s.client().await;
    c.new_user().await;
    let seats = free_seats(&mut c, id, "economy", n).await;
    (c, seats)
}

fn delayed_by(f: &Value, minutes: i64) -> String {
    rfc3339(parse(&f["departs_at"]) + time::Duration::minutes(minutes))
}

/// The next `flight.changed` push of a client.
async fn changed(c: &mut Client) -> Value {
    c.push("flight.changed").await
}

/// True when no `flight.changed` arrived so far: a round trip first, so that any
/// push queued before it has been read.
async fn no_flight_push(c: &mut Client) -> bool {
    c.pushes_so_far("flight.changed").await.is_empty()
}

#[tokio::test]
async fn updates_move_the_status_forward_and_reach_each_connection_once() {
    let mut s = admin_server().await;
    let mut admin = admin_on(&s.url()).await;
    let flight = create(&mut admin, "JW7001", 24 * 60).await;
    let id = flight["flight_id"].as_str().unwrap().to_owned();
    assert_eq!(flight["status"], "scheduled");
    assert_eq!(flight["from_tz"], "Europe/London");
    assert_eq!(flight["to_tz"], "Europe/Vienna");
    assert!(flight.get("estimated_departs_at").is_none());

    // an owner of a live booking who also watches the seat map, a watcher, a stranger
    let (mut owner, seats) = passenger(&s, &id, 2).await;
    let booking = hold(&mut owner, &id, &seats[..1], "h1").await;
    owner.ok("seats.subscribe", json!({"flight_id": id})).await;
    let mut watcher = s.client().await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": id}))
        .await;
    let mut stranger = s.client().await;
    stranger.new_user().await;
    // what the hold pushed is before this round trip's reply
    owner.ok("flights.airports", json!({})).await;
    owner.pushes.clear();

    // a delay: scheduled -> delayed, the schedule stays, the estimate is added
    let est = delayed_by(&flight, 40);
    let r = admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": est, "reason": "late inbound aircraft"}),
        )
        .await;
    assert_eq!(r["flight"]["status"], "delayed");
    assert_eq!(r["flight"]["departs_at"], flight["departs_at"]);
    assert_eq!(
        parse(&r["flight"]["estimated_departs_at"]),
        parse(&json!(est))
    );
    for c in [&mut owner, &mut watcher] {
        let p = changed(c).await;
        assert_eq!(p["flight"]["flight_id"], id);
        assert_eq!(p["flight"]["status"], "delayed");
        assert_eq!(p["reason"], "late inbound aircraft");
    }
    assert!(no_flight_push(&mut stranger).await);
    // the owner's booking itself did not change: no booking.updated
    let updates = owner.pushes_so_far("booking.updated").await;
    assert!(updates.is_empty(), "{updates:?}");

    // a delayed flight can still be booked and paid
    let second = hold(&mut owner, &id, &seats[1..2], "h2").await;
    owner
        .ok(
            "booking.pay",
            json!({"locator": booking["locator"], "payment_method": "pm_card_visa", "request_id": "p1"}),
        )
        .await;

    // the estimate back on schedule: delayed -> scheduled
    let r = admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": flight["departs_at"]}),
        )
        .await;
    assert_eq!(r["flight"]["status"], "scheduled");
    // exactly one push per connection: the next one is this update, not a repeat
    for c in [&mut owner, &mut watcher] {
        assert_eq!(changed(c).await["flight"]["status"], "scheduled");
    }

    // boarding closes holds, payments and seat changes
    let f = set_status(&mut admin, &id, "boarding").await;
    assert_eq!(f["status"], "boarding");
    assert_eq!(changed(&mut watcher).await["flight"]["status"], "boarding");
    let more = free_seats(&mut owner, &id, "economy", 1).await;
    let e = owner
        .err(
            "booking.hold",
            json!({"flight_id": id, "seats": more, "passengers": passengers(1), "request_id": "h3"}),
        )
        .await;
    assert_eq!(e["data"]["reason"], "invalid_state", "{e}");
    let e = owner
        .err(
            "booking.pay",
            json!({"locator": second["locator"], "payment_method": "pm_card_visa", "request_id": "p2"}),
        )
        .await;
    assert_eq!(e["data"]["reason"], "invalid_state", "{e}");

    // forward only; an unknown status is invalid_params
    for (status, reason) in [
        ("scheduled", "invalid_state"),
        ("delayed", "invalid_state"),
        ("cancelled", "invalid_state"),
        ("boarding", "invalid_state"),
        ("landed", "invalid_params"),
    ] {
        let e = admin
            .err(
                "admin.flights.update",
                json!({"flight_id": id, "status": status}),
            )
            .await;
        assert_eq!(e["data"]["reason"], reason, "{status}: {e}");
    }
    // every field but flight_id is optional: nothing to change answers the flight
    // as it is, and pushes nothing (the owner's pushes below are boarding, then
    // the departure, with nothing between)
    for nothing in [
        json!({"flight_id": id}),
        json!({"flight_id": id, "reason": "a note"}),
    ] {
        let r = admin.ok("admin.flights.update", nothing).await;
        assert_eq!(r["flight"]["status"], "boarding", "{r}");
    }
    assert_eq!(
        admin
            .reason(
                "admin.flights.update",
                json!({"flight_id": id, "reason": "\u{7}"})
            )
            .await,
        "invalid_params"
    );

    // departed: nothing more, not even a cancellation
    let f = set_status(&mut admin, &id, "departed").await;
    assert_eq!(f["status"], "departed");
    assert_eq!(changed(&mut owner).await["flight"]["status"], "boarding");
    assert_eq!(changed(&mut owner).await["flight"]["status"], "departed");
    let e = admin
        .err(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": est}),
        )
        .await;
    assert_eq!(e["data"]["reason"], "invalid_state");
    // any update of a departed flight, even one whose params would be refused
    for bad in [
        json!({"flight_id": id}),
        json!({"flight_id": id, "estimated_departs_at": "not a time"}),
        json!({"flight_id": id, "estimated_departs_at": "2999-01-01T00:00:00Z"}),
    ] {
        let e = admin.err("admin.flights.update", bad.clone()).await;
        assert_eq!(e["data"]["reason"], "invalid_state", "{bad}: {e}");
    }
    let e = admin
        .err(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "too late"}),
        )
        .await;
    assert_eq!(e["data"]["reason"], "invalid_state");

    // the status and the estimate are stored
    s.restart().await;
    let mut c = s.client().await;
    let g = c.ok("flights.get", json!({"flight_id": id})).await;
    assert_eq!(g["flight"]["status"], "departed");
    assert_eq!(
        parse(&g["flight"]["estimated_departs_at"]),
        parse(&flight["departs_at"])
    );
    // non-admins are refused
    c.new_user().await;
    assert_eq!(
        c.reason(
            "admin.flights.update",
            json!({"flight_id": id, "status": "boarding"})
        )
        .await,
        "forbidden"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_cancel_is_pushed_with_its_reason_and_works_while_boarding() {
    let (s, mut admin, id) = with_flight("JW7002", time::Duration::hours(24)).await;
    let (mut owner, seats) = passenger(&s, &id, 1).await;
    hold(&mut owner, &id, &seats, "h1").await;
    let mut watcher = s.client().await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": id}))
        .await;
    set_status(&mut admin, &id, "boarding").await;
    assert_eq!(changed(&mut owner).await["flight"]["status"], "boarding");
    assert_eq!(changed(&mut watcher).await["flight"]["status"], "boarding");
    let r = admin
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "technical fault"}),
        )
        .await;
    assert_eq!(r["flight"]["status"], "cancelled");
    assert_eq!(r["released"], 1);
    for c in [&mut owner, &mut watcher] {
        let p = changed(c).await;
        assert_eq!(p["flight"]["status"], "cancelled");
        assert_eq!(p["reason"], "technical fault");
    }
    s.stop().await;
}

/// The contract's table for `boarding` and `departed` through the methods themselves:
/// a boarding flight takes check-ins but no seat changes; a departed one neither.
#[tokio::test]
async fn boarding_takes_check_ins_but_not_seat_changes() {
    // three hours out: check-in is open (it closes 45 minutes before departure)
    let (s, mut admin, id) = with_flight("JW7005", time::Duration::hours(3)).await;
    let (mut owner, seats) = passenger(&s, &id, 3).await;
    let loc = paid(&mut owner, &id, &seats[..2], "h1", "p1").await;
    set_status(&mut admin, &id, "boarding").await;
    let change = json!({"locator": loc, "from": seats[1], "to": seats[2], "request_id": "s1"});
    assert_eq!(
        owner.reason("booking.change_seat", change.clone()).await,
        "invalid_state"
    );
    let r = owner
        .ok(
            "booking.check_in",
            json!({"locator": loc, "seats": [seats[0]], "request_id": "c1"}),
        )
        .await;
    assert_eq!(r["boarding_passes"].as_array().map(Vec::len), Some(1));
    set_status(&mut admin, &id, "departed").await;
    assert_eq!(
        owner
            .reason(
                "booking.check_in",
                json!({"locator": loc, "seats": [seats[1]], "request_id": "c2"}),
            )
            .await,
        "invalid_state"
    );
    s.stop().await;
}

/// A delayed flight whose schedule has passed but whose estimate has not is still
/// upcoming: listed by `flights.search {}` without a date, bookable, not departed.
#[tokio::test]
async fn a_delayed_flight_past_its_schedule_is_still_upcoming() {
    let now = time::OffsetDateTime::now_utc();
    let (s, mut admin, id) = with_flight("JW7006", time::Duration::seconds(3)).await;
    let est = rfc3339(now + time::Duration::hours(2));
    let r = admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": est}),
        )
        .await;
    assert_eq!(r["flight"]["status"], "delayed");
    // until the schedule has passed (and a departure tick with it)
    let passed = now + time::Duration::seconds(9);
    while time::OffsetDateTime::now_utc() < passed {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut c, seats) = passenger(&s, &id, 1).await;
    let found = c
        .ok(
            "flights.search",
            json!({"from": "LHR", "to": "VIE", "limit": 100}),
        )
        .await;
    let f = found["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flight_id"] == id.as_str())
        .cloned()
        .expect("the delayed flight is upcoming");
    assert_eq!(f["status"], "delayed");
    hold(&mut c, &id, &seats, "h1").await;
    s.stop().await;
}

#[tokio::test]
async fn a_flight_whose_time_has_passed_is_marked_departed_and_pushed() {
    let (s, mut admin, id) = with_flight("JW7003", time::Duration::hours(1)).await;
    let mut watcher = s.client().await;
    watcher
        .ok("seats.subscribe", json!({"flight_id": id}))
        .await;
    // an estimate two seconds ahead (earlier than the schedule): it stays scheduled
    let soon = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::seconds(2));
    let r = admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": soon}),
        )
        .await;
    assert_eq!(r["flight"]["status"], "scheduled");
    assert_eq!(changed(&mut watcher).await["flight"]["status"], "scheduled");
    let started = std::time::Instant::now();
    let p = changed(&mut watcher).await;
    assert_eq!(p["flight"]["status"], "departed");
    assert!(started.elapsed() < Duration::from_secs(20));
    let (mut c, seats) = passenger(&s, &id, 1).await;
    let e = c
        .err(
            "booking.hold",
            json!({"flight_id": id, "seats": seats, "passengers": passengers(1), "request_id": "late"}),
        )
        .await;
    assert_eq!(e["data"]["reason"], "invalid_state");
    s.stop().await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_an_update_through_one_node_is_stored_and_pushed_by_the_other() {
    use common::cluster::{node_with_env, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("fs"));
    let envs = [("JETWAY_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let start = || tokio::task::block_in_place(|| node_with_env(&etcd, &prefix, &[], &envs));
    let (a, b) = (start(), start());
    let mut admin = admin_on(&a.url()).await;
    let flight = create(&mut admin, "JW7004", 24 * 60).await;
    let id = flight["flight_id"].as_str().unwrap().to_owned();
    let mut watcher = Client::connect(&b.url()).await;
    // the new flight reaches node B through the feed
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = watcher
            .call("seats.subscribe", json!({"flight_id": id}))
            .await;
        if r.get("result").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": id, "estimated_departs_at": delayed_by(&flight, 25)}),
        )
        .await;
    let p = changed(&mut watcher).await;
    assert_eq!(p["flight"]["status"], "delayed");
    let g = watcher.ok("flights.get", json!({"flight_id": id})).await;
    assert_eq!(g["flight"]["status"], "delayed");
    // a cancel through B reaches a watcher on A, once
    let mut admin_b = admin_on(&b.url()).await;
    admin.ok("seats.subscribe", json!({"flight_id": id})).await;
    admin_b
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "strike"}),
        )
        .await;
    assert_eq!(changed(&mut admin).await["flight"]["status"], "cancelled");
    assert_eq!(changed(&mut watcher).await["flight"]["status"], "cancelled");
    assert!(no_flight_push(&mut watcher).await);
    assert!(no_flight_push(&mut admin).await);
}

/// A confirmed booking is not refunded once its flight counts as departed, whether its
/// estimated departure passed or the airline marked it so, before the schedule's time.
#[tokio::test]
async fn a_departed_flight_refunds_no_cancellation() {
    for how in ["estimate", "marked"] {
        let (s, mut admin, id) = with_flight("JW7011", time::Duration::hours(3)).await;
        let (mut owner, seats) = passenger(&s, &id, 1).await;
        let loc = paid(&mut owner, &id, &seats, "h", "p").await;
        let f = if how == "estimate" {
            let past = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
            let update = json!({"flight_id": id, "estimated_departs_at": past});
            admin.ok("admin.flights.update", update).await["flight"].clone()
        } else {
            set_status(&mut admin, &id, "boarding").await;
            set_status(&mut admin, &id, "departed").await
        };
        assert_eq!(f["status"], "departed", "{how}");
        let cancel = json!({"locator": loc, "request_id": "c"});
        assert_eq!(
            owner.reason("booking.cancel", cancel).await,
            "invalid_state",
            "{how}"
        );
        let b = owner.ok("booking.get", json!({"locator": loc})).await;
        assert_eq!(b["booking"]["status"], "confirmed", "{how}");
        assert!(b["booking"].get("refund").is_none(), "{how}");
        let orders = owner.ok("orders.list", json!({})).await;
        assert_eq!(orders["orders"][0]["status"], "paid", "{how}");
        s.stop().await;
    }
}
