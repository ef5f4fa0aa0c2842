//! A stampede of buyers: never two passengers on one seat.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Barrier;

const CLIENTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_race_for_five_seats() {
    let mut s = Server::start().await;
    let mut admin = s.client().await;
    let f = later_flight(&mut admin).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = Arc::new(free_seats(&mut admin, &fid, "economy", 5).await);

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (url, fid, seats, barrier) = (s.url(), fid.clone(), seats.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.new_user().await;
            // half want one seat, half want two overlapping seats: all or nothing
            let want: Vec<String> = if i % 2 == 0 {
                vec![seats[i % 5].clone()]
            } else {
                vec![seats[i % 5].clone(), seats[(i + 1) % 5].clone()]
            };
            // a client that failed to connect panics before this point: the others
            // give up waiting for it instead of hanging
            let _ = tokio::time::timeout(std::time::Duration::from_secs(120), barrier.wait()).await;
            let r = c
                .call("booking.hold", json!({"flight_id": fid, "seats": want, "passengers": passengers(want.len()), "request_id": "race"}))
                .await;
            (want, r)
        }));
    }
    let mut won: HashMap<String, String> = HashMap::new();
    let mut losers = 0;
    for t in tasks {
        let (want, r) = t.await.unwrap();
        if let Some(b) = r.get("result") {
            let loc = b["booking"]["locator"].as_str().unwrap().to_owned();
            for seat in &want {
                assert!(
                    won.insert(seat.clone(), loc.clone()).is_none(),
                    "seat {seat} sold twice"
                );
            }
        } else {
            assert_eq!(r["error"]["data"]["reason"], "seat_unavailable", "{r}");
            let named: Vec<Value> = r["error"]["data"]["seats"].as_array().unwrap().clone();
            assert!(
                !named.is_empty()
                    && named
                        .iter()
                        .all(|x| want.contains(&x.as_str().unwrap().to_owned()))
            );
            losers += 1;
        }
    }
    let winners: HashSet<&String> = won.values().collect();
    assert!(won.len() <= 5);
    assert_eq!(winners.len() + losers, CLIENTS);

    // memory and disk agree: the map before a restart equals the one rebuilt from sled
    let before = admin.ok("flights.get", json!({"flight_id": fid})).await;
    for seat in seats.iter() {
        let st = &before["seats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["seat"] == seat.as_str())
            .unwrap()["status"];
        assert_eq!(*st == "held", won.contains_key(seat), "{seat}");
    }
    assert_eq!(
        before["version"].as_u64().unwrap(),
        winners.len() as u64,
        "one version per winning hold"
    );
    s.restart().await;
    let mut c = s.client().await;
    let after = c.ok("flights.get", json!({"flight_id": fid})).await;
    assert_eq!(before["seats"], after["seats"]);
    assert_eq!(before["version"], after["version"]);
    s.stop().await;
}
