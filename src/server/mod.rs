//! HTTP and WebSocket front: routes, static files, the upgrade (with its Origin
//! check and buffer sizes), and start/stop of the whole server.

mod dispatch;
mod session;

use axum::extract::{ws::WebSocketUpgrade, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::{App, StartError};
use crate::config::Config;

pub use session::MAX_REQUEST_BYTES;

/// Per-connection WebSocket buffer sizes (see docs/protocol.md, "Limits").
pub const READ_BUFFER: usize = 4 * 1024;
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Clone)]
struct Ctx {
    app: Arc<App>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http: tokio::task::JoinHandle<()>,
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let app = App::open(config).await?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ctx = Ctx {
        app: app.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    let router = router(ctx);
    let stop = shutdown.clone();
    let http = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%addr, "jetway listening");
    Ok(Running {
        addr,
        app,
        shutdown,
        tracker,
        http,
    })
}

impl Running {
    /// Stops accepting, closes every WebSocket with 1001, lets in-flight requests
    /// finish, and makes everything durable.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        self.app.stop().await;
    }
}

fn router(ctx: Ctx) -> Router {
    let static_dir = ctx.app.config.static_dir.clone();
    let security = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback_service(ServeDir::new(static_dir))
        .layer(security("x-content-type-options", "nosniff"))
        .layer(security("referrer-policy", "no-referrer"))
        .layer(security(
            "content-security-policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .layer(security("x-frame-options", "DENY"))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.app.is_ready() && !ctx.shutdown.is_cancelled() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let text = crate::metrics::render(&ctx.app);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// An upgrade is allowed without an `Origin` (wscat, scripts) or from the same host.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    origin_host.eq_ignore_ascii_case(host)
}

async fn upgrade(State(ctx): State<Ctx>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if !origin_allowed(&headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let Ctx {
        app,
        shutdown,
        tracker,
    } = ctx;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let t = tracker.clone();
            t.track_future(session::run(app, socket, shutdown))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origin_must_match_host_when_present() {
        assert!(origin_allowed(&headers(None, "127.0.0.1:8080")));
        assert!(origin_allowed(&headers(
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080"
        )));
        assert!(!origin_allowed(&headers(
            Some("https://evil.example"),
            "127.0.0.1:8080"
        )));
        assert!(!origin_allowed(&headers(Some("null"), "127.0.0.1:8080")));
    }
}
