//! Departure boards: B connections watch one airport (`flights.watch`) while K
//! logged-in writers hold and cancel single seats on that airport's flights at a set
//! total rate. Measures the pushes each board gets (availability is coalesced to at
//! most one per flight per second, so a board gets at most about one push per flight
//! in its window per second however fast seats change) and the server's CPU.

use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Conn, Endpoint, Error, Held};
use crate::stats::{self, Lat, Summary};
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct Opts {
    pub boards: usize,
    pub airport: String,
    pub writers: usize,
    /// Seat changes per second, all writers together.
    pub rate: f64,
    pub duration: f64,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub airport: String,
    pub boards: usize,
    pub flights_in_window: usize,
    /// Those of them the writers change (scheduled or delayed).
    pub flights_changed: usize,
    pub seconds: f64,
    pub changes: u64,
    pub changes_per_sec: f64,
    /// `flight.changed` pushes all boards received.
    pub pushes: u64,
    pub pushes_per_board_per_sec: f64,
    /// The most pushes of one flight one board got in one second of arrival time
    /// (the server spaces them by a second; more is arrival jitter).
    pub max_per_flight_second: u64,
    pub writer_latency: Summary,
    pub writer_errors: u64,
    pub server_cpu_percent: Option<f64>,
    /// The server's CPU time over the run divided by the seat changes made: with the
    /// boards' pushes capped per flight per second, what boards add to it shrinks as
    /// the rate of changes grows.
    pub server_cpu_ms_per_change: Option<f64>,
    pub ok: bool,
}

pub async fn run(target: &Target, ep: &Endpoint, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let r = setup
        .must("flights.watch", json!({"airport": o.airport}))
        .await?;
    let flights: Vec<String> = r["flights"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["status"] == "scheduled" || f["status"] == "delayed")
                .filter_map(|f| f["flight_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if flights.is_empty() {
        return Err(format!("no bookable flight from {} in the next 24 h", o.airport).into());
    }
    let in_window = r["flights"].as_array().map_or(0, Vec::len);
    // each writer takes its own economy seat on every flight
    let mut seats: Vec<Vec<String>> = vec![Vec::new(); o.writers];
    for fid in &flights {
        let m = setup.must("flights.get", json!({"flight_id": fid})).await?;
        let free: Vec<String> = m["seats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["status"] == "available" && s["cabin"] == "economy")
            .filter_map(|s| s["seat"].as_str().map(str::to_owned))
            .take(o.writers)
            .collect();
        for (w, s) in free.into_iter().enumerate() {
            seats[w].push(format!("{fid} {s}"));
        }
    }

    let pb = stats::bar(o.boards as u64, "watching", o.quiet);
    let airport = o.airport.clone();
    let opened = futures::stream::iter(0..o.boards)
        .map(|_| {
            let airport = airport.clone();
            async move {
                let mut c = Conn::open(ep).await?;
                c.must("flights.watch", json!({"airport": airport})).await?;
                Ok::<_, Error>(c.ws)
            }
        })
        .buffer_unordered(64)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await;
    pb.finish_and_clear();
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(AtomicU64::new(0));
    let max_burst = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut readers = Vec::new();
    for ws in opened {
        let mut ws = ws?;
        let (stop, pushes, max_burst) = (stop.clone(), pushes.clone(), max_burst.clone());
        readers.push(tokio::spawn(async move {
            // (flight, second) -> pushes
            let mut per: std::collections::HashMap<(String, u64), u64> = Default::default();
            while !stop.load(Ordering::Relaxed) {
                let m = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                let Ok(Some(Ok(Message::Text(t)))) = m else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["method"] == "flight.changed" {
                    pushes.fetch_add(1, Ordering::Relaxed);
                    let f = v["params"]["flight"]["flight_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let n = per.entry((f, t0.elapsed().as_secs())).or_default();
                    *n += 1;
                    max_burst.fetch_max(*n, Ordering::Relaxed);
                }
            }
        }));
    }

    let tokens = client::register_accounts(ep, "b", o.writers, 4).await?;
    let changes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Lat::default());
    let cpu0 = target.cpu_seconds();
    let started = Instant::now();
    let per_writer = Duration::from_secs_f64(o.writers as f64 / o.rate.max(0.1));
    let mut writers = Vec::new();
    for (w, token) in tokens.into_iter().enumerate() {
        let mine = seats[w].clone();
        let mut c = Conn::open(ep).await?;
        c.must("auth.resume", json!({"token": token})).await?;
        let (stop, changes, errors, lat) =
            (stop.clone(), changes.clone(), errors.clone(), lat.clone());
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_writer);
            let mut i = 0usize;
            // the writer's next seat: its flights in turn (a count of its own, as
            // holds and cancels alternate)
            let mut next = 0usize;
            let mut held: Option<String> = None;
            while !stop.load(Ordering::Relaxed) && !mine.is_empty() {
                tick.tick().await;
                let t = Instant::now();
                let r = match held.take() {
                    Some(loc) => {
                        c.call_as::<IgnoredAny>("booking.cancel", json!({"locator": loc, "request_id": format!("c{w}-{i}")}))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                    None => {
                        let (fid, seat) = mine[next % mine.len()].split_once(' ').unwrap_or_default();
                        next += 1;
                        c.call_as::<Held>(
                            "booking.hold",
                            json!({"flight_id": fid, "seats": [seat], "passengers": [{"name": "Board Load"}], "request_id": format!("h{w}-{i}")}),
                        )
                        .await
                        .map(|r| r.map(|h| held = h.locator()))
                    }
                };
                i += 1;
                match r {
                    Ok(Ok(_)) => {
                        changes.fetch_add(1, Ordering::Relaxed);
                        lat.record(t.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    stats::timed(o.duration, "measuring", o.quiet).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used = match (cpu0, target.cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    for t in writers.into_iter().chain(readers) {
        let _ = t.await;
    }
    let changes = changes.load(Ordering::Relaxed);
    let pushes = pushes.load(Ordering::Relaxed);
    let max_per_flight_second = max_burst.load(Ordering::Relaxed);
    Ok(Outcome {
        target: target.name.to_owned(),
        airport: o.airport.clone(),
        boards: o.boards,
        flights_in_window: in_window,
        flights_changed: flights.len(),
        seconds,
        changes,
        changes_per_sec: changes as f64 / seconds,
        pushes,
        pushes_per_board_per_sec: pushes as f64 / o.boards.max(1) as f64 / seconds,
        max_per_flight_second,
        writer_latency: lat.summary(),
        writer_errors: errors.load(Ordering::Relaxed),
        server_cpu_percent: cpu_used.map(|c| c / seconds * 100.0),
        server_cpu_ms_per_change: cpu_used
            .filter(|_| changes > 0)
            .map(|c| c * 1000.0 / changes as f64),
        // coalesced: a board gets at most one push per flight of its window per second
        // (plus one each at the start); bursts seen by the client are arrival jitter
        ok: changes > 0 && pushes as f64 <= (o.boards * in_window) as f64 * (seconds + 1.0),
    })
}
