//! End-to-end behaviour of the JSON-RPC API over a real WebSocket.

mod common;

use common::*;
use futures::SinkExt;
use jetway::protocol::params::{Access, Method};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn register_login_resume_logout() {
    let s = Server::start().await;
    let mut a = s.client().await;
    let name = unique_name("ada");
    let r = a.register(&name).await;
    assert_eq!(r["user"]["username"], name.as_str());
    assert_eq!(r["user"]["role"], "passenger");
    assert_eq!(r["token"].as_str().unwrap().len(), 64);
    assert!(r["expires_at"].as_str().unwrap().ends_with('Z'));

    // same name, any case: taken
    let mut b = s.client().await;
    assert_eq!(
        b.reason(
            "auth.register",
            json!({"username": name.to_uppercase(), "password": PASSWORD})
        )
        .await,
        "username_taken"
    );
    assert_eq!(
        b.reason(
            "auth.login",
            json!({"username": name, "password": "wrong password"})
        )
        .await,
        "bad_credentials"
    );
    assert_eq!(
        b.reason(
            "auth.login",
            json!({"username": "nobody-here", "password": PASSWORD})
        )
        .await,
        "bad_credentials"
    );
    let login = b
        .ok(
            "auth.login",
            json!({"username": name, "password": PASSWORD}),
        )
        .await;
    assert_eq!(login["user"]["id"], r["user"]["id"]);

    // a token resumes on a new connection
    let token = login["token"].as_str().unwrap();
    let mut c = s.client().await;
    assert_eq!(
        c.reason("bookings.list", json!({})).await,
        "unauthenticated"
    );
    c.ok("auth.resume", json!({"token": token})).await;
    c.ok("bookings.list", json!({})).await;

    // logout stops the token everywhere
    b.ok("auth.logout", json!({})).await;
    assert_eq!(c.reason("bookings.list", json!({})).await, "invalid_token");
    let mut d = s.client().await;
    assert_eq!(
        d.reason("auth.resume", json!({"token": token})).await,
        "invalid_token"
    );
    assert_eq!(
        d.reason("auth.resume", json!({"token": "garbage"})).await,
        "invalid_token"
    );
    // the first session is unaffected
    a.ok("bookings.list", json!({})).await;
    s.stop().await;
}

#[tokio::test]
async fn registration_is_validated() {
    let s = Server::start().await;
    let mut c = s.client().await;
    for (u, p, reason) in [
        ("ab", PASSWORD, "invalid_params"),
        ("has space", PASSWORD, "invalid_params"),
        ("validname", "short", "weak_password"),
        ("validname", &"x".repeat(129) as &str, "weak_password"),
    ] {
        assert_eq!(
            c.reason("auth.register", json!({"username": u, "password": p}))
                .await,
            reason,
            "{u} {p}"
        );
    }
    assert_eq!(
        c.reason("auth.register", json!({"username": "abc"})).await,
        "invalid_params"
    );
    s.stop().await;
}

#[tokio::test]
async fn search_filters_and_flight_map() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let airports = c.ok("flights.airports", json!({})).await;
    assert!(airports["airports"].as_array().unwrap().len() >= 8);
    let all = c.ok("flights.search", json!({"limit": 500})).await;
    let flights = all["flights"].as_array().unwrap();
    assert!(flights.len() >= 100, "{}", flights.len());
    let f = &flights[0];
    let (from, to) = (f["from"].as_str().unwrap(), f["to"].as_str().unwrap());
    let date = &f["departs_at"].as_str().unwrap()[..10];
    let found = c
        .ok(
            "flights.search",
            json!({"from": from, "to": to, "date": date}),
        )
        .await;
    let found = found["flights"].as_array().unwrap();
    assert!(!found.is_empty());
    for g in found {
        assert_eq!(g["from"], from);
        assert_eq!(g["to"], to);
        assert!(g["departs_at"].as_str().unwrap().starts_with(date));
    }
    let lower = c
        .ok(
            "flights.search",
            json!({"from": from.to_lowercase(), "limit": 3}),
        )
        .await;
    assert_eq!(lower["flights"].as_array().unwrap().len(), 3);
    for bad in [
        json!({"from": "LONDON"}),
        json!({"date": "25/11/2026"}),
        json!({"date": format!("+{date}")}),
        json!({"date": format!("-{date}")}),
        json!({"date": format!("{date} ")}),
        json!({"limit": 0}),
        json!({"limit": "x"}),
    ] {
        assert_eq!(
            c.reason("flights.search", bad.clone()).await,
            "invalid_params",
            "{bad}"
        );
    }

    let m = c
        .ok("flights.get", json!({"flight_id": f["flight_id"]}))
        .await;
    let seats = m["seats"].as_array().unwrap();
    let total: u64 = f["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seats_total"].as_u64().unwrap())
        .sum();
    assert_eq!(seats.len() as u64, total);
    assert!(seats
        .iter()
        .all(|s| !s["seat"].as_str().unwrap().starts_with("13")));
    assert!(seats.iter().any(|s| s["exit"] == true));
    assert!(
        seats.iter().any(|s| s["cabin"] == "business")
            && seats.iter().any(|s| s["cabin"] == "economy")
    );
    assert_eq!(m["version"], 0);
    assert_eq!(
        c.reason("flights.get", json!({"flight_id": "no-such-flight"}))
            .await,
        "not_found"
    );
    assert_eq!(c.reason("flights.get", json!({})).await, "invalid_params");
    s.stop().await;
}

#[tokio::test]
async fn hold_pay_cancel_with_refund_orders_and_history() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut c, fid, "economy", 2).await;
    let b = hold(&mut c, fid, &seats, "h1").await;
    assert_eq!(b["status"], "held");
    let fare = f["cabins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cabin"] == "economy")
        .unwrap()["fare"]["amount"]
        .as_i64()
        .unwrap();
    assert_eq!(b["total"]["amount"].as_i64().unwrap(), 2 * fare);
    let loc = b["locator"].as_str().unwrap();

    // the map shows the seats held, and the cabin count went down
    let m = c.ok("flights.get", json!({"flight_id": fid})).await;
    assert_eq!(m["version"], 1);
    let held: Vec<_> = m["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "held")
        .map(|s| s["seat"].clone())
        .collect();
    assert_eq!(held, seats.iter().map(|s| json!(s)).collect::<Vec<_>>());

    assert_eq!(
        c.reason("booking.pay", json!({"locator": loc, "payment_method": "pm_card_chargeCustomerFail", "request_id": "p0"})).await,
        "payment_declined"
    );
    let paid = c
        .ok(
            "booking.pay",
            json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"}),
        )
        .await;
    assert_eq!(paid["booking"]["status"], "confirmed");
    assert_eq!(paid["order"]["status"], "paid");
    assert_eq!(paid["order"]["amount"], b["total"]);
    let tickets: Vec<&str> = paid["booking"]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ticket_number"].as_str().unwrap())
        .collect();
    assert_eq!(tickets.len(), 2);
    assert_ne!(tickets[0], tickets[1]);
    assert!(tickets
        .iter()
        .all(|t| t.len() == 13 && t.bytes().all(|b| b.is_ascii_digit())));
    // paid again under a new request id (the first reply lost): the booking as paid,
    // no second charge; with another payment method, refused
    let again = c
        .ok(
            "booking.pay",
            json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p2"}),
        )
        .await;
    assert_eq!(again["order"], paid["order"]);
    assert_eq!(
        c.reason(
            "booking.pay",
            json!({"locator": loc, "payment_method": "pm_card_mastercard", "request_id": "p3"})
        )
        .await,
        "invalid_state"
    );

    let cancelled = c
        .ok(
            "booking.cancel",
            json!({"locator": loc, "request_id": "c1"}),
        )
        .await;
    assert_eq!(cancelled["booking"]["status"], "refunded");
    assert_eq!(
        cancelled["booking"]["refund"], b["total"],
        "economy more than 24 h out: full refund"
    );
    let m = c.ok("flights.get", json!({"flight_id": fid})).await;
    assert!(m["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| seats.contains(&s["seat"].as_str().unwrap().to_owned()))
        .all(|s| s["status"] == "available"));

    let orders = c.ok("orders.list", json!({})).await;
    assert_eq!(orders["orders"][0]["status"], "refunded");
    assert_eq!(orders["orders"][0]["refunded"], b["total"]);
    let list = c.ok("bookings.list", json!({})).await;
    assert_eq!(list["bookings"][0]["locator"], loc);
    let h = c.ok("history.list", json!({})).await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["refunded", "paid", "declined", "held", "registered"]
    );
    assert_eq!(h["events"][0]["locator"], loc);
    assert_eq!(
        c.ok("history.list", json!({"limit": 2})).await["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.stop().await;
}

#[tokio::test]
async fn holds_are_all_or_nothing_and_validated() {
    let s = Server::start().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.new_user().await;
    b.new_user().await;
    let f = later_flight(&mut a).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut a, fid, "economy", 3).await;
    hold(&mut a, fid, &seats[..2], "a1").await;
    let e = b
        .err("booking.hold", json!({"flight_id": fid, "seats": [seats[1], seats[2]], "passengers": passengers(2), "request_id": "b1"}))
        .await;
    assert_eq!(e["data"]["reason"], "seat_unavailable");
    assert_eq!(e["data"]["seats"], json!([seats[1]]));
    assert_eq!(e["code"], -32009);
    // nothing of the failed hold happened: seats[2] is still free
    hold(&mut b, fid, &seats[2..3], "b2").await;

    let p1 = passengers(1);
    let cases = [
        (
            json!({"flight_id": fid, "seats": ["99Z"], "passengers": p1, "request_id": "x1"}),
            "invalid_seat",
        ),
        (
            json!({"flight_id": fid, "seats": ["13A"], "passengers": p1, "request_id": "x2"}),
            "invalid_seat",
        ),
        (
            json!({"flight_id": fid, "seats": ["20A", "20A"], "passengers": passengers(2), "request_id": "x3"}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "seats": ["20A"], "passengers": passengers(2), "request_id": "x4"}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "seats": [], "passengers": [], "request_id": "x5"}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "seats": ["20A"], "passengers": [{"name": ""}], "request_id": "x6"}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "seats": ["20A"], "passengers": p1, "request_id": ""}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "seats": ["20A"], "passengers": p1, "request_id": "x".repeat(65)}),
            "invalid_params",
        ),
        (
            json!({"flight_id": "JW1-19990101", "seats": ["20A"], "passengers": p1, "request_id": "x7"}),
            "not_found",
        ),
        (
            json!({"flight_id": fid, "count": 10, "cabin": "economy", "passengers": passengers(10), "request_id": "x8"}),
            "invalid_params",
        ),
        (
            json!({"flight_id": fid, "count": 1, "cabin": "first", "passengers": p1, "request_id": "x9"}),
            "invalid_params",
        ),
    ];
    for (params, reason) in cases {
        assert_eq!(
            b.reason("booking.hold", params.clone()).await,
            reason,
            "{params}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn best_available_seats_a_party_together() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let r = c
        .ok("booking.hold", json!({"flight_id": fid, "count": 3, "cabin": "economy", "passengers": passengers(3), "request_id": "best"}))
        .await;
    let seats: Vec<String> = r["booking"]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seat"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seats.len(), 3);
    let rows: std::collections::HashSet<String> = seats
        .iter()
        .map(|s| s.trim_end_matches(char::is_alphabetic).to_owned())
        .collect();
    assert_eq!(rows.len(), 1, "one row: {seats:?}");
    s.stop().await;
}

#[tokio::test]
async fn nobody_touches_another_users_booking() {
    let s = Server::start().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.new_user().await;
    b.new_user().await;
    let f = later_flight(&mut a).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut a, fid, "economy", 1).await;
    let bk = hold(&mut a, fid, &seats, "a").await;
    let loc = bk["locator"].as_str().unwrap();
    assert_eq!(
        b.reason("booking.get", json!({"locator": loc})).await,
        "not_found"
    );
    assert_eq!(
        b.reason(
            "booking.pay",
            json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "x"})
        )
        .await,
        "not_found"
    );
    assert_eq!(
        b.reason("booking.cancel", json!({"locator": loc, "request_id": "y"}))
            .await,
        "not_found"
    );
    assert_eq!(
        b.reason("booking.get", json!({"locator": "ZZZZZZ"})).await,
        "not_found"
    );
    assert_eq!(
        b.reason("booking.get", json!({"locator": "bad"})).await,
        "not_found"
    );
    assert!(b.ok("bookings.list", json!({})).await["bookings"]
        .as_array()
        .unwrap()
        .is_empty());
    // the owner's booking is untouched
    assert_eq!(
        a.ok("booking.get", json!({"locator": loc})).await["booking"]["status"],
        "held"
    );
    s.stop().await;
}

#[tokio::test]
async fn login_is_required_for_bookings() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let needs_login = Method::ALL
        .iter()
        .filter(|m| m.access() == Access::LoggedIn);
    for m in needs_login {
        assert_eq!(
            c.reason(m.name(), json!({})).await,
            "unauthenticated",
            "{m:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn request_ids_make_writes_idempotent_across_restarts() {
    let mut s = Server::start().await;
    let mut c = s.client().await;
    let token = c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut c, fid, "economy", 1).await;
    let params = json!({"flight_id": fid, "seats": seats, "passengers": passengers(1), "request_id": "same"});
    let first = c.ok("booking.hold", params.clone()).await;
    let again = c.ok("booking.hold", params.clone()).await;
    assert_eq!(first, again);
    let decl = json!({"locator": first["booking"]["locator"], "payment_method": "pm_card_visa_chargeDeclined", "request_id": "pd"});
    assert_eq!(
        c.reason("booking.pay", decl.clone()).await,
        "payment_declined"
    );

    s.restart().await;
    let mut c = s.client().await;
    c.ok("auth.resume", json!({"token": token})).await;
    assert_eq!(c.ok("booking.hold", params).await, first);
    assert_eq!(
        c.reason("booking.pay", decl).await,
        "payment_declined",
        "a remembered decline stays a decline"
    );
    assert_eq!(
        c.ok("bookings.list", json!({})).await["bookings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let m = c.ok("flights.get", json!({"flight_id": fid})).await;
    assert_eq!(m["version"], 1, "the repeat changed nothing");
    s.stop().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_survives() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let cases: Vec<(String, i64, Value)> = vec![
        ("{oops".into(), -32700, Value::Null),
        ("[]".into(), -32600, Value::Null),
        ("\"hello\"".into(), -32600, Value::Null),
        (
            r#"{"jsonrpc":"1.0","id":5,"method":"flights.search"}"#.into(),
            -32600,
            json!(5),
        ),
        (r#"{"jsonrpc":"2.0","id":6}"#.into(), -32600, json!(6)),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"flights.search","params":[1]}"#.into(),
            -32602,
            json!(7),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"nope"}"#.into(),
            -32601,
            json!(8),
        ),
        ("[".repeat(10_000), -32700, Value::Null),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":9,"method":"flights.search","params":{{"pad":"{}"}}}}"#,
                "x".repeat(70_000)
            ),
            -32600,
            Value::Null,
        ),
    ];
    for (frame, code, id) in cases {
        c.send_text(&frame).await;
        let r = c.recv().await.expect("a reply");
        assert_eq!(
            r["error"]["code"],
            code,
            "{}",
            &frame[..frame.len().min(60)]
        );
        assert_eq!(r["id"], id);
        assert!(r["error"]["data"]["reason"].is_string());
    }
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let r = c.recv().await.expect("a reply to binary");
    assert_eq!(r["error"]["code"], -32600);
    // invalid UTF-8 in a text frame is a protocol error: the connection is closed, the server lives
    let mut d = s.client().await;
    d.ws.send(Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![0xff, 0xfe],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        ),
    ))
    .await
    .ok();
    assert!(d.recv().await.is_none());
    // a notification gets no reply, not even an error: the next frame answers the next request
    c.send_text(r#"{"jsonrpc":"2.0","method":"flights.search","params":{}}"#)
        .await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"no.such.method"}"#)
        .await;
    c.send_text(r#"{"jsonrpc":"2.0","id":99,"method":"flights.airports"}"#)
        .await;
    let r = c.recv().await.expect("reply");
    assert_eq!(r["id"], 99, "{r}");
    assert!(r["result"]["airports"].is_array());
    let big_but_ok = "y".repeat(60_000);
    assert_eq!(
        c.reason("flights.search", json!({"from": big_but_ok}))
            .await,
        "invalid_params"
    );
    s.stop().await;
}

/// A change's `booking.updated` to the requester's own connection goes out with the
/// reply (queued for it, then written together): it still comes first, and a request
/// sent as a notification, which gets no reply, still gets the push.
#[tokio::test]
async fn the_requesters_own_push_comes_before_its_reply_and_without_one() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let held = c
        .ok("booking.hold", json!({"flight_id": fid, "count": 1, "cabin": "economy", "passengers": passengers(1), "request_id": "with-reply"}))
        .await;
    let before: Vec<&Value> = c
        .pushes
        .iter()
        .filter(|p| p["method"] == "booking.updated")
        .collect();
    assert_eq!(
        before.len(),
        1,
        "the push came before the reply: {before:?}"
    );
    assert_eq!(
        before[0]["params"]["booking"]["locator"],
        held["booking"]["locator"]
    );
    c.pushes.clear();

    let note = json!({"jsonrpc": "2.0", "method": "booking.hold", "params": {
        "flight_id": fid, "count": 1, "cabin": "economy", "passengers": passengers(1),
        "request_id": "no-reply"}});
    c.send_text(&note.to_string()).await;
    let pushed = c.push("booking.updated").await;
    assert_eq!(pushed["booking"]["status"], "held");
    assert_ne!(
        pushed["booking"]["locator"], held["booking"]["locator"],
        "a second booking"
    );
    s.stop().await;
}

/// bookings.list and orders.list answer at most 500 records (all of them for any
/// but the busiest account) and page with `limit` and `before`: a list of every
/// booking an account ever made (cancelled holds cost nothing) would grow without
/// bound in the server's memory and on the wire.
#[tokio::test]
async fn lists_come_a_page_at_a_time() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.new_user().await;
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap().to_owned();
    let seats = free_seats(&mut c, &fid, "economy", 5).await;
    for (i, seat) in seats.iter().enumerate() {
        paid(
            &mut c,
            &fid,
            std::slice::from_ref(seat),
            &format!("h{i}"),
            &format!("p{i}"),
        )
        .await;
    }
    let all = c.ok("bookings.list", json!({})).await;
    assert_eq!(all["bookings"].as_array().unwrap().len(), 5);
    assert!(all.get("more").is_none(), "{all}");
    let locators: Vec<Value> = all["bookings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["locator"].clone())
        .collect();

    let mut pages = Vec::new();
    let mut before = Value::Null;
    loop {
        let page = c
            .ok("bookings.list", json!({"limit": 2, "before": before}))
            .await;
        let got: Vec<Value> = page["bookings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["locator"].clone())
            .collect();
        before = got.last().cloned().unwrap_or(Value::Null);
        pages.extend(got);
        if page.get("more").is_none() {
            break;
        }
        assert_eq!(page["more"], true, "{page}");
    }
    assert_eq!(pages, locators, "the pages are the whole list, in order");

    let orders = c.ok("orders.list", json!({})).await["orders"].clone();
    let ids: Vec<Value> = orders
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].clone())
        .collect();
    assert_eq!(ids.len(), 5);
    let first = c.ok("orders.list", json!({"limit": 3})).await;
    assert_eq!(first["more"], true);
    let rest = c.ok("orders.list", json!({"before": ids[2]})).await;
    assert!(rest.get("more").is_none());
    let rest: Vec<Value> = rest["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].clone())
        .collect();
    assert_eq!(rest, ids[3..]);

    for bad in [
        json!({"limit": 0}),
        json!({"limit": 501}),
        json!({"limit": "2"}),
    ] {
        assert_eq!(
            c.reason("bookings.list", bad.clone()).await,
            "invalid_params",
            "{bad}"
        );
        assert_eq!(
            c.reason("orders.list", bad.clone()).await,
            "invalid_params",
            "{bad}"
        );
    }
    // someone else's record is not a cursor
    let mut other = s.client().await;
    other.new_user().await;
    assert_eq!(
        other
            .reason("bookings.list", json!({"before": locators[0]}))
            .await,
        "not_found"
    );
    assert_eq!(
        other.reason("orders.list", json!({"before": ids[0]})).await,
        "not_found"
    );
    s.stop().await;
}
