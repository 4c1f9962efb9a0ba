//! `stockout`: when each slot will run empty, and which machines need a restock visit.
//!
//! ```sql
//! -- demand per slot and day of week over the trailing `demand_days` (28) days
//! WITH demand AS (SELECT machine_id, slot_number, dow(timestamp) AS dow, sum(quantity) AS units
//!                 FROM accepted_sale_lines WHERE day(timestamp) > today - 28 GROUP BY 1, 2, 3),
//!      observed AS (SELECT machine_id, dow(day) AS dow, count(DISTINCT day(timestamp)) AS days
//!                 FROM events WHERE day(timestamp) > today - 28 GROUP BY 1, 2),
//!      -- the machine's weekday index: its average on a weekday over its average across them
//!      machine AS (SELECT machine_id, dow, sum(units) / days / avg(sum(units) / days) OVER w AS idx
//!                 FROM demand JOIN observed GROUP BY machine_id, dow),
//!      -- the slot's level: its units over its observed days, each weighed by its index
//!      rates AS (SELECT machine_id, slot_number, dow,
//!                       idx * sum(units) OVER slot / sum(days * idx) OVER slot AS per_day ...)
//! SELECT machine_id, slot_number, units, avg(per_day) AS daily_demand,
//!        hours_to_empty(units, per_day[dow], now()) AS hours_to_empty
//! FROM inventory JOIN rates   -- planned slots that sold in the window
//! -- restock_needed: machines with a slot empty within `restock_within_hours` (48)
//! ```
//! The demand model is [`vendflow_forecast::weekday_rates`]: a slot's level times its machine's
//! weekday index, pooled over the machine's planned slots that sold in the window (an office's
//! quiet weekend shows in a slot that sells twice a week). `vendflow forecast backtest` scores
//! it against the naive 30-day average and the slot's own weekday profile (the model before
//! it) on a months-long history: README, "Demand forecast".
//!
//! The forecast walks forward hour by hour from the current ingestion hour, draining each hour
//! at that weekday's rate, up to 14 days. "Now" is a one-row clock collection the source
//! advances each hour, so forecasts refresh as time passes without events.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{MachineId, Timestamp};

use crate::checkpoint::Durable;
use crate::config::Config;
use crate::fold::{Counted, Ctx, KeyedFold, Published};
use crate::inventory::Level;
use crate::operators::{Emit, FastMap, FastSet, Keyed, PUBLISH_CHUNK, Time, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, OrdF64, Row, Value, col, null};
use crate::sales::SaleLine;

pub const STOCKOUT: ViewDef = ViewDef {
    name: "stockout_forecast",
    description: "per planned slot that sells: units left, daily demand and hours until empty",
    columns: &[
        col("machine_id", Text),
        col("slot_number", Int),
        col("units", Int),
        col("daily_demand", Float),
        null("hours_to_empty", Float),
        col("needs_restock", Bool),
    ],
};

pub const RESTOCK_NEEDED: ViewDef = ViewDef {
    name: "restock_needed",
    description: "machines with a slot forecast to run empty within 48 hours",
    columns: &[
        col("machine_id", Text),
        col("slots", Int),
        col("hours_to_first_empty", Float),
    ],
};

/// The longest forecast, in hours; beyond it a slot counts as not running out.
const HORIZON_HOURS: usize = 14 * 24;

/// Hours from `now` until `units` are sold at the given weekday rates, if within 14 days.
pub fn hours_to_empty(units: i64, rates: &[f64; 7], now: Timestamp) -> Option<f64> {
    if units <= 0 {
        return Some(0.0);
    }
    let mut remaining = units as f64;
    let mut t = Timestamp(now.0 - now.0.rem_euclid(MS_PER_HOUR));
    for hour in 0..HORIZON_HOURS {
        let per_hour = rates[usize::from(t.weekday())] / 24.0;
        if per_hour >= remaining {
            return Some(hour as f64 + remaining / per_hour);
        }
        remaining -= per_hour;
        t = Timestamp(t.0 + MS_PER_HOUR);
    }
    None
}

#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Forecast {
    pub machine_id: MachineId,
    pub slot_number: u32,
    pub units: i64,
    pub daily_demand: OrdF64,
    pub hours_to_empty: Option<OrdF64>,
    pub needs_restock: bool,
}

/// A slot's forecast from its units left and its rates per weekday.
pub fn forecast(
    machine_id: MachineId,
    slot_number: u32,
    units: i64,
    rates: &[f64; 7],
    now: Timestamp,
    config: &Config,
) -> Forecast {
    let hours = hours_to_empty(units, rates, now);
    Forecast {
        machine_id,
        slot_number,
        units,
        daily_demand: OrdF64(rates.iter().sum::<f64>() / 7.0),
        hours_to_empty: hours.map(OrdF64),
        needs_restock: hours.is_some_and(|h| h <= config.restock_within_hours),
    }
}

/// Units sold per weekday (Monday first) over the trailing window: a slot's demand profile.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ByWeekday(pub [i64; 7]);

/// Days (day numbers since the epoch) while they are in the trailing window, oldest first, each
/// with what is kept for it; `armed`: the time of the pending timer (0: none), set at the
/// earliest day's end. One state per key with its days inline, not one per key-day.
#[derive(Default, Serialize, Deserialize)]
#[serde(bound(
    serialize = "A::Item: Serialize",
    deserialize = "A::Item: Deserialize<'de>"
))]
struct Trailing<A: smallvec::Array> {
    days: SmallVec<A>,
    armed: Time,
}

impl<A: smallvec::Array> PartialEq for Trailing<A>
where
    A::Item: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.days == other.days && self.armed == other.armed
    }
}

/// What [`Trailing`] holds per day: the day, and for demand its units.
trait Dated {
    fn day(&self) -> i64;
}

impl Dated for i64 {
    fn day(&self) -> i64 {
        *self
    }
}

impl Dated for (i64, i64) {
    fn day(&self) -> i64 {
        self.0
    }
}

impl<A: smallvec::Array> Trailing<A>
where
    A::Item: Dated,
{
    /// A day that leaves the window at `until` was added: a timer then, unless an earlier one
    /// is set.
    fn arm<K: Clone, O>(&mut self, until: Time, ctx: &mut Ctx<'_, K, O>) {
        if self.armed == Time::EPOCH || until < self.armed {
            self.armed = until;
            ctx.wake_at(until);
        }
    }

    /// A timer fired: drops the days whose window `end` has passed, and sets the next timer at
    /// the earliest remaining day's end when the one that fired was the one armed.
    fn expire<K: Clone, O>(&mut self, end: impl Fn(i64) -> Time, ctx: &mut Ctx<'_, K, O>) {
        let now = ctx.now();
        self.days.retain(|d| end(d.day()) > now);
        if self.armed <= now {
            self.armed = Time::EPOCH;
        }
        match self.days.first() {
            None => self.days = SmallVec::new(),
            Some(first) if self.armed == Time::EPOCH => {
                self.armed = end(first.day());
                ctx.wake_at(self.armed);
            }
            Some(_) => {}
        }
    }
}

/// One slot's units per day.
type SlotDemand = Trailing<[(i64, i64); 1]>;

impl SlotDemand {
    fn add(&mut self, day: i64, units: i64) {
        match self.days.binary_search_by_key(&day, |d| d.0) {
            Ok(at) => {
                self.days[at].1 += units;
                if self.days[at].1 == 0 {
                    self.days.remove(at);
                }
            }
            Err(at) if units != 0 => self.days.insert(at, (day, units)),
            Err(_) => {}
        }
    }
}

/// A machine's days with events.
type DaysSeen = Trailing<[i64; 2]>;

/// What a slot's fold hears: a sale's units on its day, or the units its plan holds.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum SlotIn {
    Sold(i64, i64),
    Planned(i64),
}

/// A slot's demand in the trailing window and its planned units (a multiset: a plan replaced
/// within one time is retracted and inserted).
#[derive(Default, PartialEq, Serialize, Deserialize)]
struct Slot {
    demand: SlotDemand,
    planned: SmallVec<[(i64, isize); 1]>,
}

impl Slot {
    fn plan(&mut self, units: i64, diff: isize) {
        match self.planned.iter_mut().find(|(u, _)| *u == units) {
            Some((_, n)) => *n += diff,
            None => self.planned.push((units, diff)),
        }
        self.planned.retain(|(_, n)| *n != 0);
    }
}

/// A slot's forecast input: its number, units sold by weekday, planned units.
type SlotInput = (u32, [i64; 7], i64);

/// What the forecasts of a shard hear.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ForecastIn {
    Demand(MachineId, SlotInput),
    Days(MachineId, [i64; 7]),
    Hour(Timestamp),
}

/// One machine's forecast inputs: its slots' (a multiset, as a join's input) and its days
/// observed by weekday.
#[derive(Default, Serialize, Deserialize)]
struct MachineInputs {
    slots: Counted<SlotInput>,
    days: Counted<[i64; 7]>,
}

impl MachineInputs {
    /// The machine's units by weekday: each slot that has a forecast input, once.
    fn units_by_weekday(&self) -> [i64; 7] {
        let mut units = [0i64; 7];
        let mut counted: SmallVec<[u32; 32]> = SmallVec::new();
        for ((slot, by_dow, _), n) in &self.slots.0 {
            if *n > 0 && !counted.contains(slot) {
                counted.push(*slot);
                for (total, u) in units.iter_mut().zip(by_dow) {
                    *total += u;
                }
            }
        }
        units
    }
}

/// A shard's machines and the current hour (a multiset: the clock retracts the old hour and
/// inserts the new one at the same time).
#[derive(Default, Serialize, Deserialize)]
struct Shard {
    hours: Counted<Timestamp>,
    machines: FastMap<MachineId, MachineInputs>,
}

/// The forecasts of a worker's shards. Within a time, each machine touched has its forecasts
/// before the time noted (all of a shard's machines when its hour changes), and at the time's
/// end the difference with its forecasts now is published.
#[derive(Default)]
struct Forecasts {
    shards: FastMap<u64, Shard>,
    /// Machines touched at this time, each with where its forecasts before it start in `before`.
    touched: Vec<((u64, MachineId), usize)>,
    touched_set: FastSet<(u64, MachineId)>,
    /// Shards whose hour changed at this time (every machine of theirs is touched).
    shards_touched: FastSet<u64>,
    before: Vec<Forecast>,
    published_upto: usize,
}

impl Durable for Forecasts {
    type Saved = FastMap<u64, Shard>;

    fn save(&self, out: &mut Vec<u8>) -> Result<(), bincode::Error> {
        if !self.touched.is_empty() {
            return Err(crate::checkpoint::not_between_times("the forecasts", None));
        }
        bincode::serialize_into(out, &self.shards)
    }

    fn restore(&mut self, shards: Self::Saved) {
        self.shards = shards;
    }
}

/// A machine's forecasts from its inputs at `hour`: one per slot input and day count, as the
/// join of the two (and of the hour) gave.
fn machine_forecasts(
    machine: &MachineId,
    inputs: &MachineInputs,
    hours: &Counted<Timestamp>,
    config: &Config,
    out: &mut Vec<Forecast>,
) {
    let machine_units = inputs.units_by_weekday();
    for (hour, nh) in &hours.0 {
        for ((slot, by_dow, units), ns) in &inputs.slots.0 {
            for (days, nd) in &inputs.days.0 {
                let n = nh * ns * nd;
                if n <= 0 {
                    continue;
                }
                let rates = vendflow_forecast::weekday_rates(by_dow, &machine_units, days);
                let f = forecast(machine.clone(), *slot, *units, &rates, *hour, config);
                for _ in 1..n {
                    out.push(f.clone());
                }
                out.push(f);
            }
        }
    }
}

impl Forecasts {
    /// Notes `machine`'s forecasts before this time, the first time it is touched in it.
    fn touch(&mut self, shard: u64, machine: &MachineId, config: &Config) {
        if !self.touched_set.insert((shard, machine.clone())) {
            return;
        }
        let at = self.before.len();
        if let Some(s) = self.shards.get(&shard)
            && let Some(inputs) = s.machines.get(machine)
        {
            machine_forecasts(machine, inputs, &s.hours, config, &mut self.before);
        }
        self.touched.push(((shard, machine.clone()), at));
    }

    fn apply(&mut self, shard: u64, input: ForecastIn, diff: isize, config: &Config) {
        match input {
            ForecastIn::Hour(hour) => {
                // A new hour changes every forecast of the shard: each machine is touched
                // before it (once, whatever number of hour records the time brings).
                if self.shards_touched.insert(shard) {
                    let machines: Vec<MachineId> = self
                        .shards
                        .get(&shard)
                        .map(|s| s.machines.keys().cloned().collect())
                        .unwrap_or_default();
                    for m in &machines {
                        self.touch(shard, m, config);
                    }
                }
                self.shards.entry(shard).or_default().hours.add(hour, diff);
            }
            ForecastIn::Demand(m, input) => {
                self.touch(shard, &m, config);
                let s = self.shards.entry(shard).or_default();
                s.machines.entry(m).or_default().slots.add(input, diff);
            }
            ForecastIn::Days(m, days) => {
                self.touch(shard, &m, config);
                let s = self.shards.entry(shard).or_default();
                s.machines.entry(m).or_default().days.add(days, diff);
            }
        }
    }

    /// Publishes the difference of the touched machines' forecasts (a part at a time); true
    /// when done.
    fn publish(&mut self, config: &Config, out: &mut Emit<'_, Forecast>) -> bool {
        let from = self.published_upto;
        let to = self.touched.len().min(from.saturating_add(PUBLISH_CHUNK));
        let mut after = Vec::new();
        for i in from..to {
            let ((shard, machine), start) = &self.touched[i];
            let end = self
                .touched
                .get(i + 1)
                .map_or(self.before.len(), |next| next.1);
            after.clear();
            let mut gone = false;
            if let Some(s) = self.shards.get_mut(shard) {
                if let Some(inputs) = s.machines.get(machine) {
                    if inputs.slots.0.is_empty() && inputs.days.0.is_empty() {
                        gone = true;
                    } else {
                        machine_forecasts(machine, inputs, &s.hours, config, &mut after);
                    }
                }
                if gone {
                    s.machines.remove(machine);
                }
            }
            let before = &mut self.before[*start..end];
            before.sort();
            after.sort();
            let (mut b, mut a) = (0, 0);
            while b < before.len() || a < after.len() {
                match (before.get(b), after.get(a)) {
                    (Some(x), Some(y)) if x == y => {
                        b += 1;
                        a += 1;
                    }
                    (Some(x), Some(y)) if x < y => {
                        out.give(x.clone(), -1);
                        b += 1;
                    }
                    (Some(x), None) => {
                        out.give(x.clone(), -1);
                        b += 1;
                    }
                    (_, Some(y)) => {
                        out.give(y.clone(), 1);
                        a += 1;
                    }
                    (None, None) => break,
                }
            }
        }
        self.published_upto = to;
        if to < self.touched.len() {
            return false;
        }
        self.shards
            .retain(|_, s| !(s.machines.is_empty() && s.hours.0.is_empty()));
        self.touched.clear();
        self.touched_set.clear();
        self.shards_touched.clear();
        self.before.clear();
        self.published_upto = 0;
        true
    }
}

pub struct Stockout<'s> {
    pub forecasts: VecCollection<'s, Time, Forecast>,
    /// Per machine: slots running out soon and the hours until the first is empty.
    pub restock_needed: VecCollection<'s, Time, (MachineId, usize, OrdF64)>,
}

/// `seen`: when each event of each machine happened (every kind of its own counts as a day
/// observed; a processor's settlement line is not the machine's).
/// Shards of the forecasts' join with the current hour (see [`render`]): enough to spread them
/// evenly over the workers.
const FORECAST_SHARDS: u64 = 256;

pub fn render<'s>(
    seen: VecCollection<'s, Time, (MachineId, Timestamp)>,
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    levels: &mut crate::operators::FanOut<'s, Level>,
    now: VecCollection<'s, Time, Timestamp>,
    config: &Config,
) -> Stockout<'s> {
    let window = config.demand_days * MS_PER_DAY;
    let in_window = move |day: i64| (Time::EPOCH, Timestamp::of_day(day) + window);

    let planned_units = levels.flat_map(|l| {
        l.plan.is_some().then(|| {
            (
                (l.machine_id.clone(), l.slot_number),
                SlotIn::Planned(l.units),
            )
        })
    });
    // Each slot's units per day while the day is in the trailing window, summed into its
    // weekday profile, with the slot's planned units: one state per slot (its days in a short
    // vector). Folded together rather than joined: a join arranged every slot's profile, each
    // change kept until compaction (462 K updates a worker at ten days of the benchmark), even
    // for slots no plan will ever meet.
    let demand = accepted
        .map(|l| {
            (
                (l.machine_id.clone(), l.slot_number),
                SlotIn::Sold(l.timestamp.day(), i64::from(l.quantity)),
            )
        })
        .concat(planned_units)
        .fold_by_key(
            "Stockout: demand by weekday",
            Published::Recomputed,
            |k: &(MachineId, u32)| hash_of(&k.0),
            move |_, slot: &mut Slot, input, diff, ctx| match input {
                SlotIn::Sold(day, units) => {
                    let until = in_window(day).1;
                    // A day already out of the window is not counted (as a sum's late record).
                    if until <= ctx.now() {
                        return;
                    }
                    slot.demand.add(day, units * diff as i64);
                    slot.demand.arm(until, ctx);
                }
                SlotIn::Planned(units) => slot.plan(units, diff),
            },
            move |_, slot, ctx| slot.demand.expire(|day| in_window(day).1, ctx),
            |(machine, slot_number), slot, out| {
                let mut profile = ByWeekday::default();
                for (day, units) in &slot.demand.days {
                    profile.0[usize::from(Timestamp(day * MS_PER_DAY).weekday()) % 7] += units;
                }
                if profile == ByWeekday::default() {
                    return;
                }
                // One forecast input per plan, as a join of the two would give.
                for (units, n) in &slot.planned {
                    for _ in 0..*n {
                        out.push((machine.clone(), (*slot_number, profile.0, *units)));
                    }
                }
            },
        );
    // Distinct days with events per machine in the trailing window, counted by weekday: a day
    // counts from its first event until it leaves the window. One state per machine (its days
    // in a short vector, one timer at the earliest day's end), not one per machine-day: ten
    // days of a fleet were 500 K keys.
    let days_observed = seen.map(|(m, ts)| (m, ts.day())).fold_by_key(
        "Stockout: days observed",
        Published::Recomputed,
        hash_of::<MachineId>,
        move |_, seen: &mut DaysSeen, day, diff, ctx| {
            let until = in_window(day).1;
            if diff <= 0 || until <= ctx.now() {
                return;
            }
            if let Err(at) = seen.days.binary_search(&day) {
                seen.days.insert(at, day);
                seen.arm(until, ctx);
            }
        },
        move |_, seen, ctx| seen.expire(|day| in_window(day).1, ctx),
        |machine, seen, out| {
            if !seen.days.is_empty() {
                let mut by_weekday = [0i64; 7];
                for day in &seen.days {
                    by_weekday[usize::from(Timestamp(day * MS_PER_DAY).weekday()) % 7] += 1;
                }
                out.push((machine.clone(), by_weekday));
            }
        },
    );
    let config = config.clone();
    // Every forecast depends on the current hour, so each hour recomputes them all. The
    // forecasts' inputs are kept by a shard of the machine (its stable hash, the same in every
    // process of a cluster), with the hour copied to every shard, so the work spreads over the
    // workers. One keyed operator holds, per shard, each machine's forecast inputs and the hour
    // (it was two differential joins: their arrangements could not be saved in a checkpoint).
    let shard_of = |m: &MachineId| m.stable_hash() % FORECAST_SHARDS;
    let inputs = demand
        .map(move |(m, (s, by_dow, units))| {
            (shard_of(&m), ForecastIn::Demand(m, (s, by_dow, units)))
        })
        .concat(days_observed.map(move |(m, days)| (shard_of(&m), ForecastIn::Days(m, days))))
        .concat(
            now.flat_map(|t| (0..FORECAST_SHARDS).map(move |shard| (shard, ForecastIn::Hour(t)))),
        );
    let on_publish = config.clone();
    let forecasts = inputs.keyed_steps(
        "Stockout: forecasts",
        |(shard, _): &(u64, ForecastIn)| *shard,
        Forecasts::default(),
        |_, _| {},
        move |state, (shard, input), diff, _| state.apply(shard, input, diff, &config),
        |_, _| {},
        move |state, out| state.publish(&on_publish, out),
    );
    let restock_needed = forecasts
        .clone()
        .flat_map(|f| match (f.needs_restock, f.hours_to_empty) {
            (true, Some(h)) => Some((f.machine_id, h)),
            _ => None,
        })
        .fold_by_key(
            "Stockout: machines to restock",
            Published::Recomputed,
            hash_of::<MachineId>,
            |_, hours: &mut Counted<OrdF64>, h, diff, _| hours.add(h, diff),
            |_, _, _| {},
            |m, hours, out| {
                if hours.0.is_empty() {
                    return;
                }
                let slots: isize = hours.0.iter().map(|(_, c)| *c).sum();
                let first = hours
                    .0
                    .iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(h, _)| *h)
                    .min()
                    .unwrap_or(OrdF64(0.0));
                out.push((m.clone(), slots.max(0) as usize, first));
            },
        );
    Stockout {
        forecasts,
        restock_needed,
    }
}

pub fn row(f: Forecast) -> Row {
    Row::from([
        Value::text(f.machine_id.as_str()),
        Value::Int(i64::from(f.slot_number)),
        Value::Int(f.units),
        Value::Float(f.daily_demand),
        Value::opt(f.hours_to_empty, Value::Float),
        Value::Bool(f.needs_restock),
    ])
}

pub fn restock_row((m, slots, first): (MachineId, usize, OrdF64)) -> Row {
    Row::from([
        Value::text(m.as_str()),
        Value::Int(slots as i64),
        Value::Float(first),
    ])
}

/// The batch answer (`stockout_forecast` rows, `restock_needed` rows), from the accepted sales,
/// the inventory oracle and the events, walking each slot's hours on its own (not with
/// [`hours_to_empty`]).
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> (Vec<Row>, Vec<Row>) {
    use std::collections::{BTreeMap, BTreeSet};
    let config = &scenario.config;
    let now = scenario.now();
    let window = config.demand_days * MS_PER_DAY;

    let mut demand: BTreeMap<(MachineId, u32), [i64; 7]> = BTreeMap::new();
    for (t, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        let until = Timestamp(l.timestamp.day() * MS_PER_DAY + window);
        if until > now && until > t {
            demand
                .entry((l.machine_id.clone(), l.slot_number))
                .or_default()[usize::from(l.timestamp.weekday())] += i64::from(l.quantity);
        }
    }
    let mut days: BTreeMap<MachineId, BTreeSet<i64>> = BTreeMap::new();
    for (t, e) in &scenario.deliveries {
        if matches!(e.kind, vendflow_protocol::EventKind::Settlement(_)) {
            continue;
        }
        let until = Timestamp(e.timestamp.day() * MS_PER_DAY + window);
        if until > now && until > *t {
            days.entry(e.machine_id.clone())
                .or_default()
                .insert(e.timestamp.day());
        }
    }
    // The hour the forecast starts from: the current ingestion hour.
    let hour_start = now.window_start(MS_PER_HOUR).ms();

    let levels = crate::inventory::oracle(scenario);
    // What is forecast: planned slots that sold in the window, of machines with observed days.
    let forecast_for = |level: &crate::inventory::Level| {
        let key = (level.machine_id.clone(), level.slot_number);
        match (&level.plan, demand.get(&key), days.get(&level.machine_id)) {
            (Some(_), Some(by_dow), Some(d)) => Some((*by_dow, d)),
            _ => None,
        }
    };
    // Each machine's units by weekday over those slots (each slot once).
    let mut machine_units: BTreeMap<MachineId, (BTreeSet<u32>, [i64; 7])> = BTreeMap::new();
    for level in &levels {
        if let Some((by_dow, _)) = forecast_for(level) {
            let m = machine_units.entry(level.machine_id.clone()).or_default();
            if m.0.insert(level.slot_number) {
                for (total, units) in m.1.iter_mut().zip(by_dow) {
                    *total += units;
                }
            }
        }
    }

    let mut forecasts = Vec::new();
    let mut restock: BTreeMap<MachineId, (i64, f64)> = BTreeMap::new();
    for level in levels {
        let Some((by_dow, d)) = forecast_for(&level) else {
            continue;
        };
        // Days observed per weekday; the machine's average per observed weekday, and its index
        // (that average over the mean of the averages; 1 for a weekday not observed).
        let mut observed = [0i64; 7];
        for day in d {
            observed[usize::from(Timestamp(day * MS_PER_DAY).weekday())] += 1;
        }
        let units = machine_units.get(&level.machine_id).map_or([0; 7], |m| m.1);
        let averages: Vec<f64> = (0..7)
            .filter(|w| observed[*w] > 0)
            .map(|w| units[w] as f64 / observed[w] as f64)
            .collect();
        let mean = averages.iter().sum::<f64>() / averages.len().max(1) as f64;
        let index: Vec<f64> = (0..7)
            .map(|w| {
                if observed[w] > 0 && mean > 0.0 {
                    units[w] as f64 / observed[w] as f64 / mean
                } else {
                    1.0
                }
            })
            .collect();
        // The slot's level: its units over its index-weighed observed days.
        let sold: i64 = by_dow.iter().sum();
        let index_days: f64 = (0..7).map(|w| observed[w] as f64 * index[w]).sum();
        let level_per_day = if sold > 0 && index_days > 0.0 {
            sold as f64 / index_days
        } else {
            0.0
        };
        let per_day: Vec<f64> = index.iter().map(|i| level_per_day * i).collect();
        // Drain the slot hour by hour, each hour at its weekday's rate, for up to 14 days.
        let hours = if level.units <= 0 {
            Some(0.0)
        } else {
            let mut left = level.units as f64;
            let mut found = None;
            for hour in 0..14 * 24 {
                let at = Timestamp(hour_start + hour * MS_PER_HOUR);
                let rate = per_day[usize::from(at.weekday())] / 24.0;
                if rate >= left {
                    found = Some(hour as f64 + left / rate);
                    break;
                }
                left -= rate;
            }
            found
        };
        let needs = hours.is_some_and(|h| h <= config.restock_within_hours);
        if needs {
            let h = hours.unwrap_or(0.0);
            let e = restock.entry(level.machine_id.clone()).or_insert((0, h));
            e.0 += 1;
            e.1 = e.1.min(h);
        }
        forecasts.push(Row::from([
            Value::text(level.machine_id.as_str()),
            Value::Int(i64::from(level.slot_number)),
            Value::Int(level.units),
            Value::Float(OrdF64(per_day.iter().sum::<f64>() / 7.0)),
            Value::opt(hours.map(OrdF64), Value::Float),
            Value::Bool(needs),
        ]));
    }
    let restock = restock
        .into_iter()
        .map(|(m, (n, h))| {
            Row::from([
                Value::text(m.as_str()),
                Value::Int(n),
                Value::Float(OrdF64(h)),
            ])
        })
        .collect();
    (forecasts, restock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self};

    #[test]
    fn stockout_matches_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (forecasts, restock) = oracle(scenario);
            testing::assert_view(views, "stockout_forecast", forecasts, seed);
            testing::assert_view(views, "restock_needed", restock, seed);
        }
    }

    #[test]
    fn forecast_follows_the_weekday_profile() {
        // The machine sells on Mondays only (one week observed), the slot 24 of it: Monday
        // 00:00 with 12 left, empty at noon.
        let monday = Timestamp::parse_rfc3339("2024-01-15T00:00:00Z").unwrap_or_default();
        let mut by_dow = [0; 7];
        by_dow[0] = 24;
        let rates = vendflow_forecast::weekday_rates(&by_dow, &[240, 0, 0, 0, 0, 0, 0], &[1; 7]);
        assert_eq!(rates[0], 24.0);
        assert_eq!(hours_to_empty(12, &rates, monday), Some(12.0));
        // On Tuesday nothing sells until next Monday.
        let tuesday = Timestamp(monday.0 + MS_PER_DAY);
        assert_eq!(hours_to_empty(12, &rates, tuesday), Some(6.0 * 24.0 + 12.0));
        assert_eq!(hours_to_empty(12, &[0.0; 7], monday), None);
        assert_eq!(hours_to_empty(0, &rates, monday), Some(0.0));
    }
}
