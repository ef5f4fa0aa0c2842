//! Stampede: N logged-in users (sharing A accounts through `auth.resume`, or each
//! with an account of its own when A >= N) are all connected, then told to go at once; user i holds seat i mod S of one flight and,
//! if it wins, pays. Every seat is contested by about N/S users. Afterwards the seat
//! map is read back: seats sold must equal seats, oversold must be 0.
//!
//! A loser closes its connection as soon as its hold is refused (a real buyer who lost
//! the seat leaves), so the server also pays for those hang-ups mid-race; with
//! `--losers-stay` losers keep their connections open until the race is over (closed
//! after it; a winner closes once its payment is answered), which measures the race
//! alone.

use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::client::{self, Conn, Endpoint, Error, Held};
use crate::stats::{self, Lat, Summary};
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct Opts {
    pub users: usize,
    pub accounts: usize,
    pub quiet: bool,
    pub losers_stay: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub flight_id: String,
    pub seats: usize,
    pub users: usize,
    /// Accounts registered: the users share them, or each has its own (as many as users).
    pub accounts: usize,
    /// Losers kept their connections open until the race ended (`--losers-stay`).
    pub losers_stay: bool,
    pub holds_won: u64,
    pub paid: u64,
    pub losers: u64,
    /// Booked seats in the seat map read back afterwards.
    pub seats_booked: u64,
    pub oversold: u64,
    pub unsold: u64,
    pub errors: BTreeMap<String, u64>,
    /// From "go" to the last winning hold's reply.
    pub all_held_ms: Option<f64>,
    /// From "go" to the last payment's reply: the flight is sold out.
    pub sold_out_ms: Option<f64>,
    pub winner_hold_latency: Summary,
    pub loser_latency: Summary,
    pub pay_latency: Summary,
    pub ok: bool,
}

struct Shared {
    go: tokio::sync::watch::Receiver<Option<Instant>>,
    last_hold_us: AtomicU64,
    last_pay_us: AtomicU64,
    won: parking_lot::Mutex<Vec<String>>,
    paid: AtomicU64,
    win_lat: Lat,
    lose_lat: Lat,
    pay_lat: Lat,
    errors: parking_lot::Mutex<BTreeMap<String, u64>>,
}

pub async fn run(target: &Target, ep: &Endpoint, o: &Opts) -> Result<Outcome, Error> {
    let mut setup = Conn::open(ep).await?;
    let flight = client::pick_flight(&mut setup, None).await?;
    let seats = Arc::new(flight.seats.clone());
    if seats.is_empty() {
        return Err("the flight has no free seats".into());
    }
    let accounts = o.accounts.clamp(1, o.users.max(1));
    let tokens = client::register_accounts(ep, "t", accounts, 4).await?;
    let own_account = accounts == o.users;

    let pb = stats::bar(o.users as u64, "connecting", o.quiet);
    let conns = futures::stream::iter(0..o.users)
        .map(|i| {
            // shared accounts: every contender for a seat uses the same account, so an
            // account wins exactly its seats (S/A of them) whoever wins: a per-user cap
            // on open holds is never what decides the race
            let account = match own_account {
                true => i,
                false => (i % seats.len()) % tokens.len(),
            };
            let token = tokens[account].clone();
            async move {
                let mut c = Conn::open(ep).await?;
                c.must("auth.resume", json!({"token": token})).await?;
                Ok::<_, Error>((i, c))
            }
        })
        .buffer_unordered(256)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    pb.finish_and_clear();

    let (go_tx, go) = tokio::sync::watch::channel(None);
    let sh = Arc::new(Shared {
        go,
        last_hold_us: AtomicU64::new(0),
        last_pay_us: AtomicU64::new(0),
        won: Default::default(),
        paid: AtomicU64::new(0),
        win_lat: Lat::default(),
        lose_lat: Lat::default(),
        pay_lat: Lat::default(),
        errors: Default::default(),
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, c)| {
            let seat = seats[i % seats.len()].clone();
            let stay = o.losers_stay;
            tokio::spawn(user(sh.clone(), c, i, flight.flight_id.clone(), seat, stay))
        })
        .collect();
    // let every task reach its wait
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = go_tx.send(Some(Instant::now()));
    let pb = stats::bar(o.users as u64, "racing", o.quiet);
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            open.push(c);
        }
        pb.inc(1);
    }
    drop(open);
    pb.finish_and_clear();

    let map = setup
        .must("flights.get", json!({"flight_id": flight.flight_id}))
        .await?;
    let seats_booked = map
        .get("seats")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|s| s.get("status").and_then(Value::as_str) == Some("booked"))
                .count() as u64
        })
        .unwrap_or(0);
    let won = sh.won.lock().clone();
    let distinct: HashSet<&String> = won.iter().collect();
    let holds_won = won.len() as u64;
    let contested = seats.len().min(o.users) as u64;
    let oversold = (holds_won - distinct.len() as u64) + holds_won.saturating_sub(contested);
    let paid = sh.paid.load(Ordering::Relaxed);
    let unsold = contested.saturating_sub(seats_booked);
    let errors = sh.errors.lock().clone();
    let ms = |us: u64| (us > 0).then_some(us as f64 / 1000.0);
    let sold_out = paid == contested && seats_booked == contested;
    Ok(Outcome {
        target: target.name.to_string(),
        flight_id: flight.flight_id.clone(),
        seats: seats.len(),
        users: o.users,
        accounts,
        losers_stay: o.losers_stay,
        holds_won,
        paid,
        losers: sh.lose_lat.summary().count,
        seats_booked,
        oversold,
        unsold,
        all_held_ms: ms(sh.last_hold_us.load(Ordering::Relaxed)),
        sold_out_ms: if sold_out {
            ms(sh.last_pay_us.load(Ordering::Relaxed))
        } else {
            None
        },
        winner_hold_latency: sh.win_lat.summary(),
        loser_latency: sh.lose_lat.summary(),
        pay_latency: sh.pay_lat.summary(),
        ok: oversold == 0 && unsold == 0 && errors.is_empty() && seats_booked == paid,
        errors,
    })
}

/// One user's race; a loser's connection is closed at once, or (`stay`) handed back
/// to be closed once the race is over.
async fn user(
    sh: Arc<Shared>,
    mut c: Conn,
    i: usize,
    fid: String,
    seat: String,
    stay: bool,
) -> Option<Conn> {
    let mut go = sh.go.clone();
    let t0 = match go.wait_for(Option::is_some).await {
        Ok(t) => t.unwrap_or_else(Instant::now),
        Err(_) => return None,
    };
    let err = |reason: String| *sh.errors.lock().entry(reason).or_default() += 1;
    let start = Instant::now();
    let hold = json!({"flight_id": fid, "seats": [seat], "passengers": [{"name": "Load Test"}],
                      "request_id": format!("s{}-{i}", std::process::id())});
    let v = match c.call_as::<Held>("booking.hold", hold).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if e.reason == "seat_unavailable" => {
            sh.lose_lat.record(start.elapsed());
            return stay.then_some(c);
        }
        Ok(Err(e)) => {
            err(format!("{}: {}", e.reason, e.message));
            return None;
        }
        Err(e) => {
            err(format!("transport: {e}"));
            return None;
        }
    };
    sh.win_lat.record(start.elapsed());
    sh.last_hold_us
        .fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    sh.won.lock().push(seat);
    let Some(loc) = v.locator() else {
        err("no locator".into());
        return None;
    };
    let pay_start = Instant::now();
    let pay = json!({"locator": loc, "payment_method": "pm_card_visa",
                     "request_id": format!("p{}-{i}", std::process::id())});
    match c.call_as::<IgnoredAny>("booking.pay", pay).await {
        Ok(Ok(_)) => {
            sh.pay_lat.record(pay_start.elapsed());
            sh.paid.fetch_add(1, Ordering::Relaxed);
            sh.last_pay_us
                .fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        Ok(Err(e)) => err(format!("{}: {}", e.reason, e.message)),
        Err(e) => err(format!("transport: {e}")),
    }
    None
}
