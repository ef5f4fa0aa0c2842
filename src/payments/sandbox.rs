//! The built-in sandbox gateway: no network, Stripe's test payment method ids.
//! `pm_card_visa` (and the other plain `pm_card_<brand>` ids) succeed;
//! `pm_card_visa_chargeDeclined`, `pm_card_chargeCustomerFail` and any other id are
//! declined. Its ledger lives in memory: after a restart every earlier payment it
//! does not know counts as not charged (nothing real ever was).

use dashmap::DashMap;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{PaymentError, PaymentGateway, PaymentRequest, PaymentStatus, RefundRequest};

const APPROVED: &[&str] = &[
    "pm_card_visa",
    "pm_card_mastercard",
    "pm_card_amex",
    "pm_card_visa_debit",
    "pm_card_mastercard_debit",
];

#[derive(Default)]
pub struct Sandbox {
    /// payment ref -> (payment method, charged)
    payments: DashMap<String, (String, bool)>,
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
            self.payments
                .entry(id.clone())
                .or_insert((req.payment_method, false));
            Ok(id)
        })
    }

    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        _attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let mut p = self
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
            Ok(match self.payments.get(payment_ref) {
                Some(p) if p.1 => PaymentStatus::Succeeded,
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
            if self.payments.get(payment_ref).is_some_and(|p| p.1) {
                return Ok(PaymentStatus::Succeeded);
            }
            self.payments.remove(payment_ref);
            Ok(PaymentStatus::NotCharged)
        })
    }

    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<String, PaymentError>> {
        Box::pin(async move { Ok(reference("re", &req.idempotency_key)) })
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
            g.status("pi_unknown").await.unwrap(),
            PaymentStatus::NotCharged
        );
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
}
