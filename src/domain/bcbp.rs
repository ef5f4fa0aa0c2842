//! The IATA Resolution 792 bar-coded boarding pass: the 60 characters of mandatory
//! items of a one-leg pass in format `M`, as the contract lays them out.

use super::{Cabin, Millis, SeatId};

/// The operating carrier, as the pass writes it (3 characters).
pub const CARRIER: &str = "JW ";
/// Characters of the mandatory items of a one-leg pass.
pub const LEN: usize = 60;
/// Characters of the passenger name field.
pub const NAME_LEN: usize = 20;

/// Everything one boarding pass encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass<'a> {
    pub passenger: &'a str,
    pub locator: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The flight's number without the carrier (`JW100` -> 100), 0-9999.
    pub flight_number: u16,
    /// The scheduled departure: its UTC day of the year is the pass's date.
    pub departs_at: Millis,
    pub cabin: Cabin,
    pub seat: SeatId,
    pub sequence: u64,
}

/// The compartment code of a cabin.
pub fn compartment(cabin: Cabin) -> char {
    match cabin {
        Cabin::Business => 'J',
        Cabin::Economy => 'Y',
    }
}

/// `SURNAME/GIVEN NAMES` from a free-text name: split at the last space (a name
/// without one is written as it is; any Unicode space, a no-break or an ideographic
/// one, counts as a space), upper case, letters of any script transliterated to A-Z,
/// everything but A-Z, space and `/` removed, cut to 20 and padded with spaces.
pub fn name_field(name: &str) -> String {
    let spaced: String = name
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let name = spaced.trim();
    let written = match name.rsplit_once(' ') {
        Some((given, surname)) => format!("{surname}/{}", given.trim_end()),
        None => name.to_owned(),
    };
    let mut out: String = written
        .chars()
        .flat_map(transliterate)
        .filter(|c| c.is_ascii_uppercase() || *c == ' ' || *c == '/')
        .take(NAME_LEN)
        .collect();
    while out.len() < NAME_LEN {
        out.push(' ');
    }
    out
}

/// One character in A-Z terms: a letter of any script transliterated (accents
/// dropped, `ß` is `SS`, `ﬁ` is `FI`, a full-width `Ａ` is `A`, `Иван` is `IVAN`, `李`
/// is `LI`) and upper-cased, keeping only the A-Z of what it becomes; any other
/// character left as it is for the filter (a `/` or space typed stays one; a
/// full-width `／` is not made a separator).
fn transliterate(c: char) -> Vec<char> {
    if !c.is_alphabetic() {
        return vec![c];
    }
    // deunicode writes the schwa (Azerbaijani, and Kazakh or Tatar in Cyrillic) as
    // `@`; passports write it `A` (`Əliyev` is `ALIYEV`)
    let ascii = match c {
        'Ə' | 'ə' | 'Ә' | 'ә' | 'Ӛ' | 'ӛ' => "A",
        c => deunicode::deunicode_char(c).unwrap_or_default(),
    };
    ascii
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The check-in sequence field: four digits and a space (five digits from 10000 on,
/// which the field also allows).
fn sequence_field(sequence: u64) -> String {
    match sequence {
        0..=9999 => format!("{sequence:04} "),
        n => format!("{:05}", n.min(99_999)),
    }
}

/// A text field of exactly `len` characters: cut, or padded with spaces.
fn fixed(s: &str, len: usize) -> String {
    format!("{:<len$.len$}", s)
}

/// The pass's mandatory items: exactly [`LEN`] characters.
pub fn encode(p: &Pass) -> String {
    let day = super::date_of(p.departs_at).ordinal();
    let mut out = String::with_capacity(LEN);
    out.push_str("M1");
    out.push_str(&name_field(p.passenger));
    out.push('E');
    out.push_str(&fixed(p.locator, 7));
    out.push_str(&fixed(p.from, 3));
    out.push_str(&fixed(p.to, 3));
    out.push_str(CARRIER);
    out.push_str(&format!("{:04} ", p.flight_number.min(9999)));
    out.push_str(&format!("{day:03}"));
    out.push(compartment(p.cabin));
    out.push_str(&format!("{:03}{}", p.seat.row, p.seat.column_char()));
    out.push_str(&sequence_field(p.sequence));
    out.push('1');
    out.push_str("00");
    out
}

/// The flight number of a flight code `JW` + 1-4 digits.
pub fn flight_number(code: &str) -> Option<u16> {
    let digits = code.strip_prefix(CARRIER.trim_end())?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mandatory items read back, field by field, by their IATA offsets.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        format: String,
        legs: String,
        name: String,
        ticket_indicator: String,
        locator: String,
        from: String,
        to: String,
        carrier: String,
        flight: String,
        julian: u16,
        compartment: String,
        seat: String,
        sequence: String,
        status: String,
        variable_size: String,
    }

    fn decode(s: &str) -> Decoded {
        assert_eq!(s.len(), LEN, "{s:?}");
        assert!(s.is_ascii());
        let f = |from: usize, to: usize| s[from..to].to_owned();
        Decoded {
            format: f(0, 1),
            legs: f(1, 2),
            name: f(2, 22),
            ticket_indicator: f(22, 23),
            locator: f(23, 30),
            from: f(30, 33),
            to: f(33, 36),
            carrier: f(36, 39),
            flight: f(39, 44),
            julian: s[44..47].parse().unwrap(),
            compartment: f(47, 48),
            seat: f(48, 52),
            sequence: f(52, 57),
            status: f(57, 58),
            variable_size: f(58, 60),
        }
    }

    /// 2026-12-01T07:15:00Z: day 335 of 2026.
    const DEC_1: Millis = 1_796_109_300_000;

    fn pass<'a>(passenger: &'a str, seat: &str, flight_number: u16, sequence: u64) -> Pass<'a> {
        Pass {
            passenger,
            locator: "YZWBEE",
            from: "LHR",
            to: "CDG",
            flight_number,
            departs_at: DEC_1,
            cabin: Cabin::Economy,
            seat: SeatId::parse(seat).unwrap(),
            sequence,
        }
    }

    #[test]
    fn every_field_decodes_back() {
        let mut p = pass("Ada Lovelace", "14A", 100, 1);
        p.cabin = Cabin::Business;
        let s = encode(&p);
        assert_eq!(
            s,
            "M1LOVELACE/ADA        EYZWBEE LHRCDGJW 0100 335J014A0001 100"
        );
        assert_eq!(
            decode(&s),
            Decoded {
                format: "M".into(),
                legs: "1".into(),
                name: "LOVELACE/ADA        ".into(),
                ticket_indicator: "E".into(),
                locator: "YZWBEE ".into(),
                from: "LHR".into(),
                to: "CDG".into(),
                carrier: "JW ".into(),
                flight: "0100 ".into(),
                julian: 335,
                compartment: "J".into(),
                seat: "014A".into(),
                sequence: "0001 ".into(),
                status: "1".into(),
                variable_size: "00".into(),
            }
        );
    }

    #[test]
    fn the_date_is_the_utc_day_of_the_scheduled_departure() {
        let mut p = pass("Ada Lovelace", "1A", 1, 1);
        // 2027-01-01T00:30:00Z and the last minute of 2026
        p.departs_at = 1_798_763_400_000;
        assert_eq!(decode(&encode(&p)).julian, 1);
        p.departs_at = 1_798_761_540_000;
        assert_eq!(decode(&encode(&p)).julian, 365);
        // 2028 is a leap year: 31 December is day 366
        p.departs_at = 1_861_833_600_000;
        assert_eq!(decode(&encode(&p)).julian, 366);
    }

    #[test]
    fn names_follow_the_contract() {
        let cases = [
            ("Ada Lovelace", "LOVELACE/ADA"),
            ("Mary Ann Evans", "EVANS/MARY ANN"),
            ("Cher", "CHER"),
            ("Émilie du Châtelet", "CHATELET/EMILIE DU"),
            ("Nguyễn Văn An", "AN/NGUYEN VAN"),
            ("Trương Thị Hoa", "HOA/TRUONG THI"),
            ("Ĵoŝ Ŵaŷ Ħaẞ", "HASS/JOS WAY"),
            ("Zoë O'Brien-Smith", "OBRIENSMITH/ZOE"),
            ("Łukasz Żółć", "ZOLC/LUKASZ"),
            ("Jürgen Groß", "GROSS/JURGEN"),
            (
                "Alexandrina Wilhelmina Featherstonehaugh",
                "FEATHERSTONEHAUGH/AL",
            ),
            ("Bartholomew-Maximilian", "BARTHOLOMEWMAXIMILIA"),
            // other scripts transliterated too (the name used to be dropped)
            ("李 小龙", "XIAOLONG/LI"),
            ("Иван Петров", "PETROV/IVAN"),
            ("Юлия Щукина", "SHCHUKINA/IULIIA"),
            ("Ana 李", "LI/ANA"),
            ("Həsən Əliyev", "ALIYEV/HASAN"),
            ("Әлия Сәрсенова", "SARSENOVA/ALIIA"),
            ("Νίκος Παπαδόπουλος", "PAPADOPOULOS/NIKOS"),
            // compatibility forms of letters: ligatures, full width, digraphs, numerals
            ("ﬁ ligature", "LIGATURE/FI"),
            ("Ｆｕｌｌ Ｗｉｄｔｈ", "WIDTH/FULL"),
            ("Ⅻ Roman", "ROMAN/XII"),
            ("ǈ Test", "TEST/LJ"),
            ("Ann／Lee Doe", "DOE/ANNLEE"),
            ("Ann/Lee Doe", "DOE/ANN/LEE"),
            ("  Ada   Lovelace  ", "LOVELACE/ADA"),
            ("Ada\u{a0}Lovelace", "LOVELACE/ADA"),
            ("Mary\u{3000}Ann\u{a0}Evans", "EVANS/MARY ANN"),
            ("Ada\u{200b}Lovelace", "ADALOVELACE"),
        ];
        for (name, want) in cases {
            let field = name_field(name);
            assert_eq!(field.len(), NAME_LEN, "{name}");
            assert_eq!(field.trim_end(), want, "{name}");
            let s = encode(&pass(name, "12C", 100, 7));
            assert_eq!(decode(&s).name, field, "{name}");
            assert_eq!(decode(&s).locator, "YZWBEE ");
        }
    }

    #[test]
    fn rows_from_1_to_99() {
        for row in 1..=99u8 {
            let seat = format!("{row}K");
            let d = decode(&encode(&pass("A B", &seat, 100, 1)));
            assert_eq!(d.seat, format!("{row:03}K"));
            assert_eq!(
                SeatId::parse(d.seat.trim_start_matches('0')).unwrap().row,
                row
            );
        }
    }

    #[test]
    fn flight_numbers_of_one_to_four_digits() {
        for (code, n, field) in [
            ("JW1", 1, "0001 "),
            ("JW42", 42, "0042 "),
            ("JW100", 100, "0100 "),
            ("JW9999", 9999, "9999 "),
        ] {
            assert_eq!(flight_number(code), Some(n));
            assert_eq!(decode(&encode(&pass("A B", "1A", n, 1))).flight, field);
        }
        for bad in ["JW", "JW12345", "XX100", "JW1A", "100"] {
            assert_eq!(flight_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn sequences_and_compartments() {
        for (n, field) in [
            (1, "0001 "),
            (42, "0042 "),
            (9999, "9999 "),
            (10_000, "10000"),
        ] {
            assert_eq!(decode(&encode(&pass("A B", "1A", 1, n))).sequence, field);
        }
        let mut p = pass("A B", "30F", 1, 1);
        assert_eq!(decode(&encode(&p)).compartment, "Y");
        p.cabin = Cabin::Business;
        assert_eq!(decode(&encode(&p)).compartment, "J");
    }
}
