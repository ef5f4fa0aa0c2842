//! Resuming with `since`: exactly the missed changes, or a snapshot when the replay
//! buffer (or a restart) no longer has them.

use super::*;

#[tokio::test]
async fn resubscribing_with_since_replays_exactly_the_missed_changes() {
    let _machine = MACHINE.read().await;
    let s = Server::start().await;
    let url = s.url();
    let mut c = s.client().await;
    c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", 4).await;
    let mut w = Watcher::join(&url, &fid).await;
    assert_eq!(w.began, Began::Snapshot);
    let a = hold(&mut c, &fid, &seats[..1], "a").await;
    w.next().await;
    let away = w.leave().await;
    let since = away.version;

    // five changes while it is away: hold, pay, release, refund, hold
    let b = hold(&mut c, &fid, &seats[1..3], "b").await;
    c.ok(
        "booking.pay",
        json!({"locator": b["locator"], "payment_method": "pm_card_visa", "request_id": "pb"}),
    )
    .await;
    c.ok(
        "booking.cancel",
        json!({"locator": a["locator"], "request_id": "ca"}),
    )
    .await;
    c.ok(
        "booking.cancel",
        json!({"locator": b["locator"], "request_id": "cb"}),
    )
    .await;
    let d = hold(&mut c, &fid, &seats[3..4], "d").await;

    // `begin` checks the replayed versions are since+1, since+2, ... in order
    let mut w = Watcher::resume(&url, &fid, Some(away)).await;
    assert_eq!(w.began, Began::Replay(5));
    assert_eq!(w.map.version, since + 5);
    w.check().await;

    // the feed goes on live after the reply
    c.ok(
        "booking.cancel",
        json!({"locator": d["locator"], "request_id": "cd"}),
    )
    .await;
    w.next().await;
    assert_eq!(w.map.version, since + 6);
    w.check().await;

    // a `since` equal to the current version replays nothing, and then goes on live
    let here = w.leave().await;
    let mut z = Watcher::resume(&url, &fid, Some(here)).await;
    assert_eq!(z.began, Began::Replay(0));
    z.check().await;
    hold(&mut c, &fid, &seats[..1], "e").await;
    z.next().await;
    z.check().await;
    s.stop().await;
}

#[tokio::test]
async fn since_older_than_the_replay_buffer_gets_a_snapshot() {
    let _machine = MACHINE.read().await;
    const BUFFER: usize = 4;
    let s = Server::start_with(|c| c.replay_buffer = BUFFER).await;
    let url = s.url();
    let mut c = s.client().await;
    c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", BUFFER + 1).await;
    let away = Watcher::join(&url, &fid).await.leave().await;

    // exactly as many changes as the buffer keeps: still replayable
    let mut held = Vec::new();
    for (i, seat) in seats[..BUFFER].iter().enumerate() {
        held.push(hold(&mut c, &fid, std::slice::from_ref(seat), &format!("h{i}")).await);
    }
    let mut w = Watcher::resume(&url, &fid, Some(away)).await;
    assert_eq!(w.began, Began::Replay(BUFFER));
    w.check().await;
    let away = w.leave().await;

    // one more than the buffer keeps: a snapshot instead
    for (i, b) in held.iter().enumerate() {
        c.ok(
            "booking.cancel",
            json!({"locator": b["locator"], "request_id": format!("c{i}")}),
        )
        .await;
    }
    hold(&mut c, &fid, &seats[BUFFER..], "last").await;
    let mut w = Watcher::resume(&url, &fid, Some(away.clone())).await;
    assert_eq!(w.began, Began::Snapshot);
    assert_eq!(w.map.version, away.version + BUFFER as u64 + 1);
    w.check().await;

    // and the snapshot is followed by live pushes
    c.ok(
        "booking.cancel",
        json!({"locator": held[0]["locator"], "request_id": "c0"}),
    )
    .await; // a repeated request id: nothing happens, no version
    let again = hold(&mut c, &fid, &seats[..1], "again").await;
    w.next().await;
    w.check().await;
    assert_eq!(again["status"], "held");
    s.stop().await;
}

#[tokio::test]
async fn after_a_restart_versions_go_on_and_older_since_gets_a_snapshot() {
    let _machine = MACHINE.read().await;
    let mut s = Server::start().await;
    let mut c = s.client().await;
    let token = c.new_user().await;
    let fid = fid_of(&later_flight(&mut c).await);
    let seats = free_seats(&mut c, &fid, "economy", 3).await;
    let mut w = Watcher::join(&s.url(), &fid).await;
    let a = hold(&mut c, &fid, &seats[..1], "a").await;
    let b = hold(&mut c, &fid, &seats[1..2], "b").await;
    w.next().await;
    w.next().await;
    let previous = w.map.clone();
    c.ok(
        "booking.pay",
        json!({"locator": b["locator"], "payment_method": "pm_card_visa", "request_id": "pb"}),
    )
    .await;
    w.next().await;
    w.check().await;
    let before = w.map.clone();
    assert_eq!(before.version, previous.version + 1);

    s.restart().await;
    assert_eq!(
        close_code(&mut w.c.ws).await,
        Some(1001),
        "the old connection was closed as going away"
    );

    // the buffer was lost with the restart: the current version replays nothing,
    // an older one gets a snapshot; neither goes backwards
    let url = s.url();
    let mut same = Watcher::resume(&url, &fid, Some(before.clone())).await;
    assert_eq!(same.began, Began::Replay(0));
    assert_eq!(same.map.version, before.version);
    same.check().await;
    let mut older = Watcher::resume(&url, &fid, Some(previous)).await;
    assert_eq!(older.began, Began::Snapshot);
    assert_eq!(older.map.version, before.version);
    older.check().await;

    // the next change is the next version, for both
    let mut c = s.client().await;
    c.ok("auth.resume", json!({ "token": token })).await;
    c.ok(
        "booking.cancel",
        json!({"locator": a["locator"], "request_id": "ca"}),
    )
    .await;
    same.next().await;
    older.next().await;
    assert_eq!(same.map.version, before.version + 1);
    same.check().await;
    older.check().await;
    s.stop().await;
}
