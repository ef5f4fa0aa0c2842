//! Aircraft types and their seat layouts: cabins, rows (never 13), aisles, exit rows.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::OnceLock;

use super::SeatId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cabin {
    Business,
    Economy,
}

impl Cabin {
    pub const ALL: [Cabin; 2] = [Cabin::Business, Cabin::Economy];

    pub fn as_str(self) -> &'static str {
        match self {
            Cabin::Business => "business",
            Cabin::Economy => "economy",
        }
    }

    pub fn parse(s: &str) -> Option<Cabin> {
        match s {
            "business" => Some(Cabin::Business),
            "economy" => Some(Cabin::Economy),
            _ => None,
        }
    }
}

/// One cabin's block of rows; `columns` lists seat letters with a space per aisle.
#[derive(Debug)]
pub struct CabinLayout {
    pub cabin: Cabin,
    pub first_row: u8,
    pub last_row: u8,
    pub columns: &'static str,
}

impl CabinLayout {
    pub fn rows(&self) -> impl Iterator<Item = u8> + '_ {
        (self.first_row..=self.last_row).filter(|r| *r != 13)
    }
}

/// A seat's fixed properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatInfo {
    pub id: SeatId,
    pub cabin: Cabin,
    pub window: bool,
    pub aisle: bool,
    pub exit: bool,
    /// Position left to right in its row, counting an aisle as one position.
    pub position: u8,
}

#[derive(Debug)]
pub struct Aircraft {
    pub code: &'static str,
    pub name: &'static str,
    pub cabins: &'static [CabinLayout],
    pub exit_rows: &'static [u8],
    layout: OnceLock<Layout>,
}

/// One row of a cabin, left to right: (position, index into [`Aircraft::seats`]).
pub type Row = Vec<(u8, usize)>;

/// What an aircraft's cabin layouts work out to, built once.
#[derive(Debug)]
struct Layout {
    seats: Vec<SeatInfo>,
    index: HashMap<SeatId, usize>,
    /// Each cabin's rows front to back, in [`Cabin::ALL`]'s order.
    rows: [Vec<Row>; 2],
}

impl Aircraft {
    const fn new(
        code: &'static str,
        name: &'static str,
        cabins: &'static [CabinLayout],
        exit_rows: &'static [u8],
    ) -> Self {
        Aircraft {
            code,
            name,
            cabins,
            exit_rows,
            layout: OnceLock::new(),
        }
    }

    fn build(&self) -> &Layout {
        self.layout.get_or_init(|| {
            let mut seats = Vec::new();
            for layout in self.cabins {
                let cols = layout.columns.as_bytes();
                for row in layout.rows() {
                    for (pos, &c) in cols.iter().enumerate() {
                        if c == b' ' {
                            continue;
                        }
                        let left_aisle = pos > 0 && cols[pos - 1] == b' ';
                        let right_aisle = cols.get(pos + 1) == Some(&b' ');
                        seats.push(SeatInfo {
                            id: SeatId { row, column: c },
                            cabin: layout.cabin,
                            window: pos == 0 || pos == cols.len() - 1,
                            aisle: left_aisle || right_aisle,
                            exit: self.exit_rows.contains(&row),
                            position: pos as u8,
                        });
                    }
                }
            }
            let index = seats.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
            let rows = Cabin::ALL.map(|cabin| {
                let mut rows: Vec<Row> = Vec::new();
                for (i, s) in seats.iter().enumerate().filter(|(_, s)| s.cabin == cabin) {
                    match rows.last_mut() {
                        Some(r) if r.first().is_some_and(|&(_, j)| seats[j].id.row == s.id.row) => {
                            r.push((s.position, i))
                        }
                        _ => rows.push(vec![(s.position, i)]),
                    }
                }
                rows
            });
            Layout { seats, index, rows }
        })
    }

    /// Every seat, cabin by cabin, row by row, left to right.
    pub fn seats(&self) -> &[SeatInfo] {
        &self.build().seats
    }

    /// The rows of `cabin`, front to back.
    pub fn rows(&self, cabin: Cabin) -> &[Row] {
        &self.build().rows[cabin as usize]
    }

    /// The index of a seat in [`Aircraft::seats`], if the aircraft has it.
    pub fn seat_index(&self, seat: SeatId) -> Option<usize> {
        self.build().index.get(&seat).copied()
    }

    pub fn seats_in(&self, cabin: Cabin) -> usize {
        self.seats().iter().filter(|s| s.cabin == cabin).count()
    }

    pub fn by_code(code: &str) -> Option<&'static Aircraft> {
        FLEET.iter().find(|a| a.code == code)
    }
}

/// The aircraft types Jetway knows.
pub static FLEET: [Aircraft; 3] = [
    Aircraft::new(
        "A320",
        "Airbus A320",
        &[
            CabinLayout {
                cabin: Cabin::Business,
                first_row: 1,
                last_row: 4,
                columns: "AC DF",
            },
            CabinLayout {
                cabin: Cabin::Economy,
                first_row: 5,
                last_row: 31,
                columns: "ABC DEF",
            },
        ],
        &[11, 12],
    ),
    Aircraft::new(
        "B789",
        "Boeing 787-9",
        &[
            CabinLayout {
                cabin: Cabin::Business,
                first_row: 1,
                last_row: 7,
                columns: "A DG K",
            },
            CabinLayout {
                cabin: Cabin::Economy,
                first_row: 20,
                last_row: 48,
                columns: "ABC DEFG HJK",
            },
        ],
        &[20, 32],
    ),
    Aircraft::new(
        "E190",
        "Embraer 190",
        &[
            CabinLayout {
                cabin: Cabin::Business,
                first_row: 1,
                last_row: 3,
                columns: "AC D",
            },
            CabinLayout {
                cabin: Cabin::Economy,
                first_row: 4,
                last_row: 26,
                columns: "AC DF",
            },
        ],
        &[10],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_row_13_and_unique_seats() {
        for a in &FLEET {
            let seats = a.seats();
            assert!(seats.iter().all(|s| s.id.row != 13), "{}", a.code);
            let mut ids: Vec<_> = seats.iter().map(|s| s.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), seats.len(), "{}", a.code);
            for (i, s) in seats.iter().enumerate() {
                assert_eq!(a.seat_index(s.id), Some(i));
            }
            assert!(a.seats_in(Cabin::Business) > 0 && a.seats_in(Cabin::Economy) > 0);
        }
    }

    #[test]
    fn a320_seat_properties() {
        let a = Aircraft::by_code("A320").unwrap();
        assert_eq!(a.seats_in(Cabin::Business), 16);
        assert_eq!(a.seats_in(Cabin::Economy), 26 * 6);
        let info = |s: &str| a.seats()[a.seat_index(SeatId::parse(s).unwrap()).unwrap()];
        assert!(info("12A").window && info("12A").exit && !info("12A").aisle);
        assert!(info("14C").aisle && !info("14C").window);
        assert!(info("14D").aisle);
        assert!(!info("14B").aisle && !info("14B").window);
        assert_eq!(info("2C").cabin, Cabin::Business);
        assert!(a.seat_index(SeatId::parse("13A").unwrap()).is_none());
        assert!(a.seat_index(SeatId::parse("2B").unwrap()).is_none());
    }
}
