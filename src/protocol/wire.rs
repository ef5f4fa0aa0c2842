//! Result shapes exactly as the contract names them, built from domain values.
//! Private fields (owner, charge ids) never leave through here.

use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::domain::checkin::BoardingPass;
use crate::domain::flight::{time_zone, Airport};
use crate::domain::{
    rfc3339, Aircraft, Booking, Cabin, Flight, FlightId, Locator, Millis, Order, SeatId, SeatInfo,
    SeatStatus, TicketNumber,
};

/// Seats left per cabin, in the aircraft's cabin order.
pub type CabinCounts = Vec<(Cabin, u32)>;

/// `Money`: `{amount, currency}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MoneyShape {
    amount: i64,
    currency: &'static str,
}

pub fn money(m: crate::domain::Money) -> MoneyShape {
    MoneyShape {
        amount: m.amount(),
        currency: crate::domain::money::CURRENCY,
    }
}

/// Serializes through `Display`, without a `String` in between.
fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub fn flight(f: &Flight, available: &CabinCounts, now: Millis) -> Value {
    let aircraft = f.aircraft();
    let cabins: Vec<Value> = available
        .iter()
        .map(|(cabin, left)| {
            json!({
                "cabin": cabin.as_str(),
                "fare": money(f.fares.of(*cabin)),
                "seats_total": aircraft.seats_in(*cabin),
                "seats_available": left,
            })
        })
        .collect();
    let mut v = json!({
        "flight_id": f.id,
        "number": f.number,
        "from": f.from,
        "to": f.to,
        "departs_at": rfc3339(f.departs_at),
        "arrives_at": rfc3339(f.arrives_at),
        "aircraft": aircraft.code,
        "aircraft_name": aircraft.name,
        "status": f.status(now).as_str(),
        "from_tz": time_zone(&f.from),
        "to_tz": time_zone(&f.to),
        "cabins": cabins,
    });
    if let Some(t) = f.estimated_departs_at {
        v["estimated_departs_at"] = json!(rfc3339(t));
    }
    if let Some(t) = f.estimated_arrives_at {
        v["estimated_arrives_at"] = json!(rfc3339(t));
    }
    if let Some(reason) = &f.cancelled {
        v["cancel_reason"] = json!(reason);
    }
    v
}

pub fn seat(info: &SeatInfo, status: SeatStatus) -> Value {
    json!({
        "seat": info.id.to_string(),
        "cabin": info.cabin.as_str(),
        "status": status.as_str(),
        "row": info.id.row,
        "column": info.id.column_char().to_string(),
        "window": info.window,
        "aisle": info.aisle,
        "exit": info.exit,
    })
}

pub fn layout(a: &Aircraft) -> Value {
    let cabins: Vec<Value> = a
        .cabins
        .iter()
        .map(|c| json!({ "cabin": c.cabin.as_str(), "rows": c.rows().collect::<Vec<_>>(), "columns": c.columns }))
        .collect();
    json!({ "cabins": cabins, "exit_rows": a.exit_rows })
}

/// One atomic seat change: `{version, seats:[{seat, status}], cabins:[{cabin, seats_available}]}`.
pub fn change(version: u64, seats: &[(SeatId, SeatStatus)], cabins: &CabinCounts) -> Value {
    json!({
        "version": version,
        "seats": seats.iter().map(|(s, st)| json!({"seat": s.to_string(), "status": st.as_str()})).collect::<Vec<_>>(),
        "cabins": cabin_counts(cabins),
    })
}

pub fn cabin_counts(cabins: &CabinCounts) -> Vec<Value> {
    cabins
        .iter()
        .map(|(c, n)| json!({"cabin": c.as_str(), "seats_available": n}))
        .collect()
}

/// `Booking`, as its owner sees it: written straight to the encoder (a booking is in
/// most replies and pushes, so no `Value` tree of it is built).
#[derive(Serialize)]
pub struct BookingShape<'a> {
    locator: &'a Locator,
    flight_id: &'a FlightId,
    status: &'static str,
    seats: Vec<BookedSeatShape<'a>>,
    total: MoneyShape,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund: Option<MoneyShape>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cancelled_seats: Vec<BookedSeatShape<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flight: Option<FlightTimes<'a>>,
}

#[derive(Serialize)]
struct BookedSeatShape<'a> {
    #[serde(serialize_with = "display")]
    seat: SeatId,
    passenger: &'a str,
    cabin: &'static str,
    fare: MoneyShape,
    checked_in: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket_number: Option<&'a TicketNumber>,
}

/// A booking's flight: its number, route and times.
#[derive(Serialize)]
struct FlightTimes<'a> {
    number: &'a str,
    from: &'a str,
    to: &'a str,
    departs_at: String,
    arrives_at: String,
    from_tz: &'static str,
    to_tz: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_departs_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_arrives_at: Option<String>,
}

pub fn booking<'a>(b: &'a Booking, f: Option<&'a Flight>) -> BookingShape<'a> {
    let seat = |s: &'a crate::domain::BookedSeat, checked_in: bool| BookedSeatShape {
        seat: s.seat,
        passenger: &s.passenger,
        cabin: s.cabin.as_str(),
        fare: money(s.fare),
        checked_in,
        ticket_number: s.ticket_number.as_ref(),
    };
    BookingShape {
        locator: &b.locator,
        flight_id: &b.flight_id,
        status: b.status.as_str(),
        seats: b
            .seats
            .iter()
            .map(|s| seat(s, b.checked_in(s, f)))
            .collect(),
        total: money(b.total),
        created_at: rfc3339(b.created_at),
        updated_at: rfc3339(b.updated_at),
        hold_expires_at: b
            .hold_expires_at
            .filter(|_| b.status == crate::domain::BookingStatus::Held)
            .map(rfc3339),
        refund: b.refund.map(money),
        cancelled_seats: b.cancelled_seats.iter().map(|s| seat(s, false)).collect(),
        order_id: b.order_id.as_deref(),
        flight: f.map(|f| FlightTimes {
            number: &f.number,
            from: &f.from,
            to: &f.to,
            departs_at: rfc3339(f.departs_at),
            arrives_at: rfc3339(f.arrives_at),
            from_tz: time_zone(&f.from),
            to_tz: time_zone(&f.to),
            estimated_departs_at: f.estimated_departs_at.map(rfc3339),
            estimated_arrives_at: f.estimated_arrives_at.map(rfc3339),
        }),
    }
}

/// `BoardingPass`: `{flight_id, seat, passenger, sequence, bcbp}`.
pub fn boarding_pass(flight: &FlightId, p: &BoardingPass) -> Value {
    json!({
        "flight_id": flight,
        "seat": p.seat.to_string(),
        "passenger": p.passenger,
        "sequence": p.sequence,
        "bcbp": p.bcbp,
    })
}

/// `Order`: written straight to the encoder, as a booking is.
#[derive(Serialize)]
pub struct OrderShape<'a> {
    order_id: &'a str,
    locator: &'a Locator,
    status: &'static str,
    amount: MoneyShape,
    refunded: MoneyShape,
    created_at: String,
}

pub fn order(o: &Order) -> OrderShape<'_> {
    OrderShape {
        order_id: &o.order_id,
        locator: &o.locator,
        status: o.status.as_str(),
        amount: money(o.amount),
        refunded: money(o.refunded),
        created_at: rfc3339(o.created_at),
    }
}

/// A history event: `{at, type, locator?}` and the members of `detail` (an object)
/// that do not clash with those.
pub fn history_event(at: Millis, kind: &str, locator: Option<&Locator>, detail: &Value) -> Value {
    let mut v = json!({ "at": rfc3339(at), "type": kind });
    if let Some(l) = locator {
        v["locator"] = json!(l);
    }
    if let (Value::Object(extra), Some(o)) = (detail, v.as_object_mut()) {
        for (k, x) in extra {
            o.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

pub fn airport(a: &Airport) -> Value {
    json!({ "code": a.code, "city": a.city, "name": a.name, "tz": a.tz })
}

/// A waitlist entry; `position` only while it is waiting.
pub fn waitlist_entry(e: &crate::domain::WaitlistEntry, position: Option<usize>) -> Value {
    let mut v = json!({
        "id": e.id,
        "flight_id": e.flight_id,
        "cabin": e.cabin.as_str(),
        "count": e.count(),
        "status": e.status.as_str(),
        "created_at": rfc3339(e.created_at),
    });
    if let Some(p) = position {
        v["position"] = json!(p);
    }
    if let Some(l) = &e.locator {
        v["locator"] = json!(l);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BookingStatus, FlightId, Locator, Money, TicketNumber, UserId};

    fn sample_booking() -> Booking {
        let mut b = Booking::hold(
            Locator::parse("ABC234").unwrap(),
            UserId(42),
            FlightId::parse("JW1-20260101").unwrap(),
            vec![(
                SeatId::parse("12A").unwrap(),
                Cabin::Economy,
                Money::cents(100).unwrap(),
            )],
            vec!["Ada".into()],
            0,
            1000,
        )
        .unwrap();
        b.confirm(vec![TicketNumber::new(729, 1)], "O1".into(), 5)
            .unwrap();
        b
    }

    #[test]
    fn booking_has_contract_fields_and_no_owner() {
        let v = serde_json::to_value(booking(&sample_booking(), None)).unwrap();
        for k in [
            "locator",
            "flight_id",
            "status",
            "seats",
            "total",
            "created_at",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v.get("user_id").is_none());
        assert_eq!(v["status"], "confirmed");
        assert_eq!(v["seats"][0]["ticket_number"], "7290000000001");
        assert!(v.get("hold_expires_at").is_none());
        assert_eq!(v["total"], json!({"amount":100,"currency":"EUR"}));
    }

    #[test]
    fn a_booking_with_every_optional_member_has_the_contracts_shape() {
        let mut b = sample_booking();
        let mut gone = b.seats[0].clone();
        gone.seat = SeatId::parse("12B").unwrap();
        gone.passenger = "Bo".into();
        gone.ticket_number = None;
        b.cancelled_seats = vec![gone];
        b.refund = Some(Money::cents(80).unwrap());
        let f = Flight {
            estimated_departs_at: Some(1_500_000),
            ..crate::domain::flight::sample()
        };
        let eur = |amount: i64| json!({"amount": amount, "currency": "EUR"});
        assert_eq!(
            serde_json::to_value(booking(&b, Some(&f))).unwrap(),
            json!({
                "locator": "ABC234",
                "flight_id": "JW1-20260101",
                "status": "confirmed",
                "seats": [{"seat": "12A", "passenger": "Ada", "cabin": "economy", "fare": eur(100),
                           "checked_in": false, "ticket_number": "7290000000001"}],
                "total": eur(100),
                "created_at": "1970-01-01T00:00:00Z",
                "updated_at": "1970-01-01T00:00:00.005Z",
                "refund": eur(80),
                "cancelled_seats": [{"seat": "12B", "passenger": "Bo", "cabin": "economy",
                                     "fare": eur(100), "checked_in": false}],
                "order_id": "O1",
                "flight": {"number": "JW1", "from": "LHR", "to": "CDG",
                           "departs_at": "1970-01-01T00:16:40Z", "arrives_at": "1970-01-01T00:33:20Z",
                           "from_tz": time_zone("LHR"), "to_tz": time_zone("CDG"),
                           "estimated_departs_at": "1970-01-01T00:25:00Z"},
            })
        );
    }

    #[test]
    fn held_booking_shows_expiry() {
        let mut b = sample_booking();
        b.status = BookingStatus::Held;
        b.hold_expires_at = Some(1000);
        let v = serde_json::to_value(booking(&b, None)).unwrap();
        assert_eq!(v["hold_expires_at"], "1970-01-01T00:00:01Z");
    }

    #[test]
    fn order_hides_charge_id() {
        let o = Order {
            order_id: "O1".into(),
            locator: Locator::parse("ABC234").unwrap(),
            user_id: UserId(1),
            status: crate::domain::OrderStatus::PartiallyRefunded,
            amount: Money::cents(10).unwrap(),
            refunded: Money::cents(5).unwrap(),
            created_at: 0,
            charge_id: "ch_secret".into(),
        };
        let v = serde_json::to_value(order(&o)).unwrap();
        assert_eq!(v["status"], "partially_refunded");
        assert!(!v.to_string().contains("ch_secret"));
    }
}
