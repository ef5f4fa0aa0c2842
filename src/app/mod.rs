//! The use cases: one method per thing a client can ask, orchestrating the domain,
//! the inventory, the store, the committer and the payment gateway.
//!
//! Every seat change follows the same path (`seat_change`): lock the flight's
//! working map, check, write the batch to the store, apply it to the working map,
//! enqueue the publish action with the committer, unlock, then wait until the batch
//! is durable before replying. Gateway calls happen outside every lock, with the
//! booking marked busy.

mod admin;
mod auth;
mod board;
mod bookings;
mod busy;
mod checkin;
mod cluster;
mod error;
mod expiry;
mod flights;
mod payments;
mod presence;
mod refunds;
mod seat_change;
mod status;
mod waitlist;

use dashmap::DashMap;
use rand::RngCore;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::domain::{self, Booking, Flight, FlightId, Millis, UserId};
use crate::fanout::{QueueLimits, UserRegistry};
use crate::inventory::{FlightSeats, Inventory, Occupant};
use crate::metrics::Metrics;
use crate::payments::{PaymentGateway, Sandbox, Stripe};
use crate::protocol::results::{self, Replayable};
use crate::store::commit::Ticket;
use crate::store::{
    Batch, Committer, HistoryEvent, IdemKey, Memo, SessionRecord, SledStore, Store, StoreError,
};

pub use admin::new_flight;
pub use auth::{AuthSession, ConnSession, Registration};
use error::remember_err;
pub use error::AppError;
pub use expiry::Expiry;
pub use payments::WebhookError;
pub use refunds::new_refund;
use seat_change::{booking_push, Step};

/// Demo schedule horizon in days.
const SCHEDULE_DAYS: u32 = 14;
/// Flights per seeding write.
const SEED_CHUNK: usize = 50;

pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub committer: Arc<Committer>,
    pub metrics: Arc<Metrics>,
    pub inventory: Inventory,
    pub users: Arc<UserRegistry>,
    pub payments: Arc<dyn PaymentGateway>,
    pub expiry: Expiry,
    admin: admin::AdminState,
    presence: presence::Presence,
    pub boards: Arc<board::Boards>,
    closed_lines: waitlist::ClosedLines,
    sessions: DashMap<String, SessionRecord>,
    user_locks: DashMap<UserId, Arc<tokio::sync::Mutex<Unsynced>>>,
    dummy_hash: String,
    password_slots: tokio::sync::Semaphore,
    ready: AtomicBool,
    /// Every attempt an older version closed as failed without proof was checked.
    failures_checked: AtomicBool,
    /// This process's name on the payment marks it takes (`PaymentMark::owner`).
    mark_owner: String,
    /// Open refunds the gateway failed or refused on this node since it started
    /// (`admin.refunds.list`).
    refund_failures: DashMap<String, refunds::RefundTrouble>,
    /// The last pending refund asked about: each round of the watch goes on after it.
    watch_cursor: parking_lot::Mutex<Option<String>>,
    stop: tokio_util::sync::CancellationToken,
    background: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Short tasks spawned on the way (a payment mark released, a due hold's payment
    /// settled): [`App::stop`] waits for them before the store closes.
    tasks: tokio_util::task::TaskTracker,
    /// Stops the commit loop, last: the other tasks may still write on their way out.
    commit_stop: tokio_util::sync::CancellationToken,
    commit_task: parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database in {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("{0}")]
    Other(String),
}

/// An App dropped without [`App::stop`] (a test's server, a start that failed
/// half-way) still ends its commit thread, which would otherwise keep the store (and
/// its data dir's lock) open until the process exits.
impl Drop for App {
    fn drop(&mut self) {
        self.commit_stop.cancel();
    }
}

/// A request's `limit`: `default` when absent, else 1 to `max` (`invalid_params`).
fn checked_limit(given: Option<u32>, default: u32, max: u32) -> Result<usize, AppError> {
    match given.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n as usize),
        _ => Err(AppError::InvalidParams(format!("limit must be 1-{max}"))),
    }
}

impl App {
    /// Opens the database, seeds it if empty, rebuilds every seat map, starts the
    /// committer and expires the holds that fell due while the server was down.
    pub async fn open(config: Config) -> Result<Arc<App>, StartError> {
        config.check().map_err(StartError::Other)?;
        let store: Arc<dyn Store> = if config.store == crate::config::StoreKind::Etcd {
            connect_etcd(&config).await?
        } else {
            let (dir, cache_mb) = (config.data_dir.clone(), config.cache_mb);
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    crate::store::snapshot::check_complete(&dir)?;
                    SledStore::open_with_cache(&dir, cache_mb)
                })
                .await
                .map_err(|e| StartError::Other(e.to_string()))?
                .map_err(|source| StartError::Store {
                    path: store_place(&config),
                    source,
                })?,
            )
        };
        let payments: Arc<dyn PaymentGateway> = match config.payments {
            crate::config::PaymentsKind::Stripe => {
                let key = config.stripe_secret_key.clone().ok_or_else(|| {
                    StartError::Other(
                        "--payments stripe needs STRIPE_SECRET_KEY in the environment".into(),
                    )
                })?;
                if config.stripe_publishable_key.is_none() {
                    tracing::warn!(
                        "no --stripe-publishable-key: the browser app cannot complete 3-D Secure"
                    );
                }
                let timeout = std::time::Duration::from_secs(config.gateway_timeout);
                Arc::new(
                    Stripe::new(&config.stripe_api_base, key, timeout)
                        .map_err(StartError::Other)?,
                )
            }
            crate::config::PaymentsKind::Sandbox => {
                if !config.listen.ip().is_loopback() {
                    tracing::warn!(listen = %config.listen, "payments are the built-in sandbox (test cards, no money) on an address others can reach: anyone can confirm bookings without paying; use --payments stripe for real sales");
                }
                Arc::new(Sandbox::default())
            }
        };
        Self::with_parts(config, store, payments).await
    }

    pub async fn with_parts(
        config: Config,
        store: Arc<dyn Store>,
        payments: Arc<dyn PaymentGateway>,
    ) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new(crate::protocol::params::Method::NAMES));
        let committer = Committer::new(
            store.clone(),
            config.data_dir.display().to_string(),
            metrics.store_sync_seconds.clone(),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let commit_stop = tokio_util::sync::CancellationToken::new();
        if config.insecure_fast_hashing {
            tracing::warn!("--insecure-fast-hashing: passwords are hashed at Argon2's minimum cost; for tests only");
        }
        let fast = config.insecure_fast_hashing;
        let dummy_hash =
            tokio::task::spawn_blocking(move || auth::hash_password(&auth::random_token(), fast))
                .await
                .map_err(|e| StartError::Other(e.to_string()))?
                .map_err(|e| StartError::Other(format!("{e}")))?;
        let upkeep_task = tokio::spawn(run_metrics_upkeep(metrics.clone(), stop.clone()));
        let commit_task = committer
            .spawn(
                commit_stop.clone(),
                std::time::Duration::from_micros(config.commit_delay_us),
            )
            .map_err(|e| StartError::Other(format!("cannot start the commit thread: {e}")))?;
        let app = Arc::new(App {
            inventory: Inventory::new(config.replay_buffer),
            config,
            store,
            committer,
            metrics,
            users: Arc::new(UserRegistry::default()),
            payments,
            expiry: Expiry::default(),
            admin: Default::default(),
            presence: Default::default(),
            boards: Default::default(),
            closed_lines: Default::default(),
            sessions: DashMap::new(),
            user_locks: DashMap::new(),
            dummy_hash,
            password_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            ),
            ready: AtomicBool::new(false),
            failures_checked: AtomicBool::new(false),
            mark_owner: unique_id("node"),
            refund_failures: DashMap::new(),
            watch_cursor: parking_lot::Mutex::new(None),
            stop,
            background: parking_lot::Mutex::new(vec![upkeep_task]),
            tasks: tokio_util::task::TaskTracker::new(),
            commit_stop,
            commit_task: parking_lot::Mutex::new(Some(commit_task)),
        });
        if let Err(e) = app.prepare().await {
            // let go of the database, so that the operator's fix can open it
            app.stop().await;
            return Err(e);
        }
        // a charge made just before a crash confirms its booking before holds expire;
        // on a cluster, leave the attempts other nodes may still be working on
        app.reconcile_payments(app.in_flight_age(std::time::Duration::ZERO))
            .await;
        app.expire_due().await;
        app.resume_cancellations();
        let every = std::time::Duration::from_secs(app.config.reconcile_interval);
        let reconciler = tokio::spawn(payments::run_reconciler(
            app.clone(),
            every,
            app.stop.clone(),
        ));
        app.background.lock().push(reconciler);
        let expiry_task = tokio::spawn(expiry::run(app.clone(), app.stop.clone()));
        app.background.lock().push(expiry_task);
        let departures = tokio::spawn(status::run_departures(app.clone(), app.stop.clone()));
        app.background.lock().push(departures);
        let presence = tokio::spawn(presence::run_presence(app.clone(), app.stop.clone()));
        app.background.lock().push(presence);
        let boards = tokio::spawn(board::run_boards(app.clone(), app.stop.clone()));
        app.background.lock().push(boards);
        let sweeper = tokio::spawn(auth::run_session_sweeper(app.clone(), app.stop.clone()));
        app.background.lock().push(sweeper);
        app.ready.store(true, Ordering::SeqCst);
        Ok(app)
    }

    /// A store error at start, naming where the store is.
    fn start_err(&self, source: StoreError) -> StartError {
        StartError::Store {
            path: store_place(&self.config),
            source,
        }
    }

    /// The start-up steps that can refuse to start: seat maps, the cluster feed, the
    /// demo schedule, the `admin` account, and making all that durable.
    async fn prepare(self: &Arc<Self>) -> Result<(), StartError> {
        self.load_inventory()?;
        self.follow_cluster()?;
        self.seed().await?;
        self.rename_passenger().await?;
        self.ensure_admin().await?;
        self.committer
            .barrier()
            .await
            .map_err(|e| self.start_err(e))
    }

    /// Makes everything durable and stops the background tasks, so that the last
    /// reference to the store can go and the database closes.
    pub async fn stop(&self) {
        if let Err(e) = self.committer.barrier().await {
            tracing::error!(error = %e, "final flush failed");
        }
        self.ready.store(false, Ordering::SeqCst);
        self.stop.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.background.lock());
        for t in tasks {
            let _ = t.await;
        }
        // what those left behind (a payment mark to release) is written, then the
        // commit loop makes the rest durable, before the store closes
        self.tasks.close();
        self.tasks.wait().await;
        self.commit_stop.cancel();
        let commit_task = self.commit_task.lock().take();
        if let Some(t) = commit_task {
            if t.await.is_err() {
                tracing::error!("the commit loop's thread panicked");
            }
        }
        if let Some(r) = self.store.replicated() {
            r.close();
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.shut_down()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "closing the store failed"),
            Err(e) => tracing::error!(error = %e, "closing the store panicked"),
        }
    }

    /// Started, not stopping, and no sync has failed (see [`Committer`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.committer.has_failed()
    }

    /// This process's name on the payment marks it takes (`PaymentMark::owner`).
    pub fn mark_owner(&self) -> &str {
        &self.mark_owner
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            messages: self.config.queue_messages,
            bytes: self.config.queue_bytes,
        }
    }

    /// Adds the demo schedule's missing days (today and the next 13) unless disabled.
    async fn seed(&self) -> Result<(), StartError> {
        if self.config.no_seed && !self.config.live_payments() {
            return Ok(());
        }
        let flights = self.store.flights().map_err(|e| self.start_err(e))?;
        let now = domain::now_ms();
        let demo = domain::schedule::demo_schedule(domain::date_of(now), SCHEDULE_DAYS);
        if self.config.no_seed {
            // payments are live: made-up seats would be sold for real money
            let on_sale = demo_flights_on_sale(&flights, &demo, now);
            let keep = self.config.keep_demo_flights;
            let Some(first) = on_sale.first() else {
                if keep {
                    tracing::warn!("no flight of the demo schedule is on sale: remove --keep-demo-flights (JETWAY_KEEP_DEMO_FLIGHTS), which would let any that come back (a restored backup) be sold without a refusal");
                }
                return Ok(());
            };
            let what = format!(
                "flights of the demo schedule (made up, such as {first}; {} in all) are on \
                 sale in this store while payments use a live Stripe key",
                on_sale.len()
            );
            if !keep {
                return Err(StartError::Other(format!(
                    "{what}: their seats would be sold for real money. Start once with \
                     --keep-demo-flights (JETWAY_KEEP_DEMO_FLIGHTS=true) and cancel them \
                     (admin.flights.cancel refunds any booking), or start on a fresh store"
                )));
            }
            tracing::warn!(flights = on_sale.len(), "{what}, kept by --keep-demo-flights: cancel them (admin.flights.cancel refunds any booking) unless they are real flights that only look like demo ones (docs/deploy.md), then remove the flag");
            return Ok(());
        }
        let existing: std::collections::HashSet<FlightId> =
            flights.into_iter().map(|f| f.id).collect();
        let missing: Vec<Flight> = demo
            .into_iter()
            .filter(|f| !existing.contains(&f.id))
            .collect();
        if !missing.is_empty() {
            tracing::info!(flights = missing.len(), "seeding demo schedule");
            // in chunks: etcd bounds the operations of one transaction; created only
            // where missing, so that a node starting while another seeds (and then
            // perhaps cancels or updates a flight) never writes over its records
            for chunk in missing.chunks(SEED_CHUNK) {
                let create = |flights: &[Flight]| {
                    self.write_soon(Batch {
                        new_flights: flights.to_vec(),
                        ..Default::default()
                    })
                };
                let created: Vec<&Flight> = match create(chunk).await {
                    Ok(()) => chunk.iter().collect(),
                    Err(StoreError::Conflict) => {
                        let mut created = Vec::new();
                        for f in chunk {
                            match create(std::slice::from_ref(f)).await {
                                Ok(()) => created.push(f),
                                Err(StoreError::Conflict) => {}
                                Err(e) => return Err(self.start_err(e)),
                            }
                        }
                        created
                    }
                    Err(e) => return Err(self.start_err(e)),
                };
                for f in created {
                    self.inventory.add_new(f.clone());
                }
            }
        }
        Ok(())
    }

    /// Rebuilds every flight's seat map from the bookings that occupy seats.
    fn load_inventory(&self) -> Result<(), StartError> {
        let flights = self.store.flights().map_err(|e| self.start_err(e))?;
        let mut occupied: std::collections::HashMap<FlightId, Vec<Booking>> = Default::default();
        for b in self.store.all_bookings().map_err(|e| self.start_err(e))? {
            if b.status.occupies_seats() {
                occupied.entry(b.flight_id.clone()).or_default().push(b);
            }
        }
        for f in flights {
            let aircraft = f.aircraft();
            let mut seats: Vec<Option<Occupant>> = vec![None; aircraft.seats().len()];
            for b in occupied.remove(&f.id).unwrap_or_default() {
                if let Some(t) = b
                    .hold_expires_at
                    .filter(|_| b.status == domain::BookingStatus::Held)
                {
                    self.expiry.schedule(t, &b.flight_id, &b.locator);
                }
                for s in b.occupied_seats() {
                    match aircraft.seat_index(s) {
                        Some(i) if seats[i].is_none() => {
                            seats[i] = Some(Occupant {
                                locator: b.locator.clone(),
                                booked: b.status == domain::BookingStatus::Confirmed,
                            })
                        }
                        Some(_) => {
                            tracing::error!(flight = %f.id, seat = %s, "seat claimed by two bookings")
                        }
                        None => {
                            tracing::error!(flight = %f.id, seat = %s, "booking names a seat the aircraft lacks")
                        }
                    }
                }
            }
            let version = self.store.version(&f.id).map_err(|e| self.start_err(e))?;
            self.inventory.load(f, version, seats);
        }
        tracing::info!(flights = self.inventory.len(), "seat maps loaded");
        Ok(())
    }

    fn flight_seats(&self, id: &FlightId) -> Result<Arc<FlightSeats>, AppError> {
        self.inventory
            .get(id.as_str())
            .ok_or(AppError::NotFound("flight"))
    }

    /// A user's own booking; anyone else's is `not_found`, as is a malformed locator.
    fn own_booking(&self, user: UserId, locator: &str) -> Result<Booking, AppError> {
        let loc = domain::Locator::parse(locator).map_err(|_| AppError::NotFound("booking"))?;
        match self.store.booking(&loc)? {
            Some(b) if b.user_id == user => Ok(b),
            _ => Err(AppError::NotFound("booking")),
        }
    }

    /// A booking with its flight, as its owner sees it.
    fn booking_view(&self, b: Booking) -> results::BookingView {
        let flight = self.inventory.get(b.flight_id.as_str()).map(|f| f.flight());
        results::BookingView { booking: b, flight }
    }

    /// A booking and its order: the answer to a payment or a refund.
    fn paid_view(&self, b: Booking, order: domain::Order) -> results::BookingResult {
        results::BookingResult {
            booking: self.booking_view(b),
            order: Some(results::OrderView(order)),
        }
    }

    /// Runs a request at most once per (user, method, request_id): a repeat gets the
    /// first reply, also after a restart, once that reply's write is durable (the
    /// first try may have failed on a sync, or ended before its write was on disk).
    /// Requests of one user are serialized: `f` runs in the user's turn, which lasts
    /// until it returns unless it ends it sooner ([`Turn::end`], once its reply is
    /// written: a repeat then finds that reply and waits for it to be durable, and a
    /// refusal of the next request waits for it too, since it may rest on it). On a
    /// cluster the caller catches up first, so that a retry through another node
    /// than the first try sees the first reply.
    async fn idempotent<'s, R, F, Fut>(
        &'s self,
        user: UserId,
        method: &'static str,
        request_id: &str,
        f: F,
    ) -> Result<R, AppError>
    where
        R: Replayable,
        F: FnOnce(IdemKey, Turn<'s>) -> Fut,
        Fut: std::future::Future<Output = Result<R, AppError>>,
    {
        let key = idem_key(user, method, request_id)?;
        let turn = self.user_turn(user).await;
        let unsynced = turn.unsynced();
        if let Some(v) = self.store.reply(&key)? {
            self.committer.settle_reads().await?;
            return replay(v);
        }
        let turn = Turn(Arc::new(parking_lot::Mutex::new(turn)));
        let r = REPLY_KEY.scope(key.clone(), f(key, turn.clone())).await;
        if let (Err(_), Some(t)) = (&r, unsynced) {
            // the refusal may rest on that write: the next request learns of it too,
            // and is decided while this one waits
            turn.end_after(t);
            self.committer.durable(Ticket::Local(t)).await?;
        }
        drop(turn);
        r
    }

    /// Waits for `user`'s turn; the lock is dropped from the map once nobody holds or
    /// waits for it, so the map only has users with requests in flight.
    async fn user_turn(&self, user: UserId) -> UserTurn<'_> {
        self.committer.waiting();
        let lock = self.user_locks.entry(user).or_default().clone();
        UserTurn {
            app: self,
            user,
            guard: Some(lock.clone().lock_owned().await),
            lock: Some(lock),
        }
    }

    /// Writes a batch and waits until it is durable (no seat change involved).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let t = self.committer.submit(batch, None, || None)?;
        self.committer.durable(t).await
    }

    /// Runs `read` on a state that includes every write acknowledged before the
    /// request (on a cluster, through any node; call it before the request waits on
    /// anything, see [`Committer::catch_up_at_start`]), and answers only once what it
    /// saw is durable and announced (see [`Committer::settle_reads`]); after a failed
    /// sync what it read may not be on disk, and it answers an error.
    async fn consistent_read<T>(
        &self,
        read: impl FnOnce() -> Result<T, AppError>,
    ) -> Result<T, AppError> {
        self.committer.catch_up_at_start().await?;
        let v = read()?;
        self.committer.settle_reads().await?;
        Ok(v)
    }

    /// Writes a batch that need not be durable before the caller goes on: a local
    /// store makes it durable with the next sync, under a ticket nobody waits for
    /// (a read that sees it waits for it: [`Committer::settle_reads`] waits for the
    /// last ticket); a replicated one commits it now.
    async fn write_soon(&self, batch: Batch) -> Result<(), StoreError> {
        match self.committer.is_replicated() {
            true => self.commit(batch).await,
            false => self.committer.submit(batch, None, || None).map(drop),
        }
    }

    /// The longest a payment or refund request can take: up to five gateway calls
    /// (create, confirm, status, cancel, refund) and the commits between them; a
    /// refund's try is cut off there (it may list many pages of refunds first).
    pub fn payment_span(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5 * self.config.gateway_timeout + 60)
    }

    /// How old a payment attempt or refund must be before a reconciler settles it: on
    /// a cluster another node may still be making it, so at least [`Self::payment_span`].
    fn in_flight_age(&self, min: std::time::Duration) -> std::time::Duration {
        match self.committer.is_replicated() {
            true => min.max(self.payment_span()),
            false => min,
        }
    }

    /// Sizes of the in-memory structures (for tests and operators).
    pub fn stats(&self) -> Value {
        json!({
            "flights": self.inventory.len(),
            "user_connections": self.users.connections(),
            "sessions_cached": self.sessions.len(),
            "user_locks": self.user_locks.len(),
            "holds_scheduled": self.expiry.pending(),
        })
    }
}

/// The key of a request's remembered reply; refuses a malformed request id.
fn idem_key(user: UserId, method: &'static str, request_id: &str) -> Result<IdemKey, AppError> {
    Ok(IdemKey {
        user,
        method,
        request_id: domain::RequestId::parse(request_id)?.to_string(),
    })
}

/// The demo schedule's flights (made up, seeded by an earlier start) among
/// `flights` still on sale at `now`, by id.
fn demo_flights_on_sale<'a>(flights: &'a [Flight], demo: &[Flight], now: Millis) -> Vec<&'a str> {
    let demo: std::collections::HashMap<&FlightId, &Flight> =
        demo.iter().map(|f| (&f.id, f)).collect();
    flights
        .iter()
        .filter(|f| f.cancelled.is_none() && f.departs_at > now)
        .filter(|f| {
            demo.get(&f.id)
                .is_some_and(|d| (&d.number, &d.from, &d.to) == (&f.number, &f.from, &f.to))
        })
        .map(|f| f.id.as_str())
        .collect()
}

tokio::task_local! {
    /// The key the answer to the request this task handles is remembered under, while
    /// [`App::idempotent`] runs its use case (see [`App::early_reply`]).
    static REPLY_KEY: IdemKey;
}

/// What a user's turn passes on to the next request: the latest write (its local
/// ticket) of a request that ended the turn before that write was durable.
#[derive(Default)]
struct Unsynced(Option<u64>);

/// One user's turn to make a request (see [`App::user_turn`]).
struct UserTurn<'a> {
    app: &'a App,
    user: UserId,
    guard: Option<tokio::sync::OwnedMutexGuard<Unsynced>>,
    /// Kept until the request is done, also after its turn ended early: the user's
    /// entry (and what it passes on) stays while that write is not durable.
    lock: Option<Arc<tokio::sync::Mutex<Unsynced>>>,
}

impl UserTurn<'_> {
    /// What a request before left unsynced: a refusal must not be answered before
    /// it is durable. It stays for the next request too (a later ticket replaces it).
    fn unsynced(&self) -> Option<u64> {
        self.guard.as_ref().and_then(|g| g.0)
    }
}

/// A request's hold on its user's turn ([`App::idempotent`]).
#[derive(Clone)]
pub(super) struct Turn<'a>(Arc<parking_lot::Mutex<UserTurn<'a>>>);

impl Turn<'_> {
    /// Ends the turn now, after `written` was written and before it is durable,
    /// rather than when the request is done.
    pub(super) fn end(&self, written: &Ticket) {
        if let Ticket::Local(t) = written {
            self.end_after(*t);
        }
    }

    /// Ends the turn now, passing on that what was written up to the local ticket
    /// `t` may not be durable yet.
    fn end_after(&self, t: u64) {
        if let Some(mut g) = self.0.lock().guard.take() {
            g.0 = g.0.max(Some(t));
        }
    }
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.lock.take();
        // the map's own reference is the last one: nobody holds or awaits the lock
        self.app
            .user_locks
            .remove_if(&self.user, |_, lock| Arc::strong_count(lock) == 1);
    }
}

#[cfg(feature = "etcd")]
async fn connect_etcd(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let store = crate::store::EtcdStore::connect(&config.etcd_endpoints, &config.etcd_prefix)
        .await
        .map_err(|source| StartError::Store {
            path: store_place(config),
            source,
        })?;
    Ok(store)
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Err(StartError::Other(
        "--store etcd needs a build with etcd support: cargo build --release --features etcd"
            .into(),
    ))
}

/// Folds the metrics' histogram samples in every few seconds, scraped or not.
async fn run_metrics_upkeep(metrics: Arc<Metrics>, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => metrics.run_upkeep(),
        }
    }
}

/// Where the store is: the data dir, or the etcd endpoints.
fn store_place(config: &Config) -> String {
    match config.store {
        crate::config::StoreKind::Etcd => config.etcd_endpoints.join(","),
        _ => config.data_dir.display().to_string(),
    }
}

/// A flight as it is now, with its seats left per cabin.
fn flight_view(flight: Flight, fs: &FlightSeats) -> results::FlightView {
    results::FlightView {
        flight,
        cabins: fs.available(),
        now: domain::now_ms(),
    }
}

/// The memo of a successful answer (see [`results::remember_ok`]).
fn remember_ok<T: serde::Serialize>(result: &T) -> Memo {
    Memo(results::remember_ok(result))
}

/// A memo read back (see [`results::replay`]).
fn replay<R: Replayable>(memo: Value) -> Result<R, AppError> {
    results::replay(&memo)
        .map(R::replayed)
        .map_err(AppError::from_wire)
}

/// A fresh globally unique id (128 random bits), for the gateway's idempotency keys:
/// unique across installations, restored backups and cluster nodes, unlike a counter.
fn unique_id(prefix: &str) -> String {
    let mut r = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("{prefix}-{}", hex::encode(r))
}

/// A history event with extra fields.
pub fn event(
    kind: &str,
    locator: Option<&domain::Locator>,
    at: Millis,
    detail: Value,
) -> HistoryEvent {
    HistoryEvent {
        at,
        kind: kind.to_owned(),
        locator: locator.cloned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::Sandbox;
    use crate::store::SledStore;
    use std::time::{Duration, Instant};

    /// An App that goes without [`App::stop`] (its runtime ended under it) still ends
    /// its commit thread, which holds the store: the data dir then opens again.
    #[test]
    fn an_app_dropped_without_stop_lets_its_data_dir_go() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let config = Config::for_tests(dir.path().to_path_buf());
            App::with_parts(config, store, Arc::new(Sandbox::default()))
                .await
                .unwrap();
        });
        // its background tasks, and with them the last references to the App, go
        drop(rt);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match SledStore::open(dir.path()) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("the data dir is still held: {e}"),
            }
        }
    }

    /// A request that waited for its user's turn catches up again before it reads:
    /// the token check's catch-up came before the wait.
    #[tokio::test]
    async fn a_users_turn_forgets_the_token_checks_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let config = Config::for_tests(dir.path().to_path_buf());
        let app = App::with_parts(config, store, Arc::new(Sandbox::default()))
            .await
            .unwrap();
        let user = UserId(7);
        let (_turn, left) = crate::store::commit::after_token_check(app.user_turn(user)).await;
        assert!(!left);
        app.stop().await;
    }
}
