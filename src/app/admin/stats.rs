//! `admin.flights.stats`: per-flight occupancy from the published seat maps, and
//! revenue from the orders, cached while no flight version moves.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::domain::{self, Flight, FlightId};
use crate::protocol::ApiError;

/// How long cached revenue figures may be reused while no flight version moves.
const STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// Paid minus refunded, in cents, per flight.
type Revenue = Arc<HashMap<FlightId, i64>>;

pub(super) struct RevenueCache {
    /// (number of flights, sum of their versions) when computed: every change of a
    /// paid or refunded amount also moves its flight's version.
    key: (usize, u64),
    at: Instant,
    revenue: Revenue,
}

/// One flight's line of `admin.flights.stats`, from its published seat map.
struct StatsRow {
    flight: Flight,
    total: usize,
    version: u64,
    held: usize,
    booked: usize,
}

impl App {
    /// `admin.flights.stats`: seats held and booked, load factor and revenue (paid
    /// minus refunded) of every flight, in departure order. Only durable state: the
    /// published seat maps, and orders answered once durable.
    pub async fn admin_stats(&self) -> Result<Value, ApiError> {
        let (rows, revenue) = self.consistent_read(|| self.stats_rows()).await?;
        let now = domain::now_ms();
        let flights: Vec<Value> = rows
            .into_iter()
            .map(
                |StatsRow {
                     flight: f,
                     total,
                     version,
                     held,
                     booked,
                 }| {
                    let load = if total == 0 {
                        0.0
                    } else {
                        ((held + booked) as f64 / total as f64 * 1000.0).round() / 1000.0
                    };
                    let cents = revenue.get(&f.id).copied().unwrap_or(0);
                    let mut row = json!({
                        "flight_id": f.id,
                        "number": f.number,
                        "from": f.from,
                        "to": f.to,
                        "departs_at": domain::rfc3339(f.departs_at),
                        "status": f.status(now).as_str(),
                        "version": version,
                        "seats_total": total,
                        "seats_held": held,
                        "seats_booked": booked,
                        "load_factor": load,
                        "revenue": { "amount": cents, "currency": domain::money::CURRENCY },
                    });
                    if let Some(t) = f.estimated_departs_at {
                        row["estimated_departs_at"] = json!(domain::rfc3339(t));
                    }
                    row
                },
            )
            .collect();
        Ok(json!({ "flights": flights }))
    }

    /// Every flight's published occupancy, in departure order, and the revenue.
    fn stats_rows(&self) -> Result<(Vec<StatsRow>, Revenue), ApiError> {
        let mut rows = Vec::new();
        let mut key = (0usize, 0u64);
        for fs in self.inventory.all() {
            let (version, held, booked) = fs.published_occupancy();
            key = (key.0 + 1, key.1.wrapping_add(version));
            rows.push(StatsRow {
                flight: fs.flight(),
                total: fs.aircraft.seats().len(),
                version,
                held,
                booked,
            });
        }
        rows.sort_by(|a, b| {
            (a.flight.departs_at, &a.flight.number).cmp(&(b.flight.departs_at, &b.flight.number))
        });
        Ok((rows, self.revenue(key)?))
    }

    /// Paid minus refunded per flight, from the orders; recomputed only when some
    /// flight's version moved (or the figures are a few seconds old).
    fn revenue(&self, key: (usize, u64)) -> Result<Revenue, ApiError> {
        if let Some(c) = self.admin.stats.lock().as_ref() {
            if c.key == key && c.at.elapsed() < STATS_MAX_AGE {
                return Ok(c.revenue.clone());
            }
        }
        let mut revenue: HashMap<FlightId, i64> = HashMap::new();
        for b in self.store.all_bookings()? {
            let Some(order_id) = &b.order_id else {
                continue;
            };
            if let Some(o) = self.store.order(order_id)? {
                *revenue.entry(b.flight_id.clone()).or_default() +=
                    o.amount.amount() - o.refunded.amount();
            }
        }
        let revenue = Arc::new(revenue);
        *self.admin.stats.lock() = Some(RevenueCache {
            key,
            at: Instant::now(),
            revenue: revenue.clone(),
        });
        Ok(revenue)
    }
}
