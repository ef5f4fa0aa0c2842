//! The built-in sandbox gateway: no network, Stripe's test payment method ids.
//! `pm_card_visa` (and the other plain `pm_card_<brand>` ids) succeed;
//! `pm_card_visa_chargeDeclined`, `pm_card_chargeCustomerFail` and any other id are
//! declined. Its ledger lives in memory, bounded: it keeps the newest [`MAX_PAYMENTS`]
//! payments of the last [`RETAIN`] (a sandbox payment settles at once, so an older one
//! is never asked about again); a payment it does not know (pruned, or from before a
//! restart) counts as not charged (nothing real ever was). A payment reference it
//! could not have issued (another gateway's, from a data dir used with Stripe) gets
//! no definite answer to a status, cancel, refund or refund list: that gateway may
//! have charged it or be making a refund of it.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{
    GatewayRefund, MadeRefund, PaymentError, PaymentGateway, PaymentRequest, PaymentStatus,
    RefundRequest,
};

const APPROVED: &[&str] = &[
    "pm_card_visa",
    "pm_card_mastercard",
    "pm_card_amex",
    "pm_card_visa_debit",
    "pm_card_mastercard_debit",
];

/// How many payments the ledger keeps at most.
pub const MAX_PAYMENTS: usize = 10_000;
/// How long the ledger keeps a payment at most.
pub const RETAIN: Duration = Duration::from_secs(3600);

pub struct Sandbox {
    ledger: Mutex<Ledger>,
    max: usize,
    retain: Duration,
}

#[derive(Default)]
struct Ledger {
    /// payment ref -> (payment method, charged)
    payments: HashMap<String, (String, bool)>,
    /// payment refs, oldest first, with their creation time
    order: VecDeque<(Instant, String)>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::with_limits(MAX_PAYMENTS, RETAIN)
    }
}

impl Sandbox {
    /// A sandbox whose ledger keeps at most `max` payments, none older than `retain`.
    pub fn with_limits(max: usize, retain: Duration) -> Self {
        Sandbox {
            ledger: Mutex::new(Ledger::default()),
            max,
            retain,
        }
    }

    /// How many payments the ledger holds.
    pub fn len(&self) -> usize {
        self.ledger.lock().payments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn charged(&self, payment_ref: &str) -> Option<bool> {
        self.ledger.lock().payments.get(payment_ref).map(|p| p.1)
    }
}

impl Ledger {
    fn insert(&mut self, id: String, method: String, max: usize, retain: Duration) {
        if self.payments.contains_key(&id) {
            return;
        }
        let now = Instant::now();
        while let Some((at, old)) = self.order.front() {
            if self.order.len() < max && now.duration_since(*at) < retain {
                break;
            }
            self.payments.remove(old);
            self.order.pop_front();
        }
        self.payments.insert(id.clone(), (method, false));
        self.order.push_back((now, id));
    }
}

/// How every payment reference the sandbox issues begins (the first release's
/// charges were `ch_sandbox_…`).
const PAYMENT_PREFIXES: [&str; 2] = ["pi_sandbox_", "ch_sandbox_"];

/// A payment another gateway made (the data dir was used with `--payments stripe`):
/// the sandbox cannot say whether it was charged, so it says nothing definite, and
/// the payment stays open until Jetway runs with that gateway again.
fn foreign(payment_ref: &str) -> Option<PaymentError> {
    (!PAYMENT_PREFIXES.iter().any(|p| payment_ref.starts_with(p))).then(|| {
        PaymentError::Failed(format!(
            "payment {payment_ref} was not made by the sandbox gateway: this data dir was \
             used with another one; run Jetway with that gateway (`--payments stripe`) to \
             settle it"
        ))
    })
}

fn reference(prefix: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{prefix}_sandbox_{}", hex::encode(&digest[..12]))
}

impl PaymentGateway for Sandbox {
    fn create(&self, req: PaymentRequest) -> BoxFuture<'_, Result<String, PaymentError>> {
        Box::pin(async move {
            if !req.payment_method.starts_with("pm_") {
                return Err(PaymentError::Declined(format!(
                    "unknown payment method {:?}",
                    req.payment_method
                )));
            }
            let id = reference("pi", &req.attempt_id);
            self.ledger
                .lock()
                .insert(id.clone(), req.payment_method, self.max, self.retain);
            Ok(id)
        })
    }

    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        _attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let mut ledger = self.ledger.lock();
            let p = ledger
                .payments
                .get_mut(payment_ref)
                .ok_or_else(|| PaymentError::Failed(format!("no such payment {payment_ref}")))?;
            if !APPROVED.contains(&p.0.as_str()) {
                return Err(PaymentError::Declined("your card was declined".into()));
            }
            p.1 = true;
            Ok(())
        })
    }

    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>> {
        Box::pin(async move {
            if let Some(e) = foreign(payment_ref) {
                return Err(e);
            }
            Ok(match self.charged(payment_ref) {
                Some(true) => PaymentStatus::Succeeded,
                _ => PaymentStatus::NotCharged,
            })
        })
    }

    fn cancel<'a>(
        &'a self,
        payment_ref: &'a str,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>> {
        Box::pin(async move {
            if let Some(e) = foreign(payment_ref) {
                return Err(e);
            }
            let mut ledger = self.ledger.lock();
            if ledger.payments.get(payment_ref).is_some_and(|p| p.1) {
                return Ok(PaymentStatus::Succeeded);
            }
            ledger.payments.remove(payment_ref);
            Ok(PaymentStatus::NotCharged)
        })
    }

    /// None of its own (a sandbox refund is made at once and never fails); of another
    /// gateway's payment, nothing definite.
    fn refunds_of<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayRefund>, PaymentError>> {
        Box::pin(async move {
            match foreign(payment_ref) {
                Some(e) => Err(e),
                None => Ok(Vec::new()),
            }
        })
    }

    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<MadeRefund, PaymentError>> {
        Box::pin(async move {
            // another gateway may be making a refund under this key: no definite no
            if let Some(e) = foreign(&req.payment_ref) {
                return Err(e);
            }
            req.check_send_by()?;
            Ok(MadeRefund {
                id: reference("re", &req.idempotency_key),
                pending: false,
            })
        })
    }

    fn name(&self) -> &'static str {
        "sandbox"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Locator, Money};

    fn req(pm: &str, key: &str) -> PaymentRequest {
        PaymentRequest {
            amount: Money::cents(100).unwrap(),
            payment_method: pm.into(),
            locator: Locator::parse("ABCDEF").unwrap(),
            attempt_id: key.into(),
        }
    }

    async fn pay(g: &Sandbox, pm: &str, key: &str) -> Result<String, PaymentError> {
        let r = g.create(req(pm, key)).await?;
        g.confirm(&r, key).await?;
        Ok(r)
    }

    #[tokio::test]
    async fn test_methods_behave_like_stripe() {
        let g = Sandbox::default();
        let r = pay(&g, "pm_card_visa", "k1").await.unwrap();
        assert_eq!(g.status(&r).await.unwrap(), PaymentStatus::Succeeded);
        for pm in [
            "pm_card_visa_chargeDeclined",
            "pm_card_chargeCustomerFail",
            "tok_whatever",
        ] {
            assert!(
                matches!(pay(&g, pm, pm).await, Err(PaymentError::Declined(_))),
                "{pm}"
            );
        }
        let unconfirmed = g.create(req("pm_card_visa", "k3")).await.unwrap();
        assert_eq!(
            g.status(&unconfirmed).await.unwrap(),
            PaymentStatus::NotCharged
        );
        assert_eq!(
            g.status("pi_sandbox_unknown").await.unwrap(),
            PaymentStatus::NotCharged
        );
    }

    /// A payment another gateway made (found by a money probe: a Stripe data dir
    /// restarted without `--payments stripe` closed an uncertain charge as not charged,
    /// and the charge was never refunded): nothing definite about it.
    #[tokio::test]
    async fn says_nothing_of_payments_another_gateway_made() {
        let g = Sandbox::default();
        for stripe in ["pi_3Pq9live", "pi_fake_1"] {
            assert!(
                matches!(g.status(stripe).await, Err(PaymentError::Failed(_))),
                "{stripe}"
            );
            assert!(
                matches!(g.cancel(stripe, "k").await, Err(PaymentError::Failed(_))),
                "{stripe}"
            );
            // nor of a refund that gateway may be making (an admin's paid_elsewhere
            // must not pass for want of a list)
            assert!(
                matches!(g.refunds_of(stripe).await, Err(PaymentError::Failed(_))),
                "{stripe}"
            );
        }
    }

    #[tokio::test]
    async fn refunds_only_payments_it_issued() {
        let g = Sandbox::default();
        let paid = pay(&g, "pm_card_visa", "k").await.unwrap();
        let refund = |payment_ref: &str| RefundRequest {
            payment_ref: payment_ref.into(),
            amount: Money::cents(100).unwrap(),
            idempotency_key: "rf-1".into(),
            look_up_first: false,
            earlier_keys: Vec::new(),
            send_by: None,
        };
        let made = g.refund(refund(&paid)).await.unwrap();
        assert_eq!(made, g.refund(refund(&paid)).await.unwrap(), "replayed");
        let first_release = "ch_sandbox_0123456789abcdef01234567";
        assert!(g.refund(refund(first_release)).await.is_ok());
        assert!(matches!(
            g.refund(refund("pi_3Pq9live")).await,
            Err(PaymentError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn same_attempt_same_payment() {
        let g = Sandbox::default();
        let a = g.create(req("pm_card_visa", "k")).await.unwrap();
        let b = g.create(req("pm_card_visa", "k")).await.unwrap();
        let c = g.create(req("pm_card_visa", "other")).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn the_ledger_keeps_only_the_newest_payments() {
        let g = Sandbox::with_limits(100, RETAIN);
        let mut refs = Vec::new();
        for i in 0..10_000 {
            refs.push(pay(&g, "pm_card_visa", &format!("k{i}")).await.unwrap());
            assert!(g.len() <= 100);
        }
        assert_eq!(g.len(), 100);
        assert_eq!(
            g.status(&refs[9_999]).await.unwrap(),
            PaymentStatus::Succeeded
        );
        assert_eq!(
            g.status(&refs[0]).await.unwrap(),
            PaymentStatus::NotCharged,
            "pruned"
        );

        let g = Sandbox::with_limits(100, Duration::ZERO);
        for i in 0..10 {
            pay(&g, "pm_card_visa", &format!("k{i}")).await.unwrap();
        }
        assert_eq!(g.len(), 1, "older than the retention: pruned");
    }
}
