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
//!
//! `a_published_change_costs_little_to_keep` weighs what the replay buffers keep per
//! seat change with a counting allocator (heap allocated minus freed on the test's
//! thread).

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system allocator, counting what each thread allocates and frees.
struct Counting;

thread_local! {
    static THREAD_HEAP: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn count(delta: isize) {
    // try_with: the thread-local may be gone while a thread exits
    let _ = THREAD_HEAP.try_with(|h| h.set(h.get() + delta));
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count(l.size() as isize);
        std::alloc::System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        count(-(l.size() as isize));
        std::alloc::System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        std::alloc::System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes this thread allocated and did not free.
fn thread_heap() -> isize {
    THREAD_HEAP.with(|h| h.get())
}

/// A server keeps up to `--replay-buffer` published changes for every flight (1024 x
/// 336 flights by default), so what one costs is what a long churn grows by until the
/// buffers are full. Each is a one-seat change here, like a hold or a cancel.
#[test]
fn a_published_change_costs_little_to_keep() {
    use jetway::inventory::{Inventory, Occupant};
    const CHANGES: usize = 2_000;
    const BOUND: isize = 600;
    let inv = Inventory::new(CHANGES);
    let flight = jetway::domain::schedule::demo_schedule(jetway::domain::date_of(0), 1)
        .into_iter()
        .next()
        .expect("a flight");
    let fs = inv.add(flight);
    let occupant = Some(Occupant {
        locator: jetway::domain::Locator::parse("AAAAAA").expect("locator"),
        booked: false,
    });
    // the first change allocates what every later one reuses (the replay deque aside)
    fs.apply_committed(1, vec![(0, occupant.clone())]);
    let before = thread_heap();
    for v in 2..=CHANGES as u64 + 1 {
        let seat = if v % 2 == 0 { None } else { occupant.clone() };
        fs.apply_committed(v, vec![(0, seat)]);
    }
    let per_change = (thread_heap() - before) / CHANGES as isize;
    println!("{per_change} bytes kept per published change");
    assert!(
        per_change < BOUND,
        "{per_change} bytes kept per published change (bound {BOUND})"
    );
}

/// The allocator options the binary sets (src/main.rs) are the ones mimalloc reads
/// (its option numbers are written by hand there), and the environment still
/// overrides them.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[test]
fn the_allocator_options_are_in_effect() {
    const OPTIONS: [&str; 3] = ["arena_eager_commit", "purge_delay", "allow_thp"];
    let verbose = |env: &[(&str, &str)]| {
        let out = jetway_command()
            .arg("--version")
            .env("MIMALLOC_VERBOSE", "1")
            .envs(env.iter().copied())
            .output()
            .expect("run jetway");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let set = verbose(&[]);
    for o in OPTIONS {
        assert!(
            set.contains(&format!("option '{o}': 0 ")),
            "{o} not 0 in: {set}"
        );
    }
    let overridden = verbose(&[("MIMALLOC_ALLOW_THP", "1")]);
    assert!(
        overridden.contains("option 'allow_thp': 1 "),
        "the environment did not win: {overridden}"
    );
}

/// A fresh server (demo schedule seeded, nobody connected) is small: with mimalloc,
/// the binary's allocator options (src/main.rs) keep transparent huge pages and
/// eager arena commits out; without them a debug build started at 87 MiB instead of
/// 28 MiB (docs/benchmarks.md, "Allocator").
#[test]
fn a_fresh_server_starts_small() {
    const BOUND_KIB: u64 = 40 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::spawn(dir.path(), &[]);
    let rss = p.rss_kib();
    println!("a fresh server: RSS {rss} KiB");
    assert!(
        rss > 0 && rss < BOUND_KIB,
        "a fresh server's RSS is {rss} KiB"
    );
}

/// A client that never reads and sends nothing but pings (each ping also keeps the
/// connection from idling out; the rate limit, off here, would close it) makes the server owe
/// it a pong per ping. tungstenite kept every pong it could not send, without limit:
/// ~1 byte of server memory per byte sent. Now it keeps at most
/// `MAX_CONTROL_BACKLOG` bytes (the newest pong) once the socket is full.
#[test]
fn a_ping_flood_from_a_client_that_never_reads_costs_little() {
    use std::io::Write;
    const SENT: usize = 48 << 20;
    const BOUND_KIB: u64 = 16 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::spawn(dir.path(), &["--rate-limit", "0"]);
    let before = p.rss_kib();
    let mut t = raw_upgrade(p.addr);
    // a write the server stopped taking ends the flood too: it is not reading
    t.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let ping = client_frame(0x9, 0, &[b'p'; 125]);
    let chunk: Vec<u8> = ping.repeat((1 << 20) / ping.len());
    let mut sent = 0;
    while sent < SENT && t.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let after = p.rss_kib();
    println!("{sent} bytes of pings: server RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB over {sent} bytes of pings"
    );
}

/// Logins at the production Argon2 cost (19 MiB per hash) leave little behind: the
/// server binary returns each hash's block to the system (src/main.rs: mimalloc
/// purges freed pages at once; with glibc, a fixed mmap threshold). Without that,
/// glibc kept one block in every arena a hashing thread had used (RSS +300 to +480
/// MiB after 64 registrations, docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_at_full_cost_leave_little_behind() {
    const CONNECTIONS: usize = 8;
    const USERS_PER_CONNECTION: usize = 6;
    const BOUND_KIB: u64 = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::spawn(dir.path(), &["--rate-limit", "0"]);
    let before = p.rss_kib();
    let url = p.url();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                for i in 0..USERS_PER_CONNECTION {
                    c.register(&format!("argon{w}x{i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("registrations");
    }
    let after = p.rss_kib();
    println!(
        "{} registrations: server RSS {before} KiB -> {after} KiB",
        CONNECTIONS * USERS_PER_CONNECTION
    );
    assert!(
        after < before + BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB over the registrations"
    );
}

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
/// hold a seat on the next of `flights` and cancel the hold.
async fn worker(
    url: String,
    w: usize,
    cycles: usize,
    flights: Arc<Vec<String>>,
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
                json!({"flight_id": flights[(w + i * WORKERS) % flights.len()],
                       "count": 1, "cabin": "economy",
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
    // every flight, so that each keeps changes for replay as a real server's do
    let flights: Vec<String> =
        all_departing_within(&mut c, time::Duration::days(2), time::Duration::MAX)
            .await
            .iter()
            .map(|f| f["flight_id"].as_str().expect("flight").to_owned())
            .collect();
    assert!(!flights.is_empty(), "flights more than two days out");
    let flights = Arc::new(flights);
    let logins = Arc::new(Logins::default());
    let done = Arc::new(AtomicUsize::new(0));
    let per = cycles / WORKERS;
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                url.to_owned(),
                w,
                per,
                flights.clone(),
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
    churn_in_process(cycles, None).await;
}

/// 100,000 sessions and 100,000 bookings (200,000 seat changes, spread over every
/// flight). About 14 minutes in release mode on a loaded 2-core box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "release-mode soak: cargo test --release --test memory -- --ignored --nocapture"]
async fn memory_stays_flat_under_100k_churn() {
    churn_in_process(100_000, Some(RSS_GROWTH_BOUND_KIB)).await;
}

/// What the 100,000-cycle soak (200,000 seat changes) may add to the process's RSS:
/// the target of docs/benchmarks.md, "Memory under churn", under 100 MiB per 100,000
/// seat changes.
const RSS_GROWTH_BOUND_KIB: u64 = 200 * 1024;

/// Churns `cycles` cycles against an in-process server, checking the sizes of its
/// structures at every tenth and once everything expired, and the growth of the
/// process's RSS against `rss_bound_kib` if given.
async fn churn_in_process(cycles: usize, rss_bound_kib: Option<u64>) {
    let s = Server::start_with(|c| {
        c.insecure_fast_hashing = true;
        c.session_ttl = SESSION_TTL;
        c.limits.rate_limit = 0;
    })
    .await;
    let app = s.app().clone();
    let started = Instant::now();
    let rss_start = rss_kib(std::process::id());
    let mut rss_max = rss_start;
    let logins = churn(&s.url(), cycles, |logins, done| {
        let rss = rss_kib(std::process::id());
        rss_max = rss_max.max(rss);
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
             logins, {locks} user locks, {holds} holds scheduled, rss {rss} KiB",
            started.elapsed(),
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
        "{} cycles in {:?}; rss {rss_start} KiB at the start, at most {rss_max} KiB",
        logins.0.lock().len(),
        started.elapsed()
    );
    if let Some(bound) = rss_bound_kib {
        assert!(
            rss_max < rss_start + bound,
            "RSS grew from {rss_start} KiB to {rss_max} KiB, more than {bound} KiB"
        );
    }
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
