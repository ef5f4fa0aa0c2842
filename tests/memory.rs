//! Memory stays flat under churn: logins, holds and cancels by many users leave
//! behind no sessions (in the cache or the store) once expired, no per-user locks and
//! no hold-expiry entries. Logins use the test-only `--insecure-fast-hashing`.
//!
//! `memory_stays_flat_under_churn` runs in every `cargo test` (1,500 cycles;
//! `CHURN_CYCLES` changes that). The 100,000-cycle version, in release mode:
//!
//! ```sh
//! cargo test --release --test memory -- --ignored --nocapture
//! ```
//!
//! Both check the sizes of the structures, and print the process's RSS.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients, each with its own users.
const WORKERS: usize = 8;
const USERS_PER_WORKER: usize = 25;
/// A session lasts this long in the in-process test.
const SESSION_TTL: u64 = 5;
/// A session is swept within this long after it expired (sweep interval plus the
/// sweep itself on a busy machine).
const SWEEP_SLACK: Duration = Duration::from_secs(4);

/// When each login of the run happened, to bound what may still be stored.
#[derive(Default)]
struct Logins(parking_lot::Mutex<Vec<Instant>>);

impl Logins {
    fn since(&self, t: Instant) -> usize {
        self.0.lock().iter().filter(|&&at| at >= t).count()
    }
}

/// One worker: `cycles` times, log in as the next of its users (a new session),
/// hold a seat and cancel the hold.
async fn worker(
    url: String,
    w: usize,
    cycles: usize,
    flight: String,
    logins: Arc<Logins>,
    done: Arc<AtomicUsize>,
) {
    let mut c = Client::connect(&url).await;
    for i in 0..cycles {
        let user = format!("churn{w}x{}", i % USERS_PER_WORKER);
        // counted before it starts: a stored session is always a counted login
        logins.0.lock().push(Instant::now());
        if i < USERS_PER_WORKER {
            c.register(&user).await;
        } else {
            c.ok(
                "auth.login",
                json!({"username": user, "password": PASSWORD}),
            )
            .await;
        }
        let r = c
            .ok(
                "booking.hold",
                json!({"flight_id": flight, "count": 1, "cabin": "economy",
                       "passengers": passengers(1), "request_id": format!("h{i}")}),
            )
            .await;
        let loc = r["booking"]["locator"]
            .as_str()
            .expect("locator")
            .to_owned();
        c.ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": format!("c{i}")}),
        )
        .await;
        c.pushes.clear();
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the churn, calling `sample` (with the logins so far) at every tenth.
async fn churn(url: &str, cycles: usize, mut sample: impl FnMut(&Logins, usize)) -> Arc<Logins> {
    let mut c = Client::connect(url).await;
    let flight = later_flight(&mut c).await["flight_id"]
        .as_str()
        .expect("flight")
        .to_owned();
    let logins = Arc::new(Logins::default());
    let done = Arc::new(AtomicUsize::new(0));
    let per = cycles / WORKERS;
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                url.to_owned(),
                w,
                per,
                flight.clone(),
                logins.clone(),
                done.clone(),
            ))
        })
        .collect();
    let mut next = 1;
    while tasks.iter().any(|t| !t.is_finished()) {
        if done.load(Ordering::Relaxed) >= next * per * WORKERS / 10 {
            sample(&logins, done.load(Ordering::Relaxed));
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.expect("worker");
    }
    sample(&logins, done.load(Ordering::Relaxed));
    logins
}

fn stat(app: &jetway::app::App, name: &str) -> u64 {
    app.stats()[name].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_churn() {
    let cycles = std::env::var("CHURN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    churn_in_process(cycles).await;
}

/// 100,000 sessions and 100,000 bookings. About 14 minutes in release mode on a
/// loaded 2-core box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "release-mode soak: cargo test --release --test memory -- --ignored --nocapture"]
async fn memory_stays_flat_under_100k_churn() {
    churn_in_process(100_000).await;
}

/// Churns `cycles` cycles against an in-process server, checking the sizes of its
/// structures at every tenth and once everything expired.
async fn churn_in_process(cycles: usize) {
    let s = Server::start_with(|c| {
        c.insecure_fast_hashing = true;
        c.session_ttl = SESSION_TTL;
        c.limits.rate_limit = 0;
    })
    .await;
    let app = s.app().clone();
    let started = Instant::now();
    let logins = churn(&s.url(), cycles, |logins, done| {
        // read before the logins: a login counted after this is not in them
        let stored = app.store.sessions().expect("sessions").len();
        let cached = stat(&app, "sessions_cached") as usize;
        // what a sweep may not have reached yet: logins of the last TTL plus slack
        let recent = Instant::now()
            .checked_sub(Duration::from_secs(SESSION_TTL) + SWEEP_SLACK)
            .map_or(usize::MAX, |t| logins.since(t));
        let locks = stat(&app, "user_locks") as usize;
        let holds = stat(&app, "holds_scheduled") as usize;
        println!(
            "{done} cycles after {:?}: {stored} sessions stored, {cached} cached, {recent} recent \
             logins, {locks} user locks, {holds} holds scheduled, rss {} KiB",
            started.elapsed(),
            rss_kib(std::process::id())
        );
        assert!(
            stored <= recent,
            "{stored} sessions stored, {recent} recent logins"
        );
        assert!(
            cached <= recent,
            "{cached} sessions cached, {recent} recent logins"
        );
        assert!(locks <= WORKERS, "{locks} user locks");
        assert!(holds <= WORKERS, "{holds} holds scheduled");
    })
    .await;
    println!(
        "{} cycles in {:?}",
        logins.0.lock().len(),
        started.elapsed()
    );
    assert_eq!(stat(&app, "user_locks"), 0, "no request in flight, no lock");
    assert_eq!(stat(&app, "holds_scheduled"), 0, "every hold was cancelled");
    // once every session expired, nothing of them is left
    let deadline = Instant::now() + Duration::from_secs(SESSION_TTL) + SWEEP_SLACK * 3;
    loop {
        let stored = app.store.sessions().expect("sessions").len();
        let cached = stat(&app, "sessions_cached");
        if stored == 0 && cached == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} sessions stored and {cached} cached after all expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(app);
    s.stop().await;
}
