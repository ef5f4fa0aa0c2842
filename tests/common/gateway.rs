//! A payment gateway for tests: the sandbox, recording every refund asked of it.

use futures::future::BoxFuture;

/// A gateway that records every refund asked of it; from the `hang_from`-th refund
/// on (or only the `hang_nth`-th) it never answers (as if the process died during
/// the call), and while `fail_refunds` is set it answers every refund with an error
/// (as if it were down), while `refuse_refunds` is set with a definite no it keeps
/// under the key, and while `reject_refunds` is set with one it does not keep (a
/// 400). A look-up of a payment's refunds lists those in `listed`.
#[derive(Default)]
pub struct CountingGateway {
    pub inner: jetway::payments::Sandbox,
    pub refunds: parking_lot::Mutex<Vec<(String, String, i64)>>,
    pub listed: parking_lot::Mutex<Vec<jetway::payments::GatewayRefund>>,
    pub hang_from: Option<usize>,
    pub hang_nth: Option<usize>,
    pub fail_refunds: std::sync::atomic::AtomicBool,
    /// Every refund is refused with a definite no kept under its key (as a refund
    /// answered `failed`).
    pub refuse_refunds: std::sync::atomic::AtomicBool,
    /// Every refund is turned away before the gateway acts on it (as a 400).
    pub reject_refunds: std::sync::atomic::AtomicBool,
    /// Each refund is answered only once a permit is added here (one per answer).
    pub answer_when: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl CountingGateway {
    pub fn refunds(&self) -> Vec<(String, String, i64)> {
        self.refunds.lock().clone()
    }
}

impl jetway::payments::PaymentGateway for CountingGateway {
    fn create(
        &self,
        req: jetway::payments::PaymentRequest,
    ) -> BoxFuture<'_, Result<String, jetway::payments::PaymentError>> {
        self.inner.create(req)
    }
    fn confirm<'a>(
        &'a self,
        payment_ref: &'a str,
        attempt_id: &'a str,
    ) -> BoxFuture<'a, Result<(), jetway::payments::PaymentError>> {
        self.inner.confirm(payment_ref, attempt_id)
    }
    fn status<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<jetway::payments::PaymentStatus, jetway::payments::PaymentError>>
    {
        self.inner.status(payment_ref)
    }
    fn cancel<'a>(
        &'a self,
        payment_ref: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<jetway::payments::PaymentStatus, jetway::payments::PaymentError>>
    {
        self.inner.cancel(payment_ref, key)
    }
    fn refund(
        &self,
        req: jetway::payments::RefundRequest,
    ) -> BoxFuture<'_, Result<jetway::payments::MadeRefund, jetway::payments::PaymentError>> {
        Box::pin(async move {
            let n = {
                let mut r = self.refunds.lock();
                r.push((
                    req.idempotency_key.clone(),
                    req.payment_ref.clone(),
                    req.amount.amount(),
                ));
                r.len()
            };
            if self.hang_from.is_some_and(|h| n >= h) || self.hang_nth == Some(n) {
                futures::future::pending::<()>().await;
            }
            if let Some(answer) = &self.answer_when {
                answer.acquire().await.unwrap().forget();
            }
            if self.fail_refunds.load(std::sync::atomic::Ordering::SeqCst) {
                let down = "the payment gateway is down".into();
                return Err(jetway::payments::PaymentError::Failed(down));
            }
            if self
                .refuse_refunds
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                let no = "the payment gateway refused the refund".into();
                return Err(jetway::payments::PaymentError::Refused(no));
            }
            if self
                .reject_refunds
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                let no = "the payment gateway turned the refund away".into();
                return Err(jetway::payments::PaymentError::Rejected(no));
            }
            Ok(jetway::payments::MadeRefund {
                id: format!("re_test_{}", req.idempotency_key),
                pending: false,
            })
        })
    }
    fn refunds_of<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Vec<jetway::payments::GatewayRefund>, jetway::payments::PaymentError>>
    {
        let listed = self.listed.lock();
        let of = listed.iter().filter(|r| r.payment_ref == payment_ref);
        let found = of.cloned().collect();
        Box::pin(async move { Ok(found) })
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}
