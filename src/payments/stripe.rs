//! Stripe's REST API (also spoken by localstripe): PaymentIntents created unconfirmed,
//! then confirmed (or cancelled); refunds through `/v1/refunds`. Every call has a bounded
//! timeout and an `Idempotency-Key` built from our globally unique attempt or refund id
//! (see docs/payments.md). The secret key is never logged.

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

use super::{
    GatewayRefund, MadeRefund, PaymentError, PaymentGateway, PaymentRequest, PaymentStatus,
    RefundRequest,
};
use crate::domain::Money;

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
        if secret_key.trim().is_empty() {
            return Err("STRIPE_SECRET_KEY is empty".into());
        }
        check_base(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            // Stripe never redirects; a redirect (a misconfigured base) would turn a
            // POST into a GET elsewhere, with the secret key
            .redirect(reqwest::redirect::Policy::none())
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
        match self.call_raw(req, idempotency_key).await? {
            Ok(body) => Ok(body),
            Err((status, body)) => Err(refusal(status, &body)),
        }
    }

    /// The answer: a success body, or a refusal's status and body.
    async fn call_raw(
        &self,
        req: reqwest::RequestBuilder,
        idempotency_key: Option<&str>,
    ) -> Result<Result<Value, (StatusCode, Value)>, PaymentError> {
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
        Ok(match status.is_success() {
            true => Ok(body),
            false => Err((status, body)),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Every refund of `payment_ref`, failed ones included, all pages.
    async fn list_refunds(&self, payment_ref: &str) -> Result<Vec<Value>, PaymentError> {
        all_pages(|after| {
            let mut query = vec![
                ("payment_intent", payment_ref.to_owned()),
                ("limit", "100".to_owned()),
            ];
            query.extend(after.map(|a| ("starting_after", a)));
            self.call(self.http.get(self.url("/v1/refunds")).query(&query), None)
        })
        .await
    }

    /// The refund made earlier for `req` under its key or an earlier one (each is in
    /// its refund's metadata), if any and not failed: Stripe forgets idempotency keys
    /// after 24 hours, metadata it keeps. A refund that failed under `req`'s own key is
    /// that failure again, not a reason to ask anew (which, once Stripe has forgotten
    /// the key, would make one more failed refund at each retry): only an admin's
    /// `retry`, under a fresh key, asks again.
    async fn find_refund(&self, req: &RefundRequest) -> Result<Option<MadeRefund>, PaymentError> {
        let ours = |k: &str| k == req.idempotency_key || req.earlier_keys.iter().any(|e| e == k);
        let all = self.list_refunds(&req.payment_ref).await?;
        if let Some(made) = all
            .iter()
            .find(|r| !failed(r) && refund_key(r).is_some_and(ours))
        {
            return refund_made(made).map(Some);
        }
        let own = Some(req.idempotency_key.as_str());
        match all.iter().find(|r| failed(r) && refund_key(r) == own) {
            Some(gone) => refund_made(gone).map(Some),
            None => Ok(None),
        }
    }

    /// A refund object as Stripe holds it now (not an answer cached under a key);
    /// `None` if it knows no such refund: Stripe's own `resource_missing`, not any 404
    /// (a proxy's, a wrong base path's), which says nothing of the refund.
    async fn get_refund(&self, id: &str) -> Result<Option<Value>, PaymentError> {
        if !super::webhook::is_stripe_id(id) {
            return Ok(None);
        }
        let url = self.url(&format!("/v1/refunds/{id}"));
        match self.call_raw(self.http.get(url), None).await? {
            Ok(r) => Ok(Some(r)),
            Err((StatusCode::NOT_FOUND, body))
                if body["error"]["type"].is_string()
                    && body["error"]["code"] == "resource_missing" =>
            {
                Ok(None)
            }
            Err((status, body)) => Err(refusal(status, &body)),
        }
    }
}

/// The refund's own id (our idempotency key), kept by Stripe with the refund.
const REFUND_METADATA: &str = "metadata[refund]";

fn refusal(status: StatusCode, body: &Value) -> PaymentError {
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("payment gateway error")
        .to_owned();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // Stripe's text may quote part of the key ("Invalid API Key provided:
        // sk_live_****1234"): for the operator's log only, never for a customer or
        // the history
        tracing::error!(%status, %message, "the payment gateway refused Jetway's credentials");
        return PaymentError::Failed(format!(
            "the payment gateway refused the request ({status})"
        ));
    }
    if status == StatusCode::PAYMENT_REQUIRED || body["error"]["type"] == "card_error" {
        PaymentError::Declined(message)
    } else if status.is_server_error() {
        PaymentError::Failed(format!("the payment gateway failed ({status})"))
    } else {
        PaymentError::Failed(format!(
            "the payment gateway refused the request: {message}"
        ))
    }
}

/// A refusal of a refund request under its key: [`PaymentError::Rejected`] for a
/// 400 or 404 Stripe answers once it has looked at the key (this request made
/// nothing: a key still in use is a 409, one whose request made a refund replays it),
/// except a missing object at any status (a wrong account or mode says nothing of the
/// key where the payment is), a 404 without a code (a wrong URL) and a body that is
/// not Stripe's error (no `error.type`: a proxy's); [`PaymentError::Refused`] for a
/// card error answered 402 (the request executed, and Stripe keeps its answer under
/// the key); [`refusal`] otherwise (401/403 come before the key is looked at, 429 is a
/// rate limit or a lock, a 5xx may have acted). A key used with other params answers
/// an `idempotency_error` 400: after the resend with the first call's params (see
/// [`other_params`]) it is a rejection too, for those params; an older release's
/// refund under it carries no metadata, and an admin's `retry` is refused while the
/// payment has such a refund.
fn refund_refusal(status: StatusCode, body: &Value) -> PaymentError {
    // a 404 without a code is a wrong URL (a proxy's, a base path's): it says nothing
    // of a request under the key that did reach the refund endpoint
    let code = body["error"]["code"].as_str().unwrap_or("");
    let stripes = body["error"]["type"].is_string();
    let looked_at_key = stripes
        && code != "resource_missing"
        && (status == StatusCode::BAD_REQUEST
            || (status == StatusCode::NOT_FOUND && !code.is_empty()));
    match refusal(status, body) {
        PaymentError::Failed(m) if looked_at_key => PaymentError::Rejected(m),
        // a card error: the request executed and failed, and its answer is replayed
        PaymentError::Declined(m)
            if status == StatusCode::PAYMENT_REQUIRED && body["error"]["type"] == "card_error" =>
        {
            PaymentError::Refused(m)
        }
        other => other,
    }
}

/// Stripe's refusal of a key already used with other params.
fn other_params(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::BAD_REQUEST && body["error"]["type"] == "idempotency_error"
}

/// Only `succeeded` is charged and only `canceled` is final without a charge; every
/// other state (`requires_confirmation`, `requires_action`, `processing`,
/// `requires_capture`, `requires_payment_method`, unknown) may still change.
fn status_of(pi: &Value) -> PaymentStatus {
    match pi["status"].as_str() {
        Some("succeeded") => PaymentStatus::Succeeded,
        Some("canceled") => PaymentStatus::NotCharged,
        Some("requires_action" | "requires_source_action") => PaymentStatus::ActionRequired,
        _ => PaymentStatus::Pending,
    }
}

/// A cancel refused because the payment is final already says which way it went.
fn cancel_refused(body: &Value) -> Option<PaymentStatus> {
    if body["error"]["code"] != "payment_intent_unexpected_state" {
        return None;
    }
    Some(status_of(&body["error"]["payment_intent"])).filter(|s| s.is_final())
}

/// What a cancel's answer says of the payment: a success answer counts only when it
/// shows the payment `canceled` (not charged); one showing anything else, even
/// `succeeded`, is not Stripe's (a cancel never succeeds on a charged payment: a
/// proxy's answer, a changed API) and proves nothing, so the payment stays to be
/// resolved. A refusal names the final state the payment is in, if it is.
fn cancel_outcome(
    answer: Result<Value, (StatusCode, Value)>,
) -> Result<PaymentStatus, PaymentError> {
    match answer {
        Ok(pi) => match status_of(&pi) {
            PaymentStatus::NotCharged => Ok(PaymentStatus::NotCharged),
            _ => Err(PaymentError::Failed(format!(
                "the payment gateway answered a cancel without cancelling the payment ({})",
                pi["status"].as_str().unwrap_or("no status")
            ))),
        },
        Err((status, body)) => match cancel_refused(&body) {
            Some(s) => Ok(s),
            None => Err(refusal(status, &body)),
        },
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
            match pi["status"].as_str() {
                Some("succeeded") => Ok(()),
                Some("requires_action" | "requires_source_action") => {
                    match pi["client_secret"].as_str() {
                        Some(secret) => Err(PaymentError::ActionRequired(secret.to_owned())),
                        None => Err(PaymentError::Failed(
                            "the payment needs the customer's action but has no client secret"
                                .into(),
                        )),
                    }
                }
                Some("requires_payment_method") => Err(PaymentError::Declined(
                    pi["last_payment_error"]["message"]
                        .as_str()
                        .unwrap_or("your card was declined")
                        .to_owned(),
                )),
                other => Err(PaymentError::Failed(format!(
                    "the payment is not complete ({})",
                    other.unwrap_or("unknown state")
                ))),
            }
        })
    }

    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>> {
        Box::pin(async move {
            let url = self.url(&format!("/v1/payment_intents/{payment_ref}"));
            match self.call_raw(self.http.get(url), None).await? {
                Ok(pi) => Ok(status_of(&pi)),
                // Stripe made it (its reference came from Stripe): another account's
                // key, or a test key for a live payment, must not close it as unpaid
                Err((_, body)) if body["error"]["code"] == "resource_missing" => {
                    tracing::error!(
                        payment = payment_ref,
                        "the payment gateway does not know a payment it created: check that \
                         STRIPE_SECRET_KEY is the account's and in the same mode (test or live); \
                         the payment stays open until the gateway finds it"
                    );
                    Err(PaymentError::Failed(
                        "the payment gateway does not know this payment".into(),
                    ))
                }
                Err((status, body)) => Err(refusal(status, &body)),
            }
        })
    }

    fn cancel<'a>(
        &'a self,
        payment_ref: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<PaymentStatus, PaymentError>> {
        Box::pin(async move {
            let url = self.url(&format!("/v1/payment_intents/{payment_ref}/cancel"));
            cancel_outcome(self.call_raw(self.http.post(url), Some(key)).await?)
        })
    }

    fn refund(&self, req: RefundRequest) -> BoxFuture<'_, Result<MadeRefund, PaymentError>> {
        Box::pin(async move {
            if req.look_up_first || !req.earlier_keys.is_empty() {
                if let Some(id) = self.find_refund(&req).await? {
                    return Ok(id);
                }
            }
            let mut form = vec![
                ("payment_intent", req.payment_ref.clone()),
                ("amount", req.amount.amount().to_string()),
                (REFUND_METADATA, req.idempotency_key.clone()),
            ];
            let key = Some(req.idempotency_key.as_str());
            let post = |form: &[(&str, String)]| self.http.post(self.url("/v1/refunds")).form(form);
            // the look-ups above may have taken the try's time
            req.check_send_by()?;
            let r = match self.call_raw(post(&form), key).await? {
                Ok(r) => r,
                // the key's first call came from a release that sent no metadata (its
                // answer lost): only its exact params get its refund replayed, and a
                // refund left open would be paid again once Stripe forgets the key
                Err((status, body)) if other_params(status, &body) => {
                    form.retain(|(k, _)| *k != REFUND_METADATA);
                    req.check_send_by()?;
                    match self.call_raw(post(&form), key).await? {
                        Ok(r) => r,
                        Err((status, body)) => return Err(refund_refusal(status, &body)),
                    }
                }
                Err((status, body)) => return Err(refund_refusal(status, &body)),
            };
            // a replayed answer is the first one, cached under the key: a refund
            // answered `succeeded` or `pending` (its first answer lost, say) may have
            // failed since. So the refund is read as it is now before it counts as made
            let (false, Some(id)) = (failed(&r), r["id"].as_str()) else {
                // a failure, or an answer without an id: nothing to read again
                return refund_made(&r);
            };
            let now = self.get_refund(id).await?.ok_or_else(|| {
                PaymentError::Failed(format!(
                    "the payment gateway does not know the refund {id} it answered"
                ))
            })?;
            refund_made(&now)
        })
    }

    fn refunds_of<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GatewayRefund>, PaymentError>> {
        Box::pin(async move {
            let made = self.list_refunds(payment_ref).await?;
            made.iter()
                .filter(|r| !failed(r))
                .map(gateway_refund)
                .collect()
        })
    }

    fn refund_now<'a>(
        &'a self,
        refund_ref: &'a str,
    ) -> BoxFuture<'a, Result<Option<GatewayRefund>, PaymentError>> {
        Box::pin(async move {
            match self.get_refund(refund_ref).await? {
                Some(r) => gateway_refund(&r).map(Some),
                None => Ok(None),
            }
        })
    }

    fn name(&self) -> &'static str {
        "stripe"
    }
}

/// The key a refund object was asked under (ours are in its metadata).
fn refund_key(r: &Value) -> Option<&str> {
    r["metadata"]["refund"].as_str()
}

/// Whether a refund object is one Stripe could not make (no money went back).
fn failed(r: &Value) -> bool {
    matches!(r["status"].as_str(), Some("failed" | "canceled"))
}

/// A refund object as the gateway's trait tells it.
fn gateway_refund(r: &Value) -> Result<GatewayRefund, PaymentError> {
    let amount = r["amount"].as_i64().and_then(|a| Money::cents(a).ok());
    let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    Ok(GatewayRefund {
        id: text("id"),
        payment_ref: text("payment_intent"),
        amount: amount.ok_or_else(|| {
            PaymentError::Failed("the payment gateway listed a refund without an amount".into())
        })?,
        key: refund_key(r).map(str::to_owned),
        failure: failed(r).then(|| failure_reason(r).to_owned()),
        pending: unsettled(r),
    })
}

/// Why Stripe could not make a refund, in its words.
fn failure_reason(r: &Value) -> &str {
    r["failure_reason"].as_str().unwrap_or("no reason given")
}

/// Whether a refund object is not settled either way yet (it may still succeed or
/// fail): `pending`, or waiting for the customer's action.
fn unsettled(r: &Value) -> bool {
    matches!(r["status"].as_str(), Some("pending" | "requires_action"))
}

/// The id of a refund the gateway answered with, if it was made: Stripe answers some
/// refunds it cannot make (a closed card, say) with status `failed` or `canceled`, and
/// no money goes back then. Such a refund stays open, as for any refusal: retried
/// under its key (which replays the failure) until an admin resolves it.
///
/// A refund waiting for the customer's action (`requires_action`, some non-card
/// methods) is not made yet either: it stays open, and each retry reads it again.
fn refund_made(r: &Value) -> Result<MadeRefund, PaymentError> {
    if let Some(status) = r["status"].as_str().filter(|_| failed(r)) {
        let why = failure_reason(r);
        return Err(PaymentError::Refused(format!(
            "the payment gateway answered the refund {status} ({why}); no money went back"
        )));
    }
    if r["status"] == "requires_action" {
        return Err(PaymentError::Failed(
            "the payment gateway's refund waits for the customer's action; no money went back yet"
                .into(),
        ));
    }
    let id = r["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| PaymentError::Failed("the payment gateway returned no refund id".into()))?;
    Ok(MadeRefund {
        id,
        pending: r["status"] == "pending",
    })
}

/// One page of a refund list: its refunds, and the id to list on from if more
/// follow. An answer without its list, or that does not say (credibly) whether more
/// follow, is no proof that there are no more refunds: an error.
fn refund_page(page: &Value) -> Result<(&Vec<Value>, Option<String>), PaymentError> {
    let unclear =
        |what: &str| PaymentError::Failed(format!("the payment gateway's refund list {what}"));
    let data = page["data"]
        .as_array()
        .ok_or_else(|| unclear("has no data array"))?;
    let last = data
        .last()
        .and_then(|r| r["id"].as_str())
        .map(str::to_owned);
    match (page["has_more"].as_bool(), last) {
        (Some(false), _) => Ok((data, None)),
        (Some(true), Some(last)) => Ok((data, Some(last))),
        _ => Err(unclear("does not say whether more refunds follow")),
    }
}

/// The most pages of a payment's refunds read (100 refunds each): a longer list, or
/// one whose cursor does not move, is not an answer to act on.
const MAX_REFUND_PAGES: usize = 100;

/// Every item of a list read page by page, `page(after)` reading the page after the
/// item id `after` (the first page for none).
async fn all_pages<F, Fut>(mut page: F) -> Result<Vec<Value>, PaymentError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, PaymentError>>,
{
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_REFUND_PAGES {
        let read = page(after.clone()).await?;
        let (data, next) = refund_page(&read)?;
        all.extend(data.iter().cloned());
        match next {
            None => return Ok(all),
            Some(last) if after.as_ref() == Some(&last) => {
                return Err(PaymentError::Failed(
                    "the payment gateway's refund list repeats a page".into(),
                ))
            }
            Some(last) => after = Some(last),
        }
    }
    Err(PaymentError::Failed(format!(
        "the payment gateway's refund list goes on past {MAX_REFUND_PAGES} pages"
    )))
}

/// Refuses an API base the secret key would travel to in the clear: `https://`, or
/// `http://` only to a loopback address (localstripe, fake-stripe).
fn check_base(base: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("--stripe-api-base {base:?}: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "--stripe-api-base {base:?} must be https:// (http:// only to a loopback \
             address, for tests): the secret key is sent with every call"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_refund_list_that_never_ends_is_not_read_for_ever() {
        let refund = |id: String| json!({"id": id, "status": "succeeded"});
        let two = all_pages(|after| async move {
            Ok(match after {
                None => json!({"data": [refund("re_1".into())], "has_more": true}),
                Some(_) => json!({"data": [refund("re_2".into())], "has_more": false}),
            })
        });
        assert_eq!(two.await.unwrap().len(), 2);
        let mut n = 0;
        let endless = all_pages(|_| {
            n += 1;
            let page = json!({"data": [refund(format!("re_{n}"))], "has_more": true});
            async move { Ok(page) }
        });
        assert!(matches!(endless.await, Err(PaymentError::Failed(m)) if m.contains("pages")));
        assert_eq!(n, MAX_REFUND_PAGES);
        let stuck =
            all_pages(|_| async { Ok(json!({"data": [refund("re_1".into())], "has_more": true})) });
        assert!(matches!(stuck.await, Err(PaymentError::Failed(m)) if m.contains("repeats")));
    }

    #[test]
    fn the_secret_key_is_never_sent_in_the_clear_off_the_machine() {
        let t = Duration::from_secs(1);
        let new = |base: &str| Stripe::new(base, "sk_test_x".into(), t).map(drop);
        for ok in [
            "https://api.stripe.com",
            "https://stripe.internal:8443/",
            "http://127.0.0.1:8420",
            "http://[::1]:8420",
            "http://localhost:8420",
        ] {
            assert!(new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.stripe.com",
            "http://10.0.0.5:8420",
            "ftp://127.0.0.1",
            "api.stripe.com",
        ] {
            let e = new(bad).unwrap_err();
            assert!(e.contains("--stripe-api-base"), "{bad}: {e}");
        }
    }

    /// A refusal of Jetway's own key may quote part of it: never passed on to the
    /// customer (nor, through `payment_failed`, to the history). An empty key, or a
    /// redirect, never sends the key anywhere.
    #[test]
    fn a_refused_key_is_not_quoted_to_the_customer() {
        let body = json!({"error": {"type": "invalid_request_error",
            "message": "Invalid API Key provided: sk_live_****1234"}});
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let e = refusal(status, &body).to_string();
            assert!(!e.contains("sk_live"), "{e}");
            assert!(matches!(refusal(status, &body), PaymentError::Failed(_)));
        }
        let timeout = Duration::from_secs(1);
        assert!(Stripe::new("https://api.stripe.com", " ".into(), timeout).is_err());
    }

    #[test]
    fn a_refund_list_that_does_not_say_whether_more_follow_is_an_error() {
        let r = json!({"id": "re_1"});
        let next = |page: Value| refund_page(&page).map(|(d, n)| (d.len(), n));
        assert_eq!(
            next(json!({"data": [r], "has_more": false})).ok(),
            Some((1, None))
        );
        assert_eq!(
            next(json!({"data": [r], "has_more": true})).ok(),
            Some((1, Some("re_1".to_owned())))
        );
        for unclear in [
            json!({"data": []}),
            json!({"data": [r]}),
            json!({"data": [], "has_more": true}),
            json!({"has_more": false}),
        ] {
            assert!(next(unclear.clone()).is_err(), "{unclear}");
        }
    }

    #[test]
    fn only_a_definite_no_to_a_refund_request_is_a_refusal_or_a_rejection() {
        let error =
            |kind: &str, code: &str| json!({"error": {"type": kind, "code": code, "message": "m"}});
        let answer = |status: u16, body: &Value| {
            let status = StatusCode::from_u16(status).unwrap();
            match refund_refusal(status, body) {
                PaymentError::Refused(_) => "refused",
                PaymentError::Rejected(_) => "rejected",
                _ => "unknown",
            }
        };
        let invalid = error("invalid_request_error", "amount_too_large");
        // turned away before it acted, and not kept under the key
        assert_eq!(answer(400, &invalid), "rejected");
        assert_eq!(
            answer(404, &error("invalid_request_error", "charge_not_found")),
            "rejected"
        );
        assert_eq!(
            answer(404, &error("invalid_request_error", "")),
            "unknown",
            "a wrong URL's 404"
        );
        assert_eq!(
            answer(409, &error("card_error", "")),
            "unknown",
            "a card error only as a 402"
        );
        assert_eq!(
            answer(400, &error("idempotency_error", "")),
            "rejected",
            "after the resend"
        );
        for status in [400, 404] {
            assert_eq!(
                answer(status, &error("invalid_request_error", "resource_missing")),
                "unknown",
                "a missing object at {status}"
            );
        }
        // executed, and kept under the key
        assert_eq!(answer(402, &error("card_error", "expired_card")), "refused");
        // only Stripe's own error body is its answer (a proxy's JSON is not)
        assert_eq!(answer(400, &json!({})), "unknown");
        assert_eq!(
            answer(400, &json!({"error": {"message": "bad gateway config"}})),
            "unknown"
        );
        assert_eq!(answer(402, &json!({"error": {"message": "m"}})), "unknown");
        for status in [401, 403, 409, 429, 500, 502] {
            assert_eq!(answer(status, &invalid), "unknown", "{status}");
        }
        // a read's refusal is never one
        let read = refusal(StatusCode::BAD_REQUEST, &invalid);
        assert!(matches!(read, PaymentError::Failed(_)));
        let card = refusal(StatusCode::PAYMENT_REQUIRED, &error("card_error", ""));
        assert!(!matches!(card, PaymentError::Refused(_)));
    }

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
            status_of(&json!({"status":"requires_action"})),
            PaymentStatus::ActionRequired
        );
        for uncertain in [
            "requires_confirmation",
            "requires_capture",
            "requires_payment_method",
        ] {
            assert_eq!(
                status_of(&json!({ "status": uncertain })),
                PaymentStatus::Pending,
                "{uncertain}"
            );
        }
        assert_eq!(
            status_of(&json!({"status":"canceled"})),
            PaymentStatus::NotCharged
        );
        assert_eq!(status_of(&json!({})), PaymentStatus::Pending);
    }

    #[test]
    fn only_a_cancel_answer_showing_the_payment_cancelled_means_not_charged() {
        assert_eq!(
            cancel_outcome(Ok(json!({"status": "canceled"}))).unwrap(),
            PaymentStatus::NotCharged
        );
        for shown in [
            json!({}),
            json!({"status": "processing"}),
            json!({"status": "succeeded"}),
            json!("ok"),
        ] {
            assert!(
                matches!(
                    cancel_outcome(Ok(shown.clone())),
                    Err(PaymentError::Failed(_))
                ),
                "{shown}"
            );
        }
        let refused = json!({"error": {"code": "payment_intent_unexpected_state",
                                       "payment_intent": {"status": "succeeded"}}});
        assert_eq!(
            cancel_outcome(Err((StatusCode::BAD_REQUEST, refused))).unwrap(),
            PaymentStatus::Succeeded
        );
    }

    #[test]
    fn a_refused_cancel_tells_the_final_state() {
        let refused = |status: &str| {
            json!({"error": {"code": "payment_intent_unexpected_state",
                             "payment_intent": {"status": status}}})
        };
        assert_eq!(
            cancel_refused(&refused("succeeded")),
            Some(PaymentStatus::Succeeded)
        );
        assert_eq!(
            cancel_refused(&refused("canceled")),
            Some(PaymentStatus::NotCharged)
        );
        assert_eq!(cancel_refused(&refused("processing")), None);
        assert_eq!(cancel_refused(&refused("requires_action")), None);
        assert_eq!(
            cancel_refused(&json!({"error": {"code": "lock_timeout"}})),
            None
        );
    }

    #[test]
    fn only_a_refund_that_moves_money_counts_as_made() {
        let made = |status: &str| refund_made(&json!({"id": "re_1", "status": status}));
        let made_as = |pending| MadeRefund {
            id: "re_1".into(),
            pending,
        };
        assert_eq!(made("succeeded"), Ok(made_as(false)));
        assert_eq!(made("pending"), Ok(made_as(true)));
        for not_made in ["failed", "canceled", "requires_action"] {
            assert!(made(not_made).is_err(), "{not_made}");
        }
        let g = gateway_refund(
            &json!({"id": "re_1", "payment_intent": "pi_1", "amount": 500,
            "status": "failed", "failure_reason": "lost_or_stolen_card",
            "metadata": {"refund": "rf-1"}}),
        )
        .unwrap();
        assert_eq!(g.failure.as_deref(), Some("lost_or_stolen_card"));
        assert_eq!(
            (g.key.as_deref(), g.payment_ref.as_str()),
            (Some("rf-1"), "pi_1")
        );
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
