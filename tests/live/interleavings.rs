//! Random interleavings (proptest) of holds, pays, cancels and expiries keep every
//! watcher's map equal to `flights.get`.

use super::*;

const P_USERS: usize = 3;
const P_POOL: usize = 8;
const P_BUFFER: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    Hold {
        user: usize,
        seats: Vec<usize>,
    },
    Pay {
        user: usize,
        nth: usize,
    },
    Cancel {
        user: usize,
        nth: usize,
    },
    /// Waits until a held booking of the user expires (if it has one).
    AwaitExpiry {
        user: usize,
        nth: usize,
    },
    /// A new watcher subscribes; with `back`, `since` is that many versions ago.
    Watch {
        back: Option<u64>,
    },
    /// A watcher drops its connection and resubscribes with `since`.
    Reconnect {
        watcher: usize,
    },
    /// A watcher reads up to `n` of the pushes waiting for it.
    Read {
        watcher: usize,
        n: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..P_USERS, proptest::collection::btree_set(0..P_POOL, 1..=3))
            .prop_map(|(user, s)| Op::Hold { user, seats: s.into_iter().collect() }),
        3 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::Pay { user, nth }),
        3 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::Cancel { user, nth }),
        1 => (0..P_USERS, 0..4usize).prop_map(|(user, nth)| Op::AwaitExpiry { user, nth }),
        2 => proptest::option::of(0..(2 * P_BUFFER as u64)).prop_map(|back| Op::Watch { back }),
        1 => (0..8usize).prop_map(|watcher| Op::Reconnect { watcher }),
        1 => (0..8usize, 1..6usize).prop_map(|(watcher, n)| Op::Read { watcher, n }),
    ]
}

/// One case: its own fresh flight, the users' connections, and what the test knows.
struct Case {
    url: String,
    fid: String,
    pool: Vec<String>,
    users: Vec<Client>,
    /// Each user's bookings, oldest first.
    bookings: Vec<Vec<String>>,
    owner: HashMap<String, usize>,
    seats_of: HashMap<String, Vec<String>>,
    /// The last status each booking was pushed with.
    status: HashMap<String, String>,
    /// Successful holds, pays and cancels (expiries are counted at the end).
    writes: u64,
    /// Reads everything, and remembers its map at every version.
    reference: Watcher,
    history: BTreeMap<u64, Map>,
    watchers: Vec<Watcher>,
    rid: u64,
    stats: Stats,
}

/// What the random cases exercised, for the log.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    holds: u64,
    refused: u64,
    pays: u64,
    cancels: u64,
    expiries: u64,
    snapshots: u64,
    replays: u64,
}

impl Case {
    /// Takes in the `booking.updated` pushes the user has received so far.
    fn absorb(&mut self, user: usize) {
        let pushes = std::mem::take(&mut self.users[user].pushes);
        for p in pushes.iter().filter(|p| p["method"] == "booking.updated") {
            self.note(&p["params"]);
        }
    }

    fn note(&mut self, update: &Value) {
        let b = &update["booking"];
        if b["flight_id"] != self.fid.as_str() {
            return;
        }
        let loc = b["locator"].as_str().expect("locator").to_owned();
        self.status
            .insert(loc, b["status"].as_str().expect("status").to_owned());
    }

    /// Waits until the user's booking is no longer held.
    async fn settle(&mut self, user: usize, loc: &str) {
        self.absorb(user);
        while self.status.get(loc).map(String::as_str) == Some("held") {
            let p = self.users[user].push("booking.updated").await;
            self.note(&p);
        }
    }

    fn pick(&self, user: usize, nth: usize) -> Option<String> {
        let list = &self.bookings[user];
        (!list.is_empty()).then(|| list[nth % list.len()].clone())
    }

    /// A request id not used before by these users (they take part in every case).
    fn next_rid(&mut self) -> String {
        self.rid += 1;
        format!("{}-{}", self.fid, self.rid)
    }

    /// Brings the reference watcher up to the published version, remembering maps.
    async fn advance_reference(&mut self) -> u64 {
        let got = self
            .reference
            .c
            .ok("flights.get", json!({ "flight_id": self.fid }))
            .await;
        let v = got["version"].as_u64().expect("version");
        while self.reference.map.version < v {
            self.reference.next().await;
            self.history
                .insert(self.reference.map.version, self.reference.map.clone());
        }
        v
    }

    /// Checks that a subscribe with `since` replayed exactly when it could.
    fn check_start(&mut self, w: &Watcher, since: Option<u64>) {
        match w.began {
            Began::Snapshot => self.stats.snapshots += 1,
            Began::Replay(_) => self.stats.replays += 1,
        }
        match (since, w.began) {
            (None, b) => assert_eq!(b, Began::Snapshot),
            (Some(s), Began::Replay(n)) => {
                assert_eq!(n as u64, w.map.version - s);
                assert!(n <= P_BUFFER, "replayed more than the buffer holds");
            }
            (Some(s), Began::Snapshot) => assert!(
                w.map.version - s > P_BUFFER as u64,
                "a snapshot although since {s} was replayable at version {}",
                w.map.version
            ),
        }
    }

    async fn run(&mut self, op: &Op) {
        match op {
            Op::Hold { user, seats } => {
                let seats: Vec<String> = seats.iter().map(|&i| self.pool[i].clone()).collect();
                let rid = self.next_rid();
                let r = self.users[*user]
                    .call(
                        "booking.hold",
                        json!({"flight_id": self.fid, "seats": seats, "passengers": passengers(seats.len()), "request_id": rid}),
                    )
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    let loc = ok["booking"]["locator"].as_str().unwrap().to_owned();
                    assert_eq!(ok["booking"]["status"], "held");
                    assert_eq!(self.status.get(&loc).map(String::as_str), Some("held"));
                    self.writes += 1;
                    self.stats.holds += 1;
                    self.bookings[*user].push(loc.clone());
                    self.owner.insert(loc.clone(), *user);
                    self.seats_of.insert(loc, seats);
                } else {
                    assert_eq!(r["error"]["data"]["reason"], "seat_unavailable", "{r}");
                    self.stats.refused += 1;
                }
            }
            Op::Pay { user, nth } => {
                let Some(loc) = self.pick(*user, *nth) else {
                    return;
                };
                let rid = self.next_rid();
                let paid_before = self.status.get(&loc).is_some_and(|s| s == "confirmed");
                let r = self.users[*user]
                    .call(
                        "booking.pay",
                        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": rid}),
                    )
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    assert_eq!(ok["booking"]["status"], "confirmed");
                    assert_eq!(self.status[&loc], "confirmed");
                    // paying a paid booking again answers it as paid: no new version
                    if !paid_before {
                        self.writes += 1;
                        self.stats.pays += 1;
                    }
                } else {
                    let reason = r["error"]["data"]["reason"].as_str().unwrap_or_default();
                    assert!(matches!(reason, "hold_expired" | "invalid_state"), "{r}");
                }
            }
            Op::Cancel { user, nth } => {
                let Some(loc) = self.pick(*user, *nth) else {
                    return;
                };
                let rid = self.next_rid();
                let r = self.users[*user]
                    .call("booking.cancel", json!({"locator": loc, "request_id": rid}))
                    .await;
                self.absorb(*user);
                if let Some(ok) = r.get("result") {
                    let st = ok["booking"]["status"].as_str().unwrap().to_owned();
                    assert!(matches!(st.as_str(), "cancelled" | "refunded"), "{r}");
                    assert_eq!(self.status[&loc], st);
                    self.writes += 1;
                    self.stats.cancels += 1;
                } else {
                    let reason = r["error"]["data"]["reason"].as_str().unwrap_or_default();
                    assert!(matches!(reason, "hold_expired" | "invalid_state"), "{r}");
                }
            }
            Op::AwaitExpiry { user, nth } => {
                self.absorb(*user);
                let held: Vec<String> = self.bookings[*user]
                    .iter()
                    .filter(|l| self.status.get(*l).map(String::as_str) == Some("held"))
                    .cloned()
                    .collect();
                if held.is_empty() {
                    return;
                }
                let loc = held[nth % held.len()].clone();
                self.settle(*user, &loc).await;
                assert_eq!(self.status[&loc], "expired");
            }
            Op::Watch { back } => {
                let v = self.advance_reference().await;
                let since = back.map(|b| v.saturating_sub(b));
                let prior = since.map(|s| self.history[&s].clone());
                let w = Watcher::resume(&self.url, &self.fid, prior).await;
                self.check_start(&w, since);
                self.watchers.push(w);
            }
            Op::Reconnect { watcher } => {
                if self.watchers.is_empty() {
                    return;
                }
                let w = self.watchers.swap_remove(watcher % self.watchers.len());
                let map = w.leave().await;
                let since = map.version;
                let w = Watcher::resume(&self.url, &self.fid, Some(map)).await;
                self.check_start(&w, Some(since));
                self.watchers.push(w);
            }
            Op::Read { watcher, n } => {
                if self.watchers.is_empty() {
                    return;
                }
                let i = watcher % self.watchers.len();
                let w = &mut self.watchers[i];
                // after this reply every push up to its version is already here
                let got =
                    w.c.ok("flights.get", json!({ "flight_id": self.fid }))
                        .await;
                let v = got["version"].as_u64().unwrap();
                let until = v.min(w.map.version + *n as u64);
                w.catch_up(until).await;
            }
        }
    }

    /// Lets every hold run out, then compares everything with `flights.get`.
    async fn finish(&mut self) {
        let held: Vec<(usize, String)> = self.owner.iter().map(|(l, u)| (*u, l.clone())).collect();
        for (user, loc) in held {
            self.settle(user, &loc).await;
        }
        let expired = self.status.values().filter(|s| *s == "expired").count() as u64;
        self.stats.expiries = expired;
        let v = self.advance_reference().await;
        assert_eq!(
            v,
            self.writes + expired,
            "one version per hold, pay, cancel and expiry"
        );
        self.reference.check().await;
        let got = self
            .reference
            .c
            .ok("flights.get", json!({ "flight_id": self.fid }))
            .await;
        // the model: seats of confirmed bookings are booked, every other seat is free
        let mut expect: BTreeMap<String, String> = got["seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["seat"].as_str().unwrap().to_owned(),
                    "available".to_owned(),
                )
            })
            .collect();
        for (loc, st) in &self.status {
            assert!(
                matches!(
                    st.as_str(),
                    "confirmed" | "cancelled" | "refunded" | "expired"
                ),
                "{loc} is {st}"
            );
            if st == "confirmed" {
                for seat in &self.seats_of[loc] {
                    expect.insert(seat.clone(), "booked".to_owned());
                }
            }
        }
        assert_eq!(
            self.reference.map.status, expect,
            "the map follows the bookings"
        );
        for w in &mut self.watchers {
            w.catch_up(v).await;
            w.check().await;
        }
    }
}

#[test]
fn random_interleavings_keep_every_watcher_equal_to_flights_get() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _machine = rt.block_on(MACHINE.read());
    let s = rt.block_on(Server::start_with(|c| {
        c.hold_ttl = 1;
        c.replay_buffer = P_BUFFER;
    }));
    let url = s.url();
    let (tokens, flights) = rt.block_on(async {
        let mut c = s.client().await;
        let mut tokens = Vec::new();
        for _ in 0..P_USERS {
            tokens.push(c.new_user().await);
        }
        let now = time::OffsetDateTime::now_utc();
        let all = c.ok("flights.search", json!({"limit": 500})).await;
        let flights: Vec<String> = all["flights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                time::OffsetDateTime::parse(
                    f["departs_at"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|d| d - now > time::Duration::days(1))
            })
            .map(fid_of)
            .collect();
        (tokens, flights)
    });
    let next_flight = RefCell::new(0usize);
    let totals = RefCell::new(Stats::default());
    let started = Instant::now();

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        max_shrink_iters: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 6..28);
    let result = runner.run(&strategy, |ops| {
        let fid = {
            let mut n = next_flight.borrow_mut();
            *n += 1;
            flights
                .get(*n - 1)
                .cloned()
                .expect("a fresh flight for every case")
        };
        rt.block_on(async {
            let mut users = Vec::new();
            for t in &tokens {
                let mut c = Client::connect(&url).await;
                c.ok("auth.resume", json!({ "token": t })).await;
                users.push(c);
            }
            let mut setup = Client::connect(&url).await;
            let pool = {
                let mut p = free_seats(&mut setup, &fid, "economy", P_POOL - 2).await;
                p.extend(free_seats(&mut setup, &fid, "business", 2).await);
                p
            };
            let reference = Watcher::join(&url, &fid).await;
            assert_eq!(reference.map.version, 0, "a fresh flight");
            let mut history = BTreeMap::new();
            history.insert(0, reference.map.clone());
            let mut case = Case {
                url: url.clone(),
                fid: fid.clone(),
                pool,
                users,
                bookings: vec![Vec::new(); P_USERS],
                owner: HashMap::new(),
                seats_of: HashMap::new(),
                status: HashMap::new(),
                writes: 0,
                reference,
                history,
                watchers: Vec::new(),
                rid: 0,
                stats: Stats::default(),
            };
            for op in &ops {
                case.run(op).await;
            }
            case.finish().await;
            let (mut t, c) = (totals.borrow_mut(), case.stats);
            t.holds += c.holds;
            t.refused += c.refused;
            t.pays += c.pays;
            t.cancels += c.cancels;
            t.expiries += c.expiries;
            t.snapshots += c.snapshots;
            t.replays += c.replays;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "property: {} cases in {:.1?}: {:?}",
        next_flight.borrow(),
        started.elapsed(),
        totals.borrow()
    );
    rt.block_on(s.stop());
}
