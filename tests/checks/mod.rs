//! The properties that both `tests/fuzz_props.rs` (proptest, bounded, in every
//! `cargo test`) and the cargo-fuzz targets in `fuzz/` (run by hand, millions of
//! inputs) check, each on arbitrary bytes: a frame, one method's params, and a
//! sequence of booking operations.

#![allow(dead_code)]

use jetway::domain::checkin::Window;
use jetway::domain::schedule::demo_schedule;
use jetway::domain::{
    Booking, BookingStatus, Cabin, FlightId, Locator, Money, RequestId, SeatId, TicketNumber,
    UserId, Username,
};
use jetway::protocol::params::{Call, Method, SeatChoice};
use jetway::protocol::{envelope, parse_request, ApiError};
use serde_json::Value;

/// A fixed "now" (November 2026) for the validations that look at the clock.
const NOW: i64 = 1_796_000_000_000;

/// Any bytes as a WebSocket text frame: it parses into a call whose params decode or
/// are refused, or it gets a well-formed JSON-RPC error.
pub fn frame(data: &[u8]) {
    let Ok(frame) = std::str::from_utf8(data) else {
        return; // the WebSocket layer refuses invalid UTF-8 before us
    };
    match parse_request(frame) {
        Ok(req) => {
            assert!(req.params.is_object());
            match Call::parse(&req.method, req.params) {
                Ok(call) => check_call(call),
                Err(e) => {
                    assert!(!Method::NAMES.contains(&req.method.as_str()));
                    assert_eq!(e.reason(), "method_not_found");
                    check_error(&Value::Null, &e);
                }
            }
        }
        Err((id, e)) => {
            assert!(matches!(
                id,
                Value::Null | Value::Number(_) | Value::String(_)
            ));
            check_error(&id, &e);
        }
    }
}

/// The first byte picks a method, the rest is its params as JSON text: every method's
/// params decode, and the identifiers in them parse, or are refused as `invalid_params`.
pub fn params(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let method = Method::NAMES[usize::from(pick) % Method::NAMES.len()];
    let Ok(p) = serde_json::from_slice::<Value>(json) else {
        return; // not JSON: `frame` covers that
    };
    match Call::parse(method, p) {
        Ok(call) => check_call(call),
        Err(e) => panic!("{method} is a known method, got {e:?}"),
    }
}

fn check_error(id: &Value, e: &ApiError) {
    let reply: Value = serde_json::from_str(&envelope::failure(id, e)).unwrap();
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(&reply["id"], id);
    assert!(reply["error"]["code"].is_i64());
    assert!(reply["error"]["data"]["reason"].is_string());
}

fn check_refusal(r: Result<(), &ApiError>) {
    if let Err(e) = r {
        assert!(
            ["invalid_params", "invalid_seat"].contains(&e.reason()),
            "{e:?}"
        );
        check_error(&Value::Null, e);
    }
}

/// Runs the identifier parsers the use cases apply to each decoded field.
fn check_call(call: Call) {
    fn seats(s: &Option<Vec<SeatId>>) {
        s.iter().flatten().for_each(|s| identifiers(&s.to_string()));
    }
    match call {
        Call::Register(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.username);
            identifiers(&p.password);
        })),
        Call::Login(p) => check_refusal(p.as_ref().map(|p| {
            [
                Some(&p.username),
                Some(&p.password),
                p.device_token.as_ref(),
            ]
            .into_iter()
            .flatten()
            .for_each(|s| identifiers(s))
        })),
        Call::Resume(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.token))),
        Call::Search(p) => check_refusal(p.as_ref().map(|p| {
            [&p.from, &p.to, &p.date]
                .into_iter()
                .flatten()
                .for_each(|s| identifiers(s))
        })),
        Call::FlightGet(p) | Call::Unsubscribe(p) => {
            check_refusal(p.as_ref().map(|p| identifiers(&p.flight_id)))
        }
        Call::Subscribe(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.flight_id))),
        Call::Hold(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.flight_id);
            identifiers(&p.request_id);
            if let SeatChoice::Named(named) = &p.seats {
                seats(&Some(named.clone()));
            }
            p.passengers.iter().for_each(|x| identifiers(&x.name));
        })),
        Call::Pay(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.locator);
            identifiers(&p.request_id);
            identifiers(&p.payment_method);
        })),
        Call::Cancel(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.locator);
            identifiers(&p.request_id);
            seats(&p.seats);
        })),
        Call::CheckIn(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.locator);
            identifiers(&p.request_id);
            seats(&p.seats);
        })),
        Call::ChangeSeat(p) => check_refusal(p.as_ref().map(|p| {
            [
                p.locator.clone(),
                p.from.to_string(),
                p.to.to_string(),
                p.request_id.clone(),
            ]
            .iter()
            .for_each(|s| identifiers(s))
        })),
        Call::BookingGet(p) | Call::BoardingPasses(p) => {
            check_refusal(p.as_ref().map(|p| identifiers(&p.locator)))
        }
        Call::HistoryList(p) => check_refusal(p.as_ref().map(|_| ())),
        Call::AdminCreateFlight(p) => {
            check_refusal(p.as_ref().map(|_| ()));
            if let Ok(p) = p {
                match jetway::app::new_flight(&p, NOW) {
                    Ok(f) => {
                        assert!(f.departs_at > NOW && f.arrives_at > f.departs_at);
                        assert!(FlightId::parse(f.id.as_str()).is_ok());
                    }
                    Err(e) => check_refusal(Err(&ApiError::from(e))),
                }
            }
        }
        Call::AdminCancelFlight(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.flight_id);
            identifiers(&p.reason);
        })),
        Call::Watch(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.airport))),
        Call::Unwatch(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.airport))),
        Call::AdminUpdateFlight(p) => check_refusal(p.as_ref().map(|p| {
            [&p.estimated_departs_at, &p.estimated_arrives_at, &p.reason]
                .into_iter()
                .flatten()
                .for_each(|s| identifiers(s));
            identifiers(&p.flight_id);
        })),
        Call::WaitlistJoin(p) => check_refusal(p.as_ref().map(|p| {
            identifiers(&p.flight_id);
            identifiers(&p.request_id);
            p.passengers.iter().for_each(|x| identifiers(&x.name));
        })),
        Call::WaitlistLeave(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.id))),
        Call::AdminResolveRefund(p) => check_refusal(p.as_ref().map(|p| identifiers(&p.refund_id))),
        Call::BookingsList(p) | Call::OrdersList(p) | Call::WaitlistList(p) => check_refusal(
            p.as_ref()
                .map(|p| p.before.iter().for_each(|s| identifiers(s))),
        ),
        Call::Logout | Call::Airports | Call::AdminStats | Call::AdminRefunds | Call::Discover => {}
    }
}

/// Every identifier parser accepts or refuses any string without panicking, and what
/// it accepts prints back to something it accepts again.
pub fn identifiers(s: &str) {
    if let Ok(seat) = SeatId::parse(s) {
        assert_eq!(SeatId::parse(&seat.to_string()).ok(), Some(seat));
    }
    if let Ok(l) = Locator::parse(s) {
        assert_eq!(l.to_string().len(), 6);
        assert_eq!(Locator::parse(&l.to_string()).ok(), Some(l));
    }
    if let Ok(f) = FlightId::parse(s) {
        assert_eq!(FlightId::parse(f.as_str()).ok(), Some(f));
    }
    let _ = Username::parse(s);
    let _ = RequestId::parse(s);
    let _ = TicketNumber::parse(s);
}

/// A checked-in passenger keeps seat and number until cancelled, numbers are never
/// given twice, and only a confirmed booking has (well-formed) boarding passes.
fn check_in_invariants(before: &Booking, b: &Booking, flight: &jetway::domain::Flight) {
    let all = || b.seats.iter().chain(&b.cancelled_seats);
    for s in before.seats.iter().filter(|s| s.check_in.is_some()) {
        assert!(
            all().any(|x| x.seat == s.seat && x.check_in == s.check_in),
            "checked-in {} moved or lost its number",
            s.seat
        );
    }
    let mut numbers: Vec<u64> = all()
        .filter_map(|s| s.check_in)
        .map(|c| c.sequence)
        .collect();
    let n = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), n, "a check-in number given twice");
    let passes = b.boarding_passes(flight, None);
    if b.status != BookingStatus::Confirmed {
        assert!(passes.is_empty());
    }
    for p in passes {
        assert!(p.bcbp.len() == 60 && p.bcbp.is_ascii(), "{:?}", p.bcbp);
    }
}

fn allowed(from: BookingStatus, to: BookingStatus) -> bool {
    use BookingStatus::*;
    from == to
        || matches!(
            (from, to),
            (Held, Confirmed) | (Held, Cancelled) | (Held, Expired) | (Confirmed, Refunded)
        )
}

/// The booking state machine driven by bytes: the first picks 1-4 seats, then one
/// operation per byte (the low 3 bits pick it, the rest is its argument). Refused
/// operations change nothing, only allowed transitions happen, terminal states are
/// final, a booking occupies its seats (each once) exactly while held or confirmed,
/// refunds never exceed the total, an expired hold can never be paid, and check-in
/// keeps its invariants ([`check_in_invariants`]).
pub fn booking(data: &[u8]) {
    let Some((&n, ops)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 4) + 1;
    let mut now = 1_000_000i64;
    let departs = now + 10 * 86_400_000;
    let fare = Money::cents(10_000).unwrap();
    let seats: Vec<_> = (0..n)
        .map(|i| {
            (
                SeatId::parse(&format!("{}A", i + 1)).unwrap(),
                Cabin::Economy,
                fare,
            )
        })
        .collect();
    let mut b = Booking::hold(
        Locator::from_random([1, 2, 3, 4, 5, 6]),
        UserId(7),
        FlightId::parse("JW1-2030-01-01").unwrap(),
        seats,
        (0..n).map(|i| format!("P{i}")).collect(),
        now,
        600_000,
    )
    .unwrap();
    let total = b.total;
    let mut ticket = 0u64;
    // open from the start: the ops move the clock by a day at most
    let window = Window::new(240, 45);
    let flight = &demo_schedule(jetway::domain::date_of(departs), 1)[0];
    let mut sequence = 0u64;
    for &op in ops.iter().take(64) {
        let before = b.clone();
        let arg = usize::from(op >> 3);
        let r = match op & 7 {
            0 => {
                now += i64::from(op) * 5_000;
                Ok(())
            }
            1 => b.check_payable(now).and_then(|_| {
                let t = (0..b.seats.len())
                    .map(|_| {
                        ticket += 1;
                        TicketNumber::new(729, ticket)
                    })
                    .collect();
                b.confirm(t, "ORD1".into(), now)
            }),
            2 => b.release(now),
            3 => b.expire(now),
            4 => b
                .refund_quote(None, departs, now)
                .and_then(|(s, m)| b.refund(&s, m, now)),
            5 => {
                let s = vec![b.seats[arg % b.seats.len()].seat];
                b.refund_quote(Some(&s), departs, now)
                    .and_then(|(s, m)| b.refund(&s, m, now))
            }
            6 => {
                let from = b.seats[arg % b.seats.len()].seat;
                let to = SeatId::parse(&format!("{}C", arg % 40 + 1)).unwrap();
                b.change_seat(from, to, Cabin::Economy, now)
            }
            _ => {
                let s = [b.seats[arg % b.seats.len()].seat];
                let next = || {
                    sequence += 1;
                    sequence
                };
                b.check_in(Some(&s), (&window, departs), next, now)
                    .map(|_| ())
            }
        };
        if r.is_err() {
            assert_eq!(b, before, "a refused operation changes nothing");
        }
        assert!(
            allowed(before.status, b.status),
            "{:?} -> {:?}",
            before.status,
            b.status
        );
        if matches!(
            before.status,
            BookingStatus::Cancelled | BookingStatus::Expired | BookingStatus::Refunded
        ) {
            assert_eq!(b, before, "terminal states are final");
        }
        let occupied: Vec<SeatId> = b.occupied_seats().collect();
        let mut uniq = occupied.clone();
        uniq.sort_by_key(|s| s.to_string());
        uniq.dedup();
        assert_eq!(uniq.len(), occupied.len(), "a seat occupied twice");
        assert_eq!(
            occupied.is_empty(),
            !b.status.occupies_seats(),
            "{:?} occupies {occupied:?}",
            b.status
        );
        if let Some(r) = b.refund {
            assert!(r >= Money::ZERO && r <= total);
        }
        check_in_invariants(&before, &b, flight);
        if b.status == BookingStatus::Held && b.hold_expires_at.is_some_and(|t| now >= t) {
            assert!(b.check_payable(now).is_err());
        }
    }
}
