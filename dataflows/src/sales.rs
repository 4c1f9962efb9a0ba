//! `sales`: exactly-once sale lines.
//!
//! A sale line is identified by `(machine_id, transaction_id, slot_number)`: a cart is several
//! lines under one transaction id, a re-delivery repeats a line exactly. The first delivery of a
//! line is *accepted*; a later delivery of the same line, while the line is within the dedup
//! horizon (default 48 h of event time, longer than the machines' 24 h offline buffer), is a
//! *duplicate*. When a line's horizon passes, its fingerprint moves from memory to the
//! [`Ledger`] on disk. A line whose event time is already older than the horizon when it arrives
//! is *late* (counted in `too_late` as a late arrival) and is checked against the ledger instead:
//! it counts, in its own event-time day, unless the ledger has it already. No sale is kept out of
//! revenue for being late; memory holds the horizon's fingerprints only.
//!
//! ```sql
//! -- sale_duplicates
//! SELECT machine_id, count(*) AS duplicates FROM deliveries WHERE NOT first_delivery GROUP BY 1
//! ```
//!
//! Why not a differential `reduce` with a temporal filter: when a dedup key expired, the reduce
//! would retract the line it had produced, and the revenue built on it with it. Here the dedup
//! state expires on its own while the accepted line, once emitted, stays emitted.

use crate::checkpoint::Durable;
use std::hash::Hash;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{Cents, Event, EventKind, MachineId, Text, Timestamp};

use crate::config::Config;
use crate::ledger::{Ledger, LedgerKey};
use crate::operators::{ExpiringSet, Fork, Keyed, Time, fork, hash_of, state_sizes};
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
    /// Authorised by the machine alone, offline.
    pub offline: bool,
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
                offline: s.offline,
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

    /// The order dedup judges one time's lines in: a machine's lines together (machines in the
    /// order of their interned entries, not of their ids' text, which a compare had to read
    /// from memory of its own), and one machine's lines in their `Ord` order (whose compare of
    /// two equal ids is of their entries' addresses). Only the order of one identity's
    /// deliveries decides anything (which is first), and that is `Ord`'s.
    fn judging_order(a: &SaleLine, b: &SaleLine) -> std::cmp::Ordering {
        (a.machine_id.grouping_key())
            .cmp(&b.machine_id.grouping_key())
            .then_with(|| a.cmp(b))
    }
}

/// What dedup decided about one delivery (a late one gets `Late` as well as its verdict).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Verdict {
    Accepted(SaleLine),
    Duplicate(MachineId),
    Late(MachineId),
}

pub struct Sales<'s> {
    /// Each line once, at the ingestion time of its first delivery; never retracted.
    pub accepted: VecCollection<'s, Time, SaleLine>,
    /// One record per duplicate delivery, by machine.
    pub duplicates: VecCollection<'s, Time, MachineId>,
    /// One record per line that arrived after its in-memory dedup horizon (judged against the
    /// ledger, and counted if new: a late arrival, not a lost sale).
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
    // Of the id's text, not of the interned id's own hash: fingerprints are kept in the ledger
    // on disk, and must stay what earlier versions wrote there.
    let key = (
        line.machine_id.as_str(),
        &*line.transaction_id,
        line.slot_number,
    );
    (hash_of(&key), hash_of(&(key, 0x5eed_u32)))
}

/// The ledger key of a line: its event-time day and its fingerprint.
fn ledger_key(line: &SaleLine) -> LedgerKey {
    let (a, b) = fingerprint(line);
    (line.timestamp.day(), a, b)
}

/// Dedup's per-worker state: the horizon's fingerprints in memory, the older ones on disk.
struct Dedup {
    memory: ExpiringSet<Fingerprint>,
    ledger: Ledger,
    horizon: i64,
    retention_days: i64,
    /// The newest day the ledger's retention ran for.
    trimmed: i64,
}

/// What a checkpoint keeps of dedup: the fingerprints in memory with their expiries, the newest
/// day trimmed, and the ledger's lines.
type DedupSaved = (Vec<(Fingerprint, Time)>, i64, Vec<LedgerKey>);

impl Durable for Dedup {
    type Saved = DedupSaved;

    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        let lines = self.ledger.keys().map_err(crate::checkpoint::failed)?;
        bincode::serialize_into(
            out,
            &(
                crate::checkpoint::Seq::new(self.memory.entries()),
                self.trimmed,
                lines,
            ),
        )
    }

    fn restore(&mut self, (memory, trimmed, lines): DedupSaved) {
        for (fingerprint, expires) in memory {
            self.memory.insert(fingerprint, expires);
        }
        self.trimmed = trimmed;
        if let Err(e) = self.ledger.record(&lines) {
            crate::checkpoint::refuse(format!(
                "cannot record the checkpoint's sale lines in the ledger: {e}"
            ));
        }
    }
}

impl Dedup {
    /// Moves the fingerprints whose horizon ended at or before `now` to the ledger.
    fn expire(&mut self, now: Time) {
        let horizon = self.horizon;
        let mut gone: Vec<LedgerKey> = Vec::new();
        self.memory.expire_with(now, |expiry, (a, b)| {
            gone.push(((expiry - horizon).day(), *a, *b));
        });
        if let Err(e) = self.ledger.record(&gone) {
            // The lines stay counted; only a re-delivery of them would no longer be recognised.
            tracing::error!(error = %e, lines = gone.len(), "cannot record sale lines in the ledger");
        }
        let today = now.day();

        if today > self.trimmed {
            self.trimmed = today;
            if let Err(e) = self.ledger.forget_before(today - self.retention_days) {
                tracing::warn!(error = %e, "cannot trim the sale-line ledger");
            }
        }
    }

    /// Whether a late line is new (not in the ledger; now recorded). If the ledger cannot be
    /// read, the line counts: a possible double count is logged, a lost sale would not be seen.
    fn late_line_is_new(&mut self, line: &SaleLine) -> bool {
        match self.ledger.check_and_record(&[ledger_key(line)]) {
            Ok(fresh) => fresh.first().copied().unwrap_or(true),
            Err(e) => {
                tracing::error!(machine_id = %line.machine_id, error = %e, "cannot check a late sale line against the ledger; counted");
                true
            }
        }
    }
}

/// `lines`: the sale lines of the sale events, as delivered ([`SaleLine::of_event`]); `ledger`:
/// this worker's ledger (empty).
pub fn render<'s>(
    lines: VecCollection<'s, Time, SaleLine>,
    ledger: Ledger,
    config: &Config,
) -> Sales<'s> {
    let horizon = config.dedup_horizon_ms;
    let state = Dedup {
        memory: ExpiringSet::default(),
        ledger,
        horizon,
        retention_days: config.ledger_retention_days,
        trimmed: i64::MIN,
    };
    // The horizon's fingerprints: they fill for `horizon` of event time, then hold steady.
    let gauge = state_sizes::gauge("Sales: dedup");
    let verdicts = lines.keyed_in_time_order(
        "Sales: dedup",
        // By the machine alone (the key holds it): the lines are already on their machine's
        // worker, and stay there for every fold after dedup.
        |line: &SaleLine| hash_of(&line.machine_id),
        SaleLine::judging_order,
        state,
        move |dedup, line, diff, out| {
            // Deliveries only ever add; a negative diff would be a bug upstream.
            if diff <= 0 {
                tracing::error!(machine_id = %line.machine_id, diff, "sale line retracted before dedup; ignored");
                return;
            }
            // Keys whose horizon ends at or before this time go to the ledger before it is judged.
            dedup.expire(out.time());
            let expires = line.timestamp.saturating_add(horizon);
            for _ in 0..diff {
                let new = if expires <= out.time() {
                    out.give(Verdict::Late(line.machine_id.clone()), 1);
                    // The same identity may still be in memory (delivered since, dated later).
                    !dedup.memory.contains(&fingerprint(&line)) && dedup.late_line_is_new(&line)
                } else {
                    dedup.memory.insert(fingerprint(&line), expires)
                };
                if new {
                    out.give(Verdict::Accepted(line.clone()), 1);
                } else {
                    out.give(Verdict::Duplicate(line.machine_id.clone()), 1);
                }
            }
        },
        move |dedup, now| {
            dedup.expire(now);
            gauge.set(dedup.memory.size());
        },
    );
    let (accepted, duplicates, too_late) = fork(verdicts, "Sales: split", |v| match v {
        Verdict::Accepted(line) => Fork::A(line),
        Verdict::Duplicate(m) => Fork::B(m),
        Verdict::Late(m) => Fork::C(m),
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
/// `Ord` order); a line within its horizon is a duplicate while an earlier delivery's key is live,
/// a line past its horizon (late) is a duplicate if the same line of the same day was ever
/// accepted. Returns (accepted, duplicates, late arrivals).
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
    let mut ever: std::collections::HashSet<(MachineId, Text, u32, i64)> = Default::default();
    let (mut accepted, mut dups, mut late) = (vec![], vec![], vec![]);
    for (t, line) in sorted {
        let expires = line.timestamp + config.dedup_horizon_ms;
        let key = (
            line.machine_id.clone(),
            line.transaction_id.clone(),
            line.slot_number,
        );
        let day = line.timestamp.0.div_euclid(86_400_000);
        let first = if expires <= t {
            late.push(line.machine_id.clone());
            live.get(&key).is_none_or(|e| *e <= t)
                && !ever.contains(&(key.0.clone(), key.1.clone(), key.2, day))
        } else {
            live.get(&key).is_none_or(|e| *e <= t)
        };
        if first {
            if expires > t {
                live.insert(key.clone(), expires);
            }
            ever.insert((key.0, key.1, key.2, day));
            accepted.push((t, line));
        } else {
            dups.push(line.machine_id);
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
    fn dedup_state_reads_back_as_it_was_saved() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut dedup = Dedup {
            memory: ExpiringSet::default(),
            ledger: Ledger::for_worker(dir.path(), 0)?,
            horizon: 10,
            retention_days: 3,
            trimmed: 7,
        };
        dedup.memory.insert((1, 2), Time::from(Timestamp(5)));
        dedup.ledger.record(&[(1, 2, 3)])?;
        let bytes = crate::checkpoint::saved_bytes(|out| dedup.save(out))?;
        let saved: DedupSaved = bincode::deserialize(&bytes)?;
        assert_eq!(saved.0, vec![((1, 2), Timestamp(5))]);
        assert_eq!((saved.1, saved.2), (7, vec![(1, 2, 3)]));
        Ok(())
    }

    /// The ledger on disk holds fingerprints: they must not change with how ids are stored in
    /// memory (the value is what the version before interned machine ids computed).
    #[test]
    fn a_lines_fingerprint_is_what_earlier_versions_wrote_to_the_ledger()
    -> Result<(), Box<dyn std::error::Error>> {
        let line = SaleLine {
            machine_id: MachineId::parse("mach_00042")?,
            timestamp: Timestamp(1_705_314_495_000),
            slot_number: 148,
            product_id: "cola".into(),
            amount: Cents(250),
            quantity: 1,
            card: true,
            transaction_id: "txn_0001".into(),
            offline: false,
        };
        // Before, an id was a `CompactString` in a newtype whose derived hash was the text's.
        let old_key = (&Text::from("mach_00042"), "txn_0001", 148_u32);
        let old = (hash_of(&old_key), hash_of(&(old_key, 0x5eed_u32)));
        assert_eq!(fingerprint(&line), old);
        assert_eq!(old, (268105218640657908, 14466466781978648908));
        Ok(())
    }

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

    /// Dedup's order is a total order that puts one machine's lines in `Ord` order: the order
    /// of one identity's deliveries, which decides which is first, is `Ord`'s.
    #[test]
    fn judging_order_is_ords_within_a_machine() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let lines: Vec<SaleLine> = (0..400)
            .map(|_| {
                let m = ["m1", "m2", "m10", "a"][rng.random_range(0..4)];
                let mut line = SaleLine::of_event(testing::sale(
                    m,
                    rng.random_range(0..3),
                    rng.random_range(1..3),
                    rng.random_range(1..3) * 100,
                    ["t1", "t2"][rng.random_range(0..2)],
                ))
                .unwrap_or_else(|| panic!("a sale"));
                line.card = rng.random_bool(0.5);
                line.offline = rng.random_bool(0.5);
                line.quantity = rng.random_range(1..3);
                line
            })
            .collect();
        for a in &lines {
            for b in &lines {
                let judged = SaleLine::judging_order(a, b);
                assert_eq!(judged == std::cmp::Ordering::Equal, a == b);
                assert_eq!(judged, SaleLine::judging_order(b, a).reverse());
                if a.machine_id == b.machine_id {
                    assert_eq!(judged, a.cmp(b), "{a:?} against {b:?}");
                }
            }
        }
        let mut sorted = lines.clone();
        sorted.sort_unstable_by(SaleLine::judging_order);
        assert!(
            sorted
                .windows(2)
                .all(|w| SaleLine::judging_order(&w[0], &w[1]).is_le())
        );
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

    #[test]
    fn a_sale_days_late_counts_in_its_own_day_once() {
        let mut scenario = Scenario::empty();
        let day = 86_400_000;
        let t0 = testing::BASE + 10 * 3_600_000;
        // Counted at once, re-delivered 3, 10 and 30 days later (after the 48 h in memory).
        scenario.deliver(t0, testing::sale("m1", t0, 101, 250, "a"));
        for late in [3, 10, 30] {
            scenario.deliver(t0 + late * day, testing::sale("m1", t0, 101, 250, "a"));
        }
        // First delivered 30 days late (its day is still live), then again a day later.
        scenario.deliver(t0 + 30 * day, testing::sale("m1", t0, 148, 300, "b"));
        scenario.deliver(t0 + 31 * day, testing::sale("m1", t0, 148, 300, "b"));
        // First delivered 40 days late: its day has left the live view (35 days), so it is a
        // correction; its re-delivery is still recognised.
        scenario.deliver(t0 + 40 * day, testing::sale("m1", t0, 102, 700, "c"));
        scenario.deliver(t0 + 40 * day + 1000, testing::sale("m1", t0, 102, 700, "c"));
        // The clock moves on.
        scenario.deliver(
            t0 + 40 * day + 60_000,
            testing::heartbeat("m1", t0 + 40 * day, 4_000),
        );
        let views = testing::run(&scenario);
        testing::assert_view(
            &views,
            "sale_duplicates",
            vec![duplicates_row((testing::machine("m1"), 5))],
            0,
        );
        let corrections = testing::rows(&views, "revenue_corrections");
        assert_eq!(corrections.len(), 1, "{corrections:?}");
        assert_eq!(corrections[0].cell(1), Value::Date(t0.div_euclid(day)));
        assert_eq!(corrections[0].cell(3), Value::Money(Cents(700)));
        let late = testing::rows(&views, "too_late");
        let sales_late = late
            .iter()
            .find(|r| r.cell(0) == Value::text("sales"))
            .map(|r| r.cell(1));
        assert_eq!(sales_late, Some(Value::Int(7)), "late arrivals are counted");
    }
}
