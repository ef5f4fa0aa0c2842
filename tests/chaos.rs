//! Chaos: many clients hold, pay and cancel while the server is killed with SIGKILL
//! at random moments and restarted, 20 times. After each restart: every answered
//! register, hold, pay and cancel is there; requests left unanswered are retried
//! with their request_id and act at most once; no seat belongs to two bookings;
//! each flight's seat map equals what its bookings imply; holds that fell due are
//! released; versions only go forward (never below one anyone was pushed).

mod common;

use common::{passengers, unique_name, Proc, PASSWORD};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

const CYCLES: usize = 20;
const CLIENTS: usize = 6;
const HOLD_TTL: &str = "3";
const WAIT: Duration = Duration::from_secs(20);

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

/// What a user's answered operations imply about one booking.
#[derive(Debug, Default)]
struct Expect {
    paid: bool,
    cancelled: bool,
}

fn rid(rng: &mut StdRng) -> String {
    format!("r{:016x}", rng.gen::<u64>())
}

/// One client's work until its connection drops.
async fn client(
    url: String,
    user: usize,
    token: String,
    flights: Vec<String>,
    model: Arc<Mutex<Model>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Conn::open(&url).await;
    if c.call("auth.resume", json!({"token": token}))
        .await
        .is_none()
    {
        return;
    }
    loop {
        let roll = rng.gen_range(0..100);
        let (method, params) = if roll < 50 {
            let flight = &flights[rng.gen_range(0..flights.len())];
            let Some(map) = c.call("flights.get", json!({"flight_id": flight})).await else {
                return;
            };
            let free: Vec<String> = map["result"]["seats"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|s| s["status"] == "available")
                        .map(|s| s["seat"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if free.len() < 2 {
                continue;
            }
            let n = rng.gen_range(1..=2);
            let start = rng.gen_range(0..free.len() - 1);
            let seats = &free[start..start + n];
            (
                "booking.hold",
                json!({"flight_id": flight, "seats": seats, "passengers": passengers(n), "request_id": rid(&mut rng)}),
            )
        } else {
            // pay or cancel one of this user's bookings
            let locs: Vec<String> = {
                let m = model.lock().await;
                m.ops
                    .iter()
                    .filter(|o| o.user == user && o.method == "booking.hold")
                    .filter_map(|o| match &o.outcome {
                        Outcome::Ok(v) => v["booking"]["locator"].as_str().map(str::to_owned),
                        _ => None,
                    })
                    .collect()
            };
            if locs.is_empty() {
                continue;
            }
            let loc = &locs[rng.gen_range(0..locs.len())];
            if roll < 75 {
                (
                    "booking.pay",
                    json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": rid(&mut rng)}),
                )
            } else {
                (
                    "booking.cancel",
                    json!({"locator": loc, "request_id": rid(&mut rng)}),
                )
            }
        };
        let idx = {
            let mut m = model.lock().await;
            m.ops.push(Op {
                user,
                method,
                params: params.clone(),
                outcome: Outcome::Pending,
            });
            m.ops.len() - 1
        };
        let Some(r) = c.call(method, params).await else {
            return; // killed: the op stays pending
        };
        let mut m = model.lock().await;
        m.ops[idx].outcome = match r.get("result") {
            Some(v) => Outcome::Ok(v.clone()),
            None => Outcome::Err(
                r["error"]["data"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            ),
        };
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
        let mut m = model.lock().await;
        m.ops[*i].outcome = match r.get("result") {
            Some(v) => Outcome::Ok(v.clone()),
            None => Outcome::Err(
                r["error"]["data"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            ),
        };
    }
    pending.len()
}

/// Checks everything the model implies against the restarted server.
async fn verify(
    url: &str,
    model: &Arc<Mutex<Model>>,
    flights: &[String],
    started: time::OffsetDateTime,
) {
    let m = model.lock().await;
    let mut conns = Vec::new();
    for (name, token) in &m.users {
        let mut c = Conn::open(url).await;
        let r = c.ok("auth.resume", json!({"token": token})).await;
        assert_eq!(
            r["user"]["username"],
            name.as_str(),
            "an answered register survived"
        );
        conns.push(c);
    }
    // what the answered ops imply, per booking
    let mut expect: BTreeMap<String, (usize, Expect)> = BTreeMap::new();
    let mut holds_ok: HashMap<usize, HashSet<String>> = HashMap::new();
    for op in &m.ops {
        let Outcome::Ok(v) = &op.outcome else {
            continue;
        };
        let loc = match op.method {
            "booking.hold" => v["booking"]["locator"].as_str().unwrap().to_owned(),
            _ => op.params["locator"].as_str().unwrap().to_owned(),
        };
        let e = &mut expect
            .entry(loc.clone())
            .or_insert((op.user, Expect::default()))
            .1;
        match op.method {
            "booking.hold" => {
                holds_ok.entry(op.user).or_default().insert(loc);
            }
            "booking.pay" => e.paid = true,
            "booking.cancel" => e.cancelled = true,
            _ => unreachable!(),
        }
    }
    // A stable snapshot: versions before and after reading the bookings agree
    // (a hold expiring during the check would otherwise race it).
    for attempt in 0.. {
        assert!(attempt < 20, "no stable snapshot");
        let mut before = Vec::new();
        for f in flights {
            before.push(conns[0].ok("flights.get", json!({"flight_id": f})).await);
        }
        let mut all: Vec<(usize, Value)> = Vec::new();
        for (u, c) in conns.iter_mut().enumerate() {
            let list = c.ok("bookings.list", json!({})).await;
            let orders = c.ok("orders.list", json!({})).await;
            let bookings = list["bookings"].as_array().unwrap().clone();
            // at most once: exactly the answered holds exist, nothing more
            let have: HashSet<String> = bookings
                .iter()
                .map(|b| b["locator"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                have,
                holds_ok.get(&u).cloned().unwrap_or_default(),
                "user {u}: bookings are exactly the answered holds"
            );
            let paid = bookings
                .iter()
                .filter(|b| b["status"] == "confirmed" || b["status"] == "refunded")
                .count();
            assert_eq!(
                orders["orders"].as_array().unwrap().len(),
                paid,
                "one order per paid booking"
            );
            all.extend(bookings.into_iter().map(|b| (u, b)));
        }
        let mut after = Vec::new();
        for f in flights {
            after.push(conns[0].ok("flights.get", json!({"flight_id": f})).await);
        }
        if before
            .iter()
            .zip(&after)
            .any(|(a, b)| a["version"] != b["version"])
        {
            continue;
        }
        // every booking's status agrees with what was answered
        for (u, b) in &all {
            let loc = b["locator"].as_str().unwrap();
            let (owner, e) = &expect[loc];
            assert_eq!(owner, u);
            let st = b["status"].as_str().unwrap();
            let ok = if e.cancelled {
                st == "cancelled" || st == "refunded"
            } else if e.paid {
                st == "confirmed"
            } else {
                match st {
                    "held" => {
                        let due = parse_time(b["hold_expires_at"].as_str().unwrap());
                        assert!(
                            due > started,
                            "{loc}: a hold due before the restart was released"
                        );
                        true
                    }
                    "expired" => true,
                    _ => false,
                }
            };
            assert!(ok, "{loc}: status {st} after {e:?}");
        }
        // seats: no seat in two bookings, and the maps equal the bookings
        for (f, map) in flights.iter().zip(&after) {
            let mut implied: HashMap<String, &str> = HashMap::new();
            for (_, b) in all.iter().filter(|(_, b)| b["flight_id"] == f.as_str()) {
                let status = match b["status"].as_str().unwrap() {
                    "held" => "held",
                    "confirmed" => "booked",
                    _ => continue,
                };
                for s in b["seats"].as_array().unwrap() {
                    if s["cancelled"] == true {
                        continue;
                    }
                    let seat = s["seat"].as_str().unwrap().to_owned();
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
        break;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_chaos_keeps_every_promise() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let args = ["--hold-ttl", HOLD_TTL, "--rate-limit", "0"];
    let model = Arc::new(Mutex::new(Model::default()));
    let began = Instant::now();

    // two flights more than two days out, and the first users
    let p = Proc::start(dir.path(), &args);
    let url = p.url();
    let mut c = Conn::open(&url).await;
    let found = c.ok("flights.search", json!({"limit": 500})).await;
    let now = time::OffsetDateTime::now_utc();
    let flights: Vec<String> = found["flights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| parse_time(f["departs_at"].as_str().unwrap()) - now > time::Duration::days(3))
        .take(2)
        .map(|f| f["flight_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(flights.len(), 2);
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
    let mut retried = 0;
    for cycle in 0..CYCLES {
        let proc_ = p.take().unwrap();
        let url = proc_.url();
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
            flights.clone(),
            model.clone(),
        )));
        let users: Vec<(usize, String)> = {
            let m = model.lock().await;
            m.users.iter().map(|u| u.1.clone()).enumerate().collect()
        };
        for (i, token) in users.into_iter().take(CLIENTS + 2) {
            tasks.push(tokio::spawn(client(
                url.clone(),
                i,
                token,
                flights.clone(),
                model.clone(),
                rng.gen(),
            )));
        }
        // let them work, then SIGKILL at a random moment
        let work = Duration::from_millis(rng.gen_range(150..1200));
        tokio::time::sleep(work).await;
        proc_.kill9();
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

        // restart, retry what was left unanswered, check everything
        let started = time::OffsetDateTime::now_utc();
        let next = Proc::start(dir.path(), &args);
        retried += retry_pending(&next.url(), &model).await;
        verify(&next.url(), &model, &flights, started).await;
        let m = model.lock().await;
        let answered = m
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .count();
        eprintln!(
            "chaos cycle {cycle}: {} ops ({answered} ok), {retried} retried so far, {:?}",
            m.ops.len(),
            began.elapsed()
        );
        drop(m);
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
        3,
        "holds, payments and cancels all happened: {kinds:?}"
    );
    drop(m);
    if let Some(p) = p {
        assert_eq!(p.terminate().code(), Some(0));
    }
}
