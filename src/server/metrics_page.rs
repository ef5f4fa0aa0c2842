//! The `/metrics` route: reads what only the app knows at scrape time (flights,
//! subscriptions, bookings by status, ...) into a [`Snapshot`] and renders the
//! page from the app's [`crate::metrics::Metrics`]. Served on the main listener, or
//! on its own with `--metrics-listen`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use crate::app::App;
use crate::metrics::Snapshot;

/// What the Prometheus text format (0.0.4) is served as.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn snapshot(app: &App) -> Snapshot {
    let frames = crate::fanout::frame_stats();
    Snapshot {
        flights: app.inventory.len() as u64,
        subscriptions: app.inventory.watchers() as u64,
        user_connections: app.users.connections() as u64,
        holds_pending_expiry: app.expiry.pending() as u64,
        bookings: app
            .store
            .booking_counts()
            .iter()
            .map(|(status, n)| (status.as_str(), n))
            .collect(),
        pushes: frames.pushes,
        frames_dropped: frames.dropped,
        slow_consumer_closes: frames.slow_closes,
        store_commits: app.committer.stats().tickets,
    }
}

/// The page's text.
pub fn scrape(app: &App) -> String {
    app.metrics.render(&snapshot(app))
}

pub async fn page(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], scrape(&app)).into_response()
}

/// The router of the `--metrics-listen` listener: `/metrics` only.
pub fn router(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(page)).with_state(app)
}
