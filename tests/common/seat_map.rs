//! A client-side seat map: a snapshot plus every change applied in order, checked
//! as it goes (each version once, in order, every seat really changing, cabin counts
//! right), and a connection watching one flight with the map it has built.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::Client;

#[derive(Debug, Clone)]
pub struct Map {
    pub flight_id: String,
    pub version: u64,
    pub status: BTreeMap<String, String>,
    pub cabin_of: BTreeMap<String, String>,
    /// Available seats per cabin, kept up to date as changes are applied.
    pub available: BTreeMap<String, u64>,
}

pub fn cabin_counts(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .unwrap_or_else(|| panic!("cabins is a list: {list}"))
        .iter()
        .map(|c| {
            (
                c["cabin"].as_str().expect("cabin").to_owned(),
                c["seats_available"].as_u64().expect("seats_available"),
            )
        })
        .collect()
}

impl Map {
    pub fn from_snapshot(flight_id: &str, version: u64, seats: &Value) -> Map {
        let mut status = BTreeMap::new();
        let mut cabin_of = BTreeMap::new();
        let mut available = BTreeMap::new();
        for s in seats.as_array().expect("seats is a list") {
            let id = s["seat"].as_str().expect("seat id").to_owned();
            let st = s["status"].as_str().expect("status").to_owned();
            let cabin = s["cabin"].as_str().expect("cabin").to_owned();
            let n = available.entry(cabin.clone()).or_insert(0);
            if st == "available" {
                *n += 1;
            }
            assert!(status.insert(id.clone(), st).is_none(), "{id} listed twice");
            cabin_of.insert(id, cabin);
        }
        assert!(!status.is_empty(), "a snapshot lists every seat");
        Map {
            flight_id: flight_id.to_owned(),
            version,
            status,
            cabin_of,
            available,
        }
    }

    /// Applies one change (a push's params or an element of `changes`). It must be
    /// the next version, each seat in it must really change, and its `cabins` must
    /// be the counts of the map it makes.
    pub fn apply(&mut self, change: &Value) {
        let v = change["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("change without a version: {change}"));
        assert_eq!(
            v,
            self.version + 1,
            "flight {}: version {v} arrived after {}: a gap, a repeat or out of order",
            self.flight_id,
            self.version
        );
        let seats = change["seats"].as_array().expect("changed seats");
        assert!(!seats.is_empty(), "change {v} changes no seat");
        for s in seats {
            let id = s["seat"].as_str().expect("seat");
            let st = s["status"].as_str().expect("status");
            assert!(
                matches!(st, "available" | "held" | "booked"),
                "change {v}: {s}"
            );
            let cabin = self
                .cabin_of
                .get(id)
                .unwrap_or_else(|| panic!("change {v} names unknown seat {id}"));
            let old = self.status.get_mut(id).expect("seat in the map");
            assert_ne!(old, st, "change {v} leaves {id} as it was");
            let n = self.available.get_mut(cabin).expect("cabin");
            if old == "available" {
                *n -= 1;
            }
            if st == "available" {
                *n += 1;
            }
            *old = st.to_owned();
        }
        self.version = v;
        assert_eq!(
            cabin_counts(&change["cabins"]),
            self.available,
            "flight {}: the cabins of change {v} do not match the seats",
            self.flight_id
        );
    }

    /// Asserts that the map is exactly what a `flights.get` reply says.
    pub fn assert_matches(&self, got: &Value) {
        assert_eq!(
            got["version"].as_u64(),
            Some(self.version),
            "flight {}: flights.get is at another version",
            self.flight_id
        );
        let theirs = Map::from_snapshot(&self.flight_id, self.version, &got["seats"]);
        let differ: Vec<_> = self
            .status
            .iter()
            .filter(|(seat, st)| theirs.status.get(*seat) != Some(st))
            .map(|(seat, st)| {
                format!(
                    "{seat}: mine {st}, flights.get {:?}",
                    theirs.status.get(seat)
                )
            })
            .collect();
        assert!(
            differ.is_empty() && theirs.status.len() == self.status.len(),
            "flight {} at version {}: maps differ: {differ:?}",
            self.flight_id,
            self.version
        );
        assert_eq!(
            cabin_counts(&got["flight"]["cabins"]),
            self.available,
            "flight {}: flights.get cabins do not count the map's available seats",
            self.flight_id
        );
    }
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Began {
    Snapshot,
    /// `changes` with this many entries.
    Replay(usize),
}

/// Applies a `seats.subscribe` reply to `prior`, the map at `since` (if one was sent).
pub fn begin(flight_id: &str, prior: Option<Map>, reply: &Value) -> (Map, Began) {
    assert_eq!(reply["flight_id"], flight_id, "{reply}");
    let version = reply["version"].as_u64().expect("version");
    match (reply.get("seats"), reply.get("changes")) {
        (Some(seats), None) => (
            Map::from_snapshot(flight_id, version, seats),
            Began::Snapshot,
        ),
        (None, Some(changes)) => {
            let mut m = prior.expect("`changes` answer only a subscribe with `since`");
            let list = changes.as_array().expect("changes is a list");
            for c in list {
                m.apply(c);
            }
            assert_eq!(m.version, version, "changes end at the reply's version");
            (m, Began::Replay(list.len()))
        }
        _ => panic!("a subscribe reply has exactly one of seats and changes: {reply}"),
    }
}

/// A connection watching one flight, with the map it has built.
pub struct Watcher {
    pub c: Client,
    pub map: Map,
    pub began: Began,
}

impl Watcher {
    pub async fn join(url: &str, flight_id: &str) -> Watcher {
        Self::resume(url, flight_id, None).await
    }

    /// Subscribes on a new connection, with `since` = the prior map's version if given.
    pub async fn resume(url: &str, flight_id: &str, prior: Option<Map>) -> Watcher {
        let mut c = Client::connect(url).await;
        let mut params = json!({ "flight_id": flight_id });
        if let Some(m) = &prior {
            params["since"] = json!(m.version);
        }
        let r = c.ok("seats.subscribe", params).await;
        let (map, began) = begin(flight_id, prior, &r);
        Watcher { c, map, began }
    }

    /// Waits for the next `seats.changed` and applies it.
    pub async fn next(&mut self) {
        let p = self.c.push("seats.changed").await;
        assert_eq!(p["flight_id"], self.map.flight_id.as_str(), "{p}");
        self.map.apply(&p);
    }

    pub async fn catch_up(&mut self, version: u64) {
        while self.map.version < version {
            self.next().await;
        }
        assert_eq!(self.map.version, version);
    }

    /// Compares the map with `flights.get` asked on the watcher's own connection (so
    /// any push queued before the reply has arrived) and checks that nothing beyond
    /// the map's version was pushed.
    pub async fn check(&mut self) {
        let got = self
            .c
            .ok("flights.get", json!({ "flight_id": self.map.flight_id }))
            .await;
        let extra: Vec<_> = self
            .c
            .pushes
            .iter()
            .filter(|p| p["method"] == "seats.changed")
            .collect();
        assert!(
            extra.is_empty(),
            "pushes beyond version {}: {extra:?}",
            self.map.version
        );
        self.map.assert_matches(&got);
    }

    /// Disconnects and keeps the map.
    pub async fn leave(mut self) -> Map {
        let _ = self.c.ws.close(None).await;
        self.map
    }
}
