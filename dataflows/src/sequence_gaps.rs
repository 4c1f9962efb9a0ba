//! `sequence_gaps`: per machine, the event numbers (`seq`) never received: proof that nothing
//! a machine sent was lost, or where it was.
//!
//! ```sql
//! WITH got AS (SELECT DISTINCT machine_id, seq FROM events WHERE seq IS NOT NULL)
//! SELECT machine_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing,
//!        next_seq - seq - 1 AS missing
//! FROM (SELECT machine_id, seq, lead(seq) OVER (PARTITION BY machine_id ORDER BY seq) AS next_seq
//!       FROM got)
//! WHERE next_seq > seq + 1
//! ```
//! A machine numbers every event it sends, of every kind, once (its outbox keeps the numbering
//! across reboots), so between the lowest and the highest number received nothing may be
//! missing once the machine has caught up. A gap that closes later (a buffer delivered hours
//! late) leaves the view. Numbers below the first received are not reported: the platform may
//! have started reading after them (a topic's retention).
//!
//! State: per machine, the received numbers as ranges — one range for a machine that lost
//! nothing, so memory is bounded by machines and gaps, not by events.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::MachineId;

use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, hash_of};
use crate::row::{ColumnType::*, Row, Value, ViewDef, col};

pub const SEQUENCE_GAPS: ViewDef = ViewDef {
    name: "sequence_gaps",
    description: "per machine: event numbers (seq) never received between the lowest and the highest received (empty when nothing was lost)",
    columns: &[
        col("machine_id", Text),
        col("first_missing", Int),
        col("last_missing", Int),
        col("missing", Int),
    ],
};

/// The numbers received, as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct Received(Vec<(u64, u64)>);

impl Received {
    /// Adds `seq`, merging the ranges it touches.
    pub fn insert(&mut self, seq: u64) {
        let ranges = &mut self.0;
        // The first range that ends at or after seq - 1 (it may take seq at its end).
        let i = ranges.partition_point(|&(_, end)| end.saturating_add(1) < seq);
        match ranges.get(i).copied() {
            Some((start, end)) if start <= seq && seq <= end => {}
            Some((start, end)) if end.saturating_add(1) == seq => {
                ranges[i] = (start, seq);
                // It may now touch the next range.
                if let Some(&(next_start, next_end)) = ranges.get(i + 1)
                    && next_start == seq.saturating_add(1)
                {
                    ranges[i] = (start, next_end);
                    ranges.remove(i + 1);
                }
            }
            Some((start, end)) if seq.saturating_add(1) == start => ranges[i] = (seq, end),
            _ => ranges.insert(i, (seq, seq)),
        }
    }

    /// The gaps between the ranges: (first missing, last missing).
    pub fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.windows(2).map(|w| (w[0].1 + 1, w[1].0 - 1))
    }
}

/// (machine, first missing, last missing).
pub type Gap = (MachineId, u64, u64);

/// The gaps in each machine's numbering, from every event that carries a `seq` (its machine
/// and number).
pub fn render<'s>(
    numbered: VecCollection<'s, Time, (MachineId, u64)>,
) -> VecCollection<'s, Time, Gap> {
    numbered
        .fold_by_key(
            "Sequence gaps: per machine",
            Published::Kept,
            hash_of,
            |machine, received: &mut Received, seq, diff, _| {
                if diff > 0 {
                    received.insert(seq);
                } else {
                    // Events are only ever added; a retraction (an engine closing) changes nothing.
                    tracing::debug!(machine_id = %machine, seq, diff, "a sequence number retracted; ignored");
                }
            },
            |_, _, _| {},
            |machine, received, out| {
                out.extend(received.gaps().map(|(a, b)| (machine.clone(), a, b)));
            },
        )
}

pub fn row((machine, first, last): Gap) -> Row {
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    Row::from([
        Value::text(machine.as_str()),
        int(first),
        int(last),
        int(last - first + 1),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::testing::{self, Scenario, heartbeat, sale};

    proptest! {
        #[test]
        fn ranges_hold_exactly_the_numbers_inserted(seqs in prop::collection::vec(0u64..60, 0..80)) {
            let mut r = Received::default();
            for s in &seqs {
                r.insert(*s);
            }
            let want: BTreeSet<u64> = seqs.iter().copied().collect();
            let got: BTreeSet<u64> = r.0.iter().flat_map(|&(a, b)| a..=b).collect();
            prop_assert_eq!(&got, &want);
            // Disjoint, sorted, never adjacent.
            for w in r.0.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", r.0);
            }
        }
    }

    /// Machines numbering their events; some numbers never delivered, some delivered late (a
    /// gap that opens and closes), twice, out of order, of every kind; one machine sends no
    /// numbers at all.
    fn scenario(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        for m in ["m0", "m1", "m2", "m3"] {
            for seq in 1..=120u64 {
                let at = seq as i64 * 30_000;
                let mut e = if seq % 7 == 0 {
                    sale(m, at, 1, 250, &format!("t{seq}"))
                } else {
                    heartbeat(m, at, 4_000)
                };
                e.seq = (m != "m3").then_some(seq);
                if rng.random_bool(0.05) && m != "m0" {
                    continue; // lost for good
                }
                let delivered = if rng.random_bool(0.1) {
                    at + rng.random_range(0..6 * 3_600_000) // late
                } else {
                    at + rng.random_range(0..5_000)
                };
                s.deliver(delivered, e.clone());
                if rng.random_bool(0.1) {
                    s.deliver(delivered + rng.random_range(0..60_000), e);
                }
            }
        }
        s
    }

    fn oracle(s: &Scenario) -> Vec<Row> {
        let mut got: BTreeMap<MachineId, BTreeSet<u64>> = BTreeMap::new();
        for (_, e) in &s.deliveries {
            if let Some(seq) = e.seq {
                got.entry(e.machine_id.clone()).or_default().insert(seq);
            }
        }
        let mut rows = Vec::new();
        for (m, seqs) in got {
            let seqs: Vec<u64> = seqs.into_iter().collect();
            for w in seqs.windows(2) {
                if w[1] > w[0] + 1 {
                    rows.push(row((m.clone(), w[0] + 1, w[1] - 1)));
                }
            }
        }
        rows
    }

    #[test]
    fn sequence_gaps_equal_the_oracle_on_random_streams() {
        for seed in 0..4 {
            let s = scenario(seed);
            let views = testing::run(&s);
            let expected = oracle(&s);
            assert!(
                !expected.is_empty(),
                "seed {seed}: some numbers must be lost"
            );
            assert!(
                expected.iter().all(|r| r.cell(0) != Value::text("m0")),
                "m0 loses nothing"
            );
            testing::assert_view(&views, "sequence_gaps", expected, seed + 1);
        }
    }
}
