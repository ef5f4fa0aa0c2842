//! `/metrics` in the Prometheus text format: counters kept by the server front
//! ([`Metrics`]) plus gauges read from the app at scrape time. Every value is kept
//! as things happen (bookings by status by the store as it writes them), so a scrape
//! costs the same whatever the number of bookings.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::app::App;

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Counters of the server front. Method labels are bounded: unknown methods are
/// counted as `other`.
#[derive(Default)]
pub struct Metrics {
    tcp_open: AtomicI64,
    tcp_total: AtomicU64,
    ws_open: AtomicI64,
    ws_total: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<HashMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn tcp_opened(&self) {
        self.tcp_open.fetch_add(1, Ordering::Relaxed);
        self.tcp_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tcp_closed(&self) {
        self.tcp_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn ws_opened(&self) {
        self.ws_open.fetch_add(1, Ordering::Relaxed);
        self.ws_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ws_closed(&self) {
        self.ws_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection or request refused by a limit (`reason` is a fixed word).
    pub fn rejected(&self, reason: &'static str) {
        *self.rejected.lock().entry(reason).or_default() += 1;
    }

    /// One request answered: its method, its outcome (`ok` or an error reason).
    pub fn request(&self, method: &'static str, outcome: &'static str, took: Duration) {
        *self.requests.lock().entry((method, outcome)).or_default() += 1;
        self.latency
            .lock()
            .entry(method)
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn rejected_count(&self, reason: &str) -> u64 {
        self.rejected.lock().get(reason).copied().unwrap_or(0)
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP jetway_{name} {help}\n# TYPE jetway_{name} {kind}"
    );
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "jetway_{name} {value}");
}

pub fn render(app: &App, m: &Metrics) -> String {
    let mut out = String::new();
    let flights = app.inventory.all();
    single(
        &mut out,
        "flights",
        "gauge",
        "Flights in the inventory.",
        flights.len() as f64,
    );
    single(
        &mut out,
        "subscriptions",
        "gauge",
        "Live seat-map subscriptions.",
        flights.iter().map(|f| f.watchers()).sum::<usize>() as f64,
    );
    single(
        &mut out,
        "user_connections",
        "gauge",
        "Logged-in connections.",
        app.users.connections() as f64,
    );
    single(
        &mut out,
        "connections_open",
        "gauge",
        "Open WebSocket connections.",
        m.ws_open.load(Ordering::Relaxed) as f64,
    );
    single(
        &mut out,
        "connections_total",
        "counter",
        "WebSocket connections accepted.",
        m.ws_total.load(Ordering::Relaxed) as f64,
    );
    single(
        &mut out,
        "tcp_connections_open",
        "gauge",
        "Open TCP connections (HTTP and WebSocket).",
        m.tcp_open.load(Ordering::Relaxed) as f64,
    );
    single(
        &mut out,
        "tcp_connections_total",
        "counter",
        "TCP connections accepted.",
        m.tcp_total.load(Ordering::Relaxed) as f64,
    );
    header(
        &mut out,
        "rejected_total",
        "counter",
        "Connections and requests refused by a limit, by reason.",
    );
    for (reason, n) in m.rejected.lock().iter() {
        let _ = writeln!(out, "jetway_rejected_total{{reason=\"{reason}\"}} {n}");
    }
    header(
        &mut out,
        "requests_total",
        "counter",
        "Requests answered, by method and outcome (ok or the error reason).",
    );
    for ((method, outcome), n) in m.requests.lock().iter() {
        let _ = writeln!(
            out,
            "jetway_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        &mut out,
        "request_seconds",
        "histogram",
        "Request latency from parsed frame to queued reply, by method.",
    );
    let latency: BTreeMap<_, _> = m
        .latency
        .lock()
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    for (method, h) in latency {
        for (b, n) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "jetway_request_seconds_bucket{{method=\"{method}\",le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "jetway_request_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}\njetway_request_seconds_sum{{method=\"{method}\"}} {}\njetway_request_seconds_count{{method=\"{method}\"}} {}",
            h.count, h.sum, h.count
        );
    }
    let f = crate::fanout::frame_stats();
    single(
        &mut out,
        "pushes_total",
        "counter",
        "Push frames (seats.changed, booking.updated) queued to connections.",
        f.pushes as f64,
    );
    single(
        &mut out,
        "frames_dropped_total",
        "counter",
        "Outbound frames not queued because the connection was full or closing.",
        f.dropped as f64,
    );
    single(
        &mut out,
        "slow_consumer_closes_total",
        "counter",
        "Connections closed because their outbound queue overflowed.",
        f.slow_closes as f64,
    );
    let bookings = app.store.booking_counts();
    single(
        &mut out,
        "holds_active",
        "gauge",
        "Bookings held (until they are paid, cancelled or expired).",
        bookings.get(crate::domain::BookingStatus::Held) as f64,
    );
    single(
        &mut out,
        "holds_pending_expiry",
        "gauge",
        "Holds waiting to expire.",
        app.expiry.pending() as f64,
    );
    header(&mut out, "bookings", "gauge", "Bookings by status.");
    for (status, n) in bookings.iter() {
        let status = status.as_str();
        let _ = writeln!(out, "jetway_bookings{{status=\"{status}\"}} {n}");
    }
    let c = app.committer.stats();
    single(
        &mut out,
        "store_syncs_total",
        "counter",
        "Durable syncs (group commits).",
        c.syncs as f64,
    );
    single(
        &mut out,
        "store_commits_total",
        "counter",
        "Writes made durable.",
        c.tickets as f64,
    );
    single(
        &mut out,
        "store_sync_seconds_total",
        "counter",
        "Time spent in durable syncs.",
        c.sync_seconds_total,
    );
    header(
        &mut out,
        "store_flush_seconds",
        "summary",
        "Latency of one durable flush (group commit).",
    );
    let _ = writeln!(
        out,
        "jetway_store_flush_seconds_sum {}\njetway_store_flush_seconds_count {}",
        c.sync_seconds_total, c.syncs
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("flights.get", "ok", Duration::from_millis(3));
        m.request("flights.get", "not_found", Duration::from_millis(300));
        let h = m.latency.lock().get("flights.get").cloned().unwrap();
        assert_eq!(h.count, 2);
        assert_eq!(h.counts[0], 0); // <= 1 ms
        assert_eq!(h.counts[2], 1); // <= 5 ms
        assert_eq!(h.counts[8], 2); // <= 0.5 s
        assert_eq!(m.requests.lock().len(), 2);
    }
}
