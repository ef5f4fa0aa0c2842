//! The methods' results as typed values, and their one encoding: a result becomes
//! JSON only here (through the contract's shapes in `wire`), for the reply and for
//! the memo of a request's answer (`{"ok": result}` or `{"err": error}`) that a
//! repeat of the request gets again.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{wire, ApiError};
use crate::domain::checkin::BoardingPass;
use crate::domain::flight::Airport;
use crate::domain::{
    rfc3339, Aircraft, Booking, Flight, FlightId, Locator, Millis, Money, Order, Username,
    WaitlistEntry,
};

/// A use case's answer: made now, or the encoded answer an earlier try of the same
/// request got, replayed as it was.
#[derive(Debug)]
pub enum Answer<T> {
    Now(T),
    Replayed(Value),
}

impl<T: Serialize> Serialize for Answer<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Now(r) => r.serialize(s),
            Answer::Replayed(v) => v.serialize(s),
        }
    }
}

/// What a remembered answer is read back as.
pub trait Replayable {
    fn replayed(encoded: Value) -> Self;
}

impl<T> Replayable for Answer<T> {
    fn replayed(encoded: Value) -> Self {
        Answer::Replayed(encoded)
    }
}

/// A push (a server notification) with its typed params, encoded as a reply's
/// result is (through the same shapes), straight to text (a booking and an order go
/// straight to the encoder; the other wire shapes are still built as `Value`s).
pub fn push<T: Serialize>(method: &str, params: &T) -> String {
    super::envelope::push(method, params)
}

/// `booking.updated`: `{booking}`, as [`BookingResult`] without an order, encoded from
/// borrowed values (no copy of the booking or its flight is made for it).
pub fn booking_updated(b: &Booking, flight: Option<&Flight>) -> String {
    #[derive(Serialize)]
    struct Updated<'a> {
        booking: wire::BookingShape<'a>,
    }
    push(
        "booking.updated",
        &Updated {
            booking: wire::booking(b, flight),
        },
    )
}

/// A result as the `result` member of a reply, encoded to JSON text in one pass (no
/// `Value` copy of it is built first).
pub fn encode<T: Serialize + ?Sized>(result: &T) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(result).map_err(|e| {
        tracing::error!(error = %e, "a result did not encode");
        ApiError::Internal
    })
}

/// The memo of a successful answer.
pub fn remember_ok<T: Serialize>(result: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        ok: &'a T,
    }
    serde_json::to_vec(&Ok { ok: result }).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a result did not encode");
        br#"{"ok":null}"#.to_vec()
    })
}

/// The encoded result inside the memo of a successful answer ([`remember_ok`]);
/// `None` for a refusal's.
pub fn remembered_ok(memo: &[u8]) -> Option<&str> {
    let result = memo.strip_prefix(br#"{"ok":"#)?.strip_suffix(b"}")?;
    std::str::from_utf8(result).ok()
}

/// The memo of a refusal.
pub fn remember_err(e: &ApiError) -> Vec<u8> {
    err_memo(e).to_string().into_bytes()
}

/// The memo of a refusal, as read back.
pub fn err_memo(e: &ApiError) -> Value {
    json!({ "err": e.to_json() })
}

/// A memo read back: the encoded result, or the error.
pub fn replay(memo: &Value) -> Result<Value, ApiError> {
    if let Some(ok) = memo.get("ok") {
        return Ok(ok.clone());
    }
    Err(memo
        .get("err")
        .and_then(ApiError::from_json)
        .unwrap_or(ApiError::Internal))
}

/// Implements `Serialize` through a contract shape of `wire`.
macro_rules! through_wire {
    ($t:ty, |$x:ident| $shape:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $x = self;
                $shape.serialize(s)
            }
        }
    };
}

/// `{}`: done, nothing to tell.
#[derive(Debug, Serialize)]
pub struct Done {}

/// A booking as its owner sees it, with its flight's times when the flight is known.
#[derive(Debug)]
pub struct BookingView {
    pub booking: Booking,
    pub flight: Option<Flight>,
}

through_wire!(BookingView, |b| wire::booking(
    &b.booking,
    b.flight.as_ref()
));

/// `{booking, order?}`: hold, cancel, change_seat, pay, get; `order` once paid for
/// (a payment, a refund).
#[derive(Debug, Serialize)]
pub struct BookingResult {
    pub booking: BookingView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderView>,
}

impl BookingResult {
    pub fn new(booking: BookingView) -> Self {
        BookingResult {
            booking,
            order: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Bookings {
    pub bookings: Vec<BookingView>,
    /// Older bookings are left (only written when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

#[derive(Debug)]
pub struct OrderView(pub Order);

through_wire!(OrderView, |o| wire::order(&o.0));

#[derive(Debug, Serialize)]
pub struct Orders {
    pub orders: Vec<OrderView>,
    /// Older orders are left (only written when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// One event of a user's history: its own fields, then the event's details.
#[derive(Debug)]
pub struct HistoryEntry {
    pub at: Millis,
    pub kind: String,
    pub locator: Option<Locator>,
    /// Further members (an object); a member named like one above is left out.
    pub detail: Value,
}

through_wire!(HistoryEntry, |e| wire::history_event(
    e.at,
    &e.kind,
    e.locator.as_ref(),
    &e.detail
));

#[derive(Debug, Serialize)]
pub struct History {
    pub events: Vec<HistoryEntry>,
}

/// A boarding pass on a flight.
#[derive(Debug)]
pub struct PassView {
    pub flight_id: FlightId,
    pub pass: BoardingPass,
}

through_wire!(PassView, |p| wire::boarding_pass(&p.flight_id, &p.pass));

/// `{boarding_passes}`.
#[derive(Debug, Serialize)]
pub struct BoardingPasses {
    pub boarding_passes: Vec<PassView>,
}

/// `{booking, boarding_passes}`: a check-in.
#[derive(Debug, Serialize)]
pub struct CheckedIn {
    pub booking: BookingView,
    pub boarding_passes: Vec<PassView>,
}

/// A flight as searches and boards show it, with its seats left per cabin.
#[derive(Debug)]
pub struct FlightView {
    pub flight: Flight,
    pub cabins: wire::CabinCounts,
    /// When its status is told (departed, landed...).
    pub now: Millis,
}

through_wire!(FlightView, |f| wire::flight(&f.flight, &f.cabins, f.now));

/// `{flights}`: a search.
#[derive(Debug, Serialize)]
pub struct Flights {
    pub flights: Vec<FlightView>,
}

/// `{flight}`: an admin's new or updated flight.
#[derive(Debug, Serialize)]
pub struct FlightResult {
    pub flight: FlightView,
}

/// `{flight, version, seats, layout}`: a flight's published seat map.
#[derive(Debug, Serialize)]
pub struct SeatMap {
    pub flight: FlightView,
    pub version: u64,
    /// Already in the contract's shape (see `FlightSeats::published_map`).
    pub seats: Vec<Value>,
    pub layout: LayoutView,
}

#[derive(Debug)]
pub struct LayoutView(pub &'static Aircraft);

through_wire!(LayoutView, |l| wire::layout(l.0));

/// `{flight_id, version, viewers}`: a subscription, before its `seats` or `changes`.
#[derive(Debug, Serialize)]
pub struct Subscribed {
    pub flight_id: FlightId,
    pub version: u64,
    pub viewers: u32,
}

/// `{airport, flights}`: a departure board.
#[derive(Debug, Serialize)]
pub struct Board {
    pub airport: String,
    pub flights: Vec<FlightView>,
}

#[derive(Debug)]
pub struct AirportView(pub &'static Airport);

through_wire!(AirportView, |a| wire::airport(a.0));

#[derive(Debug, Serialize)]
pub struct Airports {
    pub airports: Vec<AirportView>,
}

/// `{token, expires_at, user}`: a login, registration or resumed session.
#[derive(Debug, Serialize)]
pub struct LoggedIn {
    pub token: String,
    #[serde(serialize_with = "at")]
    pub expires_at: Millis,
    pub user: UserView,
    /// Given by a login or registration, to send with the client's next login of the
    /// account (not by a resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: u64,
    pub username: Username,
    pub role: &'static str,
}

/// `{flight, refunded, released}`: a flight cancelled by the airline.
#[derive(Debug, Serialize)]
pub struct FlightCancelled {
    pub flight: FlightView,
    pub refunded: u32,
    pub released: u32,
}

/// One flight's row of `admin.flights.stats`.
#[derive(Debug)]
pub struct StatsRow {
    pub flight: Flight,
    pub now: Millis,
    pub version: u64,
    pub total: usize,
    pub held: usize,
    pub booked: usize,
    /// Paid minus refunded, in cents.
    pub revenue: i64,
}

through_wire!(StatsRow, |r| stats_row(r));

/// One flight's row of `admin.flights.stats`; the load factor to three decimals.
fn stats_row(r: &StatsRow) -> Value {
    let f = &r.flight;
    let load = if r.total == 0 {
        0.0
    } else {
        ((r.held + r.booked) as f64 / r.total as f64 * 1000.0).round() / 1000.0
    };
    let mut row = json!({
        "flight_id": f.id,
        "number": f.number,
        "from": f.from,
        "to": f.to,
        "departs_at": rfc3339(f.departs_at),
        "status": f.status(r.now).as_str(),
        "version": r.version,
        "seats_total": r.total,
        "seats_held": r.held,
        "seats_booked": r.booked,
        "load_factor": load,
        "revenue": { "amount": r.revenue, "currency": crate::domain::money::CURRENCY },
    });
    if let Some(t) = f.estimated_departs_at {
        row["estimated_departs_at"] = json!(rfc3339(t));
    }
    row
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub flights: Vec<StatsRow>,
}

/// A waitlist entry; `position` only while it is waiting.
#[derive(Debug)]
pub struct EntryView {
    pub entry: WaitlistEntry,
    pub position: Option<usize>,
}

through_wire!(EntryView, |e| wire::waitlist_entry(&e.entry, e.position));

/// `{entry}`: joining or leaving a waitlist.
#[derive(Debug, Serialize)]
pub struct EntryResult {
    pub entry: EntryView,
}

impl EntryResult {
    /// An entry no longer in line (no position).
    pub fn left(entry: WaitlistEntry) -> Self {
        EntryResult {
            entry: EntryView {
                entry,
                position: None,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Entries {
    pub entries: Vec<EntryView>,
    /// Older entries are left (only written when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// An open refund as the admin's methods show it.
#[derive(Debug, Serialize)]
pub struct RefundView {
    pub refund_id: String,
    pub locator: Locator,
    /// `cancel`, `flight_cancelled` or `orphan`.
    pub reason: &'static str,
    #[serde(serialize_with = "money")]
    pub amount: Money,
    pub seats: Vec<String>,
    #[serde(serialize_with = "at")]
    pub created_at: Millis,
    pub done: bool,
    pub gateway_key: String,
    pub earlier_keys: Vec<String>,
    pub failed_tries: u32,
    pub last_error: Option<String>,
    pub resolutions: Vec<ResolutionView>,
    /// The gateway's refunds of it that failed after they were recorded as made; not
    /// empty for a refund reopened to pay that money back again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_later: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ResolutionView {
    pub by: String,
    pub outcome: String,
    #[serde(serialize_with = "at")]
    pub at: Millis,
}

#[derive(Debug, Serialize)]
pub struct Refunds {
    pub refunds: Vec<RefundView>,
}

/// `{refund}`: an admin's resolution of a refund.
#[derive(Debug, Serialize)]
pub struct RefundResult {
    pub refund: RefundView,
}

/// `{entry, booking}`: `waitlist.offered`, an entry's seats held for its owner.
#[derive(Debug, Serialize)]
pub struct Offered {
    pub entry: EntryView,
    pub booking: BookingView,
}

/// `{flight, reason?}`: `flight.changed`.
#[derive(Debug, Serialize)]
pub struct FlightChanged {
    pub flight: FlightView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `{flight_id, viewers, at}`: `flight.presence`, `at` when the count was taken.
#[derive(Debug, Serialize)]
pub struct Presence {
    pub flight_id: FlightId,
    pub viewers: u32,
    #[serde(serialize_with = "at")]
    pub at: Millis,
}

fn at<S: Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
    rfc3339(*t).serialize(s)
}

fn money<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
    wire::money(*m).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A result's reply text, read back.
    fn value<T: Serialize>(result: &T) -> Value {
        serde_json::from_str(encode(result).unwrap().get()).unwrap()
    }

    #[test]
    fn a_reply_made_from_a_memo_is_the_reply_made_from_its_result() {
        let result = json!({
            "booking": {"locator": "ABC123", "seats": ["1A", "1B"], "total": {"amount": 12050, "currency": "EUR"}},
            "order": null,
            "note": "a \"quoted\" \u{e9}\n",
        });
        let memo = remember_ok(&result);
        for id in [json!(7), json!("r-1"), json!(null), json!(-1.5)] {
            let early =
                crate::protocol::envelope::success_encoded(&id, remembered_ok(&memo).unwrap());
            assert_eq!(
                early,
                crate::protocol::envelope::success(&id, &encode(&result).unwrap())
            );
        }
        assert_eq!(remembered_ok(&remember_err(&ApiError::Internal)), None);
        assert_eq!(remembered_ok(b"{\"ok\""), None);
    }

    #[test]
    fn a_memo_reads_back_as_it_was_written() {
        let read = |memo: Vec<u8>| serde_json::from_slice::<Value>(&memo).unwrap();
        let ok = read(remember_ok(&Done {}));
        assert_eq!(ok, json!({ "ok": {} }));
        assert_eq!(replay(&ok), Ok(json!({})));
        let err = ApiError::SeatUnavailable(vec!["1A".into()]);
        assert_eq!(replay(&read(remember_err(&err))), Err(err));
        assert_eq!(replay(&json!({})), Err(ApiError::Internal));
    }

    #[test]
    fn typed_results_encode_as_the_contract_names_them() {
        let logged_in = LoggedIn {
            token: "t".into(),
            expires_at: 1000,
            user: UserView {
                id: 7,
                username: Username::parse("ada").unwrap(),
                role: "passenger",
            },
            device_token: None,
        };
        assert_eq!(
            value(&logged_in),
            json!({"expires_at":"1970-01-01T00:00:01Z","token":"t","user":{"id":7,"role":"passenger","username":"ada"}})
        );
        let with_device = LoggedIn {
            device_token: Some("d1.x".into()),
            ..logged_in
        };
        assert_eq!(value(&with_device)["device_token"], "d1.x");
        let presence = Presence {
            flight_id: FlightId::parse("JW1-20260101").unwrap(),
            viewers: 2,
            at: 0,
        };
        assert_eq!(
            value(&presence),
            json!({"flight_id": "JW1-20260101", "viewers": 2, "at": "1970-01-01T00:00:00Z"})
        );
        let resolution = ResolutionView {
            by: "root".into(),
            outcome: "retry".into(),
            at: 0,
        };
        assert_eq!(
            value(&resolution),
            json!({"by": "root", "outcome": "retry", "at": "1970-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn booking_updated_carries_what_a_booking_result_does() {
        let b = Booking::hold(
            Locator::parse("ABC234").unwrap(),
            crate::domain::UserId(1),
            FlightId::parse("JW1-20260101").unwrap(),
            vec![(
                crate::domain::SeatId::parse("1A").unwrap(),
                crate::domain::Cabin::Economy,
                Money::cents(100).unwrap(),
            )],
            vec!["Ada".into()],
            0,
            1000,
        )
        .unwrap();
        let pushed: Value = serde_json::from_str(&booking_updated(&b, None)).unwrap();
        assert_eq!(pushed["method"], "booking.updated");
        let result = BookingResult::new(BookingView {
            booking: b,
            flight: None,
        });
        assert_eq!(pushed["params"], value(&result));
        assert_eq!(pushed["params"]["booking"]["status"], "held");
    }

    #[test]
    fn a_replayed_answer_encodes_as_stored() {
        let stored = json!({ "booking": { "locator": "ABC234" } });
        let answer: Answer<Done> = Answer::Replayed(stored.clone());
        assert_eq!(value(&answer), stored);
        assert_eq!(value(&Answer::Now(Done {})), json!({}));
    }
}
