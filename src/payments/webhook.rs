//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex hmac>[,v1=...]`,
//! HMAC-SHA256 over `"<t>.<body>"` with the endpoint secret, within a tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How old (or how far in the future) a signed event may be.
pub const TOLERANCE_SECS: i64 = 300;

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
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for sig in sigs {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| SignatureError::Malformed)?;
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
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
