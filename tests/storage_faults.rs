//! Storage errors: when the disk refuses writes (full, read-only), a request gets an
//! error, nothing is half-written, reads keep working, and the same requests succeed
//! once the disk is back. A reply is never sent before its write is durable.
//!
//! The store is the real sled store behind a wrapper that fails or holds back writes
//! and syncs on demand (`common::faulty`).

mod common;

use common::faulty::*;
use jetway::app::App;
use jetway::app::AppError;
use jetway::domain::Username;
use jetway::protocol::params::decode;
use jetway::store::{IdemKey, Page, SledStore, Store};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    app: Arc<App>,
    store: Arc<Faulty>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    Fixture {
        app,
        store,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_errors_and_leave_nothing_behind() {
    let fx = fixture().await;
    let app = &fx.app;
    let user = register(app, "faulty").await.unwrap();
    let (fid, seats) = flight_and_seats(app, 2);
    let held = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "h1")).unwrap())
        .await
        .wire()
        .unwrap();
    let loc = held["booking"]["locator"].as_str().unwrap().to_owned();
    let map_before = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .wire()
        .unwrap();
    let list_before = app
        .bookings_list(&user, Default::default())
        .await
        .wire()
        .unwrap();
    let history_before = app
        .history_list(&user, decode(json!({})).unwrap())
        .await
        .wire()
        .unwrap();

    // the disk is full
    fx.store.fail_writes.store(true, Ordering::SeqCst);
    assert_eq!(
        register(app, "newcomer").await.unwrap_err(),
        AppError::Internal
    );
    assert_eq!(
        app.hold(&user, decode(hold_params(&fid, &seats[1], "h2")).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    let pay = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"});
    assert_eq!(
        app.pay(&user, decode(pay.clone()).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    let cancel = json!({"locator": loc, "request_id": "c1"});
    assert_eq!(
        app.cancel(&user, decode(cancel.clone()).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );

    // reads keep working, and show nothing half-written
    let map = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .wire()
        .unwrap();
    assert_eq!(map, map_before, "the seat map and its version did not move");
    assert_eq!(
        app.bookings_list(&user, Default::default())
            .await
            .wire()
            .unwrap(),
        list_before
    );
    assert_eq!(
        app.history_list(&user, decode(json!({})).unwrap())
            .await
            .wire()
            .unwrap(),
        history_before
    );
    assert_eq!(
        app.orders_list(&user, Default::default())
            .await
            .wire()
            .unwrap()["orders"],
        json!([])
    );
    assert!(app
        .store
        .user_by_name(&Username::parse("newcomer").unwrap())
        .unwrap()
        .is_none());
    let got = app
        .booking_get(&user, decode(json!({"locator": loc})).unwrap())
        .await
        .wire()
        .unwrap();
    assert_eq!(got["booking"]["status"], "held");
    assert!(app.search(decode(json!({})).unwrap()).wire().is_ok());

    // the disk is back: the same requests now act (no error reply was remembered)
    fx.store.fail_writes.store(false, Ordering::SeqCst);
    register(app, "newcomer").await.unwrap();
    let h2 = app
        .hold(&user, decode(hold_params(&fid, &seats[1], "h2")).unwrap())
        .await
        .wire()
        .unwrap();
    assert_eq!(h2["booking"]["status"], "held");
    let paid = app.pay(&user, decode(pay).unwrap()).await.wire().unwrap();
    assert_eq!(paid["booking"]["status"], "confirmed");
    let map = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .wire()
        .unwrap();
    assert_eq!(
        map["version"].as_u64().unwrap(),
        map_before["version"].as_u64().unwrap() + 2,
        "a new hold and a payment: two versions, none used by the failed writes"
    );
    app.stop().await;
}

/// The status the published seat map shows for `seat`.
fn seat_status(app: &App, fid: &str, seat: &str) -> Value {
    let map = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .wire()
        .unwrap();
    common::seat_status(&map, seat)
}

/// A failed sync is fatal: after an I/O error the next fsync may report success
/// although the pages were dropped, so nothing is retried and nothing more is
/// acknowledged until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_never_acknowledged() {
    let fx = fixture().await;
    let app = &fx.app;
    let user = register(app, "unsynced").await.unwrap();
    let (fid, seats) = flight_and_seats(app, 3);
    let kept = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "s0")).unwrap())
        .await
        .wire()
        .unwrap();
    let loc = kept["booking"]["locator"].clone();
    fx.store.fail_syncs.store(true, Ordering::SeqCst);
    let syncs = fx.store.syncs.load(Ordering::SeqCst);
    assert_eq!(
        app.hold(&user, decode(hold_params(&fid, &seats[1], "s1")).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal,
        "a change that is not on disk is not reported as done"
    );
    assert_eq!(
        fx.store.syncs.load(Ordering::SeqCst),
        syncs + 1,
        "a failed sync is not retried"
    );
    assert!(!app.is_ready());

    // the disk answers again, and its next fsync would report a success that proves
    // nothing: every write is refused (the retry of the failed one too)
    fx.store.fail_syncs.store(false, Ordering::SeqCst);
    let refused = [
        app.hold(&user, decode(hold_params(&fid, &seats[1], "s1")).unwrap())
            .await
            .wire(),
        app.hold(&user, decode(hold_params(&fid, &seats[2], "s2")).unwrap())
            .await
            .wire(),
        app.pay(
            &user,
            decode(json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"}))
                .unwrap(),
        )
        .await
        .wire(),
        app.cancel(
            &user,
            decode(json!({"locator": loc, "request_id": "c1"})).unwrap(),
        )
        .await
        .wire(),
    ];
    for r in refused {
        assert_eq!(r.unwrap_err(), AppError::Internal);
    }
    assert_eq!(
        register(app, "latecomer").await.unwrap_err(),
        AppError::Internal
    );
    assert_eq!(
        fx.store.syncs.load(Ordering::SeqCst),
        syncs + 1,
        "nothing is synced after the failure"
    );
    assert!(!app.is_ready());

    // the seat map shows what is durable; reads that could show the failed write fail
    assert_eq!(seat_status(app, &fid, &seats[0]), "held");
    assert_eq!(seat_status(app, &fid, &seats[1]), "available");
    assert_eq!(seat_status(app, &fid, &seats[2]), "available");
    assert_eq!(
        app.bookings_list(&user, Default::default())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_after_a_failed_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let running = jetway::server::start_app(app.clone()).await.unwrap();
    let addr = running.addr;
    assert_eq!(common::http_get(addr, "/readyz").await.unwrap().0, 200);
    store.fail_syncs.store(true, Ordering::SeqCst);
    assert_eq!(
        register(&app, "unready").await.unwrap_err(),
        AppError::Internal
    );
    let (code, body) = common::http_get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("restart"), "{body}");
    store.fail_syncs.store(false, Ordering::SeqCst);
    assert_eq!(common::http_get(addr, "/readyz").await.unwrap().0, 503);
    running.shutdown().await;
}

/// An admin's backup whose token cannot be checked (the store fails a read) is
/// answered 503, to try again, not 401 as if the token were wrong; once the store
/// reads again the same token gets the snapshot, and a wrong one 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_token_cannot_be_checked_is_not_called_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let password = "backup admin 2026";
    let (app, store) = faulty_app(dir.path(), |c| {
        c.admin_password = Some(password.into());
    })
    .await;
    let running = jetway::server::start_app(app.clone()).await.unwrap();
    let addr = running.addr;
    let mut admin = common::Client::connect(&format!("ws://{addr}/ws")).await;
    let login = json!({"username": "admin", "password": password});
    let token = admin.ok("auth.login", login).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    store.fail_user_reads.store(true, Ordering::SeqCst);
    let (code, body) = common::http_backup(addr, &token).await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (503, "the token cannot be checked now: try again later")
    );
    store.fail_user_reads.store(false, Ordering::SeqCst);
    let (code, body) = common::http_backup(addr, &token).await.unwrap();
    assert_eq!(code, 200);
    assert!(!body.is_empty());
    assert_eq!(
        common::http_backup(addr, "not-a-token").await.unwrap().0,
        401
    );
    running.shutdown().await;
}

/// After a failed sync, a restart serves exactly what is on disk: every acknowledged
/// write, and the failed request's outcome settled one way or the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_failed_sync_serves_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let user = register(&app, "restarted").await.unwrap();
    let (fid, seats) = flight_and_seats(&app, 2);
    let kept = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "k1")).unwrap())
        .await
        .wire()
        .unwrap();
    store.fail_syncs.store(true, Ordering::SeqCst);
    assert_eq!(
        app.hold(&user, decode(hold_params(&fid, &seats[1], "f1")).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    close(app, store).await;

    let on_disk = SledStore::open(dir.path())
        .unwrap()
        .user_bookings(user.user_id, Page::ALL)
        .unwrap()
        .0;
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    assert!(app.is_ready());
    let listed: Vec<Value> = app
        .bookings_list(&user, Default::default())
        .await
        .wire()
        .unwrap()["bookings"]
        .as_array()
        .unwrap()
        .clone();
    let locators = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|b| b["locator"].as_str().unwrap().to_owned())
            .collect()
    };
    let disk_locators: Vec<String> = on_disk.iter().map(|b| b.locator.to_string()).collect();
    assert_eq!(locators(&listed), disk_locators);
    assert!(disk_locators.contains(&kept["booking"]["locator"].as_str().unwrap().to_owned()));
    for seat in &seats {
        let on = on_disk.iter().any(|b| {
            b.status.occupies_seats() && b.occupied_seats().any(|s| s.to_string() == *seat)
        });
        let expected = if on { "held" } else { "available" };
        assert_eq!(seat_status(&app, &fid, seat), expected, "seat {seat}");
    }
    // the failed request, retried, gets the answer that agrees with the disk
    let retry = app
        .hold(&user, decode(hold_params(&fid, &seats[1], "f1")).unwrap())
        .await
        .wire()
        .unwrap();
    assert_eq!(retry["booking"]["status"], "held");
    let retried = retry["booking"]["locator"].as_str().unwrap().to_owned();
    assert_eq!(
        disk_locators.contains(&retried),
        on_disk.len() == 2,
        "replayed if its write reached the disk, made now otherwise"
    );
    assert_eq!(seat_status(&app, &fid, &seats[1]), "held");
    close(app, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_reply_waits_until_its_write_is_durable() {
    let fx = fixture().await;
    let app = &fx.app;
    let user = register(app, "replayed").await.unwrap();
    let (fid, seats) = flight_and_seats(app, 1);
    let key = IdemKey {
        user: user.user_id,
        method: "booking.hold",
        request_id: "r1".into(),
    };
    let paused = fx.store.pause_syncs();
    // the first try writes its batch and reply, then its client goes away before the
    // batch is on disk
    let first = {
        let (app, user) = (app.clone(), user.clone());
        let p = decode(hold_params(&fid, &seats[0], "r1")).unwrap();
        tokio::spawn(async move { app.hold(&user, p).await.wire() })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fx.store.inner.reply(&key).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hold was never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // the retry finds the stored reply, but the write is still not durable
    let mut retry = spawn_hold(app, &user, &fid, &seats[0], "r1");
    still_waiting(
        &mut retry,
        "a replayed reply went out before its write was durable",
    )
    .await;
    drop(paused);
    let again = retry.await.unwrap().unwrap();
    assert_eq!(again["booking"]["status"], "held");
    app.stop().await;
}

/// A refund opened by a write whose sync failed lives only in memory: paying it would
/// be forgotten by the restart, which would then refund again. No money moves after
/// a failed sync, neither from the request nor from the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_refund_is_paid_from_a_record_whose_sync_failed() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(common::gateway::CountingGateway::default());
    let (app, store) = faulty_app_paying(dir.path(), |_| {}, gateway.clone()).await;
    let user = register(&app, "refundee").await.unwrap();
    let (fid, seats) = flight_and_seats(&app, 1);
    let loc = paid_booking(&app, &user, &fid, &seats[0]).await;
    store.fail_syncs.store(true, Ordering::SeqCst);
    let cancel = json!({"locator": loc, "request_id": "c"});
    assert_eq!(
        app.cancel(&user, decode(cancel.clone()).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    store.fail_syncs.store(false, Ordering::SeqCst);
    assert_eq!(
        app.store.open_refunds().unwrap().len(),
        1,
        "the refund record is in the store's memory"
    );
    app.reconcile_payments(Duration::ZERO).await;
    assert_eq!(
        app.cancel(&user, decode(cancel).unwrap())
            .await
            .wire()
            .unwrap_err(),
        AppError::Internal
    );
    assert_eq!(
        gateway.refunds(),
        Vec::new(),
        "no refund from a record that never reached the disk"
    );
    app.stop().await;
}

/// A cancel whose refund record cannot be written answers an error and leaves the
/// flight usable: the booking's busy mark is taken only once the record is on its
/// way, never dropped while the flight's working map is locked (which deadlocked the
/// flight and the worker thread that answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_refund_cannot_be_written_leaves_the_flight_usable() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(common::gateway::CountingGateway::default());
    let (app, store) = faulty_app_paying(dir.path(), |_| {}, gateway.clone()).await;
    let user = register(&app, "canceller").await.unwrap();
    let (fid, seats) = flight_and_seats(&app, 2);
    let loc = paid_booking(&app, &user, &fid, &seats[0]).await;
    store.fail_writes.store(true, Ordering::SeqCst);
    let cancel = {
        let (app, user) = (app.clone(), user.clone());
        let params = decode(json!({"locator": loc, "request_id": "c"})).unwrap();
        tokio::spawn(async move { app.cancel(&user, params).await.wire() })
    };
    let answered = tokio::time::timeout(Duration::from_secs(30), cancel)
        .await
        .expect("the cancel answers instead of deadlocking")
        .unwrap();
    assert!(answered.is_err(), "{answered:?}");
    store.fail_writes.store(false, Ordering::SeqCst);
    let other = {
        let (app, user) = (app.clone(), user.clone());
        let params = decode(hold_params(&fid, &seats[1], "h2")).unwrap();
        tokio::spawn(async move { app.hold(&user, params).await.wire() })
    };
    tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .expect("the flight still takes holds")
        .unwrap()
        .unwrap();
    assert_eq!(
        gateway.refunds(),
        Vec::new(),
        "no refund without its record"
    );
    app.stop().await;
}

/// Holds `seat` and pays for it; returns the booking's locator.
async fn paid_booking(
    app: &Arc<App>,
    user: &jetway::app::AuthSession,
    fid: &str,
    seat: &str,
) -> Value {
    let held = app
        .hold(user, decode(hold_params(fid, seat, "h")).unwrap())
        .await
        .wire()
        .unwrap();
    let loc = held["booking"]["locator"].clone();
    app.pay(
        user,
        decode(json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p"}))
            .unwrap(),
    )
    .await
    .wire()
    .unwrap();
    loc
}

/// A write that fails part-way (sled applies a batch in memory before its I/O
/// buffer's `pwrite`, which can fail) is followed by a sync: when the store is broken
/// that sync fails too, and the process stops taking writes and reports not ready,
/// instead of letting a retry read the half-written reply as if it were durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_followed_by_a_sync_that_fails_a_broken_store() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let user = register(&app, "halfway").await.unwrap();
    let (fid, seats) = flight_and_seats(&app, 1);
    assert!(app.is_ready());
    store.fail_writes.store(true, Ordering::SeqCst);
    store.fail_syncs.store(true, Ordering::SeqCst);
    let refused = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "h1")).unwrap())
        .await
        .wire();
    assert!(refused.is_err(), "{refused:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !app.committer.has_failed() {
        assert!(
            std::time::Instant::now() < deadline,
            "no sync ran after the failed write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!app.is_ready());
    app.stop().await;
}
