//! Routes one JSON-RPC request to its use case and encodes the reply.

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::sync::Arc;

use crate::app::{App, AuthSession};
use crate::domain::FlightId;
use crate::fanout::Outbox;
use crate::protocol::params::decode;
use crate::protocol::{envelope, ApiError, Request};

/// A connection's state between requests.
pub struct ConnState {
    pub outbox: Outbox,
    pub session: Option<AuthSession>,
    pub subscriptions: Vec<FlightId>,
}

/// Most flights one connection may watch at once.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// Handles a request and queues its reply (none for a notification).
pub async fn handle(app: &Arc<App>, conn: &mut ConnState, req: Request) {
    let id = req.id.clone().unwrap_or(Value::Null);
    let method = req.method.clone();
    let notification = req.id.is_none();
    let outcome = call(app, conn, req).await;
    if notification {
        return;
    }
    let frame = match outcome {
        Ok(Some(result)) => envelope::success(&id, &result),
        Ok(None) => return,
        Err(e) => {
            if matches!(e, ApiError::Internal) {
                tracing::error!(%method, "request failed with an internal error");
            }
            envelope::failure(&id, &e)
        }
    };
    conn.outbox.send(Utf8Bytes::from(frame));
}

/// `Ok(None)` when the use case queued its own reply.
async fn call(
    app: &Arc<App>,
    conn: &mut ConnState,
    req: Request,
) -> Result<Option<Value>, ApiError> {
    let p = req.params;
    let r = match req.method.as_str() {
        "auth.register" => {
            app.register(decode(p)?, &conn.outbox, &mut conn.session)
                .await?
        }
        "auth.login" => {
            app.login(decode(p)?, &conn.outbox, &mut conn.session)
                .await?
        }
        "auth.resume" => {
            app.resume(decode(p)?, &conn.outbox, &mut conn.session)
                .await?
        }
        "auth.logout" => app.logout(&conn.outbox, &mut conn.session).await?,
        "flights.airports" => app.airports(),
        "flights.search" => app.search(decode(p)?)?,
        "flights.get" => app.flight_get(decode(p)?)?,
        "seats.subscribe" => {
            let params: crate::protocol::params::Subscribe = decode(p)?;
            let already = conn
                .subscriptions
                .iter()
                .any(|f| f.as_str() == params.flight_id);
            if !already && conn.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Err(ApiError::InvalidState(format!(
                    "a connection may watch at most {MAX_SUBSCRIPTIONS} flights"
                )));
            }
            app.subscribe(
                req.id.as_ref(),
                params,
                &conn.outbox,
                &mut conn.subscriptions,
            )?;
            return Ok(None);
        }
        "seats.unsubscribe" => {
            app.unsubscribe(decode(p)?, conn.outbox.id(), &mut conn.subscriptions)?
        }
        "booking.hold" => {
            app.hold(&app.authenticate(&mut conn.session)?, decode(p)?)
                .await?
        }
        "booking.pay" => {
            app.pay(&app.authenticate(&mut conn.session)?, decode(p)?)
                .await?
        }
        "booking.cancel" => {
            app.cancel(&app.authenticate(&mut conn.session)?, decode(p)?)
                .await?
        }
        "booking.change_seat" => {
            app.change_seat(&app.authenticate(&mut conn.session)?, decode(p)?)
                .await?
        }
        "booking.get" => app.booking_get(&app.authenticate(&mut conn.session)?, decode(p)?)?,
        "bookings.list" => app.bookings_list(&app.authenticate(&mut conn.session)?)?,
        "orders.list" => app.orders_list(&app.authenticate(&mut conn.session)?)?,
        "history.list" => app.history_list(&app.authenticate(&mut conn.session)?, decode(p)?)?,
        m => return Err(ApiError::MethodNotFound(m.chars().take(64).collect())),
    };
    Ok(Some(r))
}
