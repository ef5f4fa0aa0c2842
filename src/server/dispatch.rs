//! Routes one JSON-RPC request to its use case and encodes the reply: the method
//! ([`Method`], the one list of methods), who may call it, then its handler.

use serde_json::value::RawValue;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use super::limits::{Claimant, PaidUntil, ReplyPace, Shield};

use crate::app::{App, AppError, ConnSession};
use crate::domain::FlightId;
use crate::fanout::{FrameKind, Outbox, Utf8Bytes};
use crate::protocol::params::{Access, Call, Method};
use crate::protocol::results::encode;
use crate::protocol::{envelope, ApiError, Request};

/// A connection's state between requests. Dropping it (at the end of the connection,
/// or with a request that panicked) removes the connection from every flight it
/// watches and from its user's connections.
pub struct ConnState {
    app: Arc<App>,
    pub outbox: Outbox,
    pub session: ConnSession,
    pub subscriptions: Vec<FlightId>,
    /// The airports of the departure boards it watches.
    pub boards: Vec<String>,
    /// The client's address (login backoff).
    pub peer: IpAddr,
    /// What its replies have drawn on its budget (see [`ReplyPace`]).
    replies_paid: PaidUntil,
}

impl ConnState {
    pub fn new(app: Arc<App>, outbox: Outbox, peer: IpAddr) -> Self {
        ConnState {
            app,
            outbox,
            session: None,
            subscriptions: Vec::new(),
            boards: Vec::new(),
            peer,
            replies_paid: super::limits::pace_clock(),
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Brings its reply budget's mark up to the clock if it fell behind: heard from
    /// the client (every frame) and pinged (every silence), the mark is never old
    /// enough to be mistaken for one ahead once the clock wraps.
    pub fn keep_pace(&mut self) {
        ReplyPace::catch_up(&mut self.replies_paid);
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.app.leave_all(self.outbox.id(), &self.subscriptions);
        self.app.boards.leave(self.outbox.id(), &self.boards);
        if let Some(s) = &self.session {
            self.app.users.detach(s.user_id, self.outbox.id());
        }
    }
}

/// The metric label of a method name: itself if known, else `other`.
pub fn method_label(m: &str) -> &'static str {
    Method::parse(m).map_or(crate::metrics::OTHER_METHOD, Method::name)
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// Ends a `test.push_then_wait` request's wait.
#[cfg(test)]
pub static TEST_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Handles a request and queues its reply (none for a notification). Gives how long
/// the connection waits before it reads its next request: what the request's
/// replies drew past the connection's reply budget.
pub async fn handle(shield: &Shield, conn: &mut ConnState, req: Request) -> Duration {
    let app = conn.app.clone();
    let _running = app.committer.request_running();
    let label = method_label(&req.method);
    let span = tracing::info_span!(
        "request",
        rid = REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
        conn = conn.outbox.id(),
        method = label
    );
    let handling = handle_in_span(&app, shield, conn, req, label);
    let unsent = app
        .committer
        .handling_request(handling)
        .instrument(span)
        .await;
    drop(_running);
    // what the request's replies drew on the connection's budget, its own and any its
    // use case sent (a seat map, a board), and one a commit sent early; a
    // notification's result is paid for as if sent, as encoding it cost the same
    let drawn = crate::fanout::reply_bytes() + unsent;
    ReplyPace::of(&shield.limits).charge(&mut conn.replies_paid, drawn)
}

/// Returns the bytes of a result encoded and not sent: a notification's.
async fn handle_in_span(
    app: &Arc<App>,
    shield: &Shield,
    conn: &mut ConnState,
    req: Request,
    label: &'static str,
) -> usize {
    let started = Instant::now();
    let id = req.id.clone().unwrap_or(Value::Null);
    let method = req.method.clone();
    let notification = req.id.is_none();
    let outcome = call(app, shield, conn, req).await;
    let early = crate::fanout::replied_early();
    let result = match &outcome {
        // the client has its answer: the change is durable
        _ if early => "ok",
        Ok(_) => "ok",
        Err(e) => e.reason(),
    };
    let took = started.elapsed();
    shield.metrics.request(label, result, took);
    tracing::debug!(
        outcome = result,
        micros = took.as_micros() as u64,
        "request done"
    );
    if early {
        if let Err(e) = &outcome {
            tracing::warn!(%method, error = %e, "a request failed after its change was durable and answered");
        }
        return 0;
    }
    if notification {
        return outcome.map_or(0, |r| r.map_or(0, |r| r.get().len()));
    }
    let frame = match outcome {
        Ok(Some(result)) => envelope::success(&id, &result),
        Ok(None) => return 0,
        Err(e) => {
            if matches!(e, ApiError::Internal) {
                tracing::error!(%method, "request failed with an internal error");
            }
            envelope::failure(&id, &e)
        }
    };
    conn.outbox.send(FrameKind::Reply, Utf8Bytes::from(frame));
    0
}

/// A change's answer, encoded for its reply unless the change's announcement sent
/// that already ([`crate::fanout::Requester::reply_early`]).
fn answer<T: serde::Serialize>(result: &T) -> Result<Option<Box<RawValue>>, ApiError> {
    if crate::fanout::replied_early() {
        return Ok(None);
    }
    encode(result).map(Some)
}

/// `Ok(None)` when the use case queued its own reply.
async fn call(
    app: &Arc<App>,
    shield: &Shield,
    conn: &mut ConnState,
    mut req: Request,
) -> Result<Option<Box<RawValue>>, ApiError> {
    #[cfg(test)]
    if req.method == "test.panic" {
        panic!("a request panicked (injected by a test)");
    }
    #[cfg(test)]
    if req.method == "test.push_then_wait" {
        // as a change's own push is queued for its reply, then a wait (as for a
        // gateway) before the reply
        let pushed = Utf8Bytes::from(crate::protocol::results::push("test.pushed", &()));
        conn.outbox
            .queue_quiet(FrameKind::Push, std::iter::once(&pushed));
        let wait = std::time::Duration::from_secs(10);
        let _ = tokio::time::timeout(wait, TEST_RELEASE.notified()).await;
        return Ok(Some(encode(&())?));
    }
    let method = Method::parse(&req.method)?;
    // who may call it is checked before its params
    let session = match method.access() {
        Access::Anyone => None,
        Access::LoggedIn => Some(app.authenticate(&mut conn.session).await?),
        Access::Admin => Some(app.require_admin(&mut conn.session).await?),
    };
    let caller = || session.as_ref().ok_or(ApiError::Unauthenticated);
    let r = match Call::of(method, req.object_params()?) {
        Call::Register(p) => {
            let checked = app.check_registration(p?).await;
            // a taken name costs a registration too: otherwise an address that has
            // used its registrations could still test names, taken or free, at will
            let counted = match &checked {
                Ok(_) | Err(AppError::UsernameTaken) => true,
                Err(_) => false,
            };
            if counted && !shield.registrations.admit(shield.login_addr(conn.peer)) {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::RegisterLimit);
                return Err(ApiError::RateLimited);
            }
            let registration = checked?;
            encode(
                &app.register(registration, &conn.outbox, &mut conn.session)
                    .await?,
            )?
        }
        Call::Login(p) => {
            let params = p?;
            let guard = &shield.logins;
            let addr = shield.login_addr(conn.peer);
            let name = params.username.chars().take(64).collect::<String>();
            let device = params
                .device_token
                .as_deref()
                .and_then(|t| app.trusted_device(&name, t));
            let who = match &device {
                Some(id) => Claimant::Device(id),
                None => Claimant::Username(&name),
            };
            let _turn = guard.turn(who).await;
            let addr_turn = match addr {
                Some(a) => Some(guard.address_turn(a).await),
                None => None,
            };
            if guard.check(who, addr).is_err() {
                shield
                    .metrics
                    .rejected(crate::metrics::Rejection::LoginBackoff);
                return Err(ApiError::RateLimited);
            }
            // the address's next login may start once this password is checked and a
            // failure counted (the claimant's turn lasts to the answer)
            let mut addr_turn = addr_turn;
            let checked = |ok: bool| {
                if !ok {
                    guard.failed(who, addr);
                }
                addr_turn.take();
            };
            let r = app
                .login(params, &conn.outbox, &mut conn.session, checked)
                .await?;
            guard.succeeded(who);
            encode(&r)?
        }
        Call::Resume(p) => encode(&app.resume(p?, &conn.outbox, &mut conn.session).await?)?,
        Call::Logout => encode(
            &app.logout(caller()?, &conn.outbox, &mut conn.session)
                .await?,
        )?,
        Call::Airports => encode(&app.airports())?,
        Call::Search(p) => encode(&app.search(p?)?)?,
        Call::FlightGet(p) => encode(&app.flight_get(p?)?)?,
        Call::Subscribe(p) => {
            let params = p?;
            let already = conn
                .subscriptions
                .iter()
                .any(|f| f.as_str() == params.flight_id);
            let max = app.config.limits.max_subscriptions;
            // an unknown flight is not_found (from subscribe) whatever the count
            if !already
                && conn.subscriptions.len() >= max
                && app.inventory.get(&params.flight_id).is_some()
            {
                return Err(ApiError::InvalidState(format!(
                    "a connection may watch at most {max} flights"
                )));
            }
            app.subscribe(
                req.id.as_ref(),
                params,
                &conn.outbox,
                &mut conn.subscriptions,
            )
            .await?;
            return Ok(None);
        }
        Call::Unsubscribe(p) => {
            encode(&app.unsubscribe(p?, conn.outbox.id(), &mut conn.subscriptions)?)?
        }
        Call::Watch(p) => {
            app.watch_board(req.id.as_ref(), p?, &conn.outbox, &mut conn.boards)?;
            return Ok(None);
        }
        Call::Unwatch(p) => encode(&app.unwatch_board(p?, conn.outbox.id(), &mut conn.boards)?)?,
        Call::Hold(p) => return answer(&app.hold(caller()?, p?).await?),
        Call::Pay(p) => return answer(&app.pay(caller()?, p?).await?),
        Call::Cancel(p) => return answer(&app.cancel(caller()?, p?).await?),
        Call::ChangeSeat(p) => return answer(&app.change_seat(caller()?, p?).await?),
        Call::CheckIn(p) => return answer(&app.check_in(caller()?, p?).await?),
        Call::BoardingPasses(p) => encode(&app.boarding_passes(caller()?, p?).await?)?,
        Call::BookingGet(p) => encode(&app.booking_get(caller()?, p?).await?)?,
        Call::BookingsList(p) => encode(&app.bookings_list(caller()?, p?).await?)?,
        Call::OrdersList(p) => encode(&app.orders_list(caller()?, p?).await?)?,
        Call::HistoryList(p) => encode(&app.history_list(caller()?, p?).await?)?,
        Call::AdminCreateFlight(p) => encode(&app.admin_create_flight(caller()?, p?).await?)?,
        Call::AdminCancelFlight(p) => encode(&app.admin_cancel_flight(caller()?, p?).await?)?,
        Call::AdminUpdateFlight(p) => encode(&app.admin_update_flight(caller()?, p?).await?)?,
        Call::AdminStats => encode(&app.admin_stats().await?)?,
        Call::AdminRefunds => encode(&app.admin_refunds().await?)?,
        Call::AdminResolveRefund(p) => encode(&app.admin_resolve_refund(caller()?, p?).await?)?,
        Call::Discover => crate::protocol::contract::openrpc_result()?,
        Call::WaitlistJoin(p) => encode(&app.waitlist_join(caller()?, p?).await?)?,
        Call::WaitlistLeave(p) => encode(&app.waitlist_leave(caller()?, p?).await?)?,
        Call::WaitlistList(p) => encode(&app.waitlist_list(caller()?, p?).await?)?,
    };
    Ok(Some(r))
}
