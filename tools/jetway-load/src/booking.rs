//! Booking: C users each register once (keeping that logged-in connection), then
//! loop hold (1 economy seat, server-picked) -> pay -> cancel on random flights.
//! Every successful reply means the change is on disk (group commit). A call answered
//! `rate_limited` (the server's per-connection request rate) is sent again, with the
//! same `request_id`, after a short wait, as a well-behaved client does; the count of
//! such answers is reported as `throttled`, since a throttled run measures the limit.
//! Against the bare reference (`--spawn-bare`, no schedule, no storage) the same loop
//! runs over made-up flights: the ceiling of this loop on the machine.

use futures::StreamExt;
use rand::Rng;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, Conn, Endpoint, Error, Held};
use crate::stats::{self, Lat, Summary};
use crate::target::{self, CommitRates, Target};

#[derive(Debug, Clone)]
pub struct Opts {
    pub users: usize,
    pub duration: f64,
    /// Stop after this many hold+pay pairs, whichever comes first.
    pub max_pairs: u64,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub ok: u64,
    pub per_sec: f64,
    pub latency: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub users: usize,
    pub flights: usize,
    pub seconds: f64,
    pub register_seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Completed hold+pay pairs (a paid booking).
    pub pairs: u64,
    pub pairs_per_sec: f64,
    pub methods: BTreeMap<String, Method>,
    /// Failed calls by `error.data.reason` (seat_unavailable: the flight's cabin was full).
    pub errors: BTreeMap<String, u64>,
    /// Calls answered `rate_limited` and sent again.
    pub throttled: u64,
    pub server_cpu_percent: Option<f64>,
    /// Server CPU-seconds per completed operation, in ms.
    pub server_cpu_ms_per_op: Option<f64>,
    /// This load tool's own CPU over the window: on a shared machine it is what the
    /// server cannot have.
    pub client_cpu_percent: Option<f64>,
    pub client_cpu_ms_per_op: Option<f64>,
    /// Jetway's group commit over the measured window (from its `/metrics`).
    pub server_commits: Option<CommitRates>,
    pub ok: bool,
}

struct Shared {
    stop: AtomicBool,
    pairs: AtomicU64,
    max_pairs: u64,
    lat: [Lat; 3],
    errors: parking_lot::Mutex<BTreeMap<String, u64>>,
    throttled: AtomicU64,
}

impl Shared {
    fn new(max_pairs: u64) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            pairs: AtomicU64::new(0),
            max_pairs,
            lat: Default::default(),
            errors: Default::default(),
            throttled: AtomicU64::new(0),
        }
    }

    /// Counts a failed call (or a reply without what the loop needs) under `reason`.
    fn count_error(&self, reason: String) {
        *self.errors.lock().entry(reason).or_default() += 1;
    }

    /// The locator of a successful hold's result; one without it is counted an error.
    fn held(&self, result: Held) -> Option<String> {
        let loc = result.locator();
        if loc.is_none() {
            self.count_error("no locator".into());
        }
        loc
    }
}

/// The errors that fail a run: all but `seat_unavailable` (a full cabin).
fn hard_errors(errors: &BTreeMap<String, u64>) -> u64 {
    errors
        .iter()
        .filter(|(k, _)| k.as_str() != "seat_unavailable")
        .map(|(_, v)| v)
        .sum()
}

const METHODS: [&str; 3] = ["booking.hold", "booking.pay", "booking.cancel"];

/// How many flights the loop uses against the bare reference.
const BARE_FLIGHTS: usize = 300;

pub async fn run(target: &Target, ep: &Endpoint, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let mut flights = client::all_flights(&mut setup).await?;
    if flights.is_empty() && target.name == "bare" {
        // the bare reference keeps no schedule and takes any flight id: the loop
        // spreads over about as many made-up flights as Jetway's demo schedule has
        flights = (1..=BARE_FLIGHTS).map(client::made_up_flight).collect();
    }
    if flights.is_empty() {
        return Err("the target has no flights".into());
    }
    let flights = Arc::new(flights);
    drop(setup);

    let pb = stats::bar(o.users as u64, "registering", o.quiet);
    let reg_start = Instant::now();
    let conns = futures::stream::iter(0..o.users)
        .map(|i| async move {
            let mut c = Conn::open(ep).await?;
            c.must(
                "auth.register",
                json!({"username": client::username("b", i), "password": client::PASSWORD}),
            )
            .await?;
            Ok::<_, Error>(c)
        })
        .buffer_unordered(4)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    pb.finish_and_clear();
    let register_seconds = reg_start.elapsed().as_secs_f64();

    let sh = Arc::new(Shared::new(o.max_pairs));
    let commits0 = target.commits().await.map(|c| (c, Instant::now()));
    let cpu0 = target.cpu_seconds();
    let client_cpu0 = target::cpu_seconds(std::process::id());
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(user(sh.clone(), c, flights.clone())))
        .collect();
    let deadline = Duration::from_secs_f64(o.duration);
    let pb = stats::bar(o.max_pairs, "hold+pay", o.quiet);
    while start.elapsed() < deadline && !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pb.set_position(sh.pairs.load(Ordering::Relaxed));
    }
    // read before the users stop, over the time between the two readings
    let commits = match commits0 {
        Some((a, at)) => {
            let b = target.commits().await;
            b.and_then(|b| a.rates(&b, at.elapsed().as_secs_f64()))
        }
        None => None,
    };
    sh.stop.store(true, Ordering::SeqCst);
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu0.zip(target.cpu_seconds()).map(|(a, b)| b - a);
    let client_cpu = client_cpu0
        .zip(target::cpu_seconds(std::process::id()))
        .map(|(a, b)| b - a);
    // the operations completed by now: the ones finishing after the readings are not
    // counted against this CPU
    let ops_in_window: u64 = sh.lat.iter().map(|l| l.summary().count).sum();
    for t in tasks {
        let _ = t.await;
    }
    pb.finish_and_clear();

    let mut methods = BTreeMap::new();
    let mut ops = 0;
    for (i, m) in METHODS.iter().enumerate() {
        let latency = sh.lat[i].summary();
        ops += latency.count;
        methods.insert(
            m.to_string(),
            Method {
                ok: latency.count,
                per_sec: latency.count as f64 / seconds,
                latency,
            },
        );
    }
    let pairs = sh.pairs.load(Ordering::Relaxed);
    let errors = sh.errors.lock().clone();
    let failed = hard_errors(&errors);
    Ok(Outcome {
        target: target.name.to_string(),
        users: o.users,
        flights: flights.len(),
        seconds,
        register_seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        pairs,
        pairs_per_sec: pairs as f64 / seconds,
        methods,
        errors,
        throttled: sh.throttled.load(Ordering::Relaxed),
        server_cpu_percent: cpu.map(|c| c / seconds * 100.0),
        server_cpu_ms_per_op: cpu.and_then(|c| per_op(c, ops_in_window)),
        client_cpu_percent: client_cpu.map(|c| c / seconds * 100.0),
        client_cpu_ms_per_op: client_cpu.and_then(|c| per_op(c, ops_in_window)),
        server_commits: commits,
        ok: failed == 0 && pairs > 0,
    })
}

fn per_op(cpu_seconds: f64, ops: u64) -> Option<f64> {
    (ops > 0).then(|| cpu_seconds * 1e3 / ops as f64)
}

async fn user(sh: Arc<Shared>, mut c: Conn, flights: Arc<Vec<String>>) {
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let fid = &flights[rand::thread_rng().gen_range(0..flights.len())];
        let hold = json!({"flight_id": fid, "count": 1, "cabin": "economy",
                          "passengers": [{"name": "Load Test"}], "request_id": format!("h{n}")});
        let Ok(r) = call::<Held>(&sh, &mut c, 0, hold).await else {
            return;
        };
        let Some(v) = r else {
            continue;
        };
        let Some(loc) = sh.held(v) else {
            continue;
        };
        let pay = json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": format!("p{n}")});
        let Ok(paid) = call::<IgnoredAny>(&sh, &mut c, 1, pay).await else {
            return;
        };
        if paid.is_some() {
            let pairs = sh.pairs.fetch_add(1, Ordering::Relaxed) + 1;
            if pairs >= sh.max_pairs {
                sh.stop.store(true, Ordering::Relaxed);
            }
        }
        let cancel = json!({"locator": loc, "request_id": format!("c{n}")});
        if call::<IgnoredAny>(&sh, &mut c, 2, cancel).await.is_err() {
            return;
        }
    }
}

/// The wait before a call answered `rate_limited` is sent again: the server's bucket
/// refills one request every 10 ms at its default rate.
fn throttle_wait(retry: u32) -> Duration {
    Duration::from_millis(10 << retry.min(4))
}

/// `Err` when the connection is gone; `Ok(None)` for an application error. A call
/// answered `rate_limited` is sent again (its latency includes the waits).
async fn call<T: DeserializeOwned + Default>(
    sh: &Shared,
    c: &mut Conn,
    m: usize,
    params: serde_json::Value,
) -> Result<Option<T>, ()> {
    let start = Instant::now();
    let mut retry = 0;
    loop {
        match c.call_as::<T>(METHODS[m], params.clone()).await {
            Ok(Ok(v)) => {
                sh.lat[m].record(start.elapsed());
                return Ok(Some(v));
            }
            Ok(Err(e)) if e.reason == "rate_limited" => {
                if sh.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                sh.throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(throttle_wait(retry)).await;
                retry += 1;
            }
            Ok(Err(e)) => {
                sh.count_error(e.reason);
                return Ok(None);
            }
            Err(e) => {
                sh.count_error(format!("transport: {e}"));
                return Err(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hold answered without a locator was once recorded at 0 and so passed as no
    /// error at all.
    #[test]
    fn every_error_is_counted_and_fails_the_run() {
        let sh = Shared::new(1);
        let held = |v: serde_json::Value| sh.held(serde_json::from_value::<Held>(v).unwrap());
        let ok =
            serde_json::json!({"booking": {"locator": "ABC123", "seats": ["1A"]}, "flight": {}});
        assert_eq!(held(ok).as_deref(), Some("ABC123"));
        assert!(sh.errors.lock().is_empty());
        assert_eq!(held(serde_json::json!({"booking": {}})), None);
        assert_eq!(held(serde_json::json!({})), None);
        sh.count_error("seat_unavailable".into());
        let errors = sh.errors.lock();
        assert_eq!(errors["no locator"], 2);
        assert_eq!(errors["seat_unavailable"], 1);
        assert_eq!(
            hard_errors(&errors),
            2,
            "a full cabin does not fail the run"
        );
    }
}
