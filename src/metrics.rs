//! `/metrics` in the Prometheus text format.

use std::fmt::Write;

use crate::app::App;

pub fn render(app: &App) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP jetway_{name} {help}\n# TYPE jetway_{name} gauge\njetway_{name} {value}"
        );
    };
    let flights = app.inventory.all();
    gauge("flights", "Flights in the inventory.", flights.len() as f64);
    gauge(
        "subscriptions",
        "Live seat-map subscriptions.",
        flights.iter().map(|f| f.watchers()).sum::<usize>() as f64,
    );
    gauge(
        "user_connections",
        "Logged-in connections.",
        app.users.connections() as f64,
    );
    gauge(
        "holds_pending_expiry",
        "Holds waiting to expire.",
        app.expiry.pending() as f64,
    );
    let c = app.committer.stats();
    gauge(
        "store_syncs_total",
        "Durable syncs (group commits).",
        c.syncs as f64,
    );
    gauge(
        "store_commits_total",
        "Writes made durable.",
        c.tickets as f64,
    );
    gauge(
        "store_sync_seconds_total",
        "Time spent in durable syncs.",
        c.sync_seconds_total,
    );
    out
}
