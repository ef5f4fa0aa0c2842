//! Best-available seat picking for a party: the same row side by side first, then
//! across an aisle in one row, then split over two adjacent rows, then anywhere; within
//! each tier, the choice that leaves the fewest lone empty seats between occupied ones,
//! nearest the front.

use super::aircraft::Row;
use super::{Aircraft, Cabin};
use std::ops::Range;

/// (tier, lone seats created, row order, position): smaller is better.
type Key = (u8, usize, usize, u8);
/// The best window so far: its key, its row, its first offset in the row, and the
/// first offset of its second half in the next row when split.
type Choice = (Key, usize, usize, Option<usize>);

/// Picks `count` free seats in `cabin`; `free[i]` tells whether seat `i` of
/// [`Aircraft::seats`] is free. `None` when the cabin has fewer than `count` free seats.
/// Allocates only its answer: it runs under the flight's seat map lock on every hold.
pub fn pick(aircraft: &Aircraft, free: &[bool], cabin: Cabin, count: usize) -> Option<Vec<usize>> {
    if count == 0 {
        return None;
    }
    let rows = aircraft.rows(cabin);
    let is_free = |i: usize| free.get(i).copied().unwrap_or(false);
    let total_free = rows.iter().flatten().filter(|(_, i)| is_free(*i)).count();
    if total_free < count {
        return None;
    }

    let mut best: Option<Choice> = None;
    let consider =
        |best: &mut Option<Choice>, key: Key, r: usize, s: usize, split: Option<usize>| {
            if best.as_ref().is_none_or(|(k, ..)| key < *k) {
                *best = Some((key, r, s, split));
            }
        };
    for (r, row) in rows.iter().enumerate() {
        for (s, tier) in windows(row, count, &is_free) {
            consider(
                &mut best,
                (tier, lone_created(row, s..s + count, &is_free), r, row[s].0),
                r,
                s,
                None,
            );
        }
    }
    if best.is_none() && count > 1 {
        let (a, b) = (count.div_ceil(2), count / 2);
        let best_in = |row: &Row, n: usize| {
            windows(row, n, &is_free)
                .map(|(s, _)| (lone_created(row, s..s + n, &is_free), row[s].0, s))
                .min()
        };
        for (r, pair) in rows.windows(2).enumerate() {
            if let (Some((l1, p1, s1)), Some((l2, _, s2))) =
                (best_in(&pair[0], a), best_in(&pair[1], b))
            {
                consider(&mut best, (3, l1 + l2, r, p1), r, s1, Some(s2));
            }
        }
    }
    if let Some((_, r, s, split)) = best {
        let seats = match split {
            None => rows[r][s..s + count].iter().map(|&(_, i)| i).collect(),
            Some(s2) => {
                let (a, b) = (count.div_ceil(2), count / 2);
                rows[r][s..s + a]
                    .iter()
                    .chain(&rows[r + 1][s2..s2 + b])
                    .map(|&(_, i)| i)
                    .collect()
            }
        };
        return Some(seats);
    }
    Some(
        rows.iter()
            .flatten()
            .filter(|(_, i)| is_free(*i))
            .map(|(_, i)| *i)
            .take(count)
            .collect(),
    )
}

/// Runs of `n` free neighbouring seats of a row, as (first offset into it, tier): tier
/// 1 when no aisle splits them, tier 2 when one or more does.
fn windows<'a>(
    row: &'a [(u8, usize)],
    n: usize,
    is_free: &'a impl Fn(usize) -> bool,
) -> impl Iterator<Item = (usize, u8)> + 'a {
    let starts = if n == 0 || n > row.len() {
        0..0
    } else {
        0..row.len() - n + 1
    };
    starts
        .filter(move |&s| (s..s + n).all(|k| is_free(row[k].1)))
        .map(move |s| {
            let same_section = (s + 1..s + n).all(|k| row[k].0 == row[k - 1].0 + 1);
            (s, if same_section { 1 } else { 2 })
        })
}

/// How many more free seats of the row are boxed in by occupied neighbours on both
/// sides (in the same section) once the offsets `taken` are occupied.
fn lone_created(
    row: &[(u8, usize)],
    taken: Range<usize>,
    is_free: &impl Fn(usize) -> bool,
) -> usize {
    let lone = |occupied: &dyn Fn(usize) -> bool| {
        (0..row.len())
            .filter(|&k| !occupied(k))
            .filter(|&k| {
                let left = k > 0 && row[k - 1].0 + 1 == row[k].0 && occupied(k - 1);
                let right = k + 1 < row.len() && row[k + 1].0 == row[k].0 + 1 && occupied(k + 1);
                left && right
            })
            .count()
    };
    let before = lone(&|k| !is_free(row[k].1));
    let after = lone(&|k| !is_free(row[k].1) || taken.contains(&k));
    after.saturating_sub(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SeatId;

    fn a320() -> &'static Aircraft {
        Aircraft::by_code("A320").unwrap()
    }

    /// A map with every seat free except those named.
    fn map(taken: &[&str]) -> Vec<bool> {
        let a = a320();
        let mut free = vec![true; a.seats().len()];
        for t in taken {
            free[a.seat_index(SeatId::parse(t).unwrap()).unwrap()] = false;
        }
        free
    }

    fn names(seats: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = seats
            .iter()
            .map(|&i| a320().seats()[i].id.to_string())
            .collect();
        v.sort();
        v
    }

    /// A map where only the named seats are free.
    fn only(free_seats: &[&str]) -> Vec<bool> {
        let a = a320();
        let mut free = vec![false; a.seats().len()];
        for t in free_seats {
            free[a.seat_index(SeatId::parse(t).unwrap()).unwrap()] = true;
        }
        free
    }

    #[test]
    fn pair_sits_side_by_side_at_the_front() {
        let seats = pick(a320(), &map(&[]), Cabin::Economy, 2).unwrap();
        assert_eq!(names(&seats), ["5A", "5B"]);
    }

    #[test]
    fn three_fill_one_side_of_a_row() {
        let seats = pick(a320(), &map(&["5A"]), Cabin::Economy, 3).unwrap();
        assert_eq!(names(&seats), ["5D", "5E", "5F"]);
    }

    #[test]
    fn avoids_leaving_a_lone_seat() {
        // 5A and 5C... only 5B,5C free on the left: a single traveller taking 5C would
        // leave 5B alone between 5A and 5C. With 5D-5F free too, a single should not split 5B-5C.
        let free = only(&["5B", "5C", "5D", "5E", "5F"]);
        let seats = pick(a320(), &free, Cabin::Economy, 1).unwrap();
        let chosen = names(&seats);
        assert!(chosen != ["5C"], "{chosen:?}");
        // a pair takes the pair of seats that is exactly its size rather than breaking D-F
        let seats = pick(a320(), &free, Cabin::Economy, 2).unwrap();
        assert_eq!(names(&seats), ["5B", "5C"]);
    }

    #[test]
    fn crosses_the_aisle_when_no_side_fits() {
        let free = only(&["8B", "8C", "8D", "8E", "20A"]);
        let seats = pick(a320(), &free, Cabin::Economy, 4).unwrap();
        assert_eq!(names(&seats), ["8B", "8C", "8D", "8E"]);
    }

    #[test]
    fn splits_over_adjacent_rows_before_scattering() {
        let free = only(&["9A", "9B", "10A", "10B", "20C", "25F", "30A", "30F"]);
        let seats = pick(a320(), &free, Cabin::Economy, 4).unwrap();
        assert_eq!(names(&seats), ["10A", "10B", "9A", "9B"]);
    }

    #[test]
    fn scatters_as_a_last_resort_and_fails_when_full() {
        let free = only(&["9A", "20C", "30F"]);
        let seats = pick(a320(), &free, Cabin::Economy, 3).unwrap();
        assert_eq!(names(&seats), ["20C", "30F", "9A"]);
        assert!(pick(a320(), &free, Cabin::Economy, 4).is_none());
        assert!(pick(a320(), &free, Cabin::Business, 1).is_none());
        assert!(pick(a320(), &free, Cabin::Economy, 0).is_none());
    }

    #[test]
    fn stays_in_the_requested_cabin() {
        let seats = pick(a320(), &map(&[]), Cabin::Business, 2).unwrap();
        assert!(seats
            .iter()
            .all(|&i| a320().seats()[i].cabin == Cabin::Business));
        assert_eq!(names(&seats), ["1A", "1C"]);
    }
}
