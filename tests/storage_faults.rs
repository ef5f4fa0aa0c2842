//! Storage errors: when the disk refuses writes (full, read-only) or syncs, a
//! request gets an error, nothing is half-written, reads keep working, and the same
//! requests succeed once the disk is back.
//!
//! The store is the real sled store behind a wrapper that fails writes or syncs on
//! demand (running as root, a read-only data dir would not refuse anything).

use jetway::app::{App, AuthSession};
use jetway::domain::{Booking, Flight, FlightId, Locator, Order, UserId, Username};
use jetway::fanout::{outbox, QueueLimits};
use jetway::protocol::params::decode;
use jetway::protocol::ApiError;
use jetway::store::{
    Batch, HistoryEvent, IdemKey, PaymentAttempt, SessionRecord, SledStore, Store, StoreError,
    StoreResult, UserRecord,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The sled store, failing `write` and/or `sync` while told to.
struct Faulty {
    inner: SledStore,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
}

fn disk_full() -> StoreError {
    StoreError::Io("No space left on device (os error 28)".into())
}

impl Store for Faulty {
    fn write(&self, batch: &Batch) -> StoreResult<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.write(batch)
    }
    fn sync(&self) -> StoreResult<()> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.sync()
    }
    fn next_id(&self) -> StoreResult<u64> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.next_id()
    }
    fn user_by_name(&self, name: &Username) -> StoreResult<Option<UserRecord>> {
        self.inner.user_by_name(name)
    }
    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.inner.user(id)
    }
    fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.session(token_hash)
    }
    fn flights(&self) -> StoreResult<Vec<Flight>> {
        self.inner.flights()
    }
    fn version(&self, flight: &FlightId) -> StoreResult<u64> {
        self.inner.version(flight)
    }
    fn booking(&self, locator: &Locator) -> StoreResult<Option<Booking>> {
        self.inner.booking(locator)
    }
    fn all_bookings(&self) -> StoreResult<Vec<Booking>> {
        self.inner.all_bookings()
    }
    fn user_bookings(&self, user: UserId) -> StoreResult<Vec<Booking>> {
        self.inner.user_bookings(user)
    }
    fn order(&self, order_id: &str) -> StoreResult<Option<Order>> {
        self.inner.order(order_id)
    }
    fn user_orders(&self, user: UserId) -> StoreResult<Vec<Order>> {
        self.inner.user_orders(user)
    }
    fn history(&self, user: UserId, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        self.inner.history(user, limit)
    }
    fn reply(&self, key: &IdemKey) -> StoreResult<Option<Value>> {
        self.inner.reply(key)
    }
    fn open_attempts(&self) -> StoreResult<Vec<PaymentAttempt>> {
        self.inner.open_attempts()
    }
    fn attempt(&self, id: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.inner.attempt(id)
    }
    fn attempt_by_ref(&self, payment_ref: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.inner.attempt_by_ref(payment_ref)
    }
    fn webhook_seen(&self, event_id: &str) -> StoreResult<bool> {
        self.inner.webhook_seen(event_id)
    }
}

struct Fixture {
    app: Arc<App>,
    store: Arc<Faulty>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty {
        inner: SledStore::open(dir.path()).unwrap(),
        fail_writes: AtomicBool::new(false),
        fail_syncs: AtomicBool::new(false),
    });
    let config = jetway::Config::for_tests(dir.path().to_path_buf());
    let app = App::with_parts(
        config,
        store.clone(),
        Arc::new(jetway::payments::Sandbox::default()),
    )
    .await
    .expect("app opens");
    Fixture {
        app,
        store,
        _dir: dir,
    }
}

async fn register(app: &App, name: &str) -> Result<AuthSession, ApiError> {
    let (o, _rx) = outbox(QueueLimits::default());
    let mut conn = None;
    app.register(
        decode(json!({"username": name, "password": "correct horse 42"}))?,
        &o,
        &mut conn,
    )
    .await?;
    Ok(conn.expect("logged in"))
}

/// A flight more than three days out and two free economy seats on it.
fn flight_and_seats(app: &App) -> (String, Vec<String>) {
    let found = app.search(decode(json!({"limit": 500})).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let f = found["flights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            time::OffsetDateTime::parse(
                f["departs_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
                - now
                > time::Duration::days(3)
        })
        .unwrap()["flight_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let map = app
        .flight_get(decode(json!({"flight_id": f})).unwrap())
        .unwrap();
    let seats = map["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "available" && s["cabin"] == "economy")
        .take(2)
        .map(|s| s["seat"].as_str().unwrap().to_owned())
        .collect();
    (f, seats)
}

fn hold_params(flight: &str, seat: &str, rid: &str) -> Value {
    json!({"flight_id": flight, "seats": [seat], "passengers": [{"name": "Ada"}], "request_id": rid})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_errors_and_leave_nothing_behind() {
    let fx = fixture().await;
    let app = &fx.app;
    let user = register(app, "faulty").await.unwrap();
    let (fid, seats) = flight_and_seats(app);
    let held = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "h1")).unwrap())
        .await
        .unwrap();
    let loc = held["booking"]["locator"].as_str().unwrap().to_owned();
    let map_before = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .unwrap();
    let list_before = app.bookings_list(&user).await.unwrap();
    let history_before = app
        .history_list(&user, decode(json!({})).unwrap())
        .await
        .unwrap();

    // the disk is full
    fx.store.fail_writes.store(true, Ordering::SeqCst);
    assert_eq!(
        register(app, "newcomer").await.unwrap_err(),
        ApiError::Internal
    );
    assert_eq!(
        app.hold(&user, decode(hold_params(&fid, &seats[1], "h2")).unwrap())
            .await
            .unwrap_err(),
        ApiError::Internal
    );
    let pay = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"});
    assert_eq!(
        app.pay(&user, decode(pay.clone()).unwrap())
            .await
            .unwrap_err(),
        ApiError::Internal
    );
    let cancel = json!({"locator": loc, "request_id": "c1"});
    assert_eq!(
        app.cancel(&user, decode(cancel.clone()).unwrap())
            .await
            .unwrap_err(),
        ApiError::Internal
    );

    // reads keep working, and show nothing half-written
    let map = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .unwrap();
    assert_eq!(map, map_before, "the seat map and its version did not move");
    assert_eq!(app.bookings_list(&user).await.unwrap(), list_before);
    assert_eq!(
        app.history_list(&user, decode(json!({})).unwrap())
            .await
            .unwrap(),
        history_before
    );
    assert_eq!(app.orders_list(&user).await.unwrap()["orders"], json!([]));
    assert!(app
        .store
        .user_by_name(&Username::parse("newcomer").unwrap())
        .unwrap()
        .is_none());
    let got = app
        .booking_get(&user, decode(json!({"locator": loc})).unwrap())
        .await
        .unwrap();
    assert_eq!(got["booking"]["status"], "held");
    assert!(app.search(decode(json!({})).unwrap()).is_ok());

    // the disk is back: the same requests now act (no error reply was remembered)
    fx.store.fail_writes.store(false, Ordering::SeqCst);
    register(app, "newcomer").await.unwrap();
    let h2 = app
        .hold(&user, decode(hold_params(&fid, &seats[1], "h2")).unwrap())
        .await
        .unwrap();
    assert_eq!(h2["booking"]["status"], "held");
    let paid = app.pay(&user, decode(pay).unwrap()).await.unwrap();
    assert_eq!(paid["booking"]["status"], "confirmed");
    let map = app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .unwrap();
    assert_eq!(
        map["version"].as_u64().unwrap(),
        map_before["version"].as_u64().unwrap() + 2,
        "a new hold and a payment: two versions, none used by the failed writes"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_never_acknowledged() {
    let fx = fixture().await;
    let app = &fx.app;
    let user = register(app, "unsynced").await.unwrap();
    let (fid, seats) = flight_and_seats(app);
    fx.store.fail_syncs.store(true, Ordering::SeqCst);
    let r = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "s1")).unwrap())
        .await;
    assert_eq!(
        r.unwrap_err(),
        ApiError::Internal,
        "a change that is not on disk is not reported as done"
    );
    // reads still answer
    assert!(app
        .flight_get(decode(json!({"flight_id": fid})).unwrap())
        .is_ok());
    assert!(app.bookings_list(&user).await.is_ok());
    fx.store.fail_syncs.store(false, Ordering::SeqCst);
    // once syncs work again the retry gets a definite answer
    let again = app
        .hold(&user, decode(hold_params(&fid, &seats[0], "s1")).unwrap())
        .await
        .unwrap();
    assert_eq!(again["booking"]["status"], "held");
    app.stop().await;
}
