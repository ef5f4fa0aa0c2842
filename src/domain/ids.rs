//! Identifier newtypes that can only hold valid values.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::DomainError;

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, DomainError> {
                $name::parse(&s)
            }
        }
    };
}

string_id!(
    /// A flight: `JW101-20261125` (number, dash, departure date).
    FlightId
);
string_id!(
    /// A booking reference: 6 characters of `A-Z` and `2-9`.
    Locator
);
string_id!(
    /// A 13-digit e-ticket number.
    TicketNumber
);
string_id!(
    /// A username: 3-32 of `a-z 0-9 _ . -`, stored lower-case.
    Username
);
string_id!(
    /// A client-chosen idempotency key: 1-64 printable characters.
    RequestId
);

/// Characters a locator is made of.
pub const LOCATOR_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ23456789";

impl FlightId {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(FlightId(s.to_owned()))
        } else {
            Err(DomainError::Invalid(format!("invalid flight id {s:?}")))
        }
    }
}

impl Locator {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.len() == 6 && s.bytes().all(|b| LOCATOR_ALPHABET.contains(&b)) {
            Ok(Locator(s.to_owned()))
        } else {
            Err(DomainError::Invalid(format!(
                "invalid locator {s:?}: 6 characters of A-Z and 2-9"
            )))
        }
    }

    /// A locator from six random indices into the alphabet.
    pub fn from_random(r: [u8; 6]) -> Self {
        let s = r
            .iter()
            .map(|b| LOCATOR_ALPHABET[*b as usize % LOCATOR_ALPHABET.len()] as char)
            .collect();
        Locator(s)
    }
}

impl TicketNumber {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.len() == 13 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(TicketNumber(s.to_owned()))
        } else {
            Err(DomainError::Invalid(format!("invalid ticket number {s:?}")))
        }
    }

    /// Ticket number `serial` of the airline with the 3-digit accounting code `airline`.
    pub fn new(airline: u16, serial: u64) -> Self {
        TicketNumber(format!(
            "{:03}{:010}",
            airline % 1000,
            serial % 10_000_000_000
        ))
    }
}

impl Username {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let lower = s.to_ascii_lowercase();
        let ok = (3..=32).contains(&lower.len())
            && lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok {
            Ok(Username(lower))
        } else {
            Err(DomainError::Invalid(
                "username must be 3-32 characters of a-z 0-9 _ . -".into(),
            ))
        }
    }
}

impl RequestId {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control);
        if ok {
            Ok(RequestId(s.to_owned()))
        } else {
            Err(DomainError::Invalid(
                "request_id must be 1-64 characters without control characters".into(),
            ))
        }
    }
}

/// A user's numeric id, assigned at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u{}", self.0)
    }
}

/// A seat: row 1-99 and a column letter `A`-`K` (no `I`), e.g. `12A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeatId {
    pub row: u8,
    pub column: u8,
}

impl SeatId {
    pub fn new(row: u8, column: char) -> Result<Self, DomainError> {
        Self::parse(&format!("{row}{column}"))
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::Invalid(format!("invalid seat {s:?}"));
        let s = s.trim();
        if !s.is_ascii() || s.len() < 2 || s.len() > 3 {
            return Err(bad());
        }
        let (digits, letter) = s.split_at(s.len() - 1);
        let column = letter.bytes().next().ok_or_else(bad)?.to_ascii_uppercase();
        if !(b'A'..=b'K').contains(&column) || column == b'I' {
            return Err(bad());
        }
        if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let row: u8 = digits.parse().map_err(|_| bad())?;
        if row == 0 || row > 99 {
            return Err(bad());
        }
        Ok(SeatId { row, column })
    }

    pub fn column_char(&self) -> char {
        self.column as char
    }
}

impl fmt::Display for SeatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.row, self.column as char)
    }
}
impl From<SeatId> for String {
    fn from(s: SeatId) -> String {
        s.to_string()
    }
}
impl TryFrom<String> for SeatId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        SeatId::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_ids_parse_and_print() {
        let s = SeatId::parse("12a").unwrap();
        assert_eq!(s.to_string(), "12A");
        assert_eq!(SeatId::parse("1K").unwrap().row, 1);
        for bad in [
            "", "A", "12", "0A", "012A", "100A", "12I", "12Z", "1-A", "12AA", "+1A", "💺",
        ] {
            assert!(SeatId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn locators_use_only_the_alphabet() {
        assert!(Locator::parse("AB2C9Z").is_ok());
        for bad in ["AB2C9", "AB2C9ZZ", "ab2c9z", "AB0C9Z", "AB1C9Z", "AB2C9 "] {
            assert!(Locator::parse(bad).is_err(), "{bad}");
        }
        let l = Locator::from_random([0, 33, 34, 255, 7, 100]);
        assert!(Locator::parse(l.as_str()).is_ok());
    }

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(Username::parse("Ada.L_1-x").unwrap().as_str(), "ada.l_1-x");
        for bad in ["ab", &"a".repeat(33), "has space", "émile", "a/b"] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ticket_numbers_have_13_digits() {
        let t = TicketNumber::new(729, 42);
        assert_eq!(t.as_str(), "7290000000042");
        assert!(TicketNumber::parse(t.as_str()).is_ok());
        assert!(TicketNumber::parse("123").is_err());
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(RequestId::parse("r-1").is_ok());
        assert!(RequestId::parse(&"x".repeat(64)).is_ok());
        assert!(RequestId::parse(&"x".repeat(65)).is_err());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("a\nb").is_err());
    }

    #[test]
    fn flight_ids_are_checked() {
        assert!(FlightId::parse("JW101-20261125").is_ok());
        assert!(FlightId::parse("no-such-flight").is_err());
        assert!(FlightId::parse("").is_err());
    }
}
