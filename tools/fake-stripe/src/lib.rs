//! A fake Stripe for tests and soaks: the subset of Stripe's REST API that Jetway's
//! `payments::stripe` client speaks, with Stripe's idempotency semantics, a ledger a
//! test can inspect, and faults injected per step.
//!
//! Endpoints: `POST /v1/payment_intents` (create, unconfirmed),
//! `POST /v1/payment_intents/{id}/confirm`, `GET /v1/payment_intents/{id}`,
//! `POST /v1/payment_intents/{id}/cancel`, `POST /v1/refunds`,
//! `GET /v1/refunds?payment_intent=ID` (with each refund's metadata),
//! `GET /v1/refunds/{id}`. Payment methods:
//! `pm_card_visa`, `pm_card_mastercard`, `pm_card_amex` (and their `_debit` forms)
//! succeed; `pm_card_threeDSecure2Required` and `pm_card_authenticationRequired`
//! need the customer's authentication (3-D Secure): a confirm leaves them
//! `requires_action` with a `client_secret`, and [`FakeStripe::authenticate`] (or
//! `POST /_fake/authenticate/{id}`, `?fail=true` to fail it) plays the customer, as
//! Stripe.js would; any other `pm_...` is declined at confirm (402 `card_error`).
//!
//! Idempotency (as Stripe): a POST with an `Idempotency-Key` already seen with the same
//! endpoint and parameters gets the first response replayed, byte for byte (errors
//! included, once the endpoint started executing); with other parameters, 400
//! `idempotency_error`; while the first request is still executing, 409. Keys are
//! remembered for 24 hours ([`FakeStripe::forget_keys`], or `DELETE /_fake/keys`,
//! makes that time pass). Every key received is listed by [`FakeStripe::keys`].
//!
//! A PaymentIntent is locked while a confirm executes: a cancel or confirm arriving
//! meanwhile gets 429 `lock_timeout`, as from Stripe.
//!
//! Faults ([`Fault`]), per [`Step`], each with a rate (1.0: every request):
//! - `Slow(d)`: answered after `d`; if the client gave up first, nothing was done.
//! - `Fail`: 500 at once, nothing done, nothing remembered under the key.
//! - `Refuse`: 400, nothing done, nothing remembered under the key; after the key is
//!   looked at, as Stripe does (a key whose request finished gets its reply replayed,
//!   one still executing a 409).
//! - `Timeout`: never answered, nothing done.
//! - `LoseReply`: done, but never answered (the client times out).
//! - `ProcessLate(d)` (confirm): the PaymentIntent stays `requires_confirmation` (and
//!   locked) for `d`, then is charged whether or not the client still waits; the answer
//!   comes after `d`. With `d` above the client's timeout this is the race where a
//!   status read after a timeout sees an unconfirmed payment that is charged a moment later.
//!   (refund) The refund is made after `d`, whether or not the client still waits; its
//!   key is in flight until then (409 to a request under it), and no list shows it.
//! - `ForeignNotFound`: 404 at once with a JSON body that is not Stripe's error (a
//!   proxy's, a wrong base path's), nothing looked at.
//! - `AnswerHeld`: done at once, but answered only once the test lets it go
//!   ([`FakeStripe::release_answers`], or `POST /_fake/release_answers/{n}`): the
//!   window in which the gateway has acted and its caller does not know yet.
//! - `RefundFails` (refund): the refund is made with status `failed` (answered 200,
//!   remembered under its key) and moves no money, as Stripe reports a refund it
//!   could not make.
//! - `RefundPending` (refund): the refund is made with status `pending` (its money
//!   counts as going back). [`FakeStripe::fail_refund`] (or `POST
//!   /_fake/fail_refund/{id}`) later fails a refund that was made, as Stripe fails
//!   some days after answering them: its money comes back to the merchant, and what
//!   was answered and remembered under its key stays as it was. Sending the
//!   `charge.refund.updated` webhook is up to the test.
//!
//! Use it in-process ([`FakeStripe::start`], [`FakeStripe::set_fault`],
//! [`FakeStripe::ledger`]) or as a process (`fake-stripe --help`): the binary prints
//! `listening on http://ADDR` and serves the same control under `/_fake/`:
//! `GET /_fake/ledger`, `GET /_fake/keys`, `PUT /_fake/faults` with a JSON
//! [`FaultRule`] (`{"step":"confirm","fault":{"process_late":3000},"rate":0.1}`),
//! `DELETE /_fake/faults`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idempotency key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

const APPROVED: &[&str] = &[
    "pm_card_visa",
    "pm_card_mastercard",
    "pm_card_amex",
    "pm_card_visa_debit",
    "pm_card_mastercard_debit",
];

/// Payment methods whose confirm needs the customer's action.
const NEEDS_ACTION: &[&str] = &[
    "pm_card_threeDSecure2Required",
    "pm_card_authenticationRequired",
];

/// A step of the payment protocol, the unit of fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Create,
    Confirm,
    Retrieve,
    Cancel,
    Refund,
    /// Listing a PaymentIntent's refunds (`GET /v1/refunds`, no key).
    ListRefunds,
    /// Reading one refund (`GET /v1/refunds/{id}`, no key).
    RetrieveRefund,
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| format!("unknown step {s:?}"))
    }
}

/// What goes wrong at a step (see the crate doc). Durations are milliseconds in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    #[serde(with = "millis")]
    Slow(Duration),
    Fail,
    /// 400 `invalid_request_error`, nothing done, nothing remembered under the key: a
    /// request the gateway refuses once it has looked at its key.
    Refuse,
    Timeout,
    LoseReply,
    #[serde(with = "millis")]
    ProcessLate(Duration),
    /// (refund) The refund is answered, and remembered under its key, with status
    /// `failed` and a `failure_reason`, and no money goes back: how Stripe reports a
    /// refund it could not make.
    RefundFails,
    /// (refund) The refund is made and answered with status `pending`.
    RefundPending,
    /// Done at once, answered once released ([`FakeStripe::release_answers`]).
    AnswerHeld,
    /// Answered 404 with a JSON body that is not Stripe's error, as a proxy or a wrong
    /// base path answers: nothing is looked at.
    ForeignNotFound,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `fail`, `refuse`, `timeout`, `lose_reply`, `slow:MS`, `process_late:MS`,
    /// `refund_fails`, `refund_pending`, `answer_held`, `foreign_not_found`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, ms) = s.split_once(':').unwrap_or((s, ""));
        let d = || {
            ms.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{kind} needs milliseconds: {kind}:MS"))
        };
        Ok(match kind {
            "fail" => Fault::Fail,
            "refuse" => Fault::Refuse,
            "timeout" => Fault::Timeout,
            "lose_reply" => Fault::LoseReply,
            "slow" => Fault::Slow(d()?),
            "process_late" => Fault::ProcessLate(d()?),
            "refund_fails" => Fault::RefundFails,
            "refund_pending" => Fault::RefundPending,
            "answer_held" => Fault::AnswerHeld,
            "foreign_not_found" => Fault::ForeignNotFound,
            _ => return Err(format!("unknown fault {s:?}")),
        })
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A fault at a step, for a share of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    pub step: Step,
    pub fault: Fault,
    /// 0.0..=1.0; 1.0 when absent.
    #[serde(default = "always")]
    pub rate: f64,
}

fn always() -> f64 {
    1.0
}

impl std::str::FromStr for FaultRule {
    type Err = String;
    /// `STEP=FAULT[@RATE]`, e.g. `confirm=process_late:3000@0.2`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (step, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("expected STEP=FAULT[@RATE], got {s:?}"))?;
        let (fault, rate) = match rest.split_once('@') {
            Some((f, r)) => (f, r.parse().map_err(|_| format!("bad rate {r:?}"))?),
            None => (rest, 1.0),
        };
        Ok(FaultRule {
            step: step.parse()?,
            fault: fault.parse()?,
            rate,
        })
    }
}

/// One refund asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Stripe's status: `succeeded`, `pending` ([`Fault::RefundPending`]), or
    /// `failed` ([`Fault::RefundFails`], [`FakeStripe::fail_refund`]: no money went
    /// back).
    #[serde(default = "succeeded")]
    pub status: String,
}

fn succeeded() -> String {
    "succeeded".into()
}

/// One PaymentIntent and the money it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub amount: i64,
    pub payment_method: String,
    /// Stripe's status: `requires_confirmation`, `succeeded`, `requires_payment_method`,
    /// `canceled`.
    pub status: String,
    pub metadata: BTreeMap<String, String>,
    /// What was charged: `amount` once succeeded, else 0.
    pub charged: i64,
    pub refunds: Vec<Refund>,
}

impl Intent {
    pub fn refunded(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.status != "failed")
            .map(|r| r.amount)
            .sum()
    }
}

/// Every PaymentIntent, in creation order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub intents: Vec<Intent>,
}

impl Ledger {
    pub fn charged(&self) -> i64 {
        self.intents.iter().map(|i| i.charged).sum()
    }
    pub fn refunded(&self) -> i64 {
        self.intents.iter().map(Intent::refunded).sum()
    }
    /// The intents whose metadata `key` is `value` (e.g. `locator`).
    pub fn with_metadata<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = &'a Intent> + 'a {
        self.intents
            .iter()
            .filter(move |i| i.metadata.get(key).is_some_and(|v| v == value))
    }
}

/// An idempotency key received, with the step it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    pub step: Step,
    pub key: String,
}

type Reply = (StatusCode, Value);

enum Remembered {
    InFlight(String),
    Done {
        fingerprint: String,
        reply: Reply,
        at: Instant,
    },
}

#[derive(Default)]
struct Inner {
    intents: Vec<Intent>,
    by_id: HashMap<String, usize>,
    /// PaymentIntents with a confirm executing.
    locked: std::collections::HashSet<String>,
    keys: HashMap<String, Remembered>,
    key_log: Vec<KeyUse>,
    /// Requests received per step, keyed or not.
    received: HashMap<Step, usize>,
    faults: Vec<FaultRule>,
    /// One permit per answer held by [`Fault::AnswerHeld`] that may go.
    released: Released,
}

/// The answers held by [`Fault::AnswerHeld`]: one permit per answer let go, and how
/// many wait for one.
#[derive(Clone)]
struct Released {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Released {
    fn default() -> Self {
        Released {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            waiting: Arc::default(),
        }
    }
}

impl Released {
    async fn wait(&self) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Counts a held answer until it goes, or its request is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
        }
    }
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

/// A running fake Stripe; stops when dropped.
pub struct FakeStripe {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeStripe {
    /// Serves on a free loopback port.
    pub async fn start() -> std::io::Result<FakeStripe> {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeStripe> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeStripe {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the API base for a Stripe client.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the fault at `rule.step`.
    pub fn set_fault(&self, rule: FaultRule) {
        self.shared.set_fault(rule);
    }

    /// Every step works again.
    pub fn clear_faults(&self) {
        self.shared.0.lock().faults.clear();
    }

    pub fn ledger(&self) -> Ledger {
        self.shared.ledger()
    }

    /// Forgets every idempotency key, as Stripe does after 24 hours.
    pub fn forget_keys(&self) {
        self.shared.0.lock().keys.clear();
    }

    /// Every idempotency key received, in order (retries included).
    pub fn keys(&self) -> Vec<KeyUse> {
        self.shared.0.lock().key_log.clone()
    }

    /// How many requests of `step` were received so far (before any fault acts).
    pub fn received(&self, step: Step) -> usize {
        self.shared
            .0
            .lock()
            .received
            .get(&step)
            .copied()
            .unwrap_or(0)
    }

    /// The customer completes (`approve`) or fails the authentication of a
    /// PaymentIntent that requires action; `false` if it was in no such state.
    pub fn authenticate(&self, id: &str, approve: bool) -> bool {
        self.shared.authenticate(id, approve)
    }

    /// Fails a refund that was made (`succeeded` or `pending`), as Stripe does days
    /// later; `false` if there is no such refund, or it failed already.
    pub fn fail_refund(&self, id: &str) -> bool {
        self.shared.fail_refund(id)
    }

    /// Lets `n` answers held by [`Fault::AnswerHeld`] go (now, or as soon as they
    /// are ready).
    pub fn release_answers(&self, n: usize) {
        self.shared.release_answers(n);
    }

    /// How many answers held by [`Fault::AnswerHeld`] wait to be let go (their
    /// requests are done).
    pub fn answers_held(&self) -> usize {
        let waiting = self.shared.0.lock().released.waiting.clone();
        waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Settles a `pending` refund as `succeeded`; `false` if there is no such refund.
    pub fn settle_refund(&self, id: &str) -> bool {
        let mut g = self.shared.0.lock();
        let pending = g
            .intents
            .iter_mut()
            .flat_map(|i| i.refunds.iter_mut())
            .find(|r| r.id == id && r.status == "pending");
        pending.map(|r| r.status = "succeeded".into()).is_some()
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(create))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/{action}", post(act))
        .route("/v1/refunds", post(refund).get(list_refunds))
        .route("/v1/refunds/{id}", get(retrieve_refund))
        .route(
            "/_fake/fail_refund/{id}",
            post(
                |State(s): State<Shared>, Path(id): Path<String>| async move {
                    match s.fail_refund(&id) {
                        true => StatusCode::NO_CONTENT,
                        false => StatusCode::CONFLICT,
                    }
                },
            ),
        )
        .route(
            "/_fake/release_answers/{n}",
            post(
                |State(s): State<Shared>, Path(n): Path<usize>| async move {
                    s.release_answers(n);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_fake/ledger",
            get(|State(s): State<Shared>| async move { Json(s.ledger()) }),
        )
        .route(
            "/_fake/authenticate/{id}",
            post(
                |State(s): State<Shared>,
                 Path(id): Path<String>,
                 axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                    let approve = q.get("fail").is_none_or(|v| v != "true");
                    match s.authenticate(&id, approve) {
                        true => StatusCode::NO_CONTENT,
                        false => StatusCode::CONFLICT,
                    }
                },
            ),
        )
        .route(
            "/_fake/keys",
            get(|State(s): State<Shared>| async move { Json(s.0.lock().key_log.clone()) }).delete(
                |State(s): State<Shared>| async move {
                    s.0.lock().keys.clear();
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_fake/faults",
            put(
                |State(s): State<Shared>, Json(r): Json<FaultRule>| async move {
                    s.set_fault(r);
                    StatusCode::NO_CONTENT
                },
            )
            .delete(|State(s): State<Shared>| async move {
                s.0.lock().faults.clear();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(shared)
}

fn error(status: StatusCode, kind: &str, code: &str, message: String) -> Reply {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

fn pi_json(i: &Intent) -> Value {
    json!({
        "id": i.id, "object": "payment_intent", "amount": i.amount, "currency": "eur", "payment_method": i.payment_method,
        "status": i.status, "amount_received": i.charged, "metadata": i.metadata,
        "client_secret": format!("{}_secret_fake", i.id),
        "next_action": if i.status == "requires_action" {
            json!({"type": "use_stripe_sdk"})
        } else { Value::Null },
        "last_payment_error": if i.status == "requires_payment_method" {
            json!({"type": "card_error", "code": "card_declined", "message": "Your card was declined."})
        } else { Value::Null },
    })
}

fn refund_json(r: &Refund, intent: &str) -> Value {
    let mut v = json!({"id": r.id, "object": "refund", "amount": r.amount, "payment_intent": intent, "status": r.status, "metadata": r.metadata});
    if r.status == "failed" {
        v["failure_reason"] = json!("expired_or_canceled_card");
    }
    v
}

/// The `metadata[KEY]` form fields.
fn metadata(p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    p.iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((k.to_owned(), v.clone()))
        })
        .collect()
}

fn new_id(prefix: &str) -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("{prefix}_fake{n:032x}")
}

/// The outcome of executing a request: its reply, and whether Stripe would remember
/// it under the idempotency key (not for conflicts that stopped it before executing).
struct Outcome {
    reply: Reply,
    remember: bool,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome {
            reply,
            remember: true,
        }
    }
}

impl Shared {
    fn authenticate(&self, id: &str, approve: bool) -> bool {
        self.with_intent(id, |i, _| {
            if i.status != "requires_action" {
                return false;
            }
            if approve {
                i.status = "succeeded".into();
                i.charged = i.amount;
            } else {
                i.status = "requires_payment_method".into();
            }
            true
        })
        .unwrap_or(false)
    }

    fn release_answers(&self, n: usize) {
        self.0.lock().released.permits.add_permits(n);
    }

    fn set_fault(&self, rule: FaultRule) {
        let mut g = self.0.lock();
        g.faults.retain(|r| r.step != rule.step);
        g.faults.push(rule);
    }

    fn ledger(&self) -> Ledger {
        Ledger {
            intents: self.0.lock().intents.clone(),
        }
    }

    fn fault(&self, step: Step) -> Option<Fault> {
        let rule = self
            .0
            .lock()
            .faults
            .iter()
            .find(|r| r.step == step)
            .copied()?;
        (rand::thread_rng().gen::<f64>() < rule.rate).then_some(rule.fault)
    }

    fn with_intent<R>(&self, id: &str, f: impl FnOnce(&mut Intent, &mut Inner) -> R) -> Option<R> {
        let mut g = self.0.lock();
        let idx = *g.by_id.get(id)?;
        let mut intent = g.intents[idx].clone();
        let r = f(&mut intent, &mut g);
        g.intents[idx] = intent;
        Some(r)
    }

    fn missing(id: &str) -> Reply {
        error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            format!("No such payment_intent: '{id}'"),
        )
    }

    fn unexpected_state(i: &Intent, action: &str) -> Reply {
        let (status, mut body) = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "payment_intent_unexpected_state",
            format!(
                "You cannot {action} this PaymentIntent because it has a status of {}.",
                i.status
            ),
        );
        body["error"]["payment_intent"] = pi_json(i);
        (status, body)
    }

    fn locked(id: &str) -> Outcome {
        Outcome {
            reply: error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                "lock_timeout",
                format!("This object cannot be accessed right now because another API request or Stripe process is currently accessing it: {id}"),
            ),
            remember: false,
        }
    }

    fn create(&self, p: &BTreeMap<String, String>) -> Outcome {
        let Some(amount) = p
            .get("amount")
            .and_then(|a| a.parse::<i64>().ok())
            .filter(|a| *a > 0)
        else {
            return Outcome {
                reply: error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "parameter_invalid_integer",
                    "amount must be a positive integer".into(),
                ),
                remember: false,
            };
        };
        let metadata = metadata(p);
        let intent = Intent {
            id: new_id("pi"),
            amount,
            payment_method: p.get("payment_method").cloned().unwrap_or_default(),
            status: "requires_confirmation".into(),
            metadata,
            charged: 0,
            refunds: vec![],
        };
        let body = pi_json(&intent);
        let mut g = self.0.lock();
        let n = g.intents.len();
        g.by_id.insert(intent.id.clone(), n);
        g.intents.push(intent);
        (StatusCode::OK, body).into()
    }

    /// Locks the intent for a confirm; `Err` if it cannot be confirmed now.
    fn begin_confirm(&self, id: &str) -> Result<(), Outcome> {
        self.with_intent(id, |i, g| {
            if g.locked.contains(id) {
                return Err(Self::locked(id));
            }
            if i.status != "requires_confirmation" && i.status != "requires_payment_method" {
                return Err(Self::unexpected_state(i, "confirm").into());
            }
            g.locked.insert(id.to_owned());
            Ok(())
        })
        .unwrap_or_else(|| Err(Self::missing(id).into()))
    }

    fn finish_confirm(&self, id: &str) -> Outcome {
        self.with_intent(id, |i, g| {
            g.locked.remove(id);
            if NEEDS_ACTION.contains(&i.payment_method.as_str()) {
                i.status = "requires_action".into();
                (StatusCode::OK, pi_json(i)).into()
            } else if APPROVED.contains(&i.payment_method.as_str()) {
                i.status = "succeeded".into();
                i.charged = i.amount;
                (StatusCode::OK, pi_json(i)).into()
            } else {
                i.status = "requires_payment_method".into();
                let (s, mut body) = error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "card_declined",
                    "Your card was declined.".into(),
                );
                body["error"]["payment_intent"] = pi_json(i);
                (s, body).into()
            }
        })
        .unwrap_or_else(|| Self::missing(id).into())
    }

    fn retrieve(&self, id: &str) -> Outcome {
        self.with_intent(id, |i, _| (StatusCode::OK, pi_json(i)).into())
            .unwrap_or_else(|| Self::missing(id).into())
    }

    fn cancel(&self, id: &str) -> Outcome {
        self.with_intent(id, |i, g| {
            if g.locked.contains(id) {
                return Self::locked(id);
            }
            if i.status == "succeeded" || i.status == "canceled" {
                return Self::unexpected_state(i, "cancel").into();
            }
            i.status = "canceled".into();
            (StatusCode::OK, pi_json(i)).into()
        })
        .unwrap_or_else(|| Self::missing(id).into())
    }

    fn fail_refund(&self, id: &str) -> bool {
        let mut g = self.0.lock();
        let made = g
            .intents
            .iter_mut()
            .flat_map(|i| i.refunds.iter_mut())
            .find(|r| r.id == id && r.status != "failed");
        made.map(|r| r.status = "failed".into()).is_some()
    }

    /// One refund as it is now.
    fn retrieve_refund(&self, id: &str) -> Reply {
        let g = self.0.lock();
        let found = g.intents.iter().find_map(|i| {
            i.refunds
                .iter()
                .find(|r| r.id == id)
                .map(|r| refund_json(r, &i.id))
        });
        match found {
            Some(body) => (StatusCode::OK, body),
            None => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                format!("No such refund: '{id}'"),
            ),
        }
    }

    fn refund(
        &self,
        p: &BTreeMap<String, String>,
        key: Option<&str>,
        fault: Option<Fault>,
    ) -> Outcome {
        let id = p.get("payment_intent").cloned().unwrap_or_default();
        self.with_intent(&id, |i, _| {
            if i.status != "succeeded" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "charge_not_succeeded",
                    format!("PaymentIntent {id} has no successful charge to refund."),
                )
                .into();
            }
            let left = i.charged - i.refunded();
            let amount = match p.get("amount") {
                None => left,
                Some(a) => match a.parse::<i64>() {
                    Ok(a) if a > 0 => a,
                    _ => {
                        return Outcome {
                            reply: error(StatusCode::BAD_REQUEST, "invalid_request_error", "parameter_invalid_integer", "amount must be a positive integer".into()),
                            remember: false,
                        }
                    }
                },
            };
            if amount > left {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "charge_already_refunded",
                    format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"),
                )
                .into();
            }
            let r = Refund {
                id: new_id("re"),
                amount,
                idempotency_key: key.map(str::to_owned),
                metadata: metadata(p),
                status: match fault {
                    Some(Fault::RefundFails) => "failed",
                    Some(Fault::RefundPending) => "pending",
                    _ => "succeeded",
                }
                .into(),
            };
            let body = refund_json(&r, &id);
            i.refunds.push(r);
            (StatusCode::OK, body).into()
        })
        .unwrap_or_else(|| Self::missing(&id).into())
    }

    /// Looks `key` up: `Some(reply)` to answer without executing, `None` to execute
    /// (the key is then marked in flight).
    fn claim_key(&self, key: &str, fingerprint: &str) -> Option<Reply> {
        let mut g = self.0.lock();
        let now = Instant::now();
        g.keys.retain(
            |_, r| !matches!(r, Remembered::Done { at, .. } if now.duration_since(*at) > KEY_TTL),
        );
        match g.keys.get(key) {
            None => {
                g.keys.insert(key.to_owned(), Remembered::InFlight(fingerprint.to_owned()));
                None
            }
            Some(Remembered::InFlight(_)) => Some(error(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key.".into(),
            )),
            Some(Remembered::Done { fingerprint: f, reply, .. }) if f == fingerprint => Some(reply.clone()),
            Some(Remembered::Done { .. }) => Some(error(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "idempotency_key_reused",
                format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
            )),
        }
    }

    fn settle_key(&self, key: &str, outcome: &Outcome) {
        let mut g = self.0.lock();
        let fingerprint = match g.keys.remove(key) {
            Some(Remembered::InFlight(f)) => f,
            _ => return,
        };
        if outcome.remember {
            g.keys.insert(
                key.to_owned(),
                Remembered::Done {
                    fingerprint,
                    reply: outcome.reply.clone(),
                    at: Instant::now(),
                },
            );
        }
    }
}

/// One request through faults, idempotency and execution. Execution runs in its own
/// task: a client that gives up never cancels it halfway.
async fn serve(
    s: Shared,
    step: Step,
    headers: &HeaderMap,
    params: BTreeMap<String, String>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned);
    *s.0.lock().received.entry(step).or_default() += 1;
    if let Some(k) = &key {
        s.0.lock().key_log.push(KeyUse {
            step,
            key: k.clone(),
        });
    }
    let fault = s.fault(step);
    match fault {
        Some(Fault::Fail) => {
            let (st, body) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "injected",
                "injected failure".into(),
            );
            return (st, Json(body)).into_response();
        }
        Some(Fault::Timeout) => std::future::pending::<()>().await,
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::ForeignNotFound) => {
            let body = json!({"message": "no route for this path"});
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
        _ => {}
    }
    let fingerprint = format!("{step:?} {params:?}");
    let keyed = !matches!(
        step,
        Step::Retrieve | Step::RetrieveRefund | Step::ListRefunds
    );
    if let Some(k) = key.as_deref().filter(|_| keyed) {
        if let Some((st, body)) = s.claim_key(k, &fingerprint) {
            return (st, Json(body)).into_response();
        }
    }
    if fault == Some(Fault::Refuse) {
        // as Stripe refuses a request it looked at: after the key, nothing remembered
        let refused = "injected refusal".into();
        let reply = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "injected",
            refused,
        );
        if let Some(k) = key.as_deref().filter(|_| keyed) {
            s.settle_key(
                k,
                &Outcome {
                    reply: reply.clone(),
                    remember: false,
                },
            );
        }
        return (reply.0, Json(reply.1)).into_response();
    }
    let late = match fault {
        Some(Fault::ProcessLate(d)) => Some(d),
        _ => None,
    };
    let released = s.0.lock().released.clone();
    let task = tokio::spawn(async move {
        let outcome = match step {
            Step::Create => s.create(&params),
            Step::Retrieve => s.retrieve(&params["id"]),
            Step::Cancel => s.cancel(&params["id"]),
            Step::Refund => {
                if let Some(d) = late {
                    tokio::time::sleep(d).await;
                }
                s.refund(&params, key.as_deref(), fault)
            }
            Step::ListRefunds => s.list_refunds(&params).into(),
            Step::RetrieveRefund => s.retrieve_refund(&params["id"]).into(),
            Step::Confirm => {
                let id = &params["id"];
                match s.begin_confirm(id) {
                    Err(o) => o,
                    Ok(()) => {
                        if let Some(d) = late {
                            tokio::time::sleep(d).await;
                        }
                        s.finish_confirm(id)
                    }
                }
            }
        };
        if let Some(k) = key.as_deref().filter(|_| keyed) {
            s.settle_key(k, &outcome);
        }
        outcome.reply
    });
    let Ok((st, body)) = task.await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if fault == Some(Fault::LoseReply) {
        std::future::pending::<()>().await;
    }
    if fault == Some(Fault::AnswerHeld) {
        released.wait().await;
    }
    (st, Json(body)).into_response()
}

type Form = axum::body::Bytes;

fn params(form: Option<Form>, id: Option<String>) -> BTreeMap<String, String> {
    let mut p: BTreeMap<_, _> = form
        .and_then(|f| serde_urlencoded::from_bytes::<Vec<(String, String)>>(&f).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(id) = id {
        p.insert("id".into(), id);
    }
    p
}

async fn create(State(s): State<Shared>, h: HeaderMap, f: Form) -> Response {
    serve(s, Step::Create, &h, params(Some(f), None)).await
}

async fn retrieve(State(s): State<Shared>, Path(id): Path<String>, h: HeaderMap) -> Response {
    serve(s, Step::Retrieve, &h, params(None, Some(id))).await
}

async fn retrieve_refund(
    State(s): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    serve(s, Step::RetrieveRefund, &h, params(None, Some(id))).await
}

/// `confirm` or `cancel`.
async fn act(
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    h: HeaderMap,
    f: Form,
) -> Response {
    let step = match action.as_str() {
        "confirm" => Step::Confirm,
        "cancel" => Step::Cancel,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    serve(s, step, &h, params(Some(f), Some(id))).await
}

/// `GET /v1/refunds?payment_intent=ID&limit=N&starting_after=REFUND`, newest first.
async fn list_refunds(
    State(s): State<Shared>,
    h: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    serve(s, Step::ListRefunds, &h, q).await
}

impl Shared {
    /// A PaymentIntent's refunds, newest first, a page of them.
    fn list_refunds(&self, q: &BTreeMap<String, String>) -> Reply {
        let intent = q.get("payment_intent").cloned().unwrap_or_default();
        let limit = q
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(10)
            .clamp(1, 100);
        let Some(mut refunds) = self.with_intent(&intent, |i, _| i.refunds.clone()) else {
            return Shared::missing(&intent);
        };
        refunds.reverse();
        if let Some(after) = q.get("starting_after") {
            let at = refunds.iter().position(|r| &r.id == after);
            refunds.drain(..at.map_or(refunds.len(), |a| a + 1));
        }
        let has_more = refunds.len() > limit;
        let data: Vec<Value> = refunds
            .iter()
            .take(limit)
            .map(|r| refund_json(r, &intent))
            .collect();
        (
            StatusCode::OK,
            json!({"object": "list", "data": data, "has_more": has_more}),
        )
    }
}

async fn refund(State(s): State<Shared>, h: HeaderMap, f: Form) -> Response {
    serve(s, Step::Refund, &h, params(Some(f), None)).await
}
