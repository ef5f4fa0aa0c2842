//! Chaos soak: clients hold, pay (some with 3-D Secure, authenticating at the fake
//! gateway), cancel (whole bookings and single passengers) and
//! change seats while the server is killed with SIGKILL at random moments and
//! restarted. Payments go through a fake Stripe (tools/fake-stripe) that, each cycle,
//! is slow, fails, times out, loses replies or charges late (the race where a status
//! read after a timeout sees an unconfirmed payment that is charged a moment later).
//! After each restart: every answered register, hold, pay, cancel and seat change is
//! there; requests left unanswered are retried with their request_id and act at most
//! once; no seat belongs to two bookings; each flight's seat map equals what its
//! bookings imply; holds that fell due are released; versions only go forward; and,
//! once the reconciler has had a bounded time to settle open attempts, the money each
//! booking kept at the gateway equals what its order says (no charge without a ticket
//! or a refund, every refund recorded was paid).
//!
//! `JETWAY_SOAK_CYCLES` sets the number of kill cycles (a short run by default, for
//! CI); `scripts/soak.sh` runs the full soak on a release build. `CHAOS_SEED` picks
//! the random run.

mod common;

use common::{
    fake_stripe_flags, money_mismatches, passengers, unique_name, Proc, FAKE_STRIPE_KEY, PASSWORD,
};
use fake_stripe::{FakeStripe, Fault, FaultRule, Step};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Kill cycles when `JETWAY_SOAK_CYCLES` is not set: what CI runs.
const CI_CYCLES: usize = 10;
const CLIENTS: usize = 6;
const HOLD_TTL: &str = "3";
const WAIT: Duration = Duration::from_secs(20);
/// The longest delay the fake gateway injects: after a kill, nothing at the gateway
/// changes later than this (a late charge included).
const MAX_DELAY: Duration = Duration::from_millis(1500);
/// How long the reconciler may take to settle open attempts after a restart.
const SETTLE: Duration = Duration::from_secs(30);
/// A flight with fewer free economy seats than this is replaced by a fresh one.
const MIN_FREE: usize = 40;
/// A payment method that needs the customer's authentication (3-D Secure).
const THREE_DS: &str = "pm_card_threeDSecure2Required";
/// A client that never panics on a dropped connection: a call answers None.
struct Conn(common::Client);

impl Conn {
    async fn open(url: &str) -> Conn {
        Conn(common::Client::connect(url).await)
    }

    async fn call(&mut self, method: &str, params: Value) -> Option<Value> {
        self.0.try_call(method, params, WAIT).await
    }

    /// A call that must succeed (server up, between kills).
    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self
            .call(method, params.clone())
            .await
            .unwrap_or_else(|| panic!("{method}: no answer"));
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} {params} failed: {r}"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pending,
    Ok(Value),
    Err(String),
}

#[derive(Debug, Clone)]
struct Op {
    cycle: usize,
    user: usize,
    method: &'static str,
    params: Value,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct Model {
    /// (username, token) of every answered registration.
    users: Vec<(String, String)>,
    ops: Vec<Op>,
    /// Highest version anyone saw per flight (replies, pushes, checks).
    seen: HashMap<String, u64>,
}

impl Model {
    fn see(&mut self, flight: &str, v: u64) {
        let e = self.seen.entry(flight.to_owned()).or_default();
        *e = (*e).max(v);
    }
}

/// Records every version pushed to a watcher of the flights until the kill.
async fn watcher(url: String, flights: Vec<String>, model: Arc<Mutex<Model>>) {
    let mut c = Conn::open(&url).await;
    for f in &flights {
        let Some(r) = c.call("seats.subscribe", json!({"flight_id": f})).await else {
            return;
        };
        if let Some(v) = r["result"]["version"].as_u64() {
            model.lock().await.see(f, v);
        }
    }
    loop {
        for p in c.0.pushes.drain(..) {
            if p["method"] == "seats.changed" {
                let f = p["params"]["flight_id"].as_str().unwrap_or_default();
                model
                    .lock()
                    .await
                    .see(f, p["params"]["version"].as_u64().unwrap_or(0));
            }
        }
        let Some(Ok(Message::Text(t))) = c.0.ws.next().await else {
            return;
        };
        if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
            c.0.pushes.push_back(v);
        }
    }
}

fn outcome(reply: &Value) -> Outcome {
    match reply.get("result") {
        Some(v) => Outcome::Ok(v.clone()),
        None => Outcome::Err(
            reply["error"]["data"]["reason"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        ),
    }
}

fn parse_time(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("time")
}

/// Retries every unanswered request with its request_id; afterwards every op is answered.
async fn retry_pending(url: &str, model: &Arc<Mutex<Model>>) -> usize {
    let pending: Vec<(usize, Op)> = {
        let m = model.lock().await;
        m.ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.outcome == Outcome::Pending)
            .map(|(i, o)| (i, o.clone()))
            .collect()
    };
    let tokens: Vec<String> = model
        .lock()
        .await
        .users
        .iter()
        .map(|u| u.1.clone())
        .collect();
    for (i, op) in &pending {
        let mut c = Conn::open(url).await;
        c.ok("auth.resume", json!({"token": tokens[op.user]})).await;
        let r = c
            .call(op.method, op.params.clone())
            .await
            .expect("a retry is answered");
        model.lock().await.ops[*i].outcome = outcome(&r);
    }
    pending.len()
}

fn rid(rng: &mut StdRng) -> String {
    format!("r{:016x}", rng.gen::<u64>())
}

fn names(seats: &Value) -> Vec<String> {
    let mut v: Vec<String> = seats
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["cancelled"] != true)
                .filter_map(|s| s["seat"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The free seats of a cabin on a flight; None when the connection dropped.
async fn free(c: &mut Conn, flight: &str, cabin: &str) -> Option<Vec<String>> {
    let map = c.call("flights.get", json!({"flight_id": flight})).await?;
    Some(
        map["result"]["seats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["status"] == "available" && s["cabin"] == cabin)
                    .filter_map(|s| s["seat"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// The next write on a booking given its state: pay or release a hold; move a
/// passenger (preferably into a seat this booking gave up earlier: the refund that
/// follows must not be mistaken for the earlier one), cancel one passenger or the
/// whole booking. `Ok(None)`: nothing to do on it; `Err`: the connection dropped.
async fn next_write(
    c: &mut Conn,
    rng: &mut StdRng,
    b: &Value,
) -> Result<Option<(&'static str, Value)>, ()> {
    let loc = &b["locator"];
    let seats = names(&b["seats"]);
    Ok(Some(match b["status"].as_str() {
        Some("held") if rng.gen_bool(0.75) => {
            let pm = match rng.gen_range(0..100) {
                0..10 => "pm_card_visa_chargeDeclined",
                10..25 => THREE_DS,
                _ => "pm_card_visa",
            };
            (
                "booking.pay",
                json!({"locator": loc, "payment_method": pm, "request_id": rid(rng)}),
            )
        }
        Some("held") => (
            "booking.cancel",
            json!({"locator": loc, "request_id": rid(rng)}),
        ),
        Some("confirmed") if !seats.is_empty() => {
            let from = seats.choose(rng).cloned().unwrap_or_default();
            let roll = rng.gen_range(0..100);
            if roll < 45 {
                let given_up: Vec<String> = names(&b["cancelled_seats"])
                    .into_iter()
                    .filter(|s| !seats.contains(s))
                    .collect();
                let to = match given_up.choose(rng) {
                    Some(s) if rng.gen_bool(0.7) => s.clone(),
                    _ => {
                        let flight = b["flight_id"].as_str().unwrap_or_default();
                        let free = free(c, flight, "economy").await.ok_or(())?;
                        match free.choose(rng) {
                            Some(s) => s.clone(),
                            None => return Ok(None),
                        }
                    }
                };
                (
                    "booking.change_seat",
                    json!({"locator": loc, "from": from, "to": to, "request_id": rid(rng)}),
                )
            } else if roll < 75 && seats.len() >= 2 {
                (
                    "booking.cancel",
                    json!({"locator": loc, "seats": [from], "request_id": rid(rng)}),
                )
            } else {
                (
                    "booking.cancel",
                    json!({"locator": loc, "request_id": rid(rng)}),
                )
            }
        }
        _ => return Ok(None),
    }))
}

/// One client's work until its connection drops.
#[allow(clippy::too_many_arguments)]
async fn client(
    url: String,
    gateway: String,
    cycle: usize,
    user: usize,
    token: String,
    flights: Vec<String>,
    model: Arc<Mutex<Model>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    // held bookings whose payment waits for the customer: their PaymentIntent
    let mut challenged: HashMap<String, String> = HashMap::new();
    let mut c = Conn::open(&url).await;
    if c.call("auth.resume", json!({"token": token}))
        .await
        .is_none()
    {
        return;
    }
    // bookings that take no more writes, and whether the open-hold cap was hit
    let mut done: HashSet<String> = HashSet::new();
    let mut capped = false;
    loop {
        let mine: Vec<String> = {
            let m = model.lock().await;
            m.ops
                .iter()
                .filter(|o| o.user == user && o.method == "booking.hold")
                .filter_map(|o| match &o.outcome {
                    Outcome::Ok(v) => v["booking"]["locator"].as_str().map(str::to_owned),
                    _ => None,
                })
                .filter(|l| !done.contains(l))
                .collect()
        };
        let (method, params) = if !mine.is_empty() && (capped || rng.gen_bool(0.55)) {
            let loc = mine.choose(&mut rng).cloned().unwrap_or_default();
            let Some(r) = c.call("booking.get", json!({"locator": loc})).await else {
                return;
            };
            let held = r["result"]["booking"]["status"] == "held";
            match challenged.get(&loc).filter(|_| held && rng.gen_bool(0.8)) {
                // the customer authenticates (or fails to), then the app pays again
                Some(pi) => {
                    let fail = rng.gen_bool(0.25);
                    let done = format!("{gateway}/_fake/authenticate/{pi}?fail={fail}");
                    let _ = reqwest::Client::new().post(done).send().await;
                    (
                        "booking.pay",
                        json!({"locator": loc, "payment_method": THREE_DS, "request_id": rid(&mut rng)}),
                    )
                }
                None => match next_write(&mut c, &mut rng, &r["result"]["booking"]).await {
                    Ok(Some(w)) => w,
                    Ok(None) => {
                        done.insert(loc);
                        continue;
                    }
                    Err(()) => return,
                },
            }
        } else {
            let flight = flights.choose(&mut rng).cloned().unwrap_or_default();
            let Some(free) = free(&mut c, &flight, "economy").await else {
                return;
            };
            if free.len() < 3 {
                continue;
            }
            let n = rng.gen_range(1..=3);
            let start = rng.gen_range(0..=free.len() - n);
            let seats = &free[start..start + n];
            (
                "booking.hold",
                json!({"flight_id": flight, "seats": seats, "passengers": passengers(n), "request_id": rid(&mut rng)}),
            )
        };
        let idx = {
            let mut m = model.lock().await;
            m.ops.push(Op {
                cycle,
                user,
                method,
                params: params.clone(),
                outcome: Outcome::Pending,
            });
            m.ops.len() - 1
        };
        let loc = params["locator"].as_str().unwrap_or_default().to_owned();
        let Some(r) = c.call(method, params).await else {
            return; // killed: the op stays pending
        };
        let o = outcome(&r);
        capped = method == "booking.hold" && o == Outcome::Err("invalid_state".into());
        if method == "booking.pay" {
            match r["error"]["data"]["client_secret"].as_str() {
                Some(secret) => {
                    let pi = secret.split("_secret_").next().unwrap_or_default();
                    challenged.insert(loc, pi.to_owned());
                }
                None => {
                    challenged.remove(&loc);
                }
            }
        }
        model.lock().await.ops[idx].outcome = o;
    }
}

/// A stable snapshot of every user's bookings and orders and of the flights' maps.
struct Snapshot {
    /// (user, booking)
    bookings: Vec<(usize, Value)>,
    orders: Vec<Value>,
    maps: Vec<Value>,
}

async fn snapshot(conns: &mut [Conn], flights: &[String]) -> Snapshot {
    for attempt in 0.. {
        assert!(attempt < 20, "no stable snapshot");
        // versions before and after reading the bookings agree (a hold expiring
        // during the check would otherwise race it)
        let mut before = Vec::new();
        for f in flights {
            before.push(conns[0].ok("flights.get", json!({"flight_id": f})).await);
        }
        let (mut bookings, mut orders) = (Vec::new(), Vec::new());
        for (u, c) in conns.iter_mut().enumerate() {
            let list = c.ok("bookings.list", json!({})).await;
            let o = c.ok("orders.list", json!({})).await;
            bookings.extend(
                list["bookings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (u, b.clone())),
            );
            orders.extend(o["orders"].as_array().unwrap().iter().cloned());
        }
        let mut maps = Vec::new();
        for f in flights {
            maps.push(conns[0].ok("flights.get", json!({"flight_id": f})).await);
        }
        if before
            .iter()
            .zip(&maps)
            .all(|(a, b)| a["version"] == b["version"])
        {
            return Snapshot {
                bookings,
                orders,
                maps,
            };
        }
    }
    unreachable!()
}

async fn resume_all(url: &str, model: &Model) -> Vec<Conn> {
    let mut conns = Vec::new();
    for (name, token) in &model.users {
        let mut c = Conn::open(url).await;
        let r = c.ok("auth.resume", json!({"token": token})).await;
        assert_eq!(
            r["user"]["username"],
            name.as_str(),
            "an answered register survived"
        );
        conns.push(c);
    }
    conns
}

/// Checks everything the model implies against the restarted server.
async fn verify(
    url: &str,
    model: &Arc<Mutex<Model>>,
    flights: &[String],
    started: time::OffsetDateTime,
) {
    let m = model.lock().await;
    let mut conns = resume_all(url, &m).await;
    // the last answered write of each booking, and the bookings with a payment or
    // a cancellation that failed at the gateway (its uncertain payment or refund is
    // finished later by the reconciler)
    let mut last: BTreeMap<String, (usize, Value)> = BTreeMap::new();
    let mut holds_ok: HashMap<usize, HashSet<String>> = HashMap::new();
    let (mut pay_failed, mut cancel_failed) = (HashSet::new(), HashSet::new());
    for op in &m.ops {
        match &op.outcome {
            Outcome::Ok(v) => {
                let loc = v["booking"]["locator"].as_str().unwrap().to_owned();
                if op.method == "booking.hold" {
                    holds_ok.entry(op.user).or_default().insert(loc.clone());
                }
                last.insert(loc, (op.user, v["booking"].clone()));
            }
            // a payment waiting for the customer may be confirmed later too
            Outcome::Err(reason)
                if reason == "payment_failed"
                    || (reason == "payment_action_required" && op.method == "booking.pay") =>
            {
                let loc = op.params["locator"].as_str().unwrap().to_owned();
                match op.method {
                    "booking.pay" => pay_failed.insert(loc),
                    _ => cancel_failed.insert(loc),
                };
            }
            _ => {}
        }
    }
    let snap = snapshot(&mut conns, flights).await;
    // at most once: exactly the answered holds exist, nothing more
    for u in 0..conns.len() {
        let have: HashSet<String> = snap
            .bookings
            .iter()
            .filter(|(o, _)| *o == u)
            .map(|(_, b)| b["locator"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            have,
            holds_ok.get(&u).cloned().unwrap_or_default(),
            "user {u}: bookings are exactly the answered holds"
        );
    }
    let paid = snap
        .bookings
        .iter()
        .filter(|(_, b)| b["status"] == "confirmed" || b["status"] == "refunded")
        .count();
    assert_eq!(snap.orders.len(), paid, "one order per paid booking");
    // every booking agrees with its last answered write
    for (u, b) in &snap.bookings {
        let loc = b["locator"].as_str().unwrap();
        let (owner, ack) = &last[loc];
        assert_eq!(owner, u);
        let (now, then) = (
            b["status"].as_str().unwrap(),
            ack["status"].as_str().unwrap(),
        );
        let (seats, acked) = (names(&b["seats"]), names(&ack["seats"]));
        let same_seats = seats == acked;
        let refunding = cancel_failed.contains(loc);
        let allowed = |then: &str| match (then, now) {
            ("held", "held") => {
                let due = parse_time(b["hold_expires_at"].as_str().unwrap());
                // a hold whose payment's outcome was unknown stays until that is
                // settled (docs/payments.md), then goes at the next expiry pass
                assert!(
                    due > started || pay_failed.contains(loc),
                    "{loc}: a hold due before the restart was released"
                );
                same_seats
            }
            ("held", "expired") => true,
            ("held", "confirmed") => pay_failed.contains(loc) && same_seats,
            ("confirmed", "confirmed") => {
                same_seats || (refunding && seats.iter().all(|x| acked.contains(x)))
            }
            ("confirmed", "refunded") => refunding,
            (then, now) => then == now,
        };
        // a payment whose outcome was unknown may have been confirmed later, and then
        // cancelled like any confirmed booking
        let ok =
            allowed(then) || (then == "held" && pay_failed.contains(loc) && allowed("confirmed"));
        let hist: Vec<String> = m.ops.iter().filter(|o| o.params["locator"].as_str() == Some(loc) || matches!(&o.outcome, Outcome::Ok(v) if v["booking"]["locator"].as_str() == Some(loc))).map(|o| format!("{} c{} {:?}", o.method, o.cycle, match &o.outcome { Outcome::Ok(_) => "ok".to_string(), other => format!("{other:?}") })).collect();
        assert!(
            ok,
            "{loc}: status {now} after the answered {then}; ops {hist:?}"
        );
    }
    // seats: no seat in two bookings, and the maps equal the bookings
    for (f, map) in flights.iter().zip(&snap.maps) {
        let mut implied: HashMap<String, &str> = HashMap::new();
        for (_, b) in snap
            .bookings
            .iter()
            .filter(|(_, b)| b["flight_id"] == f.as_str())
        {
            let status = match b["status"].as_str().unwrap() {
                "held" => "held",
                "confirmed" => "booked",
                _ => continue,
            };
            for seat in names(&b["seats"]) {
                assert!(
                    implied.insert(seat.clone(), status).is_none(),
                    "{f} {seat} belongs to two bookings"
                );
            }
        }
        for s in map["seats"].as_array().unwrap() {
            let seat = s["seat"].as_str().unwrap();
            let want = implied.get(seat).copied().unwrap_or("available");
            assert_eq!(s["status"], want, "{f} {seat}");
        }
        let v = map["version"].as_u64().unwrap();
        let seen = m.seen.get(f).copied().unwrap_or(0);
        assert!(v >= seen, "{f}: version {v} went back below {seen}");
    }
}

/// What the money check covered.
#[derive(Debug, Default)]
struct Money {
    charges: usize,
    refunds: usize,
    orders: usize,
}

/// Waits (at most [`SETTLE`]) until the money each booking kept at the gateway
/// equals what Jetway's orders say, looking only once nothing at the gateway can
/// still change from before the kill at `killed`.
async fn settle_money(
    url: &str,
    model: &Arc<Mutex<Model>>,
    fake: &FakeStripe,
    killed: Instant,
) -> Money {
    tokio::time::sleep_until((killed + MAX_DELAY).into()).await;
    let deadline = Instant::now() + SETTLE;
    let mut conns = resume_all(url, &*model.lock().await).await;
    loop {
        let mut orders = Vec::new();
        for c in conns.iter_mut() {
            let o = c.ok("orders.list", json!({})).await;
            orders.extend(o["orders"].as_array().unwrap().iter().cloned());
        }
        let ledger = fake.ledger();
        let wrong = money_mismatches(&orders, &ledger);
        if wrong.is_empty() {
            return Money {
                charges: ledger.intents.iter().filter(|i| i.charged > 0).count(),
                refunds: ledger.intents.iter().map(|i| i.refunds.len()).sum(),
                orders: orders.len(),
            };
        }
        if Instant::now() >= deadline {
            let m = model.lock().await;
            let story: Vec<String> = wrong
                .iter()
                .filter_map(|w| w.split(':').next())
                .flat_map(|loc| {
                    let ops = m
                        .ops
                        .iter()
                        .filter(move |o| {
                            o.params["locator"] == loc
                                || matches!(&o.outcome, Outcome::Ok(v) if v["booking"]["locator"] == loc)
                        })
                        .map(|o| format!("  {} {} -> {:?}", o.method, o.params, o.outcome));
                    let intents = ledger
                        .with_metadata("locator", loc)
                        .map(|i| format!("  gateway: {i:?}"))
                        .collect::<Vec<_>>();
                    ops.chain(intents)
                })
                .collect();
            panic!(
                "money not settled {SETTLE:?} after the restart:\n{}\n{}",
                wrong.join("\n"),
                story.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This cycle's gateway: each step may be slow (within or beyond the 1 s gateway
/// timeout), fail, time out, lose its reply or (confirm) charge late.
fn gateway_faults(rng: &mut StdRng) -> Vec<FaultRule> {
    let ms = Duration::from_millis;
    let menu: [(Step, &[Option<Fault>]); 5] = [
        (
            Step::Confirm,
            &[
                None,
                Some(Fault::Slow(ms(300))),
                Some(Fault::Slow(MAX_DELAY)),
                Some(Fault::Fail),
                Some(Fault::Timeout),
                Some(Fault::LoseReply),
                Some(Fault::ProcessLate(MAX_DELAY)),
                Some(Fault::ProcessLate(MAX_DELAY)),
            ],
        ),
        (
            Step::Create,
            &[
                None,
                None,
                Some(Fault::Fail),
                Some(Fault::Slow(ms(200))),
                Some(Fault::LoseReply),
            ],
        ),
        (
            Step::Retrieve,
            &[None, Some(Fault::Fail), Some(Fault::Slow(MAX_DELAY))],
        ),
        (Step::Cancel, &[None, Some(Fault::Fail)]),
        (
            Step::Refund,
            &[
                None,
                Some(Fault::Fail),
                Some(Fault::Slow(ms(300))),
                Some(Fault::Slow(MAX_DELAY)),
                Some(Fault::LoseReply),
                Some(Fault::Timeout),
            ],
        ),
    ];
    menu.iter()
        .filter_map(|(step, faults)| {
            let fault = (*faults.choose(rng)?)?;
            Some(FaultRule {
                step: *step,
                fault,
                rate: rng.gen_range(0.2..0.6),
            })
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Flights more than three days out, to rotate through as seats run out.
async fn flight_pool(c: &mut Conn) -> Vec<String> {
    let found = c.ok("flights.search", json!({"limit": 500})).await;
    let now = time::OffsetDateTime::now_utc();
    found["flights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| parse_time(f["departs_at"].as_str().unwrap()) - now > time::Duration::days(3))
        .map(|f| f["flight_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_chaos_keeps_every_promise() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let cycles: usize = std::env::var("JETWAY_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_CYCLES);
    let mut rng = StdRng::seed_from_u64(seed);
    let fake = FakeStripe::start().await.unwrap();
    let base = fake.base();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--hold-ttl", HOLD_TTL, "--rate-limit", "0"];
    args.extend(fake_stripe_flags(&base));
    let envs = [FAKE_STRIPE_KEY];
    // blocking: the fake gateway keeps serving on the other worker meanwhile
    let start = || tokio::task::block_in_place(|| Proc::start_with_env(dir.path(), &args, &envs));
    let model = Arc::new(Mutex::new(Model::default()));
    let began = Instant::now();
    let load_before = loadavg();

    let p = start();
    let mut c = Conn::open(&p.url()).await;
    let pool = flight_pool(&mut c).await;
    assert!(pool.len() >= 4, "flights to rotate through");
    let (mut active, mut next_flight) = (pool[..2].to_vec(), 2);
    for _ in 0..CLIENTS {
        let name = unique_name("chaos");
        let r = c
            .ok(
                "auth.register",
                json!({"username": name, "password": PASSWORD}),
            )
            .await;
        model
            .lock()
            .await
            .users
            .push((name, r["token"].as_str().unwrap().to_owned()));
    }
    drop(c);
    let mut p = Some(p);
    let (mut retried, mut writes, mut money) = (0, Vec::new(), Money::default());
    for cycle in 0..cycles {
        let proc_ = p.take().unwrap();
        let url = proc_.url();
        // replace flights that are running out of seats
        let mut c = Conn::open(&url).await;
        for f in active.iter_mut() {
            if free(&mut c, f, "economy").await.expect("flights.get").len() < MIN_FREE {
                assert!(next_flight < pool.len(), "out of flights");
                *f = pool[next_flight].clone();
                next_flight += 1;
            }
        }
        drop(c);
        for rule in gateway_faults(&mut rng) {
            fake.set_fault(rule);
        }
        // a registration, answered or not, during the run
        let reg_name = unique_name("late");
        let model2 = model.clone();
        let url2 = url.clone();
        let reg = tokio::spawn(async move {
            let mut c = Conn::open(&url2).await;
            if let Some(r) = c
                .call(
                    "auth.register",
                    json!({"username": reg_name, "password": PASSWORD}),
                )
                .await
            {
                if let Some(t) = r["result"]["token"].as_str() {
                    model2.lock().await.users.push((reg_name, t.to_owned()));
                }
            }
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(watcher(
            url.clone(),
            active.clone(),
            model.clone(),
        )));
        // a different set of users each cycle (registered late ones included)
        let mut users: Vec<(usize, String)> = {
            let m = model.lock().await;
            m.users.iter().map(|u| u.1.clone()).enumerate().collect()
        };
        users.shuffle(&mut rng);
        for (i, token) in users.into_iter().take(CLIENTS) {
            tasks.push(tokio::spawn(client(
                url.clone(),
                fake.base(),
                cycle,
                i,
                token,
                active.clone(),
                model.clone(),
                rng.gen(),
            )));
        }
        // let them work, then SIGKILL at a random moment
        let work = Duration::from_millis(rng.gen_range(300..1500));
        tokio::time::sleep(work).await;
        proc_.kill9();
        let killed = Instant::now();
        for t in tasks {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("clients notice the kill")
                .unwrap();
        }
        tokio::time::timeout(WAIT, reg)
            .await
            .expect("register ends")
            .unwrap();
        let acked = model
            .lock()
            .await
            .ops
            .iter()
            .filter(|o| o.cycle == cycle && matches!(o.outcome, Outcome::Ok(_)))
            .count();
        assert!(acked > 0, "cycle {cycle}: no write was acknowledged");
        writes.push(acked);

        // the gateway heals; restart, retry what was left unanswered, check everything
        fake.clear_faults();
        let started = time::OffsetDateTime::now_utc();
        let next = start();
        retried += retry_pending(&next.url(), &model).await;
        money = settle_money(&next.url(), &model, &fake, killed).await;
        let used = &pool[..next_flight];
        verify(&next.url(), &model, used, started).await;
        eprintln!(
            "chaos cycle {cycle}: {acked} writes acknowledged, {retried} retried so far, {money:?}, {:?}",
            began.elapsed()
        );
        p = Some(next);
    }
    let m = model.lock().await;
    let kinds: HashSet<&str> = m
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .map(|o| o.method)
        .collect();
    assert_eq!(
        kinds.len(),
        4,
        "holds, payments, cancels and seat changes all happened: {kinds:?}"
    );
    let partial = m
        .ops
        .iter()
        .filter(|o| o.params.get("seats").is_some() && o.method == "booking.cancel")
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let three_ds = |o: &&Op| o.method == "booking.pay" && o.params["payment_method"] == THREE_DS;
    let challenged = m
        .ops
        .iter()
        .filter(three_ds)
        .filter(|o| o.outcome == Outcome::Err("payment_action_required".into()))
        .count();
    let authenticated = m
        .ops
        .iter()
        .filter(three_ds)
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    // how many were paid after the customer's authentication varies from run to run
    // (2-9 in 10 cycles): reported, not asserted
    assert!(challenged > 0, "no payment asked for 3-D Secure");
    drop(m);
    writes.sort_unstable();
    eprintln!(
        "soak summary: seed={seed} cycles={cycles} writes_per_cycle_min={} writes_per_cycle_median={} writes_total={} partial_cancels={partial} three_ds_challenged={challenged} three_ds_paid={authenticated} retried={retried} gateway_charges={} gateway_refunds={} orders={} violations=0 duration={:?} loadavg_before={load_before:?} loadavg_after={:?}",
        writes.first().unwrap_or(&0),
        writes.get(writes.len() / 2).unwrap_or(&0),
        writes.iter().sum::<usize>(),
        money.charges,
        money.refunds,
        money.orders,
        began.elapsed(),
        loadavg(),
    );
    if let Some(p) = p {
        assert_eq!(p.terminate().code(), Some(0));
    }
}
