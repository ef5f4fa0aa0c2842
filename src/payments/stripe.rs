//! Stripe's REST API (also spoken by localstripe): PaymentIntents created unconfirmed,
//! then confirmed; refunds through `/v1/refunds`. Every call has a bounded timeout and
//! an `Idempotency-Key` derived from our payment attempt. The secret key is never logged.

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

use super::{PaymentError, PaymentGateway, PaymentRequest, PaymentStatus, RefundRequest};

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

pub struct Stripe {
    base: String,
    secret_key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.base)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Stripe {
    pub fn new(base: &str, secret_key: String, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Stripe {
            base: base.trim_end_matches('/').to_owned(),
            secret_key,
            http,
        })
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        idempotency_key: Option<&str>,
    ) -> Result<Value, PaymentError> {
        let mut req = req
            .bearer_auth(&self.secret_key)
            .header("Stripe-Version", "2024-06-20");
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.map_err(|e| {
            PaymentError::Failed(if e.is_timeout() {
                "the payment gateway timed out".into()
            } else {
                "the payment gateway is unreachable".into()
            })
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|_| {
            PaymentError::Failed(format!(
                "the payment gateway answered {status} without JSON"
            ))
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("payment gateway error")
            .to_owned();
        if status == StatusCode::PAYMENT_REQUIRED || body["error"]["type"] == "card_error" {
            Err(PaymentError::Declined(message))
        } else if status.is_server_error() {
            Err(PaymentError::Failed(format!(
                "the payment gateway failed ({status})"
            )))
        } else {
            Err(PaymentError::Failed(format!(
                "the payment gateway refused the request: {message}"
            )))
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

fn status_of(pi: &Value) -> PaymentStatus {
    match pi["status"].as_str() {
        Some("succeeded") => PaymentStatus::Succeeded,
        Some("processing") | Some("requires_capture") => PaymentStatus::Pending,
        _ => PaymentStatus::NotCharged,
    }
}

impl PaymentGateway for Stripe {
    fn create(&self, req: PaymentRequest) -> BoxFuture<'_, Result<String, PaymentError>> {
        Box::pin(async move {
            let form = [
                ("amount", req.amount.amount().to_string()),
                ("currency", "eur".to_owned()),
                ("payment_method", req.payment_method.clone()),
                ("payment_method_types[]", "card".to_owned()),
                ("metadata[locator]", req.locator.to_string()),
                ("metadata[attempt]", req.attempt_id.clone()),
            ];
            let key = format!("{}-create", req.attempt_id);
            let pi = self
                .call(
                    self.http.post(self.url("/v1/payment_intents")).form(&form),
                    Some(&key),
                )
                .await?;
            pi["id"].as_str().map(str::to_owned).ok_or_else(|| {
                PaymentError::Failed("the payment gateway returned no payment id".into())
            })
        })
    }

    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let key = format!("{attempt_id}-confirm");
            let url = self.url(&format!("/v1/payment_intents/{payment_ref}/confirm"));
            let pi = self.call(self.http.post(url), Some(&key)).await?;
            match status_of(&pi) {
                PaymentStatus::Succeeded => Ok(()),
                PaymentStatus::Pending => Err(PaymentError::Failed(
                    "the payment is still processing".into(),
                )),
                PaymentStatus::NotCharged => Err(PaymentError::Declined(
                    pi["last_payment_error"]["message"]
                        .as_str()
                        .unwrap_or("your card was declined")
                        .to_owned(),
                )),
            }
        })
    }

    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>> {
        Box::pin(async move {
            let url = self.url(&format!("/v1/payment_intents/{payment_ref}"));
            match self.call(self.http.get(url), None).await {
                Ok(pi) => Ok(status_of(&pi)),
                Err(PaymentError::Failed(m)) if m.contains("No such") || m.contains("404") => {
                    Ok(PaymentStatus::NotCharged)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<String, PaymentError>> {
        Box::pin(async move {
            let form = [
                ("payment_intent", req.payment_ref.clone()),
                ("amount", req.amount.amount().to_string()),
            ];
            let r = self
                .call(
                    self.http.post(self.url("/v1/refunds")).form(&form),
                    Some(&req.idempotency_key),
                )
                .await?;
            r["id"].as_str().map(str::to_owned).ok_or_else(|| {
                PaymentError::Failed("the payment gateway returned no refund id".into())
            })
        })
    }

    fn name(&self) -> &'static str {
        "stripe"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payment_intent_states_map_to_outcomes() {
        assert_eq!(
            status_of(&json!({"status":"succeeded"})),
            PaymentStatus::Succeeded
        );
        assert_eq!(
            status_of(&json!({"status":"processing"})),
            PaymentStatus::Pending
        );
        assert_eq!(
            status_of(&json!({"status":"requires_payment_method"})),
            PaymentStatus::NotCharged
        );
        assert_eq!(
            status_of(&json!({"status":"canceled"})),
            PaymentStatus::NotCharged
        );
        assert_eq!(status_of(&json!({})), PaymentStatus::NotCharged);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Stripe::new(
            "http://127.0.0.1:1",
            "sk_test_secret123".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("secret123"));
    }
}
