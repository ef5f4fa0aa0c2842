//! `/metrics` keeps its booking counts as bookings change: right across hold, pay,
//! cancel, expiry and restart, and a scrape reads no booking from the store. (A real
//! scrape passes `promtool check metrics`: `hardening::metrics_health_and_readiness`.)

mod common;

use common::faulty::*;
use common::{metric, promtool_check};
use jetway::app::{App, AuthSession};
use jetway::domain::BookingStatus;
use jetway::protocol::params::decode;
use jetway::store::Store;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A scrape, checked to read no booking.
fn scrape(app: &App, store: &Faulty) -> String {
    let reads = store.booking_reads.load(Ordering::SeqCst);
    let page = jetway::server::scrape(app);
    assert_eq!(
        store.booking_reads.load(Ordering::SeqCst),
        reads,
        "a scrape read bookings"
    );
    page
}

/// The scraped counts, checked against a pass over every booking; `expected` gives
/// held, confirmed, cancelled, expired and refunded.
fn check(app: &App, store: &Faulty, expected: [u64; 5]) {
    let page = scrape(app, store);
    let mut scanned = [0u64; 5];
    for b in store.inner.all_bookings().unwrap() {
        scanned[b.status.index()] += 1;
    }
    let scraped = BookingStatus::ALL.map(|s| {
        let name = format!("jetway_bookings{{status=\"{}\"}}", s.as_str());
        metric(&page, &name).unwrap_or_else(|| panic!("no {name} in\n{page}")) as u64
    });
    assert_eq!(scraped, scanned, "the counts agree with the bookings");
    assert_eq!(scraped, expected);
}

async fn hold(app: &App, user: &AuthSession, fid: &str, seat: &str, rid: &str) -> Value {
    let r = app
        .hold(user, decode(hold_params(fid, seat, rid)).unwrap())
        .await
        .wire()
        .unwrap();
    r["booking"]["locator"].clone()
}

async fn pay(app: &App, user: &AuthSession, loc: &Value, rid: &str) {
    let p = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": rid});
    app.pay(user, decode(p).unwrap()).await.unwrap();
}

async fn cancel(app: &Arc<App>, user: &AuthSession, loc: &Value, rid: &str) {
    let p = json!({"locator": loc, "request_id": rid});
    app.cancel(user, decode(p).unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_counts_follow_every_change_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    check(&app, &store, [0; 5]);
    let user = register(&app, "counted").await.unwrap();
    let (fid, seats) = flight_and_seats(&app, 4);
    let a = hold(&app, &user, &fid, &seats[0], "a").await;
    let b = hold(&app, &user, &fid, &seats[1], "b").await;
    let d = hold(&app, &user, &fid, &seats[2], "d").await;
    check(&app, &store, [3, 0, 0, 0, 0]);
    pay(&app, &user, &a, "pa").await;
    pay(&app, &user, &d, "pd").await;
    check(&app, &store, [1, 2, 0, 0, 0]);
    cancel(&app, &user, &b, "cb").await;
    cancel(&app, &user, &d, "cd").await;
    check(&app, &store, [0, 1, 1, 0, 1]);
    // a replayed request changes nothing
    cancel(&app, &user, &d, "cd").await;
    check(&app, &store, [0, 1, 1, 0, 1]);
    close(app, store).await;

    // seeded from the store at start; a hold that lives one second expires
    let (app, store) = faulty_app(dir.path(), |c| c.hold_ttl = 1).await;
    check(&app, &store, [0, 1, 1, 0, 1]);
    hold(&app, &user, &fid, &seats[3], "c").await;
    check(&app, &store, [1, 1, 1, 0, 1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.store.booking_counts().get(BookingStatus::Expired) == 0 {
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(&app, &store, [0, 1, 1, 1, 1]);
    close(app, store).await;

    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    check(&app, &store, [0, 1, 1, 1, 1]);
    close(app, store).await;
}

#[test]
fn promtool_catches_a_counter_without_total_and_a_family_twice() {
    // so that a check that passes means something
    let bad = "# HELP jetway_connections Open.\n# TYPE jetway_connections gauge\njetway_connections 1\n\
               # HELP jetway_syncs Syncs.\n# TYPE jetway_syncs counter\njetway_syncs 2\n\
               # HELP jetway_connections Open.\n# TYPE jetway_connections gauge\njetway_connections 1\n";
    assert!(promtool_check(bad).is_err());
}
