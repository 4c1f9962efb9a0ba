//! `refunds`: the money machines gave back, per machine and UTC day of the refund.
//!
//! ```sql
//! SELECT machine_id, date(timestamp) AS day, count(*) AS refunds, sum(quantity) AS units,
//!        sum(amount) AS amount, string_agg(DISTINCT reason, ',' ORDER BY reason) AS reasons
//! FROM (SELECT DISTINCT ON (machine_id, transaction_id, slot_number, reason) *
//!       FROM refund events ORDER BY ..., timestamp)
//! WHERE now() < day + 1 day + revenue_retention_days
//! GROUP BY 1, 2
//! ```
//! A refund's identity is `(machine, transaction, slot, reason)`: a machine re-sending its
//! outbox repeats refunds, and each counts once (the first by the machine's clock sets the
//! day). A machine's controller refunds the units of a cart line that did not drop (`jam`), the
//! rest of a cart cut by a power loss (`power_loss`), and a card approval that came after the
//! customer was told it had timed out (`late_approval`, no units). Sales count only the units
//! that dropped, so refunds never change revenue; this view makes each visible. Rows stay, like
//! daily revenue, `revenue_retention_days` after their day (temporal filter): state is bounded
//! by machines and days.

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::units::MS_PER_DAY;
use vendflow_protocol::{Cents, Event, EventKind, MachineId, Refund, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Temporal, Time, hash_of};
use crate::row::{ColumnType::*, Row, Value, ViewDef, col};

pub const REFUNDS: ViewDef = ViewDef {
    name: "refunds",
    description: "per machine and UTC day: refunds the machines made (units that did not drop, carts cut by a power loss, late card approvals voided), each counted once",
    columns: &[
        col("machine_id", Text),
        col("day", Date),
        col("refunds", Int),
        col("units", Int),
        col("amount", Money),
        col("reasons", Text),
    ],
};

/// A refund's identity within its machine.
type Identity = (String, Option<u32>, String);

/// One delivery of a refund: the machine's clock, units, amount.
type Seen = (i64, u32, i64);

/// One machine's refunds within the retention: each identity with its deliveries and how many
/// of each are held.
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct Refunds(BTreeMap<Identity, Vec<(Seen, isize)>>);

/// (machine, day, refunds, units, amount, reasons).
pub type Out = (MachineId, i64, i64, i64, Cents, String);

/// The refund events of `events`, per machine and day.
pub fn render<'s>(
    events: VecCollection<'s, Time, Event>,
    config: &Config,
) -> (VecCollection<'s, Time, Out>, VecCollection<'s, Time, ()>) {
    let keep = config
        .revenue_retention_days
        .saturating_add(1)
        .saturating_mul(MS_PER_DAY);
    let refunds = events.flat_map(|e| match e.kind {
        EventKind::Refund(r) => Some((e.machine_id, e.timestamp, r)),
        _ => None,
    });
    let (refunds, too_late) =
        refunds.retain_between(move |(_, at, _): &(MachineId, Timestamp, Refund)| {
            let day_start = at.day().saturating_mul(MS_PER_DAY);
            (Time::EPOCH, Timestamp(day_start.saturating_add(keep)))
        });
    let rows = refunds
        .map(|(m, at, r)| {
            let identity: Identity = (
                r.transaction_id.as_str().to_owned(),
                r.slot_number,
                r.reason.as_str().to_owned(),
            );
            (m, (identity, (at.0, r.quantity, r.amount.0)))
        })
        .fold_by_key(
            "Refunds: per machine",
            Published::Recomputed,
            hash_of,
            |_, refunds: &mut Refunds, (identity, seen), diff, _| {
                let seen_of = refunds.0.entry(identity.clone()).or_default();
                match seen_of.iter().position(|(s, _)| *s == seen) {
                    Some(i) => {
                        seen_of[i].1 += diff;
                        if seen_of[i].1 == 0 {
                            seen_of.remove(i);
                        }
                    }
                    None if diff != 0 => seen_of.push((seen, diff)),
                    None => {}
                }
                if seen_of.is_empty() {
                    refunds.0.remove(&identity);
                }
            },
            |_, _, _| {},
            |machine, refunds: &Refunds, out| {
                // Per day: (refunds, units, amount, reasons).
                let mut days: BTreeMap<i64, (i64, i64, i64, Vec<&str>)> = BTreeMap::new();
                for ((_, _, reason), seen) in &refunds.0 {
                    // The first delivery by the machine's clock stands for the refund.
                    let Some(((at, q, a), _)) =
                        seen.iter().filter(|(_, n)| *n > 0).min_by_key(|(s, _)| *s)
                    else {
                        continue;
                    };
                    let d = days.entry(Timestamp(*at).day()).or_default();
                    d.0 += 1;
                    d.1 += i64::from(*q);
                    d.2 += *a;
                    if !d.3.contains(&reason.as_str()) {
                        d.3.push(reason);
                    }
                }
                for (day, (count, units, amount, mut reasons)) in days {
                    reasons.sort_unstable();
                    out.push((
                        machine.clone(),
                        day,
                        count,
                        units,
                        Cents(amount),
                        reasons.join(","),
                    ));
                }
            },
        );
    (rows, too_late.map(|_| ()))
}

pub fn row((machine, day, refunds, units, amount, reasons): Out) -> Row {
    Row::from([
        Value::text(machine.as_str()),
        Value::Date(day),
        Value::Int(refunds),
        Value::Int(units),
        Value::Money(amount),
        Value::text(&reasons),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use vendflow_protocol::Text;

    use super::*;
    use crate::testing::{self, Scenario, machine};

    fn refund(m: &str, at: i64, txn: &str, slot: Option<u32>, cents: i64, reason: &str) -> Event {
        Event {
            machine_id: machine(m),
            timestamp: Timestamp(at),
            seq: None,
            kind: EventKind::Refund(Refund {
                transaction_id: Text::from(txn),
                slot_number: slot,
                amount: Cents(cents),
                quantity: u32::from(slot.is_some()),
                reason: Text::from(reason),
            }),
        }
    }

    /// Refunds over ten days delivered out of order, late by up to three days, twice or three
    /// times; some older than the retention when they arrive, some expiring as the stream goes.
    fn scenario(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        s.config.revenue_retention_days = 4;
        let machines = ["m0", "m1", "m2"];
        let reasons = ["jam", "power_loss", "late_approval"];
        for i in 0..150 {
            let m = machines[rng.random_range(0..3)];
            let at = rng.random_range(0..10 * MS_PER_DAY);
            let reason = reasons[rng.random_range(0..3)];
            let slot = (reason != "late_approval").then(|| rng.random_range(1..4));
            let event = refund(
                m,
                at,
                &format!("t{i}"),
                slot,
                rng.random_range(50..500),
                reason,
            );
            for _ in 0..rng.random_range(1..4) {
                s.deliver(at + rng.random_range(0..3 * MS_PER_DAY), event.clone());
            }
            if i % 5 == 0 {
                // The same refund re-sent with a later clock (often of another day): still one
                // refund, in the day of its first.
                let mut again = event.clone();
                let later = at + rng.random_range(3_600_000..30 * 3_600_000);
                again.timestamp = Timestamp(later);
                s.deliver(later + rng.random_range(0..MS_PER_DAY), again);
            }
        }
        s
    }

    /// Naive: the refunds alive now, each identity once (its first by the machine's clock),
    /// summed per machine and day.
    fn oracle(s: &Scenario) -> Vec<Row> {
        let now = s.now().ms();
        let keep = (s.config.revenue_retention_days + 1) * MS_PER_DAY;
        // Delivered before its horizon passed (a later delivery is too late), and alive now.
        let mut first: BTreeMap<(MachineId, Identity), Seen> = BTreeMap::new();
        for (delivered, e) in &s.deliveries {
            let EventKind::Refund(r) = &e.kind else {
                continue;
            };
            let until = e.timestamp.day() * MS_PER_DAY + keep;
            if delivered.ms() >= until || now >= until {
                continue;
            }
            let key = (
                e.machine_id.clone(),
                (
                    r.transaction_id.as_str().to_owned(),
                    r.slot_number,
                    r.reason.as_str().to_owned(),
                ),
            );
            let seen = (e.timestamp.0, r.quantity, r.amount.0);
            let f = first.entry(key).or_insert(seen);
            if seen < *f {
                *f = seen;
            }
        }
        type Sums = (i64, i64, i64, Vec<String>);
        let mut days: BTreeMap<(MachineId, i64), Sums> = BTreeMap::new();
        for ((m, (_, _, reason)), (at, q, a)) in first {
            let d = days
                .entry((m, Timestamp(at).day()))
                .or_insert((0, 0, 0, Vec::new()));
            d.0 += 1;
            d.1 += i64::from(q);
            d.2 += a;
            if !d.3.contains(&reason) {
                d.3.push(reason);
            }
        }
        days.into_iter()
            .map(|((m, day), (n, q, a, mut reasons))| {
                reasons.sort();
                row((m, day, n, q, Cents(a), reasons.join(",")))
            })
            .collect()
    }

    #[test]
    fn refunds_equal_the_oracle_on_random_streams() {
        for seed in 0..4 {
            let s = scenario(seed);
            let views = testing::run(&s);
            let expected = oracle(&s);
            assert!(
                expected.len() > 5,
                "seed {seed}: the scenario must leave refunds in the view"
            );
            testing::assert_view(&views, "refunds", expected, seed + 1);
        }
    }
}
