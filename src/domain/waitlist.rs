//! Waitlist entries of sold-out cabins: their states, their order (join order, per
//! cabin), positions, and which waiting entries the free seats of a flight serve.
//!
//! ```text
//! waiting ──seats freed──▶ offered ──pay──▶ accepted
//!   │                        ├─hold expires or is cancelled─▶ expired
//!   │                        └─leave─▶ left
//!   ├─leave─▶ left
//!   └─flight cancelled or departed─▶ expired
//! ```

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::{Cabin, DomainError, FlightId, Locator, Millis, UserId};

/// Waiting entries one user may have at a time.
pub const MAX_WAITING_PER_USER: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitlistStatus {
    Waiting,
    Offered,
    Accepted,
    Expired,
    Left,
}

impl WaitlistStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitlistStatus::Waiting => "waiting",
            WaitlistStatus::Offered => "offered",
            WaitlistStatus::Accepted => "accepted",
            WaitlistStatus::Expired => "expired",
            WaitlistStatus::Left => "left",
        }
    }

    /// Waiting or offered: the entry still takes part in its flight's waitlist.
    pub fn is_active(self) -> bool {
        matches!(self, WaitlistStatus::Waiting | WaitlistStatus::Offered)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistEntry {
    pub id: String,
    pub user_id: UserId,
    pub flight_id: FlightId,
    pub cabin: Cabin,
    pub passengers: Vec<String>,
    pub status: WaitlistStatus,
    /// Join order: entries are served by `created_at`, then the id's number
    /// ([`WaitlistEntry::order`]).
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The offered hold, once offered.
    pub locator: Option<Locator>,
}

impl WaitlistEntry {
    pub fn count(&self) -> usize {
        self.passengers.len()
    }

    /// The key entries are served in: join time, then id by number (`W99` before
    /// `W101`; ids are `W` and a number without leading zeros).
    pub fn order(&self) -> (Millis, usize, &str) {
        (self.created_at, self.id.len(), &self.id)
    }

    /// Waiting → offered the hold `locator`.
    pub fn offer(&mut self, locator: Locator, now: Millis) {
        self.status = WaitlistStatus::Offered;
        self.locator = Some(locator);
        self.updated_at = now;
    }

    /// The status the entry had before the change that gave it its present one
    /// (`None`: it has just joined), as the state machine above allows only one.
    pub fn previous_status(&self) -> Option<WaitlistStatus> {
        match self.status {
            WaitlistStatus::Waiting => None,
            WaitlistStatus::Offered => Some(WaitlistStatus::Waiting),
            WaitlistStatus::Accepted => Some(WaitlistStatus::Offered),
            WaitlistStatus::Expired | WaitlistStatus::Left => match self.locator {
                Some(_) => Some(WaitlistStatus::Offered),
                None => Some(WaitlistStatus::Waiting),
            },
        }
    }

    /// Ends an active entry with `status`; an entry that ended already stays as it is.
    pub fn end(&mut self, status: WaitlistStatus, now: Millis) -> Result<(), DomainError> {
        if !self.status.is_active() {
            return Err(DomainError::InvalidState(format!(
                "waitlist entry is {}",
                self.status.as_str()
            )));
        }
        self.status = status;
        self.updated_at = now;
        Ok(())
    }
}

/// The join time of an entry joining `line` (the flight's waiting and offered
/// entries) at `now`:
/// never before an entry already there, so a joiner is always last in line, also
/// when its node's clock is behind the one that wrote the last join.
pub fn join_time(line: &[WaitlistEntry], now: Millis) -> Millis {
    line.iter()
        .map(|e| e.created_at.saturating_add(1))
        .fold(now, Millis::max)
}

/// Each waiting entry's position in its cabin's line (1 = next), by id.
pub fn positions(entries: &[WaitlistEntry]) -> HashMap<String, usize> {
    let mut waiting: Vec<&WaitlistEntry> = entries
        .iter()
        .filter(|e| e.status == WaitlistStatus::Waiting)
        .collect();
    waiting.sort_by(|a, b| a.order().cmp(&b.order()));
    let mut next: HashMap<Cabin, usize> = HashMap::new();
    waiting
        .into_iter()
        .map(|e| {
            let n = next.entry(e.cabin).or_insert(0);
            *n += 1;
            (e.id.clone(), *n)
        })
        .collect()
}

/// The waiting entries (indices into `entries`) that `free` seats per cabin serve, in
/// join order: an entry is served when its cabin has at least its count free; one
/// that does not fit keeps its place and a later, smaller one may be served.
pub fn serve(entries: &[WaitlistEntry], free: impl Fn(Cabin) -> usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].status == WaitlistStatus::Waiting)
        .collect();
    order.sort_by(|&a, &b| entries[a].order().cmp(&entries[b].order()));
    let mut left: HashMap<Cabin, usize> = Cabin::ALL.iter().map(|&c| (c, free(c))).collect();
    order
        .into_iter()
        .filter(|&i| {
            let e = &entries[i];
            let n = left.entry(e.cabin).or_insert(0);
            let fits = *n >= e.count();
            if fits {
                *n -= e.count();
            }
            fits
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, at: Millis, cabin: Cabin, count: usize) -> WaitlistEntry {
        WaitlistEntry {
            id: id.into(),
            user_id: UserId(1),
            flight_id: FlightId::parse("JW1-20261201").unwrap(),
            cabin,
            passengers: vec!["A B".into(); count],
            status: WaitlistStatus::Waiting,
            created_at: at,
            updated_at: at,
            locator: None,
        }
    }

    #[test]
    fn ids_of_one_millisecond_are_served_by_number() {
        let e = vec![
            entry("W101", 7, Cabin::Economy, 1),
            entry("W99", 7, Cabin::Economy, 1),
        ];
        let ids: Vec<_> = serve(&e, |_| 1).iter().map(|&i| e[i].id.clone()).collect();
        assert_eq!(ids, ["W99"]);
        let p = positions(&e);
        assert_eq!((p["W99"], p["W101"]), (1, 2));
    }

    #[test]
    fn a_joiner_is_last_in_line_whatever_its_clock_says() {
        let e = vec![entry("W5", 10, Cabin::Economy, 1)];
        assert_eq!(join_time(&e, 20), 20);
        assert_eq!(join_time(&e, 10), 11);
        assert_eq!(join_time(&e, 3), 11, "a clock behind the last joiner's");
        assert_eq!(join_time(&[], 3), 3);
    }

    #[test]
    fn served_in_join_order_and_a_smaller_later_entry_may_pass() {
        let e = vec![
            entry("c", 3, Cabin::Economy, 1),
            entry("a", 1, Cabin::Economy, 2),
            entry("b", 2, Cabin::Economy, 1),
            entry("d", 4, Cabin::Business, 1),
        ];
        let free = |c| if c == Cabin::Economy { 1 } else { 0 };
        let ids: Vec<_> = serve(&e, free).iter().map(|&i| e[i].id.clone()).collect();
        assert_eq!(ids, ["b"], "a needs 2, b is next, c is left without a seat");
        let free = |c| if c == Cabin::Economy { 3 } else { 1 };
        let ids: Vec<_> = serve(&e, free).iter().map(|&i| e[i].id.clone()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert!(serve(&e, |_| 0).is_empty());
    }

    #[test]
    fn only_waiting_entries_are_served_and_counted_in_positions() {
        let mut e = vec![
            entry("a", 1, Cabin::Economy, 1),
            entry("b", 2, Cabin::Economy, 1),
            entry("c", 3, Cabin::Business, 1),
            entry("d", 4, Cabin::Economy, 1),
        ];
        e[0].offer(Locator::parse("AAAAAA").unwrap(), 5);
        let p = positions(&e);
        assert_eq!(p.get("a"), None);
        assert_eq!((p["b"], p["c"], p["d"]), (1, 1, 2));
        let ids: Vec<_> = serve(&e, |_| 1).iter().map(|&i| e[i].id.clone()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn the_previous_status_follows_the_state_machine() {
        let mut e = entry("a", 1, Cabin::Economy, 1);
        assert_eq!(e.previous_status(), None);
        let mut left = e.clone();
        left.end(WaitlistStatus::Left, 2).unwrap();
        assert_eq!(left.previous_status(), Some(WaitlistStatus::Waiting));
        e.offer(Locator::parse("AAAAAA").unwrap(), 3);
        assert_eq!(e.previous_status(), Some(WaitlistStatus::Waiting));
        for end in [
            WaitlistStatus::Accepted,
            WaitlistStatus::Expired,
            WaitlistStatus::Left,
        ] {
            let mut x = e.clone();
            x.end(end, 4).unwrap();
            assert_eq!(
                x.previous_status(),
                Some(WaitlistStatus::Offered),
                "{end:?}"
            );
        }
    }

    #[test]
    fn an_ended_entry_stays_ended() {
        let mut e = entry("a", 1, Cabin::Economy, 1);
        e.end(WaitlistStatus::Left, 2).unwrap();
        assert!(e.end(WaitlistStatus::Expired, 3).is_err());
        assert_eq!(e.status, WaitlistStatus::Left);
    }
}
