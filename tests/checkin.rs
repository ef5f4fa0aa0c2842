//! `booking.check_in` and `booking.boarding_passes` against real servers: the window,
//! partial check-in, sequence numbers in check-in order that survive restarts and
//! are never reused, idempotency, other users' bookings, the seat of a checked-in
//! passenger, cancellation voiding the pass, and the same numbering through two
//! nodes on the etcd store.

mod common;

use common::*;
use serde_json::{json, Value};

/// A scheduled flight whose check-in is open with the default window, well inside it
/// (departs in 2 to 28 hours).
async fn open_flight(c: &mut Client) -> String {
    let hours = time::Duration::hours;
    let f = departing_within(c, hours(2), hours(28))
        .await
        .expect("the demo schedule has a flight in the check-in window");
    f["flight_id"].as_str().unwrap_or_default().to_owned()
}

const NAMES: [&str; 3] = ["Ada Lovelace", "Émilie du Châtelet", "Alan Turing"];

/// A confirmed booking of `n` economy seats (passengers from [`NAMES`]); its
/// locator and seats.
async fn confirmed(c: &mut Client, flight: &str, n: usize, rid: &str) -> (String, Vec<String>) {
    let seats = free_seats(c, flight, "economy", n).await;
    let names: Vec<Value> = NAMES
        .iter()
        .cycle()
        .take(n)
        .map(|n| json!({"name": n}))
        .collect();
    let b = c
        .ok(
            "booking.hold",
            json!({"flight_id": flight, "seats": seats, "passengers": names, "request_id": format!("{rid}-hold")}),
        )
        .await;
    let loc = b["booking"]["locator"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    c.ok(
        "booking.pay",
        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": format!("{rid}-pay")}),
    )
    .await;
    (loc, seats)
}

fn check_in(loc: &str, seats: Option<&[String]>, rid: &str) -> Value {
    let mut p = json!({"locator": loc, "request_id": rid});
    if let Some(s) = seats {
        p["seats"] = json!(s);
    }
    p
}

/// (seat, sequence) of each pass.
fn numbers(passes: &Value) -> Vec<(String, u64)> {
    passes
        .as_array()
        .expect("boarding_passes")
        .iter()
        .map(|p| {
            (
                p["seat"].as_str().unwrap_or_default().to_owned(),
                p["sequence"].as_u64().expect("sequence"),
            )
        })
        .collect()
}

/// The `checked_in` flag of each seat of a booking, in order.
fn flags(booking: &Value) -> Vec<bool> {
    booking["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .map(|s| s["checked_in"].as_bool().expect("checked_in"))
        .collect()
}

async fn login(s: &Server, name: &str) -> Client {
    let mut c = s.client().await;
    c.ok(
        "auth.login",
        json!({"username": name, "password": PASSWORD}),
    )
    .await;
    c
}

#[tokio::test]
async fn the_window_and_the_booking_state_decide_and_numbers_survive_restarts() {
    let mut s = Server::start().await;
    let name = unique_name("ck");
    let mut c = s.client().await;
    c.register(&name).await;
    let flight = open_flight(&mut c).await;
    let (loc, seats) = confirmed(&mut c, &flight, 2, "a").await;
    let r = c
        .ok("booking.check_in", check_in(&loc, Some(&seats[..1]), "c1"))
        .await;
    assert_eq!(numbers(&r["boarding_passes"]), [(seats[0].clone(), 1)]);

    // more than 30 hours out: closed
    let far = later_flight(&mut c).await["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (far_loc, _) = confirmed(&mut c, &far, 1, "b").await;
    let e = c
        .err("booking.check_in", check_in(&far_loc, None, "c2"))
        .await;
    assert_eq!(e["data"]["reason"], "checkin_closed", "{e}");
    assert_eq!(e["code"], -32014);
    // a hold is not checked in
    let one = free_seats(&mut c, &flight, "economy", 1).await;
    let held = hold(&mut c, &flight, &one, "h").await;
    let held_loc = held["locator"].as_str().unwrap();
    assert_eq!(
        c.reason("booking.check_in", check_in(held_loc, None, "c3"))
            .await,
        "invalid_state"
    );

    // with check-in opening an hour before departure, this flight is not open yet;
    // its passes can still be read
    s.restart_with(|c| c.checkin_opens = 1).await;
    let mut c = login(&s, &name).await;
    assert_eq!(
        c.reason("booking.check_in", check_in(&loc, None, "c4"))
            .await,
        "checkin_closed"
    );
    let r = c
        .ok("booking.boarding_passes", json!({"locator": loc}))
        .await;
    assert_eq!(numbers(&r["boarding_passes"]), [(seats[0].clone(), 1)]);

    // and with the default window again, the numbering goes on where it stopped
    s.restart().await;
    let mut c = login(&s, &name).await;
    let r = c.ok("booking.check_in", check_in(&loc, None, "c5")).await;
    assert_eq!(
        numbers(&r["boarding_passes"]),
        [(seats[0].clone(), 1), (seats[1].clone(), 2)]
    );
    s.stop().await;
}

#[tokio::test]
async fn partial_check_in_numbers_passengers_in_check_in_order() {
    let s = Server::start().await;
    let mut owner = s.client().await;
    owner.new_user().await;
    let flight = open_flight(&mut owner).await;
    let (loc, seats) = confirmed(&mut owner, &flight, 3, "o").await;
    let mut other = s.client().await;
    other.new_user().await;
    let (other_loc, other_seats) = confirmed(&mut other, &flight, 1, "x").await;
    owner.pushes.clear();

    let r = owner
        .ok("booking.check_in", check_in(&loc, Some(&seats[1..2]), "c1"))
        .await;
    assert_eq!(numbers(&r["boarding_passes"]), [(seats[1].clone(), 1)]);
    assert_eq!(flags(&r["booking"]), [false, true, false]);
    let pushed = owner.push("booking.updated").await;
    assert_eq!(flags(&pushed["booking"]), [false, true, false]);

    let r = other
        .ok("booking.check_in", check_in(&other_loc, None, "c1"))
        .await;
    assert_eq!(
        numbers(&r["boarding_passes"]),
        [(other_seats[0].clone(), 2)]
    );

    let r = owner
        .ok("booking.check_in", check_in(&loc, None, "c2"))
        .await;
    let want = [
        (seats[0].clone(), 3),
        (seats[1].clone(), 1),
        (seats[2].clone(), 4),
    ];
    assert_eq!(numbers(&r["boarding_passes"]), want);
    let r = owner
        .ok("booking.boarding_passes", json!({"locator": loc}))
        .await;
    assert_eq!(numbers(&r["boarding_passes"]), want);

    // the pass of the first passenger, field by field
    let f = owner.ok("flights.get", json!({"flight_id": flight})).await;
    let f = &f["flight"];
    let p = &r["boarding_passes"][0];
    assert_eq!(p["flight_id"], flight.as_str());
    assert_eq!(p["passenger"], NAMES[0]);
    let bcbp = p["bcbp"].as_str().unwrap();
    assert_eq!(bcbp.len(), 60, "{bcbp:?}");
    assert_eq!(&bcbp[..23], "M1LOVELACE/ADA        E");
    assert_eq!(&bcbp[23..30], format!("{loc} "));
    let route = format!(
        "{}{}JW ",
        f["from"].as_str().unwrap(),
        f["to"].as_str().unwrap()
    );
    assert_eq!(&bcbp[30..39], route);
    let number: u32 = f["number"].as_str().unwrap()[2..].parse().unwrap();
    assert_eq!(&bcbp[39..44], format!("{number:04} "));
    let departs = time::OffsetDateTime::parse(
        f["departs_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(&bcbp[44..47], format!("{:03}", departs.ordinal()));
    let (row, column) = seats[0].split_at(seats[0].len() - 1);
    let row: u8 = row.parse().unwrap();
    assert_eq!(&bcbp[47..60], format!("Y{row:03}{column}0003 100"));
    let second = r["boarding_passes"][1]["bcbp"].as_str().unwrap();
    assert_eq!(&second[2..22], "CHATELET/EMILIE DU  ");

    // every booking result shows who is checked in
    let g = owner.ok("booking.get", json!({"locator": loc})).await;
    assert_eq!(flags(&g["booking"]), [true, true, true]);
    let list = owner.ok("bookings.list", json!({})).await;
    let mine = list["bookings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["locator"] == loc.as_str())
        .unwrap();
    assert_eq!(flags(mine), [true, true, true]);
    s.stop().await;
}

#[tokio::test]
async fn a_repeated_request_gets_the_same_reply_and_uses_no_number() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let flight = open_flight(&mut c).await;
    let (loc, _) = confirmed(&mut c, &flight, 2, "a").await;
    let first = c.ok("booking.check_in", check_in(&loc, None, "c1")).await;
    let again = c.ok("booking.check_in", check_in(&loc, None, "c1")).await;
    assert_eq!(first, again);
    let fresh = c.ok("booking.check_in", check_in(&loc, None, "c2")).await;
    assert_eq!(fresh["boarding_passes"], first["boarding_passes"]);
    // a check-in that changed nothing is remembered too: repeated after the booking
    // was cancelled, it answers as the first time (before: invalid_state)
    c.ok(
        "booking.cancel",
        json!({"locator": loc, "request_id": "x1"}),
    )
    .await;
    let repeated = c.ok("booking.check_in", check_in(&loc, None, "c2")).await;
    assert_eq!(repeated, fresh);
    let (loc2, seats2) = confirmed(&mut c, &flight, 1, "b").await;
    let next = c.ok("booking.check_in", check_in(&loc2, None, "c3")).await;
    assert_eq!(numbers(&next["boarding_passes"]), [(seats2[0].clone(), 3)]);
    s.stop().await;
}

#[tokio::test]
async fn another_users_booking_looks_like_a_missing_one() {
    let s = Server::start().await;
    let mut owner = s.client().await;
    owner.new_user().await;
    let flight = open_flight(&mut owner).await;
    let (loc, _) = confirmed(&mut owner, &flight, 1, "a").await;
    owner
        .ok("booking.check_in", check_in(&loc, None, "c1"))
        .await;
    let mut thief = s.client().await;
    thief.new_user().await;
    for (method, params, missing) in [
        (
            "booking.check_in",
            check_in(&loc, None, "t1"),
            check_in("ZZZZZZ", None, "t2"),
        ),
        (
            "booking.boarding_passes",
            json!({"locator": loc}),
            json!({"locator": "ZZZZZZ"}),
        ),
    ] {
        let theirs = thief.err(method, params).await;
        assert_eq!(theirs["data"]["reason"], "not_found");
        assert_eq!(theirs, thief.err(method, missing).await);
    }
    let mut anonymous = s.client().await;
    assert_eq!(
        anonymous
            .reason("booking.boarding_passes", json!({"locator": loc}))
            .await,
        "unauthenticated"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_checked_in_seat_stays_and_a_cancellation_voids_the_pass() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let flight = open_flight(&mut c).await;
    let (loc, seats) = confirmed(&mut c, &flight, 2, "a").await;
    c.ok("booking.check_in", check_in(&loc, Some(&seats[..1]), "c1"))
        .await;
    let free = free_seats(&mut c, &flight, "economy", 2).await;
    let change = |from: &str, to: &str, rid: &str| json!({"locator": loc, "from": from, "to": to, "request_id": rid});
    let e = c
        .err("booking.change_seat", change(&seats[0], &free[0], "s1"))
        .await;
    assert_eq!(e["data"]["reason"], "checked_in", "{e}");
    assert_eq!(e["code"], -32015);
    // checked in comes first, also for a seat of the booking itself
    for (to, rid) in [(&seats[1], "s3"), (&seats[0], "s4")] {
        let e = c
            .err("booking.change_seat", change(&seats[0], to, rid))
            .await;
        assert_eq!(e["data"]["reason"], "checked_in", "{e}");
    }
    let e = c
        .err("booking.change_seat", change(&seats[1], &seats[0], "s5"))
        .await;
    assert_eq!(e["data"]["reason"], "seat_unavailable", "{e}");
    assert_eq!(e["data"]["seats"], json!([seats[0]]), "{e}");
    c.ok("booking.change_seat", change(&seats[1], &free[1], "s2"))
        .await;

    // the checked-in passenger cancels: the pass is void, the number is not reused
    let r = c
        .ok(
            "booking.cancel",
            json!({"locator": loc, "seats": [seats[0]], "request_id": "x1"}),
        )
        .await;
    assert_eq!(r["booking"]["cancelled_seats"][0]["checked_in"], false);
    let r = c
        .ok("booking.boarding_passes", json!({"locator": loc}))
        .await;
    assert_eq!(r["boarding_passes"], json!([]));
    let r = c.ok("booking.check_in", check_in(&loc, None, "c2")).await;
    assert_eq!(numbers(&r["boarding_passes"]), [(free[1].clone(), 2)]);

    // cancelling the rest voids that pass too
    c.ok(
        "booking.cancel",
        json!({"locator": loc, "request_id": "x2"}),
    )
    .await;
    let r = c
        .ok("booking.boarding_passes", json!({"locator": loc}))
        .await;
    assert_eq!(r["boarding_passes"], json!([]));
    let g = c.ok("booking.get", json!({"locator": loc})).await;
    assert_eq!(g["booking"]["status"], "refunded");
    assert_eq!(flags(&g["booking"]), [false]);
    assert_eq!(
        c.reason("booking.check_in", check_in(&loc, None, "c3"))
            .await,
        "invalid_state"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(dir.path(), &[]);
    let mut c = Client::connect(&p.url()).await;
    let token = c.new_user().await;
    let flight = open_flight(&mut c).await;
    let (loc, seats) = confirmed(&mut c, &flight, 2, "a").await;
    c.ok("booking.check_in", check_in(&loc, None, "c1")).await;
    p.kill9();

    let p = Proc::spawn(dir.path(), &[]);
    let mut c = Client::connect(&p.url()).await;
    c.ok("auth.resume", json!({"token": token})).await;
    let r = c
        .ok("booking.boarding_passes", json!({"locator": loc}))
        .await;
    assert_eq!(
        numbers(&r["boarding_passes"]),
        [(seats[0].clone(), 1), (seats[1].clone(), 2)]
    );
    let (loc2, seats2) = confirmed(&mut c, &flight, 1, "b").await;
    let r = c.ok("booking.check_in", check_in(&loc2, None, "c2")).await;
    assert_eq!(numbers(&r["boarding_passes"]), [(seats2[0].clone(), 3)]);
    p.kill9();
}

/// Check-ins racing through two nodes of an etcd cluster share one numbering, which
/// a node started later continues.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_etcd_never_give_a_number_twice() {
    use common::cluster::{node, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("ck"));
    let nodes = [node(&etcd, &prefix, &[]), node(&etcd, &prefix, &[])];
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(&nodes[i % 2].url()).await;
        c.new_user().await;
        clients.push(c);
    }
    let flight = open_flight(&mut clients[0]).await;
    let mut locators = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        locators.push(confirmed(c, &flight, 2, &format!("u{i}")).await.0);
    }
    let replies = futures::future::join_all(clients.iter_mut().zip(&locators).map(|(c, loc)| {
        let p = check_in(loc, None, "race");
        async move { c.ok("booking.check_in", p).await }
    }))
    .await;
    let mut all: Vec<u64> = replies
        .iter()
        .flat_map(|r| numbers(&r["boarding_passes"]))
        .map(|(_, n)| n)
        .collect();
    all.sort();
    assert_eq!(all, (1..=8).collect::<Vec<_>>());

    let late = node(&etcd, &prefix, &[]);
    let mut c = Client::connect(&late.url()).await;
    c.new_user().await;
    let (loc, seats) = confirmed(&mut c, &flight, 1, "late").await;
    let r = c.ok("booking.check_in", check_in(&loc, None, "c")).await;
    assert_eq!(numbers(&r["boarding_passes"]), [(seats[0].clone(), 9)]);
}

/// The window follows the airline's estimate: a flight whose scheduled departure is
/// 40 minutes away (check-in closed) opens for check-in again once it is delayed by
/// hours.
#[tokio::test]
async fn a_delay_reopens_check_in_by_the_estimated_departure() {
    const ADMIN_PASSWORD: &str = "check-in admin password";
    let s = Server::start_with(|c| c.admin_password = Some(ADMIN_PASSWORD.into())).await;
    let mut a = s.client().await;
    a.ok(
        "auth.login",
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    let rfc = |d: time::OffsetDateTime| {
        d.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let eur = |cents: i64| json!({"amount": cents, "currency": "EUR"});
    let created = a
        .ok(
            "admin.flights.create",
            json!({
                "number": "JW908", "from": "LHR", "to": "VIE",
                "departs_at": rfc(now + time::Duration::minutes(40)),
                "arrives_at": rfc(now + time::Duration::minutes(160)),
                "aircraft": "A320",
                "fares": {"economy": eur(15_400), "business": eur(53_900)},
            }),
        )
        .await;
    let fid = created["flight"]["flight_id"].as_str().unwrap().to_owned();
    let mut c = s.client().await;
    c.new_user().await;
    let (loc, _) = confirmed(&mut c, &fid, 1, "d").await;
    assert_eq!(
        c.reason("booking.check_in", check_in(&loc, None, "early"))
            .await,
        "checkin_closed"
    );
    a.ok(
        "admin.flights.update",
        json!({"flight_id": fid, "estimated_departs_at": rfc(now + time::Duration::hours(3))}),
    )
    .await;
    let r = c.ok("booking.check_in", check_in(&loc, None, "late")).await;
    assert_eq!(r["boarding_passes"].as_array().unwrap().len(), 1);
    s.stop().await;
}
