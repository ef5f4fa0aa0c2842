//! Every error a client can get, and its one mapping to a JSON-RPC error object.

use serde_json::{json, Value};

use crate::domain::DomainError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("log in first")]
    Unauthenticated,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("that username is taken")]
    UsernameTaken,
    #[error("{0}")]
    WeakPassword(String),
    #[error("the session token is invalid, expired or logged out")]
    InvalidToken,
    #[error("not allowed")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no such seat on this flight: {}", .0.join(", "))]
    InvalidSeat(Vec<String>),
    #[error("seats not available: {}", .0.join(", "))]
    SeatUnavailable(Vec<String>),
    #[error("{0}")]
    InvalidState(String),
    #[error("the hold has expired")]
    HoldExpired,
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    #[error("check-in is not open for this flight now")]
    CheckinClosed,
    #[error("the passenger is checked in; the seat can no longer be changed")]
    CheckedIn,
    /// The customer must authenticate the payment (3-D Secure) with this client
    /// secret, then pay again with a new request id.
    #[error("the payment needs the customer's authentication (3-D Secure)")]
    PaymentActionRequired { client_secret: String },
    #[error("{0}")]
    SeatsAvailable(String),
    #[error("too many requests, slow down")]
    RateLimited,
    #[error("frame too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The stable machine-readable `error.data.reason`.
    pub fn reason(&self) -> &'static str {
        use ApiError::*;
        match self {
            Parse(_) => "parse_error",
            InvalidRequest(_) => "invalid_request",
            MethodNotFound(_) => "method_not_found",
            InvalidParams(_) => "invalid_params",
            Unauthenticated => "unauthenticated",
            BadCredentials => "bad_credentials",
            UsernameTaken => "username_taken",
            WeakPassword(_) => "weak_password",
            InvalidToken => "invalid_token",
            Forbidden => "forbidden",
            NotFound(_) => "not_found",
            InvalidSeat(_) => "invalid_seat",
            SeatUnavailable(_) => "seat_unavailable",
            InvalidState(_) => "invalid_state",
            HoldExpired => "hold_expired",
            PaymentDeclined(_) => "payment_declined",
            PaymentFailed(_) => "payment_failed",
            CheckinClosed => "checkin_closed",
            CheckedIn => "checked_in",
            PaymentActionRequired { .. } => "payment_action_required",
            SeatsAvailable(_) => "seats_available",
            RateLimited => "rate_limited",
            TooLarge(_) => "too_large",
            Internal => "internal",
        }
    }

    /// Every `error.data.reason` a client can get, in the order of [`ApiError::examples`].
    pub const REASONS: &'static [&'static str] = &[
        "parse_error",
        "invalid_request",
        "method_not_found",
        "invalid_params",
        "unauthenticated",
        "bad_credentials",
        "username_taken",
        "weak_password",
        "invalid_token",
        "forbidden",
        "not_found",
        "invalid_seat",
        "seat_unavailable",
        "invalid_state",
        "hold_expired",
        "payment_declined",
        "payment_failed",
        "checkin_closed",
        "checked_in",
        "payment_action_required",
        "seats_available",
        "rate_limited",
        "too_large",
        "internal",
    ];

    /// One error of every variant (the contract documents list them from here).
    pub fn examples() -> Vec<ApiError> {
        use ApiError::*;
        let all = vec![
            Parse(String::new()),
            InvalidRequest(String::new()),
            MethodNotFound(String::new()),
            InvalidParams(String::new()),
            Unauthenticated,
            BadCredentials,
            UsernameTaken,
            WeakPassword(String::new()),
            InvalidToken,
            Forbidden,
            NotFound("flight"),
            InvalidSeat(Vec::new()),
            SeatUnavailable(Vec::new()),
            InvalidState(String::new()),
            HoldExpired,
            PaymentDeclined(String::new()),
            PaymentFailed(String::new()),
            CheckinClosed,
            CheckedIn,
            PaymentActionRequired {
                client_secret: String::new(),
            },
            SeatsAvailable(String::new()),
            RateLimited,
            TooLarge(0),
            Internal,
        ];
        // a new variant fails to compile here until it is listed above
        for e in &all {
            match e {
                Parse(_)
                | InvalidRequest(_)
                | MethodNotFound(_)
                | InvalidParams(_)
                | Unauthenticated
                | BadCredentials
                | UsernameTaken
                | WeakPassword(_)
                | InvalidToken
                | Forbidden
                | NotFound(_)
                | InvalidSeat(_)
                | SeatUnavailable(_)
                | InvalidState(_)
                | HoldExpired
                | PaymentDeclined(_)
                | PaymentFailed(_)
                | CheckinClosed
                | CheckedIn
                | PaymentActionRequired { .. }
                | SeatsAvailable(_)
                | RateLimited
                | TooLarge(_)
                | Internal => {}
            }
        }
        all
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        use ApiError::*;
        match self {
            Parse(_) => -32700,
            InvalidRequest(_) | TooLarge(_) => -32600,
            MethodNotFound(_) => -32601,
            InvalidParams(_) => -32602,
            Internal => -32603,
            Unauthenticated => -32001,
            BadCredentials => -32002,
            UsernameTaken => -32003,
            WeakPassword(_) => -32004,
            InvalidToken => -32005,
            Forbidden => -32006,
            NotFound(_) => -32007,
            InvalidSeat(_) => -32008,
            SeatUnavailable(_) => -32009,
            InvalidState(_) => -32010,
            HoldExpired => -32011,
            PaymentDeclined(_) => -32012,
            PaymentFailed(_) => -32013,
            CheckinClosed => -32014,
            CheckedIn => -32015,
            PaymentActionRequired { .. } => -32020,
            SeatsAvailable(_) => -32016,
            RateLimited => -32029,
        }
    }

    /// The JSON-RPC `error` object.
    pub fn to_json(&self) -> Value {
        let mut data = json!({ "reason": self.reason() });
        match self {
            ApiError::SeatUnavailable(seats) | ApiError::InvalidSeat(seats) => {
                data["seats"] = json!(seats);
            }
            ApiError::TooLarge(limit) => data["limit"] = json!(limit),
            ApiError::PaymentActionRequired { client_secret } => {
                data["client_secret"] = json!(client_secret);
            }
            _ => {}
        }
        json!({ "code": self.code(), "message": self.to_string(), "data": data })
    }

    /// Rebuilds an error from its `error` object (stored idempotent replies).
    pub fn from_json(v: &Value) -> Option<ApiError> {
        let msg = v.get("message")?.as_str()?.to_owned();
        let data = v.get("data")?;
        let seats = || -> Vec<String> {
            data.get("seats")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default()
        };
        let strip = |prefix: &str| msg.strip_prefix(prefix).unwrap_or(&msg).to_owned();
        Some(match data.get("reason")?.as_str()? {
            "payment_declined" => ApiError::PaymentDeclined(strip("payment declined: ")),
            "payment_failed" => ApiError::PaymentFailed(strip("payment failed: ")),
            "payment_action_required" => ApiError::PaymentActionRequired {
                client_secret: data.get("client_secret")?.as_str()?.to_owned(),
            },
            "invalid_state" => ApiError::InvalidState(msg),
            "seats_available" => ApiError::SeatsAvailable(msg),
            "hold_expired" => ApiError::HoldExpired,
            "checkin_closed" => ApiError::CheckinClosed,
            "checked_in" => ApiError::CheckedIn,
            "seat_unavailable" => ApiError::SeatUnavailable(seats()),
            "invalid_seat" => ApiError::InvalidSeat(seats()),
            "not_found" => ApiError::NotFound("booking"),
            "invalid_params" => ApiError::InvalidParams(strip("invalid params: ")),
            _ => ApiError::Internal,
        })
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => ApiError::InvalidParams(m),
            DomainError::InvalidState(m) => ApiError::InvalidState(m),
            DomainError::HoldExpired => ApiError::HoldExpired,
            DomainError::CheckinClosed => ApiError::CheckinClosed,
            DomainError::CheckedIn => ApiError::CheckedIn,
            DomainError::SeatTaken(seat) => ApiError::SeatUnavailable(vec![seat.to_string()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_reason_and_code() {
        let e = ApiError::SeatUnavailable(vec!["12A".into()]);
        let j = e.to_json();
        assert_eq!(j["code"], -32009);
        assert_eq!(j["data"]["reason"], "seat_unavailable");
        assert_eq!(j["data"]["seats"], json!(["12A"]));
        assert_eq!(ApiError::MethodNotFound("x".into()).code(), -32601);
        assert_eq!(ApiError::Parse("x".into()).code(), -32700);
        assert_eq!(
            ApiError::InvalidParams("x".into()).to_json()["data"]["reason"],
            "invalid_params"
        );
    }

    #[test]
    fn reasons_lists_every_variant_once() {
        let reasons: Vec<&str> = ApiError::examples().iter().map(ApiError::reason).collect();
        assert_eq!(reasons, ApiError::REASONS);
    }

    #[test]
    fn stored_errors_round_trip() {
        for e in [
            ApiError::PaymentDeclined("card declined".into()),
            ApiError::PaymentFailed("gateway down".into()),
            ApiError::PaymentActionRequired {
                client_secret: "pi_1_secret_2".into(),
            },
            ApiError::HoldExpired,
            ApiError::CheckinClosed,
            ApiError::CheckedIn,
            ApiError::SeatUnavailable(vec!["1A".into(), "1C".into()]),
            ApiError::InvalidState("booking is cancelled".into()),
            ApiError::SeatsAvailable("hold them instead".into()),
        ] {
            assert_eq!(ApiError::from_json(&e.to_json()), Some(e));
        }
    }
}
