//! What a use case can answer instead of a result ([`AppError`]), and its one
//! mapping to the wire's error ([`ApiError`], which owns codes, reasons, messages
//! and data).

use crate::domain::DomainError;
use crate::protocol::{results, ApiError};
use crate::store::{Memo, StoreError};

/// A use case's refusal or failure. The texts here are for logs; what a client reads
/// comes from the [`ApiError`] it maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("not logged in")]
    Unauthenticated,
    #[error("bad credentials")]
    BadCredentials,
    #[error("username taken")]
    UsernameTaken,
    #[error("weak password: {0}")]
    WeakPassword(String),
    #[error("invalid session token")]
    InvalidToken,
    #[error("forbidden")]
    Forbidden,
    /// What was not found (`flight`, `booking`, ...).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// Seat names the flight does not have, as given.
    #[error("invalid seats {0:?}")]
    InvalidSeat(Vec<String>),
    /// Seats taken (empty: not enough free seats in the cabin).
    #[error("seats unavailable {0:?}")]
    SeatUnavailable(Vec<String>),
    #[error("invalid state: {0}")]
    InvalidState(String),
    #[error("hold expired")]
    HoldExpired,
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    #[error("check-in closed")]
    CheckinClosed,
    #[error("passenger checked in")]
    CheckedIn,
    /// The customer must authenticate the payment with this client secret.
    #[error("payment action required")]
    PaymentActionRequired { client_secret: String },
    /// A waitlist join while seats are free to hold.
    #[error("seats available: {0}")]
    SeatsAvailable(String),
    /// A failure of the server (the store, a task); logged where it happened.
    #[error("internal error")]
    Internal,
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        use AppError as A;
        match e {
            A::InvalidParams(m) => ApiError::InvalidParams(m),
            A::Unauthenticated => ApiError::Unauthenticated,
            A::BadCredentials => ApiError::BadCredentials,
            A::UsernameTaken => ApiError::UsernameTaken,
            A::WeakPassword(m) => ApiError::WeakPassword(m),
            A::InvalidToken => ApiError::InvalidToken,
            A::Forbidden => ApiError::Forbidden,
            A::NotFound(what) => ApiError::NotFound(what),
            A::InvalidSeat(seats) => ApiError::InvalidSeat(seats),
            A::SeatUnavailable(seats) => ApiError::SeatUnavailable(seats),
            A::InvalidState(m) => ApiError::InvalidState(m),
            A::HoldExpired => ApiError::HoldExpired,
            A::PaymentDeclined(m) => ApiError::PaymentDeclined(m),
            A::PaymentFailed(m) => ApiError::PaymentFailed(m),
            A::CheckinClosed => ApiError::CheckinClosed,
            A::CheckedIn => ApiError::CheckedIn,
            A::PaymentActionRequired { client_secret } => {
                ApiError::PaymentActionRequired { client_secret }
            }
            A::SeatsAvailable(m) => ApiError::SeatsAvailable(m),
            A::Internal => ApiError::Internal,
        }
    }
}

impl AppError {
    /// The error a remembered answer held (see [`crate::protocol::results::replay`]):
    /// the wire error read back is the use case's error again. Errors a use case
    /// never answers read back as `Internal`.
    pub fn from_wire(e: ApiError) -> AppError {
        use ApiError as W;
        match e {
            W::InvalidParams(m) => AppError::InvalidParams(m),
            W::Unauthenticated => AppError::Unauthenticated,
            W::BadCredentials => AppError::BadCredentials,
            W::UsernameTaken => AppError::UsernameTaken,
            W::WeakPassword(m) => AppError::WeakPassword(m),
            W::InvalidToken => AppError::InvalidToken,
            W::Forbidden => AppError::Forbidden,
            W::NotFound(what) => AppError::NotFound(what),
            W::InvalidSeat(seats) => AppError::InvalidSeat(seats),
            W::SeatUnavailable(seats) => AppError::SeatUnavailable(seats),
            W::InvalidState(m) => AppError::InvalidState(m),
            W::HoldExpired => AppError::HoldExpired,
            W::PaymentDeclined(m) => AppError::PaymentDeclined(m),
            W::PaymentFailed(m) => AppError::PaymentFailed(m),
            W::CheckinClosed => AppError::CheckinClosed,
            W::CheckedIn => AppError::CheckedIn,
            W::PaymentActionRequired { client_secret } => {
                AppError::PaymentActionRequired { client_secret }
            }
            W::SeatsAvailable(m) => AppError::SeatsAvailable(m),
            W::Parse(_)
            | W::InvalidRequest(_)
            | W::MethodNotFound(_)
            | W::RateLimited
            | W::TooLarge(_)
            | W::Internal => AppError::Internal,
        }
    }
}

/// The memo of a refusal (see [`results::remember_err`]).
pub(super) fn remember_err(e: &AppError) -> Memo {
    Memo(results::remember_err(&ApiError::from(e.clone())))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        AppError::Internal
    }
}

impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => AppError::InvalidParams(m),
            DomainError::InvalidState(m) => AppError::InvalidState(m),
            DomainError::HoldExpired => AppError::HoldExpired,
            DomainError::CheckinClosed => AppError::CheckinClosed,
            DomainError::CheckedIn => AppError::CheckedIn,
            DomainError::SeatTaken(seat) => AppError::SeatUnavailable(vec![seat.to_string()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_error_reads_back_from_its_wire_error() {
        for e in [
            AppError::InvalidParams("x".into()),
            AppError::Unauthenticated,
            AppError::BadCredentials,
            AppError::UsernameTaken,
            AppError::WeakPassword("short".into()),
            AppError::InvalidToken,
            AppError::Forbidden,
            AppError::NotFound("booking"),
            AppError::InvalidSeat(vec!["99Z".into()]),
            AppError::SeatUnavailable(vec!["1A".into()]),
            AppError::InvalidState("booking is cancelled".into()),
            AppError::HoldExpired,
            AppError::PaymentDeclined("card declined".into()),
            AppError::PaymentFailed("gateway down".into()),
            AppError::CheckinClosed,
            AppError::CheckedIn,
            AppError::PaymentActionRequired {
                client_secret: "pi_1_secret_2".into(),
            },
            AppError::SeatsAvailable("hold them instead".into()),
            AppError::Internal,
        ] {
            assert_eq!(AppError::from_wire(ApiError::from(e.clone())), e);
        }
    }
}
