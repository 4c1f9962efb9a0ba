//! `stockout`: when each slot will run empty, and which machines need a restock visit.
//!
//! ```sql
//! -- each slot's units per day over the trailing `demand_days` (28) days
//! WITH slot_days AS (SELECT machine_id, slot_number, day(timestamp) AS day, sum(quantity) AS units
//!                    FROM accepted_sale_lines WHERE day(timestamp) > today - 28 GROUP BY 1, 2, 3),
//!      -- each machine's days with events over `demand_index_days` (112), with what it sold
//!      machine_days AS (SELECT machine_id, day(timestamp) AS day, sum(quantity) AS units
//!                       FROM events LEFT JOIN accepted_sale_lines ... GROUP BY 1, 2)
//! SELECT machine_id, slot_number, units,
//!        avg(rate) AS daily_demand,               -- forecast::demand(machine_days, slot_days)
//!        median_time_to_empty(units, rates, holiday_factor, dispersion, now()) AS hours_to_empty
//! FROM inventory JOIN slot_days JOIN machine_days  -- planned slots that sold in the window
//! -- restock_needed: machines with a slot empty within `restock_within_hours` (48)
//! ```
//! The demand model is [`vendflow_forecast::demand`] (the backtest's `engine` row): the
//! machine's weekday index from its working days, each slot's recency-weighted level times it,
//! a holiday (`Config::holidays`) at the machine's own holiday factor, and a negative binomial
//! at the machine's dispersion. A slot's `hours_to_empty` is its median time to empty: when the
//! demand expected since the current hour reaches [`vendflow_forecast::empty_threshold`].
//! `vendflow forecast backtest` scores the model against the naive 30-day average and the
//! engine's former models on a months-long history: README, "Demand forecast".
//!
//! The forecast walks forward a day at a time from the current ingestion hour, up to 14 days.
//! "Now" is a one-row clock collection the source advances each hour, so forecasts refresh as
//! time passes without events.

use std::collections::hash_map::Entry;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{MachineId, Timestamp};

use crate::checkpoint::Durable;
use crate::config::Config;
use crate::fold::{Counted, Ctx, KeyedFold, Published};
use crate::inventory::Level;
use crate::operators::{Emit, FastMap, Keyed, PUBLISH_CHUNK, RETAINED, Time, hash_of, trim};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, OrdF64, Row, Value, col, null};
use crate::sales::SaleLine;
use vendflow_forecast::Demand;

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

/// Hours from the start of `now`'s hour until a slot with `units` left is as likely as not to
/// be empty (its median time to empty), if within 14 days: each hour drains its share of its
/// day's mean demand (a holiday's at the machine's holiday factor) until the demand expected
/// since then reaches [`vendflow_forecast::empty_threshold`]. A day at a time: its hours drain
/// alike.
pub fn hours_to_empty(
    units: i64,
    demand: &Demand,
    slot: usize,
    now: Timestamp,
    holiday: impl Fn(i64) -> bool,
) -> Option<f64> {
    if units <= 0 {
        return Some(0.0);
    }
    let mut remaining = vendflow_forecast::empty_threshold(units, demand.dispersion);
    let start = Timestamp(now.0 - now.0.rem_euclid(MS_PER_HOUR));
    let (mut day, mut left_today) = (start.day(), 24 - usize::from(start.hour()));
    let mut elapsed = 0;
    while elapsed < HORIZON_HOURS {
        let hours = left_today.min(HORIZON_HOURS - elapsed);
        let per_hour = demand.mean(slot, day, holiday(day)) / 24.0;
        let span = per_hour * hours as f64;
        if per_hour > 0.0 && span >= remaining {
            return Some(elapsed as f64 + remaining / per_hour);
        }
        remaining -= span;
        elapsed += hours;
        day += 1;
        left_today = 24;
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

/// Slot `slot` of `demand`'s forecast from its units left.
pub fn forecast(
    machine_id: MachineId,
    slot_number: u32,
    units: i64,
    demand: &Demand,
    slot: usize,
    now: Timestamp,
    config: &Config,
) -> Forecast {
    let hours = hours_to_empty(units, demand, slot, now, |day| {
        config.holidays.contains(&day)
    });
    let rates = demand.rates.get(slot).copied().unwrap_or_default();
    Forecast {
        machine_id,
        slot_number,
        units,
        daily_demand: OrdF64(rates.iter().sum::<f64>() / 7.0),
        hours_to_empty: hours.map(OrdF64),
        needs_restock: hours.is_some_and(|h| h <= config.restock_within_hours),
    }
}

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

/// A machine's days with events, each with the units it sold on it (every slot).
type DaysSeen = Trailing<[(i64, i64); 2]>;

/// A day's units, by day (a slot's in the level window, a machine's in the index window).
pub type Days = SmallVec<[(i64, i64); 2]>;
type DaysSlice = [(i64, i64)];

/// What a machine's days fold hears: an event on a day, or units sold on it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum DayIn {
    Seen(i64),
    Sold(i64, i64),
}

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

/// A slot's forecast input: its number, units sold per day in the level window, planned units.
type SlotInput = (u32, Days, i64);

/// What the forecasts of a shard hear.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ForecastIn {
    Demand(MachineId, SlotInput),
    Days(MachineId, Days),
    Hour(Timestamp),
}

/// One machine's forecast inputs: its slots' (a multiset, as a join's input) and its days
/// observed with their units.
#[derive(Default, Serialize, Deserialize)]
struct MachineInputs {
    slots: Counted<SlotInput>,
    days: Counted<Days>,
}

/// A shard's machines and the current hour (a multiset: the clock retracts the old hour and
/// inserts the new one at the same time).
#[derive(Default, Serialize, Deserialize)]
struct Shard {
    hours: Counted<Timestamp>,
    machines: FastMap<MachineId, MachineInputs>,
}

/// The forecasts of a worker's shards. Within a time, each machine touched has its forecasts
/// before the time noted, and at the time's end the difference with its forecasts now is
/// published. A machine touched only because its shard's hour changed (every machine, once an
/// hour) has its inputs unchanged: its forecasts before are computed when it is published, a
/// part at a time, from the shard's hour before. (Noted when the hour changed, they were every
/// slot's forecast at once: 1.5 M of them, ~84 MB, for 50,000 machines of 30 planned slots.)
#[derive(Default)]
struct Forecasts {
    shards: FastMap<u64, Shard>,
    /// Machines touched at this time, each with its forecasts before it.
    touched: Vec<((u64, MachineId), Before)>,
    /// Where each touched machine is in `touched`.
    touched_at: FastMap<(u64, MachineId), usize>,
    /// Shards whose hour changed at this time, with their hours before it.
    hours_before: FastMap<u64, Counted<Timestamp>>,
    before: Vec<Forecast>,
    published_upto: usize,
}

/// A touched machine's forecasts before the time.
#[derive(Clone, Copy)]
enum Before {
    /// Computed when it was touched: this range of [`Forecasts::before`].
    Noted(usize, usize),
    /// Its inputs have not changed in this time, only its shard's hour: computed when published.
    Unchanged,
}

impl Durable for Forecasts {
    type Saved = FastMap<u64, Shard>;

    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        if !self.touched.is_empty() {
            return Err(crate::checkpoint::not_between_times("the forecasts", None));
        }
        bincode::serialize_into(out, &self.shards)
    }

    fn restore(&mut self, shards: Self::Saved) {
        self.shards = shards;
    }
}

/// A machine's forecasts from its inputs at `hour`: one per slot input and day record, as the
/// join of the two (and of the hour) gave. The model ([`vendflow_forecast::demand`]) learns
/// from every slot of the machine at once (their dispersion), each slot once, by slot number.
fn machine_forecasts(
    machine: &MachineId,
    inputs: &MachineInputs,
    hours: &Counted<Timestamp>,
    config: &Config,
    out: &mut Vec<Forecast>,
) {
    let mut slots: SmallVec<[(u32, &DaysSlice); 32]> = SmallVec::new();
    for ((slot, days, _), n) in &inputs.slots.0 {
        if *n > 0 {
            slots.push((*slot, days.as_slice()));
        }
    }
    if slots.is_empty() {
        // A machine without a planned slot that sold (every machine, without a registry).
        return;
    }
    slots.sort_by_key(|(slot, _)| *slot);
    slots.dedup_by_key(|(slot, _)| *slot);
    let sold: SmallVec<[&DaysSlice; 32]> = slots.iter().map(|(_, days)| *days).collect();
    let holiday = |day: i64| config.holidays.contains(&day);
    for (hour, nh) in &hours.0 {
        for (days, nd) in &inputs.days.0 {
            if nh * nd <= 0 {
                continue;
            }
            let demand = vendflow_forecast::demand(
                hour.day() + 1,
                days,
                &sold,
                config.demand_days,
                config.demand_index_days.max(config.demand_days),
                holiday,
            );
            for ((slot, _, units), ns) in &inputs.slots.0 {
                let n = nh * ns * nd;
                if n <= 0 {
                    continue;
                }
                let Ok(at) = slots.binary_search_by_key(slot, |(s, _)| *s) else {
                    continue;
                };
                let f = forecast(machine.clone(), *slot, *units, &demand, at, *hour, config);
                for _ in 1..n {
                    out.push(f.clone());
                }
                out.push(f);
            }
        }
    }
}

impl Forecasts {
    /// Notes `machine`'s forecasts before this time, before its inputs change (the first time
    /// they do in it).
    fn touch(&mut self, shard: u64, machine: &MachineId, config: &Config) {
        let key = (shard, machine.clone());
        let at = match self.touched_at.get(&key) {
            Some(&i) if matches!(self.touched[i].1, Before::Noted(..)) => return,
            Some(&i) => Some(i),
            None => None,
        };
        let start = self.before.len();
        if let Some(s) = self.shards.get(&shard)
            && let Some(inputs) = s.machines.get(machine)
        {
            let hours = self.hours_before.get(&shard).unwrap_or(&s.hours);
            machine_forecasts(machine, inputs, hours, config, &mut self.before);
        }
        let noted = Before::Noted(start, self.before.len());
        match at {
            Some(i) => self.touched[i].1 = noted,
            None => {
                self.touched_at.insert(key.clone(), self.touched.len());
                self.touched.push((key, noted));
            }
        }
    }

    fn apply(&mut self, shard: u64, input: ForecastIn, diff: isize, config: &Config) {
        match input {
            ForecastIn::Hour(hour) => {
                // A new hour changes every forecast of the shard: each machine is touched
                // (once, whatever number of hour records the time brings), its forecasts
                // before computed from the hours before when it is published.
                let s = self.shards.entry(shard).or_default();
                if let Entry::Vacant(hours) = self.hours_before.entry(shard) {
                    hours.insert(s.hours.clone());
                    for m in s.machines.keys() {
                        let key = (shard, m.clone());
                        if let Entry::Vacant(at) = self.touched_at.entry(key.clone()) {
                            at.insert(self.touched.len());
                            self.touched.push((key, Before::Unchanged));
                        }
                    }
                }
                s.hours.add(hour, diff);
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
        // A part ends at PUBLISH_CHUNK machines or changes, whichever comes first: an hour
        // changes nearly every forecast, two updates for each of a machine's slots.
        let (mut to, mut changes) = (from, 0);
        let (mut after, mut unchanged) = (Vec::new(), Vec::new());
        while to < self.touched.len() && to - from < PUBLISH_CHUNK && changes < PUBLISH_CHUNK {
            let ((shard, machine), noted) = &self.touched[to];
            to += 1;
            after.clear();
            unchanged.clear();
            let mut gone = false;
            if let Some(s) = self.shards.get_mut(shard) {
                if let Some(inputs) = s.machines.get(machine) {
                    if inputs.slots.0.is_empty() && inputs.days.0.is_empty() {
                        gone = true;
                    } else {
                        machine_forecasts(machine, inputs, &s.hours, config, &mut after);
                        if let (Before::Unchanged, Some(hours)) =
                            (noted, self.hours_before.get(shard))
                        {
                            machine_forecasts(machine, inputs, hours, config, &mut unchanged);
                        }
                    }
                }
                if gone {
                    s.machines.remove(machine);
                }
            }
            let before = match *noted {
                Before::Noted(start, end) => &mut self.before[start..end],
                Before::Unchanged => &mut unchanged[..],
            };
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
                        changes += 1;
                    }
                    (Some(x), None) => {
                        out.give(x.clone(), -1);
                        b += 1;
                        changes += 1;
                    }
                    (_, Some(y)) => {
                        out.give(y.clone(), 1);
                        a += 1;
                        changes += 1;
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
        self.touched_at.clear();
        self.hours_before.clear();
        self.before.clear();
        self.published_upto = 0;
        // An hour touches every machine; a live time, a few.
        trim(&mut self.touched);
        trim(&mut self.before);
        if self.touched_at.capacity() > RETAINED {
            self.touched_at = FastMap::default();
        }
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
    // The machine's days are kept for its weekday index and holiday factor, at least as long
    // as a slot's.
    let index_window = config.demand_index_days.max(config.demand_days) * MS_PER_DAY;
    let in_index = move |day: i64| Timestamp::of_day(day) + index_window;

    let planned_units = levels.flat_map(|l| {
        l.plan.is_some().then(|| {
            (
                (l.machine_id.clone(), l.slot_number),
                SlotIn::Planned(l.units),
            )
        })
    });
    // Each slot's units per day while the day is in the trailing window, with the slot's
    // planned units: one state per slot (its days in a short vector). Folded together rather
    // than joined: a join arranged every slot's profile, each change kept until compaction
    // (462 K updates a worker at ten days of the benchmark), even for slots no plan will ever
    // meet.
    let demand = accepted
        .map(|l| {
            (
                (l.machine_id.clone(), l.slot_number),
                SlotIn::Sold(l.timestamp.day(), i64::from(l.quantity)),
            )
        })
        .concat(planned_units)
        .fold_by_key(
            "Stockout: demand by day",
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
                if slot.demand.days.is_empty() {
                    return;
                }
                // One forecast input per plan, as a join of the two would give.
                let days: Days = slot.demand.days.iter().copied().collect();
                for (units, n) in &slot.planned {
                    for _ in 0..*n {
                        out.push((machine.clone(), (*slot_number, days.clone(), *units)));
                    }
                }
            },
        );
    // Days with events per machine in the index window, each with the units the machine sold
    // on it (every slot): a day counts from its first event until it leaves the window. One
    // state per machine (its days in a short vector, one timer at the earliest day's end), not
    // one per machine-day: ten days of a fleet were 500 K keys.
    let sold = accepted.map(|l| {
        (
            l.machine_id.clone(),
            DayIn::Sold(l.timestamp.day(), i64::from(l.quantity)),
        )
    });
    let days_observed = seen
        .map(|(m, ts)| (m, DayIn::Seen(ts.day())))
        .concat(sold)
        .fold_by_key(
            "Stockout: days observed",
            Published::Recomputed,
            hash_of::<MachineId>,
            move |_, seen: &mut DaysSeen, input, diff, ctx| {
                let (day, units) = match input {
                    // An event observes its day; its retraction does not take that back.
                    DayIn::Seen(day) if diff > 0 => (day, 0),
                    DayIn::Seen(_) => return,
                    DayIn::Sold(day, units) => (day, units * diff as i64),
                };
                let until = in_index(day);
                if until <= ctx.now() {
                    return;
                }
                match seen.days.binary_search_by_key(&day, |d| d.0) {
                    Ok(at) => seen.days[at].1 += units,
                    Err(at) => {
                        seen.days.insert(at, (day, units));
                        seen.arm(until, ctx);
                    }
                }
            },
            move |_, seen, ctx| seen.expire(in_index, ctx),
            |machine, seen, out| {
                if !seen.days.is_empty() {
                    out.push((machine.clone(), seen.days.iter().copied().collect::<Days>()));
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
        .map(move |(m, (s, days, units))| (shard_of(&m), ForecastIn::Demand(m, (s, days, units))))
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
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let now = scenario.now();
    let window = config.demand_days * MS_PER_DAY;
    let index_window = config.demand_index_days.max(config.demand_days) * MS_PER_DAY;
    let holiday = |day: i64| config.holidays.contains(&day);
    let weekday = |day: i64| usize::from(Timestamp(day * MS_PER_DAY).weekday());
    // A record counts while its day is in its window, if it arrived before the day left it.
    let counts = |day: i64, width: i64, t: Timestamp| {
        let until = Timestamp(day * MS_PER_DAY + width);
        until > now && until > t
    };

    // Each slot's units per day in the level window; each machine's days with events in the
    // index window, with the units it sold on each.
    let mut demand: BTreeMap<(MachineId, u32), BTreeMap<i64, i64>> = BTreeMap::new();
    let mut days: BTreeMap<MachineId, BTreeMap<i64, i64>> = BTreeMap::new();
    for (t, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        let day = l.timestamp.day();
        if counts(day, window, t) {
            *demand
                .entry((l.machine_id.clone(), l.slot_number))
                .or_default()
                .entry(day)
                .or_default() += i64::from(l.quantity);
        }
        if counts(day, index_window, t) {
            *days
                .entry(l.machine_id.clone())
                .or_default()
                .entry(day)
                .or_default() += i64::from(l.quantity);
        }
    }
    for (t, e) in &scenario.deliveries {
        if matches!(e.kind, vendflow_protocol::EventKind::Settlement(_)) {
            continue;
        }
        if counts(e.timestamp.day(), index_window, *t) {
            days.entry(e.machine_id.clone())
                .or_default()
                .entry(e.timestamp.day())
                .or_default();
        }
    }
    // The hour the forecast starts from: the current ingestion hour; the windows end with its
    // day.
    let hour_start = now.window_start(MS_PER_HOUR).ms();
    let end = Timestamp(hour_start).day() + 1;

    let levels = crate::inventory::oracle(scenario);
    // What is forecast: planned slots that sold in the window, of machines with observed days.
    let forecast_for = |level: &crate::inventory::Level| {
        let key = (level.machine_id.clone(), level.slot_number);
        match (&level.plan, demand.get(&key), days.get(&level.machine_id)) {
            (Some(_), Some(sold), Some(_)) => Some(sold),
            _ => None,
        }
    };
    // Each machine's forecast slots, by number.
    let mut slots: BTreeMap<MachineId, BTreeMap<u32, &BTreeMap<i64, i64>>> = BTreeMap::new();
    for level in &levels {
        if let Some(sold) = forecast_for(level) {
            slots
                .entry(level.machine_id.clone())
                .or_default()
                .insert(level.slot_number, sold);
        }
    }
    // Each machine's model, worked out here on its own: its weekday index over the working
    // days of the index window, its holiday factor, each slot's recency-weighted level and
    // rates, the dispersion of its slots' days around them.
    struct Model {
        rates: BTreeMap<u32, [f64; 7]>,
        factor: f64,
        dispersion: f64,
    }
    let mut models: BTreeMap<MachineId, Model> = BTreeMap::new();
    for (machine, machine_slots) in &slots {
        let observed: Vec<(i64, i64)> = days[machine]
            .iter()
            .filter(|(d, _)| **d >= end - config.demand_index_days.max(config.demand_days))
            .filter(|(d, _)| **d < end)
            .map(|(d, u)| (*d, *u))
            .collect();
        let (mut units, mut count) = ([0i64; 7], [0i64; 7]);
        for (d, u) in &observed {
            if !holiday(*d) {
                units[weekday(*d)] += u.max(&0);
                count[weekday(*d)] += 1;
            }
        }
        let averages: Vec<f64> = (0..7)
            .filter(|w| count[*w] > 0)
            .map(|w| units[w].max(0) as f64 / count[w] as f64)
            .collect();
        let sum: f64 = averages.iter().sum();
        let index: Vec<f64> = (0..7)
            .map(|w| {
                if count[w] > 0 && sum > 0.0 {
                    units[w].max(0) as f64 / count[w] as f64 / (sum / averages.len() as f64)
                } else {
                    1.0
                }
            })
            .collect();
        let (mut actual, mut expected) = (0.0, 0.0);
        for (d, u) in &observed {
            if holiday(*d) && count[weekday(*d)] > 0 {
                actual += *u.max(&0) as f64;
                expected += units[weekday(*d)] as f64 / count[weekday(*d)] as f64;
            }
        }
        let prior = vendflow_forecast::model::OWN_HOLIDAY_PRIOR_UNITS;
        let factor = (actual + prior) / (expected + prior);
        let level_days: Vec<(i64, f64)> = observed
            .iter()
            .filter(|(d, _)| *d >= end - config.demand_days && !holiday(*d))
            .map(|(d, _)| {
                let age = (end - 1 - d) as i32;
                (
                    *d,
                    0.5f64
                        .powf(1.0 / vendflow_forecast::model::HALF_LIFE_DAYS)
                        .powi(age),
                )
            })
            .collect();
        let weight: f64 = level_days.iter().map(|(d, w)| w * index[weekday(*d)]).sum();
        let mut rates = BTreeMap::new();
        let (mut squares, mut mean) = (0.0, 0.0);
        for (slot, sold) in machine_slots {
            let on = |d: &i64| sold.get(d).copied().unwrap_or(0) as f64;
            let weighted: f64 = level_days.iter().map(|(d, w)| w * on(d)).sum();
            let r: [f64; 7] = if weighted > 0.0 && weight > 0.0 {
                std::array::from_fn(|w| weighted / weight * index[w])
            } else {
                [0.0; 7]
            };
            for (d, _) in &level_days {
                let rate = r[weekday(*d)];
                squares += (on(d) - rate) * (on(d) - rate);
                mean += rate;
            }
            rates.insert(*slot, r);
        }
        let dispersion = if mean > 0.0 {
            ((squares / mean).clamp(1.0, 20.0) * 100.0).round() / 100.0
        } else {
            1.0
        };
        models.insert(
            machine.clone(),
            Model {
                rates,
                factor,
                dispersion,
            },
        );
    }

    let mut forecasts = Vec::new();
    let mut restock: BTreeMap<MachineId, (i64, f64)> = BTreeMap::new();
    for level in levels {
        if forecast_for(&level).is_none() {
            continue;
        }
        let model = &models[&level.machine_id];
        let per_day = model.rates[&level.slot_number];
        // Drain the slot hour by hour, each hour its share of its day's mean (a holiday's at
        // the factor), until the demand since the hour's start makes the slot as likely as not
        // empty, for up to 14 days.
        let hours = if level.units <= 0 {
            Some(0.0)
        } else {
            let mut left = vendflow_forecast::empty_threshold(level.units, model.dispersion);
            let mut found = None;
            // Day by day from the current hour: the first day has its remaining hours, the
            // last what is left of the 14 days.
            let mut hour = 0;
            let mut at = Timestamp(hour_start);
            while hour < 14 * 24 {
                let hours = (24 - usize::from(at.hour())).min(14 * 24 - hour);
                let mut rate = per_day[usize::from(at.weekday())];
                if holiday(at.day()) {
                    rate *= model.factor;
                }
                let rate = rate / 24.0;
                if rate > 0.0 && rate * hours as f64 >= left {
                    found = Some(hour as f64 + left / rate);
                    break;
                }
                left -= rate * hours as f64;
                hour += hours;
                at = Timestamp(at.0 + hours as i64 * MS_PER_HOUR);
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
    fn forecast_follows_the_weekday_profile_and_the_holidays() {
        // The machine was observed every day of the week before and sold on the Monday only,
        // the slot 24 of it: on Monday 00:00 with 12 left it is as likely as not empty once the
        // demand since then reaches the threshold of 12 (Poisson: a little under 12).
        let monday = Timestamp::parse_rfc3339("2024-01-15T00:00:00Z").unwrap_or_default();
        let first = monday.day() - 7;
        let days: Vec<(i64, i64)> = (0..7)
            .map(|d| (first + d, if d == 0 { 240 } else { 0 }))
            .collect();
        let model =
            vendflow_forecast::demand(monday.day(), &days, &[&[(first, 24)], &[]], 28, 112, |_| {
                false
            });
        let rate = model.rates[0][0];
        assert!(
            (rate - 24.0).abs() < 1e-9 && model.rates[0][1] == 0.0,
            "{:?}",
            model.rates
        );
        assert_eq!(model.dispersion, 1.0);
        let threshold = vendflow_forecast::empty_threshold(12, 1.0);
        assert!(threshold > 11.0 && threshold < 12.0, "{threshold}");
        let close = |h: Option<f64>, expected: f64| {
            assert!(
                h.is_some_and(|h| (h - expected).abs() < 1e-9),
                "{h:?} against {expected}"
            );
        };
        close(
            hours_to_empty(12, &model, 0, monday, |_| false),
            threshold * 24.0 / rate,
        );
        // On Tuesday nothing sells until next Monday.
        let tuesday = Timestamp(monday.0 + MS_PER_DAY);
        close(
            hours_to_empty(12, &model, 0, tuesday, |_| false),
            6.0 * 24.0 + threshold * 24.0 / rate,
        );
        // A Monday that is a holiday sells at the machine's holiday factor: at a half, twice
        // as long.
        let mut half = model.clone();
        half.holiday_factor = 0.5;
        close(
            hours_to_empty(12, &half, 0, monday, |d| d == monday.day()),
            2.0 * threshold * 24.0 / rate,
        );
        // A slot that did not sell does not run out; an empty one is empty now.
        assert_eq!(hours_to_empty(12, &model, 1, monday, |_| false), None);
        assert_eq!(hours_to_empty(0, &model, 0, monday, |_| false), Some(0.0));
    }
}
