//! The real sled store behind a wrapper that fails writes or syncs on demand (running
//! as root, a read-only data dir would not refuse anything), can hold syncs back, and
//! counts the reads that decode bookings.

use jetway::app::AppError;
use jetway::app::{App, AuthSession};
use jetway::domain::{
    Booking, Flight, FlightId, Locator, Millis, Order, UserId, Username, WaitlistEntry,
};
use jetway::fanout::{outbox, QueueLimits};
use jetway::protocol::params::decode;
use jetway::store::{
    Batch, BookingCounts, HistoryEvent, IdemKey, Page, Paged, PaymentAttempt, SessionRecord,
    SledStore, Store, StoreError, StoreResult, UserRecord,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub struct Faulty {
    pub inner: SledStore,
    pub fail_writes: AtomicBool,
    pub fail_syncs: AtomicBool,
    /// While true, no refund reads as open, as on a node whose copy of the store has
    /// not seen a refund's opening through another node yet.
    pub hide_open_refunds: AtomicBool,
    /// While true, reading a user fails (an I/O error).
    pub fail_user_reads: AtomicBool,
    /// While above zero, a read of a user's oldest sessions takes one of these places
    /// and waits until all are taken, so that that many reads count the same
    /// sessions ([`Faulty::meet_in_oldest_sessions`]).
    meeting: Mutex<usize>,
    met: Condvar,
    /// While true, `sync` waits (see [`Faulty::pause_syncs`]).
    paused: Mutex<bool>,
    resumed: Condvar,
    /// Calls that read booking records.
    pub booking_reads: AtomicU64,
    /// Calls of `sync`.
    pub syncs: AtomicU64,
}

fn disk_full() -> StoreError {
    StoreError::Io("No space left on device (os error 28)".into())
}

impl Faulty {
    pub fn open(dir: &Path) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: SledStore::open(dir).unwrap(),
            fail_writes: AtomicBool::new(false),
            fail_syncs: AtomicBool::new(false),
            hide_open_refunds: AtomicBool::new(false),
            fail_user_reads: AtomicBool::new(false),
            meeting: Mutex::new(0),
            met: Condvar::new(),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            booking_reads: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Syncs wait while the returned guard lives (also when a failing test unwinds,
    /// so that the commit loop is not left waiting for a blocked sync).
    pub fn pause_syncs(&self) -> PausedSyncs<'_> {
        self.set_paused(true);
        PausedSyncs(self)
    }

    /// The next `reads` reads of a user's oldest sessions wait for each other (at
    /// most 20 s), so that they all count the same sessions.
    pub fn meet_in_oldest_sessions(&self, reads: usize) {
        *self.meeting.lock().unwrap() = reads;
    }

    fn set_paused(&self, pause: bool) {
        *self.paused.lock().unwrap() = pause;
        self.resumed.notify_all();
    }

    fn read_bookings(&self) {
        self.booking_reads.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct PausedSyncs<'a>(&'a Faulty);

impl Drop for PausedSyncs<'_> {
    fn drop(&mut self) {
        self.0.set_paused(false);
    }
}

impl Store for Faulty {
    fn write(&self, batch: &Batch) -> StoreResult<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.write(batch)
    }
    fn sync(&self) -> StoreResult<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let mut paused = self.paused.lock().unwrap();
        while *paused {
            paused = self.resumed.wait(paused).unwrap();
        }
        drop(paused);
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(StoreError::Io("Input/output error (os error 5)".into()));
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
        if self.fail_user_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Io("Input/output error (os error 5)".into()));
        }
        self.inner.user(id)
    }
    fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.session(token_hash)
    }
    fn snapshot(&self) -> StoreResult<Vec<u8>> {
        self.inner.snapshot()
    }
    fn sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.inner.sessions()
    }
    fn oldest_sessions(
        &self,
        user: UserId,
        n: usize,
    ) -> StoreResult<(usize, Vec<jetway::store::SessionKey>)> {
        let read = self.inner.oldest_sessions(user, n);
        let mut left = self.meeting.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            self.met.notify_all();
            let (left, waited) = self
                .met
                .wait_timeout_while(left, std::time::Duration::from_secs(20), |l| *l > 0)
                .unwrap();
            drop(left);
            assert!(!waited.timed_out(), "the other reads never came");
        }
        read
    }
    fn oldest_account_events(
        &self,
        user: UserId,
        line: jetway::store::AccountLine,
        n: usize,
    ) -> StoreResult<(usize, Vec<jetway::store::AccountEvent>)> {
        self.inner.oldest_account_events(user, line, n)
    }
    fn flights(&self) -> StoreResult<Vec<Flight>> {
        self.inner.flights()
    }
    fn flight(&self, id: &FlightId) -> StoreResult<Option<Flight>> {
        self.inner.flight(id)
    }
    fn version(&self, flight: &FlightId) -> StoreResult<u64> {
        self.inner.version(flight)
    }
    fn checkin_sequence(&self, flight: &FlightId) -> StoreResult<u64> {
        self.inner.checkin_sequence(flight)
    }
    fn line_revision(&self, flight: &FlightId) -> StoreResult<Option<u64>> {
        self.inner.line_revision(flight)
    }
    fn user_line(&self, user: UserId) -> StoreResult<(Option<u64>, usize)> {
        self.inner.user_line(user)
    }
    fn user_holds(&self, user: UserId, now: Millis) -> StoreResult<(Option<u64>, usize)> {
        self.inner.user_holds(user, now)
    }
    fn booking(&self, locator: &Locator) -> StoreResult<Option<Booking>> {
        self.read_bookings();
        self.inner.booking(locator)
    }
    fn all_bookings(&self) -> StoreResult<Vec<Booking>> {
        self.read_bookings();
        self.inner.all_bookings()
    }
    fn booking_counts(&self) -> BookingCounts {
        self.inner.booking_counts()
    }
    fn waiting_entries(&self, user: UserId) -> usize {
        self.inner.waiting_entries(user)
    }
    fn capped_holds(&self, user: UserId, now: Millis) -> StoreResult<usize> {
        self.inner.capped_holds(user, now)
    }
    fn user_bookings(&self, user: UserId, page: Page) -> StoreResult<Paged<Booking>> {
        self.read_bookings();
        self.inner.user_bookings(user, page)
    }
    fn order(&self, order_id: &str) -> StoreResult<Option<Order>> {
        self.inner.order(order_id)
    }
    fn user_orders(&self, user: UserId, page: Page) -> StoreResult<Paged<Order>> {
        self.inner.user_orders(user, page)
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
    fn booking_attempts(&self, locator: &Locator) -> StoreResult<Vec<PaymentAttempt>> {
        self.inner.booking_attempts(locator)
    }
    fn uncertain_failures(&self) -> StoreResult<Vec<PaymentAttempt>> {
        self.inner.uncertain_failures()
    }
    fn open_refund(&self, subject: &str) -> StoreResult<Option<jetway::store::RefundRecord>> {
        if self.hide_open_refunds.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.open_refund(subject)
    }
    fn open_refunds(&self) -> StoreResult<Vec<jetway::store::RefundRecord>> {
        self.inner.open_refunds()
    }
    fn refund_by_key(&self, key: &str) -> StoreResult<Option<jetway::store::RefundRecord>> {
        self.inner.refund_by_key(key)
    }
    fn refund_made_by(
        &self,
        gateway_ref: &str,
    ) -> StoreResult<Option<jetway::store::RefundRecord>> {
        self.inner.refund_made_by(gateway_ref)
    }
    fn pending_refunds(&self) -> StoreResult<Vec<(String, String)>> {
        self.inner.pending_refunds()
    }
    fn payment_mark(
        &self,
        locator: &jetway::domain::Locator,
    ) -> StoreResult<Option<jetway::store::PaymentMark>> {
        self.inner.payment_mark(locator)
    }
    fn attempt_by_ref(&self, payment_ref: &str) -> StoreResult<Option<PaymentAttempt>> {
        self.inner.attempt_by_ref(payment_ref)
    }
    fn webhook_seen(&self, event_id: &str) -> StoreResult<bool> {
        self.inner.webhook_seen(event_id)
    }
    fn waitlist_entry(&self, id: &str) -> StoreResult<Option<WaitlistEntry>> {
        self.inner.waitlist_entry(id)
    }
    fn flight_waitlist(&self, flight: &FlightId) -> StoreResult<Vec<WaitlistEntry>> {
        self.inner.flight_waitlist(flight)
    }
    fn user_waitlist(&self, user: UserId, page: Page) -> StoreResult<Paged<WaitlistEntry>> {
        self.inner.user_waitlist(user, page)
    }
}

/// An app on a [`Faulty`] store over `dir`, with the sandbox gateway.
pub async fn faulty_app(
    dir: &Path,
    tweak: impl FnOnce(&mut jetway::Config),
) -> (Arc<App>, Arc<Faulty>) {
    faulty_app_paying(dir, tweak, Arc::new(jetway::payments::Sandbox::default())).await
}

/// [`faulty_app`] with its payment gateway.
pub async fn faulty_app_paying(
    dir: &Path,
    tweak: impl FnOnce(&mut jetway::Config),
    gateway: Arc<dyn jetway::payments::PaymentGateway>,
) -> (Arc<App>, Arc<Faulty>) {
    let store = Faulty::open(dir);
    let mut config = jetway::Config::for_tests(dir.to_path_buf());
    tweak(&mut config);
    let app = App::with_parts(config, store.clone(), gateway)
        .await
        .expect("app opens");
    (app, store)
}

/// Stops the app and waits until the database is closed, so that it can be opened again.
pub async fn close(app: Arc<App>, store: Arc<Faulty>) {
    app.stop().await;
    drop(app);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut store = store;
    loop {
        match Arc::try_unwrap(store) {
            Ok(s) => break drop(s),
            Err(s) if std::time::Instant::now() < deadline => {
                store = s;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(_) => panic!("the store is still in use after the app stopped"),
        }
    }
}

/// A use case's result as the client reads it (the JSON `protocol` encodes).
pub trait Wire {
    fn wire(self) -> Result<Value, AppError>;
}

impl<T: serde::Serialize> Wire for Result<T, AppError> {
    fn wire(self) -> Result<Value, AppError> {
        self.map(|r| {
            let text = jetway::protocol::results::encode(&r).expect("a result encodes");
            serde_json::from_str(text.get()).expect("a result reads back")
        })
    }
}

pub async fn register(app: &App, name: &str) -> Result<AuthSession, AppError> {
    let (o, _rx) = outbox(QueueLimits::default());
    let mut conn = None;
    let checked = app
        .check_registration(
            decode(json!({"username": name, "password": super::PASSWORD})).expect("valid params"),
        )
        .await?;
    app.register(checked, &o, &mut conn).await.wire()?;
    Ok(*conn.expect("logged in"))
}

/// A session of `name`, logged in with `password`.
pub async fn login(app: &App, name: &str, password: &str) -> AuthSession {
    let (o, _rx) = outbox(QueueLimits::default());
    let mut conn = None;
    let p = decode(json!({"username": name, "password": password})).expect("valid params");
    app.login(p, &o, &mut conn, |_| {})
        .await
        .wire()
        .expect("logged in");
    *conn.expect("logged in")
}

/// A flight more than three days out and `n` free economy seats on it.
pub fn flight_and_seats(app: &App, n: usize) -> (String, Vec<String>) {
    let found = app
        .search(decode(json!({"limit": 500})).unwrap())
        .wire()
        .unwrap();
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
        .wire()
        .unwrap();
    let seats = map["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "available" && s["cabin"] == "economy")
        .take(n)
        .map(|s| s["seat"].as_str().unwrap().to_owned())
        .collect();
    (f, seats)
}

pub fn hold_params(flight: &str, seat: &str, rid: &str) -> Value {
    json!({"flight_id": flight, "seats": [seat], "passengers": [{"name": "Ada"}], "request_id": rid})
}

/// A `booking.hold` of `seat` run on a task of its own.
pub fn spawn_hold(
    app: &Arc<App>,
    user: &AuthSession,
    flight: &str,
    seat: &str,
    rid: &str,
) -> tokio::task::JoinHandle<Result<Value, AppError>> {
    let (app, user) = (app.clone(), user.clone());
    let p = decode(hold_params(flight, seat, rid)).unwrap();
    tokio::spawn(async move { app.hold(&user, p).await.wire() })
}

/// Asserts that `task` is still not answered after half a second (held up by a
/// paused sync).
pub async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>, what: &str) {
    let answered = tokio::time::timeout(std::time::Duration::from_millis(500), task).await;
    assert!(answered.is_err(), "{what}");
}
