//! Live seat maps (issue 3) against a real server: every watcher sees each version
//! once and in order while many writers contend, `since` replays exactly what was
//! missed (or gets a snapshot when it cannot), random interleavings of holds, pays,
//! cancels and expiries keep every watcher's map equal to `flights.get`, a stalled
//! watcher is cut off without hurting the others or the server's memory,
//! `booking.updated` reaches every connection of the owner and nobody else, dead
//! connections are dropped, and shutdown closes every connection with 1001.

#[path = "../common/mod.rs"]
mod common;

use common::seat_map::*;
use common::*;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

mod booking_updates;
mod interleavings;
mod ordering;
mod shutdown;
mod since;
mod stalled;

/// The slow-consumer test needs both cores and a quiet machine for its time and
/// memory bounds: it holds this exclusively, every other test shares it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The longest any single awaited condition may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection: the close frame's code, or None
/// when it ended without one.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the server closed the connection in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn fid_of(f: &Value) -> String {
    f["flight_id"].as_str().expect("flight_id").to_owned()
}
