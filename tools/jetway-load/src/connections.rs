//! Connections: open N authenticated (`auth.resume`), subscribed connections (to all
//! flights round-robin, or all to one: `--flight largest`) and read the server's
//! memory per connection from /proc/PID/status.

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, Conn, Endpoint, Error};
use crate::stats;
use crate::target::{ProcStatus, Target};

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    pub accounts: usize,
    pub hold: f64,
    /// Log each connection in (`auth.resume`).
    pub auth: bool,
    /// Subscribe each connection to a flight.
    pub subscribe: bool,
    /// One flight for all (`largest`: the one with the most seats); none: all flights.
    pub flight: Option<String>,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub requested: usize,
    /// The flight every connection watched, when one was chosen.
    pub flight: Option<String>,
    pub opened: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub open_seconds: f64,
    pub connections_per_sec: f64,
    /// Server CPU time spent while the connections were opened, per connection (the
    /// load tool shares the machine, so the rate alone may measure the client).
    pub server_cpu_us_per_connection: Option<f64>,
    pub memory_before: Option<ProcStatus>,
    pub memory_open: Option<ProcStatus>,
    pub memory_closed: Option<ProcStatus>,
    /// (VmRSS with all open - VmRSS before) / opened.
    pub bytes_per_connection: Option<f64>,
    /// The same from RssAnon (heap and stacks only, no file pages).
    pub anon_bytes_per_connection: Option<f64>,
    /// Connections that ended while they should have stayed open.
    pub dropped: u64,
    pub ok: bool,
}

pub async fn run(target: &Target, ep: &Endpoint, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let mut flights = match o.flight.as_deref() {
        None => client::all_flights(&mut setup).await.unwrap_or_default(),
        Some("largest") => vec![client::pick_flight(&mut setup, None).await?.flight_id],
        Some(id) => vec![id.to_string()],
    };
    if flights.is_empty() {
        flights.push("REF".into());
    }
    // anonymous runs register nobody: Argon2's memory would blur the baseline
    let tokens = if o.auth {
        client::register_accounts(ep, "c", o.accounts.clamp(1, o.connections.max(1)), 4).await?
    } else {
        vec![String::new()]
    };
    drop(setup);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = target.memory();
    let cpu_before = target.cpu_seconds();

    let dropped = Arc::new(AtomicU64::new(0));
    let pb = stats::bar(o.connections as u64, "connecting", o.quiet);
    let start = Instant::now();
    let results = futures::stream::iter(0..o.connections)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            let fid = flights[i % flights.len()].clone();
            let dropped = dropped.clone();
            let (auth, subscribe) = (o.auth, o.subscribe);
            async move {
                let mut c = Conn::open(ep).await?;
                if auth {
                    c.must("auth.resume", json!({"token": token})).await?;
                }
                if subscribe {
                    c.must("seats.subscribe", json!({"flight_id": fid})).await?;
                }
                // keep reading (answers pings) until the run aborts this task
                Ok::<_, Error>(tokio::spawn(async move {
                    while let Some(m) = c.ws.next().await {
                        if m.is_err() {
                            break;
                        }
                    }
                    dropped.fetch_add(1, Ordering::Relaxed);
                }))
            }
        })
        .buffer_unordered(256)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await;
    let open_seconds = start.elapsed().as_secs_f64();
    let cpu_opening = cpu_before.zip(target.cpu_seconds()).map(|(a, b)| b - a);
    pb.finish_and_clear();
    let mut tasks = Vec::new();
    let mut failed = 0u64;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let opened = tasks.len() as u64;
    stats::timed(o.hold.max(1.0), "idle", o.quiet).await;
    let open = target.memory();
    let dropped_n = dropped.load(Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    drop(tasks);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = target.memory();
    let per = |f: fn(&ProcStatus) -> u64| {
        before.zip(open).and_then(|(b, a)| {
            (opened > 0).then(|| (f(&a) as f64 - f(&b) as f64) * 1024.0 / opened as f64)
        })
    };
    Ok(Outcome {
        target: target.name.to_string(),
        requested: o.connections,
        flight: (flights.len() == 1).then(|| flights[0].clone()),
        opened,
        failed,
        first_error,
        open_seconds,
        connections_per_sec: opened as f64 / open_seconds.max(1e-9),
        server_cpu_us_per_connection: cpu_opening
            .filter(|_| opened > 0)
            .map(|s| s * 1e6 / opened as f64),
        memory_before: before,
        memory_open: open,
        memory_closed: closed,
        bytes_per_connection: per(|s| s.vm_rss_kib),
        anon_bytes_per_connection: per(|s| s.rss_anon_kib),
        dropped: dropped_n,
        ok: failed == 0 && dropped_n == 0 && opened as usize == o.connections,
    })
}
