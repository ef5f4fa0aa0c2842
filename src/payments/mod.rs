//! Payment gateways behind one trait. The server never sees or stores card data:
//! clients name a payment method (Stripe-style ids), the gateway returns references.
//!
//! A payment is two calls, so that a crash can never leave a charge unaccounted for:
//! [`PaymentGateway::create`] makes an unconfirmed payment (charges nothing) whose
//! reference is written to disk before [`PaymentGateway::confirm`] charges it; after a
//! crash, [`PaymentGateway::status`] tells what became of it.
//!
//! An uncertain outcome stays uncertain: a payment is taken as not charged only when
//! the gateway says it is cancelled (or declined), never because it looks unconfirmed
//! (a confirm may still be processing). [`PaymentGateway::cancel`] settles the
//! question: either the cancel succeeds (never charged) or the gateway says the
//! payment succeeded.

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
    /// Our payment attempt's id (globally unique): the base of the gateway's
    /// idempotency keys, and metadata.
    pub attempt_id: String,
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub payment_ref: String,
    pub amount: Money,
    /// Same key, same refund: a retried call never refunds twice.
    pub idempotency_key: String,
    /// Look for a refund made earlier under this key before asking for one: the
    /// gateway may have forgotten the key (Stripe keeps keys 24 hours).
    pub look_up_first: bool,
    /// Keys it was asked under before (an admin's retry under a fresh key): a refund
    /// made under one of them is this refund, looked up before asking again.
    pub earlier_keys: Vec<String>,
    /// The latest wall-clock time (ms) a request that may make the refund is sent at
    /// (the try's deadline less one gateway call: a request handed over later could go
    /// out past the deadline the wait before `paid_elsewhere` counts on); none: no
    /// bound. Reads (look-ups) are not bounded by it.
    pub send_by: Option<crate::domain::Millis>,
}

impl RefundRequest {
    /// Refuses to send a request that may make the refund past [`Self::send_by`]:
    /// nothing is asked then (a [`PaymentError::Failed`], as for a try cut off).
    pub fn check_send_by(&self) -> Result<(), PaymentError> {
        match self.send_by {
            Some(t) if crate::domain::now_ms() > t => Err(PaymentError::Failed(
                "the refund's try ran out of time before its request was sent".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// A refund the gateway made, as its answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeRefund {
    pub id: String,
    /// Accepted but not settled yet (Stripe's `pending`): it may still fail, days
    /// later, and is watched until it settles.
    pub pending: bool,
}

/// A refund the gateway holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefund {
    pub id: String,
    /// The payment it refunds.
    pub payment_ref: String,
    pub amount: Money,
    /// The key it was asked under, if it was asked with our refund metadata (an
    /// older release sent none).
    pub key: Option<String>,
    /// Why no money went back, for a refund the gateway failed or cancelled (Stripe
    /// can fail one days after it answered it `pending`, or even `succeeded`).
    pub failure: Option<String>,
    /// Not settled yet either way (Stripe's `pending`, or `requires_action`).
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The payment method was refused; nothing was charged.
    #[error("{0}")]
    Declined(String),
    /// The gateway could not be reached, timed out or failed, or answered in a way
    /// that says nothing definite (a 5xx, a rate limit, a key still in use by an
    /// earlier request that may yet act); the outcome of a confirm that failed this
    /// way is unknown until [`PaymentGateway::status`] says.
    #[error("{0}")]
    Failed(String),
    /// The gateway acted on the request and answered that it did not do it, and why:
    /// a refund it answered `failed` or `canceled`, a card error. It keeps that answer
    /// under the key: any request under it, an earlier one delayed on its way
    /// included, gets the same answer (until it forgets the key); nothing under that
    /// key is still in the making.
    #[error("{0}")]
    Refused(String),
    /// The gateway turned the request away before acting on it (a 400 or 404 once it
    /// looked at the key), and keeps nothing under the key for it: this request did
    /// nothing, but one sent earlier under the same key and delayed on its way may
    /// still act when it arrives (Stripe saves a result only once an endpoint began
    /// executing). Its answer may also depend on the payment's state at that moment.
    #[error("{0}")]
    Rejected(String),
    /// The customer must act (3-D Secure) before the payment can complete; nothing is
    /// charged yet. Holds the client secret a front end completes it with (Stripe.js).
    #[error("the customer must authenticate the payment")]
    ActionRequired(String),
}

/// What became of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Charged.
    Succeeded,
    /// Not charged, and never will be (cancelled).
    NotCharged,
    /// Not final: unconfirmed, being processed, awaiting a new payment method or
    /// capture. May still be charged; only a successful [`PaymentGateway::cancel`]
    /// rules that out.
    Pending,
    /// Not final: waiting for the customer to authenticate (3-D Secure). Like
    /// [`PaymentStatus::Pending`], may still be charged until cancelled.
    ActionRequired,
}

impl PaymentStatus {
    /// May still change (only a cancel settles it as not charged).
    pub fn is_final(self) -> bool {
        matches!(self, PaymentStatus::Succeeded | PaymentStatus::NotCharged)
    }
}

pub trait PaymentGateway: Send + Sync + 'static {
    /// Creates an unconfirmed payment; returns its reference. Charges nothing.
    fn create(&self, req: PaymentRequest) -> BoxFuture<'_, Result<String, PaymentError>>;
    /// Charges a created payment; [`PaymentError::ActionRequired`] when the customer
    /// must authenticate first.
    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>>;
    /// Cancels a payment that is not final, so that it can never be charged; with
    /// `key` as idempotency key. `Succeeded` if the gateway refused because it is
    /// charged already, `NotCharged` once cancelled; an error leaves it uncertain.
    fn cancel<'a>(
        &'a self,
        payment_ref: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>>;
    /// Refunds part or all of a charged payment; returns the refund made.
    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<MadeRefund, PaymentError>>;
    /// Every refund of a payment made and not failed; none for a gateway that keeps
    /// no such list.
    fn refunds_of<'a>(
        &'a self,
        _payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayRefund>, PaymentError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// A refund as the gateway holds it now, by its reference (not the answer cached
    /// under an idempotency key); `None` if the gateway does not know it, or keeps no
    /// refunds that can change after they are answered.
    fn refund_now<'a>(
        &'a self,
        _refund_ref: &'a str,
    ) -> BoxFuture<'a, Result<Option<GatewayRefund>, PaymentError>> {
        Box::pin(async { Ok(None) })
    }
    fn name(&self) -> &'static str;
}
