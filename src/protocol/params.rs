//! Every method as clients send it: the one list of methods ([`Method`]: name, who
//! may call it), their parameters, and the one table that turns a request into typed
//! params ([`Call::parse`]). What is a pure parse happens here: seat names, cabins
//! and seat counts become domain values (`HoldRequest`, ...); checks against the
//! state (a flight, a booking) happen in the use cases.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::domain::booking::MAX_SEATS_PER_BOOKING;
use crate::domain::{Cabin, FlightStatus, Money, SeatId};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Anyone,
    LoggedIn,
    Admin,
}

impl Access {
    /// Its `x-access` value in the OpenRPC document.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Anyone => "anyone",
            Access::LoggedIn => "loggedin",
            Access::Admin => "admin",
        }
    }

    /// Who it is, in a sentence.
    pub fn who(self) -> &'static str {
        match self {
            Access::Anyone => "anyone",
            Access::LoggedIn => "a logged-in connection",
            Access::Admin => "an admin",
        }
    }
}

/// Defines [`Method`] from one table: variant, name, who may call it.
macro_rules! methods {
    ($($variant:ident = $name:literal, $access:ident;)*) => {
        /// Every method a client may call: the one list that the dispatcher, the
        /// metric labels, the contract and the tests take their methods from.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Method {
            $($variant,)*
        }

        impl Method {
            pub const ALL: &'static [Method] = &[$(Method::$variant,)*];
            /// Every method's name, in [`Method::ALL`]'s order (also the bounded set
            /// of metric labels).
            pub const NAMES: &'static [&'static str] = &[$($name,)*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Method::$variant => $name,)*
                }
            }

            pub const fn access(self) -> Access {
                match self {
                    $(Method::$variant => Access::$access,)*
                }
            }
        }
    };
}

methods! {
    Register = "auth.register", Anyone;
    Login = "auth.login", Anyone;
    Resume = "auth.resume", Anyone;
    Logout = "auth.logout", LoggedIn;
    Airports = "flights.airports", Anyone;
    Search = "flights.search", Anyone;
    FlightGet = "flights.get", Anyone;
    Subscribe = "seats.subscribe", Anyone;
    Unsubscribe = "seats.unsubscribe", Anyone;
    Watch = "flights.watch", Anyone;
    Unwatch = "flights.unwatch", Anyone;
    Hold = "booking.hold", LoggedIn;
    WaitlistJoin = "waitlist.join", LoggedIn;
    WaitlistLeave = "waitlist.leave", LoggedIn;
    WaitlistList = "waitlist.list", LoggedIn;
    Pay = "booking.pay", LoggedIn;
    Cancel = "booking.cancel", LoggedIn;
    ChangeSeat = "booking.change_seat", LoggedIn;
    CheckIn = "booking.check_in", LoggedIn;
    BoardingPasses = "booking.boarding_passes", LoggedIn;
    BookingGet = "booking.get", LoggedIn;
    BookingsList = "bookings.list", LoggedIn;
    OrdersList = "orders.list", LoggedIn;
    HistoryList = "history.list", LoggedIn;
    AdminCreateFlight = "admin.flights.create", Admin;
    AdminCancelFlight = "admin.flights.cancel", Admin;
    AdminUpdateFlight = "admin.flights.update", Admin;
    AdminStats = "admin.flights.stats", Admin;
    AdminRefunds = "admin.refunds.list", Admin;
    AdminResolveRefund = "admin.refunds.resolve", Admin;
    Discover = "rpc.discover", Anyone;
}

impl Method {
    /// The method called `name`; any other name is `method_not_found`.
    pub fn parse(name: &str) -> Result<Method, ApiError> {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == name)
            .ok_or_else(|| ApiError::MethodNotFound(name.chars().take(64).collect()))
    }
}

/// A request's method with its decoded params. A params error is kept, not returned,
/// so that the dispatcher checks who is asking before it looks at the params.
#[derive(Debug)]
pub enum Call {
    Register(Result<Credentials, ApiError>),
    Login(Result<Login, ApiError>),
    Resume(Result<Resume, ApiError>),
    Logout,
    Airports,
    Search(Result<Search, ApiError>),
    FlightGet(Result<FlightRef, ApiError>),
    Subscribe(Result<Subscribe, ApiError>),
    Unsubscribe(Result<FlightRef, ApiError>),
    Watch(Result<Watch, ApiError>),
    Unwatch(Result<Unwatch, ApiError>),
    Hold(Result<HoldRequest, ApiError>),
    Pay(Result<Pay, ApiError>),
    Cancel(Result<CancelRequest, ApiError>),
    ChangeSeat(Result<ChangeSeatRequest, ApiError>),
    CheckIn(Result<CheckInRequest, ApiError>),
    BoardingPasses(Result<LocatorRef, ApiError>),
    BookingGet(Result<LocatorRef, ApiError>),
    BookingsList(Result<ListPage, ApiError>),
    OrdersList(Result<ListPage, ApiError>),
    HistoryList(Result<Limit, ApiError>),
    AdminCreateFlight(Result<CreateFlight, ApiError>),
    AdminCancelFlight(Result<CancelFlight, ApiError>),
    AdminUpdateFlight(Result<UpdateFlight, ApiError>),
    AdminStats,
    AdminRefunds,
    AdminResolveRefund(Result<ResolveRefund, ApiError>),
    Discover,
    WaitlistJoin(Result<WaitlistJoinRequest, ApiError>),
    WaitlistLeave(Result<WaitlistRef, ApiError>),
    WaitlistList(Result<ListPage, ApiError>),
}

impl Call {
    /// Decodes `params` for the method called `method`; a name not in [`Method`] is
    /// `method_not_found`.
    pub fn parse(method: &str, params: Value) -> Result<Call, ApiError> {
        Ok(Call::of(Method::parse(method)?, params))
    }

    /// Decodes `params` for `method`.
    pub fn of(method: Method, params: Value) -> Call {
        let p = params;
        match method {
            Method::Register => Call::Register(decode(p)),
            Method::Login => Call::Login(decode(p)),
            Method::Resume => Call::Resume(decode(p)),
            Method::Logout => Call::Logout,
            Method::Airports => Call::Airports,
            Method::Search => Call::Search(decode(p)),
            Method::FlightGet => Call::FlightGet(decode(p)),
            Method::Subscribe => Call::Subscribe(decode(p)),
            Method::Unsubscribe => Call::Unsubscribe(decode(p)),
            Method::Watch => Call::Watch(decode(p)),
            Method::Unwatch => Call::Unwatch(decode(p)),
            Method::Hold => Call::Hold(parse::<Hold, _>(p)),
            Method::Pay => Call::Pay(decode(p).and_then(Pay::refuse_card_data)),
            Method::Cancel => Call::Cancel(parse::<Cancel, _>(p)),
            Method::ChangeSeat => Call::ChangeSeat(parse::<ChangeSeat, _>(p)),
            Method::CheckIn => Call::CheckIn(parse::<CheckIn, _>(p)),
            Method::BoardingPasses => Call::BoardingPasses(decode(p)),
            Method::BookingGet => Call::BookingGet(decode(p)),
            Method::BookingsList => Call::BookingsList(decode(p)),
            Method::OrdersList => Call::OrdersList(decode(p)),
            Method::HistoryList => Call::HistoryList(decode(p)),
            Method::AdminCreateFlight => Call::AdminCreateFlight(decode(p)),
            Method::AdminCancelFlight => Call::AdminCancelFlight(decode(p)),
            Method::AdminUpdateFlight => Call::AdminUpdateFlight(decode(p)),
            Method::AdminStats => Call::AdminStats,
            Method::AdminRefunds => Call::AdminRefunds,
            Method::AdminResolveRefund => Call::AdminResolveRefund(decode(p)),
            Method::Discover => Call::Discover,
            Method::WaitlistJoin => Call::WaitlistJoin(parse::<WaitlistJoin, _>(p)),
            Method::WaitlistLeave => Call::WaitlistLeave(decode(p)),
            Method::WaitlistList => Call::WaitlistList(decode(p)),
        }
    }
}

/// Decodes a method's params, naming the offending field on failure.
pub fn decode<T: DeserializeOwned>(params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(|e| ApiError::InvalidParams(e.to_string()))
}

/// Decodes params as clients send them (`W`), then parses them into domain values
/// (`T`) with the parse's own error (an `invalid_seat` stays one).
fn parse<W: DeserializeOwned, T: TryFrom<W, Error = ApiError>>(
    params: Value,
) -> Result<T, ApiError> {
    decode::<W>(params).and_then(T::try_from)
}

/// Seat names, each once: a name that is no seat is `invalid_seat` (as given, cut
/// to 16 characters), a name given twice `invalid_params`.
fn seat_list(raw: &[String]) -> Result<Vec<SeatId>, ApiError> {
    let mut bad = Vec::new();
    let mut seats: Vec<SeatId> = Vec::new();
    for s in raw {
        match SeatId::parse(s) {
            Ok(id) if seats.contains(&id) => {
                return Err(ApiError::InvalidParams(format!(
                    "seat {id} is listed twice"
                )))
            }
            Ok(id) => seats.push(id),
            Err(_) => bad.push(s.chars().take(16).collect()),
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::InvalidSeat(bad));
    }
    Ok(seats)
}

/// Seats of a booking named by a request (`booking.cancel`, `booking.check_in`):
/// a name that is no seat is `invalid_params`.
fn booking_seats(raw: Option<Vec<String>>) -> Result<Option<Vec<SeatId>>, ApiError> {
    raw.as_deref()
        .map(seat_list)
        .transpose()
        .map_err(|e| match e {
            ApiError::InvalidSeat(bad) => {
                ApiError::InvalidParams(format!("invalid seats: {}", bad.join(", ")))
            }
            e => e,
        })
}

fn cabin(name: &str) -> Result<Cabin, ApiError> {
    Cabin::parse(name)
        .ok_or_else(|| ApiError::InvalidParams("cabin must be economy or business".into()))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// The `device_token` an earlier login or registration of this account gave this
    /// client: its logins are not held up by wrong passwords sent from elsewhere.
    pub device_token: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Resume {
    pub token: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Search {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `YYYY-MM-DD`, the UTC departure date.
    pub date: Option<String>,
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FlightRef {
    pub flight_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Subscribe {
    pub flight_id: String,
    /// The last version the client has: the reply gives the changes after it.
    pub since: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Passenger {
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Hold {
    pub flight_id: String,
    /// Named seats, one per passenger; or leave out and give `count` and `cabin`.
    #[schemars(length(min = 1, max = 9))]
    pub seats: Option<Vec<String>>,
    #[schemars(range(min = 1, max = 9))]
    pub count: Option<u32>,
    #[schemars(with = "Option<super::contract::Cabin>")]
    pub cabin: Option<String>,
    #[schemars(length(min = 1, max = 9))]
    pub passengers: Vec<Passenger>,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

/// The seats a hold asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum SeatChoice {
    Named(Vec<SeatId>),
    /// The best `count` free seats of a cabin.
    Best {
        count: usize,
        cabin: Cabin,
    },
}

impl SeatChoice {
    pub fn count(&self) -> usize {
        match self {
            SeatChoice::Named(seats) => seats.len(),
            SeatChoice::Best { count, .. } => *count,
        }
    }
}

/// `booking.hold`'s params, parsed: 1 to 9 seats, one passenger per seat.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Hold")]
pub struct HoldRequest {
    pub flight_id: String,
    pub seats: SeatChoice,
    pub passengers: Vec<Passenger>,
    pub request_id: String,
}

impl TryFrom<Hold> for HoldRequest {
    type Error = ApiError;

    fn try_from(p: Hold) -> Result<Self, ApiError> {
        let seats = match (p.seats, p.count, p.cabin) {
            (Some(seats), None, None) => SeatChoice::Named(seat_list(&seats)?),
            (None, Some(count), Some(c)) => SeatChoice::Best {
                count: count as usize,
                cabin: cabin(&c)?,
            },
            _ => {
                return Err(ApiError::InvalidParams(
                    "give either seats, or count and cabin".into(),
                ))
            }
        };
        let n = seats.count();
        if n == 0 || n > MAX_SEATS_PER_BOOKING {
            return Err(ApiError::InvalidParams(format!(
                "a booking holds 1 to {MAX_SEATS_PER_BOOKING} seats"
            )));
        }
        if n != p.passengers.len() {
            return Err(ApiError::InvalidParams(
                "give exactly one passenger per seat".into(),
            ));
        }
        Ok(HoldRequest {
            flight_id: p.flight_id,
            seats,
            passengers: p.passengers,
            request_id: p.request_id,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Pay {
    pub locator: String,
    /// A payment method id (`pm_...`), never card data.
    #[schemars(length(min = 1, max = 128))]
    pub payment_method: String,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

impl Pay {
    /// Card data must never reach a log or the database: a `payment_method` that may
    /// be a card number is refused before anything uses it.
    fn refuse_card_data(self) -> Result<Pay, ApiError> {
        if looks_like_card_number(&self.payment_method) {
            return Err(ApiError::InvalidParams(
                "payment_method must be a payment method id (pm_...), never card data".into(),
            ));
        }
        Ok(self)
    }
}

/// True for text that may be a card number (12-19 digits, spaces or dashes between).
fn looks_like_card_number(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (12..=19).contains(&digits)
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Cancel {
    pub locator: String,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
    /// Only these passengers' seats (a confirmed booking); all when left out.
    pub seats: Option<Vec<String>>,
}

/// `booking.cancel`'s params, parsed.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Cancel")]
pub struct CancelRequest {
    pub locator: String,
    pub request_id: String,
    pub seats: Option<Vec<SeatId>>,
}

impl TryFrom<Cancel> for CancelRequest {
    type Error = ApiError;

    fn try_from(p: Cancel) -> Result<Self, ApiError> {
        Ok(CancelRequest {
            seats: booking_seats(p.seats)?,
            locator: p.locator,
            request_id: p.request_id,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChangeSeat {
    pub locator: String,
    pub from: String,
    pub to: String,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

/// `booking.change_seat`'s params, parsed.
#[derive(Debug, Deserialize)]
#[serde(try_from = "ChangeSeat")]
pub struct ChangeSeatRequest {
    pub locator: String,
    pub from: SeatId,
    pub to: SeatId,
    pub request_id: String,
}

impl TryFrom<ChangeSeat> for ChangeSeatRequest {
    type Error = ApiError;

    fn try_from(p: ChangeSeat) -> Result<Self, ApiError> {
        let from = SeatId::parse(&p.from)
            .map_err(|_| ApiError::InvalidParams(format!("invalid seat {:?}", p.from)))?;
        let to = seat_list(std::slice::from_ref(&p.to))?[0];
        Ok(ChangeSeatRequest {
            locator: p.locator,
            from,
            to,
            request_id: p.request_id,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckIn {
    pub locator: String,
    /// Only these passengers' seats; every passenger when left out.
    pub seats: Option<Vec<String>>,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

/// `booking.check_in`'s params, parsed.
#[derive(Debug, Deserialize)]
#[serde(try_from = "CheckIn")]
pub struct CheckInRequest {
    pub locator: String,
    pub seats: Option<Vec<SeatId>>,
    pub request_id: String,
}

impl TryFrom<CheckIn> for CheckInRequest {
    type Error = ApiError;

    fn try_from(p: CheckIn) -> Result<Self, ApiError> {
        Ok(CheckInRequest {
            seats: booking_seats(p.seats)?,
            locator: p.locator,
            request_id: p.request_id,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LocatorRef {
    pub locator: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitlistJoin {
    pub flight_id: String,
    #[schemars(with = "super::contract::Cabin")]
    pub cabin: String,
    /// Seats wanted, equal to the number of passengers.
    #[schemars(range(min = 1, max = 9))]
    pub count: u32,
    #[schemars(length(min = 1, max = 9))]
    pub passengers: Vec<Passenger>,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

/// `waitlist.join`'s params, parsed: 1 to 9 seats, one passenger per seat.
#[derive(Debug, Deserialize)]
#[serde(try_from = "WaitlistJoin")]
pub struct WaitlistJoinRequest {
    pub flight_id: String,
    pub cabin: Cabin,
    pub count: usize,
    pub passengers: Vec<Passenger>,
    pub request_id: String,
}

impl TryFrom<WaitlistJoin> for WaitlistJoinRequest {
    type Error = ApiError;

    fn try_from(p: WaitlistJoin) -> Result<Self, ApiError> {
        let cabin = cabin(&p.cabin)?;
        let count = p.count as usize;
        if count == 0 || count > MAX_SEATS_PER_BOOKING || count != p.passengers.len() {
            return Err(ApiError::InvalidParams(format!(
                "count must be 1-{MAX_SEATS_PER_BOOKING}, one passenger per seat"
            )));
        }
        Ok(WaitlistJoinRequest {
            flight_id: p.flight_id,
            cabin,
            count,
            passengers: p.passengers,
            request_id: p.request_id,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitlistRef {
    pub id: String,
}

/// `bookings.list` / `orders.list`: a page, newest first (extensions: without them
/// the newest 500, which is every record of all but the busiest accounts).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListPage {
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// A locator (bookings), order id (orders) or waitlist entry id (waitlist) of the
    /// caller's: only older records.
    pub before: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Limit {
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateFlight {
    pub number: String,
    pub from: String,
    pub to: String,
    pub departs_at: String,
    pub arrives_at: String,
    pub aircraft: String,
    pub fares: CreateFares,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateFares {
    #[schemars(with = "super::contract::Money")]
    pub economy: Money,
    #[schemars(with = "super::contract::Money")]
    pub business: Money,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CancelFlight {
    pub flight_id: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResolveRefund {
    pub refund_id: String,
    pub outcome: RefundOutcome,
}

/// An admin's way out for a refund the gateway keeps refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundOutcome {
    /// The money went back by other means (the gateway's dashboard): closed as made.
    PaidElsewhere,
    /// Asked again under a fresh idempotency key.
    Retry,
    /// Never to be made: a seat refund its booking no longer backs (the seats it names
    /// are gone, or the booking is no longer confirmed), closed without paying.
    Void,
}

impl RefundOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundOutcome::PaidElsewhere => "paid_elsewhere",
            RefundOutcome::Retry => "retry",
            RefundOutcome::Void => "void",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Watch {
    pub airport: String,
    pub hours: Option<u8>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Unwatch {
    pub airport: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpdateFlight {
    pub flight_id: String,
    pub estimated_departs_at: Option<String>,
    pub estimated_arrives_at: Option<String>,
    /// `boarding` or `departed` (forward only).
    #[schemars(with = "Option<super::contract::FlightStatus>")]
    pub status: Option<FlightStatus>,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn card_numbers_are_recognised() {
        assert!(looks_like_card_number("4242424242424242"));
        assert!(looks_like_card_number("4242 4242 4242 4242"));
        assert!(looks_like_card_number("4242-4242-4242-4242"));
        assert!(!looks_like_card_number("pm_card_visa"));
        assert!(!looks_like_card_number("pm_1234567890123456"));
        assert!(!looks_like_card_number("12345"));
        let pay = json!({"locator": "ABC123", "payment_method": "4242 4242 4242 4242", "request_id": "r1"});
        assert!(matches!(
            Call::parse("booking.pay", pay),
            Ok(Call::Pay(Err(ApiError::InvalidParams(_))))
        ));
    }

    #[test]
    fn missing_or_mistyped_fields_are_invalid_params() {
        let e = decode::<Credentials>(json!({"username":"a"})).unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidParams(ref m) if m.contains("password")),
            "{e:?}"
        );
        let e =
            decode::<Hold>(json!({"flight_id":1,"passengers":[],"request_id":"r"})).unwrap_err();
        assert_eq!(e.reason(), "invalid_params");
        let h = decode::<Hold>(json!({"flight_id":"F","seats":["1A"],"passengers":[{"name":"A"}],"request_id":"r","extra":true})).unwrap();
        assert_eq!(h.seats.unwrap(), ["1A"]);
    }

    #[test]
    fn every_method_has_a_call_and_no_other_name_does() {
        for m in Method::NAMES {
            assert!(Call::parse(m, json!({})).is_ok(), "{m}");
        }
        for m in [
            "",
            "booking",
            "booking.hold ",
            "Booking.hold",
            "admin.flights",
        ] {
            assert_eq!(
                Call::parse(m, json!({})).unwrap_err().reason(),
                "method_not_found"
            );
        }
        let long = "x".repeat(1000);
        let e = Call::parse(&long, json!({})).unwrap_err();
        assert_eq!(e, ApiError::MethodNotFound("x".repeat(64)));
    }

    #[test]
    fn seat_names_parse_here_with_the_use_cases_reasons() {
        let hold = |seats: Value| {
            let p = json!({"flight_id": "F", "seats": seats, "passengers": [{"name": "A"}, {"name": "B"}], "request_id": "r"});
            match Call::parse("booking.hold", p).unwrap() {
                Call::Hold(h) => h,
                c => panic!("{c:?}"),
            }
        };
        let h = hold(json!(["1A", "1b"])).unwrap();
        let named = ["1A", "1B"].map(|s| SeatId::parse(s).unwrap()).to_vec();
        assert_eq!(h.seats, SeatChoice::Named(named));
        assert_eq!(
            hold(json!(["1A", "ZZZ"])).unwrap_err(),
            ApiError::InvalidSeat(vec!["ZZZ".into()])
        );
        assert_eq!(
            hold(json!(["1A", "1a"])).unwrap_err().reason(),
            "invalid_params"
        );
        assert_eq!(hold(json!(["1A"])).unwrap_err().reason(), "invalid_params");
        let cancel = json!({"locator": "ABC234", "request_id": "r", "seats": ["1A", "?"]});
        let Call::Cancel(c) = Call::parse("booking.cancel", cancel).unwrap() else {
            panic!("not a cancel")
        };
        assert_eq!(
            c.unwrap_err(),
            ApiError::InvalidParams("invalid seats: ?".into())
        );
        let change = json!({"locator": "ABC234", "from": "1A", "to": "99Q", "request_id": "r"});
        let Call::ChangeSeat(c) = Call::parse("booking.change_seat", change).unwrap() else {
            panic!("not a seat change")
        };
        assert_eq!(c.unwrap_err(), ApiError::InvalidSeat(vec!["99Q".into()]));
        let join = json!({"flight_id": "F", "cabin": "first", "count": 1, "passengers": [{"name": "A"}], "request_id": "r"});
        let Call::WaitlistJoin(j) = Call::parse("waitlist.join", join).unwrap() else {
            panic!("not a join")
        };
        assert_eq!(j.unwrap_err().reason(), "invalid_params");
    }

    #[test]
    fn a_params_error_stays_with_its_method() {
        let c = Call::parse("booking.hold", json!({"flight_id": 1})).unwrap();
        assert!(
            matches!(c, Call::Hold(Err(ApiError::InvalidParams(_)))),
            "{c:?}"
        );
        let c = Call::parse("admin.flights.create", json!({})).unwrap();
        assert!(matches!(c, Call::AdminCreateFlight(Err(_))), "{c:?}");
        let c = Call::parse("auth.logout", json!({"anything": [1]})).unwrap();
        assert!(matches!(c, Call::Logout));
    }
}
