//! Airline operations: the admin user, scheduling and cancelling flights, statistics,
//! and the resumability of a flight cancellation across a crash.

mod common;

use common::gateway::CountingGateway;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const ADMIN_PASSWORD: &str = "airline ops 2026";

async fn admin_server() -> Server {
    Server::start_with(|c| c.admin_password = Some(ADMIN_PASSWORD.into())).await
}

async fn admin(s: &Server) -> Client {
    admin_at(&s.url()).await
}

async fn admin_at(url: &str) -> Client {
    let mut c = Client::connect(url).await;
    let r = c
        .ok(
            "auth.login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r["user"]["role"], "admin");
    c
}

/// An app on a sled store over `dir` with the admin's password set, served; and its
/// WebSocket URL.
async fn serve_with_admin(
    dir: &std::path::Path,
    gateway: Arc<CountingGateway>,
) -> (Arc<jetway::app::App>, jetway::server::Running, String) {
    let mut config = jetway::Config::for_tests(dir.to_path_buf());
    config.admin_password = Some(ADMIN_PASSWORD.into());
    let store = jetway::store::SledStore::open(dir).expect("open store");
    let app = jetway::app::App::with_parts(config, Arc::new(store), gateway)
        .await
        .unwrap();
    let running = jetway::server::start_app(app.clone()).await.unwrap();
    let url = format!("ws://{}/ws", running.addr);
    (app, running, url)
}

/// An RFC 3339 time `days` from now at `hh:mm` UTC.
fn at(days: i64, hh: u8, mm: u8) -> String {
    let d = (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .replace_time(time::Time::from_hms(hh, mm, 0).unwrap());
    d.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn eur(cents: i64) -> Value {
    json!({"amount": cents, "currency": "EUR"})
}

/// Valid params for `admin.flights.create`, ten days out.
fn new_flight(number: &str) -> Value {
    json!({
        "number": number, "from": "LHR", "to": "VIE",
        "departs_at": at(10, 9, 0), "arrives_at": at(10, 11, 20),
        "aircraft": "A320",
        "fares": {"economy": eur(15_400), "business": eur(53_900)},
    })
}

fn expected_id(number: &str) -> String {
    let d = (time::OffsetDateTime::now_utc() + time::Duration::days(10)).date();
    format!(
        "{number}-{:04}{:02}{:02}",
        d.year(),
        d.month() as u8,
        d.day()
    )
}

async fn create(a: &mut Client, number: &str) -> String {
    let r = a.ok("admin.flights.create", new_flight(number)).await;
    r["flight"]["flight_id"].as_str().unwrap().to_owned()
}

async fn pay(c: &mut Client, loc: &str, rid: &str) -> Value {
    c.ok(
        "booking.pay",
        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": rid}),
    )
    .await
}

fn stats_row<'a>(stats: &'a Value, flight_id: &str) -> &'a Value {
    stats["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["flight_id"] == flight_id)
        .unwrap_or_else(|| panic!("{flight_id} in stats"))
}

/// Polls until `cond` holds (20 s at most).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_user_is_created_and_updated_at_start() {
    let mut s = admin_server().await;
    let mut a = admin(&s).await;
    let old = a
        .ok(
            "auth.login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    a.ok("admin.flights.stats", json!({})).await;
    // the password changes with the setting at the next start, ending its sessions
    s.restart_with(|c| c.admin_password = Some("new ops password".into()))
        .await;
    let mut c = s.client().await;
    assert_eq!(
        c.reason("auth.resume", json!({"token": old["token"]}))
            .await,
        "invalid_token",
        "a session made with the old admin password ends with it"
    );
    assert_eq!(
        c.reason(
            "auth.login",
            json!({"username": "admin", "password": ADMIN_PASSWORD})
        )
        .await,
        "bad_credentials"
    );
    let r = c
        .ok(
            "auth.login",
            json!({"username": "admin", "password": "new ops password"}),
        )
        .await;
    assert_eq!(r["user"]["role"], "admin");
    c.ok("admin.flights.stats", json!({})).await;
    // without the setting the existing admin stays as it is
    s.restart_with(|c| c.admin_password = None).await;
    let mut c = s.client().await;
    c.ok(
        "auth.login",
        json!({"username": "admin", "password": "new ops password"}),
    )
    .await;
    // the same password again keeps its sessions
    let kept = c
        .ok(
            "auth.login",
            json!({"username": "admin", "password": "new ops password"}),
        )
        .await;
    s.restart_with(|c| c.admin_password = Some("new ops password".into()))
        .await;
    let mut c = s.client().await;
    c.ok("auth.resume", json!({"token": kept["token"]})).await;
    s.stop().await;

    // a weak admin password stops the server from starting
    let dir = tempfile::tempdir().unwrap();
    let mut config = jetway::Config::for_tests(dir.path().to_path_buf());
    config.admin_password = Some("short".into());
    assert!(jetway::start(config).await.is_err());
}

#[tokio::test]
async fn nobody_can_register_as_admin() {
    let s = Server::start_with(|c| c.admin_password = None).await;
    let mut c = s.client().await;
    for name in ["admin", "Admin", "ADMIN"] {
        assert_eq!(
            c.reason(
                "auth.register",
                json!({"username": name, "password": PASSWORD})
            )
            .await,
            "username_taken",
            "{name}"
        );
    }
    // with no admin configured yet, so a squatter cannot wait for the operator
    assert_eq!(
        c.reason(
            "auth.login",
            json!({"username": "admin", "password": PASSWORD})
        )
        .await,
        "bad_credentials"
    );
    s.stop().await;
}

/// A data dir from before the name was reserved, in which a passenger called
/// `admin` has a session: the passenger is never made admin, the server refuses to
/// start until the operator renames the account, and the rename keeps its bookings.
#[tokio::test]
async fn a_passenger_called_admin_is_never_promoted() {
    let s = Server::start_with(|c| c.admin_password = None).await;
    let mut c = s.client().await;
    let squatter = c.register("squatter").await;
    let flight = later_flight(&mut c).await;
    let fid = flight["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut c, &fid, "economy", 1).await;
    let held = hold(&mut c, &fid, &seats, "squat-hold").await;
    // what the old register allowed: the account's name becomes "admin"
    let store = s.app().store.clone();
    let mut user = store
        .user_by_name(&jetway::domain::Username::parse("squatter").unwrap())
        .unwrap()
        .unwrap();
    user.username = jetway::domain::Username::parse("admin").unwrap();
    store
        .write(&jetway::store::Batch {
            new_users: vec![user.clone()],
            retired_names: vec![jetway::domain::Username::parse("squatter").unwrap()],
            ..Default::default()
        })
        .unwrap();
    drop(store);
    let dir = s.stop_keep_dir().await;

    let admin_password = |c: &mut jetway::Config| c.admin_password = Some(ADMIN_PASSWORD.into());
    let (dir, why) = match Server::try_start_in(dir, admin_password).await {
        Ok(_) => panic!("started, making a passenger admin"),
        Err(e) => e,
    };
    assert!(
        why.contains("`admin`")
            && why.contains(&format!("user id {}", user.id.0))
            && why.contains("--rename-passenger admin="),
        "names the account and the way out: {why}"
    );

    let rename = |c: &mut jetway::Config| {
        c.admin_password = Some(ADMIN_PASSWORD.into());
        c.rename_passenger = Some("admin=was-admin".into());
    };
    let s = Server::try_start_in(dir, rename).await.expect("starts");
    let mut c = s.client().await;
    let r = c
        .ok("auth.resume", json!({"token": squatter["token"]}))
        .await;
    assert_eq!(r["user"]["username"], "was-admin");
    assert_eq!(r["user"]["role"], "passenger");
    assert_eq!(
        c.reason("admin.flights.stats", json!({})).await,
        "forbidden"
    );
    let mine = c.ok("bookings.list", json!({})).await;
    assert_eq!(mine["bookings"][0]["locator"], held["locator"]);
    let mut a = admin(&s).await;
    a.ok("admin.flights.stats", json!({})).await;
    // the flag left in place does nothing more
    let dir = s.stop_keep_dir().await;
    let s = Server::try_start_in(dir, rename).await.expect("restarts");
    let mut a = admin(&s).await;
    a.ok("admin.flights.stats", json!({})).await;
    let mut c = s.client().await;
    c.ok("auth.resume", json!({"token": squatter["token"]}))
        .await;
    assert_eq!(
        c.reason("admin.flights.stats", json!({})).await,
        "forbidden"
    );
    s.stop().await;
}

/// `--rename-passenger` left set after it did its work never renames the next
/// passenger who takes the old name, nor stops the server.
#[tokio::test]
async fn a_rename_flag_left_set_leaves_a_new_holder_of_the_old_name_alone() {
    let s = Server::start_with(|c| c.admin_password = None).await;
    let mut c = s.client().await;
    c.register("bob").await;
    let dir = s.stop_keep_dir().await;
    let rename = |c: &mut jetway::Config| c.rename_passenger = Some("bob=robert".into());
    let s = Server::try_start_in(dir, rename).await.expect("starts");
    let mut c = s.client().await;
    let newcomer = c.register("bob").await;
    let dir = s.stop_keep_dir().await;
    let s = Server::try_start_in(dir, rename)
        .await
        .expect("restarts with the flag still set");
    let mut c = s.client().await;
    let r = c
        .ok("auth.resume", json!({"token": newcomer["token"]}))
        .await;
    assert_eq!(r["user"]["username"], "bob");
    s.stop().await;
}

#[tokio::test]
async fn admin_methods_need_the_admin_role() {
    let s = admin_server().await;
    let mut anon = s.client().await;
    let mut pax = s.client().await;
    pax.new_user().await;
    let mut a = admin(&s).await;
    let target = create(&mut a, "JW901").await;
    let calls = [
        ("admin.flights.create", new_flight("JW902")),
        (
            "admin.flights.cancel",
            json!({"flight_id": target, "reason": "weather"}),
        ),
        ("admin.flights.stats", json!({})),
    ];
    for (m, p) in &calls {
        // the contract: "role `admin`; everyone else gets `forbidden`"
        assert_eq!(anon.reason(m, p.clone()).await, "forbidden", "{m}");
        assert_eq!(pax.reason(m, p.clone()).await, "forbidden", "{m}");
        // bad params do not tell a passenger anything either
        assert_eq!(pax.reason(m, json!({"x": 1})).await, "forbidden", "{m}");
        // nor do params that are not even an object
        assert_eq!(anon.reason(m, json!([])).await, "forbidden", "{m}");
        assert_eq!(pax.reason(m, json!("x")).await, "forbidden", "{m}");
    }
    // the same order for a method that needs a login
    assert_eq!(
        anon.reason("booking.get", json!("abc")).await,
        "unauthenticated"
    );
    assert_eq!(
        pax.reason("booking.get", json!([1])).await,
        "invalid_params"
    );
    // nothing happened
    let f = anon.ok("flights.get", json!({"flight_id": target})).await;
    assert_eq!(f["flight"]["status"], "scheduled");
    assert_eq!(
        anon.reason("flights.get", json!({"flight_id": expected_id("JW902")}))
            .await,
        "not_found"
    );
    for (m, p) in calls {
        a.ok(m, p).await;
    }
    // a logged-out admin's connection is anonymous again
    let mut a2 = admin(&s).await;
    a2.ok("auth.logout", json!({})).await;
    assert_eq!(
        a2.reason("admin.flights.stats", json!({})).await,
        "forbidden"
    );
    s.stop().await;
}

#[tokio::test]
async fn create_is_validated() {
    let s = admin_server().await;
    let mut a = admin(&s).await;
    let with = |k: &str, v: Value| {
        let mut p = new_flight("JW903");
        p[k] = v;
        p
    };
    let cases = [
        with("number", json!("BA903")),
        with("number", json!("JW")),
        with("number", json!("JW12345")),
        with("number", json!("jw903")),
        with("from", json!("XXX")),
        with("to", json!("LHR")),
        with("departs_at", json!("tomorrow")),
        with("departs_at", json!(at(-1, 9, 0))),
        with("arrives_at", json!(at(10, 8, 0))),
        with("arrives_at", json!(at(10, 9, 0))),
        with("aircraft", json!("B747")),
        with(
            "fares",
            json!({"economy": {"amount": 100, "currency": "USD"}, "business": eur(500)}),
        ),
        with(
            "fares",
            json!({"economy": {"amount": -1, "currency": "EUR"}, "business": eur(500)}),
        ),
        with("fares", json!({"economy": eur(0), "business": eur(500)})),
        with("fares", json!({"economy": eur(100)})),
        with("departs_at", json!(null)),
        json!({}),
    ];
    for p in cases {
        assert_eq!(
            a.reason("admin.flights.create", p.clone()).await,
            "invalid_params",
            "{p}"
        );
    }
    let id = create(&mut a, "JW903").await;
    assert_eq!(id, expected_id("JW903"));
    // the same number on the same day is the same flight id
    let mut later = new_flight("JW903");
    later["departs_at"] = json!(at(10, 18, 0));
    later["arrives_at"] = json!(at(10, 20, 0));
    assert_eq!(
        a.reason("admin.flights.create", later).await,
        "invalid_state"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_new_flight_is_durable_searchable_subscribable_and_bookable() {
    let mut s = admin_server().await;
    let mut a = admin(&s).await;
    let mut watcher = s.client().await;
    let r = a.ok("admin.flights.create", new_flight("JW904")).await;
    let f = &r["flight"];
    let id = expected_id("JW904");
    assert_eq!(f["flight_id"], id.as_str());
    assert_eq!(f["number"], "JW904");
    assert_eq!(f["from"], "LHR");
    assert_eq!(f["to"], "VIE");
    assert_eq!(f["status"], "scheduled");
    assert_eq!(f["aircraft"], "A320");
    let departs = at(10, 9, 0);
    assert_eq!(
        jetway::domain::parse_rfc3339(f["departs_at"].as_str().unwrap()),
        jetway::domain::parse_rfc3339(&departs)
    );
    let cabins = f["cabins"].as_array().unwrap();
    let fare = |c: &str| cabins.iter().find(|x| x["cabin"] == c).unwrap()["fare"].clone();
    assert_eq!(fare("economy"), eur(15_400));
    assert_eq!(fare("business"), eur(53_900));
    assert!(cabins
        .iter()
        .all(|c| c["seats_total"] == c["seats_available"] && c["seats_total"].as_u64() > Some(0)));

    let found = watcher
        .ok(
            "flights.search",
            json!({"from": "LHR", "to": "VIE", "date": &departs[..10]}),
        )
        .await;
    assert!(found["flights"].as_array().unwrap().iter().any(|x| x == f));
    let sub = watcher
        .ok("seats.subscribe", json!({"flight_id": id}))
        .await;
    assert_eq!(sub["version"], 0);
    let total: u64 = cabins
        .iter()
        .map(|c| c["seats_total"].as_u64().unwrap())
        .sum();
    assert_eq!(sub["seats"].as_array().unwrap().len() as u64, total);

    let mut pax = s.client().await;
    pax.new_user().await;
    let seats = free_seats(&mut pax, &id, "business", 1).await;
    let b = hold(&mut pax, &id, &seats, "h1").await;
    assert_eq!(b["total"], eur(53_900));
    let ch = watcher.push("seats.changed").await;
    assert_eq!(ch["flight_id"], id.as_str());
    assert_eq!(ch["version"], 1);
    assert_eq!(ch["seats"], json!([{"seat": seats[0], "status": "held"}]));

    // durable: still there after a restart, with its hold
    s.restart().await;
    let mut c = s.client().await;
    let g = c.ok("flights.get", json!({"flight_id": id})).await;
    assert_eq!(g["version"], 1);
    assert_eq!(g["flight"]["number"], "JW904");
    assert!(g["seats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["seat"] == seats[0].as_str() && x["status"] == "held"));
    s.stop().await;
}

/// Collects `booking.updated` pushes until every locator in `want` has arrived,
/// checking that each shows its expected status.
async fn expect_updates(c: &mut Client, want: &[(&str, &str)]) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    while seen.len() < want.len() {
        let p = c.push("booking.updated").await;
        let b = p["booking"].clone();
        let loc = b["locator"].as_str().unwrap().to_owned();
        let (_, status) = want
            .iter()
            .find(|(l, _)| *l == loc)
            .unwrap_or_else(|| panic!("unexpected update {b}"));
        assert_eq!(b["status"], *status, "{b}");
        assert!(seen.insert(loc, b).is_none(), "one update per booking");
    }
    seen
}

#[tokio::test]
async fn cancelling_a_flight_refunds_in_full_and_releases_every_seat() {
    let s = admin_server().await;
    let mut a = admin(&s).await;
    let id = create(&mut a, "JW905").await;

    // Ada: a confirmed booking (economy + business) and a hold
    let mut ada = s.client().await;
    let ada_token = ada.new_user().await;
    let eco = free_seats(&mut ada, &id, "economy", 6).await;
    let biz = free_seats(&mut ada, &id, "business", 1).await;
    let a1 = hold(&mut ada, &id, &[eco[0].clone(), biz[0].clone()], "h1").await;
    let a1 = a1["locator"].as_str().unwrap().to_owned();
    pay(&mut ada, &a1, "p1").await;
    let a2 = hold(&mut ada, &id, &eco[1..2], "h2").await;
    let a2 = a2["locator"].as_str().unwrap().to_owned();
    // Bob: three seats, then cancels one himself (fare rule), keeping two
    let mut bob = s.client().await;
    let bob_token = bob.new_user().await;
    let b1 = hold(&mut bob, &id, &eco[2..5], "h1").await;
    let b1 = b1["locator"].as_str().unwrap().to_owned();
    pay(&mut bob, &b1, "p1").await;
    let part = bob
        .ok(
            "booking.cancel",
            json!({"locator": b1, "request_id": "c1", "seats": [eco[4]]}),
        )
        .await;
    let bob_own_refund = part["order"]["refunded"]["amount"].as_i64().unwrap();
    assert_eq!(part["order"]["status"], "partially_refunded");
    // Cy: a released hold (nothing to do for it)
    let mut cy = s.client().await;
    cy.new_user().await;
    let c1 = hold(&mut cy, &id, &eco[5..6], "h1").await;
    cy.ok(
        "booking.cancel",
        json!({"locator": c1["locator"], "request_id": "c1"}),
    )
    .await;

    // listeners: each owner on a fresh connection, a watcher on the map
    let mut ada_l = s.client().await;
    ada_l.ok("auth.resume", json!({"token": ada_token})).await;
    let mut bob_l = s.client().await;
    bob_l.ok("auth.resume", json!({"token": bob_token})).await;
    let mut watcher = s.client().await;
    let sub = watcher
        .ok("seats.subscribe", json!({"flight_id": id}))
        .await;
    let v0 = sub["version"].as_u64().unwrap();
    let before = a.ok("admin.flights.stats", json!({})).await;
    let row = stats_row(&before, &id);
    assert_eq!(row["seats_booked"], 4);
    assert_eq!(row["seats_held"], 1);

    let r = a
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "  crew shortage "}),
        )
        .await;
    assert_eq!(r["refunded"], 2);
    assert_eq!(r["released"], 1);
    assert_eq!(r["flight"]["status"], "cancelled");
    assert_eq!(r["flight"]["cancel_reason"], "crew shortage");
    assert!(r["flight"]["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["seats_available"] == c["seats_total"]));

    // the owners hear of it
    let ada_updates = expect_updates(&mut ada_l, &[(&a1, "refunded"), (&a2, "cancelled")]).await;
    let bob_updates = expect_updates(&mut bob_l, &[(&b1, "refunded")]).await;
    let a1b = &ada_updates[&a1];
    assert_eq!(a1b["refund"], a1b["total"], "the airline refunds in full");
    // Bob gets back everything he had not already had back
    let b1b = &bob_updates[&b1];
    let total = b1b["total"]["amount"].as_i64().unwrap();
    let fare_4 = b1b["cancelled_seats"][0]["fare"]["amount"]
        .as_i64()
        .unwrap();
    assert_eq!(
        b1b["refund"]["amount"].as_i64().unwrap(),
        bob_own_refund + (total - fare_4)
    );

    // orders: refunded to the cent
    for (c, loc) in [(&mut ada, &a1), (&mut bob, &b1)] {
        let orders = c.ok("orders.list", json!({})).await;
        let o = orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["locator"] == loc.as_str())
            .unwrap()
            .clone();
        assert_eq!(o["status"], "refunded", "{o}");
        let b = c.ok("booking.get", json!({"locator": loc})).await;
        assert_eq!(o["refunded"], b["booking"]["refund"]);
        if loc == &a1 {
            assert_eq!(o["refunded"], o["amount"]);
        }
    }
    let h = ada.ok("history.list", json!({"limit": 5})).await;
    let ev: Vec<&Value> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["by"] == "airline")
        .collect();
    assert_eq!(ev.len(), 2, "{h}");
    assert!(ev.iter().all(|e| e["reason"] == "crew shortage"));

    // the watcher sees one version per booking, gap-free, ending all free
    let g = a.ok("flights.get", json!({"flight_id": id})).await;
    let v_end = g["version"].as_u64().unwrap();
    assert_eq!(v_end, v0 + 3, "one version per booking");
    let mut next = v0 + 1;
    let mut freed = Vec::new();
    while next <= v_end {
        let ch = watcher.push("seats.changed").await;
        assert_eq!(ch["version"].as_u64().unwrap(), next);
        for x in ch["seats"].as_array().unwrap() {
            assert_eq!(x["status"], "available");
            freed.push(x["seat"].as_str().unwrap().to_owned());
        }
        next += 1;
    }
    freed.sort();
    let mut occupied = vec![eco[0].clone(), biz[0].clone(), eco[1].clone()];
    occupied.extend(eco[2..4].iter().cloned());
    occupied.sort();
    assert_eq!(freed, occupied);
    assert!(g["seats"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["status"] == "available"));
    assert_eq!(g["flight"]["status"], "cancelled");
    assert_eq!(g["flight"]["cancel_reason"], "crew shortage");
    let found = a
        .ok(
            "flights.search",
            json!({"from": "LHR", "to": "VIE", "date": &at(10, 9, 0)[..10]}),
        )
        .await;
    let f = found["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flight_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(f["status"], "cancelled");

    // nothing more can happen on it
    let free = free_seats(&mut ada, &id, "economy", 1).await;
    assert_eq!(
        ada.reason(
            "booking.hold",
            json!({"flight_id": id, "seats": free, "passengers": passengers(1), "request_id": "h3"})
        )
        .await,
        "invalid_state"
    );
    assert_eq!(
        ada.reason(
            "booking.pay",
            json!({"locator": a2, "payment_method": "pm_card_visa", "request_id": "p2"})
        )
        .await,
        "invalid_state"
    );
    assert_eq!(
        ada.reason(
            "booking.change_seat",
            json!({"locator": a1, "from": eco[0], "to": free[0], "request_id": "s1"})
        )
        .await,
        "invalid_state"
    );
    assert_eq!(
        a.reason(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "again"})
        )
        .await,
        "invalid_state"
    );
    let after = a.ok("admin.flights.stats", json!({})).await;
    let row = stats_row(&after, &id);
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["seats_booked"], 0);
    assert_eq!(row["seats_held"], 0);
    assert_eq!(row["revenue"], eur(0));
    s.stop().await;
}

#[tokio::test]
async fn cancel_is_validated() {
    let s = admin_server().await;
    let mut a = admin(&s).await;
    let id = create(&mut a, "JW906").await;
    for p in [
        json!({"flight_id": id}),
        json!({"flight_id": id, "reason": "   "}),
        json!({"flight_id": id, "reason": "x".repeat(201)}),
    ] {
        assert_eq!(
            a.reason("admin.flights.cancel", p.clone()).await,
            "invalid_params",
            "{p}"
        );
    }
    assert_eq!(
        a.reason(
            "admin.flights.cancel",
            json!({"flight_id": "JW1-19990101", "reason": "x"})
        )
        .await,
        "not_found"
    );
    // a flight that has departed cannot be cancelled
    let mut c = s.client().await;
    let all = c
        .ok(
            "flights.search",
            json!({"date": at(0, 0, 0)[..10].to_owned()}),
        )
        .await;
    let now = time::OffsetDateTime::now_utc();
    if let Some(gone) = all["flights"].as_array().unwrap().iter().find(|f| {
        time::OffsetDateTime::parse(
            f["departs_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok_and(|d| d < now)
    }) {
        assert_eq!(
            a.reason(
                "admin.flights.cancel",
                json!({"flight_id": gone["flight_id"], "reason": "late"})
            )
            .await,
            "invalid_state"
        );
    }
    let r = a
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "no bookings"}),
        )
        .await;
    assert_eq!(
        (r["refunded"].as_u64(), r["released"].as_u64()),
        (Some(0), Some(0))
    );
    s.stop().await;
}

#[tokio::test]
async fn stats_follow_the_bookings() {
    let s = admin_server().await;
    let mut a = admin(&s).await;
    let id = create(&mut a, "JW907").await;
    let st = a.ok("admin.flights.stats", json!({})).await;
    let all = st["flights"].as_array().unwrap();
    assert!(all.len() > 1, "every flight is listed");
    let departs: Vec<&str> = all
        .iter()
        .map(|r| r["departs_at"].as_str().unwrap())
        .collect();
    let mut sorted = departs.clone();
    sorted.sort_by_key(|d| jetway::domain::parse_rfc3339(d));
    assert_eq!(departs, sorted, "in departure order");
    let row = stats_row(&st, &id).clone();
    let total = row["seats_total"].as_u64().unwrap();
    let g = a.ok("flights.get", json!({"flight_id": id})).await;
    assert_eq!(total, g["seats"].as_array().unwrap().len() as u64);
    assert_eq!(row["number"], "JW907");
    assert_eq!(row["seats_held"], 0);
    assert_eq!(row["seats_booked"], 0);
    assert_eq!(row["load_factor"], 0.0);
    assert_eq!(row["revenue"], eur(0));

    let check = |st: &Value, held: u64, booked: u64, revenue: i64| {
        let r = stats_row(st, &id);
        assert_eq!(r["seats_held"], held, "{r}");
        assert_eq!(r["seats_booked"], booked, "{r}");
        let lf = ((held + booked) as f64 / total as f64 * 1000.0).round() / 1000.0;
        assert_eq!(r["load_factor"].as_f64().unwrap(), lf, "{r}");
        assert_eq!(r["revenue"], eur(revenue), "{r}");
    };
    let mut p = s.client().await;
    p.new_user().await;
    let eco = free_seats(&mut p, &id, "economy", 3).await;
    let biz = free_seats(&mut p, &id, "business", 1).await;
    let b1 = hold(&mut p, &id, &eco[..2], "h1").await;
    let loc1 = b1["locator"].as_str().unwrap().to_owned();
    check(&a.ok("admin.flights.stats", json!({})).await, 2, 0, 0);
    pay(&mut p, &loc1, "p1").await;
    check(
        &a.ok("admin.flights.stats", json!({})).await,
        0,
        2,
        2 * 15_400,
    );
    let b2 = hold(&mut p, &id, &biz, "h2").await;
    let loc2 = b2["locator"].as_str().unwrap().to_owned();
    pay(&mut p, &loc2, "p2").await;
    hold(&mut p, &id, &eco[2..3], "h3").await;
    check(
        &a.ok("admin.flights.stats", json!({})).await,
        1,
        3,
        2 * 15_400 + 53_900,
    );
    let c = p
        .ok(
            "booking.cancel",
            json!({"locator": loc1, "request_id": "c1", "seats": [eco[0]]}),
        )
        .await;
    let refunded = c["order"]["refunded"]["amount"].as_i64().unwrap();
    assert!(refunded > 0);
    check(
        &a.ok("admin.flights.stats", json!({})).await,
        1,
        2,
        2 * 15_400 + 53_900 - refunded,
    );
    // revenue agrees with the orders
    let orders = p.ok("orders.list", json!({})).await;
    let net: i64 = orders["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["amount"]["amount"].as_i64().unwrap() - o["refunded"]["amount"].as_i64().unwrap()
        })
        .sum();
    let st = a.ok("admin.flights.stats", json!({})).await;
    assert_eq!(stats_row(&st, &id)["revenue"], eur(net));
    s.stop().await;
}

async fn open_app(dir: &std::path::Path, gateway: Arc<CountingGateway>) -> Arc<jetway::app::App> {
    let mut config = jetway::Config::for_tests(dir.to_path_buf());
    config.admin_password = None;
    let store = jetway::store::SledStore::open(dir).expect("open store");
    jetway::app::App::with_parts(config, Arc::new(store), gateway)
        .await
        .unwrap_or_else(|e| panic!("app starts: {e}"))
}

fn booking(app: &jetway::app::App, loc: &str) -> jetway::domain::Booking {
    let loc = jetway::domain::Locator::parse(loc).unwrap();
    app.store.booking(&loc).unwrap().expect("booking")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_interrupted_by_a_crash_finishes_at_the_next_start() {
    use jetway::domain::BookingStatus;
    use jetway::store::{Batch, Store};

    // bookings made on a real server process, which then dies
    let dir = data_dir();
    let p = Proc::start(&dir, &[]);
    let mut c = Client::connect(&p.url()).await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let id = f["flight_id"].as_str().unwrap().to_owned();
    let eco = free_seats(&mut c, &id, "economy", 4).await;
    let mut confirmed = Vec::new();
    for (i, seats) in [&eco[0..2], &eco[2..3]].into_iter().enumerate() {
        let b = hold(&mut c, &id, seats, &format!("h{i}")).await;
        let loc = b["locator"].as_str().unwrap().to_owned();
        let paid = pay(&mut c, &loc, &format!("p{i}")).await;
        confirmed.push((loc, paid["booking"]["total"]["amount"].as_i64().unwrap()));
    }
    let held = hold(&mut c, &id, &eco[3..4], "h9").await;
    let held = held["locator"].as_str().unwrap().to_owned();
    drop(c);
    p.kill9();

    // the crash came right after the flight's cancelled state was written
    {
        let store = jetway::store::SledStore::open(&dir).unwrap();
        let fid = jetway::domain::FlightId::parse(&id).unwrap();
        let mut flight = store
            .flights()
            .unwrap()
            .into_iter()
            .find(|f| f.id == fid)
            .unwrap();
        flight.cancelled = Some("volcanic ash".into());
        store
            .write(&Batch {
                flights: vec![flight],
                ..Default::default()
            })
            .unwrap();
        store.sync().unwrap();
    }

    // first restart: the job starts; the second refund never returns (a crash
    // during the gateway call)
    let g1 = Arc::new(CountingGateway {
        hang_from: Some(2),
        ..Default::default()
    });
    let app = open_app(&dir, g1.clone()).await;
    wait_until("two refunds asked", || g1.refunds().len() == 2).await;
    let first = g1.refunds();
    let charge = |loc: &str| {
        let b = booking(&app, loc);
        app.store
            .order(b.order_id.as_ref().unwrap())
            .unwrap()
            .unwrap()
            .charge_id
    };
    let (done, pending): (Vec<_>, Vec<_>) = confirmed
        .iter()
        .partition(|(loc, _)| first[0].1 == charge(loc));
    assert_eq!((done.len(), pending.len()), (1, 1), "{first:?}");
    assert_eq!(first[1].1, charge(&pending[0].0));
    assert_ne!(first[0].0, first[1].0, "every refund has its own key");
    let open = app.store.open_refunds().unwrap();
    assert_eq!(
        open.len(),
        1,
        "the hanging refund is stored before the call"
    );
    assert_eq!(
        (&open[0].id, open[0].amount.amount()),
        (&first[1].0, pending[0].1)
    );
    app.stop().await;
    drop(app);

    // second restart: it finishes, asking only for the refund that was not recorded
    let g2 = Arc::new(CountingGateway::default());
    let app = open_app(&dir, g2.clone()).await;
    let locs: Vec<String> = confirmed
        .iter()
        .map(|(l, _)| l.clone())
        .chain([held.clone()])
        .collect();
    wait_until("every booking closed", || {
        locs.iter()
            .all(|l| !booking(&app, l).status.occupies_seats())
    })
    .await;
    let second = g2.refunds();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(
        second[0].0, first[1].0,
        "same key: the gateway refunds once"
    );
    assert_eq!(second[0].2, pending[0].1, "in full");
    assert_eq!(first[0].2, done[0].1, "in full");
    for (loc, total) in &confirmed {
        let b = booking(&app, loc);
        assert_eq!(b.status, BookingStatus::Refunded);
        assert_eq!(b.refund.map(|m| m.amount()), Some(*total));
        let o = app
            .store
            .order(b.order_id.as_ref().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(o.refunded.amount(), *total);
        assert_eq!(o.status, jetway::domain::OrderStatus::Refunded);
        // one refund in the owner's history
        let h = app.store.history(b.user_id, 500).unwrap();
        let n = h
            .iter()
            .filter(|e| e.kind == "refunded" && e.locator.as_ref() == Some(&b.locator))
            .count();
        assert_eq!(n, 1, "{loc}");
    }
    assert_eq!(booking(&app, &held).status, BookingStatus::Cancelled);
    // the seat map is free and published; the flight shows cancelled
    wait_until("changes published", || {
        let fs = app.inventory.get(&id).unwrap();
        let (_, seats, _) = fs.published_map();
        seats.iter().all(|s| s["status"] == "available")
    })
    .await;
    let fs = app.inventory.get(&id).unwrap();
    assert_eq!(fs.flight().cancelled.as_deref(), Some("volcanic ash"));
    let version = fs.published_version();
    app.stop().await;
    drop((app, fs));

    // third start: nothing left to do
    let g3 = Arc::new(CountingGateway::default());
    let app = open_app(&dir, g3.clone()).await;
    app.stop().await;
    assert!(g3.refunds().is_empty());
    assert_eq!(app.inventory.get(&id).unwrap().published_version(), version);
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

/// While the airline cancels a flight, a passenger cancelling a booking on it
/// would be refunded by the passenger's fare rule (half an economy fare in the last
/// 24 hours) instead of in full; the cancel is refused and the airline's job
/// refunds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passenger_cancel_during_an_airline_cancellation_leaves_the_full_refund_to_it() {
    let dir = data_dir();
    // the airline's first refund never returns: its job is held up there
    let gateway = Arc::new(CountingGateway {
        hang_nth: Some(1),
        ..Default::default()
    });
    let (app, running, url) = serve_with_admin(&dir, gateway.clone()).await;
    let mut a = admin_at(&url).await;
    // leaving in five hours: the passenger's own rule refunds half an economy fare
    let rfc = |d: time::OffsetDateTime| {
        d.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let mut flight = new_flight("JW907");
    flight["departs_at"] = json!(rfc(now + time::Duration::hours(5)));
    flight["arrives_at"] = json!(rfc(now + time::Duration::hours(7)));
    let created = a.ok("admin.flights.create", flight).await;
    let id = created["flight"]["flight_id"].as_str().unwrap().to_owned();

    let mut p = Client::connect(&url).await;
    p.new_user().await;
    let eco = free_seats(&mut p, &id, "economy", 2).await;
    let mut locs = Vec::new();
    for (i, seat) in eco.iter().enumerate() {
        let b = hold(&mut p, &id, std::slice::from_ref(seat), &format!("h{i}")).await;
        let loc = b["locator"].as_str().unwrap().to_owned();
        pay(&mut p, &loc, &format!("p{i}")).await;
        locs.push(loc);
    }
    let job = tokio::spawn(async move {
        a.ok(
            "admin.flights.cancel",
            json!({"flight_id": id, "reason": "strike"}),
        )
        .await
    });
    wait_until("the airline's first refund is asked", || {
        gateway.refunds().len() == 1
    })
    .await;
    let second = locs[1].clone();
    assert_eq!(
        p.reason(
            "booking.cancel",
            json!({"locator": second, "request_id": "c"})
        )
        .await,
        "invalid_state"
    );
    assert_eq!(
        gateway.refunds().len(),
        1,
        "no refund by the passenger's rule"
    );
    assert_eq!(
        booking(&app, &second).status,
        jetway::domain::BookingStatus::Confirmed
    );
    job.abort();
    running.shutdown().await;
}

/// Flights of one departure time are listed by number as a number: JW9 before JW10.
#[tokio::test]
async fn flights_of_one_time_are_listed_by_number() {
    let s = admin_server().await;
    let mut a = admin(&s).await;
    for n in ["JW1000", "JW9", "JW10"] {
        create(&mut a, n).await;
    }
    let date = &expected_id("JW9")[4..];
    let date = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
    let found = a
        .ok(
            "flights.search",
            json!({"from": "LHR", "to": "VIE", "date": date}),
        )
        .await;
    // the numbers of the flights at the test's departure time, as `list` orders them
    let numbers = |list: &Value| -> Vec<String> {
        list["flights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["departs_at"] == new_flight("JW9")["departs_at"])
            .map(|f| f["number"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(numbers(&found), ["JW9", "JW10", "JW1000"]);
    // and so does the airline's occupancy table (it used to order them as text)
    let stats = a.ok("admin.flights.stats", json!({})).await;
    assert_eq!(numbers(&stats), ["JW9", "JW10", "JW1000"], "{stats}");
    s.stop().await;
}

/// A confirmed booking of one seat, on a [`common::faulty::Faulty`] store with the
/// admin's password set.
struct Paid {
    app: Arc<jetway::app::App>,
    store: Arc<common::faulty::Faulty>,
    gateway: Arc<CountingGateway>,
    user: jetway::app::AuthSession,
    loc: String,
}

async fn paid_booking(dir: &std::path::Path) -> Paid {
    paid_booking_through(dir, Arc::new(CountingGateway::default())).await
}

/// [`paid_booking`], paid through `gateway`.
async fn paid_booking_through(dir: &std::path::Path, gateway: Arc<CountingGateway>) -> Paid {
    use common::faulty::{faulty_app_paying, flight_and_seats, register, Wire};
    use jetway::protocol::params::decode;
    let admin_password = |c: &mut jetway::Config| c.admin_password = Some(ADMIN_PASSWORD.into());
    let (app, store) = faulty_app_paying(dir, admin_password, gateway.clone()).await;
    let user = register(&app, "ada").await.unwrap();
    let (flight, seats) = flight_and_seats(&app, 1);
    let hold = json!({
        "flight_id": flight, "seats": [seats[0]], "request_id": "h1",
        "passengers": [{"name": "Ada"}],
    });
    let held = app.hold(&user, decode(hold).unwrap()).await.wire().unwrap();
    let loc = held["booking"]["locator"].as_str().unwrap().to_owned();
    let pay = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"});
    app.pay(&user, decode(pay).unwrap()).await.wire().unwrap();
    Paid {
        app,
        store,
        gateway,
        user,
        loc,
    }
}

/// [`paid_booking`], cancelled by its passenger and refunded in full.
async fn refunded_booking(dir: &std::path::Path) -> Paid {
    use common::faulty::Wire;
    use jetway::protocol::params::decode;
    let paid = paid_booking(dir).await;
    let cancel = json!({"locator": paid.loc, "request_id": "c1"});
    let cancelled = paid.app.cancel(&paid.user, decode(cancel).unwrap()).await;
    cancelled.wire().unwrap();
    paid
}

/// `admin.refunds.resolve` `void` of refund `id`, as the admin.
async fn void(
    app: &jetway::app::App,
    id: &str,
) -> Result<jetway::protocol::results::RefundResult, jetway::app::AppError> {
    use jetway::protocol::params::decode;
    let admin = common::faulty::login(app, "admin", ADMIN_PASSWORD).await;
    let p = json!({"refund_id": id, "outcome": "void"});
    app.admin_resolve_refund(&admin, decode(p).unwrap()).await
}

/// Writes an open flight-cancellation refund `id` of booking `loc`'s whole order,
/// naming `seats` (the booking's own when `None`), as an earlier version's race could
/// leave one: old enough that no gateway answer is awaited. Returns the order.
fn open_stale_refund(
    app: &jetway::app::App,
    loc: &str,
    seats: Option<Vec<jetway::domain::SeatId>>,
    id: &str,
) -> jetway::domain::Order {
    open_refund_as(app, loc, seats, id, |_| {})
}

/// [`open_stale_refund`], changed by `tweak` before it is written.
fn open_refund_as(
    app: &jetway::app::App,
    loc: &str,
    seats: Option<Vec<jetway::domain::SeatId>>,
    id: &str,
    tweak: impl FnOnce(&mut jetway::store::RefundRecord),
) -> jetway::domain::Order {
    let b = booking(app, loc);
    let order = app
        .store
        .order(b.order_id.as_ref().unwrap())
        .unwrap()
        .unwrap();
    let seats = seats.unwrap_or_else(|| b.seats.iter().map(|s| s.seat).collect());
    let mut stale = jetway::app::new_refund(
        b.user_id,
        &b.locator,
        order.charge_id.clone(),
        seats,
        order.amount,
        jetway::store::RefundReason::FlightCancelled,
    );
    stale.id = id.into();
    (stale.created_at, stale.updated_at) = (0, 0);
    tweak(&mut stale);
    let opened = jetway::store::Batch {
        new_refunds: vec![stale],
        ..Default::default()
    };
    app.store.write(&opened).unwrap();
    order
}

/// A flight cancellation's refund opened from a stale read of a booking that had been
/// refunded in full meanwhile (on a cluster, both nodes' jobs resuming the same
/// cancellation; the opening now also expects the flight's version it read): it is
/// never made. A refunded booking keeps its passengers' seats listed, so the seats
/// alone passed the last check, and the money went back twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_refund_of_a_booking_refunded_already_is_never_made() {
    use common::faulty::Wire;
    use jetway::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let Paid {
        app,
        store,
        gateway,
        loc,
        ..
    } = refunded_booking(dir.path()).await;
    assert_eq!(gateway.refunds().len(), 1);

    let b = booking(&app, &loc);
    assert_eq!(b.status, jetway::domain::BookingStatus::Refunded);
    let order = open_stale_refund(&app, &loc, None, "rf-stale");
    app.reconcile_payments(Duration::ZERO).await;
    assert_eq!(gateway.refunds().len(), 1, "refunded twice");
    let open = store.open_refund(&loc).unwrap();
    assert_eq!(
        open.map(|r| r.id).as_deref(),
        Some("rf-stale"),
        "left open, not closed as made"
    );

    // an admin closes it, unmade, and nothing else changes
    let closed = void(&app, "rf-stale").await.wire().unwrap();
    assert_eq!(closed["refund"]["done"], true);
    assert_eq!(closed["refund"]["resolutions"][0]["outcome"], "void");
    assert!(store.open_refund(&loc).unwrap().is_none(), "still open");
    assert_eq!(gateway.refunds().len(), 1, "paid by the void");
    let after = store.order(b.order_id.as_ref().unwrap()).unwrap().unwrap();
    assert_eq!(after.refunded, order.refunded, "recorded on the order");
    assert_eq!(booking(&app, &loc).status, b.status);
    let record = store.refund_by_key("rf-stale").unwrap().unwrap();
    assert_eq!(record.made_ref, None, "closed as never made");
}

/// A stale refund an earlier version did make at the gateway (the money went back
/// twice) can be closed too, as made: neither refused for ever as "made" (the
/// reconciliation can never record it on the booking) nor recorded as unmade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_refund_the_gateway_made_is_voided_as_made() {
    use common::faulty::Wire;
    use jetway::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let paid = refunded_booking(dir.path()).await;
    let (app, store, loc) = (&paid.app, &paid.store, paid.loc.as_str());
    let order = open_stale_refund(app, loc, None, "rf-twice");
    paid.gateway
        .listed
        .lock()
        .push(jetway::payments::GatewayRefund {
            id: "re_twice".into(),
            payment_ref: order.charge_id.clone(),
            amount: order.amount,
            key: Some("rf-twice".into()),
            failure: None,
            pending: false,
        });
    let closed = void(app, "rf-twice").await.wire().unwrap();
    assert_eq!(closed["refund"]["done"], true);
    let record = store.refund_by_key("rf-twice").unwrap().unwrap();
    assert_eq!(record.made_ref.as_deref(), Some("re_twice"));
    assert!(store.open_refund(loc).unwrap().is_none());
    assert_eq!(paid.gateway.refunds().len(), 1, "asked for nothing more");
}

/// A refund reopened a moment ago (Stripe failed it days after it was made; the
/// reissue, under a fresh key, may still be in the making through another node) is not
/// closed as paid elsewhere before the gateway has had its time: the wait ran from the
/// record's creation, days old, and let it through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_reopened_a_moment_ago_is_not_closed_as_paid_elsewhere() {
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let paid = paid_booking(dir.path()).await;
    let (app, store) = (&paid.app, &paid.store);
    open_refund_as(app, &paid.loc, None, "rf-reissue", |r| {
        r.failed_later = vec!["re_failed".into()];
        r.gateway_key = Some("rf-fresh".into());
        r.updated_at = jetway::domain::now_ms();
    });
    let admin = common::faulty::login(app, "admin", ADMIN_PASSWORD).await;
    let p = json!({"refund_id": "rf-reissue", "outcome": "paid_elsewhere"});
    let refused = app.admin_resolve_refund(&admin, decode(p).unwrap()).await;
    assert!(
        matches!(&refused, Err(jetway::app::AppError::InvalidState(m)) if m.contains("may still make")),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(store.open_refund("re_failed").unwrap().is_some(), "closed");
}

/// An admin's retry asks once more under the refund's key (refused) and gives it a
/// fresh one: a try under that key by an older version, which writes no trace, may be
/// in the making through another node, so paid_elsewhere waits a span from the retry.
/// The refusal, seen here and written on the record, let it through (and, once fixed,
/// again whenever the retry's ask was dated a millisecond after the retry: this test
/// makes that so every time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_seen_under_an_old_key_does_not_lift_the_wait_for_a_new_one() {
    paid_elsewhere_waits_after(true, true, |_| {}).await;
}

/// The same when the gateway turned the retry's ask away (a 400): that answer came
/// before the fresh key, so it says nothing of a try under it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_seen_under_an_old_key_does_not_lift_the_wait_for_a_new_one() {
    paid_elsewhere_waits_after(true, false, |_| {}).await;
}

/// A node that saw its own try of a refund refused knows nothing of a try another
/// node made since under the same key (it may still be in the making): every try
/// writes when it began on the record before the call, and paid_elsewhere waits for
/// it. The refusal seen here let it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_through_another_node_holds_paid_elsewhere_back() {
    // opened long ago, and asked again under the same key through another node
    paid_elsewhere_waits_after(false, true, |r| {
        let asked = r.asked_at.expect("the try is on the record");
        (r.created_at, r.updated_at) = (0, 0);
        r.asked_at = Some(asked + 1);
    })
    .await;
}

/// A paid booking's cancel whose refund the gateway refused (this node saw it; a
/// refusal it keeps under the key if `kept`, else one it turned away), then retried by
/// the admin if `retry`, the record then changed by `changed_elsewhere` (as through
/// another node): paid_elsewhere through this node is refused for the wait, and the
/// refund stays open.
async fn paid_elsewhere_waits_after(
    retry: bool,
    kept: bool,
    changed_elsewhere: impl FnOnce(&mut jetway::store::RefundRecord),
) {
    use common::faulty::Wire;
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let paid = paid_booking(dir.path()).await;
    let (app, store) = (&paid.app, &paid.store);
    let answer = match kept {
        true => &paid.gateway.refuse_refunds,
        false => &paid.gateway.reject_refunds,
    };
    answer.store(true, Ordering::SeqCst);
    let cancel = json!({"locator": paid.loc, "request_id": "c1"});
    assert!(app
        .cancel(&paid.user, decode(cancel).unwrap())
        .await
        .is_err());
    let admin = common::faulty::login(app, "admin", ADMIN_PASSWORD).await;
    let refused = store.open_refund(&paid.loc).unwrap().expect("left open");
    assert!(refused.asked_at.is_some(), "{refused:?}");
    let noted = if kept {
        refused.refused_at
    } else {
        refused.rejected_at
    };
    assert_eq!(noted, refused.asked_at, "the refusal is on the record");
    let id = refused.id;
    if retry {
        // the last try dated ahead of this node's clock (say by a node whose clock
        // runs ahead), so the retry's own ask is dated after the retry began, every
        // time: the retry's change must still come after its ask
        let ahead = jetway::domain::now_ms() + 10_000;
        common::rewrite_open_refund(store.as_ref(), &paid.loc, |r| {
            r.asked_at = Some(ahead);
            match kept {
                true => r.refused_at = Some(ahead),
                false => r.rejected_at = Some(ahead),
            }
        });
        let p = json!({"refund_id": id, "outcome": "retry"});
        app.admin_resolve_refund(&admin, decode(p).unwrap())
            .await
            .wire()
            .unwrap();
    }
    common::rewrite_open_refund(store.as_ref(), &paid.loc, changed_elsewhere);
    paid_elsewhere_waits(&paid, &admin, &id).await;
}

/// The wait goes by the last try on the record, whichever node made it: a try's
/// requests go out within one payment span of its start and may each execute for a
/// span after, so it holds paid_elsewhere back for two spans from its start (one let
/// it through while another node's try could still send its last request); a try
/// refused outright and written so lifts it on every node (only the node that saw the
/// refusal knew, and any later try elsewhere held the others back again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_follows_the_last_try_on_the_record_whichever_node_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let paid = paid_booking(dir.path()).await;
    let app = &paid.app;
    let span = app.payment_span().as_millis() as i64;
    let rewrite = |change: &dyn Fn(&mut jetway::store::RefundRecord)| {
        common::rewrite_open_refund(paid.store.as_ref(), &paid.loc, change)
    };
    let admin = common::faulty::login(app, "admin", ADMIN_PASSWORD).await;
    let asked = jetway::domain::now_ms() - span - 5_000;
    open_refund_as(app, &paid.loc, None, "rf-elsewhere", |r| {
        r.asked_at = Some(asked)
    });
    paid_elsewhere_waits(&paid, &admin, "rf-elsewhere").await;
    // a try by a node whose span is three of this one's: it could send its last
    // request until its own deadline, which may execute for as long again
    let long_ago = jetway::domain::now_ms() - 4 * span - 5_000;
    rewrite(&|r| (r.asked_at, r.asked_until) = (Some(long_ago), Some(long_ago + 3 * span)));
    paid_elsewhere_waits(&paid, &admin, "rf-elsewhere").await;
    rewrite(&|r| r.refused_at = Some(long_ago));
    paid_elsewhere_closes(&paid, &admin, "rf-elsewhere").await;
}

/// paid_elsewhere of refund `id` of `paid`'s booking: refused for the wait.
async fn paid_elsewhere_waits(paid: &Paid, admin: &jetway::app::AuthSession, id: &str) {
    use jetway::store::Store;
    let refused = paid.app.admin_resolve_refund(admin, elsewhere(id)).await;
    assert!(
        matches!(&refused, Err(jetway::app::AppError::InvalidState(m)) if m.contains("may still make")),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(paid.store.open_refund(&paid.loc).unwrap().is_some());
}

/// paid_elsewhere of refund `id` of `paid`'s booking: it closes it.
async fn paid_elsewhere_closes(paid: &Paid, admin: &jetway::app::AuthSession, id: &str) {
    use jetway::store::Store;
    let closed = paid.app.admin_resolve_refund(admin, elsewhere(id)).await;
    assert!(closed.expect("resolved").refund.done);
    assert!(paid.store.open_refund(&paid.loc).unwrap().is_none());
}

fn elsewhere(id: &str) -> jetway::protocol::params::ResolveRefund {
    let p = json!({"refund_id": id, "outcome": "paid_elsewhere"});
    jetway::protocol::params::decode(p).unwrap()
}

/// A paid booking cancelled while the gateway was down: its refund is open, its one
/// try unanswered. Then the gateway answers refunds as `then` says, and a
/// reconciliation round tries again; the record as that try left it.
async fn unanswered_then(
    dir: &std::path::Path,
    then: impl FnOnce(&CountingGateway),
) -> (
    Paid,
    jetway::store::RefundRecord,
    jetway::store::RefundRecord,
) {
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    use std::sync::atomic::Ordering;
    let paid = paid_booking(dir).await;
    paid.gateway.fail_refunds.store(true, Ordering::SeqCst);
    let cancel = json!({"locator": paid.loc, "request_id": "c1"});
    let cancelled = paid.app.cancel(&paid.user, decode(cancel).unwrap()).await;
    assert!(cancelled.is_err());
    let unanswered = paid.store.open_refund(&paid.loc).unwrap().expect("open");
    paid.gateway.fail_refunds.store(false, Ordering::SeqCst);
    then(&paid.gateway);
    paid.app.reconcile_payments(std::time::Duration::ZERO).await;
    let answered = paid.store.open_refund(&paid.loc).unwrap().expect("open");
    assert!(answered.asked_at > unanswered.asked_at, "{answered:?}");
    (paid, unanswered, answered)
}

/// A try the gateway turned away (a 400: Stripe keeps nothing under the key for it)
/// made nothing itself, but the try before it got no answer, and its request,
/// arriving late, would still be made: paid_elsewhere waits for that one (a turned-away
/// try used to lift the wait as a kept refusal does). The turned-away tries add
/// nothing to the wait however many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turned_away_try_does_not_lift_the_wait_for_the_one_before_it() {
    use jetway::store::Store;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (paid, unanswered, rejected) = unanswered_then(dir.path(), |g| {
        g.reject_refunds.store(true, Ordering::SeqCst)
    })
    .await;
    let span = paid.app.payment_span().as_millis() as i64;
    assert_eq!(rejected.rejected_at, rejected.asked_at, "on the record");
    let first_ends = unanswered.asked_until.unwrap() + span;
    assert_eq!(rejected.earlier_until, Some(first_ends));
    let admin = common::faulty::login(&paid.app, "admin", ADMIN_PASSWORD).await;
    paid_elsewhere_waits(&paid, &admin, &rejected.id).await;
    paid.app.reconcile_payments(std::time::Duration::ZERO).await;
    let again = paid.store.open_refund(&paid.loc).unwrap().expect("open");
    assert!(again.asked_at > rejected.asked_at, "{again:?}");
    assert_eq!(again.earlier_until, Some(first_ends), "nothing added");
    paid_elsewhere_waits(&paid, &admin, &rejected.id).await;
    // the first try's window over (as if it were long ago): decided
    common::rewrite_open_refund(paid.store.as_ref(), &paid.loc, |r| {
        r.earlier_until = Some(jetway::domain::now_ms() - 1)
    });
    paid_elsewhere_closes(&paid, &admin, &rejected.id).await;
}

/// A kept refusal ends the wait for every earlier try under the key: the gateway
/// replays it to any of their requests that arrives late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_refusal_ends_the_wait_for_the_tries_before_it() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (paid, _, refused) = unanswered_then(dir.path(), |g| {
        g.refuse_refunds.store(true, Ordering::SeqCst)
    })
    .await;
    assert_eq!(refused.refused_at, refused.asked_at, "{refused:?}");
    assert!(refused.earlier_until > Some(jetway::domain::now_ms()));
    let admin = common::faulty::login(&paid.app, "admin", ADMIN_PASSWORD).await;
    paid_elsewhere_closes(&paid, &admin, &refused.id).await;
}

/// The time of a try is on the refund's record, durably, before the gateway is asked:
/// a process that dies during the call leaves it for every node to wait on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_is_on_its_refund_record_before_the_gateway_is_asked() {
    use jetway::protocol::params::decode;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(CountingGateway {
        hang_nth: Some(1),
        ..Default::default()
    });
    let paid = paid_booking_through(dir.path(), gateway.clone()).await;
    let before = jetway::domain::now_ms();
    let (app, user, loc) = (paid.app.clone(), paid.user.clone(), paid.loc.clone());
    let cancelling = tokio::spawn(async move {
        let cancel = json!({"locator": loc, "request_id": "c1"});
        let _ = app.cancel(&user, decode(cancel).unwrap()).await;
    });
    asked_while_hanging(&paid, &gateway, before, cancelling).await;
}

/// The same for a try that reserved nothing (the reconciler's, of a refund opened long
/// ago): one that hangs leaves its time on the record, and once it is cut off (as if
/// its process died), paid_elsewhere waits for it. The record's age let it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcilers_try_that_hangs_holds_paid_elsewhere_back() {
    use jetway::protocol::params::decode;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(CountingGateway {
        hang_nth: Some(1),
        ..Default::default()
    });
    let paid = paid_booking_through(dir.path(), gateway.clone()).await;
    open_stale_refund(&paid.app, &paid.loc, None, "rf-stale");
    let before = jetway::domain::now_ms();
    let app = paid.app.clone();
    let reconciling = tokio::spawn(async move {
        app.reconcile_payments(std::time::Duration::ZERO).await;
    });
    asked_while_hanging(&paid, &gateway, before, reconciling).await;
    let admin = common::faulty::login(&paid.app, "admin", ADMIN_PASSWORD).await;
    let p = json!({"refund_id": "rf-stale", "outcome": "paid_elsewhere"});
    let refused = paid
        .app
        .admin_resolve_refund(&admin, decode(p).unwrap())
        .await;
    assert!(
        matches!(&refused, Err(jetway::app::AppError::InvalidState(m)) if m.contains("may still make")),
        "{:?}",
        refused.map(|_| ())
    );
}

/// A passenger's refund made while its record changed through another node (there,
/// after this try's payment mark lapsed, an admin's retry gave it a fresh key, under
/// which a third node may make it) is not closed over the change: the fresh key would
/// be lost with what was made under it, and a later reopening could pay the passenger
/// twice. The refund stays open as changed and the booking confirmed; the cancel
/// answers `payment_failed`, and the next try looks up what each key made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_made_while_its_record_changed_elsewhere_is_not_closed_over_the_change() {
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let answer = Arc::new(tokio::sync::Semaphore::new(0));
    let gateway = Arc::new(CountingGateway {
        answer_when: Some(answer.clone()),
        ..Default::default()
    });
    let paid = paid_booking_through(dir.path(), gateway.clone()).await;
    let (app, user, loc) = (paid.app.clone(), paid.user.clone(), paid.loc.clone());
    let cancelling = tokio::spawn(async move {
        let cancel = json!({"locator": loc, "request_id": "c1"});
        app.cancel(&user, decode(cancel).unwrap()).await.map(|_| ())
    });
    wait_until("the refund is asked", || gateway.refunds().len() == 1).await;
    let asked = gateway.refunds()[0].0.clone();
    common::rewrite_open_refund(paid.store.as_ref(), &paid.loc, |r| {
        r.previous_keys.push(r.key().to_owned());
        r.gateway_key = Some("rf-fresh".into());
    });
    answer.add_permits(1);
    let cancelled = cancelling.await.unwrap();
    assert!(
        matches!(&cancelled, Err(jetway::app::AppError::PaymentFailed(m)) if m.contains("changed")),
        "{cancelled:?}"
    );
    let open = paid
        .store
        .open_refund(&paid.loc)
        .unwrap()
        .expect("still open");
    assert_eq!(open.key(), "rf-fresh");
    assert_eq!(open.previous_keys, [asked]);
    assert_eq!(
        booking(&paid.app, &paid.loc).status,
        jetway::domain::BookingStatus::Confirmed
    );
}

/// Waits until `gateway` is asked for `paid`'s refund (by `trying`, which never gets
/// an answer), checks that the try is on the record, then cuts `trying` off.
async fn asked_while_hanging(
    paid: &Paid,
    gateway: &CountingGateway,
    before: i64,
    trying: tokio::task::JoinHandle<()>,
) {
    use jetway::store::Store;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while gateway.refunds().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway was never asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let open = paid.store.open_refund(&paid.loc).unwrap().expect("open");
    assert!(open.asked_at.is_some_and(|t| t >= before), "{open:?}");
    assert!(open.asked_until > open.asked_at, "{open:?}");
    assert_eq!(gateway.refunds()[0].0, open.key());
    trying.abort();
    let _ = trying.await;
}

/// A stale refund naming a seat its booking no longer holds and one it still holds
/// is money owed for the second: never voided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_naming_a_seat_still_held_is_never_voided() {
    use jetway::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let paid = paid_booking(dir.path()).await;
    let (app, store) = (&paid.app, &paid.store);
    let b = booking(app, &paid.loc);
    let held = b.seats[0].seat;
    let other = if held.to_string() == "1A" { "1B" } else { "1A" };
    let gone = jetway::domain::SeatId::parse(other).unwrap();
    let id = "rf-partly";
    open_stale_refund(app, &paid.loc, Some(vec![held, gone]), id);
    let refused = void(app, id).await;
    assert!(
        matches!(&refused, Err(jetway::app::AppError::InvalidState(m)) if m.contains(&held.to_string())),
        "{:?}",
        refused.map(|_| ())
    );
    assert_eq!(
        store
            .open_refund(&paid.loc)
            .unwrap()
            .map(|r| r.id)
            .as_deref(),
        Some(id)
    );
}

/// `void` closes only a refund its booking no longer backs: one the booking still
/// holds the seats of is money owed, and stays open.
#[tokio::test]
async fn a_refund_its_booking_still_backs_is_never_voided() {
    use jetway::protocol::params::decode;
    use jetway::store::Store;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let paid = paid_booking(dir.path()).await;
    let (app, store, loc) = (&paid.app, &paid.store, &paid.loc);
    paid.gateway.fail_refunds.store(true, Ordering::SeqCst);
    let cancel = json!({"locator": loc, "request_id": "c1"});
    assert!(app
        .cancel(&paid.user, decode(cancel).unwrap())
        .await
        .is_err());
    let open = store.open_refund(loc).unwrap().expect("left open");

    let refused = void(app, &open.id).await;
    assert!(
        matches!(&refused, Err(jetway::app::AppError::InvalidState(m)) if m.contains("still holds")),
        "{:?}",
        refused.map(|_| ())
    );
    assert_eq!(store.open_refund(loc).unwrap().map(|r| r.id), Some(open.id));
}

/// A flight cancellation that meets an open refund naming a seat its booking no longer
/// holds (left by an earlier version's race) retries it until an admin voids it, then
/// refunds the booking in full and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_cancellation_stuck_on_a_stale_refund_finishes_once_it_is_voided() {
    let dir = data_dir();
    let gateway = Arc::new(CountingGateway::default());
    let (app, running, url) = serve_with_admin(&dir, gateway.clone()).await;
    let mut a = admin_at(&url).await;
    let mut resolver = admin_at(&url).await;
    let id = create(&mut a, "JW911").await;
    let mut p = Client::connect(&url).await;
    p.new_user().await;
    let eco = free_seats(&mut p, &id, "economy", 3).await;
    let held = hold(&mut p, &id, &eco[..2], "h").await;
    let loc = held["locator"].as_str().unwrap().to_owned();
    pay(&mut p, &loc, "p").await;

    let gone = jetway::domain::SeatId::parse(&eco[2]).unwrap();
    let stale_id = "rf-gone";
    let order = open_stale_refund(&app, &loc, Some(vec![gone]), stale_id);

    let flight = id.clone();
    let job = tokio::spawn(async move {
        a.ok(
            "admin.flights.cancel",
            json!({"flight_id": flight, "reason": "strike"}),
        )
        .await
    });
    // the job may hold the booking's mark at the moment: asked again until it is free
    let void = json!({"refund_id": stale_id, "outcome": "void"});
    let mut closed = resolver.call("admin.refunds.resolve", void.clone()).await;
    for _ in 0..200 {
        let busy = closed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("in progress"));
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        closed = resolver.call("admin.refunds.resolve", void.clone()).await;
    }
    assert_eq!(closed["result"]["refund"]["done"], true, "{closed}");
    let done = tokio::time::timeout(Duration::from_secs(30), job)
        .await
        .expect("the cancellation finished")
        .unwrap();
    assert_eq!(done["refunded"], 1, "{done}");
    let made = gateway.refunds();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].2, order.amount.amount(), "refunded in full");
    assert_eq!(
        booking(&app, &loc).status,
        jetway::domain::BookingStatus::Refunded
    );
    running.shutdown().await;
}
