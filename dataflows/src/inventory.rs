//! `inventory`: units in each slot, with low-stock and sold-out flags.
//!
//! ```sql
//! SELECT machine_id, slot_number, plan.product_id, plan.max_capacity AS capacity,
//!        coalesce(plan.max_capacity, 0) + sum(restocked) - sum(sold) AS units,
//!        units <= low_stock_threshold AS low_stock, units <= 0 AS sold_out
//! FROM planogram FULL JOIN restocks FULL JOIN accepted_sale_lines USING (machine_id, slot_number)
//! ```
//! Registering a machine fills each slot of its planogram to capacity; a restock adds the units
//! loaded; an accepted sale line takes its quantity. A slot nobody planned (no registry, or a slot
//! code outside the planogram) still shows, with unknown capacity and no flags, so revenue and
//! stock history replay without a registry. State is one small record per slot, in a vector per
//! machine (a fleet has millions of slots: a hash-table entry with its own key per slot cost
//! three times the memory); a count of changes keeps a slot at 0 units visible.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use vendflow_protocol::units::MS_PER_DAY;
use vendflow_protocol::{Event, EventKind, MachineId, RegistryRecord, Text};

use crate::config::Config;
use crate::dedup;
use crate::fold::{Ctx, KeyedFold, Published};
use crate::operators::{FastMap, Fork, Keyed, Time, fork, hash_of, insert_tight};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, col, null};
use crate::sales::SaleLine;

pub const INVENTORY: ViewDef = ViewDef {
    name: "inventory",
    description: "units per machine slot, with low-stock and sold-out flags",
    columns: &[
        col("machine_id", Text),
        col("slot_number", Int),
        null("product_id", Text),
        null("capacity", Int),
        col("units", Int),
        null("low_stock_threshold", Int),
        col("low_stock", Bool),
        col("sold_out", Bool),
    ],
};

/// A planned slot: what the registry says it holds.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Plan {
    pub product_id: Text,
    pub capacity: u32,
    pub low_stock_threshold: u32,
}

#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Level {
    pub machine_id: MachineId,
    pub slot_number: u32,
    pub plan: Option<Plan>,
    pub units: i64,
}

impl Level {
    pub fn low_stock(&self) -> bool {
        self.plan
            .as_ref()
            .is_some_and(|p| self.units <= i64::from(p.low_stock_threshold))
    }

    pub fn sold_out(&self) -> bool {
        self.plan.is_some() && self.units <= 0
    }
}

pub fn planogram(record: &RegistryRecord, config: &Config) -> Vec<((MachineId, u32), Plan)> {
    match record {
        RegistryRecord::Machine(m) => m
            .slots
            .iter()
            .map(|s| {
                let threshold = s
                    .low_stock_threshold
                    .unwrap_or(s.max_capacity * config.low_stock_percent / 100);
                let plan = Plan {
                    product_id: Text::from(s.product_id.as_str()),
                    capacity: s.max_capacity,
                    low_stock_threshold: threshold,
                };
                ((m.machine_id.clone(), s.slot_number), plan)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What changes a slot: its plan (from the registry, retractable) or a change of units.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Change {
    Plan(Plan),
    Units(i64),
}

/// One slot: units and the number of changes that made them (so that a slot at 0 units stays
/// visible), and its plans (a multiset: the registry can retract and replace one; one plan,
/// inline, is the usual case).
#[derive(Default, PartialEq, Serialize, Deserialize)]
struct Slot {
    number: u32,
    units: i64,
    changes: i64,
    plans: SmallVec<[(Plan, isize); 1]>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.units == 0 && self.changes == 0 && self.plans.is_empty()
    }

    /// The slot's rows: one per plan (as a join would), or one without a plan.
    fn levels(&self, machine_id: &MachineId, out: &mut SmallVec<[Level; 1]>) {
        if self.units == 0 && self.changes == 0 {
            return;
        }
        let level = |plan| Level {
            machine_id: machine_id.clone(),
            slot_number: self.number,
            plan,
            units: self.units,
        };
        let mut planned = false;
        for (plan, count) in self.plans.iter().filter(|(_, c)| *c > 0) {
            planned = true;
            for _ in 0..*count {
                out.push(level(Some(plan.clone())));
            }
        }
        if !planned {
            out.push(level(None));
        }
    }
}

/// Restocks, each once ([`crate::dedup`]): a machine's restocks are remembered by identity for
/// `restock_dedup_days` of event time, and a re-delivery meanwhile is dropped. Returns the
/// restocks to load and the duplicates (machine, `"restock"`).
pub fn restocks_once<'s>(
    restocks: VecCollection<'s, Time, Event>,
    config: &Config,
) -> (
    VecCollection<'s, Time, Event>,
    VecCollection<'s, Time, (MachineId, String)>,
) {
    let keep_ms = config.restock_dedup_days.saturating_mul(MS_PER_DAY);
    // Per machine: (identity, remembered until this ingestion time).
    let state: FastMap<MachineId, Vec<(u64, i64)>> = FastMap::default();
    let verdicts = restocks.keyed_in_time_order(
        "Inventory: restocks once",
        |e: &Event| hash_of(&e.machine_id),
        Event::cmp,
        state,
        move |seen, event, diff, out| {
            if diff <= 0 {
                tracing::error!(machine_id = %event.machine_id, diff, "restock retracted before dedup; ignored");
                return;
            }
            let now = out.time().ms();
            let id = dedup::identity(&event);
            let ids = seen.entry(event.machine_id.clone()).or_default();
            ids.retain(|(_, until)| *until > now);
            let fresh = !ids.iter().any(|(i, _)| *i == id);
            let duplicates = if fresh { diff - 1 } else { diff };
            if duplicates > 0 {
                out.give(Err(event.machine_id.clone()), duplicates);
            }
            if fresh {
                ids.push((id, event.timestamp.0.saturating_add(keep_ms)));
                out.give(Ok(event), 1);
            }
        },
        |_, _| {},
    );
    let (accepted, duplicates, _) = fork(verdicts, "Inventory: restocks split", |v| match v {
        Ok(e) => Fork::<_, _, std::convert::Infallible>::A(e),
        Err(m) => Fork::B((m, "restock".to_owned())),
    });
    (accepted, duplicates)
}

/// One machine's slots, by slot number, and the slots changed at the time being applied with
/// their rows before it.
#[derive(Default, PartialEq, Serialize, Deserialize)]
struct Machine {
    slots: Vec<Slot>,
    changed: Vec<(u32, SmallVec<[Level; 1]>)>,
}

/// Slot levels folded per machine: a fill to capacity when the slot is planned, a restock's
/// units, an accepted sale line's quantity. The fold publishes nothing per key; a slot's first
/// change of a time notes its rows before, and a timer at the same time (which runs after the
/// time's records) publishes the difference of each changed slot.
pub fn render<'s>(
    events: VecCollection<'s, Time, Event>,
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    plans: VecCollection<'s, Time, ((MachineId, u32), Plan)>,
) -> VecCollection<'s, Time, Level> {
    let plans = plans.map(|((m, s), p)| (m, (s, Change::Plan(p))));
    let restocks = events.flat_map(|e| match &e.kind {
        EventKind::Restock(r) => Some((
            e.machine_id.clone(),
            (r.slot_number, Change::Units(i64::from(r.quantity))),
        )),
        _ => None,
    });
    let sold = accepted.map(|l| {
        (
            l.machine_id.clone(),
            (l.slot_number, Change::Units(-i64::from(l.quantity))),
        )
    });
    plans.concat(restocks).concat(sold).fold_by_key(
        "Inventory",
        Published::Recomputed,
        hash_of::<MachineId>,
        |m, machine: &mut Machine, (number, change), diff, ctx| {
            let i = match machine.slots.binary_search_by_key(&number, |s| s.number) {
                Ok(i) => i,
                Err(i) => {
                    let slot = Slot {
                        number,
                        ..Slot::default()
                    };
                    insert_tight(&mut machine.slots, i, slot);
                    i
                }
            };
            let slot = &mut machine.slots[i];
            if !machine.changed.iter().any(|(n, _)| *n == number) {
                if machine.changed.is_empty() {
                    ctx.wake_at(ctx.now());
                }
                let mut before = SmallVec::new();
                slot.levels(m, &mut before);
                machine.changed.push((number, before));
            }
            match change {
                Change::Units(u) => {
                    slot.units += u * diff as i64;
                    slot.changes += diff as i64;
                }
                Change::Plan(p) => {
                    slot.units += i64::from(p.capacity) * diff as i64;
                    slot.changes += diff as i64;
                    match slot.plans.iter_mut().find(|(x, _)| *x == p) {
                        Some((_, c)) => *c += diff,
                        None => slot.plans.push((p, diff)),
                    }
                    slot.plans.retain(|(_, c)| *c != 0);
                }
            }
        },
        publish_changes,
        |_, _, _| {},
    )
}

/// Publishes, for each slot changed at this time, the difference between its rows before and
/// after; drops slots left empty.
fn publish_changes(m: &MachineId, machine: &mut Machine, ctx: &mut Ctx<'_, MachineId, Level>) {
    let mut after = SmallVec::<[Level; 1]>::new();
    for (number, before) in std::mem::take(&mut machine.changed) {
        let Ok(i) = machine.slots.binary_search_by_key(&number, |s| s.number) else {
            continue;
        };
        after.clear();
        machine.slots[i].levels(m, &mut after);
        if before != after {
            for level in before {
                ctx.give(level, -1);
            }
            for level in after.drain(..) {
                ctx.give(level, 1);
            }
        }
        if machine.slots[i].is_empty() {
            machine.slots.remove(i);
        }
    }
}

pub fn row(l: &Level) -> Row {
    Row::build(|r| {
        r.text(l.machine_id.as_str());
        r.int(i64::from(l.slot_number));
        let plan = l.plan.as_ref();
        r.opt(plan, |r, p| r.text(&p.product_id));
        r.opt(plan, |r, p| r.int(i64::from(p.capacity)));
        r.int(l.units);
        r.opt(plan, |r, p| r.int(i64::from(p.low_stock_threshold)));
        r.bool(l.low_stock());
        r.bool(l.sold_out());
    })
}

/// Batch definition of the levels, for oracle tests.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Level> {
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let mut plans: BTreeMap<(MachineId, u32), Plan> = BTreeMap::new();
    for r in &scenario.registry {
        plans.extend(planogram(r, config));
    }
    let mut units: BTreeMap<(MachineId, u32), i64> = BTreeMap::new();
    for (k, p) in &plans {
        *units.entry(k.clone()).or_default() += i64::from(p.capacity);
    }
    // A restock counts unless the same one (its machine's number for it, or else the whole
    // event) was counted within `restock_dedup_days` of its event time before this delivery.
    let keep = config.restock_dedup_days * vendflow_protocol::units::MS_PER_DAY;
    let mut counted: BTreeMap<_, i64> = BTreeMap::new();
    for (t, e) in &scenario.deliveries {
        if let EventKind::Restock(r) = &e.kind {
            let identity = crate::testing::naive_identity(e);
            let now = t.ms();
            if counted.get(&identity).is_some_and(|until| *until > now) {
                continue;
            }
            counted.insert(identity, e.timestamp.0 + keep);
            *units
                .entry((e.machine_id.clone(), r.slot_number))
                .or_default() += i64::from(r.quantity);
        }
    }
    for (_, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        *units
            .entry((l.machine_id.clone(), l.slot_number))
            .or_default() -= i64::from(l.quantity);
    }
    units
        .into_iter()
        .map(|((m, s), u)| Level {
            plan: plans.get(&(m.clone(), s)).cloned(),
            machine_id: m,
            slot_number: s,
            units: u,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;
    use crate::testing::{self, Scenario};

    #[test]
    fn inventory_matches_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = oracle(scenario).iter().map(row).collect();
            testing::assert_view(views, "inventory", expected, seed);
        }
    }

    #[test]
    fn a_slot_sold_to_zero_stays_visible_as_sold_out() {
        let mut scenario = Scenario::empty();
        scenario.register_machine("m1", "loc1", &[(1, 2)]);
        let t = testing::BASE;
        scenario.deliver(t, testing::sale("m1", t, 1, 100, "a"));
        scenario.deliver(t + 1, testing::sale("m1", t + 1, 1, 100, "b"));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "inventory");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cell(4), Value::Int(0));
        assert_eq!(rows[0].cell(7), Value::Bool(true), "sold out");
    }
}
