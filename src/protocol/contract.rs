//! The machine-readable contract: the shape of every result and push as Rust types
//! (their JSON Schemas come from `schemars`), the one table of methods with their
//! params and results ([`METHOD_CONTRACT`]), the table of pushes ([`PUSH_CONTRACT`]),
//! and the OpenRPC and AsyncAPI documents built from them.
//!
//! Replies are still assembled in `wire` and the use cases; `tests/contract.rs` checks
//! every real reply and push against these schemas, so the two cannot drift apart.

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::sync::LazyLock;

use super::params::{self, Access, Method};
use super::ApiError;

/// One method of the contract.
pub struct MethodSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub access: Access,
    params: fn(&mut SchemaGenerator) -> Schema,
    result: fn(&mut SchemaGenerator) -> Schema,
}

/// One server push of the contract.
pub struct PushSpec {
    pub name: &'static str,
    pub summary: &'static str,
    params: fn(&mut SchemaGenerator) -> Schema,
}

fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

fn reference<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

macro_rules! method {
    ($method:ident, $params:ty => $result:ty, $summary:literal) => {
        MethodSpec {
            name: Method::$method.name(),
            summary: $summary,
            access: Method::$method.access(),
            params: inline::<$params>,
            result: reference::<$result>,
        }
    };
}

/// Every method: its name, who may call it, its params and its result. A method the
/// dispatcher knows ([`Method`]) must be here, and documented in
/// docs/protocol.md; `tests/contract.rs` checks both.
pub static METHOD_CONTRACT: &[MethodSpec] = &[
    method!(Register, params::Credentials => LoginResult, "Creates a passenger account and logs this connection in."),
    method!(Login, params::Login => LoginResult, "Logs this connection in."),
    method!(Resume, params::Resume => LoginResult, "Logs this connection in with a session token."),
    method!(Logout, NoParams => Empty, "Ends the session on every connection that uses it."),
    method!(Airports, NoParams => AirportsResult, "The airports served."),
    method!(Search, params::Search => FlightsResult, "Flights by route and UTC date, in departure order."),
    method!(FlightGet, params::FlightRef => FlightGetResult, "One flight with its seat map and layout."),
    method!(Subscribe, params::Subscribe => SubscribeResult, "Watches a flight's seat map: a snapshot, or the changes after `since`, then `seats.changed` pushes."),
    method!(Unsubscribe, params::FlightRef => Empty, "Stops watching a flight."),
    method!(Watch, params::Watch => WatchResult, "Watches an airport's departures board: its flights, then `flight.changed` pushes."),
    method!(Unwatch, params::Unwatch => Empty, "Stops watching an airport's departures board."),
    method!(Hold, params::Hold => BookingResult, "Holds seats (named, or best available) until the hold expires."),
    method!(Pay, params::Pay => PayResult, "Pays a hold: the booking is confirmed and ticketed."),
    method!(Cancel, params::Cancel => CancelResult, "Releases a hold, or cancels a confirmed booking (all or some seats) with a refund."),
    method!(ChangeSeat, params::ChangeSeat => BookingResult, "Moves one passenger to another free seat of the same cabin."),
    method!(CheckIn, params::CheckIn => CheckInResult, "Checks in the passengers of a confirmed booking (all, or those in `seats`) while check-in is open, and returns their boarding passes."),
    method!(BoardingPasses, params::LocatorRef => BoardingPassesResult, "The valid boarding passes of one of the caller's bookings."),
    method!(BookingGet, params::LocatorRef => BookingResult, "One of the caller's bookings."),
    method!(BookingsList, params::ListPage => BookingsResult, "The caller's bookings, newest first, a page at a time."),
    method!(OrdersList, params::ListPage => OrdersResult, "The caller's orders (paid bookings), newest first, a page at a time."),
    method!(HistoryList, params::Limit => HistoryResult, "The caller's account events, newest first."),
    method!(AdminCreateFlight, params::CreateFlight => FlightResult, "Adds a flight to the schedule."),
    method!(AdminCancelFlight, params::CancelFlight => CancelFlightResult, "Cancels a flight, refunding and releasing every booking on it."),
    method!(AdminUpdateFlight, params::UpdateFlight => FlightResult, "Gives a flight estimated times and/or moves its status forward."),
    method!(AdminStats, NoParams => StatsResult, "Occupancy and revenue of every flight."),
    method!(AdminRefunds, NoParams => OpenRefundsResult, "Extension: the open refunds, with the gateway's failures of each on this node."),
    method!(AdminResolveRefund, params::ResolveRefund => OpenRefundResult, "Extension: closes an open refund as paid by other means, or has it asked again under a fresh key."),
    method!(WaitlistJoin, params::WaitlistJoin => WaitlistEntryResult, "Waits for seats of a sold-out cabin: freed seats become a held booking for the entry."),
    method!(WaitlistLeave, params::WaitlistRef => WaitlistEntryResult, "Leaves the waitlist; an offered hold is released and offered on."),
    method!(WaitlistList, params::ListPage => WaitlistResult, "The caller's waitlist entries, newest first, a page at a time."),
    method!(Discover, NoParams => Discover, "This OpenRPC document."),
];

macro_rules! push {
    ($name:literal, $params:ty, $summary:literal) => {
        PushSpec {
            name: $name,
            summary: $summary,
            params: inline::<$params>,
        }
    };
}

/// Every push the server sends (a JSON-RPC notification from server to client).
pub static PUSH_CONTRACT: &[PushSpec] = &[
    push!(
        "seats.changed",
        SeatsChanged,
        "One atomic change of a watched flight's seat map."
    ),
    push!(
        "flight.changed",
        FlightChanged,
        "A flight's status or times changed, or (on a board) its seats left."
    ),
    push!(
        "flight.presence",
        FlightPresence,
        "How many connections watch a subscribed flight's seat map (at most one a second)."
    ),
    push!(
        "booking.updated",
        BookingResult,
        "A booking of the logged-in user changed (on any connection, or by expiry or the airline)."
    ),
    push!(
        "waitlist.offered",
        WaitlistOffered,
        "Freed seats became a held booking for one of the user's waitlist entries."
    ),
    push!(
        "waitlist.updated",
        WaitlistEntryResult,
        "A waitlist entry of the user changed status or position (other than an offer)."
    ),
];

// ----- shared shapes --------------------------------------------------------------

/// A timestamp: RFC 3339 in UTC, with milliseconds only when they are not zero.
pub struct Timestamp;

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,3})?Z$",
        })
    }
}

/// A seat: row and column letter, `12A`.
pub struct SeatName;

impl JsonSchema for SeatName {
    fn schema_name() -> Cow<'static, str> {
        "SeatName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[1-9][0-9]?[A-HJK]$" })
    }
}

#[derive(Serialize, JsonSchema)]
pub enum Currency {
    #[allow(clippy::upper_case_acronyms)]
    EUR,
}

/// An amount in minor units (cents).
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    #[schemars(range(max = 100_000_000_000u64))]
    pub amount: u64,
    pub currency: Currency,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cabin {
    Business,
    Economy,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeatStatus {
    Available,
    Held,
    Booked,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlightStatus {
    Scheduled,
    Delayed,
    Boarding,
    Departed,
    Cancelled,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    Held,
    Confirmed,
    Cancelled,
    Expired,
    Refunded,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Paid,
    PartiallyRefunded,
    Refunded,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Passenger,
    Admin,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Airport {
    pub code: String,
    pub city: String,
    pub name: String,
    /// The IANA time zone.
    pub tz: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CabinFares {
    pub cabin: Cabin,
    pub fare: Money,
    pub seats_total: u32,
    pub seats_available: u32,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flight {
    pub flight_id: String,
    pub number: String,
    pub from: String,
    pub to: String,
    #[schemars(with = "Timestamp")]
    pub departs_at: String,
    #[schemars(with = "Timestamp")]
    pub arrives_at: String,
    pub aircraft: String,
    pub aircraft_name: String,
    pub status: FlightStatus,
    /// Once the airline gave an estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub estimated_departs_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub estimated_arrives_at: Option<String>,
    /// The IANA time zone of `from`.
    pub from_tz: String,
    /// The IANA time zone of `to`.
    pub to_tz: String,
    /// Business first, then economy.
    pub cabins: Vec<CabinFares>,
    /// Only on a cancelled flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Seat {
    #[schemars(with = "SeatName")]
    pub seat: String,
    pub cabin: Cabin,
    pub status: SeatStatus,
    pub row: u32,
    pub column: String,
    pub window: bool,
    pub aisle: bool,
    pub exit: bool,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CabinLayout {
    pub cabin: Cabin,
    pub rows: Vec<u32>,
    /// Seat letters left to right, one space per aisle.
    pub columns: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub cabins: Vec<CabinLayout>,
    pub exit_rows: Vec<u32>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatChange {
    #[schemars(with = "SeatName")]
    pub seat: String,
    pub status: SeatStatus,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CabinCount {
    pub cabin: Cabin,
    pub seats_available: u32,
}

/// One atomic change of a flight's seat map.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub version: u64,
    /// Only the seats this version changed.
    pub seats: Vec<SeatChange>,
    /// Every cabin's count after the change.
    pub cabins: Vec<CabinCount>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookedSeat {
    #[schemars(with = "SeatName")]
    pub seat: String,
    pub passenger: String,
    pub cabin: Cabin,
    pub fare: Money,
    /// Once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_number: Option<String>,
    /// Checked in, with a valid boarding pass; always `false` in `cancelled_seats`.
    pub checked_in: bool,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightSummary {
    pub number: String,
    pub from: String,
    pub to: String,
    #[schemars(with = "Timestamp")]
    pub departs_at: String,
    #[schemars(with = "Timestamp")]
    pub arrives_at: String,
    pub from_tz: String,
    pub to_tz: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub estimated_departs_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub estimated_arrives_at: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Booking {
    pub locator: String,
    pub flight_id: String,
    pub status: BookingStatus,
    pub seats: Vec<BookedSeat>,
    pub total: Money,
    #[schemars(with = "Timestamp")]
    pub created_at: String,
    #[schemars(with = "Timestamp")]
    pub updated_at: String,
    /// Only while held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub hold_expires_at: Option<String>,
    /// Refunded so far, after the first refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Money>,
    /// Passengers cancelled from a confirmed booking, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_seats: Option<Vec<BookedSeat>>,
    /// Once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight: Option<FlightSummary>,
}

/// An IATA boarding pass of one checked-in passenger.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BoardingPass {
    pub flight_id: String,
    #[schemars(with = "SeatName")]
    pub seat: String,
    pub passenger: String,
    /// The flight's check-in sequence number: 1, 2, 3 ... in check-in order.
    #[schemars(range(min = 1))]
    pub sequence: u64,
    /// The IATA Resolution 792 bar-coded boarding pass (format `M`, one leg, the
    /// 60 characters of mandatory items).
    #[schemars(length(min = 60, max = 60))]
    pub bcbp: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub order_id: String,
    pub locator: String,
    pub status: OrderStatus,
    pub amount: Money,
    pub refunded: Money,
    #[schemars(with = "Timestamp")]
    pub created_at: String,
}

/// An account event; fields beyond `at`, `type` and `locator` depend on the type.
#[derive(Serialize, JsonSchema)]
pub struct HistoryEvent {
    #[schemars(with = "Timestamp")]
    pub at: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub role: Role,
}

// ----- results --------------------------------------------------------------------

/// No params (any given are ignored).
#[derive(Serialize, JsonSchema)]
pub struct NoParams {}

/// An empty object.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginResult {
    pub token: String,
    #[schemars(with = "Timestamp")]
    pub expires_at: String,
    pub user: User,
    /// From `auth.login` and `auth.register`: this client's proof of a password it
    /// got right, sent with its next `auth.login` of the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AirportsResult {
    pub airports: Vec<Airport>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightsResult {
    pub flights: Vec<Flight>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightResult {
    pub flight: Flight,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightGetResult {
    pub flight: Flight,
    pub version: u64,
    pub seats: Vec<Seat>,
    pub layout: Layout,
}

/// Either `seats` (a snapshot) or `changes` (everything after `since`), never both.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeResult {
    pub flight_id: String,
    pub version: u64,
    /// Connections subscribed to the flight on every node, this one included.
    pub viewers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<Vec<Seat>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingResult {
    pub booking: Booking,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayResult {
    pub booking: Booking,
    pub order: Order,
}

/// `order` only when a confirmed booking was refunded.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelResult {
    pub booking: Booking,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

/// The booking, and the passes of the passengers asked for, in booking order.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInResult {
    pub booking: Booking,
    pub boarding_passes: Vec<BoardingPass>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BoardingPassesResult {
    pub boarding_passes: Vec<BoardingPass>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingsResult {
    pub bookings: Vec<Booking>,
    /// Present (`true`) when older bookings are left: ask again with `before` set to
    /// the last locator of this page.
    pub more: Option<bool>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrdersResult {
    pub orders: Vec<Order>,
    /// Present (`true`) when older orders are left: ask again with `before` set to
    /// the last order id of this page.
    pub more: Option<bool>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitlistStatus {
    Waiting,
    Offered,
    Accepted,
    Expired,
    Left,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistEntry {
    pub id: String,
    pub flight_id: String,
    pub cabin: Cabin,
    pub count: u32,
    /// 1 = next in line among the cabin's waiting entries; only while waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    pub status: WaitlistStatus,
    #[schemars(with = "Timestamp")]
    pub created_at: String,
    /// The offered booking, once offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistEntryResult {
    pub entry: WaitlistEntry,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistResult {
    pub entries: Vec<WaitlistEntry>,
    /// Present (`true`) when older entries are left: ask again with `before` set to
    /// the last entry's id of this page.
    pub more: Option<bool>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistOffered {
    pub entry: WaitlistEntry,
    pub booking: Booking,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryResult {
    pub events: Vec<HistoryEvent>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelFlightResult {
    pub flight: Flight,
    /// Confirmed bookings refunded.
    pub refunded: u32,
    /// Holds released.
    pub released: u32,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightStats {
    pub flight_id: String,
    pub number: String,
    pub from: String,
    pub to: String,
    #[schemars(with = "Timestamp")]
    pub departs_at: String,
    pub status: FlightStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Timestamp>")]
    pub estimated_departs_at: Option<String>,
    pub version: u64,
    pub seats_total: u32,
    pub seats_held: u32,
    pub seats_booked: u32,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub load_factor: f64,
    pub revenue: Money,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsResult {
    pub flights: Vec<FlightStats>,
}

/// Why money goes back.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundKind {
    Cancel,
    FlightCancelled,
    Orphan,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundResolution {
    /// The admin's username.
    pub by: String,
    pub outcome: params::RefundOutcome,
    #[schemars(with = "Timestamp")]
    pub at: String,
}

/// A refund, open until made and recorded (`done`).
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRefund {
    pub refund_id: String,
    pub locator: String,
    pub reason: RefundKind,
    pub amount: Money,
    #[schemars(with = "Vec<SeatName>")]
    pub seats: Vec<String>,
    #[schemars(with = "Timestamp")]
    pub created_at: String,
    pub done: bool,
    /// The idempotency key it is asked under now (`refund_id` until a retry).
    pub gateway_key: String,
    /// The keys it was asked under before, `refund_id` first.
    pub earlier_keys: Vec<String>,
    /// Tries the gateway failed or refused on the answering node since it started.
    pub failed_tries: u32,
    pub last_error: Option<String>,
    pub resolutions: Vec<RefundResolution>,
    /// The gateway's refunds of it that failed after they were recorded as made;
    /// present only on a refund reopened to pay that money back again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_later: Vec<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRefundsResult {
    pub refunds: Vec<OpenRefund>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRefundResult {
    pub refund: OpenRefund,
}

/// The OpenRPC document of this server.
#[derive(Serialize, JsonSchema)]
pub struct Discover {
    pub openrpc: String,
}

// ----- pushes ---------------------------------------------------------------------

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatsChanged {
    pub flight_id: String,
    pub version: u64,
    pub seats: Vec<SeatChange>,
    pub cabins: Vec<CabinCount>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightChanged {
    pub flight: Flight,
    /// The reason the change gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightPresence {
    pub flight_id: String,
    pub viewers: u32,
    /// When the count was taken.
    #[schemars(with = "Timestamp")]
    pub at: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchResult {
    pub airport: String,
    /// Departing from 1 hour ago to `hours` ahead, soonest first.
    pub flights: Vec<Flight>,
}

// ----- errors ---------------------------------------------------------------------

/// The JSON-RPC `error` object of every failed request.
pub struct ErrorObject;

impl JsonSchema for ErrorObject {
    fn schema_name() -> Cow<'static, str> {
        "Error".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "required": ["code", "message", "data"],
            "additionalProperties": false,
            "properties": {
                "code": { "type": "integer" },
                "message": { "type": "string" },
                "data": {
                    "type": "object",
                    "required": ["reason"],
                    "additionalProperties": false,
                    "properties": {
                        "reason": { "enum": ApiError::REASONS },
                        "seats": { "type": "array", "items": { "type": "string" } },
                        "limit": { "type": "integer", "minimum": 0 },
                        "client_secret": { "type": "string" },
                    },
                },
            },
        })
    }
}

// ----- documents ------------------------------------------------------------------

const SCHEMAS: &str = "/components/schemas/";

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = SCHEMAS.into())
        .into_generator()
}

fn info() -> Value {
    json!({
        "title": "Jetway",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Real-time air-ticket booking: JSON-RPC 2.0 over a WebSocket at /ws. \
                        Reference: docs/protocol.md.",
    })
}

/// The params of a method as OpenRPC content descriptors (by name).
fn content_descriptors(params: &Schema) -> Vec<Value> {
    let required: Vec<&str> = params
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    params
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut d = json!({
                        "name": name,
                        "required": required.contains(&name.as_str()),
                        "schema": schema,
                    });
                    if let Some(text) = schema.get("description") {
                        d["description"] = text.clone();
                    }
                    d
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `components.errors`: every error reason with its code.
fn error_descriptors() -> Map<String, Value> {
    ApiError::examples()
        .iter()
        .map(|e| {
            let reason = e.reason();
            let error =
                json!({ "code": e.code(), "message": reason, "data": { "reason": reason } });
            (reason.to_owned(), error)
        })
        .collect()
}

fn build_openrpc() -> Value {
    let mut g = generator();
    g.subschema_for::<ErrorObject>();
    let methods: Vec<Value> = METHOD_CONTRACT
        .iter()
        .map(|m| {
            let params = (m.params)(&mut g);
            json!({
                "name": m.name,
                "summary": m.summary,
                "description": format!("May be called by {}.", m.access.who()),
                "paramStructure": "by-name",
                "params": content_descriptors(&params),
                "result": { "name": "result", "schema": (m.result)(&mut g) },
                "x-access": m.access.as_str(),
            })
        })
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": info(),
        "servers": [{
            "name": "default",
            "url": "ws://127.0.0.1:8080/ws",
            "summary": "The default --listen address; the path is /ws on any host.",
        }],
        "methods": methods,
        "components": {
            "schemas": Value::Object(g.take_definitions(true)),
            "errors": error_descriptors(),
        },
    })
}

fn build_asyncapi() -> Value {
    let mut g = generator();
    let mut messages = Map::new();
    let mut operations = Map::new();
    let mut channel_messages = Map::new();
    for p in PUSH_CONTRACT {
        let key = p.name.replace('.', "_");
        let params = (p.params)(&mut g);
        messages.insert(
            key.clone(),
            json!({
                "name": p.name,
                "summary": p.summary,
                "contentType": "application/json",
                "payload": {
                    "type": "object",
                    "required": ["jsonrpc", "method", "params"],
                    "additionalProperties": false,
                    "properties": {
                        "jsonrpc": { "const": "2.0" },
                        "method": { "const": p.name },
                        "params": params,
                    },
                },
            }),
        );
        channel_messages.insert(
            key.clone(),
            json!({ "$ref": format!("#/components/messages/{key}") }),
        );
        operations.insert(
            format!("receive_{key}"),
            json!({
                "action": "receive",
                "channel": { "$ref": "#/channels/ws" },
                "summary": p.summary,
                "messages": [{ "$ref": format!("#/channels/ws/messages/{key}") }],
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": info(),
        "defaultContentType": "application/json",
        "servers": {
            "this": { "host": "localhost:8080", "protocol": "ws", "pathname": "/ws" },
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "description": "The one WebSocket: JSON-RPC requests and replies (see /openrpc.json) and these pushes.",
                "messages": Value::Object(channel_messages),
            },
        },
        "operations": Value::Object(operations),
        "components": {
            "messages": Value::Object(messages),
            "schemas": Value::Object(g.take_definitions(true)),
        },
    })
}

static OPENRPC: LazyLock<Value> = LazyLock::new(build_openrpc);
static ASYNCAPI: LazyLock<Value> = LazyLock::new(build_asyncapi);

/// The OpenRPC 1.3 document of every method (`GET /openrpc.json`, `rpc.discover`).
pub fn openrpc() -> &'static Value {
    &OPENRPC
}

static OPENRPC_RESULT: LazyLock<Result<Box<RawValue>, ApiError>> =
    LazyLock::new(|| super::results::encode(openrpc()));

/// [`openrpc`] as `rpc.discover`'s result, encoded once: its ~35 KB are copied per
/// call, not serialized again.
pub fn openrpc_result() -> Result<Box<RawValue>, ApiError> {
    OPENRPC_RESULT.clone()
}

/// The AsyncAPI 3 document of every push (`GET /asyncapi.json`).
pub fn asyncapi() -> &'static Value {
    &ASYNCAPI
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dispatched_method_is_in_the_contract_once() {
        let names: Vec<&str> = METHOD_CONTRACT.iter().map(|m| m.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a method is listed twice");
        let mut dispatched = Method::NAMES.to_vec();
        dispatched.sort();
        assert_eq!(sorted, dispatched);
    }

    #[test]
    fn documents_resolve_every_reference() {
        for doc in [openrpc(), asyncapi()] {
            let text = doc.to_string();
            for part in text.split("\"$ref\":\"#").skip(1) {
                let pointer = &part[..part.find('"').unwrap_or(0)];
                assert!(doc.pointer(pointer).is_some(), "dangling $ref #{pointer}");
            }
        }
        assert_eq!(
            openrpc()["methods"].as_array().map(Vec::len),
            Some(METHOD_CONTRACT.len())
        );
        let hold = openrpc()["methods"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "booking.hold"))
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = hold["params"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["required"] == true)
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(required, ["flight_id", "passengers", "request_id"]);
    }
}
