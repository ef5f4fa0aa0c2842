//! Durable state behind one narrow interface ([`Store`]), so another backend can
//! replace sled without touching the use cases, and the group commit that makes a
//! batch of writes durable before anyone is told of them. A store shared by several
//! nodes also implements [`Replicated`]: conditional commits and the change feed.

mod behind;
pub mod commit;
#[cfg(feature = "etcd")]
pub mod etcd;
mod journal;
mod seen;
pub mod sled_store;
pub mod snapshot;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{
    Booking, BookingStatus, Flight, FlightId, Locator, Millis, Money, Order, SeatId, UserId,
    Username, WaitlistEntry,
};

pub use commit::Committer;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use sled_store::SledStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key the batch required to be absent exists (username taken, locator in use).
    #[error("conflict")]
    Conflict,
    /// The flight's version moved on (another node changed its seats first): decide
    /// again on the newer seat map.
    #[error("stale seat map")]
    Stale,
    #[error("storage: {0}")]
    Io(String),
    /// A sync failed earlier: nothing written since is known to be on disk, so the
    /// process takes no more writes until it is restarted.
    #[error("a sync of the data dir failed; restart to recover from what is on disk")]
    SyncFailed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Passenger,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Passenger => "passenger",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub username: Username,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
    pub user_id: UserId,
    pub created_at: Millis,
    pub expires_at: Millis,
}

impl SessionRecord {
    pub fn key(&self) -> SessionKey {
        SessionKey {
            token_hash: self.token_hash.clone(),
            user_id: self.user_id,
            created_at: self.created_at,
        }
    }
}

/// The lines of account events (history events of an account, not of a booking or a
/// payment) of which a user's newest are kept, the oldest pruned
/// ([`Batch::pruned_events`]). Failed logins, which anyone who knows the username can
/// cause, have a line of their own: they never push logins and logouts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountLine {
    /// `login` and `logout`.
    Access,
    /// `login_failed`.
    Failed,
}

impl AccountLine {
    /// The line of a history event kind, if it is an account event.
    pub fn of(kind: &str) -> Option<AccountLine> {
        match kind {
            "login" | "logout" => Some(AccountLine::Access),
            "login_failed" => Some(AccountLine::Failed),
            _ => None,
        }
    }
}

/// An account event in its user's history, as its user's index of account events
/// holds it (opaque: the store's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEvent {
    pub(crate) index: Vec<u8>,
    pub(crate) history: Vec<u8>,
}

/// What names a stored session and its entry in its user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    pub token_hash: String,
    pub user_id: UserId,
    pub created_at: Millis,
}

/// How many bookings are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookingCounts(pub [u64; BookingStatus::ALL.len()]);

impl BookingCounts {
    pub fn get(&self, status: BookingStatus) -> u64 {
        self.0[status.index()]
    }

    pub fn iter(&self) -> impl Iterator<Item = (BookingStatus, u64)> + '_ {
        BookingStatus::ALL.into_iter().zip(self.0)
    }
}

/// One line of a user's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at: Millis,
    #[serde(rename = "type")]
    pub kind: String,
    pub locator: Option<Locator>,
    /// Extra fields shown to the user (amounts, seats, reasons).
    #[serde(default)]
    pub detail: Value,
}

/// The key of a remembered reply: one user's request id for one method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdemKey {
    pub user: UserId,
    pub method: &'static str,
    pub request_id: String,
}

/// A remembered reply as stored: the JSON `{"ok": result}` or `{"err": error}`,
/// encoded straight from the typed answer (not copied into one `Value` first; nested
/// wire shapes are still `Value`s). Read back
/// as a `Value` ([`Store::reply`]); records written as `Value`s read the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo(pub Vec<u8>);

/// Where a payment attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Written before the gateway is called; the outcome is not known yet.
    Started,
    /// The payment waits for the customer's authentication (3-D Secure); not charged
    /// yet, still open: the next `booking.pay` or the hold's end settles it.
    ActionRequired,
    /// Charged, and the booking confirmed in the same batch.
    Succeeded,
    /// Nothing was charged (see [`PaymentAttempt::certain`]).
    Failed,
    /// Charged, but the booking could not be confirmed (its seats were gone): refunded.
    Refunded,
}

impl AttemptState {
    /// Not settled yet (reconciled with the gateway until it is).
    pub fn is_open(self) -> bool {
        matches!(self, AttemptState::Started | AttemptState::ActionRequired)
    }

    /// Settled for good: charged, and the charge kept or given back.
    pub fn is_final(self) -> bool {
        matches!(self, AttemptState::Succeeded | AttemptState::Refunded)
    }
}

/// One try to pay a booking, written to disk before the gateway is called so that a
/// crash can always be reconciled with the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAttempt {
    pub id: String,
    pub user_id: UserId,
    pub locator: Locator,
    pub amount: crate::domain::Money,
    /// The request that started it, whose reply is remembered when it settles.
    pub request_id: String,
    /// The gateway's payment reference, once created (durable before confirming).
    pub payment_ref: Option<String>,
    pub state: AttemptState,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// A `Failed` attempt the gateway said can never be charged (declined, cancelled,
    /// never created). Older versions closed attempts as failed on a status read that
    /// could precede a late charge: those (`false`) are checked again.
    #[serde(default)]
    pub certain: bool,
    /// The payment method it charges (a gateway id such as `pm_...`, never card data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    /// While [`AttemptState::ActionRequired`]: the secret the front end completes the
    /// customer's action with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Earlier requests that were answered `payment_action_required` for it before a
    /// later one continued it (and became `request_id`): their replies are replaced
    /// by its outcome too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_requests: Vec<String>,
}

impl PaymentAttempt {
    /// Made by a version that numbered attempts `pa{N}` from a local counter.
    pub fn is_legacy(&self) -> bool {
        self.id
            .strip_prefix("pa")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// Sent to the gateway and not settled: money may have moved.
    pub fn may_have_charged(&self) -> bool {
        self.state == AttemptState::Started && self.payment_ref.is_some()
    }

    /// Not settled yet (reconciled with the gateway until it is).
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    /// Closed as failed by an older version without proof that nothing was charged.
    pub fn is_uncertain_failure(&self) -> bool {
        self.state == AttemptState::Failed && !self.certain && self.payment_ref.is_some()
    }
}

/// A payment in progress on a booking, seen by every node of a cluster: taken with
/// the attempt before the gateway is called, released when the request is over. It
/// lapses at `until`, so a node that died mid-payment does not keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentMark {
    pub locator: Locator,
    pub attempt_id: String,
    /// The `booking.pay` request making it (a twin of it through another node is
    /// not kept waiting: it settles as a twin payment).
    pub request_id: String,
    pub until: Millis,
    /// The process that took it (random per start): only it settles under the mark
    /// or releases it while it is live. A mark written before owners were kept has
    /// none and is nobody's (it is left to lapse). Left out when empty, so such a
    /// mark encodes as it was read (marks change by compare-and-swap on the bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

impl PaymentMark {
    pub fn live(&self, now: Millis) -> bool {
        now < self.until
    }
}

/// Why money goes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RefundReason {
    /// The passenger cancelled seats, with this `booking.cancel` request.
    Cancel { request_id: String },
    /// The airline cancelled the flight.
    FlightCancelled,
    /// A charge its booking could not take (the hold ended, or a twin paid it).
    Orphan { attempt_id: String },
}

/// One refund, written durably before the gateway is asked for it: its id is the
/// gateway's idempotency key, so every retry (after an error or a crash) asks for
/// the same refund with the same amount, and the gateway makes it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundRecord {
    /// Globally unique (128 random bits, see `app::unique_id`).
    pub id: String,
    pub user_id: UserId,
    pub locator: Locator,
    /// The charge refunded.
    pub payment_ref: String,
    pub amount: Money,
    /// The seats it pays back (none for an orphaned charge).
    pub seats: Vec<SeatId>,
    pub reason: RefundReason,
    /// Made at the gateway and recorded on the booking, order or attempt.
    pub done: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The gateway's idempotency key when it is not `id`: a fresh one an admin gave a
    /// refund the gateway kept refusing under its own (`admin.refunds.resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_key: Option<String>,
    /// Every key it was asked under before `gateway_key` (`id` first): a refund made
    /// under one of them (its answer lost) is this refund, so each is looked up at
    /// the gateway before it is asked again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<String>,
    /// What admins decided about it, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<RefundResolution>,
    /// The gateway's refunds of it that failed after they were recorded as made
    /// (Stripe fails some refunds days later), oldest first. Each reopened it, under a
    /// fresh key, to pay the money back again: its seats and the booking and order stay
    /// as recorded, only the money is owed (see [`RefundRecord::is_reissue`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_later: Vec<String>,
    /// The gateway's refund that made it, once made (none for one closed before this
    /// field existed, for nothing to pay, or as paid by other means): the only refund
    /// whose later failure reopens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_ref: Option<String>,
    /// `made_ref` was accepted but not settled (Stripe's `pending`) when it was
    /// recorded: the reconciler watches it until it settles (see
    /// [`Store::pending_refunds`]), so a late failure is paid back again even when no
    /// webhook tells.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub made_pending: bool,
    /// When the gateway was last asked for it: written durably before each call
    /// (under its booking's payment mark; a passenger's cancel writes its own try in
    /// the batch that opens the refund), so every node can tell how lately the gateway
    /// may have started making it (none for a record never asked since this field
    /// exists). Later than any earlier try and than `updated_at`, so one value names
    /// one try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<Millis>,
    /// The deadline of the try begun at `asked_at` (the asking node's payment span
    /// after it): the try sends nothing after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_until: Option<Millis>,
    /// The `asked_at` of the last try the gateway refused outright, an answer it keeps
    /// under the key ([`crate::payments::PaymentError::Refused`]): nothing under that
    /// key is being made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<Millis>,
    /// The `asked_at` of the last try the gateway turned away before acting on it
    /// ([`crate::payments::PaymentError::Rejected`]): that try made nothing, but an
    /// earlier one may still be made (see `earlier_until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_at: Option<Millis>,
    /// Until when a try before the one at `asked_at` may still be made at the gateway:
    /// the latest end (its deadline plus a payment span) of an earlier try that got no
    /// answer saying it made nothing. Written with each new try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_until: Option<Millis>,
}

/// An admin's decision about a refund the gateway kept refusing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundResolution {
    /// The admin's username.
    pub by: String,
    /// `paid_elsewhere` (closed as made, the gateway not asked) or `retry` (asked
    /// again under a fresh key).
    pub outcome: String,
    pub at: Millis,
}

impl RefundRecord {
    /// Takes `from`'s record of its tries (when the last began and ended, how the
    /// gateway answered it, until when the earlier ones may still be made).
    pub fn take_tries(&mut self, from: &RefundRecord) {
        self.asked_at = from.asked_at;
        self.asked_until = from.asked_until;
        self.refused_at = from.refused_at;
        self.rejected_at = from.rejected_at;
        self.earlier_until = from.earlier_until;
    }

    /// The gateway's idempotency key for it now.
    pub fn key(&self) -> &str {
        self.gateway_key.as_deref().unwrap_or(&self.id)
    }

    /// Every key it was asked under, the one it is asked under now last.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.previous_keys
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.key()))
    }

    /// What the refund is for: at most one refund per subject is open at a time (on a
    /// cluster too: opening one is a create-only write), so a booking's seats or an
    /// attempt's charge are never refunded by two refunds at once.
    ///
    /// A reissue's subject is the gateway refund that failed: it pays that money back
    /// and touches no seat or charge settlement, so it waits for no other refund of its
    /// booking, and no failure is reissued twice.
    pub fn subject(&self) -> &str {
        if let Some(failed) = self.failed_later.last() {
            return failed;
        }
        match &self.reason {
            RefundReason::Orphan { attempt_id } => attempt_id,
            _ => self.locator.as_str(),
        }
    }

    /// Recorded as made once, and then failed at the gateway: what is left is the
    /// money alone.
    pub fn is_reissue(&self) -> bool {
        !self.failed_later.is_empty()
    }
}

/// Everything one use case changes, written atomically.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Users to create; the batch fails with [`StoreError::Conflict`] if the name exists.
    pub new_users: Vec<UserRecord>,
    /// Users to overwrite.
    pub users: Vec<UserRecord>,
    /// Users as read: conflict unless each is still stored exactly so (its password
    /// changed meanwhile).
    pub users_read: Vec<UserRecord>,
    /// Usernames to free (a renamed user's old name).
    pub retired_names: Vec<Username>,
    pub sessions: Vec<SessionRecord>,
    pub revoke_sessions: Vec<SessionKey>,
    /// Flights to create; conflict if the flight exists.
    pub new_flights: Vec<Flight>,
    pub flights: Vec<Flight>,
    /// Flight records as read before `flights` changes them: conflict unless each
    /// still holds (an update, cancellation or departure through another node came in
    /// between).
    pub flights_read: Vec<Flight>,
    pub versions: Vec<(FlightId, u64)>,
    /// The last check-in sequence number given out per flight. Written only with the
    /// flight's next version (see [`Store::checkin_sequence`]).
    pub checkin_sequences: Vec<(FlightId, u64)>,
    /// Bookings to create; conflict if the locator exists.
    pub new_bookings: Vec<Booking>,
    pub bookings: Vec<Booking>,
    /// Orders to create; conflict if the order id exists (never another's order
    /// overwritten by an id given twice).
    pub new_orders: Vec<Order>,
    pub orders: Vec<Order>,
    pub events: Vec<(UserId, HistoryEvent)>,
    /// Account events ([`AccountLine`]) to delete from their user's history, as
    /// [`Store::oldest_account_events`] listed them.
    pub pruned_events: Vec<AccountEvent>,
    /// Replies to remember.
    pub replies: Vec<(IdemKey, Memo)>,
    /// Replies as read before `replies` replaces them (none: no reply): conflict
    /// unless each key still holds it (another request answered first).
    pub replies_read: Vec<(IdemKey, Option<Value>)>,
    /// Replies to remember only if none is remembered under the key: the batch fails
    /// with [`StoreError::Conflict`] otherwise (a twin of the request through another
    /// node answered first). For a request whose change moves no seat, which the
    /// flight's version does not order against its twin.
    pub first_replies: Vec<(IdemKey, Memo)>,
    pub attempts: Vec<PaymentAttempt>,
    /// Payment attempts as read before this batch: conflict unless each is still
    /// stored exactly so (a twin's request settled it meanwhile).
    pub attempts_read: Vec<PaymentAttempt>,
    /// Refunds to open; the batch fails with [`StoreError::Conflict`] if a refund for
    /// the same [`RefundRecord::subject`] is open.
    pub new_refunds: Vec<RefundRecord>,
    /// Subjects ([`RefundRecord::subject`]) that must have no open refund: conflict
    /// if one was opened (a charge being refunded cannot pay a booking, nor a seat
    /// being refunded move).
    pub refunds_absent: Vec<String>,
    /// Refunds to overwrite, closing them when `done`: written only while each is its
    /// subject's open refund (conflict otherwise: it was closed meanwhile).
    pub refunds: Vec<RefundRecord>,
    /// Gateway refunds recorded as made while pending that have settled since (or
    /// were reopened): no longer watched.
    pub settled_refunds: Vec<String>,
    /// Refund records as read before `refunds` changes them: conflict unless each is
    /// still stored exactly so (another admin's decision came first).
    pub refunds_read: Vec<RefundRecord>,
    /// Payment marks to take; conflict if the booking has one.
    pub new_marks: Vec<PaymentMark>,
    /// Payment marks that lapsed, each with the mark that replaces it: conflict
    /// unless the booking's mark is still the lapsed one (another node took it).
    pub marks: Vec<(PaymentMark, PaymentMark)>,
    /// Payment marks to release: conflict unless the booking's mark is still this one.
    pub unmarks: Vec<PaymentMark>,
    /// Bookings' payment marks as read before this batch (none, or a lapsed one):
    /// conflict if a mark was taken or replaced since (another node began paying).
    pub marks_read: Vec<(Locator, Option<PaymentMark>)>,
    /// Processed webhook event ids.
    pub webhook_events: Vec<String>,
    /// Waitlist entries to write (new or changed).
    pub waitlist: Vec<WaitlistEntry>,
    /// Waitlist entries as read before `waitlist` changes them: conflict unless each
    /// is still stored exactly so (another node changed it first, say expiring a
    /// closed line: only one node expires an entry and tells its owner).
    pub waitlist_read: Vec<WaitlistEntry>,
    /// The seat change itself, for the other nodes of a cluster (sled leaves it out).
    pub seat_feed: Option<SeatFeed>,
    /// Orders waitlist joins against seat releases across the nodes of a cluster
    /// (see [`LineCheck`]).
    pub lines: Vec<LineCheck>,
    /// Orders one user's waitlist joins across the nodes of a cluster (see
    /// [`UserLineCheck`]).
    pub user_lines: Vec<UserLineCheck>,
}

/// One page of a user's records, newest first: at most `limit` of them, all
/// created before the record `before` (its `created_at` and id) when given.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub limit: usize,
    pub before: Option<(Millis, &'a str)>,
}

impl Page<'_> {
    pub const ALL: Page<'static> = Page {
        limit: usize::MAX,
        before: None,
    };
}

/// A page of records and whether older ones are left.
pub type Paged<T> = (Vec<T>, bool);

/// A user's waitlist joins (and, on a cluster, holds) as a join or hold read them: the
/// revision (`None`: never written) that every join and hold advances. On a cluster
/// two joins, or two holds, of one user decided on different nodes at once then
/// conflict, and the loser counts the user's waiting entries (or open holds) again
/// seeing the other's: the caps on waiting entries and on open holds hold across
/// nodes. A single node orders a user's requests by the user's lock and writes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLineCheck {
    pub user: UserId,
    pub read: Option<u64>,
}

/// A flight's waitlist line as a batch read it: its revision (`None`: never written).
/// A join advances the revision; a change that may serve the line (frees seats, or
/// changes the line) expects it unchanged. On a cluster a join and a release decided
/// on different nodes at once then conflict, and the loser decides again seeing the
/// other: a freed seat never misses an entry that joined at that moment. A single
/// node orders them by the flight's lock and writes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineCheck {
    pub flight: FlightId,
    pub read: Option<u64>,
    pub advance: bool,
}

/// One seat of a [`SeatFeed`]: who holds it after the change (`None`: free).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedSeat {
    pub index: usize,
    pub locator: Option<Locator>,
    pub booked: bool,
}

/// A flight's seat change as version `version`, replicated to every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeatFeed {
    pub flight: FlightId,
    pub version: u64,
    pub seats: Vec<FeedSeat>,
}

/// A replicated record another node's write produced, which this node reacts to.
#[derive(Debug, Clone)]
pub enum Change {
    Flight(Flight),
    Booking(Booking),
    Seats(SeatFeed),
    Waitlist(WaitlistEntry),
    /// A session was revoked (its token hash).
    SessionEnded(String),
    /// A node's count of a flight's seat-map subscribers (0 once its key is gone).
    Presence {
        node: String,
        flight: FlightId,
        viewers: u32,
    },
}

/// Where a node's presence count of a flight lives: `!presence/{node}/{flight}`.
const PRESENCE_KEY: &[u8] = b"!presence/";

/// Creates `dir` and any missing parents, and makes the entries of all of them, and
/// of `dir`'s own parent, survive a crash (an existing `dir`'s entry too: an earlier
/// start may have made it and crashed before syncing it). A `dir` it creates is
/// readable by its owner only, whatever the umask: it holds password hashes,
/// session-token hashes and payment references (an existing one keeps its mode).
pub(crate) fn create_dir_durably(dir: &std::path::Path) -> StoreResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = 0;
    for d in dir.ancestors() {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing += 1;
    }
    let creating = |e: std::io::Error| {
        StoreError::Io(format!("creating the directory {}: {e}", dir.display()))
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(creating)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if !(e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir()) => {
            return Err(creating(e))
        }
        _ => {}
    }
    for d in dir.ancestors().take(missing.max(1)) {
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes `dir`'s entries (files created, renamed or removed in it) survive a crash.
pub(crate) fn sync_dir(dir: &std::path::Path) -> StoreResult<()> {
    // a relative path's parent is the empty path: the working directory
    let dir = match dir.as_os_str().is_empty() {
        true => std::path::Path::new("."),
        false => dir,
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("syncing the directory {}: {e}", dir.display())))
}

pub fn presence_key(node: &str, flight: &FlightId) -> Vec<u8> {
    let mut k = PRESENCE_KEY.to_vec();
    k.extend_from_slice(format!("{node}/{flight}").as_bytes());
    k
}

/// The node and flight of a presence key.
pub fn parse_presence_key(k: &[u8]) -> Option<(String, FlightId)> {
    let rest = std::str::from_utf8(k.strip_prefix(PRESENCE_KEY)?).ok()?;
    let (node, flight) = rest.split_once('/')?;
    Some((node.to_owned(), FlightId::parse(flight).ok()?))
}

/// The count a presence value holds (none, or a malformed one, is 0).
pub fn presence_count(v: Option<&[u8]>) -> u32 {
    v.and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map_or(0, u32::from_be_bytes)
}

/// Called, in commit order, with the changes of each committed revision, after they
/// are in the node's copy of the store and before any waiter on them is woken.
pub type Listener = Box<dyn Fn(&[Change]) + Send + Sync>;

/// A store shared by several nodes, with its change feed (see [`EtcdStore`]).
pub trait Replicated: Send + Sync {
    /// Commits `batch` atomically, only if the flight in `expect` is still at that
    /// version ([`StoreError::Stale`] otherwise); returns once the write is committed
    /// and this node has applied it (its listener has run).
    fn commit(
        &self,
        batch: Batch,
        expect: Option<(FlightId, u64)>,
    ) -> futures::future::BoxFuture<'_, StoreResult<()>>;
    /// Returns once this node has applied every write committed anywhere before the call.
    fn settle(&self) -> futures::future::BoxFuture<'_, StoreResult<()>>;
    /// Starts following the change feed, calling `listener` for every change.
    fn follow(&self, listener: Listener) -> StoreResult<()>;
    /// Stops following and gives up retrying.
    fn close(&self);
    /// This node's id among the nodes.
    fn node(&self) -> &str;
    /// Publishes this node's subscriber counts of flights (0 removes one), on a short
    /// lease so that a dead node's counts go away. `Ok(false)` when the lease had to
    /// be taken anew: the node's earlier counts are gone and must be published again.
    fn set_presence(
        &self,
        counts: Vec<(FlightId, u32)>,
    ) -> futures::future::BoxFuture<'_, StoreResult<bool>>;
    /// Every node's published counts, as this node's copy has them.
    fn presence(&self) -> StoreResult<Vec<(String, FlightId, u32)>>;
}

/// The durable store. Writes are atomic per batch and become durable at the next
/// [`Store::sync`]; the [`Committer`] acknowledges nothing before that.
pub trait Store: Send + Sync + 'static {
    fn write(&self, batch: &Batch) -> StoreResult<()>;
    /// Makes every completed write durable (for sled: a journal append and an
    /// fdatasync).
    fn sync(&self) -> StoreResult<()>;
    /// A fresh id, unique and increasing across restarts and crashes.
    fn next_id(&self) -> StoreResult<u64>;

    fn user_by_name(&self, name: &Username) -> StoreResult<Option<UserRecord>>;
    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>>;
    /// Every session record, for sweeping expired ones and revoking a user's. A store
    /// that cannot list them (a test double) has none to sweep.
    fn sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        Ok(Vec::new())
    }
    /// How many sessions the user's index holds (sessions written before the index
    /// was kept are not in it; they end by their expiry), and the oldest `n` of them,
    /// oldest first.
    fn oldest_sessions(&self, _user: UserId, _n: usize) -> StoreResult<(usize, Vec<SessionKey>)> {
        Ok((0, Vec::new()))
    }
    /// How many account events of `line` the user's index holds (events written
    /// before the index was kept are not in it), and the oldest `n` of them, oldest
    /// first.
    fn oldest_account_events(
        &self,
        _user: UserId,
        _line: AccountLine,
        _n: usize,
    ) -> StoreResult<(usize, Vec<AccountEvent>)> {
        Ok((0, Vec::new()))
    }
    fn flights(&self) -> StoreResult<Vec<Flight>>;
    fn flight(&self, id: &FlightId) -> StoreResult<Option<Flight>>;
    fn version(&self, flight: &FlightId) -> StoreResult<u64>;
    /// The last check-in sequence number given out on the flight (0: none yet). It
    /// only changes in a batch that also moves the flight's version, so a write that
    /// expects the version the number was read at cannot reuse a number.
    fn checkin_sequence(&self, flight: &FlightId) -> StoreResult<u64>;
    /// The revision of a flight's waitlist line (see [`LineCheck`]).
    fn line_revision(&self, flight: &FlightId) -> StoreResult<Option<u64>>;
    /// The revision of a user's waitlist joins (see [`UserLineCheck`]) and the user's
    /// waiting entries ([`Store::waiting_entries`]), read together: never a revision
    /// with the count of before its change.
    fn user_line(&self, user: UserId) -> StoreResult<(Option<u64>, usize)>;
    /// The same revision and the user's holds counting against the cap on open holds
    /// ([`Store::capped_holds`]), read together. On a cluster every hold advances the
    /// revision too, so that the cap holds across nodes as the waitlist's does.
    fn user_holds(&self, user: UserId, now: Millis) -> StoreResult<(Option<u64>, usize)>;
    fn booking(&self, locator: &Locator) -> StoreResult<Option<Booking>>;
    /// Every booking, for rebuilding seat maps at start.
    fn all_bookings(&self) -> StoreResult<Vec<Booking>>;
    /// Bookings by status, kept as bookings are written: reads no booking.
    fn booking_counts(&self) -> BookingCounts;
    /// The user's waitlist entries still waiting, kept as entries are written: reads
    /// no entry, so a join costs the same however long the user's waitlist history.
    fn waiting_entries(&self, user: UserId) -> usize;
    /// The user's bookings held and unexpired at `now` that count against the cap on
    /// open holds: those not offered to one of the user's waitlist entries, the holds
    /// and offers read together (an offer applied meanwhile is in both or neither).
    /// Kept as bookings and entries are written: reads no record, so a hold costs the
    /// same however long the user's history.
    fn capped_holds(&self, user: UserId, now: Millis) -> StoreResult<usize>;
    fn user_bookings(&self, user: UserId, page: Page) -> StoreResult<Paged<Booking>>;
    fn order(&self, order_id: &str) -> StoreResult<Option<Order>>;
    fn user_orders(&self, user: UserId, page: Page) -> StoreResult<Paged<Order>>;
    fn history(&self, user: UserId, limit: usize) -> StoreResult<Vec<HistoryEvent>>;
    fn reply(&self, key: &IdemKey) -> StoreResult<Option<Value>>;
    /// Payment attempts still `started`, oldest first.
    fn open_attempts(&self) -> StoreResult<Vec<PaymentAttempt>>;
    fn attempt(&self, id: &str) -> StoreResult<Option<PaymentAttempt>>;
    /// The booking's open attempts, oldest first, kept as attempts are written: reads
    /// only those, however many other bookings are being paid.
    fn booking_attempts(&self, locator: &Locator) -> StoreResult<Vec<PaymentAttempt>>;
    /// Every attempt for which [`PaymentAttempt::is_uncertain_failure`] holds (a scan of
    /// all attempts: for the check once per start).
    fn uncertain_failures(&self) -> StoreResult<Vec<PaymentAttempt>>;
    fn attempt_by_ref(&self, payment_ref: &str) -> StoreResult<Option<PaymentAttempt>>;
    fn webhook_seen(&self, event_id: &str) -> StoreResult<bool>;
    /// The open refund for a [`RefundRecord::subject`] (a locator or an attempt id).
    fn open_refund(&self, subject: &str) -> StoreResult<Option<RefundRecord>>;
    fn open_refunds(&self) -> StoreResult<Vec<RefundRecord>>;
    /// Gateway refunds recorded as made while still pending, each with its record's
    /// id: watched by the reconciler until they settle.
    fn pending_refunds(&self) -> StoreResult<Vec<(String, String)>>;
    /// The refund asked for at the gateway under `key` (its id, or the fresh key an
    /// admin's retry gave it), open or closed.
    fn refund_by_key(&self, key: &str) -> StoreResult<Option<RefundRecord>>;
    /// The refund record made by the gateway's refund `gateway_ref` (its
    /// [`RefundRecord::made_ref`]), or reopened by its failure (in
    /// [`RefundRecord::failed_later`]): how a refund sent without our metadata, so
    /// without a key, is tied to its record. A scan: only a webhook about such a
    /// refund asks.
    fn refund_made_by(&self, gateway_ref: &str) -> StoreResult<Option<RefundRecord>>;
    fn payment_mark(&self, locator: &Locator) -> StoreResult<Option<PaymentMark>>;
    fn waitlist_entry(&self, id: &str) -> StoreResult<Option<WaitlistEntry>>;
    /// A flight's waiting and offered entries, by `created_at` (ties in no
    /// particular order: [`crate::domain::waitlist::positions`] and `serve` sort).
    fn flight_waitlist(&self, flight: &FlightId) -> StoreResult<Vec<WaitlistEntry>>;
    /// A user's entries, newest first.
    fn user_waitlist(&self, user: UserId, page: Page) -> StoreResult<Paged<WaitlistEntry>>;

    /// Every record as of one moment, in the [`snapshot`] format: what
    /// `jetway backup` saves. One at a time.
    fn snapshot(&self) -> StoreResult<Vec<u8>> {
        Err(StoreError::Io(
            "this store has no snapshot of its own: back up etcd with `etcdctl snapshot save` \
             (docs/deploy.md)"
                .into(),
        ))
    }

    /// Called once nothing writes any more, at a clean stop: a store that writes a
    /// journal ahead of its database leaves the database holding everything.
    fn shut_down(&self) -> StoreResult<()> {
        Ok(())
    }

    /// The replicated side of a store shared by several nodes; `None` for a local one.
    fn replicated(&self) -> Option<&dyn Replicated> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// A data dir (or a backup's) that the server makes is its owner's only, whatever
    /// the umask (with the usual 022 it was 0755, and the database readable by every
    /// local user); one that exists keeps its mode, and a file in the way is an error.
    #[test]
    fn a_directory_it_creates_is_its_owners_only() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/data");
        super::create_dir_durably(&dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        super::create_dir_durably(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750);
        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(super::create_dir_durably(&file).is_err());
    }
}
