//! `booking.updated` reaches every connection of the owner and nobody else.

use super::*;

/// Asserts that no `booking.updated` reached the connection: anything queued for it
/// before now arrives before the reply to this request.
async fn assert_no_updates(c: &mut Client) {
    let seen = c.pushes_so_far("booking.updated").await;
    assert!(seen.is_empty(), "another user's updates arrived: {seen:?}");
}

async fn expect_update(c: &mut Client, loc: &str, status: &str) -> Value {
    let u = c.push("booking.updated").await;
    assert_eq!(u["booking"]["locator"], loc, "{u}");
    assert_eq!(u["booking"]["status"], status, "{u}");
    u
}

#[tokio::test]
async fn booking_updates_reach_every_connection_of_the_owner_and_nobody_else() {
    let _machine = MACHINE.read().await;
    let mut s = Server::start().await;
    let mut tab1 = s.client().await;
    let token = tab1.new_user().await;
    let mut tab2 = s.client().await;
    tab2.ok("auth.resume", json!({ "token": token })).await;
    let mut stranger = s.client().await;
    let stranger_token = stranger.new_user().await;
    let fid = fid_of(&later_flight(&mut tab1).await);
    let seats = free_seats(&mut tab1, &fid, "economy", 2).await;

    // held in one tab, paid in the other: both tabs hear of both
    let b = hold(&mut tab1, &fid, &seats[..1], "h1").await;
    let loc = b["locator"].as_str().unwrap().to_owned();
    for tab in [&mut tab1, &mut tab2] {
        expect_update(tab, &loc, "held").await;
    }
    tab2.ok(
        "booking.pay",
        json!({"locator": loc, "payment_method": "pm_card_visa", "request_id": "p1"}),
    )
    .await;
    for tab in [&mut tab1, &mut tab2] {
        let u = expect_update(tab, &loc, "confirmed").await;
        assert_eq!(
            u["booking"]["seats"][0]["ticket_number"]
                .as_str()
                .map(str::len),
            Some(13)
        );
    }
    assert_no_updates(&mut stranger).await;

    // an expiry, with a one-second hold TTL; both tabs come back after the restart
    s.restart_with(|c| c.hold_ttl = 1).await;
    let mut tab1 = s.client().await;
    tab1.ok("auth.resume", json!({ "token": token })).await;
    let mut tab2 = s.client().await;
    tab2.ok("auth.resume", json!({ "token": token })).await;
    let mut stranger = s.client().await;
    stranger
        .ok("auth.resume", json!({ "token": stranger_token }))
        .await;
    let b = hold(&mut tab2, &fid, &seats[1..], "h2").await;
    let loc2 = b["locator"].as_str().unwrap().to_owned();
    for tab in [&mut tab1, &mut tab2] {
        expect_update(tab, &loc2, "held").await;
        expect_update(tab, &loc2, "expired").await;
    }
    assert_no_updates(&mut stranger).await;
    assert_eq!(
        tab1.ok("booking.get", json!({ "locator": loc2 })).await["booking"]["status"],
        "expired"
    );
    s.stop().await;
}
