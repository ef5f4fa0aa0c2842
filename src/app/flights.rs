//! Flight search, seat maps and live subscriptions.

use serde_json::Value;

use super::App;
use crate::app::AppError;
use crate::domain::{self, flight::AIRPORTS, FlightId};
use crate::fanout::{Outbox, Utf8Bytes};
use crate::inventory::Start;
use crate::protocol::results::{
    self, AirportView, Airports, Done, FlightView, Flights, LayoutView, SeatMap, Subscribed,
};
use crate::protocol::{envelope, params};

pub const DEFAULT_SEARCH_LIMIT: u32 = 50;
/// How long a `seats.subscribe` whose `since` is ahead of this node waits for the
/// node to catch up with the cluster before it is answered from the node's map.
const SINCE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
pub const MAX_SEARCH_LIMIT: u32 = 500;

fn airport_filter(code: Option<String>, field: &str) -> Result<Option<String>, AppError> {
    match code {
        None => Ok(None),
        Some(c) => {
            let c = c.trim().to_ascii_uppercase();
            if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(Some(c))
            } else {
                Err(AppError::InvalidParams(format!(
                    "{field} must be a 3-letter IATA airport code"
                )))
            }
        }
    }
}

impl App {
    pub fn airports(&self) -> Airports {
        Airports {
            airports: AIRPORTS.iter().map(AirportView).collect(),
        }
    }

    pub fn search(&self, p: params::Search) -> Result<Flights, AppError> {
        let from = airport_filter(p.from, "from")?;
        let to = airport_filter(p.to, "to")?;
        let date = match p.date {
            None => None,
            Some(d) => {
                let bad = || AppError::InvalidParams("date must be YYYY-MM-DD".into());
                // `[year]` alone would take a sign ("+2026-12-06")
                let digits_and_dashes = d.len() == 10
                    && d.bytes().enumerate().all(|(i, b)| match i {
                        4 | 7 => b == b'-',
                        _ => b.is_ascii_digit(),
                    });
                if !digits_and_dashes {
                    return Err(bad());
                }
                Some(
                    time::Date::parse(
                        &d,
                        time::macros::format_description!("[year]-[month]-[day]"),
                    )
                    .map_err(|_| bad())?,
                )
            }
        };
        let limit = super::checked_limit(p.limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)?;
        let now = domain::now_ms();
        let mut found: Vec<_> = self
            .inventory
            .all()
            .into_iter()
            .map(|fs| (fs.flight(), fs))
            .filter(|(f, _)| from.as_ref().is_none_or(|a| &f.from == a))
            .filter(|(f, _)| to.as_ref().is_none_or(|a| &f.to == a))
            .filter(|(f, _)| match date {
                Some(d) => domain::date_of(f.departs_at) == d,
                // upcoming: not yet gone, by the estimate if there is one
                None => f.departure() > now,
            })
            .collect();
        found.sort_by(|(a, _), (b, _)| a.schedule_order().cmp(&b.schedule_order()));
        let flights = found
            .into_iter()
            .take(limit)
            .map(|(flight, fs)| FlightView {
                flight,
                cabins: fs.available(),
                now,
            })
            .collect();
        Ok(Flights { flights })
    }

    pub fn flight_get(&self, p: params::FlightRef) -> Result<SeatMap, AppError> {
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        let (version, seats, cabins) = fs.published_map();
        let flight = fs.flight();
        Ok(SeatMap {
            flight: FlightView {
                flight,
                cabins,
                now: domain::now_ms(),
            },
            version,
            seats,
            layout: LayoutView(fs.aircraft),
        })
    }

    /// Subscribes the connection to a flight. The reply is queued on the outbox here,
    /// atomically with joining the watchers, so it precedes every later push.
    ///
    /// A `since` ahead of this node's map (a client that moved from a node further
    /// along the cluster's feed) first waits for this node to catch up: answered from
    /// the older map, the client would get the versions in between again.
    pub async fn subscribe(
        &self,
        id: Option<&Value>,
        p: params::Subscribe,
        outbox: &Outbox,
        subs: &mut Vec<FlightId>,
    ) -> Result<(), AppError> {
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        if p.since.is_some_and(|s| s > fs.published_version()) {
            // bounded: a `since` no node has reached, or a cluster store that does not
            // answer, gets this node's map (a snapshot) rather than a stalled request
            let caught_up = tokio::time::timeout(SINCE_CATCH_UP, self.committer.catch_up()).await;
            if !matches!(caught_up, Ok(Ok(()))) {
                tracing::debug!(flight = %fs.id, "subscribe ahead of this node answered from its map");
            }
        }
        let flight_id = fs.id.clone();
        let viewers = self.viewers(&fs, !subs.contains(&fs.id));
        let joined = fs.subscribe(outbox, p.since, |version, start| {
            let result = Subscribed {
                flight_id: flight_id.clone(),
                version,
                viewers,
            };
            let result = results::encode(&result);
            id.map(|id| {
                Utf8Bytes::from(match (result, start) {
                    (Err(e), _) => envelope::failure(id, &e),
                    // the map is encoded once per version, and only copied in here
                    (Ok(r), Start::Snapshot(seats)) => {
                        envelope::success_with_raw(id, &r, "seats", &seats)
                    }
                    (Ok(r), Start::Changes(changes)) => {
                        envelope::success_with_raw(id, &r, "changes", &changes)
                    }
                })
            })
        });

        if joined && !subs.contains(&fs.id) {
            // one entry more, not a `Vec`'s first four: most connections watch one flight
            subs.reserve_exact(1);
            subs.push(fs.id.clone());
        }
        // the joiner hears the exact count soon if it raced with others
        self.presence
            .touch(&fs.id, joined.then(|| (outbox.id(), id.map(|_| viewers))));
        Ok(())
    }

    pub fn unsubscribe(
        &self,
        p: params::FlightRef,
        conn_id: u64,
        subs: &mut Vec<FlightId>,
    ) -> Result<Done, AppError> {
        let fs = self
            .inventory
            .get(&p.flight_id)
            .ok_or(AppError::NotFound("flight"))?;
        if fs.unsubscribe(conn_id) {
            self.presence.touch(&fs.id, None);
        }
        subs.retain(|f| f != &fs.id);
        Ok(Done {})
    }

    /// Removes a closed connection from every flight it watched.
    pub fn leave_all(&self, conn_id: u64, flights: &[FlightId]) {
        self.inventory.unsubscribe_all(conn_id, flights);
        for f in flights {
            self.presence.touch(f, None);
        }
    }
}
