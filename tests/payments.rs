//! Payments through Stripe's API, against localstripe (a stateful Stripe-compatible
//! server started by each test) with a fault-injecting proxy in between: declines,
//! refunds, partial cancellation, gateway faults, a crash between charge and booking,
//! the expiry race, and signed webhooks.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const KEY: &str = "sk_test_jetway";
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
const WEBHOOK_SECRET: &str = "whsec_jetway_test";

/// localstripe on a free port, killed on drop.
struct LocalStripe {
    child: Child,
    addr: SocketAddr,
}

fn localstripe_bin() -> String {
    if let Ok(p) = std::env::var("JETWAY_LOCALSTRIPE") {
        return p;
    }
    let cached = format!(
        "{}/.cache/jetway-localstripe/bin/localstripe",
        std::env::var("HOME").unwrap_or_default()
    );
    if std::path::Path::new(&cached).exists() {
        return cached;
    }
    panic!("localstripe not found: run scripts/test.sh (it installs it) or set JETWAY_LOCALSTRIPE");
}

impl LocalStripe {
    /// Starts localstripe on a free port below the ephemeral range (it binds `[::]`,
    /// which a busy machine's outgoing connections can block); retries on another
    /// port if it exits.
    async fn start() -> LocalStripe {
        for attempt in 0..10u16 {
            let seed = (std::process::id() as u16)
                .wrapping_mul(31)
                .wrapping_add(attempt.wrapping_mul(977))
                .wrapping_add(NEXT_PORT.fetch_add(1, Ordering::Relaxed));
            let port = 20_000 + seed % 12_000;
            if std::net::TcpListener::bind(("::", port)).is_err() {
                continue;
            }
            let mut child = Command::new(localstripe_bin())
                .args(["--port", &port.to_string(), "--from-scratch"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start localstripe");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if TcpStream::connect(addr).await.is_ok() {
                    return LocalStripe { child, addr };
                }
                if child.try_wait().ok().flatten().is_some()
                    || tokio::time::Instant::now() > deadline
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("localstripe did not start");
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Succeeded charges and their refunded amounts.
    async fn charges(&self) -> Vec<(i64, i64)> {
        let list = self.get("/v1/charges?limit=100").await;
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "succeeded")
            .map(|c| {
                (
                    c["amount"].as_i64().unwrap(),
                    c["amount_refunded"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASS: u8 = 0;
const FAIL: u8 = 1;
const HOLD_CONFIRM: u8 = 2;
const HOLD_THEN_FAIL: u8 = 3;

/// A TCP proxy in front of localstripe that can fail requests with 503 or hold the
/// response to a PaymentIntent confirm (after localstripe has charged).
#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    charged: Arc<Notify>,
    release: Arc<Notify>,
    saw_charge: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(PASS)),
            charged: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
            saw_charge: Arc::new(AtomicBool::new(false)),
        };
        let me = p.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(client, upstream));
            }
        });
        p
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn serve(self, client: TcpStream, upstream: SocketAddr) {
        let Ok(server) = TcpStream::connect(upstream).await else {
            return;
        };
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let confirm_sent = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Notify::new());
        let (me, sent, fail_now) = (self.clone(), confirm_sent.clone(), failed.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16384];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mode = me.mode.load(Ordering::SeqCst);
                if mode == FAIL || (mode == HOLD_THEN_FAIL && me.saw_charge.load(Ordering::SeqCst))
                {
                    fail_now.notify_one();
                    return;
                }
                if String::from_utf8_lossy(&buf[..n]).contains("/confirm") {
                    sent.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; 16384];
        loop {
            let n = tokio::select! {
                r = sr.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = failed.notified() => {
                    let body = r#"{"error":{"type":"api_error","message":"injected failure"}}"#;
                    let resp = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = cw.write_all(resp.as_bytes()).await;
                    return;
                }
            };
            let mode = self.mode.load(Ordering::SeqCst);
            if confirm_sent.load(Ordering::SeqCst)
                && (mode == HOLD_CONFIRM || mode == HOLD_THEN_FAIL)
            {
                self.saw_charge.store(true, Ordering::SeqCst);
                self.charged.notify_one();
                if mode == HOLD_THEN_FAIL {
                    return; // the response is lost: the client times out
                }
                self.release.notified().await;
            }
            confirm_sent.store(false, Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

fn stripe_config(c: &mut jetway::Config, base: &str) {
    c.payments = jetway::config::PaymentsKind::Stripe;
    c.stripe_api_base = base.into();
    c.stripe_secret_key = Some(KEY.into());
    c.stripe_webhook_secret = Some(WEBHOOK_SECRET.into());
    c.gateway_timeout = 2;
}

async fn booked_user(c: &mut Client, seats_n: usize, cabin: &str) -> (String, Vec<String>, Value) {
    let token = c.new_user().await;
    c.pushes.clear();
    let _ = token;
    let f = later_flight(c).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(c, &fid, cabin, seats_n).await;
    let b = hold(c, &fid, &seats, "h").await;
    (fid, seats, b)
}

fn pay(loc: &Value, pm: &str, rid: &str) -> Value {
    json!({"locator": loc, "payment_method": pm, "request_id": rid})
}

#[tokio::test]
async fn pay_decline_refund_and_partial_cancel_through_stripe() {
    let ls = LocalStripe::start().await;
    let s = Server::start_with(|c| {
        stripe_config(c, &format!("http://{}", ls.addr));
        // every refund first looks for an earlier one, through Stripe's list API
        c.refund_lookup_after = 0;
    })
    .await;
    let mut c = s.client().await;
    let (fid, seats, b) = booked_user(&mut c, 3, "economy").await;
    let loc = &b["locator"];
    assert_eq!(
        c.reason("booking.pay", pay(loc, "pm_card_chargeCustomerFail", "d"))
            .await,
        "payment_declined"
    );
    assert!(ls.charges().await.is_empty(), "a decline charges nothing");
    assert_eq!(
        c.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "held"
    );

    let paid = c.ok("booking.pay", pay(loc, "pm_card_visa", "p")).await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!(ls.charges().await, vec![(total, 0)]);

    // cancel one passenger: a third of the money back, the rest stays confirmed
    let part = c
        .ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c1", "seats": [seats[0]]}),
        )
        .await;
    assert_eq!(part["booking"]["status"], "confirmed");
    assert_eq!(part["booking"]["seats"].as_array().unwrap().len(), 2);
    assert_eq!(part["order"]["status"], "partially_refunded");
    let third = total / 3;
    assert_eq!(part["order"]["refunded"]["amount"], third);
    assert_eq!(ls.charges().await, vec![(total, third)]);
    let m = c.ok("flights.get", json!({"flight_id": fid})).await;
    let st = |seat: &str| {
        m["seats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["seat"] == seat)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(st(&seats[0]), "available");
    assert_eq!(st(&seats[1]), "booked");
    assert_eq!(
        c.reason(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c2", "seats": [seats[0]]})
        )
        .await,
        "invalid_params"
    );

    let rest = c
        .ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c3"}),
        )
        .await;
    assert_eq!(rest["booking"]["status"], "refunded");
    assert_eq!(rest["order"]["status"], "refunded");
    assert_eq!(rest["booking"]["refund"]["amount"], total);
    assert_eq!(ls.charges().await, vec![(total, total)]);
    let orders = c.ok("orders.list", json!({})).await;
    assert_eq!(orders["orders"][0]["refunded"]["amount"], total);
    s.stop().await;
}

#[tokio::test]
async fn gateway_down_gives_payment_failed_and_a_retry_works() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let s = Server::start_with(|c| stripe_config(c, &proxy.base())).await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    proxy.set(FAIL);
    let e = c.err("booking.pay", pay(loc, "pm_card_visa", "p1")).await;
    assert_eq!(e["data"]["reason"], "payment_failed");
    assert!(e["message"].as_str().unwrap().contains("gateway"), "{e}");
    assert_eq!(
        c.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "held"
    );
    // the same request id keeps its answer; a new one works once the gateway is back
    proxy.set(PASS);
    assert_eq!(
        c.reason("booking.pay", pay(loc, "pm_card_visa", "p1"))
            .await,
        "payment_failed"
    );
    let ok = c.ok("booking.pay", pay(loc, "pm_card_visa", "p2")).await;
    assert_eq!(ok["booking"]["status"], "confirmed");
    assert_eq!(ls.charges().await.len(), 1, "charged once");
    s.stop().await;
}

async fn wait_until_past(rfc3339: &str) {
    let due = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    while time::OffsetDateTime::now_utc() <= due {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_does_not_expire_under_an_inflight_payment() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let s = Server::start_with(|c| {
        stripe_config(c, &proxy.base());
        c.hold_ttl = 1;
        c.gateway_timeout = 30;
    })
    .await;
    let mut a = s.client().await;
    let (fid, seats, b) = booked_user(&mut a, 1, "economy").await;
    proxy.set(HOLD_CONFIRM);
    let charged = proxy.charged.notified();
    let loc = b["locator"].clone();
    let payment =
        tokio::spawn(async move { a.call("booking.pay", pay(&loc, "pm_card_visa", "p")).await });
    charged.await;
    wait_until_past(b["hold_expires_at"].as_str().unwrap()).await;
    let mut other = s.client().await;
    other.new_user().await;
    let grab = json!({"flight_id": fid, "seats": seats, "passengers": passengers(1), "request_id": "grab"});
    assert_eq!(
        other.reason("booking.hold", grab.clone()).await,
        "seat_unavailable",
        "the hold outlived its TTL while paying"
    );
    proxy.release.notify_one();
    let r = payment.await.unwrap();
    assert_eq!(r["result"]["booking"]["status"], "confirmed", "{r}");
    assert_eq!(other.reason("booking.hold", grab).await, "seat_unavailable");
    assert_eq!(ls.charges().await.len(), 1);
    s.stop().await;
}

/// A charge whose answer was lost keeps its hold past its time until the gateway
/// tells whether it landed: then it confirms the booking rather than being refunded
/// after the seats went to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_charge_keeps_its_hold_until_settled() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let s = Server::start_with(|c| {
        stripe_config(c, &proxy.base());
        c.hold_ttl = 2;
        c.gateway_timeout = 1;
        c.reconcile_interval = 3600;
    })
    .await;
    let mut a = s.client().await;
    let (fid, seats, b) = booked_user(&mut a, 1, "business").await;
    let loc = b["locator"].clone();
    proxy.set(HOLD_THEN_FAIL);
    // charged at the gateway, but the answer is lost and the status check fails
    assert_eq!(
        a.reason("booking.pay", pay(&loc, "pm_card_visa", "p"))
            .await,
        "payment_failed"
    );
    assert_eq!(ls.charges().await.len(), 1);
    wait_until_past(b["hold_expires_at"].as_str().unwrap()).await;
    let mut other = s.client().await;
    other.new_user().await;
    let grab = json!({"flight_id": fid, "seats": seats, "passengers": passengers(1), "request_id": "grab"});
    assert_eq!(
        other.reason("booking.hold", grab.clone()).await,
        "seat_unavailable",
        "the hold was released under an unsettled charge"
    );
    proxy.set(PASS);
    eventually("the expiry settles the charge", || {
        let status = store_booking(&s, &loc).status;
        async move { status != jetway::domain::BookingStatus::Held }
    })
    .await;
    assert_eq!(
        a.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "confirmed"
    );
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!(ls.charges().await, vec![(total, 0)], "one charge, kept");
    assert_eq!(other.reason("booking.hold", grab).await, "seat_unavailable");
    s.stop().await;
}

/// Starts Jetway on `dir`, holds `n` seats for a new user and kills the server with
/// SIGKILL once the gateway has charged their payment (the proxy holds the answer).
/// Returns the username and the held booking.
async fn crash_after_charge(
    proxy: &Proxy,
    dir: &std::path::Path,
    args: &[&str],
    n: usize,
) -> (String, Value) {
    let p = Proc::spawn_with_env(dir, args, &[("STRIPE_SECRET_KEY", KEY)]);
    let mut c = Client::connect(&p.url()).await;
    let name = unique_name("crash");
    c.register(&name).await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut c, &fid, "economy", n).await;
    let b = hold(&mut c, &fid, &seats, "h").await;
    proxy.set(HOLD_CONFIRM);
    let charged = proxy.charged.notified();
    let loc = b["locator"].clone();
    let inflight =
        tokio::spawn(async move { c.call("booking.pay", pay(&loc, "pm_card_visa", "p")).await });
    charged.await;
    p.kill9();
    let _ = inflight.await;
    (name, b)
}

/// Starts Jetway again on `dir` and logs `name` in.
async fn restart_as(dir: &std::path::Path, args: &[&str], name: &str) -> (Proc, Client) {
    let p = Proc::spawn_with_env(dir, args, &[("STRIPE_SECRET_KEY", KEY)]);
    let mut c = Client::connect(&p.url()).await;
    c.ok(
        "auth.login",
        json!({"username": name, "password": PASSWORD}),
    )
    .await;
    (p, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_charge_and_booking_confirms_after_restart() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--payments", "stripe", "--stripe-api-base", &proxy.base()];
    let (name, b) = crash_after_charge(&proxy, dir.path(), &args, 2).await;
    proxy.set(PASS);
    proxy.release.notify_waiters();

    let (_p, mut c) = restart_as(dir.path(), &args, &name).await;
    let got = c.ok("booking.get", json!({"locator": b["locator"]})).await;
    assert_eq!(got["booking"]["status"], "confirmed", "{got}");
    assert!(got["booking"]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["ticket_number"].as_str().is_some_and(|t| t.len() == 13)));
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!(
        ls.charges().await,
        vec![(total, 0)],
        "exactly one charge, kept"
    );
    assert_eq!(
        c.ok("orders.list", json!({})).await["orders"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // the interrupted request's retry gets the settled result
    let again = c
        .ok("booking.pay", pay(&b["locator"], "pm_card_visa", "p"))
        .await;
    assert_eq!(again["booking"]["status"], "confirmed");
    assert_eq!(ls.charges().await.len(), 1);
}

/// The restarted server cannot reach the gateway at first, so its start-up reconcile
/// leaves the charged attempt open while the hold is already past due: the expiry
/// must settle the charge before it releases the seats, not leave it to be refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_due_after_a_crash_mid_payment_keeps_its_charge() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--payments",
        "stripe",
        "--stripe-api-base",
        &proxy.base(),
        "--hold-ttl",
        "2",
        "--reconcile-interval",
        "3600",
    ];
    let (name, b) = crash_after_charge(&proxy, dir.path(), &args, 1).await;
    proxy.set(FAIL);
    proxy.release.notify_waiters();
    wait_until_past(b["hold_expires_at"].as_str().unwrap()).await;

    let (_p, mut c) = restart_as(dir.path(), &args, &name).await;
    proxy.set(PASS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let got = c.ok("booking.get", json!({"locator": b["locator"]})).await;
        let status = got["booking"]["status"].as_str().unwrap().to_owned();
        if status != "held" || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "confirmed", "the paid hold was released");
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!(ls.charges().await, vec![(total, 0)], "one charge, kept");
    assert_eq!(
        c.ok("orders.list", json!({})).await["orders"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn post_webhook(s: &Server, body: &str, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/webhooks/stripe", s.addr))
        .header("Stripe-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_settle_an_open_payment_once() {
    let ls = LocalStripe::start().await;
    let proxy = Proxy::start(ls.addr).await;
    let s = Server::start_with(|c| {
        stripe_config(c, &proxy.base());
        c.gateway_timeout = 1;
        c.reconcile_interval = 3600;
    })
    .await;
    let mut a = s.client().await;
    let (fid, _seats, b) = booked_user(&mut a, 1, "economy").await;
    let loc = b["locator"].clone();
    proxy.set(HOLD_THEN_FAIL);
    assert_eq!(
        a.reason("booking.pay", pay(&loc, "pm_card_visa", "p"))
            .await,
        "payment_failed"
    );
    proxy.set(PASS);
    let pis = ls.get("/v1/payment_intents?limit=100").await;
    let pi = pis["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["locator"] == loc)
        .expect("the payment intent")["id"]
        .clone();
    let event = json!({"id": "evt_test_1", "type": "payment_intent.succeeded", "data": {"object": {"id": pi, "object": "payment_intent"}}}).to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now);
    assert_eq!(
        post_webhook(
            &s,
            &event,
            &jetway::payments::webhook::sign("whsec_wrong", event.as_bytes(), now)
        )
        .await,
        400
    );
    assert_eq!(
        post_webhook(
            &s,
            &event,
            &jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now - 600)
        )
        .await,
        400
    );
    assert_eq!(post_webhook(&s, &event, "t=1,v1=00").await, 400);
    assert_eq!(
        a.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "held",
        "bad signatures change nothing"
    );
    assert_eq!(post_webhook(&s, &event, &good).await, 200);
    assert_eq!(
        a.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "confirmed"
    );
    let v = a.ok("flights.get", json!({"flight_id": fid})).await["version"].clone();
    assert_eq!(
        post_webhook(&s, &event, &good).await,
        200,
        "a repeat is acknowledged"
    );
    assert_eq!(
        a.ok("flights.get", json!({"flight_id": fid})).await["version"],
        v,
        "and applied once"
    );
    assert_eq!(ls.charges().await.len(), 1);
    s.stop().await;
}

// ---- against the fake gateway (tools/fake-stripe): faults at each step ----

use fake_stripe::{FakeStripe, Fault, FaultRule, Step};

async fn fake() -> FakeStripe {
    FakeStripe::start().await.expect("fake stripe starts")
}

/// A fake Stripe and a server paying through it, with `tweak` applied on top.
async fn stripe_server(tweak: impl FnOnce(&mut jetway::Config)) -> (FakeStripe, Server) {
    let f = fake().await;
    let base = f.base();
    let s = Server::start_with(|c| {
        stripe_config(c, &base);
        tweak(c)
    })
    .await;
    (f, s)
}

fn fault(f: &FakeStripe, step: Step, fault: Fault) {
    f.set_fault(FaultRule {
        step,
        fault,
        rate: 1.0,
    });
}

/// Polls `cond` until it holds (20 s at most).
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn store_booking(s: &Server, loc: &Value) -> jetway::domain::Booking {
    let loc = jetway::domain::Locator::parse(loc.as_str().unwrap()).unwrap();
    s.app().store.booking(&loc).unwrap().expect("booking")
}

async fn wait_confirmed(s: &Server, loc: &Value) {
    eventually("the booking is confirmed", || {
        let status = store_booking(s, loc).status;
        async move { status == jetway::domain::BookingStatus::Confirmed }
    })
    .await;
}

/// A booked user whose first pay (request `p1`) is answered `payment_failed`
/// because the gateway's confirm meets `confirm` (answers cut after 1 s, the
/// reconciler idle): the fake gateway, the server, the user's client, the flight id
/// and the booking.
async fn first_pay_failed(
    confirm: Fault,
    tweak: impl FnOnce(&mut jetway::Config),
) -> (FakeStripe, Server, Client, String, Value) {
    let (f, s) = stripe_server(|c| {
        c.gateway_timeout = 1;
        c.reconcile_interval = 3600;
        tweak(c)
    })
    .await;
    let mut c = s.client().await;
    let (fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    fault(&f, Step::Confirm, confirm);
    assert_eq!(
        c.reason("booking.pay", pay(&b["locator"], "pm_card_visa", "p1"))
            .await,
        "payment_failed"
    );
    (f, s, c, fid, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_landing_after_a_timed_out_confirm_confirms_the_booking() {
    let (f, s, _, _, b) = first_pay_failed(Fault::ProcessLate(Duration::from_millis(4000)), |c| {
        c.reconcile_interval = 1
    })
    .await;
    wait_confirmed(&s, &b["locator"]).await;
    let cancels: Vec<String> = f
        .keys()
        .into_iter()
        .filter(|k| k.step == Step::Cancel)
        .map(|k| k.key)
        .collect();
    let mut unique = cancels.clone();
    unique.sort();
    unique.dedup();
    assert!(
        cancels.len() >= 2,
        "cancelled while processing, then again: {cancels:?}"
    );
    assert_eq!(
        unique.len(),
        cancels.len(),
        "a fresh key per cancel: {cancels:?}"
    );
    let total = b["total"]["amount"].as_i64().unwrap();
    let l = f.ledger();
    assert_eq!((l.charged(), l.refunded()), (total, 0), "{l:?}");
    s.stop().await;
}

/// [`first_pay_failed`] by a charge that lands 2.5 s late, on a server with an admin.
async fn first_pay_late_with_admin() -> (FakeStripe, Server, Client, String, Value) {
    first_pay_failed(Fault::ProcessLate(Duration::from_millis(2500)), |c| {
        c.admin_password = Some(ADMIN_PASSWORD.into())
    })
    .await
}

/// Once the late charge of `b` lands, the reconciler refunds it in full.
async fn late_charge_refunded(f: &FakeStripe, s: &Server, b: &Value) {
    let total = b["total"]["amount"].as_i64().unwrap();
    eventually("the late charge lands", || {
        let charged = f.ledger().charged();
        async move { charged == total }
    })
    .await;
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!((l.charged(), l.refunded()), (total, total), "{l:?}");
}

/// A hold the passenger cancels while its payment is uncertain: the seats go back at
/// once, and the charge that lands afterwards is refunded in full by the reconciler
/// (the gateway keeps nothing for a booking that is not confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_landing_after_its_hold_was_cancelled_is_refunded() {
    let (f, s, mut c, _, b) =
        first_pay_failed(Fault::ProcessLate(Duration::from_millis(2500)), |_| {}).await;
    let loc = &b["locator"];
    let cancelled = c
        .ok("booking.cancel", json!({"locator": loc, "request_id": "c"}))
        .await;
    assert_eq!(cancelled["booking"]["status"], "cancelled", "{cancelled}");
    late_charge_refunded(&f, &s, &b).await;
    assert!(s.app().store.open_attempts().unwrap().is_empty());
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    assert_eq!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Cancelled
    );
    s.stop().await;
}

/// The same late charge, its refund refused by the gateway until an admin closes it
/// as paid back by other means: the pay request, answered `payment_failed` (the
/// gateway timed out) until then, is told what became of the charge from then on (it
/// kept the timeout for good: only a refund made through the gateway wrote its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_charge_an_admin_paid_back_elsewhere_answers_its_pay_request() {
    let (f, s, mut c, _, b) = first_pay_late_with_admin().await;
    let loc = &b["locator"];
    let first = c.err("booking.pay", pay(loc, "pm_card_visa", "p1")).await;
    assert_eq!(first["data"]["reason"], "payment_failed", "{first}");
    c.ok("booking.cancel", json!({"locator": loc, "request_id": "c"}))
        .await;
    fault(&f, Step::Refund, Fault::Refuse);
    eventually("the late charge lands", || {
        let charged = f.ledger().charged();
        async move { charged > 0 }
    })
    .await;
    s.app().reconcile_payments(Duration::ZERO).await;
    let mut admin = admin_client(&s).await;
    let id = first_open_refund(&mut admin).await;
    assert!(id.is_string(), "the refund waits for an admin");
    let e = c.err("booking.pay", pay(loc, "pm_card_visa", "p1")).await;
    assert_eq!(e, first, "still unsettled");

    resolve(&mut admin, id, "paid_elsewhere").await;
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    assert!(s.app().store.open_attempts().unwrap().is_empty());
    let e = c.err("booking.pay", pay(loc, "pm_card_visa", "p1")).await;
    assert_eq!(e["data"]["reason"], "invalid_state", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(
            "the booking was cancelled before the payment completed; the charge was refunded"
        ),
        "{message}"
    );
    assert_eq!(f.ledger().refunded(), 0, "the gateway was not asked");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_payment_stays_open_until_the_reconciler_settles_it() {
    let (f, mut s, _, _, b) =
        first_pay_failed(Fault::ProcessLate(Duration::from_millis(1500)), |_| {}).await;
    assert_eq!(
        s.app().store.open_attempts().unwrap().len(),
        1,
        "the attempt stays open"
    );
    let total = b["total"]["amount"].as_i64().unwrap();
    eventually("the late charge lands", || {
        let charged = f.ledger().charged();
        async move { charged == total }
    })
    .await;
    s.restart_with(|c| stripe_config(c, &f.base())).await;
    wait_confirmed(&s, &b["locator"]).await;
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_confirm_is_cancelled_before_it_counts_as_not_charged() {
    let (f, s, mut a, _fid, b) = first_pay_failed(Fault::Timeout, |_| {}).await;
    let loc = b["locator"].clone();
    let l = f.ledger();
    assert_eq!(l.intents.len(), 1);
    assert_eq!(
        l.intents[0].status, "canceled",
        "not charged only once cancelled"
    );
    assert!(f
        .keys()
        .iter()
        .any(|k| k.step == Step::Cancel && k.key.contains("-cancel-")));
    f.clear_faults();
    let ok = a.ok("booking.pay", pay(&loc, "pm_card_visa", "p2")).await;
    assert_eq!(ok["booking"]["status"], "confirmed");
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!(f.ledger().charged(), total);
    s.stop().await;
}

/// Writes a payment attempt for `booking` in `state`, as an older version (or another
/// installation's key) could leave it.
fn store_attempt(
    s: &Server,
    booking: &jetway::domain::Booking,
    id: &str,
    payment_ref: &str,
    state: &str,
    certain: bool,
) {
    let now = booking.created_at;
    let mut attempt = serde_json::json!({
        "id": id, "user_id": booking.user_id, "locator": booking.locator,
        "amount": booking.total, "request_id": "old", "payment_ref": payment_ref,
        "state": state, "created_at": now, "updated_at": now,
    });
    if certain {
        attempt["certain"] = json!(true);
    }
    s.app()
        .store
        .write(&jetway::store::Batch {
            attempts: vec![serde_json::from_value(attempt).unwrap()],
            ..Default::default()
        })
        .unwrap();
    s.app().store.sync().unwrap();
}

/// A payment charged at the gateway whose attempt `id` is stored as failed (as an
/// older version could leave it when `certain` is false); returns the PaymentIntent.
async fn failed_but_charged(
    s: &Server,
    f: &FakeStripe,
    booking: &jetway::domain::Booking,
    id: &str,
    certain: bool,
) -> String {
    let pi = charged_intent(f, booking.total.amount()).await;
    store_attempt(s, booking, id, &pi, "failed", certain);
    pi
}

/// A charged PaymentIntent of `amount` cents at the fake, made around Jetway.
async fn charged_intent(f: &FakeStripe, amount: i64) -> String {
    let http = reqwest::Client::new();
    let pi: Value = http
        .post(format!("{}/v1/payment_intents", f.base()))
        .form(&[
            ("amount", amount.to_string()),
            ("payment_method", "pm_card_visa".into()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pi = pi["id"].as_str().unwrap().to_owned();
    http.post(format!("{}/v1/payment_intents/{pi}/confirm", f.base()))
        .send()
        .await
        .unwrap();
    pi
}

/// A booking paid, and charged once more by an attempt closed as failed (a late
/// charge): its locator, its total and the late PaymentIntent.
async fn paid_and_charged_late(s: &Server, f: &FakeStripe) -> (Value, i64, String) {
    let mut a = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut a, 1, "economy").await;
    let loc = b["locator"].clone();
    a.ok("booking.pay", pay(&loc, "pm_card_visa", "p")).await;
    let total = b["total"]["amount"].as_i64().unwrap();
    let pi = failed_but_charged(s, f, &store_booking(s, &loc), "pa-late", true).await;
    (loc, total, pi)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_webhook_for_a_failed_attempt_refunds_a_charge_the_booking_cannot_take() {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
    })
    .await;
    let (loc, total, pi) = paid_and_charged_late(&s, &f).await;
    let event = json!({"id": "evt_late", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": pi, "object": "payment_intent"}}})
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now);
    assert_eq!(post_webhook(&s, &event, &signed).await, 200);
    let l = f.ledger();
    assert_eq!((l.charged(), l.refunded()), (2 * total, total), "{l:?}");
    let late = l.intents.iter().find(|i| i.id == pi).unwrap();
    assert_eq!(
        late.refunded(),
        total,
        "the late charge is the one refunded"
    );
    assert_eq!(
        store_booking(&s, &loc).status,
        jetway::domain::BookingStatus::Confirmed
    );
    s.stop().await;
}

/// A webhook whose work outlasts its connection (the connection's deadline is the
/// handshake timeout; Stripe also gives up on an answer) still finishes it: here the
/// late charge's refund, slow at the gateway. It used to be dropped between two
/// gateway calls, and the charge kept until the next reconciliation round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_cut_off_mid_way_still_finishes_its_work() {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
        c.limits.handshake_timeout = 1;
    })
    .await;
    let (_loc, total, pi) = paid_and_charged_late(&s, &f).await;
    // over the connection's deadline, under the gateway timeout (2 s)
    fault(&f, Step::Refund, Fault::Slow(Duration::from_millis(1500)));
    let event = json!({"id": "evt_cut", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": pi, "object": "payment_intent"}}})
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now);
    let cut = reqwest::Client::new()
        .post(format!("http://{}/webhooks/stripe", s.addr))
        .header("Stripe-Signature", signed)
        .body(event)
        .send()
        .await;
    assert!(cut.is_err(), "answered within the deadline: {cut:?}");
    eventually("the late charge is refunded", || async {
        f.ledger().refunded() == total
    })
    .await;
    // the refund is recorded, then the event, after the gateway's answer
    eventually("the event is recorded as applied", || async {
        s.app().store.webhook_seen("evt_cut").unwrap()
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_for_an_attempt_an_older_version_closed_as_failed_is_settled() {
    let f = fake().await;
    let mut s = Server::start_with(|c| stripe_config(c, &f.base())).await;
    let mut a = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut a, 1, "economy").await;
    let loc = b["locator"].clone();
    let booking = store_booking(&s, &loc);
    // what the old code left behind: charged at the gateway, attempt `pa{N}` failed
    let total = b["total"]["amount"].as_i64().unwrap();
    failed_but_charged(&s, &f, &booking, "pa7", false).await;
    s.restart_with(|c| stripe_config(c, &f.base())).await;
    wait_confirmed(&s, &loc).await;
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_refunded_again_after_a_seat_change_is_paid_again() {
    let f = fake().await;
    let s = Server::start_with(|c| stripe_config(c, &f.base())).await;
    let mut c = s.client().await;
    let (_fid, seats, b) = booked_user(&mut c, 3, "economy").await;
    let loc = &b["locator"];
    c.ok("booking.pay", pay(loc, "pm_card_visa", "p")).await;
    let cancel = |rid: &str| json!({"locator": loc, "request_id": rid, "seats": [seats[0]]});
    let first = c.ok("booking.cancel", cancel("c1")).await;
    let third = first["order"]["refunded"]["amount"].as_i64().unwrap();
    assert!(third > 0);
    // another passenger moves into the seat just refunded, and cancels in turn
    c.ok(
        "booking.change_seat",
        json!({"locator": loc, "request_id": "m", "from": seats[1], "to": seats[0]}),
    )
    .await;
    let second = c.ok("booking.cancel", cancel("c2")).await;
    let l = f.ledger();
    let refunds = &l.intents[0].refunds;
    assert_eq!(
        refunds.iter().map(|r| r.amount).collect::<Vec<_>>(),
        vec![third, third],
        "two refunds made: {l:?}"
    );
    assert_ne!(refunds[0].idempotency_key, refunds[1].idempotency_key);
    assert_eq!(second["order"]["refunded"]["amount"], l.refunded());
    assert_eq!(second["booking"]["refund"]["amount"], l.refunded());
    assert_eq!(second["booking"]["seats"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_whose_answer_is_lost_is_finished_once_by_the_reconciler() {
    let (f, s) = stripe_server(|c| {
        c.gateway_timeout = 1;
        c.reconcile_interval = 1;
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    c.ok("booking.pay", pay(loc, "pm_card_visa", "p")).await;
    let total = b["total"]["amount"].as_i64().unwrap();
    // the refund is made, but its answer never comes back
    fault(&f, Step::Refund, Fault::LoseReply);
    let cancel = json!({"locator": loc, "request_id": "c"});
    assert_eq!(
        c.reason("booking.cancel", cancel.clone()).await,
        "payment_failed"
    );
    assert_eq!(f.ledger().refunded(), total);
    let key = f.ledger().intents[0].refunds[0].idempotency_key.clone();
    let open = s.app().store.open_refunds().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        Some(&open[0].id),
        key.as_ref(),
        "the key was stored before the call"
    );
    f.clear_faults();
    eventually("the reconciler records the refund", || {
        let status = store_booking(&s, loc).status;
        async move { status == jetway::domain::BookingStatus::Refunded }
    })
    .await;
    let again = c.ok("booking.cancel", cancel).await;
    assert_eq!(again["order"]["refunded"]["amount"], total);
    assert_eq!(again["booking"]["status"], "refunded");
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "refunded once: {l:?}");
    assert_eq!(l.refunded(), total);
    s.stop().await;
}

/// A request that takes longer than the idle timeout (a slow gateway) is not
/// mistaken for a silent client: its connection stays open and gets its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_slower_than_the_idle_timeout_keeps_its_connection() {
    let (f, s) = stripe_server(|c| {
        c.gateway_timeout = 10;
        c.idle_timeout = 2;
        c.ping_interval = 1;
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    fault(&f, Step::Confirm, Fault::Slow(Duration::from_millis(4500)));
    let paid = c
        .ok("booking.pay", pay(&b["locator"], "pm_card_visa", "p"))
        .await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    s.stop().await;
}

/// Stripe forgets idempotency keys after 24 hours: a refund whose answer was lost
/// and that is retried after that must find the refund made, not make a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_retried_after_the_gateway_forgot_its_key_is_not_paid_twice() {
    let (f, s) = stripe_server(|c| {
        c.gateway_timeout = 1;
        c.reconcile_interval = 1;
        c.refund_lookup_after = 0;
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 2, "economy").await;
    let loc = &b["locator"];
    c.ok("booking.pay", pay(loc, "pm_card_visa", "p")).await;
    let total = b["total"]["amount"].as_i64().unwrap();
    let seat = b["seats"][0]["seat"].clone();
    fault(&f, Step::Refund, Fault::LoseReply);
    let cancel = json!({"locator": loc, "seats": [seat], "request_id": "c"});
    assert_eq!(
        c.reason("booking.cancel", cancel.clone()).await,
        "payment_failed"
    );
    let made = f.ledger().refunded();
    assert!(
        made > 0 && made < total,
        "one seat refunded: {made} of {total}"
    );
    // a day later: the key is forgotten, the refund is still open
    f.forget_keys();
    f.clear_faults();
    let again = c.ok("booking.cancel", cancel).await;
    assert_eq!(again["order"]["refunded"]["amount"], made);
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "refunded once: {l:?}");
    assert_eq!(l.refunded(), made);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_never_send_the_same_gateway_key() {
    let f = fake().await;
    let mut stored = Vec::new();
    // two fresh data dirs (a staging next to production, a reinstall), one account
    for _ in 0..2 {
        let s = Server::start_with(|c| stripe_config(c, &f.base())).await;
        let mut c = s.client().await;
        let (_fid, seats, b) = booked_user(&mut c, 2, "economy").await;
        let loc = &b["locator"];
        c.ok("booking.pay", pay(loc, "pm_card_visa", "p")).await;
        c.ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c", "seats": [seats[0]]}),
        )
        .await;
        let pi = f
            .ledger()
            .with_metadata("locator", loc.as_str().unwrap())
            .next()
            .expect("its payment")
            .id
            .clone();
        let attempt = s.app().store.attempt_by_ref(&pi).unwrap().expect("stored");
        stored.push(attempt.id);
        s.stop().await;
    }
    let keys: Vec<String> = f.keys().into_iter().map(|k| k.key).collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "a key was sent twice: {keys:?}");
    assert_eq!(keys.len(), 6, "create, confirm, refund per installation");
    assert_ne!(stored[0], stored[1]);
    for id in &stored {
        for step in ["create", "confirm"] {
            assert!(
                keys.contains(&format!("{id}-{step}")),
                "{id}-{step} in {keys:?}"
            );
        }
    }
    let l = f.ledger();
    assert_eq!(l.intents.len(), 2);
    assert!(l
        .intents
        .iter()
        .all(|i| i.charged > 0 && i.refunds.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_for_a_busy_booking_is_retried_not_recorded_as_seen() {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
        c.gateway_timeout = 10;
    })
    .await;
    let mut a = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut a, 1, "economy").await;
    let loc = b["locator"].clone();
    let total = b["total"]["amount"].as_i64().unwrap();
    let pi = failed_but_charged(&s, &f, &store_booking(&s, &loc), "pa-late", true).await;
    // a payment of the booking is in flight while the webhook comes
    fault(&f, Step::Confirm, Fault::Slow(Duration::from_secs(3)));
    let paying = tokio::spawn({
        let loc = loc.clone();
        async move { a.ok("booking.pay", pay(&loc, "pm_card_visa", "p")).await }
    });
    eventually("the payment is in flight", || {
        let open = s.app().store.open_attempts().unwrap();
        async move { open.iter().any(|a| a.id != "pa-late") }
    })
    .await;
    let event = json!({"id": "evt_busy", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": pi, "object": "payment_intent"}}})
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now);
    assert_eq!(
        post_webhook(&s, &event, &signed).await,
        503,
        "skipped, so Stripe retries"
    );
    assert!(!s.app().store.webhook_seen("evt_busy").unwrap());
    let paid = paying.await.unwrap();
    assert_eq!(paid["booking"]["status"], "confirmed");
    // Stripe's retry is applied: the late charge is refunded
    assert_eq!(post_webhook(&s, &event, &signed).await, 200);
    let l = f.ledger();
    assert_eq!((l.charged(), l.refunded()), (2 * total, total), "{l:?}");
    assert_eq!(
        l.intents.iter().find(|i| i.id == pi).unwrap().refunded(),
        total
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_a_seat_the_booking_no_longer_holds_is_not_made() {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
        c.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let mut c = s.client().await;
    let (fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = b["locator"].clone();
    c.ok("booking.pay", pay(&loc, "pm_card_visa", "p")).await;
    // a stranger holds a seat the booking had quoted a refund for before another
    // node moved its passenger (what a quote racing a seat change leaves open)
    let mut stranger = s.client().await;
    stranger.new_user().await;
    let theirs = free_seats(&mut stranger, &fid, "economy", 1).await;
    let held = hold(&mut stranger, &fid, &theirs, "h").await;
    let booking = store_booking(&s, &loc);
    let order_id = booking.order_id.clone().unwrap();
    let order = s.app().store.order(&order_id).unwrap().unwrap();
    let fare = booking.seats[0].fare.amount();
    s.store_refund("rf-stale", &booking, &order.charge_id, (fare, "old"), |r| {
        r.seats = vec![jetway::domain::SeatId::parse(&theirs[0]).unwrap()]
    });
    assert_eq!(
        c.reason("booking.cancel", json!({"locator": loc, "request_id": "c"}))
            .await,
        "invalid_state"
    );
    // nor by an admin's retry, whose ask under the current key comes first
    let mut admin = admin_client(&s).await;
    retry_refused(&mut admin, &json!("rf-stale"), "seats changed").await;
    assert_eq!(f.ledger().refunded(), 0, "no refund made");
    assert_eq!(
        store_booking(&s, &loc).status,
        jetway::domain::BookingStatus::Confirmed
    );
    // the stranger's seat is still theirs: paying for it works
    let paid = stranger
        .ok("booking.pay", pay(&held["locator"], "pm_card_visa", "p"))
        .await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    s.stop().await;
}

// ---- payments with customer action (3-D Secure) ----

const THREE_DS: &str = "pm_card_threeDSecure2Required";

/// The only PaymentIntent of a booking at the fake gateway.
fn intent_of(f: &FakeStripe, loc: &Value) -> fake_stripe::Intent {
    let l = f.ledger();
    let mut intents = l.with_metadata("locator", loc.as_str().unwrap());
    let i = intents.next().expect("a PaymentIntent").clone();
    assert!(intents.next().is_none(), "one PaymentIntent per booking");
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_needing_3ds_waits_for_the_customer_then_completes() {
    let f = fake().await;
    let s = Server::start_with(|c| stripe_config(c, &f.base())).await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 2, "economy").await;
    let loc = &b["locator"];
    let e = c.err("booking.pay", pay(loc, THREE_DS, "p1")).await;
    assert_eq!(e["data"]["reason"], "payment_action_required", "{e}");
    let pi = intent_of(&f, loc);
    let secret = e["data"]["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&pi.id), "{secret}");
    assert_eq!(
        (pi.status.as_str(), f.ledger().charged()),
        ("requires_action", 0)
    );
    // the same request gets the same answer; the booking stays held
    assert_eq!(c.err("booking.pay", pay(loc, THREE_DS, "p1")).await, e);
    let held = c.ok("booking.get", json!({"locator": loc})).await;
    assert_eq!(held["booking"]["status"], "held");
    // the reconciler leaves a payment alone while its customer may still act
    s.app().reconcile_payments(Duration::ZERO).await;
    assert_eq!(intent_of(&f, loc).status, "requires_action");
    // paying again before acting asks again, for the same payment
    let again = c.err("booking.pay", pay(loc, THREE_DS, "p2")).await;
    assert_eq!(again["data"]["client_secret"], secret.as_str());
    // the customer authenticates (Stripe.js), then the front end pays again
    assert!(f.authenticate(&pi.id, true));
    let paid = c.ok("booking.pay", pay(loc, THREE_DS, "p3")).await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    assert_eq!(c.ok("booking.pay", pay(loc, THREE_DS, "p3")).await, paid);
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    assert_eq!(intent_of(&f, loc).id, pi.id, "completed, not charged again");
    assert!(s.app().store.open_attempts().unwrap().is_empty());
    // Stripe.js may load on the app's pages
    let csp = reqwest::get(format!("http://{}/", s.addr))
        .await
        .unwrap()
        .headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self' https://js.stripe.com"),
        "{csp}"
    );
    assert!(csp.contains("frame-src https://js.stripe.com"), "{csp}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_ends_while_the_customer_acts_cancels_the_payment() {
    let (f, s, mut c, b) = challenged_3ds(2).await;
    let loc = &b["locator"];
    eventually("the PaymentIntent is cancelled once the hold ends", || {
        let status = intent_of(&f, loc).status;
        async move { status == "canceled" }
    })
    .await;
    // the hold is released once the cancel is recorded, a moment after the gateway's
    eventually("the hold is released", || {
        let status = store_booking(&s, loc).status;
        async move { status == jetway::domain::BookingStatus::Expired }
    })
    .await;
    let late = c.reason("booking.pay", pay(loc, THREE_DS, "p2")).await;
    assert!(late == "hold_expired" || late == "invalid_state", "{late}");
    assert_eq!(f.ledger().charged(), 0);
    assert!(s.app().store.open_attempts().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_authentication_or_another_card_gives_up_the_waiting_payment() {
    let f = fake().await;
    let s = Server::start_with(|c| stripe_config(c, &f.base())).await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    let total = b["total"]["amount"].as_i64().unwrap();
    // authentication fails: the next pay fails, the PaymentIntent is cancelled
    c.err("booking.pay", pay(loc, THREE_DS, "p1")).await;
    let first = intent_of(&f, loc).id;
    assert!(f.authenticate(&first, false));
    assert_eq!(
        c.reason("booking.pay", pay(loc, THREE_DS, "p2")).await,
        "payment_failed"
    );
    assert_eq!(intent_of(&f, loc).status, "canceled");
    // asked again, the customer switches cards: the waiting payment is given up first
    c.err("booking.pay", pay(loc, THREE_DS, "p3")).await;
    assert_eq!(
        c.reason("booking.pay", pay(loc, "pm_card_visa", "p4"))
            .await,
        "payment_failed"
    );
    let paid = c.ok("booking.pay", pay(loc, "pm_card_visa", "p5")).await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    let ledger = f.ledger();
    let intents: Vec<_> = ledger
        .with_metadata("locator", loc.as_str().unwrap())
        .collect();
    assert_eq!(intents.len(), 3);
    assert_eq!(
        intents.iter().filter(|i| i.status == "canceled").count(),
        2,
        "{intents:?}"
    );
    assert_eq!((ledger.charged(), ledger.refunded()), (total, 0));
    s.stop().await;
}

/// A customer who switches cards while the first card's payment waits for 3-D Secure,
/// having just completed it, when the gateway cannot say how that payment ended: the
/// request is told its outcome is not known yet, not that the payment was given up
/// and to pay again (it had charged); the next pay learns it and confirms the
/// booking with that charge, nothing charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_switch_that_cannot_learn_the_waiting_payment_s_end_says_so() {
    let f = fake().await;
    let s = Server::start_with(|c| stripe_config(c, &f.base())).await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    c.err("booking.pay", pay(loc, THREE_DS, "p1")).await;
    assert!(f.authenticate(&intent_of(&f, loc).id, true));
    fault(&f, Step::Retrieve, Fault::Fail);
    let e = c.err("booking.pay", pay(loc, "pm_card_visa", "p2")).await;
    assert_eq!(e["data"]["reason"], "payment_failed", "{e}");
    let told = e["message"].as_str().unwrap();
    assert!(told.contains("not known yet"), "{told}");
    assert!(!told.contains("pay again"), "{told}");
    f.clear_faults();
    // the next pay learns the waiting payment went through: it pays the booking
    let paid = c.ok("booking.pay", pay(loc, "pm_card_visa", "p3")).await;
    assert_eq!(paid["booking"]["status"], "confirmed", "{paid}");
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    s.stop().await;
}

/// A refund whose first call was made by the release before refund metadata (its
/// answer lost) is retried by this release under the same key with other params:
/// Stripe refuses those, so the retry resends the first call's params and gets its
/// refund replayed. Left refused, the refund would stay open until Stripe forgot
/// the key, and then be paid a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_first_asked_for_by_the_previous_release_is_replayed_not_refused() {
    use jetway::payments::{PaymentGateway, RefundRequest};
    let f = fake().await;
    let pi = charged_intent(&f, 5000).await;
    let key = "rf-asked-by-the-previous-release";
    let first: Value = refund_without_metadata(&f, &pi, key, 2000)
        .await
        .json()
        .await
        .unwrap();
    let stripe =
        jetway::payments::Stripe::new(&f.base(), KEY.into(), Duration::from_secs(5)).unwrap();
    for look_up_first in [false, true] {
        let id = stripe
            .refund(RefundRequest {
                payment_ref: pi.clone(),
                amount: jetway::domain::Money::cents(2000).unwrap(),
                idempotency_key: key.into(),
                look_up_first,
                earlier_keys: Vec::new(),
                send_by: None,
            })
            .await
            .expect("the first refund, replayed");
        assert_eq!(id.id, first["id"].as_str().unwrap());
    }
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "refunded once: {l:?}");
    assert_eq!(l.refunded(), 2000);
}

/// A refund try whose time ran out while it looked its key up first (a slow list, a
/// process woken late) sends no refund request: one handed over past the try's
/// deadline could be made after the wait before `paid_elsewhere` ended. Found by a
/// money review: the try's cut-off was checked only when it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_request_is_not_sent_once_its_try_is_out_of_time() {
    use jetway::payments::{PaymentError, PaymentGateway, RefundRequest};
    let f = fake().await;
    let pi = charged_intent(&f, 5000).await;
    let stripe =
        jetway::payments::Stripe::new(&f.base(), KEY.into(), Duration::from_secs(5)).unwrap();
    let ask = |send_by| RefundRequest {
        payment_ref: pi.clone(),
        amount: jetway::domain::Money::cents(2000).unwrap(),
        idempotency_key: "rf-out-of-time".into(),
        look_up_first: true,
        earlier_keys: Vec::new(),
        send_by,
    };
    let late = stripe.refund(ask(Some(jetway::domain::now_ms() - 1))).await;
    assert!(
        matches!(&late, Err(PaymentError::Failed(m)) if m.contains("ran out of time")),
        "{late:?}"
    );
    assert!(f.received(Step::ListRefunds) > 0, "looked up first");
    assert_eq!(f.received(Step::Refund), 0, "no refund request sent");
    let in_time = stripe
        .refund(ask(Some(jetway::domain::now_ms() + 60_000)))
        .await;
    assert!(in_time.is_ok(), "{in_time:?}");
    assert_eq!(f.ledger().refunded(), 2000);
}

/// A payment reference the gateway does not know (another account's key, or test
/// and live mode mixed up) may be a charge: its attempt stays open, never closed as
/// not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_gateway_does_not_know_stays_open() {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
    })
    .await;
    let mut a = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut a, 1, "economy").await;
    let booking = store_booking(&s, &b["locator"]);
    store_attempt(
        &s,
        &booking,
        "pa-elsewhere",
        "pi_of_another_account",
        "started",
        false,
    );
    s.app().reconcile_payments(Duration::ZERO).await;
    let kept = s.app().store.attempt("pa-elsewhere").unwrap().unwrap();
    assert!(kept.is_open(), "closed as {:?}", kept.state);
    assert!(
        f.keys().iter().all(|k| k.step != Step::Cancel),
        "nothing to cancel: the gateway cannot tell what it is"
    );
    s.stop().await;
}

const ADMIN_PASSWORD: &str = "payments ops 2026";

/// A refund the gateway keeps refusing stays open (retried forever); an admin lists
/// it with the gateway's failures, and resolves it: `retry` has it made under a fresh
/// key, `paid_elsewhere` records it without asking the gateway. Each decision is kept
/// on the refund with the admin's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resolves_refunds_the_gateway_keeps_refusing() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    let refused =
        |rid: &str, seat: &str| json!({"locator": loc, "request_id": rid, "seats": [seat]});

    // refused, then made under a fresh key
    fault(&f, Step::Refund, Fault::Fail);
    assert_eq!(
        c.reason("booking.cancel", refused("c1", &seats[0])).await,
        "payment_failed"
    );
    s.app().reconcile_payments(Duration::ZERO).await;
    let open = admin.ok("admin.refunds.list", json!({})).await;
    let stuck = &open["refunds"][0];
    assert_eq!(open["refunds"].as_array().unwrap().len(), 1, "{open}");
    assert_eq!(stuck["failed_tries"], 2, "{stuck}");
    assert!(
        stuck["last_error"].as_str().unwrap().contains("500"),
        "{stuck}"
    );
    let id = stuck["refund_id"].as_str().unwrap().to_owned();
    // a 5xx says nothing of what the key's earlier request did
    retry_refused(&mut admin, &json!(id), "has not answered").await;
    // nor does a 400 (kept by nobody): a request of the 5xx tries, late, may still act
    fault(&f, Step::Refund, Fault::Refuse);
    retry_refused(&mut admin, &json!(id), "may still make").await;
    tries_long_ago(s.app(), loc.as_str().unwrap());
    let retry = resolve(&mut admin, json!(id), "retry").await;
    assert_eq!(retry["refund"]["done"], false);
    assert_eq!(retry["refund"]["resolutions"][0]["by"], "admin");
    assert_eq!(retry["refund"]["resolutions"][0]["outcome"], "retry");
    f.clear_faults();
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    let made = &l.intents[0].refunds;
    assert_eq!(made.len(), 1, "{l:?}");
    assert_ne!(
        made[0].idempotency_key.as_deref(),
        Some(id.as_str()),
        "a fresh key"
    );
    let closed = s.app().store.open_refunds().unwrap();
    assert!(closed.is_empty(), "{closed:?}");

    // refused, then paid back by other means
    fault(&f, Step::Refund, Fault::Fail);
    assert_eq!(
        c.reason("booking.cancel", refused("c2", &seats[1])).await,
        "payment_failed"
    );
    let id = first_open_refund(&mut admin).await;
    // a 5xx leaves open whether the gateway makes it: not closed as paid meanwhile
    resolve_refused(&mut admin, &json!(id), "paid_elsewhere", "may still make").await;
    // nor by a 400, for the same reason
    fault(&f, Step::Refund, Fault::Refuse);
    s.app().reconcile_payments(Duration::ZERO).await;
    resolve_refused(&mut admin, &json!(id), "paid_elsewhere", "may still make").await;
    // until a definite refusal the gateway keeps under its key
    fault(&f, Step::Refund, Fault::RefundFails);
    s.app().reconcile_payments(Duration::ZERO).await;
    let elsewhere = resolve(&mut admin, json!(id), "paid_elsewhere").await;
    assert_eq!(elsewhere["refund"]["done"], true);
    assert_eq!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Refunded
    );
    let made = f.ledger().intents[0].refunds.clone();
    assert_eq!(made.len(), 2, "the first one, and the one it failed");
    assert_eq!(made[1].status, "failed", "the gateway made nothing more");
    assert_eq!(
        admin
            .reason(
                "admin.refunds.resolve",
                json!({"refund_id": id, "outcome": "retry"})
            )
            .await,
        "not_found",
        "closed"
    );
    assert_eq!(c.reason("admin.refunds.list", json!({})).await, "forbidden");
    s.stop().await;
}

/// The id of a refund of `amount` of the first payment made without our metadata
/// (as [`refund_without_metadata`]).
async fn legacy_refund(f: &FakeStripe, amount: u64) -> String {
    let pi = f.ledger().intents[0].id.clone();
    let made: Value = refund_without_metadata(f, &pi, "legacy-key", amount)
        .await
        .json()
        .await
        .unwrap();
    made["id"].as_str().unwrap().to_owned()
}

/// A refund posted straight to the gateway the way an older release made it: with an
/// idempotency key and no metadata of ours.
async fn refund_without_metadata(
    f: &FakeStripe,
    payment_intent: &str,
    key: &str,
    amount: u64,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/refunds", f.base()))
        .header("Idempotency-Key", key)
        .form(&[
            ("payment_intent", payment_intent),
            ("amount", &amount.to_string()),
        ])
        .send()
        .await
        .unwrap()
}

/// For the admin's refund methods: a server on the fake Stripe with the admin
/// account and no reconciliation round during the test (`tweak` on top), and a user
/// who paid a two-seat booking: (fake, server, user, seats, booking).
async fn paid_for_refunds(
    tweak: impl FnOnce(&mut jetway::Config),
) -> (FakeStripe, Server, Client, Vec<String>, Value) {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
        c.admin_password = Some(ADMIN_PASSWORD.into());
        tweak(c)
    })
    .await;
    let mut c = s.client().await;
    let (_fid, seats, b) = booked_user(&mut c, 2, "economy").await;
    c.ok("booking.pay", pay(&b["locator"], "pm_card_visa", "p"))
        .await;
    (f, s, c, seats, b)
}

/// A passenger's cancel while the airline's cancellation waits to retry a refund the
/// gateway failed is refused as on a cancelled flight (before, it made the airline's
/// refund itself and answered as if it had cancelled, and the admin's answer counted
/// one refund short); the job then makes and counts the refund, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_airline_retries_its_refund_leaves_the_refund_to_the_airline() {
    let (f, s, mut c, _seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    fault(&f, Step::Refund, Fault::Fail);
    let fid = b["flight_id"].clone();
    let cancelling = tokio::spawn(async move {
        admin
            .ok(
                "admin.flights.cancel",
                json!({"flight_id": fid, "reason": "strike"}),
            )
            .await
    });
    eventually("the airline's refund failed once", || {
        let tried = f.received(Step::Refund) > 0;
        let open = s.app().store.open_refunds().unwrap();
        async move { tried && !open.is_empty() }
    })
    .await;
    // between the job's tries (while one runs, the booking is busy: asked again)
    let mut tries = 0;
    let e = loop {
        tries += 1;
        let cancel = json!({"locator": loc, "request_id": format!("c{tries}")});
        let e = c.err("booking.cancel", cancel).await;
        let busy = e["message"].as_str().unwrap().contains("in progress");
        if !busy || tries == 100 {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(e["data"]["reason"], "invalid_state", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("the airline cancelled this flight"),
        "{e}"
    );
    f.clear_faults();
    let done = cancelling.await.unwrap();
    assert_eq!(done["refunded"], 1, "{done}");
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "{l:?}");
    assert_eq!(l.charged(), l.refunded(), "{l:?}");
    assert_eq!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Refunded
    );
    s.stop().await;
}

/// The passenger cancels `seat` (request `c`) while the gateway's refunds meet
/// `with`: the cancel answers `payment_failed`, and its refund stays open.
async fn cancel_refused(f: &FakeStripe, c: &mut Client, loc: &Value, seat: &str, with: Fault) {
    fault(f, Step::Refund, with);
    let cancel = json!({"locator": loc, "request_id": "c", "seats": [seat]});
    assert_eq!(c.reason("booking.cancel", cancel).await, "payment_failed");
}

/// [`paid_for_refunds`] with a gateway timeout of `timeout` seconds, and the first
/// seat's cancel refused as by [`cancel_refused`] (`with`).
async fn first_seat_refused(
    timeout: u64,
    with: Fault,
) -> (FakeStripe, Server, Client, Vec<String>, Value) {
    let (f, s, mut c, seats, b) = paid_for_refunds(|c| c.gateway_timeout = timeout).await;
    cancel_refused(&f, &mut c, &b["locator"], &seats[0], with).await;
    (f, s, c, seats, b)
}

/// A cancel sent again under a new request_id after its refund failed finishes that
/// refund: it answers with the booking it refunded (not `invalid_state`, "booking is
/// refunded", for work it did itself), remembers that answer, and cancels whatever the
/// earlier refund left of the seats it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_retried_under_a_new_request_id_answers_the_refund_it_finished() {
    let (f, s, mut c, _seats, b) = whole_cancel_refused().await;
    let loc = &b["locator"];
    let whole = json!({"locator": loc, "request_id": "z"});
    let done = c.ok("booking.cancel", whole.clone()).await;
    assert_eq!(done["booking"]["status"], "refunded", "{done}");
    assert_eq!(done["booking"]["locator"], *loc);
    assert_eq!(c.ok("booking.cancel", whole).await, done, "remembered");
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "{l:?}");
    assert_eq!(l.refunded(), done["order"]["refunded"]["amount"], "{l:?}");

    // the earlier request refunded one of the two seats named: the other is cancelled
    let (f, s2, mut c, seats2, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    cancel_refused(&f, &mut c, loc, &seats2[0], Fault::Fail).await;
    f.clear_faults();
    let both = json!({"locator": loc, "request_id": "z", "seats": seats2});
    let done = c.ok("booking.cancel", both.clone()).await;
    assert_eq!(done["booking"]["status"], "refunded", "{done}");
    assert_eq!(f.ledger().intents[0].refunds.len(), 2);
    assert_eq!(c.ok("booking.cancel", both).await, done, "remembered");

    // the earlier request refunded the whole booking: one naming every seat is done
    let (f, s3, mut c, seats3, b) = whole_cancel_refused().await;
    let every = json!({"locator": b["locator"], "request_id": "z", "seats": seats3});
    let done = c.ok("booking.cancel", every).await;
    assert_eq!(done["booking"]["status"], "refunded", "{done}");
    assert_eq!(f.ledger().intents[0].refunds.len(), 1);

    // an empty list is refused as ever (here: the booking is refunded by then), once
    // the earlier refund is finished (it used to be answered with that refund)
    let (f, s4, mut c, _, b) = whole_cancel_refused().await;
    let none = json!({"locator": b["locator"], "request_id": "e", "seats": []});
    assert_eq!(c.reason("booking.cancel", none).await, "invalid_state");
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "the earlier one finished");
    for s in [s, s2, s3, s4] {
        s.stop().await;
    }
}

/// [`paid_for_refunds`], then the whole booking's cancel (request `y`) refused by a
/// failing gateway, which works again afterwards: its refund stays open.
async fn whole_cancel_refused() -> (FakeStripe, Server, Client, Vec<String>, Value) {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    fault(&f, Step::Refund, Fault::Fail);
    let whole = json!({"locator": b["locator"], "request_id": "y"});
    assert_eq!(c.reason("booking.cancel", whole).await, "payment_failed");
    f.clear_faults();
    (f, s, c, seats, b)
}

/// A request_id's first successful answer stays its answer: a cancel that failed at
/// the gateway left its refund open under its request_id, the same request_id then
/// cancelled another booking, and the first refund, recorded later by the
/// reconciliation, does not replace that answer with its own booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_ids_answer_is_not_replaced_by_its_earlier_refund() {
    let (f, s, mut c, _seats, a) = paid_for_refunds(|_| {}).await;
    let fid = a["flight_id"].as_str().unwrap().to_owned();
    let more = free_seats(&mut c, &fid, "economy", 1).await;
    let b = hold(&mut c, &fid, &more, "h2").await;
    c.ok("booking.pay", pay(&b["locator"], "pm_card_visa", "p2"))
        .await;
    fault(&f, Step::Refund, Fault::Fail);
    let cancel = |b: &Value| json!({"locator": b["locator"], "request_id": "x"});
    assert_eq!(
        c.reason("booking.cancel", cancel(&a)).await,
        "payment_failed"
    );
    f.clear_faults();
    let first = c.ok("booking.cancel", cancel(&b)).await;
    assert_eq!(first["booking"]["locator"], b["locator"]);
    s.app().reconcile_payments(Duration::ZERO).await;
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    assert_eq!(
        store_booking(&s, &a["locator"]).status,
        jetway::domain::BookingStatus::Refunded
    );
    let again = c.ok("booking.cancel", cancel(&b)).await;
    assert_eq!(again, first);
    s.stop().await;
}

/// A client signed in as the admin.
/// An admin's decision on a refund the gateway kept refusing; its answer.
async fn resolve(admin: &mut Client, refund_id: Value, outcome: &str) -> Value {
    admin
        .ok(
            "admin.refunds.resolve",
            json!({"refund_id": refund_id, "outcome": outcome}),
        )
        .await
}

/// The id of the first refund `admin.refunds.list` shows.
async fn first_open_refund(admin: &mut Client) -> Value {
    admin.ok("admin.refunds.list", json!({})).await["refunds"][0]["refund_id"].clone()
}

async fn admin_client(s: &Server) -> Client {
    let mut admin = s.client().await;
    admin
        .ok(
            "auth.login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    admin
}

/// The open refund of [`first_seat_refused`] (its try timed out, nothing made)
/// retried by an admin under a fresh key, the retry's own ask under the first key
/// turned away (a 400). That is refused while the timed-out try may still be made
/// (Stripe keeps nothing under the key for a 400, so the late request would act),
/// and goes through once the try is so old that it may not. Returns the first key
/// and the amount.
async fn retried_after_a_timeout(f: &FakeStripe, s: &Server) -> (String, i64) {
    let open = s.app().store.open_refunds().unwrap().remove(0);
    fault(f, Step::Refund, Fault::Refuse);
    let mut admin = admin_client(s).await;
    retry_refused(&mut admin, &json!(open.id), "may still make").await;
    let kept = s.app().store.open_refunds().unwrap().remove(0);
    assert_eq!(kept.gateway_key, None, "not retried: {kept:?}");
    assert!(kept.asked_at.is_some_and(|t| kept.rejected_at == Some(t)));
    let long_ago = common::tries_long_ago(s.app(), open.subject());
    let retry = resolve(&mut admin, json!(open.id), "retry").await;
    assert_eq!(retry["refund"]["earlier_keys"], json!([open.id]), "{retry}");
    assert_ne!(retry["refund"]["gateway_key"], json!(open.id), "{retry}");
    // the retry keeps its own ask on the record: turned away, and the aged try
    // before it (begun long ago, cut off a span later) waited on for a span more
    let retried = s.app().store.open_refunds().unwrap().remove(0);
    assert_eq!(retried.rejected_at, retried.asked_at, "{retried:?}");
    let span = s.app().payment_span().as_millis() as i64;
    assert_eq!(retried.earlier_until, Some(long_ago + 2 * span));
    f.clear_faults();
    (open.key().to_owned(), open.amount.amount())
}

/// The refund asked under `key` made at the gateway after all, as a request delayed
/// past the client's timeout on its way there would be.
async fn made_late(f: &FakeStripe, key: &str, amount: i64) {
    let pi = f.ledger().intents[0].id.clone();
    let late = reqwest::Client::new()
        .post(format!("{}/v1/refunds", f.base()))
        .header("Idempotency-Key", key)
        .form(&[
            ("payment_intent", pi.as_str()),
            ("amount", &amount.to_string()),
            ("metadata[refund]", key),
        ])
        .send()
        .await
        .unwrap();
    assert!(late.status().is_success());
}

/// A refund retried by an admin under a fresh key, and made under its first key after
/// all (that request reached the gateway late): the ask under the fresh key looks up
/// the earlier key first, finds that refund and records it, not paid again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_retry_finds_the_refund_an_earlier_key_made() {
    let (f, s, _, _, b) = first_seat_refused(1, Fault::Timeout).await;
    let (first_key, owed) = retried_after_a_timeout(&f, &s).await;
    made_late(&f, &first_key, owed).await;
    recorded_once(&f, &s, &b["locator"], owed).await;
    s.stop().await;
}

/// After a reconciliation: the gateway made one refund of `made`, and it is recorded
/// as made on the order.
async fn recorded_once(f: &FakeStripe, s: &Server, loc: &Value, made: i64) {
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 1, "refunded once: {l:?}");
    assert_eq!(l.refunded(), made);
    let open = s.app().store.open_refunds().unwrap();
    assert!(open.is_empty(), "recorded as made: {open:?}");
    assert_eq!(store_order(s, loc).refunded.amount(), made);
}

/// An admin's `retry` refused with `invalid_state`, its message saying `says`.
async fn retry_refused(admin: &mut Client, id: &Value, says: &str) {
    resolve_refused(admin, id, "retry", says).await
}

async fn resolve_refused(admin: &mut Client, id: &Value, outcome: &str, says: &str) {
    let resolve = json!({"refund_id": id, "outcome": outcome});
    let refused = admin.call("admin.refunds.resolve", resolve).await;
    assert_eq!(
        refused["error"]["data"]["reason"], "invalid_state",
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{refused}");
}

/// A refund whose last try timed out while the gateway was still making it: an admin's
/// retry under a fresh key would pay it twice, since no look-up sees the refund before
/// it is made. The retry asks once more under the current key first, and is refused
/// while the gateway has not answered, and once the gateway has made it; the next
/// reconciliation records the one refund made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_retry_is_refused_while_the_last_try_may_still_be_made() {
    resolved_while_the_last_try_may_still_be_made(
        "retry",
        "has not answered",
        "has made this refund",
    )
    .await
}

/// The same for `paid_elsewhere` (found by a money probe: it closed the refund while
/// the gateway was still making it, and the passenger was paid twice): refused while
/// a try under its key may still be executing, which lasts past the refund's making.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_elsewhere_is_refused_while_the_gateway_may_still_make_the_refund() {
    resolved_while_the_last_try_may_still_be_made(
        "paid_elsewhere",
        "may still make",
        "may still make",
    )
    .await
}

async fn resolved_while_the_last_try_may_still_be_made(outcome: &str, making: &str, made: &str) {
    let (f, s, mut c, seats, b) = paid_for_refunds(|c| c.gateway_timeout = 1).await;
    let loc = &b["locator"];
    // signed in first: the decision must come while the refund is still being made
    let mut admin = admin_client(&s).await;
    let late = Fault::ProcessLate(Duration::from_secs(6));
    cancel_refused(&f, &mut c, loc, &seats[0], late).await;
    f.clear_faults();
    assert_eq!(f.ledger().refunded(), 0, "still being made");
    let id = first_open_refund(&mut admin).await;
    resolve_refused(&mut admin, &id, outcome, making).await;
    let open = s.app().store.open_refunds().unwrap();
    assert_eq!(open.len(), 1, "still open: {open:?}");
    assert_eq!(open[0].gateway_key, None, "not retried: {open:?}");

    eventually("the late refund is made", || async {
        f.ledger().refunded() > 0
    })
    .await;
    let refunded = f.ledger().refunded();
    resolve_refused(&mut admin, &id, outcome, made).await;
    recorded_once(&f, &s, loc, refunded).await;
    s.stop().await;
}

/// A refusal of a read around the retry's own ask (the look-up by metadata before it,
/// the read of the refund it made after it) says nothing of what the key made: the
/// retry is refused, and the refund its key made is recorded, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_retry_is_refused_when_a_read_around_its_ask_is_refused() {
    let (f, s, _, _, b) = paid_for_refunds(|c| c.refund_lookup_after = 0).await;
    let loc = &b["locator"];
    let booking = store_booking(&s, loc);
    let order = store_order(&s, loc);
    let fare = booking.seats[0].fare.amount();
    s.store_refund("rf-stuck", &booking, &order.charge_id, (fare, "c"), |r| {
        r.seats = vec![booking.seats[0].seat]
    });
    let mut admin = admin_client(&s).await;
    let id = json!("rf-stuck");
    for read in [Step::ListRefunds, Step::RetrieveRefund] {
        f.clear_faults();
        fault(&f, read, Fault::Refuse);
        retry_refused(&mut admin, &id, "has not answered").await;
        let open = s.app().store.open_refunds().unwrap();
        assert_eq!(open[0].gateway_key, None, "{read:?}: not retried: {open:?}");
    }
    f.clear_faults();
    recorded_once(&f, &s, loc, fare).await;
    s.stop().await;
}

/// An open refund of nothing (no money to pay back) is never "made by the gateway":
/// an admin's retry of it goes on, and asks the gateway nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_retry_of_a_refund_of_nothing_goes_on() {
    let (f, s, _, _, b) = paid_for_refunds(|_| {}).await;
    let booking = store_booking(&s, &b["locator"]);
    let order = store_order(&s, &b["locator"]);
    s.store_refund("rf-zero", &booking, &order.charge_id, (0, "z"), |_| {});
    let mut admin = admin_client(&s).await;
    let retry = resolve(&mut admin, json!("rf-zero"), "retry").await;
    assert_eq!(
        retry["refund"]["earlier_keys"],
        json!(["rf-zero"]),
        "{retry}"
    );
    assert_eq!(f.received(Step::Refund), 0, "nothing asked");
    s.stop().await;
}

/// Two admins resolving one refund at once (say through two nodes whose marks did
/// not meet): the second decision is written only over the record it read, so it is
/// refused, and the first one's resolution and keys are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_a_refund_changed_meanwhile_is_refused() {
    let (f, s, ..) = first_seat_refused(5, Fault::Refuse).await;
    let mut admin = admin_client(&s).await;
    let id = first_open_refund(&mut admin).await;
    // the retry's look-up at the gateway is slow: another decision lands meanwhile
    fault(&f, Step::ListRefunds, Fault::Slow(Duration::from_secs(2)));
    let retry = json!({"refund_id": id, "outcome": "retry"});
    let retrying = tokio::spawn(async move { admin.call("admin.refunds.resolve", retry).await });
    eventually("the look-up is asked", || async {
        f.received(Step::ListRefunds) > 0
    })
    .await;
    let mut other = s.app().store.open_refunds().unwrap().remove(0);
    other.gateway_key = Some("rf-another-admins".into());
    other.previous_keys.push(other.id.clone());
    s.app()
        .store
        .write(&jetway::store::Batch {
            refunds: vec![other.clone()],
            ..Default::default()
        })
        .unwrap();
    let refused = retrying.await.unwrap();
    assert_eq!(
        refused["error"]["data"]["reason"], "invalid_state",
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resolved meanwhile"),
        "{refused}"
    );
    let kept = s.app().store.open_refunds().unwrap();
    assert_eq!(kept, vec![other], "the first decision stands");
    s.stop().await;
}

fn store_order(s: &Server, loc: &Value) -> jetway::domain::Order {
    let id = store_booking(s, loc).order_id.unwrap();
    s.app().store.order(&id).unwrap().unwrap()
}

/// A refund of the payment the gateway holds but nobody recorded (an older release
/// made it without our metadata, so no look-up finds it) may be the stuck refund
/// itself: an admin's retry under a fresh key is refused rather than paying twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_retry_is_refused_while_the_gateway_holds_an_unrecorded_refund() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let pi = f.ledger().intents[0].id.clone();
    refund_without_metadata(&f, &pi, "refund-by-the-previous-release", 100)
        .await
        .error_for_status()
        .unwrap();
    cancel_refused(&f, &mut c, loc, &seats[0], Fault::Refuse).await;
    let mut admin = admin_client(&s).await;
    let id = first_open_refund(&mut admin).await;
    retry_refused(&mut admin, &id, "without a record's key").await;
    let open = s.app().store.open_refunds().unwrap();
    assert_eq!(open[0].gateway_key, None, "not retried: {open:?}");
    s.stop().await;
}

/// Refunds an admin resolved as paid elsewhere count in the order's refunded total
/// but were never made at the gateway: they do not excuse an unrecorded refund there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_resolved_as_paid_elsewhere_does_not_excuse_an_unrecorded_one() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    fault(&f, Step::Refund, Fault::Refuse);
    let mut admin = admin_client(&s).await;
    let cancel = json!({"locator": loc, "request_id": "c0", "seats": [seats[0]]});
    assert_eq!(c.reason("booking.cancel", cancel).await, "payment_failed");
    let first = first_open_refund(&mut admin).await;
    resolve(&mut admin, json!(first), "paid_elsewhere").await;
    f.clear_faults();
    let pi = f.ledger().intents[0].id.clone();
    refund_without_metadata(&f, &pi, "refund-by-the-previous-release", 100)
        .await
        .error_for_status()
        .unwrap();
    fault(&f, Step::Refund, Fault::Refuse);
    let cancel = json!({"locator": loc, "request_id": "c1", "seats": [seats[1]]});
    assert_eq!(c.reason("booking.cancel", cancel).await, "payment_failed");
    let second = first_open_refund(&mut admin).await;
    assert_ne!(second, first);
    retry_refused(&mut admin, &second, "without a record's key").await;
    s.stop().await;
}

/// A server whose holds last `hold_ttl` seconds (no reconciler run), and a booking
/// whose `booking.pay` (request `p1`) was asked for 3-D Secure.
async fn challenged_3ds(hold_ttl: u64) -> (FakeStripe, Server, Client, Value) {
    let (f, s) = stripe_server(|c| {
        c.hold_ttl = hold_ttl;
        c.reconcile_interval = 3600;
        c.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    assert_eq!(
        c.reason("booking.pay", pay(&b["locator"], THREE_DS, "p1"))
            .await,
        "payment_action_required"
    );
    (f, s, c, b)
}

/// Every `booking.pay` that was answered `payment_action_required` gets the outcome
/// when the payment ends, not only the last one: an earlier request_id used to keep
/// telling the customer to authenticate a payment that was confirmed, or cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_asked_to_act_gets_the_payments_outcome() {
    // completed: a third request confirms it, the first two answer the booking paid
    let (f, s, mut c, b) = challenged_3ds(600).await;
    let loc = &b["locator"];
    assert_eq!(
        c.reason("booking.pay", pay(loc, THREE_DS, "p2")).await,
        "payment_action_required"
    );
    authenticate(&f, loc);
    let paid = c.ok("booking.pay", pay(loc, THREE_DS, "p3")).await;
    assert_eq!(paid["booking"]["status"], "confirmed", "{paid}");
    for rid in ["p1", "p2"] {
        let again = c.ok("booking.pay", pay(loc, THREE_DS, rid)).await;
        assert_eq!(again, paid, "{rid}");
    }
    paid_once(&f, &s, &b);
    s.stop().await;

    // the hold ends first: both requests answer that the payment did not go through
    let (f, s, mut c, b) = challenged_3ds(2).await;
    let loc = &b["locator"];
    assert_eq!(
        c.reason("booking.pay", pay(loc, THREE_DS, "p2")).await,
        "payment_action_required"
    );
    eventually("the hold is released", || {
        let status = store_booking(&s, loc).status;
        async move { status == jetway::domain::BookingStatus::Expired }
    })
    .await;
    for rid in ["p1", "p2"] {
        assert_eq!(
            c.reason("booking.pay", pay(loc, THREE_DS, rid)).await,
            "payment_failed",
            "{rid}"
        );
    }
    assert_eq!(f.ledger().charged(), 0);
    s.stop().await;
}

/// The customer completes 3-D Secure (Stripe.js) for the booking's payment.
fn authenticate(f: &FakeStripe, loc: &Value) {
    assert!(f.authenticate(&intent_of(f, loc).id, true));
}

/// [`challenged_3ds`], and the customer completed it.
async fn completed_3ds(hold_ttl: u64) -> (FakeStripe, Server, Client, Value) {
    let (f, s, c, b) = challenged_3ds(hold_ttl).await;
    authenticate(&f, &b["locator"]);
    (f, s, c, b)
}

/// The booking was charged once, nothing was refunded, and no attempt is open.
fn paid_once(f: &FakeStripe, s: &Server, b: &Value) {
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    assert!(s.app().store.open_attempts().unwrap().is_empty());
}

/// A customer completes 3-D Secure just as the hold ends, and their next
/// `booking.pay` never comes (it died): the hold's expiry asks the gateway first, and
/// the charge pays the booking instead of being refunded once the seats are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_completed_as_the_hold_ends_confirms_the_booking() {
    let (f, s, _c, b) = completed_3ds(2).await;
    wait_confirmed(&s, &b["locator"]).await;
    paid_once(&f, &s, &b);
    s.stop().await;
}

/// Moves the booking's payment attempts (and, with `hold_too`, its hold's end) `ms`
/// into the past, as if the customer had been asked to act that long ago.
fn age_payment(s: &Server, loc: &Value, ms: i64, hold_too: bool) {
    let mut b = store_booking(s, loc);
    let mut attempts = Vec::new();
    for a in s.app().store.booking_attempts(&b.locator).unwrap() {
        // the index of open attempts is by creation time: its entry under the old
        // time is dropped (the attempt written closed) before the aged one is written
        let mut closed = a.clone();
        closed.state = jetway::store::AttemptState::Failed;
        let mut aged = a;
        aged.created_at -= ms;
        aged.updated_at -= ms;
        attempts.extend([closed, aged]);
    }
    if hold_too {
        b.hold_expires_at = b.hold_expires_at.map(|t| t - ms);
    }
    s.app()
        .store
        .write(&jetway::store::Batch {
            attempts,
            bookings: vec![b],
            ..Default::default()
        })
        .unwrap();
}

/// Waits until the booking is no longer held, and returns its status.
async fn hold_ended(s: &Server, loc: &Value) -> jetway::domain::BookingStatus {
    eventually("the hold ends", || {
        let status = store_booking(s, loc).status;
        async move { status != jetway::domain::BookingStatus::Held }
    })
    .await;
    store_booking(s, loc).status
}

/// A customer asked for 3-D Secure early in a long hold (longer ago than a payment
/// span, 5 x 2 + 60 s here) completes it just before the hold ends, and their next
/// `booking.pay` never comes: the hold's expiry still asks the gateway (the window
/// runs from the hold's end), and the charge pays the booking instead of being
/// refunded once the seats are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_early_in_a_long_hold_completed_at_its_end_confirms_the_booking() {
    let (f, s, _c, b) = challenged_3ds(3).await;
    let loc = &b["locator"];
    age_payment(&s, loc, 200_000, false);
    authenticate(&f, loc);
    assert_eq!(
        hold_ended(&s, loc).await,
        jetway::domain::BookingStatus::Confirmed
    );
    paid_once(&f, &s, &b);
    s.stop().await;
}

/// A payment still waiting for its customer when its hold is released without asking
/// the gateway (the expiry came to it more than a payment span after the hold's end)
/// is cancelled right after, by the expiry, not left to the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_payment_of_a_hold_released_without_asking_is_cancelled_after_it() {
    let (f, s, _c, b) = challenged_3ds(3).await;
    let loc = &b["locator"];
    let cancels = f.received(Step::Cancel);
    age_payment(&s, loc, 200_000, true);
    assert_eq!(
        hold_ended(&s, loc).await,
        jetway::domain::BookingStatus::Expired
    );
    waiting_payment_cancelled(&f, &s, loc, cancels).await;
    assert_eq!(f.ledger().charged(), 0);
    s.stop().await;
}

/// A passenger who cancels a hold whose payment waits for 3-D Secure: the waiting
/// PaymentIntent is cancelled right after the release, not left to the reconciler
/// (a challenge completed later would otherwise charge a cancelled booking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_hold_cancels_its_waiting_payment() {
    let (f, s, mut c, b) = challenged_3ds(600).await;
    let loc = &b["locator"];
    let cancels = f.received(Step::Cancel);
    let cancelled = c
        .ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c1"}),
        )
        .await;
    assert_eq!(cancelled["booking"]["status"], "cancelled", "{cancelled}");
    waiting_payment_cancelled(&f, &s, loc, cancels).await;
    assert!(!f.authenticate(&intent_of(&f, loc).id, true));
    assert_eq!(f.ledger().charged(), 0);
    s.stop().await;
}

/// The same when the airline cancels the flight of such a hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_airline_cancellation_cancels_a_held_booking_s_waiting_payment() {
    let (f, s, _c, b) = challenged_3ds(600).await;
    let loc = &b["locator"];
    let cancels = f.received(Step::Cancel);
    let mut admin = admin_client(&s).await;
    let done = admin
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": b["flight_id"], "reason": "weather"}),
        )
        .await;
    assert_eq!(done["released"], 1, "{done}");
    waiting_payment_cancelled(&f, &s, loc, cancels).await;
    assert_eq!(f.ledger().charged(), 0);
    s.stop().await;
}

/// The booking's waiting PaymentIntent gets cancelled (a cancel the gateway received
/// after the first `cancels`), and its attempt ends.
async fn waiting_payment_cancelled(f: &FakeStripe, s: &Server, loc: &Value, cancels: usize) {
    eventually("the waiting PaymentIntent is cancelled", || {
        let status = intent_of(f, loc).status;
        async move { status == "canceled" }
    })
    .await;
    assert!(f.received(Step::Cancel) > cancels);
    eventually("the attempt ends", || {
        let open = s.app().store.open_attempts().unwrap().len();
        async move { open == 0 }
    })
    .await;
}

/// A customer completes 3-D Secure as the hold ends, and pays again (new request id)
/// before the hold's expiry got to the payment: the pay settles it first and answers
/// the booking as paid, not `hold_expired` for a booking about to be confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_past_due_settles_a_payment_its_customer_completed() {
    let (f, s, mut c, b) = completed_3ds(60).await;
    let loc = &b["locator"];
    // the hold is past due, and its expiry has not come to it yet (its turn at the
    // gateway is behind other holds')
    let mut due = store_booking(&s, loc);
    due.hold_expires_at = Some(jetway::domain::now_ms() - 100);
    s.app()
        .store
        .write(&jetway::store::Batch {
            bookings: vec![due],
            ..Default::default()
        })
        .unwrap();
    let paid = c.ok("booking.pay", pay(loc, THREE_DS, "p2")).await;
    assert_eq!(paid["booking"]["status"], "confirmed", "{paid}");
    paid_once(&f, &s, &b);
    s.stop().await;
}

/// The same, while the hold's expiry is asking the gateway about that payment: the
/// pay is told to look again (not `hold_expired`), and the booking is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_while_the_expiry_settles_a_completed_payment_is_not_told_expired() {
    let (f, s, mut c, b) = completed_3ds(2).await;
    let loc = &b["locator"];
    let asked = f.received(Step::Retrieve);
    fault(&f, Step::Retrieve, Fault::Slow(Duration::from_secs(3)));
    eventually("the hold's expiry asks the gateway", || {
        let n = f.received(Step::Retrieve);
        async move { n > asked }
    })
    .await;
    let e = c.err("booking.pay", pay(loc, THREE_DS, "p2")).await;
    assert_eq!(e["data"]["reason"], "payment_failed", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("not settled yet"),
        "{e}"
    );
    f.clear_faults();
    wait_confirmed(&s, loc).await;
    let paid = c.ok("booking.pay", pay(loc, THREE_DS, "p3")).await;
    assert_eq!(paid["booking"]["status"], "confirmed", "{paid}");
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    s.stop().await;
}

/// A due hold whose payment's last step is older than one payment span goes on time
/// while the gateway hangs: the gateway is not asked, the reconciler settles the
/// payment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_payment_outwaited_its_span_expires_on_time_while_the_gateway_hangs() {
    let (f, s) = stripe_server(|c| {
        c.hold_ttl = 2;
        c.reconcile_interval = 3600;
        c.gateway_timeout = 10;
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    let mut old = store_booking(&s, loc);
    let due = old.hold_expires_at.unwrap();
    let pi = charged_intent(&f, old.total.amount()).await;
    // its payer died more than a payment span (5 x 10 + 60 s) ago
    old.created_at -= 200_000;
    store_attempt(&s, &old, "pa-old", &pi, "started", false);
    fault(&f, Step::Retrieve, Fault::Slow(Duration::from_secs(60)));
    eventually("the hold expires", || {
        let status = store_booking(&s, loc).status;
        async move { status == jetway::domain::BookingStatus::Expired }
    })
    .await;
    let late = jetway::domain::now_ms() - due;
    assert!(late < 4_000, "expired {late} ms after it fell due");
    f.clear_faults();
    // the reconciler refunds the charge the booking can no longer take
    s.app().reconcile_payments(Duration::ZERO).await;
    assert_eq!(f.ledger().refunded(), old.total.amount());
    s.stop().await;
}

/// While the gateway hangs on a due hold's uncertain payment, the holds falling due
/// after it that have no payment still expire on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_without_a_payment_expires_on_time_while_the_gateway_hangs() {
    let (f, s) = stripe_server(|c| {
        c.hold_ttl = 2;
        c.reconcile_interval = 3600;
        c.gateway_timeout = 10;
    })
    .await;
    let mut c = s.client().await;
    let (_fid, _seats, stuck) = booked_user(&mut c, 1, "economy").await;
    let stuck_loc = &stuck["locator"];
    let stuck_booking = store_booking(&s, stuck_loc);
    let pi = charged_intent(&f, stuck_booking.total.amount()).await;
    // a payment whose payer died: only the gateway can tell what became of it
    store_attempt(&s, &stuck_booking, "pa-hung", &pi, "started", false);
    fault(&f, Step::Retrieve, Fault::Slow(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut c2 = s.client().await;
    let (_fid, _seats, free) = booked_user(&mut c2, 1, "economy").await;
    let free_loc = &free["locator"];
    let due = store_booking(&s, free_loc).hold_expires_at.unwrap();
    eventually("the hold without a payment expires", || {
        let status = store_booking(&s, free_loc).status;
        async move { status == jetway::domain::BookingStatus::Expired }
    })
    .await;
    let late = jetway::domain::now_ms() - due;
    assert!(late < 4_000, "expired {late} ms after it fell due");
    assert_eq!(
        store_booking(&s, stuck_loc).status,
        jetway::domain::BookingStatus::Held,
        "the other hold waits for its payment"
    );
    f.clear_faults();
    wait_confirmed(&s, stuck_loc).await;
    s.stop().await;
}

/// A client whose pay reply was lost, and that pays again under a new request id once
/// the charge settled, gets the booking as paid (not `invalid_state`), and is not
/// charged again; with another payment method the booking stays `invalid_state`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_sent_again_under_a_new_request_id_gets_the_booking_as_paid() {
    let (f, s) = stripe_server(|_| {}).await;
    let mut c = s.client().await;
    let (_fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    let loc = &b["locator"];
    let first = c.ok("booking.pay", pay(loc, "pm_card_visa", "p1")).await;
    let again = c.ok("booking.pay", pay(loc, "pm_card_visa", "p2")).await;
    assert_eq!(again, first);
    assert_eq!(
        c.ok("booking.pay", pay(loc, "pm_card_visa", "p2")).await,
        first
    );
    assert_eq!(
        c.reason("booking.pay", pay(loc, "pm_card_amex", "p3"))
            .await,
        "invalid_state"
    );
    // someone else naming the locator learns nothing
    let mut other = s.client().await;
    other.new_user().await;
    assert_eq!(
        other
            .reason("booking.pay", pay(loc, "pm_card_visa", "p4"))
            .await,
        "not_found"
    );
    let total = b["total"]["amount"].as_i64().unwrap();
    assert_eq!((f.ledger().charged(), f.ledger().refunded()), (total, 0));
    s.stop().await;
}

/// A refund the gateway answers as `failed` (how Stripe reports one it cannot make) is
/// not recorded as made: the cancel answers `payment_failed`, no seat is freed, the
/// refund stays open and is retried (the same key replays the failure), and an
/// admin's `retry` has it made under a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_gateway_answers_failed_is_not_recorded_as_made() {
    // every retry looks the refund up first, as one open for an hour does
    let (f, s, mut c, seats, b) = paid_for_refunds(|c| c.refund_lookup_after = 0).await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    fault(&f, Step::Refund, Fault::RefundFails);
    let cancel = json!({"locator": loc, "request_id": "c1", "seats": [seats[0]]});
    assert_eq!(c.reason("booking.cancel", cancel).await, "payment_failed");
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.refunded(), 0, "{l:?}");
    assert_eq!(
        l.intents[0].refunds.len(),
        1,
        "one refund, asked twice under its key"
    );
    let kept = store_booking(&s, loc);
    assert_eq!(kept.status, jetway::domain::BookingStatus::Confirmed);
    assert!(kept.refund.is_none(), "{kept:?}");
    let open = admin.ok("admin.refunds.list", json!({})).await;
    let stuck = &open["refunds"][0];
    assert_eq!(stuck["failed_tries"], 2, "{stuck}");
    assert!(
        stuck["last_error"].as_str().unwrap().contains("failed"),
        "{stuck}"
    );
    let id = stuck["refund_id"].as_str().unwrap().to_owned();
    // once Stripe has forgotten the key, the look-up finds the failed refund under it:
    // that failure again, not one more failed refund per retry
    f.forget_keys();
    s.app().reconcile_payments(Duration::ZERO).await;
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(
        l.intents[0].refunds.len(),
        1,
        "asked again under a forgotten key: {l:?}"
    );
    f.clear_faults();
    resolve(&mut admin, json!(id), "retry").await;
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    let amount = l.intents[0].refunds[1].amount;
    assert!(amount > 0);
    assert_eq!(l.refunded(), amount, "{l:?}");
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    let order = c.ok("orders.list", json!({})).await;
    assert_eq!(order["orders"][0]["status"], "partially_refunded");
    assert_eq!(order["orders"][0]["refunded"]["amount"], amount);
    s.stop().await;
}

/// An empty webhook secret counts as none (anyone could sign with it): the endpoint
/// answers 404 as when unset. And an event id that is not shaped like Stripe's (one of
/// megabytes, say, kept for good once applied) is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_webhook_secret_signs_nothing_and_event_ids_are_bounded() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let event = |id: &str| {
        json!({"id": id, "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_x", "object": "payment_intent"}}}).to_string()
    };
    let s = Server::start_with(|c| c.stripe_webhook_secret = Some(String::new())).await;
    let e = event("evt_forged");
    let forged = jetway::payments::webhook::sign("", e.as_bytes(), now);
    assert_eq!(post_webhook(&s, &e, &forged).await, 404);
    s.stop().await;

    let s = Server::start_with(|c| c.stripe_webhook_secret = Some(WEBHOOK_SECRET.into())).await;
    let seen_before = s.app().store.webhook_seen("evt_ok").unwrap();
    assert!(!seen_before);
    for id in ["e".repeat(100_000), "evt with spaces".into()] {
        let e = event(&id);
        let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, e.as_bytes(), now);
        assert_eq!(
            post_webhook(&s, &e, &signed).await,
            400,
            "{}",
            &id[..20.min(id.len())]
        );
        assert!(!s.app().store.webhook_seen(&id).unwrap());
    }
    let e = event("evt_ok");
    let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, e.as_bytes(), now);
    assert_eq!(post_webhook(&s, &e, &signed).await, 200);
    assert!(s.app().store.webhook_seen("evt_ok").unwrap());
    s.stop().await;
}

/// Posts a signed Stripe event about a refund whose status changed (`kind`:
/// `charge.refund.updated`, `refund.failed`); returns the HTTP status.
async fn refund_event(s: &Server, event_id: &str, kind: &str, refund: &str) -> u16 {
    let event = json!({"id": event_id, "type": kind,
                       "data": {"object": {"id": refund, "object": "refund", "status": "failed"}}})
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = jetway::payments::webhook::sign(WEBHOOK_SECRET, event.as_bytes(), now);
    post_webhook(s, &event, &signed).await
}

/// After a reconciliation round, the money of a refund that failed later went back
/// (`owed` in all), nothing is left open, and the passenger's history says so.
async fn paid_back_again(f: &FakeStripe, s: &Server, c: &mut Client, owed: i64) {
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.refunded(), owed, "paid back once: {l:?}");
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    let types = history_types(c).await;
    assert_eq!(
        types[..2],
        ["refund_reissued", "refund_failed"],
        "{types:?}"
    );
}

/// A refund's failure told by a webhook while the refund's read is answered 404 by
/// something that is not Stripe (a proxy, a wrong base path): the event is not
/// acknowledged, so Stripe tells it again, and then the money is paid back. Any 404
/// used to read as "Stripe knows no such refund": the event was acknowledged, and the
/// failure lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_failure_told_while_a_proxy_answers_404_is_not_lost() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let cancel = json!({"locator": b["locator"], "request_id": "c1", "seats": [seats[0]]});
    let first = c.ok("booking.cancel", cancel).await;
    let owed = first["order"]["refunded"]["amount"].as_i64().unwrap();
    let made = f.ledger().intents[0].refunds[0].clone();
    assert!(f.fail_refund(&made.id));
    fault(&f, Step::RetrieveRefund, Fault::ForeignNotFound);
    let status = refund_event(&s, "evt_proxy", "refund.failed", &made.id).await;
    assert_eq!(
        status, 503,
        "acknowledged while the refund could not be read"
    );
    assert!(!s.app().store.webhook_seen("evt_proxy").unwrap());
    f.clear_faults();
    assert_eq!(
        refund_event(&s, "evt_proxy", "refund.failed", &made.id).await,
        200
    );
    paid_back_again(&f, &s, &mut c, owed).await;
    s.stop().await;
}

/// A refund Stripe fails days after it was made (and recorded) is paid back again
/// under a fresh key when its webhook comes, once however often it is told; a reissue
/// the gateway refuses too waits for an admin, and one an admin paid by other means
/// is closed without the gateway. The booking and order keep what was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_fails_after_it_was_made_is_paid_back_again() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    let cancel =
        |rid: &str, seat: &str| json!({"locator": loc, "request_id": rid, "seats": [seat]});
    let first = c.ok("booking.cancel", cancel("c1", &seats[0])).await;
    let owed = first["order"]["refunded"]["amount"].as_i64().unwrap();
    assert!(owed > 0, "{first}");
    let made = f.ledger().intents[0].refunds[0].clone();
    assert!(f.fail_refund(&made.id));
    assert_eq!(f.ledger().refunded(), 0);

    // the reissue is refused as well: it waits for an admin, the failure listed
    fault(&f, Step::Refund, Fault::RefundFails);
    assert_eq!(
        refund_event(&s, "evt_fail1", "charge.refund.updated", &made.id).await,
        200
    );
    let open = admin.ok("admin.refunds.list", json!({})).await;
    let reissue = &open["refunds"][0];
    assert_eq!(open["refunds"].as_array().unwrap().len(), 1, "{open}");
    assert_eq!(reissue["failed_later"], json!([made.id]), "{reissue}");
    assert_eq!(reissue["amount"]["amount"], owed);
    assert_ne!(
        reissue["gateway_key"].as_str(),
        made.idempotency_key.as_deref(),
        "a fresh key"
    );
    f.clear_faults();
    // under its key the gateway replays that refusal; an admin's retry pays it
    s.app().reconcile_payments(Duration::ZERO).await;
    assert_eq!(f.ledger().refunded(), 0);
    resolve(&mut admin, json!(reissue["refund_id"]), "retry").await;
    paid_back_again(&f, &s, &mut c, owed).await;

    // the same failure told again, by the same event or another one: nothing more
    for (id, kind) in [
        ("evt_fail1", "charge.refund.updated"),
        ("evt_fail2", "refund.failed"),
    ] {
        assert_eq!(refund_event(&s, id, kind, &made.id).await, 200);
    }
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(
        (l.intents[0].refunds.len(), l.refunded()),
        (3, owed),
        "{l:?}"
    );
    // a refund that did not fail, or is not this installation's: nothing
    let ok_now = l.intents[0].refunds[2].id.clone();
    assert_eq!(
        refund_event(&s, "evt_ok", "refund.updated", &ok_now).await,
        200
    );
    assert_eq!(
        refund_event(&s, "evt_none", "refund.failed", "re_unknown").await,
        200
    );
    assert!(s.app().store.open_refunds().unwrap().is_empty());

    // the other seat: its refund fails later, the reissue too, an admin pays elsewhere
    let second = c.ok("booking.cancel", cancel("c2", &seats[1])).await;
    let order = second["order"].clone();
    let made = f.ledger().intents[0].refunds[3].clone();
    assert!(f.fail_refund(&made.id));
    fault(&f, Step::Refund, Fault::RefundFails);
    assert_eq!(
        refund_event(&s, "evt_fail3", "refund.failed", &made.id).await,
        200
    );
    let id = first_open_refund(&mut admin).await;
    let closed = resolve(&mut admin, json!(id), "paid_elsewhere").await;
    assert_eq!(closed["refund"]["done"], true, "{closed}");
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    let orders = c.ok("orders.list", json!({})).await;
    assert_eq!(
        orders["orders"][0], order,
        "the order keeps what was recorded"
    );
    assert_eq!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Refunded
    );
    // told again after the admin closed it: not reopened
    f.clear_faults();
    assert_eq!(
        refund_event(&s, "evt_fail4", "charge.refund.updated", &made.id).await,
        200
    );
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    assert_eq!(
        f.ledger().refunded(),
        owed,
        "only the first seat's money went back"
    );
    s.stop().await;
}

/// A refund Stripe fails in the moment between making it (`succeeded`) and Jetway
/// recording it: the failure's webhook, arriving while the booking's refund is being
/// made, is answered 503 (not acknowledged, Stripe tells it again), and told again
/// once the record is closed it pays the money back. Without the 503 the failure
/// would be acknowledged against an open record and the money never paid back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_fails_before_its_record_is_told_again_and_paid_back() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = b["locator"].clone();
    // the refund is made, then read again as it is now; that answer (`succeeded`)
    // is held back while Stripe fails the refund
    fault(&f, Step::RetrieveRefund, Fault::AnswerHeld);
    let cancel = json!({"locator": loc, "request_id": "c1", "seats": [seats[0]]});
    let cancelling = tokio::spawn(async move {
        let r = c.ok("booking.cancel", cancel).await;
        (c, r)
    });
    eventually("the refund made and read again", || async {
        f.answers_held() == 1
    })
    .await;
    f.clear_faults();
    let made = f.ledger().intents[0].refunds[0].clone();
    assert_eq!(made.status, "succeeded");
    assert!(f.fail_refund(&made.id));
    assert_eq!(
        refund_event(&s, "evt_early", "refund.failed", &made.id).await,
        503,
        "not acknowledged while the refund is being recorded"
    );
    assert!(!s.app().store.webhook_seen("evt_early").unwrap());
    f.release_answers(1);
    let (mut c, first) = cancelling.await.unwrap();
    let owed = first["order"]["refunded"]["amount"].as_i64().unwrap();
    assert!(owed > 0, "{first}");
    assert_eq!(f.ledger().refunded(), 0, "the refund failed");
    // Stripe's retry of the same event
    assert_eq!(
        refund_event(&s, "evt_early", "refund.failed", &made.id).await,
        200
    );
    assert!(s.app().store.webhook_seen("evt_early").unwrap());
    paid_back_again(&f, &s, &mut c, owed).await;
    s.stop().await;
}

/// A refund without our metadata (so without a key) that fails while a refund of its
/// payment's booking is being made cannot be told from the one being made: its webhook
/// is answered 503 until the record is closed, then acknowledged, reopening nothing
/// it did not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_without_our_metadata_waits_while_its_booking_is_refunded() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let other = legacy_refund(&f, 500).await;
    assert!(f.fail_refund(&other));
    fault(&f, Step::RetrieveRefund, Fault::AnswerHeld);
    let cancel = json!({"locator": b["locator"], "request_id": "c1", "seats": [seats[0]]});
    let cancelling = tokio::spawn(async move { c.ok("booking.cancel", cancel).await });
    eventually("the refund made and read again", || async {
        f.answers_held() == 1
    })
    .await;
    f.clear_faults();
    assert_eq!(
        refund_event(&s, "evt_other", "refund.failed", &other).await,
        503,
        "not acknowledged while a refund of its booking is being recorded"
    );
    f.release_answers(1);
    let first = cancelling.await.unwrap();
    let owed = first["order"]["refunded"]["amount"].as_i64().unwrap();
    assert_eq!(
        refund_event(&s, "evt_other", "refund.failed", &other).await,
        200
    );
    assert!(s.app().store.webhook_seen("evt_other").unwrap());
    let l = f.ledger();
    assert_eq!(l.refunded(), owed, "only the cancel's refund: {l:?}");
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    s.stop().await;
}

/// A refund answered `pending` whose check failed (as if its answer were lost), and
/// which Stripe failed before the retry: the retry's replayed `pending` answer is read
/// again and not recorded as made; an admin's retry pays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_pending_refund_that_failed_since_is_not_recorded() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    fault(&f, Step::Refund, Fault::RefundPending);
    fault(&f, Step::RetrieveRefund, Fault::Fail);
    let cancel = json!({"locator": loc, "request_id": "c1", "seats": [seats[0]]});
    assert_eq!(c.reason("booking.cancel", cancel).await, "payment_failed");
    let pending = f.ledger().intents[0].refunds[0].clone();
    assert_eq!(pending.status, "pending");
    assert!(f.fail_refund(&pending.id));
    f.clear_faults();
    s.app().reconcile_payments(Duration::ZERO).await;
    assert_eq!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Confirmed,
        "not recorded"
    );
    // its failure told while the record waits for an admin: acknowledged (Stripe
    // would otherwise tell again for days), and nothing changes
    assert_eq!(
        refund_event(&s, "evt_waiting", "refund.failed", &pending.id).await,
        200
    );
    let open = admin.ok("admin.refunds.list", json!({})).await;
    let stuck = &open["refunds"][0];
    assert_eq!(open["refunds"].as_array().unwrap().len(), 1, "{open}");
    assert!(stuck.get("failed_later").is_none(), "{stuck}");
    assert!(
        stuck["last_error"].as_str().unwrap().contains("failed"),
        "{stuck}"
    );
    resolve(&mut admin, json!(stuck["refund_id"]), "retry").await;
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.intents[0].refunds.len(), 2, "{l:?}");
    let order = c.ok("orders.list", json!({})).await;
    assert_eq!(order["orders"][0]["refunded"]["amount"], l.refunded());
    assert!(l.refunded() > 0);
    s.stop().await;
}

/// A refund made under its first key after an admin's retry moved it to a fresh one
/// is found by the ask under the fresh key and recorded (as in
/// `an_admins_retry_finds_the_refund_an_earlier_key_made`); when Stripe fails that
/// refund later, it is paid back again: the record remembers which gateway refund made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_made_under_an_earlier_key_that_fails_later_is_paid_back_again() {
    let (f, s, ..) = first_seat_refused(1, Fault::Timeout).await;
    let (first_key, owed) = retried_after_a_timeout(&f, &s).await;
    made_late(&f, &first_key, owed).await;
    s.app().reconcile_payments(Duration::ZERO).await;
    assert!(s.app().store.open_refunds().unwrap().is_empty(), "recorded");
    let first = f.ledger().intents[0].refunds[0].clone();
    assert_eq!(
        first.idempotency_key.as_deref(),
        Some(first_key.as_str()),
        "its first key"
    );
    assert!(f.fail_refund(&first.id));
    assert_eq!(
        refund_event(&s, "evt_early", "refund.failed", &first.id).await,
        200
    );
    let l = f.ledger();
    assert_eq!(l.refunded(), owed, "paid back again: {l:?}");
    assert_eq!(l.intents[0].refunds.len(), 2, "{l:?}");
    s.stop().await;
}

/// A refund refused under an admin's fresh key while the first key's refund went
/// through late: the record is made by the first one, and the refused one's failure,
/// told by its webhook, reopens nothing and pays nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_of_a_refund_that_did_not_make_its_record_reopens_nothing() {
    let (f, s, mut c, ..) = first_seat_refused(1, Fault::Timeout).await;
    let (first_key, owed) = retried_after_a_timeout(&f, &s).await;
    // the fresh key's refund fails, then the timed-out first call is made after all
    fault(&f, Step::Refund, Fault::RefundFails);
    s.app().reconcile_payments(Duration::ZERO).await;
    f.clear_faults();
    made_late(&f, &first_key, owed).await;
    s.app().reconcile_payments(Duration::ZERO).await;
    assert!(s.app().store.open_refunds().unwrap().is_empty(), "recorded");
    let refused = f.ledger().intents[0]
        .refunds
        .iter()
        .find(|r| r.status == "failed")
        .unwrap()
        .id
        .clone();
    assert_eq!(
        refund_event(&s, "evt_refused", "refund.failed", &refused).await,
        200
    );
    s.app().reconcile_payments(Duration::ZERO).await;
    assert_eq!(f.ledger().refunded(), owed);
    let types = history_types(&mut c).await;
    assert!(!types.iter().any(|t| t == "refund_failed"), "{types:?}");
    s.stop().await;
}

/// A server paying through a fake Stripe whose confirm takes 1.5 s, an admin's
/// client, and a booking's flight id and held booking whose `booking.pay` is being
/// charged (the confirm has reached the gateway), with the pay's answer to come.
async fn paying_slowly() -> (
    FakeStripe,
    Server,
    Client,
    Value,
    Value,
    tokio::task::JoinHandle<Value>,
) {
    let (f, s) = stripe_server(|c| {
        c.reconcile_interval = 3600;
        c.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let mut c = s.client().await;
    let (fid, _seats, b) = booked_user(&mut c, 1, "economy").await;
    fault(&f, Step::Confirm, Fault::Slow(Duration::from_millis(1500)));
    let loc = b["locator"].clone();
    let paying =
        tokio::spawn(async move { c.call("booking.pay", pay(&loc, "pm_card_visa", "p")).await });
    eventually("the charge is asked", || async {
        f.received(Step::Confirm) > 0
    })
    .await;
    let admin = admin_client(&s).await;
    (f, s, admin, json!(fid), b, paying)
}

/// The pay's answer is `invalid_state` naming `why`, its charge was refunded in full
/// and nothing is left open.
async fn charge_refunded(
    f: &FakeStripe,
    s: &Server,
    paying: tokio::task::JoinHandle<Value>,
    why: &str,
) {
    let r = paying.await.unwrap();
    assert_eq!(r["error"]["data"]["reason"], "invalid_state", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
    let l = f.ledger();
    assert!(l.charged() > 0);
    assert_eq!(l.charged(), l.refunded(), "{l:?}");
    assert!(s.app().store.open_attempts().unwrap().is_empty());
    assert!(s.app().store.open_refunds().unwrap().is_empty());
}

/// An airline cancellation that comes while a payment is being charged ends the
/// payment: the charge is refunded, and the pay's answer names the cancellation (not
/// a hold that ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_ended_by_the_airlines_cancellation_says_so() {
    let (f, s, mut admin, fid, _b, paying) = paying_slowly().await;
    admin
        .ok(
            "admin.flights.cancel",
            json!({"flight_id": fid, "reason": "strike"}),
        )
        .await;
    charge_refunded(&f, &s, paying, "airline cancelled the flight").await;
    s.stop().await;
}

/// A flight that begins boarding and departs while a payment is being charged sells
/// nothing more: the charge is refunded and the booking is not confirmed (before, it
/// was confirmed after departure, and an offered waitlist entry read `expired` while
/// its booking was charged and confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_made_while_the_flight_departs_is_refunded_not_confirmed() {
    let (f, s, mut admin, fid, b, paying) = paying_slowly().await;
    for status in ["boarding", "departed"] {
        let r = admin
            .ok(
                "admin.flights.update",
                json!({"flight_id": fid, "status": status}),
            )
            .await;
        assert_eq!(r["flight"]["status"], status, "{r}");
    }
    charge_refunded(&f, &s, paying, "closed for sale").await;
    assert_ne!(
        store_booking(&s, &b["locator"]).status,
        jetway::domain::BookingStatus::Confirmed
    );
    s.stop().await;
}

/// A pay sent again while an earlier charge is still unsettled, after the flight
/// began boarding: the answer says the charge is refunded if made (it used to promise
/// a confirmation that can no longer happen), and it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_after_boarding_with_a_charge_unsettled_says_it_will_be_refunded() {
    let (f, s, mut c, fid, b) = first_pay_late_with_admin().await;
    let loc = &b["locator"];
    let mut admin = admin_client(&s).await;
    admin
        .ok(
            "admin.flights.update",
            json!({"flight_id": fid, "status": "boarding"}),
        )
        .await;
    let e = c.err("booking.pay", pay(loc, "pm_card_visa", "p2")).await;
    assert_eq!(e["data"]["reason"], "payment_failed", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("refunded if it was charged (the flight no longer takes payments)"),
        "{message}"
    );
    late_charge_refunded(&f, &s, &b).await;
    assert_ne!(
        store_booking(&s, loc).status,
        jetway::domain::BookingStatus::Confirmed
    );
    s.stop().await;
}

/// A refund Stripe answers `pending` is watched by the reconciler until it settles:
/// one that fails later is paid back again without any webhook, and one that
/// succeeds is no longer watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_refund_is_watched_until_it_settles() {
    let (f, s, mut c, seats, b) = paid_for_refunds(|_| {}).await;
    let loc = &b["locator"];
    let watched = || s.app().store.pending_refunds().unwrap();
    fault(&f, Step::Refund, Fault::RefundPending);
    let cancel =
        |rid: &str, seat: &str| json!({"locator": loc, "request_id": rid, "seats": [seat]});
    let first = c.ok("booking.cancel", cancel("c1", &seats[0])).await;
    let owed = first["order"]["refunded"]["amount"].as_i64().unwrap();
    let made = f.ledger().intents[0].refunds[0].clone();
    assert_eq!(made.status, "pending");
    assert_eq!(watched().len(), 1);
    assert_eq!(watched()[0].0, made.id);
    s.app().watch_pending_refunds().await;
    assert_eq!(watched().len(), 1, "still pending: still watched");
    // a gateway that does not answer ends the round; the refund stays watched
    f.clear_faults();
    fault(&f, Step::RetrieveRefund, Fault::Fail);
    s.app().watch_pending_refunds().await;
    assert_eq!(watched().len(), 1);

    f.clear_faults();
    assert!(f.fail_refund(&made.id));
    s.app().watch_pending_refunds().await;
    paid_back_again(&f, &s, &mut c, owed).await;
    assert!(watched().is_empty(), "{:?}", watched());

    fault(&f, Step::Refund, Fault::RefundPending);
    c.ok("booking.cancel", cancel("c2", &seats[1])).await;
    let second = f.ledger().intents[0].refunds.last().unwrap().clone();
    assert_eq!(watched().len(), 1);
    assert!(f.settle_refund(&second.id));
    s.app().watch_pending_refunds().await;
    assert!(watched().is_empty(), "settled: no longer watched");
    let l = f.ledger();
    assert_eq!(l.refunded(), l.charged(), "{l:?}");
    s.stop().await;
}

/// Writes a refund record `id` of 10.00 of the booking's charge, recorded as made by
/// the gateway refund `made` while it was pending (so watched).
fn recorded_pending(f: &FakeStripe, s: &Server, b: &Value, id: &str, made: &str) {
    recorded_made(f, s, b, (id, made), true);
}

/// [`recorded_pending`], or recorded as made and settled when not `pending`.
fn recorded_made(f: &FakeStripe, s: &Server, b: &Value, (id, made): (&str, &str), pending: bool) {
    let booking = store_booking(s, &b["locator"]);
    let pi = f.ledger().intents[0].id.clone();
    s.store_refund(id, &booking, &pi, (1000, "c-old"), |r| {
        r.done = true;
        r.made_ref = Some(made.to_owned());
        r.made_pending = pending;
    });
}

/// A refund without our metadata (an older release's, resent as it was first asked),
/// recorded as made and settled, that fails days later: its webhook carries no key,
/// so the record is found by the gateway refund that made it, and the money is paid
/// back again. The same failure told again while it is being paid back is
/// acknowledged at once, and pays nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_refund_without_our_metadata_that_fails_later_is_paid_back_by_its_webhook() {
    let (f, s, _c, _seats, b) = paid_for_refunds(|_| {}).await;
    let made = legacy_refund(&f, 1000).await;
    recorded_made(&f, &s, &b, ("refund-legacy", &made), false);
    assert!(f.fail_refund(&made));
    fault(&f, Step::Refund, Fault::AnswerHeld);
    let told_again = async {
        eventually("the money asked for again", || async {
            f.answers_held() == 1
        })
        .await;
        let again = refund_event(&s, "evt_legacy_again", "refund.failed", &made).await;
        f.release_answers(1);
        again
    };
    let (first, again) = tokio::join!(
        refund_event(&s, "evt_legacy", "refund.failed", &made),
        told_again
    );
    assert_eq!((first, again), (200, 200));
    f.clear_faults();
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.refunded(), 1000, "paid back again: {l:?}");
    let r = s
        .app()
        .store
        .refund_by_key("refund-legacy")
        .unwrap()
        .unwrap();
    assert!(r.done, "{r:?}");
    assert_eq!(r.failed_later, vec![made]);
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    s.stop().await;
}

/// A pending refund recorded without our metadata (an older release's, resent as it
/// was first asked) carries no key to find its record by: the watch ties it to its
/// record by the gateway refund that made it, and a late failure is paid back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_refund_without_our_metadata_is_reopened_by_its_record() {
    let (f, s, _c, _seats, b) = paid_for_refunds(|_| {}).await;
    fault(&f, Step::Refund, Fault::RefundPending);
    let made = legacy_refund(&f, 1000).await;
    f.clear_faults();
    recorded_pending(&f, &s, &b, "refund-legacy", &made);
    assert!(f.fail_refund(&made));
    s.app().watch_pending_refunds().await;
    let l = f.ledger();
    assert_eq!(l.refunded(), 1000, "paid back again: {l:?}");
    assert!(s.app().store.pending_refunds().unwrap().is_empty());
    assert!(s.app().store.open_refunds().unwrap().is_empty());
    s.stop().await;
}

/// A refund answered `succeeded` whose reply was lost, and which Stripe failed before
/// the retry: the retry's replayed `succeeded` answer is read again and not recorded
/// as made (its webhook, while the record was open, changed nothing); it waits for an
/// admin like any refused refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_succeeded_refund_that_failed_since_is_not_recorded() {
    let (f, s, mut c, _, b) = first_seat_refused(1, Fault::LoseReply).await;
    let made = f.ledger().intents[0].refunds[0].clone();
    assert_eq!(made.status, "succeeded");
    assert!(f.fail_refund(&made.id));
    assert_eq!(
        refund_event(&s, "evt_lost", "refund.failed", &made.id).await,
        200
    );
    f.clear_faults();
    s.app().reconcile_payments(Duration::ZERO).await;
    let l = f.ledger();
    assert_eq!(l.refunded(), 0, "{l:?}");
    assert_eq!(
        l.intents[0].refunds.len(),
        1,
        "asked under its key only: {l:?}"
    );
    assert_eq!(
        store_booking(&s, &b["locator"]).status,
        jetway::domain::BookingStatus::Confirmed,
        "not recorded"
    );
    let open = s.app().store.open_refunds().unwrap();
    assert_eq!(open.len(), 1, "left for an admin: {open:?}");
    let orders = c.ok("orders.list", json!({})).await;
    assert_eq!(orders["orders"][0]["refunded"]["amount"], 0);
    s.stop().await;
}

/// A watched refund the gateway answers 404 for is no proof that it settled (another
/// account's key, say): it stays watched, as a payment the gateway does not know stays
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_refund_the_gateway_does_not_know_stays_watched() {
    let (f, s, _c, _seats, b) = paid_for_refunds(|_| {}).await;
    recorded_pending(&f, &s, &b, "rf-unknown", "re_nowhere");
    s.app().watch_pending_refunds().await;
    let watched = s.app().store.pending_refunds().unwrap();
    assert_eq!(
        watched,
        vec![("re_nowhere".to_owned(), "rf-unknown".to_owned())]
    );
    s.stop().await;
}
