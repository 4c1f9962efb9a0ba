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
//! -- declared_dropped: how many of a gap's numbers the machine's `dropped` events name
//! ```
//! A machine numbers every event it sends, of every kind, once (its outbox keeps the numbering
//! across reboots), so between the lowest and the highest number received nothing may be
//! missing once the machine has caught up. A gap that closes later (a buffer delivered hours
//! late) leaves the view. Numbers below the first received are not reported: the platform may
//! have started reading after them (a topic's retention).
//!
//! A machine that could not deliver for longer than it keeps events (24 hours) drops the
//! oldest and says so with a `dropped` event naming their numbers: those gaps stay (the events
//! are lost), with `declared_dropped` counting the numbers the machine declared. A gap with
//! numbers not declared is a loss nobody explained.
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
        col("declared_dropped", Int),
    ],
};

/// What an event tells this view: a number received, or numbers its machine declared dropped
/// (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mark {
    Received(u64),
    Dropped(u64, u64),
}

/// A machine's numbers: received, and declared dropped.
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct Numbers {
    received: Received,
    declared: Received,
}

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

    /// Adds every number of `first..=last`, merging the ranges they touch.
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let ranges = &mut self.0;
        // The ranges that overlap or touch [first, last] are merged with it.
        let from = ranges.partition_point(|&(_, end)| end.saturating_add(1) < first);
        let to = ranges.partition_point(|&(start, _)| start <= last.saturating_add(1));
        let (mut a, mut b) = (first, last);
        if from < to {
            a = a.min(ranges[from].0);
            b = b.max(ranges[to - 1].1);
        }
        ranges.splice(from..to, [(a, b)]);
    }

    /// How many numbers of `first..=last` the ranges hold.
    pub fn count_within(&self, first: u64, last: u64) -> u64 {
        let from = self.0.partition_point(|&(_, end)| end < first);
        self.0[from..]
            .iter()
            .take_while(|&&(start, _)| start <= last)
            .map(|&(start, end)| end.min(last) - start.max(first) + 1)
            .sum()
    }

    /// The gaps between the ranges: (first missing, last missing).
    pub fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.windows(2).map(|w| (w[0].1 + 1, w[1].0 - 1))
    }
}

/// (machine, first missing, last missing, how many of them the machine declared dropped).
pub type Gap = (MachineId, u64, u64, u64);

/// The gaps in each machine's numbering, from every event that carries a `seq` (its machine
/// and number).
pub fn render<'s>(
    numbered: VecCollection<'s, Time, (MachineId, Mark)>,
) -> VecCollection<'s, Time, Gap> {
    numbered
        .fold_by_key(
            "Sequence gaps: per machine",
            Published::Kept,
            hash_of,
            |machine, numbers: &mut Numbers, mark, diff, _| {
                if diff <= 0 {
                    // Events are only ever added; a retraction (an engine closing) changes nothing.
                    tracing::debug!(machine_id = %machine, ?mark, diff, "a sequence mark retracted; ignored");
                    return;
                }
                match mark {
                    Mark::Received(seq) => numbers.received.insert(seq),
                    Mark::Dropped(first, last) => numbers.declared.insert_range(first, last),
                }
            },
            |_, _, _| {},
            |machine, numbers, out| {
                out.extend(numbers.received.gaps().map(|(a, b)| {
                    (machine.clone(), a, b, numbers.declared.count_within(a, b))
                }));
            },
        )
}

pub fn row((machine, first, last, declared): Gap) -> Row {
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    Row::from([
        Value::text(machine.as_str()),
        int(first),
        int(last),
        int(last - first + 1),
        int(declared),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use vendflow_protocol::Event;

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

        #[test]
        fn ranges_inserted_whole_hold_their_numbers_and_count_within_any_span(
            spans in prop::collection::vec((0u64..80, 0u64..12), 0..20),
            seqs in prop::collection::vec(0u64..90, 0..20),
            (a, len) in (0u64..90, 0u64..40),
        ) {
            let mut r = Received::default();
            let mut want = BTreeSet::new();
            for (first, n) in &spans {
                r.insert_range(*first, first + n);
                want.extend(*first..=first + n);
            }
            for s in &seqs {
                r.insert(*s);
                want.insert(*s);
            }
            let got: BTreeSet<u64> = r.0.iter().flat_map(|&(a, b)| a..=b).collect();
            prop_assert_eq!(&got, &want);
            for w in r.0.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", r.0);
            }
            let naive = (a..=a + len).filter(|n| want.contains(n)).count() as u64;
            prop_assert_eq!(r.count_within(a, a + len), naive);
        }
    }

    /// Machines numbering their events; some numbers never delivered, some delivered late (a
    /// gap that opens and closes), twice, out of order, of every kind; one machine sends no
    /// numbers at all. Machines m1 and m2 declare some of the numbers they lost dropped (a
    /// declaration of its own number, which may itself come late, twice or be lost), some
    /// declarations overlapping, one naming numbers that did arrive.
    fn scenario(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        for m in ["m0", "m1", "m2", "m3"] {
            let mut lost = Vec::new();
            for seq in 1..=120u64 {
                let at = seq as i64 * 30_000;
                let mut e = if seq % 7 == 0 {
                    sale(m, at, 1, 250, &format!("t{seq}"))
                } else if seq % 10 == 0 && m != "m0" && m != "m3" && rng.random_bool(0.7) {
                    // A declaration of numbers before it: most of what was lost, and a span
                    // around it now and then.
                    let (first, last) = match (lost.first(), lost.last()) {
                        (Some(&a), Some(&b)) if rng.random_bool(0.8) => (a, b),
                        _ => (seq.saturating_sub(6).max(1), seq - 1),
                    };
                    lost.clear();
                    Event {
                        machine_id: testing::machine(m),
                        timestamp: vendflow_protocol::Timestamp(at),
                        seq: None,
                        kind: vendflow_protocol::EventKind::Dropped(vendflow_protocol::Dropped {
                            first_seq: first,
                            last_seq: last,
                            reason: "kept_24h".into(),
                        }),
                    }
                } else {
                    heartbeat(m, at, 4_000)
                };
                e.seq = (m != "m3").then_some(seq);
                if rng.random_bool(0.05) && m != "m0" {
                    lost.push(seq);
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
        let mut declared: BTreeMap<MachineId, BTreeSet<u64>> = BTreeMap::new();
        for (_, e) in &s.deliveries {
            if let Some(seq) = e.seq {
                got.entry(e.machine_id.clone()).or_default().insert(seq);
            }
            if let vendflow_protocol::EventKind::Dropped(d) = &e.kind {
                declared
                    .entry(e.machine_id.clone())
                    .or_default()
                    .extend(d.first_seq..=d.last_seq);
            }
        }
        let mut rows = Vec::new();
        for (m, seqs) in got {
            let seqs: Vec<u64> = seqs.into_iter().collect();
            let said = declared.get(&m).cloned().unwrap_or_default();
            for w in seqs.windows(2) {
                if w[1] > w[0] + 1 {
                    let (a, b) = (w[0] + 1, w[1] - 1);
                    let n = (a..=b).filter(|x| said.contains(x)).count() as u64;
                    rows.push(Row::from([
                        Value::text(m.as_str()),
                        Value::Int(a as i64),
                        Value::Int(b as i64),
                        Value::Int((b - a + 1) as i64),
                        Value::Int(n as i64),
                    ]));
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
            assert!(
                expected.iter().any(|r| r.cell(4) != Value::Int(0))
                    && expected.iter().any(|r| r.cell(4) == Value::Int(0)),
                "seed {seed}: some gaps declared, some not"
            );
            testing::assert_view(&views, "sequence_gaps", expected, seed + 1);
        }
    }
}
