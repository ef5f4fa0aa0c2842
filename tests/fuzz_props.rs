//! Fuzz-style property tests that run in every `cargo test` (bounded). The properties
//! live in `tests/checks/`, shared with the cargo-fuzz targets in `fuzz/` (see
//! docs/security.md); here proptest feeds them random and structured inputs.

mod checks;

use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep, with the protocol's own names in it.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("flights.search"),
            Just("booking.hold"),
            Just("2.0"),
            Just("12A"),
            Just("ABC234"),
            Just("EUR"),
            Just("2030-01-01T10:00:00Z"),
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("jsonrpc".to_owned()),
                    Just("id".to_owned()),
                    Just("method".to_owned()),
                    Just("params".to_owned()),
                    Just("flight_id".to_owned()),
                    Just("seats".to_owned()),
                    Just("passengers".to_owned()),
                    Just("request_id".to_owned()),
                    Just("locator".to_owned()),
                    Just("amount".to_owned()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_text_frame_is_answered_without_panic(s in ".{0,200}") {
        checks::frame(s.as_bytes());
    }

    #[test]
    fn any_json_frame_is_answered_without_panic(v in json_value()) {
        checks::frame(v.to_string().as_bytes());
    }

    #[test]
    fn any_params_for_any_method_decode_or_are_refused(pick in any::<u8>(), p in json_value()) {
        let mut data = vec![pick];
        data.extend(p.to_string().bytes());
        checks::params(&data);
    }

    #[test]
    fn identifiers_parse_or_refuse(s in ".{0,80}") {
        checks::identifiers(&s);
    }

    #[test]
    fn booking_state_machine_keeps_its_invariants(
        data in prop::collection::vec(any::<u8>(), 1..25),
    ) {
        checks::booking(&data);
    }
}
