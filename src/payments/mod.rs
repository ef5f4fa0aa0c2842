//! Payment gateways behind one trait. The server never sees or stores card data:
//! clients name a payment method (Stripe-style ids), the gateway returns references.

pub mod sandbox;

use futures::future::BoxFuture;

use crate::domain::{Locator, Money};

pub use sandbox::Sandbox;

#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub amount: Money,
    pub payment_method: String,
    pub locator: Locator,
    /// Same key, same charge: a retried call never charges twice.
    pub idempotency_key: String,
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub charge_id: String,
    pub amount: Money,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The payment method was refused; nothing was charged.
    #[error("{0}")]
    Declined(String),
    /// The gateway could not be reached or failed.
    #[error("{0}")]
    Failed(String),
}

pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges the amount; returns the gateway's charge reference.
    fn charge(&self, req: ChargeRequest) -> BoxFuture<'_, Result<String, PaymentError>>;
    /// Refunds part or all of a charge; returns the refund reference.
    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<String, PaymentError>>;
    fn name(&self) -> &'static str;
}
