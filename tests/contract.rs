//! The machine-readable contract against the real server: every method and push is
//! driven on a running Jetway and each real reply, error and push is validated against
//! the schemas of `/openrpc.json` and `/asyncapi.json`; and docs/protocol.md is checked
//! against the code (methods, pushes, error reasons, limits and flag defaults).

mod common;

use clap::CommandFactory;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const ADMIN_PASSWORD: &str = "contract ops 2026";

/// Validators for every method's result, every push and the error object, and what
/// the test has seen pass through them.
struct Contract {
    results: BTreeMap<String, jsonschema::Validator>,
    pushes: BTreeMap<String, jsonschema::Validator>,
    error: jsonschema::Validator,
    methods_seen: BTreeSet<String>,
    pushes_seen: BTreeSet<String>,
    reasons_seen: BTreeSet<String>,
}

/// A validator for `schema`, whose `#/components/...` references resolve in `doc`.
fn validator(schema: &Value, doc: &Value) -> jsonschema::Validator {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("components".into(), doc["components"].clone());
    } else {
        schema = json!({ "allOf": [schema], "components": doc["components"] });
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema:#}"))
}

fn check(v: &jsonschema::Validator, what: &str, instance: &Value) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

impl Contract {
    fn new(openrpc: &Value, asyncapi: &Value) -> Contract {
        let results = openrpc["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .map(|m| {
                let name = m["name"].as_str().expect("name").to_owned();
                (name, validator(&m["result"]["schema"], openrpc))
            })
            .collect();
        let pushes = asyncapi["components"]["messages"]
            .as_object()
            .expect("messages")
            .values()
            .map(|m| {
                let name = m["name"].as_str().expect("name").to_owned();
                (name, validator(&m["payload"], asyncapi))
            })
            .collect();
        let error = validator(&json!({ "$ref": "#/components/schemas/Error" }), openrpc);
        Contract {
            results,
            pushes,
            error,
            methods_seen: BTreeSet::new(),
            pushes_seen: BTreeSet::new(),
            reasons_seen: BTreeSet::new(),
        }
    }

    /// Checks a whole reply frame of `method`: its result, or its error.
    fn reply(&mut self, method: &str, reply: &Value) {
        if let Some(e) = reply.get("error") {
            check(&self.error, &format!("the error of {method}"), e);
            let reason = e["data"]["reason"].as_str().unwrap_or_default();
            self.reasons_seen.insert(reason.to_owned());
            return;
        }
        let v = self
            .results
            .get(method)
            .unwrap_or_else(|| panic!("{method} is not in /openrpc.json"));
        check(v, &format!("the result of {method}"), &reply["result"]);
        self.methods_seen.insert(method.to_owned());
    }

    /// Checks every push queued on the client, and forgets them.
    fn pushes(&mut self, c: &mut Client) {
        for p in c.pushes.drain(..) {
            let name = p["method"].as_str().unwrap_or_default().to_owned();
            let v = self
                .pushes
                .get(&name)
                .unwrap_or_else(|| panic!("push {name} is not in /asyncapi.json"));
            check(v, &format!("push {name}"), &p);
            self.pushes_seen.insert(name);
        }
    }

    async fn call(&mut self, c: &mut Client, method: &str, params: Value) -> Value {
        let reply = c.call(method, params).await;
        self.reply(method, &reply);
        self.pushes(c);
        reply
    }

    async fn ok(&mut self, c: &mut Client, method: &str, params: Value) -> Value {
        let reply = self.call(c, method, params).await;
        reply
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} failed: {reply}"))
    }

    async fn reason(&mut self, c: &mut Client, method: &str, params: Value) -> String {
        let reply = self.call(c, method, params).await;
        reply["error"]["data"]["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} should fail: {reply}"))
            .to_owned()
    }

    /// Waits for the next push of `name` on the client and checks it.
    async fn push(&mut self, c: &mut Client, name: &str) -> Value {
        let params = c.push(name).await;
        let frame = json!({"jsonrpc": "2.0", "method": name, "params": params});
        c.pushes.push_back(frame);
        self.pushes(c);
        params
    }
}

async fn json_doc(s: &Server, path: &str) -> Value {
    let (status, body) = http_get(s.addr, path).await.expect("http answer");
    assert_eq!(status, 200, "{path}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// A flight ten days out, through `admin.flights.create`.
fn new_flight(number: &str) -> Value {
    let at = |h: u8| {
        (time::OffsetDateTime::now_utc() + time::Duration::days(10))
            .replace_time(time::Time::from_hms(h, 0, 0).expect("time"))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let eur = |cents: u64| json!({"amount": cents, "currency": "EUR"});
    json!({
        "number": number, "from": "LHR", "to": "VIE",
        "departs_at": at(9), "arrives_at": at(11), "aircraft": "A320",
        "fares": {"economy": eur(15_400), "business": eur(53_900)},
    })
}

fn seat_names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("seats")
        .iter()
        .map(|s| s["seat"].as_str().expect("seat").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_reply_and_push_matches_the_published_schemas() {
    let s = Server::start_with(|c| c.admin_password = Some(ADMIN_PASSWORD.into())).await;
    let openrpc = json_doc(&s, "/openrpc.json").await;
    let asyncapi = json_doc(&s, "/asyncapi.json").await;
    assert_eq!(openrpc["openrpc"], "1.3.2");
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    let mut k = Contract::new(&openrpc, &asyncapi);

    let mut anon = s.client().await;
    let discovered = k.ok(&mut anon, "rpc.discover", json!({})).await;
    assert_eq!(
        discovered, openrpc,
        "rpc.discover answers the served document"
    );

    // accounts
    let mut owner = s.client().await;
    let name = unique_name("k");
    let creds = json!({"username": name, "password": PASSWORD});
    let reg = k.ok(&mut owner, "auth.register", creds.clone()).await;
    let mut second = s.client().await;
    k.ok(&mut second, "auth.login", creds.clone()).await;
    let mut third = s.client().await;
    k.ok(&mut third, "auth.resume", json!({"token": reg["token"]}))
        .await;

    // flights and a live map
    k.ok(&mut anon, "flights.airports", json!({})).await;
    let flight = later_flight(&mut owner).await;
    let fid = flight["flight_id"].as_str().expect("flight_id").to_owned();
    k.ok(
        &mut anon,
        "flights.search",
        json!({"from": flight["from"], "limit": 5}),
    )
    .await;
    let map = k
        .ok(&mut anon, "flights.get", json!({"flight_id": fid}))
        .await;
    let free: Vec<String> = map["seats"]
        .as_array()
        .expect("seats")
        .iter()
        .filter(|s| s["status"] == "available" && s["cabin"] == "economy")
        .take(3)
        .map(|s| s["seat"].as_str().expect("seat").to_owned())
        .collect();
    let mut watcher = s.client().await;
    let snap = k
        .ok(&mut watcher, "seats.subscribe", json!({"flight_id": fid}))
        .await;
    assert!(snap["seats"].is_array(), "a first subscribe is a snapshot");
    let since = snap["version"].clone();

    // hold, pay, change a seat, cancel one passenger
    let held = k
        .ok(
            &mut owner,
            "booking.hold",
            json!({"flight_id": fid, "seats": &free[..2], "passengers": passengers(2), "request_id": "h1"}),
        )
        .await;
    let loc = held["booking"]["locator"]
        .as_str()
        .expect("locator")
        .to_owned();
    k.push(&mut watcher, "seats.changed").await;
    k.push(&mut second, "booking.updated").await;
    let mut resumed = s.client().await;
    let delta = k
        .ok(
            &mut resumed,
            "seats.subscribe",
            json!({"flight_id": fid, "since": since}),
        )
        .await;
    assert!(
        delta["changes"].is_array(),
        "a resume with since gets changes: {delta}"
    );
    k.ok(
        &mut owner,
        "booking.pay",
        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"}),
    )
    .await;
    let moved = k
        .ok(
            &mut owner,
            "booking.change_seat",
            json!({"locator": loc, "from": free[0], "to": free[2], "request_id": "c1"}),
        )
        .await;
    assert!(seat_names(&moved["booking"]["seats"]).contains(&free[2]));
    let cancelled = k
        .ok(
            &mut owner,
            "booking.cancel",
            json!({"locator": loc, "seats": [free[1]], "request_id": "x1"}),
        )
        .await;
    assert!(cancelled["booking"]["cancelled_seats"].is_array());
    k.push(&mut watcher, "seats.changed").await;
    k.ok(&mut owner, "booking.get", json!({"locator": loc}))
        .await;
    k.ok(&mut owner, "bookings.list", json!({})).await;
    k.ok(&mut owner, "orders.list", json!({})).await;
    k.ok(&mut owner, "history.list", json!({"limit": 50})).await;
    k.ok(&mut watcher, "seats.unsubscribe", json!({"flight_id": fid}))
        .await;

    // check in on a flight inside the check-in window, and a seat change it forbids
    let hours = time::Duration::hours;
    let soon = departing_within(&mut owner, hours(2), hours(28))
        .await
        .expect("the demo schedule has a flight in the check-in window");
    let soon = soon["flight_id"].as_str().expect("flight_id").to_owned();
    let seats = free_seats(&mut owner, &soon, "economy", 3).await;
    let booked = k
        .ok(
            &mut owner,
            "booking.hold",
            json!({"flight_id": soon, "seats": &seats[..2], "passengers": passengers(2), "request_id": "h4"}),
        )
        .await;
    let boarding = booked["booking"]["locator"].clone();
    k.ok(
        &mut owner,
        "booking.pay",
        json!({"locator": boarding, "payment_method": "pm_card_visa", "request_id": "p4"}),
    )
    .await;
    let checked = k
        .ok(
            &mut owner,
            "booking.check_in",
            json!({"locator": boarding, "seats": [seats[0]], "request_id": "ci1"}),
        )
        .await;
    assert_eq!(checked["boarding_passes"].as_array().map(Vec::len), Some(1));
    let passes = k
        .ok(
            &mut owner,
            "booking.boarding_passes",
            json!({"locator": boarding}),
        )
        .await;
    assert_eq!(passes["boarding_passes"], checked["boarding_passes"]);
    let moved = json!({"locator": boarding, "from": seats[0], "to": seats[2], "request_id": "c2"});
    assert_eq!(
        k.reason(&mut owner, "booking.change_seat", moved).await,
        "checked_in"
    );

    // the airline
    let mut admin = s.client().await;
    k.ok(
        &mut admin,
        "auth.login",
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    let created = k
        .ok(&mut admin, "admin.flights.create", new_flight("JW977"))
        .await;
    let doomed = created["flight"]["flight_id"].clone();
    let on_doomed = k
        .ok(
            &mut owner,
            "booking.hold",
            json!({"flight_id": doomed, "count": 1, "cabin": "business", "passengers": passengers(1), "request_id": "h2"}),
        )
        .await;
    assert_eq!(on_doomed["booking"]["status"], "held");
    // live operations: a board, a delay, the viewer count
    let mut board = s.client().await;
    k.ok(
        &mut board,
        "flights.watch",
        json!({"airport": "LHR", "hours": 48}),
    )
    .await;
    k.ok(&mut board, "seats.subscribe", json!({"flight_id": doomed}))
        .await;
    let later = time::OffsetDateTime::parse(
        created["flight"]["departs_at"]
            .as_str()
            .expect("departs_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
        + time::Duration::minutes(30);
    let est = later
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let delayed = k
        .ok(
            &mut admin,
            "admin.flights.update",
            json!({"flight_id": doomed, "estimated_departs_at": est, "reason": "late crew"}),
        )
        .await;
    assert_eq!(delayed["flight"]["status"], "delayed");
    k.push(&mut board, "flight.changed").await;
    let mut viewer = s.client().await;
    k.ok(&mut viewer, "seats.subscribe", json!({"flight_id": doomed}))
        .await;
    while k.push(&mut board, "flight.presence").await["viewers"] != 2 {}
    k.ok(&mut board, "flights.unwatch", json!({"airport": "LHR"}))
        .await;
    let c = k
        .ok(
            &mut admin,
            "admin.flights.cancel",
            json!({"flight_id": doomed, "reason": "weather"}),
        )
        .await;
    assert_eq!(c["flight"]["status"], "cancelled");
    // every push to the resumed connection so far, up to the airline's cancellation
    while k.push(&mut third, "booking.updated").await["booking"]["flight_id"] != doomed {}
    k.ok(&mut admin, "admin.flights.stats", json!({})).await;

    // the waitlist of a sold-out cabin
    let full = k
        .ok(&mut admin, "admin.flights.create", new_flight("JW978"))
        .await;
    let wid = full["flight"]["flight_id"].clone();
    let business = full["flight"]["cabins"]
        .as_array()
        .expect("cabins")
        .iter()
        .find(|c| c["cabin"] == "business")
        .and_then(|c| c["seats_total"].as_u64())
        .expect("a business cabin") as usize;
    let hold_business = |n: usize, rid: String| json!({"flight_id": wid, "count": n, "cabin": "business", "passengers": passengers(n), "request_id": rid});
    let mut rest = business - 1;
    while rest > 0 {
        let n = rest.min(9);
        k.ok(
            &mut owner,
            "booking.hold",
            hold_business(n, format!("wf{rest}")),
        )
        .await;
        rest -= n;
    }
    let last = k
        .ok(&mut owner, "booking.hold", hold_business(1, "wl".into()))
        .await;
    let join = |cabin: &str, rid: &str| json!({"flight_id": wid, "cabin": cabin, "count": 1, "passengers": passengers(1), "request_id": rid});
    assert_eq!(
        k.reason(&mut owner, "waitlist.join", join("economy", "w0"))
            .await,
        "seats_available"
    );
    let first = k
        .ok(&mut owner, "waitlist.join", join("business", "w1"))
        .await;
    let other = k
        .ok(&mut owner, "waitlist.join", join("business", "w2"))
        .await;
    k.ok(&mut owner, "waitlist.list", json!({})).await;
    k.ok(
        &mut owner,
        "booking.cancel",
        json!({"locator": last["booking"]["locator"], "request_id": "wx"}),
    )
    .await;
    // the pushes may come before the reply (and be checked with it) or after it
    while ["waitlist.offered", "waitlist.updated"]
        .iter()
        .any(|p| !k.pushes_seen.contains(*p))
    {
        let p = owner.recv().await.expect("a push");
        owner.pushes.push_back(p);
        k.pushes(&mut owner);
    }
    let entries = k.ok(&mut owner, "waitlist.list", json!({})).await;
    let offered = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["id"] == first["entry"]["id"])
        .expect("the first entry");
    assert_eq!(offered["status"], "offered");
    k.ok(
        &mut owner,
        "waitlist.leave",
        json!({"id": other["entry"]["id"]}),
    )
    .await;

    // errors
    let cases = [
        (false, "no.such.method", json!({}), "method_not_found"),
        (
            false,
            "flights.get",
            json!({"flight_id": 7}),
            "invalid_params",
        ),
        (
            false,
            "flights.get",
            json!({"flight_id": "JW1-20000101"}),
            "not_found",
        ),
        (
            false,
            "booking.get",
            json!({"locator": loc}),
            "unauthenticated",
        ),
        (
            false,
            "auth.resume",
            json!({"token": "0".repeat(64)}),
            "invalid_token",
        ),
        (false, "auth.register", creds.clone(), "username_taken"),
        (
            false,
            "auth.register",
            json!({"username": unique_name("w"), "password": "short"}),
            "weak_password",
        ),
        (
            false,
            "auth.login",
            json!({"username": name, "password": "wrong password"}),
            "bad_credentials",
        ),
        (true, "admin.flights.stats", json!({}), "forbidden"),
        (
            true,
            "booking.hold",
            json!({"flight_id": fid, "seats": ["99K"], "passengers": passengers(1), "request_id": "e1"}),
            "invalid_seat",
        ),
        (
            true,
            "booking.hold",
            json!({"flight_id": fid, "seats": [free[2]], "passengers": passengers(1), "request_id": "e2"}),
            "seat_unavailable",
        ),
        (
            true,
            "booking.pay",
            // paid with another method (with the same one it answers the booking as paid)
            json!({"locator": loc, "payment_method": "pm_card_mastercard", "request_id": "e3"}),
            "invalid_state",
        ),
        (
            true,
            "booking.check_in",
            json!({"locator": loc, "request_id": "e4"}),
            "checkin_closed",
        ),
    ];
    for (logged_in, method, params, reason) in cases {
        let c = if logged_in { &mut owner } else { &mut anon };
        assert_eq!(k.reason(c, method, params).await, reason, "{method}");
    }
    let declined = k
        .ok(
            &mut owner,
            "booking.hold",
            json!({"flight_id": fid, "count": 1, "cabin": "economy", "passengers": passengers(1), "request_id": "h3"}),
        )
        .await;
    let declined = declined["booking"]["locator"].clone();
    let pay = json!({"locator": declined, "payment_method": "pm_card_visa_chargeDeclined", "request_id": "p3"});
    assert_eq!(
        k.reason(&mut owner, "booking.pay", pay).await,
        "payment_declined"
    );
    for (frame, reason) in [
        ("{oops".to_owned(), "parse_error"),
        ("[]".to_owned(), "invalid_request"),
        (
            format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)),
            "too_large",
        ),
    ] {
        anon.send_text(&frame).await;
        let reply = anon.recv().await.expect("an error reply");
        k.reply("(a bad frame)", &reply);
        assert_eq!(reply["error"]["data"]["reason"], reason);
    }

    // an open refund (of nothing: the sandbox makes it at once otherwise), and an
    // admin's way out
    let stuck = store_booking(&s, &declined);
    s.store_refund("rf-stuck", &stuck, "pi_sandbox_stuck", (0, "c-old"), |_| {});
    let open = k.ok(&mut admin, "admin.refunds.list", json!({})).await;
    assert_eq!(open["refunds"][0]["refund_id"], "rf-stuck", "{open}");
    let resolved = k
        .ok(
            &mut admin,
            "admin.refunds.resolve",
            json!({"refund_id": "rf-stuck", "outcome": "retry"}),
        )
        .await;
    assert_eq!(resolved["refund"]["resolutions"][0]["by"], "admin");

    k.ok(&mut owner, "auth.logout", json!({})).await;
    k.pushes(&mut owner);

    let every_method: BTreeSet<String> = k.results.keys().cloned().collect();
    assert_eq!(k.methods_seen, every_method, "a method was not driven");
    let every_push: BTreeSet<String> = k.pushes.keys().cloned().collect();
    assert_eq!(k.pushes_seen, every_push, "a push was not driven");
    assert!(k.reasons_seen.len() >= 17, "{:?}", k.reasons_seen);
}

/// A schema change that a real reply does not satisfy is caught: the validators are
/// not vacuous.
#[tokio::test]
async fn a_reply_off_the_schema_is_caught() {
    let s = Server::start().await;
    let openrpc = json_doc(&s, "/openrpc.json").await;
    let asyncapi = json_doc(&s, "/asyncapi.json").await;
    let k = Contract::new(&openrpc, &asyncapi);
    let mut c = s.client().await;
    let mut r = c.ok("flights.airports", json!({})).await;
    assert!(k.results["flights.airports"].is_valid(&r));
    r["airports"][0]["extra"] = json!(1);
    assert!(!k.results["flights.airports"].is_valid(&r));
    let mut f = c.ok("flights.search", json!({"limit": 1})).await;
    f["flights"][0]["departs_at"] = json!("tomorrow");
    assert!(!k.results["flights.search"].is_valid(&f));
    let e = json!({"code": -32000, "message": "x", "data": {"reason": "not_a_reason"}});
    assert!(!k.error.is_valid(&e));
}

fn store_booking(s: &Server, loc: &Value) -> jetway::domain::Booking {
    let loc = jetway::domain::Locator::parse(loc.as_str().unwrap()).unwrap();
    s.app().store.booking(&loc).unwrap().expect("booking")
}

// ----- docs/protocol.md against the code -------------------------------------------

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md")
}

/// The text of the `## N.` section of the document.
fn section(doc: &str, n: u32) -> String {
    let start = doc
        .find(&format!("\n## {n}. "))
        .unwrap_or_else(|| panic!("section {n}"));
    let rest = &doc[start + 1..];
    let end = rest[1..].find("\n## ").map_or(rest.len(), |e| e + 1);
    rest[..end].to_owned()
}

/// The methods (`#### name`, `### 4.N name`) and pushes (`#### Push: name`) that §4
/// documents with a heading of their own.
fn documented_calls(doc: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let is_name = |w: &str| {
        w.contains('.')
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    };
    let (mut methods, mut pushes) = (BTreeSet::new(), BTreeSet::new());
    for line in section(doc, 4).lines().filter(|l| l.starts_with("###")) {
        let title = line.trim_start_matches('#').trim();
        if let Some(push) = title.strip_prefix("Push: ") {
            pushes.insert(push.to_owned());
            continue;
        }
        let last = title.rsplit(' ').next().unwrap_or_default();
        if is_name(last) {
            methods.insert(last.to_owned());
        }
    }
    (methods, pushes)
}

#[test]
fn the_protocol_doc_lists_exactly_the_dispatched_methods_and_pushes() {
    let (methods, pushes) = documented_calls(&protocol_md());
    let dispatched: BTreeSet<String> = jetway::protocol::params::Method::NAMES
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(
        methods, dispatched,
        "docs/protocol.md §4 headings vs the dispatcher"
    );
    let contract: BTreeSet<String> = jetway::protocol::contract::METHOD_CONTRACT
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    assert_eq!(contract, dispatched, "protocol::contract vs the dispatcher");
    let pushed: BTreeSet<String> = jetway::protocol::contract::PUSH_CONTRACT
        .iter()
        .map(|p| p.name.to_owned())
        .collect();
    assert_eq!(
        pushes, pushed,
        "docs/protocol.md `Push:` headings vs the contract"
    );
}

#[test]
fn the_protocol_doc_lists_exactly_the_error_reasons_with_their_codes() {
    let doc = section(&protocol_md(), 2);
    let documented: BTreeMap<String, i64> = doc
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let reason = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let code = cells.next()?.parse().ok()?;
            Some((reason.to_owned(), code))
        })
        .collect();
    let code: BTreeMap<String, i64> = jetway::protocol::ApiError::examples()
        .iter()
        .map(|e| (e.reason().to_owned(), e.code()))
        .collect();
    assert_eq!(documented, code);
}

/// Every flag's documented env variable and default (§10) is the real one, every flag
/// is documented, and the limits table (§7) gives each flag's default value.
#[test]
fn the_protocol_doc_gives_the_real_flag_defaults_and_limits() {
    let doc = protocol_md();
    let cmd = jetway::Config::command();
    let args: BTreeMap<String, &clap::Arg> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_owned(), a)))
        .collect();
    let default = |flag: &str| -> String {
        let arg = args
            .get(flag)
            .unwrap_or_else(|| panic!("--{flag} is documented but is no flag"));
        arg.get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    let tick = |cell: &str| -> Option<String> {
        let rest = cell.split_once('`')?.1;
        Some(rest.split_once('`')?.0.to_owned())
    };
    let mut rows = 0;
    for line in section(&doc, 10).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(flag) = cells.get(1).and_then(|c| tick(c)) else {
            continue;
        };
        let Some(flag) = flag.strip_prefix("--") else {
            continue;
        };
        let flag = flag.split(' ').next().unwrap_or_default();
        let env = cells.get(2).and_then(|c| tick(c)).unwrap_or_default();
        let arg = args[flag];
        assert_eq!(
            arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            Some(env),
            "--{flag}"
        );
        let documented = cells.get(3).and_then(|c| tick(c));
        let real = default(flag);
        if real.is_empty() || real == "false" {
            assert!(documented.is_none(), "--{flag} has no default");
        } else {
            assert_eq!(documented, Some(real), "--{flag}");
        }
        rows += 1;
    }
    assert!(rows >= 20, "the §10 table was not found");
    for (flag, arg) in &args {
        if arg.is_hide_set() || flag == "help" || flag == "version" {
            continue;
        }
        assert!(
            doc.contains(&format!("`--{flag}")),
            "--{flag} is not documented in docs/protocol.md"
        );
    }

    // §7: the first number of a limit is the default of the first flag it names
    let limits = section(&doc, 7);
    let mut checked = 0;
    for line in limits.lines().filter(|l| l.starts_with("| ")) {
        let value = line.split('|').nth(2).unwrap_or_default();
        let Some((_, flag)) = value.split_once("(`--") else {
            continue;
        };
        let flag = &flag[..flag.find('`').unwrap_or(flag.len())];
        let number: String = value
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        assert_eq!(number, default(flag), "§7 row `{line}`");
        checked += 1;
    }
    assert!(checked >= 8, "the §7 table was not found");
    for (text, what) in [
        (
            format!("{} bytes", jetway::server::MAX_REQUEST_BYTES),
            "request frame limit",
        ),
        (
            format!("{}-byte read buffer", jetway::server::READ_BUFFER),
            "read buffer",
        ),
        (
            format!("({} bytes)", jetway::server::MAX_MESSAGE),
            "hard message size",
        ),
    ] {
        assert!(limits.contains(&text), "§7 should say `{text}` ({what})");
    }
}

/// The reference is self-contained: it links no file outside the repository.
#[test]
fn the_protocol_doc_cites_no_path_outside_the_repository() {
    let doc = protocol_md();
    for bad in ["/work/", "../", "/home/", "/tmp/"] {
        assert!(!doc.contains(bad), "docs/protocol.md cites `{bad}`");
    }
}

/// The client SDK (jetway.js and its internal live.js, which owns `seats.*`) has a
/// wrapper for every method the server dispatches.
#[test]
fn the_js_sdk_wraps_every_method() {
    let read = |f: &str| {
        std::fs::read_to_string(format!("{}/static/js/{f}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("static/js/{f}: {e}"))
    };
    let sdk = read("jetway.js") + &read("live.js");
    for m in jetway::protocol::params::Method::NAMES {
        assert!(
            sdk.contains(&format!("'{m}'")),
            "static/js/jetway.js has no wrapper for {m}"
        );
    }
}
