//! The two-part announcement of a group commit, through the use cases: once the
//! sync is durable, each requester gets its own pushes (`seats.changed` of the flight
//! it watches, with every earlier version of the sync it lacks, then
//! `booking.updated`) before its reply; the flight's other watchers get the same
//! versions afterwards, each once and in order. (That the waiters are woken before
//! the fan-out runs is `store::commit`'s `a_waiter_is_woken_before_the_later_part_runs`.)

mod common;

use common::faulty::*;
use jetway::app::{App, AuthSession};
use jetway::fanout::{outbox, Next, Outbox, OutboxReceiver, QueueLimits};
use jetway::protocol::params::decode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Other watchers of the flight.
const WATCHERS: usize = 200;

/// A logged-in connection.
struct Conn {
    session: AuthSession,
    outbox: Outbox,
    rx: OutboxReceiver,
}

async fn connect(app: &App, name: &str) -> Conn {
    let (outbox, rx) = outbox(QueueLimits::default());
    let mut session = None;
    let checked = app
        .check_registration(
            decode(json!({"username": name, "password": common::PASSWORD})).unwrap(),
        )
        .await
        .unwrap();
    app.register(checked, &outbox, &mut session).await.unwrap();
    Conn {
        session: *session.unwrap(),
        outbox,
        rx,
    }
}

async fn subscribe(app: &App, flight: &str, outbox: &Outbox) {
    let mut subs = Vec::new();
    let p = decode(json!({ "flight_id": flight })).unwrap();
    app.subscribe(None, p, outbox, &mut subs).await.unwrap();
}

/// Every frame queued on a connection since the last look, as `(method, version)`,
/// but for `flight.presence`.
fn frames(rx: &mut OutboxReceiver) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::new();
    while let Some(Next::Frames(fs)) = rx.try_next() {
        for f in fs {
            let v: Value = serde_json::from_str(f.as_str()).unwrap();
            let method = v["method"].as_str().unwrap_or("reply").to_owned();
            // viewer counts come on their own clock
            if method != "flight.presence" {
                out.push((method, v["params"]["version"].as_u64()));
            }
        }
    }
    out
}

fn seats_changed(versions: impl IntoIterator<Item = u64>) -> Vec<(String, Option<u64>)> {
    versions
        .into_iter()
        .map(|v| ("seats.changed".to_owned(), Some(v)))
        .collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn hold(
    app: &Arc<App>,
    who: &AuthSession,
    flight: &str,
    seat: &str,
    rid: &str,
) -> impl std::future::Future<Output = Value> {
    let (app, who) = (app.clone(), who.clone());
    let p = decode(hold_params(flight, seat, rid)).unwrap();
    async move { app.hold(&who, p).await.wire().unwrap() }
}

#[tokio::test]
async fn a_requester_has_its_pushes_before_its_reply_and_every_watcher_each_version_once() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let (flight, seats) = flight_and_seats(&app, 2);
    let mut ada = connect(&app, "ada").await;
    let bob = connect(&app, "bob").await;
    subscribe(&app, &flight, &ada.outbox).await;
    let mut others: Vec<(Outbox, OutboxReceiver)> = (0..WATCHERS)
        .map(|_| outbox(QueueLimits::default()))
        .collect();
    for (o, _) in &others {
        subscribe(&app, &flight, o).await;
    }
    let fs = app.inventory.get(&flight).unwrap();
    let base = fs.published_version();
    frames(&mut ada.rx);

    // bob's hold (version base+1) and ada's (base+2) become durable in one sync
    let synced = store.syncs.load(std::sync::atomic::Ordering::SeqCst);
    let paused = store.pause_syncs();
    let barrier = tokio::spawn({
        let app = app.clone();
        async move { app.committer.barrier().await }
    });
    wait_until("a sync in progress", || {
        store.syncs.load(std::sync::atomic::Ordering::SeqCst) > synced
    })
    .await;
    let bobs = tokio::spawn(hold(&app, &bob.session, &flight, &seats[0], "r-bob"));
    wait_until("bob's hold written", || fs.working().version == base + 1).await;
    let adas = tokio::spawn(hold(&app, &ada.session, &flight, &seats[1], "r-ada"));
    wait_until("ada's hold written", || fs.working().version == base + 2).await;
    drop(paused);
    barrier.await.unwrap().unwrap();
    let reply = adas.await.unwrap();

    // ada is answered: her pushes came first, both versions in order, then her booking
    assert_eq!(reply["booking"]["status"], "held");
    let mut expected = seats_changed([base + 1, base + 2]);
    expected.push(("booking.updated".to_owned(), None));
    assert_eq!(frames(&mut ada.rx), expected);

    bobs.await.unwrap();
    app.committer.settle_reads().await.unwrap();
    for (_, rx) in &mut others {
        assert_eq!(frames(rx), seats_changed([base + 1, base + 2]));
    }
    assert_eq!(frames(&mut ada.rx), [], "nothing twice");
    assert_eq!(fs.watchers(), WATCHERS + 1);
    close(app, store).await;
}

/// A change's reply is sent by its announcement, once it is durable: the request
/// polled until its hold is written and never again is answered all the same, the
/// reply (with the request's id, the answer remembered for a retry) right behind its
/// `booking.updated`, and its handler sends no second one.
#[tokio::test]
async fn a_change_is_answered_once_durable_without_its_request_running_again() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = faulty_app(dir.path(), |_| {}).await;
    let (flight, seats) = flight_and_seats(&app, 1);
    let mut ada = connect(&app, "ada").await;
    let fs = app.inventory.get(&flight).unwrap();
    let base = fs.working().version;
    frames(&mut ada.rx);

    let p = decode(hold_params(&flight, &seats[0], "r-early")).unwrap();
    let (a, who) = (app.clone(), ada.session.clone());
    let mut request = Box::pin(jetway::fanout::handle_request_of(
        &ada.outbox,
        Some(json!(41)),
        async move {
            let r = a.hold(&who, p).await;
            (r.is_ok(), jetway::fanout::replied_early())
        },
    ));
    // its sync cannot end while the request is polled
    let paused = store.pause_syncs();
    wait_until_polling("the hold written", &mut request, || {
        fs.working().version == base + 1
    })
    .await;
    drop(paused);

    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|f| f.get("id").is_some()) {
        assert!(Instant::now() < deadline, "no reply; frames: {seen:?}");
        while let Some(Next::Frames(fs)) = ada.rx.try_next() {
            seen.extend(fs.iter().map(|f| serde_json::from_str(f.as_str()).unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let methods: Vec<_> = seen
        .iter()
        .map(|f| f["method"].as_str().unwrap_or("reply"))
        .filter(|m| *m != "flight.presence")
        .collect();
    assert_eq!(methods, ["booking.updated", "reply"], "{seen:?}");
    let reply = seen.last().unwrap();
    assert_eq!(reply["id"], 41);
    assert_eq!(reply["result"]["booking"]["status"], "held");
    let memo = app
        .store
        .reply(&jetway::store::IdemKey {
            user: ada.session.user_id,
            method: "booking.hold",
            request_id: "r-early".into(),
        })
        .unwrap()
        .unwrap();
    assert_eq!(memo["ok"], reply["result"], "the answer a retry gets");

    // the request, run to its end, has its answer out already
    assert_eq!(request.await, (true, true));
    close(app, store).await;
}

/// Polls `request` (which must not finish) until `cond` holds, then leaves it.
async fn wait_until_polling<F: std::future::Future + Unpin>(
    what: &str,
    request: &mut F,
    mut cond: impl FnMut() -> bool,
) where
    F::Output: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let std::task::Poll::Ready(out) = futures::poll!(&mut *request) {
            panic!("finished before {what}: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
