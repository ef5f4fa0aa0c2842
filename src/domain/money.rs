//! Money in integer minor units. Jetway sells in one currency, EUR.

use serde::{Deserialize, Serialize};

use super::DomainError;

pub const CURRENCY: &str = "EUR";

/// A non-negative amount of euro cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "WireMoney", into = "WireMoney")]
pub struct Money(i64);

#[derive(Serialize, Deserialize)]
struct WireMoney {
    amount: i64,
    currency: String,
}

impl Money {
    pub const ZERO: Money = Money(0);
    /// The largest amount there is (a billion euros): fares, totals and refunds alike,
    /// so that every stored amount reads back.
    pub const MAX_CENTS: i64 = 100_000_000_000;

    pub fn cents(amount: i64) -> Result<Self, DomainError> {
        if (0..=Self::MAX_CENTS).contains(&amount) {
            Ok(Money(amount))
        } else {
            Err(DomainError::Invalid(format!(
                "amount {amount} out of range"
            )))
        }
    }

    pub fn amount(self) -> i64 {
        self.0
    }

    /// `None` above [`Money::MAX_CENTS`].
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0
            .checked_add(other.0)
            .and_then(|a| Money::cents(a).ok())
    }

    /// `self * num / den`, rounded down to the cent.
    pub fn scale(self, num: i64, den: i64) -> Money {
        if den == 0 {
            return Money::ZERO;
        }
        Money((self.0 as i128 * num as i128 / den as i128).clamp(0, i64::MAX as i128) as i64)
    }

    /// An error when the sum is above [`Money::MAX_CENTS`].
    pub fn sum(items: impl IntoIterator<Item = Money>) -> Result<Money, DomainError> {
        items
            .into_iter()
            .try_fold(Money::ZERO, Money::checked_add)
            .ok_or_else(|| DomainError::Invalid(format!("a total above {} cents", Self::MAX_CENTS)))
    }
}

impl TryFrom<WireMoney> for Money {
    type Error = DomainError;
    fn try_from(w: WireMoney) -> Result<Self, DomainError> {
        if w.currency != CURRENCY {
            return Err(DomainError::Invalid(format!(
                "currency must be {CURRENCY}, not {:?}",
                w.currency
            )));
        }
        Money::cents(w.amount)
    }
}

impl From<Money> for WireMoney {
    fn from(m: Money) -> Self {
        WireMoney {
            amount: m.0,
            currency: CURRENCY.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_serializes_as_amount_and_currency() {
        let m = Money::cents(12_345).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"amount":12345,"currency":"EUR"}"#
        );
        let back: Money = serde_json::from_str(r#"{"amount":5,"currency":"EUR"}"#).unwrap();
        assert_eq!(back.amount(), 5);
    }

    #[test]
    fn money_rejects_negative_and_foreign() {
        assert!(serde_json::from_str::<Money>(r#"{"amount":-1,"currency":"EUR"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount":1,"currency":"USD"}"#).is_err());
        assert!(Money::cents(-5).is_err());
    }

    #[test]
    fn sums_stay_in_range() {
        let top = Money::cents(Money::MAX_CENTS).unwrap();
        let one = Money::cents(1).unwrap();
        assert_eq!(Money::sum([top]).unwrap(), top);
        assert!(Money::sum([top, one]).is_err());
        assert_eq!(top.checked_add(one), None);
        assert!(serde_json::from_str::<Money>(&format!(
            r#"{{"amount":{},"currency":"EUR"}}"#,
            Money::MAX_CENTS + 1
        ))
        .is_err());
    }

    #[test]
    fn scale_rounds_down() {
        assert_eq!(Money::cents(999).unwrap().scale(1, 2).amount(), 499);
        assert_eq!(Money::cents(999).unwrap().scale(1, 0), Money::ZERO);
    }
}
