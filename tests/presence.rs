//! Live presence against real servers: `viewers` in the `seats.subscribe` result and
//! the coalesced `flight.presence` push (the latest count, at most one per flight per
//! second), with 500 watchers joining and leaving in bursts, and summed across the
//! nodes of an etcd cluster.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How late a push may arrive on this busy machine, in seconds.
const JITTER: f64 = 2.0;

/// What a watcher has heard: the arrival, the server's `at` (ms) and the count of each
/// `flight.presence`, and the latest count (from the subscribe result or a push).
#[derive(Default)]
struct Heard {
    pushes: Vec<(Instant, i64, u64)>,
    last: Option<u64>,
}

/// A connection subscribed to a flight, recording presence on its own task.
struct Watcher {
    heard: Arc<Mutex<Heard>>,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn join(url: &str, flight: &str) -> Watcher {
        let mut c = Client::connect(url).await;
        let r = c.ok("seats.subscribe", json!({"flight_id": flight})).await;
        let heard = Arc::new(Mutex::new(Heard {
            pushes: Vec::new(),
            last: Some(r["viewers"].as_u64().expect("viewers in the result")),
        }));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<bool>();
        let h = heard.clone();
        let flight = flight.to_owned();
        let task = tokio::spawn(async move {
            let mut ws = c.ws;
            for p in c.pushes {
                record(&h, &p, &flight);
            }
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                            record(&h, &v, &flight);
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    how = &mut stopped => {
                        if how.unwrap_or(false) {
                            // leave politely, then hang up
                            let req = json!({"jsonrpc":"2.0","id":1,"method":"seats.unsubscribe","params":{"flight_id": flight}});
                            let _ = ws.send(Message::text(req.to_string())).await;
                        }
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            }
        });
        Watcher {
            heard,
            stop: Some(stop),
            task,
        }
    }

    /// Leaves: by `seats.unsubscribe` and a close, or by closing only.
    async fn leave(mut self, unsubscribe: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(unsubscribe);
        }
        let _ = self.task.await;
    }

    fn last(&self) -> Option<u64> {
        self.heard.lock().last
    }
}

fn record(h: &Mutex<Heard>, v: &Value, flight: &str) {
    if v["method"] == "flight.presence" && v["params"]["flight_id"] == flight {
        let n = v["params"]["viewers"].as_u64().expect("viewers");
        let at = time::OffsetDateTime::parse(
            v["params"]["at"].as_str().expect("at"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339");
        let at = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut h = h.lock();
        h.pushes.push((Instant::now(), at, n));
        h.last = Some(n);
    }
}

async fn some_flight(url: &str) -> String {
    let mut c = Client::connect(url).await;
    later_flight(&mut c).await["flight_id"]
        .as_str()
        .expect("flight id")
        .to_owned()
}

/// Polls until every watcher's latest count is `want`; returns how long that took.
async fn all_hear(watchers: &[Watcher], want: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let wrong: Vec<Option<u64>> = watchers
            .iter()
            .map(Watcher::last)
            .filter(|l| *l != Some(want))
            .collect();
        if wrong.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} of {} watchers still say {:?}, not {want}",
            wrong.len(),
            watchers.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn viewers_count_every_subscriber_and_follow_joins_and_leaves() {
    let s = Server::start().await;
    let flight = some_flight(&s.url()).await;
    let a = Watcher::join(&s.url(), &flight).await;
    assert_eq!(a.last(), Some(1), "the subscriber itself");
    let b = Watcher::join(&s.url(), &flight).await;
    assert_eq!(b.last(), Some(2));
    all_hear(std::slice::from_ref(&a), 2, Duration::from_secs(3)).await;
    // subscribing again on the same connection is not a new viewer
    let mut c = s.client().await;
    c.ok("seats.subscribe", json!({"flight_id": flight})).await;
    let r = c.ok("seats.subscribe", json!({"flight_id": flight})).await;
    assert_eq!(r["viewers"], 3);
    c.ok("seats.unsubscribe", json!({"flight_id": flight}))
        .await;
    b.leave(false).await;
    all_hear(std::slice::from_ref(&a), 1, Duration::from_secs(3)).await;
    a.leave(true).await;
    s.stop().await;
}

/// A push is news to everyone it reaches: a subscriber is not told again the count
/// its reply gave it, nor the count it heard last, when someone came and went.
#[tokio::test]
async fn a_count_is_pushed_only_to_those_it_is_news_to() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let flights = c.ok("flights.search", json!({"limit": 2})).await;
    let flight = |i: usize| {
        flights["flights"][i]["flight_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (flight, clock) = (flight(0), flight(1));
    let a = Watcher::join(&s.url(), &flight).await;
    // a count pushed on another flight after A joined: the push loop has looked at
    // A's flight since (every flight due is looked at in the same round)
    let x = Watcher::join(&s.url(), &clock).await;
    let _y = Watcher::join(&s.url(), &clock).await;
    all_hear(std::slice::from_ref(&x), 2, Duration::from_secs(3)).await;
    let mut b = s.client().await;
    b.ok("seats.subscribe", json!({"flight_id": flight})).await;
    b.ok("seats.unsubscribe", json!({"flight_id": flight}))
        .await;
    let d = Watcher::join(&s.url(), &flight).await;
    all_hear(std::slice::from_ref(&a), 2, Duration::from_secs(3)).await;
    d.leave(true).await;
    all_hear(std::slice::from_ref(&a), 1, Duration::from_secs(3)).await;
    let heard = a
        .heard
        .lock()
        .pushes
        .iter()
        .map(|p| p.2)
        .collect::<Vec<_>>();
    let mut known = vec![1];
    known.extend(&heard);
    assert!(
        known.windows(2).all(|w| w[0] != w[1]),
        "told {known:?} (the reply's count first)"
    );
    a.leave(true).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_watchers_in_bursts_hear_the_true_count_at_most_once_a_second() {
    let s = Server::start().await;
    let flight = some_flight(&s.url()).await;
    let url = s.url();
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut gone: Vec<Arc<Mutex<Heard>>> = Vec::new();
    // (joins, leaves) per burst: up to 500 at once, then churn
    let bursts = [(250, 0), (250, 0), (0, 120), (60, 40), (0, 200), (100, 0)];
    for (joins, leaves) in bursts {
        let joined =
            futures::future::join_all((0..joins).map(|_| Watcher::join(&url, &flight))).await;
        watchers.extend(joined);
        let leaving: Vec<Watcher> = watchers.drain(..leaves).collect();
        gone.extend(leaving.iter().map(|w| w.heard.clone()));
        futures::future::join_all(
            leaving
                .into_iter()
                .enumerate()
                .map(|(i, w)| w.leave(i % 2 == 0)),
        )
        .await;
        let took = all_hear(&watchers, watchers.len() as u64, Duration::from_secs(2)).await;
        println!(
            "{} watchers: every one heard the count after {took:?}",
            watchers.len()
        );
    }
    // no watcher heard more than one push per second: the counts were taken (`at`)
    // at least a second apart. Arrival times also carry the jitter of 500 client and
    // 500 server connection tasks on two busy cores (over a second seen), so they
    // are only checked loosely: at most one a second over a watcher's life, give or
    // take that jitter.
    for h in watchers.iter().map(|w| w.heard.clone()).chain(gone) {
        let h = h.lock();
        for pair in h.pushes.windows(2) {
            let gap = pair[1].1 - pair[0].1;
            assert!(gap >= 1000, "two counts taken {gap} ms apart");
        }
        if let (Some(first), Some(last)) = (h.pushes.first(), h.pushes.last()) {
            let life = last.0.duration_since(first.0).as_secs_f64();
            assert!(
                h.pushes.len() as f64 <= life + JITTER + 1.0,
                "{} pushes arrived in {life:.2} s",
                h.pushes.len()
            );
        }
    }
    for w in watchers {
        w.leave(false).await;
    }
    s.stop().await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_viewers_are_summed_across_nodes_and_a_dead_node_drops_out() {
    use common::cluster::{node, Etcd};
    let etcd = Etcd::start(1);
    let prefix = format!("{}/", unique_name("pr"));
    let start = || tokio::task::block_in_place(|| node(&etcd, &prefix, &[]));
    let (a, b) = (start(), start());
    let flight = some_flight(&a.url()).await;
    let on_a = Watcher::join(&a.url(), &flight).await;
    let mut on_b = vec![
        Watcher::join(&b.url(), &flight).await,
        Watcher::join(&b.url(), &flight).await,
    ];
    all_hear(std::slice::from_ref(&on_a), 3, Duration::from_secs(5)).await;
    all_hear(&on_b, 3, Duration::from_secs(5)).await;
    // a new subscriber on A counts B's two at once
    let r = {
        let mut c = Client::connect(&a.url()).await;
        let r = c.ok("seats.subscribe", json!({"flight_id": flight})).await;
        c.ok("seats.unsubscribe", json!({"flight_id": flight}))
            .await;
        r
    };
    assert_eq!(r["viewers"], 4, "{r}");
    on_b.pop().expect("one").leave(true).await;
    all_hear(std::slice::from_ref(&on_a), 2, Duration::from_secs(5)).await;
    // node B dies: its count lapses with its lease
    b.kill9();
    for w in on_b {
        w.leave(false).await;
    }
    all_hear(std::slice::from_ref(&on_a), 1, Duration::from_secs(20)).await;
}
