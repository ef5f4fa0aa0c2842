//! Payment gateways behind one trait. The server never sees or stores card data:
//! clients name a payment method (Stripe-style ids), the gateway returns references.
//!
//! A payment is two calls, so that a crash can never leave a charge unaccounted for:
//! [`PaymentGateway::create`] makes an unconfirmed payment (charges nothing) whose
//! reference is written to disk before [`PaymentGateway::confirm`] charges it; after a
//! crash, [`PaymentGateway::status`] tells what became of it.

pub mod sandbox;
pub mod stripe;
pub mod webhook;

use futures::future::BoxFuture;

use crate::domain::{Locator, Money};

pub use sandbox::Sandbox;
pub use stripe::Stripe;

#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub amount: Money,
    pub payment_method: String,
    pub locator: Locator,
    /// Our payment attempt's id: the gateway's idempotency key and metadata.
    pub attempt_id: String,
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub payment_ref: String,
    pub amount: Money,
    /// Same key, same refund: a retried call never refunds twice.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The payment method was refused; nothing was charged.
    #[error("{0}")]
    Declined(String),
    /// The gateway could not be reached, timed out or failed; the outcome of a
    /// confirm that failed this way is unknown until [`PaymentGateway::status`] says.
    #[error("{0}")]
    Failed(String),
}

/// What became of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Charged.
    Succeeded,
    /// Not charged, and never will be (declined, cancelled, or never confirmed).
    NotCharged,
    /// Still being processed by the gateway.
    Pending,
}

pub trait PaymentGateway: Send + Sync + 'static {
    /// Creates an unconfirmed payment; returns its reference. Charges nothing.
    fn create(&self, req: PaymentRequest) -> BoxFuture<'_, Result<String, PaymentError>>;
    /// Charges a created payment.
    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>>;
    /// Refunds part or all of a charged payment; returns the refund reference.
    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<String, PaymentError>>;
    fn name(&self) -> &'static str;
}
