//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex hmac>[,v1=...]`,
//! HMAC-SHA256 over `"<t>.<body>"` with the endpoint secret, within a tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How old (or how far in the future) a signed event may be.
pub const TOLERANCE_SECS: i64 = 300;
/// How many `v1` signatures a header may carry (Stripe sends one per live secret: two
/// while a secret is rolled); more is refused before any hashing.
const MAX_SIGNATURES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed Stripe-Signature header")]
    Malformed,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("no matching signature")]
    Mismatch,
}

/// Checks a webhook's signature header against its raw body at `now` (unix seconds).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() || sigs.len() > MAX_SIGNATURES {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    // the body is hashed once, whatever the number of signatures to compare
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Malformed)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    if sigs.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Whether `id` looks like a Stripe id (an event's `evt_...`, a refund's `re_...`: a
/// prefix and a few dozen letters and digits): at most 255 ASCII letters, digits and
/// underscores, so it is safe in a URL path and bounded on disk.
pub fn is_stripe_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Signs a body as Stripe would (tests and tools).
pub fn sign(secret: &str, body: &[u8], t: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_and_rejects_bad_signatures() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign("whsec_x", body, 1000);
        assert_eq!(verify("whsec_x", &h, body, 1000), Ok(()));
        assert_eq!(verify("whsec_x", &h, body, 1000 + TOLERANCE_SECS), Ok(()));
        assert_eq!(
            verify("whsec_x", &h, body, 1000 + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("whsec_y", &h, body, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_x", &h, br#"{"id":"evt_2"}"#, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_x", "garbage", body, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("whsec_x", "t=1000,v1=zz", body, 1000),
            Err(SignatureError::Malformed)
        );
        let two = format!("{},v1={}", h, "00".repeat(32));
        assert_eq!(verify("whsec_x", &two, body, 1000), Ok(()));
    }

    /// A header listing many signatures is refused before the body is hashed: each
    /// one used to cost a pass over the whole body, so one request of 100,000 empty
    /// `v1=` and a large body kept a worker busy for minutes.
    #[test]
    fn a_header_with_too_many_signatures_is_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign("whsec_x", body, 1000);
        let padded = |n: usize| format!("{good}{}", ",v1=".repeat(n));
        assert_eq!(
            verify("whsec_x", &padded(MAX_SIGNATURES - 1), body, 1000),
            Ok(())
        );
        assert_eq!(
            verify("whsec_x", &padded(MAX_SIGNATURES), body, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("whsec_x", &padded(100_000), body, 1000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn ids_have_stripes_shape() {
        assert!(is_stripe_id("evt_1NG8Du2eZvKYlo2CUI79vXWy"));
        assert!(!is_stripe_id(""));
        assert!(!is_stripe_id(&"e".repeat(256)));
        assert!(!is_stripe_id("evt 1"));
        assert!(!is_stripe_id("evt_é"));
    }

    /// Timestamps at the ends of `i64` are stale, not an overflow (a panic in a build
    /// with overflow checks), whatever the clock says.
    #[test]
    fn extreme_timestamps_are_stale() {
        let v1 = "00".repeat(32);
        for (t, now) in [
            (i64::MIN, 1_800_000_000),
            (i64::MAX, -1),
            (i64::MIN, i64::MAX),
        ] {
            let h = format!("t={t},v1={v1}");
            assert_eq!(
                verify("whsec_x", &h, b"{}", now),
                Err(SignatureError::Stale)
            );
        }
    }
}
