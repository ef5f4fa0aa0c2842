//! The built-in sandbox gateway: no network, Stripe's test payment method ids.
//! `pm_card_visa` (and the other plain `pm_card_<brand>` ids) succeed;
//! `pm_card_visa_chargeDeclined`, `pm_card_chargeCustomerFail` and any other id are declined.

use dashmap::DashMap;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{ChargeRequest, PaymentError, PaymentGateway, RefundRequest};

const APPROVED: &[&str] = &[
    "pm_card_visa",
    "pm_card_mastercard",
    "pm_card_amex",
    "pm_card_visa_debit",
    "pm_card_mastercard_debit",
];

#[derive(Default)]
pub struct Sandbox {
    /// idempotency key -> charge id
    charges: DashMap<String, String>,
}

fn reference(prefix: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{prefix}_sandbox_{}", hex::encode(&digest[..12]))
}

impl PaymentGateway for Sandbox {
    fn charge(&self, req: ChargeRequest) -> BoxFuture<'_, Result<String, PaymentError>> {
        Box::pin(async move {
            if !APPROVED.contains(&req.payment_method.as_str()) {
                return Err(PaymentError::Declined(
                    if req.payment_method.starts_with("pm_card_") {
                        "your card was declined".into()
                    } else {
                        format!("unknown payment method {:?}", req.payment_method)
                    },
                ));
            }
            let id = self
                .charges
                .entry(req.idempotency_key.clone())
                .or_insert_with(|| reference("ch", &req.idempotency_key))
                .clone();
            Ok(id)
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

    fn req(pm: &str, key: &str) -> ChargeRequest {
        ChargeRequest {
            amount: Money::cents(100).unwrap(),
            payment_method: pm.into(),
            locator: Locator::parse("ABCDEF").unwrap(),
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn test_methods_behave_like_stripe() {
        let g = Sandbox::default();
        assert!(g.charge(req("pm_card_visa", "k1")).await.is_ok());
        for pm in [
            "pm_card_visa_chargeDeclined",
            "pm_card_chargeCustomerFail",
            "tok_whatever",
        ] {
            assert!(
                matches!(
                    g.charge(req(pm, "k2")).await,
                    Err(PaymentError::Declined(_))
                ),
                "{pm}"
            );
        }
    }

    #[tokio::test]
    async fn same_key_same_charge() {
        let g = Sandbox::default();
        let a = g.charge(req("pm_card_visa", "k")).await.unwrap();
        let b = g.charge(req("pm_card_visa", "k")).await.unwrap();
        let c = g.charge(req("pm_card_visa", "other")).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
