//! Every method's name and parameters as clients send them, and the one table that
//! turns a request into typed params ([`Call::parse`]); semantic checks happen in the
//! use cases.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::domain::{FlightStatus, Money};

/// Every method, also the bounded set of metric labels. [`Call::parse`] knows no other.
pub const METHODS: &[&str] = &[
    "auth.register",
    "auth.login",
    "auth.resume",
    "auth.logout",
    "flights.airports",
    "flights.search",
    "flights.get",
    "seats.subscribe",
    "seats.unsubscribe",
    "flights.watch",
    "flights.unwatch",
    "booking.hold",
    "waitlist.join",
    "waitlist.leave",
    "waitlist.list",
    "booking.pay",
    "booking.cancel",
    "booking.change_seat",
    "booking.check_in",
    "booking.boarding_passes",
    "booking.get",
    "bookings.list",
    "orders.list",
    "history.list",
    "admin.flights.create",
    "admin.flights.cancel",
    "admin.flights.update",
    "admin.flights.stats",
    "admin.refunds.list",
    "admin.refunds.resolve",
    "rpc.discover",
];

/// A request's method with its decoded params. A params error is kept, not returned,
/// so that the dispatcher checks who is asking before it looks at the params.
#[derive(Debug)]
pub enum Call {
    Register(Result<Credentials, ApiError>),
    Login(Result<Credentials, ApiError>),
    Resume(Result<Resume, ApiError>),
    Logout,
    Airports,
    Search(Result<Search, ApiError>),
    FlightGet(Result<FlightRef, ApiError>),
    Subscribe(Result<Subscribe, ApiError>),
    Unsubscribe(Result<FlightRef, ApiError>),
    Watch(Result<Watch, ApiError>),
    Unwatch(Result<Unwatch, ApiError>),
    Hold(Result<Hold, ApiError>),
    Pay(Result<Pay, ApiError>),
    Cancel(Result<Cancel, ApiError>),
    ChangeSeat(Result<ChangeSeat, ApiError>),
    CheckIn(Result<CheckIn, ApiError>),
    BoardingPasses(Result<LocatorRef, ApiError>),
    BookingGet(Result<LocatorRef, ApiError>),
    BookingsList,
    OrdersList,
    HistoryList(Result<Limit, ApiError>),
    AdminCreateFlight(Result<CreateFlight, ApiError>),
    AdminCancelFlight(Result<CancelFlight, ApiError>),
    AdminUpdateFlight(Result<UpdateFlight, ApiError>),
    AdminStats,
    AdminRefunds,
    AdminResolveRefund(Result<ResolveRefund, ApiError>),
    Discover,
    WaitlistJoin(Result<WaitlistJoin, ApiError>),
    WaitlistLeave(Result<WaitlistRef, ApiError>),
    WaitlistList,
}

impl Call {
    /// Decodes `params` for `method`; a method not in [`METHODS`] is `method_not_found`.
    pub fn parse(method: &str, params: Value) -> Result<Call, ApiError> {
        let not_found = || ApiError::MethodNotFound(method.chars().take(64).collect());
        if !METHODS.contains(&method) {
            return Err(not_found());
        }
        let p = params;
        Ok(match method {
            "auth.register" => Call::Register(decode(p)),
            "auth.login" => Call::Login(decode(p)),
            "auth.resume" => Call::Resume(decode(p)),
            "auth.logout" => Call::Logout,
            "flights.airports" => Call::Airports,
            "flights.search" => Call::Search(decode(p)),
            "flights.get" => Call::FlightGet(decode(p)),
            "seats.subscribe" => Call::Subscribe(decode(p)),
            "seats.unsubscribe" => Call::Unsubscribe(decode(p)),
            "flights.watch" => Call::Watch(decode(p)),
            "flights.unwatch" => Call::Unwatch(decode(p)),
            "booking.hold" => Call::Hold(decode(p)),
            "booking.pay" => Call::Pay(decode(p).and_then(Pay::refuse_card_data)),
            "booking.cancel" => Call::Cancel(decode(p)),
            "booking.change_seat" => Call::ChangeSeat(decode(p)),
            "booking.check_in" => Call::CheckIn(decode(p)),
            "booking.boarding_passes" => Call::BoardingPasses(decode(p)),
            "booking.get" => Call::BookingGet(decode(p)),
            "bookings.list" => Call::BookingsList,
            "orders.list" => Call::OrdersList,
            "history.list" => Call::HistoryList(decode(p)),
            "admin.flights.create" => Call::AdminCreateFlight(decode(p)),
            "admin.flights.cancel" => Call::AdminCancelFlight(decode(p)),
            "admin.flights.update" => Call::AdminUpdateFlight(decode(p)),
            "admin.flights.stats" => Call::AdminStats,
            "admin.refunds.list" => Call::AdminRefunds,
            "admin.refunds.resolve" => Call::AdminResolveRefund(decode(p)),
            "rpc.discover" => Call::Discover,
            "waitlist.join" => Call::WaitlistJoin(decode(p)),
            "waitlist.leave" => Call::WaitlistLeave(decode(p)),
            "waitlist.list" => Call::WaitlistList,
            _ => return Err(not_found()),
        })
    }
}

/// Decodes a method's params, naming the offending field on failure.
pub fn decode<T: DeserializeOwned>(params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(|e| ApiError::InvalidParams(e.to_string()))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Credentials {
    pub username: String,
    pub password: String,
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

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChangeSeat {
    pub locator: String,
    pub from: String,
    pub to: String,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckIn {
    pub locator: String,
    /// Only these passengers' seats; every passenger when left out.
    pub seats: Option<Vec<String>>,
    #[schemars(length(min = 1, max = 64))]
    pub request_id: String,
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

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitlistRef {
    pub id: String,
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
}

impl RefundOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundOutcome::PaidElsewhere => "paid_elsewhere",
            RefundOutcome::Retry => "retry",
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
        for m in METHODS {
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
