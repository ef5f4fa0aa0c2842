//! `admin.flights.stats`: per-flight occupancy from the published seat maps, and
//! revenue from the orders, cached while no flight version moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::app::AppError;
use crate::domain::{self, Flight, FlightId};
use crate::protocol::results::{Stats, StatsRow};
use crate::store::Store;

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
struct Occupancy {
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
    pub async fn admin_stats(&self) -> Result<Stats, AppError> {
        // as `consistent_read`, with the revenue's scan of every booking and order
        // on a blocking thread: it grows with the history, and held up every other
        // connection on its reactor thread for as long
        self.committer.catch_up_at_start().await?;
        let (rows, key) = self.occupancy();
        let revenue = match self.cached_revenue(key) {
            Some(r) => r,
            None => {
                let store = self.store.clone();
                let revenue = tokio::task::spawn_blocking(move || revenue_of(&*store))
                    .await
                    .map_err(|_| AppError::Internal)??;
                let revenue = Arc::new(revenue);
                *self.admin.stats.lock() = Some(RevenueCache {
                    key,
                    at: Instant::now(),
                    revenue: revenue.clone(),
                });
                revenue
            }
        };
        self.committer.settle_reads().await?;
        let now = domain::now_ms();
        let flights = rows
            .into_iter()
            .map(|o| StatsRow {
                revenue: revenue.get(&o.flight.id).copied().unwrap_or(0),
                flight: o.flight,
                now,
                version: o.version,
                total: o.total,
                held: o.held,
                booked: o.booked,
            })
            .collect();
        Ok(Stats { flights })
    }

    /// Every flight's published occupancy, in departure order, and the key of the
    /// revenue it goes with.
    fn occupancy(&self) -> (Vec<Occupancy>, (usize, u64)) {
        let mut rows = Vec::new();
        let mut key = (0usize, 0u64);
        for fs in self.inventory.all() {
            let (version, held, booked) = fs.published_occupancy();
            key = (key.0 + 1, key.1.wrapping_add(version));
            rows.push(Occupancy {
                flight: fs.flight(),
                total: fs.aircraft.seats().len(),
                version,
                held,
                booked,
            });
        }
        rows.sort_by(|a, b| a.flight.schedule_order().cmp(&b.flight.schedule_order()));
        (rows, key)
    }

    /// The revenue computed for `key`, unless some flight's version moved since (or
    /// the figures are a few seconds old).
    fn cached_revenue(&self, key: (usize, u64)) -> Option<Revenue> {
        let cache = self.admin.stats.lock();
        let c = cache.as_ref()?;
        (c.key == key && c.at.elapsed() < STATS_MAX_AGE).then(|| c.revenue.clone())
    }
}

/// Paid minus refunded per flight, from every booking's order.
fn revenue_of(store: &dyn Store) -> Result<HashMap<FlightId, i64>, AppError> {
    let mut revenue: HashMap<FlightId, i64> = HashMap::new();
    for b in store.all_bookings()? {
        let Some(order_id) = &b.order_id else {
            continue;
        };
        if let Some(o) = store.order(order_id)? {
            *revenue.entry(b.flight_id.clone()).or_default() +=
                o.amount.amount() - o.refunded.amount();
        }
    }
    Ok(revenue)
}
