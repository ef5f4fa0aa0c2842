//! The fake behaves as Stripe does where Jetway depends on it.

use fake_stripe::{FakeStripe, Fault, FaultRule, Step};
use serde_json::Value;
use std::time::Duration;

async fn post(f: &FakeStripe, path: &str, key: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", f.base()))
        .header("Idempotency-Key", key)
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn status(f: &FakeStripe, id: &str) -> String {
    let r: Value = reqwest::get(format!("{}/v1/payment_intents/{id}", f.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["status"].as_str().unwrap().to_owned()
}

async fn intent(f: &FakeStripe, key: &str, amount: &str, pm: &str) -> String {
    let (s, pi) = post(
        f,
        "/v1/payment_intents",
        key,
        &[("amount", amount), ("payment_method", pm)],
    )
    .await;
    assert_eq!(s, 200, "{pi}");
    pi["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn idempotency_keys_replay_or_refuse_like_stripe() {
    let f = FakeStripe::start().await.unwrap();
    let a = intent(&f, "k1", "1000", "pm_card_visa").await;
    assert_eq!(
        intent(&f, "k1", "1000", "pm_card_visa").await,
        a,
        "replayed"
    );
    let (s, e) = post(
        &f,
        "/v1/payment_intents",
        "k1",
        &[("amount", "999"), ("payment_method", "pm_card_visa")],
    )
    .await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (400, Some("idempotency_error"))
    );
    assert_eq!(f.ledger().intents.len(), 1);

    let confirm = format!("/v1/payment_intents/{a}/confirm");
    assert_eq!(post(&f, &confirm, "c1", &[]).await.0, 200);
    assert_eq!(
        post(&f, &confirm, "c1", &[]).await.0,
        200,
        "replayed, not refused"
    );
    let (s, e) = post(&f, &format!("/v1/payment_intents/{a}/cancel"), "x1", &[]).await;
    assert_eq!(
        (s, e["error"]["payment_intent"]["status"].as_str()),
        (400, Some("succeeded"))
    );

    let (s, r1) = post(
        &f,
        "/v1/refunds",
        "r1",
        &[("payment_intent", &a), ("amount", "300")],
    )
    .await;
    assert_eq!(s, 200);
    let (_, again) = post(
        &f,
        "/v1/refunds",
        "r1",
        &[("payment_intent", &a), ("amount", "300")],
    )
    .await;
    assert_eq!(again["id"], r1["id"], "one refund, replayed");
    let (s, _) = post(
        &f,
        "/v1/refunds",
        "r1",
        &[("payment_intent", &a), ("amount", "200")],
    )
    .await;
    assert_eq!(s, 400, "same key, other amount");
    assert_eq!(
        post(
            &f,
            "/v1/refunds",
            "r2",
            &[("payment_intent", &a), ("amount", "800")]
        )
        .await
        .0,
        400,
        "more than is left"
    );
    let l = f.ledger();
    assert_eq!((l.charged(), l.refunded()), (1000, 300));
    assert_eq!(
        l.intents[0].refunds[0].idempotency_key.as_deref(),
        Some("r1")
    );
    assert!(f
        .keys()
        .iter()
        .any(|k| k.step == Step::Refund && k.key == "r2"));
}

#[tokio::test]
async fn declines_and_cancels() {
    let f = FakeStripe::start().await.unwrap();
    let d = intent(&f, "k", "500", "pm_card_chargeDeclined").await;
    let (s, e) = post(&f, &format!("/v1/payment_intents/{d}/confirm"), "c", &[]).await;
    assert_eq!((s, e["error"]["type"].as_str()), (402, Some("card_error")));
    assert_eq!(status(&f, &d).await, "requires_payment_method");
    let (s, pi) = post(&f, &format!("/v1/payment_intents/{d}/cancel"), "x", &[]).await;
    assert_eq!((s, pi["status"].as_str()), (200, Some("canceled")));
    assert_eq!(f.ledger().charged(), 0);
}

#[tokio::test]
async fn three_d_secure_waits_for_the_customer() {
    let f = FakeStripe::start().await.unwrap();
    let a = intent(&f, "k1", "700", "pm_card_threeDSecure2Required").await;
    let (s, pi) = post(&f, &format!("/v1/payment_intents/{a}/confirm"), "c1", &[]).await;
    assert_eq!((s, pi["status"].as_str()), (200, Some("requires_action")));
    assert!(pi["client_secret"].as_str().unwrap().starts_with(&a));
    assert_eq!(f.ledger().charged(), 0);
    assert!(f.authenticate(&a, true));
    assert_eq!(status(&f, &a).await, "succeeded");
    assert_eq!(f.ledger().charged(), 700);
    assert!(!f.authenticate(&a, true), "only once");

    let b = intent(&f, "k2", "300", "pm_card_authenticationRequired").await;
    post(&f, &format!("/v1/payment_intents/{b}/confirm"), "c2", &[]).await;
    let r = reqwest::Client::new()
        .post(format!("{}/_fake/authenticate/{b}?fail=true", f.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(status(&f, &b).await, "requires_payment_method");
    let c = intent(&f, "k3", "300", "pm_card_threeDSecure2Required").await;
    post(&f, &format!("/v1/payment_intents/{c}/confirm"), "c3", &[]).await;
    let (s, pi) = post(&f, &format!("/v1/payment_intents/{c}/cancel"), "x3", &[]).await;
    assert_eq!((s, pi["status"].as_str()), (200, Some("canceled")));
    assert_eq!(f.ledger().charged(), 700);
}

#[tokio::test]
async fn faults_fail_hang_and_process_late() {
    let f = FakeStripe::start().await.unwrap();
    f.set_fault(FaultRule {
        step: Step::Create,
        fault: Fault::Fail,
        rate: 1.0,
    });
    let (s, _) = post(
        &f,
        "/v1/payment_intents",
        "k",
        &[("amount", "100"), ("payment_method", "pm_card_visa")],
    )
    .await;
    assert_eq!(s, 500);
    assert!(f.ledger().intents.is_empty(), "a failure does nothing");
    f.clear_faults();
    let a = intent(&f, "k", "100", "pm_card_visa").await;

    let late = Duration::from_millis(600);
    f.set_fault(FaultRule {
        step: Step::Confirm,
        fault: Fault::ProcessLate(late),
        rate: 1.0,
    });
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/payment_intents/{a}/confirm", f.base()))
        .header("Idempotency-Key", "c")
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(
        status(&f, &a).await,
        "requires_confirmation",
        "looks unconfirmed"
    );
    let (s, e) = post(&f, &format!("/v1/payment_intents/{a}/cancel"), "x", &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (429, Some("lock_timeout"))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status(&f, &a).await != "succeeded" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late charge lands"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.ledger().charged(), 100);

    f.set_fault(FaultRule {
        step: Step::Refund,
        fault: Fault::LoseReply,
        rate: 1.0,
    });
    let lost = impatient
        .post(format!("{}/v1/refunds", f.base()))
        .header("Idempotency-Key", "r")
        .form(&[("payment_intent", a.as_str()), ("amount", "100")])
        .send()
        .await;
    assert!(lost.is_err());
    f.clear_faults();
    let (s, r) = post(
        &f,
        "/v1/refunds",
        "r",
        &[("payment_intent", &a), ("amount", "100")],
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        f.ledger().refunded(),
        100,
        "the retry replays the lost refund"
    );
    assert_eq!(f.ledger().intents[0].refunds.len(), 1);
}

#[test]
fn fault_rules_parse_from_flags() {
    let r: FaultRule = "confirm=process_late:3000@0.25".parse().unwrap();
    assert_eq!(
        r,
        FaultRule {
            step: Step::Confirm,
            fault: Fault::ProcessLate(Duration::from_secs(3)),
            rate: 0.25
        }
    );
    assert_eq!("refund=fail".parse::<FaultRule>().unwrap().rate, 1.0);
    assert!("pay=fail".parse::<FaultRule>().is_err());
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<FaultRule>(&json).unwrap(), r);
}
