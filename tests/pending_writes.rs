//! What others may decide or see while a write is not durable yet: once an admin
//! starts cancelling a flight, no hold, payment or seat change starts on it, even
//! before the cancellation is on disk; `admin.flights.stats` never shows a seat
//! change that is not on disk; and a user's next hold does not wait for the sync of
//! the one before.
//!
//! The store is the real sled store behind [`Faulty`], whose syncs can be held back.

mod common;

use common::faulty::*;
use jetway::app::AppError;
use jetway::app::AuthSession;
use jetway::domain::{UserId, Username};
use jetway::protocol::params::{decode, CancelFlight};
use jetway::store::{Page, Role, Store};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Fixture {
    app: std::sync::Arc<jetway::app::App>,
    store: std::sync::Arc<Faulty>,
    passenger: AuthSession,
    flight: String,
    seats: Vec<String>,
    _dir: tempfile::TempDir,
}

/// An app on a [`Faulty`] store, a passenger, and a flight more than three days out
/// with four free economy seats.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let passenger = register(&app, "ada").await.unwrap();
    let (flight, seats) = flight_and_seats(&app, 4);
    Fixture {
        app,
        store,
        passenger,
        flight,
        seats,
        _dir: dir,
    }
}

impl Fixture {
    /// Waits until the passenger has a booking written (durable or not).
    async fn passenger_hold_written(&self) {
        wait_until("the passenger's hold written", || {
            !self
                .store
                .inner
                .user_bookings(self.passenger.user_id, Page::ALL)
                .unwrap()
                .0
                .is_empty()
        })
        .await;
    }
}

fn admin() -> AuthSession {
    AuthSession {
        user_id: UserId(0),
        username: Username::parse("admin").unwrap(),
        role: Role::Admin,
        token_hash: String::new(),
    }
}

/// Polls `cond` until it holds (20 s at most).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request that must be refused at once, without waiting for any sync.
async fn refused_at_once<T: std::fmt::Debug>(
    what: &str,
    r: impl std::future::Future<Output = Result<T, AppError>>,
) {
    match tokio::time::timeout(Duration::from_secs(10), r).await {
        Ok(Err(AppError::InvalidState(m))) => assert!(m.contains("cancelled"), "{what}: {m}"),
        Ok(other) => panic!("{what} during the cancellation: {other:?}"),
        Err(_) => panic!("{what} was decided and waits to be written"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_being_cancelled_takes_no_hold_payment_or_seat_change() {
    let fx = fixture().await;
    let (app, user) = (&fx.app, &fx.passenger);
    let held = app
        .hold(
            user,
            decode(hold_params(&fx.flight, &fx.seats[0], "h1")).unwrap(),
        )
        .await
        .wire()
        .unwrap();
    let held = held["booking"]["locator"].as_str().unwrap().to_owned();
    let paid = app
        .hold(
            user,
            decode(hold_params(&fx.flight, &fx.seats[1], "h2")).unwrap(),
        )
        .await
        .wire()
        .unwrap();
    let paid = paid["booking"]["locator"].as_str().unwrap().to_owned();
    app.pay(
        user,
        decode(json!({"locator": paid, "payment_method": "pm_card_visa", "request_id": "p1"}))
            .unwrap(),
    )
    .await
    .wire()
    .unwrap();

    // the cancellation is written but not yet durable
    let paused = fx.store.pause_syncs();
    let cancel = {
        let app = app.clone();
        let p = CancelFlight {
            flight_id: fx.flight.clone(),
            reason: "weather".into(),
        };
        tokio::spawn(async move { app.admin_cancel_flight(&admin(), p).await.wire() })
    };
    wait_until("the cancellation written", || {
        fx.store
            .inner
            .flights()
            .unwrap()
            .iter()
            .any(|f| f.id.as_str() == fx.flight && f.cancelled.is_some())
    })
    .await;

    refused_at_once(
        "a hold",
        app.hold(
            user,
            decode(hold_params(&fx.flight, &fx.seats[2], "h3")).unwrap(),
        ),
    )
    .await;
    refused_at_once(
        "a payment",
        app.pay(
            user,
            decode(json!({"locator": held, "payment_method": "pm_card_visa", "request_id": "p2"}))
                .unwrap(),
        ),
    )
    .await;
    refused_at_once(
        "a seat change",
        app.change_seat(
            user,
            decode(json!({"locator": paid, "from": fx.seats[1], "to": fx.seats[3], "request_id": "s1"}))
                .unwrap(),
        ),
    )
    .await;

    // the passenger's own cancel is refused too, without being told the flight is
    // cancelled before that is on disk (a crash, or the write failing, would undo it)
    match tokio::time::timeout(
        Duration::from_secs(10),
        app.cancel(
            user,
            decode(json!({"locator": paid, "request_id": "c1"})).unwrap(),
        ),
    )
    .await
    {
        Ok(Err(AppError::InvalidState(m))) => {
            assert!(m.contains("is cancelling"), "{m}")
        }
        other => panic!("a passenger's cancel during the cancellation: {other:?}"),
    }

    drop(paused);
    let done = cancel.await.unwrap().unwrap();
    assert_eq!(
        (done["refunded"].as_u64(), done["released"].as_u64()),
        (Some(1), Some(1))
    );
    let list = app
        .bookings_list(user, Default::default())
        .await
        .wire()
        .unwrap();
    assert_eq!(
        list["bookings"].as_array().unwrap().len(),
        2,
        "nothing new landed: {list}"
    );
}

fn seats_held(stats: &Value, flight: &str) -> u64 {
    stats["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["flight_id"] == flight)
        .and_then(|r| r["seats_held"].as_u64())
        .expect("the flight in stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stats_never_show_a_change_that_is_not_durable() {
    let fx = fixture().await;
    let paused = fx.store.pause_syncs();
    let hold = {
        let (app, user) = (fx.app.clone(), fx.passenger.clone());
        let p = decode(hold_params(&fx.flight, &fx.seats[0], "h1")).unwrap();
        tokio::spawn(async move { app.hold(&user, p).await.wire() })
    };
    fx.passenger_hold_written().await;
    let mut stats = {
        let app = fx.app.clone();
        tokio::spawn(async move { app.admin_stats().await.wire() })
    };
    // an answer while the hold is not on disk must not count it (waiting is fine)
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), &mut stats).await {
        assert_eq!(seats_held(&r.unwrap().unwrap(), &fx.flight), 0);
    }
    drop(paused);
    hold.await.unwrap().unwrap();
    let after = fx.app.admin_stats().await.wire().unwrap();
    assert_eq!(
        seats_held(&after, &fx.flight),
        1,
        "a durable hold is counted"
    );
}

/// A user's requests take turns, but a hold's turn ends once its reply is written: the
/// user's next hold is decided while the first one waits for its sync, a repeat of the
/// first gets the first reply only once it is durable, and nothing is answered before
/// the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_next_hold_is_written_while_the_first_waits_for_its_sync() {
    let fx = fixture().await;
    let paused = fx.store.pause_syncs();
    let hold = |seat: usize, rid: &str| {
        spawn_hold(&fx.app, &fx.passenger, &fx.flight, &fx.seats[seat], rid)
    };
    let written = || {
        fx.store
            .inner
            .user_bookings(fx.passenger.user_id, Page::ALL)
            .unwrap()
            .0
            .len()
    };
    let first = hold(0, "h1");
    wait_until("the first hold written", || written() == 1).await;
    let second = hold(1, "h2");
    wait_until(
        "the second hold written before the first is durable",
        || written() == 2,
    )
    .await;
    let mut repeat = hold(0, "h1");
    still_waiting(
        &mut repeat,
        "a repeat was answered with a reply that is not durable",
    )
    .await;
    assert!(!first.is_finished() && !second.is_finished());
    drop(paused);
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    let repeat = repeat.await.unwrap().unwrap();
    assert_eq!(repeat["booking"]["locator"], first["booking"]["locator"]);
    assert_ne!(second["booking"]["locator"], first["booking"]["locator"]);
    assert_eq!(written(), 2, "the repeat held nothing");
}

/// The open-holds cap counts a hold that is written but not yet durable, and the
/// refusal it causes waits until that hold is on disk: a crash before the sync must
/// not leave the user refused because of a hold that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_waits_for_the_hold_it_rests_on() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |c| c.limits.max_open_holds = 1).await;
    let user = register(&app, "ada").await.unwrap();
    let (flight, seats) = flight_and_seats(&app, 2);
    let paused = store.pause_syncs();
    let hold = |seat: usize, rid: &str| spawn_hold(&app, &user, &flight, &seats[seat], rid);
    let first = hold(0, "h1");
    wait_until("the first hold written", || {
        store
            .inner
            .user_bookings(user.user_id, Page::ALL)
            .unwrap()
            .0
            .len()
            == 1
    })
    .await;
    let mut second = hold(1, "h2");
    still_waiting(&mut second, "refused because of a hold that is not on disk").await;
    drop(paused);
    first.await.unwrap().unwrap();
    match second.await.unwrap() {
        Err(AppError::InvalidState(m)) => assert!(m.contains("open holds"), "{m}"),
        other => panic!("the second hold: {other:?}"),
    }
}

/// A seat refused because another user's hold took it is refused only once that hold
/// is on disk and published: a crash before the sync must not leave a passenger told
/// "taken" by a hold that never existed (the refusal used to go out at once, decided
/// on the working map, while the hold waited for its sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_refused_for_another_users_hold_waits_for_that_hold() {
    let fx = fixture().await;
    let bob = register(&fx.app, "bob").await.unwrap();
    let paused = fx.store.pause_syncs();
    let first = spawn_hold(&fx.app, &fx.passenger, &fx.flight, &fx.seats[0], "h1");
    fx.passenger_hold_written().await;
    let mut second = spawn_hold(&fx.app, &bob, &fx.flight, &fx.seats[0], "b1");
    still_waiting(&mut second, "refused because of a hold that is not on disk").await;
    drop(paused);
    first.await.unwrap().unwrap();
    match second.await.unwrap() {
        Err(AppError::SeatUnavailable(seats)) => assert_eq!(seats, vec![fx.seats[0].clone()]),
        other => panic!("bob's hold: {other:?}"),
    }
    let fs = fx.app.inventory.get(&fx.flight).unwrap();
    assert_eq!(
        fs.published_version(),
        fs.working().version,
        "answered once ada's hold was published"
    );
}

/// The departure tick never writes over a flight change still being made durable: a
/// cancellation written but not synced when the tick finds the flight due stays the
/// flight's state (the tick waits for it, then sees a cancelled flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_departure_tick_does_not_write_over_a_cancellation_being_synced() {
    let fx = fixture().await;
    let stored = |fx: &Fixture| {
        fx.store
            .inner
            .flights()
            .unwrap()
            .into_iter()
            .find(|f| f.id.as_str() == fx.flight)
            .unwrap()
    };
    let paused = fx.store.pause_syncs();
    let cancel = {
        let app = fx.app.clone();
        let p = CancelFlight {
            flight_id: fx.flight.clone(),
            reason: "weather".into(),
        };
        tokio::spawn(async move { app.admin_cancel_flight(&admin(), p).await.wire() })
    };
    wait_until("the cancellation written", || {
        stored(&fx).cancelled.is_some()
    })
    .await;
    // the tick, as if the flight's departure had passed
    let mut tick = {
        let app = fx.app.clone();
        let later = jetway::domain::now_ms() + 30 * 24 * 3_600_000;
        tokio::spawn(async move { app.mark_departures(later).await })
    };
    still_waiting(&mut tick, "the tick waits for the cancellation").await;
    drop(paused);
    cancel.await.unwrap().unwrap();
    tick.await.unwrap();
    let f = stored(&fx);
    assert!(
        f.cancelled.is_some(),
        "the cancellation was written over: {f:?}"
    );
    assert_ne!(f.stage, jetway::domain::FlightStatus::Departed);
}

/// A write that need not be durable before its caller goes on (a failed login's
/// history event) is not shown by a read before it is durable: the read waits for
/// its sync. Before, `history.list` showed it at once, and a kill -9 before some
/// later write's sync lost an event a client had been shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_shows_a_write_made_without_a_ticket_before_it_is_durable() {
    let fx = fixture().await;
    let paused = fx.store.pause_syncs();
    let (o, _rx) = jetway::fanout::outbox(jetway::fanout::QueueLimits::default());
    let mut conn = None;
    let wrong = decode(json!({"username": "ada", "password": "not the password"})).unwrap();
    let r = fx.app.login(wrong, &o, &mut conn, |_| {}).await;
    assert!(matches!(r, Err(AppError::BadCredentials)), "{r:?}");
    let kinds = |r: Value| -> Vec<String> {
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut history = {
        let (app, user) = (fx.app.clone(), fx.passenger.clone());
        tokio::spawn(async move {
            app.history_list(&user, decode(json!({})).unwrap())
                .await
                .wire()
        })
    };
    // an answer while the event is not on disk must not show it (waiting is fine)
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), &mut history).await {
        let shown = kinds(r.unwrap().unwrap());
        assert!(!shown.iter().any(|k| k == "login_failed"), "{shown:?}");
    }
    drop(paused);
    let shown = kinds(history.await.unwrap().unwrap());
    assert_eq!(
        shown.first().map(String::as_str),
        Some("login_failed"),
        "{shown:?}"
    );
}
