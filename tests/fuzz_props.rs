//! Fuzz-style property tests that run in every `cargo test` (bounded): the frame
//! and params decoders never panic and always answer with a well-formed error, and
//! the booking state machine keeps its invariants under any sequence of operations.
//! The same targets exist for `cargo fuzz` in fuzz/ (see docs/security.md).

use jetway::domain::{
    Booking, BookingStatus, Cabin, FlightId, Locator, Money, SeatId, TicketNumber, UserId,
};
use jetway::protocol::params::{self, decode};
use jetway::protocol::{envelope, parse_request};
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep.
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
            Just("ABC234")
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
                    "[a-z_]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Decodes params for every method, as the dispatcher would.
pub fn decode_all(p: &Value) {
    let _ = decode::<params::Credentials>(p.clone());
    let _ = decode::<params::Resume>(p.clone());
    let _ = decode::<params::Search>(p.clone());
    let _ = decode::<params::FlightRef>(p.clone());
    let _ = decode::<params::Subscribe>(p.clone());
    let _ = decode::<params::Hold>(p.clone());
    let _ = decode::<params::Pay>(p.clone());
    let _ = decode::<params::Cancel>(p.clone());
    let _ = decode::<params::ChangeSeat>(p.clone());
    let _ = decode::<params::LocatorRef>(p.clone());
    let _ = decode::<params::Limit>(p.clone());
}

fn check_frame(frame: &str) {
    match parse_request(frame) {
        Ok(req) => {
            assert!(req.params.is_object());
            decode_all(&req.params);
        }
        Err((id, e)) => {
            assert!(matches!(
                id,
                Value::Null | Value::Number(_) | Value::String(_)
            ));
            let reply: Value = serde_json::from_str(&envelope::failure(&id, &e)).unwrap();
            assert_eq!(reply["jsonrpc"], "2.0");
            assert!(reply["error"]["code"].is_i64());
            assert!(reply["error"]["data"]["reason"].is_string());
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_text_frame_is_answered_without_panic(s in ".{0,200}") {
        check_frame(&s);
    }

    #[test]
    fn any_json_frame_is_answered_without_panic(v in json_value()) {
        check_frame(&v.to_string());
        decode_all(&v);
    }

    #[test]
    fn requests_with_any_params_decode_or_fail_cleanly(
        method in prop_oneof![Just("booking.hold"), Just("booking.pay"), Just("flights.search")],
        p in json_value(),
    ) {
        let frame = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": p}).to_string();
        check_frame(&frame);
    }

    #[test]
    fn identifiers_parse_or_refuse(s in ".{0,80}") {
        if let Ok(seat) = SeatId::parse(&s) {
            prop_assert_eq!(SeatId::parse(&seat.to_string()).ok(), Some(seat));
        }
        if let Ok(l) = Locator::parse(&s) {
            prop_assert_eq!(l.to_string().len(), 6);
        }
        let _ = FlightId::parse(&s);
        let _ = jetway::domain::Username::parse(&s);
        let _ = jetway::domain::RequestId::parse(&s);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Pay,
    Release,
    Expire,
    RefundAll,
    RefundSome(usize),
    ChangeSeat(usize, u8),
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Pay),
        Just(Op::Release),
        Just(Op::Expire),
        Just(Op::RefundAll),
        (0usize..4).prop_map(Op::RefundSome),
        (0usize..4, 1u8..40).prop_map(|(i, r)| Op::ChangeSeat(i, r)),
        (0i64..400_000).prop_map(Op::Wait),
    ]
}

fn allowed(from: BookingStatus, to: BookingStatus) -> bool {
    use BookingStatus::*;
    from == to
        || matches!(
            (from, to),
            (Held, Confirmed) | (Held, Cancelled) | (Held, Expired) | (Confirmed, Refunded)
        )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn booking_state_machine_keeps_its_invariants(
        n in 1usize..=4,
        ops in prop::collection::vec(op(), 0..24),
    ) {
        let ttl = 600_000;
        let mut now = 1_000_000i64;
        let departs = now + 10 * 86_400_000;
        let fare = Money::cents(10_000).unwrap();
        let seats: Vec<_> = (0..n)
            .map(|i| (SeatId::parse(&format!("{}A", i + 1)).unwrap(), Cabin::Economy, fare))
            .collect();
        let mut b = Booking::hold(
            Locator::from_random([1, 2, 3, 4, 5, 6]),
            UserId(7),
            FlightId::parse("JW1-2030-01-01").unwrap(),
            seats,
            (0..n).map(|i| format!("P{i}")).collect(),
            now,
            ttl,
        )
        .unwrap();
        let total = b.total;
        let mut ticket = 1u64;
        for op in ops {
            let before = b.clone();
            let r = match op {
                Op::Wait(ms) => { now += ms; Ok(()) }
                Op::Pay => b.check_payable(now).and_then(|_| {
                    let t = (0..b.seats.len()).map(|_| { ticket += 1; TicketNumber::new(729, ticket) }).collect();
                    b.confirm(t, "ORD1".into(), now)
                }),
                Op::Release => b.release(now),
                Op::Expire => b.expire(now),
                Op::RefundAll => b.refund_quote(None, departs, now).and_then(|(s, m)| b.refund(&s, m, now)),
                Op::RefundSome(i) => {
                    let s = b.seats.get(i % b.seats.len()).map(|s| vec![s.seat]).unwrap_or_default();
                    b.refund_quote(Some(&s), departs, now).and_then(|(s, m)| b.refund(&s, m, now))
                }
                Op::ChangeSeat(i, row) => {
                    let from = b.seats[i % b.seats.len()].seat;
                    let to = SeatId::parse(&format!("{row}C")).unwrap();
                    b.change_seat(from, to, Cabin::Economy, now)
                }
            };
            if r.is_err() {
                prop_assert_eq!(&b, &before, "a refused operation changes nothing");
            }
            prop_assert!(allowed(before.status, b.status), "{:?} -> {:?}", before.status, b.status);
            // terminal states are final
            if matches!(before.status, BookingStatus::Cancelled | BookingStatus::Expired | BookingStatus::Refunded) {
                prop_assert_eq!(&b, &before);
            }
            // occupied seats: only while held or confirmed, never twice
            let occ: Vec<SeatId> = b.occupied_seats().collect();
            let mut uniq = occ.clone();
            uniq.sort_by_key(|s| s.to_string());
            uniq.dedup();
            prop_assert_eq!(uniq.len(), occ.len());
            if !b.status.occupies_seats() {
                prop_assert!(occ.is_empty(), "{:?} occupies {:?}", b.status, occ);
            } else {
                prop_assert!(!occ.is_empty());
            }
            // money: refunds never exceed what was paid
            if let Some(r) = b.refund {
                prop_assert!(r <= total);
                prop_assert!(r >= Money::ZERO);
            }
            // a held booking past its expiry can never be paid
            if b.status == BookingStatus::Held && b.hold_expires_at.is_some_and(|t| now >= t) {
                prop_assert!(b.check_payable(now).is_err());
            }
        }
    }
}
