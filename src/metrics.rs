//! The server's metrics: counters and histograms kept as things happen on the
//! `metrics` crate's atomic handles (no lock taken per request), the process's own
//! figures, and the Prometheus text rendering of its recorder. A leaf: the values
//! only known at scrape time (flights, bookings by status, ...) are handed in as a
//! [`Snapshot`] by the `/metrics` route in `server/`.

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The method label of a request for a method the server does not know.
pub const OTHER_METHOD: &str = "other";

/// Outcomes (`ok` and error reasons) counted per method; more count as `other`.
const OUTCOME_SLOTS: usize = 32;

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Why a connection or request was refused: the `reason` of `jetway_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A WebSocket upgrade from an origin not allowed.
    Origin,
    /// Too many open connections from one address.
    PerAddressLimit,
    /// No complete request or upgrade in time.
    HandshakeTimeout,
    /// A request over the connection's rate.
    RateLimited,
    /// A connection closed for flooding past its rate.
    RateLimitClose,
    /// A login refused while its username or address backs off.
    LoginBackoff,
    /// A registration over its address's hourly share.
    RegisterLimit,
}

impl Rejection {
    /// In declaration order: `why as usize` indexes it.
    const ALL: [Rejection; 7] = [
        Rejection::Origin,
        Rejection::PerAddressLimit,
        Rejection::HandshakeTimeout,
        Rejection::RateLimited,
        Rejection::RateLimitClose,
        Rejection::LoginBackoff,
        Rejection::RegisterLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Origin => "origin",
            Rejection::PerAddressLimit => "per_address_limit",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::RateLimited => "rate_limited",
            Rejection::RateLimitClose => "rate_limit_close",
            Rejection::LoginBackoff => "login_backoff",
            Rejection::RegisterLimit => "register_limit",
        }
    }
}

/// What the `/metrics` route reads from the app at scrape time; each is kept up to
/// date as things happen, so reading it costs the same whatever the data.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub flights: u64,
    pub subscriptions: u64,
    pub user_connections: u64,
    pub holds_pending_expiry: u64,
    /// Bookings by status (`held`, `confirmed`, ...).
    pub bookings: Vec<(&'static str, u64)>,
    pub pushes: u64,
    pub frames_dropped: u64,
    pub slow_consumer_closes: u64,
    /// Writes made durable.
    pub store_commits: u64,
}

/// One method's request counters by outcome and its latency histogram.
struct MethodCells {
    name: &'static str,
    latency: Histogram,
    outcomes: [OnceLock<(&'static str, Counter)>; OUTCOME_SLOTS],
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    tcp_open: Gauge,
    tcp_total: Counter,
    ws_open: Gauge,
    ws_total: Counter,
    replies_paced: Counter,
    rejected: [Counter; Rejection::ALL.len()],
    /// The known methods, then [`OTHER_METHOD`].
    methods: Vec<MethodCells>,
    /// Latency of one durable sync (group commit); the committer records it.
    pub store_sync_seconds: Histogram,
    process: metrics_process::Collector,
}

impl Metrics {
    /// Metrics for a server whose requests are labelled with `methods` (others as
    /// [`OTHER_METHOD`]).
    pub fn new(methods: &[&'static str]) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let r = &recorder;
        // one table of descriptions for every kind of metric
        for (name, unit, help) in DESCRIPTIONS {
            r.describe_gauge(
                KeyName::from_const_str(name),
                *unit,
                SharedString::const_str(help),
            );
        }
        let counter = |name: &'static str| r.register_counter(&Key::from_static_name(name), &META);
        let gauge = |name: &'static str| r.register_gauge(&Key::from_static_name(name), &META);
        let labelled = |name: &'static str, label: &'static str, value: &'static str| {
            Key::from_parts(name, vec![Label::from_static_parts(label, value)])
        };
        r.register_gauge(
            &labelled("jetway_build_info", "version", env!("CARGO_PKG_VERSION")),
            &META,
        )
        .set(1.0);
        let methods = methods
            .iter()
            .copied()
            .chain([OTHER_METHOD])
            .map(|name| MethodCells {
                name,
                latency: r.register_histogram(
                    &labelled("jetway_request_duration_seconds", "method", name),
                    &META,
                ),
                outcomes: std::array::from_fn(|_| OnceLock::new()),
            })
            .collect();
        let rejected = Rejection::ALL.map(|why| {
            r.register_counter(
                &labelled("jetway_rejected_total", "reason", why.as_str()),
                &META,
            )
        });
        // the contract: every name prefixed `jetway_`
        let process = metrics_process::Collector::new("jetway_");
        metrics::with_local_recorder(r, || process.describe());
        Metrics {
            tcp_open: gauge("jetway_tcp_connections_open"),
            tcp_total: counter("jetway_tcp_connections_total"),
            ws_open: gauge("jetway_connections_open"),
            ws_total: counter("jetway_connections_total"),
            replies_paced: counter("jetway_replies_paced_total"),
            store_sync_seconds: r.register_histogram(
                &Key::from_static_name("jetway_store_sync_duration_seconds"),
                &META,
            ),
            rejected,
            methods,
            process,
            handle,
            recorder,
        }
    }

    pub fn tcp_opened(&self) {
        self.tcp_open.increment(1.0);
        self.tcp_total.increment(1);
    }

    pub fn tcp_closed(&self) {
        self.tcp_open.decrement(1.0);
    }

    pub fn ws_opened(&self) {
        self.ws_open.increment(1.0);
        self.ws_total.increment(1);
    }

    pub fn ws_closed(&self) {
        self.ws_open.decrement(1.0);
    }

    /// A reply past its connection's byte budget: the next request waits.
    pub fn reply_paced(&self) {
        self.replies_paced.increment(1);
    }

    /// A connection or request refused by a limit.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].increment(1);
    }

    /// One request answered: its method label, its outcome (`ok` or an error reason)
    /// and how long it took.
    pub fn request(&self, method: &str, outcome: &'static str, took: Duration) {
        let Some(cells) = self
            .methods
            .iter()
            .find(|c| c.name == method)
            .or(self.methods.last())
        else {
            return;
        };
        cells.latency.record(took.as_secs_f64());
        self.outcome_counter(cells, outcome).increment(1);
    }

    /// The counter of `outcome` for one method, registered on its first use; once
    /// every slot is taken, further outcomes are counted as `other`.
    fn outcome_counter<'a>(&self, cells: &'a MethodCells, outcome: &'static str) -> &'a Counter {
        let register = |outcome: &'static str| {
            let key = Key::from_parts(
                "jetway_requests_total",
                vec![
                    Label::from_static_parts("method", cells.name),
                    Label::from_static_parts("outcome", outcome),
                ],
            );
            (outcome, self.recorder.register_counter(&key, &META))
        };
        let last = OUTCOME_SLOTS - 1;
        for slot in &cells.outcomes[..last] {
            let (name, counter) = slot.get_or_init(|| register(outcome));
            if *name == outcome {
                return counter;
            }
        }
        &cells.outcomes[last].get_or_init(|| register("other")).1
    }

    /// The page in the Prometheus text format (version 0.0.4).
    pub fn render(&self, s: &Snapshot) -> String {
        let r = &self.recorder;
        let set = |name: &'static str, v: u64| {
            r.register_gauge(&Key::from_static_name(name), &META)
                .set(v as f64);
        };
        set("jetway_flights", s.flights);
        set("jetway_subscriptions", s.subscriptions);
        set("jetway_user_connections", s.user_connections);
        set("jetway_holds_pending_expiry", s.holds_pending_expiry);
        for (status, n) in &s.bookings {
            let key = Key::from_parts("jetway_bookings", vec![Label::new("status", *status)]);
            r.register_gauge(&key, &META).set(*n as f64);
        }
        let count = |name: &'static str, v: u64| {
            r.register_counter(&Key::from_static_name(name), &META)
                .absolute(v);
        };
        count("jetway_pushes_total", s.pushes);
        count("jetway_frames_dropped_total", s.frames_dropped);
        count("jetway_slow_consumer_closes_total", s.slow_consumer_closes);
        count("jetway_store_commits_total", s.store_commits);
        metrics::with_local_recorder(r, || self.process.collect());
        self.handle.render()
    }

    /// Folds the histograms' recent samples in; call it every few seconds so they
    /// do not grow between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Every family's unit and help text (`jetway_process_*` describe themselves).
const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        "jetway_build_info",
        None,
        "Always 1; the version of the running server is its label.",
    ),
    ("jetway_flights", None, "Flights in the inventory."),
    ("jetway_subscriptions", None, "Live seat-map subscriptions."),
    ("jetway_user_connections", None, "Logged-in connections."),
    (
        "jetway_connections_open",
        None,
        "Open WebSocket connections.",
    ),
    (
        "jetway_connections_total",
        None,
        "WebSocket connections accepted.",
    ),
    (
        "jetway_tcp_connections_open",
        None,
        "Open TCP connections (HTTP and WebSocket).",
    ),
    (
        "jetway_tcp_connections_total",
        None,
        "TCP connections accepted.",
    ),
    (
        "jetway_rejected_total",
        None,
        "Connections and requests refused by a limit, by reason.",
    ),
    (
        "jetway_replies_paced_total",
        None,
        "Replies past their connection's byte budget (--reply-rate), after which the next request waited.",
    ),
    (
        "jetway_requests_total",
        None,
        "Requests answered, by method and outcome (ok or the error reason).",
    ),
    (
        "jetway_request_duration_seconds",
        Some(Unit::Seconds),
        "Request latency from parsed frame to queued reply, by method.",
    ),
    (
        "jetway_pushes_total",
        None,
        "Push frames (seats.changed, booking.updated) queued to connections.",
    ),
    (
        "jetway_frames_dropped_total",
        None,
        "Outbound frames not queued because the connection was full or closing.",
    ),
    (
        "jetway_slow_consumer_closes_total",
        None,
        "Connections closed because their outbound queue overflowed.",
    ),
    (
        "jetway_holds_pending_expiry",
        None,
        "Holds waiting for the expiry task.",
    ),
    (
        "jetway_bookings",
        None,
        "Bookings by status (held: until paid, cancelled or expired).",
    ),
    ("jetway_store_commits_total", None, "Writes made durable."),
    (
        "jetway_store_sync_duration_seconds",
        Some(Unit::Seconds),
        "Latency of one durable sync (group commit).",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_past_the_slots_and_unknown_methods_count_as_other() {
        let m = Metrics::new(&["a.b"]);
        for i in 0..40 {
            let reason: &'static str = Box::leak(format!("r{i}").into_boxed_str());
            m.request("a.b", reason, Duration::from_millis(1));
        }
        m.request("x.y", "ok", Duration::from_millis(1));
        m.rejected(Rejection::LoginBackoff);
        let page = m.render(&Snapshot::default());
        let has = |line: &str| page.lines().any(|l| l == line);
        assert!(has(
            r#"jetway_requests_total{method="a.b",outcome="r30"} 1"#
        ));
        assert!(has(
            r#"jetway_requests_total{method="a.b",outcome="other"} 9"#
        ));
        assert!(has(
            r#"jetway_requests_total{method="other",outcome="ok"} 1"#
        ));
        assert!(has(
            r#"jetway_request_duration_seconds_count{method="a.b"} 40"#
        ));
        assert!(has(r#"jetway_rejected_total{reason="login_backoff"} 1"#));
        assert!(has(r#"jetway_rejected_total{reason="origin"} 0"#));
    }
}
