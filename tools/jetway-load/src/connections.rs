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
use crate::target::{self, ProcStatus, Target};

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
    /// The load tool's own CPU time over the same phase, per connection: when it is
    /// near the server's, the rate measures the client as much as the server.
    pub client_cpu_us_per_connection: Option<f64>,
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

/// Connections opening at once.
const OPENING: usize = 256;

/// CPU seconds spent opening, in µs per opened connection.
fn per_connection(cpu_seconds: Option<f64>, opened: u64) -> Option<f64> {
    cpu_seconds
        .filter(|_| opened > 0)
        .map(|s| s * 1e6 / opened as f64)
}

/// Opens one connection, logs it in with `token` and subscribes it to `flight`.
async fn open_one(
    ep: &Endpoint,
    token: Option<String>,
    flight: Option<String>,
) -> Result<Conn, Error> {
    let mut c = Conn::open(ep).await?;
    if let Some(token) = token {
        c.check("auth.resume", json!({"token": token})).await?;
    }
    if let Some(fid) = flight {
        c.check("seats.subscribe", json!({"flight_id": fid}))
            .await?;
    }
    Ok(c)
}

pub async fn run(target: &Target, ep: &Arc<Endpoint>, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let mut flights = match o.flight.as_deref() {
        None => client::all_flights(&mut setup).await.unwrap_or_default(),
        Some("largest") => vec![client::pick_flight(&mut setup, None).await?.flight_id],
        Some(id) => vec![id.to_string()],
    };
    if flights.is_empty() {
        flights = vec![client::made_up_flight(1)];
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
    let client_cpu_before = target::cpu_seconds(std::process::id());
    let start = Instant::now();
    // each connection is a task of its own from its first byte (so the client's work
    // spreads over the runtime's threads), at most OPENING of them opening at once
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(o.connections);
    for i in 0..o.connections {
        let permit = opening.clone().acquire_owned().await?;
        let token = o.auth.then(|| tokens[i % tokens.len()].clone());
        let fid = o.subscribe.then(|| flights[i % flights.len()].clone());
        let (ep, dropped, done) = (ep.clone(), dropped.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = match open_one(&ep, token, fid).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = done.send(Err(e.to_string()));
                    return;
                }
            };
            drop(permit);
            // sent and dropped: the count ends when every connection has reported
            let _ = done.send(Ok(()));
            drop(done);
            // keep reading (answers pings) until the run aborts this task
            while let Some(m) = c.ws.next().await {
                if m.is_err() {
                    break;
                }
            }
            dropped.fetch_add(1, Ordering::Relaxed);
        }));
    }
    drop(done_tx);
    let mut failed = 0u64;
    let mut first_error = None;
    let mut opened = 0u64;
    while let Some(r) = done_rx.recv().await {
        pb.inc(1);
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let open_seconds = start.elapsed().as_secs_f64();
    let cpu_opening = cpu_before.zip(target.cpu_seconds()).map(|(a, b)| b - a);
    let client_cpu = client_cpu_before
        .zip(target::cpu_seconds(std::process::id()))
        .map(|(a, b)| b - a);
    pb.finish_and_clear();
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
        server_cpu_us_per_connection: per_connection(cpu_opening, opened),
        client_cpu_us_per_connection: per_connection(client_cpu, opened),
        memory_before: before,
        memory_open: open,
        memory_closed: closed,
        bytes_per_connection: per(|s| s.vm_rss_kib),
        anon_bytes_per_connection: per(|s| s.rss_anon_kib),
        dropped: dropped_n,
        ok: failed == 0 && dropped_n == 0 && opened as usize == o.connections,
    })
}
