//! `sales`: exactly-once sale lines.
//!
//! A sale line is identified by `(machine_id, transaction_id, slot_number)`: a cart is several
//! lines under one transaction id, a re-delivery repeats a line exactly. The first delivery of a
//! line is *accepted*; a later delivery of the same line, while the line is within the dedup
//! horizon (default 48 h of event time, longer than the machines' 24 h offline buffer), is a
//! *duplicate*. A line whose event time is already older than the horizon when it arrives can no
//! longer be checked: it is *too late*, counted, and kept out of revenue.
//!
//! ```sql
//! -- sale_duplicates
//! SELECT machine_id, count(*) AS duplicates FROM deliveries WHERE NOT first_delivery GROUP BY 1
//! ```
//!
//! Why not a differential `reduce` with a temporal filter: when a dedup key expired, the reduce
//! would retract the line it had produced, and the revenue built on it with it. Here the dedup
//! state expires on its own while the accepted line, once emitted, stays emitted.

use std::hash::Hash;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{Cents, Event, EventKind, MachineId, Text, Timestamp};

use crate::config::Config;
use crate::operators::{ExpiringSet, Fork, Keyed, Time, as_time, fork, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col};

/// A sale line as the views need it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SaleLine {
    pub machine_id: MachineId,
    pub timestamp: Timestamp,
    pub slot_number: u32,
    pub product_id: Text,
    pub amount: Cents,
    pub quantity: u32,
    pub card: bool,
    pub transaction_id: Text,
}

impl SaleLine {
    /// The sale line of a sale event, taking its fields instead of copying them.
    pub fn of_event(event: Event) -> Option<SaleLine> {
        match event.kind {
            EventKind::Sale(s) => Some(SaleLine {
                machine_id: event.machine_id,
                timestamp: event.timestamp,
                slot_number: s.slot_number,
                card: s.is_card(),
                product_id: s.product_id,
                amount: s.amount,
                quantity: s.quantity,
                transaction_id: s.transaction_id,
            }),
            _ => None,
        }
    }

    /// The line's identity.
    pub fn key(&self) -> (&MachineId, &str, u32) {
        (&self.machine_id, &self.transaction_id, self.slot_number)
    }
}

/// What dedup decided about one delivery.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Verdict {
    Accepted(SaleLine),
    Duplicate(MachineId),
    TooLate(MachineId),
}

pub struct Sales<'s> {
    /// Each line once, at the ingestion time of its first delivery; never retracted.
    pub accepted: VecCollection<'s, Time, SaleLine>,
    /// One record per duplicate delivery, by machine.
    pub duplicates: VecCollection<'s, Time, MachineId>,
    /// One record per line that arrived after its dedup horizon.
    pub too_late: VecCollection<'s, Time, MachineId>,
}

pub const DUPLICATES: ViewDef = ViewDef {
    name: "sale_duplicates",
    description: "re-delivered sale lines dropped by dedup, per machine",
    columns: &[col("machine_id", Text), col("duplicates", Int)],
};

/// A 128-bit fingerprint of a line's identity. The dedup state keeps fingerprints, not strings:
/// two different lines share one with probability ~2^-128 per pair.
type Fingerprint = (u64, u64);

fn fingerprint(line: &SaleLine) -> Fingerprint {
    (hash_of(&line.key()), hash_of(&(line.key(), 0x5eed_u32)))
}

/// `lines`: the sale lines of the sale events, as delivered ([`SaleLine::of_event`]).
pub fn render<'s>(lines: VecCollection<'s, Time, SaleLine>, config: &Config) -> Sales<'s> {
    let horizon = config.dedup_horizon_ms;
    let verdicts = lines
        .keyed_in_time_order(
            "Sales: dedup",
            |line: &SaleLine| hash_of(&line.key()),
            ExpiringSet::<Fingerprint>::default(),
            move |seen, line, diff, out| {
                // Deliveries only ever add; a negative diff would be a bug upstream.
                if diff <= 0 {
                    tracing::error!(machine_id = %line.machine_id, diff, "sale line retracted before dedup; ignored");
                    return;
                }
                // Keys whose horizon ends at or before this time are gone before it is judged.
                seen.expire(out.time());
                let expires = as_time(line.timestamp.0.saturating_add(horizon));
                for _ in 0..diff {
                    let fp = fingerprint(&line);
                    if expires <= out.time() {
                        out.give(Verdict::TooLate(line.machine_id.clone()), 1);
                    } else if seen.insert(fp, expires) {
                        out.give(Verdict::Accepted(line.clone()), 1);
                    } else {
                        out.give(Verdict::Duplicate(line.machine_id.clone()), 1);
                    }
                }
            },
            ExpiringSet::expire,
        );
    let (accepted, duplicates, too_late) = fork(verdicts, "Sales: split", |v| match v {
        Verdict::Accepted(line) => Fork::A(line),
        Verdict::Duplicate(m) => Fork::B(m),
        Verdict::TooLate(m) => Fork::C(m),
    });
    Sales {
        accepted,
        duplicates,
        too_late,
    }
}

pub fn duplicates_row((machine, count): (MachineId, isize)) -> Row {
    Row::from([Value::text(machine.as_str()), Value::Int(count as i64)])
}

/// The batch definition of dedup, for oracle tests: deliveries in ingestion-time order (ties in
/// `Ord` order), first delivery of a live key wins.
#[cfg(test)]
pub(crate) fn oracle(
    deliveries: &[(Time, Event)],
    config: &Config,
) -> (Vec<(Time, SaleLine)>, Vec<MachineId>, Vec<MachineId>) {
    let mut sorted: Vec<(Time, SaleLine)> = deliveries
        .iter()
        .filter_map(|(t, e)| SaleLine::of_event(e.clone()).map(|l| (*t, l)))
        .collect();
    sorted.sort();
    let mut live: std::collections::HashMap<(MachineId, Text, u32), Time> = Default::default();
    let (mut accepted, mut dups, mut late) = (vec![], vec![], vec![]);
    for (t, line) in sorted {
        let expires = as_time(line.timestamp.0 + config.dedup_horizon_ms);
        let key = (
            line.machine_id.clone(),
            line.transaction_id.clone(),
            line.slot_number,
        );
        if expires <= t {
            late.push(line.machine_id);
        } else if live.get(&key).is_some_and(|e| *e > t) {
            dups.push(line.machine_id);
        } else {
            live.insert(key, expires);
            accepted.push((t, line));
        }
    }
    (accepted, dups, late)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{self, Scenario};

    #[test]
    fn dedup_matches_first_delivery_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (accepted, dups, _) = oracle(&scenario.deliveries, &scenario.config);
            assert!(
                !dups.is_empty() && accepted.len() > 100,
                "seed {seed} exercises dedup"
            );
            let mut expected: BTreeMap<MachineId, isize> = BTreeMap::new();
            for m in dups {
                *expected.entry(m).or_default() += 1;
            }
            let expected: Vec<Row> = expected.into_iter().map(duplicates_row).collect();
            testing::assert_view(views, "sale_duplicates", expected, seed);
        }
    }

    #[test]
    fn a_cart_is_several_lines_and_a_redelivery_is_one() {
        let mut scenario = Scenario::empty();
        let t0 = testing::BASE;
        let sale = |slot| testing::sale("m1", t0, slot, 150, "txn-1");
        scenario.deliver(t0, sale(1));
        scenario.deliver(t0, sale(2));
        scenario.deliver(t0 + 5_000, sale(1));
        let views = testing::run(&scenario);
        testing::assert_view(
            &views,
            "sale_duplicates",
            vec![duplicates_row((testing::machine("m1"), 1))],
            0,
        );
        let revenue = testing::rows(&views, "revenue_machine_daily");
        assert_eq!(revenue.len(), 1);
        assert_eq!(
            revenue[0].cell(2),
            Value::Money(Cents(300)),
            "two lines of one cart count, the re-delivery does not"
        );
    }
}
