//! HTTP and WebSocket front: routes, static files, the WebSocket upgrade (its Origin
//! check, the handshake straight onto tokio-tungstenite, buffer sizes), and
//! start/stop of the whole server.

mod assets;
mod coalesce;
mod dispatch;
pub mod forwarded;
pub mod limits;
mod metrics_page;
mod session;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::app::{App, StartError};
use crate::config::Config;
use crate::metrics::Rejection;
use crate::protocol::contract;
use limits::TcpHold;

pub use metrics_page::scrape;
pub use session::MAX_REQUEST_BYTES;

/// Per-connection WebSocket buffer sizes (see docs/protocol.md, "Limits"). The read
/// buffer is small (tungstenite reserves room for a larger frame when it reads one)
/// but not 0, which would make it read a frame 14 bytes at a time from the socket's
/// read-ahead ([`coalesce`]).
pub const READ_BUFFER: usize = 128;
pub const MAX_MESSAGE: usize = 1 << 20;
/// The most tungstenite holds of its own frames (control frames only: text goes
/// through [`coalesce`]) while the socket is full. Unbounded by default: a client
/// that never read and kept sending pings had every pong kept, without limit. At the
/// cap tungstenite keeps only the newest pong owed, and a server ping or close that
/// does not fit ends the connection.
pub const MAX_CONTROL_BACKLOG: usize = 4096;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_CONTROL_BACKLOG)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

#[derive(Clone)]
struct Ctx {
    app: Arc<App>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shield: Arc<limits::Shield>,
    roster: Arc<crate::fanout::Roster>,
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http: Vec<tokio::task::JoinHandle<()>>,
}

/// The main listener and, with `--metrics-listen`, the metrics listener.
struct Listeners {
    main: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, StartError> {
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners {
            main: bind(config.listen).await?,
            metrics,
        })
    }
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    // the addresses first: a taken port fails before the database is opened
    let listeners = Listeners::bind(&config).await?;
    let app = App::open(config).await?;
    serve(listeners, app)
}

/// Serves an app its caller opened (a test gives it a store of its own) on the
/// addresses of its config.
pub async fn start_app(app: Arc<App>) -> Result<Running, StartError> {
    let listeners = Listeners::bind(&app.config).await?;
    serve(listeners, app)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))
}

fn serve(listeners: Listeners, app: Arc<App>) -> Result<Running, StartError> {
    let local =
        |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| StartError::Other(e.to_string()));
    let listener = listeners.main;
    let addr = local(&listener)?;
    let metrics_addr = listeners.metrics.as_ref().map(local).transpose()?;
    let shield = limits::Shield::new(app.config.limits.clone(), app.metrics.clone());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let roster = Arc::new(crate::fanout::Roster::default());
    let sweep = {
        let (app, roster, stop) = (app.clone(), roster.clone(), shutdown.clone());
        async move { session::sweeper(roster, &app.config, stop).await }
    };
    let ctx = Ctx {
        app: app.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        shield: shield.clone(),
        roster,
    };
    let router = router(ctx);
    let stop = shutdown.clone();
    let listener = limits::GuardedListener::new(
        listener,
        shield.limits.clone(),
        shield.counter.clone(),
        shield.metrics.clone(),
    );
    let mut http = vec![
        tokio::spawn(sweep),
        tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<limits::Peer>();
            let serve =
                axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http server failed");
            }
        }),
    ];
    if let Some(listener) = listeners.metrics {
        // the main listener's guards (per-address cap, handshake timeout, HTTP/1.1
        // only): a slowloris on an exposed metrics port used to hold file
        // descriptors the main listener needs, for good
        let listener = limits::GuardedListener::new(
            listener,
            shield.limits.clone(),
            shield.counter.clone(),
            shield.metrics.clone(),
        );
        // each request gives its connection another timeout, as on `--listen`: a
        // scraper's kept-alive connection is not cut while it scrapes
        let router =
            metrics_page::router(app.clone()).layer(axum::middleware::from_fn(request_started));
        let stop = shutdown.clone();
        http.push(tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<limits::Peer>();
            let serve =
                axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        }));
    }
    tracing::info!(%addr, ?metrics_addr, "jetway listening");
    Ok(Running {
        addr,
        metrics_addr,
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
        let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(self.http))
            .await;
        self.app.stop().await;
    }
}

/// The Content-Security-Policy: the app's own files only, plus Stripe.js (its script,
/// its frames and its API) when payments go through Stripe.
fn content_security_policy(stripe: bool) -> String {
    // the app styles elements through the CSSOM only (no style attributes or
    // elements); Stripe.js's 3-D Secure overlay needs inline styles
    let (script, frame, connect, style) = match stripe {
        true => (
            " https://js.stripe.com",
            "frame-src https://js.stripe.com https://hooks.stripe.com; ",
            " https://api.stripe.com",
            " 'unsafe-inline'",
        ),
        false => ("", "", "", ""),
    };
    format!(
        "default-src 'self'; script-src 'self'{script}; {frame}connect-src 'self' ws: wss:{connect}; \
         img-src 'self' data:; style-src 'self'{style}; frame-ancestors 'none'; \
         base-uri 'none'; object-src 'none'; form-action 'self'"
    )
}

fn router(ctx: Ctx) -> Router {
    let static_dir = ctx.app.config.static_dir.clone();
    let csp =
        content_security_policy(ctx.app.config.payments == crate::config::PaymentsKind::Stripe);
    let security = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    let mut routes = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/openrpc.json",
            get(|| async { axum::Json(contract::openrpc()) }),
        )
        .route(
            "/asyncapi.json",
            get(|| async { axum::Json(contract::asyncapi()) }),
        )
        .route("/client.json", get(client_config))
        .route("/webhooks/stripe", axum::routing::post(stripe_webhook))
        .route("/admin/backup", axum::routing::post(backup));
    // with --metrics-listen, /metrics is served there only
    if ctx.app.config.metrics_listen.is_none() {
        routes = routes.route(
            "/metrics",
            get(|State(ctx): State<Ctx>| metrics_page::page(State(ctx.app))),
        );
    }
    let routes = match static_dir {
        Some(dir) => routes.fallback_service(ServeDir::new(dir)),
        None => routes.fallback(assets::serve),
    };
    routes
        .layer(security("x-content-type-options", "nosniff"))
        .layer(security("referrer-policy", "no-referrer"))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'self'")),
        ))
        .layer(security("x-frame-options", "DENY"))
        .layer(axum::middleware::from_fn(request_started))
        .with_state(ctx)
}

/// `GET /client.json`: what a browser front end needs to know about this server's
/// payments: the gateway, and with Stripe the publishable key for Stripe.js.
async fn client_config(State(ctx): State<Ctx>) -> Response {
    use crate::config::PaymentsKind;
    let c = &ctx.app.config;
    let (payments, key) = match c.payments {
        PaymentsKind::Sandbox => ("sandbox", None),
        PaymentsKind::Stripe => ("stripe", c.stripe_publishable_key.as_deref()),
    };
    axum::Json(serde_json::json!({
        "payments": payments,
        "stripe_publishable_key": key,
    }))
    .into_response()
}

/// How much of a backup is handed to the connection at a time.
const BACKUP_CHUNK: usize = 64 * 1024;

/// `POST /admin/backup` with `Authorization: Bearer <admin session token>`: a
/// consistent snapshot of the database (what `jetway backup` saves).
async fn backup(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<limits::Peer>,
    headers: HeaderMap,
) -> Response {
    use crate::app::AppError;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match ctx.app.admin_by_token(token.trim()).await {
        Ok(()) => {}
        Err(AppError::Forbidden) => return (StatusCode::FORBIDDEN, "admins only").into_response(),
        Err(AppError::InvalidToken) => {
            let why = "an admin session token is required: Authorization: Bearer TOKEN";
            return (StatusCode::UNAUTHORIZED, why).into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "checking a backup's token failed");
            let why = "the token cannot be checked now: try again later";
            return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        }
    }
    // an admin's snapshot of a large database may take longer to make than the
    // handshake timeout that bounds other plain HTTP exchanges; and to send, so every
    // write to the connection that makes progress gives it a full timeout again: a
    // client that stops reading is cut a timeout after its last one
    let unbounded = peer.0.unbounded();
    let made = ctx.app.backup().await;
    if made.is_ok() {
        peer.0.paced_by_writes();
    }
    drop(unbounded);
    match made {
        Ok(bytes) => {
            tracing::info!(bytes = bytes.len(), "backup snapshot handed out");
            let kind = (header::CONTENT_TYPE, "application/octet-stream");
            let len = (header::CONTENT_LENGTH, bytes.len().to_string());
            let body = axum::body::Bytes::from(bytes);
            let chunks = futures::stream::unfold(body, |mut rest| {
                let chunk = rest.split_to(rest.len().min(BACKUP_CHUNK));
                let next = (!chunk.is_empty()).then_some((Ok::<_, Infallible>(chunk), rest));
                std::future::ready(next)
            });
            ([kind], [len], axum::body::Body::from_stream(chunks)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "backup failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backup failed: {e}"),
            )
                .into_response()
        }
    }
}

/// The most of a webhook's body that is read. Stripe's events are a few KiB (an
/// object's metadata is at most 50 keys of 500 characters); an anonymous sender can
/// make the server hold no more than this per connection.
const WEBHOOK_BODY_LIMIT: usize = 256 * 1024;

async fn stripe_webhook(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use crate::app::WebhookError;
    let not_found = |e: WebhookError| (StatusCode::NOT_FOUND, e.to_string()).into_response();
    // nothing is read when nothing would be taken
    if let Err(e) = ctx.app.webhook_secret() {
        return not_found(e);
    }
    let body = match axum::body::to_bytes(body, WEBHOOK_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) if over_limit(&e) => {
            let why = format!("the body is over {WEBHOOK_BODY_LIMIT} bytes");
            return (StatusCode::PAYLOAD_TOO_LARGE, why).into_response();
        }
        Err(_) => {
            let why = "the body could not be read (malformed or cut off)";
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // nothing new once the server stops (Stripe tells it again)
    if ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping").into_response();
    }
    match ctx.app.stripe_webhook_detached(signature, body).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e @ WebhookError::NotConfigured) => not_found(e),
        Err(e @ (WebhookError::Signature(_) | WebhookError::Malformed)) => {
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e @ WebhookError::Internal) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

/// Whether a body's read failed on its length limit (the error or one it wraps).
fn over_limit(mut e: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        match e.source() {
            Some(inner) => e = inner,
            None => return false,
        }
    }
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.app.is_ready() && !ctx.shutdown.is_cancelled() {
        "ready".into_response()
    } else if ctx.app.committer.has_failed() {
        let why = "not ready: a sync of the data dir failed; restart the server";
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Each HTTP request gives its connection another handshake timeout.
async fn request_started(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<limits::Peer>>() {
        peer.0.request_started();
    }
    next.run(req).await
}

/// An upgrade is allowed without an `Origin` (wscat, scripts), from the same host,
/// or from an origin on the allowlist (`--allowed-origins`; `*` allows any). The
/// same host counts only when the `Host` is `pinned` (the peer is not on loopback, or
/// a trusted proxy forwarded the request) or names loopback: a page of a hostile name
/// pointed at 127.0.0.1 (DNS rebinding) is its own "same host" to a server it reaches
/// over loopback.
fn origin_allowed(headers: &HeaderMap, allowlist: &[String], pinned: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim();
    if allowlist
        .iter()
        .map(|a| a.trim().trim_end_matches('/'))
        .any(|a| a == "*" || (!a.is_empty() && a.eq_ignore_ascii_case(origin)))
    {
        return true;
    }
    let Some(Ok(host)) = headers.get(header::HOST).map(|h| h.to_str()) else {
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    origin_host.eq_ignore_ascii_case(host) && (pinned || loopback_host(host))
}

/// Whether a `Host` header (a name or address, with or without a port) names this
/// machine's loopback: an address in 127.0.0.0/8, `::1`, `localhost` or a name under
/// `.localhost` (which browsers resolve to loopback themselves, RFC 6761: no page of
/// another site can be served under one).
fn loopback_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade request (RFC 6455 4.2.1),
/// or the status and text refusing it.
fn handshake_key(req: &axum::extract::Request) -> Result<HeaderValue, (StatusCode, &'static str)> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != axum::http::Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        ));
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err((StatusCode::UPGRADE_REQUIRED, "this is a WebSocket endpoint"));
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13"));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing"))?;
    if !is_nonce(key.as_bytes()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        ));
    }
    Ok(key.clone())
}

/// Whether `key` is the base64 of 16 bytes (RFC 6455 4.1): 22 characters of the
/// alphabet, the last carrying 2 bits (the other 4 zero), then `==`. A shape this
/// fixed needs no decoder.
fn is_nonce(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

async fn upgrade(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<limits::Peer>,
    mut req: axum::extract::Request,
) -> Response {
    let limits = &ctx.shield.limits;
    let peer_ip = peer.0.peer.ip();
    let pinned = !crate::config::is_loopback(peer_ip)
        || forwarded::forwarded_by_proxy(
            peer_ip,
            req.headers(),
            &limits.trusted_proxies,
            limits.forwarded_header,
        );
    if !origin_allowed(req.headers(), &limits.allowed_origins, pinned) {
        ctx.shield.metrics.rejected(Rejection::Origin);
        let refused = "origin not allowed (a page on another host, or reached over \
            loopback under a name other than localhost: list its origin in \
            --allowed-origins, or its proxy in --trusted-proxies)";
        return (StatusCode::FORBIDDEN, refused).into_response();
    }
    if ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let key = match handshake_key(&req) {
        Ok(k) => k,
        Err(refused) => return refused.into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "connection cannot be upgraded",
        )
            .into_response();
    };
    let Ctx {
        app,
        tracker,
        shield,
        roster,
        ..
    } = ctx;
    let ip = forwarded::client_ip(
        peer_ip,
        req.headers(),
        &shield.limits.trusted_proxies,
        shield.limits.forwarded_header,
    );
    let addr_key = shield.limits.addr_key(ip);
    // behind a trusted proxy each WebSocket counts for the client it forwards
    let slot = match forwarded::is_trusted(peer_ip, &shield.limits.trusted_proxies)
        && shield.limits.limits_addr(ip)
    {
        true => match shield
            .counter
            .try_acquire(addr_key, shield.limits.max_connections_per_addr)
        {
            Some(slot) => Some(slot),
            None => {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::PerAddressLimit);
                tracing::info!(client = %ip, counted_as = %addr_key, proxy = %peer_ip, "too many connections from one address");
                return (StatusCode::TOO_MANY_REQUESTS, "too many connections\n").into_response();
            }
        },
        false => None,
    };
    tracing::debug!(client = %ip, peer = %peer_ip, "websocket opened");
    let conn = session::run(app, on_upgrade, slot, roster, shield, ip);
    tracker.spawn(conn);
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = accept {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The WebSocket over an upgraded connection, on the TCP stream itself (hyper's box
/// around it and the HTTP side's mark of it are freed), and what counts it as open.
/// Not `async`: the connection's task would keep room for this step's state for as
/// long as it runs.
fn websocket(
    upgraded: hyper::upgrade::Upgraded,
    rx: &crate::fanout::OutboxReceiver,
) -> Option<(session::Socket, TcpHold)> {
    use futures::FutureExt;
    type Http = hyper_util::rt::TokioIo<limits::GuardedStream>;
    let Ok(parts) = hyper_util::server::conn::auto::upgrade::downcast::<Http>(upgraded) else {
        tracing::error!("an upgraded connection of an unexpected type");
        return None;
    };
    let (tcp, hold) = parts.io.into_inner().into_websocket();
    let io = coalesce::Coalesce::new(rx.attach(tcp)).read_first(&parts.read_buf);
    // ready at once: there is no handshake to wait for
    let Some(socket) =
        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).now_or_never()
    else {
        tracing::error!("the WebSocket over an upgraded connection was not ready");
        return None;
    };
    Some((socket, hold))
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
    fn a_nonce_is_the_base64_of_16_bytes() {
        assert!(is_nonce(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_nonce(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(is_nonce(b"+/+/+/+/+/+/+/+/+/+/+w=="));
        for bad in [
            &b""[..],
            b"!!!",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j!Q==",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
        ] {
            assert!(!is_nonce(bad), "{bad:?}");
        }
    }

    #[test]
    fn origin_must_match_host_when_present() {
        for pinned in [false, true] {
            assert!(origin_allowed(
                &headers(None, "127.0.0.1:8080"),
                &[],
                pinned
            ));
            assert!(origin_allowed(
                &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
                &[],
                pinned
            ));
            assert!(!origin_allowed(
                &headers(Some("https://evil.example"), "127.0.0.1:8080"),
                &[],
                pinned
            ));
            assert!(!origin_allowed(
                &headers(Some("null"), "127.0.0.1:8080"),
                &[],
                pinned
            ));
        }
    }

    /// A hostile name pointed at 127.0.0.1 (DNS rebinding) is its own page's host:
    /// over loopback the same host counts only under a loopback name, unless the host
    /// is pinned (a peer beyond loopback, or a request a trusted proxy forwarded).
    #[test]
    fn a_rebound_name_is_not_the_same_host_of_a_loopback_server() {
        let same = |host: &str| headers(Some(&format!("http://{host}")), host);
        for host in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.5:8080",
            "[::2]:80",
        ] {
            assert!(!origin_allowed(&same(host), &[], false), "{host}");
            assert!(origin_allowed(&same(host), &[], true), "{host}");
        }
        for host in [
            "127.0.0.1:8080",
            "127.1.2.3",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:3000",
            "localhost.",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(origin_allowed(&same(host), &[], false), "{host}");
        }
        for host in [
            "localhost.evil.example",
            "evillocalhost",
            "127.0.0.1.evil",
            "[::1",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
        let listed = ["http://evil.example:8080".to_owned()];
        assert!(origin_allowed(&same("evil.example:8080"), &listed, false));
    }

    #[test]
    fn stripe_js_is_allowed_only_with_stripe_payments() {
        let plain = content_security_policy(false);
        assert!(!plain.contains("stripe"), "{plain}");
        assert!(plain.contains("script-src 'self';"), "{plain}");
        assert!(plain.contains("style-src 'self';"), "{plain}");
        assert!(!plain.contains("unsafe-inline"), "{plain}");
        let stripe = content_security_policy(true);
        assert!(
            stripe.contains("script-src 'self' https://js.stripe.com;"),
            "{stripe}"
        );
        assert!(stripe.contains("connect-src 'self' ws: wss: https://api.stripe.com;"));
        assert!(
            stripe.contains("style-src 'self' 'unsafe-inline';"),
            "{stripe}"
        );
        assert!(stripe.contains("frame-ancestors 'none'"), "{stripe}");
        // no <base> to redirect the app's relative scripts, no plugins, no form posts
        // elsewhere
        for d in ["base-uri 'none'", "object-src 'none'", "form-action 'self'"] {
            assert!(plain.contains(d) && stripe.contains(d), "{d}: {plain}");
        }
        assert!(HeaderValue::from_str(&stripe).is_ok());
    }

    #[test]
    fn allowlist_adds_origins() {
        let list = vec!["https://app.example/".to_owned(), "http://x.test:81".into()];
        let h = |o| headers(Some(o), "127.0.0.1:8080");
        assert!(origin_allowed(&h("https://app.example"), &list, false));
        assert!(origin_allowed(&h("HTTP://X.TEST:81"), &list, false));
        assert!(!origin_allowed(
            &h("https://app.example.evil"),
            &list,
            false
        ));
        assert!(!origin_allowed(&h("http://x.test"), &list, false));
        assert!(origin_allowed(&h("http://127.0.0.1:8080"), &list, false));
        assert!(origin_allowed(
            &h("https://anything"),
            &["*".to_owned()],
            false
        ));
        assert!(!origin_allowed(&h("null"), &["".to_owned()], false));
    }
}
