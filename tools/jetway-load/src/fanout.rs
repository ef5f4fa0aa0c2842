//! Fan-out: W anonymous watchers subscribed to one flight while K logged-in writers
//! hold and cancel single seats at a set total rate. Each watcher checks that
//! versions arrive each exactly once, in order, and measures the time from the
//! writer sending the request to the watcher reading the push. The login storm
//! scenario is this plus L connections logging in back to back during one phase.

use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Conn, Endpoint, Error, Held, Ws};
use crate::stats::{self, Lat, Summary};
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct Opts {
    pub watchers: usize,
    pub writers: usize,
    /// Seat changes per second, all writers together.
    pub rate: f64,
    pub warmup: f64,
    /// Measured phases: (name, seconds, with a login storm).
    pub phases: Vec<(String, f64, bool)>,
    /// Connections logging in back to back during a storm phase.
    pub logins: usize,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub seconds: f64,
    /// Delivery latency: writer's request sent -> watcher read the push.
    pub latency: Summary,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub changes: u64,
    pub changes_per_sec: f64,
    pub server_cpu_percent: Option<f64>,
    pub logins: u64,
    pub login_latency: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub flight_id: String,
    pub watchers: usize,
    pub writers: usize,
    pub rate: f64,
    pub phases: Vec<PhaseResult>,
    /// Versions a watcher skipped, plus those never delivered by the end.
    pub gaps: u64,
    pub duplicates_or_reordered: u64,
    /// Watchers whose connection ended during the run (e.g. 1008 slow consumer).
    pub watchers_closed: u64,
    pub close_reasons: Vec<String>,
    pub writer_errors: u64,
    pub writer_latency: Summary,
    pub login_errors: u64,
    pub ok: bool,
}

struct Shared {
    t0: Instant,
    seat_idx: HashMap<String, usize>,
    /// When the request that should produce (seat, held|available) was sent, in ns
    /// since t0 (0: never).
    sent: Vec<AtomicU64>,
    phase: AtomicUsize,
    lat: Vec<Lat>,
    deliveries: Vec<AtomicU64>,
    changes: Vec<AtomicU64>,
    logins: Vec<AtomicU64>,
    login_lat: Vec<Lat>,
    gaps: AtomicU64,
    reorders: AtomicU64,
    closed: AtomicU64,
    close_reasons: parking_lot::Mutex<Vec<String>>,
    max_version: AtomicU64,
    last: Vec<AtomicU64>,
    stop: AtomicBool,
    storm: AtomicBool,
    writer_errors: AtomicU64,
    writer_lat: Lat,
    login_errors: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64 + 1
    }
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(borrow, default)]
    method: Option<&'a str>,
    #[serde(borrow, default)]
    params: Option<PushParams<'a>>,
}

#[derive(Deserialize)]
struct PushParams<'a> {
    #[serde(default)]
    version: u64,
    #[serde(borrow, default)]
    seats: Vec<SeatStatus<'a>>,
}

#[derive(Deserialize)]
struct SeatStatus<'a> {
    seat: &'a str,
    status: &'a str,
}

pub async fn run(target: &Target, ep: &Endpoint, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let flight = client::pick_flight(&mut setup, None).await?;
    if flight.seats.len() < o.writers {
        return Err(format!("flight {} has too few free seats", flight.flight_id).into());
    }
    let nphases = o.phases.len() + 1;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        seat_idx: flight
            .seats
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect(),
        sent: (0..flight.seats.len() * 2)
            .map(|_| AtomicU64::new(0))
            .collect(),
        phase: AtomicUsize::new(0),
        lat: (0..nphases).map(|_| Lat::default()).collect(),
        deliveries: (0..nphases).map(|_| AtomicU64::new(0)).collect(),
        changes: (0..nphases).map(|_| AtomicU64::new(0)).collect(),
        logins: (0..nphases).map(|_| AtomicU64::new(0)).collect(),
        login_lat: (0..nphases).map(|_| Lat::default()).collect(),
        gaps: AtomicU64::new(0),
        reorders: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        close_reasons: Default::default(),
        max_version: AtomicU64::new(0),
        last: (0..o.watchers).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        storm: AtomicBool::new(false),
        writer_errors: AtomicU64::new(0),
        writer_lat: Lat::default(),
        login_errors: AtomicU64::new(0),
    });

    // writers: logged in, each owning every K-th seat
    let tokens = client::register_accounts(ep, "w", o.writers, 4).await?;
    let mut writer_conns = Vec::new();
    for t in &tokens {
        let mut c = Conn::open(ep).await?;
        c.must("auth.resume", json!({"token": t})).await?;
        writer_conns.push(c);
    }
    // the login storm's connections and accounts, ready before anything is measured
    let storm_phases = o.phases.iter().any(|p| p.2);
    let mut storm_conns = Vec::new();
    let mut storm_names = Vec::new();
    if storm_phases && o.logins > 0 {
        let n = o.logins.min(8);
        client::register_accounts(ep, "s", n, 4).await?;
        storm_names = (0..n).map(|i| client::username("s", i)).collect();
        for _ in 0..o.logins {
            storm_conns.push(Conn::open(ep).await?);
        }
    }

    // watchers
    let pb = stats::bar(o.watchers as u64, "subscribing", o.quiet);
    let fid = flight.flight_id.clone();
    let opened = futures::stream::iter(0..o.watchers)
        .map(|i| {
            let fid = fid.clone();
            async move {
                let mut c = Conn::open(ep).await?;
                let r = c.must("seats.subscribe", json!({"flight_id": fid})).await?;
                let v = r.get("version").and_then(Value::as_u64).unwrap_or(0);
                Ok::<_, Error>((i, c.ws, v))
            }
        })
        .buffer_unordered(128)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await;
    pb.finish_and_clear();
    let mut watchers = Vec::with_capacity(o.watchers);
    for r in opened {
        let (i, ws, v) = r?;
        shared.last[i].store(v, Ordering::Relaxed);
        shared.max_version.fetch_max(v, Ordering::Relaxed);
        watchers.push(tokio::spawn(watch(shared.clone(), i, ws)));
    }

    let period = Duration::from_secs_f64(o.writers as f64 / o.rate.max(0.001));
    let mut writers = Vec::new();
    for (k, c) in writer_conns.into_iter().enumerate() {
        let seats: Vec<(usize, String)> = flight
            .seats
            .iter()
            .cloned()
            .enumerate()
            .skip(k)
            .step_by(o.writers)
            .collect();
        writers.push(tokio::spawn(write(
            shared.clone(),
            c,
            fid.clone(),
            seats,
            period,
            k,
            o.writers,
        )));
    }
    let mut stormers = Vec::new();
    for (i, c) in storm_conns.into_iter().enumerate() {
        let name = storm_names[i % storm_names.len()].clone();
        stormers.push(tokio::spawn(storm(shared.clone(), c, name)));
    }

    // phase 0 is the warm-up, not reported
    stats::timed(o.warmup, "warm-up", o.quiet).await;
    let mut cpu = Vec::new();
    for (i, (name, secs, with_storm)) in o.phases.iter().enumerate() {
        let c0 = target.cpu_seconds();
        shared.phase.store(i + 1, Ordering::SeqCst);
        shared.storm.store(*with_storm, Ordering::SeqCst);
        stats::timed(*secs, name, o.quiet).await;
        shared.storm.store(false, Ordering::SeqCst);
        cpu.push(
            c0.zip(target.cpu_seconds())
                .map(|(a, b)| (b - a) / secs * 100.0),
        );
    }
    shared.stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.await;
    }
    for s in stormers {
        let _ = s.await;
    }
    // let every watcher catch up with the last version (bounded)
    let drain_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < drain_until {
        let max = shared.max_version.load(Ordering::SeqCst);
        let behind = shared
            .last
            .iter()
            .filter(|l| l.load(Ordering::Relaxed) < max)
            .count() as u64;
        if behind <= shared.closed.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let max = shared.max_version.load(Ordering::SeqCst);
    let undelivered: u64 = shared
        .last
        .iter()
        .map(|l| max.saturating_sub(l.load(Ordering::Relaxed)))
        .sum();
    for w in &watchers {
        w.abort();
    }
    drop(setup);

    let phases: Vec<PhaseResult> = o
        .phases
        .iter()
        .enumerate()
        .map(|(i, (name, secs, _))| {
            let d = shared.deliveries[i + 1].load(Ordering::Relaxed);
            let c = shared.changes[i + 1].load(Ordering::Relaxed);
            PhaseResult {
                name: name.clone(),
                seconds: *secs,
                latency: shared.lat[i + 1].summary(),
                deliveries: d,
                deliveries_per_sec: d as f64 / secs,
                changes: c,
                changes_per_sec: c as f64 / secs,
                server_cpu_percent: cpu[i],
                logins: shared.logins[i + 1].load(Ordering::Relaxed),
                login_latency: shared.login_lat[i + 1].summary(),
            }
        })
        .collect();
    let gaps = shared.gaps.load(Ordering::Relaxed) + undelivered;
    let closed = shared.closed.load(Ordering::Relaxed);
    let reorders = shared.reorders.load(Ordering::Relaxed);
    let writer_errors = shared.writer_errors.load(Ordering::Relaxed);
    let login_errors = shared.login_errors.load(Ordering::Relaxed);
    let delivered_any = phases.iter().any(|p| p.deliveries > 0);
    let close_reasons = shared.close_reasons.lock().clone();
    Ok(Outcome {
        target: target.name.to_string(),
        flight_id: fid,
        watchers: o.watchers,
        writers: o.writers,
        rate: o.rate,
        gaps,
        duplicates_or_reordered: reorders,
        watchers_closed: closed,
        close_reasons,
        writer_errors,
        writer_latency: shared.writer_lat.summary(),
        login_errors,
        ok: gaps == 0
            && closed == 0
            && reorders == 0
            && writer_errors == 0
            && login_errors == 0
            && (delivered_any || o.watchers == 0),
        phases,
    })
}

async fn watch(sh: Arc<Shared>, i: usize, mut ws: Ws) {
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(c)) => {
                sh.closed.fetch_add(1, Ordering::Relaxed);
                sh.close_reasons
                    .lock()
                    .push(c.map_or("no close frame".into(), |c| {
                        format!("{}: {}", c.code, c.reason)
                    }));
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                sh.closed.fetch_add(1, Ordering::Relaxed);
                sh.close_reasons.lock().push(e.to_string());
                return;
            }
        };
        let now = sh.now_ns();
        let Ok(push) = serde_json::from_str::<Push>(text.as_str()) else {
            continue;
        };
        let (Some("seats.changed"), Some(p)) = (push.method, push.params) else {
            continue;
        };
        let phase = sh.phase.load(Ordering::Relaxed);
        let last = sh.last[i].load(Ordering::Relaxed);
        if p.version <= last {
            sh.reorders.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if p.version > last + 1 {
            sh.gaps.fetch_add(p.version - last - 1, Ordering::Relaxed);
        }
        sh.last[i].store(p.version, Ordering::Relaxed);
        sh.max_version.fetch_max(p.version, Ordering::Relaxed);
        sh.deliveries[phase].fetch_add(1, Ordering::Relaxed);
        if let Some(s) = p.seats.first() {
            if let Some(&idx) = sh.seat_idx.get(s.seat) {
                let key = idx * 2 + usize::from(s.status != "held");
                let sent = sh.sent[key].load(Ordering::Relaxed);
                if sent > 0 && now > sent {
                    sh.lat[phase].record_us((now - sent) / 1000);
                }
            }
        }
    }
}

async fn write(
    sh: Arc<Shared>,
    mut c: Conn,
    fid: String,
    seats: Vec<(usize, String)>,
    period: Duration,
    k: usize,
    of: usize,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    let mut held: Option<(usize, String)> = None;
    let mut next = 0usize;
    // writers start spread over one period
    tokio::time::sleep(period.mul_f64(k as f64 / of.max(1) as f64)).await;
    while !sh.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        n += 1;
        let phase = sh.phase.load(Ordering::Relaxed);
        let start = Instant::now();
        let r = match held.take() {
            Some((idx, locator)) => {
                sh.sent[idx * 2 + 1].store(sh.now_ns(), Ordering::Relaxed);
                c.call_as::<IgnoredAny>(
                    "booking.cancel",
                    json!({"locator": locator, "request_id": format!("c{k}-{n}")}),
                )
                .await
                .map(|r| r.map(|_| ()))
            }
            None => {
                let (idx, seat) = &seats[next % seats.len()];
                next += 1;
                sh.sent[idx * 2].store(sh.now_ns(), Ordering::Relaxed);
                c.call_as::<Held>(
                    "booking.hold",
                    json!({"flight_id": fid, "seats": [seat],
                           "passengers": [{"name": "Load Test"}],
                           "request_id": format!("h{k}-{n}")}),
                )
                .await
                .map(|r| r.map(|h| held = h.locator().map(|l| (*idx, l))))
            }
        };
        match r {
            Ok(Ok(())) => {
                sh.writer_lat.record(start.elapsed());
                sh.changes[phase].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => {
                sh.writer_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                sh.writer_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn storm(sh: Arc<Shared>, mut c: Conn, name: String) {
    while !sh.stop.load(Ordering::Relaxed) {
        if !sh.storm.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let phase = sh.phase.load(Ordering::Relaxed);
        let start = Instant::now();
        match c
            .call(
                "auth.login",
                json!({"username": name, "password": client::PASSWORD}),
            )
            .await
        {
            Ok(Ok(_)) => {
                sh.login_lat[phase].record(start.elapsed());
                sh.logins[phase].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => {
                sh.login_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                sh.login_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
